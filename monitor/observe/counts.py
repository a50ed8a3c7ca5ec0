"""The profile query of one relation: row count, key counts and aggregates in one
pre-aggregated query, on columns matched against the relation's real ones first."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import SEQ_COLUMN
from monitor.core.manifest import ModelInfo
from monitor.core.sections import AggregateSpec
from monitor.warehouse.connection import backend_of
from monitor.warehouse.engine import Backend

log = logging.getLogger(__name__)

@dataclass
class ProfileQuery:
    """Labelled expressions of one node's profile query and how to read them back."""

    exprs: list[sa.ColumnElement[Any]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the grain's real column names

    def add(self, metric: str, expr: sa.ColumnElement[Any]) -> None:
        self.exprs.append(expr.label(f"m{len(self.exprs)}"))
        self.names.append(metric)


_NUMERIC_PREFIXES = (
    "TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC",
)  # fmt: skip  (type names as DuckDB's information_schema and SQLAlchemy spell them)


def relation_columns(conn: sa.Connection, node: ModelInfo) -> dict[str, bool] | None:
    """Real columns of the relation (name → is numeric), or None if it does not exist."""
    found = backend_of(conn).relation_columns(conn, [(node.schema, node.identifier)])
    columns = found.get((node.schema, node.identifier))
    if not columns:
        return None
    return {name: typ.startswith(_NUMERIC_PREFIXES) and not typ.startswith("INTERVAL")
            for name, typ in columns.items()}


def _resolve(name: str, columns: Mapping[str, bool]) -> str | None:
    """The real spelling of a column name (exact, else case-insensitive), or None."""
    if name in columns:
        return name
    folded = [c for c in columns if c.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def profile_query(
    node: ModelInfo,
    columns: Mapping[str, bool],
    specs: Sequence[AggregateSpec],
    conn: sa.Connection,
    window: tuple[int, int] | None = None,
    distinct: bool = True,
    also: Sequence[str] = (),
) -> tuple[sa.FromClause, ProfileQuery]:
    """The node's profile query; with ``window`` = (after, upto), only the rows whose
    publish_seq lies in (after, upto]; ``distinct=False`` leaves out the distinct keys
    (the caller counts them its own way); ``also`` names columns the caller reads too."""
    resolved = [(k, _resolve(k, columns)) for k in node.grain]
    keys = [(k, real) for k, real in resolved if real is not None]
    if len(keys) != len(resolved):
        log.warning("grain of %s not found in relation: %s", node.name, list(node.grain))
        keys = []
    aggs = aggregates(node, columns, specs)

    used = list(dict.fromkeys([real for _, real in keys] + [r for _, _, r in aggs]))
    tbl: sa.FromClause = sa.table(
        node.identifier, *(sa.column(c) for c in {*used, *_seq(window), *also}),
        schema=node.schema,
    )
    if window is not None:
        seq = tbl.c[SEQ_COLUMN]
        tbl = sa.select(tbl).where(seq > window[0], seq <= window[1]).subquery("w")
    plan = ProfileQuery(keys=[real for _, real in keys])
    if keys and distinct:
        return _grouped_query(node, tbl, keys, list(dict.fromkeys(aggs)), conn, plan)
    plan.add("row_count", sa.func.count())
    for name, real in keys:
        plan.add(f"nonnull:{name}", sa.func.count(tbl.c[real]))
    for metric, func, real in dict.fromkeys(aggs):
        expr = aggregate(node, conn, metric, func, tbl.c[real])
        if expr is not None:
            plan.add(metric, expr)
    return tbl, plan


def aggregates(
    node: ModelInfo, columns: Mapping[str, bool], specs: Sequence[AggregateSpec]
) -> list[tuple[str, str, str]]:
    """(metric, func, real column) of the specs whose column exists and is numeric."""
    aggs: list[tuple[str, str, str]] = []
    for spec in specs:
        real = _resolve(spec.column, columns)
        if real is None or not columns[real]:
            log.warning("aggregate column %s.%s missing or not numeric", node.name, spec.column)
            continue
        aggs.extend((metric, f, real) for metric, f in spec.metrics)
    return aggs


def aggregate(
    node: ModelInfo, conn: sa.Connection, metric: str, func: str, col: sa.ColumnElement[Any]
) -> sa.ColumnElement[Any] | None:
    """``func(col)``; None (logged) for a median the engine cannot compute."""
    backend: Backend = backend_of(conn)
    expr = (backend.median(conn.dialect, col) if func == "median"
            else getattr(sa.func, func)(col))
    if expr is None:
        log.warning("median not supported on %s; skipping %s.%s", conn.dialect.name,
                    node.name, metric)
    return expr


def _grouped_query(
    node: ModelInfo, rel: sa.FromClause, keys: Sequence[tuple[str, str]],
    aggs: Sequence[tuple[str, str, str]], conn: sa.Connection, plan: ProfileQuery,
) -> tuple[sa.FromClause, ProfileQuery]:
    """Every metric from one pass over ``rel``: grouped by the key, then the groups
    summed up (a NULL key is one group, as in SELECT DISTINCT). Counting distinct keys
    in a second scan read a view twice, and a view re-runs its joins on every read
    (README, Results). A median cannot be rebuilt from groups: it reads ``rel`` again,
    only when configured."""
    inner: list[sa.ColumnElement[Any]] = [sa.func.count().label("n")]
    inner += [sa.func.count(rel.c[real]).label(f"nn{i}") for i, (_, real) in enumerate(keys)]
    for j, (_, func, real) in enumerate(aggs):
        col = rel.c[real]
        if func in ("sum", "min", "max"):
            inner.append(getattr(sa.func, func)(col).label(f"a{j}"))
        elif func == "avg":
            inner += [sa.func.sum(col).label(f"a{j}"), sa.func.count(col).label(f"c{j}")]
    g = (sa.select(*inner).select_from(rel)
         .group_by(*(rel.c[real] for _, real in keys)).subquery("g"))
    plan.add("row_count", sa.func.coalesce(sa.func.sum(g.c.n), 0))
    plan.add("distinct_keys", sa.func.count())
    for i, (name, _) in enumerate(keys):
        plan.add(f"nonnull:{name}", sa.func.coalesce(sa.func.sum(g.c[f"nn{i}"]), 0))
    for j, (metric, func, real) in enumerate(aggs):
        if func in ("sum", "min", "max"):
            plan.add(metric, getattr(sa.func, func)(g.c[f"a{j}"]))
        elif func == "avg":
            total = sa.cast(sa.func.sum(g.c[f"a{j}"]), sa.Double)
            plan.add(metric, total / sa.func.nullif(sa.func.sum(g.c[f"c{j}"]), 0))
        elif (median := aggregate(node, conn, metric, func, rel.c[real])) is not None:
            plan.add(metric, sa.select(median).select_from(rel).scalar_subquery())
    return g, plan


def _seq(window: tuple[int, int] | None) -> tuple[str, ...]:
    return (SEQ_COLUMN,) if window is not None else ()


def touched_aggregates(
    conn: sa.Connection,
    node: ModelInfo,
    columns: Mapping[str, bool],
    specs: Sequence[AggregateSpec],
    after: int | None,
) -> dict[str, Any]:
    """The aggregates of scope ``touched``: over the rows whose publish seq is above
    ``after``. One query; a table written in publish order reads only its newest row
    groups (zone maps)."""
    if after is None:
        log.info("touched aggregates of %s skipped: no watermark to read above "
                 "(--full-refresh or ingest disabled)", node.name)
        return {}
    if SEQ_COLUMN not in columns:
        log.warning("touched aggregates of %s skipped: it has no %s column", node.name,
                    SEQ_COLUMN)
        return {}
    tbl = sa.table(node.identifier, *(sa.column(c) for c in columns), schema=node.schema)
    plan = ProfileQuery()
    for metric, func, real in aggregates(node, columns, specs):
        expr = aggregate(node, conn, metric, func, tbl.c[real])
        if expr is not None:
            plan.add(metric, expr)
    if not plan.exprs:
        return {}
    row = conn.execute(
        sa.select(*plan.exprs).select_from(tbl).where(tbl.c[SEQ_COLUMN] > after)
    ).one()
    return dict(zip(plan.names, row, strict=True))


def raw_counts(
    conn: sa.Connection,
    node: ModelInfo,
    columns: Mapping[str, bool],
    specs: Sequence[AggregateSpec],
    window: tuple[int, int] | None = None,
) -> dict[str, Any]:
    tbl, plan = profile_query(node, columns, specs, conn, window)
    row = conn.execute(sa.select(*plan.exprs).select_from(tbl)).one()
    return dict(zip(plan.names, row, strict=True))


def to_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        num = float(value)
        return num if math.isfinite(num) else None
    return None
