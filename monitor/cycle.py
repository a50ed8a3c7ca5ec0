"""One pipeline cycle: ingest → contract gate → dbt build → checks → record.

Data flows one way; each step opens the warehouse and closes it again, so between
steps (and between cycles) nothing holds the DuckDB file.
"""

from __future__ import annotations

import fcntl
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor import checks, state
from monitor.batches import held_since
from monitor.config import Config, state_url
from monitor.ingest import IngestReport, ingest
from monitor.logs import run_id_var
from monitor.manifest import Project, load_manifest
from monitor.metrics import Metrics
from monitor.observe import RunObservation, observe
from monitor.operations import pause
from monitor.runner import DbtError, DbtProject, DbtResult
from monitor.validate import SuiteResult, failures_by_suite, record_results
from monitor.volume import DayVerdict, delivery_day
from monitor.warehouse import warehouse

log = logging.getLogger(__name__)

# Exit codes of `monitor once`.
EXIT_OK, EXIT_FAILED, EXIT_ATTENTION, EXIT_BUSY = 0, 1, 3, 4


class Busy(RuntimeError):
    """Another cycle holds the warehouse lock."""


@dataclass
class CycleResult:
    run_id: str
    status: str = "running"  # success | failed | held | interrupted
    reason: str = ""
    started: float = field(default_factory=time.monotonic)
    duration_s: float = 0.0
    ingest: IngestReport = field(default_factory=IngestReport)
    published: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    dbt: DbtResult | None = None
    layer_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    validation_failures: dict[str, int] = field(default_factory=dict)
    evidence_dir: Path | None = None
    observation: RunObservation | None = None
    paused: bool = False  # the breaker was already tripped: this run built nothing
    # holds of runs killed after their gate, before they were recorded (by run id)
    interrupted_holds: dict[str, list[str]] = field(default_factory=dict)
    breaker: str = ""  # why this run tripped the circuit breaker ("" = it did not)
    hwm_before: int = 0
    phase: str = ""
    mark: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    failed_checks: list[str] = field(default_factory=list)
    volume: list[DayVerdict] = field(default_factory=list)  # the gate's feed-day verdicts
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status == "failed":
            return EXIT_FAILED
        if self.status == "held":
            return EXIT_ATTENTION
        return EXIT_OK


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


