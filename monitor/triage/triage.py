"""Automated incident triage: where rows multiply, why, and what to do about it.

For one run (by default the latest) the triage follows the first-30-minutes plan:

1. **Counts per layer** – row counts and key cardinalities of every relation (state table
   ``metric_points``) against the last good run (latest ``success`` run before it without
   data anomalies), along the dbt lineage raw → stg → int → fct.
2. **Expansion point** – the first model, in lineage order, whose output grows out of
   proportion to its input: its duplicate grain keys rose, or its rows per input row rose
   ≥ 1.5×. Its join key and the input carrying the duplicated keys come from the model's
   ``meta.joins`` (see below) or from the columns it shares with its other parents,
   checked against the data. Else a model that sums more input rows into as many
   output rows: its rows grew as in the baseline run while a ``sum:`` metric and a
   parent's rows grew ≥ 1.5× their baseline growth (duplicated payments inflating
   ``orders.amount``); the model whose grain that parent carries wins. A declared join
   whose input now repeats a key inside one delivery (``unique_per``) is reported too
   even when the model's own lookup dedupes (no growth yet, but which row wins is
   arbitrary). A step that cannot collect its evidence (no manifest, no warehouse, no
   points, no query profile) is listed in the report's notes; the others still run.
3. **Batches and columns** – the batches this run brought (the ingest ledger) against the
   baseline's: a batch that repeats an earlier one, a column whose null share or scale
   jumped among the new rows (sources, staging views and tables; views over other
   models are skipped, scanning them would re-run their joins).
4. **Full refresh vs incremental** – the incremental models are rebuilt with
   ``--full-refresh`` on a file copy of the warehouse in the run's evidence folder
   (DuckDB; production is never written) and diffed against production by unique key.
5. **Evidence** – sample rows around the offending keys, the slowest models (state
   ``run_models``) against the baseline, a DuckDB JSON profile of the suspect model's
   compiled SQL (a SELECT), validation failures, the run's alerts, drift plots.

``meta.joins`` (optional, per model)::

    meta:
      joins:
        - {input: stg_benefits__companies, key: company_ein, unique_per: _batch_id}
        - {input: stg_benefits__companies, key: domain, model_key: email_domain}

``input`` is a parent's name, ``key`` its join column, ``model_key`` the model's column
(default ``key``), ``unique_per`` a column of the input within whose values the key must
be unique (one delivery); without it the key must be unique in the whole input.

Classification (first that holds, see :func:`classify`): ``schema_drift``,
``duplicate_batch``, ``key_explosion``, ``incremental_predicate``, ``null_storm``,
``logic_regression``, ``volume_surge``; then the run's failed expectations; otherwise
``undetermined``. The daemon (``monitor.cycle``) writes the report after each failed or
anomalous run (:func:`needs_report`) into the run's evidence folder, which its alerts
link to; ``monitor triage`` renders it again or analyses any other run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from monitor.core import seasonal
from monitor.core.config import Config, ConfigError, state_url
from monitor.core.manifest import ModelInfo, Project, load_manifest
from monitor.recovery.snapshots import copy_file, list_snapshots
from monitor.stages.build import DbtError, DbtProject
from monitor.stages.volume import CHECK_DROP, CHECK_RESEND, CHECK_SURGE
from monitor.stages.volume_check import SUITE_PREFIX as VOLUME_SUITE_PREFIX
from monitor.store import state
from monitor.store.batches import ledger_tables
from monitor.store.state import alert_outbox, alerts_open, metric_points
from monitor.triage import render as report
from monitor.warehouse.connection import apply_dbt_environment, warehouse
from monitor.warehouse.lock import Busy, cycle_lock

__all__ = [
    "CLASSES",
    "TriageError",
    "analyse",
    "report_run",
    "write_report",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CLASSES = (
    "volume_surge", "partial_delivery", "key_explosion", "duplicate_batch",
    "incremental_predicate", "schema_drift", "null_storm", "logic_regression",
)  # fmt: skip
UNDETERMINED = "undetermined"
PERF_METRICS = frozenset({"runtime_seconds", "cost"})
BATCH_COLUMN = "_batch_id"  # contracts.md: raw rows carry their batch, staging keeps it
NULL_SPELLINGS = ("", "null", "n/a", "none")  # contracts.md null spellings (raw is text)
GROWTH_RATIO = 1.5  # rows per input row grew by this factor → expansion
SURGE_RATIO = 2.0  # rows added by a feed vs the baseline's → surge
NULL_JUMP, SCALE_RATIO, MIN_ROWS = 0.2, 5.0, 20
REPEAT_HIGH, REPEAT_LOW = 0.9, 0.5  # share of a batch's rows seen in an earlier batch
PROFILE_TIMEOUT_S = 300.0
MAX_PLOTS, TOP_KEYS, SAMPLE_ROWS = 6, 10, 10
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT",
            "USMALLINT", "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC")
_TEXT = ("VARCHAR", "TEXT", "STRING", "CHAR", "NVARCHAR")
_SCHEMA_ERRORS = re.compile(r"binder error|column .* (not found|does not exist)|"
                            r"referenced column|conversion error|could not convert", re.I)


class TriageError(RuntimeError):
    """The triage cannot be done (no such run, a cycle holds the warehouse, ...)."""


# -- what the triage finds ------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    run_id: str
    status: str
    reason: str | None
    started_at: datetime
    ended_at: datetime | None
    phase: str | None
    trigger: str
    full_refresh: bool
    summary: dict[str, Any]


@dataclass
class LayerCount:
    """One relation's counts in this run and the last good one."""

    model: str
    layer: str
    rows: int | None
    rows_before: int | None
    added: int | None = None  # rows this run added (vs the run before it)
    added_before: int | None = None  # rows the baseline added
    distinct_keys: int | None = None
    duplicate_keys: int | None = None
    duplicate_keys_before: int | None = None
    input: str | None = None  # the parent the rows flow from
    out_per_in: float | None = None
    out_per_in_before: float | None = None
    flagged: str = ""  # why this relation grows out of proportion ("" = it does not)


@dataclass
class OffendingKey:
    key: str
    model_rows: int  # rows of the model with this key (excess over one per grain key)
    input_rows: int  # rows of the input with this key
    per: str | None = None  # the unique_per value (e.g. the batch) it repeats in


@dataclass
class ExpansionPoint:
    model: str | None = None
    layer: str | None = None
    key: str | None = None  # the input's join column
    model_key: str | None = None
    input: str | None = None
    grew: bool = False  # the model's output did multiply (False: a latent duplicate key)
    reason: str = "no model grows out of proportion to its inputs"
    rows: int | None = None
    rows_before: int | None = None
    out_per_in: float | None = None
    out_per_in_before: float | None = None
    duplicated_keys: int = 0
    offending_keys: list[OffendingKey] = field(default_factory=list)
    source: str | None = None  # the raw source behind the input
    batches: list[str] = field(default_factory=list)
    inflated: str | None = None  # the sum metric that grew while the rows did not


@dataclass
class BatchFinding:
    batch_id: str
    feed: str
    source_file: str
    status: str
    rows: int
    reason: str | None = None
    repeats: str | None = None  # the earlier batch it repeats
    repeat_share: float | None = None
    repeat_share_before: float | None = None
    resend: bool = False  # repeats an earlier batch though the feed's batches did not


@dataclass
class ColumnShift:
    relation: str
    layer: str
    column: str
    kind: str  # nulls | scale
    now: float
    before: float
    rows_now: int
    rows_before: int


@dataclass
class ModelDiff:
    """A model's production table against its full refresh on an isolated copy."""

    model: str
    key: list[str]
    prod_rows: int = 0
    refresh_rows: int = 0
    prod_duplicate_keys: int = 0
    refresh_duplicate_keys: int = 0
    only_in_prod: int = 0
    only_in_refresh: int = 0
    changed: int = 0
    verdict: str = "equal"  # equal | incremental filter | unique key | retained keys
    explanation: str = ""


@dataclass
class Isolation:
    ran: bool = False
    reason: str = ""
    warehouse_copy: str = ""
    copy_bytes: int = 0
    seconds: float = 0.0
    models: list[str] = field(default_factory=list)
    failed_tests: list[str] = field(default_factory=list)
    prod_checksum_before: str = ""
    prod_checksum_after: str = ""
    diffs: list[ModelDiff] = field(default_factory=list)


@dataclass
class Finding:
    cls: str
    summary: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class Triage:
    run: dict[str, Any]
    baseline_run_id: str | None
    root_cause: str
    summary: str
    evidence: list[str]
    findings: list[Finding]
    expansion_point: ExpansionPoint
    counts: list[LayerCount]
    batches: list[BatchFinding]
    columns: list[ColumnShift]
    isolation: Isolation
    longest_models: list[dict[str, Any]]
    query_profile: dict[str, Any]
    validation_failures: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    plots: list[dict[str, Any]]
    commands: dict[str, list[str]]
    notes: list[str]
    samples: dict[str, list[dict[str, Any]]]
    generated_at: str
    evidence_dir: str

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    def to_doc(self) -> dict[str, Any]:
        """The report as JSON-safe data (``run_id`` and ``root_cause`` first)."""
        doc: dict[str, Any] = {"run_id": self.run_id, "root_cause": self.root_cause}
        doc.update(json.loads(json.dumps(asdict(self), default=_json_default)))
        return doc


# -- entry points ---------------------------------------------------------------------




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
    text = {"md": report.render_markdown, "html": report.render_html,
            "json": report.render_json}[fmt](doc)
    target.write_text(text, encoding="utf-8")
    return target


def _write_all(triage: Triage) -> Path:
    folder = Path(triage.evidence_dir)
    return _write_docs(triage.to_doc(), folder)


def _write_docs(doc: dict[str, Any], folder: Path) -> Path:

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(report.render_json(doc), encoding="utf-8")
    (folder / "report.html").write_text(report.render_html(doc), encoding="utf-8")
    md = folder / "report.md"
    md.write_text(report.render_markdown(doc), encoding="utf-8")
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


# -- the analysis ---------------------------------------------------------------------


@dataclass(frozen=True)
class Join:
    """A declared (``meta.joins``) or inferred join of a model to one of its parents."""

    input: str
    key: str
    model_key: str
    unique_per: str | None = None
    declared: bool = False


@dataclass(frozen=True)
class LedgerRow:
    batch_id: str
    feed: str
    source_file: str
    status: str
    load_seq: int
    publish_seq: int | None
    rows_read: int
    rows_loaded: int
    reason: str | None
    ingested_at: datetime
    decided_at: datetime | None
    decision_reason: str | None


@dataclass
class _Ctx:
    """Everything the steps share: config, runs, points, lineage, ledger, columns."""

    cfg: Config
    st: sa.Engine
    run: RunRow
    runs: list[RunRow]  # every run up to and including ``run``, oldest first
    baseline: RunRow | None
    project: Project | None
    joins: dict[str, list[Join]]
    manifest: dict[str, Any]
    points: dict[str, dict[tuple[str, str], Any]]
    with_points: set[str]
    ledger: list[LedgerRow]
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # uid -> col -> type
    notes: list[str] = field(default_factory=list)
    samples: dict[str, Any] = field(default_factory=dict)

    @property
    def evidence_dir(self) -> Path:
        return self.cfg.evidence.dir / self.run.run_id

    def before(self, run: RunRow | None) -> RunRow | None:
        """The latest run observed (with metric points) before ``run``."""
        if run is None:
            return None
        earlier = [r for r in self.runs if r.started_at < run.started_at]
        for r in reversed(earlier):
            if r.run_id in self.with_points:
                return r
        return None

    def pts(self, run: RunRow | None) -> dict[tuple[str, str], Any]:
        return self.points.get(run.run_id, {}) if run is not None else {}

    def value(self, run: RunRow | None, model: str, metric: str) -> float | None:
        p = self.pts(run).get((model, metric))
        return float(p.value) if p is not None else None

    def batches_of(self, run: RunRow | None) -> list[LedgerRow]:
        """Batches a run brought: loaded in it, or published since the run before it."""
        if run is None:
            return []
        earlier = [r for r in self.runs if r.started_at < run.started_at]
        lo = (earlier[-1].ended_at or earlier[-1].started_at) if earlier else None
        hi = run.ended_at or state.utcnow()
        out = []
        for b in self.ledger:
            published = b.decided_at if b.status == "published" else None
            if _within(b.ingested_at, lo, hi) or (published and _within(published, lo, hi)):
                out.append(b)
        return out

    def new_ids(self, run: RunRow | None) -> list[str]:
        return [b.batch_id for b in self.batches_of(run) if b.status != "quarantined"]

    def node(self, name: str) -> ModelInfo | None:
        if self.project is None:
            return None
        try:
            return self.project.by_name(name)
        except KeyError:
            return None


