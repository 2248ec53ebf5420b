"""Retention: removing a response's content (``Deleted`` and :meth:`SQLiteStore.purge`),
keeping its accounting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from ._boundary import _INLINE_BYTES
from ._schema import _CONTENT_BITS, _ENDED, _ITEM_DONE, _LOG_RANGE, _REMOVAL_BITS, _log_body

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterator

    from ...errors import StoreError


@attrs.define(eq=False)
class _PurgeJob:
    """One retention transaction: the content of at most ``limit`` responses that ended before
    ``before``; the writer fills in ``purged`` (or ``error``) and sets ``done``."""

    before: float
    limit: int
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None
    purged: int = 0

    @property
    def weight(self) -> int:
        return self.limit

    @property
    def size(self) -> int:
        # A purge rewrites content of up to ``limit`` responses: never an inline commit.
        return _INLINE_BYTES + 1


def _remove_content(db: sqlite3.Connection, ref: int) -> None:
    """Remove a response's content (``Deleted`` and ``purge``): the payloads of its content
    records, the final response of its ``Ended`` and its items' IDs. Its projection row, usage
    and cost stay."""
    rows = db.execute(
        f"SELECT key, body FROM log WHERE {_LOG_RANGE} AND kinds & ?", (ref, ref, _REMOVAL_BITS)
    ).fetchall()
    updates: list[tuple[bytes, int]] = []
    items: list[tuple[str, int]] = []
    for key, body in rows:
        records = orjson.loads(body)
        for record in records:
            kind, _, payload = record
            if kind == _ITEM_DONE and isinstance(payload, dict):
                item_id = payload.get("id")
                if isinstance(item_id, str):
                    items.append((item_id, ref))
            if (1 << kind) & _CONTENT_BITS:
                record[2] = None
            elif kind == _ENDED and isinstance(payload, dict):
                payload["response"] = None
                for name in ("same_id", "output_refs", "usage_ref"):  # what rebuilt it
                    payload.pop(name, None)
        updates.append((_log_body(_reencoded(records)), key))
    db.executemany(
        "UPDATE log SET body = ?, content_size = 0, last_event = NULL WHERE key = ?", updates
    )
    db.executemany("DELETE FROM items WHERE item_id = ? AND response_ref = ?", items)


def _reencoded(
    records: list[list[Any]],
) -> Iterator[tuple[int, int | None, bytes | None]]:
    """A row's records as :func:`._schema._log_body` takes them, their payloads encoded again,
    each on its own: at the depth it was first encoded at, so the encoder takes it again. One
    it does not (a row written by other means) loses its payload rather than fail the removal:
    what is left then is only a record of what the projection row holds, the content being
    gone already."""
    for kind, ordinal, payload in records:
        try:
            yield kind, ordinal, None if payload is None else orjson.dumps(payload)
        except orjson.JSONEncodeError:
            yield kind, ordinal, None


def _purge(db: sqlite3.Connection, before: float, limit: int) -> int:
    """Remove the content of at most ``limit`` responses that ended before ``before`` and are
    not purged yet (oldest first); returns how many."""
    refs = [
        ref
        for (ref,) in db.execute(
            "SELECT ref FROM responses WHERE purged = 0 AND completed_at < ?"
            " ORDER BY completed_at LIMIT ?",
            (before, limit),
        )
    ]
    for ref in refs:
        _remove_content(db, ref)
        db.execute("UPDATE responses SET purged = 1 WHERE ref = ?", (ref,))
    return len(refs)
