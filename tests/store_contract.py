"""The store contract: what every store backend must do (DESIGN §5, STYLE "one shared
conformance suite per contract").

A backend's test module provides a ``backend`` fixture returning a :class:`Backend` (how to open
its store, and whether a reopened store sees the same data) and subclasses
:class:`StoreContract`. SQLite (a file with worker threads, a file inline, and ``:memory:``
inline) runs it in ``tests/test_store.py``; the memory backend (not ``persistent``: the tests of
what outlives a reopen skip) in ``tests/test_store_memory.py``; PostgreSQL adds a ``backend``
param later.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from sluicegate import ResponseStatus
from sluicegate.errors import InvalidRequestError
from sluicegate.store import (
    RECOVERY_ERROR,
    Accepted,
    Deleted,
    Ended,
    ItemDone,
    ItemOrigin,
    KeyRow,
    ObjectRow,
    Record,
    Routed,
    Settled,
    SpendFilter,
    SpendLog,
    SpendTotal,
    Store,
    StoreIntegrityError,
    StoreUnavailableError,
    StreamEventRecorded,
)


@attrs.frozen
class Backend:
    #: Opens the backend's store; every call opens the same database when ``persistent``.
    open: Callable[[], AbstractAsyncContextManager[Store]]
    #: Whether closing and reopening keeps the data (not so for an in-memory store).
    persistent: bool


#: A full usage object, as the Responses API reports it.
USAGE: dict[str, Any] = {
    "input_tokens": 3,
    "input_tokens_details": {"cached_tokens": 2},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 4},
    "total_tokens": 8,
}


def accepted(
    rid: str,
    *,
    background: bool = False,
    created_at: float = 100.0,
    owner: str = "key-1",
    model: str = "gpt-test",
    store: bool = True,
    previous_id: str | None = None,
    spend_metadata: dict[str, Any] | None = None,
    input_items: list[dict[str, Any]] | None = None,
) -> Accepted:
    return Accepted(
        response_id=rid,
        owner=owner,
        model=model,
        params={"temperature": 0.5} if store else {},
        input_items=(
            [] if not store else input_items or [{"role": "user", "content": f"hello {rid}"}]
        ),
        background=background,
        store=store,
        metadata={"team": "blue"},
        created_at=created_at,
        previous_id=previous_id,
        spend_metadata=spend_metadata if spend_metadata is not None else {"team": "blue"},
    )


def item(index: int) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{index}", "content": [{"text": f"part {index}"}]}


def ended(
    rid: str,
    status: str = "completed",
    *,
    at: float = 200.0,
    ttft: float | None = 0.5,
    duration: float | None = 100.0,
) -> Ended:
    return Ended(
        response_id=rid,
        status=status,
        error=None,
        response={"id": rid, "status": status, "output": [item(0), item(1)]},
        completed_at=at,
        ttft=ttft,
        duration=duration,
    )


def lifecycle(rid: str, *, at: float = 200.0) -> list[Record]:
    """A full non-background lifecycle; the items arrive out of index order on purpose."""
    return [
        accepted(rid),
        Routed(
            response_id=rid,
            deployment_id="dep-1",
            provider="openai",
            attempt=1,
            upstream_id=f"up_{rid}",
        ),
        ItemDone(response_id=rid, output_index=1, item=item(1)),
        ItemDone(response_id=rid, output_index=0, item=item(0)),
        Settled(response_id=rid, usage=USAGE, cost=0.25),
        ended(rid, at=at),
    ]


def turn(
    rid: str, previous_id: str | None, *, store: bool = True, at: float = 200.0
) -> list[Record]:
    """One turn of a conversation: a question, two output items (out of order), the end."""
    return [
        accepted(
            rid,
            previous_id=previous_id,
            store=store,
            input_items=[{"role": "user", "content": f"question {rid}"}],
        ),
        ItemDone(response_id=rid, output_index=1, item={"id": f"{rid}_out1"}),
        ItemDone(response_id=rid, output_index=0, item={"id": f"{rid}_out0"}),
        ended(rid, at=at),
    ]


def turn_items(rid: str) -> list[dict[str, Any]]:
    """What :func:`turn` contributes to a conversation, in order."""
    return [
        {"role": "user", "content": f"question {rid}"},
        {"id": f"{rid}_out0"},
        {"id": f"{rid}_out1"},
    ]


#: Midnight UTC of three consecutive days (spend totals by day).
DAY1 = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
DAY2 = DAY1 + 86400
DAY3 = DAY2 + 86400


async def append_spend_rows(store: Store) -> None:
    """Six responses across owners, models, UTC days and spend metadata; costs are binary
    fractions so sums are exact."""

    async def one(
        rid: str,
        owner: str,
        model: str,
        created_at: float,
        spend_metadata: dict[str, Any],
        tokens: tuple[int, int] | None,
        cost: float | None,
        *,
        status: str | None = "completed",
        estimated: bool = False,
    ) -> None:
        records: list[Record] = [
            accepted(
                rid, owner=owner, model=model, created_at=created_at, spend_metadata=spend_metadata
            ),
            Routed(response_id=rid, deployment_id=f"{model}-dep", provider="openai", attempt=1),
        ]
        if tokens is not None:
            usage = {"input_tokens": tokens[0], "output_tokens": tokens[1]}
            records.append(Settled(response_id=rid, usage=usage, cost=cost, estimated=estimated))
        if status is not None:
            records.append(ended(rid, status, at=created_at + 2.0, ttft=0.25, duration=2.0))
        await store.append(records)

    await one(
        "resp_s1", "alice", "gpt-a", DAY1 + 36000, {"team": "blue", "env": "prod"}, (10, 20), 0.5
    )
    await one("resp_s2", "alice", "gpt-b", DAY1 + 86399, {"team": "red"}, (5, 5), 0.25)
    await one(
        "resp_s3", "bob", "gpt-a", DAY2 + 3600, {"team": "blue", "env": "dev"}, (100, 1), None
    )
    await one(
        "resp_s4",
        "bob",
        "gpt-a",
        DAY2 + 7200,
        {"team": "blue", "env": "prod", "tags": ["a", "b"]},
        (7, 3),
        0.125,
        status="failed",
        estimated=True,
    )
    await one("resp_s5", "alice", "gpt-a", DAY3, {}, None, None, status=None)
    await one(
        "resp_s6",
        "carol",
        "gpt-b",
        DAY3 + 18000,
        {"team": "blue", "nested": {"b": 1, "a": 2}},
        (2, 2),
        2.0,
    )
    # Deleting a response removes its content, never its spend row.
    await store.append([Deleted(response_id="resp_s6", deleted_at=DAY3 + 20000)])


#: A virtual key with every field set, and one with none of the optional ones.
FULL_KEY = KeyRow(
    key_id="key-00000000000000a1",
    key_hash="a1" * 32,
    alias="ci-bot",
    models=("gpt-a", "gpt-b"),
    rpm=60,
    tpm=10_000,
    max_parallel_requests=4,
    max_budget=12.5,
    expires_at=5000.0,
    created_at=1000.0,
    metadata={"team": "blue", "tags": ["a", {"b": None}]},
)
BARE_KEY = KeyRow(key_id="key-00000000000000b2", key_hash="b2" * 32, created_at=1001.0)


async def ids(store: Store, where: SpendFilter, **options: Any) -> list[str]:
    return [log.response_id for log in await store.spend_logs(where, **options)]


class StoreContract:
    @pytest.fixture
    async def store(self, backend: Backend) -> AsyncIterator[Store]:
        async with backend.open() as store:
            yield store

    # -- append and the projection

    async def test_full_lifecycle_updates_the_projection_and_every_getter(
        self, store: Store
    ) -> None:
        spend_metadata = {"team": "blue", "cost_center": 7, "tags": ["a", "b"]}
        await store.append(
            [
                accepted("resp_a", previous_id="resp_before", spend_metadata=spend_metadata),
                Routed(response_id="resp_a", deployment_id="dep-1", provider="openai", attempt=1),
            ]
        )
        row = await store.get("resp_a")
        assert row is not None
        assert row.status is ResponseStatus.IN_PROGRESS
        assert (row.deployment_id, row.provider, row.upstream_id) == ("dep-1", "openai", None)
        assert (row.previous_id, row.spend_metadata) == ("resp_before", spend_metadata)
        assert await store.final_response("resp_a") is None

        # The upstream's ID arrives with a later Routed; one without an ID does not erase it.
        await store.append(
            [
                Routed(
                    response_id="resp_a",
                    deployment_id="dep-2",
                    provider="azure",
                    attempt=2,
                    upstream_id="up_a",
                ),
                Routed(response_id="resp_a", deployment_id="dep-2", provider="azure", attempt=2),
            ]
        )
        await store.append(lifecycle("resp_a")[2:])
        row = await store.get("resp_a")
        assert row is not None
        assert attrs.asdict(row) == {
            "id": "resp_a",
            "owner": "key-1",
            "status": ResponseStatus.COMPLETED,
            "model": "gpt-test",
            "deployment_id": "dep-2",
            "provider": "azure",
            "background": False,
            "store": True,
            "metadata": {"team": "blue"},
            "created_at": 100.0,
            "previous_id": "resp_before",
            "spend_metadata": spend_metadata,
            "completed_at": 200.0,
            "usage": USAGE,
            "cost": 0.25,
            "estimated": False,
            "error": None,
            "deleted": False,
            "upstream_id": "up_a",
            "ttft": 0.5,
            "duration": 100.0,
            "purged": False,
        }
        assert await store.final_response("resp_a") == {
            "id": "resp_a",
            "status": "completed",
            "output": [item(0), item(1)],
        }
        assert await store.input_items("resp_a") == [{"role": "user", "content": "hello resp_a"}]
        assert await store.output_items("resp_a") == [item(0), item(1)]
        assert store.statistics().records_appended == 8
        assert store.statistics().pending == 0

    async def test_settled_usage_fills_the_spend_rows_token_counts(self, store: Store) -> None:
        await store.append(lifecycle("resp_u"))
        # Counts missing from the usage (or no usage at all) are 0; estimated is kept.
        await store.append(
            [
                accepted("resp_v", created_at=101.0),
                Settled(
                    response_id="resp_v",
                    usage={"input_tokens": 9, "input_tokens_details": None},
                    cost=None,
                    estimated=True,
                ),
                ended("resp_v", "incomplete", ttft=None, duration=None),
            ]
        )
        await store.append([accepted("resp_w", created_at=102.0)])
        await store.append([Settled(response_id="resp_w", usage=None, cost=None)])
        logs = await store.spend_logs(SpendFilter(), newest_first=False)
        assert logs == [
            SpendLog(
                response_id="resp_u",
                owner="key-1",
                model="gpt-test",
                deployment_id="dep-1",
                provider="openai",
                status="completed",
                input_tokens=3,
                output_tokens=5,
                cached_tokens=2,
                reasoning_tokens=4,
                total_tokens=8,
                cost=0.25,
                estimated=False,
                ttft=0.5,
                duration=100.0,
                created_at=100.0,
                completed_at=200.0,
                spend_metadata={"team": "blue"},
            ),
            SpendLog(
                response_id="resp_v",
                owner="key-1",
                model="gpt-test",
                deployment_id=None,
                provider=None,
                status="incomplete",
                input_tokens=9,
                output_tokens=0,
                cached_tokens=0,
                reasoning_tokens=0,
                total_tokens=0,
                cost=None,
                estimated=True,
                ttft=None,
                duration=None,
                created_at=101.0,
                completed_at=200.0,
                spend_metadata={"team": "blue"},
            ),
            SpendLog(
                response_id="resp_w",
                owner="key-1",
                model="gpt-test",
                deployment_id=None,
                provider=None,
                status="in_progress",
                input_tokens=0,
                output_tokens=0,
                cached_tokens=0,
                reasoning_tokens=0,
                total_tokens=0,
                cost=None,
                estimated=False,
                ttft=None,
                duration=None,
                created_at=102.0,
                completed_at=None,
                spend_metadata={"team": "blue"},
            ),
        ]

    async def test_unknown_response_reads_as_nothing(self, store: Store) -> None:
        assert await store.get("resp_nope") is None
        assert await store.final_response("resp_nope") is None
        assert await store.input_items("resp_nope") == []
        assert await store.output_items("resp_nope") == []
        assert await store.stream_events("resp_nope") == []
        assert await store.get_many(["resp_nope"]) == {}
        assert await store.get_many([]) == {}

    async def test_get_many_reads_the_rows_of_several_responses_at_once(self, store: Store) -> None:
        await store.append([*lifecycle("resp_m1"), accepted("resp_m2", background=True)])
        rows = await store.get_many(["resp_m2", "resp_unknown", "resp_m1", "resp_m2"])
        assert rows == {
            "resp_m1": await store.get("resp_m1"),
            "resp_m2": await store.get("resp_m2"),
        }
        assert rows["resp_m1"].status is ResponseStatus.COMPLETED
        assert rows["resp_m2"].status is ResponseStatus.QUEUED

    async def test_usage_settled_after_another_processes_end_is_billed(self, store: Store) -> None:
        """A background response cancelled through another process is ended there (status,
        no usage); the process that ran it settles its usage afterwards: the spend row shows
        both, and the end is not replaced."""
        await store.append([accepted("resp_x", background=True)])
        await store.append(
            [
                Ended(
                    response_id="resp_x",
                    status="cancelled",
                    error=None,
                    response=None,
                    completed_at=150.0,
                )
            ]
        )
        await store.append(
            [
                ItemDone(response_id="resp_x", output_index=0, item=item(0)),
                Settled(response_id="resp_x", usage=USAGE, cost=0.25, estimated=True),
            ]
        )
        row = await store.get("resp_x")
        assert row is not None
        assert (row.status, row.completed_at, row.usage, row.cost, row.estimated) == (
            ResponseStatus.CANCELLED,
            150.0,
            USAGE,
            0.25,
            True,
        )
        assert await store.output_items("resp_x") == [item(0)]
        [log] = await store.spend_logs(SpendFilter(owner="key-1"))
        assert (log.status, log.output_tokens) == ("cancelled", 5)

    async def test_background_response_is_queued_until_routed(self, store: Store) -> None:
        await store.append([accepted("resp_bg", background=True)])
        row = await store.get("resp_bg")
        assert row is not None
        assert (row.status, row.background) == (ResponseStatus.QUEUED, True)
        await store.append(
            [Routed(response_id="resp_bg", deployment_id="d", provider="openai", attempt=1)]
        )
        row = await store.get("resp_bg")
        assert row is not None
        assert row.status is ResponseStatus.IN_PROGRESS

    async def test_failed_end_keeps_status_and_error(self, store: Store) -> None:
        error = {"code": "server_error", "message": "upstream broke"}
        await store.append(
            [
                accepted("resp_f"),
                Ended(
                    response_id="resp_f",
                    status="failed",
                    error=error,
                    response=None,
                    completed_at=9.0,
                ),
            ]
        )
        row = await store.get("resp_f")
        assert row is not None
        assert (row.status, row.error, row.completed_at) == (ResponseStatus.FAILED, error, 9.0)

    # -- the log's rules

    async def test_second_ended_is_refused_and_nothing_of_its_batch_is_written(
        self, store: Store
    ) -> None:
        await store.append(lifecycle("resp_b"))
        before = await store.get("resp_b")
        with pytest.raises(StoreIntegrityError, match="already ended"):
            await store.append(
                [
                    ItemDone(response_id="resp_b", output_index=2, item=item(2)),
                    Settled(response_id="resp_b", usage=None, cost=99.0),
                    ended("resp_b", "failed", at=300.0),
                ]
            )
        assert await store.get("resp_b") == before
        assert await store.output_items("resp_b") == [item(0), item(1)]
        assert store.statistics().records_appended == 6
        assert store.statistics().pending == 0

    async def test_two_ended_in_one_batch_are_refused(self, store: Store) -> None:
        with pytest.raises(StoreIntegrityError, match="already ended"):
            await store.append([accepted("resp_c"), ended("resp_c"), ended("resp_c")])
        assert await store.get("resp_c") is None

    async def test_records_before_accepted_or_a_second_accepted_are_refused(
        self, store: Store
    ) -> None:
        with pytest.raises(StoreIntegrityError, match="never accepted"):
            await store.append([ended("resp_ghost")])
        await store.append([accepted("resp_d")])
        with pytest.raises(StoreIntegrityError, match="already accepted"):
            await store.append([accepted("resp_d")])

    async def test_a_refused_append_does_not_fail_the_others_in_its_group_commit(
        self, store: Store
    ) -> None:
        await store.append([accepted("resp_e"), ended("resp_e")])
        refused: list[BaseException] = []

        async def bad() -> None:
            try:
                await store.append([ended("resp_e")])
            except StoreIntegrityError as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(store.append, lifecycle(f"resp_ok{i}"))
            nursery.start_soon(bad)
        assert len(refused) == 1
        for i in range(10):
            row = await store.get(f"resp_ok{i}")
            assert row is not None
            assert row.status is ResponseStatus.COMPLETED

    async def test_unserializable_record_fails_in_the_caller(self, store: Store) -> None:
        with pytest.raises(StoreIntegrityError, match="JSON"):
            await store.append(
                [
                    accepted("resp_j"),
                    ItemDone(response_id="resp_j", output_index=0, item={"x": object()}),
                ]
            )
        assert await store.get("resp_j") is None
        assert store.statistics().pending == 0

    def test_ended_must_be_terminal(self) -> None:
        with pytest.raises(ValueError, match="terminal"):
            Ended(response_id="r", status="in_progress", error=None, response=None, completed_at=0)

    # -- deletion

    async def test_deleted_removes_content_but_keeps_the_accounting(self, store: Store) -> None:
        await store.append(
            [
                *lifecycle("resp_del"),
                StreamEventRecorded(response_id="resp_del", sequence_number=0, event={"x": 1}),
            ]
        )
        await store.append([Deleted(response_id="resp_del", deleted_at=500.0)])
        row = await store.get("resp_del")
        assert row is not None
        assert (row.status, row.deleted) == (ResponseStatus.COMPLETED, True)
        assert (row.usage, row.cost) == (USAGE, 0.25)
        assert (row.owner, row.model, row.completed_at) == ("key-1", "gpt-test", 200.0)
        assert await store.final_response("resp_del") is None
        assert await store.input_items("resp_del") == []
        assert await store.output_items("resp_del") == []
        assert await store.stream_events("resp_del") == []

    async def test_item_origins_name_the_response_owner_and_deployment_of_output_items(
        self, store: Store
    ) -> None:
        """Replayed items pin their request: the store knows which response made each one."""
        await store.append(lifecycle("resp_a"))
        other = [
            accepted("resp_b", owner="key-2"),
            Routed(response_id="resp_b", deployment_id="dep-2", provider="azure", attempt=1),
            ItemDone(response_id="resp_b", output_index=0, item={**item(0), "id": "rs_b"}),
            ended("resp_b"),
        ]
        await store.append(other)
        found = await store.item_origins(["msg_1", "rs_b", "msg_none", "msg_1"])
        assert set(found) == {"msg_1", "rs_b"}
        assert found["msg_1"] == ItemOrigin(
            item_id="msg_1",
            response_id="resp_a",
            owner="key-1",
            deployment_id="dep-1",
            provider="openai",
        )
        assert (found["rs_b"].owner, found["rs_b"].deployment_id) == ("key-2", "dep-2")
        assert await store.item_origins([]) == {}
        # Deleted content is no longer found (its items are gone upstream as well).
        await store.append([Deleted(response_id="resp_b", deleted_at=500.0)])
        assert await store.item_origins(["rs_b"]) == {}

    async def test_item_origins_look_up_many_ids_at_once(self, store: Store) -> None:
        records: list[Record] = [accepted("resp_many")]
        records += [
            ItemDone(response_id="resp_many", output_index=i, item=item(i)) for i in range(600)
        ]
        await store.append([*records, ended("resp_many")])
        found = await store.item_origins([f"msg_{i}" for i in range(0, 600, 2)])
        assert len(found) == 300
        assert {o.response_id for o in found.values()} == {"resp_many"}

    async def test_content_too_deep_to_store_is_replaced_and_the_response_still_recorded(
        self, store: Store
    ) -> None:
        """A provider may send JSON nested deeper than the encoder goes: the response is still
        recorded and billed, with a stand-in for just the part that cannot be stored."""
        deep: Any = "x"
        for _ in range(300):
            deep = {"k": deep}
        odd = {**item(0), "deep": deep}
        await store.append(
            [
                accepted("resp_deep"),
                ItemDone(response_id="resp_deep", output_index=0, item=odd),
                StreamEventRecorded(
                    response_id="resp_deep", sequence_number=0, event={"type": "x", "v": deep}
                ),
                Settled(response_id="resp_deep", usage=USAGE, cost=0.25),
                Ended(
                    response_id="resp_deep",
                    status="completed",
                    error=None,
                    response={"id": "resp_deep", "status": "completed", "output": [odd]},
                    completed_at=200.0,
                ),
            ]
        )
        row = await store.get("resp_deep")
        assert row is not None and (row.status, row.cost) == (ResponseStatus.COMPLETED, 0.25)
        (stored,) = await store.output_items("resp_deep")
        assert stored["id"] == "msg_0" and stored["content"] == odd["content"]
        assert "sluicegate_unrecorded" in stored["deep"]
        final = await store.final_response("resp_deep")
        assert final is not None and final["output"][0]["id"] == "msg_0"
        assert "sluicegate_unrecorded" in final["output"][0]["deep"]
        (event,) = await store.stream_events("resp_deep")
        assert event["type"] == "x" and "sluicegate_unrecorded" in event["v"]["k"]

    async def test_content_arriving_after_deletion_is_not_kept(self, store: Store) -> None:
        await store.append([accepted("resp_dl", background=True)])
        await store.append([Deleted(response_id="resp_dl", deleted_at=1.0)])
        await store.append(
            [
                ItemDone(response_id="resp_dl", output_index=0, item=item(0)),
                StreamEventRecorded(response_id="resp_dl", sequence_number=0, event={"x": 1}),
                ended("resp_dl"),
            ]
        )
        row = await store.get("resp_dl")
        assert row is not None
        assert (row.status, row.deleted, row.completed_at) == (
            ResponseStatus.COMPLETED,
            True,
            200.0,
        )
        assert await store.output_items("resp_dl") == []
        assert await store.stream_events("resp_dl") == []
        assert await store.final_response("resp_dl") is None
        # Ended, deleted: nothing left for recovery to end.
        assert await store.recover(now=1.0) == 0

    # -- stream events (background resume)

    async def test_stream_events_after_and_limit(self, store: Store) -> None:
        await store.append([accepted("resp_s", background=True)])
        events = [
            StreamEventRecorded(
                response_id="resp_s", sequence_number=n, event={"sequence_number": n}
            )
            for n in range(10)
        ]
        await store.append(events[:4])
        await store.append(events[4:])
        numbers = [e["sequence_number"] for e in await store.stream_events("resp_s")]
        assert numbers == list(range(10))
        page = await store.stream_events("resp_s", after=3, limit=4)
        assert [e["sequence_number"] for e in page] == [4, 5, 6, 7]
        assert await store.stream_events("resp_s", after=9) == []
        assert await store.stream_events("resp_s", limit=0) == []

    # -- recovery

    async def test_recover_leaves_the_stores_own_unfinished_responses_alone(
        self, store: Store
    ) -> None:
        """Regression: recovery used to fail every unfinished response, including the live ones
        of the store (or process) calling it."""
        await store.append([accepted("resp_r1"), accepted("resp_r2", background=True)])
        assert await store.recover(now=42.0) == 0
        r1, r2 = await store.get("resp_r1"), await store.get("resp_r2")
        assert r1 is not None and r2 is not None
        assert (r1.status, r2.status) == (ResponseStatus.IN_PROGRESS, ResponseStatus.QUEUED)
        await store.append([ended("resp_r1")])
        r1 = await store.get("resp_r1")
        assert r1 is not None
        assert r1.status is ResponseStatus.COMPLETED

    async def test_recover_fails_unfinished_responses_exactly_once(self, backend: Backend) -> None:
        if not backend.persistent:
            pytest.skip("an in-memory store does not outlive its opener")
        async with backend.open() as store:
            await store.append([accepted("resp_r1"), accepted("resp_r2", background=True)])
            await store.append(lifecycle("resp_done"))
        before = time.time()
        async with backend.open() as store:
            after = time.time()
            # Opening recovered them (the store that accepted them is closed).
            assert store.statistics().records_appended == 2
            for rid in ("resp_r1", "resp_r2"):
                row = await store.get(rid)
                assert row is not None
                assert row.status is ResponseStatus.FAILED
                assert row.completed_at is not None
                assert before <= row.completed_at <= after
                assert row.error == RECOVERY_ERROR
            done = await store.get("resp_done")
            assert done is not None
            assert done.status is ResponseStatus.COMPLETED
            assert await store.recover(now=43.0) == 0

    # -- enqueue

    async def test_enqueued_records_are_committed_before_a_later_append(self, store: Store) -> None:
        # Were the append committed first, its Ended would be refused (never accepted).
        await store.enqueue(lifecycle("resp_eq")[:2])
        await store.append(lifecycle("resp_eq")[2:])
        row = await store.get("resp_eq")
        assert row is not None
        assert (row.status, row.deployment_id, row.upstream_id) == (
            ResponseStatus.COMPLETED,
            "dep-1",
            "up_resp_eq",
        )
        assert await store.output_items("resp_eq") == [item(0), item(1)]
        assert store.statistics().records_appended == 6
        assert store.statistics().pending == 0

    async def test_a_refused_enqueue_is_logged_and_fails_nobody_else(
        self, store: Store, caplog: pytest.LogCaptureFixture
    ) -> None:
        await store.append([accepted("resp_eq1")])
        with caplog.at_level(logging.ERROR, logger="sluicegate"):
            await store.enqueue([accepted("resp_eq1")])  # a second Accepted: refused
            await store.enqueue(lifecycle("resp_eq2"))
            # Committed after both enqueues (one queue), so both verdicts are in when it returns.
            await store.append(
                [Routed(response_id="resp_eq1", deployment_id="d", provider="openai", attempt=1)]
            )
        refusals = [r for r in caplog.records if r.name == "sluicegate"]
        assert len(refusals) == 1
        assert refusals[0].levelno == logging.ERROR
        assert "resp_eq1" in refusals[0].getMessage()
        assert "already accepted" in refusals[0].getMessage()
        first, second = await store.get("resp_eq1"), await store.get("resp_eq2")
        assert first is not None and second is not None
        assert (first.status, first.deployment_id) == (ResponseStatus.IN_PROGRESS, "d")
        assert second.status is ResponseStatus.COMPLETED
        assert store.statistics().records_appended == 1 + 6 + 1
        assert store.statistics().pending == 0

    async def test_enqueue_of_an_unserializable_record_fails_in_the_caller(
        self, store: Store
    ) -> None:
        # Not JSON on purpose: an int key.
        not_json: dict[Any, Any] = {1: 2}
        with pytest.raises(StoreIntegrityError, match="JSON"):
            await store.enqueue(
                [
                    accepted("resp_ej"),
                    ItemDone(response_id="resp_ej", output_index=0, item=not_json),
                ]
            )
        await store.append([accepted("resp_other")])
        assert await store.get("resp_ej") is None
        assert store.statistics().pending == 0

    # -- conversations

    async def test_conversation_is_every_turns_items_oldest_first(self, store: Store) -> None:
        await store.append(turn("resp_t1", None))
        await store.append(turn("resp_t2", "resp_t1"))
        await store.append(turn("resp_t3", "resp_t2"))
        conversation = await store.conversation("resp_t3", max_turns=3, max_bytes=1_000_000)
        assert conversation == [
            *turn_items("resp_t1"),
            *turn_items("resp_t2"),
            *turn_items("resp_t3"),
        ]
        assert await store.conversation("resp_t1", max_turns=1, max_bytes=1_000_000) == (
            turn_items("resp_t1")
        )

    async def test_conversation_with_a_deleted_link_is_not_found(self, store: Store) -> None:
        await store.append(turn("resp_t1", None))
        await store.append(turn("resp_t2", "resp_t1"))
        await store.append(turn("resp_t3", "resp_t2"))
        await store.append([Deleted(response_id="resp_t2", deleted_at=300.0)])
        with pytest.raises(InvalidRequestError) as caught:
            await store.conversation("resp_t3", max_turns=10, max_bytes=1_000_000)
        assert caught.value.message == "Previous response with id 'resp_t2' not found."
        assert (caught.value.param, caught.value.code, caught.value.status_code) == (
            "previous_response_id",
            "previous_response_not_found",
            400,
        )

    async def test_conversation_through_a_store_false_response_is_refused(
        self, store: Store
    ) -> None:
        await store.append(turn("resp_t1", None, store=False))
        await store.append(turn("resp_t2", "resp_t1"))
        with pytest.raises(InvalidRequestError, match=r"'resp_t1'.*store=false") as caught:
            await store.conversation("resp_t2", max_turns=10, max_bytes=1_000_000)
        assert (caught.value.param, caught.value.code) == (
            "previous_response_id",
            "previous_response_not_found",
        )

    async def test_conversation_of_an_unknown_response_or_link_is_not_found(
        self, store: Store
    ) -> None:
        with pytest.raises(InvalidRequestError) as caught:
            await store.conversation("resp_unknown", max_turns=10, max_bytes=1_000_000)
        assert caught.value.message == "Previous response with id 'resp_unknown' not found."
        assert caught.value.code == "previous_response_not_found"
        # A chain whose oldest link names a response the store never had.
        await store.append(turn("resp_t2", "resp_lost"))
        await store.append(turn("resp_t3", "resp_t2"))
        with pytest.raises(InvalidRequestError) as caught:
            await store.conversation("resp_t3", max_turns=10, max_bytes=1_000_000)
        assert caught.value.message == "Previous response with id 'resp_lost' not found."
        assert caught.value.param == "previous_response_id"

    async def test_conversation_longer_than_max_turns_is_refused(self, store: Store) -> None:
        previous = None
        for n in range(1, 5):
            await store.append(turn(f"resp_t{n}", previous))
            previous = f"resp_t{n}"
        four_turns = await store.conversation("resp_t4", max_turns=4, max_bytes=1_000_000)
        assert len(four_turns) == 12
        with pytest.raises(InvalidRequestError, match="longer than 3 turns") as caught:
            await store.conversation("resp_t4", max_turns=3, max_bytes=1_000_000)
        assert "general_settings.store.max_conversation_turns" in caught.value.message
        assert (caught.value.param, caught.value.code) == (
            "previous_response_id",
            "conversation_too_long",
        )

    async def test_conversation_larger_than_max_bytes_is_refused(self, store: Store) -> None:
        big = {"id": "big", "text": "x" * 200_000}
        await store.append(
            [*turn("resp_t1", None), ItemDone(response_id="resp_t1", output_index=2, item=big)]
        )
        await store.append(turn("resp_t2", "resp_t1"))
        with pytest.raises(InvalidRequestError, match="larger than 100000 bytes") as caught:
            await store.conversation("resp_t2", max_turns=10, max_bytes=100_000)
        assert "general_settings.store.max_conversation_bytes" in caught.value.message
        assert (caught.value.param, caught.value.code) == (
            "previous_response_id",
            "conversation_too_long",
        )
        conversation = await store.conversation("resp_t2", max_turns=10, max_bytes=1_000_000)
        assert conversation == [*turn_items("resp_t1"), big, *turn_items("resp_t2")]

    # -- spend

    async def test_spend_logs_filter_by_owner_model_time_and_metadata(self, store: Store) -> None:
        await append_spend_rows(store)
        newest = ["resp_s6", "resp_s5", "resp_s4", "resp_s3", "resp_s2", "resp_s1"]
        assert await ids(store, SpendFilter()) == newest
        assert await ids(store, SpendFilter(), newest_first=False) == newest[::-1]
        assert await ids(store, SpendFilter(), limit=2) == ["resp_s6", "resp_s5"]
        assert await ids(store, SpendFilter(), limit=2, newest_first=False) == [
            "resp_s1",
            "resp_s2",
        ]
        assert await ids(store, SpendFilter(), limit=0) == []
        assert await ids(store, SpendFilter(owner="alice")) == ["resp_s5", "resp_s2", "resp_s1"]
        assert await ids(store, SpendFilter(owner="bob", model="gpt-a")) == [
            "resp_s4",
            "resp_s3",
        ]
        assert await ids(store, SpendFilter(model="gpt-b")) == ["resp_s6", "resp_s2"]
        assert await ids(store, SpendFilter(start=DAY2, end=DAY3)) == ["resp_s4", "resp_s3"]
        assert await ids(store, SpendFilter(start=DAY3)) == ["resp_s6", "resp_s5"]
        assert await ids(store, SpendFilter(end=DAY1 + 86399)) == ["resp_s1"]
        assert await ids(store, SpendFilter(metadata={"team": "blue"})) == [
            "resp_s6",
            "resp_s4",
            "resp_s3",
            "resp_s1",
        ]
        assert await ids(store, SpendFilter(metadata={"team": "blue", "env": "prod"})) == [
            "resp_s4",
            "resp_s1",
        ]
        # Values match as JSON: objects whatever their key order, lists in their order.
        assert await ids(store, SpendFilter(metadata={"nested": {"a": 2, "b": 1}})) == ["resp_s6"]
        assert await ids(store, SpendFilter(metadata={"tags": ["a", "b"]})) == ["resp_s4"]
        assert await ids(store, SpendFilter(metadata={"tags": ["b", "a"]})) == []
        assert await ids(store, SpendFilter(metadata={"team": '"blue"'})) == []
        assert await ids(store, SpendFilter(metadata={"missing": 1})) == []
        assert await ids(
            store, SpendFilter(owner="bob", start=DAY2 + 3601, metadata={"team": "blue"})
        ) == ["resp_s4"]
        assert await ids(store, SpendFilter(owner="nobody")) == []
        assert await store.spend_logs(SpendFilter(metadata={"tags": ["a", "b"]})) == [
            SpendLog(
                response_id="resp_s4",
                owner="bob",
                model="gpt-a",
                deployment_id="gpt-a-dep",
                provider="openai",
                status="failed",
                input_tokens=7,
                output_tokens=3,
                cached_tokens=0,
                reasoning_tokens=0,
                total_tokens=0,
                cost=0.125,
                estimated=True,
                ttft=0.25,
                duration=2.0,
                created_at=DAY2 + 7200,
                completed_at=DAY2 + 7202,
                spend_metadata={"team": "blue", "env": "prod", "tags": ["a", "b"]},
            )
        ]

    async def test_spend_totals_by_owner_model_and_day(self, store: Store) -> None:
        await append_spend_rows(store)
        everything = SpendFilter()
        assert await store.spend_totals(everything, group_by="owner") == [
            SpendTotal(key="alice", requests=3, input_tokens=15, output_tokens=25, cost=0.75),
            SpendTotal(key="bob", requests=2, input_tokens=107, output_tokens=4, cost=0.125),
            SpendTotal(key="carol", requests=1, input_tokens=2, output_tokens=2, cost=2.0),
        ]
        assert await store.spend_totals(everything, group_by="model") == [
            SpendTotal(key="gpt-a", requests=4, input_tokens=117, output_tokens=24, cost=0.625),
            SpendTotal(key="gpt-b", requests=2, input_tokens=7, output_tokens=7, cost=2.25),
        ]
        assert await store.spend_totals(everything, group_by="day") == [
            SpendTotal(key="2025-03-01", requests=2, input_tokens=15, output_tokens=25, cost=0.75),
            SpendTotal(key="2025-03-02", requests=2, input_tokens=107, output_tokens=4, cost=0.125),
            SpendTotal(key="2025-03-03", requests=2, input_tokens=2, output_tokens=2, cost=2.0),
        ]
        blue = SpendFilter(metadata={"team": "blue"})
        assert await store.spend_totals(blue, group_by="day") == [
            SpendTotal(key="2025-03-01", requests=1, input_tokens=10, output_tokens=20, cost=0.5),
            SpendTotal(key="2025-03-02", requests=2, input_tokens=107, output_tokens=4, cost=0.125),
            SpendTotal(key="2025-03-03", requests=1, input_tokens=2, output_tokens=2, cost=2.0),
        ]
        alice_on_gpt_a = SpendFilter(owner="alice", model="gpt-a", start=DAY1, end=DAY3 + 1)
        assert await store.spend_totals(alice_on_gpt_a, group_by="owner") == [
            SpendTotal(key="alice", requests=2, input_tokens=10, output_tokens=20, cost=0.5),
        ]
        assert await store.spend_totals(SpendFilter(owner="nobody"), group_by="day") == []

    # -- retention

    async def test_purge_removes_content_of_ended_responses_and_keeps_their_spend(
        self, store: Store
    ) -> None:
        await store.append(
            [
                *turn("resp_old", None),
                StreamEventRecorded(response_id="resp_old", sequence_number=0, event={"x": 1}),
                Settled(response_id="resp_old", usage=USAGE, cost=0.25),
            ]
        )
        await store.append(turn("resp_next", "resp_old", at=300.0))
        await store.append(lifecycle("resp_new", at=300.0))
        await store.append([accepted("resp_running")])
        assert await store.purge(before=250.0) == 1

        row = await store.get("resp_old")
        assert row is not None
        assert (row.purged, row.deleted, row.status) == (True, False, ResponseStatus.COMPLETED)
        assert (row.usage, row.cost, row.completed_at) == (USAGE, 0.25, 200.0)
        assert await store.final_response("resp_old") is None
        assert await store.input_items("resp_old") == []
        assert await store.output_items("resp_old") == []
        assert await store.stream_events("resp_old") == []
        logs = {log.response_id: log for log in await store.spend_logs(SpendFilter())}
        log = logs["resp_old"]
        assert (log.response_id, log.input_tokens, log.total_tokens, log.cost) == (
            "resp_old",
            3,
            8,
            0.25,
        )
        with pytest.raises(InvalidRequestError, match="'resp_old' not found"):
            await store.conversation("resp_next", max_turns=10, max_bytes=1_000_000)

        new = await store.get("resp_new")
        assert new is not None
        assert new.purged is False
        assert await store.output_items("resp_new") == [item(0), item(1)]
        assert await store.final_response("resp_new") is not None
        running = await store.get("resp_running")
        assert running is not None
        assert (running.purged, running.status) == (False, ResponseStatus.IN_PROGRESS)
        assert await store.input_items("resp_running") == [
            {"role": "user", "content": "hello resp_running"}
        ]

        assert await store.purge(before=250.0) == 0
        assert await store.purge(before=300.5) == 2  # resp_next and resp_new
        # Purging takes no record of the log; the spend rows all stay.
        assert len(await store.spend_logs(SpendFilter())) == 4

    # -- keys

    async def test_put_key_round_trips_through_get_and_find(self, store: Store) -> None:
        # No model at all is not every model: () and None must come back apart.
        no_models = KeyRow(
            key_id="key-00000000000000c3", key_hash="c3" * 32, models=[], created_at=1.0
        )
        for key in (FULL_KEY, BARE_KEY, no_models):
            await store.put_key(key)
        for key in (FULL_KEY, BARE_KEY, no_models):
            assert await store.get_key(key.key_id) == key
            assert await store.find_key(key.key_hash) == key
        bare = await store.get_key(BARE_KEY.key_id)
        assert bare is not None
        assert (bare.alias, bare.models, bare.rpm, bare.expires_at, bare.metadata) == (
            None,
            None,
            None,
            None,
            {},
        )
        assert no_models.models == ()
        # Keys are no records of the log.
        assert store.statistics().records_appended == 0

    async def test_unknown_keys_read_as_nothing(self, store: Store) -> None:
        await store.put_key(FULL_KEY)
        assert await store.get_key("key-ffffffffffffffff") is None
        assert await store.find_key("f" * 64) is None
        # The lookups are by exact column, never crossed.
        assert await store.get_key(FULL_KEY.key_hash) is None
        assert await store.find_key(FULL_KEY.key_id) is None

    async def test_a_key_with_a_taken_id_or_hash_is_refused(self, store: Store) -> None:
        await store.put_key(FULL_KEY)
        same_id = attrs.evolve(BARE_KEY, key_id=FULL_KEY.key_id)
        same_hash = attrs.evolve(BARE_KEY, key_hash=FULL_KEY.key_hash)
        for duplicate in (same_id, same_hash):
            with pytest.raises(StoreIntegrityError) as caught:
                await store.put_key(duplicate)
            assert FULL_KEY.key_hash not in caught.value.message
        assert await store.get_key(FULL_KEY.key_id) == FULL_KEY
        assert await store.get_key(BARE_KEY.key_id) is None
        await store.put_key(BARE_KEY)  # the store still takes keys
        assert await store.find_key(BARE_KEY.key_hash) == BARE_KEY

    async def test_delete_key_marks_it_deleted_once_and_keeps_its_row(self, store: Store) -> None:
        await store.put_key(FULL_KEY)
        await store.put_key(BARE_KEY)
        assert await store.delete_key(FULL_KEY.key_id, at=2000.0) is True
        assert await store.delete_key(FULL_KEY.key_id, at=3000.0) is False
        assert await store.delete_key("key-ffffffffffffffff", at=2000.0) is False
        deleted = attrs.evolve(FULL_KEY, deleted_at=2000.0)
        assert await store.get_key(FULL_KEY.key_id) == deleted
        assert await store.find_key(FULL_KEY.key_hash) == deleted
        assert await store.get_key(BARE_KEY.key_id) == BARE_KEY
        # A deleted key's hash is never taken again.
        with pytest.raises(StoreIntegrityError):
            await store.put_key(attrs.evolve(FULL_KEY, key_id="key-00000000000000d4"))

    async def test_a_refused_put_key_fails_no_append_of_its_group_commit(
        self, store: Store
    ) -> None:
        await store.put_key(FULL_KEY)
        refused: list[BaseException] = []

        async def duplicate() -> None:
            try:
                await store.put_key(attrs.evolve(BARE_KEY, key_hash=FULL_KEY.key_hash))
            except StoreIntegrityError as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(store.append, lifecycle(f"resp_k{i}"))
            nursery.start_soon(duplicate)
            nursery.start_soon(store.put_key, attrs.evolve(BARE_KEY, key_id="key-00000000000000e5"))
            nursery.start_soon(functools.partial(store.delete_key, FULL_KEY.key_id, at=7.0))
        assert len(refused) == 1
        for i in range(10):
            row = await store.get(f"resp_k{i}")
            assert row is not None
            assert row.status is ResponseStatus.COMPLETED
        assert await store.get_key("key-00000000000000e5") is not None
        full = await store.get_key(FULL_KEY.key_id)
        assert full is not None
        assert full.deleted_at == 7.0

    async def test_a_value_the_database_cannot_hold_fails_that_write_alone(
        self, store: Store
    ) -> None:
        """Regression: an rpm past 64 bits killed the writer: every later write was a 503."""
        with pytest.raises(StoreIntegrityError, match="cannot hold"):
            await store.put_key(attrs.evolve(BARE_KEY, key_id="key-00000000000000f1", rpm=2**64))
        await store.append(lifecycle("resp_after"))
        row = await store.get("resp_after")
        assert row is not None and row.status is ResponseStatus.COMPLETED
        assert await store.get_key("key-00000000000000f1") is None

    async def test_unserializable_key_metadata_fails_in_the_caller(self, store: Store) -> None:
        with pytest.raises(StoreIntegrityError, match="JSON"):
            await store.put_key(attrs.evolve(FULL_KEY, metadata={"x": object()}))
        assert await store.get_key(FULL_KEY.key_id) is None
        await store.put_key(FULL_KEY)
        assert await store.get_key(FULL_KEY.key_id) == FULL_KEY

    async def test_keys_outlive_a_reopened_store(self, backend: Backend) -> None:
        if not backend.persistent:
            pytest.skip("an in-memory store does not outlive its opener")
        async with backend.open() as store:
            await store.put_key(FULL_KEY)
            await store.put_key(BARE_KEY)
            await store.delete_key(BARE_KEY.key_id, at=2000.0)
        async with backend.open() as store:
            assert await store.find_key(FULL_KEY.key_hash) == FULL_KEY
            assert await store.get_key(BARE_KEY.key_id) == attrs.evolve(BARE_KEY, deleted_at=2000.0)

    # -- files and batches (issue 8)

    async def test_objects_round_trip_update_and_list_by_owner(self, store: Store) -> None:
        rows = [
            ObjectRow(
                id=f"file-{i}",
                kind="file",
                owner="key-1" if i % 2 == 0 else "key-2",
                model="g",
                deployment_id="dep-a",
                provider="openai",
                raw_id=f"file-raw{i}",
                created_at=100.0 + i,
                data={"id": f"file-{i}", "purpose": "batch" if i < 3 else "vision"},
                spend_metadata={"team": "t"} if i == 0 else {},
            )
            for i in range(5)
        ]
        for row in rows:
            await store.put_object(row)
        assert await store.get_object("file-0") == rows[0]
        assert await store.find_object("dep-a", "file-raw3") == rows[3]
        assert await store.get_object("file-9") is None
        assert await store.find_object("dep-b", "file-raw3") is None
        mine = await store.list_objects("file", owner="key-1")
        assert [r.id for r in mine] == ["file-4", "file-2", "file-0"]  # newest first
        oldest = await store.list_objects("file", owner="key-1", newest_first=False, limit=2)
        assert [r.id for r in oldest] == ["file-0", "file-2"]
        page = await store.list_objects("file", owner="key-1", after="file-4")
        assert [r.id for r in page] == ["file-2", "file-0"]
        batch_only = await store.list_objects("file", owner=None, purpose="batch")
        assert [r.id for r in batch_only] == ["file-2", "file-1", "file-0"]
        assert await store.list_objects("batch", owner=None) == []
        # A fresher view replaces data, settled and deleted_at; deleted rows leave the lists.
        await store.put_object(attrs.evolve(rows[2], data={"id": "file-2", "status": "x"}))
        await store.put_object(attrs.evolve(rows[4], deleted_at=500.0))
        got = await store.get_object("file-2")
        assert got is not None and got.data == {"id": "file-2", "status": "x"}
        assert [r.id for r in await store.list_objects("file", owner="key-1")] == [
            "file-2",
            "file-0",
        ]
        gone = await store.get_object("file-4")
        assert gone is not None and gone.deleted_at == 500.0
        # Objects are no records of the log.
        assert store.statistics().records_appended == 0

    async def test_an_object_with_a_taken_upstream_id_is_refused(self, store: Store) -> None:
        row = ObjectRow(
            id="batch_a",
            kind="batch",
            owner="key-1",
            model="g",
            deployment_id="dep-a",
            provider="azure",
            raw_id="batch_raw",
            created_at=1.0,
            data={},
        )
        await store.put_object(row)
        with pytest.raises(StoreIntegrityError):
            await store.put_object(attrs.evolve(row, id="batch_b"))
        with pytest.raises(StoreIntegrityError, match="JSON"):
            await store.put_object(
                attrs.evolve(row, id="batch_c", raw_id="r", data={"x": object()})
            )
        assert await store.get_object("batch_b") is None
        settled = attrs.evolve(row, settled=True)
        await store.put_object(settled)
        assert await store.get_object("batch_a") == settled

    async def test_conversation_items_page_by_conversation_in_id_order(self, store: Store) -> None:
        """A held conversation's items (docs/conversations.md): ``conversation_item`` rows of
        one creation time, paged by their conversation (``purpose``) in row-ID order, an item
        ID unique in its conversation only, deleted ones out of the lists."""

        def item_row(conv: str, index: int, item_id: str) -> ObjectRow:
            return ObjectRow(
                id=f"sluicegate:item:{conv}:{index:012d}:t:000000",
                kind="conversation_item",
                owner="key-1",
                model="",
                deployment_id=f"sluicegate:conversation:{conv}",
                provider="sluicegate",
                raw_id=item_id,
                created_at=50.0,
                data={"purpose": conv, "item": {"id": item_id, "n": index}},
            )

        conversation = ObjectRow(
            id="conv_a",
            kind="conversation",
            owner="key-1",
            model="",
            deployment_id="sluicegate",
            provider="sluicegate",
            raw_id="conv_raw_a",
            created_at=50.0,
            data={"id": "conv_a", "object": "conversation"},
        )
        await store.put_object(conversation)
        # Written out of order, and interleaved with another conversation's.
        for index in (2, 0, 3, 1):
            await store.put_object(item_row("conv_raw_a", index, f"msg_{index}"))
            await store.put_object(item_row("conv_raw_b", index, f"msg_{index}"))
        await store.put_object(item_row("conv_raw_a", 10, "msg_10"))

        async def page(conv: str, **options: Any) -> list[str]:
            rows = await store.list_objects(
                "conversation_item", owner=None, purpose=conv, **options
            )
            return [row.raw_id for row in rows]

        assert await page("conv_raw_a", newest_first=False) == [
            "msg_0",
            "msg_1",
            "msg_2",
            "msg_3",
            "msg_10",
        ]
        assert await page("conv_raw_a", limit=2) == ["msg_10", "msg_3"]
        anchor = await store.find_object("sluicegate:conversation:conv_raw_a", "msg_1")
        assert anchor is not None and anchor.data["item"] == {"id": "msg_1", "n": 1}
        assert await page("conv_raw_a", after=anchor.id, newest_first=False) == [
            "msg_2",
            "msg_3",
            "msg_10",
        ]
        assert await page("conv_raw_a", after=anchor.id) == ["msg_0"]
        assert len(await page("conv_raw_b")) == 4
        assert [r.id for r in await store.list_objects("conversation", owner="key-1")] == ["conv_a"]
        # The same item ID in one conversation is refused; in another it is its own.
        with pytest.raises(StoreIntegrityError):
            await store.put_object(attrs.evolve(item_row("conv_raw_a", 11, "msg_1")))
        # A deleted item (its content removed) leaves the lists but keeps its ID taken.
        removed = attrs.evolve(anchor, data={"purpose": "conv_raw_a"}, deleted_at=60.0)
        await store.put_object(removed)
        assert await page("conv_raw_a", newest_first=False) == ["msg_0", "msg_2", "msg_3", "msg_10"]
        gone = await store.find_object("sluicegate:conversation:conv_raw_a", "msg_1")
        assert gone is not None and gone.deleted_at == 60.0 and "item" not in gone.data
        # A conversation deleted leaves its kind's list.
        await store.put_object(attrs.evolve(conversation, deleted_at=70.0))
        assert await store.list_objects("conversation", owner=None) == []

    # -- group commit

    async def test_concurrent_appends_share_transactions(self, store: Store) -> None:
        before = store.statistics()
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(store.append, lifecycle(f"resp_g{i}")[:4])
        stats = store.statistics()
        assert stats.records_appended - before.records_appended == 800
        assert stats.transactions - before.transactions < 50
        assert stats.largest_batch > 4
        assert stats.pending == 0
        for i in range(200):
            assert len(await store.output_items(f"resp_g{i}")) == 2

    async def test_appends_sharing_a_group_commit_are_checked_one_by_one(
        self, store: Store, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Appends of one response committed together (queued, so nobody waits between
        them): each is checked against the log as the ones before it left it, and one the
        rules refuse is left out whole while the others stand."""
        with caplog.at_level(logging.ERROR, logger="sluicegate"):
            await store.enqueue(lifecycle("resp_gc")[:2])
            await store.enqueue([ItemDone(response_id="resp_gc", output_index=0, item=item(0))])
            await store.enqueue([ended("resp_gc")])
            # A second end, with an item: refused, nothing of it kept.
            await store.enqueue(
                [
                    ItemDone(response_id="resp_gc", output_index=1, item=item(1)),
                    ended("resp_gc", "failed", at=300.0),
                ]
            )
            await store.append([Settled(response_id="resp_gc", usage=USAGE, cost=0.25)])
        refusals = [r.getMessage() for r in caplog.records if r.name == "sluicegate"]
        assert len(refusals) == 1
        assert "resp_gc" in refusals[0] and "already ended" in refusals[0]
        row = await store.get("resp_gc")
        assert row is not None
        assert (row.status, row.completed_at, row.cost) == (ResponseStatus.COMPLETED, 200.0, 0.25)
        assert await store.output_items("resp_gc") == [item(0)]
        assert await store.final_response("resp_gc") == ended("resp_gc").response
        assert store.statistics().records_appended == 2 + 1 + 1 + 1
        assert store.statistics().pending == 0

    async def test_content_deleted_by_the_append_that_records_it_is_not_kept(
        self, store: Store
    ) -> None:
        await store.append(
            [
                *lifecycle("resp_gone"),
                StreamEventRecorded(response_id="resp_gone", sequence_number=0, event={"x": 1}),
                Deleted(response_id="resp_gone", deleted_at=300.0),
                # Content after the tombstone is not kept either.
                StreamEventRecorded(response_id="resp_gone", sequence_number=1, event={"x": 2}),
            ]
        )
        row = await store.get("resp_gone")
        assert row is not None
        assert (row.status, row.deleted, row.usage, row.cost) == (
            ResponseStatus.COMPLETED,
            True,
            USAGE,
            0.25,
        )
        assert await store.final_response("resp_gone") is None
        assert await store.input_items("resp_gone") == []
        assert await store.output_items("resp_gone") == []
        assert await store.stream_events("resp_gone") == []
        assert await store.item_origins(["msg_0", "msg_1"]) == {}
        [log] = await store.spend_logs(SpendFilter(owner="key-1"))
        assert (log.response_id, log.total_tokens, log.cost) == ("resp_gone", 8, 0.25)

    async def test_items_and_stream_events_read_in_order_across_appends(self, store: Store) -> None:
        """Output items by index and stream events by sequence number, however the appends
        that recorded them split and ordered them."""
        await store.append([accepted("resp_o", background=True)])
        for indexes in ((2,), (0, 3), (1,)):
            await store.append(
                [ItemDone(response_id="resp_o", output_index=i, item=item(i)) for i in indexes]
            )
        for batch in ((0, 1, 2), (5, 3, 4), (6,), (9, 7, 8)):
            await store.append(
                [
                    StreamEventRecorded(
                        response_id="resp_o", sequence_number=n, event={"sequence_number": n}
                    )
                    for n in batch
                ]
            )
        assert await store.output_items("resp_o") == [item(0), item(1), item(2), item(3)]

        async def numbers(after: int, limit: int) -> list[int]:
            events = await store.stream_events("resp_o", after=after, limit=limit)
            return [e["sequence_number"] for e in events]

        assert await numbers(-1, 1000) == list(range(10))
        assert await numbers(2, 3) == [3, 4, 5]
        assert await numbers(5, 2) == [6, 7]
        assert await numbers(6, 1000) == [7, 8, 9]
        assert await numbers(9, 1000) == []
        origins = await store.item_origins(["msg_3", "msg_2"])
        assert {o.response_id for o in origins.values()} == {"resp_o"}
        assert sorted(origins) == ["msg_2", "msg_3"]

    # -- lifetime

    async def test_reopened_store_keeps_everything(self, backend: Backend) -> None:
        if not backend.persistent:
            pytest.skip("an in-memory store does not outlive its opener")
        async with backend.open() as store:
            await store.append(lifecycle("resp_p"))
            await store.append([accepted("resp_q", background=True)])
        async with backend.open() as store:
            row = await store.get("resp_p")
            assert row is not None
            assert (row.status, row.cost) == (ResponseStatus.COMPLETED, 0.25)
            assert await store.output_items("resp_p") == [item(0), item(1)]
            assert await store.final_response("resp_p") is not None
            # Opening recovered the one left queued, once.
            assert store.statistics().records_appended == 1
            row = await store.get("resp_q")
            assert row is not None
            assert (row.status, row.error) == (ResponseStatus.FAILED, RECOVERY_ERROR)
        async with backend.open() as store:
            assert store.statistics().records_appended == 0
            assert await store.recover(now=1.0) == 0

    async def test_closing_drains_queued_appends(self, backend: Backend) -> None:
        if not backend.persistent:
            pytest.skip("an in-memory store does not outlive its opener")
        async with trio.open_nursery() as nursery, backend.open() as store:
            for i in range(20):
                nursery.start_soon(store.append, lifecycle(f"resp_x{i}"))
            await trio.testing.wait_all_tasks_blocked()
        async with backend.open() as store:
            for i in range(20):
                row = await store.get(f"resp_x{i}")
                assert row is not None
                assert row.status is ResponseStatus.COMPLETED

    async def test_a_closed_store_refuses_work(self, backend: Backend) -> None:
        async with backend.open() as store:
            pass
        with pytest.raises(StoreUnavailableError):
            await store.append([accepted("resp_late")])
        with pytest.raises(StoreUnavailableError):
            await store.get("resp_late")
        with pytest.raises(StoreUnavailableError):
            await store.enqueue([accepted("resp_late")])
        with pytest.raises(StoreUnavailableError):
            await store.purge(before=1.0)
        with pytest.raises(StoreUnavailableError):
            await store.spend_logs(SpendFilter())
        with pytest.raises(StoreUnavailableError):
            await store.conversation("resp_late", max_turns=1, max_bytes=1)
        with pytest.raises(StoreUnavailableError):
            await store.put_key(FULL_KEY)
        with pytest.raises(StoreUnavailableError):
            await store.delete_key(FULL_KEY.key_id, at=1.0)
        with pytest.raises(StoreUnavailableError):
            await store.find_key(FULL_KEY.key_hash)
        with pytest.raises(StoreUnavailableError):
            await store.get_key(FULL_KEY.key_id)
