"""Suites in expectations/ on a real DuckDB warehouse built from the generator's feeds.

Eight days of generator output (with its dirt: duplicate rows, null spellings, missing
EINs, four date formats, boolean spellings) go through real cycles: the product's ingest
fills the raw tables and the batch ledger, the contract gate publishes, dbt builds the
models in pipeline/. Breaks arrive as landed files loaded by the same ingest, or as edits
of the built models. Each contract break, grain break and enrichment break must fail its
suite with the specific expectation, and clean data must pass every suite.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from dqm_demo.demo import days, land_day, workspace
from dqm_demo.generate import COLUMNS, generate
from monitor.core.config import Config, load_config
from monitor.core.manifest import load_manifest
from monitor.cycle.run import run_cycle
from monitor.quality.queries import (
    compile_sql,
    model_batch_query,
    model_batch_select,
    touched_split,
)
from monitor.quality.results import SuiteResult, failed_summary, failures_by_suite, record_results
from monitor.quality.suites import SuiteError, SuiteFile, load_suite, load_suites
from monitor.quality.validator import Validator
from monitor.stages import checks
from monitor.stages.build import DbtProject
from monitor.stages.ingest import ingest
from monitor.store import batches
from monitor.store.state import validation_results
from monitor.warehouse.connection import warehouse

from .conftest import write_config

pytestmark = pytest.mark.slow  # eight real cycles build the base warehouse
REPO = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO / "expectations"
FEEDS = ("employees", "plans", "claims", "companies")
START = date(2026, 3, 2)
N_DAYS = 8
ADDED_DAY = "2026-03-10"  # the landing folder of the batches the tests add


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def suites() -> dict[str, SuiteFile]:
    return {s.name: s for s in load_suites(SUITES_DIR)}


@pytest.fixture(scope="module")
def base_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight days of generator feeds landed day by day, each day one real cycle (the
    product's ingest, contract gate and dbt build): every batch published, real models."""
    root = tmp_path_factory.mktemp("wh")
    cfg = workspace(load_config(write_config(root)), root)
    feeds = root / "feeds"
    generate(feeds, START, N_DAYS, 1500, seed=7)
    for day in days(START, N_DAYS):
        land_day(feeds, cfg.ingest.landing_dir, day)
        result = run_cycle(cfg, trigger="test", as_of=day)
        assert result.status == "success", (day, result.reason)
    with warehouse(cfg.warehouse) as engine, engine.connect() as conn:
        statuses = {b.status for b in batches.list_batches(conn, cfg.ingest.schema)}
    assert statuses == {batches.PUBLISHED}
    return cfg.warehouse.path


@pytest.fixture
def wh(base_warehouse: Path, tmp_path: Path) -> Path:
    """A private copy of the base warehouse for one test."""
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(base_warehouse, path)
    return path


def url(path: Path) -> str:
    return f"duckdb:///{path}"


def config_for(path: Path) -> Config:
    """The monitor's config on the warehouse at ``path``, its other data paths (landing
    zone, dbt target) in a folder of their own next to it."""
    root = path.parent / "monitor"
    root.mkdir(exist_ok=True)
    cfg = workspace(load_config(write_config(root)), root)
    return dataclasses.replace(cfg, warehouse=dataclasses.replace(cfg.warehouse, path=path))


def add_batch(path: Path, feed: str, select_sql: str, status: str = "pending") -> str:
    """A new batch of ``feed`` whose rows come from ``select_sql`` (contract columns):
    written as a CSV file into the landing zone and loaded by the product's ingest (a
    pending batch in its ledger); ``status="published"`` then publishes it as an operator's
    release would (monitor.store.batches.publish)."""
    cfg = config_for(path)
    folder = cfg.ingest.landing_dir / feed / ADDED_DAY
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{feed}_added_{sum(1 for _ in folder.iterdir()) + 1}.csv"
    cols = ", ".join(COLUMNS[feed])
    con = duckdb.connect(str(path))
    try:
        con.execute(f"copy (select {cols} from ({select_sql})) to '{target}' "
                    "(header, delimiter ',')")
    finally:
        con.close()
    with warehouse(cfg.warehouse) as engine:
        report = ingest(engine, cfg.ingest)
        assert not report.skipped, report.skipped
        (loaded,) = report.files
        assert loaded.outcome == "loaded" and loaded.rows_quarantined == 0, loaded
        assert loaded.batch_id is not None
        if status == "published":
            with engine.begin() as conn:
                batches.publish(conn, cfg.ingest.schema, loaded.batch_id, "test",
                                "released by hand")
        else:
            assert status == "pending", status
    return loaded.batch_id


def last_batch(path: Path, feed: str) -> str:
    con = duckdb.connect(str(path))
    try:
        row = con.execute("select batch_id from raw.ingest_batches where feed = ? "
                          "order by load_seq desc limit 1", [feed]).fetchone()
    finally:
        con.close()
    assert row is not None
    return str(row[0])


def sql(path: Path, statement: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path))
    try:
        return con.execute(statement).fetchall()
    finally:
        con.close()


def by_check(result: SuiteResult) -> dict[str, Any]:
    return {r.check: r for r in result.results}


def failed_checks(result: SuiteResult) -> set[str]:
    # Breaks below are derived from the last published batch, so they are resends too;
    # test_resend_is_held checks that check on its own.
    return {r.check for r in result.failed} - {"not_a_resend"}


# --------------------------------------------------------------------------- loading


def test_load_suites_reads_every_file(suites: dict[str, SuiteFile]) -> None:
    kinds = {n: s.kind for n, s in suites.items()}
    assert {n for n, k in kinds.items() if k == "contract"} == {f"contract_{f}" for f in FEEDS}
    assert {s.model for s in suites.values() if s.kind == "grain"} == {
        "int_employees__enriched", "int_plans__enriched", "int_claims__enriched",
        "fct_employees", "fct_plans", "fct_claims"}
    assert suites["grain_fct_claims"].key == ("claim_id",)
    assert suites["grain_int_claims__enriched"].key == ("_batch_id", "_line_number")
    o2o = suites["behaviour_int_employees__enriched"].one_to_one
    assert o2o is not None and o2o.enrichment is not None
    assert o2o.enrichment.key == "company_ein"


