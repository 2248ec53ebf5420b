"""The Chat Completions bridge: request mapping and refusals, chat chunks (split anywhere) and
bodies as canonical events, provider errors, and the fake server it is tested against."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate.codecs._bridge import (
    BridgeCodec,
    BridgeInput,
    BuiltRequest,
    conversation_items,
)
from sluicegate.codecs._emitter import (
    BridgeContext,
    seal_reasoning,
)
from sluicegate.codecs._lifecycle import StreamTracker
from sluicegate.codecs._registry import bridge_codec
from sluicegate.codecs.chat_completions import (
    CHAT_RULES,
    CODEC,
    ChatRules,
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

from .bridge_fakes import Fault, Reply, body_of
from .conformance import assert_split_invariant, chunkings
from .conftest import fixture_bytes
from .fake_chat import FakeChat
from .sdk import sdk_event, sdk_response

CREATED_AT = 1741570000
API_BASE = "http://chat.test/v1"


def deployment(
    provider: str = "chat",
    model: str = "llama-3.3-70b",
    *,
    model_info: dict[str, Any] | None = None,
    key: str | None = "sk-provider",
) -> Deployment:
    return Deployment(
        id="d1",
        model_name="m",
        provider=provider,
        model=model,
        api_base=API_BASE,
        api_key=Secret(key) if key is not None else None,
        extra_headers={"x-static": "1"},
        model_info=model_info or {},
    )


def build(
    input: Any = "hi",
    *,
    provider: str = "chat",
    model: str = "llama-3.3-70b",
    stream: bool = False,
    drop: bool = False,
    model_info: dict[str, Any] | None = None,
    **body: Any,
) -> BuiltRequest:
    request = BridgeInput(body=body, items=conversation_items([], input), drop_params=drop)
    return CODEC.build_request(
        deployment(provider, model, model_info=model_info),
        request,
        stream=stream,
        created_at=CREATED_AT,
    )


def sent(built: BuiltRequest) -> dict[str, Any]:
    payload: dict[str, Any] = orjson.loads(body_of(built.request))
    return payload


def refused(**kwargs: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        build(**kwargs)
    return info.value


def test_every_chat_provider_is_bridged_by_this_codec() -> None:
    codec: BridgeCodec = CODEC  # the contract, checked by mypy
    for provider in ("chat", "openai_chat", "hosted_vllm", "ollama_chat", "groq", "mistral"):
        assert bridge_codec(provider) is codec
    assert not codec.inline_remote_media


# -- the request: messages -------------------------------------------------------------------------


def test_instructions_come_first_and_system_items_stay_in_place() -> None:
    payload = sent(
        build(
            [
                {"role": "user", "content": "one"},
                {"role": "system", "content": "mid-system"},
                {"role": "developer", "content": "mid-developer"},
                {"role": "user", "content": "two"},
            ],
            instructions="Be brief.",
        )
    )
    assert payload["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "system", "content": "mid-system"},
        {"role": "system", "content": "mid-developer"},  # compatible servers reject developer
        {"role": "user", "content": "two"},
    ]
    assert payload["model"] == "llama-3.3-70b"


def test_openai_keeps_developer_and_its_reasoning_models_take_developer_instructions() -> None:
    item = [{"role": "developer", "content": "dev"}]
    gpt4 = sent(build(item, provider="openai_chat", model="gpt-4.1", instructions="I"))
    assert [m["role"] for m in gpt4["messages"]] == ["system", "developer"]
    gpt5 = sent(build(item, provider="openai_chat", model="gpt-5.4", instructions="I"))
    assert [m["role"] for m in gpt5["messages"]] == ["developer", "developer"]
    chat = sent(build(item, provider="openai_chat", model="gpt-5-chat-latest", instructions="I"))
    assert [m["role"] for m in chat["messages"]] == ["system", "developer"]


def test_instructions_as_items_are_mapped_like_input() -> None:
    payload = sent(build("q", instructions=[{"role": "system", "content": "from a template"}]))
    assert payload["messages"] == [
        {"role": "system", "content": "from a template"},
        {"role": "user", "content": "q"},
    ]


def test_text_parts_and_images_by_https_and_data_url() -> None:
    payload = sent(
        build(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "https://x.test/a.png"},
                        {
                            "type": "input_image",
                            "image_url": "data:image/png;base64,iVBORw0KGgo=",
                            "detail": "original",
                        },
                        {
                            "type": "input_image",
                            "image_url": "https://x.test/b.png",
                            "detail": "low",
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "a"},
                        {"type": "input_text", "text": "b"},
                    ],
                },
            ]
        )
    )
    assert payload["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
                },
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/b.png", "detail": "low"},
                },
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]


def test_an_image_that_is_no_url_is_invalid() -> None:
    error = refused(
        input=[{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]
    )
    assert error.param == "input[0].content[0].image_url"


PDF = {
    "type": "input_file",
    "filename": "a.pdf",
    "file_data": "data:application/pdf;base64,JVBERi0=",
}


def test_pdfs_go_to_openai_as_file_parts() -> None:
    bare = {"type": "input_file", "filename": "b.pdf", "file_data": "JVBERi0="}
    by_id = {"type": "input_file", "file_id": "file-123"}
    image_by_id = {"type": "input_image", "file_id": "file-456"}
    payload = sent(
        build(
            [{"role": "user", "content": [PDF, bare, by_id, image_by_id]}],
            provider="openai_chat",
            model="gpt-4.1",
        )
    )
    assert payload["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": PDF["file_data"], "filename": "a.pdf"}},
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "b.pdf"},
        },
        {"type": "file", "file": {"file_id": "file-123"}},
        {"type": "file", "file": {"file_id": "file-456"}},
    ]


def test_files_are_refused_by_compatible_servers_or_dropped() -> None:
    content = [{"type": "input_text", "text": "read"}, PDF, {"type": "input_image", "file_id": "f"}]
    error = refused(input=[{"role": "user", "content": content}])
    assert (error.param, error.code) == ("input[0].content[1]", "unsupported_parameter")
    built = build([{"role": "user", "content": content}], drop=True)
    assert sent(built)["messages"] == [{"role": "user", "content": "read"}]
    assert built.context.dropped == ("input[0].content[1]", "input[0].content[2].file_id")


def test_file_urls_have_no_chat_form() -> None:
    part = {"type": "input_file", "file_url": "https://x.test/a.pdf"}
    error = refused(
        input=[{"role": "user", "content": [part]}], provider="openai_chat", model="gpt-4.1"
    )
    assert error.param == "input[0].content[0].file_url"


def test_assistant_replay_with_a_refusal() -> None:
    replay = [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "output_text", "text": "Part one. ", "annotations": []},
                {"type": "refusal", "refusal": "No more."},
            ],
        }
    ]
    compat = sent(build(replay))["messages"]
    assert compat == [{"role": "assistant", "content": "Part one. No more."}]
    openai = sent(build(replay, provider="openai_chat", model="gpt-4.1"))["messages"]
    assert openai == [{"role": "assistant", "content": "Part one. ", "refusal": "No more."}]


def call(
    call_id: str, name: str = "get_weather", arguments: str = '{"city":"Paris"}'
) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def output(call_id: str, out: Any = "18C") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": out}


def test_calls_merge_into_one_assistant_message_and_outputs_become_tool_messages() -> None:
    foreign = seal_reasoning("anthropic", "claude", {"blocks": []})
    items = [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": "Checking."},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": foreign},
        call("call_1"),
        call("call_2", "get_time", "{}"),
        output("call_1"),
        output("call_2", [{"type": "input_text", "text": "12:00"}]),
        {"role": "assistant", "content": "Done."},
        call("call_3"),
        output("call_3", []),
    ]
    built = build(items)
    assert sent(built)["messages"] == [
        {"role": "user", "content": "weather and time?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
        {
            "role": "assistant",
            "content": "Done.",
            "tool_calls": [
                {
                    "id": "call_3",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_3", "content": ""},
    ]
    assert built.context.dropped == ()  # reasoning items are not an error: Chat has none


def test_a_call_after_a_user_message_opens_its_own_assistant_message() -> None:
    messages = sent(build([{"role": "user", "content": "x"}, call("c1")]))["messages"]
    assert messages[1] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }


def test_images_in_a_tool_output_are_refused_naming_the_item_or_dropped() -> None:
    parts = [
        {"type": "input_text", "text": "see"},
        {"type": "input_image", "image_url": "https://x.test/i.png"},
    ]
    items = [call("c1"), output("c1", parts)]
    error = refused(input=items)
    assert error.param == "input[1]"
    built = build(items, drop=True)
    assert sent(built)["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "see"}
    assert built.context.dropped == ("input[1]",)


def test_items_chat_cannot_carry_are_refused() -> None:
    assert refused(input=[{"type": "item_reference", "id": "msg_1"}]).param == "input"
    shell = {"type": "local_shell_call", "call_id": "c", "status": "completed", "action": {}}
    assert refused(input=[{"role": "user", "content": "x"}, shell]).param == "input[1]"
    assert refused(input=[{"role": "critic", "content": "x"}]).param == "input[0].role"
    bad_call = {"type": "function_call", "name": "f", "arguments": "{}"}
    assert refused(input=[bad_call]).param == "input[0]"
    assert (
        refused(input=[{"type": "function_call_output", "output": "x"}]).param == "input[0].call_id"
    )


def test_arguments_that_are_not_a_string_are_sent_as_json() -> None:
    item = {"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}
    [message] = sent(build([item]))["messages"]
    assert message["tool_calls"][0]["function"]["arguments"] == '{"a":1}'


@given(arguments=st.text())
def test_replayed_arguments_reach_the_provider_unchanged(arguments: str) -> None:
    [message] = sent(build([call("c", arguments=arguments)]))["messages"]
    assert message["tool_calls"][0]["function"]["arguments"] == arguments


# -- the request: tools ----------------------------------------------------------------------------

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
    {"type": "function", "name": "get_time", "parameters": None, "strict": None},
]
CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        (
            {"type": "function", "name": "get_time"},
            {"type": "function", "function": {"name": "get_time"}},
        ),
    ],
)
def test_tools_and_tool_choice(choice: Any, expected: Any) -> None:
    payload = sent(build(tools=TOOLS, tool_choice=choice, parallel_tool_calls=False))
    assert payload["tools"] == CHAT_TOOLS
    assert payload.get("tool_choice") == expected
    assert payload["parallel_tool_calls"] is False


@pytest.mark.parametrize("mode", ["auto", "required"])
def test_allowed_tools_is_native_on_openai_and_a_filtered_list_elsewhere(mode: str) -> None:
    choice = {
        "type": "allowed_tools",
        "mode": mode,
        "tools": [{"type": "function", "name": "get_time"}],
    }
    compat = sent(build(tools=TOOLS, tool_choice=choice))
    assert compat["tools"] == CHAT_TOOLS[1:]
    assert compat["tool_choice"] == mode
    openai = sent(build(tools=TOOLS, tool_choice=choice, provider="openai_chat", model="gpt-4.1"))
    assert openai["tools"] == CHAT_TOOLS
    assert openai["tool_choice"] == {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": mode,
            "tools": [{"type": "function", "function": {"name": "get_time"}}],
        },
    }


def test_without_tools_no_tool_choice_or_parallel_flag_is_sent() -> None:
    payload = sent(build(tool_choice="none", parallel_tool_calls=True))
    assert "tools" not in payload and "tool_choice" not in payload
    assert "parallel_tool_calls" not in payload


def test_forcing_an_unknown_function_is_invalid() -> None:
    error = refused(tools=TOOLS, tool_choice={"type": "function", "name": "nope"})
    assert error.param == "tool_choice.name"


# -- the request: generation controls --------------------------------------------------------------


def test_max_output_tokens_goes_where_the_upstream_reads_it() -> None:
    assert sent(build(max_output_tokens=64))["max_tokens"] == 64
    openai = sent(build(max_output_tokens=64, provider="openai_chat", model="gpt-4.1"))
    assert openai["max_completion_tokens"] == 64 and "max_tokens" not in openai


def test_sampling_parameters_pass_and_reasoning_models_refuse_them() -> None:
    payload = sent(build(temperature=0.2, top_p=0.9))
    assert (payload["temperature"], payload["top_p"]) == (0.2, 0.9)
    error = refused(temperature=0.2, provider="openai_chat", model="o3")
    assert (error.param, error.code) == ("temperature", "unsupported_parameter")
    assert refused(top_p=0.5, provider="openai_chat", model="o3").param == "top_p"
    built = build(temperature=0.2, top_p=0.5, provider="openai_chat", model="o3", drop=True)
    assert "temperature" not in sent(built) and "top_p" not in sent(built)
    assert built.context.dropped == ("temperature", "top_p")


def test_reasoning_effort_per_provider_and_model() -> None:
    reasoning = {"effort": "low", "summary": "auto"}
    assert sent(build(reasoning=reasoning))["reasoning_effort"] == "low"
    assert (
        sent(build(reasoning=reasoning, provider="openai_chat", model="o3"))["reasoning_effort"]
        == "low"
    )
    for provider, model in [
        ("openai_chat", "gpt-4.1"),
        ("mistral", "mistral-large"),
        ("xai", "grok-4"),
    ]:
        error = refused(reasoning=reasoning, provider=provider, model=model)
        assert error.param == "reasoning.effort"
    # model_info says what the table cannot know (a reasoning model behind a strict server)
    opted_in = build(
        reasoning=reasoning,
        provider="mistral",
        model="magistral",
        model_info={"reasoning_effort": True},
    )
    assert sent(opted_in)["reasoning_effort"] == "low"
    assert build(reasoning=reasoning).context.summaries


def test_structured_output_formats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {
        "type": "json_schema",
        "name": "answer",
        "schema": schema,
        "strict": True,
        "description": None,
    }
    assert sent(build(text={"format": fmt}))["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert sent(build(text={"format": {"type": "json_object"}}))["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in sent(build(text={"format": {"type": "text"}}))
    error = refused(text={"format": fmt}, provider="deepseek", model="deepseek-chat")
    assert error.param == "text.format"
    error = refused(text={"format": {"type": "grammar"}})
    assert (error.param, error.code) == ("text.format.type", "unsupported_value")


def test_logprobs_are_asked_for_where_the_server_has_them() -> None:
    include = ["message.output_text.logprobs"]
    payload = sent(build(include=include, top_logprobs=3))
    assert (payload["logprobs"], payload["top_logprobs"]) == (True, 3)
    assert "logprobs" not in sent(build(top_logprobs=3))  # without the include: not asked
    error = refused(
        include=["reasoning.encrypted_content", *include], provider="groq", model="llama"
    )
    assert error.param == "include[1]"


def test_openai_only_fields() -> None:
    fields: dict[str, Any] = {
        "text": {"verbosity": "low"},
        "service_tier": "flex",
        "prompt_cache_key": "k",
        "safety_identifier": "u-hash",
        "user": "u1",
        "metadata": {"a": "b"},
        "store": False,
    }
    openai = sent(build(provider="openai_chat", model="gpt-4.1", **fields))
    assert {
        k: openai.get(k)
        for k in ("verbosity", "service_tier", "prompt_cache_key", "safety_identifier", "user")
    } == {
        "verbosity": "low",
        "service_tier": "flex",
        "prompt_cache_key": "k",
        "safety_identifier": "u-hash",
        "user": "u1",
    }
    assert "metadata" not in openai and "store" not in openai  # the gateway's (docs/bridges.md §3)
    assert refused(text={"verbosity": "low"}).param == "text.verbosity"
    assert refused(service_tier="flex").param == "service_tier"
    compat = sent(
        build(
            text={"verbosity": "medium"},
            service_tier="auto",
            prompt_cache_key="k",
            safety_identifier="u-hash",
        )
    )
    assert compat == {
        "model": "llama-3.3-70b",
        "messages": [{"role": "user", "content": "hi"}],
        "user": "u-hash",
    }
    assert "user" not in sent(build(provider="mistral", model="mistral-large", user="u1"))


def test_what_no_bridge_has_is_refused_naming_it_or_dropped_and_listed() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [*TOOLS, {"type": "web_search"}]}, "tools[2]"),
        ({"tools": [{"type": "mcp", "server_label": "docs"}]}, "tools[0]"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["file_search_call.results"]}, "include[0]"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"tool_choice": {"type": "web_search_preview"}, "tools": TOOLS}, "tool_choice"),
    ]
    for body, param in cases:
        error = refused(**body)
        assert (error.param, error.code) == (param, "unsupported_parameter")
        assert error.status_code == 400
    built = build(
        drop=True, truncation="auto", tools=[{"type": "web_search"}], text={"verbosity": "high"}
    )
    assert built.context.dropped == ("truncation", "tools[0]", "text.verbosity")
    assert "tools" not in sent(built) and "verbosity" not in sent(built)


def test_unknown_top_level_fields_are_refused_by_name_or_dropped_and_never_sent() -> None:
    body = {"client_metadata": {"originator": "cli"}, "fancy_option": True, "nulled": None}

    def with_unknown(drop: bool) -> BuiltRequest:
        request = BridgeInput(
            body=body,
            items=conversation_items([], "hi"),
            drop_params=drop,
            unknown_params=tuple(body),
        )
        return CODEC.build_request(deployment(), request, stream=False, created_at=CREATED_AT)

    with pytest.raises(InvalidRequestError) as info:
        with_unknown(False)
    assert (info.value.param, info.value.code) == ("client_metadata", "unsupported_parameter")
    assert "Unknown parameter 'client_metadata'" in info.value.message
    built = with_unknown(True)
    # A null asks for nothing: neither refused nor listed.
    assert built.context.dropped == ("client_metadata", "fancy_option")
    assert set(sent(built)) == {"model", "messages"}


def test_unknown_input_items_and_parts_are_refused_naming_their_path_or_dropped() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_x"}]},
        {"type": "brand_new_item", "id": "bn_1"},
        call("c1"),
        output("c1", [{"type": "input_text", "text": "ok"}, {"type": "output_x"}]),
    ]
    assert refused(input=items).param == "input[0].content[1]"
    assert refused(input=items[1:]).param == "input[0]"
    assert refused(input=items[2:]).param == "input[1].output[1]"
    built = build(items, drop=True)
    assert built.context.dropped == ("input[0].content[1]", "input[1]", "input[3].output[1]")
    assert sent(built)["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "ok"}
    error = refused(input=[call("c1"), output("c1", {"text": "not a list"})])
    assert (error.param, error.code) == ("input[1].output", "invalid_type")


# -- the request: transport ------------------------------------------------------------------------


def test_url_headers_query_and_extra_body_merged_last() -> None:
    request = BridgeInput(
        body={"temperature": 0.5},
        items=conversation_items([], "hi"),
        extra_body={"temperature": 0.1, "top_k": 20},
        extra_headers={"x-trace": "t"},
        extra_query={"q": "1"},
    )
    built = CODEC.build_request(deployment(), request, stream=True, created_at=CREATED_AT)
    upstream = built.request
    assert (upstream.method, upstream.url) == ("POST", f"{API_BASE}/chat/completions")
    assert upstream.params == {"q": "1"}
    assert upstream.headers["authorization"] == "Bearer sk-provider"
    assert upstream.headers["x-static"] == "1" and upstream.headers["x-trace"] == "t"
    assert upstream.headers["accept"] == "text/event-stream"
    payload = sent(built)
    assert payload["temperature"] == 0.1 and payload["top_k"] == 20
    assert payload["stream"] is True
    assert payload["stream_options"] == {"include_usage": True}
    assert built.context.created_at == CREATED_AT and built.context.provider == "chat"


def test_no_key_no_authorization_and_no_stream_fields_unstreamed() -> None:
    request = BridgeInput(body={}, items=conversation_items([], "hi"))
    built = CODEC.build_request(deployment(key=None), request, stream=False, created_at=0)
    assert "authorization" not in built.request.headers
    assert "stream" not in sent(built) and "stream_options" not in sent(built)


def test_servers_without_stream_options_are_not_sent_them() -> None:
    payload = sent(build(provider="mistral", model="mistral-large", stream=True))
    assert payload["stream"] is True and "stream_options" not in payload


def test_a_deployment_without_api_base_is_a_config_error() -> None:
    bare = Deployment(id="d", model_name="m", provider="chat", model="x", api_base=None)
    with pytest.raises(ConfigError):
        CODEC.build_request(bare, BridgeInput(body={}, items=[]), stream=False, created_at=0)


# -- the rules table -------------------------------------------------------------------------------


def test_the_longest_model_prefix_wins_and_unknown_providers_are_generic() -> None:
    assert (
        rules_for(deployment("openai_chat", "gpt-5-chat-latest"))
        == CHAT_RULES["openai_chat", "gpt-5-chat"]
    )
    assert (
        rules_for(deployment("openai_chat", "gpt-5.4-mini")) == CHAT_RULES["openai_chat", "gpt-5"]
    )
    assert rules_for(deployment("openai_chat", "gpt-4o")) == CHAT_RULES["openai_chat", ""]
    assert rules_for(deployment("lm_studio", "qwen")) == CHAT_RULES["chat", ""] == ChatRules()


def test_model_info_overrides_the_table_and_is_checked() -> None:
    rules = rules_for(
        deployment(
            model_info={
                "max_tokens_field": "max_completion_tokens",
                "logprobs": False,
                "mode": "chat",
            }
        )
    )
    assert rules.max_tokens_field == "max_completion_tokens" and not rules.logprobs
    for bad in ({"logprobs": "yes"}, {"max_tokens_field": "max_output"}, {"sampling": 1}):
        with pytest.raises(ConfigError) as info:
            rules_for(deployment(model_info=bad))
        assert info.value.param == f"model_info.{next(iter(bad))}"


# -- the answer: streams ---------------------------------------------------------------------------

_MINTED = re.compile(r"^(msg|fc|ctc|rs|call)_[0-9a-f]{48}$")


def anonymous(event: Any) -> Any:
    """An event as its wire dict, with the item IDs the emitter mints (fresh in every decoder)
    reduced to their prefix."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and _MINTED.match(value):
            return value[: value.index("_")]
        return value

    return walk(event.to_dict())


