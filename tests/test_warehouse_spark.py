"""The Spark engine of the warehouse layer against a real Spark Connect server: SQLAlchemy
metadata creates and reflects parquet tables, values round-trip through bound
parameters, and the SparkBackend's statistics, median, plan and dbt checks hold."""

from __future__ import annotations

import datetime
import decimal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.core.config import Config, ConfigError, WarehouseConfig, load_config
from monitor.triage.isolation import _cols_of, _rel
from monitor.warehouse.connection import backend_for, backend_of
from monitor.warehouse.engine import Busy, Scratch
from monitor.warehouse.spark import SparkBackend
from monitor.warehouse.spark_session import stop_sessions

from .conftest import write_config
from .spark_server import SparkServer

pytestmark = pytest.mark.spark

SCHEMA = "dqm_sql_test"
ODD = "Amount $ (net) `x` select"  # a column name needing backticks, with a backtick


@pytest.fixture(scope="module")
def wh(spark_server: SparkServer) -> WarehouseConfig:
    return WarehouseConfig(url=spark_server.url)


@pytest.fixture(scope="module")
def engine(wh: WarehouseConfig) -> Iterator[sa.Engine]:
    eng = backend_for(wh).create_engine(wh)
    yield eng
    with eng.connect() as conn:
        conn.execute(sa.schema.DropSchema(SCHEMA, cascade=True, if_exists=True))
    eng.dispose()
    stop_sessions()


@pytest.fixture(scope="module")
def table(engine: sa.Engine) -> sa.Table:
    md = sa.MetaData(schema=SCHEMA)
    t = sa.Table("claims", md,
                 sa.Column("claim_id", sa.BigInteger, nullable=False),
                 sa.Column("note", sa.String(20)),
                 sa.Column(ODD, sa.Numeric(10, 2)),
                 sa.Column("score", sa.Float),
                 sa.Column("ok", sa.Boolean),
                 sa.Column("day", sa.Date),
                 sa.Column("at", sa.DateTime))
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(SCHEMA, if_not_exists=True))
        md.create_all(conn)
        conn.execute(t.insert(), ROWS)
    return t


ROWS = [
    {"claim_id": 1, "note": "it's a \\ 'quote'", ODD: decimal.Decimal("10.50"), "score": 1.0,
     "ok": True, "day": datetime.date(2026, 11, 2), "at": datetime.datetime(2026, 11, 2, 8, 30)},
    {"claim_id": 2, "note": None, ODD: None, "score": None, "ok": None, "day": None, "at": None},
    {"claim_id": 3, "note": ":param -- ; drop", ODD: decimal.Decimal("-3.25"), "score": 4.0,
     "ok": False, "day": datetime.date(2026, 1, 31), "at": datetime.datetime(2026, 1, 31)},
    {"claim_id": 4, "note": "ümlaut", ODD: decimal.Decimal("0.01"), "score": 10.0,
     "ok": True, "day": datetime.date(2026, 2, 1), "at": datetime.datetime(2026, 2, 1, 23, 59, 59)},
]


def test_the_config_selects_spark_and_refuses_it_for_the_state_store(tmp_path: Path) -> None:
    path = write_config(tmp_path, path='"data/w.duckdb"\nurl = "sc://127.0.0.1:15002"')
    cfg: Config = load_config(path)
    assert isinstance(backend_for(cfg.warehouse), SparkBackend)
    assert backend_for(cfg.warehouse).transactional is False
    state = write_config(tmp_path, url='"sc://127.0.0.1:15002"')
    with pytest.raises(ConfigError, match=r"^state\.url: the state store cannot be Spark"):
        load_config(state)
    token = write_config(tmp_path, path='"w.duckdb"\nurl = "sc://h:1/;token=abc"')
    with pytest.raises(ConfigError, match=r"^warehouse\.url: holds a token"):
        load_config(token)


