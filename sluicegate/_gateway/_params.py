"""Validation of a caller's Responses request: strict on what is ours, transparent on the rest.

What the gateway owns is checked, and bad input is a 400 naming the parameter: the JSON types
and documented ranges of the Responses parameters it knows (:data:`RESPONSES_PARAMETERS`), the
``metadata`` limits, its own options (``litellm_metadata``, the library's keyword options) and
the fields that would choose the upstream or its credentials (:data:`FORBIDDEN_BODY_FIELDS`,
always refused). A top-level field it does not know is the upstream's business: it stays in the
body and is listed in ``PreparedCall.unknown_params``, so a native upstream receives it
unchanged (OpenAI adds fields every month, and SDKs merge ``extra_body`` keys into the top
level), while a bridge refuses it by name or drops it with ``drop_params``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Mapping
from typing import Any

import httpx
import orjson

from ..codecs.ids import IdCodec
from ..errors import InvalidRequestError
from ..net._upstream_sockets import UpstreamSockets
from ..runtime._messages import PreparedCall, UpstreamTiming

__all__ = [
    "FORBIDDEN_BODY_FIELDS",
    "GATEWAY_PARAMETERS",
    "LIBRARY_OPTIONS",
    "MAX_SAFE_INTEGER",
    "RESPONSES_PARAMETERS",
    "checked_fields",
    "checked_int",
    "input_items",
    "missing_parameter",
    "forbidden_field",
    "on_end_option",
    "prepare_call",
]

Check = Callable[[str, Any], None]

_JSON_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in _JSON_NAMES.items():
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _shown(value: Any) -> str:
    """A caller's value in a message: short, and never an error of its own (``repr`` of an
    integer of thousands of digits raises)."""
    try:
        text = repr(value)
    except ValueError:
        return "an integer too long to show"
    return text if len(text) <= 80 else text[:77] + "..."


def _invalid_type(name: str, value: Any, expected: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)} instead.",
        param=name,
        code="invalid_type",
    )


def _is(*kinds: type, nullable: bool = True) -> Check:
    names = " or ".join(_JSON_NAMES[k] for k in kinds)

    def check(name: str, value: Any) -> None:
        if value is None and nullable:
            return
        # bool is an int in Python, but not in JSON.
        if isinstance(value, bool) and bool not in kinds:
            raise _invalid_type(name, value, names)
        if not isinstance(value, kinds):
            raise _invalid_type(name, value, names)

    return check


def _number(low: float, high: float | None, *, integer: bool = False) -> Check:
    expected = "an integer" if integer else "a number"

    def check(name: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid_type(name, value, expected)
        if integer and not isinstance(value, int):
            raise _invalid_type(name, value, expected)
        # Compared as given: float() of a huge int overflows.
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise InvalidRequestError(
                f"Invalid '{name}': expected a value {bound}, but got {_shown(value)} instead.",
                param=name,
                code="invalid_value",
            )

    return check


def _one_of(*values: str, also: tuple[type, ...] = ()) -> Check:
    def check(name: str, value: Any) -> None:
        if value is None or (also and isinstance(value, also)):
            return
        if value not in values:
            shown = ", ".join(repr(v) for v in values)
            raise InvalidRequestError(
                f"Invalid value for '{name}': {_shown(value)}. Supported values are: {shown}.",
                param=name,
                code="invalid_value",
            )

    return check


def _string_list(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise _invalid_type(name, value, "an array of strings")
    for i, entry in enumerate(value):
        if not isinstance(entry, str):
            raise _invalid_type(f"{name}[{i}]", entry, "a string")


def _input(name: str, value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _invalid_type(name, value, "a string or an array of input items")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _invalid_type(f"{name}[{i}]", item, "an object")


def _short_string(limit: int) -> Check:
    def check(name: str, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise _invalid_type(name, value, "a string")
        if len(value) > limit:
            raise InvalidRequestError(
                f"Invalid '{name}': string too long. Expected a string with maximum length "
                f"{limit}, but got a string with length {len(value)} instead.",
                param=name,
                code="string_above_max_length",
            )

    return check


#: OpenAI's documented metadata limits (the Responses API reference).
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512


def _metadata(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _invalid_type(name, value, "an object")
    if len(value) > METADATA_MAX_PAIRS:
        raise InvalidRequestError(
            f"Invalid '{name}': too many properties. Expected an object with at most "
            f"{METADATA_MAX_PAIRS} properties, but got an object with {len(value)} properties "
            "instead.",
            param=name,
            code="object_above_max_properties",
        )
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY:
            raise InvalidRequestError(
                f"Invalid '{name}': key {key[:80]!r} is longer than {METADATA_MAX_KEY} characters.",
                param=name,
                code="invalid_value",
            )
        if not isinstance(item, str):
            raise _invalid_type(f"{name}.{key}", item, "a string")
        if len(item) > METADATA_MAX_VALUE:
            raise InvalidRequestError(
                f"Invalid '{name}': the value of {key!r} is longer than {METADATA_MAX_VALUE} "
                "characters.",
                param=name,
                code="invalid_value",
            )


_SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast", "ultrafast")

#: Every request parameter of the Responses API and its check (the Responses API reference).
RESPONSES_PARAMETERS: Mapping[str, Check] = {
    "model": _is(str, nullable=False),
    "input": _input,
    "instructions": _is(str, list),
    "tools": _is(list),
    "tool_choice": _one_of("none", "auto", "required", also=(dict,)),
    "parallel_tool_calls": _is(bool),
    "max_tool_calls": _number(1, None, integer=True),
    "previous_response_id": _is(str),
    "conversation": _is(str, dict),
    "reasoning": _is(dict),
    "text": _is(dict),
    "max_output_tokens": _number(1, None, integer=True),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "top_logprobs": _number(0, 20, integer=True),
    "metadata": _metadata,
    "store": _is(bool),
    "stream": _is(bool),
    "stream_options": _is(dict),
    "background": _is(bool),
    "truncation": _one_of("auto", "disabled"),
    "include": _string_list,
    "prompt": _is(dict),
    "service_tier": _one_of(*_SERVICE_TIERS),
    "user": _is(str),
    "safety_identifier": _short_string(64),
    "prompt_cache_key": _is(str),
    "prompt_cache_retention": _is(str),
    "prompt_cache_options": _is(dict),
    "moderation": _is(dict),
    "context_management": _is(list),
}

#: Options of the library call itself, as in the OpenAI SDK (and sluicegate's own ``owner``
#: and ``spend_logs_metadata``); never sent as body fields.
LIBRARY_OPTIONS = frozenset(
    {
        "extra_body",
        "extra_headers",
        "extra_query",
        "timeout",
        "owner",
        "spend_logs_metadata",
        "timing",
        "session",
        "client_headers",
        "on_end",
        "upstream_sockets",
    }
)

#: Fields that would let a caller choose the upstream or its credentials: the gateway's to
#: decide, never forwarded (400 ``forbidden_parameter``), in the library and the proxy alike.
FORBIDDEN_BODY_FIELDS = frozenset(
    {
        "api_base",
        "api_key",
        "base_url",
        "api_version",
        "azure_endpoint",
        "azure_ad_token",
        "organization",
        "custom_llm_provider",
        "litellm_params",
        "aws_access_key_id",
        "aws_secret_access_key",
        "vertex_credentials",
    }
)

#: Body fields that are the gateway's, never the upstream's: LiteLLM's ``litellm_metadata``
#: (``spend_logs_metadata`` inside it goes to the spend logs).
GATEWAY_PARAMETERS: Mapping[str, Check] = {"litellm_metadata": _is(dict)}


def prepare_call(
    params: Mapping[str, Any], *, stream: bool, ids: IdCodec, default_owner: str = ""
) -> PreparedCall:
    """Validate a caller's parameters into a :class:`PreparedCall`; raises InvalidRequestError.

    The owner is the ``owner`` argument, else the request's ``user``, else ``default_owner``.
    """
    body: dict[str, Any] = {}
    gateway: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in params.items():
        if name in LIBRARY_OPTIONS:
            continue
        if name in GATEWAY_PARAMETERS:
            GATEWAY_PARAMETERS[name](name, value)
            gateway[name] = value
            continue
        check = RESPONSES_PARAMETERS.get(name)
        if check is not None:
            check(name, value)
        elif name in FORBIDDEN_BODY_FIELDS:
            raise forbidden_field(name)
        else:
            unknown.append(name)
        body[name] = value
    _check_json(body)
    model = body.get("model")
    if model is None:
        raise InvalidRequestError(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if body.get("stream") and not stream:
        raise InvalidRequestError(
            "'stream': true is for the streaming call (gateway.stream(...)).", param="stream"
        )
    body.pop("stream", None)
    previous_id = body.get("previous_response_id")
    if previous_id is not None and body.get("conversation") is not None:
        raise InvalidRequestError(
            "'previous_response_id' cannot be used together with 'conversation'.",
            param="previous_response_id",
        )
    previous = None
    if previous_id is not None:
        previous = ids.decode(previous_id, param="previous_response_id")
        body.pop("previous_response_id")  # the connector sends the raw one
    store = body.get("store") is not False
    background = bool(body.get("background"))
    if background and not store:
        raise InvalidRequestError(
            "Background responses must be stored: 'background': true needs 'store' true or unset.",
            param="background",
        )
    owner = params.get("owner")
    if owner is not None and not isinstance(owner, str):
        raise _invalid_type("owner", owner, "a string")
    if owner is None:
        user = body.get("user")
        owner = user if isinstance(user, str) else default_owner
    return PreparedCall(
        model=model,
        body=body,
        stream=stream,
        previous=previous,
        previous_response_id=previous_id,
        extra_body=_mapping(params, "extra_body"),
        extra_headers=_headers(params.get("extra_headers"), "extra_headers"),
        extra_query=_query(params.get("extra_query")),
        timeout=_timeout(params.get("timeout")),
        owner=owner,
        store=store,
        background=background,
        spend_metadata=_spend_metadata(params, gateway),
        unknown_params=tuple(unknown),
        client_headers=_headers(params.get("client_headers"), "client_headers"),
        timing=_timing_option(params.get("timing")),
        session=_session_option(params.get("session")),
        sockets=_sockets_option(params.get("upstream_sockets")),
        input_items=input_items(body.get("input")) if store else [],
    )


def _session_option(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > 512):
        raise _invalid_type("session", value, "a string of 1 to 512 characters")
    return value


def _sockets_option(value: Any) -> UpstreamSockets | None:
    """A WebSocket-mode client connection's upstream sockets (the proxy's; docs/websocket.md)."""
    if value is not None and not isinstance(value, UpstreamSockets):
        raise _invalid_type("upstream_sockets", value, "an UpstreamSockets")
    return value


def _timing_option(value: Any) -> UpstreamTiming | None:
    if value is not None and not isinstance(value, UpstreamTiming):
        raise _invalid_type("timing", value, "an UpstreamTiming")
    return value


def _spend_metadata(params: Mapping[str, Any], gateway: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's spend metadata: the library argument, else LiteLLM's body field."""
    value = params.get("spend_logs_metadata")
    name = "spend_logs_metadata"
    if value is None:
        value = (gateway.get("litellm_metadata") or {}).get("spend_logs_metadata")
        name = "litellm_metadata.spend_logs_metadata"
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid_type(name, value, "an object")
    if len(value) > SPEND_METADATA_MAX_PAIRS:
        raise InvalidRequestError(
            f"Invalid '{name}': {len(value)} properties; at most {SPEND_METADATA_MAX_PAIRS} "
            "are kept in the spend logs.",
            param=name,
            code="object_above_max_properties",
        )
    encoded = _json_within(name, value, SPEND_METADATA_MAX_DEPTH)
    if len(encoded) > SPEND_METADATA_MAX_BYTES:
        raise InvalidRequestError(
            f"Invalid '{name}': {len(encoded)} bytes of JSON; at most "
            f"{SPEND_METADATA_MAX_BYTES} are kept in the spend logs.",
            param=name,
            code="invalid_value",
        )
    return dict(value)


