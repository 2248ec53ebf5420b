"""LeanTransport against a raw loopback server that sends exactly the bytes each test needs."""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing

import sluicegate
from sluicegate.fake import open_fake_upstream
from sluicegate.net._transport import LeanTransport, TransportStatistics


class Peer:
    """The server side of one connection: reads requests, writes raw bytes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = b""

    async def read_request(self) -> bytes | None:
        """One request (head and Content-Length or chunked body) as sent; None at EOF."""
        while b"\r\n\r\n" not in self._buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self._buffer += data
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while not self._buffer.endswith(b"0\r\n\r\n"):
                self._buffer += await self.stream.receive_some(65536)
            body, self._buffer = self._buffer, b""
        else:
            length = 0
            for line in lower.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.partition(b":")[2])
            while len(self._buffer) < length:
                self._buffer += await self.stream.receive_some(65536)
            body, self._buffer = self._buffer[:length], self._buffer[length:]
        return head + b"\r\n\r\n" + body

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def sees_client_go_away(self) -> bool:
        """Whether the client closed: EOF or a reset, not more bytes."""
        try:
            return await self.stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True

    def reset(self) -> None:
        """Close with an RST instead of a FIN."""
        assert isinstance(self.stream, trio.SocketStream), "an RST needs the TCP socket"
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


Handler = Callable[[Peer, int], Awaitable[None]]


@attrs.define(eq=False)
class Server:
    """Runs ``handler(peer, connection_index)`` per connection and counts connections."""

    handler: Handler
    url: str = ""
    accepted: int = 0
    current: int = 0
    peak: int = 0

    async def _handle(self, stream: trio.abc.Stream) -> None:
        index = self.accepted
        self.accepted += 1
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            await self.handler(Peer(stream), index)
        finally:
            self.current -= 1


async def serve(nursery: trio.Nursery, handler: Handler) -> Server:
    server = Server(handler)
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, server._handle, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    return server


def ok(body: bytes = b"hello", *extra: bytes) -> bytes:
    headers = b"".join(h + b"\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), headers, body)


async def keep_alive(peer: Peer, index: int) -> None:
    """Answers every request on the connection with ``ok()``."""
    while await peer.read_request() is not None:
        await peer.send(ok())


def stats(transport: LeanTransport, **expected: int) -> None:
    got = attrs.asdict(transport.statistics())
    assert {k: got[k] for k in expected} == expected, got


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, LeanTransport]]:
    transport = LeanTransport()
    async with httpx.AsyncClient(transport=transport, timeout=None) as http:
        yield http, transport


async def test_content_length_bodies_reuse_one_connection(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    http, transport = client
    server = await serve(nursery, keep_alive)
    for _ in range(3):
        response = await http.get(server.url + "/x")
        assert (response.status_code, response.content) == (200, b"hello")
        assert response.http_version == "HTTP/1.1"
        assert response.reason_phrase == "OK"
    assert server.accepted == 1
    assert transport.statistics() == TransportStatistics(
        connections_open=1,
        connections_idle=1,
        connections_in_use=0,
        connections_created=1,
        connections_reused=2,
    )


async def test_request_is_encoded_as_expected(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    http, _ = client
    seen: list[bytes] = []

    async def record(peer: Peer, index: int) -> None:
        while (request := await peer.read_request()) is not None:
            seen.append(request)
            await peer.send(ok())

    server = await serve(nursery, record)
    await http.post(server.url + "/v1/r?q=1", content=b"abc", headers={"X-Y": "z"})

    async def parts() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b""
        yield b"cde"

    await http.post(server.url + "/s", content=parts())
    port = server.url.rsplit(":", 1)[1].encode()
    first = seen[0].split(b"\r\n")
    assert first[0] == b"POST /v1/r?q=1 HTTP/1.1"
    assert b"Host: 127.0.0.1:" + port in first
    assert b"Content-Length: 3" in first
    assert b"X-Y: z" in first
    assert seen[0].endswith(b"\r\n\r\nabc")
    assert b"Transfer-Encoding: chunked" in seen[1]
    assert seen[1].endswith(b"\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")


async def test_header_with_newline_is_refused() -> None:
    request = httpx.Request("GET", "http://127.0.0.1:9/", headers={"X": "a\r\nEvil: 1"})
    with pytest.raises(httpx.LocalProtocolError):
        await LeanTransport().handle_async_request(request)


CHUNKED_BODY = b"5;ext=1\r\nhello\r\n1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: yes\r\n\r\n"


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1000])
async def test_chunked_body_split_anywhere(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport], piece: int
) -> None:
    http, transport = client

    async def chunked(peer: Peer, index: int) -> None:
        while await peer.read_request() is not None:
            wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY
            for start in range(0, len(wire), piece):
                await peer.send(wire[start : start + piece])
                await trio.testing.wait_all_tasks_blocked()

    server = await serve(nursery, chunked)
    for _ in range(2):  # the second proves the framing ended exactly at the last CRLF
        async with http.stream("GET", server.url) as response:
            pieces = [p async for p in response.aiter_raw()]
        assert b"".join(pieces) == b"hello 0123456789abcdef"
        if piece == 1:
            assert len(pieces) > 10  # yielded as it arrived, not buffered
    assert server.accepted == 1
    stats(transport, connections_idle=1, connections_reused=1)


async def test_close_delimited_body(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    http, transport = client

    async def until_close(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
        await trio.testing.wait_all_tasks_blocked()
        await peer.send(b"part two")

    server = await serve(nursery, until_close)
    response = await http.get(server.url)
    assert response.content == b"part one, part two"
    stats(transport, connections_open=0, connections_created=1)


async def test_connection_close_is_honoured(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    http, transport = client

    async def close_after_one(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(ok(b"bye", b"Connection: close"))
        assert await peer.sees_client_go_away()

    server = await serve(nursery, close_after_one)
    for _ in range(2):
        assert (await http.get(server.url)).content == b"bye"
        stats(transport, connections_open=0)
    assert server.accepted == 2


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_status_and_head_keep_the_connection(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport], status: int
) -> None:
    http, transport = client

    async def no_body(peer: Peer, index: int) -> None:
        while (request := await peer.read_request()) is not None:
            if request.startswith(b"HEAD"):
                await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
            else:
                await peer.send(b"HTTP/1.1 %d X\r\n\r\n" % status)

    server = await serve(nursery, no_body)
    assert (await http.get(server.url)).status_code == status
    assert (await http.head(server.url)).headers["content-length"] == "99"
    assert (await http.get(server.url)).status_code == status
    assert server.accepted == 1
    stats(transport, connections_idle=1)


async def test_informational_response_is_skipped(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    http, _ = client

    async def early_hints(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok())

    server = await serve(nursery, early_hints)
    response = await http.get(server.url)
    assert (response.status_code, response.content) == (200, b"hello")


async def test_server_closing_idle_connection_is_retried_on_a_new_one(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    http, transport = client

    async def one_then_close(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(ok())  # keep-alive, but the server closes the idle connection anyway

    server = await serve(nursery, one_then_close)
    assert (await http.get(server.url)).content == b"hello"
    await trio.testing.wait_all_tasks_blocked()  # the server has closed by now
    assert (await http.post(server.url, content=b"x")).content == b"hello"
    assert server.accepted == 2
    stats(transport, connections_created=2, connections_reused=1)


@pytest.mark.parametrize("close", ["reset", "eof"])
async def test_reused_connection_dying_before_response_is_retried_once(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport], close: str
) -> None:
    http, transport = client

    async def die_on_second_request(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(ok())
        if index == 0:
            await peer.read_request()
            if close == "reset":
                peer.reset()

    server = await serve(nursery, die_on_second_request)
    assert (await http.get(server.url)).content == b"hello"
    assert (await http.get(server.url)).content == b"hello"
    assert server.accepted == 2
    stats(transport, connections_created=2, connections_reused=1)


async def test_retry_happens_only_once(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    http, transport = client

    async def die_after_first(peer: Peer, index: int) -> None:
        if index == 0:
            await peer.read_request()
            await peer.send(ok())
        await peer.read_request()
        peer.reset()

    server = await serve(nursery, die_after_first)
    await http.get(server.url)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await http.get(server.url)
    assert server.accepted == 2
    stats(transport, connections_open=0)


@pytest.mark.parametrize("close", ["reset", "eof"])
async def test_fresh_connection_dying_before_response_is_not_retried(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport], close: str
) -> None:
    http, transport = client

    async def die(peer: Peer, index: int) -> None:
        await peer.read_request()
        if close == "reset":
            peer.reset()

    server = await serve(nursery, die)
    expected = httpx.ReadError if close == "reset" else httpx.RemoteProtocolError
    with pytest.raises(expected):
        await http.post(server.url, content=b"x")
    assert server.accepted == 1
    stats(transport, connections_open=0)


async def test_no_retry_after_a_response_byte(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    http, _ = client

    async def partial_head_on_reuse(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(ok())
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200")

    server = await serve(nursery, partial_head_on_reuse)
    await http.get(server.url)
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(server.url)
    assert server.accepted == 1


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_peer_closing_mid_body_is_a_protocol_error(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport], head: bytes
) -> None:
    http, transport = client

    async def truncated(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(head + b"only ten b")

    server = await serve(nursery, truncated)
    async with http.stream("GET", server.url) as response:
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
    stats(transport, connections_open=0)


async def test_reset_mid_body_is_a_read_error(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    http, transport = client

    async def reset(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes!")
        await trio.testing.wait_all_tasks_blocked()
        peer.reset()

    server = await serve(nursery, reset)
    async with http.stream("GET", server.url) as response:
        with pytest.raises(httpx.ReadError):
            async for _ in response.aiter_raw():
                pass
    stats(transport, connections_open=0)


async def test_early_aclose_closes_the_connection(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport]
) -> None:
    """Guards the gateway's way of stopping upstream generation: the server must see us go."""
    http, transport = client
    went_away: list[bool] = []

    async def slow_body(peer: Peer, index: int) -> None:
        if index > 0:
            return await keep_alive(peer, index)
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst")
        went_away.append(await peer.sees_client_go_away())

    server = await serve(nursery, slow_body)
    response = await http.send(http.build_request("GET", server.url), stream=True)
    chunks = response.aiter_raw()
    assert await anext(chunks) == b"first"
    await chunks.aclose()  # type: ignore[attr-defined]  # an async generator
    with trio.CancelScope(shield=True):
        await response.aclose()
    stats(transport, connections_open=0)
    await trio.testing.wait_all_tasks_blocked()
    assert went_away == [True]
    assert (await http.get(server.url)).content == b"hello"  # on a new connection
    assert server.accepted == 2


