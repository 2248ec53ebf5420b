"""WebSocket mode of the Responses API: ``GET /v1/responses`` upgraded to a WebSocket.

Theory of operation. The handshake is authenticated as an HTTP request is (the key from
``Authorization`` or ``api-key``; headers that would choose the upstream refused) before the
connection is accepted: a refused handshake is an HTTP answer with the OpenAI error envelope
(the ASGI ``websocket.http.response`` extension, which both servers offer), else a close 1008.

An accepted connection is one nursery with two tasks:

* the **reader** receives the client's messages and queues them (at most :data:`QUEUED`; past
  that it stops reading, and the client's sends wait in its socket). A client that closes or
  goes cancels the response in flight (recorded ``cancelled``, with its partial usage, as an
  HTTP client's hang-up is). A binary frame is a protocol violation: close 1003.
* the **worker** handles the queue in order, so responses on one connection run one after
  another (``previous_response_id`` chains them). A ``response.create`` runs as a streamed
  ``POST /v1/responses`` does — the same refused fields (:meth:`ProxyApp.create_params`),
  admission for the key, owner, recording and accounting — and each event is one text frame,
  sent only once the previous one was written: a client that stops reading stops the
  upstream reads too. ``stream_id`` (the client's lane) is echoed on each event; ``stream``
  is implicit; ``background`` is refused. The call carries the connection's upstream sockets
  (``UpstreamSockets``): routed to a native deployment that offers WebSocket mode
  (``litellm_params.websocket: true``), the pipeline's connector sends it over the
  connection's socket there instead of ``POST /responses``, so the upstream's
  connection-local state (a ``store: false`` chain) is kept.
  Any other message type is relayed to the connection's upstream socket at the deployment
  its ``previous_response_id`` names, if that deployment offers WebSocket mode; else it is an
  ``error`` event. One about the response in flight (``response.steer``) is relayed by the
  reader at once, to the socket that response runs on, rather than queued behind it.

Bad input (not JSON, no or unknown ``type``, invalid parameters, a limit) is an ``error`` event
and the connection goes on. An ``error`` event carries the streaming ``error`` event's fields
(``code``, ``message``, ``param``) and, as OpenAI's WebSocket errors do, the envelope's
``error`` object and the HTTP ``status``. When the server begins to shut down (the lean
server's ``sluicegate.drain`` extension, :data:`._ws.DRAIN_EXTENSION`) the worker takes no
further message: a connection between responses closes 1001 at once, one with a response
running after it. The server's graceful deadline ends a response still in flight as an HTTP
stream's is (``response.failed``: the gateway shut down), then closes 1001.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
import trio

from .._gateway import ResponseStream, UpstreamSockets, WebSocketClosed, WebSocketRefused
from .._types import DeltaEvent, OutputItemEvent, ResponseEvent, StreamEvent
from ..errors import (
    InternalError,
    InvalidRequestError,
    NotFoundError,
    RequestTooLargeError,
    ServiceUnavailableError,
    SluicegateError,
    UpstreamConnectionError,
)
from ._exchange import Exchange, Receive, Scope, Send, refuse_upstream_headers, request_id_of
from ._ws import DRAIN_EXTENSION

if TYPE_CHECKING:
    from .._gateway import Gateway
    from .._types import Response
    from ._exchange import BodyLimits
    from ._keys import Admission, Caller, KeyManager
    from ._metrics import Metrics


class ProxyApp(Protocol):
    """What WebSocket mode uses of the proxy's app (``_app.ProxyApp``, which imports this
    module)."""

    metrics: Metrics

    @property
    def gateway(self) -> Gateway | None: ...
    @property
    def key_manager(self) -> KeyManager | None: ...
    @property
    def body_limits(self) -> BodyLimits: ...
    def create_params(
        self, ex: Exchange, caller: Caller, body: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]: ...
    def _account(self, model: str, response: Response, admission: Admission) -> None: ...


__all__ = ["PATHS", "QUEUED", "serve_websocket", "ws_error_event"]

logger = logging.getLogger("sluicegate")

#: The paths that take a WebSocket (both the proxy's ``POST`` paths of creation).
PATHS: Final = frozenset({"/v1/responses", "/responses"})
#: Messages a connection queues while a response runs.
QUEUED: Final = 8
#: The route label of WebSocket mode in the metrics.
ROUTE: Final = "/v1/responses"
#: Close codes (RFC 6455 §7.4.1).
GOING_AWAY: Final = 1001
UNSUPPORTED_DATA: Final = 1003
POLICY_VIOLATION: Final = 1008
INTERNAL: Final = 1011
#: The longest the end of a connection cut by the server's graceful deadline may take.
_CLOSE_GRACE: Final = 5.0


def ws_error_event(exc: SluicegateError) -> dict[str, Any]:
    """The ``error`` event of WebSocket mode: the SSE ``error`` event's fields (``code``,
    ``message``, ``param``), the error envelope's ``error`` object and the HTTP ``status``."""
    return {
        "type": "error",
        "code": exc.code,
        "message": exc.message,
        "param": exc.param,
        "sequence_number": 0,
        "status": exc.status_code,
        **exc.to_dict(),
    }


