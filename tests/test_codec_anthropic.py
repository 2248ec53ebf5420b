"""The Anthropic Messages bridge: request mapping and refusals, stream and body translation
(byte fixtures split anywhere, folded by the tracker), errors, and the fake provider."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate._types import StreamEvent
from sluicegate.codecs._bridge import (
    BridgeInput,
    BuiltRequest,
)
from sluicegate.codecs._emitter import (
    BridgeContext,
    seal_reasoning,
)
from sluicegate.codecs._lifecycle import StreamTracker
from sluicegate.codecs.anthropic import (
    CODEC,
    AnthropicBodyDecoder,
    AnthropicStreamDecoder,
    ModelRules,
    rules_for,
)
from sluicegate.config import Deployment, Secret
from sluicegate.errors import (
    ConfigError,
    InvalidRequestError,
    SluicegateError,
    UpstreamProtocolError,
    UpstreamStatusError,
)

from .bridge_fakes import Fault, body_of, mock_transport
from .conformance import chunkings, decode_all
from .conftest import fixture_bytes
from .fake_anthropic import FakeAnthropic
from .sdk import sdk_event, sdk_response

MODEL = "claude-sonnet-4-5"

# --- helpers -----------------------------------------------------------------------------------


def _deployment(model: str = MODEL, **kw: Any) -> Deployment:
    return Deployment(
        id="d1",
        model_name="g",
        provider="anthropic",
        model=model,
        api_base=kw.pop("api_base", "https://api.anthropic.test"),
        api_key=Secret("sk-ant-secret"),
        **kw,
    )


def _user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _build(
    body: dict[str, Any] | None = None,
    items: list[dict[str, Any]] | None = None,
    *,
    model: str = MODEL,
    drop: bool = False,
    stream: bool = False,
    deployment: Deployment | None = None,
    **extra: Any,
) -> BuiltRequest:
    request = BridgeInput(
        body=body or {},
        items=[_user("Hi")] if items is None else items,
        drop_params=drop,
        **extra,
    )
    return CODEC.build_request(
        deployment or _deployment(model), request, stream=stream, created_at=1700000000
    )


def _payload(
    body: dict[str, Any] | None = None, items: list[dict[str, Any]] | None = None, **kw: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = orjson.loads(body_of(_build(body, items, **kw).request))
    return payload


def _refused(
    body: dict[str, Any] | None = None, items: list[dict[str, Any]] | None = None, **kw: Any
) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        _build(body, items, **kw)
    return caught.value


def _context(*, summaries: bool = True, body: dict[str, Any] | None = None) -> BridgeContext:
    return BridgeContext(
        provider="anthropic",
        model=MODEL,
        body=body or {},
        summaries=summaries,
        response_id="resp_fixed",
        created_at=1700000000,
    )


_MINTED = re.compile(r"\b(msg|rs|fc|ctc)_[0-9a-f]{48}\b")


def _normal(event: StreamEvent) -> dict[str, Any]:
    """The event with the emitter's minted item IDs replaced (they differ per decoder)."""
    data: dict[str, Any] = orjson.loads(
        _MINTED.sub(r"\1_*", orjson.dumps(event.to_dict()).decode())
    )
    return data


def _split_invariant(make: Callable[[], Any], data: bytes) -> list[dict[str, Any]]:
    """Like conformance.assert_split_invariant, with minted IDs normalized."""
    expected = [_normal(e) for e in decode_all(make, [data])]
    assert expected
    for name, chunks in chunkings(data):
        assert [_normal(e) for e in decode_all(make, chunks)] == expected, name
    return expected


def _fold(events: Sequence[StreamEvent]) -> dict[str, Any]:
    tracker = StreamTracker()
    tracker.observe_all(events)
    response: dict[str, Any] = orjson.loads(
        _MINTED.sub(r"\1_*", orjson.dumps(tracker.fold().to_dict()).decode())
    )
    return response


def _stream(name: str, context: BridgeContext | None = None) -> list[StreamEvent]:
    decoder = CODEC.stream_decoder(context or _context())
    return decoder.feed(fixture_bytes(name)) + decoder.close()


def _body(name: str, context: BridgeContext | None = None) -> list[StreamEvent]:
    decoder = CODEC.body_decoder(context or _context())
    return decoder.feed(fixture_bytes(name)) + decoder.close()


def _usage(
    input_tokens: int, output_tokens: int, cached: int = 0, written: int = 0, reasoning: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def _state(item: dict[str, Any]) -> dict[str, Any]:
    """What a reasoning item's envelope holds."""
    token = item["encrypted_content"].removeprefix("sg1.")
    state: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return state


# --- the request: shape, roles, content -----------------------------------------------------


def test_request_goes_to_v1_messages_with_anthropic_headers() -> None:
    built = _build({"max_output_tokens": 300}, stream=True)
    request = built.request
    assert request.method == "POST"
    assert request.url == "https://api.anthropic.test/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-secret"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert orjson.loads(body_of(request)) == {
        "model": MODEL,
        "max_tokens": 300,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "stream": True,
    }
    assert built.context.provider == "anthropic" and built.context.model == MODEL
    assert built.context.created_at == 1700000000


def test_no_stream_field_and_default_api_base_without_streaming() -> None:
    built = _build(deployment=_deployment(api_base=None))
    assert built.request.url == "https://api.anthropic.com/v1/messages"
    assert "stream" not in orjson.loads(body_of(built.request))


@pytest.mark.parametrize(
    ("model", "max_tokens"),
    [
        ("claude-sonnet-4-5", 64000),
        ("claude-sonnet-4-5-20250929", 64000),  # a snapshot has its model's rules
        ("claude-opus-4-1", 32000),
        ("claude-3-5-haiku-latest", 8192),
        ("claude-opus-4-6", 128000),
        ("claude-unknown-9", 4096),
    ],
)
def test_max_tokens_defaults_to_the_models_limit(model: str, max_tokens: int) -> None:
    assert _payload(model=model)["max_tokens"] == max_tokens


def test_model_info_overrides_the_table() -> None:
    deployment = _deployment(model_info={"max_output_tokens": 1500, "reasoning": "adaptive"})
    assert rules_for(deployment) == ModelRules(1500, "adaptive", True, True)
    payload = _payload({"reasoning": {"effort": "high"}}, deployment=deployment)
    assert payload["max_tokens"] == 1500
    assert payload["thinking"] == {"type": "adaptive", "display": "omitted"}


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_output_tokens", 0), ("max_output_tokens", True), ("reasoning", "deep")],
)
def test_bad_model_info_override_is_a_config_error_naming_it(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        rules_for(_deployment(model_info={key: value}))
    assert caught.value.path == f"model_info.{key}"


def test_instructions_and_system_messages_are_hoisted_in_order() -> None:
    items = [
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "A"}]},
        _user("Hi"),
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "B"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Yo"}],
        },
        _user("Again"),
    ]
    payload = _payload({"instructions": "Be terse."}, items)
    assert payload["system"] == "Be terse.\n\nA\n\nB"
    assert payload["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Yo"}]},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]


def test_instructions_as_a_list_of_system_messages() -> None:
    body = {"instructions": [{"role": "developer", "content": "Rule one."}]}
    assert _payload(body)["system"] == "Rule one."
    assert _refused({"instructions": [{"role": "user", "content": "x"}]}).param == "instructions[0]"


