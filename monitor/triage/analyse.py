"""Incident triage of one run: the entry points, and the steps in their order.

Steps, one module each: counts, expansion, batches, isolation, classify, then
query_plan and evidence, then commands. A step that cannot collect its evidence becomes
a note in the report; the others still run. The daemon (``monitor.cycle``) writes the
report after each failed or anomalous run; ``monitor triage`` renders it again or
analyses any other run.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from monitor.core.config import Config, state_url
from monitor.store import state
from monitor.triage import render
from monitor.triage.batches import batch_findings, column_shifts
from monitor.triage.classify import classify, undetermined_finding, validation_failures
from monitor.triage.commands import incident_commands
from monitor.triage.context import SAMPLE_ROWS, Context, RunRow, TriageError, jsonable
from monitor.triage.counts import layer_counts
from monitor.triage.evidence import (
    drift_plots,
    longest_models,
    run_alerts,
    save_evidence_files,
    suspect_model,
    timeline,
)
from monitor.triage.expansion import find_expansion_point
from monitor.triage.findings import (
    BatchFinding,
    ColumnShift,
    ExpansionPoint,
    Isolation,
    LayerCount,
    Triage,
)
from monitor.triage.isolation import isolate, isolation_models
from monitor.triage.load import load_context, relation_columns, warehouse_available
from monitor.triage.query_plan import query_plan
from monitor.warehouse.connection import apply_dbt_environment, warehouse
from monitor.warehouse.lock import Busy, cycle_lock

__all__ = ["TriageError", "analyse", "report_run", "write_report"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def report_run(cfg: Config, run_id: str) -> Path:
    """Analyse ``run_id`` and write ``report.{json,md,html}`` in its evidence folder.

    The caller holds the warehouse (the cycle lock); returns the Markdown report.
    """
    triage = analyse(cfg, run_id)
    return _write_all(triage)


def write_report(cfg: Config, run_id: str | None, fmt: str, out: Path | None) -> Path:
    """The incident report of ``run_id`` (default: the latest run) as md, html or json.

    Reuses the analysis already in the run's evidence folder (written by the daemon),
    else analyses now under the cycle lock. Returns the file written.
    """
    if fmt not in ("md", "html", "json"):
        raise TriageError(f"unknown format {fmt!r}: md, html or json")
    rid = run_id or _latest_run_id(cfg)
    doc_path = cfg.evidence.dir / _safe_run_id(rid) / "report.json"
    if doc_path.exists():
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    else:
        try:
            with cycle_lock(cfg):
                doc = analyse(cfg, rid).to_doc()
        except Busy as exc:
            raise TriageError(f"{exc}; try again when it has finished") from exc
        _write_docs(doc, doc_path.parent)

    target = out or doc_path.with_name(f"report.{fmt}")
    target.parent.mkdir(parents=True, exist_ok=True)
    text = {"md": render.render_markdown, "html": render.render_html,
            "json": render.render_json}[fmt](doc)
    target.write_text(text, encoding="utf-8")
    return target


def _write_all(triage: Triage) -> Path:
    folder = Path(triage.evidence_dir)
    return _write_docs(triage.to_doc(), folder)


def _write_docs(doc: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(render.render_json(doc), encoding="utf-8")
    (folder / "report.html").write_text(render.render_html(doc), encoding="utf-8")
    md = folder / "report.md"
    md.write_text(render.render_markdown(doc), encoding="utf-8")
    return md


def _safe_run_id(run_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", run_id):
        raise TriageError(f"not a run id: {run_id!r}")
    return run_id


def _latest_run_id(cfg: Config) -> str:
    st = state.open_state(state_url(cfg))
    try:
        with st.connect() as conn:
            rid = conn.execute(
                sa.select(state.runs.c.run_id).order_by(state.runs.c.started_at.desc()).limit(1)
            ).scalar()
    finally:
        st.dispose()
    if rid is None:
        raise TriageError("no runs recorded yet")
    return str(rid)


def analyse(cfg: Config, run_id: str) -> Triage:
    """Run the triage of ``run_id``; writes evidence files, returns the findings.

    The warehouse must not be held by anyone else (the cycle lock is the caller's).
    """
    st = state.open_state(state_url(cfg))
    try:
        ctx = load_context(cfg, st, run_id)
        return _analyse(ctx)
    finally:
        st.dispose()
        apply_dbt_environment(cfg.warehouse)  # the isolation pointed dbt at its scratch


def _collect(ctx: Context, what: str, step: Callable[[], _T], default: _T) -> _T:
    """Run one evidence step; a failure (missing file, table, manifest, points) becomes a
    note in the report instead of ending the triage: on-call needs the rest of it."""
    try:
        return step()
    except Exception as exc:
        log.warning("triage could not collect %s: %s", what, exc, exc_info=True)
        ctx.notes.append(f"could not collect {what}: {type(exc).__name__}: {exc}")
        return default


def _analyse(ctx: Context) -> Triage:
    ctx.evidence_dir.mkdir(parents=True, exist_ok=True)
    batches: list[BatchFinding] = []
    shifts: list[ColumnShift] = []
    expansion = ExpansionPoint()
    counts: list[LayerCount] = []
    if ctx.project is None:
        ctx.notes.append(f"no dbt manifest in {ctx.cfg.dbt.target_path}: no lineage, "
                         "counts, expansion point or compiled SQL")
    if not ctx.points.get(ctx.run.run_id):
        ctx.notes.append(f"no metric points recorded for run {ctx.run.run_id}")
    if warehouse_available(ctx.cfg.warehouse):
        counts, batches, shifts, expansion = _collect(
            ctx, "warehouse evidence", lambda: _warehouse_steps(ctx),
            (_collect(ctx, "layer counts", lambda: layer_counts(ctx), list[LayerCount]()),
             list[BatchFinding](), list[ColumnShift](), ExpansionPoint()))
    else:
        ctx.notes.append(f"warehouse {ctx.cfg.warehouse.path} not available: counts from "
                         "the state store only")
        counts = _collect(ctx, "layer counts", lambda: layer_counts(ctx), list[LayerCount]())
    isolation = _collect(ctx, "the isolated full refresh",
                         lambda: isolate(ctx, isolation_models(ctx, expansion)), Isolation())
    findings = classify(ctx, counts, batches, shifts, expansion, isolation)
    root = findings[0] if findings else undetermined_finding(ctx)
    suspect = _collect(ctx, "the suspect model",
                       lambda: suspect_model(ctx, root, expansion, isolation), None)
    plan = (_collect(ctx, f"the query plan of {suspect.name}",
                     lambda: query_plan(ctx, suspect), dict[str, Any]()) if suspect else {})
    triage = Triage(
        run=_run_doc(ctx.run),
        baseline_run_id=ctx.baseline.run_id if ctx.baseline else None,
        root_cause=root.cls,
        summary=root.summary,
        evidence=root.evidence,
        findings=findings,
        expansion_point=expansion,
        counts=counts,
        batches=batches,
        columns=shifts,
        isolation=isolation,
        longest_models=_collect(ctx, "the slowest models", lambda: longest_models(ctx), []),
        query_plan=plan,
        validation_failures=_collect(ctx, "validation failures",
                                     lambda: validation_failures(ctx), []),
        alerts=_collect(ctx, "the run's alerts", lambda: run_alerts(ctx), []),
        timeline=[],
        plots=[],
        commands={},
        notes=ctx.notes,
        samples={k: v[:SAMPLE_ROWS] for k, v in ctx.samples.items()},
        generated_at=datetime.now(UTC).isoformat(),
        evidence_dir=str(ctx.evidence_dir),
    )
    triage.timeline = _collect(ctx, "the timeline", lambda: timeline(ctx, triage), [])
    triage.plots = _collect(ctx, "drift plots",
                            lambda: drift_plots(ctx, counts, expansion, findings), [])
    triage.commands = _collect(ctx, "commands",
                               lambda: incident_commands(ctx, triage, suspect), {})
    _collect(ctx, "evidence files", lambda: save_evidence_files(ctx, triage), None)
    return triage


def _warehouse_steps(ctx: Context) -> tuple[list[LayerCount], list[BatchFinding],
                                            list[ColumnShift], ExpansionPoint]:
    """Counts, batches, column shifts and the expansion point, on one connection.

    The monitor's usual settings: DuckDB allows one configuration per file and process,
    and a read-only open would clash with the daemon's other jobs. Only SELECTs run
    here; the isolated rebuild reads production only (``Backend.comparison``)."""
    with warehouse(ctx.cfg.warehouse) as wh, wh.connect() as conn:
        ctx.columns = relation_columns(conn, ctx.project)
        counts = layer_counts(ctx)
        batches = _collect(ctx, "batches", lambda: batch_findings(conn, ctx),
                           list[BatchFinding]())
        conn.rollback()
        shifts = _collect(ctx, "column shifts", lambda: column_shifts(conn, ctx),
                          list[ColumnShift]())
        conn.rollback()
        expansion = _collect(ctx, "the expansion point",
                             lambda: find_expansion_point(conn, ctx, counts), ExpansionPoint())
    return counts, batches, shifts, expansion


def _run_doc(run: RunRow) -> dict[str, Any]:
    return {k: jsonable(v) if not isinstance(v, dict) else v for k, v in asdict(run).items()}
