"""One attempt of a ``response.create`` over an upstream's WebSocket mode (docs/websocket.md).

Theory of operation. When a call comes from a client connection of the proxy's WebSocket mode
(``PreparedCall.sockets``) and is routed to a native deployment that offers WebSocket mode
(``litellm_params.websocket``), the connector sends it over that connection's upstream socket
at the deployment (:mod:`sluicegate.net._upstream_sockets`) instead of ``POST /responses``: the
same body its HTTP request carries (``Connector.native_request``), as ``{"type":
"response.create", ...}`` without ``stream`` and ``background``. The upstream keeps the
previous response of the socket in its memory, so a ``store: false`` chain continues there.

Each upstream message is re-framed as the SSE event it would have been over HTTP (``event:
<type>``, ``data: <the message>``) and goes downstream as a chunk of a stream would: one
decoder, one pipeline, so routing, IDs, recording, accounting and the client's events are those
of an HTTP stream. The failures too: a socket that cannot be opened, refuses the handshake or
closes before the first event fails the attempt as a connection error would (the route plan
may retry it, on a new socket); an ``error`` message before the first event is the upstream's
error as an HTTP error body would be; after it, the stream is broken as a cut HTTP stream is.
Messages are pulled one at a time, as the pipeline pulls chunks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

import orjson
import trio

from ..codecs.openai_responses import (
    ResponsesStreamDecoder,
    UpstreamRequest,
    parse_error_response,
)
from ..config import Deployment, is_in_process_fake
from ..errors import UpstreamConnectionError, UpstreamStatusError, UpstreamTimeoutError
from ..net._websocket import WebSocketClosed, WebSocketRefused
from ..runtime._messages import PreparedCall, RawOutbox, Routed, UpstreamOpened

if TYPE_CHECKING:
    from ..config import Timeouts
    from ..net._upstream_sockets import HeldSocket, UpstreamSockets

__all__ = ["relay_over_websocket", "websocket_target"]

#: The events that end a response (the socket then idles until the next one).
_TERMINAL: Final = frozenset({"response.completed", "response.failed", "response.incomplete"})
#: Headers of the HTTP request that describe its body, not the connection.
_BODY_HEADERS: Final = frozenset({"content-type", "content-length", "accept", "accept-encoding"})
_HEADERS: Final = {"content-type": "text/event-stream"}


def websocket_target(call: PreparedCall, deployment: Deployment) -> UpstreamSockets | None:
    """The client connection's upstream sockets when this attempt goes over WebSocket mode: a
    streamed call of a WebSocket-mode client, to a native deployment that offers it."""
    sockets = call.sockets
    if (
        sockets is None
        or not deployment.websocket
        or not call.stream
        or call.background
        or call.resume is not None
        or is_in_process_fake(deployment)
    ):
        return None
    return sockets


async def relay_over_websocket(
    sockets: UpstreamSockets,
    routed: Routed,
    request: UpstreamRequest,
    timeouts: Timeouts,
    outbox: RawOutbox,
    mark_opened: Callable[[float], None],
) -> None:
    """Send ``request`` (the native ``POST /responses``) as a ``response.create`` over the
    client connection's socket at the routed deployment, and relay the response's messages
    into ``outbox`` as SSE chunks (module docstring). ``mark_opened`` is told when the first
    one went downstream (from then on the attempt cannot be retried).

    Raises:
        UpstreamError: the socket could not be opened or broke, the upstream refused, timed
            out, or sent an error before its first event.
    """
    deployment = routed.deployment
    url = request.url
    if request.params:
        url += "?" + urlencode(request.params, doseq=True)
    scheme, sep, rest = url.partition("://")
    url = ("wss" if scheme == "https" else "ws") + sep + rest
    headers = tuple((k, v) for k, v in request.headers.items() if k.lower() not in _BODY_HEADERS)
    assert isinstance(request.content, bytes)
    body: dict[str, Any] = orjson.loads(request.content)
    body.pop("stream", None)
    body.pop("background", None)
    message = {"type": "response.create", **body}
    connect = math.inf if timeouts.connect is None else timeouts.connect
    try:
        # Connecting (TCP, TLS, the handshake) within the connect timeout, as over HTTP.
        with trio.move_on_after(connect) as connecting:
            held = await sockets.acquire(
                deployment.id, url, headers, handshake_timeout=timeouts.first_byte
            )
        if connecting.cancelled_caught:
            raise UpstreamTimeoutError(
                "connecting to the upstream's WebSocket timed out", retryable=True
            )
    except WebSocketRefused as exc:
        if exc.status == 0:
            raise UpstreamConnectionError(
                "the upstream did not answer the WebSocket handshake"
            ) from exc
        raise parse_error_response(exc.status, {}, exc.body, now=time.time()) from exc
    except OSError as exc:
        raise UpstreamConnectionError(
            f"could not connect to the upstream's WebSocket ({type(exc).__name__})"
        ) from exc
    clean = False
    held.busy = True
    try:
        try:
            await held.send(message)
        except WebSocketClosed as exc:
            raise UpstreamConnectionError(
                f"the upstream's WebSocket closed ({exc.code}) before the request was sent"
            ) from exc
        try:
            clean = await _relay(held, routed, timeouts, outbox, mark_opened)
        except UpstreamStatusError:
            clean = True  # the upstream refused the request: the socket carries the next one
            raise
    finally:
        held.busy = False
        if not clean:
            sockets.discard(held)


async def _relay(
    held: HeldSocket,
    routed: Routed,
    timeouts: Timeouts,
    outbox: RawOutbox,
    mark_opened: Callable[[float], None],
) -> bool:
    """The response's messages into ``outbox``; True when it ended at its terminal event (or
    an ``error`` message) and the socket may carry the next one."""
    opened = False
    timing = routed.call.timing
    while True:
        wait = timeouts.idle if opened else timeouts.first_byte
        with trio.move_on_after(math.inf if wait is None else wait) as gap:
            try:
                kind, text = await held.inbox.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if not opened:
                    raise UpstreamConnectionError(
                        "the upstream's WebSocket closed before answering"
                    ) from None
                raise UpstreamConnectionError(
                    "the upstream's WebSocket closed mid-response", retryable=False
                ) from None
        if gap.cancelled_caught:
            if not opened:
                raise UpstreamTimeoutError(f"the upstream sent no response within {wait} s")
            raise UpstreamTimeoutError(f"the upstream sent nothing for {wait} s")
        ends = kind in _TERMINAL or kind == "error"
        if ends:
            # At once (no checkpoint since the reader handed it over): what the upstream sends
            # after it goes to the client, not to this response (``_upstream_sockets.py``).
            held.busy = False
        data = text.encode()
        if kind == "error":
            error = _error_of(data)
            if not opened:
                # As an HTTP error body: nothing reached the caller.
                status = error.get("status")
                envelope = orjson.dumps({"error": error.get("error") or {}})
                raise parse_error_response(
                    status if isinstance(status, int) else 400, {}, envelope, now=time.time()
                )
            # Mid-stream: the SSE ``error`` event a broken HTTP stream would carry; the stream
            # ends here, and the decoder tells why.
            data = orjson.dumps(_sse_error(error))
        elif kind == "response.created":
            upstream_id = _response_id(data)
            if upstream_id is not None:
                held.running = upstream_id
                held.made.append(upstream_id)
        frame = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        if not opened:
            opened = True
            mark_opened(trio.current_time())
            await outbox.send(
                UpstreamOpened(
                    routed=routed,
                    status=200,
                    headers=_HEADERS,
                    body=frame,
                    decoder=ResponsesStreamDecoder(),
                )
            )
        else:
            await outbox.send(frame)
        if ends:
            if timing is not None:
                timing.ended = trio.current_time()
            return True


def _error_of(data: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {}


def _sse_error(message: dict[str, Any]) -> dict[str, Any]:
    """A WebSocket ``error`` message as the SSE ``error`` event."""
    error = message.get("error")
    error = error if isinstance(error, dict) else {}
    return {
        "type": "error",
        "code": message.get("code", error.get("code")),
        "message": message.get("message", error.get("message")),
        "param": message.get("param", error.get("param")),
        "sequence_number": message.get("sequence_number", 0),
    }


def _response_id(data: bytes) -> str | None:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    response = event.get("response") if isinstance(event, dict) else None
    value = response.get("id") if isinstance(response, dict) else None
    return value if isinstance(value, str) else None