def context(*, summaries: bool = False, body: dict[str, Any] | None = None) -> BridgeContext:
    return BridgeContext(
        provider="chat",
        model="llama-3.3-70b",
        body=body or {},
        summaries=summaries,
        response_id="resp_raw1",
        created_at=CREATED_AT,
    )


def decode_stream(data: bytes, ctx: BridgeContext) -> list[Any]:
    """``data`` decoded whole, after checking that every other chunking decodes alike."""
    assert_split_invariant(lambda: CODEC.stream_decoder(ctx), data, normalize=anonymous)
    decoder = CODEC.stream_decoder(ctx)
    return decoder.feed(data) + decoder.close()


def folded(events: Sequence[Any]) -> dict[str, Any]:
    tracker = StreamTracker()
    tracker.observe_all(events)
    response: dict[str, Any] = tracker.fold().to_dict()
    return response


def stream_events(name: str, *, summaries: bool = False) -> tuple[list[Any], dict[str, Any]]:
    events = decode_stream(fixture_bytes(name), context(summaries=summaries))
    return events, folded(events)


def types(events: Sequence[Any]) -> list[str]:
    return [e.type.removeprefix("response.") for e in events]


MESSAGE = ["output_item.added", "content_part.added"]
CLOSE_MESSAGE = ["output_text.done", "content_part.done", "output_item.done"]


