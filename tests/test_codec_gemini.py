"""The Gemini bridge (sluicegate/codecs/gemini.py): the request mapping and what it refuses,
byte fixtures of Gemini's stream and bodies decoded however split, thought signatures restored
exactly on the next turn, Gemini's errors, and the fake provider (tests/fake_gemini.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.codecs._bridge import (
    BridgeInput,
    BuiltRequest,
)
from sluicegate.codecs._emitter import (
    BridgeContext,
    open_reasoning,
    seal_reasoning,
)
from sluicegate.codecs._lifecycle import StreamTracker
from sluicegate.codecs.gemini import (
    CODEC,
    PLACEHOLDER_SIGNATURE,
    GeminiBodyDecoder,
    GeminiStreamDecoder,
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

from .bridge_fakes import Fault, body_of
from .conformance import assert_split_invariant, chunkings
from .conftest import fixture_bytes
from .fake_gemini import FakeGemini
from .sdk import sdk_event, sdk_response

GEMINI_3 = "gemini-3-pro-preview"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
    {"type": "function", "name": "get_time", "parameters": None},
]
PNG = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBERi0xLjQ="


def deployment(model: str = GEMINI_3, **kw: Any) -> Deployment:
    return Deployment(
        id="g1",
        model_name="m",
        provider="gemini",
        model=model,
        api_base=kw.pop("api_base", "https://gem.test"),
        api_key=Secret("gk-secret"),
        **kw,
    )


def user(*parts: dict[str, Any] | str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": p} if isinstance(p, str) else p for p in parts]
    return {"type": "message", "role": "user", "content": content}


def assistant(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


def call(
    call_id: str, name: str = "get_weather", arguments: str = '{"city":"Oslo"}'
) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def output(call_id: str, value: Any = "sunny") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": value}


def reasoning(*parts: dict[str, Any], model: str = GEMINI_3) -> dict[str, Any]:
    token = seal_reasoning("gemini", model, {"parts": list(parts)})
    return {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": token}


def build(
    body: dict[str, Any] | None = None,
    items: list[dict[str, Any]] | None = None,
    *,
    model: str = GEMINI_3,
    stream: bool = False,
    drop_params: bool = False,
    extra_body: dict[str, Any] | None = None,
    **dep: Any,
) -> BuiltRequest:
    request = BridgeInput(
        body=body or {},
        items=items if items is not None else [user("hi")],
        drop_params=drop_params,
        extra_body=extra_body,
    )
    return CODEC.build_request(deployment(model, **dep), request, stream=stream, created_at=7)


def sent(built: BuiltRequest) -> dict[str, Any]:
    payload: dict[str, Any] = orjson.loads(body_of(built.request))
    return payload


def payload(
    body: dict[str, Any] | None = None, items: list[dict[str, Any]] | None = None, **kw: Any
) -> dict[str, Any]:
    return sent(build(body, items, **kw))


def refused(
    body: dict[str, Any] | None = None, items: list[dict[str, Any]] | None = None, **kw: Any
) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        build(body, items, **kw)
    return info.value


def context(model: str = GEMINI_3, body: dict[str, Any] | None = None) -> BridgeContext:
    return build(body, model=model).context


# -- the request: transport -------------------------------------------------------------------


def test_the_stream_goes_to_stream_generate_content_with_alt_sse() -> None:
    request = BridgeInput(
        body={},
        items=[user("hi")],
        extra_headers={"x-trace": "t"},
        extra_query={"q": "1"},
    )
    dep = deployment(extra_headers={"x-static": "s"})
    streamed = CODEC.build_request(dep, request, stream=True, created_at=1).request
    assert streamed.url == f"https://gem.test/v1beta/models/{GEMINI_3}:streamGenerateContent"
    assert streamed.params == {"alt": "sse", "q": "1"}
    assert streamed.headers["x-goog-api-key"] == "gk-secret"
    assert streamed.headers["accept"] == "text/event-stream"
    assert streamed.headers["x-static"] == "s" and streamed.headers["x-trace"] == "t"
    assert "authorization" not in streamed.headers
    whole = CODEC.build_request(dep, request, stream=False, created_at=1).request
    assert whole.url.endswith(":generateContent") and whole.params == {"q": "1"}
    default = CODEC.build_request(deployment(api_base=None), request, stream=False, created_at=1)
    assert default.request.url.startswith("https://generativelanguage.googleapis.com/v1beta/")


def test_the_body_is_compact_json() -> None:
    content = body_of(build().request)
    assert b": " not in content and b", " not in content
    assert orjson.loads(content) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


# -- the request: conversation ----------------------------------------------------------------


def test_instructions_and_system_messages_are_hoisted_and_roles_merged() -> None:
    items = [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "Use French."}],
        },
        user("one"),
        user("two"),
        assistant("deux"),
        {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "Be kind."}],
        },
        assistant("trois"),
        user("four"),
    ]
    body = payload({"instructions": "Be brief."}, items)
    assert body["systemInstruction"] == {
        "parts": [{"text": "Be brief."}, {"text": "Use French."}, {"text": "Be kind."}]
    }
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "deux"}, {"text": "trois"}]},
        {"role": "user", "parts": [{"text": "four"}]},
    ]


def test_instructions_as_a_list_of_system_messages() -> None:
    instructions = [
        {"role": "system", "content": "One."},
        {"role": "developer", "content": [{"type": "input_text", "text": "Two."}]},
    ]
    body = payload({"instructions": instructions})
    assert body["systemInstruction"] == {"parts": [{"text": "One."}, {"text": "Two."}]}
    error = refused({"instructions": [{"role": "user", "content": "x"}]})
    assert error.param == "instructions[0]"


def test_a_replayed_refusal_is_model_text_and_empty_parts_are_left_out() -> None:
    refusal = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": "No."}, {"type": "output_text", "text": ""}],
    }
    assert payload(items=[user("x"), refusal])["contents"][1] == {
        "role": "model",
        "parts": [{"text": "No."}],
    }


def test_images_and_files_are_inline_data() -> None:
    items = [
        user(
            "look",
            {"type": "input_image", "image_url": PNG, "detail": "high"},
            {"type": "input_file", "file_data": PDF, "filename": "a.pdf"},
            {"type": "input_file", "file_data": "JVBERi0xLjQ=", "filename": "b.pdf"},
        )
    ]
    assert payload(items=items)["contents"][0]["parts"] == [
        {"text": "look"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0xLjQ="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0xLjQ="}},
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (
            {"type": "input_image", "image_url": "https://example.com/a.png"},
            "input[0].content[0].image_url",
        ),
        (
            {"type": "input_file", "file_url": "https://example.com/a.pdf"},
            "input[0].content[0].file_url",
        ),
        (
            {"type": "input_image", "image_url": "ftp://example.com/a.png"},
            "input[0].content[0].image_url",
        ),
        (
            {"type": "input_file", "file_data": "JVBE", "filename": "noext"},
            "input[0].content[0].filename",
        ),
    ],
)
def test_media_the_gateway_did_not_inline_is_refused_naming_the_part(
    part: dict[str, Any], param: str
) -> None:
    """Regression guard: an https URL reaching the codec means the gateway did not fetch it
    (inline_remote_media); it must be a visible 400, not a silent drop."""
    assert CODEC.inline_remote_media is True
    error = refused(items=[user(part)])
    assert error.param == param and error.code == "unsupported_value"


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_image", "file_id": "file-1"},
        {"type": "input_file", "file_id": "file-1"},
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
    ],
)
def test_parts_gemini_cannot_take_are_refused_or_dropped(part: dict[str, Any]) -> None:
    error = refused(items=[user("a", part)])
    assert (error.param, error.code) == ("input[0].content[1]", "unsupported_parameter")
    built = build(items=[user("a", part)], drop_params=True)
    assert sent(built)["contents"] == [{"role": "user", "parts": [{"text": "a"}]}]
    assert built.context.dropped == ("input[0].content[1]",)


def test_non_text_system_content_is_refused() -> None:
    system = {
        "type": "message",
        "role": "system",
        "content": [{"type": "input_image", "image_url": PNG}],
    }
    assert refused(items=[system, user("x")]).param == "input[0].content[0]"


# -- the request: tools ------------------------------------------------------------------------


def test_function_tools_are_declarations_with_plain_json_schema() -> None:
    body = payload({"tools": TOOLS})
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parametersJsonSchema": TOOLS[0]["parameters"],
                },
                {"name": "get_time"},  # no parameters: no schema (§2)
            ]
        }
    ]
    assert "toolConfig" not in body  # Gemini's default (AUTO)


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "name": "get_time"},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "get_time"}],
            },
            {"mode": "VALIDATED", "allowedFunctionNames": ["get_time"]},
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_weather"}],
            },
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_every_tool_choice_form(choice: Any, config: dict[str, Any]) -> None:
    body = payload({"tools": TOOLS, "tool_choice": choice})
    assert body["toolConfig"] == {"functionCallingConfig": config}
    assert len(body["tools"][0]["functionDeclarations"]) == 2  # allowed_tools keeps them all


def test_allowed_tools_whose_entries_were_all_dropped() -> None:
    choice = {
        "type": "allowed_tools",
        "mode": "auto",
        "tools": [{"type": "mcp", "server_label": "x"}],
    }
    built = build({"tools": TOOLS, "tool_choice": choice}, drop_params=True)
    assert sent(built)["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}
    required = {**choice, "mode": "required"}
    error = refused({"tools": TOOLS, "tool_choice": required}, drop_params=True)
    assert error.param == "tool_choice.tools"


def test_required_tool_choice_without_function_tools_is_refused() -> None:
    assert refused({"tool_choice": "required"}).param == "tool_choice"
    assert "toolConfig" not in payload({"tool_choice": "auto"})


def test_parallel_tool_calls_false_has_no_equivalent() -> None:
    error = refused({"tools": TOOLS, "parallel_tool_calls": False})
    assert (error.param, error.code) == ("parallel_tool_calls", "unsupported_parameter")
    built = build({"tools": TOOLS, "parallel_tool_calls": False}, drop_params=True)
    assert built.context.dropped == ("parallel_tool_calls",)
    assert "parallel" not in body_of(built.request).decode()
    # Nothing to restrict: accepted as is.
    build({"tools": TOOLS, "tool_choice": "none", "parallel_tool_calls": False})
    build({"parallel_tool_calls": False})


def test_calls_and_outputs_group_into_one_model_and_one_user_content() -> None:
    minted = "call_" + "ab" * 24  # a call Gemini sent without an id
    items = [
        user("weather and time?"),
        assistant("Looking."),
        call("gx8k", arguments='{"city": "Paris"}'),
        call(minted, name="get_time", arguments=""),
        output("gx8k", "18C"),
        output(
            minted,
            [{"type": "input_text", "text": "12:00"}, {"type": "input_text", "text": " UTC"}],
        ),
        user("thanks"),
    ]
    body = payload({"tools": TOOLS}, items, model="gemini-2.5-flash")
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Looking."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "gx8k"}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"output": "18C"},
                        "id": "gx8k",
                    }
                },
                {"functionResponse": {"name": "get_time", "response": {"output": "12:00 UTC"}}},
                {"text": "thanks"},
            ],
        },
    ]


def test_an_output_for_an_unknown_call_is_refused_naming_the_item() -> None:
    error = refused(items=[user("x"), output("nope")])
    assert error.param == "input[1]" and "'nope'" in error.message


@pytest.mark.parametrize("arguments", ["{bad", "[1, 2]"])
def test_call_arguments_must_be_a_json_object(arguments: str) -> None:
    assert refused(items=[user("x"), call("c1", arguments=arguments)]).param == "input[1].arguments"


def test_media_in_function_outputs_goes_as_response_parts_where_the_model_takes_it() -> None:
    items = [
        user("x"),
        call("c1"),
        output(
            "c1",
            [{"type": "input_text", "text": "a map"}, {"type": "input_image", "image_url": PNG}],
        ),
    ]
    response = payload(items=items)["contents"][2]["parts"][0]["functionResponse"]
    assert response == {
        "name": "get_weather",
        "response": {"output": "a map"},
        "id": "c1",
        "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}],
    }
    error = refused(items=items, model="gemini-2.5-pro")
    assert error.param == "input[2].output[1]"


# -- the request: generation controls -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "effort", "thinking"),
    [
        ("gemini-3-pro-preview", "low", {"thinkingLevel": "LOW"}),
        ("gemini-3-pro-preview", "none", {"thinkingLevel": "LOW"}),  # Pro cannot stop thinking
        ("gemini-3-pro-preview", "medium", {"thinkingLevel": "HIGH"}),
        ("gemini-3.1-pro-preview", "minimal", {"thinkingLevel": "LOW"}),
        ("gemini-3-flash-preview", "none", {"thinkingLevel": "MINIMAL"}),
        ("gemini-3-flash-preview", "medium", {"thinkingLevel": "MEDIUM"}),
        ("gemini-3-flash-preview", "xhigh", {"thinkingLevel": "HIGH"}),
        ("gemini-2.5-pro", "none", {"thinkingBudget": 128}),
        ("gemini-2.5-pro", "max", {"thinkingBudget": 32768}),
        ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
        ("gemini-2.5-flash", "medium", {"thinkingBudget": 8192}),
        ("gemini-2.5-flash", "xhigh", {"thinkingBudget": 24576}),
        ("gemini-2.5-flash-lite", "minimal", {"thinkingBudget": 512}),
    ],
)
def test_reasoning_effort_is_the_models_thinking_config(
    model: str, effort: str, thinking: dict[str, Any]
) -> None:
    body = payload({"reasoning": {"effort": effort}}, model=model)
    assert body["generationConfig"] == {"thinkingConfig": thinking}


def test_summaries_ask_for_thoughts() -> None:
    built = build({"reasoning": {"effort": "high", "summary": "auto"}}, model="gemini-2.5-flash")
    assert sent(built)["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 24576,
        "includeThoughts": True,
    }
    assert built.context.summaries
    built = build({"reasoning": {"summary": "detailed"}})
    assert sent(built)["generationConfig"] == {"thinkingConfig": {"includeThoughts": True}}
    plain = build({"reasoning": {"effort": None, "summary": None}})
    assert "generationConfig" not in sent(plain) and not plain.context.summaries


def test_reasoning_on_a_model_that_does_not_think() -> None:
    error = refused({"reasoning": {"effort": "low"}}, model="gemini-2.0-flash")
    assert (error.param, error.code) == ("reasoning.effort", "unsupported_parameter")
    assert (
        refused({"reasoning": {"summary": "auto"}}, model="gemini-2.0-flash").param
        == "reasoning.summary"
    )
    built = build({"reasoning": {"effort": "low"}}, model="gemini-2.0-flash", drop_params=True)
    assert "generationConfig" not in sent(built) and built.context.dropped == ("reasoning.effort",)
    assert "generationConfig" not in payload(
        {"reasoning": {"effort": "none"}}, model="gemini-2.0-flash"
    )
    assert refused({"reasoning": {"effort": "low", "mode": "pro"}}).param == "reasoning.mode"
    assert refused({"reasoning": {"effort": "huge"}}).code == "invalid_value"


def test_model_info_overrides_the_rules_table() -> None:
    assert rules_for(deployment("gemini-next")).reasoning == "none"
    body = payload(
        {"reasoning": {"effort": "low"}}, model="gemini-next", model_info={"reasoning": "level"}
    )
    assert body["generationConfig"] == {"thinkingConfig": {"thinkingLevel": "LOW"}}
    body = payload(
        {"reasoning": {"effort": "low"}},
        model="gemini-next",
        model_info={"reasoning": "budget", "efforts": {"low": 2000}},
    )
    assert body["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 2000}}
    error = refused(
        {"reasoning": {"effort": "high"}},
        model="gemini-next",
        model_info={"reasoning": "budget", "efforts": {"low": 2000}},
    )
    assert error.param == "reasoning.effort" and error.code == "unsupported_value"
    # Signed calls for an unknown Gemini 3-like model, by configuration only.
    signed = payload(
        items=[user("x"), call("c1")], model="gemini-next", model_info={"signed_calls": True}
    )
    assert signed["contents"][1]["parts"][0]["thoughtSignature"] == PLACEHOLDER_SIGNATURE
    with pytest.raises(ConfigError, match=r"model_info\.reasoning"):
        build(model_info={"reasoning": "adaptive"})
    with pytest.raises(ConfigError, match=r"model_info\.efforts"):
        build(model_info={"efforts": {"low": None}})


def test_text_format_is_response_mime_type_and_schema() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
    assert payload({"text": {"format": fmt, "verbosity": "medium"}})["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    assert payload({"text": {"format": {"type": "json_object"}}})["generationConfig"] == {
        "responseMimeType": "application/json"
    }
    assert "generationConfig" not in payload({"text": {"format": {"type": "text"}}})
    assert (
        refused({"text": {"format": {"type": "json_schema", "name": "x"}}}).param
        == "text.format.schema"
    )


def test_generation_controls_and_their_ranges() -> None:
    body = payload({"max_output_tokens": 2048, "temperature": 0.7, "top_p": 0.9})
    assert body["generationConfig"] == {"maxOutputTokens": 2048, "temperature": 0.7, "topP": 0.9}
    error = refused({"max_output_tokens": 100_000})
    assert (error.param, error.code) == ("max_output_tokens", "unsupported_value")
    error = refused({"temperature": 1.5}, model_info={"max_temperature": 1.0})
    assert (error.param, error.code) == ("temperature", "unsupported_value")
    # unsupported_value is never dropped: it would change the answer.
    assert (
        refused({"temperature": 1.5}, drop_params=True, model_info={"max_temperature": 1}).param
        == "temperature"
    )


@pytest.mark.parametrize(
    ("body", "items", "param"),
    [
        ({"tools": [*TOOLS, {"type": "web_search"}]}, None, "tools[2]"),
        ({"truncation": "auto"}, None, "truncation"),
        ({"text": {"verbosity": "low"}}, None, "text.verbosity"),
        ({"top_logprobs": 3}, None, "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, None, "include[0]"),
        ({"include": ["web_search_call.results"]}, None, "include[0]"),
        ({"service_tier": "flex"}, None, "service_tier"),
        ({"tool_choice": {"type": "web_search_preview"}}, None, "tool_choice"),
        ({}, [user("x"), {"type": "item_reference", "id": "msg_1"}], "input"),
        (
            {},
            [user("x"), {"type": "web_search_call", "id": "ws_1", "status": "completed"}],
            "input[1]",
        ),
        (
            {},
            [user("x"), {"type": "local_shell_call", "call_id": "c", "action": {}}],
            "input[1]",
        ),
    ],
)
def test_what_gemini_cannot_take_is_refused_or_dropped(
    body: dict[str, Any], items: list[dict[str, Any]] | None, param: str
) -> None:
    error = refused(body, items)
    assert (error.param, error.code) == (param, "unsupported_parameter")
    built = build(body, items, drop_params=True)
    assert built.context.dropped == (param,)
    assert sent(built)["contents"][0] == {
        "role": "user",
        "parts": [{"text": "x" if items else "hi"}],
    }


def test_harmless_parameters_are_accepted_and_not_sent() -> None:
    body = {
        "metadata": {"a": "b"},
        "store": False,
        "user": "u",
        "safety_identifier": "s",
        "prompt_cache_key": "k",
        "service_tier": "auto",
        "max_tool_calls": 3,
        "include": ["reasoning.encrypted_content"],
        "truncation": "disabled",
    }
    assert payload(body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_extra_body_merges_last_into_objects_with_sampling_aliases() -> None:
    extra = {
        "generationConfig": {"topK": 40, "temperature": 0.1},
        "stop": "END",
        "seed": 7,
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "OFF"}],
    }
    body = payload({"max_output_tokens": 99, "temperature": 0.5}, extra_body=extra)
    assert body["generationConfig"] == {
        "maxOutputTokens": 99,
        "temperature": 0.1,  # extra_body wins
        "topK": 40,
        "stopSequences": ["END"],
        "seed": 7,
    }
    assert body["safetySettings"] == extra["safetySettings"]
    assert refused(extra_body={"stop": ["a", "b", "c", "d", "e", "f"]}).param == "extra_body.stop"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"presence_penalty": 0.5}, "extra_body.presence_penalty"),
        ({"frequency_penalty": 0.5}, "extra_body.frequency_penalty"),
        (
            {"generationConfig": {"presencePenalty": 0.5}},
            "extra_body.generationConfig.presencePenalty",
        ),
    ],
)
def test_penalties_are_refused_where_the_model_refuses_them(
    extra: dict[str, Any], param: str
) -> None:
    error = refused(extra_body=extra)
    assert (error.param, error.code) == (param, "unsupported_parameter")
    built = build(extra_body=extra, drop_params=True)
    assert built.context.dropped == (param,) and "enalty" not in body_of(built.request).decode()
    older = payload(extra_body=extra, model="gemini-2.5-pro")["generationConfig"]
    assert older.get("presencePenalty", older.get("frequencyPenalty")) == 0.5


def test_a_thinking_budget_and_level_never_go_together() -> None:
    extra = {"generationConfig": {"thinkingConfig": {"thinkingLevel": "LOW"}}}
    error = refused({"reasoning": {"effort": "low"}}, model="gemini-2.5-flash", extra_body=extra)
    assert error.param == "extra_body.generationConfig.thinkingConfig"
    level = payload(model="gemini-2.5-flash", extra_body=extra)["generationConfig"]
    assert level == {"thinkingConfig": {"thinkingLevel": "LOW"}}


# -- the request: reasoning state restored ------------------------------------------------------


def test_every_kind_of_signed_part_is_restored_in_place() -> None:
    items = [
        user("go"),
        reasoning({"part": "thought", "text": "plan", "signature": "S-thought"}),
        assistant("Hello"),
        reasoning({"part": "text", "signature": "S-text"}),
        reasoning({"part": "empty", "signature": "S-empty"}),
        reasoning({"part": "function_call", "call_id": "c1", "signature": "S-call"}),
        call("c1"),
        call("c2", name="get_time", arguments="{}"),
        output("c1"),
        output("c2"),
    ]
    assert payload(items=items)["contents"][1] == {
        "role": "model",
        "parts": [
            {"text": "plan", "thought": True, "thoughtSignature": "S-thought"},
            {"text": "Hello", "thoughtSignature": "S-text"},
            {"text": "", "thoughtSignature": "S-empty"},
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}, "id": "c1"},
                "thoughtSignature": "S-call",
            },
            # The second of parallel calls had no signature, and gets none (§5).
            {"functionCall": {"name": "get_time", "args": {}, "id": "c2"}},
        ],
    }


def test_calls_without_a_signature_get_the_placeholder_on_gemini_3_only() -> None:
    foreign = {
        "type": "reasoning",
        "id": "rs_x",
        "summary": [],
        "encrypted_content": "gAAAAB-openai",
    }
    items = [
        user("x"),
        foreign,
        reasoning(
            {"part": "function_call", "call_id": "c1", "signature": "S"}, model="gemini-2.5-pro"
        ),
        call("c1"),
        output("c1"),
        user("again"),
        call("c2"),
        output("c2"),
    ]
    contents = payload(items=items)["contents"]
    assert [
        p.get("thoughtSignature") for c in contents if c["role"] == "model" for p in c["parts"]
    ] == [
        PLACEHOLDER_SIGNATURE,  # the 2.5 signature is another model's: not replayed (§5)
        PLACEHOLDER_SIGNATURE,
    ]
    older = payload(items=items, model="gemini-2.5-flash")["contents"]
    assert all("thoughtSignature" not in p for c in older for p in c["parts"])


def test_an_altered_reasoning_envelope_is_refused() -> None:
    token = reasoning({"part": "function_call", "call_id": "c1", "signature": "S"})[
        "encrypted_content"
    ]
    altered = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [],
        "encrypted_content": token[:-4] + "AAAA",
    }
    error = refused(items=[user("x"), altered, call("c1"), output("c1")])
    assert (error.param, error.code) == ("input[1].encrypted_content", "invalid_encrypted_content")


def test_a_text_signature_without_its_text_is_left_out() -> None:
    items = [user("x"), reasoning({"part": "text", "signature": "S"}), user("y")]
    assert payload(items=items)["contents"] == [
        {"role": "user", "parts": [{"text": "x"}, {"text": "y"}]}
    ]


# -- the answer: stream fixtures ----------------------------------------------------------------

_MINTED = re.compile(r"\b(msg|rs|fc|ctc|call)_[0-9a-f]{48}\b")


def _scrub(value: Any, model: str) -> Any:
    """Minted IDs as ``<kind>_*``, and our envelopes opened, so that two decodes compare."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: {"opened": open_reasoning(v, "gemini", model)}
                if k == "encrypted_content"
                else walk(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return orjson.loads(_MINTED.sub(r"\1_*", orjson.dumps(walk(value)).decode()))


def _stable(model: str) -> Callable[[Any], Any]:
    return lambda event: _scrub(event.to_dict(), model)


def decode(data: bytes, ctx: BridgeContext, *, body: bool = False) -> list[Any]:
    decoder = GeminiBodyDecoder(ctx) if body else GeminiStreamDecoder(ctx)
    return decoder.feed(data) + decoder.close()


def fold(events: Sequence[Any]) -> dict[str, Any]:
    tracker = StreamTracker()
    tracker.observe_all(events)
    response: dict[str, Any] = tracker.fold().to_dict()
    return response


def usage(
    input_tokens: int, output_tokens: int, *, cached: int = 0, reasoning: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def message(text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "msg_*",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": "fc_*",
        "type": "function_call",
        "status": "completed",
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def reasoning_item(summary: str | None, parts: list[dict[str, Any]] | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": "rs_*",
        "type": "reasoning",
        "summary": [] if summary is None else [{"type": "summary_text", "text": summary}],
    }
    if parts is not None:
        item["encrypted_content"] = {"opened": {"parts": parts}}
    return item


MESSAGE_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
CALL_EVENTS = [
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
]
STATE_EVENTS = ["response.output_item.added", "response.output_item.done"]
SUMMARY_EVENTS = [
    "response.output_item.added",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
    "response.output_item.done",
]
START = ["response.created", "response.in_progress"]
THOUGHT = "**Planning the lookup**\n\nThe user wants weather and time, so two calls."
CALL_STATE = [
    {"part": "function_call", "call_id": "gx8k2m4p", "signature": "CqQBAdHtim9+Lq4xQm3ZrYk0wQ=="}
]

# name -> (model, summaries, event types, output, usage, status, incomplete reason)
STREAMS: dict[
    str, tuple[str, bool, list[str], list[dict[str, Any]], dict[str, Any], str, str | None]
] = {
    "gemini_text.sse": (
        "gemini-2.5-flash",
        False,
        [
            *START,
            *MESSAGE_EVENTS[:3],
            *["response.output_text.delta"] * 2,
            *MESSAGE_EVENTS[3:],
            "response.completed",
        ],
        [message("Paris is the capital of France — ça va? 🇫🇷\nYes.")],
        usage(9, 14),
        "completed",
        None,
    ),
    "gemini_thinking_calls.sse": (
        GEMINI_3,
        True,
        [
            *START,
            *SUMMARY_EVENTS[:3],
            "response.reasoning_summary_text.delta",
            *SUMMARY_EVENTS[3:],
            *CALL_EVENTS,
            *CALL_EVENTS,
            "response.completed",
        ],
        [
            reasoning_item(THOUGHT, CALL_STATE),
            function_call("gx8k2m4p", "get_weather", '{"city":"Paris","units":["c"]}'),
            function_call("q7w1n0bd", "get_time", "{}"),
        ],
        usage(128, 121, cached=64, reasoning=90),
        "completed",
        None,
    ),
    "gemini_text_signature.sse": (
        "gemini-3-flash-preview",
        False,  # the thought text comes anyway but is not shown: no summary asked for
        [
            *START,
            *MESSAGE_EVENTS[:3],
            "response.output_text.delta",
            *MESSAGE_EVENTS[3:],
            *STATE_EVENTS,
            "response.completed",
        ],
        [
            message("Hello there."),
            reasoning_item(None, [{"part": "empty", "signature": "EjQKMgEMOdbHvY1+Pz0vZQ=="}]),
        ],
        usage(7, 15, reasoning=12),
        "completed",
        None,
    ),
    "gemini_calls_no_id.sse": (
        "gemini-2.5-flash",
        False,
        [*START, *STATE_EVENTS, *CALL_EVENTS, *CALL_EVENTS, "response.completed"],
        [
            reasoning_item(
                None,
                [{"part": "function_call", "call_id": "call_*", "signature": "Cp4CAdHtim8xYzq9"}],
            ),
            function_call("call_*", "get_weather", '{"city":"Oslo"}'),
            function_call("call_*", "get_weather", '{"city":"Bergen"}'),
        ],
        usage(40, 100, reasoning=78),
        "completed",
        None,
    ),
    "gemini_length.sse": (
        "gemini-2.5-flash",
        False,
        [
            *START,
            *MESSAGE_EVENTS[:3],
            "response.output_text.delta",
            *MESSAGE_EVENTS[3:],
            "response.incomplete",
        ],
        [message("One, two, three", "incomplete")],
        usage(5, 20, reasoning=16),
        "incomplete",
        "max_output_tokens",
    ),
    "gemini_safety.sse": (
        "gemini-2.5-flash",
        False,
        [*START, *MESSAGE_EVENTS, "response.incomplete"],
        [message("Here is how", "incomplete")],
        usage(11, 3),
        "incomplete",
        "content_filter",
    ),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_fixture_decodes_identically_however_split(name: str) -> None:
    model, summaries, kinds, items, expected_usage, status, reason = STREAMS[name]
    body = {"reasoning": {"summary": "auto"}} if summaries else {}
    ctx = context(model, body)
    data = fixture_bytes(name)
    assert b"\r\n\r\n" in data  # Gemini frames with CRLF (§6)
    make = lambda: GeminiStreamDecoder(ctx)  # noqa: E731
    events = assert_split_invariant(make, data, normalize=_stable(model))
    assert (
        assert_split_invariant(make, data.replace(b"\r\n", b"\n"), normalize=_stable(model))
        == events
    )
    assert [e["type"] for e in events] == kinds
    response = _scrub(fold(decode(data, ctx)), model)
    assert response["output"] == items
    assert response["usage"] == expected_usage
    assert response["status"] == status
    assert response["incomplete_details"] == (None if reason is None else {"reason": reason})
    assert response["model"] == model and response["id"] == ctx.response_id


def test_the_thought_is_not_shown_without_a_summary_but_the_signature_still_is() -> None:
    events = decode(fixture_bytes("gemini_thinking_calls.sse"), context(GEMINI_3))
    kinds = [e.type for e in events]
    assert "response.reasoning_summary_text.delta" not in kinds
    output = _scrub(fold(events), GEMINI_3)["output"]
    assert output[0] == reasoning_item(None, CALL_STATE)


def test_the_call_ids_are_minted_once_and_distinct() -> None:
    output = fold(decode(fixture_bytes("gemini_calls_no_id.sse"), context("gemini-2.5-flash")))[
        "output"
    ]
    ids = [item["call_id"] for item in output if item["type"] == "function_call"]
    assert len(set(ids)) == 2 and all(_MINTED.fullmatch(i) for i in ids)
    state = open_reasoning(output[0]["encrypted_content"], "gemini", "gemini-2.5-flash")
    assert state == {
        "parts": [{"part": "function_call", "call_id": ids[0], "signature": "Cp4CAdHtim8xYzq9"}]
    }


def _decode_until_error(
    ctx: BridgeContext, chunks: Sequence[bytes]
) -> tuple[list[Any], SluicegateError]:
    decoder = GeminiStreamDecoder(ctx)
    events: list[Any] = []
    try:
        for chunk in chunks:
            events += decoder.feed(chunk)
        events += decoder.close()
    except SluicegateError as exc:
        return events, exc
    raise AssertionError("the stream decoded without an error")


@pytest.mark.parametrize(
    ("name", "status", "code", "before"),
    [
        ("gemini_error.sse", 429, "rate_limit_exceeded", 5),
        ("gemini_malformed_call.sse", 502, "server_error", 5),
        ("gemini_blocked.sse", 400, "invalid_prompt", 0),
    ],
)
def test_failures_in_the_stream_are_raised_after_the_events_before_them(
    name: str, status: int, code: str, before: int
) -> None:
    data = fixture_bytes(name)
    ctx = context("gemini-2.5-flash")
    stable = _stable("gemini-2.5-flash")
    expected: tuple[list[Any], tuple[Any, ...]] | None = None
    for split, chunks in chunkings(data):
        events, error = _decode_until_error(ctx, chunks)
        got = ([stable(e) for e in events], (type(error), error.status_code, error.code))
        expected = expected or got
        assert got == expected, f"decoding differs when fed {split}"
    assert expected is not None
    events, (kind, error_status, error_code) = expected
    assert (kind, error_status, error_code) == (UpstreamStatusError, status, code)
    assert len(events) == before
    # The pipeline's tracker ends what began with one typed response.failed.
    if before:
        tracker = StreamTracker()
        tracker.observe_all(_decode_until_error(ctx, [data])[0])
        _, exc = _decode_until_error(ctx, [data])
        failed = tracker.fail(exc)
        final = failed[-1].to_dict()["response"]
        assert final["status"] == "failed" and final["error"]["code"] == code
        assert final["output"][0]["content"][0]["text"] in ("Partial", "Let me check.")


def test_a_stream_that_ends_without_a_finish_reason_fails() -> None:
    data = fixture_bytes("gemini_text.sse")
    cut = data[: data.rindex(b"data: ")]
    decoder = GeminiStreamDecoder(context("gemini-2.5-flash"))
    assert decoder.feed(cut)
    with pytest.raises(UpstreamProtocolError, match="ended before"):
        decoder.close()


def test_broken_json_in_the_stream_is_a_protocol_error() -> None:
    decoder = GeminiStreamDecoder(context())
    with pytest.raises(UpstreamProtocolError, match="malformed SSE data"):
        decoder.feed(b'data: {"candidates": [{"cont\r\n\r\n')


def test_a_usage_only_chunk_and_unknown_parts_are_harmless() -> None:
    chunks = [
        {"usageMetadata": {"promptTokenCount": 3}},
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [{"executableCode": {"code": "1"}}, {"text": "ok"}],
                    },
                    "finishReason": "STOP",
                }
            ]
        },
    ]
    data = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)
    response = fold(decode(data, context()))
    assert response["output"][0]["content"][0]["text"] == "ok"
    # The last usageMetadata seen counts, even when later chunks carry none.
    assert response["usage"]["input_tokens"] == 3


