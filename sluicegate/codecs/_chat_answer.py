"""The Chat Completions bridge's answer: chat chunks as canonical events, and the errors of
compatible servers.

- :class:`ChatStreamDecoder` and :class:`ChatBodyDecoder` drive one :class:`_Translator`,
  which turns chunks (or the one non-streamed message, read as a single delta) into calls on
  the :class:`~._emitter.ResponseEmitter` (docs/bridges.md §9).
- :func:`chat_error` maps error statuses and the error shapes compatible servers send (the
  OpenAI envelope, ``{"detail": ...}``, a flat ``{"message": ...}``, plain text) to ours
  (docs/bridges.md §8); an error inside a stream is read the same way.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs
import orjson

from ..errors import UpstreamProtocolError, UpstreamStatusError
from ._emitter import (
    BridgeBodyDecoder,
    BridgeContext,
    BridgeDecoder,
    ResponseEmitter,
    loads_provider_json,
    mint_id,
    responses_usage,
)
from .openai_responses import parse_error_response
from .sse import ServerSentEvent

__all__ = ["ChatBodyDecoder", "ChatStreamDecoder", "chat_error"]


# --- the answer -------------------------------------------------------------------------------

#: ``finish_reason`` -> ``incomplete_details.reason`` (docs/bridges.md §6); absent: completed.
_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


class _CallState(enum.Enum):
    #: Arguments collected, nothing emitted yet (name unknown, or waiting for the open call).
    PENDING = "pending"
    #: The emitter's open item: argument fragments stream as deltas.
    OPEN = "open"
    DONE = "done"


@attrs.define(eq=False)
class _Call:
    #: The provider's ID; minted when the call is emitted without one (the Chat Completions
    #: reference).
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
    """Chat usage in Responses terms (docs/bridges.md §7); missing fields count 0."""
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
    """Chat chunks → emitter calls (docs/bridges.md §9), for the stream and the body alike.

    Tool calls stream while they arrive one after another: a fragment of a new ``index``
    closes the open call once its arguments are complete JSON (the Chat Completions reference: calls
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
            # last) or on the finish chunk (the Chat Completions reference).
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
        # Ollama say reasoning (the Chat Completions reference).
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
        # No index (the Chat Completions reference): a new id is the next call, else the latest one.
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
    (docs/bridges.md §8); ``origin`` says where it came from (``HTTP 429``, ``mid-stream``)."""
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
    """An error chunk in the stream (the Chat Completions reference) as ours."""
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


def chat_error(
    status: int, headers: Mapping[str, str], body: bytes, *, now: float
) -> UpstreamStatusError:
    """A compatible server's error response as ours (docs/bridges.md §8)."""
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
