"""The summary the benchmark suite prints last (benchmarks/_headline.py), on synthetic results:
every line it promises, and what it says when a figure was not measured."""

from __future__ import annotations

from benchmarks._events import EventCost
from benchmarks._headline import (
    headline_lines,
    headline_markdown,
    headline_text,
    recording_line,
)
from benchmarks._memory import LIBRARY_ASYNCIO, MIB, OpenStreams
from benchmarks._proxy import LITELLM_PROXY, PROXY, ProxySummary
from benchmarks._report import (
    AIOHTTP_FLOOR,
    LITELLM,
    SLUICEGATE_ASYNCIO,
    SLUICEGATE_STATELESS,
    Summary,
)
from benchmarks._runner import Case
from benchmarks._store import RecordingRun

SHAPE = "upstream: fake, each SSE event its own write, 20 deltas/28 events per stream"


def summary(
    target: str,
    stream: bool,
    concurrency: int,
    *,
    ratio: float | None,
    aiohttp: float | None,
    cpu: float = 1.0,
    trio: float | None = None,
) -> Summary:
    return Summary(
        case=Case(target=target, stream=stream, concurrency=concurrency),
        requests=100,
        repeats=1,
        requests_per_s=1000.0,
        cpu_ms_per_request=cpu,
        cpu_ms_min=cpu,
        cpu_ms_max=cpu,
        latency_p50_ms=1.0,
        latency_p99_ms=2.0,
        first_event_p50_ms=None,
        events_per_request=1.0,
        events_per_s=0.0,
        upstream_busy=None,
        cpu_ratio=ratio,
        aiohttp_ratio=aiohttp,
        trio_ratio=trio,
    )


def summaries() -> list[Summary]:
    return [
        summary("sluicegate", stream, c, ratio=r, aiohttp=2 * r)
        for stream, ratios in ((False, (1.5, 0.75, 0.5)), (True, (1.25, 1.0, 0.875)))
        for c, r in zip((1, 16, 64), ratios, strict=True)
    ] + [
        summary(AIOHTTP_FLOOR, False, 1, ratio=0.5, aiohttp=None),
        summary(SLUICEGATE_STATELESS, False, 1, ratio=0.6, aiohttp=1.25),
        summary(SLUICEGATE_STATELESS, True, 1, ratio=0.6, aiohttp=1.5),
    ]


def asyncio_face() -> list[Summary]:
    """The asyncio face, its CPU/request its ratio to the trio face's (1 ms everywhere)."""
    return [
        summary(SLUICEGATE_ASYNCIO, stream, c, ratio=None, aiohttp=None, cpu=r, trio=r)
        for stream, ratios in ((False, (1.05, 1.1, 1.25)), (True, (1.0, 1.2, 1.5)))
        for c, r in zip((1, 16, 64), ratios, strict=True)
    ]


def litellm() -> list[Summary]:
    """LiteLLM's library at two of the three concurrencies, streaming at one."""
    return [
        summary(LITELLM, False, 1, ratio=None, aiohttp=None, cpu=5.0),
        summary(LITELLM, False, 16, ratio=None, aiohttp=None, cpu=8.0),
        summary(LITELLM, True, 1, ratio=None, aiohttp=None, cpu=6.0),
    ]


def held(target: str, per_stream_kib: float) -> OpenStreams:
    return OpenStreams(
        target=target,
        streams=500,
        read_interval_s=0.1,
        open_s=2.0,
        idle_rss_bytes=40 * MIB,
        open_rss_bytes=40 * MIB + round(per_stream_kib * 1024 * 500),
        closed_rss_bytes=41 * MIB,
    )


def cost(deltas: int, us: float) -> EventCost:
    return EventCost(
        deltas=deltas,
        events=deltas + 8,
        repeats=3,
        cpu_us_per_event=us,
        cpu_us_min=us,
        cpu_us_max=us,
        cpu_ms_per_stream=us * deltas / 1e3,
        events_per_s=50_000.0,
    )


def recording(concurrency: int, us: float) -> RecordingRun:
    return RecordingRun(
        concurrency=concurrency,
        responses=2000,
        cpu_us_per_response=us,
        p50_ms=1.0,
        p99_ms=2.0,
        responses_per_s=3000.0,
        responses_per_transaction=float(concurrency),
        payload_bytes_per_response=1247.0,
        disk_bytes_per_response=3000.0,
        wal_bytes=0,
    )


def proxy(
    target: str, stream: bool, concurrency: int, per_cpu: float | None, ratio: float | None = None
) -> ProxySummary:
    return ProxySummary(
        case=Case(target=target, stream=stream, concurrency=concurrency),
        repeats=1,
        requests=1000.0,
        requests_per_s=500.0,
        rps_min=500.0,
        rps_max=500.0,
        latency_p50_ms=2.0,
        latency_p99_ms=5.0,
        cpu_ms_per_request=None if per_cpu is None else 1e3 / per_cpu,
        cpu_ms_min=None,
        cpu_ms_max=None,
        rss_bytes=None,
        idle_rss_bytes=None,
        loadgen_busy=0.3,
        p50_overhead_ms=None,
        p99_overhead_ms=None,
        throughput_ratio=None,
        requests_per_cpu_s=per_cpu,
        per_cpu_ratio_vs_litellm=ratio,
    )