# -- the answer: bodies -------------------------------------------------------------------------


def test_a_body_folds_to_the_same_response_as_its_stream() -> None:
    ctx = context(GEMINI_3, {"reasoning": {"summary": "auto"}})
    body = fixture_bytes("gemini_thinking_calls.json")
    events = assert_split_invariant(
        lambda: GeminiBodyDecoder(ctx), body, normalize=_stable(GEMINI_3)
    )
    streamed = _scrub(fold(decode(fixture_bytes("gemini_thinking_calls.sse"), ctx)), GEMINI_3)
    assert _scrub(fold(decode(body, ctx, body=True)), GEMINI_3) == streamed
    assert events[-1]["type"] == "response.completed"


def test_a_body_with_a_signature_on_its_text_keeps_it_for_that_text() -> None:
    ctx = context("gemini-3-flash-preview")
    response = _scrub(
        fold(decode(fixture_bytes("gemini_text_signature.json"), ctx, body=True)),
        "gemini-3-flash-preview",
    )
    assert response["output"] == [
        message("Hello there."),
        reasoning_item(None, [{"part": "text", "signature": "EjQKMgEMOdbHvY1+Pz0vZQ=="}]),
    ]
    assert response["usage"] == usage(7, 15, reasoning=12)


def test_a_cut_off_body_is_incomplete() -> None:
    response = fold(
        decode(fixture_bytes("gemini_length.json"), context("gemini-2.5-flash"), body=True)
    )
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def test_a_blocked_prompt_body_is_a_400_invalid_prompt() -> None:
    with pytest.raises(UpstreamStatusError) as info:
        decode(fixture_bytes("gemini_blocked.json"), context(), body=True)
    assert (info.value.status_code, info.value.code) == (400, "invalid_prompt")
    assert "PROHIBITED_CONTENT" in info.value.message and not info.value.retryable


