"""The connector's part for a native upstream's background response: follow its resumable
stream to the end, reconnecting when a connection breaks (docs/background.md).

Theory of operation: a background response at a native upstream (OpenAI, Azure, the fake) is
created with ``background: true, stream: true`` and runs there whatever happens to the
connection. :func:`relay_background` reads its stream through a
:class:`~sluicegate.codecs.resume.ResumeCursor`, which hands on complete events only and knows
the last sequence number. When the connection breaks before a terminal event (a reset, a clean
end too early, or silence longer than the deployment's ``idle_timeout``), it waits a back-off and
reconnects with ``GET responses/{raw_id}?stream=true&starting_after=N``, going on where it
stopped: downstream sees one body, without a gap or a repeat. A stream that ends cleanly without
a terminal event, or a reconnect the upstream refuses, may mean the upstream ended the response
without one (cancelled there by another client, expired): the relay then reads its status
(``GET responses/{raw_id}``) and, if it is final, ends the response with it — a ``completed``,
``failed`` or ``incomplete`` one as the terminal event of that status carrying the upstream's
final response (so it takes a terminal event's path: priced, recorded once), a ``cancelled`` one
as an :class:`~sluicegate.errors.UpstreamEndedError` the supervisor records (there is no
terminal event for it). Still ``queued`` or ``in_progress``: it reconnects. Reconnects are bounded
(``MAX_RECONNECTS`` in a row without a new event); the response's whole run is bounded by the
deployment's ``background_timeout`` (the caller's cancel scope), never by ``timeout``.

Only the first connection's answer goes downstream as ``UpstreamOpened``; later connections
continue its body as ``bytes``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import orjson
import trio

from ..codecs.openai_responses import build_resource_request
from ..codecs.sse import encode_event
from ..errors import (
    UpstreamConnectionError,
    UpstreamEndedError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ..runtime._messages import RawOutbox, Routed, UpstreamOpened

if TYPE_CHECKING:
    import httpx

    from ..codecs.openai_responses import Decoder, UpstreamRequest
    from ..codecs.resume import ResumeCursor
    from ..config import Deployment, Timeouts

__all__ = ["MAX_RECONNECTS", "RECONNECT_BACKOFF", "relay_background", "resume_request"]


class _Connector(Protocol):
    """What of the connector (``_connector.py``, which calls this module) the relay uses."""

    async def _read(
        self, chunks: AsyncIterator[bytes], gap: trio.CancelScope | None, idle: float | None
    ) -> bytes | None: ...

    async def open(
        self, request: UpstreamRequest, timeouts: Timeouts, max_retries: int, *, read_body: bool
    ) -> tuple[httpx.Response, bytes | None]: ...

    async def call_json(
        self, request: UpstreamRequest, timeouts: Timeouts, max_retries: int
    ) -> Any: ...


class _Attempt(Protocol):
    """How far the connector's attempt got (``_connector._Attempt``)."""

    opened: bool
    first_byte: float | None


#: The body's chunks as the transport reads them (``_connector._body_chunks``).
_Chunks = Callable[["httpx.Response"], AsyncIterator[bytes]]

#: Reconnects in a row that brought no new event before the response is given up as failed.
MAX_RECONNECTS = 5

#: Seconds before the n-th reconnect in a row: doubling from the first, at most the last.
RECONNECT_BACKOFF = (0.5, 30.0)

#: The final statuses an upstream may end a background response with (OpenAI's background
#: mode: a response is running while ``queued`` or ``in_progress``; these are the Responses API's
#: others), and the terminal event that announces each on a stream (None: there is none, for
#: ``cancelled``). Any other status reads as running: it is reconnected to.
_FINAL_STATUSES: Final[dict[str, str | None]] = {
    "completed": "response.completed",
    "failed": "response.failed",
    "incomplete": "response.incomplete",
    "cancelled": None,
}


def resume_request(deployment: Deployment, cursor: ResumeCursor) -> UpstreamRequest:
    """``GET responses/{raw_id}?stream=true&starting_after=N`` for the events after the
    cursor's last one."""
    assert cursor.raw_id is not None
    return build_resource_request(
        deployment,
        "GET",
        cursor.raw_id,
        params=cursor.query(),
        extra_headers={"accept": "text/event-stream"},
    )


