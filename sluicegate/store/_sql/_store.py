"""What the SQL stores share above their connections: the writer actor (group commit on a bounded
channel, enqueue with linger), the jobs it takes for keys, objects and purges, recovery's
appends, and every public method over the backend's reads. A backend subclasses
:class:`_SQLStore` and brings its transaction (:meth:`_SQLStore._write`), its way of running a
read (:meth:`_SQLStore._run_read`), its reads (:class:`_Reads`) and its recovery."""

from __future__ import annotations

import contextlib
import functools
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
import trio

from ...errors import StoreError, StoreIntegrityError, StoreUnavailableError
from .._interface import (
    RECOVERY_ERROR,
    KeyRow,
    ObjectKind,
    ObjectRow,
    RecoveryPolicy,
    SpendFilter,
    SpendGroup,
    SpendLog,
    SpendTotal,
    StoreStatistics,
)
from .._records import Ended, ItemOrigin, Record, ResponseRow, Routed
from ._encode import _encode_all
from ._jobs import _DeleteKeyJob, _Pending, _PurgeJob, _PutKeyJob, _PutObjectJob
from ._layout import _dumps
from ._queries import _list_objects, _read_key, _read_spend_logs, _read_spend_totals

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from ._jobs import _Job
    from ._queries import _Dialect

_T = TypeVar("_T")

logger = logging.getLogger("sluicegate")


@asynccontextmanager
async def _service_nursery(nursery: trio.Nursery | None) -> AsyncIterator[trio.Nursery]:
    """The gateway's service nursery if given, else one of the store's own."""
    if nursery is not None:
        yield nursery
    else:
        async with trio.open_nursery() as own:
            yield own


@asynccontextmanager
async def _running(
    store: _SQLStore, nursery: trio.Nursery | None, inbox: trio.MemoryReceiveChannel[_Job]
) -> AsyncIterator[trio.Nursery]:
    """Run the store's writer in the service nursery (``nursery``, or one of the store's own)
    while the block runs (it gets the nursery); then the writer commits what is queued, and
    ends."""
    async with _service_nursery(nursery) as service:
        await service.start(functools.partial(store._run_writer, inbox=inbox))
        try:
            yield service
        finally:
            store._send.close()  # the writer drains what is queued, then ends
            with trio.CancelScope(shield=True):
                await store._writer_done.wait()


def _copy_error(exc: StoreError) -> StoreError:
    """A fresh instance per waiter, so concurrent raisers do not share one traceback."""
    copy = type(exc)(exc.message, code=exc.code, status_code=exc.status_code)
    copy.__cause__ = exc.__cause__
    return copy


@attrs.frozen(kw_only=True)
class _Reads:
    """A backend's reads. Each takes the backend's connection first, then keywords, and runs
    where :meth:`_SQLStore._run_read` runs it."""

    #: ``(response_id)``: the projection row, or None.
    row: Callable[..., ResponseRow | None]
    #: ``(response_ids)``: the rows of those that exist (distinct IDs, at least one).
    rows: Callable[..., list[ResponseRow]]
    #: ``(response_id)``.
    final_response: Callable[..., dict[str, Any] | None]
    #: ``(response_id)``.
    input_items: Callable[..., list[dict[str, Any]]]
    #: ``(response_id)``.
    output_items: Callable[..., list[dict[str, Any]]]
    #: ``(item_ids)`` (distinct, at least one).
    item_origins: Callable[..., dict[str, ItemOrigin]]
    #: ``(response_id, after, limit)``.
    stream_events: Callable[..., list[dict[str, Any]]]
    #: ``(response_id, max_turns, max_bytes)``.
    conversation: Callable[..., list[dict[str, Any]]]
    #: ``(object_id)``.
    object: Callable[..., ObjectRow | None]
    #: ``(deployment_id, raw_id)``.
    upstream_object: Callable[..., ObjectRow | None]
    #: The rest (spend, keys, pages of objects) both backends read alike (``_queries``), in
    #: this dialect.
    dialect: _Dialect


