"""What every bridged provider codec shares (mapping.md): the request plan, the conversation as
Responses items, the reasoning-state envelope, and the emitter of the canonical event stream.

Theory of operation. A bridge codec (``chat_completions``, ``anthropic``, ``gemini``) is three
sans-IO pieces:

- ``build_request(deployment, BridgeInput, stream=...) -> BuiltRequest``: checks what the
  provider cannot do (:class:`RequestPlan`: a 400 naming the parameter, or a recorded drop with
  ``drop_params``) and maps the conversation (:func:`conversation_items`) to the provider's body;
- a stream decoder and a body decoder (``feed(bytes) -> events``, ``close() -> events``) that
  translate the provider's answer into calls on a :class:`ResponseEmitter`, which produces the
  Responses event sequence of responses-streaming.md §3/§4: ``response.created`` and
  ``in_progress`` first, items opened lazily and strictly one after another, every ``added``
  closed by its ``done`` with the full value, exactly one terminal event;
- ``parse_error(status, headers, body, now=...)``: the provider's error as ours.

A provider error *after* events were emitted is raised by the decoder (after the events before
it are returned), so the pipeline's tracker closes what is open and ends the response with one
typed ``response.failed`` (the same path as any mid-stream failure).

Custom (freeform) tools reach a provider as functions of one string argument
(:func:`custom_tool_function`). The emitter turns the calls of those functions back into
``custom_tool_call`` items, decoding the input while the arguments stream (:mod:`._freeform`),
and :func:`function_items` gives a provider the custom tool calls and outputs of the
conversation as the function calls and outputs they were to it.

Reasoning state that a provider needs back on the next turn (Anthropic thinking signatures and
redacted thinking, Gemini ``thoughtSignature``) travels in a ``reasoning`` item's
``encrypted_content`` as our own versioned envelope (:func:`seal_reasoning`), mapping.md §5.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol, TypeVar

import attrs
import orjson

from .._types import StreamEvent, event_from_wire
from ..config import Deployment
from ..errors import (
    ConfigError,
    InvalidRequestError,
    SluicegateError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from ._freeform import CUSTOM_INPUT_KEY, FreeformInput
from .openai_responses import Decoder, UpstreamRequest
from .sse import ServerSentEvent, SSEDecoder

__all__ = [
    "HOSTED_TOOL_TYPES",
    "TOOL_CHOICE_TYPES",
    "BridgeBodyDecoder",
    "BridgeCodec",
    "BridgeDecoder",
    "BridgeInput",
    "BridgeContext",
    "BuiltRequest",
    "RequestPlan",
    "ResponseEmitter",
    "ToolChoice",
    "context_for",
    "conversation_items",
    "custom_tool_function",
    "data_url_parts",
    "function_items",
    "instruction_texts",
    "invalid",
    "loads_provider_json",
    "mint_id",
    "open_reasoning",
    "required_string",
    "response_echo",
    "responses_usage",
    "seal_reasoning",
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
class BridgeContext:
    """What a decoder needs to build the Response: the echoed request and the response's own
    identity. One per attempt."""

    provider: str
    #: The provider's model name (the Response's ``model``).
    model: str
    #: The request's Responses parameters, echoed on the Response object.
    body: Mapping[str, Any]
    #: Whether reasoning summaries were asked for (``reasoning.summary`` set).
    summaries: bool = False
    #: Parameters dropped under ``drop_params`` (shown on the Response, mapping.md §10).
    dropped: tuple[str, ...] = ()
    #: The names of the request's custom tools: the provider's calls of these functions are
    #: ``custom_tool_call`` items (:func:`custom_tool_function`).
    custom_tools: frozenset[str] = frozenset()
    #: The raw response ID (the ID encoder wraps it in the ``resp_`` ID the caller sees).
    response_id: str = attrs.Factory(lambda: mint_id("resp"))
    created_at: int = 0
    #: Unix time for ``completed_at`` (the connector sets the gateway's clock; codecs do no
    #: I/O and read no clock of their own). None: ``created_at``.
    clock: Callable[[], float] | None = None

    def now(self) -> int:
        return self.created_at if self.clock is None else int(self.clock())


@attrs.frozen(kw_only=True)
class BuiltRequest:
    request: UpstreamRequest
    context: BridgeContext


def mint_id(prefix: str) -> str:
    """An OpenAI-shaped ID (``msg_`` + 48 hex digits), minted by the gateway."""
    return f"{prefix}_{secrets.token_hex(24)}"


#: Tools only OpenAI's own Responses API runs (mapping.md §10): never bridged.
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

#: Responses parameters that no bridged provider has (mapping.md §10), each with the values
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
        """``tool_choice`` in one shape for every provider (mapping.md §2); a custom tool is
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


