"""The router (first cut, issue 2): which deployment serves this request.

The decision is one function, :meth:`Router.choose`; the full router (issue 7: strategies,
cooldowns, fallbacks, limits) replaces its body, not its place in the pipeline.

1. A decoded ``previous_response_id`` of a native upstream pins the request to the deployment
   that made it (strict: a native response exists only in the account that created it; DESIGN
   §4). A conversation the event store holds (one a bridged provider made, or one continued on
   a bridged group) prefers that deployment but may move within the group (soft).
2. A configured group: weighted random choice.
3. ``provider/model`` with no configured group: that provider with its environment credentials.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs
import trio

from ..config import (
    CHAT_PROVIDERS,
    MESSAGE_PROVIDERS,
    NATIVE_PROVIDERS,
    PROVIDERS,
    Deployment,
    LiteLLMParams,
    ModelEntry,
    ModelInfo,
    RouterSettings,
    build_deployment,
    is_bridged,
)
from ..errors import InvalidRequestError, NotFoundError
from ..runtime._messages import PreparedCall, Routed

__all__ = ["Router", "run_router"]

#: Resolves a fake deployment to a running built-in fake upstream (an api_base).
FakeResolver = Callable[[Deployment], Awaitable[Deployment]]


@attrs.frozen
class _Group:
    deployments: tuple[Deployment, ...]
    cum_weights: tuple[float, ...]


def _group(deployments: Sequence[Deployment]) -> _Group:
    return _Group(tuple(deployments), tuple(itertools.accumulate(d.weight for d in deployments)))


@attrs.define(eq=False)
class Router:
    _groups: dict[str, _Group]
    _by_id: dict[str, Deployment]
    _settings: RouterSettings
    _random: random.Random
    _resolve_fake: FakeResolver
    _environ: Mapping[str, str] | None = None
    _adhoc: dict[str, Deployment] = attrs.Factory(dict)

    @classmethod
    def from_deployments(
        cls,
        deployments: Sequence[Deployment],
        settings: RouterSettings,
        *,
        rng: random.Random,
        resolve_fake: FakeResolver,
        environ: Mapping[str, str] | None = None,
    ) -> Router:
        groups: dict[str, list[Deployment]] = {}
        for d in deployments:
            groups.setdefault(d.model_name, []).append(d)
        return cls(
            {name: _group(ds) for name, ds in groups.items()},
            {d.id: d for d in deployments},
            settings,
            rng,
            resolve_fake,
            environ,
        )

    @property
    def model_names(self) -> list[str]:
        return sorted(self._groups)

    def deployment(self, deployment_id: str) -> Deployment | None:
        """The configured deployment with this ID, or None."""
        return self._by_id.get(deployment_id)

    def env_deployment(self, provider: str, model: str = "_") -> Deployment | None:
        """A deployment on the provider's environment credentials (zero-config use)."""
        if provider not in _ADHOC_PROVIDERS:
            return None
        return self._adhoc_deployment(f"{provider}/{model}")

    async def route(self, call: PreparedCall) -> Deployment:
        deployment = call.deployment or self.choose(call)
        if deployment.provider == "fake" and deployment.api_base is None:
            deployment = await self._resolve_fake(deployment)
        return deployment

    def choose(self, call: PreparedCall) -> Deployment:
        """The routing decision (sync, no I/O)."""
        group = self._groups.get(call.model)
        previous = call.previous
        if previous is not None and previous.deployment_id:
            if not self.stored_conversation(call):
                return self._pinned(call, group)
            preferred = self.deployment(previous.deployment_id)
            if group is not None and preferred in group.deployments:
                return preferred
        if group is not None:
            return self._random.choices(group.deployments, cum_weights=group.cum_weights)[0]
        return self._adhoc_deployment(call.model)

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
            return all(is_bridged(d.provider) for d in group.deployments)
        provider = call.model.partition("/")[0]
        return provider in PROVIDERS and is_bridged(provider)

    def _pinned(self, call: PreparedCall, group: _Group | None) -> Deployment:
        assert call.previous is not None
        dep_id = call.previous.deployment_id
        pinned = self.deployment(dep_id)
        if pinned is None and dep_id == env_deployment_id(call.previous.provider):
            # Made on the provider's environment credentials: the same account serves any
            # model of that provider the caller names now.
            provider, _, name = call.model.partition("/")
            if group is None and provider == call.previous.provider and name:
                return self._adhoc_deployment(call.model)
            raise InvalidRequestError(
                f"previous_response_id was created on the {call.previous.provider!r} "
                f"environment credentials; continue with a '{call.previous.provider}/<model>' "
                "model name.",
                param="previous_response_id",
            )
        if pinned is None:
            raise NotFoundError(
                f"The deployment that created previous_response_id ({dep_id!r}) is no longer "
                "configured, so that response cannot be continued.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        if group is None or pinned in group.deployments:
            if group is None and pinned.model_name != call.model and "/" not in call.model:
                raise NotFoundError(
                    f"The model '{call.model}' does not exist.",
                    param="model",
                    code="model_not_found",
                )
            return pinned
        # Another group: only a deployment on the same account can see the stored response.
        for d in group.deployments:
            if (d.provider, d.api_base, d.api_key) == (
                pinned.provider,
                pinned.api_base,
                pinned.api_key,
            ):
                return d
        raise InvalidRequestError(
            f"previous_response_id was created by a deployment of model '{pinned.model_name}', "
            f"and no deployment of '{call.model}' shares its account; continue the "
            f"conversation with model '{pinned.model_name}'.",
            param="previous_response_id",
            code="previous_response_not_found",
        )

    def _adhoc_deployment(self, model: str) -> Deployment:
        cached = self._adhoc.get(model)
        if cached is not None:
            return cached
        provider, _, name = model.partition("/")
        if not name or provider not in _ADHOC_PROVIDERS:
            raise NotFoundError(
                f"The model '{model}' does not exist.", param="model", code="model_not_found"
            )
        entry = ModelEntry(
            model_name=model,
            litellm_params=LiteLLMParams(model=model),
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


#: Providers a ``provider/model`` name reaches without configuration: those with a public
#: endpoint (a chat server on the gateway's own network must be configured, never guessed).
_ADHOC_PROVIDERS = (
    NATIVE_PROVIDERS
    | frozenset(MESSAGE_PROVIDERS)
    | frozenset(p for p, (base, _) in CHAT_PROVIDERS.items() if base and base.startswith("https:"))
)


def env_deployment_id(provider: str) -> str:
    """The deployment ID of zero-config calls: one account per provider, the environment's."""
    return f"env:{provider}"


async def run_router(
    router: Router,
    *,
    inbox: trio.MemoryReceiveChannel[PreparedCall],
    outbox: trio.MemorySendChannel[Routed],
) -> None:
    with inbox, outbox:
        async for call in inbox:
            await outbox.send(Routed(call=call, deployment=await router.route(call)))
