"""What every store backend offers (SQLite; memory, for the stateless mode); one contract
suite checks it.

All methods are async and checkpoint; none blocks the trio loop on disk. Errors are
``StoreError`` classes of :mod:`sluicegate.errors` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs

if TYPE_CHECKING:
    from ._records import ItemOrigin, Record, ResponseRow

__all__ = [
    "KeyRow",
    "ObjectKind",
    "ObjectRow",
    "RECOVERY_ERROR",
    "RecoveryPolicy",
    "SpendFilter",
    "SpendGroup",
    "SpendLog",
    "SpendTotal",
    "Store",
    "StoreStatistics",
]

#: What spend totals are grouped by: the owner, the model group, or the UTC day of creation.
SpendGroup = Literal["owner", "model", "day"]

#: The error a response left unfinished by a dead process ends with (crash recovery).
RECOVERY_ERROR: dict[str, Any] = {
    "code": "server_error",
    "message": "The gateway stopped before this response finished; please try again.",
}


class RecoveryPolicy(Protocol):
    """What recovery does with a response a dead instance left unfinished (docs/design.md
    §5.5): the gateway that opens the store may take over a background response its upstream
    still runs, instead of ending it ``failed``."""

    def error_for(self, row: ResponseRow) -> dict[str, Any] | None:
        """The error to end it ``failed`` with (:data:`RECOVERY_ERROR`, or one of its own);
        None: this instance takes it over."""
        ...

    def adopted(self, row: ResponseRow) -> None:
        """It was taken over: it is this instance's now (``row`` as it was before)."""
        ...


@attrs.frozen(kw_only=True)
class StoreStatistics:
    #: Records committed since the store opened.
    records_appended: int
    #: Transactions committed (group commit: many appends share one).
    transactions: int
    #: The most records committed in one transaction.
    largest_batch: int
    #: Records handed to ``append`` and not yet committed (or refused).
    pending: int


@attrs.frozen(kw_only=True)
class SpendFilter:
    """Which responses a spend query covers; every given field must match (None: any)."""

    owner: str | None = None
    #: The model group (``Accepted.model``).
    model: str | None = None
    #: ``created_at >= start`` (unix seconds).
    start: float | None = None
    #: ``created_at < end`` (unix seconds).
    end: float | None = None
    #: Each key of ``spend_metadata`` must be present with exactly this (JSON) value.
    metadata: Mapping[str, Any] | None = None


@attrs.frozen(kw_only=True)
class SpendLog:
    """One response's spend row: kept when its content is deleted or purged."""

    response_id: str
    owner: str
    model: str
    deployment_id: str | None
    provider: str | None
    status: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost: float | None
    #: The token counts are the gateway's estimate (the upstream never reported usage).
    estimated: bool
    #: Seconds to the first output event; None if none came.
    ttft: float | None
    #: Seconds from request to end; None while running.
    duration: float | None
    created_at: float
    completed_at: float | None
    spend_metadata: dict[str, Any]


@attrs.frozen(kw_only=True)
class SpendTotal:
    """Totals over one group of responses (``key``: owner, model group, or ``YYYY-MM-DD``)."""

    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    #: Sum of the known costs (unpriced responses add nothing).
    cost: float


@attrs.frozen(kw_only=True)
class ObjectRow:
    """A file or batch made through the gateway, as the store keeps it: who owns it,
    which deployment holds it under which raw ID, and the object as last seen upstream."""

    #: The encoded ID (``file-…`` or ``batch_…``).
    id: str
    kind: ObjectKind
    owner: str
    #: The model group it was made for.
    model: str
    deployment_id: str
    provider: str
    #: The upstream's own ID.
    raw_id: str
    #: Unix seconds.
    created_at: float
    #: The object as the caller sees it (our IDs), as last seen upstream.
    data: dict[str, Any]
    spend_metadata: dict[str, Any] = attrs.Factory(dict)
    #: A file: the batch whose output or error file it is (its usage is settled when read).
    batch_id: str | None = None
    #: A batch: its usage and cost were recorded (from its output file, once).
    settled: bool = False
    #: Unix seconds of the deletion; None while it exists.
    deleted_at: float | None = None


