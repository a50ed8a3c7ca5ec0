"""Triage on PostgreSQL (issue 19): the isolated full refresh in a scratch schema, the
query plan (EXPLAIN ANALYZE), the reproduce commands and the column statistics' "try
cast", through the warehouse backend, on a real server (tests/pg_server.py).

Three generated days are loaded into ``raw`` as ingest writes them (the helpers of
tests/test_dbt_postgres.py) and built by the monitor's own dbt runner with the
``postgres`` target, in a database of this module. Then:

1. the isolated rebuild of every incremental model equals production, and leaves
   production's tables exactly as they were and no scratch schema behind;
2. with production's facts corrupted by hand (a claim deleted, an amount changed, a plan
   row doubled), the rebuild convicts them: the missed key, the stale version and the
   duplicate key are counted, with sample rows;
3. ``analyse`` of a recorded failed run does it all on PostgreSQL: isolation, the query
   plan of the suspect fact, the commands; the report says "PostgreSQL query plan";
4. the reproduce commands rebuild by hand in a scratch schema, and production is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa
import yaml

from monitor.core.config import Config, WarehouseConfig, load_config, state_url
from monitor.core.manifest import ModelInfo, load_manifest
from monitor.stages.build import DbtProject
from monitor.stages.loaders.base import RawStore
from monitor.store import state
from monitor.triage.analyse import analyse, write_report
from monitor.triage.classify import is_schema_error
from monitor.triage.isolation import isolated_refresh, scratch_schema
from monitor.warehouse.connection import backend_for, warehouse
from monitor.warehouse.engine import Unsupported

from .conftest import pg_config
from .pg_server import PG_BIN, PgServer, unavailable
from .test_dbt_postgres import copy_into_postgres, days_of_batches

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

try:
    import psycopg2  # the `postgres` extra, as dbt-postgres
except ImportError:
    unavailable("psycopg2 missing: pip install -e '.[postgres]' (scripts/setup does)")

FACTS = {"fct_employees": "employee_id", "fct_plans": "plan_id", "fct_claims": "claim_id"}


@dataclass
class Warehouse:
    cfg: Config
    dsn: str
    server: PgServer


@pytest.fixture(scope="module")
def wh(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    """A database of this module: three days ingested and built (dbt target postgres,
    schema main) by the monitor's dbt runner."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_server.dsn("postgres"))
    admin.autocommit = True
    saved = dict(os.environ)
    try:
        with admin.cursor() as cur:
            cur.execute(f"create database {name}")
        tmp = tmp_path_factory.mktemp("triage_pg")
        url = f"postgresql+psycopg2://{pg_server.user}@{pg_server.host}:{pg_server.port}/{name}"
        path = pg_config(tmp, url)
        path.write_text(path.read_text().replace("[dbt]\n", '[dbt]\ntarget = "postgres"\n', 1))
        cfg = load_config(path)
        assert cfg.dbt.target == "postgres" and cfg.warehouse.url == url
        for var in ("MONITOR_PG_SCHEMA", "PGPASSWORD"):
            os.environ.pop(var, None)
        engine = sa.create_engine(url)
        RawStore(engine, cfg.ingest).create()
        engine.dispose()
        dsn = pg_server.dsn(name)
        for day in days_of_batches(tmp, cfg.ingest):
            copy_into_postgres(dsn, cfg.ingest.schema, day)
            res = DbtProject(cfg).invoke("build")
            assert res.success, (res.error, [(n.name, n.status) for n in res.failed])
        yield Warehouse(cfg, dsn, pg_server)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {name} with (force)")
        admin.close()


def incremental_models(cfg: Config) -> list[ModelInfo]:
    return [n for n in load_manifest(cfg.dbt.target_path).lineage() if n.is_incremental]


def production(cfg: Config) -> dict[str, tuple[int, str]]:
    """Rows and an md5 of every row, in key order, of each table in schema main."""
    out = {}
    with warehouse(cfg.warehouse) as engine, engine.connect() as conn:
        tables = conn.execute(sa.text(
            "select table_name from information_schema.tables where table_schema = 'main' "
            "and table_type = 'BASE TABLE' order by 1")).scalars().all()
        for t in tables:
            out[t] = tuple(conn.execute(sa.text(
                f'select count(*), md5(coalesce(string_agg(x::text, \'|\' order by x::text), '
                f'\'\')) from main."{t}" as x')).one())
    return out


