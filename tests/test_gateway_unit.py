"""The pipeline against a scripted upstream (httpx.MockTransport): retries, deadlines,
parameters, IDs and cost. Timing is exact under autojump_clock."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.lowlevel

import sluicegate
from sluicegate import ResponseEvent, ResponseStatus
from sluicegate.codecs.ids import IdCodec
from sluicegate.errors import (
    InvalidRequestError,
    NotFoundError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from sluicegate.store import SpendFilter

from .conftest import MEMORY_STORE, fixture_bytes
from .mock_upstream import (
    ClosingStream,
    MockUpstream,
    error_step,
    json_step,
    raise_step,
    sse_frames,
    stream_step,
)
from .sdk import sdk_event, sdk_response

TEXT_BODY = orjson.loads(fixture_bytes("openai_text.json"))
TEXT_SSE = fixture_bytes("openai_text.sse")
RAW_ID = TEXT_BODY["id"]
#: The same stream under another upstream ID (an upstream never reuses one; the store refuses).
OTHER_SSE = TEXT_SSE.replace(RAW_ID.encode(), b"resp_" + b"f" * 48)
IDS = IdCodec.from_secret("t")


def config(model: str = "openai/gpt-5.4", **router: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "g",
                "litellm_params": {
                    "model": model,
                    "api_base": "https://upstream.test/v1",
                    "api_key": "sk-unit",
                },
                "model_info": {"id": "dep-a"},
            }
        ],
        "router_settings": {"retry_backoff_jitter": 0.0, "retry_backoff_initial": 0.5, **router},
        "general_settings": {"response_id_secret": "t", "store": MEMORY_STORE},
    }


async def _gateway(upstream: MockUpstream, cfg: dict[str, Any]) -> Any:
    return sluicegate.open_gateway(cfg, transport=upstream.transport(), environ={})


async def _collect(gw: Any, **params: Any) -> list[Any]:
    async with gw.stream(model="g", input="hi", **params) as events:
        return [event async for event in events]


# -- retries -------------------------------------------------------------------------------


async def test_retries_back_off_exponentially(autojump_clock: Any) -> None:
    upstream = MockUpstream([error_step(500), error_step(503), json_step(200, TEXT_BODY)])
    async with await _gateway(upstream, config()) as gw:
        response = await gw.responses(model="g", input="hi")
        assert response.output_text == "Hi there! Ça va?\nParis is 🇫🇷."
        assert gw.statistics().upstream_retries == 2
    assert upstream.times == [0.0, 0.5, 1.5]


async def test_retry_after_is_honoured(autojump_clock: Any) -> None:
    upstream = MockUpstream(
        [
            error_step(429, code="rate_limit_exceeded", headers={"retry-after": "7"}),
            json_step(200, TEXT_BODY),
        ]
    )
    async with await _gateway(upstream, config()) as gw:
        await gw.responses(model="g", input="hi")
    assert upstream.times == [0.0, 7.0]


async def test_retry_after_beyond_the_cap_is_passed_on(autojump_clock: Any) -> None:
    upstream = MockUpstream(
        [
            error_step(
                429,
                "Rate limit reached",
                code="rate_limit_exceeded",
                type="requests",
                headers={"retry-after": "120"},
            )
        ]
    )
    async with await _gateway(upstream, config(max_retry_after=60)) as gw:
        with pytest.raises(UpstreamStatusError) as info:
            await gw.responses(model="g", input="hi")
    err = info.value
    assert (err.status_code, err.code, err.type) == (429, "rate_limit_exceeded", "requests")
    assert err.message == "Rate limit reached" and err.headers["retry-after"] == "120"
    # Recorded failed under an ID of its own, which the error names.
    assert err.headers["x-sluicegate-response-id"].startswith("resp_")
    assert len(upstream.requests) == 1


async def test_retries_stop_after_max_retries(autojump_clock: Any) -> None:
    upstream = MockUpstream(default=error_step(502, "bad gateway upstream"))
    async with await _gateway(upstream, config(num_retries=3)) as gw:
        with pytest.raises(UpstreamStatusError, match="bad gateway upstream") as info:
            await gw.responses(model="g", input="hi")
    assert info.value.status_code == 502
    assert upstream.times == [0.0, 0.5, 1.5, 3.5]


async def test_jitter_stays_within_its_bound(autojump_clock: Any) -> None:
    upstream = MockUpstream([error_step(500), error_step(500), json_step(200, TEXT_BODY)])
    cfg = config(retry_backoff_jitter=0.25)
    async with sluicegate.open_gateway(
        cfg, transport=upstream.transport(), environ={}, rng=random.Random(7)
    ) as gw:
        await gw.responses(model="g", input="hi")
    first, second = upstream.times[1], upstream.times[2] - upstream.times[1]
    assert 0.5 <= first <= 0.75 and 1.0 <= second <= 1.25


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_passed_on_not_retried(status: int) -> None:
    upstream = MockUpstream(
        [
            error_step(
                status,
                "Invalid value for 'temperature'",
                code="invalid_value",
                type="invalid_request_error",
            )
        ]
    )
    async with await _gateway(upstream, config()) as gw:
        with pytest.raises(UpstreamStatusError) as info:
            await gw.responses(model="g", input="hi")
    assert info.value.status_code == status and info.value.code == "invalid_value"
    assert info.value.to_dict()["error"]["message"] == "Invalid value for 'temperature'"
    assert len(upstream.requests) == 1


async def test_connect_errors_and_408_409_are_retried(autojump_clock: Any) -> None:
    upstream = MockUpstream(
        [
            raise_step(httpx.ConnectError("refused")),
            error_step(408),
            error_step(409),
            json_step(200, TEXT_BODY),
        ]
    )
    async with await _gateway(upstream, config(num_retries=3)) as gw:
        await gw.responses(model="g", input="hi")
    assert len(upstream.requests) == 4


async def test_connect_failure_after_retries_is_a_502(autojump_clock: Any) -> None:
    upstream = MockUpstream(default=raise_step(httpx.ConnectError("refused")))
    async with await _gateway(upstream, config(num_retries=1)) as gw:
        with pytest.raises(UpstreamConnectionError) as info:
            await gw.responses(model="g", input="hi")
    assert info.value.status_code == 502 and len(upstream.requests) == 2


# -- deadlines -----------------------------------------------------------------------------


async def test_first_byte_timeout(autojump_clock: Any) -> None:
    upstream = MockUpstream([json_step(200, TEXT_BODY, delay=10)])
    async with await _gateway(upstream, config(first_byte_timeout=2)) as gw:
        with pytest.raises(UpstreamTimeoutError, match="within 2"):
            await gw.responses(model="g", input="hi")
        assert trio.current_time() == 2.0
    assert len(upstream.requests) == 1


async def test_idle_gap_mid_stream_ends_in_response_failed(autojump_clock: Any) -> None:
    frames = sse_frames(TEXT_SSE)
    delays = [0.0] * len(frames)
    delays[6] = 30.0  # silence after five frames
    upstream = MockUpstream([stream_step(frames, delays=delays)])
    async with await _gateway(upstream, config(idle_timeout=5)) as gw:
        events = await _collect(gw)
        assert trio.current_time() == 5.0
    assert [e.type for e in events][-1] == "response.failed"
    failed = events[-1]
    assert "sent nothing for 5" in failed.response.error["message"]
    assert sum(e.type.endswith(("completed", "failed", "incomplete")) for e in events) == 1


async def test_total_timeout_bounds_a_slow_stream(autojump_clock: Any) -> None:
    frames = sse_frames(TEXT_SSE)
    upstream = MockUpstream([stream_step(frames, delays=[1.0] * len(frames))])
    async with await _gateway(upstream, config(timeout=4.5)) as gw:
        events = await _collect(gw)
        assert trio.current_time() == 4.5
    assert events[-1].type == "response.failed"
    assert "total timeout of 4.5" in events[-1].response.error["message"]


async def test_per_call_timeout_overrides_the_configured_one(autojump_clock: Any) -> None:
    upstream = MockUpstream([json_step(200, TEXT_BODY, delay=10)])
    async with await _gateway(upstream, config()) as gw:
        with pytest.raises(UpstreamTimeoutError):
            await gw.responses(model="g", input="hi", timeout=3)
        assert trio.current_time() == 3.0


async def test_slow_consumer_is_backpressure_not_an_idle_timeout(autojump_clock: Any) -> None:
    upstream = MockUpstream([stream_step(sse_frames(TEXT_SSE))])
    async with (
        await _gateway(upstream, config(idle_timeout=1)) as gw,
        gw.stream(model="g", input="hi") as events,
    ):
        seen = []
        async for event in events:
            seen.append(event.type)
            await trio.sleep(10)  # far longer than the idle deadline
    assert seen[-1] == "response.completed"


# -- the request that goes upstream --------------------------------------------------------


async def test_parameters_extra_body_headers_and_query_reach_the_upstream() -> None:
    upstream = MockUpstream([json_step(200, TEXT_BODY)])
    async with await _gateway(upstream, config()) as gw:
        await gw.responses(
            model="g",
            input="hi",
            temperature=0.3,
            metadata={"team": "a"},
            reasoning={"effort": "low"},
            extra_body={"temperature": 0.1, "vendor_x": [1]},
            extra_headers={"X-Trace": "t-1"},
            extra_query={"debug": "1"},
        )
    request = upstream.requests[0]
    assert upstream.body() == {
        "model": "gpt-5.4",
        "input": "hi",
        "temperature": 0.1,
        "metadata": {"team": "a"},
        "reasoning": {"effort": "low"},
        "vendor_x": [1],
    }
    assert request.headers["x-trace"] == "t-1"
    assert request.headers["authorization"] == "Bearer sk-unit"
    assert request.url.params["debug"] == "1"
    assert str(request.url).startswith("https://upstream.test/v1/responses")


async def test_fields_items_parts_and_tools_newer_than_this_code_reach_a_native_upstream() -> None:
    """Forward compatibility: what the gateway does not know is the upstream's to judge."""
    upstream = MockUpstream([json_step(200, TEXT_BODY)])
    newer = {
        "client_metadata": {"originator": "agent-cli", "session": "s-1"},
        "prompt_cache_retention": "24h",
        "context_management": [{"type": "compaction", "compact_threshold": 200000}],
        "tools": [{"type": "namespace", "name": "fs", "tools": [{"type": "function"}]}],
        "input": [
            {"type": "future_item", "payload": {"x": 1}},
            {"role": "user", "content": [{"type": "input_hologram", "data": "..."}]},
        ],
        "custom_param": 7,
    }
    async with await _gateway(upstream, config()) as gw:
        await gw.responses(model="g", **newer)
    assert upstream.body() == {"model": "gpt-5.4", **newer}


