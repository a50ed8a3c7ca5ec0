"""One full cycle on one generated day, with per-step throughput and the read_csv floor.

    .venv/bin/python bench/cycle.py --claims 20000000 [--days 2]
    .venv/bin/python bench/cycle.py --engine postgres --claims 1000000 --days 2 [--pg-url URL]
    .venv/bin/python bench/cycle.py --engine spark --claims 2000 --days 2 [--spark-url sc://host:port]

Prints rows/s per step, the cycle's peak memory, and two ratios measured in this run:
the whole cycle against a plain DuckDB read_csv of the same files (the floor), and the
GX suites against one aggregate scan of the same tables. With ``--days 2`` a second day
of the same volume follows: the steady-state cycle (an incremental merge into a day of
history), with its share of monitoring (gate + suites + profile/drift) against the build.

``--engine postgres`` runs the same cycle on PostgreSQL: on a fresh database that the
``--pg-url`` user creates on that server (dropped afterwards unless ``--keep``), else
on a throwaway PostgreSQL 15 server started as the tests start theirs
(tests/pg_server.py: fsync off, a temp folder; stopped afterwards). It adds a second
floor, PostgreSQL's own ``COPY`` of the same files into a table, and the peak memory
is then the monitor's and dbt's process only (the server's is not in it). Suites that
name another engine (``"dialect": "duckdb"``) cannot run there and are left out: the
line ``suites:`` says how many ran.

On DuckDB it also prints issue 21's floors (bench/floors.py), measured in the same run:
L (the day's files read as text into a table) and S (the day's claims cast, deduplicated
to their latest version and written in order), each stage's ratio to its floor with the
target, the monitoring share with dbt's data tests counted as monitoring, and the bytes
written to disk per CSV byte.

``--engine spark`` runs it on Apache Spark over Spark Connect (dbt target ``spark``):
on the server ``--spark-url`` names (its tables go into the databases ``raw`` and
``main``, as on the other engines: give it a server of its own), else on a throwaway
``local[2]`` Connect server started as the tests start theirs (tests/spark_server.py: a
temp folder for its warehouse and metastore; stopped afterwards). It adds Spark's own
CSV read of the same files (a ``count()``) as a second floor; the peak memory is the
monitor's and dbt's process only (the JVM's is not in it). On one small machine the
cycle's time is mostly Spark's per-statement cost (planning, a job per statement), not
the rows: see the README, "Running on Apache Spark".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import resource
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any, cast

import duckdb
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.floors import (  # noqa: E402
    Floors,
    disk_written_bytes,
    load_floor,
    report,
    stage_floor,
    staging_types,
)
from dqm_demo.demo import land_day, workspace  # noqa: E402
from dqm_demo.generate import generate  # noqa: E402
from monitor.core.config import Config, load_config  # noqa: E402
from monitor.cycle.result import CycleResult  # noqa: E402
from monitor.cycle.run import run_cycle  # noqa: E402
from monitor.warehouse.connection import backend_for, duckdb_settings, warehouse  # noqa: E402

SCANS = (("raw.claims", "claim_id"), ("raw.employees", "employee_id"), ("raw.plans", "plan_id"),
         ("main.fct_claims", "claim_id"), ("main.fct_employees", "employee_id"),
         ("main.fct_plans", "plan_id"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throwaway_server(stack: contextlib.ExitStack, start_server: Callable[[], Any]) -> str:
    """The URL of a server from one of the tests' ``start_server`` generators, stopped
    (and its folder removed) when ``stack`` closes."""
    servers = cast("Generator[Any, None, None]", start_server())
    server = next(servers)
    stack.callback(servers.close)
    return str(server.url)


def bench_shared_buffers() -> str:
    """``shared_buffers`` of the bench's throwaway PostgreSQL server: a quarter of the
    machine's memory, at most 4 GiB, as PostgreSQL's documentation advises for a
    dedicated server. The default 128 MB (the tests' server) is a developer's setting:
    with it the b-trees of a month of 1M claims/day no longer fit, and a cycle slowed
    with every day stored (README, Results)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{min(memory // 4, 4 << 30) >> 20}MB"


@contextlib.contextmanager
def postgres_database(pg_url: str | None, keep: bool = False) -> Iterator[str]:
    """A fresh database: on ``pg_url``'s server (created by its user), else on a
    throwaway server (tests/pg_server.py). Dropped afterwards, unless ``keep`` and the
    server is ``pg_url``'s (then its URL is printed, to profile it)."""
    given = pg_url is not None
    with contextlib.ExitStack() as stack:
        if pg_url is None:
            from tests.pg_server import start_server  # the tests' server, pytest-free here

            pg_url = throwaway_server(
                stack, functools.partial(start_server, {"shared_buffers": bench_shared_buffers()}))
        name = f"dqm_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(pg_url, poolclass=sa.NullPool,
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"create database {name}"))
        url = sa.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            if keep and given:
                print(f"kept: {sa.make_url(url).render_as_string()}")
            else:
                with admin.connect() as conn:
                    conn.execute(sa.text(f"drop database if exists {name} with (force)"))
            admin.dispose()


@contextlib.contextmanager
def spark_endpoint(spark_url: str | None) -> Iterator[str]:
    """``spark_url``, else a throwaway Connect server's (tests/spark_server.py), stopped
    with its session afterwards."""
    from monitor.warehouse.spark_session import stop_sessions

    with contextlib.ExitStack() as stack:
        if spark_url is None:
            from tests.spark_server import start_server  # the tests' server, pytest-free here

            spark_url = throwaway_server(stack, start_server)
        stack.callback(stop_sessions)  # the session first, then the server
        yield spark_url


def spark_floor(cfg: Config, files: list[Path]) -> tuple[float, int]:
    """Spark's own CSV reader over the same files: one ``count()`` per file."""
    from monitor.warehouse.spark import session_of

    rows = 0
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        session = session_of(conn)
        t0 = time.perf_counter()
        for f in files:
            rows += int(session.read.option("header", True).csv(str(f)).count())
    return time.perf_counter() - t0, rows


def engine_suites(cfg: Config, folder: Path) -> tuple[Config, int, int]:
    """``cfg`` with the suites that can run on its warehouse (copied into ``folder``):
    (config, suites kept, suites left out)."""
    dialect = backend_for(cfg.warehouse).dialect
    folder.mkdir(parents=True, exist_ok=True)
    kept = skipped = 0
    for path in sorted(cfg.validation.suites_dir.glob("*.json")):
        named = json.loads(path.read_text()).get("meta", {}).get("monitor", {}).get("dialect")
        if named in (None, dialect):
            shutil.copy(path, folder / path.name)
            kept += 1
        else:
            skipped += 1
    return (dataclasses.replace(cfg, validation=dataclasses.replace(
        cfg.validation, suites_dir=folder)), kept, skipped)


def copy_floor(url: str, files: list[Path]) -> tuple[float, int]:
    """PostgreSQL's own COPY of the same files into an unlogged table of text columns."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    rows = 0
    t0 = time.perf_counter()
    try:
        with engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            for i, f in enumerate(files):
                header = f.open(encoding="utf-8").readline().strip().split(",")
                cols = ", ".join(f'"{c}" text' for c in header)
                cur = raw.cursor()
                cur.execute(f"create unlogged table floor_{i} ({cols})")
                with f.open(encoding="utf-8") as fh:
                    cur.copy_expert(f"copy floor_{i} from stdin with (format csv, header true)",
                                    fh, 1 << 16)
                rows += cur.rowcount
                cur.execute(f"drop table floor_{i}")
                cur.close()
    finally:
        engine.dispose()
    return time.perf_counter() - t0, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=int, default=1_000_000, help="claims per day")
    ap.add_argument("--day", type=date.fromisoformat, default=date(2026, 3, 4))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "cycle")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--days", type=int, default=1, choices=(1, 2),
                    help="2: run a second day of the same volume (the steady state)")
    ap.add_argument("--trace", action="store_true",
                    help="log the seconds of every suite and every profiled relation")
    ap.add_argument("--engine", choices=("duckdb", "postgres", "spark"), default="duckdb")
    ap.add_argument("--pg-url", default=None,
                    help="postgresql+psycopg2://user@host:port/db of a server whose user may "
                         "create a database (default: start a throwaway server)")
    ap.add_argument("--spark-url", default=None,
                    help="sc://host:port of a Spark Connect server the bench may write the "
                         "databases raw and main on (default: start a throwaway local[2] one)")
    args = ap.parse_args()
    if args.trace:
        logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
        for name in ("monitor.quality.validator", "monitor.observe.profile",
                     "monitor.observe.carry"):
            logging.getLogger(name).setLevel(logging.DEBUG)

    if args.out.exists():
        shutil.rmtree(args.out)
    cfg = workspace(load_config(REPO / "config.toml"), args.out / "ws")
    with contextlib.ExitStack() as stack:
        if args.engine == "postgres":
            url = stack.enter_context(postgres_database(args.pg_url, keep=args.keep))
            cfg = dataclasses.replace(cfg, warehouse=dataclasses.replace(cfg.warehouse, url=url))
            print(f"PostgreSQL: {sa.make_url(url).render_as_string()}")
        elif args.engine == "spark":
            url = stack.enter_context(spark_endpoint(args.spark_url))
            cfg = workspace(cfg, args.out / "ws", url=url)
            cfg = dataclasses.replace(cfg, dbt=dataclasses.replace(cfg.dbt, target="spark"))
            print(f"Spark Connect: {url}")
        return bench(args, cfg)
    return 1  # not reached


def bench(args: argparse.Namespace, cfg: Config) -> int:
    cfg, kept, skipped = engine_suites(cfg, args.out / "suites")
    print(f"suites: {kept} run on {backend_for(cfg.warehouse).dialect}, {skipped} left out "
          "(written for another engine)")
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
    dialect = backend_for(cfg.warehouse).dialect
    copy = copy_floor(cfg.warehouse.url, files) if dialect == "postgresql" else None
    spark = spark_floor(cfg, files) if dialect == "spark" else None
    # Issue 21's floors (bench/floors.py): L now, from the files; S after the cycle,
    # which gives the staging model's types.
    settings = duckdb_settings(cfg.warehouse)
    floors_db = args.out / "floors.duckdb"
    load_s = load_floor(files, floors_db, settings) if dialect == "duckdb" else None

    written = disk_written_bytes()
    result = run_cycle(cfg, trigger="bench", as_of=args.day)
    written = disk_written_bytes() - written
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
    with warehouse(cfg.warehouse, read_only=True) as wh, wh.connect() as conn:
        t0 = time.perf_counter()
        for table, key in SCANS:
            conn.execute(sa.text(f"select count(*), count(distinct {key}) from {table}")).one()
        scan_s = time.perf_counter() - t0

    print(f"\nread_csv floor: {floor_s:.2f}s for {read_rows:,} rows "
          f"({read_rows / floor_s:,.0f} rows/s)")
    print(f"cycle / read_csv floor: {result.duration_s / floor_s:.1f}x")
    if copy is not None:
        print(f"PostgreSQL COPY floor: {copy[0]:.2f}s for {copy[1]:,} rows "
              f"({copy[1] / copy[0]:,.0f} rows/s); cycle / COPY floor: "
              f"{result.duration_s / copy[0]:.1f}x")
    if spark is not None:
        print(f"Spark CSV read floor: {spark[0]:.2f}s for {spark[1]:,} rows "
              f"({spark[1] / spark[0]:,.0f} rows/s); cycle / Spark floor: "
              f"{result.duration_s / spark[0]:.1f}x")
    print(f"GX suites (gate + post-build): {gx_s:.2f}s; one aggregate scan of the same "
          f"tables: {scan_s:.2f}s; ratio {gx_s / scan_s:.1f}x")
    _share(result)
    floors = None
    if load_s is not None:
        with warehouse(cfg.warehouse, read_only=True) as wh, wh.connect() as conn:
            types = staging_types(conn)
        stage_s, claims = stage_floor(floors_db, settings, types)
        floors = Floors(load_s, stage_s, claims)
        print("\n".join(report(result, floors, size, written)))
    floors_db.unlink(missing_ok=True)
    ok = result.status == "success"
    if args.days == 2:
        shutil.rmtree(feeds)
        day2 = args.day + timedelta(days=1)
        t0 = time.perf_counter()
        generate(feeds, day2, 1, args.claims, seed=1)
        size2 = sum(f.stat().st_size for f in land_day(feeds, cfg.ingest.landing_dir, day2))
        os.sync()
        print(f"\nday 2 ({day2}) generated in {time.perf_counter() - t0:.1f}s")
        written = disk_written_bytes()
        second = run_cycle(cfg, trigger="bench", as_of=day2)
        written = disk_written_bytes() - written
        print(f"cycle {second.run_id}: {second.status} {second.reason}")
        for step, secs in second.timings.items():
            print(f"{step:<10}{secs:>10.2f}")
        print(f"{'cycle':<10}{second.duration_s:>10.2f}")
        _share(second)
        if floors is not None:
            print("\n".join(report(second, floors, size2, written)))
            print(f"day 2 / day 1: {second.duration_s / result.duration_s:.2f}x "
                  "(target <= 1.15x)")
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
