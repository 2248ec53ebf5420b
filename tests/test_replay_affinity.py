"""Opaque provider state follows its issuer (``codecs/sealed.py``, ``_replay.py``, the router's
pins): sealed ``encrypted_content``, replayed item IDs and ``item_reference`` items.

The upstreams are two native accounts (:class:`Accounts`, one ``httpx.MockTransport`` host per
deployment) that behave as OpenAI accounts do: each issues reasoning state only it can read,
refuses another account's state with ``400 invalid_encrypted_content``, and refuses a reasoning
item replayed by ID that it did not store. A bridged chat server (tests/fake_chat.py) stands in
for a bridged group.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import sluicegate
from sluicegate.codecs.sealed import SEAL_PREFIX, ForgedState, StateSeal
from sluicegate.errors import (
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
    UpstreamStatusError,
)

from .bridge_fakes import mock_transport
from .conftest import MEMORY_STORE
from .fake_chat import FakeChat
from .sdk import sdk_event, sdk_response

FUNCTION = {
    "type": "function",
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
}


def _json(status: int, body: Any) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(body), headers={"content-type": "application/json"}
    )


def _refusal(message: str, code: str, param: str = "input") -> httpx.Response:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return _json(400, {"error": error})


@attrs.define(eq=False)
class Accounts:
    """Native upstream accounts, one per host. Each answers a reasoning item (its encrypted
    content readable only by itself) and a function call, or text after a tool output."""

    hits: Counter[str] = attrs.Factory(Counter)
    bodies: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    stored: dict[str, set[str]] = attrs.Factory(dict)
    responses: dict[str, dict[str, Any]] = attrs.Factory(dict)
    failing: set[str] = attrs.Factory(set)
    chat: FakeChat = attrs.Factory(FakeChat)
    made: int = 0

    def transport(self) -> httpx.MockTransport:
        chat = mock_transport(self.chat).handler

        async def handle(request: httpx.Request) -> httpx.Response:
            if request.url.host == "chat.test":
                response: httpx.Response = await chat(request)  # type: ignore[misc]
                return response
            await request.aread()
            return self._handle(request)

        return httpx.MockTransport(handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if request.method == "GET":
            raw_id = request.url.path.rsplit("/", 1)[-1]
            return _json(200, self.responses[raw_id])
        body = orjson.loads(request.content)
        self.hits[host] += 1
        self.bodies.append((host, body))
        if host in self.failing:
            error = {"message": "boom", "type": "server_error", "param": None, "code": None}
            return _json(500, {"error": error})
        stored = self.stored.setdefault(host, set())
        items = body.get("input")
        last_type = None
        for item in items if isinstance(items, list) else []:
            last_type = item.get("type")
            state = item.get("encrypted_content")
            if isinstance(state, str) and not state.startswith(f"enc:{host}:"):
                return _refusal(
                    "The encrypted content for item could not be verified.",
                    "invalid_encrypted_content",
                )
            wanted = item.get("id") if item.get("type") in ("reasoning", "item_reference") else None
            if wanted is not None and state is None and wanted not in stored:
                return _refusal(f"Item with id '{wanted}' not found.", "not_found")
        self.made += 1
        n = self.made
        reasoning = {"id": f"rs_{n}", "type": "reasoning", "summary": []}
        if "reasoning.encrypted_content" in (body.get("include") or []):
            reasoning["encrypted_content"] = f"enc:{host}:{n}"
        if last_type == "function_call_output" or not body.get("tools"):
            answer: dict[str, Any] = {
                "id": f"msg_{n}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": f"done {n}", "annotations": []}],
            }
        else:
            answer = {
                "id": f"fc_{n}",
                "type": "function_call",
                "call_id": f"call_{n}",
                "name": "lookup",
                "arguments": '{"q":"x"}',
                "status": "completed",
            }
        if body.get("store", True):
            stored.update({f"rs_{n}", answer["id"]})
        response = _response(f"resp_{n:048x}", [reasoning, answer], body)
        self.responses[response["id"]] = response
        if not body.get("stream"):
            return _json(200, response)
        return httpx.Response(
            200, content=_stream(response), headers={"content-type": "text/event-stream"}
        )

    def hosts(self) -> list[str]:
        return [host for host, _ in self.bodies]


def _response(rid: str, output: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": body.get("tools") or [],
        "store": body.get("store", True),
        "usage": {
            "input_tokens": 3,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 1},
            "total_tokens": 5,
        },
    }


def _stream(response: dict[str, Any]) -> bytes:
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": {**response, "status": "in_progress", "output": [], "usage": None},
        }
    ]
    for i, item in enumerate(response["output"]):
        events.append({"type": "response.output_item.added", "output_index": i, "item": item})
        events.append({"type": "response.output_item.done", "output_index": i, "item": item})
    events.append({"type": "response.completed", "response": response})
    return b"".join(
        b"event: "
        + e["type"].encode()
        + b"\ndata: "
        + orjson.dumps({**e, "sequence_number": n})
        + b"\n\n"
        for n, e in enumerate(events)
    )


def _deployment(name: str, group: str = "g") -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": "openai/o4-mini",
            "api_base": f"https://{name}.test/v1",
            "api_key": f"sk-{name}",
        },
        "model_info": {"id": f"dep-{name}"},
    }


def _config(*deployments: dict[str, Any], **router: Any) -> dict[str, Any]:
    return {
        "model_list": list(deployments) or [_deployment("a"), _deployment("b")],
        "router_settings": {"retry_backoff_jitter": 0.0, **router},
        "general_settings": {"response_id_secret": "affinity", "store": MEMORY_STORE},
    }


def _open(accounts: Accounts, cfg: dict[str, Any] | None = None, seed: int = 3) -> Any:
    return sluicegate.open_gateway(
        cfg or _config(), transport=accounts.transport(), environ={}, rng=random.Random(seed)
    )


def _replay(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an agent sends back: the output items, and an answer to each function call."""
    items: list[dict[str, Any]] = []
    for item in output:
        items.append({k: v for k, v in item.items() if k != "status"})
        if item["type"] == "function_call":
            items.append(
                {"type": "function_call_output", "call_id": item["call_id"], "output": "42"}
            )
    return items