# --- reasoning state --------------------------------------------------------------------------

_ENVELOPE_PREFIX: Final = "sg1."


def seal_reasoning(provider: str, model: str, state: Mapping[str, Any]) -> str:
    """Provider reasoning state as a reasoning item's ``encrypted_content``: our versioned
    envelope (``sg1.`` + base64url of JSON naming the provider and model)."""
    payload = orjson.dumps({"p": provider, "m": model, "s": state})
    return _ENVELOPE_PREFIX + base64.urlsafe_b64encode(payload).decode().rstrip("=")


def open_reasoning(token: Any, provider: str, model: str) -> dict[str, Any] | None:
    """The state sealed for this provider and model, else None: an envelope from another
    provider or model (or from OpenAI itself) cannot be replayed here and is dropped
    (mapping.md §5)."""
    if not isinstance(token, str) or not token.startswith(_ENVELOPE_PREFIX):
        return None
    data = token[len(_ENVELOPE_PREFIX) :]
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("p") != provider or payload.get("m") != model:
        return None
    state = payload.get("s")
    return state if isinstance(state, dict) else None


# --- the response -----------------------------------------------------------------------------


def _given(body: Mapping[str, Any], key: str, default: Any) -> Any:
    # Most optional request fields accept an explicit null meaning "unset" (responses-api.md §0).
    value = body.get(key)
    return default if value is None else value


def _float(body: Mapping[str, Any], key: str) -> Any:
    # OpenAI echoes sampling parameters as floats (1 -> 1.0).
    value = body.get(key)
    if value is None:
        return 1.0
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _merged(body: Mapping[str, Any], key: str, defaults: dict[str, Any]) -> Any:
    value = body.get(key)
    if isinstance(value, dict):
        return defaults | value
    return defaults if value is None else value


def response_echo(
    body: Mapping[str, Any], *, response_id: str, model: str, created_at: int
) -> dict[str, Any]:
    """A Response object (responses-api.md §8) in progress for the request ``body``: no
    output, no usage, the configuration echoed with OpenAI's defaults for absent fields."""
    service_tier = body.get("service_tier")
    metadata = body.get("metadata")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "completed_at": None,
        "background": body.get("background") is True,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": _given(body, "parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": _merged(body, "reasoning", {"effort": None, "summary": None}),
        "safety_identifier": body.get("safety_identifier"),
        # The Response echoes the tier actually used; "auto" resolves to "default".
        "service_tier": "default" if service_tier in (None, "auto") else service_tier,
        "store": _given(body, "store", True),
        "temperature": _float(body, "temperature"),
        "text": _merged(body, "text", {"format": {"type": "text"}, "verbosity": "medium"}),
        "tool_choice": _given(body, "tool_choice", "auto"),
        "tools": _given(body, "tools", []),
        "top_logprobs": _given(body, "top_logprobs", 0),
        "top_p": _float(body, "top_p"),
        "truncation": _given(body, "truncation", "disabled"),
        "usage": None,
        "user": body.get("user"),
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


