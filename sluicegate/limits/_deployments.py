"""The router's deployment windows, shared by periodic sync.

The router chooses synchronously and must stay cheap, so it never waits on Redis: each
deployment's :class:`~sluicegate.actors._health.Health` keeps counting in its own windows, and
every ``sync_interval`` one script call (:data:`~._scripts.SYNC`) adds this instance's new
requests and tokens of each deployment with an rpm or tpm to per-second buckets in Redis and
reads back the cluster's last minute of each. The Health then counts against the cluster's
window plus what it added since (``Health.adopt_shared``).

Staleness: another instance's request reaches Redis within its ``sync_interval`` (plus a round
trip) and this instance's view within its own, so the shared count lags the cluster by at most
two sync intervals and two round trips (about 0.4 s by default); in that lag the cluster may
overshoot a deployment's limit by what the other instances send meanwhile. A sync that fails
leaves the windows as they were: the cluster's last minute ages out and the local counts go
on, so the limits fall back to this instance's own counts within a minute. What an instance
counts while Redis is down is not written later (it would land in the wrong seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from ._interface import DeploymentSource, RedisUnreachable, SharedWindows
from ._scripts import SYNC

if TYPE_CHECKING:
    from ._link import RedisLink

__all__ = ["DeploymentSync"]


@attrs.define(eq=False)
class DeploymentSync:
    """Keeps the shared deployments' windows in step with Redis (module docstring).

    Args:
        link: the Redis connection.
        prefix: of every Redis key it writes.
        interval: seconds between syncs.
        clock: unix seconds for the script instead of the Redis server's clock (tests).
    """

    _link: RedisLink
    _prefix: str
    _interval: float
    _clock: Callable[[], float] | None = attrs.field(default=None, kw_only=True)
    #: The routers sharing, each with its deployments that have an rpm or tpm.
    _shared: list[tuple[DeploymentSource, list[SharedWindows]]] = attrs.field(
        factory=list, init=False
    )
    #: Set when the first router shares (the service task waits on it).
    _started: trio.Event = attrs.field(factory=trio.Event, init=False)
    _syncs: int = attrs.field(default=0, init=False)
    #: One sync at a time: a later one must not adopt its view before an earlier one does.
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    @property
    def deployments(self) -> int:
        return sum(len(windows) for _, windows in self._shared)

    @property
    def syncs(self) -> int:
        return self._syncs

    def share(self, router: DeploymentSource) -> None:
        if any(shared is router for shared, _ in self._shared):
            return
        windows = [
            h
            for h in router.deployment_health()
            if h.deployment.rpm is not None or h.deployment.tpm is not None
        ]
        for h in windows:
            h.share()
        self._shared.append((router, windows))
        self._started.set()

    async def sync_forever(self) -> None:
        """The service task: a sync every interval, once a router shares."""
        await self._started.wait()
        while True:
            await trio.sleep(self._interval)
            await self.sync()

    async def sync(self) -> None:
        """Push this instance's new counts and adopt the cluster's windows, in one call.
        Without Redis, the new counts are dropped (module docstring)."""
        async with self._lock:
            await self._sync()

    async def _sync(self) -> None:
        everything = [(router, h) for router, windows in self._shared for h in windows]
        new = [h.take_unsynced() for _, h in everything]
        if not everything or not self._link.up:
            await trio.lowlevel.checkpoint()
            return
        keys: list[str] = []
        args: list[str | int] = ["" if self._clock is None else str(round(self._clock() * 1e6))]
        for (_, h), (requests, tokens) in zip(everything, new, strict=True):
            base = f"{self._prefix}deployment:{h.deployment.id}:"
            keys += [base + "requests", base + "tokens"]
            args += [round(requests), round(tokens)]
        try:
            reply = await self._link.run(SYNC, keys, args)
        except RedisUnreachable:
            return
        self._syncs += 1
        windows = reply[1:]
        for i, (router, h) in enumerate(everything):
            h.adopt_shared(router.now(), _by_age(windows[2 * i]), _by_age(windows[2 * i + 1]))


def _by_age(flat: Sequence[int]) -> list[tuple[int, float]]:
    return [(int(flat[j]), float(flat[j + 1])) for j in range(0, len(flat), 2)]
