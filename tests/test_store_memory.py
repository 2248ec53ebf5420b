"""The memory store (the stateless mode): the shared store contract, plus what is its own: the
bound (eviction order, memory that stays bounded), spend counted past it, copies on the way out,
a gateway that records in it, and ``serve`` refusing several workers with it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import yaml

import sluicegate
from sluicegate import ResponseStatus
from sluicegate.errors import ConfigError, InvalidRequestError, NotFoundError
from sluicegate.server._serve import run
from sluicegate.store import (
    Deleted,
    ItemDone,
    MemoryStore,
    ObjectRow,
    SpendFilter,
    SpendTotal,
    Store,
    StreamEventRecorded,
    open_memory_store,
)

from .store_contract import (
    Backend,
    StoreContract,
    accepted,
    item,
    lifecycle,
    turn,
)
from .test_recording import FULL_TEXT, NativeUpstream, gateway


@pytest.fixture
def backend() -> Backend:
    # The default bound: no contract test comes near it.
    return Backend(open=open_memory_store, persistent=False)


class TestMemoryStoreContract(StoreContract):
    @pytest.mark.skip(
        reason="group commit: a memory store applies each append at once, so there is no "
        "transaction for appends to share"
    )
    async def test_concurrent_appends_share_transactions(self, store: Store) -> None: ...


def test_the_memory_store_implements_the_store_protocol() -> None:
    store: Store = MemoryStore(1)
    assert store.statistics().pending == 0


async def test_the_bound_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        async with open_memory_store(max_responses=0):
            pass  # pragma: no cover


# -- the bound -------------------------------------------------------------------------------


async def _is_evicted(store: MemoryStore, rid: str) -> bool:
    """Whether ``rid`` reads as a purged response does: its row (and spend) kept, marked
    purged, its content gone."""
    row = await store.get(rid)
    assert row is not None, rid
    if not row.purged:
        assert await store.final_response(rid) is not None
        return False
    assert row.status is ResponseStatus.COMPLETED and row.cost == 0.25
    assert await store.final_response(rid) is None
    assert await store.input_items(rid) == []
    assert await store.output_items(rid) == []
    assert await store.stream_events(rid) == []
    return True


async def test_n_plus_k_responses_leave_the_content_of_the_last_n() -> None:
    async with open_memory_store(max_responses=3) as store:
        for n in range(5):
            await store.append(lifecycle(f"resp_{n}", at=200.0 + n))
        assert [await _is_evicted(store, f"resp_{n}") for n in range(5)] == [
            True,
            True,
            False,
            False,
            False,
        ]
        # An evicted response is not found as a purged one is not: no conversation, no items.
        with pytest.raises(InvalidRequestError) as caught:
            await store.conversation("resp_1", max_turns=10, max_bytes=1_000_000)
        assert caught.value.code == "previous_response_not_found"
        assert caught.value.message == "Previous response with id 'resp_1' not found."
        found = await store.item_origins(["msg_0"])
        assert found["msg_0"].response_id == "resp_2"  # the oldest that still holds it
        # Their spend rows stay.
        assert len(await store.spend_logs(SpendFilter())) == 5


async def test_the_response_that_ended_first_is_evicted_first() -> None:
    """By end, not by acceptance: a long response accepted early is not the first to go."""
    async with open_memory_store(max_responses=3) as store:
        for rid in ("resp_a", "resp_b", "resp_c"):
            await store.append(lifecycle(rid)[:2])
        for rid in ("resp_c", "resp_a", "resp_b"):
            await store.append(lifecycle(rid)[2:])
        await store.append(lifecycle("resp_d"))
        assert [await _is_evicted(store, rid) for rid in ("resp_c", "resp_a", "resp_b")] == [
            True,
            False,
            False,
        ]
        await store.append(lifecycle("resp_e"))
        assert await _is_evicted(store, "resp_a")
        assert not await _is_evicted(store, "resp_b")


async def test_running_responses_are_never_evicted() -> None:
    async with open_memory_store(max_responses=2) as store:
        await store.append(lifecycle("resp_done"))
        for n in range(4):
            await store.append([accepted(f"resp_run{n}", background=True)])
            await store.append(
                [StreamEventRecorded(response_id=f"resp_run{n}", sequence_number=0, event={})]
            )
        # Over the bound: the ended one went, every running one is whole.
        assert await _is_evicted(store, "resp_done")
        for n in range(4):
            assert await store.stream_events(f"resp_run{n}") == [{}]
            assert await store.input_items(f"resp_run{n}") != []
        # Each that ends leaves room for no more than the bound.
        for n in range(4):
            await store.append(lifecycle(f"resp_run{n}")[1:])
        assert [await _is_evicted(store, f"resp_run{n}") for n in range(4)] == [
            True,
            True,
            False,
            False,
        ]


async def test_rows_without_content_are_forgotten_after_as_many_removals_more() -> None:
    async with open_memory_store(max_responses=2) as store:
        for n in range(6):
            await store.append(lifecycle(f"resp_{n}"))
        # Content: the last two. Rows without content: the two evicted last. Forgotten: the rest.
        assert [await store.get(f"resp_{n}") is None for n in range(6)] == [
            True,
            True,
            False,
            False,
            False,
            False,
        ]
        assert [await _is_evicted(store, f"resp_{n}") for n in range(2, 6)] == [
            True,
            True,
            False,
            False,
        ]
        # A forgotten response is unknown: no record can be added to it.
        assert await store.get_many(["resp_0", "resp_5"]) == {"resp_5": await store.get("resp_5")}


async def test_memory_stays_bounded_however_many_responses_pass() -> None:
    """Regression guard for the bound: rows, content, the item index and the spend counters
    all stay bounded (N + k responses leave N, whatever k)."""
    bound = 10
    async with open_memory_store(max_responses=bound) as store:
        for n in range(2000):
            records = lifecycle(f"resp_{n}")
            # Output items with IDs of their own, so the item index would grow if it leaked.
            records[2:4] = [
                ItemDone(response_id=f"resp_{n}", output_index=1, item={"id": f"msg_{n}_1"}),
                ItemDone(response_id=f"resp_{n}", output_index=0, item={"id": f"msg_{n}_0"}),
            ]
            await store.append(records)
            if n % 3 == 0:
                await store.append([Deleted(response_id=f"resp_{n}", deleted_at=300.0)])
        assert len(store._rows) <= 2 * bound
        assert len(store._whole) <= bound
        assert len(store._removed) <= bound
        assert len(store._items) <= 2 * bound
        assert len(store._totals) == 1
        assert sum(bool(entry.items) for entry in store._rows.values()) <= bound


async def test_a_deleted_running_response_ends_and_then_counts_as_removed() -> None:
    async with open_memory_store(max_responses=1) as store:
        await store.append([accepted("resp_x", background=True)])
        await store.append([Deleted(response_id="resp_x", deleted_at=1.0)])
        await store.append(lifecycle("resp_y"))
        # Running (deleted or not), it is never forgotten: its end is still taken.
        await store.append(lifecycle("resp_x")[1:])
        row = await store.get("resp_x")
        assert row is not None and (row.status, row.deleted) == (ResponseStatus.COMPLETED, True)
        assert await store.final_response("resp_x") is None
        assert not await _is_evicted(store, "resp_y")


# -- spend past the bound ----------------------------------------------------------------------


async def test_spend_totals_by_owner_and_model_count_forgotten_responses() -> None:
    """What a key's budget asks (totals by owner, no filter) covers every response since the
    store opened; totals by day, or filtered by time or metadata, cover the rows kept."""
    async with open_memory_store(max_responses=1) as store:
        for n in range(5):
            await store.append(lifecycle(f"resp_{n}"))
        assert await store.get("resp_0") is None
        everything = SpendTotal(
            key="key-1", requests=5, input_tokens=15, output_tokens=25, cost=1.25
        )
        assert await store.spend_totals(SpendFilter(owner="key-1"), group_by="owner") == [
            everything
        ]
        assert await store.spend_totals(SpendFilter(), group_by="model") == [
            SpendTotal(key="gpt-test", requests=5, input_tokens=15, output_tokens=25, cost=1.25)
        ]
        kept = await store.spend_totals(SpendFilter(start=0.0), group_by="owner")
        assert kept == [
            SpendTotal(key="key-1", requests=2, input_tokens=6, output_tokens=10, cost=0.5)
        ]
        assert [log.response_id for log in await store.spend_logs(SpendFilter())] == [
            "resp_4",
            "resp_3",
        ]


# -- copies on the way out ---------------------------------------------------------------------


async def test_what_a_reader_gets_is_its_own() -> None:
    async with open_memory_store() as store:
        await store.append(turn("resp_t1", None))
        for read in (
            store.final_response("resp_t1"),
            store.input_items("resp_t1"),
            store.output_items("resp_t1"),
            store.conversation("resp_t1", max_turns=1, max_bytes=1_000_000),
        ):
            got: Any = await read
            if isinstance(got, dict):
                got["output"].clear()
            else:
                got[0]["id"] = "changed"
                got.clear()
        row = await store.get("resp_t1")
        assert row is not None
        row.metadata["team"] = "red"
        assert (await store.get("resp_t1")) == attrs.evolve(row, metadata={"team": "blue"})
        final = await store.final_response("resp_t1")
        assert final is not None and final["output"] == [item(0), item(1)]
        assert await store.input_items("resp_t1") == [
            {"role": "user", "content": "question resp_t1"}
        ]
        assert await store.output_items("resp_t1") == [
            {"id": "resp_t1_out0"},
            {"id": "resp_t1_out1"},
        ]


async def test_files_and_batches_are_bounded_too() -> None:
    async with open_memory_store(max_responses=2) as store:
        for n in range(3):
            await store.put_object(
                ObjectRow(
                    id=f"file-{n}",
                    kind="file",
                    owner="key-1",
                    model="g",
                    deployment_id="dep-a",
                    provider="openai",
                    raw_id=f"raw-{n}",
                    created_at=float(n),
                    data={"id": f"file-{n}"},
                )
            )
        assert await store.get_object("file-0") is None
        assert await store.find_object("dep-a", "raw-0") is None
        assert [r.id for r in await store.list_objects("file", owner=None)] == ["file-2", "file-1"]


# -- a gateway on the memory store -----------------------------------------------------------


def _fake_config(**store: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "demo",
                "litellm_params": {"model": "fake/demo", "fake_tokens": 6},
                "model_info": {"id": "fake-demo-1"},
            }
        ],
        "general_settings": {"response_id_secret": "t", "store": {"backend": "memory", **store}},
    }


async def test_a_gateway_on_the_memory_store_answers_continues_and_gets() -> None:
    """End to end, the in-process fake (GET and continuations are served from the store): a
    response, a follow-up through previous_response_id, GET, input items, DELETE; nothing on
    disk."""
    async with sluicegate.open_gateway(_fake_config(), environ={}) as gw:
        assert isinstance(gw.store, MemoryStore)
        made = await gw.responses(model="demo", input="hello")
        assert made.status is ResponseStatus.COMPLETED and made.output_text
        follow = await gw.responses(model="demo", input="and then?", previous_response_id=made.id)
        assert follow.status is ResponseStatus.COMPLETED
        assert follow.data["previous_response_id"] == made.id
        assert (await gw.get_response(made.id)).to_dict() == made.to_dict()
        assert (await gw.get_response(follow.id)).to_dict() == follow.to_dict()
        chain = (await gw.list_input_items(follow.id, order="asc"))["data"]
        assert [i.get("role") for i in chain] == ["user", "assistant", "user"]
        [log, _] = await gw.spend_logs()
        assert log.response_id == follow.id and log.status == "completed"
        assert (await gw.delete_response(made.id))["deleted"] is True
        with pytest.raises(NotFoundError):
            await gw.get_response(made.id)
    assert list(Path.cwd().iterdir()) == []  # no sluicegate.db, no lock files


async def test_a_response_evicted_by_the_bound_reads_as_purged_through_the_gateway() -> None:
    async with sluicegate.open_gateway(_fake_config(max_responses=1), environ={}) as gw:
        first = await gw.responses(model="demo", input="hello")
        second = await gw.responses(model="demo", input="again")
        with pytest.raises(NotFoundError):
            await gw.get_response(first.id)
        with pytest.raises(InvalidRequestError) as caught:
            await gw.responses(model="demo", input="more", previous_response_id=first.id)
        assert caught.value.code == "previous_response_not_found"
        assert (await gw.get_response(second.id)).status is ResponseStatus.COMPLETED
        [total] = await gw.spend_totals(group_by="owner")
        assert total.requests == 2


async def test_background_responses_run_polled_and_cancelled_on_the_memory_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(delay=1.0)
    async with gateway(upstream, path="sluicegate.db", backend="memory") as gw:
        assert isinstance(gw.store, MemoryStore)
        queued = await gw.responses(model="g", input="hi", background=True)
        assert queued.status is ResponseStatus.QUEUED
        await trio.sleep(30)
        done = await gw.get_response(queued.id)
        assert (done.status, done.output_text) == (ResponseStatus.COMPLETED, FULL_TEXT)
        running = await gw.responses(model="g", input="hi", background=True)
        await trio.sleep(5.5)
        assert (await gw.cancel_response(running.id)).status is ResponseStatus.CANCELLED
        row = await gw.store.get(running.id)
        assert row is not None and row.status is ResponseStatus.CANCELLED
    assert list(Path.cwd().iterdir()) == []


# -- serve ------------------------------------------------------------------------------------


def test_serve_refuses_several_workers_on_a_memory_store(tmp_path: Path) -> None:
    config = _fake_config()
    config["general_settings"]["allow_unauthenticated"] = True
    path = tmp_path / "memory.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = functools.partial(run, str(path), host="127.0.0.1", port=0)
    with pytest.raises(ConfigError) as caught:
        serve(workers=2)
    assert caught.value.path == "general_settings.store.backend"
    assert "--workers 2" in caught.value.message and "one worker" in caught.value.message
