"""Following a native upstream's background response across reconnects, sans-IO.

Theory of operation: an upstream that runs a response in the background (``background: true``,
OpenAI's background mode) numbers its stream's events gaplessly from 0 (``sequence_number``)
and streams them again from any point: ``GET responses/{id}?stream=true&starting_after=N``
sends the events after N (the Responses API reference, §9 of the spec notes). A
:class:`ResumeCursor` stands between the connections and the one decoder downstream:

- it hands on only *complete* events, each framed again from its ``data`` bytes as they came
  (so the decoder's ``raw`` payloads are the upstream's own bytes), and keeps a partial event
  back: a connection that breaks mid-event leaves nothing half-read downstream, and the next
  connection's first event starts cleanly;
- it remembers the last sequence number handed on and drops any event at or below it, so a
  reconnect that overlaps adds no duplicate;
- it learns the upstream's raw response ID from the first event that carries a response, and
  notes when a terminal event (or an ``error`` event) has gone by: after that a broken
  connection is the end, not a reason to reconnect.

Nothing here does I/O: the connector opens the connections (``actors/_resume.py``).
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import orjson

from .._types import TERMINAL_TYPES
from .sse import SSEDecoder, encode_event

__all__ = ["ResumeCursor"]

_ENDING_TYPES: Final = TERMINAL_TYPES | {"error"}


@attrs.define(eq=False)
class ResumeCursor:
    """Where a background response's upstream stream stands (see the module docstring).

    Args:
        last: the last sequence number already handed on (-1: none; a response taken over
            after a restart starts from what the store holds).
        raw_id: the upstream's ID of the response, if known already.
    """

    last: int = -1
    raw_id: str | None = None
    #: A terminal (or ``error``) event was handed on: the stream is over.
    ended: bool = False
    #: Events handed on since the cursor was made.
    relayed: int = 0
    _sse: SSEDecoder = attrs.Factory(SSEDecoder)

    def feed(self, data: bytes) -> bytes:
        """The complete, new events of this chunk of a connection's body, framed again."""
        frames: list[bytes] = []
        for sse in self._sse.feed(data):
            payload = _payload(sse.data)
            if payload is not None:
                seq = payload.get("sequence_number")
                if isinstance(seq, int) and not isinstance(seq, bool):
                    if seq <= self.last:
                        continue  # already handed on (a reconnect that overlaps)
                    self.last = seq
                if self.raw_id is None:
                    response = payload.get("response")
                    if isinstance(response, dict) and isinstance(response.get("id"), str):
                        self.raw_id = response["id"]
                if payload.get("type") in _ENDING_TYPES:
                    self.ended = True
            # Malformed data is handed on too: the decoder downstream says what is wrong.
            event = None if sse.event == "message" else sse.event
            frames.append(encode_event(sse.data, event=event))
            self.relayed += 1
        return b"".join(frames)

    def reconnected(self) -> None:
        """A new connection: its body starts afresh (a partial event of the last is dropped)."""
        self._sse = SSEDecoder()

    def query(self) -> dict[str, str]:
        """The query that streams the events after the last one handed on."""
        query = {"stream": "true"}
        if self.last >= 0:
            query["starting_after"] = str(self.last)
        return query


def _payload(data: bytes) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None
