"""Background responses while they run, and the streams that follow them.

Theory of operation: a background response (``background: true``) runs in the gateway's service
nursery, detached from whoever created it (DESIGN §2). Its deliveries go to a :class:`LiveRun`
instead of a caller's channel: the run keeps every event delivered so far (memory bounded by the
response itself, which the store holds too) and wakes its followers on each batch. Nothing waits
for a follower: a slow or absent one never slows the run.

A :class:`Follower` is what ``stream(background=True)`` and ``get_response(id, stream=True,
starting_after=N)`` read: the events after sequence number N, first those already there, then
live ones as they come, to the end. A run in this process is followed from memory; one that has
ended (or ran in a process since gone) is replayed from the store's recorded events. Events are
numbered gaplessly from 0, so the events after N are ``events[N + 1:]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from ._types import event_from_wire
from .errors import SluicegateError

if TYPE_CHECKING:
    from ._types import StreamEvent
    from .actors._recorder import Recording
    from .codecs._lifecycle import StreamTracker
    from .runtime._messages import Delivery
    from .store import Store

__all__ = ["Follower", "LiveRun"]

#: Events read from the store per query when replaying.
REPLAY_PAGE = 500


@attrs.define(eq=False)
class LiveRun:
    """A background response running in this process (see the module docstring)."""

    response_id: str
    tracker: StreamTracker
    recording: Recording
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    events: list[StreamEvent] = attrs.Factory(list)
    #: The error that ended it before any event.
    error: SluicegateError | None = None
    finished: trio.Event = attrs.Factory(trio.Event)
    _changed: trio.Event = attrs.Factory(trio.Event)

    async def send(self, value: Delivery, /) -> None:
        """The run's deliveries (the ``Deliver`` protocol): kept, and followers woken."""
        if isinstance(value, SluicegateError):
            self.error = value
        elif self.recording.replay:  # only a streamed background response can be followed
            self.events.extend(value)
        self._wake()
        await trio.lowlevel.checkpoint()

    def finish(self) -> None:
        self.finished.set()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


@attrs.define(eq=False)
class Follower:
    """Reads a background response's events after ``after``: ``receive()`` returns the next
    batch and raises ``trio.EndOfChannel`` at the end (the shape :class:`ResponseStream` reads).
    """

    _response_id: str
    _live: LiveRun | None
    _store: Store
    _after: int = -1

    async def receive(self) -> Delivery:
        live = self._live
        if live is None:
            batch = await self._store.stream_events(
                self._response_id, after=self._after, limit=REPLAY_PAGE
            )
            if not batch:
                raise trio.EndOfChannel
            events = [event_from_wire(data) for data in batch]
            self._after = events[-1].sequence_number
            return events
        while True:
            fresh = live.events[self._after + 1 :]
            if fresh:
                self._after = fresh[-1].sequence_number
                return fresh
            if live.finished.is_set():
                if live.error is not None and self._after < 0:
                    return live.error
                raise trio.EndOfChannel
            await live.wait_changed()
