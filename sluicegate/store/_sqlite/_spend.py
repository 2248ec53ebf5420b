"""Spend: the token counts a usage object fills in, the canonical JSON of ``spend_tags``, and the
SQL of the spend logs and totals (driven by the indexes, never a scan)."""

from __future__ import annotations

from typing import Any, Final

import orjson

from ...errors import StoreIntegrityError
from .._interface import (
    SpendFilter,
    SpendGroup,
    SpendLog,
    SpendTotal,
)


def _canonical(value: Any) -> bytes:
    """The JSON of a spend metadata value as ``spend_tags`` keeps it: equal values, equal bytes."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise StoreIntegrityError(
            f"a spend metadata value is not JSON-serializable: {exc}"
        ) from exc


def _count(container: Any, key: str) -> int:
    """A token count of a usage object; anything missing or not a count is 0."""
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _token_columns(usage: dict[str, Any] | None) -> dict[str, int]:
    if not usage:
        return _NO_TOKENS
    return {
        "input_tokens": _count(usage, "input_tokens"),
        "output_tokens": _count(usage, "output_tokens"),
        "cached_tokens": _count(usage.get("input_tokens_details"), "cached_tokens"),
        "reasoning_tokens": _count(usage.get("output_tokens_details"), "reasoning_tokens"),
        "total_tokens": _count(usage, "total_tokens"),
    }


_NO_TOKENS: Final[dict[str, int]] = dict.fromkeys(
    ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"), 0
)


# -- spend

#: Spend totals' group keys; ``day`` is the UTC date of creation. The unary ``+`` makes a key
#: an expression, not a column: otherwise the planner (having no statistics) walks a whole index
#: in key order to spare the GROUP BY a sort, instead of searching the filter's index.
_GROUP_KEYS: Final[dict[str, str]] = {
    "owner": "+r.owner",
    "model": "+r.model",
    "day": "strftime('%Y-%m-%d', r.created_at, 'unixepoch')",
}

_SPEND_LOG_COLUMNS: Final = (
    "r.id, r.owner, r.model, r.deployment_id, r.provider, r.status, r.input_tokens,"
    " r.output_tokens, r.cached_tokens, r.reasoning_tokens, r.total_tokens, r.cost, r.estimated,"
    " r.ttft, r.duration, r.created_at, r.completed_at, r.spend_metadata"
)


def _spend_from(where: SpendFilter) -> tuple[str, list[Any]]:
    """``FROM ... WHERE ...`` selecting the ``responses AS r`` that match ``where``.

    A metadata filter drives the query from ``spend_tags``' primary key (CROSS JOIN fixes that
    order: the planner could otherwise walk an index of ``responses`` in creation order and test
    every row); each further key is one more primary-key search.
    """
    tags = sorted((where.metadata or {}).items())
    params: list[Any] = []
    clauses: list[str] = []
    if tags:
        first_key, first_value = tags[0]
        source = "spend_tags AS t CROSS JOIN responses AS r ON r.ref = t.response_ref"
        clauses.append("t.key = ? AND t.value = ?")
        params += [first_key, _canonical(first_value)]
        for key, value in tags[1:]:
            clauses.append(
                "r.ref IN (SELECT response_ref FROM spend_tags WHERE key = ? AND value = ?)"
            )
            params += [key, _canonical(value)]
    else:
        source = "responses AS r"
    for clause, value in (
        ("r.owner = ?", where.owner),
        ("r.model = ?", where.model),
        ("r.created_at >= ?", where.start),
        ("r.created_at < ?", where.end),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    sql = f" FROM {source}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    return sql, params


def _spend_logs_query(
    where: SpendFilter, *, limit: int, newest_first: bool
) -> tuple[str, tuple[Any, ...]]:
    """The SQL of :meth:`SQLiteStore.spend_logs` (shared with the query-plan test). Ties of
    creation time go by insertion order (``rowid``: the indexes on creation time end with it,
    so the order costs no sort)."""
    source, params = _spend_from(where)
    direction = "DESC" if newest_first else "ASC"
    sql = (
        f"SELECT {_SPEND_LOG_COLUMNS}{source}"
        f" ORDER BY r.created_at {direction}, r.rowid {direction} LIMIT ?"
    )
    return sql, (*params, limit)


def _spend_totals_query(where: SpendFilter, *, group_by: SpendGroup) -> tuple[str, tuple[Any, ...]]:
    """The SQL of :meth:`SQLiteStore.spend_totals` (shared with the query-plan test)."""
    try:
        key = _GROUP_KEYS[group_by]
    except KeyError:
        raise ValueError(
            f"group_by must be one of {sorted(_GROUP_KEYS)}, not {group_by!r}"
        ) from None
    source, params = _spend_from(where)
    sql = (
        f"SELECT {key} AS spend_key, count(*), sum(r.input_tokens), sum(r.output_tokens),"
        f" total(r.cost){source} GROUP BY spend_key ORDER BY spend_key"
    )
    return sql, tuple(params)


def _spend_log(row: tuple[Any, ...]) -> SpendLog:
    return SpendLog(
        response_id=row[0],
        owner=row[1],
        model=row[2],
        deployment_id=row[3],
        provider=row[4],
        status=row[5],
        input_tokens=row[6],
        output_tokens=row[7],
        cached_tokens=row[8],
        reasoning_tokens=row[9],
        total_tokens=row[10],
        cost=row[11],
        estimated=bool(row[12]),
        ttft=row[13],
        duration=row[14],
        created_at=row[15],
        completed_at=row[16],
        spend_metadata=orjson.loads(row[17]),
    )


def _spend_total(row: tuple[Any, ...]) -> SpendTotal:
    return SpendTotal(
        key=row[0],
        requests=row[1],
        input_tokens=int(row[2]),
        output_tokens=int(row[3]),
        cost=row[4],
    )