@contextmanager
def cycle_lock(cfg: Config) -> Iterator[None]:
    """One cycle at a time per warehouse, across processes (daemon and CLI)."""
    lock_path = Path(str(cfg.warehouse.path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Busy(f"another cycle is running on {cfg.warehouse.path}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_cycle(
    cfg: Config, *, full_refresh: bool = False, trigger: str = "once",
    as_of: date | None = None, metrics: Metrics | None = None,
    stop: threading.Event | None = None,
) -> CycleResult:
    """Run one cycle and record it; never raises for pipeline problems, only reports them.

    ``as_of`` is the logical day of the data (drift compares like days); without it, the
    newest delivery day in the paths of the files this cycle loaded, else today.
    ``stop`` set (the daemon is stopping): the build is not started, the run ends
    ``interrupted``.
    """
    st = state.open_state(state_url(cfg))
    try:
        with cycle_lock(cfg):
            mark_interrupted(st, cfg=cfg)
            result = CycleResult(new_run_id())
            token = run_id_var.set(result.run_id)
            try:  # every line of the cycle, alerts included, carries its run id
                _record_start(st, result, trigger, full_refresh)
                try:
                    _steps(cfg, st, result, full_refresh, as_of, metrics, stop)
                except DbtError as exc:
                    result.status, result.reason = "failed", f"dbt could not run: {exc}"
                except Exception as exc:  # a bug or an outage: record it, then re-raise
                    result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
                    _record_end(st, result)
                    raise
                result.interrupted_holds = interrupted_holds(st)
                _record_end(st, result)
                trip_breaker(cfg, st, result, metrics)
                _after(cfg, st, result, metrics)
                _evidence(cfg, st, result)  # after the alerts: the report lists them
            finally:
                run_id_var.reset(token)
            return result
    finally:
        st.dispose()


def _steps(
    cfg: Config, st: sa.Engine, result: CycleResult, full_refresh: bool, as_of: date | None,
    metrics: Metrics | None, stop: threading.Event | None = None,
) -> None:
    result.evidence_dir = cfg.evidence.dir / result.run_id
    day = as_of or datetime.now(UTC).date()
    if cfg.ingest.enabled:
        set_phase(st, result, "ingest")
        _ingest_and_gate(cfg, st, result, day)
        day = as_of or _delivered_day(cfg, result.ingest) or day
    result.extra["day"] = day.isoformat()
    result.paused = state.paused(st) is not None
    if result.paused:
        # The circuit breaker: keep ingesting and auditing, build nothing downstream.
        result.status, result.reason = "held", "paused: downstream build skipped"
        log.warning("pipeline paused: ingested and audited, build skipped")
        return
    if stop is not None and stop.is_set():
        # Stopping: what is ingested stays (committed per file); the build waits.
        result.status, result.reason = "interrupted", "stopped before the build"
        log.warning("stop requested: build not started")
        return
    set_phase(st, result, "build")
    from monitor.snapshots import note_build  # snapshots imports this module lazily

    note_build(cfg, result.run_id, full_refresh)  # the next snapshot knows what built
    dbt_result = DbtProject(cfg).invoke(
        "build", full_refresh=full_refresh, vars=_build_vars(cfg, result, full_refresh),
        extra=[] if cfg.dbt.unit_tests_in_cycle else ["--exclude-resource-type", "unit_test"],
    )
    result.dbt = dbt_result
    project = _project(cfg)
    _record_models(st, result, project)
    # What this run published: the rows above it (None: every row, a rebuild).
    hwm = None if full_refresh or not cfg.ingest.enabled else result.hwm_before
    if dbt_result.success:
        set_phase(st, result, "validate")
        post = checks.model_checks(cfg, project, hwm)
        _record_checks(st, result, post)
        result.failed_checks = [r.describe() for r in checks.failed(post)]
    set_phase(st, result, "observe")
    _conclude(result)
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    result.observation = observe(cfg, st, project, result, at, metrics, touched_after=hwm)
    if project is not None and result.observation is not None:
        for p in result.observation.points:
            if p.metric == "row_count":
                result.layer_rows.setdefault(p.layer, {})[p.model] = int(p.value)


def _build_vars(cfg: Config, result: CycleResult, full_refresh: bool) -> dict[str, int]:
    """dbt's data tests check what this cycle published (see pipeline/dbt_project.yml)."""
    if full_refresh or not cfg.ingest.enabled:
        return {}
    return {"monitor_touched_after": result.hwm_before}


def _project(cfg: Config) -> Project | None:
    try:
        return load_manifest(cfg.dbt.target_path, cfg.layers)  # [layers]: any-project
    except (OSError, ValueError) as exc:
        log.warning("no dbt manifest to observe: %s", exc)
        return None


def _evidence(cfg: Config, st: sa.Engine, result: CycleResult) -> None:
    """Last-known-good snapshot after a clean run; the incident report after a bad one
    (in ``result.evidence_dir``, which the alerts already link to). Never fails the
    cycle."""
    from monitor import snapshots, triage

    try:
        incident = triage.needs_report(result)
        if incident and cfg.evidence.auto_triage:
            log.warning("incident report: %s", triage.report_run(cfg, result.run_id))
        elif not incident and result.status == "success":
            snapshots.keep_snapshot(cfg, result.run_id, st=st)
    except Exception:
        log.exception("evidence step failed; the run's outcome stands")


def _after(cfg: Config, st: sa.Engine, result: CycleResult, metrics: Metrics | None) -> None:
    """Alerts and gauges for the recorded run; a sink outage never fails the cycle."""
    from monitor.observe import alert, export_run, feed_state

    obs = result.observation
    if metrics is not None and obs is None:
        export_run(metrics, result, RunObservation())
    try:
        last, _ = feed_state(cfg)
        alert(cfg, st, result, obs, metrics, last)
    except Exception:
        log.exception("alerting failed; notifications stay queued in the outbox")


def _ingest_and_gate(cfg: Config, st: sa.Engine, result: CycleResult, day: date) -> None:
    with warehouse(cfg.warehouse) as wh:
        result.ingest = ingest(wh, cfg.ingest)
        set_phase(st, result, "gate")
        outcome = checks.gate(cfg, wh, result.ingest, st, day)
    result.published, result.held = outcome.published, outcome.held
    result.hwm_before = outcome.hwm_before
    result.volume = outcome.days
    if outcome.days:
        result.extra["volume"] = [v.to_json() for v in outcome.days]
    _record_checks(st, result, outcome.results)


def _delivered_day(cfg: Config, report: IngestReport) -> date | None:
    """The newest date in the paths of the files this cycle loaded: a backfill run
    without --as-of still records its points under the business day."""
    days = [d for f in report.files if f.outcome == "loaded"
            if (d := delivery_day(str(f.path), cfg.ingest.landing_dir / f.feed, None))]
    return max(days, default=None)


def _record_checks(st: sa.Engine, result: CycleResult, results: list[SuiteResult]) -> None:
    record_results(st, result.run_id, results)
    for suite, n in failures_by_suite(results).items():
        result.validation_failures[suite] = result.validation_failures.get(suite, 0) + n


def _conclude(result: CycleResult) -> None:
    dbt_result = result.dbt
    if dbt_result is not None and not dbt_result.success:
        failed = dbt_result.failed
        names = ", ".join(n.name for n in failed[:5]) or dbt_result.error
        result.status, result.reason = "failed", f"dbt build failed: {names}"
        return
    if result.failed_checks:
        result.status = "failed"
        result.reason = "checks failed after the build: " + " | ".join(result.failed_checks)
        return
    quarantined = result.ingest.count("quarantined")
    rows_q = result.ingest.rows_quarantined
    if result.held or quarantined or rows_q:
        parts = []
        if result.held:
            parts.append(f"{len(result.held)} batch(es) held by contracts")
        if quarantined:
            parts.append(f"{quarantined} file(s) quarantined whole")
        if rows_q:
            parts.append(f"{rows_q} row(s) quarantined")
        result.status, result.reason = "held", "; ".join(parts)
        return
    result.status = "success"


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


def set_phase(st: sa.Engine, result: CycleResult, phase: str) -> None:
    """Where the run is now: for status, the step timings, and the crash tests."""
    now = time.monotonic()
    if result.phase:
        result.timings[result.phase] = result.timings.get(result.phase, 0.0) + now - result.mark
    result.phase, result.mark = phase, now
    with st.begin() as conn:
        conn.execute(
            state.runs.update().where(state.runs.c.run_id == result.run_id).values(phase=phase)
        )
    log.debug("phase %s", phase)


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


def _record_start(st: sa.Engine, result: CycleResult, trigger: str, full_refresh: bool) -> None:
    with st.begin() as conn:
        conn.execute(
            state.runs.insert().values(
                run_id=result.run_id, started_at=state.utcnow(), status="running", trigger=trigger,
                full_refresh=full_refresh,
            )
        )


def _record_models(st: sa.Engine, result: CycleResult, project: Project | None) -> None:
    if result.dbt is None or not result.dbt.nodes:
        return
    with st.begin() as conn:
        conn.execute(
            state.run_models.insert(),
            [
                dict(
                    run_id=result.run_id, unique_id=n.unique_id, model=n.name,
                    layer=project.models[n.unique_id].layer
                    if project and n.unique_id in project.models else None,
                    resource_type=n.resource_type, status=n.status, duration_s=n.duration_s,
                    rows_affected=n.rows_affected, message=n.message[:2000],
                )
                for n in result.dbt.nodes
            ],
        )


def _record_end(st: sa.Engine, result: CycleResult) -> None:
    if result.phase:
        result.timings[result.phase] = (
            result.timings.get(result.phase, 0.0) + time.monotonic() - result.mark
        )
        result.phase = ""
    result.duration_s = time.monotonic() - result.started
    summary = {
        "files": {o: result.ingest.count(o) for o in ("loaded", "duplicate", "quarantined")},
        "rows_loaded": result.ingest.rows_loaded,
        "rows_quarantined": result.ingest.rows_quarantined,
        "published": result.published,
        "held": result.held,
        "duration_s": round(result.duration_s, 3),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        **result.extra,
    }
    with st.begin() as conn:
        conn.execute(
            state.runs.update()
            .where(state.runs.c.run_id == result.run_id)
            .values(status=result.status, reason=result.reason or None, ended_at=state.utcnow(),
                    summary=summary, phase="done")
        )


