"""The benchmarks' memory measurements and charts (benchmarks/_memory.py, benchmarks/_charts.py):
the arithmetic, the table / JSON shapes, the RSS reader, the scenarios' plumbing on loopback (a
proxy served in this process, so its pid is ours) and the chart writer on synthetic results.
Nothing here judges a number: RSS is the machine's, only the shapes are asserted."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from benchmarks._asyncio_driver import hold_streams
from benchmarks._charts import SeriesPoint, series_points, write_charts
from benchmarks._memory import (
    LIBRARY_ASYNCIO,
    MAX_GROWTH_MIB,
    MIB,
    PROXY_MASTER_KEY,
    IdleRss,
    MemoryResult,
    OpenStreams,
    RssSample,
    RunningServer,
    SlowConsumerRun,
    library_open_streams,
    measure_open_streams,
    memory_checks,
    memory_json,
    memory_table,
    open_slow_streams,
    per_stream_bytes,
    proxy_idle_rss,
    rss_bytes,
    slow_consumer_library,
    slow_consumer_proxy,
)
from benchmarks._report import Summary
from benchmarks._runner import Case
from benchmarks._upstream import BenchmarkError, run_fake_upstream
from sluicegate.fake import open_fake_upstream
from sluicegate.server import build_app, serve

from .conftest import MEMORY_STORE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def slow_run(
    target: str = "library",
    *,
    before: int = 100 * MIB,
    start: int = 101 * MIB,
    peak: int = 102 * MIB,
    end: int = 101 * MIB,
) -> SlowConsumerRun:
    samples = (
        RssSample(at_s=0.0, rss_bytes=before, events=1),
        RssSample(at_s=0.5, rss_bytes=start, events=50),
        RssSample(at_s=1.0, rss_bytes=peak, events=100),
        RssSample(at_s=1.5, rss_bytes=end, events=150),
    )
    return SlowConsumerRun(
        target=target,
        events=150,
        event_interval_s=0.01,
        duration_s=1.5,
        stream_bytes=None if target == "library" else 40_000,
        before_rss_bytes=before,
        start_rss_bytes=start,
        peak_rss_bytes=peak,
        end_rss_bytes=end,
        samples=samples,
    )


def held(target: str = "proxy") -> OpenStreams:
    return OpenStreams(
        target=target,
        streams=500,
        read_interval_s=0.1,
        open_s=2.0,
        idle_rss_bytes=40 * MIB,
        open_rss_bytes=90 * MIB,
        closed_rss_bytes=95 * MIB,
    )


def results() -> list[MemoryResult]:
    return [
        IdleRss(target="proxy", rss_bytes=40 * MIB),
        held(),
        slow_run("library"),
        slow_run("proxy", end=107 * MIB),
    ]


# -- arithmetic --------------------------------------------------------------------------------


def test_memory_per_open_stream_is_the_rise_divided_among_the_streams() -> None:
    assert per_stream_bytes(40 * MIB, 90 * MIB, 500) == 50 * MIB / 500
    assert held().per_stream_bytes == 50 * MIB / 500
    assert per_stream_bytes(10, 10, 3) == 0.0
    with pytest.raises(ValueError):
        per_stream_bytes(0, 1, 0)


def test_growth_is_end_minus_start_and_rise_is_peak_minus_before() -> None:
    run = slow_run(before=100 * MIB, start=101 * MIB, peak=103 * MIB, end=102 * MIB)
    assert run.growth_bytes == 1 * MIB
    assert run.rise_bytes == 3 * MIB
    assert run.passed


def test_growth_at_the_bound_misses() -> None:
    limit = int(MAX_GROWTH_MIB * MIB)
    assert slow_run(start=100 * MIB, peak=100 * MIB + limit - 1, end=100 * MIB + limit - 1).passed
    assert not slow_run(start=100 * MIB, peak=100 * MIB + limit, end=100 * MIB + limit).passed


def test_a_buffer_filled_before_the_start_mark_misses_on_the_rise() -> None:
    """Regression guard: an eager buffer fills in the stream's first moments, before the start
    mark, so growth (end - start) stays flat; the rise over the pre-stream RSS catches it."""
    run = slow_run(before=100 * MIB, start=130 * MIB, peak=130 * MIB, end=130 * MIB)
    assert run.growth_bytes == 0
    assert not run.passed


# -- output ------------------------------------------------------------------------------------


def test_memory_table_text() -> None:
    text = memory_table(results())
    assert text.splitlines()[0] == "idle RSS (after a warm-up):"
    assert "open slow streams" in text
    assert "slow consumer" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["library"][-1] == "PASS"
    assert rows["library"][-4] == "+0.00"  # growth: start 101, end 101
    assert rows["proxy"][-1] == "MISS"  # growth of 6 MiB
    assert rows["proxy"][-4] == "+6.00"
    # KiB per open stream: 50 MiB over 500 streams.
    assert any(line.endswith(" 102.4") for line in text.splitlines())


def test_memory_table_markdown() -> None:
    lines = memory_table(results(), markdown=True).splitlines()
    tables = [i for i, line in enumerate(lines) if line.startswith("| target |")]
    assert len(tables) == 3
    for i in tables:
        assert lines[i - 1] == ""  # a caption, then a blank line, then the table
        assert lines[i + 1].startswith("| --- | ---: |")
    assert lines[0].startswith("**idle RSS")


def test_the_memory_table_and_json_give_every_holder_of_open_streams() -> None:
    """Library (both faces), proxy and aiohttp floor side by side: KiB per open stream each."""
    holders = [held("library"), held(LIBRARY_ASYNCIO), held("proxy"), held("aiohttp-floor")]
    text = memory_table(holders)
    assert "the proxy server, the library's (trio or asyncio face) or the aiohttp floor's" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:] if line.strip()}
    assert set(rows) == {"library", "library-asyncio", "proxy", "aiohttp-floor"}
    assert all(row[-1] == "102.4" for row in rows.values())
    document = memory_json(holders)
    assert [(d["target"], d["per_stream_bytes"]) for d in document["open_streams"]] == [
        ("library", 50 * MIB / 500),
        ("library-asyncio", 50 * MIB / 500),
        ("proxy", 50 * MIB / 500),
        ("aiohttp-floor", 50 * MIB / 500),
    ]
    assert [d["per_stream_kib"] for d in document["open_streams"]] == [pytest.approx(102.4)] * 4


def test_memory_table_shows_only_what_was_measured() -> None:
    text = memory_table([slow_run()])
    assert "slow consumer" in text
    assert "idle RSS" not in text
    assert "open slow streams" not in text
    assert memory_table([]) == ""


def test_memory_json() -> None:
    document = memory_json(results())
    assert set(document) == {"idle", "open_streams", "slow_consumer"}
    assert document["idle"] == [{"target": "proxy", "rss_bytes": 40 * MIB}]
    (streams,) = document["open_streams"]
    assert streams["per_stream_bytes"] == 50 * MIB / 500
    assert streams["streams"] == 500
    library, proxy = document["slow_consumer"]
    assert (library["verdict"], library["growth_bytes"], library["rise_bytes"]) == (
        "PASS",
        0,
        2 * MIB,
    )
    assert (proxy["verdict"], proxy["passed"], proxy["growth_bytes"]) == ("MISS", False, 6 * MIB)
    assert proxy["stream_bytes"] == 40_000
    assert library["samples"][1] == {"at_s": 0.5, "rss_bytes": 101 * MIB, "events": 50}
    assert orjson.loads(orjson.dumps(document)) == document


def test_memory_checks_one_per_slow_consumer() -> None:
    checks = memory_checks(results())
    assert [(c.name.split(":")[0], c.verdict) for c in checks] == [
        ("library", "PASS"),
        ("proxy", "MISS"),
    ]
    assert "growth +6.00 MiB" in checks[1].detail


# -- RSS ---------------------------------------------------------------------------------------


def test_rss_of_this_process() -> None:
    mine = rss_bytes()
    assert mine > MIB
    by_pid = RunningServer(url="http://127.0.0.1:1", pid=os.getpid()).rss_bytes()
    assert abs(by_pid - mine) < 64 * MIB


def test_rss_of_no_process_is_a_benchmark_error() -> None:
    # pid_max is one more than the highest pid there can be.
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with pytest.raises(BenchmarkError):
        rss_bytes(pid_max)


# -- the scenarios on loopback -----------------------------------------------------------------


@asynccontextmanager
async def proxy_in_process() -> AsyncIterator[RunningServer]:
    """The proxy on loopback in this process: ``bench`` on a slow fake upstream, ``bench-long``
    on a long one with no delay."""
    async with (
        open_fake_upstream(tokens=400, token_delay=0.05) as slow,
        open_fake_upstream(tokens=400) as long,
    ):
        groups = {"bench": slow.base_url, "bench-long": long.base_url}
        app = build_app(
            {
                "model_list": [
                    {
                        "model_name": name,
                        "litellm_params": {
                            "model": "openai/bench-model",
                            "api_base": url,
                            "api_key": "sk-bench",
                        },
                        "model_info": {"id": f"{name}-1"},
                    }
                    for name, url in groups.items()
                ],
                "general_settings": {
                    "master_key": PROXY_MASTER_KEY,
                    "store": MEMORY_STORE,
                    "graceful_shutdown_timeout": 1,
                },
            }
        )
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def run(task_status: trio.TaskStatus[list[str]]) -> None:
                await serve(
                    app,
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )

            binds: list[str] = await nursery.start(run)
            try:
                yield RunningServer(url=binds[0], pid=os.getpid())
            finally:
                stop.set()


async def test_the_proxy_scenarios_run_on_loopback() -> None:
    async with proxy_in_process() as server:
        idle = await proxy_idle_rss(server, settle=0.05)
        assert idle.rss_bytes > MIB
        streams = await open_slow_streams(server, streams=4, read_interval=0.01, settle=0.05)
        assert (streams.streams, streams.target) == (4, "proxy")
        assert streams.open_s > 0
        assert min(streams.idle_rss_bytes, streams.open_rss_bytes, streams.closed_rss_bytes) > MIB
        run = await slow_consumer_proxy(
            server, events=40, interval=0.002, sample_interval=0.01, model="bench-long"
        )
    assert run.events == 40
    assert run.stream_bytes is not None and run.stream_bytes > 40 * 100
    assert run.samples[0].events == 1
    assert run.samples[-1].events == 40
    assert [s.at_s for s in run.samples] == sorted(s.at_s for s in run.samples)
    assert run.peak_rss_bytes == max(s.rss_bytes for s in run.samples)
    assert run.duration_s >= 39 * 0.002


async def test_a_proxy_error_is_a_benchmark_error() -> None:
    async with proxy_in_process() as server:
        with pytest.raises(BenchmarkError, match="HTTP 404"):
            await proxy_idle_rss(server, model="no-such-group")
        with pytest.raises(BenchmarkError, match="HTTP 401"):
            await open_slow_streams(server, streams=2, api_key="sk-wrong")


async def test_a_stream_shorter_than_the_read_is_a_benchmark_error() -> None:
    async with proxy_in_process() as server:
        with pytest.raises(BenchmarkError, match="more tokens"):
            await slow_consumer_proxy(server, events=1000, interval=0.0, model="bench-long")


async def test_the_library_slow_consumer_runs_on_loopback() -> None:
    async with open_fake_upstream(tokens=400) as fake:
        run = await slow_consumer_library(
            fake.base_url, events=40, interval=0.002, sample_interval=0.01
        )
    assert (run.target, run.events, run.stream_bytes) == ("library", 40, None)
    assert run.samples[-1].events == 40
    assert run.before_rss_bytes > MIB


async def test_the_library_open_streams_scenario_runs_on_loopback() -> None:
    async with open_fake_upstream(tokens=400, token_delay=0.05, write_per_event=True) as fake:
        streams = await library_open_streams(
            fake.base_url, streams=4, read_interval=0.01, settle=0.05
        )
    assert (streams.target, streams.streams, streams.read_interval_s) == ("library", 4, 0.01)
    assert streams.open_s > 0
    assert min(streams.idle_rss_bytes, streams.open_rss_bytes, streams.closed_rss_bytes) > MIB


async def test_a_library_stream_that_ends_while_held_is_a_benchmark_error() -> None:
    async with open_fake_upstream(tokens=2) as fake:
        with pytest.raises(BenchmarkError, match="more tokens"):
            await library_open_streams(fake.base_url, streams=2, read_interval=0.0, settle=0.05)


@pytest.mark.parametrize("target", ["library", LIBRARY_ASYNCIO, "aiohttp-floor"])
def test_open_streams_are_measured_in_a_child_of_their_own(target: str) -> None:
    """Each holder (the library's trio face, its asyncio face, the aiohttp floor) in a child
    that prints its figures for the parent to read back."""
    if target == "aiohttp-floor":
        pytest.importorskip("aiohttp")
    with run_fake_upstream(tokens=400, cpu=None, token_delay=0.05) as upstream:
        streams = measure_open_streams(target, upstream.base_url, streams=3)
    assert (streams.target, streams.streams) == (target, 3)
    assert streams.open_s > 0
    assert min(streams.idle_rss_bytes, streams.open_rss_bytes, streams.closed_rss_bytes) > MIB
    # Not this process's RSS: a child's, alone with what it imports and holds.
    assert streams.idle_rss_bytes != rss_bytes()


def test_open_streams_of_an_unknown_target_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown open-streams target"):
        measure_open_streams("proxy", "http://127.0.0.1:1/v1", streams=1)


@pytest.mark.parametrize("target", ["library", LIBRARY_ASYNCIO])
def test_a_failing_open_streams_child_raises_with_its_stderr(target: str) -> None:
    # Nothing listens there: the child's warm-up fails, and so does the child.
    with pytest.raises(BenchmarkError, match="the open-streams child failed"):
        measure_open_streams(target, "http://127.0.0.1:1/v1", streams=1)


# -- the asyncio driver's open streams (benchmarks/_asyncio_driver.py) -------------------------


def _fake_streams(
    items: Sequence[str], *, then: str | None = None, stall: bool = False
) -> Callable[[], AbstractAsyncContextManager[AsyncIterator[str]]]:
    """Streams of ``items``, then ``then`` for ever (or the end; or, with ``stall``, nothing
    more ever), as ``hold_streams`` opens them: no I/O, asyncio only."""

    @asynccontextmanager
    async def open_stream() -> AsyncIterator[AsyncIterator[str]]:
        async def lines() -> AsyncIterator[str]:
            for item in items:
                yield item
            if stall:
                await asyncio.Event().wait()
            while then is not None:
                yield then

        yield lines()

    return open_stream


def _hold(open_stream: Callable[[], AbstractAsyncContextManager[AsyncIterator[str]]]) -> Any:
    return asyncio.run(
        hold_streams(
            open_stream,
            streams=3,
            is_event=lambda line: line.startswith("data:"),
            failed=lambda line: line == "data: failed",
            read_interval=0.001,
            settle=0.01,
            open_within=2.0,
        )
    )


def test_the_asyncio_driver_holds_streams_and_reports_their_memory() -> None:
    held = _hold(_fake_streams(["event: x", "data: first"], then="data: more"))
    result = held.result(LIBRARY_ASYNCIO, 7 * MIB)
    streams = OpenStreams(**result)  # the open-streams child's line, as the parent reads it
    assert (streams.target, streams.streams, streams.read_interval_s) == (LIBRARY_ASYNCIO, 3, 0.001)
    assert streams.closed_rss_bytes == 7 * MIB
    assert min(streams.idle_rss_bytes, streams.open_rss_bytes) > MIB
    assert streams.open_s >= 0


@pytest.mark.parametrize(
    ("open_stream", "error"),
    [
        (_fake_streams(["event: x"]), "stream 0 ended before its first event"),
        (_fake_streams(["data: first"]), "stream 0 ended while it was to be held open"),
        (_fake_streams(["data: first", "data: failed"]), "held stream 0 failed: 'data: failed'"),
        (_fake_streams(["event: x"], stall=True), "0 of 3 streams open after 2.0 s"),
    ],
    ids=["no first event", "ended while held", "failed while held", "never opened"],
)
def test_the_asyncio_driver_fails_on_a_stream_that_is_not_held_open(
    open_stream: Callable[[], AbstractAsyncContextManager[AsyncIterator[str]]], error: str
) -> None:
    with pytest.raises(ExceptionGroup) as info:
        _hold(open_stream)
    assert info.group_contains(BenchmarkError, match=re.escape(error))


# -- charts ------------------------------------------------------------------------------------


def summary(target: str, stream: bool, concurrency: int, rps: float) -> Summary:
    return Summary(
        case=Case(target=target, stream=stream, concurrency=concurrency),
        requests=100,
        repeats=1,
        requests_per_s=rps,
        cpu_ms_per_request=1.0,
        cpu_ms_min=1.0,
        cpu_ms_max=1.0,
        latency_p50_ms=concurrency * 0.5,
        latency_p99_ms=concurrency * 2.0,
        first_event_p50_ms=None,
        events_per_request=28.0 if stream else 1.0,
        events_per_s=0.0,
        upstream_busy=None,
        cpu_ratio=None,
    )


def summaries() -> list[Summary]:
    return [
        summary(target, stream, c, 1000.0 / (i + 1))
        for stream in (False, True)
        for c in (1, 16)
        for i, target in enumerate(("floor", "sluicegate", "sluicegate-asyncio"))
    ]


def extra() -> list[Any]:
    return [
        # As the results file's summary rows spell them, and as the charts' own points.
        {
            "target": "litellm",
            "mode": "create",
            "concurrency": 16,
            "requests_per_s": 200.0,
            "latency_p50_ms": 30.0,
            "latency_p99_ms": 90.0,
        },
        SeriesPoint(
            target="proxy", mode="stream", concurrency=1, requests_per_s=400, p50_ms=2, p99_ms=5
        ),
    ]


def test_series_points_take_summaries_mappings_and_points() -> None:
    points = series_points([*summaries()[:1], *extra()])
    assert points[0] == SeriesPoint(
        target="floor", mode="create", concurrency=1, requests_per_s=1000.0, p50_ms=0.5, p99_ms=2.0
    )
    assert points[1].target == "litellm"
    assert (points[1].p50_ms, points[1].p99_ms) == (30.0, 90.0)
    with pytest.raises(ValueError, match="p99_ms"):
        series_points([{"target": "x", "mode": "create", "concurrency": 1, "requests_per_s": 1.0,
                        "p50_ms": 1.0}])  # fmt: skip


def test_write_charts(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    folder = tmp_path / "charts"
    # Every holder of open streams the suite measures, the asyncio face's among them.
    memory = [*results(), held("library"), held(LIBRARY_ASYNCIO), held("aiohttp-floor")]
    paths = write_charts(folder, summaries(), memory, extra_series=extra())
    assert [p.name for p in paths] == ["latency.png", "throughput.png", "memory.png"]
    for path in paths:
        assert path.parent == folder
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_write_charts_writes_only_what_it_has(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert [p.name for p in write_charts(tmp_path, summaries(), [])] == [
        "latency.png",
        "throughput.png",
    ]
    # An idle figure alone has nothing to chart; the open-streams panel alone does.
    assert write_charts(tmp_path / "a", [], [IdleRss(target="proxy", rss_bytes=MIB)]) == []
    assert [p.name for p in write_charts(tmp_path / "b", [], [held()])] == ["memory.png"]


def test_write_charts_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    assert write_charts(tmp_path, summaries(), results()) == []
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "matplotlib" in out
    assert list(tmp_path.iterdir()) == []


def test_matplotlib_is_an_optional_bench_extra_not_a_dev_requirement() -> None:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert any(r.startswith("matplotlib") for r in extras["bench"])
    assert not any("matplotlib" in r for r in [*extras["dev"], *project["dependencies"]])
