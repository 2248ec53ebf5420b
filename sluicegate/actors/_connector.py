"""The connector: the only actor that does provider I/O.

It sends each routed attempt through the gateway's one pooled httpx transport and relays the
body as it arrives. Retries happen only while the connector has emitted nothing for the request
(so nothing can have reached the caller), and the router decides them: after a failed attempt
the connector asks the request's route plan for the next (another deployment, the same one
after a back-off or its ``Retry-After``, a fallback group) and sends it (``_plan.py``). It
reports every attempt's outcome to the deployment's health (load, latency, circuit breaker).
Lookups of stored responses (GET, DELETE, cancel upstream) have one deployment only and retry
it with tenacity, under the router's policy (``may_retry`` and ``backoff``; why the main path
does without tenacity: ``_plan.py``). Deadlines are cancel scopes at the call site: first
byte (response headers), idle gap between chunks, total per attempt, and the caller's
``timeout`` over all attempts.
The connect deadline is the transport's (httpx raises ConnectTimeout).

httpx exceptions are translated into ours here, at this one boundary.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import attrs
import httpx
import orjson
import tenacity
import trio

from ..codecs._bridge import BridgeCodec, BridgeInput, BuiltRequest, conversation_items
from ..codecs._registry import bridge_codec, is_bridged
from ..codecs.openai_responses import (
    Decoder,
    ResponsesBodyDecoder,
    ResponsesStreamDecoder,
    UpstreamRequest,
    build_create_request,
    parse_error_response,
)
from ..codecs.resume import ResumeCursor
from ..config import Deployment, RouterSettings, Timeouts
from ..errors import (
    InvalidRequestError,
    SluicegateError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ..net._media import MediaFetcher
from ..runtime._messages import (
    Failure,
    PreparedCall,
    RawItem,
    RawOutbox,
    Routed,
    UpstreamOpened,
)
from ._resume import relay_background, resume_request
from ._router import backoff, may_retry
from ._ws_attempt import relay_over_websocket, websocket_target

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Connector", "ConnectorStatistics", "relay_into", "run_connector"]

#: Parsed upstream URLs kept (``Connector._url``): far more than deployments times resources.
_URL_CACHE_SIZE = 1024

#: The largest error body we read from an upstream (error bodies are small; a huge one is junk).
_MAX_ERROR_BODY = 1 << 20

#: Turns an upstream's error status, headers and body into our error (one per wire format).
ErrorParser = Callable[..., UpstreamStatusError]


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

    #: The gateway's one pooled transport (sluicegate's lean HTTP/1.1 one, httpx's, or a
    #: test's MockTransport), behind httpx's transport interface (docs/design.md §8).
    _transport: httpx.AsyncBaseTransport
    _settings: RouterSettings
    _random: random.Random = attrs.Factory(random.Random)
    #: Fetches remote images and files for providers that take no URLs (None: refused).
    _media: MediaFetcher | None = None
    _wall_clock: Callable[[], float] = time.time
    _in_flight: int = 0
    _attempts: int = 0
    _retries: int = 0
    _errors: int = 0
    _chunks: int = 0
    #: Parsed upstream URLs, by the codec's URL and query: parsing one is half of building an
    #: ``httpx.Request`` (measured: 78 µs with a string, 39 µs with a parsed URL). Bounded
    #: (``_URL_CACHE_SIZE``): per-object URLs (a stored response's ID) come and go.
    _urls: dict[tuple[str, tuple[tuple[str, Any], ...]], httpx.URL] = attrs.Factory(dict)

    def statistics(self) -> ConnectorStatistics:
        return ConnectorStatistics(
            requests_in_flight=self._in_flight,
            attempts=self._attempts,
            retries=self._retries,
            upstream_errors=self._errors,
            chunks_read=self._chunks,
        )

    async def relay(self, routed: Routed, *, outbox: RawOutbox) -> None:
        """Serve a routed request: send each attempt and relay its answer into ``outbox``.
        An attempt that fails before anything went downstream goes back to the route plan,
        which decides the next attempt (another deployment, the same one after a back-off, a
        fallback group) or gives up with the error the caller gets (``_plan.py``)."""
        # A background response outlives its create call: the caller's timeout bounds that
        # call, and ``background_timeout`` the response (docs/background.md).
        timeout = None if routed.call.background else routed.call.timeout
        with _deadline(timeout) as overall:
            while True:
                attempt = _Attempt()
                try:
                    await self._relay_attempt(routed, attempt, outbox)
                    return
                except SluicegateError as exc:
                    if attempt.opened or routed.plan is None:
                        raise
                    routed = await routed.plan.next(exc)
                    self._retries += 1
        assert overall.cancelled_caught
        raise UpstreamTimeoutError(f"the request took longer than its total timeout of {timeout} s")

    async def _relay_attempt(self, routed: Routed, attempt: _Attempt, outbox: RawOutbox) -> None:
        call, deployment, plan = routed.call, routed.deployment, routed.plan
        codec = bridge_codec(deployment.provider)
        decoder: Decoder
        parse_error: ErrorParser
        # A background response at a native upstream runs there as one (docs/background.md):
        # its resumable stream is followed through reconnects (``_resume.py``).
        cursor: ResumeCursor | None = None
        if codec is None:
            if call.background:
                resume = call.resume
                cursor = ResumeCursor(
                    last=-1 if resume is None else resume.after,
                    raw_id=None if resume is None else resume.upstream_id,
                )
            if call.resume is not None and cursor is not None:
                request = resume_request(deployment, cursor)  # taken over after a restart
            else:
                request = self.native_request(call, deployment)
            decoder = ResponsesStreamDecoder() if call.stream else ResponsesBodyDecoder()
            parse_error = parse_error_response
        else:
            built = await self.bridged_request(codec, call, deployment)
            request = built.request
            if call.stream:
                decoder = codec.stream_decoder(built.context)
            else:
                decoder = codec.body_decoder(built.context)
            parse_error = codec.parse_error
        timeouts = deployment.stream_timeouts if call.stream else deployment.timeouts
        if call.background:
            # Not the total timeout: a background response has its own bound.
            timeouts = attrs.evolve(timeouts, total=deployment.background_timeout)
        # With a route plan, retries are the router's (another deployment may serve them).
        max_retries = 0 if plan is not None else deployment.max_retries
        health = plan.health(deployment) if plan is not None else None
        now = trio.current_time
        started = now()
        if health is not None:
            health.started(started)
        self._in_flight += 1
        try:
            with _deadline(timeouts.total) as total:
                sockets = websocket_target(call, deployment) if codec is None else None
                if sockets is not None:
                    # A WebSocket-mode client's call, at a deployment that offers it: over the
                    # client connection's upstream socket (``_ws_attempt.py``).
                    self._attempts += 1
                    await relay_over_websocket(
                        sockets, routed, request, timeouts, outbox, attempt.open_at
                    )
                else:
                    response, body = await self.open(
                        request,
                        timeouts,
                        max_retries,
                        read_body=not call.stream,
                        parse_error=parse_error,
                    )
                    if cursor is not None:
                        await relay_background(
                            self,
                            routed,
                            response,
                            decoder,
                            timeouts,
                            outbox,
                            attempt,
                            cursor,
                            _body_chunks,
                        )
                    else:
                        await self._forward(
                            routed, response, body, decoder, timeouts.idle, outbox, attempt
                        )
            if total.cancelled_caught:
                if call.background:
                    raise UpstreamTimeoutError(
                        "the background response took longer than its background_timeout of "
                        f"{timeouts.total} s",
                        retryable=False,
                    )
                raise UpstreamTimeoutError(
                    f"the request took longer than its total timeout of {timeouts.total} s"
                )
        except UpstreamError as exc:
            self._errors += 1
            if health is not None:
                health.failed(now(), exc)
            raise
        except BaseException:
            if health is not None:  # cancelled, or a bug: no verdict on the deployment
                health.answered(now(), ttfb=None, total=None)
            raise
        else:
            if health is not None:
                end = now()
                first = attempt.first_byte if attempt.first_byte is not None else end
                health.answered(end, ttfb=first - started, total=end - started)
        finally:
            self._in_flight -= 1

    @staticmethod
    def native_request(call: PreparedCall, deployment: Deployment) -> UpstreamRequest:
        """The create request of ``call`` at a native deployment, as it goes upstream (also
        what a token count, a compaction and a WebSocket ``response.create`` are built from)."""
        body: Mapping[str, Any] = call.body
        previous_raw_id = call.previous.raw_id if call.previous else None
        if (call.previous is not None and is_bridged(call.previous.provider)) or (
            call.previous is None and call.history is not None
        ):
            # A conversation a bridged provider began, or one the gateway holds
            # (``conversation``): its upstream knows nothing of it, so the stored items go as
            # input (without the gateway's item IDs and reasoning envelopes, which only a
            # bridge can read).
            items = conversation_items(call.history or [], call.body.get("input"))
            portable = [p for p in map(_portable, items) if p is not None]
            body = {**call.body, "input": portable}
            previous_raw_id = None
        if call.background:
            # Run by the upstream itself, which keeps it going whatever the connection does.
            body = {**body, "background": True}
        return build_create_request(
            deployment,
            body,
            stream=call.stream,
            previous_raw_id=previous_raw_id,
            extra_body=call.extra_body,
            extra_headers={**call.client_headers, **call.extra_headers},
            extra_query=call.extra_query,
        )

    async def bridged_request(
        self, codec: BridgeCodec, call: PreparedCall, deployment: Deployment
    ) -> BuiltRequest:
        """The create request of ``call`` at a bridged deployment, mapped by ``codec`` (a token
        count is built from it too)."""
        history = call.history or []
        items = conversation_items(history, call.body.get("input"))
        if codec.inline_remote_media and self._media is not None:
            items = await self._media.inline(items, offset=len(history))
        request = BridgeInput(
            body={k: v for k, v in call.body.items() if k != "input"},
            items=items,
            drop_params=deployment.drop_params,
            unknown_params=call.unknown_params,
            extra_body=call.extra_body,
            extra_headers=call.extra_headers,
            extra_query=call.extra_query,
        )
        try:
            built = codec.build_request(
                deployment, request, stream=call.stream, created_at=int(self._wall_clock())
            )
        except InvalidRequestError as exc:
            if history:
                source = "previous_response_id" if call.conversation is None else "conversation"
                raise _renumbered(exc, len(history), source) from None
            raise
        return attrs.evolve(built, context=attrs.evolve(built.context, clock=self._wall_clock))

    async def _forward(
        self,
        routed: Routed,
        response: httpx.Response,
        body: bytes | None,
        decoder: Decoder,
        idle: float | None,
        outbox: RawOutbox,
        attempt: _Attempt,
    ) -> None:
        # Not streamed: the body was read whole and the connection is released already.
        chunks = None if body is not None else _body_chunks(response)
        try:
            # One scope watches the upstream's silence for the whole body; its deadline is
            # armed for each read only (a slow caller is backpressure, not silence). Moving a
            # deadline costs less than a scope per read (docs/design.md §2.6).
            gap = trio.CancelScope() if idle is not None else None
            with gap if gap is not None else _UNBOUNDED:
                if chunks is not None:
                    body = await self._read(chunks, gap, idle) or b""
                assert body is not None
                attempt.first_byte = trio.current_time()
                attempt.opened = True
                timing = routed.call.timing
                if chunks is None and timing is not None:
                    timing.ended = attempt.first_byte  # the whole body is in hand
                opened = UpstreamOpened(
                    routed=routed,
                    status=response.status_code,
                    headers=response.headers,  # a Mapping; copying it costs O(n²) in httpx
                    body=body,
                    decoder=decoder,
                )
                body = None  # not held while the rest of a stream is relayed
                await outbox.send(opened)
                del opened
                while chunks is not None:
                    chunk = await self._read(chunks, gap, idle)
                    if chunk is None:
                        break
                    await outbox.send(chunk)
                if chunks is not None and timing is not None:
                    # Before the last events are handled downstream: the upstream's time ends.
                    timing.ended = trio.current_time()
            if gap is not None and gap.cancelled_caught:
                raise UpstreamTimeoutError(f"the upstream sent nothing for {idle} s")
        finally:
            if chunks is not None:
                # Shielded: a caller that left must still release the connection (closing it,
                # so the provider stops generating) and the body iterator.
                with trio.CancelScope(shield=True):
                    close = getattr(chunks, "aclose", None)
                    if close is not None and chunks is not cast(object, response.stream):
                        await close()  # the generator iterating the transport's stream
                    await response.aclose()

    async def _read(
        self, chunks: AsyncIterator[bytes], gap: trio.CancelScope | None, idle: float | None
    ) -> bytes | None:
        """The next chunk; None at the end. ``gap``'s deadline (``idle``) covers the read
        only; without an idle deadline there is no ``gap``."""
        if gap is not None and idle is not None:
            gap.deadline = trio.current_time() + idle
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return None
        except httpx.HTTPError as exc:
            raise _translate(exc, before_response=False) from exc
        finally:
            if gap is not None:
                gap.deadline = math.inf
        if gap is not None and gap.cancel_called:
            # The deadline passed as the chunk arrived: silent that long all the same, and
            # nothing after this may run under a cancelled scope.
            raise UpstreamTimeoutError(f"the upstream sent nothing for {idle} s")
        self._chunks += 1
        return chunk

    async def open(
        self,
        request: UpstreamRequest,
        timeouts: Timeouts,
        max_retries: int,
        *,
        read_body: bool,
        parse_error: ErrorParser = parse_error_response,
    ) -> tuple[httpx.Response, bytes | None]:
        """Send with retries until a 2xx arrives; with ``read_body``, the whole body too.
        ``parse_error`` reads an error status in the upstream's wire format."""
        attempt = partial(
            self._attempt, request, timeouts, read_body=read_body, parse_error=parse_error
        )
        # The first attempt runs bare: building tenacity's machinery costs more than the
        # attempt's own bookkeeping, and almost every request succeeds the first time.
        try:
            return await attempt()
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
        async for attempt_state in retrying:
            with attempt_state:
                return await attempt()
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def call_json(
        self, request: UpstreamRequest, timeouts: Timeouts, max_retries: int
    ) -> Any:
        """A whole JSON answer of an API call that is no response (a stored response's
        lookup, a file, a batch), within ``timeouts.total`` for all its attempts."""
        with trio.move_on_after(timeouts.total or math.inf) as scope:
            _, body = await self.open(request, timeouts, max_retries, read_body=True)
        if scope.cancelled_caught or body is None:
            raise UpstreamTimeoutError(f"the upstream did not answer within {timeouts.total} s")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"upstream sent a malformed JSON body: {exc}") from exc

    async def _attempt(
        self,
        request: UpstreamRequest,
        timeouts: Timeouts,
        *,
        read_body: bool,
        parse_error: ErrorParser,
    ) -> tuple[httpx.Response, bytes | None]:
        self._attempts += 1
        # Straight to the transport: an httpx.AsyncClient would merge default headers, keep a
        # cookie jar (parsing every response for Set-Cookie: ~10% of the proxy's CPU per
        # request with the rest of its bookkeeping) and handle redirects and auth, none of
        # which a gateway wants: an upstream's cookies must never ride along another caller's
        # request.
        http_request = httpx.Request(
            request.method,
            self._url(request.url, request.params),
            headers=request.headers,
            content=request.content,
            extensions={"timeout": _httpx_timeout(timeouts)},
        )
        with _deadline(timeouts.first_byte) as first_byte:
            try:
                response = await self._transport.handle_async_request(http_request)
            except httpx.HTTPError as exc:
                raise _translate(exc, before_response=True) from exc
            response.request = http_request
        if first_byte.cancelled_caught:
            raise UpstreamTimeoutError(
                f"the upstream sent no response within {timeouts.first_byte} s"
            )
        try:
            if response.status_code >= 400:
                body = await _read_capped(response, _MAX_ERROR_BODY)
                raise parse_error(response.status_code, response.headers, body, now=time.time())
            if not read_body:
                return response, None
            try:
                # As the transport reads it: httpx's aread goes through its chunker and an
                # identity decoder for nothing (``_body_chunks``).
                body = b"".join([chunk async for chunk in _body_chunks(response)])
                await response.aclose()  # the body was read to its end: pooled, not closed
            except httpx.HTTPError as exc:
                # Nothing was emitted yet, so this is still a whole-attempt failure.
                raise _translate(exc, before_response=True) from exc
            return response, body
        except BaseException:
            with trio.CancelScope(shield=True):
                await response.aclose()
            raise

    def _url(self, url: str, params: Mapping[str, str | list[str]] | None) -> httpx.URL:
        if params and not all(isinstance(v, str) for v in params.values()):
            return httpx.URL(url, params=params)  # a repeated query parameter: rare, not kept
        key = (url, tuple(params.items()) if params else ())
        parsed = self._urls.get(key)
        if parsed is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()  # a new working set refills it at once
            parsed = self._urls[key] = httpx.URL(url, params=params or None)
        return parsed

    def _should_retry(self, exc: BaseException) -> bool:
        return may_retry(self._settings, exc)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        # Tenacity counts from the second attempt (the first ran bare in open()).
        return self._delay(state.attempt_number + 1, exc)

    def _delay(self, failed_attempts: int, exc: BaseException | None) -> float:
        return backoff(self._settings, failed_attempts, exc, self._random)

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        self._retries += 1


