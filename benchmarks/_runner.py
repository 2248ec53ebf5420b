"""Drive one case: a warm-up, then N requests from ``concurrency`` workers in one nursery."""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

import trio

from ._cases import Case as Case
from ._cases import CaseRun as CaseRun
from ._cases import Tally, measure_case
from ._cases import percentile as percentile
from ._cases import process_memory as process_memory
from ._cases import warmup_requests as warmup_requests

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

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


async def _drive(
    op: Callable[[], Awaitable[Answer]],
    concurrency: int,
    requests: int,
    *,
    until: float = -math.inf,
) -> Tally:
    """``requests`` requests from ``concurrency`` workers; more, until ``until`` (trio time)."""
    tally = Tally(remaining=requests)

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
    return await measure_case(
        partial(_drive, op, case.concurrency, requests), case, requests=requests, upstream=upstream
    )
