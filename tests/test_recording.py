"""The event store as the gateway's system of record: every response recorded; get,
delete, cancel and input items through it; ownership; ``store: false``; background responses,
cancel and stream resume; spend logs. Upstream: a native Responses server over MockTransport,
under ``autojump_clock`` with the inline in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing

import sluicegate
from sluicegate import ResponseStatus
from sluicegate.codecs.ids import IdCodec
from sluicegate.errors import InvalidRequestError, NotFoundError, StoreUnavailableError
from sluicegate.store import RECOVERY_ERROR, Accepted, Routed, SQLiteStore, open_sqlite_store

from .conftest import MEMORY_STORE, fixture_bytes
from .mock_upstream import ClosingStream, sse_frames
from .sdk import sdk_event, sdk_response

TEXT_BODY = orjson.loads(fixture_bytes("openai_text.json"))
TEXT_SSE = fixture_bytes("openai_text.sse")
RAW_ID = TEXT_BODY["id"]
EVENTS_PER_RESPONSE = 14
FULL_TEXT = "".join(
    part["text"] for item in TEXT_BODY["output"] for part in item.get("content", [])
)


@attrs.define(eq=False)
class NativeUpstream:
    """A native Responses server: creates (JSON, or SSE paced ``delay`` seconds a frame),
    and answers GET / DELETE for what it made, as OpenAI does."""

    delay: float = 0.0
    #: Seconds before the response headers of a create.
    first_byte_delay: float = 0.0
    #: Break the SSE body (connection reset) before this frame.
    fail_after: int | None = None
    #: Refuse every create with this status.
    refuse: int | None = None
    made: dict[str, dict[str, Any]] = attrs.Factory(dict)
    requests: list[httpx.Request] = attrs.Factory(list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def posts(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.content) for r in self.requests if r.method == "POST"]

    def calls(self, method: str) -> list[str]:
        return [r.url.path for r in self.requests if r.method == method]

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        parts = request.url.path.rstrip("/").split("/")
        if request.method == "POST" and parts[-1] == "responses":
            if self.first_byte_delay:
                await trio.sleep(self.first_byte_delay)
            if self.refuse is not None:
                error = {"message": "refused", "type": "invalid_request_error", "code": None}
                return _json(self.refuse, {"error": error})
            return self._create(orjson.loads(request.content))
        raw_id = parts[-1]
        if request.method == "GET" and raw_id in self.made:
            return _json(200, self.made[raw_id])
        if request.method == "DELETE" and raw_id in self.made:
            del self.made[raw_id]
            return _json(200, {"id": raw_id, "object": "response", "deleted": True})
        message = f"No response found with id '{raw_id}'."
        return _json(404, {"error": {"message": message, "type": "invalid_request_error"}})

    def _create(self, body: dict[str, Any]) -> httpx.Response:
        raw_id = f"resp_{len(self.made) + 1:048x}"
        final = {**TEXT_BODY, "id": raw_id}
        if body.get("store") is not False:
            self.made[raw_id] = final
        if not body.get("stream"):
            return _json(200, final)
        frames = sse_frames(TEXT_SSE.replace(RAW_ID.encode(), raw_id.encode()))
        return httpx.Response(
            200,
            stream=ClosingStream(self._paced(frames)),
            headers={"content-type": "text/event-stream"},
        )

    async def _paced(self, frames: list[bytes]) -> AsyncIterator[bytes]:
        for i, frame in enumerate(frames):
            if self.fail_after is not None and i == self.fail_after:
                raise httpx.ReadError("connection reset by peer")
            if self.delay:
                await trio.sleep(self.delay)
            yield frame


def _json(status: int, body: Any) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(body), headers={"content-type": "application/json"}
    )


def config(**store: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "g",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": "https://upstream.test/v1",
                    "api_key": "sk-unit",
                },
                "model_info": {"id": "dep-a"},
            }
        ],
        "router_settings": {"retry_backoff_jitter": 0.0},
        "general_settings": {"response_id_secret": "t", "store": {**MEMORY_STORE, **store}},
    }


@asynccontextmanager
async def gateway(
    upstream: NativeUpstream, *, owner: str = "", wall: list[float] | None = None, **store: Any
) -> AsyncIterator[sluicegate.Gateway]:
    clock = wall if wall is not None else [1_700_000_000.0]
    async with sluicegate.open_gateway(
        config(**store),
        transport=upstream.transport(),
        environ={},
        owner=owner,
        wall_clock=lambda: clock[0],
    ) as gw:
        yield gw


# -- every response is recorded ---------------------------------------------------------------


async def test_a_response_is_recorded_with_its_input_output_usage_and_cost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        response = await gw.responses(model="g", input="hi", metadata={"k": "v"}, owner="alice")
        row = await gw.store.get(response.id)
        assert row is not None
        assert (row.status, row.owner, row.model, row.deployment_id, row.provider) == (
            ResponseStatus.COMPLETED,
            "alice",
            "g",
            "dep-a",
            "openai",
        )
        assert row.upstream_id == "resp_" + "0" * 47 + "1"
        assert row.metadata == {"k": "v"}
        assert row.usage is not None and row.usage["output_tokens"] == 1035
        assert row.cost is not None and row.cost > 0
        assert await gw.store.final_response(response.id) == response.to_dict()
        assert await gw.store.output_items(response.id) == TEXT_BODY["output"]
        [item] = await gw.store.input_items(response.id)
        assert item["id"].startswith("msg_")
        assert item["content"] == [{"type": "input_text", "text": "hi"}]
        # What went upstream is the caller's input, unchanged.
        assert upstream.posts()[0]["input"] == "hi"


async def test_the_terminal_event_arrives_only_after_the_response_is_recorded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(delay=0.01)
    async with gateway(upstream) as gw, gw.stream(model="g", input="hi") as events:
        seen: list[str] = []
        rid = ""
        async for event in events:
            if isinstance(event, sluicegate.ResponseEvent):
                rid = event.response.id
            row = await gw.store.get(rid)
            seen.append(event.type)
            if event.type == "response.output_text.done":
                # Accepted lingers up to 50 ms to share a transaction; 110 ms in, it is there.
                assert row is not None and row.status is ResponseStatus.IN_PROGRESS
            if event.type == "response.completed":
                assert row is not None and row.status is ResponseStatus.COMPLETED
                assert row.ttft is not None and 0 < row.ttft < row.duration  # type: ignore[operator]
        assert seen[-1] == "response.completed"


async def test_a_follow_up_sent_when_the_stream_ends_finds_the_first_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        async with gw.stream(model="g", input="hi") as events:
            first = await events.get_final_response()
        second = await gw.responses(model="g", input="more", previous_response_id=first.id)
        assert second.data["previous_response_id"] == first.id
        # The upstream got its own raw ID back.
        assert upstream.posts()[1]["previous_response_id"] == "resp_" + "0" * 47 + "1"
        row = await gw.store.get(second.id)
        assert row is not None and row.previous_id == first.id


async def test_a_stream_cut_mid_way_is_recorded_failed_with_estimated_usage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(fail_after=8)
    async with gateway(upstream) as gw, gw.stream(model="g", input="hi") as events:
        types = [event.type async for event in events]
    assert types[-1] == "response.failed"
    async with gateway(NativeUpstream(fail_after=8)) as gw:
        async with gw.stream(model="g", input="hi") as events:
            last = None
            async for event in events:
                last = event
        assert isinstance(last, sluicegate.ResponseEvent) and last.type == "response.failed"
        rid = last.response.id
        row = await gw.store.get(rid)
        assert row is not None and row.status is ResponseStatus.FAILED
        assert row.error is not None
        assert row.error == {"code": "server_error", "message": row.error["message"]}
        assert row.estimated is True
        assert row.usage is not None and row.usage["input_tokens"] == 1  # "hi": 2 chars
        assert row.usage["output_tokens"] > 0
        final = await gw.store.final_response(rid)
        assert final is not None and final["status"] == "failed"
        sdk_response(final)


async def test_a_request_that_fails_before_any_event_is_recorded_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing is lost: a request no upstream answered ends recorded ``failed`` (no usage:
    nothing was generated) under an ID the error names, and GET finds it."""
    upstream = NativeUpstream(fail_after=0)
    async with gateway(upstream) as gw:
        with pytest.raises(sluicegate.UpstreamError) as info:
            async with gw.stream(model="g", input="hi", timeout=5) as events:
                async for _ in events:
                    pass
        response_id = info.value.headers["x-sluicegate-response-id"]
        [log] = await gw.spend_logs()
        assert (log.response_id, log.status, log.model) == (response_id, "failed", "g")
        assert (log.input_tokens, log.output_tokens, log.cost) == (0, 0, 0.0)
        [total] = await gw.spend_totals(group_by="model")
        assert (total.key, total.requests, total.cost) == ("g", 1, 0.0)
        failed = await gw.get_response(response_id)
        assert failed.status is ResponseStatus.FAILED and failed.output == []
        assert failed.error is not None and failed.error["message"] == info.value.message
        # Another owner does not see it.
        with pytest.raises(NotFoundError):
            await gw.get_response(response_id, owner="someone else")


