"""A lean HTTP/1.1 server for an ASGI app on trio (``general_settings.http_server: lean``).

Why: under load, hypercorn and h11 were about a fifth of the proxy's CPU, and each open stream
cost the server a task group, a channel and h11's state besides the app's own. This server does
only what the proxy's clients need of HTTP/1.1, with httptools' C parser (the one uvicorn uses).

Theory of operation:

* **One task per connection**, and the app runs in it: a request is read, the app is awaited,
  then the next request is read. So requests on a connection are answered one at a time, in
  order (pipelined ones wait, already parsed, until the response before them has ended).
* **Parsing is sans-IO.** :class:`_RequestReader` is fed bytes; the parser's callbacks append
  events to its queue: a request head, pieces of body, the end of a message, or a refusal (a
  malformed request: 400; a head too large: 431). Nothing in it awaits.
* **The socket is read only when someone waits for it**: for the next request head (at most
  ``keep_alive_timeout`` of idleness, the whole head included), or by the app's ``receive()``.
  Until the request body has all been given to the app, ``receive()`` reads it; after that it
  reads to see the client hang up, and returns ``http.disconnect`` when it does. The proxy's
  disconnect watcher is the one reader of a connection during a response, so no task of the
  server's own is needed for it. What a client pipelines meanwhile is parsed and queued, up to
  :data:`_WATCH_LIMIT` bytes; beyond that the hang-up is seen at the next request instead.
* **Responses**: the head waits for the first body message, so the two go out in one write.
  Framing is the app's ``content-length``; else, when that first body message is also the last,
  a ``content-length`` of its size; else chunked (close-delimited for an HTTP/1.0 client).
  ``send()`` awaits the socket write: a client that reads slowly slows the app (backpressure).
  A write is all or nothing for a cancellation: one cancelled before its first byte sent
  nothing; one cancelled after is finished first (shielded, at most :data:`_FINISH_WRITE` s),
  the cancellation then raised at the caller's next checkpoint. Writes to a client that has
  gone are dropped; the app learns of the hang-up from ``receive()``.
* **Keep-alive** unless the client asked to close, spoke HTTP/1.0, the request body was not all
  read, or the server is shutting down (each says ``connection: close`` when known in time).
* **Shutdown** (``shutdown_trigger`` returned): stop accepting and close the listening sockets,
  close idle connections at once, let requests in flight finish (their connections close
  after) for ``graceful_timeout`` seconds, then cancel what is left. The ASGI lifespan runs
  around all of it: startup before the first connection, shutdown after the last.

* **WebSocket**: a ``GET`` with ``Upgrade: websocket`` is an ASGI ``websocket`` connection
  spoken by :mod:`._ws` on the same task and socket (its own theory of operation there); the
  connection is the session's until it closes. At shutdown it is as a request in flight: it
  has ``graceful_timeout`` to end, then is cancelled (the proxy's app then closes it, 1001).
  The scope's ``sluicegate.drain`` extension holds an event set when shutdown begins, so an
  app can close a connection that is between responses at once.

Limits: HTTP/1.1 and 1.0 only (any other ``Upgrade`` is ignored: the request is answered in
HTTP/1.1 and the connection closed after), no TLS, no trailers, no WebSocket compression.
"""

from __future__ import annotations

import enum
import functools
import http
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from email.utils import formatdate
from typing import Any, Final, TypeAlias
from urllib.parse import unquote

import attrs
import httptools
import trio

from .._gateway import open_body_nursery
from ._exchange import Message, Receive, Scope, Send
from ._ws import DRAIN_EXTENSION, WebSocketSession, handshake_refusal, is_websocket_upgrade

__all__ = ["MAX_HEAD_BYTES", "MAX_HEADERS", "StartupError", "bind_socket", "serve_http1"]

