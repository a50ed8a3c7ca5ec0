"""FULL vs DELTA last-known-good snapshot, and a rollback through a chain, on a synthetic
fact shaped like fct_claims (no dbt run: the table is written directly).

    .venv/bin/python bench/snapshot_delta.py [--days 31] [--claims 100000] [--dir /tmp/x]

Day by day after --days of history: CLAIMS new claims, 1% updates of recent claims and the
claims of two plans restated (new _enriched_publish_seq); a snapshot after each (the first
FULL, then DELTAs up to full_snapshot_every = 7); then a rollback to the last one, checked
against a hash of the live table. The text columns are md5 strings, which compress far
worse than the real facts: bytes and seconds are upper bounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from monitor.core.config import Config, DbtConfig, EvidenceConfig, StateConfig, WarehouseConfig  # noqa: E402
from monitor.core.manifest import ModelInfo, Project  # noqa: E402
from monitor.recovery import rollback, snapshots  # noqa: E402

COLUMNS = """
    'C' || lpad(i::varchar, 9, '0') as claim_id, md5(i::varchar) as claim_sk,
    md5((i % 50000)::varchar) as plan_sk, 'P' || (i % 50000) as plan_id,
    md5((i % 20000)::varchar) as employee_sk, 'E' || (i % 20000) as employee_id,
    'paid' as status, (i % 1000)::decimal(12, 2) as amount, 'A0' || (i % 90) as diagnosis_code,
    i % 2 = 0 as is_in_network, null::varchar as auth_code, 'office' as visit_type,
    'ppo' as plan_type, 'acme' as carrier, '12-3456789' as company_ein,
    date '2026-01-01' + (i // {day})::int as service_date,
    date '2026-01-03' + (i // {day})::int as received_date, 2 as claim_age_days,
    timestamp '2026-01-01' + to_seconds(i) as updated_at,
    (i // {day}) * 4 + 1 as _publish_seq, 'claims-' || (i // {day}) as _batch_id,
    'f.csv' as _source_file, timestamp '2026-01-01' as _ingested_at, i as _line_number,
    (i // {day}) * 4 + 1 as _enriched_publish_seq"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=31)
    ap.add_argument("--claims", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/lkg_bench"))
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    wh, per_day = args.dir / "warehouse.duckdb", args.claims
    cols = COLUMNS.format(day=per_day)
    with duckdb.connect(str(wh)) as con:
        con.execute(
            f"create table fct_claims as select {cols} from range({args.days * per_day}) r(i)")
    cfg = Config(
        warehouse=dataclasses.replace(WarehouseConfig(), path=wh),
        state=StateConfig(url=f"sqlite:///{args.dir / 'state.db'}"),  # the rollback event
        dbt=dataclasses.replace(DbtConfig(), vars={"lookback_batches": 0}),
        evidence=dataclasses.replace(EvidenceConfig(), snapshots_dir=args.dir / "snapshots",
                                     keep_snapshots=3, full_snapshot_every=7),
    )
    node = ModelInfo(unique_id="model.bench.fct_claims", name="fct_claims",
                     resource_type="model", database=None, schema="main",
                     identifier="fct_claims", layer="fct", grain=("claim_id",),
                     materialization="incremental", is_incremental=True)
    project = Project(name="bench", models={node.unique_id: node}, sources={})
    seq = args.days * 4 + 1
    for n in range(7):
        run = f"day-{args.days + n + 1}"
        if n:
            seq += 4
            first = (args.days + n - 1) * per_day
            with duckdb.connect(str(wh)) as con:
                con.execute(
                    f"insert into fct_claims select * replace ({seq} as _publish_seq, "
                    f"{seq} as _enriched_publish_seq) from (select {cols} from "
                    f"range({first}, {first + per_day}) r(i))")
                con.execute(
                    f"update fct_claims set amount = amount + 1, _publish_seq = {seq}, "
                    f"_enriched_publish_seq = {seq} where claim_id in (select claim_id from "
                    f"fct_claims where _publish_seq < {seq} order by _line_number desc "
                    f"limit {per_day // 100})")
                con.execute(f"update fct_claims set carrier = 'other', _enriched_publish_seq "
                            f"= {seq} where plan_id in ('P17', 'P4242')")
        snapshots.note_build(cfg, run)
        info = snapshots.keep_snapshot(cfg, run, project=project)
        assert info is not None
        print(f"{run} {info.kind:5} {info.stored_rows:9} of {info.rows:9} rows "
              f"{info.bytes / 2**20:7.1f} MiB {info.seconds:6.2f} s")
    with duckdb.connect(str(wh), read_only=True) as con:
        before = con.execute("select count(*), sum(hash(fct_claims)) from fct_claims").fetchall()
    started = time.perf_counter()
    print(rollback.rollback(cfg, run, "bench", "bench").split(" in ")[0])
    print(f"rollback {time.perf_counter() - started:.2f} s")
    with duckdb.connect(str(wh), read_only=True) as con:
        after = con.execute("select count(*), sum(hash(fct_claims)) from fct_claims").fetchall()
    print("rollback equals the live table:", after == before)


if __name__ == "__main__":
    main()
