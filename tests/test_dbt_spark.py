"""The dbt project in ``pipeline/`` on Apache Spark over Spark Connect (issue 20, item 3).

A real Spark Connect server (tests/spark_server.py, local[2]) and dbt-spark's session
method (``--target spark``, ``SPARK_REMOTE`` as the monitor sets it). CI-sized: Spark
costs ~40x DuckDB per statement, so two generated days of a few dozen claims (the
employees and plans cut to the claimants), ``dbt run`` per day and one ``dbt test``.
The raw tables are created by the monitor's own Spark engine (monitor.stages.loaders.base
RawStore on SparkBackend) and filled through the pyspark session. Besides the generated
rows, day 1 and day 2 carry:

- a claim whose service_date moves to another date on day 2: its old partition held
  only it, so the partition must be gone, not just rewritten (partition overwrite);
- a late older version of a claim on day 2: it must not overwrite the newer stored row
  (the version guard), nor move it;
- a held claims batch on day 2: never merged.

Then the incremental facts are copied aside and ``dbt run --full-refresh`` must give the
same rows (EXCEPT ALL both ways); the same batches on DuckDB must give the same facts
value for value; a retracted batch's staging partition is dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dqm_demo.generate import generate
from monitor.core.config import IngestConfig, load_config
from monitor.stages.build import release_duckdb
from monitor.stages.loaders.base import RawStore
from monitor.warehouse.connection import backend_of
from monitor.warehouse.spark import SparkBackend
from monitor.warehouse.spark_session import spark_session, stop_sessions

from .conftest import write_config
from .spark_server import SparkServer
from .test_dbt_postgres import Batch, insert_into_duckdb, read_batch, read_rows, write_csv

pytestmark = [pytest.mark.spark, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parent.parent / "pipeline"
FACTS = {"fct_employees": "employee_id", "fct_plans": "plan_id", "fct_claims": "claim_id"}
START, DAYS, CLAIMS_PER_DAY = date(2026, 3, 2), 2, 30
FEED_ORDER = ("companies", "employees", "plans", "claims")
MOVED, LATE, HELD = "C-MOVE-0001", "C-LATE-0001", "C-HELD-0001"
MOVED_FROM, MOVED_TO = date(2025, 12, 1), date(2026, 2, 20)


@dataclass
class Scenario:
    tmp: Path
    url: str
    batches: list[list[Batch]] = field(default_factory=list)
    results: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    diffs: dict[str, int] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    spark_facts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    duckdb_facts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    claim_partitions: dict[str, list[str]] = field(default_factory=dict)
    retracted: tuple[str, list[str], list[str]] = ("", [], [])  # batch, partitions before/after
    monitor_counts: dict[str, int] = field(default_factory=dict)


def claim(columns: list[str], claim_id: str, base: dict[str, str], **values: str) -> list[str]:
    """A claims row: ``base``'s plan and claimant, the given values, the rest plain."""
    row = {"claim_id": claim_id, "plan_id": base["plan_id"], "employee_id": base["employee_id"],
           "received_date": "2026-03-02", "amount": "100.00", "status": "received",
           "diagnosis_code": "A00", "is_in_network": "Y", "notes": "visit: outpatient"}
    row |= values
    return [row[c] for c in columns]