def test_suite_sql_is_written_once_for_every_engine(suites: dict[str, SuiteFile]) -> None:
    """No suite is bound to one engine, and none calls DuckDB's own functions directly:
    they go through the suite functions each backend renders (docs/contracts.md)."""
    assert all(s.dialect is None for s in suites.values())
    text = " ".join(json.dumps(s.expectations) for s in suites.values())
    for duckdb_only in ("try_strptime", "try_cast", "hash(", "median(", "regexp_"):
        assert duckdb_only not in text.replace("key_hash(", "").replace("row_hash(", "")
    assert "{{try_date(" in text and "{{try_double(" in text


def test_suite_functions_render_per_backend() -> None:
    from monitor.quality.suites import fill_placeholders
    from monitor.warehouse.duckdb import DuckDBBackend
    from monitor.warehouse.postgres import PostgresBackend

    q = {"q": "select * from {batch} c where {{try_double(c.amount)}} is null "
              "and {{key_hash(c.id)}} % {{n}} = 0"}
    duck = fill_placeholders(q, {"n": "3"}, DuckDBBackend().suite_function)
    assert duck == {"q": "select * from {batch} c where try_cast(c.amount as double) is null "
                         "and hash(c.id) % 3 = 0"}
    pg = fill_placeholders(q, {"n": "3"}, PostgresBackend().suite_function)["q"]
    assert "hashtextextended(cast(c.id as text), 0) % 3 = 0" in pg
    assert "{{1,3}}" not in pg and "[0-9]+(_[0-9]+)*" in pg  # PG regex, braces left as is
    date = fill_placeholders("{{try_date(d)}}", {}, PostgresBackend().suite_function)
    assert "{{1,4}}" in date  # braces doubled for GX's str.format
    with pytest.raises(ValueError, match="no warehouse renders"):
        fill_placeholders(q, {"n": "3"})
    rows = "{{row_hash(c.a, b)}}"
    assert fill_placeholders(rows, {}, DuckDBBackend().suite_function) == "hash(c.a, b)"
    assert fill_placeholders(rows, {}, PostgresBackend().suite_function) == (
        "hashtextextended(cast(row(c.a, b) as text), 0)")
    with pytest.raises(ValueError, match="takes one or more argument"):
        fill_placeholders("{{row_hash()}}", {}, DuckDBBackend().suite_function)


def test_suite_files_are_stock_gx_json() -> None:
    """Stock GX 1.x loads every file as is (no monitor code involved)."""
    from great_expectations.core import ExpectationSuite

    for f in sorted(SUITES_DIR.glob("*.json")):
        data = json.loads(f.read_text())
        suite = ExpectationSuite(**data)
        assert len(suite.expectations) == len(data["expectations"]) > 0, f.name
        assert suite.meta["monitor"]["kind"] in ("contract", "grain", "behaviour")


def _query_suite(query: str) -> str:
    return json.dumps({"name": "x", "expectations": [{
        "type": "unexpected_rows_expectation", "kwargs": {"unexpected_rows_query": query}}],
        "meta": {"monitor": {"kind": "contract", "feed": "claims"}}})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        (json.dumps({"name": "x", "expectations": [{"type": "expect_nothing_at_all",
                                                    "kwargs": {}}],
                     "meta": {"monitor": {"kind": "contract", "feed": "claims"}}}),
         "expectation #0 ('expect_nothing_at_all')"),
        (json.dumps({"name": "x", "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"colum": "a"}}],
                     "meta": {"monitor": {"kind": "contract", "feed": "claims"}}}),
         "expectation #0"),
        (json.dumps({"name": "x", "expectations": []}), "meta.monitor is missing"),
        (json.dumps({"name": "x", "expectations": [], "meta": {"monitor": {"kind": "drift"}}}),
         "meta.monitor.kind"),
        (json.dumps({"name": "x", "expectations": [],
                     "meta": {"monitor": {"kind": "contract", "feed": "claims; drop"}}}),
         "meta.monitor.feed must be an identifier"),
        (json.dumps({"name": "x", "expectations": [],
                     "meta": {"monitor": {"kind": "grain", "model": "m", "scope": "touched"}}}),
         "meta.monitor.key is required"),
        (json.dumps({"name": "x", "expectations": [{
            "type": "unexpected_rows_expectation",
            "kwargs": {"unexpected_rows_query": "select * from {batch} where s > {{hwm}}"}}],
            "meta": {"monitor": {"kind": "contract", "feed": "claims"}}}),
         "unknown placeholder {{hwm}}"),
        (_query_suite("select * from {batch} where {{try_regex(a)}} is null"),
         "unknown function {{try_regex(...)}}"),
        (_query_suite("select * from {batch} where {{try_date(a, b)}} is null"),
         "{{try_date(...)}} takes 1 argument(s), got 2"),
        (_query_suite("select * from {batch} where {{try_date(a || 'x')}} is null"),
         "argument \"a || 'x'\" is not a column"),
        (_query_suite("select * from {batch} where {{try_date(trim(a))}} is null"),
         "not a placeholder or function call"),
        (_query_suite("select * from {batch} where {{try_date(1a)}} is null"),
         "argument '1a' is not a column"),
        (_query_suite("select * from {batch} where {{feed }} = 'x'"),
         "not a placeholder or function call"),
    ],
    ids=["json", "unknown-type", "bad-kwarg", "no-meta", "kind", "feed", "key", "placeholder",
         "function", "arity", "expression-argument", "nested-call", "bad-column",
         "stray-template"],
)
def test_load_suites_names_the_bad_file(tmp_path: Path, content: str, message: str) -> None:
    shutil.copy(SUITES_DIR / "contract_claims.json", tmp_path / "a_good.json")
    (tmp_path / "broken.json").write_text(content)
    with pytest.raises(SuiteError) as err:
        load_suites(tmp_path)
    assert "broken.json" in str(err.value)
    assert message in str(err.value)


