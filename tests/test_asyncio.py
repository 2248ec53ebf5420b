"""The library under asyncio (``_gateway/_host.py``): the same calls, types and errors as under
trio, with backpressure and cancellation carried across, many streams at once, and a gateway
whose closing ends every call in flight.

Each test is a plain function that runs its own ``asyncio.run``. The fake upstream runs in the
loop's trio guest beside the gateway (:func:`guest_fake`), so :func:`settle` (trio's
``wait_all_tasks_blocked`` in the guest) knows when both have nothing left to do: no test
waits on wall-clock time, and ``asyncio.timeout`` only guards against a hang.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

import sluicegate
from sluicegate import ResponseEvent, ResponseStatus, StreamEvent
from sluicegate._gateway import Gateway, ResponseStream
from sluicegate._gateway._host import CrossChannel, GuestRun, HostedContext, HostReader
from sluicegate.errors import (
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
    UpstreamStatusError,
)
from sluicegate.fake import FakeUpstream, Fault, open_fake_upstream
from sluicegate.runtime._messages import Delivery

from .conftest import fake_config
from .fake_files import FakeFilesUpstream, mock_transport

T = TypeVar("T")

#: Only a guard against a hang: every wait in these tests ends on an event, never on time.
HANG_GUARD = 60.0


def run(main: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run(main())`` with a hang guard."""

    async def guarded() -> T:
        async with asyncio.timeout(HANG_GUARD):
            return await main()

    return asyncio.run(guarded())


@asynccontextmanager
async def guest_fake(**kwargs: Any) -> AsyncIterator[FakeUpstream]:
    """A fake upstream served in this loop's trio guest run (one of its users while open)."""
    guest = await GuestRun.join()
    try:
        held = HostedContext(
            None,
            guest.nursery,
            partial(open_fake_upstream, **kwargs),
            lambda session, fake: fake,
            run=guest,
        )
        async with held as fake:
            yield fake
    finally:
        await guest.leave()


async def settle(gw: Gateway) -> None:
    """Wait until every trio task of the guest (the gateway's and the fake's) is blocked."""
    host = gw.host
    assert host is not None
    await host.call(partial(trio.testing.wait_all_tasks_blocked, 0.01))


async def settled_until(gw: Gateway, done: Callable[[], bool]) -> None:
    while not done():
        await settle(gw)


async def statuses(gw: Gateway) -> list[str]:
    return sorted(log.status for log in await gw.spend_logs(limit=10_000))


# -- the same calls ---------------------------------------------------------------------------


def test_the_calls_answer_under_asyncio_with_the_same_types() -> None:
    async def main() -> None:
        async with (
            guest_fake(tokens=8) as fake,
            sluicegate.open_gateway(fake_config(fake)) as gw,
        ):
            assert gw.host is not None
            plain = await gw.responses(model="gpt-test", input="hello", owner="alice")
            assert isinstance(plain, sluicegate.Response)
            assert plain.status is ResponseStatus.COMPLETED and plain.output_text

            async with gw.stream(model="gpt-test", input="hello", owner="alice") as events:
                assert isinstance(events, sluicegate.ResponseStream)
                seen: list[StreamEvent] = [event async for event in events]
                final = events.final_response
            assert all(isinstance(e, StreamEvent) for e in seen)
            assert [e.sequence_number for e in seen] == list(range(len(seen)))
            assert seen[-1].type == "response.completed"
            assert final is not None and final.output_text == plain.output_text

            got = await gw.get_response(plain.id, owner="alice")
            assert (got.id, got.output_text) == (plain.id, plain.output_text)
            follow_up = await gw.responses(
                model="gpt-test", input="again", previous_response_id=plain.id, owner="alice"
            )
            listed = await gw.list_input_items(follow_up.id, owner="alice", order="asc")
            assert [item["role"] for item in listed["data"]] == ["user", "assistant", "user"]
            deleted = await gw.delete_response(plain.id, owner="alice")
            assert deleted["deleted"] is True
            with pytest.raises(NotFoundError):
                await gw.get_response(plain.id, owner="alice")
            totals = await gw.spend_totals(group_by="owner")
            assert [(t.key, t.requests) for t in totals] == [("alice", 3)]

    run(main)


def test_a_gateway_opened_under_trio_has_no_host() -> None:
    async def main() -> None:
        async with (
            open_fake_upstream(tokens=4) as fake,
            sluicegate.open_gateway(fake_config(fake)) as gw,
        ):
            assert gw.host is None
            assert (await gw.responses(model="gpt-test", input="hi")).output_text

    trio.run(main)


