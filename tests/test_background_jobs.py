"""Background responses that outlive timeouts and gateway restarts (docs/background.md).

A native upstream runs a background response itself: the gateway creates it with
``background: true`` and follows its resumable stream through resets and stalls
(``GET responses/{id}?stream=true&starting_after=N``), bounded by ``background_timeout``, never
by ``timeout``; a cancel is forwarded; a restarted gateway (a real ``sluicegate serve`` killed
with SIGKILL) takes the job over from the store. A bridged provider's runs in the gateway,
bounded by ``background_timeout``, and a restart ends it ``failed``, saying why.

Upstreams: the built-in fake on loopback (its background jobs run on their own, paced by
``token_delay``; ``script_resume`` cuts the streams a reconnect opens), and the bridged fakes
over ``httpx.MockTransport`` or loopback.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import orjson
import pytest
import trio
import trio.testing

import sluicegate
from sluicegate import ResponseStatus
from sluicegate._gateway._takeover import BRIDGED_RESTART_ERROR
from sluicegate.codecs.ids import IdCodec
from sluicegate.codecs.resume import ResumeCursor
from sluicegate.errors import StoreIntegrityError
from sluicegate.fake import FakeUpstream, Fault, open_fake_upstream
from sluicegate.fake._jobs import cancel_job, job_ids
from sluicegate.store import Accepted, Ended, Routed, open_postgres_store, open_sqlite_store

from . import bridge_fakes
from .conftest import MEMORY_STORE, fake_config
from .fake_anthropic import FakeAnthropic
from .real_clients import MASTER as MASTER_RC
from .real_clients import running_stack
from .sdk import sdk_event, sdk_response
from .serve_process import serving

MASTER = "sk-master-background-0123456789"
AUTH = {"authorization": f"Bearer {MASTER}"}
SECRET = "test-secret"
TOKENS = 8
#: created, queued, in_progress, item added, part added, TOKENS deltas, text done, part done,
#: item done, completed.
EVENTS = 3 + 2 + TOKENS + 4


def _resumes(fake: FakeUpstream) -> list[str]:
    """The queries of the reconnects (``GET …?stream=true``) that reached the fake."""
    return [r.query for r in fake.requests if r.method == "GET" and "stream=true" in r.query]


def _cancels(fake: FakeUpstream) -> list[str]:
    """The paths of the cancels (``POST responses/{id}/cancel``) that reached the fake."""
    return [r.path for r in fake.requests if r.method == "POST" and r.path.endswith("/cancel")]


async def _upstream_status(fake: FakeUpstream, raw_id: str | None) -> str:
    """What the upstream's GET says of its job's status now."""
    assert raw_id is not None
    async with fake_client(fake) as http:
        return str((await http.get(f"/responses/{raw_id}")).json()["status"])


def _creates(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [r.json() for r in fake.requests if r.method == "POST" and r.path.endswith("/responses")]


async def _all_events(gw: sluicegate.Gateway, response_id: str) -> list[Any]:
    replay = await gw.get_response(response_id, stream=True)
    async with replay:
        return [event async for event in replay]


def _check_one_stream(events: list[Any], text: str) -> None:
    """Numbered 0..n without a gap or a repeat, one terminal event, the whole text."""
    assert [e.sequence_number for e in events] == list(range(len(events)))
    terminals = [e for e in events if e.type in ("response.completed", "response.failed")]
    assert [e.type for e in terminals] == ["response.completed"] == [events[-1].type]
    deltas = "".join(e.data["delta"] for e in events if e.type == "response.output_text.delta")
    assert deltas == text != ""
    for event in events:
        sdk_event(event.to_dict())


# -- the cursor (sans-IO) ------------------------------------------------------------------------


def test_the_cursor_hands_on_complete_events_once_and_learns_the_raw_id() -> None:
    cursor = ResumeCursor()
    created = b'data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1"}}'
    delta = b'event: response.output_text.delta\ndata: {"type":"x","sequence_number":1}\n\n'
    out = cursor.feed(created[:30])
    assert out == b"" and cursor.last == -1
    out = cursor.feed(created[30:] + b"\n\n" + delta[:10])
    assert out == created + b"\n\n"
    assert (cursor.raw_id, cursor.last, cursor.ended) == ("resp_1", 0, False)
    # The connection breaks mid-event: the half event is dropped; the new one repeats it.
    cursor.reconnected()
    assert cursor.query() == {"stream": "true", "starting_after": "0"}
    assert cursor.feed(created + b"\n\n" + delta) == delta
    done = b'data: {"type":"response.completed","sequence_number":2,"response":{"id":"resp_1"}}'
    assert cursor.feed(delta + done + b"\n\n") == done + b"\n\n"
    assert (cursor.last, cursor.ended, cursor.relayed) == (2, True, 3)


# -- the built-in fake's background jobs -----------------------------------------------------------


def _sse(text: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[len("data: ") :]) for line in text.splitlines() if line[:5] == "data:"
    ]


async def test_the_fake_runs_background_jobs_of_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A job runs whatever its connection does: queued, in progress, completed; its stream
    resumes after any sequence number (live while it runs); a cancel stops it; a scripted
    fault cuts a resumed stream (the job runs on)."""
    async with open_fake_upstream(tokens=4, token_delay=1.0) as fake, fake_client(fake) as http:
        body = {"model": "m", "input": "hi", "background": True}
        queued = (await http.post("/responses", json=body)).json()
        assert (queued["status"], queued["output"], queued["background"]) == ("queued", [], True)
        await trio.sleep(1.5)
        assert (await http.get(f"/responses/{queued['id']}")).json()["status"] == "in_progress"
        await trio.sleep(10)
        done = (await http.get(f"/responses/{queued['id']}")).json()
        assert done["status"] == "completed" and done["output"][0]["content"][0]["text"]
        # Streamed: the connection is left after 4 events; the job runs on, and a GET
        # streams the rest, numbered as before, live.
        async with http.stream("POST", "/responses", json={**body, "stream": True}) as answer:
            first: list[dict[str, Any]] = []
            async for line in answer.aiter_lines():
                if line.startswith("data:"):
                    first.append(orjson.loads(line[len("data: ") :]))
                    if len(first) == 4:
                        break
        assert [e["type"] for e in first[:3]] == [
            "response.created",
            "response.queued",
            "response.in_progress",
        ]
        assert first[0]["response"]["status"] == "queued"
        job = first[0]["response"]["id"]
        rest = _sse((await http.get(f"/responses/{job}?stream=true&starting_after=3")).text)
        numbers = [e["sequence_number"] for e in first + rest]
        assert numbers == list(range(len(numbers))) and rest[-1]["type"] == "response.completed"
        again = _sse((await http.get(f"/responses/{job}?stream=true&starting_after=8")).text)
        assert again == rest[5:]
        # A fault cuts a resumed stream only.
        fake.script_resume(Fault.reset_mid_stream(2))
        with pytest.raises(httpx.HTTPError):
            await http.get(f"/responses/{job}?stream=true")
        # Cancelled mid-way: it stops, and its stream ends without a terminal event.
        running = (await http.post("/responses", json=body)).json()
        await trio.sleep(1.5)
        cancelled = (await http.post(f"/responses/{running['id']}/cancel")).json()
        assert cancelled["status"] == "cancelled"
        await trio.sleep(10)
        assert (await http.get(f"/responses/{running['id']}")).json()["status"] == "cancelled"
        events = _sse((await http.get(f"/responses/{running['id']}?stream=true")).text)
        assert events and events[-1]["type"] not in ("response.completed", "response.failed")
        # Only background responses stream again; starting_after is an integer.
        plain = (await http.post("/responses", json={"model": "m"})).json()
        assert (await http.get(f"/responses/{plain['id']}?stream=true")).status_code == 400
        bad = await http.get(f"/responses/{job}?stream=true&starting_after=x")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "starting_after"