# -- the seal -------------------------------------------------------------------------------

SEAL = StateSeal.from_secret("s")


@given(dep=st.text(max_size=40), raw=st.text(max_size=200))
def test_a_seal_opens_to_what_was_sealed(dep: str, raw: str) -> None:
    sealed = SEAL.seal(dep, "x" + raw)
    opened = SEAL.open(sealed)
    assert opened is not None and (opened.deployment_id, opened.raw) == (dep, "x" + raw)


@given(st.data())
def test_any_change_to_a_seal_is_refused(data: st.DataObject) -> None:
    sealed = SEAL.seal("dep-a", "gAAAAABn-opaque_state")
    i = data.draw(st.integers(len(SEAL_PREFIX), len(sealed) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != sealed[i]))
    with pytest.raises(ForgedState):
        SEAL.open(sealed[:i] + replacement + sealed[i + 1 :])


def test_a_seal_is_bound_to_its_key_and_deployment() -> None:
    sealed = SEAL.seal("dep-a", "state")
    with pytest.raises(ForgedState):
        StateSeal.from_secret("another secret").open(sealed)
    # Naming another deployment with the same tag does not verify either.
    _, _, rest = sealed[len(SEAL_PREFIX) :].partition(".")
    moved = SEAL_PREFIX + "ZGVwLWI" + "." + rest
    with pytest.raises(ForgedState):
        SEAL.open(moved)


def test_values_that_are_not_sealed_pass_and_sealing_twice_changes_nothing() -> None:
    assert SEAL.open("gAAAAABn-raw-openai-state") is None
    sealed = SEAL.seal("dep-a", "state")
    assert SEAL.seal("dep-b", sealed) == sealed
    assert len(sealed) - len("state") < 50


# -- through the gateway --------------------------------------------------------------------


