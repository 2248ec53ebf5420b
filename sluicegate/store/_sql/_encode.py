"""Encoding, in the caller's task: a record becomes its kind, ordinal and payload in the log and
the projection columns it sets, so a record that is not JSON fails there and the writer only
joins and binds bytes."""

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
from .._storable import storable, too_deep
from ._layout import (
    _ACCEPTED,
    _DELETED,
    _ENDED,
    _ITEM_DONE,
    _ROUTED,
    _SETTLED,
    _STREAM_EVENT,
    _canonical,
    _dumps,
    _dumps_or_none,
    _token_columns,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


@attrs.define(eq=False)
class _Encoded:
    """A record ready for the writer: its entry in the log and its projection changes.
    Never changed once made (not frozen: a frozen class costs a microsecond more to make, and
    every record makes one)."""

    record: Record
    #: One of the kinds of ``_layout`` (``_ACCEPTED``, ...).
    kind: int
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
    #: sequence numbers, ``output_refs`` in the payload (:func:`_with_refs`).
    output_refs: tuple[int | None, ...] = ()
    #: An ``Ended`` whose final response leaves out its usage: the index in the append of the
    #: ``Settled`` holding it, which the writer turns into its sequence number (``usage_ref``).
    usage_ref: int | None = None
    #: An ``ItemDone``'s item ID (what ``items`` finds it by), if it has a string one.
    item_id: str | None = None


def _encode_all(records: Sequence[Record]) -> tuple[_Encoded, ...]:
    """Encode one append. An output item and a usage are stored once: an ``Ended`` whose final
    response repeats an ``ItemDone`` or the ``Settled`` usage of the same append (byte for
    byte, as stored) refers to it instead of holding a second copy (see
    :func:`_encode_ended`)."""
    encoded: list[_Encoded] = []
    #: This append's stored output items, by response and payload: the index of each.
    items: dict[tuple[str, bytes], int] = {}
    #: This append's last settled usage of each response: its index and JSON.
    usages: dict[str, tuple[int, bytes]] = {}
    for record in records:
        if isinstance(record, Ended):
            enc = _encode_ended(record, items, usages.get(record.response_id))
        else:
            enc = _encode(record)
            if enc.kind == _ITEM_DONE:
                items.setdefault((record.response_id, enc.payload), len(encoded))
            elif enc.kind == _SETTLED and enc.changes["usage"] is not None:
                usages[record.response_id] = (len(encoded), enc.changes["usage"])
        encoded.append(enc)
    return tuple(encoded)


def _encode_ended(
    record: Ended, items: dict[tuple[str, bytes], int], usage: tuple[int, bytes] | None
) -> _Encoded:
    """The final response is stored without what is stored elsewhere, and
    :func:`._decode._final_response` puts it back: its ``id`` when it is the response's own
    (``same_id``), the output items that ``ItemDone`` records of the same append hold
    (``output_refs``), and its usage when a ``Settled`` of the same append holds it
    (``usage_ref``). The rest of ``Ended`` is in the projection row alone."""
    response = record.response
    stored = response
    refs: tuple[int | None, ...] = ()
    usage_ref: int | None = None
    same_id = False
    if isinstance(response, dict):
        output = response.get("output")
        if items and isinstance(output, list):
            refs, output = _leave_out_items(record.response_id, output, items)
        if usage is not None and _same_json(response.get("usage"), usage[1]):
            usage_ref = usage[0]
        same_id = response.get("id") == record.response_id
        if refs or same_id or usage_ref is not None:
            # Placeholders keep the order of the response's keys.
            stored = {**response, "id": 0} if same_id else dict(response)
            if refs:
                stored["output"] = output
            if usage_ref is not None:
                stored["usage"] = 0
    changes = {
        "completed_at": record.completed_at,
        "error": _dumps_or_none(record.error),
        "ttft": record.ttft,
        "duration": record.duration,
    }
    blob = _ended_payload(stored, same_id=same_id)
    status = record.status.value
    return _Encoded(
        record, _ENDED, None, blob, changes, status, output_refs=refs, usage_ref=usage_ref
    )


def _same_json(value: Any, blob: bytes) -> bool:
    try:
        return orjson.dumps(value) == blob
    except orjson.JSONEncodeError:
        return False


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
        except orjson.JSONEncodeError:  # stored as it always is (see storable)
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
                "background": record.background,
                "store": record.store,
                "metadata": _dumps_object(record.metadata),
                "created_at": record.created_at,
                "previous_id": record.previous_id,
                "spend_metadata": _dumps_object(record.spend_metadata),
            }
            tags = tuple((key, _canonical(value)) for key, value in record.spend_metadata.items())
            status = ResponseStatus.QUEUED if record.background else ResponseStatus.IN_PROGRESS
            return _Encoded(
                record, _ACCEPTED, None, _dumps(payload), changes, status.value, tags=tags
            )
        case Routed():
            # Positional (nothing reads it back; the row holds the last one): ``ordinal`` is
            # the attempt.
            routed = [record.deployment_id, record.provider, record.upstream_id]
            changes = {"deployment_id": record.deployment_id, "provider": record.provider}
            if record.upstream_id is not None:
                changes["upstream_id"] = record.upstream_id
            if record.instance is not None:  # taken over: recovery leaves it to that instance
                changes["instance"] = record.instance
            return _Encoded(record, _ROUTED, record.attempt, _dumps(routed), changes)
        case ItemDone():
            # The payload is the item itself; ``ordinal`` keeps the output index.
            content = _dumps_content(record.item, levels=1)
            item_id = record.item.get("id") if isinstance(record.item, dict) else None
            return _Encoded(
                record,
                _ITEM_DONE,
                record.output_index,
                content,
                {},
                item_id=item_id if isinstance(item_id, str) else None,
            )
        case StreamEventRecorded():
            content = _dumps_content(record.event, levels=2)
            return _Encoded(record, _STREAM_EVENT, record.sequence_number, content, {})
        case Settled():
            usage = _dumps_or_none(record.usage)  # once, for the payload and the row
            # Positional, as Routed; an end of the same append may refer to its usage.
            settled = [
                None if usage is None else orjson.Fragment(usage),
                record.cost,
                record.estimated,
            ]
            changes = {
                "usage": usage,
                "cost": record.cost,
                "estimated": record.estimated,
                **_token_columns(record.usage),
            }
            return _Encoded(record, _SETTLED, None, _dumps(settled), changes)
        case Ended():
            return _encode_ended(record, {}, None)
        case Deleted():
            return _Encoded(record, _DELETED, None, _dumps([record.deleted_at]), {})
    raise TypeError(f"not a store record: {record!r}")