def test_ddl_is_spark_sql(engine: sa.Engine, table: sa.Table) -> None:
    ddl = str(sa.schema.CreateTable(table).compile(engine)).split()
    assert ddl[:3] == ["CREATE", "TABLE", f"{SCHEMA}.claims"]
    assert "USING" in ddl and ddl[ddl.index("USING") + 1] == "parquet"
    for typ in ("BIGINT", "STRING,", "DECIMAL(10,", "DOUBLE,", "BOOLEAN,", "DATE,", "TIMESTAMP"):
        assert typ in ddl
    assert str(sa.schema.CreateSchema("x").compile(engine)) == "CREATE DATABASE x"


def test_rows_round_trip_through_bound_parameters(engine: sa.Engine, table: sa.Table) -> None:
    with engine.connect() as conn:
        got = conn.execute(sa.select(table).order_by(table.c.claim_id)).mappings().all()
        assert [dict(r) for r in got] == ROWS
        # a bound value with a quote, a backslash and a colon selects exactly its row
        q = sa.select(table.c.claim_id).where(table.c.note == sa.bindparam("n"))
        assert conn.execute(q, {"n": ROWS[0]["note"]}).scalars().all() == [1]
        assert conn.execute(q, {"n": ROWS[2]["note"]}).scalars().all() == [3]
        # the same as literals (backslash escapes: Spark reads 'it''s' as its)
        lit = q.params(n=ROWS[0]["note"]).compile(engine, compile_kwargs={"literal_binds": True})
        assert conn.exec_driver_sql(str(lit)).scalars().all() == [1]
        assert conn.execute(sa.select(sa.func.count()).select_from(table)
                            .where(table.c.note.is_(None))).scalar() == 1
        assert conn.execute(sa.select(table.c[ODD]).where(table.c.claim_id == 3)
                            ).scalar() == decimal.Decimal("-3.25")


def test_reflection_and_an_odd_column(engine: sa.Engine, table: sa.Table) -> None:
    with engine.connect() as conn:
        insp = sa.inspect(conn)
        assert SCHEMA in insp.get_schema_names()
        assert insp.get_table_names(SCHEMA) == ["claims"]
        assert insp.has_table("claims", schema=SCHEMA)
        assert not insp.has_table("nope", schema=SCHEMA)
        # a database that does not exist: nothing in it, not an error
        assert not insp.has_table("claims", schema="no_such_db")
        assert insp.get_table_names("no_such_db") == insp.get_view_names("no_such_db") == []
        # a lookup is one statement (each costs planning on Spark), without SHOW DATABASES
        seen: list[str] = []
        sa.event.listen(conn, "before_cursor_execute", lambda *a: seen.append(a[2]))
        assert sa.inspect(conn).has_table("claims", schema=SCHEMA)
        assert seen == [f"SHOW TABLES IN `{SCHEMA}`"], seen
        cols = {c["name"]: type(c["type"]).__name__ for c in insp.get_columns("claims", SCHEMA)}
        assert cols == {"claim_id": "BigInteger", "note": "String", ODD: "Numeric",
                        "score": "Double", "ok": "Boolean", "day": "Date", "at": "DateTime"}
        found = SparkBackend().relation_columns(conn, [(SCHEMA, "claims"), (SCHEMA, "nope")])
        assert found == {(SCHEMA, "claims"): {
            "claim_id": "BIGINT", "note": "STRING", ODD: "DECIMAL(10,2)", "score": "DOUBLE",
            "ok": "BOOLEAN", "day": "DATE", "at": "TIMESTAMP"}}
        quoted = SparkBackend.quote_ident(conn, ODD)
        assert quoted == "`Amount $ (net) ``x`` select`"
        assert conn.exec_driver_sql(f"SELECT sum({quoted}) FROM {SCHEMA}.claims"
                                    ).scalar() == decimal.Decimal("7.26")


