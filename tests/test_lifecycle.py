"""The stream tracker: order checks, numbering, failure synthesis, fold."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluicegate import ResponseEvent
from sluicegate._types import event_from_wire
from sluicegate.codecs._lifecycle import ALLOWED_TRANSITIONS, StreamTracker, failure_code
from sluicegate.codecs.openai_responses import ResponsesStreamDecoder
from sluicegate.errors import (
    UpstreamConnectionError,
    UpstreamProtocolError,
    UpstreamStatusError,
)

from .conftest import fixture_bytes
from .sdk import sdk_event, sdk_response


def _events(name: str) -> list[Any]:
    decoder = ResponsesStreamDecoder()
    return decoder.feed(fixture_bytes(name)) + decoder.close()


def _cut_before(name: str, marker: str) -> list[Any]:
    events = _events(name)
    index = next(i for i, e in enumerate(events) if e.type == marker)
    return events[:index]


def test_transition_table_has_no_exit_from_terminal_states() -> None:
    for status, targets in ALLOWED_TRANSITIONS.items():
        assert status is None or not status.is_terminal
        assert targets


def test_missing_sequence_numbers_are_filled_gaplessly() -> None:
    raw = [e.to_dict() for e in _events("openai_text.sse")]
    for d in raw:
        del d["sequence_number"]
    tracker = StreamTracker()
    out = tracker.observe_all([event_from_wire(d) for d in raw])
    assert [e.sequence_number for e in out] == list(range(len(raw)))
    assert [e.to_dict()["sequence_number"] for e in out] == list(range(len(raw)))


def test_a_rightly_numbered_event_keeps_its_bytes_and_a_renumbered_one_drops_them() -> None:
    """The proxy sends ``raw`` as the event: a renumbered event must not carry the number it
    arrived with (docs/design.md §6.5)."""
    events = _events("openai_text.sse")
    out = StreamTracker().observe_all(events)
    assert all(a is b and a.raw is not None for a, b in zip(out, events, strict=True))
    shifted = StreamTracker()
    shifted.observe(events[0])
    # One more event than the upstream numbered: everything after it moves up by one.
    shifted.observe(event_from_wire({"type": "response.future_widget.progress"}))
    renumbered = shifted.observe_all(events[1:])
    assert [e.sequence_number for e in renumbered] == list(range(2, len(events) + 1))
    assert all(e.raw is None for e in renumbered)


def test_events_made_to_close_a_failed_stream_have_no_raw() -> None:
    tracker = StreamTracker()
    tracker.observe_all(_cut_before("openai_text.sse", "response.output_text.done"))
    closing = tracker.fail(UpstreamConnectionError("connection reset", retryable=False))
    assert closing and all(e.raw is None for e in closing)


def test_order_violations_are_protocol_errors() -> None:
    events = _events("openai_text.sse")
    with pytest.raises(UpstreamProtocolError, match=r"before 'response\.created'"):
        StreamTracker().observe(events[2])
    tracker = StreamTracker()
    tracker.observe(events[0])
    with pytest.raises(UpstreamProtocolError, match="twice"):
        tracker.observe(events[0])
    done = StreamTracker()
    done.observe_all(events)
    with pytest.raises(UpstreamProtocolError, match="after the terminal"):
        done.observe(events[3])


def test_backwards_status_move_is_rejected() -> None:
    events = _events("openai_text.sse")
    created = events[0]
    queued = event_from_wire({**created.to_dict(), "type": "response.queued"})
    tracker = StreamTracker()
    tracker.observe(created)  # in_progress
    with pytest.raises(UpstreamProtocolError, match="from in_progress to queued"):
        tracker.observe(queued)


def test_fail_mid_text_closes_the_part_and_item_then_one_failed_terminal() -> None:
    tracker = StreamTracker()
    seen = tracker.observe_all(_cut_before("openai_text.sse", "response.output_text.done"))
    closing = tracker.fail(UpstreamConnectionError("connection reset", retryable=False))
    assert [e.type for e in closing] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.failed",
    ]
    numbers = [e.sequence_number for e in seen + closing]
    assert numbers == list(range(len(numbers)))
    text = "Hi there! Ça va?\nParis is 🇫🇷."
    assert closing[0].to_dict()["text"] == text
    item = closing[2].to_dict()["item"]
    assert item["status"] == "incomplete" and item["content"][0]["text"] == text
    failed = closing[-1]
    assert isinstance(failed, ResponseEvent)
    assert failed.response.to_dict()["error"] == {
        "code": "server_error",
        "message": "connection reset",
    }
    assert failed.response.output == [item] and failed.response.usage is None
    for event in closing:  # the SDK must be able to parse what we made up
        sdk_event(event.to_dict())
    assert sdk_response(failed.response.to_dict()).status == "failed"
    assert tracker.fold().status.value == "failed"  # type: ignore[union-attr]
    assert tracker.fail(UpstreamConnectionError("again")) == []  # exactly one terminal


def test_fail_mid_function_call_closes_arguments() -> None:
    tracker = StreamTracker()
    tracker.observe_all(
        _cut_before("openai_function_call.sse", "response.function_call_arguments.done")
    )
    closing = tracker.fail(UpstreamStatusError("slow down", status_code=429))
    assert [e.type for e in closing] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.failed",
    ]
    assert closing[0].to_dict()["arguments"] == '{"location":"New York City, USA"}'
    failed = closing[-1]
    assert isinstance(failed, ResponseEvent)
    assert failed.response.to_dict()["error"]["code"] == "rate_limit_exceeded"
    # The reasoning item that was already done stays in the output, in order.
    assert [i["type"] for i in failed.response.output] == ["reasoning", "function_call"]
    for event in closing:
        sdk_event(event.to_dict())


def _custom_call_cut_mid_input() -> list[Any]:
    created = _events("openai_text.sse")[0]
    item = {
        "type": "custom_tool_call",
        "id": "ctc_1",
        "call_id": "call_1",
        "name": "apply_patch",
        "input": "",
        "status": "in_progress",
    }
    wire = [
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {
            "type": "response.custom_tool_call_input.delta",
            "item_id": "ctc_1",
            "output_index": 0,
            "delta": "*** Begin",
        },
        {
            "type": "response.custom_tool_call_input.delta",
            "item_id": "ctc_1",
            "output_index": 0,
            "delta": " Patch",
        },
    ]
    return [created, *(event_from_wire({**e, "sequence_number": -1}) for e in wire)]


def test_fail_mid_custom_tool_call_closes_its_input() -> None:
    """Regression: a custom tool call cut mid-input closed with an empty input and no done."""
    tracker = StreamTracker()
    tracker.observe_all(_custom_call_cut_mid_input())
    partial = tracker.partial()
    assert partial is not None and partial.output[0]["input"] == "*** Begin Patch"
    closing = tracker.fail(UpstreamStatusError("boom", status_code=500))
    assert [e.type for e in closing] == [
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.failed",
    ]
    assert closing[0].to_dict()["input"] == "*** Begin Patch"
    assert closing[1].to_dict()["item"]["input"] == "*** Begin Patch"
    for event in closing:
        sdk_event(event.to_dict())


def test_fail_after_terminal_adds_nothing() -> None:
    tracker = StreamTracker()
    tracker.observe_all(_events("openai_text.sse"))
    assert tracker.fail(UpstreamConnectionError("late")) == []


def test_fold_fills_output_from_items_when_the_terminal_has_none() -> None:
    events = _events("openai_text.sse")
    terminal = events[-1]
    assert isinstance(terminal, ResponseEvent)
    bare = terminal.with_response_fields(output=[])
    tracker = StreamTracker()
    tracker.observe_all([*events[:-1], bare])
    body = orjson.loads(fixture_bytes("openai_text.json"))
    assert tracker.fold().output == body["output"]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UpstreamStatusError("x", status_code=429), "rate_limit_exceeded"),
        (UpstreamStatusError("x", status_code=400, code="invalid_prompt"), "invalid_prompt"),
        (UpstreamStatusError("x", status_code=500, code="weird_code"), "server_error"),
        (UpstreamProtocolError("x"), "server_error"),
    ],
)
def test_failure_codes_come_from_the_response_error_enum(error: Any, code: str) -> None:
    assert failure_code(error) == code
