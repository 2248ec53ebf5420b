"""The library face: ``open_gateway`` and the :class:`Gateway` it yields.

One gateway owns what every request shares: the pooled ``httpx.AsyncClient`` (sized for high
concurrency; never a client per request), the router, the connector's retry policy, the price
table and the ID codec, plus a service nursery for gateway-wide tasks (the built-in fake
upstreams). Each request then runs its own nursery of actors (``runtime/_supervisor.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, Final, Literal, Protocol, overload

import attrs
import httpx
import sniffio
import trio

from ._live import Follower, LiveRun
from ._objects import ObjectService, spend_metadata_of
from ._params import checked_int, on_end_option, prepare_call
from ._replay import resolve_replayed_state
from ._types import Response, ResponseEvent, ResponseStatus, StreamEvent
from .actors._connector import Connector
from .actors._health import DeploymentStatistics
from .actors._media import MediaFetcher
from .actors._recorder import Recorder, Recording, unanswered_response
from .actors._router import Router, env_deployment_id
from .actors._stages import Accountant, seal_output
from .actors._transport import LeanTransport
from .codecs._bridge import conversation_items
from .codecs._lifecycle import StreamTracker
from .codecs._registry import bridge_codec
from .codecs.ids import DecodedId, IdCodec
from .codecs.openai_responses import build_resource_request
from .codecs.sealed import StateSeal
from .config import (
    Deployment,
    GatewayConfig,
    build_deployment,
    is_bridged,
    load_config,
)
from .errors import (
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    SluicegateError,
    StoreError,
    StoreIntegrityError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from .fake import FakeUpstream
from .pricing import PriceTable
from .runtime._messages import Delivery, PreparedCall
from .runtime._scopes import open_body_nursery
from .runtime._supervisor import Pipeline, record_unanswered, run_request
from .store import (
    Deleted,
    Ended,
    ResponseRow,
    SpendFilter,
    SpendGroup,
    SpendLog,
    SpendTotal,
    Store,
    open_sqlite_store,
)

__all__ = [
    "Gateway",
    "GatewayStatistics",
    "ResponseStream",
    "aresponses",
    "open_gateway",
    "responses",
]

logger = logging.getLogger("sluicegate")

#: Used when neither the config nor SLUICEGATE_RESPONSE_ID_SECRET names a secret: IDs stay valid
#: for this process only (every gateway in it shares the key, so module-level calls chain).
_PROCESS_SECRET = secrets.token_bytes(32)


@attrs.frozen(kw_only=True)
class GatewayStatistics:
    requests_in_flight: int
    requests_total: int
    #: Background responses running in this gateway.
    background_running: int
    upstream_requests_in_flight: int
    upstream_attempts: int
    upstream_retries: int
    upstream_errors: int
    chunks_read: int
    input_tokens: int
    output_tokens: int
    cost: float
    #: Each deployment as the router sees it: breaker state, load, latency, rpm/tpm use.
    deployments: tuple[DeploymentStatistics, ...] = ()
    #: Deployments cooling down (breaker open or half-open) now.
    deployments_cooling: int = 0


class _Source(Protocol):
    async def receive(self) -> Delivery: ...


@attrs.define(eq=False)
class ResponseStream:
    """The events of one streamed response, as the caller iterates them.

    ``async for event in stream`` yields typed :class:`~sluicegate.StreamEvent` objects;
    ``final_response`` is the folded :class:`Response` once the terminal event has been read.
    A stream that follows a background response (``stream(background=True)``, or
    ``get_response(id, stream=True)``) ends without a terminal event if the response was
    cancelled.
    """

    _recv: _Source
    _tracker: StreamTracker | None
    _batch: list[StreamEvent] = attrs.Factory(list)
    _index: int = 0
    _terminal: ResponseEvent | None = None
    _closing: list[StreamEvent] = attrs.Factory(list)

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> StreamEvent:
        while self._index >= len(self._batch):
            try:
                item = await self._recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise StopAsyncIteration from None
            if isinstance(item, SluicegateError):
                raise item
            self._batch = item
            self._index = 0
        event = self._batch[self._index]
        self._index += 1
        if type(event) is ResponseEvent and event.is_terminal:
            self._terminal = event
        return event

    async def _prime(self) -> SluicegateError | None:
        """Wait for the first events; the error instead if the request failed before any."""
        try:
            item = await self._recv.receive()
        except trio.EndOfChannel:
            return UpstreamProtocolError("the upstream sent no events")
        if isinstance(item, SluicegateError):
            return item
        self._batch = item
        return None

    def ready_nowait(self) -> list[StreamEvent]:
        """The events already received and not yet iterated (the rest of the current batch),
        now, without waiting: a writer can send them in one write instead of one each."""
        ready = self._batch[self._index :]
        self._index = len(self._batch)
        for event in ready:
            if type(event) is ResponseEvent and event.is_terminal:
                self._terminal = event
        return ready

    @property
    def closing(self) -> list[StreamEvent]:
        """After the stream was interrupted (:meth:`Gateway.open_stream`): the events not read
        yet that end it, in order — those already on their way, then its open items closed and
        one ``response.failed``, as recorded (unless its own terminal event, recorded first,
        was among those on their way). Else empty."""
        return self._closing

    @property
    def final_response(self) -> Response | None:
        """The final Response, once the terminal event has been read; else None."""
        if self._tracker is not None and self._tracker.terminal is not None:
            return self._tracker.fold()
        return None if self._terminal is None else self._terminal.response

    async def get_final_response(self) -> Response:
        """Read the rest of the stream; the final Response."""
        async for _ in self:
            pass
        final = self.final_response
        if final is None:
            raise UpstreamProtocolError("the stream ended without a terminal event")
        return final

    async def __aenter__(self) -> ResponseStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading (a follower only detaches: the background response runs on)."""
        self._batch = []
        self._index = 0
        await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class _Handoff:
    """The pipeline's end of an interruptible stream's channel: it keeps the batch whose
    hand-over a cancellation cut (a memory channel's ``send`` that raises ``Cancelled`` has
    delivered nothing), so the stream's end can still deliver it, in order."""

    _send: trio.MemorySendChannel[Delivery]
    cut: list[StreamEvent] = attrs.Factory(list)

    async def send(self, value: Delivery, /) -> None:
        try:
            await self._send.send(value)
        except trio.Cancelled:
            if not isinstance(value, SluicegateError):
                self.cut = value
            raise


