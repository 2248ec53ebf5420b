"""The proxy benchmark (benchmarks/_proxy.py): the wrk output parser on real wrk 4.1 output, the
failure checks, the summary and overhead arithmetic, the time-to-first-event table, one instance
against two on PostgreSQL (benchmarks/_instances.py), and short runs when wrk is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import attrs
import httpx
import pytest

from benchmarks import _proxy as bench_proxy
from benchmarks._headline import instances_line
from benchmarks._instances import (
    InstancesResult,
    instances_checks,
    instances_json,
    instances_rows,
    instances_table,
    measure_instances,
)
from benchmarks._postgres import DATABASE_URL_ENV, PostgresServer
from benchmarks._proxy import (
    DIRECT,
    LITELLM_PROXY,
    MASTER_KEY,
    PROXY,
    FirstEvent,
    ProxyRun,
    _background_load,
    check_wrk,
    first_event_json,
    first_event_rows,
    first_event_table,
    measure_first_event,
    measure_proxy,
    open_proxy_server,
    parse_wrk_output,
    proxy_json,
    proxy_table,
    summarize_proxy,
    wrk_script,
)
from benchmarks._runner import Case
from benchmarks._upstream import BenchmarkError, plan_cpus, run_fake_upstream

# Captured from `wrk --latency -t1 -c4 -d1s -s <wrk_script(...)> URL` (wrk debian/4.1.0-3+b2).

#: The proxy, non-streaming: latencies in ms.
PROXY_CREATE = """\
Running 1s test @ http://127.0.0.1:18002/v1/responses
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.07ms    3.55ms  37.12ms   95.69%
    Req/Sec   453.70     61.59   515.00     90.00%
  Latency Distribution
     50%    8.29ms
     75%    9.25ms
     90%   10.54ms
     99%   28.25ms
  452 requests in 1.00s, 647.55KB read
Requests/sec:    451.32
Transfer/sec:    646.58KB
sluicegate-bench failed: 0
"""

#: The fake upstream directly: us and ms in one distribution, k in the thread stats.
DIRECT_CREATE = """\
Running 1s test @ http://127.0.0.1:18001/v1/responses
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.36ms    8.23ms  61.81ms   94.15%
    Req/Sec     8.62k     2.56k   13.61k    63.64%
  Latency Distribution
     50%  442.00us
     75%  556.00us
     90%  840.00us
     99%   49.99ms
  9412 requests in 1.10s, 11.57MB read
Requests/sec:   8551.57
Transfer/sec:     10.51MB
sluicegate-bench failed: 0
"""

#: The proxy with a wrong key: every answer a 401.
WRONG_KEY = """\
Running 1s test @ http://127.0.0.1:18002/v1/responses
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.14ms    1.43ms  14.41ms   73.50%
    Req/Sec     0.97k    88.92     1.08k    60.00%
  Latency Distribution
     50%    3.89ms
     75%    4.74ms
     90%    6.02ms
     99%    9.56ms
  969 requests in 1.00s, 316.06KB read
  Non-2xx or 3xx responses: 969
Requests/sec:    968.30
Transfer/sec:    315.83KB
sluicegate-bench failed: 969
"""

#: Slow streams (the fake with --token-delay 0.06, -c8 -d3s): seconds, padded with a space.
SLOW_STREAMS = """\
Running 3s test @ http://127.0.0.1:18003/v1/responses
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23s     1.38ms   1.23s    62.50%
    Req/Sec     6.00      0.00     6.00    100.00%
  Latency Distribution
     50%    1.23s\x20
     75%    1.23s\x20
     90%    1.23s\x20
     99%    1.23s\x20
  16 requests in 3.01s, 182.09KB read
Requests/sec:      5.32
Transfer/sec:     60.58KB
sluicegate-bench failed: 0
"""

#: The same with --timeout 1s: every request timed out, so no latency was recorded.
TIMEOUTS = """\
Running 3s test @ http://127.0.0.1:18003/v1/responses
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     6.00      0.00     6.00    100.00%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  16 requests in 3.00s, 182.09KB read
  Socket errors: connect 0, read 0, write 0, timeout 16
