"""Replayed provider state in a request's input: unsealed, checked, and turned into pins.

Agents replay earlier output as input: reasoning items with ``encrypted_content`` (with
``store: false``, the only way to keep reasoning across turns), items by ID, and
``item_reference`` items. Each of these can be read only by the provider account that made it,
so before a request is routed (:func:`resolve_replayed_state`):

- a sealed ``encrypted_content`` (``codecs/sealed.py``) is checked and replaced by the
  provider's own text, and the deployment it names pins the request; a seal that does not
  verify is a 400 (``invalid_encrypted_content``) naming the item;
- an input item whose ``id`` is an output item the event store holds (an ``item_reference``,
  or a replayed item) pins the request to the deployment that made it; an item of another
  owner's response is a 404, exactly as an unknown one would be upstream;
- a ``compaction`` item the gateway made (``codecs/compaction.py``) is replaced by the summary
  it holds, as a message any provider reads; a native one sent where only bridges serve is a
  400 (none of them can read it);
- when every deployment that may serve the request is a bridge (which reads no native state),
  nothing pins: an ``item_reference`` is resolved from the store into the item itself, and
  sealed state stays sealed (a bridge drops state it cannot read, as for any foreign state).

The router then sends the request to the one deployment every pin allows, or says why it
cannot: state from two accounts is a 400, a pinned deployment that is cooling down or at its
limits is a 503/429 naming the item (strict affinity: no other account can read the state, so
nothing fails over silently).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..actors._router import Router
from ..codecs._registry import is_bridged
from ..codecs.compaction import CompactionSeal, expand_compaction
from ..codecs.sealed import ForgedState, StateSeal
from ..errors import InvalidRequestError, NotFoundError
from ..runtime._messages import Pin, PreparedCall
from ..store import ItemOrigin, Store

__all__ = ["resolve_replayed_state"]


async def resolve_replayed_state(
    call: PreparedCall, *, seal: StateSeal, store: Store, router: Router
) -> PreparedCall:
    """``call`` with its input's sealed state opened and its pins set (module docstring).

    Raises:
        InvalidRequestError: a forged seal.
        NotFoundError: an item of another owner's response.
    """
    call = _expand_history(call, seal)
    items = call.body.get("input")
    if not isinstance(items, list) or not items:
        return call
    bridged = router.bridged_only(call.model)
    pins: dict[str, Pin] = {}
    opened: list[Any] = list(items)
    changed = False
    ids: dict[str, int] = {}
    compaction: CompactionSeal | None = None
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "compaction":
            # The gateway's own compaction becomes its summary, for any provider
            # (codecs/compaction.py); a native one is sealed state like any other.
            compaction = compaction or CompactionSeal.under(seal)
            expanded = expand_compaction(item, i, compaction, bridged=bridged)
            if expanded is not None:
                opened[i] = expanded
                changed = True
                continue
        item_id = item.get("id")
        if isinstance(item_id, str) and item_id:
            ids.setdefault(item_id, i)
        state = item.get("encrypted_content")
        if not isinstance(state, str):
            continue
        try:
            sealed = seal.open(state)
        except ForgedState:
            raise InvalidRequestError(
                f"The encrypted content of input[{i}] was not issued by this gateway or was "
                "altered; replay output items exactly as they were received.",
                param=f"input[{i}].encrypted_content",
                code="invalid_encrypted_content",
            ) from None
        if sealed is None or bridged:
            continue
        opened[i] = {**item, "encrypted_content": sealed.raw}
        changed = True
        pins.setdefault(
            sealed.deployment_id,
            Pin(deployment_id=sealed.deployment_id, param=f"input[{i}].encrypted_content"),
        )
    if ids:
        origins = await store.item_origins(list(ids))
        for item_id, origin in origins.items():
            i = ids[item_id]
            if origin.owner != call.owner:
                raise NotFoundError(
                    f"Item with id '{item_id}' not found.", param=f"input[{i}]", code="not_found"
                )
            reference = _is_reference(items[i])
            if bridged or (origin.provider is not None and is_bridged(origin.provider)):
                if reference:
                    opened[i] = await _stored_item(store, origin, i)
                    changed = True
            elif origin.deployment_id:
                pins.setdefault(origin.deployment_id, _item_pin(origin, i))
    if not changed and not pins:
        return call
    body = {**call.body, "input": opened} if changed else call.body
    return attrs.evolve(call, body=body, pins=(*call.pins, *pins.values()))


def _expand_history(call: PreparedCall, seal: StateSeal) -> PreparedCall:
    """``call`` with the gateway compactions in its stored conversation (the input of an
    earlier turn, kept as the caller sent it) replaced by their summaries, as in its input."""
    history = call.history
    if not history or not any(item.get("type") == "compaction" for item in history):
        return call
    compaction = CompactionSeal.under(seal)
    expanded: list[dict[str, Any]] = []
    for i, item in enumerate(history):
        replaced = None
        if item.get("type") == "compaction":
            # Verified when that turn was made; a native one is left to the bridge as before.
            replaced = expand_compaction(item, i, compaction, bridged=False)
        expanded.append(replaced or item)
    return attrs.evolve(call, history=expanded)


def _is_reference(item: Mapping[str, Any]) -> bool:
    return item.get("type") == "item_reference"


def _item_pin(origin: ItemOrigin, index: int) -> Pin:
    assert origin.deployment_id is not None
    return Pin(
        deployment_id=origin.deployment_id,
        param=f"input[{index}].id",
        verb="stored",
        gone_code="item_not_found",
    )


async def _stored_item(store: Store, origin: ItemOrigin, index: int) -> dict[str, Any]:
    """The output item an ``item_reference`` names, from the store."""
    for item in await store.output_items(origin.response_id):
        if item.get("id") == origin.item_id:
            return item
    # Indexed a moment ago, gone now: deleted or purged in between.
    raise NotFoundError(
        f"Item with id '{origin.item_id}' not found.", param=f"input[{index}]", code="not_found"
    )
