"""Bridge to OpenAI-compatible Chat Completions servers (vLLM, Ollama, Groq, OpenAI's own chat
endpoint, ...): a Responses request becomes ``POST {api_base}/chat/completions``, and the chat
chunks come back as the canonical Responses events (mapping.md, the Chat column).

Theory of operation.

- :func:`rules_for` looks up what the upstream accepts in :data:`CHAT_RULES`, ONE table keyed
  by provider and model prefix (the longest matching prefix wins), then applies the
  deployment's ``model_info`` overrides. Compatible servers implement a subset of OpenAI's
  fields and strict ones answer 400/422 to anything else (chat-completions.md §6), so the
  request carries only what the table says the target takes; the rest is refused before any
  upstream call (or dropped under ``drop_params``, mapping.md §10).
- :class:`ChatCompletionsCodec.build_request` maps the conversation (mapping.md §1-§3):
  instructions first, messages in order, ``function_call`` items merged into assistant
  ``tool_calls``, ``function_call_output`` items as ``tool`` messages; reasoning items are
  dropped (Chat takes no reasoning input).
- :class:`ChatStreamDecoder` and :class:`ChatBodyDecoder` drive one :class:`_Translator`,
  which turns chunks (or the one non-streamed message, read as a single delta) into calls on
  the :class:`~._bridge.ResponseEmitter` (mapping.md §9).
- :meth:`ChatCompletionsCodec.parse_error` maps error statuses and the error shapes compatible
  servers send (the OpenAI envelope, ``{"detail": ...}``, a flat ``{"message": ...}``, plain
  text) to ours (mapping.md §8).

Chat has no reasoning state to replay: reasoning text (the non-standard ``reasoning_content``
/ ``reasoning`` fields) becomes a reasoning item without ``encrypted_content``.

Custom tools are function tools of one string argument, their calls ``custom_tool_call`` items,
and fields the gateway does not know are refused or dropped by name: the shared checks of
:mod:`._bridge`. ``prompt_cache_key`` goes to OpenAI's own endpoint, which has the field; other
servers have none, and it is left out without a word: it only steers OpenAI's cache routing,
servers that cache prompts (vLLM's prefix cache, DeepSeek's disk cache) match by prefix, and no
answer changes.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import enum
import mimetypes
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs
import orjson

from ..config import Deployment
from ..errors import ConfigError, InvalidRequestError, UpstreamProtocolError, UpstreamStatusError
from ._bridge import (
    BridgeBodyDecoder,
    BridgeContext,
    BridgeDecoder,
    BridgeInput,
    BuiltRequest,
    RequestPlan,
    ResponseEmitter,
    context_for,
    conversation_items,
    data_url_parts,
    function_items,
    loads_provider_json,
    mint_id,
    responses_usage,
)
from .openai_responses import UpstreamRequest, parse_error_response
from .sse import ServerSentEvent

__all__ = [
    "CHAT_RULES",
    "CODEC",
    "ChatBodyDecoder",
    "ChatCompletionsCodec",
    "ChatRules",
    "ChatStreamDecoder",
    "rules_for",
]


# --- what each upstream accepts ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ChatRules:
    """What one upstream (a provider, or some of its models) accepts. A deployment's
    ``model_info`` may set any of these fields by name."""

    #: The role of ``instructions`` (mapping.md §1: ``developer`` for OpenAI reasoning models).
    instructions_role: str = "system"
    #: Where ``max_output_tokens`` goes: ``max_tokens`` (most servers) or
    #: ``max_completion_tokens`` (OpenAI; required by its reasoning models).
    max_tokens_field: str = "max_tokens"
    #: ``reasoning_effort`` is taken (passed on: a server that refuses a value says so).
    reasoning_effort: bool = True
    #: ``temperature`` and ``top_p`` are taken (OpenAI's reasoning models only take defaults).
    sampling: bool = True
    #: ``logprobs`` / ``top_logprobs`` are taken.
    logprobs: bool = True
    #: ``response_format`` of type ``json_schema`` is taken (``json_object`` always is).
    json_schema: bool = True
    #: The ``user`` field is taken (strict servers reject it).
    user: bool = True
    #: ``stream_options.include_usage`` is taken; servers that do not take it send the usage on
    #: their last chunk anyway.
    stream_options: bool = True
    #: OpenAI's own fields (chat-completions.md §1-§2): the ``developer`` role, file parts and
    #: ``file_id``, ``allowed_tools``, ``verbosity``, ``prompt_cache_key``,
    #: ``safety_identifier``, ``service_tier`` tiers, the ``refusal`` of replayed messages.
    openai_fields: bool = False


_COMPATIBLE: Final = ChatRules()
_OPENAI: Final = ChatRules(
    openai_fields=True, max_tokens_field="max_completion_tokens", reasoning_effort=False
)
# o-series and gpt-5: developer instructions, reasoning_effort, no sampling parameters or
# logprobs (OpenAI answers 400 "Unsupported parameter" to those).
_OPENAI_REASONING: Final = attrs.evolve(
    _OPENAI, instructions_role="developer", reasoning_effort=True, sampling=False, logprobs=False
)

#: (provider, model prefix) -> rules; "" is the provider's default and the longest prefix of
#: the deployment's model wins. Servers that vary per model (vLLM, Ollama, OpenRouter) keep the
#: permissive default: their own 400 is passed on, and ``model_info`` can narrow it.
CHAT_RULES: Final[Mapping[tuple[str, str], ChatRules]] = {
    ("chat", ""): _COMPATIBLE,
    ("openai_chat", ""): _OPENAI,
    ("openai_chat", "o1"): _OPENAI_REASONING,
    ("openai_chat", "o3"): _OPENAI_REASONING,
    ("openai_chat", "o4"): _OPENAI_REASONING,
    ("openai_chat", "gpt-5"): _OPENAI_REASONING,
    ("openai_chat", "gpt-5-chat"): _OPENAI,
    ("hosted_vllm", ""): _COMPATIBLE,
    ("ollama_chat", ""): _COMPATIBLE,
    ("groq", ""): attrs.evolve(_COMPATIBLE, logprobs=False),
    ("deepseek", ""): attrs.evolve(_COMPATIBLE, json_schema=False),
    ("together_ai", ""): _COMPATIBLE,
    ("fireworks_ai", ""): _COMPATIBLE,
    ("openrouter", ""): _COMPATIBLE,
    ("mistral", ""): attrs.evolve(
        _COMPATIBLE, reasoning_effort=False, user=False, stream_options=False, logprobs=False
    ),
    ("xai", ""): _COMPATIBLE,
    ("xai", "grok-4"): attrs.evolve(_COMPATIBLE, reasoning_effort=False),
}

_RULE_TYPES: Final = {f.name: type(getattr(_COMPATIBLE, f.name)) for f in attrs.fields(ChatRules)}
_RULE_VALUES: Final = {
    "instructions_role": ("system", "developer"),
    "max_tokens_field": ("max_tokens", "max_completion_tokens"),
}


def rules_for(deployment: Deployment) -> ChatRules:
    """The rules for this deployment: the table's entry for its provider and model, with its
    ``model_info`` overrides applied.

    Raises:
        ConfigError: a ``model_info`` override of the wrong type.
    """
    provider = deployment.provider if (deployment.provider, "") in CHAT_RULES else "chat"
    prefix = max(
        (p for (name, p) in CHAT_RULES if name == provider and deployment.model.startswith(p)),
        key=len,
    )
    overrides: dict[str, Any] = {}
    for key, value in deployment.model_info.items():
        kind = _RULE_TYPES.get(key)
        if kind is None:
            continue  # model_info holds other facts too (mode, base_model, ...)
        allowed = _RULE_VALUES.get(key)
        if type(value) is not kind or (allowed is not None and value not in allowed):
            expected = " or ".join(map(repr, allowed)) if allowed else kind.__name__
            raise ConfigError(f"expected {expected}", path=f"model_info.{key}")
        overrides[key] = value
    return attrs.evolve(CHAT_RULES[provider, prefix], **overrides)


# --- the request ------------------------------------------------------------------------------


def _text_content(texts: list[str]) -> str | list[dict[str, str]]:
    # One text is sent as a plain string, the form every compatible server takes.
    if len(texts) == 1:
        return texts[0]
    return [{"type": "text", "text": text} for text in texts]


@attrs.define(eq=False)
class _Messages:
    """The conversation as Chat messages (mapping.md §1-§2)."""

    _plan: RequestPlan
    _rules: ChatRules
    messages: list[dict[str, Any]] = attrs.Factory(list)
    #: The assistant message the next ``function_call`` joins: the one just added, when
    #: nothing but dropped reasoning came after it.
    _assistant: dict[str, Any] | None = None

    def add(self, item: Mapping[str, Any], path: str) -> None:
        kind = item.get("type")
        if kind == "message":
            self._message(item, path)
        elif kind == "function_call":
            self._function_call(item, path)
        elif kind == "function_call_output":
            self._function_call_output(item, path)
        elif kind == "reasoning":
            pass  # Chat takes no reasoning input (mapping.md §2); not an error
        elif kind == "item_reference":
            self._plan.unsupported("input", f"'{path}' (an item_reference)")
        else:
            self._plan.unsupported(path, f"'{path}' of type {kind!r}")

    def _append(self, message: dict[str, Any], *, assistant: bool = False) -> None:
        self.messages.append(message)
        self._assistant = message if assistant else None

    def _message(self, item: Mapping[str, Any], path: str) -> None:
        role = item.get("role")
        content: list[Any] = item.get("content") or []
        if role == "assistant":
            self._assistant_message(content, path)
            return
        if role in ("system", "developer"):
            # Compatible servers reject ``developer``; to them it is a system message.
            role = role if self._rules.openai_fields else "system"
        elif role != "user":
            raise InvalidRequestError(
                f"Invalid value for '{path}.role': {role!r}.",
                param=f"{path}.role",
                code="invalid_value",
            )
        parts = [self._part(part, f"{path}.content[{j}]", role) for j, part in enumerate(content)]
        kept = [part for part in parts if part is not None]
        if all(part["type"] == "text" for part in kept):
            texts = [part["text"] for part in kept]
            self._append({"role": role, "content": _text_content(texts) if texts else ""})
        else:
            self._append({"role": role, "content": kept})

    def _assistant_message(self, content: list[Any], path: str) -> None:
        texts: list[str] = []
        refusals: list[str] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("output_text", "input_text"):
                texts.append(str(part.get("text") or ""))
            elif kind == "refusal":
                # OpenAI takes the refusal back as such; to other servers it is what was said.
                (refusals if self._rules.openai_fields else texts).append(
                    str(part.get("refusal") or "")
                )
            else:
                where = f"{path}.content[{j}]"
                self._plan.unsupported(where, f"'{where}' of type {kind!r} in an assistant message")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        if refusals:
            message["refusal"] = "".join(refusals)
        self._append(message, assistant=True)

    def _part(self, part: Any, where: str, role: str) -> dict[str, Any] | None:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            return {"type": "text", "text": str(part.get("text") or "")}
        if role != "user" and kind in ("input_image", "input_file"):
            self._plan.unsupported(where, f"'{where}' ({kind} in a {role} message)")
            return None
        if kind == "input_image":
            return self._image(part, where)
        if kind == "input_file":
            return self._file(part, where)
        self._plan.unsupported(where, f"'{where}' of type {kind!r}")
        return None

    def _image(self, part: Mapping[str, Any], where: str) -> dict[str, Any] | None:
        url = part.get("image_url")
        if url is None and part.get("file_id") is not None:
            return self._file_id(part["file_id"], where)
        if not isinstance(url, str) or not url.startswith(("https://", "http://", "data:")):
            raise InvalidRequestError(
                f"Invalid '{where}.image_url': expected an https URL or a data URL.",
                param=f"{where}.image_url",
                code="invalid_value",
            )
        image = {"url": url}
        detail = part.get("detail")
        if detail is not None:
            # Chat knows no "original"; "high" is its closest (mapping.md §1).
            image["detail"] = "high" if detail == "original" else detail
        return {"type": "image_url", "image_url": image}

    def _file(self, part: Mapping[str, Any], where: str) -> dict[str, Any] | None:
        if part.get("file_id") is not None:
            return self._file_id(part["file_id"], where)
        if not self._rules.openai_fields:
            self._plan.unsupported(where, f"'{where}' (file inputs)")
            return None
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            # Chat has no file URLs (mapping.md §1); the file itself must be sent.
            self._plan.unsupported(f"{where}.file_url", f"'{where}.file_url' (file URLs)")
            return None
        filename = part.get("filename")
        if not isinstance(filename, str) or not filename:
            filename = "document.pdf"
        if data_url_parts(data) is None:  # bare base64: Chat wants a data URL
            media_type = mimetypes.guess_type(filename)[0] or "application/pdf"
            data = f"data:{media_type};base64,{data}"
        return {"type": "file", "file": {"file_data": data, "filename": filename}}

    def _file_id(self, file_id: Any, where: str) -> dict[str, Any] | None:
        if not self._rules.openai_fields:
            self._plan.unsupported(f"{where}.file_id", f"'{where}.file_id' (OpenAI file IDs)")
            return None
        return {"type": "file", "file": {"file_id": file_id}}

    def _function_call(self, item: Mapping[str, Any], path: str) -> None:
        call_id, name = item.get("call_id"), item.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise InvalidRequestError(
                f"'{path}' needs a string 'call_id' and 'name'.",
                param=path,
                code="missing_required_parameter",
            )
        arguments = item.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        # Consecutive calls, and the assistant text right before them, are one assistant
        # message (mapping.md §2).
        message = self._assistant
        if message is None:
            message = {"role": "assistant"}
            self._append(message, assistant=True)
        message.setdefault("tool_calls", []).append(call)

    def _function_call_output(self, item: Mapping[str, Any], path: str) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise InvalidRequestError(
                f"'{path}' needs a string 'call_id'.",
                param=f"{path}.call_id",
                code="missing_required_parameter",
            )
        output = item.get("output")
        content: str | list[dict[str, str]]
        if isinstance(output, str):
            content = output
        elif isinstance(output, list):
            texts: list[str] = []
            media = False
            for j, part in enumerate(output):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("input_text", "output_text"):
                    texts.append(str(part.get("text") or ""))
                elif kind in ("input_image", "input_file"):
                    media = True
                else:
                    where = f"{path}.output[{j}]"
                    self._plan.unsupported(where, f"'{where}' of type {kind!r}")
            if media:
                # A tool message carries text only (mapping.md §2); dropping keeps the text.
                self._plan.unsupported(path, f"'{path}' (images or files in a tool output)")
            content = _text_content(texts) if texts else ""
        else:
            raise InvalidRequestError(
                f"Invalid type for '{path}.output': expected a string or an array of parts.",
                param=f"{path}.output",
                code="invalid_type",
            )
        self._append({"role": "tool", "tool_call_id": call_id, "content": content})


def _chat_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tools(
    plan: RequestPlan,
    rules: ChatRules,
    body: Mapping[str, Any],
    functions: list[dict[str, Any]],
) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` (mapping.md §2)."""
    choice = plan.tool_choice(body, functions)
    tools = functions
    chat_choice: Any = None
    if choice.mode == "function" and choice.names:
        chat_choice = {"type": "function", "function": {"name": choice.names[0]}}
    elif choice.names is not None:  # allowed_tools
        if rules.openai_fields:
            chat_choice = {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": choice.mode,
                    "tools": [{"type": "function", "function": {"name": n}} for n in choice.names],
                },
            }
        else:
            tools = [tool for tool in functions if tool["name"] in choice.names]
            chat_choice = choice.mode
    elif body.get("tool_choice") is not None:
        chat_choice = choice.mode
    if not tools:
        # OpenAI rejects tool_choice and parallel_tool_calls without tools.
        return {}
    out: dict[str, Any] = {"tools": [_chat_tool(tool) for tool in tools]}
    if chat_choice is not None:
        out["tool_choice"] = chat_choice
    if body.get("parallel_tool_calls") is not None:
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    return out


