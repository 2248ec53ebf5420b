"""Failure drills for the router (``actors/_router.py``, ``actors/_health.py``): deployments
that fail, hang, rate-limit or refuse, and what the caller, the circuit breakers and the store
see.

Each deployment of a drill has its own ``api_base`` host; one :class:`Dispatcher` (an
``httpx.MockTransport``) plays every host with a scripted behaviour (answer, 500, hang, 429
with ``Retry-After``, context-window or content-policy refusal, a stream cut after its first
event) and counts the requests each host got. Time is virtual (``autojump_clock``) and routing
draws come from a seeded ``random.Random``, so every drill is deterministic.

Drilled: retry on another deployment and the breaker's CLOSED → OPEN → HALF_OPEN → probe
cycle; first-byte timeouts; everything down (500s, then 503 with ``Retry-After``); generic,
default, context-window and content-policy fallbacks; 429 ``Retry-After`` cool-downs; no
retry after the first event; strict ``previous_response_id`` affinity; rpm limits with and
without ``limit_wait``; session affinity.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing

import sluicegate
from sluicegate import BreakerState, DeploymentStatistics, ResponseStatus
from sluicegate.errors import (
    RateLimitError,
    ServiceUnavailableError,
    UpstreamStatusError,
)

from .conftest import MEMORY_STORE, fixture_bytes
from .mock_upstream import ClosingStream, sse_frames

TEXT_BODY = orjson.loads(fixture_bytes("openai_text.json"))
TEXT_SSE = fixture_bytes("openai_text.sse")
RAW_ID = TEXT_BODY["id"]
OUTPUT_TEXT = "Hi there! Ça va?\nParis is 🇫🇷."

CONTEXT_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9120 tokens. Please reduce the length of the messages."
)
POLICY_MESSAGE = "Your request was rejected as a result of our safety system."

# -- the dispatcher ------------------------------------------------------------------------

Behaviour = Callable[["Dispatcher", dict[str, Any]], Awaitable[httpx.Response]]


@attrs.define(eq=False)
class Dispatcher:
    """Every upstream host of a drill: routes each request by ``url.host`` to that host's
    behaviour, and counts what each host got. Successful answers carry a fresh upstream ID
    (the event store refuses a second response with the same one)."""

    behaviours: dict[str, Behaviour]
    hits: Counter[str] = attrs.Factory(Counter)
    #: (host, virtual time, request body) of every request, in order.
    log: list[tuple[str, float, dict[str, Any]]] = attrs.Factory(list)
    made: int = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        assert (request.method, request.url.path) == ("POST", "/v1/responses"), request.url
        host = request.url.host
        body = orjson.loads(request.content)
        self.hits[host] += 1
        self.log.append((host, trio.current_time(), body))
        return await self.behaviours[host](self, body)

    def fresh_id(self) -> str:
        self.made += 1
        return f"resp_{self.made:048x}"

    def fresh_frames(self) -> list[bytes]:
        return sse_frames(TEXT_SSE.replace(RAW_ID.encode(), self.fresh_id().encode()))

    def bodies(self, host: str) -> list[dict[str, Any]]:
        return [body for h, _, body in self.log if h == host]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        content=orjson.dumps(body),
        headers={"content-type": "application/json", **(headers or {})},
    )


def _error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    type: str = "server_error",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    error = {"message": message, "type": type, "param": None, "code": code}
    return _json(status, {"error": error}, headers)


def _sse(frames: list[bytes], *, fail_after: int | None = None) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for i, frame in enumerate(frames):
            if fail_after is not None and i == fail_after:
                raise httpx.ReadError("connection reset by peer")
            yield frame

    return httpx.Response(
        200,
        stream=ClosingStream(body()),
        headers={"content-type": "text/event-stream; charset=utf-8"},
    )


async def ok(d: Dispatcher, body: dict[str, Any]) -> httpx.Response:
    """A fresh Responses answer: JSON, or SSE when the request asked for a stream."""
    if body.get("stream"):
        return _sse(d.fresh_frames())
    return _json(200, {**TEXT_BODY, "id": d.fresh_id()})


async def fails_500(d: Dispatcher, body: dict[str, Any]) -> httpx.Response:
    return _error(500, "The server had an error while processing your request.")


async def hangs(d: Dispatcher, body: dict[str, Any]) -> httpx.Response:
    await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


def rate_limited(retry_after: int) -> Behaviour:
    async def behaviour(d: Dispatcher, body: dict[str, Any]) -> httpx.Response:
        return _error(
            429,
            "Rate limit reached for requests",
            code="rate_limit_exceeded",
            type="requests",
            headers={"retry-after": str(retry_after)},
        )

    return behaviour


async def context_too_long(d: Dispatcher, body: dict[str, Any]) -> httpx.Response:
    return _error(
        400, CONTEXT_MESSAGE, code="context_length_exceeded", type="invalid_request_error"
    )


async def policy_violation(d: Dispatcher, body: dict[str, Any]) -> httpx.Response:
    return _error(
        400, POLICY_MESSAGE, code="content_policy_violation", type="invalid_request_error"
    )


def delayed(seconds: float, then: Behaviour) -> Behaviour:
    """``then``, after ``seconds`` of silence (no response headers yet)."""

    async def behaviour(d: Dispatcher, body: dict[str, Any]) -> httpx.Response:
        await trio.sleep(seconds)
        return await then(d, body)

    return behaviour


def script(*steps: Behaviour) -> Behaviour:
    """One step per request, in order; the last one repeats."""
    remaining = list(steps)

    async def behaviour(d: Dispatcher, body: dict[str, Any]) -> httpx.Response:
        step = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return await step(d, body)

    return behaviour


async def breaks_after_first_event(d: Dispatcher, body: dict[str, Any]) -> httpx.Response:
    """A stream whose connection resets right after its first event (``response.created``)."""
    assert body.get("stream"), "this behaviour is for streamed requests"
    return _sse(d.fresh_frames(), fail_after=1)


# -- configuration -------------------------------------------------------------------------


def dep(name: str, group: str = "g", **params: Any) -> dict[str, Any]:
    """Deployment ``dep-<name>`` of ``group`` at ``https://<name>.test/v1``."""
    return {
        "model_name": group,
        "litellm_params": {
            "model": "openai/gpt-5.4",
            "api_base": f"https://{name}.test/v1",
            "api_key": "sk-drill",
            **params,
        },
        "model_info": {"id": f"dep-{name}"},
    }