@attrs.define(eq=False)
class _Open:
    """The item being streamed: its wire dict and what its ``done`` events need."""

    index: int
    item: dict[str, Any]
    #: Text pieces of the open content part (message) or summary part (reasoning), argument
    #: pieces (function call), or the input streamed so far (custom tool call).
    pieces: list[str] = attrs.Factory(list)
    #: A custom tool call's input, decoded from the arguments of its function.
    freeform: FreeformInput | None = None
    #: The open ``output_text`` part's token logprobs.
    logprobs: list[Any] = attrs.Factory(list)
    #: The open content part's type (``output_text``/``refusal``), or whether a summary part
    #: is open (``summary_text``); None: no part open.
    part: str | None = None


@attrs.define(eq=False)
class ResponseEmitter:
    """Builds the canonical event sequence (module docstring) from provider-neutral calls.

    Events accumulate until :meth:`take`; sequence numbers are consecutive from 0 (the
    pipeline's tracker checks and keeps them so)."""

    _context: BridgeContext
    _response: dict[str, Any] = attrs.field(init=False)
    _events: list[StreamEvent] = attrs.Factory(list)
    _output: list[dict[str, Any]] = attrs.Factory(list)
    _open: _Open | None = None
    _seq: int = 0
    _started: bool = False
    _ended: bool = False

    def __attrs_post_init__(self) -> None:
        c = self._context
        self._response = response_echo(
            c.body, response_id=c.response_id, model=c.model, created_at=c.created_at
        )
        if c.dropped:
            self._response["sluicegate"] = {"dropped_params": list(c.dropped)}

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def output(self) -> list[dict[str, Any]]:
        """The items finished so far."""
        return self._output

    def take(self) -> list[StreamEvent]:
        events, self._events = self._events, []
        return events

    def _emit(self, data: dict[str, Any]) -> None:
        data = {"type": data["type"], "sequence_number": self._seq, **data}
        self._seq += 1
        self._events.append(event_from_wire(data))

    def start(self) -> None:
        """``response.created`` and ``response.in_progress`` (once; every other call starts
        the response if it has not started)."""
        if self._started:
            return
        self._started = True
        for kind in ("response.created", "response.in_progress"):
            self._emit({"type": kind, "response": dict(self._response)})

    # -- messages --

    def text(self, delta: str, logprobs: list[Any] | None = None) -> None:
        """Answer text (opens a message item and an ``output_text`` part as needed), with the
        provider's token ``logprobs`` for it when asked for (Responses shape: ``token``,
        ``logprob``, ``bytes``, ``top_logprobs``)."""
        self._part_delta("output_text", delta, logprobs or [])

    def refusal(self, delta: str) -> None:
        self._part_delta("refusal", delta, [])

    def _part_delta(self, kind: str, delta: str, logprobs: list[Any]) -> None:
        if not delta:
            return
        item = self._ensure("message")
        if item.part != kind:
            self._close_part(item)
            item.part = kind
            value = {"output_text": {"text": "", "annotations": [], "logprobs": []}}.get(
                kind, {"refusal": ""}
            )
            part = {"type": kind, **value}
            self._emit(
                {
                    "type": "response.content_part.added",
                    **self._where(item),
                    "part": part,
                }
            )
        item.pieces.append(delta)
        item.logprobs.extend(logprobs)
        event = "response.output_text.delta" if kind == "output_text" else "response.refusal.delta"
        extra: dict[str, Any] = {"logprobs": logprobs} if kind == "output_text" else {}
        self._emit({"type": event, **self._where(item), "delta": delta, **extra})

    def _where(self, item: _Open) -> dict[str, Any]:
        return {
            "item_id": item.item["id"],
            "output_index": item.index,
            "content_index": len(item.item["content"]),
        }

    def _close_part(self, item: _Open) -> None:
        if item.part is None:
            return
        text = "".join(item.pieces)
        where = self._where(item)
        if item.part == "output_text":
            logprobs = item.logprobs
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
            self._emit(
                {"type": "response.output_text.done", **where, "text": text, "logprobs": logprobs}
            )
        else:
            part = {"type": "refusal", "refusal": text}
            self._emit({"type": "response.refusal.done", **where, "refusal": text})
        self._emit({"type": "response.content_part.done", **where, "part": part})
        item.item["content"].append(part)
        item.part = None
        item.pieces = []
        item.logprobs = []

    # -- reasoning --

    def reasoning(self, delta: str = "") -> None:
        """Reasoning summary text (opens a reasoning item and a summary part as needed)."""
        item = self._ensure("reasoning")
        if not delta:
            return
        where = {
            "item_id": item.item["id"],
            "output_index": item.index,
            "summary_index": len(item.item["summary"]),
        }
        if item.part is None:
            item.part = "summary_text"
            self._emit(
                {
                    "type": "response.reasoning_summary_part.added",
                    **where,
                    "part": {"type": "summary_text", "text": ""},
                }
            )
        item.pieces.append(delta)
        self._emit({"type": "response.reasoning_summary_text.delta", **where, "delta": delta})

    def reasoning_state(self, encrypted_content: str) -> None:
        """Set the open reasoning item's ``encrypted_content`` (opening one if needed)."""
        item = self._ensure("reasoning")
        item.item["encrypted_content"] = encrypted_content

    def end_summary_part(self) -> None:
        """Close the open summary part; the next :meth:`reasoning` delta starts another."""
        item = self._open
        if item is None or item.item["type"] != "reasoning" or item.part is None:
            return
        text = "".join(item.pieces)
        where = {
            "item_id": item.item["id"],
            "output_index": item.index,
            "summary_index": len(item.item["summary"]),
        }
        part = {"type": "summary_text", "text": text}
        self._emit({"type": "response.reasoning_summary_text.done", **where, "text": text})
        self._emit({"type": "response.reasoning_summary_part.done", **where, "part": part})
        item.item["summary"].append(part)
        item.part = None
        item.pieces = []

    def reasoning_item(self, encrypted_content: str, summary: str = "") -> None:
        """A whole reasoning item at once (state that arrives on its own, as Gemini's
        signatures do)."""
        self.close_item()
        self.reasoning(summary)
        self.reasoning_state(encrypted_content)
        self.close_item()

    # -- function calls --

    def function_call(self, call_id: str, name: str) -> None:
        """Open a function call item; :meth:`arguments` streams its arguments. The function of
        a custom tool (``BridgeContext.custom_tools``) opens a ``custom_tool_call`` instead,
        whose input is decoded from the arguments as they stream."""
        self.close_item()
        kind = "custom_tool_call" if name in self._context.custom_tools else "function_call"
        self._ensure(kind, call_id=call_id, name=name)

    def arguments(self, delta: str) -> None:
        item = self._open
        if item is None or item.item["type"] not in ("function_call", "custom_tool_call"):
            raise ValueError("arguments outside a function call")  # a codec bug
        if not delta:
            return
        if item.freeform is not None:
            # A custom tool's input streams as the decoded string, not as its JSON.
            self._call_delta(item, "custom_tool_call_input", item.freeform.feed(delta))
        else:
            self._call_delta(item, "function_call_arguments", delta)

    def whole_function_call(self, call_id: str, name: str, arguments: str) -> None:
        """A call the provider sent whole: the same events, one arguments delta."""
        self.function_call(call_id, name)
        self.arguments(arguments)
        self.close_item()

    def _call_delta(self, item: _Open, kind: str, delta: str) -> None:
        if not delta:
            return  # a chunk that ended inside an escape, or outside the string
        item.pieces.append(delta)
        self._emit(
            {
                "type": f"response.{kind}.delta",
                "item_id": item.item["id"],
                "output_index": item.index,
                "delta": delta,
            }
        )

    @property
    def open_kind(self) -> str | None:
        return None if self._open is None else str(self._open.item["type"])

    # -- items --

    def _ensure(self, kind: str, **fields: Any) -> _Open:
        self.start()
        if self._open is not None and self._open.item["type"] == kind and not fields:
            return self._open
        self.close_item()
        item: dict[str, Any]
        if kind == "message":
            item = {
                "id": mint_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        elif kind == "reasoning":
            item = {"id": mint_id("rs"), "type": "reasoning", "summary": []}
        elif kind == "custom_tool_call":
            item = {
                "id": mint_id("ctc"),
                "type": "custom_tool_call",
                "status": "in_progress",
                "call_id": fields["call_id"],
                "name": fields["name"],
                "input": "",
            }
        else:
            item = {
                "id": mint_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": fields["call_id"],
                "name": fields["name"],
            }
        freeform = FreeformInput() if kind == "custom_tool_call" else None
        self._open = _Open(index=len(self._output), item=item, freeform=freeform)
        added = dict(item)
        for key in ("content", "summary"):
            if key in added:
                added[key] = []
        self._emit(
            {"type": "response.output_item.added", "output_index": self._open.index, "item": added}
        )
        return self._open

    def close_item(self, status: str = "completed") -> None:
        """Finish the open item (``status`` ``incomplete`` when the answer was cut off)."""
        item = self._open
        if item is None:
            return
        wire = item.item
        kind = wire["type"]
        if kind == "message":
            self._close_part(item)
            wire["status"] = status
        elif kind == "reasoning":
            self.end_summary_part()
        elif item.freeform is not None:
            text = item.freeform.close()
            streamed = "".join(item.pieces)
            # What streamed is a prefix of the input (FreeformInput); the rest goes now (all
            # of it when the arguments were not the expected shape and nothing streamed).
            if text.startswith(streamed):
                self._call_delta(item, "custom_tool_call_input", text[len(streamed) :])
            wire["input"] = text
            wire["status"] = status
            self._emit(
                {
                    "type": "response.custom_tool_call_input.done",
                    "item_id": wire["id"],
                    "output_index": item.index,
                    "input": text,
                }
            )
        else:
            arguments = "".join(item.pieces) or "{}"
            wire["arguments"] = arguments
            wire["status"] = status
            self._emit(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": wire["id"],
                    "output_index": item.index,
                    "name": wire["name"],
                    "arguments": arguments,
                }
            )
        self._open = None
        self._output.append(wire)
        self._emit({"type": "response.output_item.done", "output_index": item.index, "item": wire})

    def finish(
        self,
        usage: Mapping[str, Any] | None,
        *,
        incomplete: str | None = None,
        completed_at: int | None = None,
    ) -> None:
        """Close what is open and end the response: ``response.completed``, or
        ``response.incomplete`` with ``incomplete_details.reason`` = ``incomplete``."""
        self.start()
        self.close_item("incomplete" if incomplete else "completed")
        self._ended = True
        if completed_at is None:
            completed_at = self._context.now()
        final = {
            **self._response,
            "status": "incomplete" if incomplete else "completed",
            "completed_at": None if incomplete else completed_at,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "output": list(self._output),
            "usage": dict(usage) if usage is not None else None,
        }
        kind = "response.incomplete" if incomplete else "response.completed"
        self._emit({"type": kind, "response": final})


