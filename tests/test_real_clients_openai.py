"""The official ``openai`` Python SDK, unchanged, against the proxy on loopback: the helpers real
applications use (``extra_body``, ``responses.parse``, ``responses.stream``, background resume,
tool turns over ``previous_response_id``, and stateless tool turns that replay encrypted
reasoning through a group of two deployments on two accounts). The upstreams are built-in
fakes that answer and refuse like real accounts (``tests/real_clients.py``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import openai
import pydantic
import pytest
from openai.types.responses import FunctionToolParam, ResponseCreatedEvent, ResponseIncludable

from .real_clients import MASTER, Stack, account_of, running_stack
from .sdk import sdk_response

WEATHER_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
ENCRYPTED: list[ResponseIncludable] = ["reasoning.encrypted_content"]


class Location(pydantic.BaseModel):
    city: str
    country_code: str


class Forecast(pydantic.BaseModel):
    location: Location
    kind: Literal["sunny", "cloudy", "rain"]
    high_celsius: int
    hourly: list[float]
    warning: str | None


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack() as running:
        yield running


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=stack.base_url, api_key=MASTER, max_retries=0, timeout=60
    ) as sdk:
        yield sdk


def weather(arguments: str) -> str:
    """The client's side of the tool: what it sends back as ``function_call_output``."""
    city = json.loads(arguments)["city"]
    return json.dumps({"city": city, "forecast": "sunny", "high": 21})


async def test_extra_body_fields_reach_the_native_upstream(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    """The SDK merges ``extra_body`` keys into the top level; the proxy passes the ones it does
    not know to a native upstream unchanged."""
    extra = {"x_experiment": {"arm": "b", "weight": 0.5}, "service_hint": "fast"}
    made = await client.responses.create(model="solo", input="hello", extra_body=extra)
    assert made.status == "completed" and made.output_text
    [body] = stack.creates("a")
    assert body["x_experiment"] == {"arm": "b", "weight": 0.5}
    assert body["service_hint"] == "fast"


async def test_parse_returns_the_pydantic_object(stack: Stack, client: openai.AsyncOpenAI) -> None:
    parsed = await client.responses.parse(
        model="solo", input="The forecast for Paris, please.", text_format=Forecast
    )
    forecast = parsed.output_parsed
    assert isinstance(forecast, Forecast)
    assert isinstance(forecast.location, Location)
    assert forecast.kind == "sunny"
    # What the SDK asked for: its strict schema of the model, nested models as $defs.
    [body] = stack.creates("a")
    fmt = body["text"]["format"]
    assert (fmt["type"], fmt["name"], fmt["strict"]) == ("json_schema", "Forecast", True)
    # A reasoning model reasons first; the SDK skips the item and parses the message.
    assert [item.type for item in parsed.output] == ["reasoning", "message"]


async def test_the_stream_helper_yields_every_event_and_the_final_response(
    client: openai.AsyncOpenAI,
) -> None:
    seen: list[Any] = []
    async with client.responses.stream(
        model="solo",
        input="The forecast for Paris, please.",
        text_format=Forecast,
        reasoning={"effort": "low", "summary": "auto"},
    ) as stream:
        async for event in stream:
            seen.append(event)
        final = await stream.get_final_response()
    types = [event.type for event in seen]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.reasoning_summary_text.delta" in types
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    text = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    assert text == final.output_text
    assert isinstance(final.output_parsed, Forecast)
    [reasoning, _] = final.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text


async def test_a_background_stream_resumes_after_a_sequence_number() -> None:
    async with (
        running_stack(tokens=30, token_delay=0.01) as stack,
        openai.AsyncOpenAI(base_url=stack.base_url, api_key=MASTER, max_retries=0) as client,
    ):
        stream = await client.responses.create(
            model="pair",
            input="A long answer, please.",
            background=True,
            stream=True,
            reasoning={"effort": "low", "summary": "auto"},
        )
        seen = []
        async for event in stream:
            seen.append(event)
            if len(seen) == 5:
                break
        await stream.close()
        created = seen[0]
        assert isinstance(created, ResponseCreatedEvent)
        response_id = created.response.id
        assert created.response.background is True
        resumed = await client.responses.retrieve(response_id, stream=True, starting_after=4)
        rest = [event async for event in resumed]
        events = seen + rest
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert rest[-1].type == "response.completed"
        final = rest[-1].response
        assert [item.type for item in final.output] == ["reasoning", "message"]
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text == final.output_text and len(text.split()) == 30
        polled = await client.responses.retrieve(response_id)
        assert (polled.status, polled.output_text) == ("completed", text)


async def test_a_tool_turn_continues_with_previous_response_id(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    """The model calls the function; the client sends only its output, naming the response: the
    proxy must take it back to the account that holds that response."""
    first = await client.responses.create(
        model="pair", input="What is the weather in Paris?", tools=[WEATHER_TOOL]
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "fake", "unit": "celsius"}
    output = weather(call.arguments)
    second = await client.responses.create(
        model="pair",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": output}],
        tools=[WEATHER_TOOL],
    )
    assert second.previous_response_id == first.id
    assert second.output_text == f"The tool returned: {output}"
    assert account_of(second.id) == account_of(first.id)
    sdk_response(second.model_dump(mode="json"))


async def test_stateless_tool_turns_replay_encrypted_reasoning_across_two_accounts(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    """``store=False`` with ``include=["reasoning.encrypted_content"]``: the client keeps the
    conversation and replays every output item (reasoning with its encrypted content, the
    function call) plus the function's output. The group has a deployment on each of two
    accounts, and an account refuses reasoning state another one issued, so every turn must go
    to the account that issued the state it carries."""
    conversation: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    turns = 20
    served: list[str] = []
    for turn in range(turns):
        called = await client.responses.create(
            model="pair",
            input=conversation,
            tools=[WEATHER_TOOL],
            store=False,
            include=ENCRYPTED,
            reasoning={"effort": "low"},
        )
        served.append(account_of(called.id))
        reasoning, call = called.output
        assert reasoning.type == "reasoning" and reasoning.encrypted_content
        assert call.type == "function_call"
        conversation += [item.model_dump(mode="json", exclude_none=True) for item in called.output]
        output = weather(call.arguments)
        conversation.append(
            {"type": "function_call_output", "call_id": call.call_id, "output": output}
        )
        answered = await client.responses.create(
            model="pair",
            input=conversation,
            tools=[WEATHER_TOOL],
            store=False,
            include=ENCRYPTED,
            reasoning={"effort": "low"},
        )
        assert answered.output_text == f"The tool returned: {output}", f"turn {turn}"
        served.append(account_of(answered.id))
        conversation += [
            item.model_dump(mode="json", exclude_none=True) for item in answered.output
        ]
        conversation.append({"role": "user", "content": f"And tomorrow ({turn})?"})
    bodies = stack.creates()
    assert len(bodies) == 2 * turns
    assert all(body["store"] is False for body in bodies)
    # Request n replays the n reasoning items before it, each the raw state of the account it
    # reached (the gateway's envelope is opened on the way): the fakes refuse anything else.
    replayed = [[i for i in body["input"] if i.get("type") == "reasoning"] for body in bodies]
    assert sorted(len(items) for items in replayed) == list(range(2 * turns))
    assert all(i["encrypted_content"].startswith("gAAAA") for items in replayed for i in items)
    assert len(set(served)) == 1, served
