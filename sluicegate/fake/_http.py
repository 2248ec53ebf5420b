"""The sliver of HTTP/1.1 the fake upstream needs, sans-IO.

Deliberately not h11: the fake must cost next to nothing per request so benchmarks measure the
gateway, and it only ever meets well-behaved clients (httpx, the OpenAI SDK, the gateway). So:
``Content-Length`` request bodies only (chunked ones get 411), no pipelining, no trailers, and
anything odd in a request head is a 400 followed by closing the connection.
"""

from __future__ import annotations

import http
from collections.abc import Iterable
from typing import Final

import attrs

__all__ = [
    "LAST_CHUNK",
    "MAX_BODY",
    "MAX_HEAD",
    "BadRequest",
    "RequestHead",
    "chunk",
    "parse_head",
    "response_head",
]

MAX_HEAD: Final = 64 * 1024
MAX_BODY: Final = 64 * 1024 * 1024

#: Ends a chunked response body (RFC 9112 §7.1).
LAST_CHUNK: Final = b"0\r\n\r\n"


class BadRequest(Exception):
    """The request cannot be served; answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen(kw_only=True)
class RequestHead:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    content_length: int
    keep_alive: bool
    expect_continue: bool
    #: The body comes chunk-encoded (only with ``allow_chunked``; ``content_length`` is 0).
    chunked: bool = False

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def parse_head(data: bytes, *, allow_chunked: bool = False) -> RequestHead:
    """Parse a request head (without the blank line that ends it).

    Raises:
        BadRequest: malformed or oversized; chunked unless ``allow_chunked``; a transfer
            coding other than chunked.
    """
    lines = data.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "Malformed request line.")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, "Malformed header line.")
        name = name.lower()
        value = value.strip(" \t")
        # Repeated fields fold into one, comma-separated (RFC 9110 §5.3).
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    chunked = False
    if "transfer-encoding" in headers:
        if not allow_chunked:
            raise BadRequest(411, "Chunked request bodies are not supported; send Content-Length.")
        codings = [c.strip().lower() for c in headers["transfer-encoding"].split(",")]
        if codings != ["chunked"]:
            raise BadRequest(501, "Unsupported Transfer-Encoding.")
        chunked = True
    length = 0
    if not chunked:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest(400, "Malformed Content-Length.") from None
        if length < 0:
            raise BadRequest(400, "Malformed Content-Length.")
        if length > MAX_BODY:
            raise BadRequest(413, "Request body too large.")
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 keeps the connection by default, HTTP/1.0 only when asked (RFC 9112 §9.3).
    keep_alive = "close" not in connection if version != "HTTP/1.0" else "keep-alive" in connection
    path, _, query = target.partition("?")
    return RequestHead(
        method=method,
        path=path,
        query=query,
        headers=headers,
        content_length=length,
        keep_alive=keep_alive,
        expect_continue=headers.get("expect", "").lower() == "100-continue",
        chunked=chunked,
    )


_STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()
    for status in http.HTTPStatus
}


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """A response status line and header block, blank line included."""
    status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return status_line + fields.encode("latin-1") + b"\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body; nothing for empty data, which would end it."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