def analyse(cfg: Config, run_id: str) -> Triage:
    """Run the triage of ``run_id``; writes evidence files, returns the findings.

    The warehouse must not be held by anyone else (the cycle lock is the caller's).
    """
    st = state.open_state(state_url(cfg))
    try:
        ctx = _load(cfg, st, run_id)
        return _analyse(ctx)
    finally:
        st.dispose()
        apply_dbt_environment(cfg.warehouse)  # the isolation pointed dbt at a copy


def _collect(ctx: _Ctx, what: str, step: Callable[[], _T], default: _T) -> _T:
    """Run one evidence step; a failure (missing file, table, manifest, points) becomes a
    note in the report instead of ending the triage: on-call needs the rest of it."""
    try:
        return step()
    except Exception as exc:
        log.warning("triage could not collect %s: %s", what, exc, exc_info=True)
        ctx.notes.append(f"could not collect {what}: {type(exc).__name__}: {exc}")
        return default


def _analyse(ctx: _Ctx) -> Triage:
    ctx.evidence_dir.mkdir(parents=True, exist_ok=True)
    batch_findings: list[BatchFinding] = []
    shifts: list[ColumnShift] = []
    expansion = ExpansionPoint()
    counts: list[LayerCount] = []
    if ctx.project is None:
        ctx.notes.append(f"no dbt manifest in {ctx.cfg.dbt.target_path}: no lineage, "
                         "counts, expansion point or compiled SQL")
    if not ctx.points.get(ctx.run.run_id):
        ctx.notes.append(f"no metric points recorded for run {ctx.run.run_id}")
    if _warehouse_available(ctx.cfg):
        counts, batch_findings, shifts, expansion = _collect(
            ctx, "warehouse evidence", lambda: _warehouse_steps(ctx),
            (_collect(ctx, "layer counts", lambda: layer_counts(ctx), list[LayerCount]()),
             list[BatchFinding](), list[ColumnShift](), ExpansionPoint()))
    else:
        ctx.notes.append(f"warehouse {ctx.cfg.warehouse.path} not available: counts from "
                         "the state store only")
        counts = _collect(ctx, "layer counts", lambda: layer_counts(ctx), list[LayerCount]())
    isolation = _collect(ctx, "the isolated full refresh",
                         lambda: _isolate(ctx, _isolation_models(ctx, expansion)), Isolation())
    findings = classify(ctx, counts, batch_findings, shifts, expansion, isolation)
    root = findings[0] if findings else _undetermined(ctx)
    suspect = _collect(ctx, "the suspect model",
                       lambda: _suspect(ctx, root, expansion, isolation), None)
    profile = (_collect(ctx, f"the query profile of {suspect.name}",
                        lambda: _profile(ctx, suspect), dict[str, Any]()) if suspect else {})
    triage = Triage(
        run=_run_doc(ctx.run),
        baseline_run_id=ctx.baseline.run_id if ctx.baseline else None,
        root_cause=root.cls,
        summary=root.summary,
        evidence=root.evidence,
        findings=findings,
        expansion_point=expansion,
        counts=counts,
        batches=batch_findings,
        columns=shifts,
        isolation=isolation,
        longest_models=_collect(ctx, "the slowest models", lambda: _longest_models(ctx), []),
        query_profile=profile,
        validation_failures=_collect(ctx, "validation failures",
                                     lambda: _validation_failures(ctx), []),
        alerts=_collect(ctx, "the run's alerts", lambda: _alerts(ctx), []),
        timeline=[],
        plots=[],
        commands={},
        notes=ctx.notes,
        samples={k: v[:SAMPLE_ROWS] for k, v in ctx.samples.items()},
        generated_at=datetime.now(UTC).isoformat(),
        evidence_dir=str(ctx.evidence_dir),
    )
    triage.timeline = _collect(ctx, "the timeline", lambda: _timeline(ctx, triage), [])
    triage.plots = _collect(ctx, "drift plots",
                            lambda: _plots(ctx, counts, expansion, findings), [])
    triage.commands = _collect(ctx, "commands", lambda: _commands(ctx, triage, suspect), {})
    _collect(ctx, "evidence files", lambda: _save_evidence(ctx, triage), None)
    return triage


def _warehouse_steps(ctx: _Ctx) -> tuple[list[LayerCount], list[BatchFinding],
                                         list[ColumnShift], ExpansionPoint]:
    """Counts, batches, column shifts and the expansion point, on one connection.

    The monitor's usual settings: DuckDB allows one configuration per file and process,
    and a read-only open would clash with the daemon's other jobs. Only SELECTs run
    here; the isolated rebuild attaches production read-only."""
    with warehouse(ctx.cfg.warehouse) as wh, wh.connect() as conn:
        ctx.columns = _relation_columns(conn, ctx.project)
        counts = layer_counts(ctx)
        batch_findings = _collect(ctx, "batches", lambda: _batch_findings(conn, ctx),
                                  list[BatchFinding]())
        conn.rollback()
        shifts = _collect(ctx, "column shifts", lambda: _column_shifts(conn, ctx),
                          list[ColumnShift]())
        conn.rollback()
        expansion = _collect(ctx, "the expansion point",
                             lambda: _expansion(conn, ctx, counts), ExpansionPoint())
    return counts, batch_findings, shifts, expansion


def _warehouse_available(cfg: Config) -> bool:
    return bool(cfg.warehouse.url) or cfg.warehouse.path.exists()


def _load(cfg: Config, st: sa.Engine, run_id: str) -> _Ctx:
    runs = _runs(st)
    by_id = {r.run_id: r for r in runs}
    if run_id not in by_id:
        raise TriageError(f"no run {run_id!r} in the state store")
    run = by_id[run_id]
    runs = [r for r in runs if r.started_at <= run.started_at]
    with_points = _runs_with_points(st, [r.run_id for r in runs])
    project, manifest = _manifest(cfg)
    ctx = _Ctx(cfg=cfg, st=st, run=run, runs=runs, baseline=None, project=project,
               joins=_joins(manifest, project), manifest=manifest, points={},
               with_points=with_points, ledger=_ledger(cfg))
    ctx.baseline = _last_good(st, runs, run, with_points)
    wanted = {r.run_id for r in (run, ctx.baseline, ctx.before(run), ctx.before(ctx.baseline))
              if r is not None}
    ctx.points = _points(st, wanted)
    if ctx.baseline is None:
        ctx.notes.append("no earlier successful run: nothing to compare with")
    return ctx


def _runs(st: sa.Engine) -> list[RunRow]:
    r = state.runs
    with st.connect() as conn:
        rows = conn.execute(sa.select(r).order_by(r.c.started_at)).mappings().all()
    return [
        RunRow(run_id=str(x["run_id"]), status=str(x["status"]), reason=x["reason"],
               started_at=x["started_at"], ended_at=x["ended_at"], phase=x.get("phase"),
               trigger=str(x["trigger"]), full_refresh=bool(x["full_refresh"]),
               summary=dict(x["summary"] or {}))
        for x in rows
    ]


def _runs_with_points(st: sa.Engine, run_ids: Sequence[str]) -> set[str]:
    mp = metric_points
    with st.connect() as conn:
        found = conn.execute(sa.select(mp.c.run_id).distinct().where(mp.c.run_id.in_(run_ids)))
        return {str(r[0]) for r in found}


def _last_good(st: sa.Engine, runs: Sequence[RunRow], run: RunRow, with_points: set[str]
               ) -> RunRow | None:
    """The latest successful run before ``run`` without data anomalies (else any success)."""
    good = [r for r in runs if r.started_at < run.started_at and r.status == "success"]
    if not good:
        return None
    mp = metric_points
    with st.connect() as conn:
        flagged = {str(x[0]) for x in conn.execute(
            sa.select(mp.c.run_id).distinct()
            .where(mp.c.run_id.in_([r.run_id for r in good]), mp.c.anomalous.is_(True),
                   mp.c.metric.not_in(sorted(PERF_METRICS))))}
    clean = [r for r in good if r.run_id not in flagged and r.run_id in with_points]
    return (clean or good)[-1]


def _points(st: sa.Engine, run_ids: Iterable[str]) -> dict[str, dict[tuple[str, str], Any]]:
    mp = metric_points
    out: dict[str, dict[tuple[str, str], Any]] = {}
    with st.connect() as conn:
        rows = conn.execute(sa.select(mp).where(mp.c.run_id.in_(list(run_ids)))
                            .order_by(mp.c.id)).all()
    for p in rows:
        out.setdefault(str(p.run_id), {})[(str(p.model), str(p.metric))] = p
    return out


def _manifest(cfg: Config) -> tuple[Project | None, dict[str, Any]]:
    path = cfg.dbt.target_path / "manifest.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return load_manifest(cfg.dbt.target_path, cfg.layers), raw
    except (OSError, ValueError) as exc:
        log.warning("triage without a dbt manifest: %s", exc)
        return None, {}


def _joins(manifest: Mapping[str, Any], project: Project | None) -> dict[str, list[Join]]:
    """Declared ``meta.joins`` per model name (entries naming unknown nodes are dropped)."""
    out: dict[str, list[Join]] = {}
    for node in manifest.get("nodes", {}).values():
        meta = {**(node.get("meta") or {}), **(node.get("config", {}).get("meta") or {})}
        for j in meta.get("joins") or []:
            if not isinstance(j, Mapping) or not j.get("input") or not j.get("key"):
                continue
            name = str(node.get("name"))
            if project is not None:
                try:
                    project.by_name(str(j["input"]))
                except KeyError:
                    log.warning("meta.joins of %s names unknown input %s", name, j["input"])
                    continue
            out.setdefault(name, []).append(Join(
                input=str(j["input"]), key=str(j["key"]),
                model_key=str(j.get("model_key") or j["key"]),
                unique_per=str(j["unique_per"]) if j.get("unique_per") else None,
                declared=True,
            ))
    return out


def _ledger(cfg: Config) -> list[LedgerRow]:
    if not cfg.ingest.enabled or not _warehouse_available(cfg):
        return []
    b = ledger_tables(sa.MetaData(), cfg.ingest.schema)[0]
    q = sa.select(b.c.batch_id, b.c.feed, b.c.source_file, b.c.status, b.c.load_seq,
                  b.c.publish_seq, b.c.rows_read, b.c.rows_loaded, b.c.reason,
                  b.c.ingested_at, b.c.decided_at, b.c.decision_reason).order_by(b.c.load_seq)
    try:
        with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
            rows = conn.execute(q).mappings().all()
    except sa.exc.DBAPIError:
        return []  # nothing ingested yet
    return [LedgerRow(**dict(r)) for r in rows]


def _within(at: datetime, lo: datetime | None, hi: datetime) -> bool:
    return (lo is None or at > lo) and at <= hi


# -- warehouse introspection ------------------------------------------------------------