def test_image_in_a_system_message_is_refused_naming_the_part() -> None:
    image = {"type": "input_image", "image_url": "https://example.com/a.png"}
    items = [{"type": "message", "role": "system", "content": [image]}, _user("Hi")]
    assert _refused(items=items).param == "input[0].content[0]"


def test_consecutive_turns_of_one_role_merge_and_empty_text_is_left_out() -> None:
    items = [
        _user("One"),
        _user("Two"),
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ""}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": "No."}],
        },
    ]
    assert _payload(items=items)["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
    ]


def test_unknown_role_is_refused() -> None:
    items = [{"type": "message", "role": "tool", "content": []}]
    error = _refused(items=items)
    assert (error.param, error.code) == ("input[0].role", "invalid_value")


def test_images_by_https_url_and_data_url() -> None:
    content = [
        {"type": "input_text", "text": "Compare"},
        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "high"},
        {"type": "input_image", "image_url": "data:image/webp;base64,UklGRg=="},
    ]
    payload = _payload(items=[{"type": "message", "role": "user", "content": content}])
    assert payload["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="},
        },
    ]


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        (
            {"type": "input_image", "image_url": "data:image/bmp;base64,Qk0="},
            "input[0].content[0]",
            "unsupported_value",
        ),
        (
            {"type": "input_image", "image_url": "http://example.com/a.png"},
            "input[0].content[0].image_url",
            "unsupported_value",
        ),
        (
            {"type": "input_image", "image_url": "data:image/png,rawbytes"},
            "input[0].content[0].image_url",
            "unsupported_value",
        ),
        (
            {"type": "input_image", "file_id": "file-1"},
            "input[0].content[0]",
            "unsupported_parameter",
        ),
        ({"type": "input_image"}, "input[0].content[0].image_url", "missing_required_parameter"),
        (
            {"type": "input_file", "file_data": "data:text/csv;base64,YSxi"},
            "input[0].content[0]",
            "unsupported_value",
        ),
        (
            {"type": "input_file", "file_data": "JVBERi0=", "filename": "notes.txt"},
            "input[0].content[0]",
            "unsupported_value",
        ),
        (
            {"type": "input_file", "file_id": "file-1"},
            "input[0].content[0]",
            "unsupported_parameter",
        ),
        (
            {"type": "input_file", "file_url": "ftp://example.com/a.pdf"},
            "input[0].content[0].file_url",
            "unsupported_value",
        ),
        ({"type": "input_audio", "data": "..."}, "input[0].content[0]", "unsupported_parameter"),
        ({"type": "input_text", "text": 5}, "input[0].content[0].text", "invalid_type"),
    ],
)
def test_content_anthropic_cannot_take_is_refused_naming_the_part(
    part: dict[str, Any], param: str, code: str
) -> None:
    error = _refused(items=[{"type": "message", "role": "user", "content": [part]}])
    assert (error.param, error.code) == (param, code)
    assert error.status_code == 400


def test_file_id_parts_are_dropped_under_drop_params() -> None:
    content = [{"type": "input_text", "text": "See"}, {"type": "input_image", "file_id": "f"}]
    built = _build(items=[{"type": "message", "role": "user", "content": content}], drop=True)
    assert built.context.dropped == ("input[0].content[1]",)
    assert orjson.loads(body_of(built.request))["messages"][0]["content"] == [
        {"type": "text", "text": "See"}
    ]


def test_pdfs_become_document_blocks() -> None:
    content = [
        {
            "type": "input_file",
            "filename": "a.pdf",
            "file_data": "data:application/pdf;base64,JVBE",
        },
        {"type": "input_file", "filename": "B.PDF", "file_data": "JVBERi0="},
        {"type": "input_file", "file_url": "https://example.com/c.pdf"},
    ]
    payload = _payload(items=[{"type": "message", "role": "user", "content": content}])
    pdf = {"type": "base64", "media_type": "application/pdf"}
    assert payload["messages"][0]["content"] == [
        {"type": "document", "source": {**pdf, "data": "JVBE"}, "title": "a.pdf"},
        {"type": "document", "source": {**pdf, "data": "JVBERi0="}, "title": "B.PDF"},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/c.pdf"}},
    ]


# --- tools ------------------------------------------------------------------------------------

_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather by city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
_TIME = {"type": "function", "name": "get_time", "parameters": None}


def test_function_tools_map_to_input_schema() -> None:
    payload = _payload({"tools": [_WEATHER, _TIME]})
    assert payload["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather by city",
            "input_schema": _WEATHER["parameters"],
            "strict": True,
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert payload["tool_choice"] == {"type": "auto"}


def test_strict_is_left_out_for_models_without_structured_outputs() -> None:
    tools = _payload({"tools": [_WEATHER]}, model="claude-sonnet-4")["tools"]
    assert "strict" not in tools[0]


@pytest.mark.parametrize(
    ("choice", "wire", "names"),
    [
        ("auto", {"type": "auto"}, ["get_weather", "get_time"]),
        ("none", {"type": "none"}, ["get_weather", "get_time"]),
        ("required", {"type": "any"}, ["get_weather", "get_time"]),
        (
            {"type": "function", "name": "get_time"},
            {"type": "tool", "name": "get_time"},
            ["get_weather", "get_time"],
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "get_time"}],
            },
            {"type": "auto"},
            ["get_time"],
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_weather"}],
            },
            {"type": "any"},
            ["get_weather"],
        ),
    ],
)
def test_tool_choice_forms(choice: Any, wire: dict[str, Any], names: list[str]) -> None:
    payload = _payload({"tools": [_WEATHER, _TIME], "tool_choice": choice})
    assert payload["tool_choice"] == wire
    assert [t["name"] for t in payload["tools"]] == names


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", {"type": "any", "disable_parallel_tool_use": True}),
        ("none", {"type": "none"}),
    ],
)
def test_parallel_tool_calls_false_disables_parallel_use(choice: Any, wire: Any) -> None:
    body = {"tools": [_WEATHER], "tool_choice": choice, "parallel_tool_calls": False}
    assert _payload(body)["tool_choice"] == wire


def test_function_calls_and_outputs_group_into_turns() -> None:
    items = [
        _user("Weather in Paris and Tokyo?"),
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "On it."}],
        },
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": ""},
        {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
        _user("Thanks; and then?"),
        {"type": "function_call_output", "call_id": "call_b", "output": ""},
    ]
    assert _payload({"tools": [_WEATHER]}, items)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Tokyo?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "On it."},
                {
                    "type": "tool_use",
                    "id": "call_a",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_b"},
                {"type": "text", "text": "Thanks; and then?"},
            ],
        },
    ]