def usage(
    input: int, output: int, *, cached: int = 0, reasoning: int = 0, total: int | None = None
) -> dict[str, Any]:
    return {
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output if total is None else total,
    }


def test_text_stream() -> None:
    events, response = stream_events("chat_text.sse")
    assert types(events) == [
        "created",
        "in_progress",
        *MESSAGE,
        "output_text.delta",
        "output_text.delta",
        "output_text.delta",
        *CLOSE_MESSAGE,
        "completed",
    ]
    [message] = response["output"]
    assert message["content"] == [
        {
            "type": "output_text",
            "text": "Hi there! Ça va?\nParis is 🇫🇷.",
            "annotations": [],
            "logprobs": [],
        }
    ]
    assert (message["status"], response["status"]) == ("completed", "completed")
    assert response["usage"] == usage(19, 10, cached=3)
    assert response["id"] == "resp_raw1" and response["model"] == "llama-3.3-70b"
    assert response["completed_at"] == 1741570283  # the provider's clock, not before ours


def test_crlf_framing_decodes_the_same() -> None:
    ctx = context()
    lf = decode_stream(fixture_bytes("chat_text.sse"), ctx)
    crlf = decode_stream(fixture_bytes("chat_text.sse").replace(b"\n", b"\r\n"), ctx)
    assert list(map(anonymous, crlf)) == list(map(anonymous, lf))


