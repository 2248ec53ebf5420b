"""A fake OpenAI Files + Batches API upstream: one instance is one provider account.

It speaks the wire format of OpenAI's Files (``/files``) and Batches (``/batches``) APIs, under
both path families a gateway may use:

- OpenAI: ``{api_base}/files``, ``{api_base}/batches``, with ``api_base`` ending in ``/v1``;
- Azure OpenAI: ``{endpoint}/openai/files?api-version=...`` (the ``api-version`` is required, as
  on Azure) and the v1 route ``{endpoint}/openai/v1/files`` (no ``api-version``).

Keys go in ``Authorization: Bearer <key>`` (OpenAI) or ``api-key: <key>`` (Azure). Batches do
not run by themselves: a test calls :meth:`FakeFilesUpstream.complete`, which writes the output
file (and an error file, if asked) and marks the batch ``completed``.

Like the fakes of ``tests/bridge_fakes.py``, the answers come from one synchronous function
(:meth:`FakeFilesUpstream.handle`) and are served two ways:

- :func:`mock_transport` over ``httpx.MockTransport`` (unit tests, autojump clock);
- :func:`serve_files_loopback` on a real 127.0.0.1 socket: HTTP/1.1 with keep-alive, request
  bodies with ``Content-Length`` or ``Transfer-Encoding: chunked``.

Faults (:meth:`FakeFilesUpstream.fail_next`, :meth:`FakeFilesUpstream.reset_next`) are queued
and consumed one per request, in order.
"""

from __future__ import annotations

import contextlib
import email.message
import email.utils
import http
import random
import string
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import attrs
import httpx
import orjson
import trio

from sluicegate.fake._http import (
    LAST_CHUNK,
    MAX_BODY,
    MAX_HEAD,
    BadRequest,
    chunk,
    parse_head,
    response_head,
)

from .mock_upstream import ClosingStream

__all__ = [
    "BATCH_ENDPOINTS",
    "FILE_PURPOSES",
    "FakeFilesUpstream",
    "FilesReply",
    "RecordedRequest",
    "StoredBatch",
    "StoredFile",
    "mock_transport",
    "serve_files_loopback",
]

#: What ``POST /files`` accepts as ``purpose``.
FILE_PURPOSES: Final = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
#: What ``POST /batches`` accepts as ``endpoint``.
BATCH_ENDPOINTS: Final = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
)

_DAY: Final = 24 * 60 * 60
#: Files of purpose ``batch`` expire after 30 days unless told otherwise.
_BATCH_FILE_TTL: Final = 30 * _DAY
_MIN_TTL: Final = 3600
_MAX_TTL: Final = 30 * _DAY
_ALNUM: Final = string.ascii_letters + string.digits
_TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request as the fake received it (before faults, routing or auth)."""

    method: str
    #: The path as sent, prefix included (``/v1/files``, ``/openai/files``, ...).
    path: str
    #: The query string's parameters (the last value of a repeated one).
    query: dict[str, str]
    #: Lower-cased names.
    headers: dict[str, str]
    body: bytes


@attrs.frozen(kw_only=True)
class FilesReply:
    """An answer: the status, the headers and the body in the chunks the network delivers."""

    status: int
    headers: dict[str, str]
    chunks: list[bytes]
    #: Send the body chunked (the file content endpoint), not with ``Content-Length``.
    streamed: bool = False
    #: Break the connection instead of answering.
    reset: bool = False


@attrs.define(eq=False, kw_only=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    expires_at: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@attrs.define(eq=False, kw_only=True)
class StoredBatch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None
    #: Seconds after creation the output and error files expire (``output_expires_after``).
    output_ttl: int | None = None
    status: str = "validating"
    errors: dict[str, Any] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    model: str | None = None
    usage: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": self.errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
            "model": self.model,
            "usage": self.usage,
        }


@attrs.frozen
class _Fault:
    status: int | None
    body: Mapping[str, Any] | bytes | None = None
    headers: Mapping[str, str] = attrs.Factory(dict)
    reset: bool = False


class _Error(Exception):
    """An OpenAI error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {
            "error": {"message": message, "type": type, "param": param, "code": code}
        }