# -- the store: one takeover only ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_opener(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return lambda: open_sqlite_store(tmp_path / "takeover.db")
    url = request.getfixturevalue("postgres_url")
    return lambda: open_postgres_store(url)


async def test_a_response_is_taken_over_once_and_only_while_it_runs(store_opener: Any) -> None:
    """A takeover (``Routed`` naming the new instance) must name the instance the response is
    left by, and the response must still run: two instances recovering the same dead one at
    once never both take it over (docs/design.md §5.5)."""
    async with store_opener() as store:
        rid = "resp_taken_over_once"
        accepted = Accepted(
            response_id=rid,
            owner="",
            model="g",
            params={},
            input_items=[],
            background=True,
            store=True,
            metadata={},
            created_at=1.0,
        )
        await store.append([accepted])

        def takeover(new: str, old: str | None) -> Routed:
            return Routed(
                response_id=rid,
                deployment_id="d",
                provider="openai",
                attempt=0,
                upstream_id="resp_raw",
                instance=new,
                taken_from=old,
            )

        with pytest.raises(StoreIntegrityError, match="taken over or ended first"):
            await store.append([takeover("b" * 32, "f" * 32)])  # not the instance it is left by
        await store.append([takeover("b" * 32, store.instance)])
        with pytest.raises(StoreIntegrityError, match="taken over or ended first"):
            await store.append([takeover("c" * 32, store.instance)])  # "b" was first
        row = await store.get(rid)
        assert row is not None and row.upstream_id == "resp_raw"
        await store.append(
            [
                Ended(
                    response_id=rid,
                    status=ResponseStatus.CANCELLED,
                    error=None,
                    response=None,
                    completed_at=2.0,
                )
            ]
        )
        with pytest.raises(StoreIntegrityError, match="taken over or ended first"):
            await store.append([takeover("c" * 32, "b" * 32)])  # ended meanwhile


# -- native: longer than timeout, reconnects, bounds ----------------------------------------------


async def test_a_native_background_job_outlives_the_total_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Regression: the gateway held an ordinary stream to the upstream under the router's total
    ``timeout``, so a job longer than it ended ``failed``. It now runs as the upstream's own
    background response, bounded by ``background_timeout`` alone."""
    async with (
        open_fake_upstream(tokens=TOKENS, token_delay=1.0) as fake,
        sluicegate.open_gateway(fake_config(fake, timeout=3)) as gw,
    ):
        queued = await gw.responses(model="gpt-test", input="hi", background=True)
        assert queued.status is ResponseStatus.QUEUED
        await trio.sleep(TOKENS + 5)  # well past the 3 s timeout
        done = await gw.get_response(queued.id)
        assert done.status is ResponseStatus.COMPLETED and len(done.output_text.split()) == TOKENS
        sdk_response(done.to_dict())
        [create] = _creates(fake)
        assert (create["background"], create["stream"]) == (True, True)
        assert "store" not in create  # passed as the client gave it (here: not at all)
        assert _resumes(fake) == []
        # The ID names the deployment; the store knows the upstream's raw ID.
        row = await gw.store.get(queued.id)
        assert row is not None and row.upstream_id is not None
        assert IdCodec.from_secret(SECRET).decode(queued.id).deployment_id == "fake-1"


async def test_a_reset_and_a_stall_are_followed_by_reconnects_without_gap_or_repeat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The upstream resets the create's stream after 5 events, and the reconnect's goes silent
    after 3 more (longer than ``idle_timeout``): each time the gateway reconnects after the last
    event it has, and what it records and replays is one stream."""
    async with (
        open_fake_upstream(tokens=TOKENS, token_delay=1.0) as fake,
        sluicegate.open_gateway(fake_config(fake, timeout=3, idle_timeout=2.5)) as gw,
    ):
        fake.script(Fault.reset_mid_stream(5))
        fake.script_resume(Fault.stall(3))
        async with gw.stream(model="gpt-test", input="hi", background=True) as events:
            first = [event async for event in events]
        response_id = first[0].data["response"]["id"]
        assert _resumes(fake) == ["stream=true&starting_after=4", "stream=true&starting_after=7"]
        row = await gw.store.get(response_id)
        assert row is not None and row.status is ResponseStatus.COMPLETED
        final = await gw.get_response(response_id)
        _check_one_stream(first, final.output_text)
        assert [e.type for e in first[:3]] == [
            "response.created",
            "response.queued",
            "response.in_progress",
        ]
        # The store holds the same stream: a resume from anywhere gets the rest of it.
        recorded = await _all_events(gw, response_id)
        assert [e.to_dict() for e in recorded] == [e.to_dict() for e in first]
        resumed = await gw.get_response(response_id, stream=True, starting_after=6)
        assert [e.sequence_number async for e in resumed] == list(range(7, EVENTS))


