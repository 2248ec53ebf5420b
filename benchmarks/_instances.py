"""Two instances against one: ``sluicegate serve --workers 1`` and ``--workers 2`` on one
PostgreSQL database.

What is measured
----------------
On PostgreSQL each worker of ``sluicegate serve --workers N`` is a full instance of its own (its
own store, lease and connections), and the N accept on one socket the server bound (the kernel
hands each connection to one of them). The same configuration as the proxy benchmark's (one
model group on the fake upstream, the master key, the same pool limits), plus the database and
the response-ID secret every instance on it shares, is served with one worker and with two. One
wrk (one thread) drives each with the proxy benchmark's scripts (``_proxy.py``: create and
stream, a warm-up that is not measured, then a run of ``seconds``), at each concurrency; per run
we record requests/s, latency p50 and p99, and the server's CPU summed over its processes (the
workers are its children; from ``/proc``) ÷ requests: **CPU ms per request**. Each layout gets a
fresh server and a fresh database per repeat, the two alternating which goes first; each figure
is the median over repeats.

The target: two instances serve at least 1.8 times the requests/s of one. Where they fall
short, the CPU per request of each layout says why: if it stays flat from one to two, each
instance costs what it did alone, and the instances scale with the cores they get; what is
missing is cores. On a 2-core machine it is: wrk, the upstream, PostgreSQL and the gateway all
share those two cores, so here nothing is pinned (every process, both layouts, floats over
every CPU), and the ratio is bounded by what the other processes take. So the output also
gives, per layout, how many CPUs' worth the machine was busy during the runs (``/proc/stat``)
and the CPU per request of everything but the server (the machine's busy time less the
server's), states the machine's shape next to the figures, and says how evenly the two workers
shared the load (the busiest process's share of the server's CPU: 50% is an even split).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._postgres import open_bench_postgres
from ._proxy import (
    DEFAULT_SECONDS,
    DEFAULT_WARMUP_S,
    MASTER_KEY,
    ProxyRun,
    ProxySummary,
    _measure_one,
    _wrk_seconds,
    open_proxy_server,
    summarize_proxy,
    wrk_script,
)
from ._report import Check, render_table
from ._runner import Case
from ._targets import GATEWAY_MODEL
from ._upstream import BenchmarkError, run_fake_upstream

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = [
    "MIN_SCALING",
    "InstancesResult",
    "InstancesRow",
    "instances_checks",
    "instances_json",
    "instances_rows",
    "instances_table",
    "machine_shape",
    "measure_instances",
]

#: Two instances must serve at least this multiple of one's requests/s.
MIN_SCALING: Final = 1.8
_LAYOUTS: Final = (1, 2)


def _target(workers: int) -> str:
    return f"{workers} instance{'s' if workers > 1 else ''}"


def machine_shape() -> str:
    """What the instances share, printed next to the figures."""
    cpus = os.cpu_count() or 1
    return (
        f"{cpus} CPU{'s' if cpus > 1 else ''} shared by wrk, the fake upstream, PostgreSQL and "
        "the server's workers, nothing pinned"
    )


@attrs.frozen(kw_only=True)
class InstancesResult:
    """Every measured run, and what the database was."""

    runs: list[ProxyRun]
    #: The PostgreSQL server (``BenchPostgres.note``).
    database: str
    #: The machine as the runs shared it (:func:`machine_shape`).
    machine: str


@contextlib.contextmanager
def _unpinned() -> Iterator[None]:
    """This process, and every process it starts in the block, free to run on every CPU (the
    suite pins itself to one, and children inherit it); pinned as before afterwards."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure_instances(
    *,
    tokens: int,
    concurrencies: Sequence[int],
    seconds: float = DEFAULT_SECONDS,
    repeats: int = 1,
    warmup_s: float = DEFAULT_WARMUP_S,
    on_run: Callable[[ProxyRun], None] | None = None,
) -> InstancesResult:
    """Start a fake upstream and a PostgreSQL server (``_postgres.open_bench_postgres``), then
    for each repeat and layout (one worker, two; alternating which goes first) a server on a
    fresh database, and for each concurrency (ascending) and mode (create, stream) one measured
    wrk run after an unmeasured warm-up. Nothing is pinned (see the module docstring).

    Blocks for about ``repeats * 2 layouts * (start + len(concurrencies) * 2 modes * (warm-up +
    seconds))``, whole seconds for wrk.

    Args:
        tokens: the upstream's answer length.
        concurrencies: wrk connection counts.
        seconds: measured seconds per run (rounded up to whole seconds, at least 1).
        repeats: runs per case; the rows are medians.
        warmup_s: unmeasured seconds before each run (0: none).
        on_run: called with every run as it completes (progress output).

    Raises:
        BenchmarkError: wrk is missing or failed, a request failed, a server did not start or
            died, or PostgreSQL could not be started.
    """
    if shutil.which("wrk") is None:
        raise BenchmarkError("wrk is not installed (apt-get install wrk)")
    runs: list[ProxyRun] = []
    measured = _wrk_seconds(seconds)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_unpinned())
        scratch = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="sluicegate-bench-inst-"))
        )
        try:
            postgres = stack.enter_context(open_bench_postgres(cpu=None))
        except RuntimeError as exc:
            raise BenchmarkError(f"PostgreSQL: {exc}") from exc
        upstream = stack.enter_context(run_fake_upstream(tokens=tokens, cpu=None))
        scripts = {}
        for stream in (False, True):
            scripts[stream] = scratch / f"instances-{'stream' if stream else 'create'}.lua"
            scripts[stream].write_text(
                wrk_script(model=GATEWAY_MODEL, api_key=MASTER_KEY, stream=stream)
            )
        for repeat in range(repeats):
            for workers in _LAYOUTS if repeat % 2 == 0 else _LAYOUTS[::-1]:
                with (
                    postgres.database() as database_url,
                    open_proxy_server(
                        upstream_url=upstream.base_url,
                        cpu=None,
                        tokens=tokens,
                        workers=workers,
                        database_url=database_url,
                    ) as server,
                ):
                    for concurrency in sorted(concurrencies):
                        for stream in (False, True):
                            run = _measure_one(
                                Case(
                                    target=_target(workers), stream=stream, concurrency=concurrency
                                ),
                                repeat=repeat,
                                tokens=tokens,
                                url=server.responses_url,
                                script=scripts[stream],
                                seconds=measured,
                                warmup_s=warmup_s,
                                loadgen_cpu=None,
                                server=server,
                                idle_rss=None,
                            )
                            runs.append(run)
                            if on_run is not None:
                                on_run(run)
        return InstancesResult(runs=runs, database=postgres.note, machine=machine_shape())


