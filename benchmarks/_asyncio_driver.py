"""The asyncio driver: what ``_runner.py`` and ``_memory.py`` do on trio, for the asyncio targets.

Two targets run on asyncio, each in a child process of its own: the aiohttp floor
(``_aiohttp.py``) and the library's asyncio face (``_asyncio_face.py``). Both are driven here,
the same way, so the two measure the same thing:

- :func:`run_cases`: every case of a plan (``_library.py``'s protocol), each a warm-up (at least
  ``warmup_s`` and a few requests per worker) and then ``requests`` requests from
  ``concurrency`` asyncio tasks, measured by ``_cases.measure_case`` (CPU, latency, first event)
  with the child's RSS after the case: one JSON line per case.
- :func:`hold_streams`: memory per open slow stream, as ``_memory.open_slow_streams`` measures
  the proxy's: after the caller's warm-up, ``streams`` streams held open at once, each read an
  item per ``read_interval``; the RSS before, and with all open.

Latency and the first event are on ``time.perf_counter()``. No trio and no third-party client
here: the aiohttp floor's child imports this module, and its RSS must be asyncio's and
aiohttp's alone.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ._cases import LibraryPlan, Tally, measure_case, process_memory, warmup_requests
from ._upstream import BenchmarkError, FakeUpstreamProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
    from contextlib import AbstractAsyncContextManager

    from ._cases import Answer, Case, CaseRun, Target

__all__ = [
    "HeldStreams",
    "child_main",
    "hold_streams",
    "raise_open_file_limit",
    "rss",
    "run_case",
    "run_cases",
]

_T = TypeVar("_T")


# --- the cases -------------------------------------------------------------------------------


async def _drive(
    op: Callable[[], Awaitable[Answer]],
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
            answer = await op()
            tally.latencies.append(time.perf_counter() - start)
            tally.events += answer.events
            if answer.first_event_at is not None:
                tally.first_events.append(answer.first_event_at - start)

    workers = concurrency if until > -math.inf else min(concurrency, requests)
    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())
    return tally


async def run_case(
    target: Target,
    case: Case,
    *,
    requests: int,
    warmup_s: float,
    upstream: FakeUpstreamProcess,
) -> CaseRun:
    """``_runner.run_case`` on asyncio: the same warm-up, then the same figures, with this
    process's RSS after the case and its peak."""
    op = target.stream if case.stream else target.create
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


async def run_cases(
    name: str, target: Target, upstream: FakeUpstreamProcess, plan: LibraryPlan
) -> None:
    """Every case of ``plan`` for the target called ``name``, a line each
    (``_library.case_line``'s), flushed as soon as the case is measured."""
    for case, requests in plan.cases(name):
        run = await run_case(
            target, case, requests=requests, warmup_s=plan.warmup_s, upstream=upstream
        )
        # The standard library's json, as _library.case_line: a NaN stays a NaN.
        print(json.dumps(run.to_json()), flush=True)


# --- open slow streams -----------------------------------------------------------------------


def rss() -> int:
    """This process's resident set size.

    Raises:
        BenchmarkError: there is no ``VmRSS`` in ``/proc/self/status``.
    """
    rss, _ = process_memory()
    if rss is None:
        raise BenchmarkError("no VmRSS in /proc/self/status")
    return rss


def raise_open_file_limit(minimum: int) -> None:
    """As ``_memory.raise_open_file_limit``, which the aiohttp floor's child does not import
    (trio)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= minimum:
        return
    if hard != resource.RLIM_INFINITY and hard < minimum:
        raise BenchmarkError(f"{minimum} open files needed; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (minimum, hard))


@attrs.frozen(kw_only=True)
class HeldStreams:
    """What :func:`hold_streams` measured; the RSS once they are closed is the caller's."""

    streams: int
    read_interval_s: float
    open_s: float
    idle_rss_bytes: int
    open_rss_bytes: int

    def result(self, target: str, closed_rss_bytes: int) -> dict[str, Any]:
        """``_memory.OpenStreams``'s fields, as the open-streams child prints them."""
        return {"target": target, **attrs.asdict(self), "closed_rss_bytes": closed_rss_bytes}