async def test_invalid_parameters_never_reach_the_upstream() -> None:
    upstream = MockUpstream()
    async with await _gateway(upstream, config()) as gw:
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="g", input="hi", metadata={"k": "v" * 600})
        assert info.value.param == "metadata"
        with pytest.raises(NotFoundError) as missing:
            await gw.responses(model="no-such-model", input="hi")
        assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert upstream.requests == []


async def test_previous_response_id_goes_upstream_raw_and_comes_back_as_sent() -> None:
    upstream = MockUpstream([json_step(200, TEXT_BODY), json_step(200, TEXT_BODY)])
    async with await _gateway(upstream, config()) as gw:
        first = await gw.responses(model="g", input="hi")
        second = await gw.responses(model="g", input="more", previous_response_id=first.id)
    assert upstream.body(1)["previous_response_id"] == RAW_ID
    assert second.to_dict()["previous_response_id"] == first.id


async def test_forged_previous_response_id_is_404_before_any_upstream_call() -> None:
    upstream = MockUpstream()
    forged = IdCodec.from_secret("not-ours").encode(
        provider="openai", deployment_id="dep-a", raw_id="resp_x"
    )
    async with await _gateway(upstream, config()) as gw:
        with pytest.raises(NotFoundError) as info:
            await gw.responses(model="g", input="hi", previous_response_id=forged)
    assert info.value.status_code == 404 and info.value.code == "previous_response_not_found"
    assert upstream.requests == []