def test_statistics_bytes_median_and_identifiers(engine: sa.Engine, table: sa.Table) -> None:
    backend = backend_of(engine)
    assert isinstance(backend, SparkBackend)
    with pytest.raises(ValueError, match="not a Spark table or schema name"):
        backend.refresh_statistics(engine, [(SCHEMA, "claims; DROP DATABASE dqm_sql_test")])
    backend.refresh_statistics(engine, [(SCHEMA, "claims")])
    sizes = backend.relation_bytes(engine, [(SCHEMA, "claims"), (SCHEMA, "nope")])
    assert list(sizes) == [(SCHEMA, "claims")] and sizes[(SCHEMA, "claims")] > 0
    with engine.connect() as conn:
        median = backend.median(conn.dialect, table.c.score)
        assert median is not None
        assert conn.execute(sa.select(median)).scalar() == 4.0  # of 1, 4, 10 (NULL left out)
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 4
        sampled = [conn.exec_driver_sql(
            f"SELECT count(*) FROM {SCHEMA}.claims WHERE "
            f"{backend.key_hash_sample(conn, ['claim_id', ODD], m)}").scalar() for m in (1, 2)]
        assert sampled[0] == 4 and 0 <= sampled[1] <= 4


def test_suite_functions_read_text_as_duckdb(engine: sa.Engine) -> None:
    backend = SparkBackend()
    cases = {
        "try_double": [(" 1_000.5 ", 1000.5), ("abc", None), ("1e3", 1000.0), ("_1", None)],
        "try_date": [("2026-11-02", datetime.date(2026, 11, 2)), ("11/2/2026",
                     datetime.date(2026, 11, 2)), ("20261102", datetime.date(2026, 11, 2)),
                     ("02-nov-2026", datetime.date(2026, 11, 2)), ("2026-02-30", None),
                     ("x", None)],
        "try_timestamp": [("2026-11-02 08:30:00", datetime.datetime(2026, 11, 2, 8, 30)),
                          ("2026-11-02T08:30:00Z", datetime.datetime(2026, 11, 2, 8, 30)),
                          ("2026-11-02 25:00:00", None)],
    }
    with engine.connect() as conn:
        for name, pairs in cases.items():
            sql = backend.suite_function(name, ["v"])
            for text, want in pairs:
                got = conn.exec_driver_sql(f"SELECT {sql} FROM (SELECT :t AS v)",
                                           {"t": text}).scalar()
                assert got == want, (name, text, got)
        a = conn.exec_driver_sql(f"SELECT {backend.suite_function('key_hash', ['v'])} "
                                 "FROM (SELECT 42 AS v)").scalar()
        b = conn.exec_driver_sql(f"SELECT {backend.suite_function('key_hash', ['v'])} "
                                 "FROM (SELECT '42' AS v)").scalar()
        assert isinstance(a, int) and a == b


def test_query_plan_is_written(engine: sa.Engine, table: sa.Table, tmp_path: Path) -> None:
    out = tmp_path / "plan.txt"
    sql = (f"SELECT a.claim_id, count(*) AS n FROM {SCHEMA}.claims a JOIN {SCHEMA}.claims b "
           "ON a.claim_id = b.claim_id GROUP BY a.claim_id")
    with engine.connect() as conn:
        summary = SparkBackend().query_plan(conn, sql, out, timeout_s=120)
    text = out.read_text()
    assert "EXPLAIN FORMATTED" in text and "Scan parquet" in text
    assert summary["engine"] == "Spark" and summary["total_seconds"] > 0
    assert [s["table"] for s in summary["scans"]] == [f"{SCHEMA}.claims"] * 2
    assert len(summary["joins"]) == 1 and "claim_id" in summary["joins"][0]["join"]
    # every column is computed: a count(*) around this would prune the failing aggregate
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="is not true"):
        SparkBackend().query_plan(conn, "SELECT max(assert_true(id < 5)) AS m FROM range(10)",
                                  tmp_path / "assert.txt", timeout_s=120)
    slow = "SELECT count(DISTINCT a.id * b.id) FROM range(200000) a CROSS JOIN range(20000) b"
    started = time.monotonic()
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError,
                                                 match="OPERATION_CANCELED"):
        SparkBackend().query_plan(conn, slow, tmp_path / "slow.txt", timeout_s=3)
    assert time.monotonic() - started < 60
    with engine.connect() as conn:  # the session outlives the interrupted query
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1


