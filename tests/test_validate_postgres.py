"""The expectation suites on PostgreSQL (issue 19, item 3), checked against DuckDB.

The same suite files run on both engines: GX's stock SQL datasource on PostgreSQL, the
DuckDB one of monitor.quality.gx_duckdb on DuckDB. Where DuckDB SQL has no PostgreSQL
equivalent (try_strptime, try_cast, hash), a suite calls a suite function that each
warehouse backend renders (docs/contracts.md): first each function is shown to give the
same value on both engines for the same text; then the same landed batches are ingested
into both engines and gated, and every check must pass or fail alike, with the same
unexpected counts.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from dqm_demo.demo import land_day
from dqm_demo.generate import generate
from monitor.core.config import Config, WarehouseConfig, load_config
from monitor.core.manifest import load_manifest
from monitor.quality.results import SuiteResult
from monitor.quality.suites import load_suites
from monitor.quality.validator import Validator
from monitor.stages import checks
from monitor.stages.build import DbtProject, release_duckdb
from monitor.stages.ingest import ingest
from monitor.store import batches
from monitor.warehouse.connection import backend_for, dbt_environment, warehouse
from monitor.warehouse.duckdb import DuckDBBackend
from monitor.warehouse.postgres import PostgresBackend

from .conftest import REPO, pg_config, write_config

pytestmark = pytest.mark.postgres

START = date(2026, 3, 2)
CLAIMS = 300

DATES = [
    "2026-03-05", "2026-3-5", " 2026-03-05 ", "03/05/2026", "3/5/2026", "20260305",
    "05-Mar-2026", "5-mar-2026", "05-MAR-2026", "2026-02-29", "2024-02-29", "2026-02-30",
    "2026-13-01", "2026-00-10", "2026-01-00", "2026-04-31", "0000-01-01", "1-1-1",
    "26-03-05", "05-Mar-26", "05-Mrz-2026", "05-March-2026", "2026/03/05", "99999-01-01",
    "2026030", "202603051", "20261301", "", " ", "abc", "2026-03-05 10:00:00", "N/A",
]
TIMESTAMPS = [
    "2026-03-05 10:00:00", "2026-03-05T10:00:00Z", "2026-03-05T10:00:00",
    "2026-03-05 24:00:00", "2026-03-05 23:59:59", "2026-03-05 1:2:3", "2026-03-05T1:2:3Z",
    "2026-02-30 10:00:00", "2026-03-05 10:60:00", "2026-03-05 10:00:60", "2026-03-05",
    " 2026-03-05 10:00:00 ", "2026-03-05  10:00:00", "2026-03-05\t10:00:00",
    "2026-03-0510:00:00", "2026-03-05 10:00:00Z", "2026-03-05T 10:00:00Z", "2026-03-05 10:00",
    "", "x",
]
NUMBERS = [
    "12.5", " 12.5 ", "+1", "-.5", "5.", "+.5", "1e5", "1E+05", "1.e5", "-3e-2", "0",
    "1_000.5", "1.5_0", ".5_5", "1e1_0", "1__0", "_1", "1_", "1._5", "1e400", "-1e400",
    "1e-400", "1e99999", "0e99999", "1e-99999", "inf", "+inf", "-Infinity", "INFINITY",
    "nan", "NaN", "-nan", "0x10", "1,5", "abc", "", " ", "1e", ".e5", "1.5e", "1e+", "+",
    "-", ".", "12.5.1", "1 000", "1d", "123456789012345678901234567890",
]


@pytest.fixture
def pg(pg_database: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_database, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def _evaluate(name: str, inputs: list[str], pg: sa.Engine, *, stored: bool = False
              ) -> tuple[list[Any], list[Any]]:
    """``{{name(x)}}`` of each input on DuckDB and on PostgreSQL, as text (dates),
    floats or None; ``stored``: PostgreSQL's stored functions (made first), not the
    inline SQL."""
    as_text = name != "try_double"
    duck_sql = DuckDBBackend().suite_function(name, ["x"])
    backend = PostgresBackend()
    render = backend.suite_functions(pg) if stored else backend.suite_function
    pg_sql = render(name, ["x"])
    assert ("dq_monitor." in pg_sql) is stored
    con = duckdb.connect()
    try:
        duck = [con.execute(f"select {f'cast({duck_sql} as varchar)' if as_text else duck_sql}"
                            f" from (select cast(? as varchar) as x) t", [v]).fetchone()[0]
                for v in inputs]
    finally:
        con.close()
    with pg.connect() as conn:
        sel = f"cast({pg_sql} as text)" if as_text else pg_sql
        got = [conn.execute(sa.text(f"select {sel} from (select cast(:v as text) as x) t"),
                            {"v": v}).scalar() for v in inputs]
    return duck, got


def _same_text(duck: Any, pg: Any) -> bool:
    if duck is None or pg is None:
        return duck is pg
    d, p = str(duck), str(pg)
    # DuckDB writes 1 BC as "0001-01-01 (BC)", PostgreSQL as "0001-01-01 BC"
    return d.replace(" (BC)", " BC") == p


@pytest.mark.parametrize("stored", [False, True], ids=["inline", "stored"])
@pytest.mark.parametrize(("name", "inputs"), [("try_date", DATES),
                                              ("try_timestamp", TIMESTAMPS)])
def test_date_functions_agree(name: str, inputs: list[str], pg: sa.Engine, stored: bool
                              ) -> None:
    """The inline SQL and the stored PL/pgSQL functions (monitor.warehouse.
    postgres_functions) both read text as DuckDB's try_strptime."""
    duck, got = _evaluate(name, inputs, pg, stored=stored)
    differ = [(v, d, p) for v, d, p in zip(inputs, duck, got, strict=True)
              if not _same_text(d, p)]
    assert not differ
    assert any(d is None for d in duck) and any(d is not None for d in duck)