async def test_litellm_previous_response_id_routes_to_its_deployment() -> None:
    upstream = MockUpstream([json_step(200, TEXT_BODY)])
    text = "litellm:custom_llm_provider:openai;model_id:dep-a;response_id:resp_from_litellm"
    litellm_id = "resp_" + base64.b64encode(text.encode()).decode()
    async with await _gateway(upstream, config()) as gw:
        await gw.responses(model="g", input="hi", previous_response_id=litellm_id)
    assert upstream.body()["previous_response_id"] == "resp_from_litellm"


async def test_previous_id_of_a_deployment_no_longer_configured_is_404() -> None:
    upstream = MockUpstream()
    stale = IDS.encode(provider="openai", deployment_id="removed-dep", raw_id="resp_x")
    async with await _gateway(upstream, config()) as gw:
        with pytest.raises(NotFoundError, match="no longer configured"):
            await gw.responses(model="g", input="hi", previous_response_id=stale)


# -- ids, folding, cost --------------------------------------------------------------------


async def test_stream_and_non_stream_fold_to_the_same_response() -> None:
    upstream = MockUpstream([json_step(200, TEXT_BODY), stream_step(sse_frames(OTHER_SSE))])
    async with await _gateway(upstream, config()) as gw:
        plain = await gw.responses(model="g", input="hi")
        async with gw.stream(model="g", input="hi") as events:
            streamed = await events.get_final_response()
    assert plain == streamed.with_changes(id=plain.id)
    usage = {
        **TEXT_BODY["usage"],
        "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
    }
    assert plain.to_dict() == {**TEXT_BODY, "id": plain.id, "usage": usage}
    sdk_response(plain.to_dict())


