"""The dbt project in ``pipeline/`` on PostgreSQL 15 (issue 19, item 2).

A real server (tests/pg_server.py). Three generated days (dqm_demo.generate: daily
employee and plan snapshots, claims with updates of earlier days, benign duplicate lines
on day 2, a corrections file on day 3) are written into the raw tables as ingest would
write them: the tables of monitor.stages.loaders.base (every feed column as text plus
the audit columns) and the batch ledger (monitor.store.batches.ledger_tables), the rows
streamed in with COPY. A claims batch on day 2 is *held*. Then:

1. ``dbt build --target postgres`` after each day (incremental, lookback 0);
2. the facts are copied to schema ``incremental``, ``dbt build --full-refresh`` rebuilds
   them: the copy must equal the rebuild row for row (EXCEPT ALL both ways), and so must
   a ``dbt build`` that re-reads every batch (lookback 1000);
3. the same batches in a DuckDB file, one ``dbt build`` there: the PostgreSQL facts must
   equal DuckDB's value for value, so every dispatched macro means the same on both.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dqm_demo.generate import generate, parse_injection
from monitor.core.config import IngestConfig, load_config
from monitor.stages.build import release_duckdb
from monitor.stages.loaders.base import RawStore

from .cleaning_values import edge_values
from .conftest import write_config
from .pg_server import PgServer, unavailable

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

try:
    import psycopg2  # the `postgres` extra, as dbt-postgres
except ImportError:
    unavailable("psycopg2 missing: pip install -e '.[postgres]' (scripts/setup does)")

PROJECT = Path(__file__).resolve().parent.parent / "pipeline"
FACTS = {"fct_employees": "employee_id", "fct_plans": "plan_id", "fct_claims": "claim_id"}
START, DAYS, CLAIMS_PER_DAY = date(2026, 3, 2), 3, 300
INJECT = ("benign_duplicates@2026-03-03", "corrections@2026-03-04")
FEED_ORDER = ("companies", "employees", "plans", "claims")
HELD_CLAIM = "C-HELD-0001"
RESTATED_CARRIER = "Restated Mutual"


@dataclass(frozen=True)
class Batch:
    """One landed file as ingest would have loaded it."""

    batch_id: str
    feed: str
    path: Path
    rows: list[list[Any]]  # feed columns as text, then the audit columns
    ledger: dict[str, Any]


def read_batch(path: Path, feed: str, load_seq: int, publish_seq: int | None,
               columns: list[str]) -> Batch:
    """Rows of a landed CSV file with the audit columns ingest adds: the 1-based line a
    record starts on (the header is line 1) and the load time."""
    batch_id = f"{load_seq:08d}-{feed}"
    ingested_at = datetime(2026, 3, 1) + timedelta(minutes=load_seq)
    rows: list[list[Any]] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == columns, path
        start = reader.line_num + 1
        for record in reader:
            assert len(record) == len(columns), (path, start, record)
            rows.append([*record, batch_id, str(path), start, ingested_at])
            start = reader.line_num + 1
    data = path.read_bytes()
    status = "held" if publish_seq is None else "published"
    ledger = dict(
        batch_id=batch_id, feed=feed, source_file=str(path),
        checksum=hashlib.sha256(data).hexdigest(), size_bytes=len(data), load_seq=load_seq,
        status=status, publish_seq=publish_seq, rows_read=len(rows), rows_loaded=len(rows),
        rows_quarantined=0, reason=None if publish_seq else "contract failed",
        ingested_at=ingested_at, decided_at=ingested_at, decided_by="contract",
        decision_reason="contracts passed" if publish_seq else "held by the test",
    )
    return Batch(batch_id, feed, path, rows, ledger)


def days_of_batches(tmp: Path, ingest: IngestConfig) -> list[list[Batch]]:
    """The generated days as batches in delivery order, plus: a held claims batch on
    day 2 (a claim that must never reach the facts), and on day 3 a new carrier for the
    plan and a new delivered EIN for the employee with the most claims so far (their
    stored claims must be restated, re-delivered or not)."""
    landing = tmp / "landing"
    generate(landing, START, DAYS, CLAIMS_PER_DAY, seed=11,
             inject=[parse_injection(text) for text in INJECT], progress=False)
    columns = {feed: list(spec.columns) for feed, spec in ingest.feeds.items()}
    day = [(START + timedelta(days=n)).isoformat() for n in range(DAYS)]
    extra: dict[tuple[int, str], list[Path]] = {
        (1, "claims"): [write_csv(landing / "claims" / "held.csv", columns["claims"], [[
            HELD_CLAIM, "P00000001-1", "E00000001", "2026-03-02", "2026-03-03", "1.00",
            "received", "A00", "Y", "", "2026-03-03 00:00:00"]])],
    }
    claims = [row for n in (0, 1) for row in read_rows(landing / "claims" / day[n])]
    plan_id = Counter(row[1] for row in claims).most_common(1)[0][0]
    employee_id = Counter(row[2] for row in claims).most_common(1)[0][0]
    plan = next(r for r in read_rows(landing / "plans" / day[2]) if r[0] == plan_id)
    employee = next(r for r in read_rows(landing / "employees" / day[2]) if r[0] == employee_id)
    eins = [r[0] for r in read_rows(landing / "companies" / day[0])]
    digits = "".join(c for c in employee[5] if c.isdigit())
    new_ein = next(e for e in eins if "".join(c for c in e if c.isdigit()) != digits)
    plan[4], plan[9] = RESTATED_CARRIER, "2026-03-05 00:00:00"
    employee[5], employee[10] = new_ein, "2026-03-05 00:00:00"
    extra[(2, "plans")] = [write_csv(landing / "plans" / "restated.csv", columns["plans"],
                                     [plan])]
    extra[(2, "employees")] = [write_csv(landing / "employees" / "restated.csv",
                                         columns["employees"], [employee])]

    held = extra[(1, "claims")][0]
    days: list[list[Batch]] = []
    load_seq = publish_seq = 0
    seen: set[str] = set()
    for n in range(DAYS):
        batches = []
        for feed in FEED_ORDER:
            files = sorted((landing / feed / day[n]).glob("*.csv")) + extra.get((n, feed), [])
            assert files, (feed, day[n])
            for path in files:
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


def read_rows(folder: Path) -> list[list[str]]:
    """The records of every CSV file in ``folder`` (headers dropped)."""
    rows: list[list[str]] = []
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="") as fh:
            rows += list(csv.reader(fh))[1:]
    return rows


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def copy_into_postgres(dsn: str, schema: str, batches: list[Batch]) -> None:
    """COPY each batch's rows into raw.<feed> and insert its ledger row, in one
    transaction per day as ingest commits a file with its ledger row."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for batch in batches:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(batch.rows)
            buf.seek(0)
            cur.copy_expert(f"copy {schema}.{batch.feed} from stdin with (format csv)", buf)
            names = list(batch.ledger)
            cur.execute(
                f"insert into {schema}.ingest_batches ({', '.join(names)})"
                f" values ({', '.join(['%s'] * len(names))})",
                [batch.ledger[n] for n in names],
            )


