"""The Gemini bridge's answer: generateContent chunks as canonical events, and Gemini's errors.

The decoders turn Gemini's chunks into the canonical Responses events through a
:class:`~._emitter.ResponseEmitter` (docs/bridges.md §9): thought parts become reasoning summary
text (when ``reasoning.summary`` asked for it), text parts a message, each ``functionCall`` a
whole function call; ``finishReason`` and the last ``usageMetadata`` end the response
(docs/bridges.md §6, §7). A non-streaming answer is one chunk through the same translation. Every
``thoughtSignature`` is kept in a reasoning item, sealed, for the request side
(``gemini.py``) to restore next turn.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, TypeGuard

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
    seal_reasoning,
)

if TYPE_CHECKING:
    from .sse import ServerSentEvent

__all__ = ["GeminiBodyDecoder", "GeminiStreamDecoder", "is_int", "upstream_error"]


def is_int(value: Any) -> TypeGuard[int]:
    """A JSON integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool)


# --- errors ------------------------------------------------------------------------------------

#: google.rpc ``status`` -> its HTTP status, for errors inside a stream without a ``code``.
_HTTP_OF_STATUS: Final = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
#: How Gemini words a context overflow in its 400.
_CONTEXT_OVERFLOW: Final = re.compile(r"exceeds the maximum number of tokens", re.IGNORECASE)
_RETRY_DELAY: Final = re.compile(r"(\d+(?:\.\d+)?)s")


