"""Conversations (``/v1/conversations``) and ``conversation`` on create (docs/conversations.md).

Through the proxy the official ``openai`` SDK is the client. The upstreams: the built-in fake
on loopback as an OpenAI deployment (``native``; it serves the Conversations API and honours
``conversation`` on create), a second OpenAI deployment on the same fake under another key
(``elsewhere``: another account), and the fake Chat Completions server on loopback (``chat``,
a bridge). What each upstream received is the proof of where a call went and what it carried.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import openai
import pytest
import trio

import sluicegate
from sluicegate import ResponseStatus
from sluicegate.codecs.ids import IdCodec
from sluicegate.errors import InvalidRequestError, NotFoundError
from sluicegate.fake import FakeUpstream, Fault, open_fake_upstream
from sluicegate.server import ProxyApp, build_app

from .bridge_fakes import Fault as ChatFault
from .bridge_fakes import serve_loopback
from .conftest import MEMORY_STORE
from .fake_chat import FakeChat
from .proxy_server import serving

MASTER = "sk-master-conversations-0123456789"
SECRET = "conversations-test-secret"
NATIVE_KEY = "sk-native-account-0123456789"
OTHER_KEY = "sk-other-account-9876543210"
CONV_IDS = IdCodec.from_secret(SECRET, prefix="conv_")


def proxy_config(native_base: str, chat_base: str, **general: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "native",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": native_base,
                    "api_key": NATIVE_KEY,
                },
                "model_info": {"id": "dep-native"},
            },
            {
                "model_name": "elsewhere",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": native_base,
                    "api_key": OTHER_KEY,
                },
                "model_info": {"id": "dep-elsewhere"},
            },
            {
                "model_name": "chat",
                "litellm_params": {
                    "model": "chat/llama-3.3-70b",
                    "api_base": f"{chat_base}/v1",
                    "api_key": "chat-key",
                },
                "model_info": {"id": "dep-chat"},
            },
        ],
        # Quick, exact retries; one retry per call.
        "router_settings": {
            "retry_backoff_initial": 0.01,
            "retry_backoff_jitter": 0.0,
            "num_retries": 1,
        },
        "general_settings": {
            "master_key": MASTER,
            "response_id_secret": SECRET,
            "store": MEMORY_STORE,
            "graceful_shutdown_timeout": 2,
            **general,
        },
    }


@attrs.define(eq=False)
class Proxy:
    app: ProxyApp
    url: str
    fake: FakeUpstream
    chat: FakeChat
    clients: list[openai.AsyncOpenAI] = attrs.Factory(list)

    def client(self, key: str = MASTER) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    def http(self, key: str = MASTER) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=30
        )

    async def new_key(self) -> str:
        async with self.http() as http:
            answer = await http.post("/key/generate", json={})
        assert answer.status_code == 200, answer.text
        key: str = answer.json()["key"]
        return key

    def upstream(self, method: str, path_part: str) -> list[Any]:
        """The native fake's requests of ``method`` whose path contains ``path_part``."""
        return [r for r in self.fake.requests if r.method == method and path_part in r.path]


@asynccontextmanager
async def running(**general: Any) -> AsyncIterator[Proxy]:
    chat = FakeChat()
    async with open_fake_upstream(tokens=4) as fake, trio.open_nursery() as upstreams:
        chat_base: str = await upstreams.start(serve_loopback, chat)
        app = build_app(proxy_config(fake.base_url, chat_base, **general), environ={})
        async with serving(app) as url:
            proxy = Proxy(app, url, fake, chat)
            try:
                yield proxy
            finally:
                for client in proxy.clients:
                    await client.close()
        upstreams.cancel_scope.cancel()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    async with running() as p:
        yield p


def user(text: str) -> Any:
    """A user message as a client sends it (``Any``: the SDK's parameter types are unions)."""
    return {"type": "message", "role": "user", "content": text}


def ident(item: Any) -> str:
    """An item's ID (the SDK types it optional)."""
    assert isinstance(item.id, str)
    return item.id


