"""The bridged providers' one conformance suite: every bridge — Chat Completions,
Anthropic Messages, Gemini — passes the same scenarios through the whole gateway, against fake
providers that speak the real wire formats and check what they are sent as the real ones do
(``tests/fake_*.py``): text, several tool calls, custom (freeform) tool calls and their outputs,
reasoning with signatures round-tripped over two turns (by ``previous_response_id`` and by
replayed items), structured output, the length cut-off, a mid-stream error, usage and cost,
faults, what cannot be bridged (unknown fields included), and the lifecycle (GET, DELETE, input
items, background and cancel).

Unit level: ``httpx.MockTransport`` under ``autojump_clock``; one test per provider also runs the
proxy on loopback with the official ``openai`` SDK as the client.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import openai
import orjson
import pytest
import trio

import sluicegate
from sluicegate import ResponseStatus
from sluicegate.errors import ConfigError, InvalidRequestError, NotFoundError, SluicegateError
from sluicegate.fake._answers import build_response
from sluicegate.server import build_app, serve

from .bridge_fakes import FakeProvider, Fault, mock_transport, serve_loopback
from .conftest import MEMORY_STORE
from .fake_anthropic import FakeAnthropic
from .fake_chat import FakeChat
from .fake_gemini import FakeGemini
from .sdk import sdk_event, sdk_response

INPUT_PRICE = 1e-6
OUTPUT_PRICE = 2e-6


@attrs.frozen
class Bridge:
    def __str__(self) -> str:
        return self.name

    name: str
    make: Callable[[], Any]
    #: ``provider/model`` for the deployment.
    model: str
    api_base: str
    #: Whether the provider returns reasoning state that must come back (signatures).
    signed: bool
    #: The status the provider uses for "overloaded, try again".
    overloaded: int
    model_info: dict[str, Any] = attrs.Factory(dict)


BRIDGES = [
    Bridge("chat", FakeChat, "chat/llama-3.3-70b", "http://chat.test/v1", False, 503),
    Bridge("anthropic", FakeAnthropic, "anthropic/claude-sonnet-4-5", "http://ant.test", True, 529),
    Bridge("gemini", FakeGemini, "gemini/gemini-3-pro-preview", "http://gem.test", True, 503),
]


@pytest.fixture(params=BRIDGES, ids=[b.name for b in BRIDGES])
def bridge(request: pytest.FixtureRequest) -> Bridge:
    value: Bridge = request.param
    return value


def config(bridge: Bridge, api_base: str | None = None, **general: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {
                    "model": bridge.model,
                    "api_base": api_base or bridge.api_base,
                    "api_key": "provider-key",
                    "input_cost_per_token": INPUT_PRICE,
                    "output_cost_per_token": OUTPUT_PRICE,
                },
                "model_info": {"id": f"{bridge.name}-1", **bridge.model_info},
            }
        ],
        "router_settings": {"retry_backoff_jitter": 0.0, "num_retries": 2},
        "general_settings": {
            "response_id_secret": "bridge-tests",
            "include_cost_in_streaming_usage": True,
            "store": MEMORY_STORE,
            **general,
        },
    }


@asynccontextmanager
async def gateway(
    bridge: Bridge, fake: FakeProvider, **general: Any
) -> AsyncIterator[sluicegate.Gateway]:
    async with sluicegate.open_gateway(
        config(bridge, **general), transport=mock_transport(fake), rng=random.Random(7)
    ) as gw:
        yield gw


def texts(response: sluicegate.Response) -> str:
    return response.output_text


def calls(response: sluicegate.Response) -> list[dict[str, Any]]:
    return [item for item in response.output if item["type"] == "function_call"]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def collect(gw: sluicegate.Gateway, **params: Any) -> list[sluicegate.StreamEvent]:
    async with gw.stream(**params) as events:
        return [event async for event in events]


def check_sequence(events: list[sluicegate.StreamEvent]) -> None:
    """the Responses streaming reference: the rules every stream keeps, checked with the SDK's
    types."""
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    terminal = [
        k for k in kinds if k in ("response.completed", "response.incomplete", "response.failed")
    ]
    assert terminal == [kinds[-1]]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    opened = [k for k in kinds if k == "response.output_item.added"]
    closed = [k for k in kinds if k == "response.output_item.done"]
    assert len(opened) == len(closed)
    for event in events:
        sdk_event(event.to_dict())


# -- configuration --------------------------------------------------------------------------------

#: A per-model override of the wrong kind, for each bridge's rules table.
BAD_MODEL_INFO = {
    "chat": ("max_tokens_field", "max_new_tokens"),
    "anthropic": ("reasoning", "sideways"),
    "gemini": ("max_output_tokens", -1),
}


async def test_a_bad_model_info_override_fails_at_load(bridge: Bridge) -> None:
    key, value = BAD_MODEL_INFO[bridge.name]
    cfg = config(bridge)
    cfg["model_list"][0]["model_info"][key] = value
    with pytest.raises(ConfigError) as info:
        async with sluicegate.open_gateway(cfg, transport=mock_transport(bridge.make())):
            pass  # pragma: no cover -- the gateway must not open
    assert info.value.param == f"model_list[0].model_info.{key}"


#: Zero-config use: ``provider/model`` with the provider's environment variables.
ENVIRONMENT = {
    "anthropic": {"ANTHROPIC_API_KEY": "env-key", "ANTHROPIC_API_BASE": "http://ant.test"},
    "gemini": {"GEMINI_API_KEY": "env-key", "GEMINI_API_BASE": "http://gem.test"},
}


@pytest.mark.parametrize("bridge", [b for b in BRIDGES if b.name in ENVIRONMENT], ids=str)
async def test_zero_config_provider_model_names(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with sluicegate.open_gateway(
        {"general_settings": {"store": MEMORY_STORE}},
        transport=mock_transport(fake),
        environ=ENVIRONMENT[bridge.name],
    ) as gw:
        first = await gw.responses(model=bridge.model, input="say: from the environment")
        second = await gw.responses(
            model=bridge.model, previous_response_id=first.id, input="say: and again"
        )
    assert texts(second) == "and again"
    assert "env-key" in orjson.dumps(fake.headers[0]).decode()
    assert "from the environment" in orjson.dumps(fake.requests[1]).decode()


# -- text, usage, cost ----------------------------------------------------------------------------


async def test_text_non_streamed_with_usage_and_cost(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        response = await gw.responses(model="m", input="say: hello bridged world")
        assert response.status is ResponseStatus.COMPLETED
        assert texts(response) == "hello bridged world"
        assert response.id.startswith("resp_")
        sdk_response(response.to_dict())
        usage = response.usage
        assert usage is not None
        assert usage.input_tokens > 0
        assert usage.output_tokens >= 3
        cost = usage.input_tokens * INPUT_PRICE + usage.output_tokens * OUTPUT_PRICE
        assert usage.cost == pytest.approx(cost)
        [log] = await gw.spend_logs()
        assert log.cost == pytest.approx(cost)
        assert log.input_tokens == usage.input_tokens
    assert len(fake.requests) == 1


async def test_text_streamed_is_the_canonical_sequence(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        events = await collect(gw, model="m", input="say: one two three four", stream=True)
    check_sequence(events)
    deltas = [e.to_dict()["delta"] for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "one two three four"
    assert len(deltas) > 1  # streamed, not sent whole
    final = events[-1].to_dict()["response"]
    assert final["status"] == "completed"
    assert final["usage"]["output_tokens"] >= 4


async def test_instructions_and_system_reach_the_provider(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        await gw.responses(
            model="m",
            instructions="Be brief.",
            input=[{"role": "developer", "content": "Use French."}, user("say: oui")],
        )
    sent = orjson.dumps(fake.requests[0]).decode()
    assert "Be brief." in sent
    assert "Use French." in sent


# -- tools ----------------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {
        "type": "function",
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
]
TWO_CALLS = 'call: get_weather {"city": "Paris"}; get_time {"tz": "UTC"}'


async def test_several_tool_calls_then_their_outputs(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        events = await collect(gw, model="m", input=TWO_CALLS, tools=TOOLS, stream=True)
        check_sequence(events)
        first = sluicegate.Response.from_dict(events[-1].to_dict()["response"])
        made = calls(first)
        assert [c["name"] for c in made] == ["get_weather", "get_time"]
        assert [orjson.loads(c["arguments"]) for c in made] == [{"city": "Paris"}, {"tz": "UTC"}]
        assert len({c["call_id"] for c in made}) == 2
        argument_deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
        assert argument_deltas
        outputs = [
            {"type": "function_call_output", "call_id": c["call_id"], "output": f"result {i}"}
            for i, c in enumerate(made)
        ]
        second = await gw.responses(
            model="m",
            previous_response_id=first.id,
            input=[*outputs, user("say: done")],
            tools=TOOLS,
        )
    assert texts(second) == "done"
    assert second.to_dict()["previous_response_id"] == first.id
    sent = orjson.dumps(fake.requests[-1]).decode()
    assert "result 0" in sent and "result 1" in sent
    assert "Paris" in sent  # the calls themselves went back as the provider's tool calls


async def test_forced_tool_choice_reaches_the_provider(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        await gw.responses(
            model="m",
            input='call: get_time {"tz": "UTC"}',
            tools=TOOLS,
            tool_choice={"type": "function", "name": "get_time"},
        )
    assert "get_time" in orjson.dumps(fake.requests[0]).decode()


# -- custom (freeform) tools ----------------------------------------------------------------------

PATCH_TOOL = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /[\\s\\S]+/"},
}
PATCH = (
    '*** Begin Patch\n*** Add File: hello.txt\n+h\u00e9llo "world" \\o/ \U0001f600\n*** End Patch'
)
#: The fakes call ``apply_patch`` with ``{"input": PATCH}``, and a function beside it.
PATCH_CALL = "call: apply_patch " + json.dumps({"input": PATCH}) + '; get_time {"tz": "UTC"}'
CUSTOM_TOOLS = [PATCH_TOOL, TOOLS[1]]


def custom_calls(response: sluicegate.Response) -> list[dict[str, Any]]:
    return [item for item in response.output if item["type"] == "custom_tool_call"]


def patch_outputs(response: sluicegate.Response) -> list[dict[str, Any]]:
    [patch] = custom_calls(response)
    [time] = calls(response)
    return [
        {"type": "custom_tool_call_output", "call_id": patch["call_id"], "output": "applied"},
        {"type": "function_call_output", "call_id": time["call_id"], "output": "noon"},
    ]


async def test_a_custom_tool_turn_and_its_follow_up(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    """A custom tool reaches the provider as a function of one string; its call streams back
    as a ``custom_tool_call`` (the decoded input, not JSON) beside a function call, and both
    outputs go back through ``previous_response_id``."""
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        events = await collect(gw, model="m", input=PATCH_CALL, tools=CUSTOM_TOOLS, stream=True)
        check_sequence(events)
        first = sluicegate.Response.from_dict(events[-1].to_dict()["response"])
        sdk_response(first.to_dict())
        [patch] = custom_calls(first)
        assert (patch["name"], patch["input"], patch["status"]) == (
            "apply_patch",
            PATCH,
            "completed",
        )
        assert patch["id"].startswith("ctc_")
        [time] = calls(first)
        assert orjson.loads(time["arguments"]) == {"tz": "UTC"}
        wire = [e.to_dict() for e in events]
        deltas = [e["delta"] for e in wire if e["type"] == "response.custom_tool_call_input.delta"]
        assert "".join(deltas) == PATCH
        [done] = [e for e in wire if e["type"] == "response.custom_tool_call_input.done"]
        assert done["input"] == PATCH
        usage = first.usage
        assert usage is not None and usage.cost is not None and usage.cost > 0
        second = await gw.responses(
            model="m",
            previous_response_id=first.id,
            input=[*patch_outputs(first), user("say: patched")],
            tools=CUSTOM_TOOLS,
        )
        sdk_response(second.to_dict())
    assert texts(second) == "patched"
    sent = orjson.dumps(fake.requests[-1]).decode()
    # The call went back as the provider's function call with its input, then its output.
    assert "apply_patch" in sent and "Add File: hello.txt" in sent
    assert "applied" in sent and "noon" in sent


async def test_a_replayed_custom_tool_call_and_a_forced_custom_tool(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    """A client that keeps the conversation itself replays the ``custom_tool_call`` item; and
    ``tool_choice`` forces a custom tool as the provider's forced function."""
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        first = await gw.responses(
            model="m",
            input=PATCH_CALL,
            tools=CUSTOM_TOOLS,
            tool_choice={"type": "custom", "name": "apply_patch"},
            store=False,
        )
        assert [c["input"] for c in custom_calls(first)] == [PATCH]
        second = await gw.responses(
            model="m",
            store=False,
            input=[user(PATCH_CALL), *first.output, *patch_outputs(first), user("say: again")],
            tools=CUSTOM_TOOLS,
        )
    assert texts(second) == "again"
    assert "apply_patch" in orjson.dumps(fake.requests[0]).decode()
    assert "Add File: hello.txt" in orjson.dumps(fake.requests[-1]).decode()


