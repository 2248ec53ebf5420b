"""The Anthropic bridge's answer: Messages stream events as canonical events, and its errors.

The decoders turn Anthropic's stream events into the canonical Responses events through a
:class:`~._emitter.ResponseEmitter` (docs/bridges.md §9): text blocks feed a message item, every
``thinking``/``redacted_thinking`` block is one reasoning item whose ``encrypted_content``
seals that block exactly (docs/bridges.md §5), ``tool_use`` blocks are function calls, and the stop
reason and usage end the response (docs/bridges.md §6, §7). A non-streaming Message is replayed as
the events a stream of it would have carried, so both paths share one translation.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson

from ..errors import UpstreamProtocolError, UpstreamStatusError
from ._emitter import (
    BridgeBodyDecoder,
    BridgeContext,
    BridgeDecoder,
    ResponseEmitter,
    loads_provider_json,
    responses_usage,
    seal_reasoning,
)

if TYPE_CHECKING:
    from .sse import ServerSentEvent

__all__ = ["AnthropicBodyDecoder", "AnthropicStreamDecoder", "upstream_error"]


# --- errors ------------------------------------------------------------------------------------

#: Anthropic's HTTP status -> (ours, our error code) (docs/bridges.md §8).
_ERROR_STATUSES: Final[Mapping[int, tuple[int, str | None]]] = {
    400: (400, None),
    # The deployment's key, not the caller's: the gateway's fault, and another deployment
    # may well have a good one.
    401: (502, "upstream_authentication_error"),
    402: (429, "insufficient_quota"),
    403: (502, "upstream_authentication_error"),
    404: (404, "model_not_found"),
    408: (408, None),
    409: (409, None),
    413: (413, "request_too_large"),
    429: (429, "rate_limit_exceeded"),
    500: (500, "server_error"),
    504: (504, "server_error"),
    529: (503, "server_error"),
}
#: ``error.type`` -> Anthropic's HTTP status, for errors inside a stream (Anthropic's Messages
#: reference §7), which arrive without a status of their own.
_STATUS_OF_ERROR_TYPE: Final = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
#: How Anthropic words a context overflow in its 400.
_CONTEXT_OVERFLOW: Final = re.compile(r"prompt is too long", re.IGNORECASE)


def upstream_error(
    status: int, message: str, *, retry_after: float | None = None
) -> UpstreamStatusError:
    mapped, code = _ERROR_STATUSES.get(
        status, (400, None) if status < 500 else (502, "server_error")
    )
    if mapped == 400 and _CONTEXT_OVERFLOW.search(message):
        code = "context_length_exceeded"
    headers = {}
    if retry_after is not None and (mapped == 429 or mapped >= 500):
        headers["retry-after"] = str(max(1, round(retry_after)))
    error = UpstreamStatusError(
        f"Anthropic: {message}",
        status_code=mapped,
        code=code,
        retry_after=retry_after,
        headers=headers,
    )
    if code in ("insufficient_quota", "upstream_authentication_error"):
        # Billing and a rejected key do not fix themselves in a retry of this deployment
        # (another deployment of the group is still tried), as for the other bridges.
        error.retryable = False
    return error


def _stream_error(error: Any) -> UpstreamStatusError:
    """An ``error`` event (after HTTP 200) as ours: the status its type stands for."""
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    status = _STATUS_OF_ERROR_TYPE.get(kind, 500) if isinstance(kind, str) else 500
    return upstream_error(status, str(message or kind or "the stream reported an error"))


# --- the answer --------------------------------------------------------------------------------

#: ``stop_reason`` -> the ``incomplete_details.reason`` (None: completed) (docs/bridges.md §6).
#: Any other (``pause_turn``, which only server tools cause, or one added later) fails.
_STOP_REASONS: Final[Mapping[str, str | None]] = {
    "end_turn": None,
    "stop_sequence": None,
    "tool_use": None,
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}


def _count(usage: Mapping[str, Any], key: str) -> int:
    # Cache fields may be absent or null (Anthropic's Messages reference): 0.
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@attrs.define(eq=False)
class _Translator:
    """Anthropic stream events -> calls on the emitter (docs/bridges.md §9)."""

    _context: BridgeContext
    _emitter: ResponseEmitter
    #: Usage so far: ``message_start``'s, updated by each ``message_delta`` (cumulative).
    _usage: dict[str, Any] = attrs.Factory(dict)
    _stop_reason: str | None = None
    #: The type of the content block being streamed (None between blocks).
    _block: str | None = None
    #: The thinking block being streamed: its text and signature pieces.
    _thinking: list[str] = attrs.Factory(list)
    _signature: list[str] = attrs.Factory(list)

    def on_event(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise UpstreamProtocolError("Anthropic sent an event that is not a JSON object")
        match data.get("type"):
            case "message_start":
                message = data.get("message")
                self._add_usage(message.get("usage") if isinstance(message, dict) else None)
                self._emitter.start()
            case "content_block_start":
                self._start_block(_object(data, "content_block"))
            case "content_block_delta":
                self._delta(_object(data, "delta"))
            case "content_block_stop":
                self._stop_block()
            case "message_delta":
                delta = data.get("delta")
                if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                    self._stop_reason = str(delta["stop_reason"])
                self._add_usage(data.get("usage"))
            case "message_stop":
                self._finish()
            case "error":
                raise _stream_error(data.get("error"))
            case _:
                pass  # ping, and event types added later (the API may add them at any time)

    def _start_block(self, block: Mapping[str, Any]) -> None:
        kind = block.get("type")
        self._block = kind if isinstance(kind, str) else None
        if kind == "text":
            self._emitter.text(str(block.get("text") or ""))
        elif kind == "thinking":
            # One reasoning item per thinking block (each block's stop closes its item),
            # placed before what follows it (docs/bridges.md §5).
            self._emitter.reasoning()
            self._thinking, self._signature = [], []
            self._thinking_text(str(block.get("thinking") or ""))
        elif kind == "redacted_thinking":
            # Complete at the start, no deltas (Anthropic's Messages reference): state only.
            self._emitter.reasoning_item(self._seal(dict(block)))
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise UpstreamProtocolError("Anthropic sent a tool_use block without id or name")
            self._emitter.function_call(call_id, name)
            if block.get("input"):  # normally {} with the input in deltas
                self._emitter.arguments(orjson.dumps(block["input"]).decode())
        else:
            # Server tools and the like: never asked for, so never translatable.
            raise UpstreamProtocolError(f"Anthropic sent an unexpected {kind!r} content block")

    def _delta(self, delta: Mapping[str, Any]) -> None:
        kind = delta.get("type")
        expected = {
            "text_delta": "text",
            "input_json_delta": "tool_use",
            "thinking_delta": "thinking",
            "signature_delta": "thinking",
            "citations_delta": "text",
        }.get(str(kind))
        if expected is None:
            return  # a delta type added later, for something we did not ask for
        if expected != self._block:
            raise UpstreamProtocolError(f"Anthropic sent {kind!r} inside a {self._block!r} block")
        if kind == "text_delta":
            self._emitter.text(str(delta.get("text") or ""))
        elif kind == "input_json_delta":
            self._emitter.arguments(str(delta.get("partial_json") or ""))
        elif kind == "thinking_delta":
            self._thinking_text(str(delta.get("thinking") or ""))
        elif kind == "signature_delta":
            self._signature.append(str(delta.get("signature") or ""))
        # citations_delta: citations are only returned when asked for; we never ask.

    def _thinking_text(self, text: str) -> None:
        self._thinking.append(text)
        if self._context.summaries:  # otherwise the item carries only the state
            self._emitter.reasoning(text)

    def _stop_block(self) -> None:
        if self._block == "thinking":
            signature = "".join(self._signature)
            if signature:  # unsigned thinking cannot be replayed: no state to keep
                block = {"type": "thinking", "thinking": "".join(self._thinking)}
                self._emitter.reasoning_state(self._seal({**block, "signature": signature}))
            self._emitter.close_item()
        elif self._block == "tool_use":
            self._emitter.close_item()
        # A text block leaves its message open: the next text block continues it.
        self._block = None

    def _seal(self, block: dict[str, Any]) -> str:
        return seal_reasoning(self._context.provider, self._context.model, {"blocks": [block]})

    def _add_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if v is not None})

    def _finish(self) -> None:
        reason = self._stop_reason
        if reason is None or reason not in _STOP_REASONS:
            raise UpstreamStatusError(
                f"Anthropic ended the answer with stop_reason {reason!r}, which the gateway "
                "cannot continue",
                status_code=502,
                code="server_error",
            )
        u = self._usage
        details = u.get("output_tokens_details")
        cache_write = _count(u, "cache_creation_input_tokens")
        cached = _count(u, "cache_read_input_tokens")
        usage = responses_usage(
            # docs/bridges.md §7: Anthropic's input_tokens leaves out the cached parts.
            input_tokens=_count(u, "input_tokens") + cache_write + cached,
            output_tokens=_count(u, "output_tokens"),
            cached_tokens=cached,
            cache_write_tokens=cache_write,
            reasoning_tokens=_count(details, "thinking_tokens") if isinstance(details, dict) else 0,
        )
        incomplete = _STOP_REASONS[reason]
        # The decoder has no clock: the response's own start time stands in for its end.
        self._emitter.finish(usage, incomplete=incomplete)


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise UpstreamProtocolError(f"Anthropic sent {data.get('type')!r} without {key!r}")
    return value


@attrs.define(eq=False)
class AnthropicStreamDecoder(BridgeDecoder):
    """Anthropic's SSE stream (Anthropic's Messages reference) -> canonical events."""

    _translator: _Translator = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._translator = _Translator(self.context, self.emitter)

    def on_frame(self, frame: ServerSentEvent) -> None:
        self._translator.on_event(loads_provider_json(frame.data, "SSE data"))


@attrs.define(eq=False)
class AnthropicBodyDecoder(BridgeBodyDecoder):
    """A non-streaming Message (Anthropic's Messages reference) -> the events its stream would have
    carried (it is replayed as those stream events through the same translation)."""

    def translate(self, body: Any, emitter: ResponseEmitter) -> None:
        if not isinstance(body, dict) or body.get("type") != "message":
            if isinstance(body, dict) and body.get("type") == "error":
                raise _stream_error(body.get("error"))
            raise UpstreamProtocolError("Anthropic answered with something that is not a Message")
        translator = _Translator(self.context, emitter)
        for event in _message_events(body):
            translator.on_event(event)


def _message_events(message: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The stream events of a whole Message (Anthropic's Messages reference)."""
    yield {"type": "message_start", "message": {"usage": message.get("usage")}}
    content = message.get("content")
    for index, block in enumerate(content if isinstance(content, list) else ()):
        kind = block.get("type") if isinstance(block, dict) else None
        where = {"index": index}
        if kind == "text":
            yield {
                **where,
                "type": "content_block_start",
                "content_block": {"type": "text", "text": ""},
            }
            yield {
                **where,
                "type": "content_block_delta",
                "delta": {"type": "text_delta", "text": block.get("text")},
            }
        elif kind == "thinking":
            empty = {"type": "thinking", "thinking": "", "signature": ""}
            yield {**where, "type": "content_block_start", "content_block": empty}
            for delta in (
                {"type": "thinking_delta", "thinking": block.get("thinking")},
                {"type": "signature_delta", "signature": block.get("signature")},
            ):
                yield {**where, "type": "content_block_delta", "delta": delta}
        elif kind == "tool_use":
            start = {**block, "input": {}}
            yield {**where, "type": "content_block_start", "content_block": start}
            arguments = orjson.dumps(block.get("input") or {}).decode()
            yield {
                **where,
                "type": "content_block_delta",
                "delta": {"type": "input_json_delta", "partial_json": arguments},
            }
        else:  # redacted_thinking comes whole; anything else is refused by the translator
            yield {**where, "type": "content_block_start", "content_block": block}
        yield {**where, "type": "content_block_stop"}
    yield {"type": "message_delta", "delta": {"stop_reason": message.get("stop_reason")}}
    yield {"type": "message_stop"}