def test_suite_functions_stay_inline_where_they_cannot_be_stored(pg_database: str) -> None:
    """A role that may not create them (here: a read-only session on a fresh database)
    gets the inline SQL, and a warning, not a failed validation."""
    read_only = sa.create_engine(
        pg_database, poolclass=sa.NullPool,
        connect_args={"options": "-c default_transaction_read_only=on"})
    try:
        render = PostgresBackend().suite_functions(read_only)
        assert render("try_date", ["x"]) == PostgresBackend().suite_function("try_date", ["x"])
    finally:
        read_only.dispose()
    writer = sa.create_engine(pg_database, poolclass=sa.NullPool)
    try:
        assert PostgresBackend().suite_functions(writer)("try_date", ["x"]) == (
            "dq_monitor.try_date_v1(x)")
        assert PostgresBackend().suite_functions(writer)("try_double", ["x"]) == (
            PostgresBackend().suite_function("try_double", ["x"]))  # not stored
    finally:
        writer.dispose()


def test_try_double_agrees(pg: sa.Engine) -> None:
    duck, got = _evaluate("try_double", NUMBERS, pg)

    def same(d: Any, p: Any) -> bool:
        if d is None or p is None:
            return d is p
        d, p = float(d), float(p)
        return (math.isnan(d) and math.isnan(p)) or d == p or math.isclose(d, p, rel_tol=1e-15)

    differ = [(v, d, p) for v, d, p in zip(NUMBERS, duck, got, strict=True) if not same(d, p)]
    assert not differ


def test_key_hash_is_an_integer_per_key(pg: sa.Engine) -> None:
    """Not the same hash as DuckDB's, but the same on both sides of a sample join."""
    sql = PostgresBackend().suite_function("key_hash", ["x"])
    with pg.connect() as conn:
        a, b, c = (conn.execute(sa.text(f"select {sql} from (select cast(:v as text) as x) t"),
                                {"v": v}).scalar() for v in ("C1", "C1", "C2"))
    assert isinstance(a, int) and a == b != c