async def test_one_encoded_id_on_every_response_event_items_raw() -> None:
    upstream = MockUpstream([stream_step(sse_frames(TEXT_SSE))])
    async with await _gateway(upstream, config()) as gw:
        events = await _collect(gw)
    ids = {e.response.id for e in events if isinstance(e, ResponseEvent)}
    assert len(ids) == 1
    (encoded,) = ids
    decoded = IDS.decode(encoded)
    assert (decoded.provider, decoded.deployment_id, decoded.raw_id) == ("openai", "dep-a", RAW_ID)
    items = [e.to_dict()["item"]["id"] for e in events if e.type.startswith("response.output_item")]
    assert items and all(i.startswith("msg_") for i in items)
    for event in events:
        sdk_event(event.to_dict())


async def test_get_delete_go_to_the_deployment_of_the_id_and_sync_cancel_is_a_400() -> None:
    upstream = MockUpstream(
        [
            json_step(200, TEXT_BODY),
            json_step(200, TEXT_BODY),
            json_step(200, {"id": RAW_ID, "object": "response", "deleted": True}),
        ]
    )
    async with await _gateway(upstream, config()) as gw:
        created = await gw.responses(model="g", input="hi")
        got = await gw.get_response(created.id)
        with pytest.raises(InvalidRequestError, match="Cannot cancel a synchronous response"):
            await gw.cancel_response(created.id)
        deleted = await gw.delete_response(created.id)
    assert got.id == created.id
    assert deleted == {"id": created.id, "object": "response", "deleted": True}
    assert [(r.method, r.url.path) for r in upstream.requests[1:]] == [
        ("GET", f"/v1/responses/{RAW_ID}"),
        ("DELETE", f"/v1/responses/{RAW_ID}"),
    ]


async def test_cancel_of_an_unrecorded_litellm_id_goes_to_its_upstream() -> None:
    background = {**TEXT_BODY, "background": True, "status": "cancelled"}
    upstream = MockUpstream([json_step(200, background)])
    litellm = "litellm:custom_llm_provider:openai;model_id:dep-a;response_id:" + RAW_ID
    legacy = "resp_" + base64.b64encode(litellm.encode()).decode()
    async with await _gateway(upstream, config()) as gw:
        cancelled = await gw.cancel_response(legacy)
    assert cancelled.id == legacy and cancelled.status.value == "cancelled"
    assert [(r.method, r.url.path) for r in upstream.requests] == [
        ("POST", f"/v1/responses/{RAW_ID}/cancel")
    ]


