"""The summary the suite prints last: a few lines with the figures a reader looks for first.

Each line is built from the results the tables already show (nothing is measured here): the
upstream's shape, the library's CPU per request against both floors at every concurrency, its
asyncio face against its trio face (CPU per request, memory per open stream), LiteLLM's library
against both faces, memory per open slow stream (library, proxy, aiohttp floor), CPU per
streamed event on long streams, what recording costs per response, and the proxy's requests per
CPU-second against LiteLLM's. A figure that was not measured reads ``-``, or its line says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ._memory import LIBRARY_ASYNCIO, OpenStreams
from ._proxy import LITELLM_PROXY, PROXY
from ._report import AIOHTTP_FLOOR, LITELLM, SLUICEGATE, SLUICEGATE_ASYNCIO, SLUICEGATE_STATELESS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._events import EventCost
    from ._memory import MemoryResult
    from ._proxy import ProxySummary
    from ._report import Summary
    from ._store import RecordingRun

__all__ = ["headline_lines", "headline_markdown", "headline_text", "recording_line"]

_MODES: Final = ("create", "stream")
#: The concurrencies the recording line names (those measured, of these).
_RECORDING_AT: Final[tuple[int, ...]] = (1, 16)
_OPEN_STREAMS_ORDER: Final[tuple[str, ...]] = ("library", LIBRARY_ASYNCIO, "proxy", AIOHTTP_FLOOR)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _library_ratios(
    summaries: Sequence[Summary],
    *,
    label: str,
    aiohttp: bool,
    missing: str | None,
    target: str = SLUICEGATE,
) -> str:
    ours = sorted(
        (s for s in summaries if s.case.target == target), key=lambda s: s.case.concurrency
    )
    concurrencies = sorted({s.case.concurrency for s in ours})
    library = "library" if target == SLUICEGATE else f"library ({target})"
    title = f"{library} CPU/request x {label}"
    if missing is not None:
        return f"{title}: not measured ({missing})"
    parts = []
    for mode in _MODES:
        ratios = {
            s.case.concurrency: s.aiohttp_ratio if aiohttp else s.cpu_ratio
            for s in ours
            if s.case.mode == mode
        }
        parts.append(f"{mode} " + " / ".join(_num(ratios.get(c), ".2f") for c in concurrencies))
    return f"{title} (c={'/'.join(map(str, concurrencies))}): " + "; ".join(parts)


def _by_mode(
    summaries: Sequence[Summary], target: str, figure: Callable[[Summary], float | None]
) -> dict[str, dict[int, float | None]]:
    """``figure`` of ``target``'s rows, per mode and concurrency."""
    found: dict[str, dict[int, float | None]] = {mode: {} for mode in _MODES}
    for s in summaries:
        if s.case.target == target:
            found[s.case.mode][s.case.concurrency] = figure(s)
    return found


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _series(values: dict[int, float | None], concurrencies: Sequence[int], spec: str) -> str:
    return " / ".join(_num(values.get(c), spec) for c in concurrencies)


def _asyncio_face(summaries: Sequence[Summary], memory_results: Sequence[MemoryResult]) -> str:
    """The asyncio face's CPU per request ÷ the trio face's per case, and its memory per open
    stream beside the trio face's."""
    title = "library asyncio face CPU/request x trio face"
    ratios = _by_mode(summaries, SLUICEGATE_ASYNCIO, lambda s: s.trio_ratio)
    concurrencies = sorted({c for by in ratios.values() for c in by})
    if not concurrencies:
        return f"{title}: not measured"
    parts = [f"{mode} {_series(ratios[mode], concurrencies, '.2f')}" for mode in _MODES]
    kib = {
        r.target: r.per_stream_bytes / 1024 for r in memory_results if isinstance(r, OpenStreams)
    }
    memory = (
        f"memory per open slow stream {_num(kib.get(LIBRARY_ASYNCIO), '.1f')} KiB "
        f"(trio face {_num(kib.get('library'), '.1f')} KiB)"
    )
    return f"{title} (c={'/'.join(map(str, concurrencies))}): " + "; ".join([*parts, memory])


def _litellm_margins(summaries: Sequence[Summary]) -> str:
    """LiteLLM's library CPU per request ÷ each face's, per case."""
    title = "LiteLLM library CPU/request ÷ sluicegate's"
    litellm = _by_mode(summaries, LITELLM, lambda s: s.cpu_ms_per_request)
    concurrencies = sorted({c for by in litellm.values() for c in by})
    if not concurrencies:
        return f"{title}: not measured"
    faces = {
        label: _by_mode(summaries, target, lambda s: s.cpu_ms_per_request)
        for label, target in (("trio face", SLUICEGATE), ("asyncio face", SLUICEGATE_ASYNCIO))
    }
    parts = []
    for mode in _MODES:
        margins = []
        for label, ours in faces.items():
            ratios = {c: _ratio(theirs, ours[mode].get(c)) for c, theirs in litellm[mode].items()}
            margins.append(f"{label} {_series(ratios, concurrencies, '.1f')}")
        parts.append(f"{mode} " + ", ".join(margins))
    return f"{title} (c={'/'.join(map(str, concurrencies))}): " + "; ".join(parts)


