"""Recording cost: what the event store adds to every response.

Each simulated response appends what the recorder writes for a non-streaming answer, in the
two calls the recorder makes: ``Accepted`` + ``Routed`` queued (``enqueue``) when the upstream
names the response, and ``ItemDone`` + ``Settled`` + ``Ended`` appended before the terminal event
is released (on the response's critical path: the terminal event waits for the commit). The
store is a SQLite file in a temporary directory, with its own group commit. Reported per
concurrency: CPU microseconds and wall latency per response, responses/s, and responses per
transaction (how well group commit batches).

And what it costs on disk: the database and its WAL after a checkpoint, per response, next to
the payload (the final Response's JSON). The records are shaped as the gateway writes them: a
signed ``resp_`` ID as long as a real one (the key of everything the store keeps of a
response), and a final Response with every field an upstream sends.

On PostgreSQL (:func:`measure_postgres_recording`): the same responses, driven by the same code,
recorded into ``open_postgres_store`` with its defaults, on a fresh database per concurrency of
a server with ``fsync`` and ``synchronous_commit`` on (``_postgres.py``: a private cluster, or
``SLUICEGATE_BENCH_DATABASE_URL``). Reported beside SQLite's figures: responses/s (the target:
at least SQLite's ÷ 2), the gateway process's CPU per response (this process, every thread: the
writer's psycopg calls run in a worker thread) and, apart, the database server's (all its
processes, from ``/proc``: the commits are half in another process here), latency of the
awaited append, and responses per transaction. The durability differs and the figures say so:
SQLite runs ``synchronous=NORMAL`` in WAL mode (a commit does not wait for the disk; a power
cut may lose the last ones), PostgreSQL with ``synchronous_commit`` waits for its WAL's fsync.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson
import trio

from sluicegate.codecs.ids import IdCodec
from sluicegate.store import (
    Accepted,
    Ended,
    ItemDone,
    Routed,
    Settled,
    open_postgres_store,
    open_sqlite_store,
)

from ._report import Check, render_table
from ._runner import percentile

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sluicegate.store import Store

    from ._postgres import BenchPostgres

__all__ = [
    "MAX_POSTGRES_SLOWDOWN",
    "PostgresRecordingRun",
    "RecordingComparison",
    "RecordingRun",
    "compare_recording",
    "measure_postgres_recording",
    "measure_recording",
    "postgres_recording_json",
    "recording_comparison_checks",
    "recording_comparison_table",
    "recording_table",
]

_ITEM: dict[str, Any] = {
    "id": "msg_67cc8f6a9e448190b1c2d3e4f5a6b7c80e5c6d7f8a9b0c1d",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "word " * 20}],
}
_USAGE: dict[str, Any] = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    "output_tokens": 20,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 32,
}
#: Mints the responses' IDs as the gateway does (the same fields, so the same length).
_IDS = IdCodec.from_secret(b"sluicegate-bench")
#: Who asks: a virtual key's ID, as the proxy names its callers.
_OWNER = "key-5f3a9c0d1e2b4a67"


def _raw_id(concurrency: int, n: int) -> str:
    """The upstream's own ID, as long as OpenAI's."""
    return f"resp_{concurrency:08x}{n:040x}"


def _response_id(concurrency: int, n: int) -> str:
    return _IDS.encode(
        provider="openai", deployment_id="bench-1", raw_id=_raw_id(concurrency, n), owner=_OWNER
    )


def _final_response(response_id: str) -> dict[str, Any]:
    """The final Response as an upstream sends it (``tests/fixtures/openai_text.json``'s fields)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1741476542,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "bench",
        "output": [_ITEM],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": _USAGE,
        "user": None,
        "metadata": {},
        "completed_at": 1741476543,
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
    #: The final Response's JSON, on average.
    payload_bytes_per_response: float
    #: The database and its WAL after a checkpoint, per response.
    disk_bytes_per_response: float
    #: The WAL file when the run ended, before that checkpoint (its size is the most it held
    #: since it was last truncated).
    wal_bytes: int


def _checkpoint(path: Path) -> tuple[int, int]:
    """The WAL's size, then the database's and the WAL's after a checkpoint (TRUNCATE: all it
    holds is in the database; the store is idle, so nothing keeps it from finishing)."""
    wal = Path(f"{path}-wal")
    before = wal.stat().st_size if wal.exists() else 0
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        db.close()
    after = wal.stat().st_size if wal.exists() else 0
    return before, os.path.getsize(path) + after


@attrs.frozen(kw_only=True)
class _Driven:
    """What driving one store measured: this process's CPU and the wall time over the run, the
    appends' latencies (sorted, seconds) and the transactions committed."""

    cpu_s: float
    wall_s: float
    latencies: list[float]
    transactions: int


async def _drive(store: Store, concurrency: int, finals: Sequence[dict[str, Any]]) -> _Driven:
    """Record one simulated response per final Response into ``store``, from ``concurrency``
    workers; every backend is driven by this same code."""
    latencies: list[float] = []
    counter = iter(range(len(finals)))
    start_tx = store.statistics().transactions

    async def one(n: int) -> None:
        final = finals[n]
        rid = final["id"]
        # As the recorder does: the acceptance is queued (nobody waits on it; it lingers
        # to share the terminal's transaction), the end is appended and awaited.
        await store.enqueue(
            [
                Accepted(
                    response_id=rid,
                    owner=_OWNER,
                    model="bench",
                    params={"model": "b"},
                    input_items=[{"role": "user", "content": "hello"}],
                    background=False,
                    store=True,
                    metadata={},
                    created_at=0.0,
                ),
                Routed(
                    response_id=rid,
                    deployment_id="bench-1",
                    provider="openai",
                    attempt=0,
                    upstream_id=_raw_id(concurrency, n),
                ),
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
                    response=final,
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
    latencies.sort()
    return _Driven(
        cpu_s=cpu,
        wall_s=wall,
        latencies=latencies,
        transactions=store.statistics().transactions - start_tx,
    )


def _finals(concurrency: int, responses: int) -> list[dict[str, Any]]:
    # Made before the clocks start: minting IDs is the gateway's cost, not the store's.
    return [_final_response(_response_id(concurrency, n)) for n in range(responses)]


async def _measure(path: Path, concurrency: int, responses: int) -> RecordingRun:
    finals = _finals(concurrency, responses)
    payload = sum(len(orjson.dumps(final)) for final in finals)
    async with open_sqlite_store(path) as store:
        driven = await _drive(store, concurrency, finals)
        wal, disk = await trio.to_thread.run_sync(_checkpoint, path)
    return RecordingRun(
        concurrency=concurrency,
        responses=responses,
        cpu_us_per_response=driven.cpu_s / responses * 1e6,
        p50_ms=percentile(driven.latencies, 0.50) * 1e3,
        p99_ms=percentile(driven.latencies, 0.99) * 1e3,
        responses_per_s=responses / driven.wall_s,
        responses_per_transaction=responses / max(1, driven.transactions),
        payload_bytes_per_response=payload / responses,
        disk_bytes_per_response=disk / responses,
        wal_bytes=wal,
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
    header = [
        "conc",
        "responses",
        "CPU us/resp",
        "p50 ms",
        "p99 ms",
        "resp/s",
        "resp/tx",
        "payload B/resp",
        "disk B/resp",
        "disk/payload",
        "WAL MB",
    ]
    rows = [
        [
            str(r.concurrency),
            str(r.responses),
            f"{r.cpu_us_per_response:.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.responses_per_s:.0f}",
            f"{r.responses_per_transaction:.1f}",
            f"{r.payload_bytes_per_response:.0f}",
            f"{r.disk_bytes_per_response:.0f}",
            f"{r.disk_bytes_per_response / r.payload_bytes_per_response:.2f}",
            f"{r.wal_bytes / 1e6:.1f}",
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


# --- on PostgreSQL ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PostgresRecordingRun:
    """The same responses recorded into the PostgreSQL store at one concurrency."""

    concurrency: int
    responses: int
    #: The gateway process's CPU (this process, every thread: the store's writer runs psycopg
    #: in a worker thread) per response.
    cpu_us_per_response: float
    #: The database server's CPU (all its processes) per response; None when the server is not
    #: ours to read (``SLUICEGATE_BENCH_DATABASE_URL``).
    server_cpu_us_per_response: float | None
    p50_ms: float
    p99_ms: float
    responses_per_s: float
    responses_per_transaction: float
    #: The writer's commits waited for the server's WAL flush (the store's default); False:
    #: ``synchronous_commit`` off for its session (``general_settings.store``).
    synchronous_commit: bool = True


async def _measure_postgres(
    postgres: BenchPostgres,
    url: str,
    concurrency: int,
    responses: int,
    synchronous_commit: bool,
) -> PostgresRecordingRun:
    finals = _finals(concurrency, responses)
    async with open_postgres_store(url, synchronous_commit=synchronous_commit) as store:
        # Read outside the run's own CPU window: scanning /proc is this process's work.
        server_before = postgres.cpu_seconds()
        driven = await _drive(store, concurrency, finals)
        server_after = postgres.cpu_seconds()
    server = (
        None
        if server_before is None or server_after is None
        else (server_after - server_before) / responses * 1e6
    )
    return PostgresRecordingRun(
        concurrency=concurrency,
        responses=responses,
        cpu_us_per_response=driven.cpu_s / responses * 1e6,
        server_cpu_us_per_response=server,
        p50_ms=percentile(driven.latencies, 0.50) * 1e3,
        p99_ms=percentile(driven.latencies, 0.99) * 1e3,
        responses_per_s=responses / driven.wall_s,
        responses_per_transaction=responses / max(1, driven.transactions),
        synchronous_commit=synchronous_commit,
    )


async def measure_postgres_recording(
    postgres: BenchPostgres,
    concurrencies: Sequence[int],
    responses: int,
    *,
    synchronous_commit: bool = True,
) -> list[PostgresRecordingRun]:
    """The SQLite measurement's responses, recorded into the PostgreSQL store
    (``open_postgres_store`` with its defaults: group commit, a 50 ms linger; and
    ``synchronous_commit`` as given) on a fresh database per concurrency, dropped afterwards."""
    runs = []
    for concurrency in concurrencies:
        url = await trio.to_thread.run_sync(postgres.create_database)
        try:
            runs.append(
                await _measure_postgres(postgres, url, concurrency, responses, synchronous_commit)
            )
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(postgres.drop_database, url)
    return runs


#: PostgreSQL's responses/s must be at least SQLite's ÷ this, at each concurrency.
MAX_POSTGRES_SLOWDOWN: Final = 2.0


@attrs.frozen(kw_only=True)
class RecordingComparison:
    """SQLite's and PostgreSQL's run at one concurrency."""

    sqlite: RecordingRun
    postgres: PostgresRecordingRun

    @property
    def concurrency(self) -> int:
        return self.sqlite.concurrency

    @property
    def throughput_ratio(self) -> float:
        """PostgreSQL's responses/s ÷ SQLite's."""
        return self.postgres.responses_per_s / self.sqlite.responses_per_s


def compare_recording(
    sqlite: Sequence[RecordingRun], postgres: Sequence[PostgresRecordingRun]
) -> list[RecordingComparison]:
    """One row per concurrency both backends measured, ascending."""
    by = {r.concurrency: r for r in postgres}
    return [
        RecordingComparison(sqlite=run, postgres=by[run.concurrency])
        for run in sorted(sqlite, key=lambda r: r.concurrency)
        if run.concurrency in by
    ]


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


_COMPARISON_COLUMNS: Final[list[tuple[str, Callable[[RecordingComparison], str]]]] = [
    ("conc", lambda r: str(r.concurrency)),
    ("responses", lambda r: str(r.postgres.responses)),
    ("SQLite resp/s", lambda r: f"{r.sqlite.responses_per_s:.0f}"),
    ("PG resp/s", lambda r: f"{r.postgres.responses_per_s:.0f}"),
    ("PG x SQLite", lambda r: f"{r.throughput_ratio:.2f}"),
    ("SQLite CPU us/resp", lambda r: f"{r.sqlite.cpu_us_per_response:.0f}"),
    ("PG gateway CPU us/resp", lambda r: f"{r.postgres.cpu_us_per_response:.0f}"),
    ("PG server CPU us/resp", lambda r: _opt(r.postgres.server_cpu_us_per_response, ".0f")),
    ("SQLite p50/p99 ms", lambda r: f"{r.sqlite.p50_ms:.2f} / {r.sqlite.p99_ms:.2f}"),
    ("PG p50/p99 ms", lambda r: f"{r.postgres.p50_ms:.2f} / {r.postgres.p99_ms:.2f}"),
    ("SQLite resp/tx", lambda r: f"{r.sqlite.responses_per_transaction:.1f}"),
    ("PG resp/tx", lambda r: f"{r.postgres.responses_per_transaction:.1f}"),
]


def recording_comparison_table(
    rows: Sequence[RecordingComparison], *, markdown: bool = False
) -> str:
    """Per concurrency: both backends' responses/s, CPU per response (PostgreSQL's split into
    the gateway process's and the database server's), latency of the awaited append, and
    responses per transaction."""
    return render_table(_COMPARISON_COLUMNS, rows, group=lambda _: 0, markdown=markdown)


def recording_comparison_checks(rows: Sequence[RecordingComparison]) -> list[Check]:
    """PostgreSQL's responses/s at least SQLite's ÷ :data:`MAX_POSTGRES_SLOWDOWN`, per
    concurrency."""
    return [
        Check(
            name=f"recording c={r.concurrency}: PostgreSQL"
            + ("" if r.postgres.synchronous_commit else " (synchronous_commit off)")
            + f" responses/s >= SQLite's / {MAX_POSTGRES_SLOWDOWN:g}",
            passed=r.throughput_ratio >= 1 / MAX_POSTGRES_SLOWDOWN,
            detail=f"{r.throughput_ratio:.2f}x ({r.postgres.responses_per_s:.0f} vs "
            f"{r.sqlite.responses_per_s:.0f} responses/s)",
        )
        for r in rows
    ]


def postgres_recording_json(rows: Sequence[RecordingComparison]) -> list[dict[str, Any]]:
    """PostgreSQL's runs as JSON-ready dicts, each with SQLite's responses/s beside it."""
    return [
        {
            **attrs.asdict(r.postgres),
            "sqlite_responses_per_s": r.sqlite.responses_per_s,
            "responses_per_s_vs_sqlite": r.throughput_ratio,
        }
        for r in rows
    ]
