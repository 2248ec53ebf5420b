"""The SQLite backend: the embedded default store (DESIGN §5).

Theory of operation:

- **One writer actor** owns the write connection. :meth:`SQLiteStore.append` encodes its records
  (in the caller's task, so a record that is not JSON fails there), puts them on a bounded
  channel with a :class:`trio.Event`, and waits. The writer takes everything queued (until
  ``batch_max`` records; one append is never split) and writes it in **one** transaction: this is
  group commit, many responses share one fsync. Each append gets its own ``SAVEPOINT``, so an
  append that breaks the log's rules (a second ``Ended``) is rolled back and refused alone; a
  failed ``COMMIT`` fails them all. :meth:`SQLiteStore.enqueue` puts records on the same channel
  and returns without waiting for the commit; nobody waits for its verdict, so a refusal is
  logged (the response's later appends then fail on the log's rules). One channel keeps the
  order: whatever is queued first is committed first. An enqueued record lingers (``linger``,
  50 ms) for more work before it is committed alone, so at low concurrency a response's
  acceptance and its end share one transaction.
- **Reads** run on a small pool of read connections; WAL lets them run while the writer commits.
  ``:memory:`` is one database per connection, so an in-memory store has one connection that
  reads and the writer share under a lock (a shared-cache URI would let readers see it too, but
  shared cache locks tables and fails readers with ``SQLITE_LOCKED`` while a write is open).
- **Threads or inline**: by default a file store does its SQL in worker threads, so the trio loop
  never waits on disk. An in-memory store does it inline, on the trio thread (still with a
  checkpoint around each read and commit): memory never waits on disk, and a test running a
  gateway on it under ``autojump_clock`` stays deterministic (the clock would jump while a task
  waits on a worker thread, firing unrelated deadlines). ``threads=`` overrides either default.
  Even a threaded store commits *small* transactions (a few appends; what concurrency 1 makes)
  inline: a worker thread's round trip costs more CPU than such a commit. That is safe for the
  loop because the write connection never waits: its busy timeout is 0, so a database another
  process is writing sends the commit to a worker thread to wait there (backing off, up to
  5 s), and it never checkpoints inside a commit (``wal_autocheckpoint=0``): the writer runs a
  PASSIVE checkpoint in a worker thread after every ~4 MB written.
- **Durability**: ``journal_mode=WAL`` with ``synchronous=NORMAL``. A committed append survives a
  crash of the process; after a power loss or OS crash the last few transactions may be lost
  (never corrupted). ``synchronous=FULL`` would close that gap with one more fsync per group
  commit.
- **Instances and recovery**: every opened store is an *instance* with a random ID, written to
  ``responses.instance`` by ``Accepted``. A file store holds an exclusive ``flock`` on
  ``<db>-instances/<instance>.lock`` for its lifetime (the file appears already locked: it is
  locked under a temporary name, then renamed) and removes it on close. Several processes (or
  stores in one process) may share a file, so :meth:`SQLiteStore.recover` ends only the
  unfinished responses of *dead* instances: no instance recorded (schema 1), no lock file, or a
  lock file whose lock it can take (the process died holding it; it deletes the file once those
  responses are ended). Never its own. An in-memory store is alone with its database.
- **Spend**: the projection keeps the token counts (from ``Settled.usage``), cost, timings and
  the caller's ``spend_metadata``, which content removal never touches. Each top-level pair of
  ``spend_metadata`` is a row of ``spend_tags`` (key, canonical JSON value, response), so a
  metadata filter is a primary-key search; owner, model and time filters use the indexes of
  ``responses``. Spend queries never scan a table (only totals with no filter at all read
  every row, as they must).
- **Retention**: :meth:`SQLiteStore.purge` removes the content of responses that ended before a
  time, as ``Deleted`` does but without a tombstone. It goes through the writer's channel (at
  most ``batch_max`` responses per transaction), so it is ordered with appends and never races
  one.
- **Keys**: the proxy's virtual API keys (issue 4) are rows of ``keys``, found by the hash of the
  secret (its UNIQUE index). :meth:`SQLiteStore.put_key` and :meth:`SQLiteStore.delete_key` go
  through the writer's channel like a purge, so they are ordered with the appends around them
  and never need a write lock of their own. A deleted key keeps its row (``deleted_at``), so
  neither its ID nor its hash is ever taken again.
- **Schema**: ``PRAGMA user_version`` is the schema version; :data:`_MIGRATIONS` are applied in
  order, in one ``BEGIN IMMEDIATE`` transaction, when a store opens.
- ``sqlite3`` exceptions (and ``OSError`` of the instance lock files) are translated into
  :mod:`sluicegate.errors` classes here, in :func:`_guarded`, and nowhere else: nothing outside
  this module imports ``sqlite3``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, ParamSpec, TypeAlias, TypeVar

import attrs
import orjson
import trio

from .._types import ResponseStatus
from ..errors import InvalidRequestError, StoreError, StoreIntegrityError, StoreUnavailableError
from ._interface import (
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
from ._records import (
    Accepted,
    Deleted,
    Ended,
    ItemDone,
    ItemOrigin,
    Record,
    ResponseRow,
    Routed,
    Settled,
    StreamEventRecorded,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "open_sqlite_store"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

logger = logging.getLogger("sluicegate")

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
    # 2: conversations (previous_id), spend logs (token counts, timings, spend metadata and its
    # tags), retention (purged) and recovery by instance. Token counts of existing rows are
    # taken from their usage, so spend totals cover them too.
    """
    ALTER TABLE responses ADD COLUMN previous_id TEXT;
    ALTER TABLE responses ADD COLUMN upstream_id TEXT;
    ALTER TABLE responses ADD COLUMN spend_metadata BLOB NOT NULL DEFAULT '{}';
    ALTER TABLE responses ADD COLUMN ttft REAL;
    ALTER TABLE responses ADD COLUMN duration REAL;
    ALTER TABLE responses ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN purged INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN instance TEXT;
    UPDATE responses SET
        input_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.input_tokens') AS INTEGER), 0),
        output_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.output_tokens') AS INTEGER), 0),
        cached_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.input_tokens_details.cached_tokens') AS INTEGER), 0),
        reasoning_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.output_tokens_details.reasoning_tokens') AS INTEGER), 0),
        total_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.total_tokens') AS INTEGER), 0)
    WHERE usage IS NOT NULL AND json_valid(CAST(usage AS TEXT));
    CREATE TABLE spend_tags (
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        response_id TEXT NOT NULL REFERENCES responses (id),
        PRIMARY KEY (key, value, response_id)
    ) WITHOUT ROWID;
    CREATE INDEX responses_to_purge ON responses (completed_at) WHERE purged = 0;
    DROP INDEX responses_by_status;
    CREATE INDEX responses_unfinished ON responses (status)
        WHERE status IN ('queued', 'in_progress')
    """,
    # 3: the proxy's virtual API keys (issue 4). Only the hash of a secret is kept; models and
    # metadata are JSON (models NULL: every model).
    """
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        key_hash TEXT UNIQUE NOT NULL,
        alias TEXT,
        models BLOB,
        rpm INTEGER,
        tpm INTEGER,
        max_parallel_requests INTEGER,
        max_budget REAL,
        expires_at REAL,
        created_at REAL NOT NULL,
        metadata BLOB NOT NULL,
        deleted_at REAL
    )
    """,
    # 4: files and batches made through the gateway (issue 8): owner, deployment and raw ID,
    # the object as last seen; a batch's output file names its batch.
    """
    CREATE TABLE objects (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        model TEXT NOT NULL,
        deployment_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        raw_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        data BLOB NOT NULL,
        spend_metadata BLOB NOT NULL,
        batch_id TEXT,
        settled INTEGER NOT NULL DEFAULT 0,
        deleted_at REAL
    );
    CREATE UNIQUE INDEX objects_by_upstream ON objects (deployment_id, raw_id);
    CREATE INDEX objects_by_owner ON objects (kind, owner, created_at);
    CREATE INDEX objects_by_created ON objects (kind, created_at)
    """,
    # 5: output items by their ID, so replayed items and item references find the response
    # (and deployment) that made them. An index on the items' own JSON, not a table: nothing
    # more to write or keep in step, and content removal (a NULL payload) drops the entry.
    """
    CREATE INDEX events_by_item ON events (json_extract(CAST(payload AS TEXT), '$.id'))
        WHERE kind = 'item_done'
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
#: Kinds whose payload is the caller's content, removed by ``Deleted`` and by ``purge``.
_CONTENT_KINDS: Final = (_ACCEPTED, _ITEM_DONE, _STREAM_EVENT)

