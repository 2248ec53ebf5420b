"""The fake upstream as a subprocess on its own CPU, and CPU pinning for the measuring process.

The fake runs in another process so its CPU never shows up in ``time.process_time()`` of the
measuring process, and on another core so the two do not take turns on one. It writes a stream
as a real provider does (``--write-per-event``: the head, then every SSE event as a chunk in a
write of its own), for every measurement: a stream that arrives in one buffer would spare every
client the per-read work it does against a real provider.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from functools import partial
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "BenchmarkError",
    "CpuPlan",
    "FakeUpstreamProcess",
    "machine_cpu_seconds",
    "pin_current_process",
    "plan_cpus",
    "process_tree_cpu",
    "run_fake_upstream",
    "stream_events",
    "tree_cpu_seconds",
    "upstream_shape",
]

_LISTENING = re.compile(rb"listening on (http://\S+)")
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0


class BenchmarkError(Exception):
    """The benchmark could not run (as opposed to: it ran and a target was missed)."""


@attrs.frozen(kw_only=True)
class CpuPlan:
    """Which CPU each side gets; None where pinning is unavailable (then both float)."""

    measure: int | None
    upstream: int | None
    note: str


def plan_cpus() -> CpuPlan:
    """CPU 0 for the measuring process and CPU 1 for the upstream, or the first two allowed."""
    if not hasattr(os, "sched_getaffinity"):
        return CpuPlan(measure=None, upstream=None, note="no sched_setaffinity: not pinned")
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return CpuPlan(
            measure=None, upstream=None, note=f"only CPU {allowed} available: not pinned"
        )
    return CpuPlan(
        measure=allowed[0],
        upstream=allowed[1],
        note=f"measuring process on CPU {allowed[0]}, upstream on CPU {allowed[1]}",
    )


def pin_current_process(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _ticks(pid: int) -> tuple[int, int, int] | None:
    """A process's parent, its own user + system CPU and its reaped children's, in clock ticks
    (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the parenthesised command name: ppid is field 4, utime, stime, cutime and
    # cstime fields 14 to 17.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def process_tree_cpu(root: int) -> dict[int, float] | None:
    """User + system CPU so far of ``root`` and of every live process below it, each with what
    its reaped children used (a PostgreSQL backend that ended, a worker that exited), by pid,
    from ``/proc``; None without ``/proc`` or when ``root`` is gone."""
    found: dict[int, tuple[int, int, int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (ticks := _ticks(int(entry.name))) is not None:
                found[int(entry.name)] = ticks
    if root not in found:
        return None
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in found.items():
        children.setdefault(parent, []).append(pid)
    tick = os.sysconf("SC_CLK_TCK")
    tree: dict[int, float] = {}
    below = [root]
    while below:
        pid = below.pop()
        _, own, reaped = found[pid]
        tree[pid] = (own + reaped) / tick
        below += children.get(pid, [])
    return tree


def machine_cpu_seconds() -> float | None:
    """The CPU time every CPU of the machine has been busy so far, in seconds: user, nice,
    system, irq and softirq time, every process's (not the time a hypervisor gave to other
    guests); from ``/proc/stat``, None without it."""
    try:
        with open("/proc/stat", "rb") as f:
            line = f.readline()
    except OSError:
        return None
    # "cpu  user nice system idle iowait irq softirq steal ...", in clock ticks.
    user, nice, system, _, _, irq, softirq = (int(v) for v in line.split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float | None:
    """The CPU so far of ``root`` and everything below it (:func:`process_tree_cpu`, summed)."""
    tree = process_tree_cpu(root)
    return None if tree is None else sum(tree.values())


@attrs.frozen(kw_only=True)
class FakeUpstreamProcess:
    base_url: str
    pid: int

    def cpu_seconds(self) -> float | None:
        """The upstream's user + system CPU so far, from /proc (None where there is no /proc)."""
        ticks = _ticks(self.pid)
        return None if ticks is None else ticks[1] / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def run_fake_upstream(
    *, tokens: int, cpu: int | None, token_delay: float = 0.0
) -> Iterator[FakeUpstreamProcess]:
    """Start ``python -m sluicegate.fake --write-per-event`` (pinned to ``cpu``), yield once it
    listens, and terminate it on the way out, whatever happened in between. ``token_delay``
    paces its streamed words (the memory scenarios need slow streams)."""
    argv = [
        sys.executable,
        "-m",
        "sluicegate.fake",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--tokens",
        str(tokens),
        "--token-delay",
        repr(token_delay),
        "--write-per-event",
    ]
    preexec: Callable[[], None] | None = None
    if cpu is not None:
        taskset = shutil.which("taskset")
        if taskset is not None:
            argv = [taskset, "-c", str(cpu), *argv]
        else:
            preexec = partial(os.sched_setaffinity, 0, {cpu})
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, preexec_fn=preexec
    )
    try:
        base_url = _wait_listening(proc)
        # taskset execs the interpreter, so the pid is the fake's own.
        yield FakeUpstreamProcess(base_url=base_url, pid=proc.pid)
    finally:
        _stop(proc)


def _wait_listening(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + _START_TIMEOUT
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchmarkError(f"the fake upstream did not listen within {_START_TIMEOUT} s")
            if not selector.select(left):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise BenchmarkError(
                    f"the fake upstream exited (status {proc.wait()}) before listening"
                )
            buffer += chunk
    match = _LISTENING.match(buffer)
    if match is None:
        raise BenchmarkError(f"unexpected first line from the fake upstream: {buffer!r}")
    return match.group(1).decode()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def stream_events(tokens: int) -> int:
    """The events of one streamed answer of ``tokens`` deltas from the fake: a plain message,
    sequence A around its deltas (the Responses streaming reference)."""
    # Imported here, not above: the floor's child imports this module and must not load
    # sluicegate (its RSS is the floor's alone; see _targets.py).
    from sluicegate.fake._answers import build_response, sse_script

    final = build_response(
        {"model": "m", "input": "hello"},
        response_id="resp_shape",
        message_id="msg_shape",
        created_at=0,
        completed_at=0,
        tokens=tokens,
    )
    return len(sse_script(final, plain=True).frames)


def upstream_shape(tokens: int) -> str:
    """The upstream's shape, the line printed and stored next to the figures."""
    return (
        "upstream: fake (python -m sluicegate.fake --write-per-event), each SSE event its own "
        f"write, {tokens} deltas/{stream_events(tokens)} events per stream"
    )
