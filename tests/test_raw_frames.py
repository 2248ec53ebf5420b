"""Raw frames (docs/design.md §6.5): an upstream event the gateway does not change reaches the
client as the exact bytes of its ``data:`` payload; an event it changes (response IDs, usage and
cost, sealed state, renumbered or made by the gateway) never carries the bytes it arrived as.

The proxy test makes the fake upstream write loose JSON (spaces, ASCII escapes, some payloads
over several ``data:`` lines), which re-encoding would compact: the bytes a client receives
show which events passed through and which were encoded again."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import httpx
import orjson
import pytest

import sluicegate
from sluicegate import OutputItemEvent, ResponseEvent, StreamEvent
from sluicegate._types import LIFECYCLE_TYPES, event_from_wire
from sluicegate.codecs.ids import IdCodec
from sluicegate.codecs.sse import ServerSentEvent, SSEDecoder
from sluicegate.fake import FakeUpstream, Fault, open_fake_upstream
from sluicegate.fake import _server as fake_server
from sluicegate.fake._answers import SseScript, sse_script
from sluicegate.server import build_app

from .conftest import MEMORY_STORE, fake_config
from .proxy_server import serving
from .sdk import sdk_event

MASTER = "sk-master-0123456789abcdef"

#: A request the fake answers with a reasoning item (summary deltas, ``encrypted_content``,
#: which the gateway seals) and a message (text deltas), plus an event type nobody knows.
RICH = {
    "model": "gpt-test",
    "input": "hello raw frames",
    "include": ["reasoning.encrypted_content"],
    "reasoning": {"summary": "auto"},
}
UNKNOWN = {"type": "response.future_widget.progress", "widget": {"name": "Zürich", "ratio": 2.5}}

#: Event types whose payload the loose upstream spreads over several ``data:`` lines.
MULTI_LINE = frozenset({"response.output_text.done", UNKNOWN["type"]})


def _loosen(frame: bytes) -> bytes:
    """The frame with its payload as the same JSON, not compact: spaces after separators, ASCII
    escapes, and an indented payload over several lines for the types in MULTI_LINE."""
    (event,) = SSEDecoder().feed(frame)
    payload = orjson.loads(event.data)
    indent = 1 if payload["type"] in MULTI_LINE else None
    text = json.dumps(payload, ensure_ascii=True, indent=indent)
    data = text.replace("\n", "\ndata: ")
    return f"event: {event.event}\ndata: {data}\n\n".encode()


@contextmanager
def loose_upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Make the fake write loose JSON; yields the list of every frame it sends, as sent."""
    sent: list[bytes] = []

    def loose_script(*args: Any, **kwargs: Any) -> SseScript:
        made = sse_script(*args, **kwargs)
        frames = [_loosen(frame) for frame in made.frames]
        sent.extend(frames)
        return attrs.evolve(made, frames=frames)

    with monkeypatch.context() as patch:
        patch.setattr(fake_server, "sse_script", loose_script)
        yield sent


def _decode(stream: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return decoder.feed(stream) + decoder.close()


def _unsealed(item: Any) -> Any:
    """The item with a sealed ``encrypted_content`` (``sgs1.<dep>.<tag>.<text>``) opened."""
    state = item.get("encrypted_content") if isinstance(item, dict) else None
    if not isinstance(state, str) or not state.startswith("sgs1."):
        return item
    return {**item, "encrypted_content": state.split(".", 3)[3]}


def _sealed_state(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("encrypted_content"), str)


def proxy_config(fake: FakeUpstream) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "gpt-test",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": fake.base_url,
                    "api_key": "sk-provider-fedcba9876543210",
                },
                "model_info": {"id": "fake-1"},
            }
        ],
        "general_settings": {
            "master_key": MASTER,
            "response_id_secret": "raw-frames-test",
            "store": MEMORY_STORE,
            "include_cost_in_streaming_usage": True,
            "graceful_shutdown_timeout": 2,
        },
    }


