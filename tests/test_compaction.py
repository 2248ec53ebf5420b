"""Compaction through the proxy with the official SDK (docs/compaction.md):
``client.responses.compact(...)``, then ``client.responses.create(input=[*compacted.output,
new message])``.

Native deployments (the built-in fake, two accounts) compact upstream and their compaction item
is sealed for the deployment that made it; bridged ones (Anthropic, Gemini, a chat server) are
compacted by the gateway, whose envelope of the summary is expanded into a message on the next
turn. The fakes record what reached them, which is what most of these tests assert.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import openai
import pytest
import trio
from openai.types.responses import CompactedResponse, ResponseCompactionItem

from sluicegate.codecs.compaction import (
    COMPACTION_INSTRUCTIONS,
    COMPACTION_PREFIX,
    SUMMARY_PREAMBLE,
    CompactionSeal,
    expand_compaction,
    user_messages,
)
from sluicegate.codecs.ids import IdCodec
from sluicegate.codecs.sealed import ForgedState, StateSeal
from sluicegate.errors import InvalidRequestError
from sluicegate.fake import FakeUpstream, open_fake_upstream
from sluicegate.fake import Fault as NativeFault
from sluicegate.server import ProxyApp, build_app

from .bridge_fakes import FakeProvider, Fault, serve_loopback
from .conftest import MEMORY_STORE
from .fake_anthropic import FakeAnthropic
from .fake_chat import FakeChat
from .fake_gemini import FakeGemini
from .proxy_server import serving

MASTER = "sk-master-compaction-0123456789"
SECRET = "compaction-tests"
KEYS = {"a": "sk-account-a-0123456789", "b": "sk-account-b-0123456789"}
ACCOUNT_OF = {"solo-a": "a", "dep-a": "a", "dep-b": "b"}
PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}

#: Bridged groups: the group, the provider model, the path under the fake's base URL.
BRIDGES = {
    "ant": ("anthropic/claude-sonnet-4-5", "", FakeAnthropic),
    "gem": ("gemini/gemini-3-pro-preview", "", FakeGemini),
    "chat": ("chat/llama-3.3-70b", "/v1", FakeChat),
}


@attrs.frozen(kw_only=True)
class Stack:
    url: str
    app: ProxyApp
    native: dict[str, FakeUpstream]
    bridged: dict[str, Any]

    def native_requests(self, account: str, suffix: str) -> list[dict[str, Any]]:
        fake = self.native[account]
        return [r.json() for r in fake.requests if r.method == "POST" and r.path.endswith(suffix)]


def _native(group: str, dep_id: str, fake: FakeUpstream, key: str) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": "openai/gpt-5.4",
            "api_base": fake.base_url,
            "api_key": key,
            **PRICE,
        },
        "model_info": {"id": dep_id},
    }


def _bridged(group: str, model: str, base: str, *, drop: bool = False) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": model,
            "api_base": base,
            "api_key": "provider-key",
            "drop_params": drop,
            **PRICE,
        },
        "model_info": {"id": f"{group}-1"},
    }


@asynccontextmanager
async def running_stack() -> AsyncIterator[Stack]:
    bridged: dict[str, FakeProvider] = {name: make() for name, (_, _, make) in BRIDGES.items()}
    async with (
        open_fake_upstream(tokens=6, api_key=KEYS["a"]) as a,
        open_fake_upstream(tokens=6, api_key=KEYS["b"]) as b,
        trio.open_nursery() as nursery,
    ):
        bases = {name: await nursery.start(serve_loopback, fake) for name, fake in bridged.items()}
        models = [
            _native("solo", "solo-a", a, KEYS["a"]),
            _native("pair", "dep-a", a, KEYS["a"]),
            _native("pair", "dep-b", b, KEYS["b"]),
        ]
        for name, (model, path, _) in BRIDGES.items():
            models.append(_bridged(name, model, bases[name] + path))
        models.append(_bridged("ant-drop", BRIDGES["ant"][0], bases["ant"], drop=True))
        config = {
            "model_list": models,
            "router_settings": {
                "routing_strategy": "simple-shuffle",
                "retry_backoff_initial": 0.01,
                "retry_backoff_jitter": 0.0,
                "num_retries": 2,
            },
            "general_settings": {
                "master_key": MASTER,
                "response_id_secret": SECRET,
                "store": MEMORY_STORE,
                "graceful_shutdown_timeout": 2,
                "include_cost_in_streaming_usage": True,
            },
        }
        app = build_app(config)
        async with serving(app) as url:
            yield Stack(url=url, app=app, native={"a": a, "b": b}, bridged=bridged)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack() as running:
        yield running


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{stack.url}/v1", api_key=MASTER, max_retries=0, timeout=60
    ) as sdk:
        yield sdk


def account_of(response_id: str) -> str:
    return ACCOUNT_OF[IdCodec.from_secret(SECRET).decode(response_id).deployment_id]


def as_input(items: list[Any]) -> list[Any]:
    """Output items as a client passes them back. The SDK types a compaction's user messages
    as output messages (its union has no input message), so pydantic warns that their
    ``input_text`` parts are not ``output_text``; the values dumped are the ones received."""
    return [item.model_dump(exclude_none=True, warnings=False) for item in items]


def user_texts(compacted: CompactedResponse) -> list[str]:
    """The texts of a compaction's user messages (one text part each, here)."""
    texts: list[str] = []
    for item in compacted.output:
        if item.type == "message":
            assert item.role == "user"  # type: ignore[comparison-overlap]
            text = getattr(item.content[0], "text", None)
            assert isinstance(text, str)
            texts.append(text)
    return texts


