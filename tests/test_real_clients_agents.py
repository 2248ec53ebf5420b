"""The OpenAI Agents SDK (``openai-agents``), unchanged, against the proxy on loopback: a function
tool, a handoff, structured output, ``ModelSettings.extra_body`` and a ``store=False`` run; and
the same SDK over its Responses WebSocket transport (the proxy's WebSocket mode): the tool loop on
one connection, ``store=False`` runs, structured output.

The Agents SDK runs on asyncio, so each scenario runs in its own event loop on a worker thread
while trio serves the proxy and the fake accounts (``tests/real_clients.py``) on this one.
Tracing is off: nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

import httpx
import openai
import pydantic
import pytest
import trio
from agents import (
    Agent,
    ModelSettings,
    OpenAIProvider,
    OpenAIResponsesModel,
    ResponsesWebSocketSession,
    RunConfig,
    Runner,
    function_tool,
    responses_websocket_session,
    set_tracing_disabled,
)
from agents.models.openai_responses import ResponsesWebSocketError
from agents.result import RunResultBase

from .real_clients import MASTER, Stack, account_of, running_stack

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


# -- WebSocket mode (docs/websocket.md) -----------------------------------------------------
#
# The Agents SDK's WebSocket transport for the Responses API, turned on as a user turns it on
# with a custom endpoint: ``responses_websocket_session(base_url=..., api_key=...)``, or an
# ``OpenAIProvider(use_responses_websocket=True)`` in the run's ``RunConfig``. Each model turn is
# a ``response.create`` message on the proxy's ``GET /v1/responses`` WebSocket; the stack's
# deployments are not marked ``websocket: true``, so the gateway runs each one over HTTP
# upstream, through the same pipeline as a streamed ``POST /v1/responses``.


async def in_asyncio_ws(
    stack: Stack, scenario: Callable[[ResponsesWebSocketSession], Awaitable[T]]
) -> T:
    """Run ``scenario`` with a WebSocket session of the proxy in a fresh asyncio loop on a
    thread; the session (and its socket) is closed before the loop ends."""

    async def main() -> T:
        set_tracing_disabled(True)
        async with responses_websocket_session(api_key=MASTER, base_url=stack.base_url) as session:
            return await scenario(session)

    return await trio.to_thread.run_sync(lambda: asyncio.run(main()))


async def proxy_get(stack: Stack, path: str) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=30
    ) as http:
        return await http.get(path)


async def assert_one_socket_carried(stack: Stack, responses: int, *, status: str = "200") -> None:
    """One WebSocket handshake, accepted, carried ``responses`` ``response.create`` messages
    that ended with ``status``; none of them came over ``POST /v1/responses``."""
    metrics = (await proxy_get(stack, "/metrics")).text
    assert 'sluicegate_websocket_connections_total{outcome="offered"} 1.0' in metrics
    assert 'sluicegate_websocket_connections_total{outcome="accepted"} 1.0' in metrics
    assert f'sluicegate_websocket_messages_total{{direction="in"}} {responses}.0' in metrics
    websocket = 'sluicegate_requests_total{route="/v1/responses",method="WEBSOCKET"'
    assert f'{websocket},status="{status}"}} {responses}.0' in metrics
    assert 'route="/v1/responses",method="POST"' not in metrics


def response_ids(result: RunResultBase) -> list[str]:
    ids = [response.response_id for response in result.raw_responses]
    assert all(isinstance(i, str) and i.startswith("resp_") for i in ids)
    return [i for i in ids if i is not None]


@pytest.mark.parametrize("chained", [False, True], ids=["full-input", "previous-response-id"])
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run-streamed"])
async def test_an_agent_calls_its_function_tool_over_websocket(
    stack: Stack, streamed: bool, chained: bool
) -> None:
    """The tool loop on one socket: the model's function call, the tool's output sent back
    (the whole conversation again, or chained by ``previous_response_id`` with only the
    output), the final answer. The ``pair`` group has a deployment on each of two accounts:
    the second turn replays (or continues) the first's reasoning, so it must reach the
    account that issued it."""
    calls: list[str] = []

    async def scenario(session: ResponsesWebSocketSession) -> tuple[Any, list[str], list[str]]:
        agent = Agent(
            name="forecaster",
            instructions="Answer with the weather tool.",
            tools=[weather_tool(calls)],
            model="pair",
        )
        question = "What is the weather in Paris?"
        kinds: list[str] = []
        result: RunResultBase
        if streamed:
            result = session.run_streamed(agent, question, auto_previous_response_id=chained)
            kinds = [event.type async for event in result.stream_events()]
        else:
            result = await session.run(agent, question, auto_previous_response_id=chained)
        return result.final_output, kinds, response_ids(result)

    final_output, kinds, (first_id, second_id) = await in_asyncio_ws(stack, scenario)
    assert calls == ["fake"]
    assert final_output == "The tool returned: sunny in fake"
    if streamed:
        assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    await assert_one_socket_carried(stack, 2)
    # Both turns on the account that issued the first one's reasoning.
    account = account_of(first_id)
    assert account_of(second_id) == account
    first, second = stack.creates(account)
    assert stack.creates() == [first, second]
    assert first["stream"] is True and first["tools"][0]["name"] == "get_weather"
    assert "previous_response_id" not in first
    [output] = items_of(second, "function_call_output")
    assert output["output"] == "sunny in fake"
    if chained:  # the upstream's own ID, never the gateway's; only the new input
        assert second["previous_response_id"] not in {first_id, second_id}
        assert second["input"] == [output]
    else:
        assert "previous_response_id" not in second
        assert [item.get("type") for item in second["input"]][-3:] == [
            "reasoning",
            "function_call",
            "function_call_output",
        ]
    # Recorded as any response, and retrievable over HTTP.
    got = [(await proxy_get(stack, f"/v1/responses/{i}")).json() for i in (first_id, second_id)]
    assert [g["status"] for g in got] == ["completed", "completed"]
    assert got[0]["output"][-1]["type"] == "function_call"
    assert got[1]["output"][-1]["content"][0]["text"] == final_output
    assert got[1].get("previous_response_id") == (first_id if chained else None)
    items = (await proxy_get(stack, f"/v1/responses/{second_id}/input_items")).json()
    assert "function_call_output" in [item["type"] for item in items["data"]]


async def test_a_store_false_run_over_websocket_replays_encrypted_reasoning(stack: Stack) -> None:
    """``store=False`` over the WebSocket transport: the SDK sends the whole conversation each
    turn, with the reasoning item's encrypted content, so the chain needs nothing kept; the
    replay must reach the issuing account. Nothing is kept by the proxy either."""
    calls: list[str] = []

    async def scenario(session: ResponsesWebSocketSession) -> tuple[Any, list[str]]:
        agent = Agent(
            name="stateless",
            instructions="Answer with the weather tool.",
            tools=[weather_tool(calls)],
            model="pair",
            model_settings=ModelSettings(
                store=False, response_include=["reasoning.encrypted_content"]
            ),
        )
        result = await session.run(agent, "What is the weather in Paris?")
        return result.final_output, response_ids(result)

    final_output, (first_id, second_id) = await in_asyncio_ws(stack, scenario)
    assert final_output == "The tool returned: sunny in fake"
    assert calls == ["fake"]
    await assert_one_socket_carried(stack, 2)
    account = account_of(first_id)
    assert account_of(second_id) == account
    bodies = stack.creates(account)
    assert stack.creates() == bodies and len(bodies) == 2
    assert all(body["store"] is False for body in bodies)
    assert all(body["include"] == ["reasoning.encrypted_content"] for body in bodies)
    assert all("previous_response_id" not in body for body in bodies)
    [replayed] = [item for body in bodies for item in items_of(body, "reasoning")]
    assert replayed["encrypted_content"].startswith("gAAAA")
    for response_id in (first_id, second_id):
        missing = await proxy_get(stack, f"/v1/responses/{response_id}")
        assert missing.status_code == 404


async def test_a_store_false_run_chained_by_previous_response_id_is_refused(
    stack: Stack,
) -> None:
    """``store=False`` with ``auto_previous_response_id``: the SDK chains the second turn to a
    response nothing kept. Its deployment runs over HTTP upstream (no ``websocket: true``), so
    the gateway refuses it as OpenAI does (docs/websocket.md, ``store: false`` chains): an
    ``error`` event, which the SDK raises; the socket stays open and nothing reaches the
    upstream."""
    calls: list[str] = []

    async def scenario(session: ResponsesWebSocketSession) -> ResponsesWebSocketError:
        agent = Agent(
            name="stateless",
            instructions="Answer with the weather tool.",
            tools=[weather_tool(calls)],
            model="pair",
            model_settings=ModelSettings(store=False),
        )
        try:
            await session.run(agent, "Weather in Paris?", auto_previous_response_id=True)
        except ResponsesWebSocketError as exc:
            return exc
        raise AssertionError("a store=False chain went on by previous_response_id")

    refused = await in_asyncio_ws(stack, scenario)
    assert calls == ["fake"]  # the first turn ran; its tool too
    assert refused.event_type == "error"
    assert (refused.code, refused.error_type) == (
        "previous_response_not_found",
        "invalid_request_error",
    )
    assert refused.payload.get("param") == "previous_response_id"
    assert refused.payload.get("status") == 400
    [first] = stack.creates()
    assert first["store"] is False
    metrics = (await proxy_get(stack, "/metrics")).text
    assert 'sluicegate_websocket_connections_total{outcome="accepted"} 1.0' in metrics
    websocket = 'sluicegate_requests_total{route="/v1/responses",method="WEBSOCKET"'
    assert f'{websocket},status="200"}} 1.0' in metrics
    assert f'{websocket},status="400"}} 1.0' in metrics


async def test_structured_output_over_websocket(stack: Stack) -> None:
    """An agent with an ``output_type``, its provider made WebSocket-capable directly
    (``OpenAIProvider(use_responses_websocket=True)``): the JSON schema goes in
    ``text.format``, the final output parses into the type, the response is recorded."""

    async def scenario() -> tuple[Any, list[str]]:
        set_tracing_disabled(True)
        provider = OpenAIProvider(
            api_key=MASTER, base_url=stack.base_url, use_responses_websocket=True
        )
        try:
            agent = Agent(
                name="forecaster",
                instructions="Give the forecast.",
                output_type=Forecast,
                model="pair",
            )
            result = await Runner.run(
                agent,
                "Will it rain in Paris tomorrow?",
                run_config=RunConfig(model_provider=provider),
            )
            return result.final_output, response_ids(result)
        finally:
            await provider.aclose()

    final_output, [response_id] = await trio.to_thread.run_sync(lambda: asyncio.run(scenario()))
    assert isinstance(final_output, Forecast)
    assert final_output.kind == "sunny"
    await assert_one_socket_carried(stack, 1)
    [body] = stack.creates(account_of(response_id))
    fmt = body["text"]["format"]
    assert (fmt["type"], fmt["name"], fmt["strict"]) == ("json_schema", "final_output", True)
    assert set(fmt["schema"]["properties"]) == {"city", "kind", "high_celsius", "advice"}
    got = (await proxy_get(stack, f"/v1/responses/{response_id}")).json()
    assert got["status"] == "completed"
    assert got["text"]["format"]["name"] == "final_output"
    assert Forecast.model_validate_json(got["output"][-1]["content"][0]["text"]) == final_output