# --------------------------------------------------------------------------- contracts


def test_clean_batches_pass_every_contract(wh: Path, suites: dict[str, SuiteFile]) -> None:
    batches = sql(wh, "select batch_id, feed from raw.ingest_batches order by load_seq")
    feeds = [feed for _, feed in batches]
    # identical files (companies every day, employees on quiet days) were no-ops
    assert feeds.count("claims") == 8 and feeds.count("companies") == 1
    with Validator(url(wh), 5) as v:
        results = [v.run_contract(suites[f"contract_{feed}"], b, feed) for b, feed in batches]
    failing = [r.describe() for r in results if not r.success]
    assert not failing, failing
    claims = next(r for r in results if r.target == "claims")
    checks = by_check(claims)
    assert checks["not_empty"].observed_value > 1000
    # the dirt is really there and tolerated: ~1.6% empty diagnosis codes, ~0.5% duplicates
    assert checks["not_null_diagnosis_code"].unexpected_count > 0
    assert checks["key_cardinality"].observed_value < 1.0
    # a passing check keeps its counts; samples are fetched for failures only (a sample
    # query of a clean column would scan the whole batch to find nothing)
    assert checks["not_null_diagnosis_code"].success
    assert checks["not_null_diagnosis_code"].unexpected_values == []


def test_dropped_column_values_fail(wh: Path, suites: dict[str, SuiteFile]) -> None:
    src = last_batch(wh, "claims")
    cols = ", ".join("null as diagnosis_code" if c == "diagnosis_code" else c
                     for c in COLUMNS["claims"])
    bid = add_batch(wh, "claims", f"select {cols} from raw.claims where _batch_id = '{src}'")
    with Validator(url(wh), 3) as v:
        r = v.run_contract(suites["contract_claims"], bid, "claims")
    assert failed_checks(r) == {"not_null_diagnosis_code"}
    failed = by_check(r)["not_null_diagnosis_code"]
    assert failed.column == "diagnosis_code"
    assert failed.observed_value == pytest.approx(100.0)  # unexpected percent
    assert failed.unexpected_values == [None, None, None]


def test_text_in_amount_fails(wh: Path, suites: dict[str, SuiteFile]) -> None:
    src = last_batch(wh, "claims")
    cols = ", ".join("'USD ' || amount as amount" if c == "amount" else c
                     for c in COLUMNS["claims"])
    bid = add_batch(wh, "claims", f"select {cols} from raw.claims where _batch_id = '{src}'")
    with Validator(url(wh), 4) as v:
        r = v.run_contract(suites["contract_claims"], bid, "claims")
    assert failed_checks(r) == {"amount_numeric"}
    failed = by_check(r)["amount_numeric"]
    n = sql(wh, f"select count(*) from raw.claims where _batch_id = '{bid}'")[0][0]
    assert failed.unexpected_count == n
    assert len(failed.unexpected_values) == 4
    assert all(row["amount"].startswith("USD ") for row in failed.unexpected_values)


def test_null_storm_in_a_required_field_fails(wh: Path, suites: dict[str, SuiteFile]) -> None:
    src = last_batch(wh, "claims")
    cols = ", ".join("case when hash(claim_id) % 10 < 6 then null else employee_id end "
                     "as employee_id" if c == "employee_id" else c for c in COLUMNS["claims"])
    bid = add_batch(wh, "claims", f"select {cols} from raw.claims where _batch_id = '{src}'")
    with Validator(url(wh), 5) as v:
        r = v.run_contract(suites["contract_claims"], bid, "claims")
    assert failed_checks(r) == {"not_null_employee_id", "required_null_spellings"}
    assert 40 < by_check(r)["not_null_employee_id"].observed_value < 80
    rates = by_check(r)["required_null_spellings"].unexpected_values[0]
    assert rates["employee_id_null_rate"] > 0.4 and rates["claim_id_null_rate"] == 0


def test_spelled_null_storm_fails(wh: Path, suites: dict[str, SuiteFile]) -> None:
    src = last_batch(wh, "employees")
    cols = ", ".join("'N/A' as updated_at" if c == "updated_at" else c
                     for c in COLUMNS["employees"])
    bid = add_batch(wh, "employees",
                    f"select {cols} from raw.employees where _batch_id = '{src}'")
    with Validator(url(wh), 5) as v:
        r = v.run_contract(suites["contract_employees"], bid, "employees")
    assert failed_checks(r) == {"required_null_spellings"}  # SQL NULLs alone would pass it


def test_exact_duplicate_rows_do_not_lower_key_cardinality(wh: Path,
                                                          suites: dict[str, SuiteFile]) -> None:
    """Staging drops exact repeats: a file with 20% of its rows twice is no key explosion."""
    src = last_batch(wh, "plans")
    cols = ", ".join(COLUMNS["plans"])
    bid = add_batch(wh, "plans", f"select {cols} from raw.plans where _batch_id = '{src}' "
                                 f"union all select {cols} from raw.plans "
                                 f"where _batch_id = '{src}' and hash(plan_id) % 5 = 0")
    with Validator(url(wh), 5) as v:
        r = v.run_contract(suites["contract_plans"], bid, "plans")
    assert by_check(r)["key_cardinality"].success, r.describe()


def test_implausible_dates_fail_before_merge(wh: Path, suites: dict[str, SuiteFile]) -> None:
    src = last_batch(wh, "claims")
    cols = ", ".join(
        "case when hash(claim_id) % 10 < 3 then strftime(current_date + 365, '%Y-%m-%d') "
        "else service_date end as service_date" if c == "service_date" else c
        for c in COLUMNS["claims"])
    bid = add_batch(wh, "claims", f"select {cols} from raw.claims where _batch_id = '{src}'")
    with Validator(url(wh), 5) as v:
        r = v.run_contract(suites["contract_claims"], bid, "claims")
        ok = v.run_contract(suites["contract_claims"], src, "claims")
    assert "dates_plausible" in failed_checks(r)
    (row,) = by_check(r)["dates_plausible"].unexpected_values
    assert 0.2 < row["n_implausible"] / row["n_rows"] < 0.4
    assert by_check(ok)["dates_plausible"].success


