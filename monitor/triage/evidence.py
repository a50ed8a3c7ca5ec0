"""Step 6, the evidence around the root cause: the suspect model, the slowest models,
the run's alerts and timeline, drift plots of the affected metrics, and the evidence
files written beside the report.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.manifest import ModelInfo
from monitor.store import state
from monitor.store.state import alert_outbox, alerts_open
from monitor.triage import render
from monitor.triage.context import PERF_METRICS, Context, json_default, jsonable, slug
from monitor.triage.findings import ExpansionPoint, Finding, Isolation, LayerCount, Triage

log = logging.getLogger(__name__)

MAX_PLOTS = 6


def suspect_model(ctx: Context, root: Finding, ep: ExpansionPoint, iso: Isolation
                  ) -> ModelInfo | None:
    """The model whose query plan is collected: the expansion point, a diverging fact,
    else the slowest model."""
    if ep.model and root.cls == "key_explosion":
        return ctx.node(ep.model)
    for d in iso.diffs:
        if d.verdict != "equal":
            return ctx.node(d.model)
    slow = longest_models(ctx)
    return ctx.node(slow[0]["model"]) if slow else None


def longest_models(ctx: Context, n: int = 5) -> list[dict[str, Any]]:
    """The run's ``n`` slowest models, each with its time in the baseline run."""
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


def run_alerts(ctx: Context) -> list[dict[str, Any]]:
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
    out = [{"kind": "open", **{k: jsonable(v) for k, v in r.items()
                               if k in ("rule", "severity", "summary", "evidence", "started_at",
                                        "dedup_key")}} for r in opened]
    out += [{"kind": "notification", **{k: jsonable(v) for k, v in r.items()}} for r in sent]
    return out


def _next_start(ctx: Context) -> datetime:
    st = ctx.st
    r = state.runs
    with st.connect() as conn:
        nxt = conn.execute(sa.select(sa.func.min(r.c.started_at))
                           .where(r.c.started_at > ctx.run.started_at)).scalar()
    return nxt or state.utcnow()


def timeline(ctx: Context, t: Triage) -> list[dict[str, Any]]:
    """The run from start to end: its batches, build, drift, alerts, and the operator
    events up to the next run."""
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
    return [{**i, "at": jsonable(i["at"])} for i in items]


def drift_plots(ctx: Context, counts: Sequence[LayerCount], ep: ExpansionPoint,
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
        series = ctx.history(model, metric, pts[(model, metric)].observed_at)
        delta = ctx.cfg.drift.is_delta(metric)
        if delta:
            series = [(b[0], b[1] - a[1], b[2]) for a, b in itertools.pairwise(series)]
        if len(series) < 1:
            continue
        path = ctx.evidence_dir / f"drift_{slug(model)}_{slug(metric.replace(':', '-'))}.png"
        title = f"{model} · {metric}" + (" (change per run)" if delta else "")
        try:
            render.plot_series(path, title, series, pts[(model, metric)].observed_at)
        except (OSError, ValueError) as exc:
            log.warning("plot %s failed: %s", path.name, exc)
            continue
        out.append({"model": model, "metric": metric, "file": path.name, "points": len(series),
                    "z": jsonable(pts[(model, metric)].z)})
    return out


def save_evidence_files(ctx: Context, t: Triage) -> None:
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
    return json_default(value)
