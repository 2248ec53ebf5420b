"""The conversations calls of the :class:`~sluicegate.Gateway`, which inherits them.

Each checks who calls (``owner``, ``admin``) and hands the call to the gateway's
:class:`~sluicegate._gateway._conversations.ConversationService`, which forwards it to the
deployment that keeps a native conversation or answers from the store for one the gateway
holds (docs/conversations.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError
from ._host import hosted

if TYPE_CHECKING:
    from ._conversations import ConversationService
    from ._host import Host

__all__ = ["ConversationCalls"]


class ConversationCalls:
    """Conversations (``/v1/conversations``) on a gateway."""

    __slots__ = ()

    _conversations: ConversationService
    _owner: str
    _host: Host | None
    _closed: bool

    @hosted
    async def create_conversation(
        self,
        *,
        items: Any = None,
        metadata: Any = None,
        model: str | None = None,
        owner: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """Create a conversation (``POST /v1/conversations``).

        Args:
            items: up to 20 initial items (Responses input items).
            metadata: up to 16 string pairs.
            model: a model group with an OpenAI or Azure deployment creates the conversation
                there (native); without one, or with a group that has none, the gateway holds
                it in its store.
            extra_body: more fields of the create, sent as they are to a native upstream.

        Returns:
            The conversation object; its ``id`` a sluicegate ``conv_`` ID.
        """
        body: dict[str, Any] = dict(extra_body or {})
        if items is not None:
            body["items"] = items
        if metadata is not None:
            body["metadata"] = metadata
        return await self._conversations.create(
            body, model=model, owner=self._caller(owner), total_timeout=timeout
        )

    @hosted
    async def retrieve_conversation(
        self,
        conversation_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """A conversation (``GET /v1/conversations/{id}``).

        Raises:
            NotFoundError: unknown, forged, deleted, or not the caller's.
        """
        return await self._conversations.retrieve(
            conversation_id, owner=self._caller(owner), admin=admin, total_timeout=timeout
        )

    @hosted
    async def update_conversation(
        self,
        conversation_id: str,
        *,
        metadata: Any,
        owner: str | None = None,
        admin: bool = False,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Replace a conversation's ``metadata`` (``POST /v1/conversations/{id}``)."""
        body = {**(extra_body or {}), "metadata": metadata}
        return await self._conversations.update(
            conversation_id, body, owner=self._caller(owner), admin=admin, total_timeout=timeout
        )

    @hosted
    async def delete_conversation(
        self,
        conversation_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Delete a conversation (``DELETE /v1/conversations/{id}``), upstream too for a
        native one; its items go with it.

        Returns:
            ``{"id": ..., "object": "conversation.deleted", "deleted": True}``.
        """
        return await self._conversations.delete(
            conversation_id, owner=self._caller(owner), admin=admin, total_timeout=timeout
        )

    @hosted
    async def list_conversation_items(
        self,
        conversation_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
        include: list[str] | None = None,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """A page of a conversation's items (``GET /v1/conversations/{id}/items``).

        Args:
            after: an item ID: the items after it in ``order``. limit: 1 to 100.
            order: ``"desc"`` (newest first, the default) or ``"asc"``.
            include: passed to a native upstream; a held conversation returns its items as
                they were stored.
        """
        return await self._conversations.list_items(
            conversation_id,
            after=after,
            limit=limit,
            order=order,
            include=include,
            owner=self._caller(owner),
            admin=admin,
            total_timeout=timeout,
        )

    @hosted
    async def create_conversation_items(
        self,
        conversation_id: str,
        *,
        items: Any,
        include: list[str] | None = None,
        owner: str | None = None,
        admin: bool = False,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Add up to 20 items to a conversation (``POST /v1/conversations/{id}/items``).

        Returns:
            The items added, as a list object.
        """
        body = {**(extra_body or {}), "items": items}
        return await self._conversations.create_items(
            conversation_id,
            body,
            include=include,
            owner=self._caller(owner),
            admin=admin,
            total_timeout=timeout,
        )

    @hosted
    async def retrieve_conversation_item(
        self,
        conversation_id: str,
        item_id: str,
        *,
        include: list[str] | None = None,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """One item of a conversation (``GET /v1/conversations/{id}/items/{item_id}``)."""
        return await self._conversations.retrieve_item(
            conversation_id,
            item_id,
            include=include,
            owner=self._caller(owner),
            admin=admin,
            total_timeout=timeout,
        )

    @hosted
    async def delete_conversation_item(
        self,
        conversation_id: str,
        item_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Remove an item from a conversation
        (``DELETE /v1/conversations/{id}/items/{item_id}``).

        Returns:
            The conversation object.
        """
        return await self._conversations.delete_item(
            conversation_id, item_id, owner=self._caller(owner), admin=admin, total_timeout=timeout
        )

    def _caller(self, owner: str | None) -> str:
        if owner is not None and not isinstance(owner, str):
            raise InvalidRequestError("'owner' must be a string.", param="owner")
        return self._owner if owner is None else owner