def _relation_columns(conn: sa.Connection, project: Project | None) -> dict[str, dict[str, str]]:
    """Real columns (name → upper-case type) of every relation of the project."""
    if project is None:
        return {}
    nodes = [n for n in project.lineage() if n.is_relation]
    if conn.dialect.name == "duckdb":
        ic = sa.table("columns", sa.column("table_catalog"), sa.column("table_schema"),
                      sa.column("table_name"), sa.column("column_name"),
                      sa.column("data_type"), sa.column("ordinal_position"),
                      schema="information_schema")
        rows = conn.execute(
            sa.select(ic.c.table_schema, ic.c.table_name, ic.c.column_name, ic.c.data_type)
            .where(ic.c.table_catalog == sa.func.current_database())
            .order_by(ic.c.table_schema, ic.c.table_name, ic.c.ordinal_position)
        ).all()
        found: dict[tuple[str, str], dict[str, str]] = {}
        for schema, table, col, typ in rows:
            found.setdefault((str(schema), str(table)), {})[str(col)] = str(typ).upper()
        return {n.unique_id: found[(n.schema, n.identifier)] for n in nodes
                if (n.schema, n.identifier) in found}
    insp = sa.inspect(conn)
    out = {}
    for n in nodes:
        if insp.has_table(n.identifier, schema=n.schema):
            out[n.unique_id] = {str(c["name"]): str(c["type"]).upper()
                                for c in insp.get_columns(n.identifier, schema=n.schema)}
    return out


def _table(node: ModelInfo, cols: Iterable[str]) -> sa.TableClause:
    return sa.table(node.identifier, *(sa.column(c) for c in dict.fromkeys(cols)),
                    schema=node.schema)


def _is_numeric(typ: str) -> bool:
    return typ.startswith(_NUMERIC)


def _is_text(typ: str) -> bool:
    return typ.startswith(_TEXT)


def _data_columns(cols: Mapping[str, str]) -> list[str]:
    """Columns that carry data (audit columns start with ``_``)."""
    return [c for c in cols if not c.startswith("_")]


def _rows(conn: sa.Connection, query: sa.Select[Any]) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in r.items()} for r in conn.execute(query).mappings()]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


# -- 1. counts per layer ----------------------------------------------------------------


def layer_counts(ctx: _Ctx) -> list[LayerCount]:
    """Rows, keys and rows-per-input-row of every observed relation, lineage order."""
    if ctx.project is None:
        return []
    run, base = ctx.run, ctx.baseline
    prev_run, prev_base = ctx.before(run), ctx.before(base)
    out = []
    for node in ctx.project.lineage():
        rows = ctx.value(run, node.name, "row_count")
        if rows is None:
            continue
        lc = LayerCount(model=node.name, layer=node.layer, rows=int(rows),
                        rows_before=_int(ctx.value(base, node.name, "row_count")))
        lc.added = _diff(rows, ctx.value(prev_run, node.name, "row_count"))
        lc.added_before = _diff(ctx.value(base, node.name, "row_count"),
                                ctx.value(prev_base, node.name, "row_count"))
        lc.distinct_keys = _int(ctx.value(run, node.name, "distinct_keys"))
        lc.duplicate_keys = _int(ctx.value(run, node.name, "duplicate_keys"))
        lc.duplicate_keys_before = _int(ctx.value(base, node.name, "duplicate_keys"))
        source = _row_source(ctx, node)
        if source is not None:
            lc.input = source.name
            lc.out_per_in = _ratio(rows, ctx.value(run, source.name, "row_count"))
            lc.out_per_in_before = _ratio(ctx.value(base, node.name, "row_count"),
                                          ctx.value(base, source.name, "row_count"))
        lc.flagged = _growth(lc, ctx.value(run, source.name, "row_count") if source else None)
        out.append(lc)
    return out


def _growth(lc: LayerCount, input_rows: float | None) -> str:
    """Why ``lc`` grows out of proportion to its input ("" if it does not)."""
    if lc.input is None:
        return ""  # a source: nothing upstream to be out of proportion with
    dup, dup_before = lc.duplicate_keys, lc.duplicate_keys_before
    if dup is not None and dup > (dup_before or 0):
        return f"duplicate grain keys {dup_before or 0} → {dup}"
    now, before = lc.out_per_in, lc.out_per_in_before
    if now is None or not before or input_rows is None:
        return ""
    extra = (now - before) * input_rows
    if now / before >= GROWTH_RATIO and extra >= 10:
        return (f"rows per {lc.input} row {before:.3f} → {now:.3f} "
                f"(≈{extra:,.0f} rows more than its input explains)")
    return ""


def _row_source(ctx: _Ctx, node: ModelInfo) -> ModelInfo | None:
    """The parent the model's rows flow from: it carries the model's grain columns
    (the largest such parent, else the largest parent)."""
    if ctx.project is None or not node.parents:
        return None
    parents = [p for p in ctx.project.parents(node.unique_id)
               if ctx.value(ctx.run, p.name, "row_count") is not None]
    if not parents:
        return None
    grain = set(node.grain)
    carrying = [p for p in parents if grain and grain <= set(ctx.columns.get(p.unique_id, {}))]

    def size(p: ModelInfo) -> float:
        return ctx.value(ctx.run, p.name, "row_count") or 0.0

    return max(carrying or parents, key=size)


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def _diff(a: float | None, b: float | None) -> int | None:
    return int(a - b) if a is not None and b is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- 2. expansion point -------------------------------------------------------------------


def _expansion(conn: sa.Connection, ctx: _Ctx, counts: Sequence[LayerCount]) -> ExpansionPoint:
    """The first model that multiplies rows; else one that sums more input rows into
    as many output rows; else a declared join whose key repeats."""
    for lc in counts:
        node = ctx.node(lc.model)
        if lc.flagged and node is not None:
            return _explain_growth(conn, ctx, node, lc)
    return _sum_inflation(conn, ctx, counts) or _latent_join(conn, ctx) or ExpansionPoint()


def _growths(ctx: _Ctx, model: str, metric: str) -> tuple[float | None, float | None]:
    """How much ``metric`` grew in this run and in the baseline (vs the run before each)."""
    def grew(run: RunRow | None) -> float | None:
        now, prev = ctx.value(run, model, metric), ctx.value(ctx.before(run), model, metric)
        return now - prev if now is not None and prev is not None else None

    return grew(ctx.run), grew(ctx.baseline)


def _outgrew(now: float | None, before: float | None) -> bool:
    """Grew ≥ GROWTH_RATIO times the baseline's growth (from no growth: grew at all)."""
    if now is None or before is None or now <= 0:
        return False
    return now >= GROWTH_RATIO * before if before > 0 else now >= 1


def _sum_inflation(conn: sa.Connection, ctx: _Ctx, counts: Sequence[LayerCount]
                   ) -> ExpansionPoint | None:
    """A model whose rows grew as before while a sum outgrew, below an input whose rows
    outgrew: the extra input rows were summed into existing rows (duplicated payments
    inflating ``orders.amount``). Among several, the one whose grain the input carries
    (it aggregates that input onto its own rows), then the first in lineage."""
    found: list[tuple[int, int, ModelInfo, ModelInfo, str]] = []
    for i, lc in enumerate(counts):
        node = ctx.node(lc.model)
        if node is None or not node.parents or _outgrew(*_growths(ctx, lc.model, "row_count")):
            continue
        metric = _inflated_sum(ctx, lc.model)
        parent = _grown_parent(ctx, node) if metric else None
        if metric and parent is not None:
            carried = bool(node.grain) and set(node.grain) <= set(
                ctx.columns.get(parent.unique_id, {}))
            found.append((0 if carried else 1, i, node, parent, metric))
    if not found:
        return None
    _, _, node, parent, metric = min(found, key=lambda f: (f[0], f[1]))
    return _inflation_point(conn, ctx, node, parent, metric)


def _inflated_sum(ctx: _Ctx, model: str) -> str | None:
    """The whole-table sum of ``model`` that outgrew its baseline growth most."""
    best: tuple[float, str] | None = None
    for m, metric in ctx.pts(ctx.run):
        if m != model or not metric.startswith("sum:") or metric.count(":") != 1:
            continue
        now, before = _growths(ctx, model, metric)
        if _outgrew(now, before) and now is not None:
            ratio = now / before if before and before > 0 else math.inf
            best = max(best or (ratio, metric), (ratio, metric))
    return best[1] if best else None


def _grown_parent(ctx: _Ctx, node: ModelInfo) -> ModelInfo | None:
    """The parent whose rows outgrew their baseline growth by the most extra rows."""
    grown = []
    for p in ctx.project.parents(node.unique_id) if ctx.project else []:
        now, before = _growths(ctx, p.name, "row_count")
        if _outgrew(now, before) and now is not None:
            grown.append((now - max(before or 0.0, 0.0), p.unique_id, p))
    return max(grown, key=lambda g: (g[0], g[1]))[2] if grown else None


def _inflation_point(conn: sa.Connection, ctx: _Ctx, node: ModelInfo, parent: ModelInfo,
                     metric: str) -> ExpansionPoint:
    rows_now, rows_base = _growths(ctx, node.name, "row_count")
    in_now, in_base = _growths(ctx, parent.name, "row_count")
    sum_now, sum_base = _growths(ctx, node.name, metric)
    ep = ExpansionPoint(
        model=node.name, layer=node.layer, input=parent.name, grew=False, inflated=metric,
        rows=_int(ctx.value(ctx.run, node.name, "row_count")),
        rows_before=_int(ctx.value(ctx.baseline, node.name, "row_count")),
        reason=(f"{parent.name} rows grew {_signed(in_now)} (baseline {_signed(in_base)}) "
                f"while {node.name} rows grew {_signed(rows_now)} (baseline "
                f"{_signed(rows_base)}) and its {metric} grew {_signed(sum_now)} (baseline "
                f"{_signed(sum_base)}): the extra input rows were summed into existing rows"),
    )
    ep.source = _grown_raw(ctx, parent)
    key = next((g for g in node.grain if g in ctx.columns.get(parent.unique_id, {})
                and g in ctx.columns.get(node.unique_id, {})), None)
    if key is not None:
        ep.key = ep.model_key = key
        ep.offending_keys, ep.duplicated_keys = _repeated_input_keys(conn, parent, key)
        counts = _key_counts(conn, node, key, [k.key for k in ep.offending_keys])
        for k in ep.offending_keys:
            k.model_rows = counts.get(k.key, 0)
    return ep


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+,.6g}"


def _grown_raw(ctx: _Ctx, node: ModelInfo) -> str | None:
    """The raw relation (source or seed) upstream of ``node`` whose rows outgrew."""
    if ctx.project is None:
        return None
    for n in [*ctx.project.ancestors(node.unique_id), node]:
        if n.layer == "raw" and _outgrew(*_growths(ctx, n.name, "row_count")):
            return n.name
    return None


def _repeated_input_keys(conn: sa.Connection, node: ModelInfo, key: str
                         ) -> tuple[list[OffendingKey], int]:
    """Values of ``key`` with more than one row in ``node``, most rows first."""
    t = _table(node, [key])
    per = (sa.select(t.c[key].label("k"), sa.func.count().label("n"))
           .where(t.c[key].is_not(None)).group_by(t.c[key])
           .having(sa.func.count() > 1).subquery("per"))
    total = _count(conn, sa.select(sa.func.count()).select_from(per))
    top = conn.execute(sa.select(per).order_by(per.c.n.desc(), per.c.k).limit(TOP_KEYS)).all()
    return [OffendingKey(key=_key_text(r[0]), model_rows=0, input_rows=int(r[1]))
            for r in top], total


def _candidates(ctx: _Ctx, node: ModelInfo, source: ModelInfo | None) -> list[Join]:
    """Declared joins first, then columns shared with parents other than the row source."""
    declared = list(ctx.joins.get(node.name, []))
    mine = ctx.columns.get(node.unique_id, {})
    inferred = []
    for parent in ctx.project.parents(node.unique_id) if ctx.project else []:
        if source is not None and parent.unique_id == source.unique_id:
            continue
        theirs = ctx.columns.get(parent.unique_id, {})
        for col in _data_columns(mine):
            if col in theirs and col not in node.grain:
                inferred.append(Join(parent.name, col, col))
    seen = {(j.input, j.key, j.model_key) for j in declared}
    return declared + [j for j in inferred if (j.input, j.key, j.model_key) not in seen]


