"""The ``sqlite3`` boundary: its exceptions translated (:func:`_guarded`, the one place), the
connections and the lock that lends each to one thread at a time, and running SQL in a worker
thread or inline on the trio thread (:func:`_off_loop`)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

import attrs
import orjson
import trio

from ...errors import StoreError, StoreIntegrityError, StoreUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable

_T = TypeVar("_T")
_P = ParamSpec("_P")


#: How long a connection waits for another process's lock before failing as busy (seconds).
_BUSY_TIMEOUT: Final = 5.0

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
    #: The writer's WAL file (None in memory).
    wal: str | None = None

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def wal_size(self) -> int:
        """The WAL file's size: what it holds since it was last reset (the writer's
        ``journal_size_limit`` truncates it then)."""
        if self.wal is None:
            return 0
        try:
            return os.stat(self.wal).st_size
        except OSError:  # not there (yet): nothing to checkpoint
            return 0


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


def _open_reader(target: str) -> _Conn:
    db = _connect(target)
    try:
        db.execute("PRAGMA query_only = ON")
    except BaseException:
        db.close()
        raise
    return _Conn(db)


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


#: Commits at most this large (payload bytes, jobs) run inline on the trio thread when the
#: store otherwise uses threads (SQLiteStore._commit_inline): a few hundred microseconds. A
#: batch of appends is written as one fold (``_writer._Fold``), so 32 of them (16 responses'
#: acceptances and ends) take about as long as 8 did one by one (~0.6 ms, measured with the
#: recording benchmark), and concurrency 16 saves the thread's round trip (a third of its CPU).
_INLINE_BYTES: Final = 64 * 1024
_INLINE_JOBS: Final = 32
#: WAL bytes (the WAL file's growth) between two checkpoints, so the most the WAL holds.
#: Measured, not estimated from payloads: a commit writes whole pages (of the table and of each
#: index it touches), so a small transaction writes several times its payload. Four times
#: SQLite's default of 1000 pages: a checkpoint writes each page it copies once, however often
#: the WAL holds it, and fsyncs, so fewer of them cost less CPU (measured with the recording
#: benchmark: ~40 us per response at concurrency 1 with 4 MB, within noise with 16 MB).
_CHECKPOINT_BYTES: Final = 16 * 1024 * 1024


def _locked_call(conn: _Conn, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    with conn.lock:
        return fn(conn.db)
