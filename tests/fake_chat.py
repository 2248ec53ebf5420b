"""A deterministic fake of an OpenAI-compatible Chat Completions server (the Chat Completions
reference), answering real wire bytes: ``data:`` chunks ending with ``data: [DONE]`` (§4) when the
body says ``"stream": true``, a chat completion (§3) otherwise, and OpenAI's error envelope (§5) for
what a strict server refuses.

What it answers is driven by the last user text of the request (tests/bridge_fakes.py serves
it over ``httpx.MockTransport`` or a loopback socket):

- ``say: <text>`` answers ``<text>``, one content delta per word;
- ``think: <text>`` first streams ``<text>`` as ``reasoning_content`` deltas (the DeepSeek/vLLM
  extension; Chat has no signature to issue);
- ``call: name {json}; name2 {json}`` calls those tools: the first fragment of each call carries
  its id and name, the arguments follow in fragments cut mid-JSON;
- ``long: <text>`` ends with ``finish_reason: "length"``, ``filter:`` with ``content_filter``;
- ``json:`` answers ``{"answer": 42}`` and requires a JSON ``response_format``;
- ``fail: <text>`` sends the text, then an error chunk, and the stream ends (500 unstreamed);
- directives combine with ``|`` (``think: plan | call: f {}``); a text without one is said.

By default it is a strict compatible server: OpenAI-only fields and the ``developer`` role are a
400, as are message fields it does not know (a replayed ``reasoning_content`` among them); with
``openai=True`` it takes OpenAI's own fields. Either way it checks the tool-call protocol: every
``tool`` message answers a call of the assistant message before it, and every call is answered.

Usage: ``prompt_tokens`` = words of every message text; ``completion_tokens`` = words of the
answer, the reasoning and the tool arguments; ``reasoning_tokens`` = words of the reasoning.
The usage chunk is sent only when ``stream_options.include_usage`` asks for it. Unless
``openai=True``, it also serves vLLM's ``POST /tokenize``, counting as ``prompt_tokens``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import attrs

from .bridge_fakes import Fault, Reply

__all__ = ["FakeChat"]

#: Top-level fields a compatible server knows (the Chat Completions reference).
_COMPATIBLE_FIELDS: Final = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_tokens",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "stop",
        "n",
        "seed",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "reasoning_effort",
        "stream",
        "stream_options",
        "user",
    }
)
#: What OpenAI itself takes besides.
_OPENAI_FIELDS: Final = _COMPATIBLE_FIELDS | {
    "max_completion_tokens",
    "verbosity",
    "store",
    "metadata",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
}
_MESSAGE_FIELDS: Final = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
#: What vLLM's ``TokenizeChatRequest`` defines (this fake refuses anything else).
_TOKENIZE_FIELDS: Final = frozenset(
    {"model", "messages", "tools", "add_generation_prompt", "continue_final_message"}
    | {"add_special_tokens", "return_token_strs", "chat_template", "chat_template_kwargs"}
)
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
}
_DIRECTIVE: Final = re.compile(r"\s*(say|think|call|long|json|fail|filter):\s*(.*)", re.DOTALL)
_CALL_NAME: Final = re.compile(r"\s*([A-Za-z0-9_-]+)\s*")
_BROKEN_FRAME: Final = b'data: {"id":"chatcmpl-fake","object":"chat.completion.chu\n\n'


class _Rejected(Exception):
    """The request is refused with this status, message and param."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@attrs.frozen
class _Answer:
    reasoning: str = ""
    text: str = ""
    #: (call_id, name, arguments JSON)
    calls: tuple[tuple[str, str, str], ...] = ()
    finish_reason: str = "stop"
    fail: bool = False


def _words(text: str) -> int:
    return len(text.split())


def _pieces(text: str) -> list[str]:
    """One piece per word, each with the spaces before it: they join back to ``text``."""
    return re.findall(r"\s*\S+", text)


