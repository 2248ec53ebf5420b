"""The fake Files + Batches upstream speaks the real wire format: the official ``openai`` SDK
is the judge, over the loopback socket and over ``httpx.MockTransport`` alike."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
import trio
from openai.types.chat import ChatCompletion

from .fake_files import FakeFilesUpstream, mock_transport, serve_files_loopback
from .sdk import sdk_response

KEY = "sk-test-files-0123456789"
AZURE_VERSION = "2025-04-01-preview"
NOW = 1_760_000_000
DAY = 24 * 60 * 60


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def responses_input(count: int, *, model: str = "gpt-5.4-mini") -> bytes:
    return jsonl(
        [
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": model, "input": f"question {i}"},
            }
            for i in range(count)
        ]
    )


def chat_input(count: int, *, model: str = "gpt-4.1-nano") -> bytes:
    return jsonl(
        [
            {
                "custom_id": f"chat-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
            }
            for i in range(count)
        ]
    )


@pytest.fixture
def upstream() -> FakeFilesUpstream:
    return FakeFilesUpstream(api_key=KEY, clock=lambda: float(NOW), seed=7)


@pytest.fixture
async def url(upstream: FakeFilesUpstream, nursery: trio.Nursery) -> str:
    base: str = await nursery.start(serve_files_loopback, upstream)
    return base


def sdk_client(
    via: str, upstream: FakeFilesUpstream, url: str, *, path: str = "/v1", api_key: str = KEY
) -> openai.AsyncOpenAI:
    if via == "loopback":
        return openai.AsyncOpenAI(base_url=f"{url}{path}", api_key=api_key, max_retries=0)
    # The SDK takes a (legacy) httpx client too, though typed for httpx2.
    http: Any = httpx.AsyncClient(transport=mock_transport(upstream))
    return openai.AsyncOpenAI(
        base_url=f"http://files.test{path}", api_key=api_key, max_retries=0, http_client=http
    )


@pytest.fixture(params=["loopback", "mock"])
async def client(
    request: pytest.FixtureRequest, upstream: FakeFilesUpstream, url: str
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_client(request.param, upstream, url) as sdk:
        yield sdk


async def test_files_round_trip(client: openai.AsyncOpenAI, upstream: FakeFilesUpstream) -> None:
    data = responses_input(2)
    created = await client.files.create(file=("b.jsonl", data), purpose="batch")
    assert re.fullmatch(r"file-[A-Za-z0-9]{24}", created.id)
    assert created.object == "file"
    assert created.bytes == len(data)
    assert created.filename == "b.jsonl"
    assert created.purpose == "batch"
    assert created.status == "processed"
    assert created.status_details is None
    assert created.created_at == NOW
    assert created.expires_at == NOW + 30 * DAY  # batch files expire after 30 days

    # Bigger than a content chunk (64 KiB), every byte value, an expiry policy.
    big = bytes(range(256)) * 1000
    stored = await client.files.create(
        file=("blob.bin", big),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert stored.bytes == len(big)
    assert stored.expires_at == NOW + 3600
    assert upstream.files[stored.id].data == big

    assert await client.files.retrieve(created.id) == created
    assert (await client.files.content(stored.id)).read() == big
    assert (await client.files.content(created.id)).read() == data

    newest_first = await client.files.list()
    assert [f.id for f in newest_first.data] == [stored.id, created.id]
    assert newest_first.has_more is False
    oldest_first = await client.files.list(order="asc")
    assert [f.id for f in oldest_first.data] == [created.id, stored.id]
    only_batch = await client.files.list(purpose="batch")
    assert [f.id for f in only_batch.data] == [created.id]
    paged = [f.id async for f in client.files.list(limit=1)]
    assert paged == [stored.id, created.id]
    assert upstream.requests[-1].query == {"limit": "1", "after": stored.id}

    deleted = await client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.files.retrieve(created.id)
    assert missing.value.status_code == 404
    assert missing.value.body == {
        "message": f"No such File object: {created.id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }
    assert [f.id for f in (await client.files.list()).data] == [stored.id]


async def test_batch_of_responses(client: openai.AsyncOpenAI, upstream: FakeFilesUpstream) -> None:
    source = await client.files.create(file=("b.jsonl", responses_input(3)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=source.id,
        endpoint="/v1/responses",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert re.fullmatch(r"batch_[0-9a-f]{32}", batch.id)
    assert batch.object == "batch"
    assert batch.status == "validating"
    assert (batch.endpoint, batch.input_file_id, batch.completion_window) == (
        "/v1/responses",
        source.id,
        "24h",
    )
    assert (batch.created_at, batch.expires_at) == (NOW, NOW + DAY)
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 0, "failed": 0}
    assert batch.metadata == {"job": "nightly"}
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.usage is None and batch.model is None
    assert await client.batches.retrieve(batch.id) == batch
    assert [b.id for b in (await client.batches.list()).data] == [batch.id]

    upstream.complete(batch.id)

    done = await client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert done.completed_at == done.finalizing_at == done.in_progress_at == NOW
    assert done.error_file_id is None
    assert done.model == "gpt-5.4-mini"
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    assert done.usage is not None
    assert done.usage.model_dump() == {
        "input_tokens": 30,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 15,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 45,
    }
    assert done.output_file_id is not None
    output = await client.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output"
    lines = [
        orjson.loads(line)
        for line in (await client.files.content(output.id)).read().split(b"\n")
        if line
    ]
    assert [line["custom_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert re.fullmatch(r"batch_req_[0-9a-f]{32}", line["id"])
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"]
        response = sdk_response(line["response"]["body"])
        assert response.status == "completed"
        assert response.model == "gpt-5.4-mini"
        assert response.output_text
        assert response.usage is not None
        assert (response.usage.input_tokens, response.usage.output_tokens) == (10, 5)
        assert response.usage.total_tokens == 15
    total = sum(line["response"]["body"]["usage"]["total_tokens"] for line in lines)
    assert total == done.usage.total_tokens


async def test_batch_of_chat_completions(
    client: openai.AsyncOpenAI, upstream: FakeFilesUpstream
) -> None:
    source = await client.files.create(file=("c.jsonl", chat_input(2)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.metadata is None
    upstream.complete(batch.id)
    done = await client.batches.retrieve(batch.id)
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (
        20,
        10,
        30,
    )
    assert done.output_file_id is not None
    content = (await client.files.content(done.output_file_id)).read()
    completions = [
        ChatCompletion.model_validate(orjson.loads(line)["response"]["body"])
        for line in content.splitlines()
    ]
    assert len(completions) == 2
    for completion in completions:
        assert completion.object == "chat.completion"
        assert completion.model == "gpt-4.1-nano"
        assert completion.choices[0].message.content
        assert completion.usage is not None
        assert completion.usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == {
            "prompt_tokens": 10,
            "completion_tokens": 5,
        }


async def test_batch_cancel(client: openai.AsyncOpenAI, upstream: FakeFilesUpstream) -> None:
    source = await client.files.create(file=("b.jsonl", responses_input(1)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=source.id, endpoint="/v1/responses", completion_window="24h"
    )
    cancelling = await client.batches.cancel(batch.id)
    assert (cancelling.status, cancelling.cancelling_at, cancelling.cancelled_at) == (
        "cancelling",
        NOW,
        None,
    )
    cancelled = await client.batches.retrieve(batch.id)
    assert (cancelled.status, cancelled.cancelled_at) == ("cancelled", NOW)
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch"):
        await client.batches.cancel(batch.id)
    with pytest.raises(ValueError, match="cancelled"):
        upstream.complete(batch.id)


async def test_batch_failures(client: openai.AsyncOpenAI, upstream: FakeFilesUpstream) -> None:
    source = await client.files.create(file=("b.jsonl", responses_input(3)), purpose="batch")
    partly = await client.batches.create(
        input_file_id=source.id, endpoint="/v1/responses", completion_window="24h"
    )
    upstream.complete(partly.id, fail_custom_ids={"req-1"})
    done = await client.batches.retrieve(partly.id)
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 3, "completed": 2, "failed": 1}
    assert done.usage is not None and done.usage.total_tokens == 30
    assert done.error_file_id is not None and done.output_file_id is not None
    errors = (await client.files.content(done.error_file_id)).read().splitlines()
    assert len(errors) == 1
    error_line = orjson.loads(errors[0])
    assert error_line["custom_id"] == "req-1"
    assert error_line["response"]["status_code"] == 400
    assert error_line["response"]["body"]["error"]["type"] == "invalid_request_error"

    # Lines for another endpoint than the batch's fail its validation.
    chat = await client.files.create(file=("c.jsonl", chat_input(1)), purpose="batch")
    mismatched = await client.batches.create(
        input_file_id=chat.id, endpoint="/v1/responses", completion_window="24h"
    )
    upstream.complete(mismatched.id)
    failed = await client.batches.retrieve(mismatched.id)
    assert (failed.status, failed.failed_at, failed.output_file_id) == ("failed", NOW, None)
    assert failed.errors is not None and failed.errors.data is not None
    assert [(e.code, e.line) for e in failed.errors.data] == [("invalid_url", 1)]


async def test_batch_create_errors(client: openai.AsyncOpenAI, upstream: FakeFilesUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as unknown:
        await client.batches.create(
            input_file_id="file-nope", endpoint="/v1/responses", completion_window="24h"
        )
    assert unknown.value.param == "input_file_id"
    data = await client.files.create(file=("d.jsonl", responses_input(1)), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        await client.batches.create(
            input_file_id=data.id, endpoint="/v1/responses", completion_window="24h"
        )
    assert wrong_purpose.value.param == "input_file_id"
    source = await client.files.create(file=("b.jsonl", responses_input(1)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as endpoint:
        await client.batches.create(
            input_file_id=source.id, endpoint="/v1/moderations", completion_window="24h"
        )
    assert (endpoint.value.param, endpoint.value.code) == ("endpoint", "invalid_value")
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")
    assert upstream.batches == {}


async def test_errors_are_typed(client: openai.AsyncOpenAI, upstream: FakeFilesUpstream) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong_key:
        await client.with_options(api_key="sk-wrong-key-123456").files.list()
    assert wrong_key.value.code == "invalid_api_key"
    assert "sk-*" in wrong_key.value.message
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.files.content("file-nope")
    assert not_found.value.param == "id"
    omitted: Any = openai.omit
    with pytest.raises(openai.BadRequestError) as no_purpose:
        await client.files.create(file=("b.jsonl", b"{}\n"), purpose=omitted)
    assert no_purpose.value.body == {
        "message": "Missing required parameter: 'purpose'.",
        "type": "invalid_request_error",
        "param": "purpose",
        "code": "missing_required_parameter",
    }
    nonsense: Any = "nonsense"
    with pytest.raises(openai.BadRequestError) as bad_purpose:
        await client.files.create(file=("b.jsonl", b"{}\n"), purpose=nonsense)
    assert bad_purpose.value.param == "purpose"
    assert upstream.files == {}


async def test_fault_injection(client: openai.AsyncOpenAI, upstream: FakeFilesUpstream) -> None:
    upstream.fail_next(429, headers={"retry-after": "2"})
    upstream.fail_next(500)
    upstream.fail_next(503, {"error": {"message": "overloaded", "type": "server_error"}})
    upstream.reset_next()
    with pytest.raises(openai.RateLimitError) as limited:
        await client.files.list()
    assert limited.value.response.headers["retry-after"] == "2"
    assert limited.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as broken:
        await client.files.list()
    assert broken.value.status_code == 500
    with pytest.raises(openai.InternalServerError) as overloaded:
        await client.files.list()
    assert overloaded.value.status_code == 503
    assert overloaded.value.body == {"message": "overloaded", "type": "server_error"}
    with pytest.raises(openai.APIConnectionError):
        await client.files.list()
    assert (await client.files.list()).data == []
    assert len(upstream.requests) == 5


@pytest.mark.parametrize("via", ["loopback", "mock"])
async def test_azure_paths(via: str, upstream: FakeFilesUpstream, url: str) -> None:
    http: Any = None if via == "loopback" else httpx.AsyncClient(transport=mock_transport(upstream))
    endpoint = url if via == "loopback" else "http://files.test"
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=endpoint,
        api_key=KEY,
        api_version=AZURE_VERSION,
        max_retries=0,
        http_client=http,
    ) as azure:
        source = await azure.files.create(file=("b.jsonl", responses_input(2)), purpose="batch")
        assert [f.id for f in (await azure.files.list()).data] == [source.id]
        batch = await azure.batches.create(
            input_file_id=source.id, endpoint="/v1/responses", completion_window="24h"
        )
        upstream.complete(batch.id)
        done = await azure.batches.retrieve(batch.id)
        assert done.status == "completed" and done.output_file_id is not None
        content = (await azure.files.content(done.output_file_id)).read()
        assert len(content.splitlines()) == 2
        assert [b.id for b in (await azure.batches.list()).data] == [batch.id]
        with pytest.raises(openai.AuthenticationError):
            await azure.with_options(api_key="wrong-azure-key").files.list()
    for recorded in upstream.requests:
        assert recorded.path.startswith(("/openai/files", "/openai/batches"))
        assert recorded.query["api-version"] == AZURE_VERSION
        assert "authorization" not in recorded.headers
    assert upstream.requests[0].headers["api-key"] == KEY


@pytest.mark.parametrize("via", ["loopback", "mock"])
async def test_azure_v1_route(via: str, upstream: FakeFilesUpstream, url: str) -> None:
    async with sdk_client(via, upstream, url, path="/openai/v1") as client:
        source = await client.files.create(file=("b.jsonl", responses_input(1)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=source.id, endpoint="/v1/responses", completion_window="24h"
        )
        assert (await client.batches.retrieve(batch.id)).status == "validating"
    assert [r.path for r in upstream.requests] == [
        "/openai/v1/files",
        "/openai/v1/batches",
        f"/openai/v1/batches/{batch.id}",
    ]
    assert all("api-version" not in r.query for r in upstream.requests)


async def test_raw_wire_shapes(upstream: FakeFilesUpstream) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(
        transport=mock_transport(upstream), base_url="http://files.test", headers=auth
    ) as http:
        uploaded = await http.post(
            "/v1/files", files={"file": ("in.jsonl", b"{}\n")}, data={"purpose": "batch"}
        )
        assert uploaded.status_code == 200
        assert uploaded.headers["content-type"] == "application/json"
        assert uploaded.headers["x-request-id"].startswith("req_")
        file_object = uploaded.json()
        assert list(file_object) == [
            "id",
            "object",
            "bytes",
            "created_at",
            "expires_at",
            "filename",
            "purpose",
            "status",
            "status_details",
        ]
        file_id = file_object["id"]
        listed = (await http.get("/v1/files")).json()
        assert listed == {
            "object": "list",
            "data": [file_object],
            "first_id": file_id,
            "last_id": file_id,
            "has_more": False,
        }
        content = await http.get(f"/v1/files/{file_id}/content")
        assert content.headers["content-type"] == "application/octet-stream"
        assert content.content == b"{}\n"

        batch = (
            await http.post(
                "/v1/batches",
                json={
                    "input_file_id": file_id,
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            )
        ).json()
        assert batch == {
            "id": batch["id"],
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": NOW,
            "in_progress_at": None,
            "expires_at": NOW + DAY,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 1, "completed": 0, "failed": 0},
            "metadata": None,
            "model": None,
            "usage": None,
        }
        assert (await http.get("/v1/batches")).json()["data"] == [batch]

        no_file = await http.post("/v1/files", files={"x": ("a", b"")}, data={"purpose": "batch"})
        assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")
        deleted = await http.delete(f"/v1/files/{file_id}")
        assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
        gone = await http.get(f"/v1/files/{file_id}")
        assert gone.status_code == 404
        assert gone.json() == {
            "error": {
                "message": f"No such File object: {file_id}",
                "type": "invalid_request_error",
                "param": "id",
                "code": None,
            }
        }
        anonymous = await http.get("/v1/files", headers={"authorization": ""})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "invalid_request_error"
        no_version = await http.get("/openai/files", headers={"api-key": KEY})
        assert no_version.status_code == 404
        assert (await http.get("/v2/files")).status_code == 404


async def test_chunked_upload_and_keep_alive(upstream: FakeFilesUpstream, url: str) -> None:
    boundary = "fake-files-boundary"
    payload = responses_input(50)
    pieces = [
        f"--{boundary}\r\n".encode(),
        b'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n',
        f"--{boundary}\r\n".encode(),
        b'Content-Disposition: form-data; name="file"; filename="chunked.jsonl"\r\n',
        b"Content-Type: application/jsonl\r\n\r\n",
        *(payload[i : i + 1000] for i in range(0, len(payload), 1000)),
        f"\r\n--{boundary}--\r\n".encode(),
    ]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            await trio.lowlevel.checkpoint()
            yield piece

    headers = {
        "authorization": f"Bearer {KEY}",
        "content-type": f"multipart/form-data; boundary={boundary}",
    }
    async with httpx.AsyncClient(base_url=url) as http:
        uploaded = await http.post("/v1/files", content=body(), headers=headers)
        assert uploaded.status_code == 200, uploaded.text
        file_object = uploaded.json()
        assert (file_object["filename"], file_object["bytes"]) == ("chunked.jsonl", len(payload))
        recorded = upstream.requests[-1]
        assert recorded.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in recorded.headers
        assert upstream.files[file_object["id"]].data == payload

        content = await http.get(f"/v1/files/{file_object['id']}/content", headers=headers)
        assert content.content == payload
        assert content.headers["transfer-encoding"] == "chunked"
    assert upstream.connections == 1

    # The official SDK on the same socket: a Content-Length body.
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0) as sdk:
        listed = await sdk.files.list()
    assert [f.filename for f in listed.data] == ["chunked.jsonl"]


async def test_batches_list_pages_and_other_endpoints(
    client: openai.AsyncOpenAI, upstream: FakeFilesUpstream
) -> None:
    embed = jsonl(
        [
            {
                "custom_id": "e-0",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": "hi"},
            }
        ]
    )
    source = await client.files.create(file=("e.jsonl", embed), purpose="batch")
    ids = [
        (
            await client.batches.create(
                input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
            )
        ).id
        for _ in range(3)
    ]
    assert [b.id async for b in client.batches.list(limit=2)] == ids[::-1]
    assert upstream.requests[-1].query == {"limit": "2", "after": ids[1]}
    done = upstream.complete(ids[0])
    assert done["usage"]["total_tokens"] == 10
    assert done["usage"]["output_tokens"] == 0
    line = orjson.loads(upstream.files[done["output_file_id"]].data)
    assert line["response"]["body"]["object"] == "list"
    assert line["response"]["body"]["data"][0]["object"] == "embedding"


async def test_raw_socket_framing(upstream: FakeFilesUpstream, url: str) -> None:
    """Chunk extensions, trailers, ``Expect: 100-continue``, ``Connection: close``."""
    port = int(url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        form = (
            b"--b\r\n"
            b'Content-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            b"--b\r\n"
            b'Content-Disposition: form-data; name="file"; filename="x.txt"\r\n\r\nhello\r\n'
            b"--b--\r\n"
        )
        head = (
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        await stream.send_all(head)
        interim = await stream.receive_some(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        half = len(form) // 2
        await stream.send_all(
            b"%x;ext=1\r\n%b\r\n%x\r\n%b\r\n0\r\nX-Trailer: t\r\n\r\n"
            % (half, form[:half], len(form) - half, form[half:])
        )
        answer = b""
        while data := await stream.receive_some(65536):
            answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    head_block, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in head_block
    assert orjson.loads(body)["filename"] == "x.txt"
    [stored] = upstream.files.values()
    assert (stored.data, stored.purpose) == (b"hello", "user_data")
