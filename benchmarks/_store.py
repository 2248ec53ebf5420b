"""Recording cost: what the event store adds to every response (issue 3 asks for it measured).

Each simulated response appends what the recorder writes for a non-streaming answer, in the
two calls the recorder makes: ``Accepted`` + ``Routed`` queued (``enqueue``) when the upstream
names the response, and ``ItemDone`` + ``Settled`` + ``Ended`` appended before the terminal event
is released (on the response's critical path: the terminal event waits for the commit). The
store is a SQLite file in a temporary directory, with its own group commit. Reported per
concurrency: CPU microseconds and wall latency per response, responses/s, and responses per
transaction (how well group commit batches).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from sluicegate.store import Accepted, Ended, ItemDone, Routed, Settled, open_sqlite_store

from ._runner import percentile

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["RecordingRun", "measure_recording", "recording_table"]

_ITEM: dict[str, Any] = {
    "id": "msg_0123456789abcdef0123456789abcdef",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_text", "text": "word " * 20, "annotations": []}],
}
_USAGE: dict[str, Any] = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    "output_tokens": 20,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 32,
}


@attrs.frozen(kw_only=True)
class RecordingRun:
    concurrency: int
    responses: int
    cpu_us_per_response: float
    p50_ms: float
    p99_ms: float
    responses_per_s: float
    responses_per_transaction: float


async def _measure(path: Path, concurrency: int, responses: int) -> RecordingRun:
    latencies: list[float] = []
    async with open_sqlite_store(path) as store:
        counter = iter(range(responses))
        start_tx = store.statistics().transactions

        async def one(n: int) -> None:
            rid = f"resp_bench_{concurrency}_{n}"
            # As the recorder does: the acceptance is queued (nobody waits on it; it lingers
            # to share the terminal's transaction), the end is appended and awaited.
            await store.enqueue(
                [
                    Accepted(
                        response_id=rid,
                        owner="bench",
                        model="bench",
                        params={"model": "b"},
                        input_items=[{"role": "user", "content": "hello"}],
                        background=False,
                        store=True,
                        metadata={},
                        created_at=0.0,
                    ),
                    Routed(response_id=rid, deployment_id="bench-1", provider="openai", attempt=0),
                ]
            )
            began = trio.current_time()
            await store.append(
                [
                    ItemDone(response_id=rid, output_index=0, item=_ITEM),
                    Settled(response_id=rid, usage=_USAGE, cost=0.0001),
                    Ended(
                        response_id=rid,
                        status="completed",
                        error=None,
                        response={"id": rid, "status": "completed", "output": [_ITEM]},
                        completed_at=1.0,
                    ),
                ]
            )
            latencies.append(trio.current_time() - began)

        async def worker() -> None:
            for n in counter:
                await one(n)

        cpu = time.process_time()
        wall = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        transactions = store.statistics().transactions - start_tx
    latencies.sort()
    return RecordingRun(
        concurrency=concurrency,
        responses=responses,
        cpu_us_per_response=cpu / responses * 1e6,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        responses_per_s=responses / wall,
        responses_per_transaction=responses / max(1, transactions),
    )


async def measure_recording(concurrencies: Sequence[int], responses: int) -> list[RecordingRun]:
    """One fresh SQLite file per concurrency, in a temporary directory."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as directory:
        for concurrency in concurrencies:
            path = Path(directory) / f"store-{concurrency}.db"
            runs.append(await _measure(path, concurrency, responses))
    return runs


def recording_table(runs: Sequence[RecordingRun], *, markdown: bool = False) -> str:
    header = ["conc", "responses", "CPU us/resp", "p50 ms", "p99 ms", "resp/s", "resp/tx"]
    rows = [
        [
            str(r.concurrency),
            str(r.responses),
            f"{r.cpu_us_per_response:.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.responses_per_s:.0f}",
            f"{r.responses_per_transaction:.1f}",
        ]
        for r in runs
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)
