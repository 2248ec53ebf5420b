"""WebSocket mode of the Responses API through the proxy (``docs/websocket.md``): the official
SDK's ``client.responses.connect()`` against the lean server and hypercorn, and a raw trio
client (:mod:`sluicegate.net._websocket`) where the test must control reading or framing."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import httpx
import openai
import orjson
import pydantic
import pytest
import trio
import trio.testing
import websockets.exceptions
from openai.types.responses import FunctionToolParam
from openai.types.responses.responses_server_event import (
    ResponsesServerEvent,
    ResponseWsCompleted,
    ResponseWsCreated,
    ResponseWsError,
)
from wsproto.events import BytesMessage

from sluicegate.fake import FakeUpstream, Fault, open_fake_upstream
from sluicegate.net._websocket import WebSocketClosed, WebSocketRefused, open_websocket
from sluicegate.server import ProxyApp, build_app, serve
from sluicegate.server._serve import HTTP_SERVER_VARIABLE

from .bridge_fakes import serve_loopback
from .conftest import MEMORY_STORE
from .fake_anthropic import FakeAnthropic

MASTER = "sk-master-websocket-0123456789"
PROVIDER_KEY = "sk-provider-websocket-0123456789"
T = TypeVar("T")
_SERVER_EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponsesServerEvent)


def _config(fake: FakeUpstream, extra: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "gpt-test",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": fake.base_url,
                    "api_key": PROVIDER_KEY,
                },
                "model_info": {"id": "fake-1"},
            },
            *extra,
        ],
        "general_settings": {
            "master_key": MASTER,
            "response_id_secret": "websocket-test",
            "store": MEMORY_STORE,
            "graceful_shutdown_timeout": 2,
        },
    }


@attrs.define(eq=False)
class Proxy:
    app: ProxyApp
    url: str
    fake: FakeUpstream
    #: Set to shut the server down.
    stop: trio.Event = attrs.Factory(trio.Event)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/responses"

    def sdk(self, key: str = MASTER) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)

    def http(self, key: str = MASTER) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=30
        )

    async def new_key(self, **body: Any) -> str:
        async with self.http() as http:
            answer = await http.post("/key/generate", json=body)
        assert answer.status_code == 200, answer.text
        key: str = answer.json()["key"]
        return key

    async def spend_statuses(self) -> list[str]:
        gateway = self.app.gateway
        assert gateway is not None
        return [log.status for log in await gateway.spend_logs()]


@asynccontextmanager
async def running(
    server: str,
    monkeypatch: pytest.MonkeyPatch,
    *,
    tokens: int = 8,
    token_delay: float = 0.0,
    write_per_event: bool = False,
    extra: list[dict[str, Any]] | None = None,
    grace: float = 2,
) -> AsyncIterator[Proxy]:
    monkeypatch.setenv(HTTP_SERVER_VARIABLE, server)
    async with open_fake_upstream(
        tokens=tokens, token_delay=token_delay, write_per_event=write_per_event
    ) as fake:
        config = _config(fake, extra or [])
        config["general_settings"]["graceful_shutdown_timeout"] = grace
        app = build_app(config)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    app, host="127.0.0.1", port=0, shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )  # fmt: skip
            try:
                yield Proxy(app, binds[0], fake, stop)
            finally:
                stop.set()


@pytest.fixture(params=["lean", "hypercorn"])
async def proxy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    async with running(request.param, monkeypatch) as running_proxy:
        yield running_proxy


async def in_thread(fn: Callable[[], T]) -> T:
    """Run a synchronous SDK call in a thread (the SDK's WebSocket client is not trio's)."""
    with trio.fail_after(60):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def until_end(connection: Any) -> list[Any]:
    """The events of one response, to its terminal event (or an ``error``)."""
    events = []
    for event in connection:
        events.append(event)
        if event.type in ("response.completed", "response.failed", "response.incomplete"):
            break
        if event.type == "error":
            break
    return events


# -- the SDK ---------------------------------------------------------------------------------


async def test_two_responses_on_one_connection_chain_and_are_recorded(proxy: Proxy) -> None:
    client = proxy.sdk()

    def talk() -> tuple[list[Any], list[Any]]:
        with client.responses.connect() as connection:
            connection.response.create(model="gpt-test", input="Say hello.")
            first = until_end(connection)
            previous = first[-1].response.id
            connection.response.create(
                model="gpt-test", input="And again.", previous_response_id=previous
            )
            second = until_end(connection)
        return first, second

    first, second = await in_thread(talk)
    for events in (first, second):
        assert isinstance(events[0], ResponseWsCreated)
        assert isinstance(events[-1], ResponseWsCompleted)
        assert [e.sequence_number for e in events] == list(range(len(events)))
        for event in events:  # each parses strictly with the SDK's own types
            _SERVER_EVENTS.validate_python(event.to_dict())
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text and text == events[-1].response.output_text
    one, two = first[-1].response, second[-1].response
    assert one.id != two.id and one.id.startswith("resp_")
    assert two.previous_response_id == one.id
    # Recorded, and retrievable over HTTP, as a streamed POST's would be.
    async with proxy.http() as http:
        got = (await http.get(f"/v1/responses/{two.id}")).json()
        assert (got["status"], got["output"][-1]["content"][0]["text"]) == (
            "completed",
            two.output_text,
        )
        items = (await http.get(f"/v1/responses/{two.id}/input_items")).json()
        assert items["data"][0]["content"][0]["text"] == "And again."
        metrics = (await http.get("/metrics")).text
    assert (
        'sluicegate_requests_total{route="/v1/responses",method="WEBSOCKET",status="200"} 2.0'
        in (metrics)
    )
    assert 'sluicegate_websocket_connections_total{outcome="accepted"} 1.0' in metrics
    assert 'sluicegate_websocket_messages_total{direction="in"} 2.0' in metrics
    # Both reached the upstream as streamed creations, chained upstream as well.
    creates = [r.json() for r in proxy.fake.requests if r.method == "POST"]
    assert [c.get("stream") for c in creates] == [True, True]
    assert "previous_response_id" in creates[1] or len(creates[1]["input"]) > 1
    assert await proxy.spend_statuses() == ["completed", "completed"]


async def test_bad_messages_get_error_events_and_the_connection_goes_on(proxy: Proxy) -> None:
    client = proxy.sdk()

    def talk() -> list[Any]:
        seen = []
        with client.responses.connect() as connection:
            connection.send_raw("{not json")
            seen.append(connection.recv())
            connection.send_raw(orjson.dumps({"type": "response.frobnicate"}).decode())
            seen.append(connection.recv())
            connection.send_raw(orjson.dumps({"input": "no type"}).decode())
            seen.append(connection.recv())
            connection.send_raw(orjson.dumps({"type": "response.create", "input": "hi"}).decode())
            seen.append(connection.recv())
            forbidden = {"type": "response.create", "model": "gpt-test", "api_base": "http://x"}
            connection.send_raw(orjson.dumps(forbidden).decode())
            seen.append(connection.recv())
            background = {"type": "response.create", "model": "gpt-test", "background": True}
            connection.send_raw(orjson.dumps(background).decode())
            seen.append(connection.recv())
            connection.response.create(model="gpt-test", input="Still there?")
            seen.extend(until_end(connection))
        return seen

    seen = await in_thread(talk)
    errors = seen[:6]
    assert all(isinstance(e, ResponseWsError) for e in errors)
    assert [(e.error.code, e.error.param) for e in errors] == [
        ("invalid_json", None),
        ("unsupported_event_type", "type"),
        ("missing_required_parameter", "type"),
        ("missing_required_parameter", "model"),
        ("forbidden_parameter", "api_base"),
        (None, "background"),
    ]
    assert all(e.status == 400 and e.error.type == "invalid_request_error" for e in errors)
    assert "response.frobnicate" in errors[1].error.message
    # The SSE error event's own fields are there too.
    assert errors[3].to_dict()["param"] == "model"
    assert seen[-1].type == "response.completed"
    assert await proxy.spend_statuses() == ["completed"]


async def test_a_wrong_key_is_refused_before_the_upgrade(proxy: Proxy) -> None:
    client = proxy.sdk("sk-not-a-key")

    def connect() -> None:
        with client.responses.connect() as connection:
            connection.recv()

    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await in_thread(connect)
    assert refused.value.response.status_code == 401
    assert orjson.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"
    assert not proxy.fake.requests


async def test_another_keys_previous_response_is_refused(proxy: Proxy) -> None:
    alice = await proxy.new_key(models=["gpt-test"])
    bob = await proxy.new_key(models=["gpt-test"])

    def first() -> str:
        with proxy.sdk(alice).responses.connect() as connection:
            connection.response.create(model="gpt-test", input="mine")
            response_id: str = until_end(connection)[-1].response.id
        return response_id

    alices = await in_thread(first)

    def second() -> list[Any]:
        with proxy.sdk(bob).responses.connect() as connection:
            connection.response.create(
                model="gpt-test", input="theirs", previous_response_id=alices
            )
            refused = until_end(connection)
            connection.response.create(model="gpt-test", input="mine then")
            return [*refused, *until_end(connection)]

    events = await in_thread(second)
    assert isinstance(events[0], ResponseWsError)
    error = events[0].error
    assert (error.code, error.param, events[0].status) == (
        "previous_response_not_found",
        "previous_response_id",
        400,
    )
    assert events[-1].type == "response.completed"
    assert await proxy.spend_statuses() == ["completed", "completed"]


async def test_a_key_over_its_rpm_gets_an_error_event(proxy: Proxy) -> None:
    limited = await proxy.new_key(models=["gpt-test"], rpm_limit=1)

    def talk() -> list[Any]:
        with proxy.sdk(limited).responses.connect() as connection:
            connection.response.create(model="gpt-test", input="one")
            first = until_end(connection)
            connection.response.create(model="gpt-test", input="two")
            return [*first, *until_end(connection)]

    events = await in_thread(talk)
    completed = [e for e in events if e.type == "response.completed"]
    [error] = [e for e in events if e.type == "error"]
    assert len(completed) == 1
    assert (error.error.code, error.status) == ("rate_limit_exceeded", 429)
    assert len([r for r in proxy.fake.requests if r.method == "POST"]) == 1


# -- a raw client: framing, hang-ups, backpressure ---------------------------------------------


def _create(**body: Any) -> str:
    return orjson.dumps({"type": "response.create", "model": "gpt-test", **body}).decode()


async def test_a_binary_frame_closes_with_1003(proxy: Proxy) -> None:
    headers = [("authorization", f"Bearer {MASTER}")]
    async with open_websocket(proxy.ws_url, headers=headers) as ws:
        await ws._send(BytesMessage(data=b"{}"))
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
    assert closed.value.code == 1003


async def test_stream_id_is_echoed_on_every_event(proxy: Proxy) -> None:
    headers = [("authorization", f"Bearer {MASTER}")]
    async with open_websocket(proxy.ws_url, headers=headers) as ws:
        await ws.send_text(_create(input="hi", stream_id="lane-7"))
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "response.completed":
            events.append(orjson.loads(await ws.receive()))
    assert {e["stream_id"] for e in events} == {"lane-7"}
    assert "stream_id" not in next(r.json() for r in proxy.fake.requests if r.method == "POST")


async def test_messages_sent_at_once_run_one_after_another(proxy: Proxy) -> None:
    """Three creations sent without waiting: each response runs to its end before the next
    starts, in the order sent, and a bad message among them is answered in its turn."""
    headers = [("authorization", f"Bearer {MASTER}")]
    async with open_websocket(proxy.ws_url, headers=headers) as ws:
        await ws.send_text(_create(input="one"))
        await ws.send_text("[]")
        await ws.send_text(_create(input="two"))
        events: list[dict[str, Any]] = []
        while [e["type"] for e in events].count("response.completed") < 2:
            events.append(orjson.loads(await ws.receive()))
    kinds = [e["type"] for e in events]
    first_end = kinds.index("response.completed")
    assert kinds[first_end + 1] == "error" and events[first_end + 1]["code"] == "invalid_type"
    assert kinds[first_end + 2] == "response.created"
    ids = [e["response"]["id"] for e in events if e["type"] == "response.completed"]
    inputs = [r.json()["input"] for r in proxy.fake.requests if r.method == "POST"]
    assert inputs == ["one", "two"] and len(set(ids)) == 2


async def test_an_internal_error_is_told_then_closes_with_1011(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ProxyApp, "create_params", broken)
    headers = [("authorization", f"Bearer {MASTER}")]
    async with open_websocket(proxy.ws_url, headers=headers) as ws:
        await ws.send_text(_create(input="hi"))
        error = orjson.loads(await ws.receive())
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
    assert (error["type"], error["status"], error["code"]) == ("error", 500, "internal_error")
    assert "bug" not in error["message"]
    assert closed.value.code == 1011


async def test_another_path_is_refused_with_a_404(proxy: Proxy) -> None:
    url = proxy.ws_url.replace("/v1/responses", "/v1/chat/completions")
    with pytest.raises(WebSocketRefused) as refused:
        async with open_websocket(url, headers=[("authorization", f"Bearer {MASTER}")]):
            pass
    assert refused.value.status == 404
    assert orjson.loads(refused.value.body)["error"]["code"] == "unknown_url"


async def test_a_refused_handshake_without_a_key_is_a_401(proxy: Proxy) -> None:
    with pytest.raises(WebSocketRefused) as refused:
        async with open_websocket(proxy.ws_url):
            pass
    assert refused.value.status == 401
    assert orjson.loads(refused.value.body)["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize("server", ["lean", "hypercorn"])
async def test_a_client_that_disconnects_mid_response_is_recorded_cancelled(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(server, monkeypatch, tokens=400, token_delay=0.01) as proxy:
        headers = [("authorization", f"Bearer {MASTER}")]
        async with open_websocket(proxy.ws_url, headers=headers) as ws:
            await ws.send_text(_create(input="A long answer."))
            while orjson.loads(await ws.receive())["type"] != "response.output_text.delta":
                pass
        with trio.fail_after(10):
            while (await proxy.spend_statuses()) in ([], ["in_progress"]):
                await trio.testing.wait_all_tasks_blocked()
        assert await proxy.spend_statuses() == ["cancelled"]


@pytest.mark.parametrize("server", ["lean", "hypercorn"])
async def test_shutdown_ends_a_response_in_flight_failed_and_closes_with_1001(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's graceful deadline cuts a connection whose response is still running: the
    client gets the response's typed end (``response.failed``: the gateway shut down), then
    the close frame 1001, as an HTTP stream gets its end before the connection closes."""
    async with running(server, monkeypatch, tokens=2000, token_delay=0.01, grace=0.2) as proxy:
        headers = [("authorization", f"Bearer {MASTER}")]
        async with open_websocket(proxy.ws_url, headers=headers) as ws:
            await ws.send_text(_create(input="A long answer."))
            while orjson.loads(await ws.receive())["type"] != "response.output_text.delta":
                pass
            proxy.stop.set()
            events = []
            with trio.fail_after(20), pytest.raises(WebSocketClosed) as closed:
                while True:
                    events.append(orjson.loads(await ws.receive()))
    assert closed.value.code == 1001
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {
        "code": "server_error",
        "message": "The gateway shut down before this response finished.",
    }
    assert [e["sequence_number"] for e in events] == list(
        range(events[0]["sequence_number"], events[-1]["sequence_number"] + 1)
    )


