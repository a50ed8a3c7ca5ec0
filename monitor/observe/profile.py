"""Layer snapshots: volume, key and aggregate metrics of every observable relation.

For each model/seed/snapshot/source relation that exists, ONE pre-aggregated query
(SQLAlchemy Core) yields:

* ``row_count``;
* with a grain: ``distinct_keys`` (distinct key combinations, a NULL key counts as one
  combination), ``duplicate_keys`` (= row_count - distinct_keys) and
  ``null_rate:<col>`` per key column (0.0 for an empty relation);
* configured aggregates ``<func>:<col>`` for func in sum, avg, min, max, median
  (numeric columns only; ``sum`` of no rows is 0.0, the others are skipped when NULL).

Identifiers from the manifest or config are matched against the relation's real columns
before any SQL is built; unknown names are skipped with a warning. Points are stored in
the state table ``metric_points`` and read back as drift history.

Counting a view re-runs it over all history. A view whose grain holds ``_batch_id`` and
whose rows carry their batch's ``_publish_seq`` is therefore counted on the batches
published since the last snapshot, and the counts are added to the totals carried in the
state table ``profile_carries`` (rows of different batches never share a key, so counts,
distinct keys, non-null counts and sums add up). The carried totals are used only while
they are provably still the view's: the view definitions (the view's and every upstream
view's, as the warehouse stores them) are unchanged and the batches published up to the
carried watermark are the same ones (a retraction changes them), and no run since rebuilt
the tables under it (``--full-refresh``, rollback); otherwise, and for aggregates that do
not add up (avg, min, max, median), the view is counted in full. An incremental table
keyed by batch (staging claims) is carried the same way, up to its own highest
``_publish_seq``: a table holds only the batches its builds wrote, so a view reading one
is counted only up to that table's highest ``_publish_seq`` too.

Counting the distinct keys of an incremental table is a hash aggregate over every key it
holds (0.2 s at 2.7M rows, 5.9 s at 40M), so it is not redone every cycle either. An
incremental run rewrites only the keys of the rows it merges, and every row it writes
carries a sequence column (``Carry.seq_columns``) above the table's watermark at the last
count, less the lookback: the same contract the touched-key suites and DELTA snapshots
rest on. When the last count found no duplicate key, the keys of all other rows still have
one row each, so the duplicates now are those among the touched keys: one semi join of
the table's key columns on the keys of the touched rows. Rows and non-null keys are still
counted in full (a cheap scan). A full count is made instead when the last one found
duplicates, when a run since rebuilt the table (``--full-refresh``) or a rollback put it
back, when the metrics or key changed, and every ``full_count_every``-th count: that one
also sees rows written below the watermark, which the touched keys cannot.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import logging
import math
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import BATCH_COLUMN, SEQ_COLUMN, TOUCHED_SUFFIX
from monitor.core.manifest import ModelInfo, Project
from monitor.core.sections import AggregateSpec, DriftConfig, ProfileConfig
from monitor.observe.drift import DriftResult, HistoryPoint, score
from monitor.store.state import events, metric_points, profile_carries, runs, utcnow

__all__ = [
    "Carry",
    "MetricPoint",
    "check_config",
    "default_sum_columns",
    "load_history",
    "metric_points",
    "profile_carries",
    "save_points",
    "score_points",
    "snapshot",
]

log = logging.getLogger(__name__)

# Dialects whose percentile_cont is an ordered-set aggregate (not only a window function).
_PERCENTILE_CONT_DIALECTS = frozenset({"postgresql", "redshift", "snowflake", "oracle"})
_NUMERIC_PREFIXES = (
    "TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC",
)  # fmt: skip



_ADDITIVE = ("row_count", "distinct_keys", "nonnull:", "sum:")






@dataclass(frozen=True)
class MetricPoint:
    """One metric of one relation at one snapshot; ``z``/``anomalous`` set by drift."""

    run_id: str
    model: str
    layer: str
    metric: str
    value: float
    observed_at: datetime
    z: float | None = None
    anomalous: bool = False


@dataclass(frozen=True)
class Carry:
    """Where carried view counts live (the state store), and the warehouse's batch
    ledger (``ingest.ledger_tables``), whose publish sequence says which batches are new."""

    state: sa.Engine
    ledger: sa.Table
    published: str = "published"  # the ledger status of a batch staging reads
    # Incremental tables: the sequence columns a run raises on every row it writes, the
    # one its watermark reads (first present wins), and how far below it a run re-reads.
    seq_columns: tuple[str, ...] = ("_publish_seq", "_enriched_publish_seq")
    watermark_columns: tuple[str, ...] = ("_publish_seq",)
    lookback: int = 0


@dataclass
class _Plan:
    """Labelled expressions of one node's profile query and how to read them back."""

    exprs: list[sa.ColumnElement[Any]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the grain's real column names

    def add(self, metric: str, expr: sa.ColumnElement[Any]) -> None:
        self.exprs.append(expr.label(f"m{len(self.exprs)}"))
        self.names.append(metric)


def check_config(project: Project, cfg: ProfileConfig) -> None:
    """Raise ValueError if an aggregate names a model the manifest does not know."""
    for spec in cfg.aggregates:
        try:
            project.by_name(spec.model)
        except KeyError as exc:
            raise ValueError(f"profile aggregate: {exc.args[0]}") from None


def snapshot(
    engine: sa.Engine,
    project: Project,
    cfg: ProfileConfig,
    *,
    run_id: str | None = None,
    observed_at: datetime | None = None,
    carry: Carry | None = None,
    touched_after: int | None = None,
) -> list[MetricPoint]:
    """Profile every selected relation that exists; one query per relation.

    ``observed_at`` should be the logical day of the data (defaults to now, UTC) since
    drift compares weekdays. A relation that fails to query is logged and skipped.
    With ``carry``, views keyed by batch are counted on the new batches only (module
    docstring). ``touched_after``: the publish watermark the cycle started from; the
    aggregates of scope ``touched`` read the rows above it (None: they are skipped, as
    after a ``--full-refresh``, where every row is new).
    """
    run = run_id or uuid.uuid4().hex
    at = observed_at or datetime.now(UTC)
    specs_by_node = _specs_by_node(project, cfg)
    points: list[MetricPoint] = []
    # One connection for every relation: opening a DuckDB file costs more than most counts.
    with engine.connect() as conn:
        ledger = _Ledger(conn, carry, project) if carry is not None else None
        for node in project.lineage():
            if _selected(node, cfg):
                specs = specs_by_node.get(node.unique_id) or _default_specs(conn, node, cfg)
                values = _profile_or_skip(conn, node, specs, ledger, run,
                                          cfg.full_count_every, touched_after)
                points.extend(
                    MetricPoint(run, node.name, node.layer, metric, value, at)
                    for metric, value in values.items()
                )
    return points


def _profile_or_skip(
    conn: sa.Connection, node: ModelInfo, specs: Sequence[AggregateSpec],
    ledger: _Ledger | None, run_id: str, full_count_every: int = 1,
    touched_after: int | None = None,
) -> dict[str, float]:
    """The node's metrics; none (logged) if its query fails, leaving the connection usable."""
    started = time.perf_counter()
    try:
        values = _profile_node(conn, node, specs, ledger, run_id, full_count_every,
                               touched_after)
    except sa.exc.DBAPIError as exc:
        conn.rollback()
        log.warning("profile of %s failed: %s", node.name, exc.orig)
        return {}
    conn.rollback()  # end the read transaction: the next node sees committed state anew
    log.debug("profile of %s in %.2f s", node.name, time.perf_counter() - started)
    return values


def save_points(state_engine: sa.Engine, points: Iterable[MetricPoint]) -> int:
    """Append points to ``metric_points``; returns the number written."""
    rows = [
        {
            "run_id": p.run_id,
            "model": p.model,
            "layer": p.layer,
            "metric": p.metric,
            "value": p.value,
            "observed_at": _utc_naive(p.observed_at),
            "z": p.z,
            "anomalous": p.anomalous,
        }
        for p in points
    ]
    if rows:
        with state_engine.begin() as conn:
            conn.execute(metric_points.insert(), rows)
    return len(rows)


def load_history(
    state_engine: sa.Engine,
    model: str,
    metric: str,
    before: datetime | None = None,
    limit: int | None = None,
) -> list[HistoryPoint]:
    """Stored points of one series strictly before ``before``, oldest first.

    One point per ``observed_at`` (the latest written wins, so a re-run of the same
    logical day replaces the earlier one); ``limit`` keeps the most recent points.
    ``at`` comes back as an aware UTC datetime.
    """
    mp = metric_points
    latest = sa.select(sa.func.max(mp.c.id)).where(mp.c.model == model, mp.c.metric == metric)
    if before is not None:
        latest = latest.where(mp.c.observed_at < _utc_naive(before))
    latest = latest.group_by(mp.c.observed_at)
    query = (
        sa.select(mp.c.observed_at, mp.c.value, mp.c.anomalous)
        .where(mp.c.id.in_(latest))
        .order_by(mp.c.observed_at.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    with state_engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        HistoryPoint(at=r.observed_at.replace(tzinfo=UTC), value=r.value, anomalous=r.anomalous)
        for r in reversed(rows)
    ]


def score_points(
    state_engine: sa.Engine, points: Sequence[MetricPoint], cfg: DriftConfig,
    rows_added: Mapping[str, float] | None = None,
) -> list[tuple[MetricPoint, DriftResult]]:
    """Score each point against its stored history; returns points with z/anomalous set.

    Metrics not matching ``cfg.metrics`` get reason ``not scored``. Metrics in
    ``cfg.delta_metrics`` are scored as the change since the previous stored point
    (a cumulative count drifts upward forever; its daily growth does not).
    Save the returned points with :func:`save_points` so their flags feed back.
    ``rows_added``: per model, the rows the run added: the derived ``per_row:`` means
    are floored at their sampling noise while their baseline is short.
    """
    out: list[tuple[MetricPoint, DriftResult]] = []
    added: dict[tuple[str, str], float] = {}  # this run's growth of each cumulative metric
    for p in points:
        if not any(fnmatch.fnmatchcase(p.metric, pat) for pat in cfg.metrics):
            out.append((p, DriftResult(None, None, None, 0, False, "not scored")))
            continue
        # Twice the window: flagged and month-end points are left out of baselines.
        history = load_history(
            state_engine, p.model, p.metric, before=p.observed_at, limit=cfg.window * 2 + 1,
        )  # fmt: skip
        current: HistoryPoint | None = HistoryPoint(_utc(p.observed_at), p.value)
        # A mean-like metric has no weekday pattern to learn: rescaling only adds noise.
        level, scfg = None, replace(cfg, seasonal=False) if cfg.is_stable(p.metric) else cfg
        if current is not None and (cfg.is_delta(p.metric) or p.metric.startswith(PER_ROW)):
            # N days of a cumulative metric are N - 1 changes: the same days of history
            # make a change series as ready as a level series.
            scfg = replace(scfg, min_history=max(0, cfg.min_history - 1))
        if current is not None and cfg.is_delta(p.metric):
            level = history[-1].value if history else None
            history, current = _as_deltas(history, current)
            history = _changes(history)
            if current is not None:
                added[(p.model, p.metric)] = current.value
        if current is not None and level is not None and current.value == 0 and any(
                h.value for h in history):
            res = _NO_CHANGE  # nothing delivered or merged: freshness and the gate own that
        else:
            noise = cfg.sampling_noise_ratio((rows_added or {}).get(p.model, 0.0))
            res = (score(history, current, scfg, level, cfg.floor_ratio(p.metric), noise)
                   if current is not None else _NO_HISTORY)
        out.append((replace(p, z=res.z, anomalous=res.anomalous), res))
    derived = _per_row_points(points, added)
    rows = {model: n for (model, metric), n in added.items() if metric == "row_count"}
    return out + (score_points(state_engine, derived, cfg, rows) if derived else [])


def _per_row_points(points: Sequence[MetricPoint], added: dict[tuple[str, str], float]
                    ) -> list[MetricPoint]:
    """``per_row:<column>``: what a run added to a sum per row it added. Duplicated
    payments inflate a mart's sum without adding orders; the sum's growth alone moves
    no more than a busy day, the sum per added row moves far less."""
    out = []
    for p in points:
        if not p.metric.startswith("sum:") or p.metric.endswith(TOUCHED_SUFFIX):
            continue
        rows = added.get((p.model, "row_count"))
        total = added.get((p.model, p.metric))
        if rows and rows > 0 and total is not None:
            out.append(replace(p, metric=PER_ROW + p.metric[4:], value=total / rows,
                               z=None, anomalous=False))
    return out


_NO_HISTORY = DriftResult(None, None, None, 0, False, "no history")
PER_ROW = "per_row:"  # a run's growth of a sum per row it added (derived, see below)
_NO_CHANGE = DriftResult(None, None, None, 0, False, "no change")


def _changes(deltas: list[HistoryPoint]) -> list[HistoryPoint]:
    """The days something changed: a day without a delivery (an unchanged snapshot
    re-delivered, a cycle with nothing new) is not a growth of 0 to learn from. A series
    that never changed keeps its zeros, so its first change is scored."""
    changed = [h for h in deltas if h.value != 0]
    return changed or deltas


def _as_deltas(
    history: Sequence[HistoryPoint], current: HistoryPoint
) -> tuple[list[HistoryPoint], HistoryPoint | None]:
    """Turn a level series into a change series; a delta inherits its later point's flag."""
    if not history:
        return [], None
    deltas = [
        HistoryPoint(b.at, b.value - a.value, b.anomalous) for a, b in itertools.pairwise(history)
    ]
    return deltas, HistoryPoint(current.at, current.value - history[-1].value)


def _specs_by_node(project: Project, cfg: ProfileConfig) -> dict[str, list[AggregateSpec]]:
    """Aggregate specs keyed by the unique_id of the node they name (unknown: skipped)."""
    out: dict[str, list[AggregateSpec]] = {}
    for spec in cfg.aggregates:
        try:
            uid = project.by_name(spec.model).unique_id
        except KeyError as exc:
            log.warning("profile aggregate skipped: %s", exc.args[0])
            continue
        out.setdefault(uid, []).append(spec)
    return out


# Column names that carry a measure, preferred for default sums (exact, then contained).
_MEASURE_WORDS = ("amount", "total", "revenue", "price", "cost", "value", "quantity")
_KEY_SUFFIXES = ("_id", "_key", "_sk", "_seq", "_number")


def _default_specs(conn: sa.Connection, node: ModelInfo, cfg: ProfileConfig
                   ) -> list[AggregateSpec]:
    """Sums of a mart's measure columns when no aggregate is configured anywhere."""
    if cfg.aggregates or not cfg.default_sums or node.layer != "fct":
        return []
    try:
        columns = _columns(conn, node)
    except sa.exc.DBAPIError:
        conn.rollback()
        return []
    cols = default_sum_columns(columns or {}, node.grain, cfg.default_sums)
    return [AggregateSpec(node.name, c) for c in cols]


def default_sum_columns(columns: Mapping[str, bool], grain: Sequence[str], limit: int
                        ) -> list[str]:
    """Up to ``limit`` numeric non-key columns, amount-like names first, then in order."""
    keys = {g.lower() for g in grain}

    def measure(name: str) -> bool:
        low = name.lower()
        return not (low.startswith("_") or low in keys or low == "id"
                    or low.endswith(_KEY_SUFFIXES))

    def rank(item: tuple[int, str]) -> tuple[int, int]:
        pos, name = item
        low = name.lower()
        exact = low in _MEASURE_WORDS
        contains = any(w in low for w in _MEASURE_WORDS)
        return (0 if exact else 1 if contains else 2, pos)

    numeric = [(i, c) for i, (c, num) in enumerate(columns.items()) if num and measure(c)]
    return [c for _, c in sorted(numeric, key=rank)[:limit]]


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _utc_naive(at: datetime) -> datetime:
    return _utc(at).replace(tzinfo=None)


def _selected(node: ModelInfo, cfg: ProfileConfig) -> bool:
    if not node.is_relation or node.name in cfg.exclude:
        return False
    if node.resource_type == "source" and not cfg.include_sources:
        return False
    if node.resource_type == "model" and node.materialization == "view" and not cfg.views:
        return False
    return not cfg.layers or node.layer in cfg.layers


def _columns(conn: sa.Connection, node: ModelInfo) -> dict[str, bool] | None:
    """Real columns of the relation (name → is numeric), or None if it does not exist."""
    if conn.dialect.name == "duckdb":
        # duckdb-engine's reflection queries pg_catalog.pg_collation, which DuckDB lacks
        # (fails with SQLAlchemy >= 2.0.45), so read information_schema directly.
        ic = sa.table(
            "columns",
            *(sa.column(c) for c in ("table_catalog", "table_schema", "table_name")),
            *(sa.column(c) for c in ("column_name", "data_type", "ordinal_position")),
            schema="information_schema",
        )
        rows = conn.execute(
            sa.select(ic.c.column_name, ic.c.data_type)
            .where(ic.c.table_schema == node.schema, ic.c.table_name == node.identifier)
            .where(ic.c.table_catalog == sa.func.current_database())
            .order_by(ic.c.ordinal_position)
        ).all()
        return {str(r[0]): str(r[1]).upper().startswith(_NUMERIC_PREFIXES) for r in rows} or None
    insp = sa.inspect(conn)
    if not insp.has_table(node.identifier, schema=node.schema):
        return None
    cols = insp.get_columns(node.identifier, schema=node.schema)
    return {str(c["name"]): isinstance(c["type"], (sa.Integer, sa.Numeric)) for c in cols}


def _resolve(name: str, columns: Mapping[str, bool]) -> str | None:
    """The real spelling of a column name (exact, else case-insensitive), or None."""
    if name in columns:
        return name
    folded = [c for c in columns if c.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def _median(dialect: str, col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any] | None:
    if dialect == "duckdb":
        return sa.func.median(col)
    if dialect in _PERCENTILE_CONT_DIALECTS:
        return sa.func.percentile_cont(0.5).within_group(col)
    return None


def _plan(
    node: ModelInfo,
    columns: Mapping[str, bool],
    specs: Sequence[AggregateSpec],
    dialect: str,
    window: tuple[int, int] | None = None,
    distinct: bool = True,
    also: Sequence[str] = (),
) -> tuple[sa.FromClause, _Plan]:
    """The node's profile query; with ``window`` = (after, upto), only the rows whose
    publish_seq lies in (after, upto]; ``distinct=False`` leaves out the distinct keys
    (the caller counts them its own way); ``also`` names columns the caller reads too."""
    resolved = [(k, _resolve(k, columns)) for k in node.grain]
    keys = [(k, real) for k, real in resolved if real is not None]
    if len(keys) != len(resolved):
        log.warning("grain of %s not found in relation: %s", node.name, list(node.grain))
        keys = []
    aggs = _aggregates(node, columns, specs)

    used = list(dict.fromkeys([real for _, real in keys] + [r for _, _, r in aggs]))
    tbl: sa.FromClause = sa.table(
        node.identifier, *(sa.column(c) for c in {*used, *_seq(window), *also}),
        schema=node.schema,
    )
    if window is not None:
        seq = tbl.c[SEQ_COLUMN]
        tbl = sa.select(tbl).where(seq > window[0], seq <= window[1]).subquery("w")
    plan = _Plan(keys=[real for _, real in keys])
    if keys and distinct:
        return _grouped_plan(node, tbl, keys, list(dict.fromkeys(aggs)), dialect, plan)
    plan.add("row_count", sa.func.count())
    for name, real in keys:
        plan.add(f"nonnull:{name}", sa.func.count(tbl.c[real]))
    for metric, func, real in dict.fromkeys(aggs):
        expr = _aggregate(node, dialect, metric, func, tbl.c[real])
        if expr is not None:
            plan.add(metric, expr)
    return tbl, plan


def _aggregates(
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


def _aggregate(
    node: ModelInfo, dialect: str, metric: str, func: str, col: sa.ColumnElement[Any]
) -> sa.ColumnElement[Any] | None:
    """``func(col)``; None (logged) for a median the dialect cannot compute."""
    expr = _median(dialect, col) if func == "median" else getattr(sa.func, func)(col)
    if expr is None:
        log.warning("median not supported on %s; skipping %s.%s", dialect, node.name, metric)
    return expr


def _grouped_plan(
    node: ModelInfo, rel: sa.FromClause, keys: Sequence[tuple[str, str]],
    aggs: Sequence[tuple[str, str, str]], dialect: str, plan: _Plan,
) -> tuple[sa.FromClause, _Plan]:
    """Every metric from one pass over ``rel``: grouped by the key, then the groups
    summed up (a NULL key is one group, as in SELECT DISTINCT). Counting distinct keys
    in a second scan read a view twice, and a view re-runs its joins on every read
    (13 s instead of 7 for the day's 20M rows of int_claims__enriched). A median cannot
    be rebuilt from groups: it reads ``rel`` again, only when configured."""
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
        elif (median := _aggregate(node, dialect, metric, func, rel.c[real])) is not None:
            plan.add(metric, sa.select(median).select_from(rel).scalar_subquery())
    return g, plan


def _seq(window: tuple[int, int] | None) -> tuple[str, ...]:
    return (SEQ_COLUMN,) if window is not None else ()


def _profile_node(
    conn: sa.Connection,
    node: ModelInfo,
    specs: Sequence[AggregateSpec],
    ledger: _Ledger | None,
    run_id: str,
    full_count_every: int = 1,
    touched_after: int | None = None,
) -> dict[str, float]:
    columns = _columns(conn, node)
    if columns is None:
        return {}
    touched = [s for s in specs if s.scope == "touched"]
    specs = [s for s in specs if s.scope != "touched"]
    if ledger is not None and _carriable(node, columns, specs) and ledger.present:
        raw = _carried_raw(conn, node, columns, specs, ledger, run_id)
    elif ledger is not None and _keys_carriable(node, columns, ledger.carry):
        raw = _keyed_raw(conn, node, columns, specs, ledger, run_id, full_count_every)
    else:
        raw = _raw(conn, node, columns, specs)
    if touched:
        raw.update(_touched_aggregates(conn, node, columns, touched, touched_after))
    return _derive(raw, node.grain)


def _touched_aggregates(
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
    plan = _Plan()
    for metric, func, real in _aggregates(node, columns, specs):
        expr = _aggregate(node, conn.dialect.name, metric, func, tbl.c[real])
        if expr is not None:
            plan.add(metric, expr)
    if not plan.exprs:
        return {}
    row = conn.execute(
        sa.select(*plan.exprs).select_from(tbl).where(tbl.c[SEQ_COLUMN] > after)
    ).one()
    return dict(zip(plan.names, row, strict=True))


def _raw(
    conn: sa.Connection,
    node: ModelInfo,
    columns: Mapping[str, bool],
    specs: Sequence[AggregateSpec],
    window: tuple[int, int] | None = None,
) -> dict[str, Any]:
    tbl, plan = _plan(node, columns, specs, conn.dialect.name, window)
    row = conn.execute(sa.select(*plan.exprs).select_from(tbl)).one()
    return dict(zip(plan.names, row, strict=True))


def _carriable(
    node: ModelInfo, columns: Mapping[str, bool], specs: Sequence[AggregateSpec]
) -> bool:
    """A view or incremental table keyed by batch, carrying the publish seq, with only
    additive aggregates."""
    return (
        node.resource_type == "model"
        and (node.materialization == "view" or node.is_incremental)
        and BATCH_COLUMN in node.grain
        and SEQ_COLUMN in columns
        and all(f == "sum" for spec in specs for f in spec.funcs)
    )


def _carried_raw(
    conn: sa.Connection,
    node: ModelInfo,
    columns: Mapping[str, bool],
    specs: Sequence[AggregateSpec],
    ledger: _Ledger,
    run_id: str,
) -> dict[str, Any]:
    """The relation's raw counts: carried totals plus the new batches, else a full count."""
    state = ledger.carry.state
    mark = ledger.bound(node)
    fingerprint = ledger.fingerprint(node)
    prev = ledger.carried.get(node.name)
    raw: dict[str, Any] | None = None
    if (
        prev is not None
        and prev.fingerprint == fingerprint
        and prev.watermark <= mark
        and prev.published == ledger.signature(prev.watermark)
        and ledger.rebuilt_since(prev.updated_at) is None
    ):
        new = _raw(conn, node, columns, specs, window=(prev.watermark, mark))
        if set(new) == set(prev.raw):  # the same metrics (config unchanged)
            raw = {k: _add(prev.raw[k], new[k]) for k in new}
    if raw is None:
        log.info("%s %s counted in full (no valid carried totals)", node.materialization,
                 node.name)
        raw = _raw(conn, node, columns, specs)
    _store_carry(state, node.name, fingerprint, mark, ledger.signature(mark), raw, run_id)
    return raw


def _store_carry(
    state: sa.Engine, model: str, fingerprint: str, mark: int, published: str,
    raw: Mapping[str, Any], run_id: str,
) -> None:
    doc = {k: _to_float(v) if v is not None else None for k, v in raw.items()}
    row = {
        "model": model, "fingerprint": fingerprint, "watermark": mark,
        "published": published, "raw": doc, "run_id": run_id, "updated_at": utcnow(),
    }
    with state.begin() as st:
        st.execute(profile_carries.delete().where(profile_carries.c.model == model))
        st.execute(profile_carries.insert(), [row])


def _keys_carriable(node: ModelInfo, columns: Mapping[str, bool], carry: Carry) -> bool:
    """An incremental model with a grain whose rows carry a sequence column."""
    return (
        node.resource_type == "model"
        and node.is_incremental
        and bool(node.grain)
        and any(c in columns for c in carry.seq_columns)
    )


_MARK, _SINCE_FULL = "_mark", "_counts_since_full"  # bookkeeping in a table's carry


def _keyed_raw(
    conn: sa.Connection,
    node: ModelInfo,
    columns: Mapping[str, bool],
    specs: Sequence[AggregateSpec],
    ledger: _Ledger,
    run_id: str,
    full_count_every: int,
) -> dict[str, Any]:
    """An incremental table's raw counts, its distinct keys from the touched keys when
    the last count proves the rest unchanged (module docstring), else counted in full."""
    carry = ledger.carry
    seqs = [c for c in carry.seq_columns if c in columns]
    mark_col = next((c for c in carry.watermark_columns if c in columns), seqs[0])
    tbl, plan = _plan(node, columns, specs, conn.dialect.name, distinct=False, also=[mark_col])
    if not plan.keys:
        return _raw(conn, node, columns, specs)
    plan.add(_MARK, sa.func.max(tbl.c[mark_col]))
    row = conn.execute(sa.select(*plan.exprs).select_from(tbl)).one()
    raw: dict[str, Any] = dict(zip(plan.names, row, strict=True))
    mark = int(raw.pop(_MARK) or 0)
    rows = int(raw["row_count"])
    fingerprint = f"keys:{','.join(plan.keys)};seqs:{','.join(seqs)}"
    prev = ledger.carried.get(node.name)
    since_full = 0
    reason = _why_full(ledger, prev, fingerprint, raw, full_count_every)
    no_null_keys = all(int(raw[f"nonnull:{k}"]) == rows for k in node.grain)
    if reason is None and prev is not None and no_null_keys:
        since_full = int(prev.raw[_SINCE_FULL]) + 1
        dups = _touched_duplicates(conn, node, plan.keys, seqs, prev.watermark - carry.lookback)
        raw["distinct_keys"] = rows - dups
    else:
        log.info("keys of %s counted in full (%s)", node.name, reason or "NULL keys")
        raw["distinct_keys"] = _distinct_keys(conn, node, plan.keys)
    _store_carry(carry.state, node.name, fingerprint, mark, "", {**raw, _SINCE_FULL: since_full},
                 run_id)
    return raw


def _why_full(
    ledger: _Ledger, prev: sa.Row[Any] | None, fingerprint: str, raw: Mapping[str, Any],
    full_count_every: int,
) -> str | None:
    """Why the table's keys must be counted in full now, or None if the carry holds."""
    if prev is None or prev.fingerprint != fingerprint:
        return "no count of these keys yet"
    carried = {k for k in prev.raw if k != _SINCE_FULL}
    if carried != {*raw, "distinct_keys"} or _SINCE_FULL not in prev.raw:
        return "metrics changed"
    if prev.raw["row_count"] != prev.raw["distinct_keys"]:
        return "the last count found duplicate keys"
    if int(prev.raw[_SINCE_FULL]) + 1 >= full_count_every:
        return f"every {full_count_every}th count is full"
    return ledger.rebuilt_since(prev.updated_at)


def _touched_duplicates(
    conn: sa.Connection, node: ModelInfo, keys: Sequence[str], seqs: Sequence[str], since: int
) -> int:
    """Rows beyond the first of each key among the keys of rows with a sequence column
    above ``since``: one semi join, so its cost follows the day's keys."""
    t = sa.table(node.identifier, *(sa.column(c) for c in {*keys, *seqs}), schema=node.schema)
    touched = t.alias("touched")
    rows = t.alias("k")
    per_key = (
        sa.select(sa.func.count().label("n"))
        .select_from(rows)
        .where(
            sa.exists()
            .where(*(touched.c[k] == rows.c[k] for k in keys))
            .where(sa.or_(*(touched.c[c] > since for c in seqs)))
        )
        .group_by(*(rows.c[k] for k in keys))
        .subquery("per_key")
    )
    found = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(per_key.c.n - 1), 0))).scalar()
    return int(found or 0)


def _distinct_keys(conn: sa.Connection, node: ModelInfo, keys: Sequence[str]) -> int:
    """Distinct key combinations of the whole table (a NULL counts as one value)."""
    t = sa.table(node.identifier, *(sa.column(c) for c in keys), schema=node.schema)
    combos = sa.select(*(t.c[k] for k in keys)).distinct().subquery("g")
    return int(conn.execute(sa.select(sa.func.count()).select_from(combos)).scalar() or 0)


def _add(total: Any, new: Any) -> Any:
    """Carried total + the new batches' value (a sum of no rows is NULL, i.e. nothing)."""
    if total is None:
        return new
    return total if new is None else float(total) + float(new)


@dataclass
class _Ledger:
    """What one snapshot reads of the batch ledger, the stored view definitions and the
    state store (carried totals, the last rebuild): read once and shared by every carried
    relation (the cycle lock keeps them still while the snapshot runs)."""

    conn: sa.Connection
    carry: Carry
    project: Project
    _signatures: dict[int, str] = field(default_factory=dict)
    _highest_seqs: dict[str, int] = field(default_factory=dict)

    @cached_property
    def present(self) -> bool:
        """Whether the warehouse has the ledger (a project without our ingest has not)."""
        it = sa.table(
            "tables", sa.column("table_schema"), sa.column("table_name"),
            schema="information_schema",
        )
        t = self.carry.ledger
        found = self.conn.execute(
            sa.select(sa.func.count()).select_from(it)
            .where(it.c.table_schema == t.schema, it.c.table_name == t.name)
        ).scalar()
        return bool(found)

    @cached_property
    def mark(self) -> int:
        """The highest publish_seq of a published batch (0 when none is)."""
        t = self.carry.ledger
        value = self.conn.execute(
            sa.select(sa.func.max(t.c.publish_seq)).where(t.c.status == self.carry.published)
        ).scalar()
        return int(value or 0)

    def signature(self, upto: int) -> str:
        """Which batches are published up to ``upto``: their count and the sum of their
        seqs. A retraction (or a new warehouse) changes it, so totals carried over them
        are void."""
        if upto not in self._signatures:
            t = self.carry.ledger
            n, total = self.conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(t.c.publish_seq), 0))
                .where(t.c.status == self.carry.published, t.c.publish_seq <= upto)
            ).one()
            self._signatures[upto] = f"{n}:{total}"
        return self._signatures[upto]

    def bound(self, node: ModelInfo) -> int:
        """The publish_seq up to which the relation shows every published batch. A view
        shows each batch as soon as it is published, unless it reads a table keyed by
        batch: a table holds the batches its builds wrote (all of them up to its highest
        publish_seq, since a build takes every batch above its watermark), and a failed
        build leaves it behind the ledger. Totals must stop where the relation stops, or
        the batches it shows later would never be counted."""
        tables = [
            n for n in [*self.project.ancestors(node.unique_id), node]
            if n.resource_type == "model" and n.is_incremental and BATCH_COLUMN in n.grain
        ]
        marks = [self._highest(t) for t in tables]
        if node.materialization == "view":
            marks.append(self.mark)
        return min(marks)

    def _highest(self, table: ModelInfo) -> int:
        if table.unique_id not in self._highest_seqs:
            t = sa.table(table.identifier, sa.column(SEQ_COLUMN), schema=table.schema)
            top = self.conn.execute(sa.select(sa.func.max(t.c[SEQ_COLUMN]))).scalar()
            self._highest_seqs[table.unique_id] = int(top or 0)
        return self._highest_seqs[table.unique_id]

    @cached_property
    def carried(self) -> dict[str, sa.Row[Any]]:
        """Every carried total in the state store, read once per snapshot."""
        with self.carry.state.connect() as st:
            return {r.model: r for r in st.execute(sa.select(profile_carries)).all()}

    @cached_property
    def _last_rebuilds(self) -> tuple[datetime | None, datetime | None]:
        """When the last ``--full-refresh`` run started and the last rollback happened."""
        with self.carry.state.connect() as st:
            refresh = st.execute(
                sa.select(sa.func.max(runs.c.started_at)).where(runs.c.full_refresh.is_(True))
            ).scalar()
            rollback = st.execute(
                sa.select(sa.func.max(events.c.at)).where(events.c.kind == "rollback")
            ).scalar()
        return refresh, rollback

    def rebuilt_since(self, at: datetime) -> str | None:
        """Why the built tables may have been rebuilt since ``at`` (a ``--full-refresh``
        run or a rollback), or None: totals carried from before then are void."""
        refresh, rollback = self._last_rebuilds
        if refresh is not None and refresh >= at:
            return "a --full-refresh run since the last count"
        if rollback is not None and rollback >= at:
            return "a rollback since the last count"
        return None

    @cached_property
    def definitions(self) -> dict[tuple[str, str], str]:
        """``(schema, view) -> definition`` of every view, as the warehouse stores it."""
        iv = sa.table(
            "views", sa.column("table_schema"), sa.column("table_name"),
            sa.column("view_definition"), schema="information_schema",
        )
        rows = self.conn.execute(
            sa.select(iv.c.table_schema, iv.c.table_name, iv.c.view_definition)
        ).all()
        return {(str(r[0]), str(r[1])): str(r[2]) for r in rows}

    def fingerprint(self, node: ModelInfo) -> str:
        """A hash of the definitions of the view and every upstream view."""
        views = [
            n
            for n in [*self.project.ancestors(node.unique_id), node]
            if n.resource_type == "model" and n.materialization == "view"
        ]
        digest = hashlib.sha256()
        for v in views:
            text = self.definitions.get((v.schema, v.identifier))
            digest.update(f"{v.schema}.{v.identifier}\0{text}\0".encode())
        return digest.hexdigest()


def _derive(raw: Mapping[str, Any], grain: Sequence[str]) -> dict[str, float]:
    """Turn raw query results into the published metrics."""
    rows = int(raw["row_count"])
    out: dict[str, float] = {"row_count": float(rows)}
    if "distinct_keys" in raw:
        distinct = int(raw["distinct_keys"])
        out["distinct_keys"] = float(distinct)
        out["duplicate_keys"] = float(rows - distinct)
        for k in grain:
            nonnull = int(raw[f"nonnull:{k}"])
            out[f"null_rate:{k}"] = (rows - nonnull) / rows if rows else 0.0
    for metric, value in raw.items():
        if metric in ("row_count", "distinct_keys") or metric.startswith("nonnull:"):
            continue
        if value is None and metric.startswith("sum:"):
            value = 0  # SQL sums no rows to NULL; the total of nothing is 0
        num = _to_float(value)
        if num is not None:
            out[metric] = num
    return out


def _to_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        num = float(value)
        return num if math.isfinite(num) else None
    return None
