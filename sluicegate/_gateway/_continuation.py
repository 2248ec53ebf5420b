"""``previous_response_id``: which earlier response a request may continue, and how.

The store decides: the previous response must be the caller's, stored, ended and not deleted.
A native upstream keeps the conversation itself, so the request names the ID it knows (a
background response's is the one its upstream minted, at the deployment that ran it). A
bridged provider keeps none: the store's chain is the context, read now and bounded by the store
settings. A response the in-process fake made is known to that fake alone: its chain goes as
input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..codecs._bridge import conversation_items
from ..codecs._registry import is_bridged
from ..errors import InvalidRequestError

if TYPE_CHECKING:
    from ..actors._router import Router
    from ..config import StoreSettings
    from ..runtime._messages import PreparedCall
    from ..store import Store
    from ._fakes import FakeProviders

__all__ = ["continue_previous", "previous_not_found", "read_conversation"]


async def continue_previous(
    call: PreparedCall,
    *,
    store: Store,
    router: Router,
    settings: StoreSettings,
    fakes: FakeProviders,
) -> PreparedCall:
    """Check ``previous_response_id`` against the store: it must be the caller's, stored,
    ended, not deleted. A background response is continued under the ID its upstream
    knows, at the deployment that ran it.

    Raises:
        InvalidRequestError: naming ``previous_response_id``: not found (for this caller), not
            stored, or still running.
    """
    assert call.previous is not None and call.previous_response_id is not None
    previous_id = call.previous_response_id
    row = await store.get(previous_id)
    if row is None:
        # Made before the store knew it (another store, a LiteLLM ID): the signed owner
        # decides, and the upstream answers for the rest; a bridged provider has no
        # conversation but ours, so without the row there is nothing to continue.
        if call.previous.owner != call.owner or is_bridged(call.previous.provider):
            raise _previous_not_found(previous_id)
        return call
    if row.deleted or row.purged or row.owner != call.owner:
        raise _previous_not_found(previous_id)
    if not row.store and not (
        # WebSocket mode: the upstream keeps it on the socket it was made on (docs/websocket.md).
        call.sockets is not None and call.sockets.made(row.deployment_id, row.upstream_id)
    ):
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
        previous = attrs.evolve(previous, raw_id=row.upstream_id, deployment_id=row.deployment_id)
    call = attrs.evolve(call, previous=previous)
    if fakes.made(previous, row):
        return await _continue_in_process(call, previous_id, store, settings)
    if router.stored_conversation(call):
        # A bridged provider keeps no conversation: the store's chain is the context
        # (docs/design.md §5), read now, bounded by the store settings.
        history = await read_conversation(store, previous_id, settings)
        call = attrs.evolve(call, history=history)
    return call


async def read_conversation(
    store: Store, response_id: str, settings: StoreSettings
) -> list[dict[str, Any]]:
    """The stored conversation up to and including ``response_id`` (its chain's input and
    output items, oldest first), bounded by the store settings."""
    return await store.conversation(
        response_id,
        max_turns=settings.max_conversation_turns,
        max_bytes=settings.max_conversation_bytes,
    )


async def _continue_in_process(
    call: PreparedCall, previous_id: str, store: Store, settings: StoreSettings
) -> PreparedCall:
    """Continue a response an in-process fake made. That fake knew it in its own process
    only (another worker's, or this one's before a restart, does not), so the chain comes
    from the store and goes as input, as a conversation a bridged provider began goes to
    a native upstream: without the stored items' IDs and reasoning (state only the fake
    that issued it could read). The caller's own input follows unchanged."""
    history = await read_conversation(store, previous_id, settings)
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


def previous_not_found(previous_id: str) -> InvalidRequestError:
    """The creation's refusal of a ``previous_response_id`` it cannot find (or not the
    caller's)."""
    return _previous_not_found(previous_id)


def _previous_not_found(previous_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Previous response with id '{previous_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )
