"""The lean HTTP/1.1 server (``server/_http1.py``) on its own, over loopback sockets.

Small ASGI apps stand for the proxy and raw sockets for the clients, so that every byte on the
wire is the test's choice: keep-alive and its idle timeout, pipelining, ``Connection: close``,
HTTP/1.0, request bodies (chunked, ``100-continue``, unread), malformed and oversized heads,
hang-ups, graceful shutdown, backpressure, and the lifespan. Timing is trio's: the clock is
autojumped where a timeout is the point, and ``wait_all_tasks_blocked`` says when the server has
done all it can.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate.server._exchange import Message, Receive, Scope, Send
from sluicegate.server._http1 import MAX_HEADERS, StartupError, bind_socket, serve_http1

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

KEEP_ALIVE = 5.0
GRACE = 2.0


# -- the apps ----------------------------------------------------------------------------------


async def _lifespan(receive: Receive, send: Send) -> None:
    assert (await receive())["type"] == "lifespan.startup"
    await send({"type": "lifespan.startup.complete"})
    assert (await receive())["type"] == "lifespan.shutdown"
    await send({"type": "lifespan.shutdown.complete"})


def http_app(handler: Handler) -> Handler:
    """An ASGI app: ``handler`` for HTTP, and the lifespan spoken."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        else:
            await handler(scope, receive, send)

    return app


async def read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The request body, and the messages it came in."""
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    return b"".join(m.get("body", b"") for m in messages), messages


async def answer(send: Send, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with what it saw: method, path, query and body."""
    body, _ = await read_body(receive)
    seen = {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode(),
        "body": body.decode(),
    }
    await answer(send, orjson.dumps(seen))


# -- the server and its clients ----------------------------------------------------------------


@attrs.define(eq=False)
class Served:
    port: int
    stop: trio.Event
    #: Set when ``serve_http1`` has returned.
    done: trio.Event

    async def connect(self, *, receive_buffer: int | None = None) -> Client:
        sock = trio.socket.socket()
        try:
            if receive_buffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await sock.connect(("127.0.0.1", self.port))
        except BaseException:
            sock.close()
            raise
        return Client(trio.SocketStream(sock))


@asynccontextmanager
async def serving(
    app: Handler,
    *,
    keep_alive_timeout: float = KEEP_ALIVE,
    graceful_timeout: float = GRACE,
    send_buffer: int | None = None,
) -> AsyncIterator[Served]:
    """Serve ``app`` on a free loopback port for the block; shut down gracefully after it."""
    sock = bind_socket("127.0.0.1", 0)
    if send_buffer is not None:  # accepted connections inherit it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    served = Served(sock.getsockname()[1], trio.Event(), trio.Event())

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve_http1(
                app,
                [sock],
                graceful_timeout=graceful_timeout,
                keep_alive_timeout=keep_alive_timeout,
                shutdown_trigger=served.stop.wait,
                task_status=task_status,
            )
        finally:
            served.done.set()

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        assert binds == [f"http://127.0.0.1:{served.port}"]
        try:
            yield served
        finally:
            served.stop.set()


@attrs.frozen
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


