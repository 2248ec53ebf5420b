"""The SQLite store: the writer actor, the reads and every public method (the package docstring
is the theory of operation)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import orjson
import trio

from ...errors import StoreError, StoreIntegrityError, StoreUnavailableError
from .._interface import (
    RECOVERY_ERROR,
    KeyRow,
    ObjectKind,
    ObjectRow,
    SpendFilter,
    SpendGroup,
    SpendLog,
    SpendTotal,
    StoreStatistics,
)
from .._records import (
    Ended,
    ItemOrigin,
    Record,
    ResponseRow,
)
from ._boundary import (
    _CHECKPOINT_BYTES,
    _INLINE_BYTES,
    _INLINE_JOBS,
    _Conn,
    _copy_error,
    _dumps,
    _guarded,
    _locked_call,
    _off_loop,
    _open_reader,
)
from ._encode import _encode_all
from ._keys import _DeleteKeyJob, _list_objects, _PutKeyJob, _PutObjectJob, _read_key, _read_object
from ._reads import (
    _read_all,
    _read_conversation,
    _read_final_response,
    _read_input_items,
    _read_item_origins,
    _read_output_items,
    _read_row,
    _read_rows,
    _read_stream_events,
)
from ._recovery import (
    _claim_instance,
    _find_dead_instances,
    _InstanceLock,
    _read_unfinished,
    _release_all,
)
from ._retention import _PurgeJob
from ._schema import _open_writer
from ._spend import _spend_log, _spend_logs_query, _spend_total, _spend_totals_query
from ._writer import _checkpoint, _Job, _Pending, _write_batch

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import AsyncIterator, Callable, Sequence

_T = TypeVar("_T")

logger = logging.getLogger("sluicegate")


# --- the store -------------------------------------------------------------------------------


@attrs.define(eq=False)
class SQLiteStore:
    """The SQLite event store; open it with :func:`open_sqlite_store`."""

    _writer: _Conn
    _send: trio.MemorySendChannel[_Job]
    _batch_max: int
    #: Seconds an enqueued record may wait for company before it is committed alone.
    _linger: float
    #: Opens one more read connection.
    _new_reader: Callable[[], _Conn]
    _read_slots: trio.CapacityLimiter
    #: This store's instance ID (``uuid4().hex``), written to the responses it accepts.
    _instance: str
    #: SQL in worker threads (else inline on the trio thread).
    _threads: bool
    #: Where the instances' lock files live; None for an in-memory store.
    _lock_dir: str | None
    _lock: _InstanceLock | None = None
    _idle_readers: list[_Conn] = attrs.Factory(list)
    _writer_done: trio.Event = attrs.Factory(trio.Event)
    _closed: bool = False
    _records_appended: int = 0
    #: The WAL file's size at the last checkpoint (0 once it was reset).
    _wal_mark: int = 0
    _transactions: int = 0
    _largest_batch: int = 0
    _pending: int = 0

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

    async def _off_loop(self, fn: Callable[[], _T], *, cancellable: bool = True) -> _T:
        return await _off_loop(fn, threads=self._threads, cancellable=cancellable)

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

    def _commit_inline(self, write: Callable[..., int]) -> int | None:
        """A small transaction on the trio thread: a worker thread's round trip costs more CPU
        than the commit itself (~250 µs against ~200 µs here, measured), and at
        concurrency 1 every response pays it. Bounded: only small batches come here, the
        writer never checkpoints inside a commit, and a database locked by another process
        sends the commit to a worker thread to wait there (None: nothing was written)."""
        try:
            return _guarded(write, wait=False)
        except StoreUnavailableError:
            return None

    async def _checkpoint_if_due(self, wal: int) -> None:
        """Checkpoint once the WAL grew by ``_CHECKPOINT_BYTES`` since the last checkpoint
        (``wal``: its size now). One that failed, or that readers kept from finishing (the WAL
        is not reset and goes on growing), is tried again after as many bytes more."""
        if wal < self._wal_mark:  # reset (and truncated) since
            self._wal_mark = 0
        if wal - self._wal_mark >= _CHECKPOINT_BYTES:
            self._wal_mark = wal
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Copy the WAL back into the database (PASSIVE: readers are never blocked), in a
        worker thread; a failure is logged (see :meth:`_checkpoint_if_due`)."""
        try:
            await self._off_loop(
                functools.partial(_locked_call, self._writer, _checkpoint), cancellable=False
            )
        except StoreError:
            logger.warning("the WAL checkpoint failed; retrying later", exc_info=True)

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
        write = functools.partial(_write_batch, self._writer, batch, self._instance)
        size = sum(job.size for job in batch)
        inline = self._threads and size <= _INLINE_BYTES and len(batch) <= _INLINE_JOBS
        try:
            # Not abandoned on cancel: the transaction finishes and its waiters hear of it.
            wal = self._commit_inline(write) if inline else None
            if wal is None:
                inline = False
                wal = await self._off_loop(write, cancellable=False)
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
        if inline:
            # The schedule point of an inline commit, after its waiters are released: they
            # run in the same pass of the run loop as the writer's next step.
            await trio.lowlevel.cancel_shielded_checkpoint()
        # After the waiters are released: they need not wait for it (the next transaction
        # does). Inline, a checkpoint would block the loop: the last connection to close does it.
        if self._threads:
            await self._checkpoint_if_due(wal)

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

    # -- reading

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        async with self._read_slots:
            if self._idle_readers:
                conn = self._idle_readers.pop()
            else:
                conn = await self._off_loop(self._new_reader)
            try:
                return await self._off_loop(functools.partial(_locked_call, conn, fn))
            finally:
                if self._closed:
                    conn.close()
                else:
                    self._idle_readers.append(conn)

    async def get(self, response_id: str) -> ResponseRow | None:
        """See :meth:`sluicegate.store.Store.get`."""
        return await self._read(functools.partial(_read_row, response_id=response_id))

    async def get_many(self, response_ids: Sequence[str]) -> dict[str, ResponseRow]:
        """See :meth:`sluicegate.store.Store.get_many`."""
        unique = list(dict.fromkeys(response_ids))
        if not unique:
            await trio.lowlevel.checkpoint()
            return {}
        rows = await self._read(
            functools.partial(_read_rows, response_ids=orjson.dumps(unique).decode())
        )
        return {row.id: row for row in rows}

    async def final_response(self, response_id: str) -> dict[str, Any] | None:
        """See :meth:`sluicegate.store.Store.final_response`."""
        return await self._read(functools.partial(_read_final_response, response_id=response_id))

    async def input_items(self, response_id: str) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.input_items`."""
        return await self._read(functools.partial(_read_input_items, response_id=response_id))

    async def output_items(self, response_id: str) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.output_items`."""
        return await self._read(functools.partial(_read_output_items, response_id=response_id))

    async def item_origins(self, item_ids: Sequence[str]) -> dict[str, ItemOrigin]:
        """See :meth:`sluicegate.store.Store.item_origins`."""
        unique = list(dict.fromkeys(i for i in item_ids if isinstance(i, str)))
        if not unique:
            await trio.lowlevel.checkpoint()
            return {}
        return await self._read(functools.partial(_read_item_origins, item_ids=unique))

    async def stream_events(
        self, response_id: str, *, after: int = -1, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.stream_events`."""
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        return await self._read(
            functools.partial(
                _read_stream_events, response_id=response_id, after=after, limit=limit
            )
        )

    async def conversation(
        self, response_id: str, *, max_turns: int, max_bytes: int
    ) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.conversation`."""
        return await self._read(
            functools.partial(
                _read_conversation,
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
        sql, params = _spend_logs_query(where, limit=limit, newest_first=newest_first)
        rows = await self._read(functools.partial(_read_all, sql=sql, params=params))
        return [_spend_log(row) for row in rows]

    async def spend_totals(self, where: SpendFilter, *, group_by: SpendGroup) -> list[SpendTotal]:
        """See :meth:`sluicegate.store.Store.spend_totals`."""
        sql, params = _spend_totals_query(where, group_by=group_by)
        rows = await self._read(functools.partial(_read_all, sql=sql, params=params))
        return [_spend_total(row) for row in rows]

    async def _query_plan(self, query: tuple[str, tuple[Any, ...]]) -> str:
        """``EXPLAIN QUERY PLAN`` of a query (from ``_spend_*_query``), one step a line."""
        sql, params = query
        rows = await self._read(
            functools.partial(_read_all, sql="EXPLAIN QUERY PLAN " + sql, params=params)
        )
        return "\n".join(str(row[3]) for row in rows)

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
            await self._submit(job)
            await job.done.wait()
            if job.error is not None:
                raise job.error
            purged += job.purged
            if job.purged < job.limit:
                return purged

    async def recover(self, *, now: float) -> int:
        """See :meth:`sluicegate.store.Store.recover`."""
        unfinished = await self._read(_read_unfinished)
        dead, held = await self._off_loop(
            functools.partial(
                _find_dead_instances,
                self._lock_dir,
                self._instance,
                {instance for _, instance in unfinished},
            )
        )
        recovered = False
        try:
            count = await self._end_as_failed(
                [rid for rid, instance in unfinished if instance in dead], now=now
            )
            recovered = True
        finally:
            # A dead instance's lock file goes once its responses are ended; if that failed,
            # the next recovery tries again.
            if held:
                with trio.CancelScope(shield=True):
                    await self._off_loop(
                        functools.partial(_release_all, held, unlink=recovered), cancellable=False
                    )
        return count

    async def _end_as_failed(self, response_ids: list[str], *, now: float) -> int:
        def ended(rid: str) -> Ended:
            return Ended(
                response_id=rid,
                status="failed",
                error=dict(RECOVERY_ERROR),
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

    # -- keys

    async def put_key(self, key: KeyRow) -> None:
        """See :meth:`sluicegate.store.Store.put_key`."""
        # Encoded here, so unserializable metadata fails in the caller's task (as in append).
        models = None if key.models is None else _dumps(list(key.models))
        job = _PutKeyJob(row=key, models=models, metadata=_dumps(key.metadata))
        await self._run_job(job)

    async def delete_key(self, key_id: str, *, at: float) -> bool:
        """See :meth:`sluicegate.store.Store.delete_key`."""
        job = _DeleteKeyJob(key_id=key_id, at=at)
        await self._run_job(job)
        return job.deleted

    async def put_object(self, row: ObjectRow) -> None:
        """See :meth:`sluicegate.store.Store.put_object`."""
        data, meta = _dumps(row.data), _dumps(row.spend_metadata)
        await self._run_job(_PutObjectJob(row=row, data=data, spend_metadata=meta))

    async def get_object(self, object_id: str) -> ObjectRow | None:
        """See :meth:`sluicegate.store.Store.get_object`."""
        return await self._read(
            functools.partial(_read_object, where="id = ?", values=(object_id,))
        )

    async def find_object(self, deployment_id: str, raw_id: str) -> ObjectRow | None:
        """See :meth:`sluicegate.store.Store.find_object`."""
        return await self._read(
            functools.partial(
                _read_object,
                where="deployment_id = ? AND raw_id = ?",
                values=(deployment_id, raw_id),
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
                kind=kind,
                owner=owner,
                after=after,
                limit=limit,
                newest_first=newest_first,
                purpose=purpose,
            )
        )

    async def _run_job(self, job: _PutKeyJob | _DeleteKeyJob | _PutObjectJob) -> None:
        # Through the writer's channel, like purge: ordered with the appends around it, and
        # sharing their group commit instead of taking the write lock itself.
        await self._submit(job)
        await job.done.wait()
        if job.error is not None:
            raise job.error

    async def find_key(self, key_hash: str) -> KeyRow | None:
        """See :meth:`sluicegate.store.Store.find_key`."""
        return await self._read(functools.partial(_read_key, column="key_hash", value=key_hash))

    async def get_key(self, key_id: str) -> KeyRow | None:
        """See :meth:`sluicegate.store.Store.get_key`."""
        return await self._read(functools.partial(_read_key, column="key_id", value=key_id))

    # -- closing

    def _close(self) -> None:
        self._closed = True
        try:
            for conn in (*self._idle_readers, self._writer):
                conn.close()
            self._idle_readers.clear()
        finally:
            if self._lock is not None:
                self._lock.release(unlink=True)
                self._lock = None


@asynccontextmanager
async def _service_nursery(nursery: trio.Nursery | None) -> AsyncIterator[trio.Nursery]:
    if nursery is not None:
        yield nursery
    else:
        async with trio.open_nursery() as own:
            yield own


@asynccontextmanager
async def open_sqlite_store(
    path: str | os.PathLike[str],
    *,
    nursery: trio.Nursery | None = None,
    batch_max: int = 512,
    linger: float = 0.05,
    read_connections: int = 4,
    threads: bool | None = None,
) -> AsyncIterator[SQLiteStore]:
    """Open (creating or migrating) the SQLite store at ``path`` and run its writer.

    Responses left unfinished by stores that are no longer open (a dead process) are ended as
    failed (:meth:`SQLiteStore.recover`) before the store is yielded; those of stores still open
    on the same file are left alone. On exit the writer commits everything already queued, then
    the connections close and the store's instance lock file is removed.

    Args:
        path: the database file, or ``":memory:"`` for a private in-memory store (tests): one
            connection then serves the writer and the readers. A file store keeps its instance
            lock files in the directory ``<path>-instances`` (next to the real file, symlinks
            resolved).
        nursery: the gateway's service nursery to run the writer in; by default the store opens
            its own.
        linger: seconds an enqueued record (nobody waiting on it) may wait for more work to
            share its transaction; a crash inside that window loses it (an acceptance only:
            what ends a response is appended, never enqueued). 0 commits at once.
        batch_max: records per group-commit transaction (one append is never split), the number
            of appends that may queue before ``append`` waits for room, and the responses per
            purge transaction.
        read_connections: the most read connections (file stores).
        threads: do the SQL in worker threads (True) or inline on the trio thread (False). By
            default threads for a file, inline for ``":memory:"`` (deterministic under
            ``autojump_clock``). Inline on a file blocks the trio loop on disk.

    Raises:
        StoreError: the database cannot be opened, has a newer schema, or the instance lock
            file cannot be created.
    """
    if linger < 0:
        raise ValueError("linger must not be negative")
    if batch_max < 1 or read_connections < 1:
        raise ValueError("batch_max and read_connections must be at least 1")
    target = os.fspath(path)
    memory = target == ":memory:"
    if threads is None:
        threads = not memory
    writer = await _off_loop(functools.partial(_open_writer, target), threads=threads)
    lock_dir: str | None = None
    if not memory:
        # The real path: stores opening one database by different paths (a symlink, relative
        # and absolute) must find each other's locks, or recovery would end live responses.
        try:
            real = await _off_loop(functools.partial(os.path.realpath, target), threads=threads)
        except BaseException:
            writer.close()
            raise
        lock_dir = f"{real}-instances"
    # The channel is bounded (batch_max jobs): appends and enqueues wait for room.
    send, receive = trio.open_memory_channel[_Job](batch_max)
    store = SQLiteStore(
        writer=writer,
        send=send,
        batch_max=batch_max,
        linger=linger,
        new_reader=functools.partial(_open_reader, target),
        read_slots=trio.CapacityLimiter(1 if memory else read_connections),
        instance=uuid.uuid4().hex,
        threads=threads,
        lock_dir=lock_dir,
        idle_readers=[writer] if memory else [],
    )
    try:
        if store._lock_dir is not None:
            store._lock = await store._off_loop(
                functools.partial(_claim_instance, store._lock_dir, store.instance)
            )
        async with _service_nursery(nursery) as service:
            await service.start(functools.partial(store._run_writer, inbox=receive))
            try:
                await store.recover(now=time.time())
                yield store
            finally:
                send.close()  # the writer drains what is queued, then ends
                with trio.CancelScope(shield=True):
                    await store._writer_done.wait()
    finally:
        with trio.CancelScope(shield=True):
            await store._off_loop(store._close, cancellable=False)
