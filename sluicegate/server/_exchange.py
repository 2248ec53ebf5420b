"""One HTTP exchange as the proxy answers it: what the client sent, read strictly, and the answer.

:class:`Exchange` carries an ASGI request through the proxy: its ``x-request-id``, its headers
and query (read by the library's rules: an integer is :func:`~sluicegate._gateway.checked_int`'s),
its body (JSON read whole within the body limits, or a multipart form as it streams), and the
start of its answer. A client that hangs up is :class:`ClientGone`: nobody is left to answer.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    MutableMapping,
    Sequence,
)
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import parse_qs

import attrs
import orjson
import trio

from .._gateway import MAX_SAFE_INTEGER, UpstreamTiming, checked_int, open_body_nursery
from ..codecs.content_encoding import ContentDecoder, parse_content_encoding
from ..codecs.multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart
from ..config import forward_refusal
from ..errors import (
    InvalidRequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServiceUnavailableError,
    SluicegateError,
    UnsupportedMediaTypeError,
)

__all__ = [
    "FORBIDDEN_HEADERS",
    "BodyLimits",
    "ClientGone",
    "Exchange",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "client_headers",
    "file_data",
    "form_events",
    "form_fields",
    "json_body",
    "model_hint",
    "query_flag",
    "query_int",
    "query_str",
    "refuse_encoded_upload",
    "refuse_upstream_headers",
    "request_id_of",
    "spend_of",
    "too_slow",
    "until_disconnect",
    "watch_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Headers that would choose the upstream, as ``api_base`` and the like would in a body.
FORBIDDEN_HEADERS = frozenset(
    {b"api-base", b"x-api-base", b"base-url", b"x-base-url", b"x-upstream-url", b"api-version"}
)
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_JSON = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client hung up before its answer: there is nobody to send it to."""


