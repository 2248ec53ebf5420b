"""The writer's side: a folded batch of appends (``.._sql._fold``) as PostgreSQL writes it, the
jobs' statements, and the group-commit transaction (see the package docstring)."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson

from ...errors import StoreError
from .._sql._decode import _KEY_COLUMNS, _OBJECT_COLUMNS, _key_values, _object_values
from .._sql._fold import (
    _ROW_COLUMNS,
    _STATE_COLUMNS,
    _Fold,
    _remove_content,
    _write_fold,
    _write_one_by_one,
)
from .._sql._jobs import _Pending
from .._sql._layout import _MAX_REF
from ._schema import _POSTGRES, _REF_BLOCK

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    import psycopg

    from .._sql._fold import _RowState
    from .._sql._jobs import _Job, _PutKeyJob, _PutObjectJob

#: Payload bytes a log row holds at most, but for a record larger than that alone: most
#: responses' records of one transaction fit in one row, which stays in its page (the table's
#: ``toast_tuple_target``): one tuple and one index entry to write.
_ROW_BYTES: Final = 6000

# A fold is written by one statement, whatever the number of responses, records and tables:
# each table's rows are bound as one parameter, a JSON array of objects that the server turns
# into rows (``json_to_recordset``). psycopg spends some 45 µs of CPU per statement and 15 per
# row of an ``executemany``, where orjson encodes a row in a microsecond or two. The ``bytea``
# columns (JSON themselves) travel as JSON strings and are converted back; log bodies apart
# (:data:`_INSERT_LOG`).

#: The SQL type of each column of ``responses`` the writer writes.
_RESPONSE_TYPES: Final[dict[str, str]] = {
    **dict.fromkeys(
        ("id", "owner", "status", "model", "deployment_id", "provider", "previous_id"), "text"
    ),
    **dict.fromkeys(("upstream_id", "instance"), "text"),
    **dict.fromkeys(("metadata", "usage", "error", "spend_metadata"), "bytea"),
    **dict.fromkeys(("background", "store", "deleted", "estimated"), "boolean"),
    **dict.fromkeys(("created_at", "completed_at", "cost", "ttft", "duration"), "float8"),
    **dict.fromkeys(("ref", "last_seq", "input_tokens", "output_tokens"), "bigint"),
    **dict.fromkeys(("cached_tokens", "reasoning_tokens", "total_tokens"), "bigint"),
}
#: Columns (name, SQL type) of the tables the writer inserts into.
_Columns = tuple[tuple[str, str], ...]
_RESPONSE_COLUMNS: Final[_Columns] = tuple((c, _RESPONSE_TYPES[c]) for c in _ROW_COLUMNS)
#: Those of a log row but its body (bound apart: :data:`_INSERT_LOG`).
_LOG_COLUMNS: Final[_Columns] = (
    ("key", "bigint"),
    ("kinds", "integer"),
    ("content_size", "integer"),
    ("last_event", "bigint"),
    ("at", "float8"),
)
_TAG_COLUMNS: Final[_Columns] = (("key", "text"), ("value", "bytea"), ("response_ref", "bigint"))
_ITEM_COLUMNS: Final[_Columns] = (("item_id", "text"), ("response_ref", "bigint"))


#: The rows of one bound JSON array of objects (their columns defined by the caller).
_RECORDS: Final = "json_to_recordset(convert_from(%b, 'UTF8')::json)"


def _definition(columns: _Columns) -> str:
    return ", ".join(f"{name} {'text' if sql == 'bytea' else sql}" for name, sql in columns)


def _rows(columns: _Columns) -> str:
    """The rows of one bound JSON array of objects with these keys, as ``x``."""
    return f"{_RECORDS} AS x ({_definition(columns)})"


def _value(name: str, sql: str) -> str:
    return f"convert_to(x.{name}, 'UTF8')" if sql == "bytea" else f"x.{name}"


def _insert(table: str, columns: _Columns) -> str:
    return (
        f"INSERT INTO {table} ({', '.join(name for name, _ in columns)})"
        f" SELECT {', '.join(_value(*column) for column in columns)} FROM {_rows(columns)}"
    )


def _json(columns: _Columns, rows: Iterable[Sequence[Any]]) -> bytes:
    """The parameter of :func:`_rows`."""
    names = [name for name, _ in columns]
    texts = [position for position, (_, sql) in enumerate(columns) if sql == "bytea"]
    objects = []
    for row in rows:
        values = list(row)
        for position in texts:
            if values[position] is not None:
                values[position] = values[position].decode()
        objects.append(dict(zip(names, values, strict=True)))
    return orjson.dumps(objects)


def _updated(columns: tuple[str, ...]) -> _Columns:
    """The columns of the rows updating these columns of ``responses``."""
    return tuple((name, _RESPONSE_TYPES[name]) for name in ("ref", *columns))


#: Log rows: their bodies (most of what a transaction writes) as a binary ``bytea[]`` beside the
#: JSON of the other columns, zipped by position (``ROWS FROM``): the server copies them as
#: they are, where it would unescape them from JSON strings (a quarter of its time).
_INSERT_LOG: Final = (
    "INSERT INTO log (key, kinds, content_size, last_event, at, body)"
    f" SELECT * FROM ROWS FROM ({_RECORDS} AS ({_definition(_LOG_COLUMNS)}),"
    " unnest(%b::bytea[])) AS x (key, kinds, content_size, last_event, at, body)"
)


@functools.lru_cache(maxsize=64)
def _write_sql(new: bool, tags: bool, updates: tuple[tuple[str, ...], ...], items: bool) -> str:
    """The statement that writes a fold: new rows, their tags, the updated rows (one step per
    set of columns set), log rows and items; its parameters in this order."""
    steps: list[str] = []
    if new:
        steps.append(_insert("responses", _RESPONSE_COLUMNS))
    if tags:
        steps.append(_insert("spend_tags", _TAG_COLUMNS))
    for columns in updates:
        typed = _updated(columns)
        assignments = ", ".join(f"{name} = {_value(name, sql)}" for name, sql in typed[1:])
        steps.append(
            f"UPDATE responses AS r SET {assignments} FROM {_rows(typed)} WHERE r.ref = x.ref"
        )
    steps.append(_INSERT_LOG)
    if items:
        steps.append(_insert("items", _ITEM_COLUMNS) + " ON CONFLICT DO NOTHING")
    *first, last = steps
    if not first:
        return last
    return "WITH " + ", ".join(f"s{n} AS ({step})" for n, step in enumerate(first)) + " " + last


#: The states of responses, their rows locked until the transaction ends, in one order (the
#: IDs'), so two writers locking some of the same rows never deadlock.
_STATES: Final = f"SELECT {_STATE_COLUMNS} FROM responses WHERE id = ANY(%b) ORDER BY id FOR UPDATE"
_INSERT_KEY: Final = f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({', '.join(['%s'] * 12)})"
#: A fresher view of an object replaces the row with its ID; another row holding its deployment
#: and raw ID is a conflict (``objects_by_upstream``).
_PUT_OBJECT: Final = (
    f"INSERT INTO objects ({_OBJECT_COLUMNS}, purpose) VALUES ({', '.join(['%s'] * 14)})"
    " ON CONFLICT (id) DO UPDATE SET data = excluded.data, settled = excluded.settled,"
    " deleted_at = excluded.deleted_at, purpose = excluded.purpose"
)


@attrs.define(eq=False)
class _Refs:
    """The ``ref`` of new responses, taken from the ``response_refs`` sequence a block at a
    time (one ``nextval`` per ``_REF_BLOCK``). Used by the writer alone."""

    next: int = 0
    end: int = 0

    def take(self, conn: psycopg.Connection[Any]) -> int:
        if self.next == self.end:
            row = conn.execute("SELECT nextval('response_refs')").fetchone()
            assert row is not None
            self.next, self.end = row[0], row[0] + _REF_BLOCK
            if self.end - 1 > _MAX_REF:
                raise StoreError("the database holds as many responses as it can")
        ref = self.next
        self.next += 1
        return ref


@attrs.define(eq=False)
class _PostgresTransaction:
    """The writes of a transaction (``.._sql._fold._Transaction``), in one of three ways:

    - *explicit* (``BEGIN`` sent; savepoints need it): every statement is answered before the
      next, so what the database refuses is raised by the statement that caused it;
    - in a ``pipeline``: the transaction is the implicit one the server runs until the
      pipeline's next sync (no ``BEGIN``, no ``COMMIT``). A statement whose rows are needed is
      answered at once (psycopg asks the server to flush, which does not end the transaction);
      the others go with the sync. The rows it read are locked (``FOR UPDATE``) until then;
    - neither: a fold that reads nothing is one statement (:meth:`write`), a transaction of its
      own in autocommit, with no pipeline to enter and leave (a fifth of the CPU of a
      response's commit at concurrency 1)."""

    conn: psycopg.Connection[Any]
    pipeline: psycopg.Pipeline | None
    explicit: bool
    instance: str
    refs: _Refs
    refusal: Callable[[Exception, _Job | None], StoreError | None]

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def flush(self) -> None:
        if self.pipeline is not None:
            self.pipeline.sync()  # what the database refused is raised here

    def commit(self) -> None:
        if self.explicit:
            self.conn.execute("COMMIT")
        # Else the statement committed itself, or the end of the pipeline syncs, which commits
        # its implicit transaction (a sync here would cost one more round trip: leaving a
        # pipeline always syncs).

    def states(self, response_ids: list[str]) -> Iterable[Sequence[Any]]:
        return self.conn.execute(_STATES, (response_ids,)).fetchall()

    def write(self, fold: _Fold, at: float) -> None:
        """Write what was folded in, in one statement (:func:`_write_sql`)."""
        conn = self.conn
        new, updated = fold.written()
        states = new + updated
        if not states:
            return  # every append was refused
        params: list[bytes | list[bytes]] = []
        for state in new:
            state.ref = self.refs.take(conn)
        if new:
            rows = [fold.new_row(state, self.instance) for state in new]
            params.append(_json(_RESPONSE_COLUMNS, rows))
        tags = fold.tags(new)
        if tags:
            params.append(_json(_TAG_COLUMNS, tags))
        for state in updated:
            if state.remove_content:
                assert state.ref is not None
                _remove_content(conn, _POSTGRES, state.ref)
        updates = _updates(updated)
        params += [_json(_updated(columns), values) for columns, values in updates.items()]
        log = fold.log_rows(states, at, _ROW_BYTES)
        params.append(_json(_LOG_COLUMNS, [row[:-1] for row in log]))
        params.append([row[-1] for row in log])
        items = fold.items(states)
        if items:
            params.append(_json(_ITEM_COLUMNS, items))
        conn.execute(_write_sql(bool(new), bool(tags), tuple(updates), bool(items)), params)

    def purge(self, before: float, limit: int) -> int:
        # SKIP LOCKED: rows another instance's purge (or writer) holds are left to it.
        refs = [
            ref
            for (ref,) in self.conn.execute(
                "SELECT ref FROM responses WHERE NOT purged AND completed_at < %s"
                " ORDER BY completed_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (before, limit),
            ).fetchall()
        ]
        for ref in refs:
            _remove_content(self.conn, _POSTGRES, ref)
        if refs:
            self.conn.execute("UPDATE responses SET purged = true WHERE ref = ANY(%s)", (refs,))
        return len(refs)

    def put_key(self, job: _PutKeyJob) -> None:
        self.conn.execute(_INSERT_KEY, _key_values(job.row, job.models, job.metadata))

    def delete_key(self, key_id: str, at: float) -> bool:
        found = self.conn.execute(
            "UPDATE keys SET deleted_at = %s WHERE key_id = %s AND deleted_at IS NULL"
            " RETURNING key_id",
            (at, key_id),
        ).fetchone()
        return found is not None

    def put_object(self, job: _PutObjectJob) -> None:
        purpose = job.row.data.get("purpose")
        values = _object_values(job.row, job.data, job.spend_metadata)
        self.conn.execute(_PUT_OBJECT, (*values, purpose if isinstance(purpose, str) else None))


def _updates(states: Iterable[_RowState]) -> dict[tuple[str, ...], list[tuple[Any, ...]]]:
    """The responses to update, by the columns they set (column names come from ``_encode``,
    never from input): the rows (ref, then those columns) of each set."""
    updates: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for state in states:
        columns = state.columns()
        updates.setdefault(tuple(columns), []).append((state.ref, *columns.values()))
    return updates


def _write_batch(
    conn: psycopg.Connection[Any],
    *,
    batch: list[_Job],
    instance: str,
    refs: _Refs,
    refusal: Callable[[Exception, _Job | None], StoreError | None],
) -> None:
    """One group-commit transaction; sets ``error`` on each job it refuses. Rolled back if it
    fails (a connection that broke has nothing to roll back).

    A batch of appends only is folded (``.._sql._fold._write_fold``) and written in a pipeline,
    or, if it continues no response of an earlier transaction (nothing to read and lock), in
    one statement. If the database refused a value of it, or the batch holds other jobs, it is
    written one job at a time in an explicit transaction (``.._sql._fold._write_one_by_one``):
    a pipeline that failed is left, since psycopg keeps the results it aborted until it
    ends."""
    at = time.time()
    if all(isinstance(job, _Pending) for job in batch):
        appends = [job for job in batch if isinstance(job, _Pending)]
        try:
            if _Fold().wanted(appends, every=False):
                with conn.pipeline() as pipeline:
                    tx = _PostgresTransaction(conn, pipeline, False, instance, refs, refusal)
                    _write_fold(tx, appends, at)
                # Committed: leaving the pipeline synced, and raised what it refused.
            else:
                tx = _PostgresTransaction(conn, None, False, instance, refs, refusal)
                _write_fold(tx, appends, at)
            return
        except Exception as exc:
            _rollback(conn)
            if refusal(exc, None) is None:
                raise
        except BaseException:
            _rollback(conn)
            raise
    try:
        conn.execute("BEGIN")
        tx = _PostgresTransaction(conn, None, True, instance, refs, refusal)
        _write_one_by_one(tx, batch, at)
        tx.commit()
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if not conn.closed:  # a connection that broke has no transaction left
        conn.rollback()