def test_tool_output_parts_keep_images_and_documents() -> None:
    output = [
        {"type": "input_text", "text": "Chart:"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBO"},
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE"},
    ]
    items = [
        _user("Plot it"),
        {"type": "function_call", "call_id": "c1", "name": "plot", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": output},
    ]
    result = _payload(items=items)["messages"][2]["content"][0]
    assert result == {
        "type": "tool_result",
        "tool_use_id": "c1",
        "content": [
            {"type": "text", "text": "Chart:"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
            },
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            },
        ],
    }


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"},
            "input[1].arguments",
        ),
        (
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"},
            "input[1].arguments",
        ),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[1].call_id"),
        ({"type": "function_call_output", "call_id": "c", "output": 3}, "input[1].output"),
    ],
)
def test_malformed_tool_traffic_is_refused_naming_it(item: dict[str, Any], param: str) -> None:
    assert _refused(items=[_user("x"), item]).param == param


# --- generation controls ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "max_output_tokens", "budget"),
    [
        ("minimal", None, 1024),
        ("low", None, 2048),
        ("medium", None, 8192),
        ("high", None, 24576),
        ("xhigh", None, 32768),
        ("max", 40000, 32768),
        ("high", 4000, 3999),  # budget < max_tokens (Anthropic's Messages reference)
    ],
)
def test_effort_becomes_a_thinking_budget(
    effort: str, max_output_tokens: int | None, budget: int
) -> None:
    body = {"reasoning": {"effort": effort}, "max_output_tokens": max_output_tokens}
    payload = _payload(body)
    assert payload["thinking"] == {"type": "enabled", "budget_tokens": budget, "display": "omitted"}
    assert "output_config" not in payload


def test_summaries_asked_for_keep_the_thinking_text() -> None:
    built = _build({"reasoning": {"effort": "low", "summary": "auto"}})
    assert orjson.loads(body_of(built.request))["thinking"] == {
        "type": "enabled",
        "budget_tokens": 2048,
    }
    assert built.context.summaries


def test_too_few_output_tokens_for_thinking_is_refused_naming_the_cause() -> None:
    error = _refused({"reasoning": {"effort": "low"}, "max_output_tokens": 1024})
    assert (error.param, error.code) == ("max_output_tokens", "unsupported_value")
    small = _deployment(model_info={"max_output_tokens": 1000})
    assert _refused({"reasoning": {"effort": "low"}}, deployment=small).param == "reasoning.effort"


@pytest.mark.parametrize(
    ("effort", "wire"),
    [("minimal", "low"), ("low", "low"), ("medium", "medium"), ("high", "high"), ("max", "max")],
)
def test_effort_on_adaptive_models_is_output_config_effort(effort: str, wire: str) -> None:
    body = {"reasoning": {"effort": effort, "summary": "detailed"}}
    payload = _payload(body, model="claude-opus-4-6")
    assert payload["thinking"] == {"type": "adaptive"}
    assert payload["output_config"] == {"effort": wire}


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-opus-4-6"])
def test_effort_none_disables_thinking(model: str) -> None:
    assert _payload({"reasoning": {"effort": "none"}}, model=model)["thinking"] == {
        "type": "disabled"
    }


def test_no_effort_sends_no_thinking() -> None:
    assert "thinking" not in _payload({"reasoning": {"summary": "auto"}})


def test_effort_on_a_model_without_reasoning_is_refused_or_dropped() -> None:
    body = {"reasoning": {"effort": "high"}}
    error = _refused(body, model="claude-3-5-haiku")
    assert (error.param, error.code) == ("reasoning.effort", "unsupported_parameter")
    built = _build(body, model="claude-3-5-haiku", drop=True)
    assert built.context.dropped == ("reasoning.effort",)
    assert "thinking" not in orjson.loads(body_of(built.request))
    assert "thinking" not in _payload({"reasoning": {"effort": "none"}}, model="claude-3-5-haiku")


@pytest.mark.parametrize(
    ("reasoning", "param"),
    [
        ({"effort": "extreme"}, "reasoning.effort"),
        ({"summary": "verbose"}, "reasoning.summary"),
        ({"effort": "low", "mode": "pro"}, "reasoning.mode"),
    ],
)
def test_bad_reasoning_fields_are_refused(reasoning: dict[str, Any], param: str) -> None:
    assert _refused({"reasoning": reasoning}).param == param


def test_thinking_forbids_forced_tool_choice() -> None:
    for choice in ("required", {"type": "function", "name": "get_weather"}):
        body = {"reasoning": {"effort": "low"}, "tools": [_WEATHER], "tool_choice": choice}
        error = _refused(body, drop=True)  # dropping cannot make this work: always a 400
        assert (error.param, error.code) == ("tool_choice", "unsupported_value")
    body = {"reasoning": {"effort": "low"}, "tools": [_WEATHER], "tool_choice": "auto"}
    assert _payload(body)["tool_choice"] == {"type": "auto"}


def test_thinking_leaves_temperature_out() -> None:
    body: dict[str, Any] = {"reasoning": {"effort": "low"}, "temperature": 1}
    assert "temperature" not in _payload(body)
    body["temperature"] = 0.3
    assert _refused(body).param == "temperature"
    built = _build(body, drop=True)
    assert built.context.dropped == ("temperature",)
    assert "temperature" not in orjson.loads(body_of(built.request))
    body = {"reasoning": {"effort": "low"}, "top_p": 0.5}
    assert _refused(body).param == "top_p"
    assert _payload({"reasoning": {"effort": "low"}, "top_p": 0.97})["top_p"] == 0.97


def test_temperature_above_one_is_refused_even_under_drop_params() -> None:
    error = _refused({"temperature": 1.5}, drop=True)
    assert (error.param, error.code) == ("temperature", "unsupported_value")
    assert _payload({"temperature": 0.7})["temperature"] == 0.7


def test_temperature_and_top_p_together_on_models_that_reject_it() -> None:
    error = _refused({"temperature": 0.5, "top_p": 0.9})
    assert (error.param, error.code) == ("top_p", "unsupported_value")
    # A default value is no choice at all: only the other one goes.
    assert _payload({"temperature": 0.5, "top_p": 1}) == _payload({"temperature": 0.5})
    payload = _payload({"temperature": 1, "top_p": 0.9})
    assert (payload.get("temperature"), payload["top_p"]) == (None, 0.9)
    payload = _payload({"temperature": 0.5, "top_p": 0.9}, model="claude-sonnet-4")
    assert (payload["temperature"], payload["top_p"]) == (0.5, 0.9)


def test_json_schema_becomes_output_config_format() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "a", "schema": schema, "strict": True}
    body = {"text": {"format": fmt, "verbosity": "medium"}, "reasoning": {"effort": "low"}}
    payload = _payload(body, model="claude-opus-4-6")
    assert payload["output_config"] == {
        "effort": "low",
        "format": {"type": "json_schema", "schema": schema},
    }
    assert "output_config" not in _payload({"text": {"format": {"type": "text"}}})
    error = _refused({"text": {"format": fmt}}, model="claude-sonnet-4")
    assert (error.param, error.code) == ("text.format", "unsupported_parameter")
    missing = _refused({"text": {"format": {"type": "json_schema", "name": "a"}}})
    assert missing.param == "text.format.schema"