def _dumps_object(value: dict[str, Any]) -> bytes:
    """A JSON object (metadata): most are empty."""
    return _EMPTY_OBJECT if not value and type(value) is dict else _dumps(value)


_EMPTY_OBJECT: Final = b"{}"


def _ended_payload(response: dict[str, Any] | None, *, same_id: bool = False) -> bytes:
    """``Ended``'s payload, with ``response`` as its final response (None once the content is
    removed). A JSON object: :func:`_with_refs` adds keys at its end."""
    payload: dict[str, Any] = {"response": response}
    if same_id:
        payload["same_id"] = True
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:  # encoded once when it can be (nearly always)
        if not too_deep(exc):
            raise StoreIntegrityError(f"a record is not JSON-serializable: {exc}") from exc
    payload["response"] = storable(response, 3)
    return _dumps(payload)


def _with_refs(payload: bytes, output_refs: list[int | None], usage_ref: int | None) -> bytes:
    """An ``Ended``'s payload (a JSON object) with ``output_refs``: per output item of its final
    response, the sequence number of the ``ItemDone`` holding it, or null (the item is there);
    and ``usage_ref``: the sequence number of the ``Settled`` holding its usage."""
    if output_refs:
        payload = payload[:-1] + b',"output_refs":' + orjson.dumps(output_refs) + b"}"
    if usage_ref is not None:
        payload = payload[:-1] + b',"usage_ref":%d}' % usage_ref
    return payload


#: What stands in for upstream content the JSON encoder cannot hold.
def _dumps_content(value: Any, *, levels: int) -> bytes:
    """Upstream content (an item, an event): a response the upstream answered is recorded and
    billed even when part of its content cannot be stored (nested deeper than the encoder
    goes, which a provider's JSON can be): that part is replaced by a stand-in that says so.
    Anything else that is not JSON is refused as every other record is."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if not too_deep(exc):
            raise StoreIntegrityError(f"a record is not JSON-serializable: {exc}") from exc
        return _dumps(storable(value, levels))
