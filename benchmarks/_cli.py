"""``python -m benchmarks [--smoke] [--only store,instances] [--concurrency 1,16,64] [--requests N]
[--repeats K]``."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import platform
import shlex
import sys
import time
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import trio

import sluicegate

from ._aiohttp import aiohttp_available
from ._charts import write_charts
from ._events import (
    EventCost,
    event_cost_json,
    event_cost_table,
    measure_event_cost,
    summarize_event_cost,
)
from ._headline import (
    headline_lines,
    headline_markdown,
    headline_text,
    instances_line,
    postgres_recording_line,
    recording_line,
)
from ._instances import (
    InstancesResult,
    instances_checks,
    instances_json,
    instances_rows,
    instances_table,
    measure_instances,
)
from ._library import LibraryPlan, measure_library
from ._litellm import litellm_available, measure_litellm
from ._memory import (
    LIBRARY_ASYNCIO,
    MemoryResult,
    RunningServer,
    measure_open_streams,
    memory_checks,
    memory_json,
    memory_table,
    open_slow_streams,
    proxy_idle_rss,
    raise_open_file_limit,
    slow_consumer_library,
    slow_consumer_proxy,
)
from ._postgres import REQUIRE_ENV, open_bench_postgres, postgres_missing
from ._proxy import (
    DEFAULT_SECONDS,
    DEFAULT_WARMUP_S,
    LONG_MODEL,
    FirstEvent,
    ProxyRun,
    first_event_json,
    first_event_table,
    measure_first_event,
    measure_proxy,
    open_proxy_server,
    proxy_json,
    proxy_table,
    summarize_proxy,
)
from ._report import (
    AIOHTTP_FLOOR,
    FLOOR,
    SLUICEGATE,
    SLUICEGATE_ASYNCIO,
    SLUICEGATE_STATELESS,
    check_targets,
    summarize,
    text_table,
    write_results,
)
from ._routing import (
    cache_checks,
    cache_table,
    measure_cache_affinity,
    measure_routing,
    routing_checks,
    routing_table,
)
from ._store import (
    PostgresRecordingRun,
    RecordingComparison,
    RecordingRun,
    compare_recording,
    measure_postgres_recording,
    measure_recording,
    postgres_recording_json,
    recording_comparison_checks,
    recording_comparison_table,
    recording_table,
)
from ._targets import POOL_KEEPALIVE_EXPIRY, POOL_SIZE
from ._upstream import (
    BenchmarkError,
    pin_current_process,
    plan_cpus,
    run_fake_upstream,
    upstream_shape,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._report import Check
    from ._runner import CaseRun
    from ._upstream import CpuPlan, FakeUpstreamProcess

__all__ = ["main"]

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
_FULL_REQUESTS: Final = 2000
_FULL_REPEATS: Final = 3
_SMOKE_REQUESTS: Final = 16
_SMOKE_REPEATS: Final = 1
#: Router picks timed per strategy (benchmarks/_routing.py).
_SMOKE_PICKS = 2_000
_FULL_PICKS = 20_000
#: Requests of the prompt-cache affinity simulation (benchmarks/_routing.py).
_SMOKE_CACHE_REQUESTS = 4_000
_FULL_CACHE_REQUESTS = 40_000
#: Simulated responses recorded per concurrency (benchmarks/_store.py).
_FULL_RECORDINGS: Final = 2000
_SMOKE_RECORDINGS: Final = 20
#: Below this concurrency a case is latency-bound and slow in wall time: it gets N / 4 requests,
#: still plenty for CPU per request and p99.
_LOW_CONCURRENCY: Final = 8
#: Time-to-first-event probes per target and concurrency (benchmarks/_proxy.py).
_FULL_FIRST_EVENTS: Final = 200
_SMOKE_FIRST_EVENTS: Final = 10
#: Long streams read for the CPU per streamed event (deltas per answer; benchmarks/_events.py),
#: and how many of each.
_FULL_EVENT_LENGTHS: Final = (1000, 4000, 16000)
_SMOKE_EVENT_LENGTHS: Final = (1000,)
_FULL_EVENT_REPEATS: Final = 3
_SMOKE_EVENT_REPEATS: Final = 1
#: Why the aiohttp floor's rows are missing, when they are.
_NO_AIOHTTP: Final = "aiohttp is not installed: pip install -e '.[dev]'"
#: The sections ``--only`` can run alone: recording (SQLite and PostgreSQL), and one instance
#: against two on PostgreSQL.
STORE: Final = "store"
INSTANCES: Final = "instances"
_SECTIONS: Final = (STORE, INSTANCES)


@attrs.frozen(kw_only=True)
class Settings:
    smoke: bool
    concurrencies: tuple[int, ...]
    requests: int
    repeats: int
    tokens: int
    warmup_s: float
    #: The sections to run alone (``--only``); empty: everything.
    only: tuple[str, ...] = ()

    def requests_at(self, concurrency: int) -> int:
        if concurrency >= _LOW_CONCURRENCY:
            return self.requests
        return max(1, self.requests // 4)


@attrs.define(eq=False)
class _Progress:
    """One line per finished measurement on stderr: a bar, the count, an estimate of the time
    left, and what was measured (lines, not a redrawn bar, so CI logs read as well as a
    terminal)."""

    total: int
    done: int = 0
    started: float = attrs.Factory(time.monotonic)

    def step(self, text: str) -> None:
        self.done = min(self.done + 1, self.total)
        width = 24
        filled = round(width * self.done / self.total)
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        bar = "#" * filled + "." * (width - filled)
        print(
            f"[{bar}] {self.done:>3}/{self.total} ~{left:4.0f} s left  {text}",
            file=sys.stderr,
            flush=True,
        )


def _library_targets() -> list[str]:
    """The library targets measured, in the first repeat's order."""
    return [
        FLOOR,
        *([AIOHTTP_FLOOR] if aiohttp_available() else []),
        SLUICEGATE,
        SLUICEGATE_ASYNCIO,
        SLUICEGATE_STATELESS,
    ]