def _missing(param: str) -> _Error:
    return _Error(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _no_such_file(file_id: str, *, status: int = 404, param: str = "id") -> _Error:
    return _Error(status, f"No such File object: {file_id}", param=param)


@attrs.define(eq=False)
class FakeFilesUpstream:
    """One provider account's files and batches, served over HTTP."""

    #: The key requests must carry (``Authorization: Bearer`` or ``api-key``); None: any.
    api_key: str | None = None
    #: Wall-clock seconds for ``created_at`` and friends.
    clock: Callable[[], float] = time.time
    #: Seeds the ids (None: random).
    seed: int | None = None
    #: The usage of every request :meth:`complete` answers.
    input_tokens: int = 10
    output_tokens: int = 5
    #: File content is streamed in chunks of this size.
    content_chunk_size: int = 64 * 1024
    files: dict[str, StoredFile] = attrs.field(init=False, factory=dict)
    batches: dict[str, StoredBatch] = attrs.field(init=False, factory=dict)
    requests: list[RecordedRequest] = attrs.field(init=False, factory=list)
    #: Connections the loopback server accepted.
    connections: int = attrs.field(init=False, default=0)
    _faults: list[_Fault] = attrs.field(init=False, factory=list)
    _rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # -- test-side controls ---------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        body: Mapping[str, Any] | bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The next request gets ``status`` with ``body`` (default: OpenAI's error body for the
        status) and ``headers`` (e.g. ``{"retry-after": "1"}`` on a 429)."""
        self._faults.append(_Fault(status, body, dict(headers or {})))

    def reset_next(self) -> None:
        """The next request's connection breaks before any answer (``httpx.ReadError`` over
        the mock transport, a TCP reset on the socket)."""
        self._faults.append(_Fault(None, reset=True))

    def add_file(
        self, data: bytes, *, purpose: str = "batch", filename: str = "input.jsonl"
    ) -> str:
        """Store a file as if uploaded; returns its id."""
        return self._store_file(data, purpose=purpose, filename=filename).id

    def complete(self, batch_id: str, *, fail_custom_ids: Collection[str] = ()) -> dict[str, Any]:
        """Run batch ``batch_id`` now; returns its batch object.

        Every input line is answered (a Responses / chat completion / embeddings / completion
        object with this fake's usage) into an output file, except those whose ``custom_id`` is
        in ``fail_custom_ids``: they go to an error file with a 400 answer. An input file that
        does not validate (bad JSON, a missing field, a ``url`` other than the batch's
        endpoint, a repeated ``custom_id``) fails the batch instead, with ``errors``.

        Raises:
            KeyError: no such batch.
            ValueError: the batch is not ``validating`` or ``in_progress``.
        """
        batch = self.batches[batch_id]
        if batch.status not in ("validating", "in_progress"):
            raise ValueError(f"batch {batch_id} is {batch.status}; cannot complete it")
        now = self._now()
        source = self.files.get(batch.input_file_id)
        requests, errors = _parse_input(source.data if source else b"", batch.endpoint)
        if source is None:
            errors = [_line_error("file_not_found", "The input file was deleted.", None)]
        if errors:
            batch.status = "failed"
            batch.failed_at = now
            batch.errors = {"object": "list", "data": errors}
            return batch.to_json()
        batch.in_progress_at = batch.in_progress_at or now
        batch.finalizing_at = now
        out: list[bytes] = []
        failed: list[bytes] = []
        totals = {"input": 0, "output": 0}
        for request in requests:
            custom_id = request["custom_id"]
            if custom_id in fail_custom_ids:
                answer = _Error(400, f"Injected failure of request {custom_id}.")
                line = self._output_line(custom_id, 400, answer.body)
                failed.append(orjson.dumps(line) + b"\n")
                continue
            body, input_tokens, output_tokens = self._answer(batch.endpoint, request["body"])
            totals["input"] += input_tokens
            totals["output"] += output_tokens
            out.append(orjson.dumps(self._output_line(custom_id, 200, body)) + b"\n")
            if batch.model is None:
                batch.model = body.get("model")
        if out:
            batch.output_file_id = self._store_output(batch, b"".join(out), "output").id
        if failed:
            batch.error_file_id = self._store_output(batch, b"".join(failed), "error").id
        batch.status = "completed"
        batch.completed_at = now
        batch.total = len(requests)
        batch.completed = len(out)
        batch.failed = len(failed)
        batch.usage = {
            "input_tokens": totals["input"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": totals["output"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": totals["input"] + totals["output"],
        }
        return batch.to_json()

    # -- the HTTP API ---------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> FilesReply:
        """Answer one request; ``target`` is the path and query, ``headers`` lower-cased."""
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.requests.append(
            RecordedRequest(
                method=method, path=parts.path, query=query, headers=dict(headers), body=body
            )
        )
        if self._faults:
            fault = self._faults.pop(0)
            if fault.reset:
                return FilesReply(status=0, headers={}, chunks=[], reset=True)
            assert fault.status is not None
            return self._fault_reply(fault.status, fault.body, fault.headers)
        try:
            return self._route(method, parts.path, query, headers, body)
        except _Error as error:
            return self._json(error.status, error.body)

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> FilesReply:
        if path.startswith("/openai/v1/"):
            rest = path.removeprefix("/openai/v1")
        elif path.startswith("/openai/"):
            if "api-version" not in query:
                # What Azure answers for a path without its api-version.
                return self._json(404, {"error": {"code": "404", "message": "Resource not found"}})
            rest = path.removeprefix("/openai")
        elif path.startswith("/v1/"):
            rest = path.removeprefix("/v1")
        else:
            raise _invalid_url(method, path)
        self._authenticate(headers)
        segments = rest.strip("/").split("/")
        match method, segments:
            case "POST", ["files"]:
                return self._json(200, self._upload(headers.get("content-type", ""), body))
            case "GET", ["files"]:
                return self._json(200, self._list_files(query))
            case "GET", ["files", file_id]:
                return self._json(200, self._file(file_id).to_json())
            case "DELETE", ["files", file_id]:
                self._file(file_id)
                del self.files[file_id]
                return self._json(200, {"id": file_id, "object": "file", "deleted": True})
            case "GET", ["files", file_id, "content"]:
                return self._content(self._file(file_id))
            case "POST", ["batches"]:
                return self._json(200, self._create_batch(body))
            case "GET", ["batches"]:
                return self._json(200, self._list_batches(query))
            case "GET", ["batches", batch_id]:
                return self._json(200, self._read_batch(batch_id).to_json())
            case "POST", ["batches", batch_id, "cancel"]:
                return self._json(200, self._cancel(batch_id))
        raise _invalid_url(method, path)

    def _authenticate(self, headers: dict[str, str]) -> None:
        if self.api_key is None:
            return
        key = headers.get("api-key")
        if key is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        if key is None:
            raise _Error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). "
                "You can obtain an API key from https://platform.openai.com/account/api-keys.",
            )
        if key != self.api_key:
            masked = f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}" if len(key) > 8 else "****"
            raise _Error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    # -- files ------------------------------------------------------------------------------

    def _upload(self, content_type: str, body: bytes) -> dict[str, Any]:
        kind, params = _header_params(content_type)
        if kind != "multipart/form-data" or not params.get("boundary"):
            raise _Error(
                400,
                "Invalid Content-Type header; expected multipart/form-data with a boundary.",
            )
        try:
            parts = _parse_multipart(body, params["boundary"])
        except ValueError as error:
            raise _Error(400, f"Malformed multipart body: {error}.") from None
        fields = {name: (filename, data) for name, filename, data in parts}
        if "purpose" not in fields:
            raise _missing("purpose")
        purpose = fields["purpose"][1].decode("utf-8", "replace")
        if purpose not in FILE_PURPOSES:
            raise _Error(
                400,
                f"'{purpose}' is not one of {list(FILE_PURPOSES)} - 'purpose'",
                param="purpose",
                code="invalid_value",
            )
        if "file" not in fields:
            raise _missing("file")
        filename, data = fields["file"]
        if filename is None:
            raise _Error(400, "The 'file' field must be a file upload.", param="file")
        ttl: int | None = _BATCH_FILE_TTL if purpose == "batch" else None
        if "expires_after[anchor]" in fields or "expires_after[seconds]" in fields:
            anchor = fields.get("expires_after[anchor]", (None, b""))[1].decode()
            seconds = fields.get("expires_after[seconds]", (None, b""))[1].decode()
            ttl = _expiry("expires_after", anchor, seconds)
        stored = self._store_file(data, purpose=purpose, filename=filename, ttl=ttl)
        return stored.to_json()

    def _list_files(self, query: dict[str, str]) -> dict[str, Any]:
        limit = _int_param(query, "limit", 10000, 1, 10000)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _Error(400, f"Invalid value for 'order': {order!r}.", param="order")
        files = list(self.files.values())
        if "purpose" in query:
            files = [f for f in files if f.purpose == query["purpose"]]
        if order == "desc":
            files.reverse()
        return _page([f.to_json() for f in files], query.get("after"), limit, "File")

    def _file(self, file_id: str) -> StoredFile:
        if file_id not in self.files:
            raise _no_such_file(file_id)
        return self.files[file_id]

    def _content(self, stored: StoredFile) -> FilesReply:
        size = self.content_chunk_size
        pieces = [stored.data[i : i + size] for i in range(0, len(stored.data), size)]
        return FilesReply(
            status=200,
            headers={
                "content-type": "application/octet-stream",
                "content-disposition": f'attachment; filename="{stored.filename}"',
                **self._common_headers(),
            },
            chunks=pieces,
            streamed=True,
        )

    def _store_file(
        self, data: bytes, *, purpose: str, filename: str, ttl: int | None = None
    ) -> StoredFile:
        now = self._now()
        file_id = "file-" + "".join(self._rng.choices(_ALNUM, k=24))
        stored = StoredFile(
            id=file_id,
            filename=filename,
            purpose=purpose,
            data=data,
            created_at=now,
            expires_at=None if ttl is None else now + ttl,
        )
        self.files[file_id] = stored
        return stored

    # -- batches ----------------------------------------------------------------------------

    def _create_batch(self, body: bytes) -> dict[str, Any]:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON.)",
            ) from None
        if not isinstance(request, dict):
            raise _Error(400, "The request body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in request:
                raise _missing(name)
        input_file_id = request["input_file_id"]
        endpoint = request["endpoint"]
        window = request["completion_window"]
        if endpoint not in BATCH_ENDPOINTS:
            raise _Error(
                400,
                f"Invalid value for 'endpoint': {endpoint!r}. Supported values are: "
                f"{', '.join(BATCH_ENDPOINTS)}.",
                param="endpoint",
                code="invalid_value",
            )
        if window != "24h":
            raise _Error(
                400,
                f"Invalid value for 'completion_window': {window!r}. Supported values are: '24h'.",
                param="completion_window",
                code="invalid_value",
            )
        source = self.files.get(input_file_id) if isinstance(input_file_id, str) else None
        if source is None:
            raise _no_such_file(str(input_file_id), status=400, param="input_file_id")
        if source.purpose != "batch":
            raise _Error(
                400,
                f"The input file {input_file_id} must have purpose 'batch', not "
                f"'{source.purpose}'.",
                param="input_file_id",
                code="invalid_value",
            )
        metadata = request.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict)
            and len(metadata) <= 16
            and all(isinstance(v, str) for v in metadata.values())
        ):
            raise _Error(400, "Invalid 'metadata'.", param="metadata", code="invalid_value")
        output_ttl = None
        if (expires := request.get("output_expires_after")) is not None:
            if not isinstance(expires, dict):
                raise _Error(400, "Invalid 'output_expires_after'.", param="output_expires_after")
            output_ttl = _expiry(
                "output_expires_after", expires.get("anchor"), expires.get("seconds")
            )
        now = self._now()
        batch = StoredBatch(
            id=f"batch_{self._rng.getrandbits(128):032x}",
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=window,
            created_at=now,
            expires_at=now + _DAY,
            metadata=metadata,
            output_ttl=output_ttl,
            total=sum(1 for line in source.data.splitlines() if line.strip()),
        )
        self.batches[batch.id] = batch
        return batch.to_json()

    def _read_batch(self, batch_id: str) -> StoredBatch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise _Error(404, f"No batch found with id '{batch_id}'.", param="id")
        if batch.status == "cancelling":
            # A cancellation settles by the next look.
            batch.status = "cancelled"
            batch.cancelled_at = self._now()
        return batch

    def _list_batches(self, query: dict[str, str]) -> dict[str, Any]:
        limit = _int_param(query, "limit", 20, 1, 100)
        batches = [self._read_batch(b) for b in reversed(self.batches)]
        return _page([b.to_json() for b in batches], query.get("after"), limit, "Batch")

    def _cancel(self, batch_id: str) -> dict[str, Any]:
        batch = self._read_batch(batch_id)
        if batch.status in _TERMINAL or batch.status == "finalizing":
            raise _Error(
                400, f"Cannot cancel a batch with status '{batch.status}'.", code="invalid_state"
            )
        batch.status = "cancelling"
        batch.cancelling_at = self._now()
        return batch.to_json()

    def _store_output(self, batch: StoredBatch, data: bytes, kind: str) -> StoredFile:
        return self._store_file(
            data, purpose="batch_output", filename=f"{batch.id}_{kind}.jsonl", ttl=batch.output_ttl
        )

    def _output_line(self, custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"batch_req_{self._rng.getrandbits(128):032x}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": self._hex(32), "body": body},
            "error": None,
        }

    def _answer(self, endpoint: str, request: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
        """The body answering one batched request, and its input and output tokens."""
        now = self._now()
        model = request.get("model")
        text = "This is a test."
        inp, out = self.input_tokens, self.output_tokens
        if endpoint == "/v1/responses":
            ids = (self._hex(48), self._hex(48))
            return _response_object(*ids, now, model, text, request, inp, out), inp, out
        if endpoint == "/v1/chat/completions":
            chat: dict[str, Any] = {
                "id": "chatcmpl-" + "".join(self._rng.choices(_ALNUM, k=29)),
                "object": "chat.completion",
                "created": now,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": inp,
                    "completion_tokens": out,
                    "total_tokens": inp + out,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {
                        "reasoning_tokens": 0,
                        "audio_tokens": 0,
                        "accepted_prediction_tokens": 0,
                        "rejected_prediction_tokens": 0,
                    },
                },
                "service_tier": "default",
                "system_fingerprint": None,
            }
            return chat, inp, out
        if endpoint == "/v1/embeddings":
            embeddings: dict[str, Any] = {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.0] * 8}],
                "model": model,
                "usage": {"prompt_tokens": inp, "total_tokens": inp},
            }
            return embeddings, inp, 0
        completion: dict[str, Any] = {
            "id": "cmpl-" + "".join(self._rng.choices(_ALNUM, k=29)),
            "object": "text_completion",
            "created": now,
            "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out},
        }
        return completion, inp, out

    # -- answers --------------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock())

    def _hex(self, digits: int) -> str:
        return f"{self._rng.getrandbits(digits * 4):0{digits}x}"

    def _common_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_{self._hex(32)}", "openai-processing-ms": "1"}

    def _json(self, status: int, body: Mapping[str, Any]) -> FilesReply:
        return FilesReply(
            status=status,
            headers={"content-type": "application/json", **self._common_headers()},
            chunks=[orjson.dumps(body, option=orjson.OPT_INDENT_2)],
        )

    def _fault_reply(
        self, status: int, body: Mapping[str, Any] | bytes | None, headers: Mapping[str, str]
    ) -> FilesReply:
        if isinstance(body, bytes):
            reply = FilesReply(
                status=status,
                headers={"content-type": "application/json", **self._common_headers()},
                chunks=[body],
            )
        else:
            reply = self._json(status, body if body is not None else _default_error(status))
        return attrs.evolve(reply, headers={**reply.headers, **headers})


def _default_error(status: int) -> dict[str, Any]:
    if status == 429:
        error = {
            "message": "Rate limit reached for requests. Please try again later.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    elif status >= 500:
        error = {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    else:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        error = {"message": phrase, "type": "invalid_request_error", "param": None, "code": None}
    return {"error": error}


def _invalid_url(method: str, path: str) -> _Error:
    return _Error(404, f"Invalid URL ({method} {path})")


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _Error(
            400,
            f"Invalid '{name}': expected an integer between {low} and {high}.",
            param=name,
            code="integer_out_of_range",
        )
    return value


def _page(items: list[dict[str, Any]], after: str | None, limit: int, kind: str) -> dict[str, Any]:
    """One page of a cursor-paginated list (``items`` in the listing order)."""
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise _Error(400, f"No such {kind} object: {after}", param="after")
        items = items[ids.index(after) + 1 :]
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


def _expiry(param: str, anchor: object, seconds: object) -> int:
    """Validate an ``expires_after`` policy; returns its seconds."""
    if anchor != "created_at":
        raise _Error(
            400,
            f"Invalid value for '{param}.anchor': expected 'created_at'.",
            param=f"{param}.anchor",
            code="invalid_value",
        )
    try:
        ttl = int(seconds) if isinstance(seconds, int | str) else 0
    except ValueError:
        ttl = 0
    if not _MIN_TTL <= ttl <= _MAX_TTL:
        raise _Error(
            400,
            f"Invalid value for '{param}.seconds': expected an integer between {_MIN_TTL} and "
            f"{_MAX_TTL}.",
            param=f"{param}.seconds",
            code="invalid_value",
        )
    return ttl


def _line_error(code: str, message: str, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _parse_input(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A batch input file's requests, and its validation errors."""
    requests: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            errors.append(
                _line_error("invalid_json_line", "This line is not parseable as JSON.", number)
            )
            continue
        if not isinstance(request, dict):
            errors.append(_line_error("invalid_request", "Expected a JSON object.", number))
            continue
        missing = [k for k in ("custom_id", "method", "url", "body") if k not in request]
        if missing:
            errors.append(
                _line_error(
                    "missing_required_parameter",
                    f"Missing required parameter: '{missing[0]}'.",
                    number,
                )
            )
        elif request["method"] != "POST":
            errors.append(_line_error("invalid_method", "Only POST is supported.", number))
        elif request["url"] != endpoint:
            errors.append(
                _line_error(
                    "invalid_url",
                    f"The URL provided for this request does not match the batch endpoint "
                    f"{endpoint}.",
                    number,
                )
            )
        elif not isinstance(request["body"], dict):
            errors.append(_line_error("invalid_request", "'body' must be an object.", number))
        elif request["custom_id"] in seen:
            errors.append(
                _line_error(
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request.",
                    number,
                )
            )
        else:
            seen.add(request["custom_id"])
            requests.append(request)
    return requests, errors


def _response_object(
    response_id: str,
    message_id: str,
    now: int,
    model: object,
    text: str,
    request: dict[str, Any],
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    """A completed Responses API response object."""
    return {
        "id": f"resp_{response_id}",
        "object": "response",
        "created_at": now,
        "status": "completed",
        "background": False,
        "completed_at": now,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": [
            {
                "id": f"msg_{message_id}",
                "type": "message",
                "status": "completed",
                "content": [
                    {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
                ],
                "role": "assistant",
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            # Current servers (and SDKs) carry ``cache_write_tokens`` too.
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
        "metadata": request.get("metadata") or {},
    }


# -- multipart/form-data ---------------------------------------------------------------------


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """A header value's main token (lower-cased) and its parameters (RFC 2231 decoded)."""
    message = email.message.Message()
    message["x"] = value
    params = message.get_params(header="x") or []
    if not params:
        return "", {}
    (main, _), *rest = params
    return main.lower(), {k.lower(): email.utils.collapse_rfc2231_value(v) for k, v in rest}


def _parse_multipart(body: bytes, boundary: str) -> list[tuple[str, str | None, bytes]]:
    """A multipart/form-data body's parts: (field name, filename or None, content).

    Raises:
        ValueError: the body is not well formed.
    """
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2 : start] != b"\r\n"):
        raise ValueError("no opening boundary")
    pos = start + len(delimiter)
    parts: list[tuple[str, str | None, bytes]] = []
    while body[pos : pos + 2] != b"--":
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise ValueError("truncated")
        pos = line_end + 2
        end = body.find(b"\r\n" + delimiter, pos)
        if end < 0:
            raise ValueError("no closing boundary")
        part = body[pos:end]
        pos = end + 2 + len(delimiter)
        if part.startswith(b"\r\n"):
            head, content = b"", part[2:]
        else:
            head, separator, content = part.partition(b"\r\n\r\n")
            if not separator:
                raise ValueError("a part without a blank line after its headers")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        kind, params = _header_params(headers.get("content-disposition", ""))
        if kind != "form-data" or "name" not in params:
            raise ValueError("a part without Content-Disposition: form-data; name=...")
        parts.append((params["name"], params.get("filename"), content))
    return parts


# -- serving ---------------------------------------------------------------------------------


def mock_transport(fake: FakeFilesUpstream) -> httpx.MockTransport:
    """``fake`` behind ``httpx.MockTransport`` (trio checkpoints only: autojump-clock friendly)."""

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = fake.handle(request.method, request.url.raw_path.decode("ascii"), headers, body)
        await trio.lowlevel.checkpoint()
        if reply.reset:
            raise httpx.ReadError("connection reset by peer", request=request)
        if not reply.streamed:
            return httpx.Response(
                reply.status, headers=reply.headers, content=b"".join(reply.chunks)
            )

        async def stream() -> AsyncIterator[bytes]:
            for piece in reply.chunks:
                await trio.lowlevel.checkpoint()
                yield piece

        return httpx.Response(reply.status, headers=reply.headers, stream=ClosingStream(stream()))

    return httpx.MockTransport(handler)


async def serve_files_loopback(
    fake: FakeFilesUpstream,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``fake`` on 127.0.0.1 (an ephemeral port) until cancelled; reports its base URL
    (``http://127.0.0.1:PORT``) through ``nursery.start``. HTTP/1.1 with keep-alive."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def connection(stream: trio.SocketStream) -> None:
        fake.connections += 1
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                await _serve_connection(fake, stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        task_status.started(f"http://127.0.0.1:{port}")


class _Reader:
    """Buffered reads from a stream; None when the peer closes first."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def _fill(self) -> bool:
        data = await self._stream.receive_some(65536)
        self._buffer += data
        return bool(data)

    async def until(self, delimiter: bytes, limit: int) -> bytes | None:
        while (index := self._buffer.find(delimiter)) < 0:
            if len(self._buffer) > limit:
                raise BadRequest(431, "Request head too large.")
            if not await self._fill():
                return None
        data = bytes(self._buffer[:index])
        del self._buffer[: index + len(delimiter)]
        return data

    async def exactly(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            if not await self._fill():
                return None
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def chunked_body(self) -> bytes | None:
        body = bytearray()
        while True:
            line = await self.until(b"\r\n", MAX_HEAD)
            if line is None:
                return None
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest(400, "Malformed chunk size.") from None
            if size == 0:
                break
            if len(body) + size > MAX_BODY:
                raise BadRequest(413, "Request body too large.")
            data = await self.exactly(size + 2)
            if data is None:
                return None
            if data[-2:] != b"\r\n":
                raise BadRequest(400, "Malformed chunk.")
            body += data[:-2]
        while True:  # trailer fields, up to the blank line
            trailer = await self.until(b"\r\n", MAX_HEAD)
            if trailer is None:
                return None
            if not trailer:
                return bytes(body)


async def _serve_connection(fake: FakeFilesUpstream, stream: trio.SocketStream) -> None:
    reader = _Reader(stream)
    while True:
        try:
            head_bytes = await reader.until(b"\r\n\r\n", MAX_HEAD)
            if head_bytes is None:
                return
            head = parse_head(head_bytes, allow_chunked=True)
            if head.expect_continue:
                await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            if head.chunked:
                body = await reader.chunked_body()
            else:
                body = await reader.exactly(head.content_length)
        except BadRequest as error:
            message = {"error": {"message": error.message, "type": "invalid_request_error"}}
            payload = orjson.dumps(message)
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(payload))),
                ("connection", "close"),
            ]
            await stream.send_all(response_head(error.status, headers) + payload)
            return
        if body is None:
            return
        reply = fake.handle(head.method, head.target, head.headers, body)
        if reply.reset:
            # An abortive close (RST), as a crashed upstream or a middlebox would.
            stream.socket.setsockopt(*_LINGER_RESET)
            return
        headers = list(reply.headers.items())
        if not head.keep_alive:
            headers.append(("connection", "close"))
        if reply.streamed:
            await stream.send_all(response_head(reply.status, [*headers, _CHUNKED]))
            for piece in reply.chunks:
                await stream.send_all(chunk(piece))
            await stream.send_all(LAST_CHUNK)
        else:
            payload = b"".join(reply.chunks)
            headers.append(("content-length", str(len(payload))))
            await stream.send_all(response_head(reply.status, headers) + payload)
        if not head.keep_alive:
            return


_CHUNKED: Final = ("transfer-encoding", "chunked")
_LINGER_RESET: tuple[int, int, bytes] = (
    trio.socket.SOL_SOCKET,
    trio.socket.SO_LINGER,
    (1).to_bytes(4, "little") + (0).to_bytes(4, "little"),
)
