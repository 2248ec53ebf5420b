"""The recorder: what every request writes to the event store (docs/design.md §5).

Theory of operation. The recorder works in the sink's task, on the events the tracker has
checked (renumbered as the caller sees them), so what is stored is what was delivered:

- the batch in which the upstream first names the response: ``Accepted`` (who, what, the input)
  and ``Routed`` (deployment, attempt, the upstream's own ID), *queued* without waiting for the
  commit: nothing waits on it, and the writer keeps the order;
- ``response.output_item.done``: an ``ItemDone``. A background response queues it at once (it
  is polled while it runs); any other keeps it for the terminal append (one commit less);
- a background streamed response: every event (``StreamEventRecorded``), for resume;
- the terminal event: ``Settled`` + ``Ended`` (with the final Response), *appended and awaited*
  before the sink delivers the event: a follow-up sent the moment the stream ends finds it.

A response that ends otherwise — failed after events were delivered, cancelled by its caller or
by ``cancel_response``, cut by a server shutting down — is ended by the supervisor through
:meth:`Recording.end`, with usage estimated from what was delivered when the upstream never
reported it. A request cancelled before any upstream answered is accepted and ended in one append
(:meth:`Recording.refuse`). Every response that was accepted ends in exactly one recorded
``Ended``.

A background response may be ended by *another* process sharing the store (``cancel_response``
there appends its ``Ended`` first, so the answer and the store agree). The process running it
then finds its own end refused, or notices the ended row first; either way that end stands, and
this recording adds what it knows of the usage (``Settled``) without a second ``Ended``
(:attr:`Recording.ended_elsewhere`).

``store: false`` records the accounting only: no parameters, input, items or final Response.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._types import DeltaEvent, OutputItemEvent, Response, ResponseEvent, ResponseStatus
from ..errors import StoreIntegrityError, StoreUnavailableError
from ..runtime._messages import Settlement
from ..store import Accepted, Ended, ItemDone, Record, Routed, Settled, StreamEventRecorded

if TYPE_CHECKING:
    from .._types import StreamEvent
    from ..codecs._lifecycle import StreamTracker
    from ..config import Deployment
    from ..errors import SluicegateError
    from ..runtime._messages import Batch, ConversationTurn, PreparedCall
    from ..store import Store
    from ._accountant import Accountant

__all__ = ["Recorder", "Recording", "unanswered_response"]


@attrs.define(eq=False)
class Recorder:
    """Gateway-wide: the store, and the clocks every request's recording reads."""

    store: Store
    accountant: Accountant
    #: Wall-clock seconds for stored timestamps (``created_at``, spend-log days).
    wall_clock: Callable[[], float] = time.time
    #: Called once the end of a response made in a conversation the gateway holds is
    #: committed, before its terminal event is delivered: appends its turn to the
    #: conversation (``_gateway/_conversations.py``; never raises but ``Cancelled``).
    conversation_ended: (
        Callable[[ConversationTurn, ResponseStatus, Response | None], Awaitable[None]] | None
    ) = None

    def start(self, call: PreparedCall) -> Recording:
        """The recording of one request, started now."""
        return Recording(
            recorder=self,
            call=call,
            started=trio.current_time(),
            created_at=self.wall_clock(),
        )

    def accepted(self, call: PreparedCall, response_id: str, created_at: float) -> Accepted:
        body = call.body
        return Accepted(
            response_id=response_id,
            owner=call.owner,
            model=call.model,
            params=_stored_params(call) if call.store else {},
            input_items=call.input_items,
            background=call.background,
            store=call.store,
            metadata=dict(body.get("metadata") or {}),
            created_at=created_at,
            previous_id=call.previous_response_id,
            spend_metadata=dict(call.spend_metadata),
        )