FUNCTION_CALL = ["output_item.added"]
CLOSE_CALL = ["function_call_arguments.done", "output_item.done"]


def test_several_tool_calls_stream_their_arguments() -> None:
    events, response = stream_events("chat_tool_calls.sse")
    assert types(events) == [
        "created",
        "in_progress",
        *FUNCTION_CALL,
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        *CLOSE_CALL,
        *FUNCTION_CALL,
        "function_call_arguments.delta",
        *CLOSE_CALL,
        "completed",
    ]
    assert [(i["call_id"], i["name"], i["arguments"], i["status"]) for i in response["output"]] == [
        ("call_1", "get_weather", '{"city":"Paris"}', "completed"),
        ("call_2", "get_time", "{}", "completed"),
    ]
    assert response["usage"] == usage(82, 17)


def test_interleaved_tool_calls_fall_back_to_buffering() -> None:
    events, response = stream_events("chat_tool_calls_interleaved.sse")
    assert types(events) == [
        "created",
        "in_progress",
        *FUNCTION_CALL,
        "function_call_arguments.delta",
        "function_call_arguments.delta",  # the open call keeps streaming
        *CLOSE_CALL,
        *FUNCTION_CALL,
        "function_call_arguments.delta",  # the buffered one, whole
        *CLOSE_CALL,
        "completed",
    ]
    assert [(i["call_id"], i["arguments"]) for i in response["output"]] == [
        ("call_a", '{"city":"Paris"}'),
        ("call_b", '{"city":"Rome"}'),
    ]


def test_reasoning_text_becomes_the_summary_when_asked() -> None:
    events, response = stream_events("chat_reasoning.sse", summaries=True)
    assert types(events) == [
        "created",
        "in_progress",
        "output_item.added",
        "reasoning_summary_part.added",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.done",
        "reasoning_summary_part.done",
        "output_item.done",
        *MESSAGE,
        "output_text.delta",
        "output_text.delta",
        *CLOSE_MESSAGE,
        "completed",
    ]
    reasoning, message = response["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["summary"] == [{"type": "summary_text", "text": "The user wants the capital."}]
    assert "encrypted_content" not in reasoning  # Chat has no reasoning state to replay
    assert message["content"][0]["text"] == "Paris."
    # DeepSeek's top-level cache hits; reasoning tokens are part of the output tokens
    assert response["usage"] == usage(12, 30, cached=8, reasoning=22)


def test_reasoning_without_summaries_is_an_empty_reasoning_item() -> None:
    events, response = stream_events("chat_reasoning.sse")
    assert types(events)[:4] == ["created", "in_progress", "output_item.added", "output_item.done"]
    assert response["output"][0]["summary"] == []
    assert response["output"][1]["content"][0]["text"] == "Paris."


def test_ollama_reasoning_then_a_whole_tool_call() -> None:
    events, response = stream_events("chat_ollama_reasoning_call.sse", summaries=True)
    assert types(events) == [
        "created",
        "in_progress",
        "output_item.added",
        "reasoning_summary_part.added",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.done",
        "reasoning_summary_part.done",
        "output_item.done",
        *FUNCTION_CALL,
        "function_call_arguments.delta",
        *CLOSE_CALL,
        "completed",
    ]
    reasoning, function_call = response["output"]
    assert reasoning["summary"][0]["text"] == "Need weather for Paris."
    assert (function_call["call_id"], function_call["arguments"]) == (
        "call_k3c9x1",
        '{"city":"Paris"}',
    )
    assert response["usage"] == usage(150, 25)


def test_refusal_stream() -> None:
    events, response = stream_events("chat_refusal.sse")
    assert types(events) == [
        "created",
        "in_progress",
        *MESSAGE,
        "refusal.delta",
        "refusal.delta",
        "refusal.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ]
    assert response["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I'm sorry, I can't help with that."}
    ]


def test_content_filter_is_incomplete() -> None:
    events, response = stream_events("chat_content_filter.sse")
    assert types(events) == [
        "created",
        "in_progress",
        *MESSAGE,
        "output_text.delta",
        *CLOSE_MESSAGE,
        "incomplete",
    ]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "content_filter"}
    assert response["output"][0]["status"] == "incomplete"
    assert response["completed_at"] is None
    assert response["usage"] == usage(11, 3)


def test_length_cut_off_from_a_server_without_done_and_usage_on_the_finish_chunk() -> None:
    events, response = stream_events("chat_length.sse")
    assert types(events) == [
        "created",
        "in_progress",
        *MESSAGE,
        "output_text.delta",
        "output_text.delta",
        *CLOSE_MESSAGE,
        "incomplete",
    ]
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["content"][0]["text"] == "Once upon a time"
    assert response["usage"] == usage(5, 4)


def test_an_error_chunk_fails_the_response_after_what_came_before() -> None:
    data = fixture_bytes("chat_error.sse")
    expected: list[Any] | None = None
    for name, chunks in chunkings(data):
        decoder = CODEC.stream_decoder(context())
        events: list[Any] = []
        with pytest.raises(UpstreamStatusError) as info:
            for piece in chunks:
                events += decoder.feed(piece)
            events += decoder.close()
        assert (info.value.status_code, info.value.message) == (
            500,
            "the provider answered (mid-stream): The server had an error while processing "
            "your request. Sorry about that!",
        ), name
        expected = expected or list(map(anonymous, events))
        assert list(map(anonymous, events)) == expected, name
    assert types(events) == ["created", "in_progress", *MESSAGE, "output_text.delta"]
    # The pipeline ends it so: the tracker closes what is open, then response.failed.
    tracker = StreamTracker()
    tracker.observe_all(events)
    response = tracker.fail(info.value)[-1].to_dict()["response"]
    assert response["status"] == "failed"
    assert response["error"]["code"] == "server_error"
    assert response["output"][0]["content"][0]["text"] == "Partial"


