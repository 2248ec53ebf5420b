"""Configuration: the LiteLLM-shaped YAML (or dict) users already have, validated at load.

::

    model_list:
      - model_name: gpt-4o                 # the group a request's ``model`` names
        litellm_params:
          model: openai/gpt-4o             # provider/upstream model
          api_key: os.environ/OPENAI_API_KEY
          api_base: https://api.openai.com/v1
          weight: 2
        model_info:
          id: openai-eu-1                  # stable deployment ID, carried in response IDs
    router_settings:
      num_retries: 2
      timeout: 600
    general_settings:
      response_id_secret: os.environ/SLUICEGATE_ID_SECRET
      include_cost_in_streaming_usage: true
      store:
        path: sluicegate.db                # ":memory:" for a private, temporary store
        retention: 30d                     # content purged after; spend rows stay
        backend: sqlite                    # memory: stateless, the last max_responses kept

Every ``os.environ/NAME`` string is replaced by that variable at load. Unknown keys, wrong types,
values out of range (attrs validators on the fields) and missing variables are a
:class:`~sluicegate.errors.ConfigError` that names the path of the bad value
(``model_list[0].litellm_params.weight: must be positive``). Secrets are held in
:class:`Secret`, whose repr never shows the value.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, NewType, NoReturn, get_args, get_origin

import attrs
import cattrs
import yaml
from cattrs.errors import AttributeValidationNote
from cattrs.preconf.orjson import make_converter
from cattrs.v import format_exception

from .codecs._registry import CHAT_PROVIDERS, MESSAGE_PROVIDERS, PROVIDERS
from .codecs._registry import is_bridged as is_bridged
from .errors import ConfigError
from .pricing import ModelPrice

__all__ = [
    "DEFAULT_FORWARD_CLIENT_HEADERS",
    "Deployment",
    "GatewayConfig",
    "GeneralSettings",
    "HeaderNames",
    "LiteLLMParams",
    "MediaFetchSettings",
    "ModelEntry",
    "ModelInfo",
    "RouterSettings",
    "Secret",
    "StoreBackend",
    "StoreSettings",
    "Timeouts",
    "build_deployment",
    "derive_deployment_id",
    "forward_refusal",
    "is_bridged",
    "is_in_process_fake",
    "load_config",
    "make_config_converter",
    "parse_duration",
]

ENV_PREFIX = "os.environ/"

#: The variable ``sluicegate serve`` and ``sluicegate migrate`` take the PostgreSQL database
#: from when ``general_settings.database_url`` is unset (LiteLLM's proxy reads it too).
DATABASE_URL_VARIABLE: Final = "DATABASE_URL"


@attrs.frozen(repr=False)
class Secret:
    """A credential. ``repr``/``str`` never show it; use :meth:`reveal` where it is sent."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class _Rejected(ValueError):
    """A configured value our checks refuse. The message is the configuration error's;
    :func:`load_config` puts the value's path in front of it."""


def _reject(attribute: attrs.Attribute[Any], message: str) -> NoReturn:
    error = _Rejected(message)
    # Filed the way cattrs files an error raised while structuring an attribute, so that
    # ``cattrs.transform_error`` names the whole path of the setting.
    name = attribute.name
    error.add_note(AttributeValidationNote(f"Validating attribute {name}", name, attribute.type))
    raise error


