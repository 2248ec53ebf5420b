"""The lifecycle of one response stream, as data.

Theory of operation: every response, whatever its provider, is delivered as the canonical
Responses event sequence (the Responses streaming reference): ``response.created`` first, items
opened and closed one after another, exactly one terminal event last. :class:`StreamTracker` watches
the events in the order the caller receives them and

- checks the status transitions against :data:`ALLOWED_TRANSITIONS` (an upstream that breaks
  the order is a protocol error, not something to pass on);
- keeps ``sequence_number`` gapless from 0 (older servers omit it; the SDK requires it);
- remembers what is open (items, content parts, accumulated text and arguments), so that when
  the stream breaks after events reached the caller it can close every open part and item and
  end the response with one well-formed ``response.failed`` (:meth:`StreamTracker.fail`);
- folds the events into the final :class:`Response` (:meth:`StreamTracker.fold`), which is how
  the non-streaming sink builds its answer from the very same events.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import attrs

from .._types import (
    ContentPartEvent,
    DeltaEvent,
    ErrorEvent,
    ItemEvent,
    OutputItemEvent,
    Response,
    ResponseEvent,
    ResponseStatus,
    StreamEvent,
    UnknownEvent,
    event_from_wire,
)
from ..errors import SluicegateError, UpstreamProtocolError

__all__ = ["ALLOWED_TRANSITIONS", "RESPONSE_ERROR_CODES", "StreamTracker", "failure_code"]

_S = ResponseStatus
_TERMINAL = frozenset({_S.COMPLETED, _S.INCOMPLETE, _S.FAILED, _S.CANCELLED})

#: status before -> statuses a lifecycle event may move it to (None: nothing seen yet).
ALLOWED_TRANSITIONS: dict[ResponseStatus | None, frozenset[ResponseStatus]] = {
    None: frozenset({_S.QUEUED, _S.IN_PROGRESS}),
    _S.QUEUED: frozenset({_S.QUEUED, _S.IN_PROGRESS}) | _TERMINAL,
    _S.IN_PROGRESS: frozenset({_S.IN_PROGRESS}) | _TERMINAL,
}

#: Lifecycle event type -> the status it announces (``response.created`` carries its own).
_STATUS_OF_EVENT: dict[str, ResponseStatus | None] = {
    "response.created": None,
    "response.queued": _S.QUEUED,
    "response.in_progress": _S.IN_PROGRESS,
    "response.completed": _S.COMPLETED,
    "response.incomplete": _S.INCOMPLETE,
    "response.failed": _S.FAILED,
}

_STATUS_BY_VALUE: dict[Any, ResponseStatus] = {s.value: s for s in ResponseStatus}

#: The Response ``error.code`` enum (the Responses API reference), open-ended upstream.
RESPONSE_ERROR_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "data_residency_mismatch",
        "bio_policy",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)


#: Part type -> (its ``.done`` event, the field holding the full value, other fields).
_PART_DONE: dict[Any, tuple[str, str, dict[str, Any]]] = {
    "output_text": ("response.output_text.done", "text", {"logprobs": []}),
    "refusal": ("response.refusal.done", "refusal", {}),
    "reasoning_text": ("response.reasoning_text.done", "text", {}),
}


def failure_code(error: SluicegateError) -> str:
    """The ``error.code`` a ``response.failed`` carries for this error."""
    if error.code in RESPONSE_ERROR_CODES:
        return str(error.code)
    if error.status_code == 429:
        return "rate_limit_exceeded"
    return "server_error"


#: Deltas of a call's payload, kept so that a response cut mid-call closes the call with what
#: arrived: a function call's arguments, a custom tool call's input.
_CALL_DELTAS: Final = frozenset(
    {"response.function_call_arguments.delta", "response.custom_tool_call_input.delta"}
)
#: A call item's type -> the event that ends its payload, and the item field that holds it.
_CALL_DONE: Final = {
    "function_call": ("response.function_call_arguments.done", "arguments"),
    "custom_tool_call": ("response.custom_tool_call_input.done", "input"),
}


@attrs.define(eq=False)
class _OpenPart:
    part: dict[str, Any]
    pieces: list[str] = attrs.Factory(list)

    def with_text(self) -> dict[str, Any]:
        """The part with the text delivered so far in its value field."""
        part = dict(self.part)
        done = _PART_DONE.get(part.get("type"))
        if done is not None:
            part[done[1]] = "".join(self.pieces)
        return part


@attrs.define(eq=False)
class StreamTracker:
    """Follows one response's events as delivered; see the module docstring."""

    _next_seq: int = 0
    _status: ResponseStatus | None = None
    _snapshot: ResponseEvent | None = None
    _terminal: ResponseEvent | None = None
    _status_before_terminal: ResponseStatus | None = None
    _open_items: dict[int, dict[str, Any]] = attrs.Factory(dict)
    _done_items: dict[int, dict[str, Any]] = attrs.Factory(dict)
    _open_parts: dict[tuple[int, int], _OpenPart] = attrs.Factory(dict)
    _arguments: dict[int, list[str]] = attrs.Factory(dict)

    @property
    def delivered_any(self) -> bool:
        return self._next_seq > 0

    @property
    def terminal(self) -> ResponseEvent | None:
        return self._terminal

    def observe(self, event: StreamEvent) -> StreamEvent:
        """Check and record one event; returns it, renumbered if its number was off.

        An event whose number was right comes back as the same object, so it keeps the bytes it
        arrived as (``StreamEvent.raw``); a renumbered copy has none."""
        if self._terminal is not None:
            raise UpstreamProtocolError(
                f"upstream sent {event.type!r} after the terminal {self._terminal.type!r}"
            )
        match event:
            case ResponseEvent():
                self._observe_lifecycle(event)
            case ErrorEvent():
                pass  # allowed anywhere before the terminal; the codec decides what it means
            case _ if self._status is None:
                raise UpstreamProtocolError(
                    f"upstream sent {event.type!r} before 'response.created'"
                )
            case DeltaEvent():
                self._observe_delta(event)
            case OutputItemEvent():
                self._observe_item(event)
            case ContentPartEvent():
                self._observe_part(event)
            case ItemEvent() | UnknownEvent():
                pass
        if event.sequence_number != self._next_seq:
            event = event.with_sequence_number(self._next_seq)
        self._next_seq += 1
        return event

    def withdraw_terminal(self) -> None:
        """Forget the terminal event just observed: it could not be recorded, so it is not
        delivered, and :meth:`fail` must still be able to end the response."""
        terminal = self._terminal
        assert terminal is not None, "no terminal event to withdraw"
        self._terminal = None
        self._next_seq -= 1
        self._status = self._status_before_terminal

    def observe_all(self, events: Iterable[StreamEvent]) -> list[StreamEvent]:
        return [self.observe(event) for event in events]

    def _observe_lifecycle(self, event: ResponseEvent) -> None:
        announced = _STATUS_OF_EVENT[event.type]
        if announced is None:  # response.created: the response says queued or in_progress
            if self._status is not None:
                raise UpstreamProtocolError("upstream sent 'response.created' twice")
            raw = event.response_data.get("status")
            announced = _STATUS_BY_VALUE.get(raw)
            if announced is None:
                raise UpstreamProtocolError(f"upstream created a response in status {raw!r}")
        if announced not in ALLOWED_TRANSITIONS.get(self._status, frozenset()):
            before = self._status.value if self._status else "nothing"
            raise UpstreamProtocolError(
                f"upstream moved a response from {before} to {announced.value} ({event.type!r})"
            )
        if announced in _TERMINAL:
            # The snapshot stays the last live one: withdraw_terminal() may need it.
            self._terminal = event
            self._status_before_terminal = self._status
        else:
            self._snapshot = event
        self._status = announced

    def _observe_item(self, event: OutputItemEvent) -> None:
        index = event.output_index
        if event.type == "response.output_item.added":
            self._open_items[index] = event.item
        else:
            self._open_items.pop(index, None)
            self._arguments.pop(index, None)
            self._done_items[index] = event.item

    def _observe_part(self, event: ContentPartEvent) -> None:
        key = (event.output_index, event.content_index)
        if event.type == "response.content_part.added":
            self._open_parts[key] = _OpenPart(part=event.part)
        else:
            self._open_parts.pop(key, None)

    def _observe_delta(self, event: DeltaEvent) -> None:
        data = event.data
        etype = event.type
        if etype == "response.output_text.delta" or etype == "response.refusal.delta":
            part = self._open_parts.get(
                (data.get("output_index", -1), data.get("content_index", -1))
            )
            if part is not None:
                part.pieces.append(data.get("delta") or "")
        elif etype in _CALL_DELTAS:
            self._arguments.setdefault(data.get("output_index", -1), []).append(
                data.get("delta") or ""
            )

    # -- ending --------------------------------------------------------------------------

    def fail(self, error: SluicegateError) -> list[StreamEvent]:
        """Events that close everything open and end the response as ``failed``.

        Empty when a terminal event was already delivered (exactly one terminal, ever). Only
        meaningful after ``response.created`` was delivered; before that the caller gets the
        error itself.
        """
        if self._terminal is not None or self._snapshot is None:
            return []
        events: list[StreamEvent] = []
        for (output_index, content_index), open_part in sorted(self._open_parts.items()):
            item_id = str(self._open_items.get(output_index, {}).get("id", ""))
            text = "".join(open_part.pieces)
            part = dict(open_part.part)
            done = _PART_DONE.get(part.get("type"))
            if done is not None:
                done_type, field, extra = done
                part[field] = text
                events.append(
                    self._make(
                        done_type,
                        item_id=item_id,
                        output_index=output_index,
                        content_index=content_index,
                        **{field: text},
                        **extra,
                    )
                )
            open_part.part = part
            events.append(
                self._make(
                    "response.content_part.done",
                    item_id=item_id,
                    output_index=output_index,
                    content_index=content_index,
                    part=part,
                )
            )
        for output_index, item in sorted(self._open_items.items()):
            closed = dict(item)
            closed["status"] = "incomplete"
            if item.get("type") == "message":
                parts = [
                    p.part for (oi, _), p in sorted(self._open_parts.items()) if oi == output_index
                ]
                closed["content"] = [*(item.get("content") or []), *parts]
            elif item.get("type") in _CALL_DONE:
                done_type, field = _CALL_DONE[item["type"]]
                text = "".join(self._arguments.get(output_index, []))
                closed[field] = text
                named = {"name": item.get("name")} if field == "arguments" else {}
                events.append(
                    self._make(
                        done_type,
                        item_id=str(item.get("id", "")),
                        output_index=output_index,
                        **{field: text},
                        **named,
                    )
                )
            events.append(
                self._make("response.output_item.done", output_index=output_index, item=closed)
            )
        self._open_parts.clear()
        # Through observe(): numbered in order, and the item bookkeeping stays right for fold().
        events = [self.observe(event) for event in events]
        failed = self._snapshot.response.with_changes(
            status="failed",
            error={"code": failure_code(error), "message": error.message},
            incomplete_details=None,
            output=self._output_items(),
            usage=None,
        )
        terminal = ResponseEvent(
            type="response.failed",
            sequence_number=self._next_seq,
            data={
                "type": "response.failed",
                "sequence_number": self._next_seq,
                "response": failed.data,
            },
            _response=failed,
        )
        events.append(self.observe(terminal))
        return events

    def _make(self, etype: str, **fields: Any) -> StreamEvent:
        return event_from_wire({"type": etype, "sequence_number": -1, **fields})

    def _output_items(self) -> list[dict[str, Any]]:
        return [item for _, item in sorted(self._done_items.items())]

    def partial(self) -> Response | None:
        """The response as far as it got, for one that ends without its terminal event
        (cancelled): the last live snapshot with the items done so far and the open ones as
        delivered (``status: in_progress``, the Responses API reference). None before
        ``response.created``."""
        if self._snapshot is None:
            return None
        items = dict(self._done_items)
        for index, item in self._open_items.items():
            current = dict(item)
            if item.get("type") == "message":
                parts = [
                    p.with_text() for (oi, _), p in sorted(self._open_parts.items()) if oi == index
                ]
                current["content"] = [*(item.get("content") or []), *parts]
            elif item.get("type") in _CALL_DONE:
                current[_CALL_DONE[item["type"]][1]] = "".join(self._arguments.get(index, []))
            items[index] = current
        return self._snapshot.response.with_changes(output=[items[i] for i in sorted(items)])

    def fold(self) -> Response:
        """The Response these events describe (the non-streaming answer)."""
        if self._terminal is not None:
            response = self._terminal.response
            if not response.output and self._done_items:
                response = response.with_changes(output=self._output_items())
            return response
        if self._snapshot is None:
            raise UpstreamProtocolError("upstream sent no response")
        return self._snapshot.response
