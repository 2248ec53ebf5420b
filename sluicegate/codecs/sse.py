"""Server-Sent Events (``text/event-stream``), both directions, sans-IO.

:class:`SSEDecoder` turns the body of an event stream, in whatever chunks the network delivers
it, into :class:`ServerSentEvent` objects; :func:`encode_event` and :func:`encode_comment` write
frames. Nothing here does I/O or imports an I/O library: bytes in, events out, and back.

Decoding follows the WHATWG HTML standard, "Interpreting an event stream"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
CRLF, LF and lone CR end lines; one leading UTF-8 BOM is skipped; ``:`` starts a comment; the
fields ``event``, ``data``, ``id`` and ``retry`` are understood and others ignored; a blank line
dispatches the event if its data buffer is not empty. Where we deviate, and why:

* **End of stream.** The standard discards an event that was not terminated by a blank line.
  Some upstreams omit the final blank line, so :meth:`SSEDecoder.close` dispatches a pending
  event if the stream ended right after a *complete* line. A stream that ends inside a line was
  cut off, so the partial line and the event it belongs to are discarded, as the standard says.
* **Size limit.** One event may not exceed ``max_event_bytes``; an endless line or an endless
  event from a broken or hostile upstream raises :class:`~sluicegate.errors.UpstreamProtocolError`
  instead of exhausting memory.
* **Data stays bytes.** ``ServerSentEvent.data`` is the raw bytes of the ``data`` lines joined
  with ``b"\\n"`` (so ``orjson.loads`` takes it without a decode); invalid UTF-8 in it is passed
  on, not replaced with U+FFFD. Event names and ids are decoded with replacement as specified.
* **``id`` and ``retry`` on the event.** ``id`` is the stream's *last event ID* at dispatch, as
  the standard's ``MessageEvent.lastEventId``: it persists across events until another ``id``
  field changes it; ``None`` stands for the standard's empty string. ``retry`` belongs to the
  connection in the standard; we report it on the next dispatched event (``None`` on the others),
  so a standalone ``retry: 3000`` block is not lost.

How it stays fast (every streamed token passes through here): line endings are normalised to LF
once per chunk with C-speed ``bytes.replace`` (a CR ending a chunk is remembered, in case the LF
of its CRLF opens the next chunk), after which an event ends at the first ``b"\\n\\n"``, found
with ``bytes.find``. Each event is parsed once, when complete; the common shapes
``event: X\\ndata: Y`` and ``data: Y`` are sliced straight out of the chunk without splitting it
into lines. A partial event waits in a ``bytearray`` that is only appended to and never scanned
again: only the seam and the new chunk can hold its end.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from sluicegate.errors import UpstreamProtocolError

__all__ = ["SSEDecoder", "ServerSentEvent", "encode_comment", "encode_event"]

_BOM: Final = b"\xef\xbb\xbf"
_LF: Final = 10
_CR: Final = 13
_DEFAULT_MAX_EVENT_BYTES: Final = 16 * 1024 * 1024


@attrs.frozen(kw_only=True, slots=True)
class ServerSentEvent:
    """One dispatched event of an event stream.

    Attributes:
        event: The ``event`` field; ``"message"`` when the event had none or an empty one.
        data: The ``data`` lines joined with ``b"\\n"``, undecoded.
        id: The stream's last event ID when the event was dispatched (it persists across
            events); ``None`` when no ``id`` field has set one, or an empty one reset it.
        retry: The reconnection time in milliseconds from a ``retry`` field seen since the
            previous dispatched event, else ``None``.
    """

    event: str
    data: bytes
    id: str | None = None
    retry: int | None = None


def _check_positive(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.alias} must be at least 1, got {value}")


@attrs.define(eq=False)
class SSEDecoder:
    """Incremental decoder of an event stream; see the module docstring for the rules.

    Feed it the body as it arrives with :meth:`feed`; call :meth:`close` at end of stream. After
    either raises, the decoder is unusable: the stream is broken.

    Args:
        max_event_bytes: Limit on the size of one event: its lines from the first up to and
            including the terminator of the last (after line endings are normalised to one
            byte), not counting the blank line that ends it.
    """

    _max_event_bytes: int = attrs.field(
        default=_DEFAULT_MAX_EVENT_BYTES, kw_only=True, validator=_check_positive
    )
    # Normalised bytes of the event in progress: starts at a line start, never holds a blank
    # line (it would have ended the event), at most ``_max_event_bytes`` long.
    _partial: bytearray = attrs.field(init=False, factory=bytearray, repr=False)
    _last_id: str | None = attrs.field(init=False, default=None)
    _retry: int | None = attrs.field(init=False, default=None)
    _at_start: bool = attrs.field(init=False, default=True)
    _bom_prefix: bytes = attrs.field(init=False, default=b"")
    _pending_cr: bool = attrs.field(init=False, default=False)
    _closed: bool = attrs.field(init=False, default=False)

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Decode the next chunk of the stream.

        Args:
            data: The next bytes, split anywhere (mid-line, mid-CRLF, mid-BOM).

        Returns:
            The events this chunk completed, in stream order; often none.

        Raises:
            UpstreamProtocolError: An event exceeds ``max_event_bytes``.
            RuntimeError: Called after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("SSEDecoder.feed() called after close()")
        if type(data) is not bytes:
            data = bytes(data)  # slices of it become ServerSentEvent.data, which is bytes
        if self._at_start:
            data = self._strip_bom(data)
        if self._pending_cr and data:
            self._pending_cr = False
            if data[0] == _LF:
                data = data[1:]  # the LF of a CRLF split across chunks; the CR ended the line
        if b"\r" in data:
            self._pending_cr = data[-1] == _CR
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not data:
            return []

        events: list[ServerSentEvent] = []
        limit = self._max_event_bytes
        pos = 0
        partial = self._partial
        if partial:
            if partial[-1] == _LF and data[0] == _LF:
                del partial[-1]
                pos = 1
            else:
                end = data.find(b"\n\n")
                if end == -1:
                    partial += data
                    if len(partial) > limit:
                        raise self._too_big(len(partial))
                    return events
                partial += memoryview(data)[:end]
                pos = end + 2
            block = bytes(partial)
            partial.clear()
            if len(block) >= limit:
                raise self._too_big(len(block) + 1)
            self._dispatch(block, events)

        n = len(data)
        while pos < n:
            if data[pos] == _LF:
                # A blank line with no event in progress: it only resets the (empty) event type.
                pos += 1
                continue
            end = data.find(b"\n\n", pos)
            if end == -1:
                break
            if end - pos >= limit:
                raise self._too_big(end - pos + 1)
            # Fast paths: `event: X\ndata: Y` (OpenAI Responses) and `data: Y` (Chat
            # Completions), sliced straight out of the chunk.
            if data.startswith(b"event: ", pos):
                nl = data.find(b"\n", pos + 7, end)
                if (
                    nl != -1
                    and data.startswith(b"data: ", nl + 1)
                    and data.find(b"\n", nl + 7, end) == -1
                ):
                    name = data[pos + 7 : nl]
                    retry = self._retry
                    if retry is not None:
                        self._retry = None
                    events.append(
                        ServerSentEvent(
                            event=name.decode("utf-8", "replace") if name else "message",
                            data=data[nl + 7 : end],
                            id=self._last_id,
                            retry=retry,
                        )
                    )
                    pos = end + 2
                    continue
            elif data.startswith(b"data: ", pos) and data.find(b"\n", pos + 6, end) == -1:
                retry = self._retry
                if retry is not None:
                    self._retry = None
                events.append(
                    ServerSentEvent(
                        event="message", data=data[pos + 6 : end], id=self._last_id, retry=retry
                    )
                )
                pos = end + 2
                continue
            self._dispatch(data[pos:end], events)
            pos = end + 2

        if pos < n:
            partial += memoryview(data)[pos:]
            if len(partial) > limit:
                raise self._too_big(len(partial))
        return events

    def close(self) -> list[ServerSentEvent]:
        """Signal the end of the stream.

        The standard discards an event not terminated by a blank line. We are lenient with
        upstreams that omit the final blank line: if the stream ended right after a complete
        line and the pending event has data, it is dispatched. If the stream ended inside a
        line (no line terminator), it was cut off: that partial line and the event it belongs
        to are discarded. Calling ``close`` again returns nothing.

        Returns:
            The pending event, if one is dispatched as above; else nothing.
        """
        if self._closed:
            return []
        self._closed = True
        partial = self._partial
        self._partial = bytearray()
        events: list[ServerSentEvent] = []
        if partial and partial[-1] == _LF:
            del partial[-1]
            self._dispatch(bytes(partial), events)
        return events

    def _strip_bom(self, data: bytes) -> bytes:
        head = self._bom_prefix + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._bom_prefix = head  # maybe a BOM split across chunks: wait for more
            return b""
        self._at_start = False
        self._bom_prefix = b""
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _dispatch(self, block: bytes, events: list[ServerSentEvent]) -> None:
        """Interpret the lines of one event (LF-separated, no blank line, no final LF)."""
        event_type = b""
        data_lines: list[bytes] = []
        for line in block.split(b"\n"):
            colon = line.find(b":")
            if colon == 0:
                continue  # comment
            if colon == -1:
                field, value = line, b""
            else:
                field = line[:colon]
                start = colon + 2 if line[colon + 1 : colon + 2] == b" " else colon + 1
                value = line[start:]
            if field == b"data":
                data_lines.append(value)
            elif field == b"event":
                event_type = value
            elif field == b"id" and b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace") or None
            elif field == b"retry" and value.isdigit():  # bytes.isdigit() is ASCII-only
                self._retry = int(value)
            # Any other field, an id with NUL and a non-numeric retry are ignored.
        if not data_lines:
            return  # nothing to dispatch; the event type resets with the block
        retry = self._retry
        self._retry = None
        events.append(
            ServerSentEvent(
                event=event_type.decode("utf-8", "replace") if event_type else "message",
                data=b"\n".join(data_lines),
                id=self._last_id,
                retry=retry,
            )
        )

    def _too_big(self, size: int) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            f"SSE event from the upstream exceeds max_event_bytes={self._max_event_bytes} "
            f"({size} bytes without an event boundary)"
        )


def encode_event(data: bytes | str, *, event: str | None = None, id: str | None = None) -> bytes:
    """Encode one event as an SSE frame.

    Writes ``id: …`` (if given), ``event: …`` (if given), one ``data: `` line per line of
    ``data`` (split on LF, CRLF and lone CR, so the frame is always valid), and a blank line.

    Args:
        data: The payload; ``str`` is encoded as UTF-8.
        event: The event name; omitted, the client sees ``"message"``.
        id: The event id, which becomes the client's last event ID.

    Returns:
        The frame.

    Raises:
        ValueError: ``event`` or ``id`` contains a line break, or ``id`` a NUL (which would
            make clients ignore it).
    """
    if isinstance(data, str):
        data = data.encode()
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\ndata: ")
    frame = b"data: " + data + b"\n\n"
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError(f"SSE event name contains a line break: {event!r}")
        frame = b"event: " + event.encode() + b"\n" + frame
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError(f"SSE id contains a line break or NUL: {id!r}")
        frame = b"id: " + id.encode() + b"\n" + frame
    return frame


def encode_comment(text: str = "") -> bytes:
    """Encode a comment frame, e.g. a keepalive: ``b": text\\n\\n"``.

    Clients ignore comments. A multi-line ``text`` becomes one comment line per line.

    Args:
        text: The comment.

    Returns:
        The frame.
    """
    body = text.encode()
    if b"\n" in body or b"\r" in body:
        body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\n: ")
    return b": " + body + b"\n\n"
