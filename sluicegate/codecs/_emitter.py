"""The answer's side of every bridged provider codec (docs/bridges.md): the emitter of the canonical
event stream, the decoders that drive it, and the reasoning-state envelope.

Theory of operation. A bridge's stream decoder and body decoder (:class:`BridgeDecoder`,
:class:`BridgeBodyDecoder`: ``feed(bytes) -> events``, ``close() -> events``) translate the
provider's answer into calls on a :class:`ResponseEmitter`, which produces the Responses event
sequence of the Responses streaming reference: ``response.created`` and ``in_progress`` first, items
opened lazily and strictly one after another, every ``added`` closed by its ``done`` with the
full value, exactly one terminal event. The calls of a request's custom tools come back as
``custom_tool_call`` items, their input decoded while the arguments stream (:mod:`._freeform`).

A provider error *after* events were emitted is raised by the decoder (after the events before
it are returned), so the pipeline's tracker closes what is open and ends the response with one
typed ``response.failed`` (the same path as any mid-stream failure).

Reasoning state that a provider needs back on the next turn (Anthropic thinking signatures and
redacted thinking, Gemini ``thoughtSignature``) travels in a ``reasoning`` item's
``encrypted_content`` as our own versioned envelope (:func:`seal_reasoning`), docs/bridges.md §5.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import orjson

from .._types import StreamEvent, event_from_wire
from ..errors import (
    SluicegateError,
    UpstreamProtocolError,
)
from ._freeform import FreeformInput
from .sse import ServerSentEvent, SSEDecoder

__all__ = [
    "BridgeBodyDecoder",
    "BridgeContext",
    "BridgeDecoder",
    "ResponseEmitter",
    "loads_provider_json",
    "mint_id",
    "open_reasoning",
    "response_echo",
    "responses_usage",
    "seal_reasoning",
]


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
    #: Parameters dropped under ``drop_params`` (shown on the Response, docs/bridges.md §10).
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


def mint_id(prefix: str) -> str:
    """An OpenAI-shaped ID (``msg_`` + 48 hex digits), minted by the gateway."""
    return f"{prefix}_{secrets.token_hex(24)}"


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
    (docs/bridges.md §5)."""
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
    # Most optional request fields accept an explicit null meaning "unset" (the Responses API
    # reference).
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
    """A Response object (the Responses API reference) in progress for the request ``body``: no
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
    """A Responses ``usage`` object (docs/bridges.md §7)."""
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


# --- the decoders ---------------------------------------------------------------------------


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