def responses_usage(
    *,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    total_tokens: int | None = None,
) -> dict[str, Any]:
    """A Responses ``usage`` object (mapping.md §7)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": cached_tokens,
            "cache_write_tokens": cache_write_tokens,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens if total_tokens is None else total_tokens,
    }


def context_for(
    deployment: Deployment,
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

    def check_deployment(self, deployment: Deployment) -> None:
        """Raise ConfigError (naming the ``model_info`` key) if the deployment's per-model
        overrides are invalid; the gateway calls it when it opens, so a bad configuration
        fails at load, not on a request."""
        ...

    def build_request(
        self, deployment: Deployment, request: BridgeInput, *, stream: bool, created_at: int
    ) -> BuiltRequest:
        """The provider request, and the decoder's context; raises InvalidRequestError (400
        naming the parameter) for what the provider cannot take."""
        ...

    def stream_decoder(self, context: BridgeContext) -> Decoder: ...

    def body_decoder(self, context: BridgeContext) -> Decoder: ...

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> UpstreamStatusError:
        """The provider's error response as ours (mapping.md §8)."""
        ...


@attrs.define(eq=False)
class BridgeDecoder:
    """A streamed provider answer → canonical events. Subclasses implement :meth:`on_frame`
    (one SSE event) with calls on ``self.emitter``, and raise our errors for provider errors.

    An error that follows events in the same read is raised on the next call, so the events
    before it are delivered first; a stream that ends before the provider finished the answer
    is an :class:`UpstreamProtocolError` (the tracker ends the response ``failed``)."""

    context: BridgeContext
    emitter: ResponseEmitter = attrs.field(init=False)
    _sse: SSEDecoder = attrs.Factory(SSEDecoder)
    _broken: SluicegateError | None = None

    def __attrs_post_init__(self) -> None:
        self.emitter = ResponseEmitter(self.context)

    def on_frame(self, frame: ServerSentEvent) -> None:
        raise NotImplementedError

    def on_close(self) -> None:
        """The body ended; finish the response if the provider's format allows (default:
        nothing, the end of the answer must have been seen)."""

    def feed(self, data: bytes) -> list[StreamEvent]:
        self._raise_if_broken()
        return self._run(self._sse.feed(data))

    def close(self) -> list[StreamEvent]:
        self._raise_if_broken()
        events = self._run(self._sse.close())
        self._raise_if_broken()
        if not self.emitter.ended:
            try:
                self.on_close()
            except SluicegateError as exc:
                events += self.emitter.take()
                if not events:
                    raise
                self._broken = exc
                return events
        events += self.emitter.take()
        if not self.emitter.ended:
            if events:
                self._broken = _cut_off()
                return events
            raise _cut_off()
        return events

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    def _run(self, frames: list[ServerSentEvent]) -> list[StreamEvent]:
        for frame in frames:
            if self.emitter.ended:
                break  # anything after the end of the answer is not ours to deliver
            try:
                self.on_frame(frame)
            except SluicegateError as exc:
                events = self.emitter.take()
                if not events:
                    raise
                self._broken = exc
                return events
        return self.emitter.take()


