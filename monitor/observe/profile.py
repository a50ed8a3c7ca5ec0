"""The layer profile: metric points of every observable relation after a build.

Per relation, one query (:mod:`monitor.observe.counts`) measures row count, distinct and
duplicate keys, key null rates and the configured aggregates; the metric names are in
docs/contracts.md (Metric points).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from monitor.core.manifest import ModelInfo, Project
from monitor.core.sections import AggregateSpec, ProfileConfig
from monitor.observe.carry import Carry, Ledger, carriable, carried_raw, keyed_raw, keys_carriable
from monitor.observe.counts import raw_counts, relation_columns, to_float, touched_aggregates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricPoint:
    """One metric of one relation, measured once; ``z``/``anomalous`` set by drift."""

    run_id: str
    model: str
    layer: str
    metric: str
    value: float
    observed_at: datetime
    z: float | None = None
    anomalous: bool = False


def check_config(project: Project, cfg: ProfileConfig) -> None:
    """Raise ValueError if an aggregate names a model the manifest does not know."""
    for spec in cfg.aggregates:
        try:
            project.by_name(spec.model)
        except KeyError as exc:
            raise ValueError(f"profile aggregate: {exc.args[0]}") from None


def measure(
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
    With ``carry``, counts are carried between measurements (:mod:`monitor.observe.carry`).
    ``touched_after``: the publish watermark the cycle started from; the
    aggregates of scope ``touched`` read the rows above it (None: they are skipped, as
    after a ``--full-refresh``, where every row is new).
    """
    run = run_id or uuid.uuid4().hex
    at = observed_at or datetime.now(UTC)
    specs_by_node = _specs_by_node(project, cfg)
    points: list[MetricPoint] = []
    # One connection for every relation: opening a DuckDB file costs more than most counts.
    with engine.connect() as conn:
        ledger = Ledger(conn, carry, project) if carry is not None else None
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
    ledger: Ledger | None, run_id: str, full_count_every: int = 1,
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
        columns = relation_columns(conn, node)
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


def _selected(node: ModelInfo, cfg: ProfileConfig) -> bool:
    if not node.is_relation or node.name in cfg.exclude:
        return False
    if node.resource_type == "source" and not cfg.include_sources:
        return False
    if node.resource_type == "model" and node.materialization == "view" and not cfg.views:
        return False
    return not cfg.layers or node.layer in cfg.layers


def _profile_node(
    conn: sa.Connection,
    node: ModelInfo,
    specs: Sequence[AggregateSpec],
    ledger: Ledger | None,
    run_id: str,
    full_count_every: int = 1,
    touched_after: int | None = None,
) -> dict[str, float]:
    columns = relation_columns(conn, node)
    if columns is None:
        return {}
    touched = [s for s in specs if s.scope == "touched"]
    specs = [s for s in specs if s.scope != "touched"]
    if ledger is not None and carriable(node, columns, specs) and ledger.present:
        raw = carried_raw(conn, node, columns, specs, ledger, run_id)
    elif ledger is not None and keys_carriable(node, columns, ledger.carry):
        raw = keyed_raw(conn, node, columns, specs, ledger, run_id, full_count_every)
    else:
        raw = raw_counts(conn, node, columns, specs)
    if touched:
        raw.update(touched_aggregates(conn, node, columns, touched, touched_after))
    return _derive(raw, node.grain)


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
        num = to_float(value)
        if num is not None:
            out[metric] = num
    return out
