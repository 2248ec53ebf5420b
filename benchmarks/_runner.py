"""Drive one case: a warm-up, then N requests from ``concurrency`` workers in one nursery."""

from __future__ import annotations

import gc
import math
import time
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from ._targets import Answer, Target
    from ._upstream import FakeUpstreamProcess

__all__ = [
    "Case",
    "CaseRun",
    "percentile",
    "process_memory",
    "run_case",
    "warmup_requests",
]

_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class Case:
    target: str
    stream: bool
    concurrency: int

    @property
    def mode(self) -> str:
        return "stream" if self.stream else "create"


@attrs.frozen(kw_only=True)
class CaseRun:
    """One measured repetition of a case. Times are seconds; the derived metrics are per run."""

    case: Case
    requests: int
    wall_s: float
    cpu_s: float
    events: int
    latency_p50_s: float
    latency_p99_s: float
    first_event_p50_s: float | None
    first_event_p99_s: float | None
    #: The upstream's CPU over the run ÷ wall time (1.0 = one core busy); None without /proc.
    upstream_busy: float | None
    #: The resident set size of the process that ran the case, after it, and its peak so far
    #: (VmRSS and VmHWM): that process runs one target alone (``_library.py``, ``_litellm.py``),
    #: so this is that target's memory. None without /proc, or where not measured.
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e3

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values (times in seconds, memory in bytes): a line of the library's child
        process and a row of the results file's ``runs``."""
        return {
            "target": self.case.target,
            "mode": self.case.mode,
            "concurrency": self.case.concurrency,
            "requests": self.requests,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "events": self.events,
            "latency_p50_s": self.latency_p50_s,
            "latency_p99_s": self.latency_p99_s,
            "first_event_p50_s": self.first_event_p50_s,
            "first_event_p99_s": self.first_event_p99_s,
            "upstream_busy": self.upstream_busy,
            "rss_bytes": self.rss_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseRun:
        """The run :meth:`to_json` gave, from its decoded JSON.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not such a run.
        """
        mode = data["mode"]
        if mode not in ("create", "stream"):
            raise ValueError(f"unknown mode {mode!r}")
        return cls(
            case=Case(
                target=str(data["target"]),
                stream=mode == "stream",
                concurrency=int(data["concurrency"]),
            ),
            requests=int(data["requests"]),
            wall_s=float(data["wall_s"]),
            cpu_s=float(data["cpu_s"]),
            events=int(data["events"]),
            latency_p50_s=float(data["latency_p50_s"]),
            latency_p99_s=float(data["latency_p99_s"]),
            first_event_p50_s=_optional(float, data["first_event_p50_s"]),
            first_event_p99_s=_optional(float, data["first_event_p99_s"]),
            upstream_busy=_optional(float, data["upstream_busy"]),
            rss_bytes=_optional(int, data["rss_bytes"]),
            peak_rss_bytes=_optional(int, data["peak_rss_bytes"]),
        )


def _optional(convert: Callable[[Any], _T], value: Any) -> _T | None:
    return None if value is None else convert(value)


def process_memory() -> tuple[int | None, int | None]:
    """This process's resident set size now and its peak so far (``VmRSS`` and ``VmHWM`` in
    ``/proc/self/status``), in bytes; None for either where there is no such line or no /proc."""
    found: dict[bytes, int] = {}
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                name, _, rest = line.partition(b":")
                if name in (b"VmRSS", b"VmHWM"):
                    found[name] = int(rest.split()[0]) * 1024  # always in kB
    except OSError:
        pass
    return found.get(b"VmRSS"), found.get(b"VmHWM")


def warmup_requests(concurrency: int, requests: int) -> int:
    # Enough for every worker to open its pooled connection and touch every code path twice.
    return min(requests, max(2 * concurrency, 20))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@attrs.define(eq=False)
class _Tally:
    remaining: int
    latencies: list[float] = attrs.Factory(list)
    first_events: list[float] = attrs.Factory(list)
    events: int = 0


async def _drive(
    op: Callable[[], Awaitable[Answer]],
    concurrency: int,
    requests: int,
    *,
    until: float = -math.inf,
) -> _Tally:
    """``requests`` requests from ``concurrency`` workers; more, until ``until`` (trio time)."""
    tally = _Tally(remaining=requests)

    async def worker() -> None:
        while tally.remaining > 0 or trio.current_time() < until:
            tally.remaining -= 1
            start = trio.current_time()
            answer = await op()
            end = trio.current_time()
            tally.latencies.append(end - start)
            tally.events += answer.events
            if answer.first_event_at is not None:
                tally.first_events.append(answer.first_event_at - start)

    workers = concurrency if until > -math.inf else min(concurrency, requests)
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
    return tally


async def run_case(
    target: Target,
    case: Case,
    *,
    requests: int,
    warmup_s: float,
    upstream: FakeUpstreamProcess,
) -> CaseRun:
    """Warm up (at least ``warmup_s`` seconds and a few requests per worker), then measure."""
    op = target.stream if case.stream else target.create
    # The warm-up opens the connections this concurrency needs and, lasting longer than the
    # pool's keep-alive expiry, lets the spare ones of an earlier case expire (POOL_KEEPALIVE_
    # EXPIRY): the measured requests then see the pool this load settles to.
    await _drive(
        op,
        case.concurrency,
        warmup_requests(case.concurrency, requests),
        until=trio.current_time() + warmup_s,
    )
    # Garbage left by earlier cases is collected now, not billed to this one.
    gc.collect()
    upstream_before = upstream.cpu_seconds()
    wall_before = time.perf_counter()
    cpu_before = time.process_time()
    tally = await _drive(op, case.concurrency, requests)
    cpu_s = time.process_time() - cpu_before
    wall_s = time.perf_counter() - wall_before
    upstream_after = upstream.cpu_seconds()
    upstream_busy = None
    if upstream_before is not None and upstream_after is not None:
        upstream_busy = (upstream_after - upstream_before) / wall_s
    latencies = sorted(tally.latencies)
    first_events = sorted(tally.first_events)
    return CaseRun(
        case=case,
        requests=requests,
        wall_s=wall_s,
        cpu_s=cpu_s,
        events=tally.events,
        latency_p50_s=percentile(latencies, 0.50),
        latency_p99_s=percentile(latencies, 0.99),
        first_event_p50_s=percentile(first_events, 0.50) if case.stream else None,
        first_event_p99_s=percentile(first_events, 0.99) if case.stream else None,
        upstream_busy=upstream_busy,
    )
