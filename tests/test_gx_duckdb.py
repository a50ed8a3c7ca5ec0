"""The DuckDB datasource for GX: stock GX loses results on duckdb-engine, ours does not.

Every expectation type the suites use is run on a real DuckDB file, once on data that must
pass and once on data that must fail, through the extension.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import great_expectations as gx
import great_expectations.expectations as gxe
import pytest
import sqlalchemy as sa
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from monitor.quality.datasource import add_warehouse_datasource
from monitor.quality.gx_duckdb import (
    DuckDBDatasource,
    DuckDBExecutionEngine,
    dispose_datasource,
)
from monitor.warehouse.connection import backend_of_url

# 100 rows: id 0..99; v NULL on every 10th row; ein bad on every 7th row.
GOOD_TABLE = """
create table t as select
    i::varchar as id,
    case when i % 10 = 0 then null else 'x' end as v,
    case when i % 3 = 0 then 'medical' else 'dental' end as plan_type,
    date '2024-01-01' + i::int as start_date,
    case when i % 2 = 0 then null else date '2026-01-01' end as end_date,
    (i * 1.5)::decimal(18, 2) as amount,
    case when i % 7 = 0 then '12 3456789' else '12-3456789' end as ein
from range(100) r(i)
"""
# The same shape with one break per column.
BAD_TABLE = """
create table t as select
    (i % 50)::varchar as id,
    null::varchar as v,
    case when i % 3 = 0 then 'medical' else 'Dental' end as plan_type,
    date '2024-01-01' + i::int as start_date,
    case when i = 5 then date '2023-01-01' else null end as end_date,
    (i - 3)::decimal(18, 2) as amount,
    case when i % 7 = 0 then 'USD 12' else '12-3456789' end as ein
