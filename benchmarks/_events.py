"""CPU per streamed event on long streams: whether the library's cost per event stays flat.

The library reads one streamed response at a time (concurrency 1) from a fake upstream whose
answer has ``deltas`` words (``--tokens``; every event its own write, as for every measurement),
for a few lengths — by default ~1k, 4k and 16k events. Each length runs in a child process of
its own (``python -m benchmarks._events UPSTREAM_URL REPEATS``; a fresh heap, pinned like the
library's children: it inherits the suite's pinning to the measuring CPU): one gateway
(``_targets.open_sluicegate``, recording in a SQLite file), one unmeasured stream as a warm-up,
then ``repeats`` streams, each timed alone — the child's ``time.process_time()`` around reading
every event of one response — and printed as one JSON line. **CPU µs per event** is that CPU
over the events read. The per-response work (the request, the store's commit) is spread over the
events, so a flat figure from 1k to 16k events says the per-event work is linear and nothing
grows with the stream's length.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ._report import render_table
from ._targets import open_sluicegate
from ._upstream import BenchmarkError, run_fake_upstream

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "EventCost",
    "EventCostRun",
    "event_cost_json",
    "event_cost_table",
    "measure_event_cost",
    "summarize_event_cost",
]

_ROOT: Final = Path(__file__).resolve().parent.parent
#: A 16k-event stream takes well under a second; this only catches a child that hangs.
_TIMEOUT: Final = 600.0


@attrs.frozen(kw_only=True)
class EventCostRun:
    """One response streamed and read to its end."""

    #: The upstream's answer length (text deltas).
    deltas: int
    events: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6


@attrs.frozen(kw_only=True)
class EventCost:
    """One stream length, each figure the median over its repeats."""

    deltas: int
    events: int
    repeats: int
    cpu_us_per_event: float
    #: The lowest and highest CPU per event over the repeats.
    cpu_us_min: float
    cpu_us_max: float
    cpu_ms_per_stream: float
    events_per_s: float


def summarize_event_cost(runs: Sequence[EventCostRun]) -> list[EventCost]:
    """Group by length (ascending) and take medians."""
    by_length: dict[int, list[EventCostRun]] = {}
    for run in runs:
        by_length.setdefault(run.deltas, []).append(run)
    return [
        EventCost(
            deltas=deltas,
            events=group[0].events,
            repeats=len(group),
            cpu_us_per_event=statistics.median(r.cpu_us_per_event for r in group),
            cpu_us_min=min(r.cpu_us_per_event for r in group),
            cpu_us_max=max(r.cpu_us_per_event for r in group),
            cpu_ms_per_stream=statistics.median(r.cpu_s for r in group) * 1e3,
            events_per_s=statistics.median(r.events / r.wall_s for r in group),
        )
        for deltas, group in sorted(by_length.items())
    ]


def measure_event_cost(
    lengths: Sequence[int],
    *,
    repeats: int,
    cpu: int | None,
    on_result: Callable[[EventCost], None] | None = None,
) -> list[EventCostRun]:
    """For each length in ``lengths`` (deltas per answer): a fake upstream answering that long
    (pinned to ``cpu``) and a child streaming ``repeats`` responses from it (see the module
    docstring). Calls ``on_result`` with each length's summary as it is measured.

    Raises:
        BenchmarkError: the upstream or a child failed (with the tail of its stderr).
    """
    runs: list[EventCostRun] = []
    for deltas in lengths:
        with run_fake_upstream(tokens=deltas, cpu=cpu) as upstream:
            argv = [sys.executable, "-m", "benchmarks._events", upstream.base_url, str(repeats)]
            try:
                done = subprocess.run(
                    argv, cwd=_ROOT, capture_output=True, timeout=_TIMEOUT, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise BenchmarkError(f"{deltas}-delta streams took over {_TIMEOUT} s") from exc
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace")[-3000:]
            raise BenchmarkError(f"the long-stream child failed ({done.returncode}): {tail}")
        here = [_parse(line, deltas) for line in done.stdout.decode().splitlines() if line]
        if len(here) != repeats:
            raise BenchmarkError(f"{len(here)} of {repeats} long streams reported")
        runs += here
        if on_result is not None:
            on_result(summarize_event_cost(here)[0])
    return runs


def _parse(line: str, deltas: int) -> EventCostRun:
    try:
        data: Any = json.loads(line)
        return EventCostRun(
            deltas=deltas,
            events=int(data["events"]),
            cpu_s=float(data["cpu_s"]),
            wall_s=float(data["wall_s"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchmarkError(f"not a long-stream run ({exc!r}): {line[:500]!r}") from exc


def _spread(cost: EventCost) -> str:
    """Half the range over the repeats, relative to the median (as ``_report``)."""
    if cost.repeats < 2:
        return "-"
    return f"±{(cost.cpu_us_max - cost.cpu_us_min) / 2 / cost.cpu_us_per_event * 100:.0f}%"


def event_cost_table(costs: Sequence[EventCost], *, markdown: bool = False) -> str:
    """One row per length; ``x shortest`` is CPU per event over the shortest stream's (1.00
    everywhere: linear)."""
    shortest = costs[0].cpu_us_per_event if costs else 0.0
    columns: list[tuple[str, Callable[[EventCost], str]]] = [
        ("deltas", lambda c: str(c.deltas)),
        ("events", lambda c: str(c.events)),
        ("repeats", lambda c: str(c.repeats)),
        ("CPU ms/stream", lambda c: f"{c.cpu_ms_per_stream:.1f}"),
        ("CPU us/event", lambda c: f"{c.cpu_us_per_event:.2f}"),
        ("spread", _spread),
        ("x shortest", lambda c: f"{c.cpu_us_per_event / shortest:.2f}" if shortest else "-"),
        ("events/s", lambda c: f"{c.events_per_s:.0f}"),
    ]
    return render_table(columns, costs, group=lambda _: 0, markdown=markdown)


def event_cost_json(costs: Sequence[EventCost]) -> list[dict[str, Any]]:
    return [attrs.asdict(c) for c in costs]


# --- the child -------------------------------------------------------------------------------


async def _stream(url: str, repeats: int) -> None:
    async with open_sluicegate(url) as target:
        await target.stream()  # the warm-up: first use loads and allocates what later reuse
        for _ in range(repeats):
            # Garbage of the warm-up or the last repeat is collected now, not billed to this.
            gc.collect()
            wall = time.perf_counter()
            cpu = time.process_time()
            answer = await target.stream()
            cpu = time.process_time() - cpu
            wall = time.perf_counter() - wall
            line = {"events": answer.events, "cpu_s": cpu, "wall_s": wall}
            print(json.dumps(line), flush=True)


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks._events UPSTREAM_URL REPEATS", file=sys.stderr)
        return 2
    trio.run(_stream, argv[0], int(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
