"""The proxy's ASGI application: the OpenAI Responses API over HTTP, on the library's gateway.

Theory of operation. :class:`ProxyApp` is a plain ASGI callable (no framework: a dozen routes,
and streaming, disconnects and backpressure need the raw ``send``/``receive`` anyway; Starlette
measured 8.8 µs per request of routing and request objects against 1.2 µs for this dispatch).
Its gateway lives as long as the ASGI lifespan: opened at ``lifespan.startup``, closed at
``lifespan.shutdown`` (which hypercorn sends after in-flight requests have finished or been
cancelled at the graceful deadline), so every request sees an open gateway and store.

Every HTTP request:

1. gets an ``x-request-id`` (the client's, if it sent a sane one) on every answer;
2. is authenticated (:class:`~sluicegate.server._keys.KeyManager`): the master key is the admin,
   a virtual key is an owner; health and metrics need no key;
3. has its body read up to ``max_request_body_bytes`` (413 beyond), parsed strictly (400), and
   checked so the client can never choose the upstream (``api_base``, ``api_key``,
   ``base_url``… in the body or headers: 400) nor act as someone else (the library's own
   options such as ``owner`` are refused: the owner is the key);
4. is admitted for its key (allowed model, budget, rpm/tpm, parallel requests);
5. runs on the gateway, and is answered as OpenAI answers: JSON, or SSE (``event:`` and
   ``data:`` lines, no ``[DONE]``), with a comment line after every
   ``sse_keepalive_interval`` of upstream silence. A client that hangs up cancels its request
   (the pipeline records it cancelled, with its partial usage); a background response runs on.
   A stream the graceful deadline cuts while its client is still there ends as a failure
   mid-stream does (one ``response.failed``: the gateway shut down), recorded the same.

Errors are the OpenAI envelope with the error's status (``SluicegateError.to_dict()``);
anything else is logged and answered as a 500 that says nothing of it.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, aclosing
from functools import lru_cache, partial
from typing import Any, TypeVar
from urllib.parse import parse_qs

import attrs
import orjson
import trio

from .._gateway import Gateway, ResponseStream
from .._params import FORBIDDEN_BODY_FIELDS, MAX_SAFE_INTEGER, checked_int, forbidden_field
from .._types import DeltaEvent, OutputItemEvent, Response, ResponseEvent, StreamEvent
from ..actors._health import BreakerState, DeploymentStatistics
from ..actors._router import SESSION_HEADER
from ..codecs.content_encoding import ContentDecoder, parse_content_encoding
from ..codecs.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
)
from ..codecs.sse import encode_comment, encode_event
from ..config import GatewayConfig, forward_refusal
from ..errors import (
    ConfigError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServiceUnavailableError,
    SluicegateError,
    UnsupportedMediaTypeError,
)
from ..runtime._messages import UpstreamTiming
from ..runtime._scopes import open_body_nursery
from ._keys import Admission, Caller, KeyManager
from ._metrics import Labels, Metrics

__all__ = ["FORBIDDEN_BODY_FIELDS", "ProxyApp"]

logger = logging.getLogger("sluicegate")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Headers that would do the same.
FORBIDDEN_HEADERS = frozenset(
    {b"api-base", b"x-api-base", b"base-url", b"x-base-url", b"x-upstream-url", b"api-version"}
)
#: Library options that are not the HTTP client's to set: the owner is its key; timing and
#: ``on_end``, the proxy's; the session and forwarded headers, headers'. An ``extra_body``
#: object in the JSON is taken as the library's ``extra_body`` (merged last into the
#: provider's body, bridges included); an SDK's own ``extra_body`` keys arrive at the top
#: level and pass through.
PROXY_REFUSED_OPTIONS = frozenset(
    {
        "owner",
        "timing",
        "on_end",
        "session",
        "client_headers",
        "extra_headers",
        "extra_query",
        "timeout",
    }
)

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_RESPONSE_PATH = re.compile(r"/v1/responses/([^/]+)(/cancel|/input_items)?/?")
_JSON = [(b"content-type", b"application/json")]
_SSE = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


class _ClientGone(Exception):
    """The client hung up before its answer: there is nobody to send it to."""


@attrs.define(eq=False)
class _Exchange:
    """One HTTP request while the proxy answers it."""

    scope: Scope
    receive: Receive
    send: Send
    request_id: bytes
    started: float
    route: str = "other"
    status: int = 0
    timing: UpstreamTiming = attrs.Factory(UpstreamTiming)
    headers_sent: bool = False
    #: The client's fault found while its body streamed upstream (it stalled): what the
    #: client is told, not the upstream error its broken body caused.
    body_error: SluicegateError | None = None
    #: SSE frames being written; a write that a cancellation cut sent nothing (hypercorn's
    #: send raises before it writes, or writes shielded), so these go first when a
    #: stream is ended at a shutdown.
    unsent: bytes = b""

    def header(self, name: bytes) -> str | None:
        for key, value in self.scope.get("headers", ()):
            if key == name:
                text: str = value.decode("latin-1")
                return text
        return None

    def query(self) -> dict[str, list[str]]:
        raw: bytes = self.scope.get("query_string", b"")
        return parse_qs(raw.decode("latin-1"), keep_blank_values=True)

    def overhead_ms(self) -> bytes:
        total = trio.current_time() - self.started
        return f"{max(0.0, total - self.timing.elapsed) * 1000:.3f}".encode()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers_sent = True
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *headers,
                    (b"x-request-id", self.request_id),
                    (b"x-sluicegate-overhead-ms", self.overhead_ms()),
                ],
            }
        )

    async def json(
        self, status: int, body: Any, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        payload = orjson.dumps(body)
        await self.start(
            status, [*_JSON, (b"content-length", str(len(payload)).encode()), *headers]
        )
        await self.send({"type": "http.response.body", "body": payload})

    async def error(self, exc: SluicegateError) -> None:
        headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await self.json(exc.status_code, exc.to_dict(), headers)


@attrs.define(eq=False)
class ProxyApp:
    """The ASGI application of ``sluicegate serve``.

    Args:
        config: the gateway configuration (``general_settings`` holds the proxy's settings).
        open_gateway: opens the gateway for the lifespan (tests pass one with a transport).
    """

    _config: GatewayConfig
    _open_gateway: Callable[[], AbstractAsyncContextManager[Gateway]]
    _gateway: Gateway | None = None
    _keys: KeyManager | None = None
    metrics: Metrics = attrs.Factory(Metrics)
    _in_flight: int = 0
    #: Bodies being read now (``max_concurrent_body_reads``).
    _body_readers: trio.CapacityLimiter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        readers = self._config.general_settings.max_concurrent_body_reads
        self._body_readers = trio.CapacityLimiter(readers)

    @property
    def _body(self) -> _BodyLimits:
        gs = self._config.general_settings
        return _BodyLimits(gs.max_request_body_bytes, gs.request_body_timeout, self._body_readers)

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def gateway(self) -> Gateway | None:
        """The gateway while the app is serving (between lifespan startup and shutdown)."""
        return self._gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)

    # -- lifespan ------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            self.check_settings()
            async with self._open_gateway() as gateway:
                self._start(gateway)
                await send({"type": "lifespan.startup.complete"})
                message = await receive()  # lifespan.shutdown: in-flight requests are done
                self._gateway = None
        except SluicegateError as exc:
            await send({"type": "lifespan.startup.failed", "message": exc.message})
            return
        await send({"type": "lifespan.shutdown.complete"})

    def check_settings(self) -> None:
        """Refuse to serve without a master key unless unauthenticated use is allowed.

        Raises:
            ConfigError: naming ``general_settings.master_key``.
        """
        gs = self._config.general_settings
        if gs.master_key is None and not gs.allow_unauthenticated:
            raise ConfigError(
                "a master key is required to serve (or set allow_unauthenticated: true for "
                "local development)",
                path="general_settings.master_key",
            )

    def _start(self, gateway: Gateway) -> None:
        gs = self._config.general_settings

        async def spend(owner: str) -> float:
            totals = await gateway.spend_totals(group_by="owner", owner=owner)
            return sum(t.cost for t in totals)

        self._keys = KeyManager(
            gateway.store,
            gs.master_key,
            allow_unauthenticated=gs.allow_unauthenticated,
            spend=spend,
        )
        self._gateway = gateway
        self.metrics.gauge(
            "sluicegate_requests_in_flight",
            "Requests being answered now (background responses included).",
            lambda: [((), float(self._in_flight + gateway.statistics().background_running))],
        )
        self.metrics.gauge(
            "sluicegate_upstream_errors",
            "Upstream attempts that failed (statuses, resets, timeouts) since start.",
            lambda: [((), float(gateway.statistics().upstream_errors))],
        )
        self.metrics.gauge(
            "sluicegate_deployment_cooldowns",
            "Deployments cooling down now (circuit breaker open or half-open).",
            lambda: [((), float(gateway.statistics().deployments_cooling))],
        )
        for name, help_text, read in _DEPLOYMENT_GAUGES:
            self.metrics.gauge(name, help_text, partial(_per_deployment, gateway, read))

    # -- HTTP ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        request_id = given if given and _REQUEST_ID.fullmatch(given) else _new_request_id()
        ex = _Exchange(scope, receive, send, request_id, trio.current_time())
        self._in_flight += 1
        try:
            await self._dispatch(ex)
        except _ClientGone:
            ex.status = 499  # nginx's "client closed request", for the metrics only
        except SluicegateError as exc:
            if not ex.headers_sent:
                await ex.error(exc)
        except trio.Cancelled:
            raise
        except Exception:
            logger.exception("request %s failed on an internal error", request_id.decode())
            if not ex.headers_sent:
                await ex.error(InternalError("The server had an error processing your request."))
        finally:
            self._in_flight -= 1
            labels = (("route", ex.route), ("method", scope["method"]), ("status", str(ex.status)))
            self.metrics.count("sluicegate_requests_total", labels)
            self.metrics.observe(
                "sluicegate_request_duration_seconds",
                (("route", ex.route),),
                trio.current_time() - ex.started,
            )

    async def _dispatch(self, ex: _Exchange) -> None:
        method: str = ex.scope["method"]
        path: str = ex.scope["path"]
        gateway, keys = self._gateway, self._keys
        if path in ("/health/liveliness", "/health/liveness"):
            ex.route = "/health/liveliness"
            await ex.json(200, {"status": "healthy"})
            return
        if gateway is None or keys is None:
            raise _unavailable()
        if path == "/health/readiness":
            ex.route = path
            await self._readiness(ex, gateway)
            return
        if path == "/metrics":
            ex.route = path
            await ex.start(200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")])
            await ex.send({"type": "http.response.body", "body": self.metrics.render()})
            return
        _refuse_upstream_headers(ex)
        caller = await keys.authenticate(ex.header(b"authorization"), ex.header(b"api-key"))
        match = _RESPONSE_PATH.fullmatch(path)
        if path in ("/v1/responses", "/responses") and method == "POST":
            ex.route = "/v1/responses"
            await self._create(ex, gateway, keys, caller)
        elif match is not None:
            await self._resource(ex, gateway, caller, method, match.group(1), match.group(2))
        elif path in ("/v1/files", "/files", "/v1/batches", "/batches") or (
            _OBJECT_PATH.fullmatch(path) is not None
        ):
            await self._objects(ex, gateway, keys, caller, method, path)
        elif path in ("/v1/models", "/models") and method == "GET":
            ex.route = "/v1/models"
            await ex.json(200, _models(gateway, caller))
        elif path == "/key/generate" and method == "POST":
            ex.route = path
            await ex.json(200, await keys.generate(caller, await _json_body(ex, self._body)))
        elif path == "/key/info" and method == "GET":
            ex.route = path
            key = _str(ex.query(), "key")
            await ex.json(200, await keys.info(caller, key))
        elif path == "/key/delete" and method == "POST":
            ex.route = path
            await ex.json(200, await keys.delete(caller, await _json_body(ex, self._body)))
        else:
            raise NotFoundError(f"Invalid URL ({method} {path})", code="unknown_url")

    async def _readiness(self, ex: _Exchange, gateway: Gateway) -> None:
        try:
            await gateway.store.get("resp_readiness_probe")
        except SluicegateError as exc:
            await ex.json(503, {"status": "unhealthy", "store": exc.message})
            return
        await ex.json(200, {"status": "healthy", "store": "connected"})

    # -- files and batches (issue 8) -------------------------------------------------------

    async def _objects(
        self,
        ex: _Exchange,
        gateway: Gateway,
        keys: KeyManager,
        caller: Caller,
        method: str,
        path: str,
    ) -> None:
        owner, admin = caller.owner, caller.admin
        query = ex.query()
        kind = "files" if "/files" in path else "batches"
        match = _OBJECT_PATH.fullmatch(path)
        if match is None and kind == "files" and method == "POST":
            ex.route = "/v1/files"
            await self._upload(ex, gateway, keys, caller)
        elif match is None and kind == "files" and method == "GET":
            ex.route = "/v1/files"
            page = await gateway.list_files(
                purpose=_str(query, "purpose"),
                limit=_int(query, "limit", 10000, low=1, high=10000),
                after=_str(query, "after"),
                order=_str(query, "order") or "desc",
                owner=owner,
                admin=admin,
            )
            await ex.json(200, page)
        elif match is None and kind == "batches" and method == "POST":
            ex.route = "/v1/batches"
            body = await _json_body(ex, self._body)
            model = body.pop("model", None) or _model_hint(ex)
            admission = await keys.admit(caller, model) if isinstance(model, str) else None
            try:
                batch = await gateway.create_batch(
                    **_batch_params(body),
                    model=model,
                    owner=owner,
                    admin=admin,
                    spend_logs_metadata=_spend_of(ex),
                )
            finally:
                if admission is not None:
                    admission.release()
            await ex.json(200, batch)
        elif match is None and kind == "batches" and method == "GET":
            ex.route = "/v1/batches"
            page = await gateway.list_batches(
                limit=_int(query, "limit", 20, low=1, high=10000),
                after=_str(query, "after"),
                owner=owner,
                admin=admin,
            )
            await ex.json(200, page)
        elif match is not None and kind == "files":
            object_id, action = match.group(2), match.group(3)
            if action is None and method == "GET":
                ex.route = "/v1/files/{id}"
                await ex.json(200, await gateway.retrieve_file(object_id, owner=owner, admin=admin))
            elif action is None and method == "DELETE":
                ex.route = "/v1/files/{id}"
                await ex.json(200, await gateway.delete_file(object_id, owner=owner, admin=admin))
            elif action == "/content" and method == "GET":
                ex.route = "/v1/files/{id}/content"
                async with gateway.open_file_content(object_id, owner=owner, admin=admin) as chunks:
                    await ex.start(200, [(b"content-type", b"application/octet-stream")])
                    async for chunk in chunks:
                        await ex.send(
                            {"type": "http.response.body", "body": chunk, "more_body": True}
                        )
                    await ex.send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                raise _method_not_allowed(method, path)
        elif match is not None and kind == "batches":
            object_id, action = match.group(2), match.group(3)
            if action is None and method == "GET":
                ex.route = "/v1/batches/{id}"
                await ex.json(
                    200, await gateway.retrieve_batch(object_id, owner=owner, admin=admin)
                )
            elif action == "/cancel" and method == "POST":
                ex.route = "/v1/batches/{id}/cancel"
                await ex.json(200, await gateway.cancel_batch(object_id, owner=owner, admin=admin))
            else:
                raise _method_not_allowed(method, path)
        else:
            raise _method_not_allowed(method, path)

    async def _upload(
        self, ex: _Exchange, gateway: Gateway, keys: KeyManager, caller: Caller
    ) -> None:
        """``POST /v1/files``: the form's fields are read up to the file part; the file part
        streams upstream as it arrives (never whole in memory). A form sent with a
        ``Content-Encoding`` is refused (415), not inflated: the file streams up to
        ``max_file_bytes``, and the JSON bodies' decoder returns a chunk's whole inflation at
        once, which only their far smaller limit keeps bounded."""
        _refuse_encoded_upload(ex)
        content_type = ex.header(b"content-type") or ""
        try:
            parser = MultipartParser(boundary_of(content_type))
        except MultipartError as exc:
            raise InvalidRequestError(
                f"The body must be multipart/form-data with a 'file' part ({exc}).", param="file"
            ) from None
        # Closed on every way out: a refused upload leaves its body unread.
        pause = self._config.general_settings.request_body_timeout
        async with aclosing(_form_events(ex, parser, pause)) as events:
            await self._upload_form(ex, gateway, keys, caller, events)

    async def _upload_form(
        self,
        ex: _Exchange,
        gateway: Gateway,
        keys: KeyManager,
        caller: Caller,
        events: AsyncIterator[PartStart | PartData | PartEnd],
    ) -> None:
        fields: dict[str, str] = {}
        name: str | None = None
        value: list[bytes] = []
        size = 0
        file_start: PartStart | None = None
        async for event in events:
            if isinstance(event, PartStart):
                if event.filename is not None or event.name == "file":
                    file_start = event
                    break
                name, value, size = event.name, [], 0
            elif isinstance(event, PartData):
                size += len(event.data)
                if size > _MAX_FORM_FIELD:
                    raise InvalidRequestError(
                        f"The form field '{name}' is longer than {_MAX_FORM_FIELD} bytes.",
                        param=name,
                    )
                value.append(event.data)
            elif name is not None:
                fields[name] = b"".join(value).decode("utf-8", "replace")
                name = None
        if file_start is None:
            raise InvalidRequestError(
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        model = fields.get("model") or _model_hint(ex)
        spend = _spend_of(ex)
        if spend is None and "litellm_metadata" in fields:
            spend = _form_json(fields["litellm_metadata"], "litellm_metadata").get(
                "spend_logs_metadata"
            )
        expires_after = None
        if "expires_after[anchor]" in fields or "expires_after[seconds]" in fields:
            expires_after = {
                "anchor": fields.get("expires_after[anchor]"),
                "seconds": fields.get("expires_after[seconds]"),
            }
        admission = await keys.admit(caller, model) if model else None
        try:
            async with aclosing(_file_data(events)) as data:
                created = await gateway.create_file(
                    file=(file_start.filename or "upload", data, file_start.content_type),
                    purpose=fields.get("purpose"),
                    model=model,
                    expires_after=expires_after,
                    owner=caller.owner,
                    spend_logs_metadata=spend,
                )
        except SluicegateError:
            if ex.body_error is not None:
                raise ex.body_error from None
            raise
        finally:
            if admission is not None:
                admission.release()
        await ex.json(200, created)

    # -- POST /v1/responses --------------------------------------------------------------

    async def _create(
        self, ex: _Exchange, gateway: Gateway, keys: KeyManager, caller: Caller
    ) -> None:
        body = await _json_body(ex, self._body)
        for name in body:
            if name in FORBIDDEN_BODY_FIELDS:
                raise forbidden_field(name)
            if name in PROXY_REFUSED_OPTIONS:
                raise InvalidRequestError(
                    f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
                )
        model = body.get("model")
        if not isinstance(model, str):
            raise InvalidRequestError(
                "Missing required parameter: 'model'.",
                param="model",
                code="missing_required_parameter",
            )
        params: dict[str, Any] = {**body, "owner": caller.owner, "timing": ex.timing}
        spend = _spend_of(ex)
        if spend is not None:
            params["spend_logs_metadata"] = spend
        forwarded = _client_headers(ex, self._config.general_settings.forward_client_headers)
        if forwarded:
            params["client_headers"] = forwarded
        session = ex.header(SESSION_HEADER.encode())
        if session:
            params["session"] = session
        admission = await keys.admit(caller, model)
        # A background response holds its key's parallel slot until it ends, not until its
        # answer is sent: once started, the gateway releases the slot (``on_end``).
        handed_over = False
        if body.get("background"):
            params["on_end"] = admission.release
        try:
            if body.get("stream") is True and not body.get("background"):
                await self._stream(ex, gateway, params, admission)
            elif body.get("stream") is True:
                # Background + stream: the response runs on whatever the client does.
                async with gateway.stream(**params) as events:
                    handed_over = True
                    await self._sse(ex, events, model, admission)
            else:
                response = await _until_disconnect(
                    ex, gateway.responses(**params), cancel=not body.get("background")
                )
                handed_over = bool(body.get("background"))
                self._account(model, response, admission)
                wire = response.to_dict()
                await ex.json(200, wire, _dropped_header_of(wire))
        finally:
            # Not started (or, streamed, failed before its first event: ended already, and a
            # second release does nothing).
            if not handed_over:
                admission.release()

    async def _stream(
        self, ex: _Exchange, gateway: Gateway, params: dict[str, Any], admission: Admission
    ) -> None:
        finished = False
        events: ResponseStream | None = None
        with trio.CancelScope() as scope:
            try:
                async with open_body_nursery() as nursery:
                    # A client that hangs up cancels the response (the pipeline records it
                    # cancelled, its partial usage billed); hypercorn says so by
                    # ``http.disconnect``. Cancelled from outside instead, while the client is
                    # still there, is the server's graceful deadline passing: the response
                    # ends failed, and the client is told so before the connection closes.
                    nursery.start_soon(_watch_disconnect, ex, scope)
                    interrupted = partial(_shutdown_unless_cancelled, scope)
                    async with gateway.open_stream(params, interrupted=interrupted) as events:
                        await self._sse(ex, events, str(params["model"]), admission)
                    finished = True
            except* trio.Cancelled:  # bare, or grouped by the nurseries it came through
                if not scope.cancel_called:
                    await _end_interrupted(ex, events)
                raise
        if not finished:
            raise _ClientGone

    async def _sse(
        self,
        ex: _Exchange,
        events: ResponseStream,
        model: str,
        admission: Admission | None,
    ) -> None:
        iterator = aiter(events)
        # The stream is primed (its first event is in hand), so this does not wait; it names
        # any dropped parameters, which go in the headers.
        pending: StreamEvent | None = await anext(iterator, None)
        await ex.start(200, [*_SSE, *_dropped_header(pending)])
        interval = self._config.general_settings.sse_keepalive_interval
        first_output: float | None = None
        while True:
            event: StreamEvent | None = pending
            pending = None
            with trio.move_on_after(interval):
                try:
                    if event is None:
                        event = await anext(iterator)
                except StopAsyncIteration:
                    break
                except SluicegateError as exc:
                    # Broken after the headers went out: a typed ``error`` event ends it.
                    frame = encode_event(orjson.dumps(_error_event(exc)), event="error")
                    await ex.send({"type": "http.response.body", "body": frame, "more_body": True})
                    break
            if event is None:
                await ex.send(
                    {"type": "http.response.body", "body": encode_comment(), "more_body": True}
                )
                continue
            # The rest of the batch this event came with goes out in the same write: hypercorn
            # pays per send, and a network read upstream often carries several events.
            batch = [event, *events.ready_nowait()]
            if first_output is None and any(
                isinstance(e, DeltaEvent | OutputItemEvent) for e in batch
            ):
                first_output = trio.current_time() - ex.started
                self.metrics.observe(
                    "sluicegate_time_to_first_token_seconds", (("model", model),), first_output
                )
            frames = b"".join(encode_event(orjson.dumps(e.to_dict()), event=e.type) for e in batch)
            ex.unsent = frames
            await ex.send({"type": "http.response.body", "body": frames, "more_body": True})
            ex.unsent = b""
        await ex.send({"type": "http.response.body", "body": b"", "more_body": False})
        final = events.final_response
        if final is not None and admission is not None:
            self._account(model, final, admission)

    def _account(self, model: str, response: Response, admission: Admission) -> None:
        usage = response.usage
        if usage is None:
            return
        admission.record_tokens(usage.input_tokens + usage.output_tokens)
        labels: Labels = (("model", model),)
        self.metrics.count(
            "sluicegate_tokens_total", (*labels, ("kind", "input")), usage.input_tokens
        )
        self.metrics.count(
            "sluicegate_tokens_total", (*labels, ("kind", "output")), usage.output_tokens
        )
        if usage.cost is not None:
            self.metrics.count("sluicegate_cost_usd_total", labels, usage.cost)

    # -- /v1/responses/{id}[/cancel|/input_items] ---------------------------------------

    async def _resource(
        self,
        ex: _Exchange,
        gateway: Gateway,
        caller: Caller,
        method: str,
        response_id: str,
        action: str | None,
    ) -> None:
        owner, admin = caller.owner, caller.admin
        query = ex.query()
        if action is None and method == "GET":
            ex.route = "/v1/responses/{id}"
            if _flag(query, "stream"):
                after = _int(query, "starting_after", None)
                stream = await gateway.get_response(
                    response_id, stream=True, starting_after=after, owner=owner, admin=admin
                )
                await self._sse(ex, stream, "", None)
                return
            include = query.get("include[]") or query.get("include")
            response = await gateway.get_response(
                response_id, include=include, owner=owner, admin=admin
            )
            await ex.json(200, response.to_dict())
        elif action is None and method == "DELETE":
            ex.route = "/v1/responses/{id}"
            await ex.json(200, await gateway.delete_response(response_id, owner=owner, admin=admin))
        elif action == "/cancel" and method == "POST":
            ex.route = "/v1/responses/{id}/cancel"
            await ex.json(
                200,
                (await gateway.cancel_response(response_id, owner=owner, admin=admin)).to_dict(),
            )
        elif action == "/input_items" and method == "GET":
            ex.route = "/v1/responses/{id}/input_items"
            page = await gateway.list_input_items(
                response_id,
                after=_str(query, "after"),
                before=_str(query, "before"),
                limit=_int(query, "limit", 20, low=1, high=100),
                order=_str(query, "order") or "desc",
                owner=owner,
                admin=admin,
            )
            await ex.json(200, page)
        else:
            raise NotFoundError(f"Invalid URL ({method} {ex.scope['path']})", code="unknown_url")


# -- helpers ---------------------------------------------------------------------------------


def _error_event(exc: SluicegateError) -> dict[str, Any]:
    """The streaming ``error`` event (responses-streaming.md): code, message, param."""
    return {
        "type": "error",
        "code": exc.code,
        "message": exc.message,
        "param": exc.param,
        "sequence_number": 0,
    }


def _new_request_id() -> bytes:
    return f"req_{secrets.token_hex(16)}".encode()


def _unavailable() -> SluicegateError:
    return SluicegateError(
        "The server is starting or shutting down.", status_code=503, code="unavailable"
    )


#: Lists the request parameters a bridged provider could not take and ``drop_params`` dropped.
_BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

#: Per-deployment gauges from the router's statistics: (name, help, value of a snapshot).
_DEPLOYMENT_GAUGES: tuple[tuple[str, str, Callable[[DeploymentStatistics], float]], ...] = (
    (
        "sluicegate_deployment_state",
        "Circuit breaker of each deployment: 0 closed, 1 half-open, 2 open.",
        lambda d: float(_BREAKER_VALUES[d.state]),
    ),
    (
        "sluicegate_deployment_cooldown_remaining_seconds",
        "Seconds until an open deployment lets a probe request through.",
        lambda d: d.cooldown_remaining,
    ),
    (
        "sluicegate_deployment_in_flight",
        "Upstream requests in flight, by deployment.",
        lambda d: float(d.in_flight),
    ),
    (
        "sluicegate_deployment_failures",
        "Failed upstream attempts since start, by deployment.",
        lambda d: float(d.failures),
    ),
    (
        "sluicegate_deployment_latency_seconds",
        "Averaged total time of the deployment's answers (0 before the first).",
        lambda d: d.latency or 0.0,
    ),
    (
        "sluicegate_deployment_rpm_used",
        "Requests sent to the deployment in the last minute.",
        lambda d: float(d.rpm_used),
    ),
    (
        "sluicegate_deployment_tpm_used",
        "Tokens used by the deployment in the last minute.",
        lambda d: float(d.tpm_used),
    ),
)


def _per_deployment(
    gateway: Gateway, read: Callable[[DeploymentStatistics], float]
) -> list[tuple[Labels, float]]:
    return [
        ((("deployment", d.id), ("model_group", d.model_name)), read(d))
        for d in gateway.statistics().deployments
    ]


_OBJECT_PATH = re.compile(r"/(?:v1/)?(files|batches)/([^/]+)(/content|/cancel)?/?")
#: The largest non-file field of an upload form.
_MAX_FORM_FIELD = 64 * 1024
_BATCH_FIELDS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)


def _method_not_allowed(method: str, path: str) -> NotFoundError:
    return NotFoundError(f"Invalid URL ({method} {path})", code="unknown_url")


#: Our spend metadata header, then LiteLLM's name for it (so its users' clients work
#: unchanged): when a client sends both, ours wins. The same goes for the model headers.
_SPEND_HEADERS = (b"x-sluicegate-spend-logs-metadata", b"x-litellm-spend-logs-metadata")


def _model_hint(ex: _Exchange) -> str | None:
    """The model group named outside the body: ``?model=``, else the ``x-sluicegate-model``
    header, else LiteLLM's ``x-litellm-model``."""
    return (
        _str(ex.query(), "model")
        or ex.header(b"x-sluicegate-model")
        or ex.header(b"x-litellm-model")
    )


def _spend_of(ex: _Exchange) -> dict[str, Any] | None:
    """The ``x-sluicegate-spend-logs-metadata`` header (else LiteLLM's
    ``x-litellm-spend-logs-metadata``) as an object; None when neither is sent."""
    for name in _SPEND_HEADERS:
        header = ex.header(name)
        if header is not None:
            return _spend_header(header, name.decode())
    return None


def _client_headers(ex: _Exchange, names: tuple[str, ...]) -> dict[str, str]:
    """The request's headers that ``forward_client_headers`` lets through to a native upstream
    (repeated ones joined with ``", "``, RFC 9110 §5.3)."""
    allowed = _forwardable(names)
    forwarded: dict[str, str] = {}
    for key, value in ex.scope.get("headers", ()):
        if key not in allowed:
            continue
        name: str = key.decode("latin-1")
        if not value.isascii():
            raise InvalidRequestError(
                f"The header '{name}' must be ASCII to be forwarded upstream.", param=name
            )
        text: str = value.decode("ascii")
        forwarded[name] = f"{forwarded[name]}, {text}" if name in forwarded else text
    return forwarded


@lru_cache(maxsize=8)
def _forwardable(names: tuple[str, ...]) -> frozenset[bytes]:
    # load_config refuses what may never be forwarded; a GatewayConfig built in code skips
    # it, so the refusal is applied here again.
    lowered = (n.lower() for n in names)
    return frozenset(n.encode("latin-1") for n in lowered if forward_refusal(n) is None)


def _batch_params(body: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in body.items():
        if name == "litellm_metadata":
            params["litellm_metadata"] = value
        elif name in _BATCH_FIELDS:
            params[name] = value
        else:
            raise InvalidRequestError(
                f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )
    return params


def _form_json(text: str, name: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"The form field '{name}' must be a JSON object.", param=name)
    return value


async def _form_events(
    ex: _Exchange, parser: MultipartParser, pause: float
) -> AsyncGenerator[PartStart | PartData | PartEnd, None]:
    """The multipart events of the request body, read as the client sends it; a pause longer
    than ``pause`` seconds between two pieces is a 408 (an upload may take long, but not
    stall)."""
    while True:
        message: Message | None = None
        with trio.move_on_after(pause):
            message = await ex.receive()
        if message is None:
            ex.body_error = _too_slow(pause)
            raise ex.body_error
        if message["type"] == "http.disconnect":
            raise _ClientGone
        try:
            for event in parser.feed(message.get("body", b"")):
                yield event
            if not message.get("more_body"):
                for event in parser.close():
                    yield event
                return
        except MultipartError as exc:
            raise InvalidRequestError(f"Malformed multipart body: {exc}", param="file") from None


async def _file_data(
    events: AsyncIterator[PartStart | PartData | PartEnd],
) -> AsyncGenerator[bytes, None]:
    """The file part's bytes, then the rest of the form read (and ignored) to its end."""
    async for event in events:
        if isinstance(event, PartData):
            yield event.data
        elif isinstance(event, PartEnd):
            break
    async for _ in events:
        pass


DROPPED_PARAMS_HEADER = b"x-sluicegate-dropped-params"


def _dropped_header_of(response: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    ours = response.get("sluicegate")
    dropped = ours.get("dropped_params") if isinstance(ours, dict) else None
    if not dropped:
        return []
    return [(DROPPED_PARAMS_HEADER, ",".join(map(str, dropped)).encode())]


def _dropped_header(event: StreamEvent | None) -> list[tuple[bytes, bytes]]:
    if not isinstance(event, ResponseEvent):
        return []
    return _dropped_header_of(event.response_data)


def _refuse_upstream_headers(ex: _Exchange) -> None:
    for key, _ in ex.scope.get("headers", ()):
        if key in FORBIDDEN_HEADERS:
            name = key.decode("latin-1")
            raise InvalidRequestError(
                f"The header '{name}' cannot be set by a client: the gateway chooses the upstream.",
                param=name,
                code="forbidden_parameter",
            )


@attrs.frozen
class _BodyLimits:
    """What a request body may cost: bytes, seconds to arrive, and readers at once."""

    size: int
    seconds: float
    readers: trio.CapacityLimiter


async def _json_body(ex: _Exchange, limits: _BodyLimits) -> dict[str, Any]:
    """The request's JSON object, read to its end and decoded from its ``Content-Encoding``
    as it arrives: the body on the wire and the decoded one are each held to ``limits.size``,
    the whole body must arrive within ``limits.seconds`` (a 408: a client that trickles its
    body holds nothing longer), and at most ``limits.readers`` bodies are read at once (a
    503 beyond)."""
    limit = limits.size
    codings = parse_content_encoding(ex.header(b"content-encoding"))
    decoder = ContentDecoder(codings, limit=limit) if codings else None
    declared = ex.header(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    try:
        limits.readers.acquire_nowait()
    except trio.WouldBlock:
        raise ServiceUnavailableError(
            "Too many requests are sending their bodies at once; try again shortly.",
            headers={"Retry-After": "1"},
        ) from None
    try:
        with trio.move_on_after(limits.seconds) as deadline:
            while True:
                message = await ex.receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                parts.append(chunk if decoder is None else decoder.feed(chunk))
                if not message.get("more_body"):
                    break
    finally:
        limits.readers.release()
    if deadline.cancelled_caught:
        raise _too_slow(limits.seconds)
    if decoder is not None:
        parts.append(decoder.close())
    try:
        body = orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_type")
    return body


def _refuse_encoded_upload(ex: _Exchange) -> None:
    codings = parse_content_encoding(ex.header(b"content-encoding"))
    if codings:
        raise UnsupportedMediaTypeError(
            f"File uploads cannot be sent with Content-Encoding {', '.join(codings)}: send the "
            "form uncompressed.",
            param="content-encoding",
            code="unsupported_content_encoding",
        )


def _too_slow(seconds: float) -> RequestTimeoutError:
    return RequestTimeoutError(
        f"The request body did not arrive within {seconds:g} s "
        "(general_settings.request_body_timeout)."
    )


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"The request body is larger than {limit} bytes (general_settings.max_request_body_bytes)."
    )


def _spend_header(value: str, name: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"The header '{name}' must be a JSON object.", param=name
        ) from exc
    if not isinstance(parsed, dict):
        raise InvalidRequestError(f"The header '{name}' must be a JSON object.", param=name)
    return parsed


#: The longest a stream ended at a shutdown may take to send its end (seconds).
INTERRUPTED_WRITE_GRACE = 5.0


def _shutdown_error() -> SluicegateError:
    return ServiceUnavailableError("The gateway shut down before this response finished.")


def _shutdown_unless_cancelled(scope: trio.CancelScope) -> SluicegateError | None:
    """How a stream cancelled from outside ends (``Gateway.open_stream``'s ``interrupted``):
    the client hung up (its disconnect cancelled ``scope``), or the server is shutting down."""
    return None if scope.cancel_called else _shutdown_error()


async def _end_interrupted(ex: _Exchange, events: ResponseStream | None) -> None:
    """A stream cut by the server's graceful deadline (hypercorn cancels what is still
    running) while its client is still there: the client gets what was on its way and the
    typed end the store recorded (open items closed, ``response.failed``: the gateway shut
    down) before the connection closes; a client that got no headers yet, a 503 saying so.
    Shielded, for at most ``INTERRUPTED_WRITE_GRACE`` seconds."""
    with trio.CancelScope(shield=True) as cleanup:
        cleanup.deadline = trio.current_time() + INTERRUPTED_WRITE_GRACE
        if not ex.headers_sent:
            await ex.error(_shutdown_error())
            return
        batch = [] if events is None else [*events.ready_nowait(), *events.closing]
        frames = ex.unsent + b"".join(
            encode_event(orjson.dumps(e.to_dict()), event=e.type) for e in batch
        )
        ex.unsent = b""
        await ex.send({"type": "http.response.body", "body": frames, "more_body": True})
        await ex.send({"type": "http.response.body", "body": b"", "more_body": False})


async def _watch_disconnect(ex: _Exchange, scope: trio.CancelScope) -> None:
    while True:
        message = await ex.receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _until_disconnect(ex: _Exchange, work: Awaitable[Response], *, cancel: bool) -> Response:
    """Await ``work``; a client that hangs up first cancels it (unless ``cancel`` is False: a
    background creation returns at once anyway)."""
    result: Response | None = None
    with trio.CancelScope() as scope:
        async with open_body_nursery() as nursery:
            if cancel:
                nursery.start_soon(_watch_disconnect, ex, scope)
            result = await work
    if result is None:
        raise _ClientGone
    return result


def _models(gateway: Gateway, caller: Caller) -> dict[str, Any]:
    allowed = None if caller.admin or caller.key is None else caller.key.models
    names = [n for n in gateway.model_names if allowed is None or n in allowed]
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "sluicegate"} for n in names
        ],
    }


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    value = (query.get(name) or ["false"])[-1].lower()
    return value in ("true", "1")


def _str(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


_Default = TypeVar("_Default", int, None)

#: A query integer: decimal digits, perhaps negative (``int()`` would also take ``+1``,
#: `` 1 ``, ``1_000`` and other scripts' digits).
_INTEGER = re.compile(r"-?[0-9]+")


def _int(
    query: Mapping[str, list[str]],
    name: str,
    default: _Default,
    *,
    low: int = 0,
    high: int = MAX_SAFE_INTEGER,
) -> int | _Default:
    """The query parameter ``name`` by the library's rule for integers (``checked_int``: from
    ``low`` to ``high``), or ``default`` when it is absent.

    Raises:
        InvalidRequestError: naming ``name``: not an integer, or out of range.
    """
    text = _str(query, name)
    if text is None:
        return default
    if _INTEGER.fullmatch(text) is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidRequestError(
            f"Invalid '{name}': expected an integer, but got {shown!r} instead.",
            param=name,
            code="invalid_type",
        )
    try:
        value = int(text)
    except ValueError:
        # More digits than int() converts (4300): out of range like any number that long.
        digits = len(text.removeprefix("-"))
        value = -(10**digits) if text.startswith("-") else 10**digits
    return checked_int(name, value, low=low, high=high)
