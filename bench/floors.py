"""The floors a DuckDB cycle is held to (issue 21), measured in the bench's own run.

- **L**: ``create table as select * from read_csv(..., all_varchar)`` of the day's
  files into a fresh DuckDB file with the warehouse's settings: what loading the bytes
  costs on this machine, with nothing checked.
- **S**: a cast of the day's claims to the staging model's column types, the
  latest-version dedupe on the key and an ordered write: what a staging or fact model
  of that day must at least do.

Each stage is printed beside its floor as a ratio with the target, so one run says
where a cycle stands. Disk writes are the process's and its children's file-system
output blocks (``getrusage``: what ``/usr/bin/time -v`` reports), spills, WAL,
checkpoints and last-known-good copies included, per byte of CSV ingested.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import sqlalchemy as sa

from monitor.cycle.result import CycleResult

# The claims feed: its key, its version column, and the column the facts are ordered by.
CLAIMS, KEY, VERSION, ORDER = "claims", "claim_id", "updated_at", "service_date"
STAGING = "stg_benefits__claims"

# Targets of issue 21: (stage, the floor it is compared with, the highest ratio).
TARGETS = (("ingest", "L", 1.5), (STAGING, "S", 2.0), ("fct_claims", "S", 2.0),
           ("int_employees__versions", "S", 0.5), ("int_plans__versions", "S", 0.5))
TEST_TYPES = ("test", "unit_test")


@dataclass(frozen=True)
class Floors:
    load_s: float  # L
    stage_s: float  # S
    rows: int  # claims rows S read


def disk_written_bytes() -> int:
    """Bytes this process and its waited-for children have written to file systems."""
    blocks = sum(resource.getrusage(who).ru_oublock
                 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return blocks * 512


def load_floor(files: Sequence[Path], db: Path, settings: Mapping[str, str | int]
               ) -> float:
    """L: seconds to copy every file, as text, into a table of a fresh DuckDB file."""
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db), config=dict(settings))
    try:
        t0 = time.perf_counter()
        for i, f in enumerate(files):
            table = CLAIMS if f.name.startswith(CLAIMS) else f"floor_{i}"
            if table == CLAIMS and _exists(con, CLAIMS):
                con.execute(f"insert into {CLAIMS} select * from "
                            "read_csv(?, header=true, all_varchar=true)", [str(f)])
            else:
                con.execute(f"create table {table} as select * from "
                            "read_csv(?, header=true, all_varchar=true)", [str(f)])
        con.execute("checkpoint")
        return time.perf_counter() - t0
    finally:
        con.close()


def stage_floor(db: Path, settings: Mapping[str, str | int], types: Mapping[str, str]
                ) -> tuple[float, int]:
    """S: seconds to cast L's claims to ``types`` (column → DuckDB type; the staging
    model's), keep the latest version of each key and write them ordered; and the rows
    read."""
    con = duckdb.connect(str(db), config=dict(settings))
    try:
        raw = [r[0] for r in con.execute(
            "select column_name from information_schema.columns where table_name = ? "
            "order by ordinal_position", [CLAIMS]).fetchall()]
        casts = ", ".join(
            f"try_cast(trim({c}) as {types[c]}) as {c}" for c in raw if c in types)
        rows = int(con.execute(f"select count(*) from {CLAIMS}").fetchone()[0])  # type: ignore[index]
        t0 = time.perf_counter()
        con.execute(
            f"create or replace table floor_stage as select * from (select {casts} "
            f"from {CLAIMS}) qualify row_number() over (partition by {KEY} "
            f"order by {VERSION} desc) = 1 order by {ORDER}")
        con.execute("checkpoint")
        return time.perf_counter() - t0, rows
    finally:
        con.close()


def _exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(con.execute("select count(*) from information_schema.tables "
                            "where table_name = ?", [table]).fetchone()[0])  # type: ignore[index]


def staging_types(conn: sa.Connection) -> dict[str, str]:
    """Column → type of the staging model as the cycle built it (S casts to these)."""
    rows = conn.execute(sa.text(
        "select column_name, data_type from information_schema.columns "
        "where table_name = :t"), {"t": STAGING}).all()
    return {str(c): str(t) for c, t in rows}


def node_seconds(result: CycleResult) -> dict[str, float]:
    """dbt's seconds per model, and the data tests' thread-seconds as ``dbt tests``."""
    seconds: dict[str, float] = {}
    for n in (result.dbt.nodes if result.dbt else []):
        key = "dbt tests" if n.resource_type in TEST_TYPES else n.name
        seconds[key] = seconds.get(key, 0.0) + n.duration_s
    return seconds


def report(result: CycleResult, floors: Floors, csv_bytes: int, written: int) -> list[str]:
    """The stages against their floors and targets, the honest monitoring share and the
    disk writes per CSV byte, as lines to print."""
    nodes = node_seconds(result)
    seconds = {**nodes, **result.timings}
    floor = {"L": floors.load_s, "S": floors.stage_s}
    lines = [f"floors: L {floors.load_s:.2f}s, S {floors.stage_s:.2f}s "
             f"({floors.rows:,} claims rows)"]
    for stage, name, limit in TARGETS:
        if stage in seconds and floor[name] > 0:
            ratio = seconds[stage] / floor[name]
            mark = "ok" if ratio <= limit else "over"
            lines.append(f"  {stage:<26}{seconds[stage]:>9.2f}s = {ratio:5.2f}x {name} "
                         f"(target <= {limit}x: {mark})")
    tests = seconds.get("dbt tests", 0.0)
    models = sum(s for k, s in nodes.items() if k != "dbt tests")
    monitoring = (result.timings.get("gate", 0.0) + result.timings.get("validate", 0.0)
                  + result.timings.get("observe", 0.0) + tests)
    lines.append(
        f"monitoring (gate + suites + dbt data tests + snapshots/drift) {monitoring:.1f}s "
        f"vs model build {models:.1f}s (thread-seconds): "
        f"{monitoring / models if models else 0:.0%} (target <= 25%)")
    lines.append(f"disk written: {written / 2**30:.2f} GiB for {csv_bytes / 2**30:.2f} GiB "
                 f"of CSV: {written / csv_bytes if csv_bytes else 0:.1f} bytes per CSV byte "
                 "(target <= 4)")
    return lines