async def test_proxy_passes_unchanged_frames_as_received_and_encodes_rewritten_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with loose_upstream(monkeypatch) as sent:
        async with open_fake_upstream(tokens=8) as fake:
            fake.script(Fault.extra_events(UNKNOWN))
            async with (
                serving(build_app(proxy_config(fake))) as url,
                httpx.AsyncClient(
                    base_url=url, headers={"authorization": f"Bearer {MASTER}"}, timeout=30
                ) as http,
                http.stream("POST", "/v1/responses", json={**RICH, "stream": True}) as answer,
            ):
                assert answer.status_code == 200
                received = _decode(b"".join([chunk async for chunk in answer.aiter_raw()]))
    upstream = _decode(b"".join(sent))
    assert [e.event for e in received] == [e.event for e in upstream]
    assert any(b"\n" in e.data for e in upstream), "no multi-line payload in the fixture"

    gateway_ids: set[str] = set()
    passed = rewritten = 0
    for got_frame, sent_frame in zip(received, upstream, strict=True):
        got, wire = orjson.loads(got_frame.data), orjson.loads(sent_frame.data)
        if got["type"] != UNKNOWN["type"]:  # the SDK knows only the types it knows
            sdk_event(got)
        if got["type"] in LIFECYCLE_TYPES:
            # Rewritten: the gateway's ID, sealed output, cost on the terminal usage.
            gateway_ids.add(got["response"]["id"])
            assert got["response"]["id"] != wire["response"]["id"]
            response = {**got["response"], "id": wire["response"]["id"]}
            response["output"] = [_unsealed(item) for item in response["output"]]
            if got["type"] == "response.completed":
                assert "cost" in response["usage"]
                response["usage"] = {k: v for k, v in response["usage"].items() if k != "cost"}
            assert {**got, "response": response} == wire
        elif _sealed_state(wire.get("item")):
            assert got["item"]["encrypted_content"].startswith("sgs1.")
            assert {**got, "item": _unsealed(got["item"])} == wire
        else:
            # Unchanged: the upstream's own bytes, lines and all, never encoded again.
            assert got_frame.data == sent_frame.data
            assert got == wire
            passed += 1
            continue
        assert got_frame.data == orjson.dumps(got), "a rewritten event is encoded afresh"
        assert got_frame.data != sent_frame.data
        rewritten += 1
    assert len(gateway_ids) == 1 and gateway_ids.pop().startswith("resp_")
    # created, in_progress, completed; the reasoning item's added and done.
    assert rewritten == 5
    assert passed == len(upstream) - rewritten > 20


def _check_raw(events: list[StreamEvent]) -> None:
    """What the gateway hands out: ``raw``, where set, is the JSON of the event as it is."""
    for event in events:
        if event.raw is not None:
            assert orjson.loads(event.raw) == event.to_dict(), event.type


async def test_events_the_gateway_changes_never_carry_the_upstream_bytes(
    fake: FakeUpstream,
) -> None:
    config = fake_config(fake)
    config["general_settings"]["include_cost_in_streaming_usage"] = True  # type: ignore[index]
    async with (
        sluicegate.open_gateway(config) as gw,
        gw.stream(**RICH) as stream,
    ):
        events = [event async for event in stream]
    _check_raw(events)
    by_type = {e.type: e for e in events}
    created, completed = by_type["response.created"], by_type["response.completed"]
    assert isinstance(created, ResponseEvent) and isinstance(completed, ResponseEvent)
    # The ID rewritten; the terminal usage with its cost; the reasoning item's state sealed.
    upstream_id = IdCodec.from_secret("test-secret").decode(created.response.id).raw_id
    assert upstream_id != created.response.id
    assert created.raw is None and completed.raw is None
    assert completed.response.usage is not None and completed.response.usage.cost is not None
    sealed = [e for e in events if isinstance(e, OutputItemEvent) and _sealed_state(e.item)]
    assert len(sealed) == 2 and all(e.raw is None for e in sealed)
    assert all(e.item["encrypted_content"].startswith("sgs1.") for e in sealed)
    # Every other event is the upstream's, bytes and all.
    untouched = [e for e in events if type(e) is not ResponseEvent and e not in sealed]
    assert untouched and all(e.raw is not None for e in untouched)


async def test_closing_events_of_a_cut_stream_are_made_not_passed(fake: FakeUpstream) -> None:
    fake.script(Fault.reset_mid_stream(after_events=6))
    async with (
        sluicegate.open_gateway(fake_config(fake)) as gw,
        gw.stream(model="gpt-test", input="cut me short") as stream,
    ):
        events = [event async for event in stream]
    _check_raw(events)
    assert [e.raw is not None for e in events[:6]] == [False, False, True, True, True, True]
    # What the gateway made to end the response: the open part and item closed, one failed.
    closing = events[6:]
    assert [e.type for e in closing] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.failed",
    ]
    assert all(e.raw is None for e in closing)


# -- the event helpers ---------------------------------------------------------------------

RAW_CREATED = (
    b'{"type": "response.created", "sequence_number": 0, "response": '
    b'{"id": "resp_up", "status": "in_progress", "output": [], "usage": null}}'
)
RAW_DELTA = (
    b'{"type": "response.output_text.delta", "sequence_number": 3, "item_id": "msg_1",'
    b' "output_index": 0, "content_index": 0, "delta": "caf\\u00e9"}'
)


def _wire(raw: bytes) -> StreamEvent:
    return event_from_wire(orjson.loads(raw), raw=raw)


@pytest.mark.parametrize(
    ("raw", "change"),
    [
        (RAW_CREATED, lambda e: e.with_response_fields(id="resp_gateway")),
        (RAW_CREATED, lambda e: e.with_sequence_number(7)),
        (RAW_DELTA, lambda e: e.with_sequence_number(4)),
    ],
    ids=["response fields", "renumbered lifecycle", "renumbered delta"],
)
def test_a_changed_copy_drops_raw(raw: bytes, change: Callable[[Any], StreamEvent]) -> None:
    event = _wire(raw)
    assert event.raw == raw
    changed = change(event)
    assert changed.raw is None
    assert changed.to_dict() != event.to_dict()


def test_raw_is_not_part_of_equality_or_repr() -> None:
    event = _wire(RAW_DELTA)
    built = event_from_wire(orjson.loads(RAW_DELTA))
    assert built.raw is None
    assert event == built
    assert "raw" not in repr(event)
