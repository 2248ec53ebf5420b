"""``GET /metrics``: prometheus_client's metrics, in one process and summed over workers.

A scrape must parse as Prometheus text with the right types (``counter`` for every ``_total``),
keep the metric names and label order the proxy has always written, keep several apps in one
process apart, and, with ``--workers N``, count every worker's requests whichever worker
answers it (it used to show one worker's own counts).
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sluicegate.server._metrics import LATENCY_BUCKETS, Metrics

from .serve_process import serving as serve_process

MASTER = "sk-master-metrics-0123456789"
REQUEST = (("route", "/v1/responses"), ("method", "POST"), ("status", "200"))
_BOUND = re.compile(rb"Running on (http://\S+)")


def families(text: str) -> dict[str, tuple[str, list[Sample]]]:
    """Family name -> (type, samples), as prometheus_client's own parser reads the text."""
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def value(text: str, sample_name: str, missing: float | None = None, /, **labels: str) -> float:
    """A sample's value; ``missing`` if the text has no such sample (else that fails).

    ``missing`` is positional-only, so a label (``**labels``) can never be taken for it."""
    for _, samples in families(text).values():
        for sample in samples:
            if sample.name == sample_name and sample.labels == labels:
                return sample.value
    assert missing is not None, f"no {sample_name} {labels} in:\n{text}"
    return missing


def test_a_scrape_parses_with_the_right_types() -> None:
    metrics = Metrics()
    metrics.count("sluicegate_requests_total", REQUEST)
    metrics.count("sluicegate_requests_total", REQUEST)
    metrics.count("sluicegate_tokens_total", (("model", "g"), ("kind", "output")), 8)
    metrics.count("sluicegate_cost_usd_total", (("model", "g"),), 0.25)
    metrics.observe("sluicegate_request_duration_seconds", (("route", "/v1/responses"),), 0.3)
    metrics.gauge("sluicegate_requests_in_flight", "Requests now.", lambda: [((), 3.0)])
    metrics.gauge(
        "sluicegate_deployment_state",
        "Breakers.",
        lambda: [((("deployment", "a"), ("model_group", "g")), 2.0)],
    )
    text = metrics.render().decode()
    found = families(text)
    for name in ("sluicegate_requests", "sluicegate_tokens", "sluicegate_cost_usd"):
        assert found[name][0] == "counter", name
        assert f"# TYPE {name}_total counter" in text
    for name in ("sluicegate_request_duration_seconds", "sluicegate_time_to_first_token_seconds"):
        assert found[name][0] == "histogram", name
    for name in ("sluicegate_requests_in_flight", "sluicegate_deployment_state"):
        assert found[name][0] == "gauge", name
    # Every family whose samples end in _total is a counter, and no gauge runs a total.
    for name, (kind, samples) in found.items():
        if any(s.name.endswith("_total") for s in samples):
            assert kind == "counter", name
    assert value(text, "sluicegate_requests_total", **dict(REQUEST)) == 2
    assert value(text, "sluicegate_tokens_total", model="g", kind="output") == 8
    assert value(text, "sluicegate_cost_usd_total", model="g") == 0.25
    assert value(text, "sluicegate_requests_in_flight") == 3
    histogram = "sluicegate_request_duration_seconds"
    route = {"route": "/v1/responses"}
    assert value(text, f"{histogram}_count", **route) == 1
    assert value(text, f"{histogram}_bucket", **route, le="0.25") == 0
    assert value(text, f"{histogram}_bucket", **route, le="0.5") == 1
    buckets = [s for s in found[histogram][1] if s.name.endswith("_bucket")]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1  # and +Inf


def test_labels_keep_their_declared_order_and_there_are_no_created_series() -> None:
    """Regression guard: prometheus_client's own writer sorts label names and, in one process,
    adds a ``_created`` gauge per series (none in multiprocess mode)."""
    metrics = Metrics()
    metrics.count("sluicegate_requests_total", REQUEST)
    metrics.count("sluicegate_tokens_total", (("model", "g"), ("kind", "input")), 5)
    metrics.observe("sluicegate_time_to_first_token_seconds", (("model", "g"),), 0.01)
    text = metrics.render().decode()
    assert 'sluicegate_requests_total{route="/v1/responses",method="POST",status="200"} 1' in text
    assert 'sluicegate_tokens_total{model="g",kind="input"} 5' in text
    assert 'sluicegate_time_to_first_token_seconds_bucket{model="g",le="0.01"} 1' in text
    assert "_created" not in text


