"""The library targets (the floors and sluicegate), each measured in a child process of its own.

Why a child per target: a process's memory cannot be split between two targets sharing it, so
with both in the suite's own process no RSS figure per target was possible. Alone in its process,
a target's RSS after a case (and the peak so far) is its own: the interpreter, what it imports
(the floor's child never imports sluicegate, see ``_targets.py``) and what it holds. CPU per
request is the child's ``time.process_time()`` over the measured requests. The child inherits
the parent's CPU affinity (pinned to the measuring CPU), where the parent only waits for its
lines.

The protocol: the parent runs ``python -m benchmarks._library <target> <upstream_url>
<upstream_pid> <plan as JSON>``; the child opens the one target, runs every case of the plan
(:meth:`LibraryPlan.cases`: concurrency ascending, create then stream) with
:func:`~benchmarks._runner.run_case`, and prints one JSON line per case as soon as it is
measured (:meth:`~benchmarks._runner.CaseRun.to_json`, with the child's RSS after the case and
its peak). The parent reads the lines as they come (its progress advances per case), checks
each is the case it expects, and fails with the child's stderr if the child does. Two targets
run on asyncio, each in a child with the same arguments and the same lines, driven by
``_asyncio_driver.py``: the aiohttp floor (``python -m benchmarks._aiohttp``, a child that never
imports trio, httpx or sluicegate) and the library's asyncio face (``python -m
benchmarks._asyncio_face``: the ``sluicegate`` target's gateway under asyncio, trio its guest).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import attrs
import trio

from ._cases import LibraryPlan as LibraryPlan
from ._report import AIOHTTP_FLOOR, FLOOR, SLUICEGATE, SLUICEGATE_ASYNCIO, SLUICEGATE_STATELESS
from ._runner import Case, CaseRun, process_memory, run_case
from ._targets import open_floor, open_sluicegate
from ._upstream import BenchmarkError, FakeUpstreamProcess

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    from ._targets import Target

__all__ = [
    "CHILD_MODULES",
    "LIBRARY_TARGETS",
    "LINE_TIMEOUT",
    "LibraryPlan",
    "case_line",
    "measure_library",
    "parse_line",
]

#: The targets a child can run, by name.
LIBRARY_TARGETS: Final[Mapping[str, Callable[[str], AbstractAsyncContextManager[Target]]]] = {
    FLOOR: open_floor,
    SLUICEGATE: open_sluicegate,
    SLUICEGATE_STATELESS: partial(open_sluicegate, stateless=True),
}
#: The module each target's child runs, ``python -m <module> <target> ...``: this one for the
#: trio targets, ``_aiohttp.py`` and ``_asyncio_face.py`` for the asyncio ones.
CHILD_MODULES: Final[Mapping[str, str]] = {
    FLOOR: "benchmarks._library",
    AIOHTTP_FLOOR: "benchmarks._aiohttp",
    SLUICEGATE: "benchmarks._library",
    SLUICEGATE_ASYNCIO: "benchmarks._asyncio_face",
    SLUICEGATE_STATELESS: "benchmarks._library",
}
#: The longest a child may take to print its next case (its start and warm-up included): far
#: more than any case takes, so only a child that hangs reaches it.
LINE_TIMEOUT: Final = 300.0
#: ``python -m benchmarks._library`` must find this package whatever the caller's directory.
_ROOT: Final = Path(__file__).resolve().parent.parent
_STDERR_TAIL: Final = 3000


def case_line(run: CaseRun) -> str:
    """The line a child prints for one measured case (JSON, no newline). The standard library's
    json, not orjson: it keeps a NaN percentile (no sample) a NaN rather than null."""
    return json.dumps(run.to_json())


def parse_line(line: str, expected: Case, requests: int) -> CaseRun:
    """The run a child's line describes, which must be the case the parent expects next.

    Raises:
        BenchmarkError: the line is not such a run, or not of that case.
    """
    try:
        run = CaseRun.from_json(json.loads(line))
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchmarkError(f"not a case run ({exc!r}): {line[:500]!r}") from exc
    if run.case != expected or run.requests != requests:
        raise BenchmarkError(
            f"expected {expected} with {requests} requests, got {run.case} with {run.requests}"
        )
    return run


# --- the parent's side -----------------------------------------------------------------------


def measure_library(
    target: str,
    *,
    upstream: FakeUpstreamProcess,
    plan: LibraryPlan,
    on_run: Callable[[CaseRun], None] | None = None,
    line_timeout: float = LINE_TIMEOUT,
) -> list[CaseRun]:
    """Run ``target``'s cases in a child process (see the module docstring), calling ``on_run``
    with each run as its line arrives. Blocks until the child exits.

    Raises:
        BenchmarkError: the child failed, hung (no line within ``line_timeout``), or printed
            something other than the expected cases; with the tail of its stderr.
    """
    if target not in CHILD_MODULES:
        raise ValueError(f"unknown library target {target!r}")
    argv = [sys.executable, "-m", CHILD_MODULES[target], target, upstream.base_url]
    argv += [str(upstream.pid), plan.to_json()]
    expected = plan.cases(target)
    runs: list[CaseRun] = []
    # stderr to a file, not a pipe: it is read only on failure, and a full pipe would stall
    # the child.
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(
            argv, cwd=_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
        try:
            for line in _lines(child, line_timeout):
                if len(runs) == len(expected):
                    raise BenchmarkError(f"a line after the last case: {line[:500]!r}")
                run = parse_line(line, *expected[len(runs)])
                runs.append(run)
                if on_run is not None:
                    on_run(run)
            status = child.wait(line_timeout)
        except (BenchmarkError, subprocess.TimeoutExpired) as exc:
            raise BenchmarkError(
                f"the {target} child: {exc}; its stderr ends:\n{_tail(errors)}"
            ) from exc
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
        if status != 0:
            raise BenchmarkError(
                f"the {target} child failed (status {status}); its stderr ends:\n{_tail(errors)}"
            )
        if len(runs) != len(expected):
            raise BenchmarkError(
                f"the {target} child exited after {len(runs)} of {len(expected)} cases; its "
                f"stderr ends:\n{_tail(errors)}"
            )
    return runs


def _lines(child: subprocess.Popen[bytes], timeout: float) -> Iterator[str]:
    """The child's stdout line by line, each as soon as it is complete.

    Raises:
        BenchmarkError: no line within ``timeout`` seconds.
    """
    assert child.stdout is not None
    fd = child.stdout.fileno()
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if not selector.select(timeout):
                raise BenchmarkError(f"no line within {timeout:.0f} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *complete, buffer = (buffer + chunk).split(b"\n")
            for line in complete:
                yield line.decode("utf-8", "replace")
    if buffer.strip():
        yield buffer.decode("utf-8", "replace")


def _tail(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read()[-_STDERR_TAIL:].decode("utf-8", "replace") or "(nothing)"


# --- the child's side ------------------------------------------------------------------------


async def _drive(target: str, upstream: FakeUpstreamProcess, plan: LibraryPlan) -> None:
    async with LIBRARY_TARGETS[target](upstream.base_url) as opened:
        for case, requests in plan.cases(target):
            run = await run_case(
                opened, case, requests=requests, warmup_s=plan.warmup_s, upstream=upstream
            )
            rss, peak = process_memory()
            # Flushed now: the parent's progress advances per case.
            print(case_line(attrs.evolve(run, rss_bytes=rss, peak_rss_bytes=peak)), flush=True)


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 4 or argv[0] not in LIBRARY_TARGETS:
        names = "|".join(LIBRARY_TARGETS)
        print(
            f"usage: python -m benchmarks._library {{{names}}} UPSTREAM_URL UPSTREAM_PID PLAN",
            file=sys.stderr,
        )
        return 2
    target, url, pid, plan = argv
    trio.run(
        _drive, target, FakeUpstreamProcess(base_url=url, pid=int(pid)), LibraryPlan.from_json(plan)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
