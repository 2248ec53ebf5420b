"""The writer's side: the jobs its channel carries, appends folded into the projection and the
log, and the group-commit transaction (see the package docstring)."""

from __future__ import annotations

import operator
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs
import orjson
import trio

from ..._types import ResponseStatus
from ...errors import StoreError, StoreIntegrityError
from ._boundary import _begin_immediate, _Conn, _translate
from ._encode import _Encoded, _ended_payload, _with_refs
from ._keys import _delete_key, _DeleteKeyJob, _put_key, _put_object, _PutKeyJob, _PutObjectJob
from ._retention import _purge, _PurgeJob, _remove_content
from ._schema import (
    _ACCEPTED,
    _CONTENT_BITS,
    _DELETED,
    _ENDED,
    _ITEM_DONE,
    _KIND_NAMES,
    _MAX_REF,
    _MAX_SEQ,
    _ROUTED,
    _STREAM_EVENT,
    _log_body,
    _log_key,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


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


#: What the writer's channel carries.
_Job: TypeAlias = _Pending | _PurgeJob | _PutKeyJob | _DeleteKeyJob | _PutObjectJob

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
        written before, :func:`._retention._remove_content`)."""
        self.records = [
            (kind, ordinal, _strip(kind, payload)) for kind, ordinal, payload in self.records
        ]
        self.items.clear()

    def log_rows(self, at: float) -> Iterator[_LogRow]:
        """The fold's records as log rows: runs of about ``_ROW_BYTES`` at most (a record
        larger than that alone)."""
        assert self.ref is not None
        seq = self.last_seq - len(self.records) + 1
        run: list[tuple[int, int | None, bytes | None]] = []
        size = 0
        for record in self.records:
            payload = record[2]
            length = 4 if payload is None else len(payload)
            if run and size + length > _ROW_BYTES:
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
            "deleted": int(self.deleted),
            "last_seq": self.last_seq,
        }


#: A row of ``log``: key, kinds, content_size, last_event, at, body.
_LogRow: TypeAlias = tuple[int, int, int, int | None, float, bytes]
#: Payload bytes a log row holds at most, but for a record larger than that alone (a quarter
#: of a page). SQLite starts a new page for a row that does not fit in the last one, so large
#: rows leave pages part empty: one row for all of a response (some 1.6 KB with the recording
#: benchmark's 1.2 KB Response) left a fifth of every page of the log unused.
_ROW_BYTES: Final = 1024


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
    "estimated": 0,
}
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
_row_values: Final = operator.itemgetter(*_ROW_COLUMNS)
_INSERT_ROW: Final = (
    f"INSERT INTO responses ({', '.join(_ROW_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_ROW_COLUMNS))})"
)
_INSERT_LOG: Final = (
    "INSERT INTO log (key, kinds, content_size, last_event, at, body) VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_TAG: Final = "INSERT INTO spend_tags (key, value, response_ref) VALUES (?, ?, ?)"
_INSERT_ITEM: Final = "INSERT OR IGNORE INTO items (item_id, response_ref) VALUES (?, ?)"
_STATE: Final = (
    "SELECT id, ref, status, last_seq, completed_at IS NOT NULL, deleted, purged FROM responses"
)


@attrs.define(eq=False)
class _Fold:
    """Appends folded into what they write: per response, one projection INSERT or UPDATE and
    one run of log rows (:meth:`_RowState.log_rows`), however many appends and records name
    it.

    The log's rules are checked here, in Python, against the projection as the transaction
    sees it: the writer holds the write lock, so nothing changes it meanwhile. An append they
    refuse is left out whole (:meth:`add`). The one rule the database checks is the ID's
    uniqueness for a response first named by its ``Accepted`` (its state is not read: at
    concurrency 1 a response's appends all meet in one transaction, which then reads
    nothing)."""

    states: dict[str, _RowState] = attrs.Factory(dict)

    def load(self, db: sqlite3.Connection, jobs: Sequence[_Pending], *, every: bool) -> None:
        """Read the state of the responses the jobs name: those first named by something other
        than their ``Accepted`` (``every``: all of them), in one statement."""
        first: dict[str, bool] = {}
        for job in jobs:
            for enc in job.encoded:
                rid = enc.record.response_id
                if rid not in first:
                    first[rid] = every or enc.kind != _ACCEPTED
        wanted = [rid for rid, load in first.items() if load and rid not in self.states]
        if not wanted:
            return
        if len(wanted) == 1:
            rows = db.execute(f"{_STATE} WHERE id = ?", wanted)
        else:
            rows = db.execute(
                f"{_STATE} WHERE id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(wanted).decode(),),
            )
        for rid, ref, status, last_seq, ended, deleted, purged in rows:
            self.states[rid] = _RowState(
                ref=ref,
                status=status,
                last_seq=last_seq,
                ended=bool(ended),
                deleted=bool(deleted),
                purged=bool(purged),
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

    @staticmethod
    def _row(state: _RowState, instance: str) -> tuple[Any, ...]:
        """The values of a new response's projection row (``ref`` left to the database)."""
        assert state.accepted is not None
        columns = {
            **_ROW_DEFAULTS,
            **state.columns(),
            "ref": None,
            "id": state.accepted.record.response_id,
            "instance": instance,
        }
        values: tuple[Any, ...] = _row_values(columns)
        return values

    def write(self, db: sqlite3.Connection, at: float, instance: str) -> None:
        """Write what was folded in: new rows first (their refs key the rest), then the
        updated rows, the log rows and the items."""
        states = [state for state in self.states.values() if state.records]
        new = [state for state in states if state.accepted is not None]
        if new:
            # The first row takes the next ref (a NULL key does); the others the ones after it,
            # which are free: the writer holds the write lock.
            rows = [self._row(state, instance) for state in new]
            ref = db.execute(_INSERT_ROW, rows[0]).lastrowid
            assert ref is not None
            if ref + len(new) - 1 > _MAX_REF:
                raise StoreError("the database holds as many responses as it can")
            for offset, state in enumerate(new):
                state.ref = ref + offset
            if len(rows) > 1:
                db.executemany(
                    _INSERT_ROW, [(ref + n, *row[1:]) for n, row in enumerate(rows) if n]
                )
            tags = [
                (key, value, state.ref)
                for state in new
                if state.accepted is not None
                for key, value in state.accepted.tags
            ]
            if tags:
                db.executemany(_INSERT_TAG, tags)
        for state in states:
            if state.accepted is None:
                assert state.ref is not None
                if state.remove_content:
                    _remove_content(db, state.ref)
                columns = state.columns()
                # Column names come from _encode, never from input.
                assignments = ", ".join(f"{name} = ?" for name in columns)
                db.execute(
                    f"UPDATE responses SET {assignments} WHERE ref = ?",
                    (*columns.values(), state.ref),
                )
        db.executemany(_INSERT_LOG, [row for state in states for row in state.log_rows(at)])
        items = [(item, state.ref) for state in states for item in state.items]
        if items:
            db.executemany(_INSERT_ITEM, items)