def scratch_schemas(cfg: Config) -> list[str]:
    with warehouse(cfg.warehouse) as engine, engine.connect() as conn:
        return list(conn.execute(sa.text(
            "select schema_name from information_schema.schemata "
            "where schema_name like 'dqm_triage%'")).scalars())


# --- 1. clean: the rebuild equals production, which it leaves alone ---------------------


def test_isolated_rebuild_equals_clean_production(wh: Warehouse, tmp_path: Path) -> None:
    models = incremental_models(wh.cfg)
    assert {"fct_claims", "fct_plans", "fct_employees", "stg_benefits__claims"} <= {
        m.name for m in models}
    before = production(wh.cfg)
    assert len(before) >= len(models) and all(n > 0 for n, _ in before.values())

    iso = isolated_refresh(wh.cfg, tmp_path / "iso", models, "20261205T000000Z-c1ea")
    print(json.dumps({"seconds": round(iso.seconds, 2), "reason": iso.reason,
                      "failed_tests": iso.failed_tests}))
    assert iso.ran, iso.reason
    assert iso.scratch == "scratch schema"
    assert iso.warehouse_copy.startswith("schema dqm_triage_20261205t000000z_c1ea of database")
    assert {d.model for d in iso.diffs} == {m.name for m in models}
    assert all(d.verdict == "equal" for d in iso.diffs), [
        (d.model, d.verdict, d.explanation) for d in iso.diffs]
    for d in iso.diffs:
        assert d.prod_rows == d.refresh_rows > 0, d
        assert (d.only_in_prod, d.only_in_refresh, d.changed) == (0, 0, 0), d
    assert not iso.failed_tests
    # production untouched: every table's rows, and the backend's fingerprint
    assert production(wh.cfg) == before
    assert iso.prod_checksum_before and iso.prod_checksum_before == iso.prod_checksum_after
    assert scratch_schemas(wh.cfg) == []  # dropped after the diff


def test_scratch_keeps_what_was_rebuilt_when_asked(wh: Warehouse, tmp_path: Path) -> None:
    """``keep``: the rebuilt fact is a table of the scratch schema (not a view of
    production), the schema dropped by the backend afterwards."""
    fact = [m for m in incremental_models(wh.cfg) if m.name == "fct_plans"]
    iso = isolated_refresh(wh.cfg, tmp_path / "iso", fact, "keep-me", keep=True)
    schema = scratch_schema("keep-me")
    try:
        assert iso.ran and [d.verdict for d in iso.diffs] == ["equal"], iso.reason
        with warehouse(wh.cfg.warehouse) as engine, engine.connect() as conn:
            kinds = dict(conn.execute(sa.text(
                "select table_name, table_type from information_schema.tables "
                "where table_schema = :s"), {"s": schema}).all())
        assert kinds.get("fct_plans") == "BASE TABLE", kinds
        # what fct_plans reads and is not rebuilt was deferred to production, not built
        assert "stg_benefits__plans" not in kinds and "int_plans__versions" not in kinds
    finally:
        backend = backend_for(wh.cfg.warehouse)
        scratch = backend.open_scratch(wh.cfg.warehouse, tmp_path, schema)  # empties it
        backend.drop_scratch(wh.cfg.warehouse, scratch)
    assert scratch_schemas(wh.cfg) == []


def test_scratch_refuses_to_drop_other_schemas(wh: Warehouse, tmp_path: Path) -> None:
    backend = backend_for(wh.cfg.warehouse)
    scratch = backend.open_scratch(wh.cfg.warehouse, tmp_path, "dqm_triage_x")
    with pytest.raises(ValueError, match="outside the scratch schema"):
        backend.drop_scratch(wh.cfg.warehouse, scratch, ["main"])
    backend.drop_scratch(wh.cfg.warehouse, scratch)
    assert scratch_schemas(wh.cfg) == []


