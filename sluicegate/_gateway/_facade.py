"""The library face: the :class:`Gateway` that :func:`~sluicegate.open_gateway` yields. Each call
is prepared here and handed to the part that owns it: the request pipeline (``_streams.py``),
background runs (``_background.py``), stored responses (``_stored.py``), files and batches
(``_object_calls.py``). ``_open.py`` wires them together."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import attrs

from .._types import Response
from ..codecs._lifecycle import StreamTracker
from ..errors import InvalidRequestError, NotFoundError, SluicegateError
from ..store import SpendFilter, SpendGroup, SpendLog, SpendTotal, Store
from ._background import Follower
from ._compaction import Compactions
from ._continuation import continue_previous, previous_not_found
from ._conversation_calls import ConversationCalls
from ._host import CrossChannel, Host, gateway_closed, hosted, in_trio
from ._input_tokens import count_input_tokens, count_params
from ._object_calls import ObjectCalls
from ._params import on_end_option, prepare_call
from ._pipeline import Pipeline, run_request
from ._replay import resolve_replayed_state
from ._streams import (
    Receiver,
    ResponseStream,
    Sender,
    cross_twin,
    follow,
    held_stream_twin,
    hold_stream,
    memory_channel,
    open_response_stream,
    stream_twin,
)
from ._websocket import WebSocketUpstream, websocket_upstream

if TYPE_CHECKING:
    from ..actors._health import DeploymentStatistics
    from ..actors._recorder import Recorder
    from ..config import GatewayConfig
    from ..limits import Limits
    from ..runtime._messages import Delivery, PreparedCall
    from ._background import BackgroundRuns
    from ._conversations import ConversationService
    from ._fakes import FakeProviders
    from ._objects import ObjectService
    from ._stored import StoredResponses

__all__ = ["Gateway", "GatewayStatistics"]


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


@attrs.define(eq=False)
class Gateway(ObjectCalls, ConversationCalls):
    """Routes Responses API calls; get one from :func:`open_gateway`.

    Its files and batches calls (``create_file``, ``create_batch``, ...) are
    :class:`~sluicegate._gateway._object_calls.ObjectCalls`'.
    """

    _config: GatewayConfig
    _pipeline: Pipeline
    _store: Store
    _recorder: Recorder
    _fakes: FakeProviders
    _background: BackgroundRuns
    _stored: StoredResponses
    #: Files and batches.
    _objects: ObjectService
    #: The rate limits: keys' (the proxy's) and the deployments' rpm/tpm windows, shared on
    #: Redis or this process's own.
    _limits: Limits
    #: The owner of requests and lookups that name none (library use; the proxy passes keys).
    _owner: str = ""
    #: Foreground requests (background runs count their own).
    _in_flight: int = 0
    _total: int = 0
    #: Where its calls run when it was opened under asyncio (``_host.py``); None under trio.
    _host: Host | None = None
    #: Its ``open_gateway`` block has been left.
    _closed: bool = False
    #: Conversations (``_conversation_calls.py``).
    _conversations: ConversationService = attrs.field(kw_only=True)

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def store(self) -> Store:
        """The event store every response is recorded in."""
        return self._store

    @property
    def limits(self) -> Limits:
        """The rate limits (``router_settings.redis_url``: shared by every instance)."""
        return self._limits

    def mark_closed(self) -> None:
        """Refuse every call from now on (``open_gateway``, on its way out)."""
        self._closed = True

    def hosted_by(self, host: Host) -> None:
        """Run calls made from asyncio in ``host`` (``open_gateway`` under asyncio)."""
        self._host = host

    @property
    def model_names(self) -> list[str]:
        """The configured model groups."""
        return self._pipeline.router.model_names

    def statistics(self) -> GatewayStatistics:
        c = self._pipeline.connector.statistics()
        a = self._pipeline.accountant.statistics()
        r = self._pipeline.router.statistics()
        background = self._background
        return GatewayStatistics(
            requests_in_flight=self._in_flight + background.in_flight,
            requests_total=self._total + background.started,
            background_running=background.running,
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

    @hosted
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
            _, queued = await self._background.start(call, on_end)
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
        if self._closed:
            raise gateway_closed()
        host = self._host
        if host is None or in_trio():
            return self.open_stream(params)
        if params.get("background"):  # a follower: its session pumps it
            return host.open(
                partial(self.open_stream, params), stream_twin, ResponseStream.receive_delivery
            )
        # Batches go straight to the asyncio reader, over a channel of its own.
        channel: CrossChannel[Delivery] = CrossChannel(host.run)
        return host.open(
            partial(self._open_stream, params, None, channel.ends), partial(cross_twin, channel)
        )

    def open_stream(
        self,
        params: Mapping[str, Any],
        *,
        interrupted: Callable[[], SluicegateError | None] | None = None,
    ) -> AbstractAsyncContextManager[ResponseStream]:
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
        return self._open_stream(params, interrupted, memory_channel)

    @asynccontextmanager
    async def _open_stream(
        self,
        params: Mapping[str, Any],
        interrupted: Callable[[], SluicegateError | None] | None,
        channel: Callable[[], tuple[Sender, Receiver]],
    ) -> AsyncIterator[ResponseStream]:
        on_end = on_end_option(params.get("on_end"))
        call = await self._prepare(params, stream=True)
        if call.background:
            live, _ = await self._background.start(call, on_end)
            yield await follow(Follower(live.response_id, live, self._store))
            return
        recording = self._recorder.start(call)
        self._in_flight += 1
        self._total += 1
        try:
            async with open_response_stream(
                self._pipeline, call, recording, interrupted, channel
            ) as events:
                yield events
        finally:
            self._in_flight -= 1

    async def _prepare(self, params: Mapping[str, Any], *, stream: bool) -> PreparedCall:
        pipeline = self._pipeline
        call = prepare_call(params, stream=stream, ids=pipeline.ids, default_owner=self._owner)
        if call.previous is not None:
            call = await continue_previous(
                call,
                store=self._store,
                router=pipeline.router,
                settings=self._config.general_settings.store,
                fakes=self._fakes,
            )
        if call.body.get("conversation") is not None:
            call = await self._conversations.prepare(call)
        return await resolve_replayed_state(
            call, seal=pipeline.seal, store=self._store, router=pipeline.router
        )

    # -- compaction (POST /v1/responses/compact) ------------------------------------------

    @hosted
    async def compact(self, **params: Any) -> dict[str, Any]:
        """Compact a conversation (``POST /v1/responses/compact``; docs/compaction.md).

        A native deployment compacts it itself; for a bridged one the gateway has the model
        summarise it. Either way the answer's ``output`` (the user messages and one
        ``compaction`` item) is what the caller passes as input on its next turn.

        Args:
            params: ``model``, ``input``, ``instructions``, ``previous_response_id`` and the
                other compact parameters, with the library options of :meth:`responses`
                (``owner``, ``spend_logs_metadata``, ``extra_body``, ``timeout``, ...).

        Returns:
            The ``response.compaction`` object (its ``id`` a ``resp_`` ID; not retrievable:
            only its spend row is kept).

        Raises:
            SluicegateError: a bad request (400/404) or an upstream failure (its status).
        """
        compactions = Compactions(
            self._pipeline,
            self._store,
            self._recorder,
            partial(self._prepare, stream=False),
        )
        self._in_flight += 1
        self._total += 1
        try:
            return await compactions.compact(params)
        finally:
            self._in_flight -= 1

    # -- input token counts (POST /v1/responses/input_tokens) -----------------------------

    @hosted
    async def count_input_tokens(self, **params: Any) -> dict[str, Any]:
        """Count the input tokens of a request without running it
        (``POST /v1/responses/input_tokens``; docs/input-tokens.md).

        The parameters are prepared as a create's (``previous_response_id``, ``conversation``
        and replayed state resolved alike) and routed where a create would go; that
        deployment's provider counts: a native upstream's ``input_tokens`` endpoint,
        Anthropic's ``count_tokens``, Gemini's ``countTokens``, vLLM's ``/tokenize``. Nothing
        is recorded and no tokens are spent.

        Args:
            params: ``model``, ``input``, ``instructions``, ``tools``, ``tool_choice``,
                ``previous_response_id``, ``reasoning``, ``text``, ... as for
                :meth:`responses`, with its library options (``owner``, ``extra_body``,
                ``timeout``, ...); ``stream`` and ``background`` are refused.

        Returns:
            ``{"object": "response.input_tokens", "input_tokens": N}``.

        Raises:
            SluicegateError: a bad request (400/404), a provider that cannot count (400
                ``unsupported_parameter``), or the provider's failure (its status).
        """
        call = await self._prepare(count_params(params), stream=False)
        return await count_input_tokens(self._pipeline, call)

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
        if self._closed:
            raise gateway_closed()
        lookup = partial(
            self._stored.get,
            response_id,
            stream=stream,
            starting_after=starting_after,
            include=include,
            extra_headers=extra_headers,
            extra_query=extra_query,
            timeout=timeout,
            owner=owner,
            admin=admin,
        )
        host = self._host
        if host is None or in_trio():
            return await lookup()
        if not stream:
            return await host.call(lookup)
        # The stream is read from asyncio after the call returns: a session holds it.
        opened = cast("Callable[[], Awaitable[ResponseStream]]", lookup)
        held = host.open(
            partial(hold_stream, opened), held_stream_twin, ResponseStream.receive_delivery
        )
        return await held.__aenter__()

    @hosted
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
        return await self._stored.delete(
            response_id, extra_headers=extra_headers, timeout=timeout, owner=owner, admin=admin
        )

    @hosted
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
        return await self._stored.cancel(
            response_id, extra_headers=extra_headers, timeout=timeout, owner=owner, admin=admin
        )

    @hosted
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
        return await self._stored.input_items(
            response_id,
            after=after,
            before=before,
            limit=limit,
            order=order,
            owner=owner,
            admin=admin,
        )

    @hosted
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

    @hosted
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

    # -- WebSocket mode (docs/websocket.md) ------------------------------------------------

    async def websocket_upstream(
        self,
        message: Mapping[str, Any],
        response_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
    ) -> WebSocketUpstream | None:
        """Where a WebSocket-mode message about the stored response ``response_id`` (its
        ``previous_response_id``) is relayed: its deployment's upstream WebSocket, with the
        message's ID made the upstream's; None when that deployment does not offer WebSocket
        mode (``litellm_params.websocket``).

        Raises:
            InvalidRequestError: no such response for this ``owner`` (code
                ``previous_response_not_found``, as a creation's).
        """
        try:
            await self.get_response(response_id, owner=owner, admin=admin)
        except NotFoundError:
            raise previous_not_found(response_id) from None
        return websocket_upstream(self._pipeline, message, response_id)
