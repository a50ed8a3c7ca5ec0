"""Step 6, the suspect model's query plan: which operator of its SQL is slow, which scan
reads too much, which join fans out. The compiled SQL (a SELECT) runs once on production
under the engine's profiler, as EXPLAIN ANALYZE shows it; the warehouse backend collects
and summarises the plan (``Backend.query_plan``: DuckDB's ``enable_profiling`` JSON,
PostgreSQL's ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` in a read-only transaction that
is rolled back), and the summary has the same shape on every engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.manifest import ModelInfo
from monitor.triage.context import Context, slug
from monitor.warehouse.connection import backend_of, warehouse
from monitor.warehouse.engine import Unsupported

__all__ = ["QUERY_PLAN_TIMEOUT_S", "query_plan"]

QUERY_PLAN_TIMEOUT_S = 300.0


def _compiled_sql(ctx: Context, node: ModelInfo) -> str | None:
    raw = ctx.manifest.get("nodes", {}).get(node.unique_id, {})
    path = raw.get("compiled_path")
    candidates = [Path(path)] if path else []
    candidates += sorted((ctx.cfg.dbt.target_path / "compiled").rglob(f"{node.name}.sql"))
    for p in candidates:
        if p.is_file():
            return p.read_text(encoding="utf-8")
    code = raw.get("compiled_code")
    return str(code) if code else None


def query_plan(ctx: Context, node: ModelInfo) -> dict[str, Any]:
    """The query plan of the model's compiled SQL (a SELECT) run on production,
    summarised; the plan itself is saved in the evidence folder."""
    sql = _compiled_sql(ctx, node)
    if not sql:
        return {"model": node.name, "note": "no compiled SQL in the dbt target"}
    out = ctx.evidence_dir / f"query_plan_{slug(node.name)}.json"
    (ctx.evidence_dir / f"compiled_{slug(node.name)}.sql").write_text(sql, encoding="utf-8")
    started = time.perf_counter()
    try:
        with warehouse(ctx.cfg.warehouse) as wh, wh.connect() as conn:  # SELECT only
            summary = backend_of(conn).query_plan(conn, sql, out, QUERY_PLAN_TIMEOUT_S)
    except Unsupported as exc:
        return {"model": node.name, "note": str(exc)}
    except sa.exc.DBAPIError as exc:
        return {"model": node.name, "note": f"could not collect the query plan: {exc.orig}"}
    summary.update(model=node.name, file=out.name, seconds=round(time.perf_counter() - started, 3))
    return summary
