"""What the limiters promise, what they answer, and what they report."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from ..config import Deployment

__all__ = [
    "Backend",
    "DeploymentSource",
    "KeyHold",
    "KeyLimiter",
    "KeyLimiterStatistics",
    "Limit",
    "LimitsStatistics",
    "Refused",
    "RedisUnreachable",
    "SharedWindows",
]


class Limit(enum.Enum):
    """Which of a key's limits refused a request (checked in this order)."""

    RPM = "rpm"
    TPM = "tpm"
    PARALLEL = "parallel"


@attrs.frozen(kw_only=True)
class Refused:
    """A key's request was refused: ``limit`` is full for another ``retry_after`` seconds."""

    limit: Limit
    #: Seconds until the window has room again (for parallel requests a guess: when one of
    #: them ends is unknown).
    retry_after: float


class KeyHold(Protocol):
    """An admitted request's place in its key's limits.

    The key manager calls :meth:`release` at most once and never passes a negative count;
    both are sync and never block (a shared limiter queues the work).
    """

    def record_tokens(self, n: int) -> None:
        """Count ``n`` tokens against the key's tokens per minute, from now."""
        ...

    def release(self) -> None:
        """The request ended: it no longer counts against the key's parallel requests."""
        ...


@attrs.frozen(kw_only=True)
class KeyLimiterStatistics:
    #: Keys with rate-limit state in this process.
    tracked_keys: int
    #: This process's admitted requests not released yet.
    in_flight: int


class KeyLimiter(Protocol):
    """Counts each virtual key's requests per minute, tokens per minute and parallel requests.

    A limit of None is no limit. Windows are sliding minutes.
    """

    async def acquire(
        self, key_id: str, *, rpm: int | None, tpm: int | None, parallel: int | None
    ) -> KeyHold | Refused:
        """Admit one request of ``key_id`` (counting it against its rpm at once and against its
        parallel requests until the hold is released), or say which limit refuses it.

        Never raises for a failure of a shared backend: it decides locally instead.
        """
        ...

    def forget(self, key_id: str) -> None:
        """Drop what this process holds of a deleted key (its holds still release)."""
        ...

    def statistics(self) -> KeyLimiterStatistics: ...


class Backend(enum.StrEnum):
    """Where the limits are counted."""

    LOCAL = "local"
    REDIS = "redis"


@attrs.frozen(kw_only=True)
class LimitsStatistics:
    backend: Backend
    #: Redis answers and the limits are shared (always False for the local backend).
    up: bool
    #: Times Redis became unreachable (a failed open counts as one).
    outages: int
    #: Key admissions decided by the local fallback because Redis was unreachable.
    fallbacks: int
    #: Releases and token counts waiting to be written to Redis.
    queued: int
    #: Releases and token counts given up: the queue was full, or Redis failed to take them.
    #: A lost release is undone by the hold's expiry; lost tokens are not counted.
    queue_drops: int
    #: Deployments whose rpm/tpm windows are shared.
    shared_deployments: int
    #: Deployment syncs that reached Redis.
    syncs: int


class SharedWindows(Protocol):
    """One deployment's rpm/tpm windows as a shared-limits sync sees them
    (:class:`sluicegate.actors._health.Health`)."""

    @property
    def deployment(self) -> Deployment: ...

    def share(self) -> None:
        """Count the rpm/tpm limits against windows the sync keeps (from now on)."""
        ...

    def take_unsynced(self) -> tuple[float, float]:
        """Requests and tokens counted here since the last call."""
        ...

    def adopt_shared(
        self,
        now: float,
        requests: Sequence[tuple[int, float]],
        tokens: Sequence[tuple[int, float]],
    ) -> None:
        """Take the cluster's windows (amounts by age in whole seconds, 0 the current one)."""
        ...


class DeploymentSource(Protocol):
    """A router, as a shared-limits sync sees it (:class:`sluicegate.actors._router.Router`)."""

    def deployment_health(self) -> Sequence[SharedWindows]:
        """The live state of every configured deployment."""
        ...

    def now(self) -> float:
        """The clock of its windows."""
        ...


class RedisUnreachable(Exception):
    """Redis failed a call (refused, reset, timed out, an error reply).

    Raised at the one boundary that talks to Redis and always caught inside this package: a
    limiter falls back to local counting, so it never reaches a caller (nor ``errors.py``).
    """