@attrs.define(eq=False)
class Client:
    """A raw HTTP/1.1 client: sends bytes, reads responses as they are framed."""

    stream: trio.SocketStream
    buffer: bytearray = attrs.Factory(bytearray)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        self.buffer += data
        return bool(data)

    async def _until(self, marker: bytes) -> bytes:
        while (at := self.buffer.find(marker)) < 0:
            if not await self._fill():
                raise EOFError(bytes(self.buffer))
        found = bytes(self.buffer[:at])
        del self.buffer[: at + len(marker)]
        return found

    async def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError(bytes(self.buffer))
        found = bytes(self.buffer[:size])
        del self.buffer[:size]
        return found

    async def head(self) -> Answer:
        head = await self._until(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        version, status, _ = status_line.split(b" ", 2)
        assert version == b"HTTP/1.1", status_line
        fields = (line.split(b": ", 1) for line in lines)
        return Answer(int(status), {name.lower(): value for name, value in fields}, b"")

    async def chunk(self) -> bytes:
        """One chunk of a chunked body (b"" for the last, its blank line read too)."""
        size = int(await self._until(b"\r\n"), 16)
        data = await self._exactly(size)
        assert await self._until(b"\r\n") == b""
        return data

    async def response(self, *, body: bool = True) -> Answer:
        head = await self.head()
        if not body:
            return head
        headers = head.headers
        if b"content-length" in headers:
            data = await self._exactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            pieces = []
            while piece := await self.chunk():
                pieces.append(piece)
            data = b"".join(pieces)
        else:
            while await self._fill():
                pass
            data = bytes(self.buffer)
            self.buffer.clear()
        return attrs.evolve(head, body=data)

    async def closed(self) -> bool:
        """Whether the server closed the connection (with nothing more sent)."""
        return not self.buffer and not await self._fill()


def get(path: str = "/", *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: test", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def seen(answer: Answer) -> dict[str, Any]:
    assert answer.status == 200, answer
    found: dict[str, Any] = orjson.loads(answer.body)
    return found


# -- keep-alive, pipelining, closing -----------------------------------------------------------


async def test_keep_alive_serves_requests_one_after_another_on_one_connection() -> None:
    clients: list[Any] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        clients.append(scope["client"])
        await echo(scope, receive, send)

    async with serving(http_app(handler)) as server, await server.connect() as client:
        for n in range(3):
            await client.send(get(f"/n{n}?q=%20{n}"))
            answer = await client.response()
            assert seen(answer) == {
                "method": "GET",
                "path": f"/n{n}",
                "query": f"q=%20{n}",
                "body": "",
            }
            assert b"connection" not in answer.headers and b"date" in answer.headers
    assert len(clients) == 3 and len(set(clients)) == 1


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serving(http_app(echo)) as server, await server.connect() as client:
        await client.send(get("/"))
        await client.response()
        answered = trio.current_time()
        assert await client.closed()
        assert trio.current_time() - answered == pytest.approx(KEEP_ALIVE)


async def test_a_head_trickled_in_gets_no_more_than_the_keep_alive_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serving(http_app(echo)) as server, await server.connect() as client:
        connected = trio.current_time()
        for piece in (b"GET / HTTP/1.1\r\n", b"host: test\r\n", b"x-slow: 1\r\n"):
            await client.send(piece)
            await trio.sleep(KEEP_ALIVE / 4)
        assert await client.closed()
        assert trio.current_time() - connected == pytest.approx(KEEP_ALIVE)


async def test_pipelined_requests_are_answered_one_at_a_time_in_order() -> None:
    started: list[str] = []
    release = trio.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        started.append(scope["path"])
        if scope["path"] == "/first":
            await release.wait()
        await echo(scope, receive, send)

    async with serving(http_app(handler)) as server, await server.connect() as client:
        await client.send(get("/first") + post("/second", b"two") + get("/third"))
        await trio.testing.wait_all_tasks_blocked()
        assert started == ["/first"]  # the others wait, parsed, for the first to be answered
        release.set()
        answers = [seen(await client.response()) for _ in range(3)]
    assert [(a["path"], a["body"]) for a in answers] == [
        ("/first", ""),
        ("/second", "two"),
        ("/third", ""),
    ]
    assert started == ["/first", "/second", "/third"]


async def test_connection_close_is_honoured_and_what_follows_it_ignored() -> None:
    async with serving(http_app(echo)) as server, await server.connect() as client:
        await client.send(get("/a", "connection: close") + get("/b"))
        answer = await client.response()
        assert seen(answer)["path"] == "/a" and answer.headers[b"connection"] == b"close"
        assert await client.closed()


async def test_http_1_0_is_answered_then_closed_with_a_body_ending_at_the_close() -> None:
    async def streamed(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one ", b"two"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with serving(http_app(streamed)) as server, await server.connect() as client:
        await client.send(get("/", "connection: keep-alive", version="1.0"))
        answer = await client.response()
    assert answer.headers[b"connection"] == b"close"
    assert b"transfer-encoding" not in answer.headers and b"content-length" not in answer.headers
    assert answer.body == b"one two"


async def test_a_streamed_response_is_chunked_and_a_single_body_gets_a_length() -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/stream":
            await send({"type": "http.response.body", "body": b"ab", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd"})

    async with serving(http_app(handler)) as server, await server.connect() as client:
        await client.send(get("/stream") + get("/single"))
        streamed = await client.head()
        assert streamed.headers[b"transfer-encoding"] == b"chunked"
        assert [await client.chunk() for _ in range(3)] == [b"ab", b"cd", b""]
        single = await client.response()
    assert single.headers[b"content-length"] == b"2" and single.body == b"cd"


async def test_a_head_request_gets_the_head_only_and_the_connection_stays() -> None:
    async with serving(http_app(echo)) as server, await server.connect() as client:
        await client.send(b"HEAD / HTTP/1.1\r\nhost: test\r\n\r\n" + get("/after"))
        head = await client.response(body=False)
        assert head.status == 200 and int(head.headers[b"content-length"]) > 0
        assert seen(await client.response())["path"] == "/after"


# -- request bodies ----------------------------------------------------------------------------


async def test_a_chunked_request_body_streams_to_the_app_as_it_arrives() -> None:
    got: list[list[Message]] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        body, messages = await read_body(receive)
        got.append(messages)
        await answer(send, body)

    async with serving(http_app(handler)) as server, await server.connect() as client:
        await client.send(
            b"POST /up HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await trio.testing.wait_all_tasks_blocked()
        await client.send(b"1;ext=x\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
        answer_ = await client.response()
    assert answer_.body == b"hello world"
    [messages] = got
    assert messages[0] == {"type": "http.request", "body": b"hello", "more_body": True}
    assert messages[-1]["more_body"] is False
    assert all(m["type"] == "http.request" for m in messages)


async def test_expect_100_continue_is_answered_when_the_app_reads_the_body() -> None:
    async with serving(http_app(echo)) as server, await server.connect() as client:
        await client.send(
            b"POST /up HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        interim = await client.head()
        assert interim.status == 100
        await client.send(b"hello")
        assert seen(await client.response())["body"] == "hello"


async def test_an_upgrade_is_ignored_the_request_answered_and_the_connection_closed() -> None:
    """``Upgrade: h2c`` (``curl --http2`` on ``http://``) is answered in HTTP/1.1, its body
    read although the parser takes what follows the head as another protocol's."""
    async with serving(http_app(echo)) as server, await server.connect() as client:
        await client.send(
            b"POST /up HTTP/1.1\r\nhost: test\r\nconnection: upgrade, http2-settings\r\n"
            b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
            b"content-length: 11\r\n\r\nhello"
        )
        await trio.testing.wait_all_tasks_blocked()
        await client.send(b" world")
        answer_ = await client.response()
        assert seen(answer_)["body"] == "hello world"
        assert answer_.headers[b"connection"] == b"close" and await client.closed()


async def test_a_body_the_app_leaves_unread_keeps_the_connection_only_if_all_arrived() -> None:
    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await answer(send, b"no", status=401)

    async with serving(http_app(refuse)) as server:
        async with await server.connect() as client:
            await client.send(post("/", b"small body") + get("/next"))
            first = await client.response()
            assert first.status == 401 and b"connection" not in first.headers
            assert (await client.response()).status == 401  # the same connection, reused
        async with await server.connect() as client:
            # Half the body arrived: not worth waiting for the rest.
            await client.send(post("/", b"0123456789")[:-5])
            partial_ = await client.response()
            assert partial_.status == 401 and partial_.headers[b"connection"] == b"close"
            assert await client.closed()


async def test_no_100_continue_when_the_app_answers_without_reading() -> None:
    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await answer(send, b"no", status=413)

    async with serving(http_app(refuse)) as server, await server.connect() as client:
        await client.send(
            b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 9\r\nexpect: 100-continue\r\n\r\n"
        )
        answer_ = await client.response()
        assert answer_.status == 413 and answer_.headers[b"connection"] == b"close"
        assert await client.closed()


# -- malformed and oversized requests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nx-big: " + b"v" * (20 * 1024) + b"\r\n\r\n", 431),
        (
            b"GET / HTTP/1.1\r\n"
            + b"".join(b"x-%d: v\r\n" % n for n in range(MAX_HEADERS + 1))
            + b"\r\n",
            431,
        ),
    ],
    ids=[
        "not-http",
        "bad-header-line",
        "folded-header",
        "two-lengths",
        "http-2.0",
        "h2-preface",
        "non-ascii-path",
        "head-too-large",
        "too-many-headers",
    ],
)
async def test_a_malformed_request_is_refused_and_the_connection_closed(
    request_: bytes, status: int
) -> None:
    calls: list[Scope] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope)
        await echo(scope, receive, send)

    async with serving(http_app(handler)) as server, await server.connect() as client:
        await client.send(request_)
        refused = await client.response()
        assert (refused.status, refused.body) == (status, b"")
        assert refused.headers[b"connection"] == b"close"
        assert await client.closed()
    assert calls == []


async def test_a_head_that_trickles_in_without_end_is_refused_past_the_limit() -> None:
    async with serving(http_app(echo)) as server, await server.connect() as client:
        await client.send(b"GET / HTTP/1.1\r\nx-long: ")
        # Past the limit the server answers and stops writing, but reads on for a moment: a
        # client still sending gets its answer, not a reset.
        for _ in range(64):
            await client.send(b"v" * 1024)
            await trio.testing.wait_all_tasks_blocked()
        refused = await client.response()
        assert await client.closed()
    assert refused.status == 431


async def test_a_malformed_chunked_body_is_a_disconnect_to_the_app_and_a_400() -> None:
    received: list[Message] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        _, messages = await read_body(receive)
        received.extend(messages)
        if messages[-1]["type"] != "http.disconnect":
            await answer(send, b"read")

    async with serving(http_app(handler)) as server, await server.connect() as client:
        await client.send(
            b"POST / HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
        )
        refused = await client.response()
        assert refused.status == 400 and await client.closed()
    assert received[-1] == {"type": "http.disconnect"}


async def test_an_app_that_fails_before_answering_is_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async with serving(http_app(failing)) as server, await server.connect() as client:
        await client.send(get("/"))
        failed = await client.response()
        assert failed.status == 500 and await client.closed()
    assert "the ASGI app failed" in caplog.text


async def test_a_header_that_would_split_the_response_is_never_written() -> None:
    """Regression guard: a header value with CRLF (say, echoing something a client sent) must
    not add a line to the head; the app's send fails and the client gets a 500."""
    failures: list[BaseException] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-echo", b"a\r\nset-cookie: evil=1")],
            }
        )
        try:
            await send({"type": "http.response.body", "body": b"x"})
        except ValueError as exc:
            failures.append(exc)

    async with serving(http_app(handler)) as server, await server.connect() as client:
        await client.send(get("/"))
        answer_ = await client.response()
    assert answer_.status == 500 and b"set-cookie" not in answer_.headers
    assert len(failures) == 1


# -- hang-ups, shutdown, backpressure ----------------------------------------------------------


async def test_a_client_that_hangs_up_mid_stream_is_an_http_disconnect() -> None:
    received: list[Message] = []
    done = trio.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        received.append(await receive())  # the proxy's disconnect watcher waits so
        done.set()

    async with serving(http_app(handler)) as server:
        client = await server.connect()
        async with client:
            await client.send(post("/", b"{}"))
            await client.head()
            assert await client.chunk() == b"first"
            await trio.testing.wait_all_tasks_blocked()
            assert received == []  # nothing to say while the client is there
        await done.wait()
    assert received == [{"type": "http.disconnect"}]


async def test_a_client_that_hangs_up_mid_body_is_an_http_disconnect() -> None:
    received: list[Message] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        _, messages = await read_body(receive)
        received.extend(messages)

    async with serving(http_app(handler)) as server:
        async with await server.connect() as client:
            await client.send(post("/", b"0123456789")[:-4])
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
    assert received[0]["body"] == b"012345" and received[-1] == {"type": "http.disconnect"}


async def test_graceful_shutdown_closes_idle_connections_and_lets_in_flight_finish(
    autojump_clock: trio.abc.Clock,
) -> None:
    release = trio.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            await release.wait()
        await echo(scope, receive, send)

    async with serving(http_app(handler)) as server:
        idle = await server.connect()
        busy = await server.connect()
        await idle.send(get("/quick"))
        await idle.response()
        await busy.send(get("/slow"))
        await trio.testing.wait_all_tasks_blocked()
        stopped = trio.current_time()
        server.stop.set()
        assert await idle.closed()  # at once
        assert trio.current_time() == stopped
        with pytest.raises(OSError):  # no longer accepting
            await server.connect()
        await trio.sleep(GRACE / 2)
        release.set()
        finished = await busy.response()
        assert seen(finished)["path"] == "/slow" and finished.headers[b"connection"] == b"close"
        assert await busy.closed()
        await server.done.wait()
        assert trio.current_time() == stopped + GRACE / 2
        await idle.stream.aclose()
        await busy.stream.aclose()


async def test_graceful_shutdown_cancels_what_outlives_the_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    cancelled_at: list[float] = []
    lifespan_ended_at: list[float] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"begun", "more_body": True})
        try:
            await trio.sleep_forever()
        finally:
            cancelled_at.append(trio.current_time())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            lifespan_ended_at.append(trio.current_time())
        else:
            await handler(scope, receive, send)

    async with serving(app) as server, await server.connect() as client:
        await client.send(get("/"))
        await client.head()
        assert await client.chunk() == b"begun"
        stopped = trio.current_time()
        server.stop.set()
        assert await client.closed()
        assert cancelled_at == [stopped + GRACE]
        await server.done.wait()
    assert lifespan_ended_at == [stopped + GRACE]  # after the last request ended


async def test_a_client_that_does_not_read_blocks_the_apps_send() -> None:
    """Backpressure: ``send`` waits for the socket, so the app is held, not buffered for."""
    chunk = b"x" * 65536
    total = 400  # 25 MiB: far more than any socket buffer here holds
    sent: list[int] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for n in range(total):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent.append(n)
        await send({"type": "http.response.body", "body": b""})

    async with (
        serving(http_app(handler), send_buffer=8192) as server,
        await server.connect(receive_buffer=8192) as client,
    ):
        await client.send(get("/"))
        await trio.testing.wait_all_tasks_blocked()
        held = len(sent)
        assert held < total // 10  # the app waits in send
        await trio.testing.wait_all_tasks_blocked()
        assert len(sent) == held
        answer_ = await client.response()  # reading lets it go on
    assert len(answer_.body) == total * len(chunk) and len(sent) == total


async def test_a_cancelled_send_sends_its_whole_message_or_none_of_it() -> None:
    """What ``Exchange.unsent`` relies on: a send cancelled once part of its bytes are out
    finishes them (the cancellation comes at the app's next checkpoint), so no frame is cut."""
    big = b"y" * (1 << 20)
    scope_box: list[trio.CancelScope] = []
    events: list[str] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        with trio.CancelScope() as cancel:
            scope_box.append(cancel)
            await send({"type": "http.response.body", "body": big, "more_body": True})
            events.append("sent")
            await trio.lowlevel.checkpoint()
            events.append("not cancelled")
        events.append(f"cancelled: {cancel.cancelled_caught}")

    async with (
        serving(http_app(handler), send_buffer=8192) as server,
        await server.connect(receive_buffer=8192) as client,
    ):
        await client.send(get("/"))
        await trio.testing.wait_all_tasks_blocked()
        assert events == []  # part of the chunk is out, the rest waits for the client
        scope_box[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert events == []  # still finishing it
        head = await client.head()
        assert head.headers[b"transfer-encoding"] == b"chunked"
        assert await client.chunk() == big
        assert await client.closed()  # the response was never ended: the connection closes
    assert events == ["sent", "cancelled: True"]


# -- the lifespan ------------------------------------------------------------------------------


async def test_the_lifespan_starts_before_serving_and_ends_after() -> None:
    log: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            log.append("startup")
            await _lifespan(receive, send)
            log.append("shutdown")
        else:
            log.append(scope["path"])
            scope["state"]["mine"] = True  # a copy per request: the next one does not see it
            await answer(send, b"ok")

    async with serving(app) as server:
        assert log == ["startup"]
        async with await server.connect() as client:
            await client.send(get("/a") + get("/b"))
            await client.response()
            await client.response()
    assert log == ["startup", "/a", "/b", "shutdown"]


async def test_a_failed_startup_is_raised_and_nothing_is_served() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no store"})

    sock = bind_socket("127.0.0.1", 0)
    with sock, pytest.raises(StartupError, match="no store"):
        await serve_http1(
            app,
            [sock],
            graceful_timeout=GRACE,
            keep_alive_timeout=KEEP_ALIVE,
            shutdown_trigger=trio.sleep_forever,
        )


async def test_an_app_without_a_lifespan_is_served_all_the_same() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError("only http")
        await answer(send, b"ok")

    async with serving(app) as server, await server.connect() as client:
        await client.send(get("/"))
        assert (await client.response()).body == b"ok"


async def test_serve_uses_the_server_the_setting_or_variable_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sluicegate.config import load_config
    from sluicegate.errors import ConfigError
    from sluicegate.server._serve import HTTP_SERVER_VARIABLE, http_server

    monkeypatch.delenv(HTTP_SERVER_VARIABLE, raising=False)
    assert http_server(load_config({})) == "lean"
    hypercorn = load_config({"general_settings": {"http_server": "hypercorn"}})
    assert http_server(hypercorn) == "hypercorn"
    lean = load_config({"general_settings": {"http_server": "lean"}})
    monkeypatch.setenv(HTTP_SERVER_VARIABLE, "hypercorn")
    assert http_server(lean) == "hypercorn"
    monkeypatch.setenv(HTTP_SERVER_VARIABLE, "h2o")
    with pytest.raises(ConfigError) as info:
        http_server(lean)
    assert info.value.path == "general_settings.http_server"


# -- whatever a client sends -------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n",
        b"POST /p?q=1 HTTP/1.1\r\n",
        b"HEAD / HTTP/1.0\r\n",
        b"CONNECT a:1 HTTP/1.1\r\n",
        b"host: x\r\n",
        b"content-length: 5\r\n",
        b"content-length: -1\r\n",
        b"transfer-encoding: chunked\r\n",
        b"expect: 100-continue\r\n",
        b"connection: close\r\n",
        b"connection: upgrade\r\nupgrade: h2c\r\n",
        b"\r\n",
        b"hello",
        b"5\r\nhello\r\n",
        b"0\r\n\r\n",
        b"ffffffffffffffffff\r\n",
        b" folded\r\n",
    ]
) | st.binary(max_size=40)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(_PIECES, max_size=12), cuts=st.lists(st.integers(0, 400), max_size=4))
async def test_whatever_a_client_sends_is_answered_below_500_and_the_server_lives_on(
    pieces: list[bytes], cuts: list[int]
) -> None:
    """Any bytes, cut anywhere: every answer is a 1xx, 2xx or 4xx, the connection ends once
    the client has, and the next client is served."""

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await answer(send, b"ok")

    data = b"".join(pieces)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    async with serving(http_app(handler)) as server:
        async with await server.connect() as client:
            with contextlib.suppress(trio.BrokenResourceError):
                for start, end in itertools.pairwise(bounds):
                    await client.send(data[start:end])
                await client.stream.send_eof()
            with trio.fail_after(10):
                while await client._fill():
                    pass
        statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", bytes(client.buffer))]
        assert all(s < 500 for s in statuses), (data, statuses)
        async with await server.connect() as client:
            await client.send(get("/"))
            assert (await client.response()).body == b"ok"
