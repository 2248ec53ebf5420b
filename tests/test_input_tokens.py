"""Input token counts (``POST /v1/responses/input_tokens``; docs/input-tokens.md) through the proxy
with the official ``openai`` SDK's ``client.responses.input_tokens.count(...)``, against fakes
that speak each provider's real counting endpoint: the built-in native fake
(``/responses/input_tokens``), Anthropic (``/v1/messages/count_tokens``), Gemini
(``:countTokens``) and a vLLM-like chat server (``/tokenize``); plus the count-request builders
of the codecs, unit by unit.

Each fake counts as it counts a create's input usage, so a count made before a create must equal
that create's ``usage.input_tokens``: the count saw exactly what the create sent.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import openai
import orjson
import pytest
import trio

import sluicegate
from sluicegate.codecs import anthropic, chat_completions, gemini
from sluicegate.codecs._bridge import BridgeInput, conversation_items
from sluicegate.codecs.input_tokens import native_count_answer, native_count_request, read_count
from sluicegate.codecs.openai_responses import build_create_request
from sluicegate.config import Deployment, Secret, load_config
from sluicegate.errors import (
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from sluicegate.fake import FakeUpstream, open_fake_upstream
from sluicegate.fake import Fault as NativeFault
from sluicegate.server import build_app

from .bridge_fakes import Fault, mock_transport, serve_loopback
from .conftest import MEMORY_STORE, fake_config
from .fake_anthropic import FakeAnthropic
from .fake_chat import FakeChat
from .fake_gemini import FakeGemini
from .proxy_server import serving
from .test_asyncio import guest_fake, run

MASTER = "sk-master-input-tokens"
KEY_A = "sk-account-a"
KEY_B = "sk-account-b"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@attrs.frozen
class Stack:
    url: str
    #: The native fake's two accounts: ``a`` serves ``native`` and half of ``pair``.
    native: dict[str, FakeUpstream]
    anthropic: FakeAnthropic
    gemini: FakeGemini
    chat: FakeChat

    def client(self, key: str = MASTER) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def counts(self, account: str) -> list[dict[str, Any]]:
        """The bodies of the counts that reached a native account."""
        fake = self.native[account]
        return [r.json() for r in fake.requests if r.path.endswith("/responses/input_tokens")]


def _native(name: str, dep_id: str, fake: FakeUpstream, key: str) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {"model": "openai/gpt-4o", "api_base": fake.base_url, "api_key": key},
        "model_info": {"id": dep_id},
    }


def _config(a: FakeUpstream, b: FakeUpstream, ant: str, gem: str, chat: str) -> dict[str, Any]:
    def bridged(name: str, model: str, base: str, **more: Any) -> dict[str, Any]:
        params = {"model": model, "api_base": base, "api_key": "provider-key", **more}
        return {"model_name": name, "litellm_params": params, "model_info": {"id": name}}

    return {
        "model_list": [
            _native("native", "native-a", a, KEY_A),
            _native("pair", "pair-a", a, KEY_A),
            _native("pair", "pair-b", b, KEY_B),
            bridged("claude", "anthropic/claude-sonnet-4-5", ant),
            bridged("gem", "gemini/gemini-2.5-flash", gem),
            bridged("vllm", "hosted_vllm/llama-3.3-70b", f"{chat}/v1", count_tokens="tokenize"),
            bridged("groq", "chat/llama-3.3-70b", f"{chat}/v1"),
        ],
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "num_retries": 2,
            "retry_backoff_initial": 0.01,
            "retry_backoff_jitter": 0.0,
        },
        "general_settings": {
            "master_key": MASTER,
            "response_id_secret": "input-tokens-tests",
            "store": MEMORY_STORE,
            "graceful_shutdown_timeout": 2,
        },
    }


@asynccontextmanager
async def running() -> AsyncIterator[Stack]:
    ant, gem, chat = FakeAnthropic(), FakeGemini(), FakeChat()
    async with (
        open_fake_upstream(tokens=6, api_key=KEY_A) as a,
        open_fake_upstream(tokens=6, api_key=KEY_B) as b,
        trio.open_nursery() as nursery,
    ):
        ant_url: str = await nursery.start(serve_loopback, ant)
        gem_url: str = await nursery.start(serve_loopback, gem)
        chat_url: str = await nursery.start(serve_loopback, chat)
        async with serving(build_app(_config(a, b, ant_url, gem_url, chat_url))) as url:
            yield Stack(url, {"a": a, "b": b}, ant, gem, chat)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running() as running_stack:
        yield running_stack


# -- native -----------------------------------------------------------------------------------


async def test_native_count_is_the_upstreams_and_matches_the_create(stack: Stack) -> None:
    async with stack.client() as client:
        counted = await client.responses.input_tokens.count(
            model="native",
            instructions="You answer in one short line.",
            input="What is the weather like in Paris today?",
            tools=[WEATHER],  # type: ignore[list-item]
        )
        created = await client.responses.create(
            model="native",
            instructions="You answer in one short line.",
            input="What is the weather like in Paris today?",
        )
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == 14
    assert created.usage is not None and created.usage.input_tokens == counted.input_tokens
    (sent,) = stack.counts("a")
    # The deployment's model, the caller's fields as given, nothing streamed.
    assert sent["model"] == "gpt-4o"
    assert sent["tools"] == [WEATHER]
    assert "stream" not in sent
    requests = stack.native["a"].requests
    assert requests[0].path == "/v1/responses/input_tokens"
    assert requests[0].headers["authorization"] == f"Bearer {KEY_A}"


async def test_native_previous_response_id_is_pinned_and_sent_raw(stack: Stack) -> None:
    """A native upstream continues its own conversation by its raw ID: the count goes to the
    deployment (account) that made the response, in a group of two accounts, every time."""
    async with stack.client() as client:
        first = await client.responses.create(model="pair", input="Tell me about the sea.")
        made_by = "a" if stack.native["a"].requests else "b"
        assert [r.path for r in stack.native[made_by].requests] == ["/v1/responses"]
        for _ in range(6):
            counted = await client.responses.input_tokens.count(
                model="pair", previous_response_id=first.id, input="And the mountains?"
            )
            assert first.usage is not None
            # The fake counts the previous turn's whole usage, then the new words.
            assert counted.input_tokens == first.usage.total_tokens + 3
    other = "b" if made_by == "a" else "a"
    assert stack.counts(other) == []
    sent = stack.counts(made_by)
    assert len(sent) == 6
    assert all(s["previous_response_id"].startswith("resp_") for s in sent)
    assert all(s["previous_response_id"] != first.id for s in sent)  # the upstream's own ID


async def test_native_retries_a_429_and_a_500_as_other_calls(stack: Stack) -> None:
    fake = stack.native["a"]
    fake.script(NativeFault.status(429), NativeFault.status(500))
    async with stack.client() as client:
        counted = await client.responses.input_tokens.count(model="native", input="one two three")
    assert counted.input_tokens == 3
    assert len(stack.counts("a")) == 3


async def test_native_errors_pass_through_and_a_malformed_answer_is_a_502(stack: Stack) -> None:
    fake = stack.native["a"]
    fake.script(*[NativeFault.status(500)] * 3)
    async with stack.client() as client:
        with pytest.raises(openai.InternalServerError) as failed:
            await client.responses.input_tokens.count(model="native", input="hi")
        assert failed.value.status_code == 500
        assert len(stack.counts("a")) == 3  # the first attempt and num_retries: 2
        # Malformed data is not retried at the same deployment (as for a create).
        fake.script(NativeFault.malformed_sse(0))
        with pytest.raises(openai.APIStatusError) as malformed:
            await client.responses.input_tokens.count(model="native", input="hi")
        assert malformed.value.status_code == 502
        assert malformed.value.code == "upstream_protocol_error"
        assert len(stack.counts("a")) == 4
        # The fake's own refusal, passed on as it came.
        reasoning: Any = [{"type": "reasoning", "summary": []}]  # replayed without its ID
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.input_tokens.count(model="native", input=reasoning)
        assert refused.value.param == "input[0].id"


# -- bridged ----------------------------------------------------------------------------------


async def test_anthropic_counts_at_count_tokens_with_the_creates_mapping(stack: Stack) -> None:
    async with stack.client() as client:
        counted = await client.responses.input_tokens.count(
            model="claude",
            instructions="Be brief.",
            input="say: the sky is blue",
            tools=[WEATHER],  # type: ignore[list-item]
            reasoning={"effort": "low"},
        )
        created = await client.responses.create(
            model="claude", instructions="Be brief.", input="say: the sky is blue"
        )
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == 7
    assert created.usage is not None and created.usage.input_tokens == counted.input_tokens
    assert stack.anthropic.paths[0] == "/v1/messages/count_tokens"
    sent = stack.anthropic.requests[0]
    assert sent["system"] == "Be brief."
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tools"][0]["input_schema"] == WEATHER["parameters"]
    assert sent["thinking"]["budget_tokens"] == 2048  # reasoning.effort, mapped as a create
    assert "max_tokens" not in sent and "stream" not in sent


async def test_gemini_counts_with_count_tokens(stack: Stack) -> None:
    async with stack.client() as client:
        counted = await client.responses.input_tokens.count(
            model="gem", instructions="Be brief.", input="say: green grass grows"
        )
        created = await client.responses.create(
            model="gem", instructions="Be brief.", input="say: green grass grows"
        )
    assert counted.input_tokens == 6
    assert created.usage is not None and created.usage.input_tokens == counted.input_tokens
    assert stack.gemini.paths[0] == "/v1beta/models/gemini-2.5-flash:countTokens"
    inner = stack.gemini.requests[0]["generateContentRequest"]
    assert inner["model"] == "models/gemini-2.5-flash"
    assert inner["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert inner["contents"][0]["parts"] == [{"text": "say: green grass grows"}]


async def test_vllm_counts_at_tokenize_and_other_chat_servers_cannot(stack: Stack) -> None:
    async with stack.client() as client:
        counted = await client.responses.input_tokens.count(
            model="vllm", instructions="Be brief.", input="say: hello there"
        )
        created = await client.responses.create(
            model="vllm", instructions="Be brief.", input="say: hello there"
        )
        assert counted.input_tokens == 5
        assert created.usage is not None and created.usage.input_tokens == counted.input_tokens
        assert stack.chat.paths[0] == "/tokenize"  # the server's root, beside /v1
        assert set(stack.chat.requests[0]) == {"model", "messages"}
        before = len(stack.chat.requests)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.input_tokens.count(model="groq", input="say: hi")
    assert refused.value.code == "unsupported_parameter"
    assert refused.value.param == "model"
    assert "count_tokens: tokenize" in refused.value.message
    assert len(stack.chat.requests) == before  # nothing was sent


async def test_a_bridged_previous_response_is_replayed_from_the_store(stack: Stack) -> None:
    async with stack.client() as client:
        first = await client.responses.create(model="claude", input="say: waves are loud")
        counted = await client.responses.input_tokens.count(
            model="claude", previous_response_id=first.id, input="say: and quiet"
        )
    # The stored conversation, then the new input: what the next create would send.
    sent = stack.anthropic.requests[-1]
    assert stack.anthropic.paths[-1] == "/v1/messages/count_tokens"
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"][0]["text"] == "waves are loud"
    assert counted.input_tokens == 4 + 3 + 3


async def test_conversations_are_resolved_as_a_create_resolves_them(stack: Stack) -> None:
    """A conversation the gateway holds is counted before the input (and gains nothing from
    the count); one a native upstream holds is counted there, under its raw ID."""
    async with stack.client() as client:
        held = await client.conversations.create(
            items=[{"role": "user", "content": "say: remember the blue door"}]
        )
        counted = await client.responses.input_tokens.count(
            model="claude", conversation=held.id, input="say: which door"
        )
        assert counted.input_tokens == 5 + 3
        texts = [b["text"] for m in stack.anthropic.requests[-1]["messages"] for b in m["content"]]
        assert texts == ["say: remember the blue door", "say: which door"]
        items = await client.conversations.items.list(held.id)
        assert len(items.data) == 1  # a count appends nothing
        native = await client.conversations.create(extra_body={"model": "native"})
        await client.responses.input_tokens.count(
            model="native", conversation=native.id, input="which door"
        )
    sent = stack.counts("a")[-1]
    assert sent["conversation"].startswith("conv_") and sent["conversation"] != native.id


async def test_bridged_faults_are_retried_and_a_malformed_count_is_a_502(stack: Stack) -> None:
    stack.anthropic.faults.append(Fault(status=529))
    stack.gemini.faults.append(Fault(status=429, headers={"retry-after": "0"}))
    async with stack.client() as client:
        assert (await client.responses.input_tokens.count(model="claude", input="a b")).input_tokens
        assert (await client.responses.input_tokens.count(model="gem", input="a b")).input_tokens
        stack.chat.faults.append(Fault(malformed=True))
        with pytest.raises(openai.APIStatusError) as malformed:
            await client.responses.input_tokens.count(model="vllm", input="say: hi")
        stack.chat.faults.append(Fault(status=400))
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.input_tokens.count(model="vllm", input="say: hi")
    assert stack.anthropic.paths == ["/v1/messages/count_tokens"] * 2
    assert stack.gemini.paths == ["/v1beta/models/gemini-2.5-flash:countTokens"] * 2
    assert malformed.value.status_code == 502
    assert malformed.value.code == "upstream_protocol_error"
    assert "Injected fault." in refused.value.message  # the provider's refusal, passed on
    assert stack.chat.paths == ["/tokenize"] * 2


# -- the door: models, keys, parameters -------------------------------------------------------


async def test_unknown_models_and_keys_are_refused_as_a_create_refuses_them(stack: Stack) -> None:
    async with stack.client() as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.responses.input_tokens.count(model="nope", input="hi")
        with pytest.raises(openai.NotFoundError) as created:
            await client.responses.create(model="nope", input="hi")
        assert unknown.value.code == created.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as missing:
            await client.responses.input_tokens.count(input="hi")
        assert missing.value.param == "model"
        with pytest.raises(openai.BadRequestError) as typed:
            await client.responses.input_tokens.count(model="native", input=7)  # type: ignore[arg-type]
        assert typed.value.param == "input"
        with pytest.raises(openai.BadRequestError) as streamed:
            await client.responses.input_tokens.count(
                model="native", input="hi", extra_body={"stream": True}
            )
        assert (streamed.value.param, streamed.value.code) == ("stream", "unknown_parameter")
        with pytest.raises(openai.APIStatusError) as forged:
            await client.responses.input_tokens.count(
                model="native", input="hi", previous_response_id="resp_forged"
            )
        with pytest.raises(openai.APIStatusError) as forged_create:
            await client.responses.create(
                model="native", input="hi", previous_response_id="resp_forged"
            )
        assert forged.value.status_code == forged_create.value.status_code
        assert forged.value.param == "previous_response_id"
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"authorization": f"Bearer {MASTER}"}
    ) as http:
        minted = await http.post("/key/generate", json={"models": ["native"], "rpm_limit": 2})
    key = minted.json()["key"]
    async with stack.client(key) as client:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.responses.input_tokens.count(model="claude", input="hi")
        assert denied.value.param == "model"
        assert stack.anthropic.requests == []
        # Admitted like a request: the refusal above took none of its two per minute.
        await client.responses.input_tokens.count(model="native", input="hi")
        await client.responses.input_tokens.count(model="native", input="hi")
        with pytest.raises(openai.RateLimitError):
            await client.responses.input_tokens.count(model="native", input="hi")
    assert len(stack.counts("a")) == 2


async def test_a_count_costs_nothing_and_is_metered_per_route(stack: Stack) -> None:
    async with stack.client() as client:
        await client.responses.input_tokens.count(model="native", input="a few words here")
    async with httpx.AsyncClient(base_url=stack.url) as http:
        metrics = (await http.get("/metrics")).text
    assert (
        'sluicegate_requests_total{route="/v1/responses/input_tokens",method="POST",status="200"} 1'
        in metrics
    )
    assert "sluicegate_tokens_total{" not in metrics  # no tokens counted, none spent


# -- the library ------------------------------------------------------------------------------


async def test_the_library_counts_and_records_nothing(autojump_clock: trio.abc.Clock) -> None:
    chat = FakeChat()
    config = {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {
                    "model": "hosted_vllm/llama",
                    "api_base": "http://vllm.test/v1",
                    "count_tokens": "tokenize",
                },
            }
        ],
        "general_settings": {"store": MEMORY_STORE},
    }
    async with sluicegate.open_gateway(
        config, transport=mock_transport(chat), rng=random.Random(1)
    ) as gw:
        counted = await gw.count_input_tokens(model="m", input="say: one two")
        assert counted == {"object": "response.input_tokens", "input_tokens": 3}
        with pytest.raises(InvalidRequestError) as streamed:
            await gw.count_input_tokens(model="m", input="x", stream=True)
        assert streamed.value.param == "stream"
        assert await gw.spend_logs() == []
    assert chat.paths == ["/tokenize"]


async def test_a_missing_count_endpoint_says_nothing_of_the_deployments_health() -> None:
    """An upstream without the endpoint (404) is no failure of the deployment, whose creates may
    be fine; a 500 is one. Either way the attempt is over: nothing stays in flight."""
    async with (
        open_fake_upstream() as fake,
        sluicegate.open_gateway(fake_config(fake, num_retries=0)) as gw,
    ):
        fake.script(NativeFault.status(404), NativeFault.status(500))
        with pytest.raises(UpstreamStatusError) as missing:
            await gw.count_input_tokens(model="gpt-test", input="hi")
        assert missing.value.status_code == 404
        (health,) = gw.statistics().deployments
        assert (health.requests, health.failures, health.in_flight) == (1, 0, 0)
        with pytest.raises(UpstreamStatusError) as failed:
            await gw.count_input_tokens(model="gpt-test", input="hi")
        assert failed.value.status_code == 500
        (health,) = gw.statistics().deployments
        assert (health.requests, health.failures, health.in_flight) == (2, 1, 0)
        assert (await gw.count_input_tokens(model="gpt-test", input="hi"))["input_tokens"] == 1


def test_the_library_counts_under_asyncio_too() -> None:
    async def main() -> None:
        async with (
            guest_fake(tokens=4) as fake,
            sluicegate.open_gateway(fake_config(fake)) as gw,
        ):
            assert gw.host is not None
            counted = await gw.count_input_tokens(model="gpt-test", input="four words right here")
            assert counted == {"object": "response.input_tokens", "input_tokens": 4}
            with pytest.raises(NotFoundError):
                await gw.count_input_tokens(model="missing", input="hi")

    run(main)


# -- the codecs' count requests ----------------------------------------------------------------


def _deployment(provider: str, model: str, api_base: str) -> Deployment:
    return Deployment(
        id="d1",
        model_name="m",
        provider=provider,
        model=model,
        api_base=api_base,
        api_key=Secret("provider-secret"),
    )


def _bridge_input(**body: Any) -> BridgeInput:
    items = conversation_items([], "say: hello world")  # the normal form the connector gives
    return BridgeInput(body=body, items=items, extra_query={"trace": "1"})


def test_anthropic_count_request_keeps_the_input_and_drops_what_shapes_the_answer() -> None:
    deployment = _deployment("anthropic", "claude-sonnet-4-5", "https://ant.test")
    built = anthropic.CODEC.build_request(
        deployment,
        _bridge_input(instructions="sys", temperature=0.5, max_output_tokens=99, user="u1"),
        stream=False,
        created_at=0,
    )
    request = anthropic.count_tokens_request(built.request)
    assert request.url == "https://ant.test/v1/messages/count_tokens"
    assert request.method == "POST"
    assert request.params == {"trace": "1"}
    assert request.headers["x-api-key"] == "provider-secret"
    assert request.headers["anthropic-version"] == anthropic.ANTHROPIC_VERSION
    assert isinstance(request.content, bytes)
    body = orjson.loads(request.content)
    assert body == {
        "model": "claude-sonnet-4-5",
        "system": "sys",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "say: hello world"}]}],
    }
    assert set(body) <= anthropic.COUNT_TOKENS_FIELDS


def test_gemini_count_request_wraps_the_generate_content_request() -> None:
    deployment = _deployment("gemini", "models/gemini-2.5-flash", "https://gem.test")
    built = gemini.CODEC.build_request(
        deployment, _bridge_input(instructions="sys", temperature=0.5), stream=False, created_at=0
    )
    request = gemini.count_tokens_request(built.request)
    assert request.url == "https://gem.test/v1beta/models/gemini-2.5-flash:countTokens"
    assert request.params == {"trace": "1"}
    assert request.headers["x-goog-api-key"] == "provider-secret"
    assert isinstance(request.content, bytes)
    inner = orjson.loads(request.content)["generateContentRequest"]
    assert inner["model"] == "models/gemini-2.5-flash"
    assert inner["systemInstruction"] == {"parts": [{"text": "sys"}]}
    assert inner["generationConfig"]["temperature"] == 0.5
    assert set(inner) - {"model"} <= gemini.COUNT_TOKENS_FIELDS


def test_tokenize_request_goes_to_the_servers_root() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    for base, root in [("http://vllm.test/v1", "http://vllm.test"), ("http://h/x", "http://h/x")]:
        deployment = _deployment("hosted_vllm", "llama", base)
        built = chat_completions.CODEC.build_request(
            deployment, _bridge_input(tools=tools, temperature=0.5), stream=False, created_at=0
        )
        request = chat_completions.tokenize_request(built.request)
        assert request.url == f"{root}/tokenize"
        assert request.headers["authorization"] == "Bearer provider-secret"
        assert isinstance(request.content, bytes)
        body = orjson.loads(request.content)
        assert list(body) == ["model", "messages", "tools"]
        assert body["tools"][0]["function"]["name"] == "f"


def test_azure_counts_on_either_route() -> None:
    v1 = _deployment("azure", "gpt-4o", "https://res.openai.azure.test")
    preview = attrs.evolve(v1, api_version="2025-04-01-preview")
    for deployment, url, params in [
        (v1, "https://res.openai.azure.test/openai/v1/responses/input_tokens", {}),
        (
            preview,
            "https://res.openai.azure.test/openai/responses/input_tokens",
            {"api-version": "2025-04-01-preview"},
        ),
    ]:
        request = native_count_request(build_create_request(deployment, {}, stream=False))
        assert (request.url, request.params) == (url, params)
        assert request.headers["api-key"] == "provider-secret"


def test_count_tokens_is_checked_at_load() -> None:
    def entry(model: str, **params: Any) -> dict[str, Any]:
        litellm = {"model": model, "api_base": "http://vllm.test/v1", **params}
        return {"model_list": [{"model_name": "m", "litellm_params": litellm}]}

    loaded = load_config(entry("hosted_vllm/llama", count_tokens="tokenize"))
    assert loaded.model_list[0].litellm_params.count_tokens == "tokenize"
    for bad, message in [
        (entry("hosted_vllm/llama", count_tokens="estimate"), "must be 'tokenize'"),
        (entry("anthropic/claude-sonnet-4-5", count_tokens="tokenize"), "Chat Completions"),
    ]:
        with pytest.raises(ConfigError) as refused:
            load_config(bad)
        assert refused.value.param == "model_list[0].litellm_params.count_tokens"
        assert message in refused.value.message


def test_native_count_request_and_answers() -> None:
    deployment = _deployment("openai", "gpt-4o", "https://api.openai.test/v1")
    create = build_create_request(
        deployment, {"input": "hi", "model": "g"}, stream=False, previous_raw_id="resp_raw"
    )
    request = native_count_request(create)
    assert request.url == "https://api.openai.test/v1/responses/input_tokens"
    assert isinstance(request.content, bytes)
    assert orjson.loads(request.content) == {
        "input": "hi",
        "model": "gpt-4o",
        "previous_response_id": "resp_raw",
    }
    answer = native_count_answer(b'{"object":"response.input_tokens","input_tokens":4,"x":1}')
    assert answer == {"object": "response.input_tokens", "input_tokens": 4, "x": 1}
    assert read_count(b'{"totalTokens": 9, "promptTokensDetails": []}', "totalTokens") == 9
    for bad in (b"{not json", b"[]", b'{"count": -1}', b'{"count": true}', b'{"count": "3"}'):
        with pytest.raises(UpstreamProtocolError):
            read_count(bad, "count")
