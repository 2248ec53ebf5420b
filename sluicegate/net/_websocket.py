"""A small WebSocket client on trio: wsproto (sans-IO) over a trio stream, TLS for ``wss://``.

What the gateway needs of one: to hold a connection to an upstream's WebSocket mode for a
client's connection, send it text messages and read its messages one at a time. So: text and
binary messages, pings answered, no extensions (no compression), no redirects. Reading is only
done by :meth:`WebSocketClient.receive` (an upstream that sends while nobody reads waits in its
socket: backpressure); writes are serialized.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Final
from urllib.parse import urlsplit

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

__all__ = [
    "WebSocketClient",
    "WebSocketClosed",
    "WebSocketRefused",
    "connect_websocket",
    "open_websocket",
]

_READ_SIZE: Final = 65536
#: The largest message accepted (as the server's ``MAX_MESSAGE_BYTES``).
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024


class WebSocketRefused(Exception):
    """The server answered the handshake in HTTP (``status``, ``body``), or broke it."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the WebSocket handshake was refused with HTTP {status}")
        self.status = status
        self.body = body


class WebSocketClosed(Exception):
    """The connection is closed (``code``: the close frame's, 1006 when it was lost)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"the WebSocket closed ({code}) {reason}".rstrip())
        self.code = code
        self.reason = reason


@attrs.define(eq=False)
class WebSocketClient:
    """An open client connection (made by :func:`open_websocket`)."""

    _stream: trio.abc.Stream
    _ws: WSConnection
    _write_lock: trio.StrictFIFOLock = attrs.Factory(trio.StrictFIFOLock)
    _closed: WebSocketClosed | None = None
    _parts: list[str | bytes] = attrs.Factory(list)
    _size: int = 0

    @property
    def closed(self) -> WebSocketClosed | None:
        return self._closed

    async def send_text(self, text: str) -> None:
        """Send one text message (awaits its write).

        Raises:
            WebSocketClosed: the connection is closed.
        """
        await self._send(TextMessage(data=text))

    async def receive(self) -> str | bytes:
        """The next message.

        Raises:
            WebSocketClosed: the connection closed (by either side, or lost).
        """
        while True:
            for event in self._ws.events():
                message = await self._on_event(event)
                if message is not None:
                    return message
            if self._closed is not None:
                raise self._closed
            try:
                data = await self._stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            self._ws.receive_data(bytes(data) or None)

    async def _on_event(self, event: Event) -> str | bytes | None:
        if isinstance(event, Message):
            self._size += len(event.data)
            if self._size > MAX_MESSAGE_BYTES:
                await self.aclose(1009, "message too big")
                raise WebSocketClosed(1009, "message too big")
            self._parts.append(event.data)
            if not event.message_finished:
                return None
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(event, TextMessage):
                return "".join(p for p in parts if isinstance(p, str))
            return b"".join(p for p in parts if isinstance(p, bytes | bytearray))
        if isinstance(event, Ping):
            await self._send(event.response())
        elif isinstance(event, CloseConnection):
            if self._closed is None:
                self._closed = WebSocketClosed(event.code, event.reason or "")
                with suppress(WebSocketClosed, LocalProtocolError):
                    await self._send(event.response())
                await self._stream.aclose()
            raise self._closed
        return None

    async def _send(self, event: Event) -> None:
        async with self._write_lock:
            if self._closed is not None and not isinstance(event, CloseConnection):
                raise self._closed
            try:
                data = self._ws.send(event)
            except LocalProtocolError:
                raise self._closed or WebSocketClosed(1006) from None
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self._closed = self._closed or WebSocketClosed(1006, "connection lost")
                raise self._closed from None

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close: send the close frame (if still open), then the stream."""
        if self._closed is None:
            self._closed = WebSocketClosed(code, reason)
            with suppress(WebSocketClosed, LocalProtocolError):
                await self._send(CloseConnection(code=code, reason=reason))
        await self._stream.aclose()


@asynccontextmanager
async def open_websocket(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float = 30.0,
) -> AsyncIterator[WebSocketClient]:
    """:func:`connect_websocket` for the ``async with`` body; closed (1000) on the way out."""
    client = await connect_websocket(
        url, headers=headers, ssl_context=ssl_context, handshake_timeout=handshake_timeout
    )
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True) as cleanup:
            cleanup.deadline = trio.current_time() + 5
            await client.aclose()


async def connect_websocket(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float = 30.0,
) -> WebSocketClient:
    """Connect to ``url`` (``ws://`` or ``wss://``); the caller closes it (``aclose``).

    Raises:
        WebSocketRefused: the handshake was answered in HTTP, or not at all in time.
        OSError: the connection failed.
    """
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        if secure:
            context = ssl_context or ssl.create_default_context()
            tls = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
            await tls.do_handshake()
            stream = tls
        ws = WSConnection(ConnectionType.CLIENT)
        authority = host if parts.port is None else f"{host}:{port}"
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await stream.send_all(ws.send(Request(host=authority, target=target, extra_headers=extra)))
        with trio.move_on_after(handshake_timeout):
            await _handshake(stream, ws)
        if ws.state.name != "OPEN":
            raise WebSocketRefused(0, b"no answer to the handshake")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return WebSocketClient(stream, ws)


async def _handshake(stream: trio.abc.Stream, ws: WSConnection) -> None:
    status = 0
    body: list[bytes] = []
    while True:
        data = await stream.receive_some(_READ_SIZE)
        ws.receive_data(bytes(data) or None)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise WebSocketRefused(status, b"")
            elif isinstance(event, RejectData):
                body.append(event.data)
                if event.body_finished:
                    raise WebSocketRefused(status, b"".join(body))
        if not data:
            raise WebSocketRefused(status, b"".join(body))
