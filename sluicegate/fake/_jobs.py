"""The fake upstream's background jobs: responses that run on their own, as OpenAI's background
mode runs them (the Responses API reference, §9 of the spec notes).

Theory of operation: a create with ``background: true`` (and ``store`` not false) makes a
:class:`Job` holding the whole stream of its answer, numbered from 0: ``response.created`` and
``response.queued`` (status ``queued``), ``response.in_progress``, the output's events, the
terminal event. The job *produces* those frames over time in the upstream's job nursery, paced
by ``token_delay`` before each delta (with no delay, all at once), whatever happens to the
connection that created it. What a GET answers follows it: ``queued``, then ``in_progress``,
then the final response (``cancelled`` once a cancel reached it first).

A stream of a job (the create's own with ``stream: true``, or ``GET
/v1/responses/{id}?stream=true&starting_after=N``) writes the frames after N as the job
produces them, to the end; a cancelled job's stream ends without a terminal event. The
sequence numbers are the job's, so they agree across connections. A stream's faults (a reset,
a stall, a clean end too early after some events) cut that connection only: the job runs on.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from ._answers import MALFORMED_FRAME, _unfinished, as_cancelled, encode_frame, sse_script
from ._faults import Fault, FaultKind
from ._http import LAST_CHUNK, chunk, response_head
from ._next import Next

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Job", "cancel_job", "job_ids", "job_query", "start_job", "stream_job"]

_RECEIVE_SIZE = 65536
_SSE_HEADERS = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("transfer-encoding", "chunked"),
    ("cache-control", "no-cache"),
)
#: The frame after which a job's response is ``in_progress`` (created, queued, in_progress).
_IN_PROGRESS_AT = 3


@attrs.define(eq=False)
class Job:
    """One background response producing its stream (see the module docstring)."""

    final: dict[str, Any]
    frames: list[bytes]
    #: Indices of the frames ``token_delay`` goes before (the deltas).
    paced: frozenset[int]
    #: What GET answers now; updated as the job goes on.
    response: dict[str, Any]
    produced: int = 0
    cancelled: bool = False
    _changed: trio.Event = attrs.Factory(trio.Event)

    @property
    def finished(self) -> bool:
        return self.cancelled or self.produced >= len(self.frames)

    def _advance(self, produced: int) -> None:
        self.produced = produced
        if produced >= len(self.frames):
            self.response = self.final
        elif produced >= _IN_PROGRESS_AT:
            self.response = _unfinished(self.final, "in_progress")
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, delay: float) -> None:
        """Produce the frames, ``delay`` seconds before each delta, until done or cancelled."""
        for index in range(self.produced, len(self.frames)):
            if index in self.paced and delay > 0:
                await trio.sleep(delay)
            if self.cancelled:
                return
            self._advance(index + 1)

    def cancel(self) -> None:
        """Stop it where it is (a finished job is left as it ended)."""
        if not self.finished:
            self.cancelled = True
            self.response = as_cancelled(self.final)
            self._wake()

    async def wait_past(self, index: int) -> None:
        """Until frame ``index`` is produced, or the job is over."""
        while self.produced <= index and not self.finished:
            await self._changed.wait()


def start_job(
    final: dict[str, Any],
    *,
    plain: bool,
    extra_events: Sequence[Any],
    delay: float,
    nursery: trio.Nursery | None,
    stalled: bool = False,
) -> Job:
    """A job for ``final``, started: produced at once without a ``delay``, else in ``nursery``.
    A ``stalled`` job produces nothing until cancelled."""
    script = sse_script(final, extra_events=extra_events, plain=plain)
    events = [orjson.loads(frame.split(b"\ndata: ", 1)[1]) for frame in script.frames]
    queued = _unfinished(final, "queued")
    events[0]["response"] = queued
    events.insert(1, {"type": "response.queued", "response": queued})
    frames = [encode_frame({**event, "sequence_number": i}) for i, event in enumerate(events)]
    paced = frozenset(index + 1 for index in script.delta_indices)
    job = Job(final=final, frames=frames, paced=paced, response=queued)
    if stalled:
        return job
    if delay > 0 and nursery is not None:
        nursery.start_soon(job.run, delay)
    else:
        job._advance(len(frames))
    return job


def cancel_job(upstream: Any, response_id: str) -> dict[str, Any]:
    """Cancel the background job ``response_id`` of ``upstream`` (a ``FakeUpstream``) as
    another client of the provider would (its dashboard, another API key): no request of it
    is recorded. What a GET of it answers now (a finished job is left as it ended).

    Raises:
        KeyError: ``upstream`` has no background job of that ID.
    """
    stored = upstream._stored[response_id]
    job: Job | None = stored.job
    if job is None:
        raise KeyError(response_id)
    job.cancel()
    return dict(job.response)


def job_ids(upstream: Any) -> list[str]:
    """The IDs of the background jobs ``upstream`` (a ``FakeUpstream``) holds, oldest first."""
    return [rid for rid, stored in upstream._stored.items() if stored.job is not None]


def job_query(query: str) -> tuple[bool, int | None]:
    """Whether a GET's query asks for a stream, and its ``starting_after`` (None: absent).

    Raises:
        ValueError: ``starting_after`` is not an integer.
    """
    params = urllib.parse.parse_qs(query)
    stream = params.get("stream", ["false"])[-1].lower() == "true"
    after = params.get("starting_after")
    return stream, None if after is None else int(after[-1])


async def stream_job(
    connection: Any, job: Job, after: int, fault: Fault | None, request_id: str
) -> Next:
    """Write ``job``'s frames after ``after`` on ``connection`` (a ``_server._Connection``) as
    they are produced, to its end; ``fault`` (reset, stall, malformed, a clean end too early)
    strikes after its ``after_events`` frames of this connection. Returns what the connection
    does next."""
    kind = fault.kind if fault is not None else None
    limit = fault.after_events if fault is not None and kind in _CUTTING else None
    if kind is FaultKind.STALL and limit == 0:
        await connection._hold_until_hangup()
        return Next.CLOSE
    headers = [*_SSE_HEADERS, ("x-request-id", request_id)]
    await connection._send(response_head(200, headers))
    hung_up = False
    outcome: Next = Next.KEEP_ALIVE

    async def watch(scope: trio.CancelScope) -> None:
        nonlocal hung_up
        try:
            while data := await connection.stream.receive_some(_RECEIVE_SIZE):
                connection._buffer += data  # an early next request
        except trio.BrokenResourceError:
            pass
        hung_up = True
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        try:
            outcome = await _write_frames(connection, job, after + 1, kind, limit)
        except trio.BrokenResourceError:
            hung_up = True
        nursery.cancel_scope.cancel()
    return Next.CLOSE if hung_up else outcome


#: The faults that cut a job's stream after some frames (the job itself runs on).
_CUTTING = frozenset(
    {
        FaultKind.RESET_MID_STREAM,
        FaultKind.STALL,
        FaultKind.END_WITHOUT_TERMINAL,
        FaultKind.MALFORMED_SSE,
    }
)


async def _write_frames(
    connection: Any,
    job: Job,
    start: int,
    kind: FaultKind | None,
    limit: int | None,
) -> Next:
    index, sent = start, 0
    while True:
        if limit is not None and sent >= limit:
            match kind:
                case FaultKind.RESET_MID_STREAM:
                    return Next.RESET
                case FaultKind.STALL:
                    await trio.sleep_forever()  # until the watcher sees the client hang up
                case FaultKind.END_WITHOUT_TERMINAL:
                    await connection._send(LAST_CHUNK)
                    return Next.CLOSE
                case FaultKind.MALFORMED_SSE:
                    await connection._send(chunk(MALFORMED_FRAME))
                    limit = None  # then carries on normally
        if index >= len(job.frames) or (job.finished and index >= job.produced):
            await connection._send(LAST_CHUNK)
            return Next.KEEP_ALIVE
        await job.wait_past(index)
        end = job.produced
        if limit is not None:
            end = min(end, index + limit - sent)
        if end > index:
            await connection._send(chunk(b"".join(job.frames[index:end])))
            sent += end - index
            index = end