@pytest.mark.parametrize("where", ["head", "body"])
async def test_cancelled_read_closes_the_connection(
    nursery: trio.Nursery, client: tuple[httpx.AsyncClient, LeanTransport], where: str
) -> None:
    http, transport = client
    went_away: list[bool] = []

    async def stall(peer: Peer, index: int) -> None:
        await peer.read_request()
        if where == "body":
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst")
        went_away.append(await peer.sees_client_go_away())

    server = await serve(nursery, stall)

    async def fetch(cancel_scope: trio.CancelScope) -> None:
        with cancel_scope:
            async with http.stream("GET", server.url) as response:
                await response.aread()
        assert cancel_scope.cancelled_caught

    scope = trio.CancelScope()
    async with trio.open_nursery() as inner:
        inner.start_soon(fetch, scope)
        await trio.testing.wait_all_tasks_blocked()
        stats(transport, connections_in_use=1)
        scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert went_away == [True]
    stats(transport, connections_open=0, connections_idle=0)


async def test_concurrency_is_capped_by_max_connections(nursery: trio.Nursery) -> None:
    server = await serve(nursery, keep_alive)
    transport = LeanTransport(max_connections=8)
    bodies: list[bytes] = []

    async def fetch(http: httpx.AsyncClient) -> None:
        bodies.append((await http.get(server.url)).content)

    async with httpx.AsyncClient(transport=transport, timeout=None) as http:
        async with trio.open_nursery() as workers:
            for _ in range(50):
                workers.start_soon(fetch, http)
        assert bodies == [b"hello"] * 50
        assert server.peak <= 8
        stats(transport, connections_created=8, connections_reused=42, connections_in_use=0)


