"""The event stages between the connector and the caller: transformer, ID encoder, sink (the
accountant, between the first two, is ``_accountant.py``). Each is one actor of the shape
docs/design.md §2.2 describes; end of stream flows down by channel closure.

Items are batches (every event decoded from one network read) preceded by the ``Routed`` of the
attempt they belong to, so each stage knows the deployment without a side channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._types import OutputItemEvent, ResponseEvent, StreamEvent
from ..codecs._lifecycle import StreamTracker
from ..codecs._registry import is_bridged
from ..codecs.ids import IdCodec
from ..codecs.openai_responses import Decoder
from ..codecs.sealed import StateSeal
from ..errors import SluicegateError, UpstreamProtocolError
from ..runtime._messages import (
    Batch,
    Deliver,
    EventItem,
    Failure,
    RawItem,
    Routed,
    UpstreamOpened,
)

if TYPE_CHECKING:
    from ..runtime._messages import PreparedCall
    from ._recorder import Recording

__all__ = [
    "IdEncoder",
    "Sink",
    "Transformer",
    "caller_fields",
    "run_id_encoder",
    "run_sink",
    "run_transformer",
    "seal_item",
    "seal_output",
]


@attrs.define(eq=False)
class Transformer:
    """Provider bytes → canonical event batches: one request's decoder, fed item by item.

    Malformed or cut-off upstream data becomes a :class:`Failure` item, behind the batches
    decoded before it; after a Failure the transformer takes nothing more."""

    _routed: Routed | None = None
    _decoder: Decoder | None = None

    def feed(self, item: RawItem) -> EventItem | None:
        """The batch (or Failure) that ``item`` makes; None when it completes no event."""
        try:
            match item:
                case bytes():
                    assert self._decoder is not None, "body before UpstreamOpened"
                    events = self._decoder.feed(item)
                case UpstreamOpened():
                    self._routed = item.routed
                    self._decoder = item.decoder
                    events = item.decoder.feed(item.body)
                case Failure():
                    return item
        except SluicegateError as exc:  # malformed upstream data
            return Failure(exc)
        if not events:
            return None
        assert self._routed is not None
        return Batch(self._routed, events)

    def close(self) -> EventItem | None:
        """The body ended cleanly: the events its last bytes complete (a Failure when it was
        cut off mid-event)."""
        if self._decoder is None or self._routed is None:
            return None
        try:
            events = self._decoder.close()
        except SluicegateError as exc:
            return Failure(exc)
        return Batch(self._routed, events) if events else None


async def run_transformer(
    *,
    inbox: trio.MemoryReceiveChannel[RawItem],
    outbox: trio.MemorySendChannel[EventItem],
) -> None:
    """The :class:`Transformer` in a task of its own (the unfused layout)."""
    with inbox, outbox:
        transformer = Transformer()
        async for item in inbox:
            out = transformer.feed(item)
            if out is not None:
                await outbox.send(out)
                if isinstance(out, Failure):
                    return
        # Closed without a Failure: the body ended cleanly.
        out = transformer.close()
        if out is not None:
            await outbox.send(out)


@attrs.define(eq=False)
class IdEncoder:
    """Every event carrying a ``response`` gets the same encoded ID (docs/design.md §4). The batch
    in which the upstream first names its response carries that raw ID on (``upstream_id``).

    A native upstream's opaque state (an output item's ``encrypted_content``) is sealed for the
    deployment that issued it (``codecs/sealed.py``), in item events and in the Response's
    ``output`` alike, so the caller never holds state it could replay to the wrong account.
    Bridged providers' state is already the gateway's own envelope."""

    _ids: IdCodec
    _seal: StateSeal
    #: Raw upstream ID → the ID the caller sees, for this request.
    _encoded: dict[str, str] = attrs.Factory(dict)

    def encode(self, item: EventItem) -> EventItem:
        """``item`` with its IDs encoded and its state sealed (a Failure passes unchanged)."""
        if not isinstance(item, Batch):
            return item
        events = item.events
        first: str | None = None
        deployment = item.routed.deployment
        sealing = not is_bridged(deployment.provider)
        for i, event in enumerate(events):
            if type(event) is ResponseEvent:
                raw_id = event.response_data["id"]
                if raw_id not in self._encoded:
                    first = raw_id
                event = _encode(self._ids, item.routed, event, self._encoded)
                if sealing:
                    event = seal_response_event(self._seal, deployment.id, event)
                events[i] = event
            elif sealing and type(event) is OutputItemEvent:
                events[i] = seal_item_event(self._seal, deployment.id, event)
        if first is not None:
            item = attrs.evolve(item, upstream_id=first)
        return item


async def run_id_encoder(
    ids: IdCodec,
    seal: StateSeal,
    *,
    inbox: trio.MemoryReceiveChannel[EventItem],
    outbox: trio.MemorySendChannel[EventItem],
) -> None:
    """The :class:`IdEncoder` in a task of its own (the unfused layout)."""
    with inbox, outbox:
        encoder = IdEncoder(ids, seal)
        async for item in inbox:
            await outbox.send(encoder.encode(item))


def seal_item(seal: StateSeal, deployment_id: str, item: Any) -> Any:
    """``item`` with its ``encrypted_content`` sealed for ``deployment_id`` (the same object
    when it carries none)."""
    if not isinstance(item, dict):
        return item
    state = item.get("encrypted_content")
    if not isinstance(state, str) or not state:
        return item
    return {**item, "encrypted_content": seal.seal(deployment_id, state)}


def seal_output(seal: StateSeal, deployment_id: str, output: Any) -> Any:
    """A Response's ``output`` list with every item's state sealed (the same list if none)."""
    if not isinstance(output, list):
        return output
    sealed = [seal_item(seal, deployment_id, item) for item in output]
    if all(a is b for a, b in zip(sealed, output, strict=True)):
        return output
    return sealed


def seal_item_event(seal: StateSeal, deployment_id: str, event: OutputItemEvent) -> StreamEvent:
    item = event.data.get("item")
    sealed = seal_item(seal, deployment_id, item)
    if sealed is item:
        return event
    return OutputItemEvent(
        type=event.type, sequence_number=event.sequence_number, data={**event.data, "item": sealed}
    )


def seal_response_event(seal: StateSeal, deployment_id: str, event: ResponseEvent) -> ResponseEvent:
    output = event.response_data.get("output")
    sealed = seal_output(seal, deployment_id, output)
    if sealed is output:
        return event
    return event.with_response_fields(output=sealed)


def _encode(
    ids: IdCodec, routed: Routed, event: ResponseEvent, cache: dict[str, str]
) -> ResponseEvent:
    raw_id = event.response_data["id"]
    call = routed.call
    new_id = cache.get(raw_id)
    if new_id is None:
        d = routed.deployment
        new_id = cache[raw_id] = call.response_id or ids.encode(
            provider=d.provider, deployment_id=d.id, raw_id=raw_id, owner=call.owner
        )
    return event.with_response_fields(**caller_fields(call, new_id))


def caller_fields(call: PreparedCall, response_id: str) -> dict[str, Any]:
    """The fields of an upstream's Response that its caller sees as the gateway knows them:
    its ID ``response_id``, and what the upstream echoes in its own terms."""
    fields: dict[str, Any] = {"id": response_id}
    if call.previous_response_id is not None:
        # The upstream echoes the raw ID it was sent; the caller should see the one it sent.
        fields["previous_response_id"] = call.previous_response_id
    if call.conversation is not None:
        # A native upstream echoes the raw ID, a bridge none: the caller sees the one it sent.
        fields["conversation"] = {"id": call.conversation.id}
    if call.background:
        # The gateway runs it in the background; the upstream saw an ordinary request.
        fields["background"] = True
    return fields


@attrs.define(eq=False)
class Sink:
    """The caller's end: checks every event in delivery order (see tracker), records it (the
    recorder), then hands the batch to a streaming caller; a non-streaming caller folds the
    tracker at the end. A Failure is raised here, after everything before it was delivered.

    The terminal event is delivered only once the response is durably recorded (docs/design.md
    §5: an immediate follow-up must find it). If recording it fails, it is withdrawn and the
    error raised, so the supervisor ends the response as failed instead.

    It runs in the task that owns the request, so the caller's channel (``outbox``) is not
    closed here: the supervisor may still have to send a closing failure on it."""

    _tracker: StreamTracker
    _recording: Recording | None
    _outbox: Deliver | None

    async def take(self, item: EventItem) -> None:
        """Check, record and deliver one batch.

        Raises:
            SluicegateError: ``item`` is a Failure, the events broke the stream's order, or
                recording failed; everything valid before it was delivered.
        """
        if isinstance(item, Failure):
            raise item.error
        tracker, recording = self._tracker, self._recording
        checked: list[StreamEvent] = []
        broken: SluicegateError | None = None
        for event in item.events:
            try:
                checked.append(tracker.observe(event))
            except UpstreamProtocolError as exc:  # out of order: deliver what came before
                broken = exc
                break
        if recording is not None and checked:
            try:
                await recording.observe(item, checked, tracker)
            except SluicegateError as exc:
                if tracker.terminal is not None:
                    tracker.withdraw_terminal()
                    checked.pop()
                broken = exc
        if self._outbox is not None and checked:
            await self._outbox.send(checked)
        if broken is not None:
            raise broken


async def run_sink(
    sink: Sink,
    *,
    inbox: trio.MemoryReceiveChannel[EventItem],
) -> None:
    """The :class:`Sink` reading a channel (the unfused layout; it runs in the request's own
    task there too)."""
    with inbox:
        async for item in inbox:
            await sink.take(item)
