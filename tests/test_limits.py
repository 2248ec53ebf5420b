"""Shared rate limits (``sluicegate.limits``): the Lua scripts' semantics on a real Redis, two
limiters on one Redis as two gateway instances, failing open when Redis stops or hangs, the
deployment windows' sync, and the metrics.

The scripts read a hand-driven clock (``open_limits(clock=...)``) wherever a window must pass,
so no test waits for one; the real waits are bounded polls for a restarted Redis to be found
again. Redis calls get a generous deadline except in the test of a Redis that hangs: a loaded
machine must not turn a slow answer into a fallback.
"""

from __future__ import annotations

import gc
import importlib
import logging
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import sluicegate
from sluicegate.config import Secret
from sluicegate.errors import ConfigError, RateLimitError
from sluicegate.limits import (
    QUEUE_MAX,
    Backend,
    KeyHold,
    KeyLimiter,
    Limit,
    Limits,
    LocalKeyLimiter,
    Refused,
    open_limits,
)
from sluicegate.server._keys import ADMIN, KeyManager
from sluicegate.server._metrics import Metrics, meter_shared_limits
from sluicegate.store import open_memory_store
from tests.servers import READY_TIMEOUT, RedisServer, pause_redis, resume_redis, start_redis
from tests.test_router import Clock, deployment, router

#: Unix seconds of the scripts' clock at the start of a test: mid-second, so token counts
#: that waited a moment in the queue still fall in the second they were recorded in.
EPOCH = 1_750_000_000.5
#: A Redis call's deadline where the test is not about deadlines.
PATIENT = 30.0
UNREACHABLE = "is unreachable; limits are counted per instance until it returns"


@pytest.fixture
def clock() -> Clock:
    """The scripts' clock (unix seconds), moved by hand."""
    return Clock(EPOCH)


@asynccontextmanager
async def instances(url: str, n: int = 2, **options: Any) -> AsyncIterator[list[Limits]]:
    """``n`` gateway instances' limits on one Redis."""
    options.setdefault("timeout", PATIENT)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_limits(url, **options)) for _ in range(n)]


@asynccontextmanager
async def raw_redis(url: str) -> AsyncIterator[Any]:
    """A plain client, to look at what the scripts wrote."""
    coredis = pytest.importorskip("coredis")
    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        yield client


async def admit(
    limiter: KeyLimiter,
    key_id: str = "key-1",
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    parallel: int | None = None,
) -> KeyHold | Refused:
    return await limiter.acquire(key_id, rpm=rpm, tpm=tpm, parallel=parallel)


async def held(limiter: KeyLimiter, **limits: Any) -> KeyHold:
    decision = await admit(limiter, **limits)
    assert not isinstance(decision, Refused), decision
    return decision


