"""Ingest alone over a growing history: does a day's ingest cost the day or the table?

    .venv/bin/python bench/ingest_history.py --claims 100000 --days 45

Each day is generated, landed and ingested (no build), and the ingest is timed next to
what DuckDB rewrote of the raw claims already on disk. A daily append opens a new row
group (122,880 rows at most); DuckDB's checkpoint later merges adjacent part-filled row
groups near the end of the table (a weekend's small one with its neighbours), rewriting
up to three of them. That work is deterministic, so ``old rows rewritten`` shows which
days are merge days whatever the machine's load; compare ingest seconds between days of
the same kind (merge vs no merge), not day 31 against day 2 (day 2 can never merge).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dqm_demo.demo import days, land_day, workspace  # noqa: E402
from dqm_demo.generate import generate  # noqa: E402
from monitor.core.config import load_config  # noqa: E402
from monitor.stages.ingest import ingest  # noqa: E402
from monitor.warehouse.connection import warehouse  # noqa: E402


def row_groups(path: Path, table: str) -> list[tuple[int, str]]:
    """(rows, where its first column is stored) per row group of ``table``."""
    if not path.exists():
        return []
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [
            (int(n), str(where))
            for _, n, where in con.execute(
                "select row_group_id, sum(count), string_agg(block_id::varchar || ':' || "
                "block_offset::varchar, ',' order by segment_id) "
                f"from pragma_storage_info('{table}') "
                "where column_id = 0 and segment_type <> 'VALIDITY' group by 1 order by 1"
            ).fetchall()
        ]
    except duckdb.CatalogException:
        return []
    finally:
        con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=int, default=100_000, help="claims per day")
    ap.add_argument("--days", type=int, default=45)
    ap.add_argument("--start", type=date.fromisoformat, default=date(2026, 3, 2))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "ingest_history")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    cfg = workspace(load_config(REPO / "config.toml"), args.out / "ws")
    table = f"{cfg.ingest.schema}.claims"
    print(f"{'day':<12}{'':<4}{'ingest s':>9}{'claims':>9}{'old rows rewritten':>20}"
          f"{'row groups':>11}{'table rows':>12}")
    plain, merging = {}, {}
    for i, day in enumerate(days(args.start, args.days), start=1):
        feeds = args.out / "feeds"
        generate(feeds, day, 1, args.claims, seed=3)
        land_day(feeds, cfg.ingest.landing_dir, day)
        shutil.rmtree(feeds)
        before = {where for _, where in row_groups(cfg.warehouse.path, table)}
        started = time.perf_counter()
        with warehouse(cfg.warehouse) as wh:
            report = ingest(wh, cfg.ingest)
        seconds = time.perf_counter() - started
        after = row_groups(cfg.warehouse.path, table)
        appended = sum(f.rows_loaded for f in report.files if f.feed == "claims")
        rewritten = sum(n for n, where in after if where not in before) - appended
        # Per 100k rows loaded (every feed): weekend and month-end volumes differ.
        (merging if rewritten else plain)[i] = seconds / report.rows_loaded * 100_000
        print(f"{day!s:<12}{day:%a} {seconds:>9.2f}{appended:>9,}{rewritten:>20,}"
              f"{len(after):>11}{sum(n for n, _ in after):>12,}", flush=True)
    half = args.days // 2
    for name, kind in (("no merge", plain), ("merge", merging)):
        early = [s for d, s in kind.items() if d <= half]
        late = [s for d, s in kind.items() if d > half]
        if early and late:
            print(f"{name} days: median {statistics.median(early):.2f} s per 100k rows loaded "
                  f"(days 1-{half}) vs {statistics.median(late):.2f} s "
                  f"(days {half + 1}-{args.days})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
