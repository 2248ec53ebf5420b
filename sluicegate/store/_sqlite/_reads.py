"""Reads (in reader worker threads, or inline): projection rows, records' payloads, item origins
and conversations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import orjson

from ..._types import ResponseStatus
from ...errors import InvalidRequestError, StoreError
from .._records import (
    ItemOrigin,
    ResponseRow,
)
from ._boundary import _loads_or_none
from ._schema import (
    _ACCEPTED,
    _ENDED,
    _ITEM_DONE,
    _MAX_SEQ,
    _SEQ_BITS,
    _STREAM_EVENT,
    _log_key,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable, Iterator, Sequence

_NOT_FOUND: Final = "previous_response_not_found"
_TOO_LONG: Final = "conversation_too_long"

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
    """The rows of the responses named by ``response_ids`` (a JSON array): one search of the
    ID's index each."""
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


#: A response's log rows holding a kind of a set of bits (``?``), by its ID (one search of the
#: ID's index, then one range of log keys).
_ROWS_OF: Final = (
    "SELECT l.key, l.body FROM responses AS r CROSS JOIN log AS l"
    f" ON l.key BETWEEN r.ref << {_SEQ_BITS} AND (r.ref << {_SEQ_BITS}) | {_MAX_SEQ}"
    " WHERE r.id = ? AND l.kinds & ?"
)


def _records(rows: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, int, Any, Any]]:
    """The records of log rows: where each is (its response's ``ref`` and its sequence number, as
    a log key), kind, ordinal and payload (None once its content is removed)."""
    for key, body in rows:
        for offset, (kind, ordinal, payload) in enumerate(orjson.loads(body)):
            yield key + offset, kind, ordinal, payload


def _read_input_items(db: sqlite3.Connection, response_id: str) -> list[dict[str, Any]]:
    # Accepted is a response's first record: the first of its first row.
    row = db.execute(
        "SELECT l.body FROM responses AS r CROSS JOIN log AS l"
        f" ON l.key = r.ref << {_SEQ_BITS} WHERE r.id = ?",
        (response_id,),
    ).fetchone()
    if row is None:
        return []
    kind, _, accepted = orjson.loads(row[0])[0]
    if kind != _ACCEPTED:
        raise StoreError(f"the database holds a corrupt record: {response_id} starts with {kind}")
    return [] if accepted is None else accepted["input_items"]


def _read_output_items(db: sqlite3.Connection, response_id: str) -> list[dict[str, Any]]:
    rows = db.execute(_ROWS_OF, (response_id, 1 << _ITEM_DONE))
    items = [
        (ordinal, seq, payload)
        for seq, kind, ordinal, payload in _records(rows)
        if kind == _ITEM_DONE and payload is not None
    ]
    items.sort(key=_by_ordinal)
    return [payload for _, _, payload in items]


def _by_ordinal(entry: tuple[int, int, Any]) -> tuple[int, int]:
    """Output items and stream events are read in their own order: ordinal, then as recorded."""
    return entry[0], entry[1]


def _read_stream_events(
    db: sqlite3.Connection, response_id: str, after: int, limit: int
) -> list[dict[str, Any]]:
    # Only the rows holding an event past ``after`` are read (a resumed stream reads on from
    # where it stopped, not from its start).
    rows = db.execute(f"{_ROWS_OF} AND l.last_event > ?", (response_id, 1 << _STREAM_EVENT, after))
    events = [
        (ordinal, seq, payload)
        for seq, kind, ordinal, payload in _records(rows)
        if kind == _STREAM_EVENT and payload is not None and ordinal > after
    ]
    events.sort(key=_by_ordinal)
    return [payload for _, _, payload in events[:limit]]