def config(*deployments: dict[str, Any], **router: Any) -> dict[str, Any]:
    return {
        "model_list": list(deployments),
        "router_settings": {"retry_backoff_jitter": 0.0, **router},
        "general_settings": {"response_id_secret": "drill", "store": MEMORY_STORE},
    }


def gateway(
    dispatcher: Dispatcher, cfg: dict[str, Any], *, seed: int = 7
) -> Any:  # an async context manager of sluicegate.Gateway
    return sluicegate.open_gateway(
        cfg, transport=dispatcher.transport(), environ={}, rng=random.Random(seed)
    )


def stats(gw: sluicegate.Gateway) -> dict[str, DeploymentStatistics]:
    """The router's view of each deployment, by host name (``dep-a`` -> ``a.test``)."""
    return {f"{d.id.removeprefix('dep-')}.test": d for d in gw.statistics().deployments}


async def ask(gw: sluicegate.Gateway, *, stream: bool = False, **params: Any) -> Any:
    """One request; the Response (streamed requests: folded from their events)."""
    params = {"model": "g", "input": "hi", **params}
    if not stream:
        return await gw.responses(**params)
    async with gw.stream(**params) as events:
        return await events.get_final_response()


async def stream_types(gw: sluicegate.Gateway, **params: Any) -> list[Any]:
    params = {"model": "g", "input": "hi", **params}
    async with gw.stream(**params) as events:
        return [event async for event in events]


async def stored_deployment(gw: sluicegate.Gateway, response_id: str) -> str | None:
    row = await gw.store.get(response_id)
    assert row is not None
    return row.deployment_id


# -- 1. a failing deployment is cooled, then probed once --------------------------------------