def test_a_body_without_a_finish_reason_is_a_protocol_error() -> None:
    body = b'{"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}}]}'
    with pytest.raises(UpstreamProtocolError, match="no stop reason"):
        decode(body, context(), body=True)


# -- custom tools ---------------------------------------------------------------------------------

PATCH = (
    "*** Begin Patch\n*** Update File: app.py\n@@ def greet():\n"
    '-    print("hi")\n+    print("h\u00e9llo \U0001f600\\t")\n*** End Patch\n'
)
PATCH_TOOL: dict[str, Any] = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
}
CUSTOM_TOOLS = [PATCH_TOOL, TOOLS[0]]


def test_custom_tools_become_declarations_of_one_string_argument() -> None:
    body = {"tools": CUSTOM_TOOLS, "tool_choice": {"type": "custom", "name": "apply_patch"}}
    sent_body = payload(body)
    patch = sent_body["tools"][0]["functionDeclarations"][0]
    described = patch["parametersJsonSchema"]["properties"]["input"].pop("description")
    assert patch == {
        "name": "apply_patch",
        "description": "Edit files with a patch.",
        "parametersJsonSchema": {
            "type": "object",
            "properties": {"input": {"type": "string"}},
            "required": ["input"],
            "additionalProperties": False,
        },
    }
    assert "free-form text" in described
    assert sent_body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["apply_patch"]}
    }
    allowed = {
        "type": "allowed_tools",
        "mode": "auto",
        "tools": [
            {"type": "custom", "name": "apply_patch"},
            {"type": "function", "name": "get_weather"},
        ],
    }
    assert payload({**body, "tool_choice": allowed})["toolConfig"] == {
        "functionCallingConfig": {
            "mode": "VALIDATED",
            "allowedFunctionNames": ["apply_patch", "get_weather"],
        }
    }