async def test_reconnects_are_bounded_and_end_the_job_failed_with_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_fake_upstream(tokens=TOKENS, token_delay=10.0) as fake,  # outlasts the reconnects
        sluicegate.open_gateway(fake_config(fake)) as gw,
    ):
        fake.script(Fault.reset_mid_stream(4))
        fake.script_resume(*[Fault.status(503)] * 5)
        queued = await gw.responses(model="gpt-test", input="hi", background=True)
        await trio.sleep(200)
        failed = await gw.get_response(queued.id)
        assert failed.status is ResponseStatus.FAILED and failed.error is not None
        assert "5 reconnects in a row brought nothing new" in failed.error["message"]
        assert "overloaded" in failed.error["message"]  # the last reconnect's answer
        assert len(_resumes(fake)) == 5
        # Given up here, it would run on upstream (and be billed): it is cancelled there, and
        # its recorded end stays the one it had.
        raw = (await gw.store.get(queued.id)).upstream_id  # type: ignore[union-attr]
        with trio.fail_after(15):
            while not _cancels(fake):  # noqa: ASYNC110 -- sent after the end is recorded
                await trio.sleep(0.1)
        assert _cancels(fake) == [f"/v1/responses/{raw}/cancel"]
        assert await _upstream_status(fake, raw) == "cancelled"
        assert (await gw.get_response(queued.id)).status is ResponseStatus.FAILED
        # A reconnect the upstream refuses for good (it no longer knows the response) ends it
        # at once.
        fake.script(Fault.reset_mid_stream(4))
        expired = {"error": {"message": "Response expired.", "type": "invalid_request_error"}}
        fake.script_resume(Fault.status(404, body=expired))
        gone = await gw.responses(model="gpt-test", input="hi", background=True)
        await trio.sleep(20)
        failed = await gw.get_response(gone.id)
        assert failed.status is ResponseStatus.FAILED and failed.error is not None
        assert failed.error["message"] == "Response expired."
        assert len(_cancels(fake)) == 1  # the upstream refused it: nothing to cancel there


async def test_background_timeout_bounds_a_native_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream(tokens=TOKENS, token_delay=1.0) as fake:
        config = fake_config(fake, timeout=3)
        config["model_list"][0]["litellm_params"]["background_timeout"] = "5s"  # type: ignore[index]
        async with sluicegate.open_gateway(config) as gw:
            queued = await gw.responses(model="gpt-test", input="hi", background=True)
            start = trio.current_time()
            while (await gw.get_response(queued.id)).status not in (  # noqa: ASYNC110
                ResponseStatus.FAILED,
                ResponseStatus.COMPLETED,
            ):
                await trio.sleep(0.5)
            assert 5 <= trio.current_time() - start <= 6
            failed = await gw.get_response(queued.id)
            assert failed.status is ResponseStatus.FAILED and failed.error is not None
            assert "background_timeout of 5.0 s" in failed.error["message"]
            # The upstream would run it on (and bill it): it is cancelled there, once.
            raw = (await gw.store.get(queued.id)).upstream_id  # type: ignore[union-attr]
            with trio.fail_after(15):
                while not _cancels(fake):  # noqa: ASYNC110 -- sent after the end is recorded
                    await trio.sleep(0.1)
            assert _cancels(fake) == [f"/v1/responses/{raw}/cancel"]
            assert await _upstream_status(fake, raw) == "cancelled"
            await trio.sleep(TOKENS)
            assert len(_cancels(fake)) == 1
            again = await gw.get_response(queued.id)
            assert (again.status, again.error) == (ResponseStatus.FAILED, failed.error)
            [log] = await gw.spend_logs()
            assert (log.status, log.estimated) == ("failed", True)


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_is_forwarded_to_the_native_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_fake_upstream(tokens=TOKENS, token_delay=1.0) as fake,
        sluicegate.open_gateway(fake_config(fake)) as gw,
    ):
        async with gw.stream(model="gpt-test", input="hi", background=True) as events:
            seen = []
            async for event in events:
                seen.append(event)
                if event.type == "response.output_text.delta":
                    break
        response_id = seen[0].data["response"]["id"]
        cancelled = await gw.cancel_response(response_id)
        assert cancelled.status is ResponseStatus.CANCELLED
        sdk_response(cancelled.to_dict())
        raw = (await gw.store.get(response_id)).upstream_id  # type: ignore[union-attr]
        cancels = [r.path for r in fake.requests if r.path.endswith("/cancel")]
        assert cancels == [f"/v1/responses/{raw}/cancel"]
        # The upstream's job stopped too, and the gateway's stream of it ends without a
        # terminal event: the store holds one end, ``cancelled``.
        async with fake_client(fake) as http:
            assert (await http.get(f"/responses/{raw}")).json()["status"] == "cancelled"
        recorded = await _all_events(gw, response_id)
        assert not any(e.type in ("response.completed", "response.failed") for e in recorded)
        await trio.sleep(30)
        row = await gw.store.get(response_id)
        assert row is not None and row.status is ResponseStatus.CANCELLED
        assert (await gw.cancel_response(response_id)).status is ResponseStatus.CANCELLED
        assert len([r for r in fake.requests if r.path.endswith("/cancel")]) == 1