Requests/sec:      5.32
Transfer/sec:     60.60KB
sluicegate-bench failed: 0
"""

#: Slow streams that time out mixed with requests to an unknown path (404s).
TIMEOUTS_AND_404 = """\
Running 3s test @ http://127.0.0.1:18003/v1/responses
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.29ms    1.01ms   3.69ms   66.67%
    Req/Sec    19.33     17.90    40.00     66.67%
  Latency Distribution
     50%    1.20ms
     75%    1.52ms
     90%    2.64ms
     99%    3.69ms
  28 requests in 3.01s, 183.23KB read
  Socket errors: connect 0, read 0, write 0, timeout 16
  Non-2xx or 3xx responses: 12
Requests/sec:      9.31
Transfer/sec:     60.93KB
sluicegate-bench failed: 12
"""

#: 404s, fast creates and slow streams mixed by a script without our done(): us, ms and s.
ALL_UNITS = """\
Running 3s test @ http://127.0.0.1:18003/v1/responses
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   282.81ms  390.81ms   1.23s    79.17%
    Req/Sec     1.03k     1.41k    3.14k    75.00%
  Latency Distribution
     50%  827.00us
     75%  558.03ms
     90%  965.65ms
     99%    1.21s\x20
  951 requests in 3.01s, 800.54KB read
  Non-2xx or 3xx responses: 551
Requests/sec:    316.19
Transfer/sec:    266.16KB
"""

#: What wrk prints (to stdout) for a bad option, such as -d0.5s.
USAGE = """\
Usage: wrk <options> <url>
  Options:
    -c, --connections <N>  Connections to keep open
    -d, --duration    <T>  Duration of test
