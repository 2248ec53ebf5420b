"""Drill: what a hostile or careless client sends, through the proxy on a real socket.

Every input below must be answered with a 4xx OpenAI error envelope (never a 500, never a
hang), and none may reach the upstream. The table is the drill's inventory: its size is the
"inputs tried" figure the README reports beside the fuzz's.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest
import trio

from ..test_proxy import MASTER, Proxy, running


@attrs.frozen
class Hostile:
    """One bad request: how it goes out, and the status it must get."""

    name: str
    method: str = "POST"
    path: str = "/v1/responses"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    status: int = 400


def _json(text: str) -> bytes:
    return text.encode()


def _deep(depth: int) -> bytes:
    return b'{"model":"gpt-test","input":"x","tools":' + b"[" * depth + b"]" * depth + b"}"


_JSON = (("content-type", "application/json"),)
_BOMB = gzip.compress(b'{"model":"gpt-test","input":"' + b"a" * (40 << 20) + b'"}')

INPUTS = [
    Hostile("not json", body=b"{not json"),
    Hostile("json but not an object", body=b"[1, 2, 3]"),
    Hostile("empty body", body=b""),
    Hostile("model of the wrong type", body=_json('{"model": 42, "input": "x"}')),
    Hostile("no model", body=_json('{"input": "x"}')),
    Hostile("input a number", body=_json('{"model": "gpt-test", "input": 7}')),
    Hostile("tools a string", body=_json('{"model": "gpt-test", "input": "x", "tools": "t"}')),
    Hostile("stream a string", body=_json('{"model": "gpt-test", "input": "x", "stream": "y"}')),
    Hostile(
        "temperature out of range",
        body=_json('{"model": "gpt-test", "input": "x", "temperature": 9}'),
    ),
    Hostile(
        "an integer past 64 bits",
        body=_json('{"model": "gpt-test", "input": "x", "max_output_tokens": 1' + "0" * 30 + "}"),
    ),
    Hostile(
        "a number past double range",
        body=_json('{"model": "gpt-test", "input": "x", "top_p": 1e400}'),
    ),
    Hostile("nested 300 deep", body=_deep(300)),
    Hostile("nested 2000 deep", body=_deep(2000)),
    Hostile(
        "metadata too many pairs",
        body=_json(
            '{"model": "gpt-test", "input": "x", "metadata": {'
            + ", ".join(f'"k{i}": "v"' for i in range(40))
            + "}}"
        ),
    ),
    Hostile(
        "spend metadata 3000 pairs",
        body=_json(
            '{"model": "gpt-test", "input": "x", "litellm_metadata": {"spend_logs_metadata": {'
            + ", ".join(f'"k{i}": {i}' for i in range(3000))
            + "}}}"
        ),
    ),
    Hostile("a client-chosen upstream", body=_json('{"model": "gpt-test", "api_base": "x"}')),
    Hostile(
        "a client-chosen upstream in a header",
        body=_json('{"model": "gpt-test", "input": "x"}'),
        headers=(("x-api-base", "https://elsewhere.example"),),
    ),
    Hostile("the library's owner option", body=_json('{"model": "gpt-test", "owner": "bob"}')),
    Hostile(
        "a forged previous_response_id",
        body=_json('{"model": "gpt-test", "input": "x", "previous_response_id": "resp_Zm9v"}'),
        status=404,
    ),
    Hostile("an unknown model", body=_json('{"model": "nope", "input": "x"}'), status=404),
    Hostile(
        "an unknown content encoding",
        body=b"xx",
        headers=(("content-encoding", "br"),),
        status=415,
    ),
    Hostile(
        "corrupt gzip", body=b"\x1f\x8b\x08\x00broken", headers=(("content-encoding", "gzip"),)
    ),
    Hostile(
        "corrupt deflate",
        body=zlib.compress(b"{}")[:-3],
        headers=(("content-encoding", "deflate"),),
    ),
    Hostile(
        "a decompression bomb", body=_BOMB, headers=(("content-encoding", "gzip"),), status=413
    ),
    Hostile("a body over the limit", body=b'{"x": "' + b"a" * (17 << 20) + b'"}', status=413),
    Hostile(
        "a resume past any sequence number",
        method="GET",
        path="/v1/responses/resp_Zm9v?stream=true&starting_after=99999999999999999999",
    ),
    Hostile(
        "GET on a forged response ID", method="GET", path="/v1/responses/resp_AAAA", status=404
    ),
    Hostile("an unknown route", method="GET", path="/v1/nothing", status=404),
    Hostile(
        "a key request with an absurd duration",
        path="/key/generate",
        body=_json('{"duration": "999999999999d"}'),
    ),
    Hostile(
        "a key request with an infinite budget",
        path="/key/generate",
        body=_json('{"max_budget": 1e400}'),
    ),
]


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    async with running() as p:
        yield p


async def _send(http: httpx.AsyncClient, hostile: Hostile) -> httpx.Response:
    headers = dict(_JSON)
    headers.update(hostile.headers)
    return await http.request(hostile.method, hostile.path, content=hostile.body, headers=headers)


async def test_every_hostile_input_gets_a_4xx_envelope_and_never_reaches_the_upstream(
    proxy: Proxy,
) -> None:
    results: dict[str, tuple[int, Any]] = {}
    async with proxy.http() as http:
        for hostile in INPUTS:
            with trio.fail_after(60):
                answer = await _send(http, hostile)
            results[hostile.name] = (answer.status_code, answer.json())
    wrong = {
        h.name: results[h.name]
        for h in INPUTS
        if results[h.name][0] != h.status or set(results[h.name][1]) != {"error"}
    }
    assert not wrong, wrong
    for status, envelope in results.values():
        assert {"message", "type", "param", "code"} <= set(envelope["error"]), envelope
        assert 400 <= status < 500
    assert proxy.fake.statistics().requests == 0


async def test_a_header_flood_is_refused_not_a_crash(proxy: Proxy) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    flood = "".join(f"x-flood-{i}: {'v' * 64}\r\n" for i in range(2000))
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            (
                f"POST /v1/responses HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {MASTER}"
                f"\r\n{flood}content-length: 2\r\n\r\n{{}}"
            ).encode()
        )
        data = b""
        with trio.fail_after(30):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
    # The HTTP server refuses a head that large (or the connection closes): never a 5xx.
    if data:
        status = int(data.split(b" ", 2)[1])
        assert 400 <= status < 500, data[:200]
    assert proxy.fake.statistics().requests == 0
