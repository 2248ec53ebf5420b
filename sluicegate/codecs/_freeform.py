"""The input of a custom (freeform) tool, decoded while its call streams.

A bridged provider has no freeform tools: the gateway gives it a function with one string
argument instead (``{"input": "..."}``, :func:`~._bridge.custom_tool_function`), and the provider
streams that function's arguments as JSON text, cut anywhere. :class:`FreeformInput` reads that
text incrementally and returns the decoded pieces of the ``input`` string as they arrive, so a
``custom_tool_call`` streams its input (not JSON) as the model writes it.

Theory of operation: a small state machine over characters (:class:`_State`) that expects
exactly ``{"input": "<string>"}`` with any whitespace between the tokens. Inside the string it
decodes the JSON escapes (``\\n``, ``\\"``, ``\\uXXXX`` and UTF-16 surrogate pairs), keeping a
cut-off escape until its next characters arrive. An unpaired surrogate becomes U+FFFD (the event
must be valid UTF-8). Arguments of any other shape are not streamed: :meth:`FreeformInput.close`
settles the input from the whole argument text.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs
import orjson

__all__ = ["CUSTOM_INPUT_KEY", "FreeformInput"]

#: The one property of the function a custom tool becomes.
CUSTOM_INPUT_KEY: Final = "input"

_WHITESPACE: Final = frozenset(" \t\r\n")
_SIMPLE_ESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_REPLACEMENT: Final = "\ufffd"


class _State(enum.Enum):
    #: Before the ``{``.
    OBJECT = "object"
    #: Before the key's opening quote.
    KEY = "key"
    #: Inside the key (its raw text is collected, then compared).
    IN_KEY = "in_key"
    #: Before the ``:``.
    COLON = "colon"
    #: Before the value's opening quote.
    VALUE = "value"
    #: Inside the value: characters are decoded and returned.
    IN_VALUE = "in_value"
    #: After a backslash in the value.
    ESCAPE = "escape"
    #: Collecting the four hex digits of ``\\uXXXX``.
    UNICODE = "unicode"
    #: After the value's closing quote, before the ``}``.
    AFTER_VALUE = "after_value"
    #: The whole object was read.
    DONE = "done"
    #: Not the expected shape: nothing more is streamed.
    OTHER = "other"


@attrs.define(eq=False)
class FreeformInput:
    """Feed the argument text of the function a custom tool became; get the decoded ``input``.

    :meth:`feed` returns the input text that chunk completed (possibly empty: a chunk may end
    inside an escape); :meth:`close` returns the whole input. What :meth:`feed` returned is
    always a prefix of what :meth:`close` returns."""

    _raw: list[str] = attrs.Factory(list)
    _state: _State = _State.OBJECT
    _key: list[str] = attrs.Factory(list)
    _key_escaped: bool = False
    _hex: list[str] = attrs.Factory(list)
    #: A high surrogate waiting for its low half (a ``\\uXXXX`` escape right after it).
    _high: int | None = None
    _decoded: list[str] = attrs.Factory(list)

    def feed(self, text: str) -> str:
        """Read more argument text; returns the input characters it completed."""
        self._raw.append(text)
        out: list[str] = []
        for char in text:
            if self._state is _State.OTHER or self._state is _State.DONE:
                break
            self._step(char, out)
        piece = "".join(out)
        self._decoded.append(piece)
        return piece

    def close(self) -> str:
        """The whole input.

        - ``{"input": "..."}`` as expected: the decoded string (also when a stream was cut off
          inside it: what was decoded so far, which is what was streamed).
        - Other arguments (no ``input`` string first, or not JSON at all): the model did not
          follow the function's schema, and its argument text is all there is to give; it is
          the input as it came (a JSON object with a string ``input`` elsewhere in it gives
          that string; empty arguments, or ``{}``, give an empty input).
        """
        decoded = "".join(self._decoded)
        if self._state in (_State.IN_VALUE, _State.ESCAPE, _State.UNICODE):
            return decoded  # cut off inside the string: an unfinished escape is left out
        if self._state in (_State.AFTER_VALUE, _State.DONE) or decoded:
            return decoded
        raw = "".join(self._raw)
        try:
            parsed = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            return raw
        if isinstance(parsed, dict):
            value = parsed.get(CUSTOM_INPUT_KEY)
            if isinstance(value, str):
                return value
            if not parsed:
                return ""
        return raw

    # -- the state machine --

    def _step(self, char: str, out: list[str]) -> None:
        state = self._state
        if state is _State.IN_VALUE:
            if char == '"':
                self._flush_high(out)
                self._state = _State.AFTER_VALUE
            elif char == "\\":
                self._state = _State.ESCAPE
            else:
                self._flush_high(out)
                out.append(char)
        elif state is _State.ESCAPE:
            if char == "u":
                self._hex = []
                self._state = _State.UNICODE
                return
            self._flush_high(out)
            # An escape JSON does not have: keep what the model wrote.
            out.append(_SIMPLE_ESCAPES.get(char, "\\" + char))
            self._state = _State.IN_VALUE
        elif state is _State.UNICODE:
            self._unicode(char, out)
        elif char in _WHITESPACE and state is not _State.IN_KEY:
            pass
        elif state is _State.OBJECT:
            self._state = _State.KEY if char == "{" else _State.OTHER
        elif state is _State.KEY:
            self._state = _State.IN_KEY if char == '"' else _State.OTHER
        elif state is _State.IN_KEY:
            self._key_char(char)
        elif state is _State.COLON:
            self._state = _State.VALUE if char == ":" else _State.OTHER
        elif state is _State.VALUE:
            self._state = _State.IN_VALUE if char == '"' else _State.OTHER
        elif state is _State.AFTER_VALUE:
            self._state = _State.DONE if char == "}" else _State.OTHER

    def _key_char(self, char: str) -> None:
        if self._key_escaped:
            self._key_escaped = False
        elif char == "\\":
            self._key_escaped = True
        elif char == '"':
            try:
                key = orjson.loads('"' + "".join(self._key) + '"')
            except orjson.JSONDecodeError:
                key = None
            self._state = _State.COLON if key == CUSTOM_INPUT_KEY else _State.OTHER
            return
        self._key.append(char)

    def _unicode(self, char: str, out: list[str]) -> None:
        if char not in _HEX:
            # Not an escape after all: keep what the model wrote, and read on from here.
            self._flush_high(out)
            out.append("\\u" + "".join(self._hex))
            self._state = _State.IN_VALUE
            self._step(char, out)
            return
        self._hex.append(char)
        if len(self._hex) < 4:
            return
        code = int("".join(self._hex), 16)
        self._state = _State.IN_VALUE
        if 0xDC00 <= code <= 0xDFFF:
            if self._high is None:
                out.append(_REPLACEMENT)  # a low half alone
            else:
                out.append(chr(0x10000 + ((self._high - 0xD800) << 10) + (code - 0xDC00)))
                self._high = None
            return
        self._flush_high(out)
        if 0xD800 <= code <= 0xDBFF:
            self._high = code
        else:
            out.append(chr(code))

    def _flush_high(self, out: list[str]) -> None:
        # A high surrogate not followed by its low half.
        if self._high is not None:
            out.append(_REPLACEMENT)
            self._high = None
