"""The router's decisions, unit by unit: strategies, the circuit breaker, Retry-After,
rpm/tpm windows, affinity, failure kinds and the configuration that drives them. A seeded
random source and a hand-driven clock make every choice reproducible."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import attrs
import pytest

from sluicegate.actors._health import BreakerState, Health, SlidingMinute
from sluicegate.actors._router import Router, failure_kind
from sluicegate.actors._router import Unavailable as _Unavailable
from sluicegate.codecs.ids import DecodedId
from sluicegate.config import (
    Deployment,
    LiteLLMParams,
    ModelEntry,
    ModelInfo,
    RouterSettings,
    build_deployment,
    load_config,
)
from sluicegate.errors import (
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from sluicegate.runtime._messages import PreparedCall


@attrs.define
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def deployment(dep_id: str, group: str = "g", **params: Any) -> Deployment:
    entry = ModelEntry(
        model_name=group,
        litellm_params=LiteLLMParams(
            model=params.pop("model", "openai/gpt-5.4"),
            api_base=f"https://{dep_id}.test/v1",
            **params,
        ),
        model_info=ModelInfo(id=dep_id),
    )
    return build_deployment(entry, RouterSettings(), environ={})


async def _no_fake(d: Deployment) -> Deployment:
    raise AssertionError("no fake deployments here")


def router(
    deployments: list[Deployment], clock: Clock | None = None, seed: int = 7, **settings: Any
) -> Router:
    return Router.from_deployments(
        deployments,
        RouterSettings(**settings),
        rng=random.Random(seed),
        resolve_fake=_no_fake,
        environ={},
        clock=clock or Clock(),
    )


def call(model: str = "g", **kwargs: Any) -> PreparedCall:
    body = {"model": model, "input": "hi", **kwargs.pop("body", {})}
    return PreparedCall(model=model, body=body, stream=kwargs.pop("stream", False), **kwargs)


def picks(r: Router, n: int, **kwargs: Any) -> Counter[str]:
    return Counter(r.choose(call(**kwargs)).id for _ in range(n))


def server_error(status: int = 500, **kwargs: Any) -> UpstreamStatusError:
    return UpstreamStatusError("boom", status_code=status, **kwargs)


def state(health: Health) -> BreakerState:
    """The breaker's state now. A test that asserted ``health.state`` once reads it again
    through this: mypy keeps the narrowed attribute across the calls that change it."""
    return health.state


# -- strategies ----------------------------------------------------------------------------


def test_simple_shuffle_follows_the_weights() -> None:
    r = router([deployment("a", weight=1), deployment("b", weight=3), deployment("c", weight=6)])
    counts = picks(r, 10_000)
    assert 0.08 < counts["a"] / 10_000 < 0.12
    assert 0.27 < counts["b"] / 10_000 < 0.33
    assert 0.57 < counts["c"] / 10_000 < 0.63


def test_least_busy_picks_the_fewest_in_flight() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b"), deployment("c")]
    r = router(ds, clock, routing_strategy="least-busy")
    for d, busy in zip(ds, (3, 1, 2), strict=True):
        for _ in range(busy):
            r.health(d).started(clock.now)
    assert picks(r, 50) == Counter({"b": 50})
    # Ties are broken at random, not always toward the first.
    r.health(ds[1]).started(clock.now)  # b: 2, c: 2
    r.health(ds[1]).started(clock.now)  # b: 3
    r.health(ds[2]).started(clock.now)  # c: 3; all three at 3
    assert set(picks(r, 60)) == {"a", "b", "c"}


def test_latency_based_moves_traffic_to_the_faster_deployment() -> None:
    clock = Clock()
    ds = [deployment(name) for name in "abcd"]
    r = router(ds, clock, routing_strategy="latency-based-routing")
    # Unmeasured deployments score 0, so each gets tried.
    assert set(picks(r, 40)) == set("abcd")
    for d, seconds in zip(ds, (0.9, 0.1, 0.8, 0.7), strict=True):
        for _ in range(5):
            h = r.health(d)
            h.started(clock.now)
            h.answered(clock.now, ttfb=seconds / 3, total=seconds)
    counts = picks(r, 1000)
    # Power of two choices: the fastest wins every pair it is in (half the pairs), the
    # slowest none.
    assert counts["b"] > 450
    assert counts["a"] == 0
    # It adapts: b slows down, d speeds up.
    for _ in range(10):
        hb, hd = r.health(ds[1]), r.health(ds[3])
        hb.started(clock.now)
        hb.answered(clock.now, ttfb=0.5, total=2.0)
        hd.started(clock.now)
        hd.answered(clock.now, ttfb=0.01, total=0.05)
    counts = picks(r, 1000)
    assert counts["d"] > 450
    assert counts["b"] == 0


def test_latency_based_scores_streams_by_time_to_first_byte() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b")]
    r = router(ds, clock, routing_strategy="latency-based")
    ha, hb = r.health(ds[0]), r.health(ds[1])
    for h, ttfb, total in ((ha, 0.05, 3.0), (hb, 0.5, 1.0)):
        h.started(clock.now)
        h.answered(clock.now, ttfb=ttfb, total=total)
    assert picks(r, 20, stream=True) == Counter({"a": 20})
    assert picks(r, 20, stream=False) == Counter({"b": 20})


def test_usage_based_picks_the_most_headroom() -> None:
    clock = Clock()
    ds = [deployment("a", tpm=1000), deployment("b", tpm=1000), deployment("c", tpm=10_000)]
    r = router(ds, clock, routing_strategy="usage-based-routing-v2")
    r.used_tokens(ds[0], 900)
    r.used_tokens(ds[1], 100)
    r.used_tokens(ds[2], 5000)
    assert picks(r, 10) == Counter({"b": 10})  # 90% headroom beats 50% and 10%


def test_usage_based_without_limits_picks_the_fewest_tokens() -> None:
    ds = [deployment("a"), deployment("b")]
    r = router(ds, routing_strategy="usage-based")
    r.used_tokens(ds[0], 50)
    r.used_tokens(ds[1], 20)
    assert picks(r, 5) == Counter({"b": 5})


# -- the circuit breaker -------------------------------------------------------------------


def test_breaker_opens_after_allowed_fails_and_recovers_through_one_probe() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b")]
    r = router(ds, clock, allowed_fails=2, cooldown_time=30)
    a = r.health(ds[0])
    for _ in range(3):
        a.started(clock.now)
        a.failed(clock.now, server_error())
        clock.now += 1
    assert a.state is BreakerState.OPEN
    assert picks(r, 30) == Counter({"b": 30})
    stats = {d.id: d for d in r.statistics().deployments}
    assert stats["a"].state is BreakerState.OPEN
    assert stats["a"].cooldown_remaining == pytest.approx(29.0)  # opened at 1002, now 1003
    assert stats["a"].cooldowns == 1
    assert r.statistics().cooling == 1
    clock.now += 29
    # Half-open: exactly one request may probe it.
    chosen = [r.choose(call(), exclude=frozenset({"b"})).id]
    assert chosen == ["a"] and state(a) is BreakerState.HALF_OPEN
    with pytest.raises(_Unavailable):
        r.choose(call(), exclude=frozenset({"b"}))
    a.started(clock.now)
    a.answered(clock.now + 0.2, ttfb=0.1, total=0.2)
    assert state(a) is BreakerState.CLOSED
    assert "a" in picks(r, 30)


def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b")]
    r = router(ds, clock, allowed_fails=0, cooldown_time=10)
    a = r.health(ds[0])
    a.started(clock.now)
    a.failed(clock.now, server_error(503))
    clock.now += 10
    assert a.available(clock.now) and a.state is BreakerState.HALF_OPEN
    a.claim(clock.now)
    a.started(clock.now)
    a.failed(clock.now, UpstreamConnectionError("reset"))
    assert state(a) is BreakerState.OPEN and a.open_until == clock.now + 10
    assert a.cooldowns == 2


def test_failures_older_than_a_minute_do_not_count() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b")]
    r = router(ds, clock, allowed_fails=2)
    a = r.health(ds[0])
    for _ in range(5):
        a.started(clock.now)
        a.failed(clock.now, server_error())
        clock.now += 31  # at most two failures within any minute
    assert a.state is BreakerState.CLOSED
    assert a.failures == 5


def test_a_failure_rate_opens_the_breaker() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b")]
    r = router(
        ds, clock, allowed_fails=100, failure_rate_threshold=0.5, failure_rate_min_requests=4
    )
    a = r.health(ds[0])
    for ok in (True, False, True, False):
        a.started(clock.now)
        if ok:
            a.answered(clock.now, ttfb=0.1, total=0.1)
        else:
            a.failed(clock.now, server_error())
    assert a.state is BreakerState.OPEN


def test_client_errors_do_not_count_against_a_deployment() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b")]
    r = router(ds, clock, allowed_fails=0)
    a = r.health(ds[0])
    a.started(clock.now)
    a.failed(clock.now, server_error(400))
    assert a.state is BreakerState.CLOSED and a.failures == 0


def test_retry_after_cools_for_exactly_that_long() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b")]
    r = router(ds, clock, allowed_fails=10)
    a = r.health(ds[0])
    a.started(clock.now)
    a.failed(clock.now, server_error(429, retry_after=42.0))
    assert a.state is BreakerState.OPEN and a.open_until == clock.now + 42
    clock.now += 41.9
    assert not a.available(clock.now)
    clock.now += 0.1
    assert a.available(clock.now)


def test_a_lone_deployment_is_cooled_only_by_retry_after() -> None:
    clock = Clock()
    ds = [deployment("a")]
    r = router(ds, clock, allowed_fails=0)
    a = r.health(ds[0])
    for _ in range(5):
        a.started(clock.now)
        a.failed(clock.now, server_error(500))
    assert a.state is BreakerState.CLOSED
    a.started(clock.now)
    a.failed(clock.now, server_error(429, retry_after=3.0))
    assert state(a) is BreakerState.OPEN
    with pytest.raises(_Unavailable) as info:
        r.choose(call())
    assert isinstance(info.value.error, ServiceUnavailableError)
    assert info.value.error.headers == {"Retry-After": "3"}


def test_an_abandoned_probe_frees_the_half_open_slot_after_a_cooldown() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b")]
    r = router(ds, clock, allowed_fails=0, cooldown_time=5)
    a = r.health(ds[0])
    a.started(clock.now)
    a.failed(clock.now, server_error())
    clock.now += 5
    a.available(clock.now)
    a.claim(clock.now)  # chosen, then its request was cancelled before it was sent
    assert not a.available(clock.now + 4.9)
    assert a.available(clock.now + 5)


# -- rpm / tpm -----------------------------------------------------------------------------


def test_sliding_minute_expires_by_the_second() -> None:
    w = SlidingMinute()
    w.add(10.2, 1)
    w.add(30.5, 2)
    w.add(69.9, 4)
    assert w.total(69.9) == 7
    assert w.total(70.0) == 6  # second 10 left the window
    assert w.seconds_until_below(70.0, 5) == pytest.approx(20.0)  # second 30 leaves at 90
    assert w.seconds_until_below(70.0, 7) == 0.0
    assert w.total(200.0) == 0


def test_rpm_sends_the_next_request_elsewhere_then_says_when() -> None:
    clock = Clock(100.0)
    ds = [deployment("a", rpm=2), deployment("b", rpm=1)]
    r = router(ds, clock)
    served = Counter[str]()
    for _ in range(3):
        d = r.choose(call())
        r.health(d).started(clock.now)
        served[d.id] += 1
        clock.now += 1
    assert served == Counter({"a": 2, "b": 1})
    with pytest.raises(_Unavailable) as info:
        r.choose(call())
    error = info.value.error
    assert isinstance(error, RateLimitError) and error.status_code == 429
    # a's first request (second 100) leaves the minute at 160; now is 103.
    assert info.value.wait == pytest.approx(57.0)
    assert error.headers == {"Retry-After": "57"}
    clock.now = 160.0
    assert r.choose(call()).id == "a"


def test_tpm_counts_the_tokens_responses_used() -> None:
    clock = Clock()
    ds = [deployment("a", tpm=1000), deployment("b")]
    r = router(ds, clock, routing_strategy="least-busy")
    r.used_tokens(ds[0], 1000)
    assert picks(r, 10) == Counter({"b": 10})
    stats = {d.id: d for d in r.statistics().deployments}
    assert stats["a"].tpm_used == 1000 and stats["a"].tpm == 1000


# -- affinity ------------------------------------------------------------------------------


def previous(dep_id: str, provider: str = "openai") -> DecodedId:
    return DecodedId(provider=provider, deployment_id=dep_id, raw_id="resp_x", owner="")


def test_strict_affinity_pins_a_native_response_and_says_when_it_cannot() -> None:
    clock = Clock()
    ds = [deployment("a"), deployment("b")]
    r = router(ds, clock, allowed_fails=0, cooldown_time=9)
    pinned = call(previous=previous("b"), previous_response_id="resp_given")
    assert picks_of(r, pinned, 20) == {"b"}
    b = r.health(ds[1])
    b.started(clock.now)
    b.failed(clock.now, server_error())
    with pytest.raises(_Unavailable) as info:
        r.choose(pinned)
    error = info.value.error
    assert isinstance(error, ServiceUnavailableError)
    assert error.param == "previous_response_id" and "'b'" in error.message
    assert error.headers == {"Retry-After": "9"}


def picks_of(r: Router, c: PreparedCall, n: int) -> set[str]:
    return {r.choose(c).id for _ in range(n)}


def test_soft_affinity_prefers_the_deployment_but_moves_when_it_is_cooling() -> None:
    clock = Clock()
    ds = [deployment(n, model="anthropic/claude-sonnet-4-5") for n in "abc"]
    r = router(ds, clock, allowed_fails=0)
    c = call(previous=previous("c", "anthropic"), previous_response_id="resp_given")
    assert picks_of(r, c, 20) == {"c"}
    h = r.health(ds[2])
    h.started(clock.now)
    h.failed(clock.now, server_error(529))
    assert picks_of(r, c, 20) <= {"a", "b"}


def test_a_removed_deployment_is_a_not_found() -> None:
    r = router([deployment("a")])
    with pytest.raises(NotFoundError) as info:
        r.choose(call(previous=previous("gone"), previous_response_id="resp_given"))
    assert info.value.param == "previous_response_id"


def test_sessions_stay_on_their_deployment_while_it_is_healthy() -> None:
    clock = Clock()
    ds = [deployment(n) for n in "abcd"]
    r = router(
        ds,
        clock,
        routing_strategy="least-busy",
        session_affinity=True,
        allowed_fails=0,
        session_ttl=60,
    )
    first = r.choose(call(session="s1")).id
    assert picks_of(r, call(session="s1"), 30) == {first}
    # The same by prompt_cache_key or user when no session is named.
    by_key = r.choose(call(body={"prompt_cache_key": "k"})).id
    assert picks_of(r, call(body={"prompt_cache_key": "k", "user": "u"}), 30) == {by_key}
    # Different sessions spread out.
    assert len({r.choose(call(session=f"s{i}")).id for i in range(40)}) > 1
    # It moves when its deployment cools, and stays where it moved, even when that one is
    # busier than the rest (prompt-cache locality beats the strategy).
    health = {d.id: r.health(d) for d in ds}
    health[first].started(clock.now)
    health[first].failed(clock.now, server_error())
    moved = picks_of(r, call(session="s1"), 30)
    assert len(moved) == 1 and first not in moved
    (kept,) = moved
    for _ in range(3):
        health[kept].started(clock.now)
    assert picks_of(r, call(session="s1"), 10) == {kept}
    # Forgotten after the TTL: the strategy decides again.
    assert r.statistics().sessions > 0
    clock.now += 61
    assert kept not in picks_of(r, call(session="s1"), 10)


def test_sessions_are_ignored_unless_configured() -> None:
    r = router([deployment(n) for n in "abcd"])
    assert len(picks_of(r, call(session="s1"), 40)) > 1


def test_a_prompt_cache_key_stays_on_one_deployment_whatever_the_strategy() -> None:
    """Soft, stateless prompt-cache affinity (rendezvous hashing), on by default."""
    ds = [deployment(n) for n in "abcd"]
    for strategy in ("simple-shuffle", "least-busy", "latency-based", "usage-based"):
        r = router(ds, routing_strategy=strategy)
        for key in ("k1", "k2", "k3"):
            assert len(picks_of(r, call(body={"prompt_cache_key": key}), 20)) == 1
        # Keys spread over the group, and a second router (another instance) agrees.
        other = router(ds, seed=99, routing_strategy=strategy)
        homes = {r.choose(call(body={"prompt_cache_key": f"k{i}"})).id for i in range(200)}
        assert homes == set("abcd")
        for i in range(50):
            key_call = call(body={"prompt_cache_key": f"k{i}"})
            assert r.choose(key_call).id == other.choose(key_call).id


def test_prompt_cache_keys_share_the_group_by_weight() -> None:
    r = router([deployment("a", weight=1), deployment("b", weight=3)])
    homes = Counter(r.choose(call(body={"prompt_cache_key": f"k{i}"})).id for i in range(4000))
    assert 0.20 < homes["a"] / 4000 < 0.30


def test_a_cache_key_moves_while_its_deployment_cools_and_comes_back() -> None:
    clock = Clock()
    ds = [deployment(n) for n in "abcd"]
    r = router(ds, clock, allowed_fails=0, cooldown_time=10)
    key_call = call(body={"prompt_cache_key": "k"})
    home = r.choose(key_call).id
    health = {d.id: r.health(d) for d in ds}
    health[home].started(clock.now)
    health[home].failed(clock.now, server_error())
    moved = picks_of(r, key_call, 20)
    assert len(moved) == 1 and home not in moved
    # A retry of one request never goes back to what failed it.
    (second,) = moved
    assert r.choose(key_call, exclude=frozenset({second})).id not in {home, second}
    clock.now += 11  # half-open: the probe goes home, and its success closes it
    assert r.choose(key_call).id == home
    health[home].answered(clock.now, ttfb=0.1, total=0.2)
    assert picks_of(r, key_call, 20) == {home}


def test_removing_a_deployment_moves_only_the_keys_it_held() -> None:
    ds = [deployment(n) for n in "abcde"]
    full = router(ds)
    less = router([d for d in ds if d.id != "e"])
    for i in range(300):
        key_call = call(body={"prompt_cache_key": f"k{i}"})
        before = full.choose(key_call).id
        if before != "e":
            assert less.choose(key_call).id == before


def test_prompt_cache_affinity_can_be_turned_off() -> None:
    r = router([deployment(n) for n in "abcd"], prompt_cache_affinity=False)
    assert len(picks_of(r, call(body={"prompt_cache_key": "k"}), 40)) > 1


# -- failure kinds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (server_error(400, code="context_length_exceeded"), "context_window_fallbacks"),
        (
            UpstreamStatusError(
                "prompt is too long: 210000 tokens > 200000 maximum", status_code=400
            ),
            "context_window_fallbacks",
        ),
        (
            UpstreamStatusError(
                "The input token count (1200000) exceeds the maximum number of tokens allowed",
                status_code=400,
            ),
            "context_window_fallbacks",
        ),
        (server_error(400, code="content_policy_violation"), "content_policy_fallbacks"),
        (
            UpstreamStatusError(
                "The response was filtered due to the prompt triggering Azure OpenAI's content "
                "management policy.",
                status_code=400,
                code="content_filter",
            ),
            "content_policy_fallbacks",
        ),
        (server_error(400), None),
        (server_error(422), None),
        (server_error(429), "retry"),
        (server_error(529), "retry"),
        (server_error(401), "retry"),
        (UpstreamTimeoutError("no first byte"), "retry"),
        (UpstreamConnectionError("reset"), "retry"),
        (InvalidRequestError("bad", param="x"), None),
    ],
)
def test_failure_kinds(error: Any, kind: str | None) -> None:
    assert failure_kind(error) == kind


# -- configuration -------------------------------------------------------------------------


def _config(**router_settings: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "g", "litellm_params": {"model": "openai/a", "rpm": 10}},
            {"model_name": "h", "litellm_params": {"model": "openai/b"}},
        ],
        "router_settings": router_settings,
    }


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"routing_strategy": "round-robin"}, "router_settings.routing_strategy"),
        ({"cooldown_time": 0}, "router_settings.cooldown_time"),
        ({"allowed_fails": -1}, "router_settings.allowed_fails"),
        ({"failure_rate_threshold": 1.5}, "router_settings.failure_rate_threshold"),
        ({"fallbacks": [{"g": ["nope"]}]}, "router_settings.fallbacks[0].g[0]"),
        ({"fallbacks": [{"nope": ["g"]}]}, "router_settings.fallbacks[0].nope"),
        ({"fallbacks": [{"g": ["g"]}]}, "router_settings.fallbacks[0].g[0]"),
        ({"context_window_fallbacks": [{"g": ["x"]}]}, "router_settings.context_window_fallbacks"),
        ({"default_fallbacks": ["x"]}, "router_settings.default_fallbacks[0]"),
    ],
)
def test_router_settings_are_checked(settings: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(**settings), environ={})
    assert info.value.param is not None and info.value.param.startswith(path)


def test_limits_must_be_positive() -> None:
    cfg = _config()
    cfg["model_list"][0]["litellm_params"]["tpm"] = 0
    with pytest.raises(ConfigError) as info:
        load_config(cfg, environ={})
    assert info.value.param == "model_list[0].litellm_params.tpm"


def test_litellm_strategy_names_and_fallbacks_load() -> None:
    cfg = load_config(
        _config(
            routing_strategy="latency-based-routing",
            fallbacks=[{"g": ["h"]}],
            default_fallbacks=["h"],
            session_affinity=True,
            session_ttl="15m",
        ),
        environ={},
    )
    r = cfg.router_settings
    assert r.fallbacks == [{"g": ["h"]}] and r.session_ttl == 900.0
    built = [build_deployment(e, r, environ={}) for e in cfg.model_list]
    assert built[0].rpm == 10
    router_ = Router.from_deployments(
        built, r, rng=random.Random(1), resolve_fake=_no_fake, environ={}, clock=Clock()
    )
    assert router_.fallbacks("g", "fallbacks") == ["h"]
    assert router_.fallbacks("h", "fallbacks") == []  # the default, minus itself
    assert router_.fallbacks("g", "context_window_fallbacks") == []


def test_health_reports_its_numbers() -> None:
    clock = Clock()
    d = deployment("a", rpm=5)
    h = Health(d, RouterSettings())
    h.started(clock.now)
    h.answered(clock.now + 1, ttfb=0.25, total=1.0)
    h.started(clock.now)
    stats = h.statistics(clock.now)
    assert (stats.in_flight, stats.requests, stats.rpm_used, stats.rpm) == (1, 2, 2, 5)
    assert stats.time_to_first_byte == 0.25 and stats.latency == 1.0