from range(100) r(i)
"""


def _context() -> Any:
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _warehouse(path: Path, ddl: str) -> str:
    con = duckdb.connect(str(path))
    try:
        con.execute(ddl)
    finally:
        con.close()
    return f"duckdb:///{path}"


@pytest.fixture
def good_url(tmp_path: Path) -> str:
    return _warehouse(tmp_path / "good.duckdb", GOOD_TABLE)


@pytest.fixture
def bad_url(tmp_path: Path) -> str:
    return _warehouse(tmp_path / "bad.duckdb", BAD_TABLE)


class Batch:
    """A whole-table batch of ``t`` through a datasource, disposed on close."""

    def __init__(self, url: str, stock: bool = False) -> None:
        self.context = _context()
        if stock:
            self.ds = self.context.data_sources.add_sql(name="w", connection_string=url)
        else:
            self.ds = add_warehouse_datasource(self.context, "w", url, kind="duckdb")
        asset = self.ds.add_query_asset(name="t", query="select * from t")
        self.batch = asset.add_batch_definition_whole_table("all").get_batch()

    def validate(self, expectation: Any) -> Any:
        return self.batch.validate(
            expectation, result_format={"result_format": "COMPLETE"}
        )

    def close(self) -> None:
        dispose_datasource(self.ds)


@pytest.fixture
def batch_of() -> Iterator[Any]:
    opened: list[Batch] = []

    def make(url: str, stock: bool = False) -> Batch:
        b = Batch(url, stock)
        opened.append(b)
        return b

    yield make
    for b in opened:
        b.close()


def test_add_duckdb_is_registered_and_uses_the_keeping_engine(good_url: str, batch_of: Any) -> None:
    b = batch_of(good_url)
    assert isinstance(b.ds, DuckDBDatasource)
    assert b.ds.type == "duckdb"
    assert isinstance(b.ds.get_execution_engine(), DuckDBExecutionEngine)
    assert backend_of_url(good_url).gx_datasource == "duckdb"
    assert backend_of_url("sqlite:///x.db").gx_datasource == "sql"


def test_stock_sql_datasource_loses_duckdb_results(good_url: str, batch_of: Any) -> None:
    """Upstream #10738/#11579: the pooled connection is reset before GX fetches."""
    r = batch_of(good_url, stock=True).validate(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    assert r.success is False  # 100 rows, yet it fails: nothing came back
    assert r.result == {}
    messages = " ".join(str(v) for v in (r.exception_info or {}).values())
    assert "IndexError" in messages


def test_extension_returns_the_right_counts(good_url: str, batch_of: Any) -> None:
    b = batch_of(good_url)
    rows = b.validate(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    assert rows.success and rows.result["observed_value"] == 100
    nulls = b.validate(gxe.ExpectColumnValuesToNotBeNull(column="v"))
    assert not nulls.success and nulls.result["unexpected_count"] == 10
    sql = b.validate(gxe.UnexpectedRowsExpectation(
        unexpected_rows_query="select id from {batch} where v is null"))
    assert not sql.success and sql.result["observed_value"] == 10
    assert sorted(int(r["id"]) for r in sql.result["details"]["unexpected_rows"]) == list(
        range(0, 100, 10))


def test_unexpected_rows_and_their_count_come_from_one_query(good_url: str, batch_of: Any,
                                                              monkeypatch: Any) -> None:
    """Stock GX runs an unexpected-rows query twice (its rows, then count(*) of it);
    the extension's engine runs it once (monitor.quality.rows_once), unless the query
    is ordered at its top, whose order a materialized CTE need not keep."""
    b = batch_of(good_url)
    engine = b.ds.get_execution_engine()
    statements: list[str] = []
    run = engine.execute_query

    def counted(query: Any) -> Any:
        statements.append(str(query))
        return run(query)

    monkeypatch.setattr(engine, "execute_query", counted)
    for query, n in (("select id from {batch} where v is null", 1),
                     ("select id from {batch} where v is null order by id", 2)):
        statements.clear()
        r = b.validate(gxe.UnexpectedRowsExpectation(unexpected_rows_query=query))
        assert r.result["observed_value"] == 10, query
        ran = [s for s in statements if "where v is null" in s]
        assert len(ran) == n, (query, ran)


# (name, expectation, expected unexpected_count or observed value on the bad table)
CASES: list[tuple[str, Any]] = [
    ("not_null", gxe.ExpectColumnValuesToNotBeNull(column="v", mostly=0.85)),
    ("in_set", gxe.ExpectColumnValuesToBeInSet(column="plan_type",
                                               value_set=["medical", "dental", "vision"])),
    ("row_count", gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=100)),
    ("unique_proportion", gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
        column="id", min_value=0.95)),
    ("columns", gxe.ExpectTableColumnsToMatchSet(column_set=["id", "v", "amount"],
                                                 exact_match=False)),
    ("between", gxe.ExpectColumnValuesToBeBetween(column="amount", min_value=0)),
    ("pair_a_gt_b", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
        column_A="end_date", column_B="start_date", or_equal=True,
        ignore_row_if="either_value_is_missing")),
    ("sql_rows", gxe.UnexpectedRowsExpectation(
        unexpected_rows_query="select id, ein from {batch} "
                              "where not (ein similar to '[0-9]{{2}}[- ]?[0-9]{{7}}')")),
]


@pytest.mark.parametrize(("name", "expectation"), CASES, ids=[c[0] for c in CASES])
def test_expectation_type_passes_on_good_and_fails_on_bad(
    name: str, expectation: Any, good_url: str, bad_url: str, batch_of: Any
) -> None:
    good = batch_of(good_url).validate(expectation)
    assert good.success, (name, good.result, good.exception_info)
    bad_batch = batch_of(bad_url)
    if name == "row_count":  # the bad table has the same size: shrink the bound instead
        expectation = gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=50)
    if name == "columns":
        expectation = gxe.ExpectTableColumnsToMatchSet(column_set=["id", "amount_usd"],
                                                       exact_match=False)
    bad = bad_batch.validate(expectation)
    assert not bad.success, (name, bad.result)
    assert not _raised(bad), (name, bad.exception_info)  # failed on the data, not an error