@pytest.mark.parametrize(
    "strategy", ["simple-shuffle", "least-busy", "latency-based", "usage-based"]
)
async def test_a_failing_deployment_is_routed_around_cooled_and_probed_once(
    autojump_clock: trio.testing.MockClock, strategy: str
) -> None:
    d = Dispatcher({"a.test": ok, "b.test": ok, "c.test": fails_500})
    cfg = config(
        dep("a"),
        dep("b"),
        dep("c"),
        allowed_fails=3,
        cooldown_time=30,
        routing_strategy=strategy,
    )
    async with gateway(d, cfg) as gw:
        hits_of_c_when_opened: int | None = None
        for i in range(30):
            response = await ask(gw, stream=i % 3 == 2)
            assert response.status is ResponseStatus.COMPLETED
            assert response.output_text == OUTPUT_TEXT
            assert await stored_deployment(gw, response.id) in ("dep-a", "dep-b")
            c = stats(gw)["c.test"]
            if c.state is BreakerState.OPEN:
                if hits_of_c_when_opened is None:
                    hits_of_c_when_opened = d.hits["c.test"]
                # Open: nothing more reaches it.
                assert d.hits["c.test"] == hits_of_c_when_opened
        assert hits_of_c_when_opened is not None, "c never opened"
        # More than allowed_fails failures within the minute opened it: the fourth.
        assert hits_of_c_when_opened == 4
        view = stats(gw)
        c = view["c.test"]
        assert c.state is BreakerState.OPEN
        assert (c.requests, c.failures, c.cooldowns) == (4, 4, 1)
        assert 0 < c.cooldown_remaining <= 30
        for host in ("a.test", "b.test"):
            assert view[host].state is BreakerState.CLOSED
            assert view[host].failures == 0
        assert d.hits["a.test"] + d.hits["b.test"] == 30
        assert gw.statistics().deployments_cooling == 1

        # Just before the cool-down ends: still open, still nothing.
        await trio.sleep(c.cooldown_remaining - 0.5)
        for _ in range(10):
            await ask(gw)
        assert stats(gw)["c.test"].state is BreakerState.OPEN
        assert d.hits["c.test"] == 4

        # After it: one probe, which fails and reopens the breaker; nothing else reaches c.
        await trio.sleep(1.0)
        assert stats(gw)["c.test"].state is BreakerState.HALF_OPEN
        for _ in range(20):
            response = await ask(gw)
            assert response.status is ResponseStatus.COMPLETED
        assert d.hits["c.test"] == 5
        c = stats(gw)["c.test"]
        assert (c.state, c.failures, c.cooldowns) == (BreakerState.OPEN, 5, 2)
        assert c.cooldown_remaining == pytest.approx(30, abs=1)


async def test_half_open_lets_exactly_one_probe_through_concurrent_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": ok, "b.test": ok, "c.test": fails_500})
    cfg = config(dep("a"), dep("b"), dep("c"), allowed_fails=0, cooldown_time=10)
    async with gateway(d, cfg) as gw:
        for _ in range(20):
            await ask(gw)
            if d.hits["c.test"]:
                break
        assert d.hits["c.test"] == 1
        assert stats(gw)["c.test"].state is BreakerState.OPEN  # allowed_fails 0: one opens
        await trio.sleep(10)
        # Recovered, but slow: its probe takes a second, while twelve requests arrive at once.
        d.behaviours["c.test"] = delayed(1.0, ok)
        done: list[Any] = []

        async def one(i: int) -> None:
            done.append(await ask(gw, stream=i % 2 == 0))

        before = sum(d.hits.values())
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(one, i)
        assert len(done) == 12
        assert all(r.output_text == OUTPUT_TEXT for r in done)
        assert d.hits["c.test"] == 2  # the failure, and exactly one probe
        assert sum(d.hits.values()) == before + 12
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.1)
        c = stats(gw)["c.test"]
        assert (c.state, c.cooldowns) == (BreakerState.CLOSED, 1)


async def test_a_groups_only_deployment_is_not_cooled_by_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": fails_500})
    async with gateway(d, config(dep("a"), allowed_fails=1, cooldown_time=30)) as gw:
        for _ in range(5):
            with pytest.raises(UpstreamStatusError) as info:
                await ask(gw)
            assert info.value.status_code == 500  # never a 503: there is nowhere else to go
        assert d.hits["a.test"] == 15  # each request: one attempt and num_retries (2) more
        a = stats(gw)["a.test"]
        assert (a.state, a.failures, a.cooldowns) == (BreakerState.CLOSED, 15, 0)
        d.behaviours["a.test"] = ok
        start = trio.current_time()
        assert (await ask(gw)).output_text == OUTPUT_TEXT
        assert trio.current_time() - start < 0.1


