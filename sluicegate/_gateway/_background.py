"""Background responses while they run, and the streams that follow them.

Theory of operation: a background response (``background: true``) runs in the gateway's service
nursery, detached from whoever created it (docs/design.md §2). :class:`BackgroundRuns` starts it:
its ID is minted and its acceptance recorded before any upstream answered (the caller gets the ID at
once, and a GET sent the moment it returns finds it). A native upstream runs it in its own
background mode, followed through reconnects (``actors/_resume.py``), and bounded by
``background_timeout`` instead of the total timeout; a bridged provider is asked for an ordinary
streamed response, which this run is (docs/background.md). When the gateway gives up on a native
upstream's response that may still run there (its ``background_timeout`` or its reconnects ran
out), its end is recorded ``failed`` and then it is cancelled at the upstream, best effort, as a
forwarded cancel is (``StoredResponses.cancel_given_up``).

A native upstream's response outlives this gateway: a shutdown leaves it unfinished in a store
that outlives the process (``Recording.hand_over``), and the next gateway on that store (or
another instance, once this one's lease ran out) takes it over (:meth:`BackgroundRuns.take_over`,
``_takeover.py``), following the upstream's stream on from the last recorded event.

Its deliveries go to a :class:`LiveRun` instead of a caller's channel: the run keeps every event
delivered so far (memory bounded by the response itself, which the store holds too) and wakes
its followers on each batch. Nothing waits for a follower: a slow or absent one never slows the
run.

A :class:`Follower` is what ``stream(background=True)`` and ``get_response(id, stream=True,
starting_after=N)`` read: the events after sequence number N, first those already there, then
live ones as they come, to the end. A run in this process is followed from memory; one that has
ended (or ran in a process since gone) is replayed from the store's recorded events. Events are
numbered gaplessly from 0, so the events after N are ``events[N + 1:]``.

A store may be shared with other processes (a SQLite file) or instances (PostgreSQL): while runs
go on here, one task notices those another process ended (a cancel there) or deleted, and stops
them (``ENDED_ELSEWHERE_POLL``); and a follower of a response that runs elsewhere reads its
events from the store as they are committed, until its row says it ended (``FOLLOW_POLL``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._types import Response, ResponseStatus, event_from_wire
from ..actors._plan import route
from ..actors._recorder import Recorder, Recording, unanswered_response
from ..actors._router import env_deployment_id
from ..codecs._lifecycle import StreamTracker
from ..codecs._registry import is_bridged
from ..config import is_in_process_fake
from ..errors import (
    InternalError,
    SluicegateError,
    StoreError,
    UpstreamConnectionError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from ..runtime._messages import PreparedCall, ResumePoint
from ..store import RECOVERY_ERROR, Ended
from ._pipeline import Pipeline, record_end_now, record_unanswered, run_request

if TYPE_CHECKING:
    from .._types import StreamEvent
    from ..config import Deployment
    from ..runtime._messages import Delivery
    from ..store import ResponseRow, Store

#: How a taken-over background response ends when nothing can follow it any more.
RECOVERY_FAILURE = InternalError(str(RECOVERY_ERROR["message"]))

__all__ = ["ENDED_ELSEWHERE_POLL", "BackgroundRuns", "Follower", "LiveRun"]

logger = logging.getLogger("sluicegate")

#: Events read from the store per query when replaying.
REPLAY_PAGE = 500

#: How often a gateway running background responses looks for those another process ended.
ENDED_ELSEWHERE_POLL = 1.0

#: How often a follower of a response running in another process reads the store for its new
#: events: the most a resumed stream lags behind the instance that runs it (beside the
#: writer's linger).
FOLLOW_POLL = 0.1

#: How long a resume waits for the first recorded events of a background response running in
#: another process, before it answers that the response cannot be streamed again.
REPLAYABLE_WAIT = 2.0


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
    #: The store may be shared: a response not running here may still run elsewhere.
    _shared: bool = False

    async def receive(self) -> Delivery:
        live = self._live
        if live is None:
            return await self._receive_stored()
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

    async def _receive_stored(self) -> Delivery:
        """The next events from the store. A response still running (in another process or
        instance sharing the store) is followed as its events are committed: the store is read
        again every ``FOLLOW_POLL`` seconds until its row says it ended, and once more after
        that, for what its end's transaction committed."""
        while True:
            batch = await self._store.stream_events(
                self._response_id, after=self._after, limit=REPLAY_PAGE
            )
            if batch:
                events = [event_from_wire(data) for data in batch]
                self._after = events[-1].sequence_number
                return events
            if not self._shared:
                raise trio.EndOfChannel
            if not await _ended(self._store, self._response_id):
                await trio.sleep(FOLLOW_POLL)
                continue
            # Ended: what its last transaction committed beside the end is read next, if any.
            if not await self._store.stream_events(self._response_id, after=self._after, limit=1):
                raise trio.EndOfChannel


