"""The gauges the proxy's metrics read from its gateway when they are scraped: requests in
flight, upstream errors, and each deployment's breaker and load (the router's statistics)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .._gateway import BreakerState, DeploymentStatistics, Gateway
from ._metrics import Labels, Metrics

__all__ = ["gauge_gateway"]


def gauge_gateway(metrics: Metrics, gateway: Gateway, in_flight: Callable[[], int]) -> None:
    """Register the gateway's gauges; ``in_flight`` counts the requests the proxy is answering
    (background responses are the gateway's)."""
    metrics.gauge(
        "sluicegate_requests_in_flight",
        "Requests being answered now (background responses included).",
        lambda: [((), float(in_flight() + gateway.statistics().background_running))],
    )
    metrics.gauge(
        "sluicegate_upstream_errors",
        "Upstream attempts that failed (statuses, resets, timeouts) since start.",
        lambda: [((), float(gateway.statistics().upstream_errors))],
    )
    metrics.gauge(
        "sluicegate_deployment_cooldowns",
        "Deployments cooling down now (circuit breaker open or half-open).",
        lambda: [((), float(gateway.statistics().deployments_cooling))],
    )
    for name, help_text, read in _DEPLOYMENT_GAUGES:
        metrics.gauge(name, help_text, partial(_per_deployment, gateway, read))


#: The breaker states as the ``sluicegate_deployment_state`` gauge shows them.
_BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

#: Per-deployment gauges from the router's statistics: (name, help, value of a snapshot).
_DEPLOYMENT_GAUGES: tuple[tuple[str, str, Callable[[DeploymentStatistics], float]], ...] = (
    (
        "sluicegate_deployment_state",
        "Circuit breaker of each deployment: 0 closed, 1 half-open, 2 open.",
        lambda d: float(_BREAKER_VALUES[d.state]),
    ),
    (
        "sluicegate_deployment_cooldown_remaining_seconds",
        "Seconds until an open deployment lets a probe request through.",
        lambda d: d.cooldown_remaining,
    ),
    (
        "sluicegate_deployment_in_flight",
        "Upstream requests in flight, by deployment.",
        lambda d: float(d.in_flight),
    ),
    (
        "sluicegate_deployment_failures",
        "Failed upstream attempts since start, by deployment.",
        lambda d: float(d.failures),
    ),
    (
        "sluicegate_deployment_latency_seconds",
        "Averaged total time of the deployment's answers (0 before the first).",
        lambda d: d.latency or 0.0,
    ),
    (
        "sluicegate_deployment_rpm_used",
        "Requests sent to the deployment in the last minute.",
        lambda d: float(d.rpm_used),
    ),
    (
        "sluicegate_deployment_tpm_used",
        "Tokens used by the deployment in the last minute.",
        lambda d: float(d.tpm_used),
    ),
)


def _per_deployment(
    gateway: Gateway, read: Callable[[DeploymentStatistics], float]
) -> list[tuple[Labels, float]]:
    return [
        ((("deployment", d.id), ("model_group", d.model_name)), read(d))
        for d in gateway.statistics().deployments
    ]
