"""Appends folded into what a transaction writes, the log's rules checked on the way, and the
driver of a group-commit transaction (see the package docstring of either backend).

A batch of appends is *folded* (:class:`_Fold`): the log's rules are checked in Python, append by
append, against the projection as the transaction sees it (the backend keeps other writers off
the rows it read until it commits), and an append that breaks them is left out whole and
refused alone; then each response gets one projection INSERT or UPDATE and one run of log rows,
however many appends and records name it. A value only the database can refuse (an integer past
64 bits, a second acceptance of a response it holds) fails the fold: the batch is written again
one job at a time, each in its own ``SAVEPOINT``, which refuses that job alone (so are keys,
objects and purges, always). :func:`_write_jobs` drives this over a backend's
:class:`_Transaction`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

import attrs
import orjson

from ..._types import ResponseStatus
from ...errors import StoreIntegrityError
from .._records import Routed
from ._encode import _ended_payload, _with_refs
from ._jobs import _DeleteKeyJob, _Pending, _PurgeJob, _PutKeyJob, _PutObjectJob
from ._layout import (
    _ACCEPTED,
    _CONTENT_BITS,
    _DELETED,
    _ENDED,
    _ITEM_DONE,
    _KIND_NAMES,
    _MAX_SEQ,
    _REMOVAL_BITS,
    _ROUTED,
    _STREAM_EVENT,
    _log_body,
    _log_key,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from ...errors import StoreError
    from ._decode import _Connection
    from ._encode import _Encoded
    from ._jobs import _Job
    from ._queries import _Dialect

_QUEUED: Final = ResponseStatus.QUEUED.value
_IN_PROGRESS: Final = ResponseStatus.IN_PROGRESS.value
#: An end's payload once the content is removed.
_REMOVED_END: Final = _ended_payload(None)


@attrs.define(eq=False)
class _RowState:
    """A response while appends are folded: its projection, and the records the fold adds to
    its log (one run of rows, :meth:`log_rows`)."""

    #: What its log rows and tags are keyed by; None for a response this fold accepts, until
    #: its row is inserted.
    ref: int | None
    status: str
    last_seq: int
    ended: bool
    deleted: bool
    purged: bool
    #: Its ``Accepted``, when this fold accepts it: its row is inserted, not updated.
    accepted: _Encoded | None = None
    #: Projection columns the fold sets (besides status, deleted and last_seq).
    changes: dict[str, Any] = attrs.Factory(dict)
    #: The fold's records (kind, ordinal, payload), numbered on from the response's last.
    records: list[tuple[int, int | None, bytes | None]] = attrs.Factory(list)
    #: The IDs of the output items among ``records`` (rows of ``items``).
    items: list[str] = attrs.Factory(list)
    #: A ``Deleted`` of this fold: the content of the rows written before goes too.
    remove_content: bool = False
    #: The store instance running it (a takeover must name the one it takes over from).
    instance: str | None = None

    @property
    def content_removed(self) -> bool:
        return self.deleted or self.purged

    def add(self, kind: int, ordinal: int | None, payload: bytes | None, item: str | None) -> int:
        """Add a record to the fold's rows; returns its sequence number."""
        self.records.append((kind, ordinal, payload))
        if item is not None and payload is not None:
            self.items.append(item)
        self.last_seq += 1
        return self.last_seq

    def strip_content(self) -> None:
        """``Deleted``: the content among the fold's records so far goes (as in the rows
        written before, :func:`_stripped`)."""
        self.records = [
            (kind, ordinal, _strip(kind, payload)) for kind, ordinal, payload in self.records
        ]
        self.items.clear()

    def log_rows(self, at: float, row_bytes: int) -> Iterator[_LogRow]:
        """The fold's records as log rows: runs of about ``row_bytes`` at most (a record
        larger than that alone)."""
        assert self.ref is not None
        seq = self.last_seq - len(self.records) + 1
        run: list[tuple[int, int | None, bytes | None]] = []
        size = 0
        for record in self.records:
            payload = record[2]
            length = 4 if payload is None else len(payload)
            if run and size + length > row_bytes:
                yield _log_row(self.ref, seq, run, at)
                seq += len(run)
                run = []
                size = 0
            run.append(record)
            size += length
        if run:
            yield _log_row(self.ref, seq, run, at)

    def columns(self) -> dict[str, Any]:
        """The projection columns to write."""
        return {
            **self.changes,
            "status": self.status,
            "deleted": self.deleted,
            "last_seq": self.last_seq,
        }


