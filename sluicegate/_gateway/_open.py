"""Opening a gateway: the configuration resolved into the services every request shares.

One gateway owns what every request shares: the pooled transport (sized for high concurrency;
never a client per request), the router, the connector's retry policy, the price table and the
ID codecs, the event store, plus a service nursery for gateway-wide tasks (background
responses, the built-in fake upstreams, the retention purge). Each request then runs its own
nursery of actors (``_pipeline.py``). :func:`aresponses` and :func:`responses` open one for a
single call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Any, Final

import httpx
import sniffio
import trio

from .._types import Response
from ..actors._accountant import Accountant
from ..actors._connector import Connector
from ..actors._recorder import Recorder
from ..actors._router import Router, env_deployment_id
from ..codecs._registry import PROVIDERS, bridge_codec
from ..codecs.ids import IdCodec
from ..codecs.sealed import StateSeal
from ..config import (
    GatewayConfig,
    GeneralSettings,
    build_deployment,
    is_in_process_fake,
    load_config,
)
from ..errors import ConfigError, InvalidRequestError, StoreError
from ..limits import Limits, open_limits
from ..net._media import MediaFetcher
from ..net._transport import LeanTransport
from ..pricing import PriceTable
from ..pricing._file import load_pricing_file, overlay
from ..runtime._scopes import open_body_nursery
from ..store import (
    RecoveryPolicy,
    Store,
    open_memory_store,
    open_postgres_store,
    open_sqlite_store,
)
from ._background import BackgroundRuns
from ._conversations import ConversationService
from ._facade import Gateway
from ._fakes import FakeProviders
from ._host import GuestRun, Host, HostedContext, in_trio
from ._objects import ObjectService
from ._pipeline import Pipeline
from ._stored import StoredResponses
from ._takeover import Takeover

__all__ = ["aresponses", "open_gateway", "open_trio_gateway", "responses"]

logger = logging.getLogger("sluicegate")

#: Used when neither the config nor SLUICEGATE_RESPONSE_ID_SECRET names a secret: IDs stay valid
#: for this process only (every gateway in it shares the key, so module-level calls chain).
_PROCESS_SECRET = secrets.token_bytes(32)


def open_gateway(
    config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
    environ: Mapping[str, str] | None = None,
    owner: str = "",
    wall_clock: Callable[[], float] = time.time,
) -> AbstractAsyncContextManager[Gateway]:
    """Open a gateway: ``async with sluicegate.open_gateway(config) as gw:``, under trio or
    asyncio (the loop that runs the ``async with`` decides, when it is entered).

    The gateway opens its event store (``general_settings.store``; by default the SQLite file
    ``sluicegate.db`` in the working directory) and records every response in it. Leaving the
    block cancels running background responses (recorded as failed) and closes the store.

    Under asyncio the gateway runs as a trio guest on the running loop (one guest per loop,
    shared by the gateways open on it; docs/design.md §2.8), and its calls are awaited from
    asyncio tasks with the same arguments, results and errors. Leaving the block there also
    cancels the calls and streams still running (each response recorded with its end; their
    callers get :class:`~sluicegate.ServiceUnavailableError`). Use the gateway from the loop
    that opened it.

    Args:
        config: a dict or a YAML path in LiteLLM's shape (``model_list``, ``router_settings``,
            ``general_settings``), a loaded :class:`GatewayConfig`, or None for zero-config use
            (``provider/model`` names with the provider's environment credentials).
        transport: an httpx transport to use instead of the network (tests: MockTransport).
        rng: the random source for routing and retry jitter (tests: a seeded one).
        environ: the environment for ``os.environ/`` references and provider credentials.
        owner: who requests and lookups that name no ``owner`` belong to.
        wall_clock: unix time for stored timestamps (tests: a fixed clock).

    Raises:
        ConfigError: the configuration is invalid; the message names the path.
        StoreError: the store cannot be opened.
    """
    return _Opening(
        partial(
            open_trio_gateway,
            config,
            transport=transport,
            rng=rng,
            environ=environ,
            owner=owner,
            wall_clock=wall_clock,
        )
    )


class _Opening(AbstractAsyncContextManager[Gateway]):
    """:func:`open_gateway`'s context manager: the trio one as it is under trio; under asyncio,
    the trio one held by a session in the loop's guest run, its calls hosted there."""

    def __init__(self, open_: Callable[[], AbstractAsyncContextManager[Gateway]]) -> None:
        self._open = open_
        self._inner: AbstractAsyncContextManager[Gateway] | None = None
        self._run: GuestRun | None = None

    async def __aenter__(self) -> Gateway:
        if in_trio():
            self._inner = self._open()
            return await self._inner.__aenter__()
        library = _current_library()
        if library != "asyncio":
            raise RuntimeError(
                f"sluicegate runs under trio or asyncio, not {library or 'no event loop'}."
            )
        run = self._run = await GuestRun.join()
        self._inner = HostedContext(
            None, run.nursery, partial(_hosting, run, self._open), _itself, run=run
        )
        try:
            return await self._inner.__aenter__()
        except BaseException:
            self._run = None
            await run.leave()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._inner is not None
        run, self._run = self._run, None
        try:
            return await self._inner.__aexit__(exc_type, exc, tb)
        finally:
            if run is not None:
                await run.leave()


def _itself(session: object, gateway: Gateway) -> Gateway:
    return gateway


@asynccontextmanager
async def _hosting(
    run: GuestRun, open_: Callable[[], AbstractAsyncContextManager[Gateway]]
) -> AsyncIterator[Gateway]:
    """A gateway whose calls from asyncio run in a nursery of its own, cancelled when it
    closes (before the gateway itself closes, so each records its end)."""
    async with open_() as gateway, open_body_nursery() as calls:
        host = Host(run, calls)
        gateway.hosted_by(host)
        try:
            yield gateway
        finally:
            host.closing = True


@asynccontextmanager
async def open_trio_gateway(
    config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
    environ: Mapping[str, str] | None = None,
    owner: str = "",
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[Gateway]:
    """:func:`open_gateway` under trio: what it enters under trio, and what the asyncio host
    enters inside its guest run."""
    env = os.environ if environ is None else environ
    cfg = load_config(config, environ=env)
    gs = cfg.general_settings
    drop = cfg.general_settings.drop_params
    deployments = [
        build_deployment(e, cfg.router_settings, environ=env, drop_params=drop)
        for e in cfg.model_list
    ]
    for i, deployment in enumerate(deployments):
        codec = bridge_codec(deployment.provider)
        if codec is not None:
            try:
                codec.check_deployment(deployment)
            except ConfigError as exc:
                inner = exc.path or "model_info"
                message = exc.message.removeprefix(f"{inner}: ")
                raise ConfigError(message, path=f"model_list[{i}].{inner}") from exc
    rng = rng or random.Random()
    # The user's price file, over the bundled table; a deployment's own price still wins
    # (the accountant asks the deployment first).
    prices = PriceTable.bundled()
    if gs.pricing_file is not None:
        prices = overlay(prices, await trio.to_thread.run_sync(user_prices, gs.pricing_file))
    limits = httpx.Limits(
        max_connections=gs.max_connections,
        max_keepalive_connections=gs.max_keepalive_connections,
        keepalive_expiry=gs.keepalive_expiry,
    )
    # Fetching caller-named media goes through httpx's own transport (it takes the TLS server
    # name the fetcher pins, net/_media.py), or the caller's transport in tests.
    media_transport = transport
    if transport is None and gs.http_transport == "lean":
        # httpx's pool scans every connection per request (a poll() each): CPU per request
        # grows with concurrency. The lean transport checks only the connection it reuses.
        transport = LeanTransport(
            max_connections=gs.max_connections,
            max_keepalive_connections=gs.max_keepalive_connections,
            keepalive_expiry=gs.keepalive_expiry,
        )
    elif transport is None:
        transport = _httpx_transport(limits, env)
    # Which background responses a dead instance left running this gateway takes over
    # (docs/background.md); recovery asks it when the store opens.
    takeover = Takeover({d.id: d for d in deployments}, IdCodec.from_secret(_id_secret(cfg, env)))
    async with (
        transport,
        httpx.AsyncClient(transport=media_transport, timeout=None) as media_client,
        # The store outlives the services: background responses record their end on the way
        # out. Its writer runs in a body nursery, so the caller's own errors come out unwrapped.
        open_body_nursery() as store_services,
        _open_store(cfg, store_services, env, takeover) as store,
        _open_limits(cfg, store_services) as rate_limits,
        open_body_nursery() as services,
    ):
        fakes = FakeProviders(
            services,
            frozenset(
                {env_deployment_id("fake")} | {d.id for d in deployments if is_in_process_fake(d)}
            ),
        )
        deployments = [await fakes.resolve(d) if is_in_process_fake(d) else d for d in deployments]
        router = Router.from_deployments(
            deployments,
            cfg.router_settings,
            rng=rng,
            resolve_fake=fakes.resolve,
            environ=environ,
        )
        rate_limits.share_deployments(router)
        accountant = Accountant(prices, gs.include_cost_in_streaming_usage, router.used_tokens)
        secret = _id_secret(cfg, env)
        pipeline = Pipeline(
            router=router,
            connector=Connector(
                transport,
                cfg.router_settings,
                rng,
                MediaFetcher(media_client, gs.media_fetch),
                wall_clock,
            ),
            accountant=accountant,
            ids=IdCodec.from_secret(secret),
            seal=StateSeal.from_secret(secret),
            fused=_actor_layout(gs.actor_layout) == "fused",
        )
        if gs.store.retention is not None:
            services.start_soon(
                _purge_periodically, store, gs.store.retention, gs.store.purge_interval, wall_clock
            )
        objects = ObjectService(
            store,
            router,
            pipeline.connector,
            prices,
            IdCodec.from_secret(secret, prefix="file-"),
            IdCodec.from_secret(secret, prefix="batch_"),
            fakes.resolve,
            wall_clock,
            gs.max_file_bytes,
        )
        conversations = ConversationService(
            store,
            router,
            pipeline.connector,
            IdCodec.from_secret(secret, prefix="conv_"),
            fakes.serves,
            fakes.resolve,
            wall_clock,
            gs.store,
        )
        recorder = Recorder(
            store, accountant, wall_clock, conversation_ended=conversations.turn_ended
        )
        background = BackgroundRuns(pipeline, store, recorder, services, _shared_store(gs))
        services.start_soon(background.follow_takeovers, takeover.adopted_rows)
        stored = StoredResponses(pipeline, store, recorder, background, fakes, gs.store, owner)
        background.cancel_upstream = stored.cancel_given_up  # docs/background.md
        gateway = Gateway(
            cfg,
            pipeline,
            store,
            recorder,
            fakes,
            background,
            stored,
            objects,
            rate_limits,
            owner,
            conversations=conversations,
        )
        try:
            yield gateway
        finally:
            gateway.mark_closed()


def _httpx_transport(limits: httpx.Limits, environ: Mapping[str, str]) -> httpx.AsyncBaseTransport:
    """httpx's own transport (``http_transport: httpx``): HTTP/2 wherever a server offers it
    (ALPN), and the proxies ``environ`` names, as httpx's clients read them: ``HTTPS_PROXY``,
    ``HTTP_PROXY`` or ``ALL_PROXY`` (lower case first), except for the hosts and domains in
    ``NO_PROXY`` (``*``: every one). The connector calls the transport without a client, so
    nothing else would read them."""

    def setting(name: str) -> str:
        return environ.get(name) or environ.get(name.upper()) or ""

    direct = httpx.AsyncHTTPTransport(limits=limits, http2=True)
    no_proxy = [name.strip().lstrip(".").lower() for name in setting("no_proxy").split(",")]
    if "*" in no_proxy:
        return direct
    proxies = {
        scheme: httpx.AsyncHTTPTransport(
            limits=limits, http2=True, proxy=url if "://" in url else f"http://{url}"
        )
        for scheme in ("http", "https")
        if (url := setting(f"{scheme}_proxy") or setting("all_proxy"))
    }
    if not proxies:
        return direct
    return _ProxiedTransport(direct, proxies, tuple(name for name in no_proxy if name))


class _ProxiedTransport(httpx.AsyncBaseTransport):
    """Sends each request through its scheme's proxy, or direct when there is none or
    ``NO_PROXY`` names its host or a domain the host is in."""

    def __init__(
        self,
        direct: httpx.AsyncBaseTransport,
        proxies: Mapping[str, httpx.AsyncBaseTransport],
        no_proxy: tuple[str, ...],
    ) -> None:
        self._direct = direct
        self._proxies = proxies
        self._no_proxy = no_proxy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._proxies.get(request.url.scheme)
        host = request.url.host.lower()
        if proxy is None or any(
            host == name or host.endswith("." + name) for name in self._no_proxy
        ):
            return await self._direct.handle_async_request(request)
        return await proxy.handle_async_request(request)

    async def aclose(self) -> None:
        for transport in (self._direct, *self._proxies.values()):
            await transport.aclose()


#: The variable of the response-ID secret (``general_settings.response_id_secret`` wins).
SECRET_VARIABLE: Final = "SLUICEGATE_RESPONSE_ID_SECRET"
#: Set (to ``generated``) by ``sluicegate serve`` beside a secret it generated for its workers:
#: instances on one database are then told apart from ones sharing a configured secret.
SECRET_ORIGIN_VARIABLE: Final = "SLUICEGATE_RESPONSE_ID_SECRET_ORIGIN"


def _id_secret(config: GatewayConfig, environ: Mapping[str, str]) -> bytes:
    secret = config.general_settings.response_id_secret
    if secret is not None:
        return secret.reveal().encode()
    from_env = environ.get(SECRET_VARIABLE)
    return from_env.encode() if from_env else _PROCESS_SECRET


def _id_secret_digest(config: GatewayConfig, environ: Mapping[str, str]) -> str:
    """What instances sharing a database compare to know they share the response-ID secret:
    a one-way digest (the secret never leaves the process), marked ``generated:`` for a secret
    made at start (this process's, or one ``sluicegate serve`` made for its workers), which no
    other server can have."""
    secret = _id_secret(config, environ)
    digest = hashlib.sha256(b"sluicegate response-id secret\0" + secret).hexdigest()
    configured = config.general_settings.response_id_secret is not None or (
        secret is not _PROCESS_SECRET and environ.get(SECRET_ORIGIN_VARIABLE) != "generated"
    )
    return digest if configured else f"generated:{digest}"


def _open_store(
    cfg: GatewayConfig,
    nursery: trio.Nursery,
    environ: Mapping[str, str],
    recovery: RecoveryPolicy | None = None,
) -> AbstractAsyncContextManager[Store]:
    """The configured store (``general_settings.store.backend``, or PostgreSQL when
    ``database_url`` is set); the writer of SQLite and PostgreSQL runs in ``nursery``."""
    gs = cfg.general_settings
    settings = gs.store
    if gs.database_url is not None:
        return open_postgres_store(
            gs.database_url.reveal(),
            nursery=nursery,
            pool_size=gs.database_connection_pool_limit,
            lease=settings.instance_lease,
            heartbeat=settings.heartbeat_interval,
            id_secret_digest=_id_secret_digest(cfg, environ),
            synchronous_commit=settings.synchronous_commit,
            recovery=recovery,
        )
    if settings.backend == "memory":
        return open_memory_store(max_responses=settings.max_responses)
    return open_sqlite_store(settings.path, nursery=nursery, recovery=recovery)


def _open_limits(cfg: GatewayConfig, nursery: trio.Nursery) -> AbstractAsyncContextManager[Limits]:
    """The rate limits: shared on the configured Redis, else this process's own; their service
    tasks run in ``nursery``."""
    rs = cfg.router_settings
    password = rs.redis_password
    return open_limits(
        rs.shared_limits_url(),
        password=None if password is None else password.reveal(),
        nursery=nursery,
        timeout=rs.redis_timeout,
    )


def _shared_store(gs: GeneralSettings) -> bool:
    """Whether other processes may share the store: a file or a database (an in-memory store
    never is)."""
    if gs.database_url is not None:
        return True
    return gs.store.backend == "sqlite" and gs.store.path != ":memory:"


async def _purge_periodically(
    store: Store, retention: float, interval: float, wall_clock: Callable[[], float]
) -> None:
    """Retention: remove content older than ``retention`` every ``interval`` seconds."""
    while True:
        try:
            purged = await store.purge(before=wall_clock() - retention)
        except StoreError:
            logger.exception("the retention purge failed; trying again next interval")
        else:
            if purged:
                logger.info("retention: purged the content of %d responses", purged)
        await trio.sleep(interval)


async def aresponses(
    *, config: GatewayConfig | Mapping[str, Any] | str | None = None, **params: Any
) -> Response:
    """One call, zero setup, under trio or asyncio:
    ``await sluicegate.aresponses(model="openai/gpt-4o", ...)``.

    Opens a gateway for the call; for many calls, open one with :func:`open_gateway`.
    """
    if params.get("stream"):
        raise InvalidRequestError(
            "Streaming needs a gateway: `async with open_gateway() as gw, gw.stream(...)`.",
            param="stream",
        )
    # With no configuration a one-shot call keeps its record in memory: it leaves no file in
    # the caller's working directory (and a one-shot response has nobody to look it up later).
    async with open_gateway(_ONE_SHOT if config is None else config) as gw:
        return await gw.responses(**params)


#: The configuration of a one-shot call given none.
_ONE_SHOT: Final[Mapping[str, Any]] = {"general_settings": {"store": {"path": ":memory:"}}}


def responses(
    *, config: GatewayConfig | Mapping[str, Any] | str | None = None, **params: Any
) -> Response:
    """Synchronous :func:`aresponses`: runs its own trio loop for the call.

    Raises:
        RuntimeError: called inside a running event loop, which it would block; the message
            says what to call there instead.
    """
    _refuse_inside_an_event_loop()
    return trio.run(partial(aresponses, config=config, **params))


def _refuse_inside_an_event_loop() -> None:
    library = _current_library()
    if library is None:
        return
    if library in ("trio", "asyncio"):
        hint = "`await sluicegate.aresponses(...)` (or a gateway: `sluicegate.open_gateway`)"
    else:
        hint = f"`sluicegate.responses(...)` in a worker thread (running under {library})"
    raise RuntimeError(
        "sluicegate.responses() blocks until the response is done, and this thread is running "
        f"an event loop it would freeze; use {hint} instead."
    )


def _current_library() -> str | None:
    """The event loop running in this thread, by name: sniffio's answer, else asyncio's
    running loop (seen from a plain loop callback, where sniffio finds no task)."""
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        pass
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


#: Overrides ``general_settings.actor_layout`` (the test suite's ``--actor-layout`` sets it, so
#: the processes it starts run the same layout).
ACTOR_LAYOUT_ENV: Final = "SLUICEGATE_ACTOR_LAYOUT"


def _actor_layout(configured: str) -> str:
    # The process's own environment, not the mapping given for ``os.environ/`` references:
    # the override is the process's, whoever loads the configuration.
    layout = os.environ.get(ACTOR_LAYOUT_ENV) or configured
    if layout not in ("fused", "unfused"):
        raise ConfigError(
            f"{ACTOR_LAYOUT_ENV} must be 'fused' or 'unfused', not {layout!r}",
            path="general_settings.actor_layout",
        )
    return layout


def user_prices(path: str) -> PriceTable:
    """The price file ``general_settings.pricing_file`` names (the user's entries only): of a
    LiteLLM file, the entries of the providers a ``model_list`` may name.

    Raises:
        ConfigError: the file cannot be read or parsed; the error names the setting.
    """
    return load_pricing_file(path, providers=PROVIDERS)
