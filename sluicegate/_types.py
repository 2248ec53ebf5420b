"""Public data types: the Response object, its usage, and the canonical stream events.

The canonical events are the Responses API streaming events (the Responses streaming reference), one
vocabulary for every provider. Each event keeps its wire payload (``data``) as the source of
truth, so unknown event types and unknown fields reach the caller exactly as they came; the
typed attributes of each family read from it. Families are chosen by what the pipeline does with
an event, and dispatched with ``match``:

- :class:`ResponseEvent`: ``response.created|queued|in_progress|completed|incomplete|failed``,
  carrying a typed :class:`Response`;
- :class:`OutputItemEvent`: ``response.output_item.added|done``;
- :class:`ContentPartEvent`: ``response.content_part.added|done``;
- :class:`DeltaEvent`: every ``*.delta`` (text, refusal, arguments, reasoning, audio, ...);
- :class:`ItemEvent`: every other event addressing an output item (``*.done``, progress events,
  partial images, annotations, reasoning summary parts, ...);
- :class:`ErrorEvent`: the flat ``error`` event;
- :class:`UnknownEvent`: anything else, passed through untouched.

Nothing here does I/O; codecs build these objects.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs

from .errors import UpstreamProtocolError

__all__ = [
    "LIFECYCLE_TYPES",
    "TERMINAL_TYPES",
    "ContentPartEvent",
    "DeltaEvent",
    "ErrorEvent",
    "InputTokensDetails",
    "ItemEvent",
    "OutputItemEvent",
    "OutputTokensDetails",
    "Response",
    "ResponseEvent",
    "ResponseStatus",
    "StreamEvent",
    "UnknownEvent",
    "Usage",
    "event_from_wire",
]

WireDict: TypeAlias = dict[str, Any]


class ResponseStatus(enum.Enum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self not in (ResponseStatus.QUEUED, ResponseStatus.IN_PROGRESS)


@attrs.frozen(kw_only=True)
class InputTokensDetails:
    cached_tokens: int = 0
    cache_write_tokens: int = 0


@attrs.frozen(kw_only=True)
class OutputTokensDetails:
    reasoning_tokens: int = 0


@attrs.frozen(kw_only=True)
class Usage:
    """Token usage in Responses API terms: input includes cached, output includes reasoning."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = attrs.Factory(InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = attrs.Factory(OutputTokensDetails)
    total_tokens: int = 0
    #: USD, when cost reporting is enabled and the model has a price; else None.
    cost: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        """Tolerant parse of a provider's usage object (missing fields are 0)."""
        try:
            itd = data.get("input_tokens_details") or {}
            otd = data.get("output_tokens_details") or {}
            cost = data.get("cost")
            return cls(
                input_tokens=int(data.get("input_tokens") or 0),
                input_tokens_details=InputTokensDetails(
                    cached_tokens=int(itd.get("cached_tokens") or 0),
                    cache_write_tokens=int(itd.get("cache_write_tokens") or 0),
                ),
                output_tokens=int(data.get("output_tokens") or 0),
                output_tokens_details=OutputTokensDetails(
                    reasoning_tokens=int(otd.get("reasoning_tokens") or 0)
                ),
                total_tokens=int(data.get("total_tokens") or 0),
                cost=None if cost is None else float(cost),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise UpstreamProtocolError(f"upstream sent a malformed usage object: {exc}") from exc

    def to_dict(self) -> WireDict:
        out: WireDict = {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {
                "cached_tokens": self.input_tokens_details.cached_tokens,
                "cache_write_tokens": self.input_tokens_details.cache_write_tokens,
            },
            "output_tokens": self.output_tokens,
            "output_tokens_details": {
                "reasoning_tokens": self.output_tokens_details.reasoning_tokens
            },
            "total_tokens": self.total_tokens,
        }
        if self.cost is not None:
            out["cost"] = self.cost
        return out


@attrs.frozen(kw_only=True)
class Response:
    """A Responses API Response object.

    ``to_dict()`` gives the wire object with every field the upstream sent (unknown ones too);
    the attributes are typed views of it. Change it with :meth:`with_changes`, never in place.
    """

    data: Mapping[str, Any] = attrs.field(repr=False)
    id: str = attrs.field(init=False, eq=False)
    status: ResponseStatus | str = attrs.field(init=False, eq=False)
    model: str | None = attrs.field(init=False, eq=False)
    usage: Usage | None = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        data = self.data
        rid = data.get("id")
        if not isinstance(rid, str):
            raise UpstreamProtocolError("upstream sent a response object without a string 'id'")
        raw_status = data.get("status")
        status: ResponseStatus | str
        try:
            status = ResponseStatus(raw_status)
        except ValueError:
            # Tolerant: a status newer than this code passes through as the string it was.
            status = str(raw_status)
        usage = data.get("usage")
        object.__setattr__(self, "id", rid)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "model", data.get("model"))
        object.__setattr__(self, "usage", None if usage is None else Usage.from_dict(usage))

    @classmethod
    def from_dict(cls, data: Any) -> Response:
        if not isinstance(data, dict):
            raise UpstreamProtocolError("upstream sent a response that is not a JSON object")
        return cls(data=data)

    @property
    def output(self) -> list[WireDict]:
        out = self.data.get("output")
        return out if isinstance(out, list) else []

    @property
    def error(self) -> WireDict | None:
        return self.data.get("error")

    @property
    def incomplete_details(self) -> WireDict | None:
        return self.data.get("incomplete_details")

    @property
    def created_at(self) -> float | None:
        return self.data.get("created_at")

    @property
    def output_text(self) -> str:
        """All ``output_text`` parts of all message items, concatenated (the SDK's convenience)."""
        texts = [
            part.get("text", "")
            for item in self.output
            if item.get("type") == "message"
            for part in item.get("content") or ()
            if part.get("type") == "output_text"
        ]
        return "".join(texts)

    def with_changes(self, **fields: Any) -> Response:
        """A copy with these wire fields replaced (``usage`` may be a :class:`Usage`)."""
        usage = fields.get("usage")
        if isinstance(usage, Usage):
            fields["usage"] = usage.to_dict()
        return Response(data={**self.data, **fields})

    def to_dict(self) -> WireDict:
        return dict(self.data)