@attrs.define(eq=False, kw_only=True)
class _SQLStore:
    """The SQL stores' common part (see the module docstring)."""

    _send: trio.MemorySendChannel[_Job]
    _batch_max: int
    #: Seconds an enqueued record may wait for company before it is committed alone.
    _linger: float
    #: This store's instance ID (``uuid4().hex``), written to the responses it accepts.
    _instance: str
    #: Whether recovery takes over a dead instance's unfinished response rather than ending
    #: it (None: every one ends ``failed`` with :data:`RECOVERY_ERROR`).
    _recovery: RecoveryPolicy | None = None
    _writer_done: trio.Event = attrs.Factory(trio.Event)
    _closed: bool = False
    _records_appended: int = 0
    _transactions: int = 0
    _largest_batch: int = 0
    _pending: int = 0

    #: The backend's reads.
    _READS: ClassVar[_Reads]

    @property
    def instance(self) -> str:
        """This store's instance ID: recovery by other stores leaves its responses alone while
        it is open."""
        return self._instance

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            records_appended=self._records_appended,
            transactions=self._transactions,
            largest_batch=self._largest_batch,
            pending=self._pending,
        )

    # -- the backend's part

    async def _write(self, batch: list[_Job]) -> Callable[[], Awaitable[None]] | None:
        """Write ``batch`` in one transaction, setting ``error`` on each job it refuses; returns
        what to run once the waiters are released, if anything.

        Raises:
            StoreError: the transaction failed; nothing of it was written.
        """
        raise NotImplementedError

    async def _run_read(self, fn: Callable[[Any], _T]) -> _T:
        """Run ``fn`` on a read connection, errors translated."""
        raise NotImplementedError

    async def recover(self, *, now: float) -> int:
        """See :meth:`sluicegate.store.Store.recover`."""
        raise NotImplementedError

    # -- writing

    async def append(self, records: Sequence[Record]) -> None:
        """See :meth:`sluicegate.store.Store.append`."""
        if not records:
            await trio.lowlevel.checkpoint()
            return
        pending = _Pending(_encode_all(records))
        await self._submit(pending, wait=True)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def enqueue(self, records: Sequence[Record]) -> None:
        """See :meth:`sluicegate.store.Store.enqueue`."""
        if not records:
            await trio.lowlevel.checkpoint()
            return
        await self._submit(_Pending(_encode_all(records), detached=True))

    async def _submit(self, job: _Job, *, wait: bool = False) -> None:
        """Put ``job`` on the writer's channel (waiting for room).

        ``wait``: the caller waits for the verdict next, which is its schedule point; a job
        that finds room is then queued without one of its own (one pass of the run loop less
        for every append). Either way a cancelled caller queues nothing."""
        records = job.weight if isinstance(job, _Pending) else 0
        self._pending += records
        try:
            if wait:
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    self._send.send_nowait(job)
                    return
                except trio.WouldBlock:
                    pass
            await self._send.send(job)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            self._pending -= records
            raise StoreUnavailableError("the store is closed") from exc
        except BaseException:  # cancelled before the writer had it: nothing was queued
            self._pending -= records
            raise

    async def _run_writer(
        self,
        *,
        inbox: trio.MemoryReceiveChannel[_Job],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The writer actor: group commit, until the send side closes (then drained)."""
        batch: list[_Job] = []
        with inbox:
            try:
                task_status.started()
                async for first in inbox:
                    batch = [first]
                    size = first.weight
                    while size < self._batch_max:
                        job = await self._next_job(inbox, batch)
                        if job is None:
                            break
                        batch.append(job)
                        size += job.weight
                    await self._commit(batch)
                    batch = []
            finally:
                # Cancelled or crashed: whoever still waits learns it was not written. (Drained
                # before the inbox closes: closing it drops what is buffered.)
                leftovers = [job for job in batch if not job.done.is_set()]
                while True:
                    try:
                        leftovers.append(inbox.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                for job in leftovers:
                    self._resolve(job, StoreUnavailableError("the store closed first"))
                self._writer_done.set()

    async def _next_job(
        self, inbox: trio.MemoryReceiveChannel[_Job], batch: list[_Job]
    ) -> _Job | None:
        """The next job for this transaction, or None to commit it now."""
        try:
            return inbox.receive_nowait()
        except trio.EndOfChannel:
            return None
        except trio.WouldBlock:
            pass
        # Nobody waits on an enqueued record: it lingers a little for company, so a short
        # response's acceptance and its end share one transaction instead of paying for two.
        if not self._linger or not all(isinstance(j, _Pending) and j.detached for j in batch):
            return None
        with trio.move_on_after(self._linger):
            try:
                return await inbox.receive()
            except trio.EndOfChannel:
                return None
        return None

    async def _commit(self, batch: list[_Job]) -> None:
        try:
            # Not abandoned on cancel: the transaction finishes and its waiters hear of it.
            after = await self._write(batch)
        except StoreError as exc:
            for job in batch:
                self._resolve(job, job.error or _copy_error(exc))
            return
        except BaseException as exc:  # a bug: the waiters get an error, the nursery the bug
            for job in batch:
                error = StoreError("the store's writer failed")
                error.__cause__ = exc
                self._resolve(job, job.error or error)
            raise
        self._transactions += 1
        written = sum(
            len(job.encoded) for job in batch if isinstance(job, _Pending) and job.error is None
        )
        self._records_appended += written
        self._largest_batch = max(self._largest_batch, written)
        for job in batch:
            self._resolve(job, job.error)
        if after is not None:
            await after()

    def _resolve(self, job: _Job, error: StoreError | None) -> None:
        job.error = error
        if isinstance(job, _Pending):
            self._pending -= len(job.encoded)
            if job.detached and error is not None:
                responses = sorted({enc.record.response_id for enc in job.encoded})
                logger.error(
                    "the store refused enqueued records of %s: %s", ", ".join(responses), error
                )
        job.done.set()

    async def _run_job(self, job: _PurgeJob | _PutKeyJob | _DeleteKeyJob | _PutObjectJob) -> None:
        # Through the writer's channel: ordered with the appends around it, and sharing their
        # group commit instead of taking a write lock itself.
        await self._submit(job)
        await job.done.wait()
        if job.error is not None:
            raise job.error

    # -- reading

    async def _read(self, fn: Callable[[Any], _T]) -> _T:
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        return await self._run_read(fn)

    async def get(self, response_id: str) -> ResponseRow | None:
        """See :meth:`sluicegate.store.Store.get`."""
        return await self._read(functools.partial(self._READS.row, response_id=response_id))

    async def get_many(self, response_ids: Sequence[str]) -> dict[str, ResponseRow]:
        """See :meth:`sluicegate.store.Store.get_many`."""
        unique = list(dict.fromkeys(response_ids))
        if not unique:
            await trio.lowlevel.checkpoint()
            return {}
        rows = await self._read(functools.partial(self._READS.rows, response_ids=unique))
        return {row.id: row for row in rows}

    async def final_response(self, response_id: str) -> dict[str, Any] | None:
        """See :meth:`sluicegate.store.Store.final_response`."""
        return await self._read(
            functools.partial(self._READS.final_response, response_id=response_id)
        )

    async def input_items(self, response_id: str) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.input_items`."""
        return await self._read(functools.partial(self._READS.input_items, response_id=response_id))

    async def output_items(self, response_id: str) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.output_items`."""
        return await self._read(
            functools.partial(self._READS.output_items, response_id=response_id)
        )

    async def item_origins(self, item_ids: Sequence[str]) -> dict[str, ItemOrigin]:
        """See :meth:`sluicegate.store.Store.item_origins`."""
        unique = list(dict.fromkeys(i for i in item_ids if isinstance(i, str)))
        if not unique:
            await trio.lowlevel.checkpoint()
            return {}
        return await self._read(functools.partial(self._READS.item_origins, item_ids=unique))

    async def stream_events(
        self, response_id: str, *, after: int = -1, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.stream_events`."""
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        return await self._read(
            functools.partial(
                self._READS.stream_events, response_id=response_id, after=after, limit=limit
            )
        )

    async def conversation(
        self, response_id: str, *, max_turns: int, max_bytes: int
    ) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.conversation`."""
        return await self._read(
            functools.partial(
                self._READS.conversation,
                response_id=response_id,
                max_turns=max_turns,
                max_bytes=max_bytes,
            )
        )

    async def spend_logs(
        self, where: SpendFilter, *, limit: int = 100, newest_first: bool = True
    ) -> list[SpendLog]:
        """See :meth:`sluicegate.store.Store.spend_logs`."""
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        return await self._read(
            functools.partial(
                _read_spend_logs,
                dialect=self._READS.dialect,
                where=where,
                limit=limit,
                newest_first=newest_first,
            )
        )

    async def spend_totals(self, where: SpendFilter, *, group_by: SpendGroup) -> list[SpendTotal]:
        """See :meth:`sluicegate.store.Store.spend_totals`."""
        return await self._read(
            functools.partial(
                _read_spend_totals, dialect=self._READS.dialect, where=where, group_by=group_by
            )
        )

    # -- retention and recovery

    async def purge(self, *, before: float) -> int:
        """See :meth:`sluicegate.store.Store.purge`."""
        # Through the writer's channel, one transaction of at most batch_max responses per
        # job: a purge is ordered with the appends around it (a Deleted queued after it finds
        # the content gone; one queued before is written first) and never holds the write lock
        # for long, since appends queued meanwhile get their transaction between two jobs.
        purged = 0
        while True:
            job = _PurgeJob(before=before, limit=self._batch_max)
            await self._run_job(job)
            purged += job.purged
            if job.purged < job.limit:
                return purged

    async def _end_as_failed(
        self,
        response_ids: list[str],
        *,
        now: float,
        owners: Mapping[str, str | None] | None = None,
    ) -> int:
        """End these responses as ``failed`` with :data:`RECOVERY_ERROR` (or the error the
        recovery policy gives one), or take them over where the policy says so; returns how
        many this call ended (others may have been ended first). ``owners``: the dead instance
        each was left by (what a takeover names)."""
        errors: dict[str, dict[str, Any]] = {}
        if self._recovery is not None and owners is not None and response_ids:
            response_ids = await self._adopt(response_ids, owners, errors)

        def ended(rid: str) -> Ended:
            return Ended(
                response_id=rid,
                status="failed",
                error=errors.get(rid) or dict(RECOVERY_ERROR),
                response=None,
                completed_at=now,
            )

        count = 0
        for start in range(0, len(response_ids), self._batch_max):
            chunk = response_ids[start : start + self._batch_max]
            try:
                await self.append([ended(rid) for rid in chunk])
                count += len(chunk)
            except StoreIntegrityError:
                # Another store recovering at the same time ended some of them first (both saw
                # them unfinished): end the rest one by one.
                for rid in chunk:
                    with contextlib.suppress(StoreIntegrityError):
                        await self.append([ended(rid)])
                        count += 1
        return count

    async def _adopt(
        self,
        response_ids: list[str],
        owners: Mapping[str, str | None],
        errors: dict[str, dict[str, Any]],
    ) -> list[str]:
        """Take over the responses the recovery policy wants (a ``Routed`` naming this
        instance, so the next recovery leaves them alone) and fill in ``errors`` for the
        others; returns those to end."""
        policy = self._recovery
        assert policy is not None
        rows = await self.get_many(response_ids)
        to_end: list[str] = []
        for rid in response_ids:
            row = rows.get(rid)
            if row is None or row.status.is_terminal:
                continue  # ended meanwhile (by another instance's recovery)
            error = policy.error_for(row)
            if error is not None:
                errors[rid] = error
                to_end.append(rid)
                continue
            assert row.deployment_id is not None and row.provider is not None
            routed = Routed(
                response_id=rid,
                deployment_id=row.deployment_id,
                provider=row.provider,
                attempt=0,
                upstream_id=row.upstream_id,
                instance=self._instance,
                taken_from=owners.get(rid),
            )
            try:
                await self.append([routed])
            except StoreIntegrityError:
                continue  # another instance took it over (or ended it) first
            except StoreError:
                logger.exception("could not take over response %s; ending it", rid)
                to_end.append(rid)
            else:
                policy.adopted(row)
        return to_end

    # -- keys, files and batches

    async def put_key(self, key: KeyRow) -> None:
        """See :meth:`sluicegate.store.Store.put_key`."""
        # Encoded here, so unserializable metadata fails in the caller's task (as in append).
        models = None if key.models is None else _dumps(list(key.models))
        await self._run_job(_PutKeyJob(row=key, models=models, metadata=_dumps(key.metadata)))

    async def delete_key(self, key_id: str, *, at: float) -> bool:
        """See :meth:`sluicegate.store.Store.delete_key`."""
        job = _DeleteKeyJob(key_id=key_id, at=at)
        await self._run_job(job)
        return job.deleted

    async def find_key(self, key_hash: str) -> KeyRow | None:
        """See :meth:`sluicegate.store.Store.find_key`."""
        return await self._read_key("key_hash", key_hash)

    async def get_key(self, key_id: str) -> KeyRow | None:
        """See :meth:`sluicegate.store.Store.get_key`."""
        return await self._read_key("key_id", key_id)

    async def _read_key(self, column: str, value: str) -> KeyRow | None:
        return await self._read(
            functools.partial(_read_key, dialect=self._READS.dialect, column=column, value=value)
        )

    async def put_object(self, row: ObjectRow) -> None:
        """See :meth:`sluicegate.store.Store.put_object`."""
        data, meta = _dumps(row.data), _dumps(row.spend_metadata)
        await self._run_job(_PutObjectJob(row=row, data=data, spend_metadata=meta))

    async def get_object(self, object_id: str) -> ObjectRow | None:
        """See :meth:`sluicegate.store.Store.get_object`."""
        return await self._read(functools.partial(self._READS.object, object_id=object_id))

    async def find_object(self, deployment_id: str, raw_id: str) -> ObjectRow | None:
        """See :meth:`sluicegate.store.Store.find_object`."""
        return await self._read(
            functools.partial(
                self._READS.upstream_object, deployment_id=deployment_id, raw_id=raw_id
            )
        )

    async def list_objects(
        self,
        kind: ObjectKind,
        *,
        owner: str | None,
        after: str | None = None,
        limit: int = 20,
        newest_first: bool = True,
        purpose: str | None = None,
    ) -> list[ObjectRow]:
        """See :meth:`sluicegate.store.Store.list_objects`."""
        return await self._read(
            functools.partial(
                _list_objects,
                dialect=self._READS.dialect,
                kind=kind,
                owner=owner,
                after=after,
                limit=limit,
                newest_first=newest_first,
                purpose=purpose,
            )
        )