def custom_context() -> BridgeContext:
    """The context the codec makes for a request with the custom tool."""
    return context(GEMINI_3, {"tools": CUSTOM_TOOLS})


def ctc(call_id: str, name: str, text: str) -> dict[str, Any]:
    return {
        "id": "ctc_*",
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "input": text,
    }


CUSTOM_STATE = [{"part": "function_call", "call_id": "p0q8z1", "signature": "CtIBAdHtim+Pa7c4=="}]


def test_a_custom_tool_call_arrives_whole_as_one_input_delta_however_split() -> None:
    ctx = custom_context()
    data = fixture_bytes("gemini_custom_tool.sse")
    events = assert_split_invariant(
        lambda: GeminiStreamDecoder(ctx), data, normalize=_stable(GEMINI_3)
    )
    assert [e["type"] for e in events] == [
        *START,
        *MESSAGE_EVENTS,
        *STATE_EVENTS,
        "response.output_item.added",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        *CALL_EVENTS,
        "response.completed",
    ]
    wire = decode(data, ctx)
    for event in wire:
        sdk_event(event.to_dict())
    [delta] = [e.to_dict()["delta"] for e in wire if e.type.endswith("input.delta")]
    assert delta == PATCH
    response = fold(wire)
    sdk_response(response)
    assert _scrub(response, GEMINI_3)["output"] == [
        message("Patching now."),
        reasoning_item(None, CUSTOM_STATE),
        ctc("p0q8z1", "apply_patch", PATCH),
        function_call("w3e5r7", "get_weather", '{"city":"Paris"}'),
    ]
    assert response["usage"] == usage(150, 88, reasoning=30)
    from_body = fold(decode(fixture_bytes("gemini_custom_tool.json"), ctx, body=True))
    assert _scrub(from_body, GEMINI_3) == _scrub(response, GEMINI_3)


