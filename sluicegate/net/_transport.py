"""A lean HTTP/1.1 transport for trio behind httpx's transport interface (docs/design.md §8).

Why: httpcore's pool scans every connection per request and polls each idle one for
readability (a syscall each), and waiters rescan after being handed a busy connection
(encode/httpx#3215). At concurrency 64 that costs several times the request itself.

Theory of operation:

* A connection is in exactly one place: idle on its origin's LIFO stack, or owned by one
  in-flight request/response. Checkout pops from the top of the stack; an expired connection on
  top means everything under it is older, so the whole stack is dropped. Nothing is ever
  scanned or polled.
* ``max_connections`` caps open (and opening) connections. At the cap, a request for an origin
  with no idle connection closes the oldest idle connection of another origin if there is one,
  else parks in a FIFO :class:`trio.lowlevel.ParkingLot` until a connection is released.
* The response body stream owns the connection. It goes back to the pool only when the body was
  read to the end of its framing and both sides allow keep-alive; any other exit (early
  ``aclose()``, an error, a cancellation) closes the socket at once, synchronously, so the peer
  sees us go away and no connection is left in an unknown state. Closing is synchronous (the
  socket, not a TLS close_notify), so it needs no shielding and cannot be interrupted.
* A reused connection may have been closed by the server while idle (we never poll for that).
  If writing the request fails on one, or it ends before a single response byte, the request is
  sent once more on a fresh connection (RFC 9112 §9.3.1 allows retrying an idempotent request,
  and a request the server never answered was never processed). Never after a response byte.

Only HTTP/1.1 over ``http`` and ``https`` without proxies; anything else raises
:class:`httpx.UnsupportedProtocol`.
"""

from __future__ import annotations

import collections
import math
import ssl
from typing import TYPE_CHECKING, Final

import attrs
import httpx
import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["LeanTransport", "TransportStatistics"]

_Origin = tuple[str, str, int]

#: Bytes asked of the socket per read.
_READ_SIZE: Final = 65536
#: The largest response head (status line and headers) we accept.
_MAX_HEAD: Final = 65536
#: Request bodies up to this size are sent in the same ``send_all`` as the head.
_COALESCE_BODY: Final = 65536
_NO_BODY_STATUS: Final = frozenset({204, 304})
_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"
#: More Content-Length digits than any body has; also keeps ``int()`` within Python's limit on
#: the digits it converts (a 5000-digit value raised ValueError instead of our error).
_MAX_LENGTH_DIGITS: Final = 19


@attrs.frozen(kw_only=True)
class TransportStatistics:
    """A snapshot of a :class:`LeanTransport`'s pool."""

    #: Connections open or being opened (counted against ``max_connections``).
    connections_open: int
    #: Open connections idle in the pool.
    connections_idle: int
    #: Open connections owned by an in-flight request or response (or being opened).
    connections_in_use: int
    #: Connections opened since the transport was created.
    connections_created: int
    #: Requests sent on a connection taken from the pool.
    connections_reused: int


class _Connection:
    __slots__ = ("buffer", "last_used", "origin", "socket", "stream")

    def __init__(self, origin: _Origin, socket: trio.SocketStream, stream: trio.abc.Stream) -> None:
        self.origin = origin
        self.socket = socket
        self.stream = stream
        #: Bytes received and not yet consumed.
        self.buffer = b""
        self.last_used = 0.0

    def close(self) -> None:
        # Synchronous on purpose (module docstring): the raw socket, never a TLS goodbye.
        self.socket.socket.close()


class _Stale(Exception):
    """A reused connection died before the server could have processed the request."""


