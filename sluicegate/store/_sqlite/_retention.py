"""Retention: removing a response's content (``Deleted`` and :meth:`SQLiteStore.purge`), keeping
its accounting."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._sql._fold import _remove_content
from ._spend import _SQLITE

if TYPE_CHECKING:
    import sqlite3


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
        _remove_content(db, _SQLITE, ref)
        db.execute("UPDATE responses SET purged = 1 WHERE ref = ?", (ref,))
    return len(refs)
