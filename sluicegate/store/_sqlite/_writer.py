"""The writer's side: a folded batch of appends (``.._sql._fold``) as SQLite writes it, the jobs'
statements, and the group-commit transaction (see the package docstring)."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson

from ...errors import StoreError, StoreIntegrityError
from .._sql._fold import _ROW_COLUMNS, _STATE_COLUMNS, _Fold, _remove_content, _write_jobs
from .._sql._jobs import _Job as _Job
from .._sql._jobs import _Pending as _Pending
from .._sql._jobs import _PutKeyJob, _PutObjectJob
from .._sql._layout import _MAX_REF
from ._boundary import _begin_immediate, _Conn, _translate
from ._keys import _delete_key, _put_key, _put_object
from ._retention import _purge
from ._spend import _SQLITE

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: Payload bytes a log row holds at most, but for a record larger than that alone (a quarter
#: of a page). SQLite starts a new page for a row that does not fit in the last one, so large
#: rows leave pages part empty: one row for all of a response (some 1.6 KB with the recording
#: benchmark's 1.2 KB Response) left a fifth of every page of the log unused.
_ROW_BYTES: Final = 1024

_INSERT_ROW: Final = (
    f"INSERT INTO responses ({', '.join(_ROW_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_ROW_COLUMNS))})"
)
_INSERT_LOG: Final = (
    "INSERT INTO log (key, kinds, content_size, last_event, at, body) VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_TAG: Final = "INSERT INTO spend_tags (key, value, response_ref) VALUES (?, ?, ?)"
_INSERT_ITEM: Final = "INSERT OR IGNORE INTO items (item_id, response_ref) VALUES (?, ?)"
_STATE: Final = f"SELECT {_STATE_COLUMNS} FROM responses"

#: What refuses one job alone: a value the database cannot bind (an integer past 64 bits).
_UNHOLDABLE: Final = (sqlite3.InterfaceError, OverflowError, ValueError, TypeError)


@attrs.define(eq=False)
class _SQLiteTransaction:
    """The writes of an open ``BEGIN IMMEDIATE`` transaction (``.._sql._fold._Transaction``):
    the writer holds the write lock, so what it read stays as it read it."""

    db: sqlite3.Connection
    instance: str
    #: Waits for another process's write lock (see :func:`._boundary._begin_immediate`).
    wait: bool

    def execute(self, sql: str) -> None:
        self.db.execute(sql)

    def restart(self) -> None:
        self.db.execute("ROLLBACK")
        _begin_immediate(self.db, wait=self.wait)

    def flush(self) -> None:
        pass  # every statement ran already

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def states(self, response_ids: list[str]) -> Iterable[Sequence[Any]]:
        if len(response_ids) == 1:
            return self.db.execute(f"{_STATE} WHERE id = ?", response_ids)
        return self.db.execute(
            f"{_STATE} WHERE id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(response_ids).decode(),),
        )

    def write(self, fold: _Fold, at: float) -> None:
        """Write what was folded in: new rows first (their refs key the rest), then the
        updated rows, the log rows and the items."""
        db = self.db
        new, updated = fold.written()
        if new:
            # The first row takes the next ref (a NULL key does); the others the ones after it,
            # which are free: the writer holds the write lock.
            rows = [fold.new_row(state, self.instance) for state in new]
            ref = db.execute(_INSERT_ROW, rows[0]).lastrowid
            assert ref is not None
            if ref + len(new) - 1 > _MAX_REF:
                raise StoreError("the database holds as many responses as it can")
            for offset, (state, row) in enumerate(zip(new, rows, strict=True)):
                state.ref = row[0] = ref + offset
            if len(rows) > 1:
                db.executemany(_INSERT_ROW, rows[1:])
            tags = fold.tags(new)
            if tags:
                db.executemany(_INSERT_TAG, tags)
        for state in updated:
            assert state.ref is not None
            if state.remove_content:
                _remove_content(db, _SQLITE, state.ref)
            columns = state.columns()
            # Column names come from _encode, never from input.
            assignments = ", ".join(f"{name} = ?" for name in columns)
            db.execute(
                f"UPDATE responses SET {assignments} WHERE ref = ?",
                (*columns.values(), state.ref),
            )
        states = new + updated
        db.executemany(_INSERT_LOG, fold.log_rows(states, at, _ROW_BYTES))
        items = fold.items(states)
        if items:
            db.executemany(_INSERT_ITEM, items)

    def purge(self, before: float, limit: int) -> int:
        return _purge(self.db, before, limit)

    def put_key(self, job: _PutKeyJob) -> None:
        _put_key(self.db, job)

    def delete_key(self, key_id: str, at: float) -> bool:
        return _delete_key(self.db, key_id, at)

    def put_object(self, job: _PutObjectJob) -> None:
        _put_object(self.db, job)

    def refusal(self, exc: Exception, job: _Job | None) -> StoreError | None:
        if isinstance(exc, sqlite3.IntegrityError):  # the schema's own guard (a constraint)
            if isinstance(job, _PutKeyJob | _PutObjectJob):
                return job.conflict()
            return _translate(exc)
        if isinstance(exc, _UNHOLDABLE):
            return StoreIntegrityError(f"a value the database cannot hold: {exc}")
        return None


def _write_batch(writer: _Conn, batch: list[_Job], instance: str, *, wait: bool = True) -> int:
    """One group-commit transaction (``.._sql._fold._write_jobs``), committed; sets ``error`` on
    each job it refuses. Returns the WAL file's size after the commit.

    ``wait=False`` (an inline commit on the trio thread): if another process holds the write
    lock, fail at once with ``sqlite3.OperationalError`` (busy) instead of waiting for it, and
    write nothing; the caller retries in a worker thread, where waiting blocks nobody."""
    at = time.time()
    with writer.lock:
        db = writer.db
        _begin_immediate(db, wait=wait)
        try:
            _write_jobs(_SQLiteTransaction(db, instance, wait), batch, at)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return writer.wal_size()


def _checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