async def refused(limiter: KeyLimiter, **limits: Any) -> Refused:
    decision = await admit(limiter, **limits)
    assert isinstance(decision, Refused), decision
    return decision


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (a readiness poll, bounded; never a timing assertion)."""
    with trio.fail_after(READY_TIMEOUT):
        while not condition():  # noqa: ASYNC110 -- state of other tasks, no event to wait on
            await trio.sleep(0.01)


# --- the package ------------------------------------------------------------------------


def test_all_is_sorted_and_every_name_exists() -> None:
    limits = importlib.import_module("sluicegate.limits")
    assert limits.__all__ == sorted(limits.__all__)
    for name in limits.__all__:
        assert hasattr(limits, name), name


def test_importing_sluicegate_and_its_limits_imports_no_redis_client() -> None:
    code = "import sys, sluicegate, sluicegate.limits; print('coredis' in sys.modules)"
    root = Path(sluicegate.__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


async def test_a_redis_url_without_coredis_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)  # what an uninstalled package imports as
    monkeypatch.delitem(sys.modules, "sluicegate.limits._link", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'sluicegate\[redis\]'"):
        async with open_limits("redis://127.0.0.1:1/0"):
            pass


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "valkey://x"])
async def test_only_redis_urls_are_taken(url: str) -> None:
    with pytest.raises(ConfigError, match="redis://, rediss:// or unix://"):
        async with open_limits(url):
            pass


async def test_without_a_url_the_limits_are_per_process() -> None:
    async with open_limits(None) as limits:
        assert isinstance(limits.keys, LocalKeyLimiter)
        r = router([deployment("a", rpm=1)])
        limits.share_deployments(r)  # nothing to share with
        await limits.sync_now()
        await limits.flush()
        stats = limits.statistics()
        assert (stats.backend, stats.up, stats.shared_deployments) == (Backend.LOCAL, False, 0)
        assert stats.backend == "local"  # a StrEnum: it reads as the configuration names it
        assert r.deployment_health()[0].take_unsynced() == (0.0, 0.0)


# --- the scripts, two instances on one Redis --------------------------------------------


async def test_rpm_admits_exactly_n_a_minute_across_two_instances(
    redis_server: RedisServer, clock: Clock
) -> None:
    async with instances(redis_server.url, clock=clock) as (a, b):
        for limiter in (a.keys, b.keys, a.keys):
            await held(limiter, rpm=3)
            clock.now += 10
        for limiter in (a.keys, b.keys):
            refusal = await refused(limiter, rpm=3)
            # The first request (at EPOCH) leaves the window at +60; now is +30.
            assert refusal == Refused(limit=Limit.RPM, retry_after=30.0)
        clock.now = EPOCH + 59.5
        assert (await refused(b.keys, rpm=3)).retry_after == 0.5
        clock.now = EPOCH + 60
        await held(b.keys, rpm=3)
        # Refused requests took no place: the next leaves with the second, at +70.
        assert (await refused(a.keys, rpm=3)).retry_after == 10.0
        # Another key has a window of its own.
        await held(a.keys, key_id="key-2", rpm=3)


async def test_tpm_counts_the_tokens_every_instance_recorded(
    redis_server: RedisServer, clock: Clock
) -> None:
    async with instances(redis_server.url, clock=clock) as (a, b):
        (await held(a.keys, tpm=100)).record_tokens(60)
        await a.flush()
        clock.now += 20
        second = await held(b.keys, tpm=100)  # 60 < 100
        second.release()
        second.record_tokens(40)  # after its release: still counted
        await b.flush()
        refusal = await refused(a.keys, tpm=100)
        # The 60 tokens leave when their second does, at +59.5 (a token counts from the start
        # of its second): 40 < 100 then. Now is +20.
        assert refusal == Refused(limit=Limit.TPM, retry_after=39.5)
        clock.now += 40
        third = await held(a.keys, tpm=100)
        third.record_tokens(100)
        # Not flushed yet: an instance's own tokens ride along with its next admission.
        assert (await refused(a.keys, tpm=100)).retry_after == 59.5
        # A key without a tpm does not count tokens.
        (await held(a.keys, key_id="key-2")).record_tokens(10**6)
        await a.flush()
        await held(b.keys, key_id="key-2", tpm=1)


async def test_parallel_holds_are_shared_released_and_expire(
    redis_server: RedisServer, clock: Clock
) -> None:
    async with instances(redis_server.url, clock=clock, hold_lifetime=30) as (a, b):
        first = await held(a.keys, parallel=2)
        await held(b.keys, parallel=2)
        assert a.keys.statistics().in_flight == b.keys.statistics().in_flight == 1
        for limiter in (a.keys, b.keys):
            assert await refused(limiter, parallel=2) == Refused(
                limit=Limit.PARALLEL, retry_after=1.0
            )
        first.release()
        assert a.keys.statistics().in_flight == 0
        await a.flush()
        await held(b.keys, parallel=2)  # released by the other instance
        assert (await refused(a.keys, parallel=2)).limit is Limit.PARALLEL
        # Holds never released (their instance crashed) stop counting after their lifetime.
        clock.now += 30
        await held(a.keys, parallel=2)
        await held(a.keys, parallel=2)


async def test_an_instance_sees_its_own_release_at_once(
    redis_server: RedisServer, clock: Clock
) -> None:
    """Regression guard: a client that waits for each answer (parallel 1) is never refused
    because its previous request's release was still queued."""
    async with instances(redis_server.url, n=1, clock=clock) as (a,):
        for _ in range(50):
            (await held(a.keys, parallel=1)).release()
        await a.flush()
    async with raw_redis(redis_server.url) as raw:
        assert await raw.zcard("sluicegate:key:key-1:holds") == 0


