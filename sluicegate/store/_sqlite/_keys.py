"""The proxy's virtual keys, and the files and batches made through the gateway (objects): their
writer jobs, the SQL that writes them, and their reads."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson
import trio

from ...errors import StoreError, StoreIntegrityError
from .._interface import (
    KeyRow,
    ObjectRow,
)
from ._boundary import _loads_or_none

if TYPE_CHECKING:
    from collections.abc import Sequence


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
