"""The log's layout, which both SQL backends keep: the JSON of stored values, the record kinds, a
response's rows of records and their keys, and the spend columns a usage fills in.

A row of ``log`` holds a run of consecutive records of one response, written in one transaction
(``_fold._RowState.log_rows``); ``key`` is the response's ``ref`` and the sequence number of the
row's first record (:func:`_log_key`), so a response's rows are one range of keys, in order.
``body`` is a JSON array with one ``[kind, ordinal, payload]`` per record, numbered on from the
key's; ``kinds`` has bit ``1 << kind`` set for each kind in the row (reads skip rows without the
kind they want), ``content_size`` is the bytes of its Accepted and ItemDone payloads (what a
conversation loads) and ``last_event`` its highest stream-event sequence number (where resuming a
stream starts reading).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import orjson

from ...errors import StoreIntegrityError

if TYPE_CHECKING:
    from collections.abc import Iterable

# --- JSON ------------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise StoreIntegrityError(f"a record is not JSON-serializable: {exc}") from exc


def _dumps_or_none(value: Any) -> bytes | None:
    return None if value is None else _dumps(value)


def _loads_or_none(blob: bytes | None) -> Any:
    return None if blob is None else orjson.loads(blob)


# --- the log ---------------------------------------------------------------------------------

#: Record kinds as ``log`` stores them; ``ordinal`` is the output index (ItemDone), the sequence
#: number (StreamEventRecorded) or the attempt (Routed).
_ACCEPTED, _ROUTED, _ITEM_DONE, _STREAM_EVENT, _SETTLED, _ENDED, _DELETED = range(7)
#: Their names (in messages), by kind.
_KIND_NAMES: Final = (
    "accepted",
    "routed",
    "item_done",
    "stream_event",
    "settled",
    "ended",
    "deleted",
)
#: Bits of ``log.kinds``: the kinds whose payload is the caller's content, removed by
#: ``Deleted`` and by ``purge``, and the ones a removal rewrites (the end's final response too).
_CONTENT_BITS: Final = 1 << _ACCEPTED | 1 << _ITEM_DONE | 1 << _STREAM_EVENT
_REMOVAL_BITS: Final = _CONTENT_BITS | 1 << _ENDED

#: Bits of a log key for the sequence number; a ``ref`` takes the rest (a signed 64-bit key).
_SEQ_BITS: Final = 32
#: The most records a response may have, and the highest ``ref``.
_MAX_SEQ: Final = (1 << _SEQ_BITS) - 1
_MAX_REF: Final = (1 << (63 - _SEQ_BITS)) - 1


def _log_key(ref: int, seq: int) -> int:
    return ref << _SEQ_BITS | seq


def _log_body(records: Iterable[tuple[int, int | None, bytes | None]]) -> bytes:
    """A row's body from its records' kinds, ordinals and (JSON) payloads, each as it is: the
    payloads are encoded once, in the caller's task."""
    return b"[%s]" % b",".join(
        b"[%d,%s,%s]"
        % (
            kind,
            b"null" if ordinal is None else b"%d" % ordinal,
            _NULL if payload is None else payload,
        )
        for kind, ordinal, payload in records
    )


_NULL: Final = b"null"

# --- spend -----------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    """The JSON of a spend metadata value as ``spend_tags`` keeps it: equal values, equal bytes."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise StoreIntegrityError(
            f"a spend metadata value is not JSON-serializable: {exc}"
        ) from exc


def _count(container: Any, key: str) -> int:
    """A token count of a usage object; anything missing or not a count is 0."""
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _token_columns(usage: dict[str, Any] | None) -> dict[str, int]:
    if not usage:
        return _NO_TOKENS
    return {
        "input_tokens": _count(usage, "input_tokens"),
        "output_tokens": _count(usage, "output_tokens"),
        "cached_tokens": _count(usage.get("input_tokens_details"), "cached_tokens"),
        "reasoning_tokens": _count(usage.get("output_tokens_details"), "reasoning_tokens"),
        "total_tokens": _count(usage, "total_tokens"),
    }


_NO_TOKENS: Final[dict[str, int]] = dict.fromkeys(
    ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"), 0
)