async def test_every_key_the_scripts_write_expires(redis_server: RedisServer, clock: Clock) -> None:
    async with instances(redis_server.url, n=1, clock=clock, hold_lifetime=120) as (a,):
        (await held(a.keys, rpm=5, tpm=50, parallel=5)).record_tokens(7)
        await a.flush()
        r = router([deployment("d", rpm=5, tpm=50)])
        a.share_deployments(r)
        (h,) = r.deployment_health()
        h.started(r.now())
        h.used_tokens(r.now(), 7)
        await a.sync_now()
    async with raw_redis(redis_server.url) as raw:
        ttls = {key: await raw.pttl(key) for key in await raw.keys("*")}
    assert set(ttls) == {
        "sluicegate:key:key-1:requests",
        "sluicegate:key:key-1:tokens",
        "sluicegate:key:key-1:holds",
        "sluicegate:deployment:d:requests",
        "sluicegate:deployment:d:tokens",
    }
    # Past the window (60 s) by a second; holds past their lifetime.
    assert 0 < ttls.pop("sluicegate:key:key-1:holds") <= 121_000
    assert all(0 < ttl <= 61_000 for ttl in ttls.values()), ttls


async def test_the_redis_servers_clock_is_the_windows_clock(redis_server: RedisServer) -> None:
    async with instances(redis_server.url) as (a, b):
        await held(a.keys, rpm=1)
        refusal = await refused(b.keys, rpm=1)
        assert refusal.limit is Limit.RPM
        assert 50 < refusal.retry_after <= 60


async def test_instances_share_limits_only_under_one_prefix(redis_server: RedisServer) -> None:
    async with (
        instances(redis_server.url, n=1) as (a,),
        instances(redis_server.url, n=1, prefix="other:") as (b,),
    ):
        await held(a.keys, rpm=1)
        await held(b.keys, rpm=1)


async def test_a_key_without_limits_costs_no_round_trip(redis_server: RedisServer) -> None:
    async with instances(redis_server.url, n=1) as (a,):
        hold = await held(a.keys)
        assert a.keys.statistics().in_flight == 1
        hold.record_tokens(5)
        hold.release()
        assert (a.keys.statistics().in_flight, a.statistics().queued) == (0, 0)
    async with raw_redis(redis_server.url) as raw:
        assert not await raw.keys("*")


async def test_the_key_manager_on_redis_refuses_what_another_instance_used(
    redis_server: RedisServer,
) -> None:
    async with open_memory_store() as store, instances(redis_server.url) as (a, b):
        managers = [
            KeyManager(
                store,
                Secret("sk-master"),
                allow_unauthenticated=False,
                spend=_no_spend,
                limiter=limits.keys,
            )
            for limits in (a, b)
        ]
        created = await managers[0].generate(ADMIN, {"key_alias": "ci", "rpm_limit": 1})
        callers = [await m.authenticate(f"Bearer {created['key']}", None) for m in managers]
        (await managers[0].admit(callers[0], "gpt-a")).release()
        with pytest.raises(RateLimitError, match="'ci': 1 requests per minute") as caught:
            await managers[1].admit(callers[1], "gpt-a")
        assert caught.value.code == "rate_limit_exceeded"
        assert 50 <= int(caught.value.headers["Retry-After"]) <= 60