@attrs.define(eq=False)
class Recording:
    """What one request has recorded so far; see the module docstring."""

    _recorder: Recorder
    _call: PreparedCall
    #: ``trio.current_time()`` when the request started (for ttft and duration).
    _started: float
    created_at: float
    response_id: str | None = None
    #: ``Accepted`` is queued (a background response's is appended before it starts).
    accepted: bool = False
    ended: bool = False
    _ttft: float | None = None
    _pending: list[Record] = attrs.Factory(list)
    _deployment: Deployment | None = None
    #: A background response as its creator first saw it (``queued``), until the upstream
    #: answers; what a cancelled or failed response falls back on.
    initial: Response | None = None
    #: ``cancel_response`` asked for the end (not a shutdown).
    cancel_requested: bool = False
    #: A foreground response cancelled from outside asks this how it ends: None, its caller
    #: left (``cancelled``); an error, the server is stopping under a caller that is still
    #: there (``failed`` with that error). Unset: the caller left.
    interrupted: Callable[[], SluicegateError | None] | None = None
    #: What ``interrupted`` answered, once it was asked.
    interruption: SluicegateError | None = None
    #: When interrupted: the events that close it (open items, one ``response.failed``), as
    #: recorded, for its owner to deliver (none if its own terminal was recorded first).
    closing: list[StreamEvent] = attrs.Factory(list)
    #: Another process ended it first (see the module docstring).
    ended_elsewhere: bool = False
    #: The ID its upstream knows it by, once the upstream named it.
    upstream_id: str | None = None
    #: A background response its native upstream runs, in a store that outlives the process:
    #: a shutdown leaves it unfinished there, for the next gateway to take over.
    hand_over: bool = False
    #: Output items the store holds already (a background response taken over after a
    #: restart, whose upstream streams them again): their ``ItemDone`` is not recorded twice.
    items_recorded: int = 0
    #: The error the supervisor ended it with, if it ended on one (a background response the
    #: gateway gave up on is then cancelled at its upstream: docs/background.md).
    failure: SluicegateError | None = None

    @property
    def replay(self) -> bool:
        """Its events are stored for resume (a streamed background response)."""
        return self._call.replay

    @property
    def open(self) -> bool:
        """Accepted and not yet ended: the supervisor must end it."""
        return self.accepted and not self.ended

    async def observe(
        self, batch: Batch, events: list[StreamEvent], tracker: StreamTracker
    ) -> None:
        """Record a batch of checked events (see the module docstring)."""
        call = self._call
        records = self._pending
        if batch.upstream_id is not None:
            self.upstream_id = batch.upstream_id
            if self.response_id is None:
                self.response_id = _response_id(events)
            rid = self.response_id
            if not self.accepted:
                records.append(self._recorder.accepted(call, rid, self.created_at))
                self.accepted = True
            d = batch.routed.deployment
            self._deployment = d
            records.append(
                Routed(
                    response_id=rid,
                    deployment_id=d.id,
                    provider=d.provider,
                    attempt=batch.routed.attempt,
                    upstream_id=batch.upstream_id,
                )
            )
        if self.response_id is None:  # pragma: no cover -- nothing comes before created
            return
        rid = self.response_id
        terminal: ResponseEvent | None = None
        for event in events:
            kind = type(event)
            if kind is OutputItemEvent:
                if self._ttft is None:
                    self._ttft = trio.current_time() - self._started
                if call.store and event.type == "response.output_item.done":
                    assert isinstance(event, OutputItemEvent)
                    if event.output_index >= self.items_recorded:
                        records.append(
                            ItemDone(
                                response_id=rid, output_index=event.output_index, item=event.item
                            )
                        )
            elif kind is DeltaEvent:
                if self._ttft is None:
                    self._ttft = trio.current_time() - self._started
            elif kind is ResponseEvent and event.is_terminal:  # type: ignore[attr-defined]
                assert isinstance(event, ResponseEvent)
                terminal = event
            if call.replay:
                records.append(
                    StreamEventRecorded(
                        response_id=rid,
                        sequence_number=event.sequence_number,
                        event=event.to_dict(),
                    )
                )
        if terminal is not None:
            response = tracker.fold()
            await self.end(
                ResponseStatus(response.status),
                error=response.error,
                response=response,
                settlement=batch.settlement,
            )
        elif records and (call.background or batch.upstream_id is not None):
            # Accepted/Routed (the batch naming the upstream ID) go out at once, so a GET
            # mid-stream finds the response; a foreground response's item content waits for
            # the terminal append. A background one's is polled: it goes out with every batch.
            self._pending = []
            await self._recorder.store.enqueue(records)

    def estimate(self, output_chars: int) -> Settlement:
        """Usage estimated from the input and the ``output_chars`` delivered."""
        call = self._call
        input_chars = len(str(call.body.get("input") or "")) + len(
            str(call.body.get("instructions") or "")
        )
        price = None
        deployment = self._deployment or call.deployment
        if deployment is not None:
            price = self._recorder.accountant.price_for(deployment)
        return self._recorder.accountant.estimate(input_chars, output_chars, price)

    async def refuse(
        self,
        response_id: str,
        *,
        error: dict[str, Any] | None,
        response: Response | None,
        status: ResponseStatus = ResponseStatus.FAILED,
    ) -> None:
        """Record a request that ended before any upstream named a response (every attempt
        failed, no deployment could take it, or it was cancelled first): accepted and ended
        (``failed``, or ``status``) in one append, with no usage and nothing owed (nothing was
        generated), so the spend logs show it."""
        assert not self.accepted
        self.response_id = response_id
        self._pending.insert(0, self._recorder.accepted(self._call, response_id, self.created_at))
        self.accepted = True
        await self.end(status, error=error, response=response, settlement=_NOTHING_OWED)

    async def end(
        self,
        status: ResponseStatus,
        *,
        error: dict[str, Any] | None,
        response: Response | None,
        settlement: Settlement | None,
    ) -> None:
        """Append ``Settled`` + ``Ended`` (and whatever is pending) and wait for the commit:
        the terminal event of the upstream, or an end the supervisor decided (failed
        mid-stream, cancelled)."""
        rid = self.response_id
        assert rid is not None and not self.ended
        call = self._call
        self.ended = True
        records = self._pending
        self._pending = []
        if settlement is not None:
            records.append(
                Settled(
                    response_id=rid,
                    usage=settlement.usage,
                    cost=settlement.cost,
                    estimated=settlement.estimated,
                )
            )
        records.append(
            Ended(
                response_id=rid,
                status=status,
                error=error,
                response=response.to_dict() if call.store and response is not None else None,
                completed_at=self._recorder.wall_clock(),
                ttft=self._ttft,
                duration=trio.current_time() - self._started,
            )
        )
        store = self._recorder.store
        try:
            # Shielded: once an end is on its way to the store, a cancellation (the caller
            # left, a shutdown) waits for its verdict, so the end that was recorded is known
            # and can still be delivered.
            grace = trio.current_time() + END_COMMIT_GRACE
            with trio.CancelScope(shield=True, deadline=grace) as commit:
                await store.append(records)
            if commit.cancelled_caught:
                raise StoreUnavailableError(f"the end of response {rid} was not committed in time")
            turn, hook = call.conversation, self._recorder.conversation_ended
            if turn is not None and turn.held and hook is not None:
                # Shielded like the end: the turn a caller is told of is in the conversation.
                with trio.CancelScope(shield=True):
                    await hook(turn, status, response)
        except StoreIntegrityError:
            row = await store.get(rid)
            if row is None or not row.status.is_terminal:
                raise
            # Ended by another process first: its end stands (it was acknowledged), what this
            # one knows is kept and billed. Still raised: this end was not recorded.
            self.ended_elsewhere = True
            await store.append(records[:-1])
            raise

    async def settle(self, settlement: Settlement) -> None:
        """For a response another process ended (:attr:`ended_elsewhere`): append what is
        pending and the usage, without an ``Ended`` of its own."""
        rid = self.response_id
        assert rid is not None and not self.ended
        self.ended = True
        records = self._pending
        self._pending = []
        records.append(
            Settled(
                response_id=rid,
                usage=settlement.usage,
                cost=settlement.cost,
                estimated=settlement.estimated,
            )
        )
        await self._recorder.store.append(records)


