"""The upstream WebSockets of one client connection in WebSocket mode (docs/websocket.md).

Theory of operation. A client connection of the proxy's WebSocket mode holds at most one
upstream WebSocket per deployment that offers WebSocket mode (``litellm_params.websocket``):
opened by the first ``response.create`` routed there (or the first message relayed there),
reused by the connection's following ones, closed with the client connection. On one socket the
upstream keeps the connection-local state that ``store: false`` chains need, so the responses
of a client connection at a deployment all go over the same socket.

Each held socket has a reader task in the client connection's nursery. It reads one message at
a time and hands it over an unbuffered channel: while a response runs on the socket (``busy``),
the connector pulls its messages (a caller that does not read stops the reads, and the
upstream's writes wait in its socket); steering events (``response.steer.*``), and anything
that comes while no response runs, go to the client as they are. A socket whose response did
not end at its terminal event (cut, timed out, broken, cancelled) is closed: what it might
still send belongs to no response. The next ``response.create`` opens a new one, whose upstream
knows nothing of the old one's responses (a ``store: false`` chain ends there).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import orjson
import trio

from ._websocket import WebSocketClient, WebSocketClosed, connect_websocket

__all__ = ["HeldSocket", "UpstreamSockets"]

#: Response IDs remembered per socket (what ``previous_response_id`` may name on it).
_MADE: Final = 64
#: The longest closing an upstream socket may take.
_CLOSE_GRACE: Final = 5.0


@attrs.define(eq=False)
class HeldSocket:
    """An open upstream socket of a client connection, at one deployment."""

    deployment_id: str
    client: WebSocketClient = attrs.field(repr=False)
    #: Messages of the running response, as (type, text), from the reader task.
    inbox: trio.MemoryReceiveChannel[tuple[str, str]] = attrs.field(repr=False)
    #: A response runs on it: its messages go to the connector.
    busy: bool = False
    #: The upstream's ID of the response running (or last run) on it.
    running: str | None = None
    #: The upstream's IDs of the responses made on it, newest last.
    made: deque[str] = attrs.Factory(lambda: deque(maxlen=_MADE))
    #: Closed (by either side); never used again.
    closed: bool = False
    #: The reader task's scope (cancelled when the socket is discarded).
    reader: trio.CancelScope = attrs.Factory(trio.CancelScope)

    async def send(self, message: dict[str, object]) -> None:
        """Send one JSON message.

        Raises:
            WebSocketClosed: the socket is closed.
        """
        if self.closed:
            raise WebSocketClosed(1006, "closed")
        await self.client.send_text(orjson.dumps(message).decode())


@attrs.define(eq=False)
class UpstreamSockets:
    """The upstream sockets of one client connection (module docstring). Made by the proxy's
    WebSocket mode, carried by each of the connection's calls (``PreparedCall.sockets``)."""

    #: The client connection's nursery: the reader tasks run there.
    _nursery: trio.Nursery
    #: Sends one text message to the client (steering events, messages between responses).
    _to_client: Callable[[str], Awaitable[None]]
    _held: dict[str, HeldSocket] = attrs.Factory(dict)
    #: The upstream's response IDs the client knows by another name (rewritten in steering
    #: events), raw ID -> the client's.
    _aliases: dict[str, str] = attrs.Factory(dict)

    def held(self, deployment_id: str) -> HeldSocket | None:
        """The open socket at ``deployment_id``, if any."""
        held = self._held.get(deployment_id)
        return None if held is None or held.closed else held

    def busy(self) -> HeldSocket | None:
        """The open socket a response is running on, if any (one at a time per client
        connection)."""
        for held in self._held.values():
            if held.busy and not held.closed:
                return held
        return None

    def made(self, deployment_id: str | None, upstream_id: str | None) -> bool:
        """Whether the upstream response ``upstream_id`` was made on the open socket at
        ``deployment_id`` (so its connection-local state may still be there)."""
        if deployment_id is None or upstream_id is None:
            return False
        held = self.held(deployment_id)
        return held is not None and upstream_id in held.made

    def alias(self, upstream_id: str, client_id: str) -> None:
        """Steering events naming ``upstream_id`` name ``client_id`` to the client."""
        if len(self._aliases) >= _MADE:
            self._aliases.pop(next(iter(self._aliases)))
        self._aliases[upstream_id] = client_id

    async def acquire(
        self,
        deployment_id: str,
        url: str,
        headers: tuple[tuple[str, str], ...],
        *,
        handshake_timeout: float | None = None,
    ) -> HeldSocket:
        """The open socket at ``deployment_id``, opened (to ``url``, with ``headers``) if
        there is none.

        Raises:
            WebSocketRefused: the handshake was answered in HTTP, or not at all in time.
            OSError: the connection failed.
        """
        held = self.held(deployment_id)
        if held is not None:
            return held
        client = await connect_websocket(
            url, headers=headers, handshake_timeout=handshake_timeout or 30.0
        )
        send, inbox = trio.open_memory_channel[tuple[str, str]](0)
        held = HeldSocket(deployment_id, client, inbox)
        self._held[deployment_id] = held
        self._nursery.start_soon(self._read, held, send)
        return held

    def discard(self, held: HeldSocket) -> None:
        """Close ``held`` (its response did not end cleanly); the next use opens another."""
        held.reader.cancel()
        held.inbox.close()
        if not held.closed:
            held.closed = True
            self._nursery.start_soon(self._close, held)
        if self._held.get(held.deployment_id) is held:
            del self._held[held.deployment_id]

    async def aclose(self) -> None:
        """Close every socket (the client connection ends)."""
        for held in list(self._held.values()):
            held.reader.cancel()
            held.closed = True
            await self._close(held)
        self._held.clear()

    async def _close(self, held: HeldSocket) -> None:
        with trio.CancelScope(shield=True) as cleanup:
            cleanup.deadline = trio.current_time() + _CLOSE_GRACE
            await held.client.aclose()

    async def _read(self, held: HeldSocket, send: trio.MemorySendChannel[tuple[str, str]]) -> None:
        with held.reader, send:
            try:
                while True:
                    message = await held.client.receive()
                    text = message if isinstance(message, str) else message.decode(errors="replace")
                    kind = _type_of(text)
                    if kind.startswith("response.steer") or not held.busy:
                        await self._to_client(self._rewritten(text, kind))
                        continue
                    try:
                        await send.send((kind, text))
                    except trio.BrokenResourceError:
                        return  # no one pulls any more: the connection ends
            except WebSocketClosed:
                held.closed = True
                if self._held.get(held.deployment_id) is held:
                    del self._held[held.deployment_id]

    def _rewritten(self, text: str, kind: str) -> str:
        """A steering event names the response by the client's ID."""
        if not kind.startswith("response.steer") or not self._aliases:
            return text
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
        steer = event.get("steer") if isinstance(event, dict) else None
        if isinstance(steer, dict):
            alias = self._aliases.get(steer.get("previous_response_id"))  # type: ignore[arg-type]
            if alias is not None:
                event["steer"] = {**steer, "previous_response_id": alias}
                return orjson.dumps(event).decode()
        return text


def _type_of(text: str) -> str:
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return ""
    kind = event.get("type") if isinstance(event, dict) else None
    return kind if isinstance(kind, str) else ""
