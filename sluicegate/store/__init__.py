"""The event store: an append-only log of what happened to each response, and a
projection table maintained in the same transaction.

``async with open_sqlite_store(path) as store:`` then ``await store.append([...])``. Every
backend implements :class:`Store` and passes the same contract suite (``tests/store_contract.py``):
SQLite, durable, the default; :func:`open_postgres_store`, one database for many instances
(needs the ``postgres`` extra); and :func:`open_memory_store`, bounded and gone with its opener
(the stateless mode).
"""

from __future__ import annotations

from ..errors import StoreError as StoreError
from ..errors import StoreIntegrityError as StoreIntegrityError
from ..errors import StoreUnavailableError as StoreUnavailableError
from ._interface import RECOVERY_ERROR as RECOVERY_ERROR
from ._interface import KeyRow as KeyRow
from ._interface import ObjectKind as ObjectKind
from ._interface import ObjectRow as ObjectRow
from ._interface import RecoveryPolicy as RecoveryPolicy
from ._interface import SpendFilter as SpendFilter
from ._interface import SpendGroup as SpendGroup
from ._interface import SpendLog as SpendLog
from ._interface import SpendTotal as SpendTotal
from ._interface import Store as Store
from ._interface import StoreStatistics as StoreStatistics
from ._memory import MemoryStore as MemoryStore
from ._memory import open_memory_store as open_memory_store
from ._postgres import POSTGRES_SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION
from ._postgres import PostgresStore as PostgresStore
from ._postgres import migrate_postgres as migrate_postgres
from ._postgres import open_postgres_store as open_postgres_store
from ._records import Accepted as Accepted
from ._records import Deleted as Deleted
from ._records import Ended as Ended
from ._records import ItemDone as ItemDone
from ._records import ItemOrigin as ItemOrigin
from ._records import Record as Record
from ._records import ResponseRow as ResponseRow
from ._records import Routed as Routed
from ._records import Settled as Settled
from ._records import StreamEventRecorded as StreamEventRecorded
from ._sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from ._sqlite import SQLiteStore as SQLiteStore
from ._sqlite import open_sqlite_store as open_sqlite_store

__all__ = [
    "Accepted",
    "Deleted",
    "Ended",
    "ItemDone",
    "ItemOrigin",
    "KeyRow",
    "MemoryStore",
    "ObjectKind",
    "ObjectRow",
    "POSTGRES_SCHEMA_VERSION",
    "PostgresStore",
    "RECOVERY_ERROR",
    "Record",
    "RecoveryPolicy",
    "ResponseRow",
    "Routed",
    "SQLITE_SCHEMA_VERSION",
    "SQLiteStore",
    "Settled",
    "SpendFilter",
    "SpendGroup",
    "SpendLog",
    "SpendTotal",
    "Store",
    "StoreError",
    "StoreIntegrityError",
    "StoreStatistics",
    "StoreUnavailableError",
    "StreamEventRecorded",
    "migrate_postgres",
    "open_memory_store",
    "open_postgres_store",
    "open_sqlite_store",
]
