"""A deterministic fake of the Anthropic Messages API (Anthropic's Messages reference), answering
real wire bytes: SSE events shaped as §6 when the body says ``"stream": true``, a Message (§5)
otherwise, and Anthropic's error body (§7) for what the real API refuses.

What it answers is driven by the last user text of the request (tests/bridge_fakes.py serves
it over ``httpx.MockTransport`` or a loopback socket):

- ``say: <text>`` answers ``<text>``, one text delta per word;
- ``think: <text>`` first adds a thinking block (empty text under ``display: omitted``) with a
  signature the fake mints and remembers; replayed thinking must carry exactly such a
  signature, on the very text it was issued with;
- ``call: name {json}; name2 {json}`` calls those tools (arguments streamed in fragments);
- ``long: <text>`` ends with ``max_tokens``; ``filter:`` with ``refusal``;
- ``json:`` answers ``{"answer": 42}`` and requires ``output_config.format`` (JSON schema);
- ``fail: <text>`` sends the text, then an ``overloaded_error`` event (529 without streaming);
- directives combine with ``|`` (``think: plan | call: f {}``); a text without one is said.

Usage: ``input_tokens`` = words of every input text; ``output_tokens`` = words of the answer
text, the thinking and the tool arguments; ``thinking_tokens`` = words of the thinking.
``POST /v1/messages/count_tokens`` answers ``{"input_tokens": N}`` counted the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final

import attrs

from .bridge_fakes import Fault, Reply

__all__ = ["FakeAnthropic"]

_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: Top-level request fields the API knows (Anthropic's Messages reference); others are a 400.
_KNOWN_FIELDS: Final = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "service_tier",
        "cache_control",
        "container",
        "inference_geo",
    }
)
#: What ``/v1/messages/count_tokens`` takes (Anthropic's token counting reference).
_COUNT_FIELDS: Final = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config"}
) | {"cache_control"}
_DIRECTIVE: Final = re.compile(r"\s*(say|think|call|long|json|fail|filter):\s*(.*)", re.DOTALL)
_CALL_NAME: Final = re.compile(r"\s*([A-Za-z0-9_-]+)\s*")
_BROKEN_FRAME: Final = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"ty\n\n'
)


class _Rejected(Exception):
    """The request is refused with this status and Anthropic error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen
class _Block:
    """One content block of the answer, with the pieces it is streamed in."""

    wire: dict[str, Any]
    deltas: list[dict[str, Any]]
    #: Words of the thinking (its tokens, also when the API omits its text).
    thinking_words: int = 0


def _words(text: str) -> int:
    return len(text.split())


