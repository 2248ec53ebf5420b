"""The supervisor: one nursery per request, and the decision when an actor fails.

Every request — streaming or not — runs the same chain of actors over small bounded channels::

    router → connector → transformer → accountant → id encoder → sink

An upstream failure (a status, a reset, a deadline, malformed data) does not cancel the chain
where it happens: it travels down as a ``Failure`` item behind the data read before it, so
nothing already read is lost, and the sink raises it into the nursery once everything before it
is delivered. Any other exception (a bug) cancels the siblings at once. Either way the
supervisor decides what the caller gets (DESIGN §2):

- nothing was delivered yet: the error itself (a streaming caller receives it as data on its
  channel and raises it; a non-streaming caller gets it raised), so the HTTP face can still
  answer with a plain error status;
- events were delivered: the tracker closes whatever is open and ends the response with one
  ``response.failed``, so every response ends in exactly one terminal event.

Cancellation from outside (the caller left) is never swallowed: it cancels the nursery, which
closes the upstream connection.
"""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio

from ..actors._connector import Connector, run_connector
from ..actors._router import Router, run_router
from ..actors._stages import Accountant, run_accountant, run_id_encoder, run_sink, run_transformer
from ..codecs._lifecycle import StreamTracker
from ..codecs.ids import IdCodec
from ..errors import InternalError, SluicegateError
from ._messages import Delivery, EventItem, PreparedCall, RawItem, Routed

__all__ = ["Delivery", "Pipeline", "run_request"]

logger = logging.getLogger("sluicegate")

#: Channel buffers. Small on purpose: a slow caller must slow the upstream (DESIGN §2).
RAW_BUFFER = 2
EVENT_BUFFER = 2


@attrs.define(eq=False)
class Pipeline:
    """The gateway-wide services every request's actors share."""

    router: Router
    connector: Connector
    accountant: Accountant
    ids: IdCodec


async def run_request(
    pipeline: Pipeline,
    call: PreparedCall,
    tracker: StreamTracker,
    deliver: trio.MemorySendChannel[Delivery] | None = None,
) -> None:
    """Run one request to its end.

    With ``deliver`` (streaming), batches go to that channel as they are ready and any error is
    delivered as data; the channel is left open for the caller's owner to close. Without it
    (non-streaming), events are only tracked (``tracker.fold()`` is the answer) and an error
    before any event is raised.
    """
    failure: SluicegateError | None = None
    try:
        await _run_actors(pipeline, call, tracker, deliver)
    except* SluicegateError as group:
        failure = _first(group)
    except* Exception as group:
        logger.error("request failed on an internal error", exc_info=group)
        failure = InternalError("The gateway failed while handling this request.")
    if failure is None:
        return
    if not tracker.delivered_any:
        if deliver is None:
            raise failure
        await deliver.send(failure)
        return
    closing = tracker.fail(failure)
    if closing and deliver is not None:
        await deliver.send(closing)


async def _run_actors(
    pipeline: Pipeline,
    call: PreparedCall,
    tracker: StreamTracker,
    deliver: trio.MemorySendChannel[Delivery] | None,
) -> None:
    call_send, call_recv = trio.open_memory_channel[PreparedCall](1)
    routed_send, routed_recv = trio.open_memory_channel[Routed](1)
    raw_send, raw_recv = trio.open_memory_channel[RawItem](RAW_BUFFER)
    decoded_send, decoded_recv = trio.open_memory_channel[EventItem](EVENT_BUFFER)
    priced_send, priced_recv = trio.open_memory_channel[EventItem](EVENT_BUFFER)
    encoded_send, encoded_recv = trio.open_memory_channel[EventItem](EVENT_BUFFER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(run_router, pipeline.router, inbox=call_recv, outbox=routed_send)
        )
        nursery.start_soon(
            partial(run_connector, pipeline.connector, inbox=routed_recv, outbox=raw_send)
        )
        nursery.start_soon(partial(run_transformer, inbox=raw_recv, outbox=decoded_send))
        nursery.start_soon(
            partial(run_accountant, pipeline.accountant, inbox=decoded_recv, outbox=priced_send)
        )
        nursery.start_soon(
            partial(run_id_encoder, pipeline.ids, inbox=priced_recv, outbox=encoded_send)
        )
        with call_send:
            await call_send.send(call)
        # The sink runs here, in the task that owns the request: one task and one hop fewer.
        await run_sink(tracker, inbox=encoded_recv, outbox=deliver)


def _first(group: BaseExceptionGroup[SluicegateError]) -> SluicegateError:
    """The error that ended the request (the innermost first; there is one in practice)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    raise AssertionError("empty exception group")  # pragma: no cover
