"""Reads (on pool connections, in worker threads), as PostgreSQL runs them: projection rows,
records' payloads, item origins, conversations, spend, keys and objects (what the rows make is
``.._sql._decode``'s)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .._sql._decode import (
    _CHAIN_SQL,
    _OBJECT_COLUMNS,
    _ROW_COLUMNS,
    _conversation,
    _final_response,
    _input_items,
    _item_origins,
    _object_row,
    _output_items,
    _response_row,
    _snapshot,
    _stream_events,
)
from .._sql._layout import _ENDED, _ITEM_DONE, _MAX_SEQ, _SEQ_BITS, _STREAM_EVENT
from .._sql._store import _Reads
from ._schema import _POSTGRES

if TYPE_CHECKING:
    import psycopg

    from .._interface import ObjectRow
    from .._records import ItemOrigin, ResponseRow

#: A read that needs one snapshot: its statements see the same committed state.
_SNAPSHOT: Final = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

#: A response's log rows, by its ID: one search of the ID's index, then one range of log keys.
_RESPONSE_LOG: Final = (
    "SELECT l.key, l.body FROM responses AS r JOIN log AS l"
    f" ON l.key BETWEEN r.ref << {_SEQ_BITS} AND (r.ref << {_SEQ_BITS}) | {_MAX_SEQ}"
    " WHERE r.id = %s"
)
#: Those holding a kind of a set of bits.
_ROWS_OF: Final = f"{_RESPONSE_LOG} AND (l.kinds & %s) <> 0"
#: The log rows of a chain's responses (their refs, an array).
_CHAIN_ROWS: Final = (
    " FROM unnest(%s::bigint[]) AS c (ref) JOIN log AS l"
    f" ON l.key BETWEEN c.ref << {_SEQ_BITS} AND (c.ref << {_SEQ_BITS}) | {_MAX_SEQ}"
)


def _read_row(conn: psycopg.Connection[Any], response_id: str) -> ResponseRow | None:
    row = conn.execute(
        f"SELECT {_ROW_COLUMNS} FROM responses WHERE id = %s", (response_id,)
    ).fetchone()
    return None if row is None else _response_row(row)


def _read_rows(conn: psycopg.Connection[Any], response_ids: list[str]) -> list[ResponseRow]:
    rows = conn.execute(
        f"SELECT {_ROW_COLUMNS} FROM responses WHERE id = ANY(%s)", (response_ids,)
    ).fetchall()
    return [_response_row(row) for row in rows]


def _read_input_items(conn: psycopg.Connection[Any], response_id: str) -> list[dict[str, Any]]:
    # Accepted is a response's first record: the first of its first row.
    row = conn.execute(
        "SELECT l.body FROM responses AS r JOIN log AS l"
        f" ON l.key = r.ref << {_SEQ_BITS} WHERE r.id = %s",
        (response_id,),
    ).fetchone()
    return _input_items(response_id, None if row is None else row[0])


def _read_output_items(conn: psycopg.Connection[Any], response_id: str) -> list[dict[str, Any]]:
    return _output_items(conn.execute(_ROWS_OF, (response_id, 1 << _ITEM_DONE)).fetchall())


def _read_stream_events(
    conn: psycopg.Connection[Any], response_id: str, after: int, limit: int
) -> list[dict[str, Any]]:
    # Only the rows holding an event past ``after`` are read.
    rows = conn.execute(
        f"{_ROWS_OF} AND l.last_event > %s", (response_id, 1 << _STREAM_EVENT, after)
    ).fetchall()
    return _stream_events(rows, after, limit)


def _read_final_response(conn: psycopg.Connection[Any], response_id: str) -> dict[str, Any] | None:
    def more(first: int, last: int) -> list[Any]:
        # From the row whose run covers the first to the one holding the last.
        return conn.execute(
            "SELECT key, body FROM log"
            " WHERE key BETWEEN (SELECT max(key) FROM log WHERE key <= %s) AND %s",
            (first, last),
        ).fetchall()

    with _snapshot(conn, _SNAPSHOT):
        rows = conn.execute(_ROWS_OF, (response_id, 1 << _ENDED)).fetchall()
        return _final_response(response_id, rows, more)


def _read_item_origins(conn: psycopg.Connection[Any], item_ids: list[str]) -> dict[str, ItemOrigin]:
    found: dict[str, ItemOrigin] = {}
    rows = conn.execute(
        "SELECT i.item_id, r.id, r.owner, r.deployment_id, r.provider FROM items AS i"
        " JOIN responses AS r ON r.ref = i.response_ref WHERE i.item_id = ANY(%s)"
        " AND NOT r.deleted AND NOT r.purged ORDER BY i.response_ref",
        (item_ids,),
    ).fetchall()
    _item_origins(rows, found)
    return found


def _read_conversation(
    conn: psycopg.Connection[Any], response_id: str, max_turns: int, max_bytes: int
) -> list[dict[str, Any]]:
    def chain(rid: str, depth: int) -> list[Any]:
        return conn.execute(_CHAIN_SQL.format("%s"), (rid, depth)).fetchall()

    def size(refs: list[int]) -> int:
        # The stored size first, from the rows' sizes: nothing is loaded if it is too big.
        row = conn.execute(
            "SELECT coalesce(sum(l.content_size), 0)" + _CHAIN_ROWS, (refs,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def content(refs: list[int]) -> list[Any]:
        return conn.execute(
            "SELECT l.key, l.body" + _CHAIN_ROWS + " WHERE l.content_size > 0", (refs,)
        ).fetchall()

    with _snapshot(conn, _SNAPSHOT):
        return _conversation(
            response_id, max_turns, max_bytes, chain=chain, size=size, content=content
        )


def _read_objects(conn: psycopg.Connection[Any], where: str, values: tuple[Any, ...]) -> list[Any]:
    # ``where`` is one of the callers' literals, never input.
    return conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE {where}", values).fetchall()


def _read_object(conn: psycopg.Connection[Any], object_id: str) -> ObjectRow | None:
    rows = _read_objects(conn, "id = %s", (object_id,))
    return _object_row(rows[0]) if rows else None


def _read_upstream_object(
    conn: psycopg.Connection[Any], deployment_id: str, raw_id: str
) -> ObjectRow | None:
    rows = _read_objects(conn, "deployment_id = %s AND raw_id = %s", (deployment_id, raw_id))
    return _object_row(rows[0]) if rows else None


_POSTGRES_READS: Final = _Reads(
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
    dialect=_POSTGRES,
)