async def test_idle_connections_beyond_keepalive_limit_are_closed(nursery: trio.Nursery) -> None:
    server = await serve(nursery, keep_alive)
    transport = LeanTransport(max_keepalive_connections=2)
    async with httpx.AsyncClient(transport=transport, timeout=None) as http:
        async with trio.open_nursery() as workers:
            for _ in range(5):
                workers.start_soon(http.get, server.url)
        stats(transport, connections_created=5, connections_open=2, connections_idle=2)
    stats(transport, connections_open=0)  # AsyncClient.aclose closes the transport


async def test_expired_idle_connection_is_not_reused(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await serve(nursery, keep_alive)
    transport = LeanTransport(keepalive_expiry=5.0)
    async with httpx.AsyncClient(transport=transport, timeout=None) as http:
        await http.get(server.url)
        await trio.sleep(4.0)
        await http.get(server.url)
        await trio.sleep(5.5)
        await http.get(server.url)
    assert server.accepted == 2
    stats(transport, connections_created=2, connections_reused=1)


async def test_connect_timeout_at_exactly_the_deadline(autojump_clock: trio.abc.Clock) -> None:
    listener = socket.socket()
    backlog: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for _ in range(3):  # fill the accept queue; later SYNs are dropped
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            backlog.append(s)
        port = listener.getsockname()[1]
        transport = LeanTransport()
        http = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None, connect=7.0))
        async with http:
            start = trio.current_time()
            with pytest.raises(httpx.ConnectTimeout):
                await http.get(f"http://127.0.0.1:{port}/")
            assert trio.current_time() == start + 7.0
        stats(transport, connections_open=0)
    finally:
        for s in backlog:
            s.close()
        listener.close()


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: refused
        transport = LeanTransport()
        with pytest.raises(httpx.ConnectError):
            await transport.handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{port}"))
    stats(transport, connections_open=0)