def test_a_custom_tool_call_and_its_signature_come_back_on_the_next_turn() -> None:
    output_items = fold(decode(fixture_bytes("gemini_custom_tool.sse"), custom_context()))["output"]
    items = [
        user("patch it"),
        *output_items,
        {"type": "custom_tool_call_output", "call_id": "p0q8z1", "output": "Done."},
        output("w3e5r7", "18C"),
        user("next"),
    ]
    contents = payload({"tools": CUSTOM_TOOLS}, items)["contents"]
    assert contents[1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Patching now."},
                {
                    "functionCall": {
                        "name": "apply_patch",
                        "args": {"input": PATCH},
                        "id": "p0q8z1",
                    },
                    "thoughtSignature": "CtIBAdHtim+Pa7c4==",
                },
                {
                    "functionCall": {
                        "name": "get_weather",
                        "args": {"city": "Paris"},
                        "id": "w3e5r7",
                    }
                },
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "apply_patch",
                        "response": {"output": "Done."},
                        "id": "p0q8z1",
                    }
                },
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"output": "18C"},
                        "id": "w3e5r7",
                    }
                },
                {"text": "next"},
            ],
        },
    ]


def test_unknown_top_level_fields_are_refused_by_name_or_dropped_and_never_sent() -> None:
    body = {"client_metadata": {"originator": "cli"}, "fancy_option": 3}

    def with_unknown(drop: bool) -> BuiltRequest:
        request = BridgeInput(
            body=body, items=[user("hi")], drop_params=drop, unknown_params=tuple(body)
        )
        return CODEC.build_request(deployment(), request, stream=False, created_at=7)

    with pytest.raises(InvalidRequestError) as info:
        with_unknown(False)
    assert (info.value.param, info.value.code) == ("client_metadata", "unsupported_parameter")
    built = with_unknown(True)
    assert built.context.dropped == ("client_metadata", "fancy_option")
    assert sent(built) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