_LOGPROBS_INCLUDE: Final = "message.output_text.logprobs"


def _controls(plan: RequestPlan, rules: ChatRules, body: Mapping[str, Any]) -> dict[str, Any]:
    """Generation controls and the request's other fields (mapping.md §3)."""
    out: dict[str, Any] = {}
    if body.get("max_output_tokens") is not None:
        out[rules.max_tokens_field] = body["max_output_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is None:
            continue
        if rules.sampling:
            out[name] = body[name]
        else:
            plan.unsupported(name)
    reasoning = body.get("reasoning") or {}
    if reasoning.get("effort") is not None:
        if rules.reasoning_effort:
            out["reasoning_effort"] = reasoning["effort"]
        else:
            plan.unsupported("reasoning.effort")
    text = body.get("text") or {}
    out.update(_response_format(plan, rules, text.get("format")))
    verbosity = text.get("verbosity")
    if verbosity is not None:
        if rules.openai_fields:
            out["verbosity"] = verbosity
        elif verbosity != "medium":  # the default is what every server does anyway
            plan.unsupported("text.verbosity")
    include = list(body.get("include") or [])
    if _LOGPROBS_INCLUDE in include:
        if rules.logprobs:
            out["logprobs"] = True
            if body.get("top_logprobs"):
                out["top_logprobs"] = body["top_logprobs"]
        else:
            i = include.index(_LOGPROBS_INCLUDE)
            plan.unsupported(f"include[{i}]", f"'include' value {_LOGPROBS_INCLUDE!r}")
    tier = body.get("service_tier")
    if tier is not None:
        if rules.openai_fields:
            out["service_tier"] = tier
        elif tier not in ("auto", "default"):  # what a server without tiers does anyway
            plan.unsupported("service_tier", f"'service_tier' {tier!r}")
    # metadata and store are the gateway's (mapping.md §3); an unsent prompt_cache_key or
    # safety_identifier is harmless (mapping.md §10: accepted, forwarded where a field exists).
    if rules.openai_fields:
        for name in ("user", "safety_identifier", "prompt_cache_key"):
            if body.get(name) is not None:
                out[name] = body[name]
    elif rules.user:
        user = body.get("user") or body.get("safety_identifier")
        if user:
            out["user"] = user
    return out


def _response_format(plan: RequestPlan, rules: ChatRules, fmt: Any) -> dict[str, Any]:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind != "json_schema":  # raises
        plan.unsupported_value(
            "text.format.type", f"'text.format' of type {kind!r} is not supported"
        )
    if not rules.json_schema:
        plan.unsupported("text.format", "'text.format' of type 'json_schema'")
        return {}
    # Chat nests what Responses keeps flat (responses-api.md §5).
    schema = {
        key: fmt[key]
        for key in ("name", "schema", "strict", "description")
        if fmt.get(key) is not None
    }
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def _build_messages(
    plan: RequestPlan, rules: ChatRules, instructions: Any, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    messages = _Messages(plan, rules)
    if isinstance(instructions, str) and instructions:
        messages.messages.append({"role": rules.instructions_role, "content": instructions})
    elif isinstance(instructions, list):  # instructions as input items (prompt templates)
        for i, item in enumerate(conversation_items([], instructions)):
            messages.add(item, f"instructions[{i}]")
    for i, item in enumerate(items):
        messages.add(item, f"input[{i}]")
    return messages.messages


# --- the answer -------------------------------------------------------------------------------

#: ``finish_reason`` -> ``incomplete_details.reason`` (mapping.md §6); absent: completed.
_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


class _CallState(enum.Enum):
    #: Arguments collected, nothing emitted yet (name unknown, or waiting for the open call).
    PENDING = "pending"
    #: The emitter's open item: argument fragments stream as deltas.
    OPEN = "open"
    DONE = "done"


@attrs.define(eq=False)
class _Call:
    #: The provider's ID; minted when the call is emitted without one (chat-completions.md §4).
    call_id: str | None = None
    name: str = ""
    pieces: list[str] = attrs.Factory(list)
    state: _CallState = _CallState.PENDING


def _complete_json(pieces: list[str]) -> bool:
    try:
        orjson.loads("".join(pieces))
    except orjson.JSONDecodeError:
        return False
    return True


def _count(obj: Any, key: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Chat usage in Responses terms (mapping.md §7); missing fields count 0."""
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    total = usage.get("total_tokens")
    return responses_usage(
        input_tokens=_count(usage, "prompt_tokens"),
        output_tokens=_count(usage, "completion_tokens"),
        # DeepSeek reports its cache hits at the top level instead.
        cached_tokens=_count(prompt, "cached_tokens") or _count(usage, "prompt_cache_hit_tokens"),
        cache_write_tokens=_count(prompt, "cache_write_tokens"),
        reasoning_tokens=_count(completion, "reasoning_tokens"),
        total_tokens=total if isinstance(total, int) and not isinstance(total, bool) else None,
    )


@attrs.define(eq=False)
class _Translator:
    """Chat chunks → emitter calls (mapping.md §9), for the stream and the body alike.

    Tool calls stream while they arrive one after another: a fragment of a new ``index``
    closes the open call once its arguments are complete JSON (chat-completions.md §4: calls
    interleave only by ``index``). If they are not, calls interleave, and the rest is buffered
    and emitted whole, in index order, at the finish."""

    context: BridgeContext
    emitter: ResponseEmitter
    _calls: dict[int, _Call] = attrs.Factory(dict)
    _open_call: int | None = None
    _buffering: bool = False
    finish_reason: str | None = None
    _usage: Mapping[str, Any] | None = None
    _created: int = 0

    def chunk(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError("the provider sent a chunk that is not a JSON object")
        if chunk.get("error") is not None:
            raise _stream_error(chunk["error"])
        if chunk.get("object") == "error":  # vLLM's flat error shape
            raise _stream_error(chunk)
        self.emitter.start()
        created = chunk.get("created")
        if isinstance(created, int):
            self._created = created
        if isinstance(chunk.get("usage"), dict):
            # Usually a last chunk of its own; some servers send it on every chunk (keep the
            # last) or on the finish chunk (chat-completions.md §4).
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index") not in (0, None):
                continue  # we never ask for n > 1
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, choice.get("logprobs"))
            reason = choice.get("finish_reason")
            if reason == "error":  # OpenRouter ends a failed generation so
                raise _provider_error(
                    502, "finish_reason 'error'", code=None, kind=None, origin="mid-stream"
                )
            if reason:
                self.finish_reason = str(reason)

    def _delta(self, delta: Mapping[str, Any], logprobs: Any) -> None:
        # Non-standard reasoning text: DeepSeek and vLLM say reasoning_content, OpenRouter and
        # Ollama say reasoning (chat-completions.md §6).
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._leave_call()
            # Summary text only when the client asked for summaries; else an item that says
            # the model reasoned, as OpenAI's own reasoning items do.
            self.emitter.reasoning(reasoning if self.context.summaries else "")
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._leave_call()
            lp = logprobs.get("content") if isinstance(logprobs, dict) else None
            self.emitter.text(content, lp if isinstance(lp, list) else None)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._leave_call()
            self.emitter.refusal(refusal)
        for fragment in delta.get("tool_calls") or ():
            if isinstance(fragment, dict):
                self._fragment(fragment)

    def _leave_call(self) -> None:
        # Other output closes the open call (the emitter opens items one after another).
        if self._open_call is not None:
            self._calls[self._open_call].state = _CallState.DONE
            self._open_call = None

    def _fragment(self, fragment: Mapping[str, Any]) -> None:
        call_id = fragment.get("id")
        function = fragment.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        arguments = function.get("arguments")
        if isinstance(arguments, dict | list):  # some servers send them parsed
            arguments = orjson.dumps(arguments).decode()
        arguments = arguments if isinstance(arguments, str) else ""
        index = fragment.get("index")
        if not isinstance(index, int):
            index = self._index_of(call_id)
        call = self._calls.setdefault(index, _Call())
        # Some servers repeat the id and name on every fragment, or send them late.
        if isinstance(call_id, str) and call_id and call.call_id is None:
            call.call_id = call_id
        if isinstance(name, str) and name and not call.name:
            call.name = name
        if call.state is _CallState.DONE:
            if arguments.strip():  # whitespace after complete JSON changes nothing
                raise UpstreamProtocolError(
                    f"the provider sent more arguments for tool call {index} after it was complete"
                )
            return
        if arguments:
            call.pieces.append(arguments)
        if call.state is _CallState.OPEN:
            self.emitter.arguments(arguments)
        else:
            self._advance(index, call)

    def _index_of(self, call_id: Any) -> int:
        # No index (chat-completions.md §4): a new id is the next call, else the latest one.
        if isinstance(call_id, str) and call_id:
            for index, call in self._calls.items():
                if call.call_id == call_id:
                    return index
            return max(self._calls, default=-1) + 1
        return max(self._calls, default=0)

    def _advance(self, index: int, call: _Call) -> None:
        if self._buffering:
            return
        if self._open_call is not None:
            current = self._calls[self._open_call]
            if not _complete_json(current.pieces):
                self._buffering = True  # the open call is not finished: calls interleave
                return
            self.emitter.close_item()
            current.state = _CallState.DONE
            self._open_call = None
        if not call.name:
            return  # opened when the name arrives
        self._emit_call(call)
        call.state = _CallState.OPEN
        self._open_call = index

    def _emit_call(self, call: _Call) -> None:
        if call.call_id is None:
            call.call_id = mint_id("call")
        self.emitter.function_call(call.call_id, call.name)
        self.emitter.arguments("".join(call.pieces))

    def finish(self) -> None:
        """Close what is open, emit buffered calls whole, and end the response (§6)."""
        incomplete = _INCOMPLETE.get(self.finish_reason or "")
        status = "incomplete" if incomplete else "completed"
        if self._open_call is not None:
            self.emitter.close_item(status)
            self._leave_call()
        for index in sorted(self._calls):
            call = self._calls[index]
            if call.state is not _CallState.PENDING:
                continue
            if not call.name:
                raise UpstreamProtocolError(f"the provider sent tool call {index} without a name")
            self._emit_call(call)
            self.emitter.close_item(status)
        self.emitter.finish(
            _usage(self._usage) if self._usage is not None else None,
            incomplete=incomplete,
            # Codecs have no clock: the provider's timestamp, never before our own.
            completed_at=max(self._created, self.context.created_at),
        )


@attrs.define(eq=False)
class ChatStreamDecoder(BridgeDecoder):
    """Chat Completions SSE (``data:`` chunks, then ``data: [DONE]``) → canonical events.

    The answer ends at ``[DONE]``, or when the body ends after a ``finish_reason`` (some
    servers omit ``[DONE]``); a body that ends before either is cut off (failed)."""

    _translator: _Translator = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        emitter = ResponseEmitter(self.context)
        self.emitter = emitter
        self._translator = _Translator(self.context, emitter)

    def on_frame(self, frame: ServerSentEvent) -> None:
        if frame.data == b"[DONE]":
            self._translator.finish()
        else:
            self._translator.chunk(loads_provider_json(frame.data, "stream chunk"))

    def on_close(self) -> None:
        if self._translator.finish_reason is not None:
            self._translator.finish()


@attrs.define(eq=False)
class ChatBodyDecoder(BridgeBodyDecoder):
    """A non-streamed chat completion → the events its stream would have given: the message
    is read as one delta (it has the same fields), so the same translation applies."""

    def translate(self, body: Any, emitter: ResponseEmitter) -> None:
        if isinstance(body, dict) and body.get("error") is None and body.get("object") != "error":
            choices = body.get("choices")
            if not isinstance(choices, list):
                raise UpstreamProtocolError("the provider sent a body without 'choices'")
            body = {**body, "choices": [_as_stream_choice(c) for c in choices]}
        translator = _Translator(self.context, emitter)
        translator.chunk(body)
        translator.finish()


def _as_stream_choice(choice: Any) -> Any:
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        return choice
    delta = dict(choice["message"])
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        delta["tool_calls"] = [
            {"index": i, **call} if isinstance(call, dict) else call for i, call in enumerate(calls)
        ]
    return {**choice, "delta": delta}


# --- errors -----------------------------------------------------------------------------------

_CONTEXT_OVERFLOW: Final = re.compile(r"context[ _](length|window)|maximum context", re.IGNORECASE)


def _provider_error(
    status: int,
    message: str,
    *,
    code: str | None,
    kind: str | None,
    origin: str,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> UpstreamStatusError:
    """The provider's error (``status``, its message, code and type) as the gateway reports it
    (mapping.md §8); ``origin`` says where it came from (``HTTP 429``, ``mid-stream``)."""
    hints = {code, kind}
    overflow = "context_length_exceeded" in hints or bool(_CONTEXT_OVERFLOW.search(message))
    what = "the provider answered"
    retryable: bool | None = None
    if status in (401, 403):
        # The key is the gateway's (clients never choose upstream credentials): our fault, and
        # the same key fails the same way again.
        ours, code, retryable = 502, "upstream_authentication_error", False
        what = "the provider rejected the gateway's credentials"
    elif status == 402 or (status == 429 and "insufficient_quota" in hints):
        ours, code, retryable = 429, "insufficient_quota", False  # waiting refills no quota
    elif status == 429:
        ours, code = 429, "rate_limit_exceeded"
    elif status == 404:
        ours, code = 404, "model_not_found"
    elif status == 408:
        ours = 504
    elif status >= 500 or status == 409:
        ours = status
    else:  # 400, 413, 422 and the rest of 4xx: the request was refused
        ours = 413 if status == 413 else 400
        if overflow:
            code = "context_length_exceeded"
        elif status == 413:
            code = "request_too_large"
        what = "the provider rejected the request"
    error = UpstreamStatusError(
        f"{what} ({origin}): {message}" if message else f"{what} ({origin})",
        status_code=ours,
        code=code,
        retry_after=retry_after,
        headers=headers,
    )
    if retryable is not None:
        error.retryable = retryable
    return error


def _string_code(value: Any) -> str | None:
    # vLLM puts the HTTP status in ``code``; only a word is a code.
    return value if isinstance(value, str) and value and not value.isdigit() else None


def _other_error_shape(body: bytes) -> tuple[str, str | None, str | None] | None:
    """(message, code, type) of an error body that is not the OpenAI envelope: FastAPI's
    ``{"detail": ...}``, the flat ``{"message": ...}`` of vLLM and Mistral, plain text."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace").strip(), None, None
    if not isinstance(parsed, dict) or "error" in parsed:
        return None
    detail = parsed.get("detail")
    if isinstance(detail, str):
        return detail, None, None
    if isinstance(detail, list):  # a validation error list
        texts = [str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail]
        return "; ".join(texts), None, None
    message = parsed.get("message")
    if isinstance(message, str):
        kind = parsed.get("type")
        return message, _string_code(parsed.get("code")), kind if isinstance(kind, str) else None
    return None


def _stream_error(error: Any) -> UpstreamStatusError:
    """An error chunk in the stream (chat-completions.md §4) as ours."""
    if not isinstance(error, dict):
        return _provider_error(500, str(error), code=None, kind=None, origin="mid-stream")
    message = error.get("message")
    code = error.get("code")
    kind = error.get("type")
    words = f"{code} {kind}".lower()
    if isinstance(code, int) and 400 <= code <= 599:
        status = code  # OpenRouter and vLLM say the status
    elif "quota" in words or "rate_limit" in words:
        status = 429
    elif "overloaded" in words or "unavailable" in words:
        status = 503
    else:
        status = 500
    return _provider_error(
        status,
        message if isinstance(message, str) else "",
        code=_string_code(code),
        kind=kind if isinstance(kind, str) else None,
        origin="mid-stream",
    )


# --- the codec --------------------------------------------------------------------------------


class ChatCompletionsCodec:
    """The :class:`~._bridge.BridgeCodec` of OpenAI-compatible Chat Completions servers
    (stateless: one instance, :data:`CODEC`, serves every deployment)."""

    #: Chat servers that take images take their URLs.
    inline_remote_media: bool = False

    def check_deployment(self, deployment: Deployment) -> None:
        rules_for(deployment)

    def build_request(
        self, deployment: Deployment, request: BridgeInput, *, stream: bool, created_at: int
    ) -> BuiltRequest:
        """``POST {api_base}/chat/completions`` for this request.

        Raises:
            InvalidRequestError: what the upstream cannot take (the parameter's JSON path).
            ConfigError: the deployment has no ``api_base`` or a bad ``model_info`` rule.
        """
        if not deployment.api_base:
            raise ConfigError("a Chat Completions deployment needs an api_base", path="api_base")
        body = request.body
        rules = rules_for(deployment)
        plan = RequestPlan(
            provider=deployment.provider, model=deployment.model, drop_params=request.drop_params
        )
        functions = plan.check_common(body, request.unknown_params)
        items = function_items(request.items)
        payload: dict[str, Any] = {
            "model": deployment.model,
            "messages": _build_messages(plan, rules, body.get("instructions"), items),
        }
        payload.update(_tools(plan, rules, body, functions))
        payload.update(_controls(plan, rules, body))
        if stream:
            payload["stream"] = True
            if rules.stream_options:
                payload["stream_options"] = {"include_usage": True}  # mapping.md §3
        if request.extra_body:
            payload.update(request.extra_body)  # last: the caller's keys win
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            **(
                {"authorization": f"Bearer {deployment.api_key.reveal()}"}
                if deployment.api_key is not None
                else {}
            ),
            **deployment.extra_headers,
            **request.extra_headers,
        }
        upstream = UpstreamRequest(
            method="POST",
            url=f"{deployment.api_base}/chat/completions",
            headers=headers,
            params=dict(request.extra_query),
            content=orjson.dumps(payload),
        )
        context = context_for(deployment, body, plan, created_at=created_at)
        return BuiltRequest(request=upstream, context=context)

    def stream_decoder(self, context: BridgeContext) -> ChatStreamDecoder:
        return ChatStreamDecoder(context)

    def body_decoder(self, context: BridgeContext) -> ChatBodyDecoder:
        return ChatBodyDecoder(context)

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> UpstreamStatusError:
        """The upstream's error response as ours (mapping.md §8)."""
        # The OpenAI envelope and Retry-After are read as for native upstreams.
        base = parse_error_response(status, headers, body, now=now)
        shape = _other_error_shape(body) if body else ("", None, None)
        message, code, kind = shape or (base.message, _string_code(base.code), base.type)
        return _provider_error(
            status,
            message,
            code=code,
            kind=kind,
            origin=f"HTTP {status}",
            retry_after=base.retry_after,
            headers=base.headers,
        )


CODEC: Final = ChatCompletionsCodec()