def fake_client(fake: FakeUpstream) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=fake.base_url, timeout=None)


# -- ended upstream without a terminal event -------------------------------------------------


async def test_a_job_cancelled_at_the_upstream_ends_cancelled_without_reconnecting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Regression: a job cancelled at the upstream by someone else (its stream ends without a
    terminal event) was reconnected to five times, then recorded ``failed``. The gateway now
    reads its status (``GET responses/{id}``) when its stream ends early: ``cancelled``, so it
    ends ``cancelled`` at once, with the upstream's final response and the usage delivered
    billed; its stream ends without a terminal event, as a cancel here leaves it."""
    async with (
        open_fake_upstream(tokens=TOKENS, token_delay=1.0) as fake,
        sluicegate.open_gateway(fake_config(fake)) as gw,
    ):
        seen: list[Any] = []
        async with gw.stream(model="gpt-test", input="hi", background=True) as events:
            async for event in events:
                seen.append(event)
                if [e.type for e in seen].count("response.output_text.delta") == 3:
                    [raw] = job_ids(fake)
                    cancel_job(fake, raw)  # another client of the provider
        response_id = seen[0].data["response"]["id"]
        terminals = ("response.completed", "response.failed", "response.incomplete")
        assert not any(e.type in terminals for e in seen)
        assert [e.sequence_number for e in seen] == list(range(len(seen)))
        assert _resumes(fake) == [] and _cancels(fake) == []  # not one reconnect
        got = await gw.get_response(response_id)
        assert (got.id, got.status, got.error) == (response_id, ResponseStatus.CANCELLED, None)
        sdk_response(got.to_dict())
        [log] = await gw.spend_logs()
        assert (log.response_id, log.status, log.estimated) == (response_id, "cancelled", True)
        assert log.output_tokens > 0 and log.cost is not None  # what was delivered is billed
        recorded = await _all_events(gw, response_id)
        assert [e.to_dict() for e in recorded] == [e.to_dict() for e in seen]
        await trio.sleep(60)
        assert _resumes(fake) == [] and len(fake.requests) == 2  # the create, the GET
        assert (await gw.get_response(response_id)).status is ResponseStatus.CANCELLED


async def test_a_refused_reconnect_of_a_job_cancelled_upstream_ends_it_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reconnect the upstream refuses (a 400) is not the end by itself: the upstream's
    status is read, and a job cancelled there ends ``cancelled``, not ``failed``."""
    async with (
        open_fake_upstream(tokens=TOKENS, token_delay=1.0) as fake,
        sluicegate.open_gateway(fake_config(fake)) as gw,
    ):
        fake.script(Fault.reset_mid_stream(5))
        refused = {"error": {"message": "Cannot stream this.", "type": "invalid_request_error"}}
        fake.script_resume(Fault.status(400, body=refused))
        seen: list[Any] = []
        async with gw.stream(model="gpt-test", input="hi", background=True) as events:
            async for event in events:
                seen.append(event)
                if len(seen) == 5:  # the last before the reset
                    [raw] = job_ids(fake)
                    cancel_job(fake, raw)
        assert len(seen) == 5 and len(_resumes(fake)) == 1 and _cancels(fake) == []
        got = await gw.get_response(seen[0].data["response"]["id"])
        assert (got.status, got.error) == (ResponseStatus.CANCELLED, None)


async def test_a_stream_ended_early_of_a_finished_job_ends_with_the_upstreams_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The upstream's stream ends cleanly without a terminal event while its job has finished:
    the GET's final response ends it, as the terminal event of its status (priced, recorded
    once, numbered after the last event); a job still running is reconnected to as before."""
    async with (
        open_fake_upstream(tokens=TOKENS) as fake,  # no delay: the job is done at once
        sluicegate.open_gateway(fake_config(fake)) as gw,
    ):
        fake.script(Fault.end_without_terminal(5))
        async with gw.stream(model="gpt-test", input="hi", background=True) as events:
            seen = [event async for event in events]
        assert [e.sequence_number for e in seen] == list(range(6))
        assert seen[-1].type == "response.completed"
        response_id = seen[0].data["response"]["id"]
        assert seen[-1].data["response"]["id"] == response_id
        assert _resumes(fake) == []
        done = await gw.get_response(response_id)
        assert done.status is ResponseStatus.COMPLETED and len(done.output_text.split()) == TOKENS
        sdk_response(done.to_dict())
        [log] = await gw.spend_logs()
        assert (log.status, log.estimated) == ("completed", False)
        assert log.output_tokens == done.usage.output_tokens > 0  # type: ignore[union-attr]
        assert log.cost is not None and log.cost > 0
    async with (
        open_fake_upstream(tokens=TOKENS, token_delay=1.0) as fake,
        sluicegate.open_gateway(fake_config(fake)) as gw,
    ):
        fake.script(Fault.end_without_terminal(5))
        async with gw.stream(model="gpt-test", input="hi", background=True) as events:
            seen = [event async for event in events]
        final = await gw.get_response(seen[0].data["response"]["id"])
        _check_one_stream(seen, final.output_text)
        assert _resumes(fake) == ["stream=true&starting_after=4"]


async def test_a_job_given_up_on_for_malformed_data_is_cancelled_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The upstream's stream cannot be read (malformed SSE): the response ends ``failed`` here,
    and the job, which would run on upstream, is cancelled there."""
    async with (
        open_fake_upstream(tokens=TOKENS, token_delay=1.0) as fake,
        sluicegate.open_gateway(fake_config(fake)) as gw,
    ):
        fake.script(Fault.malformed_sse(4))
        queued = await gw.responses(model="gpt-test", input="hi", background=True)
        await trio.sleep(3)
        failed = await gw.get_response(queued.id)
        assert failed.status is ResponseStatus.FAILED and failed.error is not None
        assert "malformed SSE" in failed.error["message"]
        raw = (await gw.store.get(queued.id)).upstream_id  # type: ignore[union-attr]
        assert _cancels(fake) == [f"/v1/responses/{raw}/cancel"]
        assert await _upstream_status(fake, raw) == "cancelled"
        assert _resumes(fake) == []


