"""One request's attempts: the first, and the next after each failure (its route plan).

The router (``_router.py``) chooses a deployment; a :class:`RoutePlan` asks it for the first
attempt and, when an attempt fails before anything reached the caller, decides what comes next.
The connector asks (:meth:`RoutePlan.next`) and acts: the plan answers with another attempt
(having waited as long as that takes) or gives up by raising the error the caller gets.

After a failure (:meth:`RoutePlan.next`):

- the provider refused the request itself (400-class): no retry; a context-window error goes
  to ``context_window_fallbacks``, a content-policy error to ``content_policy_fallbacks``;
- otherwise, while the failed deployment's ``max_retries`` allows: another deployment of the
  group, not one that failed this request (after ``retry_after``); if none is left, the same
  one after a back-off or its ``Retry-After`` when the error is retryable;
- then the ``fallbacks`` groups in order, each with retries of its own;
- then the error.

Nothing is available at all (every deployment cooling, or over its limits): a request waits up
to ``limit_wait`` for rpm/tpm room; otherwise a 429 (limits) or 503 (cooling) with
``Retry-After`` comes back, after trying the fallbacks.

These retries are written out here, not run by tenacity (which retries the connector's lookups
and file and batch calls, with the router's :func:`~._router.backoff` and
:func:`~._router.may_retry`: one policy).
Measured on the 2-core development machine under trio (tenacity 9.2, median of 5 runs of 20,000
calls): an attempt that succeeds costs 3.7 µs called bare and 21.9 µs inside
``tenacity.AsyncRetrying`` (24.3 µs with its ``wait_exponential`` + ``wait_random``), so ~18 µs
more per request, two to four times a routing pick (5 to 9 µs). Starting tenacity only after a
first failure, as the connector's ``open()`` does, would avoid that; but this policy is not
tenacity's shape. Each retry goes where the plan decides (another deployment at once, the same
one after a back-off, the fallback groups with retries of their own) and the wait depends on
that decision, while tenacity computes the wait before the next attempt runs: its stop, wait
and retry would each call into the plan, and the back-off itself is the few lines of
:func:`~._router.backoff`.
"""

from __future__ import annotations

import attrs
import trio

from ..config import Deployment
from ..errors import ClientError, SluicegateError, UpstreamError
from ..runtime._messages import PreparedCall, Routed
from ._health import Health
from ._router import Router, Unavailable, backoff, failure_kind, may_retry

__all__ = ["RoutePlan", "route", "run_router"]