def test_duplicates_beyond_the_dirt_rate_fail(wh: Path, suites: dict[str, SuiteFile]) -> None:
    """20% of the keys again with another premium: the same key, two different rows."""
    src = last_batch(wh, "plans")
    cols = ", ".join(COLUMNS["plans"])
    other = ", ".join("monthly_premium || '1' as monthly_premium" if c == "monthly_premium"
                      else c for c in COLUMNS["plans"])
    bid = add_batch(wh, "plans", f"select {cols} from raw.plans where _batch_id = '{src}' "
                                 f"union all select {other} from raw.plans "
                                 f"where _batch_id = '{src}' and hash(plan_id) % 5 = 0")
    with Validator(url(wh), 5) as v:
        r = v.run_contract(suites["contract_plans"], bid, "plans")
    assert failed_checks(r) == {"key_cardinality"}
    (row,) = by_check(r)["key_cardinality"].unexpected_values
    assert row["distinct_keys"] < 0.95 * row["distinct_rows"]


def test_duplicated_ein_fails_the_companies_contract(wh: Path,
                                                      suites: dict[str, SuiteFile]) -> None:
    bid, ein = add_duplicate_ein_batch(wh, status="pending")
    with Validator(url(wh), 5) as v:
        r = v.run_contract(suites["contract_companies"], bid, "companies")
    assert failed_checks(r) == {"ein_one_company"}
    row = by_check(r)["ein_one_company"].unexpected_values[0]
    assert row["ein_digits"] == ein.replace("-", "")
    assert "Shadow Holdings LLC" in (row["company_a"], row["company_b"])


def test_contract_arguments_are_checked(wh: Path, suites: dict[str, SuiteFile]) -> None:
    with Validator(url(wh), 5) as v:
        with pytest.raises(ValueError, match="not a valid batch id"):
            v.run_contract(suites["contract_claims"], "x'; drop table raw.claims; --", "claims")
        with pytest.raises(ValueError, match="contract of 'claims'"):
            v.run_contract(suites["contract_claims"], "plans-00000002", "plans")
        with pytest.raises(ValueError, match="use run_contract"):
            v.run_model_suite(suites["contract_claims"], None)


# --------------------------------------------------------------------------- models


MODEL_SUITES = ("grain_int_employees__enriched", "grain_int_plans__enriched",
                "grain_int_claims__enriched", "grain_fct_employees", "grain_fct_plans",
                "grain_fct_claims", "behaviour_fct_plans", "behaviour_fct_claims",
                "behaviour_int_employees__enriched")


@pytest.mark.parametrize("hwm", [None, 5], ids=["table", "touched"])
def test_clean_models_pass_every_model_suite(wh: Path, suites: dict[str, SuiteFile],
                                             hwm: int | None) -> None:
    with Validator(url(wh), 5) as v:
        results = [v.run_model_suite(suites[n], hwm) for n in MODEL_SUITES]
    failing = [r.describe() for r in results if not r.success]
    assert not failing, failing
    assert {r.suite for r in results} == set(MODEL_SUITES)
    assert all(r.kind in ("grain", "behaviour") and r.batch_id is None for r in results)
    o2o = by_check(results[-1])["one_to_one"]
    assert o2o.success and o2o.unexpected_count == 0


def test_duplicated_key_fails_the_grain_and_names_it(wh: Path,
                                                      suites: dict[str, SuiteFile]) -> None:
    hwm = sql(wh, "select max(_publish_seq) from fct_claims")[0][0]
    # a claim merged twice by a later batch (the second copy carries the new batch's seq)
    dup = sql(wh, "select claim_id from fct_claims order by claim_id limit 1")[0][0]
    sql(wh, f"insert into fct_claims select * replace ({hwm + 1} as _publish_seq, "
            f"{hwm + 1} as _enriched_publish_seq) from fct_claims where claim_id = '{dup}'")
    with Validator(url(wh), 5) as v:
        touched = v.run_model_suite(suites["grain_fct_claims"], hwm)
        before = v.run_model_suite(suites["grain_fct_claims"], hwm + 1)
    assert failed_checks(touched) == {"key_unique"}
    failed = by_check(touched)["key_unique"]
    assert failed.unexpected_count == 1
    assert failed.unexpected_values == [{"claim_id": dup, "row_count": 2}]
    # nothing touched after hwm + 1: the scan is scoped and finds nothing
    assert before.success


def test_suites_on_the_same_rows_share_one_copy(wh: Path, suites: dict[str, SuiteFile]) -> None:
    hwm = sql(wh, "select max(_publish_seq) from fct_claims")[0][0]
    dup = sql(wh, "select claim_id from fct_claims order by claim_id limit 1")[0][0]
    sql(wh, f"insert into fct_claims select * replace ({hwm + 1} as _publish_seq, "
            f"{hwm + 1} as _enriched_publish_seq) from fct_claims where claim_id = '{dup}'")
    copies: list[str] = []

    def count_copies(conn: Any, cursor: Any, stmt: str, *args: Any) -> None:
        if stmt.lstrip().upper().startswith("CREATE TABLE") and "batch_" in stmt:
            copies.append(stmt)

    sa.event.listen(sa.Engine, "before_cursor_execute", count_copies)
    try:
        with Validator(url(wh), 5) as v:
            behaviour = v.run_model_suite(suites["behaviour_fct_claims"], hwm)
            grain = v.run_model_suite(suites["grain_fct_claims"], hwm)
            assert len(copies) == 1  # the grain suite read the behaviour suite's copy
            v.run_model_suite(suites["grain_fct_claims"], hwm + 1)  # other rows: a new copy
            assert len(copies) == 2
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", count_copies)
    with Validator(url(wh), 5) as v:
        alone = v.run_model_suite(suites["grain_fct_claims"], hwm)
    assert failed_checks(grain) == failed_checks(alone) == {"key_unique"}
    assert by_check(grain)["key_unique"].unexpected_values == [{"claim_id": dup, "row_count": 2}]
    assert [r.unexpected_values for r in grain.results] == [
        r.unexpected_values for r in alone.results]
    assert behaviour.success  # the behaviour checks do not look at key uniqueness


