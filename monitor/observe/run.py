"""After a build: the layer profile, its drift scores and the run's cost.

Reads what the earlier steps produced and writes only to the state store; the cycle
exports and alerts on the result. Nothing here reaches back into the pipeline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import sqlalchemy as sa

from monitor.core.columns import READ_WATERMARKS, SEQ_COLUMNS
from monitor.core.config import Config, IngestConfig
from monitor.core.manifest import Project, lookback_batches
from monitor.core.sections import CostConfig
from monitor.observe.carry import Carry
from monitor.observe.cost import estimate
from monitor.observe.drift import DriftResult
from monitor.observe.history import save_points, score_points
from monitor.observe.profile import MetricPoint, measure
from monitor.quality.owners import VerifiedKeys
from monitor.stages.build import DbtResult
from monitor.store import batches
from monitor.store.batches import ledger_tables
from monitor.warehouse.connection import backend_of, warehouse

log = logging.getLogger(__name__)


@dataclass
class RunObservation:
    """What observing one run produced (kept on the cycle result and in evidence)."""

    points: list[MetricPoint] = field(default_factory=list)
    drift: list[tuple[MetricPoint, DriftResult]] = field(default_factory=list)
    models: list[ModelObservation] = field(default_factory=list)
    run_cost: float = 0.0
    alerts_fired: list[str] = field(default_factory=list)
    alerts_resolved: list[str] = field(default_factory=list)

    @property
    def anomalies(self) -> list[tuple[MetricPoint, DriftResult]]:
        return [(p, r) for p, r in self.drift if r.anomalous]

    def rows(self, model: str) -> int | None:
        for p in self.points:
            if p.model == model and p.metric == "row_count":
                return int(p.value)
        return None


def model_observations(
    project: Project | None, dbt: DbtResult | None, points: Sequence[MetricPoint],
    cost: CostConfig, stored_bytes: Mapping[str, int] | None = None,
) -> list[ModelObservation]:
    """Runtime, rows and estimated cost per built model. ``stored_bytes``: the bytes a
    model's relation takes where the warehouse backend tells (``Backend.relation_bytes``):
    with its row count they give the row width the cost estimate multiplies the rows a
    run wrote by; without, ``[cost] avg_row_bytes``."""
    rows = {(p.model, p.layer): int(p.value) for p in points if p.metric == "row_count"}
    out = []
    for node in dbt.models if dbt else []:
        layer = _layer(project, node.unique_id)
        n = rows.get((node.name, layer))
        size = (stored_bytes or {}).get(node.name)
        scanned = (round(node.rows_affected * size / n)
                   if size and n and node.rows_affected is not None else None)
        out.append(ModelObservation(
            node.name, layer, node.duration_s, n,
            estimate(node.duration_s, scanned, node.rows_affected, cost),
        ))
    built = {(o.model, o.layer) for o in out}
    # Sources and unbuilt models still have rows (raw layer): export those too.
    out += [ModelObservation(m, layer, None, n, None) for (m, layer), n in rows.items()
            if (m, layer) not in built]
    return out


def _stored_bytes(wh: sa.Engine, project: Project, dbt: DbtResult | None) -> dict[str, int]:
    """Bytes of each built model's relation, where the backend tells cheaply."""
    nodes = [project.models[n.unique_id] for n in (dbt.models if dbt else [])
             if n.unique_id in project.models]
    if not nodes:
        return {}
    try:
        sizes = backend_of(wh).relation_bytes(wh, [(m.schema, m.identifier) for m in nodes])
    except sa.exc.DBAPIError as exc:  # a cost input, never a reason to fail the cycle
        log.warning("relation sizes for the cost estimate: %s", exc.orig)
        return {}
    return {m.name: sizes[(m.schema, m.identifier)] for m in nodes
            if (m.schema, m.identifier) in sizes}


def _layer(project: Project | None, uid: str) -> str:
    if project is not None and uid in project.models:
        return project.models[uid].layer
    return "other"


def observe(
    cfg: Config, st: sa.Engine, project: Project | None, run_id: str, dbt: DbtResult | None,
    as_of: datetime, touched_after: int | None = None,
    verified: Mapping[str, VerifiedKeys] | None = None,
) -> RunObservation:
    """Measure, score and cost a finished run. ``touched_after``:
    the publish watermark the run started from (the ``touched`` aggregates' rows).
    ``verified``: per model, the keys this cycle's grain checks found unique."""
    obs = RunObservation()
    if project is not None:
        carry = Carry(st, ledger_tables(sa.MetaData(), cfg.ingest.schema)[0], batches.PUBLISHED,
                      seq_columns=SEQ_COLUMNS, watermark_columns=READ_WATERMARKS,
                      lookback=lookback_batches(cfg), verified=verified or {})
        with warehouse(cfg.warehouse) as wh:
            obs.points = measure(wh, project, cfg.profile, run_id=run_id,
                                 observed_at=as_of, carry=carry, touched_after=touched_after)
            stored = _stored_bytes(wh, project, dbt)
    obs.models = model_observations(project, dbt, obs.points, cfg.cost, stored)
    obs.run_cost = sum(m.cost or 0.0 for m in obs.models)
    perf = _runtime_points(run_id, obs.models, as_of)
    # Runtime and cost are noisy on a shared machine: they may warn, never trip the
    # breaker (no hard limit), and sub-second jitter is not drift (absolute spread floor).
    perf_cfg = replace(cfg.drift, hard_limit=math.inf,
                       min_spread_abs=max(cfg.drift.min_spread_abs, 1.0))
    ledger = _ledger_models(project, cfg.ingest)
    data = [p for p in obs.points if p.model not in ledger]
    obs.drift = (score_points(st, data, cfg.drift) + score_points(st, perf, perf_cfg)
                 + [(p, _NOT_SCORED) for p in obs.points if p.model in ledger])
    obs.points += perf
    save_points(st, [p for p, _ in obs.drift])
    return obs


_NOT_SCORED = DriftResult(None, None, None, 0, False, "not scored")


def _ledger_models(project: Project | None, ingest: IngestConfig) -> set[str]:
    """The monitor's own batch ledger, where a dbt project declares it as a source: its
    counts are files per day, bookkeeping rather than data, so they are kept (triage
    reads them) but not scored."""
    if project is None or not ingest.enabled:
        return set()
    table = ledger_tables(sa.MetaData(), ingest.schema)[0].name
    return {n.name for n in project.sources.values()
            if n.schema == ingest.schema and n.identifier == table}


def _runtime_points(run_id: str, models: Sequence[ModelObservation], at: datetime
                    ) -> list[MetricPoint]:
    pts = []
    for m in models:
        if m.duration_s is not None:
            pts.append(MetricPoint(run_id, m.model, m.layer, "runtime_seconds", m.duration_s, at))
        if m.cost is not None:
            pts.append(MetricPoint(run_id, m.model, m.layer, "cost", m.cost, at))
    return pts


# Detector outcomes that compared the point with a real baseline; other z-scores
# (short history, nothing to compare) are not exported nor alerted on.
SCORED = frozenset({"ok", "threshold", "hard limit"})


def scored(obs: RunObservation) -> list[tuple[MetricPoint, DriftResult]]:
    return [(p, r) for p, r in obs.drift if r.z is not None and r.reason in SCORED]


@dataclass(frozen=True)
class ModelObservation:
    """What one model did in the last run; ``None`` means unknown (no series set)."""

    model: str
    layer: str
    duration_s: float | None = None
    rows: int | None = None
    cost: float | None = None