async def test_store_false_tool_turns_replay_encrypted_reasoning_to_the_account_that_issued_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An agent loop with zero data retention over a group of two accounts: every turn
    succeeds, each conversation stays on one account, and neither side sees the other's form
    of the state."""
    accounts = Accounts()
    async with _open(accounts) as gw:
        for conversation in range(6):
            items: list[dict[str, Any]] = [{"role": "user", "content": f"task {conversation}"}]
            first = len(accounts.bodies)
            for _ in range(4):
                response = await gw.responses(
                    model="g",
                    input=items,
                    tools=[FUNCTION],
                    store=False,
                    include=["reasoning.encrypted_content"],
                )
                assert response.status is sluicegate.ResponseStatus.COMPLETED
                reasoning = response.output[0]
                assert reasoning["encrypted_content"].startswith(SEAL_PREFIX)
                items += _replay(response.output)
            hosts = accounts.hosts()[first:]
            assert len(set(hosts)) == 1, hosts
    assert set(accounts.hits) == {"a.test", "b.test"}  # both accounts served conversations
    for _, body in accounts.bodies:
        assert SEAL_PREFIX not in orjson.dumps(body).decode()


async def test_streamed_events_and_the_final_response_carry_sealed_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    accounts = Accounts()
    async with (
        _open(accounts) as gw,
        gw.stream(
            model="g", input="hi", store=False, include=["reasoning.encrypted_content"]
        ) as events,
    ):
        seen = [e async for e in events]
        final = events.final_response
    for event in seen:
        sdk_event(event.to_dict())
        assert b'"encrypted_content":"enc:' not in orjson.dumps(event.to_dict())
    items = [e.data["item"] for e in seen if e.type == "response.output_item.done"]
    assert items[0]["encrypted_content"].startswith(SEAL_PREFIX)
    assert final is not None
    sdk_response(final.to_dict())
    assert final.output[0]["encrypted_content"] == items[0]["encrypted_content"]
    opened = StateSeal.from_secret("affinity").open(items[0]["encrypted_content"])
    assert opened is not None
    assert opened.raw == f"enc:{accounts.hosts()[0]}:1"
    assert opened.deployment_id == f"dep-{accounts.hosts()[0].split('.')[0]}"


async def test_forged_or_altered_state_is_refused_before_any_upstream_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    accounts = Accounts()
    async with _open(accounts) as gw:
        first = await gw.responses(
            model="g", input="hi", store=False, include=["reasoning.encrypted_content"]
        )
        reasoning = dict(first.output[0])
        reasoning["encrypted_content"] = reasoning["encrypted_content"][:-1] + "X"
        calls = len(accounts.bodies)
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="g", input=[reasoning], store=False)
        assert info.value.param == "input[0].encrypted_content"
        assert info.value.code == "invalid_encrypted_content"
        assert len(accounts.bodies) == calls


async def test_state_from_two_accounts_in_one_request_is_a_clear_400(
    autojump_clock: trio.testing.MockClock,
) -> None:
    accounts = Accounts()
    async with _open(accounts, _config(_deployment("a", "ga"), _deployment("b", "gb"))) as gw:
        a = await gw.responses(
            model="ga", input="hi", store=False, include=["reasoning.encrypted_content"]
        )
        b = await gw.responses(
            model="gb", input="hi", store=False, include=["reasoning.encrypted_content"]
        )
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="ga", input=[a.output[0], b.output[0]], store=False)
        assert info.value.code == "mixed_provider_state"
        assert info.value.param == "input[1].encrypted_content"
        # State of another group's account cannot be read by this group at all.
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="ga", input=[b.output[0]], store=False)
        assert info.value.param == "input[0].encrypted_content"
        assert "shares its account" in info.value.message
    assert accounts.hits == Counter({"a.test": 1, "b.test": 1})


async def test_a_failing_issuer_is_never_replaced_by_another_account(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Strict affinity: no other account can read the state, so nothing fails over; once the
    issuer's breaker opens, the caller is told which item pins it and when to retry."""
    accounts = Accounts()
    async with _open(accounts, _config(allowed_fails=1, cooldown_time=30, num_retries=1)) as gw:
        first = await gw.responses(
            model="g", input="hi", store=False, include=["reasoning.encrypted_content"]
        )
        issuer = accounts.hosts()[0]
        accounts.failing.add(issuer)
        with pytest.raises(UpstreamStatusError):
            await gw.responses(model="g", input=_replay(first.output), store=False)
        with pytest.raises(ServiceUnavailableError) as info:
            await gw.responses(model="g", input=_replay(first.output), store=False)
        assert info.value.param == "input[0].encrypted_content"
        assert info.value.headers.get("Retry-After")
        assert set(accounts.hosts()) == {issuer}