@attrs.define(eq=False)
class RoutePlan:
    """One request's attempts: the router's decisions, asked for by the connector."""

    _router: Router
    _call: PreparedCall
    #: The group being tried now, and the fallback groups still to try.
    _group: str = attrs.field(init=False)
    _queue: list[str] = attrs.Factory(list)
    #: The failure kinds whose fallback chain has been entered (each at most once).
    _chains: set[str] = attrs.Factory(set)
    _attempt: int = 0
    _retries: int = 0
    _failed: set[str] = attrs.Factory(set)
    #: Where the last attempt went (the deployment, not the Routed: that one holds this plan,
    #: and a cycle per request would be left to the garbage collector).
    _last: Deployment | None = None
    #: The last error an upstream gave this request: what the caller gets if nothing works.
    _upstream_error: SluicegateError | None = None

    def __attrs_post_init__(self) -> None:
        self._group = self._call.model

    def health(self, deployment: Deployment) -> Health:
        """The health that an attempt at ``deployment`` is reported to."""
        return self._router.health(deployment)

    async def first(self) -> Routed:
        """The first attempt (waiting briefly for rpm/tpm room when that is all it takes).

        Raises:
            SluicegateError: nothing can serve the request (after the fallbacks).
        """
        call = self._call
        if call.deployment is not None:  # chosen in advance: a background response's ID
            return self._routed(call, await self._router.resolved(call.deployment))
        try:
            return await self._in_group(call.model)
        except Unavailable as unavailable:
            self._queue = self._router.fallbacks(call.model, "fallbacks")
            self._chains.add("fallbacks")
            return await self._fall_back(unavailable.error)

    async def next(self, error: SluicegateError) -> Routed:
        """The attempt after ``error`` ended the last one, before anything reached the caller.

        Raises:
            SluicegateError: no attempt is left; the error the caller gets.
        """
        last = self._last
        assert last is not None, "next() before first()"
        if isinstance(error, UpstreamError):
            self._upstream_error = error
        kind = failure_kind(error)
        if kind in ("context_window_fallbacks", "content_policy_fallbacks"):
            return await self._chain(kind, error)
        if kind is None:
            if self._group != self._call.model:
                # A fallback group cannot take what the first one could: the next one may.
                return await self._fall_back(error)
            raise error
        failed = last
        self._failed.add(failed.id)
        if self._retries < failed.max_retries:
            self._retries += 1
            routed = await self._retry(failed, error)
            if routed is not None:
                return routed
        return await self._chain("fallbacks", error)

    async def _retry(self, failed: Deployment, error: SluicegateError) -> Routed | None:
        router, call = self._router, self._call
        settings = router.settings
        if not router.pins(call):
            try:
                deployment = router.choose(self._group_call(), exclude=frozenset(self._failed))
            except Unavailable:
                pass
            else:
                if settings.retry_after > 0:
                    await trio.sleep(settings.retry_after)
                return self._routed(self._group_call(), await router.resolved(deployment))
        # Nothing else in the group: the same deployment again, when waiting may help.
        if not may_retry(settings, error):
            return None
        await trio.sleep(backoff(settings, self._retries, error, router.rng))
        health = router.health(failed)
        if not router.usable(health, router.now()):
            return None
        router.claim(health)
        return self._routed(self._group_call(), failed)

    async def _chain(self, kind: str, error: SluicegateError) -> Routed:
        """Go on to the next fallback group. A context-window or content-policy failure starts
        its own chain (once); spent retries start the first group's ``fallbacks`` only when
        no chain has begun, and otherwise continue the chain under way."""
        if kind not in self._chains and (kind != "fallbacks" or not self._chains):
            self._chains.add(kind)
            self._queue = self._router.fallbacks(self._call.model, kind)
        return await self._fall_back(error)

    async def _fall_back(self, error: SluicegateError) -> Routed:
        while self._queue:
            self._group = self._queue.pop(0)
            self._retries = 0
            try:
                return await self._in_group(self._group)
            except (Unavailable, ClientError):
                continue  # this one cannot take it now; the next may
        raise self._final(error)

    def _final(self, error: SluicegateError) -> SluicegateError:
        """What the caller gets when nothing is left: the last error a provider gave, over
        the gateway's own (a fallback group cooling, or unable to take the request)."""
        if not isinstance(error, UpstreamError) and self._upstream_error is not None:
            return self._upstream_error
        return error

    async def _in_group(self, group: str) -> Routed:
        """A deployment of ``group``, waiting up to ``limit_wait`` for rpm/tpm room."""
        router = self._router
        call = self._group_call(group)
        deadline = router.now() + router.settings.limit_wait
        while True:
            try:
                deployment = router.choose(call, exclude=frozenset(self._failed))
            except Unavailable as unavailable:
                wait = unavailable.wait
                if wait is None or router.now() + wait > deadline:
                    raise
                await trio.sleep(wait)
                continue
            return self._routed(call, await router.resolved(deployment))

    def _group_call(self, group: str | None = None) -> PreparedCall:
        group = group or self._group
        if group == self._call.model:
            return self._call
        return attrs.evolve(self._call, model=group)

    def _routed(self, call: PreparedCall, deployment: Deployment) -> Routed:
        routed = Routed(call=call, deployment=deployment, attempt=self._attempt, plan=self)
        self._attempt += 1
        self._last = deployment
        return routed


async def route(router: Router, call: PreparedCall) -> Deployment:
    """The deployment for a request's first attempt (a background response's ID names it
    before it runs)."""
    return (await RoutePlan(router, call).first()).deployment


async def run_router(
    router: Router,
    *,
    inbox: trio.MemoryReceiveChannel[PreparedCall],
    outbox: trio.MemorySendChannel[Routed],
) -> None:
    """The router actor: each request's route plan, and its first attempt."""
    with inbox, outbox:
        async for call in inbox:
            await outbox.send(await RoutePlan(router, call).first())