async def test_a_request_refused_as_the_callers_fault_is_not_recorded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        with pytest.raises(sluicegate.InvalidRequestError):
            await gw.responses(model="g", input="hi", temperature="hot")
        assert await gw.spend_logs() == []


async def test_a_caller_leaving_a_stream_early_ends_the_response_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(delay=1.0)
    async with gateway(upstream) as gw:
        async with gw.stream(model="g", input="hi") as events:
            async for event in events:
                if event.type == "response.output_text.delta":
                    break
        [log] = await gw.spend_logs()
        assert log.status == "cancelled"
        assert log.estimated is True
        assert log.duration is not None


# -- lifecycle: get, delete, cancel, input items, ownership --------------------------------------


async def test_get_goes_upstream_after_the_store_confirms_the_owner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        made = await gw.responses(model="g", input="hi", owner="alice")
        got = await gw.get_response(made.id, owner="alice")
        assert got.id == made.id
        assert upstream.calls("GET") == ["/v1/responses/resp_" + "0" * 47 + "1"]
        with pytest.raises(NotFoundError):
            await gw.get_response(made.id, owner="bob")
        with pytest.raises(NotFoundError):
            await gw.get_response(made.id)  # the gateway's default owner is not alice
        assert (await gw.get_response(made.id, admin=True)).id == made.id
        # Refused lookups never reached the upstream.
        assert len(upstream.calls("GET")) == 2


