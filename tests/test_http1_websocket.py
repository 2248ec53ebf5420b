"""The lean server's WebSocket connections (``server/_ws.py``) on their own: small ASGI apps
speak the ``websocket`` protocol, clients are :mod:`sluicegate.net._websocket` or raw sockets.
The handshake (accepted, refused, denied in HTTP, malformed), messages both ways (fragments,
text and binary, pings), the close handshake from either side, an app that fails or forgets to
close, the message size limit, and backpressure."""

from __future__ import annotations

import base64
import os

import pytest
import trio
import trio.testing
from wsproto.events import BytesMessage, Ping, TextMessage

from sluicegate.net._websocket import WebSocketClosed, WebSocketRefused, open_websocket
from sluicegate.server import _ws
from sluicegate.server._exchange import Message, Receive, Scope, Send

from .test_http1 import Served, http_app, serving


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Accepts, echoes each message with its scope's path, closes (4000) on ``"bye"``."""
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept", "headers": [(b"x-seen", scope["path"].encode())]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "bye":
            await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": f"{scope['path']}:{message['text']}"})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})


def url(served: Served, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{served.port}{path}"


async def test_messages_both_ways_and_the_app_closes() -> None:
    async with serving(http_app(echo)) as served, open_websocket(url(served, "/a")) as ws:
        await ws.send_text("hello")
        assert await ws.receive() == "/a:hello"
        await ws._send(BytesMessage(data=b"abc"))
        assert await ws.receive() == b"cba"
        # A message in fragments reaches the app whole.
        await ws._send(TextMessage(data="frag", message_finished=False))
        await ws._send(TextMessage(data="ments", message_finished=True))
        assert await ws.receive() == "/a:fragments"
        await ws.send_text("bye")
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
        assert (closed.value.code, closed.value.reason) == (4000, "bye")


async def test_a_ping_is_answered_and_the_scope_is_a_websocket_one() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await echo(scope, receive, send)

    async with serving(http_app(app)) as served:
        headers = [("sec-websocket-protocol", "one, two")]
        async with open_websocket(url(served) + "?q=1", headers=headers) as ws:
            await ws._send(Ping(payload=b"still there?"))
            await ws.send_text("x")  # the pong comes first; the client consumes it
            assert await ws.receive() == "/ws:x"
    [scope] = scopes
    assert (scope["scheme"], scope["path"], scope["query_string"]) == ("ws", "/ws", b"q=1")
    assert scope["subprotocols"] == ["one", "two"]
    assert "websocket.http.response" in scope["extensions"]
    assert "method" not in scope


async def test_the_client_closing_is_a_disconnect_with_its_code() -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())
        seen.append(await receive())  # still closed

    async with serving(http_app(app)) as served:
        async with open_websocket(url(served)) as ws:
            await ws.aclose(4001, "done")
        with trio.fail_after(5):
            while len(seen) < 2:
                await trio.testing.wait_all_tasks_blocked()
    assert seen == [{"type": "websocket.disconnect", "code": 4001}] * 2


async def test_a_connection_lost_without_a_close_frame_is_1006() -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())

    async with serving(http_app(app)) as served:
        stream = await handshake(served)
        await stream.aclose()
        with trio.fail_after(5):
            while not seen:
                await trio.testing.wait_all_tasks_blocked()
    assert seen == [{"type": "websocket.disconnect", "code": 1006}]


@pytest.mark.parametrize(
    ("denial", "status"),
    [
        ([{"type": "websocket.close"}], 403),
        (
            [
                {"type": "websocket.http.response.start", "status": 401, "headers": []},
                {"type": "websocket.http.response.body", "body": b"no ", "more_body": True},
                {"type": "websocket.http.response.body", "body": b"entry"},
            ],
            401,
        ),
    ],
    ids=["close", "http-response"],
)
async def test_a_denied_handshake_is_an_http_answer(denial: list[Message], status: int) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        for message in denial:
            await send(message)

    async with serving(http_app(app)) as served:
        with pytest.raises(WebSocketRefused) as refused:
            async with open_websocket(url(served)):
                pass
    assert refused.value.status == status
    assert refused.value.body == (b"no entry" if status == 401 else b"")