def _cut_off() -> UpstreamProtocolError:
    return UpstreamProtocolError("the provider's stream ended before the answer was finished")


def loads_provider_json(data: bytes, what: str) -> Any:
    """Provider JSON, or an UpstreamProtocolError naming what was malformed."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        shown = data[:200].decode("utf-8", "replace")
        raise UpstreamProtocolError(
            f"the provider sent malformed {what}: {exc} in {shown!r}"
        ) from exc


@attrs.define(eq=False)
class BridgeBodyDecoder:
    """A non-streamed provider answer → the events its stream would have ended with.
    Subclasses implement :meth:`translate` (the whole JSON body, drive ``emitter``); the body is
    read whole first (a non-streamed body is one value)."""

    context: BridgeContext
    _chunks: list[bytes] = attrs.Factory(list)

    def translate(self, body: Any, emitter: ResponseEmitter) -> None:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[StreamEvent]:
        self._chunks.append(data)
        return []

    def close(self) -> list[StreamEvent]:
        body = loads_provider_json(b"".join(self._chunks), "JSON body")
        emitter = ResponseEmitter(self.context)
        self.translate(body, emitter)
        if not emitter.ended:
            raise UpstreamProtocolError("the provider's answer has no end (no stop reason)")
        return emitter.take()


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
