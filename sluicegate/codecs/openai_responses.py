"""Codec for upstreams that speak the Responses API natively: OpenAI, Azure OpenAI, the fake.

Near passthrough (docs/design.md §3): the request body goes upstream as the caller gave it, with the
deployment's model name, the raw ``previous_response_id`` and ``extra_body`` merged last; the
upstream's events come back as canonical events with every unknown type and field intact.

- :func:`build_create_request` and friends build an :class:`UpstreamRequest` (no I/O).
- :class:`ResponsesStreamDecoder` turns SSE bytes, split anywhere, into events.
- :class:`ResponsesBodyDecoder` turns a non-streaming body into the same events the stream would
  have ended with (``response.created``, one ``output_item.done`` per item, the terminal event),
  so one pipeline serves both.
- :func:`parse_error_response` turns an upstream error status and body into our error.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterable, Mapping
from typing import Any, Protocol

import attrs
import orjson

from .._types import (
    TERMINAL_TYPES,
    ErrorEvent,
    OutputItemEvent,
    ResponseEvent,
    StreamEvent,
    event_from_wire,
)
from ..errors import UpstreamProtocolError, UpstreamStatusError
from ._endpoint import Endpoint, request_body
from .sse import ServerSentEvent, SSEDecoder

__all__ = [
    "Decoder",
    "ResponsesBodyDecoder",
    "ResponsesStreamDecoder",
    "UpstreamRequest",
    "api_url",
    "build_api_request",
    "build_create_request",
    "build_resource_request",
    "parse_error_response",
    "parse_retry_after",
]

#: Azure api-version values that mean "the v1 route", which takes no api-version query.
_AZURE_V1_VERSIONS = frozenset({"v1", "preview", "latest"})


@attrs.frozen(kw_only=True)
class UpstreamRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    params: Mapping[str, str | list[str]] = attrs.Factory(dict)
    #: The body; an async iterable is streamed (chunked) and cannot be sent twice.
    content: bytes | AsyncIterable[bytes] | None = None


class Decoder(Protocol):
    def feed(self, data: bytes) -> list[StreamEvent]: ...
    def close(self) -> list[StreamEvent]: ...


def _responses_url(deployment: Endpoint) -> tuple[str, dict[str, str]]:
    return api_url(deployment, "responses")


def api_url(deployment: Endpoint, resource: str) -> tuple[str, dict[str, str]]:
    """The URL of a collection (``responses``, ``files``, ``batches``) of a deployment, and the
    query it needs (Azure's ``api-version`` on its older route)."""
    base = deployment.api_base or ""
    if deployment.provider != "azure":
        return f"{base}/{resource}", {}
    version = deployment.api_version
    if base.endswith("/openai/v1"):
        return f"{base}/{resource}", {}
    if version and version not in _AZURE_V1_VERSIONS:
        # The older preview route: /openai/responses?api-version=... (the Responses API reference).
        return f"{base}/openai/{resource}", {"api-version": version}
    return f"{base}/openai/v1/{resource}", {}


def _auth_headers(deployment: Endpoint) -> dict[str, str]:
    if deployment.api_key is None:
        return {}
    if deployment.provider == "azure":
        return {"api-key": deployment.api_key.reveal()}
    return {"authorization": f"Bearer {deployment.api_key.reveal()}"}


def build_create_request(
    deployment: Endpoint,
    body: Mapping[str, Any],
    *,
    stream: bool,
    previous_raw_id: str | None = None,
    extra_body: Mapping[str, Any] | None = None,
    extra_headers: Mapping[str, str] | None = None,
    extra_query: Mapping[str, str] | None = None,
) -> UpstreamRequest:
    """``POST …/responses`` for this deployment."""
    payload = dict(body)
    payload["model"] = deployment.model
    if previous_raw_id is not None:
        payload["previous_response_id"] = previous_raw_id
    if stream:
        payload["stream"] = True
    else:
        payload.pop("stream", None)
        payload.pop("stream_options", None)
    if extra_body:
        payload.update(extra_body)  # after our own mapping: its keys win
    url, params = _responses_url(deployment)
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        **_auth_headers(deployment),
        **deployment.extra_headers,
        **(extra_headers or {}),
    }
    if extra_query:
        params = {**params, **extra_query}
    return UpstreamRequest(
        method="POST", url=url, headers=headers, params=params, content=request_body(payload)
    )