async def relay_background(
    connector: _Connector,
    routed: Routed,
    response: httpx.Response,
    decoder: Decoder,
    timeouts: Timeouts,
    outbox: RawOutbox,
    attempt: _Attempt,
    cursor: ResumeCursor,
    body_chunks: _Chunks,
) -> None:
    """Relay a background response's stream from its first connection (``response``) to its
    terminal event, reconnecting as the module docstring says.

    Raises:
        UpstreamError: reconnecting failed ``MAX_RECONNECTS`` times in a row, the upstream
            refused a reconnect (it no longer knows the response), or the stream broke before
            the upstream named the response.
    """
    failures = 0
    current: httpx.Response | None = response
    error: UpstreamError | None = None
    ended_early = False
    ended_upstream = partial(
        _end_from_status, connector, routed, response, decoder, outbox, attempt, cursor
    )
    while True:
        before = cursor.relayed
        if current is not None:
            error = None
            try:
                await _relay_connection(
                    connector,
                    routed,
                    body_chunks(current),
                    current,
                    decoder,
                    timeouts,
                    outbox,
                    attempt,
                    cursor,
                )
            except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
                error = exc
            if cursor.ended:
                return
            if error is None:
                ended_early = True
                error = UpstreamConnectionError(
                    "the upstream ended the background response's stream before its end"
                )
        if cursor.raw_id is None:
            assert error is not None
            raise error  # nothing named the response yet: nothing to reconnect to
        if ended_early:
            ended_early = False
            # Ended cleanly without a terminal event: perhaps the upstream ended it so.
            if await ended_upstream():
                return
        failures = 1 if cursor.relayed > before else failures + 1
        if failures > MAX_RECONNECTS:
            raise UpstreamConnectionError(
                f"lost the upstream's stream of background response {cursor.raw_id}: "
                f"{MAX_RECONNECTS} reconnects in a row brought nothing new (last: "
                f"{error.message if error is not None else 'no answer'})",
                retryable=False,
            )
        first, most = RECONNECT_BACKOFF
        await trio.sleep(min(most, first * 2 ** (failures - 1)))
        cursor.reconnected()
        try:
            current, _ = await connector.open(
                resume_request(routed.deployment, cursor), timeouts, 0, read_body=False
            )
        except UpstreamStatusError as exc:
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                current, error = None, exc  # worth another try
                continue
            # Refused: perhaps it ended upstream without a terminal event; else the upstream no
            # longer knows it (404), or refuses to stream it: nothing to resume.
            if await ended_upstream():
                return
            raise
        except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
            current, error = None, exc


async def _end_from_status(
    connector: _Connector,
    routed: Routed,
    first: httpx.Response,
    decoder: Decoder,
    outbox: RawOutbox,
    attempt: _Attempt,
    cursor: ResumeCursor,
) -> bool:
    """Read the response's status upstream (``GET responses/{raw_id}``) and, if it is final,
    end it with it (the module docstring): True once its terminal event went downstream.
    False if it still runs, or its status could not be read (then it is reconnected to).

    Raises:
        UpstreamEndedError: the upstream cancelled it (no terminal event exists for that).
    """
    assert cursor.raw_id is not None
    deployment = routed.deployment
    request = build_resource_request(deployment, "GET", cursor.raw_id)
    try:
        body = await connector.call_json(request, deployment.timeouts, 0)
    except UpstreamError:
        return False  # not known: reconnecting tells
    status = body.get("status") if isinstance(body, dict) else None
    if not isinstance(status, str) or status not in _FINAL_STATUSES:
        return False  # queued, in_progress (or not a Response): it runs on
    event_type = _FINAL_STATUSES[status]
    if event_type is None:
        raise UpstreamEndedError(status, body)
    frame = {"type": event_type, "sequence_number": cursor.last + 1, "response": body}
    data = cursor.feed(encode_event(orjson.dumps(frame), event=event_type))
    await _hand_on(routed, first, decoder, outbox, attempt, data)
    return True


async def _hand_on(
    routed: Routed,
    response: httpx.Response,
    decoder: Decoder,
    outbox: RawOutbox,
    attempt: _Attempt,
    data: bytes,
) -> None:
    """Send complete events downstream: the first as the body of ``UpstreamOpened``
    (``response``'s status and headers), later ones as bytes of that body."""
    if not attempt.opened:
        attempt.opened = True
        attempt.first_byte = trio.current_time()
        opened = UpstreamOpened(
            routed=routed,
            status=response.status_code,
            headers=response.headers,
            body=data,
            decoder=decoder,
        )
        await outbox.send(opened)
    elif data:
        await outbox.send(data)


async def _relay_connection(
    connector: _Connector,
    routed: Routed,
    chunks: AsyncIterator[bytes],
    response: httpx.Response,
    decoder: Decoder,
    timeouts: Timeouts,
    outbox: RawOutbox,
    attempt: _Attempt,
    cursor: ResumeCursor,
) -> None:
    """One connection's body (``chunks``), through the cursor, until it ends or breaks."""
    idle = timeouts.idle
    # One scope watches the silence between reads, as the connector's own (docs/design.md §2.6).
    gap = trio.CancelScope() if idle is not None else None
    try:
        with gap if gap is not None else trio.CancelScope():
            while True:
                chunk = await connector._read(chunks, gap, idle)
                if chunk is None:
                    break
                await _hand_on(routed, response, decoder, outbox, attempt, cursor.feed(chunk))
        if gap is not None and gap.cancelled_caught:
            raise UpstreamTimeoutError(f"the upstream sent nothing for {idle} s")
    finally:
        if gap is not None:
            gap.deadline = math.inf
        with trio.CancelScope(shield=True):
            close = getattr(chunks, "aclose", None)
            if close is not None and chunks is not cast(object, response.stream):
                await close()
            await response.aclose()
