"""The two placements of a request's actors (docs/design.md §2.1): what each costs in tasks,
that both answer alike, and each pure actor on its own, fed directly.

The whole suite also runs in either layout (``pytest --actor-layout=unfused``); these tests pin
the layouts themselves, whatever the suite's option says.
"""

from __future__ import annotations

import collections
from typing import Any

import orjson
import pytest
import trio

import sluicegate
from sluicegate import ResponseEvent, ResponseStatus
from sluicegate._types import DeltaEvent, OutputItemEvent, StreamEvent
from sluicegate.actors._accountant import Accountant
from sluicegate.actors._stages import IdEncoder, Sink, Transformer
from sluicegate.codecs._lifecycle import StreamTracker
from sluicegate.codecs.ids import IdCodec
from sluicegate.codecs.openai_responses import ResponsesStreamDecoder
from sluicegate.codecs.sealed import SealedState, StateSeal
from sluicegate.config import Deployment
from sluicegate.errors import UpstreamProtocolError, UpstreamStatusError
from sluicegate.fake import FakeUpstream, Fault
from sluicegate.pricing import PriceTable
from sluicegate.runtime._messages import (
    Batch,
    Failure,
    PreparedCall,
    Routed,
    UpstreamOpened,
)

from .conftest import ACTOR_LAYOUT_ENV, fake_config

LAYOUTS = pytest.mark.parametrize("layout", ["fused", "unfused"])


@pytest.fixture(autouse=True)
def _configured_layout_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests choose the layout in the configuration: the suite's override stays out."""
    monkeypatch.delenv(ACTOR_LAYOUT_ENV, raising=False)


def _config(fake: FakeUpstream, layout: str) -> dict[str, Any]:
    config: dict[str, Any] = fake_config(fake)
    config["general_settings"]["actor_layout"] = layout
    return config


class _Spawned(trio.abc.Instrument):
    """The gateway's own tasks started while installed (not the fake upstream's)."""

    def __init__(self) -> None:
        self.names: collections.Counter[str] = collections.Counter()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name.startswith("sluicegate.") and not task.name.startswith("sluicegate.fake"):
            self.names[task.name] += 1


async def _count_tasks(gw: Any, *, stream: bool) -> collections.Counter[str]:
    spawned = _Spawned()
    trio.lowlevel.add_instrument(spawned)
    try:
        if stream:
            async with gw.stream(model="gpt-test", input="hello") as events:
                async for _ in events:
                    pass
        else:
            await gw.responses(model="gpt-test", input="hello")
    finally:
        trio.lowlevel.remove_instrument(spawned)
    return spawned.names


async def test_the_fused_layout_starts_no_task_for_a_create_and_one_for_a_stream(
    fake: FakeUpstream,
) -> None:
    async with sluicegate.open_gateway(_config(fake, "fused")) as gw:
        await gw.responses(model="gpt-test", input="warm the pool")
        assert await _count_tasks(gw, stream=False) == {}
        # The one asynchronous boundary: the request's task, feeding the caller's channel.
        assert await _count_tasks(gw, stream=True) == {
            "sluicegate._gateway._streams._run_streaming": 1
        }


async def test_the_unfused_layout_runs_every_actor_in_a_task_of_its_own(
    fake: FakeUpstream,
) -> None:
    actors = {
        "sluicegate.actors._plan.run_router": 1,
        "sluicegate.actors._connector.run_connector": 1,
        "sluicegate.actors._stages.run_transformer": 1,
        "sluicegate.actors._accountant.run_accountant": 1,
        "sluicegate.actors._stages.run_id_encoder": 1,
    }
    async with sluicegate.open_gateway(_config(fake, "unfused")) as gw:
        await gw.responses(model="gpt-test", input="warm the pool")
        assert await _count_tasks(gw, stream=False) == actors
        assert await _count_tasks(gw, stream=True) == {
            **actors,
            "sluicegate._gateway._streams._run_streaming": 1,
        }


def _shape(events: list[StreamEvent]) -> list[tuple[str, int]]:
    return [(event.type, event.sequence_number) for event in events]


@LAYOUTS
async def test_both_layouts_answer_alike(fake: FakeUpstream, layout: str) -> None:
    async with sluicegate.open_gateway(_config(fake, layout)) as gw:
        plain = await gw.responses(model="gpt-test", input="hello")
        async with gw.stream(model="gpt-test", input="hello") as stream:
            events = [event async for event in stream]
    assert plain.status == ResponseStatus.COMPLETED and plain.output_text
    assert events[-1].type == "response.completed"
    assert isinstance(events[-1], ResponseEvent)
    assert events[-1].response.output_text == plain.output_text
    assert [e.type for e in events].count("response.output_text.delta") == 8
    assert _shape(events) == [(e.type, i) for i, e in enumerate(events)]


@LAYOUTS
async def test_both_layouts_record_a_mid_stream_reset_as_one_failure(
    fake: FakeUpstream, layout: str
) -> None:
    fake.script(Fault.reset_mid_stream(after_events=5))
    async with sluicegate.open_gateway(_config(fake, layout)) as gw:
        async with gw.stream(model="gpt-test", input="hello") as stream:
            events = [event async for event in stream]
        assert events[-1].type == "response.failed"
        assert [e.type for e in events].count("response.failed") == 1
        assert isinstance(events[-1], ResponseEvent)
        stored = await gw.get_response(events[-1].response.id)
    assert stored.status == ResponseStatus.FAILED


