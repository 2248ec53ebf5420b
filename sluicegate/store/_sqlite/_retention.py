"""Retention: removing a response's content (``Deleted`` and :meth:`SQLiteStore.purge`),
keeping its accounting."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import orjson
import trio

from ._boundary import _INLINE_BYTES
from ._schema import _CONTENT_KINDS, _ENDED

if TYPE_CHECKING:
    import sqlite3

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
    records and the final response of its ``Ended``. Its projection row, usage and cost stay."""
    db.execute(
        "UPDATE events SET payload = NULL WHERE response_ref = ? AND kind IN (?, ?, ?)",
        (ref, *_CONTENT_KINDS),
    )
    row = db.execute(
        "SELECT seq, payload FROM events WHERE response_ref = ? AND kind = ?", (ref, _ENDED)
    ).fetchone()
    if row is not None and row[1] is not None:
        ended = orjson.loads(row[1])
        ended["response"] = None
        for key in ("same_id", "output_refs"):  # what rebuilt the response
            ended.pop(key, None)
        db.execute(
            "UPDATE events SET payload = ? WHERE response_ref = ? AND seq = ?",
            (orjson.dumps(ended), ref, row[0]),
        )


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
