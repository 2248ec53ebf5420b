"""The recording benchmark (benchmarks/_store.py): it runs, and says what the store costs on
disk next to what it keeps; on PostgreSQL (benchmarks/_postgres.py starts the server), beside
SQLite, with the database server's CPU apart; and ``--only store`` runs it alone."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import psycopg
import pytest
import trio

from benchmarks import _cli as bench_cli
from benchmarks import _postgres as bench_postgres
from benchmarks._headline import postgres_recording_line
from benchmarks._postgres import (
    DATABASE_URL_ENV,
    REQUIRE_ENV,
    BenchPostgres,
    PostgresServer,
    open_bench_postgres,
    postgres_bin,
    postgres_missing,
    run_postgres,
)
from benchmarks._store import (
    PostgresRecordingRun,
    RecordingRun,
    compare_recording,
    measure_postgres_recording,
    measure_recording,
    postgres_recording_json,
    recording_comparison_checks,
    recording_comparison_table,
    recording_table,
)
from benchmarks._upstream import BenchmarkError


async def test_recording_reports_the_bytes_on_disk_next_to_the_payload() -> None:
    runs = await measure_recording([1, 4], 30)
    assert [r.concurrency for r in runs] == [1, 4]
    for run in runs:
        assert run.responses == 30
        assert run.cpu_us_per_response > 0
        # The final Response as the gateway records it: a long signed ID, every field.
        assert run.payload_bytes_per_response > 1000
        # Checkpointed and measured: the database holds at least what it was given.
        assert run.disk_bytes_per_response > run.payload_bytes_per_response
        assert run.wal_bytes >= 0
    table = recording_table(runs)
    assert "disk B/resp" in table and "disk/payload" in table
    assert "| disk/payload |" in recording_table(runs, markdown=True)


async def test_the_store_keeps_little_more_than_twice_the_payload_on_disk() -> None:
    """Regression guard for the store's size (docs/benchmarks.md, "On disk"): compact log
    rows, nothing stored twice. Schema 6 took 2.4-2.5 times the payload here (400 responses,
    so a fixed ~80 KB of empty tables and indexes adds about 0.16), schema 7 about 2.13."""
    for run in await measure_recording([1, 16], 400):
        assert run.disk_bytes_per_response < 2.25 * run.payload_bytes_per_response, run


# --- on PostgreSQL ---------------------------------------------------------------------------


def _bench_postgres(server: PostgresServer) -> BenchPostgres:
    return BenchPostgres(url=server.url(), server=server, note="the session's test server")


def _databases(server: PostgresServer) -> set[str]:
    with psycopg.connect(server.url()) as conn:
        rows = conn.execute("SELECT datname FROM pg_database").fetchall()
    return {row[0] for row in rows}


async def test_recording_on_postgres_reports_both_processes_cpu(
    postgres_server: PostgresServer,
) -> None:
    """The same responses into the PostgreSQL store: the gateway's CPU and the database
    server's apart, group commit's batching, and a fresh database per concurrency, dropped
    afterwards."""
    before = await trio.to_thread.run_sync(_databases, postgres_server)
    runs = await measure_postgres_recording(_bench_postgres(postgres_server), [1, 8], 40)
    assert await trio.to_thread.run_sync(_databases, postgres_server) == before
    assert [r.concurrency for r in runs] == [1, 8]
    for run in runs:
        assert run.responses == 40
        assert run.cpu_us_per_response > 0
        # Read from /proc; a few clock ticks at most over so short a run, possibly none.
        assert run.server_cpu_us_per_response is not None
        assert run.server_cpu_us_per_response >= 0
        assert 0 < run.p50_ms <= run.p99_ms
        assert run.responses_per_s > 0
        assert run.responses_per_transaction >= 1
    # Eight workers share transactions (each acceptance lingers into some end's).
    assert runs[1].responses_per_transaction > 1


def _sqlite_run(concurrency: int, responses_per_s: float) -> RecordingRun:
    return RecordingRun(
        concurrency=concurrency,
        responses=100,
        cpu_us_per_response=250.0,
        p50_ms=0.2,
        p99_ms=0.5,
        responses_per_s=responses_per_s,
        responses_per_transaction=1.0,
        payload_bytes_per_response=1247.0,
        disk_bytes_per_response=2500.0,
        wal_bytes=0,
    )


def _postgres_run(
    concurrency: int, responses_per_s: float, server: float | None = 300.0
) -> PostgresRecordingRun:
    return PostgresRecordingRun(
        concurrency=concurrency,
        responses=100,
        cpu_us_per_response=500.0,
        server_cpu_us_per_response=server,
        p50_ms=1.0,
        p99_ms=4.0,
        responses_per_s=responses_per_s,
        responses_per_transaction=16.0,
    )


def test_postgres_must_keep_half_of_sqlites_responses_per_second() -> None:
    rows = compare_recording(
        [_sqlite_run(16, 1000.0), _sqlite_run(1, 1000.0), _sqlite_run(64, 1000.0)],
        # c=64 was not measured on PostgreSQL: no row, no check.
        [_postgres_run(16, 499.0, server=None), _postgres_run(1, 500.0)],
    )
    assert [r.concurrency for r in rows] == [1, 16]
    checks = recording_comparison_checks(rows)
    assert [(c.name, c.passed) for c in checks] == [
        ("recording c=1: PostgreSQL responses/s >= SQLite's / 2", True),
        ("recording c=16: PostgreSQL responses/s >= SQLite's / 2", False),
    ]
    assert checks[0].detail == "0.50x (500 vs 1000 responses/s)"
    table = recording_comparison_table(rows).splitlines()
    assert "PG gateway CPU us/resp" in table[0] and "PG server CPU us/resp" in table[0]
    # The server's CPU not ours to read (an external server): a dash, not a zero.
    assert table[3].split()[7] == "-"
    assert recording_comparison_table(rows, markdown=True).startswith("| conc | responses |")
    document = postgres_recording_json(rows)
    assert document[0]["responses_per_s_vs_sqlite"] == 0.5
    assert document[1]["server_cpu_us_per_response"] is None
    assert document[1]["sqlite_responses_per_s"] == 1000.0
    assert postgres_recording_line(rows) == (
        "recording on PostgreSQL (fsync on) ÷ SQLite, responses/s (c=1/16): 0.50 / 0.50; "
        "CPU µs/response: gateway 500 / 500 + database server 300 / - (SQLite 250 / 250)"
    )
    assert postgres_recording_line("PostgreSQL is not installed") == (
        "recording on PostgreSQL: not measured (PostgreSQL is not installed)"
    )


def test_a_named_server_is_used_as_it_is(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SLUICEGATE_BENCH_DATABASE_URL``: no cluster of our own; databases made and dropped on
    the named server; its CPU is not ours to read."""
    monkeypatch.setenv(DATABASE_URL_ENV, postgres_server.url())
    assert postgres_missing() is None
    with open_bench_postgres(cpu=None) as postgres:
        assert postgres.server is None
        assert postgres.cpu_seconds() is None
        assert DATABASE_URL_ENV in postgres.note
        with postgres.database() as url:
            assert url.startswith(postgres_server.url("t_"))
            assert url.rpartition("/")[2] in _databases(postgres_server)
        assert url.rpartition("/")[2] not in _databases(postgres_server)


