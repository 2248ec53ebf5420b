"""The store under stress and after a crash: a burst of concurrent responses recorded
with nothing lost; a gateway process killed mid-stream leaves nothing in progress forever.
These use a SQLite file with worker threads, so they run on the real clock."""

from __future__ import annotations

import signal
import sys
import textwrap
from functools import partial
from pathlib import Path

import orjson
import trio

import sluicegate
from sluicegate import ResponseStatus
from sluicegate.store import RECOVERY_ERROR, open_sqlite_store

from .test_recording import TEXT_BODY, NativeUpstream, config

BURST = 1000


async def test_a_burst_of_concurrent_responses_is_recorded_with_nothing_lost(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "burst.db")
    upstream = NativeUpstream()
    ids: list[str] = []
    async with sluicegate.open_gateway(
        config(path=path), transport=upstream.transport(), environ={}
    ) as gw:

        async def one(i: int) -> None:
            response = await gw.responses(
                model="g", input=f"q{i}", owner=f"o{i % 10}", spend_logs_metadata={"i": i}
            )
            ids.append(response.id)

        async with trio.open_nursery() as nursery:
            for i in range(BURST):
                nursery.start_soon(one, i)
        stats = gw.statistics()
        store_stats = gw.store.statistics()
        [total] = await gw.spend_totals(group_by="model")
        by_owner = await gw.spend_totals(group_by="owner")
        logs = await gw.spend_logs(limit=BURST + 1)
    assert len(set(ids)) == BURST
    usage = TEXT_BODY["usage"]
    assert (total.requests, total.input_tokens, total.output_tokens) == (
        BURST,
        BURST * usage["input_tokens"],
        BURST * usage["output_tokens"],
    )
    assert total.cost == sum(log.cost or 0.0 for log in logs)
    assert abs(total.cost - stats.cost) < 1e-9
    assert [(t.key, t.requests) for t in by_owner] == [(f"o{i}", BURST // 10) for i in range(10)]
    assert {log.response_id for log in logs} == set(ids)
    assert {log.status for log in logs} == {"completed"}
    # Group commit: responses shared transactions.
    assert store_stats.transactions < 2 * BURST
    assert store_stats.largest_batch > 5
    # Reopened, the file has every response, each ended exactly once.
    async with open_sqlite_store(path) as store:
        rows = [await store.get(rid) for rid in ids[:50]]
        assert all(r is not None and r.status is ResponseStatus.COMPLETED for r in rows)


_CHILD = textwrap.dedent(
    """
    import sys

    import orjson
    import trio

    import sluicegate


    async def main(path):
        cfg = {
            "model_list": [
                {
                    "model_name": "slow",
                    "litellm_params": {
                        "model": "fake/slow",
                        "fake_tokens": 100000,
                        "fake_token_delay": 0.02,
                    },
                }
            ],
            "general_settings": {"store": {"path": path}},
        }
        async with sluicegate.open_gateway(cfg) as gw:
            background = await gw.responses(model="slow", input="hi", background=True)
            async with gw.stream(model="slow", input="hi") as events:
                rid = None
                async for event in events:
                    if event.type == "response.created":
                        rid = event.response.id
                    if event.type == "response.output_text.delta":
                        break
                # Both are recorded as running (the acceptance is committed behind the stream).
                while await gw.store.get(rid) is None:
                    await trio.sleep(0.01)
                while (await gw.store.get(background.id)).status.value != "in_progress":
                    await trio.sleep(0.01)
                print(orjson.dumps([rid, background.id]).decode(), flush=True)
                async for event in events:
                    pass


    trio.run(main, sys.argv[1])
    """
)


async def test_responses_of_a_killed_process_are_ended_failed_on_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "crash.db")
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    async with trio.open_nursery() as nursery:
        run = partial(trio.run_process, [sys.executable, str(script), path], stdout=-1, check=False)
        process: trio.Process = await nursery.start(run)
        assert process.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the child exited before it printed its response IDs"
                line += chunk
        ids: list[str] = orjson.loads(line)
        process.send_signal(signal.SIGKILL)
        await process.wait()
    async with open_sqlite_store(path) as store:
        for rid in ids:
            row = await store.get(rid)
            assert row is not None, rid
            assert row.status is ResponseStatus.FAILED
            assert row.error == RECOVERY_ERROR
        # Recovery happened once: reopening again finds nothing left to end.
        assert await store.recover(now=0.0) == 0


async def test_a_background_stream_running_in_another_process_is_followed_to_its_end(
    tmp_path: Path,
) -> None:
    """Regression: a resume (``get_response(stream=True, starting_after=N)``) through a gateway
    that was not running the response replayed what the store held at that moment and stopped
    there, cut short while the other process went on. It now follows the events as they are
    committed, until the response's row says it ended. Two gateways on one file stand for two
    processes (or instances) sharing a store."""
    path = str(tmp_path / "shared.db")
    runner, reader = NativeUpstream(delay=0.1), NativeUpstream()
    async with (
        sluicegate.open_gateway(
            config(path=path), transport=runner.transport(), environ={}
        ) as running,
        sluicegate.open_gateway(
            config(path=path), transport=reader.transport(), environ={}
        ) as other,
    ):
        first = []
        async with running.stream(model="g", input="hi", background=True) as events:
            async for event in events:
                first.append(event)
                if len(first) == 3:
                    break  # the caller leaves; a background response runs on
        response_id = first[0].to_dict()["response"]["id"]
        after = first[-1].sequence_number
        stream = await other.get_response(response_id, stream=True, starting_after=after)
        async with stream as followed:
            rest = [event async for event in followed]
        assert [e.sequence_number for e in rest] == list(range(after + 1, after + 1 + len(rest)))
        assert rest[-1].type == "response.completed"
        done = await other.get_response(response_id)
        assert done.status is ResponseStatus.COMPLETED
        assert not reader.requests  # read from the store, never asked of an upstream
