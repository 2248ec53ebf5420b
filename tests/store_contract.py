"""The store contract: what every store backend must do (DESIGN §5, STYLE "one shared
conformance suite per contract").

A backend's test module provides a ``backend`` fixture returning a :class:`Backend` (how to open
its store, and whether a reopened store sees the same data) and subclasses
:class:`StoreContract`. SQLite (file and memory) runs it in ``tests/test_store.py``; PostgreSQL
adds a ``backend`` param later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from sluicegate import ResponseStatus
from sluicegate.store import (
    RECOVERY_ERROR,
    Accepted,
    Deleted,
    Ended,
    ItemDone,
    Record,
    Routed,
    Settled,
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


def accepted(rid: str, *, background: bool = False, created_at: float = 100.0) -> Accepted:
    return Accepted(
        response_id=rid,
        owner="key-1",
        model="gpt-test",
        params={"temperature": 0.5},
        input_items=[{"role": "user", "content": f"hello {rid}"}],
        background=background,
        store=True,
        metadata={"team": "blue"},
        created_at=created_at,
    )


def item(index: int) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{index}", "content": [{"text": f"part {index}"}]}


def ended(rid: str, status: str = "completed", *, at: float = 200.0) -> Ended:
    return Ended(
        response_id=rid,
        status=status,
        error=None,
        response={"id": rid, "status": status, "output": [item(0), item(1)]},
        completed_at=at,
    )


def lifecycle(rid: str) -> list[Record]:
    """A full non-background lifecycle; the items arrive out of index order on purpose."""
    return [
        accepted(rid),
        Routed(response_id=rid, deployment_id="dep-1", provider="openai", attempt=1),
        ItemDone(response_id=rid, output_index=1, item=item(1)),
        ItemDone(response_id=rid, output_index=0, item=item(0)),
        Settled(response_id=rid, usage={"input_tokens": 3, "output_tokens": 5}, cost=0.25),
        ended(rid),
    ]


class StoreContract:
    @pytest.fixture
    async def store(self, backend: Backend) -> AsyncIterator[Store]:
        async with backend.open() as store:
            yield store

    # -- append and the projection

    async def test_full_lifecycle_updates_the_projection_and_every_getter(
        self, store: Store
    ) -> None:
        await store.append(lifecycle("resp_a")[:2])
        row = await store.get("resp_a")
        assert row is not None
        assert row.status is ResponseStatus.IN_PROGRESS
        assert (row.deployment_id, row.provider) == ("dep-1", "openai")
        assert await store.final_response("resp_a") is None

        await store.append(lifecycle("resp_a")[2:])
        row = await store.get("resp_a")
        assert row is not None
        assert attrs.asdict(row) == {
            "id": "resp_a",
            "owner": "key-1",
            "status": ResponseStatus.COMPLETED,
            "model": "gpt-test",
            "deployment_id": "dep-1",
            "provider": "openai",
            "background": False,
            "store": True,
            "metadata": {"team": "blue"},
            "created_at": 100.0,
            "completed_at": 200.0,
            "usage": {"input_tokens": 3, "output_tokens": 5},
            "cost": 0.25,
            "error": None,
            "deleted": False,
        }
        assert await store.final_response("resp_a") == {
            "id": "resp_a",
            "status": "completed",
            "output": [item(0), item(1)],
        }
        assert await store.input_items("resp_a") == [{"role": "user", "content": "hello resp_a"}]
        assert await store.output_items("resp_a") == [item(0), item(1)]
        assert store.statistics().records_appended == 6
        assert store.statistics().pending == 0

    async def test_unknown_response_reads_as_nothing(self, store: Store) -> None:
        assert await store.get("resp_nope") is None
        assert await store.final_response("resp_nope") is None
        assert await store.input_items("resp_nope") == []
        assert await store.output_items("resp_nope") == []
        assert await store.stream_events("resp_nope") == []

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
        assert (row.usage, row.cost) == ({"input_tokens": 3, "output_tokens": 5}, 0.25)
        assert (row.owner, row.model, row.completed_at) == ("key-1", "gpt-test", 200.0)
        assert await store.final_response("resp_del") is None
        assert await store.input_items("resp_del") == []
        assert await store.output_items("resp_del") == []
        assert await store.stream_events("resp_del") == []

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

    async def test_recover_fails_unfinished_responses_exactly_once(self, store: Store) -> None:
        await store.append([accepted("resp_r1"), accepted("resp_r2", background=True)])
        await store.append(lifecycle("resp_done"))
        assert await store.recover(now=42.0) == 2
        for rid in ("resp_r1", "resp_r2"):
            row = await store.get(rid)
            assert row is not None
            assert (row.status, row.completed_at) == (ResponseStatus.FAILED, 42.0)
            assert row.error == RECOVERY_ERROR
        done = await store.get("resp_done")
        assert done is not None
        assert done.status is ResponseStatus.COMPLETED
        assert await store.recover(now=43.0) == 0

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