def _event_lengths(settings: Settings) -> tuple[int, ...]:
    return _SMOKE_EVENT_LENGTHS if settings.smoke else _FULL_EVENT_LENGTHS


def _steps(settings: Settings) -> int:
    cases = len(settings.concurrencies) * settings.repeats
    library = len(_library_targets()) * 2 * cases  # each target, create and stream
    litellm = 2 * cases if litellm_available() else 0
    # proxy, direct (and LiteLLM's proxy), create and stream
    proxy = (3 if litellm_available() else 2) * 2 * cases
    first_event = 2 * len(settings.concurrencies)  # proxy and direct, once
    events = len(_event_lengths(settings))
    # + three memory sections (the library under a slow consumer, the open streams of the
    # library's two faces and the aiohttp floor, the proxy's), the router
    return library + litellm + proxy + first_event + events + 4 + _section_steps(settings)


def _section_steps(settings: Settings, sections: Sequence[str] = _SECTIONS) -> int:
    """The steps of the sections ``--only`` can choose: recording, one per backend (SQLite,
    and PostgreSQL with and without synchronous commits); one instance against two, one per run
    (two layouts, two modes)."""
    steps = 3 if STORE in sections else 0
    if INSTANCES in sections:
        steps += 2 * 2 * len(_instance_concurrencies(settings)) * settings.repeats
    return steps


def _concurrencies(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrencies must be positive integers")
    return tuple(sorted(set(values)))


def _sections(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(values) - set(_SECTIONS))
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"sections are {', '.join(_SECTIONS)}, not {', '.join(unknown) or repr(text)}"
        )
    return tuple(s for s in _SECTIONS if s in values)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parse(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="sluicegate vs a raw httpx floor, against the same fake upstream "
        "(see benchmarks/__init__.py). Always exits 0 unless the benchmark could not run.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"a tiny run ({_SMOKE_REQUESTS} requests per case, 1 repeat) that keeps the suite "
        "working in CI; its numbers mean nothing",
    )
    parser.add_argument(
        "--only",
        type=_sections,
        default=(),
        metavar="SECTION,...",
        help="run only these sections: store (recording on SQLite and on PostgreSQL), "
        "instances (sluicegate serve with one and two instances on PostgreSQL); their results "
        "go to latest-<sections>.json/.md, beside the full run's",
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrencies,
        default=(1, 16, 64),
        metavar="C1,C2,...",
        help="worker counts to run every case at (default: 1,16,64)",
    )
    parser.add_argument(
        "--requests",
        type=_positive,
        default=None,
        metavar="N",
        help=f"measured requests per case at concurrency >= {_LOW_CONCURRENCY}, N/4 below "
        f"(default: {_FULL_REQUESTS}; {_SMOKE_REQUESTS} with --smoke)",
    )
    parser.add_argument(
        "--repeats",
        type=_positive,
        default=None,
        metavar="K",
        help=f"repeat every case K times and report medians (default: {_FULL_REPEATS}; "
        f"{_SMOKE_REPEATS} with --smoke)",
    )
    parser.add_argument(
        "--tokens", type=_positive, default=20, help="output tokens per answer (default: 20)"
    )
    args = parser.parse_args(argv)
    smoke: bool = args.smoke
    return Settings(
        smoke=smoke,
        concurrencies=args.concurrency,
        requests=args.requests or (_SMOKE_REQUESTS if smoke else _FULL_REQUESTS),
        repeats=args.repeats or (_SMOKE_REPEATS if smoke else _FULL_REPEATS),
        tokens=args.tokens,
        # Twice the keep-alive expiry: long enough for the pool to settle (_targets.py).
        warmup_s=0.0 if smoke else 2 * POOL_KEEPALIVE_EXPIRY,
        only=args.only,
    )


