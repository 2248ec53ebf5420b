"""What every store backend offers (SQLite now, PostgreSQL later); one contract suite checks it.

All methods are async and checkpoint; none blocks the trio loop on disk. Errors are
``StoreError`` classes of :mod:`sluicegate.errors` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from ._records import Record, ResponseRow

__all__ = ["RECOVERY_ERROR", "Store", "StoreStatistics"]

#: The error a response left unfinished by a dead process ends with (DESIGN §5, crash recovery).
RECOVERY_ERROR: dict[str, Any] = {
    "code": "server_error",
    "message": "The gateway stopped before this response finished; please try again.",
}


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

    async def final_response(self, response_id: str) -> dict[str, Any] | None:
        """The ``Ended.response``; None if not ended, ended without one, deleted, or unknown."""
        ...

    async def input_items(self, response_id: str) -> list[dict[str, Any]]:
        """The ``Accepted.input_items``; empty if deleted or unknown."""
        ...

    async def output_items(self, response_id: str) -> list[dict[str, Any]]:
        """The ``ItemDone`` items in ``output_index`` order; empty if deleted or unknown."""
        ...

    async def stream_events(
        self, response_id: str, *, after: int = -1, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Recorded stream events with ``sequence_number > after``, in order, at most
        ``limit``; empty if deleted or unknown."""
        ...

    async def recover(self, *, now: float) -> int:
        """End every response left ``queued``/``in_progress`` by a dead process as ``failed``
        with :data:`RECOVERY_ERROR` at ``now``; returns how many. Only safe while no response
        of this store is live (backends call it when they open)."""
        ...

    def statistics(self) -> StoreStatistics:
        """A snapshot of the store's counters."""
        ...
