"""The supervisor: one nursery per request, and the decision when an actor fails.

Every request — streaming or not — runs the same chain of actors over small bounded channels::

    router → connector → transformer → accountant → id encoder → sink

An upstream failure (a status, a reset, a deadline, malformed data) does not cancel the chain
where it happens: it travels down as a ``Failure`` item behind the data read before it, so
nothing already read is lost, and the sink raises it into the nursery once everything before it
is delivered. Any other exception (a bug) cancels the siblings at once. Either way the
supervisor decides what the caller gets (docs/design.md §2):

- nothing was delivered yet: the error itself (a streaming caller receives it as data on its
  channel and raises it; a non-streaming caller gets it raised), so the HTTP face can still
  answer with a plain error status;
- events were delivered: the tracker closes whatever is open and ends the response with one
  ``response.failed``, so every response ends in exactly one terminal event.

Cancellation from outside (the caller left, ``cancel_response``, shutdown) is never swallowed:
it cancels the nursery, which closes the upstream connection. What it means for the record:

- a foreground response: ``cancelled`` (its caller left), unless its owner says the server is
  stopping under a caller that is still there (``Recording.interrupted``): then it ends as a
  failure after delivery does — open items closed, one ``response.failed`` — recorded
  ``failed``, and those closing events are left on the recording for the owner to send;
- a background response: ``cancelled`` when ``cancel_response`` asked, else ``failed`` (the
  gateway shut down under it); when another process ended it first (a cancel there), that end
  stands and only the usage is added;
- a request no upstream answered yet ends recorded too, under an ID of its own, as above.

A native upstream may end a background response without a terminal event on its stream (it was
cancelled there): the connector raises ``UpstreamEndedError`` with the upstream's final response,
and that end is recorded here, with the usage it reports priced (``_record_upstream_end``).

Whatever the end, every request that reached the pipeline ends in exactly one recorded ``Ended``
(docs/design.md §5): the sink records a terminal event before delivering it; a failure is recorded
here before its closing events are delivered; a cancellation is recorded here, shielded (for a
bounded time), before the cancellation goes on.
"""

from __future__ import annotations

import logging
import secrets
from functools import partial

import attrs
import trio

from .._types import Response, ResponseStatus
from ..actors._accountant import Accountant, run_accountant
from ..actors._connector import Connector, relay_into, run_connector
from ..actors._plan import RoutePlan, run_router
from ..actors._recorder import Recording, unanswered_response
from ..actors._router import Router
from ..actors._stages import (
    IdEncoder,
    Sink,
    Transformer,
    caller_fields,
    run_id_encoder,
    run_sink,
    run_transformer,
    seal_output,
)
from ..codecs._lifecycle import StreamTracker, failure_code
from ..codecs.ids import IdCodec
from ..codecs.sealed import StateSeal
from ..errors import (
    ClientError,
    InternalError,
    RateLimitError,
    SluicegateError,
    StoreError,
    UpstreamEndedError,
)
from ..runtime._messages import Deliver, EventItem, PreparedCall, RawItem, Routed

__all__ = ["Pipeline", "record_end_now", "record_unanswered", "run_request"]

logger = logging.getLogger("sluicegate")

#: Channel buffers. Small on purpose: a slow caller must slow the upstream (docs/design.md §2).
RAW_BUFFER = 2
EVENT_BUFFER = 2


@attrs.define(eq=False)
class Pipeline:
    """The gateway-wide services every request's actors share."""

    router: Router
    connector: Connector
    accountant: Accountant
    ids: IdCodec
    #: Seals native provider state (``encrypted_content``) for its deployment.
    seal: StateSeal
    #: The fused layout (the default) or every actor in a task of its own (docs/design.md §2.1).
    fused: bool = True