@attrs.frozen(kw_only=True)
class InstancesRow:
    """One mode and concurrency: one instance's and two instances' medians."""

    one: ProxySummary
    two: ProxySummary
    #: The busiest of the two-instance server's processes: its share of the server's CPU
    #: (median over repeats; 0.5 is an even split; None without /proc).
    two_busiest_share: float | None
    #: How many CPUs' worth the machine was busy during each layout's runs (medians; None
    #: without /proc).
    one_machine_busy: float | None = None
    two_machine_busy: float | None = None
    #: The CPU per request of everything but the server (wrk, the upstream, PostgreSQL, the
    #: rest of the machine): the machine's busy time less the server's, ÷ requests (medians).
    one_other_cpu_ms: float | None = None
    two_other_cpu_ms: float | None = None

    @property
    def mode(self) -> str:
        return self.one.case.mode

    @property
    def concurrency(self) -> int:
        return self.one.case.concurrency

    @property
    def scaling(self) -> float:
        """Two instances' requests/s ÷ one's."""
        return self.two.requests_per_s / self.one.requests_per_s


def _other_cpu_ms(run: ProxyRun) -> float | None:
    if run.machine_busy is None or run.server_cpu_s is None:
        return None
    return (run.machine_busy * run.duration_s - run.server_cpu_s) / run.requests * 1e3


def _median(
    runs: Sequence[ProxyRun], case: Case, figure: Callable[[ProxyRun], float | None]
) -> float | None:
    values = [v for r in runs if r.case == case and (v := figure(r)) is not None]
    return statistics.median(values) if values else None


def _busiest_share(run: ProxyRun) -> float | None:
    split = run.server_cpu_split
    if not split or not sum(split):
        return None
    return split[0] / sum(split)


def instances_rows(runs: Sequence[ProxyRun]) -> list[InstancesRow]:
    """One row per mode and concurrency measured in both layouts: create first, then stream,
    each by ascending concurrency."""
    by = {(s.case.target, s.case.stream, s.case.concurrency): s for s in summarize_proxy(runs)}
    rows = []
    for stream, concurrency in sorted({(r.case.stream, r.case.concurrency) for r in runs}):
        one = by.get((_target(1), stream, concurrency))
        two = by.get((_target(2), stream, concurrency))
        if one is None or two is None:
            continue
        rows.append(
            InstancesRow(
                one=one,
                two=two,
                two_busiest_share=_median(runs, two.case, _busiest_share),
                one_machine_busy=_median(runs, one.case, lambda r: r.machine_busy),
                two_machine_busy=_median(runs, two.case, lambda r: r.machine_busy),
                one_other_cpu_ms=_median(runs, one.case, _other_cpu_ms),
                two_other_cpu_ms=_median(runs, two.case, _other_cpu_ms),
            )
        )
    return rows


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