def test_dbt_target_must_be_the_same_endpoint(wh: WarehouseConfig,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SparkBackend()
    port = wh.url.rsplit(":", 1)[1]
    assert backend.storable_text("a\udcffb") == "a\\udcffb"
    assert backend.storable_text("ümlaut\x00") == "ümlaut\x00"
    assert backend.dbt_environment(wh) == {"SPARK_REMOTE": wh.url}
    monkeypatch.setenv("DQM_TEST_SPARK_TOKEN", "s3cr/t")
    with_token = WarehouseConfig(url=wh.url, password_env="DQM_TEST_SPARK_TOKEN")
    assert backend.dbt_environment(with_token) == {"SPARK_REMOTE": f"{wh.url}/;token=s3cr%2Ft"}
    session = {"type": "spark", "method": "session", "schema": "main", "host": "NA"}
    assert backend.dbt_mismatch(wh, session) is None
    here = {**session, "server_side_parameters": {"spark.remote": f"sc://localhost:{port}"}}
    assert backend.dbt_mismatch(wh, here) is None
    there = {**session, "server_side_parameters": {"spark.remote": "sc://10.0.0.9:15002"}}
    assert backend.dbt_mismatch(wh, there) == f"sc://10.0.0.9:15002, not sc://127.0.0.1:{port}"
    thrift = {"type": "spark", "method": "thrift", "host": "127.0.0.1", "port": 10000}
    assert "method 'thrift'" in str(backend.dbt_mismatch(wh, thrift))
    assert backend.dbt_mismatch(wh, {"type": "postgres"}) == (
        f"a postgres warehouse, not sc://127.0.0.1:{port}")


def test_the_cycle_lock_sits_beside_the_state_file(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, path='"w.duckdb"\nurl = "sc://127.0.0.1:1"'))
    backend = backend_for(cfg.warehouse)
    with backend.cycle_lock(cfg):
        assert list((tmp_path / "data").glob("state.db.spark-*.lock"))
        with pytest.raises(Busy, match=r"another cycle is running on sc://127\.0\.0\.1:1"), \
                backend.cycle_lock(cfg):
            pass
    with backend.cycle_lock(cfg):
        pass


def test_catalog_reads_without_information_schema(engine: sa.Engine, table: sa.Table) -> None:
    """What carry and triage read of the catalog: whether a relation exists, a view's
    stored text, and a relation's columns in table order (an odd name backtick-quoted)."""
    backend = backend_of(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {SCHEMA}.big_claims AS "
                             f"SELECT claim_id, note FROM {SCHEMA}.claims WHERE claim_id > 1")
        assert backend.has_relation(conn, (SCHEMA, "claims"))
        assert backend.has_relation(conn, (SCHEMA, "big_claims"))
        assert not backend.has_relation(conn, (SCHEMA, "nothing_here"))
        defs = backend.view_definitions(
            conn, [(SCHEMA, "big_claims"), (SCHEMA, "claims"), ("dqm_no_such_db", "v")])
        assert list(defs) == [(SCHEMA, "big_claims")]  # the table is no view
        assert "WHERE claim_id > 1" in defs[(SCHEMA, "big_claims")]
        rel = _rel(conn, Scratch(WarehouseConfig(), "s", "scratch database", ""),
                   (SCHEMA, "claims"), True)
        assert rel == f"`{SCHEMA}`.`claims`"
        assert _cols_of(conn, rel) == [c.name for c in table.columns]
        assert _cols_of(conn, _rel(conn, Scratch(WarehouseConfig(), "s", "", ""),
                                   (SCHEMA, "big_claims"), False)) == ["claim_id", "note"]