#: What an instance ID looks like (``uuid4().hex``); anything else in the column is not a
#: running store's (and never becomes a file name).
_INSTANCE_ID: Final = re.compile(r"[0-9a-f]{32}")

_NOT_FOUND: Final = "previous_response_not_found"
_TOO_LONG: Final = "conversation_too_long"


# --- the sqlite3 boundary --------------------------------------------------------------------


def _translate(exc: sqlite3.Error) -> StoreError:
    primary = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreUnavailableError(f"the database is busy: {exc}")
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreIntegrityError(f"the database refused the records: {exc}")
    return StoreError(f"the database failed: {exc}")


def _guarded(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``fn``, with ``sqlite3`` exceptions translated (the one boundary); so are the lock
    files' ``OSError`` and a stored payload that is not JSON (a corrupt database)."""
    try:
        return fn(*args, **kwargs)
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"the database holds a corrupt record: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"the store's instance lock failed: {exc}") from exc


def _copy_error(exc: StoreError) -> StoreError:
    """A fresh instance per waiter, so concurrent raisers do not share one traceback."""
    copy = type(exc)(exc.message, code=exc.code, status_code=exc.status_code)
    copy.__cause__ = exc.__cause__
    return copy


async def _off_loop(fn: Callable[[], _T], *, threads: bool, cancellable: bool = True) -> _T:
    """Run blocking ``fn`` (sqlite3 or lock-file calls), errors translated: in a worker thread,
    or inline on the trio thread between checkpoints (inline mode; see the module docstring).

    Inline and ``cancellable``: a cancelled caller is refused before ``fn`` starts; once it ran,
    its result is never lost to a cancellation.
    """
    if threads:
        return await trio.to_thread.run_sync(_guarded, fn)
    if cancellable:
        await trio.lowlevel.checkpoint_if_cancelled()
    result = _guarded(fn)
    await trio.lowlevel.cancel_shielded_checkpoint()
    return result


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
        # The writer checkpoints itself, in a worker thread (SQLiteStore._checkpoint): an
        # automatic checkpoint would run inside a commit, which may be on the trio thread.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("PRAGMA busy_timeout = 0")  # see _begin_immediate
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
    _begin_immediate(db)
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


# --- instances (file stores) -----------------------------------------------------------------


@attrs.define(eq=False)
class _InstanceLock:
    """A held ``flock`` on an instance's lock file: this store's own, or a dead instance's that
    recovery took over."""

    path: str
    fd: int

    def release(self, *, unlink: bool) -> None:
        try:
            if unlink:
                # Unlinked while still locked: nobody can take a lock on it in between.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)


def _lock_path(directory: str, instance: str) -> str:
    return os.path.join(directory, f"{instance}.lock")


def _claim_instance(directory: str, instance: str) -> _InstanceLock:
    """Create this store's lock file, already locked (else recovery could take the lock of a
    file that was just created, and delete it)."""
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{instance}.tmp")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = _lock_path(directory, instance)
        os.rename(temporary, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return _InstanceLock(path, fd)


def _probe_instance(directory: str, instance: str | None) -> tuple[bool, _InstanceLock | None]:
    """Whether ``instance`` is dead, and the lock this call took on its file if it has one (held
    until its responses are recovered, so no other store recovers them at the same time)."""
    if instance is None or not _INSTANCE_ID.fullmatch(instance):
        return True, None
    path = _lock_path(directory, instance)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a live store holds it (or another recovery does)
        os.close(fd)
        return False, None
    except BaseException:
        os.close(fd)
        raise
    return True, _InstanceLock(path, fd)


def _find_dead_instances(
    directory: str | None, own: str, instances: Iterable[str | None]
) -> tuple[set[str | None], list[_InstanceLock]]:
    """Which of ``instances`` are dead, and the locks taken on their files. Lock files of other
    dead instances (that left nothing unfinished) are deleted on the way."""
    others = set(instances) - {own}
    if directory is None:  # in memory: no other store can see this database
        return others, []
    dead: set[str | None] = set()
    held: list[_InstanceLock] = []
    try:
        for instance in others:
            is_dead, lock = _probe_instance(directory, instance)
            if is_dead:
                dead.add(instance)
            if lock is not None:
                held.append(lock)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            names = []
        for name in names:
            instance = name.removesuffix(".lock")
            if name == instance or instance == own or instance in others:
                continue
            _, lock = _probe_instance(directory, instance)
            if lock is not None:
                lock.release(unlink=True)
    except BaseException:
        _release_all(held, unlink=False)
        raise
    return dead, held


def _release_all(locks: Iterable[_InstanceLock], *, unlink: bool) -> None:
    for lock in locks:
        lock.release(unlink=unlink)


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
    #: ``spend_tags`` rows (key, canonical JSON value) of an ``Accepted``.
    tags: tuple[tuple[str, bytes], ...] = ()


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise StoreIntegrityError(f"a record is not JSON-serializable: {exc}") from exc


def _dumps_or_none(value: Any) -> bytes | None:
    return None if value is None else _dumps(value)


def _canonical(value: Any) -> bytes:
    """The JSON of a spend metadata value as ``spend_tags`` keeps it: equal values, equal bytes."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise StoreIntegrityError(
            f"a spend metadata value is not JSON-serializable: {exc}"
        ) from exc


def _count(container: Any, key: str) -> int:
    """A token count of a usage object; anything missing or not a count is 0."""
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _token_columns(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    return {
        "input_tokens": _count(usage, "input_tokens"),
        "output_tokens": _count(usage, "output_tokens"),
        "cached_tokens": _count(usage.get("input_tokens_details"), "cached_tokens"),
        "reasoning_tokens": _count(usage.get("output_tokens_details"), "reasoning_tokens"),
        "total_tokens": _count(usage, "total_tokens"),
    }


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
                "previous_id": record.previous_id,
                "spend_metadata": record.spend_metadata,
            }
            changes = {
                "owner": record.owner,
                "model": record.model,
                "background": int(record.background),
                "store": int(record.store),
                "metadata": _dumps(record.metadata),
                "created_at": record.created_at,
                "previous_id": record.previous_id,
                "spend_metadata": _dumps(record.spend_metadata),
            }
            tags = tuple((key, _canonical(value)) for key, value in record.spend_metadata.items())
            status = ResponseStatus.QUEUED if record.background else ResponseStatus.IN_PROGRESS
            return _Encoded(
                record, _ACCEPTED, None, _dumps(payload), changes, status.value, tags=tags
            )
        case Routed():
            payload = {
                "deployment_id": record.deployment_id,
                "provider": record.provider,
                "attempt": record.attempt,
                "upstream_id": record.upstream_id,
            }
            changes = {"deployment_id": record.deployment_id, "provider": record.provider}
            if record.upstream_id is not None:
                changes["upstream_id"] = record.upstream_id
            return _Encoded(record, _ROUTED, record.attempt, _dumps(payload), changes)
        case ItemDone():
            # The payload is the item itself; ``ordinal`` keeps the output index.
            content = _dumps_content(record.item, levels=1)
            return _Encoded(record, _ITEM_DONE, record.output_index, content, {})
        case StreamEventRecorded():
            content = _dumps_content(record.event, levels=2)
            return _Encoded(record, _STREAM_EVENT, record.sequence_number, content, {})
        case Settled():
            payload = {"usage": record.usage, "cost": record.cost, "estimated": record.estimated}
            changes = {
                "usage": _dumps_or_none(record.usage),
                "cost": record.cost,
                "estimated": int(record.estimated),
                **_token_columns(record.usage),
            }
            return _Encoded(record, _SETTLED, None, _dumps(payload), changes)
        case Ended():
            changes = {
                "completed_at": record.completed_at,
                "error": _dumps_or_none(record.error),
                "ttft": record.ttft,
                "duration": record.duration,
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
            "response": _storable(record.response, 3) if with_response else None,
            "completed_at": record.completed_at,
            "ttft": record.ttft,
            "duration": record.duration,
        }
    )


#: What stands in for upstream content the JSON encoder cannot hold.
UNRECORDED: Final = "sluicegate_unrecorded"


def _dumps_content(value: Any, *, levels: int) -> bytes:
    """Upstream content (an item, an event): a response the upstream answered is recorded and
    billed even when part of its content cannot be stored (nested deeper than the encoder
    goes, which a provider's JSON can be): that part is replaced by a stand-in that says so.
    Anything else that is not JSON is refused as every other record is."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if not _too_deep(exc):
            raise StoreIntegrityError(f"a record is not JSON-serializable: {exc}") from exc
        return _dumps(_storable(value, levels))


def _too_deep(exc: orjson.JSONEncodeError) -> bool:
    # Anything else (a Python object that is not JSON) is a bug of ours, not provider content.
    return "recursion" in str(exc).lower()


def _storable(value: Any, levels: int) -> Any:
    """``value`` with every part the encoder refuses replaced by ``{UNRECORDED: reason}``,
    keeping everything else (identities, types, statuses, usage) as it was. ``levels``: how
    far down only what fails is replaced (an item's fields: 1; an event's item's fields: 2; a
    response's output items' fields: 3); below, the whole failing value is."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if not _too_deep(exc):
            raise StoreIntegrityError(f"a record is not JSON-serializable: {exc}") from exc
        if levels > 0 and isinstance(value, dict):
            return {k: _storable(v, levels - 1) for k, v in value.items()}
        if levels > 0 and isinstance(value, list):
            return [_storable(v, levels - 1) for v in value]
        return {UNRECORDED: f"not storable as JSON ({exc})"}
    return value


# --- writing (in the writer's worker thread, or inline) --------------------------------------


@attrs.define(eq=False)
class _Pending:
    """One append (or enqueue) call waiting for its transaction; the writer fills in ``error``
    and sets ``done``."""

    encoded: tuple[_Encoded, ...]
    #: Queued by ``enqueue``: nobody waits for the verdict, so a refusal is logged.
    detached: bool = False
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None

    @property
    def weight(self) -> int:
        return len(self.encoded)

    @property
    def size(self) -> int:
        """About the bytes this append writes."""
        return sum(len(e.payload) + 64 for e in self.encoded)


@attrs.define(eq=False)
class _PurgeJob:
    """One retention transaction: the content of at most ``limit`` responses that ended before
    ``before``; the writer fills in ``purged`` (or ``error``) and sets ``done``."""

    before: float
    limit: int
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None
    purged: int = 0

    @property
    def weight(self) -> int:
        return self.limit

    @property
    def size(self) -> int:
        # A purge rewrites content of up to ``limit`` responses: never an inline commit.
        return _INLINE_BYTES + 1


@attrs.define(eq=False)
class _PutKeyJob:
    """Insert one key (its JSON columns encoded in the caller's task); the writer fills in
    ``error`` and sets ``done``."""

    row: KeyRow
    models: bytes | None
    metadata: bytes
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None

    @property
    def weight(self) -> int:
        return 1

    @property
    def size(self) -> int:
        return len(self.metadata) + 256


@attrs.define(eq=False)
class _DeleteKeyJob:
    """Mark one key deleted; the writer fills in ``deleted`` (or ``error``) and sets ``done``."""

    key_id: str
    at: float
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None
    deleted: bool = False

    @property
    def weight(self) -> int:
        return 1

    @property
    def size(self) -> int:
        return 64


@attrs.define(eq=False)
class _PutObjectJob:
    """Insert or replace one file or batch (its JSON encoded in the caller's task)."""

    row: ObjectRow
    data: bytes
    spend_metadata: bytes
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None

    @property
    def weight(self) -> int:
        return 1

    @property
    def size(self) -> int:
        return len(self.data) + len(self.spend_metadata) + 256


#: What the writer's channel carries.
_Job: TypeAlias = _Pending | _PurgeJob | _PutKeyJob | _DeleteKeyJob | _PutObjectJob


@attrs.define(eq=False)
class _RowState:
    """A response's projection while one append is applied."""

    status: str
    last_seq: int
    ended: bool
    deleted: bool
    purged: bool
    changes: dict[str, Any] = attrs.Factory(dict)

    @property
    def content_removed(self) -> bool:
        return self.deleted or self.purged


def _load_state(db: sqlite3.Connection, response_id: str) -> _RowState | None:
    row = db.execute(
        "SELECT status, last_seq, completed_at IS NOT NULL, deleted, purged FROM responses"
        " WHERE id = ?",
        (response_id,),
    ).fetchone()
    if row is None:
        return None
    return _RowState(
        status=row[0],
        last_seq=row[1],
        ended=bool(row[2]),
        deleted=bool(row[3]),
        purged=bool(row[4]),
    )


def _apply(db: sqlite3.Connection, encoded: tuple[_Encoded, ...], at: float, instance: str) -> None:
    """Write one append's records and fold them into the projection (inside a savepoint).

    Few statements on purpose (at concurrency 1 each response is its own transaction, and every
    statement and touched index page counts): a response accepted in this append gets its
    projection row in one INSERT with everything the append says of it, never INSERT + UPDATE,
    and the events go in one ``executemany`` after the rows they reference."""
    states: dict[str, _RowState] = {}
    #: Responses accepted by this append whose projection row is not inserted yet.
    new_rows: dict[str, _Encoded] = {}
    events: list[tuple[str, int, str, int | None, bytes | None, float]] = []

    def flush() -> None:
        for rid, accepted in new_rows.items():
            _insert_row(db, rid, states[rid], accepted, instance)
        new_rows.clear()
        db.executemany(_INSERT_EVENT, events)
        events.clear()

    for enc in encoded:
        rid = enc.record.response_id
        state = states.get(rid)
        if state is None and enc.kind != _ACCEPTED:
            state = _load_state(db, rid)
        payload: bytes | None = enc.payload
        if enc.kind == _ACCEPTED:
            # A second acceptance within one append is caught here; one committed before, by
            # the primary key when the row is inserted.
            if state is not None:
                raise StoreIntegrityError(f"response {rid} was already accepted")
            assert enc.status is not None
            new_rows[rid] = enc
            state = _RowState(
                status=enc.status, last_seq=-1, ended=False, deleted=False, purged=False
            )
        elif state is None:
            raise StoreIntegrityError(f"{enc.kind} for response {rid}, which was never accepted")
        else:
            if enc.kind == _ROUTED and state.status == ResponseStatus.QUEUED.value:
                state.status = ResponseStatus.IN_PROGRESS.value
            elif enc.kind == _ENDED:
                if state.ended:
                    raise StoreIntegrityError(f"response {rid} has already ended")
                assert enc.status is not None and isinstance(enc.record, Ended)
                state.ended = True
                state.status = enc.status
                if state.content_removed:
                    payload = _ended_payload(enc.record, with_response=False)
            elif enc.kind == _DELETED:
                state.deleted = True
                flush()  # the content written so far, this append's included, goes
                _remove_content(db, rid)
            elif enc.kind in _CONTENT_KINDS and state.content_removed:
                payload = None
        state.changes.update(enc.changes)
        states[rid] = state
        state.last_seq += 1
        events.append((rid, state.last_seq, enc.kind, enc.ordinal, payload, at))
    for rid, state in states.items():
        accepted = new_rows.get(rid)
        if accepted is not None:
            _insert_row(db, rid, state, accepted, instance)
        else:
            columns = _row_columns(state)
            # Column names come from _encode, never from input.
            assignments = ", ".join(f"{name} = ?" for name in columns)
            db.execute(f"UPDATE responses SET {assignments} WHERE id = ?", (*columns.values(), rid))
    db.executemany(_INSERT_EVENT, events)


_INSERT_EVENT: Final = (
    "INSERT INTO events (response_id, seq, kind, ordinal, payload, at) VALUES (?, ?, ?, ?, ?, ?)"
)


def _row_columns(state: _RowState) -> dict[str, Any]:
    return {
        **state.changes,
        "status": state.status,
        "deleted": int(state.deleted),
        "last_seq": state.last_seq,
    }


def _insert_row(
    db: sqlite3.Connection, rid: str, state: _RowState, accepted: _Encoded, instance: str
) -> None:
    columns = {**_row_columns(state), "instance": instance}
    # Column names come from _encode, never from input.
    names = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    try:
        db.execute(
            f"INSERT INTO responses (id, {names}) VALUES (?, {marks})", (rid, *columns.values())
        )
    except sqlite3.IntegrityError as exc:
        if "responses.id" not in str(exc):
            raise
        raise StoreIntegrityError(f"response {rid} was already accepted") from exc
    if accepted.tags:
        db.executemany(
            "INSERT INTO spend_tags (key, value, response_id) VALUES (?, ?, ?)",
            [(key, value, rid) for key, value in accepted.tags],
        )


def _remove_content(db: sqlite3.Connection, response_id: str) -> None:
    """Remove a response's content (``Deleted`` and ``purge``): the payloads of its content
    records and the final response of its ``Ended``. Its projection row, usage and cost stay."""
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


def _purge(db: sqlite3.Connection, before: float, limit: int) -> int:
    """Remove the content of at most ``limit`` responses that ended before ``before`` and are
    not purged yet (oldest first); returns how many."""
    ids = [
        rid
        for (rid,) in db.execute(
            "SELECT id FROM responses WHERE purged = 0 AND completed_at < ?"
            " ORDER BY completed_at LIMIT ?",
            (before, limit),
        )
    ]
    for rid in ids:
        _remove_content(db, rid)
        db.execute("UPDATE responses SET purged = 1 WHERE id = ?", (rid,))
    return len(ids)


_KEY_COLUMNS: Final = (
    "key_id, key_hash, alias, models, rpm, tpm, max_parallel_requests, max_budget, expires_at,"
    " created_at, metadata, deleted_at"
)


def _put_key(db: sqlite3.Connection, job: _PutKeyJob) -> None:
    row = job.row
    try:
        db.execute(
            f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.key_id,
                row.key_hash,
                row.alias,
                job.models,
                row.rpm,
                row.tpm,
                row.max_parallel_requests,
                row.max_budget,
                row.expires_at,
                row.created_at,
                job.metadata,
                row.deleted_at,
            ),
        )
    except sqlite3.IntegrityError as exc:
        # Our own message: the constraint's text is fine, but a message that could one day
        # carry a value of the row (the hash) is not.
        raise StoreIntegrityError(
            f"key {row.key_id} was refused: a key with this ID or secret exists"
        ) from exc


_OBJECT_COLUMNS: Final = (
    "id, kind, owner, model, deployment_id, provider, raw_id, created_at, data, spend_metadata,"
    " batch_id, settled, deleted_at"
)


def _put_object(db: sqlite3.Connection, job: _PutObjectJob) -> None:
    row = job.row
    try:
        db.execute(
            f"INSERT INTO objects ({_OBJECT_COLUMNS}) VALUES ({', '.join('?' * 13)})"
            " ON CONFLICT (id) DO UPDATE SET data = excluded.data,"
            " settled = excluded.settled, deleted_at = excluded.deleted_at",
            (
                row.id,
                row.kind,
                row.owner,
                row.model,
                row.deployment_id,
                row.provider,
                row.raw_id,
                row.created_at,
                job.data,
                job.spend_metadata,
                row.batch_id,
                int(row.settled),
                row.deleted_at,
            ),
        )
    except sqlite3.IntegrityError as exc:
        raise StoreIntegrityError(
            f"{row.kind} {row.id} was refused: deployment {row.deployment_id!r} already has an "
            "object with its upstream ID"
        ) from exc


def _object_row(row: Sequence[Any]) -> ObjectRow:
    return ObjectRow(
        id=row[0],
        kind=row[1],
        owner=row[2],
        model=row[3],
        deployment_id=row[4],
        provider=row[5],
        raw_id=row[6],
        created_at=row[7],
        data=orjson.loads(row[8]),
        spend_metadata=orjson.loads(row[9]),
        batch_id=row[10],
        settled=bool(row[11]),
        deleted_at=row[12],
    )


def _read_object(db: sqlite3.Connection, where: str, values: tuple[str, ...]) -> ObjectRow | None:
    # ``where`` is one of the callers' literals, never input.
    row = db.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE {where}", values).fetchone()
    return None if row is None else _object_row(row)


def _list_objects(
    db: sqlite3.Connection,
    kind: str,
    owner: str | None,
    after: str | None,
    limit: int,
    newest_first: bool,
    purpose: str | None,
) -> list[ObjectRow]:
    sql = f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = ? AND deleted_at IS NULL"
    args: list[Any] = [kind]
    if owner is not None:
        sql += " AND owner = ?"
        args.append(owner)
    if purpose is not None:
        sql += " AND json_extract(CAST(data AS TEXT), '$.purpose') = ?"
        args.append(purpose)
    order = "DESC" if newest_first else "ASC"
    if after is not None:
        anchor = db.execute("SELECT created_at FROM objects WHERE id = ?", (after,)).fetchone()
        if anchor is not None:
            op = "<" if newest_first else ">"
            sql += f" AND (created_at {op} ? OR (created_at = ? AND id {op} ?))"
            args += [anchor[0], anchor[0], after]
    sql += f" ORDER BY created_at {order}, id {order} LIMIT ?"
    args.append(limit)
    return [_object_row(r) for r in db.execute(sql, args).fetchall()]


def _delete_key(db: sqlite3.Connection, key_id: str, at: float) -> bool:
    cursor = db.execute(
        "UPDATE keys SET deleted_at = ? WHERE key_id = ? AND deleted_at IS NULL", (at, key_id)
    )
    return cursor.rowcount == 1


def _begin_immediate(db: sqlite3.Connection, *, wait: bool = True) -> None:
    """``BEGIN IMMEDIATE`` on the writer connection, whose own busy timeout is 0 (so an inline
    commit never waits on the trio thread). With ``wait``, a database another process is
    writing is tried again, backing off, for up to ``_BUSY_TIMEOUT`` seconds (what SQLite's busy
    handler would do); without it, or past that, the busy error is raised."""
    deadline = time.monotonic() + _BUSY_TIMEOUT
    pause = 0.001
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not (wait and busy) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # a worker thread (or a store opening): nothing else waits on it
        pause = min(pause * 2, 0.05)


def _write_batch(writer: _Conn, batch: list[_Job], instance: str, *, wait: bool = True) -> None:
    """One group-commit transaction; sets ``error`` on each append it refuses.

    ``wait=False`` (an inline commit on the trio thread): if another process holds the write
    lock, fail at once with ``sqlite3.OperationalError`` (busy) instead of waiting for it, and
    write nothing; the caller retries in a worker thread, where waiting blocks nobody."""
    at = time.time()
    with writer.lock:
        db = writer.db
        _begin_immediate(db, wait=wait)
        try:
            for job in batch:
                db.execute("SAVEPOINT job")
                try:
                    match job:
                        case _Pending():
                            _apply(db, job.encoded, at, instance)
                        case _PurgeJob():
                            job.purged = _purge(db, job.before, job.limit)
                        case _PutKeyJob():
                            _put_key(db, job)
                        case _DeleteKeyJob():
                            job.deleted = _delete_key(db, job.key_id, job.at)
                        case _PutObjectJob():
                            _put_object(db, job)
                except StoreIntegrityError as exc:
                    db.execute("ROLLBACK TO job")
                    job.error = exc
                except sqlite3.IntegrityError as exc:  # the schema's own guard (a constraint)
                    db.execute("ROLLBACK TO job")
                    job.error = _translate(exc)
                    job.error.__cause__ = exc
                except (OverflowError, ValueError, TypeError, sqlite3.InterfaceError) as exc:
                    # A value the database cannot bind (an integer past 64 bits): that job's
                    # fault alone; the writer and everyone else's appends go on.
                    db.execute("ROLLBACK TO job")
                    job.error = StoreIntegrityError(f"a value the database cannot hold: {exc}")
                    job.error.__cause__ = exc
                db.execute("RELEASE job")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


#: Commits at most this large (payload bytes, jobs) run inline on the trio thread when the
#: store otherwise uses threads (SQLiteStore._commit_inline): a few hundred microseconds.
_INLINE_BYTES: Final = 64 * 1024
_INLINE_JOBS: Final = 8
#: WAL bytes (estimated from payloads) between two checkpoints: about SQLite's default of
#: 1000 pages.
_CHECKPOINT_BYTES: Final = 4 * 1024 * 1024


# --- reading (in reader worker threads, or inline) -------------------------------------------


def _loads_or_none(blob: bytes | None) -> Any:
    return None if blob is None else orjson.loads(blob)


_ROW_COLUMNS: Final = (
    "id, owner, status, model, deployment_id, provider, background, store, metadata,"
    " created_at, completed_at, usage, cost, error, deleted, previous_id, upstream_id,"
    " spend_metadata, ttft, duration, estimated, purged"
)


def _read_row(db: sqlite3.Connection, response_id: str) -> ResponseRow | None:
    row = db.execute(
        f"SELECT {_ROW_COLUMNS} FROM responses WHERE id = ?", (response_id,)
    ).fetchone()
    return None if row is None else _response_row(row)


def _read_rows(db: sqlite3.Connection, response_ids: str) -> list[ResponseRow]:
    """The rows of the responses named by ``response_ids`` (a JSON array): one primary-key
    search each."""
    rows = db.execute(
        f"SELECT {_ROW_COLUMNS} FROM responses WHERE id IN (SELECT value FROM json_each(?))",
        (response_ids,),
    )
    return [_response_row(row) for row in rows]


def _response_row(row: Sequence[Any]) -> ResponseRow:
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
        deleted=bool(row[14]),
        previous_id=row[15],
        upstream_id=row[16],
        spend_metadata=orjson.loads(row[17]),
        ttft=row[18],
        duration=row[19],
        estimated=bool(row[20]),
        purged=bool(row[21]),
    )


def _read_payloads(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return [orjson.loads(blob) for (blob,) in db.execute(sql, params) if blob is not None]


#: Item IDs per lookup statement (SQLite's bound-parameter limit is far above this).
_ITEM_LOOKUP_BATCH: Final = 256


def _read_item_origins(db: sqlite3.Connection, item_ids: list[str]) -> dict[str, ItemOrigin]:
    # The expression and the literal kind match the index ``events_by_item`` exactly, so
    # each ID is one index search.
    found: dict[str, ItemOrigin] = {}
    for start in range(0, len(item_ids), _ITEM_LOOKUP_BATCH):
        batch = item_ids[start : start + _ITEM_LOOKUP_BATCH]
        marks = ", ".join("?" * len(batch))
        rows = db.execute(
            "SELECT json_extract(CAST(e.payload AS TEXT), '$.id'), r.id, r.owner,"
            " r.deployment_id, r.provider FROM events AS e JOIN responses AS r"
            " ON r.id = e.response_id WHERE e.kind = 'item_done'"
            f" AND json_extract(CAST(e.payload AS TEXT), '$.id') IN ({marks})"
            " AND r.deleted = 0 AND r.purged = 0",
            batch,
        )
        for item_id, response_id, owner, deployment_id, provider in rows:
            found.setdefault(
                item_id,
                ItemOrigin(
                    item_id=item_id,
                    response_id=response_id,
                    owner=owner,
                    deployment_id=deployment_id,
                    provider=provider,
                ),
            )
    return found


def _read_all(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return db.execute(sql, params).fetchall()


def _read_unfinished(db: sqlite3.Connection) -> list[tuple[str, str | None]]:
    """The unfinished responses and the instance that accepted each, oldest first."""
    # Literal statuses, as in the partial index ``responses_unfinished`` (bound parameters
    # would keep the planner from using it).
    rows = db.execute(
        "SELECT id, instance FROM responses WHERE status IN ('queued', 'in_progress')"
        " ORDER BY created_at"
    )
    return [(rid, instance) for rid, instance in rows]


def _read_key(db: sqlite3.Connection, column: str, value: str) -> KeyRow | None:
    # ``column`` is one of two literals of the callers, never input.
    row = db.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE {column} = ?", (value,)).fetchone()
    if row is None:
        return None
    return KeyRow(
        key_id=row[0],
        key_hash=row[1],
        alias=row[2],
        models=_loads_or_none(row[3]),
        rpm=row[4],
        tpm=row[5],
        max_parallel_requests=row[6],
        max_budget=row[7],
        expires_at=row[8],
        created_at=row[9],
        metadata=orjson.loads(row[10]),
        deleted_at=row[11],
    )


def _locked_call(conn: _Conn, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    with conn.lock:
        return fn(conn.db)


# -- conversations

#: The chain ending at a response, newest first, one row per link: at most ``?`` rows (the
#: caller asks for one more than it allows, to tell "too long" from "just fits"). A cycle
#: (records that name each other) ends at the depth bound too.
_CHAIN_SQL: Final = """
    WITH RECURSIVE chain (id, previous_id, deleted, purged, store, depth) AS (
        SELECT id, previous_id, deleted, purged, store, 1 FROM responses WHERE id = ?
        UNION ALL
        SELECT r.id, r.previous_id, r.deleted, r.purged, r.store, chain.depth + 1
        FROM chain JOIN responses AS r ON r.id = chain.previous_id
        WHERE chain.depth < ?
    )
    SELECT id, previous_id, deleted, purged, store FROM chain ORDER BY depth
"""
#: The events holding a chain's items (its IDs as a JSON array, to bind any number of them).
_CHAIN_EVENTS: Final = (
    " FROM events WHERE response_id IN (SELECT value FROM json_each(?)) AND kind IN (?, ?)"
)


def _not_found(response_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code=_NOT_FOUND,
    )


def _too_long(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="previous_response_id", code=_TOO_LONG)


def _read_conversation(
    db: sqlite3.Connection, response_id: str, max_turns: int, max_bytes: int
) -> list[dict[str, Any]]:
    # One read transaction: the chain, its size and its items come from one snapshot.
    db.execute("BEGIN")
    try:
        chain = db.execute(_CHAIN_SQL, (response_id, max_turns + 1)).fetchall()
        if not chain:
            raise _not_found(response_id)
        for rid, _, deleted, purged, store in chain[:max_turns]:
            if deleted or purged:
                raise _not_found(rid)
            if not store:
                raise InvalidRequestError(
                    f"Previous response with id '{rid}' was created with store=false, so it "
                    "was not kept and cannot be continued.",
                    param="previous_response_id",
                    code=_NOT_FOUND,
                )
        if len(chain) > max_turns:
            raise _too_long(
                f"The conversation is longer than {max_turns} turns, the most this gateway "
                "continues; raise general_settings.store.max_conversation_turns to allow more."
            )
        oldest_previous = chain[-1][1]
        if oldest_previous is not None:  # the walk stopped short of the limit: a missing link
            raise _not_found(oldest_previous)
        ids = orjson.dumps([row[0] for row in chain]).decode()
        kinds = (_ACCEPTED, _ITEM_DONE)
        # The stored size first, from the records' lengths: nothing is loaded if it is too big.
        (size,) = db.execute(
            "SELECT coalesce(sum(length(payload)), 0)" + _CHAIN_EVENTS, (ids, *kinds)
        ).fetchone()
        if size > max_bytes:
            raise _too_long(
                f"The conversation is larger than {max_bytes} bytes ({size} bytes stored), the "
                "most this gateway continues; raise general_settings.store.max_conversation_bytes"
                " to allow more."
            )
        inputs: dict[str, list[dict[str, Any]]] = {}
        outputs: dict[str, list[dict[str, Any]]] = {}
        rows = db.execute(
            "SELECT response_id, kind, payload" + _CHAIN_EVENTS + " ORDER BY ordinal, seq",
            (ids, *kinds),
        )
        for rid, kind, payload in rows:
            if payload is None:
                continue
            if kind == _ACCEPTED:
                inputs[rid] = orjson.loads(payload)["input_items"]
            else:
                outputs.setdefault(rid, []).append(orjson.loads(payload))
    finally:
        db.execute("COMMIT")  # a read transaction: this only ends the snapshot
    items: list[dict[str, Any]] = []
    for rid, *_ in reversed(chain):
        items += inputs.get(rid, [])
        items += outputs.get(rid, [])
    return items


# -- spend

#: Spend totals' group keys; ``day`` is the UTC date of creation. The unary ``+`` makes a key
#: an expression, not a column: otherwise the planner (having no statistics) walks a whole index
#: in key order to spare the GROUP BY a sort, instead of searching the filter's index.
_GROUP_KEYS: Final[dict[str, str]] = {
    "owner": "+r.owner",
    "model": "+r.model",
    "day": "strftime('%Y-%m-%d', r.created_at, 'unixepoch')",
}

_SPEND_LOG_COLUMNS: Final = (
    "r.id, r.owner, r.model, r.deployment_id, r.provider, r.status, r.input_tokens,"
    " r.output_tokens, r.cached_tokens, r.reasoning_tokens, r.total_tokens, r.cost, r.estimated,"
    " r.ttft, r.duration, r.created_at, r.completed_at, r.spend_metadata"
)


def _spend_from(where: SpendFilter) -> tuple[str, list[Any]]:
    """``FROM ... WHERE ...`` selecting the ``responses AS r`` that match ``where``.

    A metadata filter drives the query from ``spend_tags``' primary key (CROSS JOIN fixes that
    order: the planner could otherwise walk an index of ``responses`` in creation order and test
    every row); each further key is one more primary-key search.
    """
    tags = sorted((where.metadata or {}).items())
    params: list[Any] = []
    clauses: list[str] = []
    if tags:
        first_key, first_value = tags[0]
        source = "spend_tags AS t CROSS JOIN responses AS r ON r.id = t.response_id"
        clauses.append("t.key = ? AND t.value = ?")
        params += [first_key, _canonical(first_value)]
        for key, value in tags[1:]:
            clauses.append(
                "r.id IN (SELECT response_id FROM spend_tags WHERE key = ? AND value = ?)"
            )
            params += [key, _canonical(value)]
    else:
        source = "responses AS r"
    for clause, value in (
        ("r.owner = ?", where.owner),
        ("r.model = ?", where.model),
        ("r.created_at >= ?", where.start),
        ("r.created_at < ?", where.end),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    sql = f" FROM {source}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    return sql, params


def _spend_logs_query(
    where: SpendFilter, *, limit: int, newest_first: bool
) -> tuple[str, tuple[Any, ...]]:
    """The SQL of :meth:`SQLiteStore.spend_logs` (shared with the query-plan test). Ties of
    creation time go by insertion order (``rowid``: the indexes on creation time end with it,
    so the order costs no sort)."""
    source, params = _spend_from(where)
    direction = "DESC" if newest_first else "ASC"
    sql = (
        f"SELECT {_SPEND_LOG_COLUMNS}{source}"
        f" ORDER BY r.created_at {direction}, r.rowid {direction} LIMIT ?"
    )
    return sql, (*params, limit)


def _spend_totals_query(where: SpendFilter, *, group_by: SpendGroup) -> tuple[str, tuple[Any, ...]]:
    """The SQL of :meth:`SQLiteStore.spend_totals` (shared with the query-plan test)."""
    try:
        key = _GROUP_KEYS[group_by]
    except KeyError:
        raise ValueError(
            f"group_by must be one of {sorted(_GROUP_KEYS)}, not {group_by!r}"
        ) from None
    source, params = _spend_from(where)
    sql = (
        f"SELECT {key} AS spend_key, count(*), sum(r.input_tokens), sum(r.output_tokens),"
        f" total(r.cost){source} GROUP BY spend_key ORDER BY spend_key"
    )
    return sql, tuple(params)


def _spend_log(row: tuple[Any, ...]) -> SpendLog:
    return SpendLog(
        response_id=row[0],
        owner=row[1],
        model=row[2],
        deployment_id=row[3],
        provider=row[4],
        status=row[5],
        input_tokens=row[6],
        output_tokens=row[7],
        cached_tokens=row[8],
        reasoning_tokens=row[9],
        total_tokens=row[10],
        cost=row[11],
        estimated=bool(row[12]),
        ttft=row[13],
        duration=row[14],
        created_at=row[15],
        completed_at=row[16],
        spend_metadata=orjson.loads(row[17]),
    )


def _spend_total(row: tuple[Any, ...]) -> SpendTotal:
    return SpendTotal(
        key=row[0],
        requests=row[1],
        input_tokens=int(row[2]),
        output_tokens=int(row[3]),
        cost=row[4],
    )


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
    #: Payload bytes committed since the last checkpoint.
    _wal_bytes: int = 0
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
        pending = _Pending(tuple(_encode(record) for record in records))
        await self._submit(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def enqueue(self, records: Sequence[Record]) -> None:
        """See :meth:`sluicegate.store.Store.enqueue`."""
        if not records:
            await trio.lowlevel.checkpoint()
            return
        await self._submit(_Pending(tuple(_encode(record) for record in records), detached=True))

    async def _submit(self, job: _Job) -> None:
        """Put ``job`` on the writer's channel (waiting for room)."""
        records = job.weight if isinstance(job, _Pending) else 0
        self._pending += records
        try:
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

    async def _commit_inline(self, write: Callable[..., None]) -> None:
        """A small transaction on the trio thread: a worker thread's round trip costs more CPU
        than the commit itself (~250 µs against ~200 µs here, issue 3's measurements), and at
        concurrency 1 every response pays it. Bounded: only small batches come here, the
        writer never checkpoints inside a commit, and a database locked by another process
        sends the commit to a worker thread to wait there."""
        try:
            _guarded(write, wait=False)
        except StoreUnavailableError:
            await self._off_loop(write, cancellable=False)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _checkpoint(self) -> None:
        """Copy the WAL back into the database (PASSIVE: readers are never blocked), in a
        worker thread; a failed checkpoint is retried after the next commits."""
        self._wal_bytes = 0
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
        try:
            # Not abandoned on cancel: the transaction finishes and its waiters hear of it.
            if self._threads and size <= _INLINE_BYTES and len(batch) <= _INLINE_JOBS:
                await self._commit_inline(write)
            else:
                await self._off_loop(write, cancellable=False)
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
        self._wal_bytes += size
        if self._wal_bytes >= _CHECKPOINT_BYTES and self._threads:
            await self._checkpoint()
        written = sum(
            len(job.encoded) for job in batch if isinstance(job, _Pending) and job.error is None
        )
        self._records_appended += written
        self._largest_batch = max(self._largest_batch, written)
        for job in batch:
            self._resolve(job, job.error)

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
                _read_payloads,
                sql="SELECT payload FROM events WHERE response_id = ? AND kind = ?"
                " AND ordinal > ? ORDER BY ordinal, seq LIMIT ?",
                params=(response_id, _STREAM_EVENT, after, limit),
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