@LAYOUTS
async def test_both_layouts_raise_an_upstream_refusal_before_any_event(
    fake: FakeUpstream, layout: str
) -> None:
    fake.script(Fault.status(400))
    async with sluicegate.open_gateway(_config(fake, layout)) as gw:
        with pytest.raises(UpstreamStatusError):
            await gw.responses(model="gpt-test", input="hello")


# -- each pure actor, fed directly -------------------------------------------------------------

_DEPLOYMENT = Deployment(
    id="dep-1", model_name="gpt-test", provider="openai", model="gpt-5.4", api_base=None
)
_ROUTED = Routed(
    call=PreparedCall(model="gpt-test", body={"input": "hi"}, stream=True),
    deployment=_DEPLOYMENT,
)


def _frame(event: dict[str, Any]) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _response(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": "resp_raw", "object": "response", "status": status, "output": [], **fields}


_CREATED = _frame(
    {"type": "response.created", "sequence_number": 0, "response": _response("in_progress")}
)
_DELTA = _frame(
    {
        "type": "response.output_text.delta",
        "sequence_number": 1,
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": "hi",
    }
)


def _opened(body: bytes) -> UpstreamOpened:
    return UpstreamOpened(
        routed=_ROUTED, status=200, headers={}, body=body, decoder=ResponsesStreamDecoder()
    )


def test_the_transformer_batches_what_each_read_completes() -> None:
    transformer = Transformer()
    first = transformer.feed(_opened(_CREATED + _DELTA[:10]))
    assert isinstance(first, Batch) and first.routed is _ROUTED
    assert [e.type for e in first.events] == ["response.created"]
    second = transformer.feed(_DELTA[10:])
    assert isinstance(second, Batch)
    assert [type(e) for e in second.events] == [DeltaEvent]
    assert transformer.feed(b": a comment\n\n") is None
    # The body ended before a terminal event: the stream was cut off.
    cut = transformer.close()
    assert isinstance(cut, Failure)
    assert isinstance(cut.error, UpstreamProtocolError)


def test_the_transformer_turns_malformed_data_into_a_failure() -> None:
    transformer = Transformer()
    out = transformer.feed(_opened(b"event: response.created\ndata: {not json\n\n"))
    assert isinstance(out, Failure)
    assert isinstance(out.error, UpstreamProtocolError)


def test_the_transformer_passes_the_connectors_failure_on() -> None:
    failure = Failure(UpstreamProtocolError("reset"))
    assert Transformer().feed(failure) is failure


def test_the_id_encoder_names_the_response_once_and_seals_state() -> None:
    ids, seal = IdCodec.from_secret("s"), StateSeal.from_secret("s")
    encoder = IdEncoder(ids, seal)
    created = Transformer().feed(_opened(_CREATED))
    assert isinstance(created, Batch)
    out = encoder.encode(created)
    assert isinstance(out, Batch) and out.upstream_id == "resp_raw"
    event = out.events[0]
    assert isinstance(event, ResponseEvent)
    assert ids.decode(event.response.id).raw_id == "resp_raw"
    # The same response again: the same ID, and no second upstream_id.
    repeated = Transformer().feed(_opened(_CREATED))
    assert isinstance(repeated, Batch)
    again = encoder.encode(repeated)
    assert isinstance(again, Batch) and again.upstream_id is None
    assert again.events[0].data["response"]["id"] == event.response.id
    item = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"}
    done = OutputItemEvent(
        type="response.output_item.done",
        sequence_number=2,
        data={"type": "response.output_item.done", "sequence_number": 2, "item": item},
    )
    sealed = encoder.encode(Batch(_ROUTED, [done]))
    assert isinstance(sealed, Batch)
    state = sealed.events[0].data["item"]["encrypted_content"]
    assert state != "opaque"
    assert seal.open(state) == SealedState("dep-1", "opaque")


def test_the_accountant_settles_only_the_batch_that_ends_the_response() -> None:
    accountant = Accountant(PriceTable.bundled(), False)
    created = Transformer().feed(_opened(_CREATED))
    assert isinstance(created, Batch)
    assert accountant.price(created) is created
    usage = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    completed = _frame(
        {
            "type": "response.completed",
            "sequence_number": 2,
            "response": _response("completed", usage=usage),
        }
    )
    ended = Transformer().feed(_opened(completed))
    assert isinstance(ended, Batch)
    priced = accountant.price(ended)
    assert isinstance(priced, Batch) and priced.settlement is not None
    assert priced.settlement.usage is not None
    assert priced.settlement.usage["output_tokens"] == 5
    assert accountant.statistics().responses_settled == 1


async def test_the_sink_delivers_what_came_before_a_failure_then_raises_it() -> None:
    send, recv = trio.open_memory_channel[Any](4)
    tracker = StreamTracker()
    sink = Sink(tracker, None, send)
    created = Transformer().feed(_opened(_CREATED))
    assert isinstance(created, Batch)
    await sink.take(created)
    with pytest.raises(UpstreamProtocolError):
        await sink.take(Failure(UpstreamProtocolError("cut")))
    delivered = recv.receive_nowait()
    assert [e.type for e in delivered] == ["response.created"]
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()