#: A row of ``log``: key, kinds, content_size, last_event, at, body.
_LogRow: TypeAlias = tuple[int, int, int, int | None, float, bytes]


def _log_row(
    ref: int, first: int, records: list[tuple[int, int | None, bytes | None]], at: float
) -> _LogRow:
    kinds = 0
    content = 0
    last: int | None = None
    for kind, ordinal, payload in records:
        kinds |= 1 << kind
        if payload is not None:
            if kind in (_ITEM_DONE, _ACCEPTED):
                content += len(payload)
            elif kind == _STREAM_EVENT and ordinal is not None and (last is None or ordinal > last):
                last = ordinal
    return (_log_key(ref, first), kinds, content, last, at, _log_body(records))


def _strip(kind: int, payload: bytes | None) -> bytes | None:
    if (1 << kind) & _CONTENT_BITS:
        return None
    return _REMOVED_END if kind == _ENDED else payload


#: The projection row of a new response: every column, and what a column no record of the
#: fold set holds.
_ROW_DEFAULTS: Final[dict[str, Any]] = {
    "deployment_id": None,
    "provider": None,
    "completed_at": None,
    "usage": None,
    "cost": None,
    "error": None,
    "upstream_id": None,
    "ttft": None,
    "duration": None,
    "input_tokens": 0,
    "output_tokens": 0,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "total_tokens": 0,
    "estimated": False,
}
#: The columns of a projection row, in the order :meth:`_Fold.new_rows` gives their values.
_ROW_COLUMNS: Final = (
    "ref",
    "id",
    "owner",
    "status",
    "model",
    "deployment_id",
    "provider",
    "background",
    "store",
    "metadata",
    "created_at",
    "completed_at",
    "usage",
    "cost",
    "error",
    "deleted",
    "last_seq",
    "previous_id",
    "upstream_id",
    "spend_metadata",
    "ttft",
    "duration",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "estimated",
    "instance",
)
#: The columns of a response's state (:meth:`_Fold.loaded`), as a SELECT list.
_STATE_COLUMNS: Final = (
    "id, ref, status, last_seq, completed_at IS NOT NULL, deleted, purged, instance"
)