# --------------------------------------------------------------------------------------------
# Stream events


@attrs.frozen(kw_only=True)
class StreamEvent:
    """Base of the canonical stream event families; ``data`` is the whole wire payload.

    ``raw`` is the JSON text ``data`` was parsed from, exactly as the upstream sent it (the
    ``data:`` lines of its SSE frame), or ``None``. Only a decoder that parsed ``data`` from it
    sets it, so a writer may send it instead of encoding ``data`` again (docs/design.md §6.5).
    Every copy with a change (``with_*``, a new event built from ``data``) has ``None``: a
    changed event is never sent as the bytes it arrived as. Hence ``data`` is never changed in
    place, which would leave ``raw`` saying something else. It takes no part in equality.
    """

    type: str
    sequence_number: int
    data: Mapping[str, Any] = attrs.field(repr=False)
    raw: bytes | None = attrs.field(default=None, eq=False, repr=False)

    def to_dict(self) -> WireDict:
        return dict(self.data)

    def with_sequence_number(self, sequence_number: int) -> StreamEvent:
        return attrs.evolve(
            self,
            sequence_number=sequence_number,
            data={**self.data, "sequence_number": sequence_number},
            raw=None,  # evolve copies every field; the upstream's bytes hold the old number
        )


@attrs.frozen(kw_only=True)
class ResponseEvent(StreamEvent):
    """``response.created|queued|in_progress|completed|incomplete|failed``.

    ``response`` is the typed view of ``data["response"]``, built on first use: the pipeline
    itself works on the wire dict, so most of these never need one.
    """

    _response: Response | None = attrs.field(default=None, eq=False, repr=False, alias="_response")

    @property
    def response(self) -> Response:
        response = self._response
        if response is None:
            response = Response(data=self.data["response"])
            object.__setattr__(self, "_response", response)
        return response

    @property
    def response_data(self) -> Mapping[str, Any]:
        """The wire Response object (no typed view built)."""
        data: Mapping[str, Any] = self.data["response"]
        return data

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def with_response_fields(self, **fields: Any) -> ResponseEvent:
        """A copy whose Response has these wire fields replaced (and no ``raw``)."""
        return ResponseEvent(
            type=self.type,
            sequence_number=self.sequence_number,
            data={**self.data, "response": {**self.data["response"], **fields}},
        )