logger = logging.getLogger("sluicegate.server")

ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The largest request head (request line and headers), as hypercorn's default
#: ``h11_max_incomplete_size``; larger is a 431.
MAX_HEAD_BYTES: Final = 16 * 1024
#: The most header fields a request may have; more is a 431.
MAX_HEADERS: Final = 128
#: Bytes asked of the socket per read.
_READ_SIZE: Final = 65536
#: Closing while the client still sends: how long, and how many of its bytes, to read and drop
#: first so that it reads the answer instead of a reset (``_Connection._linger``).
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 1 << 20
#: What a client may send (pipelined requests, or junk) while a response is being written
#: before the server stops reading it until that response has ended.
_WATCH_LIMIT: Final = 65536
#: The longest a write begun when its send was cancelled may take to finish (seconds).
_FINISH_WRITE: Final = 5.0
#: The longest the app's lifespan startup and shutdown may take (hypercorn's defaults).
_LIFESPAN_TIMEOUT: Final = 60.0

_ASGI: Final = {"version": "3.0", "spec_version": "2.3"}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_CLOSE: Final = b"connection: close\r\n"
_CHUNKED: Final = b"transfer-encoding: chunked\r\n"
_STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()
    for status in http.HTTPStatus
}


class StartupError(Exception):
    """The app's lifespan startup failed (``lifespan.startup.failed``, with its message)."""


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port), as hypercorn binds one;
    ``reuse_port`` lets other processes bind the same port (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


async def serve_http1(
    app: ASGIApp,
    sockets: Sequence[socket.socket],
    *,
    graceful_timeout: float,
    keep_alive_timeout: float,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the listening ``sockets`` (:func:`bind_socket`) until
    ``shutdown_trigger`` returns, then shut down gracefully (see the module docstring); the
    sockets are closed by then. ``task_status`` gets the URLs served (``http://HOST:PORT``),
    each also logged as hypercorn does (``Running on http://…``).

    Raises:
        StartupError: the app's lifespan startup failed.
    """
    lifespan = _Lifespan(app)
    # A body nursery: a failed startup comes out as itself, not in an exception group.
    async with open_body_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.run)
        await lifespan.startup()
        server = _Server(app, keep_alive_timeout, lifespan.state)
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
        binds = [f"http://{_address(s)}" for s in sockets]
        for bind in binds:
            logger.info("Running on %s (CTRL + C to quit)", bind)
        task_status.started(binds)
        async with trio.open_nursery() as connections:
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        functools.partial(
                            trio.serve_listeners,
                            server.handle,
                            listeners,
                            handler_nursery=connections,
                        )
                    )
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                for listener in listeners:
                    listener.socket.close()
                server.close_idle()
                connections.cancel_scope.deadline = trio.current_time() + graceful_timeout
        await lifespan.shutdown()


@attrs.define(eq=False)
class _Server:
    """The connections of one :func:`serve_http1`."""

    app: ASGIApp
    keep_alive_timeout: float
    #: The lifespan's state: each request's scope gets a shallow copy (the ASGI spec's).
    state: dict[str, Any]
    #: Set when shutting down: no connection is kept alive after its current response.
    closing: bool = False
    #: Set when shutting down, for WebSocket connections (the ``sluicegate.drain``
    #: extension): an idle one can close now rather than at the graceful deadline.
    draining: trio.Event = attrs.Factory(trio.Event)
    _connections: set[_Connection] = attrs.Factory(set)

    async def handle(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        connection = _Connection(self, sock)
        self._connections.add(connection)
        try:
            await connection.serve()
        except OSError:
            pass  # the client is gone (a reset before its address could be read)
        finally:
            self._connections.discard(connection)
            connection.close()
            sock.close()

    def close_idle(self) -> None:
        """Shut down: connections waiting for a request close now; the others close after their
        current response."""
        self.closing = True
        self.draining.set()
        for connection in self._connections:
            if connection.idle is not None:
                connection.idle.cancel()


class _Mark(enum.Enum):
    #: The end of a request message (its body, if any, all queued before it).
    END = "end"


@attrs.define(eq=False)
class _Head:
    """A request's method, target and headers, as parsed."""

    method: str
    target: bytes
    #: Names lowercased, values without surrounding whitespace (as h11 gives them).
    headers: list[tuple[bytes, bytes]]
    http_version: str
    #: The client allows another request on the connection after this one.
    keep_alive: bool
    expect_continue: bool
    #: The whole message (body included) has been parsed.
    complete: bool = False


@attrs.frozen
class _Refusal:
    """The request cannot be parsed: answer ``status`` and close."""

    status: int


_Event: TypeAlias = _Head | bytes | _Mark | _Refusal


class _HeadTooLarge(Exception):
    pass


class _RequestReader:
    """Request bytes in, events out (sans-IO): httptools calls the ``on_*`` methods, which queue
    :class:`_Head`, body ``bytes``, :attr:`_Mark.END` and :class:`_Refusal` on ``events``."""

    __slots__ = (
        "_body_left",
        "_expect",
        "_has_body",
        "_head",
        "_headers",
        "_in_head",
        "_parser",
        "_partial",
        "_size",
        "_url",
        "events",
        "stopped",
        "upgrade_rest",
    )

    def __init__(self) -> None:
        #: A list, not a deque: it holds a few events at a time, and an empty deque costs 700
        #: bytes (its first block) on every open connection.
        self.events: list[_Event] = []
        #: No further request will be read: after a refusal, an upgrade, or a request that
        #: closes the connection. Later bytes are dropped.
        self.stopped = False
        self._parser = httptools.HttpRequestParser(self)
        self._head: _Head | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect = False
        self._has_body = False
        #: Head bytes seen by the callbacks (complete fields only).
        self._size = 0
        self._in_head = False
        #: Bytes fed while a head stayed incomplete (the parser holds a partial field).
        self._partial = 0
        #: An upgrade request's body, read past the parser (it takes the rest as another
        #: protocol's): bytes still to come.
        self._body_left = 0
        #: What followed an upgrade request's head (another protocol's first bytes).
        self.upgrade_rest = b""

    def close(self) -> None:
        """Drop the parser: it and this reader refer to each other (its callbacks are this
        reader's methods), a cycle only the cyclic GC would free otherwise."""
        del self._parser
        self.stopped = True

    def feed(self, data: bytes) -> None:
        if self._body_left:
            self._feed_raw_body(data)
            return
        if self.stopped:
            return
        started_in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # ``Upgrade`` or ``CONNECT``: a WebSocket handshake becomes a session (``_ws``),
            # which takes the bytes after the head; any other is answered in HTTP/1.1, then
            # the connection closes (its head said so: keep_alive is False).
            self.stopped = True
            if self._body_left:
                self._feed_raw_body(data[upgrade.args[0] :])
            else:
                self.upgrade_rest = data[upgrade.args[0] :]
        except httptools.HttpParserError as error:
            self._refuse(431 if isinstance(error.__context__, _HeadTooLarge) else 400)
        else:
            if started_in_head and self._in_head:
                self._partial += len(data)
                if self._partial > MAX_HEAD_BYTES:
                    self._refuse(431)

    def _feed_raw_body(self, data: bytes) -> None:
        piece = data[: self._body_left]
        if piece:
            self.events.append(piece)
            self._body_left -= len(piece)
            if not self._body_left:
                self.events.append(_Mark.END)
                if self._head is not None:
                    self._head.complete = True

    def _refuse(self, status: int) -> None:
        if not self.stopped:
            self.events.append(_Refusal(status))
            self.stopped = True

    def _grow(self, size: int) -> None:
        self._size += size
        if self._size > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect = self._has_body = False
        self._size = 16  # the method and version
        self._partial = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.rstrip(b" \t")  # the parser strips the leading whitespace only
        self._headers.append((name, value))
        self._grow(len(name) + len(value) + 4)
        if len(self._headers) > MAX_HEADERS:
            raise _HeadTooLarge
        if name == b"expect":
            self._expect = value.lower() == b"100-continue"
        elif name == b"content-length" or name == b"transfer-encoding":
            self._has_body = name == b"transfer-encoding" or value != b"0"

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise ValueError(f"HTTP/{version} is not served")
        upgrade = parser.should_upgrade()
        head = _Head(
            method=parser.get_method().decode("ascii"),
            target=self._url,
            headers=self._headers,
            http_version=version,
            keep_alive=version == "1.1" and parser.should_keep_alive() and not upgrade,
            expect_continue=self._expect and version == "1.1",
        )
        if upgrade and self._has_body:
            # The parser skips an upgrade request's body; its Content-Length is read here.
            length = next((v for n, v in self._headers if n == b"content-length"), None)
            if length is None or not length.isdigit():
                raise ValueError("an upgrade request with a chunked body")
            self._body_left = int(length)
        self._head = head
        self.events.append(head)

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        head = self._head
        assert head is not None
        if self._body_left:
            return  # an upgrade request's body follows, read past the parser
        head.complete = True
        self.events.append(_Mark.END)
        if not head.keep_alive:
            self.stopped = True


class _Response(enum.Enum):
    """Where the response to the current request is."""

    #: Nothing sent by the app yet.
    NONE = "none"
    #: ``http.response.start`` given; its head waits for the first body message.
    STARTED = "started"
    #: The head is out; body follows.
    BODY = "body"
    #: The last body message is out.
    DONE = "done"


class _Framing(enum.Enum):
    LENGTH = "length"
    CHUNKED = "chunked"
    #: The body ends when the connection closes (an HTTP/1.0 client, no length).
    CLOSE = "close"
    #: No body (HEAD, 1xx, 204, 304).
    NONE = "none"


class _Connection:
    """One client connection: its requests, one at a time, each answered by the app."""

    __slots__ = (
        "_body_done",
        "_close",
        "_continue",
        "_framing",
        "_gone",
        "_head",
        "_headers",
        "_length_left",
        "_peer",
        "_reader",
        "_response",
        "_served",
        "_server",
        "_sock",
        "_status",
        "_watched",
        "idle",
    )

    def __init__(self, server: _Server, sock: trio.socket.SocketType) -> None:
        self._server = server
        self._sock = sock
        self._reader = _RequestReader()
        #: The scope of the wait for the next request (cancelled to close an idle connection).
        self.idle: trio.CancelScope | None = None
        self._peer: tuple[Any, Any] = (None, None)
        # The current request.
        self._head: _Head | None = None
        self._response = _Response.NONE
        self._status = 0
        self._headers: Sequence[tuple[bytes, bytes]] = ()
        self._framing = _Framing.NONE
        self._length_left = 0
        #: The app has been given the whole request body.
        self._body_done = False
        #: A ``100 Continue`` is owed before the body is read.
        self._continue = False
        #: The connection closes after this response.
        self._close = False
        #: The client hung up, or a write to it failed: nothing more is written.
        self._gone = False
        #: Bytes read since the request body ended (by the disconnect watch).
        self._watched = 0
        #: A request has been answered on this connection.
        self._served = False

    def close(self) -> None:
        self._reader.close()

    async def serve(self) -> None:
        sock = self._sock
        self._peer = (_endpoint(sock.getpeername()), _endpoint(sock.getsockname()))
        while True:
            head = await self._next_head()
            if head is None:
                return
            keep_alive = await self._exchange(head)
            # Nothing of a request outlives it on an idle connection.
            self._head = None
            self._headers = ()
            self._served = True
            if not keep_alive:
                if not self._body_done and not self._gone:
                    await self._linger()  # the client may still be sending the body
                return

    async def _next_head(self) -> _Head | None:
        """The next request's head; None when the connection is to close (after answering a
        malformed request)."""
        events = self._reader.events
        # One deadline for the whole head: a client trickling it in gets no more time.
        deadline = trio.current_time() + self._server.keep_alive_timeout
        while True:
            if events:
                event = events.pop(0)
                if isinstance(event, _Head):
                    return event
                assert isinstance(event, _Refusal), event  # body events were dropped
                await self._refuse(event.status)
                await self._linger()
                return None
            server = self._server
            if server.closing or self._reader.stopped:
                return None
            data = b""
            with trio.CancelScope(deadline=deadline) as self.idle:
                # After a response, the next request has yet to be sent: wait for it.
                data = await self._recv(wait=self._served)
            self.idle = None
            if not data:
                return None
            self._reader.feed(data)

    async def _exchange(self, head: _Head) -> bool:
        """Run the app on one request; whether the connection may serve another."""
        self._head = head
        self._response = _Response.NONE
        self._body_done = False
        self._continue = head.expect_continue
        self._close = not head.keep_alive
        self._watched = 0
        path, _, query = head.target.partition(b"?")
        try:
            decoded = unquote(path.decode("ascii"))
        except UnicodeDecodeError:
            await self._refuse(400)
            return False
        client, server = self._peer
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": head.http_version,
            "method": head.method,
            "scheme": "http",
            "path": decoded,
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": head.headers,
            "client": client,
            "server": server,
            "state": self._server.state.copy(),
        }
        if is_websocket_upgrade(head.method, head.headers):
            await self._websocket(scope, head)
            return False
        try:
            await self._server.app(scope, self.receive, self.send)
        except Exception:
            logger.exception("the ASGI app failed on a request")
        except BaseExceptionGroup as group:
            if group.split(trio.Cancelled)[1] is None:
                raise
            # Logged; the cancellation in the group is raised again at the next checkpoint
            # (trio's cancellation is level-triggered).
            logger.exception("the ASGI app failed on a request")
        if self._response is not _Response.DONE:
            if self._response is _Response.NONE or self._response is _Response.STARTED:
                # No byte of a response went out: the client can still be told.
                # A refusal first in the queue while the body is unread is this request's
                # (a malformed body), else the app failed.
                refusal = self._reader.events[0] if self._reader.events else None
                if isinstance(refusal, _Refusal) and not self._body_done:
                    await self._refuse(refusal.status)
                else:
                    await self._refuse(500)
            return False
        events = self._reader.events
        if not self._body_done:
            # A body the app did not read: dropped if it has all arrived, else the connection
            # closes (its end is not worth waiting for).
            while events and isinstance(events[0], bytes):
                events.pop(0)
            if events and events[0] is _Mark.END:
                events.pop(0)
                self._body_done = True
        return not (self._close or self._gone or not self._body_done or self._server.closing)

    async def _websocket(self, scope: Scope, head: _Head) -> None:
        """Serve a WebSocket handshake: the connection is a ``_ws`` session's until it closes."""
        refusal = handshake_refusal(head.http_version, head.headers)
        if refusal is not None or not head.complete:
            await self._refuse(refusal or 400)
            return
        session = WebSocketSession(self._sock, head.headers, self._reader.upgrade_rest)
        self._reader.upgrade_rest = b""
        scope.update(
            type="websocket",
            scheme="ws",
            subprotocols=_subprotocols(head.headers),
            extensions={
                "websocket.http.response": {},
                DRAIN_EXTENSION: {"event": self._server.draining},
            },
        )
        del scope["method"]
        failed = False
        try:
            await self._server.app(scope, session.receive, session.send)
        except Exception:
            failed = True
            logger.exception("the ASGI app failed on a WebSocket connection")
        self._response = _Response.DONE
        self._gone = True  # nothing more of HTTP is written on it
        await session.finish(failed=failed)

    # -- ASGI receive ---------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self._body_done:
            message = self._body_message()
            while message is None:
                if self._continue and self._response is _Response.NONE:
                    self._continue = False
                    await self._write(_CONTINUE)
                data = await self._recv()
                if not data:
                    self._gone = True
                    return {"type": "http.disconnect"}
                self._reader.feed(data)
                message = self._body_message()
            return message
        # The body is all given: what comes now is the client hanging up, or its next requests.
        while not self._gone:
            if self._watched >= _WATCH_LIMIT:
                await trio.sleep_forever()
            data = await self._recv(wait=True)
            if not data:
                self._gone = True
                break
            self._watched += len(data)
            self._reader.feed(data)
        return {"type": "http.disconnect"}

    def _body_message(self) -> Message | None:
        events = self._reader.events
        if not events:
            return None
        first = events[0]
        if first is _Mark.END:
            events.pop(0)
            self._body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if isinstance(first, bytes):
            events.pop(0)
            body = first
            if events and isinstance(events[0], bytes):
                pieces = [first]
                while events and isinstance(events[0], bytes):
                    pieces.append(events.pop(0))  # type: ignore[arg-type]
                body = b"".join(pieces)
            more = not (events and events[0] is _Mark.END)
            if not more:
                events.pop(0)
                self._body_done = True
            return {"type": "http.request", "body": body, "more_body": more}
        # A refusal: the rest of the body cannot be read (it is malformed), as if the client had
        # hung up; it is answered once the app returns.
        return {"type": "http.disconnect"}

    async def _recv(self, *, wait: bool = False) -> bytes:
        """What the client sent next (b"" when it has gone). ``wait``: wait for it before
        trying to read, when nothing is likely to be there yet (a read that finds nothing costs
        a system call and an exception)."""
        try:
            if wait:
                await trio.lowlevel.wait_readable(self._sock)
            return await self._sock.recv(_READ_SIZE)
        except OSError:
            return b""

    # -- ASGI send ------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            response = self._response
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            if response is _Response.STARTED:
                data = self._response_head(body, more)
            elif response is _Response.BODY:
                data = b""
            else:
                raise RuntimeError(f"http.response.body sent with the response {response.value}")
            framing = self._framing
            left = self._length_left
            if framing is _Framing.CHUNKED:
                if body:
                    data += b"%x\r\n%b\r\n" % (len(body), body)
                if not more:
                    data += _LAST_CHUNK
            elif framing is _Framing.LENGTH:
                left -= len(body)
                if left < 0:
                    raise RuntimeError("the app sent more body than its content-length")
                data += body
            elif framing is _Framing.CLOSE:
                data += body
            if data:
                await self._write(data)  # cancelled only before it wrote anything
            else:
                await trio.lowlevel.checkpoint()
            # Only now: a send cancelled before it wrote leaves the response where it was.
            self._length_left = left
            if more:
                self._response = _Response.BODY
            else:
                self._response = _Response.DONE
                if left:
                    self._close = True  # the client waits for bytes that will not come
        elif kind == "http.response.start":
            if self._response is not _Response.NONE:
                raise RuntimeError("http.response.start sent twice")
            self._status = int(message["status"])
            self._headers = message.get("headers", ())
            self._response = _Response.STARTED
            await trio.lowlevel.checkpoint()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _response_head(self, body: bytes, more: bool) -> bytes:
        """The response's status line and headers, with the framing chosen (see the module
        docstring).

        Raises:
            ValueError: a header name or value would break the head (CR or LF in it).
        """
        head = self._head
        assert head is not None
        status = self._status
        self._length_left = 0
        lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
        length: bytes | None = None
        for name, value in self._headers:
            lines.append(b"%s: %s\r\n" % (name, value))
            if length is None and name.lower() == b"content-length":
                length = value
        if head.method == "HEAD" or status < 200 or status == 204 or status == 304:
            self._framing = _Framing.NONE
        elif length is not None:
            self._framing = _Framing.LENGTH
            self._length_left = int(length)
        elif not more:
            self._framing = _Framing.LENGTH
            self._length_left = len(body)
            lines.append(b"content-length: %d\r\n" % len(body))
        elif head.http_version == "1.1":
            self._framing = _Framing.CHUNKED
            lines.append(_CHUNKED)
        else:
            self._framing = _Framing.CLOSE
            self._close = True
        if not head.complete or self._server.closing:
            self._close = True
        if self._close:
            lines.append(_CLOSE)
        lines.append(_date_line(int(time.time())))
        lines.append(b"\r\n")
        data = b"".join(lines)
        # Every line ends in CRLF; one more CR or LF is a header smuggling a line in.
        if data.count(b"\n") != len(lines) or data.count(b"\r") != len(lines):
            raise ValueError("a response header name or value contains CR or LF")
        return data

    async def _write(self, data: bytes) -> None:
        if self._gone:
            await trio.lowlevel.checkpoint()
            return
        try:
            sent = await self._sock.send(data)
            if sent < len(data):
                await self._write_rest(memoryview(data)[sent:])
        except OSError:
            self._gone = True

    async def _write_rest(self, rest: memoryview) -> None:
        try:
            while rest:
                rest = rest[await self._sock.send(rest) :]
        except trio.Cancelled:
            # Part of this write is on the wire: it is finished (or the connection given up),
            # so that a cancelled send sent all of its message or none of it, which the app
            # relies on (``Exchange.unsent``). Not raised here: trio raises the cancellation
            # again at the caller's next checkpoint.
            with trio.CancelScope(deadline=trio.current_time() + _FINISH_WRITE, shield=True):
                while rest:
                    rest = rest[await self._sock.send(rest) :]
            if rest:
                self._gone = True

    async def _linger(self) -> None:
        """Close after an answer while the client may still be sending (a refused head, a body
        the app did not read): stop writing, then read and drop what comes, for a moment and
        up to a bound. Closed at once, the kernel would answer the client's next bytes with a
        reset, and the client could lose the answer it had not read yet."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        drained = 0
        with trio.move_on_after(_LINGER_SECONDS):
            while drained < _LINGER_BYTES:
                data = await self._recv(wait=True)
                if not data:
                    return
                drained += len(data)

    async def _refuse(self, status: int) -> None:
        """Answer ``status`` with an empty body; the connection closes after."""
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
        await self._write(
            line + b"content-length: 0\r\n" + _CLOSE + _date_line(int(time.time())) + b"\r\n"
        )


def _subprotocols(headers: list[tuple[bytes, bytes]]) -> list[str]:
    offered = [v for n, v in headers if n == b"sec-websocket-protocol"]
    return [p.strip().decode("latin-1") for v in offered for p in v.split(b",") if p.strip()]


@functools.lru_cache(maxsize=4)
def _date_line(second: int) -> bytes:
    return b"date: %s\r\n" % formatdate(second, usegmt=True).encode()


def _endpoint(address: Any) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return None


@attrs.define(eq=False)
class _Lifespan:
    """The ASGI lifespan protocol, spoken to the app from one task (:meth:`run`)."""

    _app: ASGIApp
    #: Shared with every request's scope (a shallow copy each).
    state: dict[str, Any] = attrs.Factory(dict)
    _received: int = 0
    _failure: str | None = None
    _started: trio.Event = attrs.Factory(trio.Event)
    _stopping: trio.Event = attrs.Factory(trio.Event)
    _stopped: trio.Event = attrs.Factory(trio.Event)
    #: The app's lifespan call has returned.
    _ended: trio.Event = attrs.Factory(trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        scope: Scope = {"type": "lifespan", "asgi": _ASGI, "state": self.state}
        try:
            await self._app(scope, self._receive, self._send)
        except Exception:
            if self._started.is_set():
                logger.exception("the ASGI app's lifespan failed")
            else:
                logger.warning("the ASGI app does not speak the lifespan protocol; serving without")
        finally:
            self._started.set()
            self._stopped.set()
            self._ended.set()

    async def startup(self) -> None:
        """Wait for the app's startup to complete.

        Raises:
            StartupError: it failed.
        """
        with trio.fail_after(_LIFESPAN_TIMEOUT):
            await self._started.wait()
        if self._failure is not None:
            raise StartupError(self._failure)

    async def shutdown(self) -> None:
        """Ask the app to shut down, and wait until it has (and its lifespan call returned)."""
        self._stopping.set()
        with trio.fail_after(_LIFESPAN_TIMEOUT):
            await self._stopped.wait()
        if self._failure is not None:
            logger.error("the ASGI app's lifespan shutdown failed: %s", self._failure)
        # What the app does after saying so is its own: given the time, not cancelled.
        with trio.move_on_after(_LIFESPAN_TIMEOUT):
            await self._ended.wait()

    async def _receive(self) -> Message:
        self._received += 1
        if self._received == 1:
            await trio.lowlevel.checkpoint()
            return {"type": "lifespan.startup"}
        await self._stopping.wait()
        return {"type": "lifespan.shutdown"}

    async def _send(self, message: Message) -> None:
        match message["type"]:
            case "lifespan.startup.complete":
                self._started.set()
            case "lifespan.startup.failed":
                self._failure = str(message.get("message", ""))
                self._started.set()
            case "lifespan.shutdown.complete":
                self._stopped.set()
            case "lifespan.shutdown.failed":
                self._failure = str(message.get("message", ""))
                self._stopped.set()
            case other:
                raise RuntimeError(f"unexpected ASGI lifespan message {other!r}")
        await trio.lowlevel.checkpoint()
