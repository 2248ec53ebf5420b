"""Prometheus metrics of the proxy (``GET /metrics``, text exposition format 0.0.4).

The counters and histograms are ``prometheus_client`` metrics, updated once per request (never
per stream event). The gauges (requests in flight, upstream errors, each deployment's breaker
and load) are read from the gateway when a scrape collects them, through a custom collector.
Labels are route templates, model groups, deployments and status codes only — never keys,
owners or anything secret.

In one process, each :class:`Metrics` keeps its metrics in a registry of its own, not in
``prometheus_client``'s global one, so that several apps in one process (tests) count apart.
With several worker processes (``sluicegate serve --workers N``) it uses ``prometheus_client``'s
multiprocess mode: ``run()`` in :mod:`._serve` makes a fresh directory and names it in
``PROMETHEUS_MULTIPROC_DIR`` before it starts the workers, every worker writes its counts to
files there, and a scrape sums all the workers' counts, whichever worker answers it.
``prometheus_client`` reads the variable once, when it is first imported, so it must be set
before the process starts. The gauges stay the answering worker's own: each worker has its own
router, breakers and requests in flight.

We write the exposition text ourselves, from the metric families ``prometheus_client``
collects, instead of calling its ``generate_latest``, for two reasons. ``generate_latest`` sorts
label names; we keep the order they are declared in (``route``, ``method``, ``status``), the
order these lines had before and the one the proxy's tests look for. It also adds a ``_created``
gauge per series in one process and none in multiprocess mode; we leave those out, so both
modes expose the same series.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeAlias

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from ..limits import Backend

if TYPE_CHECKING:
    from ..limits import Limits

__all__ = [
    "LATENCY_BUCKETS",
    "MULTIPROCESS_VARIABLE",
    "Labels",
    "Metrics",
    "meter_shared_limits",
]

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

#: Names the directory of ``prometheus_client``'s multiprocess mode (see the module docstring).
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

Labels: TypeAlias = tuple[tuple[str, str], ...]
#: Reads a gauge's series, each with its labels, when a scrape collects it.
GaugeReader: TypeAlias = Callable[[], Iterable[tuple[Labels, float]]]

#: The counters the proxy keeps: name -> (help, label names). They are made when the app is,
#: so every worker declares them with the same labels in the same order.
_COUNTERS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "sluicegate_requests_total": (
        "HTTP requests answered, by route, method and status.",
        ("route", "method", "status"),
    ),
    "sluicegate_tokens_total": (
        "Tokens accounted, by model group and kind (input, output).",
        ("model", "kind"),
    ),
    "sluicegate_cost_usd_total": ("Cost accounted in USD, by model group.", ("model",)),
    "sluicegate_websocket_connections_total": (
        "WebSocket handshakes, by outcome (offered, accepted, refused).",
        ("outcome",),
    ),
    "sluicegate_websocket_messages_total": (
        "WebSocket messages, by direction (in: from clients, out: to them).",
        ("direction",),
    ),
}
#: The histograms likewise.
_HISTOGRAMS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "sluicegate_request_duration_seconds": (
        "Time to answer a request (to its last byte).",
        ("route",),
    ),
    "sluicegate_time_to_first_token_seconds": (
        "Time from a request to its first output event.",
        ("model",),
    ),
}


@attrs.define(eq=False)
class Metrics:
    """The proxy's metrics; :meth:`render` is the ``/metrics`` body.

    The mode (one process, or one of several workers) follows ``PROMETHEUS_MULTIPROC_DIR`` when
    the instance is made (module docstring).
    """

    #: The multiprocess directory when this process is one of several workers, else None.
    _directory: str | None = attrs.field(
        init=False, factory=lambda: os.environ.get(MULTIPROCESS_VARIABLE) or None
    )
    #: What a scrape collects: this instance's own metrics in one process; the workers' files
    #: (read by ``MultiProcessCollector``) with several. The gauges in either case.
    _registry: CollectorRegistry = attrs.field(init=False, factory=CollectorRegistry)
    #: Gauges read when a scrape collects them (name -> (help, read)).
    _gauges: dict[str, tuple[str, GaugeReader]] = attrs.field(init=False, factory=dict)
    _counters: dict[str, Counter] = attrs.field(init=False, factory=dict)
    _histograms: dict[str, Histogram] = attrs.field(init=False, factory=dict)
    #: Each series' labelled child, so that an update costs one dict lookup.
    _counter_series: dict[tuple[str, Labels], Counter] = attrs.field(init=False, factory=dict)
    _histogram_series: dict[tuple[str, Labels], Histogram] = attrs.field(init=False, factory=dict)
    #: Label names in their declared order, by family name (as prometheus_client names it).
    _label_order: dict[str, tuple[str, ...]] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self._directory is not None:
            MultiProcessCollector(self._registry, path=self._directory)  # type: ignore[no-untyped-call]
        self._registry.register(_GaugeCollector(self._gauges))
        for name, (help_text, labelnames) in _COUNTERS.items():
            self._counter(name, help_text, labelnames)
        for name, (help_text, labelnames) in _HISTOGRAMS.items():
            self._histogram(name, help_text, labelnames)

    def count(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        """Add ``amount`` to a counter's series (the counter is made on first use).

        A negative or NaN amount is not counted: a counter never goes down, and a provider's
        usage is parsed tolerantly.
        """
        series = self._counter_series.get((name, labels))
        if series is None:
            counter = self._counters.get(name) or self._counter(name, name, _names(labels))
            # A counter without labels is its own series (prometheus_client refuses labels()).
            series = counter.labels(**dict(labels)) if labels else counter
            self._counter_series[name, labels] = series
        if amount >= 0:
            series.inc(amount)

    def observe(self, name: str, labels: Labels, seconds: float) -> None:
        """Record ``seconds`` in a histogram's series (the histogram is made on first use)."""
        series = self._histogram_series.get((name, labels))
        if series is None:
            histogram = self._histograms.get(name) or self._histogram(name, name, _names(labels))
            series = self._histogram_series[name, labels] = histogram.labels(**dict(labels))
        series.observe(seconds)

    def gauge(self, name: str, help_text: str, read: GaugeReader) -> None:
        """Expose a gauge whose series ``read`` returns at each scrape (replacing one of the
        same name)."""
        self._gauges[name] = (help_text, read)

    def render(self) -> bytes:
        """The exposition text of every metric (this process's, or every worker's)."""
        return _exposition(self._registry.collect(), self._label_order)

    # In multiprocess mode the values live in the workers' files, which the registry's
    # MultiProcessCollector reads: registering the metrics themselves would count them twice.

    def _counter(self, name: str, help_text: str, labelnames: tuple[str, ...]) -> Counter:
        registry = None if self._directory is not None else self._registry
        counter = self._counters[name] = Counter(name, help_text, labelnames, registry=registry)
        self._label_order[name.removesuffix("_total")] = labelnames
        return counter

    def _histogram(self, name: str, help_text: str, labelnames: tuple[str, ...]) -> Histogram:
        registry = None if self._directory is not None else self._registry
        histogram = self._histograms[name] = Histogram(
            name, help_text, labelnames, registry=registry, buckets=LATENCY_BUCKETS
        )
        self._label_order[name] = labelnames
        return histogram


