"""The fake upstream: a loopback HTTP/1.1 server that answers like the OpenAI Responses API.

Theory of operation: ``serve()`` runs ``trio.serve_listeners`` with one task per connection. A
connection reads one request at a time (no pipelining), records it, and answers it; answers are
pre-built byte strings from ``_answers`` written with as few ``send_all`` calls as the pacing
allows, because tests run the gateway against this server by the thousand. With
``write_per_event`` a stream is shaped like a real provider's instead: the head, then every SSE
event in a chunk and a ``send_all`` of its own, so a client reads events as they are written
rather than one buffer holding them all (what the benchmarks measure against).

Scripted faults (``_faults``) are consumed one per ``POST /responses``, after authentication and
routing but before the body is looked at, so a scripted status wins even over a malformed body.

Reasoning state is checked like a real account checks it (``_accounts``): a replayed reasoning
item's ``encrypted_content`` must have been sealed for the account calling now (this instance
and this API key), else 400 ``invalid_encrypted_content``; one replayed by ID alone must be one
the account stored, else 404, as OpenAI answers both.

A client that goes away is normal, never an error: the connection task swallows
``trio.BrokenResourceError`` and counts the connection closed. While it waits on purpose (pacing
deltas, stalling) it also reads the socket, so a hang-up is noticed at once rather than at the
next write.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import struct
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson
import trio

from ._accounts import Account, unverified_message
from ._answers import (
    MALFORMED_FRAME,
    BadBody,
    as_cancelled,
    as_queued,
    build_response,
    build_rich_response,
    error_envelope,
    is_plain,
    model_request,
    sse_script,
)
from ._conversations import Refusal, conversation_turn
from ._extra import EXTRA_ROUTES, Next
from ._faults import Fault, FaultKind
from ._http import LAST_CHUNK, MAX_HEAD, BadRequest, RequestHead, chunk, parse_head, response_head
from ._jobs import Job, job_query, start_job, stream_job

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

__all__ = ["FakeStatistics", "FakeUpstream", "RecordedRequest", "open_fake_upstream"]

#: How many finished answers GET / DELETE / cancel / ``previous_response_id`` can still find.
STORED_RESPONSES: Final = 10_000
#: How many stored reasoning items a replay by ID can still find.
STORED_REASONING: Final = 10_000

_RECEIVE_SIZE: Final = 65536
_ROUTE: Final = re.compile(r"/v1/responses(?:/([^/]+)(/cancel)?)?/?")
# SO_LINGER on with a zero timeout: close() then discards unsent data and sends RST, not FIN.
_LINGER_ABORT: Final = struct.pack("ii", 1, 0)
_JSON: Final = ("content-type", "application/json")
_SSE_HEADERS: Final = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("transfer-encoding", "chunked"),
    ("cache-control", "no-cache"),
)


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request as the fake received it, before it answered."""

    method: str
    #: The path as sent (Azure prefix included), without the query string.
    path: str
    query: str
    #: Header names lower-cased; repeated headers joined with ", ".
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON.

        Raises:
            orjson.JSONDecodeError: the body is not JSON.
        """
        return orjson.loads(self.body)


@attrs.frozen(kw_only=True)
class FakeStatistics:
    """A snapshot of :meth:`FakeUpstream.statistics`."""

    connections_opened: int
    connections_closed: int
    open_connections: int
    requests: int
    #: Every byte a ``send_all`` finished sending, on any connection.
    bytes_written: int
    #: The ``send_all`` calls that finished, on any connection.
    writes: int


#: What a connection does after answering a request (``_extra.Next``, which the handlers of
#: its table return without importing this module).
_Next = Next


@attrs.define(eq=False)
class _Stored:
    #: What GET returns now: the final answer, or its queued/cancelled form.
    response: dict[str, Any]
    final: dict[str, Any]
    background: bool
    #: A background response's job (``_jobs``): what GET returns follows it.
    job: Job | None = None

    def current(self) -> dict[str, Any]:
        return self.response if self.job is None else self.job.response


def _normalize_path(path: str) -> str:
    # Azure serves the same API under /openai/v1/..., and its older preview form under
    # /openai/... (the Responses API reference); both mean the same thing here.
    if path.startswith("/openai/v1/"):
        return path[len("/openai") :]
    if path.startswith("/openai/"):
        return "/v1/" + path[len("/openai/") :]
    return path


@attrs.define(eq=False)
class FakeUpstream:
    """A fake OpenAI Responses API on loopback, with scripted faults.

    Args:
        tokens: output text deltas per answer; each is a word, all but the first with a leading
            space.
        token_delay: seconds to ``trio.sleep`` before each delta when streaming; 0 never sleeps.
        api_key: when set, requests need ``Authorization: Bearer <key>`` or ``api-key: <key>``,
            else they get 401 ``invalid_api_key``. Set or not, the key a request presents names
            its account: reasoning state one key was given is refused under another.
        record_requests: keep every request for :attr:`requests`; long benchmark runs turn this
            off so memory stays flat.
        write_per_event: write a stream as a real provider does, each SSE event its own chunk
            in a ``send_all`` of its own (after the head in one of its own, the last chunk in
            another); by default a stream goes out in as few writes as the pacing allows.
    """

    tokens: int = attrs.field(default=20, validator=attrs.validators.ge(0))
    token_delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    api_key: str | None = None
    record_requests: bool = True
    write_per_event: bool = False

    _faults: deque[Fault] = attrs.field(init=False, factory=deque)
    #: Faults for the streams of background jobs a GET opens (``script_resume``).
    _resume_faults: deque[Fault] = attrs.field(init=False, factory=deque)
    #: Where background jobs run (``_jobs``), while serving.
    _jobs: trio.Nursery | None = attrs.field(init=False, default=None)
    _requests: list[RecordedRequest] = attrs.field(init=False, factory=list)
    _stored: OrderedDict[str, _Stored] = attrs.field(init=False, factory=OrderedDict)
    _url: str | None = attrs.field(init=False, default=None)
    # Ids are this instance's random nonce plus a counter: unique without a syscall per id.
    _nonce: str = attrs.field(init=False, factory=lambda: secrets.token_hex(16))
    _counter: itertools.count[int] = attrs.field(init=False, factory=itertools.count)
    # Accounts are this secret plus the caller's API key (``_accounts``).
    _secret: bytes = attrs.field(init=False, factory=lambda: secrets.token_bytes(32), repr=False)
    _accounts: dict[str, Account] = attrs.field(init=False, factory=dict, repr=False)
    #: State of the endpoints ``_extra`` adds, each under its own key.
    extra_state: dict[str, Any] = attrs.field(init=False, factory=dict, repr=False)
    # Reasoning item id -> the key of the account that stored it (store not false).
    _reasoning: OrderedDict[str, bytes] = attrs.field(init=False, factory=OrderedDict, repr=False)
    _connections_opened: int = attrs.field(init=False, default=0)
    _connections_closed: int = attrs.field(init=False, default=0)
    _request_count: int = attrs.field(init=False, default=0)
    _bytes_written: int = attrs.field(init=False, default=0)
    _writes: int = attrs.field(init=False, default=0)

    def script(self, *faults: Fault) -> None:
        """Queue ``faults``; each ``POST /responses`` consumes one from the front, and an empty
        queue means a normal answer."""
        self._faults.extend(faults)

    def script_resume(self, *faults: Fault) -> None:
        """Queue ``faults`` for the streams of background jobs that ``GET
        /v1/responses/{id}?stream=true`` opens; each such GET consumes one (a reset, a stall,
        a clean end too early, or a status), and an empty queue means a normal stream."""
        self._resume_faults.extend(faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order (a copy)."""
        return list(self._requests)

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, for an OpenAI client's ``base_url``.

        Raises:
            RuntimeError: not serving yet.
        """
        if self._url is None:
            raise RuntimeError("the fake upstream is not serving yet")
        return self._url

    def statistics(self) -> FakeStatistics:
        """Connection, request, byte and write counts since this instance was created."""
        return FakeStatistics(
            connections_opened=self._connections_opened,
            connections_closed=self._connections_closed,
            open_connections=self._connections_opened - self._connections_closed,
            requests=self._request_count,
            bytes_written=self._bytes_written,
            writes=self._writes,
        )

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled.

        Calls ``task_status.started(port)`` with the bound port once listening, so
        ``await nursery.start(upstream.serve)`` returns it.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0:
            # A host that resolves to several addresses would get a different free port on
            # each; one listener keeps base_url truthful.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        bound: int = listeners[0].socket.getsockname()[1]
        if host in ("", "0.0.0.0"):
            url_host = "127.0.0.1"
        elif host == "::":
            url_host = "[::1]"
        else:
            url_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{url_host}:{bound}/v1"
        # Background jobs run beside the connections, whatever becomes of those (``_jobs``).
        async with trio.open_nursery() as jobs:
            self._jobs = jobs
            task_status.started(bound)
            await trio.serve_listeners(self._handle_connection, listeners)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        self._connections_opened += 1
        next_step = _Next.CLOSE
        try:
            next_step = await _Connection(upstream=self, stream=stream).run()
        except trio.BrokenResourceError:
            pass  # the client went away mid-response; that is its right, not our error
        finally:
            if next_step is _Next.RESET:
                # OSError: already dead, the client reset it first.
                with contextlib.suppress(OSError):
                    stream.socket.setsockopt(
                        trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, _LINGER_ABORT
                    )
            # Closing the socket itself is synchronous, so this cannot be cancelled halfway and
            # the statistics never show a closed connection as open.
            stream.socket.close()
            self._connections_closed += 1

    # -- helpers for _Connection ---------------------------------------------------------

    def _record(self, head: RequestHead, body: bytes) -> None:
        self._request_count += 1
        if self.record_requests:
            self._requests.append(
                RecordedRequest(
                    method=head.method,
                    path=head.path,
                    query=head.query,
                    headers=head.headers,
                    body=body,
                )
            )

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._nonce}{next(self._counter):016x}"

    def _next_fault(self) -> Fault | None:
        return self._faults.popleft() if self._faults else None

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.api_key is None:
            return True
        return (
            headers.get("authorization") == f"Bearer {self.api_key}"
            or headers.get("api-key") == self.api_key
        )

    def _store(self, stored: _Stored) -> None:
        self._stored[stored.final["id"]] = stored
        while len(self._stored) > STORED_RESPONSES:
            self._stored.popitem(last=False)

    def _store_final(self, final: dict[str, Any]) -> None:
        """Store a finished foreground response, as a create does (``_websocket``)."""
        self._store(_Stored(response=final, final=final, background=False))

    def _account(self, headers: Mapping[str, str]) -> Account:
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        key = token if scheme.lower() == "bearer" else headers.get("api-key", "")
        account = self._accounts.get(key)
        if account is None:
            # Keys are few (one per deployment), so the cache stays small.
            account = self._accounts[key] = Account.of(self._secret, key)
        return account

    def _store_reasoning(self, account: Account, output: list[dict[str, Any]]) -> None:
        for item in output:
            if item["type"] == "reasoning":
                self._reasoning[item["id"]] = account.key
        while len(self._reasoning) > STORED_REASONING:
            self._reasoning.popitem(last=False)

    def _replay_error(
        self, account: Account, items: list[Any]
    ) -> tuple[int, str, str | None, str | None] | None:
        """Why the reasoning items in ``items`` cannot be replayed by ``account``, as (status,
        message, param, code); None when they can."""
        for index, item in enumerate(items):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in ("reasoning", "compaction"):
                continue
            token = item.get("encrypted_content")
            if isinstance(token, str) and token:
                if not account.issued(token):
                    return 400, unverified_message(token), "input", "invalid_encrypted_content"
                continue
            if kind == "compaction":  # its state travels in the item only
                param = f"input[{index}].encrypted_content"
                return 400, f"Missing required parameter: '{param}'.", param, None
            item_id = item.get("id")
            if not isinstance(item_id, str):
                param = f"input[{index}].id"
                message = f"Missing required parameter: '{param}'."
                return 400, message, param, "missing_required_parameter"
            if self._reasoning.get(item_id) != account.key:
                message = (
                    f"Item with id '{item_id}' not found. Items are not persisted when `store` "
                    "is set to false. Try again with `store` set to true, or remove this item "
                    "from your input."
                )
                return 404, message, "input", None
        return None


def _not_found(response_id: str) -> bytes:
    return error_envelope(
        f"No response found with id '{response_id}'.", type="invalid_request_error"
    )


@attrs.define(eq=False)
class _Connection:
    """One client connection: read a request, answer it, repeat while keep-alive holds."""

    upstream: FakeUpstream
    stream: trio.SocketStream
    _buffer: bytearray = attrs.field(init=False, factory=bytearray)
    # Per-request state, reset by run() before each answer.
    _request_id: str = attrs.field(init=False, default="")
    _keep_alive: bool = attrs.field(init=False, default=True)
    _head_only: bool = attrs.field(init=False, default=False)

    async def run(self) -> _Next:
        while True:
            try:
                head = await self._receive_head()
            except BadRequest as exc:
                self._request_id = self.upstream._new_id("req")
                self._keep_alive = False
                envelope = error_envelope(exc.message, type="invalid_request_error")
                return await self._send_json(exc.status, envelope)
            if head is None:
                return _Next.CLOSE
            body = await self._receive_body(head)
            if body is None:
                return _Next.CLOSE
            self.upstream._record(head, body)
            self._request_id = self.upstream._new_id("req")
            self._keep_alive = head.keep_alive
            self._head_only = head.method == "HEAD"
            next_step = await self._respond(head, body)
            if next_step is not _Next.KEEP_ALIVE:
                return next_step

    async def _receive_head(self) -> RequestHead | None:
        buffer = self._buffer
        searched = 0
        while (end := buffer.find(b"\r\n\r\n", searched)) < 0:
            if len(buffer) > MAX_HEAD:
                raise BadRequest(431, "Request header fields too large.")
            searched = max(0, len(buffer) - 3)
            data = await self.stream.receive_some(_RECEIVE_SIZE)
            if not data:
                return None
            buffer += data
        head = parse_head(bytes(buffer[:end]))
        del buffer[: end + 4]
        return head

    async def _receive_body(self, head: RequestHead) -> bytes | None:
        buffer = self._buffer
        length = head.content_length
        if head.expect_continue and len(buffer) < length:
            await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(buffer) < length:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
            if not data:
                return None
            buffer += data
        body = bytes(buffer[:length])
        del buffer[:length]
        return body

    async def _send(self, data: bytes) -> None:
        await self.stream.send_all(data)
        self.upstream._bytes_written += len(data)
        self.upstream._writes += 1

    def _json_head(self, status: int, length: int, extra: Iterable[tuple[str, str]] = ()) -> bytes:
        headers = [_JSON, ("content-length", str(length)), ("x-request-id", self._request_id)]
        headers.extend(extra)
        if not self._keep_alive:
            headers.append(("connection", "close"))
        return response_head(status, headers)

    async def _send_json(
        self, status: int, body: bytes, extra: Iterable[tuple[str, str]] = ()
    ) -> _Next:
        head = self._json_head(status, len(body), extra)
        await self._send(head if self._head_only else head + body)
        return _Next.KEEP_ALIVE if self._keep_alive else _Next.CLOSE

    async def _hold_until_hangup(self) -> None:
        # A stall: say nothing, and discard whatever the client says, until it gives up.
        try:
            while await self.stream.receive_some(_RECEIVE_SIZE):
                pass
        except trio.BrokenResourceError:
            pass

    # -- routing ---------------------------------------------------------------------------

    async def _respond(self, head: RequestHead, body: bytes) -> _Next:
        upstream = self.upstream
        if not upstream._authorized(head.headers):
            given = "authorization" in head.headers or "api-key" in head.headers
            message = "Incorrect API key provided." if given else "You didn't provide an API key."
            envelope = error_envelope(message, type="invalid_request_error", code="invalid_api_key")
            return await self._send_json(401, envelope)
        route = _ROUTE.fullmatch(_normalize_path(head.path))
        method = head.method
        if route is not None:
            response_id, cancel = route.group(1), route.group(2)
            if response_id is None:
                if method == "POST":
                    return await self._create(head, body)
            elif cancel:
                if method == "POST":
                    return await self._cancel(response_id)
            elif method == "GET":
                return await self._retrieve(response_id, head.query)
            elif method == "DELETE":
                return await self._delete(response_id)
        path = _normalize_path(head.path)
        for route_method, pattern, handler in EXTRA_ROUTES:
            match = pattern.fullmatch(path)
            if match is not None and route_method in (method, "*"):
                next_step: _Next = await handler(self, head, body, match)
                return next_step
        envelope = error_envelope(
            f"Invalid URL ({method} {head.path})", type="invalid_request_error"
        )
        return await self._send_json(404, envelope)

    async def _retrieve(self, response_id: str, query: str = "") -> _Next:
        stored = self.upstream._stored.get(response_id)
        if stored is None:
            return await self._send_json(404, _not_found(response_id))
        try:
            stream, after = job_query(query)
        except ValueError:
            return await self._invalid(
                "Invalid 'starting_after': expected an integer.",
                param="starting_after",
                code="invalid_type",
            )
        if stream:
            if stored.job is None:
                return await self._invalid(
                    "Only background responses can be streamed.", param="stream", code=None
                )
            fault = self.upstream._resume_faults.popleft() if self.upstream._resume_faults else None
            if fault is not None and fault.kind is FaultKind.STATUS:
                return await self._send_json(fault.status_code, fault.body, fault.headers)
            if fault is not None and fault.kind is FaultKind.RESET_BEFORE_HEADERS:
                return _Next.RESET
            after = -1 if after is None else after
            return await stream_job(self, stored.job, after, fault, self._request_id)
        return await self._send_json(200, orjson.dumps(stored.current()))

    async def _delete(self, response_id: str) -> _Next:
        stored = self.upstream._stored.pop(response_id, None)
        if stored is None:
            return await self._send_json(404, _not_found(response_id))
        if stored.job is not None:
            stored.job.cancel()
        deleted = {"id": response_id, "object": "response", "deleted": True}
        return await self._send_json(200, orjson.dumps(deleted))

    async def _cancel(self, response_id: str) -> _Next:
        stored = self.upstream._stored.get(response_id)
        if stored is None:
            return await self._send_json(404, _not_found(response_id))
        if not stored.background:
            envelope = error_envelope(
                "Cannot cancel a synchronous response.", type="invalid_request_error"
            )
            return await self._send_json(400, envelope)
        # Cancelling a finished background response is idempotent (the Responses API reference).
        if stored.job is not None:
            stored.job.cancel()
        elif stored.response["status"] in ("queued", "in_progress"):
            stored.response = as_cancelled(stored.final)
        return await self._send_json(200, orjson.dumps(stored.current()))

    async def _invalid(self, message: str, *, param: str | None, code: str | None) -> _Next:
        envelope = error_envelope(message, type="invalid_request_error", param=param, code=code)
        return await self._send_json(400, envelope)

    async def _create(self, head: RequestHead, body: bytes) -> _Next:
        upstream = self.upstream
        fault = upstream._next_fault()
        kind = fault.kind if fault is not None else None
        if fault is not None and kind is FaultKind.STATUS:
            return await self._send_json(fault.status_code, fault.body, fault.headers)
        if kind is FaultKind.RESET_BEFORE_HEADERS:
            return _Next.RESET
        try:
            request = model_request(body)
        except BadBody as exc:
            return await self._invalid(exc.message, param=exc.param, code=exc.code)
        previous = request.get("previous_response_id")
        if previous is not None and previous not in upstream._stored:
            return await self._invalid(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        turn = conversation_turn(upstream, request, head.headers)  # docs/conversations.md
        if isinstance(turn, Refusal):
            return await self._send_json(turn.status, turn.body)
        if turn is not None:
            request = turn.request
        background = request.get("background") is True
        if background and request.get("store") is False:
            return await self._invalid(
                "Background mode requires store to be true.", param="store", code=None
            )
        items = request.get("input")
        account = upstream._account(head.headers)
        if isinstance(items, list):
            refused = upstream._replay_error(account, items)
            if refused is not None:
                status, message, param, code = refused
                envelope = error_envelope(
                    message, type="invalid_request_error", param=param, code=code
                )
                return await self._send_json(status, envelope)
        now = int(time.time())
        plain = is_plain(request)
        if plain:
            final = build_response(
                request,
                response_id=upstream._new_id("resp"),
                message_id=upstream._new_id("msg"),
                created_at=now,
                completed_at=now,
                tokens=upstream.tokens,
            )
        else:
            final = build_rich_response(
                request,
                response_id=upstream._new_id("resp"),
                created_at=now,
                completed_at=now,
                tokens=upstream.tokens,
                new_id=upstream._new_id,
                seal=account.seal,
            )
        if turn is not None:
            turn.finish(final, complete=fault is None)
        stream = request.get("stream") is True
        if request.get("store") is not False:
            if not plain:
                upstream._store_reasoning(account, final["output"])
            job = None
            if background:
                # A job of its own (``_jobs``). A stalled one never progresses: it stays queued
                # until cancelled.
                stalled = not stream and kind is FaultKind.STALL
                job = start_job(
                    final,
                    plain=plain,
                    extra_events=fault.events if fault is not None else (),
                    delay=upstream.token_delay,
                    nursery=upstream._jobs,
                    stalled=stalled,
                )
                if stalled:
                    fault = None
            upstream._store(_Stored(response=final, final=final, background=background, job=job))
            if job is not None and stream:
                # Its stream follows the job; a fault cuts this connection only.
                return await stream_job(self, job, -1, fault, self._request_id)
        if stream:
            return await self._stream(final, fault, plain=plain)
        payload = orjson.dumps(as_queued(final) if background else final)
        return await self._answer_json(payload, fault)

    # -- answers -----------------------------------------------------------------------------

    async def _answer_json(self, payload: bytes, fault: Fault | None) -> _Next:
        """A non-stream answer; streaming faults strike the JSON body instead of SSE events."""
        if fault is None:
            return await self._send_json(200, payload)
        # What goes out before a fault that breaks off mid-body: the headers announcing the
        # full length, plus half the body unless the fault strikes at event 0.
        half = payload[: len(payload) // 2]
        started = self._json_head(200, len(payload)) + (half if fault.after_events else b"")
        match fault.kind:
            case FaultKind.MALFORMED_SSE:
                # A complete HTTP message whose body is cut-off JSON.
                return await self._send_json(200, half)
            case FaultKind.RESET_MID_STREAM:
                await self._send(started)
                return _Next.RESET
            case FaultKind.END_WITHOUT_TERMINAL:
                await self._send(started)
                return _Next.CLOSE  # a clean FIN before the body is complete
            case FaultKind.STALL:
                if fault.after_events:
                    await self._send(started)
                await self._hold_until_hangup()
                return _Next.CLOSE
            case _:
                return await self._send_json(200, payload)

    async def _stream(self, final: dict[str, Any], fault: Fault | None, *, plain: bool) -> _Next:
        extra_events = fault.events if fault is not None else ()
        script = sse_script(final, extra_events=extra_events, plain=plain)
        # (frame, sleep token_delay before it) in sending order.
        plan = [(frame, i in script.delta_indices) for i, frame in enumerate(script.frames)]
        kind = fault.kind if fault is not None else None
        after = fault.after_events if fault is not None else 0
        match kind:
            case FaultKind.STALL if after == 0:
                await self._hold_until_hangup()
                return _Next.CLOSE
            case FaultKind.RESET_MID_STREAM | FaultKind.STALL:
                del plan[after:]
            case FaultKind.MALFORMED_SSE:
                plan.insert(after, (MALFORMED_FRAME, False))
            case FaultKind.END_WITHOUT_TERMINAL:
                del plan[min(after, script.terminal_index) :]
        # Only a clean ending sends the last chunk; a reset or a stall never gets there.
        finish = kind not in (FaultKind.RESET_MID_STREAM, FaultKind.STALL)
        headers = [*_SSE_HEADERS, ("x-request-id", self._request_id)]
        if not self._keep_alive:
            headers.append(("connection", "close"))
        head = response_head(200, headers)
        if self.upstream.token_delay > 0:
            if not await self._write_paced(head, plan, finish=finish):
                return _Next.CLOSE  # the client hung up mid-stream
        elif self.upstream.write_per_event:
            await self._write_each(head, plan, finish=finish)
        else:
            frames = b"".join(frame for frame, _ in plan)
            await self._send(head + chunk(frames) + (LAST_CHUNK if finish else b""))
        if kind is FaultKind.RESET_MID_STREAM:
            return _Next.RESET
        if kind is FaultKind.STALL:
            await self._hold_until_hangup()
            return _Next.CLOSE
        return _Next.KEEP_ALIVE if self._keep_alive else _Next.CLOSE

    async def _write_paced(
        self, head: bytes, plan: list[tuple[bytes, bool]], *, finish: bool
    ) -> bool:
        """Write ``plan``, sleeping before each delta: in bursts, flushing what is due before
        sleeping, or with ``write_per_event`` a write per frame.

        Returns False when the client hung up, which a watcher notices at once instead of at the
        next write (a write into a half-closed TCP connection only fails on the one after).
        """
        hung_up = False

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal hung_up
            try:
                while data := await self.stream.receive_some(_RECEIVE_SIZE):
                    self._buffer += data  # an early next request; keep it for run()
            except trio.BrokenResourceError:
                pass
            hung_up = True
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                if self.upstream.write_per_event:
                    await self._write_each(head, plan, finish=finish)
                else:
                    await self._write_bursts(head, plan, finish=finish)
            except trio.BrokenResourceError:
                hung_up = True
            nursery.cancel_scope.cancel()
        return not hung_up

    async def _write_bursts(
        self, head: bytes, plan: list[tuple[bytes, bool]], *, finish: bool
    ) -> None:
        """Write ``plan`` in as few writes as the pacing allows: what is due goes out in one
        chunk before each sleep."""
        pending = head
        burst: list[bytes] = []
        for frame, paced in plan:
            if paced:
                if burst or pending:
                    await self._send(pending + chunk(b"".join(burst)))
                    pending, burst = b"", []
                await trio.sleep(self.upstream.token_delay)
            burst.append(frame)
        await self._send(pending + chunk(b"".join(burst)) + (LAST_CHUNK if finish else b""))

    async def _write_each(
        self, head: bytes, plan: list[tuple[bytes, bool]], *, finish: bool
    ) -> None:
        """Write ``plan`` as a real provider does: the head, then each frame as a chunk of its
        own in a ``send_all`` of its own (sleeping ``token_delay`` before each delta, if any),
        then the last chunk."""
        delay = self.upstream.token_delay
        await self._send(head)
        for frame, paced in plan:
            if paced and delay > 0:
                await trio.sleep(delay)
            await self._send(chunk(frame))
        if finish:
            await self._send(LAST_CHUNK)


@contextlib.asynccontextmanager
async def open_fake_upstream(
    *,
    tokens: int = 20,
    token_delay: float = 0.0,
    api_key: str | None = None,
    record_requests: bool = True,
    write_per_event: bool = False,
) -> AsyncIterator[FakeUpstream]:
    """Serve a :class:`FakeUpstream` on ``127.0.0.1`` (a free port) for the ``async with`` body.

    The arguments are those of :class:`FakeUpstream`. On exit the server and every connection
    it holds are cancelled. An exception from the body propagates as itself, not wrapped in an
    exception group.
    """
    upstream = FakeUpstream(
        tokens=tokens,
        token_delay=token_delay,
        api_key=api_key,
        record_requests=record_requests,
        write_per_event=write_per_event,
    )
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        try:
            yield upstream
        except GeneratorExit:
            raise
        except BaseException as exc:
            # Re-raised below, outside the nursery, so strict exception groups don't wrap it.
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