def _explain_growth(conn: sa.Connection, ctx: _Ctx, node: ModelInfo, lc: LayerCount
                    ) -> ExpansionPoint:
    ep = ExpansionPoint(model=node.name, layer=node.layer, grew=True, reason=lc.flagged,
                        rows=lc.rows, rows_before=lc.rows_before, out_per_in=lc.out_per_in,
                        out_per_in_before=lc.out_per_in_before, input=lc.input)
    source = ctx.node(lc.input) if lc.input else None
    mine = ctx.columns.get(node.unique_id, {})
    grain = [g for g in node.grain if g in mine]
    if not grain or len(grain) != len(node.grain):
        ep.reason += "; no usable grain to find the multiplied keys"
        return ep
    best: tuple[int, int, Join, list[OffendingKey], int] | None = None
    for join in _candidates(ctx, node, source):
        parent = ctx.node(join.input)
        if parent is None or join.model_key not in mine or join.key not in ctx.columns.get(
                parent.unique_id, {}):
            continue
        keys, total = _multiplied_keys(conn, node, join.model_key, grain)
        if not keys:
            continue
        counts = _key_counts(conn, parent, join.key, [k.key for k in keys])
        for k in keys:
            k.input_rows = counts.get(k.key, 0)
        explained = sum(k.model_rows for k in keys if k.input_rows > 1)
        weight = sum(k.input_rows for k in keys)
        if explained and (best is None or (explained, weight) > (best[0], best[1])):
            best = (explained, weight, join, keys, total)
    if best is None:
        ep.reason += "; no join key of its parents explains the extra rows"
        return ep
    _, _, join, keys, total = best
    ep.key, ep.model_key, ep.input = join.key, join.model_key, join.input
    ep.offending_keys, ep.duplicated_keys = keys, total
    ep.source, ep.batches = _raw_source(ctx, join.input, join.key)
    _sample_keys(conn, ctx, node, join, [k.key for k in keys[:3]])
    return ep


def _multiplied_keys(conn: sa.Connection, node: ModelInfo, key: str, grain: Sequence[str]
                     ) -> tuple[list[OffendingKey], int]:
    """Values of ``key`` whose rows repeat a grain key of ``node``, most excess first."""
    t = _table(node, [key, *grain])
    per_grain = (
        sa.select(t.c[key].label("k"), *(t.c[g] for g in grain), sa.func.count().label("n"))
        .group_by(t.c[key], *(t.c[g] for g in grain))
        .having(sa.func.count() > 1)
        .subquery("dups")
    )
    excess = sa.func.sum(per_grain.c.n - 1).label("excess")
    by_key = sa.select(per_grain.c.k, excess).group_by(per_grain.c.k).subquery("by_key")
    total = _count(conn, sa.select(sa.func.count()).select_from(by_key))
    top = conn.execute(sa.select(by_key).order_by(by_key.c.excess.desc()).limit(TOP_KEYS)).all()
    keys = [OffendingKey(key=_key_text(r[0]), model_rows=int(r[1] or 0), input_rows=0)
            for r in top]
    return keys, total


def _key_counts(conn: sa.Connection, node: ModelInfo, key: str, values: Sequence[str]
                ) -> dict[str, int]:
    t = _table(node, [key])
    col = sa.cast(t.c[key], sa.String)
    rows = conn.execute(sa.select(col, sa.func.count()).where(col.in_(list(values)))
                        .group_by(col)).all()
    return {_key_text(k): int(n) for k, n in rows}


def _count(conn: sa.Connection, query: sa.Select[Any]) -> int:
    value: Any = conn.execute(query).scalar()
    return int(value or 0)


