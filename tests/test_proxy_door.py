"""What the proxy refuses at the door, before any upstream call: bodies too deep or not JSON,
unbounded spend metadata, and bodies that trickle in (slow senders) or pile up. Each refusal
is an OpenAI error envelope; nothing reaches the upstream or the store."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from sluicegate.config import load_config
from sluicegate.errors import ConfigError
from sluicegate.store import SpendFilter

from .test_files_batches import MASTER as FILES_MASTER
from .test_files_batches import running as files_running
from .test_proxy import MASTER, Proxy, running


def _nested(depth: int) -> Any:
    value: Any = {"type": "string"}
    for _ in range(depth - 1):
        value = {"type": "object", "properties": {"x": value}}
    return value


async def _store_rows(proxy: Proxy) -> int:
    gateway = proxy.app.gateway
    assert gateway is not None
    return len(await gateway.store.spend_logs(SpendFilter()))


async def test_deep_json_and_deep_spend_metadata_are_400s_and_nothing_is_sent_or_billed() -> None:
    """Regression: a 300-deep field was a 500, and 300-deep spend metadata let a key with a
    budget spend without a record."""
    async with running() as proxy:
        key = (await proxy.new_key(max_budget=0.01))["key"]
        deep_spend: object = "x"
        for _ in range(300):
            deep_spend = {"k": deep_spend}
        bodies: list[dict[str, Any]] = [
            {"tools": [{"type": "function", "name": "f", "parameters": _nested(300)}]},
            {"litellm_metadata": {"spend_logs_metadata": deep_spend}},
            {"litellm_metadata": {"spend_logs_metadata": {f"k{i}": i for i in range(3000)}}},
        ]
        async with proxy.http(key) as http:
            for extra in bodies:
                answer = await http.post(
                    "/v1/responses", json={"model": "gpt-test", "input": "hi", **extra}
                )
                assert answer.status_code == 400, answer.text
                error = answer.json()["error"]
                assert error["type"] == "invalid_request_error"
                assert error["param"] in ("tools", "litellm_metadata.spend_logs_metadata")
            # Past the parser's own depth the body is not JSON we accept at all.
            deepest = b'{"model":"gpt-test","input":' + b"[" * 2000 + b"]" * 2000 + b"}"
            answer = await http.post(
                "/v1/responses", content=deepest, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 400
        assert proxy.fake.statistics().requests == 0
        assert await _store_rows(proxy) == 0


async def _open_request(url: str, body_prefix: bytes, length: int) -> trio.SocketStream:
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"POST /v1/responses HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {MASTER}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    ).encode()
    await stream.send_all(head + body_prefix)
    return stream


async def _read_status(stream: trio.SocketStream) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    start = body.find(b"{")
    return status, orjson.loads(body[start : body.rfind(b"}") + 1])


async def test_a_body_that_trickles_in_is_a_408_after_the_body_timeout() -> None:
    """Regression: an authenticated client held a half-sent body open for 130 s."""
    async with running(request_body_timeout=0.5) as proxy:
        stream = await _open_request(proxy.url, b'{"model": "gpt-test", ', 200)
        async with stream:
            with trio.fail_after(20):
                status, body = await _read_status(stream)
        assert status == 408
        assert body["error"]["code"] == "request_timeout"
        assert "request_body_timeout" in body["error"]["message"]
        assert proxy.fake.statistics().requests == 0


async def test_slow_senders_cannot_pile_up_beyond_the_reader_limit() -> None:
    async with running(max_concurrent_body_reads=1, request_body_timeout=30) as proxy:
        stalled = await _open_request(proxy.url, b'{"model": ', 200)
        async with stalled:
            readers = proxy.app._body_readers
            with trio.fail_after(20):
                # The limiter has no event to wait on: poll it (bounded by the deadline).
                while readers.borrowed_tokens < 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            async with proxy.http() as http:
                answer = await http.post("/v1/responses", json={"model": "gpt-test", "input": "x"})
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
        # The stalled one is gone: the next body is read again.
        with trio.fail_after(20):
            while readers.borrowed_tokens:  # noqa: ASYNC110
                await trio.sleep(0.01)
        async with proxy.http() as http:
            answer = await http.post("/v1/responses", json={"model": "gpt-test", "input": "x"})
        assert answer.status_code == 200


async def _stalled_upload(url: str, key: str, form_prefix: bytes, boundary: str) -> Any:
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            (
                f"POST /v1/files HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}"
                f"\r\nx-sluicegate-model: gpt-a\r\ncontent-type: multipart/form-data; "
                f"boundary={boundary}\r\ncontent-length: {len(form_prefix) + 500}\r\n\r\n"
            ).encode()
            + form_prefix
        )
        with trio.fail_after(20):
            return await _read_status(stream)


@pytest.mark.parametrize("where", ["in a form field", "in the file, streaming upstream"])
async def test_an_upload_that_stalls_is_a_408(where: str) -> None:
    """A stall in the file part is the client's, even though it broke the upload upstream."""
    boundary = "b0und"
    form = (f'--{boundary}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbat').encode()
    if where != "in a form field":
        form = (
            f'--{boundary}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch'
            f'\r\n--{boundary}\r\ncontent-disposition: form-data; name="file"; '
            'filename="a.jsonl"\r\ncontent-type: application/jsonl\r\n\r\n{"a": 1}\n'
        ).encode() + b"x" * 70000
    async with files_running(request_body_timeout=0.5) as proxy:
        status, body = await _stalled_upload(proxy.url, FILES_MASTER, form, boundary)
    assert status == 408, body
    assert body["error"]["code"] == "request_timeout"


def test_body_limits_are_checked_at_load() -> None:
    for settings, path in (
        ({"max_concurrent_body_reads": 0}, "general_settings.max_concurrent_body_reads"),
        ({"request_body_timeout": 0}, "general_settings.request_body_timeout"),
    ):
        try:
            load_config({"general_settings": settings})
        except ConfigError as exc:
            assert exc.path == path
        else:
            raise AssertionError(f"{settings} was accepted")