@attrs.define(eq=False)
class _Fold:
    """Appends folded into what they write: per response, one projection INSERT or UPDATE and
    one run of log rows (:meth:`_RowState.log_rows`), however many appends and records name
    it.

    The log's rules are checked here, in Python, against the projection as the transaction
    sees it: the backend keeps other writers off those rows until it commits. An append they
    refuse is left out whole (:meth:`add`). The one rule the database checks is the ID's
    uniqueness for a response first named by its ``Accepted`` (its state is not read: at
    concurrency 1 a response's appends all meet in one transaction, which then reads
    nothing)."""

    states: dict[str, _RowState] = attrs.Factory(dict)

    def wanted(self, jobs: Sequence[_Pending], *, every: bool) -> list[str]:
        """The responses whose state the fold needs read before ``jobs`` are added: those first
        named by something other than their ``Accepted`` (``every``: all of them)."""
        first: dict[str, bool] = {}
        for job in jobs:
            for enc in job.encoded:
                rid = enc.record.response_id
                if rid not in first:
                    first[rid] = every or enc.kind != _ACCEPTED
        return [rid for rid, load in first.items() if load and rid not in self.states]

    def loaded(self, rows: Iterable[Sequence[Any]]) -> None:
        """Take the states read (rows of :data:`_STATE_COLUMNS`)."""
        for rid, ref, status, last_seq, ended, deleted, purged, instance in rows:
            self.states[rid] = _RowState(
                ref=ref,
                status=status,
                last_seq=last_seq,
                ended=bool(ended),
                deleted=bool(deleted),
                purged=bool(purged),
                instance=instance,
            )

    def add(self, encoded: tuple[_Encoded, ...]) -> StoreIntegrityError | None:
        """Fold one append in, or return why the log's rules refuse it (then nothing of it
        is folded in)."""
        error = self._check(encoded)
        if error is None:
            self._apply(encoded)
        return error

    def _check(self, encoded: tuple[_Encoded, ...]) -> StoreIntegrityError | None:
        #: Per response: accepted, ended, records so far (as this append would leave them).
        seen: dict[str, list[Any]] = {}
        for enc in encoded:
            rid = enc.record.response_id
            now = seen.get(rid)
            if now is None:
                state = self.states.get(rid)
                now = [False, False, -1] if state is None else [True, state.ended, state.last_seq]
                seen[rid] = now
            if enc.kind == _ACCEPTED:
                if now[0]:
                    return StoreIntegrityError(f"response {rid} was already accepted")
                now[0] = True
            elif not now[0]:
                kind = _KIND_NAMES[enc.kind]
                return StoreIntegrityError(f"{kind} for response {rid}, which was never accepted")
            elif enc.kind == _ENDED:
                if now[1]:
                    return StoreIntegrityError(f"response {rid} has already ended")
                now[1] = True
            elif enc.kind == _ROUTED and enc.changes.get("instance") is not None:
                # A takeover (docs/design.md §5.5): only of a response still running, and
                # still the instance's it names, so two instances never both take one over.
                state = self.states.get(rid)
                record = enc.record
                taken_from = record.taken_from if isinstance(record, Routed) else None
                if now[1] or state is None or state.instance != taken_from:
                    return StoreIntegrityError(f"response {rid} was taken over or ended first")
            now[2] += 1
            if now[2] > _MAX_SEQ:
                return StoreIntegrityError(f"response {rid} has more records than a log holds")
        return None

    def _apply(self, encoded: tuple[_Encoded, ...]) -> None:
        states = self.states
        #: The sequence number given to each record of this append so far (``output_refs``).
        seqs: list[int] = []
        for enc in encoded:
            rid = enc.record.response_id
            kind = enc.kind
            payload: bytes | None = enc.payload
            if kind == _ACCEPTED:
                assert enc.status is not None
                state = states[rid] = _RowState(
                    ref=None,
                    status=enc.status,
                    last_seq=-1,
                    ended=False,
                    deleted=False,
                    purged=False,
                    accepted=enc,
                )
            else:
                state = states[rid]
                if kind == _ROUTED:
                    if state.status == _QUEUED:
                        state.status = _IN_PROGRESS
                    if enc.changes.get("instance") is not None:
                        state.instance = enc.changes["instance"]
                elif kind == _ENDED:
                    assert enc.status is not None
                    state.ended = True
                    state.status = enc.status
                    if state.content_removed:
                        payload = _REMOVED_END
                    elif enc.output_refs or enc.usage_ref is not None:
                        refs = [None if i is None else seqs[i] for i in enc.output_refs]
                        usage = None if enc.usage_ref is None else seqs[enc.usage_ref]
                        payload = _with_refs(enc.payload, refs, usage)
                elif kind == _DELETED:
                    state.deleted = True
                    state.strip_content()
                    # A response of an earlier transaction has rows to strip as well.
                    state.remove_content = state.accepted is None
                elif (1 << kind) & _CONTENT_BITS and state.content_removed:
                    payload = None
            if enc.changes:
                state.changes.update(enc.changes)
            seqs.append(state.add(kind, enc.ordinal, payload, enc.item_id))

    # -- what to write

    def written(self) -> tuple[list[_RowState], list[_RowState]]:
        """The responses the fold writes: the new ones (inserted) and the others (updated)."""
        new: list[_RowState] = []
        updated: list[_RowState] = []
        for state in self.states.values():
            if state.records:
                (new if state.accepted is not None else updated).append(state)
        return new, updated

    @staticmethod
    def new_row(state: _RowState, instance: str) -> list[Any]:
        """The values of a new response's projection row, in :data:`_ROW_COLUMNS` order (its
        ``ref`` as the state has it)."""
        assert state.accepted is not None
        columns = {
            **_ROW_DEFAULTS,
            **state.columns(),
            "ref": state.ref,
            "id": state.accepted.record.response_id,
            "instance": instance,
        }
        return [columns[name] for name in _ROW_COLUMNS]

    @staticmethod
    def tags(new: Iterable[_RowState]) -> list[tuple[str, bytes, int | None]]:
        """The ``spend_tags`` rows of the new responses (once their refs are set)."""
        return [
            (key, value, state.ref)
            for state in new
            if state.accepted is not None
            for key, value in state.accepted.tags
        ]

    @staticmethod
    def log_rows(states: Iterable[_RowState], at: float, row_bytes: int) -> list[_LogRow]:
        return [row for state in states for row in state.log_rows(at, row_bytes)]

    @staticmethod
    def items(states: Iterable[_RowState]) -> list[tuple[str, int | None]]:
        """The ``items`` rows (item ID, ``ref``)."""
        return [(item, state.ref) for state in states for item in state.items]