def _gave_up(recording: Recording) -> bool:
    """Whether the gateway stopped following a native upstream's background response that the
    upstream had named, while that upstream may still run it: its ``background_timeout`` ran
    out, its reconnects did, or its stream could not be read. Not when the upstream ended it
    (a terminal or ``error`` event, a GET saying so) or refused it (a status of its own)."""
    lost = (UpstreamConnectionError, UpstreamTimeoutError, UpstreamProtocolError)
    return recording.upstream_id is not None and isinstance(recording.failure, lost)


async def _ended(store: Store, response_id: str) -> bool:
    """Whether the store holds the response's end (or no longer the response)."""
    row = await store.get(response_id)
    return row is None or row.deleted or row.status.is_terminal


@attrs.define(eq=False)
class BackgroundRuns:
    """The background responses of one gateway: started in its service nursery, looked up by
    ID while they run, cancelled (see the module docstring)."""

    _pipeline: Pipeline
    _store: Store
    _recorder: Recorder
    _services: trio.Nursery
    #: The store may be shared with other processes (a file; an in-memory store never is).
    _shared_store: bool
    #: Background responses running in this process, by ID.
    _live: dict[str, LiveRun] = attrs.Factory(dict)
    #: Runs started, and those running now (counted from when their task starts).
    started: int = 0
    in_flight: int = 0
    #: Whether the task that notices runs ended by other processes is running.
    _watching: bool = False
    #: Cancels a background response at its native upstream, by ID, once the gateway gave up
    #: on it (``StoredResponses.cancel_given_up``, wired when the gateway opens).
    cancel_upstream: Callable[[str], Awaitable[None]] | None = None

    @property
    def running(self) -> int:
        """Background responses running in this process now."""
        return len(self._live)

    def get(self, response_id: str) -> LiveRun | None:
        """The run of a background response, while it runs in this process."""
        return self._live.get(response_id)

    def follow(self, response_id: str, after: int = -1) -> Follower:
        """A reader of a background response's events after sequence number ``after``."""
        return Follower(
            response_id, self._live.get(response_id), self._store, after, self._shared_store
        )

    async def replayable(self, response_id: str) -> bool:
        """Whether its events were stored for resume (a streamed background response)."""
        live = self._live.get(response_id)
        if live is not None:
            return live.recording.replay
        if not self._shared_store:
            return bool(await self._store.stream_events(response_id, limit=1))
        # It may run in another process whose first events are not committed yet (they
        # linger for company): a response still running is looked at again for a moment.
        with trio.move_on_after(REPLAYABLE_WAIT):
            while True:
                if await self._store.stream_events(response_id, limit=1):
                    return True
                if await _ended(self._store, response_id):
                    break
                await trio.sleep(FOLLOW_POLL)
        return bool(await self._store.stream_events(response_id, limit=1))

    async def start(
        self, call: PreparedCall, on_end: Callable[[], object] | None = None
    ) -> tuple[LiveRun, Response]:
        """Record a background response as queued and start it in the service nursery (which
        calls ``on_end`` when it has ended); its run, and the response as queued.

        Its ID is minted here, before any upstream answered (the caller gets it at once); the
        upstream's events are streamed, so they can be stored for resume (a native upstream
        runs it as a background response of its own: see the module docstring)."""
        pipeline = self._pipeline
        try:
            deployment = await route(pipeline.router, call)
        except SluicegateError as exc:
            # Refused before it started (every deployment cooling or full): recorded like a
            # foreground request no upstream answered.
            await record_unanswered(pipeline.ids, self._recorder.start(call), call, exc)
            raise
        response_id = pipeline.ids.encode(
            provider=deployment.provider,
            deployment_id=deployment.id,
            raw_id=f"resp_{secrets.token_hex(24)}",
            owner=call.owner,
        )
        call = attrs.evolve(
            call,
            body={k: v for k, v in call.body.items() if k != "background"},
            stream=True,
            replay=call.stream,
            response_id=response_id,
            deployment=deployment,
        )
        recording = self._recorder.start(call)
        recording.hand_over = self._hands_over(deployment)
        queued = unanswered_response(call, response_id, recording.created_at, status="queued")
        recording.response_id = response_id
        recording.initial = queued
        # Awaited: a GET sent the moment this returns must find the response.
        await self._store.append([self._recorder.accepted(call, response_id, recording.created_at)])
        recording.accepted = True
        live = LiveRun(response_id=response_id, tracker=StreamTracker(), recording=recording)
        self._live[response_id] = live
        self.started += 1
        self._watch()
        await self._services.start(self._run, live, call, on_end)
        return live, queued

    async def take_over(self, row: ResponseRow) -> None:
        """Run a native background response taken over from a dead instance (``_takeover.py``):
        its upstream still runs it, so its stream is followed on from the last event the store
        holds (from its start, for one whose events were not recorded: its output items
        already stored are not recorded twice). Its followers and the store see one stream,
        without a gap."""
        rid = row.id
        pipeline, store = self._pipeline, self._store
        router = pipeline.router
        assert row.deployment_id is not None and row.provider is not None
        assert row.upstream_id is not None
        deployment = router.deployment(row.deployment_id)
        if deployment is None and row.deployment_id == env_deployment_id(row.provider):
            deployment = router.env_deployment(row.provider)
        recorded: list[dict[str, Any]] = []
        while page := await store.stream_events(rid, after=len(recorded) - 1, limit=REPLAY_PAGE):
            recorded += page
        tracker = StreamTracker()
        events = tracker.observe_all([event_from_wire(data) for data in recorded])
        replay = bool(events)
        call = PreparedCall(
            model=row.model,
            body={"input": await store.input_items(rid)},
            stream=True,
            previous_response_id=row.previous_id,
            owner=row.owner,
            store=row.store,
            background=True,
            response_id=rid,
            deployment=deployment,
            replay=replay,
            resume=ResumePoint(
                upstream_id=row.upstream_id, after=events[-1].sequence_number if replay else -1
            ),
        )
        recording = self._recorder.start(call)
        recording.created_at = row.created_at
        recording.response_id = rid
        recording.accepted = True
        recording.upstream_id = row.upstream_id
        recording.items_recorded = len(await store.output_items(rid))
        recording.hand_over = deployment is not None and self._hands_over(deployment)
        recording.initial = tracker.partial() or unanswered_response(
            call, rid, row.created_at, status=row.status.value
        )
        if deployment is None:  # its deployment is gone since: nothing can follow it
            await record_end_now(recording, tracker, RECOVERY_FAILURE)
            return
        live = LiveRun(response_id=rid, tracker=tracker, recording=recording, events=events)
        self._live[rid] = live
        self.started += 1
        self._watch()
        logger.info("took over background response %s from an instance that died", rid)
        await self._services.start(self._run, live, call, None)

    async def follow_takeovers(self, adopted: trio.MemoryReceiveChannel[ResponseRow]) -> None:
        """Take over each background response recovery hands over (in the service nursery,
        for the gateway's lifetime); one that cannot start is ended ``failed``."""
        async for row in adopted:
            try:
                await self.take_over(row)
            except SluicegateError:
                logger.exception("could not take over background response %s", row.id)
                with contextlib.suppress(SluicegateError):
                    await self._store.append(
                        [
                            Ended(
                                response_id=row.id,
                                status=ResponseStatus.FAILED,
                                error=dict(RECOVERY_ERROR),
                                response=None,
                                completed_at=self._recorder.wall_clock(),
                            )
                        ]
                    )

    def _hands_over(self, deployment: Deployment) -> bool:
        """Whether a shutdown leaves a background response at ``deployment`` to the next
        gateway: its upstream runs it (a native one, not the in-process fake, whose memory
        dies with the process), and the store outlives the process."""
        if not self._shared_store or is_bridged(deployment.provider):
            return False
        if deployment.provider == "fake":
            configured = self._pipeline.router.deployment(deployment.id)
            return configured is not None and not is_in_process_fake(configured)
        return True

    def _watch(self) -> None:
        if not self._watching and self._shared_store:
            self._watching = True
            self._services.start_soon(self._watch_ended_elsewhere)

    async def cancel(self, live: LiveRun) -> None:
        """Stop a run (``cancel_response``): it ends ``cancelled``; returns once it has."""
        live.recording.cancel_requested = True
        live.scope.cancel()
        await live.finished.wait()

    async def _run(
        self,
        live: LiveRun,
        call: PreparedCall,
        on_end: Callable[[], object] | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.in_flight += 1
        try:
            with live.scope:
                task_status.started()
                await run_request(self._pipeline, call, live.tracker, live, live.recording)
        finally:
            self.in_flight -= 1
            del self._live[live.response_id]
            live.finish()
            if on_end is not None:
                try:
                    on_end()
                except Exception:
                    # The caller's callback: its failure is logged, and never ends the gateway.
                    logger.exception("the on_end callback of %s failed", live.response_id)
        if _gave_up(live.recording) and self.cancel_upstream is not None:
            # Recorded failed (and its followers told), while its upstream would run it on, and
            # bill it: it is cancelled there, best effort, within a short deadline
            # (docs/background.md).
            await self.cancel_upstream(live.response_id)

    async def _watch_ended_elsewhere(self) -> None:
        """While background responses run here: notice those another process sharing the
        store ended (``cancel_response`` there records the end before it answers) or deleted,
        and stop them: the upstream request is cancelled and the usage so far billed, without
        a second end. One read for all of them every ``ENDED_ELSEWHERE_POLL`` seconds."""
        try:
            while self._live:
                await trio.sleep(ENDED_ELSEWHERE_POLL)
                running = [rid for rid, live in self._live.items() if live.recording.open]
                if not running:
                    continue
                try:
                    rows = await self._store.get_many(running)
                except StoreError:
                    logger.warning("could not poll the store for cancelled responses; retrying")
                    continue
                for rid, row in rows.items():
                    live = self._live.get(rid)
                    if live is None or not live.recording.open:
                        continue
                    if row.status.is_terminal:
                        live.recording.ended_elsewhere = True
                    elif row.deleted:
                        live.recording.cancel_requested = True
                    else:
                        continue
                    live.scope.cancel()
        finally:
            self._watching = False