def test_bad_values_are_reported(bad_url: str, batch_of: Any) -> None:
    b = batch_of(bad_url)
    in_set = b.validate(gxe.ExpectColumnValuesToBeInSet(column="plan_type",
                                                        value_set=["medical", "dental"]))
    assert in_set.result["unexpected_count"] == 66
    assert set(in_set.result["partial_unexpected_list"]) == {"Dental"}
    between = b.validate(gxe.ExpectColumnValuesToBeBetween(column="amount", min_value=0))
    assert between.result["unexpected_count"] == 3
    unique = b.validate(gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(column="id",
                                                                          min_value=0.95))
    assert unique.result["observed_value"] == pytest.approx(0.5)
    sql = b.validate(gxe.UnexpectedRowsExpectation(
        unexpected_rows_query="select ein from {batch} where try_cast(ein as double) is null "
                              "and ein like 'USD%'"))
    assert sql.result["observed_value"] == 15


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        (gxe.ExpectColumnValuesToMatchRegex(column="ein", regex=r"^\d{2}-\d{7}$"),
         "Regex is not supported for dialect duckdb"),
        (gxe.ExpectColumnValuesToMatchLikePattern(column="ein", like_pattern="%-%"),
         "Like patterns are not supported for dialect duckdb"),
    ],
    ids=["regex", "like"],
)
def test_gx_refuses_regex_and_like_on_duckdb(expectation: Any, message: str, good_url: str,
                                              batch_of: Any) -> None:
    """Why format checks are UnexpectedRowsExpectation SQL in the suites."""
    r = batch_of(good_url).validate(expectation)
    assert not r.success
    assert message in str(r.exception_info)


def test_dispose_releases_the_file_for_another_configuration(tmp_path: Path) -> None:
    url = _warehouse(tmp_path / "w.duckdb", GOOD_TABLE)
    b = Batch(url)
    assert b.validate(gxe.ExpectTableRowCountToBeBetween(min_value=1)).success
    # GX's kept connection is open: another configuration of the same file is refused.
    with pytest.raises(duckdb.Error, match="different configuration"):
        duckdb.connect(str(tmp_path / "w.duckdb"), config={"threads": 1}).close()
    b.close()
    con = duckdb.connect(str(tmp_path / "w.duckdb"), config={"threads": 1})
    try:
        assert con.execute("select count(*) from t").fetchone() == (100,)
    finally:
        con.close()
    b.close()  # idempotent


def test_engine_kwargs_reach_the_duckdb_connection(tmp_path: Path) -> None:
    url = _warehouse(tmp_path / "w.duckdb", GOOD_TABLE)
    ctx = _context()
    ds = add_warehouse_datasource(ctx, "w", url, {"connect_args": {"config": {"threads": 1}}},
                                  kind="duckdb")
    try:
        asset = ds.add_query_asset(name="q", query="select current_setting('threads') as n")
        batch = asset.add_batch_definition_whole_table("all").get_batch()
        r = batch.validate(gxe.ExpectColumnValuesToBeInSet(column="n", value_set=[1]),
                           result_format="COMPLETE")
        assert r.success, r.result
    finally:
        dispose_datasource(ds)


def test_other_backends_use_the_stock_sql_datasource(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("create table t (id text, v text)")
        conn.exec_driver_sql("insert into t values ('1', 'x'), ('2', null), ('3', 'y')")
    engine.dispose()
    ctx = _context()
    ds = add_warehouse_datasource(ctx, "w", f"sqlite:///{path}")
    try:
        assert ds.type == "sql" and not isinstance(ds, DuckDBDatasource)
        batch = ds.add_query_asset(name="q", query="select * from t") \
            .add_batch_definition_whole_table("all").get_batch()
        r = batch.validate(gxe.ExpectColumnValuesToNotBeNull(column="v"),
                           result_format="COMPLETE")
        assert r.result["unexpected_count"] == 1
    finally:
        dispose_datasource(ds)


def _raised(result: Any) -> bool:
    info = result.exception_info or {}
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())
