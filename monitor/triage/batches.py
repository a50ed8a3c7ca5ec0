"""Step 3, batches and columns: which of the run's batches repeat an earlier delivery,
and which columns' null share or scale jumped among the rows they brought.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import BATCH_COLUMN
from monitor.core.manifest import ModelInfo
from monitor.triage.context import (
    SAMPLE_ROWS,
    Context,
    LedgerRow,
    data_columns,
    fetch_rows,
    is_numeric,
    is_text,
    table_of,
)
from monitor.triage.findings import BatchFinding, ColumnShift
from monitor.warehouse.connection import backend_of

log = logging.getLogger(__name__)

NULL_SPELLINGS = ("", "null", "n/a", "none")  # contracts.md null spellings (raw is text)
NULL_JUMP, SCALE_RATIO, MIN_ROWS = 0.2, 5.0, 20
REPEAT_HIGH, REPEAT_LOW = 0.9, 0.5  # share of a batch's rows seen in an earlier batch


def feed_relation(ctx: Context, feed: str) -> ModelInfo | None:
    """The dbt source of an ingest feed (its raw table), if the project declares one."""
    if ctx.project is None:
        return None
    for n in ctx.project.sources.values():
        if n.schema == ctx.cfg.ingest.schema and n.identifier == feed:
            return n
    return None


def batch_findings(conn: sa.Connection, ctx: Context) -> list[BatchFinding]:
    """The run's batches; for each loaded one, whether it repeats an earlier batch."""
    out = []
    for b in ctx.batches_of(ctx.run):
        why = b.reason or (b.decision_reason if b.status != "published" else None)
        f = BatchFinding(b.batch_id, b.feed, b.source_file, b.status, b.rows_read, why)
        rel = feed_relation(ctx, b.feed)
        if rel is not None and b.status != "quarantined" and b.rows_loaded:
            f.repeat_share, f.repeats = _repeat_share(conn, ctx, rel, b)
            ref = _reference_batch(ctx, b)
            f.repeat_share_before = _repeat_share(conn, ctx, rel, ref)[0] if ref else None
            f.resend = bool(f.repeats and (f.repeat_share or 0) >= REPEAT_HIGH
                            and f.repeat_share_before is not None
                            and f.repeat_share_before < REPEAT_LOW)
            if f.resend:
                _sample_resend(conn, ctx, rel, f)
        out.append(f)
    return out


def _sample_resend(conn: sa.Connection, ctx: Context, rel: ModelInfo, f: BatchFinding) -> None:
    """A few keys of the resent batch, with their rows in both batches."""
    cols = ctx.columns.get(rel.unique_id, {})
    spec = ctx.cfg.ingest.feeds.get(f.feed)
    key = next((k for k in (spec.key if spec else []) if k in cols), None)
    if key is None or f.repeats is None:
        return
    t = table_of(rel, cols)
    keys = sa.select(t.c[key]).where(t.c[BATCH_COLUMN] == f.batch_id).limit(3)
    q = (sa.select(t).where(t.c[key].in_(keys.scalar_subquery()),
                            t.c[BATCH_COLUMN].in_([f.batch_id, f.repeats]))
         .order_by(t.c[key], t.c[BATCH_COLUMN]).limit(SAMPLE_ROWS))
    ctx.samples[f"{rel.name}: rows of {f.batch_id} and of the batch it repeats"] = fetch_rows(
        conn, q)


def _reference_batch(ctx: Context, b: LedgerRow) -> LedgerRow | None:
    """The latest earlier batch of the same feed that the run did not bring."""
    mine = {x.batch_id for x in ctx.batches_of(ctx.run)}
    earlier = [x for x in ctx.ledger if x.feed == b.feed and x.load_seq < b.load_seq
               and x.batch_id not in mine and x.rows_loaded and x.status != "quarantined"]
    return earlier[-1] if earlier else None


def _repeat_share(conn: sa.Connection, ctx: Context, rel: ModelInfo, b: LedgerRow
                  ) -> tuple[float | None, str | None]:
    """Share of ``b``'s distinct rows that an earlier batch of the feed already had, and
    the earlier batch that has the most of them."""
    earlier = [x.batch_id for x in ctx.ledger if x.feed == b.feed and x.load_seq < b.load_seq
               and x.rows_loaded and x.status != "quarantined"][-7:]
    cols = data_columns(ctx.columns.get(rel.unique_id, {}))
    if not earlier or not cols:
        return None, None
    t = table_of(rel, [*cols, BATCH_COLUMN])

    def rows_of(ids: Sequence[str]) -> sa.Select[Any]:
        return sa.select(*(t.c[c] for c in cols)).where(t.c[BATCH_COLUMN].in_(list(ids)))

    def count(q: sa.Select[Any] | sa.CompoundSelect[Any]) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(q.subquery())).scalar()
                   or 0)

    distinct = count(rows_of([b.batch_id]).distinct())
    repeated = count(sa.intersect(rows_of([b.batch_id]), rows_of(earlier)))
    if not distinct:
        return None, None
    share = repeated / distinct
    if share < REPEAT_HIGH:
        return share, None
    best = max(reversed(earlier[-5:]),
               key=lambda e: count(sa.intersect(rows_of([b.batch_id]), rows_of([e]))))
    return share, best