def texts_of(items: list[Any]) -> list[str]:
    """The text of each message item (SDK models or dicts), in order."""
    found = []
    for item in items:
        data = item if isinstance(item, dict) else item.model_dump()
        content = data.get("content")
        if isinstance(content, str):
            found.append(content)
            continue
        for part in content or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                found.append(part["text"])
    return found


# -- held by the gateway ------------------------------------------------------------------------


async def test_a_held_conversation_is_created_read_updated_paged_and_deleted(
    proxy: Proxy,
) -> None:
    client = proxy.client()
    conv = await client.conversations.create(
        items=[user("one"), user("two")], metadata={"topic": "a"}
    )
    assert conv.object == "conversation" and conv.metadata == {"topic": "a"}
    decoded = CONV_IDS.decode(conv.id)
    assert (decoded.provider, decoded.owner) == ("sluicegate", "admin")
    assert proxy.fake.requests == []  # nothing went upstream
    got = await client.conversations.retrieve(conv.id)
    assert (got.id, got.created_at, got.metadata) == (conv.id, conv.created_at, {"topic": "a"})
    updated = await client.conversations.update(conv.id, metadata={"topic": "b"})
    assert updated.metadata == {"topic": "b"}
    assert (await client.conversations.retrieve(conv.id)).metadata == {"topic": "b"}

    added = await client.conversations.items.create(
        conv.id, items=[user("three"), user("four"), user("five")]
    )
    assert texts_of(added.data) == ["three", "four", "five"]
    assert all(ident(item).startswith("msg_") for item in added.data)

    first = await client.conversations.items.list(conv.id, limit=2, order="asc")
    assert texts_of(first.data) == ["one", "two"] and first.has_more
    second = await client.conversations.items.list(
        conv.id, limit=2, order="asc", after=ident(first.data[-1])
    )
    assert texts_of(second.data) == ["three", "four"] and second.has_more
    every = [item async for item in await client.conversations.items.list(conv.id, limit=2)]
    assert texts_of(every) == ["five", "four", "three", "two", "one"]  # newest first

    three = added.data[0]
    item = await client.conversations.items.retrieve(ident(three), conversation_id=conv.id)
    assert texts_of([item]) == ["three"] and item.type == "message"
    after_delete = await client.conversations.items.delete(ident(three), conversation_id=conv.id)
    assert after_delete.id == conv.id and after_delete.object == "conversation"
    left = await client.conversations.items.list(conv.id, order="asc")
    assert texts_of(left.data) == ["one", "two", "four", "five"]
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.retrieve(ident(three), conversation_id=conv.id)

    deleted = await client.conversations.delete(conv.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (conv.id, True, "conversation.deleted")
    for call in (
        client.conversations.retrieve(conv.id),
        client.conversations.items.list(conv.id),
        client.conversations.delete(conv.id),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            await call
        assert caught.value.status_code == 404


async def test_held_items_are_checked(proxy: Proxy) -> None:
    client = proxy.client()
    conv = await client.conversations.create()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.conversations.items.create(conv.id, items=[user(str(i)) for i in range(21)])
    assert caught.value.body["param"] == "items"  # type: ignore[index]
    given = {"id": "msg_mine", **user("x")}
    await client.conversations.items.create(conv.id, items=[given])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.conversations.items.create(conv.id, items=[given])  # type: ignore[list-item]
    assert caught.value.body["param"] == "items[0].id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.conversations.create(metadata={"k": "v" * 513})
    assert caught.value.body["param"] == "metadata"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.conversations.items.list(conv.id, after="msg_unknown")
    assert caught.value.body["param"] == "after"  # type: ignore[index]


async def test_responses_in_a_held_conversation_reach_a_bridge_with_the_earlier_turns(
    proxy: Proxy,
) -> None:
    client = proxy.client()
    conv = await client.conversations.create(items=[user("say: hello there")])
    first = await client.responses.create(
        model="chat", conversation=conv.id, input="say: first answer"
    )
    assert first.output_text == "first answer"
    assert first.conversation is not None and first.conversation.id == conv.id
    sent = proxy.chat.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "user"]
    assert texts_of(sent) == ["say: hello there", "say: first answer"]

    # Streamed, with the object form: the first turn (input and output) came before it.
    async with client.responses.stream(
        model="chat", conversation={"id": conv.id}, input="say: second answer"
    ) as stream:
        async for _ in stream:
            pass
        second = await stream.get_final_response()
    assert second.output_text == "second answer"
    assert second.conversation is not None and second.conversation.id == conv.id
    sent = proxy.chat.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "user", "assistant", "user"]
    assert "first answer" in str(sent[2]["content"])
    items = await client.conversations.items.list(conv.id, order="asc")
    assert [item.type for item in items.data] == ["message"] * 5
    assert texts_of(items.data) == [
        "say: hello there",
        "say: first answer",
        "first answer",
        "say: second answer",
        "second answer",
    ]
    # The output items keep the response's IDs.
    assert items.data[2].id == first.output[0].id
    assert proxy.fake.requests == []


