"""The native Responses codec: byte fixtures split anywhere, passthrough, body events, errors."""

from __future__ import annotations

import orjson
import pytest

from sluicegate import (
    DeltaEvent,
    ItemEvent,
    OutputItemEvent,
    ResponseEvent,
    StreamEvent,
    UnknownEvent,
)
from sluicegate.codecs._lifecycle import StreamTracker
from sluicegate.codecs.openai_responses import (
    ResponsesBodyDecoder,
    ResponsesStreamDecoder,
    body_events,
    build_create_request,
    build_resource_request,
    parse_error_response,
    parse_retry_after,
)
from sluicegate.codecs.sse import encode_event
from sluicegate.config import Deployment, Secret
from sluicegate.errors import UpstreamProtocolError, UpstreamStatusError

from .conformance import assert_split_invariant
from .conftest import fixture_bytes

STREAMS = ["openai_text.sse", "openai_function_call.sse", "openai_image_generation.sse"]


def _payloads(data: bytes) -> list[bytes]:
    """The ``data:`` payloads of a fixture whose frames have one data line each."""
    return [line[6:] for line in data.splitlines() if line.startswith(b"data: ")]


def _wire(data: bytes) -> list[dict[str, object]]:
    return [orjson.loads(payload) for payload in _payloads(data)]


def _wire_and_raw(event: StreamEvent) -> tuple[dict[str, object], bytes | None]:
    return event.to_dict(), event.raw


@pytest.mark.parametrize("name", STREAMS)
def test_stream_fixture_decodes_identically_however_split(name: str) -> None:
    data = fixture_bytes(name)
    events = assert_split_invariant(ResponsesStreamDecoder, data, normalize=_wire_and_raw)
    # Passthrough: every event, known or not, is exactly the upstream's JSON, and keeps the
    # bytes it came as (``raw``), the same however the stream was split.
    assert [wire for wire, _ in events] == _wire(data)
    assert [raw for _, raw in events] == _payloads(data)


@pytest.mark.parametrize("name", STREAMS)
def test_crlf_framing_decodes_the_same(name: str) -> None:
    data = fixture_bytes(name)
    crlf = data.replace(b"\n", b"\r\n")
    events = assert_split_invariant(ResponsesStreamDecoder, crlf, normalize=_wire_and_raw)
    assert events == list(zip(_wire(data), _payloads(data), strict=True))


def test_raw_of_a_payload_over_several_data_lines_is_the_lines_joined() -> None:
    """The same JSON text as sent (LF between the lines), which the SSE encoder splits again."""
    lines = [b'{"type": "response.created",', b' "sequence_number": 0,', b' "response": {']
    lines += [b'  "id": "resp_1", "status": "in_progress", "output": []', b" }", b"}"]
    frame = b"event: response.created\n" + b"".join(b"data: " + line + b"\n" for line in lines)
    terminal = frame.replace(b"created", b"completed").replace(b"in_progress", b"completed")
    stream = frame + b"\n" + terminal + b"\n"
    events = assert_split_invariant(ResponsesStreamDecoder, stream, normalize=_wire_and_raw)
    (wire, raw), _ = events
    assert raw == b"\n".join(lines)
    assert orjson.loads(raw) == wire
    assert encode_event(raw, event="response.created") == frame + b"\n"


def test_events_made_from_a_whole_body_have_no_raw() -> None:
    """A non-streamed body is turned into events the upstream never sent as such."""
    events = assert_split_invariant(ResponsesBodyDecoder, fixture_bytes("openai_text.json"))
    assert all(e.raw is None for e in events)


def test_events_are_typed_by_family() -> None:
    decoder = ResponsesStreamDecoder()
    events = decoder.feed(fixture_bytes("openai_image_generation.sse")) + decoder.close()
    kinds = {e.type: type(e) for e in events}
    assert kinds["response.created"] is ResponseEvent
    assert kinds["response.output_item.added"] is OutputItemEvent
    assert kinds["response.image_generation_call.partial_image"] is ItemEvent
    assert kinds["response.future_widget.progress"] is UnknownEvent
    partial = next(e for e in events if e.type.endswith("partial_image"))
    assert partial.to_dict()["partial_image_b64"].startswith("iVBOR")
    completed = events[-1]
    assert isinstance(completed, ResponseEvent)
    assert completed.response.to_dict()["x_future_field"] == {"kept": True}