def _error_body(status: int, message: str, param: str | None = None) -> bytes:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(status)
    error = {"message": message, "type": kind, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


@attrs.define(eq=False)
class FakeChat:
    """The fake; see the module docstring."""

    requests: list[dict[str, Any]] = attrs.Factory(list)
    paths: list[str] = attrs.Factory(list)
    headers: list[dict[str, str]] = attrs.Factory(list)
    faults: list[Fault] = attrs.Factory(list)
    #: Answer as OpenAI's own endpoint (its fields and the developer role are taken).
    openai: bool = False
    _minted: int = 0

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        self.paths.append(path)
        self.headers.append(dict(headers))
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        self.requests.append(request if isinstance(request, dict) else {})
        fault = self.faults.pop(0) if self.faults else Fault()
        if fault.status is not None:
            return self._error(fault.status, "Injected fault.", None, fault.headers, fault.stall)
        try:
            if method == "POST" and path.partition("?")[0] == "/tokenize" and not self.openai:
                return self._tokenize(request, fault)
            if method != "POST" or not path.partition("?")[0].endswith("/chat/completions"):
                raise _Rejected(404, f"Invalid URL ({method} {path})")
            if not headers.get("authorization", "").startswith("Bearer "):
                raise _Rejected(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
            if not isinstance(request, dict):
                raise _Rejected(400, "We could not parse the JSON body of your request.")
            self._validate(request)
            answer = self._answer(request)
        except _Rejected as exc:
            return self._error(exc.status, exc.message, exc.param, {}, fault.stall)
        usage = self._usage(request, answer)
        if request.get("stream") is not True:
            if answer.fail:
                message = "The server had an error while processing your request."
                return self._error(500, message, None, {}, fault.stall)
            chunks = [json.dumps(self._completion(request, answer, usage)).encode()]
            if fault.malformed:
                chunks = [chunks[0][: len(chunks[0]) // 2]]
            content_type = "application/json"
        else:
            include_usage = (request.get("stream_options") or {}).get("include_usage") is True
            chunks = self._stream(request, answer, usage if include_usage else None)
            if fault.malformed:
                chunks[len(chunks) // 2] = _BROKEN_FRAME
            content_type = "text/event-stream"
        return Reply(
            status=200,
            headers={"content-type": content_type, "x-request-id": "req_fake"},
            chunks=chunks,
            reset_after=fault.reset_after,
            stall=fault.stall,
        )

    def _tokenize(self, request: Any, fault: Fault) -> Reply:
        """vLLM's ``POST /tokenize`` (its ``TokenizeChatRequest``; at the root, no key needed):
        ``count`` = words of every message text, as ``prompt_tokens``."""
        if not isinstance(request, dict):
            raise _Rejected(400, "We could not parse the JSON body of your request.")
        for key in request:
            if key not in _TOKENIZE_FIELDS:
                raise _Rejected(400, f"Unrecognized request argument supplied: {key}", key)
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Rejected(400, "'messages' must contain at least one message", "messages")
        for i, message in enumerate(messages):
            self._check_message(message, f"messages[{i}]")
        self._check_tool_protocol(messages)
        count = sum(_words(t) for m in messages for t in _texts(m.get("content")))
        answer = {"count": count, "max_model_len": 32768, "tokens": list(range(count))}
        data = json.dumps(answer).encode()
        if fault.malformed:
            data = data[: len(data) // 2]
        return Reply(
            status=200,
            headers={"content-type": "application/json"},
            chunks=[data],
            reset_after=fault.reset_after,
            stall=fault.stall,
        )

    def _error(
        self,
        status: int,
        message: str,
        param: str | None,
        headers: dict[str, str],
        stall: float,
    ) -> Reply:
        return Reply(
            status=status,
            headers={"content-type": "application/json", **headers},
            chunks=[_error_body(status, message, param)],
            stall=stall,
        )

    # -- validation (what a strict server refuses; the Chat Completions reference, §2, §6) --

    def _validate(self, request: dict[str, Any]) -> None:
        known = _OPENAI_FIELDS if self.openai else _COMPATIBLE_FIELDS
        for key in request:
            if key not in known:
                raise _Rejected(400, f"Unrecognized request argument supplied: {key}", key)
        if not isinstance(request.get("model"), str):
            raise _Rejected(400, "you must provide a model parameter", "model")
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Rejected(400, "'messages' must contain at least one message", "messages")
        for key in ("temperature", "top_p"):
            value = request.get(key)
            if value is not None and not 0 <= value <= (2 if key == "temperature" else 1):
                raise _Rejected(400, f"Invalid '{key}': {value} is out of range.", key)
        if "stream_options" in request and request.get("stream") is not True:
            raise _Rejected(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        tools = request.get("tools") or []
        for key in ("tool_choice", "parallel_tool_calls"):
            if key in request and not tools:
                raise _Rejected(
                    400,
                    f"Invalid value for '{key}': '{key}' is only allowed when 'tools' are "
                    "specified.",
                    key,
                )
        names = {t["function"]["name"] for t in tools}
        choice = request.get("tool_choice")
        if isinstance(choice, dict):
            if choice.get("type") == "allowed_tools" and not self.openai:
                raise _Rejected(400, "Invalid value for 'tool_choice'.", "tool_choice")
            forced = (choice.get("function") or {}).get("name")
            if choice.get("type") == "function" and forced not in names:
                raise _Rejected(400, f"Tool choice '{forced}' not found in 'tools'.", "tool_choice")
        for i, message in enumerate(messages):
            self._check_message(message, f"messages[{i}]")
        self._check_tool_protocol(messages)

    def _check_message(self, message: Any, where: str) -> None:
        if not isinstance(message, dict):
            raise _Rejected(400, f"Invalid type for '{where}': expected an object.", where)
        roles = ("system", "user", "assistant", "tool") + (("developer",) if self.openai else ())
        if message.get("role") not in roles:
            raise _Rejected(400, f"Invalid value: '{message.get('role')}'.", f"{where}.role")
        fields = _MESSAGE_FIELDS | ({"refusal"} if self.openai else set())
        for key in message:
            if key not in fields:
                raise _Rejected(
                    400,
                    f"Additional properties are not allowed ('{key}' was unexpected)",
                    f"{where}.{key}",
                )
        content = message.get("content")
        if message["role"] == "assistant" and content is None and not message.get("tool_calls"):
            raise _Rejected(400, f"'{where}.content' is required.", f"{where}.content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kinds = ("text", "image_url") + (("file",) if self.openai else ())
            if part.get("type") not in kinds:
                raise _Rejected(
                    400,
                    f"Invalid value: '{part.get('type')}'. Supported values are: "
                    + ", ".join(f"'{k}'" for k in kinds)
                    + ".",
                    f"{where}.content[{j}].type",
                )
        for j, call in enumerate(message.get("tool_calls") or ()):
            if not isinstance(call["function"].get("arguments"), str):
                raise _Rejected(
                    400,
                    "Invalid type: expected a string.",
                    f"{where}.tool_calls[{j}].function.arguments",
                )

    def _check_tool_protocol(self, messages: list[dict[str, Any]]) -> None:
        unanswered: list[str] = []
        answerable: set[str] = set()
        for message in messages:
            if message["role"] == "tool":
                if message.get("tool_call_id") not in answerable:
                    raise _Rejected(
                        400,
                        "Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.",
                        "messages",
                    )
                unanswered = [c for c in unanswered if c != message["tool_call_id"]]
                continue
            if unanswered:
                raise _Rejected(
                    400,
                    "An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not "
                    f"have response messages: {', '.join(unanswered)}",
                    "messages",
                )
            ids = [c["id"] for c in message.get("tool_calls") or ()]
            unanswered, answerable = list(ids), set(ids)

    # -- the answer --

    def _answer(self, request: dict[str, Any]) -> _Answer:
        reasoning, texts, calls = [], [], []
        finish_reason, fail = "stop", False
        for segment in _last_user_text(request["messages"]).split("|"):
            match = _DIRECTIVE.fullmatch(segment)
            directive, text = (match.group(1), match.group(2)) if match else ("say", segment)
            text = text.strip()
            if directive == "think":
                reasoning.append(text)
            elif directive == "call":
                for name, arguments in _calls(text):
                    self._minted += 1
                    calls.append((f"call_fake{self._minted:04d}", name, json.dumps(arguments)))
                finish_reason = "tool_calls"
            elif directive == "json":
                kind = (request.get("response_format") or {}).get("type")
                if kind not in ("json_schema", "json_object"):
                    raise _Rejected(
                        400,
                        "json: 'response_format' of type 'json_schema' or 'json_object' required",
                        "response_format",
                    )
                texts.append('{"answer": 42}')
            elif directive == "filter":
                finish_reason = "content_filter"
            elif text:
                texts.append(text)
                fail = fail or directive == "fail"
                finish_reason = "length" if directive == "long" else finish_reason
        return _Answer(
            reasoning=" ".join(reasoning),
            text=" ".join(texts),
            calls=tuple(calls),
            finish_reason=finish_reason,
            fail=fail,
        )

    def _usage(self, request: dict[str, Any], answer: _Answer) -> dict[str, Any]:
        prompt = sum(_words(t) for m in request["messages"] for t in _texts(m.get("content")))
        reasoning = _words(answer.reasoning)
        completion = (
            _words(answer.text) + reasoning + sum(_words(args) for _, _, args in answer.calls)
        )
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }

    def _envelope(self, request: dict[str, Any], kind: str) -> dict[str, Any]:
        self._minted += 1
        return {
            "id": f"chatcmpl-fake{self._minted:04d}",
            "object": kind,
            "created": 1750000000,
            "model": request["model"],
            "system_fingerprint": "fp_fake",
        }

    def _completion(
        self, request: dict[str, Any], answer: _Answer, usage: dict[str, Any]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.text or None,
            "refusal": None,
        }
        if answer.reasoning:
            message["reasoning_content"] = answer.reasoning
        if answer.calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": n, "arguments": a}}
                for call_id, n, a in answer.calls
            ]
        choice = {"index": 0, "message": message, "logprobs": None}
        return {
            **self._envelope(request, "chat.completion"),
            "choices": [{**choice, "finish_reason": answer.finish_reason}],
            "usage": usage,
        }

    def _stream(
        self, request: dict[str, Any], answer: _Answer, usage: dict[str, Any] | None
    ) -> list[bytes]:
        head = self._envelope(request, "chat.completion.chunk")

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**head, "choices": [choice], "usage": None}

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"reasoning_content": p}) for p in _pieces(answer.reasoning)]
        chunks += [chunk({"content": p}) for p in _pieces(answer.text)]
        for index, (call_id, name, arguments) in enumerate(answer.calls):
            first = {"index": index, "id": call_id, "type": "function"}
            first["function"] = {"name": name, "arguments": ""}
            chunks.append(chunk({"tool_calls": [first]}))
            for k in range(0, len(arguments), 7):  # cut mid-JSON, as the network would
                fragment = {"index": index, "function": {"arguments": arguments[k : k + 7]}}
                chunks.append(chunk({"tool_calls": [fragment]}))
        if answer.fail:
            error = {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            return [*map(_frame, chunks), _frame({"error": error})]
        chunks.append(chunk({}, answer.finish_reason))
        if usage is not None:
            chunks.append({**head, "choices": [], "usage": usage})
        return [*map(_frame, chunks), b"data: [DONE]\n\n"]


def _frame(chunk: dict[str, Any]) -> bytes:
    return (
        b"data: " + json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
    )


def _calls(text: str) -> list[tuple[str, Any]]:
    """``name {json}; name2 {json}`` -> [(name, arguments)]."""
    calls: list[tuple[str, Any]] = []
    decoder = json.JSONDecoder()
    at = 0
    while at < len(text):
        match = _CALL_NAME.match(text, at)
        if match is None:
            raise _Rejected(400, f"fake: cannot parse the call directive {text!r}")
        arguments, at = decoder.raw_decode(text, match.end())
        calls.append((match.group(1), arguments))
        semicolon = text.find(";", at)
        at = len(text) if semicolon < 0 else semicolon + 1
    return calls


def _texts(content: Any) -> list[str]:
    """The texts of a message's content (a string or text parts)."""
    if isinstance(content, str):
        return [content]
    return [p.get("text", "") for p in content or () if p.get("type") == "text"]


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            texts = _texts(message.get("content"))
            if texts:
                return texts[-1]
    return ""
