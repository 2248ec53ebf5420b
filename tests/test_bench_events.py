"""The benchmarks' upstream shape and the CPU per streamed event on long streams
(benchmarks/_upstream.py, benchmarks/_events.py): the fake writes each event on its own, and the
long-stream children report every stream they read. Nothing here judges a number: CPU is the
machine's, only the shapes are asserted."""

from __future__ import annotations

import json
import re
import socket

import pytest

from benchmarks._events import (
    EventCost,
    EventCostRun,
    event_cost_json,
    event_cost_table,
    measure_event_cost,
    summarize_event_cost,
)
from benchmarks._upstream import run_fake_upstream, stream_events, upstream_shape


def _raw_stream(base_url: str) -> bytes:
    """One streamed answer over a plain socket, read until the server closes it."""
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/v1", base_url)
    assert match is not None
    body = json.dumps({"model": "bench-model", "input": "hello", "stream": True}).encode()
    request = (
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=30) as sock:
        sock.sendall(request)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    return bytes(received)


def _chunks(reply: bytes) -> list[bytes]:
    _, _, body = reply.partition(b"\r\n\r\n")
    chunks: list[bytes] = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(body[:size])
        body = body[size + 2 :]


def test_the_benchmarks_upstream_writes_each_event_as_a_chunk_of_its_own() -> None:
    with run_fake_upstream(tokens=5, cpu=None) as upstream:
        chunks = _chunks(_raw_stream(upstream.base_url))
    assert len(chunks) == stream_events(5) == 5 + 8
    assert all(c.startswith(b"event: ") and c.count(b"event: ") == 1 for c in chunks)


def test_the_upstream_shape_names_the_writes_and_the_stream_length() -> None:
    assert stream_events(20) == 28
    assert stream_events(1000) == 1008
    assert upstream_shape(20) == (
        "upstream: fake (python -m sluicegate.fake --write-per-event), each SSE event its own "
        "write, 20 deltas/28 events per stream"
    )


def test_long_streams_are_read_to_the_end_and_costed_per_event() -> None:
    seen: list[EventCost] = []
    runs = measure_event_cost([30, 120], repeats=2, cpu=None, on_result=seen.append)
    assert [(r.deltas, r.events) for r in runs] == [(30, 38), (30, 38), (120, 128), (120, 128)]
    for run in runs:
        assert run.cpu_s > 0 and run.wall_s > 0
        assert run.cpu_us_per_event == run.cpu_s / run.events * 1e6
    costs = summarize_event_cost(runs)
    assert seen == costs
    assert [(c.deltas, c.events, c.repeats) for c in costs] == [(30, 38, 2), (120, 128, 2)]
    for cost in costs:
        assert 0 < cost.cpu_us_min <= cost.cpu_us_per_event <= cost.cpu_us_max
        assert cost.cpu_ms_per_stream > 0 and cost.events_per_s > 0
    header, _, first, second = event_cost_table(costs).splitlines()
    assert header.split() == [
        "deltas",
        "events",
        "repeats",
        "CPU",
        "ms/stream",
        "CPU",
        "us/event",
        "spread",
        "x",
        "shortest",
        "events/s",
    ]
    assert first.split()[:3] == ["30", "38", "2"]
    assert first.split()[6] == "1.00"  # the shortest against itself
    assert second.split()[:3] == ["120", "128", "2"]
    documents = event_cost_json(costs)
    assert [d["events"] for d in documents] == [38, 128]
    json.dumps(documents)  # JSON-ready as is


def test_event_cost_summaries_take_medians_per_length() -> None:
    runs = [
        EventCostRun(deltas=4000, events=4008, cpu_s=0.08, wall_s=0.4),
        EventCostRun(deltas=1000, events=1008, cpu_s=0.03, wall_s=0.1),
        EventCostRun(deltas=4000, events=4008, cpu_s=0.12, wall_s=0.6),
        EventCostRun(deltas=4000, events=4008, cpu_s=0.10, wall_s=0.5),
    ]
    short, long = summarize_event_cost(runs)
    assert (short.deltas, short.repeats) == (1000, 1)
    assert long.repeats == 3
    assert long.cpu_us_per_event == pytest.approx(0.10 / 4008 * 1e6)
    assert long.cpu_us_min == pytest.approx(0.08 / 4008 * 1e6)
    assert long.cpu_us_max == pytest.approx(0.12 / 4008 * 1e6)
    assert long.cpu_ms_per_stream == pytest.approx(100.0)
    assert long.events_per_s == pytest.approx(4008 / 0.5)
    rows = event_cost_table([short, long]).splitlines()[2:]
    assert rows[0].split()[5] == "-"  # one repeat: no spread
    assert rows[1].split()[5] == "±20%"
