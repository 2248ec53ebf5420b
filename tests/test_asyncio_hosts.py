"""The library in real asyncio hosts: a FastAPI app served by uvicorn, and notebook cells.

Each test is a plain function that runs its own asyncio loop (``asyncio.run``): the gateway
runs there as a trio guest (``_gateway/_host.py``) beside the host's own work. Nothing waits on
the clock for timing: readiness is an event or a polled state, and every ``asyncio.timeout``
is only a guard against a hang. A stream that must still be running when its client leaves is
the built-in fake paced to last far longer than the guard (``ENDLESS``).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final, cast

import attrs
import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

import sluicegate

#: Every wait of a test, however loaded the machine: a guard against a hang, never a timing.
HANG_GUARD: Final = 30.0

#: A stream that outlasts any test: 100 000 words, one every 10 ms (about 17 minutes).
ENDLESS: Final = {"fake_tokens": 100_000, "fake_token_delay": 0.01}
QUICK_TOKENS: Final = 12


def gateway_config(store_path: str) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "quick",
                "litellm_params": {"model": "fake/quick", "fake_tokens": QUICK_TOKENS},
            },
            {"model_name": "endless", "litellm_params": {"model": "fake/endless", **ENDLESS}},
        ],
        "general_settings": {"store": {"path": store_path}},
    }


# --- the FastAPI app ----------------------------------------------------------------------------


class Chat(BaseModel):
    model: str
    input: str


@attrs.define(eq=False)
class ChatApp:
    """A FastAPI app whose lifespan opens one gateway: ``POST /chat`` streams a response's
    events as SSE (one ``data: <json>`` frame per event), ``POST /answer`` returns a whole
    response as JSON.

    ``answer_barrier``: every ``/answer`` waits there before it calls the gateway, so the
    barrier's parties are being served at once, each with its call still to make.
    """

    config: Mapping[str, Any]
    answer_barrier: asyncio.Barrier | None = None
    _gateway: sluicegate.Gateway | None = None

    @property
    def gateway(self) -> sluicegate.Gateway:
        """The gateway, while the app is being served."""
        assert self._gateway is not None, "the app's lifespan has not opened its gateway"
        return self._gateway

    def build(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            async with sluicegate.open_gateway(self.config) as gateway:
                self._gateway = gateway
                try:
                    yield
                finally:
                    self._gateway = None

        app = FastAPI(lifespan=lifespan)

        @app.post("/chat")
        async def chat(chat: Chat) -> StreamingResponse:
            body = _sse(self.gateway, chat)
            # Starlette stops reading the body when the client disconnects but never closes
            # it: cut at a ``yield``, the generator (and the gateway stream it holds) would
            # end only when it is garbage collected. The response's background task runs
            # after the body however it ended, so it closes the stream there and then.
            return StreamingResponse(
                body, media_type="text/event-stream", background=BackgroundTask(body.aclose)
            )

        @app.post("/answer")
        async def answer(chat: Chat) -> dict[str, Any]:
            if self.answer_barrier is not None:
                await self.answer_barrier.wait()
            response = await self.gateway.responses(model=chat.model, input=chat.input)
            return response.to_dict()

        return app


async def _sse(gateway: sluicegate.Gateway, chat: Chat) -> AsyncGenerator[bytes, None]:
    async with gateway.stream(model=chat.model, input=chat.input) as events:
        async for event in events:
            yield b"data: " + orjson.dumps(event.to_dict()) + b"\n\n"


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a loopback socket bound beforehand, in this loop, until
    the block ends; yields its base URL once the lifespan has started it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        config = uvicorn.Config(
            app,
            loop="asyncio",
            lifespan="on",
            ws="none",
            log_config=None,
            access_log=False,
            # Shutting down waits for open connections this long at most (a hang guard).
            timeout_graceful_shutdown=int(HANG_GUARD),
        )
        server = uvicorn.Server(config)
        served = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            async with asyncio.timeout(HANG_GUARD):
                while not server.started:
                    if served.done():
                        served.result()  # its error, if it failed
                        raise AssertionError("uvicorn stopped before it started")
                    await asyncio.sleep(0.01)
            yield f"http://{host}:{port}"
        finally:
            server.should_exit = True
            async with asyncio.timeout(2 * HANG_GUARD):
                await served


async def read_sse(reply: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """The events of an SSE reply (``data:`` lines), parsed."""
    # httpx's line iterator is an async generator: closed here if the reader stops early.
    lines = cast("AsyncGenerator[str, None]", reply.aiter_lines())
    async with contextlib.aclosing(lines):
        async for line in lines:
            if line.startswith("data: "):
                yield orjson.loads(line.removeprefix("data: "))


async def poll_until_ended(gateway: sluicegate.Gateway, response_id: str) -> sluicegate.SpendLog:
    """The response's spend row once it has ended; polled, as nothing signals the end of a
    foreground response to a third party. The store is asked, not ``get_response``: a
    response the store has no row of yet is asked of its upstream, and the built-in fake
    answers for a stream it is still sending (or was cut off) that it has ``completed``."""
    while True:
        rows = [row for row in await gateway.spend_logs() if row.response_id == response_id]
        if rows and sluicegate.ResponseStatus(rows[0].status).is_terminal:
            return rows[0]
        await asyncio.sleep(0.01)


async def poll_until_idle(gateway: sluicegate.Gateway) -> sluicegate.GatewayStatistics:
    while True:
        stats = gateway.statistics()
        if stats.requests_in_flight == 0 and stats.upstream_requests_in_flight == 0:
            return stats
        await asyncio.sleep(0.01)


# --- FastAPI + uvicorn ----------------------------------------------------------------------------


def test_fastapi_streams_every_event_to_its_client(tmp_path: Path) -> None:
    host = ChatApp(gateway_config(str(tmp_path / "gateway.db")))

    async def main() -> None:
        async with (
            serving(host.build()) as url,
            httpx.AsyncClient(base_url=url) as client,
            asyncio.timeout(HANG_GUARD),
        ):
            chat = {"model": "quick", "input": "stream this through FastAPI"}
            async with client.stream("POST", "/chat", json=chat) as reply:
                assert reply.status_code == 200
                assert reply.headers["content-type"].startswith("text/event-stream")
                events = [event async for event in read_sse(reply)]
            types = [event["type"] for event in events]
            assert types[:2] == ["response.created", "response.in_progress"]
            assert types[-1] == "response.completed"
            assert types.count("response.output_text.delta") == QUICK_TOKENS
            assert [event["sequence_number"] for event in events] == list(range(len(events)))
            final = events[-1]["response"]
            text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
            assert final["status"] == "completed"
            assert {e["response"]["id"] for e in events if "response" in e} == {final["id"]}

            stored = await host.gateway.get_response(final["id"])
            assert stored.status is sluicegate.ResponseStatus.COMPLETED
            assert stored.output_text == text == sluicegate.Response.from_dict(final).output_text
            stats = await poll_until_idle(host.gateway)
            assert stats.requests_total == 1

    asyncio.run(main())


def test_fastapi_client_hanging_up_mid_stream_cancels_the_upstream(tmp_path: Path) -> None:
    """The client leaves after a few deltas of a stream that would run for minutes: the app's
    stream is cancelled, so is the upstream request, and the response is recorded
    ``cancelled`` with what it had produced."""
    host = ChatApp(gateway_config(str(tmp_path / "gateway.db")))

    async def main() -> None:
        async with (
            serving(host.build()) as url,
            httpx.AsyncClient(base_url=url) as client,
            asyncio.timeout(HANG_GUARD),
        ):
            chat = {"model": "endless", "input": "talk until I hang up"}
            seen: list[dict[str, Any]] = []
            async with client.stream("POST", "/chat", json=chat) as reply:
                assert reply.status_code == 200
                async with contextlib.aclosing(read_sse(reply)) as events:
                    async for event in events:
                        seen.append(event)
                        if event["type"] == "response.output_text.delta" and len(seen) > 5:
                            break
                # Still streaming: the upstream has sent a few of its 100 000 words.
                stats = host.gateway.statistics()
                assert stats.requests_in_flight == 1
                assert stats.upstream_requests_in_flight == 1
            # Leaving the block before the body ended closed the connection: a hang-up.
            assert seen[0]["type"] == "response.created"
            response_id = seen[0]["response"]["id"]

            row = await poll_until_ended(host.gateway, response_id)
            assert row.status == "cancelled"
            assert 0 < row.output_tokens < ENDLESS["fake_tokens"]
            recorded = await host.gateway.get_response(response_id)
            assert recorded.status is sluicegate.ResponseStatus.CANCELLED
            stats = await poll_until_idle(host.gateway)
            assert stats.requests_total == 1
            assert [row.response_id for row in await host.gateway.spend_logs()] == [response_id]

            # The app serves on: a new stream on a new connection runs to its end.
            async with client.stream("POST", "/chat", json={**chat, "model": "quick"}) as reply:
                after = [event async for event in read_sse(reply)]
            assert after[-1]["type"] == "response.completed"

    asyncio.run(main())


def test_fastapi_answers_concurrent_requests(tmp_path: Path) -> None:
    clients = 20
    host = ChatApp(gateway_config(str(tmp_path / "gateway.db")), asyncio.Barrier(clients))

    async def main() -> None:
        async with (
            serving(host.build()) as url,
            httpx.AsyncClient(base_url=url) as client,
            asyncio.timeout(HANG_GUARD),
        ):

            async def ask(i: int) -> dict[str, Any]:
                # i + 1 words, so each answer shows which request it answers.
                words = " ".join(["word"] * (i + 1))
                reply = await client.post("/answer", json={"model": "quick", "input": words})
                assert reply.status_code == 200
                answer: dict[str, Any] = reply.json()
                return answer

            answers = await asyncio.gather(*(ask(i) for i in range(clients)))
            assert [a["status"] for a in answers] == ["completed"] * clients
            assert [a["usage"]["input_tokens"] for a in answers] == list(range(1, clients + 1))
            assert {a["usage"]["output_tokens"] for a in answers} == {QUICK_TOKENS}
            ids = [a["id"] for a in answers]
            assert len(set(ids)) == clients
            for answer in answers:
                stored = await host.gateway.get_response(answer["id"])
                assert stored.status is sluicegate.ResponseStatus.COMPLETED
                assert stored.output_text == sluicegate.Response.from_dict(answer).output_text
            stats = await poll_until_idle(host.gateway)
            assert stats.requests_total == clients

    asyncio.run(main())


# --- notebook cells -------------------------------------------------------------------------------


async def run_cell(source: str, namespace: dict[str, Any]) -> None:
    """Run a notebook cell as IPython does: compiled with top-level ``await`` allowed, the
    code evaluated in the notebook's namespace, and its coroutine (if it awaits) awaited in
    the running loop, here as a task of its own."""
    code = compile(source, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        await asyncio.create_task(result)


CELLS: Final = (
    # 1: a gateway the notebook keeps open across cells.
    """
