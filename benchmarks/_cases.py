"""A case, its measured run, what a target answers and the settings every driver shares: trio's
(``_runner.py``) and asyncio's (``_asyncio_driver.py``). No trio here: the aiohttp floor's child
imports this module, and its RSS must be the floor's alone, not trio's.
"""

from __future__ import annotations

import gc
import json
import math
import time
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import attrs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from ._upstream import FakeUpstreamProcess

__all__ = [
    "API_KEY",
    "GATEWAY_MODEL",
    "INPUT",
    "POOL_KEEPALIVE_EXPIRY",
    "POOL_SIZE",
    "UPSTREAM_MODEL",
    "Answer",
    "Case",
    "CaseRun",
    "LibraryPlan",
    "Tally",
    "Target",
    "measure_case",
    "percentile",
    "process_memory",
    "warmup_requests",
]

_T = TypeVar("_T")

#: The pool limits every library target shares (the gateway's ``general_settings`` say the same).
POOL_SIZE: Final = 128
#: Every pool drops connections idle this long (httpx's default is 5 s, the gateway's 30 s).
#: Short and the same on all sides on purpose: httpcore's pool scans every idle connection,
#: several times per request, so its cost depends on how many idle connections it holds. Under
#: steady load the pool shrinks to what the load needs once the spare connections expire; a short
#: expiry lets it get there within the warm-up, so a case measures its own concurrency and not
#: the previous case's pool (see the runner's warm-up).
POOL_KEEPALIVE_EXPIRY: Final = 1.0
GATEWAY_MODEL: Final = "bench"
UPSTREAM_MODEL: Final = "bench-model"
API_KEY: Final = "sk-bench"
INPUT: Final = "hello"


@attrs.frozen
class Answer:
    #: Events received (1 for a non-streamed response: the Response object itself).
    events: int
    #: When the first event arrived, on the driver's clock (``trio.current_time()`` under trio,
    #: ``time.perf_counter()`` under asyncio); None when not streaming.
    first_event_at: float | None


class Target(Protocol):
    """One library target, as every driver calls it (on trio or asyncio, whichever it runs on)."""

    @property
    def name(self) -> str: ...

    async def create(self) -> Answer:
        """One non-streamed request, its body parsed."""
        ...

    async def stream(self) -> Answer:
        """One streamed request, every event read and parsed."""
        ...


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


@attrs.frozen(kw_only=True)
class LibraryPlan:
    """What one child measures (one repeat of one target)."""

    #: (concurrency, measured requests), concurrency ascending: within a child the pool only
    #: grows, so every case finds about as many connections as it needs.
    requests: tuple[tuple[int, int], ...]
    warmup_s: float

    def cases(self, target: str) -> list[tuple[Case, int]]:
        """Every case with its request count, in the order the child runs them."""
        return [
            (Case(target=target, stream=stream, concurrency=concurrency), requests)
            for concurrency, requests in self.requests
            for stream in (False, True)
        ]

    def to_json(self) -> str:
        return json.dumps({"requests": self.requests, "warmup_s": self.warmup_s})

    @classmethod
    def from_json(cls, text: str) -> LibraryPlan:
        data: Any = json.loads(text)
        return cls(
            requests=tuple((int(c), int(n)) for c, n in data["requests"]),
            warmup_s=float(data["warmup_s"]),
        )


@attrs.define(eq=False)
class Tally:
    """What a runtime's driver counts while it runs a case's requests."""

    remaining: int
    latencies: list[float] = attrs.Factory(list)
    first_events: list[float] = attrs.Factory(list)
    events: int = 0


async def measure_case(
    drive: Callable[[], Awaitable[Tally]],
    case: Case,
    *,
    requests: int,
    upstream: FakeUpstreamProcess,
) -> CaseRun:
    """Run ``drive`` (a case's ``requests``, on whichever runtime: it awaits nothing else) and
    turn what it counted, with this process's CPU and the upstream's, into a :class:`CaseRun`."""
    # Garbage left by earlier cases is collected now, not billed to this one.
    gc.collect()
    upstream_before = upstream.cpu_seconds()
    wall_before = time.perf_counter()
    cpu_before = time.process_time()
    tally = await drive()
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
