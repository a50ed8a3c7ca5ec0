"""After a cycle is recorded: its gauges, its alerts, and its evidence."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import sqlalchemy as sa

from monitor.alerting.freshness import deliver_outbox
from monitor.alerting.incidents import evaluate_and_reconcile
from monitor.alerting.rules import DriftSignal, Observations
from monitor.core.config import Config
from monitor.cycle.result import CycleResult
from monitor.export.prometheus import Metrics
from monitor.observe.feeds import feed_state
from monitor.observe.run import RunObservation, scored
from monitor.recovery import snapshots
from monitor.triage.analyse import report_run
from monitor.triage.context import PERF_METRICS

log = logging.getLogger(__name__)


def export_run(metrics: Metrics, result: CycleResult, obs: RunObservation) -> None:
    # A run that built nothing (paused, failed early) must not wipe the model gauges.
    complete = result.status in ("success", "held") and result.dbt is not None
    # Exported right after observing, before the cycle records its end (duration_s
    # still 0): the time so far.
    duration = result.duration_s or time.monotonic() - result.started
    metrics.observe_run(result.status, duration, obs.run_cost, obs.models, prune=complete)
    metrics.replace_drift((p.model, p.layer, p.metric, r.z) for p, r in scored(obs))
    metrics.replace_validation_failures(result.validation_failures)
    if result.status == "success":
        metrics.set_last_success(datetime.now(UTC).timestamp())


def alert(cfg: Config, st: sa.Engine, result: CycleResult, obs: RunObservation | None,
          metrics: Metrics | None, feed_last: dict[str, datetime | None] | None) -> None:
    """Evaluate the alert rules for this run, queue what changed, and deliver."""
    now = datetime.now(UTC)
    observations = Observations(
        run_id=result.run_id,
        run_status=result.status,
        run_duration_s=result.duration_s,
        run_cost=obs.run_cost if obs else None,
        models=obs.models if obs else None,
        drift=([DriftSignal(p.model, p.metric, r.z, r.anomalous, p.layer, r.expected,
                            r.relative_change) for p, r in scored(obs)] if obs else [])
        + _volume_drift(result),
        validation=result.validation_failures,
        feed_last_batch=feed_last,
        now=now,
        evidence_path=str(result.evidence_dir or ""),
    )
    rec = evaluate_and_reconcile(st, cfg.alerting, observations)
    if obs is not None:
        obs.alerts_fired = list(rec.fired)
        obs.alerts_resolved = list(rec.resolved)
    deliver_outbox(cfg.alerting, st, metrics, now)


def _volume_drift(result: CycleResult) -> list[DriftSignal]:
    """The gate's feed-day verdicts as drift of the feed's ``rows_per_day``: a warning
    (short history, or inside the band but far off) alerts like any drift; a hold pages
    through its validation failure, in the same incident."""
    return [DriftSignal(v.feed, "rows_per_day", v.z, v.status in ("warning", "hold"),
                        "raw", v.expected, None if v.ratio is None else v.ratio - 1)
            for v in result.volume if v.status != "unjudged"]


def needs_report(result: CycleResult) -> bool:
    """Whether a finished cycle deserves an incident report.

    Failed runs, runs held for data reasons (not merely paused), failed validations,
    and data-metric anomalies. Runtime/cost drift alone does not (it is noisy on small
    runs; run ``monitor triage`` by hand for it).
    """
    if result.status == "failed":
        return True
    if result.status == "held" and not result.paused:
        return True
    if any(result.validation_failures.values()):
        return True
    obs = result.observation
    return obs is not None and any(p.metric not in PERF_METRICS for p, _ in obs.anomalies)


def _evidence(cfg: Config, st: sa.Engine, result: CycleResult) -> None:
    """Last-known-good snapshot after a clean run; the incident report after a bad one
    (in ``result.evidence_dir``, which the alerts already link to). Never fails the
    cycle."""
    try:
        incident = needs_report(result)
        if incident and cfg.evidence.auto_triage:
            log.warning("incident report: %s", report_run(cfg, result.run_id))
        elif not incident and result.status == "success":
            snapshots.keep_snapshot(cfg, result.run_id, st=st)
    except Exception:
        log.exception("evidence step failed; the run's outcome stands")


def _after(cfg: Config, st: sa.Engine, result: CycleResult, metrics: Metrics | None) -> None:
    """Alerts and gauges for the recorded run; a sink outage never fails the cycle."""

    obs = result.observation
    if metrics is not None and obs is None:
        export_run(metrics, result, RunObservation())
    try:
        last, _ = feed_state(cfg)
        alert(cfg, st, result, obs, metrics, last)
    except Exception:
        log.exception("alerting failed; notifications stay queued in the outbox")