def test_row_hash_tells_null_from_any_value(pg: sa.Engine) -> None:
    """Rows that differ only in where a NULL or an empty string sits hash apart."""
    sql = PostgresBackend().suite_function("row_hash", ["a", "b"])
    rows = [("x", None), (None, "x"), ("x", ""), ("", "x"), ("x", None)]
    with pg.connect() as conn:
        got = [conn.execute(sa.text(f"select {sql} from (select cast(:a as text) as a, "
                                    "cast(:b as text) as b) t"), {"a": a, "b": b}).scalar()
               for a, b in rows]
    assert all(isinstance(h, int) for h in got)
    assert len(set(got[:4])) == 4 and got[0] == got[4]


def test_similar_to_patterns_of_the_suites_agree(pg: sa.Engine) -> None:
    """The suites check formats with ``similar to`` (GX refuses regex expectations on
    DuckDB): each pattern must accept the same values on both engines."""
    texts = [json.dumps(s.expectations) for s in load_suites(REPO / "expectations")]
    patterns = sorted({p.replace("{{", "{").replace("}}", "}")
                       for t in texts for p in re.findall(r"similar to '([^']*)'", t)})
    assert patterns
    values = ["12-3456789", "123456789", "12 3456789", "12--3456789", "12-345678",
              "12-34567890", "AB-1234567", "12_3456789", "12.3456789", "12%3456789",
              " 12-3456789", "12-3456789 ", "", "x"]
    con = duckdb.connect()
    try:
        with pg.connect() as conn:
            for pattern in patterns:
                duck = [con.execute("select ? similar to ?", [v, pattern]).fetchone()[0]
                        for v in values]
                got = [conn.execute(sa.text("select cast(:v as text) similar to :p"),
                                    {"v": v, "p": pattern}).scalar() for v in values]
                assert got == duck, pattern
                assert any(duck) and not all(duck)
    finally:
        con.close()


