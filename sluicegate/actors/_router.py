"""The router: which deployment serves each attempt of a request (docs/design.md §2).

The router decides; the connector acts. The router actor (``_plan.py``) turns a request into a
``RoutePlan`` and its first :class:`Routed` attempt. When an attempt fails before anything
reached the caller, the connector asks the plan for the next one: it answers with another
attempt (and how long to wait first) or gives up by raising the error the caller gets. After
the first event no one asks: a failure ends the response with ``response.failed``.

Choosing, in order:

1. Affinity. A decoded ``previous_response_id`` of a native upstream pins the request to the
   deployment that made it (strict: the response exists only in that account; if the
   deployment is cooling down the error says so, nothing silently goes elsewhere). A
   conversation the event store holds prefers the deployment that made it but may move within
   the group (soft). With ``session_affinity``, a session stays on the deployment it first
   got while that one is healthy (prompt-cache locality). Without it, a ``prompt_cache_key``
   goes to the first usable deployment in that key's rendezvous order (soft, stateless, on by
   default: ``prompt_cache_affinity``), so provider prompt caches keep hitting under load
   balancing.
2. A configured group: the strategy over the deployments whose circuit breaker lets them
   through and whose rpm/tpm have room (``_health.py``): weighted random (``simple-shuffle``),
   fewest requests in flight (``least-busy``), the lower-scored of two random picks over
   averaged time to first byte or total time (``latency-based``, power of two choices), or
   the most rpm/tpm headroom (``usage-based``).
3. ``provider/model`` with no configured group: that provider with its environment credentials.

After a failure, the request's :class:`~._plan.RoutePlan` decides the next attempt
(``_plan.py``), asking this module's :func:`failure_kind`, :func:`may_retry` and
:func:`backoff`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs
import trio

from ..codecs._registry import (
    CHAT_PROVIDERS,
    MESSAGE_PROVIDERS,
    NATIVE_PROVIDERS,
    PROVIDERS,
    is_bridged,
)
from ..config import (
    ROUTING_STRATEGIES,
    Deployment,
    LiteLLMParams,
    ModelEntry,
    ModelInfo,
    RouterSettings,
    build_deployment,
    is_in_process_fake,
)
from ..errors import (
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    SluicegateError,
    UpstreamError,
    UpstreamStatusError,
)
from ..pricing import PriceTable
from ..runtime._messages import Pin, PreparedCall
from ._health import BreakerState, DeploymentStatistics, Health, counts_against

__all__ = [
    "Router",
    "RouterStatistics",
    "backoff",
    "failure_kind",
    "may_retry",
    "rendezvous_order",
]

#: Resolves a fake deployment to a running built-in fake upstream (an api_base).
FakeResolver = Callable[[Deployment], Awaitable[Deployment]]

#: Sessions remembered at most (the oldest are forgotten first).
MAX_SESSIONS = 100_000

#: ``prompt_cache_key`` orders remembered at most (the least recently used are forgotten).
MAX_CACHE_KEYS = 100_000

#: Usage-based routing compares every deployment of a group up to this size, and two random
#: ones above it (reading a deployment's rpm/tpm windows costs too much to read a hundred).
EXACT_USAGE_SCAN = 16

#: The header that names a session (proxy) — the library's ``session=`` option.
SESSION_HEADER = "x-sluicegate-session"


@attrs.frozen
class _Group:
    name: str
    health: tuple[Health, ...]
    cum_weights: tuple[float, ...]


def _group(name: str, health: Sequence[Health]) -> _Group:
    weights = itertools.accumulate(h.deployment.weight for h in health)
    return _Group(name, tuple(health), tuple(weights))


@attrs.frozen(kw_only=True)
class RouterStatistics:
    deployments: tuple[DeploymentStatistics, ...]
    #: Deployments whose breaker is open or half-open now.
    cooling: int
    sessions: int


class Unavailable(Exception):
    """No deployment of a group may take the request now; ``error`` says why to the caller,
    ``wait`` is when one will have rpm/tpm room (None: they are cooling)."""

    def __init__(self, error: SluicegateError, wait: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.wait = wait


@attrs.define(eq=False)
class Router:
    _groups: dict[str, _Group]
    _by_id: dict[str, Deployment]
    _health: dict[str, Health]
    _settings: RouterSettings
    _random: random.Random
    _resolve_fake: FakeResolver
    _environ: Mapping[str, str] | None = None
    _clock: Callable[[], float] = trio.current_time
    _adhoc: dict[str, Deployment] = attrs.Factory(dict)
    #: (group, session) -> (deployment ID, when the entry expires).
    _sessions: OrderedDict[tuple[str, str], tuple[str, float]] = attrs.Factory(OrderedDict)
    #: (group, prompt_cache_key) -> the group in rendezvous order for that key (most recently
    #: used last; at most MAX_CACHE_KEYS are kept, and any is recomputed the same way).
    _cache_orders: OrderedDict[tuple[str, str], tuple[Health, ...]] = attrs.Factory(OrderedDict)

    @classmethod
    def from_deployments(
        cls,
        deployments: Sequence[Deployment],
        settings: RouterSettings,
        *,
        rng: random.Random,
        resolve_fake: FakeResolver,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> Router:
        by_group: dict[str, list[Deployment]] = {}
        for d in deployments:
            by_group.setdefault(d.model_name, []).append(d)
        health: dict[str, Health] = {}
        groups: dict[str, _Group] = {}
        for name, members in by_group.items():
            hs = [Health(d, settings, may_cool=len(members) > 1) for d in members]
            health.update((h.deployment.id, h) for h in hs)
            groups[name] = _group(name, hs)
        return cls(
            groups,
            {d.id: d for d in deployments},
            health,
            settings,
            rng,
            resolve_fake,
            environ,
            clock,
        )

    # -- what the gateway asks -----------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        return sorted(self._groups)

    def deployment(self, deployment_id: str) -> Deployment | None:
        """The configured deployment with this ID, or None."""
        return self._by_id.get(deployment_id)

    def deployments(self) -> list[Deployment]:
        """Every configured deployment."""
        return list(self._by_id.values())

    def group(self, model: str) -> list[Deployment] | None:
        """The deployments of a configured model group, or None."""
        group = self._groups.get(model)
        return None if group is None else [h.deployment for h in group.health]

    def pick(self, deployments: Sequence[Deployment]) -> Deployment:
        """One of ``deployments`` by weight, preferring those whose breaker lets them through
        (files and batches: a deployment chosen for a new object)."""
        now = self._clock()
        usable = [d for d in deployments if self.health(d).available(now)] or list(deployments)
        return self._random.choices(usable, [d.weight for d in usable])[0]

    def env_deployment(self, provider: str, model: str = "_") -> Deployment | None:
        """A deployment on the provider's environment credentials (zero-config use)."""
        if provider not in _ADHOC_PROVIDERS:
            return None
        return self._adhoc_deployment(f"{provider}/{model}")

    def statistics(self) -> RouterStatistics:
        now = self._clock()
        deployments = tuple(h.statistics(now) for h in self._health.values())
        return RouterStatistics(
            deployments=deployments,
            cooling=sum(d.state is not BreakerState.CLOSED for d in deployments),
            sessions=len(self._sessions),
        )

    def choose(self, call: PreparedCall, *, exclude: frozenset[str] = frozenset()) -> Deployment:
        """The routing decision for ``call.model`` (sync, no I/O), skipping ``exclude``.

        Raises:
            NotFoundError: no such model; the pinned deployment is gone.
            InvalidRequestError: the pinned response cannot continue in this group.
            Unavailable: nothing in the group may take it now.
        """
        group = self._groups.get(call.model)
        previous = call.previous
        now = self._clock()
        pins = self.pins(call)
        if pins:
            return self._pinned(call, group, now, pins)
        if previous is not None and previous.deployment_id:
            preferred = self._health.get(previous.deployment_id)
            if (
                group is not None
                and preferred is not None
                and preferred in group.health
                and preferred.deployment.id not in exclude
                and self.usable(preferred, now)
            ):
                return preferred.deployment
        if group is None:
            return self._adhoc_deployment(call.model)
        session = self._session_key(call)
        if session is not None:
            kept = self._session_deployment(group, session, now, exclude)
            if kept is not None:
                return kept.deployment
        elif self._settings.prompt_cache_affinity and len(group.health) > 1:
            key = call.body.get("prompt_cache_key")
            if isinstance(key, str) and key:
                cached = self._cache_deployment(group, key, now, exclude)
                if cached is not None:
                    return cached.deployment
        health = self._pick(group, call.stream, exclude, now)
        if health is None:
            raise self._unavailable(group, exclude, now)
        if session is not None:
            self._remember(group, session, health, now)
        return health.deployment

    def stored_conversation(self, call: PreparedCall) -> bool:
        """Whether ``previous_response_id`` is continued from the event store: the previous
        response came from a bridged provider, or every deployment that may serve this request
        is bridged (a native upstream continues its own conversations, by ID)."""
        if call.previous is None:
            return False
        if is_bridged(call.previous.provider):
            return True
        group = self._groups.get(call.model)
        if group is not None:
            return all(is_bridged(h.deployment.provider) for h in group.health)
        provider = call.model.partition("/")[0]
        return provider in PROVIDERS and is_bridged(provider)

    def fallbacks(self, group: str, kind: str) -> list[str]:
        """The groups a request of ``group`` falls back to after a ``kind`` failure
        (``fallbacks``, ``context_window_fallbacks`` or ``content_policy_fallbacks``)."""
        for entry in getattr(self._settings, kind):
            if group in entry:
                return list(entry[group])
        if kind == "fallbacks":
            return [g for g in self._settings.default_fallbacks if g != group]
        return []

    # -- what the connector and the accountant report ------------------------------------

    def health(self, deployment: Deployment) -> Health:
        """The live state of a deployment (one for each ad hoc ``provider/model`` too)."""
        health = self._health.get(deployment.id)
        if health is None or health.deployment.model != deployment.model:
            health = self._health.get(f"{deployment.id}/{deployment.model}")
            if health is None:
                health = Health(deployment, self._settings)
                self._health[f"{deployment.id}/{deployment.model}"] = health
        return health

    def deployment_health(self) -> list[Health]:
        """The live state of every configured deployment (what shared limits sync; ad hoc
        deployments have no rpm or tpm)."""
        return [h for group in self._groups.values() for h in group.health]

    def now(self) -> float:
        return self._clock()

    @property
    def settings(self) -> RouterSettings:
        return self._settings

    @property
    def rng(self) -> random.Random:
        """The random source of its choices and of the retries' jitter."""
        return self._random

    def used_tokens(self, deployment: Deployment, tokens: int) -> None:
        self.health(deployment).used_tokens(self._clock(), tokens)

    # -- the strategies ------------------------------------------------------------------

    def usable(self, h: Health, now: float) -> bool:
        if not h.available(now):
            return False
        d = h.deployment
        return (d.rpm is None and d.tpm is None) or h.limited_for(now) == 0.0

    def _pick(
        self, group: _Group, stream: bool, exclude: frozenset[str], now: float
    ) -> Health | None:
        strategy = ROUTING_STRATEGIES[self._settings.routing_strategy]
        rng = self._random
        members = group.health
        if strategy == "simple-shuffle":
            if not exclude:
                # The common case in O(1): a weighted draw that is usable as it is.
                h = rng.choices(members, cum_weights=group.cum_weights)[0]
                if self.usable(h, now):
                    return self.claim(h)
            usable = self._candidates(group, exclude, now)
            if not usable:
                return None
            return self.claim(rng.choices(usable, [h.deployment.weight for h in usable])[0])
        if strategy == "latency-based":
            if not exclude and len(members) > 2:
                a, b = rng.sample(members, 2)
                if self.usable(a, now) and self.usable(b, now):
                    return self.claim(_better(a, b, stream))
            usable = self._candidates(group, exclude, now)
            if len(usable) < 2:
                return self.claim(usable[0]) if usable else None
            a, b = rng.sample(usable, 2)
            return self.claim(_better(a, b, stream))
        if strategy == "least-busy":
            # One pass from a random place (ties go to a random one). A deployment busier
            # than the best so far is skipped before its availability is even looked at,
            # which keeps a pick over a hundred deployments to a few microseconds.
            n = len(members)
            start = rng.randrange(n)
            best: Health | None = None
            least = math.inf
            for i in range(start, start + n):
                h = members[i % n]
                if h.in_flight >= least:
                    continue
                if exclude and h.deployment.id in exclude:
                    continue
                if self.usable(h, now):
                    best, least = h, h.in_flight
            return self.claim(best) if best is not None else None
        # usage-based: the most headroom under the limits; without limits, the fewest tokens.
        # Exact over a small group; over a large one the better of two random picks (the
        # power of two choices), so a pick stays O(1) however many deployments there are.
        usable = self._candidates(group, exclude, now) if len(members) <= EXACT_USAGE_SCAN else []
        if len(members) > EXACT_USAGE_SCAN:
            if not exclude:
                a, b = rng.sample(members, 2)
                if self.usable(a, now) and self.usable(b, now):
                    return self.claim(min((a, b), key=lambda h: _usage_key(h, now)))
            usable = self._candidates(group, exclude, now)
            if len(usable) > 2:
                usable = rng.sample(usable, 2)
        if not usable:
            return None
        start = rng.randrange(len(usable))
        rotated = usable[start:] + usable[:start]
        return self.claim(min(rotated, key=lambda h: _usage_key(h, now)))

    def _candidates(self, group: _Group, exclude: frozenset[str], now: float) -> list[Health]:
        return [h for h in group.health if h.deployment.id not in exclude and self.usable(h, now)]

    def claim(self, h: Health) -> Health:
        h.claim(self._clock())
        return h

    def _unavailable(self, group: _Group, exclude: frozenset[str], now: float) -> Unavailable:
        """Why nothing in ``group`` may take a request now, for the caller."""
        open_members = [h for h in group.health if h.deployment.id not in exclude]
        waits = [h.limited_for(now) for h in open_members if h.available(now)]
        if waits:
            wait = min(waits)
            return Unavailable(
                _retry_later(
                    RateLimitError,
                    f"Every deployment of model '{group.name}' is at its rpm/tpm limit.",
                    wait,
                    code="rate_limit_exceeded",
                ),
                wait,
            )
        if not open_members:
            # Every deployment failed this request already.
            return Unavailable(
                _retry_later(
                    ServiceUnavailableError,
                    f"Every deployment of model '{group.name}' failed this request.",
                    0.0,
                ),
                None,
            )
        cooling = [h.open_until - now for h in open_members]
        return Unavailable(
            _retry_later(
                ServiceUnavailableError,
                f"Every deployment of model '{group.name}' is cooling down after failures.",
                max(0.0, min(cooling)),
            ),
            None,
        )

    # -- affinity ------------------------------------------------------------------------

    def _session_key(self, call: PreparedCall) -> str | None:
        if not self._settings.session_affinity:
            return None
        if call.session is not None:
            return call.session
        for name in ("prompt_cache_key", "user"):
            value = call.body.get(name)
            if isinstance(value, str) and value:
                return value
        return None

    def _session_deployment(
        self, group: _Group, session: str, now: float, exclude: frozenset[str]
    ) -> Health | None:
        entry = self._sessions.get((group.name, session))
        if entry is None or entry[1] <= now:
            return None
        h = self._health.get(entry[0])
        if h is None or h.deployment.id in exclude or not self.usable(h, now):
            return None  # soft: a new pick below replaces it
        self._remember(group, session, h, now)
        return self.claim(h)

    def _cache_deployment(
        self, group: _Group, key: str, now: float, exclude: frozenset[str]
    ) -> Health | None:
        """The deployment a ``prompt_cache_key`` belongs to: the first usable one in the key's
        rendezvous order (highest random weight), so the same key keeps reaching the same
        provider cache while that deployment is healthy, falls to the next one while it is not,
        and comes back after, with no state to share between instances."""
        slot = (group.name, key)
        order = self._cache_orders.get(slot)
        if order is None:
            order = self._cache_orders[slot] = rendezvous_order(group.health, key)
            if len(self._cache_orders) > MAX_CACHE_KEYS:
                self._cache_orders.popitem(last=False)
        else:
            self._cache_orders.move_to_end(slot)
        for h in order:
            if h.deployment.id not in exclude and self.usable(h, now):
                return self.claim(h)
        return None

    def _remember(self, group: _Group, session: str, h: Health, now: float) -> None:
        key = (group.name, session)
        self._sessions[key] = (h.deployment.id, now + self._settings.session_ttl)
        self._sessions.move_to_end(key)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

    def pins(self, call: PreparedCall) -> tuple[Pin, ...]:
        """What pins ``call`` to a deployment: a native ``previous_response_id`` (only its
        account knows that response) and the replayed state the gateway found in its input."""
        previous = call.previous
        if previous is None or not previous.deployment_id or self.stored_conversation(call):
            return call.pins
        return (_previous_pin(previous.deployment_id), *call.pins)

    def bridged_only(self, model: str) -> bool:
        """Whether every deployment that may serve ``model`` is a bridged provider (which
        reads no native provider state: it continues from the event store instead)."""
        group = self._groups.get(model)
        if group is not None:
            return all(is_bridged(h.deployment.provider) for h in group.health)
        provider = model.partition("/")[0]
        return provider in PROVIDERS and is_bridged(provider)

    def _pinned(
        self, call: PreparedCall, group: _Group | None, now: float, pins: Sequence[Pin]
    ) -> Deployment:
        """The one deployment every pin of ``call`` allows; state from two accounts is a 400."""
        first = self._account(pins[0].deployment_id)
        for pin in pins[1:]:
            if self._account(pin.deployment_id) != first:
                raise InvalidRequestError(
                    f"'{pins[0].param}' and '{pin.param}' come from two different deployments "
                    f"({pins[0].deployment_id!r} and {pin.deployment_id!r}); provider state "
                    "can only be replayed to the account that issued it, so one request "
                    "cannot carry both.",
                    param=pin.param,
                    code="mixed_provider_state",
                )
        return self._strict(self._pin_target(call, group, pins[0]), now, pins[0])

    def _account(self, deployment_id: str) -> tuple[object, ...]:
        """Who can read a deployment's state: its provider account (a removed deployment,
        or the environment's credentials, is an account of its own)."""
        d = self.deployment(deployment_id)
        if d is None:
            return (deployment_id,)
        return (d.provider, d.api_base, d.api_key)

    def _pin_target(self, call: PreparedCall, group: _Group | None, pin: Pin) -> Deployment:
        dep_id = pin.deployment_id
        pinned = self.deployment(dep_id)
        provider = _provider_of_env_id(dep_id)
        if pinned is None and provider is not None:
            # Made on the provider's environment credentials: the same account serves any
            # model of that provider the caller names now.
            if group is None and self.adhoc_provider(call.model) == provider:
                return self._adhoc_deployment(call.model)
            raise InvalidRequestError(
                f"{pin.param} was {pin.verb} on the {provider!r} environment credentials; "
                f"continue with a '{provider}/<model>' model name.",
                param=pin.param,
            )
        if pinned is None:
            raise NotFoundError(
                f"The deployment that {pin.verb} {pin.param} ({dep_id!r}) is no longer "
                "configured, so nothing can read it.",
                param=pin.param,
                code=pin.gone_code,
            )
        if group is None or any(h.deployment is pinned for h in group.health):
            if group is None and pinned.model_name != call.model and "/" not in call.model:
                raise NotFoundError(
                    f"The model '{call.model}' does not exist.",
                    param="model",
                    code="model_not_found",
                )
            return pinned
        # Another group: only a deployment on the same account can read the state.
        for h in group.health:
            d = h.deployment
            if (d.provider, d.api_base, d.api_key) == (
                pinned.provider,
                pinned.api_base,
                pinned.api_key,
            ):
                return d
        raise InvalidRequestError(
            f"{pin.param} was {pin.verb} by a deployment of model '{pinned.model_name}', "
            f"and no deployment of '{call.model}' shares its account; continue the "
            f"conversation with model '{pinned.model_name}'.",
            param=pin.param,
            code=pin.gone_code,
        )

    def _strict(self, d: Deployment, now: float, pin: Pin) -> Deployment:
        """A pinned deployment, or why it cannot take the request now: only its account
        can read the state, so nothing else may answer for it."""
        h = self.health(d)
        if not h.available(now):
            raise Unavailable(
                _retry_later(
                    ServiceUnavailableError,
                    f"The deployment that {pin.verb} {pin.param} ({d.id!r}) is cooling "
                    "down after failures, and only it can continue that response.",
                    max(0.0, h.open_until - now),
                    param=pin.param,
                ),
                None,
            )
        wait = h.limited_for(now) if (d.rpm is not None or d.tpm is not None) else 0.0
        if wait > 0:
            raise Unavailable(
                _retry_later(
                    RateLimitError,
                    f"The deployment that {pin.verb} {pin.param} ({d.id!r}) is at its "
                    "rpm/tpm limit, and only it can continue that response.",
                    wait,
                    code="rate_limit_exceeded",
                ),
                wait,
            )
        self.claim(h)
        return d

    def adhoc_provider(self, model: str) -> str | None:
        """The provider an unconfigured model name reaches on environment credentials:
        ``provider/model``; with no ``model_list`` at all (zero-config use), also a bare name,
        the provider whose models the bundled price table lists it among, else OpenAI (as
        LiteLLM resolves ``gpt-4.1`` or ``o3``). None: no such model."""
        provider, _, name = model.partition("/")
        if name:
            return provider if provider in _ADHOC_PROVIDERS else None
        if self._groups or not model:
            return None  # a configured gateway serves its groups, never a guess
        return bare_model_provider(model)

    def _adhoc_deployment(self, model: str) -> Deployment:
        cached = self._adhoc.get(model)
        if cached is not None:
            return cached
        provider = self.adhoc_provider(model)
        if provider is None:
            raise NotFoundError(
                f"The model '{model}' does not exist.", param="model", code="model_not_found"
            )
        entry = ModelEntry(
            model_name=model,
            litellm_params=LiteLLMParams(model=model if "/" in model else f"{provider}/{model}"),
            model_info=ModelInfo(id=env_deployment_id(provider)),
        )
        deployment = build_deployment(entry, self._settings, environ=self._environ)
        if deployment.provider == "azure" and deployment.api_base is None:
            raise InvalidRequestError(
                f"The model '{model}' needs AZURE_API_BASE in the environment or a configured "
                "deployment with an api_base.",
                param="model",
            )
        self._adhoc[model] = deployment
        return deployment

    async def resolved(self, deployment: Deployment) -> Deployment:
        if is_in_process_fake(deployment):
            return await self._resolve_fake(deployment)
        return deployment


