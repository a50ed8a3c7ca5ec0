"""Suites in expectations/ on a real DuckDB warehouse built from the generator's feeds.

Raw tables and the batch ledger follow docs/contracts.md (eight days of generator output,
with its dirt: duplicate rows, null spellings, missing EINs, four date formats, boolean
spellings). Model-named tables (stg/int/fct, the pipeline's column names) are derived from
them with plain SQL. Each contract break, grain break and enrichment break must fail its
suite with the specific expectation, and clean data must pass every suite.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from monitor.generate import COLUMNS, generate
from monitor.ingest import batch_id_for
from monitor.validate import (
    SuiteError,
    SuiteFile,
    SuiteResult,
    Validator,
    failed_summary,
    failures_by_suite,
    load_suite,
    load_suites,
    model_batch_query,
    record_results,
    validation_results,
)

REPO = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO / "expectations"
FEEDS = ("employees", "plans", "claims", "companies")
AUDIT = "_batch_id varchar, _source_file varchar, _line_number bigint, _ingested_at timestamp"
DATE_FMTS = "['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y']"
TS_FMTS = "['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%SZ']"
NULLS = "('', 'null', 'n/a', 'none')"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def suites() -> dict[str, SuiteFile]:
    return {s.name: s for s in load_suites(SUITES_DIR)}


@pytest.fixture(scope="module")
def base_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight days of generator feeds in raw (all published) plus the model tables."""
    root = tmp_path_factory.mktemp("wh")
    files = generate(root / "landing", date(2026, 3, 2), 8, 1500, seed=7)
    path = root / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    try:
        con.execute("create schema raw")
        for feed in FEEDS:
            cols = ", ".join(f"{c} varchar" for c in COLUMNS[feed])
            con.execute(f"create table raw.{feed} ({cols}, {AUDIT})")
        con.execute(
            "create table raw.ingest_batches (batch_id varchar primary key, feed varchar, "
            "source_file varchar, checksum varchar unique, size_bytes bigint, load_seq bigint, "
            "status varchar, publish_seq bigint, rows_read bigint, rows_loaded bigint, "
            "rows_quarantined bigint, reason varchar, ingested_at timestamp, "
            "decided_at timestamp, decided_by varchar, decision_reason varchar)"
        )
        seen: set[str] = set()
        for f in files:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            if digest in seen:  # companies: identical daily file, a recorded no-op
                continue
            seen.add(digest)
            load_file(con, f.parent.parent.name, f, digest)
        build_models(con)
    finally:
        con.close()
    return path


@pytest.fixture
def wh(base_warehouse: Path, tmp_path: Path) -> Path:
    """A private copy of the base warehouse for one test."""
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(base_warehouse, path)
    return path


def url(path: Path) -> str:
    return f"duckdb:///{path}"


def load_file(con: duckdb.DuckDBPyConnection, feed: str, f: Path, digest: str,
              status: str = "published") -> str:
    """Load one CSV like monitor.ingest: text columns, audit columns, a ledger row."""
    seq = (con.execute("select coalesce(max(load_seq), 0) + 1 from raw.ingest_batches")
           .fetchone() or (1,))[0]
    batch_id = batch_id_for(feed, seq)
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS[feed]) + "}"
    con.execute(
        f"insert into raw.{feed} select *, ?, ?, row_number() over () + 1, now() "
        f"from read_csv(?, header=true, columns={columns}, auto_detect=false)",
        [batch_id, str(f), str(f)],
    )
    ledger(con, batch_id, feed, digest, seq, status)
    return batch_id


def ledger(con: duckdb.DuckDBPyConnection, batch_id: str, feed: str, digest: str, seq: int,
           status: str) -> None:
    rows = (con.execute(f"select count(*) from raw.{feed} where _batch_id = ?", [batch_id])
            .fetchone() or (0,))[0]
    publish = (con.execute("select coalesce(max(publish_seq), 0) + 1 from raw.ingest_batches")
               .fetchone() or (1,))[0] if status == "published" else None
    con.execute(
        "insert into raw.ingest_batches values (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, 0, null, now(), "
        "null, null, null)",
        [batch_id, feed, f"{batch_id}.csv", digest, seq, status, publish, rows, rows],
    )


def add_batch(path: Path, feed: str, select_sql: str, status: str = "pending") -> str:
    """A new batch of ``feed`` whose rows come from ``select_sql`` (contract columns)."""
    con = duckdb.connect(str(path))
    try:
        seq = (con.execute("select max(load_seq) + 1 from raw.ingest_batches").fetchone()
               or (1,))[0]
        batch_id = batch_id_for(feed, seq)
        cols = ", ".join(COLUMNS[feed])
        con.execute(
            f"insert into raw.{feed} select {cols}, ?, 'test.csv', row_number() over () + 1, "
            f"now() from ({select_sql})",
            [batch_id],
        )
        ledger(con, batch_id, feed, hashlib.sha256(batch_id.encode()).hexdigest(), seq, status)
    finally:
        con.close()
    return batch_id


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


def _clean(col: str) -> str:
    return f"case when lower(trim({col})) in {NULLS} then null else trim({col}) end"


def _ein(col: str) -> str:
    digits = f"regexp_replace({_clean(col)}, '[\\s-]', '', 'g')"
    return (f"case when regexp_full_match({digits}, '[0-9]{{9}}') "
            f"then substr({digits}, 1, 2) || '-' || substr({digits}, 3, 7) end")