def insert_into_duckdb(engine: sa.Engine, store: RawStore, batches: list[Batch]) -> None:
    with engine.begin() as conn:
        for batch in batches:
            table = store.feeds[batch.feed]
            names = [c.name for c in table.columns]
            conn.execute(table.insert(), [dict(zip(names, row, strict=True))
                                          for row in batch.rows])
            conn.execute(store.batches.insert(), [batch.ledger])


@dataclass
class Scenario:
    tmp: Path
    server: PgServer
    results: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    pg_facts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    duckdb_facts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    diffs: dict[str, int] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    merge_sql: str = ""
    staging_sql: str = ""  # the last incremental run of stg_benefits__claims
    retracted: tuple[str, int, int] = ("", 0, 0)  # batch, staged rows before, after
    batches: list[list[Batch]] = field(default_factory=list)


def dbt(sc: Scenario, step: str, *args: str, target: str = "postgres", lookback: int = 0
        ) -> None:
    """One dbt command in process; every node's status recorded; fails on any error."""
    from dbt.cli.main import dbtRunner

    target_path = sc.tmp / f"target-{target}"
    cmd = [
        *args,
        "--target", target,
        "--project-dir", str(PROJECT),
        "--profiles-dir", str(PROJECT),
        "--target-path", str(target_path),
        "--log-path", str(sc.tmp / "logs"),
        # every merge looks the incoming keys up by key (the branch a large fact takes)
        "--vars", json.dumps({"lookback_batches": lookback, "lookup_rows_per_key": 0}),
        "--quiet",
    ]
    started = time.perf_counter()
    res = dbtRunner().invoke(cmd)
    sc.seconds[step] = time.perf_counter() - started
    assert (target_path / "run_results.json").exists(), f"dbt {step}: {res.exception}"
    run_results = json.loads((target_path / "run_results.json").read_text())
    statuses = [(r["unique_id"], str(r["status"])) for r in run_results["results"]]
    sc.results[step] = statuses
    assert res.success, f"dbt {step} failed: {res.exception} {statuses}"