def _at_least(minimum: int) -> Callable[[Any, attrs.Attribute[Any], float | None], None]:
    """A field validator: None, or at least ``minimum``."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
        if value is not None and value < minimum:
            _reject(attribute, f"must be at least {minimum}")

    return check


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        _reject(attribute, "must be positive")


def _not_negative(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        _reject(attribute, "must not be negative")


def _count_tokens_way(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and value != "tokenize":
        _reject(attribute, f"must be 'tokenize' (vLLM's /tokenize), got {value!r}")


def _fraction(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not 0 < value <= 1:
        _reject(attribute, "must be a fraction in (0, 1]")


@attrs.frozen(kw_only=True)
class LiteLLMParams:
    model: str
    api_base: str | None = None
    api_key: Secret | None = None
    api_version: str | None = None
    weight: float = attrs.field(default=1.0, validator=_positive)
    # Per-deployment limits per minute, enforced by the router.
    rpm: int | None = attrs.field(default=None, validator=_at_least(1))
    tpm: int | None = attrs.field(default=None, validator=_at_least(1))
    max_retries: int | None = None
    timeout: float | None = None
    stream_timeout: float | None = None
    connect_timeout: float | None = None
    first_byte_timeout: float | None = None
    idle_timeout: float | None = None
    #: Total seconds a background response may run here (default: ``router_settings``').
    background_timeout: Duration | None = attrs.field(default=None, validator=_positive)
    extra_headers: dict[str, str] | None = None
    #: The upstream offers the Responses API's WebSocket mode: a WebSocket-mode client's
    #: responses go to it over an upstream WebSocket, and its other messages are relayed
    #: there (a native deployment only; docs/websocket.md).
    websocket: bool = False
    #: Drop what this provider cannot take instead of refusing it (None: general_settings').
    drop_params: bool | None = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    cache_read_input_token_cost: float | None = None
    output_cost_per_reasoning_token: float | None = None
    # The built-in fake provider (``fake/<name>``): answer length and pace.
    fake_tokens: int | None = None
    fake_token_delay: float | None = None
    #: How a Chat Completions server counts input tokens (``tokenize``: vLLM's ``/tokenize``);
    #: None: it has no way, and a count is a 400 (docs/input-tokens.md).
    count_tokens: str | None = attrs.field(default=None, validator=_count_tokens_way)


@attrs.frozen(kw_only=True)
class ModelInfo:
    id: str | None = None
    #: Other informational keys (LiteLLM's ``mode``, ``base_model``, ...), kept as given.
    extra: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class ModelEntry:
    model_name: str
    litellm_params: LiteLLMParams
    model_info: ModelInfo = attrs.Factory(ModelInfo)


#: Seconds; in the configuration a number or a string with a unit (``"15m"``, ``"30d"``).
Duration = NewType("Duration", float)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: How a bad duration is described, wherever one is parsed.
DURATION_EXPECTED = "seconds or a duration such as '30d', '12h', '15m' or '90s'"


def parse_duration(value: Any) -> float:
    """Seconds, from a number or a string with a unit (``90``, ``"90s"``, ``"15m"``, ``"12h"``,
    ``"30d"``); the configuration and the proxy's key durations both read them this way.

    Raises:
        TypeError: not a number or a string.
        ValueError: not a duration, or not a positive finite one.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"expected {DURATION_EXPECTED}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"expected {DURATION_EXPECTED}, got {value!r}")
        seconds = float(match[1]) * _UNITS[match[2]]
    else:
        seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError("must be a positive duration")
    return seconds


def _duration(value: Any, _: type = Duration) -> Duration:
    try:
        return Duration(parse_duration(value))
    except (TypeError, ValueError) as exc:
        raise _Rejected(str(exc)) from None


#: The routing strategies, by the names LiteLLM's configs use and their short forms.
RoutingStrategy = Literal[
    "simple-shuffle",
    "least-busy",
    "latency-based",
    "latency-based-routing",
    "usage-based",
    "usage-based-routing",
    "usage-based-routing-v2",
]
#: What each of them is called inside: the names in :data:`RoutingStrategy` (a test keeps the
#: two together).
ROUTING_STRATEGIES: Mapping[str, str] = {
    "simple-shuffle": "simple-shuffle",
    "least-busy": "least-busy",
    "latency-based": "latency-based",
    "latency-based-routing": "latency-based",
    "usage-based": "usage-based",
    "usage-based-routing": "usage-based",
    "usage-based-routing-v2": "usage-based",
}


