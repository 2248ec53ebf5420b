"""The records of the event log, and the projection row they fold into.

Theory of operation: the store keeps, per response, an append-only log of records with a
per-response sequence number the store assigns (``Accepted`` is 0). The projection
(:class:`ResponseRow`) is updated in the same transaction as the records that change it:

============================  ===================================================================
record                        projection
============================  ===================================================================
``Accepted`` (first, once)    row created: ``queued`` if background, else ``in_progress``
``Routed``                    deployment and provider; ``queued`` → ``in_progress``
``ItemDone``                  (content only)
``StreamEventRecorded``       (content only; background responses, for stream resume)
``Settled``                   usage and cost
``Ended`` (terminal, once)    status, ``completed_at``, error
``Deleted``                   ``deleted``; the content (input items, output items, stream
                              events, final response) is removed, usage and cost are kept
============================  ===================================================================

A deleted row keeps its lifecycle status (recovery still ends one deleted while it ran);
``ResponseRow.deleted`` says it is gone.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs

from .._types import ResponseStatus

__all__ = [
    "Accepted",
    "Deleted",
    "Ended",
    "ItemDone",
    "Record",
    "Routed",
    "ResponseRow",
    "Settled",
    "StreamEventRecorded",
]

JSONDict: TypeAlias = dict[str, Any]


@attrs.frozen(kw_only=True)
class Record:
    """Base of the log's records; every record belongs to one response (its ``resp_…`` ID)."""

    response_id: str


@attrs.frozen(kw_only=True)
class Accepted(Record):
    """The request was accepted: who asked, for what, with which input."""

    owner: str
    model: str
    params: JSONDict
    input_items: list[JSONDict]
    background: bool
    #: False for ``store: false``: the caller's content is not kept (``params`` and
    #: ``input_items`` are recorded empty), only the accounting.
    store: bool
    metadata: JSONDict
    created_at: float
    #: The ``resp_…`` ID this response continues (``previous_response_id``), if any.
    previous_id: str | None = None
    #: The caller's ``spend_logs_metadata``: free-form JSON, filterable by key in spend logs.
    spend_metadata: JSONDict = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class Routed(Record):
    """An attempt went to a deployment (one per attempt; the last one wins in the projection)."""

    deployment_id: str
    provider: str
    attempt: int
    #: The ID the upstream knows this response by, once it answered (its raw ID).
    upstream_id: str | None = None
    #: The store instance that runs it from now on: a background response taken over after
    #: the instance running it died (docs/design.md §5.5). None: the one that accepted it.
    instance: str | None = None
    #: With ``instance``: the (dead) instance it is taken from. The takeover is refused unless
    #: the response still runs and is still that instance's, so only one instance takes it.
    taken_from: str | None = None


@attrs.frozen(kw_only=True)
class ItemDone(Record):
    """An output item is complete (``response.output_item.done``)."""

    output_index: int
    item: JSONDict


@attrs.frozen(kw_only=True)
class StreamEventRecorded(Record):
    """A raw stream event, kept only for background responses so a client can resume."""

    sequence_number: int
    event: JSONDict


@attrs.frozen(kw_only=True)
class Settled(Record):
    """Usage and its cost are known."""

    usage: JSONDict | None
    cost: float | None
    #: True when the upstream never reported usage (the response was cut) and the counts are
    #: the gateway's estimate.
    estimated: bool = False


def _terminal_status(value: ResponseStatus | str) -> ResponseStatus:
    status = ResponseStatus(value)
    if not status.is_terminal:
        raise ValueError(f"Ended.status must be terminal, not {status.value!r}")
    return status


@attrs.frozen(kw_only=True)
class Ended(Record):
    """The terminal record: exactly one per response. ``response`` is the final Response."""

    status: ResponseStatus = attrs.field(converter=_terminal_status)
    error: JSONDict | None
    response: JSONDict | None
    completed_at: float
    #: Seconds from the request to its first output event (time to first token), if any came.
    ttft: float | None = None
    #: Seconds from the request to its end.
    duration: float | None = None


@attrs.frozen(kw_only=True)
class Deleted(Record):
    """Tombstone: the response's content is removed; its accounting stays."""

    deleted_at: float


@attrs.frozen(kw_only=True)
class ResponseRow:
    """One response as the projection table holds it."""

    id: str
    owner: str
    status: ResponseStatus
    model: str
    deployment_id: str | None
    provider: str | None
    background: bool
    store: bool
    metadata: JSONDict
    created_at: float
    completed_at: float | None
    usage: JSONDict | None
    cost: float | None
    error: JSONDict | None
    deleted: bool
    previous_id: str | None = None
    upstream_id: str | None = None
    spend_metadata: JSONDict = attrs.Factory(dict)
    ttft: float | None = None
    duration: float | None = None
    #: The usage is the gateway's estimate (the upstream never reported it).
    estimated: bool = False
    #: The content was removed by the retention period (the accounting stays).
    purged: bool = False


@attrs.frozen(kw_only=True)
class ItemOrigin:
    """Which stored response an output item belongs to, and where that response was made."""

    item_id: str
    response_id: str
    owner: str
    deployment_id: str | None
    provider: str | None
