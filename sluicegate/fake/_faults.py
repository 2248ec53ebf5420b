"""Faults the fake upstream can be scripted to commit, one per ``POST /responses``.

A fault is data: a kind plus its parameters, built with the classmethods of :class:`Fault` and
interpreted by the server. Streaming faults count SSE events (``response.created`` is event 1);
on a non-stream request they apply to the JSON body instead, as each constructor documents.
"""

from __future__ import annotations

import enum
import http
from collections.abc import Mapping
from typing import Any, Final

import attrs
import orjson

from ._answers import error_envelope

__all__ = ["Fault", "FaultKind"]


class FaultKind(enum.Enum):
    STATUS = "status"
    RESET_BEFORE_HEADERS = "reset_before_headers"
    RESET_MID_STREAM = "reset_mid_stream"
    MALFORMED_SSE = "malformed_sse"
    END_WITHOUT_TERMINAL = "end_without_terminal"
    STALL = "stall"
    EXTRA_EVENTS = "extra_events"


# (message, type, code) per status, worded as OpenAI words them (the Responses API reference).
_DEFAULT_ERRORS: Final[Mapping[int, tuple[str, str, str | None]]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    409: ("The request conflicted with another request.", "invalid_request_error", None),
    422: ("The request was semantically invalid.", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        "server_error",
    ),
    502: ("Bad gateway.", "server_error", None),
    503: (
        "The engine is currently overloaded, please try again later.",
        "server_error",
        None,
    ),
    504: ("Gateway timeout.", "server_error", None),
}


def _default_error(code: int) -> bytes:
    try:
        message, type_, error_code = _DEFAULT_ERRORS[code]
    except KeyError:
        try:
            message = f"{http.HTTPStatus(code).phrase}."
        except ValueError:
            message = "Error."
        type_ = "server_error" if code >= 500 else "invalid_request_error"
        error_code = None
    return error_envelope(message, type=type_, code=error_code)


def _non_negative(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen(kw_only=True)
class Fault:
    """One scripted misbehaviour; build it with the classmethods, queue it with
    :meth:`FakeUpstream.script`."""

    kind: FaultKind
    #: STATUS: the HTTP status, the encoded body and the extra response headers.
    status_code: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    #: Streaming kinds: how many SSE events go out before the fault strikes.
    after_events: int = attrs.field(default=0, validator=_non_negative)
    #: EXTRA_EVENTS: the raw events to insert, each a mapping with a ``type``.
    events: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def status(
        cls,
        code: int,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer with HTTP ``code`` before anything else happens.

        Args:
            code: an error status, 400-599.
            body: the whole JSON body to send; by default an OpenAI error envelope fitting the
                status (429 ``rate_limit_exceeded``, 500 ``server_error``, 503 overloaded, ...).
            headers: extra response headers, e.g. ``{"retry-after": "2"}``.

        Raises:
            ValueError: ``code`` is not an error status.
        """
        if not 400 <= code <= 599:
            raise ValueError(f"fault status must be 400-599, got {code}")
        encoded = _default_error(code) if body is None else orjson.dumps(body)
        pairs = tuple((name.lower(), value) for name, value in (headers or {}).items())
        return cls(kind=FaultKind.STATUS, status_code=code, body=encoded, headers=pairs)

    @classmethod
    def reset_before_headers(cls) -> Fault:
        """Read the request, then abort the connection with a TCP RST without sending a byte."""
        return cls(kind=FaultKind.RESET_BEFORE_HEADERS)

    @classmethod
    def reset_mid_stream(cls, after_events: int) -> Fault:
        """Send ``after_events`` SSE events, then abort with a TCP RST.

        Non-stream: send the headers (announcing the full length) and, unless ``after_events``
        is 0, the first half of the JSON body, then RST.
        """
        return cls(kind=FaultKind.RESET_MID_STREAM, after_events=after_events)

    @classmethod
    def malformed_sse(cls, after_events: int) -> Fault:
        """Send ``after_events`` events, then a frame whose data is cut-off JSON, then carry on
        normally (sequence numbers of the real events stay gapless).

        Non-stream: a complete HTTP 200 whose body is the first half of the JSON (so not JSON);
        the connection stays usable.
        """
        return cls(kind=FaultKind.MALFORMED_SSE, after_events=after_events)

    @classmethod
    def end_without_terminal(cls, after_events: int) -> Fault:
        """Send ``after_events`` events (at most all but the terminal one), then end the HTTP
        response cleanly; no terminal event ever comes.

        Non-stream: send the headers (announcing the full length) and, unless ``after_events``
        is 0, the first half of the body, then close the connection cleanly (FIN): the body
        ends early without a reset.
        """
        return cls(kind=FaultKind.END_WITHOUT_TERMINAL, after_events=after_events)

    @classmethod
    def stall(cls, after_events: int) -> Fault:
        """Send ``after_events`` events (0: not even the response headers), then nothing more,
        holding the connection open until the client goes away.

        Non-stream: 0 stalls before the headers; otherwise the headers and the first half of
        the body go out first. Background request: the create call answers ``queued`` as usual
        but the job never progresses; GET keeps returning ``queued`` and cancel cancels it.
        """
        return cls(kind=FaultKind.STALL, after_events=after_events)

    @classmethod
    def extra_events(cls, *events: Mapping[str, Any]) -> Fault:
        """A normal answer with ``events`` inserted right after ``response.in_progress``.

        Each event is sent as given (its ``sequence_number`` replaced to keep the stream
        gapless), which proves that unknown event types pass through untouched. Non-stream: a
        normal answer.

        Raises:
            ValueError: an event has no string ``type``.
        """
        for event in events:
            if not isinstance(event.get("type"), str):
                raise ValueError(f"every extra event needs a string 'type': {event!r}")
        return cls(kind=FaultKind.EXTRA_EVENTS, events=tuple(dict(e) for e in events))
