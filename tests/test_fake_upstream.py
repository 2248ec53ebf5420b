"""The built-in fake provider, observed the way the gateway observes it: over loopback HTTP."""

from __future__ import annotations

import enum
import functools
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pydantic
import pytest
import trio
import trio.testing

import sluicegate.fake
import sluicegate.fake.__main__ as fake_main
from sluicegate.fake import FakeUpstream, Fault, open_fake_upstream
from sluicegate.fake import _answers as answers
from sluicegate.fake._schema import minimal_instance

from .sdk import sdk_event, sdk_response

# The deterministic answer's first words (the fake cycles a fixed list).
THREE_WORDS = "Sluicegate fake upstream"
SEQUENCE_A_HEAD = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
SEQUENCE_A_TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
# What httpx raises on a TCP RST (ECONNRESET); a clean FIN mid-body is RemoteProtocolError instead,
# so asserting ReadError proves the fake really reset the connection.
RESET = httpx.ReadError
STREAM = {"model": "m", "stream": True}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with open_fake_upstream(tokens=3) as fake:
        yield fake


@pytest.fixture
async def client(upstream: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    # timeout=None: stalls are ended by the tests' own cancel scopes, never by httpx.
    async with httpx.AsyncClient(base_url=upstream.base_url, timeout=None) as http:
        yield http


def parse_frames(text: str) -> list[tuple[str, str]]:
    """(event name, raw data line) per SSE frame, asserting the fake's exact framing."""
    frames = []
    assert text == "" or text.endswith("\n\n")
    for block in text.split("\n\n")[:-1]:
        event, data = block.split("\n")
        assert event.startswith("event: ")
        assert data.startswith("data: ")
        frames.append((event.removeprefix("event: "), data.removeprefix("data: ")))
    return frames


def parse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for name, data in parse_frames(text):
        event = json.loads(data)
        assert event["type"] == name
        events.append(event)
    return events


async def stream_text(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/responses", json=body | {"stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    return response.text


async def read_until_error(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """Stream ``body`` and return what arrived before the connection broke."""
    received: list[str] = []
    with pytest.raises(RESET):
        async with client.stream("POST", "/responses", json=body) as response:
            async for text in response.aiter_text():
                received.append(text)
    return "".join(received)


async def wait_for(predicate: Any) -> None:
    """Let the fake's tasks run until ``predicate()`` holds; bounded so a bug fails, not hangs."""
    for _ in range(100):
        if predicate():
            return
        await trio.testing.wait_all_tasks_blocked()
    raise AssertionError("condition never became true")


def port_of(upstream: FakeUpstream) -> int:
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/v1", upstream.base_url)
    assert match is not None
    return int(match.group(1))


async def raw_exchange(upstream: FakeUpstream, request: bytes) -> bytes:
    """Send ``request`` on a fresh socket and read until the server closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(upstream))
    async with stream:
        await stream.send_all(request)
        received = bytearray()
        while data := await stream.receive_some():
            received += data
    return bytes(received)


def without_ids(response: dict[str, Any]) -> dict[str, Any]:
    return response | {
        "id": None,
        "created_at": None,
        "completed_at": None,
        "output": [item | {"id": None} for item in response["output"]],
    }


# -- the public surface -------------------------------------------------------------------


def test_exports_are_explicit_and_sorted() -> None:
    assert sluicegate.fake.__all__ == [
        "FakeStatistics",
        "FakeUpstream",
        "Fault",
        "RecordedRequest",
        "open_fake_upstream",
    ]
    for name in sluicegate.fake.__all__:
        assert getattr(sluicegate.fake, name).__module__.startswith("sluicegate.fake._")


def test_fault_constructors_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="400-599"):
        Fault.status(200)
    with pytest.raises(ValueError, match=">= 0"):
        Fault.stall(-1)
    with pytest.raises(ValueError, match="type"):
        Fault.extra_events({"delta": "x"})


def test_base_url_before_serving_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not serving"):
        _ = FakeUpstream().base_url


# -- non-stream answers -------------------------------------------------------------------


async def test_non_stream_shape_and_usage(client: httpx.AsyncClient) -> None:
    body = {
        "model": "gpt-5.4-custom-deployment",
        "instructions": "Be terse please.",
        "input": [
            {"role": "user", "content": "Capital of France?"},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Answer in one word."},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                ],
            },
        ],
        "metadata": {"k": "v"},
        "temperature": 0,
    }
    response = await client.post("/responses", json=body)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert re.fullmatch(r"req_[0-9a-f]{32,}", response.headers["x-request-id"])
    answer = response.json()
    assert re.fullmatch(r"resp_[0-9a-f]{48,}", answer["id"])
    assert answer["object"] == "response"
    assert answer["status"] == "completed"
    assert isinstance(answer["created_at"], int)
    assert answer["completed_at"] >= answer["created_at"]
    assert answer["model"] == "gpt-5.4-custom-deployment"
    assert answer["instructions"] == "Be terse please."
    assert answer["metadata"] == {"k": "v"}
    assert answer["temperature"] == 0.0
    assert answer["top_p"] == 1.0
    assert answer["background"] is False
    assert answer["error"] is None
    assert answer["incomplete_details"] is None
    assert answer["store"] is True
    assert answer["tools"] == []
    assert answer["tool_choice"] == "auto"
    assert answer["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert answer["reasoning"] == {"effort": None, "summary": None}
    [item] = answer["output"]
    assert re.fullmatch(r"msg_[0-9a-f]{48,}", item["id"])
    assert item["type"] == "message"
    assert item["role"] == "assistant"
    assert item["status"] == "completed"
    assert item["content"] == [
        {"type": "output_text", "text": THREE_WORDS, "annotations": [], "logprobs": []}
    ]
    # 3 (instructions) + 3 (string content) + 4 (input_text); the image counts nothing.
    assert answer["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 13,
    }


async def test_answers_are_deterministic_but_ids_are_unique() -> None:
    async with (
        open_fake_upstream(tokens=40) as upstream,
        httpx.AsyncClient(base_url=upstream.base_url) as client,
    ):
        first = (await client.post("/responses", json={"model": "m", "input": "hi"})).json()
        second = (await client.post("/responses", json={"model": "m", "input": "hi"})).json()
    text = first["output"][0]["content"][0]["text"]
    assert text == second["output"][0]["content"][0]["text"]
    words = text.split(" ")
    assert len(words) == 40
    assert " ".join(words[:3]) == THREE_WORDS
    assert first["id"] != second["id"]
    assert first["output"][0]["id"] != second["output"][0]["id"]


async def test_max_output_tokens_below_tokens_gives_incomplete(client: httpx.AsyncClient) -> None:
    answer = (
        await client.post("/responses", json={"model": "m", "input": "a b", "max_output_tokens": 2})
    ).json()
    assert answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer["completed_at"] is None
    assert answer["output"][0]["status"] == "incomplete"
    assert answer["output"][0]["content"][0]["text"] == "Sluicegate fake"
    assert answer["usage"]["output_tokens"] == 2
    assert answer["usage"]["total_tokens"] == 4


# -- streaming ----------------------------------------------------------------------------


async def test_stream_is_sequence_a_gapless_and_deltas_add_up(client: httpx.AsyncClient) -> None:
    events = parse_events(await stream_text(client, {"model": "m", "input": "hi"}))

    types = [event["type"] for event in events]
    assert types == [
        *SEQUENCE_A_HEAD,
        *["response.output_text.delta"] * 3,
        *SEQUENCE_A_TAIL,
        "response.completed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    created = events[0]["response"]
    assert created["status"] == "in_progress"
    assert created["output"] == []
    assert created["usage"] is None
    assert events[1]["response"] == created
    deltas = [event for event in events if event["type"] == "response.output_text.delta"]
    assert all(delta["logprobs"] == [] for delta in deltas)
    text = "".join(delta["delta"] for delta in deltas)
    assert text == THREE_WORDS
    assert events[-4]["text"] == text
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["id"] == created["id"]
    assert final["output"] == [events[-2]["item"]]
    assert final["output"][0]["content"][0]["text"] == text
    item_id = final["output"][0]["id"]
    assert {event.get("item_id", item_id) for event in events[3:-2]} == {item_id}


async def test_stream_final_response_equals_non_stream_body(client: httpx.AsyncClient) -> None:
    body = {"model": "m", "input": "one two three", "instructions": "x", "metadata": {"a": "b"}}
    streamed = parse_events(await stream_text(client, body))[-1]["response"]
    plain = (await client.post("/responses", json=body)).json()
    assert without_ids(streamed) == without_ids(plain)
    assert streamed["id"] != plain["id"]


async def test_stream_ending_incomplete(client: httpx.AsyncClient) -> None:
    events = parse_events(
        await stream_text(client, {"model": "m", "input": "hi", "max_output_tokens": 1})
    )
    assert [event["type"] for event in events] == [
        *SEQUENCE_A_HEAD,
        "response.output_text.delta",
        *SEQUENCE_A_TAIL,
        "response.incomplete",
    ]
    assert events[-2]["item"]["status"] == "incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_keep_alive_reuses_one_connection(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    await stream_text(client, {"model": "m"})
    await client.post("/responses", json={"model": "m"})
    await stream_text(client, {"model": "m"})
    stats = upstream.statistics()
    assert stats.connections_opened == 1
    assert stats.requests == 3


async def test_token_delay_paces_each_delta(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_fake_upstream(tokens=4, token_delay=0.5) as upstream,
        httpx.AsyncClient(base_url=upstream.base_url, timeout=None) as client,
    ):
        arrivals: list[tuple[str, float]] = []
        start = trio.current_time()
        async with client.stream("POST", "/responses", json=STREAM) as r:
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    arrivals.append((line.removeprefix("event: "), trio.current_time() - start))
    delta_times = [t for name, t in arrivals if name == "response.output_text.delta"]
    assert delta_times == [0.5, 1.0, 1.5, 2.0]
    assert arrivals[0] == ("response.created", 0.0)
    assert arrivals[-1] == ("response.completed", 2.0)


def body_chunks(reply: bytes) -> list[bytes]:
    """The chunks of a chunked response body (RFC 9112 §7.1), in order, up to the last chunk,
    which must end the reply."""
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"\r\ntransfer-encoding: chunked\r\n" in head + b"\r\n"
    chunks: list[bytes] = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n"  # no trailers, nothing after the last chunk
            return chunks
        assert body[size : size + 2] == b"\r\n"
        chunks.append(body[:size])
        body = body[size + 2 :]


def stream_request(body: dict[str, Any]) -> bytes:
    data = json.dumps(body | {"stream": True}).encode()
    return (
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(data), data)
    )


@pytest.mark.parametrize("token_delay", [0.0, 0.25])
async def test_write_per_event_sends_each_event_in_a_chunk_and_a_write_of_its_own(
    autojump_clock: trio.testing.MockClock, token_delay: float
) -> None:
    """A real provider's shape (the benchmarks' upstream): the head, one write per SSE event,
    each its own chunk, then the last chunk; paced or not."""
    async with open_fake_upstream(
        tokens=5, token_delay=token_delay, write_per_event=True
    ) as upstream:
        reply = await raw_exchange(upstream, stream_request({"model": "m"}))
        await wait_for(lambda: upstream.statistics().connections_closed == 1)
        stats = upstream.statistics()
    chunks = body_chunks(reply)
    for data in chunks:
        assert data.startswith(b"event: ")
        assert data.count(b"event: ") == data.count(b"\ndata: ") == 1
        assert data.endswith(b"\n\n")
    events = parse_events(b"".join(chunks).decode())
    assert len(chunks) == len(events) == 5 + 8  # sequence A around 5 deltas
    assert events[-1]["type"] == "response.completed"
    # The head, every event, the last chunk: each a send_all of its own.
    assert stats.writes == 1 + len(events) + 1
    assert stats.bytes_written == len(reply)


@pytest.mark.parametrize("token_delay", [0.0, 0.25])
async def test_by_default_a_stream_goes_out_in_as_few_writes_as_the_pacing_allows(
    autojump_clock: trio.testing.MockClock, token_delay: float
) -> None:
    """Regression guard for the tests' default: unpaced, the whole stream is one chunk in one
    write; paced, one chunk per delta (what is due before each sleep)."""
    async with open_fake_upstream(tokens=5, token_delay=token_delay) as upstream:
        reply = await raw_exchange(upstream, stream_request({"model": "m"}))
        await wait_for(lambda: upstream.statistics().connections_closed == 1)
        stats = upstream.statistics()
    chunks = body_chunks(reply)
    assert len(parse_events(b"".join(chunks).decode())) == 13
    if token_delay:
        assert len(chunks) == stats.writes == 1 + 5
    else:
        assert len(chunks) == stats.writes == 1


def test_the_command_line_flag_asks_for_a_write_per_event() -> None:
    assert fake_main._parse(["--write-per-event"]).write_per_event is True
    assert fake_main._parse([]).write_per_event is False


# -- faults -------------------------------------------------------------------------------


async def test_status_fault_with_retry_after_then_normal(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.script(Fault.status(429, headers={"Retry-After": "2"}))
    refused = await client.post("/responses", json={"model": "m"})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    # The queue is empty again: a normal answer.
    assert (await client.post("/responses", json={"model": "m"})).status_code == 200


async def test_faults_are_consumed_in_order_one_per_create(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.script(Fault.status(500), Fault.status(503, body={"custom": True}))
    first = await client.post("/responses", json={"model": "m"})
    # A GET does not consume a fault.
    assert (await client.get("/responses/resp_nope")).status_code == 404
    second = await client.post("/responses", json=STREAM)
    third = await client.post("/responses", json={"model": "m"})
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "server_error"
    assert second.status_code == 503
    assert second.json() == {"custom": True}
    assert third.status_code == 200


async def test_reset_before_headers(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.script(Fault.reset_before_headers())
    with pytest.raises(RESET):
        await client.post("/responses", json={"model": "m"})
    # The request was read and recorded before the reset.
    assert upstream.requests[-1].json() == {"model": "m"}
    assert (await client.post("/responses", json={"model": "m"})).status_code == 200


async def test_reset_mid_stream_after_n_events(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.script(Fault.reset_mid_stream(after_events=5))
    received = await read_until_error(client, {"model": "m", "stream": True})
    events = parse_events(received)
    assert [event["sequence_number"] for event in events] == [0, 1, 2, 3, 4]


async def test_malformed_sse_frame_then_normal_rest(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.script(Fault.malformed_sse(after_events=4))
    frames = parse_frames(await stream_text(client, {"model": "m"}))
    assert frames[4] == ("response.output_text.delta", '{"type":"resp')
    with pytest.raises(json.JSONDecodeError):
        json.loads(frames[4][1])
    events = [json.loads(data) for i, (_, data) in enumerate(frames) if i != 4]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"


async def test_end_without_terminal(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.script(Fault.end_without_terminal(after_events=6), Fault.end_without_terminal(99))
    short = parse_events(await stream_text(client, {"model": "m"}))
    assert [event["sequence_number"] for event in short] == list(range(6))
    # Asking for more events than exist still withholds the terminal one.
    everything_but = parse_events(await stream_text(client, {"model": "m"}))
    assert everything_but[-1]["type"] == "response.output_item.done"
    # The HTTP response ended cleanly, so the connection was reused.
    assert upstream.statistics().connections_opened == 1


async def test_stall_mid_stream_until_client_gives_up(
    autojump_clock: trio.testing.MockClock, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.script(Fault.stall(after_events=2))
    events: list[str] = []
    start = trio.current_time()
    with trio.move_on_after(60) as scope:
        async with client.stream("POST", "/responses", json=STREAM) as r:
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    events.append(line)
    assert scope.cancelled_caught
    assert trio.current_time() == start + 60
    assert events == ["event: response.created", "event: response.in_progress"]
    # The client gave up and closed; the fake notices and lets the connection go.
    await wait_for(lambda: upstream.statistics().open_connections == 0)


async def test_stall_before_headers(
    autojump_clock: trio.testing.MockClock, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.script(Fault.stall(after_events=0))
    with trio.move_on_after(10) as scope:
        await client.post("/responses", json=STREAM)
    assert scope.cancelled_caught
    await wait_for(lambda: upstream.statistics().connections_closed == 1)
    assert upstream.statistics().bytes_written == 0


async def test_extra_events_inserted_after_in_progress_and_renumbered(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    partial = {
        "type": "response.image_generation_call.partial_image",
        "item_id": "ig_1",
        "output_index": 0,
        "partial_image_index": 0,
        "partial_image_b64": "iVBOR",
        "sequence_number": 77,
    }
    future = {"type": "response.future_thing.delta", "novel": {"nested": [1, 2]}, "delta": "?"}
    upstream.script(Fault.extra_events(partial, future))
    events = parse_events(await stream_text(client, {"model": "m"}))
    assert [event["type"] for event in events[:5]] == [
        "response.created",
        "response.in_progress",
        "response.image_generation_call.partial_image",
        "response.future_thing.delta",
        "response.output_item.added",
    ]
    assert events[2] == partial | {"sequence_number": 2}
    assert events[3] == future | {"sequence_number": 3}
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"


async def test_streaming_faults_on_non_stream_requests(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    body = {"model": "m"}
    upstream.script(
        Fault.reset_mid_stream(3),
        Fault.malformed_sse(3),
        Fault.end_without_terminal(3),
        Fault.extra_events({"type": "response.x"}),
    )
    with pytest.raises(RESET):
        await client.post("/responses", json=body)
    truncated = await client.post("/responses", json=body)
    assert truncated.status_code == 200
    assert truncated.content.startswith(b'{"id":"resp_')
    with pytest.raises(json.JSONDecodeError):
        truncated.json()
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/responses", json=body)
    assert (await client.post("/responses", json=body)).json()["status"] == "completed"


async def test_stall_on_non_stream_request(
    autojump_clock: trio.testing.MockClock, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.script(Fault.stall(1))
    with trio.move_on_after(5) as scope:
        async with client.stream("POST", "/responses", json={"model": "m"}) as response:
            assert response.status_code == 200
            await response.aread()
    assert scope.cancelled_caught
    await wait_for(lambda: upstream.statistics().open_connections == 0)


@pytest.mark.parametrize("write_per_event", [False, True])
@pytest.mark.parametrize("token_delay", [0.0, 0.25])
async def test_streaming_faults_strike_at_the_same_event_with_or_without_pacing(
    autojump_clock: trio.testing.MockClock, token_delay: float, write_per_event: bool
) -> None:
    async with (
        open_fake_upstream(
            tokens=3, token_delay=token_delay, write_per_event=write_per_event
        ) as upstream,
        httpx.AsyncClient(base_url=upstream.base_url, timeout=None) as client,
    ):
        upstream.script(
            Fault.reset_mid_stream(5), Fault.malformed_sse(5), Fault.end_without_terminal(5)
        )
        reset = parse_events(await read_until_error(client, STREAM))
        malformed = parse_frames(await stream_text(client, {"model": "m"}))
        ended = parse_events(await stream_text(client, {"model": "m"}))
    assert [event["sequence_number"] for event in reset] == list(range(5))
    assert [data for _, data in malformed].index('{"type":"resp') == 5
    assert len(malformed) == 12
    assert [event["sequence_number"] for event in ended] == list(range(5))


# -- stored responses ---------------------------------------------------------------------


async def test_get_and_delete(client: httpx.AsyncClient) -> None:
    answer = (await client.post("/responses", json={"model": "m"})).json()
    fetched = await client.get(f"/responses/{answer['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == answer
    deleted = await client.delete(f"/responses/{answer['id']}")
    assert deleted.json() == {"id": answer["id"], "object": "response", "deleted": True}
    gone = await client.get(f"/responses/{answer['id']}")
    assert gone.status_code == 404
    assert gone.json()["error"]["message"] == f"No response found with id '{answer['id']}'."
    assert (await client.delete(f"/responses/{answer['id']}")).status_code == 404


async def test_store_false_is_not_retrievable(client: httpx.AsyncClient) -> None:
    answer = (await client.post("/responses", json={"model": "m", "store": False})).json()
    assert answer["store"] is False
    assert (await client.get(f"/responses/{answer['id']}")).status_code == 404


async def test_background_is_queued_then_completed(client: httpx.AsyncClient) -> None:
    queued = (await client.post("/responses", json={"model": "m", "background": True})).json()
    assert queued["status"] == "queued"
    assert queued["output"] == []
    assert queued["usage"] is None
    assert queued["background"] is True
    done = (await client.get(f"/responses/{queued['id']}")).json()
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["text"] == THREE_WORDS
    # Cancelling a finished background response returns it unchanged.
    cancelled = await client.post(f"/responses/{queued['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json() == done


async def test_cancel_a_stalled_background_response(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.script(Fault.stall(0))
    queued = (await client.post("/responses", json={"model": "m", "background": True})).json()
    assert queued["status"] == "queued"
    assert (await client.get(f"/responses/{queued['id']}")).json()["status"] == "queued"
    cancelled = (await client.post(f"/responses/{queued['id']}/cancel")).json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["id"] == queued["id"]
    assert (await client.get(f"/responses/{queued['id']}")).json() == cancelled


async def test_cancel_errors(client: httpx.AsyncClient) -> None:
    answer = (await client.post("/responses", json={"model": "m"})).json()
    synchronous = await client.post(f"/responses/{answer['id']}/cancel")
    assert synchronous.status_code == 400
    assert synchronous.json() == {
        "error": {
            "message": "Cannot cancel a synchronous response.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert (await client.post("/responses/resp_unknown/cancel")).status_code == 404


async def test_previous_response_id(client: httpx.AsyncClient) -> None:
    unknown = await client.post(
        "/responses", json={"model": "m", "previous_response_id": "resp_x", "stream": True}
    )
    assert unknown.status_code == 400
    assert unknown.headers["content-type"] == "application/json"
    assert unknown.json() == {
        "error": {
            "message": "Previous response with id 'resp_x' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    }
    first = (await client.post("/responses", json={"model": "m"})).json()
    chained = await client.post(
        "/responses", json={"model": "m", "previous_response_id": first["id"]}
    )
    assert chained.status_code == 200
    assert chained.json()["previous_response_id"] == first["id"]
    await client.delete(f"/responses/{first['id']}")
    again = await client.post(
        "/responses", json={"model": "m", "previous_response_id": first["id"]}
    )
    assert again.json()["error"]["code"] == "previous_response_not_found"


# -- HTTP surface -------------------------------------------------------------------------


async def test_api_key_enforced() -> None:
    async with (
        open_fake_upstream(api_key="sk-test") as upstream,
        httpx.AsyncClient(base_url=upstream.base_url) as client,
    ):
        missing = await client.post("/responses", json={"model": "m"})
        wrong = await client.post(
            "/responses", json={"model": "m"}, headers={"Authorization": "Bearer sk-other"}
        )
        bearer = await client.post(
            "/responses", json={"model": "m"}, headers={"Authorization": "Bearer sk-test"}
        )
        azure = await client.post("/responses", json={"model": "m"}, headers={"api-key": "sk-test"})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    assert bearer.status_code == 200
    assert azure.status_code == 200


async def test_azure_prefix_and_query_string_are_accepted(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    root = upstream.base_url.removesuffix("/v1")
    response = await client.post(
        f"{root}/openai/v1/responses?api-version=preview",
        json={"model": "my-deployment"},
        headers={"api-key": "k", "X-Custom": "Yes"},
    )
    assert response.json()["model"] == "my-deployment"
    fetched = await client.get(f"{root}/openai/v1/responses/{response.json()['id']}")
    assert fetched.status_code == 200
    [first, second] = upstream.requests
    assert first.method == "POST"
    assert first.path == "/openai/v1/responses"
    assert first.query == "api-version=preview"
    assert first.headers["x-custom"] == "Yes"
    assert first.headers["api-key"] == "k"
    assert first.json() == {"model": "my-deployment"}
    assert second.method == "GET"
    assert second.body == b""


async def test_request_errors(client: httpx.AsyncClient) -> None:
    unknown_route = await client.get("/models")
    assert unknown_route.status_code == 404
    assert unknown_route.json()["error"]["message"] == "Invalid URL (GET /v1/models)"
    wrong_method = await client.put("/responses", json={"model": "m"})
    assert wrong_method.status_code == 404
    malformed = await client.post(
        "/responses", content=b'{"model":', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["type"] == "invalid_request_error"
    no_model = await client.post("/responses", json={"input": "hi"})
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"
    for response in (unknown_route, malformed, no_model):
        assert response.headers["x-request-id"].startswith("req_")


async def test_chunked_request_body_is_refused(upstream: FakeUpstream) -> None:
    reply = await raw_exchange(
        upstream,
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 411 Length Required\r\n")
    assert b"\r\nconnection: close\r\n" in reply


async def test_bytes_written_counts_exactly_what_was_sent(upstream: FakeUpstream) -> None:
    request = (
        b'POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{"model":"m"}'
        b"GET /v1/responses/resp_no HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    reply = await raw_exchange(upstream, request)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 404 Not Found\r\n" in reply
    await wait_for(lambda: upstream.statistics().connections_closed == 1)
    stats = upstream.statistics()
    assert stats.bytes_written == len(reply)
    assert stats.requests == 2
    assert stats.connections_opened == 1
    assert stats.open_connections == 0


async def test_client_disconnecting_mid_stream_is_counted_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_fake_upstream(tokens=10, token_delay=1.0) as upstream,
        httpx.AsyncClient(base_url=upstream.base_url, timeout=None) as client,
    ):
        start = trio.current_time()
        seen = 0
        # Hanging up by cancellation, not `break`: it unwinds httpx's generators cleanly.
        with trio.CancelScope() as reading:
            async with client.stream("POST", "/responses", json=STREAM) as r:
                async for line in r.aiter_lines():
                    seen += line.startswith("event: ")
                    if seen == 6:  # created .. the second delta
                        reading.cancel()
        assert seen == 6
        assert upstream.statistics().open_connections == 1
        # No deltas are due until the next second; the hang-up is noticed without one.
        await wait_for(lambda: upstream.statistics().connections_closed == 1)
        assert trio.current_time() == start + 2.0
        stats = upstream.statistics()
        assert stats.connections_opened == 1
        assert stats.open_connections == 0
        assert stats.requests == 1
        written = stats.bytes_written
        await trio.sleep(20)
        assert upstream.statistics().bytes_written == written


async def test_many_concurrent_streams(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_fake_upstream(tokens=5, token_delay=0.1) as upstream,
        httpx.AsyncClient(
            base_url=upstream.base_url,
            timeout=None,
            limits=httpx.Limits(max_connections=50),
        ) as client,
    ):
        texts: list[str] = []

        async def one() -> None:
            texts.append(await stream_text(client, {"model": "m"}))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one)
        assert upstream.statistics().connections_opened == 50
    assert all(parse_events(text)[-1]["type"] == "response.completed" for text in texts)
    assert len(texts) == 50


async def test_body_exception_is_not_wrapped_in_a_group() -> None:
    with pytest.raises(KeyError):
        async with open_fake_upstream():
            raise KeyError("boom")


async def test_command_line_prints_listening_line() -> None:
    command = [sys.executable, "-m", "sluicegate.fake", "--port", "0", "--tokens", "2"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                functools.partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
            )
            output = b""
            while not output.endswith(b"\n"):
                data = await process.stdout.receive_some()
                assert data, "the fake exited before printing its address"
                output += data
            match = re.fullmatch(rb"listening on (http://127\.0\.0\.1:\d+/v1)\n", output)
            assert match is not None
            async with httpx.AsyncClient(base_url=match.group(1).decode()) as client:
                answer = (await client.post("/responses", json={"model": "m"})).json()
            assert answer["output"][0]["content"][0]["text"] == "Sluicegate fake"
            process.terminate()


# -- tools, reasoning and structured output ------------------------------------------------------

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1},
            "note": {"type": ["string", "null"]},
        },
        "required": ["city", "units", "days"],
        "additionalProperties": False,
    },
    "strict": False,
}
SHELL = {"type": "custom", "name": "shell", "description": "Runs a command"}
ENCRYPTED = ["reasoning.encrypted_content"]


def checked_events(text: str) -> list[dict[str, Any]]:
    """The stream's events, each parsed by the SDK's own types, with gapless numbers."""
    events = parse_events(text)
    for event in events:
        sdk_event(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    sdk_response(events[-1]["response"])
    return events


def tool_output(call: dict[str, Any], output: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call["call_id"], "output": output}


async def test_a_plain_request_to_a_reasoning_model_keeps_the_pre_built_answer(
    client: httpx.AsyncClient,
) -> None:
    """Regression: benchmarks and the suite's plain requests name gpt-5 models; without tools,
    include, format or reasoning they get the one canned message, byte for byte as before."""
    text = await stream_text(client, {"model": "gpt-5.4", "input": "hi"})
    final = parse_events(text)[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message"]
    generic = answers.sse_script(final, plain=False)
    fast = answers.sse_script(final, plain=True)
    assert generic.frames == fast.frames
    assert generic.delta_indices == fast.delta_indices
    assert b"".join(fast.frames).decode() == text


async def test_function_call_stream_is_sequence_b(client: httpx.AsyncClient) -> None:
    events = checked_events(
        await stream_text(client, {"model": "gpt-4o", "input": "Weather?", "tools": [WEATHER]})
    )
    types = [event["type"] for event in events]
    deltas = types.count("response.function_call_arguments.delta")
    assert deltas > 1
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    [call] = final["output"]
    assert re.fullmatch(r"fc_[0-9a-f]{48,}", call["id"])
    assert re.fullmatch(r"call_[0-9a-f]{48,}", call["call_id"])
    assert (call["type"], call["name"], call["status"]) == (
        "function_call",
        "get_weather",
        "completed",
    )
    # A minimal valid instance of the parameters: required properties only, at their bounds.
    assert json.loads(call["arguments"]) == {"city": "fake", "units": "celsius", "days": 1}
    assert events[2]["item"] == call | {"status": "in_progress", "arguments": ""}
    assert "".join(e["delta"] for e in events if "delta" in e) == call["arguments"]
    assert events[-3] == {
        "type": "response.function_call_arguments.done",
        "sequence_number": len(events) - 3,
        "item_id": call["id"],
        "output_index": 0,
        "arguments": call["arguments"],
        "name": "get_weather",
    }
    assert final["usage"]["output_tokens"] == deltas
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}


async def test_function_call_frames_byte_for_byte(client: httpx.AsyncClient) -> None:
    """Compact JSON, ``type`` and ``sequence_number`` first, one JSON token per delta."""
    tool = {
        "type": "function",
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    }
    text = await stream_text(client, {"model": "m", "tools": [tool]})
    call_id = parse_events(text)[-1]["response"]["output"][0]["id"]
    frames = text.split("\n\n")

    def delta(number: int, piece: str) -> str:
        return (
            "event: response.function_call_arguments.delta\n"
            f'data: {{"type":"response.function_call_arguments.delta","sequence_number":{number},'
            f'"item_id":"{call_id}","output_index":0,"delta":{json.dumps(piece)}}}'
        )

    assert frames[3:8] == [
        delta(3, "{"),
        delta(4, '"q"'),
        delta(5, ":"),
        delta(6, '"fake"'),
        delta(7, "}"),
    ]
    assert frames[8] == (
        "event: response.function_call_arguments.done\n"
        'data: {"type":"response.function_call_arguments.done","sequence_number":8,'
        f'"item_id":"{call_id}","output_index":0,"arguments":"{{\\"q\\":\\"fake\\"}}",'
        '"name":"lookup"}'
    )


async def test_token_delay_paces_summary_and_argument_deltas(
    autojump_clock: trio.testing.MockClock,
) -> None:
    body = {"model": "m", "reasoning": {"summary": "auto"}, "tools": [WEATHER], "stream": True}
    async with (
        open_fake_upstream(token_delay=0.5) as upstream,
        httpx.AsyncClient(base_url=upstream.base_url, timeout=None) as client,
    ):
        arrivals: list[tuple[str, float]] = []
        start = trio.current_time()
        async with client.stream("POST", "/responses", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    arrivals.append((line.removeprefix("event: "), trio.current_time() - start))
    paced = [(name, t) for name, t in arrivals if name.endswith(".delta")]
    assert {name for name, _ in paced} == {
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
    }
    assert [t for _, t in paced] == [0.5 * (i + 1) for i in range(len(paced))]
    assert arrivals[-1] == ("response.completed", 0.5 * len(paced))


async def test_stream_and_non_stream_agree_on_rich_answers(client: httpx.AsyncClient) -> None:
    body = {
        "model": "o3",
        "input": "Weather?",
        "tools": [WEATHER],
        "reasoning": {"effort": "low", "summary": "auto"},
        "instructions": "Use the tool.",
    }
    streamed = checked_events(await stream_text(client, body))[-1]["response"]
    plain = (await client.post("/responses", json=body)).json()
    sdk_response(plain)
    for response in (streamed, plain):
        assert response["output"][1]["call_id"].startswith("call_")
        response["output"][1]["call_id"] = None
    assert without_ids(streamed) == without_ids(plain)


async def test_tool_choice_picks_the_tool_or_none(client: httpx.AsyncClient) -> None:
    other = WEATHER | {"name": "get_time", "parameters": None}

    async def answer(**extra: Any) -> list[dict[str, Any]]:
        body = {"model": "m", "input": "hi", "tools": [WEATHER, other, SHELL], **extra}
        response = (await client.post("/responses", json=body)).json()
        sdk_response(response)
        output: list[dict[str, Any]] = response["output"]
        return output

    assert (await answer())[0]["name"] == "get_weather"
    assert (await answer(tool_choice="required"))[0]["name"] == "get_weather"
    forced = await answer(tool_choice={"type": "function", "name": "get_time"})
    assert (forced[0]["name"], forced[0]["arguments"]) == ("get_time", "{}")
    [custom] = await answer(tool_choice={"type": "custom", "name": "shell"})
    assert custom["type"] == "custom_tool_call" and custom["name"] == "shell"
    allowed = {
        "type": "allowed_tools",
        "mode": "auto",
        "tools": [{"type": "custom", "name": "shell"}],
    }
    assert (await answer(tool_choice=allowed))[0]["type"] == "custom_tool_call"
    assert (await answer(tool_choice="none"))[0]["type"] == "message"
    hosted = {"type": "web_search_preview"}
    assert (await answer(tool_choice=hosted))[0]["type"] == "message"


async def test_custom_tool_call_stream_is_sequence_i(client: httpx.AsyncClient) -> None:
    events = checked_events(await stream_text(client, {"model": "m", "tools": [SHELL]}))
    types = [event["type"] for event in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.custom_tool_call_input.delta"] * 3,
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.completed",
    ]
    [call] = events[-1]["response"]["output"]
    assert call["input"] == "".join(e["delta"] for e in events if "delta" in e) == THREE_WORDS
    assert events[-3]["input"] == THREE_WORDS


async def test_after_a_tool_output_the_answer_quotes_it(client: httpx.AsyncClient) -> None:
    first = (await client.post("/responses", json={"model": "m", "tools": [WEATHER]})).json()
    [call] = first["output"]
    body = {
        "model": "m",
        "tools": [WEATHER],
        "input": [{"role": "user", "content": "Weather?"}, call, tool_output(call, "sunny, 21C")],
    }
    events = checked_events(await stream_text(client, body))
    [message] = events[-1]["response"]["output"]
    assert message["content"][0]["text"] == "The tool returned: sunny, 21C"
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["The", " tool", " returned:", " sunny,", " 21C"]
    # Through previous_response_id only the output is sent, and it is the last item too.
    chained = await client.post(
        "/responses",
        json={
            "model": "m",
            "tools": [WEATHER],
            "previous_response_id": first["id"],
            "input": [
                {
                    "type": "custom_tool_call_output",
                    "call_id": call["call_id"],
                    "output": [{"type": "input_text", "text": "42"}],
                }
            ],
        },
    )
    assert chained.json()["output"][0]["content"][0]["text"] == "The tool returned: 42"


async def test_reasoning_model_streams_its_summary_first(client: httpx.AsyncClient) -> None:
    body = {"model": "m", "input": "hi", "reasoning": {"effort": "low", "summary": "auto"}}
    events = checked_events(await stream_text(client, body))
    types = [event["type"] for event in events]
    summary_deltas = types.count("response.reasoning_summary_text.delta")
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        *["response.reasoning_summary_text.delta"] * summary_deltas,
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        *SEQUENCE_A_HEAD[2:],
        *["response.output_text.delta"] * 3,
        *SEQUENCE_A_TAIL,
        "response.completed",
    ]
    final = events[-1]["response"]
    reasoning, message = final["output"]
    assert re.fullmatch(r"rs_[0-9a-f]{48,}", reasoning["id"])
    assert "encrypted_content" not in reasoning  # not included
    [summary] = reasoning["summary"]
    summary_text = "".join(
        e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta"
    )
    assert summary["text"] == summary_text == events[3 + summary_deltas + 1]["text"]
    assert events[2]["item"] == reasoning | {"summary": []}
    assert message["content"][0]["text"] == THREE_WORDS
    assert all(e["output_index"] == 1 for e in events if e.get("item_id") == message["id"])
    reasoning_tokens = len(summary_text.split())
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": reasoning_tokens}
    assert final["usage"]["output_tokens"] == 3 + reasoning_tokens


@pytest.mark.parametrize(
    ("model", "reasoning", "reasons"),
    [
        ("o3-mini", None, True),
        ("o4-mini", None, True),
        ("gpt-5", None, True),
        ("gpt-5.4-mini", None, True),
        ("gpt-4o", None, False),
        ("omni", None, False),
        ("gpt-4o", {"effort": "low"}, True),
        ("gpt-5.4", {"effort": "none"}, False),
    ],
)
async def test_which_requests_reason(
    client: httpx.AsyncClient, model: str, reasoning: Any, reasons: bool
) -> None:
    body: dict[str, Any] = {"model": model, "input": "hi", "include": ENCRYPTED}
    if reasoning is not None:
        body["reasoning"] = reasoning
    output = (await client.post("/responses", json=body)).json()["output"]
    assert [item["type"] for item in output] == (["reasoning"] if reasons else []) + ["message"]
    if reasons:
        assert output[0]["summary"] == []
        assert output[0]["encrypted_content"].startswith("gAAAA")


async def test_encrypted_content_is_bound_to_the_account() -> None:
    """An account is a fake instance plus the API key it was called with: state replayed to
    another key, or another instance with the same key, is refused as OpenAI refuses it."""
    body = {"model": "gpt-5.4", "input": "hi", "tools": [WEATHER], "include": ENCRYPTED}
    async with (
        open_fake_upstream(tokens=3) as one,
        open_fake_upstream(tokens=3) as two,
        httpx.AsyncClient(base_url=one.base_url, timeout=None) as first,
        httpx.AsyncClient(base_url=two.base_url, timeout=None) as second,
    ):
        alice = {"authorization": "Bearer sk-alice"}
        made = (await first.post("/responses", json=body | {"store": False}, headers=alice)).json()
        reasoning, call = made["output"]
        replay = body | {
            "store": False,
            "input": [{"role": "user", "content": "hi"}, reasoning, call, tool_output(call, "x")],
        }
        same = await first.post("/responses", json=replay, headers=alice)
        assert same.status_code == 200
        assert same.json()["output"][-1]["type"] == "message"
        token = reasoning["encrypted_content"]
        refused = {
            "error": {
                "message": (
                    f"The encrypted content {token[:4]}...{token[-4:]} could not be verified."
                ),
                "type": "invalid_request_error",
                "param": "input",
                "code": "invalid_encrypted_content",
            }
        }
        for client, headers in (
            (first, {"authorization": "Bearer sk-bob"}),
            (first, {"api-key": "sk-bob"}),
            (first, {}),
            (second, alice),
        ):
            other = await client.post("/responses", json=replay, headers=headers)
            assert (other.status_code, other.json()) == (400, refused)
        # The Azure header names the same account as the bearer token.
        azure = await first.post("/responses", json=replay, headers={"api-key": "sk-alice"})
        assert azure.status_code == 200
        tampered = replay | {
            "input": [{**reasoning, "encrypted_content": token[:-6] + "AAAA=="}, call]
        }
        forged = await first.post("/responses", json=tampered, headers=alice)
        assert forged.json()["error"]["code"] == "invalid_encrypted_content"


async def test_reasoning_replayed_by_id_must_be_stored_by_the_account(
    client: httpx.AsyncClient,
) -> None:
    body = {"model": "o3", "input": "hi", "tools": [WEATHER]}

    async def replay(made: dict[str, Any], **headers: str) -> httpx.Response:
        reasoning, call = made["output"]
        return await client.post(
            "/responses",
            json=body | {"input": [reasoning, call, tool_output(call, "x")]},
            headers=headers,
        )

    stored = (await client.post("/responses", json=body)).json()
    assert (await replay(stored)).status_code == 200
    unstored = (await client.post("/responses", json=body | {"store": False})).json()
    for answer in (await replay(unstored), await replay(stored, authorization="Bearer other")):
        assert answer.status_code == 404
        error = answer.json()["error"]
        assert error["message"].startswith("Item with id 'rs_")
        assert (
            "not found. Items are not persisted when `store` is set to false." in error["message"]
        )
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            "input",
            None,
        )
    nameless = await client.post(
        "/responses", json=body | {"input": [{"type": "reasoning", "summary": []}]}
    )
    assert nameless.status_code == 400
    assert nameless.json()["error"]["param"] == "input[0].id"


async def test_json_schema_output_is_a_valid_instance(client: httpx.AsyncClient) -> None:
    class Color(enum.Enum):
        RED = "red"
        BLUE = "blue"

    class Address(pydantic.BaseModel):
        street: str
        zip_code: Annotated[str, pydantic.Field(min_length=5, max_length=5)]

    class Person(pydantic.BaseModel):
        name: str
        age: Annotated[int, pydantic.Field(ge=18)]
        score: float
        active: bool
        color: Color
        tags: list[str]
        home: Address
        work: Address | None
        friends: Annotated[list[Address], pydantic.Field(min_length=2)]
        nickname: str = "none"

    schema = Person.model_json_schema()
    assert "$defs" in schema  # the nested models are references
    fmt = {"type": "json_schema", "name": "person", "schema": schema, "strict": False}
    events = checked_events(await stream_text(client, {"model": "m", "text": {"format": fmt}}))
    final = events[-1]["response"]
    text = final["output"][0]["content"][0]["text"]
    person = Person.model_validate_json(text)
    assert person.age == 18 and person.color is Color.RED and len(person.friends) == 2
    assert json.loads(text) == json.loads(person.model_dump_json(exclude={"nickname"}))
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == text and len(deltas) == final["usage"]["output_tokens"] > 10
    json_object = {"model": "m", "text": {"format": {"type": "json_object"}}}
    assert (await client.post("/responses", json=json_object)).json()["output"][0]["content"][0][
        "text"
    ] == "{}"


async def test_rich_answers_are_cut_by_max_output_tokens(client: httpx.AsyncClient) -> None:
    body = {"model": "o3", "input": "hi", "include": ENCRYPTED, "max_output_tokens": 2}
    events = checked_events(await stream_text(client, body))
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][1]["status"] == "incomplete"
    assert final["output"][1]["content"][0]["text"] == "Sluicegate fake"


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({"type": "object", "properties": {"a": {"type": "string"}}}, {}),
        ({"type": ["null", "integer"], "exclusiveMinimum": 0}, 1),
        ({"type": "integer", "maximum": -3}, -3),
        ({"type": "number", "minimum": 0.5}, 0.5),
        ({"type": "integer", "minimum": 7, "multipleOf": 5}, 10),
        ({"const": "x", "type": "string"}, "x"),
        ({"enum": [3, 4]}, 3),
        ({"type": "string", "format": "date-time"}, "1970-01-01T00:00:00Z"),
        ({"type": "string", "maxLength": 2}, "fa"),
        ({"type": "string", "minLength": 6}, "fakexx"),
        ({"type": "boolean"}, False),
        ({"type": "array", "prefixItems": [{"type": "integer"}], "minItems": 2}, [0, None]),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, 0),
        (
            {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]},
                ]
            },
            {"a": 0, "b": "fake"},
        ),
        ({"$ref": "#/definitions/n", "definitions": {"n": {"type": "number"}}}, 0),
        ({"$ref": "#/$defs/missing"}, None),
        ({}, None),
        (True, None),
    ],
)
def test_minimal_instance(schema: Any, instance: Any) -> None:
    assert minimal_instance(schema) == instance


def test_minimal_instance_of_a_recursive_schema_ends() -> None:
    schema = {
        "type": "object",
        "properties": {"child": {"$ref": "#"}, "children": {"items": {"$ref": "#"}}},
        "required": ["child", "children"],
    }
    value = minimal_instance(schema)
    depth = 0
    while isinstance(value, dict):
        assert value["children"] in ([], None)  # None only where the depth ran out
        value, depth = value["child"], depth + 1
    assert value is None and depth > 5
