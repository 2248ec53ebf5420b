"""What every bridged provider codec shares on the way to the provider (docs/bridges.md): the
request plan, the conversation as Responses items, and the codec contract.

Theory of operation. A bridge codec (``chat_completions``, ``anthropic``, ``gemini``) is three
sans-IO pieces:

- ``build_request(deployment, BridgeInput, stream=...) -> BuiltRequest``: checks what the
  provider cannot do (:class:`RequestPlan`: a 400 naming the parameter, or a recorded drop with
  ``drop_params``) and maps the conversation (:func:`conversation_items`) to the provider's body;
- a stream decoder and a body decoder (``feed(bytes) -> events``, ``close() -> events``) that
  translate the provider's answer into calls on a ``ResponseEmitter`` (``_emitter.py``: the
  answer's side of every bridge);
- ``parse_error(status, headers, body, now=...)``: the provider's error as ours.

Custom (freeform) tools reach a provider as functions of one string argument
(:func:`custom_tool_function`); the emitter turns the calls of those functions back into
``custom_tool_call`` items, and :func:`function_items` gives a provider the custom tool calls
and outputs of the conversation as the function calls and outputs they were to it.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol, TypeVar

import attrs
import orjson

from ..errors import (
    ConfigError,
    InvalidRequestError,
    UpstreamStatusError,
)
from ._emitter import BridgeContext
from ._endpoint import Endpoint
from ._freeform import CUSTOM_INPUT_KEY
from .openai_responses import Decoder, UpstreamRequest

__all__ = [
    "HOSTED_TOOL_TYPES",
    "TOOL_CHOICE_TYPES",
    "BridgeCodec",
    "BridgeInput",
    "BuiltRequest",
    "RequestPlan",
    "ToolChoice",
    "context_for",
    "conversation_items",
    "custom_tool_function",
    "data_url_parts",
    "function_items",
    "instruction_texts",
    "invalid",
    "required_string",
    "system_texts",
    "text_format",
    "with_overrides",
]

# --- the request ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BridgeInput:
    """A validated Responses request as a bridge codec receives it."""

    #: The Responses parameters (validated; ``input`` and ``previous_response_id`` excluded:
    #: the conversation is ``items``).
    body: Mapping[str, Any]
    #: The whole conversation as Responses items: the stored chain of ``previous_response_id``
    #: (inputs and outputs, reasoning items included), then this request's input.
    items: list[dict[str, Any]]
    #: ``drop_params``: drop what the provider cannot take instead of refusing it.
    drop_params: bool = False
    #: Top-level fields of ``body`` the gateway does not know: refused (400
    #: ``unsupported_parameter`` naming each) or, with ``drop_params``, dropped and listed.
    unknown_params: tuple[str, ...] = ()
    extra_body: Mapping[str, Any] | None = None
    extra_headers: Mapping[str, str] = attrs.Factory(dict)
    extra_query: Mapping[str, str] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class BuiltRequest:
    request: UpstreamRequest
    context: BridgeContext


#: Tools only OpenAI's own Responses API runs (docs/bridges.md §10): never bridged.
HOSTED_TOOL_TYPES: Final = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "mcp",
        "image_generation",
        "code_interpreter",
        "computer_use_preview",
        "computer",
        "computer_use",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
        "namespace",
    }
)

#: Responses parameters that no bridged provider has (docs/bridges.md §10), each with the values
#: that are harmless (accepted and not sent). Anything else is refused or dropped. Parameters
#: harmless whatever their value are not listed: ``max_tool_calls`` limits hosted tools, which no
#: bridge has; ``prompt_cache_key``, a cache hint, each codec sends where its provider has a
#: field and leaves out elsewhere (its docstring says why no answer changes).
_NEVER_BRIDGED: Final[Mapping[str, tuple[Any, ...]]] = {
    "prompt": (None,),
    "conversation": (None,),
    "truncation": (None, "disabled"),
    "moderation": (None,),
    "context_management": (None,),
    "prompt_cache_options": (None,),
    "prompt_cache_retention": (None,),
}

#: ``include`` values a bridge can honour; the others name hosted-tool outputs.
_BRIDGEABLE_INCLUDES: Final = frozenset(
    {"reasoning.encrypted_content", "message.output_text.logprobs"}
)

#: ``tool_choice`` object types a bridge can honour (the others name hosted tools).
TOOL_CHOICE_TYPES: Final = frozenset({"function", "custom", "allowed_tools"})


@attrs.define(eq=False)
class RequestPlan:
    """Collects what a provider cannot take: refused (400 naming the parameter) or, with
    ``drop_params``, dropped and listed (nothing is ignored silently)."""

    provider: str
    model: str
    drop_params: bool
    dropped: list[str] = attrs.Factory(list)
    #: The names of the custom tools :meth:`check_common` turned into functions.
    custom_tools: set[str] = attrs.Factory(set)

    def unsupported(self, param: str, what: str | None = None) -> None:
        """``param`` (a JSON path) cannot go to this provider: raise, or record the drop."""
        if self.drop_params:
            self.dropped.append(param)
            return
        shown = what or f"'{param}'"
        raise InvalidRequestError(
            f"{shown} is not supported for model '{self.model}' (provider {self.provider}); "
            "set 'drop_params: true' in the configuration to drop it instead.",
            param=param,
            code="unsupported_parameter",
        )

    def unsupported_value(self, param: str, message: str) -> None:
        """A value out of the provider's range: always a 400 (dropping would change meaning)."""
        raise InvalidRequestError(
            f"{message} (model '{self.model}', provider {self.provider}).",
            param=param,
            code="unsupported_value",
        )

    def check_common(
        self, body: Mapping[str, Any], unknown_params: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """The checks every bridge shares; returns the function tools to map, custom tools
        among them as the functions they become (:func:`custom_tool_function`).

        ``unknown_params`` (``BridgeInput.unknown_params``) are top-level fields the gateway
        does not know. What they ask of a model no bridge can tell, so each one is refused by
        name, or dropped and listed under ``drop_params``, as a known parameter the provider
        lacks; a null asks for nothing and passes. Codecs read the body field by field, so a
        dropped one never reaches the provider.

        Raises:
            InvalidRequestError: what the provider cannot take (``unsupported_parameter``,
                unless dropped), a tool without a name, two tools of one name, a bad custom
                tool ``format``.
        """
        for name in unknown_params:
            if body.get(name) is not None:
                self.unsupported(name, f"Unknown parameter '{name}'")
        for name, harmless in _NEVER_BRIDGED.items():
            if body.get(name) not in harmless:
                self.unsupported(name)
        include = body.get("include") or []
        for i, value in enumerate(include):
            if value not in _BRIDGEABLE_INCLUDES:
                self.unsupported(f"include[{i}]", f"'include' value {value!r}")
        functions: list[dict[str, Any]] = []
        named: dict[str, int] = {}
        for i, tool in enumerate(body.get("tools") or []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in ("function", "custom"):
                self.unsupported(f"tools[{i}]", f"'tools[{i}]' of type {kind!r}")
                continue
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidRequestError(
                    f"Missing required parameter: 'tools[{i}].name'.",
                    param=f"tools[{i}].name",
                    code="missing_required_parameter",
                )
            if name in named:
                # A call names its tool only: two of one name could not be told apart.
                raise invalid(
                    f"tools[{i}].name",
                    f"'tools[{i}].name' {name!r} is also the name of 'tools[{named[name]}]'; "
                    "tool names must be unique.",
                )
            named[name] = i
            if kind == "custom":
                functions.append(custom_tool_function(tool, f"tools[{i}]"))
                self.custom_tools.add(name)
            else:
                functions.append(tool)
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") not in TOOL_CHOICE_TYPES:
            self.unsupported("tool_choice", f"'tool_choice' of type {choice.get('type')!r}")
        return functions

    def tool_choice(self, body: Mapping[str, Any], functions: list[dict[str, Any]]) -> ToolChoice:
        """``tool_choice`` in one shape for every provider (docs/bridges.md §2); a custom tool is
        chosen as the function it becomes."""
        choice = body.get("tool_choice")
        if choice is None or choice in ("auto", "none", "required"):
            return ToolChoice(mode=choice or "auto", names=None)
        if not isinstance(choice, dict):  # pragma: no cover -- _params checked the type
            raise InvalidRequestError("Invalid 'tool_choice'.", param="tool_choice")
        if choice.get("type") in ("function", "custom"):
            name = choice.get("name")
            if not self._is_tool(choice.get("type"), name, functions):
                raise InvalidRequestError(
                    f"'tool_choice' names {choice.get('type')} tool {name!r}, which is not in "
                    "'tools'.",
                    param="tool_choice.name",
                )
            return ToolChoice(mode="function", names=[str(name)])
        if choice.get("type") == "allowed_tools":
            mode = choice.get("mode", "auto")
            if mode not in ("auto", "required"):
                raise InvalidRequestError(
                    f"Invalid value for 'tool_choice.mode': {mode!r}.", param="tool_choice.mode"
                )
            allowed: list[str] = []
            for i, tool in enumerate(choice.get("tools") or []):
                kind = tool.get("type") if isinstance(tool, dict) else None
                if kind not in ("function", "custom"):
                    self.unsupported(f"tool_choice.tools[{i}]")
                    continue
                if not self._is_tool(kind, tool.get("name"), functions):
                    raise InvalidRequestError(
                        f"'tool_choice.tools[{i}]' names {kind} tool {tool.get('name')!r}, not "
                        "in 'tools'.",
                        param=f"tool_choice.tools[{i}].name",
                    )
                allowed.append(tool["name"])
            return ToolChoice(mode=mode, names=allowed)
        # Any other type: check_common has refused it, or dropped it (and said so) already.
        return ToolChoice(mode="auto", names=None)

    def _is_tool(self, kind: Any, name: Any, functions: list[dict[str, Any]]) -> bool:
        """Whether ``name`` is a tool of ``kind`` (``function`` or ``custom``) in the request."""
        if not isinstance(name, str) or not any(tool["name"] == name for tool in functions):
            return False
        custom: bool = kind == "custom"
        return (name in self.custom_tools) == custom


@attrs.frozen(kw_only=True)
class ToolChoice:
    """``mode``: ``auto``, ``none``, ``required`` or ``function`` (one forced function);
    ``names``: the functions allowed (None: all of ``tools``)."""

    mode: str
    names: list[str] | None


#: What a custom tool's ``input`` must be, by ``format`` (a provider cannot enforce a grammar:
#: the model is shown it and asked to follow it).
_LARK: Final = "text valid in this Lark grammar"
_REGEX: Final = "text that matches this regular expression in full"


def custom_tool_function(tool: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The function tool a custom (freeform) tool becomes for a bridged provider: one string
    argument, ``input``, whose description says what the text must be (for a grammar format,
    the syntax and the definition). Its calls come back as ``custom_tool_call`` items.

    Raises:
        InvalidRequestError: a ``format`` that is neither ``text`` nor a ``lark``/``regex``
            grammar with a ``definition`` (naming the field under ``path``).
    """
    fmt = tool.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    whole = "the whole input, exactly as the tool receives it"
    if fmt is None or kind == "text":
        what = f"The tool's input: free-form text ({whole})."
    elif kind == "grammar":
        assert isinstance(fmt, dict)
        syntax = fmt.get("syntax")
        definition = required_string(fmt, "definition", f"{path}.format")
        if syntax not in ("lark", "regex"):
            raise invalid(
                f"{path}.format.syntax",
                f"Invalid value for '{path}.format.syntax': {syntax!r}. Supported values are: "
                "'lark' and 'regex'.",
            )
        rule = _LARK if syntax == "lark" else _REGEX
        what = f"The tool's input: {rule} ({whole}):\n{definition}"
    else:
        raise invalid(
            f"{path}.format.type",
            f"Invalid value for '{path}.format.type': {kind!r}. Supported values are: 'text' "
            "and 'grammar'.",
        )
    function: dict[str, Any] = {
        "type": "function",
        "name": tool["name"],
        "parameters": {
            "type": "object",
            "properties": {CUSTOM_INPUT_KEY: {"type": "string", "description": what}},
            "required": [CUSTOM_INPUT_KEY],
            "additionalProperties": False,
        },
    }
    if isinstance(tool.get("description"), str) and tool["description"]:
        function["description"] = tool["description"]
    return function


# --- the conversation -----------------------------------------------------------------------


def conversation_items(
    history: Iterable[Mapping[str, Any]], new_input: str | list[Any] | None
) -> list[dict[str, Any]]:
    """The conversation as Responses items in one normal form: the stored chain, then the new
    input. A string is one user message; a message's string ``content`` becomes one text part
    (``input_text`` for user, system and developer, ``output_text`` for the assistant); an item
    without ``type`` is a message (the "easy" form)."""
    items = [_normal_item(item) for item in history]
    if isinstance(new_input, str):
        items.append(_message("user", new_input))
    elif new_input is not None:
        items.extend(_normal_item(item) for item in new_input)
    return items


def _message(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def _normal_item(item: Mapping[str, Any]) -> dict[str, Any]:
    kind = item.get("type", "message")
    if kind != "message":
        return dict(item)
    role = item.get("role")
    content = item.get("content")
    if not isinstance(role, str):
        raise InvalidRequestError(
            "Missing required parameter: 'input[].role'.",
            param="input",
            code="missing_required_parameter",
        )
    if isinstance(content, str):
        return {**_message(role, content), **({"id": item["id"]} if "id" in item else {})}
    if not isinstance(content, list):
        raise InvalidRequestError(
            "Invalid 'input[].content': expected a string or an array of content parts.",
            param="input",
        )
    return {**item, "type": "message"}


def function_items(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as a bridged provider sees it: a ``custom_tool_call`` is the call of
    the function its tool became (arguments ``{"input": ...}``, :func:`custom_tool_function`)
    and a ``custom_tool_call_output`` that function's output, so each codec maps them as it
    maps function calls. Paths are ``input[i]``, as the codecs number the conversation.

    Raises:
        InvalidRequestError: a ``custom_tool_call`` whose ``input`` is not a string.
    """
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind == "custom_tool_call":
            text = required_string(item, "input", f"input[{i}]")
            call = {k: item[k] for k in ("call_id", "name") if k in item}
            arguments = orjson.dumps({CUSTOM_INPUT_KEY: text}).decode()
            out.append({"type": "function_call", **call, "arguments": arguments})
        elif kind == "custom_tool_call_output":
            out.append({**item, "type": "function_call_output"})
        else:
            out.append(dict(item))
    return out


def data_url_parts(url: str) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` of a ``data:`` URL with base64 payload, else None."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    return header[: -len(";base64")] or "application/octet-stream", data


def context_for(
    deployment: Endpoint,
    body: Mapping[str, Any],
    plan: RequestPlan,
    *,
    created_at: int,
) -> BridgeContext:
    """The decoder's context for a request built under ``plan``."""
    reasoning = body.get("reasoning")
    summaries = isinstance(reasoning, dict) and reasoning.get("summary") is not None
    return BridgeContext(
        provider=deployment.provider,
        model=deployment.model,
        body=body,
        summaries=summaries,
        dropped=tuple(plan.dropped),
        custom_tools=frozenset(plan.custom_tools),
        created_at=created_at,
    )


# --- the codec contract -----------------------------------------------------------------------


class BridgeCodec(Protocol):
    """What the connector asks of a bridged provider's codec (module docstring)."""

    @property
    def inline_remote_media(self) -> bool:
        """The gateway must fetch ``https`` image and file URLs and inline them as ``data:``
        URLs before :meth:`build_request` (the provider takes no URLs: Gemini)."""
        ...

    def check_deployment(self, deployment: Endpoint) -> None:
        """Raise ConfigError (naming the ``model_info`` key) if the deployment's per-model
        overrides are invalid; the gateway calls it when it opens, so a bad configuration
        fails at load, not on a request."""
        ...

    def build_request(
        self, deployment: Endpoint, request: BridgeInput, *, stream: bool, created_at: int
    ) -> BuiltRequest:
        """The provider request, and the decoder's context; raises InvalidRequestError (400
        naming the parameter) for what the provider cannot take."""
        ...

    def stream_decoder(self, context: BridgeContext) -> Decoder: ...

    def body_decoder(self, context: BridgeContext) -> Decoder: ...

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> UpstreamStatusError:
        """The provider's error response as ours (docs/bridges.md §8)."""
        ...


# --- shared request checks --------------------------------------------------------------------

Rules = TypeVar("Rules")


def with_overrides(
    rules: Rules, model_info: Mapping[str, Any], checks: Mapping[str, tuple[Any, str]]
) -> Rules:
    """``rules`` (an attrs instance of a codec's per-model table) with the deployment's
    ``model_info`` overrides: ``checks`` maps each overridable field to (a predicate on the
    value, what is expected).

    Raises:
        ConfigError: an override the predicate refuses (names the ``model_info`` key).
    """
    overrides: dict[str, Any] = {}
    for key, (acceptable, expected) in checks.items():
        if key not in model_info:
            continue
        value = model_info[key]
        if not acceptable(value):
            raise ConfigError(f"expected {expected}, got {value!r}", path=f"model_info.{key}")
        overrides[key] = value
    return attrs.evolve(rules, **overrides)  # type: ignore[misc]


def invalid(param: str, message: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def required_string(item: Mapping[str, Any], key: str, path: str) -> str:
    """``item[key]``, which the request must give as a string."""
    value = item.get(key)
    if isinstance(value, str):
        return value
    if value is None:
        raise invalid(
            f"{path}.{key}",
            f"Missing required parameter: '{path}.{key}'.",
            "missing_required_parameter",
        )
    raise invalid(
        f"{path}.{key}", f"Invalid type for '{path}.{key}': expected a string.", "invalid_type"
    )


def text_format(plan: RequestPlan, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request's ``text.format`` when it asks for JSON (``json_object``, or
    ``json_schema`` with its ``schema`` checked), else None; ``text.verbosity`` other than the
    default and unknown ``text`` keys go through ``plan``."""
    text = body.get("text") or {}
    for key, value in text.items():
        if key == "verbosity":
            if value not in (None, "medium"):
                plan.unsupported("text.verbosity", f"'text.verbosity' {value!r}")
        elif key != "format" and value is not None:
            plan.unsupported(f"text.{key}")
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise invalid("text.format.type", f"Invalid value for 'text.format.type': {kind!r}.")
    if kind == "json_schema" and not isinstance(fmt.get("schema"), dict):
        raise invalid(
            "text.format.schema",
            "Missing required parameter: 'text.format.schema'.",
            "missing_required_parameter",
        )
    assert isinstance(fmt, dict)
    return fmt


def system_texts(plan: RequestPlan, item: Mapping[str, Any], path: str) -> list[str]:
    """The texts of a system or developer message, for a provider whose system prompt is text
    only (Anthropic ``system``, Gemini ``systemInstruction``); other parts go through
    ``plan``."""
    texts: list[str] = []
    for j, part in enumerate(item.get("content") or []):
        where = f"{path}.content[{j}]"
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text"):
            text = required_string(part, "text", where)
            if text:
                texts.append(text)
        else:
            plan.unsupported(where, f"'{where}' (non-text content in a system message)")
    return texts


def instruction_texts(plan: RequestPlan, instructions: Any) -> list[str]:
    """``instructions`` as system texts: a string, or the list form (prompt templates), whose
    system and developer messages are system text."""
    if instructions is None or instructions == "":
        return []
    if isinstance(instructions, str):
        return [instructions]
    texts: list[str] = []
    for i, entry in enumerate(instructions):
        if not isinstance(entry, dict) or entry.get("role") not in ("system", "developer"):
            plan.unsupported(f"instructions[{i}]")
            continue
        content = entry.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        texts.extend(system_texts(plan, {"content": content or []}, f"instructions[{i}]"))
    return texts