def test_a_stream_cut_before_the_finish_fails() -> None:
    data = fixture_bytes("chat_text.sse")
    cut = data[: data.index(b'"finish_reason":"stop"')]
    cut = cut[: cut.rindex(b"data: ")]
    decoder = CODEC.stream_decoder(context())
    events = decoder.feed(cut)
    assert types(events)[-1] == "output_text.delta"
    with pytest.raises(UpstreamProtocolError, match="ended before"):
        decoder.close()


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]
    )
    return (
        b"data: "
        + orjson.dumps(
            {"id": "c", "object": "chat.completion.chunk", "created": 1, "choices": choices}
        )
        + b"\n\n"
    )


DONE = b"data: [DONE]\n\n"


def decode(data: bytes, ctx: BridgeContext | None = None) -> tuple[list[Any], dict[str, Any]]:
    events = decode_stream(data, ctx or context())
    return events, folded(events)


def test_done_ends_the_answer_even_without_a_finish_reason() -> None:
    _, response = decode(chunk({"content": "hi"}) + DONE + chunk({"content": "ignored"}))
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "hi"
    assert response["usage"] is None  # the server sent none: unknown, not zero


def test_compatible_servers_quirks_in_tool_call_fragments() -> None:
    """the Chat Completions reference: no index, id and name repeated on every fragment, parsed
    arguments, the name in a later fragment, and finish_reason "stop" despite calls."""
    data = b"".join(
        [
            chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": '{"a"'}}]}),
            chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": ":1}"}}]}),
            chunk({"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": {"b": 2}}}]}),
            chunk({"tool_calls": [{"index": 2, "function": {"arguments": "{}"}}]}),
            chunk({"tool_calls": [{"index": 2, "id": "c3", "function": {"name": "h"}}]}),
            chunk({"tool_calls": [{"function": {"arguments": " "}}]}),
            chunk({}, "stop"),
            DONE,
        ]
    )
    _, response = decode(data)
    assert [(i["call_id"], i["name"], i["arguments"]) for i in response["output"]] == [
        ("c1", "f", '{"a":1}'),
        ("c2", "g", '{"b":2}'),
        ("c3", "h", "{} "),
    ]
    assert response["status"] == "completed"


def test_a_call_without_an_id_gets_one() -> None:
    _, response = decode(
        chunk(
            {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]},
            "tool_calls",
        )
        + DONE
    )
    assert response["output"][0]["call_id"].startswith("call_")


def test_arguments_for_a_call_already_complete_are_a_protocol_error() -> None:
    data = b"".join(
        [
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}
                    ]
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"x"'}}]}),
        ]
    )
    decoder = CODEC.stream_decoder(context())
    events = decoder.feed(data)
    assert types(events)[-1] == "function_call_arguments.delta"
    with pytest.raises(UpstreamProtocolError, match="after it was complete"):
        decoder.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    calls=st.lists(st.dictionaries(st.text(), JSON_VALUES, max_size=4), min_size=1, max_size=3),
    data=st.data(),
)
def test_arguments_survive_any_fragmentation_and_interleaving(
    calls: list[dict[str, Any]], data: st.DataObject
) -> None:
    """However the arguments are cut, and however the calls' fragments interleave (each call
    announced in index order), every call comes out whole, in index order."""
    encoded = [json.dumps(arguments) for arguments in calls]
    pending: list[list[str]] = []
    for text in encoded:
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4)))
        pending.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    frames: list[bytes] = []
    announced = 0
    while any(pending):
        # the next call may be announced once the previous one was
        choices = [i for i, left in enumerate(pending) if left and i <= announced]
        index = data.draw(st.sampled_from(choices))
        fragment: dict[str, Any] = {
            "index": index,
            "function": {"arguments": pending[index].pop(0)},
        }
        if index == announced:
            fragment |= {"id": f"call_{index}", "type": "function"}
            fragment["function"]["name"] = f"f{index}"
            announced += 1
        frames.append(chunk({"tool_calls": [fragment]}))
    frames.append(chunk({}, "tool_calls") + DONE)
    decoder = CODEC.stream_decoder(context())
    events = decoder.feed(b"".join(frames)) + decoder.close()
    output = folded(events)["output"]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in output] == [
        (f"call_{i}", f"f{i}", text) for i, text in enumerate(encoded)
    ]


def test_property_tests_judge_behaviour_not_speed() -> None:
    """Regression: on a loaded 2-core machine the test above failed on hypothesis's 200 ms
    per-example deadline. The suite's profile (tests/conftest.py) sets none, and no "too slow"
    health check, for every property test."""
    profile = settings.default
    assert profile is not None
    assert profile.deadline is None
    assert HealthCheck.too_slow in profile.suppress_health_check


def test_a_call_that_never_got_a_name_is_a_protocol_error() -> None:
    decoder = CODEC.stream_decoder(context())
    decoder.feed(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"arguments": "{}"}}]}))
    with pytest.raises(UpstreamProtocolError, match="without a name"):
        decoder.feed(DONE)


def test_logprobs_ride_on_the_text_deltas_and_the_part() -> None:
    first = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    second = [{"token": "!", "logprob": -0.5, "bytes": [33], "top_logprobs": []}]
    data = (
        chunk({"content": "Hi"}, logprobs={"content": first})
        + chunk({"content": "!"}, logprobs={"content": second})
        + chunk({}, "stop")
        + DONE
    )
    events, response = decode(data)
    deltas = [e.to_dict() for e in events if e.type == "response.output_text.delta"]
    assert [d["logprobs"] for d in deltas] == [first, second]
    done = next(e.to_dict() for e in events if e.type == "response.output_text.done")
    assert done["logprobs"] == first + second
    assert response["output"][0]["content"][0]["logprobs"] == first + second


def test_choices_other_than_the_first_are_ignored() -> None:
    _, response = decode(
        chunk({"content": "a"}) + chunk({"content": "b"}, index=1) + chunk({}, "stop") + DONE
    )
    # chunk() puts its own index 0 first; index=1 overrides it
    assert response["output"][0]["content"][0]["text"] == "a"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (
            {"message": "Slow down", "type": "requests", "code": "rate_limit_exceeded"},
            429,
            "rate_limit_exceeded",
        ),
        ({"message": "Provider returned error", "code": 502}, 502, None),
        ({"message": "Overloaded", "type": "overloaded_error"}, 503, None),
        ("plain text error", 500, None),
    ],
)
def test_an_error_chunk_first_is_raised_as_the_providers_error(
    error: Any, status: int, code: str | None
) -> None:
    decoder = CODEC.stream_decoder(context())
    with pytest.raises(UpstreamStatusError) as info:
        decoder.feed(b"data: " + orjson.dumps({"error": error}) + b"\n\n")
    assert (info.value.status_code, info.value.code) == (status, code)


def test_vllm_flat_error_chunk_and_openrouter_error_finish() -> None:
    decoder = CODEC.stream_decoder(context())
    with pytest.raises(UpstreamStatusError) as info:
        decoder.feed(
            b'data: {"object":"error","message":"bad","type":"BadRequestError","code":400}\n\n'
        )
    assert info.value.status_code == 400
    decoder = CODEC.stream_decoder(context())
    assert types(decoder.feed(chunk({"content": ""}, "error"))) == ["created", "in_progress"]
    with pytest.raises(UpstreamStatusError) as info:
        decoder.close()
    assert info.value.status_code == 502