# -- round trips: the next turn gets the state back exactly ----------------------------------------


def next_turn(
    first: list[dict[str, Any]], output_items: list[dict[str, Any]], model: str, **outputs: str
) -> dict[str, Any]:
    items = [
        *first,
        *output_items,
        *(output(cid, out) for cid, out in outputs.items()),
        user("next"),
    ]
    return payload({"tools": TOOLS}, items, model=model)


def test_call_signatures_and_ids_come_back_on_their_calls() -> None:
    ctx = context(GEMINI_3, {"reasoning": {"summary": "auto"}})
    output_items = fold(decode(fixture_bytes("gemini_thinking_calls.sse"), ctx))["output"]
    contents = next_turn([user("go")], output_items, GEMINI_3, gx8k2m4p="18C", q7w1n0bd="noon")[
        "contents"
    ]
    assert contents[1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {
                        "name": "get_weather",
                        "args": {"city": "Paris", "units": ["c"]},
                        "id": "gx8k2m4p",
                    },
                    "thoughtSignature": "CqQBAdHtim9+Lq4xQm3ZrYk0wQ==",
                },
                {"functionCall": {"name": "get_time", "args": {}, "id": "q7w1n0bd"}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"output": "18C"},
                        "id": "gx8k2m4p",
                    }
                },
                {
                    "functionResponse": {
                        "name": "get_time",
                        "response": {"output": "noon"},
                        "id": "q7w1n0bd",
                    }
                },
                {"text": "next"},
            ],
        },
    ]


def test_minted_call_ids_are_not_sent_to_gemini() -> None:
    model = "gemini-2.5-flash"
    output_items = fold(decode(fixture_bytes("gemini_calls_no_id.sse"), context(model)))["output"]
    first, second = (i["call_id"] for i in output_items if i["type"] == "function_call")
    contents = next_turn([user("go")], output_items, model, **{first: "cold", second: "colder"})[
        "contents"
    ]
    assert contents[1]["parts"] == [
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
            "thoughtSignature": "Cp4CAdHtim8xYzq9",
        },
        {"functionCall": {"name": "get_weather", "args": {"city": "Bergen"}}},
    ]
    assert [p["functionResponse"] for p in contents[2]["parts"][:2]] == [
        {"name": "get_weather", "response": {"output": "cold"}},
        {"name": "get_weather", "response": {"output": "colder"}},
    ]


@pytest.mark.parametrize(
    ("name", "body", "parts"),
    [
        (
            "gemini_text_signature.sse",
            False,
            [
                {"text": "Hello there."},
                {"text": "", "thoughtSignature": "EjQKMgEMOdbHvY1+Pz0vZQ=="},
            ],
        ),
        (
            "gemini_text_signature.json",
            True,
            [{"text": "Hello there.", "thoughtSignature": "EjQKMgEMOdbHvY1+Pz0vZQ=="}],
        ),
    ],
)
def test_a_text_signature_comes_back_where_it_was(
    name: str, body: bool, parts: list[dict[str, Any]]
) -> None:
    model = "gemini-3-flash-preview"
    output_items = fold(decode(fixture_bytes(name), context(model), body=body))["output"]
    contents = next_turn([user("hi")], output_items, model)["contents"]
    assert contents[1] == {"role": "model", "parts": parts}


