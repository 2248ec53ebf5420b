"""Prometheus metrics of the proxy (``GET /metrics``, text exposition format 0.0.4).

A few counters, gauges and histograms kept in plain dicts: the proxy updates them once per
request (never per stream event), and rendering walks them. Labels are route templates, model
groups and status codes only — never keys, owners or anything secret. Counts are per worker
process (a scraper sums the workers, as for any multi-process server).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

import attrs

__all__ = ["LATENCY_BUCKETS", "Metrics"]

#: Seconds; suits both a fast proxied call and a long generation.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

Labels = tuple[tuple[str, str], ...]


@attrs.define(eq=False)
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int]
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1


@attrs.define(eq=False)
class Metrics:
    """The proxy's metrics; :meth:`render` is the ``/metrics`` body."""

    #: Gauges read when rendering (name -> (help, read)), e.g. the gateway's in-flight count.
    _gauges: dict[str, tuple[str, Callable[[], Iterable[tuple[Labels, float]]]]] = attrs.Factory(
        dict
    )
    _counters: dict[str, dict[Labels, float]] = attrs.Factory(dict)
    _histograms: dict[str, dict[Labels, _Histogram]] = attrs.Factory(dict)

    def count(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        series = self._counters.setdefault(name, {})
        series[labels] = series.get(labels, 0.0) + amount

    def observe(self, name: str, labels: Labels, seconds: float) -> None:
        series = self._histograms.setdefault(name, {})
        histogram = series.get(labels)
        if histogram is None:
            histogram = series[labels] = _Histogram(LATENCY_BUCKETS, [0] * len(LATENCY_BUCKETS))
        histogram.observe(seconds)

    def gauge(
        self, name: str, help_text: str, read: Callable[[], Iterable[tuple[Labels, float]]]
    ) -> None:
        self._gauges[name] = (help_text, read)

    def render(self) -> bytes:
        lines: list[str] = []
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in read()]
        for name, series in sorted(self._counters.items()):
            lines += [f"# HELP {name} {_HELP.get(name, name)}", f"# TYPE {name} counter"]
            for labels, value in sorted(series.items()):
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
        for name, histograms in sorted(self._histograms.items()):
            lines += [f"# HELP {name} {_HELP.get(name, name)}", f"# TYPE {name} histogram"]
            for labels, h in sorted(histograms.items()):
                running = 0
                for bound, count in zip(h.buckets, h.counts, strict=True):
                    running += count
                    le = (*labels, ("le", _number(bound)))
                    lines.append(f"{name}_bucket{_labels(le)} {running}")
                lines.append(f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {h.count}")
                lines.append(f"{name}_sum{_labels(labels)} {_number(h.total)}")
                lines.append(f"{name}_count{_labels(labels)} {h.count}")
        return ("\n".join(lines) + "\n").encode()


_HELP = {
    "sluicegate_requests_total": "HTTP requests answered, by route, method and status.",
    "sluicegate_request_duration_seconds": "Time to answer a request (to its last byte).",
    "sluicegate_time_to_first_token_seconds": "Time from a request to its first output event.",
    "sluicegate_tokens_total": "Tokens accounted, by model group and kind (input, output).",
    "sluicegate_cost_usd_total": "Cost accounted in USD, by model group.",
}


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))
