"""One pipeline cycle: ingest → contract gate → dbt build → checks → record.

Data flows one way; each step opens the warehouse and closes it again, so between
steps (and between cycles) nothing holds the DuckDB file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime

import sqlalchemy as sa

from monitor.core.config import Config, IngestConfig, state_url
from monitor.core.logs import run_id_var
from monitor.core.manifest import Project, load_manifest
from monitor.cycle.after import _after, _evidence, export_run
from monitor.cycle.breaker import interrupted_holds, mark_interrupted, trip_breaker
from monitor.cycle.result import CycleResult, new_run_id
from monitor.export.prometheus import Metrics
from monitor.observe.run import observe
from monitor.quality import owners
from monitor.quality.results import SuiteResult, failures_by_suite, record_results
from monitor.quality.suites import SuiteFile
from monitor.recovery.snapshots import note_build
from monitor.stages import checks
from monitor.stages.build import TOUCHED_AFTER_ENV, DbtError, DbtProject, DbtResult
from monitor.stages.ingest import IngestReport, ingest
from monitor.stages.volume import delivery_day
from monitor.store import state, watermark
from monitor.warehouse.connection import backend_of, warehouse
from monitor.warehouse.lock import cycle_lock

log = logging.getLogger(__name__)


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
        day = as_of or _delivered_day(cfg.ingest, result.ingest) or day
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

    note_build(cfg, result.run_id, full_refresh)  # the next snapshot knows what built
    # The dbt tests a monitor suite owns (one owner per property), from the manifest of
    # the last parse: a test added since runs this once, which only checks more.
    before = _project(cfg, quiet=True)
    left_out = owners.assign(before, checks.model_suites(cfg, before)).excluded
    extra = [] if cfg.dbt.unit_tests_in_cycle else ["--exclude-resource-type", "unit_test"]
    if left_out:
        extra += ["--exclude", " ".join(left_out)]
    dbt_result = DbtProject(cfg).invoke(
        "build", full_refresh=full_refresh, env=_build_env(cfg.ingest, result, full_refresh),
        extra=extra,
    )
    result.dbt = dbt_result
    project = _project(cfg)
    _record_models(st, result, project)
    # What this build merged that no build checked yet: the rows above the watermark
    # (None: every row, a rebuild).
    hwm = None if full_refresh or not cfg.ingest.enabled else result.hwm_before
    verified: dict[str, owners.VerifiedKeys] = {}
    if dbt_result.success:
        set_phase(st, result, "validate")
        on_models = checks.model_suites(cfg, project)
        skip = _owned_by_dbt(project, on_models, dbt_result)
        result.extra["owners"] = {"dbt_tests_left_out": list(left_out),
                                  "suite_checks_owned_by_dbt": skip}
        post = checks.model_checks(cfg, project, hwm, skip)
        _record_checks(st, result, post)
        result.failed_checks = [r.describe() for r in checks.failed(post)]
        verified = owners.verified_keys(on_models, post, hwm, skip)
    set_phase(st, result, "observe")
    _conclude(result)
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    result.observation = observe(cfg, st, project, result.run_id, result.dbt, at,
                                 touched_after=hwm, verified=verified)
    if metrics is not None:
        export_run(metrics, result, result.observation)
    if project is not None and result.observation is not None:
        for p in result.observation.points:
            if p.metric == "row_count":
                result.layer_rows.setdefault(p.layer, {})[p.model] = int(p.value)
    if dbt_result.success and cfg.ingest.enabled:
        # Checked and measured: the next cycle's touched rows start above what this
        # build merged. Not before (a failed build, a crash up to here: checked again).
        watermark.advance(st, result.run_id, result.merged_through)


def _build_env(ingest: IngestConfig, result: CycleResult, full_refresh: bool
               ) -> dict[str, str | None]:
    """dbt's data tests check what this cycle published (see pipeline/dbt_project.yml):
    an environment variable the tests read when they run, not a var (a var that
    changes every cycle makes dbt re-parse the whole project on every build)."""
    if full_refresh or not ingest.enabled:
        return {TOUCHED_AFTER_ENV: None}
    return {TOUCHED_AFTER_ENV: str(result.hwm_before)}


def _project(cfg: Config, *, quiet: bool = False) -> Project | None:
    try:
        return load_manifest(cfg.dbt.target_path, cfg.layers)  # [layers]: any-project
    except (OSError, ValueError) as exc:
        (log.debug if quiet else log.warning)("no dbt manifest to observe: %s", exc)
        return None


def _owned_by_dbt(project: Project | None, suites: Sequence[SuiteFile], dbt: DbtResult
                  ) -> dict[str, dict[str, str]]:
    """Per suite, the checks a dbt test owns that passed in this build."""
    if project is None:
        return {}
    passed = {project.tests[n.unique_id].name for n in dbt.nodes
              if n.unique_id in project.tests and n.status == "pass"}
    owned = owners.assign(project, suites).by_dbt
    found = {s: {c: t for c, t in by.items() if t in passed} for s, by in owned.items()}
    return {s: by for s, by in found.items() if by}


def _ingest_and_gate(cfg: Config, st: sa.Engine, result: CycleResult, day: date) -> None:
    with warehouse(cfg.warehouse) as wh:
        result.ingest = ingest(wh, cfg.ingest)
        _refresh_statistics(cfg.ingest, wh, result.ingest, loaded=True)
        set_phase(st, result, "gate")
        outcome = checks.gate(cfg, wh, result.ingest, st, day)
        _refresh_statistics(cfg.ingest, wh, result.ingest, loaded=False)
    result.published, result.held = outcome.published, outcome.held
    result.hwm_before = watermark.touched_after(st, outcome.seq_before)
    result.merged_through = outcome.seq_after
    result.extra["watermark"] = {"touched_after": result.hwm_before,
                                 "merged_through": result.merged_through}
    result.volume = outcome.days
    if outcome.days:
        result.extra["volume"] = [v.to_json() for v in outcome.days]
    _record_checks(st, result, outcome.results)


def _refresh_statistics(ingest: IngestConfig, wh: sa.Engine, report: IngestReport,
                        *, loaded: bool) -> None:
    """Planner statistics where the engine needs them (``Backend.refresh_statistics``):
    after ingest the raw tables it loaded and the ledger, for the gate's queries (a
    resend check planned on none joined 100k rows to 100k by nested loop); after the gate
    the ledger it decided, for the build."""
    feeds = sorted({f.feed for f in report.files if f.outcome == "loaded"}) if loaded else []
    backend_of(wh).refresh_statistics(
        wh, [(ingest.schema, f) for f in feeds] + [(ingest.schema, "ingest_batches")])


def _delivered_day(ingest: IngestConfig, report: IngestReport) -> date | None:
    """The newest date in the paths of the files this cycle loaded: a backfill run
    without --as-of still records its points under the business day."""
    days = [d for f in report.files if f.outcome == "loaded"
            if (d := delivery_day(str(f.path), ingest.landing_dir / f.feed, None))]
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


