"""The connector: the only actor that does provider I/O.

It sends each routed attempt with the gateway's one pooled ``httpx.AsyncClient`` and relays the
body as it arrives. Retries happen here and only here, and only while the connector has emitted
nothing for the request (so nothing can have reached the caller): connect errors, resets before
the response, 408, 409, 429 and 5xx, with exponential backoff and jitter, honouring
``Retry-After`` up to ``max_retry_after`` (a longer wait is the caller's decision: the error is
passed on). Deadlines are cancel scopes at the call site: first byte (response headers), idle gap
between chunks, total. The connect deadline is the transport's (httpx raises ConnectTimeout).

httpx exceptions are translated into ours here, at this one boundary.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator

import attrs
import httpx
import tenacity
import trio

from ..codecs.openai_responses import (
    UpstreamRequest,
    build_create_request,
    parse_error_response,
)
from ..config import RouterSettings, Timeouts
from ..errors import (
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from ..runtime._messages import Failure, RawItem, Routed, UpstreamOpened

__all__ = ["Connector", "ConnectorStatistics", "run_connector"]

#: The largest error body we read from an upstream (error bodies are small; a huge one is junk).
_MAX_ERROR_BODY = 1 << 20


@attrs.frozen(kw_only=True)
class ConnectorStatistics:
    requests_in_flight: int
    attempts: int
    retries: int
    upstream_errors: int
    chunks_read: int


@attrs.define(eq=False)
class Connector:
    """Shared by every request of a gateway: the client, the retry policy, the counters."""

    _client: httpx.AsyncClient
    _settings: RouterSettings
    _random: random.Random = attrs.Factory(random.Random)
    _in_flight: int = 0
    _attempts: int = 0
    _retries: int = 0
    _errors: int = 0
    _chunks: int = 0

    def statistics(self) -> ConnectorStatistics:
        return ConnectorStatistics(
            requests_in_flight=self._in_flight,
            attempts=self._attempts,
            retries=self._retries,
            upstream_errors=self._errors,
            chunks_read=self._chunks,
        )

    async def relay(self, routed: Routed, *, outbox: trio.MemorySendChannel[RawItem]) -> None:
        """Build the provider request for this attempt, send it (retrying as allowed) and relay
        the answer into ``outbox``."""
        call, deployment = routed.call, routed.deployment
        request = build_create_request(
            deployment,
            call.body,
            stream=call.stream,
            previous_raw_id=call.previous.raw_id if call.previous else None,
            extra_body=call.extra_body,
            extra_headers=call.extra_headers,
            extra_query=call.extra_query,
        )
        timeouts = deployment.stream_timeouts if call.stream else deployment.timeouts
        if call.timeout is not None:
            timeouts = attrs.evolve(timeouts, total=call.timeout)
        self._in_flight += 1
        try:
            with _deadline(timeouts.total) as total:
                response, body = await self.open(
                    request, timeouts, deployment.max_retries, read_body=not call.stream
                )
                await self._forward(routed, response, body, timeouts.idle, outbox)
            if total.cancelled_caught:
                raise UpstreamTimeoutError(
                    f"the request took longer than its total timeout of {timeouts.total} s"
                )
        except UpstreamError:
            self._errors += 1
            raise
        finally:
            self._in_flight -= 1

    async def _forward(
        self,
        routed: Routed,
        response: httpx.Response,
        body: bytes | None,
        idle: float | None,
        outbox: trio.MemorySendChannel[RawItem],
    ) -> None:
        # Not streamed: the body was read whole and the connection is released already.
        chunks = None if body is not None else response.aiter_bytes()
        try:
            if chunks is not None:
                body = await self._read(chunks, idle) or b""
            assert body is not None
            await outbox.send(
                UpstreamOpened(
                    routed=routed,
                    status=response.status_code,
                    headers=response.headers,  # a Mapping; copying it costs O(n²) in httpx
                    body=body,
                )
            )
            while chunks is not None and (chunk := await self._read(chunks, idle)) is not None:
                await outbox.send(chunk)
        finally:
            if chunks is not None:
                # Shielded: a caller that left must still release the connection (closing it,
                # so the provider stops generating) and the body iterator.
                with trio.CancelScope(shield=True):
                    await chunks.aclose()  # type: ignore[attr-defined]
                    await response.aclose()

    async def _read(self, chunks: AsyncIterator[bytes], idle: float | None) -> bytes | None:
        """The next chunk; None at the end. The idle deadline covers the read only: a slow
        caller is backpressure, not silence."""
        with _deadline(idle) as gap:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return None
            except httpx.HTTPError as exc:
                raise _translate(exc, before_response=False) from exc
            self._chunks += 1
            return chunk
        assert gap.cancelled_caught
        raise UpstreamTimeoutError(f"the upstream sent nothing for {idle} s")

    async def open(
        self,
        request: UpstreamRequest,
        timeouts: Timeouts,
        max_retries: int,
        *,
        read_body: bool,
    ) -> tuple[httpx.Response, bytes | None]:
        """Send with retries until a 2xx arrives; with ``read_body``, the whole body too."""
        # The first attempt runs bare: building tenacity's machinery costs more than the
        # attempt's own bookkeeping, and almost every request succeeds the first time.
        try:
            return await self._attempt(request, timeouts, read_body=read_body)
        except UpstreamError as exc:
            if max_retries < 1 or not self._should_retry(exc):
                raise
            first_failure = exc
        self._retries += 1
        await trio.sleep(self._delay(1, first_failure))
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(max_retries),
            wait=self._wait,
            retry=tenacity.retry_if_exception(self._should_retry),
            before_sleep=self._count_retry,
            sleep=trio.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(request, timeouts, read_body=read_body)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def _attempt(
        self, request: UpstreamRequest, timeouts: Timeouts, *, read_body: bool
    ) -> tuple[httpx.Response, bytes | None]:
        self._attempts += 1
        http_request = self._client.build_request(
            request.method,
            request.url,
            headers=request.headers,
            params=request.params or None,
            content=request.content,
            extensions={"timeout": _httpx_timeout(timeouts)},
        )
        with _deadline(timeouts.first_byte) as first_byte:
            try:
                response = await self._client.send(http_request, stream=True)
            except httpx.HTTPError as exc:
                raise _translate(exc, before_response=True) from exc
        if first_byte.cancelled_caught:
            raise UpstreamTimeoutError(
                f"the upstream sent no response within {timeouts.first_byte} s"
            )
        try:
            if response.status_code >= 400:
                body = await _read_capped(response, _MAX_ERROR_BODY)
                raise parse_error_response(
                    response.status_code, response.headers, body, now=time.time()
                )
            if not read_body:
                return response, None
            try:
                body = await response.aread()
            except httpx.HTTPError as exc:
                # Nothing was emitted yet, so this is still a whole-attempt failure.
                raise _translate(exc, before_response=True) from exc
            return response, body
        except BaseException:
            with trio.CancelScope(shield=True):
                await response.aclose()
            raise

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, UpstreamError) or not exc.retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= self._settings.max_retry_after

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        # Tenacity counts from the second attempt (the first ran bare in open()).
        return self._delay(state.attempt_number + 1, exc)

    def _delay(self, failed_attempts: int, exc: BaseException | None) -> float:
        """Seconds to wait after ``failed_attempts`` attempts, the last failing with ``exc``."""
        if isinstance(exc, UpstreamError) and exc.retry_after is not None:
            return float(exc.retry_after)  # the upstream said when; _should_retry capped it
        s = self._settings
        exponential: float = s.retry_backoff_initial * 2 ** (failed_attempts - 1)
        backoff = min(s.retry_backoff_max, exponential)
        return backoff + self._random.uniform(0.0, s.retry_backoff_jitter)

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        self._retries += 1


async def run_connector(
    connector: Connector,
    *,
    inbox: trio.MemoryReceiveChannel[Routed],
    outbox: trio.MemorySendChannel[RawItem],
) -> None:
    with inbox, outbox:
        async for routed in inbox:
            timing = routed.call.timing
            if timing is not None and timing.started is None:
                timing.started = trio.current_time()
            try:
                await connector.relay(routed, outbox=outbox)
            except UpstreamError as exc:
                await outbox.send(Failure(exc))
                return
            except trio.BrokenResourceError:
                return  # downstream failed and stopped listening; its Failure is on its way
            finally:
                if timing is not None:
                    timing.ended = trio.current_time()


def _deadline(seconds: float | None) -> trio.CancelScope:
    """``trio.move_on_after`` that takes None for "no deadline"."""
    return trio.CancelScope(deadline=math.inf if seconds is None else trio.current_time() + seconds)


def _httpx_timeout(timeouts: Timeouts) -> dict[str, float | None]:
    # Only connect is the transport's; the other deadlines are cancel scopes (module docstring).
    return {"connect": timeouts.connect, "read": None, "write": None, "pool": None}


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except httpx.HTTPError:
        pass  # the status is what matters; a broken error body still yields an error
    return b"".join(parts)[:limit]


def _translate(exc: httpx.HTTPError, *, before_response: bool) -> UpstreamError:
    """The one place httpx exceptions become ours."""
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeoutError("connecting to the upstream timed out", retryable=True)
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectionError(f"could not connect to the upstream ({name})")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(f"the upstream timed out ({name})")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return UpstreamConnectionError(f"bad upstream URL ({name})", retryable=False)
    if isinstance(exc, httpx.DecodingError):
        return UpstreamProtocolError(f"the upstream sent an undecodable body ({name})")
    if isinstance(exc, httpx.TransportError):
        if before_response:
            return UpstreamConnectionError(
                f"the upstream closed the connection before answering ({name})"
            )
        return UpstreamConnectionError(
            f"the connection to the upstream broke mid-stream ({name})", retryable=False
        )
    return UpstreamProtocolError(f"unexpected upstream failure ({name})")