def test_one_shot_aresponses_under_asyncio() -> None:
    answer = run(partial(sluicegate.aresponses, model="fake/one-shot", input="hello"))
    assert answer.status is ResponseStatus.COMPLETED and answer.output_text


def test_trio_code_in_the_guest_calls_the_gateway_directly() -> None:
    """A call made from trio inside the guest (a callback, a task of the gateway's) runs as it
    is, not as a hosted call."""

    async def main() -> None:
        async with guest_fake(tokens=4) as fake, sluicegate.open_gateway(fake_config(fake)) as gw:
            host = gw.host
            assert host is not None
            answer = await host.call(partial(gw.responses, model="gpt-test", input="hi"))
            assert answer.status is ResponseStatus.COMPLETED

    run(main)


def test_files_under_asyncio_with_their_content_streamed() -> None:
    files = FakeFilesUpstream(api_key="sk-account-a-0123456789", seed=3, content_chunk_size=1000)
    config = {
        "model_list": [
            {
                "model_name": "files",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": "http://files.test/v1",
                    "api_key": "sk-account-a-0123456789",
                },
            }
        ],
        "general_settings": {"store": {"path": ":memory:"}},
    }
    data = b"".join(bytes([65 + i]) * 999 + b"\n" for i in range(5))

    async def main() -> None:
        async with sluicegate.open_gateway(
            config, transport=mock_transport(files), environ={}
        ) as gw:
            made = await gw.create_file(file=("in.jsonl", data), purpose="user_data")
            assert made["id"].startswith("file-") and made["bytes"] == len(data)
            listed = await gw.list_files()
            assert [f["id"] for f in listed["data"]] == [made["id"]]
            assert (await gw.retrieve_file(made["id"]))["filename"] == "in.jsonl"
            async with gw.open_file_content(made["id"]) as chunks:
                pieces = [piece async for piece in chunks]
            assert len(pieces) == 5 and b"".join(pieces) == data
            assert await gw.file_content(made["id"]) == data
            assert (await gw.delete_file(made["id"]))["deleted"] is True
            with pytest.raises(NotFoundError):
                await gw.retrieve_file(made["id"])

    run(main)


# -- errors -----------------------------------------------------------------------------------


def test_errors_are_the_same_classes_raised_in_the_awaiting_task() -> None:
    async def main() -> None:
        async with guest_fake(tokens=4) as fake, sluicegate.open_gateway(fake_config(fake)) as gw:
            with pytest.raises(NotFoundError):
                await gw.get_response("resp_not-one-of-ours")
            with pytest.raises(InvalidRequestError) as invalid:
                await gw.responses(model="gpt-test", input="hi", max_output_tokens="many")
            assert invalid.value.param == "max_output_tokens"
            fake.script(Fault.status(400))
            with pytest.raises(UpstreamStatusError) as upstream:
                await gw.responses(model="gpt-test", input="hi")
            assert upstream.value.status_code == 400
            fake.script(Fault.status(400))
            with pytest.raises(UpstreamStatusError):
                async with gw.stream(model="gpt-test", input="hi"):
                    raise AssertionError("a refused stream is never entered")
            # The gateway goes on serving.
            assert (await gw.responses(model="gpt-test", input="hi")).output_text

    run(main)


def test_a_stream_cut_mid_way_reads_alike_under_both_loops() -> None:
    """The same upstream fault gives the same events under trio and under asyncio."""

    async def read(gw: Gateway) -> list[str]:
        async with gw.stream(model="gpt-test", input="hi") as events:
            return [event.type async for event in events]

    async def under_trio() -> list[str]:
        async with open_fake_upstream(tokens=8) as fake:
            fake.script(Fault.reset_mid_stream(after_events=5))
            async with sluicegate.open_gateway(fake_config(fake)) as gw:
                return await read(gw)

    async def under_asyncio() -> list[str]:
        async with guest_fake(tokens=8) as fake:
            fake.script(Fault.reset_mid_stream(after_events=5))
            async with sluicegate.open_gateway(fake_config(fake)) as gw:
                types = await read(gw)
                assert await statuses(gw) == ["failed"]
                return types

    trio_types = trio.run(under_trio)
    assert trio_types[-1] == "response.failed"
    assert run(under_asyncio) == trio_types


# -- backpressure and cancellation ------------------------------------------------------------


