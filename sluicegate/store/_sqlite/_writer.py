"""The writer's side: the jobs its channel carries, one append applied to the log and the
projection, and the group-commit transaction (see the package docstring)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Final, TypeAlias

import attrs
import trio

from ..._types import ResponseStatus
from ...errors import StoreError, StoreIntegrityError
from ._boundary import _begin_immediate, _Conn, _translate
from ._encode import _Encoded, _ended_payload, _with_output_refs
from ._keys import _delete_key, _DeleteKeyJob, _put_key, _put_object, _PutKeyJob, _PutObjectJob
from ._retention import _purge, _PurgeJob, _remove_content
from ._schema import _ACCEPTED, _CONTENT_KINDS, _DELETED, _ENDED, _ROUTED


@attrs.define(eq=False)
class _Pending:
    """One append (or enqueue) call waiting for its transaction; the writer fills in ``error``
    and sets ``done``."""

    encoded: tuple[_Encoded, ...]
    #: Queued by ``enqueue``: nobody waits for the verdict, so a refusal is logged.
    detached: bool = False
    done: trio.Event = attrs.Factory(trio.Event)
    error: StoreError | None = None

    @property
    def weight(self) -> int:
        return len(self.encoded)

    @property
    def size(self) -> int:
        """About the bytes this append writes."""
        return sum(len(e.payload) + 64 for e in self.encoded)


#: What the writer's channel carries.
_Job: TypeAlias = _Pending | _PurgeJob | _PutKeyJob | _DeleteKeyJob | _PutObjectJob


@attrs.define(eq=False)
class _RowState:
    """A response's projection while one append is applied."""

    #: The response's ``ref`` (what its events and tags are keyed by); None until the row of a
    #: response accepted by this append is inserted.
    ref: int | None
    status: str
    last_seq: int
    ended: bool
    deleted: bool
    purged: bool
    changes: dict[str, Any] = attrs.Factory(dict)

    @property
    def content_removed(self) -> bool:
        return self.deleted or self.purged


def _load_state(db: sqlite3.Connection, response_id: str) -> _RowState | None:
    row = db.execute(
        "SELECT ref, status, last_seq, completed_at IS NOT NULL, deleted, purged FROM responses"
        " WHERE id = ?",
        (response_id,),
    ).fetchone()
    if row is None:
        return None
    return _RowState(
        ref=row[0],
        status=row[1],
        last_seq=row[2],
        ended=bool(row[3]),
        deleted=bool(row[4]),
        purged=bool(row[5]),
    )


def _apply(db: sqlite3.Connection, encoded: tuple[_Encoded, ...], at: float, instance: str) -> None:
    """Write one append's records and fold them into the projection (inside a savepoint).

    Few statements on purpose (at concurrency 1 each response is its own transaction, and every
    statement and touched index page counts): a response accepted in this append gets its
    projection row in one INSERT with everything the append says of it, never INSERT + UPDATE,
    and the events go in one ``executemany`` after the rows they reference. A response's
    ``ref`` is looked up once per append, with the state its rules need (a new row's comes
    from its INSERT), never per record."""
    states: dict[str, _RowState] = {}
    #: Responses accepted by this append whose projection row is not inserted yet.
    new_rows: dict[str, _Encoded] = {}
    #: The events to insert, each with its response's state (a new row's ref is not known yet).
    events: list[tuple[_RowState, int, str, int | None, bytes | None]] = []
    #: The sequence number given to each record of this append so far (for ``output_refs``).
    seqs: list[int] = []

    def insert_events() -> None:
        db.executemany(
            _INSERT_EVENT,
            [(st.ref, seq, kind, ordinal, blob, at) for st, seq, kind, ordinal, blob in events],
        )
        events.clear()

    def flush() -> None:
        for rid, accepted in new_rows.items():
            _insert_row(db, states[rid], accepted, instance)
        new_rows.clear()
        insert_events()

    for enc in encoded:
        rid = enc.record.response_id
        state = states.get(rid)
        if state is None and enc.kind != _ACCEPTED:
            state = _load_state(db, rid)
        payload: bytes | None = enc.payload
        if enc.kind == _ACCEPTED:
            # A second acceptance within one append is caught here; one committed before, by
            # the UNIQUE index on the ID when the row is inserted.
            if state is not None:
                raise StoreIntegrityError(f"response {rid} was already accepted")
            assert enc.status is not None
            new_rows[rid] = enc
            state = _RowState(
                ref=None, status=enc.status, last_seq=-1, ended=False, deleted=False, purged=False
            )
        elif state is None:
            raise StoreIntegrityError(f"{enc.kind} for response {rid}, which was never accepted")
        else:
            if enc.kind == _ROUTED and state.status == ResponseStatus.QUEUED.value:
                state.status = ResponseStatus.IN_PROGRESS.value
            elif enc.kind == _ENDED:
                if state.ended:
                    raise StoreIntegrityError(f"response {rid} has already ended")
                assert enc.status is not None
                state.ended = True
                state.status = enc.status
                if state.content_removed:
                    payload = _ended_payload(None)
                elif enc.output_refs:
                    refs = [None if i is None else seqs[i] for i in enc.output_refs]
                    payload = _with_output_refs(enc.payload, refs)
            elif enc.kind == _DELETED:
                state.deleted = True
                flush()  # the content written so far, this append's included, goes
                assert state.ref is not None
                _remove_content(db, state.ref)
            elif enc.kind in _CONTENT_KINDS and state.content_removed:
                payload = None
        state.changes.update(enc.changes)
        states[rid] = state
        state.last_seq += 1
        seqs.append(state.last_seq)
        events.append((state, state.last_seq, enc.kind, enc.ordinal, payload))
    for rid, state in states.items():
        accepted = new_rows.get(rid)
        if accepted is not None:
            _insert_row(db, state, accepted, instance)
        else:
            columns = _row_columns(state)
            # Column names come from _encode, never from input.
            assignments = ", ".join(f"{name} = ?" for name in columns)
            db.execute(
                f"UPDATE responses SET {assignments} WHERE ref = ?", (*columns.values(), state.ref)
            )
    insert_events()


