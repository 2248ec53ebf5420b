"""The store's errors, refining :class:`sluicegate.errors.SluicegateError`.

::

    SluicegateError
    └── StoreError                 500 store_error        the database failed
        ├── StoreUnavailableError  503 store_unavailable  busy/locked, or the store is closed
        └── StoreIntegrityError    500 store_integrity    a batch broke the log's rules (a second
                                                          terminal, an unknown response): a bug

Backend exceptions (``sqlite3``, later ``psycopg``) are translated into these at one boundary in
each backend, with ``raise StoreError(...) from exc``; nothing above the store sees them.
"""

from __future__ import annotations

from ..errors import SluicegateError

__all__ = ["StoreError", "StoreIntegrityError", "StoreUnavailableError"]


class StoreError(SluicegateError):
    """The event store failed; the records of the failed append were not written."""

    status_code = 500
    default_code = "store_error"


class StoreUnavailableError(StoreError):
    """The database is busy or locked, or the store is closed; worth retrying later."""

    status_code = 503
    default_code = "store_unavailable"


class StoreIntegrityError(StoreError):
    """An append broke the log's rules (exactly one ``Accepted`` first, exactly one ``Ended``);
    nothing of that append was written."""

    status_code = 500
    default_code = "store_integrity"
