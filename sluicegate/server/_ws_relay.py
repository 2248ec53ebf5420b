"""WebSocket mode's relay: a client connection's messages that the gateway does not run itself,
passed to the upstream WebSocket of the deployment they are about (docs/websocket.md).

Theory of operation. A client connection holds at most one upstream connection per upstream
endpoint (URL and credential), opened at the first message relayed to it and closed with the
client connection. Each has a pump task in the client connection's nursery that passes every
upstream message to the client as it is, one at a time (a client that does not read stops the
pump, and the upstream's sends wait in its socket). An upstream connection that closes is
reported to the client as an ``error`` event naming its close code; the next message relayed
there opens a new one. Relayed messages and what the upstream answers are passed through, not
recorded nor accounted: the responses the gateway records are the ones it runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import orjson
import trio

from .._gateway import (
    WebSocketClient,
    WebSocketClosed,
    WebSocketRefused,
    connect_websocket,
)
from ..errors import SluicegateError, UpstreamConnectionError

if TYPE_CHECKING:
    from .._gateway import WebSocketUpstream

__all__ = ["Relays"]

_Key = tuple[str, tuple[tuple[str, str], ...]]


@attrs.define(eq=False)
class Relays:
    """The upstream connections of one client connection (module docstring)."""

    #: Sends one text message to the client.
    _to_client: Callable[[str], Awaitable[None]]
    #: Sends an error event to the client.
    _error: Callable[[SluicegateError], Awaitable[None]]
    _open: dict[_Key, WebSocketClient] = attrs.Factory(dict)

    async def relay(self, nursery: trio.Nursery, target: WebSocketUpstream) -> None:
        """Send ``target.message`` upstream, connecting first if need be (the pump runs in
        ``nursery``, the client connection's).

        Raises:
            UpstreamConnectionError: the upstream could not be reached or refused the handshake,
                or its connection closed before the message was sent.
        """
        key = (target.url, target.headers)
        upstream = self._open.get(key)
        if upstream is None or upstream.closed is not None:
            try:
                upstream = await connect_websocket(target.url, headers=target.headers)
            except WebSocketRefused as exc:
                raise UpstreamConnectionError(
                    f"The upstream refused WebSocket mode (HTTP {exc.status}).", retryable=False
                ) from exc
            except OSError as exc:
                raise UpstreamConnectionError(
                    "The upstream's WebSocket could not be reached."
                ) from exc
            self._open[key] = upstream
            nursery.start_soon(self._pump, key, upstream)
        try:
            await upstream.send_text(orjson.dumps(target.message).decode())
        except WebSocketClosed as exc:
            raise UpstreamConnectionError(
                f"The upstream's WebSocket closed ({exc.code}) before the message was sent."
            ) from exc

    async def _pump(self, key: _Key, upstream: WebSocketClient) -> None:
        try:
            while True:
                message = await upstream.receive()
                text = message if isinstance(message, str) else message.decode(errors="replace")
                await self._to_client(text)
        except WebSocketClosed as closed:
            if self._open.get(key) is upstream:
                del self._open[key]
            await self._error(
                UpstreamConnectionError(
                    f"The upstream's WebSocket closed ({closed.code}); the next message relayed "
                    "there opens a new one.",
                    retryable=False,
                )
            )
        finally:
            if self._open.get(key) is upstream:
                del self._open[key]
            with trio.CancelScope(shield=True) as cleanup:
                cleanup.deadline = trio.current_time() + 5
                await upstream.aclose()