def test_two_apps_in_one_process_count_apart() -> None:
    one, two = Metrics(), Metrics()
    one.count("sluicegate_requests_total", REQUEST)
    assert value(one.render().decode(), "sluicegate_requests_total", **dict(REQUEST)) == 1
    assert "sluicegate_requests_total{" not in two.render().decode()


def test_a_counter_never_goes_down() -> None:
    """A provider's usage is parsed tolerantly: a negative or NaN count is not counted."""
    metrics = Metrics()
    labels = (("model", "g"), ("kind", "output"))
    metrics.count("sluicegate_tokens_total", labels, 4)
    metrics.count("sluicegate_tokens_total", labels, -3)
    metrics.count("sluicegate_tokens_total", labels, float("nan"))
    assert (
        value(metrics.render().decode(), "sluicegate_tokens_total", model="g", kind="output") == 4
    )


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    odd = 'a"b\\c\nd'
    metrics.count("sluicegate_requests_total", (("route", odd), ("method", "GET"), ("status", "1")))
    text = metrics.render().decode()
    assert value(text, "sluicegate_requests_total", route=odd, method="GET", status="1") == 1


# --- several workers -------------------------------------------------------------------------


@asynccontextmanager
async def serving(tmp_path: Path, *, workers: int) -> AsyncIterator[str]:
    """``sluicegate serve --workers N`` with its temporary files under ``tmp_path/tmp``; yields
    its URL, and checks it stopped cleanly."""
    config = tmp_path / "metrics.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: slow\n"
        "    litellm_params: {model: fake/slow, fake_tokens: 3000, fake_token_delay: 0.01}\n"
        "general_settings:\n"
        f"  master_key: {MASTER}\n"
        f"  response_id_secret: metrics-test-secret\n"
        f"  store: {{path: {tmp_path / 'metrics.db'}}}\n"
    )
    (tmp_path / "tmp").mkdir()
    env = {**_environ(), "TMPDIR": str(tmp_path / "tmp")}
    log = tmp_path / "server.log"
    async with serve_process(config, workers=workers, log=log, env=env) as server:
        yield server.url
    assert server.process.returncode == 0, log.read_text()


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}


def _connection(url: str) -> httpx.AsyncClient:
    """A client on one connection: it stays with the worker that accepted it."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=30)


_COUNT_IN_A_WORKER = """
import sys
from sluicegate.server._metrics import Metrics

metrics = Metrics()
labels = (("route", "/health/liveliness"), ("method", "GET"), ("status", "200"))
for _ in range(int(sys.argv[1])):
    metrics.count("sluicegate_requests_total", labels)
"""


async def test_a_scrape_sums_every_workers_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: with ``--workers 2`` a scrape showed the counts of whichever worker answered
    it. Two worker processes count into the multiprocess directory (as ``serve`` sets it up);
    a scrape from a third sums them. Deterministic: which worker the kernel hands a connection
    is not part of it."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {**_environ(), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for n in (3, 4):
        await trio.run_process([sys.executable, "-c", _COUNT_IN_A_WORKER, str(n)], env=env)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    text = Metrics().render().decode()
    live = {"route": "/health/liveliness", "method": "GET", "status": "200"}
    assert value(text, "sluicegate_requests_total", **live) == 7
    assert families(text)["sluicegate_requests"][0] == "counter"


async def test_two_workers_share_one_metrics_directory_gone_when_they_stop(tmp_path: Path) -> None:
    """``sluicegate serve --workers 2`` makes the multiprocess directory, every worker counts
    into it (a scrape through either counts every probe), and it is removed at the end."""
    live = {"route": "/health/liveliness", "method": "GET", "status": "200"}
    probes = 10
    async with serving(tmp_path, workers=2) as url:
        (directory,) = (tmp_path / "tmp").glob("sluicegate-metrics-*")
        for _ in range(probes):
            async with _connection(url) as http:
                assert (await http.get("/health/liveliness")).status_code == 200
        assert list(directory.glob("counter_*.db")), list(directory.iterdir())
        async with _connection(url) as http:
            text = (await http.get("/metrics")).text
    assert value(text, "sluicegate_requests_total", **live) == probes
    found = families(text)
    assert found["sluicegate_requests"][0] == "counter"
    assert found["sluicegate_request_duration_seconds"][0] == "histogram"
    count = value(text, "sluicegate_request_duration_seconds_count", route="/health/liveliness")
    assert count == probes
    assert not directory.exists()