@attrs.frozen(kw_only=True)
class RouterSettings:
    #: How a deployment is chosen within a group (:data:`ROUTING_STRATEGIES`).
    routing_strategy: RoutingStrategy = "simple-shuffle"
    #: Retries of a request within its model group (each fallback group gets as many); a
    #: deployment's ``litellm_params.max_retries`` overrides it after that deployment failed.
    num_retries: int = attrs.field(default=2, validator=_not_negative)
    #: Failures within a minute a deployment may have before it cools down (more opens it).
    allowed_fails: int = attrs.field(default=3, validator=_not_negative)
    #: Seconds a cooled deployment stays out of every pick before one probe request may try it.
    cooldown_time: float = attrs.field(default=5.0, validator=_positive)
    #: Also cool a deployment when this fraction of its requests in the last minute failed
    #: (with at least ``failure_rate_min_requests`` of them); None: counts only.
    failure_rate_threshold: float | None = attrs.field(default=None, validator=_fraction)
    failure_rate_min_requests: int = attrs.field(default=10, validator=_at_least(1))
    #: The least time (seconds) before any retry, also one on another deployment.
    retry_after: float = attrs.field(default=0.0, validator=_not_negative)
    #: ``[{"group": ["fallback group", ...]}, ...]``: where a request goes after its group's
    #: retries failed; context-window and content-policy errors have chains of their own.
    fallbacks: list[dict[str, list[str]]] = attrs.Factory(list)
    context_window_fallbacks: list[dict[str, list[str]]] = attrs.Factory(list)
    content_policy_fallbacks: list[dict[str, list[str]]] = attrs.Factory(list)
    #: Fallback groups for any group that has no entry in ``fallbacks``.
    default_fallbacks: list[str] = attrs.Factory(list)
    #: The longest (seconds) a request waits for rpm/tpm room before a 429 comes back.
    limit_wait: float = attrs.field(default=1.0, validator=_not_negative)
    #: Keep a session on one deployment (prompt-cache locality): the session is the
    #: ``x-sluicegate-session`` header (library: ``session=``), else ``prompt_cache_key``,
    #: else ``user``.
    session_affinity: bool = False
    #: How long a session's deployment is remembered after its last request.
    session_ttl: Duration = Duration(3600.0)
    #: Send a ``prompt_cache_key`` to the same deployment while it is usable (rendezvous
    #: hashing over the group), so the provider's prompt cache keeps hitting.
    prompt_cache_affinity: bool = True
    #: Total seconds for one attempt of a request (the OpenAI SDK's default); a caller's own
    #: ``timeout`` bounds all its attempts together.
    timeout: float | None = 600.0
    stream_timeout: float | None = None
    connect_timeout: float | None = 10.0
    #: Seconds until the upstream's response headers arrive; None: bounded by ``timeout``.
    first_byte_timeout: float | None = None
    #: Longest silence between two chunks of a stream; None: bounded by ``timeout``.
    idle_timeout: float | None = None
    #: Total seconds a background response may run (``timeout`` does not apply to one; see
    #: docs/background.md); None: unbounded.
    background_timeout: Duration | None = attrs.field(
        default=Duration(4 * 3600.0), validator=_positive
    )
    retry_backoff_initial: float = 0.5
    retry_backoff_max: float = 8.0
    retry_backoff_jitter: float = 0.5
    #: Longest ``Retry-After`` honoured; a longer one is passed on to the caller instead.
    max_retry_after: float = 60.0
    #: Shared limits (docs/design.md §6.9): the Redis that every instance
    #: counts key and deployment rpm/tpm/parallel limits in (``redis://``, ``rediss://`` or
    #: ``unix://``). Unset, and no ``redis_host``: each process counts its own.
    redis_url: Secret | None = None
    #: LiteLLM's way to name it: host, port and password (``redis_url`` wins).
    redis_host: str | None = None
    redis_port: int = attrs.field(default=6379, validator=_at_least(1))
    redis_password: Secret | None = None
    #: Seconds a Redis call may take before Redis counts as down and the limits fall back to
    #: this process's own count (a request never waits longer on Redis than about twice this).
    redis_timeout: float = attrs.field(default=0.25, validator=_positive)

    def shared_limits_url(self) -> str | None:
        """The Redis URL of the shared limits (``redis_url``, else built from
        ``redis_host``/``redis_port``); None: limits are counted per process."""
        if self.redis_url is not None:
            return self.redis_url.reveal()
        if self.redis_host:
            return f"redis://{self.redis_host}:{self.redis_port}/0"
        return None


#: The event store's backends (``general_settings.store.backend``); ``postgres`` is what a
#: ``general_settings.database_url`` selects.
StoreBackend = Literal["sqlite", "memory", "postgres"]


