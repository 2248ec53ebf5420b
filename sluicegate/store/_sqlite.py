"""The SQLite backend: the embedded default store (DESIGN §5).

Theory of operation:

- **One writer actor** owns the write connection. :meth:`SQLiteStore.append` encodes its records
  (in the caller's task, so a record that is not JSON fails there), puts them on a bounded
  channel with a :class:`trio.Event`, and waits. The writer takes everything queued (until
  ``batch_max`` records; one append is never split) and writes it in **one** transaction in a
  worker thread, so the trio loop never waits on disk: this is group commit, many responses share
  one fsync. Each append gets its own ``SAVEPOINT``, so an append that breaks the log's rules
  (a second ``Ended``) is rolled back and refused alone; a failed ``COMMIT`` fails them all.
- **Reads** run in worker threads on a small pool of read connections; WAL lets them run while the
  writer commits. ``:memory:`` is one database per connection, so an in-memory store has one
  connection that reads and the writer share under a lock (a shared-cache URI would let readers
  see it too, but shared cache locks tables and fails readers with ``SQLITE_LOCKED`` while a write
  is open).
- **Durability**: ``journal_mode=WAL`` with ``synchronous=NORMAL``. A committed append survives a
  crash of the process; after a power loss or OS crash the last few transactions may be lost
  (never corrupted). ``synchronous=FULL`` would close that gap with one more fsync per group
  commit.
- **Schema**: ``PRAGMA user_version`` is the schema version; :data:`_MIGRATIONS` are applied in
  order, in one ``BEGIN IMMEDIATE`` transaction, when a store opens.
- ``sqlite3`` exceptions are translated into :mod:`._errors` classes here, in :func:`_guarded`,
  and nowhere else: nothing outside this module imports ``sqlite3``.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, ParamSpec, TypeVar

import attrs
import orjson
import trio

from .._types import ResponseStatus
from ..errors import StoreError, StoreIntegrityError, StoreUnavailableError
from ._interface import RECOVERY_ERROR, StoreStatistics
from ._records import (
    Accepted,
    Deleted,
    Ended,
    ItemDone,
    Record,
    ResponseRow,
    Routed,
    Settled,
    StreamEventRecorded,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "open_sqlite_store"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

#: Schema migrations; ``_MIGRATIONS[n]`` takes a database from ``user_version`` n to n + 1.
#: Plain DDL separated by ``;`` (no ``;`` inside literals: the scripts are split on it).
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        deployment_id TEXT,
        provider TEXT,
        background INTEGER NOT NULL,
        store INTEGER NOT NULL,
        metadata BLOB NOT NULL,
        created_at REAL NOT NULL,
        completed_at REAL,
        usage BLOB,
        cost REAL,
        error BLOB,
        deleted INTEGER NOT NULL DEFAULT 0,
        last_seq INTEGER NOT NULL
    );
    CREATE TABLE events (
        response_id TEXT NOT NULL REFERENCES responses (id),
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        ordinal INTEGER,
        payload BLOB,
        at REAL NOT NULL,
        PRIMARY KEY (response_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX events_one_terminal ON events (response_id) WHERE kind = 'ended';
    CREATE INDEX responses_by_status ON responses (status);
    CREATE INDEX responses_by_owner ON responses (owner, created_at);
    CREATE INDEX responses_by_model ON responses (model, created_at);
    CREATE INDEX responses_by_created ON responses (created_at)
    """,
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

#: How long a connection waits for another process's lock before failing as busy (seconds).
_BUSY_TIMEOUT: Final = 5.0

#: Record kinds as stored in ``events.kind``; ``ordinal`` is the output index or sequence number.
_ACCEPTED, _ROUTED, _ITEM_DONE, _STREAM_EVENT, _SETTLED, _ENDED, _DELETED = (
    "accepted",
    "routed",
    "item_done",
    "stream_event",
    "settled",
    "ended",
    "deleted",
)
#: Kinds whose payload is the caller's content, removed by ``Deleted``.
_CONTENT_KINDS: Final = (_ACCEPTED, _ITEM_DONE, _STREAM_EVENT)


# --- the sqlite3 boundary --------------------------------------------------------------------


def _translate(exc: sqlite3.Error) -> StoreError:
    primary = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreUnavailableError(f"the database is busy: {exc}")
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreIntegrityError(f"the database refused the records: {exc}")
    return StoreError(f"the database failed: {exc}")