@attrs.define(eq=False)
class Exchange:
    """One HTTP request while the proxy answers it."""

    scope: Scope
    receive: Receive
    send: Send
    request_id: bytes
    started: float
    route: str = "other"
    status: int = 0
    timing: UpstreamTiming = attrs.Factory(UpstreamTiming)
    headers_sent: bool = False
    #: The client's fault found while its body streamed upstream (it stalled): what the
    #: client is told, not the upstream error its broken body caused.
    body_error: SluicegateError | None = None
    #: SSE frames being written; a write that a cancellation cut sent nothing (hypercorn's
    #: send raises before it writes, or writes shielded), so these go first when a
    #: stream is ended at a shutdown.
    unsent: bytes = b""

    def header(self, name: bytes) -> str | None:
        for key, value in self.scope.get("headers", ()):
            if key == name:
                text: str = value.decode("latin-1")
                return text
        return None

    def query(self) -> dict[str, list[str]]:
        raw: bytes = self.scope.get("query_string", b"")
        return parse_qs(raw.decode("latin-1"), keep_blank_values=True)

    def overhead_ms(self) -> bytes:
        total = trio.current_time() - self.started
        return f"{max(0.0, total - self.timing.elapsed) * 1000:.3f}".encode()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers_sent = True
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *headers,
                    (b"x-request-id", self.request_id),
                    (b"x-sluicegate-overhead-ms", self.overhead_ms()),
                ],
            }
        )

    async def json(
        self, status: int, body: Any, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        payload = orjson.dumps(body)
        await self.start(
            status, [*_JSON, (b"content-length", str(len(payload)).encode()), *headers]
        )
        await self.send({"type": "http.response.body", "body": payload})

    async def error(self, exc: SluicegateError) -> None:
        headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await self.json(exc.status_code, exc.to_dict(), headers)


def request_id_of(scope: Scope) -> bytes:
    """The request's ``x-request-id``: the client's, if it sent a sane one; else a new one."""
    given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
    if given and _REQUEST_ID.fullmatch(given):
        request_id: bytes = given
        return request_id
    return f"req_{secrets.token_hex(16)}".encode()


@attrs.frozen
class BodyLimits:
    """What a request body may cost: bytes, seconds to arrive, and readers at once."""

    size: int
    seconds: float
    readers: trio.CapacityLimiter


async def json_body(ex: Exchange, limits: BodyLimits) -> dict[str, Any]:
    """The request's JSON object, read to its end and decoded from its ``Content-Encoding``
    as it arrives: the body on the wire and the decoded one are each held to ``limits.size``,
    the whole body must arrive within ``limits.seconds`` (a 408: a client that trickles its
    body holds nothing longer), and at most ``limits.readers`` bodies are read at once (a
    503 beyond)."""
    limit = limits.size
    codings = parse_content_encoding(ex.header(b"content-encoding"))
    decoder = ContentDecoder(codings, limit=limit) if codings else None
    declared = ex.header(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    try:
        limits.readers.acquire_nowait()
    except trio.WouldBlock:
        raise ServiceUnavailableError(
            "Too many requests are sending their bodies at once; try again shortly.",
            code="too_many_body_reads",
            headers={"Retry-After": "1"},
        ) from None
    try:
        with trio.move_on_after(limits.seconds) as deadline:
            while True:
                message = await ex.receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                parts.append(chunk if decoder is None else decoder.feed(chunk))
                if not message.get("more_body"):
                    break
    finally:
        limits.readers.release()
    if deadline.cancelled_caught:
        raise too_slow(limits.seconds)
    if decoder is not None:
        parts.append(decoder.close())
    try:
        body = orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_type")
    return body


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"The request body is larger than {limit} bytes (general_settings.max_request_body_bytes)."
    )


def too_slow(seconds: float) -> RequestTimeoutError:
    return RequestTimeoutError(
        f"The request body did not arrive within {seconds:g} s "
        "(general_settings.request_body_timeout)."
    )


def refuse_encoded_upload(ex: Exchange) -> None:
    codings = parse_content_encoding(ex.header(b"content-encoding"))
    if codings:
        raise UnsupportedMediaTypeError(
            f"File uploads cannot be sent with Content-Encoding {', '.join(codings)}: send the "
            "form uncompressed.",
            param="content-encoding",
            code="unsupported_content_encoding",
        )


async def form_events(
    ex: Exchange, parser: MultipartParser, pause: float
) -> AsyncGenerator[PartStart | PartData | PartEnd, None]:
    """The multipart events of the request body, read as the client sends it; a pause longer
    than ``pause`` seconds between two pieces is a 408 (an upload may take long, but not
    stall)."""
    while True:
        message: Message | None = None
        with trio.move_on_after(pause):
            message = await ex.receive()
        if message is None:
            ex.body_error = too_slow(pause)
            raise ex.body_error
        if message["type"] == "http.disconnect":
            raise ClientGone
        try:
            for event in parser.feed(message.get("body", b"")):
                yield event
            if not message.get("more_body"):
                for event in parser.close():
                    yield event
                return
        except MultipartError as exc:
            raise InvalidRequestError(f"Malformed multipart body: {exc}", param="file") from None


#: The largest non-file field of an upload form.
_MAX_FORM_FIELD = 64 * 1024


async def form_fields(
    events: AsyncIterator[PartStart | PartData | PartEnd],
) -> tuple[dict[str, str], PartStart]:
    """An upload form's fields, read up to its file part, and the start of that part (its
    data is what ``events`` yields next).

    Raises:
        InvalidRequestError: a field longer than 64 KiB, or no file part.
    """
    fields: dict[str, str] = {}
    name: str | None = None
    value: list[bytes] = []
    size = 0
    async for event in events:
        if isinstance(event, PartStart):
            if event.filename is not None or event.name == "file":
                return fields, event
            name, value, size = event.name, [], 0
        elif isinstance(event, PartData):
            size += len(event.data)
            if size > _MAX_FORM_FIELD:
                raise InvalidRequestError(
                    f"The form field '{name}' is longer than {_MAX_FORM_FIELD} bytes.",
                    param=name,
                )
            value.append(event.data)
        elif name is not None:
            fields[name] = b"".join(value).decode("utf-8", "replace")
            name = None
    raise InvalidRequestError(
        "Missing required parameter: 'file'.",
        param="file",
        code="missing_required_parameter",
    )


async def file_data(
    events: AsyncIterator[PartStart | PartData | PartEnd],
) -> AsyncGenerator[bytes, None]:
    """The file part's bytes, then the rest of the form read (and ignored) to its end."""
    async for event in events:
        if isinstance(event, PartData):
            yield event.data
        elif isinstance(event, PartEnd):
            break
    async for _ in events:
        pass


def refuse_upstream_headers(ex: Exchange) -> None:
    for key, _ in ex.scope.get("headers", ()):
        if key in FORBIDDEN_HEADERS:
            name = key.decode("latin-1")
            raise InvalidRequestError(
                f"The header '{name}' cannot be set by a client: the gateway chooses the upstream.",
                param=name,
                code="forbidden_parameter",
            )


#: Our spend metadata header, then LiteLLM's name for it (so its users' clients work
#: unchanged): when a client sends both, ours wins. The same goes for the model headers.
_SPEND_HEADERS = (b"x-sluicegate-spend-logs-metadata", b"x-litellm-spend-logs-metadata")


def spend_of(ex: Exchange) -> dict[str, Any] | None:
    """The ``x-sluicegate-spend-logs-metadata`` header (else LiteLLM's
    ``x-litellm-spend-logs-metadata``) as an object; None when neither is sent."""
    for name in _SPEND_HEADERS:
        header = ex.header(name)
        if header is not None:
            return _spend_header(header, name.decode())
    return None


def _spend_header(value: str, name: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"The header '{name}' must be a JSON object.", param=name
        ) from exc
    if not isinstance(parsed, dict):
        raise InvalidRequestError(f"The header '{name}' must be a JSON object.", param=name)
    return parsed


def model_hint(ex: Exchange) -> str | None:
    """The model group named outside the body: ``?model=``, else the ``x-sluicegate-model``
    header, else LiteLLM's ``x-litellm-model``."""
    return (
        query_str(ex.query(), "model")
        or ex.header(b"x-sluicegate-model")
        or ex.header(b"x-litellm-model")
    )


def client_headers(ex: Exchange, names: tuple[str, ...]) -> dict[str, str]:
    """The request's headers that ``forward_client_headers`` lets through to a native upstream
    (repeated ones joined with ``", "``, RFC 9110 §5.3)."""
    allowed = _forwardable(names)
    forwarded: dict[str, str] = {}
    for key, value in ex.scope.get("headers", ()):
        if key not in allowed:
            continue
        name: str = key.decode("latin-1")
        if not value.isascii():
            raise InvalidRequestError(
                f"The header '{name}' must be ASCII to be forwarded upstream.", param=name
            )
        text: str = value.decode("ascii")
        forwarded[name] = f"{forwarded[name]}, {text}" if name in forwarded else text
    return forwarded


@lru_cache(maxsize=8)
def _forwardable(names: tuple[str, ...]) -> frozenset[bytes]:
    # load_config refuses what may never be forwarded; a GatewayConfig built in code skips
    # it, so the refusal is applied here again.
    lowered = (n.lower() for n in names)
    return frozenset(n.encode("latin-1") for n in lowered if forward_refusal(n) is None)


def query_flag(query: Mapping[str, list[str]], name: str) -> bool:
    value = (query.get(name) or ["false"])[-1].lower()
    return value in ("true", "1")


def query_str(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


_Default = TypeVar("_Default", int, None)
T = TypeVar("T")
#: A query integer: decimal digits, perhaps negative (``int()`` would also take ``+1``,
#: `` 1 ``, ``1_000`` and other scripts' digits).
_INTEGER = re.compile(r"-?[0-9]+")


def query_int(
    query: Mapping[str, list[str]],
    name: str,
    default: _Default,
    *,
    low: int = 0,
    high: int = MAX_SAFE_INTEGER,
) -> int | _Default:
    """The query parameter ``name`` by the library's rule for integers (``checked_int``: from
    ``low`` to ``high``), or ``default`` when it is absent.

    Raises:
        InvalidRequestError: naming ``name``: not an integer, or out of range.
    """
    text = query_str(query, name)
    if text is None:
        return default
    if _INTEGER.fullmatch(text) is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidRequestError(
            f"Invalid '{name}': expected an integer, but got {shown!r} instead.",
            param=name,
            code="invalid_type",
        )
    try:
        value = int(text)
    except ValueError:
        # More digits than int() converts (4300): out of range like any number that long.
        digits = len(text.removeprefix("-"))
        value = -(10**digits) if text.startswith("-") else 10**digits
    return checked_int(name, value, low=low, high=high)


async def watch_disconnect(ex: Exchange, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client hangs up (hypercorn says so by ``http.disconnect``)."""
    while True:
        message = await ex.receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def until_disconnect(ex: Exchange, work: Awaitable[T], *, cancel: bool = True) -> T:
    """Await ``work``; a client that hangs up first cancels it (unless ``cancel`` is False: a
    background creation returns at once anyway)."""
    result: T | None = None
    with trio.CancelScope() as scope:
        async with open_body_nursery() as nursery:
            if cancel:
                nursery.start_soon(watch_disconnect, ex, scope)
            result = await work
    if result is None:
        raise ClientGone
    return result
