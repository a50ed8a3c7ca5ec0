"""The dbt project in ``pipeline/``: cleaning, and above all the facts' incremental merge.

One scenario runs dbt (in process) against a DuckDB file in a temp dir and keeps what
each step left behind; the tests below assert on those snapshots. Batches:

1. companies, employees (with an exact duplicate line), plans, claims -> ``dbt build``.
2. an employee update (+ its exact duplicate), claim updates (+ duplicate) and a new
   claim whose plan does not exist yet, a plan update changing a carrier
   -> incremental ``dbt run`` with lookback 0, so only the new batches are read.
3. older versions of a claim and an employee arriving late, an unchanged employee
   re-delivered, a new employee without EIN,
   the late plan, a company update, and a *held* claims batch -> incremental, lookback 0.
4. a claim's service_date and a plan's start_date corrected to later dates (the
   partition columns) -> incremental, lookback 0.
5. the facts are copied aside, then ``dbt run --full-refresh``: must equal the copy.
6. ``dbt build`` replaying every batch (lookback 1000): must equal the copy again.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest

from monitor.core.config import load_config
from monitor.stages.build import release_duckdb
from monitor.stages.ingest import ingest
from monitor.store import batches
from monitor.warehouse.connection import warehouse

from .cleaning_values import edge_values, null_spelling_values
from .conftest import write_config

PROJECT = Path(__file__).resolve().parent.parent / "pipeline"
FACTS = {"fct_employees": "employee_id", "fct_plans": "plan_id", "fct_claims": "claim_id"}
# The incremental tables held to incremental == full refresh == replay: the facts and
# the versions of the dimension feeds (their first publication, their last delivery).
INCREMENTAL = (*FACTS, "int_employees__versions", "int_plans__versions",
               "int_companies__versions")

FEED_COLUMNS = {
    "employees": [
        "employee_id", "first_name", "last_name", "email", "company_name", "company_ein",
        "hire_date", "termination_date", "is_active", "notes", "updated_at",
    ],
    "plans": [
        "plan_id", "employee_id", "plan_name", "plan_type", "carrier", "start_date",
        "end_date", "monthly_premium", "is_cobra", "updated_at",
    ],
    "claims": [
        "claim_id", "plan_id", "employee_id", "service_date", "received_date", "amount",
        "status", "diagnosis_code", "is_in_network", "notes", "updated_at",
    ],
    "companies": [
        "company_ein", "company_name", "domain", "industry", "headcount", "revenue", "updated_at",
    ],
}

# --- the raw data, as the generator would write it (all text) ----------------------

COMPANIES_1 = [
    ["12-3456789", "Acme, Inc.", "https://www.Acme.com/", "Software", "250", "12000000.50",
     "2026-01-01 00:00:00"],
    ["98 7654321", "Globex LLC", "www.globex.com", "Manufacturing", "1200", "N/A",
     "2026-01-01T00:00:00Z"],
]
EMPLOYEES_1 = [
    ["E1", "John", "Doe", "  John.Doe@Acme.COM ", "Acme Inc", "123456789", "2020-01-15", "",
     "Y", "dept: Sales; level: L3", "2026-01-01 10:00:00"],
    ["E1", "John", "Doe", "  John.Doe@Acme.COM ", "Acme Inc", "123456789", "2020-01-15", "",
     "Y", "dept: Sales; level: L3", "2026-01-01 10:00:00"],  # exact duplicate line
    ["E2", "Jane", "Roe", "jane@globex.com", "Globex", "", "03/01/2021", "NULL", "true",
     "dept: Ops; level: L2", "2026-01-01T10:00:00Z"],
    ["E3", "Bob", "Poe", "BOB@acme.com", "Unknown Co", "none", "20190701", "05-Mar-2026", "N",
     "level: L1", "2026-03-05 09:00:00"],
]
PLANS_1 = [
    ["P1", "E1", "Gold PPO", "Medical", "Aetna", "2026-01-01", "", "450.00", "no",
     "2026-01-01 00:00:00"],
    ["P2", "E2", "Silver HMO", "medical", "Kaiser", "01/01/2026", "12/31/2026", "300", "0",
     "2026-01-01 00:00:00"],
    ["P3", "E3", "Dental Basic", "dental", "Delta", "20260101", "N/A", "25.5", "YES",
     "2026-01-01 00:00:00"],
]
CLAIMS_1 = [
    ["C1", "P1", "E1", "2026-02-01", "2026-02-10", "125.50", "submitted", "j20.9", "Y",
     "auth: A12345; visit: outpatient", "2026-02-10 08:00:00"],
    ["C2", "P2", "E2", "02/03/2026", "20260215", "80", "submitted", "R51", "false",
     "visit: Inpatient", "2026-02-15 08:00:00"],
    ["C3", "P3", "E3", "05-Feb-2026", "2026-02-20", "40", "submitted", "K02.9", "1",
     "", "2026-02-20 08:00:00"],
    ["C4", "P1", "E1", "2026-01-20", "2026-01-22", "60", "paid", "Z00.0", "yes",
     "auth: B777", "2026-01-22 08:00:00"],
]

EMPLOYEES_2 = [  # E1 moves department; the update line is delivered twice
    ["E1", "John", "Doe", "john.doe@acme.com", "Acme Inc", "12-3456789", "2020-01-15", "",
     "Y", "dept: Marketing; level: L4", "2026-02-01 00:00:00"],
    ["E1", "John", "Doe", "john.doe@acme.com", "Acme Inc", "12-3456789", "2020-01-15", "",
     "Y", "dept: Marketing; level: L4", "2026-02-01 00:00:00"],
]
CLAIMS_2 = [
    ["C1", "P1", "E1", "2026-02-01", "2026-02-10", "130.00", "paid", "J20.9", "Y",
     "auth: A12345; visit: outpatient", "2026-02-15 09:00:00"],
    ["C1", "P1", "E1", "2026-02-01", "2026-02-10", "130.00", "paid", "J20.9", "Y",
     "auth: A12345; visit: outpatient", "2026-02-15 09:00:00"],  # exact duplicate line
    ["C3", "P3", "E3", "05-Feb-2026", "2026-02-20", "40", "paid", "K02.9", "1",
     "", "2026-02-25 08:00:00"],
    ["C5", "P4", "E2", "2026-02-05", "2026-02-06", "15", "submitted", "H10.3", "y",
     "visit: vision", "2026-02-06 08:00:00"],  # its plan P4 arrives only in batch 3
]
PLANS_2 = [  # P1 changes carrier: C1 and C4 must show it although C4 is not re-delivered
    ["P1", "E1", "Gold PPO", "Medical", "Cigna", "2026-01-01", "", "460.00", "no",
     "2026-02-01 00:00:00"],
]

CLAIMS_3 = [  # an OLDER version of C3 arrives late: must not overwrite the paid one
    ["C3", "P3", "E3", "05-Feb-2026", "2026-02-20", "40", "denied", "K02.9", "1",
     "", "2026-02-21 08:00:00"],
    ["C6", "P2", "E2", "2026-03-01", "2026-03-04", "99.99", "submitted", "R51", "0",
     "", "2026-03-04 08:00:00"],
]
PLANS_3 = [
    ["P4", "E2", "Vision Plus", "VISION", "VSP", "2026-02-01", "", "10", "n",
     "2026-02-01 00:00:00"],
]
EMPLOYEES_3 = [
    # an OLDER version of E1 arrives late
    ["E1", "John", "Doe", "john.doe@acme.com", "Acme Inc", "12-3456789", "2020-01-15", "",
     "Y", "dept: Legal; level: L9", "2026-01-15 00:00:00"],
    # E3 again, unchanged once cleaned (a daily snapshot re-delivers every row): the
    # same version, so neither E3 nor its claims are restated
    ["E3", "Bob", "Poe", "bob@acme.com", "Unknown Co", "none", "20190701", "05-Mar-2026",
     "false", "level: L1", "2026-03-05 09:00:00"],
    # no EIN: inferred from the company name
    ["E4", "Amy", "Loe", "amy@example.org", "ACME inc.", "", "2025-06-01", "", "1",
     "", "2026-03-01 00:00:00"],
]
COMPANIES_3 = [  # Globex changes industry: E2 (EIN inferred by name) must be restated
    ["98-7654321", "Globex LLC", "globex.com", "Aerospace", "1300", "5000000",
     "2026-03-01 00:00:00"],
]
# Corrections of the partition columns, to LATER dates than every other incoming row: the
# stored rows sit in partitions below the incoming rows' lowest one and must still go.
CLAIMS_4 = [
    ["C2", "P2", "E2", "2026-03-03", "20260315", "80", "paid", "R51", "false",
     "visit: Inpatient", "2026-03-15 08:00:00"],
]
PLANS_4 = [
    ["P3", "E3", "Dental Basic", "dental", "Delta", "2026-02-15", "N/A", "25.5", "YES",
     "2026-03-10 00:00:00"],
]
CLAIMS_HELD = [
    ["C9", "P1", "E1", "2026-03-02", "2026-03-03", "1", "submitted", "A00", "Y", "",
     "2026-03-03 00:00:00"],
]


# --- raw loading -----------------------------------------------------------------------


class Raw:
    """Delivers batches as the landing zone would: each list of rows is written as a CSV
    file, loaded by the product's ingest (monitor.stages.ingest) into the raw tables and its
    ledger, then published or held through monitor.store.batches, as the gate would."""

    def __init__(self, tmp: Path, path: Path) -> None:
        cfg = load_config(write_config(tmp))
        self.ingest = dataclasses.replace(cfg.ingest, landing_dir=tmp / "landing")
        self.warehouse = dataclasses.replace(cfg.warehouse, path=path)
        self.n_files = 0
        assert {f: list(s.columns) for f, s in self.ingest.feeds.items()} == FEED_COLUMNS

    def load(self, feed: str, rows: Sequence[Sequence[str]], status: str = "published") -> str:
        """Deliver one file as a batch; publish it unless ``status`` says otherwise."""
        self.n_files += 1
        folder = self.ingest.landing_dir / feed / f"2026-03-{self.n_files:02d}"
        folder.mkdir(parents=True)
        with (folder / f"{feed}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(FEED_COLUMNS[feed])
            writer.writerows(rows)
        release_duckdb()  # dbt-duckdb keeps the file open, configured its own way
        with warehouse(self.warehouse) as engine:  # and released before dbt opens it again
            report = ingest(engine, self.ingest)
            assert not report.skipped, report.skipped
            (loaded,) = report.files
            assert (loaded.outcome, loaded.rows_loaded, loaded.rows_quarantined) == (
                "loaded", len(rows), 0), loaded
            assert loaded.batch_id is not None
            with engine.begin() as conn:
                if status == "published":
                    batches.publish(conn, self.ingest.schema, loaded.batch_id, "contract",
                                    "contracts passed")
                else:
                    assert status == "held", status
                    batches.hold(conn, self.ingest.schema, loaded.batch_id, "contract failed")
        return loaded.batch_id


# --- dbt ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    """What each step of the scenario left behind."""

    tmp: Path
    warehouse: Path
    results: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    facts: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    diffs: dict[str, dict[str, int]] = field(default_factory=dict)
    merge_sql: str = ""
    # fct_claims' (service_date, claim_id) in stored order, as the full refresh wrote it
    refreshed_order: list[tuple[Any, str]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def dbt(sc: Scenario, step: str, *args: str, lookback: int | None = None) -> None:
    """Run one dbt command in process; record node statuses; fail on any error."""
    from dbt.cli.main import dbtRunner

    cmd = [
        *args,
        "--project-dir", str(PROJECT),
        "--profiles-dir", str(PROJECT),
        "--target-path", str(sc.tmp / "target"),
        "--log-path", str(sc.tmp / "logs"),
        "--quiet",
    ]
    if lookback is not None:
        cmd += ["--vars", json.dumps({"lookback_batches": lookback})]
    started = time.perf_counter()
    res = dbtRunner().invoke(cmd)
    sc.seconds[step] = time.perf_counter() - started
    run_results = json.loads((sc.tmp / "target" / "run_results.json").read_text())
    statuses = [(r["unique_id"], str(r["status"])) for r in run_results["results"]]
    sc.results[step] = statuses
    assert res.success, f"dbt {step} failed: {res.exception} {statuses}"


def read_facts(con: duckdb.DuckDBPyConnection, schema: str = "main") -> dict[str, list[dict]]:
    """Every fact as a list of row dicts, ordered by key."""
    out: dict[str, list[dict[str, Any]]] = {}
    for table, key in FACTS.items():
        cur = con.execute(f"select * from {schema}.{table} order by {key}")
        names = [d[0] for d in cur.description]
        out[table] = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return out


def snapshot(sc: Scenario, step: str) -> None:
    with duckdb.connect(str(sc.warehouse)) as con:
        sc.facts[step] = read_facts(con)


def diff_against_copy(sc: Scenario, step: str) -> None:
    """Rows in main.<table> but not in the copy, and vice versa (EXCEPT both ways)."""
    with duckdb.connect(str(sc.warehouse)) as con:
        sc.diffs[step] = {
            f"{table}:{a}-{b}": con.execute(
                f"select count(*) from (select * from {a}.{table} except all"
                f" select * from {b}.{table})"
            ).fetchone()[0]  # type: ignore[index]
            for table in INCREMENTAL
            for a, b in (("main", "incremental"), ("incremental", "main"))
        }


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("dbt_project")
    sc = Scenario(tmp=tmp, warehouse=tmp / "warehouse.duckdb")
    raw = Raw(tmp, sc.warehouse)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONITOR_WAREHOUSE_PATH", str(sc.warehouse))
        mp.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        for name in ("MONITOR_DUCKDB_MEMORY_LIMIT", "MONITOR_DUCKDB_THREADS"):
            mp.delenv(name, raising=False)

        raw.load("companies", COMPANIES_1)
        raw.load("employees", EMPLOYEES_1)
        raw.load("plans", PLANS_1)
        raw.load("claims", CLAIMS_1)
        dbt(sc, "build", "build")
        snapshot(sc, "build")
        sc.manifest = json.loads((tmp / "target" / "manifest.json").read_text())

        raw.load("employees", EMPLOYEES_2)
        raw.load("claims", CLAIMS_2)
        raw.load("plans", PLANS_2)
        dbt(sc, "incremental_2", "run", lookback=0)
        snapshot(sc, "incremental_2")

        raw.load("claims", CLAIMS_3)
        raw.load("plans", PLANS_3)
        raw.load("employees", EMPLOYEES_3)
        raw.load("companies", COMPANIES_3)
        raw.load("claims", CLAIMS_HELD, status="held")
        dbt(sc, "incremental_3", "run", lookback=0)
        snapshot(sc, "incremental_3")
        merge = tmp / "target" / "run" / "benefits_pipeline" / "models" / "marts" / "fct_claims.sql"
        sc.merge_sql = merge.read_text()

        raw.load("claims", CLAIMS_4)
        raw.load("plans", PLANS_4)
        dbt(sc, "incremental_4", "run", lookback=0)
        snapshot(sc, "incremental_4")

        with duckdb.connect(str(sc.warehouse)) as con:
            con.execute("create schema incremental")
            for table in INCREMENTAL:
                con.execute(f"create table incremental.{table} as select * from main.{table}")
        dbt(sc, "full_refresh", "run", "--full-refresh")
        diff_against_copy(sc, "full_refresh")
        with duckdb.connect(str(sc.warehouse)) as con:
            sc.refreshed_order = [tuple(r) for r in con.execute(
                "select service_date, claim_id from fct_claims order by rowid").fetchall()]

        dbt(sc, "replay", "build", lookback=1000)
        diff_against_copy(sc, "replay")
        snapshot(sc, "replay")
    yield sc


def by_key(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in rows}


# --- tests ----------------------------------------------------------------------------------


def test_build_passes_with_unit_and_data_tests(scenario: Scenario) -> None:
    statuses = dict(scenario.results["build"])
    unit = [uid for uid in statuses if uid.startswith("unit_test.")]
    assert len(unit) >= 9, unit
    bad = {uid: s for uid, s in statuses.items() if s not in ("success", "pass")}
    assert not bad, bad  # relationships are severity warn: on clean data they must pass too
    assert sum(uid.startswith("test.") for uid in statuses) >= 20
    replay = dict(scenario.results["replay"])
    assert all(s in ("success", "pass") for s in replay.values()), replay


def test_manifest_carries_layer_and_grain(scenario: Scenario) -> None:
    nodes = {
        n["name"]: n for n in scenario.manifest["nodes"].values() if n["resource_type"] == "model"
    }
    assert {n["config"]["meta"]["layer"] for n in nodes.values()} == {"stg", "int", "fct"}
    assert nodes["fct_claims"]["config"]["meta"]["grain"] == ["claim_id"]
    assert nodes["fct_claims"]["config"]["unique_key"] == "claim_id"
    assert nodes["stg_benefits__companies"]["config"]["materialized"] == "view"
    # the feeds that grow each day are cleaned once per batch, into tables
    for feed in ("claims", "plans", "employees"):
        config = nodes[f"stg_benefits__{feed}"]["config"]
        assert (config["materialized"], config["unique_key"]) == ("incremental", "_batch_id")
    assert nodes["int_claims__enriched"]["meta"]["layer"] == "int"


def test_first_build_cleans_and_enriches(scenario: Scenario) -> None:
    facts = scenario.facts["build"]
    employees = by_key(facts["fct_employees"], "employee_id")
    assert list(employees) == ["E1", "E2", "E3"]  # E1's duplicate line collapsed
    e1, e2, e3 = employees["E1"], employees["E2"], employees["E3"]
    assert (e1["email"], e1["company_ein"], e1["company_ein_source"]) == (
        "john.doe@acme.com", "12-3456789", "source")
    assert (e1["department"], e1["level"], e1["is_active"]) == ("Sales", "L3", True)
    assert e1["company_domain"] == "acme.com" and e1["company_headcount"] == 250
    # E2: no EIN, company "Globex" matches "Globex LLC"; revenue "N/A" is NULL
    assert (e2["company_ein"], e2["company_ein_source"]) == ("98-7654321", "company_name")
    assert (e2["company_industry"], e2["company_revenue"]) == ("Manufacturing", None)
    # E3: EIN "none", unknown company name, inferred from the email domain
    assert (e3["company_ein"], e3["company_ein_source"]) == ("12-3456789", "email_domain")
    assert str(e3["hire_date"]) == "2019-07-01" and str(e3["termination_date"]) == "2026-03-05"
    assert e3["tenure_days"] == 2439 and float(e3["tenure_years"]) == 6.68
    # tenure of an active employee is measured to its own updated_at, not to the clock
    assert str(e2["tenure_as_of_date"]) == "2026-01-01"

    plans = by_key(facts["fct_plans"], "plan_id")
    assert str(plans["P2"]["start_date"]) == "2026-01-01" and plans["P2"]["is_cobra"] is False
    assert plans["P3"]["is_cobra"] is True and plans["P3"]["end_date"] is None
    assert plans["P2"]["plan_duration_days"] == 364

    claims = by_key(facts["fct_claims"], "claim_id")
    c1, c2 = claims["C1"], claims["C2"]
    assert (c1["auth_code"], c1["visit_type"], c1["diagnosis_code"]) == (
        "A12345", "outpatient", "J20.9")
    assert (c1["carrier"], c1["plan_type"], c1["company_ein"]) == ("Aetna", "medical", "12-3456789")
    assert (str(c2["service_date"]), str(c2["received_date"]), c2["claim_age_days"]) == (
        "2026-02-03", "2026-02-15", 12)
    assert c2["is_in_network"] is False and c2["visit_type"] == "inpatient"
    assert [r["claim_id"] for r in facts["fct_claims"]] == ["C1", "C2", "C3", "C4"]


def test_update_and_duplicate_merge_to_one_newer_row(scenario: Scenario) -> None:
    facts = scenario.facts["incremental_2"]
    claims = by_key(facts["fct_claims"], "claim_id")
    assert sorted(claims) == ["C1", "C2", "C3", "C4", "C5"]
    c1 = claims["C1"]
    assert (c1["status"], str(c1["amount"])) == ("paid", "130.00")
    assert c1["_batch_id"] == "00000006-claims"
    assert c1["_line_number"] == 2  # an exact duplicate pair keeps its first line
    assert claims["C3"]["status"] == "paid"
    # the plan update restated C4, whose own row was not re-delivered
    assert claims["C4"]["carrier"] == "Cigna" and claims["C4"]["_batch_id"] == "00000004-claims"
    assert claims["C5"]["plan_type"] is None  # plan not published yet: kept, not enriched
    employees = by_key(facts["fct_employees"], "employee_id")
    assert len(facts["fct_employees"]) == 3
    assert (employees["E1"]["department"], employees["E1"]["level"]) == ("Marketing", "L4")
    assert by_key(facts["fct_plans"], "plan_id")["P1"]["carrier"] == "Cigna"


def test_older_version_arriving_later_does_not_overwrite(scenario: Scenario) -> None:
    facts = scenario.facts["incremental_3"]
    claims = by_key(facts["fct_claims"], "claim_id")
    assert claims["C3"]["status"] == "paid" and claims["C3"]["_batch_id"] == "00000006-claims"
    employees = by_key(facts["fct_employees"], "employee_id")
    assert employees["E1"]["department"] == "Marketing"
    assert "C9" not in claims  # held batch
    assert claims["C6"]["amount"] is not None
    # late plan and company updates reached rows that were not re-delivered
    assert (claims["C5"]["plan_type"], claims["C5"]["carrier"]) == ("vision", "VSP")
    assert employees["E2"]["company_industry"] == "Aerospace"
    assert (employees["E4"]["company_ein"], employees["E4"]["company_ein_source"]) == (
        "12-3456789", "company_name")


def test_corrected_partition_value_replaces_the_stored_row(scenario: Scenario) -> None:
    """A key whose partition column moved to a later date leaves no row behind in its old
    partition (the merge finds stored rows by key, whatever their date)."""
    facts = scenario.facts["incremental_4"]
    claims = [r for r in facts["fct_claims"] if r["claim_id"] == "C2"]
    plans = [r for r in facts["fct_plans"] if r["plan_id"] == "P3"]
    assert [(str(r["service_date"]), r["status"]) for r in claims] == [("2026-03-03", "paid")]
    assert [str(r["start_date"]) for r in plans] == ["2026-02-15"]
    # C3's own partition did not move
    assert [str(r["service_date"]) for r in facts["fct_claims"] if r["claim_id"] == "C3"] == [
        "2026-02-05"]


def test_only_a_change_of_claim_attributes_restates_claims(scenario: Scenario) -> None:
    """P3's new version moves its start date and keeps plan_type and carrier: its stored
    claim C3 is not rewritten. P1's new carrier (step 2) restated C4, which was not
    re-delivered, with the plan's batch."""
    c3 = [by_key(scenario.facts[s]["fct_claims"], "claim_id")["C3"]
          for s in ("incremental_3", "incremental_4")]
    assert c3[1] == c3[0]
    with duckdb.connect(str(scenario.warehouse)) as con:
        p3 = con.execute("select max(_publish_seq) from int_plans__enriched where plan_id = 'P3'"
                         ).fetchone()
        attrs = dict(con.execute(
            "select plan_id, _attributes_publish_seq from int_plans__claim_attributes").fetchall())
    assert p3 is not None and p3[0] > attrs["P3"]  # a newer version, attributes as before
    c4 = by_key(scenario.facts["incremental_2"]["fct_claims"], "claim_id")["C4"]
    assert c4["_enriched_publish_seq"] == attrs["P1"] > c4["_publish_seq"]