async def test_a_bridge_refusing_an_earlier_item_names_the_conversation(proxy: Proxy) -> None:
    client = proxy.client()
    broken: Any = {"type": "function_call", "name": "f", "arguments": "{}"}  # no call_id
    conv = await client.conversations.create(items=[broken])
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="chat", conversation=conv.id, input="say: x")
    assert caught.value.body["param"] == "conversation"  # type: ignore[index]
    assert proxy.chat.requests == []


async def test_a_failed_response_appends_nothing(proxy: Proxy) -> None:
    client = proxy.client()
    conv = await client.conversations.create(items=[user("say: before")])
    proxy.chat.faults.append(ChatFault(status=400))
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="chat", conversation=conv.id, input="say: lost")
    items = await client.conversations.items.list(conv.id)
    assert texts_of(items.data) == ["say: before"]
    done = await client.responses.create(model="chat", conversation=conv.id, input="say: kept")
    assert done.status == "completed"
    items = await client.conversations.items.list(conv.id, order="asc")
    assert texts_of(items.data) == ["say: before", "say: kept", "kept"]


async def test_a_held_conversation_goes_to_a_native_upstream_as_input(proxy: Proxy) -> None:
    client = proxy.client()
    conv = await client.conversations.create(items=[user("earlier words")])
    response = await client.responses.create(model="native", conversation=conv.id, input="now")
    assert response.conversation is not None and response.conversation.id == conv.id
    (create,) = proxy.upstream("POST", "/responses")
    body = create.json()
    assert "conversation" not in body
    # The conversation's items, then the input, as input items without the gateway's IDs.
    assert body["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "earlier words"}],
            "status": "completed",
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "now"}]},
    ]
    assert response.usage is not None and response.usage.input_tokens == 3
    items = await client.conversations.items.list(conv.id, order="asc")
    assert len(items.data) == 3 and items.data[2].id == response.output[0].id


# -- native ---------------------------------------------------------------------------------------