stack = contextlib.AsyncExitStack()
gw = await stack.enter_async_context(sluicegate.open_gateway(config))
""",
    # 2: a call on it, and a gateway opened and closed within one cell beside it.
    """
answer = await gw.responses(model="quick", input="one two three")
async with sluicegate.open_gateway(config) as other:
    second = await other.responses(model="quick", input="from a gateway of one cell")
""",
    # 3: a stream, read with top-level async with and async for, while the loop ticks on.
    """
mark = ticks()
async with gw.stream(model="quick", input="stream in a cell") as events:
    types = [event.type async for event in events]
    streamed = events.final_response
ticked = ticks() - mark
fetched = await gw.get_response(answer.id)
in_flight = gw.statistics().requests_in_flight
""",
    # 4: the kept gateway closed.
    """
await stack.aclose()
""",
)


def test_notebook_cells_keep_a_gateway_across_top_level_awaits() -> None:
    """Each cell is a separate top-level ``await`` in the running loop, in a task of its own:
    the gateway is opened in one task, used in two more and closed in a fourth, with the
    loop's other work (a ticker) running between the cells and while they wait."""

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        namespace: dict[str, Any] = {
            "contextlib": contextlib,
            "sluicegate": sluicegate,
            "config": gateway_config(":memory:"),
            "ticks": lambda: ticks,
        }
        async with asyncio.timeout(HANG_GUARD), asyncio.TaskGroup() as tasks:
            ticking = tasks.create_task(ticker())
            for cell in CELLS:
                await run_cell(cell, namespace)
                for _ in range(10):  # other work between the cells
                    await asyncio.sleep(0)
            ticking.cancel()

        answer = namespace["answer"]
        assert answer.status is sluicegate.ResponseStatus.COMPLETED
        assert answer.usage.input_tokens == 3
        assert namespace["second"].status is sluicegate.ResponseStatus.COMPLETED
        types = namespace["types"]
        assert types[0] == "response.created" and types[-1] == "response.completed"
        assert types.count("response.output_text.delta") == QUICK_TOKENS
        assert namespace["streamed"].status is sluicegate.ResponseStatus.COMPLETED
        # Reading the stream waited on the fake upstream: the ticker ran meanwhile.
        assert namespace["ticked"] > 0
        fetched = namespace["fetched"]
        assert (fetched.id, fetched.output_text) == (answer.id, answer.output_text)
        assert namespace["in_flight"] == 0

    asyncio.run(main())


def test_notebook_cell_calling_a_closed_gateway_is_refused() -> None:
    """A cell run again after the one that closed the gateway: each call is refused at once.
    Regression: once the loop's guest run had ended, a call raised trio's RunFinishedError,
    and every later call on that gateway hung."""

    async def main() -> None:
        namespace: dict[str, Any] = {
            "contextlib": contextlib,
            "sluicegate": sluicegate,
            "config": gateway_config(":memory:"),
        }
        async with asyncio.timeout(HANG_GUARD):
            await run_cell(CELLS[0], namespace)
            await run_cell(CELLS[-1], namespace)
            for _ in range(2):
                with pytest.raises(sluicegate.ServiceUnavailableError):
                    await run_cell(CELLS[1], namespace)

    asyncio.run(main())