def test_incremental_runs_equal_full_refresh_and_replay_is_noop(scenario: Scenario) -> None:
    assert scenario.diffs["full_refresh"] == dict.fromkeys(scenario.diffs["full_refresh"], 0)
    assert scenario.diffs["replay"] == dict.fromkeys(scenario.diffs["replay"], 0)
    assert scenario.facts["replay"] == scenario.facts["incremental_4"]
    for table, key in FACTS.items():
        keys = [row[key] for row in scenario.facts["replay"][table]]
        assert len(keys) == len(set(keys)), table


def test_fact_written_in_partition_order(scenario: Scenario) -> None:
    """fct_claims is written ordered by (service_date, claim_id), so DuckDB's zone maps
    on service_date stay narrow; its surrogate keys, computed after that sort, keep it."""
    got = scenario.refreshed_order
    assert len(got) > 3
    assert got == sorted(got, key=lambda r: (r[0] is None, r[0], r[1]))
    for row in scenario.facts["replay"]["fct_claims"]:
        assert row["claim_sk"] == hashlib.md5(row["claim_id"].encode()).hexdigest()
        assert row["plan_sk"] == hashlib.md5((row["plan_id"] or "_null_").encode()).hexdigest()


def test_merge_reads_the_fact_once_and_replaces_by_row_id(scenario: Scenario) -> None:
    """The stored rows of the incoming keys are found in one scan of the fact, which also
    feeds the version guard; the replace then deletes by row id and inserts."""
    sql = " ".join(scenario.merge_sql.split())
    fact = '"warehouse"."main"."fct_claims"'
    assert sql.count(f"from {fact} as DBT_INTERNAL_DEST where exists") == 1, sql
    assert sql.count(fact) == 3, sql  # read once, delete from, insert into
    assert f"delete from {fact} as DBT_INTERNAL_DEST where DBT_INTERNAL_DEST.rowid in (" in sql
    # the guard drops incoming rows older than the stored row of their key, before the replace
    guard, replace = sql.index("as incoming using"), sql.index(f"delete from {fact}")
    assert guard < replace < sql.index(f"insert into {fact}")
    assert sql.rstrip().endswith('"')  # the insert comes last: dbt's rows_affected is its count
    # the read is bounded by the incoming keys' range, as literals that reach the scan
    bounds = re.findall(r"DBT_INTERNAL_DEST\.claim_id between cast\('(C\d)' as VARCHAR\)"
                        r" and cast\('(C\d)' as VARCHAR\)", sql)
    assert len(bounds) == 1 and bounds[0][0] < bounds[0][1], sql


