"""Conversations (``/v1/conversations``) through the gateway, and ``conversation`` on create.

A conversation lives in one of two places (docs/conversations.md):

- **Native.** Created naming a model group (``model``) with an OpenAI, Azure or loopback-fake
  deployment, it is created upstream on one of them, and every later call is forwarded there.
  Its ``conv_`` ID is encoded like a ``file-`` ID (docs/design.md §4.1: signed, naming the
  provider, the deployment, the upstream's raw ID and the owner) and owned through an
  ``objects`` row of kind ``conversation``. Its items are the upstream's, passed back as the
  upstream gives them. A response made in it is pinned to its deployment (the model group must
  reach that account: a 400 naming ``conversation`` otherwise) and sent the raw ID: the
  upstream prepends and appends.
- **Held by the gateway** (no model named, or a group with no native deployment; an in-process
  fake is not native: it forgets at a restart). The conversation row and its items are
  ``objects`` rows in the event store: an item is a ``conversation_item`` row whose
  ``data["purpose"]`` names its conversation (so the store pages them) and whose
  ``deployment_id`` is the conversation's namespace (so an item ID is unique in its
  conversation). Row IDs sort in the conversation's order: ``seq`` counts appends (one per
  ``items.create`` call or response), a random token keeps two concurrent appends apart and
  each of them whole, and the index orders the items of one append. A response made in it
  goes to any deployment of its group with the conversation's items before its input (read
  in bounded pages, within the same ``max_conversation_turns``/``max_conversation_bytes`` as a
  ``previous_response_id`` chain, docs/design.md §4.2; an append is a turn); once its end is
  recorded ``completed`` or ``incomplete``, its input and output items are appended. A failed
  or cancelled response appends nothing.

Ownership is as for files: another key's conversation, a forged ID or a deleted one is a 404.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import attrs
import orjson

from .._types import Response, ResponseStatus
from ..codecs._registry import NATIVE_PROVIDERS
from ..errors import (
    InvalidRequestError,
    NotFoundError,
    StoreError,
    StoreIntegrityError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from ..runtime._messages import ConversationTurn, Pin
from ..store import ObjectRow
from ._objects import call_object_api, put_view
from ._params import RESPONSES_PARAMETERS, checked_fields, checked_int, input_items
from ._uploads import invalid

if TYPE_CHECKING:
    from ..actors._connector import Connector
    from ..actors._router import Router
    from ..codecs.ids import IdCodec
    from ..config import Deployment, StoreSettings
    from ..runtime._messages import PreparedCall
    from ..store import Store

__all__ = ["HELD", "MAX_ITEMS_PER_CALL", "ConversationService"]

logger = logging.getLogger("sluicegate")

#: The provider and deployment a conversation the gateway holds names in its ID and row.
HELD: Final = "sluicegate"
#: OpenAI's limit of items added by one create call.
MAX_ITEMS_PER_CALL: Final = 20
#: Items read per query when a held conversation is prepended or deleted.
_PAGE: Final = 100
#: Fields of a create the gateway takes for a conversation it holds.
_HELD_CREATE_FIELDS: Final = frozenset({"items", "metadata", "safety_identifier"})
#: What appends a response's turn to a conversation the gateway holds.
_APPENDING: Final = frozenset({ResponseStatus.COMPLETED, ResponseStatus.INCOMPLETE})


def _namespace(conversation: ObjectRow) -> str:
    """The ``deployment_id`` of a held conversation's item rows."""
    return f"{HELD}:conversation:{conversation.raw_id}"


def _not_found(conversation_id: Any, param: str) -> NotFoundError:
    shown = (
        conversation_id
        if isinstance(conversation_id, str) and len(conversation_id) <= 200
        else "<id>"
    )
    return NotFoundError(f"Conversation with id '{shown}' not found.", param=param)


def _item_not_found(item_id: str) -> NotFoundError:
    shown = item_id if len(item_id) <= 200 else "<id>"
    return NotFoundError(f"Item with id '{shown}' not found.", param="item_id")


