"""Client request validation: a clear 400 that names the parameter; nothing bad goes upstream."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sluicegate._gateway._params import RESPONSES_PARAMETERS, prepare_call
from sluicegate.codecs.ids import IdCodec
from sluicegate.errors import InvalidRequestError, NotFoundError

IDS = IdCodec.from_secret("k")


def _prepare(**params: Any) -> Any:
    return prepare_call({"model": "m", "input": "hi", **params}, stream=False, ids=IDS)


def _error(**params: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        _prepare(**params)
    assert info.value.status_code == 400
    assert info.value.to_dict()["error"]["type"] == "invalid_request_error"
    return info.value


def test_every_spec_parameter_is_accepted_and_forwarded_unchanged() -> None:
    values: dict[str, Any] = {
        "input": [{"role": "user", "content": "hi"}],
        "instructions": "Be terse.",
        "tools": [{"type": "web_search"}],
        "tool_choice": {"type": "function", "name": "f"},
        "parallel_tool_calls": False,
        "max_tool_calls": 3,
        "conversation": None,
        "reasoning": {"effort": "high", "summary": "auto"},
        "text": {"verbosity": "low"},
        "max_output_tokens": 200,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_logprobs": 5,
        "metadata": {"k": "v"},
        "store": True,
        "stream_options": {"include_obfuscation": False},
        "background": True,
        "truncation": "auto",
        "include": ["reasoning.encrypted_content"],
        "prompt": {"id": "pmpt_1"},
        "service_tier": "flex",
        "user": "u",
        "safety_identifier": "abc",
        "prompt_cache_key": "ck",
        "prompt_cache_retention": "24h",
        "prompt_cache_options": {"mode": "implicit"},
        "moderation": {"model": "m"},
        "context_management": [{"type": "compaction", "compact_threshold": 1000}],
    }
    assert set(values) | {"model", "previous_response_id", "stream"} == set(RESPONSES_PARAMETERS)
    call = _prepare(**values)
    assert call.body == {"model": "m", **values}


def test_background_without_store_is_refused() -> None:
    err = _error(background=True, store=False)
    assert err.param == "background"


def test_owner_is_the_argument_then_user_then_the_default() -> None:
    assert _prepare(owner="o", user="u").owner == "o"
    assert _prepare(user="u").owner == "u"
    assert _prepare().owner == ""
    assert _error(owner=3).param == "owner"


def test_spend_metadata_from_the_argument_or_litellm_metadata_never_forwarded() -> None:
    call = _prepare(litellm_metadata={"spend_logs_metadata": {"a": 1}, "tags": ["x"]})
    assert call.spend_metadata == {"a": 1} and "litellm_metadata" not in call.body
    assert _prepare(spend_logs_metadata={"b": 2}).spend_metadata == {"b": 2}
    assert _error(litellm_metadata=[1]).param == "litellm_metadata"
    assert _error(spend_logs_metadata="x").param == "spend_logs_metadata"


def test_stored_input_items_get_ids_and_keep_the_callers() -> None:
    call = _prepare(input=[{"role": "user", "content": "a"}, {"type": "x", "id": "keep"}])
    first, second = call.input_items
    assert first["id"].startswith("msg_") and first["type"] == "message"
    assert second == {"type": "x", "id": "keep"}
    # What goes upstream is the caller's input, unchanged.
    assert call.body["input"] == [{"role": "user", "content": "a"}, {"type": "x", "id": "keep"}]
    assert _prepare(input="hi", store=False).input_items == []


def test_unknown_parameters_stay_in_the_body_and_are_listed() -> None:
    """A field newer than this code is the upstream's to judge: kept, and named for bridges."""
    call = _prepare(client_metadata={"originator": "cli"}, prompt_cache_key="k", custom_param=1)
    assert call.body["client_metadata"] == {"originator": "cli"}
    assert call.body["custom_param"] == 1
    assert call.unknown_params == ("client_metadata", "custom_param")


@pytest.mark.parametrize("name", ["api_base", "api_key", "base_url", "custom_llm_provider"])
def test_fields_that_choose_the_upstream_are_refused(name: str) -> None:
    err = _error(**{name: "https://elsewhere.example"})
    assert err.param == name and err.code == "forbidden_parameter"


def test_known_fields_are_still_checked_beside_unknown_ones() -> None:
    err = _error(custom_param=1, temperature="hot")
    assert err.param == "temperature" and err.code == "invalid_type"


def test_client_headers_option_is_checked() -> None:
    assert _prepare(client_headers={"openai-beta": "x"}).client_headers == {"openai-beta": "x"}
    err = _error(client_headers={"openai-beta": 1})
    assert err.param == "client_headers.openai-beta"


@pytest.mark.parametrize(
    ("param", "value", "code"),
    [
        ("temperature", "hot", "invalid_type"),
        ("temperature", 2.5, "invalid_value"),
        ("temperature", True, "invalid_type"),
        ("top_p", -0.1, "invalid_value"),
        ("max_output_tokens", 1.5, "invalid_type"),
        ("max_output_tokens", 0, "invalid_value"),
        ("top_logprobs", 21, "invalid_value"),
        ("store", "yes", "invalid_type"),
        ("tools", {"type": "function"}, "invalid_type"),
        ("tool_choice", "sometimes", "invalid_value"),
        ("truncation", "maybe", "invalid_value"),
        ("service_tier", "gold", "invalid_value"),
        ("include", ["ok", 3], "invalid_type"),
        ("input", 42, "invalid_type"),
        ("input", ["not an item"], "invalid_type"),
        ("safety_identifier", "x" * 65, "string_above_max_length"),
    ],
)
def test_bad_values_name_the_parameter(param: str, value: Any, code: str) -> None:
    err = _error(**{param: value})
    assert err.code == code
    assert err.param is not None and err.param.startswith(param)