@pytest.mark.parametrize("server", ["lean", "hypercorn"])
async def test_shutdown_closes_an_idle_connection_with_1001(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(server, monkeypatch, grace=0.2) as proxy:
        headers = [("authorization", f"Bearer {MASTER}")]
        async with open_websocket(proxy.ws_url, headers=headers) as ws:
            await ws.send_text(_create(input="hi"))
            while orjson.loads(await ws.receive())["type"] != "response.completed":
                pass
            proxy.stop.set()
            with trio.fail_after(20), pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
    assert closed.value.code == 1001


async def test_shutdown_of_the_lean_server_closes_an_idle_connection_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the lean server tells the app that shutdown began (``sluicegate.drain``),
    so a connection between responses closes 1001 then, not at the graceful deadline (an
    hour here: waiting for it would fail the test's bound)."""
    async with running("lean", monkeypatch, grace=3600) as proxy:
        headers = [("authorization", f"Bearer {MASTER}")]
        async with open_websocket(proxy.ws_url, headers=headers) as ws:
            await ws.send_text(_create(input="hi"))
            while orjson.loads(await ws.receive())["type"] != "response.completed":
                pass
            proxy.stop.set()
            with trio.fail_after(30), pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
    assert closed.value.code == 1001


async def test_shutdown_of_the_lean_server_lets_the_response_in_flight_finish_then_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A response running when shutdown begins is not cut while the graceful deadline is far:
    it completes, no further message is taken, and the connection closes 1001."""
    async with running("lean", monkeypatch, tokens=60, token_delay=0.01, grace=3600) as proxy:
        headers = [("authorization", f"Bearer {MASTER}")]
        async with open_websocket(proxy.ws_url, headers=headers) as ws:
            await ws.send_text(_create(input="A long answer."))
            while orjson.loads(await ws.receive())["type"] != "response.output_text.delta":
                pass
            proxy.stop.set()
            await ws.send_text(_create(input="Too late."))
            events = []
            with trio.fail_after(30), pytest.raises(WebSocketClosed) as closed:
                while True:
                    events.append(orjson.loads(await ws.receive()))
    assert closed.value.code == 1001
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["status"] == "completed"
    assert [e["type"] for e in events].count("response.created") == 0


@pytest.mark.parametrize("server", ["lean", "hypercorn"])
async def test_a_client_that_stops_reading_stops_the_upstream(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backpressure: the proxy writes a frame only once the previous one was written, and pulls
    the next event only then; a client that reads nothing holds the upstream's writes back."""
    async with running(server, monkeypatch, tokens=20_000, write_per_event=True) as proxy:
        headers = [("authorization", f"Bearer {MASTER}")]
        async with open_websocket(proxy.ws_url, headers=headers) as ws:
            # A small receive buffer (no autotuning): what the kernels hold stays small.
            ws._stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # type: ignore[attr-defined]
            await ws.send_text(_create(input="Everything, please."))
            readings = []
            for _ in range(4):
                await trio.testing.wait_all_tasks_blocked(0.05)
                readings.append(proxy.fake.statistics().bytes_written)
            assert len(set(readings)) == 1, readings
            # Reading on drains it to a normal end.
            with trio.fail_after(60):
                while orjson.loads(await ws.receive())["type"] != "response.completed":
                    pass
        # The upstream was held mid-answer (its writes blocked), not done already.
        assert 0 < readings[0] < proxy.fake.statistics().bytes_written


# -- bridged deployments ---------------------------------------------------------------------


async def test_a_bridged_deployment_answers_over_websocket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment behind a bridge (Anthropic's Messages API) answers ``response.create``
    like a native one: the events are the bridge's, chained by ``previous_response_id``."""
    fake = FakeAnthropic()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(serve_loopback, fake)
        extra = [
            {
                "model_name": "claude",
                "litellm_params": {
                    "model": "anthropic/claude-sonnet-4-5",
                    "api_base": base,
                    "api_key": "sk-ant-websocket",
                },
                "model_info": {"id": "claude-1"},
            }
        ]
        async with running("lean", monkeypatch, extra=extra) as proxy:

            def talk() -> list[Any]:
                with proxy.sdk().responses.connect() as connection:
                    connection.response.create(model="claude", input="say: hello there")
                    first = until_end(connection)
                    connection.response.create(
                        model="claude",
                        input="say: once more",
                        previous_response_id=first[-1].response.id,
                    )
                    return [*first, *until_end(connection)]

            events = await in_thread(talk)
        nursery.cancel_scope.cancel()
    done = [e for e in events if e.type == "response.completed"]
    assert [d.response.output_text for d in done] == ["hello there", "once more"]
    assert done[1].response.previous_response_id == done[0].response.id
    # The second turn carried the first one's conversation to the provider.
    assert len(fake.requests[1]["messages"]) == 3


# -- the native fake's WebSocket mode, and relaying to it ------------------------------------


def _native(name: str, fake: FakeUpstream, *, websocket: bool) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {
            "model": "openai/gpt-5.4",
            "api_base": fake.base_url,
            "api_key": PROVIDER_KEY,
            "websocket": websocket,
        },
        "model_info": {"id": name},
    }


async def test_the_native_fake_answers_in_websocket_mode_as_over_http(fake: FakeUpstream) -> None:
    ws_url = fake.base_url.replace("http://", "ws://") + "/responses"
    body = {"model": "gpt-5.4", "input": "hello"}
    headers = [("authorization", "Bearer sk-anything")]
    async with open_websocket(ws_url, headers=headers) as ws:
        await ws.send_text(orjson.dumps({"type": "response.create", **body}).decode())
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "response.completed":
            events.append(orjson.loads(await ws.receive()))
        await ws.send_text(orjson.dumps({"type": "response.nonsense"}).decode())
        error = orjson.loads(await ws.receive())
    assert (error["type"], error["error"]["param"]) == ("error", "type")
    async with (
        httpx.AsyncClient(base_url=fake.base_url) as http,
        http.stream("POST", "/responses", json={**body, "stream": True}) as answer,
    ):
        lines = [line async for line in answer.aiter_lines() if line.startswith("data: ")]
        stored = (await http.get(f"/responses/{events[-1]['response']['id']}")).json()
    over_http = [orjson.loads(line.removeprefix("data: ")) for line in lines]
    assert [e["type"] for e in events] == [e["type"] for e in over_http]
    for event in events:
        _SERVER_EVENTS.validate_python(event)
    assert stored["output"] == events[-1]["response"]["output"]
    assert [m["type"] for m in fake.extra_state["websocket"]] == [
        "response.create",
        "response.nonsense",
    ]


async def test_a_refused_websocket_handshake_on_the_fake_is_its_scripted_status(
    fake: FakeUpstream,
) -> None:
    fake.script(Fault.status(503))
    ws_url = fake.base_url.replace("http://", "ws://") + "/responses"
    with pytest.raises(WebSocketRefused) as refused:
        async with open_websocket(ws_url):
            pass
    assert refused.value.status == 503


@asynccontextmanager
async def running_native(
    monkeypatch: pytest.MonkeyPatch,
    *,
    server: str = "lean",
    tokens: int = 8,
    token_delay: float = 0.0,
    write_per_event: bool = False,
    grace: float = 2,
) -> AsyncIterator[Proxy]:
    """The proxy with ``gpt-ws`` (the native fake, ``websocket: true``), ``gpt-http`` (the
    same fake over HTTP only) and ``pool`` (two deployments of the fake with ``websocket:
    true``)."""
    monkeypatch.setenv(HTTP_SERVER_VARIABLE, server)
    async with open_fake_upstream(
        tokens=tokens, token_delay=token_delay, write_per_event=write_per_event
    ) as fake:
        extra = [
            _native("gpt-ws", fake, websocket=True),
            _native("gpt-http", fake, websocket=False),
        ]
        for name in ("pool-a", "pool-b"):
            extra.append({**_native("pool", fake, websocket=True), "model_info": {"id": name}})
        azure = {
            "model": "azure/gpt-5.4",
            "api_base": fake.base_url.removesuffix("/v1"),
            "api_key": PROVIDER_KEY,
            "api_version": "2025-04-01-preview",
            "websocket": True,
        }
        extra.append(
            {"model_name": "azure-ws", "litellm_params": azure, "model_info": {"id": "azure-ws"}}
        )
        config = _config(fake, extra)
        config["general_settings"]["graceful_shutdown_timeout"] = grace
        app = build_app(config)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    app, host="127.0.0.1", port=0, shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )  # fmt: skip
            try:
                yield Proxy(app, binds[0], fake, stop)
            finally:
                stop.set()


def _upgrades(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if r.method == "GET" and r.path.endswith("/responses"))


def _posts(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if r.method == "POST" and r.path.endswith("/responses"))


def _creates(fake: FakeUpstream) -> list[dict[str, Any]]:
    received = fake.extra_state.get("websocket", [])
    return [m for m in received if m["type"] == "response.create"]


_WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def _agent_turns(connection: Any, model: str) -> list[list[Any]]:
    """Three ``store: false`` turns of an agent loop, each chained to the one before: a
    function call, its output, a follow-up."""
    turns = []
    connection.response.create(
        model=model, input="Weather in Paris?", tools=[_WEATHER], store=False
    )
    turns.append(until_end(connection))
    first = turns[-1][-1].response
    [call] = [item for item in first.output if item.type == "function_call"]
    connection.response.create(
        model=model,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[_WEATHER],
        store=False,
        previous_response_id=first.id,
    )
    turns.append(until_end(connection))
    connection.response.create(
        model=model,
        input="Thanks. And tomorrow?",
        store=False,
        previous_response_id=turns[-1][-1].response.id,
    )
    turns.append(until_end(connection))
    return turns


@pytest.mark.parametrize("server", ["lean", "hypercorn"])
async def test_a_store_false_chain_runs_on_the_upstream_socket(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent loop of WebSocket-mode clients: ``store: false`` turns chained by
    ``previous_response_id`` work because the upstream keeps the previous response on the
    socket; every ``response.create`` goes over one upstream socket, through the pipeline."""
    async with running_native(monkeypatch, server=server) as proxy:

        def talk() -> list[list[Any]]:
            with proxy.sdk().responses.connect() as connection:
                return _agent_turns(connection, "gpt-ws")

        turns = await in_thread(talk)
        fake = proxy.fake
        responses = [events[-1].response for events in turns]
        assert [e[-1].type for e in turns] == ["response.completed"] * 3
        for events in turns:
            assert [e.sequence_number for e in events] == list(range(len(events)))
            for event in events:
                _SERVER_EVENTS.validate_python(event.to_dict())
        assert responses[0].output[-1].type == "function_call"
        assert "sunny" in responses[1].output_text
        assert [r.previous_response_id for r in responses] == [
            None,
            responses[0].id,
            responses[1].id,
        ]
        assert all(r.id.startswith("resp_") for r in responses)
        # One upstream socket, three creates on it, no HTTP request at all.
        assert (_upgrades(fake), _posts(fake)) == (1, 0)
        creates = _creates(fake)
        assert len(creates) == 3
        for create in creates:
            assert create["store"] is False and create["model"] == "gpt-5.4"
            assert "stream" not in create and "background" not in create
        # The chain names the upstream's own IDs (the socket's cache), never the gateway's.
        assert creates[0].get("previous_response_id") is None
        assert creates[1]["previous_response_id"] not in {r.id for r in responses}
        assert creates[1]["previous_response_id"].startswith("resp_")
        assert creates[2]["previous_response_id"] not in {r.id for r in responses}
        assert creates[1]["input"][0]["call_id"] == responses[0].output[-1].call_id
        # Accounted as any response: one spend row each, with usage and cost.
        gateway = proxy.app.gateway
        assert gateway is not None
        logs = {log.response_id: log for log in await gateway.spend_logs()}
        for response in responses:
            log = logs[response.id]
            assert (log.status, log.deployment_id) == ("completed", "gpt-ws")
            assert log.total_tokens == response.usage.total_tokens > 0
            assert log.cost is not None and log.cost > 0
        # A ``store: false`` response is not kept, as over HTTP.
        async with proxy.http() as http:
            over_ws = await http.get(f"/v1/responses/{responses[2].id}")
            made = await http.post(
                "/v1/responses", json={"model": "gpt-ws", "input": "hi", "store": False}
            )
            over_http = await http.get(f"/v1/responses/{made.json()['id']}")
        assert over_ws.status_code == over_http.status_code == 404
        assert over_ws.json()["error"]["code"] == over_http.json()["error"]["code"]


async def test_the_same_store_false_chain_over_http_fails_as_at_openai(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over HTTP, nothing kept a ``store: false`` response: its ``previous_response_id`` is
    ``previous_response_not_found``, from the gateway as from the upstream itself."""
    async with running_native(monkeypatch) as proxy:
        client = proxy.sdk()

        def over_http() -> tuple[Any, openai.BadRequestError]:
            first = client.responses.create(
                model="gpt-ws", input="Weather in Paris?", tools=[_WEATHER], store=False
            )
            [call] = [item for item in first.output if item.type == "function_call"]
            try:
                client.responses.create(
                    model="gpt-ws",
                    input=[
                        {"type": "function_call_output", "call_id": call.call_id, "output": "x"}
                    ],
                    store=False,
                    previous_response_id=first.id,
                )
            except openai.BadRequestError as exc:
                return first, exc
            raise AssertionError("the chain went on over HTTP")

        _, refused = await in_thread(over_http)
        assert isinstance(refused, openai.BadRequestError)
        assert refused.code == "previous_response_not_found"
        assert refused.param == "previous_response_id"
        # Refused by the gateway, which kept no state for it: the upstream got one request
        # (the fake refuses such a chain over HTTP too: the test below).
        assert _posts(proxy.fake) == 1
        assert _upgrades(proxy.fake) == 0


async def test_two_client_connections_get_two_upstream_sockets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_native(monkeypatch) as proxy:

        def talk() -> tuple[list[Any], list[Any]]:
            client = proxy.sdk()
            with client.responses.connect() as one, client.responses.connect() as two:
                one.response.create(model="gpt-ws", input="One.", store=False)
                first = until_end(one)
                two.response.create(model="gpt-ws", input="Two.", store=False)
                until_end(two)
                # Another connection's ``store: false`` response is not on this one's socket.
                two.response.create(
                    model="gpt-ws",
                    input="Go on.",
                    store=False,
                    previous_response_id=first[-1].response.id,
                )
                refused = until_end(two)
                one.response.create(
                    model="gpt-ws",
                    input="Go on.",
                    store=False,
                    previous_response_id=first[-1].response.id,
                )
                return refused, until_end(one)

        refused, continued = await in_thread(talk)
        [error] = refused
        assert (error.type, error.error.code) == ("error", "previous_response_not_found")
        assert continued[-1].type == "response.completed"
        assert _upgrades(proxy.fake) == 2
        assert len(_creates(proxy.fake)) == 3


async def test_an_upstream_socket_dropped_before_the_first_event_is_retried_on_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_native(monkeypatch) as proxy:

        def talk() -> list[Any]:
            with proxy.sdk().responses.connect() as connection:
                connection.response.create(model="gpt-ws", input="First.")
                until_end(connection)
                proxy.fake.script(Fault.reset_mid_stream(after_events=0))
                connection.response.create(model="gpt-ws", input="Second.")
                return until_end(connection)

        events = await in_thread(talk)
        assert isinstance(events[0], ResponseWsCreated)
        assert events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert _upgrades(proxy.fake) == 2
        assert len(_creates(proxy.fake)) == 3  # the lost one, then its retry
        assert await proxy.spend_statuses() == ["completed", "completed"]


async def test_an_upstream_socket_dropped_mid_response_fails_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_native(monkeypatch) as proxy:

        def talk() -> tuple[list[Any], list[Any]]:
            with proxy.sdk().responses.connect() as connection:
                proxy.fake.script(Fault.reset_mid_stream(after_events=3))
                connection.response.create(model="gpt-ws", input="Cut me.")
                cut = until_end(connection)
                # The connection goes on, on a new upstream socket.
                connection.response.create(model="gpt-ws", input="Again.")
                return cut, until_end(connection)

        cut, again = await in_thread(talk)
        assert [e.type for e in cut[:3]] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
        ]
        assert cut[-1].type == "response.failed"
        assert cut[-1].response.error is not None
        assert again[-1].type == "response.completed"
        assert sorted(await proxy.spend_statuses()) == ["completed", "failed"]
        assert _upgrades(proxy.fake) == 2
        async with proxy.http() as http:
            got = (await http.get(f"/v1/responses/{cut[-1].response.id}")).json()
        assert got["status"] == "failed"


async def test_an_upstream_error_message_is_an_error_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_native(monkeypatch) as proxy:
        refusal = {
            "error": {
                "message": "Invalid value for 'input'.",
                "type": "invalid_request_error",
                "param": "input",
                "code": "invalid_value",
            }
        }

        def talk() -> tuple[list[Any], list[Any]]:
            with proxy.sdk().responses.connect() as connection:
                connection.response.create(model="gpt-ws", input="First.")
                until_end(connection)
                proxy.fake.script(Fault.status(400, body=refusal))
                connection.response.create(model="gpt-ws", input="Refused.")
                refused = until_end(connection)
                connection.response.create(model="gpt-ws", input="Fine again.")
                return refused, until_end(connection)

        refused, fine = await in_thread(talk)
        [error] = refused
        assert isinstance(error, ResponseWsError)
        assert (error.error.code, error.error.param, error.error.message) == (
            "invalid_value",
            "input",
            "Invalid value for 'input'.",
        )
        assert error.status == 400
        assert fine[-1].type == "response.completed"
        assert _upgrades(proxy.fake) == 1  # an error message does not cost the socket


@pytest.mark.parametrize("server", ["lean", "hypercorn"])
async def test_a_client_that_stops_reading_stops_the_upstream_socket_and_steers_it(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backpressure over the upstream socket: its messages are pulled one at a time, so the
    fake's writes wait while the client reads nothing. A ``response.steer`` naming the response
    reaches the upstream socket it runs on at once, and its acknowledgement comes back."""
    async with running_native(
        monkeypatch, server=server, tokens=20_000, write_per_event=True
    ) as proxy:
        headers = [("authorization", f"Bearer {MASTER}")]
        async with open_websocket(proxy.ws_url, headers=headers) as ws:
            ws._stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # type: ignore[attr-defined]
            await ws.send_text(_create(model="gpt-ws", input="Everything, please."))
            created = orjson.loads(await ws.receive())
            assert created["type"] == "response.created"
            readings = []
            for _ in range(4):
                await trio.testing.wait_all_tasks_blocked(0.05)
                readings.append(proxy.fake.statistics().bytes_written)
            assert len(set(readings)) == 1, readings
            steer = {
                "type": "response.steer",
                "input": "Shorter, please.",
                "previous_response_id": created["response"]["id"],
            }
            await ws.send_text(orjson.dumps(steer).decode())
            # The fake is held mid-response (its writes wait): the steer reaches it running,
            # which its acknowledgement (``response.steer.accepted``, not ``.failed``) shows.
            events: list[dict[str, Any]] = []
            with trio.fail_after(60):
                while not events or events[-1]["type"] != "response.completed":
                    events.append(orjson.loads(await ws.receive()))
        assert 0 < readings[0] < proxy.fake.statistics().bytes_written
        [accepted] = [e for e in events if e["type"] == "response.steer.accepted"]
        _SERVER_EVENTS.validate_python(accepted)
        # Named by the gateway's ID to the client, by the upstream's own upstream.
        assert accepted["steer"]["previous_response_id"] == created["response"]["id"]
        [sent] = [m for m in _received(proxy.fake) if m["type"] == "response.steer"]
        [create] = _creates(proxy.fake)
        assert sent["previous_response_id"] not in (created["response"]["id"], None)
        assert sent["input"] == "Shorter, please."
        assert _upgrades(proxy.fake) == 1
        assert create["input"] == "Everything, please."
        assert await proxy.spend_statuses() == ["completed"]


def _received(fake: FakeUpstream) -> list[dict[str, Any]]:
    return list(fake.extra_state.get("websocket", []))


async def test_other_messages_go_to_the_upstream_socket_of_their_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message the gateway does not run, about a response made at a deployment that offers
    WebSocket mode, goes over the client connection's socket there; the upstream's answer
    comes back as it is (with the gateway's IDs). Elsewhere it is an error event."""
    async with running_native(monkeypatch) as proxy:
        fake = proxy.fake
        alice = await proxy.new_key()

        def talk() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with proxy.sdk().responses.connect() as connection:
                connection.response.create(model="gpt-ws", input="Start.")
                relayable = until_end(connection)[-1].response.id
                connection.response.create(model="gpt-http", input="Start.")
                not_relayable = until_end(connection)[-1].response.id
                connection.response.steer(input="Also this.", previous_response_id=relayable)
                seen["late"] = connection.recv()
                connection.response.steer(input="And this.", previous_response_id=not_relayable)
                seen["refused"] = connection.recv()
                seen["id"] = relayable
            with proxy.sdk(alice).responses.connect() as connection:
                connection.response.steer(input="Not mine.", previous_response_id=relayable)
                seen["not_mine"] = connection.recv()
                connection.response.create(model="gpt-ws", input="Mine.")
                own = until_end(connection)[-1].response.id
                connection.response.steer(input="Mine too.", previous_response_id=own)
                seen["own"] = connection.recv()
            return seen

        seen = await in_thread(talk)
        statuses = await proxy.spend_statuses()
    # The response completed on that socket: the upstream says so.
    late = seen["late"]
    assert late.type == "response.steer.failed"
    assert late.error.code == "response_already_completed"
    assert late.steer.previous_response_id == seen["id"]
    steers = [m for m in _received(fake) if m["type"] == "response.steer"]
    assert steers[0]["input"] == "Also this."
    assert steers[0]["previous_response_id"] != seen["id"]
    refused = seen["refused"]
    assert (refused.type, refused.error.code) == ("error", "unsupported_event_type")
    assert "response.steer" in refused.error.message
    assert (seen["not_mine"].error.code, seen["not_mine"].error.param) == (
        "previous_response_not_found",
        "previous_response_id",
    )
    assert seen["own"].type == "response.steer.failed"
    # Steering messages are not responses: nothing recorded for them.
    assert statuses == ["completed"] * 3
    # One upstream socket per client connection that used gpt-ws.
    assert _upgrades(fake) == 2
    assert _posts(fake) == 1  # gpt-http's


async def test_the_fake_keeps_a_store_false_response_on_its_socket_only(
    fake: FakeUpstream,
) -> None:
    ws_url = fake.base_url.replace("http://", "ws://") + "/responses"
    headers = [("authorization", "Bearer sk-anything")]

    async def turn(ws: Any, **body: Any) -> dict[str, Any]:
        await ws.send_text(orjson.dumps({"type": "response.create", **body}).decode())
        while True:
            event: dict[str, Any] = orjson.loads(await ws.receive())
            if event["type"] in ("response.completed", "error"):
                return event

    body = {"model": "gpt-5.4", "store": False}
    async with (
        open_websocket(ws_url, headers=headers) as one,
        open_websocket(ws_url, headers=headers) as two,
    ):
        first = (await turn(one, input="a", **body))["response"]["id"]
        second = await turn(one, input="b", previous_response_id=first, **body)
        assert second["type"] == "response.completed"
        elsewhere = await turn(two, input="c", previous_response_id=first, **body)
        # Only the most recent one is kept on the socket.
        stale = await turn(one, input="d", previous_response_id=first, **body)
    for refused in (elsewhere, stale):
        assert (refused["status"], refused["error"]["code"]) == (400, "previous_response_not_found")
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        over_http = await http.post(
            "/responses",
            json={
                "model": "gpt-5.4",
                "input": "e",
                "previous_response_id": second["response"]["id"],
            },
        )
    assert over_http.json()["error"]["code"] == "previous_response_not_found"


async def test_an_upstream_refusing_the_handshake_is_retried_as_its_status_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handshake answered in HTTP is that status's error, as a ``POST`` answered so: a 503
    is retried (on a new socket), a 401 is the client's ``error`` event."""
    async with running_native(monkeypatch) as proxy:

        def talk() -> tuple[list[Any], list[Any]]:
            with proxy.sdk().responses.connect() as connection:
                proxy.fake.script(Fault.status(503))
                connection.response.create(model="gpt-ws", input="Retried.")
                retried = until_end(connection)
            with proxy.sdk().responses.connect() as connection:
                proxy.fake.script(Fault.status(401))
                connection.response.create(model="gpt-ws", input="Refused.")
                return retried, until_end(connection)

        retried, refused = await in_thread(talk)
        assert retried[-1].type == "response.completed"
        [error] = refused
        assert (error.type, error.status, error.error.code) == ("error", 401, "invalid_api_key")
        assert _upgrades(proxy.fake) == 3
        assert len(_creates(proxy.fake)) == 1


async def test_a_client_that_goes_mid_response_cancels_it_and_closes_the_upstream_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_native(monkeypatch, tokens=20_000, write_per_event=True) as proxy:
        headers = [("authorization", f"Bearer {MASTER}")]
        async with open_websocket(proxy.ws_url, headers=headers) as ws:
            await ws.send_text(_create(model="gpt-ws", input="A long answer."))
            while orjson.loads(await ws.receive())["type"] != "response.output_text.delta":
                pass
            assert proxy.fake.statistics().open_connections == 1
        with trio.fail_after(10):
            while (await proxy.spend_statuses()) in ([], ["in_progress"]):
                await trio.testing.wait_all_tasks_blocked()
            while proxy.fake.statistics().open_connections:
                await trio.testing.wait_all_tasks_blocked()
        assert await proxy.spend_statuses() == ["cancelled"]
        assert proxy.fake.statistics().connections_closed == 1


async def test_a_store_false_chain_stays_on_the_deployment_and_socket_it_began_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a group of several deployments that offer WebSocket mode, ``previous_response_id``
    pins each turn to the deployment of the one before, so the chain stays on one socket."""
    async with running_native(monkeypatch) as proxy:

        def talk() -> list[Any]:
            ends = []
            with proxy.sdk().responses.connect() as connection:
                previous = None
                for turn in range(6):
                    connection.response.create(
                        model="pool",
                        input=f"Turn {turn}.",
                        store=False,
                        previous_response_id=previous,
                    )
                    ends.append(until_end(connection)[-1])
                    previous = ends[-1].response.id
            return ends

        ends = await in_thread(talk)
        gateway = proxy.app.gateway
        assert gateway is not None
        deployments = {log.deployment_id for log in await gateway.spend_logs()}
    assert [e.type for e in ends] == ["response.completed"] * 6
    assert len(deployments) == 1 and deployments <= {"pool-a", "pool-b"}
    assert _upgrades(proxy.fake) == 1


@pytest.mark.parametrize("server", ["lean", "hypercorn"])
async def test_shutdown_ends_a_response_on_the_upstream_socket_failed(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_native(
        monkeypatch, server=server, tokens=2000, token_delay=0.01, grace=0.2
    ) as proxy:
        headers = [("authorization", f"Bearer {MASTER}")]
        async with open_websocket(proxy.ws_url, headers=headers) as ws:
            await ws.send_text(_create(model="gpt-ws", input="A long answer."))
            while orjson.loads(await ws.receive())["type"] != "response.output_text.delta":
                pass
            proxy.stop.set()
            events = []
            with trio.fail_after(20), pytest.raises(WebSocketClosed) as closed:
                while True:
                    events.append(orjson.loads(await ws.receive()))
        assert closed.value.code == 1001
        assert events[-1]["type"] == "response.failed"
        assert events[-1]["response"]["error"]["code"] == "server_error"
        # The upstream socket was closed with the connection (the fake is still serving).
        with trio.fail_after(10):
            while proxy.fake.statistics().open_connections:
                await trio.testing.wait_all_tasks_blocked()
        assert proxy.fake.statistics().connections_closed == 1


async def test_an_azure_deployment_chains_over_its_websocket_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Azure's address (its older route with ``api-version``) and key header (``api-key``)
    open the upstream socket; the chain runs there as at OpenAI."""
    async with running_native(monkeypatch) as proxy:

        def talk() -> list[list[Any]]:
            with proxy.sdk().responses.connect() as connection:
                return _agent_turns(connection, "azure-ws")

        turns = await in_thread(talk)
    assert [events[-1].type for events in turns] == ["response.completed"] * 3
    [upgrade] = [r for r in proxy.fake.requests if r.method == "GET"]
    assert (upgrade.path, upgrade.query) == ("/openai/responses", "api-version=2025-04-01-preview")
    assert upgrade.headers["api-key"] == PROVIDER_KEY
    assert "authorization" not in upgrade.headers
    assert len(_creates(proxy.fake)) == 3 and _posts(proxy.fake) == 0