#: Spend metadata is kept with every response and each top-level pair is an indexed row of
#: the spend logs: it is bounded like OpenAI's ``metadata``, with room for structured values.
SPEND_METADATA_MAX_PAIRS = 64
SPEND_METADATA_MAX_DEPTH = 8
SPEND_METADATA_MAX_BYTES = 16384

#: How deep any request field may nest. Far beyond any real schema or input, and far inside
#: the 255 levels JSON encoders (ours, the store's) refuse: a request that passes the door can
#: always be sent upstream and recorded.
MAX_JSON_DEPTH = 64
#: orjson refuses to encode past this depth.
_ENCODER_DEPTH = 254


def _json_within(name: str, value: Any, depth: int) -> bytes:
    """``value`` as JSON, checked to be JSON (string keys, 64-bit integers, no other types) and
    to nest at most ``depth`` levels; else a 400 naming ``name``.

    The depth check is the C encoder's own: ``value`` is encoded inside enough single-element
    lists to leave it exactly ``depth`` levels, so one encode checks both (a Python walk over a
    large input would cost far more)."""
    wrapped = value
    for _ in range(_ENCODER_DEPTH - depth):
        wrapped = [wrapped]
    try:
        encoded = orjson.dumps(wrapped)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        if "recursion" in str(exc).lower():
            raise InvalidRequestError(
                f"Invalid '{name}': nested more than {depth} levels deep.",
                param=name,
                code="invalid_value",
            ) from None
        raise InvalidRequestError(
            f"Invalid '{name}': not JSON ({exc}).", param=name, code="invalid_type"
        ) from None
    inner = _ENCODER_DEPTH - depth
    return encoded[inner:-inner] if inner else encoded