def test_a_stalled_reader_holds_the_upstream_back() -> None:
    """Backpressure: an asyncio consumer that stops reading stops the gateway's reads."""

    async def main() -> None:
        async with (
            guest_fake(tokens=60_000) as fake,
            sluicegate.open_gateway(fake_config(fake)) as gw,
            gw.stream(model="gpt-test", input="hi") as events,
        ):
            for _ in range(10):
                await events.__anext__()
            readings = []
            for _ in range(4):
                await settle(gw)
                readings.append(gw.statistics().chunks_read)
            # Nothing more is read while nobody consumes, and what was read is bounded.
            assert len(set(readings)) == 1, readings
            assert readings[-1] <= 16, readings
            assert readings[-1] * 65_536 < 60_000 * 150
            written = fake.statistics().bytes_written
            await settle(gw)
            assert fake.statistics().bytes_written == written
            # Reading on drains it to a normal end.
            types = [event.type async for event in events]
            assert types[-1] == "response.completed"

    run(main)


def test_cancelling_the_reading_task_cancels_the_request() -> None:
    async def main() -> None:
        async with (
            guest_fake(tokens=8) as fake,
            sluicegate.open_gateway(fake_config(fake)) as gw,
        ):
            fake.script(Fault.stall(after_events=6))
            reading = asyncio.Event()

            async def reader() -> None:
                async with gw.stream(model="gpt-test", input="hi") as events:
                    async for _ in events:
                        reading.set()

            task = asyncio.create_task(reader())
            await reading.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Recorded by the time the cancellation reached the reader.
            assert await statuses(gw) == ["cancelled"]
            assert gw.statistics().requests_in_flight == 0
            await settled_until(gw, lambda: fake.statistics().open_connections == 0)
            assert gw.statistics().upstream_requests_in_flight == 0

    run(main)


def test_leaving_the_block_early_cancels_the_request() -> None:
    async def main() -> None:
        async with guest_fake(tokens=8) as fake, sluicegate.open_gateway(fake_config(fake)) as gw:
            fake.script(Fault.stall(after_events=6))
            async with gw.stream(model="gpt-test", input="hi") as events:
                async for event in events:
                    if event.type == "response.output_text.delta":
                        break
            assert await statuses(gw) == ["cancelled"]
            await settled_until(gw, lambda: fake.statistics().open_connections == 0)
            stats = fake.statistics()
            assert stats.connections_closed == stats.connections_opened == 1

    run(main)


def test_an_error_in_the_block_cancels_the_request_and_comes_out_as_itself() -> None:
    class Mine(Exception):
        pass

    async def main() -> None:
        async with guest_fake(tokens=8) as fake, sluicegate.open_gateway(fake_config(fake)) as gw:
            fake.script(Fault.stall(after_events=6))
            with pytest.raises(Mine):
                async with gw.stream(model="gpt-test", input="hi") as events:
                    await events.__anext__()
                    raise Mine
            assert await statuses(gw) == ["cancelled"]

    run(main)


def test_cancelling_a_create_cancels_the_request() -> None:
    async def main() -> None:
        async with guest_fake(tokens=8) as fake, sluicegate.open_gateway(fake_config(fake)) as gw:
            fake.script(Fault.stall(after_events=0))
            task = asyncio.create_task(gw.responses(model="gpt-test", input="hi"))
            await settled_until(gw, lambda: fake.statistics().requests == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await statuses(gw) == ["cancelled"]
            await settled_until(gw, lambda: fake.statistics().open_connections == 0)

    run(main)


def test_closing_the_gateway_ends_every_call_in_flight(tmp_path: Path) -> None:
    """Streams and creates still running when the gateway closes are cancelled, each recorded
    with its end, and each caller is told."""
    config_of: Callable[[FakeUpstream], dict[str, Any]] = lambda fake: {  # noqa: E731
        **fake_config(fake),
        "general_settings": {
            "response_id_secret": "test-secret",
            "store": {"path": str(tmp_path / "store.db")},
        },
    }

    async def main() -> None:
        async with guest_fake(tokens=8) as fake:
            fake.script(*[Fault.stall(after_events=4)] * 3, *[Fault.stall(after_events=0)] * 2)
            started = asyncio.Semaphore(0)

            async def streamed(gw: Gateway) -> None:
                async with gw.stream(model="gpt-test", input="hi") as events:
                    started.release()
                    async for _ in events:
                        pass

            async with sluicegate.open_gateway(config_of(fake)) as gw:
                tasks: list[asyncio.Task[Any]] = [
                    asyncio.create_task(streamed(gw)) for _ in range(3)
                ]
                for _ in range(3):
                    await started.acquire()
                tasks += [
                    asyncio.create_task(gw.responses(model="gpt-test", input="hi"))
                    for _ in range(2)
                ]
                await settled_until(gw, lambda: fake.statistics().requests == 5)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, ServiceUnavailableError) for r in results), results
            with pytest.raises(ServiceUnavailableError):
                await gw.responses(model="gpt-test", input="after")
            # Reopened, the store holds each one's end.
            async with sluicegate.open_gateway(config_of(fake)) as again:
                assert await statuses(again) == ["cancelled"] * 5
                await settled_until(again, lambda: fake.statistics().open_connections == 0)

    run(main)