@attrs.define
class _Attempt:
    """How far one attempt got."""

    #: Something was sent downstream: from here on a failure cannot be retried.
    opened: bool = False
    first_byte: float | None = None

    def open_at(self, now: float) -> None:
        self.opened = True
        self.first_byte = now


async def relay_into(connector: Connector, routed: Routed, outbox: RawOutbox) -> bool:
    """Relay a routed request into ``outbox``; a failure goes there as a :class:`Failure`.
    False when it did not end cleanly (it failed, or downstream stopped listening)."""
    timing = routed.call.timing
    if timing is not None and timing.started is None:
        timing.started = trio.current_time()
    try:
        await connector.relay(routed, outbox=outbox)
    except SluicegateError as exc:
        with contextlib.suppress(trio.BrokenResourceError):  # downstream failed first
            await outbox.send(Failure(exc))
        return False
    except trio.BrokenResourceError:
        return False  # downstream failed and stopped listening; its failure is on its way
    finally:
        if timing is not None and timing.ended is None:  # failed before its body ended
            timing.ended = trio.current_time()
    return True


async def run_connector(
    connector: Connector,
    *,
    inbox: trio.MemoryReceiveChannel[Routed],
    outbox: trio.MemorySendChannel[RawItem],
) -> None:
    """The connector in a task of its own (the unfused layout)."""
    with inbox, outbox:
        async for routed in inbox:
            if not await relay_into(connector, routed, outbox):
                return