async def run_request(
    pipeline: Pipeline,
    call: PreparedCall,
    tracker: StreamTracker,
    deliver: Deliver | None = None,
    recording: Recording | None = None,
) -> None:
    """Run one request to its end.

    With ``deliver`` (streaming), batches go to that channel as they are ready and any error is
    delivered as data; the channel is left open for the caller's owner to close. Without it
    (non-streaming), events are only tracked (``tracker.fold()`` is the answer) and an error
    before any event is raised. With ``recording``, the response is recorded in the store.
    """
    failure: SluicegateError | None = None
    try:
        try:
            if pipeline.fused:
                await _run_fused(pipeline, call, tracker, deliver, recording)
            else:
                await _run_unfused(pipeline, call, tracker, deliver, recording)
        except* SluicegateError as group:
            failure = _first(group)
        except* Exception as group:
            logger.error("request failed on an internal error", exc_info=group)
            failure = InternalError("The gateway failed while handling this request.")
    except BaseException:  # cancelled: the caller left, cancel_response, or shutdown
        if recording is not None:
            await _record_cancelled(pipeline.ids, recording, tracker, call)
        raise
    if recording is not None and recording.ended_elsewhere:
        # Its terminal could not be recorded: another process had ended it (a cancel there).
        # That end stands; the run stops here, as a cancelled one does, with nothing more sent.
        return
    if recording is not None:
        recording.failure = failure
    if isinstance(failure, UpstreamEndedError) and recording is not None and recording.open:
        # Its upstream ended it without a terminal event (cancelled there): that end is
        # recorded, and its stream ends without a terminal event, as a cancel here leaves it.
        await _record_upstream_end(pipeline, call, recording, tracker, failure)
        return
    if failure is None:
        if recording is not None and recording.open:  # pragma: no cover -- a bug if it happens
            failure = InternalError("The response ended without a terminal event.")
        else:
            return
    if not tracker.delivered_any:
        if recording is not None and recording.open:
            await _record_end(recording, tracker, ResponseStatus.FAILED, failure)
        elif recording is not None and not recording.accepted:
            await record_unanswered(pipeline.ids, recording, call, failure)
        if deliver is None:
            raise failure
        await deliver.send(failure)
        return
    closing = tracker.fail(failure)
    if recording is not None and recording.open:
        await _record_end(recording, tracker, ResponseStatus.FAILED, failure)
    if deliver is None and isinstance(failure, StoreError):
        # The answer is there but the store could not record it (its database is down): a
        # non-streaming caller is told so, with the store's 503 it may retry, rather than
        # handed a response that reads as failed upstream and that no later GET would find.
        raise failure
    if closing and deliver is not None:
        await deliver.send(closing)


#: The provider an unanswered response's ID names: none answered. Not a native provider, so
#: GET reads such a response from the store, where all there is of it lives.
UNANSWERED_PROVIDER = "none"

#: How long a cancelled request may still take to record its end (seconds).
RECORD_GRACE = 10.0

_SHUTDOWN_ERROR = InternalError("The gateway shut down before this response finished.")


async def _record_cancelled(
    ids: IdCodec, recording: Recording, tracker: StreamTracker, call: PreparedCall
) -> None:
    error: SluicegateError | None = None
    if call.background:
        # Ends as cancelled only when cancel_response asked (here, or in another process that
        # ended it); otherwise the gateway is shutting down under it, which is a failure the
        # client must be able to see.
        if not (recording.cancel_requested or recording.ended_elsewhere):
            if recording.hand_over and recording.upstream_id is not None and not recording.ended:
                # Its native upstream runs it on: left unfinished in the store, for the next
                # gateway on it (or another instance) to take over (docs/background.md).
                return
            error = _SHUTDOWN_ERROR
    elif recording.interrupted is not None:
        error = recording.interruption = recording.interrupted()
        if error is not None:
            # Ends as a failure after delivery does (nothing, if its terminal is recorded).
            recording.closing = tracker.fail(error)
    if recording.ended:
        return
    status = ResponseStatus.CANCELLED if error is None else ResponseStatus.FAILED
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + RECORD_GRACE
        if recording.ended_elsewhere:
            await _settle_ended_elsewhere(recording, tracker)
        elif recording.open:
            await _record_end(recording, tracker, status, error)
        else:
            await _record_unanswered(ids, recording, call, status, error)
    if scope.cancelled_caught:
        logger.error("could not record the end of response %s in time", recording.response_id)