def rendezvous_order(members: Sequence[Health], key: str) -> tuple[Health, ...]:
    """``members`` in weighted rendezvous order for ``key``: each deployment scores
    ``weight / -ln(u)`` with ``u`` a uniform hash of (key, deployment ID), highest first. A
    deployment leaving or joining moves only the keys it wins; weights share keys in
    proportion."""

    def score(h: Health) -> float:
        digest = hashlib.blake2b(
            f"{h.deployment.id}\0{key}".encode(), digest_size=8, person=b"sg-cache"
        ).digest()
        u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
        return h.deployment.weight / -math.log(u)

    return tuple(sorted(members, key=score, reverse=True))


def _usage_key(h: Health, now: float) -> tuple[float, float]:
    return (-h.headroom(now), h.tokens_used(now))


def _better(a: Health, b: Health, stream: bool) -> Health:
    return b if b.score(stream=stream) < a.score(stream=stream) else a


def may_retry(settings: RouterSettings, error: BaseException) -> bool:
    """Whether trying the same upstream again after ``error`` may help: a retryable upstream
    error whose ``Retry-After``, if it gave one, is within ``max_retry_after`` (a longer one is
    the caller's to handle). The router's retries and the connector's lookups both ask."""
    if not isinstance(error, UpstreamError) or not error.retryable:
        return False
    return error.retry_after is None or error.retry_after <= settings.max_retry_after


