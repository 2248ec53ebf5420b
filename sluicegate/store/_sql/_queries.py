"""The statements both backends run alike, what differs given by a :class:`_Dialect`: spend
logs and totals (driven by the indexes of ``responses``, owner, model and creation time, and the
primary key of ``spend_tags``, never a scan), keys, pages of files and batches, and content
removal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ._decode import (
    _KEY_COLUMNS,
    _OBJECT_COLUMNS,
    _SPEND_LOG_COLUMNS,
    _key_row,
    _object_row,
    _spend_log,
    _spend_total,
)
from ._layout import _canonical

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._interface import KeyRow, ObjectRow, SpendFilter, SpendGroup, SpendLog, SpendTotal
    from ._decode import _Connection


@attrs.frozen(kw_only=True)
class _Dialect:
    #: A bound parameter.
    mark: str
    #: The join of a metadata filter's first tag to its responses (the backend fixes its order
    #: where its planner needs telling).
    tag_join: str
    #: Spend totals' group keys, by group: owner, model group, UTC day of creation.
    group_keys: Mapping[str, str]
    #: The sum of the known costs (0 when none is).
    cost_sum: str
    #: An object's ``purpose`` (a file's) equals a bound parameter.
    purpose_is: str


def _spend_from(where: SpendFilter, dialect: _Dialect) -> tuple[str, list[Any]]:
    """``FROM ... WHERE ...`` selecting the ``responses AS r`` that match ``where``.

    A metadata filter drives the query from ``spend_tags``' primary key; each further key is one
    more primary-key search."""
    mark = dialect.mark
    tags = sorted((where.metadata or {}).items())
    params: list[Any] = []
    clauses: list[str] = []
    if tags:
        first_key, first_value = tags[0]
        source = f"spend_tags AS t {dialect.tag_join} responses AS r ON r.ref = t.response_ref"
        clauses.append(f"t.key = {mark} AND t.value = {mark}")
        params += [first_key, _canonical(first_value)]
        for key, value in tags[1:]:
            clauses.append(
                "r.ref IN (SELECT response_ref FROM spend_tags"
                f" WHERE key = {mark} AND value = {mark})"
            )
            params += [key, _canonical(value)]
    else:
        source = "responses AS r"
    for clause, value in (
        ("r.owner = ", where.owner),
        ("r.model = ", where.model),
        ("r.created_at >= ", where.start),
        ("r.created_at < ", where.end),
    ):
        if value is not None:
            clauses.append(clause + mark)
            params.append(value)
    sql = f" FROM {source}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    return sql, params


def _spend_logs_sql(
    where: SpendFilter, dialect: _Dialect, *, limit: int, newest_first: bool
) -> tuple[str, tuple[Any, ...]]:
    """The spend logs' query. Ties of creation time go by ``ref`` (insertion order; the indexes
    on creation time end with it, so the order costs no sort)."""
    source, params = _spend_from(where, dialect)
    direction = "DESC" if newest_first else "ASC"
    sql = (
        f"SELECT {_SPEND_LOG_COLUMNS}{source}"
        f" ORDER BY r.created_at {direction}, r.ref {direction} LIMIT {dialect.mark}"
    )
    return sql, (*params, limit)


def _spend_totals_sql(
    where: SpendFilter, dialect: _Dialect, *, group_by: SpendGroup
) -> tuple[str, tuple[Any, ...]]:
    """The spend totals' query."""
    try:
        key = dialect.group_keys[group_by]
    except KeyError:
        raise ValueError(
            f"group_by must be one of {sorted(dialect.group_keys)}, not {group_by!r}"
        ) from None
    source, params = _spend_from(where, dialect)
    sql = (
        f"SELECT {key} AS spend_key, count(*), sum(r.input_tokens), sum(r.output_tokens),"
        f" {dialect.cost_sum}{source} GROUP BY spend_key ORDER BY spend_key"
    )
    return sql, tuple(params)


def _read_spend_logs(
    db: _Connection, dialect: _Dialect, where: SpendFilter, limit: int, newest_first: bool
) -> list[SpendLog]:
    sql, params = _spend_logs_sql(where, dialect, limit=limit, newest_first=newest_first)
    return [_spend_log(row) for row in db.execute(sql, params).fetchall()]


def _read_spend_totals(
    db: _Connection, dialect: _Dialect, where: SpendFilter, group_by: SpendGroup
) -> list[SpendTotal]:
    sql, params = _spend_totals_sql(where, dialect, group_by=group_by)
    return [_spend_total(row) for row in db.execute(sql, params).fetchall()]


def _read_key(db: _Connection, dialect: _Dialect, column: str, value: str) -> KeyRow | None:
    # ``column`` is one of two literals of the callers, never input.
    sql = f"SELECT {_KEY_COLUMNS} FROM keys WHERE {column} = {dialect.mark}"
    return _key_row(db.execute(sql, (value,)).fetchone())


def _list_objects(
    db: _Connection,
    dialect: _Dialect,
    kind: str,
    owner: str | None,
    after: str | None,
    limit: int,
    newest_first: bool,
    purpose: str | None,
) -> list[ObjectRow]:
    """A page of live objects of a kind, by creation time (then ID), after the object
    ``after``."""
    mark = dialect.mark
    anchor = None
    if after is not None:
        sql = f"SELECT created_at, id FROM objects WHERE id = {mark}"
        anchor = db.execute(sql, (after,)).fetchone()
    sql = f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE kind = {mark} AND deleted_at IS NULL"
    args: list[Any] = [kind]
    if owner is not None:
        sql += f" AND owner = {mark}"
        args.append(owner)
    if purpose is not None:
        sql += f" AND {dialect.purpose_is}"
        args.append(purpose)
    order = "DESC" if newest_first else "ASC"
    if anchor is not None:
        op = "<" if newest_first else ">"
        sql += f" AND (created_at {op} {mark} OR (created_at = {mark} AND id {op} {mark}))"
        args += [anchor[0], anchor[0], anchor[1]]
    sql += f" ORDER BY created_at {order}, id {order} LIMIT {mark}"
    args.append(limit)
    return [_object_row(row) for row in db.execute(sql, args).fetchall()]