def build_resource_request(
    deployment: Endpoint,
    method: str,
    raw_id: str,
    *,
    action: str = "",
    params: Mapping[str, str | list[str]] | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> UpstreamRequest:
    """``GET|DELETE …/responses/{id}`` or ``POST …/responses/{id}/cancel``."""
    path = f"responses/{raw_id}" + (f"/{action}" if action else "")
    return build_api_request(deployment, method, path, params=params, extra_headers=extra_headers)


def build_api_request(
    deployment: Endpoint,
    method: str,
    path: str,
    *,
    params: Mapping[str, str | list[str]] | None = None,
    content: bytes | AsyncIterable[bytes] | None = None,
    content_type: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> UpstreamRequest:
    """A request to ``path`` of the deployment's API (``responses/{id}``, ``files``,
    ``batches/{id}/cancel``, ...), with its credentials and its route's query."""
    collection, _, rest = path.partition("/")
    url, base_params = api_url(deployment, collection)
    if rest:
        url = f"{url}/{rest}"
    headers = {"accept": "application/json", **_auth_headers(deployment)}
    if content_type is not None:
        headers["content-type"] = content_type
    headers.update(deployment.extra_headers)
    headers.update(extra_headers or {})
    return UpstreamRequest(
        method=method,
        url=url,
        headers=headers,
        params={**base_params, **(params or {})},
        content=content,
    )


def _loads(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        shown = data[:200].decode("utf-8", "replace")
        raise UpstreamProtocolError(f"upstream sent malformed {what}: {exc} in {shown!r}") from exc


def _error_from_event(event: ErrorEvent) -> UpstreamStatusError:
    code = event.code
    return UpstreamStatusError(
        event.message or "upstream reported an error",
        status_code=429 if code in ("rate_limit_exceeded", "insufficient_quota") else 500,
        code=code,
        param=event.param,
    )


@attrs.define(eq=False)
class ResponsesStreamDecoder:
    """Responses SSE bytes → canonical events (passthrough of every type and field).

    Each event keeps its ``data:`` payload as received in ``raw`` (see ``StreamEvent``)."""

    _sse: SSEDecoder = attrs.Factory(SSEDecoder)
    _started: bool = False
    _terminal: bool = False
    _error: ErrorEvent | None = None
    #: A bad frame that followed good ones in the same read: raised on the next call, so the
    #: good events before it are returned (and delivered) first.
    _broken: UpstreamProtocolError | None = None

    def feed(self, data: bytes) -> list[StreamEvent]:
        self._raise_if_broken()
        return self._convert(self._sse.feed(data))

    def close(self) -> list[StreamEvent]:
        self._raise_if_broken()
        events = self._convert(self._sse.close())
        self._raise_if_broken()
        if not self._terminal:
            if self._error is not None:
                raise _error_from_event(self._error)
            raise UpstreamProtocolError("upstream closed the stream before a terminal event")
        return events

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    def _convert(self, frames: list[ServerSentEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for frame in frames:
            data = frame.data
            if data == b"[DONE]":  # Chat-style terminator some compatible servers add
                continue
            try:
                # ``raw``: the payload as it came, which the proxy sends on when nothing in the
                # gateway changes the event (docs/design.md §6.5). Multi-line data is the lines
                # joined with LF, the same JSON text, and the SSE encoder splits it again.
                event = event_from_wire(_loads(data, "SSE data"), raw=data)
            except UpstreamProtocolError as exc:
                if not out:
                    raise
                self._broken = exc
                return out
            if isinstance(event, ErrorEvent):
                if not self._started:
                    # Nothing can have reached the caller: it gets the error itself.
                    raise _error_from_event(event)
                self._error = event
            elif event.type in TERMINAL_TYPES:
                self._terminal = True
            self._started = True
            out.append(event)
        return out


@attrs.define(eq=False)
class ResponsesBodyDecoder:
    """A non-streaming Response body → the events a stream of it would have ended with."""

    _chunks: list[bytes] = attrs.Factory(list)

    def feed(self, data: bytes) -> list[StreamEvent]:
        self._chunks.append(data)
        return []

    def close(self) -> list[StreamEvent]:
        return body_events(_loads(b"".join(self._chunks), "JSON body"))


def _lifecycle(etype: str, seq: int, response: dict[str, Any]) -> ResponseEvent:
    return ResponseEvent(
        type=etype,
        sequence_number=seq,
        data={"type": etype, "sequence_number": seq, "response": response},
    )


#: Response status -> the event that announces it (queued/in_progress: not finished yet).
_EVENT_OF_STATUS = {
    "queued": "response.created",
    "in_progress": "response.created",
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}


def body_events(body: Any) -> list[StreamEvent]:
    """Events for a whole Response object: created, each item done, the terminal event.

    Works on the wire dict: nobody has asked for a typed Response yet (most never do)."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise UpstreamProtocolError("upstream sent a response that is not a Response object")
    status = body.get("status")
    event_type = _EVENT_OF_STATUS.get(status) if isinstance(status, str) else None
    if event_type is None:
        raise UpstreamProtocolError(f"upstream answered a create with status {status!r}")
    if event_type == "response.created":
        return [_lifecycle(event_type, 0, body)]  # background: not finished yet
    started = {**body, "status": "in_progress", "output": [], "usage": None}
    events: list[StreamEvent] = [_lifecycle("response.created", 0, started)]
    output = body.get("output")
    for index, item in enumerate(output if isinstance(output, list) else ()):
        events.append(
            OutputItemEvent(
                type="response.output_item.done",
                sequence_number=index + 1,
                data={
                    "type": "response.output_item.done",
                    "sequence_number": index + 1,
                    "output_index": index,
                    "item": item,
                },
            )
        )
    events.append(_lifecycle(event_type, len(events), body))
    return events


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def parse_error_response(
    status: int, headers: Mapping[str, str], body: bytes, *, now: float
) -> UpstreamStatusError:
    """The provider's error, passed on with its message, status, type and code."""
    message = type_ = code = param = None
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        type_ = error.get("type")
        code = error.get("code")
        param = error.get("param")
    elif isinstance(error, str):
        message = error
    if not isinstance(message, str) or not message:
        text = body[:500].decode("utf-8", "replace").strip()
        message = f"upstream answered HTTP {status}" + (f": {text}" if text else "")
    retry_after = parse_retry_after(headers, now=now)
    passed_headers = {}
    if retry_after is not None and (status == 429 or status >= 500):
        passed_headers["retry-after"] = str(max(1, round(retry_after)))
    return UpstreamStatusError(
        message,
        status_code=status,
        type=type_ if isinstance(type_, str) else None,
        code=None if code is None else str(code),
        param=param if isinstance(param, str) else None,
        retry_after=retry_after,
        headers=passed_headers,
    )
