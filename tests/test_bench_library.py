"""The library benchmark's child processes (benchmarks/_library.py): the line protocol, the
parent's checks, real children on the fake upstream, and the RSS figures they carry into the
summary, the tables and the results file. Nothing here judges a number: RSS and CPU are the
machine's, only the shapes are asserted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks._library import (
    CHILD_MODULES,
    LIBRARY_TARGETS,
    LibraryPlan,
    case_line,
    measure_library,
    parse_line,
)
from benchmarks._litellm import LiteLLMRun
from benchmarks._report import (
    AIOHTTP_FLOOR,
    LITELLM,
    MAX_FACE_RATIO,
    SLUICEGATE,
    SLUICEGATE_ASYNCIO,
    check_targets,
    face_checks,
    summarize,
    text_table,
    write_results,
)
from benchmarks._runner import Case, CaseRun, process_memory
from benchmarks._upstream import BenchmarkError, FakeUpstreamProcess, run_fake_upstream

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def case_run(
    target: str = "sluicegate",
    *,
    stream: bool = True,
    concurrency: int = 16,
    cpu_s: float = 0.2,
    rss: int | None = 40 * MIB,
    peak: int | None = 42 * MIB,
) -> CaseRun:
    return CaseRun(
        case=Case(target=target, stream=stream, concurrency=concurrency),
        requests=100,
        wall_s=0.5,
        cpu_s=cpu_s,
        events=2800 if stream else 100,
        latency_p50_s=0.004,
        latency_p99_s=0.012,
        first_event_p50_s=0.003 if stream else None,
        first_event_p99_s=0.009 if stream else None,
        upstream_busy=0.25,
        rss_bytes=rss,
        peak_rss_bytes=peak,
    )


# -- the line protocol -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_child_line_round_trips_into_a_case_run_with_rss(stream: bool) -> None:
    run = case_run(stream=stream)
    line = case_line(run)
    assert "\n" not in line
    data = json.loads(line)
    assert (data["rss_bytes"], data["peak_rss_bytes"]) == (40 * MIB, 42 * MIB)
    assert data["mode"] == ("stream" if stream else "create")
    back = parse_line(line, run.case, run.requests)
    assert back == run
    assert back.rss_bytes == 40 * MIB
    assert back.peak_rss_bytes == 42 * MIB


def test_a_line_without_rss_gives_none() -> None:
    run = case_run(rss=None, peak=None)
    back = parse_line(case_line(run), run.case, run.requests)
    assert (back.rss_bytes, back.peak_rss_bytes) == (None, None)


def test_a_line_of_another_case_or_no_run_is_an_error() -> None:
    run = case_run()
    line = case_line(run)
    other = Case(target="sluicegate", stream=False, concurrency=16)
    with pytest.raises(BenchmarkError, match="expected"):
        parse_line(line, other, run.requests)
    with pytest.raises(BenchmarkError, match="with 99 requests"):
        parse_line(line, run.case, 99)
    with pytest.raises(BenchmarkError, match="not a case run"):
        parse_line("Traceback (most recent call last):", run.case, run.requests)
    broken = json.loads(line)
    del broken["cpu_s"]
    with pytest.raises(BenchmarkError, match="not a case run"):
        parse_line(json.dumps(broken), run.case, run.requests)
    broken = json.loads(line) | {"mode": "sideways"}
    with pytest.raises(BenchmarkError, match="sideways"):
        parse_line(json.dumps(broken), run.case, run.requests)


def test_the_plan_round_trips_and_orders_the_cases() -> None:
    plan = LibraryPlan(requests=((1, 4), (16, 20)), warmup_s=2.0)
    assert LibraryPlan.from_json(plan.to_json()) == plan
    assert [(c.concurrency, c.mode, n) for c, n in plan.cases("floor")] == [
        (1, "create", 4),
        (1, "stream", 4),
        (16, "create", 20),
        (16, "stream", 20),
    ]
    assert {c.target for c, _ in plan.cases("floor")} == {"floor"}


def test_process_memory_reads_this_process() -> None:
    rss, peak = process_memory()
    if not Path("/proc/self/status").exists():
        assert (rss, peak) == (None, None)
        return
    assert rss is not None and peak is not None
    assert 0 < rss <= peak


def test_the_floor_child_does_not_load_sluicegate() -> None:
    """The floor's RSS must be the floor's: importing the driver leaves sluicegate unloaded."""
    code = "import sys, benchmarks._library; print('sluicegate' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60, check=True
    )
    assert done.stdout.decode().strip() == "False"


# -- real children -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", list(LIBRARY_TARGETS))
def test_a_child_measures_every_case_with_its_rss(target: str) -> None:
    plan = LibraryPlan(requests=((1, 2), (2, 4)), warmup_s=0.0)
    seen: list[Case] = []
    with run_fake_upstream(tokens=4, cpu=None) as upstream:
        runs = measure_library(
            target, upstream=upstream, plan=plan, on_run=lambda run: seen.append(run.case)
        )
    assert [r.case for r in runs] == [case for case, _ in plan.cases(target)] == seen
    for run in runs:
        assert run.requests == run.case.concurrency * 2
        assert run.cpu_s > 0
        if run.case.stream:
            assert run.events > run.requests
            assert run.first_event_p50_s is not None
        else:
            assert run.events == run.requests
        assert run.rss_bytes is not None and run.peak_rss_bytes is not None
        assert 0 < run.rss_bytes <= run.peak_rss_bytes


@pytest.mark.parametrize(
    ("target", "module"),
    [
        (AIOHTTP_FLOOR, "benchmarks._aiohttp"),
        (SLUICEGATE_ASYNCIO, "benchmarks._asyncio_face"),
    ],
)
def test_an_asyncio_child_measures_every_case_with_its_rss(target: str, module: str) -> None:
    """The asyncio targets (the aiohttp floor, benchmarks/_aiohttp.py; the library's asyncio
    face, benchmarks/_asyncio_face.py) speak the trio children's protocol: the same cases, the
    same figures."""
    if target == AIOHTTP_FLOOR:
        pytest.importorskip("aiohttp")
    assert CHILD_MODULES[target] == module
    plan = LibraryPlan(requests=((1, 2), (2, 4)), warmup_s=0.0)
    with run_fake_upstream(tokens=4, cpu=None) as upstream:
        runs = measure_library(target, upstream=upstream, plan=plan)
    assert [r.case for r in runs] == [case for case, _ in plan.cases(target)]
    for run in runs:
        assert run.requests == run.case.concurrency * 2
        assert run.cpu_s > 0
        if run.case.stream:
            assert run.events == run.requests * (4 + 8)  # every event of every stream
            assert run.first_event_p50_s is not None
            assert 0 < run.first_event_p50_s <= run.latency_p50_s
        else:
            assert run.events == run.requests
            assert run.first_event_p50_s is None
        assert 0 < run.latency_p50_s <= run.latency_p99_s
        assert run.upstream_busy is None or run.upstream_busy >= 0
        assert run.rss_bytes is not None and run.peak_rss_bytes is not None
        assert 0 < run.rss_bytes <= run.peak_rss_bytes


def test_the_asyncio_face_child_never_runs_trios_own_loop() -> None:
    """The asyncio face is the gateway under asyncio: its child runs every case (and its open
    streams) with ``trio.run`` out of reach, the engine a guest on asyncio's loop only."""
    guard = (
        "import sys, trio\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError('trio.run in the asyncio face child')\n"
        "trio.run = refuse\n"
        "from benchmarks._asyncio_face import _main\n"
        "sys.exit(_main(sys.argv[1:]))\n"
    )
    plan = LibraryPlan(requests=((2, 2),), warmup_s=0.0)
    with run_fake_upstream(tokens=4, cpu=None) as upstream:
        argv = [SLUICEGATE_ASYNCIO, upstream.base_url, str(upstream.pid), plan.to_json()]
        done = subprocess.run(
            [sys.executable, "-c", guard, *argv], cwd=ROOT, capture_output=True, timeout=120
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = done.stdout.decode().splitlines()
    assert [
        parse_line(line, case, n).case
        for line, (case, n) in zip(lines, plan.cases(SLUICEGATE_ASYNCIO), strict=True)
    ] == [case for case, _ in plan.cases(SLUICEGATE_ASYNCIO)]


def test_the_asyncio_face_child_refuses_what_it_does_not_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._asyncio_face", "sluicegate", "url", "1", "{}"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.decode().startswith("usage: python -m benchmarks._asyncio_face ")


def test_the_aiohttp_child_loads_neither_trio_nor_httpx_nor_sluicegate() -> None:
    """The aiohttp floor's RSS must be asyncio's and aiohttp's: its driver imports none of the
    other targets' stacks."""
    code = (
        "import sys, benchmarks._aiohttp; "
        "print([m for m in ('trio', 'httpx', 'sluicegate') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60, check=True
    )
    assert done.stdout.decode().strip() == "[]"


def test_aiohttp_is_a_dev_requirement_so_ci_measures_the_aiohttp_floor() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(r.startswith("aiohttp") for r in project["optional-dependencies"]["dev"])
    assert not any(r.startswith("aiohttp") for r in project["dependencies"])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_failing_child_raises_with_its_stderr() -> None:
    # Nothing listens there: the child's first request fails, and so does the child.
    upstream = FakeUpstreamProcess(base_url=f"http://127.0.0.1:{_closed_port()}/v1", pid=1)
    plan = LibraryPlan(requests=((1, 2),), warmup_s=0.0)
    with pytest.raises(BenchmarkError, match=r"the floor child failed \(status 1\)") as info:
        measure_library("floor", upstream=upstream, plan=plan)
    assert "ConnectError" in str(info.value)  # the tail of its traceback


@contextmanager
def _silent_server() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_a_hung_child_is_killed_after_the_line_timeout() -> None:
    plan = LibraryPlan(requests=((1, 2),), warmup_s=0.0)
    began = time.monotonic()
    with _silent_server() as url, pytest.raises(BenchmarkError, match="no line within 2 s"):
        measure_library(
            "floor",
            upstream=FakeUpstreamProcess(base_url=url, pid=os.getpid()),
            plan=plan,
            line_timeout=2.0,
        )
    assert time.monotonic() - began < 30


def test_an_unknown_target_is_refused_before_any_child() -> None:
    with pytest.raises(ValueError, match="unknown library target"):
        measure_library(
            "httpx",
            upstream=FakeUpstreamProcess(base_url="http://127.0.0.1:1/v1", pid=1),
            plan=LibraryPlan(requests=((1, 1),), warmup_s=0.0),
        )


# -- RSS in the summary, the tables and the results --------------------------------------------


def test_the_summary_takes_the_median_rss_and_the_table_shows_it(tmp_path: Path) -> None:
    runs = [
        case_run("floor", cpu_s=0.1, rss=30 * MIB, peak=31 * MIB),
        case_run("sluicegate", rss=50 * MIB, peak=60 * MIB),
        case_run("sluicegate", rss=40 * MIB, peak=44 * MIB),
        case_run("floor", cpu_s=0.1, rss=None, peak=None),  # not measured: left out
        case_run("sluicegate", rss=45 * MIB, peak=46 * MIB),
    ]
    floor, ours = summarize(runs)
    assert (floor.rss_bytes, floor.peak_rss_bytes) == (30 * MIB, 31 * MIB)
    assert (ours.rss_bytes, ours.peak_rss_bytes) == (45 * MIB, 46 * MIB)

    header, _, floor_row, ours_row = text_table([floor, ours]).splitlines()
    assert header.endswith("RSS MiB")
    assert floor_row.endswith(" 30.0")
    assert ours_row.endswith(" 45.0")
    no_rss = summarize([case_run(rss=None, peak=None)])
    assert text_table(no_rss).splitlines()[2].endswith(" -")

    meta = {"started": "now", "command": "test", "cpus": "-", "repeats": 3}
    paths = write_results(
        tmp_path, "run", "latest", meta=meta, runs=runs, summaries=[floor, ours], checks=[]
    )
    document = json.loads(paths[0].read_text())
    assert [s["rss_bytes"] for s in document["summary"]] == [30 * MIB, 45 * MIB]
    assert [s["peak_rss_bytes"] for s in document["summary"]] == [31 * MIB, 46 * MIB]
    assert [r["rss_bytes"] for r in document["runs"]] == [r.rss_bytes for r in runs]
    assert CaseRun.from_json(document["runs"][1]) == runs[1]
    assert "| RSS MiB |" in paths[2].read_text()


def test_every_target_gets_its_ratio_to_the_aiohttp_floor(tmp_path: Path) -> None:
    runs = [
        case_run("sluicegate", cpu_s=0.2),  # 2 ms a request
        case_run("floor", cpu_s=0.1),
        case_run(AIOHTTP_FLOOR, cpu_s=0.05),
        case_run("litellm", cpu_s=0.8),
        # Another concurrency without the aiohttp floor: no ratio to it there.
        case_run("sluicegate", concurrency=64, cpu_s=0.2),
        case_run("floor", concurrency=64, cpu_s=0.1),
    ]
    summaries = summarize(runs)
    assert [(s.case.target, s.case.concurrency) for s in summaries] == [
        ("floor", 16),
        (AIOHTTP_FLOOR, 16),
        ("sluicegate", 16),
        ("litellm", 16),
        ("floor", 64),
        ("sluicegate", 64),
    ]
    floor, aiohttp, ours, litellm, _, ours_64 = summaries
    assert ours.aiohttp_ratio == pytest.approx(4.0)
    assert litellm.aiohttp_ratio == pytest.approx(16.0)
    assert floor.aiohttp_ratio is None and aiohttp.aiohttp_ratio is None
    assert ours_64.aiohttp_ratio is None
    # The aiohttp floor against the httpx floor, as any other target.
    assert aiohttp.cpu_ratio == pytest.approx(0.5)

    header, _, *rows = text_table(summaries).splitlines()
    assert "x floor  x aiohttp" in header
    ours_row = next(r.split() for r in rows if r.split()[:3] == ["stream", "16", "sluicegate"])
    # ... CPU ms/req, its spread (one repeat: none), x floor, x aiohttp, p50 ...
    assert ours_row[5:9] == ["2.000", "-", "2.00", "4.00"]

    meta = {"started": "now", "command": "test", "cpus": "-", "repeats": 1}
    meta["upstream_shape"] = "upstream: fake, each SSE event its own write"
    paths = write_results(
        tmp_path, "run", "latest", meta=meta, runs=runs, summaries=summaries, checks=[]
    )
    document = json.loads(paths[0].read_text())
    ratios = [s["cpu_ratio_vs_aiohttp_floor"] for s in document["summary"]]
    assert ratios == [None, None, pytest.approx(4.0), pytest.approx(16.0), None, None]
    markdown = paths[2].read_text()
    assert "| x aiohttp |" in markdown
    assert "\nupstream: fake, each SSE event its own write\n" in markdown


def test_litellm_runs_carry_their_rss() -> None:
    run = LiteLLMRun(
        mode="stream",
        concurrency=4,
        requests=100,
        requests_per_s=50.0,
        cpu_ms_per_request=8.0,
        p50_ms=20.0,
        p99_ms=40.0,
        first_event_p50_ms=10.0,
        events_per_request=32.0,
        rss_bytes=200 * MIB,
        peak_rss_bytes=210 * MIB,
    ).as_case_run()
    assert (run.rss_bytes, run.peak_rss_bytes) == (200 * MIB, 210 * MIB)
    assert run.case == Case(target="litellm", stream=True, concurrency=4)


# -- the asyncio face against the trio face ------------------------------------------------------


def test_the_asyncio_face_gets_its_ratio_to_the_trio_face(tmp_path: Path) -> None:
    runs = [
        case_run(SLUICEGATE_ASYNCIO, cpu_s=0.25),  # 2.5 ms a request
        case_run(SLUICEGATE, cpu_s=0.2),  # 2 ms
        case_run("floor", cpu_s=0.1),
        case_run(SLUICEGATE_ASYNCIO, concurrency=64, cpu_s=0.3),
        case_run("stateless", cpu_s=0.15),
    ]
    summaries = summarize(runs)
    assert [(s.case.target, s.case.concurrency) for s in summaries] == [
        ("floor", 16),
        (SLUICEGATE, 16),
        (SLUICEGATE_ASYNCIO, 16),
        ("stateless", 16),
        (SLUICEGATE_ASYNCIO, 64),
    ]
    floor, trio, face, stateless, face_64 = summaries
    assert face.trio_ratio == pytest.approx(1.25)
    # Only the asyncio face's rows, and only where the trio face was measured.
    assert floor.trio_ratio is trio.trio_ratio is stateless.trio_ratio is face_64.trio_ratio is None
    # Against the floors, as any other target.
    assert face.cpu_ratio == pytest.approx(2.5)

    meta = {"started": "now", "command": "test", "cpus": "-", "repeats": 1}
    paths = write_results(
        tmp_path, "run", "latest", meta=meta, runs=runs, summaries=summaries, checks=[]
    )
    document = json.loads(paths[0].read_text())
    ratios = [s["cpu_ratio_vs_trio_face"] for s in document["summary"]]
    assert ratios == [None, None, pytest.approx(1.25), None, None]


def _faces(trio_ms: float, face_ms: float, litellm_ms: float | None = None) -> list[CaseRun]:
    runs = [
        case_run(SLUICEGATE, stream=False, concurrency=1, cpu_s=trio_ms / 10),
        case_run(SLUICEGATE_ASYNCIO, stream=False, concurrency=1, cpu_s=face_ms / 10),
    ]
    if litellm_ms is not None:
        runs.append(case_run(LITELLM, stream=False, concurrency=1, cpu_s=litellm_ms / 10))
    return runs


@pytest.mark.parametrize(
    ("face_ms", "verdicts"),
    [(2.3, ["PASS", "PASS"]), (2.4, ["PASS", "PASS"]), (2.5, ["MISS", "MISS"])],
)
def test_the_asyncio_face_passes_within_its_ratio_of_the_trio_face(
    face_ms: float, verdicts: list[str]
) -> None:
    """CPU/request at most MAX_FACE_RATIO times the trio face's (2.4 ms against 2 ms is the
    line); and the margin over LiteLLM's library at least the trio face's ÷ MAX_FACE_RATIO,
    reported beside it."""
    assert MAX_FACE_RATIO == 1.2
    checks = face_checks(summarize(_faces(2.0, face_ms, litellm_ms=12.0)))
    assert [c.verdict for c in checks] == verdicts
    ratio, margin = checks
    assert ratio.name == "create c=1: asyncio face CPU/request <= 1.2x trio face"
    assert ratio.detail == (f"{face_ms / 2:.2f}x ({face_ms:.3f} ms vs trio face 2.000 ms)")
    assert (
        margin.name == "create c=1: LiteLLM CPU/request / asyncio face's >= the trio face's / 1.2"
    )
    assert margin.detail.startswith(
        f"LiteLLM / asyncio face {12 / face_ms:.2f}x, LiteLLM / trio face 6.00x "
    )
    # Among the suite's targets, after the trio face's own.
    assert check_targets(summarize(_faces(2.0, face_ms, litellm_ms=12.0)))[-2:] == checks


def test_without_litellm_or_the_trio_face_the_face_checks_are_fewer() -> None:
    assert [c.name for c in face_checks(summarize(_faces(2.0, 2.2)))] == [
        "create c=1: asyncio face CPU/request <= 1.2x trio face"
    ]
    alone = [case_run(SLUICEGATE_ASYNCIO, cpu_s=0.2), case_run(LITELLM, cpu_s=1.0)]
    assert face_checks(summarize(alone)) == []