_INPUT_PATH = re.compile(r"\binput\[(\d+)\]")


def _renumbered(
    exc: InvalidRequestError, history: int, source: str = "previous_response_id"
) -> InvalidRequestError:
    """A codec numbers the whole conversation; the caller's ``input`` starts after the
    ``history`` items of its ``previous_response_id`` chain (or ``conversation``), which are
    named by ``source``."""

    def path(match: re.Match[str]) -> str:
        index = int(match[1])
        return source if index < history else f"input[{index - history}]"

    param = exc.param
    if param is not None:
        param = _INPUT_PATH.sub(path, param)
        if param.startswith(source):
            param = source
    return InvalidRequestError(
        _INPUT_PATH.sub(path, exc.message), param=param, code=exc.code, status_code=exc.status_code
    )


def _portable(item: dict[str, Any]) -> dict[str, Any] | None:
    """A stored item as any Responses upstream takes it, or None when only a bridge can."""
    if item.get("type") == "reasoning":
        return None  # its encrypted_content is the gateway's envelope (codecs/_bridge.py)
    return {k: v for k, v in item.items() if k != "id"}


def _body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's chunks as the transport reads them when nothing is to be decoded: httpx's
    ``aiter_bytes`` adds a chunker and a decoder generator to every chunk, ~1 µs each."""
    encoding = response.headers.get("content-encoding")
    if encoding is None or encoding.strip().lower() == "identity":
        stream = response.stream
        if isinstance(stream, httpx.AsyncByteStream):
            response.is_stream_consumed = True  # httpx's own iterators may not run it again
            return aiter(stream)
    return response.aiter_bytes()


def _deadline(seconds: float | None) -> trio.CancelScope | _Unbounded:
    """``trio.move_on_after`` that takes None for "no deadline" (then no scope at all: a
    request holds one scope per deadline configured, not per deadline there could be)."""
    if seconds is None:
        return _UNBOUNDED
    return trio.CancelScope(deadline=trio.current_time() + seconds)


class _Unbounded:
    """Where a deadline would be, when there is none: never cancelled, costs nothing."""

    cancelled_caught = False
    cancel_called = False

    def __enter__(self) -> _Unbounded:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


_UNBOUNDED = _Unbounded()


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