async def serve_websocket(app: ProxyApp, scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI ``websocket`` connection of the proxy (module docstring)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    request_id = request_id_of(scope)
    ex = Exchange(scope, receive, send, request_id, trio.current_time())
    gateway, keys = app.gateway, app.key_manager
    app.metrics.count("sluicegate_websocket_connections_total", (("outcome", "offered"),))
    try:
        if scope.get("path") not in PATHS:
            raise NotFoundError(f"Invalid URL (WebSocket {scope.get('path')})", code="unknown_url")
        if gateway is None or keys is None:
            raise ServiceUnavailableError(
                "The server is starting or shutting down.", code="unavailable"
            )
        refuse_upstream_headers(ex)
        caller = await keys.authenticate(ex.header(b"authorization"), ex.header(b"api-key"))
    except SluicegateError as exc:
        app.metrics.count("sluicegate_websocket_connections_total", (("outcome", "refused"),))
        await _deny(scope, send, request_id, exc)
        return
    await send(
        {"type": "websocket.accept", "headers": [(b"x-request-id", request_id)]},
    )
    app.metrics.count("sluicegate_websocket_connections_total", (("outcome", "accepted"),))
    session = _Session(app, ex, caller)
    await session.run()


async def _deny(scope: Scope, send: Send, request_id: bytes, exc: SluicegateError) -> None:
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id)]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await send(
            {"type": "websocket.http.response.start", "status": exc.status_code, "headers": headers}
        )
        body = orjson.dumps(exc.to_dict())
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
        return
    reason = exc.message.encode()[:120].decode(errors="ignore")
    await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": reason})