async def _settle_ended_elsewhere(recording: Recording, tracker: StreamTracker) -> None:
    """Another process ended the response (a cancel there) and this one stopped running it:
    the usage so far is billed, estimated from what was delivered."""
    settlement = recording.estimate(_output_chars(tracker.partial() or recording.initial))
    try:
        await recording.settle(settlement)
    except SluicegateError:
        logger.exception("could not record the usage of response %s", recording.response_id)


async def record_unanswered(
    ids: IdCodec, recording: Recording, call: PreparedCall, failure: SluicegateError
) -> None:
    """A request no upstream answered ends recorded too (docs/design.md §5: nothing is lost), under
    an ID of its own that the error carries (``x-sluicegate-response-id``) and GET finds: every
    attempt failed, or every deployment was cooling (503) or at its rpm/tpm limit (429). A
    request the caller got wrong (a 4xx of ours, such as a parameter a bridge cannot take)
    never became a response: it is refused, not recorded. (A key's own limits are the proxy's,
    refused before the gateway sees the request.)"""
    if isinstance(failure, ClientError) and not isinstance(failure, RateLimitError):
        return
    response_id = await _record_unanswered(ids, recording, call, ResponseStatus.FAILED, failure)
    if response_id is not None:
        failure.headers["x-sluicegate-response-id"] = response_id


async def _record_unanswered(
    ids: IdCodec,
    recording: Recording,
    call: PreparedCall,
    status: ResponseStatus,
    error: SluicegateError | None,
) -> str | None:
    """Record a request no upstream answered as ``status``, under an ID of its own (None if
    that failed): a failure (every attempt failed, nothing could take it), or a cancellation
    before the first byte (its caller left, or the server stopped)."""
    response_id = ids.encode(
        provider=UNANSWERED_PROVIDER,
        deployment_id="",
        raw_id=f"resp_{secrets.token_hex(24)}",
        owner=call.owner,
    )
    error_body = None
    if error is not None:
        error_body = {"code": failure_code(error), "message": error.message}
    response = unanswered_response(
        call, response_id, recording.created_at, status=status.value, error=error_body
    )
    try:
        await recording.refuse(response_id, error=error_body, response=response, status=status)
    except SluicegateError:
        logger.exception("could not record the end of response %s", response_id)
        return None
    return response_id


async def _record_end(
    recording: Recording,
    tracker: StreamTracker,
    status: ResponseStatus,
    error: SluicegateError | None,
) -> None:
    """Record the end of a response its upstream did not end, with estimated usage."""
    error_body = None
    if error is not None:
        error_body = {"code": failure_code(error), "message": error.message}
    if tracker.terminal is not None:  # the tracker's own response.failed
        response: Response | None = tracker.fold()
    else:
        response = tracker.partial() or recording.initial
    settlement = recording.estimate(_output_chars(response))
    if response is not None:
        response = response.with_changes(
            status=status.value, error=error_body, usage=settlement.usage
        )
    try:
        await recording.end(status, error=error_body, response=response, settlement=settlement)
    except SluicegateError:
        if not recording.ended_elsewhere:  # else its end stands, and the usage was added
            logger.exception("could not record the end of response %s", recording.response_id)


async def record_end_now(
    recording: Recording, tracker: StreamTracker, error: SluicegateError
) -> None:
    """End a response that will not run (again) as ``failed`` with ``error``, with what it
    delivered so far (a background response taken over whose deployment is gone)."""
    await _record_end(recording, tracker, ResponseStatus.FAILED, error)


