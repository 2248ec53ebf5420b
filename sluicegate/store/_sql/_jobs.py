"""What the writer's channel carries: appends (and enqueues), purges, keys and objects. Each job
has a ``done`` event the writer sets once its transaction is over, and an ``error`` it fills in
if the job was refused or not written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, TypeAlias

import attrs
import trio

from ...errors import StoreIntegrityError

if TYPE_CHECKING:
    from ...errors import StoreError
    from .._interface import KeyRow, ObjectRow
    from ._encode import _Encoded

#: The ``size`` of a job whose size is not known before it runs (a purge): larger than any
#: transaction a backend treats as small.
_UNKNOWN_SIZE: Final = 1 << 40


@attrs.define(eq=False)
class _Pending:
    """One append (or enqueue) call waiting for its transaction; the writer fills in ``error``
    and sets ``done``."""

    encoded: tuple[_Encoded, ...]
    #: Queued by ``enqueue``: nobody waits for the verdict, so a refusal is logged.
    detached: bool = False
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None
    #: About the bytes this append writes.
    size: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.size = sum(len(e.payload) for e in self.encoded) + 64 * len(self.encoded)

    @property
    def weight(self) -> int:
        return len(self.encoded)


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
        return _UNKNOWN_SIZE


@attrs.define(eq=False)
class _PutKeyJob:
    """Insert one key (its JSON columns encoded in the caller's task); the writer fills in
    ``error`` and sets ``done``."""

    row: KeyRow
    models: bytes | None
    metadata: bytes
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None

    @property
    def weight(self) -> int:
        return 1

    @property
    def size(self) -> int:
        return len(self.metadata) + 256

    def conflict(self) -> StoreIntegrityError:
        # Our own message: the constraint's text is fine, but a message that could one day
        # carry a value of the row (the hash) is not.
        return StoreIntegrityError(
            f"key {self.row.key_id} was refused: a key with this ID or secret exists"
        )


@attrs.define(eq=False)
class _DeleteKeyJob:
    """Mark one key deleted; the writer fills in ``deleted`` (or ``error``) and sets ``done``."""

    key_id: str
    at: float
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None
    deleted: bool = False

    @property
    def weight(self) -> int:
        return 1

    @property
    def size(self) -> int:
        return 64


@attrs.define(eq=False)
class _PutObjectJob:
    """Insert or replace one file or batch (its JSON encoded in the caller's task)."""

    row: ObjectRow
    data: bytes
    spend_metadata: bytes
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None

    @property
    def weight(self) -> int:
        return 1

    @property
    def size(self) -> int:
        return len(self.data) + len(self.spend_metadata) + 256

    def conflict(self) -> StoreIntegrityError:
        row = self.row
        return StoreIntegrityError(
            f"{row.kind} {row.id} was refused: deployment {row.deployment_id!r} already has an "
            "object with its upstream ID"
        )


#: What the writer's channel carries.
_Job: TypeAlias = _Pending | _PurgeJob | _PutKeyJob | _DeleteKeyJob | _PutObjectJob
