"""The proxy's client headers: LiteLLM's names for ours (spend metadata, the model of files and
batches) and ``general_settings.forward_client_headers``, the allowlist of what reaches a native
upstream. What each fake upstream received is the proof."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from sluicegate.config import DEFAULT_FORWARD_CLIENT_HEADERS, forward_refusal
from sluicegate.server import build_app
from sluicegate.server._exchange import FORBIDDEN_HEADERS

from . import test_files_batches as files
from .bridge_fakes import mock_transport
from .conftest import MEMORY_STORE
from .fake_chat import FakeChat
from .proxy_server import serving
from .test_proxy import MASTER, PROVIDER_KEY, running

RESPONSE = {"model": "gpt-test", "input": "hi"}


# -- LiteLLM's header names ---------------------------------------------------------------------


async def test_spend_metadata_from_litellms_header_lands_in_the_spend_logs() -> None:
    async with running() as proxy, proxy.http() as http:
        litellm = await http.post(
            "/v1/responses",
            json=RESPONSE,
            headers={"x-litellm-spend-logs-metadata": '{"team": "litellm"}'},
        )
        both = await http.post(
            "/v1/responses",
            json=RESPONSE,
            headers={
                "x-litellm-spend-logs-metadata": '{"team": "litellm"}',
                "x-sluicegate-spend-logs-metadata": '{"team": "ours"}',
            },
        )
        bad = await http.post(
            "/v1/responses", json=RESPONSE, headers={"x-litellm-spend-logs-metadata": "[1]"}
        )
        gateway = proxy.app.gateway
        assert gateway is not None
        rows = {row.response_id: row for row in await gateway.spend_logs()}
    assert rows[litellm.json()["id"]].spend_metadata == {"team": "litellm"}
    assert rows[both.json()["id"]].spend_metadata == {"team": "ours"}  # ours wins
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-litellm-spend-logs-metadata"


async def test_a_file_upload_is_routed_by_litellms_model_header() -> None:
    async with files.running() as proxy:
        client = proxy.client(files.MASTER)
        data = files.responses_input(1)
        on_b = await client.files.create(
            file=("b.jsonl", data),
            purpose="batch",
            extra_headers={"x-litellm-model": "gpt-b"},
        )
        on_a = await client.files.create(
            file=("a.jsonl", data),
            purpose="batch",
            extra_headers={"x-litellm-model": "gpt-b", "x-sluicegate-model": "gpt-a"},
        )
        batch = await client.batches.create(
            input_file_id=on_b.id,
            endpoint="/v1/responses",
            completion_window="24h",
            extra_headers={"x-litellm-spend-logs-metadata": '{"src": "litellm-header"}'},
        )
        proxy.fake_b.complete(files.BATCH_IDS.decode(batch.id).raw_id)
        done = await client.batches.retrieve(batch.id)
        assert done.output_file_id is not None
        await client.files.content(done.output_file_id)  # read to its end: the spend settles
        [row] = await proxy.spend_rows(batch.id)
    assert files.FILE_IDS.decode(on_b.id).deployment_id == "dep-b"
    assert files.FILE_IDS.decode(on_a.id).deployment_id == "dep-a"  # ours wins
    assert [r.path for r in proxy.fake_a.requests] == ["/v1/files"]
    assert row.spend_metadata == {"src": "litellm-header"}


# -- forward_client_headers -----------------------------------------------------------------------

#: What a client sends: the allowlisted headers, and what must never go upstream.
CLIENT_HEADERS = {
    "OpenAI-Beta": "responses=v1",
    "X-Client-Request-Id": "client-req-42",
    "Idempotency-Key": "idem-7",
    "Cookie": "session=secret-cookie",
    "X-Custom-Trace": "not-on-the-list",
    "OpenAI-Organization": "org-of-the-client",
}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_native_upstream_gets_the_allowlisted_headers_and_nothing_else(
    stream: bool,
) -> None:
    async with running() as proxy, proxy.http() as http:
        answer = await http.post(
            "/v1/responses", json={**RESPONSE, "stream": stream}, headers=CLIENT_HEADERS
        )
    assert answer.status_code == 200, answer.text
    received = proxy.fake.requests[-1].headers
    assert received["openai-beta"] == "responses=v1"
    assert received["x-client-request-id"] == "client-req-42"
    assert received["idempotency-key"] == "idem-7"
    assert received["authorization"] == f"Bearer {PROVIDER_KEY}"  # the deployment's key
    assert MASTER not in repr(received)  # not the client's
    for name in ("cookie", "x-custom-trace", "openai-organization"):
        assert name not in received


async def test_the_allowlist_is_the_configured_one() -> None:
    async with (
        running(forward_client_headers=["X-Custom-Trace"]) as proxy,
        proxy.http() as http,
    ):
        answer = await http.post(
            "/v1/responses",
            json=RESPONSE,
            # Repeated, as a client may send a list header: joined, as RFC 9110 reads it.
            headers=[*CLIENT_HEADERS.items(), ("x-custom-trace", "second")],
        )
    assert answer.status_code == 200, answer.text
    received = proxy.fake.requests[-1].headers
    assert received["x-custom-trace"] == "not-on-the-list, second"
    assert "openai-beta" not in received and "idempotency-key" not in received


async def test_a_bridged_provider_never_gets_client_headers() -> None:
    chat = FakeChat()
    config: dict[str, Any] = {
        "model_list": [
            {
                "model_name": "bridged",
                "litellm_params": {
                    "model": "chat/small-model",
                    "api_base": "http://chat.test/v1",
                    "api_key": "chat-key",
                },
            }
        ],
        "general_settings": {
            "master_key": MASTER,
            "store": MEMORY_STORE,
            "graceful_shutdown_timeout": 2,
        },
    }
    app = build_app(config, transport=mock_transport(chat), environ={})
    async with (
        serving(app) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=MASTER, max_retries=0) as client,
    ):
        made = await client.responses.create(
            model="bridged", input="say: bridged", extra_headers=CLIENT_HEADERS
        )
    assert made.output_text == "bridged"
    [received] = chat.headers
    assert received["authorization"] == "Bearer chat-key"
    for name in ("openai-beta", "x-client-request-id", "idempotency-key", "cookie"):
        assert name not in received


def test_the_default_allowlist_is_forwardable_and_routing_headers_never_are() -> None:
    assert all(forward_refusal(name) is None for name in DEFAULT_FORWARD_CLIENT_HEADERS)
    # The proxy refuses these outright; the config check must never let one through either.
    for name in FORBIDDEN_HEADERS:
        assert forward_refusal(name.decode()) is not None, name
