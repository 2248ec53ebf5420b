"""The router's benchmark (benchmarks/_routing.py): the pick timing runs, and the prompt-cache
simulation shows what affinity buys and that it survives a deployment going away."""

from __future__ import annotations

from benchmarks._routing import (
    CACHE_HIT_TARGET,
    cache_checks,
    cache_table,
    measure_cache_affinity,
    measure_routing,
    routing_table,
)


def test_prompt_cache_affinity_keeps_keys_where_their_prefix_is_cached() -> None:
    off, on = measure_cache_affinity(6000, seed=5)
    assert (off.affinity, on.affinity) == (False, True)
    assert on.hit_rate >= CACHE_HIT_TARGET
    assert on.hit_rate_one_out >= CACHE_HIT_TARGET
    # Without affinity every deployment sees every key: its cache thrashes.
    assert off.hit_rate < on.hit_rate - 0.3
    # The cooled deployment takes nothing while out and its keys come back after.
    assert on.first_share[1] == 0.0
    assert on.first_share[0] > 0.15 and on.first_share[2] > 0.15
    (check,) = cache_checks([off, on])
    assert check.passed
    assert "hit rate" in cache_table([off, on], markdown=True)


def test_picks_with_a_prompt_cache_key_are_timed_beside_the_strategies() -> None:
    runs = measure_routing(200, 1)
    assert runs[-1].strategy == "simple-shuffle + prompt_cache_key"
    assert all(r.us_per_pick > 0 for r in runs)
    assert "prompt_cache_key" in routing_table(runs)