def test_output_token_limit_and_end_user_and_service_tier() -> None:
    body = {
        "max_output_tokens": 512,
        "safety_identifier": "u-9f2c",
        "user": "legacy",
        "service_tier": "default",
        "metadata": {"k": "v"},
        "prompt_cache_key": "bucket",
        "store": False,
        "max_tool_calls": 3,
    }
    payload = _payload(body)
    assert payload["max_tokens"] == 512
    assert payload["metadata"] == {"user_id": "u-9f2c"}  # the gateway's metadata stays home
    assert payload["service_tier"] == "standard_only"
    assert "prompt_cache_key" not in payload and "store" not in payload
    assert _payload({"user": "legacy", "service_tier": "auto"})["metadata"] == {"user_id": "legacy"}
    assert _payload({"service_tier": "auto"})["service_tier"] == "auto"


def test_extra_body_headers_and_query_are_merged_last() -> None:
    built = _build(
        {"max_output_tokens": 100},
        extra_body={"max_tokens": 7, "top_k": 5},
        extra_headers={"anthropic-beta": "files-api-2025-04-14", "x-api-key": "sk-caller"},
        extra_query={"beta": "true"},
        deployment=_deployment(extra_headers={"x-team": "blue"}),
    )
    payload = orjson.loads(body_of(built.request))
    assert (payload["max_tokens"], payload["top_k"]) == (7, 5)
    assert built.request.headers["anthropic-beta"] == "files-api-2025-04-14"
    assert built.request.headers["x-api-key"] == "sk-caller"
    assert built.request.headers["x-team"] == "blue"
    assert built.request.params == {"beta": "true"}


# docs/bridges.md §10: everything Anthropic cannot take, refused naming it, dropped when asked.
_REFUSED = [
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [_WEATHER, {"type": "mcp", "server_label": "docs"}]}, "tools[1]"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"truncation": "auto"}, "truncation"),
    ({"include": ["file_search_call.results"]}, "include[0]"),
    ({"include": ["reasoning.encrypted_content", "message.output_text.logprobs"]}, "include[1]"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"moderation": {"model": "omni"}}, "moderation"),
    ({"context_management": [{"type": "compaction"}]}, "context_management"),
    ({"prompt_cache_options": {"mode": "explicit"}}, "prompt_cache_options"),
]


@pytest.mark.parametrize(("body", "param"), _REFUSED)
def test_what_anthropic_lacks_is_refused_naming_it(body: dict[str, Any], param: str) -> None:
    error = _refused(body)
    assert (error.status_code, error.param, error.code) == (400, param, "unsupported_parameter")
    assert "drop_params" in error.message


@pytest.mark.parametrize(("body", "param"), _REFUSED)
def test_what_anthropic_lacks_is_dropped_and_listed_under_drop_params(
    body: dict[str, Any], param: str
) -> None:
    built = _build(body, drop=True)
    assert built.context.dropped == (param,)
    payload = orjson.loads(body_of(built.request))
    assert set(payload) <= {"model", "max_tokens", "messages", "tools", "tool_choice"}


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "item_reference", "id": "msg_1"}, "input"),
        ({"type": "local_shell_call", "call_id": "c", "action": {}}, "input[1]"),
        ({"type": "brand_new_item"}, "input[1]"),
        ({"type": "web_search_call", "id": "ws_1", "status": "completed"}, "input[1]"),
    ],
)
def test_input_items_anthropic_cannot_take(item: dict[str, Any], param: str) -> None:
    assert _refused(items=[_user("x"), item]).param == param
    assert _build(items=[_user("x"), item], drop=True).context.dropped == (param,)


# --- reasoning state on input ----------------------------------------------------------------

_THINKING = {"type": "thinking", "thinking": "Plan: check.", "signature": "EqQBsig/+=="}
_REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p=="}


def _reasoning_item(*blocks: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
    token = seal_reasoning("anthropic", model, {"blocks": list(blocks)})
    return {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": token}


def test_reasoning_items_restore_their_blocks_exactly_in_place() -> None:
    items = [
        _user("Go"),
        _reasoning_item(_THINKING),
        _reasoning_item(_REDACTED),
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Ok"}],
        },
        {"type": "function_call", "call_id": "toolu_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "toolu_1", "output": "done"},
    ]
    built = _build({"reasoning": {"effort": "low"}}, items)
    assistant = orjson.loads(body_of(built.request))["messages"][1]
    assert assistant["content"] == [
        _THINKING,
        _REDACTED,
        {"type": "text", "text": "Ok"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    ]
    # Byte for byte: the blocks are in the request exactly as Anthropic sent them.
    assert orjson.dumps(_THINKING) in body_of(built.request)


def test_reasoning_items_not_ours_for_this_model_are_dropped() -> None:
    items = [
        _user("Go"),
        _reasoning_item(_THINKING, model="claude-opus-4-6"),  # another model's signature
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAAB..."},
        {"type": "reasoning", "id": "rs_3", "summary": [{"type": "summary_text", "text": "t"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Ok"}],
        },
    ]
    assert _payload(items=items)["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Ok"}],
    }


def test_thinking_without_an_answer_after_it_is_not_replayed() -> None:
    """Regression: thinking cut off before its answer must not join a later assistant turn."""
    answer = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "A"}],
    }
    items = [_user("Go"), _reasoning_item(_THINKING), _user("Again"), answer]
    go_again = [{"type": "text", "text": "Go"}, {"type": "text", "text": "Again"}]
    assert _payload(items=items)["messages"] == [
        {"role": "user", "content": go_again},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
    ]


def test_an_answer_replayed_gives_back_anthropics_content_blocks() -> None:
    """What the gateway answered (decoded from the stream) goes back as the very blocks."""
    response = _fold(_stream("anthropic_thinking_tools.sse", _context(summaries=False)))
    original = orjson.loads(fixture_bytes("anthropic_thinking_tools.json"))["content"]
    output = [{k: v for k, v in item.items() if k != "id"} for item in response["output"]]
    items = [_user("Find"), *output]
    items.append({"type": "function_call_output", "call_id": "toolu_01Srch", "output": "3 hits"})
    messages = _payload({"reasoning": {"effort": "medium"}}, items)["messages"]
    assert messages[1] == {"role": "assistant", "content": original}


_TEXT = st.text(st.characters(exclude_categories=["Cs"]))  # JSON has no lone surrogates
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT,
    lambda inner: st.lists(inner) | st.dictionaries(_TEXT, inner),
)


@given(
    thinking=_TEXT,
    signature=_TEXT.filter(bool),
    arguments=st.dictionaries(_TEXT, _JSON),
)
def test_reasoning_state_and_arguments_round_trip(
    thinking: str, signature: str, arguments: dict[str, Any]
) -> None:
    """Any thinking block and tool input, decoded and replayed, is Anthropic's block again."""
    content = [
        {"type": "thinking", "thinking": thinking, "signature": signature},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": arguments},
    ]
    message = {"type": "message", "content": content, "stop_reason": "tool_use", "usage": {}}
    decoder = AnthropicBodyDecoder(_context())
    decoder.feed(orjson.dumps(message))
    output = _fold(decoder.close())["output"]
    assert json.loads(output[1]["arguments"]) == arguments
    items = [
        _user("x"),
        *output,
        {"type": "function_call_output", "call_id": "toolu_1", "output": "ok"},
    ]
    assert _payload(items=items)["messages"][1]["content"] == content


# --- the stream -------------------------------------------------------------------------------

_TEXT_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
_START = ["response.created", "response.in_progress"]