async def test_a_groups_only_deployment_waits_out_its_429_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": script(rate_limited(7), ok)})
    async with gateway(d, config(dep("a"))) as gw:
        start = trio.current_time()
        response = await ask(gw)
        assert response.output_text == OUTPUT_TEXT
        assert trio.current_time() - start == pytest.approx(7.0, abs=0.1)
        assert [t - start for _, t, _ in d.log] == pytest.approx([0.0, 7.0], abs=0.1)
        a = stats(gw)["a.test"]
        # Cooled by the Retry-After, probed when it ended, closed by the probe's success.
        assert (a.state, a.failures, a.cooldowns) == (BreakerState.CLOSED, 1, 1)


# -- 2. a hanging deployment costs at most its first-byte timeout ------------------------------


async def test_a_hanging_deployment_costs_at_most_the_first_byte_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": ok, "b.test": ok, "c.test": hangs})
    cfg = config(dep("a"), dep("b"), dep("c"), first_byte_timeout=2, cooldown_time=60)
    async with gateway(d, cfg) as gw:
        elapsed: list[float] = []
        for i in range(24):
            hung_before = d.hits["c.test"]
            start = trio.current_time()
            with trio.fail_after(10):
                response = await ask(gw, stream=i % 2 == 1)
            took = trio.current_time() - start
            elapsed.append(took)
            assert response.status is ResponseStatus.COMPLETED
            assert response.output_text == OUTPUT_TEXT
            if d.hits["c.test"] > hung_before:
                # One hung attempt: exactly its first-byte timeout, then another deployment.
                assert 2.0 <= took <= 2.1
            else:
                assert took < 0.1
        assert max(elapsed) <= 2.1
        assert d.hits["c.test"] == 4  # more than allowed_fails (3): cooled
        c = stats(gw)["c.test"]
        assert (c.state, c.failures) == (BreakerState.OPEN, 4)
        assert sum(t >= 2.0 for t in elapsed) == 4


# -- 3. everything down ----------------------------------------------------------------------


async def test_everything_down_fails_clearly_then_503_and_nothing_hangs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": fails_500, "b.test": fails_500, "c.test": fails_500})
    cfg = config(dep("a"), dep("b"), dep("c"), cooldown_time=20)
    async with gateway(d, cfg) as gw:
        statuses: list[int] = []
        failed_ids: list[str] = []
        for i in range(8):
            with trio.fail_after(30), pytest.raises(sluicegate.SluicegateError) as info:
                await ask(gw, stream=i % 2 == 1)
            error = info.value
            statuses.append(error.status_code)
            failed_ids.append(error.headers["x-sluicegate-response-id"])
            if error.status_code == 500:
                # The upstream's own error, passed on.
                assert isinstance(error, UpstreamStatusError)
                assert error.message == "The server had an error while processing your request."
            else:
                assert isinstance(error, ServiceUnavailableError)
                assert error.code == "no_deployment_available"
                assert "'g'" in error.message and "cooling down" in error.message
                retry_after = int(error.headers["Retry-After"])
                assert 1 <= retry_after <= 20
        # Each request tried all three (num_retries 2): after four each has four failures.
        assert statuses == [500] * 4 + [503] * 4
        assert d.hits == Counter({"a.test": 4, "b.test": 4, "c.test": 4})
        view = stats(gw)
        assert all(s.state is BreakerState.OPEN for s in view.values())
        assert gw.statistics().deployments_cooling == 3
        # Nothing is lost: each request is recorded failed, under the ID its error names.
        logs = await gw.spend_logs()
        assert len(logs) == 8 and {log.status for log in logs} == {"failed"}
        assert {log.response_id for log in logs} == set(failed_ids)