async def _no_spend(owner: str) -> float:
    await trio.lowlevel.checkpoint()
    return 0.0


# --- failing open -----------------------------------------------------------------------


def unreachable_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and UNREACHABLE in r.message]


async def test_a_stopped_redis_falls_back_to_local_limits_and_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sluicegate")
    with start_redis() as server:
        async with (
            open_memory_store() as store,
            open_limits(server.url, timeout=PATIENT) as limits,
        ):
            keys = KeyManager(
                store,
                Secret("sk-master"),
                allow_unauthenticated=False,
                spend=_no_spend,
                limiter=limits.keys,
            )
            created = await keys.generate(ADMIN, {"rpm_limit": 2, "max_parallel_requests": 5})
            caller = await keys.authenticate(None, created["key"])
            on_redis = await keys.admit(caller, "gpt-a")
            assert limits.statistics().up

            server.stop()
            # This instance's own window starts empty: two more, then its local rpm refuses.
            admissions = [await keys.admit(caller, "gpt-a") for _ in range(2)]
            with pytest.raises(RateLimitError, match="2 requests per minute"):
                await keys.admit(caller, "gpt-a")
            on_redis.release()  # owed to Redis, queued meanwhile
            for admission in admissions:
                admission.record_tokens(3)
                admission.release()
            stats = limits.statistics()
            assert (stats.up, stats.outages, stats.fallbacks) == (False, 1, 3)
            assert stats.queued == 1
            assert keys.statistics().in_flight == 0
            assert len(unreachable_warnings(caplog)) == 1
            assert server.url in unreachable_warnings(caplog)[0].message

            server.start()
            await eventually(lambda: limits.statistics().up)
            assert any("answers again" in r.message for r in caplog.records)
            # Counted in Redis again (a fresh one: nothing persisted), and the release owed
            # from before the outage was written.
            (await keys.admit(caller, "gpt-a")).release()
            await limits.flush()
            async with raw_redis(server.url) as raw:
                assert await raw.zcard(f"sluicegate:key:{caller.owner}:requests") == 1
                assert await raw.zcard(f"sluicegate:key:{caller.owner}:holds") == 0
            stats = limits.statistics()
            assert (stats.up, stats.outages, stats.fallbacks, stats.queued) == (True, 1, 3, 0)
            assert len(unreachable_warnings(caplog)) == 1


async def test_opening_on_a_redis_that_is_down_starts_on_the_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with start_redis() as server:
        server.stop()
        async with open_limits(server.url, timeout=PATIENT) as limits:
            await held(limits.keys, rpm=1)
            assert (await refused(limits.keys, rpm=1)).limit is Limit.RPM  # locally
            stats = limits.statistics()
            assert (stats.backend, stats.up, stats.outages, stats.fallbacks) == (
                Backend.REDIS,
                False,
                1,
                2,
            )
            assert len(unreachable_warnings(caplog)) == 1
            server.start()
            await eventually(lambda: limits.statistics().up)
            await held(limits.keys, rpm=1)  # Redis's window, empty
            assert limits.statistics().fallbacks == 2
    # Regression guard: the failed connection attempts left nothing for the garbage collector
    # to warn about (coredis's connections leaked their memory streams).
    gc.collect()


async def test_the_log_line_names_redis_without_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with start_redis() as server:
        server.stop()
        url = f"redis://:hunter2@127.0.0.1:{server.port}/0"
        async with open_limits(url, timeout=PATIENT):
            pass
    (line,) = unreachable_warnings(caplog)
    assert f"Redis at redis://127.0.0.1:{server.port}/0 is unreachable" in line.message
    assert "hunter2" not in caplog.text