def _stripped(
    ref: int, rows: Iterable[tuple[int, bytes]]
) -> tuple[list[tuple[bytes, int]], list[tuple[str, int]]]:
    """A response's content removed (``Deleted`` and ``purge``) from its log rows that hold any
    (``rows``: key and body): the payloads of its content records and the final response of its
    ``Ended``. Returns the rows' new bodies (body, key) and its items' rows to delete (item ID,
    ``ref``). Its projection row, usage and cost stay."""
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
    return updates, items


def _remove_content(db: _Connection, dialect: _Dialect, ref: int) -> None:
    """Remove a response's content (``Deleted`` and ``purge``) from its log rows (what
    :func:`_stripped` leaves of them) and its items' rows."""
    mark = dialect.mark
    rows = db.execute(
        f"SELECT key, body FROM log WHERE key BETWEEN {mark} AND {mark} AND (kinds & {mark}) <> 0",
        (_log_key(ref, 0), _log_key(ref, _MAX_SEQ), _REMOVAL_BITS),
    ).fetchall()
    updates, items = _stripped(ref, rows)
    cursor = db.cursor()
    if updates:
        cursor.executemany(
            f"UPDATE log SET body = {mark}, content_size = 0, last_event = NULL WHERE key = {mark}",
            updates,
        )
    if items:
        cursor.executemany(
            f"DELETE FROM items WHERE item_id = {mark} AND response_ref = {mark}", items
        )


def _reencoded(
    records: list[list[Any]],
) -> Iterator[tuple[int, int | None, bytes | None]]:
    """A row's records as :func:`._layout._log_body` takes them, their payloads encoded again,
    each on its own: at the depth it was first encoded at, so the encoder takes it again. One
    it does not (a row written by other means) loses its payload rather than fail the removal:
    what is left then is only a record of what the projection row holds, the content being
    gone already."""
    for kind, ordinal, payload in records:
        try:
            yield kind, ordinal, None if payload is None else orjson.dumps(payload)
        except orjson.JSONEncodeError:
            yield kind, ordinal, None


# --- the transaction -------------------------------------------------------------------------


