"""What the fake bridged providers (``tests/fake_*.py``) answer, and how it is served.

A fake provider is a deterministic function of the request (``handle``) returning a
:class:`Reply`: the status, the headers and the body in the chunks the network would deliver. The
same reply is served two ways, so one fake serves unit and integration tests alike:

- :func:`mock_transport` over ``httpx.MockTransport`` (unit tests, autojump clock);
- :func:`serve_loopback` on a real 127.0.0.1 socket (integration tests, the proxy).

Faults (:class:`Fault`) are queued on the fake and consumed one per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

import attrs
import httpx
import trio

from sluicegate.fake._http import (
    LAST_CHUNK,
    MAX_HEAD,
    BadRequest,
    chunk,
    parse_head,
    response_head,
)

from .mock_upstream import ClosingStream

if TYPE_CHECKING:
    from sluicegate.codecs.openai_responses import UpstreamRequest

__all__ = ["Fault", "FakeProvider", "Reply", "body_of", "mock_transport", "serve_loopback"]


@attrs.frozen(kw_only=True)
class Fault:
    """One injected fault, for the next request."""

    #: Answer this error status (with the provider's error body) instead of the answer.
    status: int | None = None
    headers: dict[str, str] = attrs.Factory(dict)
    #: Send this many chunks of the normal answer, then break the connection.
    reset_after: int | None = None
    #: Replace a frame in the middle of the stream with one whose JSON is cut off.
    malformed: bool = False
    #: Seconds before the first byte (a stalled upstream).
    stall: float = 0.0


@attrs.frozen(kw_only=True)
class Reply:
    status: int
    headers: dict[str, str]
    chunks: list[bytes]
    #: Break the connection after this many chunks (no clean end of the body).
    reset_after: int | None = None
    #: Seconds before the response head.
    stall: float = 0.0


class FakeProvider(Protocol):
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply: ...


def body_of(request: UpstreamRequest) -> bytes:
    """The body of a request a bridge's codec built, as a fake's ``handle`` takes it: a codec
    builds the whole body (bytes), never a stream."""
    assert isinstance(request.content, bytes), request.content
    return request.content


def mock_transport(fake: FakeProvider) -> httpx.MockTransport:
    """``fake`` behind ``httpx.MockTransport`` (trio sleeps: autojump-clock friendly)."""

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        path = request.url.raw_path.decode()
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = fake.handle(request.method, path, headers, body)
        if reply.stall:
            await trio.sleep(reply.stall)

        async def stream() -> AsyncIterator[bytes]:
            for i, piece in enumerate(reply.chunks):
                if reply.reset_after is not None and i == reply.reset_after:
                    raise httpx.ReadError("connection reset by peer")
                await trio.lowlevel.checkpoint()
                yield piece

        return httpx.Response(reply.status, headers=reply.headers, stream=ClosingStream(stream()))

    return httpx.MockTransport(handler)


async def serve_loopback(
    fake: FakeProvider,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``fake`` on 127.0.0.1 (an ephemeral port) until cancelled; reports its base URL
    (``http://127.0.0.1:PORT``) through ``nursery.start``. One request per connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def connection(stream: trio.SocketStream) -> None:
        async with stream:
            await _serve_one(fake, stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        task_status.started(f"http://127.0.0.1:{port}")


async def _serve_one(fake: FakeProvider, stream: trio.SocketStream) -> None:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data or len(buffer) > MAX_HEAD:
            return
        buffer += data
    head_bytes, _, rest = buffer.partition(b"\r\n\r\n")
    try:
        head = parse_head(head_bytes)
    except BadRequest:
        return
    while len(rest) < head.content_length:
        data = await stream.receive_some(65536)
        if not data:
            return
        rest += data
    path = head.path + (f"?{head.query}" if head.query else "")
    reply = fake.handle(head.method, path, head.headers, rest[: head.content_length])
    if reply.stall:
        await trio.sleep(reply.stall)
    headers = [(k, v) for k, v in reply.headers.items() if k.lower() != "content-length"]
    headers += [("transfer-encoding", "chunked"), ("connection", "close")]
    await stream.send_all(response_head(reply.status, headers))
    for i, piece in enumerate(reply.chunks):
        if reply.reset_after is not None and i == reply.reset_after:
            # An abortive close (RST), as a crashed upstream or a middlebox would.
            stream.socket.setsockopt(*_LINGER_RESET)
            return
        if piece:
            await stream.send_all(chunk(piece))
    await stream.send_all(LAST_CHUNK)


_LINGER_RESET: tuple[int, int, bytes] = (
    trio.socket.SOL_SOCKET,
    trio.socket.SO_LINGER,
    (1).to_bytes(4, "little") + (0).to_bytes(4, "little"),
)