async def test_a_native_conversation_lives_upstream(proxy: Proxy) -> None:
    client = proxy.client()
    conv = await client.conversations.create(
        items=[user("hi")], metadata={"a": "1"}, extra_body={"model": "native"}
    )
    decoded = CONV_IDS.decode(conv.id)
    assert (decoded.provider, decoded.deployment_id) == ("openai", "dep-native")
    (created,) = proxy.upstream("POST", "/conversations")
    assert created.json() == {"items": [user("hi")], "metadata": {"a": "1"}}
    assert created.headers["authorization"] == f"Bearer {NATIVE_KEY}"
    raw = decoded.raw_id
    assert raw.startswith("conv_")

    got = await client.conversations.retrieve(conv.id)
    assert got.id == conv.id and got.metadata == {"a": "1"}
    updated = await client.conversations.update(conv.id, metadata={"a": "2"})
    assert updated.id == conv.id and updated.metadata == {"a": "2"}
    added = await client.conversations.items.create(conv.id, items=[user("more"), user("most")])
    assert texts_of(added.data) == ["more", "most"]
    page = await client.conversations.items.list(conv.id, limit=2, order="asc")
    assert texts_of(page.data) == ["hi", "more"] and page.has_more
    assert ident(page.data[0]).startswith("msg_")  # the upstream's own item IDs
    rest = await client.conversations.items.list(
        conv.id, limit=2, order="asc", after=ident(page.data[-1])
    )
    assert texts_of(rest.data) == ["most"] and not rest.has_more
    listed = proxy.upstream("GET", "/items")[-1]
    assert listed.path == f"/v1/conversations/{raw}/items"
    assert "after=" in listed.query
    await client.conversations.items.list(conv.id, include=["message.output_text.logprobs"])
    assert "message.output_text.logprobs" in proxy.upstream("GET", "/items")[-1].query
    item = await client.conversations.items.retrieve(ident(page.data[0]), conversation_id=conv.id)
    assert texts_of([item]) == ["hi"]
    back = await client.conversations.items.delete(ident(page.data[0]), conversation_id=conv.id)
    assert back.id == conv.id
    remaining = proxy.fake.extra_state["conversations"][raw].items
    assert texts_of(remaining) == ["more", "most"]

    await client.conversations.delete(conv.id)
    assert raw not in proxy.fake.extra_state["conversations"]
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(conv.id)
    assert len(proxy.upstream("GET", raw)) == 5  # nothing more went up for the 404


async def test_the_model_group_may_be_named_outside_the_body(proxy: Proxy) -> None:
    async with proxy.http() as http:
        by_header = await http.post(
            "/v1/conversations", json={}, headers={"x-sluicegate-model": "native"}
        )
        by_query = await http.post("/conversations?model=native", json={})
        bridged = await http.post("/v1/conversations", json={"model": "chat"})
        unknown = await http.post("/v1/conversations", json={"model": "nope"})
    for answer in (by_header, by_query):
        assert answer.status_code == 200, answer.text
        assert CONV_IDS.decode(answer.json()["id"]).deployment_id == "dep-native"
    assert len(proxy.upstream("POST", "/conversations")) == 2
    # A group with no native deployment: the gateway holds it.
    assert CONV_IDS.decode(bridged.json()["id"]).provider == "sluicegate"
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"


async def test_a_response_in_a_native_conversation_sends_the_raw_id_and_no_history(
    proxy: Proxy,
) -> None:
    client = proxy.client()
    conv = await client.conversations.create(
        items=[user("one two three")], extra_body={"model": "native"}
    )
    raw = CONV_IDS.decode(conv.id).raw_id
    first = await client.responses.create(model="native", conversation=conv.id, input="four")
    assert first.conversation is not None and first.conversation.id == conv.id
    (create,) = proxy.upstream("POST", "/responses")
    body = create.json()
    assert body["conversation"] == raw
    assert body["input"] == "four"  # the upstream prepends its own items
    assert first.usage is not None and first.usage.input_tokens == 4
    # Fetched from the upstream later, it still names the client's conversation ID.
    fetched = await client.responses.retrieve(first.id)
    assert fetched.conversation is not None and fetched.conversation.id == conv.id
    by_object: Any = {"id": conv.id}
    second = await client.responses.create(
        model="native", conversation=by_object, input=[user("five")]
    )
    body = proxy.upstream("POST", "/responses")[-1].json()
    assert body["conversation"] == raw and body["input"] == [user("five")]
    # one two three | four | five (the fake counts input text, not its own output_text)
    assert second.usage is not None and second.usage.input_tokens == 3 + 1 + 1
    kept = proxy.fake.extra_state["conversations"][raw].items
    assert texts_of(kept) == [
        "one two three",
        "four",
        first.output_text,
        "five",
        second.output_text,
    ]
    items = await client.conversations.items.list(conv.id, order="asc")
    assert len(items.data) == 5  # nothing appended twice
    # Another account cannot reach it: the group must contain its deployment's account.
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="elsewhere", conversation=conv.id, input="x")
    assert caught.value.body["param"] == "conversation"  # type: ignore[index]
    # A bridged group has no way to it either.
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="chat", conversation=conv.id, input="x")
    assert caught.value.body["param"] == "conversation"  # type: ignore[index]
    assert len(proxy.upstream("POST", "/responses")) == 2