def _message(text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": "msg_*",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": "fc_*",
        "type": "function_call",
        "status": "completed",
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


_SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds/3Ka+Q=="
_THOUGHT = "The user wants a greeting.\n\nKeep it short."

# fixture -> (event types, output items, usage, status, incomplete reason)
_STREAMS: dict[str, tuple[list[str], list[dict[str, Any]], dict[str, Any], str, str | None]] = {
    "anthropic_text.sse": (
        [*_START, *_TEXT_EVENTS, "response.completed"],
        [_message("Hi there! Ça va?\nParis is 🇫🇷.")],
        _usage(12 + 100 + 2048, 15, cached=2048, written=100),
        "completed",
        None,
    ),
    "anthropic_tool_calls.sse": (
        [
            *_START,
            *_TEXT_EVENTS,
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ],
        [
            _message("I'll check both cities."),
            _call("toolu_01NR", "get_weather", '{"location": "Paris"}'),
            _call("toolu_01XY", "get_weather", '{"location": "Tōkyō"}'),
            _call("toolu_01ZZ", "get_time", "{}"),
        ],
        _usage(377, 89),
        "completed",
        None,
    ),
    "anthropic_thinking.sse": (
        [
            *_START,
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            *[t for t in _TEXT_EVENTS if t != "response.output_text.delta"][:2],
            "response.output_text.delta",
            *_TEXT_EVENTS[4:],
            "response.completed",
        ],
        [
            {
                "id": "rs_*",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": _THOUGHT}],
                "encrypted_content": seal_reasoning(
                    "anthropic",
                    MODEL,
                    {
                        "blocks": [
                            {"type": "thinking", "thinking": _THOUGHT, "signature": _SIGNATURE}
                        ]
                    },
                ),
            },
            _message("Hello!"),
        ],
        _usage(40, 52, reasoning=38),
        "completed",
        None,
    ),
    "anthropic_thinking_tools.sse": (
        [
            *_START,
            "response.output_item.added",
            "response.output_item.done",
            "response.output_item.added",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ],
        [
            {
                "id": "rs_*",
                "type": "reasoning",
                "summary": [],
                "encrypted_content": seal_reasoning(
                    "anthropic",
                    MODEL,
                    {
                        "blocks": [
                            {
                                "type": "thinking",
                                "thinking": "",
                                "signature": "ErUBCkYIBxgCIkB3omitted0sig",
                            }
                        ]
                    },
                ),
            },
            {
                "id": "rs_*",
                "type": "reasoning",
                "summary": [],
                "encrypted_content": seal_reasoning(
                    "anthropic",
                    MODEL,
                    {
                        "blocks": [
                            {
                                "type": "redacted_thinking",
                                "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAF"
                                "Ba8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj2pcaDUFw==",
                            }
                        ]
                    },
                ),
            },
            _call("toolu_01Srch", "search", '{"query": "sluice gates", "limit": 3}'),
        ],
        _usage(210, 140, reasoning=120),
        "completed",
        None,
    ),
    "anthropic_refusal.sse": (
        [*_START, *_TEXT_EVENTS[:3], *_TEXT_EVENTS[4:], "response.incomplete"],
        [_message("Here is how", status="incomplete")],
        _usage(25, 3),
        "incomplete",
        "content_filter",
    ),
    "anthropic_max_tokens.sse": (
        [*_START, *_TEXT_EVENTS, "response.incomplete"],
        [_message("Once upon a time", status="incomplete")],
        _usage(9, 4),
        "incomplete",
        "max_output_tokens",
    ),
}


@pytest.mark.parametrize("name", sorted(_STREAMS))
def test_stream_fixture_translates_the_same_however_split(name: str) -> None:
    context = _context()
    events = _split_invariant(lambda: CODEC.stream_decoder(context), fixture_bytes(name))
    types, _, _, _, _ = _STREAMS[name]
    assert [e["type"] for e in events] == types
    assert [e["sequence_number"] for e in events] == list(range(len(types)))


@pytest.mark.parametrize("name", sorted(_STREAMS))
def test_stream_fixture_folds_into_the_response(name: str) -> None:
    _, output, usage, status, reason = _STREAMS[name]
    response = _fold(_stream(name))
    assert response["output"] == output
    assert response["usage"] == usage
    assert response["status"] == status
    assert response["incomplete_details"] == (None if reason is None else {"reason": reason})
    assert response["completed_at"] == (1700000000 if status == "completed" else None)
    assert (response["id"], response["model"]) == ("resp_fixed", MODEL)


@pytest.mark.parametrize("name", sorted(_STREAMS))
def test_crlf_framing_translates_the_same(name: str) -> None:
    data = fixture_bytes(name)
    crlf = data.replace(b"\n", b"\r\n")
    assert [_normal(e) for e in decode_all(lambda: CODEC.stream_decoder(_context()), [crlf])] == [
        _normal(e) for e in decode_all(lambda: CODEC.stream_decoder(_context()), [data])
    ]


def test_without_summaries_the_reasoning_item_carries_only_the_state() -> None:
    events = _stream("anthropic_thinking.sse", _context(summaries=False))
    assert not any("reasoning_summary" in e.type for e in events)
    reasoning = _fold(events)["output"][0]
    assert reasoning["summary"] == []
    assert _state(reasoning)["s"] == {
        "blocks": [{"type": "thinking", "thinking": _THOUGHT, "signature": _SIGNATURE}]
    }


def _decode_until_error(
    make: Callable[[], Any], chunks: Sequence[bytes]
) -> tuple[list[dict[str, Any]], SluicegateError]:
    decoder = make()
    events: list[StreamEvent] = []
    try:
        for chunk in chunks:
            events += decoder.feed(chunk)
        events += decoder.close()
    except SluicegateError as exc:
        return [_normal(e) for e in events], exc
    raise AssertionError("the stream decoded without an error")


def test_overloaded_error_mid_stream_fails_the_response_with_503_however_split() -> None:
    data = fixture_bytes("anthropic_overloaded.sse")
    context = _context()
    expected, error = _decode_until_error(lambda: CODEC.stream_decoder(context), [data])
    for name, chunks in chunkings(data):
        got, again = _decode_until_error(lambda: CODEC.stream_decoder(context), chunks)
        assert (got, type(again), again.status_code) == (expected, type(error), 503), name
    assert isinstance(error, UpstreamStatusError)
    assert (error.status_code, error.code, error.retryable) == (503, "server_error", True)
    assert [e["type"] for e in expected] == [
        *_START,
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    tracker = StreamTracker()
    tracker.observe_all(_stream_events_before_error(data, context))
    failed = tracker.fail(error)[-1]
    assert failed.type == "response.failed"
    response = tracker.fold().to_dict()
    assert response["status"] == "failed"
    assert response["error"] == {"code": "server_error", "message": "Anthropic: Overloaded"}
    assert response["output"][0]["content"][0]["text"] == "Partial answer"


def _stream_events_before_error(data: bytes, context: BridgeContext) -> list[StreamEvent]:
    decoder = CODEC.stream_decoder(context)
    events = decoder.feed(data)
    with pytest.raises(UpstreamStatusError):
        decoder.close()
    return events


def _frames(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


_MESSAGE_START = {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}


def test_unsigned_thinking_is_shown_but_keeps_no_state() -> None:
    """A thinking block without a signature (cut off) cannot be replayed: no envelope."""
    start = {"type": "thinking", "thinking": "", "signature": ""}
    thought = {"type": "thinking_delta", "thinking": "Hm"}
    cut = {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {}}
    frames = _frames(
        _MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": start},
        {"type": "content_block_delta", "index": 0, "delta": thought},
        {"type": "content_block_stop", "index": 0},
        cut,
        {"type": "message_stop"},
    )
    decoder = AnthropicStreamDecoder(_context())
    response = _fold(decoder.feed(frames) + decoder.close())
    assert response["output"] == [
        {"id": "rs_*", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Hm"}]}
    ]
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize(
    ("error_type", "status", "code"),
    [
        ("rate_limit_error", 429, "rate_limit_exceeded"),
        ("api_error", 500, "server_error"),
        ("invalid_request_error", 400, None),
        ("brand_new_error", 500, "server_error"),
    ],
)
def test_error_events_map_by_type(error_type: str, status: int, code: str | None) -> None:
    decoder = AnthropicStreamDecoder(_context())
    error = {"type": "error", "error": {"type": error_type, "message": "m"}}
    with pytest.raises(UpstreamStatusError) as caught:
        decoder.feed(_frames(error))  # first thing in the stream: raised at once
    assert (caught.value.status_code, caught.value.code) == (status, code)


def test_pause_turn_fails_the_response() -> None:
    decoder = AnthropicStreamDecoder(_context())
    delta = {"type": "message_delta", "delta": {"stop_reason": "pause_turn"}, "usage": {}}
    events = decoder.feed(_frames(_MESSAGE_START, delta, {"type": "message_stop"}))
    assert [e.type for e in events] == _START
    with pytest.raises(UpstreamStatusError) as caught:
        decoder.close()
    assert (caught.value.status_code, caught.value.code) == (502, "server_error")
    assert "pause_turn" in caught.value.message


def test_unknown_events_and_deltas_are_ignored_and_server_blocks_refused() -> None:
    text = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    frames = _frames(
        _MESSAGE_START,
        {"type": "future_event", "x": 1},
        text,
        {"type": "content_block_delta", "index": 0, "delta": {"type": "future_delta"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 1},
        },
        {"type": "message_stop"},
    )
    decoder = AnthropicStreamDecoder(_context())
    assert _fold(decoder.feed(frames) + decoder.close())["output"] == [_message("ok")]
    server = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    decoder = AnthropicStreamDecoder(_context())
    start = {"type": "content_block_start", "index": 0, "content_block": server}
    decoder.feed(_frames(_MESSAGE_START, start))
    with pytest.raises(UpstreamProtocolError, match="server_tool_use"):
        decoder.close()


def test_a_delta_in_the_wrong_block_is_a_protocol_error() -> None:
    text = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    bad = {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta"}}
    decoder = AnthropicStreamDecoder(_context())
    with pytest.raises(UpstreamProtocolError, match="input_json_delta"):
        decoder.feed(_frames(text, bad))


def test_stream_cut_before_message_stop_is_a_protocol_error() -> None:
    data = fixture_bytes("anthropic_text.sse")
    decoder = CODEC.stream_decoder(_context())
    assert decoder.feed(data[: data.index(b"event: message_delta")])
    with pytest.raises(UpstreamProtocolError, match="ended before"):
        decoder.close()


def test_malformed_data_is_a_protocol_error() -> None:
    decoder = CODEC.stream_decoder(_context())
    with pytest.raises(UpstreamProtocolError, match="malformed SSE data"):
        decoder.feed(b'event: message_start\ndata: {"type":"mess\n\n')


# --- the body ---------------------------------------------------------------------------------


def _comparable(response: dict[str, Any]) -> dict[str, Any]:
    """The folded response, with function arguments parsed (a stream keeps Anthropic's
    spacing, a body is re-encoded compactly)."""
    output = [
        {**item, "arguments": json.loads(item["arguments"])}
        if item["type"] == "function_call"
        else item
        for item in response["output"]
    ]
    return {**response, "output": output}


@pytest.mark.parametrize("name", sorted(_STREAMS))
def test_body_folds_into_the_same_response_as_its_stream(name: str) -> None:
    body_name = name.replace(".sse", ".json")
    context = _context()
    events = _split_invariant(lambda: CODEC.body_decoder(context), fixture_bytes(body_name))
    assert events[0]["type"] == "response.created"
    assert _comparable(_fold(_body(body_name))) == _comparable(_fold(_stream(name)))


def test_body_with_pause_turn_or_an_error_or_no_message_is_refused() -> None:
    message = orjson.loads(fixture_bytes("anthropic_text.json"))
    decoder = AnthropicBodyDecoder(_context())
    decoder.feed(orjson.dumps({**message, "stop_reason": "pause_turn"}))
    with pytest.raises(UpstreamStatusError, match="pause_turn"):
        decoder.close()
    decoder = AnthropicBodyDecoder(_context())
    decoder.feed(b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    with pytest.raises(UpstreamStatusError) as caught:
        decoder.close()
    assert caught.value.status_code == 503
    decoder = AnthropicBodyDecoder(_context())
    decoder.feed(b"[]")
    with pytest.raises(UpstreamProtocolError, match="not a Message"):
        decoder.close()


# --- custom tools -------------------------------------------------------------------------------

_PATCH = (
    "*** Begin Patch\n*** Update File: app.py\n@@ def greet():\n"
    '-    print("hi")\n+    print("h\u00e9llo \U0001f600\\t")\n*** End Patch\n'
)
_PATCH_TOOL: dict[str, Any] = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
    "format": {
        "type": "grammar",
        "syntax": "regex",
        "definition": "\\*\\*\\* Begin Patch[\\s\\S]*",
    },
}


def test_custom_tools_become_tools_of_one_string_argument() -> None:
    body = {
        "tools": [_PATCH_TOOL, _WEATHER],
        "tool_choice": {"type": "custom", "name": "apply_patch"},
    }
    payload = _payload(body)
    patch = payload["tools"][0]
    described = patch["input_schema"]["properties"]["input"].pop("description")
    assert patch == {
        "name": "apply_patch",
        "description": "Edit files with a patch.",
        "input_schema": {
            "type": "object",
            "properties": {"input": {"type": "string"}},
            "required": ["input"],
            "additionalProperties": False,
        },
    }
    assert "regular expression" in described
    assert described.endswith("\n\\*\\*\\* Begin Patch[\\s\\S]*")
    assert payload["tool_choice"] == {"type": "tool", "name": "apply_patch"}
    allowed = {
        "type": "allowed_tools",
        "mode": "auto",
        "tools": [{"type": "custom", "name": "apply_patch"}],
    }
    payload = _payload({**body, "tool_choice": allowed, "parallel_tool_calls": False})
    assert [t["name"] for t in payload["tools"]] == ["apply_patch"]
    assert payload["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_custom_tool_calls_and_outputs_go_back_as_tool_use_and_tool_result() -> None:
    items = [
        _user("Patch it; and the weather?"),
        {
            "type": "custom_tool_call",
            "id": "ctc_1",
            "status": "completed",
            "call_id": "toolu_p",
            "name": "apply_patch",
            "input": _PATCH,
        },
        {
            "type": "function_call",
            "call_id": "toolu_w",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {
            "type": "custom_tool_call_output",
            "call_id": "toolu_p",
            "output": [{"type": "input_text", "text": "Done."}],
        },
        {"type": "function_call_output", "call_id": "toolu_w", "output": "18C"},
    ]
    messages = _payload({"tools": [_PATCH_TOOL, _WEATHER]}, items)["messages"]
    assert messages[1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_p",
                    "name": "apply_patch",
                    "input": {"input": _PATCH},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_w",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_p",
                    "content": [{"type": "text", "text": "Done."}],
                },
                {"type": "tool_result", "tool_use_id": "toolu_w", "content": "18C"},
            ],
        },
    ]


def _custom_context() -> BridgeContext:
    """The context the codec makes for a request with the custom tool."""
    return _build({"tools": [_PATCH_TOOL, _WEATHER]}).context


def _ctc(call_id: str, name: str, text: str) -> dict[str, Any]:
    return {
        "id": "ctc_*",
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "input": text,
    }


def test_a_custom_tool_call_streams_its_decoded_input_however_split() -> None:
    context = _custom_context()
    data = fixture_bytes("anthropic_custom_tool.sse")
    events = _split_invariant(lambda: CODEC.stream_decoder(context), data)
    assert [e["type"] for e in events] == [
        *_START,
        *_TEXT_EVENTS[:3],
        *_TEXT_EVENTS[4:],
        "response.output_item.added",
        *["response.custom_tool_call_input.delta"] * 4,
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    for event in events:
        sdk_event(event)
    deltas = [e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert "".join(deltas) == _PATCH
    response = _fold(_stream("anthropic_custom_tool.sse", context))
    sdk_response(response)
    assert response["output"] == [
        _message("Patching now."),
        _ctc("toolu_01Pa", "apply_patch", _PATCH),
        _call("toolu_01We", "get_weather", '{"city": "Paris"}'),
    ]
    assert response["usage"] == _usage(410, 61)


def test_a_custom_tool_call_body_folds_into_the_same_response_as_its_stream() -> None:
    context = _custom_context()
    events = _split_invariant(
        lambda: CODEC.body_decoder(context), fixture_bytes("anthropic_custom_tool.json")
    )
    assert events[0]["type"] == "response.created"
    from_body = _comparable(_fold(_body("anthropic_custom_tool.json", context)))
    assert from_body == _comparable(_fold(_stream("anthropic_custom_tool.sse", context)))
    assert from_body["output"][1] == _ctc("toolu_01Pa", "apply_patch", _PATCH)


def test_unknown_top_level_fields_are_refused_by_name_or_dropped_and_never_sent() -> None:
    body = {"client_metadata": {"originator": "cli"}, "fancy_option": 3}
    error = _refused(body, unknown_params=tuple(body))
    assert (error.param, error.code) == ("client_metadata", "unsupported_parameter")
    built = _build(body, drop=True, unknown_params=tuple(body))
    assert built.context.dropped == ("client_metadata", "fancy_option")
    assert set(orjson.loads(body_of(built.request))) == {"model", "max_tokens", "messages"}


# --- errors -----------------------------------------------------------------------------------


def _error_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


@pytest.mark.parametrize(
    ("status", "kind", "message", "ours", "type_", "code"),
    [
        (
            400,
            "invalid_request_error",
            "max_tokens: Field required",
            400,
            "invalid_request_error",
            None,
        ),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (
            401,
            "authentication_error",
            "invalid x-api-key",
            502,
            "server_error",
            "upstream_authentication_error",
        ),
        (
            402,
            "billing_error",
            "credit balance too low",
            429,
            "rate_limit_error",
            "insufficient_quota",
        ),
        (
            403,
            "permission_error",
            "no access",
            502,
            "server_error",
            "upstream_authentication_error",
        ),
        (
            404,
            "not_found_error",
            "model: claude-x",
            404,
            "invalid_request_error",
            "model_not_found",
        ),
        (
            413,
            "request_too_large",
            "Request exceeds 32 MB",
            413,
            "invalid_request_error",
            "request_too_large",
        ),
        (
            429,
            "rate_limit_error",
            "Number of requests exceeded",
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        (500, "api_error", "Internal server error", 500, "server_error", "server_error"),
        (504, "timeout_error", "Request timed out", 504, "server_error", "server_error"),
        (529, "overloaded_error", "Overloaded", 503, "server_error", "server_error"),
        (422, "invalid_request_error", "unprocessable", 400, "invalid_request_error", None),
        (599, "api_error", "odd", 502, "server_error", "server_error"),
    ],
)
def test_parse_error_maps_each_status(
    status: int, kind: str, message: str, ours: int, type_: str, code: str | None
) -> None:
    error = CODEC.parse_error(status, {}, _error_body(kind, message), now=0.0)
    assert (error.status_code, error.type, error.code) == (ours, type_, code)
    assert error.message == f"Anthropic: {message}"
    # A rejected deployment key does not fix itself in a retry of the same deployment.
    refused_key = code == "upstream_authentication_error"
    assert error.retryable == (code == "rate_limit_exceeded" or (ours >= 500 and not refused_key))


@pytest.mark.parametrize(("status", "ours"), [(429, 429), (529, 503)])
def test_retry_after_is_kept_and_forwarded(status: int, ours: int) -> None:
    body = _error_body("rate_limit_error", "slow down")
    error = CODEC.parse_error(status, {"retry-after": "7"}, body, now=0.0)
    assert (error.status_code, error.retry_after, error.headers) == (
        ours,
        7.0,
        {"retry-after": "7"},
    )
    assert CODEC.parse_error(400, {"retry-after": "7"}, body, now=0.0).headers == {}


def test_parse_error_without_a_json_body_shows_the_text() -> None:
    error = CODEC.parse_error(502, {}, b"<html>Bad Gateway</html>", now=0.0)
    assert error.status_code == 502
    assert error.message == "Anthropic: answered HTTP 502: <html>Bad Gateway</html>"


# --- the fake ---------------------------------------------------------------------------------


def _ask(
    fake: FakeAnthropic,
    items: list[dict[str, Any]],
    body: dict[str, Any] | None = None,
    *,
    stream: bool = True,
) -> dict[str, Any]:
    """One request through the codec and the fake; the folded Response."""
    built = _build(body or {}, items, stream=stream, deployment=_deployment(api_base="http://fake"))
    request = built.request
    reply = fake.handle(
        request.method,
        request.url.removeprefix("http://fake"),
        dict(request.headers),
        body_of(request),
    )
    if reply.status != 200:
        raise CODEC.parse_error(reply.status, reply.headers, b"".join(reply.chunks), now=0.0)
    make = CODEC.stream_decoder if stream else CODEC.body_decoder
    return _fold(decode_all(lambda: make(built.context), reply.chunks))


def test_fake_says_in_one_delta_per_word_with_word_usage() -> None:
    fake = FakeAnthropic()
    response = _ask(fake, [_user("say: hello big world")], {"instructions": "be nice"})
    assert response["output"] == [_message("hello big world")]
    assert response["usage"] == _usage(2 + 4, 3)
    assert fake.paths == ["/v1/messages"]
    assert fake.headers[0]["x-api-key"] == "sk-ant-secret"
    assert fake.requests[0]["stream"] is True
    assert _ask(fake, [_user("say: hello big world")], stream=False)["output"] == [
        _message("hello big world")
    ]


def test_fake_thinks_calls_and_checks_replayed_signatures() -> None:
    fake = FakeAnthropic()
    body = {"reasoning": {"effort": "low", "summary": "auto"}, "tools": [_WEATHER, _TIME]}
    first = [_user('think: plan it | call: get_weather {"city": "Paris"}; get_time {}')]
    response = _ask(fake, first, body)
    reasoning, weather, clock = response["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "plan it"}]
    assert (weather["name"], json.loads(weather["arguments"])) == ("get_weather", {"city": "Paris"})
    assert (clock["name"], clock["arguments"]) == ("get_time", "{}")
    assert response["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    outputs = [
        {"type": "function_call_output", "call_id": c["call_id"], "output": "ok"}
        for c in (weather, clock)
    ]
    replay = [*first, *response["output"], *outputs, _user("say: done")]
    assert _ask(fake, replay, body)["output"] == [_message("done")]
    # Without the reasoning item the tool loop lacks its thinking: Anthropic's 400.
    with pytest.raises(UpstreamStatusError, match="must start with a thinking block"):
        _ask(fake, [*first, weather, clock, *outputs], body)
    # A signature the fake did not issue (or on other text) is refused.
    forged = {
        **reasoning,
        "encrypted_content": seal_reasoning(
            "anthropic",
            MODEL,
            {
                "blocks": [
                    {
                        "type": "thinking",
                        "thinking": "other plan",
                        "signature": _state(reasoning)["s"]["blocks"][0]["signature"],
                    }
                ]
            },
        ),
    }
    with pytest.raises(UpstreamStatusError, match="Invalid `signature`"):
        _ask(fake, [*first, forged, weather, clock, *outputs], body)


def test_fake_omits_thinking_text_when_asked_and_still_signs() -> None:
    fake = FakeAnthropic()
    response = _ask(fake, [_user("think: secret plan | say: hi")], {"reasoning": {"effort": "low"}})
    reasoning = response["output"][0]
    assert reasoning["summary"] == []
    block = _state(reasoning)["s"]["blocks"][0]
    assert block["thinking"] == "" and block["signature"]
    assert response["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}


@pytest.mark.parametrize(
    ("text", "status", "reason"),
    [
        ("long: and on and on", "incomplete", "max_output_tokens"),
        ("filter:", "incomplete", "content_filter"),
    ],
)
def test_fake_ends_short(text: str, status: str, reason: str) -> None:
    response = _ask(FakeAnthropic(), [_user(text)])
    assert (response["status"], response["incomplete_details"]) == (status, {"reason": reason})


def test_fake_answers_json_only_when_asked_the_anthropic_way() -> None:
    schema = {"type": "json_schema", "name": "a", "schema": {"type": "object"}}
    response = _ask(FakeAnthropic(), [_user("json:")], {"text": {"format": schema}})
    assert response["output"] == [_message('{"answer": 42}')]
    with pytest.raises(UpstreamStatusError) as caught:
        _ask(FakeAnthropic(), [_user("json:")])
    assert caught.value.status_code == 400


def test_fake_fails_mid_stream_with_overloaded() -> None:
    fake = FakeAnthropic()
    built = _build({}, [_user("fail: half an")], stream=True)
    request = built.request
    reply = fake.handle("POST", "/v1/messages", dict(request.headers), body_of(request))
    assert reply.status == 200
    events, error = _decode_until_error(lambda: CODEC.stream_decoder(built.context), reply.chunks)
    assert "response.output_text.delta" in [e["type"] for e in events]
    assert isinstance(error, UpstreamStatusError) and error.status_code == 503
    reply = fake.handle(
        "POST",
        "/v1/messages",
        dict(request.headers),
        orjson.dumps({**orjson.loads(body_of(request)), "stream": False}),
    )
    assert reply.status == 529


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"max_tokens": None}, 400, "max_tokens: Field required"),
        ({"temperature": 1.5}, 400, "temperature"),
        ({"temperature": 0.5, "top_p": 0.9}, 400, "cannot both be specified"),
        ({"messages": [{"role": "system", "content": "x"}]}, 400, "messages.0.role"),
        ({"metadata": {"session": "s"}}, 400, "metadata.session: Extra inputs"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, 400, "budget_tokens"),
        ({"reasoning_effort": "high"}, 400, "Extra inputs are not permitted"),
    ],
)
def test_fake_refuses_what_anthropic_refuses(
    change: dict[str, Any], status: int, message: str
) -> None:
    request = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    request = {k: v for k, v in {**request, **change}.items() if v is not None}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    reply = FakeAnthropic().handle("POST", "/v1/messages", headers, orjson.dumps(request))
    assert reply.status == status
    error = orjson.loads(b"".join(reply.chunks))
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"]


def test_fake_requires_the_api_key() -> None:
    reply = FakeAnthropic().handle(
        "POST", "/v1/messages", {"anthropic-version": "2023-06-01"}, b"{}"
    )
    assert reply.status == 401
    error = CODEC.parse_error(reply.status, reply.headers, b"".join(reply.chunks), now=0.0)
    assert (error.status_code, error.message) == (502, "Anthropic: x-api-key header is required")


def test_fake_faults() -> None:
    fake = FakeAnthropic(
        faults=[
            Fault(status=429, headers={"retry-after": "1"}),
            Fault(reset_after=2, stall=0.5),
            Fault(malformed=True),
        ]
    )
    built = _build({}, [_user("say: one two three")], stream=True)
    request = built.request
    replies = [
        fake.handle("POST", "/v1/messages", dict(request.headers), body_of(request))
        for _ in range(4)
    ]
    limited = CODEC.parse_error(429, replies[0].headers, b"".join(replies[0].chunks), now=0.0)
    assert (limited.status_code, limited.code, limited.retry_after) == (
        429,
        "rate_limit_exceeded",
        1.0,
    )
    assert (replies[1].reset_after, replies[1].stall) == (2, 0.5)
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        decode_all(lambda: CODEC.stream_decoder(built.context), replies[2].chunks)
    assert _fold(decode_all(lambda: CODEC.stream_decoder(built.context), replies[3].chunks))[
        "output"
    ] == [_message("one two three")]
    assert len(fake.requests) == 4 and not fake.faults


async def test_fake_serves_a_stream_through_httpx_mock_transport() -> None:
    fake = FakeAnthropic()
    built = _build({}, [_user("say: over the wire")], stream=True)
    request = built.request
    async with (
        httpx.AsyncClient(transport=mock_transport(fake), base_url="http://fake") as client,
        client.stream(
            "POST", "/v1/messages", headers=dict(request.headers), content=request.content
        ) as response,
    ):
        chunks = [chunk async for chunk in response.aiter_raw()]
    assert response.headers["content-type"] == "text/event-stream"
    assert _fold(decode_all(lambda: CODEC.stream_decoder(built.context), chunks))["output"] == [
        _message("over the wire")
    ]