def tiny_days(tmp: Path, ingest: IngestConfig) -> list[list[Batch]]:
    """The generated days as batches in delivery order, employees and plans cut to the
    claimants (a few dozen rows each), plus the moved, late and held claims."""
    landing = tmp / "landing"
    generate(landing, START, DAYS, CLAIMS_PER_DAY, seed=7, progress=False)
    columns = {feed: list(spec.columns) for feed, spec in ingest.feeds.items()}
    day = [(START + timedelta(days=n)).isoformat() for n in range(DAYS)]
    claims = [row for n in range(DAYS) for row in read_rows(landing / "claims" / day[n])]
    employees = {row[2] for row in claims}
    plans = {row[1] for row in claims}
    keep = {"employees": (0, employees), "plans": (0, plans)}
    for feed, (col, wanted) in keep.items():
        for n in range(DAYS):
            for path in (landing / feed / day[n]).glob("*.csv"):
                with path.open(newline="") as fh:
                    rows = [r for r in list(csv.reader(fh))[1:] if r[col] in wanted]
                write_csv(path, columns[feed], rows)
    base = dict(zip(columns["claims"], claims[0], strict=True))
    cols = columns["claims"]
    extra = {
        (0, "claims"): [write_csv(landing / "claims" / "day1_extra.csv", cols, [
            claim(cols, MOVED, base, service_date=MOVED_FROM.isoformat(),
                  updated_at="2026-03-02 08:00:00"),
            claim(cols, LATE, base, service_date="2026-02-25", amount="100.00",
                  updated_at="2026-03-02 12:00:00")])],
        (1, "claims"): [
            write_csv(landing / "claims" / "day2_extra.csv", cols, [
                claim(cols, MOVED, base, service_date=MOVED_TO.strftime("%m/%d/%Y"),
                      updated_at="2026-03-03 08:00:00"),
                claim(cols, LATE, base, service_date="2026-02-26", amount="999.00",
                      updated_at="2026-03-01 00:00:00")]),
            write_csv(landing / "claims" / "held.csv", cols, [
                claim(cols, HELD, base, service_date="2026-03-01",
                      updated_at="2026-03-03 00:00:00")])],
    }
    held = extra[(1, "claims")][1]
    days: list[list[Batch]] = []
    load_seq = publish_seq = 0
    seen: set[str] = set()
    for n in range(DAYS):
        batches = []
        for feed in FEED_ORDER:
            for path in sorted((landing / feed / day[n]).glob("*.csv")) + extra.get((n, feed), []):
                checksum = hashlib.sha256(path.read_bytes()).hexdigest()
                if checksum in seen:  # the companies file, re-delivered: a no-op in ingest
                    continue
                seen.add(checksum)
                load_seq += 1
                publish = path != held
                publish_seq += publish
                batches.append(read_batch(path, feed, load_seq, publish_seq if publish else None,
                                          columns[feed]))
        days.append(batches)
    return days


def load_into_spark(spark: Any, store: RawStore, batches: list[Batch]) -> None:
    """Each batch's rows appended to raw.<feed> through the pyspark session (by column
    name: on Spark the batch partition column comes last), and its ledger row recorded
    as ingest records it (``Backend.record_batch``: a row of the ledger's log)."""
    from pyspark.sql.types import StructType

    by_table: dict[str, list[tuple[Any, ...]]] = {}
    for batch in batches:
        by_table.setdefault(batch.feed, []).extend(tuple(r) for r in batch.rows)
    for name, rows in by_table.items():
        table = f"{store.cfg.schema}.{name}"
        stored = spark.table(table)
        in_rows = StructType([stored.schema[c.name] for c in store.feeds[name].columns])
        spark.createDataFrame(rows, schema=in_rows).select(*stored.columns) \
            .write.insertInto(table)
    backend = backend_of(store.engine)
    with store.engine.connect() as conn:
        for b in batches:
            backend.record_batch(conn, store.batches, b.ledger)


def set_status(store: RawStore, batch_id: str, status: str) -> None:
    """A batch's decision as the monitor records it (``Backend.decide_batch``)."""
    with store.engine.connect() as conn:
        backend_of(store.engine).decide_batch(conn, store.batches, batch_id,
                                              {"status": status})


def dbt(sc: Scenario, step: str, *args: str, target: str = "spark") -> None:
    """One dbt command in process; every node's status recorded; fails on any error."""
    from dbt.cli.main import dbtRunner

    target_path = sc.tmp / f"target-{target}"
    cmd = [*args, "--target", target, "--project-dir", str(PROJECT),
           "--profiles-dir", str(PROJECT), "--target-path", str(target_path),
           "--log-path", str(sc.tmp / "logs"), "--vars", json.dumps({"lookback_batches": 0}),
           "--quiet"]
    started = time.perf_counter()
    res = dbtRunner().invoke(cmd)
    sc.seconds[step] = time.perf_counter() - started
    assert (target_path / "run_results.json").exists(), f"dbt {step}: {res.exception}"
    run_results = json.loads((target_path / "run_results.json").read_text())
    statuses = [(r["unique_id"], str(r["status"])) for r in run_results["results"]]
    sc.results[step] = statuses
    assert res.success, f"dbt {step} failed: {res.exception} {statuses}"


def partitions(spark: Any, table: str) -> list[str]:
    return sorted(str(r[0]) for r in spark.sql(f"show partitions {table}").collect())


