"""Encoding, in the caller's task: a record becomes its ``events`` row and the projection
columns it sets, so a record that is not JSON fails there and the writer only binds values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson

from ..._types import ResponseStatus
from ...errors import StoreIntegrityError
from .._records import (
    Accepted,
    Deleted,
    Ended,
    ItemDone,
    Record,
    Routed,
    Settled,
    StreamEventRecorded,
)
from ._boundary import _dumps, _dumps_or_none
from ._schema import _ACCEPTED, _DELETED, _ENDED, _ITEM_DONE, _ROUTED, _SETTLED, _STREAM_EVENT
from ._spend import _canonical, _token_columns

if TYPE_CHECKING:
    from collections.abc import Sequence


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
    #: An ``Ended`` whose final response leaves out output items that ``ItemDone`` records of
    #: the same append hold: per output item, the index in the append of the record holding
    #: it (None: the item is in the payload). The writer turns the indexes into the records'
    #: sequence numbers, ``output_refs`` in the payload (:func:`_with_output_refs`).
    output_refs: tuple[int | None, ...] = ()


def _encode_all(records: Sequence[Record]) -> tuple[_Encoded, ...]:
    """Encode one append. An output item is stored once: an ``Ended`` whose final response
    repeats an ``ItemDone`` of the same append (byte for byte, as stored) refers to it instead
    of holding a second copy (see :func:`_encode_ended`)."""
    encoded: list[_Encoded] = []
    #: This append's stored output items, by response and payload: the index of each.
    items: dict[tuple[str, bytes], int] = {}
    for record in records:
        if isinstance(record, Ended):
            enc = _encode_ended(record, items)
        else:
            enc = _encode(record)
            if enc.kind == _ITEM_DONE:
                items.setdefault((record.response_id, enc.payload), len(encoded))
        encoded.append(enc)
    return tuple(encoded)


def _encode_ended(record: Ended, items: dict[tuple[str, bytes], int]) -> _Encoded:
    """The final response is stored without what is stored elsewhere, and
    :func:`._reads._read_final_response` puts it back: its ``id`` when it is the response's own
    (``same_id``), and the output items that ``ItemDone`` records of the same append hold
    (``output_refs``). The rest of ``Ended`` is in the projection row alone."""
    response = record.response
    stored = response
    refs: tuple[int | None, ...] = ()
    same_id = False
    if isinstance(response, dict):
        output = response.get("output")
        if items and isinstance(output, list):
            refs, output = _leave_out_items(record.response_id, output, items)
        same_id = response.get("id") == record.response_id
        if refs or same_id:
            # A placeholder keeps the order of the response's keys.
            stored = {**response, "id": 0} if same_id else dict(response)
            if refs:
                stored["output"] = output
    changes = {
        "completed_at": record.completed_at,
        "error": _dumps_or_none(record.error),
        "ttft": record.ttft,
        "duration": record.duration,
    }
    blob = _ended_payload(stored, same_id=same_id)
    status = record.status.value
    return _Encoded(record, _ENDED, None, blob, changes, status, output_refs=refs)


def _leave_out_items(
    response_id: str, output: list[Any], items: dict[tuple[str, bytes], int]
) -> tuple[tuple[int | None, ...], list[Any]]:
    """Per output item, the index of this append's ``ItemDone`` holding the same bytes (None
    if none does), and the output with a placeholder for each of those; ``((), output)`` if
    none does."""
    refs: list[int | None] = []
    for element in output:
        try:
            blob = orjson.dumps(element)
        except orjson.JSONEncodeError:  # stored as it always is (see _storable)
            refs.append(None)
        else:
            refs.append(items.get((response_id, blob)))
    if all(ref is None for ref in refs):
        return (), output
    return tuple(refs), [e if ref is None else 0 for e, ref in zip(output, refs, strict=True)]


def _encode(record: Record) -> _Encoded:
    match record:
        case Accepted():
            # The rest of Accepted (set once, never changed) is in the projection row alone.
            payload: dict[str, Any] = {"params": record.params, "input_items": record.input_items}
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
            return _encode_ended(record, {})
        case Deleted():
            payload = {"deleted_at": record.deleted_at}
            return _Encoded(record, _DELETED, None, _dumps(payload), {})
    raise TypeError(f"not a store record: {record!r}")


def _ended_payload(response: dict[str, Any] | None, *, same_id: bool = False) -> bytes:
    """``Ended``'s payload, with ``response`` as its final response (None once the content is
    removed). A JSON object: :func:`_with_output_refs` adds a key at its end."""
    payload: dict[str, Any] = {"response": response}
    if same_id:
        payload["same_id"] = True
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:  # encoded once when it can be (nearly always)
        if not _too_deep(exc):
            raise StoreIntegrityError(f"a record is not JSON-serializable: {exc}") from exc
    payload["response"] = _storable(response, 3)
    return _dumps(payload)


def _with_output_refs(payload: bytes, seqs: list[int | None]) -> bytes:
    """An ``Ended``'s payload (a JSON object) with ``output_refs``: per output item of its final
    response, the sequence number of the ``ItemDone`` holding it, or null (the item is there)."""
    return payload[:-1] + b',"output_refs":' + orjson.dumps(seqs) + b"}"


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