# -- many at once -----------------------------------------------------------------------------


def test_a_thousand_concurrent_streams_lose_nothing() -> None:
    async def main() -> None:
        async with guest_fake(tokens=2) as fake, sluicegate.open_gateway(fake_config(fake)) as gw:

            async def one(i: int) -> tuple[str, int]:
                async with gw.stream(model="gpt-test", input=f"question {i}") as events:
                    seen = [event async for event in events]
                terminal = seen[-1]
                assert isinstance(terminal, ResponseEvent)
                assert terminal.type == "response.completed", terminal.type
                assert [e.sequence_number for e in seen] == list(range(len(seen)))
                return terminal.response.id, len(seen)

            answers = await asyncio.gather(*(one(i) for i in range(1000)))
            assert len({response_id for response_id, _ in answers}) == 1000
            assert len({count for _, count in answers}) == 1
            assert await statuses(gw) == ["completed"] * 1000
            assert fake.statistics().requests == 1000
            stats = gw.statistics()
            assert (stats.requests_total, stats.requests_in_flight) == (1000, 0)

    run(main)


# -- background responses ---------------------------------------------------------------------


def test_background_responses_under_asyncio() -> None:
    async def main() -> None:
        async with guest_fake(tokens=8) as fake, sluicegate.open_gateway(fake_config(fake)) as gw:
            # A reader that leaves a background stream early leaves it running.
            async with gw.stream(model="gpt-test", input="hi", background=True) as events:
                first = await events.__anext__()
            assert isinstance(first, ResponseEvent)
            job = first.response
            stream = await gw.get_response(job.id, stream=True)
            async with stream:
                types = [event.type async for event in stream]
            assert types[0] == "response.created" and types[-1] == "response.completed"
            # Resumed after a sequence number: the rest only.
            async with await gw.get_response(job.id, stream=True, starting_after=3) as rest:
                numbers = [event.sequence_number async for event in rest]
            assert numbers == list(range(4, len(types)))
            # A stalled one is cancelled from asyncio.
            fake.script(Fault.stall(after_events=3))
            stalled = await gw.responses(model="gpt-test", input="hi", background=True)
            cancelled = await gw.cancel_response(stalled.id)
            assert cancelled.status is ResponseStatus.CANCELLED

    run(main)


# -- the loop and the guest run ---------------------------------------------------------------


def test_gateways_on_one_loop_share_one_guest_run_that_ends_with_the_last() -> None:
    async def main() -> None:
        async with (
            sluicegate.open_gateway(_fake_only()) as a,
            sluicegate.open_gateway(_fake_only()) as b,
        ):
            assert a.host is not None and b.host is not None
            assert a.host.run is b.host.run
            answers = await asyncio.gather(
                a.responses(model="fake/a", input="hi"), b.responses(model="fake/b", input="hi")
            )
            assert [r.status for r in answers] == [ResponseStatus.COMPLETED] * 2
        # The run has ended: a new one starts for the next gateway on this loop.
        async with sluicegate.open_gateway(_fake_only()) as c:
            assert c.host is not None and c.host.run is not a.host.run
            await c.responses(model="fake/c", input="hi")

    run(main)
    run(main)
    # Nothing of trio is left running in this thread: trio itself can run here.
    trio.run(trio.lowlevel.checkpoint)


def _fake_only() -> dict[str, Any]:
    return {"general_settings": {"store": {"path": ":memory:"}}}


def test_a_gateway_is_used_from_the_loop_that_opened_it() -> None:
    async def main() -> None:
        async with sluicegate.open_gateway(_fake_only()) as gw:
            failure: list[BaseException] = []

            def elsewhere() -> None:
                try:
                    asyncio.run(gw.responses(model="fake/x", input="hi"))
                except BaseException as exc:
                    failure.append(exc)

            thread = threading.Thread(target=elsewhere)
            thread.start()
            await asyncio.to_thread(thread.join)
            [exc] = failure
            assert isinstance(exc, RuntimeError) and "another event loop" in str(exc)
            assert (await gw.responses(model="fake/x", input="hi")).output_text

    run(main)


