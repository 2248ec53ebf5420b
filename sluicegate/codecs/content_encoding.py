"""A request body's ``Content-Encoding`` (RFC 9110 §8.4), decoded as it arrives, bounded.

Agent CLIs compress the bodies they send. :func:`parse_content_encoding` reads the header into
the codings to undo, and :class:`ContentDecoder` undoes them on each chunk the network delivers
(``feed``), then checks the body ended where a compressed stream ends (``close``). Nothing here
does I/O or imports an I/O library.

Theory of operation. The header lists codings in the order they were applied, so they are
undone last first (``gzip, zstd`` is zstd over gzip: zstd comes off first). Names are
case-insensitive; ``identity`` is no coding at all; ``x-gzip`` is ``gzip`` (RFC 9110 §8.4.1.3).
Every stage is a decompressor asked for at most ``limit - produced + 1`` bytes per call (zlib's
and zstd's ``max_length``): it stops there, whatever the input holds, so a decompression bomb
costs at most ``limit + 1`` bytes of output per stage before :class:`RequestTooLargeError`,
never the whole inflation. Asking for one byte more than the budget is what tells "exactly at
the limit" from "over it". When a stage returns less than it was allowed, it has consumed all
its input (both libraries guarantee this), so nothing is left pending between chunks. Every
stage, an intermediate one included, is held to the same limit: the body on the wire is held to
it by the caller, and each layer of a stacked encoding is a body on the wire of the next.

The codings:

* ``gzip`` (RFC 1952): one member or several concatenated (as ``cat a.gz b.gz`` makes them,
  and as RFC 1952 §2.2 allows), each checked by its CRC-32 and length trailer; at most
  :data:`MAX_MEMBERS` of them.
* ``deflate``: in HTTP the zlib format (RFC 1950, RFC 9110 §8.4.1.2), but some clients send a
  raw deflate stream (RFC 1951) under this name, so both are taken. The first two bytes decide:
  a zlib header has compression method 8, a window of at most 32 KiB and a header checksum
  divisible by 31; a raw stream could look like one only if its first block were a stored block
  with a padding bit set, which no encoder writes.
* ``zstd`` (RFC 8878): one frame or several (skippable frames included; at most
  :data:`MAX_MEMBERS` in all). A decoder need not accept windows over 8 MiB for this content
  coding (RFC 9659 §3), and a larger one would cost that much memory per request whatever the
  body, so frames asking for more are refused.

Corrupt, truncated or trailing data is an :class:`InvalidRequestError` naming the header; an
unknown coding an :class:`UnsupportedMediaTypeError` (415).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from functools import partial
from typing import Final, Protocol

import attrs

from ..errors import InvalidRequestError, RequestTooLargeError, UnsupportedMediaTypeError

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

__all__ = [
    "CONTENT_ENCODING_PARAM",
    "ContentDecoder",
    "DecoderStatistics",
    "MAX_MEMBERS",
    "SUPPORTED_CODINGS",
    "ZSTD_WINDOW_LOG_MAX",
    "parse_content_encoding",
]

#: The ``param`` of the errors: the header, as the client sends it.
CONTENT_ENCODING_PARAM: Final = "content-encoding"
#: The codings a body may arrive in (``identity`` and ``x-gzip`` included).
SUPPORTED_CODINGS: Final = ("deflate", "gzip", "identity", "x-gzip", "zstd")
#: 8 MiB, the largest window a ``zstd`` content coding may use (RFC 9659 §3).
ZSTD_WINDOW_LOG_MAX: Final = 23
#: The most gzip members or zstd frames one body may concatenate (encoders write one).
MAX_MEMBERS: Final = 100
#: The most input one decompressor call gets (see :class:`_Members`).
_SLICE: Final = 64 * 1024

_ALIASES: Final = {"x-gzip": "gzip"}


def parse_content_encoding(value: str | None) -> tuple[str, ...]:
    """The codings of a ``Content-Encoding`` header, in the order they were applied.

    Names are lower-cased, ``x-gzip`` is ``gzip``, and ``identity`` (and empty list members) are
    dropped: an empty tuple means the body is as it is.

    Raises:
        UnsupportedMediaTypeError: a coding the gateway cannot decode (415).
    """
    if value is None:
        return ()
    codings: list[str] = []
    for member in value.split(","):
        name = member.strip().lower()
        if not name or name == "identity":
            continue
        if name not in SUPPORTED_CODINGS:
            shown = ", ".join(c for c in SUPPORTED_CODINGS if c not in _ALIASES)
            raise UnsupportedMediaTypeError(
                f"Unsupported Content-Encoding {member.strip()[:64]!r}: the request body may be "
                f"sent as {shown}.",
                param=CONTENT_ENCODING_PARAM,
                code="unsupported_content_encoding",
            )
        codings.append(_ALIASES.get(name, name))
    return tuple(codings)


@attrs.frozen(kw_only=True)
class DecoderStatistics:
    """What a :class:`ContentDecoder` has read and produced so far."""

    #: Encoded bytes fed.
    received: int
    #: Bytes each stage produced, in decoding order (the last one is the decoded body).
    produced: tuple[int, ...]

    @property
    def decoded(self) -> int:
        """Bytes of the decoded body."""
        return self.produced[-1] if self.produced else self.received


class _Stage(Protocol):
    """One coding's decompressor: ``decompress`` returns at most ``max_length`` (>= 1) bytes
    and, when it returns fewer, has consumed all of ``data``."""

    def decompress(self, data: bytes, max_length: int) -> bytes: ...

    def finish(self) -> None: ...


def _corrupt(coding: str, detail: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"The request body is not valid {coding} data (Content-Encoding): {detail}.",
        param=CONTENT_ENCODING_PARAM,
        code="invalid_content_encoding",
    )


class _Decompressor(Protocol):
    """zlib's and zstd's decompressor objects, as :class:`_Members` uses them."""

    def decompress(self, data: bytes | memoryview, max_length: int, /) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...


@attrs.define(eq=False)
class _Members:
    """gzip members (RFC 1952 §2.2) or zstd frames (RFC 8878 §3), one after another.

    Input goes to the decompressor in slices of at most :data:`_SLICE` bytes, and a body may
    hold at most :data:`MAX_MEMBERS` of them: at each member's end the library copies the
    rest of its input out as ``unused_data``, so without both a body of many tiny members
    would cost time quadratic in its size."""

    _coding: str
    _new: Callable[[], _Decompressor]
    _errors: tuple[type[Exception], ...]
    _current: _Decompressor | None = None
    _members: int = 0

    def decompress(self, data: bytes, max_length: int) -> bytes:
        pieces: list[bytes] = []
        size = 0
        view = memoryview(data)
        for start in range(0, len(view), _SLICE):
            rest: bytes | memoryview = view[start : start + _SLICE]
            while rest and size < max_length:
                if self._current is None or self._current.eof:
                    self._members += 1
                    if self._members > MAX_MEMBERS:
                        raise _corrupt(
                            self._coding, f"more than {MAX_MEMBERS} concatenated streams"
                        )
                    self._current = self._new()
                try:
                    piece = self._current.decompress(rest, max_length - size)
                except self._errors as exc:
                    raise _corrupt(self._coding, str(exc)) from exc
                pieces.append(piece)
                size += len(piece)
                rest = self._current.unused_data if self._current.eof else b""
            if size >= max_length:
                break
        return b"".join(pieces)

    def finish(self) -> None:
        if self._current is None:
            raise _corrupt(self._coding, "the body is empty")
        if not self._current.eof:
            raise _corrupt(self._coding, "the stream is truncated")


def _gzip() -> _Members:
    return _Members("gzip", partial(zlib.decompressobj, 16 + zlib.MAX_WBITS), (zlib.error,))


def _zstd() -> _Members:
    options: dict[int, int] = {zstd.DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX}
    return _Members("zstd", partial(zstd.ZstdDecompressor, options=options), (zstd.ZstdError,))


@attrs.define(eq=False)
class _Deflate:
    #: Bytes held until the first two decide between zlib and raw deflate.
    _head: bytes = b""
    _inflater: zlib._Decompress | None = None

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._inflater is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            # Negative window bits: a raw deflate stream, without the zlib header and trailer.
            wbits = zlib.MAX_WBITS if _is_zlib(data) else -zlib.MAX_WBITS
            self._inflater = zlib.decompressobj(wbits)
        if self._inflater.eof and data:
            raise _corrupt("deflate", "data after the end of the stream")
        try:
            out = self._inflater.decompress(data, max_length)
        except zlib.error as exc:
            raise _corrupt("deflate", str(exc)) from exc
        if self._inflater.eof and self._inflater.unused_data:
            raise _corrupt("deflate", "data after the end of the stream")
        return out

    def finish(self) -> None:
        if self._inflater is None:
            # Fewer than two bytes: no stream of either kind is that short.
            raise _corrupt("deflate", "the stream is truncated")
        if not self._inflater.eof:
            raise _corrupt("deflate", "the stream is truncated")


def _is_zlib(head: bytes) -> bool:
    """Whether two bytes are a zlib header (RFC 1950 §2.2): CM 8, CINFO <= 7, FCHECK."""
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


_STAGES: Final[dict[str, Callable[[], _Stage]]] = {
    "gzip": _gzip,
    "deflate": _Deflate,
    "zstd": _zstd,
}


@attrs.define(eq=False, init=False)
class ContentDecoder:
    """Undoes a body's codings chunk by chunk, holding every stage's output to ``limit`` bytes.

    Args:
        codings: as :func:`parse_content_encoding` returns them (the order of application).
        limit: the most bytes the decoded body, and every intermediate layer, may have.
    """

    _codings: tuple[str, ...]
    _limit: int
    _stages: list[_Stage]
    _received: int
    _produced: list[int]
    _closed: bool

    def __init__(self, codings: tuple[str, ...], *, limit: int) -> None:
        self._codings = tuple(reversed(codings))
        self._limit = limit
        self._stages = [_STAGES[coding]() for coding in self._codings]
        self._received = 0
        self._produced = [0] * len(self._stages)
        self._closed = False

    def feed(self, data: bytes) -> bytes:
        """The decoded bytes that ``data`` completes (possibly none).

        Raises:
            RequestTooLargeError: a stage's output went over the limit (413).
            InvalidRequestError: the data is not valid for its coding (400, names the header).
        """
        if self._closed:
            raise RuntimeError("feed() after close()")
        self._received += len(data)
        for i, stage in enumerate(self._stages):
            if not data:
                break
            budget = self._limit - self._produced[i]
            data = stage.decompress(data, budget + 1)
            self._produced[i] += len(data)
            if len(data) > budget:
                raise RequestTooLargeError(
                    f"The request body is larger than {self._limit} bytes once decoded "
                    f"(Content-Encoding: {', '.join(reversed(self._codings))})."
                )
        return data

    def close(self) -> bytes:
        """Checks every stream ended where the body did; returns the decoded bytes still held
        (none: each ``feed`` returns all that its data completes).

        Raises:
            InvalidRequestError: a stream is truncated, or the body was empty (400).
        """
        self._closed = True
        for stage in self._stages:
            stage.finish()
        return b""

    def statistics(self) -> DecoderStatistics:
        return DecoderStatistics(received=self._received, produced=tuple(self._produced))