# --- 2. the query plan and the try cast, through the backend ---------------------------


def test_query_plan_is_explain_analyze_read_only(wh: Warehouse, tmp_path: Path) -> None:
    sql = next((wh.cfg.dbt.target_path / "compiled").rglob("fct_claims.sql")).read_text()
    backend = backend_for(wh.cfg.warehouse)
    out = tmp_path / "plan.json"
    with warehouse(wh.cfg.warehouse) as engine, engine.connect() as conn:
        plan = backend.query_plan(conn, sql, out, 60.0)
        assert plan["engine"] == "PostgreSQL"
        assert json.loads(out.read_text())[0]["Plan"]["Node Type"]
        assert plan["slowest"] and all(o["seconds"] >= 0 for o in plan["slowest"])
        scans = {o["table"]: o for o in plan["scans"]}
        assert any(t.startswith(("main.", "raw.")) for t in scans), scans
        assert plan["rows_scanned"] > 0 and plan["bytes_scanned"] > 0
        assert any(o["rows_scanned"] > 0 and o["pages"] > 0 for o in scans.values())
        assert plan["total_seconds"] > 0
        # a write cannot run: the transaction is read only (and rolled back)
        with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
            backend.query_plan(conn, "insert into main.fct_plans select * from main.fct_plans",
                               tmp_path / "w.json", 60.0)
        # the statement_timeout cuts a slow query short
        with pytest.raises(sa.exc.DBAPIError, match="statement timeout"):
            backend.query_plan(conn, "select pg_sleep(5)", tmp_path / "s.json", 0.2)
        # the connection is usable afterwards, outside any transaction of the plan
        assert conn.execute(sa.text("select count(*) from main.fct_plans")).scalar_one() > 0


def test_cost_input_and_isolation_cap(wh: Warehouse, tmp_path: Path) -> None:
    """``relation_bytes`` (the cost estimate's row width) and the isolation's footprint
    (checked against ``[evidence] isolation_max_bytes``) come from the backend."""
    backend = backend_for(wh.cfg.warehouse)
    with warehouse(wh.cfg.warehouse) as engine:
        sizes = backend.relation_bytes(engine, [("main", "fct_claims"),
                                                ("main", "int_claims__enriched"),
                                                ("main", "no_such_table")])
    assert list(sizes) == [("main", "fct_claims")] and sizes[("main", "fct_claims")] > 8192
    models = incremental_models(wh.cfg)
    size, what = backend.isolation_footprint(wh.cfg.warehouse,
                                             [(m.schema, m.identifier) for m in models])
    assert size > sizes[("main", "fct_claims")]
    capped = dataclasses.replace(wh.cfg, evidence=dataclasses.replace(
        wh.cfg.evidence, isolation_max_bytes=size - 1))
    iso = isolated_refresh(capped, tmp_path / "iso", models, "capped")
    assert (iso.ran, iso.reason) == (False, f"{what} is {size} bytes, over "
                                     "evidence.isolation_max_bytes: run the reproduce "
                                     "commands by hand")
    assert not (tmp_path / "iso").exists() and scratch_schemas(wh.cfg) == []


def test_try_cast_double_never_fails(wh: Warehouse) -> None:
    backend = backend_for(wh.cfg.warehouse)
    with warehouse(wh.cfg.warehouse) as engine, engine.connect() as conn:
        expr = backend.try_cast_double(conn, "v")
        assert expr
        values = ["12.5", " 3 ", "-0.5e2", ".5", "abc", "1e400", "", None, "1" * 400, "1.2.3"]
        got = conn.execute(sa.text(
            f"select {expr} from unnest(cast(:v as text[])) with ordinality as t(v, i) "
            "order by i"), {"v": values}).scalars().all()
    inf = float("inf")  # out of a double's range, as DuckDB's try_cast reads it
    assert got == [12.5, 3.0, -50.0, 0.5, None, inf, None, None, inf, None]


