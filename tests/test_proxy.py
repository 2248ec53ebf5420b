"""The proxy on a real loopback server, driven by the official ``openai`` SDK: if the
SDK cannot parse what we send, it is wrong. The upstream is the built-in fake on loopback;
the store is in memory. Real clock (hypercorn keeps its own timers), short intervals."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import openai
import orjson
import pytest
import trio
from openai.types.responses import ResponseCreatedEvent

from sluicegate.fake import FakeUpstream, Fault, open_fake_upstream
from sluicegate.server import ProxyApp, build_app, serve

from .conftest import MEMORY_STORE
from .sdk import sdk_event
from .serve_process import serving as serving_process

MASTER = "sk-master-0123456789abcdef"
PROVIDER_KEY = "sk-provider-fedcba9876543210"


def proxy_config(fake: FakeUpstream, **general: Any) -> dict[str, Any]:
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
            {
                "model_name": "other",
                "litellm_params": {
                    "model": "openai/gpt-5.4-mini",
                    "api_base": fake.base_url,
                    "api_key": PROVIDER_KEY,
                },
                "model_info": {"id": "fake-2"},
            },
        ],
        "general_settings": {
            "master_key": MASTER,
            "response_id_secret": "proxy-test",
            "store": MEMORY_STORE,
            **general,
        },
    }


@attrs.define(eq=False)
class Proxy:
    app: ProxyApp
    url: str
    fake: FakeUpstream
    stop: trio.Event
    clients: list[openai.AsyncOpenAI] = attrs.Factory(list)

    def client(self, key: str = MASTER) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    def http(self, key: str | None = MASTER) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)

    async def new_key(self, **body: Any) -> dict[str, Any]:
        async with self.http() as http:
            answer = await http.post("/key/generate", json=body)
        assert answer.status_code == 200, answer.text
        key: dict[str, Any] = answer.json()
        return key


@asynccontextmanager
async def running(
    *, tokens: int = 8, token_delay: float = 0.0, **general: Any
) -> AsyncIterator[Proxy]:
    general.setdefault("graceful_shutdown_timeout", 2)
    async with open_fake_upstream(tokens=tokens, token_delay=token_delay) as fake:
        app = build_app(proxy_config(fake, **general))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    app,
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            proxy = Proxy(app, binds[0], fake, stop)
            try:
                yield proxy
            finally:
                for client in proxy.clients:
                    await client.close()
                stop.set()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    async with running() as p:
        yield p


# -- the SDK against the proxy -------------------------------------------------------------------


async def test_sdk_create_retrieve_input_items_delete(proxy: Proxy) -> None:
    client = proxy.client()
    created = await client.responses.create(model="gpt-test", input="hello proxy")
    assert created.id.startswith("resp_") and created.status == "completed"
    assert created.output_text
    got = await client.responses.retrieve(created.id)
    assert (got.id, got.output_text) == (created.id, created.output_text)
    items = await client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    await client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)


async def test_sdk_stream_every_event_parses(proxy: Proxy) -> None:
    client = proxy.client()
    stream = await client.responses.create(model="gpt-test", input="hello", stream=True)
    types = []
    async for event in stream:
        types.append(event.type)
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types


async def test_sdk_follow_up_with_previous_response_id(proxy: Proxy) -> None:
    client = proxy.client()
    first = await client.responses.create(model="gpt-test", input="one")
    second = await client.responses.create(
        model="gpt-test", input="two", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id


async def test_sdk_background_and_cancel() -> None:
    async with running(tokens=400, token_delay=0.01) as proxy:
        client = proxy.client()
        job = await client.responses.create(model="gpt-test", input="long", background=True)
        assert job.status == "queued" and job.background
        polled = await client.responses.retrieve(job.id)
        assert polled.status in ("queued", "in_progress")
        cancelled = await client.responses.cancel(job.id)
        assert cancelled.status == "cancelled"
        again = await client.responses.cancel(job.id)
        assert again.status == "cancelled"


async def test_sdk_stream_resume_of_a_background_response() -> None:
    async with running(tokens=30, token_delay=0.01) as proxy:
        client = proxy.client()
        stream = await client.responses.create(
            model="gpt-test", input="go", background=True, stream=True
        )
        seen = []
        async for event in stream:
            seen.append(event)
            if len(seen) == 4:
                break
        await stream.close()
        created = seen[0]
        assert isinstance(created, ResponseCreatedEvent)
        rid = created.response.id
        resumed = await client.responses.retrieve(rid, stream=True, starting_after=3)
        rest = [event async for event in resumed]
        numbers = [e.sequence_number for e in seen + rest]
        assert numbers == list(range(len(numbers)))
        assert rest[-1].type == "response.completed"


async def test_sdk_errors_are_typed(proxy: Proxy) -> None:
    with pytest.raises(openai.AuthenticationError):
        await proxy.client("sk-wrong").responses.create(model="gpt-test", input="x")
    client = proxy.client()
    with pytest.raises(openai.NotFoundError) as missing:
        await client.responses.create(model="no-such-model", input="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(model="gpt-test", input="x", temperature=9)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as upstream:
        await client.responses.create(
            model="gpt-test", input="x", extra_body={"api_base": "https://evil.test"}
        )
    assert upstream.value.param == "api_base"
    with pytest.raises(openai.BadRequestError) as owner:
        await client.responses.create(model="gpt-test", input="x", extra_body={"owner": "bob"})
    assert owner.value.param == "owner"


# -- keys and ownership --------------------------------------------------------------------------


async def test_keys_own_their_responses_and_the_admin_reaches_all(proxy: Proxy) -> None:
    alice = (await proxy.new_key(key_alias="alice"))["key"]
    bob = (await proxy.new_key(key_alias="bob"))["key"]
    made = await proxy.client(alice).responses.create(model="gpt-test", input="mine")
    for call in ("retrieve", "delete", "cancel"):
        with pytest.raises(openai.NotFoundError):
            await getattr(proxy.client(bob).responses, call)(made.id)
    with pytest.raises(openai.NotFoundError):
        await proxy.client(bob).responses.input_items.list(made.id)
    assert (await proxy.client().responses.retrieve(made.id)).id == made.id
    assert (await proxy.client(alice).responses.retrieve(made.id)).id == made.id


async def test_key_limits_surface_as_sdk_errors(proxy: Proxy) -> None:
    limited = (await proxy.new_key(models=["gpt-test"], rpm_limit=1))["key"]
    client = proxy.client(limited)
    with pytest.raises(openai.PermissionDeniedError):
        await client.responses.create(model="other", input="x")
    await client.responses.create(model="gpt-test", input="x")
    with pytest.raises(openai.RateLimitError) as limit:
        await client.responses.create(model="gpt-test", input="x")
    assert int(limit.value.response.headers["retry-after"]) >= 1
    models = await client.models.list()
    assert [m.id for m in models.data] == ["gpt-test"]
    async with proxy.http(limited) as http:
        refused = await http.post("/key/generate", json={})
    assert refused.status_code == 403


async def test_a_background_response_holds_its_keys_parallel_slot_until_it_ends() -> None:
    """Regression: ``max_parallel_requests`` did not count background responses (10 ran with
    a limit of 2): the slot was given back when the 200 ``queued`` went out."""
    async with running(tokens=400, token_delay=0.01) as proxy:  # 4 s a response
        key = (await proxy.new_key(max_parallel_requests=2))["key"]
        client = proxy.client(key)
        polled = await client.responses.create(model="gpt-test", input="a", background=True)
        # Streamed, and left after its first event: it runs on, and so does its hold.
        stream = await client.responses.create(
            model="gpt-test", input="b", background=True, stream=True
        )
        async for event in stream:
            assert isinstance(event, ResponseCreatedEvent)
            streamed_id = event.response.id
            break
        await stream.close()
        for background in (True, False):
            with pytest.raises(openai.RateLimitError) as limited:
                await client.responses.create(model="gpt-test", input="c", background=background)
            assert "2 parallel requests" in limited.value.message
        # Cancelled, it has ended: its slot is free at once.
        assert (await client.responses.cancel(polled.id)).status == "cancelled"
        third = await client.responses.create(model="gpt-test", input="c", background=True)
        with pytest.raises(openai.RateLimitError):
            await client.responses.create(model="gpt-test", input="d", background=True)
        for response_id in (streamed_id, third.id):
            await client.responses.cancel(response_id)


async def test_a_background_response_gives_its_slot_back_however_it_ends(proxy: Proxy) -> None:
    """A background response that ends by itself, or fails before it starts, holds nothing."""
    key = (await proxy.new_key(max_parallel_requests=1))["key"]
    client = proxy.client(key)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-model", input="x", background=True)
    # The stream ends once the response has: its slot is free by then.
    for _ in range(2):
        stream = await client.responses.create(
            model="gpt-test", input="x", background=True, stream=True
        )
        assert [e.type async for e in stream][-1] == "response.completed"
    assert (await client.responses.create(model="gpt-test", input="x")).status == "completed"


# -- the wire ------------------------------------------------------------------------------------


async def test_sse_is_exactly_what_openai_sends(proxy: Proxy) -> None:
    async with proxy.http() as http:
        answer = await http.post(
            "/v1/responses", json={"model": "gpt-test", "input": "hi", "stream": True}
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-request-id"].startswith("req_")
    assert float(answer.headers["x-sluicegate-overhead-ms"]) >= 0
    frames = [f for f in answer.text.split("\n\n") if f]
    assert "[DONE]" not in answer.text
    for frame in frames:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = orjson.loads(data_line[len("data: ") :])
        assert data["type"] == event_line[len("event: ") :]
        sdk_event(data)


async def test_keepalive_comments_while_the_upstream_is_silent() -> None:
    async with (
        running(tokens=3, token_delay=0.3, sse_keepalive_interval=0.05) as proxy,
        proxy.http() as http,
    ):
        answer = await http.post(
            "/v1/responses", json={"model": "gpt-test", "input": "hi", "stream": True}
        )
    assert answer.text.count(": \n\n") >= 3
    assert answer.text.rstrip().endswith("}")


async def test_a_client_that_hangs_up_cancels_and_records_its_response() -> None:
    async with running(tokens=200, token_delay=0.02) as proxy:
        async with (
            proxy.http() as http,
            http.stream(
                "POST", "/v1/responses", json={"model": "gpt-test", "input": "hi", "stream": True}
            ) as answer,
        ):
            async for line in answer.aiter_lines():
                if line.startswith("data: ") and "output_text.delta" in line:
                    break
        gateway = proxy.app.gateway
        assert gateway is not None
        with trio.fail_after(10):
            # Polling the store, as a client would: the cancellation is recorded by the server.
            while not (logs := await gateway.spend_logs()) or logs[0].status == "in_progress":  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert logs[0].status == "cancelled" and logs[0].estimated


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "create"])
async def test_a_client_that_hangs_up_before_the_first_byte_is_recorded_cancelled(
    stream: bool,
) -> None:
    """Regression: a client that hung up before the upstream's first byte left no row at all.
    It is recorded ``cancelled`` (nothing was generated, nothing is owed)."""
    async with running() as proxy:
        proxy.fake.script(Fault.stall(after_events=0))  # not even the response headers
        gateway = proxy.app.gateway
        assert gateway is not None
        async with proxy.http() as http, trio.open_nursery() as nursery:
            body = {"model": "gpt-test", "input": "hi", "stream": stream}
            nursery.start_soon(partial(http.post, "/v1/responses", json=body))
            with trio.fail_after(10):
                while not proxy.fake.requests:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # the request reached the upstream (another task)
            nursery.cancel_scope.cancel()  # the client hangs up
        with trio.fail_after(10):
            while not (logs := await gateway.spend_logs()):  # noqa: ASYNC110
                await trio.sleep(0.01)  # recorded by the server's request task
        [log] = logs
        assert (log.status, log.input_tokens, log.output_tokens, log.cost) == (
            "cancelled",
            0,
            0,
            0.0,
        )


async def test_bad_requests_get_openai_envelopes(proxy: Proxy) -> None:
    async with proxy.http() as http:
        malformed = await http.post("/v1/responses", content=b"{not json")
        huge = await http.post("/v1/responses", content=b"x" * (17 * 1024 * 1024))
        no_key = await http.post("/v1/responses", json={}, headers={"authorization": ""})
        unknown = await http.get("/v1/responses/resp_nope")
        header = await http.post(
            "/v1/responses",
            json={"model": "gpt-test", "input": "x"},
            headers={"x-api-base": "https://evil.test"},
        )
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "invalid_json")
    assert huge.status_code == 413
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert unknown.status_code == 404
    assert header.status_code == 400 and header.json()["error"]["param"] == "x-api-base"


async def test_health_models_and_metrics(proxy: Proxy) -> None:
    await proxy.client().responses.create(model="gpt-test", input="count me")
    async with proxy.http(None) as http:
        live = await http.get("/health/liveliness")
        ready = await http.get("/health/readiness")
        metrics = await http.get("/metrics")
    assert live.json() == {"status": "healthy"}
    assert ready.json()["store"] == "connected"
    text = metrics.text
    assert 'sluicegate_requests_total{route="/v1/responses",method="POST",status="200"} 1' in text
    assert "sluicegate_request_duration_seconds_bucket" in text
    assert 'sluicegate_tokens_total{model="gpt-test",kind="output"} 8' in text


async def test_secrets_never_leave_the_gateway(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    async with running() as proxy:
        key = (await proxy.new_key(key_alias="k"))["key"]
        async with proxy.http(key) as http, proxy.http() as admin:
            for request in (
                http.post("/v1/responses", json={"model": "gpt-test", "input": "x"}),
                http.post("/v1/responses", json={"model": "nope", "input": "x"}),
                http.post("/v1/responses", json={"model": "gpt-test", "api_key": "x"}),
                http.post("/v1/responses", content=b"{"),
                http.get("/v1/responses/resp_forged"),
                http.get("/key/info"),
                admin.get("/metrics"),
                admin.get("/key/info", params={"key": key}),
                http.post("/key/delete", json={"keys": [key]}),
            ):
                answer = await request
                bodies.append(answer.text + str(answer.headers))
        async with proxy.http("sk-sg-wrong-" + key[-6:]) as wrong:
            bodies.append((await wrong.get("/key/info")).text)
    # The gateway's logs and the server's (the test's own HTTP client logs its URLs, which
    # carry the key it sent on purpose).
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("sluicegate", "hyper"))]
    everything = "\n".join(bodies + ours)
    for secret in (MASTER, PROVIDER_KEY, key, key[6:]):
        assert secret not in everything


async def _first_delta_then(proxy: Proxy, then: Any) -> str:
    """Stream a response; at its first delta, call ``then``; return the whole SSE body read."""
    text = ""
    async with (
        proxy.http() as http,
        http.stream(
            "POST", "/v1/responses", json={"model": "gpt-test", "input": "hi", "stream": True}
        ) as answer,
    ):
        try:
            async for chunk in answer.aiter_text():
                text += chunk
                if "output_text.delta" in text and then is not None:
                    then()
                    then = None
        except httpx.RemoteProtocolError:
            pass  # cut by the server at its graceful deadline
    return text


async def test_graceful_shutdown_lets_in_flight_streams_finish() -> None:
    async with running(tokens=20, token_delay=0.02, graceful_shutdown_timeout=10) as proxy:
        text = await _first_delta_then(proxy, proxy.stop.set)
    assert "event: response.completed" in text


async def test_graceful_shutdown_ends_what_outlives_the_deadline_recorded(tmp_path: Any) -> None:
    """Regression: a stream still running at the graceful deadline was cut (a chunked body
    with no terminal event) and recorded ``cancelled``. Now the client gets the rest of what
    was on its way, its open items closed and one ``response.failed`` saying the gateway shut
    down, gapless and parsed by the SDK; the store records the same end."""
    path = str(tmp_path / "proxy.db")
    async with running(
        tokens=500, token_delay=0.02, graceful_shutdown_timeout=0.2, store={"path": path}
    ) as proxy:
        text = await _first_delta_then(proxy, proxy.stop.set)
    events = [
        orjson.loads(line[len("data: ") :])
        for line in text.split("\n")
        if line.startswith("data: ")
    ]
    for event in events:
        sdk_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events].count("response.failed") == 1
    last = events[-1]
    assert last["type"] == "response.failed"
    error = {
        "code": "server_error",
        "message": "The gateway shut down before this response finished.",
    }
    assert last["response"]["error"] == error
    [message] = last["response"]["output"]
    assert message["status"] == "incomplete" and message["content"][0]["text"]
    assert text.endswith("\n\n")
    from sluicegate.store import open_sqlite_store

    async with open_sqlite_store(path) as store:
        [log] = await store.spend_logs(_everything())
        row = await store.get(log.response_id)
        final = await store.final_response(log.response_id)
    assert log.status == "failed" and log.estimated
    assert row is not None and row.error == error
    assert final is not None and final["output"] == last["response"]["output"]


def _everything() -> Any:
    from sluicegate.store import SpendFilter

    return SpendFilter()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sluicegate_serve_from_the_command_line(tmp_path: Any, workers: int) -> None:
    """The CLI as a user runs it: the demo provider, a master key, a store file; one worker in
    the process or several hypercorn worker processes sharing the store."""
    config = tmp_path / "serve.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: demo\n"
        "    litellm_params: {model: fake/demo, fake_tokens: 5}\n"
        "general_settings:\n"
        f"  master_key: {MASTER}\n"
        f"  store: {{path: {tmp_path / 'serve.db'}}}\n"
    )
    log = tmp_path / "serve.log"
    async with (
        serving_process(config, workers=workers, log=log) as server,
        openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=MASTER) as client,
    ):
        for _ in range(2 * workers):
            made = await client.responses.create(model="demo", input="hello")
            assert made.status == "completed"
            assert (await client.responses.retrieve(made.id)).id == made.id
    # SIGTERM at the end of the block: a clean stop.
    assert server.process.returncode == 0, log.read_text()


@pytest.mark.parametrize(
    "fault",
    [Fault.reset_mid_stream(after_events=5), Fault.malformed_sse(after_events=5)],
    ids=["reset", "malformed"],
)
async def test_a_stream_broken_upstream_ends_with_response_failed_for_the_sdk(
    proxy: Proxy, fault: Fault
) -> None:
    proxy.fake.script(fault)
    async with proxy.client() as client:
        stream = await client.responses.create(model="gpt-test", input="hi", stream=True)
        events = [event async for event in stream]
    assert events[-1].type == "response.failed"
    assert [e.type for e in events].count("response.failed") == 1
    assert events[-1].response.error is not None


async def test_an_upstream_error_before_any_event_is_the_sdks_typed_error(proxy: Proxy) -> None:
    # Retry-After beyond max_retry_after: the gateway passes the 429 on instead of waiting.
    proxy.fake.script(Fault.status(429, headers={"retry-after": "1000"}))
    async with proxy.client() as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.responses.create(model="gpt-test", input="hi", stream=True)
        # Recorded failed all the same, under the ID the error's header names.
        response_id = info.value.response.headers["x-sluicegate-response-id"]
        failed = await client.responses.retrieve(response_id)
    assert failed.status == "failed" and failed.error is not None
    assert info.value.response.headers["retry-after"] == "1000"


def test_serving_without_a_master_key_is_refused_at_start() -> None:
    from sluicegate.errors import ConfigError

    config = {"model_list": [], "general_settings": {"store": MEMORY_STORE}}
    with pytest.raises(ConfigError) as info:
        build_app(config)
    assert info.value.path == "general_settings.master_key"
    build_app({**config, "general_settings": {"allow_unauthenticated": True}})