def test_malformed_chunk_is_a_protocol_error() -> None:
    decoder = CODEC.stream_decoder(context())
    with pytest.raises(UpstreamProtocolError, match="malformed stream chunk"):
        decoder.feed(b'data: {"id":"c","choi\n\n')


# -- the answer: bodies ----------------------------------------------------------------------------


def body_response(name: str, *, summaries: bool = False) -> tuple[list[Any], dict[str, Any]]:
    ctx = context(summaries=summaries)
    data = fixture_bytes(name)
    assert_split_invariant(lambda: CODEC.body_decoder(ctx), data, normalize=anonymous)
    decoder = CODEC.body_decoder(ctx)
    events = decoder.feed(data) + decoder.close()
    return events, folded(events)


def without_ids(response: dict[str, Any]) -> dict[str, Any]:
    return {
        **response,
        "output": [{k: v for k, v in i.items() if k != "id"} for i in response["output"]],
    }


@pytest.mark.parametrize(
    ("body", "stream", "summaries"),
    [
        ("chat_text.json", "chat_text.sse", False),
        ("chat_tool_calls.json", "chat_tool_calls.sse", False),
        ("chat_reasoning.json", "chat_reasoning.sse", True),
        ("chat_reasoning.json", "chat_reasoning.sse", False),
        ("chat_refusal.json", "chat_refusal.sse", False),
        ("chat_length.json", "chat_length.sse", False),
        ("chat_content_filter.json", "chat_content_filter.sse", False),
    ],
)
def test_a_body_folds_to_the_same_response_as_its_stream(
    body: str, stream: str, summaries: bool
) -> None:
    events, from_body = body_response(body, summaries=summaries)
    assert types(events)[:2] == ["created", "in_progress"]
    _, from_stream = stream_events(stream, summaries=summaries)
    # The body's ``created`` is its own, so completed_at differs (the provider's clock).
    assert without_ids(from_body) | {"completed_at": 0} == without_ids(from_stream) | {
        "completed_at": 0
    }


def test_an_error_body_and_a_body_without_choices() -> None:
    decoder = CODEC.body_decoder(context())
    decoder.feed(
        b'{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}'
    )
    with pytest.raises(UpstreamStatusError) as info:
        decoder.close()
    assert (info.value.status_code, info.value.code) == (429, "insufficient_quota")
    decoder = CODEC.body_decoder(context())
    decoder.feed(b'{"id":"x","object":"chat.completion"}')
    with pytest.raises(UpstreamProtocolError, match="without 'choices'"):
        decoder.close()


# -- custom tools ----------------------------------------------------------------------------------

PATCH = (
    "*** Begin Patch\n*** Update File: app.py\n@@ def greet():\n"
    '-    print("hi")\n+    print("h\u00e9llo \U0001f600\\t")\n*** End Patch\n'
)
PATCH_TOOL: dict[str, Any] = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /[\\s\\S]+/"},
}
CUSTOM_TOOLS: list[dict[str, Any]] = [PATCH_TOOL, TOOLS[0]]


def input_schema(built: BuiltRequest, index: int = 0) -> tuple[dict[str, Any], str]:
    """The function a custom tool became (without its input's description), and that
    description."""
    function: dict[str, Any] = sent(built)["tools"][index]["function"]
    described = function["parameters"]["properties"]["input"].pop("description")
    return function, described


def test_custom_tools_become_functions_of_one_string_argument() -> None:
    built = build(tools=CUSTOM_TOOLS, tool_choice={"type": "custom", "name": "apply_patch"})
    function, described = input_schema(built)
    assert function == {
        "name": "apply_patch",
        "description": "Edit files with a patch.",
        "parameters": {
            "type": "object",
            "properties": {"input": {"type": "string"}},
            "required": ["input"],
            "additionalProperties": False,
        },
    }
    assert "Lark grammar" in described and described.endswith("\nstart: /[\\s\\S]+/")
    payload = sent(built)
    assert payload["tools"][0]["type"] == "function"
    assert payload["tools"][1] == CHAT_TOOLS[0]
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    assert built.context.custom_tools == {"apply_patch"}


@pytest.mark.parametrize(
    ("fmt", "says"),
    [
        (None, "free-form text"),
        ({"type": "text"}, "free-form text"),
        ({"type": "grammar", "syntax": "regex", "definition": "^\\d+$"}, "regular expression"),
    ],
)
def test_custom_tool_formats_are_described_to_the_model(fmt: Any, says: str) -> None:
    tool = {"type": "custom", "name": "calc"} | ({"format": fmt} if fmt is not None else {})
    function, described = input_schema(build(tools=[tool]))
    assert says in described
    assert "description" not in function  # the tool had none
    if fmt is not None and fmt["type"] == "grammar":
        assert described.endswith("\n^\\d+$")


def test_allowed_tools_may_list_custom_tools() -> None:
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "custom", "name": "apply_patch"}],
    }
    compat = sent(build(tools=CUSTOM_TOOLS, tool_choice=choice))
    assert [t["function"]["name"] for t in compat["tools"]] == ["apply_patch"]
    assert compat["tool_choice"] == "required"
    openai = sent(
        build(tools=CUSTOM_TOOLS, tool_choice=choice, provider="openai_chat", model="gpt-4.1")
    )
    assert openai["tool_choice"]["allowed_tools"]["tools"] == [
        {"type": "function", "function": {"name": "apply_patch"}}
    ]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        # A choice names a tool of its own type.
        ({"tool_choice": {"type": "custom", "name": "get_weather"}}, "tool_choice.name", None),
        ({"tool_choice": {"type": "function", "name": "apply_patch"}}, "tool_choice.name", None),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "mode": "auto",
                    "tools": [{"type": "function", "name": "apply_patch"}],
                }
            },
            "tool_choice.tools[0].name",
            None,
        ),
        (
            {"tools": [PATCH_TOOL, {**TOOLS[0], "name": "apply_patch"}]},
            "tools[1].name",
            "invalid_value",
        ),
        ({"tools": [{"type": "custom"}]}, "tools[0].name", "missing_required_parameter"),
        (
            {"tools": [{**PATCH_TOOL, "format": {"type": "xml"}}]},
            "tools[0].format.type",
            "invalid_value",
        ),
        (
            {"tools": [{**PATCH_TOOL, "format": {"type": "grammar", "syntax": "lark"}}]},
            "tools[0].format.definition",
            "missing_required_parameter",
        ),
        (
            {
                "tools": [
                    {
                        **PATCH_TOOL,
                        "format": {"type": "grammar", "syntax": "ebnf", "definition": "x"},
                    }
                ]
            },
            "tools[0].format.syntax",
            "invalid_value",
        ),
    ],
)
def test_bad_custom_tools_and_choices_are_invalid(
    body: dict[str, Any], param: str, code: str | None
) -> None:
    error = refused(**({"tools": CUSTOM_TOOLS} | body))
    assert (error.status_code, error.param, error.code) == (400, param, code)


