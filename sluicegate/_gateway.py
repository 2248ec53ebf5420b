"""The library face: ``open_gateway`` and the :class:`Gateway` it yields.

One gateway owns what every request shares: the pooled ``httpx.AsyncClient`` (sized for high
concurrency; never a client per request), the router, the connector's retry policy, the price
table and the ID codec, plus a service nursery for gateway-wide tasks (the built-in fake
upstreams). Each request then runs its own nursery of actors (``runtime/_supervisor.py``).
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import orjson
import trio

from ._params import prepare_call
from ._types import Response, StreamEvent
from .actors._connector import Connector
from .actors._router import Router, env_deployment_id
from .actors._stages import Accountant
from .actors._transport import LeanTransport
from .codecs._lifecycle import StreamTracker
from .codecs.ids import DecodedId, IdCodec
from .codecs.openai_responses import build_resource_request
from .config import (
    Deployment,
    GatewayConfig,
    build_deployment,
    load_config,
)
from .errors import (
    InvalidRequestError,
    NotFoundError,
    SluicegateError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from .fake import FakeUpstream
from .pricing import PriceTable
from .runtime._messages import Delivery
from .runtime._scopes import open_body_nursery
from .runtime._supervisor import Pipeline, run_request

__all__ = [
    "Gateway",
    "GatewayStatistics",
    "ResponseStream",
    "aresponses",
    "open_gateway",
    "responses",
]

#: Used when neither the config nor SLUICEGATE_RESPONSE_ID_SECRET names a secret: IDs stay valid
#: for this process only (every gateway in it shares the key, so module-level calls chain).
_PROCESS_SECRET = secrets.token_bytes(32)


@attrs.frozen(kw_only=True)
class GatewayStatistics:
    requests_in_flight: int
    requests_total: int
    upstream_requests_in_flight: int
    upstream_attempts: int
    upstream_retries: int
    upstream_errors: int
    chunks_read: int
    input_tokens: int
    output_tokens: int
    cost: float


@attrs.define(eq=False)
class ResponseStream:
    """The events of one streamed response, as the caller iterates them.

    ``async for event in stream`` yields typed :class:`~sluicegate.StreamEvent` objects;
    ``final_response`` is the folded :class:`Response` once the terminal event has been read.
    """

    _recv: trio.MemoryReceiveChannel[Delivery]
    _tracker: StreamTracker
    _batch: list[StreamEvent] = attrs.Factory(list)
    _index: int = 0

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> StreamEvent:
        while self._index >= len(self._batch):
            try:
                item = await self._recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise StopAsyncIteration from None
            if isinstance(item, SluicegateError):
                raise item
            self._batch = item
            self._index = 0
        event = self._batch[self._index]
        self._index += 1
        return event

    async def _prime(self) -> SluicegateError | None:
        """Wait for the first events; the error instead if the request failed before any."""
        try:
            item = await self._recv.receive()
        except trio.EndOfChannel:
            return UpstreamProtocolError("the upstream sent no events")
        if isinstance(item, SluicegateError):
            return item
        self._batch = item
        return None

    @property
    def final_response(self) -> Response | None:
        return self._tracker.fold() if self._tracker.terminal is not None else None

    async def get_final_response(self) -> Response:
        """Read the rest of the stream; the final Response."""
        async for _ in self:
            pass
        return self._tracker.fold()


@attrs.define(eq=False)
class _FakeProviders:
    """Starts built-in fake upstreams on demand, one per (tokens, delay), in the service nursery."""

    _nursery: trio.Nursery
    _servers: dict[tuple[int, float], FakeUpstream] = attrs.Factory(dict)
    _lock: trio.Lock = attrs.Factory(trio.Lock)

    async def resolve(self, deployment: Deployment) -> Deployment:
        key = (deployment.fake_tokens or 20, deployment.fake_token_delay or 0.0)
        server = self._servers.get(key)
        if server is None:
            async with self._lock:
                server = self._servers.get(key)
                if server is None:
                    server = FakeUpstream(tokens=key[0], token_delay=key[1])
                    await self._nursery.start(server.serve)
                    self._servers[key] = server
        return attrs.evolve(deployment, api_base=server.base_url)


@attrs.define(eq=False)
class Gateway:
    """Routes Responses API calls; get one from :func:`open_gateway`."""

    _config: GatewayConfig
    _pipeline: Pipeline
    _fakes: _FakeProviders
    _environ: Mapping[str, str] | None
    _in_flight: int = 0
    _total: int = 0

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def model_names(self) -> list[str]:
        """The configured model groups."""
        return self._pipeline.router.model_names

    def statistics(self) -> GatewayStatistics:
        c = self._pipeline.connector.statistics()
        a = self._pipeline.accountant.statistics()
        return GatewayStatistics(
            requests_in_flight=self._in_flight,
            requests_total=self._total,
            upstream_requests_in_flight=c.requests_in_flight,
            upstream_attempts=c.attempts,
            upstream_retries=c.retries,
            upstream_errors=c.upstream_errors,
            chunks_read=c.chunks_read,
            input_tokens=a.input_tokens,
            output_tokens=a.output_tokens,
            cost=a.cost,
        )

    async def responses(self, **params: Any) -> Response:
        """Create a response and wait for it (``POST /v1/responses``, not streamed).

        Args:
            params: Responses API parameters (``model``, ``input``, ``instructions``, ...), and
                ``extra_body``, ``extra_headers``, ``extra_query``, ``timeout`` as in the
                OpenAI SDK.

        Returns:
            The Response; its ``id`` is a sluicegate ``resp_`` ID.

        Raises:
            SluicegateError: a bad request (400/404) or an upstream failure (its status).
        """
        call = prepare_call(params, stream=False, ids=self._pipeline.ids)
        tracker = StreamTracker()
        self._in_flight += 1
        self._total += 1
        try:
            await run_request(self._pipeline, call, tracker)
        finally:
            self._in_flight -= 1
        return tracker.fold()

    @asynccontextmanager
    async def stream(self, **params: Any) -> AsyncIterator[ResponseStream]:
        """Create a streamed response: ``async with gw.stream(...) as events:``.

        Entering waits for the first event, so a request that fails before any event raises
        here (as an HTTP error would). Leaving the block early cancels the upstream request.
        """
        call = prepare_call(params, stream=True, ids=self._pipeline.ids)
        send, recv = trio.open_memory_channel[Delivery](1)
        tracker = StreamTracker()
        events = ResponseStream(recv, tracker)
        self._in_flight += 1
        self._total += 1
        try:
            async with open_body_nursery() as nursery:
                nursery.start_soon(self._run_streaming, call, tracker, send)
                with recv:
                    failure = await events._prime()
                    if failure is not None:
                        raise failure
                    yield events
        finally:
            self._in_flight -= 1

    async def _run_streaming(
        self, call: Any, tracker: StreamTracker, send: trio.MemorySendChannel[Delivery]
    ) -> None:
        with send:
            await run_request(self._pipeline, call, tracker, send)

    # -- stored responses (native upstreams; the event store joins in issue 3) ----------------

    async def get_response(
        self,
        response_id: str,
        *,
        include: list[str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> Response:
        """Retrieve a response from the upstream that made it (``GET /v1/responses/{id}``).

        Raises:
            NotFoundError: the ID is not one of ours (forged, altered, unknown deployment).
            UpstreamError: the upstream's answer (its 404 for a response it does not have).
        """
        decoded, deployment = self._resolve_id(response_id)
        query: dict[str, str | list[str]] = {**(extra_query or {})}
        if include:
            query["include[]"] = list(include)
        body = await self._resource_call(
            deployment,
            "GET",
            decoded.raw_id,
            query=query,
            extra_headers=extra_headers,
            total_timeout=timeout,
        )
        return self._encode_response(Response.from_dict(body), decoded, deployment)

    async def delete_response(
        self,
        response_id: str,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """Delete a response upstream (``DELETE /v1/responses/{id}``); the deletion object."""
        decoded, deployment = self._resolve_id(response_id)
        body = await self._resource_call(
            deployment,
            "DELETE",
            decoded.raw_id,
            extra_headers=extra_headers,
            total_timeout=timeout,
        )
        if not isinstance(body, dict):
            raise UpstreamProtocolError("upstream answered a delete with a non-object")
        return {**body, "id": response_id}

    async def cancel_response(
        self,
        response_id: str,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> Response:
        """Cancel a background response (``POST /v1/responses/{id}/cancel``)."""
        decoded, deployment = self._resolve_id(response_id)
        body = await self._resource_call(
            deployment,
            "POST",
            decoded.raw_id,
            action="cancel",
            extra_headers=extra_headers,
            total_timeout=timeout,
        )
        return self._encode_response(Response.from_dict(body), decoded, deployment)

    def _resolve_id(self, response_id: str) -> tuple[DecodedId, Deployment]:
        decoded = self._pipeline.ids.decode(response_id)
        router = self._pipeline.router
        deployment = router.deployment(decoded.deployment_id)
        if deployment is None and decoded.deployment_id in (
            "",
            env_deployment_id(decoded.provider),
        ):
            # Made on the provider's environment credentials (or a LiteLLM ID without a
            # deployment): the same credentials reach it again. A configured deployment that
            # was removed does not fall back here: its responses are gone with it.
            deployment = router.env_deployment(decoded.provider)
        if deployment is None:
            raise NotFoundError(f"No response found with id '{response_id}'.")
        return decoded, deployment

    async def _resource_call(
        self,
        deployment: Deployment,
        method: str,
        raw_id: str,
        *,
        action: str = "",
        query: Mapping[str, str | list[str]] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        total_timeout: float | None = None,
    ) -> Any:
        if deployment.provider == "fake" and deployment.api_base is None:
            deployment = await self._fakes.resolve(deployment)
        request = build_resource_request(
            deployment, method, raw_id, action=action, params=query, extra_headers=extra_headers
        )
        timeouts = deployment.timeouts
        if total_timeout is not None:
            timeouts = attrs.evolve(timeouts, total=total_timeout)
        with trio.move_on_after(timeouts.total or float("inf")) as scope:
            _, body = await self._pipeline.connector.open(
                request, timeouts, deployment.max_retries, read_body=True
            )
        if scope.cancelled_caught or body is None:
            raise UpstreamTimeoutError(f"the upstream did not answer within {timeouts.total} s")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"upstream sent a malformed JSON body: {exc}") from exc

    def _encode_response(
        self, response: Response, decoded: DecodedId, deployment: Deployment
    ) -> Response:
        encoded = self._pipeline.ids.encode(
            provider=deployment.provider,
            deployment_id=deployment.id,
            raw_id=response.id,
            owner=decoded.owner,
        )
        return response.with_changes(id=encoded)


def _id_secret(config: GatewayConfig, environ: Mapping[str, str]) -> bytes:
    secret = config.general_settings.response_id_secret
    if secret is not None:
        return secret.reveal().encode()
    from_env = environ.get("SLUICEGATE_RESPONSE_ID_SECRET")
    return from_env.encode() if from_env else _PROCESS_SECRET


@asynccontextmanager
async def open_gateway(
    config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[Gateway]:
    """Open a gateway: ``async with sluicegate.open_gateway(config) as gw:``.

    Args:
        config: a dict or a YAML path in LiteLLM's shape (``model_list``, ``router_settings``,
            ``general_settings``), a loaded :class:`GatewayConfig`, or None for zero-config use
            (``provider/model`` names with the provider's environment credentials).
        transport: an httpx transport to use instead of the network (tests: MockTransport).
        rng: the random source for routing and retry jitter (tests: a seeded one).
        environ: the environment for ``os.environ/`` references and provider credentials.

    Raises:
        ConfigError: the configuration is invalid; the message names the path.
    """
    env = os.environ if environ is None else environ
    cfg = load_config(config, environ=env)
    gs = cfg.general_settings
    deployments = [build_deployment(e, cfg.router_settings, environ=env) for e in cfg.model_list]
    rng = rng or random.Random()
    limits = httpx.Limits(
        max_connections=gs.max_connections,
        max_keepalive_connections=gs.max_keepalive_connections,
        keepalive_expiry=gs.keepalive_expiry,
    )
    if transport is None and gs.http_transport == "lean":
        # httpx's pool scans every connection per request (a poll() each): CPU per request
        # grows with concurrency. The lean transport checks only the connection it reuses.
        transport = LeanTransport(
            max_connections=gs.max_connections,
            max_keepalive_connections=gs.max_keepalive_connections,
            keepalive_expiry=gs.keepalive_expiry,
        )
    async with (
        httpx.AsyncClient(limits=limits, transport=transport, timeout=None) as client,
        open_body_nursery() as services,
    ):
        fakes = _FakeProviders(services)
        deployments = [
            await fakes.resolve(d) if d.provider == "fake" and d.api_base is None else d
            for d in deployments
        ]
        pipeline = Pipeline(
            router=Router.from_deployments(
                deployments,
                cfg.router_settings,
                rng=rng,
                resolve_fake=fakes.resolve,
                environ=environ,
            ),
            connector=Connector(client, cfg.router_settings, rng),
            accountant=Accountant(PriceTable.bundled(), gs.include_cost_in_streaming_usage),
            ids=IdCodec.from_secret(_id_secret(cfg, env)),
        )
        yield Gateway(cfg, pipeline, fakes, environ)


async def aresponses(
    *, config: GatewayConfig | Mapping[str, Any] | str | None = None, **params: Any
) -> Response:
    """One call, zero setup (trio): ``await sluicegate.aresponses(model="openai/gpt-4o", ...)``.

    Opens a gateway for the call; for many calls, open one with :func:`open_gateway`.
    """
    if params.get("stream"):
        raise InvalidRequestError(
            "Streaming needs a gateway: `async with open_gateway() as gw, gw.stream(...)`.",
            param="stream",
        )
    async with open_gateway(config) as gw:
        return await gw.responses(**params)


def responses(
    *, config: GatewayConfig | Mapping[str, Any] | str | None = None, **params: Any
) -> Response:
    """Synchronous :func:`aresponses`: runs its own trio loop for the call."""
    return trio.run(partial(aresponses, config=config, **params))