def test_a_signed_text_followed_by_more_text_splits_the_message() -> None:
    chunks = [
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [{"text": "First", "thoughtSignature": "S1"}],
                    }
                }
            ]
        },
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": "Second"}]},
                    "finishReason": "STOP",
                }
            ]
        },
    ]
    data = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)
    output_items = fold(decode(data, context()))["output"]
    assert [i["type"] for i in output_items] == ["message", "reasoning", "message"]
    contents = next_turn([user("hi")], output_items, GEMINI_3)["contents"]
    assert contents[1]["parts"] == [{"text": "First", "thoughtSignature": "S1"}, {"text": "Second"}]


def test_a_signed_thought_comes_back_as_that_thought() -> None:
    chunks = [
        {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": "Think", "thought": True}]}}
            ]
        },
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "ing.", "thought": True},
                            {"thought": True, "thoughtSignature": "ST"},
                        ],
                    }
                }
            ]
        },
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [{"functionCall": {"id": "c9", "name": "get_time", "args": {}}}],
                    },
                    "finishReason": "STOP",
                }
            ]
        },
    ]
    data = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)
    ctx = context(GEMINI_3, {"reasoning": {"summary": "auto"}})
    events = assert_split_invariant(
        lambda: GeminiStreamDecoder(ctx), data, normalize=_stable(GEMINI_3)
    )
    output_items = fold(decode(data, ctx))["output"]
    assert _scrub(output_items, GEMINI_3)[0] == reasoning_item(
        "Thinking.", [{"part": "thought", "text": "Thinking.", "signature": "ST"}]
    )
    assert events[-1]["type"] == "response.completed"
    contents = next_turn([user("hi")], output_items, GEMINI_3, c9="noon")["contents"]
    assert contents[1]["parts"] == [
        {"text": "Thinking.", "thought": True, "thoughtSignature": "ST"},
        # The call itself had none: Gemini 3 wants one on the first call of a step (§5).
        {
            "functionCall": {"name": "get_time", "args": {}, "id": "c9"},
            "thoughtSignature": PLACEHOLDER_SIGNATURE,
        },
    ]


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=60)
@given(
    args=st.dictionaries(st.text(max_size=8), _JSON, max_size=4),
    signature=st.text(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=1, max_size=40
    ),
    call_id=st.none() | st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
)
def test_arguments_and_signatures_round_trip_exactly(
    args: dict[str, Any], signature: str, call_id: str | None
) -> None:
    call_wire: dict[str, Any] = {"name": "f", "args": args}
    if call_id is not None:
        call_wire["id"] = call_id
    chunk = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"functionCall": call_wire, "thoughtSignature": signature}],
                },
                "finishReason": "STOP",
            }
        ]
    }
    output_items = fold(decode(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n", context()))["output"]
    made = output_items[-1]
    assert orjson.loads(made["arguments"]) == args
    items = [user("x"), *output_items, output(made["call_id"]), user("y")]
    replayed = payload(items=items)["contents"][1]["parts"]
    assert replayed == [{"functionCall": call_wire, "thoughtSignature": signature}]


# -- errors ---------------------------------------------------------------------------------------


def _google(
    status: int, name: str, message: str = "msg", details: list[dict[str, Any]] | None = None
) -> bytes:
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if details is not None:
        error["details"] = details
    return orjson.dumps({"error": error})


KEY_INVALID: list[dict[str, Any]] = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
    }
]
RETRY: list[dict[str, Any]] = [
    {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaId": "PerMinute"}],
    },
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"},
]


@pytest.mark.parametrize(
    ("status", "body", "ours", "code", "retryable"),
    [
        (400, _google(400, "INVALID_ARGUMENT", "Invalid value at 'contents'"), 400, None, False),
        (
            400,
            _google(400, "FAILED_PRECONDITION", "User location is not supported"),
            400,
            None,
            False,
        ),
        (
            400,
            _google(
                400,
                "INVALID_ARGUMENT",
                "The input token count (2000000) exceeds the maximum number of tokens allowed "
                "(1048576).",
            ),
            400,
            "context_length_exceeded",
            False,
        ),
        (
            400,
            _google(400, "INVALID_ARGUMENT", "API key not valid.", KEY_INVALID),
            502,
            "upstream_authentication_error",
            False,
        ),
        (
            403,
            _google(403, "PERMISSION_DENIED", "Permission denied"),
            502,
            "upstream_authentication_error",
            False,
        ),
        (
            401,
            _google(401, "UNAUTHENTICATED", "Missing credential"),
            502,
            "upstream_authentication_error",
            False,
        ),
        (
            404,
            _google(404, "NOT_FOUND", "models/gemini-9 is not found"),
            404,
            "model_not_found",
            False,
        ),
        (
            429,
            _google(429, "RESOURCE_EXHAUSTED", "Quota exceeded", RETRY),
            429,
            "rate_limit_exceeded",
            True,
        ),
        (
            500,
            _google(500, "INTERNAL", "An internal error has occurred."),
            500,
            "server_error",
            True,
        ),
        (503, _google(503, "UNAVAILABLE", "The model is overloaded."), 503, "server_error", True),
        (504, _google(504, "DEADLINE_EXCEEDED", "Deadline expired"), 504, "server_error", True),
        (502, b"<html>Bad Gateway</html>", 502, "server_error", True),
    ],
)
def test_gemini_errors_map_to_ours(
    status: int, body: bytes, ours: int, code: str | None, retryable: bool
) -> None:
    error = CODEC.parse_error(status, {}, body, now=0.0)
    assert (error.status_code, error.code, error.retryable) == (ours, code, retryable)
    assert error.message.startswith("Gemini")
    types = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}
    assert error.type == types.get(ours, "server_error")


def test_retry_delay_becomes_retry_after_and_the_header_wins() -> None:
    body = _google(429, "RESOURCE_EXHAUSTED", "Quota exceeded", RETRY)
    error = CODEC.parse_error(429, {}, body, now=0.0)
    assert error.retry_after == 12.0 and error.headers == {"retry-after": "12"}
    assert error.type == "rate_limit_error"
    error = CODEC.parse_error(429, {"retry-after": "3"}, body, now=0.0)
    assert error.retry_after == 3.0 and error.headers == {"retry-after": "3"}
    array = b"[" + _google(503, "UNAVAILABLE", "overloaded") + b"]"
    assert CODEC.parse_error(503, {}, array, now=0.0).message == "Gemini: overloaded"
    assert CODEC.parse_error(400, {}, _google(400, "INVALID_ARGUMENT", "x"), now=0.0).headers == {}


def test_a_mid_stream_error_without_a_code_uses_its_status() -> None:
    frame = b'data: {"error": {"message": "busy", "status": "UNAVAILABLE"}}\r\n\r\n'
    with pytest.raises(UpstreamStatusError) as info:
        GeminiStreamDecoder(context()).feed(frame)
    assert (info.value.status_code, info.value.code) == (503, "server_error")


# -- the fake provider ---------------------------------------------------------------------------


def exchange(
    fake: FakeGemini, model: str, items: list[dict[str, Any]], body: dict[str, Any], *, stream: bool
) -> dict[str, Any]:
    """One request through the codec to the fake and its answer back, as the gateway would."""
    built = CODEC.build_request(
        deployment(model), BridgeInput(body=body, items=items), stream=stream, created_at=1
    )
    request = built.request
    path = request.url.removeprefix("https://gem.test") + (
        f"?{urlencode(request.params)}" if request.params else ""
    )
    reply = fake.handle("POST", path, dict(request.headers), body_of(request))
    if reply.status != 200:
        raise CODEC.parse_error(reply.status, reply.headers, b"".join(reply.chunks), now=0.0)
    decoder = CODEC.stream_decoder(built.context) if stream else CODEC.body_decoder(built.context)
    events: list[Any] = []
    for chunk in reply.chunks:
        events += decoder.feed(chunk)
    return fold(events + decoder.close())