def test_schema_errors_are_read_in_each_engines_words(wh: Warehouse, tmp_path: Path) -> None:
    """A model failing on its input's layout is ``schema_drift`` evidence: the server's
    own messages for a missing column and for a column whose values no longer cast (or
    that became text where a number was read), and DuckDB's, each under its engine."""
    def pg_error(sql: str) -> str:
        with (warehouse(wh.cfg.warehouse) as engine, engine.connect() as conn,
              pytest.raises(sa.exc.DBAPIError) as err):
            conn.execute(sa.text(sql))
        return str(err.value.orig)

    text = "select cast('x' || claim_id as text) as amount from main.fct_claims"
    pg = [pg_error("select claim_amount from main.fct_claims"),
          pg_error(f"select cast(amount as numeric) from ({text}) t"),
          pg_error(f"select amount from ({text}) t where amount > 0"),
          pg_error(f"select round(amount, 2) from ({text}) t")]
    assert all(is_schema_error(wh.cfg.warehouse, m) for m in pg), pg
    con = duckdb.connect()
    con.execute("create table c (claim_id int, amount varchar)")
    con.execute("insert into c values (1, 'x1')")
    dk = []
    for sql in ("select claim_amount from c", "select cast(amount as double) from c"):
        with pytest.raises(duckdb.Error) as derr:
            con.execute(sql).fetchall()
        dk.append(str(derr.value))
    duck = WarehouseConfig(path=tmp_path / "w.duckdb")
    assert all(is_schema_error(duck, m) for m in dk), dk
    # each engine's type errors are its own words: not read as the other's
    assert not is_schema_error(duck, pg[1]) and not is_schema_error(wh.cfg.warehouse, dk[1])
    assert not is_schema_error(wh.cfg.warehouse, "duplicate key value violates unique "
                               "constraint") and not is_schema_error(duck, "out of memory")


