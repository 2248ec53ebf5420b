"""The fake upstream's WebSocket mode: ``GET /v1/responses`` upgraded to a WebSocket.

A ``response.create`` is answered with the events the fake streams over HTTP for the same body
(:mod:`._answers`), each a text message, and the response is stored (retrievable, and a
``previous_response_id`` over HTTP or WebSocket). A ``response.steer`` is acknowledged with
``response.steer.accepted``. Every message received is recorded, parsed, in
``upstream.extra_state["websocket"]`` (a list), so tests see what was relayed. Anything else is
an ``error`` event (the connection goes on); a client's close frame is answered and the
connection closes. A fault scripted on the fake (``script``) strikes the handshake: a status
answers it in HTTP, a reset drops the connection.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import orjson
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Event, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from ._answers import build_response, build_rich_response, is_plain, sse_script
from ._faults import FaultKind
from ._http import response_head
from ._next import Next

if TYPE_CHECKING:
    from ._http import RequestHead

__all__ = ["STATE_KEY", "WEBSOCKET_ROUTES", "websocket_mode"]

#: Where the messages received are recorded (``upstream.extra_state``).
STATE_KEY = "websocket"
_READ_SIZE = 65536


async def websocket_mode(connection: Any, head: RequestHead, body: bytes, match: Any) -> Any:
    """The ``EXTRA_ROUTES`` handler: takes the socket over (``Next.CLOSE`` when it ends)."""
    # A scripted fault strikes the handshake: a status answers it, a reset drops it.
    fault = connection.upstream._next_fault()
    if fault is not None and fault.kind is FaultKind.STATUS:
        return await connection._send_json(fault.status_code, fault.body, fault.headers)
    if fault is not None and fault.kind is FaultKind.RESET_BEFORE_HEADERS:
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
    received: list[Any] = connection.upstream.extra_state.setdefault(STATE_KEY, [])
    account = connection.upstream._account(head.headers)
    while ws.state is ConnectionState.OPEN:
        for event in ws.events():
            await _on_event(connection, ws, event, received, account)
        if ws.state is not ConnectionState.OPEN:
            break
        data = await connection.stream.receive_some(_READ_SIZE)
        ws.receive_data(bytes(data) or None)
    return Next.CLOSE


async def _on_event(
    connection: Any, ws: Connection, event: Event, received: list[Any], account: Any
) -> None:
    if isinstance(event, Ping):
        await connection._send(ws.send(event.response()))
    elif isinstance(event, CloseConnection):
        if ws.state is ConnectionState.REMOTE_CLOSING:
            await connection._send(ws.send(event.response()))
    elif isinstance(event, TextMessage):
        # The fake takes whole messages only (its clients do not fragment).
        try:
            message = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            message = None
        received.append(message)
        for answer in _answer(connection.upstream, message, account):
            await connection._send(ws.send(TextMessage(data=orjson.dumps(answer).decode())))


def _answer(upstream: Any, message: Any, account: Any) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        return [_error("The message must be a JSON object.", param=None, code="invalid_json")]
    kind = message.get("type")
    if kind == "response.create":
        return _create(upstream, {k: v for k, v in message.items() if k != "type"}, account)
    if kind == "response.steer":
        previous = message.get("previous_response_id")
        if previous not in upstream._stored:
            return [_not_found(previous)]
        steer = {"id": upstream._new_id("steer"), "previous_response_id": previous}
        return [{"type": "response.steer.accepted", "sequence_number": 0, "steer": steer}]
    return [_error(f"Unknown event type '{kind}'.", param="type", code="unknown_event_type")]


def _create(upstream: Any, request: dict[str, Any], account: Any) -> list[dict[str, Any]]:
    if not isinstance(request.get("model"), str):
        return [
            _error(
                "Missing required parameter: 'model'.",
                param="model",
                code="missing_required_parameter",
            )
        ]
    previous = request.get("previous_response_id")
    if previous is not None and previous not in upstream._stored:
        return [_not_found(previous)]
    now = int(time.time())
    plain = is_plain(request)
    if plain:
        final = build_response(
            request,
            response_id=upstream._new_id("resp"),
            message_id=upstream._new_id("msg"),
            created_at=now,
            completed_at=now,
            tokens=upstream.tokens,
        )
    else:
        final = build_rich_response(
            request,
            response_id=upstream._new_id("resp"),
            created_at=now,
            completed_at=now,
            tokens=upstream.tokens,
            new_id=upstream._new_id,
            seal=account.seal,
        )
    if request.get("store") is not False:
        if not plain:
            upstream._store_reasoning(account, final["output"])
        upstream._store_final(final)
    # The same events as over HTTP: each SSE frame's data line is one message.
    frames = sse_script(final, plain=plain).frames
    return [orjson.loads(_DATA.search(frame).group(1)) for frame in frames]  # type: ignore[union-attr]


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