def test_custom_tool_calls_and_outputs_go_back_as_the_function_calls_they_were() -> None:
    items = [
        {"role": "user", "content": "patch it, and the weather?"},
        {
            "type": "custom_tool_call",
            "id": "ctc_1",
            "status": "completed",
            "call_id": "call_p1",
            "name": "apply_patch",
            "input": PATCH,
        },
        call("call_w1"),
        {"type": "custom_tool_call_output", "call_id": "call_p1", "output": "Done."},
        output("call_w1", [{"type": "input_text", "text": "18C"}]),
    ]
    messages = sent(build(items, tools=CUSTOM_TOOLS))["messages"]
    [patch, weather] = messages[1]["tool_calls"]
    assert patch["id"] == "call_p1" and patch["function"]["name"] == "apply_patch"
    assert orjson.loads(patch["function"]["arguments"]) == {"input": PATCH}
    assert weather["id"] == "call_w1"
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "call_p1", "content": "Done."},
        {"role": "tool", "tool_call_id": "call_w1", "content": "18C"},
    ]
    assert refused(input=[{**items[1], "input": None}]).param == "input[0].input"


CUSTOM_CALL_DELTAS = 6


def custom_context() -> BridgeContext:
    """The context the codec makes for a request with the custom tool."""
    return build(tools=CUSTOM_TOOLS).context


def check_with_sdk(events: Sequence[Any]) -> dict[str, Any]:
    for event in events:
        sdk_event(event.to_dict())
    response = folded(events)
    sdk_response(response)
    return response


def test_a_custom_tool_call_streams_its_decoded_input_beside_a_function_call() -> None:
    events = decode_stream(fixture_bytes("chat_custom_tool.sse"), custom_context())
    assert types(events) == [
        "created",
        "in_progress",
        *MESSAGE,
        "output_text.delta",
        "output_text.delta",
        *CLOSE_MESSAGE,
        "output_item.added",
        *["custom_tool_call_input.delta"] * CUSTOM_CALL_DELTAS,
        "custom_tool_call_input.done",
        "output_item.done",
        *FUNCTION_CALL,
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        *CLOSE_CALL,
        "completed",
    ]
    wire = [e.to_dict() for e in events]
    added = wire[9]["item"]
    assert added["type"] == "custom_tool_call" and added["input"] == ""
    deltas = [e["delta"] for e in wire if e["type"] == "response.custom_tool_call_input.delta"]
    assert "".join(deltas) == PATCH
    assert all(isinstance(d, str) and d for d in deltas)  # decoded text, never JSON
    [done] = [e for e in wire if e["type"] == "response.custom_tool_call_input.done"]
    assert (done["input"], done["item_id"], done["output_index"]) == (PATCH, added["id"], 1)
    response = check_with_sdk(events)
    _, patch, weather = response["output"]
    assert patch["id"].startswith("ctc_")
    assert {k: v for k, v in patch.items() if k != "id"} == {
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": "call_p1",
        "name": "apply_patch",
        "input": PATCH,
    }
    assert (weather["type"], weather["arguments"]) == ("function_call", '{"city":"Paris"}')
    assert response["usage"] == usage(140, 52)


def test_a_custom_tool_call_body_folds_to_the_same_response_as_its_stream() -> None:
    ctx = custom_context()
    data = fixture_bytes("chat_custom_tool.json")
    assert_split_invariant(lambda: CODEC.body_decoder(ctx), data, normalize=anonymous)
    decoder = CODEC.body_decoder(ctx)
    from_body = check_with_sdk(decoder.feed(data) + decoder.close())
    from_stream = folded(decode_stream(fixture_bytes("chat_custom_tool.sse"), ctx))
    assert without_ids(from_body) == without_ids(from_stream)