def _check_json(body: Mapping[str, Any]) -> None:
    """Every field of the body is JSON within :data:`MAX_JSON_DEPTH` (a 400 naming the first
    that is not): what passes can be encoded for the upstream and for the store."""
    for name, value in body.items():
        if isinstance(value, dict | list):
            _json_within(name, value, MAX_JSON_DEPTH)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
            raise InvalidRequestError(
                f"Invalid '{name}': the integer is out of range.", param=name, code="invalid_value"
            )
        elif not isinstance(value, str | int | float | bool | None):
            raise _invalid_type(name, value, "JSON")


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's input as stored items, each with an ``id`` (the input_items list pages by
    item ID). A string is one user message, as OpenAI lists it; items keep the caller's IDs.
    The copies are the store's: what goes upstream is the caller's input unchanged."""
    if value is None:
        return []
    if isinstance(value, str):
        return [
            {
                "id": _item_id("message"),
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": value}],
            }
        ]
    items: list[dict[str, Any]] = []
    for item in value:
        if "id" in item:
            items.append(item)
        else:
            kind = item.get("type", "message")
            items.append({"id": _item_id(kind), **item, "type": kind})
    return items


def _item_id(kind: Any) -> str:
    prefix = "msg" if kind == "message" else "item"
    return f"{prefix}_{secrets.token_hex(16)}"


def _mapping(params: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    value = params.get(name)
    if value is not None and not isinstance(value, Mapping):
        raise _invalid_type(name, value, "an object")
    return value


def forbidden_field(name: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"'{name}' cannot be set by a client: the gateway chooses the upstream and its "
        "credentials.",
        param=name,
        code="forbidden_parameter",
    )


def _headers(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid_type(name, value, "an object")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _invalid_type(f"{name}.{key}", item, "a string")
        out[key.lower()] = item
    return out


def _query(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid_type("extra_query", value, "an object")
    return {str(k): str(v) for k, v in value.items()}


def _timeout(value: Any) -> float | None:
    """The OpenAI SDK's ``timeout``: seconds, or an ``httpx.Timeout`` (its read part bounds the
    request, as the SDK applies it per call)."""
    if value is None:
        return None
    if isinstance(value, httpx.Timeout):
        parts = [t for t in (value.read, value.connect, value.write, value.pool) if t is not None]
        return max(parts) if parts else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise _invalid_type("timeout", value, "a positive number of seconds")
    return float(value)


def on_end_option(value: Any) -> Callable[[], object] | None:
    """The library option ``on_end``: a callable taking no arguments, or None."""
    if value is None:
        return None
    if not callable(value):
        raise _invalid_type("on_end", value, "a callable")
    on_end: Callable[[], object] = value
    return on_end


#: The largest integer argument that reaches the store: the largest integer every JSON client
#: reads back exactly (JavaScript's ``Number.MAX_SAFE_INTEGER``), far inside the store's
#: signed 64-bit integers.
MAX_SAFE_INTEGER = 2**53 - 1


def missing_parameter(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def checked_fields(
    body: Mapping[str, Any], allowed: Collection[str], required: Collection[str] = ()
) -> None:
    """Refuse a body with a field outside ``allowed`` or without (or with a null) ``required``
    one: the 400 names the field, as OpenAI's does."""
    for name in body:
        if name not in allowed:
            raise InvalidRequestError(
                f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )
    for name in required:
        if body.get(name) is None:
            raise missing_parameter(name)


def checked_int(name: str, value: Any, *, low: int = 0, high: int = MAX_SAFE_INTEGER) -> int:
    """``value``, if it is an integer (a bool is not) from ``low`` to ``high``: the one rule for
    the integer arguments that reach the store, passed by a library caller or parsed by the
    proxy from a query string.

    Raises:
        InvalidRequestError: naming ``name``; code ``invalid_type`` for what is not an integer,
            ``invalid_value`` for one out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name, value, "an integer")
    if not low <= value <= high:
        # A huge one is described by its size: str() refuses integers past 4300 digits.
        shown = str(value) if abs(value) < 10**30 else f"an integer of {value.bit_length()} bits"
        raise InvalidRequestError(
            f"Invalid '{name}': expected an integer from {low} to {high}, but got {shown} instead.",
            param=name,
            code="invalid_value",
        )
    return value
