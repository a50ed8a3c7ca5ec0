"""The circuit breaker: which runs stop downstream work, and runs a kill left behind."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from monitor.core.config import Config
from monitor.cycle.result import CycleResult
from monitor.export.prometheus import Metrics
from monitor.store import state
from monitor.store.batches import held_since
from monitor.store.events import pause
from monitor.warehouse.connection import warehouse

log = logging.getLogger(__name__)


def critical_reason(result: CycleResult) -> str | None:
    """Why this run must stop downstream work (the circuit breaker), or None."""
    if result.status == "failed":
        return f"run {result.run_id} failed: {result.reason}"
    if result.held:
        return f"batch(es) held by contract: {', '.join(result.held)}"
    if result.interrupted_holds:
        return "batch(es) held by contract in interrupted run(s): " + "; ".join(
            f"{run} held {', '.join(ids)}" for run, ids in result.interrupted_holds.items())
    unreadable = [f.path.name for f in result.ingest.files if f.outcome == "quarantined"]
    if unreadable:  # a delivery the facts will lack (e.g. schema drift)
        return f"file(s) quarantined whole: {', '.join(unreadable)}"
    if result.observation is not None:
        # Facts only: they are what consumers read; upstream drift warns through alerts.
        hard = [f"{p.model}.{p.metric} z={r.z:+.1f}" for p, r in result.observation.anomalies
                if r.severity == "critical" and r.z is not None and p.layer == "fct"]
        if hard:
            return "drift past the hard limit: " + ", ".join(hard[:5])
    return None


def trip_breaker(
    cfg: Config, st: sa.Engine, result: CycleResult, metrics: Metrics | None
) -> str:
    """Pause downstream work after a critical run (``[scheduler] pause_on_critical``).

    Part of the cycle, so ``monitor once`` trips it as the daemon does. Returns (and
    keeps in ``result.breaker``) the reason, or "" when the run was not critical.
    """
    reason = critical_reason(result)
    if reason is None or not cfg.scheduler.pause_on_critical:
        return ""
    if pause(st, reason, result.run_id):
        log.error("circuit breaker: downstream paused: %s", reason)
    result.breaker = reason
    if metrics is not None:  # the daemon's gauge, even when its refresh finds the lock busy
        metrics.set_paused(True)
    return reason


def mark_interrupted(st: sa.Engine, reason: str = "process ended mid-cycle",
                     cfg: Config | None = None) -> int:
    """Runs left 'running' are dead: we hold the lock, so nobody else is running them.

    With ``cfg``, the batches such a run's gate held (the ledger commits a hold before
    the run is recorded) are recorded as the run's ``held``: the next completed cycle
    trips the breaker for them (:func:`interrupted_holds`), so a kill in between loses
    neither the pause nor its page.
    """
    with st.begin() as conn:
        dead = conn.execute(sa.select(state.runs.c.run_id, state.runs.c.started_at).where(
            state.runs.c.status == "running")).all()
    holds = _held_by_run(cfg, dead) if cfg is not None and dead else {}
    for run in dead:
        held = holds.get(run.run_id, [])
        with st.begin() as conn:
            conn.execute(
                state.runs.update()
                .where(state.runs.c.run_id == run.run_id, state.runs.c.status == "running")
                .values(status="interrupted", ended_at=state.utcnow(), reason=reason,
                        summary={"held": held} if held else None)
            )
        if held:
            log.warning("run %s was interrupted after its gate held %s", run.run_id,
                        ", ".join(held))
    return len(dead)


def _held_by_run(cfg: Config, runs: Sequence[sa.Row[Any]]) -> dict[str, list[str]]:
    """Per dead run, the batches still held that its gate held: held since it started
    and not by a later run (one warehouse connection for all of them)."""
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    try:
        with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
            for r in sorted(runs, key=lambda r: r.started_at, reverse=True):
                ids = [b for b in held_since(conn, cfg.ingest.schema, r.started_at)
                       if b not in seen]
                out[r.run_id], seen = ids, seen | set(ids)
        return out
    except sa.exc.SQLAlchemyError as exc:  # no ledger yet: nothing can be held
        log.debug("no held batches read: %s", exc)
        return {}


def interrupted_holds(st: sa.Engine) -> dict[str, list[str]]:
    """The holds of the runs interrupted since the last run that completed: no breaker
    has seen them yet."""
    r = state.runs.c
    with st.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(r.started_at)).where(
            r.status.in_(("success", "failed", "held")))).scalar()
        q = sa.select(r.run_id, r.summary).where(r.status == "interrupted")
        if last is not None:
            q = q.where(r.started_at > last)
        rows = conn.execute(q.order_by(r.started_at)).all()
    return {str(row.run_id): list(row.summary["held"]) for row in rows
            if isinstance(row.summary, dict) and row.summary.get("held")}
