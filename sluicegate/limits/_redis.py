"""Key limits counted in Redis, shared by every gateway instance that uses it.

An admission is one ``EVALSHA`` of :data:`~._scripts.ADMIT`: the rpm log, the tpm buckets and
the parallel holds are checked and, if there is room, the request is counted, in one atomic
step. Releases and token counts are sync for the caller: they queue here (bounded) and a
service task writes them in one script call per batch. A key's own queued work rides along with
its next admission (and an admission waits for a batch in flight with that key), so one
instance always sees its own releases and tokens in order.

When Redis fails a call, the decision falls to a :class:`~._local.LocalKeyLimiter` (counted in
:attr:`RedisKeyLimiter.fallbacks`) until the link's prober finds Redis again.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ._interface import KeyHold, KeyLimiterStatistics, Limit, RedisUnreachable, Refused
from ._local import LocalKeyLimiter
from ._scripts import ADMIT, SETTLE

if TYPE_CHECKING:
    from ._link import RedisLink

__all__ = ["QUEUE_MAX", "RedisKeyLimiter"]

#: The most releases and token counts waiting for Redis; past it they are dropped (a release
#: is then undone by the hold's expiry). Also bounds one script call's arguments.
QUEUE_MAX: Final = 1000

_REFUSALS: Final = {1: Limit.RPM, 2: Limit.TPM, 3: Limit.PARALLEL}


@attrs.define(eq=False)
class _Queued:
    """What this instance owes Redis for one key."""

    #: (monotonic time of the record, tokens).
    tokens: list[tuple[float, int]] = attrs.Factory(list)
    #: Hold ids released.
    releases: list[str] = attrs.Factory(list)


@attrs.define(eq=False)
class _RedisHold:
    _limiter: RedisKeyLimiter = attrs.field(repr=False)
    _key_id: str
    _hold_id: str
    _count_tokens: bool
    _held: bool

    def record_tokens(self, n: int) -> None:
        if self._count_tokens and n > 0:
            self._limiter._queue(self._key_id, tokens=n)

    def release(self) -> None:
        self._limiter._in_flight -= 1
        if self._held:
            self._limiter._queue(self._key_id, release=self._hold_id)


@attrs.define(eq=False)
class RedisKeyLimiter:
    """A :class:`KeyLimiter` whose windows and holds live in Redis (module docstring).

    Made by :func:`~sluicegate.limits.open_limits`, which runs :meth:`flush_forever`.

    Args:
        link: the Redis connection.
        prefix: of every Redis key it writes.
        hold_lifetime: seconds after which a hold that was never released (its instance
            crashed) stops counting against the key's parallel requests.
        clock: unix seconds for the scripts instead of the Redis server's clock (tests).
        monotonic: the local clock that dates queued token counts.
    """

    _link: RedisLink
    _prefix: str
    _hold_lifetime: float = attrs.field(default=3600.0, kw_only=True)
    _clock: Callable[[], float] | None = attrs.field(default=None, kw_only=True)
    _monotonic: Callable[[], float] = attrs.field(default=trio.current_time, kw_only=True)
    _fallback: LocalKeyLimiter = attrs.field(init=False)
    #: Unique per limiter: hold ids of instances never collide.
    _instance: str = attrs.field(factory=lambda: secrets.token_hex(6), init=False)
    _ids: Iterator[int] = attrs.field(factory=itertools.count, init=False)
    _queued: dict[str, _Queued] = attrs.field(factory=dict, init=False)
    _queue_size: int = attrs.field(default=0, init=False)
    #: Set when something is queued (the flusher waits on it).
    _wake: trio.Event = attrs.field(factory=trio.Event, init=False)
    #: The keys of the batch being written, and its end.
    _flushing: frozenset[str] = attrs.field(default=frozenset(), init=False)
    _flushed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _in_flight: int = attrs.field(default=0, init=False)
    _fallbacks: int = attrs.field(default=0, init=False)
    _drops: int = attrs.field(default=0, init=False)
    _listeners: list[Callable[[], None]] = attrs.field(factory=list, init=False)

    @_fallback.default
    def _local(self) -> LocalKeyLimiter:
        return LocalKeyLimiter(clock=self._monotonic)

    # -- what the limits report

    def statistics(self) -> KeyLimiterStatistics:
        local = self._fallback.statistics()
        return KeyLimiterStatistics(
            tracked_keys=local.tracked_keys, in_flight=self._in_flight + local.in_flight
        )

    @property
    def fallbacks(self) -> int:
        """Admissions decided by the local fallback because Redis was unreachable."""
        return self._fallbacks

    @property
    def queued(self) -> int:
        return self._queue_size

    @property
    def queue_drops(self) -> int:
        return self._drops

    def on_fallback(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (sync, quick) at each admission the fallback decides."""
        self._listeners.append(listener)

    # -- admission

    async def acquire(
        self, key_id: str, *, rpm: int | None, tpm: int | None, parallel: int | None
    ) -> KeyHold | Refused:
        if rpm is None and tpm is None and parallel is None:
            await trio.lowlevel.checkpoint()
            self._in_flight += 1
            return _RedisHold(self, key_id, "", False, False)
        if not self._link.up:
            return await self._fall_back(key_id, rpm=rpm, tpm=tpm, parallel=parallel)
        while key_id in self._flushing:
            await self._flushed.wait()
        owed = self._take(key_id)
        hold_id = f"{self._instance}-{next(self._ids)}"
        args: list[str | int] = [
            self._now_arg(),
            rpm or 0,
            tpm or 0,
            parallel or 0,
            hold_id,
            round(self._hold_lifetime * 1e6),
            *self._settlement(owed),
        ]
        try:
            code, retry_us = await self._link.run(ADMIT, self._names(key_id), args)
        except RedisUnreachable:
            self._requeue(key_id, owed)
            return await self._fall_back(key_id, rpm=rpm, tpm=tpm, parallel=parallel)
        except BaseException:
            # Cancelled mid-call: the script may have run. Its hold is released, the key's
            # queued releases are owed again (both are idempotent; tokens are not).
            self._requeue(key_id, owed)
            if parallel is not None:
                self._queue(key_id, release=hold_id)
            raise
        if code:
            return Refused(limit=_REFUSALS[int(code)], retry_after=int(retry_us) / 1e6)
        self._in_flight += 1
        return _RedisHold(self, key_id, hold_id, tpm is not None, parallel is not None)

    async def _fall_back(
        self, key_id: str, *, rpm: int | None, tpm: int | None, parallel: int | None
    ) -> KeyHold | Refused:
        self._fallbacks += 1
        for listener in self._listeners:
            listener()
        return await self._fallback.acquire(key_id, rpm=rpm, tpm=tpm, parallel=parallel)

    def forget(self, key_id: str) -> None:
        # Its Redis keys expire on their own; its queued releases are still owed.
        self._fallback.forget(key_id)

    # -- the queue

    def _queue(self, key_id: str, *, tokens: int = 0, release: str | None = None) -> None:
        if self._queue_size >= QUEUE_MAX:
            self._drops += 1
            return
        owed = self._queued.get(key_id)
        if owed is None:
            owed = self._queued[key_id] = _Queued()
        if release is None:
            owed.tokens.append((self._monotonic(), tokens))
        else:
            owed.releases.append(release)
        self._queue_size += 1
        self._wake.set()

    def _take(self, key_id: str) -> _Queued | None:
        owed = self._queued.pop(key_id, None)
        if owed is not None:
            self._queue_size -= len(owed.tokens) + len(owed.releases)
        return owed

    def _requeue(self, key_id: str, owed: _Queued | None) -> None:
        """Owe a failed write's releases again; its token counts are dropped (the write may
        have landed, and counting them twice is worse than not at all)."""
        if owed is None:
            return
        self._drops += len(owed.tokens)
        for hold_id in owed.releases:
            self._queue(key_id, release=hold_id)

    async def flush_forever(self) -> None:
        """The service task that writes what is queued, once something is and Redis is up."""
        while True:
            await self._wake.wait()
            await self._link.wait_up()
            self._wake = trio.Event()
            await self.flush()
            if self._queued:  # Redis went down meanwhile: the rest waits for it
                self._wake.set()

    async def flush(self) -> None:
        """Write what is queued now, in one script call (after a batch already being written);
        while Redis is down it stays queued."""
        while self._flushing:
            await self._flushed.wait()
        if not self._queued or not self._link.up:
            await trio.lowlevel.checkpoint()
            return
        batch, self._queued, self._queue_size = self._queued, {}, 0
        self._flushing, self._flushed = frozenset(batch), trio.Event()
        keys: list[str] = []
        args: list[str | int] = [self._now_arg()]
        for key_id, owed in batch.items():
            keys += self._names(key_id)[1:]
            args += self._settlement(owed)
        written = False
        try:
            await self._link.run(SETTLE, keys, args)
            written = True
        except RedisUnreachable:
            pass
        finally:
            # Failed or cancelled: the batch's releases are owed again.
            if not written:
                for key_id, owed in batch.items():
                    self._requeue(key_id, owed)
            self._flushing = frozenset()
            self._flushed.set()

    # -- the scripts' arguments

    def _names(self, key_id: str) -> list[str]:
        """The Redis keys of a key: requests, tokens, holds."""
        base = f"{self._prefix}key:{key_id}:"
        return [base + "requests", base + "tokens", base + "holds"]

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(round(self._clock() * 1e6))

    def _settlement(self, owed: _Queued | None) -> list[str | int]:
        if owed is None:
            return [0, 0]
        now = self._monotonic()
        args: list[str | int] = [len(owed.tokens)]
        for at, tokens in owed.tokens:
            args += [max(0, round((now - at) * 1e6)), tokens]
        return [*args, len(owed.releases), *owed.releases]
