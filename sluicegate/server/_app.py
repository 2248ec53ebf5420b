"""The proxy's ASGI application: the OpenAI Responses API over HTTP, on the library's gateway.

Theory of operation. :class:`ProxyApp` is a plain ASGI callable (no framework: a dozen routes,
and streaming, disconnects and backpressure need the raw ``send``/``receive`` anyway; Starlette
measured 8.8 µs per request of routing and request objects against 1.2 µs for this dispatch).
Its routes are one table (``_ROUTES``, at the end): method and path to a handler, each with the
route label its metrics carry.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from functools import partial
from typing import Any, TypeAlias

import attrs
import orjson
import trio

from .._gateway import (
    FORBIDDEN_BODY_FIELDS,
    SESSION_HEADER,
    Gateway,
    ResponseStream,
    forbidden_field,
    open_body_nursery,
)
from .._types import DeltaEvent, OutputItemEvent, Response, ResponseEvent, StreamEvent
from ..codecs.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
)
from ..codecs.sse import encode_comment, encode_event
from ..config import GatewayConfig
from ..errors import (
    ConfigError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
    SluicegateError,
)
from ._exchange import (
    BodyLimits,
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    client_headers,
    file_data,
    form_events,
    form_fields,
    json_body,
    model_hint,
    query_flag,
    query_int,
    query_str,
    refuse_encoded_upload,
    refuse_upstream_headers,
    request_id_of,
    spend_of,
    until_disconnect,
    watch_disconnect,
)
from ._gauges import gauge_gateway
from ._keys import Admission, Caller, KeyManager
from ._metrics import Labels, Metrics, meter_shared_limits
from ._routes import ANY_METHOD, Route, RouteTable
from ._websocket_mode import serve_websocket

__all__ = ["FORBIDDEN_BODY_FIELDS", "ProxyApp"]

logger = logging.getLogger("sluicegate")

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
        "upstream_sockets",
    }
)

_SSE = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


@attrs.frozen
class _Request:
    """A routed request: its path's parameters, and (as its route's access allows) the gateway,
    the key manager and the authenticated caller."""

    params: tuple[str, ...] = ()
    _gateway: Gateway | None = None
    _keys: KeyManager | None = None
    _caller: Caller | None = None

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "a route served without the gateway"
        return self._gateway

    @property
    def keys(self) -> KeyManager:
        assert self._keys is not None, "a route served without the key manager"
        return self._keys

    @property
    def caller(self) -> Caller:
        assert self._caller is not None, "a route served without a key"
        return self._caller


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
    def _body(self) -> BodyLimits:
        gs = self._config.general_settings
        return BodyLimits(gs.max_request_body_bytes, gs.request_body_timeout, self._body_readers)

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def gateway(self) -> Gateway | None:
        """The gateway while the app is serving (between lifespan startup and shutdown)."""
        return self._gateway

    @property
    def key_manager(self) -> KeyManager | None:
        """The virtual keys' manager while the app is serving."""
        return self._keys

    @property
    def body_limits(self) -> BodyLimits:
        """What a request body (or a WebSocket message) may cost."""
        return self._body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await serve_websocket(self, scope, receive, send)

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
            limiter=gateway.limits.keys,
        )
        meter_shared_limits(self.metrics, gateway.limits)
        self._gateway = gateway
        gauge_gateway(self.metrics, gateway, lambda: self._in_flight)

    # -- HTTP ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope)
        ex = Exchange(scope, receive, send, request_id, trio.current_time())
        self._in_flight += 1
        try:
            await self._dispatch(ex)
        except ClientGone:
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

    async def _dispatch(self, ex: Exchange) -> None:
        """Find the request's route and call its handler once its caller may: a route open to
        all ``"always"``; an ``"open"`` one once the gateway serves (else a 503); any other
        once the caller is authenticated (a request for no route too: then a 404)."""
        method: str = ex.scope["method"]
        path: str = ex.scope["path"]
        found = _ROUTES.find(method, path)
        route, params = found if found is not None else (None, ())
        if route is not None and route.access == "always":
            ex.route = route.label
            await route.handler(self, ex, _Request(params))
            return
        gateway, keys = self._gateway, self._keys
        if gateway is None or keys is None:
            raise _unavailable()
        if route is not None and route.access == "open":
            ex.route = route.label
            await route.handler(self, ex, _Request(params, gateway, keys))
            return
        refuse_upstream_headers(ex)
        caller = await keys.authenticate(ex.header(b"authorization"), ex.header(b"api-key"))
        if route is None:
            raise NotFoundError(f"Invalid URL ({method} {path})", code="unknown_url")
        ex.route = route.label
        await route.handler(self, ex, _Request(params, gateway, keys, caller))

    # -- health, metrics, models and keys --------------------------------------------------

    async def _liveness(self, ex: Exchange, req: _Request) -> None:
        await ex.json(200, {"status": "healthy"})

    async def _readiness(self, ex: Exchange, req: _Request) -> None:
        try:
            await req.gateway.store.get("resp_readiness_probe")
        except SluicegateError as exc:
            await ex.json(503, {"status": "unhealthy", "store": exc.message})
            return
        await ex.json(200, {"status": "healthy", "store": "connected"})

    async def _metrics(self, ex: Exchange, req: _Request) -> None:
        await ex.start(200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")])
        await ex.send({"type": "http.response.body", "body": self.metrics.render()})

    async def _models(self, ex: Exchange, req: _Request) -> None:
        caller = req.caller
        allowed = None if caller.admin or caller.key is None else caller.key.models
        names = [n for n in req.gateway.model_names if allowed is None or n in allowed]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "sluicegate"} for n in names]
        await ex.json(200, {"object": "list", "data": data})

    async def _generate_key(self, ex: Exchange, req: _Request) -> None:
        await ex.json(200, await req.keys.generate(req.caller, await json_body(ex, self._body)))

    async def _key_info(self, ex: Exchange, req: _Request) -> None:
        await ex.json(200, await req.keys.info(req.caller, query_str(ex.query(), "key")))

    async def _delete_key(self, ex: Exchange, req: _Request) -> None:
        await ex.json(200, await req.keys.delete(req.caller, await json_body(ex, self._body)))

    # -- POST /v1/responses --------------------------------------------------------------

    async def _create(self, ex: Exchange, req: _Request) -> None:
        gateway, keys, caller = req.gateway, req.keys, req.caller
        body = await json_body(ex, self._body)
        model, params = self.create_params(ex, caller, body)
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
                response = await until_disconnect(
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

    def create_params(
        self, ex: Exchange, caller: Caller, body: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """A creation's model group and the gateway's parameters for it, from the client's
        body (refused: what chooses the upstream, the library's own options) and the request's
        headers (spend metadata, forwarded headers, session); the owner is the caller's. Shared
        by ``POST /v1/responses`` and WebSocket mode's ``response.create``.

        Raises:
            InvalidRequestError: a refused field, or no ``model``.
        """
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
        spend = spend_of(ex)
        if spend is not None:
            params["spend_logs_metadata"] = spend
        forwarded = client_headers(ex, self._config.general_settings.forward_client_headers)
        if forwarded:
            params["client_headers"] = forwarded
        session = ex.header(SESSION_HEADER.encode())
        if session:
            params["session"] = session
        return model, params

    async def _stream(
        self, ex: Exchange, gateway: Gateway, params: dict[str, Any], admission: Admission
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
                    nursery.start_soon(watch_disconnect, ex, scope)
                    interrupted = partial(_shutdown_unless_cancelled, scope)
                    async with gateway.open_stream(params, interrupted=interrupted) as events:
                        await self._sse(ex, events, str(params["model"]), admission)
                    finished = True
            except* trio.Cancelled:  # bare, or grouped by the nurseries it came through
                if not scope.cancel_called:
                    await _end_interrupted(ex, events)
                raise
        if not finished:
            raise ClientGone

    async def _sse(
        self,
        ex: Exchange,
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
            # An event the gateway did not change goes out as the upstream's own bytes; only
            # the ones it rewrote or made are encoded (docs/design.md §6.5).
            frames = b"".join(
                encode_event(orjson.dumps(e.to_dict()) if e.raw is None else e.raw, event=e.type)
                for e in batch
            )
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

    async def _get_response(self, ex: Exchange, req: _Request) -> None:
        (response_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        query = ex.query()
        if query_flag(query, "stream"):
            after = query_int(query, "starting_after", None)
            stream = await req.gateway.get_response(
                response_id, stream=True, starting_after=after, owner=owner, admin=admin
            )
            await self._sse(ex, stream, "", None)
            return
        include = query.get("include[]") or query.get("include")
        response = await req.gateway.get_response(
            response_id, include=include, owner=owner, admin=admin
        )
        await ex.json(200, response.to_dict())

    async def _delete_response(self, ex: Exchange, req: _Request) -> None:
        (response_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        await ex.json(200, await req.gateway.delete_response(response_id, owner=owner, admin=admin))

    async def _cancel_response(self, ex: Exchange, req: _Request) -> None:
        (response_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        response = await req.gateway.cancel_response(response_id, owner=owner, admin=admin)
        await ex.json(200, response.to_dict())

    async def _input_items(self, ex: Exchange, req: _Request) -> None:
        (response_id,) = req.params
        query = ex.query()
        page = await req.gateway.list_input_items(
            response_id,
            after=query_str(query, "after"),
            before=query_str(query, "before"),
            limit=query_int(query, "limit", 20, low=1, high=100),
            order=query_str(query, "order") or "desc",
            owner=req.caller.owner,
            admin=req.caller.admin,
        )
        await ex.json(200, page)

    # -- /v1/responses/compact (docs/compaction.md) --------------------------------------

    async def _compact(self, ex: Exchange, req: _Request) -> None:
        """A compaction: admitted like a create (its key's model, budget and limits), its
        tokens counted against the key; a client that hangs up cancels it."""
        caller = req.caller
        body = await json_body(ex, self._body)
        model, params = self.create_params(ex, caller, body)
        admission = await req.keys.admit(caller, model)
        try:
            result = await until_disconnect(ex, req.gateway.compact(**params))
            usage = result.get("usage")
            if isinstance(usage, dict):
                admission.record_tokens(
                    int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)
                )
            await ex.json(200, result)
        finally:
            admission.release()

    # -- /v1/responses/input_tokens (docs/input-tokens.md) -------------------------------

    async def _input_tokens(self, ex: Exchange, req: _Request) -> None:
        """An input token count: through the create's door and admitted like a request (its
        key's model, budget, rpm and parallel requests; released when answered), but it
        costs no tokens, so none are counted against the key; a client that hangs up
        cancels it."""
        caller = req.caller
        body = await json_body(ex, self._body)
        model, params = self.create_params(ex, caller, body)
        admission = await req.keys.admit(caller, model)
        try:
            await ex.json(200, await until_disconnect(ex, req.gateway.count_input_tokens(**params)))
        finally:
            admission.release()

    # -- files and batches ---------------------------------------------------------------

    async def _list_files(self, ex: Exchange, req: _Request) -> None:
        query = ex.query()
        page = await req.gateway.list_files(
            purpose=query_str(query, "purpose"),
            limit=query_int(query, "limit", 10000, low=1, high=10000),
            after=query_str(query, "after"),
            order=query_str(query, "order") or "desc",
            owner=req.caller.owner,
            admin=req.caller.admin,
        )
        await ex.json(200, page)

    async def _retrieve_file(self, ex: Exchange, req: _Request) -> None:
        (file_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        await ex.json(200, await req.gateway.retrieve_file(file_id, owner=owner, admin=admin))

    async def _delete_file(self, ex: Exchange, req: _Request) -> None:
        (file_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        await ex.json(200, await req.gateway.delete_file(file_id, owner=owner, admin=admin))

    async def _file_content(self, ex: Exchange, req: _Request) -> None:
        (file_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        async with req.gateway.open_file_content(file_id, owner=owner, admin=admin) as chunks:
            await ex.start(200, [(b"content-type", b"application/octet-stream")])
            async for chunk in chunks:
                await ex.send({"type": "http.response.body", "body": chunk, "more_body": True})
            await ex.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _create_batch(self, ex: Exchange, req: _Request) -> None:
        caller = req.caller
        body = await json_body(ex, self._body)
        model = body.pop("model", None) or model_hint(ex)
        admission = await req.keys.admit(caller, model) if isinstance(model, str) else None
        try:
            batch = await req.gateway.create_batch(
                **_batch_params(body),
                model=model,
                owner=caller.owner,
                admin=caller.admin,
                spend_logs_metadata=spend_of(ex),
            )
        finally:
            if admission is not None:
                admission.release()
        await ex.json(200, batch)

    async def _list_batches(self, ex: Exchange, req: _Request) -> None:
        query = ex.query()
        page = await req.gateway.list_batches(
            limit=query_int(query, "limit", 20, low=1, high=10000),
            after=query_str(query, "after"),
            owner=req.caller.owner,
            admin=req.caller.admin,
        )
        await ex.json(200, page)

    async def _retrieve_batch(self, ex: Exchange, req: _Request) -> None:
        (batch_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        await ex.json(200, await req.gateway.retrieve_batch(batch_id, owner=owner, admin=admin))

    async def _cancel_batch(self, ex: Exchange, req: _Request) -> None:
        (batch_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        await ex.json(200, await req.gateway.cancel_batch(batch_id, owner=owner, admin=admin))

    async def _upload(self, ex: Exchange, req: _Request) -> None:
        """``POST /v1/files``: the form's fields are read up to the file part; the file part
        streams upstream as it arrives (never whole in memory). A form sent with a
        ``Content-Encoding`` is refused (415), not inflated: the file streams up to
        ``max_file_bytes``, and the JSON bodies' decoder returns a chunk's whole inflation at
        once, which only their far smaller limit keeps bounded."""
        refuse_encoded_upload(ex)
        content_type = ex.header(b"content-type") or ""
        try:
            parser = MultipartParser(boundary_of(content_type))
        except MultipartError as exc:
            raise InvalidRequestError(
                f"The body must be multipart/form-data with a 'file' part ({exc}).", param="file"
            ) from None
        # Closed on every way out: a refused upload leaves its body unread.
        pause = self._config.general_settings.request_body_timeout
        async with aclosing(form_events(ex, parser, pause)) as events:
            await self._upload_form(ex, req, events)

    async def _upload_form(
        self, ex: Exchange, req: _Request, events: AsyncIterator[PartStart | PartData | PartEnd]
    ) -> None:
        gateway, keys, caller = req.gateway, req.keys, req.caller
        fields, file_start = await form_fields(events)
        model = fields.get("model") or model_hint(ex)
        spend = spend_of(ex)
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
            async with aclosing(file_data(events)) as data:
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

    # -- /v1/conversations (docs/conversations.md) --------------------------------------

    async def _create_conversation(self, ex: Exchange, req: _Request) -> None:
        caller = req.caller
        body = await json_body(ex, self._body)
        model = body.pop("model", None) or model_hint(ex)
        # Naming a group is using it: the key must be allowed it (a 403 otherwise).
        admission = await req.keys.admit(caller, model) if isinstance(model, str) else None
        try:
            conversation = await req.gateway.create_conversation(
                model=model, owner=caller.owner, extra_body=body
            )
        finally:
            if admission is not None:
                admission.release()
        await ex.json(200, conversation)

    async def _retrieve_conversation(self, ex: Exchange, req: _Request) -> None:
        (conversation_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        conversation = await req.gateway.retrieve_conversation(
            conversation_id, owner=owner, admin=admin
        )
        await ex.json(200, conversation)

    async def _update_conversation(self, ex: Exchange, req: _Request) -> None:
        (conversation_id,) = req.params
        body = await json_body(ex, self._body)
        metadata = body.pop("metadata", None)
        conversation = await req.gateway.update_conversation(
            conversation_id,
            metadata=metadata,
            owner=req.caller.owner,
            admin=req.caller.admin,
            extra_body=body,
        )
        await ex.json(200, conversation)

    async def _delete_conversation(self, ex: Exchange, req: _Request) -> None:
        (conversation_id,) = req.params
        owner, admin = req.caller.owner, req.caller.admin
        deleted = await req.gateway.delete_conversation(conversation_id, owner=owner, admin=admin)
        await ex.json(200, deleted)

    async def _list_conversation_items(self, ex: Exchange, req: _Request) -> None:
        (conversation_id,) = req.params
        query = ex.query()
        page = await req.gateway.list_conversation_items(
            conversation_id,
            after=query_str(query, "after"),
            limit=query_int(query, "limit", 20, low=1, high=100),
            order=query_str(query, "order") or "desc",
            include=query.get("include[]") or query.get("include"),
            owner=req.caller.owner,
            admin=req.caller.admin,
        )
        await ex.json(200, page)

    async def _create_conversation_items(self, ex: Exchange, req: _Request) -> None:
        (conversation_id,) = req.params
        query = ex.query()
        body = await json_body(ex, self._body)
        items = body.pop("items", None)
        page = await req.gateway.create_conversation_items(
            conversation_id,
            items=items,
            include=query.get("include[]") or query.get("include"),
            owner=req.caller.owner,
            admin=req.caller.admin,
            extra_body=body,
        )
        await ex.json(200, page)

    async def _retrieve_conversation_item(self, ex: Exchange, req: _Request) -> None:
        conversation_id, item_id = req.params
        query = ex.query()
        item = await req.gateway.retrieve_conversation_item(
            conversation_id,
            item_id,
            include=query.get("include[]") or query.get("include"),
            owner=req.caller.owner,
            admin=req.caller.admin,
        )
        await ex.json(200, item)

    async def _delete_conversation_item(self, ex: Exchange, req: _Request) -> None:
        conversation_id, item_id = req.params
        owner, admin = req.caller.owner, req.caller.admin
        conversation = await req.gateway.delete_conversation_item(
            conversation_id, item_id, owner=owner, admin=admin
        )
        await ex.json(200, conversation)


# -- helpers ---------------------------------------------------------------------------------


def _unavailable() -> SluicegateError:
    return SluicegateError(
        "The server is starting or shutting down.", status_code=503, code="unavailable"
    )


def _error_event(exc: SluicegateError) -> dict[str, Any]:
    """The streaming ``error`` event (the Responses streaming reference): code, message, param."""
    return {
        "type": "error",
        "code": exc.code,
        "message": exc.message,
        "param": exc.param,
        "sequence_number": 0,
    }


_BATCH_FIELDS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)


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


#: Lists the request parameters a bridged provider could not take and ``drop_params`` dropped.
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


#: The longest a stream ended at a shutdown may take to send its end (seconds).
INTERRUPTED_WRITE_GRACE = 5.0


def _shutdown_error() -> SluicegateError:
    return ServiceUnavailableError(
        "The gateway shut down before this response finished.", code="server_shutting_down"
    )


def _shutdown_unless_cancelled(scope: trio.CancelScope) -> SluicegateError | None:
    """How a stream cancelled from outside ends (``Gateway.open_stream``'s ``interrupted``):
    the client hung up (its disconnect cancelled ``scope``), or the server is shutting down."""
    return None if scope.cancel_called else _shutdown_error()


async def _end_interrupted(ex: Exchange, events: ResponseStream | None) -> None:
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


_Handler: TypeAlias = Callable[[ProxyApp, Exchange, _Request], Awaitable[None]]

#: Every route of the proxy. The first path of each is its label in the metrics. A path the
#: table does not have, or a method its routes do not take, is a 404 (``unknown_url``), once
#: the caller is authenticated.
_ROUTES: RouteTable[_Handler] = RouteTable(
    [
        Route(
            ANY_METHOD,
            ("/health/liveliness", "/health/liveness"),
            ProxyApp._liveness,
            access="always",
        ),
        Route(ANY_METHOD, ("/health/readiness",), ProxyApp._readiness, access="open"),
        Route(ANY_METHOD, ("/metrics",), ProxyApp._metrics, access="open"),
        Route("POST", ("/v1/responses", "/responses"), ProxyApp._create),
        Route("POST", ("/v1/responses/compact", "/responses/compact"), ProxyApp._compact),
        Route(
            "POST",
            ("/v1/responses/input_tokens", "/responses/input_tokens"),
            ProxyApp._input_tokens,
        ),
        Route("GET", ("/v1/responses/{id}",), ProxyApp._get_response),
        Route("DELETE", ("/v1/responses/{id}",), ProxyApp._delete_response),
        Route("POST", ("/v1/responses/{id}/cancel",), ProxyApp._cancel_response),
        Route("GET", ("/v1/responses/{id}/input_items",), ProxyApp._input_items),
        Route("POST", ("/v1/files", "/files"), ProxyApp._upload),
        Route("GET", ("/v1/files", "/files"), ProxyApp._list_files),
        Route("GET", ("/v1/files/{id}", "/files/{id}"), ProxyApp._retrieve_file),
        Route("DELETE", ("/v1/files/{id}", "/files/{id}"), ProxyApp._delete_file),
        Route("GET", ("/v1/files/{id}/content", "/files/{id}/content"), ProxyApp._file_content),
        Route("POST", ("/v1/batches", "/batches"), ProxyApp._create_batch),
        Route("GET", ("/v1/batches", "/batches"), ProxyApp._list_batches),
        Route("GET", ("/v1/batches/{id}", "/batches/{id}"), ProxyApp._retrieve_batch),
        Route("POST", ("/v1/batches/{id}/cancel", "/batches/{id}/cancel"), ProxyApp._cancel_batch),
        Route("POST", ("/v1/conversations", "/conversations"), ProxyApp._create_conversation),
        Route(
            "GET",
            ("/v1/conversations/{id}", "/conversations/{id}"),
            ProxyApp._retrieve_conversation,
        ),
        Route(
            "POST",
            ("/v1/conversations/{id}", "/conversations/{id}"),
            ProxyApp._update_conversation,
        ),
        Route(
            "DELETE",
            ("/v1/conversations/{id}", "/conversations/{id}"),
            ProxyApp._delete_conversation,
        ),
        Route(
            "GET",
            ("/v1/conversations/{id}/items", "/conversations/{id}/items"),
            ProxyApp._list_conversation_items,
        ),
        Route(
            "POST",
            ("/v1/conversations/{id}/items", "/conversations/{id}/items"),
            ProxyApp._create_conversation_items,
        ),
        Route(
            "GET",
            ("/v1/conversations/{id}/items/{item_id}", "/conversations/{id}/items/{item_id}"),
            ProxyApp._retrieve_conversation_item,
        ),
        Route(
            "DELETE",
            ("/v1/conversations/{id}/items/{item_id}", "/conversations/{id}/items/{item_id}"),
            ProxyApp._delete_conversation_item,
        ),
        Route("GET", ("/v1/models", "/models"), ProxyApp._models),
        Route("POST", ("/key/generate",), ProxyApp._generate_key),
        Route("GET", ("/key/info",), ProxyApp._key_info),
        Route("POST", ("/key/delete",), ProxyApp._delete_key),
    ]
)