def column_shifts(conn: sa.Connection, ctx: Context) -> list[ColumnShift]:
    """Columns whose null share or scale among the run's new rows jumped vs baseline."""
    new_ids, base_ids = ctx.new_ids(ctx.run), ctx.new_ids(ctx.baseline)
    if ctx.project is None or not new_ids or not base_ids:
        return []
    out: list[ColumnShift] = []
    for node in ctx.project.lineage():
        cols = ctx.columns.get(node.unique_id, {})
        if BATCH_COLUMN not in cols or not data_columns(cols) or _derived_view(ctx, node):
            continue
        try:
            now = _column_stats(conn, node, cols, new_ids)
            before = _column_stats(conn, node, cols, base_ids)
        except sa.exc.DBAPIError as exc:
            log.warning("column stats of %s failed: %s", node.name, exc.orig)
            conn.rollback()
            continue
        found = _compare_stats(node, now, before)
        for shift in found:
            if not any(x.column == shift.column and x.kind == shift.kind for x in out):
                _sample_shift(conn, ctx, node, shift, new_ids)  # only where it starts
        out += found
    return out


def _sample_shift(conn: sa.Connection, ctx: Context, node: ModelInfo, shift: ColumnShift,
                  ids: Sequence[str]) -> None:
    """New rows showing the shift: null-like values, or the largest values."""
    cols = ctx.columns.get(node.unique_id, {})
    t = table_of(node, cols)
    col = t.c[shift.column]
    q = sa.select(t).where(t.c[BATCH_COLUMN].in_(list(ids)))
    if shift.kind == "nulls":
        nullish: sa.ColumnElement[bool] = col.is_(None)
        if is_text(cols[shift.column]):
            nullish = sa.or_(nullish, sa.func.lower(sa.func.trim(col)).in_(NULL_SPELLINGS))
        q = q.where(nullish)
    elif is_numeric(cols[shift.column]):
        q = q.order_by(col.desc())
    ctx.samples[f"{node.name}: new rows, {shift.column} ({shift.kind})"] = fetch_rows(
        conn, q.limit(SAMPLE_ROWS))


def _derived_view(ctx: Context, node: ModelInfo) -> bool:
    """A view over other models: scanning it re-runs its joins (staging views, over
    sources only, and materialized tables are cheap to scan)."""
    if node.materialization != "view" or ctx.project is None:
        return False
    return any(p.resource_type != "source" for p in ctx.project.parents(node.unique_id))


def _column_stats(conn: sa.Connection, node: ModelInfo, cols: Mapping[str, str],
                  ids: Sequence[str]) -> dict[str, Any]:
    """Row count; per column the null-like share; per numeric column the mean."""
    data = data_columns(cols)
    t = table_of(node, [*data, BATCH_COLUMN])
    backend = backend_of(conn)
    prep = conn.dialect.identifier_preparer
    exprs: list[sa.ColumnElement[Any]] = [sa.func.count().label("n")]
    names = ["n"]
    for c in data:
        col, typ = t.c[c], cols[c]
        nullish: sa.ColumnElement[bool] = col.is_(None)
        if is_text(typ):
            nullish = sa.or_(nullish, sa.func.lower(sa.func.trim(col)).in_(NULL_SPELLINGS))
        exprs.append(sa.func.sum(sa.case((nullish, 1), else_=0)))
        names.append(f"null:{c}")
        num: sa.ColumnElement[Any] | None = None
        if is_numeric(typ):
            num = sa.cast(col, sa.Float)
        elif is_text(typ):  # raw feeds are text: the engine's "try cast", where it has one
            cast = backend.try_cast_double(conn, prep.quote(c))
            num = sa.literal_column(cast) if cast else None
        if num is not None:
            exprs += [sa.func.avg(num), sa.func.count(num), sa.func.count(col)]
            names += [f"avg:{c}", f"num:{c}", f"nonnull:{c}"]
    row = conn.execute(sa.select(*exprs).where(t.c[BATCH_COLUMN].in_(list(ids)))).one()
    return dict(zip(names, row, strict=True))


def _compare_stats(node: ModelInfo, now: Mapping[str, Any], before: Mapping[str, Any]
                   ) -> list[ColumnShift]:
    n, m = int(now["n"] or 0), int(before["n"] or 0)
    if n < MIN_ROWS or m < MIN_ROWS:
        return []
    out = []
    for name in now:
        if name.startswith("null:"):
            col = name[5:]
            a, b = int(now[name] or 0) / n, int(before[name] or 0) / m
            if a - b >= NULL_JUMP and a >= 2 * b:
                out.append(ColumnShift(node.name, node.layer, col, "nulls", a, b, n, m))
        elif name.startswith("avg:"):
            col = name[4:]
            if not (_mostly_numeric(now, col) and _mostly_numeric(before, col)):
                continue
            a, b = float(now[name]), float(before[name])
            if b and a and a / b > 0 and (a / b >= SCALE_RATIO or a / b <= 1 / SCALE_RATIO):
                out.append(ColumnShift(node.name, node.layer, col, "scale", a, b, n, m))
    return out


def _mostly_numeric(stats: Mapping[str, Any], col: str) -> bool:
    """Enough values, and (for text) at least 90% of them numbers."""
    num, nonnull = int(stats.get(f"num:{col}") or 0), int(stats.get(f"nonnull:{col}") or 0)
    return num >= MIN_ROWS and stats.get(f"avg:{col}") is not None and num >= 0.9 * nonnull