def _one_of_store_backends(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # The loader's Literal check says the same; this one holds for settings made in code.
    if value not in get_args(StoreBackend):
        _reject(attribute, f"must be one of {', '.join(get_args(StoreBackend))}")


@attrs.frozen(kw_only=True)
class StoreSettings:
    """The event store (docs/design.md §5): the system of record of every response."""

    #: ``sqlite``: the durable store in ``path``. ``memory``: the stateless mode, nothing
    #: written anywhere; the last ``max_responses`` responses are kept while the gateway runs
    #: (one process only: ``sluicegate serve`` refuses ``--workers`` above 1 with it).
    #: ``postgres``: the shared store of many instances, at ``general_settings.database_url``
    #: (setting that URL selects it).
    backend: StoreBackend = attrs.field(default="sqlite", validator=_one_of_store_backends)
    #: The SQLite database file (relative to the working directory), or ``":memory:"`` for a
    #: private store that lives as long as the gateway (tests). Unused by ``memory``.
    path: str = "sluicegate.db"
    #: ``memory``: the most responses whose content is kept (older ones read as purged, their
    #: spend counted). Unused by ``sqlite``.
    max_responses: int = attrs.field(default=10_000, validator=_at_least(1))
    #: Content older than this (seconds, or ``"30d"``) is purged; spend rows stay. None: kept.
    retention: Duration | None = None
    #: How often the retention purge runs (seconds or a duration).
    purge_interval: Duration = Duration(3600.0)
    #: ``previous_response_id`` chains longer than this are refused (400), never read unbounded.
    max_conversation_turns: int = attrs.field(default=100, validator=_at_least(1))
    #: ... and larger than this many bytes of stored items.
    max_conversation_bytes: int = attrs.field(default=32 * 1024 * 1024, validator=_at_least(1))
    #: ``postgres``: an instance that has not renewed its lease for this long is dead: another
    #: instance ends its unfinished responses ``failed`` (crash recovery across machines).
    instance_lease: Duration = attrs.field(default=Duration(15.0), validator=_positive)
    #: ``postgres``: how often an instance renews its lease and looks for dead ones.
    heartbeat_interval: Duration = attrs.field(default=Duration(5.0), validator=_positive)
    #: ``postgres``: commits wait for the database server's flush (its ``synchronous_commit``).
    #: False: faster, and a crash of the database server (never of the gateway) may lose the
    #: last fraction of a second of records.
    synchronous_commit: bool = True


@attrs.frozen(kw_only=True)
class MediaFetchSettings:
    """The gateway fetches an ``https`` image or file URL for a provider that takes none."""

    #: The largest body fetched (bytes); larger is a 400 naming the part.
    max_bytes: int = 20 * 1024 * 1024
    #: Seconds for the whole fetch.
    timeout: Duration = Duration(10.0)
    #: Allow ``http://`` URLs too (default: ``https`` only).
    allow_http: bool = False
    #: Allow private, loopback and link-local addresses (default: refused, so a caller cannot
    #: make the gateway reach its own network).
    allow_private_addresses: bool = False


#: Header names, lower-cased at load (``general_settings.forward_client_headers``).
HeaderNames = NewType("HeaderNames", tuple[str, ...])

#: What the proxy forwards from a client to a native upstream unless configured otherwise:
#: the Responses API's beta opt-ins, the client's own request ID (OpenAI logs it beside
#: ``x-request-id``) and the key that makes a retried POST idempotent.
DEFAULT_FORWARD_CLIENT_HEADERS: tuple[str, ...] = (
    "openai-beta",
    "x-client-request-id",
    "idempotency-key",
)

#: Client headers never forwarded, whatever ``forward_client_headers`` says, and why.
_NEVER_FORWARDED: Mapping[str, str] = {
    # The deployment's credentials and account are the gateway's (the client's key is a key of
    # the gateway, not of the provider); the organization and project choose who is billed.
    **dict.fromkeys(
        (
            "authorization",
            "api-key",
            "x-api-key",
            "x-goog-api-key",
            "cookie",
            "proxy-authorization",
            "openai-organization",
            "openai-project",
        ),
        "a credential or account header: the deployment's own are sent",
    ),
    # Hop-by-hop (RFC 9110 §7.6.1) and framing headers: the gateway's HTTP client writes its own
    # for the body it sends, which is not the body it received.
    **dict.fromkeys(
        (
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "host",
            "expect",
            "content-length",
            "content-encoding",
            "content-type",
            "accept",
            "accept-encoding",
        ),
        "a hop-by-hop or framing header: the gateway writes its own",
    ),
    # The headers that would choose the upstream: the proxy refuses them outright (its
    # FORBIDDEN_HEADERS; a test keeps the two lists together).
    **dict.fromkeys(
        ("api-base", "x-api-base", "base-url", "x-base-url", "x-upstream-url", "api-version"),
        "a routing header: the gateway chooses the upstream",
    ),
}
_OWN_HEADER_PREFIXES = ("x-sluicegate-", "x-litellm-")
#: RFC 9110 §5.1: a field name is a token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


def forward_refusal(name: str) -> str | None:
    """Why a client header (lower-cased name) is never forwarded upstream; None if it may be."""
    if not _HEADER_NAME.fullmatch(name):
        return "not a header name"
    if name.startswith(_OWN_HEADER_PREFIXES):
        return "the gateway's own header (sluicegate's or LiteLLM's), read by the proxy"
    return _NEVER_FORWARDED.get(name)


@attrs.frozen(kw_only=True)
class GeneralSettings:
    #: Keys the HMAC of response IDs. Unset: a random per-process key (IDs die with the process).
    response_id_secret: Secret | None = None
    include_cost_in_streaming_usage: bool = False
    #: Upstream connection pool: at least the expected concurrency (docs/design.md §8).
    max_connections: int = 1000
    max_keepalive_connections: int = 1000
    keepalive_expiry: float = 30.0
    #: ``lean``: sluicegate's HTTP/1.1 transport (flat CPU per request at any concurrency);
    #: ``httpx``: httpx's own (for HTTP/2, or anything the lean one does not speak).
    http_transport: Literal["lean", "httpx"] = "lean"
    #: Where a request's actors run (docs/design.md §2.1). ``fused``: the pure actors are
    #: called in order in the request's own task, with a channel only towards a streaming
    #: caller; ``unfused``: every actor in a task of its own over channels. Same behaviour,
    #: one costs less. The environment variable ``SLUICEGATE_ACTOR_LAYOUT`` overrides it.
    actor_layout: Literal["fused", "unfused"] = "fused"
    store: StoreSettings = attrs.Factory(StoreSettings)
    #: The PostgreSQL database many instances share as their event store
    #: (``postgresql://user:password@host:port/db``); setting it selects the ``postgres``
    #: store backend. ``sluicegate serve`` and ``sluicegate migrate`` also read the
    #: ``DATABASE_URL`` variable when it is unset (as LiteLLM's proxy does); the library never
    #: does, so an application's own database is never taken by surprise.
    database_url: Secret | None = None
    #: The most connections an instance opens to it for reads (the writer has one more).
    database_connection_pool_limit: int = attrs.field(default=8, validator=_at_least(1))
    #: The proxy's admin key (``sluicegate serve``): every route, every response, key admin.
    #: Unset: the proxy refuses to start unless ``allow_unauthenticated`` is true.
    master_key: Secret | None = None
    #: Serve without any key (local development only): every caller is the admin.
    allow_unauthenticated: bool = False
    #: The HTTP server ``sluicegate serve`` runs the proxy on (docs/design.md §6.1).
    #: ``lean`` (the default): sluicegate's own HTTP/1.1 server on httptools' C parser, less
    #: CPU and memory per connection; ``hypercorn``: hypercorn's trio worker (h11, and h2c).
    #: Same app, same behaviour. The environment variable ``SLUICEGATE_HTTP_SERVER`` overrides
    #: it.
    http_server: Literal["lean", "hypercorn"] = "lean"
    #: The largest request body the proxy reads (bytes); larger is a 413.
    max_request_body_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_at_least(1024))
    #: Seconds a client has to send a JSON request body (a 408 after), and the longest pause
    #: between two pieces of a file upload: a stalled or trickling sender holds nothing longer.
    request_body_timeout: Duration = Duration(60.0)
    #: Request bodies read at once; one more is a 503 with Retry-After (slow senders cannot
    #: pile up without bound).
    max_concurrent_body_reads: int = attrs.field(default=512, validator=_at_least(1))
    #: The largest file an upload may send upstream (OpenAI's own limit: 512 MB).
    max_file_bytes: int = 512 * 1024 * 1024
    #: Seconds of upstream silence after which the proxy sends an SSE comment line, so load
    #: balancers do not cut a stream while a model thinks.
    sse_keepalive_interval: Duration = Duration(15.0)
    #: On shutdown, how long in-flight requests may finish before they are ended.
    graceful_shutdown_timeout: Duration = Duration(30.0)
    #: Bridged providers: drop request features the provider lacks (and say which, on the
    #: Response and in a header) instead of refusing them with a 400.
    drop_params: bool = False
    #: Fetching ``https`` images and PDFs for providers that take no URLs (Gemini).
    media_fetch: MediaFetchSettings = attrs.Factory(lambda: MediaFetchSettings())
    #: Client headers the proxy passes on to native upstreams (OpenAI, Azure, Responses
    #: servers; bridged providers never get them), by name. Credentials, hop-by-hop and
    #: framing headers, routing headers and the gateway's own are refused at load
    #: (:func:`forward_refusal`).
    forward_client_headers: HeaderNames = HeaderNames(DEFAULT_FORWARD_CLIENT_HEADERS)
    #: A price file of the user's own (sluicegate's ``prices.json`` format or LiteLLM's
    #: ``model_prices_and_context_window.json``), read at startup; its entries replace the
    #: bundled table's for the same ``provider/model`` (sluicegate/pricing/_file.py).
    pricing_file: str | None = None