def test_every_step_built_every_fact(scenario: Scenario) -> None:
    """Each dbt step of the scenario ran, in order, and built the three facts. Its wall
    time is printed, not asserted (a loaded CI machine is no benchmark: bench/cycle.py)."""
    print({step: round(s, 1) for step, s in scenario.seconds.items()})
    steps = ["build", "incremental_2", "incremental_3", "incremental_4", "full_refresh",
             "replay"]
    assert list(scenario.seconds) == steps and list(scenario.results) == steps
    for step in steps:
        built = {node.rsplit(".", 1)[-1]: status for node, status in scenario.results[step]
                 if node.startswith("model.")}
        assert {f: built.get(f) for f in FACTS} == dict.fromkeys(FACTS, "success"), step


def test_unchanged_redelivery_is_not_a_new_version(scenario: Scenario) -> None:
    """E3 re-delivered unchanged in batch 10 (first published in batch 2)."""
    before, after = (by_key(scenario.facts[s]["fct_employees"], "employee_id")["E3"]
                     for s in ("incremental_2", "incremental_3"))
    assert after["_publish_seq"] == before["_publish_seq"] == 2
    assert after["_batch_id"] == before["_batch_id"]
    claims = [by_key(scenario.facts[s]["fct_claims"], "claim_id")["C3"]
              for s in ("incremental_2", "incremental_3")]
    assert claims[1]["_enriched_publish_seq"] == claims[0]["_enriched_publish_seq"]
    with duckdb.connect(str(scenario.warehouse)) as con:
        rows = con.execute(
            "select _publish_seq, _last_delivered_seq from int_employees__versions"
            " where employee_id = 'E3'"
        ).fetchall()
    assert rows == [(2, 10)]