def _sse(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def _error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fk"}
    return json.dumps(body).encode()


@attrs.define(eq=False)
class FakeAnthropic:
    """The fake; see the module docstring."""

    requests: list[dict[str, Any]] = attrs.Factory(list)
    paths: list[str] = attrs.Factory(list)
    headers: list[dict[str, str]] = attrs.Factory(list)
    faults: list[Fault] = attrs.Factory(list)
    #: Signatures issued -> the thinking text each was issued on.
    _signatures: dict[str, str] = attrs.Factory(dict)
    _minted: int = 0

    @property
    def issued_signatures(self) -> list[str]:
        """Every signature this fake has handed out, oldest first."""
        return list(self._signatures)

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
            return self._error(fault.status, "Injected fault.", fault.headers, fault.stall)
        try:
            counting = path.partition("?")[0] == "/v1/messages/count_tokens"
            if method != "POST" or (path.partition("?")[0] != "/v1/messages" and not counting):
                raise _Rejected(404, f"Not found: {method} {path}")
            if not headers.get("x-api-key") and not headers.get("authorization"):
                raise _Rejected(401, "x-api-key header is required")
            if headers.get("anthropic-version") != "2023-06-01":
                raise _Rejected(400, "anthropic-version: header is required")
            if not isinstance(request, dict):
                raise _Rejected(400, "The request body is not valid JSON.")
            if counting:
                return self._count_tokens(request, fault)
            self._validate(request)
            blocks, stop_reason, fail = self._answer(request)
        except _Rejected as exc:
            return self._error(exc.status, exc.message, {}, fault.stall)
        usage = self._usage(request, blocks)
        if request.get("stream") is not True:
            if fail:
                return self._error(529, "Overloaded", {}, fault.stall)
            chunks = [json.dumps(self._message(blocks, stop_reason, usage)).encode()]
            if fault.malformed:
                chunks = [chunks[0][: len(chunks[0]) // 2]]
            headers_out = {"content-type": "application/json", "request-id": "req_fk"}
        else:
            chunks = [_sse(e) for e in self._events(request, blocks, stop_reason, usage, fail)]
            if fault.malformed:
                chunks[len(chunks) // 2] = _BROKEN_FRAME
            headers_out = {"content-type": "text/event-stream", "request-id": "req_fk"}
        return Reply(
            status=200,
            headers=headers_out,
            chunks=chunks,
            reset_after=fault.reset_after,
            stall=fault.stall,
        )

    def _count_tokens(self, request: dict[str, Any], fault: Fault) -> Reply:
        """``POST /v1/messages/count_tokens`` (Anthropic's token counting reference): the
        Messages body without what shapes the answer, ``{"input_tokens": N}`` counted as a
        create's usage counts."""
        for key in request:
            if key not in _COUNT_FIELDS:
                raise _Rejected(400, f"{key}: Extra inputs are not permitted")
        for key in ("model", "messages"):
            if key not in request:
                raise _Rejected(400, f"{key}: Field required")
        messages = request["messages"]
        if not isinstance(messages, list) or not messages:
            raise _Rejected(400, "messages: at least one message is required")
        for i, message in enumerate(messages):
            if message.get("role") not in ("user", "assistant"):
                raise _Rejected(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
            self._check_turn(messages, i)
        data = json.dumps({"input_tokens": _input_words(request)}).encode()
        if fault.malformed:
            data = data[: len(data) // 2]
        return Reply(
            status=200,
            headers={"content-type": "application/json", "request-id": "req_fk"},
            chunks=[data],
            reset_after=fault.reset_after,
            stall=fault.stall,
        )

    def _error(self, status: int, message: str, headers: dict[str, str], stall: float) -> Reply:
        return Reply(
            status=status,
            headers={"content-type": "application/json", **headers},
            chunks=[_error_body(status, message)],
            stall=stall,
        )

    # -- validation (the rules of Anthropic's Messages reference-§4 that matter to the bridge) --

    def _validate(self, request: dict[str, Any]) -> None:
        for key in request:
            if key not in _KNOWN_FIELDS:
                raise _Rejected(400, f"{key}: Extra inputs are not permitted")
        for key in ("model", "max_tokens", "messages"):
            if key not in request:
                raise _Rejected(400, f"{key}: Field required")
        max_tokens = request["max_tokens"]
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise _Rejected(400, "max_tokens: Input should be a positive integer")
        for key in request.get("metadata") or {}:
            if key != "user_id":
                raise _Rejected(400, f"metadata.{key}: Extra inputs are not permitted")
        temperature = request.get("temperature")
        if temperature is not None and not 0 <= temperature <= 1:
            raise _Rejected(400, "temperature: Input should be less than or equal to 1")
        if temperature is not None and request.get("top_p") is not None:
            raise _Rejected(
                400,
                "`temperature` and `top_p` cannot both be specified for this model. "
                "Please use only one.",
            )
        thinking = self._thinking(request)
        messages = request["messages"]
        if not isinstance(messages, list) or not messages:
            raise _Rejected(400, "messages: at least one message is required")
        for i, message in enumerate(messages):
            if message.get("role") not in ("user", "assistant"):
                raise _Rejected(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
            self._check_turn(messages, i)
        last = messages[-1]
        if thinking and last["role"] == "user" and len(messages) > 1:
            self._check_tool_loop(messages)

    def _thinking(self, request: dict[str, Any]) -> bool:
        """Whether thinking is on; refuses what is invalid with it."""
        thinking = request.get("thinking")
        if thinking is None or thinking.get("type") == "disabled":
            return False
        for key in thinking:
            if key not in ("type", "budget_tokens", "display"):
                raise _Rejected(400, f"thinking.{key}: Extra inputs are not permitted")
        if thinking.get("display") not in (None, "summarized", "omitted"):
            raise _Rejected(400, "thinking.display: Input should be 'summarized' or 'omitted'")
        if thinking.get("type") == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024:
                raise _Rejected(400, "thinking.budget_tokens: Input should be >= 1024")
            if budget >= request["max_tokens"]:
                raise _Rejected(400, "`max_tokens` must be greater than `thinking.budget_tokens`")
        elif thinking.get("type") != "adaptive":
            raise _Rejected(
                400, "thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'"
            )
        if (request.get("tool_choice") or {}).get("type") in ("any", "tool"):
            raise _Rejected(400, "Thinking may not be enabled when tool_choice forces tool use.")
        if request.get("temperature") not in (None, 1):
            raise _Rejected(400, "`temperature` may only be set to 1 when thinking is enabled.")
        return True

    def _check_turn(self, messages: list[dict[str, Any]], i: int) -> None:
        content = messages[i].get("content")
        if isinstance(content, str) or not isinstance(content, list):
            return
        tool_uses: list[str] = []
        seen_other = False
        for j, block in enumerate(content):
            kind = block.get("type")
            where = f"messages.{i}.content.{j}"
            if kind == "thinking":
                if self._signatures.get(block.get("signature")) != block.get("thinking"):
                    raise _Rejected(400, f"{where}: Invalid `signature` in `thinking` block")
            elif kind == "redacted_thinking":
                raise _Rejected(400, f"{where}: Invalid `data` in `redacted_thinking` block")
            elif kind == "tool_use":
                tool_uses.append(block.get("id"))
            elif kind == "tool_result":
                if seen_other:
                    raise _Rejected(400, f"{where}: tool_result blocks must come first")
            elif kind == "text" and not block.get("text"):
                raise _Rejected(400, f"{where}: text content blocks must be non-empty")
            if kind != "tool_result":
                seen_other = True
        if tool_uses:
            following = messages[i + 1] if i + 1 < len(messages) else None
            results = {
                b.get("tool_use_id")
                for b in (following or {}).get("content") or []
                if isinstance(b, dict) and b.get("type") == "tool_result"
            }
            missing = [t for t in tool_uses if t not in results]
            if following is not None and missing:
                raise _Rejected(
                    400,
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}",
                )

    def _check_tool_loop(self, messages: list[dict[str, Any]]) -> None:
        # Anthropic's Messages reference: in the current tool loop, the assistant turn must come
        # back with its thinking first (signatures were checked in _check_turn).
        results = [b for b in messages[-1]["content"] if b.get("type") == "tool_result"]
        previous = messages[-2]
        if not results or previous["role"] != "assistant":
            return
        first = previous["content"][0] if isinstance(previous["content"], list) else {}
        if first.get("type") not in ("thinking", "redacted_thinking"):
            raise _Rejected(
                400,
                f"messages.{len(messages) - 2}.content.0.type: Expected `thinking` or "
                f"`redacted_thinking`, but found `{first.get('type')}`. When `thinking` is "
                "enabled, a final `assistant` message must start with a thinking block.",
            )

    # -- the answer --

    def _answer(self, request: dict[str, Any]) -> tuple[list[_Block], str, bool]:
        blocks: list[_Block] = []
        stop_reason = "end_turn"
        fail = False
        omitted = (request.get("thinking") or {}).get("display") == "omitted"
        for segment in _last_user_text(request["messages"]).split("|"):
            match = _DIRECTIVE.fullmatch(segment)
            directive, text = (match.group(1), match.group(2)) if match else ("say", segment)
            text = text.strip()
            fail = fail or directive == "fail"
            if directive == "think":
                shown = "" if omitted else text
                signature = self._mint_signature(shown)
                wire = {"type": "thinking", "thinking": shown, "signature": signature}
                deltas = [{"type": "thinking_delta", "thinking": w} for w in _pieces(shown)]
                blocks.append(
                    _Block(
                        wire=wire,
                        deltas=[*deltas, {"type": "signature_delta", "signature": signature}],
                        thinking_words=_words(text),
                    )
                )
            elif directive == "call":
                for name, arguments in _calls(text):
                    self._minted += 1
                    encoded = json.dumps(arguments)
                    wire = {
                        "type": "tool_use",
                        "id": f"toolu_fake{self._minted:04d}",
                        "name": name,
                        "input": arguments,
                    }
                    fragments = ["", *(encoded[k : k + 7] for k in range(0, len(encoded), 7))]
                    deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
                    blocks.append(_Block(wire=wire, deltas=deltas))
                stop_reason = "tool_use"
            elif directive == "json":
                output_format = (request.get("output_config") or {}).get("format") or {}
                if output_format.get("type") != "json_schema":
                    raise _Rejected(400, "json: output_config.format with a JSON schema required")
                blocks.append(_text_block('{"answer": 42}'))
            elif directive == "filter":
                stop_reason = "refusal"
            elif text:
                blocks.append(_text_block(text))
                stop_reason = {"long": "max_tokens"}.get(directive, stop_reason)
        return blocks, stop_reason, fail

    def _mint_signature(self, text: str) -> str:
        self._minted += 1
        digest = hashlib.sha256(f"{self._minted}:{text}".encode()).hexdigest()[:24]
        signature = f"EqQBfake{self._minted:04d}{digest}"
        self._signatures[signature] = text
        return signature

    def _usage(self, request: dict[str, Any], blocks: list[_Block]) -> dict[str, Any]:
        thinking = sum(b.thinking_words for b in blocks)
        answer = sum(
            _words(b.wire["text"])
            if b.wire["type"] == "text"
            else _words(json.dumps(b.wire["input"]))
            for b in blocks
            if b.wire["type"] != "thinking"
        )
        return {
            "input_tokens": _input_words(request),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": answer + thinking,
            "output_tokens_details": {"thinking_tokens": thinking},
        }

    def _message(
        self, blocks: list[_Block], stop_reason: str, usage: dict[str, Any]
    ) -> dict[str, Any]:
        self._minted += 1
        return {
            "id": f"msg_fake{self._minted:04d}",
            "type": "message",
            "role": "assistant",
            "model": "claude-fake",
            "content": [b.wire for b in blocks],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }

    def _events(
        self,
        request: dict[str, Any],
        blocks: list[_Block],
        stop_reason: str,
        usage: dict[str, Any],
        fail: bool,
    ) -> list[dict[str, Any]]:
        message = self._message([], stop_reason, {**usage, "output_tokens": 1})
        start = {**message, "stop_reason": None, "model": request["model"]}
        start["usage"] = {k: v for k, v in start["usage"].items() if k != "output_tokens_details"}
        events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
        for index, block in enumerate(blocks):
            empty = {"text": {"text": ""}, "thinking": {"thinking": "", "signature": ""}}
            first = {**block.wire, **empty.get(block.wire["type"], {})}
            if first["type"] == "tool_use":
                first["input"] = {}
            events.append({"type": "content_block_start", "index": index, "content_block": first})
            if index == 0:
                events.append({"type": "ping"})
            events.extend(
                {"type": "content_block_delta", "index": index, "delta": d} for d in block.deltas
            )
            events.append({"type": "content_block_stop", "index": index})
        if fail:
            error = {"type": "overloaded_error", "message": "Overloaded"}
            return [*events, {"type": "error", "error": error}]
        final = {
            "output_tokens": usage["output_tokens"],
            "output_tokens_details": usage["output_tokens_details"],
        }
        delta: dict[str, Any] = {"stop_reason": stop_reason, "stop_sequence": None}
        if stop_reason == "refusal":
            delta["stop_details"] = {"type": "refusal", "category": "cyber", "explanation": "…"}
        return [
            *events,
            {"type": "message_delta", "delta": delta, "usage": final},
            {"type": "message_stop"},
        ]


def _text_block(text: str) -> _Block:
    deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(text)]
    return _Block(wire={"type": "text", "text": text}, deltas=deltas)


def _pieces(text: str) -> list[str]:
    """One piece per word, each with the spaces before it: they join back to ``text``."""
    return re.findall(r"\s*\S+", text)


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
        at = len(text) if text.find(";", at) < 0 else text.find(";", at) + 1
    return calls


def _texts(content: Any) -> list[str]:
    """The texts of a message's content (string or blocks; tool results included)."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for block in content or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            texts.extend(_texts(block.get("content")))
    return texts


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message["role"] != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content or [] if b.get("type") == "text"]
        if texts:
            return str(texts[-1])
    return ""


def _input_words(request: dict[str, Any]) -> int:
    system = request.get("system") or ""
    total = _words(system if isinstance(system, str) else " ".join(_texts(system)))
    for message in request["messages"]:
        total += sum(_words(t) for t in _texts(message.get("content")))
    return total