_COLUMNS: Final[list[tuple[str, Callable[[InstancesRow], str]]]] = [
    ("mode", lambda r: r.mode),
    ("conc", lambda r: str(r.concurrency)),
    ("repeats", lambda r: str(min(r.one.repeats, r.two.repeats))),
    ("1 inst req/s", lambda r: f"{r.one.requests_per_s:.0f}"),
    ("2 inst req/s", lambda r: f"{r.two.requests_per_s:.0f}"),
    ("2 / 1", lambda r: f"{r.scaling:.2f}"),
    ("1 inst CPU ms/req", lambda r: _opt(r.one.cpu_ms_per_request, ".3f")),
    ("2 inst CPU ms/req", lambda r: _opt(r.two.cpu_ms_per_request, ".3f")),
    (
        "others CPU ms/req",
        lambda r: f"{_opt(r.one_other_cpu_ms, '.2f')} / {_opt(r.two_other_cpu_ms, '.2f')}",
    ),
    (
        "machine busy (CPUs)",
        lambda r: f"{_opt(r.one_machine_busy, '.2f')} / {_opt(r.two_machine_busy, '.2f')}",
    ),
    ("1 inst p50/p99 ms", lambda r: f"{r.one.latency_p50_ms:.1f} / {r.one.latency_p99_ms:.1f}"),
    ("2 inst p50/p99 ms", lambda r: f"{r.two.latency_p50_ms:.1f} / {r.two.latency_p99_ms:.1f}"),
    (
        "busiest worker",
        lambda r: (
            _opt(None if r.two_busiest_share is None else r.two_busiest_share * 100, ".0f") + "%"
        ),
    ),
    ("wrk busy", lambda r: f"{r.one.loadgen_busy * 100:.0f}% / {r.two.loadgen_busy * 100:.0f}%"),
]


def instances_table(rows: Sequence[InstancesRow], *, markdown: bool = False) -> str:
    """Per mode and concurrency: each layout's requests/s, their ratio, CPU per request
    (summed over the server's processes), everything else's CPU per request and how busy the
    machine was (one instance / two), latency, and the two workers' split."""
    return render_table(_COLUMNS, rows, group=lambda r: r.mode, markdown=markdown)


def instances_checks(rows: Sequence[InstancesRow]) -> list[Check]:
    """Two instances' requests/s at least :data:`MIN_SCALING` times one's, per row."""
    return [
        Check(
            name=f"{r.mode} c={r.concurrency}: two instances' requests/s >= {MIN_SCALING}x one's",
            passed=r.scaling >= MIN_SCALING,
            detail=f"{r.scaling:.2f}x ({r.two.requests_per_s:.0f} vs {r.one.requests_per_s:.0f} "
            f"req/s; CPU ms/request {_opt(r.two.cpu_ms_per_request, '.3f')} vs "
            f"{_opt(r.one.cpu_ms_per_request, '.3f')})",
        )
        for r in rows
    ]


def instances_json(result: InstancesResult) -> dict[str, Any]:
    """The rows as JSON-ready dicts (times in ms), with the database and the machine."""
    return {
        "database": result.database,
        "machine": result.machine,
        "rows": [
            {
                "mode": r.mode,
                "concurrency": r.concurrency,
                "repeats": min(r.one.repeats, r.two.repeats),
                "one_requests_per_s": r.one.requests_per_s,
                "two_requests_per_s": r.two.requests_per_s,
                "scaling": r.scaling,
                "one_cpu_ms_per_request": r.one.cpu_ms_per_request,
                "two_cpu_ms_per_request": r.two.cpu_ms_per_request,
                "one_latency_p50_ms": r.one.latency_p50_ms,
                "one_latency_p99_ms": r.one.latency_p99_ms,
                "two_latency_p50_ms": r.two.latency_p50_ms,
                "two_latency_p99_ms": r.two.latency_p99_ms,
                "two_busiest_process_cpu_share": r.two_busiest_share,
                "one_machine_busy_cpus": r.one_machine_busy,
                "two_machine_busy_cpus": r.two_machine_busy,
                "one_other_cpu_ms_per_request": r.one_other_cpu_ms,
                "two_other_cpu_ms_per_request": r.two_other_cpu_ms,
                "one_loadgen_busy": r.one.loadgen_busy,
                "two_loadgen_busy": r.two.loadgen_busy,
            }
            for r in instances_rows(result.runs)
        ],
    }
