"""What the router knows of each deployment: load, latency, rpm/tpm use and its circuit breaker.

Theory of operation. Each deployment has one :class:`Health`, fed by the connector (an attempt
started; it answered, with its time to first byte and its total time; it failed, and how) and
by the accountant (the tokens a response used). The router reads it to choose.

The circuit breaker is a three-state machine (docs/design.md §2)::

    CLOSED ──(more than allowed_fails failures within a minute,
    │          or the failure rate past failure_rate_threshold;
    │          or a 429 with Retry-After)──► OPEN
    OPEN ──(cooldown_time, or the Retry-After, has passed)──► HALF_OPEN
    HALF_OPEN ──(its one probe request succeeds)──► CLOSED
    HALF_OPEN ──(the probe fails)──► OPEN

OPEN takes the deployment out of every pick; HALF_OPEN lets exactly one request through to find
out whether it recovered. Only failures that say something about the deployment count (the
provider's 5xx, 429, 401/403/404, resets, timeouts); a request the provider rejects as bad
(400, 413, 422) says nothing about its health.

The rpm/tpm windows are sliding minutes of one-second buckets: an update and a read cost O(1)
(amortised), which keeps a pick over a hundred deployments within the router's budget. With
shared limits (``sluicegate.limits``) a deployment's rpm/tpm limits count against a second pair
of windows that a sync task keeps in step with the other gateway instances
(:meth:`Health.share`): the cluster's last minute as of the last sync, plus what this process
added since. The failure rate keeps counting this process's own requests.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable

import attrs

from ..config import Deployment, RouterSettings
from ..errors import SluicegateError, UpstreamError, UpstreamStatusError

__all__ = ["BreakerState", "DeploymentStatistics", "Health", "SlidingMinute", "counts_against"]

#: The window failures are counted in (seconds): LiteLLM's "allowed fails per minute".
FAILURE_WINDOW = 60.0

#: Weight of the newest sample in the latency averages (an exponentially weighted average:
#: a sample's influence halves about every two requests).
LATENCY_ALPHA = 0.3


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def counts_against(error: SluicegateError) -> bool:
    """Whether this failure says the deployment is unhealthy (module docstring)."""
    if isinstance(error, UpstreamStatusError):
        status = error.status_code
        return status >= 500 or status in (401, 403, 404, 408, 409, 429)
    return isinstance(error, UpstreamError)


@attrs.define(eq=False)
class SlidingMinute:
    """A sum over the last 60 seconds, kept in one-second buckets."""

    _buckets: list[float] = attrs.Factory(lambda: [0.0] * 60)
    _total: float = 0.0
    #: The second (``floor(now)``) the newest bucket belongs to.
    _second: int = -(1 << 62)
    #: Added since the last :meth:`take_unsynced` (read for shared windows only).
    _unsynced: float = 0.0

    def add(self, now: float, amount: float) -> None:
        self._advance(now)
        self._buckets[self._second % 60] += amount
        self._total += amount
        self._unsynced += amount

    def take_unsynced(self) -> float:
        """What was added since the last call."""
        amount, self._unsynced = self._unsynced, 0.0
        return amount

    def adopt(self, now: float, by_age: Iterable[tuple[int, float]]) -> None:
        """Become another window (the cluster's), given as amounts by age in whole seconds (0:
        the current second), plus what was added here since the last :meth:`take_unsynced`
        (which the other window does not hold yet)."""
        self._second = math.floor(now)
        self._buckets = [0.0] * 60
        self._total = 0.0
        for age, amount in by_age:
            if 0 <= age < 60:
                self._buckets[(self._second - age) % 60] += amount
                self._total += amount
        self._buckets[self._second % 60] += self._unsynced
        self._total += self._unsynced

    def total(self, now: float) -> float:
        self._advance(now)
        return self._total

    def seconds_until_below(self, now: float, limit: float) -> float:
        """How long until the sum drops below ``limit`` as old buckets expire (0: it is)."""
        self._advance(now)
        excess = self._total - limit
        if excess < 0:
            return 0.0
        # Oldest bucket first: bucket of second s leaves the window at s + 60.
        for age in range(59, -1, -1):
            second = self._second - age
            excess -= self._buckets[second % 60]
            if excess < 0:
                return max(0.0, second + 60 - now)
        return 60.0  # pragma: no cover -- excess >= 0 needs a positive total, which expires

    def _advance(self, now: float) -> None:
        second = math.floor(now)
        if second <= self._second:
            return
        if second - self._second >= 60:
            self._buckets = [0.0] * 60
            self._total = 0.0
        else:
            for s in range(self._second + 1, second + 1):
                index = s % 60
                self._total -= self._buckets[index]
                self._buckets[index] = 0.0
            if self._total < 1e-9:
                self._total = 0.0  # float residue of additions and removals
        self._second = second


@attrs.frozen(kw_only=True)
class DeploymentStatistics:
    """A snapshot of one deployment as the router sees it (``Gateway.statistics()``)."""

    id: str
    model_name: str
    state: BreakerState
    #: Seconds until an open breaker lets a probe through (0 unless OPEN).
    cooldown_remaining: float
    in_flight: int
    requests: int
    failures: int
    #: Failures within the last minute.
    recent_failures: int
    #: Times the breaker opened.
    cooldowns: int
    rpm_used: int
    tpm_used: int
    rpm: int | None
    tpm: int | None
    #: Averages in seconds (None until the first success).
    time_to_first_byte: float | None
    latency: float | None


@attrs.define(eq=False)
class Health:
    """One deployment's live state; only the router and its plans touch it."""

    deployment: Deployment
    _settings: RouterSettings
    #: Whether failure counts may open the breaker (not for a group's only deployment: a blip
    #: would turn into refused requests with nowhere else to go; a Retry-After still cools it).
    may_cool: bool = True
    state: BreakerState = BreakerState.CLOSED
    open_until: float = 0.0
    probing: bool = False
    probe_claimed: float = 0.0
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    cooldowns: int = 0
    ttfb: float | None = None
    latency: float | None = None
    _failure_times: deque[float] = attrs.Factory(deque)
    #: Requests started in the last minute: the rpm limit's count and the failure rate's base.
    _rpm: SlidingMinute = attrs.Factory(SlidingMinute)
    _tpm: SlidingMinute = attrs.Factory(SlidingMinute)
    #: The rpm and tpm windows the limits count against once shared (:meth:`share`).
    _shared: tuple[SlidingMinute, SlidingMinute] | None = None

    # -- reading -----------------------------------------------------------------------

    def available(self, now: float) -> bool:
        """Whether the breaker lets a request through now (OPEN turns HALF_OPEN on time)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now < self.open_until:
                return False
            self.state = BreakerState.HALF_OPEN
            self.probing = False
        # A claimed probe that never reported back (its request was cancelled before it was
        # sent) must not keep the deployment out for ever: another may probe after a cooldown.
        return not self.probing or now - self.probe_claimed >= self._settings.cooldown_time

    def claim(self, now: float) -> None:
        """The router chose this deployment: a half-open one's probe is now taken."""
        if self.state is BreakerState.HALF_OPEN:
            self.probing = True
            self.probe_claimed = now

    def limited_for(self, now: float) -> float:
        """Seconds until the deployment's rpm and tpm both have room (0: it has room now)."""
        d = self.deployment
        rpm, tpm = self._limited_windows()
        wait = 0.0
        if d.rpm is not None:
            # Room for one more request: fewer than rpm started in the last minute.
            wait = rpm.seconds_until_below(now, d.rpm)
        if d.tpm is not None:
            wait = max(wait, tpm.seconds_until_below(now, d.tpm))
        return wait

    def headroom(self, now: float) -> float:
        """The smallest unused fraction of the deployment's limits (1.0 without limits)."""
        d = self.deployment
        rpm, tpm = self._limited_windows()
        room = 1.0
        if d.rpm is not None:
            room = min(room, 1.0 - rpm.total(now) / d.rpm)
        if d.tpm is not None:
            room = min(room, 1.0 - tpm.total(now) / d.tpm)
        return room

    def tokens_used(self, now: float) -> float:
        return self._limited_windows()[1].total(now)

    def score(self, *, stream: bool) -> float:
        """Latency-based routing's cost of sending here now (lower is better): the average
        time to first byte (streams) or total time, times the requests already waiting on
        it. Never measured: 0, so a new deployment is tried."""
        average = self.ttfb if stream else self.latency
        return (average or 0.0) * (1 + self.in_flight)

    def statistics(self, now: float) -> DeploymentStatistics:
        self.available(now)
        self._expire_failures(now)
        rpm, tpm = self._limited_windows()
        return DeploymentStatistics(
            id=self.deployment.id,
            model_name=self.deployment.model_name,
            state=self.state,
            cooldown_remaining=max(0.0, self.open_until - now)
            if self.state is BreakerState.OPEN
            else 0.0,
            in_flight=self.in_flight,
            requests=self.requests,
            failures=self.failures,
            recent_failures=len(self._failure_times),
            cooldowns=self.cooldowns,
            rpm_used=round(rpm.total(now)),
            tpm_used=round(tpm.total(now)),
            rpm=self.deployment.rpm,
            tpm=self.deployment.tpm,
            time_to_first_byte=self.ttfb,
            latency=self.latency,
        )

    def _limited_windows(self) -> tuple[SlidingMinute, SlidingMinute]:
        """The rpm and tpm windows the limits count against."""
        return self._shared or (self._rpm, self._tpm)

    # -- sharing the rpm/tpm windows (sluicegate.limits) ---------------------------------

    def share(self) -> None:
        """Count the rpm/tpm limits against shared windows from now on: empty until the first
        :meth:`adopt_shared`, then the cluster's as of each sync plus what was added since."""
        if self._shared is None:
            self._shared = (SlidingMinute(), SlidingMinute())

    def take_unsynced(self) -> tuple[float, float]:
        """Requests started and tokens used here since the last call (0 unless shared)."""
        if self._shared is None:
            return 0.0, 0.0
        return self._shared[0].take_unsynced(), self._shared[1].take_unsynced()

    def adopt_shared(
        self,
        now: float,
        requests: Iterable[tuple[int, float]],
        tokens: Iterable[tuple[int, float]],
    ) -> None:
        """Take the cluster's rpm and tpm windows (amounts by age in whole seconds)."""
        if self._shared is not None:
            self._shared[0].adopt(now, requests)
            self._shared[1].adopt(now, tokens)

    # -- what happened -----------------------------------------------------------------

    def started(self, now: float) -> None:
        self.in_flight += 1
        self.requests += 1
        self._rpm.add(now, 1.0)
        if self._shared is not None:
            self._shared[0].add(now, 1.0)

    def answered(self, now: float, *, ttfb: float | None, total: float | None) -> None:
        """The attempt ended well (``total`` None: it was abandoned by its caller)."""
        self.in_flight -= 1
        if total is None:
            self.probing = False  # no verdict: a later request probes again
            return
        if ttfb is not None:
            self.ttfb = _average(self.ttfb, ttfb)
        self.latency = _average(self.latency, total)
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            self.probing = False
            self._failure_times.clear()

    def failed(self, now: float, error: SluicegateError) -> None:
        self.in_flight -= 1
        if not counts_against(error):
            self.probing = False
            return
        self.failures += 1
        retry_after = getattr(error, "retry_after", None)
        if (
            isinstance(error, UpstreamStatusError)
            and error.status_code == 429
            and retry_after is not None
            and retry_after > 0
        ):
            self._open(now, float(retry_after))
            return
        if self.state is BreakerState.HALF_OPEN:
            if self.may_cool:
                self._open(now, self._settings.cooldown_time)
            else:  # a lone deployment's Retry-After has passed; failures do not cool it
                self.state = BreakerState.CLOSED
                self.probing = False
            return
        self._failure_times.append(now)
        if not self.may_cool or self.state is BreakerState.OPEN:
            return
        self._expire_failures(now)
        s = self._settings
        recent = len(self._failure_times)
        started = self._rpm.total(now)
        if recent > s.allowed_fails or (
            s.failure_rate_threshold is not None
            and started >= s.failure_rate_min_requests
            and recent / started >= s.failure_rate_threshold
        ):
            self._open(now, s.cooldown_time)

    def used_tokens(self, now: float, tokens: int) -> None:
        self._tpm.add(now, float(tokens))
        if self._shared is not None:
            self._shared[1].add(now, float(tokens))

    def _open(self, now: float, seconds: float) -> None:
        until = now + seconds
        if self.state is not BreakerState.OPEN:
            self.cooldowns += 1
            self.state = BreakerState.OPEN
            self.open_until = until
        else:
            self.open_until = max(self.open_until, until)
        self.probing = False
        self._failure_times.clear()

    def _expire_failures(self, now: float) -> None:
        horizon = now - FAILURE_WINDOW
        times = self._failure_times
        while times and times[0] <= horizon:
            times.popleft()


def _average(current: float | None, sample: float) -> float:
    if current is None:
        return sample
    return current + LATENCY_ALPHA * (sample - current)