async def test_the_service_tasks_run_in_a_given_nursery_and_end_with_the_limits(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(READY_TIMEOUT):  # a task left running would keep the nursery open
        async with (
            trio.open_nursery() as nursery,
            open_limits(
                redis_server.url, nursery=nursery, timeout=PATIENT, sync_interval=0.01
            ) as limits,
        ):
            r = router([deployment("d", rpm=5)])
            limits.share_deployments(r)
            limits.share_deployments(r)  # once is enough
            assert limits.statistics().shared_deployments == 1
            await eventually(lambda: limits.statistics().syncs > 0)


async def test_a_redis_that_hangs_falls_back_after_the_timeout() -> None:
    with start_redis() as server:
        # A second, not the default 0.25 s: the healthy call before the pause must not time
        # out on a busy machine (it would count in the local window, not Redis's).
        async with open_limits(server.url, timeout=1.0) as limits:
            await held(limits.keys, rpm=1)
            pause_redis(server)
            try:
                start = trio.current_time()
                await held(limits.keys, rpm=1)  # the local window: this instance's first
                assert trio.current_time() - start >= 1.0
                assert not limits.statistics().up
            finally:
                resume_redis(server)
            await eventually(lambda: limits.statistics().up)
            assert (await refused(limits.keys, rpm=1)).limit is Limit.RPM


async def test_an_error_reply_fails_open_too(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with raw_redis(redis_server.url) as raw:
        await raw.set("sluicegate:key:key-1:requests", "not a sorted set")
    async with instances(redis_server.url, n=1) as (a,):
        await held(a.keys, rpm=1)
        assert a.statistics().fallbacks == 1
        assert "wrong kind of value" in unreachable_warnings(caplog)[0].message


async def test_a_full_queue_drops_and_counts(clock: Clock) -> None:
    with start_redis() as server:
        async with open_limits(server.url, timeout=PATIENT, clock=clock) as limits:
            hold = await held(limits.keys, tpm=10**9, parallel=10)
            server.stop()
            await held(limits.keys, key_id="other", rpm=1)  # finds Redis down
            for _ in range(QUEUE_MAX + 5):
                hold.record_tokens(1)
            hold.release()  # dropped too: the hold's expiry undoes it
            stats = limits.statistics()
            assert (stats.queued, stats.queue_drops) == (QUEUE_MAX, 6)
            server.start()
            await eventually(lambda: limits.statistics().up)
            await limits.flush()  # after the service task's, if it is writing
            assert limits.statistics().queued == 0
        async with raw_redis(server.url) as raw:
            buckets = await raw.hgetall("sluicegate:key:key-1:tokens")
        assert sum(int(tokens) for tokens in buckets.values()) == QUEUE_MAX


# --- the deployments' windows -----------------------------------------------------------


def test_a_shared_health_counts_the_cluster_plus_what_it_added_since() -> None:
    r = router([deployment("a", rpm=5, tpm=100)])
    (h,) = r.deployment_health()
    h.started(1000.0)  # before sharing: its own window only
    h.share()
    h.started(1000.5)
    h.used_tokens(1000.5, 30)
    assert h.take_unsynced() == (1.0, 30.0)
    assert h.take_unsynced() == (0.0, 0.0)
    h.started(1001.0)  # after the push, before the answer
    h.adopt_shared(1001.2, requests=[(0, 3.0), (20, 1.0)], tokens=[(1, 90.0)])
    # The cluster's 4 requests and this one (not in the cluster's yet).
    assert h.statistics(1001.2).rpm_used == 5
    assert h.headroom(1001.2) == pytest.approx(0.0)
    # The request of age 20 (second 981) leaves at 1041.
    assert h.limited_for(1001.2) == pytest.approx(39.8)
    assert h.tokens_used(1001.2) == 90.0
    assert h.take_unsynced() == (1.0, 0.0)
    # The failure rate still counts this process's requests (3 started here).
    assert h.statistics(1001.2).requests == 3


async def test_two_routers_see_each_others_deployment_counts_after_a_sync(
    redis_server: RedisServer, clock: Clock
) -> None:
    async with instances(redis_server.url, clock=clock, sync_interval=math.inf) as (a, b):
        ds = [deployment("d", rpm=5, tpm=1000), deployment("free")]
        time_a, time_b = Clock(1000.0), Clock(5000.0)  # each process's own monotonic clock
        routers = [router(ds, time_a), router(ds, time_b)]
        a.share_deployments(routers[0])
        b.share_deployments(routers[1])
        assert a.statistics().shared_deployments == 1  # "free" has no rpm/tpm
        ha, hb = (r.health(ds[0]) for r in routers)
        for _ in range(3):
            ha.started(time_a.now)
        ha.used_tokens(time_a.now, 400)
        await a.sync_now()
        await b.sync_now()
        assert (hb.statistics(time_b.now).rpm_used, hb.tokens_used(time_b.now)) == (3, 400)
        clock.now += 10
        time_a.now += 10
        time_b.now += 10
        hb.started(time_b.now)
        hb.started(time_b.now)
        await b.sync_now()
        await a.sync_now()
        for h, now in ((ha, time_a.now), (hb, time_b.now)):
            assert h.statistics(now).rpm_used == 5
            # Full: a's three requests (10 s old) leave the minute in 50 s.
            assert h.limited_for(now) == pytest.approx(50.0)
        assert not routers[0].usable(ha, time_a.now)
        # A minute later the cluster's window is empty.
        clock.now += 60
        time_a.now += 60
        await a.sync_now()
        assert (ha.statistics(time_a.now).rpm_used, ha.limited_for(time_a.now)) == (0, 0.0)
        assert a.statistics().syncs == 3


async def test_the_deployment_windows_sync_on_their_own(redis_server: RedisServer) -> None:
    async with instances(redis_server.url, sync_interval=0.01) as (a, b):
        ds = [deployment("d", rpm=100)]
        routers = [router(ds), router(ds)]
        a.share_deployments(routers[0])
        b.share_deployments(routers[1])
        routers[0].health(ds[0]).started(routers[0].now())
        hb = routers[1].health(ds[0])
        await eventually(lambda: hb.statistics(routers[1].now()).rpm_used == 1)


async def test_without_redis_the_deployment_windows_count_locally() -> None:
    with start_redis() as server:
        async with open_limits(server.url, timeout=PATIENT) as limits:
            r = router([deployment("d", rpm=2)])
            limits.share_deployments(r)
            (h,) = r.deployment_health()
            h.started(r.now())
            await limits.sync_now()
            server.stop()
            h.started(r.now())
            await limits.sync_now()  # fails: the windows stay as they were, plus the new one
            assert not limits.statistics().up
            assert h.statistics(r.now()).rpm_used == 2
            assert h.limited_for(r.now()) > 0
            await limits.sync_now()  # down: nothing to do
            assert limits.statistics().syncs == 1


# --- metrics ----------------------------------------------------------------------------


async def test_metrics_show_whether_redis_is_up_and_count_fallbacks() -> None:
    with start_redis() as server:
        async with open_limits(server.url, timeout=PATIENT) as limits:
            metrics = Metrics()
            meter_shared_limits(metrics, limits)
            text = metrics.render().decode()
            assert "# TYPE sluicegate_shared_limits_up gauge" in text
            assert "sluicegate_shared_limits_up 1.0" in text
            assert "# TYPE sluicegate_shared_limits_fallbacks_total counter" in text
            assert "sluicegate_shared_limits_fallbacks_total 0.0" in text
            server.stop()
            await held(limits.keys, rpm=1)
            await held(limits.keys, rpm=2)
            text = metrics.render().decode()
            assert "sluicegate_shared_limits_up 0.0" in text
            assert "sluicegate_shared_limits_fallbacks_total 2.0" in text
    async with open_limits(None) as local:
        metrics = Metrics()
        meter_shared_limits(metrics, local)
        assert "shared_limits" not in metrics.render().decode()