@pytest.mark.parametrize(
    ("app_end", "code"),
    [("return", 1000), ("raise", 1011)],
)
async def test_an_app_that_leaves_an_open_connection_closes_it(app_end: str, code: int) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if app_end == "raise":
            raise RuntimeError("the app broke")

    async with serving(http_app(app)) as served, open_websocket(url(served)) as ws:
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
    assert closed.value.code == code


async def test_an_app_that_never_accepts_is_a_500() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async with serving(http_app(app)) as served:
        with pytest.raises(WebSocketRefused) as refused:
            async with open_websocket(url(served)):
                pass
    assert refused.value.status == 500


def _key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"], 400),
        (
            [
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {_key()}",
                "Sec-WebSocket-Version: 8",
            ],
            426,
        ),
        (
            [
                "Upgrade: websocket",
                "Connection: keep-alive",
                f"Sec-WebSocket-Key: {_key()}",
                "Sec-WebSocket-Version: 13",
            ],
            400,
        ),
    ],
    ids=["no-key", "old-version", "no-connection-upgrade"],
)
async def test_a_malformed_handshake_is_refused(headers: list[str], status: int) -> None:
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)

    async with serving(http_app(app)) as served, await served.connect() as client:
        await client.send(get("/ws", *headers))
        answer = await client.stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert not called


def get(path: str, *headers: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: t\r\n" + "".join(f"{h}\r\n" for h in headers)
    ).encode() + (b"\r\n")


async def handshake(served: Served, *, receive_buffer: int | None = None) -> trio.SocketStream:
    """A raw connection past a good handshake (the 101 read)."""
    client = await served.connect(receive_buffer=receive_buffer)
    key = _key()
    await client.send(
        get(
            "/ws",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        )
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await client.stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101 ")
    return client.stream


async def test_a_message_over_the_limit_closes_with_1009(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ws, "MAX_MESSAGE_BYTES", 1000)
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())

    async with serving(http_app(app)) as served, open_websocket(url(served)) as ws:
        await ws._send(TextMessage(data="x" * 600, message_finished=False))
        await ws._send(TextMessage(data="x" * 600, message_finished=True))
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
    assert closed.value.code == 1009
    assert seen == [{"type": "websocket.disconnect", "code": 1009}]


async def test_a_send_waits_for_a_client_that_does_not_read() -> None:
    """Backpressure: ``websocket.send`` returns once its frame is written, so an app sending to
    a client that reads nothing stops at the full socket; reading on lets it go on."""
    sent = 0
    chunk = "y" * 16384

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal sent
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(2000):
            await send({"type": "websocket.send", "text": chunk})
            sent += 1
        await send({"type": "websocket.close", "code": 1000})

    async with serving(http_app(app), send_buffer=16384) as served:
        stream = await handshake(served, receive_buffer=16384)
        readings = []
        for _ in range(3):
            await trio.testing.wait_all_tasks_blocked(0.02)
            readings.append(sent)
        assert len(set(readings)) == 1 and readings[0] < 2000 / 4, readings
        received = 0
        with trio.fail_after(30):
            while data := await stream.receive_some(65536):
                received += len(data)
        await stream.aclose()
    assert sent == 2000 and received > 2000 * 16384


async def test_shutdown_cancels_an_open_connection_after_the_grace() -> None:
    """The server's shutdown treats a WebSocket as a request in flight: it has the graceful
    timeout to end, then is cancelled; what the app sends as it is cancelled (shielded) still
    reaches the client."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await receive()
        finally:
            with trio.CancelScope(shield=True):
                await send({"type": "websocket.close", "code": 1001, "reason": "going away"})

    async with (
        serving(http_app(app), graceful_timeout=0.1) as served,
        open_websocket(url(served)) as ws,
    ):
        served.stop.set()
        with trio.fail_after(10), pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
    assert closed.value.code == 1001