"""


def test_parse_ms() -> None:
    result = parse_wrk_output(PROXY_CREATE)
    assert result.requests == 452
    assert result.duration_s == pytest.approx(1.00)
    assert result.requests_per_s == pytest.approx(451.32)
    assert result.latency_p50_s == pytest.approx(8.29e-3)
    assert result.latency_p75_s == pytest.approx(9.25e-3)
    assert result.latency_p90_s == pytest.approx(10.54e-3)
    assert result.latency_p99_s == pytest.approx(28.25e-3)
    assert result.non_2xx == 0
    assert result.socket_errors == 0
    assert result.script_failed == 0
    check_wrk(result, "proxy")


def test_parse_us_and_ms_not_confused_with_thread_stats() -> None:
    result = parse_wrk_output(DIRECT_CREATE)
    assert result.requests == 9412
    assert result.duration_s == pytest.approx(1.10)
    assert result.requests_per_s == pytest.approx(8551.57)
    assert result.latency_p50_s == pytest.approx(442e-6)
    assert result.latency_p90_s == pytest.approx(840e-6)
    assert result.latency_p99_s == pytest.approx(49.99e-3)
    check_wrk(result, "direct")


def test_parse_seconds_with_padding() -> None:
    result = parse_wrk_output(SLOW_STREAMS)
    assert result.requests == 16
    assert result.duration_s == pytest.approx(3.01)
    assert result.latency_p50_s == pytest.approx(1.23)
    assert result.latency_p99_s == pytest.approx(1.23)
    check_wrk(result, "direct")


def test_parse_us_ms_and_s_in_one_distribution() -> None:
    result = parse_wrk_output(ALL_UNITS)
    assert result.latency_p50_s == pytest.approx(827e-6)
    assert result.latency_p75_s == pytest.approx(558.03e-3)
    assert result.latency_p90_s == pytest.approx(965.65e-3)
    assert result.latency_p99_s == pytest.approx(1.21)
    assert result.non_2xx == 551
    assert result.script_failed is None


def test_non_2xx_fails_the_run() -> None:
    result = parse_wrk_output(WRONG_KEY)
    assert result.non_2xx == 969
    assert result.script_failed == 969
    assert result.socket_errors == 0
    with pytest.raises(BenchmarkError, match=r"proxy: 969 non-2xx answers; 969 answers not 200"):
        check_wrk(result, "proxy")


def test_socket_errors_fail_the_run() -> None:
    result = parse_wrk_output(TIMEOUTS)
    assert (result.connect_errors, result.read_errors, result.write_errors) == (0, 0, 0)
    assert result.timeouts == 16
    assert result.latency_p50_s == 0.0
    with pytest.raises(
        BenchmarkError, match=r"socket errors: connect 0, read 0, write 0, timeout 16"
    ):
        check_wrk(result, "direct")


def test_socket_errors_and_non_2xx_together() -> None:
    result = parse_wrk_output(TIMEOUTS_AND_404)
    assert result.requests == 28
    assert result.timeouts == 16
    assert result.non_2xx == 12
    assert result.script_failed == 12
    with pytest.raises(BenchmarkError) as info:
        check_wrk(result, "direct")
    assert "12 non-2xx answers" in str(info.value)
    assert "timeout 16" in str(info.value)


def test_a_script_that_did_not_report_fails_the_run() -> None:
    with pytest.raises(BenchmarkError, match="did not report"):
        check_wrk(parse_wrk_output(ALL_UNITS), "direct")


def test_unexpected_output_is_an_error() -> None:
    with pytest.raises(BenchmarkError, match="unexpected wrk output"):
        parse_wrk_output(USAGE)
    # Without --latency there is no distribution to take p50 and p99 from.
    without_latency = re.sub(r"  Latency Distribution\n(.*%.*\n){4}", "", PROXY_CREATE)
    assert "Distribution" not in without_latency
    with pytest.raises(BenchmarkError):
        parse_wrk_output(without_latency)


@pytest.mark.parametrize("stream", [False, True])
def test_wrk_script_posts_the_body_and_checks_completion(stream: bool) -> None:
    script = wrk_script(model="bench", api_key="sk-bench-master", stream=stream)
    body = re.search(r"wrk\.body = \[==\[(.*)\]==\]", script)
    assert body is not None
    expected = {"model": "bench", "input": "hello"} | ({"stream": True} if stream else {})
    assert json.loads(body[1]) == expected
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert "[==[Bearer sk-bench-master]==]" in script
    marker = "response.completed" if stream else '"completed"'
    assert f"local marker = [==[{marker}]==]" in script
    assert 'string.format("sluicegate-bench failed: %d\\n", total)' in script


def _run(
    target: str,
    *,
    stream: bool = False,
    concurrency: int = 1,
    rps: float,
    p50: float,
    p99: float,
    cpu_s: float | None = None,
    requests: int = 1000,
) -> ProxyRun:
    proxy = target == PROXY
    return ProxyRun(
        case=Case(target=target, stream=stream, concurrency=concurrency),
        repeat=0,
        tokens=20,
        requests=requests,
        duration_s=2.0,
        requests_per_s=rps,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        server_cpu_s=cpu_s,
        rss_bytes=50 * 2**20 if proxy else None,
        idle_rss_bytes=40 * 2**20 if proxy else None,
        loadgen_cpu_s=0.5,
    )


def test_summary_takes_medians_and_the_overhead_over_direct() -> None:
    runs = [
        # Interleaved as measured; the proxy's CPU: 2.0, 2.5 and 3.0 ms per request.
        _run(PROXY, rps=400, p50=3.0, p99=9.0, cpu_s=2.0),
        _run(DIRECT, rps=10000, p50=0.1, p99=0.5),
        _run(DIRECT, rps=12000, p50=0.2, p99=0.4),
        _run(PROXY, rps=300, p50=3.5, p99=8.0, cpu_s=3.0),
        _run(PROXY, rps=350, p50=3.2, p99=12.0, cpu_s=2.5),
        _run(DIRECT, rps=11000, p50=0.3, p99=0.6),
    ]
    direct, proxy = summarize_proxy(runs)
    assert direct.case.target == DIRECT  # direct sorts first within a case
    assert direct.repeats == 3
    assert direct.requests_per_s == 11000
    assert direct.latency_p50_ms == pytest.approx(0.2)
    assert direct.latency_p99_ms == pytest.approx(0.5)
    assert direct.cpu_ms_per_request is None
    assert direct.p50_overhead_ms is None
    assert direct.throughput_ratio is None
    assert direct.loadgen_busy == pytest.approx(0.25)

    assert proxy.requests_per_s == 350
    assert (proxy.rps_min, proxy.rps_max) == (300, 400)
    assert proxy.latency_p50_ms == pytest.approx(3.2)
    assert proxy.latency_p99_ms == pytest.approx(9.0)
    # The overheads are differences of the medians: 3.2 - 0.2 and 9.0 - 0.5.
    assert proxy.p50_overhead_ms == pytest.approx(3.0)
    assert proxy.p99_overhead_ms == pytest.approx(8.5)
    assert proxy.throughput_ratio == pytest.approx(350 / 11000)
    assert proxy.cpu_ms_per_request == pytest.approx(2.5)
    assert proxy.cpu_ms_min == pytest.approx(2.0)
    assert proxy.cpu_ms_max == pytest.approx(3.0)
    assert proxy.rss_bytes == 50 * 2**20
    assert proxy.idle_rss_bytes == 40 * 2**20

    table = proxy_table([direct, proxy])
    header, _, direct_row, proxy_row = table.splitlines()
    assert header.split()[:5] == ["mode", "conc", "target", "requests", "req/s"]
    assert " ".join(direct_row.split()) == (
        "create 1 direct 1000x3 11000 ±9% - 0.20 0.50 - - - - - - - - 25%"
    )
    # CPU spread: half of (3.0 - 2.0) over the median 2.5; requests per CPU-second: the median
    # of 1000 / 2.0, 1000 / 3.0 and 1000 / 2.5; no LiteLLM row, no ratio to it.
    assert " ".join(proxy_row.split()) == (
        "create 1 proxy 1000x3 350 ±14% 0.03 3.20 9.00 +3.00 +8.50 2.500 ±20% 400 - 50.0 40.0 25%"
    )
    assert proxy.requests_per_cpu_s == pytest.approx(400)
    assert proxy.per_cpu_ratio_vs_litellm is None
    assert direct.requests_per_cpu_s is None


def test_summary_pairs_each_proxy_case_with_its_own_direct_case() -> None:
    runs = [
        _run(PROXY, stream=True, concurrency=16, rps=200, p50=80.0, p99=150.0, cpu_s=10.0),
        _run(DIRECT, stream=True, concurrency=16, rps=5000, p50=3.0, p99=25.0),
        _run(PROXY, concurrency=16, rps=400, p50=40.0, p99=90.0, cpu_s=2.4),
        _run(DIRECT, concurrency=16, rps=13000, p50=1.2, p99=2.8),
        # A proxy case without a direct twin has no overhead.
        _run(PROXY, concurrency=64, rps=400, p50=160.0, p99=200.0, cpu_s=2.4),
    ]
    summaries = summarize_proxy(runs)
    keys = [(s.case.mode, s.case.concurrency, s.case.target) for s in summaries]
    assert keys == [
        ("create", 16, DIRECT),
        ("create", 16, PROXY),
        ("create", 64, PROXY),
        ("stream", 16, DIRECT),
        ("stream", 16, PROXY),
    ]
    by_key = dict(zip(keys, summaries, strict=True))
    assert by_key["create", 16, PROXY].p50_overhead_ms == pytest.approx(38.8)
    assert by_key["stream", 16, PROXY].p50_overhead_ms == pytest.approx(77.0)
    assert by_key["stream", 16, PROXY].p99_overhead_ms == pytest.approx(125.0)
    assert by_key["stream", 16, PROXY].cpu_ms_per_request == pytest.approx(10.0)
    assert by_key["create", 64, PROXY].p50_overhead_ms is None
    # One repeat: no spread.
    assert "±" not in proxy_table(summaries)

    markdown = proxy_table(summaries, markdown=True).splitlines()
    assert markdown[0].startswith("| mode | conc | target |")
    assert markdown[1].startswith("| --- | ---: | --- |")
    assert len(markdown) == 2 + len(summaries)

    documents = proxy_json(summaries)
    assert documents[1]["target"] == PROXY
    assert documents[1]["mode"] == "create"
    assert documents[1]["p50_overhead_ms"] == pytest.approx(38.8)
    assert documents[1]["cpu_ms_per_request"] == pytest.approx(2.4)
    assert documents[0]["cpu_ms_per_request"] is None
    json.dumps(documents)  # JSON-ready as is


def test_requests_per_cpu_second_and_the_ratio_to_litellms_proxy() -> None:
    """Requests per CPU-second of each proxy process (its requests/s per core), and sluicegate's
    over LiteLLM's at the same mode and concurrency, on sluicegate's row only."""
    runs = [
        _run(PROXY, rps=400, p50=3.0, p99=9.0, cpu_s=1.25),
        _run(LITELLM_PROXY, rps=80, p50=12.0, p99=14.0, cpu_s=12.5),
        _run(DIRECT, rps=10000, p50=0.1, p99=0.5),
        _run(PROXY, stream=True, rps=300, p50=4.0, p99=9.0, cpu_s=2.0),
        _run(DIRECT, stream=True, rps=9000, p50=0.2, p99=0.6),
        # No CPU reading (no /proc): no figure, rather than a division by zero.
        _run(PROXY, concurrency=16, rps=700, p50=20.0, p99=50.0, cpu_s=0.0),
    ]
    by_key = {(s.case.mode, s.case.concurrency, s.case.target): s for s in summarize_proxy(runs)}
    ours = by_key["create", 1, PROXY]
    theirs = by_key["create", 1, LITELLM_PROXY]
    assert ours.requests_per_cpu_s == pytest.approx(800)
    assert theirs.requests_per_cpu_s == pytest.approx(80)
    assert ours.per_cpu_ratio_vs_litellm == pytest.approx(10.0)
    assert theirs.per_cpu_ratio_vs_litellm is None
    stream = by_key["stream", 1, PROXY]
    assert stream.requests_per_cpu_s == pytest.approx(500)
    assert stream.per_cpu_ratio_vs_litellm is None  # LiteLLM's stream row is missing
    assert by_key["create", 16, PROXY].requests_per_cpu_s is None

    header, _, *rows = proxy_table(list(by_key.values())).splitlines()
    assert "req/CPU-s" in header and "x LiteLLM/CPU-s" in header
    ours_row = next(" ".join(r.split()) for r in rows if r.split()[:3] == ["create", "1", PROXY])
    # CPU ms/req, its spread (one repeat: none), requests per CPU-second, the ratio, RSS.
    assert " 1.250 - 800 10.0 50.0 " in ours_row
    summaries = list(by_key.values())
    documents = {(d["mode"], d["concurrency"], d["target"]): d for d in proxy_json(summaries)}
    assert documents["create", 1, PROXY]["requests_per_cpu_second"] == pytest.approx(800)
    assert documents["create", 1, PROXY]["requests_per_cpu_second_vs_litellm_proxy"] == (
        pytest.approx(10.0)
    )
    assert documents["create", 1, LITELLM_PROXY]["requests_per_cpu_second"] == pytest.approx(80)


def test_the_proxy_binds_its_own_port_so_nobody_can_take_it_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the port was found by binding and closing a socket, then handed to the
    server; on a busy machine another process could take it in between, and the benchmark
    failed. Here that port is taken on purpose: the server no longer uses a port chosen for
    it, but the one it bound, which it names in its log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(bench_proxy, "_free_port", lambda: port)
        with (
            run_fake_upstream(tokens=4, cpu=None) as upstream,
            open_proxy_server(upstream_url=upstream.base_url, cpu=None) as server,
        ):
            assert server.url.startswith("http://127.0.0.1:")
            assert not server.url.endswith(f":{port}")
            with httpx.Client(trust_env=False) as client:
                ready = client.get(f"{server.url}/health/readiness")
            assert ready.status_code == 200


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_measure_proxy_against_the_fake_upstream() -> None:
    """End to end, briefly: the proxy process, wrk on both targets, the warm-up and /proc."""
    with run_fake_upstream(tokens=4, cpu=None) as upstream:
        runs = measure_proxy(
            upstream_url=upstream.base_url,
            plan=plan_cpus(),
            concurrencies=[4],
            seconds=0.5,
            repeats=1,
            tokens=4,
            warmup_s=0.5,
        )
    assert [(r.case.target, r.case.mode) for r in runs] == [
        (PROXY, "create"),
        (DIRECT, "create"),
        (PROXY, "stream"),
        (DIRECT, "stream"),
    ]
    for run in runs:
        assert run.requests > 0
        assert run.requests_per_s > 0
        assert 0 < run.latency_p50_ms <= run.latency_p99_ms
        assert run.tokens == 4
        if run.case.target == PROXY:
            assert run.cpu_ms_per_request is not None
            assert run.cpu_ms_per_request > 0
            assert run.rss_bytes is not None
            assert run.rss_bytes > 0
            assert run.idle_rss_bytes is not None
            assert run.idle_rss_bytes > 0
        else:
            assert run.cpu_ms_per_request is None
            assert run.rss_bytes is None
    summaries = summarize_proxy(runs)
    assert [s.p50_overhead_ms is None for s in summaries] == [True, False, True, False]


def _first(target: str, concurrency: int, p50: float, p99: float) -> FirstEvent:
    return FirstEvent(target=target, concurrency=concurrency, samples=200, p50_ms=p50, p99_ms=p99)


def test_first_event_table_gives_what_the_proxy_adds_per_concurrency() -> None:
    results = [
        # As measured: per concurrency, proxy then direct; here out of order on purpose.
        _first(PROXY, 16, 40.0, 95.5),
        _first(DIRECT, 16, 5.25, 8.0),
        _first(PROXY, 1, 4.5, 10.0),
        _first(DIRECT, 1, 0.5, 2.0),
    ]
    low, high = first_event_rows(results)
    assert (low.concurrency, high.concurrency) == (1, 16)
    assert (low.added_p50_ms, low.added_p99_ms) == pytest.approx((4.0, 8.0))
    assert (high.added_p50_ms, high.added_p99_ms) == pytest.approx((34.75, 87.5))

    header, rule, *rows = first_event_table(results).splitlines()
    assert header.split("  ")[0] == "conc"
    assert "proxy p50 ms" in header and "direct p99 ms" in header and header.endswith("+p99 ms")
    assert set(rule) <= {"-", " "}
    assert [" ".join(r.split()) for r in rows] == [
        "1 200 4.50 10.00 0.50 2.00 +4.00 +8.00",
        "16 200 40.00 95.50 5.25 8.00 +34.75 +87.50",
    ]
    markdown = first_event_table(results, markdown=True).splitlines()
    assert markdown[0] == (
        "| conc | samples | proxy p50 ms | proxy p99 ms | direct p50 ms | direct p99 ms "
        "| +p50 ms | +p99 ms |"
    )
    assert markdown[3] == "| 16 | 200 | 40.00 | 95.50 | 5.25 | 8.00 | +34.75 | +87.50 |"

    documents = first_event_json(results)
    assert [d["concurrency"] for d in documents] == [1, 16]
    assert documents[1]["added_p50_ms"] == pytest.approx(34.75)
    assert documents[1]["added_p99_ms"] == pytest.approx(87.5)
    assert documents[0]["proxy_p50_ms"] == 4.5
    assert documents[0]["direct_p99_ms"] == 2.0
    json.dumps(documents)  # JSON-ready as is


def test_first_event_rows_need_both_targets() -> None:
    with pytest.raises(ValueError, match="c=16"):
        first_event_rows([_first(PROXY, 1, 4.5, 10.0), _first(DIRECT, 1, 0.5, 2.0),
                          _first(PROXY, 16, 40.0, 95.5)])  # fmt: skip


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_measure_first_event_alone_and_under_load() -> None:
    """End to end, briefly: the probe alone (c=1) and beside one wrk stream (c=2), against the
    proxy and the upstream directly; this thread's pinning is given back afterwards."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    seen: list[FirstEvent] = []
    with run_fake_upstream(tokens=4, cpu=None) as upstream:
        results = measure_first_event(
            upstream_url=upstream.base_url,
            plan=plan_cpus(),
            concurrencies=[2, 1],
            samples=3,
            on_result=seen.append,
        )
    assert results == seen
    assert [(r.target, r.concurrency) for r in results] == [
        (PROXY, 1),
        (DIRECT, 1),
        (PROXY, 2),
        (DIRECT, 2),
    ]
    for result in results:
        assert result.samples == 3
        assert 0 < result.p50_ms <= result.p99_ms
    assert [row.concurrency for row in first_event_rows(results)] == [1, 2]
    if affinity is not None:
        assert os.sched_getaffinity(0) == affinity


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_failed_background_load_fails_the_measurement(tmp_path: Path) -> None:
    script = tmp_path / "direct.lua"
    script.write_text(wrk_script(model="bench-model", api_key="sk-bench", stream=True))
    # Every answer a 404: noticed when the load is stopped, though the block went well.
    with (
        run_fake_upstream(tokens=4, cpu=None) as upstream,
        pytest.raises(BenchmarkError, match=r"wrk against the load: .*non-2xx"),
        _background_load(
            url=f"{upstream.base_url}/no-such-path",
            script=script,
            connections=1,
            cpu=None,
            what="the load",
        ),
    ):
        time.sleep(0.1)
    # Nothing listens: wrk gives up at once, before the block begins.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    entered = False
    with (
        pytest.raises(BenchmarkError, match="ended before the probe did"),
        _background_load(
            url=f"http://127.0.0.1:{port}/v1/responses",
            script=script,
            connections=1,
            cpu=None,
            what="nobody",
        ),
    ):
        entered = True
    assert not entered


