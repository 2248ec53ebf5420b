"""Bridge to OpenAI-compatible Chat Completions servers (vLLM, Ollama, Groq, OpenAI's own chat
endpoint, ...): a Responses request becomes ``POST {api_base}/chat/completions``, and the chat
chunks come back as the canonical Responses events (docs/bridges.md, the Chat column).

Theory of operation.

- :func:`rules_for` looks up what the upstream accepts in :data:`CHAT_RULES`, ONE table keyed
  by provider and model prefix (the longest matching prefix wins), then applies the
  deployment's ``model_info`` overrides. Compatible servers implement a subset of OpenAI's
  fields and strict ones answer 400/422 to anything else (the Chat Completions reference), so the
  request carries only what the table says the target takes; the rest is refused before any
  upstream call (or dropped under ``drop_params``, docs/bridges.md §10).
- :class:`ChatCompletionsCodec.build_request` maps the conversation (docs/bridges.md §1-§3):
  instructions first, messages in order, ``function_call`` items merged into assistant
  ``tool_calls``, ``function_call_output`` items as ``tool`` messages; reasoning items are
  dropped (Chat takes no reasoning input).
- the answer's side (``_chat_answer.py``): the decoders that turn chunks into the canonical
  events, and the error shapes compatible servers send, as ours.

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

import mimetypes
from collections.abc import Mapping
from typing import Any, Final

import attrs
import orjson

from ..errors import ConfigError, InvalidRequestError, UpstreamStatusError
from ._bridge import (
    BridgeInput,
    BuiltRequest,
    RequestPlan,
    context_for,
    conversation_items,
    data_url_parts,
    function_items,
)
from ._chat_answer import ChatBodyDecoder, ChatStreamDecoder, chat_error
from ._emitter import (
    BridgeContext,
)
from ._endpoint import Endpoint, request_body
from .openai_responses import UpstreamRequest

__all__ = [
    "CHAT_RULES",
    "CODEC",
    "ChatBodyDecoder",
    "ChatCompletionsCodec",
    "ChatRules",
    "ChatStreamDecoder",
    "TOKENIZE_FIELDS",
    "rules_for",
    "tokenize_request",
]


# --- what each upstream accepts ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ChatRules:
    """What one upstream (a provider, or some of its models) accepts. A deployment's
    ``model_info`` may set any of these fields by name."""

    #: The role of ``instructions`` (docs/bridges.md §1: ``developer`` for OpenAI reasoning models).
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
    #: OpenAI's own fields (the Chat Completions reference-§2): the ``developer`` role, file parts
    #: and ``file_id``, ``allowed_tools``, ``verbosity``, ``prompt_cache_key``,
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


def rules_for(deployment: Endpoint) -> ChatRules:
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
    """The conversation as Chat messages (docs/bridges.md §1-§2)."""

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
            pass  # Chat takes no reasoning input (docs/bridges.md §2); not an error
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
            # Chat knows no "original"; "high" is its closest (docs/bridges.md §1).
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
            # Chat has no file URLs (docs/bridges.md §1); the file itself must be sent.
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
        # message (docs/bridges.md §2).
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
                # A tool message carries text only (docs/bridges.md §2); dropping keeps the text.
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
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` (docs/bridges.md §2)."""
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
    """Generation controls and the request's other fields (docs/bridges.md §3)."""
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
    # metadata and store are the gateway's (docs/bridges.md §3); an unsent prompt_cache_key or
    # safety_identifier is harmless (docs/bridges.md §10: accepted, forwarded where a field exists).
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
    # Chat nests what Responses keeps flat (the Responses API reference).
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


# --- the codec --------------------------------------------------------------------------------


class ChatCompletionsCodec:
    """The :class:`~._bridge.BridgeCodec` of OpenAI-compatible Chat Completions servers
    (stateless: one instance, :data:`CODEC`, serves every deployment)."""

    #: Chat servers that take images take their URLs.
    inline_remote_media: bool = False

    def check_deployment(self, deployment: Endpoint) -> None:
        rules_for(deployment)

    def build_request(
        self, deployment: Endpoint, request: BridgeInput, *, stream: bool, created_at: int
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
                payload["stream_options"] = {"include_usage": True}  # docs/bridges.md §3
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
            content=request_body(payload),
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
        """The upstream's error response as ours (docs/bridges.md §8)."""
        return chat_error(status, headers, body, now=now)


CODEC: Final = ChatCompletionsCodec()

#: What vLLM's ``POST /tokenize`` takes of a chat body (vLLM's ``TokenizeChatRequest``): the
#: messages and tools go through the model's chat template as a completion's would, with the
#: generation prompt (its default).
TOKENIZE_FIELDS: Final = ("model", "messages", "tools")


def tokenize_request(create: UpstreamRequest) -> UpstreamRequest:
    """vLLM's ``POST /tokenize`` for the conversation of ``create`` (a non-streamed
    ``…/chat/completions`` request :meth:`ChatCompletionsCodec.build_request` built), at the
    server's root beside ``/v1`` (where vLLM serves it), with the same headers and query. vLLM
    answers ``{"count": N, "max_model_len": M, "tokens": [...]}`` (docs/input-tokens.md)."""
    assert isinstance(create.content, bytes), "a codec builds the whole body"
    base = create.url.removesuffix("/chat/completions")
    root = base.removesuffix("/v1")
    payload = orjson.loads(create.content)
    body = {k: payload[k] for k in TOKENIZE_FIELDS if k in payload}
    return attrs.evolve(create, url=f"{root}/tokenize", content=request_body(body))