@attrs.define(eq=False)
class ConversationService:
    """The conversations of one gateway (module docstring)."""

    _store: Store
    _router: Router
    _connector: Connector
    _ids: IdCodec
    #: Whether a deployment is an in-process fake (it keeps nothing across a restart).
    _in_process: Callable[[Deployment], bool]
    _resolve_fake: Callable[[Deployment], Awaitable[Deployment]]
    _wall_clock: Callable[[], float]
    _settings: StoreSettings

    # -- where a conversation lives ------------------------------------------------------

    def native_deployment(self, model: Any) -> Deployment | None:
        """The deployment a new conversation of ``model`` is created on; None: the gateway
        holds it."""
        if model is None:
            return None
        if not isinstance(model, str):
            raise invalid("model", "a string")
        group = self._router.group(model)
        if group is None:
            raise NotFoundError(
                f"The model '{model}' does not exist.", param="model", code="model_not_found"
            )
        native = [d for d in group if d.provider in NATIVE_PROVIDERS and not self._in_process(d)]
        return self._router.pick(native) if native else None

    async def _owned(
        self, conversation_id: Any, owner: str, admin: bool, param: str
    ) -> tuple[ObjectRow, Deployment | None]:
        """The caller's live conversation and, for a native one, its deployment."""
        if not isinstance(conversation_id, str):
            raise invalid(param, "a conversation ID (a string)")
        try:
            decoded = self._ids.decode(conversation_id, param=param)
        except NotFoundError:
            raise _not_found(conversation_id, param) from None
        if not decoded.signed:
            raise _not_found(conversation_id, param)
        row = await self._store.get_object(conversation_id)
        if (
            row is None
            or row.kind != "conversation"
            or row.deleted_at is not None
            or (not admin and row.owner != owner)
        ):
            raise _not_found(conversation_id, param)
        if row.provider == HELD:
            return row, None
        deployment = self._router.deployment(row.deployment_id)
        if deployment is None:
            raise NotFoundError(
                f"The deployment that holds conversation {conversation_id} "
                f"({row.deployment_id!r}) is no longer configured.",
                param=param,
            )
        return row, deployment

    # -- conversations -------------------------------------------------------------------

    async def create(
        self,
        body: Mapping[str, Any],
        *,
        model: Any,
        owner: str,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/conversations``: upstream on a native deployment of ``model``, else held
        here. ``body`` is the rest of the request (``items``, ``metadata``, ...)."""
        deployment = self.native_deployment(model)
        now = self._wall_clock()
        if deployment is not None:
            raw = await self._call(
                deployment, "POST", "conversations", json=dict(body), total_timeout=total_timeout
            )
            raw_id = _raw_id(raw)
            row = ObjectRow(
                id=self._ids.encode(
                    provider=deployment.provider,
                    deployment_id=deployment.id,
                    raw_id=raw_id,
                    owner=owner,
                ),
                kind="conversation",
                owner=owner,
                model=deployment.model_name,
                deployment_id=deployment.id,
                provider=deployment.provider,
                raw_id=raw_id,
                created_at=now,
                data={},
            )
            return await self._put_view(row, raw)
        checked_fields(body, _HELD_CREATE_FIELDS)
        metadata = _metadata(body.get("metadata"))
        items = _new_items(body.get("items"), "items")
        raw_id = f"conv_{secrets.token_hex(24)}"
        conversation_id = self._ids.encode(
            provider=HELD, deployment_id=HELD, raw_id=raw_id, owner=owner
        )
        row = ObjectRow(
            id=conversation_id,
            kind="conversation",
            owner=owner,
            model=model if isinstance(model, str) else "",
            deployment_id=HELD,
            provider=HELD,
            raw_id=raw_id,
            created_at=now,
            data={
                "id": conversation_id,
                "object": "conversation",
                "created_at": int(now),
                "metadata": metadata,
            },
        )
        await self._store.put_object(row)
        await self._refuse_taken(row, items)
        await self._append(row, items)
        return dict(row.data)

    async def retrieve(
        self,
        conversation_id: Any,
        *,
        owner: str,
        admin: bool = False,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        row, deployment = await self._owned(conversation_id, owner, admin, "conversation_id")
        if deployment is None:
            return dict(row.data)
        raw = await self._call(
            deployment, "GET", f"conversations/{row.raw_id}", total_timeout=total_timeout
        )
        return await self._put_view(row, raw)

    async def update(
        self,
        conversation_id: Any,
        body: Mapping[str, Any],
        *,
        owner: str,
        admin: bool = False,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/conversations/{id}``: its ``metadata`` replaced."""
        row, deployment = await self._owned(conversation_id, owner, admin, "conversation_id")
        if deployment is not None:
            raw = await self._call(
                deployment,
                "POST",
                f"conversations/{row.raw_id}",
                json=dict(body),
                total_timeout=total_timeout,
            )
            return await self._put_view(row, raw)
        checked_fields(body, ("metadata",), required=("metadata",))
        view = {**row.data, "metadata": _metadata(body["metadata"])}
        await self._store.put_object(attrs.evolve(row, data=view))
        return view

    async def delete(
        self,
        conversation_id: Any,
        *,
        owner: str,
        admin: bool = False,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        """``DELETE /v1/conversations/{id}``: upstream too for a native one; a held one's
        items go with it (their content removed)."""
        row, deployment = await self._owned(conversation_id, owner, admin, "conversation_id")
        if deployment is not None:
            try:
                await self._call(
                    deployment, "DELETE", f"conversations/{row.raw_id}", total_timeout=total_timeout
                )
            except UpstreamStatusError as exc:
                if exc.status_code != 404:  # gone upstream already: ours goes too
                    raise
        now = self._wall_clock()
        await self._store.put_object(attrs.evolve(row, deleted_at=now))
        if deployment is None:
            # The conversation is gone first (nothing lists or appends to it any more), then
            # its items' content, a page at a time.
            while True:
                page = await self._items(row, after=None, limit=_PAGE, newest_first=False)
                for item in page:
                    await self._remove(row, item, now)
                if len(page) < _PAGE:
                    break
        return {"id": row.id, "object": "conversation.deleted", "deleted": True}

    # -- items ---------------------------------------------------------------------------

    async def list_items(
        self,
        conversation_id: Any,
        *,
        after: Any = None,
        limit: Any = 20,
        order: Any = "desc",
        include: Any = None,
        owner: str,
        admin: bool = False,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        """``GET /v1/conversations/{id}/items``: a page, ``order`` by position."""
        row, deployment = await self._owned(conversation_id, owner, admin, "conversation_id")
        limit = checked_int("limit", limit, low=1, high=100)
        if order not in ("asc", "desc"):
            raise invalid("order", "'asc' or 'desc'")
        if after is not None and not isinstance(after, str):
            raise invalid("after", "an item ID (a string)")
        includes = _include(include)
        if deployment is not None:
            params: dict[str, str | list[str]] = {"limit": str(limit), "order": order}
            if after is not None:
                params["after"] = after
            if includes:
                params["include[]"] = includes
            page = await self._call(
                deployment,
                "GET",
                f"conversations/{row.raw_id}/items",
                params=params,
                total_timeout=total_timeout,
            )
            return _answered(page, "list of items")
        anchor = None
        if after is not None:
            found = await self._store.find_object(_namespace(row), after)
            if found is None or found.deleted_at is not None:
                raise InvalidRequestError(
                    f"Invalid 'after': no item with id '{after[:200]}' in this conversation.",
                    param="after",
                )
            anchor = found.id
        rows = await self._items(row, after=anchor, limit=limit + 1, newest_first=order == "desc")
        data = [r.data["item"] for r in rows[:limit]]
        return _page(data, has_more=len(rows) > limit)

    async def create_items(
        self,
        conversation_id: Any,
        body: Mapping[str, Any],
        *,
        include: Any = None,
        owner: str,
        admin: bool = False,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/conversations/{id}/items``: the items added, as a list."""
        row, deployment = await self._owned(conversation_id, owner, admin, "conversation_id")
        includes = _include(include)
        if deployment is not None:
            params: dict[str, str | list[str]] = {"include[]": includes} if includes else {}
            page = await self._call(
                deployment,
                "POST",
                f"conversations/{row.raw_id}/items",
                json=dict(body),
                params=params,
                total_timeout=total_timeout,
            )
            return _answered(page, "list of items")
        checked_fields(body, ("items",), required=("items",))
        items = _new_items(body["items"], "items")
        await self._refuse_taken(row, items)
        await self._append(row, items)
        return _page(items, has_more=False)

    async def retrieve_item(
        self,
        conversation_id: Any,
        item_id: Any,
        *,
        include: Any = None,
        owner: str,
        admin: bool = False,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        row, deployment = await self._owned(conversation_id, owner, admin, "conversation_id")
        if not isinstance(item_id, str) or not item_id:
            raise invalid("item_id", "an item ID (a string)")
        includes = _include(include)
        if deployment is not None:
            params: dict[str, str | list[str]] = {"include[]": includes} if includes else {}
            item = await self._call(
                deployment,
                "GET",
                f"conversations/{row.raw_id}/items/{quote(item_id, safe='')}",
                params=params,
                total_timeout=total_timeout,
            )
            return _answered(item, "item")
        found = await self._store.find_object(_namespace(row), item_id)
        if found is None or found.deleted_at is not None:
            raise _item_not_found(item_id)
        item = found.data["item"]
        assert isinstance(item, dict)
        return item

    async def delete_item(
        self,
        conversation_id: Any,
        item_id: Any,
        *,
        owner: str,
        admin: bool = False,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        """``DELETE /v1/conversations/{id}/items/{item_id}``: the conversation, as it is now."""
        row, deployment = await self._owned(conversation_id, owner, admin, "conversation_id")
        if not isinstance(item_id, str) or not item_id:
            raise invalid("item_id", "an item ID (a string)")
        if deployment is not None:
            raw = await self._call(
                deployment,
                "DELETE",
                f"conversations/{row.raw_id}/items/{quote(item_id, safe='')}",
                total_timeout=total_timeout,
            )
            return await self._put_view(row, raw)
        found = await self._store.find_object(_namespace(row), item_id)
        if found is None or found.deleted_at is not None:
            raise _item_not_found(item_id)
        await self._remove(row, found, self._wall_clock())
        return dict(row.data)

    # -- responses in a conversation -----------------------------------------------------

    async def prepare(self, call: PreparedCall) -> PreparedCall:
        """``conversation`` on create: a native one pins the request to its deployment and
        goes up as its raw ID; a held one's items become the request's history, its input is
        kept to append (module docstring).

        Raises:
            NotFoundError: (``conversation``) unknown, forged, deleted or another's.
            InvalidRequestError: (``conversation``) not an ID or ``{"id": ...}``; a held one
                longer than the store's conversation limits.
        """
        value = call.body.get("conversation")
        if value is None:
            return call
        conversation_id = value.get("id") if isinstance(value, Mapping) else value
        if not isinstance(conversation_id, str):
            raise invalid("conversation", "a conversation ID or an object with its 'id'")
        row, deployment = await self._owned(conversation_id, call.owner, False, "conversation")
        if deployment is not None:
            pin = Pin(
                deployment_id=deployment.id,
                param="conversation",
                verb="created",
                gone_code="conversation_not_found",
            )
            turn = ConversationTurn(id=conversation_id, held=False)
            body = {**call.body, "conversation": row.raw_id}
            return attrs.evolve(call, body=body, pins=(pin, *call.pins), conversation=turn)
        history = await self._history(row)
        # The new input as the conversation will keep it: the IDs the store gave it, or new
        # ones with ``store: false`` (whose input the store does not keep).
        items = call.input_items if call.store else input_items(call.body.get("input"))
        turn = ConversationTurn(id=conversation_id, held=True, items=_completed(items))
        body = {k: v for k, v in call.body.items() if k != "conversation"}
        return attrs.evolve(call, body=body, history=history, conversation=turn)

    async def turn_ended(
        self, turn: ConversationTurn, status: ResponseStatus, response: Response | None
    ) -> None:
        """The recorder's hook: a response in a held conversation ended. A completed or
        incomplete one appends its input and output items; other ends append nothing. A
        store failure here is logged, not raised: the response's end is recorded already."""
        if status not in _APPENDING or response is None:
            return
        try:
            row = await self._store.get_object(turn.id)
            if row is None or row.deleted_at is not None:
                return  # deleted while the response ran
            output = response.to_dict().get("output") or []
            items = [*turn.items, *(item for item in output if isinstance(item, dict))]
            fresh = []
            for item in items:
                item_id = item.get("id")
                if not isinstance(item_id, str):
                    item = {**item, "id": f"item_{secrets.token_hex(16)}"}
                elif await self._store.find_object(_namespace(row), item_id) is not None:
                    continue  # already in the conversation (an item the caller sent again)
                fresh.append(item)
            await self._append(row, fresh)
        except StoreError:
            logger.exception("could not append a turn to conversation %s", turn.id)

    # -- the store's side of a held conversation -----------------------------------------

    async def _items(
        self, row: ObjectRow, *, after: str | None, limit: int, newest_first: bool
    ) -> list[ObjectRow]:
        return await self._store.list_objects(
            "conversation_item",
            owner=None,
            after=after,
            limit=limit,
            newest_first=newest_first,
            purpose=row.raw_id,
        )

    async def _refuse_taken(self, row: ObjectRow, items: list[dict[str, Any]]) -> None:
        seen: set[str] = set()
        for i, item in enumerate(items):
            item_id = item["id"]
            taken = item_id in seen
            if not taken:
                found = await self._store.find_object(_namespace(row), item_id)
                taken = found is not None
            if taken:
                raise InvalidRequestError(
                    f"Invalid 'items[{i}].id': the conversation already has an item with id "
                    f"'{item_id[:200]}'.",
                    param=f"items[{i}].id",
                    code="invalid_value",
                )
            seen.add(item_id)

    async def _append(self, row: ObjectRow, items: list[dict[str, Any]]) -> None:
        """Append ``items`` (each with an ``id``) as one turn (module docstring)."""
        if not items:
            return
        last = await self._items(row, after=None, limit=1, newest_first=True)
        seq = _seq_of(last[0].id) + 1 if last else 0
        token = secrets.token_hex(4)
        prefix = f"{HELD}:item:{row.raw_id}:{seq:012d}:{token}"
        for i, item in enumerate(items):
            try:
                await self._store.put_object(
                    ObjectRow(
                        id=f"{prefix}:{i:06d}",
                        kind="conversation_item",
                        owner=row.owner,
                        model=row.model,
                        deployment_id=_namespace(row),
                        provider=HELD,
                        raw_id=item["id"],
                        # Every item of a conversation has its creation time: its row ID
                        # alone orders it.
                        created_at=row.created_at,
                        data={"purpose": row.raw_id, "item": item},
                    )
                )
            except StoreIntegrityError:
                # An item ID the conversation has (two turns raced): it is there once.
                logger.warning("conversation %s has item %s already", row.id, item["id"])

    async def _remove(self, row: ObjectRow, item: ObjectRow, now: float) -> None:
        await self._store.put_object(
            attrs.evolve(item, data={"purpose": row.raw_id}, deleted_at=now)
        )

    async def _history(self, row: ObjectRow) -> list[dict[str, Any]]:
        """A held conversation's items, oldest first, read a page at a time within the
        store's conversation limits (module docstring)."""
        settings = self._settings
        items: list[dict[str, Any]] = []
        turns: set[str] = set()
        size = 0
        after: str | None = None
        while True:
            page = await self._items(row, after=after, limit=_PAGE, newest_first=False)
            for item_row in page:
                turns.add(item_row.id.rpartition(":")[0])
                item = item_row.data["item"]
                size += len(orjson.dumps(item))
                if len(turns) > settings.max_conversation_turns:
                    raise _too_long(
                        f"The conversation has more than {settings.max_conversation_turns} "
                        "turns, the most this gateway continues; raise "
                        "general_settings.store.max_conversation_turns to allow more."
                    )
                if size > settings.max_conversation_bytes:
                    raise _too_long(
                        f"The conversation is larger than {settings.max_conversation_bytes} "
                        "bytes, the most this gateway continues; raise "
                        "general_settings.store.max_conversation_bytes to allow more."
                    )
                items.append(item)
            if len(page) < _PAGE:
                return items
            after = page[-1].id

    # -- plumbing ------------------------------------------------------------------------

    async def _put_view(self, row: ObjectRow, raw: Any) -> dict[str, Any]:
        """A native conversation as the upstream answered, under our ID, kept as last seen."""
        return await put_view(self._store, row, raw, "conversation")

    async def _call(
        self,
        deployment: Deployment,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | list[str]] | None = None,
        total_timeout: float | None = None,
    ) -> Any:
        if self._in_process(deployment):  # pragma: no cover -- never native (module docstring)
            deployment = await self._resolve_fake(deployment)
        return await call_object_api(
            self._connector,
            deployment,
            method,
            path,
            json=json,
            params=params,
            total_timeout=total_timeout,
        )


def _answered(raw: Any, what: str) -> dict[str, Any]:
    """An upstream's JSON answer that must be an object (else a 502 naming ``what``)."""
    if not isinstance(raw, dict):
        raise UpstreamProtocolError(f"the upstream answered with no {what}")
    return raw


def _raw_id(raw: Any) -> str:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise UpstreamProtocolError("the upstream's answer names no conversation ID")
    return str(raw["id"])


def _seq_of(row_id: str) -> int:
    """The append count in an item row's ID (``…:seq:token:index``)."""
    return int(row_id.rsplit(":", 3)[1])


def _metadata(value: Any) -> dict[str, Any]:
    RESPONSES_PARAMETERS["metadata"]("metadata", value)
    return dict(value or {})


def _include(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid("include", "an array of strings")
    return list(value)


def _new_items(value: Any, param: str) -> list[dict[str, Any]]:
    """Items a caller adds to a held conversation, each with an ``id`` (its own or a new
    one), at most :data:`MAX_ITEMS_PER_CALL`."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(param, "an array of items")
    if len(value) > MAX_ITEMS_PER_CALL:
        raise InvalidRequestError(
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{MAX_ITEMS_PER_CALL}, but got an array with length {len(value)} instead.",
            param=param,
            code="array_above_max_length",
        )
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid(f"{param}[{i}]", "an object")
        if item.get("type", "message") == "message" and not isinstance(item.get("role"), str):
            raise InvalidRequestError(
                f"Missing required parameter: '{param}[{i}].role'.",
                param=f"{param}[{i}].role",
                code="missing_required_parameter",
            )
        if "id" in item and (not isinstance(item["id"], str) or not item["id"]):
            raise invalid(f"{param}[{i}].id", "a string")
    return _completed(input_items(value))


def _completed(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as a conversation lists them: a message's string content as one text part,
    its status ``completed``."""
    kept = []
    for item in items:
        if item.get("type") == "message":
            content = item.get("content")
            if isinstance(content, str):
                kind = "output_text" if item.get("role") == "assistant" else "input_text"
                item = {**item, "content": [{"type": kind, "text": content}]}
            item = {**item, "status": item.get("status", "completed")}
        kept.append(item)
    return kept


def _too_long(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="conversation", code="conversation_too_long")


def _page(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