THINK_CALL = 'think: check the weather first | call: get_weather {"city": "Oslo"}; get_time {}'


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "body"])
@pytest.mark.parametrize("model", [GEMINI_3, "gemini-2.5-flash"])
def test_the_fake_and_the_codec_hold_a_signed_conversation(stream: bool, model: str) -> None:
    fake = FakeGemini()
    body = {"tools": TOOLS, "reasoning": {"effort": "low", "summary": "auto"}}
    first_items = [user(THINK_CALL)]
    first = exchange(fake, model, first_items, body, stream=stream)
    kinds = [i["type"] for i in first["output"]]
    assert kinds == ["reasoning", "function_call", "function_call"]
    assert first["output"][0]["summary"] == [
        {"type": "summary_text", "text": "check the weather first"}
    ]
    assert first["usage"]["output_tokens_details"]["reasoning_tokens"] == 4
    outputs = [
        output(i["call_id"], "fine") for i in first["output"] if i["type"] == "function_call"
    ]
    items = [*first_items, *first["output"], *outputs, user("think: wrap up | say: all fine")]
    second = exchange(fake, model, items, body, stream=stream)
    assert [i["type"] for i in second["output"]] == ["reasoning", "message", "reasoning"]
    assert second["output"][1]["content"][0]["text"] == "all fine"
    sent_text = orjson.dumps(fake.requests[-1]).decode()
    assert all(sig in sent_text for sig in fake.issued_signatures[:1])
    # And the text's signature of the second answer is accepted on a third turn.
    third = exchange(
        fake, model, [*items, *second["output"], user("say: bye")], body, stream=stream
    )
    assert third["output"][0]["content"][0]["text"] == "bye"


def test_the_fake_refuses_what_gemini_refuses() -> None:
    fake = FakeGemini()
    first = exchange(
        fake, GEMINI_3, [user('call: get_weather {"city": "Rome"}')], {"tools": TOOLS}, stream=False
    )
    [made] = first["output"][1:]
    follow = [user("x"), *first["output"], output(made["call_id"]), user("say: ok")]
    assert exchange(fake, GEMINI_3, follow, {"tools": TOOLS}, stream=True)["status"] == "completed"
    # Without the reasoning item the codec sends the placeholder, which Gemini 3 accepts.
    assert (
        exchange(fake, GEMINI_3, [follow[0], *follow[2:]], {"tools": TOOLS}, stream=False)["status"]
        == "completed"
    )
    forged = reasoning(
        {"part": "function_call", "call_id": made["call_id"], "signature": "Zm9yZ2Vk"}
    )
    with pytest.raises(UpstreamStatusError, match="Corrupted thought signature") as info:
        exchange(fake, GEMINI_3, [follow[0], forged, *follow[2:]], {"tools": TOOLS}, stream=False)
    assert info.value.status_code == 400
    with pytest.raises(UpstreamStatusError, match="responseMimeType"):
        exchange(fake, GEMINI_3, [user("json: answer")], {}, stream=False)
    answer = exchange(
        fake,
        GEMINI_3,
        [user("json: answer")],
        {"text": {"format": {"type": "json_object"}}},
        stream=True,
    )
    assert orjson.loads(answer["output"][0]["content"][0]["text"]) == {"answer": 42}


def test_the_fake_checks_signatures_calls_and_auth_on_the_wire() -> None:
    fake = FakeGemini()
    path = f"/v1beta/models/{GEMINI_3}:generateContent"
    unsigned: dict[str, Any] = {
        "contents": [
            {"role": "user", "parts": [{"text": "x"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "f", "response": {"output": ""}}}],
            },
        ]
    }
    reply = fake.handle("POST", path, {"x-goog-api-key": "k"}, orjson.dumps(unsigned))
    error = orjson.loads(b"".join(reply.chunks))["error"]
    assert (reply.status, error["status"]) == (400, "INVALID_ARGUMENT")
    assert "missing a `thought_signature`" in error["message"]
    signed_call = {
        "functionCall": {"name": "f", "args": {}},
        "thoughtSignature": PLACEHOLDER_SIGNATURE,
    }
    unanswered = {
        "contents": [
            unsigned["contents"][0],
            {"role": "model", "parts": [signed_call]},
            {"role": "user", "parts": [{"text": "y"}]},
        ]
    }
    reply = fake.handle("POST", path, {"x-goog-api-key": "k"}, orjson.dumps(unanswered))
    assert reply.status == 400 and b"number of function response parts" in reply.chunks[0]
    reply = fake.handle(
        "POST",
        path,
        {},
        orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "say: x"}]}]}),
    )
    assert (
        reply.status == 401
        and orjson.loads(reply.chunks[0])["error"]["status"] == "UNAUTHENTICATED"
    )
    both = {
        "contents": [{"parts": [{"text": "x"}]}],
        "generationConfig": {"thinkingConfig": {"thinkingBudget": 1, "thinkingLevel": "LOW"}},
    }
    assert fake.handle("POST", path, {"x-goog-api-key": "k"}, orjson.dumps(both)).status == 400
    system = {"contents": [{"role": "system", "parts": [{"text": "x"}]}]}
    assert fake.handle("POST", path, {"x-goog-api-key": "k"}, orjson.dumps(system)).status == 400
    assert len(fake.requests) == len(fake.paths) == len(fake.headers) == 5


def test_the_fake_streams_words_and_serves_its_faults() -> None:
    fake = FakeGemini()
    items = [user("say: a b c d e f")]
    response = exchange(fake, "gemini-2.5-flash", items, {}, stream=True)
    assert response["output"][0]["content"][0]["text"] == "a b c d e f"
    assert response["usage"]["input_tokens"] == 7 and response["usage"]["output_tokens"] == 6
    assert fake.paths[-1] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    fake.faults.extend(
        [
            Fault(status=429, headers={"retry-after": "3"}),
            Fault(malformed=True),
            Fault(reset_after=2, stall=1.5),
        ]
    )
    with pytest.raises(UpstreamStatusError) as info:
        exchange(fake, "gemini-2.5-flash", items, {}, stream=True)
    assert (info.value.status_code, info.value.retry_after) == (429, 3.0)
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        exchange(fake, "gemini-2.5-flash", items, {}, stream=True)
    built = build(items=items, model="gemini-2.5-flash", stream=True)
    reply = fake.handle(
        "POST",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"x-goog-api-key": "k"},
        body_of(built.request),
    )
    assert (reply.reset_after, reply.stall, len(reply.chunks)) == (2, 1.5, 6)


@pytest.mark.parametrize(
    ("directive", "status", "reason"),
    [
        ("long: one two three", "incomplete", "max_output_tokens"),
        ("filter: x", "incomplete", "content_filter"),
    ],
)
def test_the_fake_cuts_off_and_filters(directive: str, status: str, reason: str) -> None:
    response = exchange(FakeGemini(), GEMINI_3, [user(directive)], {}, stream=True)
    assert (response["status"], response["incomplete_details"]) == (status, {"reason": reason})


def test_the_fake_fails_mid_stream_with_a_gemini_error_chunk() -> None:
    with pytest.raises(UpstreamStatusError) as info:
        exchange(FakeGemini(), GEMINI_3, [user("fail: some words first")], {}, stream=True)
    assert (info.value.status_code, info.value.code) == (500, "server_error")