def _open_streams(memory_results: Sequence[MemoryResult]) -> str:
    held = {r.target: r for r in memory_results if isinstance(r, OpenStreams)}
    if not held:
        return "memory per open slow stream: not measured"
    targets = [t for t in _OPEN_STREAMS_ORDER if t in held]
    targets += [t for t in held if t not in targets]
    parts = [f"{t} {held[t].per_stream_bytes / 1024:.1f} KiB" for t in targets]
    streams = sorted({r.streams for r in held.values()})
    return (
        f"memory per open slow stream: {', '.join(parts)} "
        f"({'/'.join(map(str, streams))} streams held open)"
    )


def _event_cost(costs: Sequence[EventCost]) -> str:
    if not costs:
        return "CPU per streamed event (library, c=1): not measured"
    parts = [f"{c.cpu_us_per_event:.2f} µs at {c.events:,} events" for c in costs]
    line = "CPU per streamed event (library, c=1): " + ", ".join(parts)
    if len(costs) > 1:
        ratio = costs[-1].cpu_us_per_event / costs[0].cpu_us_per_event
        line += f" (longest ÷ shortest: {ratio:.2f}x)"
    return line


def recording_line(recording: Sequence[RecordingRun]) -> str:
    """Recording's CPU per response at concurrency 1 and 16 (those of them measured; else every
    concurrency measured)."""
    by = {r.concurrency: r for r in recording}
    chosen = [c for c in _RECORDING_AT if c in by] or sorted(by)
    if not chosen:
        return "recording CPU µs/response: not measured"
    parts = [f"{by[c].cpu_us_per_response:.0f} at c={c}" for c in chosen]
    return "recording CPU µs/response: " + ", ".join(parts)


def _proxy_per_cpu(proxy: Sequence[ProxySummary]) -> list[str]:
    lines = []
    for mode in _MODES:
        here = [s for s in proxy if s.case.mode == mode]
        ours = {s.case.concurrency: s for s in here if s.case.target == PROXY}
        theirs = {s.case.concurrency: s for s in here if s.case.target == LITELLM_PROXY}
        if not ours:
            continue
        concurrencies = sorted(ours)
        line = f"proxy requests per CPU-second, {mode} (c={'/'.join(map(str, concurrencies))}): "
        line += "sluicegate " + " / ".join(
            _num(ours[c].requests_per_cpu_s, ".0f") for c in concurrencies
        )
        if theirs:
            line += ", LiteLLM " + " / ".join(
                _num(theirs[c].requests_per_cpu_s if c in theirs else None, ".0f")
                for c in concurrencies
            )
            ratios = [ours[c].per_cpu_ratio_vs_litellm for c in concurrencies]
            line += " (" + " / ".join(_num(r, ".1f") + "x" for r in ratios) + ")"
        else:
            line += " (LiteLLM's proxy not measured)"
        lines.append(line)
    return lines or ["proxy requests per CPU-second: not measured"]


def headline_lines(
    *,
    upstream_shape: str,
    summaries: Sequence[Summary],
    memory_results: Sequence[MemoryResult],
    event_costs: Sequence[EventCost],
    recording: Sequence[RecordingRun],
    proxy: Sequence[ProxySummary],
    aiohttp_missing: str | None = None,
) -> list[str]:
    """The summary's lines, in order. ``aiohttp_missing`` says why the aiohttp floor was not
    measured, when it was not."""
    return [
        upstream_shape,
        _library_ratios(summaries, label="httpx floor", aiohttp=False, missing=None),
        _library_ratios(summaries, label="aiohttp floor", aiohttp=True, missing=aiohttp_missing),
        _library_ratios(
            summaries,
            label="aiohttp floor",
            aiohttp=True,
            missing=aiohttp_missing,
            target=SLUICEGATE_STATELESS,
        ),
        _asyncio_face(summaries, memory_results),
        _litellm_margins(summaries),
        _open_streams(memory_results),
        _event_cost(event_costs),
        recording_line(recording),
        *_proxy_per_cpu(proxy),
    ]


def headline_text(lines: Sequence[str]) -> str:
    return "\n".join(["summary:", *(f"  {line}" for line in lines)])


def headline_markdown(lines: Sequence[str]) -> str:
    return "\n".join(["## Summary", "", *(f"- {line}" for line in lines)])