def _fuzzed_values(n: int) -> list[str]:
    """Random strings of date and time characters, and near-dates of every shape."""
    rng = random.Random(21)
    chars = "0123456789-/:. TtZzJanFebDecx"
    values = ["".join(rng.choice(chars) for _ in range(rng.randint(0, 22))) for _ in range(n)]
    for _ in range(n):
        y, m, d = rng.randint(0, 10000), rng.randint(0, 13), rng.randint(0, 32)
        clock = f"{rng.randint(0, 25)}:{rng.randint(0, 61)}:{rng.randint(0, 61)}"
        sep = rng.choice([" ", "  ", "\t", "T", "t", "-"])
        values += [f"{y}-{m}-{d}", f"{m}/{d}/{y}", f"{y:04d}{m:02d}{d:02d}",
                   f"{d}-{rng.choice(['Jan', 'feb', 'DEC', 'Foo'])}-{y}",
                   f"{y}-{m}-{d}{sep}{clock}{rng.choice(['', 'Z', 'z', ' Z'])}"]
    return values


def test_date_parsing_gives_what_the_list_of_formats_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """macros/cleaning/parse_date.sql on DuckDB tries the one format a value's shape
    allows before the whole list: value for value, the result must be the list's, on
    every edge shape and on random strings."""
    from dbt.cli.main import dbtRunner

    monkeypatch.setenv("MONITOR_WAREHOUSE_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    res = dbtRunner().invoke([
        "compile", "--inline",
        "select i, {{ clean_null('v') }} as c, {{ parse_date('v') }} as d,"
        " {{ parse_timestamp('v') }} as t from raw_values",
        "--project-dir", str(PROJECT), "--profiles-dir", str(PROJECT),
        "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
        "--quiet",
    ])
    assert res.success, res.exception
    compiled = str(res.result.results[0].node.compiled_code)  # type: ignore[union-attr]
    assert "%d-%b-%Y')" in compiled and "%Y-%m-%dT%H:%M:%SZ')" in compiled, compiled
    values = edge_values() + _fuzzed_values(20_000)
    con = duckdb.connect()
    con.execute("create table raw_values as select v, i from "
                "unnest(cast(? as varchar[])) with ordinality as t (v, i)", [values])
    con.execute(f"create table parsed as {compiled}")
    got = con.execute("select d, t from parsed order by i").fetchall()
    want = con.execute(
        "select cast(try_strptime(c, ['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y']) as date),"
        " try_strptime(c, ['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%SZ', '%Y-%m-%dT%H:%M:%S'])"
        " from parsed order by i").fetchall()
    assert len(got) == len(want) == len(values)
    differ = [(v, g, w) for v, g, w in zip(values, got, want, strict=True) if g != w]
    assert not differ, differ[:5]
    assert sum(d is not None for d, _ in got) > 10_000
    assert sum(t is not None for _, t in got) > 2_000