def _library_progress(progress: _Progress) -> Callable[[CaseRun], None]:
    def report(run: CaseRun) -> None:
        rss = "" if run.rss_bytes is None else f"  {run.rss_bytes / 2**20:5.1f} MiB"
        progress.step(
            f"{run.case.mode:<6} c={run.case.concurrency:<3} {run.case.target:<18} "
            f"{run.cpu_ms_per_request:7.3f} CPU ms/req  {run.requests_per_s:7.0f} req/s{rss}"
        )

    return report


def _run_library(
    settings: Settings, upstream: FakeUpstreamProcess, progress: _Progress
) -> list[CaseRun]:
    """The floors and sluicegate (its trio face, its asyncio face, the stateless mode), each in
    a child process of its own per repeat (_library.py), which inherits this process's pinning
    to the measuring CPU."""
    plan = LibraryPlan(
        requests=tuple((c, settings.requests_at(c)) for c in settings.concurrencies),
        warmup_s=settings.warmup_s,
    )
    targets = _library_targets()
    if AIOHTTP_FLOOR not in targets:
        print(f"aiohttp floor: {_NO_AIOHTTP}; its rows are skipped", file=sys.stderr)
    report = _library_progress(progress)
    runs: list[CaseRun] = []
    # No pause between repeats for idle connections to expire: that matters within a process,
    # where the lowest concurrency would pay for scanning the pool the highest one left (see
    # POOL_KEEPALIVE_EXPIRY), but every child starts with an empty pool and its connections
    # close when it exits.
    for repeat in range(settings.repeats):
        # Alternate which target goes first, so neither always finds the upstream as the other
        # left it.
        order = targets if repeat % 2 == 0 else targets[::-1]
        for target in order:
            runs += measure_library(target, upstream=upstream, plan=plan, on_run=report)
    return runs


#: LiteLLM costs several times more per request: it gets this share of the requests (and at
#: least _LITELLM_MIN), which keeps a full run's LiteLLM part to a few minutes.
_LITELLM_SHARE: Final = 4
_LITELLM_MIN: Final = 100


def _run_litellm(
    settings: Settings, upstream: FakeUpstreamProcess, cpu: int | None, progress: _Progress
) -> list[CaseRun]:
    """LiteLLM's library on the same upstream, when the ``compare`` extra is installed."""
    if not litellm_available():
        print(
            "LiteLLM: not installed (pip install -e '.[compare]'); its rows are skipped",
            file=sys.stderr,
        )
        return []
    report = _library_progress(progress)
    runs: list[CaseRun] = []
    for _ in range(settings.repeats):
        for concurrency in settings.concurrencies:
            for stream in (False, True):
                requests = settings.requests_at(concurrency)
                if not settings.smoke:
                    requests = max(_LITELLM_MIN, requests // _LITELLM_SHARE)
                run = measure_litellm(
                    upstream_url=upstream.base_url,
                    cpu=cpu,
                    concurrency=concurrency,
                    requests=requests,
                    stream=stream,
                ).as_case_run()
                runs.append(run)
                report(run)
    return runs


#: Memory scenarios that failed (reported in the output and the results, not fatal).
MEMORY_FAILURES: list[str] = []
#: LiteLLM-proxy runs that failed (reported, not fatal: the comparison, not ours).
COMPARISON_FAILURES: list[str] = []

#: Events each slow consumer reads (one per 10 ms), and slow streams held open, per run kind.
_SLOW_EVENTS: Final = {True: 100, False: 1500}
_OPEN_STREAMS: Final = {True: 20, False: 500}


def _library_memory(settings: Settings, plan: CpuPlan) -> list[MemoryResult]:
    """The library under a slow consumer, in this process (memory must stay flat)."""
    events = _SLOW_EVENTS[settings.smoke]
    # Four times the events read, so backpressure has to hold for the whole read.
    with run_fake_upstream(tokens=4 * events, cpu=plan.upstream) as long_upstream:
        run = trio.run(partial(slow_consumer_library, long_upstream.base_url, events=events))
    return [run]


def _library_open_streams(settings: Settings, plan: CpuPlan) -> list[MemoryResult]:
    """Memory per open slow stream for the library (its trio face, then its asyncio face) and,
    as the reference, the aiohttp floor: each in a child process of its own (a fresh heap; it
    inherits this process's pinning), holding the streams against a slow upstream as the
    proxy's measurement does."""
    streams = _OPEN_STREAMS[settings.smoke]
    raise_open_file_limit(2 * streams + 256)
    targets = ["library", LIBRARY_ASYNCIO, *([AIOHTTP_FLOOR] if aiohttp_available() else [])]
    results: list[MemoryResult] = []
    # A word every half second, as for the proxy: the streams stay open while they are counted.
    with run_fake_upstream(tokens=400, cpu=plan.upstream, token_delay=0.5) as slow_upstream:
        for target in targets:
            try:
                results.append(
                    measure_open_streams(target, slow_upstream.base_url, streams=streams)
                )
            except BenchmarkError as exc:
                # Reported, not fatal, as the proxy's.
                print(
                    f"memory: {target}, {streams} open slow streams FAILED: {exc}", file=sys.stderr
                )
                MEMORY_FAILURES.append(f"{target}, {streams} open slow streams: {exc}")
    return results


def _event_cost(settings: Settings, plan: CpuPlan, progress: _Progress) -> list[EventCost]:
    """CPU per streamed event on long streams (the library, c=1), per length."""

    def report(cost: EventCost) -> None:
        progress.step(
            f"stream c=1   long stream {cost.events:>6} events  "
            f"{cost.cpu_us_per_event:7.2f} CPU us/event"
        )

    repeats = _SMOKE_EVENT_REPEATS if settings.smoke else _FULL_EVENT_REPEATS
    runs = measure_event_cost(
        _event_lengths(settings), repeats=repeats, cpu=plan.upstream, on_result=report
    )
    return summarize_event_cost(runs)


def _proxy_memory(settings: Settings, plan: CpuPlan) -> list[MemoryResult]:
    """The proxy: idle, under a slow consumer, and holding many slow streams open."""
    events = _SLOW_EVENTS[settings.smoke]
    streams = _OPEN_STREAMS[settings.smoke]
    raise_open_file_limit(2 * streams + 256)
    # Memory, not CPU, is measured here, and 500 paced readers in this process beside the
    # proxy on one core starve some of them past their timeout: let both float.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    with (
        run_fake_upstream(tokens=4 * events, cpu=plan.upstream) as long_upstream,
        # A word every half second: the streams stay open while they are counted.
        run_fake_upstream(tokens=400, cpu=plan.upstream, token_delay=0.5) as slow_upstream,
        open_proxy_server(
            upstream_url=slow_upstream.base_url,
            long_upstream_url=long_upstream.base_url,
            cpu=None,
            # One upstream connection per open stream: the pool must not be what queues them.
            max_connections=streams + 64,
        ) as proxy,
    ):
        server = RunningServer(url=proxy.url, pid=proxy.pid)

        async def scenarios() -> list[MemoryResult]:
            idle = await proxy_idle_rss(server)
            slow = await slow_consumer_proxy(server, events=events, model=LONG_MODEL)
            try:
                held = await open_slow_streams(server, streams=streams)
            except BenchmarkError as exc:
                # Reported, not fatal: the rest of the run's results still count.
                print(f"memory: {streams} open slow streams FAILED: {exc}", file=sys.stderr)
                MEMORY_FAILURES.append(f"{streams} open slow streams: {exc}")
                return [idle, slow]
            return [idle, slow, held]

        return trio.run(scenarios)