def _guarded(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``fn``, with ``sqlite3`` exceptions translated (the one boundary)."""
    try:
        return fn(*args, **kwargs)
    except sqlite3.Error as exc:
        raise _translate(exc) from exc


def _copy_error(exc: StoreError) -> StoreError:
    """A fresh instance per waiter, so concurrent raisers do not share one traceback."""
    copy = type(exc)(exc.message, code=exc.code, status_code=exc.status_code)
    copy.__cause__ = exc.__cause__
    return copy


# --- connections -----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Conn:
    """A connection and the lock that gives one thread at a time the use of it."""

    db: sqlite3.Connection
    lock: threading.Lock = attrs.Factory(threading.Lock)

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _connect(target: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False: worker
    # threads take turns on a connection, serialised by _Conn.lock.
    db = sqlite3.connect(
        target, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        db.close()
        raise
    return db


def _open_writer(target: str) -> _Conn:
    db = _connect(target)
    try:
        db.execute("PRAGMA journal_mode = WAL")  # answers "memory" for :memory:, which is fine
        db.execute("PRAGMA synchronous = NORMAL")
        _migrate(db)
    except BaseException:
        db.close()
        raise
    return _Conn(db)


def _open_reader(target: str) -> _Conn:
    db = _connect(target)
    try:
        db.execute("PRAGMA query_only = ON")
    except BaseException:
        db.close()
        raise
    return _Conn(db)


def _migrate(db: sqlite3.Connection) -> None:
    # IMMEDIATE: two processes opening one file at once migrate one after the other.
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}; this sluicegate knows "
                f"{SCHEMA_VERSION} at most"
            )
        for script in _MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        if version != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


# --- encoding (in the caller's task) ---------------------------------------------------------


@attrs.frozen
class _Encoded:
    """A record ready for the writer thread: its row in ``events`` and its projection changes."""

    record: Record
    kind: str
    ordinal: int | None
    payload: bytes
    #: Projection columns this record sets (besides status, deleted and last_seq).
    changes: dict[str, Any]
    #: The status this record moves the response to (Accepted, Ended), if any.
    status: str | None = None


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise StoreIntegrityError(f"a record is not JSON-serializable: {exc}") from exc


def _dumps_or_none(value: Any) -> bytes | None:
    return None if value is None else _dumps(value)


def _encode(record: Record) -> _Encoded:
    match record:
        case Accepted():
            payload = {
                "owner": record.owner,
                "model": record.model,
                "params": record.params,
                "input_items": record.input_items,
                "background": record.background,
                "store": record.store,
                "metadata": record.metadata,
                "created_at": record.created_at,
            }
            changes = {
                "owner": record.owner,
                "model": record.model,
                "background": int(record.background),
                "store": int(record.store),
                "metadata": _dumps(record.metadata),
                "created_at": record.created_at,
            }
            status = ResponseStatus.QUEUED if record.background else ResponseStatus.IN_PROGRESS
            return _Encoded(record, _ACCEPTED, None, _dumps(payload), changes, status.value)
        case Routed():
            payload = {
                "deployment_id": record.deployment_id,
                "provider": record.provider,
                "attempt": record.attempt,
            }
            changes = {"deployment_id": record.deployment_id, "provider": record.provider}
            return _Encoded(record, _ROUTED, record.attempt, _dumps(payload), changes)
        case ItemDone():
            # The payload is the item itself; ``ordinal`` keeps the output index.
            return _Encoded(record, _ITEM_DONE, record.output_index, _dumps(record.item), {})
        case StreamEventRecorded():
            return _Encoded(record, _STREAM_EVENT, record.sequence_number, _dumps(record.event), {})
        case Settled():
            payload = {"usage": record.usage, "cost": record.cost}
            changes = {"usage": _dumps_or_none(record.usage), "cost": record.cost}
            return _Encoded(record, _SETTLED, None, _dumps(payload), changes)
        case Ended():
            changes = {
                "completed_at": record.completed_at,
                "error": _dumps_or_none(record.error),
            }
            blob = _ended_payload(record, with_response=True)
            return _Encoded(record, _ENDED, None, blob, changes, record.status.value)
        case Deleted():
            payload = {"deleted_at": record.deleted_at}
            return _Encoded(record, _DELETED, None, _dumps(payload), {})
    raise TypeError(f"not a store record: {record!r}")


def _ended_payload(record: Ended, *, with_response: bool) -> bytes:
    return _dumps(
        {
            "status": record.status.value,
            "error": record.error,
            "response": record.response if with_response else None,
            "completed_at": record.completed_at,
        }
    )


# --- writing (in the writer's worker thread) -------------------------------------------------


@attrs.define(eq=False)
class _Pending:
    """One append call waiting for its transaction; the writer fills in ``error`` and sets
    ``done``."""

    encoded: tuple[_Encoded, ...]
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None


@attrs.define(eq=False)
class _RowState:
    """A response's projection while one append is applied."""

    status: str
    last_seq: int
    ended: bool
    deleted: bool
    changes: dict[str, Any] = attrs.Factory(dict)


def _load_state(db: sqlite3.Connection, response_id: str) -> _RowState | None:
    row = db.execute(
        "SELECT status, last_seq, completed_at IS NOT NULL, deleted FROM responses WHERE id = ?",
        (response_id,),
    ).fetchone()
    if row is None:
        return None
    return _RowState(status=row[0], last_seq=row[1], ended=bool(row[2]), deleted=bool(row[3]))


def _apply(db: sqlite3.Connection, encoded: tuple[_Encoded, ...], at: float) -> None:
    """Write one append's records and fold them into the projection (inside a savepoint)."""
    states: dict[str, _RowState] = {}
    for enc in encoded:
        rid = enc.record.response_id
        state = states.get(rid) or _load_state(db, rid)
        payload: bytes | None = enc.payload
        if enc.kind == _ACCEPTED:
            if state is not None:
                raise StoreIntegrityError(f"response {rid} was already accepted")
            assert enc.status is not None
            c = enc.changes
            db.execute(
                "INSERT INTO responses (id, owner, status, model, background, store, metadata,"
                " created_at, deleted, last_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
                (
                    rid,
                    c["owner"],
                    enc.status,
                    c["model"],
                    c["background"],
                    c["store"],
                    c["metadata"],
                    c["created_at"],
                ),
            )
            state = _RowState(status=enc.status, last_seq=-1, ended=False, deleted=False)
        elif state is None:
            raise StoreIntegrityError(f"{enc.kind} for response {rid}, which was never accepted")
        else:
            state.changes.update(enc.changes)
            if enc.kind == _ROUTED and state.status == ResponseStatus.QUEUED.value:
                state.status = ResponseStatus.IN_PROGRESS.value
            elif enc.kind == _ENDED:
                if state.ended:
                    raise StoreIntegrityError(f"response {rid} has already ended")
                assert enc.status is not None and isinstance(enc.record, Ended)
                state.ended = True
                state.status = enc.status
                if state.deleted:
                    payload = _ended_payload(enc.record, with_response=False)
            elif enc.kind == _DELETED:
                state.deleted = True
                _remove_content(db, rid)
            elif enc.kind in _CONTENT_KINDS and state.deleted:
                payload = None
        states[rid] = state
        state.last_seq += 1
        db.execute(
            "INSERT INTO events (response_id, seq, kind, ordinal, payload, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (rid, state.last_seq, enc.kind, enc.ordinal, payload, at),
        )
    for rid, state in states.items():
        columns = {
            **state.changes,
            "status": state.status,
            "deleted": int(state.deleted),
            "last_seq": state.last_seq,
        }
        # Column names come from _encode, never from input.
        assignments = ", ".join(f"{name} = ?" for name in columns)
        db.execute(f"UPDATE responses SET {assignments} WHERE id = ?", (*columns.values(), rid))


def _remove_content(db: sqlite3.Connection, response_id: str) -> None:
    db.execute(
        "UPDATE events SET payload = NULL WHERE response_id = ? AND kind IN (?, ?, ?)",
        (response_id, *_CONTENT_KINDS),
    )
    row = db.execute(
        "SELECT seq, payload FROM events WHERE response_id = ? AND kind = ?",
        (response_id, _ENDED),
    ).fetchone()
    if row is not None and row[1] is not None:
        ended = orjson.loads(row[1])
        ended["response"] = None
        db.execute(
            "UPDATE events SET payload = ? WHERE response_id = ? AND seq = ?",
            (orjson.dumps(ended), response_id, row[0]),
        )


def _write_batch(writer: _Conn, batch: list[_Pending]) -> None:
    """One group-commit transaction; sets ``error`` on each append it refuses."""
    at = time.time()
    with writer.lock:
        db = writer.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for pending in batch:
                db.execute("SAVEPOINT append")
                try:
                    _apply(db, pending.encoded, at)
                except StoreIntegrityError as exc:
                    db.execute("ROLLBACK TO append")
                    pending.error = exc
                except sqlite3.IntegrityError as exc:  # the schema's own guard (a constraint)
                    db.execute("ROLLBACK TO append")
                    pending.error = _translate(exc)
                    pending.error.__cause__ = exc
                db.execute("RELEASE append")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


# --- reading (in reader worker threads) ------------------------------------------------------


def _loads_or_none(blob: bytes | None) -> Any:
    return None if blob is None else orjson.loads(blob)


def _read_row(db: sqlite3.Connection, response_id: str) -> ResponseRow | None:
    row = db.execute(
        "SELECT id, owner, status, model, deployment_id, provider, background, store, metadata,"
        " created_at, completed_at, usage, cost, error, deleted FROM responses WHERE id = ?",
        (response_id,),
    ).fetchone()
    if row is None:
        return None
    deleted = bool(row[14])
    return ResponseRow(
        id=row[0],
        owner=row[1],
        status=ResponseStatus(row[2]),
        model=row[3],
        deployment_id=row[4],
        provider=row[5],
        background=bool(row[6]),
        store=bool(row[7]),
        metadata=orjson.loads(row[8]),
        created_at=row[9],
        completed_at=row[10],
        usage=_loads_or_none(row[11]),
        cost=row[12],
        error=_loads_or_none(row[13]),
        deleted=deleted,
    )


def _read_payloads(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return [orjson.loads(blob) for (blob,) in db.execute(sql, params) if blob is not None]


def _read_unfinished(db: sqlite3.Connection) -> list[str]:
    rows = db.execute(
        "SELECT id FROM responses WHERE status IN (?, ?) ORDER BY created_at",
        (ResponseStatus.QUEUED.value, ResponseStatus.IN_PROGRESS.value),
    )
    return [rid for (rid,) in rows]


def _locked_call(conn: _Conn, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    with conn.lock:
        return fn(conn.db)


# --- the store -------------------------------------------------------------------------------


@attrs.define(eq=False)
class SQLiteStore:
    """The SQLite event store; open it with :func:`open_sqlite_store`."""

    _writer: _Conn
    _send: trio.MemorySendChannel[_Pending]
    _batch_max: int
    #: Opens one more read connection (in a worker thread).
    _new_reader: Callable[[], _Conn]
    _read_slots: trio.CapacityLimiter
    _idle_readers: list[_Conn] = attrs.Factory(list)
    _writer_done: trio.Event = attrs.Factory(trio.Event)
    _closed: bool = False
    _records_appended: int = 0
    _transactions: int = 0
    _largest_batch: int = 0
    _pending: int = 0

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            records_appended=self._records_appended,
            transactions=self._transactions,
            largest_batch=self._largest_batch,
            pending=self._pending,
        )

    # -- writing

    async def append(self, records: Sequence[Record]) -> None:
        """See :meth:`sluicegate.store.Store.append`."""
        if not records:
            await trio.lowlevel.checkpoint()
            return
        pending = _Pending(tuple(_encode(record) for record in records))
        size = len(pending.encoded)
        self._pending += size
        try:
            await self._send.send(pending)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            self._pending -= size
            raise StoreUnavailableError("the store is closed") from exc
        except BaseException:  # cancelled before the writer had it: nothing was queued
            self._pending -= size
            raise
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def _run_writer(
        self,
        *,
        inbox: trio.MemoryReceiveChannel[_Pending],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The writer actor: group commit, until the send side closes (then drained)."""
        batch: list[_Pending] = []
        with inbox:
            try:
                task_status.started()
                async for first in inbox:
                    batch = [first]
                    size = len(first.encoded)
                    while size < self._batch_max:
                        try:
                            pending = inbox.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        batch.append(pending)
                        size += len(pending.encoded)
                    await self._commit(batch)
                    batch = []
            finally:
                # Cancelled or crashed: whoever still waits learns it was not written. (Drained
                # before the inbox closes: closing it drops what is buffered.)
                leftovers = [p for p in batch if not p.done.is_set()]
                while True:
                    try:
                        leftovers.append(inbox.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                for pending in leftovers:
                    self._resolve(pending, StoreUnavailableError("the store closed first"))
                self._writer_done.set()

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            # Not abandoned on cancel: the transaction finishes and its waiters hear of it.
            await trio.to_thread.run_sync(_guarded, _write_batch, self._writer, batch)
        except StoreError as exc:
            for pending in batch:
                self._resolve(pending, pending.error or _copy_error(exc))
            return
        except BaseException as exc:  # a bug: the waiters get an error, the nursery the bug
            for pending in batch:
                error = StoreError("the store's writer failed")
                error.__cause__ = exc
                self._resolve(pending, pending.error or error)
            raise
        self._transactions += 1
        written = sum(len(p.encoded) for p in batch if p.error is None)
        self._records_appended += written
        self._largest_batch = max(self._largest_batch, written)
        for pending in batch:
            self._resolve(pending, pending.error)

    def _resolve(self, pending: _Pending, error: StoreError | None) -> None:
        pending.error = error
        self._pending -= len(pending.encoded)
        pending.done.set()

    # -- reading

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        async with self._read_slots:
            if self._idle_readers:
                conn = self._idle_readers.pop()
            else:
                conn = await trio.to_thread.run_sync(_guarded, self._new_reader)
            try:
                return await trio.to_thread.run_sync(_guarded, _locked_call, conn, fn)
            finally:
                if self._closed:
                    conn.close()
                else:
                    self._idle_readers.append(conn)

    async def get(self, response_id: str) -> ResponseRow | None:
        """See :meth:`sluicegate.store.Store.get`."""
        return await self._read(functools.partial(_read_row, response_id=response_id))

    async def final_response(self, response_id: str) -> dict[str, Any] | None:
        """See :meth:`sluicegate.store.Store.final_response`."""
        ended = await self._read(
            functools.partial(
                _read_payloads,
                sql="SELECT payload FROM events WHERE response_id = ? AND kind = ?",
                params=(response_id, _ENDED),
            )
        )
        if not ended:
            return None
        response: dict[str, Any] | None = ended[0]["response"]
        return response

    async def input_items(self, response_id: str) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.input_items`."""
        accepted = await self._read(
            functools.partial(
                _read_payloads,
                sql="SELECT payload FROM events WHERE response_id = ? AND seq = 0",
                params=(response_id,),
            )
        )
        if not accepted:
            return []
        items: list[dict[str, Any]] = accepted[0]["input_items"]
        return items

    async def output_items(self, response_id: str) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.output_items`."""
        return await self._read(
            functools.partial(
                _read_payloads,
                sql="SELECT payload FROM events WHERE response_id = ? AND kind = ?"
                " ORDER BY ordinal, seq",
                params=(response_id, _ITEM_DONE),
            )
        )

    async def stream_events(
        self, response_id: str, *, after: int = -1, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.stream_events`."""
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        return await self._read(
            functools.partial(
                _read_payloads,
                sql="SELECT payload FROM events WHERE response_id = ? AND kind = ?"
                " AND ordinal > ? ORDER BY ordinal, seq LIMIT ?",
                params=(response_id, _STREAM_EVENT, after, limit),
            )
        )

    async def recover(self, *, now: float) -> int:
        """See :meth:`sluicegate.store.Store.recover`."""
        unfinished = await self._read(_read_unfinished)
        for start in range(0, len(unfinished), self._batch_max):
            await self.append(
                [
                    Ended(
                        response_id=rid,
                        status="failed",
                        error=dict(RECOVERY_ERROR),
                        response=None,
                        completed_at=now,
                    )
                    for rid in unfinished[start : start + self._batch_max]
                ]
            )
        return len(unfinished)

    # -- closing

    def _close_connections(self) -> None:
        self._closed = True
        for conn in (*self._idle_readers, self._writer):
            conn.close()
        self._idle_readers.clear()


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
    read_connections: int = 4,
) -> AsyncIterator[SQLiteStore]:
    """Open (creating or migrating) the SQLite store at ``path`` and run its writer.

    Responses an earlier process left unfinished are ended as failed (:meth:`SQLiteStore.recover`)
    before the store is yielded. On exit the writer commits every append already queued, then
    the connections close.

    Args:
        path: the database file, or ``":memory:"`` for a private in-memory store (tests): one
            connection then serves the writer and the readers.
        nursery: the gateway's service nursery to run the writer in; by default the store opens
            its own.
        batch_max: records per group-commit transaction (one append is never split), and the
            number of appends that may queue before ``append`` waits for room.
        read_connections: the most read connections (file stores).

    Raises:
        StoreError: the database cannot be opened, or has a newer schema.
    """
    if batch_max < 1 or read_connections < 1:
        raise ValueError("batch_max and read_connections must be at least 1")
    target = os.fspath(path)
    memory = target == ":memory:"
    writer = await trio.to_thread.run_sync(_guarded, _open_writer, target)
    send, receive = trio.open_memory_channel[_Pending](batch_max)
    store = SQLiteStore(
        writer=writer,
        send=send,
        batch_max=batch_max,
        new_reader=functools.partial(_open_reader, target),
        read_slots=trio.CapacityLimiter(1 if memory else read_connections),
        idle_readers=[writer] if memory else [],
    )
    try:
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
            await trio.to_thread.run_sync(store._close_connections)