def test_gx_gets_the_password_in_connect_args_not_in_the_url(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQM_TEST_PG_PASSWORD", "s3cret")
    wh = WarehouseConfig(url="postgresql+psycopg2://dqm@db.example:5432/w",
                         password_env="DQM_TEST_PG_PASSWORD")
    url, kwargs = PostgresBackend().gx_connection(wh)
    assert url == wh.url and "s3cret" not in url
    assert kwargs["connect_args"]["password"] == "s3cret"
    url, kwargs = PostgresBackend().gx_connection(WarehouseConfig(url=wh.url))
    assert "password" not in kwargs["connect_args"]  # libpq: PGPASSWORD or ~/.pgpass


# -- the gate on both engines


def _configs(tmp: Path, url: str) -> dict[str, Config]:
    (tmp / "duckdb").mkdir()
    (tmp / "postgres").mkdir()
    pg = pg_config(tmp / "postgres", url)
    pg.write_text(pg.read_text().replace("[dbt]\n", '[dbt]\ntarget = "postgres"\n', 1))
    return {"duckdb": load_config(write_config(tmp / "duckdb")),
            "postgres": load_config(pg)}


def _gate(cfg: Config, day: date) -> tuple[dict[str, tuple[bool, int | None]], list[str]]:
    """Ingest what is landed and gate it: per (feed, suite, check) whether it passed and
    its unexpected count; and the feeds held."""
    with warehouse(cfg.warehouse) as wh:
        report = ingest(wh, cfg.ingest)
        out = checks.gate(cfg, wh, report, None, day)
        with wh.connect() as conn:
            held = sorted({batches.get_batch(conn, cfg.ingest.schema, b).feed
                           for b in out.held})
    return _by_check(out.results), held


def _by_check(results: list[SuiteResult]) -> dict[str, tuple[bool, int | None]]:
    out = {}
    for r in results:
        for e in r.results:
            assert e.error is None, (r.suite, e.check, e.error)
            out[f"{r.suite}.{e.check}"] = (e.success, e.unexpected_count)
    return out


def _rewrite(path: Path, change: Any) -> None:
    """Rewrite a landed CSV: ``change(rows)`` edits the data rows (header kept)."""
    with path.open(newline="") as fh:
        header, *rows = list(csv.reader(fh))
    rows = change(header, rows)
    with path.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([header, *rows])


# The checks the broken batches (_break_claims, _break_employees) fail, with their
# unexpected counts, on every engine.
BROKEN_BATCH_FAILURES = {
    "contract_claims.not_null_claim_id": 10,
    "contract_claims.required_null_spellings": 1,
    "contract_claims.dates_parse": 8,
    "contract_claims.dates_plausible": 1,
    "contract_claims.amount_numeric": 2,
    "contract_claims.amount_median_plausible": 1,
    "contract_claims.key_cardinality": 1,
    "contract_employees.ein_format": 6,
    "contract_employees.email_has_at": 3,
    "contract_employees.dates_parse": 2,
}


def _break_claims(header: list[str], rows: list[list[str]]) -> list[list[str]]:
    col = {c: i for i, c in enumerate(header)}
    for r in rows[0:10]:
        r[col["claim_id"]] = ""  # null keys: 10 of 300
    for r in rows[10:15]:
        r[col["service_date"]] = "2026-02-30"  # no such day
    for r in rows[15:18]:
        r[col["received_date"]] = "garbage"
    for r in rows[18:24]:
        r[col["service_date"]] = "2027-03-02"  # a year ahead: implausible
        r[col["received_date"]] = "2027-03-03"
    for r in rows[24:26]:
        r[col["amount"]] = "12.5 USD"  # not a number
    for r in rows[26:200]:
        r[col["amount"]] = "99999.00"  # the median goes out of range
    for r in rows[30:32]:
        r[col["amount"]] = "1_000"  # a number (DuckDB reads it; so must PostgreSQL)
    dups = [list(r) for r in rows[40:60]]  # keys repeated with other values
    for r in dups:
        r[col["updated_at"]] = "2026-03-03 23:59:59"
        r[col["status"]] = "adjusted"
    return rows + dups


def _break_employees(header: list[str], rows: list[list[str]]) -> list[list[str]]:
    col = {c: i for i, c in enumerate(header)}
    for r in rows[0:4]:
        r[col["company_ein"]] = "AB-1234567"  # regex-violating id
    for r in rows[4:6]:
        r[col["company_ein"]] = "12-34567890"
    for r in rows[6:9]:
        r[col["email"]] = "no.at.sign"
    for r in rows[9:11]:
        r[col["hire_date"]] = "31-Foo-2020"
    return rows


def _gate_each(cfgs: dict[str, Config], source: Path, day: date) -> dict[str, Any]:
    """Land ``day`` of ``source`` for each engine and gate it there."""
    out: dict[str, Any] = {}
    for engine, cfg in cfgs.items():
        land_day(source, cfg.ingest.landing_dir, day)
        out[engine] = _gate(cfg, day)
    return out


def test_gate_fails_the_same_checks_with_the_same_counts(tmp_path: Path,
                                                        pg_database: str) -> None:
    gen = tmp_path / "gen"
    generate(gen, START, 2, CLAIMS, seed=4)
    cfgs = _configs(tmp_path, pg_database)
    assert backend_for(cfgs["postgres"].warehouse).gx_datasource == "postgres"

    day1 = _gate_each(cfgs, gen, START)
    results, held = day1["postgres"]
    assert results == day1["duckdb"][0]
    assert held == [] == day1["duckdb"][1]
    assert all(ok for ok, _ in results.values())
    assert {k.split(".")[0] for k in results} == {
        "contract_claims", "contract_companies", "contract_employees", "contract_plans"}

    day2 = START + timedelta(days=1)
    broken = tmp_path / "broken"
    shutil.copytree(gen, broken)
    _rewrite(next((broken / "claims" / day2.isoformat()).glob("*.csv")), _break_claims)
    _rewrite(next((broken / "employees" / day2.isoformat()).glob("*.csv")), _break_employees)
    both = _gate_each(cfgs, broken, day2)
    results, held = both["postgres"]
    assert results == both["duckdb"][0]
    assert held == ["claims", "employees"] == both["duckdb"][1]
    failed = {k: n for k, (ok, n) in results.items() if not ok}
    assert failed == BROKEN_BATCH_FAILURES


# -- the post-build suites on both engines


def _build_and_check(cfg: Config) -> dict[str, tuple[bool, int | None]]:
    result = DbtProject(cfg).invoke("build")
    release_duckdb()
    assert result.success, result.error
    return _model_checks(cfg)


def _model_checks(cfg: Config) -> dict[str, tuple[bool, int | None]]:
    project = load_manifest(cfg.dbt.target_path)
    return _by_check(checks.model_checks(cfg, project, None))


@pytest.mark.slow
def test_model_suites_catch_the_same_duplicates(tmp_path: Path, pg_database: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``dbt build`` (``--target postgres`` there), the grain and behaviour suites
    pass alike on both engines; keys duplicated in a fact fail its grain alike."""
    gen = tmp_path / "gen"
    generate(gen, START, 1, CLAIMS, seed=4)
    cfgs = _configs(tmp_path, pg_database)
    for cfg in cfgs.values():  # dbt's profile variables are put back after the test
        for key in dbt_environment(cfg.warehouse):
            monkeypatch.setenv(key, os.environ.get(key, ""))
    clean: dict[str, Any] = {}
    for engine, cfg in cfgs.items():
        land_day(gen, cfg.ingest.landing_dir, START)
        assert _gate(cfg, START)[1] == []
        clean[engine] = _build_and_check(cfg)
    assert clean["postgres"] == clean["duckdb"]
    assert {k.split(".")[0] for k in clean["postgres"]} >= {
        "grain_fct_claims", "behaviour_fct_claims", "behaviour_int_employees__enriched"}
    assert all(ok for ok, _ in clean["postgres"].values()), clean["postgres"]

    broken: dict[str, Any] = {}
    for engine, cfg in cfgs.items():
        with warehouse(cfg.warehouse) as wh, wh.begin() as conn:
            conn.exec_driver_sql(
                "insert into main.fct_claims select * from main.fct_claims where claim_id in "
                "(select claim_id from main.fct_claims order by claim_id limit 3)")
        broken[engine] = _model_checks(cfg)
    assert broken["postgres"] == broken["duckdb"]
    failed = {k: n for k, (ok, n) in broken["postgres"].items() if not ok}
    assert failed == {"grain_fct_claims.key_unique": 3}


_KILLED_MID_VALIDATION = """
import os, signal, sys
from monitor.quality.validator import Validator
v = Validator(sys.argv[1]).__enter__()
assert v._attach()
print(v._scratch, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _scratch_schemas(pg: sa.Engine) -> set[str]:
    with pg.connect() as conn:
        return set(conn.execute(sa.text(
            "select nspname from pg_namespace where nspname like 'monitor%scratch%'"
        )).scalars())


def test_a_killed_validations_scratch_is_swept_and_a_live_ones_kept(
        pg_database: str, pg: sa.Engine) -> None:
    """kill -9 during validation leaves its scratch schema; the next validation drops
    it, and never the schema of a validation still running."""
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_VALIDATION, pg_database],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = killed.stdout.strip()
    assert re.fullmatch(r"monitor_gx_scratch_[0-9a-f]{12}", left)
    assert _scratch_schemas(pg) == {left}
    with Validator(pg_database) as live:
        assert live._attach()
        assert live._scratch is not None
        assert _scratch_schemas(pg) == {live._scratch}  # the killed one swept
        with Validator(pg_database) as other:
            assert other._attach()
            assert other._scratch is not None
            # the live one is kept while its process holds it
            assert _scratch_schemas(pg) == {live._scratch, other._scratch}
        assert _scratch_schemas(pg) == {live._scratch}
    assert _scratch_schemas(pg) == set()
