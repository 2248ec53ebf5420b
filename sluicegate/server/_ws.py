"""The lean HTTP/1.1 server's WebSocket connections (RFC 6455), spoken to the app as ASGI
``websocket`` messages.

Theory of operation. :mod:`._http1` parses a request head; a ``GET`` that asks to upgrade to
``websocket`` (HTTP/1.1, ``Sec-WebSocket-Version: 13``, a ``Sec-WebSocket-Key``) is handed to a
:class:`WebSocketSession` with the bytes that followed its head, and the connection is the
session's until it closes (no request is read after it). Frames are wsproto's sans-IO
:class:`~wsproto.connection.Connection`; the socket stays the trio socket the server accepted.

* **Handshake**: the app's first ``receive()`` is ``websocket.connect``. ``websocket.accept``
  writes the ``101 Switching Protocols`` (no extension is negotiated: frames are not
  compressed); ``websocket.close`` before it is a ``403``; an app may also deny with an HTTP
  response of its own (the ``websocket.http.response`` extension, in the scope's
  ``extensions``), written whole with a ``content-length`` once its last body message comes.
* **Reading only when the app waits** (as for HTTP): ``receive()`` reads the socket until a
  whole message has arrived (fragments joined, at most :data:`MAX_MESSAGE_BYTES`: beyond, the
  connection closes with 1009) and returns ``websocket.receive``; pings are answered on the
  way. A client's close frame is answered and ``receive()`` returns ``websocket.disconnect``
  with its code; a connection lost without one, 1006; a frame that breaks the protocol is
  answered by a close frame with wsproto's code (1002, 1007…) and a disconnect with it. An app
  that does not call ``receive()`` leaves the client's frames in the socket (backpressure).
* **Writing**: ``send()`` awaits the socket write, so a client that does not read stops the
  app at its next ``websocket.send``. Writes are serialized (a pong written by ``receive()``
  cannot cut a message). A write is all or nothing for a cancellation: one cancelled before
  its first byte sent nothing (the send raises); one cancelled after is finished first
  (shielded, at most :data:`FINISH_WRITE` s) and returns, the cancellation raised at the
  caller's next checkpoint. So a frame is never cut on the wire, and the app knows what went.
  Sends after the connection closed, or to a client that has gone, are dropped; the app
  learns of it from ``receive()``.
* **Closing**: ``websocket.close`` sends a close frame with the app's code. An app that
  returns without closing an accepted connection closes it with 1000 (1011 if it failed);
  one that returns without accepting is a ``500``. After the close frame the server stops
  writing and reads (dropping) for at most :data:`LINGER_SECONDS` until the client closes too,
  so the client reads the close frame rather than a reset.
"""

from __future__ import annotations

import enum
import http
import logging
import socket
from typing import Any, Final

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, generate_accept_token

from ._exchange import Message as AsgiMessage

__all__ = [
    "DRAIN_EXTENSION",
    "FINISH_WRITE",
    "LINGER_SECONDS",
    "MAX_MESSAGE_BYTES",
    "WebSocketSession",
    "handshake_refusal",
    "is_websocket_upgrade",
]

logger = logging.getLogger("sluicegate.server")

#: The scope extension whose ``event`` is set when the server begins to shut down: a
#: connection between two messages' work may close then (1001) instead of at the graceful
#: deadline. Ours; hypercorn offers no such signal.
DRAIN_EXTENSION: Final = "sluicegate.drain"

#: The largest message a client may send (hypercorn's ``websocket_max_message_size``); a
#: larger one closes the connection with 1009.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
#: The longest a write begun when its send was cancelled may take to finish (seconds).
FINISH_WRITE: Final = 5.0
#: After the server's close frame: how long to wait for the client's (seconds).
LINGER_SECONDS: Final = 2.0
_READ_SIZE: Final = 65536


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _tokens(value: bytes | None) -> set[bytes]:
    return {t.strip().lower() for t in (value or b"").split(b",")}