class _Session:
    """One accepted connection: its reader and its worker (module docstring)."""

    def __init__(self, app: ProxyApp, ex: Exchange, caller: Caller) -> None:
        self._app = app
        self._ex = ex
        self._caller = caller
        #: The cancel scope of the response in flight (cancelled when the client goes).
        self._current: trio.CancelScope | None = None
        #: The client closed or went: nothing more is sent.
        self._gone = False
        #: The close code the reader decided on (a protocol violation).
        self._violation: tuple[int, str] | None = None
        #: The message being sent (see ``_send_text``).
        self._unsent: str | None = None
        #: The connection's upstream WebSockets (docs/websocket.md), made with its nursery.
        self._sockets: UpstreamSockets | None = None
        #: The ID of the response in flight, once its first event named it.
        self._running: str | None = None
        #: The server's shutdown has begun (``_ws.DRAIN_EXTENSION``): no new message is
        #: taken, and the worker's wait for one is cancelled (``_idle``).
        self._draining = False
        self._idle: trio.CancelScope | None = None

    async def run(self) -> None:
        send_queue, inbox = trio.open_memory_channel[str](QUEUED)
        try:
            # A plain nursery: cancelling its own scope (the client went) ends it quietly.
            async with trio.open_nursery() as nursery:
                self._sockets = UpstreamSockets(nursery, self._send_aside)
                nursery.start_soon(self._read, send_queue, nursery.cancel_scope)
                drain = (self._ex.scope.get("extensions") or {}).get(DRAIN_EXTENSION)
                if drain is not None:
                    nursery.start_soon(self._drain_on, drain["event"])
                try:
                    await self._work(inbox, nursery)
                finally:
                    await self._sockets.aclose()
                nursery.cancel_scope.cancel()
        except* trio.Cancelled:
            # Cut from outside (the server's graceful deadline): the client is told why.
            await self._close(GOING_AWAY, "the gateway is shutting down")
            raise
        if self._violation is not None:
            await self._close(*self._violation)
        elif self._draining:
            await self._close(GOING_AWAY, "the gateway is shutting down")
        elif not self._gone:
            await self._close(1000, "")

    async def _close(self, code: int, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        with trio.CancelScope(shield=True) as cleanup:
            cleanup.deadline = trio.current_time() + _CLOSE_GRACE
            await self._ex.send({"type": "websocket.close", "code": code, "reason": reason})

    # -- the reader ----------------------------------------------------------------------

    async def _read(self, queue: trio.MemorySendChannel[str], all_: trio.CancelScope) -> None:
        limit = self._app.body_limits.size
        with queue:
            while True:
                message = await self._ex.receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    self._gone = True
                    if self._current is not None:
                        self._current.cancel()  # recorded cancelled, as an HTTP hang-up
                    break
                if kind != "websocket.receive":
                    continue
                text = message.get("text")
                if text is None:
                    self._violation = (UNSUPPORTED_DATA, "messages are JSON text frames")
                    if self._current is not None:
                        self._current.cancel()
                    break
                self._app.metrics.count(
                    "sluicegate_websocket_messages_total", (("direction", "in"),)
                )
                if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                    too_large = RequestTooLargeError(
                        f"The message is larger than {limit} bytes "
                        "(general_settings.max_request_body_bytes)."
                    )
                    await self._send_error(too_large)
                    continue
                if self._running is not None and await self._steer_now(text):
                    continue
                await queue.send(text)
        # The client went (or broke the protocol): what is in flight is cancelled.
        all_.cancel()

    # -- the worker ----------------------------------------------------------------------

    async def _drain_on(self, event: trio.Event) -> None:
        """At the server's shutdown, stop between messages: the response in flight (if any)
        finishes within the graceful deadline; a connection waiting for a message closes now."""
        await event.wait()
        self._draining = True
        if self._idle is not None:
            self._idle.cancel()

    async def _work(self, inbox: trio.MemoryReceiveChannel[str], nursery: trio.Nursery) -> None:
        async with inbox:
            while not self._draining:
                with trio.CancelScope() as self._idle:
                    try:
                        text = await inbox.receive()
                    except trio.EndOfChannel:
                        return
                self._idle = None
                if self._draining:
                    return
                try:
                    await self._handle(text, nursery)
                except SluicegateError as exc:
                    await self._send_error(exc)
                except Exception:
                    # A bug of ours: told as a 500 says it (nothing of it), then 1011.
                    logger.exception("a WebSocket message failed on an internal error")
                    await self._send_error(
                        InternalError("The server had an error processing your request.")
                    )
                    self._violation = (INTERNAL, "internal error")
                    return

    async def _handle(self, text: str, nursery: trio.Nursery) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise InvalidRequestError(
                "We could not parse the JSON of your message. The Responses API WebSocket "
                "expects one JSON object per text message.",
                code="invalid_json",
            ) from None
        if not isinstance(message, dict):
            raise InvalidRequestError("A message must be a JSON object.", code="invalid_type")
        kind = message.get("type")
        if not isinstance(kind, str):
            raise InvalidRequestError(
                "Missing required parameter: 'type'.",
                param="type",
                code="missing_required_parameter",
            )
        if kind == "response.create":
            await self._create(message)
            return
        await self._relay(kind, message, nursery)

    async def _steer_now(self, text: str) -> bool:
        """Relay at once, to the upstream socket it runs on, a message about the response in
        flight (``response.steer``: it must reach that response while it runs); False when
        ``text`` is not one (it waits its turn in the queue)."""
        sockets, running = self._sockets, self._running
        held = sockets.busy() if sockets is not None else None
        if sockets is None or held is None or held.running is None or running is None:
            return False
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        if (
            not isinstance(message, dict)
            or message.get("type") in (None, "response.create")
            or message.get("previous_response_id") != running
        ):
            return False
        sockets.alias(held.running, running)
        try:
            await held.send({**message, "previous_response_id": held.running})
        except WebSocketClosed as exc:
            closed = UpstreamConnectionError(
                f"The upstream's WebSocket closed ({exc.code}) before the message was sent.",
                retryable=False,
            )
            await self._send_aside(orjson.dumps(ws_error_event(closed)).decode())
        return True

    async def _relay(self, kind: str, message: dict[str, Any], nursery: trio.Nursery) -> None:
        """A message the gateway does not run: relayed to the upstream WebSocket of the
        deployment its ``previous_response_id`` was made on, if that one offers WebSocket
        mode: the connection's socket there (:class:`UpstreamSockets`), whose reader passes
        what comes back to the client."""
        gateway = self._app.gateway
        assert gateway is not None
        previous = message.get("previous_response_id")
        target = None
        if isinstance(previous, str):
            caller = self._caller
            target = await gateway.websocket_upstream(
                message, previous, owner=caller.owner, admin=caller.admin
            )
        if target is None:
            raise InvalidRequestError(
                f"Unsupported message type '{kind}': this gateway runs 'response.create'; "
                "another message is relayed only when its 'previous_response_id' names a "
                "response of a deployment that offers WebSocket mode.",
                param="type",
                code="unsupported_event_type",
            )
        sockets = self._sockets
        assert sockets is not None and isinstance(previous, str)
        try:
            held = await sockets.acquire(target.deployment_id, target.url, target.headers)
        except WebSocketRefused as exc:
            raise UpstreamConnectionError(
                f"The upstream refused WebSocket mode (HTTP {exc.status}).", retryable=False
            ) from exc
        except OSError as exc:
            raise UpstreamConnectionError("The upstream's WebSocket could not be reached.") from exc
        raw = target.message.get("previous_response_id")
        if isinstance(raw, str):
            sockets.alias(raw, previous)
        try:
            await held.send(dict(target.message))
        except WebSocketClosed as exc:
            sockets.discard(held)
            raise UpstreamConnectionError(
                f"The upstream's WebSocket closed ({exc.code}) before the message was sent."
            ) from exc

    async def _create(self, message: dict[str, Any]) -> None:
        app, caller = self._app, self._caller
        body = {k: v for k, v in message.items() if k != "type"}
        stream_id = body.pop("stream_id", None)
        if stream_id is not None and not isinstance(stream_id, str):
            raise InvalidRequestError("'stream_id' must be a string.", param="stream_id")
        if "stream" in body and body.pop("stream") is not True:
            raise InvalidRequestError(
                "A response over WebSocket is always streamed: leave 'stream' out.",
                param="stream",
            )
        if body.get("background"):
            raise InvalidRequestError(
                "'background' is not supported over WebSocket; use POST /v1/responses.",
                param="background",
            )
        # Each response has its own timing; the handshake's headers apply to all of them.
        ex = Exchange(
            self._ex.scope, self._ex.receive, self._ex.send, self._ex.request_id,
            trio.current_time(),
        )  # fmt: skip
        status = 500
        try:
            model, params = app.create_params(ex, caller, body)
            params["upstream_sockets"] = self._sockets
            keys = app.key_manager
            gateway = app.gateway
            assert keys is not None and gateway is not None
            admission = await keys.admit(caller, model)
            try:
                events: ResponseStream | None = None
                with trio.CancelScope() as scope:
                    self._current = scope
                    interrupted = partial(_shutdown_unless_cancelled, scope)
                    try:
                        async with gateway.open_stream(params, interrupted=interrupted) as events:
                            await self._pump(ex, events, model, stream_id)
                    except* trio.Cancelled:
                        if not scope.cancel_called and events is not None:
                            await self._send_closing(events, stream_id)
                        raise
                    if events.final_response is not None:
                        app._account(model, events.final_response, admission)
                status = 200
            finally:
                self._current = None
                self._running = None
                admission.release()
        except SluicegateError as exc:
            status = exc.status_code
            raise
        finally:
            if self._gone:
                status = 499  # the client went: nginx's "client closed request"
            labels = (("route", ROUTE), ("method", "WEBSOCKET"), ("status", str(status)))
            app.metrics.count("sluicegate_requests_total", labels)
            app.metrics.observe(
                "sluicegate_request_duration_seconds",
                (("route", ROUTE),),
                trio.current_time() - ex.started,
            )

    async def _pump(
        self, ex: Exchange, events: ResponseStream, model: str, stream_id: str | None
    ) -> None:
        iterator = aiter(events)
        first_output: float | None = None
        while True:
            try:
                event = await anext(iterator)
            except StopAsyncIteration:
                return
            except SluicegateError as exc:
                # Broken after it started: a typed ``error`` event ends it, as over SSE.
                await self._send_error(exc)
                return
            if self._running is None and isinstance(event, ResponseEvent):
                self._running = event.response.id  # what a steering message names
            if first_output is None and isinstance(event, DeltaEvent | OutputItemEvent):
                first_output = trio.current_time() - ex.started
                self._app.metrics.observe(
                    "sluicegate_time_to_first_token_seconds", (("model", model),), first_output
                )
            await self._send_event(event, stream_id)

    async def _send_event(self, event: StreamEvent, stream_id: str | None) -> None:
        if stream_id is not None:
            data = orjson.dumps({**event.to_dict(), "stream_id": stream_id})
        else:
            # An event the gateway did not change goes out as the upstream's own bytes.
            data = orjson.dumps(event.to_dict()) if event.raw is None else event.raw
        await self._send_text(data.decode())

    async def _send_closing(self, events: ResponseStream, stream_id: str | None) -> None:
        """The typed end of a response the graceful deadline cut (``open_stream``'s
        ``interrupted``): the event whose send the cancellation cut (a cut send sent nothing),
        what was on its way, then ``response.failed``. Shielded."""
        with trio.CancelScope(shield=True) as cleanup:
            cleanup.deadline = trio.current_time() + _CLOSE_GRACE
            unsent, self._unsent = self._unsent, None
            if unsent is not None:
                await self._send_text(unsent)
            for event in [*events.ready_nowait(), *events.closing]:
                await self._send_event(event, stream_id)

    async def _send_error(self, exc: SluicegateError) -> None:
        await self._send_text(orjson.dumps(ws_error_event(exc)).decode())

    async def _send_text(self, text: str) -> None:
        if self._gone:
            await trio.lowlevel.checkpoint()
            return
        # Both servers send a message whole or not at all when cancelled (hypercorn raises
        # before it writes; the lean server finishes a write it began): held until sent.
        self._unsent = text
        await self._ex.send({"type": "websocket.send", "text": text})
        self._unsent = None
        self._app.metrics.count("sluicegate_websocket_messages_total", (("direction", "out"),))

    async def _send_aside(self, text: str) -> None:
        """Send what an upstream socket's reader passes on (steering events), beside the
        response in flight: not held as :attr:`_unsent`, which is the worker's."""
        if self._gone:
            await trio.lowlevel.checkpoint()
            return
        await self._ex.send({"type": "websocket.send", "text": text})
        self._app.metrics.count("sluicegate_websocket_messages_total", (("direction", "out"),))


def _shutdown_unless_cancelled(scope: trio.CancelScope) -> SluicegateError | None:
    """How a response cancelled from outside ends: the client went (its reader cancelled
    ``scope``: recorded cancelled), or the server is shutting down (failed)."""
    if scope.cancel_called:
        return None
    return ServiceUnavailableError(
        "The gateway shut down before this response finished.", code="server_shutting_down"
    )
