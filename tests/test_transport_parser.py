"""LeanTransport's response parser: every response it refuses, and h11 as its oracle.

A malformed response ends the request with the transport's httpx error, which the connector
turns into ours (a 502), and with the connection closed: never a hang (the autojump clock turns
one into a failure at once), never another exception. Well-formed responses are parsed exactly
as h11 parses them, whole or split anywhere.
"""

from __future__ import annotations

import re

import h11
import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.actors._connector import Connector
from sluicegate.codecs.openai_responses import UpstreamRequest
from sluicegate.config import RouterSettings, Timeouts
from sluicegate.errors import UpstreamError
from sluicegate.net._transport import _MAX_HEAD, LeanTransport  # the line to follow a move

from .test_transport import Peer, serve, stats

OK_HEAD = b"HTTP/1.1 200 OK\r\n"
CHUNKED_HEAD = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


def bad(
    wire: bytes,
    message: str,
    *,
    eof: bool = False,
    error: type[Exception] = httpx.RemoteProtocolError,
) -> tuple[bytes, bool, type[Exception], str]:
    """A response the transport must refuse with ``error`` matching ``message``; with ``eof``
    the server closes the connection after ``wire``, else it waits for the client to go."""
    return wire, eof, error, message


REFUSED = {
    # The status line.
    "status-line-empty": bad(b"\r\n\r\n", "bad status line"),
    "status-line-http2": bad(b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
    "status-line-not-http": bad(b"ICY 200 OK\r\n\r\n", "bad status line"),
    "status-code-two-digits": bad(b"HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
    "status-code-four-digits": bad(b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
    "status-code-not-digits": bad(b"HTTP/1.1 2x0 OK\r\n\r\n", "bad status line"),
    "status-code-below-100": bad(b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n", "bad status"),
    "switching-protocols": bad(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        "switched protocols",
        error=httpx.UnsupportedProtocol,
    ),
    # Header lines.
    "header-without-colon": bad(OK_HEAD + b"NoColon\r\n\r\n", "bad header line"),
    "header-empty-name": bad(OK_HEAD + b": value\r\n\r\n", "bad header line"),
    # RFC 9112 §5.1: whitespace between a field name and the colon must be rejected.
    "header-space-before-colon": bad(OK_HEAD + b"Name : value\r\n\r\n", "bad header line"),
    # RFC 9112 §5.2: a proxy may reject obs-fold; we do.
    "header-obs-fold": bad(OK_HEAD + b"A: b\r\n  folded\r\n\r\n", "bad header line"),
    "header-bare-lf": bad(
        OK_HEAD + b"A: b\nInjected: 1\r\nContent-Length: 0\r\n\r\n", "bare CR or LF"
    ),
    "header-bare-cr": bad(OK_HEAD + b"A: b\rc\r\nContent-Length: 0\r\n\r\n", "bare CR or LF"),
    "header-cr-before-terminator": bad(OK_HEAD + b"A: b\r\r\n\r\n", "bare CR or LF"),
    "header-nul": bad(OK_HEAD + b"A: b\x00c\r\nContent-Length: 0\r\n\r\n", "NUL"),
    # Content-Length.
    "content-length-not-a-number": bad(OK_HEAD + b"Content-Length: abc\r\n\r\n", "Content-Len"),
    "content-length-negative": bad(OK_HEAD + b"Content-Length: -1\r\n\r\n", "Content-Length"),
    "content-length-plus": bad(OK_HEAD + b"Content-Length: +5\r\n\r\nhello", "Content-Length"),
    "content-length-list": bad(OK_HEAD + b"Content-Length: 5, 5\r\n\r\nhello", "Content-Len"),
    "content-length-conflicting": bad(
        OK_HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "Content-Length"
    ),
    # Regression: int() raised ValueError past Python's 4300-digit conversion limit.
    "content-length-5000-digits": bad(
        OK_HEAD + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", "Content-Length"
    ),
    "content-length-20-digits": bad(
        OK_HEAD + b"Content-Length: " + b"1" * 20 + b"\r\n\r\n", "Content-Length"
    ),
    # The head's size and end.
    "head-too-large-unterminated": bad(
        OK_HEAD + b"X: " + b"a" * (_MAX_HEAD + 10) + b"\r\n", "head is too large"
    ),
    # Regression: a head over the limit was taken when its end came with the read past it.
    "head-too-large-terminated": bad(
        OK_HEAD + b"X: " + b"a" * (_MAX_HEAD + 10) + b"\r\n\r\n", "head is too large"
    ),
    "eof-in-status-line": bad(b"HTTP/1.1 2", "without sending a complete", eof=True),
    "eof-in-headers": bad(OK_HEAD + b"Content-Le", "without sending a complete", eof=True),
    "eof-after-informational": bad(
        b"HTTP/1.1 100 Continue\r\n\r\n", "without sending a complete", eof=True
    ),
    # Bodies.
    "eof-in-content-length-body": bad(
        OK_HEAD + b"Content-Length: 10\r\n\r\nhello", "after 5 of 10 body bytes", eof=True
    ),
    "chunk-size-not-hex": bad(CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    "chunk-size-empty": bad(CHUNKED_HEAD + b"\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    "chunk-size-negative": bad(CHUNKED_HEAD + b"-5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    "chunk-size-0x": bad(CHUNKED_HEAD + b"0x5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    "chunk-size-inner-space": bad(CHUNKED_HEAD + b"5 5\r\nhello\r\n0\r\n\r\n", "bad chunk"),
    "chunk-data-longer-than-size": bad(
        CHUNKED_HEAD + b"5\r\nhello!\r\n0\r\n\r\n", "longer than its size"
    ),
    "chunk-line-too-long": bad(
        CHUNKED_HEAD + b"5;" + b"x" * (_MAX_HEAD + 10), "chunk line is too long"
    ),
    "eof-in-chunk-size": bad(CHUNKED_HEAD + b"5", "before the chunked body ended", eof=True),
    "eof-in-chunk-data": bad(CHUNKED_HEAD + b"5\r\nhel", "before the chunked body ended", eof=True),
    "eof-in-trailers": bad(
        CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nTrailer: 1\r\n", "before the chunked", eof=True
    ),
}


@pytest.mark.parametrize(("wire", "eof", "error", "message"), REFUSED.values(), ids=REFUSED)
async def test_malformed_response_is_refused_with_our_error(
    nursery: trio.Nursery,
    autojump_clock: trio.abc.Clock,
    wire: bytes,
    eof: bool,
    error: type[Exception],
    message: str,
) -> None:
    async def answer(peer: Peer, index: int) -> None:
        try:
            await peer.read_request()
            await peer.send(wire)
            if not eof:
                await peer.sees_client_go_away()
        except trio.BrokenResourceError:
            pass  # the client refused a large head before reading all of it

    server = await serve(nursery, answer)
    request = UpstreamRequest(method="GET", url=server.url + "/v1/responses/resp_1", headers={})
    async with LeanTransport() as transport:
        connector = Connector(transport, RouterSettings())
        with trio.fail_after(60), pytest.raises(UpstreamError) as caught:
            await connector.open(request, Timeouts(), 0, read_body=True)
        assert caught.value.status_code == 502
        cause = caught.value.__cause__
        assert isinstance(cause, error), repr(cause)
        assert re.search(message, str(cause)), str(cause)
        stats(transport, connections_open=0)


async def test_content_length_and_chunked_read_as_chunked_and_never_reused(
    nursery: trio.Nursery,
) -> None:
    """RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a response with both may
    be smuggling, so its connection is closed instead of pooled."""
    wire = (
        OK_HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )

    async def answer(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(wire)
        await peer.sees_client_go_away()

    server = await serve(nursery, answer)
    async with LeanTransport() as transport:
        response = await transport.handle_async_request(httpx.Request("GET", server.url))
        assert await response.aread() == b"hello"
        stats(transport, connections_open=0)


@pytest.mark.parametrize(
    "coding", [b"xchunked", b"chunked, gzip", b"gzip"], ids=["xchunked", "chunked-not-last", "gzip"]
)
async def test_transfer_coding_not_ending_in_chunked_reads_until_close(
    nursery: trio.Nursery, coding: bytes
) -> None:
    """Regression: any value ending in the letters "chunked" was taken for the chunked coding.
    RFC 9112 §6.3: without chunked as the final coding, the body ends when the server closes."""
    body = b"5\r\nhello\r\n0\r\n\r\n"

    async def answer(peer: Peer, index: int) -> None:
        await peer.read_request()
        await peer.send(OK_HEAD + b"Transfer-Encoding: " + coding + b"\r\n\r\n" + body)

    server = await serve(nursery, answer)
    async with LeanTransport() as transport:
        response = await transport.handle_async_request(httpx.Request("GET", server.url))
        assert await response.aread() == body
        stats(transport, connections_open=0)


# -- h11 as the oracle ---------------------------------------------------------------------------

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection"}
_VCHAR_OBS_TEXT = [*range(0x21, 0x7F), *range(0x80, 0x100)]

_names = st.text(_TCHAR, min_size=1, max_size=10).filter(
    lambda n: n.lower() not in _FRAMING_HEADERS
)
_word = st.lists(st.sampled_from(_VCHAR_OBS_TEXT), min_size=1, max_size=6).map(bytes)
_values = st.builds(
    lambda words, gap: gap.join(words),
    st.lists(_word, max_size=3),
    st.sampled_from([b" ", b"\t", b" \t "]),
)
_ows = st.sampled_from([b"", b" ", b"\t", b" \t"])


@st.composite
def _field_lines(draw: st.DrawFn) -> list[bytes]:
    """Header (or trailer) lines: names, optional whitespace around values, repeated names."""
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(_names).encode()
        lines.append(name + b":" + draw(_ows) + draw(_values) + draw(_ows) + b"\r\n")
    return lines


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bytes, bool]:
    """A well-formed response (maybe after 1xx ones) to a GET or HEAD: its wire bytes, the
    request method, and whether the server closes the connection after it."""
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    wire = b""
    for status in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
        wire += b"HTTP/1.1 %d Info\r\n%b\r\n" % (status, b"".join(draw(_field_lines())))
    status = draw(st.integers(200, 599) | st.sampled_from([204, 304]))
    reason = bytes(draw(st.lists(st.sampled_from([0x20, 0x09, *_VCHAR_OBS_TEXT]), max_size=12)))
    wire += b"%b %d" % (version, status) + (b" " + reason if draw(st.booleans()) else b"") + b"\r\n"
    lines = draw(_field_lines())
    connection = draw(st.sampled_from([None, b"close", b"keep-alive"]))
    if connection is not None and not (version == b"HTTP/1.0" and connection == b"keep-alive"):
        lines.insert(draw(st.integers(0, len(lines))), b"Connection: " + connection + b"\r\n")
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    body = draw(st.binary(max_size=200))
    bodiless = method == b"HEAD" or status in (204, 304)
    if framing == "length":
        lines.insert(draw(st.integers(0, len(lines))), b"Content-Length: %d\r\n" % len(body))
        encoded = body
    elif framing == "chunked":
        lines.insert(draw(st.integers(0, len(lines))), b"Transfer-Encoding: chunked\r\n")
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=4))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        encoded = b""
        for piece in filter(None, pieces):
            digits = (b"%x" if draw(st.booleans()) else b"%X") % len(piece)
            size = b"0" * draw(st.integers(0, 2)) + digits
            extension = draw(st.sampled_from([b"", b";a", b";a=b", b';name="quoted value"']))
            encoded += size + extension + b"\r\n" + piece + b"\r\n"
        encoded += b"0\r\n" + b"".join(draw(_field_lines())) + b"\r\n"
    else:
        encoded = body
    wire += b"".join(lines) + b"\r\n" + (b"" if bodiless else encoded)
    return wire, method, framing == "close"


def h11_reading(wire: bytes, method: bytes, eof: bool) -> tuple[object, ...]:
    """What h11 makes of ``wire`` as the answer to ``method``: the final response's status,
    reason, headers and body, and whether the connection may carry another request."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "127.0.0.1")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(wire)
    final: h11.Response | None = None
    body = b""
    needed_eof = False  # the body was delimited by the server's close: no reuse after it
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA and eof and not needed_eof:
            conn.receive_data(b"")
            needed_eof = True
        elif isinstance(event, h11.Response):
            final = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            assert isinstance(event, h11.InformationalResponse), event
    assert final is not None
    reusable = not needed_eof and conn.our_state is h11.DONE and conn.their_state is h11.DONE
    return final.status_code, final.reason, list(final.headers), body, reusable


async def lean_reading(pieces: list[bytes], method: bytes, eof: bool) -> tuple[object, ...]:
    """The same as :func:`h11_reading`, by LeanTransport over loopback, the server sending
    ``pieces`` one read at a time."""

    async def answer(peer: Peer, index: int) -> None:
        await peer.read_request()
        for piece in pieces:
            await peer.send(piece)
            await trio.testing.wait_all_tasks_blocked()  # the client has read it
        if not eof:
            await peer.sees_client_go_away()

    # A generous deadline only so that a hang fails instead of stalling the suite.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, LeanTransport() as transport:
            server = await serve(nursery, answer)
            request = httpx.Request(method.decode(), server.url, headers={"Host": "127.0.0.1"})
            response = await transport.handle_async_request(request)
            body = await response.aread()
            reusable = transport.statistics().connections_idle == 1
            nursery.cancel_scope.cancel()
    headers = [(name.lower(), value) for name, value in response.headers.raw]
    reason = response.extensions["reason_phrase"]
    return response.status_code, reason, headers, body, reusable


@settings(max_examples=150)
@given(responses())
async def test_parser_agrees_with_h11_fed_whole(response: tuple[bytes, bytes, bool]) -> None:
    wire, method, eof = response
    assert await lean_reading([wire], method, eof) == h11_reading(wire, method, eof)


@settings(max_examples=150)
@given(responses(), st.data())
async def test_parser_agrees_with_h11_split_anywhere(
    response: tuple[bytes, bytes, bool], data: st.DataObject
) -> None:
    wire, method, eof = response
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=12))))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert await lean_reading(pieces, method, eof) == h11_reading(wire, method, eof)
