"""Key limits counted in this process alone: each key's last minute and its requests in flight."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

import attrs
import trio

from ._interface import KeyHold, KeyLimiterStatistics, Limit, Refused

__all__ = ["WINDOW", "LocalKeyLimiter"]

#: The rate limits' sliding window (seconds).
WINDOW: Final = 60.0


@attrs.define(eq=False)
class _Usage:
    """One key's load in this process: its last minute and its requests in flight."""

    #: Clock readings of the admitted requests of the window (kept with an rpm only).
    requests: deque[float] = attrs.Factory(deque)
    #: (time, tokens) recorded in the window (kept with a tpm only).
    tokens: deque[tuple[float, int]] = attrs.Factory(deque)
    token_sum: int = 0
    in_flight: int = 0

    def expire(self, now: float) -> None:
        """Drop what left the window."""
        while self.requests and self.requests[0] + WINDOW <= now:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] + WINDOW <= now:
            self.token_sum -= self.tokens.popleft()[1]


@attrs.define(eq=False)
class _LocalHold:
    _usage: _Usage
    _clock: Callable[[], float]
    #: Whether the key has a tpm (else tokens need no window).
    _count_tokens: bool

    def record_tokens(self, n: int) -> None:
        if not self._count_tokens or n <= 0:
            return
        now = self._clock()
        self._usage.expire(now)
        self._usage.tokens.append((now, n))
        self._usage.token_sum += n

    def release(self) -> None:
        self._usage.in_flight -= 1


@attrs.define(eq=False)
class LocalKeyLimiter:
    """A :class:`KeyLimiter` that counts in this process: with N processes (or gateway
    instances) a key may get up to N times its limits.

    The minute is a sliding window of ``clock`` readings: the times of the admitted requests,
    and the token counts recorded with their times. Memory is bounded by the keys that made a
    request and, per key, by its rpm (requests kept) and the token records of one minute.

    Args:
        clock: seconds, monotonic (``trio.current_time`` by default).
    """

    _clock: Callable[[], float] = attrs.field(default=trio.current_time, kw_only=True)
    #: key_id -> its load in this process.
    _usage: dict[str, _Usage] = attrs.field(factory=dict, init=False)

    def statistics(self) -> KeyLimiterStatistics:
        return KeyLimiterStatistics(
            tracked_keys=len(self._usage),
            in_flight=sum(usage.in_flight for usage in self._usage.values()),
        )

    async def acquire(
        self, key_id: str, *, rpm: int | None, tpm: int | None, parallel: int | None
    ) -> KeyHold | Refused:
        # Before any counting: a cancellation here leaves nothing held.
        await trio.lowlevel.checkpoint()
        # No await from here on: the checks and the counting are one step for other tasks.
        now = self._clock()
        usage = self._usage.get(key_id)
        if usage is None:
            usage = self._usage[key_id] = _Usage()
        usage.expire(now)
        if rpm is not None and len(usage.requests) >= rpm:
            # The window drops below the limit when this request leaves it.
            leaves = usage.requests[len(usage.requests) - rpm] + WINDOW
            return Refused(limit=Limit.RPM, retry_after=leaves - now)
        if tpm is not None and usage.token_sum >= tpm:
            remaining = usage.token_sum
            leaves = now + WINDOW
            for at, tokens in usage.tokens:
                remaining -= tokens
                if remaining < tpm:
                    leaves = at + WINDOW
                    break
            return Refused(limit=Limit.TPM, retry_after=leaves - now)
        if parallel is not None and usage.in_flight >= parallel:
            # When one ends is unknown: a second is a guess that keeps SDK retries cheap.
            return Refused(limit=Limit.PARALLEL, retry_after=1.0)
        if rpm is not None:
            usage.requests.append(now)
        usage.in_flight += 1
        return _LocalHold(usage, self._clock, tpm is not None)

    def forget(self, key_id: str) -> None:
        # In-flight holds keep their own reference; their release still works.
        self._usage.pop(key_id, None)