def _key_text(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _latent_join(conn: sa.Connection, ctx: _Ctx) -> ExpansionPoint | None:
    """A declared join whose input now repeats a key within one delivery."""
    if ctx.project is None:
        return None
    new_ids, base_ids = ctx.new_ids(ctx.run), ctx.new_ids(ctx.baseline)
    for node in ctx.project.lineage():
        for join in ctx.joins.get(node.name, []):
            parent = ctx.node(join.input)
            if parent is None:
                continue
            for rel in [parent, *_source_ancestors(ctx, parent, join.key)]:
                keys, total = _repeated_keys(conn, ctx, rel, join, new_ids)
                if not keys:
                    continue
                _, before = _repeated_keys(conn, ctx, rel, join, base_ids)
                if before:
                    continue  # repeated in the baseline too: how this input always looks
                return _latent_point(conn, ctx, node, join, rel, keys, total)
    return None


def _latent_point(conn: sa.Connection, ctx: _Ctx, node: ModelInfo, join: Join, rel: ModelInfo,
                  keys: list[OffendingKey], total: int) -> ExpansionPoint:
    mine = ctx.columns.get(node.unique_id, {})
    if join.model_key in mine:
        counts = _key_counts(conn, node, join.model_key, [k.key for k in keys])
        for k in keys:
            k.model_rows = counts.get(k.key, 0)
    where = f" (in {rel.name}, held back from {join.input})" if rel.name != join.input else ""
    ep = ExpansionPoint(
        model=node.name, layer=node.layer, key=join.key, model_key=join.model_key,
        input=join.input, grew=False, duplicated_keys=total, offending_keys=keys,
        reason=(f"{join.input} repeats {total} {join.key} value(s) within one "
                f"{join.unique_per or 'relation'}{where}; {node.name} joins it on "
                f"{join.model_key}: a one-to-many join (its output did not multiply: which "
                "duplicate wins is arbitrary)"),
        rows=_int(ctx.value(ctx.run, node.name, "row_count")),
        rows_before=_int(ctx.value(ctx.baseline, node.name, "row_count")),
    )
    ep.source, ep.batches = _raw_source(ctx, join.input, join.key)
    _sample_keys(conn, ctx, node, dataclasses.replace(join, input=rel.name),
                 [k.key for k in keys[:3]])
    return ep


def _repeated_keys(conn: sa.Connection, ctx: _Ctx, rel: ModelInfo, join: Join,
                   batch_ids: Sequence[str]) -> tuple[list[OffendingKey], int]:
    """Key values repeated within one ``unique_per`` value among the given batches."""
    cols = ctx.columns.get(rel.unique_id, {})
    if join.key not in cols or BATCH_COLUMN not in cols or not batch_ids:
        return [], 0
    per = join.unique_per if join.unique_per in cols else None
    t = _table(rel, [join.key, BATCH_COLUMN, *([per] if per else [])])
    group = [t.c[join.key], *([t.c[per]] if per else [])]
    dups = (
        sa.select(*group, sa.func.count().label("n"))
        .where(t.c[BATCH_COLUMN].in_(list(batch_ids)), t.c[join.key].is_not(None))
        .group_by(*group).having(sa.func.count() > 1).subquery("dups")
    )
    total = _count(conn, sa.select(sa.func.count()).select_from(dups))
    top = conn.execute(sa.select(dups).order_by(dups.c.n.desc()).limit(TOP_KEYS)).all()
    keys = [OffendingKey(key=_key_text(r[0]), model_rows=0, input_rows=int(r[-1]),
                         per=_key_text(r[1]) if per else None) for r in top]
    return keys, total


def _source_ancestors(ctx: _Ctx, node: ModelInfo, column: str) -> list[ModelInfo]:
    """Raw sources upstream of ``node`` that have ``column`` and batch ids (held rows
    never reach staging, but they are in raw)."""
    if ctx.project is None:
        return []
    return [
        p for p in ctx.project.ancestors(node.unique_id)
        if p.resource_type == "source"
        and column in (cols := ctx.columns.get(p.unique_id, {})) and BATCH_COLUMN in cols
    ]


def _raw_source(ctx: _Ctx, input_name: str, key: str) -> tuple[str | None, list[str]]:
    """The raw source behind an input and the batches this run brought into it."""
    node = ctx.node(input_name)
    if node is None:
        return None, []
    sources = [node] if node.resource_type == "source" else _source_ancestors(ctx, node, key)
    if not sources:
        return None, []
    src = sources[0]
    feed_batches = [b.batch_id for b in ctx.batches_of(ctx.run)
                    if b.feed == src.identifier and b.status != "quarantined"]
    return src.name, feed_batches


def _sample_keys(conn: sa.Connection, ctx: _Ctx, node: ModelInfo, join: Join,
                 keys: Sequence[str]) -> None:
    """Rows of the input and of the model around the offending keys."""
    parent = ctx.node(join.input)
    for rel, col in ((parent, join.key), (node, join.model_key)):
        if rel is None or col not in ctx.columns.get(rel.unique_id, {}) or not keys:
            continue
        t = _table(rel, ctx.columns[rel.unique_id])
        q = (sa.select(t).where(sa.cast(t.c[col], sa.String).in_(list(keys)))
             .order_by(t.c[col]).limit(SAMPLE_ROWS * 2))
        ctx.samples[f"{rel.name} where {col} in offending keys"] = _rows(conn, q)


# -- 3. batches and columns ----------------------------------------------------------------


def _feed_relation(ctx: _Ctx, feed: str) -> ModelInfo | None:
    if ctx.project is None:
        return None
    for n in ctx.project.sources.values():
        if n.schema == ctx.cfg.ingest.schema and n.identifier == feed:
            return n
    return None


def _batch_findings(conn: sa.Connection, ctx: _Ctx) -> list[BatchFinding]:
    """The run's batches; for each loaded one, whether it repeats an earlier batch."""
    out = []
    for b in ctx.batches_of(ctx.run):
        why = b.reason or (b.decision_reason if b.status != "published" else None)
        f = BatchFinding(b.batch_id, b.feed, b.source_file, b.status, b.rows_read, why)
        rel = _feed_relation(ctx, b.feed)
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


def _sample_resend(conn: sa.Connection, ctx: _Ctx, rel: ModelInfo, f: BatchFinding) -> None:
    """A few keys of the resent batch, with their rows in both batches."""
    cols = ctx.columns.get(rel.unique_id, {})
    spec = ctx.cfg.ingest.feeds.get(f.feed)
    key = next((k for k in (spec.key if spec else []) if k in cols), None)
    if key is None or f.repeats is None:
        return
    t = _table(rel, cols)
    keys = sa.select(t.c[key]).where(t.c[BATCH_COLUMN] == f.batch_id).limit(3)
    q = (sa.select(t).where(t.c[key].in_(keys.scalar_subquery()),
                            t.c[BATCH_COLUMN].in_([f.batch_id, f.repeats]))
         .order_by(t.c[key], t.c[BATCH_COLUMN]).limit(SAMPLE_ROWS))
    ctx.samples[f"{rel.name}: rows of {f.batch_id} and of the batch it repeats"] = _rows(conn, q)


def _reference_batch(ctx: _Ctx, b: LedgerRow) -> LedgerRow | None:
    """The latest earlier batch of the same feed that the run did not bring."""
    mine = {x.batch_id for x in ctx.batches_of(ctx.run)}
    earlier = [x for x in ctx.ledger if x.feed == b.feed and x.load_seq < b.load_seq
               and x.batch_id not in mine and x.rows_loaded and x.status != "quarantined"]
    return earlier[-1] if earlier else None


def _repeat_share(conn: sa.Connection, ctx: _Ctx, rel: ModelInfo, b: LedgerRow
                  ) -> tuple[float | None, str | None]:
    """Share of ``b``'s distinct rows that an earlier batch of the feed already had, and
    the earlier batch that has the most of them."""
    earlier = [x.batch_id for x in ctx.ledger if x.feed == b.feed and x.load_seq < b.load_seq
               and x.rows_loaded and x.status != "quarantined"][-7:]
    cols = _data_columns(ctx.columns.get(rel.unique_id, {}))
    if not earlier or not cols:
        return None, None
    t = _table(rel, [*cols, BATCH_COLUMN])

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


def _column_shifts(conn: sa.Connection, ctx: _Ctx) -> list[ColumnShift]:
    """Columns whose null share or scale among the run's new rows jumped vs baseline."""
    new_ids, base_ids = ctx.new_ids(ctx.run), ctx.new_ids(ctx.baseline)
    if ctx.project is None or not new_ids or not base_ids:
        return []
    out: list[ColumnShift] = []
    for node in ctx.project.lineage():
        cols = ctx.columns.get(node.unique_id, {})
        if BATCH_COLUMN not in cols or not _data_columns(cols) or _derived_view(ctx, node):
            continue
        try:
            now = _column_stats(conn, node, cols, new_ids)
            before = _column_stats(conn, node, cols, base_ids)
        except sa.exc.DBAPIError as exc:
            log.warning("column profile of %s failed: %s", node.name, exc.orig)
            conn.rollback()
            continue
        found = _compare_stats(node, now, before)
        for shift in found:
            if not any(x.column == shift.column and x.kind == shift.kind for x in out):
                _sample_shift(conn, ctx, node, shift, new_ids)  # only where it starts
        out += found
    return out


def _sample_shift(conn: sa.Connection, ctx: _Ctx, node: ModelInfo, shift: ColumnShift,
                  ids: Sequence[str]) -> None:
    """New rows showing the shift: null-like values, or the largest values."""
    cols = ctx.columns.get(node.unique_id, {})
    t = _table(node, cols)
    col = t.c[shift.column]
    q = sa.select(t).where(t.c[BATCH_COLUMN].in_(list(ids)))
    if shift.kind == "nulls":
        nullish: sa.ColumnElement[bool] = col.is_(None)
        if _is_text(cols[shift.column]):
            nullish = sa.or_(nullish, sa.func.lower(sa.func.trim(col)).in_(NULL_SPELLINGS))
        q = q.where(nullish)
    elif _is_numeric(cols[shift.column]):
        q = q.order_by(col.desc())
    ctx.samples[f"{node.name}: new rows, {shift.column} ({shift.kind})"] = _rows(
        conn, q.limit(SAMPLE_ROWS))


def _derived_view(ctx: _Ctx, node: ModelInfo) -> bool:
    """A view over other models: profiling it re-runs its joins (staging views, over
    sources only, and materialized tables are cheap to scan)."""
    if node.materialization != "view" or ctx.project is None:
        return False
    return any(p.resource_type != "source" for p in ctx.project.parents(node.unique_id))


def _column_stats(conn: sa.Connection, node: ModelInfo, cols: Mapping[str, str],
                  ids: Sequence[str]) -> dict[str, Any]:
    """Row count; per column the null-like share; per numeric column the mean."""
    data = _data_columns(cols)
    t = _table(node, [*data, BATCH_COLUMN])
    duck = conn.dialect.name == "duckdb"
    prep = conn.dialect.identifier_preparer
    exprs: list[sa.ColumnElement[Any]] = [sa.func.count().label("n")]
    names = ["n"]
    for c in data:
        col, typ = t.c[c], cols[c]
        nullish: sa.ColumnElement[bool] = col.is_(None)
        if _is_text(typ):
            nullish = sa.or_(nullish, sa.func.lower(sa.func.trim(col)).in_(NULL_SPELLINGS))
        exprs.append(sa.func.sum(sa.case((nullish, 1), else_=0)))
        names.append(f"null:{c}")
        num: sa.ColumnElement[Any] | None = None
        if _is_numeric(typ):
            num = sa.cast(col, sa.Float)
        elif _is_text(typ) and duck:  # raw feeds are text; DuckDB can try the cast
            num = sa.literal_column(f"try_cast({prep.quote(c)} AS DOUBLE)")
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


# -- 4. full refresh vs incremental, in isolation --------------------------------------------

_PROD = "triage_prod"  # catalog alias of production, attached read-only to the copy


def _isolation_models(ctx: _Ctx, expansion: ExpansionPoint) -> list[ModelInfo]:
    """Incremental models to rebuild: downstream of a multiplying model, else all."""
    if ctx.project is None:
        return []
    built = _built_models(ctx)
    incr = [n for n in ctx.project.lineage() if n.is_incremental and n.name in built]
    start = ctx.node(expansion.model) if expansion.model and expansion.grew else None
    if start is not None:
        below = _downstream(ctx.project, start.unique_id) | {start.unique_id}
        incr = [n for n in incr if n.unique_id in below] or incr
    return incr[:8]  # bounds the rebuild; the facts and the tables they read fit


def _downstream(project: Project, uid: str) -> set[str]:
    out: set[str] = set()
    todo = [uid]
    while todo:
        for kid in project.children(todo.pop()):
            if kid.unique_id not in out:
                out.add(kid.unique_id)
                todo.append(kid.unique_id)
    return out


def _built_models(ctx: _Ctx) -> set[str]:
    rm = state.run_models
    with ctx.st.connect() as conn:
        rows = conn.execute(sa.select(rm.c.model).where(
            rm.c.run_id == ctx.run.run_id, rm.c.status == "success")).all()
    return {str(r[0]) for r in rows}


def isolated_refresh(cfg: Config, folder: Path, models: Sequence[ModelInfo]) -> Isolation:
    """Copy the warehouse file into ``folder``, ``dbt build --full-refresh`` the models
    there and diff each against production (attached read-only). DuckDB files only."""

    iso = Isolation(models=[m.name for m in models])
    if not models:
        iso.reason = "no incremental model was built in this run"
        return iso
    if cfg.warehouse.url or not cfg.warehouse.is_duckdb:
        iso.reason = "isolated rebuild needs a DuckDB file warehouse (copy it by hand)"
        return iso
    prod = cfg.warehouse.path
    size = prod.stat().st_size if prod.exists() else 0
    if size > cfg.evidence.isolation_max_bytes:
        iso.reason = (f"warehouse file is {size} bytes, over evidence.isolation_max_bytes: "
                      "run the reproduce commands by hand")
        return iso
    started = time.perf_counter()
    iso.prod_checksum_before = file_checksum(prod)
    if folder.exists():
        shutil.rmtree(folder)
    copy = folder / prod.name  # same file name: compiled SQL names the catalog after it
    iso.copy_bytes = copy_file(prod, copy)
    iso.warehouse_copy = str(copy)
    cfg_copy = dataclasses.replace(
        cfg,
        warehouse=dataclasses.replace(cfg.warehouse, path=copy, url=""),
        dbt=dataclasses.replace(cfg.dbt, target_path=folder / "dbt-target",
                                log_path=folder / "dbt-logs"),
    )
    try:
        res = DbtProject(cfg_copy).invoke(
            "build", select=" ".join(m.name for m in models), full_refresh=True)
    except (DbtError, ConfigError) as exc:  # ConfigError: the profile ignores the copy
        iso.reason = f"dbt could not rebuild on the copy: {exc}"
        return iso
    finally:
        apply_dbt_environment(cfg.warehouse)
    iso.failed_tests = [n.name for n in res.failed if n.resource_type == "test"]
    broken = [n.name for n in res.failed if n.resource_type != "test"]
    with warehouse(cfg_copy.warehouse) as wh, wh.connect() as conn:
        _attach_prod(conn, prod)
        try:
            iso.diffs = [_diff_model(conn, m) for m in models if m.name not in broken]
        finally:
            _detach_prod(conn)
    iso.ran = True
    iso.seconds = time.perf_counter() - started
    iso.prod_checksum_after = file_checksum(prod)
    if broken:
        iso.reason = f"full refresh failed for {', '.join(broken)}"
    return iso


def _isolate(ctx: _Ctx, models: Sequence[ModelInfo]) -> Isolation:
    folder = ctx.evidence_dir / "isolation"
    try:
        iso = isolated_refresh(ctx.cfg, folder, models)
    except (OSError, sa.exc.DBAPIError) as exc:
        log.warning("isolated full refresh failed: %s", exc)
        return Isolation(models=[m.name for m in models], reason=f"failed: {exc}")
    if iso.ran:
        _diff_samples(ctx, iso, folder)
        # The copy is as large as the warehouse; the diff and samples are what we keep.
        shutil.rmtree(folder, ignore_errors=True)
        iso.reason = iso.reason or "copy deleted after the diff"
    return iso


def file_checksum(path: Path, limit: int = 1 << 30) -> str:
    """sha256 of a file (empty for files over ``limit`` bytes: too slow to hash here)."""
    import hashlib

    if not path.exists() or path.stat().st_size > limit:
        return ""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unique_key(m: ModelInfo, cols: Sequence[str]) -> list[str]:
    return [k for k in m.grain if k in cols] if m.grain else []


def _diff_model(conn: sa.Connection, m: ModelInfo) -> ModelDiff:
    """Production against the refreshed copy, by unique key (DuckDB SQL)."""
    fresh = f"{_q(m.schema)}.{_q(m.identifier)}"
    prod = f"{_PROD}.{fresh}"
    prod_cols = _cols_of(conn, _PROD, m)
    cols = [c for c in _cols_of(conn, None, m) if c in prod_cols]
    key = _unique_key(m, cols)
    d = ModelDiff(model=m.name, key=key)
    if not key:
        d.verdict, d.explanation = "no key", "the model has no grain/unique key to diff on"
        return d
    k = ", ".join(_q(c) for c in key)
    sel = ", ".join(_q(c) for c in cols)

    def one(sql: str) -> int:
        return int(conn.exec_driver_sql(sql).scalar() or 0)

    d.prod_rows = one(f"SELECT count(*) FROM {prod}")
    d.refresh_rows = one(f"SELECT count(*) FROM {fresh}")
    d.prod_duplicate_keys = d.prod_rows - one(
        f"SELECT count(*) FROM (SELECT DISTINCT {k} FROM {prod})")
    d.refresh_duplicate_keys = d.refresh_rows - one(
        f"SELECT count(*) FROM (SELECT DISTINCT {k} FROM {fresh})")
    d.only_in_prod = one(
        f"SELECT count(*) FROM (SELECT {k} FROM {prod} EXCEPT SELECT {k} FROM {fresh})")
    d.only_in_refresh = one(
        f"SELECT count(*) FROM (SELECT {k} FROM {fresh} EXCEPT SELECT {k} FROM {prod})")
    d.changed = one(
        f"SELECT count(*) FROM (SELECT DISTINCT {k} FROM (SELECT {sel} FROM {prod} EXCEPT "
        f"SELECT {sel} FROM {fresh}) WHERE ({k}) IN (SELECT ({k}) FROM {fresh}))")
    d.verdict, d.explanation = _verdict(d)
    return d


def _verdict(d: ModelDiff) -> tuple[str, str]:
    if d.prod_duplicate_keys > d.refresh_duplicate_keys:
        return "unique key", (
            f"production holds {d.prod_duplicate_keys} duplicate {'/'.join(d.key)} rows a full "
            "refresh does not: the merge's unique_key does not match the grain")
    if d.only_in_refresh or d.changed:
        return "incremental filter", (
            f"the incremental run missed {d.only_in_refresh} key(s) and kept {d.changed} "
            "stale version(s) that a full refresh picks up: the is_incremental() filter "
            "(watermark/lookback) drops source rows")
    if d.only_in_prod:
        return "retained keys", (
            f"production keeps {d.only_in_prod} key(s) the source no longer has (retracted "
            "or deleted rows): merges never delete; roll back or --full-refresh")
    return "equal", "incremental result equals a full refresh: the merge logic is not at fault"


def _cols_of(conn: sa.Connection, catalog: str | None, m: ModelInfo) -> list[str]:
    cat = f"'{catalog}'" if catalog else "current_database()"
    rows = conn.exec_driver_sql(
        "SELECT column_name FROM information_schema.columns WHERE table_catalog = "
        f"{cat} AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        (m.schema, m.identifier)).all()
    return [str(r[0]) for r in rows]


def _diff_samples(ctx: _Ctx, iso: Isolation, folder: Path) -> None:
    """Rows of a few differing keys from both sides (the copy is still there)."""
    interesting = [d for d in iso.diffs if d.verdict not in ("equal", "no key")]
    if not interesting or ctx.project is None:
        return
    with warehouse(dataclasses.replace(ctx.cfg.warehouse, path=folder / ctx.cfg.warehouse.path.name,
                                       url=""), read_only=True) as wh, wh.connect() as conn:
        _attach_prod(conn, ctx.cfg.warehouse.path)
        try:
            _sample_diffs(conn, ctx, interesting)
        except sa.exc.DBAPIError as exc:
            log.warning("diff samples failed: %s", exc.orig)
        finally:
            _detach_prod(conn)


def _sample_diffs(conn: sa.Connection, ctx: _Ctx, interesting: Sequence[ModelDiff]) -> None:
    for d in interesting:
        m = ctx.node(d.model)
        if m is None:
            continue
        fresh = f"{_q(m.schema)}.{_q(m.identifier)}"
        k = ", ".join(_q(c) for c in d.key)
        keys = (f"SELECT {k} FROM (SELECT * FROM {_PROD}.{fresh} EXCEPT SELECT * FROM {fresh}) "
                f"UNION SELECT {k} FROM (SELECT {k} FROM {fresh} EXCEPT "
                f"SELECT {k} FROM {_PROD}.{fresh}) LIMIT 5")
        for side, rel in (("production", f"{_PROD}.{fresh}"), ("full refresh", fresh)):
            res = conn.exec_driver_sql(
                f"SELECT * FROM {rel} WHERE ({k}) IN ({keys}) ORDER BY {k} LIMIT 20")
            names = list(res.keys())
            ctx.samples[f"{d.model} ({side}) at differing keys"] = [
                {n: _jsonable(v) for n, v in zip(names, r, strict=True)} for r in res.all()]


def _attach_prod(conn: sa.Connection, prod: Path) -> None:
    conn.exec_driver_sql(f"ATTACH {_lit(prod)} AS {_PROD} (READ_ONLY)")
    conn.commit()  # an ATTACH rolled back with a failed query would vanish


def _detach_prod(conn: sa.Connection) -> None:
    conn.rollback()
    conn.exec_driver_sql(f"DETACH {_PROD}")
    conn.commit()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


# -- 5. classification --------------------------------------------------------------------


def classify(
    ctx: _Ctx, counts: Sequence[LayerCount], batches: Sequence[BatchFinding],
    shifts: Sequence[ColumnShift], expansion: ExpansionPoint, isolation: Isolation,
) -> list[Finding]:
    """Every class the evidence supports, most specific first (the first is the cause).

    1. schema_drift: a file quarantined whole, a model failing on a missing/retyped
       column, a contract failing on the column set, or a column that turns NULL in a
       model while its raw values are present (no longer parses).
    2. duplicate_batch: a batch ≥90% made of rows an earlier batch of the feed already
       had, where the feed's previous batch was <50% repeats.
    3. key_explosion: an expansion point with a join key and input (one that did not
       multiply rows yet ranks after 6).
    4. incremental_predicate: the incremental table differs from its full refresh
       (missed keys, stale versions, duplicate keys).
    5. null_storm: a column's null share among the new rows rose by ≥0.2 (and ≥2×).
    6. logic_regression: a numeric column's mean among the new rows moved ≥5×, a
       behaviour suite failed, or an aggregate drifted while row counts did not.
    7. volume_surge: a feed added ≥2× the rows its history expects for that weekday
       (seasonal expectation of its daily growth; the last good run while history is
       short), and its drift z is past the threshold or unscored.

    The gate's own feed-day verdicts come right after schema_drift: a day held for its
    volume is a ``volume_surge`` or a ``partial_delivery`` against the same seasonal
    expectation, a same-cycle repeat a ``duplicate_batch``.

    Without any of these, the run's failed expectations decide (by expectation type,
    then check name), e.g. a held batch whose rows never reached a model.
    """
    # A join that did multiply rows outranks everything after it; a latent one (a key
    # that became non-unique but multiplied nothing yet) ranks after the data findings.
    exploded = _key_explosion(expansion)
    grew = exploded if expansion.grew else None
    latent = None if expansion.grew else exploded
    checks = (
        _schema_drift(ctx, batches, shifts),
        *_gate_volume(ctx),
        _duplicate_batch(batches),
        grew,
        _incremental(isolation),
        _null_storm(shifts),
        _logic_regression(ctx, shifts),
        latent,
        _volume_surge(ctx, counts),
    )
    found = [f for f in checks if f is not None]
    return found or _from_validation(ctx)


# Failed expectation → class, when the data itself showed nothing (e.g. a held batch
# whose rows never reached a model). Expectation types first, then check-name words.
_EXPECTATION_CLASSES = {
    "expect_table_columns_to_match_set": "schema_drift",
    "expect_table_columns_to_match_ordered_list": "schema_drift",
    "expect_column_to_exist": "schema_drift",
    "expect_column_values_to_be_of_type": "schema_drift",
    "expect_column_values_to_be_in_type_list": "schema_drift",
    "expect_column_values_to_not_be_null": "null_storm",
    "expect_table_row_count_to_be_between": "volume_surge",
    "expect_column_values_to_be_unique": "key_explosion",
    "expect_compound_columns_to_be_unique": "key_explosion",
    "expect_column_proportion_of_unique_values_to_be_between": "key_explosion",
}
_CHECK_WORDS = (("plausible", "logic_regression"),
                ("numeric", "schema_drift"), ("parse", "schema_drift"), ("type", "schema_drift"),
                ("null", "null_storm"), ("row_count", "volume_surge"),
                ("unique", "key_explosion"), ("one_", "key_explosion"))


def _from_validation(ctx: _Ctx) -> list[Finding]:
    out: dict[str, Finding] = {}
    for v in _validation_failures(ctx):
        name = str(v.get("check_name") or "").lower()
        cls = "logic_regression" if v.get("kind") == "behaviour" else (
            _EXPECTATION_CLASSES.get(str(v["expectation"]))
            or next((c for w, c in _CHECK_WORDS if w in name), None))
        if cls is None:
            continue
        line = (f"{v['suite']}: {v.get('check_name') or v['expectation']} failed on "
                f"{v['target']}" + (f" batch {v['batch_id']}" if v.get("batch_id") else ""))
        out.setdefault(cls, Finding(cls, f"validation: {line}")).evidence.append(line)
    return list(out.values())


def _schema_drift(ctx: _Ctx, batches: Sequence[BatchFinding], shifts: Sequence[ColumnShift]
                  ) -> Finding | None:
    ev = [f"{b.batch_id} ({b.feed}, {Path(b.source_file).name}) quarantined whole: {b.reason}"
          for b in batches if b.status == "quarantined"]
    ev += [f"model {m['model']} failed: {m['message'][:300]}" for m in _failed_models(ctx)
           if _SCHEMA_ERRORS.search(m["message"] or "")]
    ev += [f"{v['suite']}: {v['expectation']} failed on {v['target']}"
           for v in _validation_failures(ctx)
           if v["expectation"] in ("expect_table_columns_to_match_set",
                                   "expect_table_columns_to_match_ordered_list",
                                   "expect_column_to_exist", "expect_column_values_to_be_of_type")]
    for s in shifts:
        if s.kind == "nulls" and _raw_column_present(ctx, s, shifts):
            ev.append(f"{s.relation}.{s.column} NULL in {s.now:.0%} of new rows (was "
                      f"{s.before:.0%}) while the raw values are present: they no longer parse")
    if not ev:
        return None
    return Finding("schema_drift", "input no longer matches the schema the pipeline expects: "
                   + ev[0], ev)


def _raw_column_present(ctx: _Ctx, s: ColumnShift, shifts: Sequence[ColumnShift]) -> bool:
    node = ctx.node(s.relation)
    if node is None or node.resource_type == "source":
        return False
    raws = _source_ancestors(ctx, node, s.column)
    upstream_nulls = {(x.relation, x.column) for x in shifts if x.kind == "nulls"}
    return bool(raws) and all((r.name, s.column) not in upstream_nulls for r in raws)


def _duplicate_batch(batches: Sequence[BatchFinding]) -> Finding | None:
    dup = [b for b in batches if b.resend]
    if not dup:
        return None
    ev = [f"{b.batch_id} ({Path(b.source_file).name}, {b.rows} rows): {b.repeat_share:.0%} of "
          f"its rows repeat batch {b.repeats} (the feed's previous batch: "
          f"{b.repeat_share_before:.0%})" for b in dup]
    return Finding("duplicate_batch", f"a re-delivered batch: {ev[0]}", ev)


def _key_explosion(ep: ExpansionPoint) -> Finding | None:
    if not ep.model or not (ep.grew or (ep.key and ep.input)):
        return None
    what = ("multiplies rows" if ep.grew else
            f"sums more input rows into as many rows ({ep.inflated})" if ep.inflated else
            "joins a now non-unique key")
    ev = [f"{ep.model} {what}: {ep.reason}"]
    if not ep.key:
        return Finding("key_explosion", f"{ep.model} {what} (input {ep.input}; no join key "
                       "of its parents explains it)", ev)
    top = ", ".join(f"{k.key} ({k.input_rows} input rows)" for k in ep.offending_keys[:3])
    ev.append(f"join key {ep.input}.{ep.key} = {ep.model}.{ep.model_key}; top keys: {top}")
    if ep.source:
        ev.append(f"the duplicated keys come from {ep.source} batch(es) {', '.join(ep.batches)}")
    return Finding("key_explosion", f"{ep.model} {what} on {ep.key} from {ep.input}", ev)


def _incremental(iso: Isolation) -> Finding | None:
    bad = [d for d in iso.diffs if d.verdict in ("incremental filter", "unique key")]
    if not bad:
        return None
    ev = [f"{d.model}: {d.explanation} (production {d.prod_rows} rows, full refresh "
          f"{d.refresh_rows})" for d in bad]
    return Finding("incremental_predicate",
                   f"{bad[0].model}: the {bad[0].verdict} is at fault", ev)


def _null_storm(shifts: Sequence[ColumnShift]) -> Finding | None:
    nulls = [s for s in shifts if s.kind == "nulls"]
    if not nulls:
        return None
    ev = [f"{s.relation}.{s.column}: NULL in {s.now:.0%} of {s.rows_now} new rows (last good "
          f"run: {s.before:.0%} of {s.rows_before})" for s in nulls]
    return Finding("null_storm", ev[0], ev)


def _logic_regression(ctx: _Ctx, shifts: Sequence[ColumnShift]) -> Finding | None:
    ev = [f"{s.relation}.{s.column}: mean {s.before:,.2f} → {s.now:,.2f} among new rows "
          f"({s.now / s.before:.1f}×)" for s in shifts if s.kind == "scale"]
    ev += [f"behaviour check {v['suite']}: {v['expectation']} failed on {v['target']}"
           for v in _validation_failures(ctx) if v["kind"] == "behaviour"]
    volume = {m for (m, metric), p in ctx.pts(ctx.run).items()
              if metric in ("row_count", "distinct_keys") and p.anomalous}
    ev += [f"{m}.{metric} drifted (z={p.z:+.1f}) while its row count did not"
           for (m, metric), p in ctx.pts(ctx.run).items()
           if ":" in metric and not metric.startswith("null_rate:") and p.anomalous
           and p.z is not None and m not in volume]
    if not ev:
        return None
    return Finding("logic_regression", "values changed meaning with normal volume: " + ev[0], ev)


_GATE_CLASSES = {CHECK_SURGE: "volume_surge", CHECK_DROP: "partial_delivery",
                 CHECK_RESEND: "duplicate_batch"}


def _gate_volume(ctx: _Ctx) -> list[Finding]:
    """The gate's feed-day verdicts of this run (suites ``volume_<feed>``): holds, and
    warnings (a day inside the band but far from its expectation, merged)."""
    out: dict[str, Finding] = {}
    for v in _validation_failures(ctx) + _volume_warnings(ctx):
        cls = _GATE_CLASSES.get(str(v.get("check_name") or ""))
        if cls is None:
            continue
        obs = v.get("observed_value")
        if isinstance(obs, dict) and obs.get("resend_of"):
            line = (f"batch {v['batch_id']} repeats batch {obs['resend_of']} in the same "
                    "cycle: held by the gate")
        elif isinstance(obs, dict) and obs.get("reason"):
            fate = "held by the gate" if obs.get("status") == "hold" else "a warning, merged"
            rel = _feed_relation(ctx, str(obs.get("feed") or ""))
            where = f"{rel.name}: " if rel is not None else ""
            line = f"{where}{obs['reason']}: batch {v['batch_id']} {fate}"
        else:
            line = f"{v['suite']}: {v.get('check_name')} failed on batch {v['batch_id']}"
        out.setdefault(cls, Finding(cls, line)).evidence.append(line)
    return list(out.values())


def _volume_surge(ctx: _Ctx, counts: Sequence[LayerCount]) -> Finding | None:
    ev = []
    threshold = ctx.cfg.drift.threshold
    for lc in counts:
        if lc.layer != "raw" or not lc.added:
            continue
        p = ctx.pts(ctx.run).get((lc.model, "row_count"))
        z = p.z if p is not None else None
        expected, basis = _expected_growth(ctx, lc.model, p.observed_at if p else None)
        if expected is None and lc.added_before and lc.added_before > 0:
            expected, basis = float(lc.added_before), "last good run"
        if not expected or expected <= 0:
            continue
        ratio = lc.added / expected
        if ratio >= SURGE_RATIO and (z is None or abs(z) >= threshold):
            ztext = f", z={z:+.1f}" if z is not None else ""
            ev.append(f"{lc.model} added {lc.added:,} rows (expected {expected:,.0f}, "
                      f"{basis}; {ratio:.1f}×{ztext}); " + _surge_fate(ctx, lc.model))
    if not ev:
        return None
    return Finding("volume_surge", ev[0], ev)


def _expected_growth(ctx: _Ctx, model: str, at: datetime | None
                     ) -> tuple[float | None, str]:
    """The seasonal expectation of a relation's daily growth before ``at`` (days with
    growth, not flagged), or None with fewer than a week of them."""
    if at is None:
        return None, ""
    hist = [(d, v, a) for d, v, a in _history(ctx, model, "row_count", at) if d < at]
    growth = [(b[0].date(), b[1] - a[1]) for a, b in itertools.pairwise(hist)
              if not b[2] and b[1] - a[1] > 0]
    if len(growth) < 7:
        return None, ""
    exp = seasonal.expect(growth, at.date())
    return (exp.value, f"{exp.basis}, {exp.n} days") if exp else (None, "")


def _surge_fate(ctx: _Ctx, source: str) -> str:
    node = ctx.node(source)
    mine = [b for b in ctx.batches_of(ctx.run) if node is not None and b.feed == node.identifier]
    held = [b.batch_id for b in mine if b.status == "held"]
    if held:
        return f"held by the contract gate ({', '.join(held)}): nothing reached the facts"
    return "published; no model grew out of proportion to it"


def _undetermined(ctx: _Ctx) -> Finding:
    why = ctx.run.reason or "no evidence of a known failure class"
    return Finding(UNDETERMINED, f"no class fits the evidence ({why})", [why])


def _failed_models(ctx: _Ctx) -> list[dict[str, Any]]:
    rm = state.run_models
    with ctx.st.connect() as conn:
        rows = conn.execute(sa.select(rm.c.model, rm.c.status, rm.c.message).where(
            rm.c.run_id == ctx.run.run_id,
            rm.c.status.in_(("error", "fail", "runtime error")))).mappings().all()
    return [dict(r) for r in rows]


def _validation_failures(ctx: _Ctx) -> list[dict[str, Any]]:
    """Failed expectations of the run (state table ``validation_results``), if any."""
    names = ("suite", "kind", "target", "batch_id", "expectation", "check_name", "column",
             "success", "observed_value", "unexpected_count", "unexpected_values")
    vr = sa.table("validation_results", sa.column("run_id"), *(sa.column(n) for n in names))
    q = sa.select(*(vr.c[n] for n in names)).where(vr.c.run_id == ctx.run.run_id,
                                                   vr.c.success.is_(False))
    try:
        with ctx.st.connect() as conn:
            rows = conn.execute(q).mappings().all()
    except sa.exc.DBAPIError:
        return []  # validation never ran here
    return [{k: _decode(v) for k, v in r.items()} for r in rows]


def _volume_warnings(ctx: _Ctx) -> list[dict[str, Any]]:
    """Passed feed-day checks of the run whose verdict was a warning."""
    names = ("suite", "batch_id", "check_name", "observed_value")
    vr = sa.table("validation_results", sa.column("run_id"), sa.column("success"),
                  *(sa.column(n) for n in names))
    q = sa.select(*(vr.c[n] for n in names)).where(
        vr.c.run_id == ctx.run.run_id, vr.c.success.is_(True),
        vr.c.suite.like(f"{VOLUME_SUITE_PREFIX}%"))
    try:
        with ctx.st.connect() as conn:
            rows = [{k: _decode(v) for k, v in r.items()} for r in conn.execute(q).mappings()]
    except sa.exc.DBAPIError:
        return []
    return [r for r in rows if isinstance(r["observed_value"], dict)
            and r["observed_value"].get("status") == "warning"]


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return _jsonable(value)


# -- 6. evidence: suspect, profile, slow models, alerts, timeline ---------------------------


def _suspect(ctx: _Ctx, root: Finding, ep: ExpansionPoint, iso: Isolation) -> ModelInfo | None:
    """The model to profile: the expansion point, a diverging fact, else the slowest."""
    if ep.model and root.cls == "key_explosion":
        return ctx.node(ep.model)
    for d in iso.diffs:
        if d.verdict != "equal":
            return ctx.node(d.model)
    slow = _longest_models(ctx)
    return ctx.node(slow[0]["model"]) if slow else None


def _longest_models(ctx: _Ctx, n: int = 5) -> list[dict[str, Any]]:
    rm = state.run_models
    ids = [ctx.run.run_id] + ([ctx.baseline.run_id] if ctx.baseline else [])
    with ctx.st.connect() as conn:
        rows = conn.execute(sa.select(rm.c.run_id, rm.c.model, rm.c.layer, rm.c.duration_s,
                                      rm.c.rows_affected, rm.c.status)
                            .where(rm.c.run_id.in_(ids), rm.c.resource_type == "model")).all()
    before = {r.model: r.duration_s for r in rows if r.run_id != ctx.run.run_id}
    now = sorted((r for r in rows if r.run_id == ctx.run.run_id),
                 key=lambda r: r.duration_s, reverse=True)
    return [{"model": r.model, "layer": r.layer, "duration_s": round(r.duration_s, 3),
             "duration_s_before": round(before[r.model], 3) if r.model in before else None,
             "rows_affected": r.rows_affected, "status": r.status} for r in now[:n]]


def _compiled_sql(ctx: _Ctx, node: ModelInfo) -> str | None:
    raw = ctx.manifest.get("nodes", {}).get(node.unique_id, {})
    path = raw.get("compiled_path")
    candidates = [Path(path)] if path else []
    candidates += sorted((ctx.cfg.dbt.target_path / "compiled").rglob(f"{node.name}.sql"))
    for p in candidates:
        if p.is_file():
            return p.read_text(encoding="utf-8")
    code = raw.get("compiled_code")
    return str(code) if code else None


def _profile(ctx: _Ctx, node: ModelInfo) -> dict[str, Any]:
    """DuckDB's JSON profile of the model's compiled SQL (a SELECT) on production."""
    sql = _compiled_sql(ctx, node)
    if not sql:
        return {"model": node.name, "note": "no compiled SQL in the dbt target"}
    if ctx.cfg.warehouse.url or not ctx.cfg.warehouse.is_duckdb:
        return {"model": node.name, "note": "query profiles are collected on DuckDB only"}
    out = ctx.evidence_dir / f"profile_{_slug(node.name)}.json"
    (ctx.evidence_dir / f"compiled_{_slug(node.name)}.sql").write_text(sql, encoding="utf-8")
    started = time.perf_counter()
    try:
        with warehouse(ctx.cfg.warehouse) as wh, wh.connect() as conn:  # SELECT only
            raw = conn.connection.dbapi_connection
            timer = threading.Timer(PROFILE_TIMEOUT_S, raw.interrupt)  # type: ignore[union-attr]
            conn.exec_driver_sql("PRAGMA enable_profiling = 'json'")
            conn.exec_driver_sql(f"PRAGMA profiling_output = {_lit(out)}")
            timer.start()
            try:
                conn.exec_driver_sql(f"SELECT count(*) FROM ({sql.strip().rstrip(';')}) AS q").all()
            finally:
                timer.cancel()
                conn.exec_driver_sql("PRAGMA disable_profiling")
    except sa.exc.DBAPIError as exc:
        return {"model": node.name, "note": f"profiling failed: {exc.orig}"}
    if not out.is_file():  # DuckDB wrote no profile (e.g. the query was cut short)
        return {"model": node.name, "note": f"DuckDB wrote no query profile ({out.name})"}
    summary = summarize_profile(json.loads(out.read_text(encoding="utf-8")))
    summary.update(model=node.name, file=out.name, seconds=round(time.perf_counter() - started, 3))
    return summary


def summarize_profile(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Slowest operators, table scans (rows, row groups) and join fan-out of a profile."""
    ops: list[dict[str, Any]] = []

    def walk(node: Mapping[str, Any]) -> None:
        kids = node.get("children") or []
        info = node.get("extra_info") or {}
        rows_in = max((int(k.get("operator_cardinality", k.get("intermediate_rows", 0)) or 0)
                       for k in kids), default=0)
        rows = int(node.get("operator_cardinality", node.get("intermediate_rows", 0)) or 0)
        ops.append({
            "operator": str(node.get("operator_name") or node.get("name") or node.get("type")),
            "seconds": float(node.get("operator_timing", node.get("timing", 0.0)) or 0.0),
            "rows": rows, "rows_in": rows_in,
            "table": info.get("Table"), "join": info.get("Conditions"),
            "rows_scanned": node.get("operator_rows_scanned", node.get("rows_scanned")),
            "row_groups": (f"{node['row_groups_scanned']}/{node['total_row_groups_to_scan']}"
                           if "row_groups_scanned" in node else None),
        })
        for k in kids:
            walk(k)

    tops = doc.get("children") or doc.get("operator") or []
    for top in tops if isinstance(tops, list) else [tops]:
        walk(top)
    scans = [o for o in ops if o["table"]]
    joins = [dict(o, fan_out=round(o["rows"] / o["rows_in"], 2) if o["rows_in"] else None)
             for o in ops if o["join"]]
    return {
        "total_seconds": float(doc.get("latency", doc.get("query", {}).get("cpu_time", 0.0))
                               or 0.0),
        "slowest": sorted(ops, key=lambda o: o["seconds"], reverse=True)[:8],
        "scans": sorted(scans, key=lambda o: int(o["rows_scanned"] or 0), reverse=True)[:8],
        "joins": sorted(joins, key=lambda o: o["fan_out"] or 0, reverse=True)[:8],
    }


def _alerts(ctx: _Ctx) -> list[dict[str, Any]]:
    """Alerts opened or refreshed by this run, and the notifications queued for it."""
    lo, hi = ctx.run.started_at, _next_start(ctx)
    ao, ob = alerts_open, alert_outbox
    with ctx.st.connect() as conn:
        opened = conn.execute(sa.select(ao).where(sa.or_(
            ao.c.run_id == ctx.run.run_id,
            sa.and_(ao.c.started_at >= lo, ao.c.started_at < hi)))).mappings().all()
        sent = conn.execute(sa.select(ob.c.dedup_key, ob.c.sink, ob.c.event, ob.c.severity,
                                      ob.c.status, ob.c.created_at, ob.c.sent_at)
                            .where(ob.c.created_at >= lo, ob.c.created_at < hi)).mappings().all()
    out = [{"kind": "open", **{k: _jsonable(v) for k, v in r.items()
                               if k in ("rule", "severity", "summary", "evidence", "started_at",
                                        "dedup_key")}} for r in opened]
    out += [{"kind": "notification", **{k: _jsonable(v) for k, v in r.items()}} for r in sent]
    return out


def _next_start(ctx: _Ctx) -> datetime:
    st = ctx.st
    r = state.runs
    with st.connect() as conn:
        nxt = conn.execute(sa.select(sa.func.min(r.c.started_at))
                           .where(r.c.started_at > ctx.run.started_at)).scalar()
    return nxt or state.utcnow()


def _timeline(ctx: _Ctx, t: Triage) -> list[dict[str, Any]]:
    run = ctx.run
    items: list[dict[str, Any]] = [{"at": run.started_at, "phase": "start",
                                    "what": f"run {run.run_id} started ({run.trigger})"}]
    for b in ctx.batches_of(run):
        what = f"{b.batch_id} {Path(b.source_file).name}: {b.rows_read} rows, {b.status}"
        items.append({"at": b.ingested_at, "phase": "ingest",
                      "what": what + (f" ({b.reason})" if b.reason else "")})
    if t.longest_models:
        total = sum(m["duration_s"] for m in t.longest_models)
        slow = t.longest_models[0]
        items.append({"at": None, "phase": "build",
                      "what": f"dbt: slowest {slow['model']} {slow['duration_s']} s "
                              f"(top {len(t.longest_models)}: {total:.1f} s)"})
    fired = sorted({m for (m, metric), p in ctx.pts(run).items()
                    if p.anomalous and metric not in PERF_METRICS})
    if fired:
        items.append({"at": None, "phase": "observe",
                      "what": f"data drift on {', '.join(fired[:8])}"})
    items += [{"at": a.get("started_at") or a.get("created_at"), "phase": "alert",
               "what": (f"{a['severity']} {a.get('rule') or a.get('dedup_key')}: "
                        f"{a.get('summary') or a.get('event')} ({a.get('sink') or 'open'})")}
              for a in t.alerts]
    items.append({"at": run.ended_at, "phase": "end",
                  "what": f"run ended {run.status}" + (f": {run.reason}" if run.reason else "")})
    ev = state.events
    with ctx.st.connect() as conn:
        later = conn.execute(sa.select(ev).where(ev.c.at >= run.started_at,
                                                 ev.c.at < _next_start(ctx))).mappings().all()
    items += [{"at": e["at"], "phase": "event",
               "what": f"{e['kind']} {e['subject']} by {e['actor']}: {e['reason']}"}
              for e in later]
    return [{**i, "at": _jsonable(i["at"])} for i in items]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


def _run_doc(run: RunRow) -> dict[str, Any]:
    return {k: _jsonable(v) if not isinstance(v, dict) else v for k, v in asdict(run).items()}


# -- 7. plots, commands, files --------------------------------------------------------------


def _plots(ctx: _Ctx, counts: Sequence[LayerCount], ep: ExpansionPoint,
           findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """Drift plots of the affected metrics: history from ``metric_points``."""

    pts = ctx.pts(ctx.run)
    wanted = [k for k, p in sorted(pts.items(), key=lambda kv: -abs(kv[1].z or 0.0))
              if p.anomalous and k[1] not in PERF_METRICS]
    if ep.model:
        wanted += [(ep.model, "row_count"), (ep.model, "duplicate_keys")]
    if any(f.cls == "volume_surge" for f in findings):
        wanted += [(lc.model, "row_count") for lc in counts if lc.layer == "raw"]
    out = []
    for model, metric in list(dict.fromkeys(k for k in wanted if k in pts))[:MAX_PLOTS]:
        series = _history(ctx, model, metric, pts[(model, metric)].observed_at)
        delta = ctx.cfg.drift.is_delta(metric)
        if delta:
            series = [(b[0], b[1] - a[1], b[2]) for a, b in itertools.pairwise(series)]
        if len(series) < 1:
            continue
        path = ctx.evidence_dir / f"drift_{_slug(model)}_{_slug(metric.replace(':', '-'))}.png"
        title = f"{model} · {metric}" + (" (change per run)" if delta else "")
        try:
            report.plot_series(path, title, series, pts[(model, metric)].observed_at)
        except (OSError, ValueError) as exc:
            log.warning("plot %s failed: %s", path.name, exc)
            continue
        out.append({"model": model, "metric": metric, "file": path.name, "points": len(series),
                    "z": _jsonable(pts[(model, metric)].z)})
    return out


def _history(ctx: _Ctx, model: str, metric: str, until: datetime
             ) -> list[tuple[datetime, float, bool]]:
    mp = metric_points
    latest = (sa.select(sa.func.max(mp.c.id)).where(
        mp.c.model == model, mp.c.metric == metric, mp.c.observed_at <= until)
        .group_by(mp.c.observed_at))
    with ctx.st.connect() as conn:
        rows = conn.execute(sa.select(mp.c.observed_at, mp.c.value, mp.c.anomalous)
                            .where(mp.c.id.in_(latest)).order_by(mp.c.observed_at.desc())
                            .limit(60)).all()
    return [(r[0], float(r[1]), bool(r[2])) for r in reversed(rows)]


def _culprit_batches(ctx: _Ctx, t: Triage) -> list[str]:
    """Published batches the root cause points at (candidates for a retraction)."""
    root = t.root_cause
    ids: list[str] = []
    if root == "duplicate_batch":
        ids = [b.batch_id for b in t.batches if b.resend]
    elif root == "key_explosion":
        ids = list(t.expansion_point.batches)
    elif root in ("null_storm", "logic_regression"):
        kind = "nulls" if root == "null_storm" else "scale"
        feeds = {ctx.node(s.relation).identifier for s in t.columns  # type: ignore[union-attr]
                 if s.kind == kind and ctx.node(s.relation) is not None
                 and ctx.node(s.relation).resource_type == "source"}  # type: ignore[union-attr]
        ids = [b.batch_id for b in t.batches if b.feed in feeds and b.status != "quarantined"]
    elif root == "volume_surge":
        surging = {f.split(" ", 1)[0] for f in t.evidence}
        feeds = {n.identifier for n in (ctx.node(s) for s in surging) if n is not None}
        ids = [b.batch_id for b in t.batches if b.feed in feeds and b.status != "quarantined"]
    return ids


_FIX = {
    "volume_surge": [
        "Confirm the volume with the feed owner. If it is real, size the warehouse "
        "([warehouse] memory_limit/threads) and keep the partition-pruned merges; if not, "
        "retract the batch(es) below.",
    ],
    "partial_delivery": [
        "Ask the feed owner whether the day's file was cut short. If more of the day is "
        "coming, reject the held batch and let the full delivery land; if the day really "
        "was quiet, release it.",
    ],
    "key_explosion": [
        "Make the join input one row per key before the join (dedupe the lookup to its latest "
        "version per key) and ask the sender to fix the file; add a contract expectation that "
        "the key is unique per delivery.",
    ],
    "duplicate_batch": [
        "Retract the re-delivered batch; the facts' pre-merge dedupe keeps one row per key "
        "(see the full-refresh diff), aggregates over staging/intermediate double-count.",
    ],
    "incremental_predicate": [
        "Restore the high-watermark filter on the publish sequence (not business dates) and "
        "the unique_key, then rebuild the facts with `monitor once --full-refresh` (or roll "
        "back and let the next cycle re-merge).",
    ],
    "schema_drift": [
        "Agree the layout with the sender and re-deliver, or change the feed contract "
        "([ingest.feeds.<feed>].columns) and staging together; the file stays in "
        "raw.ingest_quarantine until then.",
    ],
    "null_storm": [
        "Ask the sender for a corrected file; retract the batch meanwhile and add a not-null "
        "expectation to the feed contract so the gate holds such batches.",
    ],
    "logic_regression": [
        "Compare the sample rows with the last good run: fix the unit/transformation at its "
        "origin, retract the batch and roll the facts back to the last good snapshot.",
    ],
    UNDETERMINED: ["Read the evidence below (failed models, alerts) and the dbt log."],
}


def _commands(ctx: _Ctx, t: Triage, suspect: ModelInfo | None) -> dict[str, list[str]]:
    import shlex

    cfg, rid = ctx.cfg, ctx.run.run_id
    mon = "monitor" + (f" --config {shlex.quote(str(cfg.source))}" if cfg.source else "")
    why = shlex.quote(f"incident {rid}: {t.root_cause}")
    cmds: dict[str, list[str]] = {
        "reproduce": [f"{mon} triage --run {rid} --format html", f"{mon} status"],
        "fix": list(_FIX.get(t.root_cause, [])),
        "release": [], "reject": [], "rollback": [], "resume": [],
    }
    models = t.isolation.models or ([suspect.name] if suspect else [])
    if cfg.warehouse.is_duckdb and not cfg.warehouse.url and models:
        copy = f"/tmp/triage-{rid}.duckdb"
        d = cfg.dbt
        cmds["reproduce"] += [
            f"cp {shlex.quote(str(cfg.warehouse.path))} {copy}",
            f"MONITOR_WAREHOUSE_PATH={copy} DBT_SEND_ANONYMOUS_USAGE_STATS=false dbt build "
            f"--project-dir {shlex.quote(str(d.project_dir))} "
            f"--profiles-dir {shlex.quote(str(d.profiles_dir))} "
            f"--target-path /tmp/triage-{rid}-target --select {' '.join(models)} --full-refresh",
        ]
    if t.root_cause == "incremental_predicate":
        cmds["fix"].append(f"{mon} once --full-refresh")
    held = [b.batch_id for b in t.batches if b.status == "held"]
    cmds["release"] = [f"{mon} release {b} --reason {shlex.quote('checked: data is right')}"
                       for b in held]
    cmds["reject"] = [f"{mon} reject {b} --reason {why}" for b in held]
    cmds["reject"] += [f"{mon} reject {b} --retract --reason {why}"
                       for b in _culprit_batches(ctx, t) if b not in held]
    snap = _restore_point(ctx)
    if snap:
        cmds["rollback"] = [f"{mon} rollback --to {snap} --reason {why}", f"{mon} once"]
    if _paused(ctx) or ctx.run.status in ("failed", "held"):
        # The daemon pauses downstream work on such runs (scheduler.pause_on_critical).
        cmds["resume"] = [f"{mon} status",
                          f"{mon} resume --reason {shlex.quote('fixed: ' + t.root_cause)}"]
    return cmds


def _restore_point(ctx: _Ctx) -> str | None:
    """The newest kept snapshot of a run before this one (the last known good facts)."""

    started = {r.run_id: r.started_at for r in ctx.runs}
    for snap in list_snapshots(ctx.cfg):
        at = started.get(snap.run_id)
        if at is not None and at < ctx.run.started_at:
            return snap.run_id
    return None


def _paused(ctx: _Ctx) -> bool:
    return state.paused(ctx.st) is not None


def _save_evidence(ctx: _Ctx, t: Triage) -> None:
    """Counts, samples, slow models and the diff as JSON beside the report."""
    folder = ctx.evidence_dir
    files = {
        "counts.json": {"run_id": t.run_id, "baseline_run_id": t.baseline_run_id,
                        "counts": t.counts, "expansion_point": t.expansion_point},
        "samples.json": ctx.samples,
        "longest_models.json": t.longest_models,
        "diff.json": t.isolation,
        "batches.json": {"batches": t.batches, "columns": t.columns},
    }
    for name, data in files.items():
        text = json.dumps(data, default=_dataclass_default, indent=2)
        (folder / name).write_text(text, encoding="utf-8")


def _dataclass_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return _json_default(value)