@attrs.frozen(kw_only=True)
class OutputItemEvent(StreamEvent):
    """``response.output_item.added|done``."""

    @property
    def output_index(self) -> int:
        return int(self.data["output_index"])

    @property
    def item(self) -> WireDict:
        item: WireDict = self.data["item"]
        return item


@attrs.frozen(kw_only=True)
class ContentPartEvent(StreamEvent):
    """``response.content_part.added|done``."""

    @property
    def item_id(self) -> str:
        return str(self.data["item_id"])

    @property
    def output_index(self) -> int:
        return int(self.data["output_index"])

    @property
    def content_index(self) -> int:
        return int(self.data["content_index"])

    @property
    def part(self) -> WireDict:
        part: WireDict = self.data["part"]
        return part


class _ItemAddress:
    """Where an item-level event points (fields optional: shapes vary by event type)."""

    __slots__ = ()
    data: Mapping[str, Any]

    @property
    def item_id(self) -> str | None:
        return self.data.get("item_id")

    @property
    def output_index(self) -> int | None:
        return self.data.get("output_index")

    @property
    def content_index(self) -> int | None:
        return self.data.get("content_index")


@attrs.frozen(kw_only=True)
class DeltaEvent(_ItemAddress, StreamEvent):
    """Any ``*.delta`` event: a piece of text, refusal, arguments, reasoning, code, audio."""

    @property
    def delta(self) -> Any:
        return self.data.get("delta")


@attrs.frozen(kw_only=True)
class ItemEvent(_ItemAddress, StreamEvent):
    """Any other event addressing an output item (``*.done``, progress, partial images, ...)."""


@attrs.frozen(kw_only=True)
class ErrorEvent(StreamEvent):
    """The flat ``error`` event (``code``, ``message``, ``param`` at top level)."""

    @property
    def code(self) -> str | None:
        return self.data.get("code")

    @property
    def message(self) -> str:
        return str(self.data.get("message") or "")

    @property
    def param(self) -> str | None:
        return self.data.get("param")


@attrs.frozen(kw_only=True)
class UnknownEvent(StreamEvent):
    """An event type this code does not know; passed through untouched."""


LIFECYCLE_TYPES = frozenset(
    {
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)
TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})

_FAMILY_BY_TYPE: dict[str, type[StreamEvent]] = {
    "response.output_item.added": OutputItemEvent,
    "response.output_item.done": OutputItemEvent,
    "response.content_part.added": ContentPartEvent,
    "response.content_part.done": ContentPartEvent,
    "error": ErrorEvent,
}


def event_from_wire(data: Any, *, raw: bytes | None = None) -> StreamEvent:
    """Wrap one decoded wire event (a dict with ``type`` and ``sequence_number``).

    ``raw``: the JSON text ``data`` was parsed from, as received (see :class:`StreamEvent`);
    only for ``data`` fresh from the parser, never for a dict built or changed here."""
    if not isinstance(data, dict):
        raise UpstreamProtocolError("upstream sent a stream event that is not a JSON object")
    etype = data.get("type")
    if not isinstance(etype, str):
        raise UpstreamProtocolError("upstream sent a stream event without a string 'type'")
    seq = data.get("sequence_number")
    if not isinstance(seq, int):
        # Older servers omit it; the SDK requires it, so the gateway renumbers (see tracker).
        seq = -1
    if etype in LIFECYCLE_TYPES:
        response = data.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            raise UpstreamProtocolError(f"upstream sent {etype!r} without a response object")
        return ResponseEvent(type=etype, sequence_number=seq, data=data, raw=raw)
    family = _FAMILY_BY_TYPE.get(etype)
    if family is None:
        if etype.endswith(".delta"):
            family = DeltaEvent
        elif "item_id" in data or "output_index" in data:
            family = ItemEvent
        else:
            family = UnknownEvent
    return family(type=etype, sequence_number=seq, data=data, raw=raw)