# -- ownership, forged IDs, refusals --------------------------------------------------------------


@pytest.mark.parametrize("model", [None, "native"])
async def test_another_keys_conversation_is_a_404(proxy: Proxy, model: str | None) -> None:
    mine = proxy.client(await proxy.new_key())
    theirs = proxy.client(await proxy.new_key())
    extra = {"model": model} if model else None
    conv = await mine.conversations.create(items=[user("private")], extra_body=extra)
    calls: list[Awaitable[Any]] = [
        theirs.conversations.retrieve(conv.id),
        theirs.conversations.update(conv.id, metadata={"x": "y"}),
        theirs.conversations.items.list(conv.id),
        theirs.conversations.items.create(conv.id, items=[user("x")]),
        theirs.conversations.delete(conv.id),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            await call
    with pytest.raises(openai.NotFoundError) as caught:
        await theirs.responses.create(model="chat", conversation=conv.id, input="x")
    assert caught.value.body["param"] == "conversation"  # type: ignore[index]
    # Still there for its owner; the admin sees it too.
    assert (await mine.conversations.retrieve(conv.id)).id == conv.id
    assert (await proxy.client().conversations.retrieve(conv.id)).id == conv.id


async def test_forged_and_foreign_ids_are_a_404(proxy: Proxy) -> None:
    client = proxy.client()
    conv = await client.conversations.create()
    forged = conv.id[:-3] + ("AAA" if conv.id[-3:] != "AAA" else "BBB")
    other_secret = IdCodec.from_secret("another secret", prefix="conv_").encode(
        provider="sluicegate", deployment_id="sluicegate", raw_id="conv_x", owner="admin"
    )
    for bad in (forged, "conv_abc", other_secret, "resp_abc"):
        with pytest.raises(openai.NotFoundError):
            await client.conversations.retrieve(bad)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.create(model="chat", conversation=bad, input="say: x")
        assert caught.value.body["param"] == "conversation"  # type: ignore[index]
    assert proxy.chat.requests == []


async def test_conversation_with_previous_response_id_is_a_400(proxy: Proxy) -> None:
    client = proxy.client()
    conv = await client.conversations.create()
    before = await client.responses.create(model="chat", input="say: x")
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(
            model="chat", conversation=conv.id, previous_response_id=before.id, input="y"
        )
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        not_an_id: Any = {"name": "x"}
        await client.responses.create(model="chat", conversation=not_an_id, input="y")
    assert caught.value.body["param"] == "conversation"  # type: ignore[index]


async def test_a_deleted_conversation_takes_no_more_turns(proxy: Proxy) -> None:
    client = proxy.client()
    for extra in (None, {"model": "native"}):
        conv = await client.conversations.create(items=[user("x")], extra_body=extra)
        await client.conversations.delete(conv.id)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.create(model="native", conversation=conv.id, input="y")
        assert caught.value.body["param"] == "conversation"  # type: ignore[index]
    assert proxy.upstream("POST", "/responses") == []


async def test_a_key_limited_to_other_groups_cannot_create_in_one(proxy: Proxy) -> None:
    async with proxy.http() as http:
        answer = await http.post("/key/generate", json={"models": ["chat"]})
    key = answer.json()["key"]
    with pytest.raises(openai.PermissionDeniedError):
        await proxy.client(key).conversations.create(extra_body={"model": "native"})
    assert proxy.upstream("POST", "/conversations") == []


# -- upstream faults ------------------------------------------------------------------------------


async def test_upstream_faults_on_conversation_calls(proxy: Proxy) -> None:
    client = proxy.client()
    proxy.fake.script(Fault.status(429))
    conv = await client.conversations.create(extra_body={"model": "native"})  # retried
    assert len(proxy.upstream("POST", "/conversations")) == 2
    proxy.fake.script(Fault.status(500), Fault.status(500))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.conversations.retrieve(conv.id)
    assert caught.value.status_code == 500
    proxy.fake.script(Fault.malformed_sse(after_events=0))
    with pytest.raises(openai.APIStatusError) as failed:
        await client.conversations.items.list(conv.id)
    assert failed.value.status_code == 502
    proxy.fake.script(Fault.status(404))
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.create(conv.id, items=[user("x")])
    # Healthy again.
    assert (await client.conversations.retrieve(conv.id)).id == conv.id


# -- the library ----------------------------------------------------------------------------------


def library_config(**store: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "f",
                "litellm_params": {"model": "fake/gpt-5.4", "fake_tokens": 3},
                "model_info": {"id": "dep-fake"},
            }
        ],
        "general_settings": {"response_id_secret": SECRET, "store": {**MEMORY_STORE, **store}},
    }


