"""The router's pick: what choosing a deployment costs (issue 7 asks for at most 20 µs with 100
deployments in a group).

For each strategy, a group of 100 deployments with live state (latency averages, tokens used
in the minute, requests in flight, a few cooling down, rpm/tpm limits on some) answers
``Router.choose`` in a tight loop; the figure is CPU microseconds per pick (median of the
repeats, with the spread). No I/O: the pick is synchronous by design, so this is all of it.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import attrs

from sluicegate.actors._router import Router
from sluicegate.config import (
    ROUTING_STRATEGIES,
    LiteLLMParams,
    ModelEntry,
    ModelInfo,
    RouterSettings,
    build_deployment,
)
from sluicegate.errors import UpstreamStatusError
from sluicegate.runtime._messages import PreparedCall

from ._memory import _render
from ._report import Check

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sluicegate.config import Deployment

__all__ = ["PICK_TARGET_US", "RoutingRun", "measure_routing", "routing_checks", "routing_table"]

#: The issue's budget for one pick, in microseconds.
PICK_TARGET_US = 20.0
DEPLOYMENTS = 100
#: The strategies, by their canonical names.
STRATEGIES = tuple(dict.fromkeys(ROUTING_STRATEGIES.values()))


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


def _router(strategy: str, clock: _Clock) -> Router:
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


def _measure_one(strategy: str, picks: int) -> float:
    clock = _Clock()
    router = _router(strategy, clock)
    call = PreparedCall(model="bench", body={"model": "bench", "input": "x"}, stream=True)
    choose = router.choose
    for _ in range(min(picks, 1000)):  # warm-up
        choose(call)
    start = time.process_time()
    for _ in range(picks):
        choose(call)
    return (time.process_time() - start) / picks * 1e6


def measure_routing(picks: int, repeats: int) -> list[RoutingRun]:
    runs = []
    for strategy in STRATEGIES:
        samples = sorted(_measure_one(strategy, picks) for _ in range(repeats))
        runs.append(
            RoutingRun(
                strategy=strategy,
                deployments=DEPLOYMENTS,
                picks=picks,
                us_per_pick=samples[len(samples) // 2],
                spread_us=(samples[0], samples[-1]),
            )
        )
    return runs


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