@attrs.frozen(kw_only=True)
class _StoreSection:
    """Recording on SQLite and, where it could be measured, on PostgreSQL."""

    sqlite: list[RecordingRun]
    postgres: list[RecordingComparison]
    #: The same with ``synchronous_commit`` off for the writer (the store's option).
    postgres_async: list[RecordingComparison] = attrs.Factory(list)
    #: The PostgreSQL server measured on, or why it was not.
    postgres_note: str
    postgres_measured: bool


def _postgres_missing() -> str | None:
    """Why the PostgreSQL measurements are skipped here; None when they run.

    Raises:
        BenchmarkError: PostgreSQL is missing where ``SLUICEGATE_REQUIRE_SERVERS`` is set (CI,
            which installs it: a smoke run that skipped it would test nothing of it).
    """
    missing = postgres_missing()
    if missing is not None and os.environ.get(REQUIRE_ENV):
        raise BenchmarkError(f"{missing}, and {REQUIRE_ENV} is set")
    return missing


def _store_section(settings: Settings, plan: CpuPlan, progress: _Progress) -> _StoreSection:
    """Recording into a SQLite file, then the same into PostgreSQL (its commits waiting for the
    WAL flush, then not): this process on the measuring CPU for all, the database server on the
    other. ``repeats`` rounds of the three, interleaved, so that a slow spell of a shared machine
    falls on all three; each reported run is the median one of its backend and concurrency."""
    pin_current_process(plan.measure)
    responses = _SMOKE_RECORDINGS if settings.smoke else _FULL_RECORDINGS
    missing = _postgres_missing()
    if missing is not None:
        sqlite = _median_runs(
            [
                trio.run(measure_recording, settings.concurrencies, responses)
                for _ in range(settings.repeats)
            ]
        )
        progress.step("recording: SQLite")
        print(f"recording on PostgreSQL: skipped ({missing})", file=sys.stderr)
        progress.step("recording on PostgreSQL: skipped")
        progress.step("recording on PostgreSQL (synchronous_commit off): skipped")
        return _StoreSection(
            sqlite=sqlite, postgres=[], postgres_note=missing, postgres_measured=False
        )
    rounds: tuple[list[list[Any]], list[list[Any]], list[list[Any]]] = ([], [], [])
    with contextlib.ExitStack() as stack:
        try:
            postgres = stack.enter_context(open_bench_postgres(cpu=plan.upstream))
        except RuntimeError as exc:
            raise BenchmarkError(f"PostgreSQL: {exc}") from exc
        for _ in range(settings.repeats):
            rounds[0].append(trio.run(measure_recording, settings.concurrencies, responses))
            for flushed, into in ((True, rounds[1]), (False, rounds[2])):
                into.append(
                    trio.run(
                        partial(
                            measure_postgres_recording,
                            postgres,
                            settings.concurrencies,
                            responses,
                            synchronous_commit=flushed,
                        )
                    )
                )
    sqlite = _median_runs(rounds[0])
    progress.step("recording: SQLite")
    rows = compare_recording(sqlite, _median_runs(rounds[1]))
    async_rows = compare_recording(sqlite, _median_runs(rounds[2]))
    for label, measured in (("", rows), (" (synchronous_commit off)", async_rows)):
        progress.step(
            f"recording: PostgreSQL{label} "
            + ", ".join(f"c={r.concurrency} {r.throughput_ratio:.2f}x SQLite" for r in measured)
        )
    return _StoreSection(
        sqlite=sqlite,
        postgres=rows,
        postgres_async=async_rows,
        postgres_note=postgres.note,
        postgres_measured=True,
    )