def _read_final_response(db: sqlite3.Connection, response_id: str) -> dict[str, Any] | None:
    """The final response of an ``Ended``, with what :func:`._encode._encode_ended` left out
    put back: its ``id`` (``same_id``), the output items ``ItemDone`` records hold
    (``output_refs``, their sequence numbers) and the usage a ``Settled`` holds
    (``usage_ref``)."""
    # One read transaction: the end and the records it refers to come from one snapshot (a
    # removal of the content in between would leave the references dangling).
    db.execute("BEGIN")
    try:
        rows = db.execute(_ROWS_OF, (response_id, 1 << _ENDED)).fetchall()
        ended: dict[str, Any] | None = None
        ref = 0
        #: Payloads by sequence number: those of the end's row first, which may hold what it
        #: refers to (a row holds a run of one append's records, up to ``_writer._ROW_BYTES``).
        payloads: dict[int, Any] = {}
        for at, kind, _, payload in _records(rows):
            payloads[at & _MAX_SEQ] = payload
            if kind == _ENDED:
                ended, ref = payload, at >> _SEQ_BITS
        if ended is None:
            return None
        response: dict[str, Any] | None = ended["response"]
        if response is None:
            return None
        if ended.get("same_id"):
            response["id"] = response_id
        refs: list[int | None] = ended.get("output_refs") or []
        usage_ref: int | None = ended.get("usage_ref")
        wanted = [seq for seq in (*refs, usage_ref) if seq is not None]
        elsewhere = [seq for seq in wanted if seq not in payloads]
        if elsewhere:
            # The rows holding them, and those between: from the row whose run covers the
            # first (the last one starting at or before it) to the one holding the last.
            first, last = _log_key(ref, min(elsewhere)), _log_key(ref, max(elsewhere))
            more = db.execute(
                "SELECT key, body FROM log"
                " WHERE key BETWEEN (SELECT max(key) FROM log WHERE key <= ?) AND ?",
                (first, last),
            )
            payloads.update((at & _MAX_SEQ, p) for at, _, _, p in _records(more))
    finally:
        db.execute("COMMIT")  # a read transaction: this only ends the snapshot
    missing = [seq for seq in wanted if payloads.get(seq) is None]
    if missing:
        raise StoreError(f"the database holds a corrupt record: no record {missing[0]}")
    output = response.get("output")
    for position, seq in enumerate(refs):
        if seq is not None:
            output[position] = payloads[seq]  # type: ignore[index]
    if usage_ref is not None:
        response["usage"] = payloads[usage_ref][0]  # a Settled: usage, cost, estimated
    return response


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
        rows = db.execute(_item_origins_sql(len(batch)), batch)
        # An item recorded by several responses (a replay): the first one that made it.
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


# -- conversations

#: The chain ending at a response, newest first, one row per link: at most ``?`` rows (the
#: caller asks for one more than it allows, to tell "too long" from "just fits"). A cycle
#: (records that name each other) ends at the depth bound too.
_CHAIN_SQL: Final = """
    WITH RECURSIVE chain (id, previous_id, deleted, purged, store, ref, depth) AS (
        SELECT id, previous_id, deleted, purged, store, ref, 1 FROM responses WHERE id = ?
        UNION ALL
        SELECT r.id, r.previous_id, r.deleted, r.purged, r.store, r.ref, chain.depth + 1
        FROM chain JOIN responses AS r ON r.id = chain.previous_id
        WHERE chain.depth < ?
    )
    SELECT id, previous_id, deleted, purged, store, ref FROM chain ORDER BY depth
"""
#: The log rows of a chain's responses (its refs as a JSON array, to bind any number of them).
_CHAIN_ROWS: Final = (
    " FROM json_each(?) AS c CROSS JOIN log AS l"
    f" ON l.key BETWEEN c.value << {_SEQ_BITS} AND (c.value << {_SEQ_BITS}) | {_MAX_SEQ}"
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
        for rid, _, deleted, purged, store, _ in chain[:max_turns]:
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
        refs = orjson.dumps([row[5] for row in chain]).decode()
        # The stored size first, from the rows' sizes: nothing is loaded if it is too big.
        (size,) = db.execute(
            "SELECT coalesce(sum(l.content_size), 0)" + _CHAIN_ROWS, (refs,)
        ).fetchone()
        if size > max_bytes:
            raise _too_long(
                f"The conversation is larger than {max_bytes} bytes ({size} bytes stored), the "
                "most this gateway continues; raise general_settings.store.max_conversation_bytes"
                " to allow more."
            )
        inputs: dict[int, list[dict[str, Any]]] = {}
        outputs: dict[int, list[tuple[int, int, Any]]] = {}
        rows = db.execute(
            "SELECT l.key, l.body" + _CHAIN_ROWS + " WHERE l.content_size > 0", (refs,)
        )
        for at, kind, ordinal, payload in _records(rows):
            if payload is None:
                continue
            ref = at >> _SEQ_BITS
            if kind == _ACCEPTED:
                inputs[ref] = payload["input_items"]
            elif kind == _ITEM_DONE:
                outputs.setdefault(ref, []).append((ordinal, at, payload))
    finally:
        db.execute("COMMIT")  # a read transaction: this only ends the snapshot
    items: list[dict[str, Any]] = []
    for *_, ref in reversed(chain):
        items += inputs.get(ref, [])
        items += [payload for _, _, payload in sorted(outputs.get(ref, []), key=_by_ordinal)]
    return items