@pytest.mark.parametrize("streaming", [False, True])
async def test_cost_is_attached_when_enabled(streaming: bool) -> None:
    cfg = config()
    cfg["general_settings"]["include_cost_in_streaming_usage"] = True
    cfg["model_list"][0]["litellm_params"].update(
        input_cost_per_token=1e-6, output_cost_per_token=4e-6, cache_read_input_token_cost=1e-7
    )
    upstream = MockUpstream([json_step(200, TEXT_BODY), stream_step(sse_frames(OTHER_SSE))])
    async with await _gateway(upstream, cfg) as gw:
        if streaming:
            await gw.responses(model="g", input="warm")  # uses the first step
            events = await _collect(gw)
            response = events[-1].response
        else:
            response = await gw.responses(model="g", input="hi")
    # 81 input of which 64 cached, 1035 output: (17 * 1e-6) + (64 * 1e-7) + (1035 * 4e-6)
    assert response.usage.cost == pytest.approx(17e-6 + 64e-7 + 1035 * 4e-6)
    assert response.to_dict()["usage"]["input_tokens_details"] == {
        "cached_tokens": 64,
        "cache_write_tokens": 0,
    }


async def test_unknown_model_cost_is_null_not_a_crash() -> None:
    cfg = config(model="openai/model-with-no-price")
    cfg["general_settings"]["include_cost_in_streaming_usage"] = True
    upstream = MockUpstream([json_step(200, TEXT_BODY)])
    async with await _gateway(upstream, cfg) as gw:
        response = await gw.responses(model="g", input="hi")
    assert response.to_dict()["usage"]["cost"] is None


async def test_cost_is_not_attached_unless_asked() -> None:
    upstream = MockUpstream([json_step(200, TEXT_BODY)])
    async with await _gateway(upstream, config()) as gw:
        response = await gw.responses(model="g", input="hi")
        assert gw.statistics().cost > 0  # still accounted
    assert "cost" not in response.to_dict()["usage"]


async def test_weighted_routing_follows_the_weights() -> None:
    cfg = config()
    second = {
        "model_name": "g",
        "litellm_params": {
            "model": "openai/gpt-5.4",
            "weight": 3,
            "api_base": "https://other.test/v1",
        },
        "model_info": {"id": "dep-b"},
    }
    cfg["model_list"].append(second)
    upstream = MockUpstream(default=json_step(200, TEXT_BODY))
    async with sluicegate.open_gateway(
        cfg, transport=upstream.transport(), environ={}, rng=random.Random(1)
    ) as gw:
        for _ in range(400):
            await gw.responses(model="g", input="hi")
    to_b = sum(r.url.host == "other.test" for r in upstream.requests)
    assert 260 <= to_b <= 340  # 3:1 -> 300 expected


# -- failures mid-stream -------------------------------------------------------------------


async def test_reset_mid_stream_is_not_retried_and_ends_failed() -> None:
    upstream = MockUpstream([stream_step(sse_frames(TEXT_SSE), fail_after=6)])
    async with await _gateway(upstream, config()) as gw:
        events = await _collect(gw)
    assert len(upstream.requests) == 1
    assert events[-1].type == "response.failed"
    assert events[-1].response.error["code"] == "server_error"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for event in events:
        sdk_event(event.to_dict())


async def test_error_event_mid_stream_passes_through_then_failed() -> None:
    frames = sse_frames(TEXT_SSE)[:6]
    frames.append(
        b'event: error\ndata: {"type":"error","sequence_number":6,'
        b'"code":"rate_limit_exceeded","message":"TPM exceeded","param":null}\n\n'
    )
    upstream = MockUpstream([stream_step(frames)])
    async with await _gateway(upstream, config()) as gw:
        events = await _collect(gw)
    types = [e.type for e in events]
    assert types.index("error") == 6 and types.count("response.failed") == 1
    assert events[-1].type == "response.failed"
    assert any(e.type == "error" for e in events)
    assert events[-1].response.error == {"code": "rate_limit_exceeded", "message": "TPM exceeded"}