async def hold_streams(
    open_stream: Callable[[], AbstractAsyncContextManager[AsyncIterator[_T]]],
    *,
    streams: int,
    is_event: Callable[[_T], bool],
    failed: Callable[[_T], bool],
    read_interval: float = 0.1,
    opening: int = 32,
    settle: float = 1.0,
    samples: int = 3,
    open_within: float | None = None,
) -> HeldStreams:
    """Memory per open stream, in this process. Call it once warmed up (a request of each kind):
    half a second later, the idle RSS; then ``streams`` streams, each from ``open_stream``
    (a stream's items: lines, or events), held open at once (at most ``opening`` waiting for
    their first event, an item ``is_event`` says is one), each then read an item per
    ``read_interval``; ``settle`` seconds after all have their first event, the highest of
    ``samples`` RSS samples ``settle / 2`` apart; then all closed (each holder cancelled).

    Raises:
        BenchmarkError (in an exception group): a stream failed (an item ``failed`` says is a
            failure), ended while held, or not all were open within ``open_within`` seconds
            (default: 30 s + 0.1 s per stream).
    """
    if streams < 1:
        raise ValueError(f"streams must be positive, not {streams}")
    if open_within is None:
        open_within = 30.0 + 0.1 * streams
    await asyncio.sleep(0.5)
    idle = rss()
    gate = asyncio.Semaphore(opening)
    all_open = asyncio.Event()
    opened = 0

    async def hold(n: int) -> None:
        nonlocal opened
        await gate.acquire()
        waiting = True
        try:
            async with open_stream() as items:
                async for item in items:
                    if is_event(item):
                        break
                else:
                    raise BenchmarkError(f"stream {n} ended before its first event")
                gate.release()
                waiting = False
                opened += 1
                if opened == streams:
                    all_open.set()
                while True:
                    await asyncio.sleep(read_interval)
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        raise BenchmarkError(
                            f"stream {n} ended while it was to be held open: start the slow "
                            "upstream with more tokens or a longer --token-delay"
                        ) from None
                    if failed(item):
                        raise BenchmarkError(f"held stream {n} failed: {item!r:.300}")
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
            peak = max(peak, rss())
        # The holders end only by failing or by this: closing every stream.
        for holder in holders:
            holder.cancel()
    return HeldStreams(
        streams=streams,
        read_interval_s=read_interval,
        open_s=open_s,
        idle_rss_bytes=idle,
        open_rss_bytes=peak,
    )


# --- a child's entry -------------------------------------------------------------------------


def child_main(
    argv: Sequence[str],
    *,
    module: str,
    target: str,
    run: Callable[[FakeUpstreamProcess, LibraryPlan], Coroutine[Any, Any, None]],
    open_streams: Callable[..., Coroutine[Any, Any, dict[str, Any]]],
) -> int:
    """An asyncio target's child: ``TARGET UPSTREAM_URL UPSTREAM_PID PLAN`` runs the plan's
    cases (``run``), ``open-streams UPSTREAM_URL STREAMS`` prints what holding that many slow
    streams costs (``open_streams(url, streams=...)``); anything else is a usage error."""
    match list(argv):
        case [name, url, pid, plan] if name == target:
            asyncio.run(
                run(FakeUpstreamProcess(base_url=url, pid=int(pid)), LibraryPlan.from_json(plan))
            )
        case ["open-streams", url, streams]:
            result = asyncio.run(open_streams(url, streams=int(streams)))
            print(json.dumps(result), flush=True)
        case _:
            print(
                f"usage: python -m {module} {target} UPSTREAM_URL UPSTREAM_PID PLAN\n"
                f"       python -m {module} open-streams UPSTREAM_URL STREAMS",
                file=sys.stderr,
            )
            return 2
    return 0
