"""One full cycle on one generated day, with per-step throughput and the read_csv floor.

    .venv/bin/python bench/cycle.py --claims 20000000 [--days 2]

Prints rows/s per step, the cycle's peak memory, and two ratios measured in this run:
the whole cycle against a plain DuckDB read_csv of the same files (the floor), and the
GX suites against one aggregate scan of the same tables. With ``--days 2`` a second day
of the same volume follows: the steady-state cycle (an incremental merge into a day of
history), with its share of monitoring (gate + suites + profile/drift) against the build.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dqm_demo.demo import land_day, workspace  # noqa: E402
from dqm_demo.generate import generate  # noqa: E402
from monitor.core.config import load_config  # noqa: E402
from monitor.cycle.result import CycleResult  # noqa: E402
from monitor.cycle.run import run_cycle  # noqa: E402
from monitor.warehouse.connection import duckdb_settings  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--claims", type=int, default=1_000_000, help="claims per day")
    ap.add_argument("--day", type=date.fromisoformat, default=date(2026, 3, 4))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "cycle")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--days", type=int, default=1, choices=(1, 2),
                    help="2: run a second day of the same volume (the steady state)")
    ap.add_argument("--trace", action="store_true",
                    help="log the seconds of every suite and every profiled relation")
    args = ap.parse_args()
    if args.trace:
        logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
        for name in ("monitor.quality.validator", "monitor.observe.profile"):
            logging.getLogger(name).setLevel(logging.DEBUG)

    if args.out.exists():
        shutil.rmtree(args.out)
    cfg = workspace(load_config(REPO / "config.toml"), args.out / "ws")
    feeds = args.out / "feeds"
    t0 = time.perf_counter()
    generate(feeds, args.day, 1, args.claims, seed=1)
    gen_s = time.perf_counter() - t0
    files = land_day(feeds, cfg.ingest.landing_dir, args.day)
    os.sync()  # the generated files on disk first: the cycle's fsyncs should not wait for them
    size = sum(f.stat().st_size for f in files)
    print(f"generated {len(files)} files, {size / 2**30:.2f} GiB, in {gen_s:.1f}s")

    # The floor: DuckDB reading the same files and nothing else.
    con = duckdb.connect(config=dict(duckdb_settings(cfg.warehouse)))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    read_rows = 0
    for f in files:
        row = con.execute(
            "select count(*) from read_csv(?, header=true, all_varchar=true)", [str(f)]
        ).fetchone()
        read_rows += int(row[0]) if row else 0
    floor_s = time.perf_counter() - t0
    con.close()

    result = run_cycle(cfg, trigger="bench", as_of=args.day)
    print(f"cycle {result.run_id}: {result.status} {result.reason}")
    rows_in = result.ingest.rows_loaded
    fct_rows = sum(n for m, n in result.layer_rows.get("fct", {}).items())
    step_rows = {"ingest": rows_in, "gate": rows_in, "build": rows_in, "validate": fct_rows,
                 "observe": fct_rows}
    print(f"\n{'step':<10}{'seconds':>10}{'rows':>14}{'rows/s':>14}")
    for step, secs in result.timings.items():
        rows = step_rows.get(step, 0)
        print(f"{step:<10}{secs:>10.2f}{rows:>14,}{rows / secs if secs else 0:>14,.0f}")
    print(f"{'cycle':<10}{result.duration_s:>10.2f}{rows_in:>14,}"
          f"{rows_in / result.duration_s:>14,.0f}")

    # GX suites against one aggregate scan of the same tables.
    gx_s = result.timings.get("gate", 0.0) + result.timings.get("validate", 0.0)
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True,
                         config=dict(duckdb_settings(cfg.warehouse)))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for table, key in (("raw.claims", "claim_id"), ("raw.employees", "employee_id"),
                       ("raw.plans", "plan_id"), ("main.fct_claims", "claim_id"),
                       ("main.fct_employees", "employee_id"), ("main.fct_plans", "plan_id")):
        con.execute(f"select count(*), count(distinct {key}) from {table}").fetchone()
    scan_s = time.perf_counter() - t0
    con.close()

    print(f"\nread_csv floor: {floor_s:.2f}s for {read_rows:,} rows "
          f"({read_rows / floor_s:,.0f} rows/s)")
    print(f"cycle / read_csv floor: {result.duration_s / floor_s:.1f}x")
    print(f"GX suites (gate + post-build): {gx_s:.2f}s; one aggregate scan of the same "
          f"tables: {scan_s:.2f}s; ratio {gx_s / scan_s:.1f}x")
    _share(result)
    ok = result.status == "success"
    if args.days == 2:
        shutil.rmtree(feeds)
        day2 = args.day + timedelta(days=1)
        t0 = time.perf_counter()
        generate(feeds, day2, 1, args.claims, seed=1)
        land_day(feeds, cfg.ingest.landing_dir, day2)
        os.sync()
        print(f"\nday 2 ({day2}) generated in {time.perf_counter() - t0:.1f}s")
        second = run_cycle(cfg, trigger="bench", as_of=day2)
        print(f"cycle {second.run_id}: {second.status} {second.reason}")
        for step, secs in second.timings.items():
            print(f"{step:<10}{secs:>10.2f}")
        print(f"{'cycle':<10}{second.duration_s:>10.2f}")
        _share(second)
        ok = ok and second.status == "success"
    print(f"peak memory (max RSS of this process): {peak_rss_mib():,.0f} MiB")
    if not args.keep:
        shutil.rmtree(feeds)
    return 0 if ok else 1


def _share(result: CycleResult) -> None:
    t = result.timings
    monitoring = t.get("gate", 0.0) + t.get("validate", 0.0) + t.get("observe", 0.0)
    build = t.get("build", 0.0)
    print(f"monitoring (gate + suites + profile/drift) {monitoring:.1f}s vs build "
          f"{build:.1f}s: {monitoring / build if build else 0:.0%} (target <= 25%)")


if __name__ == "__main__":
    sys.exit(main())