def test_touched_split_holds_the_semi_join_scope_row_for_row(
        wh: Path, suites: dict[str, SuiteFile]) -> None:
    """DuckDB reads a table's touched rows in place and copies only the rows the semi
    join adds: together they are the semi join's rows, for an old row sharing a touched
    key, a touched row without a key, and rows whose sequence columns are NULL."""
    suite = suites["behaviour_fct_claims"]
    hwm = sql(wh, "select max(_publish_seq) from fct_claims")[0][0]
    old, other = [r[0] for r in sql(wh, "select claim_id from fct_claims order by claim_id "
                                        "limit 2")]
    sql(wh, f"insert into fct_claims select * replace ({hwm + 1} as _publish_seq) "
            f"from fct_claims where claim_id = '{old}'")  # touched again, the old row kept
    sql(wh, f"insert into fct_claims select * replace (null as claim_id, {hwm + 1} as "
            f"_publish_seq) from fct_claims where claim_id = '{other}'")  # touched, no key
    sql(wh, f"update fct_claims set _enriched_publish_seq = null where claim_id in "
            f"('{other}', '{old}') and _publish_seq <= {hwm}")  # untouched, a NULL seq
    engine = sa.create_engine(url(wh), poolclass=sa.NullPool)
    dialect = engine.dialect

    def split(after: int) -> tuple[sa.Select[Any], sa.Select[Any]]:
        with engine.connect() as conn:
            return touched_split(suite, "main", after, conn)

    def rows(q: sa.Select[Any]) -> list[Any]:
        # literal_binds: the touched keys' range is bound values in the query
        return sql(wh, str(q.compile(dialect=dialect, compile_kwargs={"literal_binds": True})))

    scope = sql(wh, compile_sql(model_batch_select(suite, "main", hwm), dialect))
    in_place, rest = (rows(q) for q in split(hwm))
    assert sorted(map(repr, in_place + rest)) == sorted(map(repr, scope))

    def ids(q: sa.Select[Any]) -> list[str | None]:
        return [r[0] for r in rows(sa.select(sa.column("claim_id")).select_from(q.subquery()))]

    assert ids(split(hwm)[1]) == [old]  # the copy: the old row only
    in_scope = ids(model_batch_select(suite, "main", hwm))
    assert in_scope.count(old) == 2 and None not in in_scope and other not in in_scope
    # The join reads the stored rows within the touched keys' range only: here the one
    # touched key, so other stored keys are not read; nothing touched, nothing read.
    rest_sql = str(split(hwm)[1].compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    assert f"BETWEEN '{old}' AND '{old}'" in rest_sql, rest_sql
    assert rows(split(hwm + 1)[1]) == [] and "false" in str(split(hwm + 1)[1]).lower()
    # A key found unique on every row of the touched keys: the plain filter is the
    # split's first part, row for row, and no semi join.
    unique = model_batch_select(suite, "main", hwm, key_unique=True)
    assert "EXISTS" not in compile_sql(unique, dialect).upper()
    assert sorted(map(repr, rows(unique))) == sorted(map(repr, in_place))
    engine.dispose()


def test_a_key_found_unique_spares_the_models_other_suites_the_semi_join(
        wh: Path, base_warehouse: Path, suites: dict[str, SuiteFile],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model's grain suite runs before its other suites. When it finds the key unique
    on every row of the touched keys, they read the touched rows by a plain filter (the
    semi join could add no row); when it finds a duplicate, they read every row of the
    touched keys, so the behaviour suite still sees the broken old row."""
    cfg = config_for(wh)
    project = load_manifest(base_warehouse.parent / "dbt-target", cfg.layers)
    ran: list[tuple[str, bool]] = []
    run = Validator.run_model_suite

    def spy(self: Validator, suite: SuiteFile, hwm: int | None, skip: Any = None,
            key_unique: bool = False) -> SuiteResult:
        ran.append((suite.name, key_unique))
        return run(self, suite, hwm, skip, key_unique)

    monkeypatch.setattr(Validator, "run_model_suite", spy)
    hwm = sql(wh, "select max(_publish_seq) from fct_claims")[0][0]
    clean = {r.suite: r for r in checks._suite_checks(cfg, project, hwm - 1, {})}
    assert all(r.success for r in clean.values())
    fct = [(name, unique) for name, unique in ran if name.endswith("_fct_claims")]
    assert fct == [("grain_fct_claims", False), ("behaviour_fct_claims", True)]
    # a view: its copy serves every suite, so the file order and the semi join stay
    view = [(name, unique) for name, unique in ran if name.endswith("_employees__enriched")]
    assert view == [("behaviour_int_employees__enriched", False),
                    ("grain_int_employees__enriched", False)]

    dup = sql(wh, "select claim_id from fct_claims order by claim_id limit 1")[0][0]
    sql(wh, f"insert into fct_claims select * replace ({hwm + 1} as _publish_seq, "
            f"{hwm + 1} as _enriched_publish_seq) from fct_claims where claim_id = '{dup}'")
    sql(wh, f"update fct_claims set amount = -1 where claim_id = '{dup}' "
            f"and _publish_seq <= {hwm}")
    ran.clear()
    broken = {r.suite: r for r in checks._suite_checks(cfg, project, hwm, {})}
    assert ("behaviour_fct_claims", False) in ran
    assert failed_checks(broken["grain_fct_claims"]) == {"key_unique"}
    assert failed_checks(broken["behaviour_fct_claims"]) == {"amount_not_negative"}


def test_an_old_row_of_a_touched_key_is_checked(wh: Path, suites: dict[str, SuiteFile]) -> None:
    """The behaviour suite sees a break in the old row that shares a touched key (the row
    the copy holds), and the grain suite the duplicate, reading the same rows."""
    hwm = sql(wh, "select max(_publish_seq) from fct_claims")[0][0]
    dup = sql(wh, "select claim_id from fct_claims order by claim_id limit 1")[0][0]
    sql(wh, f"insert into fct_claims select * replace ({hwm + 1} as _publish_seq, "
            f"{hwm + 1} as _enriched_publish_seq) from fct_claims where claim_id = '{dup}'")
    sql(wh, f"update fct_claims set amount = -1 where claim_id = '{dup}' "
            f"and _publish_seq <= {hwm}")
    with Validator(url(wh), 5) as v:
        behaviour = v.run_model_suite(suites["behaviour_fct_claims"], hwm)
        grain = v.run_model_suite(suites["grain_fct_claims"], hwm)
        later = v.run_model_suite(suites["behaviour_fct_claims"], hwm + 1)
    assert failed_checks(behaviour) == {"amount_not_negative"}
    assert by_check(behaviour)["amount_not_negative"].unexpected_count == 1
    assert failed_checks(grain) == {"key_unique"}
    assert later.success  # nothing touched after hwm + 1


def test_old_duplicate_is_outside_the_touched_scope(wh: Path,
                                                     suites: dict[str, SuiteFile]) -> None:
    hwm = sql(wh, "select max(_publish_seq) from fct_plans")[0][0]
    sql(wh, "insert into fct_plans select * from fct_plans "
            "where plan_id = (select min(plan_id) from fct_plans)")
    with Validator(url(wh), 5) as v:
        assert v.run_model_suite(suites["grain_fct_plans"], hwm).success
        assert not v.run_model_suite(suites["grain_fct_plans"], None).success


def test_duplicated_enrichment_ein_fails_one_to_one_and_names_it(
    wh: Path, suites: dict[str, SuiteFile]
) -> None:
    hwm = sql(wh, "select max(publish_seq) from raw.ingest_batches")[0][0]
    bid, ein = add_duplicate_ein_batch(wh, status="published")  # e.g. released by hand
    # dbt builds the models on the new enrichment snapshot (a run: the build's own tests
    # are not what this test is about)
    assert DbtProject(config_for(wh)).invoke("run").success
    with Validator(url(wh), 5) as v:
        r = v.run_model_suite(suites["behaviour_int_employees__enriched"], hwm)
    assert failed_checks(r) == {"one_to_one"}
    failed = by_check(r)["one_to_one"]
    assert failed.unexpected_count == 1
    (row,) = failed.unexpected_values
    assert row["problem"] == "enrichment key duplicated in stg_benefits__companies"
    assert row["enrichment_key_value"] == ein
    assert row["row_count"] == 2
    # The model rows carrying the duplicated EIN, counted independently of the suite.
    ((carried,),) = sql(wh, f"select count(*) from int_employees__enriched "
                            f"where company_ein = '{ein}'")
    assert carried > 0 and row["affected_rows"] == carried
    assert bid.endswith("-companies")


def test_enrichment_fan_out_fails_one_to_one(wh: Path, suites: dict[str, SuiteFile]) -> None:
    """A broken enrichment model: the newest input row twice, the oldest lost. dbt
    materializes the model as a view, so the break is a view over the real one. (The last
    employees batch can hold a single new version: both picked from it would cancel out.)"""
    sql(wh, "alter view int_employees__enriched rename to int_employees__enriched_dbt")
    sql(wh, """create view int_employees__enriched as
        with real as (select * from int_employees__enriched_dbt),
        lost as (select _batch_id, _line_number from real
                 order by _batch_id, _line_number limit 1)
        select real.* from real anti join lost using (_batch_id, _line_number)
        union all
        (select * from real order by _batch_id desc, _line_number desc limit 1)""")
    with Validator(url(wh), 5) as v:
        r = v.run_model_suite(suites["behaviour_int_employees__enriched"], None)
    problems = sorted(row["problem"] for row in by_check(r)["one_to_one"].unexpected_values)
    assert problems == ["input key missing from model", "key repeated in model"]


def test_behaviour_breaks_fail(wh: Path, suites: dict[str, SuiteFile]) -> None:
    hwm = sql(wh, "select max(_publish_seq) from fct_claims")[0][0]
    new = hwm + 1
    sql(wh, f"""insert into fct_claims select * replace (
                claim_id || '-X' as claim_id, 'E_GHOST' as employee_id, -5.00 as amount,
                received_date - 90 as service_date, {new} as _publish_seq,
                {new} as _enriched_publish_seq)
            from fct_claims order by claim_id limit 1""")
    sql(wh, f"update fct_plans set end_date = start_date - 1, _publish_seq = {new} "
            f"where plan_id = (select min(plan_id) from fct_plans)")
    with Validator(url(wh), 5) as v:
        claims = v.run_model_suite(suites["behaviour_fct_claims"], hwm)
        plans = v.run_model_suite(suites["behaviour_fct_plans"], hwm)
    assert failed_checks(claims) == {"amount_not_negative", "service_within_60_days",
                                     "employee_exists"}
    assert by_check(claims)["employee_exists"].unexpected_values[0]["employee_id"] == "E_GHOST"
    assert failed_checks(plans) == {"start_before_end"}


def test_broken_suite_sql_fails_closed_with_the_error(tmp_path: Path, wh: Path) -> None:
    suite = {
        "name": "contract_claims_broken",
        "expectations": [
            {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1},
             "meta": {"check": "not_empty"}},
            {"type": "unexpected_rows_expectation",
             "kwargs": {"unexpected_rows_query": "select no_such_column from {batch}"},
             "meta": {"check": "broken"}},
        ],
        "meta": {"monitor": {"kind": "contract", "feed": "claims"}},
    }
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "broken.json").write_text(json.dumps(suite))
    (loaded,) = load_suites(tmp_path / "s")
    batch_id = last_batch(wh, "claims")
    with Validator(url(wh), 5) as v:
        r = v.run_contract(loaded, batch_id, "claims")
    assert not r.success and failed_checks(r) == {"broken"}
    assert "no_such_column" in (by_check(r)["broken"].error or "")
    assert by_check(r)["not_empty"].success


# --------------------------------------------------------------------------- lifecycle, state


def test_validator_releases_the_warehouse(wh: Path, suites: dict[str, SuiteFile]) -> None:
    with Validator(url(wh), 5) as v:
        assert v.run_model_suite(suites["grain_fct_employees"], None).success
        with pytest.raises(duckdb.Error, match="different configuration"):
            duckdb.connect(str(wh), config={"threads": 1}).close()
    # dbt opens the file with its own settings next; this must not collide
    con = duckdb.connect(str(wh), config={"threads": 1, "memory_limit": "500MB"})
    con.close()


def test_validator_shares_the_file_with_same_settings(wh: Path,
                                                      suites: dict[str, SuiteFile]) -> None:
    """With the monitor's DuckDB settings as engine_kwargs, its own engine can stay open."""
    settings = {"connect_args": {"config": {"threads": 2, "memory_limit": "1GB"}}}
    monitor_engine = sa.create_engine(url(wh), poolclass=sa.NullPool, **settings)
    try:
        with Validator(url(wh), 5, engine_kwargs=settings) as v:
            with monitor_engine.connect() as conn:
                assert conn.exec_driver_sql("select current_setting('threads')").scalar() == 2
            assert v.run_model_suite(suites["grain_fct_plans"], None).success
    finally:
        monitor_engine.dispose()


def test_results_are_recorded_and_summarized(tmp_path: Path, wh: Path,
                                             suites: dict[str, SuiteFile]) -> None:
    src = last_batch(wh, "claims")
    cols = ", ".join("'USD ' || amount as amount" if c == "amount" else c
                     for c in COLUMNS["claims"])
    bad = add_batch(wh, "claims", f"select {cols} from raw.claims where _batch_id = '{src}'")
    with Validator(url(wh), 2) as v:
        results = [v.run_contract(suites["contract_claims"], bad, "claims"),
                   v.run_model_suite(suites["grain_fct_claims"], None)]
    state = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    validation_results.metadata.create_all(state, tables=[validation_results])
    n = record_results(state, "run-1", results)
    assert n == sum(len(r.results) for r in results)
    # The derived batch is also a resend of its source (not_a_resend): recorded in order.
    failed = failed_summary(state, "run-1")
    assert [(f.suite, f.check, f.batch_id) for f in failed] == [
        ("contract_claims", "amount_numeric", bad), ("contract_claims", "not_a_resend", bad)]
    assert failed[0].unexpected_count > 1000 and len(failed[0].unexpected_values or []) == 2
    assert failed_summary(state, "run-2") == []
    assert failures_by_suite(results) == {"contract_claims": 2, "grain_fct_claims": 0}
    assert "amount_numeric" in results[0].describe()


# --------------------------------------------------------------------------- helpers


def add_duplicate_ein_batch(path: Path, status: str) -> tuple[str, str]:
    """A companies batch: the current file plus a second company under an existing EIN."""
    src = last_batch(path, "companies")
    cols = ", ".join(COLUMNS["companies"])
    ein_raw = sql(path, f"select company_ein from raw.companies where _batch_id = '{src}' "
                        f"order by company_ein limit 1")[0][0]
    bid = add_batch(
        path, "companies",
        f"select {cols} from raw.companies where _batch_id = '{src}' union all "
        f"select '{ein_raw}', 'Shadow Holdings LLC', 'shadowholdings.com', 'Finance', '120', "
        f"null, '2026-03-10 08:00:00'",
        status=status,
    )
    digits = ein_raw.replace("-", "").replace(" ", "")
    return bid, f"{digits[:2]}-{digits[2:]}"


def test_resend_is_held_and_a_new_day_is_not(wh: Path, suites: dict[str, SuiteFile]) -> None:
    src = last_batch(wh, "claims")
    cols = ", ".join(COLUMNS["claims"])
    # The same rows re-exported in another order: not the same bytes (those would be the
    # ingest's checksum no-op), the same content.
    resent = add_batch(wh, "claims", f"select {cols} from raw.claims where _batch_id = '{src}' "
                                     "order by _line_number desc")
    with Validator(url(wh), 3) as v:
        r = v.run_contract(suites["contract_claims"], resent, "claims")
        fresh = v.run_contract(suites["contract_claims"], src, "claims")
    assert {x.check for x in r.failed} == {"not_a_resend"}
    assert "not_a_resend" not in {x.check for x in fresh.failed}


def test_resend_of_a_large_batch_is_caught_on_a_sample(wh: Path,
                                                       suites: dict[str, SuiteFile]) -> None:
    """Above 400k rows the resend check joins the claim ids of one hash bucket in
    rows // 200k with history, not the whole batch: still exact enough to hold a resend."""
    src = last_batch(wh, "claims")
    cols = ", ".join("'C9' || lpad(i::varchar, 7, '0') as claim_id" if c == "claim_id" else c
                     for c in COLUMNS["claims"])
    big = add_batch(wh, "claims", f"select {cols} from (select * from raw.claims where "
                    f"_batch_id = '{src}' limit 1), range(450000) t(i)", status="published")
    resent = add_batch(wh, "claims", f"select {', '.join(COLUMNS['claims'])} from raw.claims "
                       f"where _batch_id = '{big}' order by claim_id desc")  # re-exported
    with Validator(url(wh), 3) as v:
        fresh = v.run_contract(suites["contract_claims"], big, "claims")
        again = v.run_contract(suites["contract_claims"], resent, "claims")
    assert "not_a_resend" not in {x.check for x in fresh.failed}
    (row,) = by_check(again)["not_a_resend"].unexpected_values
    assert row["n_rows"] == 450_000
    assert 0 < row["n_sampled"] < 450_000  # modulus 2: about half the ids
    assert row["n_resent"] == row["n_sampled"]  # every sampled version was delivered before


def test_batch_placeholders_are_counted_on_any_warehouse(tmp_path: Path) -> None:
    """{{batch_rows}} and {{sample_modulus}} are literals counted before the suite runs,
    also where GX does not keep one DuckDB connection (SQLite here)."""
    db = tmp_path / "wh.sqlite"
    con = sqlite3.connect(db)
    con.execute("create table claims (claim_id text, _batch_id text)")
    con.executemany("insert into claims values (?, ?)", [(f"c{i}", "00000001-claims")
                                                         for i in range(7)])
    con.commit()
    con.close()
    suite_path = tmp_path / "contract_claims.json"
    suite_path.write_text(json.dumps({
        "name": "contract_claims", "meta": {"monitor": {"kind": "contract", "feed": "claims"}},
        "expectations": [{
            "type": "unexpected_rows_expectation", "meta": {"check": "counted"},
            "kwargs": {"unexpected_rows_query": "select {{batch_rows}} as n, "
                       "{{sample_modulus}} as m from {batch} limit 1"},
        }],
    }))
    with Validator(f"sqlite:///{db}", 3, raw_schema="main") as v:
        r = v.run_contract(load_suite(suite_path), "00000001-claims", "claims")
    assert by_check(r)["counted"].unexpected_values == [{"n": 7, "m": 1}]


def test_amounts_in_cents_are_held(wh: Path, suites: dict[str, SuiteFile]) -> None:
    src = last_batch(wh, "claims")
    cols = ", ".join("cast(round(try_cast(amount as double) * 100) as bigint)::varchar as amount"
                     if c == "amount" else c for c in COLUMNS["claims"])
    bid = add_batch(wh, "claims", f"select {cols} from raw.claims where _batch_id = '{src}'")
    with Validator(url(wh), 3) as v:
        r = v.run_contract(suites["contract_claims"], bid, "claims")
    assert failed_checks(r) == {"amount_median_plausible"}


def test_batch_keyed_suite_filters_rows_not_keys(suites: dict[str, SuiteFile]) -> None:
    """A key with _batch_id lives in one batch: the touched rows are the rows above the
    watermark, a filter that reaches a view's raw scan (no semi join over all history)."""
    import sqlalchemy as sa

    dialect = sa.create_engine("duckdb:///:memory:").dialect
    by_row = suites["grain_int_claims__enriched"]
    assert by_row.touched_by_row
    sql = model_batch_query(by_row, "main", 7, dialect)
    assert "EXISTS" not in sql.upper() and "_publish_seq > 7" in sql
    by_key = suites["grain_fct_claims"]  # claim_id spans batches: every row of a touched key
    assert not by_key.touched_by_row
    assert "EXISTS" in model_batch_query(by_key, "main", 7, dialect).upper()


def test_null_spelling_on_duckdb_is_the_plain_expression_value_for_value() -> None:
    """``{{null_spelling(x)}}`` on DuckDB skips lower(trim()) for values that cannot be a
    null spelling: on padded spellings and random strings it must be what the plain
    expression (PostgreSQL's and Spark's rendering) is."""
    import duckdb

    from monitor.warehouse.duckdb import DuckDBBackend
    from monitor.warehouse.postgres import PostgresBackend

    from .cleaning_values import null_spelling_values

    fast = DuckDBBackend().suite_function("null_spelling", ["v"])
    plain = PostgresBackend().suite_function("null_spelling", ["v"])
    assert fast != plain and "lower(trim(v))" in plain
    values = [*null_spelling_values(50_000), None]
    con = duckdb.connect()
    con.execute("create table t as select v, i from "
                "unnest(cast(? as varchar[])) with ordinality as u (v, i)", [values])
    got = con.execute(f"select {fast}, {plain} from t order by i").fetchall()
    assert len(got) == len(values)
    differ = [(v, f, p) for v, (f, p) in zip(values, got, strict=True) if f is not p]
    assert not differ, differ[:5]
    assert all(isinstance(f, bool) for f, _ in got)
    assert 100 < sum(f for f, _ in got) < len(got) - 10_000


def test_try_timestamp_on_duckdb_is_the_format_list_value_for_value() -> None:
    """``{{try_timestamp(x)}}`` on DuckDB tries the format a value's end allows before the
    whole list, and trims only a value whose ends may be spaces: on every shape and
    padding it must be what the list alone gives."""
    import duckdb

    from monitor.warehouse.duckdb import _TIMESTAMPS, DuckDBBackend

    routed = DuckDBBackend().suite_function("try_timestamp", ["v"])
    listed = f"try_strptime(trim(v), {_TIMESTAMPS})"
    assert routed != listed
    stamps = ["2026-03-05 10:11:12", "2026-03-05T10:11:12Z", " 2026-03-05T10:11:12Z\t",
              "2026-03-05T10:11:12", "2026-03-05 10:11:12Z", "2026-02-30 10:11:12",
              "2026-3-5 1:2:3", "2026-03-05T10:11:12ZZ", "Z", "", "20260305", "n/a",
              "2026-03-05", "2026-03-05 24:00:00", "2026-03-05 10:11:12.5", None,
              "2026-03-05 10:11:12 ", "\u00a02026-03-05 10:11:12", "\t2026-03-05 10:11:12",
              "2026-03-05T10:11:12Z\u3000", "2026-03-05 10:11:12\u2009", "\u00e92026"]
    con = duckdb.connect()
    con.execute("create table t as select v, i from "
                "unnest(cast(? as varchar[])) with ordinality as u (v, i)", [stamps])
    got = con.execute(f"select {routed}, {listed} from t order by i").fetchall()
    assert len(got) == len(stamps)
    differ = [(v, r, p) for v, (r, p) in zip(stamps, got, strict=True) if r != p]
    assert not differ, differ
    assert sum(r is not None for r, _ in got) >= 3  # the two formats, padded too