@attrs.frozen(kw_only=True)
class GatewayConfig:
    model_list: list[ModelEntry] = attrs.Factory(list)
    router_settings: RouterSettings = attrs.Factory(RouterSettings)
    general_settings: GeneralSettings = attrs.Factory(GeneralSettings)


@attrs.frozen(kw_only=True)
class Timeouts:
    connect: float | None = 10.0
    first_byte: float | None = None
    idle: float | None = None
    total: float | None = 600.0


@attrs.frozen(kw_only=True)
class Deployment:
    """One upstream a group routes to, with everything resolved."""

    id: str
    model_name: str
    provider: str
    model: str
    api_base: str | None
    api_key: Secret | None = None
    api_version: str | None = None
    weight: float = 1.0
    extra_headers: Mapping[str, str] = attrs.Factory(dict)
    price: ModelPrice | None = None
    max_retries: int = 2
    timeouts: Timeouts = attrs.Factory(Timeouts)
    stream_timeouts: Timeouts = attrs.Factory(Timeouts)
    #: Total seconds a background response may run (None: unbounded).
    background_timeout: float | None = 4 * 3600.0
    fake_tokens: int | None = None
    fake_token_delay: float | None = None
    #: ``model_info`` beyond ``id``: per-model facts a bridge reads (its rules table's
    #: overrides, e.g. ``max_output_tokens``, ``reasoning``).
    model_info: Mapping[str, Any] = attrs.Factory(dict)
    #: Drop what the provider cannot take instead of refusing it (docs/bridges.md §10).
    drop_params: bool = False
    #: Offers WebSocket mode (``litellm_params.websocket``, docs/websocket.md).
    websocket: bool = False
    #: Requests and tokens per minute this deployment may take (None: unlimited).
    rpm: int | None = None
    tpm: int | None = None
    #: How a Chat Completions server counts input tokens (``litellm_params.count_tokens``).
    count_tokens: str | None = None


