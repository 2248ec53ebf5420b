"""The events of a streamed response as its caller reads them, and how a stream is run.

A foreground stream runs its request in a nursery of its own (:func:`open_response_stream`):
the pipeline hands batches over a one-slot memory channel, and the caller's
:class:`ResponseStream` reads them. A stream that follows a background response reads a
:class:`~sluicegate._gateway._background.Follower` instead (:func:`follow`): the response runs on
in the service nursery whatever its reader does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from .._types import Response, ResponseEvent, StreamEvent
from ..codecs._lifecycle import StreamTracker
from ..errors import SluicegateError, UpstreamProtocolError
from ..runtime._messages import Delivery, PreparedCall
from ..runtime._scopes import open_body_nursery
from ._host import HostReader
from ._pipeline import Pipeline, run_request

if TYPE_CHECKING:
    from ..actors._recorder import Recording
    from ._host import CrossChannel, Session

__all__ = [
    "Receiver",
    "ResponseStream",
    "Sender",
    "cross_twin",
    "follow",
    "held_stream_twin",
    "hold_stream",
    "memory_channel",
    "open_response_stream",
    "stream_twin",
]


class _Source(Protocol):
    async def receive(self) -> Delivery: ...


class _Closable(Protocol):
    """A channel end that its ``with`` closes."""

    def __enter__(self) -> object: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> object: ...


class Sender(_Closable, Protocol):
    """A stream channel's sending end (a trio memory channel's, or a cross-loop one's)."""

    async def send(self, value: Delivery, /) -> None: ...


class Receiver(_Source, _Closable, Protocol):
    """A stream channel's receiving end, read from trio."""

    def receive_nowait(self) -> Delivery: ...


def memory_channel() -> tuple[Sender, Receiver]:
    """The one-slot channel of a stream read from trio."""
    send, recv = trio.open_memory_channel[Delivery](1)
    return send, recv