def _native_mock(cancel_status: int) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A native upstream (MockTransport) whose background job never gets further than
    queued: its stream ends after ``response.queued``, a reconnect is refused with a 503, a
    GET says it is still queued, and a cancel answers ``cancel_status``."""
    seen: list[httpx.Request] = []
    queued = {
        "id": "resp_upstream_job",
        "object": "response",
        "created_at": 1,
        "status": "queued",
        "background": True,
        "model": "gpt-5.4",
        "output": [],
        "usage": None,
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/v1/responses":
            frames = [
                {"type": "response.created", "sequence_number": 0, "response": queued},
                {"type": "response.queued", "sequence_number": 1, "response": queued},
            ]
            body = b"".join(b"data: " + orjson.dumps(f) + b"\n\n" for f in frames)
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        if request.method == "GET" and request.url.params.get("stream") == "true":
            overloaded = {"error": {"message": "overloaded", "type": "server_error"}}
            return httpx.Response(503, json=overloaded)
        if request.method == "GET":
            return httpx.Response(200, json=queued)
        if path.endswith("/cancel"):
            return httpx.Response(cancel_status, json={**queued, "status": "cancelled"})
        return httpx.Response(404)

    return httpx.MockTransport(handler), seen


async def test_an_upstream_that_fails_the_cancel_leaves_the_recorded_end_alone(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Giving up on a job sends the upstream a cancel, best effort: one that keeps failing (a
    500, retried) is given up within a short deadline and logged; the response stays
    recorded as it ended."""
    transport, seen = _native_mock(cancel_status=500)
    config: dict[str, Any] = {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": "http://native.test/v1",
                    "api_key": "sk-upstream",
                },
                "model_info": {"id": "native-1"},
            }
        ],
        "router_settings": {"retry_backoff_jitter": 0.0, "num_retries": 2},
        "general_settings": {"response_id_secret": SECRET, "store": MEMORY_STORE},
    }
    async with sluicegate.open_gateway(config, transport=transport) as gw:
        queued = await gw.responses(model="m", input="hi", background=True)
        await trio.sleep(200)
        failed = await gw.get_response(queued.id)
        assert failed.status is ResponseStatus.FAILED and failed.error is not None
        assert "5 reconnects in a row brought nothing new" in failed.error["message"]
        gets = [r for r in seen if r.method == "GET" and "stream" not in r.url.params]
        assert len(gets) == 1  # the first stream ended early: still queued, so reconnected
        cancels = [r for r in seen if r.url.path.endswith("/cancel")]
        assert cancels and len(cancels) <= 3  # retried, within the deadline
        assert cancels[0].url.path == "/v1/responses/resp_upstream_job/cancel"
        assert "could not cancel background response" in caplog.text
        assert (await gw.get_response(queued.id)).status is ResponseStatus.FAILED


# -- the official SDK through the proxy --------------------------------------------------------


async def test_the_sdk_creates_resumes_and_cancels_background_jobs_through_the_proxy() -> None:
    """``client.responses.create(background=True)`` (plain and streamed) through the proxy, the
    upstream's stream cut mid-way, then ``retrieve(id, stream=True, starting_after=N)``: every
    event once, numbered without a gap; and ``cancel`` reaches the upstream."""
    async with (
        running_stack(tokens=30, token_delay=0.01) as stack,
        openai.AsyncOpenAI(base_url=stack.base_url, api_key=MASTER_RC, max_retries=0) as client,
    ):
        fake = stack.fakes["a"]
        fake.script(Fault.reset_mid_stream(9))
        stream = await client.responses.create(
            model="solo", input="A long answer, please.", background=True, stream=True
        )
        seen = [event async for event in stream]
        assert [e.sequence_number for e in seen] == list(range(len(seen)))
        assert [e.type for e in seen][:2] == ["response.created", "response.queued"]
        assert seen[-1].type == "response.completed"
        assert _resumes(fake) == ["stream=true&starting_after=8"]
        response_id = seen[0].response.id  # type: ignore[union-attr]
        resumed = await client.responses.retrieve(response_id, stream=True, starting_after=10)
        rest = [event async for event in resumed]
        assert [e.model_dump() for e in rest] == [e.model_dump() for e in seen[11:]]
        # Not streamed: queued at once, polled to the end.
        queued = await client.responses.create(model="solo", input="hi", background=True)
        assert (queued.status, queued.background) == ("queued", True)
        with trio.fail_after(30):
            while (polled := await client.responses.retrieve(queued.id)).status != "completed":  # noqa: ASYNC110
                await trio.sleep(0.02)  # another process's progress: polled, as a client does
        assert len(polled.output_text.split()) == 30
        # Cancelled mid-way (its stream to the gateway stalls, so it is still running here):
        # the upstream is told.
        fake.script(Fault.stall(2))
        job = await client.responses.create(model="solo", input="hi", background=True)
        cancelled = await client.responses.cancel(job.id)
        assert cancelled.status == "cancelled"
        assert len([r for r in fake.requests if r.path.endswith("/cancel")]) == 1


