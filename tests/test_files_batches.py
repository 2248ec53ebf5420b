"""Files and batches through the gateway.

Through the proxy, the official ``openai`` SDK is the client; two deployments on two fake
provider accounts (``tests/fake_files.py`` on loopback) are the upstreams: ``gpt-a`` an OpenAI
deployment on fake A, ``gpt-b`` an Azure deployment (preview ``api-version`` route) on fake B.
What each fake received is the proof of where a call went. The library tests drive
``open_gateway`` over ``httpx.MockTransport`` with the same fake.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import openai
import orjson
import pytest
import trio

from sluicegate import open_gateway
from sluicegate._gateway import Gateway
from sluicegate.codecs.ids import IdCodec
from sluicegate.errors import InvalidRequestError, NotFoundError, RequestTooLargeError
from sluicegate.pricing import PriceTable, TokenUsage, compute_cost
from sluicegate.server import ProxyApp, build_app
from sluicegate.store import SpendLog

from .conftest import MEMORY_STORE
from .fake_files import FakeFilesUpstream, mock_transport, serve_files_loopback
from .proxy_server import serving

MASTER = "sk-master-files-0123456789abcdef"
SECRET = "files-batches-test-secret"
KEY_A = "sk-account-a-0123456789"
KEY_B = "az-account-b-9876543210"
AZURE_VERSION = "2025-04-01-preview"
#: The model every batched request names (the fake echoes it in its answers).
LINE_MODEL = "gpt-5.4"

FILE_IDS = IdCodec.from_secret(SECRET, prefix="file-")
BATCH_IDS = IdCodec.from_secret(SECRET, prefix="batch_")


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def responses_input(count: int) -> bytes:
    return jsonl(
        [
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": LINE_MODEL, "input": f"question {i}"},
            }
            for i in range(count)
        ]
    )


def expected_batch_cost(provider: str, requests: int, fake: FakeFilesUpstream) -> float:
    """Half the synchronous price of ``requests`` answers of ``fake`` (its usage per answer)."""
    price = PriceTable.bundled().lookup(provider, LINE_MODEL)
    assert price is not None
    usage = TokenUsage(
        input_tokens=requests * fake.input_tokens, output_tokens=requests * fake.output_tokens
    )
    return compute_cost(price, usage) / 2


# -- the proxy on loopback ---------------------------------------------------------------------


def proxy_config(base_a: str, base_b: str, **general: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "gpt-a",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": f"{base_a}/v1",
                    "api_key": KEY_A,
                },
                "model_info": {"id": "dep-a"},
            },
            {
                "model_name": "gpt-b",
                "litellm_params": {
                    "model": "azure/gpt-5.4",
                    "api_base": base_b,
                    "api_key": KEY_B,
                    "api_version": AZURE_VERSION,
                },
                "model_info": {"id": "dep-b"},
            },
        ],
        # Quick, exact retries (the lookups are retried like responses).
        "router_settings": {"retry_backoff_initial": 0.01, "retry_backoff_jitter": 0.0},
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
    fake_a: FakeFilesUpstream
    fake_b: FakeFilesUpstream
    clients: list[openai.AsyncOpenAI] = attrs.Factory(list)

    @property
    def gateway(self) -> Gateway:
        gateway = self.app.gateway
        assert gateway is not None
        return gateway

    def client(self, key: str = MASTER) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    def http(self, key: str = MASTER) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=30
        )

    async def new_key(self, alias: str) -> str:
        async with self.http() as http:
            answer = await http.post("/key/generate", json={"key_alias": alias})
        assert answer.status_code == 200, answer.text
        key: str = answer.json()["key"]
        return key

    async def spend_rows(self, response_id: str) -> list[SpendLog]:
        return [
            r for r in await self.gateway.spend_logs(limit=1000) if r.response_id == response_id
        ]


@asynccontextmanager
async def running(**general: Any) -> AsyncIterator[Proxy]:
    fake_a = FakeFilesUpstream(api_key=KEY_A, seed=1)
    fake_b = FakeFilesUpstream(api_key=KEY_B, seed=2)
    async with trio.open_nursery() as upstreams:
        base_a: str = await upstreams.start(serve_files_loopback, fake_a)
        base_b: str = await upstreams.start(serve_files_loopback, fake_b)
        app = build_app(proxy_config(base_a, base_b, **general), environ={})
        async with serving(app) as url:
            proxy = Proxy(app, url, fake_a, fake_b)
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


async def upload_b(client: openai.AsyncOpenAI, data: bytes, name: str = "in.jsonl") -> Any:
    return await client.files.create(
        file=(name, data), purpose="batch", extra_body={"model": "gpt-b"}
    )


# -- 1. routing --------------------------------------------------------------------------------


async def test_a_file_lands_on_its_models_deployment_and_its_id_leads_back(proxy: Proxy) -> None:
    client = proxy.client()
    data = responses_input(3)
    file = await upload_b(client, data)

    assert file.id.startswith("file-")
    decoded = FILE_IDS.decode(file.id)
    assert (decoded.provider, decoded.deployment_id, decoded.owner) == ("azure", "dep-b", "admin")
    assert list(proxy.fake_b.files) == [decoded.raw_id]
    assert proxy.fake_b.files[decoded.raw_id].data == data
    assert proxy.fake_b.files[decoded.raw_id].filename == "in.jsonl"
    assert (file.bytes, file.filename, file.purpose, file.object) == (
        len(data),
        "in.jsonl",
        "batch",
        "file",
    )
    upload = proxy.fake_b.requests[-1]
    assert (upload.method, upload.path, upload.query) == (
        "POST",
        "/openai/files",
        {"api-version": AZURE_VERSION},
    )
    assert upload.headers["api-key"] == KEY_B
    assert MASTER not in repr(upload.headers)  # the caller's key never goes upstream

    got = await client.files.retrieve(file.id)
    assert (got.id, got.bytes, got.filename) == (file.id, len(data), "in.jsonl")
    assert proxy.fake_b.requests[-1].path == f"/openai/files/{decoded.raw_id}"

    listed = await client.files.list()
    assert [f.id for f in listed.data] == [file.id]

    content = await client.files.content(file.id)
    assert content.read() == data
    assert proxy.fake_b.requests[-1].path == f"/openai/files/{decoded.raw_id}/content"

    deleted = await client.files.delete(file.id)
    assert (deleted.id, deleted.deleted) == (file.id, True)
    assert proxy.fake_b.requests[-1].method == "DELETE"
    assert proxy.fake_b.files == {}
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(file.id)
    assert (await client.files.list()).data == []

    assert proxy.fake_a.requests == []  # account A saw nothing of it
    assert all(r.query == {"api-version": AZURE_VERSION} for r in proxy.fake_b.requests)


@pytest.mark.parametrize("via", ["body", "query", "header"])
@pytest.mark.parametrize("group", ["gpt-a", "gpt-b"])
async def test_the_model_routes_from_the_body_the_query_or_a_header(
    proxy: Proxy, via: str, group: str
) -> None:
    options: dict[str, Any] = {
        "body": {"extra_body": {"model": group}},
        "query": {"extra_query": {"model": group}},
        "header": {"extra_headers": {"x-sluicegate-model": group}},
    }[via]
    data = responses_input(1)
    file = await proxy.client().files.create(file=("x.jsonl", data), purpose="batch", **options)

    chosen, other = (
        (proxy.fake_a, proxy.fake_b) if group == "gpt-a" else (proxy.fake_b, proxy.fake_a)
    )
    decoded = FILE_IDS.decode(file.id)
    assert decoded.deployment_id == {"gpt-a": "dep-a", "gpt-b": "dep-b"}[group]
    assert decoded.provider == {"gpt-a": "openai", "gpt-b": "azure"}[group]
    assert chosen.files[decoded.raw_id].data == data
    assert other.requests == []
    upload = chosen.requests[-1]
    if group == "gpt-a":
        assert (upload.path, upload.query) == ("/v1/files", {})
        assert upload.headers["authorization"] == f"Bearer {KEY_A}"
    else:
        assert (upload.path, upload.query) == ("/openai/files", {"api-version": AZURE_VERSION})
        assert upload.headers["api-key"] == KEY_B


# -- 2. batches and their spend ----------------------------------------------------------------


async def test_a_batch_runs_where_its_file_is_and_its_output_is_spent_once(proxy: Proxy) -> None:
    client = proxy.client()
    count = 3
    file = await upload_b(client, responses_input(count))
    batch = await client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/responses",
        completion_window="24h",
        metadata={"job": "nightly"},
        extra_body={"litellm_metadata": {"spend_logs_metadata": {"team": "search"}}},
    )
    assert batch.id.startswith("batch_")
    decoded = BATCH_IDS.decode(batch.id)
    assert (decoded.provider, decoded.deployment_id, decoded.owner) == ("azure", "dep-b", "admin")
    raw = decoded.raw_id
    assert list(proxy.fake_b.batches) == [raw]
    assert proxy.fake_b.batches[raw].input_file_id == FILE_IDS.decode(file.id).raw_id
    assert batch.input_file_id == file.id  # the caller's ID, not the upstream's
    assert batch.status == "validating"
    assert batch.metadata == {"job": "nightly"}
    created = proxy.fake_b.requests[-1]
    assert (created.method, created.path) == ("POST", "/openai/batches")
    assert orjson.loads(created.body)["input_file_id"] == FILE_IDS.decode(file.id).raw_id
    assert "litellm_metadata" not in orjson.loads(created.body)
    assert proxy.fake_a.requests == []

    proxy.fake_b.complete(raw)
    done = await client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == count
    assert done.output_file_id is not None and done.output_file_id.startswith("file-")
    output = FILE_IDS.decode(done.output_file_id)
    assert (output.deployment_id, output.owner) == ("dep-b", "admin")
    assert output.raw_id == proxy.fake_b.batches[raw].output_file_id
    # The output file's ID is stable across lookups.
    assert (await client.batches.retrieve(batch.id)).output_file_id == done.output_file_id
    assert [b.id for b in (await client.batches.list()).data] == [batch.id]

    assert await proxy.spend_rows(batch.id) == []  # nothing spent before the output is read
    content = (await client.files.content(done.output_file_id)).read()
    assert content == proxy.fake_b.files[output.raw_id].data
    lines = [orjson.loads(line) for line in content.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(count)]
    assert all(line["response"]["status_code"] == 200 for line in lines)

    [row] = await proxy.spend_rows(batch.id)
    assert row.input_tokens == count * proxy.fake_b.input_tokens
    assert row.output_tokens == count * proxy.fake_b.output_tokens
    assert row.total_tokens == row.input_tokens + row.output_tokens
    expected = expected_batch_cost("azure", count, proxy.fake_b)
    assert expected > 0
    assert row.cost == pytest.approx(expected)
    assert row.spend_metadata == {"team": "search"}
    assert (row.model, row.deployment_id, row.provider, row.owner, row.status) == (
        "gpt-b",
        "dep-b",
        "azure",
        "admin",
        "completed",
    )

    again = (await client.files.content(done.output_file_id)).read()
    assert again == content
    assert await proxy.spend_rows(batch.id) == [row]  # read twice, spent once


async def test_a_batch_error_file_has_an_id_of_its_own_and_does_not_settle_the_batch(
    proxy: Proxy,
) -> None:
    one = proxy.client(await proxy.new_key("one"))
    two = proxy.client(await proxy.new_key("two"))
    file = await upload_b(one, responses_input(3))
    batch = await one.batches.create(
        input_file_id=file.id, endpoint="/v1/responses", completion_window="24h"
    )
    raw = BATCH_IDS.decode(batch.id).raw_id
    proxy.fake_b.complete(raw, fail_custom_ids={"req-1"})
    done = await one.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert done.output_file_id is not None and done.error_file_id is not None
    error_raw = FILE_IDS.decode(done.error_file_id).raw_id
    assert error_raw == proxy.fake_b.batches[raw].error_file_id
    assert FILE_IDS.decode(done.error_file_id).owner == FILE_IDS.decode(file.id).owner

    # The batch's files are its owner's only.
    for other in (done.output_file_id, done.error_file_id):
        with pytest.raises(openai.NotFoundError):
            await two.files.content(other)
    listed = {f.id for f in (await one.files.list()).data}
    assert listed == {file.id, done.output_file_id, done.error_file_id}

    # The error file first: its lines are failures, no usage; the batch is not spent by it.
    errors = (await one.files.content(done.error_file_id)).read()
    assert errors == proxy.fake_b.files[error_raw].data
    assert [orjson.loads(line)["custom_id"] for line in errors.splitlines()] == ["req-1"]
    (await one.files.content(done.output_file_id)).read()
    [row] = await proxy.spend_rows(batch.id)
    assert (row.input_tokens, row.output_tokens) == (
        2 * proxy.fake_b.input_tokens,
        2 * proxy.fake_b.output_tokens,
    )
    assert row.cost == pytest.approx(expected_batch_cost("azure", 2, proxy.fake_b))


async def test_spend_metadata_from_headers_and_form_fields(proxy: Proxy) -> None:
    client = proxy.client()
    # A file's metadata from the form field (JSON text), a batch without its own inherits it.
    from_form = await client.files.create(
        file=("f.jsonl", responses_input(1)),
        purpose="batch",
        extra_body={
            "model": "gpt-b",
            "litellm_metadata": orjson.dumps({"spend_logs_metadata": {"src": "form"}}).decode(),
        },
    )
    inherits = await client.batches.create(
        input_file_id=from_form.id, endpoint="/v1/responses", completion_window="24h"
    )
    # A batch's own metadata from the header.
    from_header = await client.batches.create(
        input_file_id=from_form.id,
        endpoint="/v1/responses",
        completion_window="24h",
        extra_headers={"x-sluicegate-spend-logs-metadata": '{"src": "batch-header"}'},
    )
    # A file's metadata from the header.
    file_header = await client.files.create(
        file=("h.jsonl", responses_input(2)),
        purpose="batch",
        extra_headers={
            "x-sluicegate-model": "gpt-a",
            "x-sluicegate-spend-logs-metadata": '{"src": "file-header"}',
        },
    )
    on_a = await client.batches.create(
        input_file_id=file_header.id, endpoint="/v1/responses", completion_window="24h"
    )
    assert BATCH_IDS.decode(on_a.id).deployment_id == "dep-a"

    expected = {
        inherits.id: ({"src": "form"}, proxy.fake_b, 1, "azure"),
        from_header.id: ({"src": "batch-header"}, proxy.fake_b, 1, "azure"),
        on_a.id: ({"src": "file-header"}, proxy.fake_a, 2, "openai"),
    }
    for batch_id, (metadata, fake, count, provider) in expected.items():
        fake.complete(BATCH_IDS.decode(batch_id).raw_id)
        done = await client.batches.retrieve(batch_id)
        assert done.status == "completed" and done.output_file_id is not None
        await client.files.content(done.output_file_id)  # the SDK reads the body to its end
        [row] = await proxy.spend_rows(batch_id)
        assert row.spend_metadata == metadata
        assert row.input_tokens == count * fake.input_tokens
        assert row.cost == pytest.approx(expected_batch_cost(provider, count, fake))


# -- 3. a batch cannot leave its file's deployment ----------------------------------------------


async def test_a_batch_naming_another_group_than_its_files_is_refused(proxy: Proxy) -> None:
    client = proxy.client()
    file = await upload_b(client, responses_input(1))
    with pytest.raises(openai.BadRequestError) as refused:
        await client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/responses",
            completion_window="24h",
            extra_body={"model": "gpt-a"},
        )
    assert refused.value.status_code == 400
    assert refused.value.param == "input_file_id"
    assert proxy.fake_a.requests == []
    assert proxy.fake_b.batches == {}
    # Naming the file's own group is fine.
    batch = await client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/responses",
        completion_window="24h",
        extra_body={"model": "gpt-b"},
    )
    assert BATCH_IDS.decode(batch.id).deployment_id == "dep-b"


# -- 4. ownership ------------------------------------------------------------------------------


async def test_a_key_reaches_only_its_own_files_and_batches(proxy: Proxy) -> None:
    one = proxy.client(await proxy.new_key("one"))
    two = proxy.client(await proxy.new_key("two"))
    admin = proxy.client()
    data = responses_input(2)
    mine = await upload_b(one, data)
    batch = await one.batches.create(
        input_file_id=mine.id, endpoint="/v1/responses", completion_window="24h"
    )
    theirs = await upload_b(two, responses_input(1), name="two.jsonl")
    seen_upstream = len(proxy.fake_b.requests)

    with pytest.raises(openai.NotFoundError):
        await two.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        await two.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        await two.files.delete(mine.id)
    with pytest.raises(openai.NotFoundError) as batching:
        await two.batches.create(
            input_file_id=mine.id, endpoint="/v1/responses", completion_window="24h"
        )
    assert batching.value.param == "input_file_id"
    with pytest.raises(openai.NotFoundError):
        await two.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await two.batches.cancel(batch.id)
    assert len(proxy.fake_b.requests) == seen_upstream  # refused before going upstream
    assert len(proxy.fake_b.batches) == 1

    assert [f.id for f in (await two.files.list()).data] == [theirs.id]
    assert [f.id for f in (await one.files.list()).data] == [mine.id]
    assert (await two.batches.list()).data == []
    assert [b.id for b in (await one.batches.list()).data] == [batch.id]

    assert {f.id for f in (await admin.files.list()).data} == {mine.id, theirs.id}
    assert [b.id for b in (await admin.batches.list()).data] == [batch.id]
    assert (await admin.files.retrieve(mine.id)).id == mine.id
    assert (await admin.files.content(mine.id)).read() == data
    assert (await admin.batches.retrieve(batch.id)).id == batch.id
    # Still there for its owner: the refused delete deleted nothing.
    assert (await one.files.content(mine.id)).read() == data


# -- 5. bad input ------------------------------------------------------------------------------


async def test_bad_uploads_get_openai_errors(proxy: Proxy) -> None:
    client = proxy.client()
    async with proxy.http() as http:
        no_purpose = await http.post(
            "/v1/files", data={"model": "gpt-b"}, files={"file": ("a.jsonl", b"{}\n")}
        )
        boundary = "sluicegate-test-boundary"
        no_file = await http.post(
            "/v1/files",
            content=(
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="purpose"\r\n\r\n'
                "batch\r\n"
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="model"\r\n\r\n'
                "gpt-b\r\n"
                f"--{boundary}--\r\n"
            ).encode(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        not_multipart = await http.post("/v1/files", json={"purpose": "batch", "model": "gpt-b"})
    assert no_purpose.status_code == 400
    assert no_purpose.json()["error"]["param"] == "purpose"
    assert no_purpose.json()["error"]["code"] == "missing_required_parameter"
    assert no_file.status_code == 400
    assert no_file.json()["error"]["param"] == "file"
    assert no_file.json()["error"]["code"] == "missing_required_parameter"
    assert not_multipart.status_code == 400
    assert not_multipart.json()["error"]["param"] == "file"

    with pytest.raises(openai.BadRequestError) as purpose:
        await client.files.create(
            file=("a.jsonl", b"{}\n"),
            purpose="nonsense",  # type: ignore[arg-type]
            extra_body={"model": "gpt-b"},
        )
    assert (purpose.value.param, purpose.value.code) == ("purpose", "invalid_value")

    with pytest.raises(openai.NotFoundError) as unknown:
        await client.files.create(
            file=("a.jsonl", b"{}\n"), purpose="batch", extra_body={"model": "no-such-model"}
        )
    assert unknown.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as no_model:
        await client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert no_model.value.param == "model"

    assert proxy.fake_a.requests == [] and proxy.fake_b.requests == []


async def test_forged_ids_and_bad_batches_are_refused(proxy: Proxy) -> None:
    client = proxy.client()
    file = await upload_b(client, responses_input(1))
    raw = FILE_IDS.decode(file.id).raw_id
    # One character changed in the middle of the ID (its authenticated payload).
    middle = len(file.id) // 2
    altered = file.id[:middle] + ("A" if file.id[middle] != "A" else "B") + file.id[middle + 1 :]
    forged_elsewhere = IdCodec.from_secret("another-secret", prefix="file-").encode(
        provider="azure", deployment_id="dep-b", raw_id=raw, owner="admin"
    )
    seen_upstream = len(proxy.fake_b.requests)
    for bad in (altered, forged_elsewhere, raw, "file-nope"):
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(bad)
        with pytest.raises(openai.NotFoundError):
            await client.files.content(bad)
        with pytest.raises(openai.NotFoundError):
            await client.files.delete(bad)
        with pytest.raises(openai.NotFoundError) as batching:
            await client.batches.create(
                input_file_id=bad, endpoint="/v1/responses", completion_window="24h"
            )
        assert batching.value.param == "input_file_id"
    batch_forgery = IdCodec.from_secret("another-secret", prefix="batch_").encode(
        provider="azure", deployment_id="dep-b", raw_id="batch_x", owner="admin"
    )
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve(batch_forgery)
    assert len(proxy.fake_b.requests) == seen_upstream
    assert raw in proxy.fake_b.files  # nothing was deleted

    with pytest.raises(openai.BadRequestError) as endpoint:
        await client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/bogus",  # type: ignore[arg-type]
            completion_window="24h",
        )
    assert (endpoint.value.param, endpoint.value.code) == ("endpoint", "invalid_value")
    with pytest.raises(openai.BadRequestError) as window:
        await client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/responses",
            completion_window="48h",  # type: ignore[arg-type]
        )
    assert window.value.param == "completion_window"
    assert proxy.fake_b.batches == {}


# -- 6. oversize -------------------------------------------------------------------------------


async def test_an_upload_beyond_max_file_bytes_is_a_413() -> None:
    async with running(max_file_bytes=1024) as proxy:
        client = proxy.client()
        with pytest.raises(openai.APIStatusError) as too_big:
            await upload_b(client, b"x" * 4096)
        assert too_big.value.status_code == 413
        assert proxy.fake_b.files == {}  # the upstream never got a whole file
        # At the limit exactly: accepted.
        fits = await upload_b(client, b"y" * 1024)
        assert proxy.fake_b.files[FILE_IDS.decode(fits.id).raw_id].data == b"y" * 1024
        assert len(proxy.fake_b.files) == 1


async def test_a_refused_upload_closes_its_form_generators() -> None:
    """Refused uploads (a bad field; a file over the limit) must not leave the request's
    multipart generators to the garbage collector."""
    async with running(max_file_bytes=1024) as proxy:
        client = proxy.client()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(openai.NotFoundError):
                await client.files.create(
                    file=("a.jsonl", b"{}\n"), purpose="batch", extra_body={"model": "nope"}
                )
            with pytest.raises(openai.APIStatusError) as too_big:
                await upload_b(client, b"x" * 4096)
            assert too_big.value.status_code == 413
            gc.collect()
            # trio closes collected generators in a system task: let it run.
            await trio.testing.wait_all_tasks_blocked()
    leaked = sorted(
        {
            str(w.message).split("'")[1]
            for w in caught
            if issubclass(w.category, ResourceWarning) and "'sluicegate." in str(w.message)
        }
    )
    assert leaked == []


# -- 7. streaming ------------------------------------------------------------------------------


async def test_a_multi_megabyte_upload_streams_through_intact(proxy: Proxy) -> None:
    line = orjson.dumps(
        {
            "custom_id": "req",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": LINE_MODEL, "input": "z" * 900},
        }
    )
    data = b"".join(line.replace(b'"req"', f'"req-{i:06d}"'.encode()) + b"\n" for i in range(8800))
    assert len(data) > 8 * 1024 * 1024
    file = await upload_b(proxy.client(), data, name="big.jsonl")
    assert file.bytes == len(data)
    stored = proxy.fake_b.files[FILE_IDS.decode(file.id).raw_id]
    assert stored.data == data
    upload = proxy.fake_b.requests[-1]
    # Re-framed and streamed upstream, not buffered to learn its length.
    assert upload.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in upload.headers


# -- 8. faults ---------------------------------------------------------------------------------


async def test_a_lookup_is_retried_after_a_500(proxy: Proxy) -> None:
    client = proxy.client()
    file = await upload_b(client, responses_input(1))
    raw = FILE_IDS.decode(file.id).raw_id
    before = len(proxy.fake_b.requests)
    proxy.fake_b.fail_next(500)
    got = await client.files.retrieve(file.id)
    assert got.id == file.id
    tries = proxy.fake_b.requests[before:]
    assert [(r.method, r.path) for r in tries] == [("GET", f"/openai/files/{raw}")] * 2


async def test_a_429_beyond_max_retry_after_comes_back(proxy: Proxy) -> None:
    client = proxy.client()
    file = await upload_b(client, responses_input(1))
    before = len(proxy.fake_b.requests)
    proxy.fake_b.fail_next(429, headers={"retry-after": "1000"})
    with pytest.raises(openai.RateLimitError) as limited:
        await client.batches.create(
            input_file_id=file.id, endpoint="/v1/responses", completion_window="24h"
        )
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "1000"
    assert len(proxy.fake_b.requests) == before + 1  # not waited out, not retried
    assert proxy.fake_b.batches == {}
    # The store knows no batch either.
    assert (await client.batches.list()).data == []


async def test_an_upload_is_not_retried(proxy: Proxy) -> None:
    client = proxy.client()
    proxy.fake_b.fail_next(500)
    with pytest.raises(openai.InternalServerError) as failed:
        await upload_b(client, responses_input(2))
    assert failed.value.status_code == 500
    uploads = [r for r in proxy.fake_b.requests if r.method == "POST"]
    assert len(uploads) == 1
    assert proxy.fake_b.files == {}
    assert (await client.files.list()).data == []


# -- 9. the library ----------------------------------------------------------------------------


def library_config(**general: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "files",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": "http://files.test/v1",
                    "api_key": KEY_A,
                },
                "model_info": {"id": "lib-1"},
            }
        ],
        "router_settings": {"retry_backoff_initial": 0.01, "retry_backoff_jitter": 0.0},
        "general_settings": {"response_id_secret": SECRET, "store": MEMORY_STORE, **general},
    }


class _Ticks:
    """A wall clock that moves one second per reading: stored objects have distinct times."""

    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@asynccontextmanager
async def library(fake: FakeFilesUpstream, **general: Any) -> AsyncIterator[Gateway]:
    async with open_gateway(
        library_config(**general),
        transport=mock_transport(fake),
        environ={},
        wall_clock=_Ticks(),
    ) as gw:
        yield gw


@pytest.fixture
def fake() -> FakeFilesUpstream:
    return FakeFilesUpstream(api_key=KEY_A, seed=3, content_chunk_size=1000)


def _raw(file_id: str) -> str:
    return FILE_IDS.decode(file_id).raw_id


async def test_library_create_file_takes_bytes_a_path_a_file_and_a_tuple(
    fake: FakeFilesUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "from-disk.jsonl"
    on_disk = responses_input(2)
    path.write_bytes(on_disk)
    async with library(fake) as gw:
        # With one deployment that keeps files, the model may be left out.
        from_bytes = await gw.create_file(file=b"raw bytes", purpose="user_data")
        from_path = await gw.create_file(file=path, purpose="batch")
        from_str_path = await gw.create_file(file=str(path), purpose="batch")
        with path.open("rb") as handle:
            from_handle = await gw.create_file(file=handle, purpose="batch")
        from_tuple = await gw.create_file(
            file=("t.jsonl", b"tuple data", "application/jsonl"), purpose="user_data"
        )
        tuple_upload = fake.requests[-1]

        for made, name, data in (
            (from_bytes, "upload", b"raw bytes"),
            (from_path, "from-disk.jsonl", on_disk),
            (from_str_path, "from-disk.jsonl", on_disk),
            (from_handle, "from-disk.jsonl", on_disk),
            (from_tuple, "t.jsonl", b"tuple data"),
        ):
            assert made["id"].startswith("file-")
            assert FILE_IDS.decode(made["id"]).deployment_id == "lib-1"
            stored = fake.files[_raw(made["id"])]
            assert (stored.filename, stored.data) == (name, data)
            assert (made["filename"], made["bytes"]) == (name, len(data))
            assert await gw.file_content(made["id"]) == data
        head = tuple_upload.body.lower()
        assert b'filename="t.jsonl"' in head
        assert b"content-type: application/jsonl" in head
        assert tuple_upload.headers["authorization"] == f"Bearer {KEY_A}"


async def test_library_streams_an_async_iterator_upstream(fake: FakeFilesUpstream) -> None:
    chunks = [bytes([65 + i]) * 3000 + b"\n" for i in range(10)]
    handed_out: list[int] = []

    async def produce() -> AsyncIterator[bytes]:
        for i, piece in enumerate(chunks):
            handed_out.append(i)
            await trio.lowlevel.checkpoint()
            yield piece

    async with library(fake) as gw:
        made = await gw.create_file(
            file=("x.jsonl", produce(), "application/jsonl"), purpose="batch"
        )
        assert handed_out == list(range(len(chunks)))
        stored = fake.files[_raw(made["id"])]
        assert stored.data == b"".join(chunks)
        assert (stored.filename, made["bytes"]) == ("x.jsonl", sum(map(len, chunks)))
        upload = fake.requests[-1]
        assert upload.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in upload.headers

        # Read back as it streams: the fake sends 1000-byte pieces.
        pieces: list[bytes] = []
        async with gw.open_file_content(made["id"]) as content:
            async for piece in content:
                pieces.append(piece)
        assert b"".join(pieces) == stored.data
        assert len(pieces) > 1


async def test_library_upload_limit(fake: FakeFilesUpstream) -> None:
    async def produce() -> AsyncIterator[bytes]:
        for _ in range(4):
            await trio.lowlevel.checkpoint()
            yield b"x" * 512

    async with library(fake, max_file_bytes=1024) as gw:
        with pytest.raises(RequestTooLargeError) as streamed:
            await gw.create_file(file=("s.jsonl", produce()), purpose="batch")
        assert streamed.value.status_code == 413
        with pytest.raises(RequestTooLargeError):
            await gw.create_file(file=b"x" * 1025, purpose="batch")
        assert fake.files == {}
        assert (await gw.list_files())["data"] == []
        fits = await gw.create_file(file=b"x" * 1024, purpose="batch")
        assert fake.files[_raw(fits["id"])].data == b"x" * 1024


async def test_library_list_files_by_purpose_and_pages(fake: FakeFilesUpstream) -> None:
    async with library(fake) as gw:
        made = [
            await gw.create_file(file=(f"{i}.jsonl", responses_input(1)), purpose=purpose)
            for i, purpose in enumerate(["batch", "user_data", "batch", "batch"])
        ]
        ids = [m["id"] for m in made]
        everything = await gw.list_files()
        assert [f["id"] for f in everything["data"]] == ids[::-1]  # newest first
        assert everything["has_more"] is False
        oldest_first = await gw.list_files(order="asc")
        assert [f["id"] for f in oldest_first["data"]] == ids

        batch_files = await gw.list_files(purpose="batch")
        assert [f["id"] for f in batch_files["data"]] == [ids[3], ids[2], ids[0]]
        assert [f["id"] for f in (await gw.list_files(purpose="user_data"))["data"]] == [ids[1]]
        assert (await gw.list_files(purpose="vision"))["data"] == []

        first = await gw.list_files(limit=2)
        assert [f["id"] for f in first["data"]] == [ids[3], ids[2]]
        assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[3], ids[2], True)
        second = await gw.list_files(limit=2, after=first["last_id"])
        assert [f["id"] for f in second["data"]] == [ids[1], ids[0]]
        assert second["has_more"] is False
        paged_batch = await gw.list_files(purpose="batch", limit=1, after=ids[3])
        assert [f["id"] for f in paged_batch["data"]] == [ids[2]]
        assert paged_batch["has_more"] is True

        # Another owner sees none of them; the admin all.
        assert (await gw.list_files(owner="someone-else"))["data"] == []
        assert len((await gw.list_files(owner="someone-else", admin=True))["data"]) == 4

        await gw.delete_file(ids[2])
        assert [f["id"] for f in (await gw.list_files(purpose="batch"))["data"]] == [
            ids[3],
            ids[0],
        ]
        with pytest.raises(NotFoundError):
            await gw.retrieve_file(ids[2])
        with pytest.raises(InvalidRequestError) as bad_limit:
            await gw.list_files(limit=0)
        assert bad_limit.value.param == "limit"


async def test_library_list_batches_refreshes_a_running_batch(fake: FakeFilesUpstream) -> None:
    async with library(fake) as gw:
        file = await gw.create_file(file=("in.jsonl", responses_input(2)), purpose="batch")
        batch = await gw.create_batch(input_file_id=file["id"], endpoint="/v1/responses")
        assert batch["status"] == "validating"
        raw = BATCH_IDS.decode(batch["id"]).raw_id

        fake.complete(raw)
        before = len(fake.requests)
        [listed] = (await gw.list_batches())["data"]
        assert listed["id"] == batch["id"]
        assert listed["status"] == "completed"  # asked for anew, without a retrieve
        assert listed["output_file_id"].startswith("file-")
        assert listed["input_file_id"] == file["id"]
        refreshed = [(r.method, r.path) for r in fake.requests[before:]]
        assert refreshed[0] == ("GET", f"/v1/batches/{raw}")
        assert all(method == "GET" for method, _ in refreshed)
        # A final batch is not asked for again.
        after_refresh = len(fake.requests)
        assert (await gw.list_batches())["data"] == [listed]
        assert len(fake.requests) == after_refresh

        output = await gw.file_content(listed["output_file_id"])
        assert len(output.splitlines()) == 2
        [row] = [r for r in await gw.spend_logs() if r.response_id == batch["id"]]
        assert (row.input_tokens, row.output_tokens) == (
            2 * fake.input_tokens,
            2 * fake.output_tokens,
        )
        assert row.cost == pytest.approx(expected_batch_cost("openai", 2, fake))


async def test_library_list_batches_survives_an_upstream_that_fails_the_refresh(
    fake: FakeFilesUpstream,
) -> None:
    """One account failing the refresh of a running batch shows that batch as last seen; the
    list still answers."""
    async with library(fake) as gw:
        file = await gw.create_file(file=("in.jsonl", responses_input(2)), purpose="batch")
        batch = await gw.create_batch(input_file_id=file["id"], endpoint="/v1/responses")
        before = len(fake.requests)
        for _ in range(5):  # more than the retries of the refresh
            fake.fail_next(500)
        [listed] = (await gw.list_batches())["data"]
        assert listed == batch  # as last seen: validating
        assert len(fake.requests) > before  # it did ask


async def test_library_refuses_what_cannot_go_upstream_before_sending_it(
    fake: FakeFilesUpstream,
) -> None:
    """A content type that cannot stand in a form header, and an output expiry outside
    OpenAI's range, are the caller's 400s; the upstream never sees them."""
    async with library(fake) as gw:
        with pytest.raises(InvalidRequestError) as info:
            await gw.create_file(
                file=("in.jsonl", b"{}\n", "text/plain\r\nx-injected: 1"), purpose="batch"
            )
        assert info.value.param == "file"
        assert fake.requests == []
        file = await gw.create_file(file=("in.jsonl", responses_input(1)), purpose="batch")
        sent = len(fake.requests)
        for policy, param in (
            ({"anchor": "created_at", "seconds": 10}, "output_expires_after.seconds"),
            ({"anchor": "last_active_at", "seconds": 7200}, "output_expires_after.anchor"),
            ("7200", "output_expires_after"),
        ):
            with pytest.raises(InvalidRequestError) as info:
                await gw.create_batch(
                    input_file_id=file["id"], endpoint="/v1/responses", output_expires_after=policy
                )
            assert info.value.param == param
        assert len(fake.requests) == sent
        await gw.create_batch(
            input_file_id=file["id"],
            endpoint="/v1/responses",
            output_expires_after={"anchor": "created_at", "seconds": 7200},
        )
        assert orjson.loads(fake.requests[-1].body)["output_expires_after"] == {
            "anchor": "created_at",
            "seconds": 7200,
        }


async def test_library_a_reader_that_stops_early_leaves_nothing_open(
    fake: FakeFilesUpstream,
) -> None:
    """Leaving ``open_file_content`` after the first chunk closes the relay and the upstream
    body; nothing is left to the garbage collector."""
    async with library(fake) as gw:
        data = responses_input(200)
        assert len(data) > 3 * fake.content_chunk_size
        file = await gw.create_file(file=("in.jsonl", data), purpose="batch")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with gw.open_file_content(file["id"]) as chunks:
                first = await anext(chunks)
            assert data.startswith(first) and len(first) < len(data)
            gc.collect()
            await trio.testing.wait_all_tasks_blocked()
        # Ours only: httpx's aiter_bytes does not close the aiter_raw it wraps (trio closes
        # that one when it is collected).
        leaked = [
            str(w.message)
            for w in caught
            if issubclass(w.category, ResourceWarning) and "'sluicegate." in str(w.message)
        ]
        assert leaked == []


async def test_library_cancel_batch(fake: FakeFilesUpstream) -> None:
    async with library(fake) as gw:
        file = await gw.create_file(file=("in.jsonl", responses_input(2)), purpose="batch")
        batch = await gw.create_batch(input_file_id=file["id"], endpoint="/v1/responses")
        raw = BATCH_IDS.decode(batch["id"]).raw_id
        with pytest.raises(NotFoundError):
            await gw.cancel_batch(batch["id"], owner="someone-else")
        assert fake.batches[raw].status == "validating"

        cancelling = await gw.cancel_batch(batch["id"])
        assert cancelling["id"] == batch["id"]
        assert cancelling["status"] == "cancelling"
        assert fake.requests[-1].method == "POST"
        assert fake.requests[-1].path == f"/v1/batches/{raw}/cancel"
        [listed] = (await gw.list_batches())["data"]
        assert listed["status"] == "cancelled"
        assert (await gw.retrieve_batch(batch["id"]))["status"] == "cancelled"
        with pytest.raises(ValueError, match="cancelled"):
            fake.complete(raw)
