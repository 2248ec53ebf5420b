"""The HTTP proxy under load, against the upstream hit directly by the same load generator.

What is measured
----------------
One ``sluicegate serve`` process (one worker) routes the model group ``bench`` to the fake
upstream, recording every response in a SQLite file as a deployed proxy does. **wrk** (C, one
thread, keep-alive connections) drives it with ``POST /v1/responses`` — ``{"model": "bench",
"input": "hello"}``, plus ``"stream": true`` for streaming — and, as the baseline, drives the
fake upstream's own ``POST /v1/responses`` with the very same script (model ``bench-model``, the
upstream's key). For each (mode, concurrency, target) a warm-up run that is not measured, then
one wrk run of ``seconds``; per run we record:

- requests/s and the requests completed (wrk's count);
- latency p50 and p99 (wrk's ``--latency`` distribution: the time from writing a request to
  reading its last byte, so for a stream the whole stream, not the first event);
- for the proxy only: the server process's CPU (user + system, all threads, from ``/proc``)
  over the run ÷ requests — **CPU ms per request** — and its inverse, **requests per
  CPU-second** (requests/s per core: what one worker serves once its core is saturated; with
  LiteLLM's proxy measured too, the ratio of sluicegate's to LiteLLM's), and its RSS after the
  run (and once, idle, before any load);
- wrk's own CPU ÷ the run's duration, to show the generator is not what limits the numbers.

Each case runs ``repeats`` times, interleaved with the other cases (the two targets alternate
which goes first), and is reported as the median over repeats, with the overhead the proxy adds
to the direct upstream's p50 and p99.

Why the comparison is fair
--------------------------
Both runs use the same generator, the same Lua script (only the model name and the key differ),
the same connection count and duration, and the same pinning: wrk runs on the upstream's CPU
in both, and the proxy has the other CPU to itself. The difference between the two is therefore
what the proxy adds — its HTTP server, routing, auth, ID encoding, accounting, recording and
its own HTTP client hop — and nothing the generator does differently. The proxy's CPU is read
from its own process, so neither wrk nor the upstream is billed to it.

How to read the overhead: wrk is a closed loop (each connection sends its next request when the
last one is answered). Below saturation (c=1 especially) the p50 difference is the latency the
proxy adds to one request; once the proxy's core is saturated, latency is about concurrency ÷
throughput, and the difference mostly measures queueing in front of the slower side — the
req/s column says which regime a row is in.

Time to first event (:func:`measure_first_event`): wrk cannot see inside a response, so a probe
of our own sends streamed requests one at a time and times each one's first ``data:`` line; at
concurrency c it is one of c concurrent streams, wrk (the streaming script, c - 1 connections,
pinned as above) holding the others for as long as the probe runs. The same against the
upstream directly gives what the proxy adds to the first event, per concurrency.

Caveats: the proxy is called with the master key, the cheapest auth path (a virtual key adds a
key lookup and rate/budget accounting). The CPU a run is billed includes the requests wrk leaves
in flight when it stops (at most one per connection, cancelled when wrk closes them), so CPU per
request is slightly pessimistic at high concurrency and short runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import attrs
import httpx
import yaml

from ._report import render_table
from ._runner import Case, percentile
from ._targets import (
    API_KEY,
    GATEWAY_MODEL,
    INPUT,
    POOL_KEEPALIVE_EXPIRY,
    POOL_SIZE,
    UPSTREAM_MODEL,
    bench_model,
)
from ._upstream import BenchmarkError, machine_cpu_seconds, process_tree_cpu, tree_cpu_seconds

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from ._upstream import CpuPlan

__all__ = [
    "DEFAULT_SECONDS",
    "DEFAULT_WARMUP_S",
    "DIRECT",
    "MASTER_KEY",
    "PROXY",
    "FirstEvent",
    "FirstEventRow",
    "ProxyRun",
    "ProxyServerProcess",
    "ProxySummary",
    "WrkResult",
    "check_wrk",
    "first_event_json",
    "first_event_rows",
    "first_event_table",
    "measure_first_event",
    "measure_proxy",
    "open_litellm_proxy",
    "open_proxy_server",
    "parse_wrk_output",
    "proxy_json",
    "proxy_table",
    "summarize_proxy",
    "wrk_script",
]

PROXY: Final = "proxy"
DIRECT: Final = "direct"
#: LiteLLM's proxy (``litellm --config``), when the compare extra is installed.
LITELLM_PROXY: Final = "litellm-proxy"
MASTER_KEY: Final = "sk-bench-master"
#: The response-ID secret of proxies on PostgreSQL (``open_proxy_server(database_url=...)``):
#: every instance on one database must have the same.
INSTANCES_SECRET: Final = "sluicegate-bench-instances"
#: The model group on the long upstream (``open_proxy_server(long_upstream_url=...)``).
LONG_MODEL: Final = "bench-long"
#: Measured seconds per run (wrk takes whole seconds).
DEFAULT_SECONDS: Final = 5
#: Two keep-alive expiries, as the library runner's warm-up: the proxy's upstream pool settles
#: to what this load needs before the measured run (see ``_targets.POOL_KEEPALIVE_EXPIRY``).
DEFAULT_WARMUP_S: Final = 2 * POOL_KEEPALIVE_EXPIRY

_READY_TIMEOUT: Final = 60.0
_STOP_TIMEOUT: Final = 10.0
#: Far above any latency here: a wrk timeout is an error we want to see, not a truncation.
_WRK_TIMEOUT: Final = "30s"
#: The line the Lua script's ``done()`` prints.
_FAILED_PREFIX: Final = "sluicegate-bench failed:"
#: Bounds on waiting for the proxy to go quiet after a run (see ``_settle``).
_SETTLE_STEP: Final = 0.05
_SETTLE_MAX: Final = 2.0


# --- the proxy process -----------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class ProxyServerProcess:
    """A running ``sluicegate serve``: its base URL (``http://127.0.0.1:PORT``) and pid."""

    url: str
    pid: int
    #: The upstream's answer length this proxy is measured with (reporting only).
    tokens: int | None
    _process: subprocess.Popen[bytes]
    _log: Path

    @property
    def responses_url(self) -> str:
        return f"{self.url}/v1/responses"

    def cpu_seconds(self) -> float | None:
        """The server's user + system CPU so far, all threads of all its processes (with
        ``--workers N``, the workers are its children; None without /proc)."""
        return tree_cpu_seconds(self.pid)

    def cpu_by_process(self) -> dict[int, float] | None:
        """The CPU so far of each of the server's processes, by pid (None without /proc)."""
        return process_tree_cpu(self.pid)

    def rss_bytes(self) -> int | None:
        """The server's resident set size now (None without /proc)."""
        return _proc_rss_bytes(self.pid)

    def check_running(self) -> None:
        """Raises:
        BenchmarkError: the server has exited (with the tail of its output)."""
        status = self._process.poll()
        if status is not None:
            raise BenchmarkError(
                f"the proxy exited (status {status}); its output ends:\n{self.output_tail()}"
            )

    def output_tail(self, limit: int = 3000) -> str:
        """The last ``limit`` characters of the server's stdout + stderr."""
        try:
            data = self._log.read_bytes()
        except OSError:
            return "(no output)"
        return data[-limit:].decode("utf-8", "replace") or "(no output)"


def proxy_config(
    upstream_url: str,
    store_path: Path,
    *,
    long_upstream_url: str | None = None,
    max_connections: int = POOL_SIZE,
    database_url: str | None = None,
) -> dict[str, Any]:
    """The proxy's configuration: one model group on the upstream, pool limits like the
    library targets' (``_targets.py``), a SQLite store in ``store_path``; with
    ``long_upstream_url``, a second group ``bench-long`` on it (the memory scenarios); with
    ``database_url``, the PostgreSQL store there instead of SQLite, and the response-ID secret
    every instance on one database must share."""
    extra = []
    if long_upstream_url is not None:
        extra.append(bench_model(long_upstream_url, name=LONG_MODEL, deployment_id="bench-long-1"))
    general: dict[str, Any] = {
        "master_key": MASTER_KEY,
        "max_connections": max_connections,
        "max_keepalive_connections": max_connections,
        "keepalive_expiry": POOL_KEEPALIVE_EXPIRY,
    }
    if database_url is None:
        general["store"] = {"path": str(store_path)}
    else:
        general["database_url"] = database_url
        general["response_id_secret"] = INSTANCES_SECRET
    return {"model_list": [*extra, bench_model(upstream_url)], "general_settings": general}


@contextlib.contextmanager
def open_proxy_server(
    *,
    upstream_url: str,
    cpu: int | None,
    tokens: int | None = None,
    long_upstream_url: str | None = None,
    max_connections: int = POOL_SIZE,
    workers: int = 1,
    database_url: str | None = None,
) -> Iterator[ProxyServerProcess]:
    """Run ``python -m sluicegate serve`` (``workers`` worker processes, pinned to ``cpu``) on
    a loopback port it binds itself (port 0: no other process can take the port between its
    choice and its use) with a temporary config and store, yield it once every worker listens
    and ``GET /health/readiness`` answers 200, and stop it on the way out (SIGTERM, then SIGKILL
    after 10 s), whatever happened in between.

    Args:
        upstream_url: the upstream's base URL, ``/v1`` included (``FakeUpstreamProcess.base_url``).
        cpu: the CPU to pin the server to; None to leave it floating.
        tokens: the upstream's answer length, kept on the handle for reporting only.
        workers: ``--workers``; above 1 the workers are the server process's children.
        database_url: record on this PostgreSQL database instead of a SQLite file (each worker
            is then an instance of its own on it).

    Raises:
        BenchmarkError: the server exited or was not ready within 60 s (with its output's tail).
    """
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-proxy-") as scratch:
        root = Path(scratch)
        config_path = root / "proxy.yaml"
        config_path.write_text(
            yaml.safe_dump(
                proxy_config(
                    upstream_url,
                    root / "proxy.db",
                    long_upstream_url=long_upstream_url,
                    max_connections=max_connections,
                    database_url=database_url,
                ),
                sort_keys=False,
            ),
            encoding="utf-8",
        )
        argv = [
            sys.executable,
            "-m",
            "sluicegate",
            "serve",
            "--config",
            str(config_path),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            str(workers),
        ]
        with run_server(
            argv, cpu=cpu, port=None, log_path=root / "proxy.log", tokens=tokens, workers=workers
        ) as server:
            yield server


@contextlib.contextmanager
def open_litellm_proxy(upstream_url: str, *, cpu: int | None) -> Iterator[ProxyServerProcess]:
    """LiteLLM's proxy (``litellm --config``, one uvicorn worker, pinned to ``cpu``) with the
    same model group as ours on the same upstream and the same master key, so one wrk script
    drives both."""
    executable = Path(sys.executable).with_name("litellm")
    if not executable.exists():
        raise RuntimeError(f"LiteLLM's proxy command is not installed: {executable}")
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-litellm-") as scratch:
        root = Path(scratch)
        config = root / "litellm.yaml"
        config.write_text(
            json.dumps(
                {
                    "model_list": [bench_model(upstream_url)],
                    "general_settings": {"master_key": MASTER_KEY},
                }
            )
        )
        port = _free_port()
        argv = [
            str(executable),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        # The bundled price map: the benchmark machine reaches nothing but the fake upstream.
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        with run_server(argv, cpu=cpu, port=port, log_path=root / "litellm.log", env=env) as server:
            yield server


@contextlib.contextmanager
def run_server(
    argv: list[str],
    *,
    cpu: int | None,
    port: int | None,
    log_path: Path,
    tokens: int | None = None,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
) -> Iterator[ProxyServerProcess]:
    """Start a server process (pinned to ``cpu``) that listens on ``port`` (None: on the port
    it names in its log, hypercorn's ``Running on http://...`` line, which each of its
    ``workers`` writes once it listens), yield it once its ``/health/readiness`` answers 200,
    and stop it on the way out (our proxy; LiteLLM's)."""
    argv, preexec = _pinned(argv, cpu)
    # Output to a file, not a pipe: nobody reads it during the run, and a full pipe would
    # stall the server.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
            env=None if env is None else {**os.environ, **env},
        )
    try:
        # taskset execs the interpreter, and one worker serves in-process: the pid is the
        # server's own (with more, the workers' parent's).
        server = ProxyServerProcess(
            url=(
                f"http://127.0.0.1:{port}"
                if port is not None
                else _wait_bound(process, log_path, workers)
            ),
            pid=process.pid,
            tokens=tokens,
            process=process,
            log=log_path,
        )
        _wait_ready(server)
        yield server
    finally:
        _stop(process)


def _free_port() -> int:
    # Another process could take it before the server binds it; on a benchmark machine, no one.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pinned(argv: list[str], cpu: int | None) -> tuple[list[str], Callable[[], None] | None]:
    """``argv`` run on ``cpu`` (taskset where there is one, as ``_upstream`` does)."""
    if cpu is None:
        return argv, None
    taskset = shutil.which("taskset")
    if taskset is not None:
        return [taskset, "-c", str(cpu), *argv], None
    return argv, partial(os.sched_setaffinity, 0, {cpu})


#: What hypercorn logs once a socket is bound and listening (with the port it was given).
_RUNNING_ON: Final = re.compile(rb"Running on (http://\S+) ")


def _wait_bound(process: subprocess.Popen[bytes], log_path: Path, workers: int = 1) -> str:
    """The URL a server started on port 0 listens on, from its own log lines (read as they are
    written: the log is a file, polled), once each of its ``workers`` has written one: a worker
    writes it after its app's startup, so then every worker serves."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        exited = process.poll()
        try:
            bound = _RUNNING_ON.findall(log_path.read_bytes())
        except OSError:
            bound = []
        if len(bound) >= workers:
            return bytes(bound[0]).decode()
        if exited is not None or time.monotonic() > deadline:
            what = (
                f"exited (status {exited}) before listening"
                if exited is not None
                else f"was not listening within {_READY_TIMEOUT:.0f} s"
            )
            tail = log_path.read_bytes()[-3000:].decode("utf-8", "replace") or "(no output)"
            raise BenchmarkError(f"the proxy {what}; its output ends:\n{tail}")
        time.sleep(0.02)  # polling the log file; a server starts in about a second


def _wait_ready(server: ProxyServerProcess) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    url = f"{server.url}/health/readiness"
    while True:
        server.check_running()
        try:
            if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"the proxy was not ready within {_READY_TIMEOUT:.0f} s; its output ends:\n"
                f"{server.output_tail()}"
            )
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _proc_rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # always in kB
    except OSError:
        return None
    return None


# --- wrk -------------------------------------------------------------------------------------


def wrk_script(*, model: str, api_key: str, stream: bool) -> str:
    """The Lua script for one target and mode: POST the request body with the key, and count
    every answer that is not a 200 carrying a completed response (for a stream: its
    ``response.completed`` event), printed by ``done()`` as ``sluicegate-bench failed: N``."""
    body: dict[str, Any] = {"model": model, "input": INPUT}
    if stream:
        body["stream"] = True
    # Loose on purpose: servers differ in JSON spacing ('"type": "x"' or '"type":"x"').
    marker = "response.completed" if stream else '"completed"'
    # Lua long brackets take the JSON verbatim; neither text can contain "]==]".
    return f"""\
wrk.method = "POST"
wrk.body = [==[{json.dumps(body)}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = [==[Bearer {api_key}]==]

local marker = [==[{marker}]==]
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

failed = 0

function response(status, headers, body)
  if status ~= 200 or not string.find(body, marker, 1, true) then
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("failed")
  end
  io.write(string.format("{_FAILED_PREFIX} %d\\n", total))
end
"""


@attrs.frozen(kw_only=True)
class WrkResult:
    """What one wrk run printed. Latencies in seconds."""

    requests: int
    duration_s: float
    requests_per_s: float
    latency_p50_s: float
    latency_p75_s: float
    latency_p90_s: float
    latency_p99_s: float
    #: wrk's ``Non-2xx or 3xx responses`` (it counts status >= 400).
    non_2xx: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    #: Answers our Lua script rejected (not 200, or not a completed response); None when the
    #: output has no such line (a script without our ``done()``).
    script_failed: int | None

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


#: wrk's time units (its units.c: us, ms, s, then m and h for long ones).
_TIME_UNITS: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME: Final = r"(\d+(?:\.\d+)?)(us|ms|s|m|h)"
_REQUESTS_RE: Final = re.compile(rf"^\s*(\d+) requests in {_TIME},", re.MULTILINE)
_RPS_RE: Final = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)\s*$", re.MULTILINE)
_PERCENTILE_RE: Final = re.compile(rf"^\s+(50|75|90|99)%\s+{_TIME}\s*$", re.MULTILINE)
_NON_2XX_RE: Final = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)\s*$", re.MULTILINE)
_SOCKET_RE: Final = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.MULTILINE
)
_FAILED_RE: Final = re.compile(rf"^{re.escape(_FAILED_PREFIX)}\s+(\d+)\s*$", re.MULTILINE)


def _seconds(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS[unit]


def parse_wrk_output(text: str) -> WrkResult:
    """Parse what ``wrk --latency`` printed (with our script's ``done()`` line, if any).

    Raises:
        BenchmarkError: a line every run prints (the request count, requests/s, the latency
            distribution) is missing.
    """
    requests = _REQUESTS_RE.search(text)
    rps = _RPS_RE.search(text)
    block = text.partition("Latency Distribution")[2]
    percentiles = {int(m[1]): _seconds(m[2], m[3]) for m in _PERCENTILE_RE.finditer(block)}
    if requests is None or rps is None or sorted(percentiles) != [50, 75, 90, 99]:
        raise BenchmarkError(f"unexpected wrk output (was --latency given?):\n{text}")
    non_2xx = _NON_2XX_RE.search(text)
    sockets = _SOCKET_RE.search(text)
    connect, read, write, timeout = (int(n) for n in sockets.groups()) if sockets else (0,) * 4
    failed = _FAILED_RE.search(text)
    return WrkResult(
        requests=int(requests[1]),
        duration_s=_seconds(requests[2], requests[3]),
        requests_per_s=float(rps[1]),
        latency_p50_s=percentiles[50],
        latency_p75_s=percentiles[75],
        latency_p90_s=percentiles[90],
        latency_p99_s=percentiles[99],
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
        script_failed=int(failed[1]) if failed else None,
    )


def check_wrk(result: WrkResult, what: str) -> None:
    """Fail a run that did not measure what it claims: any failed answer or socket error, no
    request at all, or a script that did not report.

    Raises:
        BenchmarkError: naming ``what`` and the failure.
    """
    problems = []
    if result.requests == 0:
        problems.append("no request completed")
    if result.non_2xx:
        problems.append(f"{result.non_2xx} non-2xx answers")
    if result.script_failed is None:
        problems.append("the Lua script did not report")
    elif result.script_failed:
        problems.append(f"{result.script_failed} answers not 200 with a completed response")
    if result.socket_errors:
        problems.append(
            f"socket errors: connect {result.connect_errors}, read {result.read_errors}, "
            f"write {result.write_errors}, timeout {result.timeouts}"
        )
    if problems:
        raise BenchmarkError(f"wrk against {what}: " + "; ".join(problems))


def _wrk_seconds(seconds: float) -> int:
    # wrk's -d takes whole seconds ("0.5s" is a usage error).
    return max(1, math.ceil(seconds))


def _wrk_argv(
    *, url: str, script: Path, connections: int, seconds: int, cpu: int | None
) -> tuple[list[str], Callable[[], None] | None]:
    """wrk's command line (one thread, ``connections`` connections, the Lua ``script``), pinned
    to ``cpu``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchmarkError("wrk is not installed (apt-get install wrk)")
    return _pinned(
        [
            wrk,
            "--latency",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            _WRK_TIMEOUT,
            "-s",
            str(script),
            url,
        ],
        cpu,
    )


def _run_wrk(
    *, url: str, script: Path, concurrency: int, seconds: int, cpu: int | None
) -> tuple[str, float]:
    """wrk's stdout and its CPU seconds (from the reaped child's rusage)."""
    argv, preexec = _wrk_argv(
        url=url, script=script, connections=concurrency, seconds=seconds, cpu=cpu
    )
    # RUSAGE_CHILDREN grows when a child is reaped; wrk is the only one reaped in between.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=seconds + 60,
            preexec_fn=preexec,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"wrk against {url} did not finish in {seconds + 60} s") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stdout = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", "replace")
        raise BenchmarkError(
            f"wrk against {url} exited with status {done.returncode}:\n{stderr}{stdout}"
        )
    return stdout, cpu_s


# --- the measurement -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ProxyRun:
    """One measured wrk run against one target (``PROXY`` or ``DIRECT``)."""

    case: Case
    repeat: int
    #: The upstream's answer length (words per answer).
    tokens: int
    requests: int
    #: The run's length as wrk measured it.
    duration_s: float
    requests_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    #: The proxy process's CPU over the run (None for the direct target, or without /proc).
    server_cpu_s: float | None
    #: The proxy's RSS after the run, and before any load (None for the direct target).
    rss_bytes: int | None
    idle_rss_bytes: int | None
    #: wrk's own CPU over the run.
    loadgen_cpu_s: float
    #: The CPU each of the server's processes used over the run, most first, those that used
    #: some (with ``--workers N``: how evenly the kernel spread the connections); None where
    #: ``server_cpu_s`` is.
    server_cpu_split: tuple[float, ...] | None = None
    #: How many CPUs' worth the whole machine was busy over the run, every process's work
    #: (wrk's, the upstream's, a database's, the server's; from ``/proc/stat``); None without it.
    machine_busy: float | None = None

    @property
    def cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_s is None:
            return None
        return self.server_cpu_s / self.requests * 1e3

    @property
    def requests_per_cpu_s(self) -> float | None:
        """Requests served per CPU-second of the proxy process (None for the direct target,
        without /proc, or when it used no measurable CPU)."""
        if not self.server_cpu_s:
            return None
        return self.requests / self.server_cpu_s

    @property
    def loadgen_busy(self) -> float:
        """wrk's CPU ÷ wall time (1.0 = one core busy)."""
        return self.loadgen_cpu_s / self.duration_s


def _settle(server: ProxyServerProcess) -> None:
    """Wait (bounded) until the proxy's CPU stops moving: the requests wrk left in flight are
    cancelled and the store has committed, so that work is billed to the run that caused it."""
    deadline = time.monotonic() + _SETTLE_MAX
    last = server.cpu_seconds()
    while last is not None and time.monotonic() < deadline:
        time.sleep(_SETTLE_STEP)
        now = server.cpu_seconds()
        if now == last:
            return
        last = now


#: Times a run that completed no request is run again, each time twice as long.
_STARVED_RETRIES = 3


def _measure_one(
    case: Case,
    *,
    repeat: int,
    tokens: int,
    url: str,
    script: Path,
    seconds: int,
    warmup_s: float,
    loadgen_cpu: int | None,
    server: ProxyServerProcess | None,
    idle_rss: int | None,
) -> ProxyRun:
    what = f"{case.target} ({case.mode}, c={case.concurrency})"
    run = partial(_run_wrk, url=url, script=script, concurrency=case.concurrency, cpu=loadgen_cpu)

    def checked(output: str) -> WrkResult:
        try:
            result = parse_wrk_output(output)
            check_wrk(result, what)
        except BenchmarkError:
            if server is not None:
                server.check_running()  # the more useful message, if that is what happened
            raise
        return result

    cpu_before: dict[int, float] | None = None
    #: The machine's busy CPU-seconds and the clock when the measured run started.
    machine_before: tuple[float | None, float] = (None, 0.0)

    def served(seconds: int) -> tuple[str, float]:
        """wrk's output and CPU for a run of ``seconds`` in which some request completed: a
        machine busy with other work can starve a short run (a smoke run's second) until
        none does; that measured nothing, so it runs again, twice as long."""
        output, loadgen_cpu_s = run(seconds=seconds)
        for _ in range(_STARVED_RETRIES):
            starved = parse_wrk_output(output)
            if starved.requests or starved.non_2xx or starved.socket_errors:
                break
            seconds *= 2
            print(f"{what}: no request completed; running again for {seconds} s", file=sys.stderr)
            if server is not None:
                _settle(server)
            nonlocal cpu_before, machine_before  # the runs that served nothing are not billed
            cpu_before = server.cpu_by_process() if server is not None else None
            machine_before = (machine_cpu_seconds(), time.perf_counter())
            output, loadgen_cpu_s = run(seconds=seconds)
        return output, loadgen_cpu_s

    if warmup_s > 0:
        checked(served(_wrk_seconds(warmup_s))[0])
    if server is not None:
        _settle(server)
    cpu_before = server.cpu_by_process() if server is not None else None
    machine_before = (machine_cpu_seconds(), time.perf_counter())
    output, loadgen_cpu_s = served(seconds)
    # Read before settling: the machine's figure is about the run alone.
    machine_after, ended = machine_cpu_seconds(), time.perf_counter()
    machine_busy = None
    if machine_after is not None and machine_before[0] is not None:
        machine_busy = (machine_after - machine_before[0]) / (ended - machine_before[1])
    result = checked(output)
    server_cpu_s = rss = split = None
    if server is not None:
        _settle(server)
        cpu_after = server.cpu_by_process()
        if cpu_before is not None and cpu_after is not None:
            # Totals, not the sum of each process's difference: the CPU of a process that
            # ended in between is its parent's now.
            server_cpu_s = sum(cpu_after.values()) - sum(cpu_before.values())
            used = (cpu - cpu_before.get(pid, 0.0) for pid, cpu in cpu_after.items())
            split = tuple(sorted((c for c in used if c > 0), reverse=True))
        rss = server.rss_bytes()
    return ProxyRun(
        case=case,
        repeat=repeat,
        tokens=tokens,
        requests=result.requests,
        duration_s=result.duration_s,
        requests_per_s=result.requests_per_s,
        latency_p50_ms=result.latency_p50_s * 1e3,
        latency_p99_ms=result.latency_p99_s * 1e3,
        server_cpu_s=server_cpu_s,
        rss_bytes=rss,
        idle_rss_bytes=idle_rss if server is not None else None,
        loadgen_cpu_s=loadgen_cpu_s,
        server_cpu_split=split,
        machine_busy=machine_busy,
    )


def measure_proxy(
    *,
    upstream_url: str,
    plan: CpuPlan,
    concurrencies: Sequence[int],
    seconds: float,
    repeats: int,
    tokens: int,
    warmup_s: float = DEFAULT_WARMUP_S,
    on_run: Callable[[ProxyRun], None] | None = None,
    litellm: bool = False,
    failures: list[str] | None = None,
) -> list[ProxyRun]:
    """Start one proxy for the whole measurement (on ``plan.measure``), then for each repeat,
    concurrency (ascending) and mode (create, stream) run wrk against the proxy and against the
    upstream directly (alternating which goes first), each after an unmeasured warm-up.

    Blocks for about ``repeats * len(concurrencies) * 2 modes * 2 targets * (warm-up +
    seconds)``, where wrk rounds both up to whole seconds.

    Args:
        upstream_url: the running upstream's base URL, ``/v1`` included.
        plan: the proxy runs on ``plan.measure``, wrk on ``plan.upstream`` (both targets).
        concurrencies: wrk connection counts.
        seconds: measured seconds per run (rounded up to whole seconds, at least 1).
        repeats: runs per case; report medians with ``summarize_proxy``.
        tokens: the upstream's answer length, recorded on every run.
        warmup_s: unmeasured seconds before each run (0: none), whole seconds as well.
        on_run: called with every run as it completes (progress output).
        failures: where a failed LiteLLM-proxy run is reported (None: it raises, like ours).
        litellm: also measure LiteLLM's proxy (``litellm --config``, pinned like ours, the
            same model group on the same upstream, its master key) as ``litellm-proxy``.

    Returns:
        Every run, in the order measured.

    Raises:
        BenchmarkError: wrk is missing or failed, a request failed, or the proxy did not start
            or died.
    """
    if shutil.which("wrk") is None:
        raise BenchmarkError("wrk is not installed (apt-get install wrk)")
    runs: list[ProxyRun] = []
    measured = _wrk_seconds(seconds)
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="sluicegate-bench-wrk-"))
        server = stack.enter_context(
            open_proxy_server(upstream_url=upstream_url, cpu=plan.measure, tokens=tokens)
        )
        servers: dict[str, ProxyServerProcess] = {PROXY: server}
        targets = {
            PROXY: (server.responses_url, GATEWAY_MODEL, MASTER_KEY),
            DIRECT: (f"{upstream_url}/responses", UPSTREAM_MODEL, API_KEY),
        }
        if litellm:
            other = stack.enter_context(open_litellm_proxy(upstream_url, cpu=plan.measure))
            servers[LITELLM_PROXY] = other
            targets[LITELLM_PROXY] = (other.responses_url, GATEWAY_MODEL, MASTER_KEY)
        idle = {name: s.rss_bytes() for name, s in servers.items()}
        scripts: dict[tuple[str, bool], Path] = {}
        for target, (_, model, key) in targets.items():
            for stream in (False, True):
                path = Path(scratch) / f"{target}-{'stream' if stream else 'create'}.lua"
                path.write_text(wrk_script(model=model, api_key=key, stream=stream))
                scripts[target, stream] = path
        for repeat in range(repeats):
            if repeat and warmup_s > 0:
                # As the library runner: the last repeat's idle pool connections expire first.
                time.sleep(POOL_KEEPALIVE_EXPIRY + 1.0)
            order = list(targets) if repeat % 2 == 0 else list(targets)[::-1]
            for concurrency in sorted(concurrencies):
                for stream in (False, True):
                    for target in order:
                        case = Case(target=target, stream=stream, concurrency=concurrency)
                        try:
                            run = _measure_one(
                                case,
                                repeat=repeat,
                                tokens=tokens,
                                url=targets[target][0],
                                script=scripts[target, stream],
                                seconds=measured,
                                warmup_s=warmup_s,
                                loadgen_cpu=plan.upstream,
                                server=servers.get(target),
                                idle_rss=idle.get(target),
                            )
                        except BenchmarkError as exc:
                            # The comparison failing (LiteLLM's proxy answering nothing under
                            # this load in time) is a result to report, not a reason to lose
                            # the run; ours failing is.
                            if target != LITELLM_PROXY or failures is None:
                                raise
                            failures.append(f"repeat {repeat + 1}: {exc}")
                            continue
                        runs.append(run)
                        if on_run is not None:
                            on_run(run)
    return runs


# --- time to first event ---------------------------------------------------------------------

#: How long the background load runs before the probe's first request: wrk has connected and
#: its streams are flowing (the probe's own warm-up tenth comes on top).
_LOAD_LEAD_S: Final = 0.5
#: The background load's wrk duration: far longer than any probe, which stops it when done
#: (SIGINT: wrk then prints its summary and our script's line, as at the end of a run).
_LOAD_MAX_S: Final = 3600
#: The probe's httpx timeout: far above any stream here, so a stuck stream fails the run.
_PROBE_TIMEOUT: Final = 30.0


@attrs.frozen(kw_only=True)
class FirstEvent:
    """Time from sending a streamed request to its first SSE ``data:`` line, for one target at
    one concurrency: what a streaming client waits before it sees anything. wrk cannot see
    inside a response, so this is a probe of its own: sequential requests, each one of
    ``concurrency`` concurrent streams (the other ``concurrency - 1`` from wrk)."""

    target: str
    concurrency: int
    samples: int
    p50_ms: float
    p99_ms: float


def measure_first_event(
    *,
    upstream_url: str,
    plan: CpuPlan,
    concurrencies: Sequence[int],
    samples: int = 200,
    on_result: Callable[[FirstEvent], None] | None = None,
) -> list[FirstEvent]:
    """For each concurrency (ascending), probe the proxy and then the upstream directly:
    ``samples`` streamed requests one at a time (after a tenth more as warm-up), while wrk keeps
    ``concurrency - 1`` more streams going against the same target (the streaming script of
    :func:`measure_proxy`; no load at concurrency 1). The proxy minus direct is what the proxy
    adds to the first event at that load.

    Pinned as :func:`measure_proxy` pins: the proxy on ``plan.measure``, wrk on
    ``plan.upstream``, and the probe (this thread, while probing) beside wrk. The client side
    then shares the upstream's CPU for both targets alike, and the proxy has its CPU to itself,
    as in the wrk runs; a probe on the proxy's CPU would be billed the wait for a saturated
    core that the direct probe never sees.

    Args:
        on_result: called with every result as it is measured (progress output).

    Raises:
        BenchmarkError: a probe failed, the background load failed (wrk's output is checked as
            a measured run's is when the probe is done) or ended before the probe did, or the
            proxy did not start or died.
    """
    results: list[FirstEvent] = []
    with contextlib.ExitStack() as stack:
        scratch = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="sluicegate-bench-ttfe-"))
        )
        server = stack.enter_context(open_proxy_server(upstream_url=upstream_url, cpu=plan.measure))
        client = stack.enter_context(httpx.Client(timeout=_PROBE_TIMEOUT, trust_env=False))
        targets = {
            PROXY: (server.responses_url, GATEWAY_MODEL, MASTER_KEY),
            DIRECT: (f"{upstream_url}/responses", UPSTREAM_MODEL, API_KEY),
        }
        scripts: dict[str, Path] = {}
        for target, (_, model, key) in targets.items():
            scripts[target] = scratch / f"{target}-stream.lua"
            scripts[target].write_text(wrk_script(model=model, api_key=key, stream=True))
        for concurrency in sorted(concurrencies):
            for target, (url, model, key) in targets.items():
                what = f"{target} (time to first event, c={concurrency})"
                try:
                    with (
                        _background_load(
                            url=url,
                            script=scripts[target],
                            connections=concurrency - 1,
                            cpu=plan.upstream,
                            what=what,
                        )
                        if concurrency > 1
                        else contextlib.nullcontext(),
                        _running_on(plan.upstream),
                    ):
                        waits = _probe(
                            client, url, model=model, key=key, samples=samples, what=what
                        )
                except BenchmarkError:
                    server.check_running()  # the more useful message, if that is what happened
                    raise
                result = FirstEvent(
                    target=target,
                    concurrency=concurrency,
                    samples=len(waits),
                    p50_ms=percentile(waits, 0.5) * 1e3,
                    p99_ms=percentile(waits, 0.99) * 1e3,
                )
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


