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
    "pin_current_process",
    "plan_cpus",
    "run_fake_upstream",
    "stream_events",
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


@attrs.frozen(kw_only=True)
class FakeUpstreamProcess:
    base_url: str
    pid: int

    def cpu_seconds(self) -> float | None:
        """The upstream's user + system CPU so far, from /proc (None where there is no /proc)."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return None
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")


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