def test_the_summary_has_every_headline_figure() -> None:
    lines = headline_lines(
        upstream_shape=SHAPE,
        summaries=summaries() + asyncio_face() + litellm(),
        memory_results=[
            held("proxy", 92.75),
            held("aiohttp-floor", 14.5),
            held("library", 57.25),
            held(LIBRARY_ASYNCIO, 60.5),
        ],
        event_costs=[cost(1000, 20.0), cost(4000, 19.0), cost(16000, 19.5)],
        recording=[recording(1, 244.4), recording(16, 154.0), recording(64, 142.0)],
        proxy=[
            proxy(PROXY, False, 1, 500.0, 6.25),
            proxy(LITELLM_PROXY, False, 1, 80.0),
            proxy(PROXY, False, 16, 800.0, 10.0),
            proxy(LITELLM_PROXY, False, 16, 80.0),
            proxy(PROXY, True, 16, 540.0),
        ],
    )
    assert lines == [
        SHAPE,
        "library CPU/request x httpx floor (c=1/16/64): create 1.50 / 0.75 / 0.50; "
        "stream 1.25 / 1.00 / 0.88",
        "library CPU/request x aiohttp floor (c=1/16/64): create 3.00 / 1.50 / 1.00; "
        "stream 2.50 / 2.00 / 1.75",
        "library (stateless) CPU/request x aiohttp floor (c=1): create 1.25; stream 1.50",
        "library asyncio face CPU/request x trio face (c=1/16/64): create 1.05 / 1.10 / 1.25; "
        "stream 1.00 / 1.20 / 1.50; memory per open slow stream 60.5 KiB (trio face 57.2 KiB)",
        "LiteLLM library CPU/request ÷ sluicegate's (c=1/16): create trio face 5.0 / 8.0, "
        "asyncio face 4.8 / 7.3; stream trio face 6.0 / -, asyncio face 6.0 / -",
        "memory per open slow stream: library 57.2 KiB, library-asyncio 60.5 KiB, proxy 92.8 KiB, "
        "aiohttp-floor 14.5 KiB (500 streams held open)",
        "CPU per streamed event (library, c=1): 20.00 µs at 1,008 events, 19.00 µs at 4,008 "
        "events, 19.50 µs at 16,008 events (longest ÷ shortest: 0.97x)",
        "recording CPU µs/response: 244 at c=1, 154 at c=16",
        "proxy requests per CPU-second, create (c=1/16): sluicegate 500 / 800, LiteLLM 80 / 80 "
        "(6.2x / 10.0x)",
        "proxy requests per CPU-second, stream (c=16): sluicegate 540 (LiteLLM's proxy not "
        "measured)",
    ]
    text = headline_text(lines).splitlines()
    assert text[0] == "summary:"
    assert text[1:] == [f"  {line}" for line in lines]
    markdown = headline_markdown(lines).splitlines()
    assert markdown[:2] == ["## Summary", ""]
    assert markdown[2:] == [f"- {line}" for line in lines]


def test_the_summary_says_what_was_not_measured() -> None:
    lines = headline_lines(
        upstream_shape=SHAPE,
        summaries=[],
        memory_results=[],
        event_costs=[],
        recording=[],
        proxy=[],
        aiohttp_missing="aiohttp is not installed",
    )
    assert (
        lines[2] == "library CPU/request x aiohttp floor: not measured (aiohttp is not installed)"
    )
    assert lines[3] == (
        "library (stateless) CPU/request x aiohttp floor: not measured (aiohttp is not installed)"
    )
    assert lines[4:] == [
        "library asyncio face CPU/request x trio face: not measured",
        "LiteLLM library CPU/request ÷ sluicegate's: not measured",
        "memory per open slow stream: not measured",
        "CPU per streamed event (library, c=1): not measured",
        "recording CPU µs/response: not measured",
        "proxy requests per CPU-second: not measured",
    ]


def test_the_recording_line_names_c1_and_c16_or_what_there_is() -> None:
    assert recording_line([recording(16, 150.4), recording(1, 250.0)]) == (
        "recording CPU µs/response: 250 at c=1, 150 at c=16"
    )
    assert recording_line([recording(4, 200.0), recording(8, 180.0)]) == (
        "recording CPU µs/response: 200 at c=4, 180 at c=8"
    )


def test_the_asyncio_face_line_says_which_figure_is_missing() -> None:
    """The asyncio face measured without the trio face (no ratio) or without its open streams:
    its line still comes, with ``-`` for what is missing; LiteLLM without the asyncio face
    likewise."""
    face = [summary(SLUICEGATE_ASYNCIO, False, 1, ratio=None, aiohttp=None, cpu=1.2)]
    lines = headline_lines(
        upstream_shape=SHAPE,
        summaries=[*face, *summaries(), *litellm()],
        memory_results=[held("library", 57.25)],
        event_costs=[],
        recording=[],
        proxy=[],
    )
    assert lines[4] == (
        "library asyncio face CPU/request x trio face (c=1): create -; stream -; "
        "memory per open slow stream - KiB (trio face 57.2 KiB)"
    )
    assert lines[5] == (
        "LiteLLM library CPU/request ÷ sluicegate's (c=1/16): create trio face 5.0 / 8.0, "
        "asyncio face 4.2 / -; stream trio face 6.0 / -, asyncio face - / -"
    )