_Run = TypeVar("_Run", RecordingRun, PostgresRecordingRun)


def _median_runs(rounds: Sequence[Sequence[_Run]]) -> list[_Run]:
    """Per concurrency, the run of median responses/s over the rounds (each round measured
    every concurrency in the same order)."""
    medians = []
    for runs in zip(*rounds, strict=True):
        ordered = sorted(runs, key=lambda run: run.responses_per_s)
        medians.append(ordered[len(ordered) // 2])
    return medians


def _instance_concurrencies(settings: Settings) -> tuple[int, ...]:
    """The concurrencies of at least ``_LOW_CONCURRENCY`` (16 and 64 by default: one instance
    is saturated there), or the highest; a smoke run only the highest of them."""
    high = tuple(c for c in settings.concurrencies if c >= _LOW_CONCURRENCY)
    high = high or (max(settings.concurrencies),)
    return high[-1:] if settings.smoke else high


def _instances_section(settings: Settings, progress: _Progress) -> InstancesResult | str:
    """One instance against two on PostgreSQL (``_instances.py``); why not, if not."""
    missing = _postgres_missing()
    if missing is not None:
        print(f"instances on PostgreSQL: skipped ({missing})", file=sys.stderr)
        return missing

    def report(run: ProxyRun) -> None:
        progress.step(
            f"{run.case.mode:<6} c={run.case.concurrency:<3} {run.case.target:<18} "
            f"{run.requests_per_s:7.0f} req/s  {run.cpu_ms_per_request or 0:7.3f} CPU ms/req"
        )

    return measure_instances(
        tokens=settings.tokens,
        concurrencies=_instance_concurrencies(settings),
        seconds=1 if settings.smoke else DEFAULT_SECONDS,
        repeats=settings.repeats,
        warmup_s=0 if settings.smoke else DEFAULT_WARMUP_S,
        on_run=report,
    )


_STORE_TITLE: Final = (
    "recording alone (event store, SQLite file; part of every sluicegate figure above; "
    "disk: the database and its WAL after a checkpoint, per response, next to the final "
    "Response's JSON)"
)
_POSTGRES_TITLE: Final = (
    "recording on PostgreSQL vs SQLite (the same responses, same concurrency; PG gateway CPU: "
    "this process, all threads; PG server CPU: the database server's processes, from /proc; "
    "SQLite runs synchronous=NORMAL in WAL mode, PostgreSQL waits for its WAL's fsync)"
)
_INSTANCES_TITLE: Final = (
    "one instance vs two (sluicegate serve --workers 1 and 2, each worker an instance on one "
    "PostgreSQL database; one wrk; CPU summed over the server's processes)"
)


#: The second PostgreSQL table: the writer's commits not waiting for the WAL flush.
_POSTGRES_ASYNC_TITLE: Final = (
    "the same with synchronous_commit off for the store's writer (general_settings.store."
    "synchronous_commit: false; what was committed in the last fraction of a second may be lost "
    "when the database server crashes, as SQLite's synchronous=NORMAL may lose it when the "
    "machine does)"
)


def _store_checks(section: _StoreSection) -> list[Check]:
    return recording_comparison_checks([*section.postgres, *section.postgres_async])


def _instances_checks(instances: InstancesResult | str | None) -> list[Check]:
    if not isinstance(instances, InstancesResult):
        return []
    return instances_checks(instances_rows(instances.runs))


def _print_checks(checks: Sequence[Check]) -> None:
    for check in checks:
        print(f"  {check.verdict}  {check.name}: {check.detail}")


def _print_store(section: _StoreSection) -> None:
    print(_STORE_TITLE + ":")
    print(recording_table(section.sqlite))
    print(recording_line(section.sqlite))
    print()
    if not section.postgres_measured:
        print(f"recording on PostgreSQL: not measured ({section.postgres_note})")
        return
    print(f"{_POSTGRES_TITLE}; {section.postgres_note}:")
    print(recording_comparison_table(section.postgres))
    if section.postgres_async:
        print(f"{_POSTGRES_ASYNC_TITLE}:")
        print(recording_comparison_table(section.postgres_async))
    _print_checks(_store_checks(section))


def _print_instances(instances: InstancesResult | str) -> None:
    if not isinstance(instances, InstancesResult):
        print(f"one instance vs two: not measured ({instances})")
        return
    print(f"{_INSTANCES_TITLE}; {instances.machine}; {instances.database}:")
    print(instances_table(instances_rows(instances.runs)))
    _print_checks(_instances_checks(instances))


def _store_markdown(section: _StoreSection) -> str:
    out = (
        "\n## Recording (event store, SQLite file)\n\nDisk: the database and its WAL after"
        " a checkpoint, per response, next to the payload (the final Response's JSON).\n\n"
        + recording_table(section.sqlite, markdown=True)
        + "\n\n## Recording on PostgreSQL\n\n"
    )
    if not section.postgres_measured:
        return out + f"Not measured: {section.postgres_note}.\n"
    return (
        out
        + f"{_POSTGRES_TITLE}; {section.postgres_note}.\n\n"
        + recording_comparison_table(section.postgres, markdown=True)
        + f"\n\n{_POSTGRES_ASYNC_TITLE}.\n\n"
        + recording_comparison_table(section.postgres_async, markdown=True)
        + "\n"
    )


def _instances_markdown(instances: InstancesResult | str) -> str:
    out = "\n## One instance vs two (PostgreSQL)\n\n"
    if not isinstance(instances, InstancesResult):
        return out + f"Not measured: {instances}.\n"
    return (
        out
        + f"{_INSTANCES_TITLE}; {instances.machine}; {instances.database}.\n\n"
        + instances_table(instances_rows(instances.runs), markdown=True)
        + "\n"
    )


def _store_json(section: _StoreSection) -> dict[str, Any]:
    return {
        "recording": [attrs.asdict(r) for r in section.sqlite],
        "recording_postgres": {
            "database": section.postgres_note if section.postgres_measured else None,
            "skipped": None if section.postgres_measured else section.postgres_note,
            "runs": postgres_recording_json(section.postgres),
            "runs_synchronous_commit_off": postgres_recording_json(section.postgres_async),
        },
    }


def _instances_json(instances: InstancesResult | str) -> dict[str, Any]:
    if not isinstance(instances, InstancesResult):
        return {"instances": {"skipped": instances}}
    return {"instances": instances_json(instances)}


def _postgres_headline(section: _StoreSection) -> str:
    return postgres_recording_line(
        section.postgres if section.postgres_measured else section.postgres_note
    )


def _instances_headline(instances: InstancesResult | str) -> str:
    if not isinstance(instances, InstancesResult):
        return instances_line(instances)
    return instances_line(instances_rows(instances.runs), machine=instances.machine)


def _proxy_progress(progress: _Progress) -> Callable[[ProxyRun], None]:
    def report(run: ProxyRun) -> None:
        progress.step(
            f"{run.case.mode:<6} c={run.case.concurrency:<3} {run.case.target + ' (wrk)':<18} "
            f"{run.requests_per_s:7.0f} req/s  p50 {run.latency_p50_ms:7.2f} ms"
        )

    return report


def _first_event_progress(progress: _Progress) -> Callable[[FirstEvent], None]:
    def report(result: FirstEvent) -> None:
        progress.step(
            f"stream c={result.concurrency:<3} {result.target + ' (TTFE)':<18} "
            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
        )

    return report


_EVENT_COST_TITLE: Final = (
    "CPU per streamed event, long streams (the library, c=1, one response per repeat, each "
    "event its own write upstream; CPU of the reading process / events)"
)
_FIRST_EVENT_TITLE: Final = (
    "time to first event (a sequential probe as one of c concurrent streams, the others from "
    "wrk), proxy vs the upstream directly"
)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("sluicegate", "httpx", "httpcore", "trio", "orjson", "litellm"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def _source_digest() -> str:
    """A digest of sluicegate's source, so results name the exact code they measured (the tree
    is often dirty while someone is optimising it)."""
    root = Path(sluicegate.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    settings = _parse(argv)
    started = datetime.datetime.now(datetime.UTC)
    plan = plan_cpus()
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    shape = upstream_shape(settings.tokens)
    print(f"sluicegate benchmarks: {plan.note}; {shape}", file=sys.stderr, flush=True)
    if settings.only:
        return _main_only(settings, plan, started=started, command=command, shape=shape)
    begin = time.perf_counter()
    try:
        with run_fake_upstream(tokens=settings.tokens, cpu=plan.upstream) as upstream:
            pin_current_process(plan.measure)
            # First, in a fresh heap: memory freed by other work would hide growth (_memory.py).
            progress = _Progress(_steps(settings))
            memory_results: list[MemoryResult] = list(_library_memory(settings, plan))
            progress.step("memory: the library under a slow consumer")
            runs = _run_library(settings, upstream, progress)
            runs += _run_litellm(settings, upstream, plan.measure, progress)
            event_costs = _event_cost(settings, plan, progress)
            memory_results += _library_open_streams(settings, plan)
            progress.step(
                "memory: open slow streams held by the library (both faces) and the aiohttp floor"
            )
            proxy_runs = measure_proxy(
                upstream_url=upstream.base_url,
                plan=plan,
                concurrencies=settings.concurrencies,
                seconds=1 if settings.smoke else DEFAULT_SECONDS,
                repeats=settings.repeats,
                tokens=settings.tokens,
                warmup_s=0 if settings.smoke else DEFAULT_WARMUP_S,
                on_run=_proxy_progress(progress),
                litellm=litellm_available(),
                failures=COMPARISON_FAILURES,
            )
            first_events = measure_first_event(
                upstream_url=upstream.base_url,
                plan=plan,
                concurrencies=settings.concurrencies,
                samples=_SMOKE_FIRST_EVENTS if settings.smoke else _FULL_FIRST_EVENTS,
                on_result=_first_event_progress(progress),
            )
            memory_results += _proxy_memory(settings, plan)
            progress.step("memory: the proxy idle, under a slow consumer, with open streams")
            store = _store_section(settings, plan, progress)
            routing = measure_routing(
                _SMOKE_PICKS if settings.smoke else _FULL_PICKS, 1 if settings.smoke else 3
            )
            cache_runs = measure_cache_affinity(
                _SMOKE_CACHE_REQUESTS if settings.smoke else _FULL_CACHE_REQUESTS
            )
            progress.step("router: the cost of one pick, per strategy; prompt-cache hits")
        instances = _instances_section(settings, progress)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - begin

    summaries = summarize(runs)
    checks = check_targets(summaries)
    print()
    print(shape)
    print(text_table(summaries))
    print()
    if settings.smoke:
        print("targets (smoke run: informational only, too few requests to judge):")
    else:
        print("targets:")
    for check in checks:
        print(f"  {check.verdict}  {check.name}: {check.detail}")
    missed = [c for c in checks if not c.passed]
    if missed and not settings.smoke:
        print(f"{len(missed)} of {len(checks)} targets MISSED (informational: exit status 0)")
    proxy_summaries = summarize_proxy(proxy_runs)
    print()
    print(
        "HTTP proxy (sluicegate serve) vs the upstream directly, same load generator (wrk); "
        "CPU is the proxy process's; req/CPU-s = requests per CPU-second of the proxy process "
        f"(its requests/s per core); {shape}:"
    )
    print(proxy_table(proxy_summaries))
    for failure in COMPARISON_FAILURES:
        print(f"  FAILED  {failure}")
    print()
    print(_FIRST_EVENT_TITLE + ":")
    print(first_event_table(first_events))
    print()
    print(_EVENT_COST_TITLE + ":")
    print(event_cost_table(event_costs))
    print()
    print("memory:")
    print(memory_table(memory_results))
    for check in memory_checks(memory_results):
        print(f"  {check.verdict}  {check.name}: {check.detail}")
    for failure in MEMORY_FAILURES:
        print(f"  FAILED  {failure}")
    print()
    _print_store(store)
    print()
    print("the router's pick (100 deployments in one group, live state; no I/O):")
    print(routing_table(routing))
    print()
    print(
        "prompt_cache_key affinity: provider prompt-cache hit rate, 4 deployments, 400 keys, "
        "150 cached prefixes per deployment (simulated, no I/O):"
    )
    print(cache_table(cache_runs))
    for check in [*routing_checks(routing), *cache_checks(cache_runs)]:
        print(f"  {check.verdict}  {check.name}: {check.detail}")
    print()
    _print_instances(instances)
    headline = headline_lines(
        upstream_shape=shape,
        summaries=summaries,
        memory_results=memory_results,
        event_costs=event_costs,
        recording=store.sqlite,
        proxy=proxy_summaries,
        aiohttp_missing=None if aiohttp_available() else _NO_AIOHTTP,
    )
    headline += [_postgres_headline(store), _instances_headline(instances)]
    print()
    print(headline_text(headline))

    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": command,
        "smoke": settings.smoke,
        "concurrencies": list(settings.concurrencies),
        "requests": {str(c): settings.requests_at(c) for c in settings.concurrencies},
        "repeats": settings.repeats,
        "tokens": settings.tokens,
        "warmup_s": settings.warmup_s,
        "pool": {"size": POOL_SIZE, "keepalive_expiry_s": POOL_KEEPALIVE_EXPIRY},
        "cpus": plan.note,
        "upstream": upstream.base_url,
        "platform": platform.platform(),
        "versions": _versions(),
        "sluicegate_source_sha256": _source_digest(),
        "elapsed_s": round(elapsed, 2),
        **_store_json(store),
        **_instances_json(instances),
        "routing": [attrs.asdict(r) for r in routing],
        "prompt_cache_affinity": [attrs.asdict(r) for r in cache_runs],
        "proxy": proxy_json(proxy_summaries),
        "proxy_first_event": first_event_json(first_events),
        "memory": memory_json(memory_results),
        "upstream_shape": shape,
        "event_cost": event_cost_json(event_costs),
        "summary": headline,
        "memory_failures": MEMORY_FAILURES,
        "comparison_failures": COMPARISON_FAILURES,
    }
    # A smoke run must not replace the last real results.
    latest = "latest-smoke" if settings.smoke else "latest"
    stem = started.strftime("%Y%m%dT%H%M%SZ") + ("-smoke" if settings.smoke else "")
    paths = write_results(
        RESULTS_DIR,
        stem,
        latest,
        meta=meta,
        runs=runs,
        summaries=summaries,
        checks=[*checks, *_store_checks(store), *_instances_checks(instances)],
    )
    with paths[2].open("a", encoding="utf-8") as md:
        md.write("\n## HTTP proxy vs the upstream directly (wrk)\n\n")
        md.write(proxy_table(proxy_summaries, markdown=True) + "\n")
        md.write("\n## Time to first event\n\n" + _FIRST_EVENT_TITLE + ".\n\n")
        md.write(first_event_table(first_events, markdown=True) + "\n")
        md.write("\n## CPU per streamed event\n\n" + _EVENT_COST_TITLE + ".\n\n")
        md.write(event_cost_table(event_costs, markdown=True) + "\n")
        md.write("\n## Memory\n\n")
        md.write(memory_table(memory_results, markdown=True) + "\n")
        md.write(_store_markdown(store))
        md.write("\n## The router's pick (100 deployments)\n\n")
        md.write(routing_table(routing, markdown=True) + "\n")
        md.write("\n## Prompt-cache affinity (simulated hit rate)\n\n")
        md.write(cache_table(cache_runs, markdown=True) + "\n")
        md.write(_instances_markdown(instances))
        md.write("\n" + headline_markdown(headline) + "\n")
    proxy_series = [
        {
            "target": f"{s.case.target} (wrk)",
            "mode": s.case.mode,
            "concurrency": s.case.concurrency,
            "requests_per_s": s.requests_per_s,
            "latency_p50_ms": s.latency_p50_ms,
            "latency_p99_ms": s.latency_p99_ms,
        }
        for s in proxy_summaries
    ]
    charts = write_charts(
        RESULTS_DIR / f"{stem}-charts", summaries, memory_results, extra_series=proxy_series
    )
    print(f"\n{elapsed:.1f} s; results: " + ", ".join(str(p) for p in [*paths, *charts]))
    return 0


def _main_only(
    settings: Settings, plan: CpuPlan, *, started: datetime.datetime, command: str, shape: str
) -> int:
    """``--only``: the chosen sections alone, printed and written as in a full run, to
    ``latest-<sections>`` (a full run's ``latest`` is left as it was)."""
    begin = time.perf_counter()
    progress = _Progress(_section_steps(settings, settings.only))
    store: _StoreSection | None = None
    instances: InstancesResult | str | None = None
    try:
        if STORE in settings.only:
            store = _store_section(settings, plan, progress)
        if INSTANCES in settings.only:
            instances = _instances_section(settings, progress)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - begin
    checks: list[Check] = []
    headline: list[str] = []
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": command,
        "smoke": settings.smoke,
        "only": list(settings.only),
        "concurrencies": list(settings.concurrencies),
        "repeats": settings.repeats,
        "tokens": settings.tokens,
        "cpus": plan.note,
        "platform": platform.platform(),
        "versions": _versions(),
        "sluicegate_source_sha256": _source_digest(),
        "elapsed_s": round(elapsed, 2),
        "upstream_shape": shape,
    }
    markdown = ""
    if store is not None:
        print()
        _print_store(store)
        checks += _store_checks(store)
        headline += [recording_line(store.sqlite), _postgres_headline(store)]
        meta |= _store_json(store)
        markdown += _store_markdown(store)
    if instances is not None:
        print()
        _print_instances(instances)
        checks += _instances_checks(instances)
        headline.append(_instances_headline(instances))
        meta |= _instances_json(instances)
        markdown += _instances_markdown(instances)
    print()
    print(headline_text(headline))
    meta["summary"] = headline
    suffix = ("-smoke" if settings.smoke else "") + "-" + "-".join(settings.only)
    stem = started.strftime("%Y%m%dT%H%M%SZ") + suffix
    paths = write_results(
        RESULTS_DIR, stem, "latest" + suffix, meta=meta, runs=[], summaries=[], checks=checks
    )
    with paths[2].open("a", encoding="utf-8") as md:
        md.write(markdown)
        md.write("\n" + headline_markdown(headline) + "\n")
    print(f"\n{elapsed:.1f} s; results: " + ", ".join(str(p) for p in paths))
    return 0
