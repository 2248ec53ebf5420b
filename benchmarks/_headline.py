"""The summary the suite prints last: a few lines with the figures a reader looks for first.

Each line is built from the results the tables already show (nothing is measured here): the
upstream's shape, the library's CPU per request against both floors at every concurrency, memory
per open slow stream (library, proxy, aiohttp floor), CPU per streamed event on long streams,
what recording costs per response, and the proxy's requests per CPU-second against LiteLLM's.
A figure that was not measured reads ``-``, or its line says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ._memory import OpenStreams
from ._proxy import LITELLM_PROXY, PROXY
from ._report import AIOHTTP_FLOOR, SLUICEGATE, SLUICEGATE_STATELESS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._events import EventCost
    from ._memory import MemoryResult
    from ._proxy import ProxySummary
    from ._report import Summary
    from ._store import RecordingRun

__all__ = ["headline_lines", "headline_markdown", "headline_text", "recording_line"]

_MODES: Final = ("create", "stream")
#: The concurrencies the recording line names (those measured, of these).
_RECORDING_AT: Final[tuple[int, ...]] = (1, 16)
_OPEN_STREAMS_ORDER: Final[tuple[str, ...]] = ("library", "proxy", AIOHTTP_FLOOR)


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
        _open_streams(memory_results),
        _event_cost(event_costs),
        recording_line(recording),
        *_proxy_per_cpu(proxy),
    ]


def headline_text(lines: Sequence[str]) -> str:
    return "\n".join(["summary:", *(f"  {line}" for line in lines)])


def headline_markdown(lines: Sequence[str]) -> str:
    return "\n".join(["## Summary", "", *(f"- {line}" for line in lines)])