def build_models(con: duckdb.DuckDBPyConnection) -> None:
    """Model-named tables with the pipeline's columns (a small stand-in for dbt)."""
    published = ("inner join raw.ingest_batches b on b.batch_id = r._batch_id "
                 "and b.status = 'published'")
    con.execute(f"""
        create table stg_benefits__companies as
        select {_ein('company_ein')} as company_ein, {_clean('company_name')} as company_name,
            {_clean('industry')} as industry, try_cast(headcount as integer) as headcount,
            try_cast({_clean('revenue')} as decimal(20, 2)) as revenue,
            b.publish_seq as _publish_seq, _batch_id, min(_line_number) as _line_number
        from raw.companies r {published} group by all""")
    con.execute(f"""
        create table stg_benefits__employees as
        select {_clean('employee_id')} as employee_id, {_ein('company_ein')} as company_ein,
            {_clean('company_name')} as company_name, lower(trim(email)) as email,
            try_strptime(hire_date, {DATE_FMTS})::date as hire_date,
            try_strptime(updated_at, {TS_FMTS}) as updated_at,
            b.publish_seq as _publish_seq, _batch_id, min(_line_number) as _line_number
        from raw.employees r {published} group by all""")
    # the pipeline's distinct versions; this data has no unchanged re-deliveries
    con.execute("create or replace view int_employees__versions as"
                " select * from stg_benefits__employees")
    con.execute("""
        create table int_employees__enriched as
        with companies as (select * from stg_benefits__companies where company_ein is not null
                           qualify row_number() over (partition by company_ein
                                                      order by _publish_seq desc) = 1),
        by_name as (select company_name, company_ein from companies)
        select e.employee_id, coalesce(e.company_ein, n.company_ein) as company_ein,
            c.industry as company_industry, c.headcount as company_headcount,
            c.revenue as company_revenue, e.hire_date, e.updated_at,
            e._publish_seq, e._batch_id, e._line_number,
            greatest(e._publish_seq, c._publish_seq) as _enriched_publish_seq
        from stg_benefits__employees e
        left join by_name n on n.company_name = e.company_name
        left join companies c on c.company_ein = coalesce(e.company_ein, n.company_ein)""")
    con.execute(f"""
        create table int_plans__enriched as
        select {_clean('plan_id')} as plan_id, {_clean('employee_id')} as employee_id,
            try_strptime(start_date, {DATE_FMTS})::date as start_date,
            try_strptime(end_date, {DATE_FMTS})::date as end_date,
            try_strptime(updated_at, {TS_FMTS}) as updated_at,
            b.publish_seq as _publish_seq, _batch_id, min(_line_number) as _line_number,
            b.publish_seq as _enriched_publish_seq
        from raw.plans r {published} group by all""")
    con.execute(f"""
        create table int_claims__enriched as
        select {_clean('claim_id')} as claim_id, {_clean('plan_id')} as plan_id,
            {_clean('employee_id')} as employee_id,
            try_cast(amount as decimal(18, 2)) as amount,
            try_strptime(service_date, {DATE_FMTS})::date as service_date,
            try_strptime(received_date, {DATE_FMTS})::date as received_date,
            try_strptime(updated_at, {TS_FMTS}) as updated_at,
            b.publish_seq as _publish_seq, _batch_id, min(_line_number) as _line_number,
            b.publish_seq as _enriched_publish_seq
        from raw.claims r {published} group by all""")
    for fct, src, key in (("fct_employees", "int_employees__enriched", "employee_id"),
                          ("fct_plans", "int_plans__enriched", "plan_id"),
                          ("fct_claims", "int_claims__enriched", "claim_id")):
        con.execute(f"""
            create table {fct} as select * from {src}
            qualify row_number() over (partition by {key}
                order by updated_at desc nulls last, _publish_seq desc, _line_number desc) = 1""")


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


def test_suite_files_are_stock_gx_json() -> None:
    """Stock GX 1.x loads every file as is (no monitor code involved)."""
    from great_expectations.core import ExpectationSuite

    for f in sorted(SUITES_DIR.glob("*.json")):
        data = json.loads(f.read_text())
        suite = ExpectationSuite(**data)
        assert len(suite.expectations) == len(data["expectations"]) > 0, f.name
        assert suite.meta["monitor"]["kind"] in ("contract", "grain", "behaviour")


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
    ],
    ids=["json", "unknown-type", "bad-kwarg", "no-meta", "kind", "feed", "key", "placeholder"],
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
    con = duckdb.connect(str(wh))
    try:  # rebuild the models on the new enrichment snapshot
        for t in ("stg_benefits__companies", "stg_benefits__employees", "int_employees__enriched",
                  "int_plans__enriched", "int_claims__enriched", "fct_employees", "fct_plans",
                  "fct_claims"):
            con.execute(f"drop table {t}")
        build_models(con)
    finally:
        con.close()
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
    sql(wh, "insert into int_employees__enriched select * from int_employees__enriched "
            "order by _batch_id desc, _line_number limit 1")
    sql(wh, "delete from int_employees__enriched where (_batch_id, _line_number) = "
            "(select (_batch_id, _line_number) from int_employees__enriched "
            "order by _batch_id desc, _line_number desc limit 1)")
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
    resent = add_batch(wh, "claims", f"select {cols} from raw.claims where _batch_id = '{src}'")
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
                       f"where _batch_id = '{big}'")
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