def test_custom_tool_arguments_not_of_the_functions_shape_are_the_input_as_they_came() -> None:
    # The model ignored the schema: its argument text is the input, sent at the end.
    start = {"index": 0, "id": "call_x", "type": "function"}
    data = (
        chunk({"tool_calls": [{**start, "function": {"name": "apply_patch", "arguments": ""}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"patch": '}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]})
        + chunk({}, "tool_calls")
        + DONE
    )
    events = decode_stream(data, custom_context())
    deltas = [e.to_dict()["delta"] for e in events if e.type.endswith("input.delta")]
    assert deltas == ['{"patch": "x"}']
    [item] = check_with_sdk(events)["output"]
    assert item["input"] == '{"patch": "x"}'


def test_a_custom_tool_call_cut_off_keeps_the_input_decoded_so_far() -> None:
    start = {"index": 0, "id": "call_x", "type": "function"}
    data = (
        chunk({"tool_calls": [{**start, "function": {"name": "apply_patch", "arguments": ""}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"input": "ab\\u00'}}]})
        + chunk({}, "length")
        + DONE
    )
    events = decode_stream(data, custom_context())
    response = check_with_sdk(events)
    assert response["status"] == "incomplete"
    [item] = response["output"]
    assert (item["type"], item["input"], item["status"]) == ("custom_tool_call", "ab", "incomplete")


# -- errors ----------------------------------------------------------------------------------------


def envelope(
    message: str, type: str | None = None, code: str | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


REFUSED = "the provider rejected the request"
ANSWERED = "the provider answered"
CREDENTIALS = "the provider rejected the gateway's credentials"
VLLM_OVERFLOW = orjson.dumps(
    {
        "object": "error",
        "message": "This model's maximum context length is 4096 tokens.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
)
FASTAPI_422 = orjson.dumps({"detail": [{"loc": ["body", "x"], "msg": "Extra inputs"}]})

#: status, body -> our status, code, retryable, message (docs/bridges.md §8, the Chat column)
ERROR_ROWS: list[tuple[int, bytes, int, str | None, bool, str]] = [
    (
        400,
        envelope("Bad", code="invalid_value"),
        400,
        "invalid_value",
        False,
        f"{REFUSED} (HTTP 400): Bad",
    ),
    (422, FASTAPI_422, 400, None, False, f"{REFUSED} (HTTP 422): Extra inputs"),
    (
        400,
        VLLM_OVERFLOW,
        400,
        "context_length_exceeded",
        False,
        f"{REFUSED} (HTTP 400): This model's maximum context length is 4096 tokens.",
    ),
    (
        400,
        envelope("Long", code="context_length_exceeded"),
        400,
        "context_length_exceeded",
        False,
        f"{REFUSED} (HTTP 400): Long",
    ),
    (
        401,
        envelope("Bad key", code="invalid_api_key"),
        502,
        "upstream_authentication_error",
        False,
        f"{CREDENTIALS} (HTTP 401): Bad key",
    ),
    (
        403,
        orjson.dumps({"detail": "Forbidden"}),
        502,
        "upstream_authentication_error",
        False,
        f"{CREDENTIALS} (HTTP 403): Forbidden",
    ),
    (
        404,
        envelope("No model x", code="model_not_found"),
        404,
        "model_not_found",
        False,
        f"{ANSWERED} (HTTP 404): No model x",
    ),
    (
        413,
        b"Request Entity Too Large",
        413,
        "request_too_large",
        False,
        f"{REFUSED} (HTTP 413): Request Entity Too Large",
    ),
    (
        429,
        envelope("Slow down", "requests", "rate_limit_exceeded"),
        429,
        "rate_limit_exceeded",
        True,
        f"{ANSWERED} (HTTP 429): Slow down",
    ),
    (
        429,
        envelope("No quota", "insufficient_quota", "insufficient_quota"),
        429,
        "insufficient_quota",
        False,
        f"{ANSWERED} (HTTP 429): No quota",
    ),
    (
        402,
        orjson.dumps({"error": {"message": "No credits", "code": 402}}),
        429,
        "insufficient_quota",
        False,
        f"{ANSWERED} (HTTP 402): No credits",
    ),
    (500, envelope("Oops", "server_error"), 500, None, True, f"{ANSWERED} (HTTP 500): Oops"),
    (
        503,
        b"<html>Service Unavailable</html>",
        503,
        None,
        True,
        f"{ANSWERED} (HTTP 503): <html>Service Unavailable</html>",
    ),
    (
        504,
        orjson.dumps({"error": "Gateway timeout"}),
        504,
        None,
        True,
        f"{ANSWERED} (HTTP 504): Gateway timeout",
    ),
    (408, b"", 504, None, True, f"{ANSWERED} (HTTP 408)"),
]
OUR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


@pytest.mark.parametrize(("status", "body", "ours", "code", "retryable", "message"), ERROR_ROWS)
def test_parse_error_rows_of_mapping_section_8(
    status: int, body: bytes, ours: int, code: str | None, retryable: bool, message: str
) -> None:
    error = CODEC.parse_error(status, {}, body, now=0.0)
    assert (error.status_code, error.code, error.retryable) == (ours, code, retryable)
    assert error.message == message
    assert error.type == OUR_TYPES.get(ours, "server_error")


def test_retry_after_is_passed_on_for_rate_limits_and_overload() -> None:
    limited = CODEC.parse_error(429, {"retry-after": "7"}, envelope("slow"), now=0.0)
    assert (limited.retry_after, limited.headers) == (7.0, {"retry-after": "7"})
    busy = CODEC.parse_error(503, {"retry-after-ms": "1500"}, b"", now=0.0)
    assert (busy.retry_after, busy.headers) == (1.5, {"retry-after": "2"})


# -- the fake server -------------------------------------------------------------------------------


def exchange(
    fake: FakeChat,
    input: Any,
    *,
    stream: bool = True,
    provider: str = "chat",
    model: str = "llama-3.3-70b",
    **body: Any,
) -> tuple[list[Any], dict[str, Any]]:
    """One request through the codec to the fake and back; the events and the folded
    Response (the provider's error status raised as ours)."""
    built = build(input, provider=provider, model=model, stream=stream, **body)
    upstream = built.request
    path = urlsplit(upstream.url).path
    reply = fake.handle("POST", path, dict(upstream.headers), body_of(upstream))
    if reply.status != 200:
        raise CODEC.parse_error(reply.status, reply.headers, b"".join(reply.chunks), now=0.0)
    make: Callable[[], Any] = (
        (lambda: CODEC.stream_decoder(built.context))
        if stream
        else (lambda: CODEC.body_decoder(built.context))
    )
    decoder = make()
    events = [e for piece in reply.chunks for e in decoder.feed(piece)] + decoder.close()
    return events, folded(events)


def test_fake_says_words_one_delta_each_and_counts_usage() -> None:
    fake = FakeChat()
    events, response = exchange(fake, "say: hello bridged world", instructions="Be brief.")
    assert [e.to_dict()["delta"] for e in events if e.type == "response.output_text.delta"] == [
        "hello",
        " bridged",
        " world",
    ]
    assert response["output"][0]["content"][0]["text"] == "hello bridged world"
    assert response["usage"] == usage(6, 3)  # "Be brief." + "say: hello bridged world"
    assert fake.paths == ["/v1/chat/completions"]
    assert fake.headers[0]["authorization"] == "Bearer sk-provider"
    assert fake.requests[0]["stream_options"] == {"include_usage": True}


def test_fake_thinks_then_calls_and_takes_the_next_turn_back() -> None:
    fake = FakeChat()
    first_input = 'think: check the weather | call: get_weather {"city": "Oslo"}; get_time {}'
    _, first = exchange(
        fake, first_input, tools=TOOLS, reasoning={"effort": "low", "summary": "auto"}
    )
    reasoning, weather, time = first["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "check the weather"}]
    assert (weather["name"], orjson.loads(weather["arguments"])) == (
        "get_weather",
        {"city": "Oslo"},
    )
    assert first["usage"]["output_tokens_details"]["reasoning_tokens"] == 3
    replay = [
        {"role": "user", "content": first_input},
        *first["output"],
        output(weather["call_id"], "cold"),
        output(time["call_id"], "noon"),
        {"role": "user", "content": "say: cold at noon"},
    ]
    _, second = exchange(fake, replay, stream=False, tools=TOOLS)
    assert second["output"][0]["content"][0]["text"] == "cold at noon"
    assert "reasoning_content" not in orjson.dumps(fake.requests[-1]).decode()


def test_fake_scenarios_long_filter_json_and_fail() -> None:
    fake = FakeChat()
    _, cut = exchange(fake, "long: a b c")
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    _, filtered = exchange(fake, "filter:", stream=False)
    assert filtered["incomplete_details"] == {"reason": "content_filter"}
    fmt = {"type": "json_schema", "name": "a", "schema": {"type": "object"}}
    _, answered = exchange(fake, "json: now", text={"format": fmt})
    assert orjson.loads(answered["output"][0]["content"][0]["text"]) == {"answer": 42}
    with pytest.raises(UpstreamStatusError) as info:
        exchange(fake, "json: now")
    assert info.value.status_code == 400 and "response_format" in info.value.message
    with pytest.raises(UpstreamStatusError) as info:
        exchange(fake, "fail: some words")
    assert info.value.status_code == 500
    with pytest.raises(UpstreamStatusError):
        exchange(fake, "fail: some words", stream=False)


def test_fake_refuses_like_a_strict_server() -> None:
    fake = FakeChat()
    request = {"model": "m", "messages": [{"role": "developer", "content": "x"}]}

    def status(
        fake: FakeChat, request: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        reply = fake.handle(
            "POST",
            "/v1/chat/completions",
            {"authorization": "Bearer k"} if headers is None else headers,
            orjson.dumps(request),
        )
        return reply.status, orjson.loads(b"".join(reply.chunks))

    assert status(fake, request)[0] == 400
    assert status(FakeChat(openai=True), request)[0] == 200
    code, body = status(
        fake, {"model": "m", "messages": [{"role": "user", "content": "x"}], "verbosity": "low"}
    )
    assert (code, body["error"]["param"]) == (400, "verbosity")
    replayed_reasoning = {"role": "assistant", "content": "a", "reasoning_content": "r"}
    assert status(fake, {"model": "m", "messages": [replayed_reasoning]})[0] == 400
    unanswered = [
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "user", "content": "x"},
    ]
    code, body = status(fake, {"model": "m", "messages": unanswered})
    assert code == 400 and "c1" in body["error"]["message"]
    orphan = [{"role": "tool", "tool_call_id": "c9", "content": "x"}]
    assert status(fake, {"model": "m", "messages": orphan})[0] == 400
    code, body = status(
        fake, {"model": "m", "messages": [{"role": "user", "content": "x"}]}, headers={}
    )
    assert code == 401
    assert CODEC.parse_error(code, {}, orjson.dumps(body), now=0.0).status_code == 502


def test_fake_faults_are_carried_by_the_reply() -> None:
    fake = FakeChat()
    fake.faults.extend(
        [
            Fault(status=429, headers={"retry-after": "1"}),
            Fault(reset_after=3, stall=2.0),
            Fault(malformed=True),
        ]
    )
    with pytest.raises(UpstreamStatusError) as info:
        exchange(fake, "say: x")
    assert (info.value.status_code, info.value.retry_after) == (429, 1.0)
    built = build("say: a b c d e", stream=True)
    reply: Reply = fake.handle(
        "POST", "/v1/chat/completions", dict(built.request.headers), body_of(built.request)
    )
    assert (reply.reset_after, reply.stall) == (3, 2.0)
    with pytest.raises(SluicegateError, match="malformed"):
        exchange(fake, "say: a b c d e")
    assert len(fake.requests) == 3


def test_fake_sends_no_usage_chunk_unless_asked() -> None:
    _, response = exchange(FakeChat(), "say: hi", provider="mistral", model="mistral-large")
    assert response["status"] == "completed" and response["usage"] is None