def _probe(
    client: httpx.Client, url: str, *, model: str, key: str, samples: int, what: str
) -> list[float]:
    """``samples`` times to the first event, sorted, in seconds, after a tenth more unmeasured.

    Raises:
        BenchmarkError: a request failed, or its answer was not a 200 stream with events (the
            message names ``what``).
    """
    body = {"model": model, "input": INPUT, "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    warmup = max(1, samples // 10)
    waits: list[float] = []
    for i in range(warmup + samples):
        began = time.perf_counter()
        first: float | None = None
        try:
            with client.stream("POST", url, json=body, headers=headers) as answer:
                if answer.status_code != 200:
                    raise BenchmarkError(f"{what}: HTTP {answer.status_code}")
                # Read to the end, as a client does: the next probe starts when this one ends.
                for line in answer.iter_lines():
                    if first is None and line.startswith("data:"):
                        first = time.perf_counter() - began
        except httpx.HTTPError as exc:
            raise BenchmarkError(f"{what}: {exc!r}") from exc
        if first is None:
            raise BenchmarkError(f"{what}: a stream without events")
        if i >= warmup:
            waits.append(first)
    return sorted(waits)


@contextlib.contextmanager
def _running_on(cpu: int | None) -> Iterator[None]:
    """This thread pinned to ``cpu`` for the block (where pinning is available), then back."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def _background_load(
    *, url: str, script: Path, connections: int, cpu: int | None, what: str
) -> Iterator[None]:
    """wrk keeping ``connections`` streams going against ``url`` (pinned to ``cpu``) from a
    short lead before the block until its end; then stopped and its output checked as a
    measured run's is (:func:`check_wrk`), unless the block raised.

    Raises:
        BenchmarkError: wrk is missing, ended before the block did, was not stopped cleanly, or
            reported a failed answer or a socket error.
    """
    argv, preexec = _wrk_argv(
        url=url, script=script, connections=connections, seconds=_LOAD_MAX_S, cpu=cpu
    )
    # Output to a file, not a pipe: it is read once wrk has stopped, and a full pipe would
    # stall it.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        try:
            time.sleep(_LOAD_LEAD_S)
            _check_load_running(process, output, what)
            yield
            _check_load_running(process, output, what)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        text = _read_all(output)
        if process.returncode != 0:
            raise BenchmarkError(
                f"wrk against {what} exited with status {process.returncode}:\n{text}"
            )
        check_wrk(parse_wrk_output(text), what)


def _check_load_running(process: subprocess.Popen[bytes], output: IO[bytes], what: str) -> None:
    status = process.poll()
    if status is not None:
        raise BenchmarkError(
            f"the background load (wrk against {what}) ended before the probe did (status "
            f"{status}):\n{_read_all(output)}"
        )


def _read_all(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode("utf-8", "replace")


@attrs.frozen(kw_only=True)
class FirstEventRow:
    """The proxy's and the upstream's time to first event at one concurrency."""

    concurrency: int
    proxy: FirstEvent
    direct: FirstEvent

    @property
    def added_p50_ms(self) -> float:
        """What the proxy adds at p50: proxy minus direct."""
        return self.proxy.p50_ms - self.direct.p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.proxy.p99_ms - self.direct.p99_ms


def first_event_rows(results: Sequence[FirstEvent]) -> list[FirstEventRow]:
    """One row per concurrency, ascending.

    Raises:
        ValueError: a concurrency lacks its proxy or its direct result.
    """
    by: dict[tuple[str, int], FirstEvent] = {(r.target, r.concurrency): r for r in results}
    rows = []
    for concurrency in sorted({r.concurrency for r in results}):
        proxy, direct = by.get((PROXY, concurrency)), by.get((DIRECT, concurrency))
        if proxy is None or direct is None:
            raise ValueError(f"c={concurrency}: the proxy's and the direct result are both needed")
        rows.append(FirstEventRow(concurrency=concurrency, proxy=proxy, direct=direct))
    return rows


_FIRST_EVENT_COLUMNS: Final[list[tuple[str, Callable[[FirstEventRow], str]]]] = [
    ("conc", lambda r: str(r.concurrency)),
    ("samples", lambda r: str(min(r.proxy.samples, r.direct.samples))),
    ("proxy p50 ms", lambda r: f"{r.proxy.p50_ms:.2f}"),
    ("proxy p99 ms", lambda r: f"{r.proxy.p99_ms:.2f}"),
    ("direct p50 ms", lambda r: f"{r.direct.p50_ms:.2f}"),
    ("direct p99 ms", lambda r: f"{r.direct.p99_ms:.2f}"),
    ("+p50 ms", lambda r: f"{r.added_p50_ms:+.2f}"),
    ("+p99 ms", lambda r: f"{r.added_p99_ms:+.2f}"),
]


def first_event_table(results: Sequence[FirstEvent], *, markdown: bool = False) -> str:
    """Per concurrency: the proxy's and the direct p50 and p99, and what the proxy adds."""
    return render_table(
        _FIRST_EVENT_COLUMNS, first_event_rows(results), group=lambda _: 0, markdown=markdown
    )


def first_event_json(results: Sequence[FirstEvent]) -> list[dict[str, Any]]:
    """The table's rows as JSON-ready dicts (times in ms)."""
    return [
        {
            "concurrency": r.concurrency,
            "proxy_samples": r.proxy.samples,
            "direct_samples": r.direct.samples,
            "proxy_p50_ms": r.proxy.p50_ms,
            "proxy_p99_ms": r.proxy.p99_ms,
            "direct_p50_ms": r.direct.p50_ms,
            "direct_p99_ms": r.direct.p99_ms,
            "added_p50_ms": r.added_p50_ms,
            "added_p99_ms": r.added_p99_ms,
        }
        for r in first_event_rows(results)
    ]


# --- summaries -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ProxySummary:
    """One case, each metric the median over its repeats."""

    case: Case
    repeats: int
    requests: float
    requests_per_s: float
    #: The lowest and highest requests/s over the repeats.
    rps_min: float
    rps_max: float
    latency_p50_ms: float
    latency_p99_ms: float
    #: The proxy's CPU per request, its spread over the repeats (None for the direct target).
    cpu_ms_per_request: float | None
    cpu_ms_min: float | None
    cpu_ms_max: float | None
    rss_bytes: float | None
    idle_rss_bytes: float | None
    loadgen_busy: float
    #: Proxy minus direct, medians for the same mode and concurrency (None on direct rows, or
    #: when the direct case is missing).
    p50_overhead_ms: float | None
    p99_overhead_ms: float | None
    #: Proxy requests/s ÷ direct requests/s.
    throughput_ratio: float | None
    #: Requests served per CPU-second the proxy process used (from /proc): requests/s per core
    #: (None for the direct target).
    requests_per_cpu_s: float | None = None
    #: On sluicegate's proxy row: its requests per CPU-second ÷ LiteLLM's proxy's, for the same
    #: mode and concurrency (None elsewhere, or without LiteLLM's row).
    per_cpu_ratio_vs_litellm: float | None = None


def _median_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize_proxy(runs: Sequence[ProxyRun]) -> list[ProxySummary]:
    """Group by case, take medians, and set each proxy row's overhead over its direct row.
    Sorted by mode, concurrency, then direct before proxy."""
    by_case: dict[Case, list[ProxyRun]] = {}
    for run in runs:
        by_case.setdefault(run.case, []).append(run)
    direct: dict[tuple[bool, int], tuple[float, float, float]] = {
        (case.stream, case.concurrency): (
            statistics.median(r.latency_p50_ms for r in group),
            statistics.median(r.latency_p99_ms for r in group),
            statistics.median(r.requests_per_s for r in group),
        )
        for case, group in by_case.items()
        if case.target == DIRECT
    }
    per_cpu = {
        case: statistics.median(values)
        for case, group in by_case.items()
        if (values := [v for r in group if (v := r.requests_per_cpu_s) is not None])
    }
    summaries = []
    for case, group in by_case.items():
        p50 = statistics.median(r.latency_p50_ms for r in group)
        p99 = statistics.median(r.latency_p99_ms for r in group)
        rps = statistics.median(r.requests_per_s for r in group)
        cpu = [c for r in group if (c := r.cpu_ms_per_request) is not None]
        base = direct.get((case.stream, case.concurrency)) if case.target != DIRECT else None
        ours = per_cpu.get(case)
        theirs = per_cpu.get(attrs.evolve(case, target=LITELLM_PROXY))
        summaries.append(
            ProxySummary(
                case=case,
                repeats=len(group),
                requests=statistics.median(r.requests for r in group),
                requests_per_s=rps,
                rps_min=min(r.requests_per_s for r in group),
                rps_max=max(r.requests_per_s for r in group),
                latency_p50_ms=p50,
                latency_p99_ms=p99,
                cpu_ms_per_request=statistics.median(cpu) if cpu else None,
                cpu_ms_min=min(cpu) if cpu else None,
                cpu_ms_max=max(cpu) if cpu else None,
                rss_bytes=_median_or_none(r.rss_bytes for r in group),
                idle_rss_bytes=_median_or_none(r.idle_rss_bytes for r in group),
                loadgen_busy=statistics.median(r.loadgen_busy for r in group),
                p50_overhead_ms=None if base is None else p50 - base[0],
                p99_overhead_ms=None if base is None else p99 - base[1],
                throughput_ratio=None if base is None or not base[2] else rps / base[2],
                requests_per_cpu_s=ours,
                per_cpu_ratio_vs_litellm=(
                    ours / theirs if case.target == PROXY and ours and theirs else None
                ),
            )
        )
    order = {DIRECT: 0, PROXY: 1, LITELLM_PROXY: 2}
    summaries.sort(key=lambda s: (s.case.stream, s.case.concurrency, order.get(s.case.target, 9)))
    return summaries


def _spread(median: float | None, low: float | None, high: float | None, repeats: int) -> str:
    """Half the range over the repeats, relative to the median (as ``_report``)."""
    if repeats < 2 or median is None or low is None or high is None or not median:
        return "-"
    return f"±{(high - low) / 2 / median * 100:.0f}%"


def _opt(value: float | None, spec: str, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return format(value, ("+" if signed else "") + spec)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


_COLUMNS: Final[list[tuple[str, Callable[[ProxySummary], str]]]] = [
    ("mode", lambda s: s.case.mode),
    ("conc", lambda s: str(s.case.concurrency)),
    ("target", lambda s: s.case.target),
    ("requests", lambda s: f"{s.requests:.0f}x{s.repeats}"),
    ("req/s", lambda s: f"{s.requests_per_s:.0f}"),
    ("req/s spread", lambda s: _spread(s.requests_per_s, s.rps_min, s.rps_max, s.repeats)),
    ("x direct", lambda s: _opt(s.throughput_ratio, ".2f")),
    ("p50 ms", lambda s: f"{s.latency_p50_ms:.2f}"),
    ("p99 ms", lambda s: f"{s.latency_p99_ms:.2f}"),
    ("+p50 ms", lambda s: _opt(s.p50_overhead_ms, ".2f", signed=True)),
    ("+p99 ms", lambda s: _opt(s.p99_overhead_ms, ".2f", signed=True)),
    ("CPU ms/req", lambda s: _opt(s.cpu_ms_per_request, ".3f")),
    (
        "CPU spread",
        lambda s: _spread(s.cpu_ms_per_request, s.cpu_ms_min, s.cpu_ms_max, s.repeats),
    ),
    ("req/CPU-s", lambda s: _opt(s.requests_per_cpu_s, ".0f")),
    ("x LiteLLM/CPU-s", lambda s: _opt(s.per_cpu_ratio_vs_litellm, ".1f")),
    ("RSS MiB", lambda s: _mib(s.rss_bytes)),
    ("idle MiB", lambda s: _mib(s.idle_rss_bytes)),
    ("wrk busy", lambda s: f"{s.loadgen_busy * 100:.0f}%"),
]


def proxy_table(summaries: Sequence[ProxySummary], *, markdown: bool = False) -> str:
    """The summaries as an aligned text table (a blank line between cases), or Markdown."""
    return render_table(
        _COLUMNS,
        summaries,
        group=lambda s: (s.case.stream, s.case.concurrency),
        markdown=markdown,
    )


def proxy_json(summaries: Sequence[ProxySummary]) -> list[dict[str, Any]]:
    """The summaries as JSON-ready dicts (times in ms, memory in bytes)."""
    return [
        {
            "target": s.case.target,
            "mode": s.case.mode,
            "concurrency": s.case.concurrency,
            "repeats": s.repeats,
            "requests": s.requests,
            "requests_per_s": s.requests_per_s,
            "requests_per_s_min": s.rps_min,
            "requests_per_s_max": s.rps_max,
            "throughput_ratio_vs_direct": s.throughput_ratio,
            "latency_p50_ms": s.latency_p50_ms,
            "latency_p99_ms": s.latency_p99_ms,
            "p50_overhead_ms": s.p50_overhead_ms,
            "p99_overhead_ms": s.p99_overhead_ms,
            "cpu_ms_per_request": s.cpu_ms_per_request,
            "cpu_ms_per_request_min": s.cpu_ms_min,
            "cpu_ms_per_request_max": s.cpu_ms_max,
            "requests_per_cpu_second": s.requests_per_cpu_s,
            "requests_per_cpu_second_vs_litellm_proxy": s.per_cpu_ratio_vs_litellm,
            "rss_bytes": s.rss_bytes,
            "idle_rss_bytes": s.idle_rss_bytes,
            "loadgen_busy": s.loadgen_busy,
        }
        for s in summaries
    ]
