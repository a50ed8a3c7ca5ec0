"""After a build: snapshots, drift, cost, gauges and alerts for one run.

Everything here reads what the earlier steps produced (manifest, run results, the
warehouse, the state store) and writes only to the state store, the metrics registry
and the alert sinks: nothing reaches back into the pipeline.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from monitor import alerting, batches
from monitor.config import Config
from monitor.cost import estimate
from monitor.drift import DriftResult
from monitor.ingest import ledger_tables
from monitor.manifest import Project
from monitor.metrics import Metrics, ModelObservation
from monitor.profile import Carry, MetricPoint, save_points, score_points, snapshot
from monitor.runner import DbtResult
from monitor.snapshots import READ_WATERMARKS, SEQ_COLUMNS, lookback_batches
from monitor.warehouse import warehouse

if TYPE_CHECKING:
    from monitor.cycle import CycleResult

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
    project: Project | None, dbt: DbtResult | None, points: Sequence[MetricPoint], cfg: Config
) -> list[ModelObservation]:
    """Runtime, rows and estimated cost per built model."""
    rows = {(p.model, p.layer): int(p.value) for p in points if p.metric == "row_count"}
    out = []
    for node in dbt.models if dbt else []:
        layer = _layer(project, node.unique_id)
        cost = estimate(node.duration_s, None, node.rows_affected, cfg.cost)
        out.append(
            ModelObservation(node.name, layer, node.duration_s, rows.get((node.name, layer)), cost)
        )
    built = {(o.model, o.layer) for o in out}
    # Sources and unbuilt models still have rows (raw layer): export those too.
    out += [ModelObservation(m, layer, None, n, None) for (m, layer), n in rows.items()
            if (m, layer) not in built]
    return out


def _layer(project: Project | None, uid: str) -> str:
    if project is not None and uid in project.models:
        return project.models[uid].layer
    return "other"


def observe(
    cfg: Config, st: sa.Engine, project: Project | None, result: CycleResult,
    as_of: datetime, metrics: Metrics | None, touched_after: int | None = None,
) -> RunObservation:
    """Snapshot, score, cost, export and alert for a finished run. ``touched_after``:
    the publish watermark the run started from (the ``touched`` aggregates' rows)."""
    obs = RunObservation()
    if project is not None:
        carry = Carry(st, ledger_tables(sa.MetaData(), cfg.ingest.schema)[0], batches.PUBLISHED,
                      seq_columns=SEQ_COLUMNS, watermark_columns=READ_WATERMARKS,
                      lookback=lookback_batches(cfg))
        with warehouse(cfg.warehouse) as wh:
            obs.points = snapshot(wh, project, cfg.profile, run_id=result.run_id,
                                  observed_at=as_of, carry=carry, touched_after=touched_after)
    obs.models = model_observations(project, result.dbt, obs.points, cfg)
    obs.run_cost = sum(m.cost or 0.0 for m in obs.models)
    perf = _runtime_points(result.run_id, obs.models, as_of)
    # Runtime and cost are noisy on a shared machine: they may warn, never trip the
    # breaker (no hard limit), and sub-second jitter is not drift (absolute spread floor).
    perf_cfg = replace(cfg.drift, hard_limit=math.inf,
                       min_spread_abs=max(cfg.drift.min_spread_abs, 1.0))
    ledger = _ledger_models(project, cfg)
    data = [p for p in obs.points if p.model not in ledger]
    obs.drift = (score_points(st, data, cfg.drift) + score_points(st, perf, perf_cfg)
                 + [(p, _NOT_SCORED) for p in obs.points if p.model in ledger])
    obs.points += perf
    save_points(st, [p for p, _ in obs.drift])
    if metrics is not None:
        export_run(metrics, result, obs)
    return obs


_NOT_SCORED = DriftResult(None, None, None, 0, False, "not scored")


def _ledger_models(project: Project | None, cfg: Config) -> set[str]:
    """The monitor's own batch ledger, where a dbt project declares it as a source: its
    counts are files per day, bookkeeping rather than data, so they are kept (triage
    reads them) but not scored."""
    if project is None or not cfg.ingest.enabled:
        return set()
    table = ledger_tables(sa.MetaData(), cfg.ingest.schema)[0].name
    return {n.name for n in project.sources.values()
            if n.schema == cfg.ingest.schema and n.identifier == table}


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


def export_run(metrics: Metrics, result: CycleResult, obs: RunObservation) -> None:
    # A run that built nothing (paused, failed early) must not wipe the model gauges.
    complete = result.status in ("success", "held") and result.dbt is not None
    # observe() exports before the cycle records its end (duration_s still 0): time so far.
    duration = result.duration_s or time.monotonic() - result.started
    metrics.observe_run(result.status, duration, obs.run_cost, obs.models, prune=complete)
    metrics.replace_drift((p.model, p.metric, r.z) for p, r in scored(obs))
    metrics.replace_validation_failures(result.validation_failures)
    if result.status == "success":
        metrics.set_last_success(datetime.now(UTC).timestamp())


def alert(cfg: Config, st: sa.Engine, result: CycleResult, obs: RunObservation | None,
          metrics: Metrics | None, feed_last: dict[str, datetime | None] | None) -> None:
    """Evaluate the alert rules for this run, queue what changed, and deliver."""
    now = datetime.now(UTC)
    observations = alerting.Observations(
        run_id=result.run_id,
        run_status=result.status,
        run_duration_s=result.duration_s,
        run_cost=obs.run_cost if obs else None,
        models=[alerting.ModelRun(m.model, m.layer, m.duration_s, m.cost)
                for m in obs.models] if obs else None,
        drift=([alerting.DriftResult(p.model, p.metric, r.z, r.anomalous, p.layer, r.expected,
                                     r.relative_change) for p, r in scored(obs)] if obs else [])
        + _volume_drift(result),
        validation=result.validation_failures,
        feed_last_batch=feed_last,
        now=now,
        evidence_path=str(result.evidence_dir or ""),
    )
    rec = alerting.evaluate_and_reconcile(st, cfg.alerting, observations)
    if obs is not None:
        obs.alerts_fired = list(rec.fired)
        obs.alerts_resolved = list(rec.resolved)
    deliver(cfg, st, metrics, now)


def _volume_drift(result: CycleResult) -> list[alerting.DriftResult]:
    """The gate's feed-day verdicts as drift of the feed's ``rows_per_day``: a warning
    (short history, or inside the band but far off) alerts like any drift; a hold pages
    through its validation failure, in the same incident."""
    return [alerting.DriftResult(v.feed, "rows_per_day", v.z, v.status in ("warning", "hold"),
                                 "raw", v.expected, None if v.ratio is None else v.ratio - 1)
            for v in result.volume if v.status != "unjudged"]


def deliver(cfg: Config, st: sa.Engine, metrics: Metrics | None, now: datetime | None = None
            ) -> None:
    sinks = alerting.build_sinks(cfg.alerting.sinks)
    for d in alerting.deliver(st, sinks, now or datetime.now(UTC), config=cfg.alerting):
        if d.status == "sent" and metrics is not None and d.event != "refresh":
            metrics.alert_sent(d.sink, d.severity)


def feed_state(cfg: Config) -> tuple[dict[str, datetime | None], dict[str, tuple[int, int]]]:
    """Per feed: newest batch time; and (held batches, quarantined rows)."""
    last: dict[str, datetime | None] = {f: None for f in cfg.ingest.feeds}
    counts: dict[str, tuple[int, int]] = {f: (0, 0) for f in cfg.ingest.feeds}
    if not cfg.ingest.enabled or not cfg.warehouse.path.exists():
        return last, counts
    b, f, _ = ledger_tables(sa.MetaData(), cfg.ingest.schema)
    q = sa.select(
        b.c.feed,
        sa.func.sum(sa.case((b.c.status == batches.HELD, 1), else_=0)),
        sa.func.sum(b.c.rows_quarantined),
    ).group_by(b.c.feed)
    # A delivery is an arrival even when its bytes repeat an earlier file (a snapshot
    # feed that did not change): freshness reads the delivery log, not new batches.
    arrivals = (
        sa.select(b.c.feed, sa.func.max(f.c.seen_at))
        .join_from(f, b, f.c.batch_id == b.c.batch_id)
        .group_by(b.c.feed)
    )
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        try:
            rows = conn.execute(q).all()
            seen = {str(r[0]): r[1] for r in conn.execute(arrivals).all()}
        except sa.exc.DBAPIError:
            return last, counts  # nothing ingested yet
    for row in rows:
        feed, held, quarantined = str(row[0]), row[1], row[2]
        if feed in last:
            at = seen.get(feed)
            last[feed] = at.replace(tzinfo=UTC) if at else None
            counts[feed] = (int(held or 0), int(quarantined or 0))
    return last, counts


def refresh_state_gauges(cfg: Config, metrics: Metrics) -> None:
    """Gauges that reflect stored state: feeds, paused flag."""
    from monitor import state
    from monitor.config import state_url

    last, counts = feed_state(cfg)
    for feed, (held, quarantined) in counts.items():
        at = last.get(feed)
        metrics.set_feed(feed, held, quarantined, at.timestamp() if at else None)
    metrics.retain_feeds(counts)
    st = state.open_state(state_url(cfg))
    try:
        metrics.set_paused(state.paused(st) is not None)
        last_ok = state.last_success(st)
        if last_ok is not None:  # a restart must not look like a stale pipeline
            metrics.set_last_success(last_ok.replace(tzinfo=UTC).timestamp())
    finally:
        st.dispose()


def check_freshness(
    cfg: Config, metrics: Metrics | None, now: datetime | None = None,
    last: Mapping[str, datetime | float | None] | None = None,
) -> list[str]:
    """The freshness job: feed-age rules only, between cycles; also retries the outbox.

    ``now`` and ``last`` (each feed's newest delivery) default to the clock and the
    batch ledger; a rehearsal on a logical calendar passes its own. Returns the alerts
    fired.
    """
    from monitor import state
    from monitor.config import state_url

    if last is None:
        last = feed_state(cfg)[0]
    st = state.open_state(state_url(cfg))
    try:
        now = now or datetime.now(UTC)
        observations = alerting.Observations(
            run_id="freshness", run_status="", feed_last_batch=last, now=now
        )
        rules = [r for r in cfg.alerting.rules if r.kind == "freshness"]
        rec = alerting.reconcile(
            st, alerting.evaluate(rules, observations), now, sinks=cfg.alerting.sinks,
            skip_rules=alerting.skipped_rules(cfg.alerting.rules, observations)
            | frozenset(r.name for r in cfg.alerting.rules if r.kind != "freshness"),
        )
        if rec.fired:
            log.warning("freshness: %s", ", ".join(rec.fired))
        deliver(cfg, st, metrics, now)
        if metrics is not None:
            refresh_state_gauges(cfg, metrics)
        return list(rec.fired)
    finally:
        st.dispose()