def is_websocket_upgrade(method: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """The request asks to become a WebSocket (``GET`` with ``Upgrade: websocket``); whether
    it asks well is :func:`handshake_refusal`'s."""
    return method == "GET" and b"websocket" in _tokens(_header(headers, b"upgrade"))


def handshake_refusal(http_version: str, headers: list[tuple[bytes, bytes]]) -> int | None:
    """The HTTP status refusing a malformed WebSocket handshake (RFC 6455 §4.2.1), or None.
    A version other than 13 is a 426."""
    if http_version != "1.1" or b"upgrade" not in _tokens(_header(headers, b"connection")):
        return 400
    if not _header(headers, b"sec-websocket-key"):
        return 400
    if _header(headers, b"sec-websocket-version") != b"13":
        return 426
    return None


class _State(enum.Enum):
    #: ``websocket.connect`` not yet received by the app.
    CONNECTING = "connecting"
    #: Waiting for the app to accept, close, or answer in HTTP.
    HANDSHAKE = "handshake"
    #: A denial's HTTP response is being sent.
    RESPONSE = "response"
    CONNECTED = "connected"
    #: The close handshake began, or the connection is lost.
    CLOSED = "closed"


class WebSocketSession:
    """One WebSocket connection between a client and the ASGI app (module docstring)."""

    def __init__(
        self, sock: trio.socket.SocketType, headers: list[tuple[bytes, bytes]], rest: bytes
    ) -> None:
        self._sock = sock
        self._key = _header(headers, b"sec-websocket-key") or b""
        #: Bytes that followed the request head, fed to the connection once it exists.
        self._rest = rest
        self._state = _State.CONNECTING
        self._accepted = trio.Event()
        self._conn: Connection | None = None
        self._write_lock = trio.StrictFIFOLock()
        #: A write failed or the client closed its end: nothing more is written.
        self._gone = False
        #: The close code the app is told (set once the connection is closing).
        self._close_code: int | None = None
        #: A message being assembled from its fragments.
        self._parts: list[Any] = []
        self._size = 0
        #: A denial's HTTP response: status and headers, then body pieces.
        self._response: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._body: list[bytes] = []

    @property
    def accepted(self) -> bool:
        return self._conn is not None

    # -- ASGI receive ---------------------------------------------------------------------

    async def receive(self) -> AsgiMessage:
        if self._state is _State.CONNECTING:
            self._state = _State.HANDSHAKE
            await trio.lowlevel.checkpoint()
            return {"type": "websocket.connect"}
        if self._conn is None:
            # Nothing to read before the app accepts; a denied or refused connection has no
            # more to say.
            await self._accepted.wait()
        conn = self._conn
        if conn is None or self._close_code is not None:
            await trio.lowlevel.checkpoint()
            return self._disconnect()
        while True:
            for event in conn.events():
                message = await self._on_event(conn, event)
                if message is not None:
                    return message
            if self._close_code is not None:
                return self._disconnect()
            data = await self._recv()
            conn.receive_data(data or None)

    def _disconnect(self) -> AsgiMessage:
        code = self._close_code or CloseReason.ABNORMAL_CLOSURE
        return {"type": "websocket.disconnect", "code": int(code)}

    async def _on_event(self, conn: Connection, event: Event) -> AsgiMessage | None:
        if isinstance(event, Message):
            self._size += len(event.data)
            if self._size > MAX_MESSAGE_BYTES:
                await self._close(CloseReason.MESSAGE_TOO_BIG, "message too big")
                return self._disconnect()
            self._parts.append(event.data)
            if not event.message_finished:
                return None
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(event, TextMessage):
                return {"type": "websocket.receive", "text": "".join(parts)}
            assert isinstance(event, BytesMessage)
            return {"type": "websocket.receive", "bytes": b"".join(parts)}
        if isinstance(event, Ping):
            await self._write_event(event.response())
            return None
        if isinstance(event, CloseConnection):
            if conn.state is ConnectionState.REMOTE_CLOSING:
                await self._write_event(event.response())
            elif conn.state is ConnectionState.OPEN:
                # A protocol error wsproto found (it closes with its code, e.g. 1002/1007).
                await self._write_event(CloseConnection(code=event.code, reason=event.reason))
            self._state = _State.CLOSED
            self._close_code = event.code
            return self._disconnect()
        return None  # a pong

    async def _recv(self) -> bytes:
        try:
            await trio.lowlevel.wait_readable(self._sock)
            return await self._sock.recv(_READ_SIZE)
        except OSError:
            return b""

    # -- ASGI send ------------------------------------------------------------------------

    async def send(self, message: AsgiMessage) -> None:
        kind = message["type"]
        state = self._state
        if kind == "websocket.send":
            if state is _State.CONNECTED:
                data = message.get("bytes")
                text = message.get("text")
                event: Event
                if data is not None:
                    event = BytesMessage(data=bytes(data))
                elif isinstance(text, str):
                    event = TextMessage(data=text)
                else:
                    raise TypeError("websocket.send without text or bytes")
                await self._write_event(event)
            elif state is _State.CLOSED:
                await trio.lowlevel.checkpoint()  # dropped: the app learns from receive()
            else:
                raise RuntimeError(f"websocket.send in the state {state.value}")
        elif kind == "websocket.accept" and state is _State.HANDSHAKE:
            await self._accept(message)
        elif kind == "websocket.close":
            if state is _State.HANDSHAKE:
                await self._http_response(403, [], b"")
            elif state is _State.CONNECTED:
                await self._close(int(message.get("code") or 1000), message.get("reason") or "")
            else:
                await trio.lowlevel.checkpoint()
        elif kind == "websocket.http.response.start" and state is _State.HANDSHAKE:
            self._response = (int(message["status"]), list(message.get("headers", ())))
            self._state = _State.RESPONSE
            await trio.lowlevel.checkpoint()
        elif kind == "websocket.http.response.body" and state is _State.RESPONSE:
            self._body.append(message.get("body", b""))
            if message.get("more_body", False):
                await trio.lowlevel.checkpoint()
                return
            assert self._response is not None
            status, headers = self._response
            await self._http_response(status, headers, b"".join(self._body))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in the state {state.value}")

    async def _accept(self, message: AsgiMessage) -> None:
        lines = [
            b"HTTP/1.1 101 Switching Protocols\r\n",
            b"upgrade: websocket\r\n",
            b"connection: Upgrade\r\n",
            b"sec-websocket-accept: %s\r\n" % generate_accept_token(self._key),
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            lines.append(b"sec-websocket-protocol: %s\r\n" % subprotocol.encode("latin-1"))
        for name, value in message.get("headers", ()):
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"\r\n")
        data = b"".join(lines)
        if data.count(b"\n") != len(lines) or data.count(b"\r") != len(lines):
            raise ValueError("a handshake header name or value contains CR or LF")
        self._conn = Connection(ConnectionType.SERVER, trailing_data=self._rest)
        self._rest = b""
        self._state = _State.CONNECTED
        self._accepted.set()
        async with self._write_lock:
            await self._write(data)

    async def _http_response(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        lines = [_status_line(status)]
        lines += [b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() != b"content-length"]
        lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        data = b"".join(lines)
        if data.count(b"\n") != len(lines) or data.count(b"\r") != len(lines):
            raise ValueError("a response header name or value contains CR or LF")
        self._state = _State.CLOSED
        self._close_code = 1006
        self._accepted.set()
        async with self._write_lock:
            await self._write(data + body)

    async def _close(self, code: int, reason: str) -> None:
        if self._close_code is None:
            self._close_code = code
        self._state = _State.CLOSED
        await self._write_event(CloseConnection(code=code, reason=reason))

    async def _write_event(self, event: Event) -> None:
        conn = self._conn
        assert conn is not None
        async with self._write_lock:
            try:
                data = conn.send(event)
            except LocalProtocolError:
                data = b""  # the connection closed meanwhile: nothing to say on it
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        if self._gone or not data:
            await trio.lowlevel.checkpoint()
            return
        try:
            sent = await self._sock.send(data)
            rest = memoryview(data)[sent:]
            try:
                while rest:
                    rest = rest[await self._sock.send(rest) :]
            except trio.Cancelled:
                # Part of the frame is on the wire: finish it (see the module docstring), so
                # that a send that returned sent its message, and one that raised sent none.
                # Not raised here: trio raises the cancellation again at the caller's next
                # checkpoint.
                with trio.CancelScope(deadline=trio.current_time() + FINISH_WRITE, shield=True):
                    while rest:
                        rest = rest[await self._sock.send(rest) :]
                if rest:
                    self._gone = True
        except OSError:
            self._gone = True
            self._state = _State.CLOSED
            if self._close_code is None:
                self._close_code = CloseReason.ABNORMAL_CLOSURE

    # -- the end --------------------------------------------------------------------------

    async def finish(self, *, failed: bool) -> None:
        """After the app returned: close what it left open, then linger (module docstring)."""
        with trio.CancelScope(deadline=trio.current_time() + FINISH_WRITE, shield=True):
            if self._state in (_State.CONNECTING, _State.HANDSHAKE, _State.RESPONSE):
                await self._http_response(500, [], b"")
            elif self._state is _State.CONNECTED:
                code = CloseReason.INTERNAL_ERROR if failed else CloseReason.NORMAL_CLOSURE
                await self._close(code, "")
        if self._gone:
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        with trio.move_on_after(LINGER_SECONDS):
            drained = 0
            while drained < MAX_MESSAGE_BYTES:
                data = await self._recv()
                if not data:
                    return
                drained += len(data)
