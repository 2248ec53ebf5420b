"""The summary the suite prints last: a few lines with the figures a reader looks for first.

Each line is built from the results the tables already show (nothing is measured here): the
upstream's shape, the library's CPU per request against both floors at every concurrency, its
asyncio face against its trio face (CPU per request, memory per open stream), LiteLLM's library
against both faces, memory per open slow stream (library, proxy, aiohttp floor), CPU per
streamed event on long streams, what recording costs per response, and the proxy's requests per
CPU-second against LiteLLM's; then, from their sections, recording on PostgreSQL against SQLite
(:func:`postgres_recording_line`) and two instances against one (:func:`instances_line`). A
figure that was not measured reads ``-``, or its line says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ._memory import LIBRARY_ASYNCIO, OpenStreams
from ._proxy import LITELLM_PROXY, PROXY
from ._report import AIOHTTP_FLOOR, LITELLM, SLUICEGATE, SLUICEGATE_ASYNCIO, SLUICEGATE_STATELESS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._events import EventCost
    from ._instances import InstancesRow
    from ._memory import MemoryResult
    from ._proxy import ProxySummary
    from ._report import Summary
    from ._store import RecordingComparison, RecordingRun

__all__ = [
    "headline_lines",
    "headline_markdown",
    "headline_text",
    "instances_line",
    "postgres_recording_line",
    "recording_line",
]

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


def postgres_recording_line(rows: Sequence[RecordingComparison] | str) -> str:
    """PostgreSQL's responses/s ÷ SQLite's per concurrency, and its CPU per response split into
    the gateway's and the database server's beside SQLite's; or why it was not measured."""
    title = "recording on PostgreSQL"
    if isinstance(rows, str) or not rows:
        return f"{title}: not measured" + (f" ({rows})" if isinstance(rows, str) else "")
    at = "/".join(str(r.concurrency) for r in rows)

    def series(values: Sequence[float | None], spec: str) -> str:
        return " / ".join(_num(v, spec) for v in values)

    return (
        f"{title} (fsync on) ÷ SQLite, responses/s (c={at}): "
        + series([r.throughput_ratio for r in rows], ".2f")
        + "; CPU µs/response: gateway "
        + series([r.postgres.cpu_us_per_response for r in rows], ".0f")
        + " + database server "
        + series([r.postgres.server_cpu_us_per_response for r in rows], ".0f")
        + " (SQLite "
        + series([r.sqlite.cpu_us_per_response for r in rows], ".0f")
        + ")"
    )


def instances_line(rows: Sequence[InstancesRow] | str, *, machine: str | None = None) -> str:
    """Two instances' requests/s ÷ one's per mode and concurrency, with each layout's CPU per
    request and the machine they shared; or why it was not measured."""
    title = "two instances ÷ one on PostgreSQL, requests/s"
    if isinstance(rows, str) or not rows:
        return f"{title}: not measured" + (f" ({rows})" if isinstance(rows, str) else "")
    at = "/".join(str(c) for c in sorted({r.concurrency for r in rows}))
    parts = []
    for mode in _MODES:
        here = sorted((r for r in rows if r.mode == mode), key=lambda r: r.concurrency)
        if not here:
            continue
        ratios = " / ".join(f"{r.scaling:.2f}" for r in here)
        cpu = " / ".join(
            f"{_num(r.one.cpu_ms_per_request, '.2f')} → {_num(r.two.cpu_ms_per_request, '.2f')}"
            for r in here
        )
        parts.append(f"{mode} {ratios} (CPU ms/request {cpu})")
    where = f"; {machine}" if machine else ""
    return f"{title} (c={at}): " + "; ".join(parts) + where


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