async def test_leaving_a_stream_early_cancels_the_upstream_body() -> None:
    closed = trio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            for frame in sse_frames(TEXT_SSE):
                yield frame
                await trio.lowlevel.checkpoint()
            await trio.sleep_forever()
        finally:
            closed.set()

    async def step(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=ClosingStream(body()))

    upstream = MockUpstream([step])
    async with await _gateway(upstream, config()) as gw:
        async with gw.stream(model="g", input="hi") as events:
            async for event in events:
                if event.type == "response.output_text.delta":
                    break
        with trio.fail_after(5):
            await closed.wait()
        assert gw.statistics().requests_in_flight == 0


async def test_callers_own_exceptions_come_out_unwrapped() -> None:
    """Regression: the nurseries behind open_gateway and stream must not wrap the caller's
    exception in an ExceptionGroup."""
    upstream = MockUpstream(default=stream_step(sse_frames(TEXT_SSE)))
    with pytest.raises(KeyError):
        async with (
            await _gateway(upstream, config()) as gw,
            gw.stream(model="g", input="hi") as events,
        ):
            async for _ in events:
                raise KeyError("mine")
    with pytest.raises(NotFoundError):
        async with await _gateway(upstream, config()) as gw:
            await gw.responses(model="missing", input="hi")


async def test_get_sends_include_as_repeated_query_parameters() -> None:
    upstream = MockUpstream([json_step(200, TEXT_BODY), json_step(200, TEXT_BODY)])
    async with await _gateway(upstream, config()) as gw:
        created = await gw.responses(model="g", input="hi")
        await gw.get_response(created.id, include=["reasoning.encrypted_content", "x.y"], timeout=5)
    assert upstream.requests[1].url.params.get_list("include[]") == [
        "reasoning.encrypted_content",
        "x.y",
    ]


async def test_ids_of_a_removed_deployment_are_404_not_rerouted() -> None:
    upstream = MockUpstream()
    stale = IDS.encode(provider="openai", deployment_id="removed-dep", raw_id="resp_x")
    async with await _gateway(upstream, config()) as gw:
        for call in (gw.get_response, gw.delete_response, gw.cancel_response):
            with pytest.raises(NotFoundError):
                await call(stale)
    assert upstream.requests == []


def _two_groups(same_account: bool) -> dict[str, Any]:
    cfg = config()
    other = {
        "model": "openai/gpt-5.4-mini",
        "api_base": "https://upstream.test/v1",
        "api_key": "sk-unit" if same_account else "sk-other-account",
    }
    cfg["model_list"].append(
        {"model_name": "mini", "litellm_params": other, "model_info": {"id": "dep-mini"}}
    )
    return cfg


async def test_switching_groups_mid_conversation_stays_on_the_same_account() -> None:
    upstream = MockUpstream(default=json_step(200, TEXT_BODY))
    async with await _gateway(upstream, _two_groups(same_account=True)) as gw:
        first = await gw.responses(model="g", input="hi")
        await gw.responses(model="mini", input="more", previous_response_id=first.id)
    assert upstream.body()["model"] == "gpt-5.4-mini"
    assert upstream.body()["previous_response_id"] == RAW_ID


async def test_switching_to_another_account_mid_conversation_is_refused() -> None:
    upstream = MockUpstream(default=json_step(200, TEXT_BODY))
    async with await _gateway(upstream, _two_groups(same_account=False)) as gw:
        first = await gw.responses(model="g", input="hi")
        with pytest.raises(InvalidRequestError) as info:
            await gw.responses(model="mini", input="more", previous_response_id=first.id)
    assert info.value.param == "previous_response_id"
    assert len(upstream.requests) == 1  # the refused turn never went upstream


