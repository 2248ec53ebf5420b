"""A scripted upstream for unit tests over ``httpx.MockTransport``: each request takes the next
step of the script; steps may sleep (trio), so timing is deterministic under autojump_clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import httpx
import orjson
import trio

Step = Callable[[httpx.Request], Awaitable[httpx.Response]]


@attrs.define(eq=False)
class MockUpstream:
    steps: list[Step] = attrs.Factory(list)
    requests: list[httpx.Request] = attrs.Factory(list)
    times: list[float] = attrs.Factory(list)
    default: Step | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        self.times.append(trio.current_time())
        if self.steps:
            return await self.steps.pop(0)(request)
        assert self.default is not None, "the script ran out of steps"
        return await self.default(request)

    def body(self, index: int = -1) -> Any:
        return orjson.loads(self.requests[index].content)


class ClosingStream(httpx.AsyncByteStream):
    """A scripted body that the reader's ``response.aclose()`` closes (httpx's own wrapper of
    an async generator never closes it; a real transport always closes its connection)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]


def json_step(
    status: int, body: Any, headers: dict[str, str] | None = None, *, delay: float = 0.0
) -> Step:
    async def step(request: httpx.Request) -> httpx.Response:
        if delay:
            await trio.sleep(delay)
        return httpx.Response(
            status,
            content=orjson.dumps(body),
            headers={"content-type": "application/json", **(headers or {})},
        )

    return step


def stream_step(
    chunks: list[bytes],
    *,
    delays: list[float] | None = None,
    first_byte_delay: float = 0.0,
    fail_after: int | None = None,
) -> Step:
    """An SSE answer; ``delays[i]`` sleeps before chunk i; ``fail_after`` breaks the body."""

    async def body() -> AsyncIterator[bytes]:
        for i, chunk in enumerate(chunks):
            if fail_after is not None and i == fail_after:
                raise httpx.ReadError("connection reset by peer")
            if delays and delays[i]:
                await trio.sleep(delays[i])
            yield chunk

    async def step(request: httpx.Request) -> httpx.Response:
        if first_byte_delay:
            await trio.sleep(first_byte_delay)
        return httpx.Response(
            200,
            stream=ClosingStream(body()),
            headers={"content-type": "text/event-stream; charset=utf-8"},
        )

    return step


def error_step(
    status: int,
    message: str = "boom",
    *,
    code: str | None = None,
    type: str = "server_error",
    headers: dict[str, str] | None = None,
) -> Step:
    return json_step(
        status, {"error": {"message": message, "type": type, "param": None, "code": code}}, headers
    )


def raise_step(exc: Exception) -> Step:
    async def step(request: httpx.Request) -> httpx.Response:
        raise exc

    return step


def sse_frames(data: bytes) -> list[bytes]:
    """A fixture's SSE frames, one chunk each (how a real upstream paces them)."""
    return [frame + b"\n\n" for frame in data.split(b"\n\n") if frame]
