"""The OpenAI Agents SDK (``openai-agents``), unchanged, against the proxy on loopback: a function
tool, a handoff, structured output, ``ModelSettings.extra_body`` and a ``store=False`` run.

The Agents SDK runs on asyncio, so each scenario runs in its own event loop on a worker thread
while trio serves the proxy and the fake accounts (``tests/real_clients.py``) on this one.
Tracing is off: nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

import openai
import pydantic
import pytest
import trio
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from .real_clients import MASTER, Stack, running_stack

T = TypeVar("T")


class Forecast(pydantic.BaseModel):
    city: str
    kind: Literal["sunny", "cloudy", "rain"]
    high_celsius: int
    advice: list[str]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack() as running:
        yield running


async def in_asyncio(stack: Stack, scenario: Callable[[openai.AsyncOpenAI], Awaitable[T]]) -> T:
    """Run ``scenario`` with an SDK client of the proxy in a fresh asyncio loop on a thread."""

    async def main() -> T:
        set_tracing_disabled(True)
        async with openai.AsyncOpenAI(
            base_url=stack.base_url, api_key=MASTER, max_retries=0, timeout=60
        ) as client:
            return await scenario(client)

    return await trio.to_thread.run_sync(lambda: asyncio.run(main()))


def weather_tool(calls: list[str]) -> Any:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: The city's name.
        """
        calls.append(city)
        return f"sunny in {city}"

    return get_weather


def items_of(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [i for i in body["input"] if isinstance(i, dict) and i.get("type") == kind]


async def test_an_agent_calls_its_function_tool_and_answers_streamed(stack: Stack) -> None:
    calls: list[str] = []

    async def scenario(client: openai.AsyncOpenAI) -> tuple[Any, list[str]]:
        agent = Agent(
            name="forecaster",
            instructions="Answer with the weather tool.",
            tools=[weather_tool(calls)],
            model=OpenAIResponsesModel("solo", client),
        )
        result = Runner.run_streamed(agent, "What is the weather in Paris?")
        kinds: list[str] = [event.type async for event in result.stream_events()]
        return result.final_output, kinds

    final_output, kinds = await in_asyncio(stack, scenario)
    assert calls == ["fake"]
    assert final_output == "The tool returned: sunny in fake"
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    first, second = stack.creates("a")
    assert first["stream"] is True and first["tools"][0]["name"] == "get_weather"
    [output] = items_of(second, "function_call_output")
    assert output["output"] == "sunny in fake"
    assert second["input"][-1] == output


async def test_a_handoff_to_an_agent_with_structured_output(stack: Stack) -> None:
    async def scenario(client: openai.AsyncOpenAI) -> tuple[str, Any]:
        model = OpenAIResponsesModel("pair", client)
        forecaster = Agent(
            name="forecaster",
            instructions="Give the forecast.",
            output_type=Forecast,
            model=model,
        )
        triage = Agent(
            name="triage",
            instructions="Hand weather questions to the forecaster.",
            handoffs=[forecaster],
            model=model,
        )
        result = await Runner.run(triage, "Will it rain in Paris tomorrow?")
        return result.last_agent.name, result.final_output

    last_agent, final_output = await in_asyncio(stack, scenario)
    assert last_agent == "forecaster"
    assert isinstance(final_output, Forecast)
    assert final_output.kind == "sunny"
    bodies = stack.creates()
    [first] = [body for body in bodies if "text" not in body]  # the triage agent's turn
    [second] = [body for body in bodies if "text" in body]
    [handoff] = first["tools"]
    assert handoff["name"] == "transfer_to_forecaster"
    fmt = second["text"]["format"]
    assert (fmt["type"], fmt["name"], fmt["strict"]) == ("json_schema", "final_output", True)
    [call] = items_of(second, "function_call")
    assert call["name"] == "transfer_to_forecaster"
    assert second["input"][-1]["type"] == "function_call_output"


async def test_model_settings_extra_body_and_verbosity_reach_the_upstream(stack: Stack) -> None:
    async def scenario(client: openai.AsyncOpenAI) -> Any:
        agent = Agent(
            name="plain",
            instructions="Be brief.",
            model=OpenAIResponsesModel("solo", client),
            model_settings=ModelSettings(
                extra_body={"x_agents_flag": {"on": True}},
                verbosity="low",
                metadata={"run": "extra-body"},
            ),
        )
        return (await Runner.run(agent, "Hello")).final_output

    final_output = await in_asyncio(stack, scenario)
    assert final_output.startswith("Sluicegate fake upstream")
    [body] = stack.creates("a")
    assert body["x_agents_flag"] == {"on": True}
    assert body["text"]["verbosity"] == "low"
    assert body["metadata"] == {"run": "extra-body"}


async def test_a_store_false_run_replays_encrypted_reasoning(stack: Stack) -> None:
    """``store=False`` keeps nothing upstream: the SDK replays the reasoning item, which a
    reasoning model only accepts with its encrypted content, so the run includes it. The group
    has a deployment on each of two accounts; the replay must reach the issuing one."""
    calls: list[str] = []

    async def scenario(client: openai.AsyncOpenAI) -> Any:
        agent = Agent(
            name="stateless",
            instructions="Answer with the weather tool.",
            tools=[weather_tool(calls)],
            model=OpenAIResponsesModel("pair", client),
            model_settings=ModelSettings(
                store=False, response_include=["reasoning.encrypted_content"]
            ),
        )
        return (await Runner.run(agent, "What is the weather in Paris?")).final_output

    final_output = await in_asyncio(stack, scenario)
    assert final_output == "The tool returned: sunny in fake"
    assert calls == ["fake"]
    bodies = stack.creates()
    assert len(bodies) == 2
    assert all(body["store"] is False for body in bodies)
    assert all(body["include"] == ["reasoning.encrypted_content"] for body in bodies)
    [replayed] = [item for body in bodies for item in items_of(body, "reasoning")]
    assert replayed["encrypted_content"].startswith("gAAAA")