def meter_shared_limits(metrics: Metrics, limits: Limits) -> None:
    """Expose the shared rate limits (limits opened on Redis; otherwise nothing):
    ``sluicegate_shared_limits_up``, 1 while this process reaches Redis (a gauge, each
    worker's own), and ``sluicegate_shared_limits_fallbacks_total``, the key admissions decided
    by a local fallback because Redis was unreachable (a counter, summed over the workers)."""
    if limits.statistics().backend is not Backend.REDIS:
        return
    metrics.gauge(
        "sluicegate_shared_limits_up",
        "Whether Redis answers and rate limits are shared by the gateway instances (1) or "
        "counted per instance (0).",
        lambda: [((), 1.0 if limits.statistics().up else 0.0)],
    )
    if _FALLBACKS not in metrics._counters:
        metrics._counter(
            _FALLBACKS,
            "Key admissions decided per instance because Redis was unreachable.",
            (),
        )
    metrics.count(_FALLBACKS, (), 0)  # a scrape shows it before the first fallback
    limits.on_fallback(lambda: metrics.count(_FALLBACKS, ()))


_FALLBACKS = "sluicegate_shared_limits_fallbacks_total"


def _names(labels: Labels) -> tuple[str, ...]:
    return tuple(key for key, _ in labels)


@attrs.define(eq=False)
class _GaugeCollector:
    """A ``prometheus_client`` collector of the gauges :meth:`Metrics.gauge` registered."""

    _gauges: dict[str, tuple[str, GaugeReader]]

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, read) in sorted(self._gauges.items()):
            series = list(read())
            labelnames = [key for key, _ in series[0][0]] if series else None
            family = GaugeMetricFamily(name, help_text, labels=labelnames)
            for labels, reading in series:
                family.add_metric([value for _, value in labels], reading)
            yield family


def _exposition(families: Iterable[Metric], label_order: Mapping[str, tuple[str, ...]]) -> bytes:
    """Text format 0.0.4, with labels in their declared order and no ``_created`` series."""
    lines: list[str] = []
    for family in sorted(families, key=lambda f: f.name):
        # prometheus_client names a counter's family without ``_total``; its samples have it.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        lines.append(f"# HELP {name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {name} {family.type}")
        created = f"{family.name}_created"
        declared = label_order.get(family.name, ())
        for sample in family.samples:
            if sample.name != created:
                labels = _labels(sample.labels, declared)
                lines.append(f"{sample.name}{labels} {floatToGoString(sample.value)}")  # type: ignore[no-untyped-call]
    return ("\n".join(lines) + "\n").encode()


def _labels(labels: Mapping[str, str], declared: tuple[str, ...]) -> str:
    if not labels:
        return ""
    keys = [k for k in declared if k in labels] + [k for k in labels if k not in declared]
    return "{" + ",".join(f'{key}="{_escape(labels[key])}"' for key in keys) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