def backoff(
    settings: RouterSettings, failed_attempts: int, error: BaseException | None, rng: random.Random
) -> float:
    """Seconds to wait after ``failed_attempts`` failed attempts, the last with ``error``: its
    ``Retry-After`` when it gave one, else exponential back-off with jitter; never less than
    ``retry_after``. The one back-off of the router's retries and the connector's lookups."""
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, UpstreamError) and retry_after is not None:
        delay = float(retry_after)
    else:
        exponential: float = settings.retry_backoff_initial * 2 ** (failed_attempts - 1)
        delay = min(settings.retry_backoff_max, exponential) + rng.uniform(
            0.0, settings.retry_backoff_jitter
        )
    return max(settings.retry_after, delay)


_CONTEXT_WINDOW = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long|input is too long|"
    r"too many (input )?tokens|exceeds? the (maximum|max) (number of )?tokens|"
    r"input token count.*exceeds",
    re.IGNORECASE,
)
_CONTENT_POLICY = re.compile(
    r"content[ _-]?(management[ _-]?)?(policy|filter)|safety (system|filter)|"
    r"flagged as potentially violating",
    re.IGNORECASE,
)


def failure_kind(error: SluicegateError) -> str | None:
    """What a failure calls for: ``"context_window_fallbacks"``, ``"content_policy_fallbacks"``,
    ``"retry"`` (the deployment failed: another may do), or None (the request itself was
    refused, or the gateway's own error: trying elsewhere would not help)."""
    if isinstance(error, UpstreamStatusError) and error.status_code in (400, 413, 422):
        text = f"{error.code or ''} {error.message}"
        if error.code in ("context_length_exceeded", "string_above_max_length") or (
            _CONTEXT_WINDOW.search(text)
        ):
            return "context_window_fallbacks"
        if error.code in ("content_policy_violation", "content_filter") or (
            _CONTENT_POLICY.search(text)
        ):
            return "content_policy_fallbacks"
        return None
    if counts_against(error):
        return "retry"
    return None