async def test_owner_defaults_to_user_then_to_the_gateway_owner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream, owner="tenant-1") as gw:
        by_user = await gw.responses(model="g", input="hi", user="u-9")
        by_default = await gw.responses(model="g", input="hi")
        assert (await gw.store.get(by_user.id)).owner == "u-9"  # type: ignore[union-attr]
        assert (await gw.store.get(by_default.id)).owner == "tenant-1"  # type: ignore[union-attr]
        await gw.get_response(by_default.id)
        with pytest.raises(NotFoundError):
            await gw.get_response(by_user.id)


async def test_delete_deletes_upstream_and_leaves_a_tombstone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        made = await gw.responses(model="g", input="hi", spend_logs_metadata={"team": "a"})
        with pytest.raises(NotFoundError):
            await gw.delete_response(made.id, owner="mallory")
        assert await gw.delete_response(made.id) == {
            "id": made.id,
            "object": "response",
            "deleted": True,
        }
        assert upstream.made == {}
        row = await gw.store.get(made.id)
        assert row is not None and row.deleted and row.usage is not None
        assert await gw.store.input_items(made.id) == []
        for call in (gw.get_response, gw.delete_response, gw.cancel_response):
            with pytest.raises(NotFoundError):
                await call(made.id)
        with pytest.raises(NotFoundError):
            await gw.list_input_items(made.id)
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="g", input="again", previous_response_id=made.id)
        assert info.value.code == "previous_response_not_found"
        # The spend row stays.
        [log] = await gw.spend_logs(metadata={"team": "a"})
        assert log.response_id == made.id


async def test_delete_of_a_response_the_upstream_already_dropped_still_tombstones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        made = await gw.responses(model="g", input="hi")
        upstream.made.clear()
        await gw.delete_response(made.id)
        assert (await gw.store.get(made.id)).deleted  # type: ignore[union-attr]


async def test_cancel_of_a_synchronous_response_is_a_400(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway(NativeUpstream()) as gw:
        made = await gw.responses(model="g", input="hi")
        with pytest.raises(InvalidRequestError, match="Cannot cancel a synchronous response"):
            await gw.cancel_response(made.id)


async def test_store_false_keeps_only_the_accounting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        made = await gw.responses(model="g", input="secret", store=False)
        row = await gw.store.get(made.id)
        assert row is not None and row.store is False and row.usage is not None
        assert await gw.store.input_items(made.id) == []
        assert await gw.store.output_items(made.id) == []
        assert await gw.store.final_response(made.id) is None
        with pytest.raises(NotFoundError):
            await gw.get_response(made.id)
        with pytest.raises(InvalidRequestError, match="store': false") as info:
            await gw.responses(model="g", input="more", previous_response_id=made.id)
        assert info.value.param == "previous_response_id"
        assert len(upstream.posts()) == 1  # refused before any upstream call


async def test_previous_response_of_another_owner_is_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        made = await gw.responses(model="g", input="hi", owner="alice")
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="g", input="x", previous_response_id=made.id, owner="bob")
        assert (info.value.code, info.value.param) == (
            "previous_response_not_found",
            "previous_response_id",
        )