def _measure_direct_once(tmp_path: Path) -> ProxyRun:
    """One measured run against the upstream directly, with whatever ``_run_wrk`` is now."""
    return bench_proxy._measure_one(
        Case(target=DIRECT, stream=False, concurrency=4),
        repeat=0,
        tokens=4,
        url="http://127.0.0.1:1/v1/responses",
        script=tmp_path / "script.lua",
        seconds=1,
        warmup_s=0,
        loadgen_cpu=None,
        server=None,
        idle_rss=None,
    )


def test_a_run_that_completed_no_request_runs_again_longer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A busy machine can starve a one-second run of every answer: that run measured nothing,
    so it runs again for twice as long, and only the run that served is reported."""
    starved = re.sub(r"452 requests in 1.00s", "0 requests in 1.00s", PROXY_CREATE)
    outputs = [starved, starved, PROXY_CREATE]
    asked: list[int] = []

    def fake_wrk(*, seconds: int, **_: object) -> tuple[str, float]:
        asked.append(seconds)
        return outputs.pop(0), 0.25

    monkeypatch.setattr(bench_proxy, "_run_wrk", fake_wrk)
    run = _measure_direct_once(tmp_path)
    assert asked == [1, 2, 4]
    assert run.requests == 452


def test_a_run_that_never_completes_a_request_still_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    starved = re.sub(r"452 requests in 1.00s", "0 requests in 1.00s", PROXY_CREATE)
    monkeypatch.setattr(bench_proxy, "_run_wrk", lambda **_: (starved, 0.0))
    with pytest.raises(BenchmarkError, match="no request completed"):
        _measure_direct_once(tmp_path)


# --- one instance against two (benchmarks/_instances.py) -------------------------------------


def _layout_run(
    workers: int,
    *,
    stream: bool = False,
    concurrency: int = 16,
    rps: float,
    cpu_s: float,
    split: tuple[float, ...],
    machine_busy: float = 1.9,
) -> ProxyRun:
    return attrs.evolve(
        _run(PROXY, stream=stream, concurrency=concurrency, rps=rps, p50=20.0, p99=60.0),
        case=Case(
            target=f"{workers} instance{'s' if workers > 1 else ''}",
            stream=stream,
            concurrency=concurrency,
        ),
        server_cpu_s=cpu_s,
        server_cpu_split=split,
        machine_busy=machine_busy,
    )


def test_two_instances_are_judged_against_one_with_each_layouts_cpu() -> None:
    runs = [
        _layout_run(1, rps=700.0, cpu_s=1.0, split=(1.0,)),
        _layout_run(2, rps=1260.0, cpu_s=1.1, split=(0.6, 0.5)),
        _layout_run(2, rps=1300.0, cpu_s=1.1, split=(0.9, 0.2)),
        _layout_run(1, rps=700.0, cpu_s=1.0, split=(1.0,)),
        _layout_run(2, rps=1200.0, cpu_s=1.1, split=(0.55, 0.55, 0.01)),
        _layout_run(1, rps=700.0, cpu_s=1.0, split=(1.0,)),
        # Stream measured with one instance only: no row.
        _layout_run(1, stream=True, rps=400.0, cpu_s=1.0, split=(1.0,)),
    ]
    [row] = instances_rows(runs)
    assert (row.mode, row.concurrency) == ("create", 16)
    assert row.scaling == pytest.approx(1.8)  # medians: 1260 / 700
    assert row.one.cpu_ms_per_request == pytest.approx(1.0)
    assert row.two.cpu_ms_per_request == pytest.approx(1.1)
    # The busiest process's share: 0.545, 0.818, 0.495 -> the median.
    assert row.two_busiest_share == pytest.approx(0.6 / 1.1)
    # Everything else's CPU: the machine's 2 s runs (1.9 CPUs busy) less the server's, per
    # request (1000 a run).
    assert row.two_machine_busy == pytest.approx(1.9)
    assert row.two_other_cpu_ms == pytest.approx((1.9 * 2.0 - 1.1) / 1000 * 1e3)
    [check] = instances_checks([row])
    assert check.passed
    assert check.name == "create c=16: two instances' requests/s >= 1.8x one's"
    assert check.detail == "1.80x (1260 vs 700 req/s; CPU ms/request 1.100 vs 1.000)"
    table = instances_table([row]).splitlines()
    assert table[0].split()[:4] == ["mode", "conc", "repeats", "1"]
    assert "55%" in table[2]
    assert instances_table([row], markdown=True).startswith("| mode | conc |")
    document = instances_json(InstancesResult(runs=runs, database="db", machine="2 CPUs"))
    assert document["database"] == "db" and document["machine"] == "2 CPUs"
    assert document["rows"][0]["scaling"] == pytest.approx(1.8)
    assert document["rows"][0]["two_busiest_process_cpu_share"] == pytest.approx(0.6 / 1.1)
    assert instances_line([row], machine="2 CPUs") == (
        "two instances ÷ one on PostgreSQL, requests/s (c=16): create 1.80 (CPU ms/request "
        "1.00 → 1.10); 2 CPUs"
    )
    assert instances_line("no PostgreSQL") == (
        "two instances ÷ one on PostgreSQL, requests/s: not measured (no PostgreSQL)"
    )
    slower = attrs.evolve(row, two=attrs.evolve(row.two, requests_per_s=1259.0))
    assert not instances_checks([slower])[0].passed


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_measure_instances_on_one_database(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end, briefly: each layout's server on a database of the named server, wrk on
    both, the CPU of every worker counted."""
    monkeypatch.setenv(DATABASE_URL_ENV, postgres_server.url())
    result = measure_instances(tokens=4, concurrencies=[4], seconds=1, repeats=1, warmup_s=0)
    assert [(r.case.target, r.case.mode) for r in result.runs] == [
        ("1 instance", "create"),
        ("1 instance", "stream"),
        ("2 instances", "create"),
        ("2 instances", "stream"),
    ]
    for run in result.runs:
        assert run.requests > 0
        assert run.cpu_ms_per_request is not None and run.cpu_ms_per_request > 0
        assert run.server_cpu_split is not None
        assert sum(run.server_cpu_split) == pytest.approx(run.server_cpu_s)
        assert run.machine_busy is not None and run.machine_busy > 0
    assert DATABASE_URL_ENV in result.database
    assert "CPU" in result.machine
    assert [(r.mode, r.concurrency) for r in instances_rows(result.runs)] == [
        ("create", 4),
        ("stream", 4),
    ]


def test_a_server_with_two_workers_is_billed_for_both(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression guard: the server's CPU was read from its own process only, which with
    ``--workers 2`` is the workers' idle parent. Now every process below it counts, and the
    server is handed over once both workers listen."""
    with (
        run_fake_upstream(tokens=4, cpu=None) as upstream,
        open_proxy_server(
            upstream_url=upstream.base_url, cpu=None, workers=2, database_url=postgres_url
        ) as server,
    ):
        processes = server.cpu_by_process()
        assert processes is not None
        # The parent and its two workers (and multiprocessing's resource tracker).
        assert len(processes) >= 3
        assert server.pid in processes
        # Starting two gateways takes CPU; all of it is below the parent.
        own = processes[server.pid]
        total = server.cpu_seconds()
        assert total is not None and total > own
        with httpx.Client(trust_env=False) as client:
            answer = client.post(
                server.responses_url,
                json={"model": "bench", "input": "hello"},
                headers={"authorization": f"Bearer {MASTER_KEY}"},
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "completed"