def test_the_private_cluster_is_durable_and_its_cpu_is_read(
    postgres_server: PostgresServer,
) -> None:
    """The tests' cluster runs without fsync; the benchmarks' with it, and pinned where asked.
    The server's CPU counts its backends: a query's work shows up."""
    bin_dir = postgres_bin()
    assert bin_dir is not None
    cpu = min(os.sched_getaffinity(0))
    with run_postgres(bin_dir, fsync=True, cpu=cpu) as server:
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert backend is not None
            assert os.sched_getaffinity(backend[0]) == {cpu}
            before = server.cpu_seconds()
            conn.execute("SELECT count(*) FROM generate_series(1, 3000000)")
            after = server.cpu_seconds()
        assert before is not None and after is not None
        assert after > before
    with psycopg.connect(postgres_server.url()) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("off",)


def test_the_store_section_runs_alone(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``python -m benchmarks --smoke --only store``: SQLite then PostgreSQL, the comparison
    and its targets in the results, a full run's latest results left alone."""
    monkeypatch.setenv(DATABASE_URL_ENV, postgres_server.url())
    monkeypatch.setattr(bench_cli, "RESULTS_DIR", tmp_path)
    affinity = os.sched_getaffinity(0)
    try:
        assert bench_cli.main(["--smoke", "--only", "store", "--concurrency", "1,4"]) == 0
    finally:
        os.sched_setaffinity(0, affinity)  # the section pins this process
    assert not (tmp_path / "latest.json").exists()
    document = orjson.loads((tmp_path / "latest-smoke-store.json").read_bytes())
    meta = document["meta"]
    assert meta["only"] == ["store"]
    assert [r["concurrency"] for r in meta["recording"]] == [1, 4]
    assert [r["concurrency"] for r in meta["recording_postgres"]["runs"]] == [1, 4]
    assert meta["recording_postgres"]["skipped"] is None
    assert [c["name"] for c in document["checks"]] == [
        "recording c=1: PostgreSQL responses/s >= SQLite's / 2",
        "recording c=4: PostgreSQL responses/s >= SQLite's / 2",
        "recording c=1: PostgreSQL (synchronous_commit off) responses/s >= SQLite's / 2",
        "recording c=4: PostgreSQL (synchronous_commit off) responses/s >= SQLite's / 2",
    ]
    unflushed = meta["recording_postgres"]["runs_synchronous_commit_off"]
    assert [(r["concurrency"], r["synchronous_commit"]) for r in unflushed] == [
        (1, False),
        (4, False),
    ]
    assert "synchronous_commit off" in (tmp_path / "latest-smoke-store.md").read_text()
    assert meta["summary"][1].startswith("recording on PostgreSQL (fsync on) ÷ SQLite")
    markdown = (tmp_path / "latest-smoke-store.md").read_text()
    assert "## Recording on PostgreSQL" in markdown and "## Summary" in markdown


def test_the_only_option_names_the_sections() -> None:
    assert bench_cli._parse(["--only", "instances,store"]).only == ("store", "instances")
    assert bench_cli._parse([]).only == ()
    with pytest.raises(SystemExit):
        bench_cli._parse(["--only", "store,proxy"])


def test_without_postgres_the_rows_are_skipped_unless_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    monkeypatch.setattr(bench_postgres, "postgres_bin", lambda: None)
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    missing = bench_cli._postgres_missing()
    assert missing is not None and DATABASE_URL_ENV in missing
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(BenchmarkError, match=REQUIRE_ENV):
        bench_cli._postgres_missing()