@attrs.define(eq=False)
class ResponseStream:
    """The events of one streamed response, as the caller iterates them.

    ``async for event in stream`` yields typed :class:`~sluicegate.StreamEvent` objects;
    ``final_response`` is the folded :class:`Response` once the terminal event has been read.
    A stream that follows a background response (``stream(background=True)``, or
    ``get_response(id, stream=True)``) ends without a terminal event if the response was
    cancelled.
    """

    _recv: _Source
    _tracker: StreamTracker | None
    _batch: list[StreamEvent] = attrs.Factory(list)
    _index: int = 0
    _terminal: ResponseEvent | None = None
    _closing: list[StreamEvent] = attrs.Factory(list)
    #: What :meth:`aclose` awaits after dropping the batch in hand, instead of a trio
    #: checkpoint (a twin read from asyncio: that loop's checkpoint, or ending the session
    #: that holds its original). Called again by a second ``aclose``.
    _closer: Callable[[], Awaitable[None]] | None = None

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> StreamEvent:
        while self._index >= len(self._batch):
            try:
                item = await self._recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise StopAsyncIteration from None
            if isinstance(item, SluicegateError):
                raise item
            self._batch = item
            self._index = 0
        event = self._batch[self._index]
        self._index += 1
        if type(event) is ResponseEvent and event.is_terminal:
            self._terminal = event
        return event

    async def receive_delivery(self) -> Delivery:
        """The next delivery from the source as it comes (a batch, or an error as a value),
        past the batch in hand: what a :meth:`twin` reads through its source.

        Raises:
            trio.EndOfChannel: the stream has ended.
        """
        return await self._recv.receive()

    def twin(
        self, source: _Source, closer: Callable[[], Awaitable[None]] | None = None
    ) -> ResponseStream:
        """The same stream read through ``source`` (which reads this one's
        :meth:`receive_delivery`), starting with the batch in hand: the stream an asyncio
        caller iterates (``_host.py``)."""
        return ResponseStream(source, self._tracker, self.ready_nowait(), closer=closer)

    async def _prime(self) -> SluicegateError | None:
        """Wait for the first events; the error instead if the request failed before any."""
        try:
            item = await self._recv.receive()
        except trio.EndOfChannel:
            return UpstreamProtocolError("the upstream sent no events")
        if isinstance(item, SluicegateError):
            return item
        self._batch = item
        return None

    def ready_nowait(self) -> list[StreamEvent]:
        """The events already received and not yet iterated (the rest of the current batch),
        now, without waiting: a writer can send them in one write instead of one each."""
        ready = self._batch[self._index :]
        self._index = len(self._batch)
        for event in ready:
            if type(event) is ResponseEvent and event.is_terminal:
                self._terminal = event
        return ready

    @property
    def closing(self) -> list[StreamEvent]:
        """After the stream was interrupted (:meth:`Gateway.open_stream`): the events not read
        yet that end it, in order — those already on their way, then its open items closed and
        one ``response.failed``, as recorded (unless its own terminal event, recorded first,
        was among those on their way). Else empty."""
        return self._closing

    @property
    def final_response(self) -> Response | None:
        """The final Response, once the terminal event has been read; else None."""
        if self._tracker is not None and self._tracker.terminal is not None:
            return self._tracker.fold()
        return None if self._terminal is None else self._terminal.response

    async def get_final_response(self) -> Response:
        """Read the rest of the stream; the final Response."""
        async for _ in self:
            pass
        final = self.final_response
        if final is None:
            raise UpstreamProtocolError("the stream ended without a terminal event")
        return final

    async def __aenter__(self) -> ResponseStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading (a follower only detaches: the background response runs on)."""
        self._batch = []
        self._index = 0
        if self._closer is not None:
            await self._closer()
        else:
            await trio.lowlevel.checkpoint()


async def follow(source: _Source) -> ResponseStream:
    """A stream of a background response's events (a follower), primed: its first events are
    in hand.

    Raises:
        SluicegateError: the response failed before any event.
    """
    stream = ResponseStream(source, None)
    failure = await stream._prime()
    if failure is not None:
        raise failure
    return stream


@asynccontextmanager
async def open_response_stream(
    pipeline: Pipeline,
    call: PreparedCall,
    recording: Recording,
    interrupted: Callable[[], SluicegateError | None] | None,
    channel: Callable[[], tuple[Sender, Receiver]] = memory_channel,
) -> AsyncIterator[ResponseStream]:
    """Run a foreground streamed request in a nursery of its own; its stream, primed.

    ``channel`` makes the one-slot channel the batches take to the stream (an asyncio reader's
    is ``_host.CrossChannel``'s).

    Leaving the block early cancels the request (recorded ``cancelled``, or ``failed`` when
    ``interrupted`` answers an error: then :attr:`ResponseStream.closing` holds the events
    left to send).

    Raises:
        SluicegateError: the request failed before its first event.
    """
    send, recv = channel()
    tracker = StreamTracker()
    events = ResponseStream(recv, tracker)
    recording.interrupted = interrupted
    handoff = None if interrupted is None else _Handoff(send)
    # The channel closes only after the nursery: leaving the block early cancels the request
    # first (recorded cancelled), rather than breaking the channel under a sink that is
    # handing over the next batch.
    with recv:
        try:
            async with open_body_nursery() as nursery:
                nursery.start_soon(
                    _run_streaming, pipeline, call, tracker, send, handoff, recording
                )
                failure = await events._prime()
                if failure is not None:
                    raise failure
                yield events
        finally:
            if recording.interruption is not None:  # what was on its way goes first
                cut = [] if handoff is None else handoff.cut
                events._closing = [*_drain(recv), *cut, *recording.closing]


async def _run_streaming(
    pipeline: Pipeline,
    call: PreparedCall,
    tracker: StreamTracker,
    send: Sender,
    handoff: _Handoff | None,
    recording: Recording,
) -> None:
    with send:
        deliver = send if handoff is None else handoff
        await run_request(pipeline, call, tracker, deliver, recording)


@attrs.define(eq=False)
class _Handoff:
    """The pipeline's end of an interruptible stream's channel: it keeps the batch whose
    hand-over a cancellation cut (a memory channel's ``send`` that raises ``Cancelled`` has
    delivered nothing), so the stream's end can still deliver it, in order."""

    _send: Sender
    cut: list[StreamEvent] = attrs.Factory(list)

    async def send(self, value: Delivery, /) -> None:
        try:
            await self._send.send(value)
        except trio.Cancelled:
            if not isinstance(value, SluicegateError):
                self.cut = value
            raise


def _drain(recv: Receiver) -> list[StreamEvent]:
    """The events waiting in a channel, now."""
    events: list[StreamEvent] = []
    while True:
        try:
            value = recv.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return events
        if not isinstance(value, SluicegateError):
            events += value


# --- read from asyncio (``_host.py``) ---------------------------------------------------------


async def _asyncio_checkpoint() -> None:
    await asyncio.sleep(0)


def cross_twin(
    channel: CrossChannel[Delivery], session: Session[ResponseStream], stream: ResponseStream
) -> ResponseStream:
    """The asyncio twin of a foreground stream whose batches come over ``channel``: it reads
    them there itself (its session only holds the block)."""
    return stream.twin(HostReader(channel), _asyncio_checkpoint)


def stream_twin(session: Session[ResponseStream], stream: ResponseStream) -> ResponseStream:
    """The asyncio twin of a stream its session pumps (a follower), whose session ends with
    its ``async with`` block."""
    return stream.twin(session, _asyncio_checkpoint)


def held_stream_twin(session: Session[ResponseStream], stream: ResponseStream) -> ResponseStream:
    """The asyncio twin of a stream a call returned: closing it ends its session."""
    return stream.twin(session, partial(session.leave, None))


@asynccontextmanager
async def hold_stream(
    open_: Callable[[], Awaitable[ResponseStream]],
) -> AsyncIterator[ResponseStream]:
    """A stream a call returns (``get_response(stream=True)``) held as a context manager, closed
    on the way out."""
    stream = await open_()
    try:
        yield stream
    finally:
        await stream.aclose()
