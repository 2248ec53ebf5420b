"""The PostgreSQL store: its transaction and reads in worker threads, its instance's heartbeat
and periodic recovery, :func:`open_postgres_store` and :func:`migrate_postgres` (the package
docstring is the theory of operation; the writer actor and the public methods are the SQL stores'
common part, ``.._sql._store``)."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
import trio

from ...errors import StoreError
from .._sql._jobs import _Job
from .._sql._store import _Reads, _running, _SQLStore
from ._instances import _beat, _forget_dead, _orphans, _register, _Registration, _unregister
from ._reads import _POSTGRES_READS
from ._writer import _Refs, _write_batch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    import psycopg

    from .._interface import RecoveryPolicy
    from ._boundary import _Database

_T = TypeVar("_T")

logger = logging.getLogger("sluicegate")

_NO_DRIVER = "the PostgreSQL store needs psycopg: pip install 'sluicegate[postgres]'"


def _no_driver(exc: ImportError) -> StoreError:
    """The error of a store opened without the optional driver; ``exc`` itself if something
    else failed to import."""
    if not (exc.name or "").startswith(("psycopg", "psycopg_pool")):
        raise exc
    return StoreError(_NO_DRIVER)


@attrs.define(eq=False, kw_only=True)
class PostgresStore(_SQLStore):
    """The PostgreSQL event store; open it with :func:`open_postgres_store`."""

    _db: _Database
    #: Reads in flight, at most one per pool connection (so no worker thread waits for one).
    _read_slots: trio.CapacityLimiter
    _registration: _Registration
    #: Seconds between two heartbeats (and two recoveries).
    _heartbeat: float
    _refs: _Refs = attrs.Factory(_Refs)

    _READS: ClassVar[_Reads] = _POSTGRES_READS

    async def _write(self, batch: list[_Job]) -> None:
        # Not abandoned on cancel (trio's default): the transaction finishes either way.
        await trio.to_thread.run_sync(
            self._db.write,
            functools.partial(
                _write_batch,
                batch=batch,
                instance=self._instance,
                refs=self._refs,
                refusal=self._db.refusal,
            ),
        )

    async def _run_read(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        async with self._read_slots:
            return await trio.to_thread.run_sync(self._db.read, fn)

    # -- instances and recovery

    async def recover(self, *, now: float) -> int:
        """See :meth:`sluicegate.store.Store.recover`. An instance is dead when it has no row in
        ``instances`` or its heartbeat is older than its lease, by the server's clock."""
        orphans = await self._read(functools.partial(_orphans, instance=self._instance))
        count = await self._end_as_failed(list(orphans), now=now, owners=orphans)
        await self._read(_forget_dead)
        return count

    async def _serve(self, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        """The instance's service, until cancelled: every ``heartbeat`` seconds renew its
        heartbeat, and end what dead instances left unfinished. Two loops, so a slow recovery
        (a busy writer) never delays a heartbeat past the lease; a round that fails (the
        database is down) is logged, and the next one tries again."""
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with trio.open_nursery() as loops:
                loops.start_soon(self._every_heartbeat, self._beat, "heartbeat")
                loops.start_soon(self._every_heartbeat, self._recover_now, "recovery")

    async def _every_heartbeat(self, step: Callable[[], Awaitable[object]], name: str) -> None:
        while True:
            await trio.sleep(self._heartbeat)
            try:
                await step()
            except StoreError:
                logger.warning("the store's %s failed", name, exc_info=True)

    async def _beat(self) -> None:
        if not await self._read(functools.partial(_beat, me=self._registration)):
            logger.error(
                "this sluicegate instance (%s) was judged dead by another one (no heartbeat "
                "within its lease of %s s), which ended its unfinished responses as failed; it "
                "registered again",
                self._instance,
                self._registration.lease,
            )

    async def _recover_now(self) -> int:
        return await self.recover(now=time.time())

    def _close(self) -> None:
        """Remove this instance's row (what it leaves unfinished is then the others' to
        recover), then close the connections. A database that is down keeps the row until its
        lease ends."""
        self._closed = True
        try:
            self._db.read(functools.partial(_unregister, instance=self._instance))
        except StoreError:
            logger.warning("the store could not remove its instance row", exc_info=True)
        finally:
            self._db.close()


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    nursery: trio.Nursery | None = None,
    batch_max: int = 512,
    linger: float = 0.05,
    pool_size: int = 8,
    lease: float = 15.0,
    heartbeat: float = 5.0,
    id_secret_digest: str | None = None,
    synchronous_commit: bool = True,
    recovery: RecoveryPolicy | None = None,
) -> AsyncIterator[PostgresStore]:
    """Open (creating or migrating) the PostgreSQL store at ``url``, register this instance and
    run its writer and its heartbeat.

    Responses left unfinished by instances that are no longer live (a dead process, on any
    machine) are ended as failed (:meth:`PostgresStore.recover`) before the store is yielded,
    and every ``heartbeat`` seconds after; those of live instances are left alone. On exit the
    writer commits everything already queued, the instance's row is removed and the
    connections close.

    Args:
        url: a libpq connection string or URL (``postgresql://user@host/db``).
        nursery: the gateway's service nursery to run the writer and the heartbeat in; by
            default the store opens its own.
        batch_max: records per group-commit transaction (one append is never split), the number
            of appends that may queue before ``append`` waits for room, and the responses per
            purge transaction.
        linger: seconds an enqueued record (nobody waiting on it) may wait for more work to
            share its transaction. 0 commits at once.
        pool_size: the most connections for reads (the writer has one of its own).
        lease: seconds without a heartbeat after which the other instances judge this one dead
            and end its unfinished responses.
        heartbeat: seconds between two heartbeats (less than ``lease``), and between two
            recoveries of dead instances' responses.
        id_secret_digest: the digest of the response-ID secret (never the secret). Every live
            instance on the database must have the same (None: this instance is alone); one
            starting with ``generated:`` is of a secret made at start, shared by no other
            server.
        synchronous_commit: the writer's commits wait until the database server has flushed
            them (PostgreSQL's ``synchronous_commit``). False: they return before, so a crash
            of the database server (or its machine; never of the gateway) may lose what was
            committed in the last fraction of a second; in exchange a transaction's latency
            is no longer the disk's flush.
        recovery: which of a dead instance's unfinished responses this store's gateway takes
            over instead of ending them ``failed`` (a native background response its upstream
            still runs), and with which error the others end (docs/design.md §5.5).

    Raises:
        StoreError: psycopg is not installed; the database has a newer schema; another live
            instance has another response-ID secret (or this one has none).
        StoreUnavailableError: the database is unreachable (within seconds).
    """
    if linger < 0:
        raise ValueError("linger must not be negative")
    if batch_max < 1 or pool_size < 1:
        raise ValueError("batch_max and pool_size must be at least 1")
    if not 0 < heartbeat < lease:
        raise ValueError("heartbeat must be positive and less than lease")
    try:
        from ._boundary import _Database
    except ImportError as exc:
        raise _no_driver(exc) from exc
    registration = _Registration(
        instance=uuid.uuid4().hex,
        lease=lease,
        digest=id_secret_digest,
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )
    db = await trio.to_thread.run_sync(_Database.open, url, pool_size, synchronous_commit)
    try:
        await trio.to_thread.run_sync(db.write, functools.partial(_register, me=registration))
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(db.close)
        raise
    # The channel is bounded (batch_max jobs): appends and enqueues wait for room.
    send, receive = trio.open_memory_channel[_Job](batch_max)
    store = PostgresStore(
        db=db,
        send=send,
        batch_max=batch_max,
        linger=linger,
        instance=registration.instance,
        read_slots=trio.CapacityLimiter(pool_size),
        recovery=recovery,
        registration=registration,
        heartbeat=heartbeat,
    )
    try:
        async with _running(store, nursery, receive) as service:
            serving: trio.CancelScope = await service.start(store._serve)
            try:
                await store.recover(now=time.time())
                yield store
            finally:
                serving.cancel()  # before the writer drains: recovery appends no more
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store._close)


def migrate_postgres(url: str) -> tuple[int, int]:
    """Apply the pending schema migrations of the PostgreSQL store at ``url`` (as opening it
    would, under the same lock), without registering an instance: before a rolling upgrade.
    Blocks (a command-line step, not for the trio loop).

    Returns:
        The schema version before and after.

    Raises:
        StoreError: psycopg is not installed, or the database has a newer schema.
        StoreUnavailableError: the database is unreachable.
    """
    try:
        from ._boundary import _migrate_url
    except ImportError as exc:
        raise _no_driver(exc) from exc
    return _migrate_url(url)
