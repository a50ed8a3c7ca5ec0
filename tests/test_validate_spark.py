"""The expectation suites on Spark over Spark Connect (issue 20, item 4), against DuckDB.

GX's stock Spark datasource validates a suite's rows as a cached DataFrame on the
monitor's session (monitor.quality.gx_spark). First each suite function and the suites'
``similar to`` patterns are shown to give DuckDB's values in Spark SQL; then the same
generated batches (clean, and with test_validate_postgres's breaks) are ingested and
gated on DuckDB, built by dbt there, and their raw and model tables copied into Spark
tables (Arrow): every suite must pass or fail alike on both engines, check by check,
with the same unexpected counts.

The validator runs on SparkBackend: suite SQL from monitor.warehouse.spark_functions,
its row selects compiled by the spark dialect.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dqm_demo.demo import land_day
from dqm_demo.generate import generate
from monitor.core.config import Config, load_config
from monitor.quality.results import SuiteResult
from monitor.quality.suites import SuiteFile, load_suites
from monitor.quality.validator import Validator
from monitor.stages.build import DbtProject, release_duckdb
from monitor.warehouse.duckdb import DuckDBBackend
from monitor.warehouse.spark import SparkBackend
from monitor.warehouse.spark_functions import spark_suite_function, spark_suite_sql
from monitor.warehouse.spark_session import spark_session, stop_sessions

from .conftest import REPO, write_config
from .spark_server import SparkServer
from .test_validate_postgres import (
    BROKEN_BATCH_FAILURES,
    CLAIMS,
    DATES,
    NUMBERS,
    START,
    TIMESTAMPS,
    _break_claims,
    _break_employees,
    _gate,
    _rewrite,
)

pytestmark = pytest.mark.spark

SIMILAR_VALUES = ["12-3456789", "123456789", "12 3456789", "12--3456789", "12-345678",
                  "12-34567890", "AB-1234567", "12_3456789", "12.3456789", "12%3456789",
                  " 12-3456789", "12-3456789 ", "", "x"]


@pytest.fixture(scope="module")
def spark(spark_server: SparkServer) -> Iterator[Any]:
    yield spark_session(spark_server.url)
    stop_sessions()


def _spark_values(spark: Any, expr: str, inputs: list[str]) -> list[Any]:
    df = spark.createDataFrame(list(enumerate(inputs)), "i int, x string")
    df.createOrReplaceTempView("monitor_inputs")
    got = {r[0]: r[1] for r in spark.sql(f"select i, {expr} from monitor_inputs").collect()}
    return [got[i] for i in range(len(inputs))]


def _duck_values(expr: str, inputs: list[str]) -> list[Any]:
    con = duckdb.connect()
    try:
        return [con.execute(f"select {expr} from (select cast(? as varchar) as x) t",
                            [v]).fetchone()[0] for v in inputs]  # type: ignore[index]
    finally:
        con.close()


def _same_date_text(duck: Any, spark: Any) -> bool:
    if duck is None or spark is None:
        return duck is spark
    # DuckDB writes year 0 (1 BC) as "0001-01-01 (BC)", Spark as "0000-01-01"
    return str(duck).replace("0001-01-01 (BC)", "0000-01-01") == str(spark)


@pytest.mark.parametrize(("name", "inputs"), [("try_date", DATES),
                                              ("try_timestamp", TIMESTAMPS)])
def test_date_functions_agree_with_duckdb(spark: Any, name: str, inputs: list[str]) -> None:
    duck = _duck_values(f"cast({DuckDBBackend().suite_function(name, ['x'])} as varchar)",
                        inputs)
    got = _spark_values(spark, f"cast({spark_suite_function(name, ['x'])} as string)", inputs)
    assert [(v, d, s) for v, d, s in zip(inputs, duck, got, strict=True)
            if not _same_date_text(d, s)] == []
    assert sum(d is None for d in duck) >= 5 and sum(d is not None for d in duck) >= 5


def test_try_double_agrees_with_duckdb(spark: Any) -> None:
    duck = _duck_values(DuckDBBackend().suite_function("try_double", ["x"]), NUMBERS)
    got = _spark_values(spark, spark_suite_function("try_double", ["x"]), NUMBERS)

    def same(d: Any, s: Any) -> bool:
        if d is None or s is None:
            return d is s
        return (math.isnan(d) and math.isnan(s)) or float(d) == float(s)

    assert [(v, d, s) for v, d, s in zip(NUMBERS, duck, got, strict=True)
            if not same(d, s)] == []
    assert got[NUMBERS.index("1_000.5")] == 1000.5 and got[NUMBERS.index("1__0")] is None


def test_key_hash_is_one_integer_per_key(spark: Any) -> None:
    got = _spark_values(spark, spark_suite_function("key_hash", ["x"]), ["C1", "C1", "C2"])
    assert isinstance(got[0], int) and got[0] == got[1] != got[2]


def test_row_hash_tells_null_from_any_value(spark: Any) -> None:
    """xxhash64 skips NULLs; rows that differ only in where a NULL sits still hash apart."""
    rows = [("x", None), (None, "x"), ("x", ""), ("", "x"), ("x", None)]
    df = spark.createDataFrame([(i, a, b) for i, (a, b) in enumerate(rows)],
                               "i int, a string, b string")
    df.createOrReplaceTempView("monitor_rows")
    sql = spark_suite_function("row_hash", ["a", "b"])
    got = {r[0]: r[1] for r in spark.sql(f"select i, {sql} from monitor_rows").collect()}
    hashes = [got[i] for i in range(len(rows))]
    assert all(isinstance(h, int) for h in hashes)
    assert len(set(hashes[:4])) == 4 and hashes[0] == hashes[4]


def test_similar_to_becomes_rlike_of_the_same_pattern(spark: Any) -> None:
    sqls = sorted({str(e["kwargs"].get("unexpected_rows_query", ""))
                   for s in load_suites(REPO / "expectations") for e in s.expectations}
                  - {""})
    sqls = [q for q in sqls if "similar to" in q]
    assert sqls
    for sql in sqls:
        pattern = sql.split("similar to '", 1)[1].split("'", 1)[0]
        pattern = pattern.replace("{{", "{").replace("}}", "}")
        rewritten = spark_suite_sql(f"x similar to '{pattern}'")
        assert "similar" not in rewritten and rewritten.startswith("x rlike '")
        duck = _duck_values(f"x similar to '{pattern}'", SIMILAR_VALUES)
        assert _spark_values(spark, rewritten, SIMILAR_VALUES) == duck
        assert any(duck) and not all(duck)


# -- the same batches and models on both engines


@dataclass
class Warehouses:
    """The DuckDB warehouse the product built, its batches by day, and the same tables
    in Spark."""

    cfg: Config
    batches: dict[date, list[tuple[str, str]]]  # day -> [(batch_id, feed)]
    duck_seconds: dict[str, float]
    spark_seconds: dict[str, float]


def _duck(cfg: Config, statement: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        return con.execute(statement).fetchall()
    finally:
        con.close()


def _copy_to_spark(cfg: Config, spark: Any) -> int:
    """Every raw and model table of the DuckDB warehouse as a parquet table of Spark."""
    from pyspark.sql.pandas.types import from_arrow_schema  # the `spark` extra

    tables = _duck(cfg, "select table_schema, table_name from information_schema.tables "
                        "where table_schema in ('raw', 'main')")
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        for schema in ("raw", "main"):
            spark.sql(f"create database if not exists {schema}")
        for schema, table in tables:
            arrow: Any = con.execute(f'select * from "{schema}"."{table}"').to_arrow_table()
            df = spark.createDataFrame(arrow, schema=from_arrow_schema(arrow.schema))
            df.write.mode("overwrite").format("parquet").saveAsTable(f"{schema}.{table}")
    finally:
        con.close()
    return len(tables)


@pytest.fixture(scope="module")
def warehouses(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> Warehouses:
    """Day 1 clean (gated, built by dbt), day 2 with the claims and employees breaks
    (gated, held), all on DuckDB through the product; then copied into Spark."""
    tmp = tmp_path_factory.mktemp("spark-gx")
    gen = tmp / "gen"
    generate(gen, START, 2, CLAIMS, seed=4)
    (tmp / "duckdb").mkdir()
    cfg = load_config(write_config(tmp / "duckdb"))
    land_day(gen, cfg.ingest.landing_dir, START)
    assert _gate(cfg, START)[1] == []
    first = len(_duck(cfg, "select batch_id from raw.ingest_batches"))
    result = DbtProject(cfg).invoke("build")
    release_duckdb()
    assert result.success, result.error
    day2 = START + timedelta(days=1)
    broken = tmp / "broken"
    shutil.copytree(gen, broken)
    _rewrite(next((broken / "claims" / day2.isoformat()).glob("*.csv")), _break_claims)
    _rewrite(next((broken / "employees" / day2.isoformat()).glob("*.csv")), _break_employees)
    land_day(broken, cfg.ingest.landing_dir, day2)
    assert _gate(cfg, day2)[1] == ["claims", "employees"]
    rows = _duck(cfg, "select batch_id, feed from raw.ingest_batches order by load_seq")
    batches = {START: [(str(b), str(f)) for b, f in rows[:first]],
               day2: [(str(b), str(f)) for b, f in rows[first:]]}
    assert {f for _, f in batches[START]} == {"claims", "companies", "employees", "plans"}
    assert {f for _, f in batches[day2]} >= {"claims", "employees"}
    assert _copy_to_spark(cfg, spark) >= 12
    return Warehouses(cfg, batches, {}, {})


def _validators(w: Warehouses, spark_url: str) -> tuple[Validator, Validator]:
    duck = Validator(f"duckdb:///{w.cfg.warehouse.path}", 5,
                     engine_kwargs=DuckDBBackend().gx_connection(w.cfg.warehouse)[1],
                     backend=DuckDBBackend())
    return duck, Validator(spark_url, 5, backend=SparkBackend())


def _checks(result: SuiteResult) -> dict[str, tuple[bool, int | None]]:
    out = {}
    for e in result.results:
        assert e.error is None, (result.suite, e.check, e.error)
        out[f"{result.suite}.{e.check}"] = (e.success, e.unexpected_count)
    return out


def _timed(seconds: dict[str, float], key: str, run: Any) -> SuiteResult:
    started = time.perf_counter()
    result: SuiteResult = run()
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - started
    return result


def _contracts(w: Warehouses, spark_url: str, day: date
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    suites = [s for s in load_suites(REPO / "expectations") if s.kind == "contract"]
    duck_v, spark_v = _validators(w, spark_url)
    duck: dict[str, Any] = {}
    got: dict[str, Any] = {}
    with duck_v, spark_v:
        for batch_id, feed in w.batches[day]:
            for s in (s for s in suites if s.feed == feed):
                duck |= _checks(_timed(w.duck_seconds, s.name, lambda s=s, b=batch_id, f=feed:
                                       duck_v.run_contract(s, b, f, day)))
                got |= _checks(_timed(w.spark_seconds, s.name, lambda s=s, b=batch_id, f=feed:
                                      spark_v.run_contract(s, b, f, day)))
    return duck, got


def test_clean_batches_pass_every_contract_on_spark(warehouses: Warehouses,
                                                     spark_server: SparkServer) -> None:
    duck, got = _contracts(warehouses, spark_server.url, START)
    assert got == duck
    assert {k.split(".")[0] for k in got} == {
        "contract_claims", "contract_companies", "contract_employees", "contract_plans"}
    assert len(got) >= 60
    assert all(ok for ok, _ in got.values()), {k: v for k, v in got.items() if not v[0]}


def test_broken_batches_fail_the_same_checks_with_the_same_counts(
        warehouses: Warehouses, spark_server: SparkServer) -> None:
    duck, got = _contracts(warehouses, spark_server.url, START + timedelta(days=1))
    assert got == duck
    failed = {k: n for k, (ok, n) in got.items() if not ok}
    assert failed == BROKEN_BATCH_FAILURES


def _models(w: Warehouses, spark_url: str, suites: list[SuiteFile]
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    duck_v, spark_v = _validators(w, spark_url)
    duck: dict[str, Any] = {}
    got: dict[str, Any] = {}
    with duck_v, spark_v:
        for s in suites:
            duck |= _checks(_timed(w.duck_seconds, s.name,
                                   lambda s=s: duck_v.run_model_suite(s, None)))
            got |= _checks(_timed(w.spark_seconds, s.name,
                                  lambda s=s: spark_v.run_model_suite(s, None)))
    return duck, got


def test_model_suites_agree_and_catch_the_same_duplicates(
        warehouses: Warehouses, spark_server: SparkServer, spark: Any,
        tmp_path: Path) -> None:
    suites = [s for s in load_suites(REPO / "expectations") if s.kind != "contract"]
    duck, got = _models(warehouses, spark_server.url, suites)
    assert got == duck
    assert {k.split(".")[0] for k in got} == {s.name for s in suites}
    assert "behaviour_int_employees__enriched.one_to_one" in got
    assert all(ok for ok, _ in got.values()), {k: v for k, v in got.items() if not v[0]}

    dup = ("insert into main.fct_claims select * from main.fct_claims where claim_id in "
           "(select claim_id from main.fct_claims order by claim_id limit 3)")
    con = duckdb.connect(str(warehouses.cfg.warehouse.path))
    try:
        con.execute(dup)
    finally:
        con.close()
    spark.sql(dup)
    grain = [s for s in suites if s.name == "grain_fct_claims"]
    duck, got = _models(warehouses, spark_server.url, grain)
    assert got == duck
    assert {k: n for k, (ok, n) in got.items() if not ok} == {"grain_fct_claims.key_unique": 3}
    report = {k: {"duckdb_s": round(warehouses.duck_seconds[k], 2),
                  "spark_s": round(warehouses.spark_seconds.get(k, 0.0), 2)}
              for k in sorted(warehouses.duck_seconds)}
    print("\nseconds per suite (summed over its runs):", json.dumps(report, indent=1))


def test_unexpected_rows_and_their_count_come_from_one_statement(spark: Any) -> None:
    """Stock GX runs an unexpected-rows query twice on Spark (its rows, then its count);
    the monitor's datasource runs one statement for both, with the same values, and a
    query ordered at its top still gets its rows in order (the stock two runs)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    from monitor.quality.gx_spark import (
        RowsOnceSparkExecutionEngine,
        add_spark_session,
        dataframe_batch,
    )

    context = gx.get_context(mode="ephemeral")
    ds = add_spark_session(context, "rows_once", spark)
    rows = spark.sql("select id, case when id % 7 = 0 then null else id end as v "
                     "from range(1, 101)")
    statements: list[str] = []
    sql = spark.sql

    def counted(query: str, *args: Any, **kwargs: Any) -> Any:
        statements.append(query)
        return sql(query, *args, **kwargs)

    cases = {"select id from {batch} where v is null": list(range(7, 101, 7)),
             "select id from {batch} where v is null order by id desc":
                 list(range(98, 0, -7)),
             "select id from {batch} where v < 0": []}
    with dataframe_batch(ds, "rows", rows) as batch:
        assert isinstance(batch.data.execution_engine, RowsOnceSparkExecutionEngine)
        for query, want in cases.items():
            statements.clear()
            spark.sql = counted  # type: ignore[method-assign]
            try:
                result = batch.validate(gxe.UnexpectedRowsExpectation(
                    unexpected_rows_query=query), result_format="COMPLETE")
            finally:
                spark.sql = sql  # type: ignore[method-assign]
            got = [int(r["id"]) for r in result.result["details"]["unexpected_rows"]]
            assert result.success is (not want), query
            assert result.result["observed_value"] == len(want), query
            assert (got if "order by" in query else sorted(got)) == want, query
            assert len(statements) == (2 if "order by" in query else 1), (query, statements)