def diff_against_copy(sc: Scenario, pg: sa.Engine, step: str) -> None:
    """Rows in main.<fact> and not in incremental.<fact>, and vice versa (EXCEPT ALL)."""
    with pg.connect() as conn:
        for table in FACTS:
            for a, b in (("main", "incremental"), ("incremental", "main")):
                sc.diffs[f"{step}:{table}:{a}-{b}"] = conn.execute(sa.text(
                    f"select count(*) from (select * from {a}.{table} except all"
                    f" select * from {b}.{table}) as diff"
                )).scalar_one()


def read_facts(conn: sa.Connection, schema: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for table, key in FACTS.items():
        rows = conn.execute(sa.text(f"select * from {schema}.{table} order by {key}"))
        out[table] = [dict(row._mapping) for row in rows]
    return out


@pytest.fixture(scope="module")
def scenario(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("dbt_postgres")
    sc = Scenario(tmp=tmp, server=pg_server)
    ingest = load_config(write_config(tmp)).ingest
    sc.batches = days_of_batches(tmp, ingest)
    duckdb_path = tmp / "reference.duckdb"

    pg = sa.create_engine(pg_server.url)
    store = RawStore(pg, ingest)  # the raw tables and the ledger, as ingest creates them
    with pg.begin() as conn:
        conn.execute(sa.text("drop schema if exists main cascade"))
        conn.execute(sa.text("drop schema if exists incremental cascade"))
        conn.execute(sa.text(f"drop schema if exists {ingest.schema} cascade"))
    store.create()

    with pytest.MonkeyPatch.context() as mp:
        for name, value in pg_server.env().items():
            mp.setenv(name, value)
        mp.setenv("MONITOR_PG_SCHEMA", "main")
        mp.setenv("MONITOR_WAREHOUSE_PATH", str(duckdb_path))
        mp.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        for name in ("MONITOR_DUCKDB_MEMORY_LIMIT", "MONITOR_DUCKDB_THREADS", "PGPASSWORD"):
            mp.delenv(name, raising=False)

        for n, day in enumerate(sc.batches, start=1):
            copy_into_postgres(pg_server.dsn(), ingest.schema, day)
            dbt(sc, f"day{n}", "build")
            with pg.connect() as conn:
                sc.counts[f"day{n}"] = {
                    t: conn.execute(sa.text(f"select count(*) from main.{t}")).scalar_one()
                    for t in FACTS
                }
        merge = (tmp / "target-postgres" / "run" / "benefits_pipeline" / "models" / "marts"
                 / "fct_claims.sql")
        sc.merge_sql = merge.read_text()
        staging = merge.parents[1] / "staging" / "benefits" / "stg_benefits__claims.sql"
        sc.staging_sql = staging.read_text()

        with pg.begin() as conn:
            conn.execute(sa.text("create schema incremental"))
            for table in FACTS:
                conn.execute(sa.text(
                    f"create table incremental.{table} as select * from main.{table}"))
        dbt(sc, "full_refresh", "build", "--full-refresh")
        diff_against_copy(sc, pg, "full_refresh")
        # every batch re-read and re-merged (by ctid, through the version guard): a no-op
        dbt(sc, "replay", "build", lookback=1000)
        diff_against_copy(sc, pg, "replay")
        with pg.connect() as conn:
            sc.pg_facts = read_facts(conn, "main")

        # `monitor reject --retract` of day 1's claims batch: the staging table's post-hook
        # deletes its rows at the next build (the facts keep them until a rollback)
        retracted = next(b for b in sc.batches[0] if b.feed == "claims").batch_id
        staged = sa.text("select count(*) from main.stg_benefits__claims where _batch_id = :b")
        with pg.begin() as conn:
            sc.retracted = (retracted, conn.execute(staged, {"b": retracted}).scalar_one(), -1)
            conn.execute(sa.text(f"update {ingest.schema}.ingest_batches set status = 'rejected'"
                                 " where batch_id = :b"), {"b": retracted})
        dbt(sc, "retract", "build", "--select", "stg_benefits__claims")
        with pg.connect() as conn:
            sc.retracted = (*sc.retracted[:2], conn.execute(staged, {"b": retracted}).scalar_one())

        duck = sa.create_engine(f"duckdb:///{duckdb_path}")
        duck_store = RawStore(duck, ingest)
        duck_store.create()
        insert_into_duckdb(duck, duck_store, [b for day in sc.batches for b in day])
        duck.dispose()
        dbt(sc, "duckdb_build", "build", target="dev")
        release_duckdb()  # dbt-duckdb keeps the file open, configured its own way
        duck = sa.create_engine(f"duckdb:///{duckdb_path}")
        with duck.connect() as conn:
            sc.duckdb_facts = read_facts(conn, "main")
        duck.dispose()
    pg.dispose()
    yield sc


# --- tests ------------------------------------------------------------------------------


def test_every_build_passes_with_its_tests(scenario: Scenario) -> None:
    print({step: round(s, 1) for step, s in scenario.seconds.items()})
    assert list(scenario.results) == [
        "day1", "day2", "day3", "full_refresh", "replay", "retract", "duckdb_build"]
    for step, statuses in scenario.results.items():
        bad = {uid: s for uid, s in statuses if s not in ("success", "pass")}
        assert not bad, (step, bad)
        kinds = {uid.split(".", 1)[0] for uid, _ in statuses}
        # unit tests ran too, and the on-run-start hook that creates the cleaning functions
        assert kinds == {"model", "test", "unit_test", "operation"}, (step, kinds)
        built = {uid.rsplit(".", 1)[-1] for uid, s in statuses if uid.startswith("model.")}
        assert set(FACTS) <= built or step == "retract", step
    day1 = dict(scenario.results["day1"])
    assert sum(uid.startswith("unit_test.") for uid in day1) >= 9
    assert sum(uid.startswith("test.") for uid in day1) >= 20


def test_incremental_days_equal_full_refresh_and_replay_is_noop(scenario: Scenario) -> None:
    assert len(scenario.diffs) == 2 * 2 * len(FACTS), scenario.diffs
    assert scenario.diffs == dict.fromkeys(scenario.diffs, 0)
    # and the facts are not trivially equal: they grew day by day
    claims = [scenario.counts[f"day{n}"]["fct_claims"] for n in (1, 2, 3)]
    assert 0 < claims[0] < claims[1] < claims[2], claims
    for table, key in FACTS.items():
        keys = [row[key] for row in scenario.pg_facts[table]]
        assert keys and len(keys) == len(set(keys)), table


def test_postgres_facts_equal_duckdb_facts(scenario: Scenario) -> None:
    """Same batches, two engines: the same facts, column for column (dates parsed in all
    four formats, regex cleaning, inferred EINs, restatements, the version guard)."""
    for table in FACTS:
        pg, duck = scenario.pg_facts[table], scenario.duckdb_facts[table]
        assert [list(r) for r in pg[:1]] == [list(r) for r in duck[:1]], table
        assert len(pg) == len(duck), table
        mismatched = [(a, b) for a, b in zip(pg, duck, strict=True) if a != b]
        assert not mismatched, (table, len(mismatched), mismatched[:2])


def test_cleaning_gives_real_values(scenario: Scenario) -> None:
    claims = scenario.pg_facts["fct_claims"]
    employees = scenario.pg_facts["fct_employees"]
    plans = scenario.pg_facts["fct_plans"]
    assert HELD_CLAIM not in {c["claim_id"] for c in claims}  # held batch not published
    # every delivered date format parsed: no claim without a service or received date
    assert all(isinstance(c["service_date"], date) for c in claims)
    assert all(isinstance(c["received_date"], date) for c in claims)
    assert all(c["claim_age_days"] == (c["received_date"] - c["service_date"]).days
               for c in claims)
    visits = {c["visit_type"] for c in claims} - {None}
    assert "outpatient" in visits and all(v == v.lower().strip() and v for v in visits), visits
    assert sum(c["auth_code"] is not None for c in claims) > len(claims) / 4
    assert all(c["updated_at"] is not None for c in claims)
    # the corrections of day 3 lowered amounts of earlier claims: their newest version won
    day3 = [b for b in scenario.batches[2] if b.feed == "claims" and "supplement" in b.path.name]
    assert day3, "no corrections file"
    corrected = {row[0] for row in day3[0].rows}
    stored = [c for c in claims if c["claim_id"] in corrected]
    assert stored and all(c["_batch_id"] == day3[0].batch_id for c in stored)
    assert all(e["email"] == e["email"].strip().lower() for e in employees if e["email"])
    sources = {e["company_ein_source"] for e in employees}
    assert {"source", "company_name"} <= sources, sources
    assert all(e["company_ein"] is None or len(e["company_ein"]) == 10 for e in employees)
    assert all(isinstance(e["hire_date"], date) for e in employees)
    dated = [p for p in plans if p["start_date"] is not None and p["updated_at"] is not None]
    assert len(dated) > len(plans) / 2
    assert all(p["plan_duration_days"] == ((p["end_date"] or p["updated_at"].date())
                                           - p["start_date"]).days for p in dated)
    assert {p["plan_type"] for p in plans} - {None} and all(
        p["plan_type"] == p["plan_type"].lower() for p in plans if p["plan_type"])


def test_merge_on_postgres_replaces_by_ctid_under_a_lock(scenario: Scenario) -> None:
    sql = " ".join(scenario.merge_sql.split())
    fact = '"warehouse"."main"."fct_claims"'
    assert sql.startswith(f"lock table {fact} in exclusive mode;"), sql[:200]
    # the doomed rows are fetched by TID (a TID scan), not by a semi join over the whole fact
    assert (f"delete from {fact} as DBT_INTERNAL_DEST where DBT_INTERNAL_DEST.ctid = any(array("
            " select stored._stored_rowid") in sql
    assert ".rowid" not in sql
    guard, replace = sql.index("as incoming using"), sql.index(f"delete from {fact}")
    assert guard < replace < sql.index(f"insert into {fact}")
    # the stored rows of the incoming keys are looked up by key (lookup_rows_per_key: 0)
    assert ("where DBT_INTERNAL_DEST.claim_id = any(array( select "
            "DBT_INTERNAL_SOURCE.claim_id from") in sql, sql
    # the read of the stored rows is bounded by the incoming keys' range (the key's b-tree)
    bounds = re.findall(r"DBT_INTERNAL_DEST\.claim_id between cast\('(C\d+)' as "
                        r"(text|character varying)\) and cast\('(C\d+)' as \2\)", sql)
    assert len(bounds) == 1 and bounds[0][0] < bounds[0][2], sql


def test_staging_replaces_the_batches_the_ledger_names(scenario: Scenario) -> None:
    """replace_batches (stg_benefits__claims): the delete finds the batches to replace in
    the ledger, the feed's batches published above the table's watermark, not by reading
    the incoming rows (an unanalyzed temporary table, which the planner took for 200
    batches and answered with a sequential scan of the whole staging table); then the
    incoming rows are inserted (macros/incremental/replace_batches.sql)."""
    sql = " ".join(scenario.staging_sql.split())
    delete = re.search(
        r'delete from "warehouse"\."main"\."stg_benefits__claims" where _batch_id in '
        r'\( select batch_id from "warehouse"\."raw"\."ingest_batches" where status = '
        r"'published' and feed = 'claims' and cast\(publish_seq as bigint\) > (\d+) ", sql)
    assert delete, sql[:400]
    assert int(delete.group(1)) > 0  # an incremental run's watermark
    insert = re.search(r'insert into "warehouse"\."main"\."stg_benefits__claims" \(.*?\) '
                       r'select .*? from "(stg_benefits__claims__dbt_tmp\d+)"', sql)
    assert insert and insert.start() > delete.end(), sql
    assert sql.count(insert.group(1)) == 1  # read once: by the insert


def test_a_plan_and_an_employee_change_restate_stored_claims(scenario: Scenario) -> None:
    """The restatement path of fct_claims on PostgreSQL (ctid, star_except, the union of
    incoming and restated rows): claims stored on days 1-2 and not re-delivered take the
    plan's new carrier and the employee's new EIN from day 3's extra batches."""
    day3 = scenario.batches[2]
    plan_batch = next(b for b in day3 if b.path.name == "restated.csv" and b.feed == "plans")
    employee_batch = next(b for b in day3
                          if b.path.name == "restated.csv" and b.feed == "employees")
    plan_id, employee_id = plan_batch.rows[0][0], employee_batch.rows[0][0]
    new_ein = employee_batch.rows[0][5]
    claims = scenario.pg_facts["fct_claims"]
    of_plan = [c for c in claims if c["plan_id"] == plan_id]
    assert of_plan and all(c["carrier"] == RESTATED_CARRIER for c in of_plan)
    plan_seq = plan_batch.ledger["publish_seq"]
    restated = [c for c in of_plan if c["_publish_seq"] < plan_seq]
    assert restated, "no stored claim of the plan to restate"
    assert all(c["_enriched_publish_seq"] >= plan_seq for c in restated)
    of_employee = [c for c in claims if c["employee_id"] == employee_id]
    assert of_employee and all(
        c["company_ein"] is not None
        and c["company_ein"].replace("-", "") == new_ein.replace("-", "").replace(" ", "")
        for c in of_employee)
    employee_seq = employee_batch.ledger["publish_seq"]
    assert any(c["_publish_seq"] < employee_seq <= c["_enriched_publish_seq"]
               for c in of_employee)
    employees = {e["employee_id"]: e for e in scenario.pg_facts["fct_employees"]}
    assert employees[employee_id]["company_ein_source"] == "source"


def test_a_retracted_batch_leaves_the_staging_table(scenario: Scenario) -> None:
    """delete_retracted_batches, the post-hook of stg_benefits__claims, on PostgreSQL."""
    batch, before, after = scenario.retracted
    assert batch.endswith("-claims") and before > 100 and after == 0, scenario.retracted


def test_cleaning_functions_parse_as_duckdb(scenario: Scenario) -> None:
    """The PL/pgSQL date and timestamp parsing (created by the project's on-run-start
    hook) gives DuckDB's try_strptime results, value for value, on every shape; where the
    engines differ by design (year 0, whitespace runs) PostgreSQL gives NULL."""
    import duckdb

    values = edge_values()
    cleaned = [None if v.strip().lower() in ("", "null", "n/a", "none") else v.strip()
               for v in values]
    pg = sa.create_engine(scenario.server.url)
    with pg.connect() as conn:
        got = conn.execute(
            sa.text("select main.dq_parse_date(v), main.dq_parse_timestamp(v), "
                    "main.dq_clean_null(raw) from unnest(cast(:v as text[]), "
                    "cast(:raw as text[])) as t (v, raw)"),
            {"v": cleaned, "raw": values}).all()
    duck = duckdb.connect()
    want = duck.execute(
        "select cast(try_strptime(v, ['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y']) as date),"
        " try_strptime(v, ['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%SZ', '%Y-%m-%dT%H:%M:%S'])"
        " from unnest(cast(? as varchar[])) with ordinality as t (v, i) order by i",
        [cleaned]).fetchall()
    assert [row[2] for row in got] == cleaned
    dates = [(v, g[0], w[0]) for v, g, w in zip(cleaned, got, want, strict=True) if g[0] != w[0]]
    stamps = [(v, g[1], w[1]) for v, g, w in zip(cleaned, got, want, strict=True) if g[1] != w[1]]
    assert not dates, dates[:5]
    assert not stamps, stamps[:5]
    assert sum(g[0] is not None for g in got) > 100 and sum(g[1] is not None for g in got) > 300
    with pg.connect() as conn:
        assert conn.execute(sa.text(
            "select main.dq_parse_date('0000-01-01'), "
            "main.dq_parse_timestamp('2026-01-05  10:00:00')")).one() == (None, None)


def test_tables_are_indexed_on_what_later_reads_look_them_up_by(scenario: Scenario) -> None:
    """macros/lookup_indexes.sql on PostgreSQL: each table model has a b-tree on its
    watermark column (and the enriched seq, where it has one), its unique_key and each
    column a relationships test names (after the full refresh recreated the tables
    too); views have none."""
    pg = sa.create_engine(scenario.server.url)
    try:
        with pg.connect() as conn:
            found = conn.execute(sa.text(
                "select tablename, indexdef from pg_indexes where schemaname = 'main'")).all()
    finally:
        pg.dispose()
    indexed: dict[str, set[str]] = {}
    for table, definition in found:
        assert "USING btree" in definition, definition
        indexed.setdefault(table, set()).add(definition.rsplit("(", 1)[1].rstrip(")"))
    assert indexed["fct_claims"] == {"_publish_seq", "_enriched_publish_seq", "claim_id",
                                     "plan_id", "employee_id"}
    assert indexed["stg_benefits__claims"] == {"_publish_seq", "_batch_id"}
    assert indexed["int_plans__versions"] == {"_publish_seq", "_version_key"}
    assert "int_claims__enriched" not in indexed  # a view