class LeanTransport(httpx.AsyncBaseTransport):
    """An HTTP/1.1 connection pool for trio with O(1) checkout and no readability polling.

    Use as ``httpx.AsyncClient(transport=LeanTransport(...))``. The connect deadline is
    ``request.extensions["timeout"]["connect"]`` (seconds or None); read, write and pool
    timeouts are not enforced here: put cancel scopes around the calls instead (cancellation
    at any point is safe: the connection is closed, never returned to the pool).

    Args:
        max_connections: the most connections open at once, over all origins; a request
            beyond it waits for one to be released.
        max_keepalive_connections: the most idle connections kept; the oldest go first.
        keepalive_expiry: seconds an idle connection stays reusable.
        ssl_context: for ``https``; default ``ssl.create_default_context()`` with ALPN
            ``http/1.1``.
    """

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        max_keepalive_connections: int = 1000,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max_connections = max_connections
        self._max_idle = max(0, max_keepalive_connections)
        self._expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, collections.deque[_Connection]] = {}
        # Every idle connection, oldest first: eviction at the caps without scanning.
        self._idle_lru: dict[_Connection, None] = {}
        self._open = 0
        self._created = 0
        self._reused = 0
        self._closed = False
        self._released = trio.lowlevel.ParkingLot()

    def statistics(self) -> TransportStatistics:
        idle = len(self._idle_lru)
        return TransportStatistics(
            connections_open=self._open,
            connections_idle=idle,
            connections_in_use=self._open - idle,
            connections_created=self._created,
            connections_reused=self._reused,
        )

    async def aclose(self) -> None:
        """Close every idle connection now, and every in-use one when its response ends."""
        self._closed = True
        for conn in list(self._idle_lru):
            self._drop_idle(conn)
        self._released.unpark_all()
        await trio.lowlevel.checkpoint()

    # -- the request ---------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme == "http":
            port = url.port or 80
        elif scheme == "https":
            port = url.port or 443
        else:
            raise httpx.UnsupportedProtocol(
                f"LeanTransport supports http and https, not {scheme!r}", request=request
            )
        if not url.host:
            raise httpx.UnsupportedProtocol("the URL has no host", request=request)
        origin = (scheme, url.host, port)
        timeout = request.extensions.get("timeout")
        connect_timeout = timeout.get("connect") if timeout else None
        method = request.method.encode("ascii")
        head, body, chunked, keep_alive = _encode_head(request, method)
        if body is not None and chunked:
            body = _chunk(body) + b"0\r\n\r\n"
        replayable = body is not None

        conn, reused = await self._checkout(origin, connect_timeout, request)
        if reused:
            self._reused += 1
        try:
            try:
                return await self._exchange(
                    conn,
                    request,
                    head,
                    body,
                    method,
                    keep_alive,
                    chunked,
                    stale_ok=reused and replayable,
                )
            except _Stale:
                self._discard(conn)
            conn, _ = await self._checkout(origin, connect_timeout, request, fresh=True)
            return await self._exchange(
                conn, request, head, body, method, keep_alive, chunked, stale_ok=False
            )
        except BaseException:
            # The connection is ours until a response stream takes it; _discard is idempotent
            # for the one _exchange already handed over or dropped.
            self._discard(conn)
            raise

    async def _exchange(
        self,
        conn: _Connection,
        request: httpx.Request,
        head: bytes,
        body: bytes | None,
        method: bytes,
        keep_alive: bool,
        chunked: bool,
        *,
        stale_ok: bool,
    ) -> httpx.Response:
        stream = conn.stream
        try:
            if body is None:
                await stream.send_all(head)
                await _send_streamed_body(request, stream, chunked=chunked)
            elif len(body) <= _COALESCE_BODY:
                await stream.send_all(head + body)
            else:
                await stream.send_all(head)
                await stream.send_all(body)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if stale_ok:
                raise _Stale from exc
            raise httpx.WriteError(_describe(exc, "writing the request"), request=request) from exc

        status, reason, headers, framing, length, conn_keep_alive = await _read_head(
            conn, request, stale_ok=stale_ok
        )
        keep_alive = keep_alive and conn_keep_alive
        if method == b"HEAD" or status in _NO_BODY_STATUS:
            framing, length = _LENGTH, 0
        elif framing == _UNTIL_CLOSE:
            keep_alive = False
        response_stream = _ResponseStream(self, conn, request, framing, length, keep_alive)
        response = httpx.Response(
            status,
            headers=headers,
            stream=response_stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )
        if framing == _LENGTH and length == 0:
            response_stream.finish()
        return response

    # -- the pool ------------------------------------------------------------------------------

    async def _checkout(
        self,
        origin: _Origin,
        connect_timeout: float | None,
        request: httpx.Request,
        *,
        fresh: bool = False,
    ) -> tuple[_Connection, bool]:
        """An idle connection for ``origin`` (reused=True) or a new one; waits at the cap."""
        while True:
            if self._closed:
                raise RuntimeError("the transport is closed")
            stack = None if fresh else self._idle.get(origin)
            if stack:
                conn = stack.pop()
                del self._idle_lru[conn]
                if trio.current_time() - conn.last_used <= self._expiry:
                    # No checkpoint here: a Cancelled now would lose the connection. The
                    # caller's first send checkpoints.
                    return conn, True
                # Everything under an expired connection is older still.
                self._close_counted(conn)
                while stack:
                    self._drop_idle(stack[0])
            if self._open < self._max_connections:
                break
            if self._idle_lru:
                self._drop_idle(next(iter(self._idle_lru)))
                continue
            await self._released.park()
        self._open += 1
        try:
            conn = await self._connect(origin, connect_timeout, request)
        except BaseException:
            self._open -= 1
            self._released.unpark()
            raise
        self._created += 1
        return conn, False

    async def _connect(
        self, origin: _Origin, connect_timeout: float | None, request: httpx.Request
    ) -> _Connection:
        scheme, host, port = origin
        try:
            with trio.fail_after(math.inf if connect_timeout is None else connect_timeout):
                sock = await trio.open_tcp_stream(host, port)
                if scheme == "http":
                    return _Connection(origin, sock, sock)
                try:
                    tls = trio.SSLStream(
                        sock, self._tls_context(), server_hostname=host, https_compatible=True
                    )
                    await tls.do_handshake()
                except BaseException:
                    sock.socket.close()
                    raise
                return _Connection(origin, sock, tls)
        except trio.TooSlowError as exc:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} took over {connect_timeout} s", request=request
            ) from exc
        except (OSError, trio.BrokenResourceError) as exc:
            raise httpx.ConnectError(
                _describe(exc, f"connecting to {host}:{port}"), request=request
            ) from exc

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    def _release(self, conn: _Connection) -> None:
        """Return a connection whose response was read to the end of its framing."""
        if self._closed or self._max_idle == 0:
            self._close_counted(conn)
            return
        if len(self._idle_lru) >= self._max_idle:
            self._drop_idle(next(iter(self._idle_lru)))
        conn.last_used = trio.current_time()
        stack = self._idle.get(conn.origin)
        if stack is None:
            stack = self._idle[conn.origin] = collections.deque()
        stack.append(conn)
        self._idle_lru[conn] = None
        self._released.unpark()

    def _discard(self, conn: _Connection) -> None:
        """Close a checked-out connection unless it is already closed (idempotent)."""
        if conn.socket.socket.fileno() != -1:
            self._close_counted(conn)

    def _drop_idle(self, conn: _Connection) -> None:
        del self._idle_lru[conn]
        stack = self._idle[conn.origin]
        stack.remove(conn)  # the oldest: at or near the bottom, found at once
        if not stack:
            del self._idle[conn.origin]
        self._close_counted(conn)

    def _close_counted(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._released.unpark()


# -- the wire format (RFC 9112) ----------------------------------------------------------------

_LENGTH: Final = 0  # Content-Length (or no body)
_CHUNKED: Final = 1
_UNTIL_CLOSE: Final = 2


def _encode_head(request: httpx.Request, method: bytes) -> tuple[bytes, bytes | None, bool, bool]:
    """The request head; the body (None: stream ``request.stream``); whether to chunk-encode the
    body; whether the request allows keep-alive."""
    try:
        body: bytes | None = request.content
    except httpx.RequestNotRead:
        body = None
    parts = [method, b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    lines = 2  # the request line and the empty line ending the head
    has_host = has_length = chunked = False
    keep_alive = True
    for name, value in request.headers.raw:
        parts += (name, b": ", value, b"\r\n")
        lines += 1
        if len(name) in (4, 10, 14, 17):
            lname = name.lower()
            if lname == b"host":
                has_host = True
            elif lname == b"content-length":
                has_length = True
            elif lname == b"transfer-encoding":
                chunked = value.lower().rstrip().endswith(b"chunked")
                has_length = True
            elif lname == b"connection" and b"close" in value.lower():
                keep_alive = False
    if not has_host:
        parts.insert(4, b"Host: " + request.url.netloc + b"\r\n")
        lines += 1
    if not has_length:
        if body is None:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            chunked = True
            lines += 1
        elif body or method in (b"POST", b"PUT", b"PATCH"):
            parts.append(b"Content-Length: %d\r\n" % len(body))
            lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # One CRLF per line: a CR or LF inside a name or value would smuggle a header or a request.
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise httpx.LocalProtocolError("a request header contains CR or LF", request=request)
    return head, body, chunked, keep_alive


async def _send_streamed_body(
    request: httpx.Request, stream: trio.abc.Stream, *, chunked: bool
) -> None:
    if not isinstance(request.stream, httpx.AsyncByteStream):
        raise TypeError("LeanTransport needs an async request body stream")
    async for part in request.stream:
        if part:
            await stream.send_all(_chunk(part) if chunked else part)
    if chunked:
        await stream.send_all(b"0\r\n\r\n")


def _chunk(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body) if body else b""


async def _receive(conn: _Connection, request: httpx.Request) -> bytes:
    try:
        data = await conn.stream.receive_some(_READ_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise httpx.ReadError(_describe(exc, "reading the response"), request=request) from exc
    return data if type(data) is bytes else bytes(data)  # SSLStream gives bytearray


async def _read_head(
    conn: _Connection, request: httpx.Request, *, stale_ok: bool
) -> tuple[int, bytes, list[tuple[bytes, bytes]], int, int, bool]:
    """Status, reason, headers, framing, content length and keep-alive of the next final
    (non-1xx) response head; leaves the bytes after it in ``conn.buffer``."""
    data = conn.buffer
    searched = 0
    while True:
        end = data.find(b"\r\n\r\n", max(0, searched - 3))
        if end < 0:
            if len(data) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("the response head is too large", request=request)
            searched = len(data)
            try:
                more = await _receive(conn, request)
            except httpx.ReadError:
                if stale_ok and not data:
                    raise _Stale from None
                raise
            if not more:
                if stale_ok and not data:
                    raise _Stale
                raise httpx.RemoteProtocolError(
                    "the server disconnected without sending a complete response head",
                    request=request,
                )
            data = data + more if data else more
            continue
        if end > _MAX_HEAD:  # it arrived whole, in one read or with the read that ended it
            raise httpx.RemoteProtocolError("the response head is too large", request=request)
        parsed = _parse_head(data[:end], request)
        data = data[end + 4 :]
        if 100 <= parsed[0] < 200:
            if parsed[0] == 101:
                raise httpx.UnsupportedProtocol(
                    "the server switched protocols (101)", request=request
                )
            searched = 0
            stale_ok = False
            continue  # an informational response: the final one follows
        conn.buffer = data
        return parsed


def _parse_head(
    head: bytes, request: httpx.Request
) -> tuple[int, bytes, list[tuple[bytes, bytes]], int, int, bool]:
    lines = head.split(b"\r\n")
    # A CR or LF that ends no line, or a NUL, anywhere in the head: RFC 9110 §5.5 has a recipient
    # reject such a field value (or blank the characters out); taken as they are, a bare LF
    # would hide a header inside another one's value.
    breaks = len(lines) - 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b"\0" in head:
        raise httpx.RemoteProtocolError(
            "the response head contains a bare CR or LF, or a NUL", request=request
        )
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if (
        not version.startswith(b"HTTP/1.")
        or len(code) != 3
        or not code.isdigit()
        or code < b"100"  # no status (RFC 9110 §15), yet below 400: it would pass as a success
    ):
        raise httpx.RemoteProtocolError(f"bad status line {lines[0][:100]!r}", request=request)
    status = int(code)
    keep_alive = version == b"HTTP/1.1"
    framing = _UNTIL_CLOSE
    has_transfer_encoding = False
    length = -1
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1] in b" \t" or line[0] in b" \t":
            raise httpx.RemoteProtocolError(f"bad header line {line[:100]!r}", request=request)
        value = value.strip(b" \t")
        headers.append((name, value))
        if len(name) in (10, 14, 17):
            lname = name.lower()
            if lname == b"content-length":
                if (
                    not value.isdigit()
                    or len(value) > _MAX_LENGTH_DIGITS
                    or (length >= 0 and int(value) != length)
                ):
                    raise httpx.RemoteProtocolError(
                        f"bad Content-Length {value[:100]!r}", request=request
                    )
                length = int(value)
            elif lname == b"transfer-encoding":
                has_transfer_encoding = True
                # Chunked only when it is the final coding (RFC 9112 §6.3): the last list
                # element, not any value ending in those letters ("xchunked").
                final = value.rpartition(b",")[2].strip(b" \t").lower()
                framing = _CHUNKED if final == b"chunked" else _UNTIL_CLOSE
            elif lname == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens and version == b"HTTP/1.0":
                    keep_alive = True
    if framing == _CHUNKED:
        if length >= 0:
            keep_alive = False  # RFC 9112 §6.3: both headers; possibly smuggling, do not reuse
        length = -1
    elif length >= 0 and not has_transfer_encoding:
        framing = _LENGTH
    return status, reason, headers, framing, length, keep_alive


class _ResponseStream(httpx.AsyncByteStream):
    """A response body, yielded as it arrives; owns the connection until the end."""

    def __init__(
        self,
        transport: LeanTransport,
        conn: _Connection,
        request: httpx.Request,
        framing: int,
        length: int,
        keep_alive: bool,
    ) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._request = request
        self._framing = framing
        #: Content-Length: bytes still to come; chunked: bytes left in this chunk (-1: a size
        #: line comes next, -2: the CRLF after a chunk's data, -3: trailers).
        self._remaining = length
        self._received = 0
        self._keep_alive = keep_alive

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            if self._framing == _LENGTH:
                chunk = await self._next_fixed(conn)
            elif self._framing == _CHUNKED:
                chunk = await self._next_chunked(conn)
            elif conn.buffer:
                chunk, conn.buffer = conn.buffer, b""
            else:
                chunk = await _receive(conn, self._request)
                if not chunk:
                    self._keep_alive = False
                    self.finish()
        except BaseException:
            self._abort()
            raise
        if not chunk:
            raise StopAsyncIteration
        self._received += len(chunk)
        return chunk

    async def _next_fixed(self, conn: _Connection) -> bytes:
        data = conn.buffer
        if data:
            conn.buffer = b""
        else:
            data = await _receive(conn, self._request)
            if not data:
                raise httpx.RemoteProtocolError(
                    f"the server closed the connection after {self._received} of "
                    f"{self._received + self._remaining} body bytes",
                    request=self._request,
                )
        if len(data) >= self._remaining:
            if len(data) > self._remaining:
                self._keep_alive = False  # bytes beyond the body: the connection is confused
                data = data[: self._remaining]
            self._remaining = 0
            self.finish()
        else:
            self._remaining -= len(data)
        return data

    async def _next_chunked(self, conn: _Connection) -> bytes:
        out: list[bytes] = []
        while True:
            data = conn.buffer
            pos = 0
            while pos < len(data):
                remaining = self._remaining
                if remaining > 0:
                    piece = data[pos : pos + remaining]
                    out.append(piece)
                    pos += len(piece)
                    self._remaining = remaining - len(piece) or -2
                    continue
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if len(data) - pos > _MAX_HEAD:
                        raise httpx.RemoteProtocolError(
                            "a chunk line is too long", request=self._request
                        )
                    break
                line = data[pos:eol]
                pos = eol + 2
                if remaining == -2:  # the CRLF closing a chunk's data
                    if line:
                        raise httpx.RemoteProtocolError(
                            "chunk data is longer than its size", request=self._request
                        )
                    self._remaining = -1
                elif remaining == -1:  # a chunk-size line, maybe with extensions
                    size_text = line.partition(b";")[0].strip(b" \t")
                    if not size_text or size_text.translate(None, _HEX_DIGITS):
                        raise httpx.RemoteProtocolError(
                            f"bad chunk size line {line[:100]!r}", request=self._request
                        )
                    size = int(size_text, 16)
                    self._remaining = size if size else -3
                elif not line:  # -3: the empty line ending the trailers
                    conn.buffer = data[pos:]
                    self.finish()
                    return b"".join(out)
            conn.buffer = data[pos:]
            if out:
                return b"".join(out) if len(out) > 1 else out[0]
            more = await _receive(conn, self._request)
            if not more:
                raise httpx.RemoteProtocolError(
                    f"the server closed the connection before the chunked body ended "
                    f"(after {self._received} bytes)",
                    request=self._request,
                )
            conn.buffer = conn.buffer + more if conn.buffer else more

    def finish(self) -> None:
        """The body ended: hand the connection back to the pool (or close it)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._keep_alive and not conn.buffer:
            self._transport._release(conn)
        else:
            self._transport._discard(conn)

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._discard(conn)

    async def aclose(self) -> None:
        """Close the connection unless the body was read to its end (then it is pooled)."""
        self._abort()
        await trio.lowlevel.checkpoint()


def _describe(exc: BaseException, doing: str) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    return f"{doing}: {type(cause).__name__}: {cause}"
