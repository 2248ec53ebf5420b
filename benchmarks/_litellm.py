"""LiteLLM's library (``litellm.aresponses``) on the same fake upstream, when the optional extra
is installed (``pip install -e '.[compare]'``); skipped with a note otherwise.

LiteLLM runs on asyncio, so it is measured in a child process of its own (this module run as
``python -m benchmarks._litellm``), pinned to the measuring CPU like sluicegate's library, driven
the same way: a warm-up, then N requests from C concurrent tasks; its CPU is that process's
``time.process_time()`` over the measured requests, the same number sluicegate's library figure
is (``_library.py``: that one runs in a child of its own too). The child prints one JSON object
per case, with its RSS after the case and its peak, as the library's children do; the parent
turns them into the suite's runs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from typing import Any

import attrs

# The target's name in the tables: the report's, which names every library target.
from ._report import LITELLM as LITELLM
from ._runner import Case, CaseRun, percentile, process_memory
from ._upstream import BenchmarkError

__all__ = ["LiteLLMRun", "litellm_available", "measure_litellm"]

LITELLM_MODEL = "openai/bench-model"


@attrs.frozen(kw_only=True)
class LiteLLMRun:
    mode: str
    concurrency: int
    requests: int
    requests_per_s: float
    cpu_ms_per_request: float
    p50_ms: float
    p99_ms: float
    first_event_p50_ms: float | None
    events_per_request: float
    #: The child's RSS after the case and its peak (None without /proc).
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None

    def as_case_run(self) -> CaseRun:
        """The suite's shape for a run, so LiteLLM sits in the same table as the others."""
        wall = self.requests / self.requests_per_s
        first = None if self.first_event_p50_ms is None else self.first_event_p50_ms / 1e3
        return CaseRun(
            case=Case(target=LITELLM, stream=self.mode == "stream", concurrency=self.concurrency),
            requests=self.requests,
            wall_s=wall,
            cpu_s=self.cpu_ms_per_request * self.requests / 1e3,
            events=round(self.events_per_request * self.requests),
            latency_p50_s=self.p50_ms / 1e3,
            latency_p99_s=self.p99_ms / 1e3,
            first_event_p50_s=first,
            first_event_p99_s=None,
            upstream_busy=None,
            rss_bytes=self.rss_bytes,
            peak_rss_bytes=self.peak_rss_bytes,
        )


def litellm_available() -> bool:
    return importlib.util.find_spec("litellm") is not None


def measure_litellm(
    *,
    upstream_url: str,
    cpu: int | None,
    concurrency: int,
    requests: int,
    stream: bool,
    timeout: float = 600.0,
) -> LiteLLMRun:
    """One case in a child process (see the module docstring).

    Raises:
        BenchmarkError: the child failed (with the tail of its stderr).
    """
    argv = [sys.executable, "-m", "benchmarks._litellm", upstream_url, str(concurrency)]
    argv += [str(requests), "stream" if stream else "create"]
    taskset = shutil.which("taskset")
    if cpu is not None and taskset is not None:
        argv = [taskset, "-c", str(cpu), *argv]
    done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise BenchmarkError(f"the LiteLLM driver failed ({done.returncode}): {tail}")
    data: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return LiteLLMRun(**data)


async def _drive(url: str, concurrency: int, requests: int, stream: bool) -> dict[str, Any]:
    import asyncio
    import time

    # Only the child imports it, and only with the compare extra installed.
    import litellm

    litellm.suppress_debug_info = True
    latencies: list[float] = []
    firsts: list[float] = []
    events = 0

    async def one() -> None:
        nonlocal events
        began = time.perf_counter()
        if stream:
            # Typed as either a response or an iterator; with stream=True it is the iterator.
            response: Any = await litellm.aresponses(
                model=LITELLM_MODEL, input="hello", api_base=url, api_key="sk-bench", stream=True
            )
            first = None
            async for _ in response:
                events += 1
                if first is None:
                    first = time.perf_counter() - began
            if first is not None:
                firsts.append(first)
        else:
            await litellm.aresponses(
                model=LITELLM_MODEL, input="hello", api_base=url, api_key="sk-bench"
            )
            events += 1
        latencies.append(time.perf_counter() - began)

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(
        *(worker(max(1, requests // 10 // concurrency)) for _ in range(concurrency))
    )
    latencies.clear()
    firsts.clear()
    events = 0
    per = max(1, requests // concurrency)
    cpu = time.process_time()
    wall = time.perf_counter()
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    done = per * concurrency
    rss, peak = process_memory()
    return {
        "mode": "stream" if stream else "create",
        "concurrency": concurrency,
        "requests": done,
        "requests_per_s": done / wall,
        "cpu_ms_per_request": cpu / done * 1e3,
        "p50_ms": percentile(sorted(latencies), 0.5) * 1e3,
        "p99_ms": percentile(sorted(latencies), 0.99) * 1e3,
        "first_event_p50_ms": percentile(sorted(firsts), 0.5) * 1e3 if firsts else None,
        "events_per_request": events / done,
        "rss_bytes": rss,
        "peak_rss_bytes": peak,
    }


if __name__ == "__main__":
    import asyncio
    import os

    # The bundled price map: the benchmark machine reaches nothing but the fake upstream.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    _url, _concurrency, _requests, _mode = sys.argv[1:5]
    result = asyncio.run(_drive(_url, int(_concurrency), int(_requests), _mode == "stream"))
    print(json.dumps(result))