def read_facts(rows_of: Any) -> dict[str, list[dict[str, Any]]]:
    return {table: sorted(rows_of(table), key=lambda r: str(r[key]))
            for table, key in FACTS.items()}


def run_scenario(sc: Scenario, mp: pytest.MonkeyPatch) -> None:
    """The days on Spark, the full-refresh comparison, a retraction, then DuckDB."""
    ingest = load_config(write_config(sc.tmp)).ingest
    sc.batches = tiny_days(sc.tmp, ingest)
    spark = spark_session(sc.url)
    for schema in ("main", "incremental", ingest.schema):
        spark.sql(f"drop database if exists {schema} cascade")
    cfg = dataclasses.replace(load_config(write_config(sc.tmp)).warehouse, url=sc.url)
    engine = SparkBackend().create_engine(cfg)
    store = RawStore(engine, ingest)  # the raw tables and the ledger, as ingest creates them
    store.create()
    duckdb_path = sc.tmp / "reference.duckdb"
    for name, value in SparkBackend().dbt_environment(cfg).items():
        mp.setenv(name, value)
    mp.setenv("MONITOR_SPARK_SCHEMA", "main")
    mp.setenv("MONITOR_SPARK_THREADS", "2")  # local[2]: the independent models overlap
    mp.setenv("MONITOR_WAREHOUSE_PATH", str(duckdb_path))
    mp.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")

    for n, day in enumerate(sc.batches, start=1):
        load_into_spark(spark, store, day)
        dbt(sc, f"day{n}", "run")
        sc.counts[f"day{n}"] = {t: spark.table(f"main.{t}").count() for t in FACTS}
        sc.claim_partitions[f"day{n}"] = partitions(spark, "main.fct_claims")

    # the monitor's own engine filters on `_`-named partition columns (SESSION_CONF)
    first_claims = next(b for b in sc.batches[0] if b.feed == "claims")
    engine = SparkBackend().create_engine(cfg)
    with engine.connect() as conn:
        sc.monitor_counts = {
            "staged": conn.exec_driver_sql(
                "select count(*) from main.stg_benefits__claims where _batch_id = "
                f"'{first_claims.batch_id}'").scalar_one(),
            "versions": conn.exec_driver_sql(
                "select count(*) from main.int_plans__versions where _publish_seq > 0"
            ).scalar_one()}
    engine.dispose()
    sc.monitor_counts["delivered"] = len(first_claims.rows)

    spark.sql("create database incremental")
    for table in FACTS:
        spark.sql(f"create table incremental.{table} as select * from main.{table}")
    dbt(sc, "full_refresh", "run", "--full-refresh")
    for table in FACTS:
        for a, b in (("main", "incremental"), ("incremental", "main")):
            sc.diffs[f"{table}:{a}-{b}"] = spark.sql(
                f"select * from {a}.{table} except all select * from {b}.{table}").count()
    dbt(sc, "test", "test")
    sc.spark_facts = read_facts(
        lambda t: [r.asDict() for r in spark.table(f"main.{t}").collect()])

    # `monitor reject --retract` of day 1's first claims batch: its partition is dropped
    retracted = next(b for b in sc.batches[0] if b.feed == "claims").batch_id
    before = partitions(spark, "main.stg_benefits__claims")
    set_status(store, retracted, "rejected")
    dbt(sc, "retract", "run", "--select", "stg_benefits__claims")
    sc.retracted = (retracted, before, partitions(spark, "main.stg_benefits__claims"))

    duck = sa.create_engine(f"duckdb:///{duckdb_path}")
    duck_store = RawStore(duck, ingest)
    duck_store.create()
    insert_into_duckdb(duck, duck_store, [b for day in sc.batches for b in day])
    duck.dispose()
    dbt(sc, "duckdb_run", "run", target="dev")
    release_duckdb()
    duck = sa.create_engine(f"duckdb:///{duckdb_path}")
    with duck.connect() as conn:
        sc.duckdb_facts = read_facts(lambda t: [
            dict(r._mapping) for r in conn.execute(sa.text(f"select * from main.{t}"))])
    duck.dispose()


