"""Responses after their creation: retrieve, delete, cancel, and list their input items.

Who answers. The store decides who may reach a response (its owner, or an admin; anyone else
gets a 404, never a 403) and, for a GET, who answers it:

- the store, for a background response (the gateway ran it: while it runs, as far as it got),
  one a bridged provider or the in-process fake made (their upstream keeps nothing that lasts),
  and one the store holds as ``failed`` or ``cancelled`` — the gateway ended it (mid-stream, at
  a shutdown, its caller left, crash recovery), and its status must be the one its spend row
  shows, whatever the upstream did with it since;
- otherwise the upstream that made it, under the ID it knows, once the store has confirmed the
  response is the caller's. Its opaque state is sealed on the way out, as on a request's.

A DELETE goes upstream too (unless the upstream kept nothing), then leaves a tombstone in the
store: the content removed, the accounting kept. A cancel stops a background run here, or ends
one another process runs in the store first (that process then stops it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._types import Response, ResponseStatus
from ..actors._router import env_deployment_id
from ..actors._stages import seal_output
from ..codecs._registry import is_bridged
from ..codecs.openai_responses import build_resource_request
from ..config import is_in_process_fake
from ..errors import (
    InvalidRequestError,
    NotFoundError,
    SluicegateError,
    StoreIntegrityError,
    UpstreamStatusError,
)
from ..store import Deleted, Ended
from ._continuation import read_conversation
from ._params import checked_int
from ._streams import ResponseStream

if TYPE_CHECKING:
    from ..actors._recorder import Recorder
    from ..codecs.ids import DecodedId
    from ..config import Deployment, StoreSettings
    from ..store import ResponseRow, Store
    from ._background import BackgroundRuns
    from ._fakes import FakeProviders
    from ._pipeline import Pipeline

__all__ = ["StoredResponses"]

logger = logging.getLogger("sluicegate")

#: Statuses the store decides for a response: GET answers them from the store.
_ENDED_BY_THE_GATEWAY = frozenset({ResponseStatus.FAILED, ResponseStatus.CANCELLED})

#: The longest a cancel forwarded to a native upstream may take, retries included (seconds).
UPSTREAM_CANCEL_DEADLINE = 10.0


@attrs.define(eq=False)
class StoredResponses:
    """GET, DELETE, cancel and input items of the responses a gateway made (module docstring).
    ``owner`` None is the gateway's own owner; ``admin`` reaches any response."""

    _pipeline: Pipeline
    _store: Store
    _recorder: Recorder
    _background: BackgroundRuns
    _fakes: FakeProviders
    _settings: StoreSettings
    _owner: str = ""

    async def get(
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
        """A response (``Gateway.get_response``)."""
        if starting_after is not None:
            starting_after = checked_int("starting_after", starting_after)
        decoded, row = await self._owned(response_id, owner, admin)
        if stream:
            replayable = row is not None and row.background
            if not replayable or not await self._background.replayable(response_id):
                raise InvalidRequestError(
                    "Only background responses created with 'stream': true can be streamed again.",
                    param="stream",
                )
            after = -1 if starting_after is None else starting_after
            return ResponseStream(self._background.follow(response_id, after), None)
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
        conversation = body.get("conversation") if isinstance(body, dict) else None
        if isinstance(conversation, dict) and isinstance(conversation.get("id"), str):
            # Likewise its conversation's (docs/conversations.md).
            held = await self._store.find_object(deployment.id, conversation["id"])
            if held is not None and held.kind == "conversation":
                response = response.with_changes(conversation={"id": held.id})
        return response

    async def delete(
        self,
        response_id: str,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
        owner: str | None = None,
        admin: bool = False,
    ) -> dict[str, Any]:
        """Delete a response (``Gateway.delete_response``)."""
        decoded, row = await self._owned(response_id, owner, admin)
        live = self._background.get(response_id)
        if live is not None:
            await self._background.cancel(live)
        if not (is_bridged(decoded.provider) or self._fakes.made(decoded, row)):
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

    async def cancel(
        self,
        response_id: str,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
        owner: str | None = None,
        admin: bool = False,
    ) -> Response:
        """Cancel a background response (``Gateway.cancel_response``)."""
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
        live = self._background.get(response_id)
        running = live is not None or not row.status.is_terminal
        if live is not None:
            await self._background.cancel(live)
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
        if running and fresh.status is ResponseStatus.CANCELLED:
            await self._cancel_upstream(decoded, fresh, extra_headers)
        return await self._stored_response(fresh)

    async def cancel_given_up(self, response_id: str) -> None:
        """Cancel at its native upstream a background response this gateway gave up on (its
        ``background_timeout`` ran out, or so did its reconnects; ``BackgroundRuns``), after
        its end was recorded: the upstream would run it on, and bill it. Its end stands."""
        try:
            row = await self._store.get(response_id)
        except SluicegateError as exc:
            logger.warning("could not cancel background response %s upstream: %s", response_id, exc)
            return
        if row is not None:
            await self._cancel_upstream(self._pipeline.ids.decode(response_id), row, None)

    async def _cancel_upstream(
        self, decoded: DecodedId, row: ResponseRow, extra_headers: Mapping[str, str] | None
    ) -> None:
        """Forward a cancel to the native upstream that runs a background response itself
        (docs/background.md), once its end is recorded here. Best effort, within
        ``UPSTREAM_CANCEL_DEADLINE``: the gateway has stopped following it either way, so a
        failure is logged, not answered."""
        if row.provider is None or is_bridged(row.provider) or row.upstream_id is None:
            return  # a bridged provider's ran here only; no upstream had named it yet
        try:
            deployment, raw_id = self._upstream_of(decoded, row, row.id)
            await self._resource_call(
                deployment,
                "POST",
                raw_id,
                action="cancel",
                extra_headers=extra_headers,
                total_timeout=UPSTREAM_CANCEL_DEADLINE,
            )
        except SluicegateError as exc:
            logger.warning(
                "could not cancel background response %s at its upstream: %s", row.id, exc
            )

    async def input_items(
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
        """A page of a response's input items (``Gateway.list_input_items``)."""
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
            try:
                items = await read_conversation(self._store, row.previous_id, self._settings)
            except InvalidRequestError as exc:
                # The earlier turns were deleted or purged since: list what is left.
                if exc.code != "previous_response_not_found":
                    raise
        items += await self._store.input_items(response_id)
        return _page(items, after=after, before=before, limit=limit, newest_first=order == "desc")

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

    def _answered_by_store(self, decoded: DecodedId, row: ResponseRow) -> bool:
        """Whether GET answers from the store rather than the upstream (module docstring)."""
        return (
            row.background
            or is_bridged(decoded.provider)
            or row.status in _ENDED_BY_THE_GATEWAY
            or self._fakes.made(decoded, row)
        )

    async def _stored_response(self, row: ResponseRow) -> Response:
        """A response from the store (or, while it runs here, as far as it got). Once the
        store holds its end, that end is the answer, even while a run here has yet to notice
        that another process ended it."""
        live = self._background.get(row.id)
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
        if is_in_process_fake(deployment):
            deployment = await self._fakes.resolve(deployment)
        request = build_resource_request(
            deployment, method, raw_id, action=action, params=query, extra_headers=extra_headers
        )
        timeouts = deployment.timeouts
        if total_timeout is not None:
            timeouts = attrs.evolve(timeouts, total=total_timeout)
        return await self._pipeline.connector.call_json(request, timeouts, deployment.max_retries)


def _page(
    items: list[dict[str, Any]],
    *,
    after: str | None,
    before: str | None,
    limit: int,
    newest_first: bool,
) -> dict[str, Any]:
    """One page of a list (the Responses API reference, input_items)."""
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