#: What refuses one job alone: a constraint of the schema, or a value the database cannot bind
#: (an integer past 64 bits). The writer and everyone else's appends go on.
_REFUSALS: Final = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    OverflowError,
    ValueError,
    TypeError,
)


def _write_folded(
    db: sqlite3.Connection, appends: list[_Pending], at: float, instance: str
) -> bool:
    """A batch of appends written as one fold, with no savepoints: what nearly every group
    commit is. An append the log's rules refuse is left out. False if the database refused
    a value (some of the batch may be written: the caller rolls back and writes it one job at
    a time, which pins the refusal on its job)."""
    fold = _Fold()
    fold.load(db, appends, every=False)
    for job in appends:
        job.error = fold.add(job.encoded)
    try:
        fold.write(db, at, instance)
    except _REFUSALS:
        return False
    return True


def _write_one_by_one(db: sqlite3.Connection, batch: list[_Job], at: float, instance: str) -> None:
    """Each job in its own ``SAVEPOINT``, so one that is refused is rolled back alone."""
    for job in batch:
        job.error = None
        db.execute("SAVEPOINT job")
        try:
            match job:
                case _Pending():
                    fold = _Fold()
                    # Every response read: a second acceptance is refused with its ID.
                    fold.load(db, [job], every=True)
                    error = fold.add(job.encoded)
                    if error is not None:
                        raise error
                    fold.write(db, at, instance)
                case _PurgeJob():
                    job.purged = _purge(db, job.before, job.limit)
                case _PutKeyJob():
                    _put_key(db, job)
                case _DeleteKeyJob():
                    job.deleted = _delete_key(db, job.key_id, job.at)
                case _PutObjectJob():
                    _put_object(db, job)
        except StoreIntegrityError as exc:
            db.execute("ROLLBACK TO job")
            job.error = exc
        except sqlite3.IntegrityError as exc:  # the schema's own guard (a constraint)
            db.execute("ROLLBACK TO job")
            job.error = _translate(exc)
            job.error.__cause__ = exc
        except _REFUSALS as exc:
            # A value the database cannot bind (an integer past 64 bits): that job's fault
            # alone; the writer and everyone else's appends go on.
            db.execute("ROLLBACK TO job")
            job.error = StoreIntegrityError(f"a value the database cannot hold: {exc}")
            job.error.__cause__ = exc
        db.execute("RELEASE job")


def _write_batch(writer: _Conn, batch: list[_Job], instance: str, *, wait: bool = True) -> int:
    """One group-commit transaction; sets ``error`` on each job it refuses. Returns the WAL
    file's size after the commit.

    A batch of appends only is written as one fold (:func:`_write_folded`); one with other jobs
    (keys, objects, purges), or one the database refused a value of, one job at a time.

    ``wait=False`` (an inline commit on the trio thread): if another process holds the write
    lock, fail at once with ``sqlite3.OperationalError`` (busy) instead of waiting for it, and
    write nothing; the caller retries in a worker thread, where waiting blocks nobody."""
    at = time.time()
    with writer.lock:
        db = writer.db
        _begin_immediate(db, wait=wait)
        try:
            appends = [job for job in batch if isinstance(job, _Pending)]
            if len(appends) < len(batch):
                _write_one_by_one(db, batch, at, instance)
            elif not _write_folded(db, appends, at, instance):
                db.execute("ROLLBACK")
                _begin_immediate(db, wait=wait)
                _write_one_by_one(db, batch, at, instance)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return writer.wal_size()


def _checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
