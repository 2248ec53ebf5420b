"""Opening the limits: local only, or shared on Redis with its service tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ..errors import ConfigError
from ._deployments import DeploymentSync
from ._interface import Backend, DeploymentSource, KeyLimiter, LimitsStatistics
from ._local import LocalKeyLimiter
from ._redis import RedisKeyLimiter

if TYPE_CHECKING:
    from ._link import RedisLink

__all__ = ["Limits", "open_limits"]

_SCHEMES: Final = ("redis://", "rediss://", "unix://")


@attrs.frozen
class _Shared:
    """What the limits hold with Redis."""

    link: RedisLink
    keys: RedisKeyLimiter
    sync: DeploymentSync


@attrs.define(eq=False)
class Limits:
    """The rate limits of one gateway instance: its keys' limiter, and the sync of its
    routers' deployment windows (shared on Redis, or this process's own)."""

    #: What ``KeyManager(limiter=...)`` takes.
    keys: KeyLimiter
    _shared: _Shared | None = None

    def share_deployments(self, router: DeploymentSource) -> None:
        """Count the rpm/tpm of ``router``'s deployments across the instances sharing Redis
        (synced every ``sync_interval``); without Redis, nothing changes."""
        if self._shared is not None:
            self._shared.sync.share(router)

    async def sync_now(self) -> None:
        """Sync the shared deployment windows now (what the service task does every
        ``sync_interval``); without Redis, a checkpoint."""
        if self._shared is None:
            await trio.lowlevel.checkpoint()
        else:
            await self._shared.sync.sync()

    async def flush(self) -> None:
        """Write the queued releases and token counts to Redis now (what a service task does
        as they come); without Redis, a checkpoint."""
        if self._shared is None:
            await trio.lowlevel.checkpoint()
        else:
            await self._shared.keys.flush()

    def on_fallback(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (sync, quick) at each key admission decided locally because Redis
        was unreachable (a metrics counter); never called without Redis."""
        if self._shared is not None:
            self._shared.keys.on_fallback(listener)

    def statistics(self) -> LimitsStatistics:
        shared = self._shared
        if shared is None:
            return LimitsStatistics(
                backend=Backend.LOCAL,
                up=False,
                outages=0,
                fallbacks=0,
                queued=0,
                queue_drops=0,
                shared_deployments=0,
                syncs=0,
            )
        return LimitsStatistics(
            backend=Backend.REDIS,
            up=shared.link.up,
            outages=shared.link.outages,
            fallbacks=shared.keys.fallbacks,
            queued=shared.keys.queued,
            queue_drops=shared.keys.queue_drops,
            shared_deployments=shared.sync.deployments,
            syncs=shared.sync.syncs,
        )


@asynccontextmanager
async def open_limits(
    redis_url: str | None,
    *,
    password: str | None = None,
    nursery: trio.Nursery | None = None,
    timeout: float = 0.25,  # noqa: ASYNC109 -- each Redis call's deadline, not the opening's
    sync_interval: float = 0.2,
    prefix: str = "sluicegate:",
    hold_lifetime: float = 3600.0,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Limits]:
    """Open the rate limits: per process without a URL, else shared by every gateway instance
    that uses the same Redis (and prefix), with a local fallback while Redis is unreachable.

    Opening never fails because Redis is down: the limits start on the fallback and switch to
    Redis when it answers. On exit the service tasks stop and what is still queued is written
    (within ``timeout``; what is not is undone by expiry).

    Args:
        redis_url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS) or
            ``unix:///path/to/socket[?db=N]``; None: count in this process only (coredis is
            not imported).
        password: Redis's password when the URL holds none.
        nursery: the gateway's service nursery to run the service tasks in (flushing the
            queue, probing a Redis that went down, syncing deployments); by default the limits
            open their own.
        timeout: seconds a Redis call may take before Redis counts as down and the limits fall
            back (an admission waits at most twice that: a flush of its key's queued work,
            then its own call).
        sync_interval: seconds between two syncs of the shared deployment windows.
        prefix: of every Redis key written; instances share limits when they share it.
        hold_lifetime: seconds after which a parallel-request hold never released (its
            instance crashed) stops counting.
        clock: unix seconds for the Redis scripts instead of the server's clock (tests drive
            the windows with it); None: the Redis server's ``TIME``, one clock for every
            instance.

    Raises:
        ConfigError: the URL is not a Redis URL, or coredis is not installed.
        ValueError: a negative or NaN timing.
    """
    for name, value in (
        ("timeout", timeout),
        ("sync_interval", sync_interval),
        ("hold_lifetime", hold_lifetime),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be positive")
    if redis_url is None:
        await trio.lowlevel.checkpoint()
        yield Limits(LocalKeyLimiter())
        return
    if not redis_url.startswith(_SCHEMES):
        raise ConfigError("the Redis URL must begin with redis://, rediss:// or unix://")
    try:
        from ._link import open_link
    except ImportError as exc:
        raise ConfigError(
            "Shared rate limits on Redis need the coredis package: pip install 'sluicegate[redis]'"
        ) from exc
    async with (
        open_link(redis_url, password=password, call_timeout=timeout) as link,
        trio.open_nursery() as own,
    ):
        keys = RedisKeyLimiter(link, prefix, hold_lifetime=hold_lifetime, clock=clock)
        sync = DeploymentSync(link, prefix, sync_interval, clock=clock)
        services = await (nursery or own).start(_serve, link, keys, sync)
        try:
            yield Limits(keys, _Shared(link, keys, sync))
        finally:
            services.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(timeout):
                await keys.flush()


async def _serve(
    link: RedisLink,
    keys: RedisKeyLimiter,
    sync: DeploymentSync,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as tasks:
            tasks.start_soon(link.probe_forever)
            tasks.start_soon(keys.flush_forever)
            tasks.start_soon(sync.sync_forever)
            task_status.started(scope)