async def test_stored_items_replayed_by_id_and_item_references_go_to_their_account(
    autojump_clock: trio.testing.MockClock,
) -> None:
    accounts = Accounts()
    async with _open(accounts, seed=11) as gw:
        for _ in range(5):
            first = await gw.responses(model="g", input="hi", tools=[FUNCTION])
            issuer = accounts.hosts()[-1]
            by_id = [{"type": "reasoning", "id": first.output[0]["id"], "summary": []}]
            call = first.output[1]
            follow = [
                *by_id,
                {k: v for k, v in call.items() if k != "status"},
                {"type": "function_call_output", "call_id": call["call_id"], "output": "1"},
            ]
            answer = await gw.responses(model="g", input=follow, tools=[FUNCTION])
            assert answer.output_text.startswith("done")
            reference = [{"type": "item_reference", "id": first.output[0]["id"]}]
            await gw.responses(model="g", input=reference)
            assert accounts.hosts()[-2:] == [issuer, issuer]


async def test_an_item_of_another_owner_is_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    accounts = Accounts()
    async with _open(accounts) as gw:
        theirs = await gw.responses(model="g", input="hi", owner="alice")
        calls = len(accounts.bodies)
        with pytest.raises(NotFoundError) as info:
            await gw.responses(
                model="g", input=[{"type": "item_reference", "id": theirs.output[0]["id"]}]
            )
        assert info.value.param == "input[0]"
        assert len(accounts.bodies) == calls


async def test_a_bridged_group_gets_referenced_items_from_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bridge reads no native state: an item_reference is resolved into the item itself,
    and nothing pins the request to the native account that made it."""
    chat = {
        "model_name": "bridged",
        "litellm_params": {
            "model": "chat/small",
            "api_base": "https://chat.test/v1",
            "api_key": "sk-chat",
        },
        "model_info": {"id": "dep-chat"},
    }
    accounts = Accounts()
    async with _open(accounts, _config(_deployment("a"), chat)) as gw:
        first = await gw.responses(model="g", input="hi")
        message = first.output[1]
        await gw.responses(
            model="bridged",
            input=[
                {"type": "item_reference", "id": message["id"]},
                {"role": "user", "content": "say: ok"},
            ],
        )
    sent = accounts.chat.requests[-1]["messages"]
    assert {"role": "assistant", "content": "done 1"} in [
        {k: m[k] for k in ("role", "content")} for m in sent
    ]


async def test_get_from_the_upstream_seals_its_state_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    accounts = Accounts()
    async with _open(accounts) as gw:
        made = await gw.responses(model="g", input="hi", include=["reasoning.encrypted_content"])
        fetched = await gw.get_response(made.id, include=["reasoning.encrypted_content"])
    assert fetched.output[0]["encrypted_content"] == made.output[0]["encrypted_content"]
    assert fetched.output[0]["encrypted_content"].startswith(SEAL_PREFIX)


async def test_unsealed_state_passes_through_and_pins_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """State the gateway did not seal (the caller also talks to a provider directly) is the
    upstream's to judge, as any field the gateway does not own."""
    accounts = Accounts()
    async with _open(accounts) as gw:
        item = {"type": "reasoning", "summary": [], "encrypted_content": "enc:a.test:0"}
        outcomes = []
        for _ in range(8):
            try:
                await gw.responses(model="g", input=[item], store=False)
                outcomes.append("ok")
            except UpstreamStatusError as exc:
                assert exc.code == "invalid_encrypted_content"
                outcomes.append("refused")
    assert accounts.hits["b.test"] > 0  # not pinned: both accounts were tried
    assert outcomes.count("ok") == accounts.hits["a.test"]