async def test_input_items_list_the_chain_with_pagination(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        first = await gw.responses(model="g", input="one")
        second = await gw.responses(
            model="g",
            previous_response_id=first.id,
            input=[
                {"role": "user", "content": "two"},
                {"type": "message", "role": "user", "content": "three", "id": "msg_mine"},
            ],
        )
        listed = await gw.list_input_items(second.id, order="asc", limit=100)
        texts = [
            item["content"] if isinstance(item["content"], str) else item["content"][0]["text"]
            for item in listed["data"]
        ]
        assert texts == ["one", FULL_TEXT, "two", "three"]
        assert listed["has_more"] is False
        assert listed["last_id"] == "msg_mine"
        ids = [item["id"] for item in listed["data"]]
        assert len(set(ids)) == 4
        newest = await gw.list_input_items(second.id, limit=2)
        assert [i["id"] for i in newest["data"]] == ids[::-1][:2]
        assert newest["has_more"] is True and newest["first_id"] == "msg_mine"
        rest = await gw.list_input_items(second.id, limit=2, after=newest["last_id"])
        assert [i["id"] for i in rest["data"]] == ids[::-1][2:]
        assert rest["has_more"] is False
        back = await gw.list_input_items(second.id, order="asc", limit=1, before=ids[2])
        assert [i["id"] for i in back["data"]] == [ids[1]]
        for bad in ({"limit": 0}, {"limit": 101}, {"order": "up"}, {"after": "msg_nope"}):
            with pytest.raises(InvalidRequestError) as info:
                await gw.list_input_items(second.id, **bad)
            assert info.value.param == next(iter(bad))


# -- background responses --------------------------------------------------------------------


async def test_background_returns_queued_at_once_and_is_polled_to_completion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(delay=1.0)
    async with gateway(upstream) as gw:
        start = trio.current_time()
        queued = await gw.responses(model="g", input="hi", background=True)
        assert trio.current_time() == start
        assert (queued.status, queued.data["background"]) == (ResponseStatus.QUEUED, True)
        sdk_response(queued.to_dict())
        polled = await gw.get_response(queued.id)
        assert polled.status in (ResponseStatus.QUEUED, ResponseStatus.IN_PROGRESS)
        await trio.sleep(5)
        polled = await gw.get_response(queued.id)
        assert polled.status is ResponseStatus.IN_PROGRESS and polled.id == queued.id
        await trio.sleep(20)
        done = await gw.get_response(queued.id)
        assert (done.status, done.id, done.data["background"]) == (
            ResponseStatus.COMPLETED,
            queued.id,
            True,
        )
        assert done.output_text == FULL_TEXT
        sdk_response(done.to_dict())
        # A native upstream runs it as a background response of its own, and streams it.
        [body] = upstream.posts()
        assert body["stream"] is True and body["background"] is True
        assert gw.statistics().background_running == 0


async def test_cancel_stops_a_background_response_and_bills_the_partial_usage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(delay=1.0)
    async with gateway(upstream) as gw:
        queued = await gw.responses(model="g", input="hi", background=True)
        await trio.sleep(7.5)  # a few deltas in
        cancelled = await gw.cancel_response(queued.id)
        assert cancelled.status is ResponseStatus.CANCELLED
        sdk_response(cancelled.to_dict())
        row = await gw.store.get(queued.id)
        assert row is not None and row.status is ResponseStatus.CANCELLED
        assert row.estimated is True and row.usage is not None
        assert row.usage["output_tokens"] > 0
        # Idempotent: the same final object again, and nothing more ran.
        assert (await gw.cancel_response(queued.id)).to_dict() == cancelled.to_dict()
        await trio.sleep(60)
        assert (await gw.get_response(queued.id)).status is ResponseStatus.CANCELLED


async def test_cancel_of_a_finished_background_response_returns_it_unchanged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway(NativeUpstream()) as gw:
        queued = await gw.responses(model="g", input="hi", background=True)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1)
        done = await gw.get_response(queued.id)
        assert done.status is ResponseStatus.COMPLETED
        assert (await gw.cancel_response(queued.id)).to_dict() == done.to_dict()


