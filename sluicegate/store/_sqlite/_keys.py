"""The proxy's virtual keys, and the files and batches made through the gateway (objects): the
SQL that writes them (in the writer's transaction) and their reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._sql._decode import (
    _KEY_COLUMNS,
    _OBJECT_COLUMNS,
    _key_values,
    _object_row,
    _object_values,
)

if TYPE_CHECKING:
    import sqlite3

    from .._interface import ObjectRow
    from .._sql._jobs import _PutKeyJob, _PutObjectJob

_INSERT_KEY: Final = f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({', '.join('?' * 12)})"
#: A fresher view of an object replaces the row with its ID; another row holding its deployment
#: and raw ID is a conflict (``objects_by_upstream``).
_PUT_OBJECT: Final = (
    f"INSERT INTO objects ({_OBJECT_COLUMNS}) VALUES ({', '.join('?' * 13)})"
    " ON CONFLICT (id) DO UPDATE SET data = excluded.data,"
    " settled = excluded.settled, deleted_at = excluded.deleted_at"
)


def _put_key(db: sqlite3.Connection, job: _PutKeyJob) -> None:
    db.execute(_INSERT_KEY, _key_values(job.row, job.models, job.metadata))


def _put_object(db: sqlite3.Connection, job: _PutObjectJob) -> None:
    db.execute(_PUT_OBJECT, _object_values(job.row, job.data, job.spend_metadata))


def _delete_key(db: sqlite3.Connection, key_id: str, at: float) -> bool:
    cursor = db.execute(
        "UPDATE keys SET deleted_at = ? WHERE key_id = ? AND deleted_at IS NULL", (at, key_id)
    )
    return cursor.rowcount == 1


def _read_object(db: sqlite3.Connection, object_id: str) -> ObjectRow | None:
    row = db.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE id = ?", (object_id,)).fetchone()
    return None if row is None else _object_row(row)


def _read_upstream_object(
    db: sqlite3.Connection, deployment_id: str, raw_id: str
) -> ObjectRow | None:
    row = db.execute(
        f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE deployment_id = ? AND raw_id = ?",
        (deployment_id, raw_id),
    ).fetchone()
    return None if row is None else _object_row(row)