def test_generic_engine_has_no_isolation(tmp_path: Path) -> None:
    cfg = WarehouseConfig(url=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(Unsupported):
        backend_for(cfg).open_scratch(cfg, tmp_path, "dqm_triage_x")


# --- 3. corrupted production: the rebuild convicts it; analyse runs it all -------------


def record_run(cfg: Config, run_id: str) -> None:
    """A failed run in the state store, with the models the last build built."""
    results = json.loads((cfg.dbt.target_path / "run_results.json").read_text())["results"]
    project = load_manifest(cfg.dbt.target_path)
    st = state.open_state(state_url(cfg))
    try:
        with st.begin() as conn:
            conn.execute(state.runs.insert(), [dict(
                run_id=run_id, started_at=state.utcnow(), ended_at=state.utcnow(),
                status="failed", phase="validate", reason="test: facts corrupted",
                trigger="test", full_refresh=False, summary={})])
            conn.execute(state.run_models.insert(), [dict(
                run_id=run_id, unique_id=r["unique_id"],
                model=project.models[r["unique_id"]].name,
                layer=project.models[r["unique_id"]].layer, resource_type="model",
                status=r["status"], duration_s=float(r["execution_time"]), rows_affected=None,
                message="") for r in results if r["unique_id"] in project.models])
    finally:
        st.dispose()


def test_corrupted_facts_are_convicted_and_analysed(wh: Warehouse, tmp_path: Path) -> None:
    cfg = wh.cfg
    with warehouse(cfg.warehouse) as engine, engine.begin() as conn:
        deleted, changed = conn.execute(sa.text(
            "select claim_id from main.fct_claims order by claim_id limit 2")).scalars().all()
        conn.execute(sa.text("delete from main.fct_claims where claim_id = :c"), {"c": deleted})
        conn.execute(sa.text("update main.fct_claims set amount = amount + 1000 "
                             "where claim_id = :c"), {"c": changed})
        doubled = conn.execute(sa.text("select min(plan_id) from main.fct_plans")).scalar_one()
        conn.execute(sa.text("insert into main.fct_plans select * from main.fct_plans "
                             "where plan_id = :p"), {"p": doubled})
    before = production(cfg)

    run_id = "20261205T010000Z-bad1"
    record_run(cfg, run_id)
    for var in [v for v in os.environ if v.startswith("MONITOR_PG_")]:
        del os.environ[var]  # as in a fresh `monitor triage` process: no dbt ran before
    triage = analyse(cfg, run_id)
    assert production(cfg) == before  # the triage changed nothing in production
    assert scratch_schemas(cfg) == []

    iso = triage.isolation
    assert iso.ran and iso.reason == "scratch schema deleted after the diff", iso.reason
    diffs = {d.model: d for d in iso.diffs}
    claims, plans = diffs["fct_claims"], diffs["fct_plans"]
    assert (claims.only_in_refresh, claims.changed, claims.only_in_prod) == (1, 1, 0)
    assert claims.refresh_rows == claims.prod_rows + 1
    assert claims.verdict == "incremental filter"
    assert (plans.prod_duplicate_keys, plans.refresh_duplicate_keys) == (1, 0)
    assert plans.verdict == "unique key"
    assert diffs["fct_employees"].verdict == "equal"
    samples = triage.samples
    prod_rows = samples["fct_claims (production) at differing keys"]
    fresh_rows = samples["fct_claims (full refresh) at differing keys"]
    assert {r["claim_id"] for r in fresh_rows} == {deleted, changed}
    assert {r["claim_id"] for r in prod_rows} == {changed}

    # the query plan of the suspect (the first diverging fact) is PostgreSQL's
    plan = triage.query_plan
    assert plan.get("engine") == "PostgreSQL", plan
    assert plan["model"] in ("fct_claims", "fct_plans")
    assert plan["slowest"] and plan["scans"] and plan["rows_scanned"] > 0
    assert (cfg.evidence.dir / run_id / plan["file"]).is_file()

    # reproduce commands: the scratch schema, the postgres target, deferral; no file copy
    reproduce = triage.commands["reproduce"]
    joined = "\n".join(reproduce)
    # through a generated profile whose one output writes the scratch schema
    profiles = cfg.evidence.dir / run_id / "reproduce" / "profiles.yml"
    assert f"--profiles-dir {profiles.parent}" in joined
    output = yaml.safe_load(profiles.read_text())["benefits_pipeline"]["outputs"]["dqm_triage"]
    assert output["schema"] == scratch_schema(run_id) and output["type"] == "postgres"
    assert "--target dqm_triage" in joined and "--defer --favor-state --state" in joined
    assert "MONITOR_PG_SCHEMA" not in joined
    assert "--full-refresh" in joined and "cp " not in joined and "PGPASSWORD" not in joined
    assert "DROP SCHEMA IF EXISTS" in joined

    md = write_report(cfg, run_id, "md", None).read_text()
    assert "PostgreSQL query plan" in md and "in a scratch schema (schema dqm_triage_" in md
    assert "pages" in md


def test_reproduce_commands_rebuild_by_hand(wh: Warehouse, tmp_path: Path) -> None:
    """The commands on-call copies run as printed (dbt from the venv, psql from the
    server's binaries) and leave production as it was."""
    doc = json.loads((wh.cfg.evidence.dir / "20261205T010000Z-bad1" / "report.json")
                     .read_text())
    reproduce = [c for c in doc["commands"]["reproduce"] if "monitor" not in c.split()[0]]
    assert len(reproduce) == 3, reproduce
    before = production(wh.cfg)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{PG_BIN}:{os.environ['PATH']}"}
    if shutil.which("psql", path=env["PATH"]) is None:
        pytest.skip("no psql")
    schema = scratch_schema("20261205T010000Z-bad1")
    try:
        for cmd in reproduce[:2]:
            done = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True,
                                  cwd=tmp_path, timeout=600)
            assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
        with warehouse(wh.cfg.warehouse) as engine, engine.connect() as conn:
            rebuilt = conn.execute(sa.text(f"select count(*) from {schema}.fct_claims")).scalar()
            prod = conn.execute(sa.text("select count(*) from main.fct_claims")).scalar()
        assert rebuilt == prod + 1  # the claim deleted by hand in production is back
    finally:
        subprocess.run(reproduce[2], shell=True, env=env, capture_output=True, timeout=60)
        shutil.rmtree("/tmp/triage-20261205T010000Z-bad1-target", ignore_errors=True)
    assert production(wh.cfg) == before
    assert scratch_schemas(wh.cfg) == []