def envelope_of(compacted: CompactedResponse) -> str:
    item = compacted.output[-1]
    assert isinstance(item, ResponseCompactionItem)
    return item.encrypted_content


CONVERSATION: list[Any] = [
    {"role": "user", "content": "We are planning a trip to Lisbon."},
    {"role": "assistant", "content": "Lovely. When, and on what budget?"},
    {"role": "user", "content": "say: Trip to Lisbon in May, budget 2000 euros."},
]


# -- native ----------------------------------------------------------------------------------


async def test_native_compaction_is_sealed_and_round_trips_to_its_deployment(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    compacted = await client.responses.compact(model="solo", input=CONVERSATION)
    assert compacted.object == "response.compaction"
    assert compacted.id.startswith("resp_") and account_of(compacted.id) == "a"
    kinds = [(item.type, getattr(item, "role", None)) for item in compacted.output]
    assert kinds == [("message", "user"), ("message", "user"), ("compaction", None)]
    item = compacted.output[-1]
    assert item.type == "compaction"
    # Sealed for its deployment: the provider's token is inside, never bare.
    assert item.encrypted_content.startswith("sgs1.")
    [sent] = stack.native_requests("a", "/responses/compact")
    assert sent["model"] == "gpt-5.4" and sent["input"] == CONVERSATION
    raw = item.encrypted_content.rsplit(".", 1)[1]
    assert raw.startswith("gAAAAA")
    assert compacted.usage.input_tokens > 0 and compacted.usage.output_tokens > 0

    follow = [*as_input(compacted.output), {"role": "user", "content": "And the hotel?"}]
    answer = await client.responses.create(model="solo", input=follow)
    assert answer.status == "completed"
    [create] = stack.native_requests("a", "/responses")
    # Unsealed on the way up: the account reads its own token (it refuses anything else).
    assert create["input"][2] == {**follow[2], "encrypted_content": raw}


async def test_in_a_two_account_group_the_next_turn_goes_where_it_was_compacted(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    for _ in range(3):
        compacted = await client.responses.compact(model="pair", input=CONVERSATION)
        account = account_of(compacted.id)
        follow = [*as_input(compacted.output), {"role": "user", "content": "Next?"}]
        for _ in range(3):
            answer = await client.responses.create(model="pair", input=follow)
            assert answer.status == "completed"
            assert account_of(answer.id) == account
    # Each account answered the turns after its own compactions only (the other would have
    # refused the token).
    for account in ("a", "b"):
        compactions = stack.native_requests(account, "/responses/compact")
        creates = stack.native_requests(account, "/responses")
        assert len(creates) == 3 * len(compactions)


async def test_an_altered_or_forged_compaction_is_refused(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    compacted = await client.responses.compact(model="solo", input=CONVERSATION)
    good = as_input(compacted.output)
    token = good[-1]["encrypted_content"]
    altered = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    forged_gateway = "sgc1." + "A" * 60
    for bad in (altered, forged_gateway):
        follow = [
            *good[:-1],
            {**good[-1], "encrypted_content": bad},
            {"role": "user", "content": "Hi"},
        ]
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model="solo", input=follow)
        error = refused.value.body
        assert isinstance(error, dict)
        assert error["param"] == "input[2].encrypted_content"
        assert error["code"] == "invalid_encrypted_content"
    assert stack.native_requests("a", "/responses") == []


async def test_previous_response_id_reaches_the_upstream_as_its_raw_id(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    first = await client.responses.create(model="pair", input="Plan a trip to Lisbon.")
    account = account_of(first.id)
    compacted = await client.responses.compact(model="pair", previous_response_id=first.id)
    assert account_of(compacted.id) == account
    [create] = stack.native_requests(account, "/responses")
    [sent] = stack.native_requests(account, "/responses/compact")
    raw_id = IdCodec.from_secret(SECRET).decode(first.id).raw_id
    assert sent["previous_response_id"] == raw_id and raw_id != first.id
    assert create["input"] == "Plan a trip to Lisbon."


async def test_compactions_are_accounted(stack: Stack, client: openai.AsyncOpenAI) -> None:
    native = await client.responses.compact(model="solo", input=CONVERSATION)
    bridged = await client.responses.compact(model="ant", input=CONVERSATION)
    gateway = stack.app.gateway
    assert gateway is not None
    rows = {row.response_id: row for row in await gateway.spend_logs()}
    for compacted, provider in ((native, "openai"), (bridged, "anthropic")):
        row = rows[compacted.id]
        assert row.provider == provider and row.status == "completed"
        assert row.input_tokens == compacted.usage.input_tokens > 0
        assert row.output_tokens == compacted.usage.output_tokens > 0
        expected = row.input_tokens * 1e-6 + row.output_tokens * 2e-6
        assert row.cost == pytest.approx(expected)
    # Only the accounting is kept: a compaction is not a response to retrieve.
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(native.id)


@pytest.mark.parametrize(
    "fault",
    [NativeFault.status(429), NativeFault.status(500), NativeFault.reset_mid_stream(1)],
    ids=["429", "500", "reset"],
)
async def test_a_failing_upstream_compaction_is_retried(
    stack: Stack, client: openai.AsyncOpenAI, fault: NativeFault
) -> None:
    stack.native["a"].script(fault)
    compacted = await client.responses.compact(model="solo", input=CONVERSATION)
    assert compacted.output[-1].type == "compaction"
    assert len(stack.native_requests("a", "/responses/compact")) == 2


async def test_a_malformed_upstream_compaction_is_a_502(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    stack.native["a"].script(NativeFault.malformed_sse(0))
    with pytest.raises(openai.APIStatusError) as failed:
        await client.responses.compact(model="solo", input=CONVERSATION)
    assert failed.value.status_code == 502
    gateway = stack.app.gateway
    assert gateway is not None
    # Recorded as a create no upstream answered would be: failed, nothing owed.
    [row] = await gateway.spend_logs()
    assert failed.value.response.headers["x-sluicegate-response-id"] == row.response_id
    assert (row.status, row.input_tokens, row.cost) == ("failed", 0, None)


async def test_context_management_passes_to_a_native_upstream_and_its_item_is_sealed(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    management: Any = [{"type": "compaction", "compact_threshold": 3}]
    first = await client.responses.create(
        model="pair",
        input=CONVERSATION,
        context_management=management,
        store=False,
        include=["reasoning.encrypted_content"],
    )
    account = account_of(first.id)
    [sent] = stack.native_requests(account, "/responses")
    assert sent["context_management"] == management
    item = first.output[0]
    assert item.type == "compaction" and item.encrypted_content.startswith("sgs1.")
    follow = [*CONVERSATION, *as_input(first.output), {"role": "user", "content": "More?"}]
    for _ in range(3):
        answer = await client.responses.create(model="pair", input=follow, store=False)
        assert account_of(answer.id) == account
    # The account got its own tokens back (it refuses any other), the compaction's among them.
    replayed = stack.native_requests(account, "/responses")[-1]["input"]
    [compaction] = [item for item in replayed if item.get("type") == "compaction"]
    assert compaction["encrypted_content"] == item.encrypted_content.rsplit(".", 1)[1]


async def test_the_fake_refuses_a_compaction_of_another_account(stack: Stack) -> None:
    """What the two-account test relies on: the native fake checks a replayed compaction as
    it checks replayed reasoning (only the account that compacted can read it)."""
    a, b = stack.native["a"], stack.native["b"]
    async with httpx.AsyncClient(timeout=30) as http:
        made = await http.post(
            f"{a.base_url}/responses/compact",
            json={"model": "gpt-5.4", "input": "hello"},
            headers={"authorization": f"Bearer {KEYS['a']}"},
        )
        compacted = made.json()
        assert compacted["object"] == "response.compaction"
        follow = [*compacted["output"], {"role": "user", "content": "next"}]
        for fake, key, status in ((a, KEYS["a"], 200), (b, KEYS["b"], 400)):
            answer = await http.post(
                f"{fake.base_url}/responses",
                json={"model": "gpt-5.4", "input": follow},
                headers={"authorization": f"Bearer {key}"},
            )
            assert answer.status_code == status
        assert answer.json()["error"]["code"] == "invalid_encrypted_content"


# -- bridged ---------------------------------------------------------------------------------


@pytest.mark.parametrize("group", list(BRIDGES))
async def test_a_bridged_conversation_is_compacted_by_the_gateway(
    stack: Stack, client: openai.AsyncOpenAI, group: str
) -> None:
    fake = stack.bridged[group]
    compacted = await client.responses.compact(model=group, input=CONVERSATION)
    summary = "Trip to Lisbon in May, budget 2000 euros."
    [summarising] = fake.requests
    # The model was asked for the summary, under the documented instruction.
    assert COMPACTION_INSTRUCTIONS in json.dumps(summarising)
    kinds = [item.type for item in compacted.output]
    assert kinds == ["message", "message", "compaction"]
    assert user_texts(compacted) == [CONVERSATION[0]["content"], CONVERSATION[2]["content"]]
    envelope = envelope_of(compacted)
    assert envelope.startswith("sgc1.") and "Lisbon" not in envelope
    assert compacted.usage.output_tokens > 0

    follow = [*as_input(compacted.output), {"role": "user", "content": "say: noted"}]
    answer = await client.responses.create(model=group, input=follow)
    assert answer.output_text == "noted"
    sent = json.dumps(fake.requests[-1])
    # The compaction came back as the summary, in a message the provider reads.
    assert SUMMARY_PREAMBLE in sent and summary in sent
    assert "sgc1." not in sent and COMPACTION_INSTRUCTIONS not in sent


@pytest.mark.parametrize("group", list(BRIDGES))
async def test_a_bridged_agent_conversation_with_tool_calls_is_compacted(
    stack: Stack, client: openai.AsyncOpenAI, group: str
) -> None:
    """Tool calls and their outputs are part of what the model summarises; only the user
    messages come back."""
    conversation: Any = [
        {"role": "user", "content": "What is the weather in Lisbon?"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Lisbon"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 24 C"},
        {"role": "assistant", "content": "Sunny and 24 C."},
        {"role": "user", "content": "say: Lisbon is sunny, 24 C."},
    ]
    compacted = await client.responses.compact(model=group, input=conversation)
    assert user_texts(compacted) == [conversation[0]["content"], conversation[4]["content"]]
    sent = json.dumps(stack.bridged[group].requests[-1])
    assert "sunny, 24 C" in sent and COMPACTION_INSTRUCTIONS in sent
    follow = [*as_input(compacted.output), {"role": "user", "content": "say: thanks"}]
    answer = await client.responses.create(model=group, input=follow)
    assert answer.output_text == "thanks"
    assert "Lisbon is sunny, 24 C." in json.dumps(stack.bridged[group].requests[-1])


async def test_the_callers_instructions_come_before_the_summarising_one(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    await client.responses.compact(
        model="ant", input=CONVERSATION, instructions="You are a travel agent."
    )
    system = stack.bridged["ant"].requests[-1]["system"]
    text = system if isinstance(system, str) else " ".join(part["text"] for part in system)
    assert text.index("You are a travel agent.") < text.index(COMPACTION_INSTRUCTIONS)


async def test_a_gateway_compaction_continues_at_a_native_deployment(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    compacted = await client.responses.compact(model="gem", input=CONVERSATION)
    follow = [*as_input(compacted.output), {"role": "user", "content": "And now?"}]
    await client.responses.create(model="solo", input=follow)
    [create] = stack.native_requests("a", "/responses")
    expanded = create["input"][2]
    assert expanded["role"] == "user"
    assert expanded["content"][0]["text"].startswith(SUMMARY_PREAMBLE)
    assert "Trip to Lisbon in May" in expanded["content"][0]["text"]


async def test_a_bridged_compaction_of_a_stored_conversation(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    first = await client.responses.create(model="chat", input="say: Lisbon, May, 2000 euros.")
    compacted = await client.responses.compact(model="chat", previous_response_id=first.id)
    assert user_texts(compacted) == ["say: Lisbon, May, 2000 euros."]
    assert compacted.output[-1].type == "compaction"
    # A compacted conversation carried on with previous_response_id: the stored compaction
    # item is expanded too.
    turn = await client.responses.create(
        model="chat", input=[*as_input(compacted.output), {"role": "user", "content": "say: ok"}]
    )
    again = await client.responses.create(
        model="chat", previous_response_id=turn.id, input="say: still here"
    )
    assert again.output_text == "still here"
    sent = json.dumps(stack.bridged["chat"].requests[-1])
    assert SUMMARY_PREAMBLE in sent and "sgc1." not in sent
    # Compacted again: the earlier summary goes to the model, never back to the client.
    recompacted = await client.responses.compact(model="chat", previous_response_id=again.id)
    assert user_texts(recompacted) == [
        "say: Lisbon, May, 2000 euros.",
        "say: ok",
        "say: still here",
    ]
    summarising = json.dumps(stack.bridged["chat"].requests[-1])
    assert SUMMARY_PREAMBLE in summarising and COMPACTION_INSTRUCTIONS in summarising


async def test_a_native_compaction_cannot_go_to_a_bridged_model(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    compacted = await client.responses.compact(model="solo", input=CONVERSATION)
    follow = [*as_input(compacted.output), {"role": "user", "content": "say: hi"}]
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="ant", input=follow)
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == "input[2].encrypted_content"
    assert error["code"] == "invalid_encrypted_content"
    assert stack.bridged["ant"].requests == []


async def test_bridged_provider_faults_during_a_compaction(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    fake = stack.bridged["ant"]
    fake.faults.append(Fault(status=529))
    compacted = await client.responses.compact(model="ant", input=CONVERSATION)
    assert compacted.output[-1].type == "compaction"
    assert len(fake.requests) == 2
    fake.faults.append(Fault(status=400))
    with pytest.raises(openai.BadRequestError):
        await client.responses.compact(model="ant", input=CONVERSATION)


async def test_context_management_on_a_bridge_is_refused_or_dropped(
    stack: Stack, client: openai.AsyncOpenAI
) -> None:
    management: Any = [{"type": "compaction", "compact_threshold": 1000}]
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="ant", input="say: hi", context_management=management)
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("context_management", "unsupported_parameter")
    raw = await client.responses.with_raw_response.create(
        model="ant-drop", input="say: hi", context_management=management
    )
    assert raw.headers["x-sluicegate-dropped-params"] == "context_management"
    assert raw.parse().output_text == "hi"


async def test_compaction_refuses_what_it_is_not(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.compact(
            model="solo", input=CONVERSATION, extra_body={"stream": True}
        )
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "stream"
    with pytest.raises(openai.NotFoundError):
        await client.responses.compact(model="no-such-group", input=CONVERSATION)


# -- the envelope --------------------------------------------------------------------------------


def test_the_gateway_envelope_hides_the_summary_and_refuses_any_change() -> None:
    seal = CompactionSeal.under(StateSeal.from_secret(SECRET))
    summary = "Trip to Lisbon in May, budget 2000 euros."
    envelope = seal.seal(summary)
    assert envelope.startswith(COMPACTION_PREFIX) and "Lisbon" not in envelope
    assert seal.open(envelope) == summary
    assert seal.seal(summary) != envelope  # a fresh nonce each time
    assert seal.open("gAAAAAnot-ours") is None
    raw = base64.urlsafe_b64decode(envelope[len(COMPACTION_PREFIX) :] + "==")
    for i in range(len(raw)):  # nonce, ciphertext and tag: every byte counts
        changed = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1 :]
        token = base64.urlsafe_b64encode(changed).rstrip(b"=").decode()
        with pytest.raises(ForgedState):
            seal.open(COMPACTION_PREFIX + token)
    for bad in (COMPACTION_PREFIX, COMPACTION_PREFIX + "A" * 10, COMPACTION_PREFIX + "a/b+"):
        with pytest.raises(ForgedState):
            seal.open(bad)
    other = CompactionSeal.under(StateSeal.from_secret("another-secret"))
    with pytest.raises(ForgedState):
        other.open(envelope)


def test_compaction_items_are_expanded_or_refused() -> None:
    state = StateSeal.from_secret(SECRET)
    seal = CompactionSeal.under(state)
    ours = {"type": "compaction", "encrypted_content": seal.seal("the summary")}
    expanded = expand_compaction(ours, 0, seal, bridged=True)
    assert expanded is not None and expanded["role"] == "user"
    assert expanded["content"][0]["text"] == f"{SUMMARY_PREAMBLE}\n\nthe summary"
    native = {"type": "compaction", "encrypted_content": state.seal("dep-a", "gAAAAAtoken")}
    assert expand_compaction(native, 1, seal, bridged=False) is None  # left to its pin
    with pytest.raises(InvalidRequestError) as refused:
        expand_compaction(native, 1, seal, bridged=True)
    assert refused.value.param == "input[1].encrypted_content"
    with pytest.raises(InvalidRequestError) as missing:
        expand_compaction({"type": "compaction"}, 2, seal, bridged=False)
    assert missing.value.code == "missing_required_parameter"
    # A summary never comes back to the client as one of its user messages.
    assert user_messages([{"role": "user", "content": "hi"}, expanded]) == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
            "status": "completed",
        }
    ]