def _retry_later(
    cls: type[SluicegateError],
    message: str,
    seconds: float,
    *,
    code: str | None = None,
    param: str | None = None,
) -> SluicegateError:
    # Rounded to microseconds before the ceiling: float sums must not turn 5 s into 6.
    whole = max(1, math.ceil(round(seconds, 6)))
    return cls(
        f"{message} Please try again in {whole}s.",
        code=code,
        param=param,
        headers={"Retry-After": str(whole)},
    )


#: Providers a ``provider/model`` name reaches without configuration: those with a public
#: endpoint (a chat server on the gateway's own network must be configured, never guessed).
_ADHOC_PROVIDERS = (
    NATIVE_PROVIDERS
    | frozenset(MESSAGE_PROVIDERS)
    | frozenset(p for p, (base, _) in CHAT_PROVIDERS.items() if base and base.startswith("https:"))
)


def _previous_pin(deployment_id: str) -> Pin:
    return Pin(
        deployment_id=deployment_id,
        param="previous_response_id",
        verb="created",
        gone_code="previous_response_not_found",
    )


def _provider_of_env_id(deployment_id: str) -> str | None:
    """The provider whose environment credentials ``deployment_id`` names, else None."""
    provider = deployment_id.removeprefix(env_deployment_id(""))
    return provider if provider != deployment_id and provider in PROVIDERS else None


#: Providers whose model names the bundled price table may claim for a bare name.
_BARE_NAME_PROVIDERS = ("openai", "anthropic", "gemini")


def bare_model_provider(model: str) -> str:
    """The provider of a bare model name (no ``provider/`` prefix): the first whose priced
    models include it, else ``openai`` (the Responses API's own)."""
    table = PriceTable.bundled()
    for provider in _BARE_NAME_PROVIDERS:
        if table.lookup(provider, model) is not None:
            return provider
    return "openai"


def env_deployment_id(provider: str) -> str:
    """The deployment ID of zero-config calls: one account per provider, the environment's."""
    return f"env:{provider}"
