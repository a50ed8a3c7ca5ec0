"""One-screen text renderings of a cycle and of the status report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.cycle.result import CycleResult


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*map(str, r)) for r in rows
    ]


def render_cycle(result: CycleResult) -> str:
    ing = result.ingest
    lines = [
        f"run {result.run_id}: {result.status.upper()} in {result.duration_s:.1f}s"
        + (f" ({result.reason})" if result.reason else ""),
        f"files: {ing.count('loaded')} loaded, {ing.count('duplicate')} duplicate, "
        f"{ing.count('quarantined')} quarantined; rows: {ing.rows_loaded} loaded, "
        f"{ing.rows_quarantined} quarantined",
        f"batches: {len(result.published)} published, {len(result.held)} held"
        + (f" ({', '.join(result.held)})" if result.held else ""),
    ]
    for f in ing.files:
        if f.outcome == "quarantined" or f.rows_quarantined:
            lines.append(f"  ! {f.path.name}: {f.rows_quarantined} quarantined {f.reason}".rstrip())
    if result.layer_rows:
        rows = [[layer, model, f"{n:,}"] for layer, models in result.layer_rows.items()
                for model, n in models.items()]
        lines += ["", *_table(rows, ["layer", "model", "rows"])]
    if result.dbt and result.dbt.models:
        rows = [[n.name, n.status, f"{n.duration_s:.2f}s"] for n in result.dbt.models]
        lines += ["", *_table(rows, ["model", "status", "runtime"])]
    for key, value in result.extra.items():
        if isinstance(value, str):
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def render_status(report: dict[str, Any]) -> str:
    lines = []
    paused = report.get("paused")
    if paused:
        lines.append(f"PAUSED since {paused.get('since')}: {paused.get('reason')}")
    runs = report.get("runs", [])
    rows = [[r["run_id"], r["status"], str(r["started_at"])[:19], (r.get("reason") or "")[:60]]
            for r in runs]
    lines += _table(rows, ["run", "status", "started", "reason"]) if rows else ["no runs yet"]
    held = report.get("held_batches", [])
    lines.append("")
    lines.append(f"held batches: {len(held)}")
    lines += [f"  {b['batch_id']} ({b['feed']}): "
              f"{(b.get('decision_reason') or b.get('reason') or '')[:160]}" for b in held]
    if report.get("open_alerts"):
        lines.append(f"open alerts: {len(report['open_alerts'])}")
    if report.get("next_run"):
        lines.append(f"next scheduled run: {report['next_run']}")
    return "\n".join(lines)
