"""The SQLite store: its transaction (inline or in a worker thread, and the WAL's checkpoints),
its reads on a small pool of connections, its recovery by instance lock files, and
:func:`open_sqlite_store` (the package docstring is the theory of operation; the writer actor
and the public methods are the SQL stores' common part, ``.._sql._store``)."""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
import trio

from ...errors import StoreError, StoreUnavailableError
from .._sql._store import _Reads, _running, _SQLStore
from ._boundary import (
    _CHECKPOINT_BYTES,
    _INLINE_BYTES,
    _INLINE_JOBS,
    _Conn,
    _guarded,
    _locked_call,
    _off_loop,
    _open_reader,
)
from ._reads import _SQLITE_READS, _read_all
from ._recovery import (
    _claim_instance,
    _find_dead_instances,
    _InstanceLock,
    _read_unfinished,
    _release_all,
)
from ._schema import _open_writer
from ._writer import _checkpoint, _Job, _write_batch

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import AsyncIterator, Awaitable, Callable

    from .._interface import RecoveryPolicy

_T = TypeVar("_T")

logger = logging.getLogger("sluicegate")


@attrs.define(eq=False, kw_only=True)
class SQLiteStore(_SQLStore):
    """The SQLite event store; open it with :func:`open_sqlite_store`."""

    _writer: _Conn
    #: Opens one more read connection.
    _new_reader: Callable[[], _Conn]
    _read_slots: trio.CapacityLimiter
    #: SQL in worker threads (else inline on the trio thread).
    _threads: bool
    #: Where the instances' lock files live; None for an in-memory store.
    _lock_dir: str | None
    _lock: _InstanceLock | None = None
    _idle_readers: list[_Conn] = attrs.Factory(list)
    #: The WAL file's size at the last checkpoint (0 once it was reset).
    _wal_mark: int = 0

    _READS: ClassVar[_Reads] = _SQLITE_READS

    async def _off_loop(self, fn: Callable[[], _T], *, cancellable: bool = True) -> _T:
        return await _off_loop(fn, threads=self._threads, cancellable=cancellable)

    # -- writing

    async def _write(self, batch: list[_Job]) -> Callable[[], Awaitable[None]]:
        write = functools.partial(_write_batch, self._writer, batch, self._instance)
        size = sum(job.size for job in batch)
        inline = self._threads and size <= _INLINE_BYTES and len(batch) <= _INLINE_JOBS
        wal = self._commit_inline(write) if inline else None
        if wal is None:
            inline = False
            wal = await self._off_loop(write, cancellable=False)
        return functools.partial(self._after_commit, wal=wal, inline=inline)

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

    async def _after_commit(self, *, wal: int, inline: bool) -> None:
        if inline:
            # The schedule point of an inline commit, after its waiters are released: they
            # run in the same pass of the run loop as the writer's next step.
            await trio.lowlevel.cancel_shielded_checkpoint()
        # After the waiters are released: they need not wait for it (the next transaction
        # does). Inline, a checkpoint would block the loop: the last connection to close does it.
        if self._threads:
            await self._checkpoint_if_due(wal)

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

    # -- reading

    async def _run_read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
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

    async def _query_plan(self, query: tuple[str, tuple[Any, ...]]) -> str:
        """``EXPLAIN QUERY PLAN`` of a query (from ``_spend_*_query``), one step a line."""
        sql, params = query
        rows = await self._read(
            functools.partial(_read_all, sql="EXPLAIN QUERY PLAN " + sql, params=params)
        )
        return "\n".join(str(row[3]) for row in rows)

    # -- recovery

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
            orphans = {rid: instance for rid, instance in unfinished if instance in dead}
            count = await self._end_as_failed(list(orphans), now=now, owners=orphans)
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
async def open_sqlite_store(
    path: str | os.PathLike[str],
    *,
    nursery: trio.Nursery | None = None,
    batch_max: int = 512,
    linger: float = 0.05,
    read_connections: int = 4,
    threads: bool | None = None,
    recovery: RecoveryPolicy | None = None,
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
        recovery: which of a dead instance's unfinished responses this store's gateway takes
            over instead of ending them ``failed`` (a native background response its upstream
            still runs), and with which error the others end (docs/design.md §5.5).

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
        recovery=recovery,
        lock_dir=lock_dir,
        idle_readers=[writer] if memory else [],
    )
    try:
        if store._lock_dir is not None:
            store._lock = await store._off_loop(
                functools.partial(_claim_instance, store._lock_dir, store.instance)
            )
        async with _running(store, nursery, receive):
            await store.recover(now=time.time())
            yield store
    finally:
        with trio.CancelScope(shield=True):
            await store._off_loop(store._close, cancellable=False)