async def test_the_sdk_sees_a_job_cancelled_upstream_as_cancelled_through_the_proxy() -> None:
    """A job cancelled at the upstream by another client, followed by the SDK through the
    proxy: its stream ends without a terminal event, and ``retrieve`` says ``cancelled``."""
    async with (
        running_stack(tokens=200, token_delay=0.02) as stack,
        openai.AsyncOpenAI(base_url=stack.base_url, api_key=MASTER_RC, max_retries=0) as client,
    ):
        fake = stack.fakes["a"]
        stream = await client.responses.create(
            model="solo", input="A long answer, please.", background=True, stream=True
        )
        seen = []
        with trio.fail_after(30):
            async for event in stream:
                seen.append(event)
                if len(seen) == 6:
                    [raw] = job_ids(fake)
                    cancel_job(fake, raw)
        assert seen[-1].type not in ("response.completed", "response.failed")
        response_id = seen[0].response.id  # type: ignore[union-attr]
        got = await client.responses.retrieve(response_id)
        assert (got.id, got.status) == (response_id, "cancelled")
        assert _resumes(fake) == [] and _cancels(fake) == []


# -- bridged -------------------------------------------------------------------------------------


def _bridged_config(**litellm: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {
                    "model": "anthropic/claude-sonnet-4-5",
                    "api_base": "http://ant.test",
                    "api_key": "provider-key",
                    **litellm,
                },
                "model_info": {"id": "anthropic-1"},
            }
        ],
        "router_settings": {"timeout": 5, "num_retries": 0},
        "general_settings": {"response_id_secret": SECRET, "store": MEMORY_STORE},
    }


async def test_a_bridged_job_runs_past_timeout_and_is_bounded_by_background_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bridged provider's background response runs in the gateway: the router's ``timeout``
    (5 s) does not end it, ``background_timeout`` does."""
    fake = FakeAnthropic()
    fake.faults.append(bridge_fakes.Fault(stall=20.0))  # the provider thinks for 20 s
    fake.faults.append(bridge_fakes.Fault(stall=20.0))
    config = _bridged_config(background_timeout=30)
    async with sluicegate.open_gateway(
        config, transport=bridge_fakes.mock_transport(fake), rng=random.Random(7)
    ) as gw:
        slow = await gw.responses(model="m", input="say: finally done", background=True)
        await trio.sleep(25)
        done = await gw.get_response(slow.id)
        assert (done.status, done.output_text) == (ResponseStatus.COMPLETED, "finally done")
    config = _bridged_config(background_timeout=10)
    async with sluicegate.open_gateway(
        config, transport=bridge_fakes.mock_transport(fake), rng=random.Random(7)
    ) as gw:
        cut = await gw.responses(model="m", input="say: too late", background=True)
        await trio.sleep(15)
        failed = await gw.get_response(cut.id)
        assert failed.status is ResponseStatus.FAILED and failed.error is not None
        assert "background_timeout of 10.0 s" in failed.error["message"]
        # A foreground request keeps the total timeout.
        fake.faults.append(bridge_fakes.Fault(stall=20.0))
        with pytest.raises(sluicegate.UpstreamError, match="total timeout of 5"):
            await gw.responses(model="m", input="say: no")


# -- restarts -----------------------------------------------------------------------------------


async def test_a_gateway_shut_down_leaves_a_native_job_to_the_next_one(tmp_path: Path) -> None:
    """Regression: closing a gateway ended its running background responses ``failed``. One
    that its native upstream runs is now left unfinished in the store (a file), and the next
    gateway on it takes it over: it completes, one stream without a gap."""
    config: dict[str, Any]
    async with open_fake_upstream(tokens=40, token_delay=0.02) as fake:
        config = fake_config(fake)
        config["general_settings"]["store"] = {"path": str(tmp_path / "g.db")}  # type: ignore[index]
        async with sluicegate.open_gateway(config) as gw:
            async with gw.stream(model="gpt-test", input="hi", background=True) as events:
                seen = []
                async for event in events:
                    seen.append(event)
                    if len(seen) == 8:
                        break
            response_id = seen[0].data["response"]["id"]
        async with sluicegate.open_gateway(config) as gw:
            with trio.fail_after(30):
                while True:
                    row = await gw.store.get(response_id)
                    if row is not None and row.status.is_terminal:
                        break
                    await trio.sleep(0.02)  # the store's reads run in threads
            assert row.status is ResponseStatus.COMPLETED
            [resume] = _resumes(fake)
            assert resume.startswith("stream=true&starting_after=")
            final = await gw.get_response(response_id)
            _check_one_stream(await _all_events(gw, response_id), final.output_text)
            assert len(final.output_text.split()) == 40


async def _left_behind(fake: FakeUpstream, config: dict[str, Any]) -> tuple[str, str]:
    """A streamed background job started by a gateway that shuts down after 6 events (it
    leaves the job to the next one): its ID and the upstream's."""
    async with sluicegate.open_gateway(config) as gw:
        async with gw.stream(model="gpt-test", input="hi", background=True) as events:
            seen = []
            async for event in events:
                seen.append(event)
                if len(seen) == 6:
                    break
        response_id = seen[0].data["response"]["id"]
        with trio.fail_after(30):
            while (row := await gw.store.get(response_id)) is None or row.upstream_id is None:  # noqa: ASYNC110
                await trio.sleep(0.02)  # committed within the store's linger
    return response_id, row.upstream_id