async def _record_upstream_end(
    pipeline: Pipeline,
    call: PreparedCall,
    recording: Recording,
    tracker: StreamTracker,
    ended: UpstreamEndedError,
) -> None:
    """Record the end a native upstream gave a background response without a terminal event
    (docs/background.md): its status and its final Response (under our ID, its state sealed),
    and the usage it reports, priced (if it reports none, estimated from what it shows or what
    was delivered, whichever is more, as a cancel here is)."""
    deployment = call.deployment
    assert deployment is not None and recording.response_id is not None
    settlement = pipeline.accountant.settle_usage(
        ended.response.get("usage"), pipeline.accountant.price_for(deployment)
    )
    response = Response.from_dict(ended.response)
    if settlement.usage is None:
        delivered = tracker.partial() or recording.initial
        settlement = recording.estimate(max(_output_chars(response), _output_chars(delivered)))
    else:
        pipeline.accountant.report(deployment, settlement)
    response = response.with_changes(
        **caller_fields(call, recording.response_id),
        status=ended.status,
        usage=settlement.usage,
        output=seal_output(pipeline.seal, deployment.id, ended.response.get("output") or []),
    )
    try:
        await recording.end(
            ResponseStatus(ended.status),
            error=response.error,
            response=response,
            settlement=settlement,
        )
    except SluicegateError:
        if not recording.ended_elsewhere:  # else its end stands, and the usage was added
            logger.exception("could not record the end of response %s", recording.response_id)


def _output_chars(response: Response | None) -> int:
    """Characters of output a response shows (text, refusals, tool arguments, summaries)."""
    if response is None:
        return 0
    total = 0
    for item in response.output:
        total += len(str(item.get("arguments") or "")) + len(str(item.get("input") or ""))
        for part in (item.get("content") or []) + (item.get("summary") or []):
            if isinstance(part, dict):
                total += len(str(part.get("text") or part.get("refusal") or ""))
    return total


async def _run_fused(
    pipeline: Pipeline,
    call: PreparedCall,
    tracker: StreamTracker,
    deliver: Deliver | None,
    recording: Recording | None,
) -> None:
    """The fused layout: the route plan, the connector and the pure actors after it, called in
    order in this task. The one asynchronous boundary is towards a streaming caller
    (``deliver``), which carries its backpressure; a non-streaming request starts no task."""
    routed = await RoutePlan(pipeline.router, call).first()
    chain = _Fused(
        Transformer(),
        pipeline.accountant,
        IdEncoder(pipeline.ids, pipeline.seal),
        Sink(tracker, recording, deliver),
    )
    if await relay_into(pipeline.connector, routed, chain):
        await chain.finish()
    if chain.error is not None:
        raise chain.error


@attrs.define(eq=False)
class _Fused:
    """transformer → accountant → ID encoder → sink as the connector's outbox: each item the
    connector reads goes through all four before it reads the next.

    A stage's error (a Failure reaching the sink, a broken event order, a failed recording)
    tells the connector that downstream stopped listening, as a closed channel does in the
    unfused layout; the supervisor gets the error itself from :attr:`error`."""

    _transformer: Transformer
    _accountant: Accountant
    _encoder: IdEncoder
    _sink: Sink
    error: SluicegateError | None = None

    async def send(self, value: RawItem, /) -> None:
        if self.error is not None:
            raise trio.BrokenResourceError
        try:
            await self._take(self._transformer.feed(value))
        except SluicegateError as exc:
            self.error = exc
            raise trio.BrokenResourceError from exc

    async def finish(self) -> None:
        """The body ended cleanly: the events its last bytes complete."""
        try:
            await self._take(self._transformer.close())
        except SluicegateError as exc:
            self.error = exc

    async def _take(self, item: EventItem | None) -> None:
        if item is not None:
            await self._sink.take(self._encoder.encode(self._accountant.price(item)))


async def _run_unfused(
    pipeline: Pipeline,
    call: PreparedCall,
    tracker: StreamTracker,
    deliver: Deliver | None,
    recording: Recording | None,
) -> None:
    """The unfused layout: every actor in a task of its own, over small bounded channels (the
    sink in this task). It behaves as the fused one does; the test suite runs in both."""
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
            partial(
                run_id_encoder,
                pipeline.ids,
                pipeline.seal,
                inbox=priced_recv,
                outbox=encoded_send,
            )
        )
        with call_send:
            await call_send.send(call)
        await run_sink(Sink(tracker, recording, deliver), inbox=encoded_recv)


def _first(group: BaseExceptionGroup[SluicegateError]) -> SluicegateError:
    """The error that ended the request (the innermost first; there is one in practice)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    raise AssertionError("empty exception group")  # pragma: no cover
