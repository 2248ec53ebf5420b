"""The router's pick: what choosing a deployment costs (at most 20 µs with 100 deployments in
a group), and how often ``prompt_cache_key`` affinity lands a request where its prompt is cached.

For each strategy, a group of 100 deployments with live state (latency averages, tokens used
in the minute, requests in flight, a few cooling down, rpm/tpm limits on some) answers
``Router.choose`` in a tight loop; the figure is CPU microseconds per pick (median of the
repeats, with the spread). No I/O: the pick is synchronous by design, so this is all of it.
The same is timed for requests that carry one of 1,000 ``prompt_cache_key`` values.

Cache hits (:func:`measure_cache_affinity`): a group of 4 equal deployments takes 40,000
requests, each with one of 400 ``prompt_cache_key`` values drawn uniformly (seeded). Each
deployment stands for a provider account whose prompt cache holds its 150 most recently used
prefixes (LRU; a provider keeps a prefix for minutes, so under steady load it holds a bounded
set). A request hits when its key is in the chosen deployment's cache. The first deployment
cools down (a 429 with Retry-After) for the middle third of the run. The figure is the hit
rate, with ``prompt_cache_affinity`` off (the strategy alone) and on, over the whole run and
over the third with one deployment out.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, get_args

import attrs

from sluicegate.actors._router import Router
from sluicegate.config import (
    ROUTING_STRATEGIES,
    LiteLLMParams,
    ModelEntry,
    ModelInfo,
    RouterSettings,
    RoutingStrategy,
    build_deployment,
)
from sluicegate.errors import UpstreamStatusError
from sluicegate.runtime._messages import PreparedCall

from ._memory import _render
from ._report import Check

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sluicegate.config import Deployment

__all__ = [
    "PICK_TARGET_US",
    "CacheRun",
    "RoutingRun",
    "cache_checks",
    "cache_table",
    "measure_cache_affinity",
    "measure_routing",
    "routing_checks",
    "routing_table",
]

#: The issue's budget for one pick, in microseconds.
PICK_TARGET_US = 20.0
DEPLOYMENTS = 100
#: The strategies, by their canonical names (those that name themselves).
STRATEGIES: tuple[RoutingStrategy, ...] = tuple(
    s for s in get_args(RoutingStrategy) if ROUTING_STRATEGIES[s] == s
)


@attrs.frozen(kw_only=True)
class RoutingRun:
    strategy: str
    deployments: int
    picks: int
    us_per_pick: float
    spread_us: tuple[float, float]


class _Clock:
    """Seconds that move on slowly, so the rpm/tpm windows roll during the run."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1e-5
        return self.now


async def _no_fake(d: Deployment) -> Deployment:  # pragma: no cover -- no fake deployments
    return d


def _router(strategy: RoutingStrategy, clock: _Clock) -> Router:
    settings = RouterSettings(routing_strategy=strategy, cooldown_time=1e9)
    rng = random.Random(20261202)
    deployments = []
    for i in range(DEPLOYMENTS):
        limited = i % 4 == 0  # a quarter of them have generous limits the run never reaches
        entry = ModelEntry(
            model_name="bench",
            litellm_params=LiteLLMParams(
                model="openai/gpt-5.4",
                api_base=f"https://d{i}.bench.invalid/v1",
                weight=1 + i % 5,
                rpm=10**9 if limited else None,
                tpm=10**12 if limited else None,
            ),
            model_info=ModelInfo(id=f"d{i}"),
        )
        deployments.append(build_deployment(entry, settings, environ={}))
    router = Router.from_deployments(
        deployments, settings, rng=rng, resolve_fake=_no_fake, environ={}, clock=clock
    )
    for i, d in enumerate(deployments):
        health = router.health(d)
        for _ in range(i % 3):
            health.started(clock())
        health.started(clock())
        health.answered(clock(), ttfb=0.05 + rng.random() / 10, total=0.5 + rng.random())
        router.used_tokens(d, rng.randrange(10_000))
        if i % 20 == 7:  # five of them cooling for the whole run
            health.started(clock())
            health.failed(clock(), UpstreamStatusError("x", status_code=429, retry_after=1e9))
    return router


#: Distinct ``prompt_cache_key`` values in the timed picks that carry one.
TIMED_CACHE_KEYS = 1000


def _measure_one(strategy: RoutingStrategy, picks: int, *, cache_keys: bool = False) -> float:
    clock = _Clock()
    router = _router(strategy, clock)
    keys = [f"key-{i}" for i in range(TIMED_CACHE_KEYS)] if cache_keys else [None]
    calls = [
        PreparedCall(
            model="bench",
            body={"model": "bench", "input": "x", **({"prompt_cache_key": k} if k else {})},
            stream=True,
        )
        for k in keys
    ]
    choose = router.choose
    n = len(calls)
    for i in range(max(min(picks, 1000), n)):  # warm-up (every key's order computed once)
        choose(calls[i % n])
    start = time.process_time()
    for i in range(picks):
        choose(calls[i % n])
    return (time.process_time() - start) / picks * 1e6


