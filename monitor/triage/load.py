"""Reads what the steps need before they start: the runs and their metric points (state
store), the dbt manifest with its declared joins, the ingest ledger, the warehouse's
columns. Everything lands in one ``Context``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from monitor.core.config import Config, DbtConfig, IngestConfig, WarehouseConfig
from monitor.core.manifest import Project, load_manifest
from monitor.store import state
from monitor.store.batches import ledger_tables
from monitor.store.state import metric_points
from monitor.triage.context import (
    PERF_METRICS,
    Context,
    Join,
    LedgerRow,
    RunRow,
    TriageError,
)
from monitor.warehouse.connection import backend_of, warehouse

log = logging.getLogger(__name__)


def load_context(cfg: Config, st: sa.Engine, run_id: str) -> Context:
    """The context of ``run_id``: the runs up to it, its baseline (the last good run),
    the metric points of both and of the runs just before them, lineage and ledger."""
    runs = _runs(st)
    by_id = {r.run_id: r for r in runs}
    if run_id not in by_id:
        raise TriageError(f"no run {run_id!r} in the state store")
    run = by_id[run_id]
    runs = [r for r in runs if r.started_at <= run.started_at]
    with_points = _runs_with_points(st, [r.run_id for r in runs])
    project, manifest = _manifest(cfg.dbt, cfg.layers)
    ctx = Context(cfg=cfg, st=st, run=run, runs=runs, baseline=None, project=project,
                  joins=_joins(manifest, project), manifest=manifest, points={},
                  with_points=with_points, ledger=_ledger(cfg.ingest, cfg.warehouse))
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


def _manifest(dbt: DbtConfig, layers: Mapping[str, str]
              ) -> tuple[Project | None, dict[str, Any]]:
    path = dbt.target_path / "manifest.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return load_manifest(dbt.target_path, layers), raw
    except (OSError, ValueError) as exc:
        log.warning("triage without a dbt manifest: %s", exc)
        return None, {}


def _joins(manifest: Mapping[str, Any], project: Project | None) -> dict[str, list[Join]]:
    """Declared ``meta.joins`` per model name (entries naming unknown nodes are dropped).

    ``meta.joins`` (optional, per model)::

        meta:
          joins:
            - {input: stg_benefits__companies, key: company_ein, unique_per: _batch_id}
            - {input: stg_benefits__companies, key: domain, model_key: email_domain}

    ``input`` is a parent's name, ``key`` its join column, ``model_key`` the model's
    column (default ``key``), ``unique_per`` a column of the input within whose values
    the key must be unique (one delivery); without it the key must be unique in the
    whole input.
    """
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


def _ledger(ingest: IngestConfig, wh_cfg: WarehouseConfig) -> list[LedgerRow]:
    if not ingest.enabled or not warehouse_available(wh_cfg):
        return []
    b = ledger_tables(sa.MetaData(), ingest.schema)[0]
    q = sa.select(b.c.batch_id, b.c.feed, b.c.source_file, b.c.status, b.c.load_seq,
                  b.c.publish_seq, b.c.rows_read, b.c.rows_loaded, b.c.reason,
                  b.c.ingested_at, b.c.decided_at, b.c.decision_reason).order_by(b.c.load_seq)
    try:
        with warehouse(wh_cfg) as wh, wh.connect() as conn:
            rows = conn.execute(q).mappings().all()
    except sa.exc.DBAPIError:
        return []  # nothing ingested yet
    return [LedgerRow(**dict(r)) for r in rows]


def warehouse_available(wh_cfg: WarehouseConfig) -> bool:
    return bool(wh_cfg.url) or wh_cfg.path.exists()


def relation_columns(conn: sa.Connection, project: Project | None) -> dict[str, dict[str, str]]:
    """Real columns (name → upper-case type) of every relation of the project."""
    if project is None:
        return {}
    nodes = [n for n in project.lineage() if n.is_relation]
    found = backend_of(conn).relation_columns(conn, [(n.schema, n.identifier) for n in nodes])
    return {n.unique_id: found[(n.schema, n.identifier)] for n in nodes
            if (n.schema, n.identifier) in found}