# -- reasoning with signatures, over two turns ----------------------------------------------------

THINK_CALL = 'think: check the weather first | call: get_weather {"city": "Oslo"}'


async def test_reasoning_state_round_trips_through_previous_response_id(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        first = await gw.responses(
            model="m",
            input=THINK_CALL,
            tools=TOOLS,
            reasoning={"effort": "low", "summary": "auto"},
        )
        kinds = [item["type"] for item in first.output]
        assert "reasoning" in kinds and "function_call" in kinds
        assert kinds.index("reasoning") < kinds.index("function_call")
        reasoning = next(item for item in first.output if item["type"] == "reasoning")
        summary = " ".join(part["text"] for part in reasoning["summary"])
        assert "check the weather first" in summary
        if bridge.signed:
            assert reasoning["encrypted_content"].startswith("sg1.")
        [call] = calls(first)
        second = await gw.responses(
            model="m",
            previous_response_id=first.id,
            input=[
                {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
                user("say: it is sunny"),
            ],
            tools=TOOLS,
            reasoning={"effort": "low", "summary": "auto"},
        )
    # The fake refuses (400) a second turn whose signatures are missing or altered.
    assert texts(second) == "it is sunny"
    if bridge.signed:
        assert fake.issued_signatures
        sent = orjson.dumps(fake.requests[-1]).decode()
        assert all(sig in sent for sig in fake.issued_signatures)


async def test_reasoning_state_round_trips_through_replayed_items(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    """A client that keeps the conversation itself (``store: false``) replays the output
    items, reasoning included, and the signatures are restored exactly."""
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        first = await gw.responses(
            model="m",
            input=THINK_CALL,
            tools=TOOLS,
            store=False,
            reasoning={"effort": "low"},
            include=["reasoning.encrypted_content"],
        )
        [call] = calls(first)
        second = await gw.responses(
            model="m",
            store=False,
            input=[
                user(THINK_CALL),
                *first.output,
                {"type": "function_call_output", "call_id": call["call_id"], "output": "cold"},
                user("say: it is cold"),
            ],
            tools=TOOLS,
            reasoning={"effort": "low"},
        )
    assert texts(second) == "it is cold"
    if bridge.signed:
        sent = orjson.dumps(fake.requests[-1]).decode()
        assert all(sig in sent for sig in fake.issued_signatures)


@pytest.mark.parametrize("bridge", [b for b in BRIDGES if b.signed], ids=lambda b: b.name)
async def test_a_tampered_signature_is_refused_by_the_provider(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        first = await gw.responses(
            model="m", input=THINK_CALL, tools=TOOLS, store=False, reasoning={"effort": "low"}
        )
        [call] = calls(first)
        output = [
            {**item, "encrypted_content": item["encrypted_content"][:-4] + "AAAA"}
            if item["type"] == "reasoning"
            else item
            for item in first.output
        ]
        with pytest.raises(SluicegateError) as info:
            await gw.responses(
                model="m",
                store=False,
                input=[
                    user(THINK_CALL),
                    *output,
                    {"type": "function_call_output", "call_id": call["call_id"], "output": "x"},
                    user("say: no"),
                ],
                tools=TOOLS,
                reasoning={"effort": "low"},
            )
    assert info.value.status_code == 400


# -- output controls ------------------------------------------------------------------------------


async def test_structured_output(bridge: Bridge, autojump_clock: trio.abc.Clock) -> None:
    fake = bridge.make()
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    async with gateway(bridge, fake) as gw:
        response = await gw.responses(
            model="m",
            input="json: the answer",
            text={
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "schema": schema,
                    "strict": True,
                }
            },
        )
    assert orjson.loads(texts(response)) == {"answer": 42}
    assert "answer" in orjson.dumps(fake.requests[0]).decode()
    assert response.to_dict()["text"]["format"]["type"] == "json_schema"


async def test_length_cut_off_is_incomplete(bridge: Bridge, autojump_clock: trio.abc.Clock) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        events = await collect(
            gw, model="m", input="long: a b c d e f", max_output_tokens=16, stream=True
        )
        response = await gw.get_response(
            sluicegate.Response.from_dict(events[-1].to_dict()["response"]).id
        )
    check_sequence(events)
    assert events[-1].type == "response.incomplete"
    assert response.status is ResponseStatus.INCOMPLETE
    assert response.incomplete_details == {"reason": "max_output_tokens"}


async def test_mid_stream_provider_error_ends_in_one_failed_event(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        events = await collect(gw, model="m", input="fail: some words first", stream=True)
        check_sequence(events)
        assert events[-1].type == "response.failed"
        final = events[-1].to_dict()["response"]
        assert final["error"]["code"] in ("server_error", "rate_limit_exceeded")
        stored = await gw.get_response(final["id"])
        assert stored.status is ResponseStatus.FAILED
        [log] = await gw.spend_logs()
        assert log.status == "failed"


async def test_unbridgeable_features_are_refused_before_any_call(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="m", input="say: x", tools=[{"type": "web_search"}])
        assert info.value.param == "tools[0]"
        assert info.value.code == "unsupported_parameter"
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="m", input="say: x", truncation="auto")
        assert info.value.param == "truncation"
        # A field the gateway does not know: a native upstream would get it, a bridge cannot.
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="m", input="say: x", client_metadata={"originator": "cli"})
        assert (info.value.param, info.value.code) == ("client_metadata", "unsupported_parameter")
    assert fake.requests == []


async def test_drop_params_drops_and_says_which(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake, drop_params=True) as gw:
        response = await gw.responses(
            model="m",
            input="say: fine",
            tools=[*TOOLS, {"type": "web_search"}],
            client_metadata={"originator": "cli"},
        )
    assert texts(response) == "fine"
    assert response.to_dict()["sluicegate"] == {"dropped_params": ["client_metadata", "tools[2]"]}
    sent = orjson.dumps(fake.requests[0]).decode()
    assert "web_search" not in sent and "client_metadata" not in sent and "originator" not in sent


async def test_input_paths_count_from_the_callers_input_not_the_stored_history(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        first = await gw.responses(model="m", input="say: one")
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(
                model="m",
                previous_response_id=first.id,
                input=[
                    user("say: two"),
                    {"type": "local_shell_call", "call_id": "c1", "action": {}},
                ],
            )
    assert info.value.param == "input[1]"
    assert len(fake.requests) == 1


async def test_a_native_deployment_continues_a_bridged_conversation(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    """The native upstream knows nothing of a bridged response: it gets the stored items as
    input (without the gateway's item IDs and reasoning envelopes), not the ID."""
    fake = bridge.make()
    bridged = mock_transport(fake)
    native_bodies: list[dict[str, Any]] = []

    async def route(request: httpx.Request) -> httpx.Response:
        if request.url.host != "native.test":
            return await bridged.handle_async_request(request)
        body = orjson.loads(await request.aread())
        native_bodies.append(body)
        answer = build_response(
            body,
            response_id="resp_native1",
            message_id="msg_n1",
            created_at=1,
            completed_at=2,
            tokens=2,
        )
        return httpx.Response(200, json=answer)

    cfg = config(bridge)
    cfg["model_list"].append(
        {
            "model_name": "native",
            "litellm_params": {
                "model": "openai/gpt-5.4",
                "api_base": "http://native.test/v1",
                "api_key": "sk-native",
            },
            "model_info": {"id": "native-1"},
        }
    )
    async with sluicegate.open_gateway(cfg, transport=httpx.MockTransport(route)) as gw:
        first = await gw.responses(model="m", input="say: remember me")
        second = await gw.responses(
            model="native", previous_response_id=first.id, input="what did I say?"
        )
    assert second.status is ResponseStatus.COMPLETED
    [sent] = native_bodies
    assert "previous_response_id" not in sent
    texts_sent = [
        part["text"] for item in sent["input"] for part in item["content"] if "text" in part
    ]
    assert texts_sent == ["say: remember me", "remember me", "what did I say?"]
    assert all("id" not in item for item in sent["input"])


# -- faults ---------------------------------------------------------------------------------------


async def test_retriable_errors_are_retried_before_the_first_byte(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    fake.faults.extend(
        [Fault(status=429, headers={"retry-after": "3"}), Fault(status=bridge.overloaded)]
    )
    async with gateway(bridge, fake) as gw:
        start = trio.current_time()
        response = await gw.responses(model="m", input="say: patience")
    assert texts(response) == "patience"
    assert len(fake.requests) == 3
    assert trio.current_time() - start >= 3.0  # Retry-After was honoured


async def test_provider_errors_keep_their_status(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    fake.faults.append(Fault(status=400))
    async with gateway(bridge, fake) as gw:
        with pytest.raises(SluicegateError) as info:
            await gw.responses(model="m", input="say: x")
        assert info.value.status_code == 400
        fake.faults.extend([Fault(status=429)] * 3)
        with pytest.raises(SluicegateError) as info:
            await gw.responses(model="m", input="say: x")
        assert info.value.status_code == 429


@pytest.mark.parametrize(
    "fault", [Fault(reset_after=4), Fault(malformed=True)], ids=["reset", "malformed"]
)
async def test_broken_streams_end_failed_and_are_recorded(
    bridge: Bridge, fault: Fault, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    fake.faults.append(fault)
    async with gateway(bridge, fake) as gw:
        events = await collect(gw, model="m", input="say: a b c d e f g h i j", stream=True)
        check_sequence(events)
        assert events[-1].type == "response.failed"
        stored = await gw.get_response(events[-1].to_dict()["response"]["id"])
        assert stored.status is ResponseStatus.FAILED


async def test_a_stalled_provider_times_out(bridge: Bridge, autojump_clock: trio.abc.Clock) -> None:
    fake = bridge.make()
    fake.faults.append(Fault(stall=120.0))
    cfg = config(bridge)
    cfg["router_settings"] |= {"first_byte_timeout": 5.0, "num_retries": 0}
    async with sluicegate.open_gateway(cfg, transport=mock_transport(fake)) as gw:
        start = trio.current_time()
        with pytest.raises(SluicegateError) as info:
            await gw.responses(model="m", input="say: x")
    assert info.value.status_code == 504
    assert trio.current_time() - start == pytest.approx(5.0)


# -- lifecycle ------------------------------------------------------------------------------------


async def test_get_delete_and_input_items_come_from_the_store(
    bridge: Bridge, autojump_clock: trio.abc.Clock
) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        made = await gw.responses(model="m", input="say: keep me", metadata={"k": "v"})
        got = await gw.get_response(made.id)
        assert got.to_dict()["output"] == made.to_dict()["output"]
        assert got.status is ResponseStatus.COMPLETED
        items = await gw.list_input_items(made.id)
        assert [i["content"][0]["text"] for i in items["data"]] == ["say: keep me"]
        assert (await gw.delete_response(made.id))["deleted"] is True
        with pytest.raises(NotFoundError):
            await gw.get_response(made.id)
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="m", previous_response_id=made.id, input="say: again")
        assert info.value.code == "previous_response_not_found"
    assert len(fake.requests) == 1  # nothing of the lifecycle went to the provider


async def test_background_and_cancel(bridge: Bridge, autojump_clock: trio.abc.Clock) -> None:
    fake = bridge.make()
    async with gateway(bridge, fake) as gw:
        queued = await gw.responses(model="m", input="say: later on", background=True)
        assert queued.status is ResponseStatus.QUEUED
        await trio.sleep(1)
        done = await gw.get_response(queued.id)
        assert done.status is ResponseStatus.COMPLETED
        assert texts(done) == "later on"
        fake.faults.append(Fault(stall=600.0))
        slow = await gw.responses(model="m", input="say: never", background=True)
        cancelled = await gw.cancel_response(slow.id)
        assert cancelled.status is ResponseStatus.CANCELLED


async def test_faults_over_a_real_socket(bridge: Bridge) -> None:
    """The same faults on loopback: an overloaded answer retried, a connection reset
    mid-stream (an RST) ending the response failed, and the next request served."""
    fake = bridge.make()
    fake.faults.append(Fault(status=bridge.overloaded))
    async with trio.open_nursery() as nursery:
        base = await nursery.start(serve_loopback, fake)
        path = bridge.api_base.split("://", 1)[1].partition("/")[2]
        cfg = config(bridge, api_base=f"{base}/{path}".rstrip("/"))
        cfg["router_settings"] |= {"retry_backoff_initial": 0.01}
        async with sluicegate.open_gateway(cfg) as gw:
            retried = await gw.responses(model="m", input="say: after a retry")
            assert texts(retried) == "after a retry"
            fake.faults.append(Fault(reset_after=3))
            events = await collect(gw, model="m", input="say: a b c d e f g h", stream=True)
            check_sequence(events)
            assert events[-1].type == "response.failed"
            again = await gw.responses(model="m", input="say: still here")
            assert texts(again) == "still here"
        nursery.cancel_scope.cancel()
    assert len(fake.requests) == 4


# -- the proxy and the official SDK ---------------------------------------------------------------


async def test_the_openai_sdk_through_the_proxy_on_loopback(bridge: Bridge) -> None:
    fake = bridge.make()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(serve_loopback, fake)
        path = bridge.api_base.split("://", 1)[1].partition("/")[2]
        app = build_app(
            config(
                bridge,
                api_base=f"{base}/{path}".rstrip("/"),
                master_key="sk-master-bridges",
                graceful_shutdown_timeout=2,
                drop_params=True,
            )
        )
        stop = trio.Event()
        binds = await nursery.start(
            lambda task_status: serve(
                app, host="127.0.0.1", port=0, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        client = openai.AsyncOpenAI(
            base_url=f"{binds[0]}/v1", api_key="sk-master-bridges", max_retries=0
        )
        tools: Any = TOOLS  # the SDK's TypedDicts; plain dicts are what a client sends
        try:
            first = await client.responses.create(
                model="m", input=THINK_CALL, tools=tools, reasoning={"effort": "low"}
            )
            [call] = [item for item in first.output if item.type == "function_call"]
            kinds: list[str] = []
            follow_up: Any = [
                {"type": "function_call_output", "call_id": call.call_id, "output": "warm"},
                {"role": "user", "content": "say: it is warm"},
            ]
            async with await client.responses.create(
                model="m",
                previous_response_id=first.id,
                input=follow_up,
                tools=tools,
                reasoning={"effort": "low"},
                stream=True,
            ) as stream:
                async for event in stream:
                    kinds.append(event.type)
            assert kinds[-1] == "response.completed"
            again = await client.responses.retrieve(first.id)
            assert again.output_text == first.output_text
            raw = await client.responses.with_raw_response.create(
                model="m",
                input="say: ok",
                tools=[{"type": "web_search"}],
            )
            assert raw.headers["x-sluicegate-dropped-params"] == "tools[0]"
            custom_tools: Any = CUSTOM_TOOLS
            deltas: list[str] = []
            output: list[Any] = []
            async with await client.responses.create(
                model="m", input=PATCH_CALL, tools=custom_tools, stream=True
            ) as stream:
                async for event in stream:
                    if event.type == "response.custom_tool_call_input.delta":
                        deltas.append(event.delta)
                    elif event.type == "response.completed":
                        output = event.response.output
            [patch] = [item for item in output if item.type == "custom_tool_call"]
            assert patch.input == "".join(deltas) == PATCH
        finally:
            await client.close()
            stop.set()
            nursery.cancel_scope.cancel()
