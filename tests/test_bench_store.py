"""The recording benchmark (benchmarks/_store.py): it runs, and says what the store costs on
disk next to what it keeps."""

from __future__ import annotations

from benchmarks._store import measure_recording, recording_table


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