def test_text_deltas_are_delta_events_with_the_text() -> None:
    decoder = ResponsesStreamDecoder()
    events = decoder.feed(fixture_bytes("openai_text.sse")) + decoder.close()
    deltas = [e for e in events if isinstance(e, DeltaEvent)]
    assert "".join(d.delta for d in deltas) == "Hi there! Ça va?\nParis is 🇫🇷."
    assert all(d.item_id and d.output_index == 0 and d.content_index == 0 for d in deltas)


def test_tracker_fold_equals_the_terminal_response_and_the_non_stream_body() -> None:
    decoder = ResponsesStreamDecoder()
    tracker = StreamTracker()
    tracker.observe_all(decoder.feed(fixture_bytes("openai_text.sse")) + decoder.close())
    body = orjson.loads(fixture_bytes("openai_text.json"))
    assert tracker.fold().to_dict() == body
    folded = StreamTracker()
    folded.observe_all(
        assert_split_invariant(ResponsesBodyDecoder, fixture_bytes("openai_text.json"))
    )
    assert folded.fold().to_dict() == body


def test_body_events_are_created_items_done_and_terminal() -> None:
    body = orjson.loads(fixture_bytes("openai_text.json"))
    events = body_events(body)
    assert [e.type for e in events] == [
        "response.created",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == [0, 1, 2]
    created = events[0]
    assert isinstance(created, ResponseEvent)
    assert created.response.to_dict()["output"] == [] and created.response.usage is None


def test_body_of_a_background_response_is_only_created() -> None:
    body = {**orjson.loads(fixture_bytes("openai_text.json")), "status": "queued", "output": []}
    events = body_events(body)
    assert [e.type for e in events] == ["response.created"]


def test_stream_without_terminal_event_is_a_protocol_error() -> None:
    data = fixture_bytes("openai_text.sse")
    cut = data[: data.index(b"event: response.completed")]
    decoder = ResponsesStreamDecoder()
    assert decoder.feed(cut)
    with pytest.raises(UpstreamProtocolError, match="before a terminal event"):
        decoder.close()


def test_malformed_data_is_a_protocol_error_naming_the_data() -> None:
    decoder = ResponsesStreamDecoder()
    with pytest.raises(UpstreamProtocolError, match="malformed SSE data"):
        decoder.feed(b'event: response.created\ndata: {"type":"resp\n\n')


def test_error_event_first_raises_the_upstreams_error() -> None:
    decoder = ResponsesStreamDecoder()
    frame = (
        b'event: error\ndata: {"type":"error","sequence_number":0,'
        b'"code":"rate_limit_exceeded","message":"Slow down","param":null}\n\n'
    )
    with pytest.raises(UpstreamStatusError) as info:
        decoder.feed(frame)
    assert info.value.status_code == 429 and info.value.message == "Slow down"


def test_error_event_mid_stream_passes_through_then_fails_at_close() -> None:
    data = fixture_bytes("openai_text.sse")
    head = data[: data.index(b"event: response.output_text.done")]
    frame = (
        b'event: error\ndata: {"type":"error","sequence_number":9,'
        b'"code":"server_error","message":"model crashed","param":null}\n\n'
    )
    decoder = ResponsesStreamDecoder()
    events = decoder.feed(head + frame)
    assert events[-1].type == "error"
    with pytest.raises(UpstreamStatusError, match="model crashed"):
        decoder.close()


def test_done_marker_from_compatible_servers_is_ignored() -> None:
    decoder = ResponsesStreamDecoder()
    events = decoder.feed(fixture_bytes("openai_text.sse") + b"data: [DONE]\n\n") + decoder.close()
    assert events[-1].type == "response.completed"


def _deployment(provider: str = "openai", **kw: object) -> Deployment:
    return Deployment(
        id="d1",
        model_name="g",
        provider=provider,
        model="gpt-5.4",
        api_base=kw.pop("api_base", "https://api.example.test/v1"),  # type: ignore[arg-type]
        api_key=Secret("sk-secret"),
        **kw,  # type: ignore[arg-type]
    )


def test_create_request_maps_model_previous_id_and_merges_extra_body_last() -> None:
    req = build_create_request(
        _deployment(extra_headers={"x-static": "1"}),
        {"model": "group", "input": "hi", "temperature": 0.5, "metadata": {"a": "b"}},
        stream=True,
        previous_raw_id="resp_raw",
        extra_body={"temperature": 0.2, "vendor_flag": True},
        extra_headers={"x-trace": "t"},
        extra_query={"q": "1"},
    )
    assert isinstance(req.content, bytes)
    body = orjson.loads(req.content)
    assert body == {
        "model": "gpt-5.4",
        "input": "hi",
        "temperature": 0.2,
        "metadata": {"a": "b"},
        "previous_response_id": "resp_raw",
        "stream": True,
        "vendor_flag": True,
    }
    assert req.url == "https://api.example.test/v1/responses"
    assert req.headers["authorization"] == "Bearer sk-secret"
    assert req.headers["x-static"] == "1" and req.headers["x-trace"] == "t"
    assert req.headers["accept"] == "text/event-stream"
    assert req.params == {"q": "1"}


def test_azure_routes_and_auth() -> None:
    v1 = build_create_request(
        _deployment("azure", api_base="https://r.openai.azure.com"), {"input": "x"}, stream=False
    )
    assert v1.url == "https://r.openai.azure.com/openai/v1/responses" and not v1.params
    assert v1.headers["api-key"] == "sk-secret" and "authorization" not in v1.headers
    preview = build_create_request(
        _deployment(
            "azure", api_base="https://r.openai.azure.com", api_version="2025-04-01-preview"
        ),
        {"input": "x"},
        stream=False,
    )
    assert preview.url == "https://r.openai.azure.com/openai/responses"
    assert preview.params == {"api-version": "2025-04-01-preview"}
    get = build_resource_request(_deployment(), "POST", "resp_1", action="cancel")
    assert get.url == "https://api.example.test/v1/responses/resp_1/cancel"


def test_error_response_passes_on_message_status_type_code() -> None:
    body = orjson.dumps(
        {
            "error": {
                "message": "Invalid value for temperature",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "invalid_value",
            }
        }
    )
    err = parse_error_response(400, {}, body, now=0.0)
    assert (err.status_code, err.type, err.code, err.param) == (
        400,
        "invalid_request_error",
        "invalid_value",
        "temperature",
    )
    assert err.message == "Invalid value for temperature" and not err.retryable


def test_error_response_with_a_non_json_body_still_says_what_happened() -> None:
    err = parse_error_response(
        503, {"retry-after": "3"}, b"<html>Service Unavailable</html>", now=0.0
    )
    assert err.retryable and err.retry_after == 3.0 and "503" in err.message
    assert err.headers == {"retry-after": "3"}


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after-ms": "1500"}, now=0) == 1.5
    assert parse_retry_after({"retry-after": "7"}, now=0) == 7.0
    assert (
        parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0)
        == 10.0
    )
    assert parse_retry_after({"retry-after": "soon"}, now=0) is None
    assert parse_retry_after({}, now=0) is None


def test_good_events_before_a_bad_frame_in_one_read_are_returned_first() -> None:
    """Regression: a malformed frame must not swallow the good events read with it."""
    data = fixture_bytes("openai_text.sse")
    head = data[: data.index(b"event: response.content_part.added")]  # three events
    decoder = ResponsesStreamDecoder()
    events = decoder.feed(head + b'event: response.output_text.delta\ndata: {"type":"re\n\n')
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    with pytest.raises(UpstreamProtocolError, match="malformed SSE data"):
        decoder.feed(b"")
    with pytest.raises(UpstreamProtocolError):
        decoder.close()
