"""The bounded demo: a week of generated feeds landed day by day, one cycle per day."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import date, timedelta
from pathlib import Path

from monitor.core.config import Config


def workspace(cfg: Config, root: Path, *, url: str = "") -> Config:
    """``cfg`` with every data path moved under ``root`` (a fresh, disposable place).

    The warehouse is a DuckDB file there, or with ``url`` the database it names (which
    the caller provides fresh: nothing under ``root`` holds it)."""
    return dataclasses.replace(
        cfg,
        warehouse=dataclasses.replace(cfg.warehouse, path=root / "warehouse.duckdb", url=url),
        state=dataclasses.replace(cfg.state, url=f"sqlite:///{root / 'state.db'}"),
        dbt=dataclasses.replace(
            cfg.dbt, target_path=root / "dbt-target", log_path=root / "dbt-logs"
        ),
        ingest=dataclasses.replace(cfg.ingest, landing_dir=root / "landing"),
        evidence=dataclasses.replace(
            cfg.evidence, dir=root / "evidence", snapshots_dir=root / "snapshots"
        ),
    )


def land_day(feeds_dir: Path, landing_dir: Path, day: date) -> list[Path]:
    """Copy one generated day (every feed) into the landing zone, as a delivery would."""
    landed = []
    for feed_dir in sorted(p for p in feeds_dir.iterdir() if p.is_dir()):
        src = feed_dir / day.isoformat()
        if not src.is_dir():
            continue
        dst = landing_dir / feed_dir.name / day.isoformat()
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            shutil.copy2(f, dst / f.name)
            landed.append(dst / f.name)
    return landed


def days(start: date, n: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]


def run_demo(cfg: Config, root: Path, n_days: int, claims_per_day: int, start: date) -> int:
    """Generate, land and run ``n_days`` cycles; print what the monitor saw. Exit code."""
    from dqm_demo.generate import Injection, generate
    from monitor.cycle.run import run_cycle
    from monitor.ops.operations import status_report
    from monitor.ops.summary import render_cycle, render_status

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    demo_cfg = workspace(cfg, root)
    feeds = root / "feeds"
    last = days(start, n_days)[-1]
    # The last day carries an incident: a duplicated EIN in the enrichment file, the
    # one-to-many join that inflates facts while every schema test passes.
    incident = Injection("dup_enrichment_key", last)
    print(f"demo: generating {n_days} days x {claims_per_day} claims/day under {feeds}, "
          f"with an incident on {last} ({incident.kind})")
    generate(feeds, start, n_days, claims_per_day, seed=7, inject=[incident])
    results = []
    for day in days(start, n_days):
        land_day(feeds, demo_cfg.ingest.landing_dir, day)
        print(f"\n=== {day} ({day:%A}) ===")
        result = run_cycle(demo_cfg, trigger="demo", as_of=day)
        print(render_cycle(result))
        results.append(result)
    print("\n=== status ===")
    print(render_status(status_report(demo_cfg)))
    print(f"\ndemo workspace: {root} (warehouse, state, evidence); config: {cfg.source}")
    clean = all(r.status == "success" for r in results[:-1])
    caught = results[-1].status in ("held", "failed")
    print(f"clean days ran clean: {'yes' if clean else 'NO'}; "
          f"incident on {last} caught: {'yes' if caught else 'NO'} ({results[-1].reason})")
    return 0 if clean and caught else 1