def measure_routing(picks: int, repeats: int) -> list[RoutingRun]:
    runs = []
    cases: list[tuple[RoutingStrategy, bool]] = [(s, False) for s in STRATEGIES]
    cases.append(("simple-shuffle", True))
    for strategy, cache_keys in cases:
        samples = sorted(
            _measure_one(strategy, picks, cache_keys=cache_keys) for _ in range(repeats)
        )
        runs.append(
            RoutingRun(
                strategy=f"{strategy} + prompt_cache_key" if cache_keys else strategy,
                deployments=DEPLOYMENTS,
                picks=picks,
                us_per_pick=samples[len(samples) // 2],
                spread_us=(samples[0], samples[-1]),
            )
        )
    return runs


# -- prompt-cache affinity: hit rate -----------------------------------------------------------

CACHE_DEPLOYMENTS = 4
CACHE_KEYS = 400
CACHE_CAPACITY = 150
#: The hit rate affinity must reach over the whole run (the target the checks report).
CACHE_HIT_TARGET = 0.9


@attrs.frozen(kw_only=True)
class CacheRun:
    affinity: bool
    requests: int
    hit_rate: float
    #: The hit rate while one deployment was cooling down.
    hit_rate_one_out: float
    #: The share of requests the cooled deployment served in each third of the run.
    first_share: tuple[float, float, float]


@attrs.define
class _Tick:
    """A clock the run moves by hand: one millisecond a request."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache_run(affinity: bool, requests: int, seed: int) -> CacheRun:
    clock = _Tick()
    settings = RouterSettings(prompt_cache_affinity=affinity)
    deployments = [
        build_deployment(
            ModelEntry(
                model_name="bench",
                litellm_params=LiteLLMParams(
                    model="openai/gpt-5.4", api_base=f"https://c{i}.bench.invalid/v1"
                ),
                model_info=ModelInfo(id=f"c{i}"),
            ),
            settings,
            environ={},
        )
        for i in range(CACHE_DEPLOYMENTS)
    ]
    router = Router.from_deployments(
        deployments,
        settings,
        rng=random.Random(seed),
        resolve_fake=_no_fake,
        environ={},
        clock=clock,
    )
    caches: dict[str, OrderedDict[str, None]] = {d.id: OrderedDict() for d in deployments}
    draw = random.Random(seed + 1)
    calls = [
        PreparedCall(
            model="bench",
            body={"model": "bench", "input": "x", "prompt_cache_key": f"tenant-{k}"},
            stream=True,
        )
        for k in range(CACHE_KEYS)
    ]
    out_from, out_to = requests // 3, 2 * requests // 3
    hits = hits_out = 0
    first = [0, 0, 0]
    for i in range(requests):
        clock.now = 1000.0 + i / 1000
        if i == out_from:
            # Out until ``out_to``: a 429 whose Retry-After lasts that long; then the
            # breaker's half-open probe brings it back (the first pick after, answered).
            health = router.health(deployments[0])
            health.started(clock())
            wait = (out_to - out_from) / 1000
            health.failed(clock(), UpstreamStatusError("x", status_code=429, retry_after=wait))
        call = calls[draw.randrange(CACHE_KEYS)]
        chosen = router.choose(call)
        health = router.health(chosen)
        health.started(clock())
        health.answered(clock(), ttfb=0.1, total=0.2)
        if chosen.id == deployments[0].id:
            first[0 if i < out_from else 1 if i < out_to else 2] += 1
        cache = caches[chosen.id]
        key = call.body["prompt_cache_key"]
        if key in cache:
            hits += 1
            hits_out += out_from <= i < out_to
            cache.move_to_end(key)
        else:
            cache[key] = None
            if len(cache) > CACHE_CAPACITY:
                cache.popitem(last=False)
    return CacheRun(
        affinity=affinity,
        requests=requests,
        hit_rate=hits / requests,
        hit_rate_one_out=hits_out / (out_to - out_from),
        first_share=(
            first[0] / out_from,
            first[1] / (out_to - out_from),
            first[2] / (requests - out_to),
        ),
    )


def measure_cache_affinity(requests: int, seed: int = 20261207) -> list[CacheRun]:
    """The prompt-cache hit rate without and with affinity (module docstring)."""
    return [_cache_run(affinity, requests, seed) for affinity in (False, True)]


def cache_checks(runs: Sequence[CacheRun]) -> list[Check]:
    return [
        Check(
            name=f"prompt-cache hit rate with prompt_cache_affinity >= {CACHE_HIT_TARGET:.0%}",
            passed=r.hit_rate >= CACHE_HIT_TARGET,
            detail=f"{r.hit_rate:.1%} ({r.hit_rate_one_out:.1%} with one deployment out)",
        )
        for r in runs
        if r.affinity
    ]


def cache_table(runs: Sequence[CacheRun], *, markdown: bool = False) -> str:
    header = ["prompt_cache_affinity", "requests", "hit rate", "hit rate, one deployment out"]
    rows = [
        [
            "on" if r.affinity else "off",
            str(r.requests),
            f"{r.hit_rate:.1%}",
            f"{r.hit_rate_one_out:.1%}",
        ]
        for r in runs
    ]
    return _render(header, rows, left=1, markdown=markdown)


def routing_checks(runs: Sequence[RoutingRun]) -> list[Check]:
    return [
        Check(
            name=f"router pick ({r.strategy}, {r.deployments} deployments) <= "
            f"{PICK_TARGET_US:g} us",
            passed=r.us_per_pick <= PICK_TARGET_US,
            detail=f"{r.us_per_pick:.1f} us per pick ({r.spread_us[0]:.1f}-{r.spread_us[1]:.1f})",
        )
        for r in runs
    ]


def routing_table(runs: Sequence[RoutingRun], *, markdown: bool = False) -> str:
    header = ["strategy", "deployments", "picks", "CPU us/pick", "spread"]
    rows = [
        [
            r.strategy,
            str(r.deployments),
            str(r.picks),
            f"{r.us_per_pick:.1f}",
            f"{r.spread_us[0]:.1f}-{r.spread_us[1]:.1f}",
        ]
        for r in runs
    ]
    return _render(header, rows, left=1, markdown=markdown)