async def test_everything_down_background_responses_are_recorded_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": fails_500, "b.test": fails_500})
    cfg = config(dep("a"), dep("b"), cooldown_time=20, allowed_fails=0)
    async with gateway(d, cfg) as gw:
        queued = await gw.responses(model="g", input="hi", background=True)
        await trio.sleep(5)  # its attempts and back-off take about a second
        row = await gw.store.get(queued.id)
        assert row is not None and row.status is ResponseStatus.FAILED
        assert row.error is not None
        assert row.error["message"] == "The server had an error while processing your request."
        failed = await gw.get_response(queued.id)
        assert failed.status is ResponseStatus.FAILED
        [log] = await gw.spend_logs()
        assert (log.response_id, log.status) == (queued.id, "failed")
        # Both deployments failed it (allowed_fails 0: one failure cools), so both cool now,
        # and a new background request is refused before it starts: recorded failed all the
        # same, under the ID its error names.
        assert d.hits == Counter({"a.test": 1, "b.test": 1})
        assert all(s.state is BreakerState.OPEN for s in stats(gw).values())
        with pytest.raises(ServiceUnavailableError) as info:
            await gw.responses(model="g", input="hi", background=True)
        assert "Retry-After" in info.value.headers
        refused = info.value.headers["x-sluicegate-response-id"]
        logs = {log.response_id: log.status for log in await gw.spend_logs()}
        assert logs == {queued.id: "failed", refused: "failed"}
        assert d.hits == Counter({"a.test": 1, "b.test": 1})


# -- 4. generic and default fallbacks --------------------------------------------------------


async def test_generic_fallbacks_then_default_fallbacks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher(
        {
            "a.test": fails_500,
            "b.test": fails_500,
            "c.test": ok,
            "d.test": fails_500,
            "e.test": ok,
        }
    )
    cfg = config(
        dep("a", "primary"),
        dep("b", "primary"),
        dep("c", "backup"),
        dep("d", "second"),
        dep("e", "spare"),
        fallbacks=[{"primary": ["backup"]}],
        default_fallbacks=["spare"],
    )
    async with gateway(d, cfg) as gw:
        response = await ask(gw, model="primary")
        assert response.output_text == OUTPUT_TEXT
        assert await stored_deployment(gw, response.id) == "dep-c"
        assert d.hits["c.test"] == 1 and d.hits["e.test"] == 0  # its own entry, not the default
        assert d.hits["a.test"] >= 1 and d.hits["b.test"] >= 1  # the group was tried first
        # Nothing was sent to the fallback before the group gave up.
        hosts = [host for host, _, _ in d.log]
        assert hosts[-1] == "c.test" and "c.test" not in hosts[:-1]
        # The backup group got the request under its own name.
        assert d.bodies("c.test")[0]["model"] == "gpt-5.4"

        before = dict(d.hits)
        streamed = await ask(gw, model="second", stream=True)
        assert streamed.output_text == OUTPUT_TEXT
        assert await stored_deployment(gw, streamed.id) == "dep-e"
        assert d.hits["d.test"] > before.get("d.test", 0)
        assert d.hits["e.test"] == 1 and d.hits["c.test"] == 1


async def test_fallback_groups_are_tried_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": fails_500, "b.test": fails_500, "c.test": ok})
    cfg = config(
        dep("a", "primary"),
        dep("b", "backup"),
        dep("c", "last"),
        fallbacks=[{"primary": ["backup", "last"]}],
    )
    async with gateway(d, cfg) as gw:
        response = await ask(gw, model="primary")
        assert await stored_deployment(gw, response.id) == "dep-c"
    hosts = [host for host, _, _ in d.log]
    # primary's attempts, then backup's, then last: each group exhausted before the next.
    assert hosts == ["a.test"] * 3 + ["b.test"] * 3 + ["c.test"]


async def test_a_group_that_is_all_cooling_goes_straight_to_its_fallback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": fails_500, "b.test": fails_500, "c.test": ok})
    cfg = config(
        dep("a", "primary"),
        dep("b", "primary"),
        dep("c", "backup"),
        fallbacks=[{"primary": ["backup"]}],
        allowed_fails=0,
        cooldown_time=30,
    )
    async with gateway(d, cfg) as gw:
        await ask(gw, model="primary")
        assert (d.hits["a.test"], d.hits["b.test"]) == (1, 1)  # one failure each opens both
        assert gw.statistics().deployments_cooling == 2
        start = trio.current_time()
        for _ in range(5):
            response = await ask(gw, model="primary")
            assert await stored_deployment(gw, response.id) == "dep-c"
        assert trio.current_time() - start < 0.1
        assert (d.hits["a.test"], d.hits["b.test"], d.hits["c.test"]) == (1, 1, 6)


# -- 5. context-window fallbacks -------------------------------------------------------------