#: The longest an end waits for its commit, whatever cancels its request (seconds).
END_COMMIT_GRACE = 10.0

#: What a request no upstream answered cost: no usage was reported, and nothing is owed.
_NOTHING_OWED = Settlement(None, 0.0)


def _stored_params(call: PreparedCall) -> dict[str, Any]:
    params = {k: v for k, v in call.body.items() if k != "input"}
    if call.background:
        params["background"] = True
        params["stream"] = call.replay
    return params


def _response_id(events: list[StreamEvent]) -> str:
    for event in events:
        if type(event) is ResponseEvent:
            return str(event.response_data["id"])
    raise AssertionError("a batch naming the upstream ID carries a response event")


def unanswered_response(
    call: PreparedCall,
    response_id: str,
    created_at: float,
    *,
    status: str,
    error: dict[str, Any] | None = None,
) -> Response:
    """A response no upstream answered yet (a background one, ``queued``) or ever (``failed``
    before any event): the Responses API reference's shape, no output, the request's configuration
    echoed back."""
    body = call.body
    return Response.from_dict(
        {
            "id": response_id,
            "object": "response",
            "created_at": int(created_at),
            "status": status,
            "background": call.background,
            "error": error,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": call.model,
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": call.previous_response_id,
            "reasoning": body.get("reasoning"),
            "store": call.store,
            "temperature": body.get("temperature"),
            "text": body.get("text"),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p"),
            "truncation": body.get("truncation", "disabled"),
            "usage": None,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }
    )
