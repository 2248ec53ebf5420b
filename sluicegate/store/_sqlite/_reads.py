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
from ._schema import _ACCEPTED, _ITEM_DONE, _STREAM_EVENT

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

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


#: A response's ``ref`` from its ID (one search of the ID's index), for the statements that
#: read its events.
_REF: Final = "(SELECT ref FROM responses WHERE id = ?)"


def _read_payloads(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return [orjson.loads(blob) for (blob,) in db.execute(sql, params) if blob is not None]


def _read_input_items(db: sqlite3.Connection, response_id: str) -> list[dict[str, Any]]:
    sql = f"SELECT payload FROM events WHERE response_ref = {_REF} AND seq = 0"
    accepted = _read_payloads(db, sql, (response_id,))
    return accepted[0]["input_items"] if accepted else []


def _read_output_items(db: sqlite3.Connection, response_id: str) -> list[dict[str, Any]]:
    sql = (
        f"SELECT payload FROM events WHERE response_ref = {_REF} AND kind = ? ORDER BY ordinal, seq"
    )
    return _read_payloads(db, sql, (response_id, _ITEM_DONE))


def _read_stream_events(
    db: sqlite3.Connection, response_id: str, after: int, limit: int
) -> list[dict[str, Any]]:
    sql = (
        f"SELECT payload FROM events WHERE response_ref = {_REF} AND kind = ?"
        " AND ordinal > ? ORDER BY ordinal, seq LIMIT ?"
    )
    return _read_payloads(db, sql, (response_id, _STREAM_EVENT, after, limit))


def _read_final_response(db: sqlite3.Connection, response_id: str) -> dict[str, Any] | None:
    """The final response of an ``Ended``, with what :func:`._encode._encode_ended` left out
    put back: its ``id`` (``same_id``) and the output items ``ItemDone`` records hold
    (``output_refs``, their sequence numbers)."""
    # One read transaction: the end and the items it refers to come from one snapshot (a
    # removal of the content in between would leave the references dangling).
    db.execute("BEGIN")
    try:
        row = db.execute(
            f"SELECT response_ref, payload FROM events WHERE response_ref = {_REF}"
            " AND kind = 'ended'",
            (response_id,),
        ).fetchone()
        if row is None or row[1] is None:
            return None
        ref, blob = row
        ended = orjson.loads(blob)
        response: dict[str, Any] | None = ended["response"]
        if response is None:
            return None
        if ended.get("same_id"):
            response["id"] = response_id
        refs: list[int | None] | None = ended.get("output_refs")
        if not refs:
            return response
        seqs = orjson.dumps([seq for seq in refs if seq is not None]).decode()
        items = dict(
            db.execute(
                "SELECT seq, payload FROM events WHERE response_ref = ?"
                " AND seq IN (SELECT value FROM json_each(?))",
                (ref, seqs),
            ).fetchall()
        )
    finally:
        db.execute("COMMIT")  # a read transaction: this only ends the snapshot
    output = response["output"]
    for position, seq in enumerate(refs):
        if seq is not None:
            item = items.get(seq)
            if item is None:
                raise StoreError(f"the database holds a corrupt record: no output item {seq}")
            output[position] = orjson.loads(item)
    return response


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
            " ON r.ref = e.response_ref WHERE e.kind = 'item_done'"
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
#: The events holding a chain's items (its refs as a JSON array, to bind any number of them).
_CHAIN_EVENTS: Final = (
    " FROM events WHERE response_ref IN (SELECT value FROM json_each(?)) AND kind IN (?, ?)"
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
        kinds = (_ACCEPTED, _ITEM_DONE)
        # The stored size first, from the records' lengths: nothing is loaded if it is too big.
        (size,) = db.execute(
            "SELECT coalesce(sum(length(payload)), 0)" + _CHAIN_EVENTS, (refs, *kinds)
        ).fetchone()
        if size > max_bytes:
            raise _too_long(
                f"The conversation is larger than {max_bytes} bytes ({size} bytes stored), the "
                "most this gateway continues; raise general_settings.store.max_conversation_bytes"
                " to allow more."
            )
        inputs: dict[int, list[dict[str, Any]]] = {}
        outputs: dict[int, list[dict[str, Any]]] = {}
        rows = db.execute(
            "SELECT response_ref, kind, payload" + _CHAIN_EVENTS + " ORDER BY ordinal, seq",
            (refs, *kinds),
        )
        for ref, kind, payload in rows:
            if payload is None:
                continue
            if kind == _ACCEPTED:
                inputs[ref] = orjson.loads(payload)["input_items"]
            else:
                outputs.setdefault(ref, []).append(orjson.loads(payload))
    finally:
        db.execute("COMMIT")  # a read transaction: this only ends the snapshot
    items: list[dict[str, Any]] = []
    for *_, ref in reversed(chain):
        items += inputs.get(ref, [])
        items += outputs.get(ref, [])
    return items
