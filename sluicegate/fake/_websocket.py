"""The fake upstream's WebSocket mode: ``GET /v1/responses`` upgraded to a WebSocket, as
OpenAI's WebSocket mode behaves.

A ``response.create`` is answered with the events the fake streams over HTTP for the same body
(:mod:`._answers`), each a text message, paced as over HTTP (``token_delay`` before each
delta); the creates of one socket run one after another. A stored response is kept as over
HTTP. Each socket also keeps, in its own memory, the most recent response made on it (the
connection-local cache): its ``previous_response_id`` works on that socket even with ``store:
false``, and nowhere else (another socket, or HTTP, answers ``previous_response_not_found``).

A ``response.steer`` naming the response running on the socket is acknowledged at once with
``response.steer.accepted`` (the fake queues the input and applies nothing); naming one that
completed on the socket, or anything else, it gets ``response.steer.failed``
(``response_already_completed``, ``response_not_found``). Other message types are ``error``
messages (the connection goes on); a client's close frame is answered and the connection
closes.

Every message received is recorded, parsed, in ``upstream.extra_state["websocket"]`` (a list),
so tests see what came. Scripted faults (``script``): a status or a reset before headers at the
front of the queue strikes the handshake (a status answers it in HTTP, a reset drops the
connection); any other fault waits for the next ``response.create`` on a socket, where a status
is an ``error`` message with that status and body, and a mid-stream reset drops the connection
after ``after_events`` events (0: before the first).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Event, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from ._answers import build_response, build_rich_response, is_plain, sse_script
from ._faults import Fault, FaultKind
from ._http import response_head
from ._next import Next

if TYPE_CHECKING:
    from ._http import RequestHead

__all__ = ["STATE_KEY", "WEBSOCKET_ROUTES", "websocket_mode"]

#: Where the messages received are recorded (``upstream.extra_state``).
STATE_KEY = "websocket"
_READ_SIZE = 65536
#: Creates a socket queues while one runs.
_QUEUED = 16
_HANDSHAKE_FAULTS = (FaultKind.STATUS, FaultKind.RESET_BEFORE_HEADERS)


async def websocket_mode(connection: Any, head: RequestHead, body: bytes, match: Any) -> Any:
    """The ``EXTRA_ROUTES`` handler: takes the socket over (``Next.CLOSE`` when it ends)."""
    upstream = connection.upstream
    # A fault for the handshake strikes it: a status answers it, a reset drops it.
    faults = upstream._faults
    if faults and faults[0].kind in _HANDSHAKE_FAULTS:
        fault = upstream._next_fault()
        if fault.kind is FaultKind.STATUS:
            return await connection._send_json(fault.status_code, fault.body, fault.headers)
        return Next.RESET
    key = head.headers.get("sec-websocket-key")
    if "websocket" not in head.headers.get("upgrade", "").lower() or not key:
        envelope = _error_body("Expected a WebSocket upgrade.", param=None, code=None)
        return await connection._send_json(400, orjson.dumps({"error": envelope}))
    accept = generate_accept_token(key.encode()).decode()
    await connection._send(
        response_head(
            101,
            [("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-accept", accept)],
        )
    )
    ws = Connection(ConnectionType.SERVER, trailing_data=bytes(connection._buffer))
    connection._buffer.clear()
    socket = _Socket(connection, ws, upstream._account(head.headers))
    send, creates = trio.open_memory_channel[dict[str, Any]](_QUEUED)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(socket.respond, creates, nursery.cancel_scope)
        with send:
            try:
                while ws.state is ConnectionState.OPEN:
                    for event in ws.events():
                        await socket.on_event(event, send)
                    if ws.state is not ConnectionState.OPEN:
                        break
                    try:
                        data = await connection.stream.receive_some(_READ_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    ws.receive_data(bytes(data) or None)
            except trio.BrokenResourceError:
                pass  # the client went away; that is its right, not our error
        nursery.cancel_scope.cancel()
    return Next.RESET if socket.reset else Next.CLOSE


@attrs.define(eq=False)
class _Socket:
    """One WebSocket-mode connection of the fake: its writes, its running response, its
    connection-local cache."""

    connection: Any
    ws: Connection
    account: Any
    _lock: trio.Lock = attrs.Factory(trio.Lock)
    #: The upstream ID of the response being streamed.
    running: str | None = None
    #: The most recent response made on this socket (the connection-local cache).
    last: str | None = None
    #: Every response completed on this socket (for steering's answers).
    done: set[str] = attrs.Factory(set)
    #: The connection is to be reset (a scripted fault).
    reset: bool = False

    @property
    def upstream(self) -> Any:
        return self.connection.upstream

    async def write(self, message: dict[str, Any]) -> None:
        async with self._lock:
            if self.ws.state is ConnectionState.OPEN:
                data = self.ws.send(TextMessage(data=orjson.dumps(message).decode()))
                await self.connection._send(data)

    async def on_event(self, event: Event, creates: trio.MemorySendChannel[dict[str, Any]]) -> None:
        if isinstance(event, Ping):
            async with self._lock:
                await self.connection._send(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                async with self._lock:
                    await self.connection._send(self.ws.send(event.response()))
        elif isinstance(event, TextMessage):
            # The fake takes whole messages only (its clients do not fragment).
            try:
                message = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                message = None
            self.upstream.extra_state.setdefault(STATE_KEY, []).append(message)
            if isinstance(message, dict) and message.get("type") == "response.create":
                await creates.send(message)
            elif isinstance(message, dict) and message.get("type") == "response.steer":
                await self.write(self._steered(message))
            elif isinstance(message, dict):
                kind = message.get("type")
                await self.write(
                    _error(f"Unknown event type '{kind}'.", param="type", code="unknown_event_type")
                )
            else:
                await self.write(
                    _error("The message must be a JSON object.", param=None, code="invalid_json")
                )

    def _steered(self, message: dict[str, Any]) -> dict[str, Any]:
        previous = message.get("previous_response_id")
        if previous is not None and previous == self.running:
            steer = {"id": self.upstream._new_id("steer"), "previous_response_id": previous}
            return {"type": "response.steer.accepted", "sequence_number": 0, "steer": steer}
        if previous in self.done:
            code, text = "response_already_completed", "The response has already completed."
        else:
            code, text = "response_not_found", f"Response '{previous}' is not on this connection."
        return {
            "type": "response.steer.failed",
            "sequence_number": 0,
            "error": {"type": "invalid_request_error", "code": code, "message": text},
            "steer": {"input": message.get("input"), "previous_response_id": previous},
        }

    async def respond(
        self, creates: trio.MemoryReceiveChannel[dict[str, Any]], everything: trio.CancelScope
    ) -> None:
        """Answer the creates one after another (a reset fault ends the connection)."""
        async for message in creates:
            fault = self.upstream._next_fault()
            request = {k: v for k, v in message.items() if k != "type"}
            try:
                if not await self._answer(request, fault):
                    self.reset = True
                    everything.cancel()
                    return
            except trio.BrokenResourceError:
                everything.cancel()  # the client went
                return

    async def _answer(self, request: dict[str, Any], fault: Fault | None) -> bool:
        """Stream the answer to ``request``; False when a fault drops the connection."""
        if fault is not None and fault.kind is FaultKind.STATUS:
            envelope = orjson.loads(fault.body) if fault.body else {}
            error = envelope.get("error") if isinstance(envelope, dict) else None
            await self.write({"type": "error", "status": fault.status_code, "error": error})
            return True
        refusal = self._refusal(request)
        if refusal is not None:
            await self.write(refusal)
            return True
        plain = is_plain(request)
        final = self._final(request, plain=plain)
        if request.get("store") is not False:
            if not plain:
                self.upstream._store_reasoning(self.account, final["output"])
            self.upstream._store_final(final)
        self.last = final["id"]
        script = sse_script(final, plain=plain)
        cut = None
        if fault is not None and fault.kind is FaultKind.RESET_MID_STREAM:
            cut = fault.after_events
        self.running = final["id"]
        try:
            for index, frame in enumerate(script.frames):
                if cut is not None and index >= cut:
                    return False
                if index in script.delta_indices and self.upstream.token_delay > 0:
                    await trio.sleep(self.upstream.token_delay)
                event = orjson.loads(_DATA.search(frame).group(1))  # type: ignore[union-attr]
                await self.write(event)
        finally:
            self.running = None
        self.done.add(final["id"])
        return True

    def _refusal(self, request: dict[str, Any]) -> dict[str, Any] | None:
        if not isinstance(request.get("model"), str):
            return _error(
                "Missing required parameter: 'model'.",
                param="model",
                code="missing_required_parameter",
            )
        previous = request.get("previous_response_id")
        if previous is not None and previous != self.last and previous not in self.upstream._stored:
            # Neither stored nor this socket's most recent response (a ``store: false`` one
            # made on another socket, or before the last one here).
            return _not_found(previous)
        return None

    def _final(self, request: dict[str, Any], *, plain: bool) -> dict[str, Any]:
        upstream = self.upstream
        now = int(time.time())
        if plain:
            return build_response(
                request,
                response_id=upstream._new_id("resp"),
                message_id=upstream._new_id("msg"),
                created_at=now,
                completed_at=now,
                tokens=upstream.tokens,
            )
        return build_rich_response(
            request,
            response_id=upstream._new_id("resp"),
            created_at=now,
            completed_at=now,
            tokens=upstream.tokens,
            new_id=upstream._new_id,
            seal=self.account.seal,
        )


_DATA = re.compile(rb"^data: (.*)$", re.MULTILINE)


def _not_found(previous: Any) -> dict[str, Any]:
    return _error(
        f"Previous response with id '{previous}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def _error_body(message: str, *, param: str | None, code: str | None) -> dict[str, Any]:
    return {"type": "invalid_request_error", "code": code, "message": message, "param": param}


def _error(message: str, *, param: str | None, code: str | None) -> dict[str, Any]:
    """An ``error`` event as OpenAI's WebSocket mode sends one."""
    return {"type": "error", "status": 400, "error": _error_body(message, param=param, code=code)}


#: ``EXTRA_ROUTES`` entries: ``GET /v1/responses`` (the built-in routes take only ``POST``).
WEBSOCKET_ROUTES: list[tuple[str, re.Pattern[str], Any]] = [
    ("GET", re.compile(r"/v1/responses"), websocket_mode)
]
