"""The built-in fake provider inside a gateway: deployments ``fake/…`` with no ``api_base``.

Their upstreams run in the gateway's service nursery, started on demand, one per (tokens,
delay). What such an upstream made is known to it alone, in this process (another worker's, or
this one's before a restart, knows nothing of it): the store answers for those responses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from ..fake import FakeUpstream

if TYPE_CHECKING:
    from ..codecs.ids import DecodedId
    from ..config import Deployment
    from ..store import ResponseRow

__all__ = ["FakeProviders"]


@attrs.define(eq=False)
class FakeProviders:
    """Starts built-in fake upstreams on demand, one per (tokens, delay), in the service nursery."""

    _nursery: trio.Nursery
    #: The deployments served in this process (see the module docstring).
    _deployment_ids: frozenset[str] = frozenset()
    _servers: dict[tuple[int, float], FakeUpstream] = attrs.Factory(dict)
    _lock: trio.Lock = attrs.Factory(trio.Lock)

    async def resolve(self, deployment: Deployment) -> Deployment:
        """An in-process fake deployment with the ``api_base`` of its running upstream."""
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

    def serves(self, deployment: Deployment) -> bool:
        """Whether ``deployment`` is an in-process fake (whatever it was resolved to)."""
        return deployment.provider == "fake" and deployment.id in self._deployment_ids

    def made(self, decoded: DecodedId, row: ResponseRow | None) -> bool:
        """Whether an in-process fake deployment made this response (its last attempt)."""
        provider = decoded.provider if row is None or row.provider is None else row.provider
        deployment_id = decoded.deployment_id
        if row is not None and row.deployment_id is not None:
            deployment_id = row.deployment_id
        return provider == "fake" and deployment_id in self._deployment_ids