async def _ended_row(gw: sluicegate.Gateway, response_id: str) -> Any:
    with trio.fail_after(30):
        while True:
            row = await gw.store.get(response_id)
            if row is not None and row.status.is_terminal:
                return row
            await trio.sleep(0.02)  # the store's reads run in threads


async def test_a_job_that_finished_while_no_gateway_ran_is_taken_over_with_its_usage(
    tmp_path: Path,
) -> None:
    """The upstream finishes a job while no gateway follows it: the next gateway takes it
    over, reads the rest of its stream (to its terminal event) and accounts the usage the
    upstream reports, priced (a spend row with its cost, not an estimate)."""
    async with open_fake_upstream(tokens=40, token_delay=0.05) as fake:
        config = fake_config(fake)
        config["general_settings"]["store"] = {"path": str(tmp_path / "g.db")}  # type: ignore[index]
        response_id, raw = await _left_behind(fake, config)
        assert await _upstream_status(fake, raw) == "in_progress"  # left mid-way
        with trio.fail_after(30):
            while await _upstream_status(fake, raw) != "completed":  # noqa: ASYNC110
                await trio.sleep(0.02)  # the fake's job, on its own
        async with fake_client(fake) as http:
            usage = (await http.get(f"/responses/{raw}")).json()["usage"]
        async with sluicegate.open_gateway(config) as gw:
            row = await _ended_row(gw, response_id)
            assert row.status is ResponseStatus.COMPLETED
            assert len(_resumes(fake)) == 1
            final = await gw.get_response(response_id)
            _check_one_stream(await _all_events(gw, response_id), final.output_text)
            assert final.usage is not None and final.usage.output_tokens == usage["output_tokens"]
            [log] = await gw.spend_logs()
            assert (log.response_id, log.status, log.estimated) == (
                response_id,
                "completed",
                False,
            )
            assert (log.input_tokens, log.output_tokens) == (
                usage["input_tokens"],
                usage["output_tokens"],
            )
            assert log.cost is not None and log.cost > 0
            assert _cancels(fake) == []


async def test_a_job_cancelled_upstream_while_no_gateway_ran_is_taken_over_as_cancelled(
    tmp_path: Path,
) -> None:
    """Cancelled at the upstream while no gateway followed it: the takeover's resumed stream
    brings nothing and ends; the upstream's status says ``cancelled``, and so it ends, at once
    (not after five reconnects), billed for what it had delivered."""
    async with open_fake_upstream(tokens=40, token_delay=0.05) as fake:
        config = fake_config(fake)
        config["general_settings"]["store"] = {"path": str(tmp_path / "g.db")}  # type: ignore[index]
        response_id, raw = await _left_behind(fake, config)
        assert await _upstream_status(fake, raw) == "in_progress"  # left mid-way
        cancel_job(fake, raw)
        async with sluicegate.open_gateway(config) as gw:
            row = await _ended_row(gw, response_id)
            assert row.status is ResponseStatus.CANCELLED
            assert len(_resumes(fake)) == 1 and _cancels(fake) == []
            got = await gw.get_response(response_id)
            assert (got.id, got.status) == (response_id, ResponseStatus.CANCELLED)
            sdk_response(got.to_dict())
            [log] = await gw.spend_logs()
            assert (log.status, log.estimated) == ("cancelled", True)
            assert log.cost is not None
            events = await _all_events(gw, response_id)
            assert [e.sequence_number for e in events] == list(range(len(events)))
            assert not any(e.type in ("response.completed", "response.failed") for e in events)


async def test_on_postgresql_a_live_instance_takes_over_what_a_closed_one_left(
    postgres_url: str,
) -> None:
    """Two instances on one PostgreSQL database: the one running a native background job
    closes (its instance row goes), and the other takes the job over at its next recovery and
    follows it to the end."""
    async with open_fake_upstream(tokens=40, token_delay=0.02) as fake:
        config = fake_config(fake)
        config["general_settings"] = {
            **config["general_settings"],  # type: ignore[dict-item]
            "database_url": postgres_url,
            # The closing instance deletes its row: the lease bounds only a dead one, and a long
            # one keeps a starved survivor from seeming dead itself on a busy machine.
            "store": {"instance_lease": 15, "heartbeat_interval": 0.2},
        }
        async with sluicegate.open_gateway(config) as survivor:
            async with sluicegate.open_gateway(config) as leaving:
                queued = await leaving.responses(model="gpt-test", input="hi", background=True)
                with trio.fail_after(30):
                    while (row := await leaving.store.get(queued.id)) is None or (  # noqa: ASYNC110
                        row.upstream_id is None
                    ):
                        await trio.sleep(0.02)  # the store's reads run in threads
            with trio.fail_after(30):
                while True:
                    row = await survivor.store.get(queued.id)
                    if row is not None and row.status.is_terminal:
                        break
                    await trio.sleep(0.05)  # the survivor's recovery runs every heartbeat
            assert row.status is ResponseStatus.COMPLETED
            assert len(_resumes(fake)) == 1
            done = await survivor.get_response(queued.id)
            assert len(done.output_text.split()) == 40


# -- restarts: a real server killed with SIGKILL --------------------------------------------------


def _row(db: Path, response_id: str) -> dict[str, Any] | None:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        connection.row_factory = sqlite3.Row
        found = connection.execute("SELECT * FROM responses WHERE id = ?", (response_id,))
        row = found.fetchone()
    finally:
        connection.close()
    return None if row is None else dict(row)


