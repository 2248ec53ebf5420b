"""Files and batches through the gateway, routed by their IDs like responses.

Creating one names a model group (``model``), which picks an OpenAI or Azure deployment of the
group; afterwards the ID carries the way: ``file-`` and ``batch_`` IDs are encoded like
``resp_`` IDs (docs/design.md §4: authenticated, with the provider, the deployment ID, the
upstream's raw ID and the owner), so every later call reaches the deployment that holds the object
without a lookup, and a forged ID is a plain 404. The store keeps one row per object (``objects``):
its owner (a key sees only its own), the model group, the spend metadata, and the object as last
seen upstream, which is what the list calls return.

A batch runs where its input file is: created from an encoded file ID it goes to that file's
deployment (``model``, if given, must be a group of that deployment: a 400 otherwise). Its
output and error files get IDs of their own, owned by the batch's owner. When the output file
is read to the end, the batch's usage (each line's ``usage``) is priced — at half the
synchronous price, as OpenAI's Batch API bills — and recorded once as the batch's spend row,
with the spend metadata given when the batch was created.

Uploads stream: the file goes upstream as it arrives (a new multipart body around it), never
whole in memory, and at most ``max_file_bytes`` of it.
"""

from __future__ import annotations

import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
)
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from .._types import ResponseStatus
from ..actors._connector import Connector
from ..actors._router import Router
from ..codecs._registry import NATIVE_PROVIDERS
from ..codecs.ids import IdCodec
from ..codecs.multipart import FILE_PART_END, closing, field_part, file_part_head, new_boundary
from ..codecs.openai_responses import build_api_request
from ..config import Deployment, is_in_process_fake
from ..errors import (
    InvalidRequestError,
    NotFoundError,
    RequestTooLargeError,
    StoreIntegrityError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from ..pricing import ModelPrice, PriceTable, TokenUsage, compute_cost
from ..store import Accepted, Ended, ObjectKind, ObjectRow, Routed, Settled, Store
from ._params import RESPONSES_PARAMETERS, checked_int, missing_parameter
from ._uploads import Upload, as_upload, invalid

__all__ = ["BATCH_DISCOUNT", "ObjectService", "call_object_api", "put_view"]

logger = logging.getLogger("sluicegate")

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
)
#: Batches are billed at this fraction of the synchronous price (OpenAI's Batch API: 50%).
BATCH_DISCOUNT = 0.5
#: A batch in one of these states changes no more (its stored view is final).
_BATCH_FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Files a provider account keeps: the providers that serve the Files and Batches APIs.
_FILE_PROVIDERS = NATIVE_PROVIDERS - {"fake"}