def test_sync_responses_inside_asyncio_names_the_call_to_await() -> None:
    """Regression: the synchronous call inside a running loop silently blocked it."""

    async def in_a_task() -> None:
        sluicegate.responses(model="fake/sync", input="hello")

    with pytest.raises(RuntimeError, match=r"await sluicegate\.aresponses"):
        asyncio.run(in_a_task())

    async def in_a_callback() -> None:
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[BaseException] = loop.create_future()

        def callback() -> None:
            try:
                sluicegate.responses(model="fake/sync", input="hello")
            except RuntimeError as exc:
                failed.set_result(exc)

        loop.call_soon(callback)
        exc = await failed
        assert "await sluicegate.aresponses" in str(exc)

    run(in_a_callback)


def test_a_closed_gateway_refuses_every_call_under_both_loops() -> None:
    """Regression: after its block, a call failed with trio's RunFinishedError under asyncio,
    and with an InternalError (its nursery closed) under trio."""

    async def calls_after_close() -> list[str]:
        async with sluicegate.open_gateway(_fake_only()) as gw:
            pass
        refused = []
        for call in (
            partial(gw.responses, model="fake/x", input="hi"),
            partial(gw.get_response, "resp_x"),
            partial(gw.spend_logs),
            partial(gw.file_content, "file-x"),
        ):
            with pytest.raises(ServiceUnavailableError, match="The gateway is closed") as info:
                await call()
            refused.append(info.value.message)
        with pytest.raises(ServiceUnavailableError):
            async with gw.stream(model="fake/x", input="hi"):
                pass
        with pytest.raises(ServiceUnavailableError):
            async with gw.open_file_content("file-x"):
                pass
        return refused

    assert trio.run(calls_after_close) == run(calls_after_close)


def test_the_hosted_calls_stay_coroutine_functions() -> None:
    """Frameworks and callers tell an async callable by ``inspect.iscoroutinefunction``."""
    for name in ("responses", "get_response", "cancel_response", "spend_logs", "create_file"):
        assert inspect.iscoroutinefunction(getattr(Gateway, name)), name


def test_requests_leave_no_cyclic_garbage() -> None:
    """Regression: a stream's end reached its asyncio reader as an exception kept in a future
    (or a session's slot), whose traceback's frames held it: a cycle per stream, holding its
    events until the collector ran. A route plan held its last Routed, which held the plan."""

    async def main() -> list[str]:
        async with guest_fake(tokens=4) as fake, sluicegate.open_gateway(fake_config(fake)) as gw:
            await gw.responses(model="gpt-test", input="warm up")
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(5):
                    await gw.responses(model="gpt-test", input="hi")
                    async with gw.stream(model="gpt-test", input="hi") as events:
                        [_ async for _ in events]
                    async with gw.stream(model="gpt-test", input="hi", background=True) as bg:
                        first = await bg.__anext__()
                    assert isinstance(first, ResponseEvent)
                    async with await gw.get_response(first.response.id, stream=True) as rest:
                        [_ async for _ in rest]
                gc.collect()
                ours = [type(o).__qualname__ for o in gc.garbage if _is_ours(o)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            return ours

    assert run(main) == []


def _is_ours(obj: object) -> bool:
    module = type(obj).__module__
    return module.startswith("sluicegate") or (
        isinstance(obj, BaseException) and obj.__traceback__ is not None
    )


def test_a_stream_end_reaches_a_waiting_reader_without_a_cycle() -> None:
    """The end of a foreground stream, handed to an asyncio reader already waiting for the
    next batch, is a marker: no exception kept in its future, whose frames would hold it."""

    async def main() -> list[str]:
        guest = await GuestRun.join()
        try:
            channel: CrossChannel[Delivery] = CrossChannel(guest)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                events = ResponseStream(HostReader(channel), None)
                reading = asyncio.create_task(_read_all(events))
                await asyncio.sleep(0)  # lets the reader start: it now waits on its future
                channel.close_sender()
                assert await reading == []
                del reading, events
                gc.collect()
                return [type(o).__qualname__ for o in gc.garbage if _is_ours(o)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        finally:
            await guest.leave()

    assert run(main) == []


async def _read_all(events: sluicegate.ResponseStream) -> list[StreamEvent]:
    return [event async for event in events]