async def test_zero_config_conversations_continue_on_the_environment_account() -> None:
    upstream = MockUpstream(default=json_step(200, TEXT_BODY))
    env = {"OPENAI_API_KEY": "sk-env", "OPENAI_BASE_URL": "https://env.test/v1"}
    zero = {"general_settings": {"store": MEMORY_STORE}}
    async with sluicegate.open_gateway(zero, transport=upstream.transport(), environ=env) as gw:
        first = await gw.responses(model="openai/gpt-5.4", input="hi")
        await gw.responses(model="openai/gpt-5.4-mini", input="more", previous_response_id=first.id)
        await gw.get_response(first.id)
    assert [r.url.host for r in upstream.requests] == ["env.test"] * 3
    assert upstream.body(1)["previous_response_id"] == RAW_ID
    assert upstream.body(1)["model"] == "gpt-5.4-mini"


async def test_zero_config_bare_model_names_reach_their_provider_as_in_litellm() -> None:
    """``gpt-4.1`` or ``o3`` with no configuration is OpenAI's; a bare name the price table
    lists under another provider is that provider's; a configured gateway never guesses."""
    upstream = MockUpstream(default=json_step(200, TEXT_BODY))
    env = {"OPENAI_API_KEY": "sk-env", "OPENAI_BASE_URL": "https://env.test/v1"}
    zero = {"general_settings": {"store": MEMORY_STORE}}
    async with sluicegate.open_gateway(zero, transport=upstream.transport(), environ=env) as gw:
        first = await gw.responses(model="gpt-4.1", input="hi")
        await gw.responses(model="o3", input="more", previous_response_id=first.id)
        await gw.responses(model="computer-use-preview", input="hi")
        router = gw._pipeline.router
        assert router.adhoc_provider("claude-sonnet-4-5") == "anthropic"
        assert router.adhoc_provider("claude-sonnet-4-5-20250929") == "anthropic"
        assert router.adhoc_provider("some-future-model") == "openai"
    assert [r.url.host for r in upstream.requests] == ["env.test"] * 3
    assert [upstream.body(i)["model"] for i in range(3)] == [
        "gpt-4.1",
        "o3",
        "computer-use-preview",
    ]
    assert upstream.body(1)["previous_response_id"] == RAW_ID
    async with await _gateway(upstream, config()) as gw:
        with pytest.raises(NotFoundError) as info:
            await gw.responses(model="gpt-4.1", input="hi")
        assert info.value.code == "model_not_found"


async def test_an_answer_too_deep_to_store_is_still_recorded_and_billed() -> None:
    """Regression: content nested deeper than the encoder goes failed the record after the
    upstream answered: the response ended failed with no usage, so its spend was lost."""
    answer = orjson.loads(fixture_bytes("openai_text.json"))
    deep: Any = "x"
    for _ in range(300):
        deep = {"k": deep}
    answer["output"][0]["deep"] = deep
    raw = json.dumps(answer).encode()  # orjson itself refuses to write it

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=raw, headers={"content-type": "application/json"})

    async with sluicegate.open_gateway(
        config(), transport=httpx.MockTransport(handler), environ={}
    ) as gw:
        response = await gw.responses(model="g", input="hi")
        assert response.status is ResponseStatus.COMPLETED
        assert response.output[0]["deep"] == deep  # the caller gets it all
        (row,) = await gw.store.spend_logs(SpendFilter())
        assert row.status == "completed" and row.cost and row.input_tokens
        stored = await gw.get_response(response.id)
        assert stored.status is ResponseStatus.COMPLETED


async def test_out_of_order_event_mid_read_delivers_what_came_before() -> None:
    """Regression: a protocol violation inside one read must not swallow the events before it."""
    frames = sse_frames(TEXT_SSE)
    created = frames[0]
    # One network read: five good events, then a second response.created (illegal).
    upstream = MockUpstream([stream_step([b"".join(frames[:5]) + created])])
    async with await _gateway(upstream, config()) as gw:
        events = await _collect(gw)
    types = [e.type for e in events]
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-1] == "response.failed" and types.count("response.created") == 1
    assert "twice" in events[-1].response.error["message"]