@attrs.define(eq=False)
class ObjectService:
    """The files and batches of one gateway (module docstring)."""

    _store: Store
    _router: Router
    _connector: Connector
    _prices: PriceTable
    _files: IdCodec
    _batches: IdCodec
    _resolve_fake: Callable[[Deployment], Awaitable[Deployment]]
    _wall_clock: Callable[[], float]
    _max_file_bytes: int

    # -- routing -------------------------------------------------------------------------

    def deployment_for(self, model: str | None) -> Deployment:
        """The deployment a new file or batch of ``model`` goes to."""
        if model is None:
            candidates = [d for d in self._router.deployments() if d.provider in _FILE_PROVIDERS]
            if len(candidates) == 1:
                return candidates[0]
            raise InvalidRequestError(
                "Missing required parameter: 'model' (the model group whose deployment keeps "
                "the file: a body or form field, ?model= or the x-sluicegate-model header).",
                param="model",
                code="missing_required_parameter",
            )
        if not isinstance(model, str):
            raise invalid("model", "a string")
        group = self._router.group(model)
        if group is None:
            raise NotFoundError(
                f"The model '{model}' does not exist.", param="model", code="model_not_found"
            )
        native = [d for d in group if d.provider in _FILE_PROVIDERS]
        if not native:
            raise InvalidRequestError(
                f"The model '{model}' has no OpenAI or Azure deployment: files and batches "
                "need one.",
                param="model",
            )
        return self._router.pick(native)

    async def _owned(
        self, kind: ObjectKind, object_id: Any, owner: str, admin: bool, param: str
    ) -> tuple[ObjectRow, Deployment]:
        codec = self._files if kind == "file" else self._batches
        noun = "File" if kind == "file" else "Batch"
        if not isinstance(object_id, str):
            raise invalid(param, f"a {kind} ID")
        codec.decode(object_id, param=param)  # forged or altered: a 404 before anything else
        row = await self._store.get_object(object_id)
        if row is None or row.deleted_at is not None or (not admin and row.owner != owner):
            raise NotFoundError(f"No such {noun} object: {object_id}", param=param)
        deployment = self._router.deployment(row.deployment_id)
        if deployment is None:
            raise NotFoundError(
                f"The deployment that holds {object_id} ({row.deployment_id!r}) is no longer "
                "configured.",
                param=param,
            )
        return row, deployment

    # -- files ---------------------------------------------------------------------------

    async def create_file(
        self,
        file: Any,
        *,
        purpose: Any,
        model: str | None,
        owner: str,
        expires_after: Any = None,
        spend_metadata: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        if purpose is None:
            raise missing_parameter("purpose")
        if purpose not in FILE_PURPOSES:
            raise InvalidRequestError(
                f"Invalid 'purpose': {purpose!r}. Expected one of {', '.join(FILE_PURPOSES)}.",
                param="purpose",
                code="invalid_value",
            )
        if file is None:
            raise missing_parameter("file")
        upload = as_upload(file)
        anchor, seconds = _expiry(expires_after, "expires_after")
        fields = [("purpose", str(purpose))]
        if anchor is not None:
            fields += [("expires_after[anchor]", anchor), ("expires_after[seconds]", str(seconds))]
        deployment = self.deployment_for(model)
        boundary = new_boundary()
        # Encoded before any byte goes upstream: a name or type that cannot be put in a form
        # is the caller's 400, not a broken upload.
        try:
            head = [field_part(boundary, n, v) for n, v in fields]
            head.append(file_part_head(boundary, "file", upload.filename, upload.content_type))
        except ValueError as exc:
            raise invalid("file", f"a filename and content type fit for a form ({exc})") from None
        raw = await self._call(
            deployment,
            "POST",
            "files",
            stream_body=self._multipart(boundary, head, upload),
            content_type=f"multipart/form-data; boundary={boundary}",
            extra_headers=extra_headers,
            total_timeout=total_timeout,
        )
        row = ObjectRow(
            id=self._files.encode(
                provider=deployment.provider,
                deployment_id=deployment.id,
                raw_id=_raw_id(raw),
                owner=owner,
            ),
            kind="file",
            owner=owner,
            model=deployment.model_name,
            deployment_id=deployment.id,
            provider=deployment.provider,
            raw_id=_raw_id(raw),
            created_at=self._wall_clock(),
            data={},
            spend_metadata=dict(spend_metadata or {}),
        )
        return await self._put_file(row, raw)

    async def _multipart(
        self, boundary: str, head: list[bytes], upload: Upload
    ) -> AsyncIterator[bytes]:
        for part in head:
            yield part
        limit = self._max_file_bytes
        content = upload.content
        if isinstance(content, bytes):
            if len(content) > limit:
                raise _too_large(limit)
            yield content
        else:
            size = 0
            async for chunk in content:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                if chunk:
                    yield chunk
        yield FILE_PART_END
        yield closing(boundary)

    async def list_files(
        self,
        *,
        owner: str,
        admin: bool = False,
        purpose: str | None = None,
        limit: int = 10000,
        after: str | None = None,
        order: str = "desc",
    ) -> dict[str, Any]:
        rows = await self._list("file", owner, admin, after, limit, order, purpose)
        return _page([row.data for row in rows[:limit]], has_more=len(rows) > limit)

    async def retrieve_file(
        self, file_id: Any, *, owner: str, admin: bool = False, total_timeout: float | None = None
    ) -> dict[str, Any]:
        row, deployment = await self._owned("file", file_id, owner, admin, "file_id")
        raw = await self._call(
            deployment, "GET", f"files/{row.raw_id}", total_timeout=total_timeout
        )
        return await self._put_file(row, raw)

    async def delete_file(
        self, file_id: Any, *, owner: str, admin: bool = False, total_timeout: float | None = None
    ) -> dict[str, Any]:
        row, deployment = await self._owned("file", file_id, owner, admin, "file_id")
        try:
            await self._call(
                deployment, "DELETE", f"files/{row.raw_id}", total_timeout=total_timeout
            )
        except UpstreamStatusError as exc:
            if exc.status_code != 404:  # gone upstream already: ours goes too
                raise
        await self._store.put_object(attrs.evolve(row, deleted_at=self._wall_clock()))
        return {"id": row.id, "object": "file", "deleted": True}

    @asynccontextmanager
    async def open_file_content(
        self, file_id: Any, *, owner: str, admin: bool = False
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The file's bytes as they arrive from the upstream. A batch's output file read to
        its end settles the batch's usage and cost (module docstring)."""
        row, deployment = await self._owned("file", file_id, owner, admin, "file_id")
        deployment = await self._resolved(deployment)
        request = build_api_request(
            deployment, "GET", f"files/{row.raw_id}/content", extra_headers={"accept": "*/*"}
        )
        response, _ = await self._connector.open(
            request, deployment.timeouts, deployment.max_retries, read_body=False
        )
        usage = _BatchUsage() if row.batch_id is not None else None
        chunks = response.aiter_bytes()
        relay = self._relay(chunks, usage, row)
        try:
            yield relay
        finally:
            # A reader that stops early leaves nothing to the garbage collector.
            with trio.CancelScope(shield=True):
                await relay.aclose()
                await chunks.aclose()  # type: ignore[attr-defined]
                await response.aclose()

    async def _relay(
        self, chunks: AsyncIterator[bytes], usage: _BatchUsage | None, row: ObjectRow
    ) -> AsyncGenerator[bytes, None]:
        async for chunk in chunks:
            if usage is not None:
                usage.feed(chunk)
            yield chunk
        if usage is not None and row.batch_id is not None:
            usage.close()
            await self._settle(row.batch_id, usage)

    async def _put_file(self, row: ObjectRow, raw: Any) -> dict[str, Any]:
        return await put_view(self._store, row, raw, "file")

    # -- batches -------------------------------------------------------------------------

    async def create_batch(
        self,
        *,
        input_file_id: Any,
        endpoint: Any,
        completion_window: Any = "24h",
        metadata: Any = None,
        output_expires_after: Any = None,
        model: str | None = None,
        owner: str,
        admin: bool = False,
        spend_metadata: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        total_timeout: float | None = None,
    ) -> dict[str, Any]:
        if input_file_id is None:
            raise missing_parameter("input_file_id")
        if endpoint is None:
            raise missing_parameter("endpoint")
        if endpoint not in BATCH_ENDPOINTS:
            raise InvalidRequestError(
                f"Invalid 'endpoint': {endpoint!r}. Expected one of {', '.join(BATCH_ENDPOINTS)}.",
                param="endpoint",
                code="invalid_value",
            )
        if completion_window != "24h":
            raise InvalidRequestError(
                "Invalid 'completion_window': only '24h' is supported.",
                param="completion_window",
                code="invalid_value",
            )
        if metadata is not None:
            RESPONSES_PARAMETERS["metadata"]("metadata", metadata)
        anchor, seconds = _expiry(output_expires_after, "output_expires_after")
        file_row, deployment = await self._owned(
            "file", input_file_id, owner, admin, "input_file_id"
        )
        if model is not None:
            group = self._router.group(model)
            if group is None:
                raise NotFoundError(
                    f"The model '{model}' does not exist.", param="model", code="model_not_found"
                )
            if all(d.id != deployment.id for d in group):
                raise InvalidRequestError(
                    f"The input file {input_file_id} is kept by a deployment of model "
                    f"'{file_row.model}', not of '{model}': a batch runs where its input file "
                    "is. Upload the file for this model, or omit 'model'.",
                    param="input_file_id",
                )
        body: dict[str, Any] = {
            "input_file_id": file_row.raw_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if metadata is not None:
            body["metadata"] = metadata
        if anchor is not None:
            body["output_expires_after"] = {"anchor": anchor, "seconds": seconds}
        raw = await self._call(
            deployment,
            "POST",
            "batches",
            json=body,
            extra_headers=extra_headers,
            total_timeout=total_timeout,
        )
        raw_id = _raw_id(raw)
        row = ObjectRow(
            id=self._batches.encode(
                provider=deployment.provider,
                deployment_id=deployment.id,
                raw_id=raw_id,
                owner=owner,
            ),
            kind="batch",
            owner=owner,
            model=model or file_row.model,
            deployment_id=deployment.id,
            provider=deployment.provider,
            raw_id=raw_id,
            created_at=self._wall_clock(),
            data={},
            # Without its own, a batch is spent under its input file's metadata.
            spend_metadata=dict(spend_metadata or file_row.spend_metadata),
        )
        return await self._put_batch(row, deployment, raw)

    async def retrieve_batch(
        self, batch_id: Any, *, owner: str, admin: bool = False, total_timeout: float | None = None
    ) -> dict[str, Any]:
        row, deployment = await self._owned("batch", batch_id, owner, admin, "batch_id")
        raw = await self._call(
            deployment, "GET", f"batches/{row.raw_id}", total_timeout=total_timeout
        )
        return await self._put_batch(row, deployment, raw)

    async def cancel_batch(
        self, batch_id: Any, *, owner: str, admin: bool = False, total_timeout: float | None = None
    ) -> dict[str, Any]:
        row, deployment = await self._owned("batch", batch_id, owner, admin, "batch_id")
        raw = await self._call(
            deployment, "POST", f"batches/{row.raw_id}/cancel", total_timeout=total_timeout
        )
        return await self._put_batch(row, deployment, raw)

    async def list_batches(
        self,
        *,
        owner: str,
        admin: bool = False,
        limit: int = 20,
        after: str | None = None,
    ) -> dict[str, Any]:
        """The caller's batches, newest first; those still running are asked for anew."""
        rows = await self._list("batch", owner, admin, after, limit, "desc", None)
        views: list[dict[str, Any]] = [row.data for row in rows[:limit]]

        async def refresh(i: int, row: ObjectRow) -> None:
            deployment = self._router.deployment(row.deployment_id)
            if deployment is None:
                return
            try:
                raw = await self._call(deployment, "GET", f"batches/{row.raw_id}")
            except UpstreamError as exc:
                # One account's hiccup must not fail the whole list: that batch shows as last
                # seen (a retrieve says what is wrong).
                logger.warning("could not refresh batch %s: %s", row.id, exc.message)
                return
            views[i] = await self._put_batch(row, deployment, raw)

        async with trio.open_nursery() as nursery:
            for i, row in enumerate(rows[:limit]):
                if row.data.get("status") not in _BATCH_FINAL:
                    nursery.start_soon(refresh, i, row)
        return _page(views, has_more=len(rows) > limit)

    async def _put_batch(self, row: ObjectRow, deployment: Deployment, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise UpstreamProtocolError("the upstream answered with no batch object")
        view = {**raw, "id": row.id}
        input_raw = raw.get("input_file_id")
        if isinstance(input_raw, str):
            found = await self._store.find_object(deployment.id, input_raw)
            if found is not None:
                view["input_file_id"] = found.id
        for key, purpose in (("output_file_id", "batch_output"), ("error_file_id", "batch_error")):
            file_raw = raw.get(key)
            if isinstance(file_raw, str) and file_raw:
                view[key] = await self._batch_file(row, deployment, file_raw, purpose)
        await self._store.put_object(attrs.evolve(row, data=view))
        return view

    async def _batch_file(
        self, batch: ObjectRow, deployment: Deployment, raw_id: str, purpose: str
    ) -> str:
        """The encoded ID of a batch's output or error file (registered the first time)."""
        found = await self._store.find_object(deployment.id, raw_id)
        if found is not None:
            return found.id
        file_id = self._files.encode(
            provider=deployment.provider,
            deployment_id=deployment.id,
            raw_id=raw_id,
            owner=batch.owner,
        )
        try:
            data = await self._call(deployment, "GET", f"files/{raw_id}")
        except UpstreamStatusError:
            data = None  # listed as far as we know it; a retrieve asks again
        if not isinstance(data, dict):
            data = {"object": "file", "purpose": purpose}
        row = ObjectRow(
            id=file_id,
            kind="file",
            owner=batch.owner,
            model=batch.model,
            deployment_id=deployment.id,
            provider=deployment.provider,
            raw_id=raw_id,
            created_at=self._wall_clock(),
            data={**data, "id": file_id},
            spend_metadata=batch.spend_metadata,
            # Only the output file settles the batch (its lines carry the usage).
            batch_id=batch.id if purpose == "batch_output" else None,
        )
        try:
            await self._store.put_object(row)
        except StoreIntegrityError:  # registered concurrently by another call
            again = await self._store.find_object(deployment.id, raw_id)
            if again is None:
                raise
            return again.id
        return file_id

    async def _settle(self, batch_id: str, usage: _BatchUsage) -> None:
        """Record the batch's usage and cost once, as its spend row."""
        batch = await self._store.get_object(batch_id)
        if batch is None or batch.settled:
            return
        deployment = self._router.deployment(batch.deployment_id)
        fallback = deployment.price if deployment is not None else None
        if deployment is not None and fallback is None:
            fallback = self._prices.lookup(deployment.provider, deployment.model)
        cost: float | None = 0.0
        for model, counts in usage.by_model.items():
            price: ModelPrice | None = None
            if model and deployment is not None and deployment.price is None:
                price = self._prices.lookup(batch.provider, model)
            price = price or fallback
            if price is None:
                cost = None
                break
            cost = (cost or 0.0) + compute_cost(price, counts) * BATCH_DISCOUNT
        now = self._wall_clock()
        data = batch.data
        records = [
            Accepted(
                response_id=batch.id,
                owner=batch.owner,
                model=batch.model,
                params={"object": "batch", "endpoint": data.get("endpoint")},
                input_items=[],
                background=True,
                store=True,
                metadata=dict(data.get("metadata") or {}),
                created_at=batch.created_at,
                spend_metadata=dict(batch.spend_metadata),
            ),
            Routed(
                response_id=batch.id,
                deployment_id=batch.deployment_id,
                provider=batch.provider,
                attempt=0,
                upstream_id=batch.raw_id,
            ),
            Settled(response_id=batch.id, usage=usage.total(), cost=cost),
            Ended(
                response_id=batch.id,
                status=ResponseStatus.COMPLETED,
                error=None,
                response=None,
                completed_at=now,
                ttft=None,
                duration=None,
            ),
        ]
        try:
            await self._store.append(records)
        except StoreIntegrityError:
            return  # settled by a concurrent reader
        await self._store.put_object(attrs.evolve(batch, settled=True))

    # -- plumbing ------------------------------------------------------------------------

    async def _list(
        self,
        kind: ObjectKind,
        owner: str,
        admin: bool,
        after: str | None,
        limit: int,
        order: str,
        purpose: str | None,
    ) -> list[ObjectRow]:
        limit = checked_int("limit", limit, low=1, high=10000)
        if after is not None and not isinstance(after, str):
            raise invalid("after", "an object ID (a string)")
        if order not in ("asc", "desc"):
            raise invalid("order", "'asc' or 'desc'")
        return await self._store.list_objects(
            kind,
            owner=None if admin else owner,
            after=after,
            limit=limit + 1,
            newest_first=order == "desc",
            purpose=purpose,
        )

    async def _resolved(self, deployment: Deployment) -> Deployment:
        if is_in_process_fake(deployment):
            return await self._resolve_fake(deployment)
        return deployment

    async def _call(
        self,
        deployment: Deployment,
        method: str,
        path: str,
        *,
        json: Any = None,
        stream_body: AsyncIterable[bytes] | None = None,
        content_type: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        total_timeout: float | None = None,
    ) -> Any:
        return await call_object_api(
            self._connector,
            await self._resolved(deployment),
            method,
            path,
            json=json,
            stream_body=stream_body,
            content_type=content_type,
            extra_headers=extra_headers,
            total_timeout=total_timeout,
        )


async def call_object_api(
    connector: Connector,
    deployment: Deployment,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: Mapping[str, str | list[str]] | None = None,
    stream_body: AsyncIterable[bytes] | None = None,
    content_type: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    total_timeout: float | None = None,
) -> Any:
    """One call of a native deployment's object API (files, batches, conversations): its JSON
    answer, after the deployment's retries (none for a streamed body, which cannot be sent
    twice), within ``total_timeout`` if given, else the deployment's."""
    content: bytes | AsyncIterable[bytes] | None = stream_body
    if json is not None:
        content, content_type = orjson.dumps(json), "application/json"
    request = build_api_request(
        deployment,
        method,
        path,
        params=params,
        content=content,
        content_type=content_type,
        extra_headers=extra_headers,
    )
    timeouts = deployment.timeouts
    if total_timeout is not None:
        timeouts = attrs.evolve(timeouts, total=total_timeout)
    retries = 0 if stream_body is not None else deployment.max_retries
    return await connector.call_json(request, timeouts, retries)


async def put_view(store: Store, row: ObjectRow, raw: Any, noun: str) -> dict[str, Any]:
    """An upstream's object as it answered, under our ID, kept in its row as last seen."""
    if not isinstance(raw, dict):
        raise UpstreamProtocolError(f"the upstream answered with no {noun} object")
    view = {**raw, "id": row.id}
    await store.put_object(attrs.evolve(row, data=view))
    return view


def _raw_id(raw: Any) -> str:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise UpstreamProtocolError("the upstream's answer names no object ID")
    return str(raw["id"])


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"The file is larger than the gateway's limit of {limit} bytes "
        "(general_settings.max_file_bytes).",
        param="file",
    )


def _expiry(value: Any, param: str) -> tuple[str | None, int | None]:
    """An expiration policy (``{"anchor": "created_at", "seconds": N}``) checked as OpenAI
    takes it (1 hour to 30 days); (None, None) when there is none."""
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        raise invalid(param, "an object with 'anchor' and 'seconds'")
    anchor, seconds = value.get("anchor"), value.get("seconds")
    if anchor != "created_at":
        raise InvalidRequestError(
            f"Invalid '{param}.anchor': only 'created_at' is supported.",
            param=f"{param}.anchor",
            code="invalid_value",
        )
    if isinstance(seconds, str) and seconds.isdigit():
        seconds = int(seconds)  # a form field is text
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 3600 <= seconds <= 2592000:
        raise InvalidRequestError(
            f"Invalid '{param}.seconds': expected an integer from 3600 (1 hour) to "
            "2592000 (30 days).",
            param=f"{param}.seconds",
            code="invalid_value",
        )
    return anchor, seconds


def _page(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@attrs.define(eq=False)
class _BatchUsage:
    """Token counts of a batch's output file (JSON lines), summed by model as it streams by."""

    by_model: dict[str, TokenUsage] = attrs.Factory(dict)
    _rest: bytes = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            self._line(line)

    def close(self) -> None:
        self._line(self._rest)
        self._rest = b""

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            return  # not ours to judge: the caller reads the file as it is
        body = (entry.get("response") or {}).get("body") if isinstance(entry, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("usage"), dict):
            return
        usage = body["usage"]
        model = body.get("model") if isinstance(body.get("model"), str) else ""
        details_in = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
        details_out = (
            usage.get("output_tokens_details") or usage.get("completion_tokens_details") or {}
        )
        counts = TokenUsage(
            input_tokens=_int(usage.get("input_tokens", usage.get("prompt_tokens"))),
            cached_tokens=_int(details_in.get("cached_tokens")),
            output_tokens=_int(usage.get("output_tokens", usage.get("completion_tokens"))),
            reasoning_tokens=_int(details_out.get("reasoning_tokens")),
        )
        seen = self.by_model.get(str(model))
        if seen is not None:
            counts = TokenUsage(
                input_tokens=seen.input_tokens + counts.input_tokens,
                cached_tokens=seen.cached_tokens + counts.cached_tokens,
                output_tokens=seen.output_tokens + counts.output_tokens,
                reasoning_tokens=seen.reasoning_tokens + counts.reasoning_tokens,
            )
        self.by_model[str(model)] = counts

    def total(self) -> dict[str, Any]:
        """The batch's usage in the Responses API's shape."""
        counts = list(self.by_model.values())
        inputs = sum(c.input_tokens for c in counts)
        outputs = sum(c.output_tokens for c in counts)
        return {
            "input_tokens": inputs,
            "input_tokens_details": {
                "cached_tokens": sum(c.cached_tokens for c in counts),
                "cache_write_tokens": 0,
            },
            "output_tokens": outputs,
            "output_tokens_details": {"reasoning_tokens": sum(c.reasoning_tokens for c in counts)},
            "total_tokens": inputs + outputs,
        }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