def test_explicit_null_means_unset_and_is_accepted() -> None:
    assert _prepare(temperature=None, metadata=None, tools=None).body["temperature"] is None


def test_metadata_limits_follow_openai() -> None:
    _prepare(metadata={f"k{i}": "v" * 512 for i in range(16)})
    assert _error(metadata={f"k{i}": "v" for i in range(17)}).param == "metadata"
    assert _error(metadata={"k" * 65: "v"}).param == "metadata"
    assert _error(metadata={"k": "v" * 513}).param == "metadata"
    assert _error(metadata={"k": 1}).param == "metadata.k"
    assert _error(metadata=["k"]).param == "metadata"


def test_model_is_required() -> None:
    with pytest.raises(InvalidRequestError) as info:
        prepare_call({"input": "hi"}, stream=False, ids=IDS)
    assert info.value.param == "model"


def test_stream_true_is_for_the_streaming_call() -> None:
    assert _error(stream=True).param == "stream"
    call = prepare_call({"model": "m", "stream": True}, stream=True, ids=IDS)
    assert call.stream and "stream" not in call.body


def test_previous_response_id_is_decoded_and_not_combinable_with_conversation() -> None:
    encoded = IDS.encode(provider="openai", deployment_id="d", raw_id="resp_raw")
    call = _prepare(previous_response_id=encoded)
    assert call.previous is not None and call.previous.raw_id == "resp_raw"
    assert call.previous_response_id == encoded and "previous_response_id" not in call.body
    assert _error(previous_response_id=encoded, conversation="conv_1").param == (
        "previous_response_id"
    )
    with pytest.raises(NotFoundError) as info:
        _prepare(previous_response_id=encoded[:-2] + "AA")
    assert info.value.status_code == 404 and info.value.param == "previous_response_id"


def test_library_options_are_not_body_fields() -> None:
    call = _prepare(
        extra_body={"x": 1},
        extra_headers={"X-Trace": "t"},
        extra_query={"a": 1},
        timeout=httpx.Timeout(30.0, connect=5.0),
    )
    assert call.extra_body == {"x": 1} and call.extra_headers == {"x-trace": "t"}
    assert call.extra_query == {"a": "1"} and call.timeout == 30.0
    assert set(call.body) == {"model", "input"}
    assert _prepare(timeout=12).timeout == 12.0
    assert _error(timeout=-1).param == "timeout"
    assert _error(extra_headers={"x": 1}).param == "extra_headers.x"


def _nested(depth: int) -> Any:
    value: Any = {"type": "string"}
    for _ in range(depth - 1):
        value = {"type": "object", "properties": {"x": value}}
    return value


@pytest.mark.parametrize("depth", [256, 300, 1023])
def test_deep_json_in_a_field_is_a_400_naming_it_not_a_500(depth: int) -> None:
    """Regression: the parser took 1,024 levels and the encoder refused past 255 (a 500)."""
    err = _error(tools=[{"type": "function", "name": "f", "parameters": _nested(depth)}])
    assert err.param == "tools" and "nested more than 64 levels" in err.message


def test_json_depth_limit_is_exact() -> None:
    ok: Any = "leaf"
    for _ in range(64):
        ok = [ok]
    _prepare(custom_param=ok)
    assert _error(custom_param=[ok]).param == "custom_param"


@pytest.mark.parametrize(
    ("value", "code"),
    [({1: "int key"}, "invalid_type"), ([2**70], "invalid_type"), ({1, 2}, "invalid_type")],
)
def test_values_that_are_not_json_are_refused_at_the_door(value: Any, code: str) -> None:
    err = _error(custom_param=value)
    assert err.param == "custom_param" and err.code == code
    assert _error(custom_param=2**64).code == "invalid_value"


def test_spend_metadata_is_bounded_before_any_upstream_call() -> None:
    """Regression: 300-deep spend metadata failed the record after the upstream answered, so
    nothing was recorded or billed; 3,000 pairs became 3,000 spend-tag rows."""
    deep: Any = "x"
    for _ in range(300):
        deep = {"k": deep}
    for options in (
        {"spend_logs_metadata": deep},
        {"litellm_metadata": {"spend_logs_metadata": deep}},
    ):
        err = _error(**options)
        assert err.param is not None and err.param.endswith("spend_logs_metadata")
        assert "levels deep" in err.message
    many = {f"k{i}": i for i in range(3000)}
    assert _error(spend_logs_metadata=many).code == "object_above_max_properties"
    large = {"blob": "x" * 20000}
    assert "bytes of JSON" in _error(spend_logs_metadata=large).message
    fine = {"team": "search", "tags": ["a", "b"], "cost_center": {"id": 7}}
    assert _prepare(spend_logs_metadata=fine).spend_metadata == fine


@pytest.mark.parametrize("value", [10**400, 10**5000, -(10**400)], ids=["e400", "e5000", "-e400"])
def test_integers_of_any_size_are_400s_not_500s(value: int) -> None:
    """Regression: float() of a huge int overflowed (a 500) before any check could refuse it."""
    err = _error(max_output_tokens=value)
    assert err.param == "max_output_tokens" and len(err.message) < 300
    assert _error(service_tier=value).param == "service_tier"
