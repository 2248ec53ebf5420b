"""The aiohttp floor: the httpx floor's minimum work on aiohttp and asyncio, in a child process.

Why a second floor: the httpx floor (``_targets.py``) measures the least a client on httpx and
trio can do, and its pool's cost is httpx's; aiohttp on asyncio is the other stack Python callers
use, with a pool of its own. The work is the same: create POSTs the JSON body and parses the
answer's body; stream POSTs with ``"stream": true``, reads every line and parses each ``data:``
line; the pool is as large and expires idle connections as soon (``_cases.POOL_SIZE``,
``POOL_KEEPALIVE_EXPIRY``).

It runs as ``python -m benchmarks._aiohttp``, a child of its own, pinned like the other library
targets (it inherits the suite's pinning to the measuring CPU), and speaks ``_library.py``'s
protocol: ``aiohttp-floor UPSTREAM_URL UPSTREAM_PID PLAN`` runs every case of the plan (the same
warm-up, the same workers, the same figures as ``_runner.run_case``) and prints a
:class:`~benchmarks._cases.CaseRun` line per case; the parent is ``_library.measure_library``.
``open-streams UPSTREAM_URL STREAMS`` instead holds that many slow streams open and prints the
memory they cost (:func:`open_streams`; the parent is ``_memory.measure_open_streams``). The
child never imports trio, httpx or sluicegate: its RSS is asyncio's and aiohttp's alone.

aiohttp is in the ``dev`` extra (so CI's smoke run covers it); without it the suite skips the
aiohttp rows with a note (:func:`aiohttp_available`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import resource
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson

from ._cases import (
    API_KEY,
    INPUT,
    POOL_KEEPALIVE_EXPIRY,
    POOL_SIZE,
    UPSTREAM_MODEL,
    Case,
    CaseRun,
    LibraryPlan,
    Tally,
    measure_case,
    process_memory,
    warmup_requests,
)
from ._report import AIOHTTP_FLOOR
from ._upstream import BenchmarkError, FakeUpstreamProcess

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import aiohttp

__all__ = ["AiohttpFloor", "aiohttp_available", "open_streams", "run_cases"]

_COMPLETED: Final = "response.completed"
_DELTA: Final = "response.output_text.delta"
_FAILED: Final = frozenset({"response.failed", "error"})
#: A ``response.completed`` line carries the whole answer: aiohttp refuses a line over twice its
#: read buffer (64 KiB by default), which a long ``--tokens`` answer exceeds.
_READ_BUFFER: Final = 2**20
_HEADERS: Final = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}


def aiohttp_available() -> bool:
    return importlib.util.find_spec("aiohttp") is not None


@attrs.define(eq=False)
class AiohttpFloor:
    """What a minimal hand-written asyncio client does: aiohttp, orjson, nothing else."""

    _session: aiohttp.ClientSession
    _url: str

    async def create(self) -> tuple[int, float | None]:
        """One non-streamed request, its body parsed: (events, None)."""
        content = orjson.dumps({"model": UPSTREAM_MODEL, "input": INPUT})
        async with self._session.post(self._url, data=content, headers=_HEADERS) as response:
            if response.status != 200:
                raise BenchmarkError(f"aiohttp floor: HTTP {response.status}")
            body: Any = orjson.loads(await response.read())
        if body.get("status") != "completed":
            raise BenchmarkError(f"aiohttp floor: unexpected status {body.get('status')!r}")
        return 1, None

    async def stream(self) -> tuple[int, float | None]:
        """One streamed request, every ``data:`` line parsed: (events, when the first came)."""
        content = orjson.dumps({"model": UPSTREAM_MODEL, "input": INPUT, "stream": True})
        events = 0
        first: float | None = None
        last: Any = None
        async with self._session.post(self._url, data=content, headers=_HEADERS) as response:
            if response.status != 200:
                raise BenchmarkError(f"aiohttp floor: HTTP {response.status}")
            async for line in response.content:
                if line.startswith(b"data:"):
                    last = orjson.loads(line[5:])
                    events += 1
                    if first is None:
                        first = time.perf_counter()
        if last is None or last.get("type") != _COMPLETED:
            raise BenchmarkError("aiohttp floor: the stream did not end with response.completed")
        return events, first


def _session(connections: int) -> aiohttp.ClientSession:
    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=connections, keepalive_timeout=POOL_KEEPALIVE_EXPIRY
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        read_bufsize=_READ_BUFFER,
    )


def _responses_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/responses"


# --- the cases -------------------------------------------------------------------------------


async def _drive(
    op: Callable[[], Awaitable[tuple[int, float | None]]],
    concurrency: int,
    requests: int,
    *,
    until: float = -math.inf,
) -> Tally:
    """``_runner._drive`` on asyncio: ``requests`` requests from ``concurrency`` workers; more,
    until ``until`` (``time.perf_counter()``)."""
    tally = Tally(remaining=requests)

    async def worker() -> None:
        while tally.remaining > 0 or time.perf_counter() < until:
            tally.remaining -= 1
            start = time.perf_counter()
            events, first = await op()
            tally.latencies.append(time.perf_counter() - start)
            tally.events += events
            if first is not None:
                tally.first_events.append(first - start)

    workers = concurrency if until > -math.inf else min(concurrency, requests)
    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())
    return tally


async def _run_case(
    floor: AiohttpFloor,
    case: Case,
    *,
    requests: int,
    warmup_s: float,
    upstream: FakeUpstreamProcess,
) -> CaseRun:
    """``_runner.run_case`` on asyncio: the same warm-up, then the same figures."""
    op = floor.stream if case.stream else floor.create
    await _drive(
        op,
        case.concurrency,
        warmup_requests(case.concurrency, requests),
        until=time.perf_counter() + warmup_s,
    )
    run = await measure_case(
        partial(_drive, op, case.concurrency, requests), case, requests=requests, upstream=upstream
    )
    rss, peak = process_memory()
    return attrs.evolve(run, rss_bytes=rss, peak_rss_bytes=peak)


async def run_cases(upstream: FakeUpstreamProcess, plan: LibraryPlan) -> None:
    """Every case of ``plan`` on one session, a line each (``_library.case_line``'s)."""
    async with _session(POOL_SIZE) as session:
        floor = AiohttpFloor(session, _responses_url(upstream.base_url))
        for case, requests in plan.cases(AIOHTTP_FLOOR):
            run = await _run_case(
                floor, case, requests=requests, warmup_s=plan.warmup_s, upstream=upstream
            )
            # The standard library's json, as _library.case_line: a NaN stays a NaN.
            print(json.dumps(run.to_json()), flush=True)


# --- open slow streams -----------------------------------------------------------------------


def _rss() -> int:
    rss, _ = process_memory()
    if rss is None:
        raise BenchmarkError("no VmRSS in /proc/self/status")
    return rss


async def _warm_up(session: aiohttp.ClientSession, url: str) -> None:
    """One create, and one stream dropped at its first delta (as ``_memory._warm_up``)."""
    floor = AiohttpFloor(session, url)
    await floor.create()
    content = orjson.dumps({"model": UPSTREAM_MODEL, "input": INPUT, "stream": True})
    async with session.post(url, data=content, headers=_HEADERS) as response:
        if response.status != 200:
            raise BenchmarkError(f"aiohttp floor: HTTP {response.status}")
        async for line in response.content:
            if line.startswith(b"data:") and orjson.loads(line[5:]).get("type") == _DELTA:
                return
    raise BenchmarkError("the warm-up stream ended before its first delta")


async def open_streams(
    base_url: str,
    *,
    streams: int,
    read_interval: float = 0.1,
    opening: int = 32,
    settle: float = 1.0,
    samples: int = 3,
    open_within: float | None = None,
) -> dict[str, Any]:
    """Memory per open stream for the aiohttp floor, in this process, as
    ``_memory.open_slow_streams`` measures the proxy's: after a warm-up, ``streams`` streams
    from a slow upstream held open at once (at most ``opening`` waiting for their first event),
    each read a line per ``read_interval``; ``settle`` seconds after all have their first event,
    the highest of ``samples`` RSS samples; then all closed, and the RSS once more.

    Returns:
        ``_memory.OpenStreams``'s fields, target ``aiohttp-floor``.

    Raises:
        BenchmarkError: a request failed, a stream ended while held, or not all were open
            within ``open_within`` seconds (default: 30 s + 0.1 s per stream).
    """
    _raise_open_file_limit(streams + 256)
    if open_within is None:
        open_within = 30.0 + 0.1 * streams
    url = _responses_url(base_url)
    content = orjson.dumps({"model": UPSTREAM_MODEL, "input": INPUT, "stream": True})
    async with _session(streams + 64) as session:
        await _warm_up(session, url)
        await asyncio.sleep(0.5)
        idle = _rss()
        gate = asyncio.Semaphore(opening)
        all_open = asyncio.Event()
        opened = 0

        async def hold(n: int) -> None:
            nonlocal opened
            await gate.acquire()
            waiting = True
            try:
                async with session.post(url, data=content, headers=_HEADERS) as response:
                    if response.status != 200:
                        raise BenchmarkError(f"stream {n}: HTTP {response.status}")
                    while not (line := await response.content.readline()).startswith(b"data:"):
                        if not line:
                            raise BenchmarkError(f"stream {n} ended before its first event")
                    gate.release()
                    waiting = False
                    opened += 1
                    if opened == streams:
                        all_open.set()
                    while True:
                        await asyncio.sleep(read_interval)
                        line = await response.content.readline()
                        if not line:
                            raise BenchmarkError(
                                f"stream {n} ended while it was to be held open: start the "
                                "slow upstream with more tokens or a longer --token-delay"
                            )
                        if (
                            line.startswith(b"data:")
                            and orjson.loads(line[5:]).get("type") in _FAILED
                        ):
                            raise BenchmarkError(f"held stream {n} failed: {line[:300]!r}")
            finally:
                if waiting:
                    gate.release()

        began = time.perf_counter()
        peak = 0
        holders: list[asyncio.Task[None]] = []
        async with asyncio.TaskGroup() as group:
            holders += [group.create_task(hold(n)) for n in range(streams)]
            try:
                async with asyncio.timeout(open_within):
                    await all_open.wait()
            except TimeoutError:
                raise BenchmarkError(
                    f"{opened} of {streams} streams open after {open_within} s"
                ) from None
            open_s = time.perf_counter() - began
            await asyncio.sleep(settle)
            for i in range(samples):
                if i:
                    await asyncio.sleep(settle / 2)
                peak = max(peak, _rss())
            # The holders end only by failing or by this: closing every stream.
            for holder in holders:
                holder.cancel()
    await asyncio.sleep(settle)
    return {
        "target": AIOHTTP_FLOOR,
        "streams": streams,
        "read_interval_s": read_interval,
        "open_s": open_s,
        "idle_rss_bytes": idle,
        "open_rss_bytes": peak,
        "closed_rss_bytes": _rss(),
    }


def _raise_open_file_limit(minimum: int) -> None:
    """As ``_memory.raise_open_file_limit``, which this child does not import (trio)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= minimum:
        return
    if hard != resource.RLIM_INFINITY and hard < minimum:
        raise BenchmarkError(f"{minimum} open files needed; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (minimum, hard))


# --- the child's entry -----------------------------------------------------------------------

_USAGE: Final = (
    f"usage: python -m benchmarks._aiohttp {AIOHTTP_FLOOR} UPSTREAM_URL UPSTREAM_PID PLAN\n"
    "       python -m benchmarks._aiohttp open-streams UPSTREAM_URL STREAMS"
)


def _main(argv: Sequence[str]) -> int:
    match list(argv):
        case [target, url, pid, plan] if target == AIOHTTP_FLOOR:
            upstream = FakeUpstreamProcess(base_url=url, pid=int(pid))
            asyncio.run(run_cases(upstream, LibraryPlan.from_json(plan)))
        case ["open-streams", url, streams]:
            result = asyncio.run(open_streams(url, streams=int(streams)))
            print(json.dumps(result), flush=True)
        case _:
            print(_USAGE, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
