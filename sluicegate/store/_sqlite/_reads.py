"""Reads (in reader worker threads, or inline), as SQLite runs them: projection rows, records'
payloads, item origins and conversations (what the rows make is ``.._sql._decode``'s)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import orjson

from .._sql._decode import (
    _CHAIN_SQL,
    _ROW_COLUMNS,
    _conversation,
    _final_response,
    _input_items,
    _item_origins,
    _output_items,
    _response_row,
    _snapshot,
    _stream_events,
)
from .._sql._layout import _ENDED, _ITEM_DONE, _MAX_SEQ, _SEQ_BITS, _STREAM_EVENT
from .._sql._store import _Reads
from ._keys import _read_object, _read_upstream_object
from ._spend import _SQLITE

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterator

    from .._records import ItemOrigin, ResponseRow


def _read_row(db: sqlite3.Connection, response_id: str) -> ResponseRow | None:
    row = db.execute(
        f"SELECT {_ROW_COLUMNS} FROM responses WHERE id = ?", (response_id,)
    ).fetchone()
    return None if row is None else _response_row(row)


def _read_rows(db: sqlite3.Connection, response_ids: list[str]) -> list[ResponseRow]:
    """The rows of the responses named: one search of the ID's index each."""
    rows = db.execute(
        f"SELECT {_ROW_COLUMNS} FROM responses WHERE id IN (SELECT value FROM json_each(?))",
        (orjson.dumps(response_ids).decode(),),
    )
    return [_response_row(row) for row in rows]


#: A response's log rows holding a kind of a set of bits (``?``), by its ID (one search of the
#: ID's index, then one range of log keys).
_ROWS_OF: Final = (
    "SELECT l.key, l.body FROM responses AS r CROSS JOIN log AS l"
    f" ON l.key BETWEEN r.ref << {_SEQ_BITS} AND (r.ref << {_SEQ_BITS}) | {_MAX_SEQ}"
    " WHERE r.id = ? AND l.kinds & ?"
)


def _read_input_items(db: sqlite3.Connection, response_id: str) -> list[dict[str, Any]]:
    # Accepted is a response's first record: the first of its first row.
    row = db.execute(
        "SELECT l.body FROM responses AS r CROSS JOIN log AS l"
        f" ON l.key = r.ref << {_SEQ_BITS} WHERE r.id = ?",
        (response_id,),
    ).fetchone()
    return _input_items(response_id, None if row is None else row[0])


def _read_output_items(db: sqlite3.Connection, response_id: str) -> list[dict[str, Any]]:
    return _output_items(db.execute(_ROWS_OF, (response_id, 1 << _ITEM_DONE)))


def _read_stream_events(
    db: sqlite3.Connection, response_id: str, after: int, limit: int
) -> list[dict[str, Any]]:
    # Only the rows holding an event past ``after`` are read (a resumed stream reads on from
    # where it stopped, not from its start).
    rows = db.execute(f"{_ROWS_OF} AND l.last_event > ?", (response_id, 1 << _STREAM_EVENT, after))
    return _stream_events(rows, after, limit)


def _read_final_response(db: sqlite3.Connection, response_id: str) -> dict[str, Any] | None:
    with _snapshot(db, "BEGIN"):
        return _final_response(
            response_id,
            db.execute(_ROWS_OF, (response_id, 1 << _ENDED)).fetchall(),
            # The rows holding them, and those between: from the row whose run covers the
            # first (the last one starting at or before it) to the one holding the last.
            lambda first, last: db.execute(
                "SELECT key, body FROM log"
                " WHERE key BETWEEN (SELECT max(key) FROM log WHERE key <= ?) AND ?",
                (first, last),
            ).fetchall(),
        )


#: Item IDs per lookup statement (SQLite's bound-parameter limit is far above this).
_ITEM_LOOKUP_BATCH: Final = 256


def _item_origins_sql(count: int) -> str:
    """The lookup of ``count`` item IDs: each one search of the primary key of ``items``."""
    marks = ", ".join("?" * count)
    return (
        "SELECT i.item_id, r.id, r.owner, r.deployment_id, r.provider FROM items AS i"
        f" CROSS JOIN responses AS r ON r.ref = i.response_ref WHERE i.item_id IN ({marks})"
        " AND r.deleted = 0 AND r.purged = 0 ORDER BY i.response_ref"
    )


def _read_item_origins(db: sqlite3.Connection, item_ids: list[str]) -> dict[str, ItemOrigin]:
    found: dict[str, ItemOrigin] = {}
    for start in range(0, len(item_ids), _ITEM_LOOKUP_BATCH):
        batch = item_ids[start : start + _ITEM_LOOKUP_BATCH]
        _item_origins(db.execute(_item_origins_sql(len(batch)), batch), found)
    return found


def _read_all(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return db.execute(sql, params).fetchall()


# -- conversations

#: The log rows of a chain's responses (its refs as a JSON array, to bind any number of them).
_CHAIN_ROWS: Final = (
    " FROM json_each(?) AS c CROSS JOIN log AS l"
    f" ON l.key BETWEEN c.value << {_SEQ_BITS} AND (c.value << {_SEQ_BITS}) | {_MAX_SEQ}"
)


def _read_conversation(
    db: sqlite3.Connection, response_id: str, max_turns: int, max_bytes: int
) -> list[dict[str, Any]]:
    def chain(rid: str, depth: int) -> list[Any]:
        return db.execute(_CHAIN_SQL.format("?"), (rid, depth)).fetchall()

    def size(refs: list[int]) -> int:
        # The stored size first, from the rows' sizes: nothing is loaded if it is too big.
        sql = "SELECT coalesce(sum(l.content_size), 0)" + _CHAIN_ROWS
        (total,) = db.execute(sql, (orjson.dumps(refs).decode(),)).fetchone()
        return int(total)

    def content(refs: list[int]) -> Iterator[Any]:
        sql = "SELECT l.key, l.body" + _CHAIN_ROWS + " WHERE l.content_size > 0"
        return db.execute(sql, (orjson.dumps(refs).decode(),))

    with _snapshot(db, "BEGIN"):
        return _conversation(
            response_id, max_turns, max_bytes, chain=chain, size=size, content=content
        )


_SQLITE_READS: Final = _Reads(
    row=_read_row,
    rows=_read_rows,
    final_response=_read_final_response,
    input_items=_read_input_items,
    output_items=_read_output_items,
    item_origins=_read_item_origins,
    stream_events=_read_stream_events,
    conversation=_read_conversation,
    object=_read_object,
    upstream_object=_read_upstream_object,
    dialect=_SQLITE,
)