def _drain(recv: trio.MemoryReceiveChannel[Delivery]) -> list[StreamEvent]:
    """The events waiting in a channel, now."""
    events: list[StreamEvent] = []
    while True:
        try:
            value = recv.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return events
        if not isinstance(value, SluicegateError):
            events += value


@attrs.define(eq=False)
class _FakeProviders:
    """Starts built-in fake upstreams on demand, one per (tokens, delay), in the service nursery."""

    _nursery: trio.Nursery
    _servers: dict[tuple[int, float], FakeUpstream] = attrs.Factory(dict)
    _lock: trio.Lock = attrs.Factory(trio.Lock)

    async def resolve(self, deployment: Deployment) -> Deployment:
        key = (deployment.fake_tokens or 20, deployment.fake_token_delay or 0.0)
        server = self._servers.get(key)
        if server is None:
            async with self._lock:
                server = self._servers.get(key)
                if server is None:
                    server = FakeUpstream(tokens=key[0], token_delay=key[1])
                    await self._nursery.start(server.serve)
                    self._servers[key] = server
        return attrs.evolve(deployment, api_base=server.base_url)


@attrs.define(eq=False)
class Gateway:
    """Routes Responses API calls; get one from :func:`open_gateway`."""

    _config: GatewayConfig
    _pipeline: Pipeline
    _fakes: _FakeProviders
    _environ: Mapping[str, str] | None
    _store: Store
    _recorder: Recorder
    _services: trio.Nursery
    #: The owner of requests and lookups that name none (library use; the proxy passes keys).
    _owner: str = ""
    #: Background responses running in this process, by ID.
    _live: dict[str, LiveRun] = attrs.Factory(dict)
    _in_flight: int = 0
    _total: int = 0
    #: Files and batches (issue 8).
    _objects: ObjectService | None = None
    #: Deployments of the built-in fake served in this process (``fake/`` with no api_base):
    #: what they made is known to this process's fake only, so the store answers for it.
    _in_process_fakes: frozenset[str] = frozenset()
    #: Whether the task that notices runs ended by other processes is running.
    _watching: bool = False

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def store(self) -> Store:
        """The event store every response is recorded in."""
        return self._store

    @property
    def model_names(self) -> list[str]:
        """The configured model groups."""
        return self._pipeline.router.model_names

    def statistics(self) -> GatewayStatistics:
        c = self._pipeline.connector.statistics()
        a = self._pipeline.accountant.statistics()
        r = self._pipeline.router.statistics()
        return GatewayStatistics(
            requests_in_flight=self._in_flight,
            requests_total=self._total,
            background_running=len(self._live),
            upstream_requests_in_flight=c.requests_in_flight,
            upstream_attempts=c.attempts,
            upstream_retries=c.retries,
            upstream_errors=c.upstream_errors,
            chunks_read=c.chunks_read,
            input_tokens=a.input_tokens,
            output_tokens=a.output_tokens,
            cost=a.cost,
            deployments=r.deployments,
            deployments_cooling=r.cooling,
        )

    # -- creating responses --------------------------------------------------------------

    async def responses(self, **params: Any) -> Response:
        """Create a response and wait for it (``POST /v1/responses``, not streamed).

        Args:
            params: Responses API parameters (``model``, ``input``, ``instructions``, ...), and
                ``extra_body``, ``extra_headers``, ``extra_query``, ``timeout`` as in the
                OpenAI SDK; ``owner`` (who the response belongs to; default: ``user``, else
                the gateway's owner) and ``spend_logs_metadata`` (JSON for the spend logs);
                ``on_end``, for a background response: called with no arguments, once, when
                it has ended, however it ended (never if this call failed before starting it;
                unused without ``background``).

        Returns:
            The Response; its ``id`` is a sluicegate ``resp_`` ID. With ``background=True``,
            at once, in status ``queued``: poll :meth:`get_response`.

        Raises:
            SluicegateError: a bad request (400/404) or an upstream failure (its status).
        """
        on_end = on_end_option(params.get("on_end"))
        call = await self._prepare(params, stream=False)
        if call.background:
            _, queued = await self._start_background(call, on_end)
            return queued
        tracker = StreamTracker()
        self._in_flight += 1
        self._total += 1
        try:
            await run_request(self._pipeline, call, tracker, None, self._recorder.start(call))
        finally:
            self._in_flight -= 1
        return tracker.fold()

    def stream(self, **params: Any) -> AbstractAsyncContextManager[ResponseStream]:
        """Create a streamed response: ``async with gw.stream(...) as events:``.

        Entering waits for the first event, so a request that fails before any event raises
        here (as an HTTP error would). Leaving the block early cancels the upstream request,
        except for a background response (``background=True``), which runs on: resume it with
        ``get_response(id, stream=True, starting_after=n)``. ``on_end`` is as in
        :meth:`responses`.
        """
        return self.open_stream(params)

    @asynccontextmanager
    async def open_stream(
        self,
        params: Mapping[str, Any],
        *,
        interrupted: Callable[[], SluicegateError | None] | None = None,
    ) -> AsyncIterator[ResponseStream]:
        """:meth:`stream` for a server, which tells a caller that left from a stream it cuts.

        Args:
            params: as for :meth:`stream`.
            interrupted: asked when the stream is cancelled from outside. None: its caller
                left, and it is recorded ``cancelled``. An error: the server is stopping under
                a caller that is still there; the response ends as a failure after delivery
                does — open items closed, one ``response.failed`` with this error — recorded
                ``failed``, and :attr:`ResponseStream.closing` holds the events left to send
                (the cancellation then goes on out of the block).
        """
        on_end = on_end_option(params.get("on_end"))
        call = await self._prepare(params, stream=True)
        if call.background:
            live, _ = await self._start_background(call, on_end)
            follower = ResponseStream(Follower(live.response_id, live, self._store), None)
            failure = await follower._prime()
            if failure is not None:
                raise failure
            yield follower
            return
        send, recv = trio.open_memory_channel[Delivery](1)
        tracker = StreamTracker()
        events = ResponseStream(recv, tracker)
        recording = self._recorder.start(call)
        recording.interrupted = interrupted
        handoff = None if interrupted is None else _Handoff(send)
        self._in_flight += 1
        self._total += 1
        try:
            # The channel closes only after the nursery: leaving the block early cancels the
            # request first (recorded cancelled), rather than breaking the channel under a sink
            # that is handing over the next batch.
            with recv:
                try:
                    async with open_body_nursery() as nursery:
                        nursery.start_soon(
                            self._run_streaming, call, tracker, send, handoff, recording
                        )
                        failure = await events._prime()
                        if failure is not None:
                            raise failure
                        yield events
                finally:
                    if recording.interruption is not None:  # what was on its way goes first
                        cut = [] if handoff is None else handoff.cut
                        events._closing = [*_drain(recv), *cut, *recording.closing]
        finally:
            self._in_flight -= 1

    async def _run_streaming(
        self,
        call: PreparedCall,
        tracker: StreamTracker,
        send: trio.MemorySendChannel[Delivery],
        handoff: _Handoff | None,
        recording: Recording,
    ) -> None:
        with send:
            deliver = send if handoff is None else handoff
            await run_request(self._pipeline, call, tracker, deliver, recording)

    async def _prepare(self, params: Mapping[str, Any], *, stream: bool) -> PreparedCall:
        call = prepare_call(
            params, stream=stream, ids=self._pipeline.ids, default_owner=self._owner
        )
        if call.previous is not None:
            call = await self._continue(call)
        pipeline = self._pipeline
        return await resolve_replayed_state(
            call, seal=pipeline.seal, store=self._store, router=pipeline.router
        )

    async def _continue(self, call: PreparedCall) -> PreparedCall:
        """Check ``previous_response_id`` against the store: it must be the caller's, stored,
        ended, not deleted. A background response is continued under the ID its upstream
        knows, at the deployment that ran it."""
        assert call.previous is not None and call.previous_response_id is not None
        previous_id = call.previous_response_id
        row = await self._store.get(previous_id)
        if row is None:
            # Made before the store knew it (another store, a LiteLLM ID): the signed owner
            # decides, and the upstream answers for the rest; a bridged provider has no
            # conversation but ours, so without the row there is nothing to continue.
            if call.previous.owner != call.owner or is_bridged(call.previous.provider):
                raise _previous_not_found(previous_id)
            return call
        if row.deleted or row.purged or row.owner != call.owner:
            raise _previous_not_found(previous_id)
        if not row.store:
            raise InvalidRequestError(
                f"Previous response with id '{previous_id}' was created with 'store': false, "
                "so it was not kept and cannot be continued; send the conversation as input "
                "instead.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        if not row.status.is_terminal:
            raise InvalidRequestError(
                f"Previous response with id '{previous_id}' is still {row.status.value}; "
                "continue it once it has ended.",
                param="previous_response_id",
                code="previous_response_in_progress",
            )
        previous = call.previous
        if row.upstream_id is not None and row.deployment_id is not None:
            previous = attrs.evolve(
                previous, raw_id=row.upstream_id, deployment_id=row.deployment_id
            )
        call = attrs.evolve(call, previous=previous)
        if self._made_in_process(previous, row):
            return await self._continue_in_process(call, previous_id)
        if self._pipeline.router.stored_conversation(call):
            # A bridged provider keeps no conversation: the store's chain is the context
            # (DESIGN §5), read now, bounded by the store settings.
            settings = self._config.general_settings.store
            history = await self._store.conversation(
                previous_id,
                max_turns=settings.max_conversation_turns,
                max_bytes=settings.max_conversation_bytes,
            )
            call = attrs.evolve(call, history=history)
        return call

    async def _continue_in_process(self, call: PreparedCall, previous_id: str) -> PreparedCall:
        """Continue a response an in-process fake made. That fake knew it in its own process
        only (another worker's, or this one's before a restart, does not), so the chain comes
        from the store and goes as input, as a conversation a bridged provider began goes to
        a native upstream: without the stored items' IDs and reasoning (state only the fake
        that issued it could read). The caller's own input follows unchanged."""
        settings = self._config.general_settings.store
        history = await self._store.conversation(
            previous_id,
            max_turns=settings.max_conversation_turns,
            max_bytes=settings.max_conversation_bytes,
        )
        items: list[Any] = [
            {k: v for k, v in item.items() if k != "id"}
            for item in conversation_items(history, None)
            if item.get("type") != "reasoning"
        ]
        given = call.body.get("input")
        if isinstance(given, str):
            items.append({"role": "user", "content": given})
        elif given is not None:
            items += given
        return attrs.evolve(call, previous=None, body={**call.body, "input": items})

    def _made_in_process(self, decoded: DecodedId, row: ResponseRow | None) -> bool:
        """Whether an in-process fake deployment made this response (its last attempt)."""
        provider = decoded.provider if row is None or row.provider is None else row.provider
        deployment_id = decoded.deployment_id
        if row is not None and row.deployment_id is not None:
            deployment_id = row.deployment_id
        return provider == "fake" and deployment_id in self._in_process_fakes

    async def _start_background(
        self, call: PreparedCall, on_end: Callable[[], object] | None = None
    ) -> tuple[LiveRun, Response]:
        """Record a background response as queued and start it in the service nursery (which
        calls ``on_end`` when it has ended).

        Its ID is minted here, before any upstream answered (the caller gets it at once); the
        upstream is asked for an ordinary streamed response, so a cancel stops it mid-way with
        what it produced so far, and the events can be stored for resume."""
        try:
            deployment = await self._pipeline.router.route(call)
        except SluicegateError as exc:
            # Refused before it started (every deployment cooling or full): recorded like a
            # foreground request no upstream answered.
            await record_unanswered(self._pipeline.ids, self._recorder.start(call), call, exc)
            raise
        response_id = self._pipeline.ids.encode(
            provider=deployment.provider,
            deployment_id=deployment.id,
            raw_id=f"resp_{secrets.token_hex(24)}",
            owner=call.owner,
        )
        call = attrs.evolve(
            call,
            body={k: v for k, v in call.body.items() if k != "background"},
            stream=True,
            replay=call.stream,
            response_id=response_id,
            deployment=deployment,
        )
        recording = self._recorder.start(call)
        queued = unanswered_response(call, response_id, recording.created_at, status="queued")
        recording.response_id = response_id
        recording.initial = queued
        # Awaited: a GET sent the moment this returns must find the response.
        await self._store.append([self._recorder.accepted(call, response_id, recording.created_at)])
        recording.accepted = True
        live = LiveRun(response_id=response_id, tracker=StreamTracker(), recording=recording)
        self._live[response_id] = live
        self._total += 1
        if not self._watching and self._config.general_settings.store.path != ":memory:":
            # A file may be shared with other processes (an in-memory store never is).
            self._watching = True
            self._services.start_soon(self._watch_ended_elsewhere)
        await self._services.start(self._run_background, live, call, on_end)
        return live, queued

    async def _run_background(
        self,
        live: LiveRun,
        call: PreparedCall,
        on_end: Callable[[], object] | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._in_flight += 1
        try:
            with live.scope:
                task_status.started()
                await run_request(self._pipeline, call, live.tracker, live, live.recording)
        finally:
            self._in_flight -= 1
            del self._live[live.response_id]
            live.finish()
            if on_end is not None:
                try:
                    on_end()
                except Exception:
                    # The caller's callback: its failure is logged, and never ends the gateway.
                    logger.exception("the on_end callback of %s failed", live.response_id)

    # -- files and batches (issue 8) -------------------------------------------------------

    @property
    def _files(self) -> ObjectService:
        assert self._objects is not None, "open the gateway with open_gateway()"
        return self._objects

    async def create_file(
        self,
        *,
        file: Any,
        purpose: Any = None,
        model: str | None = None,
        expires_after: Any = None,
        owner: str | None = None,
        spend_logs_metadata: Any = None,
        litellm_metadata: Any = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """Upload a file (``POST /v1/files``) to a deployment of ``model`` (the group's OpenAI
        or Azure deployment; optional when only one deployment keeps files), streamed.

        Args:
            file: bytes, a path, a binary file, a ``(filename, content[, content_type])`` tuple
                (content: bytes, a binary file or an async iterable of bytes), or an Upload.
            purpose: ``batch``, ``assistants``, ``fine-tune``, ``vision``, ``user_data``,
                ``evals``.

        Returns:
            The file object, its ``id`` a sluicegate ``file-`` ID.
        """
        return await self._files.create_file(
            file,
            purpose=purpose,
            model=model,
            owner=self._owner_of(owner),
            expires_after=expires_after,
            spend_metadata=spend_metadata_of(spend_logs_metadata, litellm_metadata),
            extra_headers=extra_headers,
            total_timeout=timeout,
        )

    async def list_files(
        self,
        *,
        purpose: str | None = None,
        limit: int = 10000,
        after: str | None = None,
        order: str = "desc",
        owner: str | None = None,
        admin: bool = False,
    ) -> dict[str, Any]:
        """The caller's files (``GET /v1/files``), as last seen, newest first by default."""
        return await self._files.list_files(
            owner=self._owner_of(owner),
            admin=admin,
            purpose=purpose,
            limit=limit,
            after=after,
            order=order,
        )

    async def retrieve_file(
        self,
        file_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """A file (``GET /v1/files/{id}``), from the deployment that keeps it."""
        return await self._files.retrieve_file(
            file_id, owner=self._owner_of(owner), admin=admin, total_timeout=timeout
        )

    async def delete_file(
        self,
        file_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """Delete a file (``DELETE /v1/files/{id}``), upstream and here."""
        return await self._files.delete_file(
            file_id, owner=self._owner_of(owner), admin=admin, total_timeout=timeout
        )

    def open_file_content(
        self, file_id: str, *, owner: str | None = None, admin: bool = False
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """``async with gw.open_file_content(id) as chunks:`` the file's bytes as they arrive
        (``GET /v1/files/{id}/content``). Reading a batch's output file to its end records
        the batch's usage and cost."""
        return self._files.open_file_content(file_id, owner=self._owner_of(owner), admin=admin)

    async def file_content(
        self, file_id: str, *, owner: str | None = None, admin: bool = False
    ) -> bytes:
        """The whole content of a file (see :meth:`open_file_content` to stream it)."""
        async with self.open_file_content(file_id, owner=owner, admin=admin) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async def create_batch(
        self,
        *,
        input_file_id: Any = None,
        endpoint: Any = None,
        completion_window: Any = "24h",
        metadata: Any = None,
        output_expires_after: Any = None,
        model: str | None = None,
        owner: str | None = None,
        admin: bool = False,
        spend_logs_metadata: Any = None,
        litellm_metadata: Any = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """Create a batch (``POST /v1/batches``) on the deployment that keeps its input file
        (``model``, if given, must be a group of that deployment)."""
        return await self._files.create_batch(
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata,
            output_expires_after=output_expires_after,
            model=model,
            owner=self._owner_of(owner),
            admin=admin,
            spend_metadata=spend_metadata_of(spend_logs_metadata, litellm_metadata),
            extra_headers=extra_headers,
            total_timeout=timeout,
        )

    async def retrieve_batch(
        self,
        batch_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """A batch (``GET /v1/batches/{id}``), with its files' sluicegate IDs."""
        return await self._files.retrieve_batch(
            batch_id, owner=self._owner_of(owner), admin=admin, total_timeout=timeout
        )

    async def cancel_batch(
        self,
        batch_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """Cancel a batch (``POST /v1/batches/{id}/cancel``)."""
        return await self._files.cancel_batch(
            batch_id, owner=self._owner_of(owner), admin=admin, total_timeout=timeout
        )

    async def list_batches(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
        owner: str | None = None,
        admin: bool = False,
    ) -> dict[str, Any]:
        """The caller's batches (``GET /v1/batches``), newest first; running ones refreshed."""
        return await self._files.list_batches(
            owner=self._owner_of(owner), admin=admin, limit=limit, after=after
        )

    def _owner_of(self, owner: str | None) -> str:
        if owner is not None and not isinstance(owner, str):
            raise InvalidRequestError("'owner' must be a string.", param="owner")
        return self._owner if owner is None else owner

    # -- stored responses ----------------------------------------------------------------

    @overload
    async def get_response(
        self,
        response_id: str,
        *,
        stream: Literal[False] = False,
        starting_after: int | None = None,
        include: list[str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        owner: str | None = None,
        admin: bool = False,
    ) -> Response: ...

    @overload
    async def get_response(
        self,
        response_id: str,
        *,
        stream: Literal[True],
        starting_after: int | None = None,
        include: list[str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        owner: str | None = None,
        admin: bool = False,
    ) -> ResponseStream: ...

    async def get_response(
        self,
        response_id: str,
        *,
        stream: bool = False,
        starting_after: int | None = None,
        include: list[str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
        owner: str | None = None,
        admin: bool = False,
    ) -> Response | ResponseStream:
        """Retrieve a response (``GET /v1/responses/{id}``).

        From the store when the store decides: a background response (while it runs, as far
        as it got), one a bridged provider or the in-process fake made, and one the store
        holds as failed or cancelled (its status is its spend row's); any other from the
        upstream that made it, once the store has confirmed it is the caller's.

        Args:
            stream: replay a background response created with ``stream=True``: the events
                after ``starting_after`` (a sequence number), then live ones to the end.
            owner: who asks (default: the gateway's owner); admin: may reach any response.

        Raises:
            NotFoundError: not one of ours, not the caller's, deleted, or not stored.
            InvalidRequestError: ``stream`` for a response that was not a streamed background one;
                a ``starting_after`` that is not a sequence number (an integer from 0 to
                ``MAX_SAFE_INTEGER``).
            UpstreamError: the upstream's answer.
        """
        if starting_after is not None:
            starting_after = checked_int("starting_after", starting_after)
        decoded, row = await self._owned(response_id, owner, admin)
        if stream:
            if row is None or not row.background or not await self._replayable(response_id):
                raise InvalidRequestError(
                    "Only background responses created with 'stream': true can be streamed again.",
                    param="stream",
                )
            after = -1 if starting_after is None else starting_after
            source = Follower(response_id, self._live.get(response_id), self._store, after)
            return ResponseStream(source, None)
        if row is not None and self._answered_by_store(decoded, row):
            return await self._stored_response(row)
        if is_bridged(decoded.provider):
            raise NotFoundError(f"No response found with id '{response_id}'.")
        deployment, raw_id = self._upstream_of(decoded, row, response_id)
        query: dict[str, str | list[str]] = {**(extra_query or {})}
        if include:
            query["include[]"] = list(include)
        body = await self._resource_call(
            deployment,
            "GET",
            raw_id,
            query=query,
            extra_headers=extra_headers,
            total_timeout=timeout,
        )
        response = Response.from_dict(body).with_changes(id=response_id)
        output = body.get("output") if isinstance(body, dict) else None
        sealed = seal_output(self._pipeline.seal, deployment.id, output)
        if sealed is not output:
            # Fetched from the upstream: its opaque state is sealed as on the way out of a
            # request, so a GET never hands out state that could go to the wrong account.
            response = response.with_changes(output=sealed)
        if row is not None and row.previous_id is not None:
            # The upstream names the raw ID it was sent; the caller knows ours.
            response = response.with_changes(previous_response_id=row.previous_id)
        return response

    async def delete_response(
        self,
        response_id: str,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
        owner: str | None = None,
        admin: bool = False,
    ) -> dict[str, Any]:
        """Delete a response (``DELETE /v1/responses/{id}``): upstream too, then a tombstone in
        the store (its content removed, its accounting kept). A running background response is
        cancelled first. Later lookups are a 404.

        Returns:
            ``{"id": ..., "object": "response", "deleted": True}``.
        """
        decoded, row = await self._owned(response_id, owner, admin)
        live = self._live.get(response_id)
        if live is not None:
            await self._cancel_live(live)
        if not (is_bridged(decoded.provider) or self._made_in_process(decoded, row)):
            # A bridged provider kept nothing, an in-process fake nothing that lasts: the store
            # is all there is to delete.
            deployment, raw_id = self._upstream_of(decoded, row, response_id)
            try:
                await self._resource_call(
                    deployment,
                    "DELETE",
                    raw_id,
                    extra_headers=extra_headers,
                    total_timeout=timeout,
                )
            except UpstreamStatusError as exc:
                # Gone upstream already (expired, or never kept): the tombstone still goes in.
                if exc.status_code != 404 or row is None:
                    raise
        if row is not None:
            await self._store.append(
                [Deleted(response_id=response_id, deleted_at=self._recorder.wall_clock())]
            )
        return {"id": response_id, "object": "response", "deleted": True}

    async def cancel_response(
        self,
        response_id: str,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
        owner: str | None = None,
        admin: bool = False,
    ) -> Response:
        """Cancel a background response (``POST /v1/responses/{id}/cancel``): its run stops,
        it ends ``cancelled`` with the usage so far billed. Cancelling one that has ended
        returns it unchanged. One running in another process on the same store is ended in the
        store first (every reader sees it at once); that process then stops it.

        Raises:
            InvalidRequestError: not a background response.
            NotFoundError: not one of ours, not the caller's, or deleted.
        """
        decoded, row = await self._owned(response_id, owner, admin)
        if row is None:
            if is_bridged(decoded.provider):
                raise NotFoundError(f"No response found with id '{response_id}'.")
            # Not recorded here (a LiteLLM ID): the upstream decides.
            deployment, raw_id = self._upstream_of(decoded, row, response_id)
            body = await self._resource_call(
                deployment,
                "POST",
                raw_id,
                action="cancel",
                extra_headers=extra_headers,
                total_timeout=timeout,
            )
            return Response.from_dict(body).with_changes(id=response_id)
        if not row.background:
            raise InvalidRequestError("Cannot cancel a synchronous response.")
        live = self._live.get(response_id)
        if live is not None:
            await self._cancel_live(live)
        elif not row.status.is_terminal:
            # Running in another process that has the store open too (or in none: it died).
            # The cancel is recorded here, before it is acknowledged, so every reader in every
            # process sees it from now on; the process running it notices within
            # ENDED_ELSEWHERE_POLL, stops its upstream request and bills the usage so far.
            # If it ended meanwhile, the end is refused: it is returned as it ended.
            with contextlib.suppress(StoreIntegrityError):
                await self._store.append(
                    [
                        Ended(
                            response_id=response_id,
                            status=ResponseStatus.CANCELLED,
                            error=None,
                            response=None,
                            completed_at=self._recorder.wall_clock(),
                        )
                    ]
                )
        fresh = await self._store.get(response_id)
        assert fresh is not None
        return await self._stored_response(fresh)

    async def list_input_items(
        self,
        response_id: str,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int = 20,
        order: str = "desc",
        owner: str | None = None,
        admin: bool = False,
    ) -> dict[str, Any]:
        """The items that formed a response's input (``GET /v1/responses/{id}/input_items``),
        including those its ``previous_response_id`` chain pulled in, as the spec's list:
        ``{"object": "list", "data", "first_id", "last_id", "has_more"}``.

        Args:
            after / before: an item ID: list the items after (before) it, in ``order``.
            limit: 1 to 100. order: ``"desc"`` (newest first, the default) or ``"asc"``.

        Raises:
            NotFoundError: unknown, not the caller's, deleted, or not stored.
            InvalidRequestError: a bad ``limit``, ``order``, or an ``after``/``before`` that is
                not one of the items.
        """
        limit = checked_int("limit", limit, low=1, high=100)
        if order not in ("asc", "desc"):
            raise InvalidRequestError(
                f"Invalid value for 'order': {order!r}. Supported values are: 'asc', 'desc'.",
                param="order",
                code="invalid_value",
            )
        _, row = await self._owned(response_id, owner, admin)
        if row is None:
            raise NotFoundError(f"No response found with id '{response_id}'.")
        items: list[dict[str, Any]] = []
        if row.previous_id is not None:
            settings = self._config.general_settings.store
            try:
                items = await self._store.conversation(
                    row.previous_id,
                    max_turns=settings.max_conversation_turns,
                    max_bytes=settings.max_conversation_bytes,
                )
            except InvalidRequestError as exc:
                # The earlier turns were deleted or purged since: list what is left.
                if exc.code != "previous_response_not_found":
                    raise
        items += await self._store.input_items(response_id)
        return _page(items, after=after, before=before, limit=limit, newest_first=order == "desc")

    async def spend_logs(
        self,
        *,
        owner: str | None = None,
        model: str | None = None,
        start: float | None = None,
        end: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[SpendLog]:
        """Spend rows, one per response, filtered (every given filter must match): ``owner``,
        ``model`` group, creation time in [``start``, ``end``) (unix seconds), and
        ``spend_logs_metadata`` pairs."""
        where = SpendFilter(owner=owner, model=model, start=start, end=end, metadata=metadata)
        return await self._store.spend_logs(where, limit=limit, newest_first=newest_first)

    async def spend_totals(
        self,
        *,
        group_by: SpendGroup,
        owner: str | None = None,
        model: str | None = None,
        start: float | None = None,
        end: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[SpendTotal]:
        """Requests, tokens and cost per ``owner``, ``model`` or ``day`` (UTC), over the rows
        the same filters as :meth:`spend_logs` select."""
        if group_by not in ("owner", "model", "day"):
            raise InvalidRequestError(
                f"Invalid value for 'group_by': {group_by!r}. Supported values are: 'owner', "
                "'model', 'day'.",
                param="group_by",
            )
        where = SpendFilter(owner=owner, model=model, start=start, end=end, metadata=metadata)
        return await self._store.spend_totals(where, group_by=group_by)

    async def _owned(
        self, response_id: str, owner: str | None, admin: bool
    ) -> tuple[DecodedId, ResponseRow | None]:
        """The decoded ID and its store row, if the caller may reach it; else a 404 (never a
        403: whether someone else's response exists is not for the caller to learn)."""
        decoded = self._pipeline.ids.decode(response_id)
        caller = self._owner if owner is None else owner
        row = await self._store.get(response_id)
        if row is None:
            # Not recorded here (a LiteLLM ID, another store): the signed owner decides.
            if admin or decoded.owner == caller:
                return decoded, None
        elif not (row.deleted or row.purged or not row.store) and (admin or row.owner == caller):
            return decoded, row
        raise NotFoundError(f"No response found with id '{response_id}'.")

    async def _replayable(self, response_id: str) -> bool:
        live = self._live.get(response_id)
        if live is not None:
            return live.recording.replay
        return bool(await self._store.stream_events(response_id, limit=1))

    def _answered_by_store(self, decoded: DecodedId, row: ResponseRow) -> bool:
        """Whether GET answers from the store rather than the upstream: a background response
        (the gateway ran it), one a bridged provider or an in-process fake made (the upstream
        keeps nothing that lasts), and one the store holds as failed or cancelled — the
        gateway ended it (mid-stream, at a shutdown, its caller left, crash recovery), and its
        status must be the one its spend row shows, whatever the upstream did with it since."""
        return (
            row.background
            or is_bridged(decoded.provider)
            or row.status in _ENDED_BY_THE_GATEWAY
            or self._made_in_process(decoded, row)
        )

    async def _watch_ended_elsewhere(self) -> None:
        """While background responses run here: notice those another process sharing the
        store ended (``cancel_response`` there records the end before it answers) or deleted,
        and stop them: the upstream request is cancelled and the usage so far billed, without
        a second end. One read for all of them every ``ENDED_ELSEWHERE_POLL`` seconds."""
        try:
            while self._live:
                await trio.sleep(ENDED_ELSEWHERE_POLL)
                running = [rid for rid, live in self._live.items() if live.recording.open]
                if not running:
                    continue
                try:
                    rows = await self._store.get_many(running)
                except StoreError:
                    logger.warning("could not poll the store for cancelled responses; retrying")
                    continue
                for rid, row in rows.items():
                    live = self._live.get(rid)
                    if live is None or not live.recording.open:
                        continue
                    if row.status.is_terminal:
                        live.recording.ended_elsewhere = True
                    elif row.deleted:
                        live.recording.cancel_requested = True
                    else:
                        continue
                    live.scope.cancel()
        finally:
            self._watching = False

    async def _stored_response(self, row: ResponseRow) -> Response:
        """A response from the store (or, while it runs here, as far as it got). Once the
        store holds its end, that end is the answer, even while a run here has yet to notice
        that another process ended it."""
        live = self._live.get(row.id)
        if live is not None and not row.status.is_terminal:
            partial = live.tracker.partial()
            if partial is not None:
                return partial
            assert live.recording.initial is not None
            return live.recording.initial
        final = await self._store.final_response(row.id)
        if final is not None:
            return Response.from_dict(final)
        # Ended without a final Response (recovered after a crash, cancelled elsewhere).
        output = await self._store.output_items(row.id)
        return Response.from_dict(
            {
                "id": row.id,
                "object": "response",
                "created_at": int(row.created_at),
                "status": row.status.value,
                "background": row.background,
                "model": row.model,
                "output": output,
                "error": row.error,
                "incomplete_details": None,
                "instructions": None,
                "metadata": row.metadata,
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "temperature": None,
                "top_p": None,
                "usage": row.usage,
                "previous_response_id": row.previous_id,
                "store": row.store,
            }
        )

    async def _cancel_live(self, live: LiveRun) -> None:
        live.recording.cancel_requested = True
        live.scope.cancel()
        await live.finished.wait()

    def _upstream_of(
        self, decoded: DecodedId, row: ResponseRow | None, response_id: str
    ) -> tuple[Deployment, str]:
        """The deployment that made a response and the ID it knows it by."""
        if row is not None and row.upstream_id is not None and row.deployment_id is not None:
            decoded = attrs.evolve(decoded, raw_id=row.upstream_id, deployment_id=row.deployment_id)
        router = self._pipeline.router
        deployment = router.deployment(decoded.deployment_id)
        if deployment is None and decoded.deployment_id in (
            "",
            env_deployment_id(decoded.provider),
        ):
            # Made on the provider's environment credentials (or a LiteLLM ID without a
            # deployment): the same credentials reach it again. A configured deployment that
            # was removed does not fall back here: its responses are gone with it.
            deployment = router.env_deployment(decoded.provider)
        if deployment is None:
            raise NotFoundError(f"No response found with id '{response_id}'.")
        return deployment, decoded.raw_id

    async def _resource_call(
        self,
        deployment: Deployment,
        method: str,
        raw_id: str,
        *,
        action: str = "",
        query: Mapping[str, str | list[str]] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        total_timeout: float | None = None,
    ) -> Any:
        if deployment.provider == "fake" and deployment.api_base is None:
            deployment = await self._fakes.resolve(deployment)
        request = build_resource_request(
            deployment, method, raw_id, action=action, params=query, extra_headers=extra_headers
        )
        timeouts = deployment.timeouts
        if total_timeout is not None:
            timeouts = attrs.evolve(timeouts, total=total_timeout)
        return await self._pipeline.connector.call_json(request, timeouts, deployment.max_retries)


#: How often a gateway running background responses looks for those another process ended.
ENDED_ELSEWHERE_POLL = 1.0

#: Statuses the store decides for a response: GET answers them from the store.
_ENDED_BY_THE_GATEWAY = frozenset({ResponseStatus.FAILED, ResponseStatus.CANCELLED})


def _previous_not_found(previous_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Previous response with id '{previous_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def _page(
    items: list[dict[str, Any]],
    *,
    after: str | None,
    before: str | None,
    limit: int,
    newest_first: bool,
) -> dict[str, Any]:
    """One page of a list (responses-api.md §9, input_items)."""
    ordered = items[::-1] if newest_first else items
    start, stop = 0, len(ordered)
    for cursor, name in ((after, "after"), (before, "before")):
        if cursor is None:
            continue
        position = next((i for i, it in enumerate(ordered) if it.get("id") == cursor), None)
        if position is None:
            raise InvalidRequestError(
                f"Invalid '{name}': no input item with id '{cursor}'.", param=name
            )
        if name == "after":
            start = max(start, position + 1)
        else:
            stop = min(stop, position)
    if before is not None and after is None:
        # Paging backwards: the items just before the cursor.
        start = max(start, stop - limit)
    data = ordered[start:stop][:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": start + len(data) < stop
        or (before is not None and after is None and start > 0),
    }


def _id_secret(config: GatewayConfig, environ: Mapping[str, str]) -> bytes:
    secret = config.general_settings.response_id_secret
    if secret is not None:
        return secret.reveal().encode()
    from_env = environ.get("SLUICEGATE_RESPONSE_ID_SECRET")
    return from_env.encode() if from_env else _PROCESS_SECRET


@asynccontextmanager
async def open_gateway(
    config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
    environ: Mapping[str, str] | None = None,
    owner: str = "",
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[Gateway]:
    """Open a gateway: ``async with sluicegate.open_gateway(config) as gw:``.

    The gateway opens its event store (``general_settings.store``; by default the SQLite file
    ``sluicegate.db`` in the working directory) and records every response in it. Leaving the
    block cancels running background responses (recorded as failed) and closes the store.

    Args:
        config: a dict or a YAML path in LiteLLM's shape (``model_list``, ``router_settings``,
            ``general_settings``), a loaded :class:`GatewayConfig`, or None for zero-config use
            (``provider/model`` names with the provider's environment credentials).
        transport: an httpx transport to use instead of the network (tests: MockTransport).
        rng: the random source for routing and retry jitter (tests: a seeded one).
        environ: the environment for ``os.environ/`` references and provider credentials.
        owner: who requests and lookups that name no ``owner`` belong to.
        wall_clock: unix time for stored timestamps (tests: a fixed clock).

    Raises:
        ConfigError: the configuration is invalid; the message names the path.
        StoreError: the store cannot be opened.
    """
    env = os.environ if environ is None else environ
    cfg = load_config(config, environ=env)
    gs = cfg.general_settings
    drop = cfg.general_settings.drop_params
    deployments = [
        build_deployment(e, cfg.router_settings, environ=env, drop_params=drop)
        for e in cfg.model_list
    ]
    for i, deployment in enumerate(deployments):
        codec = bridge_codec(deployment.provider)
        if codec is not None:
            try:
                codec.check_deployment(deployment)
            except ConfigError as exc:
                inner = exc.path or "model_info"
                message = exc.message.removeprefix(f"{inner}: ")
                raise ConfigError(message, path=f"model_list[{i}].{inner}") from exc
    rng = rng or random.Random()
    limits = httpx.Limits(
        max_connections=gs.max_connections,
        max_keepalive_connections=gs.max_keepalive_connections,
        keepalive_expiry=gs.keepalive_expiry,
    )
    # Fetching caller-named media goes through httpx's own transport (it takes the TLS server
    # name the fetcher pins, actors/_media.py), or the caller's transport in tests.
    media_transport = transport
    if transport is None and gs.http_transport == "lean":
        # httpx's pool scans every connection per request (a poll() each): CPU per request
        # grows with concurrency. The lean transport checks only the connection it reuses.
        transport = LeanTransport(
            max_connections=gs.max_connections,
            max_keepalive_connections=gs.max_keepalive_connections,
            keepalive_expiry=gs.keepalive_expiry,
        )
    elif transport is None:
        transport = httpx.AsyncHTTPTransport(limits=limits)
    async with (
        transport,
        httpx.AsyncClient(transport=media_transport, timeout=None) as media_client,
        # The store outlives the services: background responses record their end on the way
        # out. Its writer runs in a body nursery, so the caller's own errors come out unwrapped.
        open_body_nursery() as store_services,
        open_sqlite_store(gs.store.path, nursery=store_services) as store,
        open_body_nursery() as services,
    ):
        fakes = _FakeProviders(services)
        in_process_fakes = frozenset(
            {env_deployment_id("fake")}
            | {d.id for d in deployments if d.provider == "fake" and d.api_base is None}
        )
        deployments = [
            await fakes.resolve(d) if d.provider == "fake" and d.api_base is None else d
            for d in deployments
        ]
        router = Router.from_deployments(
            deployments,
            cfg.router_settings,
            rng=rng,
            resolve_fake=fakes.resolve,
            environ=environ,
        )
        accountant = Accountant(
            PriceTable.bundled(), gs.include_cost_in_streaming_usage, router.used_tokens
        )
        pipeline = Pipeline(
            router=router,
            connector=Connector(
                transport,
                cfg.router_settings,
                rng,
                MediaFetcher(media_client, gs.media_fetch),
                wall_clock,
            ),
            accountant=accountant,
            ids=IdCodec.from_secret(_id_secret(cfg, env)),
            seal=StateSeal.from_secret(_id_secret(cfg, env)),
        )
        if gs.store.retention is not None:
            services.start_soon(
                _purge_periodically, store, gs.store.retention, gs.store.purge_interval, wall_clock
            )
        secret = _id_secret(cfg, env)
        objects = ObjectService(
            store,
            router,
            pipeline.connector,
            PriceTable.bundled(),
            IdCodec.from_secret(secret, prefix="file-"),
            IdCodec.from_secret(secret, prefix="batch_"),
            fakes.resolve,
            wall_clock,
            gs.max_file_bytes,
        )
        yield Gateway(
            cfg,
            pipeline,
            fakes,
            environ,
            store,
            Recorder(store, accountant, wall_clock),
            services,
            owner,
            objects=objects,
            in_process_fakes=in_process_fakes,
        )


async def _purge_periodically(
    store: Store, retention: float, interval: float, wall_clock: Callable[[], float]
) -> None:
    """Retention: remove content older than ``retention`` every ``interval`` seconds."""
    while True:
        try:
            purged = await store.purge(before=wall_clock() - retention)
        except StoreError:
            logger.exception("the retention purge failed; trying again next interval")
        else:
            if purged:
                logger.info("retention: purged the content of %d responses", purged)
        await trio.sleep(interval)


async def aresponses(
    *, config: GatewayConfig | Mapping[str, Any] | str | None = None, **params: Any
) -> Response:
    """One call, zero setup (trio): ``await sluicegate.aresponses(model="openai/gpt-4o", ...)``.

    Opens a gateway for the call; for many calls, open one with :func:`open_gateway`.
    """
    if params.get("stream"):
        raise InvalidRequestError(
            "Streaming needs a gateway: `async with open_gateway() as gw, gw.stream(...)`.",
            param="stream",
        )
    # With no configuration a one-shot call keeps its record in memory: it leaves no file in
    # the caller's working directory (and a one-shot response has nobody to look it up later).
    async with open_gateway(_ONE_SHOT if config is None else config) as gw:
        return await gw.responses(**params)


#: The configuration of a one-shot call given none.
_ONE_SHOT: Final[Mapping[str, Any]] = {"general_settings": {"store": {"path": ":memory:"}}}


def responses(
    *, config: GatewayConfig | Mapping[str, Any] | str | None = None, **params: Any
) -> Response:
    """Synchronous :func:`aresponses`: runs its own trio loop for the call.

    Raises:
        RuntimeError: called inside a running event loop, which it would block; the message
            says what to call there instead.
    """
    _refuse_inside_an_event_loop()
    return trio.run(partial(aresponses, config=config, **params))


def _refuse_inside_an_event_loop() -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    if library == "trio":
        hint = "`await sluicegate.aresponses(...)`"
    else:
        hint = f"`await asyncio.to_thread(sluicegate.responses, ...)` (running under {library})"
    raise RuntimeError(
        "sluicegate.responses() blocks until the response is done, and this thread is running "
        f"an event loop it would freeze; use {hint} instead."
    )