_INSERT_EVENT: Final = (
    "INSERT INTO events (response_ref, seq, kind, ordinal, payload, at) VALUES (?, ?, ?, ?, ?, ?)"
)


def _row_columns(state: _RowState) -> dict[str, Any]:
    return {
        **state.changes,
        "status": state.status,
        "deleted": int(state.deleted),
        "last_seq": state.last_seq,
    }


def _insert_row(
    db: sqlite3.Connection, state: _RowState, accepted: _Encoded, instance: str
) -> None:
    """Insert the row of a response accepted by this append; its ``ref`` goes to ``state``."""
    rid = accepted.record.response_id
    columns = {**_row_columns(state), "instance": instance}
    # Column names come from _encode, never from input.
    names = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    try:
        cursor = db.execute(
            f"INSERT INTO responses (id, {names}) VALUES (?, {marks})", (rid, *columns.values())
        )
    except sqlite3.IntegrityError as exc:
        if "responses.id" not in str(exc):
            raise
        raise StoreIntegrityError(f"response {rid} was already accepted") from exc
    state.ref = cursor.lastrowid
    if accepted.tags:
        db.executemany(
            "INSERT INTO spend_tags (key, value, response_ref) VALUES (?, ?, ?)",
            [(key, value, state.ref) for key, value in accepted.tags],
        )


def _write_batch(writer: _Conn, batch: list[_Job], instance: str, *, wait: bool = True) -> int:
    """One group-commit transaction; sets ``error`` on each append it refuses. Returns the WAL
    file's size after the commit.

    ``wait=False`` (an inline commit on the trio thread): if another process holds the write
    lock, fail at once with ``sqlite3.OperationalError`` (busy) instead of waiting for it, and
    write nothing; the caller retries in a worker thread, where waiting blocks nobody."""
    at = time.time()
    with writer.lock:
        db = writer.db
        _begin_immediate(db, wait=wait)
        try:
            for job in batch:
                db.execute("SAVEPOINT job")
                try:
                    match job:
                        case _Pending():
                            _apply(db, job.encoded, at, instance)
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
                except (OverflowError, ValueError, TypeError, sqlite3.InterfaceError) as exc:
                    # A value the database cannot bind (an integer past 64 bits): that job's
                    # fault alone; the writer and everyone else's appends go on.
                    db.execute("ROLLBACK TO job")
                    job.error = StoreIntegrityError(f"a value the database cannot hold: {exc}")
                    job.error.__cause__ = exc
                db.execute("RELEASE job")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return writer.wal_size()


def _checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
