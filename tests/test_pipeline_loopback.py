"""The whole pipeline against the fake upstream on real loopback sockets: faults, early exit,
backpressure, passthrough, and the SDK's verdict on everything we emit."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import sluicegate
from sluicegate import ResponseEvent
from sluicegate.codecs.ids import IdCodec
from sluicegate.errors import UpstreamConnectionError, UpstreamProtocolError, UpstreamStatusError
from sluicegate.fake import FakeUpstream, Fault, open_fake_upstream

from .conftest import fake_config
from .sdk import sdk_event, sdk_response

TERMINALS = ("response.completed", "response.incomplete", "response.failed")


async def _stream(gw: Any, **params: Any) -> list[Any]:
    async with gw.stream(model="gpt-test", input="hello fake world", **params) as events:
        return [event async for event in events]


def _normalized(response: dict[str, Any]) -> dict[str, Any]:
    """Fields that differ between two answers of the fake for the same request."""
    out = {k: v for k, v in response.items() if k not in ("id", "created_at", "completed_at")}
    out["output"] = [{k: v for k, v in item.items() if k != "id"} for item in out["output"]]
    return out


TRANSPORTS = pytest.mark.parametrize("transport", ["lean", "httpx"])


@TRANSPORTS
async def test_stream_and_non_stream_equal_for_the_same_answer(
    fake: FakeUpstream, transport: str
) -> None:
    async with sluicegate.open_gateway(fake_config(fake, http_transport=transport)) as gw:
        plain = await gw.responses(model="gpt-test", input="hello fake world")
        events = await _stream(gw)
    terminal = events[-1]
    assert isinstance(terminal, ResponseEvent)
    assert _normalized(plain.to_dict()) == _normalized(terminal.response.to_dict())
    assert plain.output_text == terminal.response.output_text != ""
    assert plain.usage == terminal.response.usage
    assert plain.usage is not None and plain.usage.output_tokens == 8
    # The SDK parses every event and the final objects.
    for event in events:
        sdk_event(event.to_dict())
    sdk_response(plain.to_dict())
    # One encoded ID across the stream, decodable to the deployment and the fake's raw ID.
    ids = {e.response.id for e in events if isinstance(e, ResponseEvent)}
    assert len(ids) == 1
    decoded = IdCodec.from_secret("test-secret").decode(ids.pop())
    assert decoded.deployment_id == "fake-1"
    assert decoded.raw_id.startswith("resp_") and "resp_" + decoded.raw_id[5:] == decoded.raw_id
    assert fake.requests[-1].json()["stream"] is True
    assert "stream" not in fake.requests[-2].json()


async def test_previous_response_id_reaches_the_upstream_raw(fake: FakeUpstream) -> None:
    async with sluicegate.open_gateway(fake_config(fake)) as gw:
        first = await gw.responses(model="gpt-test", input="one")
        raw = IdCodec.from_secret("test-secret").decode(first.id).raw_id
        second = await gw.responses(model="gpt-test", input="two", previous_response_id=first.id)
    assert fake.requests[-1].json()["previous_response_id"] == raw
    assert second.to_dict()["previous_response_id"] == first.id


async def test_429_with_retry_after_is_waited_out(fake: FakeUpstream, autojump_clock: Any) -> None:
    fake.script(Fault.status(429, headers={"retry-after": "3"}))
    cfg = fake_config(fake, timeout=None, connect_timeout=None)
    async with sluicegate.open_gateway(cfg) as gw:
        start = trio.current_time()
        response = await gw.responses(model="gpt-test", input="hi")
        assert trio.current_time() - start == pytest.approx(3.0)
    assert response.status.value == "completed"  # type: ignore[union-attr]
    assert fake.statistics().requests == 2


async def test_500_then_success(fake: FakeUpstream, autojump_clock: Any) -> None:
    fake.script(Fault.status(500))
    async with sluicegate.open_gateway(fake_config(fake, timeout=None)) as gw:
        events = await _stream(gw)
    assert events[-1].type == "response.completed"
    assert fake.statistics().requests == 2


@TRANSPORTS
async def test_reset_before_the_first_byte_is_retried(
    fake: FakeUpstream, autojump_clock: Any, transport: str
) -> None:
    fake.script(Fault.reset_before_headers(), Fault.reset_before_headers())
    cfg = fake_config(fake, http_transport=transport, timeout=None)
    async with sluicegate.open_gateway(cfg) as gw:
        response = await gw.responses(model="gpt-test", input="hi")
        assert gw.statistics().upstream_retries == 2
    assert response.output_text


async def test_retries_exhausted_pass_the_upstream_error_on(
    fake: FakeUpstream, autojump_clock: Any
) -> None:
    fake.script(*[Fault.status(503)] * 3)
    async with sluicegate.open_gateway(fake_config(fake, timeout=None)) as gw:
        with pytest.raises(UpstreamStatusError) as info:
            await _stream(gw)
    assert info.value.status_code == 503 and fake.statistics().requests == 3


@TRANSPORTS
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.reset_mid_stream(after_events=5), "broke mid-stream"),
        (Fault.malformed_sse(after_events=5), "malformed SSE data"),
        (Fault.end_without_terminal(after_events=5), "before a terminal event"),
    ],
)
async def test_mid_stream_faults_end_in_one_failed_terminal(
    fake: FakeUpstream, fault: Fault, message: str, transport: str
) -> None:
    fake.script(fault)
    async with sluicegate.open_gateway(fake_config(fake, http_transport=transport)) as gw:
        events = await _stream(gw)
    types = [e.type for e in events]
    assert [t for t in types if t in TERMINALS] == ["response.failed"]
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    failed = events[-1]
    assert message in failed.response.error["message"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for event in events:
        sdk_event(event.to_dict())
    assert fake.statistics().requests == 1  # never retried once events flowed


async def test_malformed_first_event_is_an_error_not_a_stream(fake: FakeUpstream) -> None:
    fake.script(Fault.malformed_sse(after_events=0))
    async with sluicegate.open_gateway(fake_config(fake)) as gw:
        with pytest.raises(UpstreamProtocolError) as info:
            await _stream(gw)
    assert info.value.status_code == 502


async def test_reset_on_non_streaming_body_is_retried_then_reported(
    fake: FakeUpstream, autojump_clock: Any
) -> None:
    fake.script(*[Fault.reset_mid_stream(after_events=1)] * 3)
    async with sluicegate.open_gateway(fake_config(fake, timeout=None)) as gw:
        with pytest.raises(UpstreamConnectionError):
            await gw.responses(model="gpt-test", input="hi")
    assert fake.statistics().requests == 3


async def test_unknown_events_and_fields_pass_through_untouched(fake: FakeUpstream) -> None:
    partial = {
        "type": "response.image_generation_call.partial_image",
        "item_id": "ig_1",
        "output_index": 0,
        "partial_image_index": 0,
        "partial_image_b64": "iVBORw0KGgo=",
        "size": "1024x1024",
    }
    future = {
        "type": "response.future_thing.delta",
        "item_id": "x_1",
        "output_index": 7,
        "delta": {"nested": [1, 2]},
        "brand_new_field": "kept",
    }
    fake.script(Fault.extra_events(partial, future))
    async with sluicegate.open_gateway(fake_config(fake)) as gw:
        events = await _stream(gw)
    by_type = {e.type: e.to_dict() for e in events}
    for injected in (partial, future):
        got = dict(by_type[injected["type"]])
        got.pop("sequence_number")
        assert got == injected


@TRANSPORTS
async def test_leaving_a_stream_early_closes_the_upstream_connection(transport: str) -> None:
    async with open_fake_upstream(tokens=8) as fake:
        fake.script(Fault.stall(after_events=6))
        async with sluicegate.open_gateway(fake_config(fake, http_transport=transport)) as gw:
            async with gw.stream(model="gpt-test", input="hi") as events:
                async for event in events:
                    if event.type == "response.output_text.delta":
                        break
            with trio.fail_after(10):
                while fake.statistics().open_connections:
                    await trio.testing.wait_all_tasks_blocked(0.01)
            assert fake.statistics().connections_closed == fake.statistics().connections_opened
            assert gw.statistics().upstream_requests_in_flight == 0


async def test_a_stalled_reader_holds_the_upstream_back() -> None:
    """Backpressure: with a consumer that stops reading, the connector stops reading too; what
    it holds stays bounded by the channel buffers (so memory stays flat)."""
    async with (
        open_fake_upstream(tokens=60_000) as fake,
        sluicegate.open_gateway(fake_config(fake)) as gw,
        gw.stream(model="gpt-test", input="hi") as events,
    ):
        for _ in range(10):
            await events.__anext__()
        readings = []
        for _ in range(4):
            await trio.testing.wait_all_tasks_blocked(0.05)
            readings.append(gw.statistics().chunks_read)
        # The pipeline stopped: no more reads while nobody consumes...
        assert len(set(readings[1:])) == 1, readings
        # ...and it holds a bounded number of reads (the buffers between the actors).
        assert readings[-1] <= 16, readings
        total = 60_000 * 150  # the stream is far larger than what was read
        assert readings[-1] * 65_536 < total
        # Reading on drains it and the stream completes normally.
        last = None
        async for event in events:
            last = event
        assert last is not None and last.type == "response.completed"


async def test_connect_timeout_on_a_listener_that_never_accepts(autojump_clock: Any) -> None:
    """A full accept backlog makes connect() hang; the connect deadline fires at its time."""
    import contextlib
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the backlog so further SYNs go unanswered
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    cfg = {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {
                    "model": "openai/x",
                    "api_base": f"http://127.0.0.1:{port}/v1",
                    "connect_timeout": 2.5,
                    "max_retries": 1,
                },
            }
        ],
        "router_settings": {
            "timeout": None,
            "retry_backoff_jitter": 0.0,
            "retry_backoff_initial": 0.5,
        },
    }
    try:
        async with sluicegate.open_gateway(cfg) as gw:
            start = trio.current_time()
            with pytest.raises(sluicegate.UpstreamError, match="connecting") as info:
                await gw.responses(model="m", input="hi")
            # Two attempts of 2.5 s with a 0.5 s back-off between them.
            assert trio.current_time() - start == pytest.approx(5.5)
            assert info.value.status_code == 504
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_lifecycle_through_the_store_against_the_fake_openai_upstream(
    fake: FakeUpstream,
) -> None:
    """Issue 3 end to end on real sockets: recorded, retrieved upstream after the store's
    ownership check, continued, listed, deleted upstream and tombstoned."""
    async with sluicegate.open_gateway(fake_config(fake)) as gw:
        first = await gw.responses(model="gpt-test", input="hello", owner="alice")
        second = await gw.responses(
            model="gpt-test", input="again", previous_response_id=first.id, owner="alice"
        )
        got = await gw.get_response(first.id, owner="alice")
        assert (got.id, got.output_text) == (first.id, first.output_text)
        with pytest.raises(sluicegate.NotFoundError):
            await gw.get_response(first.id, owner="bob")
        listed = await gw.list_input_items(second.id, owner="alice", order="asc")
        assert [item["role"] for item in listed["data"]] == ["user", "assistant", "user"]
        assert await gw.delete_response(first.id, owner="alice") == {
            "id": first.id,
            "object": "response",
            "deleted": True,
        }
        with pytest.raises(sluicegate.NotFoundError):
            await gw.get_response(first.id, owner="alice")
        [log] = await gw.spend_logs(owner="alice", limit=1)
        assert log.response_id == second.id and log.output_tokens == 8
    methods = [(r.method, r.path.rsplit("/", 1)[-1] == "responses") for r in fake.requests]
    # create, create, GET, DELETE: the refused GETs never reached the upstream.
    assert methods == [("POST", True), ("POST", True), ("GET", False), ("DELETE", False)]


async def test_background_on_the_fake_upstream_is_cancelled_mid_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_fake_upstream(tokens=50, token_delay=1.0) as slow,
        sluicegate.open_gateway(fake_config(slow)) as gw,
    ):
        job = await gw.responses(model="gpt-test", input="hello", background=True)
        await trio.sleep(10.5)
        running = await gw.get_response(job.id)
        assert running.status is sluicegate.ResponseStatus.IN_PROGRESS
        cancelled = await gw.cancel_response(job.id)
        assert cancelled.status is sluicegate.ResponseStatus.CANCELLED
        text = cancelled.output[0]["content"][0]["text"]
        assert 5 <= len(text.split()) <= 11  # what the fake had said after ~10 s
        sdk_response(cancelled.to_dict())
        [log] = await gw.spend_logs()
        assert log.status == "cancelled" and log.estimated and log.output_tokens > 0
