"""What the full claims contract costs on a 1M-row batch, against one aggregate scan of
the same rows (moved out of tests/test_validate.py: a timing, not an assertion).

    .venv/bin/python bench/contract_1m.py [--rows 1000000] [--dir /tmp/x]

Prints the suite's seconds, the scan's seconds (best of two) and their ratio. The suite
must pass on these rows: the script exits 1 if it does not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dqm_demo.generate import COLUMNS  # noqa: E402
from monitor.quality.suites import load_suites  # noqa: E402
from monitor.quality.validator import Validator  # noqa: E402

AUDIT = "_batch_id varchar, _source_file varchar, _line_number bigint, _ingested_at timestamp"


def build(path: Path, rows: int) -> float:
    """A raw.claims of ``rows`` pending rows in one batch; the best of two aggregate scans."""
    con = duckdb.connect(str(path))
    try:
        cols = ", ".join(f"{c} varchar" for c in COLUMNS["claims"])
        con.execute(f"create schema raw; create table raw.claims ({cols}, {AUDIT})")
        con.execute(f"""
            insert into raw.claims select
                'C' || lpad(i::varchar, 9, '0'), 'P' || (i % 90000)::varchar,
                'E' || (i % 90000)::varchar,
                strftime(date '2026-03-01' - (i % 30)::int, '%Y-%m-%d'),
                strftime(date '2026-03-01', '%m/%d/%Y'),
                ((i % 100000) / 100.0)::decimal(18, 2)::varchar,
                ['received', 'pending', 'paid'][1 + i % 3],
                case when i % 50 = 0 then 'N/A' else 'J06.9' end,
                ['Y', 'no', 'TRUE', '0'][1 + i % 4],
                'auth: A12345; visit: office',
                '2026-03-01 10:00:00',
                'claims-00000001', 'big.csv', i + 2, now()
            from range({int(rows)}) t(i)""")
        con.execute("create table raw.ingest_batches (batch_id varchar, feed varchar, "
                    "status varchar, publish_seq bigint, rows_loaded bigint)")
        con.execute("insert into raw.ingest_batches values "
                    f"('claims-00000001', 'claims', 'pending', null, {int(rows)})")
        scans = []
        for _ in range(2):  # best of two: the first also warms the file cache
            t0 = time.perf_counter()
            con.execute("select count(*), count(distinct claim_id), count(employee_id), "
                        "count(amount), count(diagnosis_code) from raw.claims "
                        "where _batch_id = 'claims-00000001'").fetchall()
            scans.append(time.perf_counter() - t0)
        return min(scans)
    finally:
        con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "big.duckdb"
        scan = build(path, args.rows)
        suite = {s.name: s for s in load_suites(REPO / "expectations")}["contract_claims"]
        with Validator(f"duckdb:///{path}", 5) as v:
            t0 = time.perf_counter()
            r = v.run_contract(suite, "claims-00000001", "claims")
            suite_s = time.perf_counter() - t0
    print(f"contract_claims ({len(r.results)} expectations) on {args.rows} rows: "
          f"{suite_s:.2f} s; one aggregate scan: {scan:.3f} s; ratio {suite_s / scan:.0f}x")
    if not r.success:
        print(r.describe(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