@pytest.fixture(scope="module")
def scenario(spark_server: SparkServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Scenario]:
    sc = Scenario(tmp=tmp_path_factory.mktemp("dbt_spark"), url=spark_server.url)
    with pytest.MonkeyPatch.context() as mp:
        try:
            run_scenario(sc, mp)
        finally:
            stop_sessions()
    print({step: round(s, 1) for step, s in sc.seconds.items()})
    yield sc
    # the other Spark modules share the server (one xdist group): leave it empty
    spark = spark_session(sc.url)
    for schema in ("main", "incremental", "raw"):
        spark.sql(f"drop database if exists {schema} cascade")
    stop_sessions()


# --- tests ------------------------------------------------------------------------------


def test_every_run_and_test_passes(scenario: Scenario) -> None:
    assert list(scenario.results) == [
        "day1", "day2", "full_refresh", "test", "retract", "duckdb_run"]
    for step, statuses in scenario.results.items():
        bad = {uid: s for uid, s in statuses if s not in ("success", "pass")}
        assert not bad, (step, bad)
    built = {uid.rsplit(".", 1)[-1] for uid, _ in scenario.results["day2"]}
    assert set(FACTS) <= built
    tests = dict(scenario.results["test"])
    assert sum(uid.startswith("test.") for uid in tests) >= 20
    assert sum(uid.startswith("unit_test.") for uid in tests) >= 9


def test_incremental_days_equal_full_refresh(scenario: Scenario) -> None:
    assert len(scenario.diffs) == 2 * len(FACTS)
    assert scenario.diffs == dict.fromkeys(scenario.diffs, 0)
    claims = [scenario.counts[f"day{n}"]["fct_claims"] for n in (1, 2)]
    assert 0 < claims[0] < claims[1], claims
    for table, key in FACTS.items():
        keys = [row[key] for row in scenario.spark_facts[table]]
        assert keys and len(keys) == len(set(keys)), table


def test_a_moved_claim_leaves_no_row_and_no_partition_behind(scenario: Scenario) -> None:
    claims = {c["claim_id"]: c for c in scenario.spark_facts["fct_claims"]}
    assert claims[MOVED]["service_date"] == MOVED_TO
    assert sum(c["service_date"] == MOVED_FROM for c in claims.values()) == 0
    old = f"service_date={MOVED_FROM.isoformat()}"
    assert old in scenario.claim_partitions["day1"]
    assert old not in scenario.claim_partitions["day2"]
    assert f"service_date={MOVED_TO.isoformat()}" in scenario.claim_partitions["day2"]


def test_a_late_older_version_does_not_overwrite_and_a_held_batch_is_not_merged(
        scenario: Scenario) -> None:
    claims = {c["claim_id"]: c for c in scenario.spark_facts["fct_claims"]}
    late = claims[LATE]
    assert late["amount"] == Decimal("100.00")
    assert late["service_date"] == date(2026, 2, 25)
    assert late["updated_at"] == datetime(2026, 3, 2, 12, 0)
    assert late["_batch_id"] == next(b.batch_id for b in scenario.batches[0]
                                     if b.path.name == "day1_extra.csv")
    assert HELD not in claims


def test_spark_facts_equal_duckdb_facts(scenario: Scenario) -> None:
    """Same batches, two engines: the same facts, column for column (Spark's partition
    column comes last in its table; compared by name)."""
    for table in FACTS:
        spark, duck = scenario.spark_facts[table], scenario.duckdb_facts[table]
        assert len(spark) == len(duck) > 0, table
        assert set(spark[0]) == set(duck[0]), table
        mismatched = [(a, b) for a, b in zip(spark, duck, strict=True) if a != b]
        assert not mismatched, (table, len(mismatched), mismatched[:2])


def test_a_retracted_batch_partition_is_dropped(scenario: Scenario) -> None:
    batch, before, after = scenario.retracted
    assert f"_batch_id={batch}" in before
    assert after == [p for p in before if p != f"_batch_id={batch}"]


def test_the_monitor_reads_partitions_named_with_an_underscore(scenario: Scenario) -> None:
    """The Hive metastore cannot filter on `_batch_id` or `_publish_seq`: the monitor's
    session falls back to listing partitions (spark_session.SESSION_CONF) as dbt's does."""
    counts = scenario.monitor_counts
    assert counts["staged"] == counts["delivered"] > 0, counts
    assert counts["versions"] > 0, counts