class _Transaction(Protocol):
    """A backend's writes inside one open transaction, which :func:`_write_jobs` drives. A
    backend may queue statements and report what the database refused of them only at
    :meth:`flush` or :meth:`commit` (PostgreSQL pipelines them)."""

    def execute(self, sql: str) -> None:
        """A statement without parameters (``SAVEPOINT job`` and the like)."""

    def flush(self) -> None:
        """Send what is queued; raise what the database refused of it."""

    def commit(self) -> None:
        """Commit the transaction; raise what the database refused of it."""

    def states(self, response_ids: list[str]) -> Iterable[Sequence[Any]]:
        """The states (:data:`_STATE_COLUMNS`) of those of the responses that exist, kept from
        other writers until the transaction ends."""
        ...

    def write(self, fold: _Fold, at: float) -> None:
        """Write what was folded in."""

    def purge(self, before: float, limit: int) -> int:
        """Remove the content of at most ``limit`` responses that ended before ``before`` and
        are not purged yet (oldest first); returns how many."""
        ...

    def put_key(self, job: _PutKeyJob) -> None: ...

    def delete_key(self, key_id: str, at: float) -> bool: ...

    def put_object(self, job: _PutObjectJob) -> None: ...

    def refusal(self, exc: Exception, job: _Job | None) -> StoreError | None:
        """The error that refuses ``job`` alone for ``exc`` (None for a fold's: any), or None
        if ``exc`` fails the transaction."""
        ...


class _Restartable(_Transaction, Protocol):
    def restart(self) -> None:
        """Roll the transaction back and begin another."""


def _write_jobs(tx: _Restartable, batch: list[_Job], at: float) -> None:
    """Write a group-commit batch in ``tx`` (open) and commit it; sets ``error`` on each job it
    refuses.

    A batch of appends only is written as one fold (:func:`_write_folded`); one with other jobs
    (keys, objects, purges), or one the database refused a value of, one job at a time."""
    appends = [job for job in batch if isinstance(job, _Pending)]
    if len(appends) == len(batch):
        if _write_folded(tx, appends, at):
            return
        tx.restart()
    _write_one_by_one(tx, batch, at)
    tx.commit()


def _write_folded(tx: _Transaction, appends: list[_Pending], at: float) -> bool:
    """A batch of appends written as one fold, with no savepoints, and committed: what nearly
    every group commit is. An append the log's rules refuse is left out. False if the
    database refused a value (some of the batch may be written: the caller rolls back and
    writes it one job at a time, which pins the refusal on its job)."""
    try:
        _write_fold(tx, appends, at)
        tx.commit()
    except Exception as exc:
        if tx.refusal(exc, None) is None:
            raise
        return False
    return True


def _write_fold(tx: _Transaction, appends: list[_Pending], at: float) -> None:
    """Fold a batch of appends (an append the log's rules refuse is left out, its ``error``
    set) and write what they make (not committed)."""
    fold = _Fold()
    wanted = fold.wanted(appends, every=False)
    if wanted:
        fold.loaded(tx.states(wanted))
    for job in appends:
        job.error = fold.add(job.encoded)
    tx.write(fold, at)


def _write_one_by_one(tx: _Transaction, batch: list[_Job], at: float) -> None:
    """Each job in its own ``SAVEPOINT``, so one that is refused is rolled back alone."""
    for job in batch:
        job.error = None
        tx.execute("SAVEPOINT job")
        try:
            match job:
                case _Pending():
                    fold = _Fold()
                    # Every response read: a second acceptance is refused with its ID.
                    wanted = fold.wanted([job], every=True)
                    if wanted:
                        fold.loaded(tx.states(wanted))
                    error = fold.add(job.encoded)
                    if error is not None:
                        raise error
                    tx.write(fold, at)
                case _PurgeJob():
                    job.purged = tx.purge(job.before, job.limit)
                case _PutKeyJob():
                    tx.put_key(job)
                case _DeleteKeyJob():
                    job.deleted = tx.delete_key(job.key_id, job.at)
                case _PutObjectJob():
                    tx.put_object(job)
            tx.flush()
        except StoreIntegrityError as exc:
            tx.execute("ROLLBACK TO job")
            job.error = exc
        except Exception as exc:
            # A constraint of the schema, or a value the database cannot hold (an integer
            # past 64 bits): that job's fault alone; the writer and everyone else's appends
            # go on.
            refusal = tx.refusal(exc, job)
            if refusal is None:
                raise
            tx.execute("ROLLBACK TO job")
            refusal.__cause__ = exc
            job.error = refusal
        tx.execute("RELEASE job")