async def test_on_end_is_called_once_when_a_background_response_has_ended(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The library side of the proxy's hold on a key's parallel slot: ``on_end`` runs when the
    background response ends (completed, cancelled), never at the 200 ``queued``."""
    ended: list[str] = []

    def note(name: str) -> Callable[[], None]:
        return lambda: ended.append(name)

    async with gateway(NativeUpstream(delay=1.0)) as gw:
        await gw.responses(model="g", input="hi", background=True, on_end=note("polled"))
        cancelled = await gw.responses(
            model="g", input="hi", background=True, on_end=note("cancelled")
        )
        async with gw.stream(model="g", input="hi", background=True, on_end=note("streamed")):
            pass  # left at once: it runs on
        await trio.sleep(3)
        assert ended == []
        await gw.cancel_response(cancelled.id)
        assert ended == ["cancelled"]
        await trio.sleep(30)
        assert sorted(ended) == ["cancelled", "polled", "streamed"]
        # Not for a call refused before it started, nor for one that is not background.
        with pytest.raises(InvalidRequestError):
            await gw.responses(
                model="g", input="hi", background=True, store=False, on_end=note("never")
            )
        await gw.responses(model="g", input="hi", on_end=note("foreground"))
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="g", input="hi", background=True, on_end="yes")
        assert info.value.param == "on_end"
        assert sorted(ended) == ["cancelled", "polled", "streamed"]

        # A callback that fails is logged; the gateway runs on.
        def fail() -> None:
            raise RuntimeError("the caller's bug")

        await gw.responses(model="g", input="hi", background=True, on_end=fail)
        await trio.sleep(30)
        assert "the on_end callback of resp_" in caplog.text
        assert (await gw.responses(model="g", input="hi")).status is ResponseStatus.COMPLETED


async def test_background_stream_resumes_after_a_disconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(delay=1.0)
    async with gateway(upstream) as gw:
        async with gw.stream(model="g", input="hi", background=True) as events:
            first: list[Any] = []
            async for event in events:
                first.append(event)
                if len(first) == 5:
                    break
        rid = first[0].response.id
        assert first[0].response.data["background"] is True
        # The caller left; the response runs on.
        await trio.sleep(3)
        row = await gw.store.get(rid)
        assert row is not None and row.status is ResponseStatus.IN_PROGRESS
        resumed = await gw.get_response(rid, stream=True, starting_after=4)
        async with resumed:
            rest = [event async for event in resumed]
        numbers = [e.sequence_number for e in first + rest]
        assert numbers == list(range(EVENTS_PER_RESPONSE))
        assert rest[-1].type == "response.completed"
        for event in first + rest:
            sdk_event(event.to_dict())
        # Once it has ended, the same replay comes from the store.
        replay = await gw.get_response(rid, stream=True, starting_after=10)
        assert [e.sequence_number for e in [e async for e in replay]] == [11, 12, 13]
        assert replay.final_response is not None
        assert replay.final_response.output_text == FULL_TEXT


async def test_stream_replay_needs_a_streamed_background_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway(NativeUpstream()) as gw:
        plain = await gw.responses(model="g", input="hi")
        quiet = await gw.responses(model="g", input="hi", background=True)
        for rid in (plain.id, quiet.id):
            with pytest.raises(InvalidRequestError) as info:
                await gw.get_response(rid, stream=True)
            assert info.value.param == "stream"


async def test_background_needs_store(autojump_clock: trio.testing.MockClock) -> None:
    async with gateway(NativeUpstream()) as gw:
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="g", input="hi", background=True, store=False)
        assert info.value.param == "background"


async def test_a_file_store_keeps_a_background_response_across_a_shutdown(
    tmp_path: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """A native upstream runs a background response on through the gateway's shutdown: the
    store leaves it unfinished, and the next gateway on the file takes it over
    (docs/background.md). This upstream (a new one) no longer knows it: it ends ``failed``
    with the upstream's answer, as recorded."""
    path = str(tmp_path / "g.db")
    upstream = NativeUpstream(delay=1.0)
    async with gateway(upstream, path=path) as gw:
        queued = await gw.responses(model="g", input="hi", background=True)
        await trio.sleep(3)
    async with gateway(NativeUpstream(), path=path) as gw:
        for _ in range(1000):  # a file store's reads run in threads: polled, not timed
            row = await gw.store.get(queued.id)
            if row is not None and row.status.is_terminal:
                break
            await trio.sleep(0.1)
        assert row is not None and row.status is ResponseStatus.FAILED
        assert row.error is not None and "No response found" in row.error["message"]
        failed = await gw.get_response(queued.id)
        assert failed.status is ResponseStatus.FAILED


# -- spend logs ----------------------------------------------------------------------------------


async def test_spend_logs_carry_metadata_from_the_argument_or_litellm_metadata(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = [1_700_000_000.0]
    async with gateway(NativeUpstream(), wall=wall) as gw:
        a = await gw.responses(
            model="g", input="hi", owner="alice", spend_logs_metadata={"team": "red", "n": 1}
        )
        wall[0] += 86_400
        b = await gw.responses(
            model="g",
            input="hi",
            owner="bob",
            litellm_metadata={"spend_logs_metadata": {"team": "blue"}},
        )
        logs = await gw.spend_logs()
        assert [log.response_id for log in logs] == [b.id, a.id]
        assert logs[1].spend_metadata == {"team": "red", "n": 1}
        assert logs[1].input_tokens == 81 and logs[1].output_tokens == 1035
        assert logs[1].cached_tokens == 64 and logs[1].reasoning_tokens == 832
        assert [log.response_id for log in await gw.spend_logs(metadata={"team": "blue"})] == [b.id]
        assert [log.response_id for log in await gw.spend_logs(owner="alice")] == [a.id]
        day = await gw.spend_totals(group_by="day")
        assert [(t.key, t.requests) for t in day] == [("2023-11-14", 1), ("2023-11-15", 1)]
        [by_model] = await gw.spend_totals(group_by="model")
        assert (by_model.key, by_model.requests, by_model.output_tokens) == ("g", 2, 2070)
        assert by_model.cost == pytest.approx(logs[0].cost * 2)  # type: ignore[operator]
        with pytest.raises(InvalidRequestError):
            await gw.spend_totals(group_by="week")  # type: ignore[arg-type]


async def test_litellm_metadata_is_not_sent_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream()
    async with gateway(upstream) as gw:
        await gw.responses(model="g", input="hi", litellm_metadata={"spend_logs_metadata": {}})
        assert "litellm_metadata" not in upstream.posts()[0]
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="g", input="hi", litellm_metadata={"spend_logs_metadata": 3})
        assert info.value.param == "litellm_metadata.spend_logs_metadata"


async def test_retention_purges_content_and_keeps_spend_rows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = [1_700_000_000.0]
    async with gateway(NativeUpstream(), wall=wall, retention="1d", purge_interval="1h") as gw:
        old = await gw.responses(model="g", input="hi")
        wall[0] += 2 * 86_400
        fresh = await gw.responses(model="g", input="hi")
        await trio.sleep(3600 + 1)  # the next purge
        with pytest.raises(NotFoundError):
            await gw.list_input_items(old.id)
        assert (await gw.list_input_items(fresh.id))["data"]
        row = await gw.store.get(old.id)
        assert row is not None and row.purged and row.usage is not None
        assert len(await gw.spend_logs()) == 2


# -- more ends, limits and owners ------------------------------------------------------------


async def test_a_terminal_that_cannot_be_recorded_is_withheld_and_the_response_fails(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway(NativeUpstream()) as gw:

        async def refuse(self: Any, records: Any) -> None:
            raise StoreUnavailableError("the database is busy")

        # Fault injection: every awaited append fails, as when the database stays locked.
        monkeypatch.setattr(SQLiteStore, "append", refuse)
        async with gw.stream(model="g", input="hi") as events:
            types = [event.type async for event in events]
        # The upstream's completed never reached the caller: the store had not kept it.
        assert "response.completed" not in types
        assert types[-1] == "response.failed"
        assert types.count("response.failed") == 1
        # Not streamed, the caller hears it as the store's own error (a 503 through the proxy,
        # worth a retry), not as a response that reads as failed upstream.
        with pytest.raises(StoreUnavailableError, match="busy"):
            await gw.responses(model="g", input="hi")


async def test_a_background_response_that_fails_before_any_event_is_recorded_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(refuse=400)
    async with gateway(upstream) as gw:
        queued = await gw.responses(model="g", input="hi", background=True)
        await trio.sleep(1)
        failed = await gw.get_response(queued.id)
        assert failed.status is ResponseStatus.FAILED
        assert failed.error == {"code": "server_error", "message": "refused"}
        sdk_response(failed.to_dict())
        with pytest.raises(sluicegate.UpstreamError, match="refused"):
            async with gw.stream(model="g", input="hi", background=True):
                pass


async def test_cancel_before_the_upstream_answered_ends_a_queued_response_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(first_byte_delay=30.0)
    async with gateway(upstream) as gw:
        queued = await gw.responses(model="g", input="hello", background=True)
        await trio.sleep(1)
        cancelled = await gw.cancel_response(queued.id)
        assert (cancelled.status, cancelled.id) == (ResponseStatus.CANCELLED, queued.id)
        [log] = await gw.spend_logs()
        assert log.status == "cancelled" and log.estimated
        assert (log.input_tokens, log.output_tokens) == (2, 0)  # "hello": 5 chars


async def test_others_cannot_cancel_or_list_but_an_admin_can(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = NativeUpstream(delay=1.0)
    async with gateway(upstream) as gw:
        job = await gw.responses(model="g", input="hi", background=True, owner="alice")
        for call in (gw.cancel_response, gw.get_response, gw.list_input_items):
            with pytest.raises(NotFoundError):
                await call(job.id, owner="bob")
        cancelled = await gw.cancel_response(job.id, admin=True)
        assert cancelled.status is ResponseStatus.CANCELLED
        assert (await gw.list_input_items(job.id, owner="alice"))["data"]


async def test_a_chain_longer_than_the_limit_is_a_clear_400(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway(NativeUpstream(), max_conversation_turns=2) as gw:
        previous = None
        for text in ("one", "two", "three", "four"):
            made = await gw.responses(model="g", input=text, previous_response_id=previous)
            previous = made.id
        assert previous is not None
        with pytest.raises(InvalidRequestError) as info:
            await gw.list_input_items(previous)
        assert (info.value.code, info.value.param) == (
            "conversation_too_long",
            "previous_response_id",
        )
        assert "max_conversation_turns" in info.value.message


async def test_leaving_a_stream_while_the_pipeline_waits_to_deliver_is_a_clean_cancel(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the caller's channel closed before the request was cancelled, so the sink,
    blocked handing over the next batch, died of BrokenResourceError and the response was
    logged as an internal error and recorded failed."""
    upstream = NativeUpstream()  # no pacing: batches queue up behind the caller
    async with gateway(upstream) as gw:
        async with gw.stream(model="g", input="hi") as events:
            async for _ in events:
                await trio.testing.wait_all_tasks_blocked()  # the sink is blocked on send
                break
        [log] = await gw.spend_logs()
    assert log.status == "cancelled"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# -- ends nobody saw coming: early hang-ups, shutdowns, other processes, crashes ----------------


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_a_caller_that_leaves_before_the_first_byte_is_recorded_cancelled(
    autojump_clock: trio.testing.MockClock, streamed: bool
) -> None:
    """Regression: a request cancelled before its upstream answered left no row at all. It
    ends recorded ``cancelled``, under an ID of its own (no upstream named one), with nothing
    owed; GET finds it."""
    upstream = NativeUpstream(first_byte_delay=30.0)
    async with gateway(upstream) as gw:
        with trio.move_on_after(1):
            if streamed:
                async with gw.stream(model="g", input="hello"):
                    pass
            else:
                await gw.responses(model="g", input="hello")
        [log] = await gw.spend_logs()
        assert (log.status, log.model, log.input_tokens, log.output_tokens, log.cost) == (
            "cancelled",
            "g",
            0,
            0,
            0.0,
        )
        got = await gw.get_response(log.response_id)
        assert (got.status, got.output, got.error) == (ResponseStatus.CANCELLED, [], None)
        sdk_response(got.to_dict())


async def test_an_interrupted_stream_ends_failed_with_every_event_after_the_last_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server that stops under a stream whose caller is still there (``interrupted`` says
    why): the response is recorded ``failed`` with that error, and ``closing`` holds every
    event after the last one read — the batch in the channel, the one whose hand-over the
    cancellation cut, then the open items closed and one ``response.failed`` — gapless."""
    stop = sluicegate.ServiceUnavailableError("The gateway shut down before this response.")
    upstream = NativeUpstream()  # no pacing: batches queue up behind the caller
    async with gateway(upstream) as gw:
        read: list[Any] = []
        with trio.CancelScope() as outside:
            async with gw.open_stream(
                {"model": "g", "input": "hi"}, interrupted=lambda: stop
            ) as events:
                async for event in events:
                    read.append(event)
                    if event.type == "response.output_text.delta":
                        await trio.testing.wait_all_tasks_blocked()  # the sink is blocked on send
                        outside.cancel()
                        await trio.sleep(1)
        rest = [*events.ready_nowait(), *events.closing]
        numbers = [e.sequence_number for e in read + rest]
        assert numbers == list(range(len(numbers)))
        for event in read + rest:
            sdk_event(event.to_dict())
        assert [e.type for e in read + rest].count("response.failed") == 1
        failed = rest[-1]
        assert isinstance(failed, sluicegate.ResponseEvent) and failed.type == "response.failed"
        error = {"code": "server_error", "message": stop.message}
        assert failed.response.error == error
        # The closing text is every delta that was sent, read or not.
        deltas = "".join(e.delta for e in read + rest if e.type == "response.output_text.delta")
        [message] = failed.response.output
        assert message["status"] == "incomplete"
        assert message["content"][0]["text"] == deltas and deltas
        [log] = await gw.spend_logs()
        assert (log.response_id, log.status, log.estimated) == (failed.response.id, "failed", True)
        stored = await gw.get_response(log.response_id)
        assert (stored.status, stored.error, stored.output) == (
            ResponseStatus.FAILED,
            error,
            failed.response.output,
        )


async def test_a_stream_whose_caller_leaves_is_not_interrupted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``interrupted`` answering None (the caller left) is an ordinary cancel: recorded
    ``cancelled``, nothing to send."""
    upstream = NativeUpstream(delay=1.0)
    async with gateway(upstream) as gw:
        with trio.CancelScope() as outside:
            async with gw.open_stream(
                {"model": "g", "input": "hi"}, interrupted=lambda: None
            ) as events:
                async for event in events:
                    if event.type == "response.output_text.delta":
                        outside.cancel()
        assert events.closing == []
        [log] = await gw.spend_logs()
        assert log.status == "cancelled"


async def test_get_answers_the_stores_status_for_a_response_the_gateway_ended(
    tmp_path: Any,
) -> None:
    """Regression: a foreground stream cut by a crash was ``failed`` in the spend row (crash
    recovery ends it) but ``completed`` on GET, which read the upstream that had finished it.
    A response the store holds as failed or cancelled is answered from the store: GET and the
    spend row show one status."""
    path = str(tmp_path / "crash.db")
    upstream = NativeUpstream(delay=0.01)
    raw_id = "resp_" + "a" * 48
    upstream.made[raw_id] = {**TEXT_BODY, "id": raw_id}  # the upstream finished it
    rid = IdCodec.from_secret("t").encode(provider="openai", deployment_id="dep-a", raw_id=raw_id)
    # What a process killed mid-stream leaves: accepted and routed, never ended, and no live
    # lock (a killed process's lock is free, a closed store's is gone).
    async with open_sqlite_store(path) as store:
        await store.append(
            [
                Accepted(
                    response_id=rid,
                    owner="",
                    model="g",
                    params={},
                    input_items=[],
                    background=False,
                    store=True,
                    metadata={},
                    created_at=1_700_000_000.0,
                ),
                Routed(
                    response_id=rid,
                    deployment_id="dep-a",
                    provider="openai",
                    attempt=0,
                    upstream_id=raw_id,
                ),
            ]
        )
    async with gateway(upstream, path=path) as gw:
        got = await gw.get_response(rid)
        assert (got.status, got.error) == (ResponseStatus.FAILED, RECOVERY_ERROR)
        sdk_response(got.to_dict())
        # A caller that left: cancelled in the spend row and on GET, though the upstream
        # kept the whole response.
        async with gw.stream(model="g", input="hi") as events:
            async for event in events:
                if event.type == "response.output_text.delta":
                    left = event
                    break
        assert (await gw.get_response(rid)).status is ResponseStatus.FAILED
        logs = {log.response_id: log.status for log in await gw.spend_logs()}
        cancelled_id = next(r for r, status in logs.items() if status == "cancelled")
        cancelled = await gw.get_response(cancelled_id)
        assert cancelled.status is ResponseStatus.CANCELLED
        assert cancelled.output_text.startswith(left.delta)  # type: ignore[attr-defined]
        assert logs == {rid: "failed", cancelled_id: "cancelled"}
        assert upstream.calls("GET") == []


async def test_a_cancel_through_another_process_is_what_every_reader_sees_at_once(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a background response cancelled through another worker answered
    ``cancelled``, then GET through the worker running it said ``in_progress`` until that
    worker noticed. The cancel is recorded before it is acknowledged, every reader answers
    the recorded end, and the running worker stops its upstream request soon after, billing
    the usage so far."""
    monkeypatch.setattr(sluicegate._gateway._background, "ENDED_ELSEWHERE_POLL", 0.1)
    path = str(tmp_path / "shared.db")
    upstream = NativeUpstream(delay=0.2)  # 14 frames: 2.8 s unless stopped
    async with (
        gateway(upstream, path=path) as running,
        gateway(upstream, path=path) as other,
    ):
        job = await running.responses(model="g", input="hi", background=True)
        with trio.fail_after(10):
            while not (await running.get_response(job.id)).output_text:  # noqa: ASYNC110
                await trio.sleep(0.02)  # polling its progress, as a client does
        cancelled = await other.cancel_response(job.id)
        assert cancelled.status is ResponseStatus.CANCELLED
        for gw in (running, other):
            assert (await gw.get_response(job.id)).status is ResponseStatus.CANCELLED
        with trio.fail_after(3):
            while running.statistics().background_running:  # noqa: ASYNC110
                await trio.sleep(0.02)  # the other gateway's poll is its own business
        row = await other.store.get(job.id)
        assert row is not None and row.status is ResponseStatus.CANCELLED
        assert row.estimated and row.usage is not None and row.usage["output_tokens"] > 0
        assert (await running.get_response(job.id)).status is ResponseStatus.CANCELLED


async def test_a_run_that_finishes_after_another_process_cancelled_it_keeps_the_cancel(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The other side of that race: the run ends before it notices the cancel. Its own end
    is refused (the acknowledged cancel stands), its usage is billed, its followers see no
    terminal event, and nothing is logged as an error."""
    monkeypatch.setattr(
        sluicegate._gateway._background, "ENDED_ELSEWHERE_POLL", 1000.0
    )  # never looks
    path = str(tmp_path / "shared.db")
    upstream = NativeUpstream(delay=0.02)
    async with (
        gateway(upstream, path=path) as running,
        gateway(upstream, path=path) as other,
        running.stream(model="g", input="hi", background=True) as follower,
    ):
        first = [await anext(aiter(follower))]
        assert isinstance(first[0], sluicegate.ResponseEvent)
        rid = first[0].response.id
        assert (await other.cancel_response(rid)).status is ResponseStatus.CANCELLED
        rest = [event async for event in follower]
        types = [e.type for e in first + rest]
        assert "response.output_text.delta" in types
        assert not {"response.completed", "response.failed"} & set(types)
        with trio.fail_after(5):
            while running.statistics().background_running:  # noqa: ASYNC110
                await trio.sleep(0.02)
        row = await other.store.get(rid)
        assert row is not None and row.status is ResponseStatus.CANCELLED
        assert row.usage is not None and not row.estimated
        assert row.usage["output_tokens"] == TEXT_BODY["usage"]["output_tokens"]
        assert (await running.get_response(rid)).status is ResponseStatus.CANCELLED
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def _fake_config(path: str) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "demo",
                "litellm_params": {"model": "fake/demo", "fake_tokens": 6},
                "model_info": {"id": "fake-demo-1"},
            }
        ],
        "general_settings": {"response_id_secret": "t", "store": {"path": path}},
    }


async def test_responses_of_the_in_process_fake_are_served_by_every_gateway_on_the_store(
    tmp_path: Any,
) -> None:
    """Regression: the built-in fake runs in each gateway's process (each worker, each start),
    and knows only what it made there; GET through another gateway went to its own fake: a
    404. What an in-process fake made is answered from the store (GET, input items, DELETE),
    and ``previous_response_id`` continues it from the stored conversation."""
    config = _fake_config(str(tmp_path / "shared.db"))
    async with (
        sluicegate.open_gateway(config, environ={}) as one,
        sluicegate.open_gateway(config, environ={}) as two,
    ):
        made = await one.responses(model="demo", input="hello")
        assert made.status is ResponseStatus.COMPLETED and made.output_text
        got = await two.get_response(made.id)
        assert got.to_dict() == made.to_dict()
        [item] = (await two.list_input_items(made.id))["data"]
        assert item["content"] == [{"type": "input_text", "text": "hello"}]
        follow = await two.responses(model="demo", input="and then?", previous_response_id=made.id)
        assert follow.status is ResponseStatus.COMPLETED
        assert follow.data["previous_response_id"] == made.id
        async with one.stream(model="demo", input="more", previous_response_id=follow.id) as events:
            third = await events.get_final_response()
        assert third.status is ResponseStatus.COMPLETED
        chain = (await one.list_input_items(third.id, order="asc"))["data"]
        assert [i.get("role") for i in chain] == ["user", "assistant", "user", "assistant", "user"]
        assert (await two.delete_response(made.id))["deleted"] is True
        with pytest.raises(NotFoundError):
            await one.get_response(made.id)