async def test_other_schemes_are_unsupported() -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await LeanTransport().handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/"))


async def test_fake_upstream_stream_and_non_stream() -> None:
    transport = LeanTransport()
    async with (
        open_fake_upstream(tokens=8) as fake,
        httpx.AsyncClient(transport=transport, timeout=None) as http,
    ):
        url = fake.base_url + "/responses"
        response = await http.post(url, json={"model": "m", "input": "hi"})
        assert response.status_code == 200
        assert orjson.loads(response.content)["status"] == "completed"
        async with http.stream(
            "POST", url, json={"model": "m", "input": "hi", "stream": True}
        ) as streamed:
            text = (await streamed.aread()).decode()
        events = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
        assert events[-1] == "response.completed"
        assert len(events) > 8
        stats(transport, connections_created=1, connections_reused=1)


async def test_gateway_over_lean_transport() -> None:
    async with open_fake_upstream(tokens=8) as fake:
        config = {
            "model_list": [
                {
                    "model_name": "g",
                    "litellm_params": {
                        "model": "openai/x",
                        "api_base": fake.base_url,
                        "api_key": "k",
                    },
                }
            ]
        }
        async with sluicegate.open_gateway(config, transport=LeanTransport()) as gw:
            response = await gw.responses(model="g", input="hi")
            assert response.status == sluicegate.ResponseStatus.COMPLETED
            async with gw.stream(model="g", input="hi") as events:
                received = [e async for e in events]
            assert received[-1].type == "response.completed"


async def test_httpx_option_takes_the_environments_proxy_except_for_no_proxy_hosts(
    nursery: trio.Nursery,
) -> None:
    """``http_transport: httpx`` is the proxy option: HTTP_PROXY carries a request to an
    upstream that NO_PROXY does not name, and NO_PROXY's hosts are reached directly."""
    seen: list[bytes] = []

    async def forward_proxy(peer: Peer, index: int) -> None:
        while (request := await peer.read_request()) is not None:
            seen.append(request.partition(b"\r\n")[0])
            body = orjson.dumps({"error": {"message": "answered by the proxy", "type": "x"}})
            await peer.send(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
            )

    proxy = await serve(nursery, forward_proxy)

    def entry(name: str, api_base: str) -> dict[str, object]:
        params = {"model": "openai/gpt-5.4", "api_base": api_base, "api_key": "sk-test"}
        return {"model_name": name, "litellm_params": params}

    async with open_fake_upstream(tokens=3) as fake:
        config = {
            "model_list": [
                entry("proxied", "http://upstream.sluicegate.test/v1"),
                entry("direct", fake.base_url),
            ],
            "general_settings": {"http_transport": "httpx", "store": {"path": ":memory:"}},
        }
        environ = {"HTTP_PROXY": proxy.url, "no_proxy": "localhost, .internal.test,127.0.0.1"}
        async with sluicegate.open_gateway(config, environ=environ) as gw:
            with pytest.raises(sluicegate.SluicegateError, match="answered by the proxy"):
                await gw.responses(model="proxied", input="hi")
            response = await gw.responses(model="direct", input="hi")
            assert response.status == sluicegate.ResponseStatus.COMPLETED
    assert seen == [b"POST http://upstream.sluicegate.test/v1/responses HTTP/1.1"]