def is_in_process_fake(deployment: Deployment) -> bool:
    """Whether the built-in fake serves this deployment inside the gateway (``fake/…`` with no
    ``api_base``): its upstream is started on demand, and what it made is known to this
    process alone."""
    return deployment.provider == "fake" and deployment.api_base is None


def make_config_converter() -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=True)
    conv.register_structure_hook(Secret, _structure_secret)
    conv.register_structure_hook(Duration, _duration)
    conv.register_structure_hook(HeaderNames, _header_names)

    def structure_model_info(value: Any, _: type) -> ModelInfo:
        if not isinstance(value, Mapping):
            raise TypeError("expected a mapping")
        rest = {k: v for k, v in value.items() if k != "id"}
        mid = value.get("id")
        if mid is not None and not isinstance(mid, str | int):
            raise TypeError("'id' must be a string")
        return ModelInfo(id=None if mid is None else str(mid), extra=rest)

    conv.register_structure_hook(ModelInfo, structure_model_info)
    for strict in (float, int, bool, str):
        conv.register_structure_hook(strict, _strict_scalar(strict))
    return conv


def _structure_secret(value: Any, _: type) -> Secret:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return Secret(value)


def _header_names(value: Any, _: type) -> HeaderNames:
    # A bare string would otherwise be taken as a list of one-letter names.
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of header names")
    return HeaderNames(tuple(v.strip().lower() for v in value))


def _strict_scalar(kind: type) -> Any:
    # cattrs would coerce "2" to 2 or 1 to True; configuration typos deserve an error instead.
    def hook(value: Any, _: type) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return hook


_CONVERTER = make_config_converter()


def load_config(
    source: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str] | None = None,
    database_url_variable: bool = False,
) -> GatewayConfig:
    """Load and validate a configuration from a dict, a YAML file path, or nothing (empty).

    ``database_url_variable``: a ``DATABASE_URL`` variable fills an unset
    ``general_settings.database_url`` (the proxy's commands; never the library's)."""
    if isinstance(source, GatewayConfig):
        return source
    env = os.environ if environ is None else environ
    raw: Any
    if source is None:
        raw = {}
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read configuration: {exc}", path=str(path)) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", path=str(path)) from exc
    else:
        raw = source
    if not isinstance(raw, Mapping):
        raise ConfigError("the configuration must be a mapping")
    resolved = _resolve_env(raw, "", env)
    if database_url_variable and env.get(DATABASE_URL_VARIABLE):
        general = resolved.get("general_settings")
        if general is None or isinstance(general, Mapping):
            general = dict(general or {})
            general.setdefault("database_url", env[DATABASE_URL_VARIABLE])
            resolved = {**resolved, "general_settings": general}
    try:
        config = _CONVERTER.structure(resolved, GatewayConfig)
    except cattrs.BaseValidationError as exc:
        raise _config_error(exc) from exc
    _check(config)
    return config


def _config_error(exc: cattrs.BaseValidationError) -> ConfigError:
    """One error for everything cattrs and the field validators found, under the path of the
    first problem; each further one names its own path."""
    problems: list[tuple[str, str]] = []
    for message in cattrs.transform_error(exc, path="", format_exception=_describe):
        description, _, where = message.rpartition(" @ ")
        problems.append((where.lstrip("."), description))
    if not problems:
        return ConfigError(str(exc))
    (path, first), rest = problems[0], problems[1:]
    text = "; ".join([first, *(f"{where}: {what}" if where else what for where, what in rest)])
    return ConfigError(text, path=path or None)