def _details(error: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    """The ``details`` entries of one google.rpc type (``ErrorInfo``, ``RetryInfo``…)."""
    details = error.get("details")
    return [
        d
        for d in (details if isinstance(details, list) else ())
        if isinstance(d, dict) and str(d.get("@type", "")).endswith(f"google.rpc.{kind}")
    ]


def upstream_error(
    status: int, error: Mapping[str, Any], *, retry_after: float | None
) -> UpstreamStatusError:
    """A google.rpc error (Gemini's generateContent reference) as ours (docs/bridges.md §8)."""
    message = str(error.get("message") or error.get("status") or "Gemini reported an error")
    reasons = {d.get("reason") for d in _details(error, "ErrorInfo")}
    if retry_after is None:
        for info in _details(error, "RetryInfo"):
            match = _RETRY_DELAY.fullmatch(str(info.get("retryDelay", "")))
            if match:
                retry_after = float(match.group(1))
    code: str | None = None
    if "API_KEY_INVALID" in reasons or status in (401, 403):
        # The deployment's key, not the caller's: the gateway's fault, and another deployment
        # may well have a good one. Retrying this one does not help.
        error_out = UpstreamStatusError(
            f"Gemini rejected the deployment's credentials: {message}",
            status_code=502,
            code="upstream_authentication_error",
        )
        error_out.retryable = False
        return error_out
    if status == 404:
        mapped, code = 404, "model_not_found"
    elif status == 429:
        mapped, code = 429, "rate_limit_exceeded"
    elif status in (500, 503, 504):
        mapped, code = status, "server_error"
    elif status >= 500:
        mapped, code = 502, "server_error"
    else:
        mapped = status
        if _CONTEXT_OVERFLOW.search(message):
            code = "context_length_exceeded"
    headers = {}
    if retry_after is not None and (mapped == 429 or mapped >= 500):
        headers["retry-after"] = str(max(1, round(retry_after)))
    return UpstreamStatusError(
        f"Gemini: {message}",
        status_code=mapped,
        code=code,
        retry_after=retry_after,
        headers=headers,
    )


def _stream_error(error: Any) -> UpstreamStatusError:
    """A ``data: {"error": …}`` chunk (after HTTP 200) as ours: the status its code says."""
    if not isinstance(error, dict):
        return upstream_error(500, {"message": str(error)}, retry_after=None)
    code = error.get("code")
    status = code if is_int(code) else _HTTP_OF_STATUS.get(str(error.get("status")), 500)
    return upstream_error(status, error, retry_after=None)


# --- the answer --------------------------------------------------------------------------------

#: ``finishReason`` -> the ``incomplete_details.reason`` (None: completed) (docs/bridges.md §6).
#: Any other (MALFORMED_FUNCTION_CALL, OTHER, one added later…) fails the response.
_FINISH_REASONS: Final[Mapping[str, str | None]] = {
    "STOP": None,
    "MAX_TOKENS": "max_output_tokens",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}


def _count(usage: Mapping[str, Any], key: str) -> int:
    # Any usage field may be absent when zero (Gemini's generateContent reference).
    value = usage.get(key)
    return value if is_int(value) else 0


@attrs.define(eq=False)
class _Translator:
    """Gemini chunks -> calls on the emitter (docs/bridges.md §9; module docstring)."""

    _context: BridgeContext
    _emitter: ResponseEmitter
    #: The last ``usageMetadata`` (each chunk's is a running total: §6).
    _usage: Mapping[str, Any] = attrs.Factory(dict)
    #: Signed parts of the open reasoning item (sealed anew with each one).
    _signed: list[dict[str, Any]] = attrs.Factory(list)
    #: Thought text since the last signed thought part (a signed thought replays its run).
    _run: list[str] = attrs.Factory(list)
    #: A signature on answer text, placed once it is known where the message ends.
    _text_signature: dict[str, Any] | None = None

    def on_chunk(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise UpstreamProtocolError("Gemini sent a chunk that is not a JSON object")
        if "error" in data:
            raise _stream_error(data["error"])
        usage = data.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = usage
        candidates = data.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = data.get("promptFeedback")
            reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
            if reason is not None:
                # docs/bridges.md §6: a blocked prompt; a 400 when nothing was streamed yet.
                raise UpstreamStatusError(
                    f"Gemini: the prompt was blocked ({reason})",
                    status_code=400,
                    code="invalid_prompt",
                )
            return  # a chunk with usage only
        candidate = candidates[0]
        if not isinstance(candidate, dict):
            raise UpstreamProtocolError("Gemini sent a candidate that is not a JSON object")
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict):
                self._part(part)
        reason = candidate.get("finishReason")
        if reason is not None:
            self._finish(str(reason), candidate.get("finishMessage"))

    def _part(self, part: Mapping[str, Any]) -> None:
        signature = part.get("thoughtSignature")
        signature = signature if isinstance(signature, str) and signature else None
        if "functionCall" in part:
            self._call(part["functionCall"], signature)
        elif "text" in part or signature is not None:
            text = part.get("text")
            text = text if isinstance(text, str) else ""
            if part.get("thought") is True:
                self._thought(text, signature)
            else:
                self._text(text, signature)
        # Other parts (executableCode, inlineData…) answer what only extra_body can ask for.

    def _thought(self, text: str, signature: str | None) -> None:
        self._place_text_signature()
        if text:
            self._run.append(text)
            if self._context.summaries:  # otherwise the item carries only the state
                self._emitter.reasoning(text)
        if signature is not None:
            self._sign({"part": "thought", "text": "".join(self._run), "signature": signature})
            self._run = []

    def _text(self, text: str, signature: str | None) -> None:
        if text:
            # A signed text part followed by more text: its reasoning item goes between.
            self._place_text_signature()
            self._emitter.text(text)
            self._signed, self._run = [], []
        if signature is not None:
            self._place_text_signature()
            self._text_signature = {"part": "text" if text else "empty", "signature": signature}

    def _call(self, call: Any, signature: str | None) -> None:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise UpstreamProtocolError("Gemini sent a functionCall without a name")
        self._place_text_signature()
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = mint_id("call")  # docs/bridges.md §6: older models send no id
        args = call.get("args")
        if signature is not None:
            self._sign({"part": "function_call", "call_id": call_id, "signature": signature})
        # Calls arrive whole (§6): one arguments delta; docs/bridges.md §6: a compact JSON string.
        self._emitter.whole_function_call(call_id, call["name"], orjson.dumps(args or {}).decode())
        self._signed, self._run = [], []

    def _sign(self, signed: dict[str, Any]) -> None:
        """Add a signed part to the open reasoning item (opening one right here if none is
        open, so it sits right before what it belongs to)."""
        if self._emitter.open_kind != "reasoning":
            self._signed = []
        self._signed.append(signed)
        self._emitter.reasoning_state(self._seal(self._signed))

    def _place_text_signature(self) -> None:
        """The pending text signature's reasoning item, right after the message it ended."""
        if self._text_signature is not None:
            self._emitter.reasoning_item(self._seal([self._text_signature]))
            self._text_signature = None

    def _seal(self, signed: list[dict[str, Any]]) -> str:
        return seal_reasoning(self._context.provider, self._context.model, {"parts": signed})

    def _finish(self, reason: str, message: Any) -> None:
        if reason not in _FINISH_REASONS:
            detail = f": {message}" if isinstance(message, str) and message else ""
            raise UpstreamStatusError(
                f"Gemini ended the answer with finishReason {reason}{detail}",
                status_code=502,
                code="server_error",
            )
        incomplete = _FINISH_REASONS[reason]
        # A cut-off message stays incomplete even when its signature's item follows it.
        self._emitter.close_item("incomplete" if incomplete else "completed")
        self._place_text_signature()
        u = self._usage
        thoughts = _count(u, "thoughtsTokenCount")
        usage = responses_usage(
            input_tokens=_count(u, "promptTokenCount") + _count(u, "toolUsePromptTokenCount"),
            output_tokens=_count(u, "candidatesTokenCount") + thoughts,
            cached_tokens=_count(u, "cachedContentTokenCount"),
            reasoning_tokens=thoughts,
        )
        # The decoder has no clock: the response's own start time stands in for its end.
        self._emitter.finish(usage, incomplete=incomplete)


@attrs.define(eq=False)
class GeminiStreamDecoder(BridgeDecoder):
    """Gemini's ``alt=sse`` stream (Gemini's generateContent reference) -> canonical events. The
    stream has no end marker: it closing before a ``finishReason`` fails the response."""

    _translator: _Translator = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._translator = _Translator(self.context, self.emitter)

    def on_frame(self, frame: ServerSentEvent) -> None:
        self._translator.on_chunk(loads_provider_json(frame.data, "SSE data"))


@attrs.define(eq=False)
class GeminiBodyDecoder(BridgeBodyDecoder):
    """A non-streaming GenerateContentResponse (§3) -> the events a stream of it would have
    carried: it is one chunk through the same translation."""

    def translate(self, body: Any, emitter: ResponseEmitter) -> None:
        _Translator(self.context, emitter).on_chunk(body)
