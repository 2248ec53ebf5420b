"""The files and batches calls of the :class:`~sluicegate.Gateway`, which inherits them.

Each checks who calls (``owner``, ``admin``) and the spend metadata, and hands the call to the
gateway's :class:`~sluicegate._gateway._objects.ObjectService`, which forwards it to the
deployment that keeps the object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError
from ._host import PumpedIterator, gateway_closed, hosted, in_trio, next_of
from ._uploads import invalid

if TYPE_CHECKING:
    from ._host import Host, Session
    from ._objects import ObjectService

__all__ = ["ObjectCalls"]


class ObjectCalls:
    """Files (``/v1/files``) and batches (``/v1/batches``) on a gateway."""

    __slots__ = ()

    _objects: ObjectService
    #: Who calls when a call names no ``owner``.
    _owner: str
    _host: Host | None

    _closed: bool

    @property
    def host(self) -> Host | None:
        """The asyncio loop's trio guest that runs this gateway's calls (``open_gateway``
        under asyncio), or None: opened under trio."""
        return self._host

    @property
    def closed(self) -> bool:
        """Whether its ``open_gateway`` block has been left: every call then raises
        ``ServiceUnavailableError``."""
        return self._closed

    @hosted
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
        return await self._objects.create_file(
            file,
            purpose=purpose,
            model=model,
            owner=self._owner_of(owner),
            expires_after=expires_after,
            spend_metadata=spend_metadata_of(spend_logs_metadata, litellm_metadata),
            extra_headers=extra_headers,
            total_timeout=timeout,
        )

    @hosted
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
        return await self._objects.list_files(
            owner=self._owner_of(owner),
            admin=admin,
            purpose=purpose,
            limit=limit,
            after=after,
            order=order,
        )

    @hosted
    async def retrieve_file(
        self,
        file_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """A file (``GET /v1/files/{id}``), from the deployment that keeps it."""
        return await self._objects.retrieve_file(
            file_id, owner=self._owner_of(owner), admin=admin, total_timeout=timeout
        )

    @hosted
    async def delete_file(
        self,
        file_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """Delete a file (``DELETE /v1/files/{id}``), upstream and here."""
        return await self._objects.delete_file(
            file_id, owner=self._owner_of(owner), admin=admin, total_timeout=timeout
        )

    def open_file_content(
        self, file_id: str, *, owner: str | None = None, admin: bool = False
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """``async with gw.open_file_content(id) as chunks:`` the file's bytes as they arrive
        (``GET /v1/files/{id}/content``). Reading a batch's output file to its end records
        the batch's usage and cost."""
        if self._closed:
            raise gateway_closed()
        owner = self._owner_of(owner)
        host = self.host
        if host is None or in_trio():
            return self._objects.open_file_content(file_id, owner=owner, admin=admin)
        return host.open(
            partial(self._objects.open_file_content, file_id, owner=owner, admin=admin),
            _chunks_twin,
            next_of,
        )

    @hosted
    async def file_content(
        self, file_id: str, *, owner: str | None = None, admin: bool = False
    ) -> bytes:
        """The whole content of a file (see :meth:`open_file_content` to stream it)."""
        async with self.open_file_content(file_id, owner=owner, admin=admin) as chunks:
            return b"".join([chunk async for chunk in chunks])

    @hosted
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
        return await self._objects.create_batch(
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

    @hosted
    async def retrieve_batch(
        self,
        batch_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """A batch (``GET /v1/batches/{id}``), with its files' sluicegate IDs."""
        return await self._objects.retrieve_batch(
            batch_id, owner=self._owner_of(owner), admin=admin, total_timeout=timeout
        )

    @hosted
    async def cancel_batch(
        self,
        batch_id: str,
        *,
        owner: str | None = None,
        admin: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 -- the OpenAI SDK's per-call option
    ) -> dict[str, Any]:
        """Cancel a batch (``POST /v1/batches/{id}/cancel``)."""
        return await self._objects.cancel_batch(
            batch_id, owner=self._owner_of(owner), admin=admin, total_timeout=timeout
        )

    @hosted
    async def list_batches(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
        owner: str | None = None,
        admin: bool = False,
    ) -> dict[str, Any]:
        """The caller's batches (``GET /v1/batches``), newest first; running ones refreshed."""
        return await self._objects.list_batches(
            owner=self._owner_of(owner), admin=admin, limit=limit, after=after
        )

    def _owner_of(self, owner: str | None) -> str:
        if owner is not None and not isinstance(owner, str):
            raise InvalidRequestError("'owner' must be a string.", param="owner")
        return self._owner if owner is None else owner


def _chunks_twin(
    session: Session[AsyncIterator[bytes]], chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    return PumpedIterator(session)


def spend_metadata_of(spend_logs_metadata: Any, litellm_metadata: Any) -> dict[str, Any]:
    """The caller's spend metadata: the argument, else LiteLLM's ``litellm_metadata`` field."""
    name = "spend_logs_metadata"
    value = spend_logs_metadata
    if value is None and litellm_metadata is not None:
        if not isinstance(litellm_metadata, Mapping):
            raise invalid("litellm_metadata", "an object")
        value = litellm_metadata.get("spend_logs_metadata")
        name = "litellm_metadata.spend_logs_metadata"
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid(name, "a JSON object")
    return dict(value)