def _describe(exc: BaseException, kind: Any) -> str:
    """What is wrong with a value: our checks' own words, the choices of a ``Literal``, or
    cattrs' description."""
    if isinstance(exc, _Rejected):
        return str(exc)
    if get_origin(kind) is Literal:
        return f"must be one of {', '.join(map(str, get_args(kind)))}"
    return format_exception(exc, kind)


def _resolve_env(value: Any, path: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        if name not in env:
            raise ConfigError(f"environment variable {name!r} is not set", path=path or None)
        return env[name]
    if isinstance(value, Mapping):
        return {
            k: _resolve_env(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_resolve_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    return value


def _check(config: GatewayConfig) -> None:
    """What no single field's validator can see: values checked against lists or each other."""
    for i, name in enumerate(config.general_settings.forward_client_headers):
        refusal = forward_refusal(name)
        if refusal is not None:
            raise ConfigError(
                f"{name!r} cannot be forwarded: {refusal}",
                path=f"general_settings.forward_client_headers[{i}]",
            )
    seen: dict[str, str] = {}
    for i, entry in enumerate(config.model_list):
        base = f"model_list[{i}]"
        provider, _, model = entry.litellm_params.model.partition("/")
        if not model:
            raise ConfigError(
                "must be 'provider/model' (e.g. 'openai/gpt-4o')",
                path=f"{base}.litellm_params.model",
            )
        if provider not in PROVIDERS:
            raise ConfigError(
                f"provider {provider!r} is not supported (supported: "
                f"{', '.join(sorted(PROVIDERS))})",
                path=f"{base}.litellm_params.model",
            )
        needs_base = provider in CHAT_PROVIDERS and CHAT_PROVIDERS[provider][0] is None
        if needs_base and not entry.litellm_params.api_base:
            raise ConfigError(
                f"{provider} deployments need an api_base (the server's /v1 URL)",
                path=f"{base}.litellm_params",
            )
        if provider == "azure" and not entry.litellm_params.api_base:
            raise ConfigError("azure deployments need an api_base", path=f"{base}.litellm_params")
        if entry.litellm_params.count_tokens is not None and provider not in CHAT_PROVIDERS:
            raise ConfigError(
                "only Chat Completions servers need a way to count input tokens (the other "
                "providers have an endpoint of their own)",
                path=f"{base}.litellm_params.count_tokens",
            )
        dep_id = deployment_id_of(entry)
        if dep_id in seen:
            raise ConfigError(
                f"deployment id {dep_id!r} is also used by {seen[dep_id]}",
                path=f"{base}.model_info.id",
            )
        seen[dep_id] = base
    _check_router(config.router_settings, {e.model_name for e in config.model_list})
    _check_shared_state(config)


#: The URL schemes of ``general_settings.database_url`` and ``router_settings.redis_url``.
_DATABASE_SCHEMES: Final = ("postgresql://", "postgres://")
_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


def _check_shared_state(config: GatewayConfig) -> None:
    gs = config.general_settings
    url = gs.database_url
    if url is not None and not url.reveal().startswith(_DATABASE_SCHEMES):
        # The scheme only: the rest of the URL may hold a password.
        raise ConfigError(
            "must be a PostgreSQL URL (postgresql://user:password@host:port/database)",
            path="general_settings.database_url",
        )
    if url is not None and gs.store.backend == "memory":
        raise ConfigError(
            "the memory backend keeps nothing in a database: unset database_url, or use the "
            "postgres backend",
            path="general_settings.store.backend",
        )
    if url is None and gs.store.backend == "postgres":
        raise ConfigError(
            "the postgres backend needs general_settings.database_url (or, for sluicegate "
            "serve, the DATABASE_URL variable)",
            path="general_settings.store.backend",
        )
    if gs.store.heartbeat_interval >= gs.store.instance_lease:
        raise ConfigError(
            "must be less than instance_lease: an instance renews its lease before it runs out",
            path="general_settings.store.heartbeat_interval",
        )
    redis = config.router_settings.redis_url
    if redis is not None and not redis.reveal().startswith(_REDIS_SCHEMES):
        raise ConfigError(
            "must be a Redis URL (redis://host:port/db, rediss://… or unix://…)",
            path="router_settings.redis_url",
        )


def _check_router(r: RouterSettings, groups: set[str]) -> None:
    base = "router_settings"

    def known(group: str, path: str) -> None:
        if group not in groups:
            raise ConfigError(f"{group!r} is not a model_name in model_list", path=path)

    for i, group in enumerate(r.default_fallbacks):
        known(group, f"{base}.default_fallbacks[{i}]")
    for kind in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
        for i, entry in enumerate(getattr(r, kind)):
            for source, targets in entry.items():
                path = f"{base}.{kind}[{i}].{source}"
                known(source, path)
                for j, target in enumerate(targets):
                    known(target, f"{path}[{j}]")
                    if target == source:
                        raise ConfigError("a group cannot fall back to itself", path=f"{path}[{j}]")


def derive_deployment_id(model_name: str, model: str, api_base: str | None) -> str:
    """A stable ID from the group and non-secret parameters only: rotating a key keeps it."""
    digest = hashlib.sha256(f"{model_name}\0{model}\0{api_base or ''}".encode()).hexdigest()
    return f"dep-{digest[:16]}"


def deployment_id_of(entry: ModelEntry) -> str:
    if entry.model_info.id:
        return entry.model_info.id
    p = entry.litellm_params
    return derive_deployment_id(entry.model_name, p.model, p.api_base)


def _timeouts(p: LiteLLMParams, r: RouterSettings, *, stream: bool) -> Timeouts:
    total = p.timeout if p.timeout is not None else r.timeout
    if stream:
        total = p.stream_timeout or r.stream_timeout or total
    return Timeouts(
        connect=p.connect_timeout if p.connect_timeout is not None else r.connect_timeout,
        first_byte=p.first_byte_timeout
        if p.first_byte_timeout is not None
        else r.first_byte_timeout,
        idle=p.idle_timeout if p.idle_timeout is not None else r.idle_timeout,
        total=total,
    )


def build_deployment(
    entry: ModelEntry,
    router: RouterSettings,
    *,
    environ: Mapping[str, str] | None = None,
    drop_params: bool = False,
) -> Deployment:
    """Resolve one model_list entry; provider environment credentials fill what is unset."""
    env = os.environ if environ is None else environ
    p = entry.litellm_params
    provider, _, model = p.model.partition("/")
    api_base = p.api_base
    api_key = p.api_key
    api_version = p.api_version
    if provider == "openai":
        api_base = api_base or env.get("OPENAI_BASE_URL") or env.get("OPENAI_API_BASE")
        api_base = api_base or "https://api.openai.com/v1"
        if api_key is None and env.get("OPENAI_API_KEY"):
            api_key = Secret(env["OPENAI_API_KEY"])
    elif provider == "azure":
        api_base = api_base or env.get("AZURE_API_BASE")
        if api_key is None and env.get("AZURE_API_KEY"):
            api_key = Secret(env["AZURE_API_KEY"])
        api_version = api_version or env.get("AZURE_API_VERSION")
    elif provider in CHAT_PROVIDERS:
        default_base, key_variable = CHAT_PROVIDERS[provider]
        api_base = api_base or default_base
        if api_key is None and key_variable and env.get(key_variable):
            api_key = Secret(env[key_variable])
    elif provider in MESSAGE_PROVIDERS:
        default_base, key_variable, base_variable = MESSAGE_PROVIDERS[provider]
        api_base = api_base or env.get(base_variable) or default_base
        if api_key is None and env.get(key_variable):
            api_key = Secret(env[key_variable])
    price = None
    if p.input_cost_per_token is not None or p.output_cost_per_token is not None:
        price = ModelPrice(
            input_cost_per_token=p.input_cost_per_token or 0.0,
            output_cost_per_token=p.output_cost_per_token or 0.0,
            cache_read_input_token_cost=p.cache_read_input_token_cost,
            output_cost_per_reasoning_token=p.output_cost_per_reasoning_token,
            source="deployment override",
        )
    return Deployment(
        id=deployment_id_of(entry),
        model_name=entry.model_name,
        provider=provider,
        model=model,
        api_base=api_base.rstrip("/") if api_base else None,
        api_key=api_key,
        api_version=api_version,
        weight=p.weight,
        extra_headers=dict(p.extra_headers or {}),
        price=price,
        max_retries=p.max_retries if p.max_retries is not None else router.num_retries,
        timeouts=_timeouts(p, router, stream=False),
        stream_timeouts=_timeouts(p, router, stream=True),
        background_timeout=p.background_timeout
        if p.background_timeout is not None
        else router.background_timeout,
        fake_tokens=p.fake_tokens,
        fake_token_delay=p.fake_token_delay,
        model_info=dict(entry.model_info.extra),
        drop_params=p.drop_params if p.drop_params is not None else drop_params,
        websocket=p.websocket,
        rpm=p.rpm,
        tpm=p.tpm,
        count_tokens=p.count_tokens,
    )