def _write_config(path: Path, db: Path, models: str) -> None:
    path.write_text(
        f"model_list:\n{models}"
        "router_settings: {timeout: 5, num_retries: 0}\n"
        "general_settings:\n"
        f"  master_key: {MASTER}\n"
        "  response_id_secret: kept-across-restarts\n"
        f"  store: {{path: {db}}}\n"
    )


async def _events_until(lines: Any, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async for line in lines:
        if line.startswith("data:"):
            events.append(orjson.loads(line[len("data: ") :]))
            if len(events) == count:
                break
    return events


async def test_a_restarted_gateway_takes_over_a_native_job_and_a_resume_has_no_gap(
    tmp_path: Path,
) -> None:
    """A background job streamed through ``sluicegate serve`` (SQLite), the server killed with
    SIGKILL mid-way, started again on the same database: the job completes in the store (the
    new process follows the upstream's stream on from the last recorded event), and clients
    resuming with ``?stream=true&starting_after=N`` (httpx, then the official SDK) get every
    event, without a gap."""
    db = tmp_path / "restart.db"
    config = tmp_path / "restart.yaml"
    async with open_fake_upstream(tokens=60, token_delay=0.05) as fake:
        _write_config(
            config,
            db,
            "  - model_name: native\n"
            "    litellm_params:\n"
            "      model: openai/gpt-5.4\n"
            f"      api_base: {fake.base_url}\n"
            "      api_key: sk-upstream\n",
        )
        async with (
            serving(config, workers=1, log=tmp_path / "first.log") as first,
            first.client(AUTH) as http,
        ):
            body = {"model": "native", "input": "a long job", "background": True, "stream": True}
            async with (
                http.stream("POST", "/v1/responses", json=body) as answer,
                aclosing(cast(AsyncGenerator[str, None], answer.aiter_lines())) as lines,
            ):
                seen = await _events_until(lines, 8)
                response_id = seen[0]["response"]["id"]
                with trio.fail_after(10):
                    # Its upstream ID and some events are committed (within the linger).
                    while (row := _row(db, response_id)) is None or row["upstream_id"] is None:  # noqa: ASYNC110
                        await trio.sleep(0.02)  # another process's commit
                first.process.kill()  # SIGKILL, mid-job
                await first.process.wait()
        assert _row(db, response_id)["status"] == "in_progress"  # type: ignore[index]
        async with (
            serving(config, workers=1, log=tmp_path / "second.log") as second,
            second.client(AUTH) as http,
        ):
            with trio.fail_after(30):
                while (got := (await http.get(f"/v1/responses/{response_id}")).json())[  # noqa: ASYNC110
                    "status"
                ] not in ("completed", "failed"):
                    await trio.sleep(0.05)  # another process's progress
            assert got["status"] == "completed", got
            resumes = _resumes(fake)
            assert len(resumes) == 1 and resumes[0].startswith("stream=true&starting_after=")
            # A client resuming after what it saw before the crash gets the rest, no gap.
            after = seen[-1]["sequence_number"]
            query = f"/v1/responses/{response_id}?stream=true&starting_after={after}"
            async with http.stream("GET", query) as resumed:
                rest = await _events_until(resumed.aiter_lines(), 10_000)
            numbers = [e["sequence_number"] for e in seen + rest]
            assert numbers == list(range(len(numbers)))
            assert [e["type"] for e in rest].count("response.completed") == 1
            assert rest[-1]["type"] == "response.completed"
            text = "".join(e["delta"] for e in seen + rest if e["type"].endswith("text.delta"))
            assert text == rest[-1]["response"]["output"][0]["content"][0]["text"]
            assert len(text.split()) == 60
            # The official SDK reads the same.
            async with openai.AsyncOpenAI(
                base_url=f"{second.url}/v1", api_key=MASTER, max_retries=0
            ) as client:
                stream = await client.responses.retrieve(
                    response_id, stream=True, starting_after=after
                )
                sdk_rest = [event async for event in stream]
                assert [e.sequence_number for e in sdk_rest] == numbers[after + 1 :]
                polled = await client.responses.retrieve(response_id)
                assert (polled.status, polled.output_text) == ("completed", text)


async def test_a_restart_ends_a_bridged_job_failed_saying_why(tmp_path: Path) -> None:
    db = tmp_path / "bridged.db"
    config = tmp_path / "bridged.yaml"
    provider = FakeAnthropic()
    provider.faults.append(bridge_fakes.Fault(stall=120.0))  # still thinking at the kill
    async with trio.open_nursery() as nursery:
        base = await nursery.start(bridge_fakes.serve_loopback, provider)
        _write_config(
            config,
            db,
            "  - model_name: bridged\n"
            "    litellm_params:\n"
            "      model: anthropic/claude-sonnet-4-5\n"
            f"      api_base: {base}\n"
            "      api_key: provider-key\n",
        )
        async with (
            serving(config, workers=1, log=tmp_path / "first.log") as first,
            first.client(AUTH) as http,
        ):
            answer = await http.post(
                "/v1/responses",
                json={"model": "bridged", "input": "say: never", "background": True},
            )
            assert answer.json()["status"] == "queued", answer.text
            response_id = answer.json()["id"]
            first.process.kill()
            await first.process.wait()
        async with (
            serving(config, workers=1, log=tmp_path / "second.log") as second,
            second.client(AUTH) as http,
        ):
            got = (await http.get(f"/v1/responses/{response_id}")).json()
            assert (got["status"], got["error"]) == ("failed", BRIDGED_RESTART_ERROR)
            assert (
                "restarted while this background response ran on a bridged provider"
                in (got["error"]["message"])
            )
            sdk_response(got)
        nursery.cancel_scope.cancel()