def _refusal_config(kind: str, with_entry: bool) -> dict[str, Any]:
    chains = {kind: [{"primary": ["big"]}]} if with_entry else {}
    return config(
        dep("a", "primary"),
        dep("b", "backup"),
        dep("c", "big"),
        fallbacks=[{"primary": ["backup"]}],
        **chains,
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_context_window_error_goes_to_the_context_window_fallbacks(
    autojump_clock: trio.testing.MockClock, stream: bool
) -> None:
    d = Dispatcher({"a.test": context_too_long, "b.test": ok, "c.test": ok})
    async with gateway(d, _refusal_config("context_window_fallbacks", True)) as gw:
        response = await ask(gw, model="primary", stream=stream)
        assert response.output_text == OUTPUT_TEXT
        assert await stored_deployment(gw, response.id) == "dep-c"
        assert d.hits == Counter({"a.test": 1, "c.test": 1})  # not the generic backup
        # A refused request says nothing about the deployment's health.
        a = stats(gw)["a.test"]
        assert (a.state, a.failures) == (BreakerState.CLOSED, 0)


async def test_a_context_window_error_without_a_chain_is_the_callers_400(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": context_too_long, "b.test": ok, "c.test": ok})
    async with gateway(d, _refusal_config("context_window_fallbacks", False)) as gw:
        with pytest.raises(UpstreamStatusError) as info:
            await ask(gw, model="primary")
    error = info.value
    assert (error.status_code, error.code) == (400, "context_length_exceeded")
    assert error.message == CONTEXT_MESSAGE
    assert d.hits == Counter({"a.test": 1})  # no retry, no generic fallback


@pytest.mark.parametrize("first_chain_group", ["too_small", "down"])
async def test_a_context_window_chain_is_tried_in_order(
    autojump_clock: trio.testing.MockClock, first_chain_group: str
) -> None:
    """Two context-window fallback groups: the first is too small as well (or down), the
    second fits."""
    big = context_too_long if first_chain_group == "too_small" else fails_500
    d = Dispatcher({"a.test": context_too_long, "c.test": big, "x.test": ok})
    cfg = config(
        dep("a", "primary"),
        dep("c", "big"),
        dep("x", "bigger"),
        context_window_fallbacks=[{"primary": ["big", "bigger"]}],
    )
    async with gateway(d, cfg) as gw:
        response = await ask(gw, model="primary")
        assert await stored_deployment(gw, response.id) == "dep-x"
    assert d.hits["a.test"] == 1 and d.hits["x.test"] == 1
    assert d.hits["c.test"] == (1 if first_chain_group == "too_small" else 3)


# -- 6. content-policy fallbacks -------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_content_policy_error_goes_to_the_content_policy_fallbacks(
    autojump_clock: trio.testing.MockClock, stream: bool
) -> None:
    d = Dispatcher({"a.test": policy_violation, "b.test": ok, "c.test": ok})
    async with gateway(d, _refusal_config("content_policy_fallbacks", True)) as gw:
        response = await ask(gw, model="primary", stream=stream)
        assert response.output_text == OUTPUT_TEXT
        assert await stored_deployment(gw, response.id) == "dep-c"
        assert d.hits == Counter({"a.test": 1, "c.test": 1})
        assert stats(gw)["a.test"].failures == 0


async def test_a_content_policy_error_without_a_chain_is_the_callers_400(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": policy_violation, "b.test": ok, "c.test": ok})
    cfg = _refusal_config("content_policy_fallbacks", False)
    # A context-window chain does not take content-policy refusals.
    cfg["router_settings"]["context_window_fallbacks"] = [{"primary": ["big"]}]
    async with gateway(d, cfg) as gw:
        with pytest.raises(UpstreamStatusError) as info:
            await ask(gw, model="primary")
    error = info.value
    assert (error.status_code, error.code, error.message) == (
        400,
        "content_policy_violation",
        POLICY_MESSAGE,
    )
    assert d.hits == Counter({"a.test": 1})


# -- 7. 429 with Retry-After -----------------------------------------------------------------


async def test_a_429_with_retry_after_cools_that_deployment_for_that_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": rate_limited(7), "b.test": ok})
    async with gateway(d, config(dep("a"), dep("b"))) as gw:
        # Until the router happens to pick a: every request is served at once regardless.
        for _ in range(20):
            start = trio.current_time()
            response = await ask(gw)
            assert response.output_text == OUTPUT_TEXT
            assert trio.current_time() - start < 0.1  # no waiting out the Retry-After
            assert await stored_deployment(gw, response.id) == "dep-b"
            if d.hits["a.test"]:
                break
        assert d.hits["a.test"] == 1
        a = stats(gw)["a.test"]
        assert a.state is BreakerState.OPEN
        assert a.cooldown_remaining == pytest.approx(7, abs=0.1)
        assert stats(gw)["b.test"].state is BreakerState.CLOSED

        opened_at = trio.current_time()
        for _ in range(10):
            await ask(gw)
        assert d.hits["a.test"] == 1
        await trio.sleep(opened_at + 6.9 - trio.current_time())
        assert stats(gw)["a.test"].state is BreakerState.OPEN
        await trio.sleep(0.2)
        assert stats(gw)["a.test"].state is BreakerState.HALF_OPEN

        # Recovered: its probe succeeds and it is back in the rotation.
        d.behaviours["a.test"] = ok
        for _ in range(30):
            await ask(gw)
            if d.hits["a.test"] == 2:
                break
        a = stats(gw)["a.test"]
        assert (a.state, a.requests, a.failures) == (BreakerState.CLOSED, 2, 1)
        before = d.hits["a.test"]
        for _ in range(20):
            await ask(gw)
        assert d.hits["a.test"] > before


# -- 8. no retry after the first event -------------------------------------------------------


async def test_a_stream_broken_after_its_first_event_fails_and_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": breaks_after_first_event, "b.test": ok})
    async with gateway(d, config(dep("a"), dep("b"))) as gw:
        for _ in range(20):
            before = dict(d.hits)
            events = await stream_types(gw)
            if d.hits["a.test"] == before.get("a.test", 0):
                assert events[-1].type == "response.completed"
                continue
            # This one went to a: it ends failed, and b never saw it.
            assert d.hits["b.test"] == before.get("b.test", 0)
            types = [e.type for e in events]
            assert types[0] == "response.created"
            assert types[-1] == "response.failed"
            assert types.count("response.failed") == 1
            assert "response.completed" not in types
            failed = events[-1].response
            assert failed.error is not None and failed.error["code"] == "server_error"
            row = await gw.store.get(failed.id)
            assert row is not None and row.status is ResponseStatus.FAILED
            assert row.deployment_id == "dep-a"
            break
        else:
            pytest.fail("no request went to deployment a")
        assert stats(gw)["a.test"].failures == 1


# -- 9. strict affinity of previous_response_id ----------------------------------------------


async def test_a_native_conversation_stays_on_its_deployment_even_when_it_cools(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": ok, "b.test": ok})
    cfg = config(dep("a"), dep("b"), max_retry_after=5)
    async with gateway(d, cfg) as gw:
        first = await ask(gw)
        home = f"{(await stored_deployment(gw, first.id) or '').removeprefix('dep-')}.test"
        other = "b.test" if home == "a.test" else "a.test"
        raw = d.bodies(home)[-1]
        assert "previous_response_id" not in raw
        other_hits = d.hits[other]

        previous = first.id
        for i in range(6):
            turn = await ask(gw, input=f"turn {i}", previous_response_id=previous, stream=i == 3)
            assert await stored_deployment(gw, turn.id) == f"dep-{home.removesuffix('.test')}"
            previous = turn.id
        assert d.hits[other] == other_hits  # every continuation went home
        assert d.hits[home] == 7
        assert d.bodies(home)[1]["previous_response_id"] == f"resp_{1:048x}"

        # Home rate-limits a continuation for 30 s (longer than max_retry_after): the caller
        # gets the 429, and home cools for 30 s.
        d.behaviours[home] = rate_limited(30)
        with pytest.raises(UpstreamStatusError) as limited:
            await ask(gw, input="more", previous_response_id=previous)
        assert limited.value.status_code == 429
        assert stats(gw)[home].state is BreakerState.OPEN
        assert d.hits[home] == 8

        # Now the continuation cannot go anywhere: only home knows the response.
        for stream in (False, True):
            with pytest.raises(ServiceUnavailableError) as info:
                await ask(gw, input="more", previous_response_id=previous, stream=stream)
            assert info.value.param == "previous_response_id"
            assert info.value.status_code == 503
            assert 1 <= int(info.value.headers["Retry-After"]) <= 30
        assert d.hits[home] == 8
        assert d.hits[other] == other_hits

        # A new conversation is served by the other deployment meanwhile.
        fresh = await ask(gw)
        assert await stored_deployment(gw, fresh.id) == f"dep-{other.removesuffix('.test')}"


# -- 10. rpm limits --------------------------------------------------------------------------


async def test_rpm_limits_refuse_the_fifth_request_without_limit_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": ok, "b.test": ok})
    cfg = config(dep("a", rpm=2), dep("b", rpm=2), limit_wait=0)
    async with gateway(d, cfg) as gw:
        start = trio.current_time()
        for _ in range(4):
            await ask(gw)
        assert trio.current_time() - start < 1.0
        assert d.hits == Counter({"a.test": 2, "b.test": 2})
        with pytest.raises(RateLimitError) as info:
            await ask(gw)
        assert info.value.status_code == 429
        assert "'g'" in info.value.message
        assert 1 <= int(info.value.headers["Retry-After"]) <= 60
        assert d.hits == Counter({"a.test": 2, "b.test": 2})
        assert trio.current_time() - start < 1.0  # refused at once
        view = stats(gw)
        assert [view[h].rpm_used for h in ("a.test", "b.test")] == [2, 2]
        # Not the caller's fault: recorded failed, under the ID the 429 names.
        refused = info.value.headers["x-sluicegate-response-id"]
        failed = [log.response_id for log in await gw.spend_logs() if log.status == "failed"]
        assert failed == [refused]


async def test_rpm_limits_wait_for_room_with_limit_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": ok, "b.test": ok})
    cfg = config(dep("a", rpm=2), dep("b", rpm=2), limit_wait=60)
    async with gateway(d, cfg) as gw:
        start = trio.current_time()
        for _ in range(4):
            await ask(gw)
        assert trio.current_time() - start < 1.0
        response = await ask(gw)
        waited = trio.current_time() - start
        assert response.output_text == OUTPUT_TEXT
        # Served when the minute of the first four rolled over, not before.
        assert 59.0 <= waited <= 61.0
        assert d.log[-1][1] - start >= 59.0
        assert sum(d.hits.values()) == 5


# -- 11. session affinity --------------------------------------------------------------------


async def test_session_affinity_keeps_a_session_on_one_deployment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": ok, "b.test": ok, "c.test": ok})
    cfg = config(dep("a"), dep("b"), dep("c"), session_affinity=True)
    async with gateway(d, cfg, seed=3) as gw:
        for i in range(10):
            await ask(gw, session="s1", stream=i % 4 == 0)
        assert len(d.hits) == 1 and sum(d.hits.values()) == 10
        # The session option is the gateway's: it does not go upstream.
        assert all("session" not in body for _, _, body in d.log)

        by_user: dict[str, set[str]] = {}
        for round_ in range(3):
            for n in range(12):
                start = len(d.log)
                await ask(gw, user=f"user-{n}", input=f"round {round_}")
                by_user.setdefault(f"user-{n}", set()).update(h for h, _, _ in d.log[start:])
        # Each user stays on one deployment; different users spread over several.
        assert all(len(hosts) == 1 for hosts in by_user.values())
        assert len(set().union(*by_user.values())) > 1


async def test_a_session_moves_off_a_failing_deployment_and_stays_moved(
    autojump_clock: trio.testing.MockClock,
) -> None:
    d = Dispatcher({"a.test": ok, "b.test": ok, "c.test": ok})
    cfg = config(dep("a"), dep("b"), dep("c"), session_affinity=True)
    async with gateway(d, cfg, seed=3) as gw:
        await ask(gw, session="s1")
        (home,) = d.hits
        d.behaviours[home] = fails_500
        start = len(d.log)
        for _ in range(6):
            response = await ask(gw, session="s1")
            assert response.output_text == OUTPUT_TEXT
        later = [host for host, _, _ in d.log[start:]]
        # One failed attempt at home, then the session lives on one other deployment.
        assert later[0] == home
        assert len(set(later[1:])) == 1 and home not in later[1:]
        assert len(later) == 7


async def test_without_session_affinity_one_session_spreads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The control of the session drills: the same draws without affinity do not stick."""
    d = Dispatcher({"a.test": ok, "b.test": ok, "c.test": ok})
    async with gateway(d, config(dep("a"), dep("b"), dep("c")), seed=3) as gw:
        for _ in range(10):
            await ask(gw, session="s1")
    assert len(d.hits) > 1
