"""Step 6, the suspect model's query plan: which operator of its SQL is slow, which scan
reads too much, which join fans out. The compiled SQL (a SELECT) runs once on production
and DuckDB writes the executed plan with per-operator timings and rows, as EXPLAIN
ANALYZE shows it (DuckDB's ``enable_profiling`` pragma, JSON output).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.manifest import ModelInfo
from monitor.triage.context import Context, slug, sql_string
from monitor.warehouse.connection import warehouse

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
    """DuckDB's query plan of the model's compiled SQL (a SELECT) run on production,
    summarised; the plan itself is saved in the evidence folder."""
    sql = _compiled_sql(ctx, node)
    if not sql:
        return {"model": node.name, "note": "no compiled SQL in the dbt target"}
    if ctx.cfg.warehouse.url or not ctx.cfg.warehouse.is_duckdb:
        return {"model": node.name, "note": "query plans are collected on DuckDB only"}
    out = ctx.evidence_dir / f"query_plan_{slug(node.name)}.json"
    (ctx.evidence_dir / f"compiled_{slug(node.name)}.sql").write_text(sql, encoding="utf-8")
    started = time.perf_counter()
    try:
        with warehouse(ctx.cfg.warehouse) as wh, wh.connect() as conn:  # SELECT only
            raw = conn.connection.dbapi_connection
            interrupt = raw.interrupt  # type: ignore[union-attr]
            timer = threading.Timer(QUERY_PLAN_TIMEOUT_S, interrupt)
            conn.exec_driver_sql("PRAGMA enable_profiling = 'json'")
            conn.exec_driver_sql(f"PRAGMA profiling_output = {sql_string(out)}")
            timer.start()
            try:
                conn.exec_driver_sql(f"SELECT count(*) FROM ({sql.strip().rstrip(';')}) AS q").all()
            finally:
                timer.cancel()
                conn.exec_driver_sql("PRAGMA disable_profiling")
    except sa.exc.DBAPIError as exc:
        return {"model": node.name, "note": f"could not collect the query plan: {exc.orig}"}
    if not out.is_file():  # DuckDB wrote no plan (e.g. the query was cut short)
        return {"model": node.name, "note": f"DuckDB wrote no query plan ({out.name})"}
    summary = summarize_query_plan(json.loads(out.read_text(encoding="utf-8")))
    summary.update(model=node.name, file=out.name, seconds=round(time.perf_counter() - started, 3))
    return summary


def summarize_query_plan(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Slowest operators, table scans (rows, row groups) and join fan-out of a DuckDB
    JSON query plan."""
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