async def test_the_library_face_and_the_in_process_fake_is_held() -> None:
    """An in-process fake forgets at a restart: a conversation of its group is held."""
    async with sluicegate.open_gateway(library_config(), owner="me") as gw:
        conv = await gw.create_conversation(model="f", items=[user("a b")])
        assert CONV_IDS.decode(conv["id"]).provider == "sluicegate"
        answer = await gw.responses(model="f", conversation=conv["id"], input="c")
        assert answer.to_dict()["conversation"] == {"id": conv["id"]}
        assert answer.usage is not None and answer.usage.input_tokens == 3
        page = await gw.list_conversation_items(conv["id"], order="asc")
        assert texts_of(page["data"])[:2] == ["a b", "c"] and len(page["data"]) == 3
        item = page["data"][0]
        assert (await gw.retrieve_conversation_item(conv["id"], item["id"]))["id"] == item["id"]
        with pytest.raises(NotFoundError):
            await gw.retrieve_conversation(conv["id"], owner="someone else")
        updated = await gw.update_conversation(conv["id"], metadata={"k": "v"})
        assert updated["metadata"] == {"k": "v"}
        await gw.delete_conversation(conv["id"])
        with pytest.raises(NotFoundError):
            await gw.list_conversation_items(conv["id"])


async def test_a_background_response_appends_its_turn_when_it_ends() -> None:
    async with sluicegate.open_gateway(library_config(), owner="me") as gw:
        conv = await gw.create_conversation(items=[user("first")])
        ended = trio.Event()
        queued = await gw.responses(
            model="f", conversation=conv["id"], input="second", background=True, on_end=ended.set
        )
        assert queued.status is ResponseStatus.QUEUED
        await ended.wait()
        done = await gw.get_response(queued.id)
        assert done.status is ResponseStatus.COMPLETED
        assert done.to_dict()["conversation"] == {"id": conv["id"]}
        page = await gw.list_conversation_items(conv["id"], order="asc")
        assert texts_of(page["data"]) == ["first", "second", done.output_text]


async def test_a_held_conversation_is_bounded_like_a_chain() -> None:
    async with sluicegate.open_gateway(library_config(max_conversation_turns=2), owner="me") as gw:
        conv = await gw.create_conversation(items=[user("x")])  # turn 1
        await gw.responses(model="f", conversation=conv["id"], input="y")  # turn 2 appended
        # Two turns before it, as a chain of two responses may be continued.
        await gw.responses(model="f", conversation=conv["id"], input="z")
        with pytest.raises(InvalidRequestError) as caught:
            await gw.responses(model="f", conversation=conv["id"], input="w")
        assert (caught.value.param, caught.value.code) == ("conversation", "conversation_too_long")