def test_null_cleaning_gives_what_the_default_expression_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """macros/cleaning/clean_null.sql on DuckDB passes a value that cannot be a null
    spelling through without lower(trim()): value for value, the result must be the
    default expression's, on padded spellings and random strings."""
    from dbt.cli.main import dbtRunner

    monkeypatch.setenv("MONITOR_WAREHOUSE_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    res = dbtRunner().invoke([
        "compile", "--inline", "select i, {{ clean_null('v') }} as c from raw_values",
        "--project-dir", str(PROJECT), "--profiles-dir", str(PROJECT),
        "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
        "--quiet",
    ])
    assert res.success, res.exception
    compiled = str(res.result.results[0].node.compiled_code)  # type: ignore[union-attr]
    assert "v[-1] between '!' and '~'" in compiled, compiled  # the fast path is taken
    values = null_spelling_values(50_000)
    con = duckdb.connect()
    con.execute("create table raw_values as select v, i from "
                "unnest(cast(? as varchar[])) with ordinality as t (v, i)", [values])
    got = con.execute(f"select c from ({compiled}) order by i").fetchall()
    want = con.execute(
        "select case when lower(trim(v)) in ('', 'null', 'n/a', 'none') then null"
        " else trim(v) end from raw_values order by i").fetchall()
    assert len(got) == len(want) == len(values)
    differ = [(v, g, w) for v, g, w in zip(values, got, want, strict=True) if g != w]
    assert not differ, differ[:5]
    assert sum(g == (None,) for g in got) > 100  # spellings were cleaned
    assert sum(g != (None,) and len(g[0]) > 4 for g in got) > 10_000  # and values kept
