"""Spend: the SQL of the spend logs and totals as SQLite runs them (``.._sql._queries`` builds it),
driven by the indexes, never a scan; and SQLite's dialect of the queries both backends build."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .._sql._queries import _Dialect, _spend_logs_sql, _spend_totals_sql

if TYPE_CHECKING:
    from .._interface import SpendFilter, SpendGroup

_SQLITE: Final = _Dialect(
    mark="?",
    # CROSS JOIN fixes the order: the planner could otherwise walk an index of responses in
    # creation order and test every row against the tags.
    tag_join="CROSS JOIN",
    # The unary ``+`` makes a key an expression, not a column: otherwise the planner (having no
    # statistics) walks a whole index in key order to spare the GROUP BY a sort, instead of
    # searching the filter's index. ``day`` is the UTC date of creation.
    group_keys={
        "owner": "+r.owner",
        "model": "+r.model",
        "day": "strftime('%Y-%m-%d', r.created_at, 'unixepoch')",
    },
    cost_sum="total(r.cost)",
    purpose_is="json_extract(CAST(data AS TEXT), '$.purpose') = ?",
)


def _spend_logs_query(
    where: SpendFilter, *, limit: int, newest_first: bool
) -> tuple[str, tuple[Any, ...]]:
    """The SQL of :meth:`SQLiteStore.spend_logs` (shared with the query-plan test)."""
    return _spend_logs_sql(where, _SQLITE, limit=limit, newest_first=newest_first)


def _spend_totals_query(where: SpendFilter, *, group_by: SpendGroup) -> tuple[str, tuple[Any, ...]]:
    """The SQL of :meth:`SQLiteStore.spend_totals` (shared with the query-plan test)."""
    return _spend_totals_sql(where, _SQLITE, group_by=group_by)