#: The kinds of :class:`ObjectRow`. A ``conversation`` is a row of its own; each of a
#: conversation the gateway holds has its items as ``conversation_item`` rows, whose
#: ``data["purpose"]`` names the conversation (``list_objects(purpose=...)`` pages them) and
#: whose ``deployment_id`` is the conversation's namespace, so an item ID is unique in its
#: conversation (docs/conversations.md).
ObjectKind = Literal["file", "batch", "conversation", "conversation_item"]


def _models(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class KeyRow:
    """A virtual API key of the proxy, as the store keeps it.

    The secret itself is never stored, only ``key_hash``; ``key_id`` is public and becomes the
    owner of the responses and spend rows of the requests made with the key.
    """

    #: The public ID (``key-`` and 16 hex digits).
    key_id: str
    #: Hex SHA-256 of the secret key.
    key_hash: str
    alias: str | None = None
    #: The model groups the key may use; None: all of them.
    models: tuple[str, ...] | None = attrs.field(default=None, converter=_models)
    #: Requests per minute; None: unlimited (so are the other limits).
    rpm: int | None = None
    #: Tokens per minute.
    tpm: int | None = None
    max_parallel_requests: int | None = None
    #: Spend in USD after which the key is refused.
    max_budget: float | None = None
    #: Unix seconds after which the key is refused; None: never.
    expires_at: float | None = None
    #: Unix seconds.
    created_at: float
    metadata: dict[str, Any] = attrs.Factory(dict)
    #: Unix seconds of the deletion; None while the key is live.
    deleted_at: float | None = None


class Store(Protocol):
    async def append(self, records: Sequence[Record]) -> None:
        """Append records to the log and update the projection, atomically.

        Returns once the records are durably committed. The records of one call are written
        all or nothing; other callers' records in the same group commit are unaffected by a
        refused call. Cancelling a caller that is waiting does not withdraw its records.

        Raises:
            StoreIntegrityError: a second ``Accepted`` or ``Ended`` for a response, or a record
                for a response that was never accepted. Nothing of the call is written.
            StoreUnavailableError: the store is closed, or the database is busy.
            StoreError: the database failed; nothing of the call is written.
        """
        ...

    async def get(self, response_id: str) -> ResponseRow | None:
        """The projection row, or None if the response is unknown."""
        ...

    async def get_many(self, response_ids: Sequence[str]) -> dict[str, ResponseRow]:
        """The projection rows of several responses at once, by ID (unknown ones absent):
        what a gateway polls to notice its running responses ended by another process."""
        ...

    async def final_response(self, response_id: str) -> dict[str, Any] | None:
        """The ``Ended.response``; None if not ended, ended without one, deleted, or unknown."""
        ...

    async def input_items(self, response_id: str) -> list[dict[str, Any]]:
        """The ``Accepted.input_items``; empty if deleted or unknown."""
        ...

    async def output_items(self, response_id: str) -> list[dict[str, Any]]:
        """The ``ItemDone`` items in ``output_index`` order; empty if deleted or unknown."""
        ...

    async def item_origins(self, item_ids: Sequence[str]) -> dict[str, ItemOrigin]:
        """The stored responses whose output items have these IDs (by item ID); items of
        deleted or purged responses, and unknown IDs, are absent."""
        ...

    async def stream_events(
        self, response_id: str, *, after: int = -1, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Recorded stream events with ``sequence_number > after``, in order, at most
        ``limit``; empty if deleted or unknown."""
        ...

    async def enqueue(self, records: Sequence[Record]) -> None:
        """Queue records behind everything already queued and return without waiting for the
        commit (only for room in the queue). A later ``append`` for the same response is
        committed after them. A refused enqueue is logged; the response's later appends then
        fail as ``StoreIntegrityError`` (so the refusal still surfaces on the critical path).

        Raises:
            StoreIntegrityError: a record is not JSON-serializable (checked in the caller's
                task, like ``append``); nothing of the call is queued.
            StoreUnavailableError: the store is closed.
        """
        ...

    async def conversation(
        self, response_id: str, *, max_turns: int, max_bytes: int
    ) -> list[dict[str, Any]]:
        """The items of the chain that ends at ``response_id``, oldest turn first: each turn's
        input items, then its output items. Read with bounded queries: the chain is walked at
        most ``max_turns`` deep and its stored size summed before any content is loaded.

        Raises:
            InvalidRequestError: (param ``previous_response_id``) a response of the chain is
                unknown, deleted, purged or was made with ``store: false``
                (code ``previous_response_not_found``); or the chain is longer than
                ``max_turns`` or larger than ``max_bytes`` (code ``conversation_too_long``).
        """
        ...

    async def spend_logs(
        self, where: SpendFilter, *, limit: int = 100, newest_first: bool = True
    ) -> list[SpendLog]:
        """Spend rows matching ``where``, by creation time, at most ``limit``. Served from
        indexes (owner, model, creation time, metadata key), never a full table scan."""
        ...

    async def spend_totals(self, where: SpendFilter, *, group_by: SpendGroup) -> list[SpendTotal]:
        """Totals of the rows matching ``where``, one per group, ordered by key."""
        ...

    async def purge(self, *, before: float) -> int:
        """Retention: remove the content (as ``Deleted`` does, without a tombstone) of every
        response that ended before ``before``; spend rows stay. Returns how many were purged
        by this call."""
        ...

    async def recover(self, *, now: float) -> int:
        """End every response left ``queued``/``in_progress`` by a dead process as ``failed``
        with :data:`RECOVERY_ERROR` at ``now``; returns how many. Responses of processes (or
        other stores in this process) that still have the database open are left alone."""
        ...

    async def put_key(self, key: KeyRow) -> None:
        """Add a virtual API key. Written in order with the appends queued before it.

        Raises:
            StoreIntegrityError: a key with this ``key_id`` or ``key_hash`` exists (deleted keys
                included), or its metadata is not JSON-serializable; nothing is written.
            StoreUnavailableError: the store is closed, or the database is busy.
        """
        ...

    async def find_key(self, key_hash: str) -> KeyRow | None:
        """The key whose secret hashes to ``key_hash`` (deleted ones too: ``deleted_at`` is
        set), or None."""
        ...

    async def get_key(self, key_id: str) -> KeyRow | None:
        """The key with this public ID (deleted ones too), or None."""
        ...

    async def delete_key(self, key_id: str, *, at: float) -> bool:
        """Mark the key deleted at ``at`` (unix seconds); its row stays, so its ID and hash are
        never reused. Returns True if it existed and was not deleted yet."""
        ...

    async def put_object(self, row: ObjectRow) -> None:
        """Insert a file or batch, or replace the row with the same ID (a fresher view of the
        same object: ``data``, ``settled``, ``deleted_at``). Written in order with the appends
        queued before it.

        Raises:
            StoreIntegrityError: another row holds the same deployment and raw ID, or the row
                is not JSON-serializable; nothing is written.
        """
        ...

    async def get_object(self, object_id: str) -> ObjectRow | None:
        """The file or batch with this encoded ID (deleted ones too), or None."""
        ...

    async def find_object(self, deployment_id: str, raw_id: str) -> ObjectRow | None:
        """The file or batch a deployment knows by ``raw_id`` (deleted ones too), or None."""
        ...

    async def list_objects(
        self,
        kind: ObjectKind,
        *,
        owner: str | None,
        after: str | None = None,
        limit: int = 20,
        newest_first: bool = True,
        purpose: str | None = None,
    ) -> list[ObjectRow]:
        """Live (not deleted) objects of a kind, ``owner``'s (None: everyone's), by creation
        time, starting after the object ``after``; at most ``limit``."""
        ...

    def statistics(self) -> StoreStatistics:
        """A snapshot of the store's counters."""
        ...
