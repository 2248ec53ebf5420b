"""What reads return, from the rows either backend reads: projection rows, the records of log
rows, a final response put back together, item origins, conversations walked, spend rows, keys
and objects. The SQL is the backend's; what it makes of the rows is here."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from ..._types import ResponseStatus
from ...errors import InvalidRequestError, StoreError
from .._interface import KeyRow, ObjectRow, SpendLog, SpendTotal
from .._records import ItemOrigin, ResponseRow
from ._layout import (
    _ACCEPTED,
    _ENDED,
    _ITEM_DONE,
    _MAX_SEQ,
    _SEQ_BITS,
    _STREAM_EVENT,
    _loads_or_none,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def executemany(self, sql: str, parameters: Any, /) -> object: ...


class _Connection(Protocol):
    """A connection of either backend (``sqlite3``'s, ``psycopg``'s), as far as the statements
    both run alike use it."""

    def execute(self, sql: str, parameters: Any = ..., /) -> _Cursor: ...

    def cursor(self) -> _Cursor: ...


@contextlib.contextmanager
def _snapshot(db: _Connection, begin: str) -> Iterator[None]:
    """One read transaction (``begin``: the backend's statement that opens it): what its reads
    return comes from one snapshot."""
    db.execute(begin)
    try:
        yield
    finally:
        db.execute("COMMIT")  # a read transaction: this only ends the snapshot


# --- responses and their records -------------------------------------------------------------

#: The columns of a :class:`ResponseRow`, as a SELECT list.
_ROW_COLUMNS: Final = (
    "id, owner, status, model, deployment_id, provider, background, store, metadata,"
    " created_at, completed_at, usage, cost, error, deleted, previous_id, upstream_id,"
    " spend_metadata, ttft, duration, estimated, purged"
)


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


def _records(rows: Iterable[Sequence[Any]]) -> Iterator[tuple[int, int, Any, Any]]:
    """The records of log rows (key, body): where each is (its response's ``ref`` and its
    sequence number, as a log key), kind, ordinal and payload (None once its content is
    removed)."""
    for key, body in rows:
        for offset, (kind, ordinal, payload) in enumerate(orjson.loads(body)):
            yield key + offset, kind, ordinal, payload


def _input_items(response_id: str, body: bytes | None) -> list[dict[str, Any]]:
    """The input items of a response's first log row (None: the response is unknown)."""
    if body is None:
        return []
    # Accepted is a response's first record: the first of its first row.
    kind, _, accepted = orjson.loads(body)[0]
    if kind != _ACCEPTED:
        raise StoreError(f"the database holds a corrupt record: {response_id} starts with {kind}")
    return [] if accepted is None else accepted["input_items"]


def _by_ordinal(entry: tuple[int, int, Any]) -> tuple[int, int]:
    """Output items and stream events are read in their own order: ordinal, then as recorded."""
    return entry[0], entry[1]


def _output_items(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """The output items among a response's log rows, in output-index order."""
    items = [
        (ordinal, seq, payload)
        for seq, kind, ordinal, payload in _records(rows)
        if kind == _ITEM_DONE and payload is not None
    ]
    items.sort(key=_by_ordinal)
    return [payload for _, _, payload in items]


def _stream_events(rows: Iterable[Sequence[Any]], after: int, limit: int) -> list[dict[str, Any]]:
    """The stream events past ``after`` among a response's log rows, in order, at most
    ``limit``."""
    events = [
        (ordinal, seq, payload)
        for seq, kind, ordinal, payload in _records(rows)
        if kind == _STREAM_EVENT and payload is not None and ordinal > after
    ]
    events.sort(key=_by_ordinal)
    return [payload for _, _, payload in events[:limit]]


def _final_response(
    response_id: str,
    rows: Iterable[Sequence[Any]],
    more: Callable[[int, int], Iterable[Sequence[Any]]],
) -> dict[str, Any] | None:
    """The final response of an ``Ended``, with what :func:`._encode._encode_ended` left out
    put back: its ``id`` (``same_id``), the output items ``ItemDone`` records hold
    (``output_refs``, their sequence numbers) and the usage a ``Settled`` holds
    (``usage_ref``).

    ``rows``: the response's log rows holding its end; ``more(first, last)``: the log rows from
    the one whose run covers log key ``first`` to the one holding ``last``. Both from one
    snapshot (a removal of the content in between would leave the references dangling)."""
    ended: dict[str, Any] | None = None
    ref = 0
    #: Payloads by sequence number: those of the end's row first, which may hold what it
    #: refers to (a row holds a run of one append's records).
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
        first, last = (ref << _SEQ_BITS) | min(elsewhere), (ref << _SEQ_BITS) | max(elsewhere)
        payloads.update((at & _MAX_SEQ, p) for at, _, _, p in _records(more(first, last)))
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


def _item_origins(rows: Iterable[Sequence[Any]], found: dict[str, ItemOrigin]) -> None:
    """Add the origins of rows (item ID, response ID, owner, deployment, provider), by
    ``ref``: an item recorded by several responses (a replay) is the first one's that made it."""
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


# --- conversations ---------------------------------------------------------------------------

_NOT_FOUND: Final = "previous_response_not_found"
_TOO_LONG: Final = "conversation_too_long"

#: The chain ending at a response, newest first, one row per link (id, previous_id, deleted,
#: purged, store, ref): at most ``max_turns + 1`` rows (asked for one more than allowed, to tell
#: "too long" from "just fits"), bound as (response ID, depth). A cycle (records that name each
#: other) ends at the depth bound too. The placeholder is the backend's (``{}``).
_CHAIN_SQL: Final = """
    WITH RECURSIVE chain (id, previous_id, deleted, purged, store, ref, depth) AS (
        SELECT id, previous_id, deleted, purged, store, ref, 1 FROM responses WHERE id = {0}
        UNION ALL
        SELECT r.id, r.previous_id, r.deleted, r.purged, r.store, r.ref, chain.depth + 1
        FROM chain JOIN responses AS r ON r.id = chain.previous_id
        WHERE chain.depth < {0}
    )
    SELECT id, previous_id, deleted, purged, store, ref FROM chain ORDER BY depth
"""


def _not_found(response_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code=_NOT_FOUND,
    )


def _too_long(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="previous_response_id", code=_TOO_LONG)


def _conversation(
    response_id: str,
    max_turns: int,
    max_bytes: int,
    *,
    chain: Callable[[str, int], list[Sequence[Any]]],
    size: Callable[[list[int]], int],
    content: Callable[[list[int]], Iterable[Sequence[Any]]],
) -> list[dict[str, Any]]:
    """Walk the chain ending at ``response_id`` with bounded queries, all from one snapshot:
    ``chain(id, depth)`` (:data:`_CHAIN_SQL`), then ``size(refs)``, the stored content size of
    those responses (nothing is loaded if it is too big), then ``content(refs)``, their log rows
    holding content."""
    links = chain(response_id, max_turns + 1)
    if not links:
        raise _not_found(response_id)
    for rid, _, deleted, purged, store, _ in links[:max_turns]:
        if deleted or purged:
            raise _not_found(rid)
        if not store:
            raise InvalidRequestError(
                f"Previous response with id '{rid}' was created with store=false, so it "
                "was not kept and cannot be continued.",
                param="previous_response_id",
                code=_NOT_FOUND,
            )
    if len(links) > max_turns:
        raise _too_long(
            f"The conversation is longer than {max_turns} turns, the most this gateway "
            "continues; raise general_settings.store.max_conversation_turns to allow more."
        )
    oldest_previous = links[-1][1]
    if oldest_previous is not None:  # the walk stopped short of the limit: a missing link
        raise _not_found(oldest_previous)
    refs = [row[5] for row in links]
    stored = size(refs)
    if stored > max_bytes:
        raise _too_long(
            f"The conversation is larger than {max_bytes} bytes ({stored} bytes stored), the "
            "most this gateway continues; raise general_settings.store.max_conversation_bytes"
            " to allow more."
        )
    inputs: dict[int, list[dict[str, Any]]] = {}
    outputs: dict[int, list[tuple[int, int, Any]]] = {}
    for at, kind, ordinal, payload in _records(content(refs)):
        if payload is None:
            continue
        ref = at >> _SEQ_BITS
        if kind == _ACCEPTED:
            inputs[ref] = payload["input_items"]
        elif kind == _ITEM_DONE:
            outputs.setdefault(ref, []).append((ordinal, at, payload))
    items: list[dict[str, Any]] = []
    for *_, ref in reversed(links):
        items += inputs.get(ref, [])
        items += [payload for _, _, payload in sorted(outputs.get(ref, []), key=_by_ordinal)]
    return items


# --- spend, keys and objects -----------------------------------------------------------------

#: The columns of a :class:`SpendLog`, as a SELECT list.
_SPEND_LOG_COLUMNS: Final = (
    "r.id, r.owner, r.model, r.deployment_id, r.provider, r.status, r.input_tokens,"
    " r.output_tokens, r.cached_tokens, r.reasoning_tokens, r.total_tokens, r.cost, r.estimated,"
    " r.ttft, r.duration, r.created_at, r.completed_at, r.spend_metadata"
)


def _spend_log(row: Sequence[Any]) -> SpendLog:
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


def _spend_total(row: Sequence[Any]) -> SpendTotal:
    return SpendTotal(
        key=row[0],
        requests=row[1],
        input_tokens=int(row[2]),
        output_tokens=int(row[3]),
        cost=float(row[4]),
    )


#: The columns of a :class:`KeyRow`, as a SELECT (and INSERT) list.
_KEY_COLUMNS: Final = (
    "key_id, key_hash, alias, models, rpm, tpm, max_parallel_requests, max_budget, expires_at,"
    " created_at, metadata, deleted_at"
)


def _key_values(row: KeyRow, models: bytes | None, metadata: bytes) -> tuple[Any, ...]:
    """The values of :data:`_KEY_COLUMNS` for a new key (its JSON encoded already)."""
    return (
        row.key_id,
        row.key_hash,
        row.alias,
        models,
        row.rpm,
        row.tpm,
        row.max_parallel_requests,
        row.max_budget,
        row.expires_at,
        row.created_at,
        metadata,
        row.deleted_at,
    )


def _key_row(row: Sequence[Any] | None) -> KeyRow | None:
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


#: The columns of an :class:`ObjectRow`, as a SELECT (and INSERT) list.
_OBJECT_COLUMNS: Final = (
    "id, kind, owner, model, deployment_id, provider, raw_id, created_at, data, spend_metadata,"
    " batch_id, settled, deleted_at"
)


def _object_values(row: ObjectRow, data: bytes, spend_metadata: bytes) -> tuple[Any, ...]:
    """The values of :data:`_OBJECT_COLUMNS` (its JSON encoded already)."""
    return (
        row.id,
        row.kind,
        row.owner,
        row.model,
        row.deployment_id,
        row.provider,
        row.raw_id,
        row.created_at,
        data,
        spend_metadata,
        row.batch_id,
        row.settled,
        row.deleted_at,
    )


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
