"""The ``monitor`` commands on a PostgreSQL warehouse and a PostgreSQL state store
(issue 19): the dbt target is checked against ``[warehouse] url`` before anything is
ingested, ``once`` and ``release`` yield to a running cycle (the advisory lock), the
state store and the daemon's job store live on the server, and ``monitor run`` runs
cycles there and keeps its jobs across a restart.

The whole multi-day story (quarantine, hold, release, reject, resume, full refresh,
kill -9) is tests/test_pipeline_postgres.py.
"""

from __future__ import annotations

import json
import signal
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dqm_demo.demo import land_day
from dqm_demo.generate import generate
from monitor.core.config import ConfigError, load_config, state_url
from monitor.stages.build import DbtProject, WarehouseMismatch
from monitor.store import state
from monitor.warehouse.connection import apply_dbt_environment
from monitor.warehouse.lock import cycle_lock

from .conftest import REPO, fresh_database
from .pg_cycle import cli, pg_cycle_config, rows
from .pg_server import PgServer, unavailable
from .test_daemon import NEVER, Workspace, daemon, free_port, wait_for

pytestmark = pytest.mark.postgres

try:
    import psycopg2  # noqa: F401  # the `postgres` extra
except ImportError:
    unavailable("psycopg2 missing: pip install -e '.[postgres]' (scripts/setup does)")

DAY = date(2026, 3, 2)


def _profile_elsewhere(tmp: Path, dbname: str) -> Path:
    """pipeline/profiles.yml with its ``postgres`` output on another database."""
    text = (REPO / "pipeline" / "profiles.yml").read_text()
    text = text.replace("\"{{ env_var('MONITOR_PG_DBNAME') }}\"", dbname)
    assert dbname in text
    folder = tmp / "profiles"
    folder.mkdir()
    (folder / "profiles.yml").write_text(text)
    return folder


def test_the_postgres_output_is_picked_and_a_mismatch_refused_before_ingest(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DuckDB cycle earlier in this process leaves its file's path in the environment
    # (the monitor sets it for dbt); the `dev` output must find it unset here.
    monkeypatch.delenv("MONITOR_WAREHOUSE_PATH", raising=False)
    config = pg_cycle_config(tmp_path, pg_database)
    cfg = load_config(config)
    apply_dbt_environment(cfg.warehouse)
    target = DbtProject(cfg).check_target()
    assert target is not None and target.target == "postgres" and target.mismatch is None
    port, db = sa.make_url(pg_database).port, sa.make_url(pg_database).database
    assert target.location == f"postgres://127.0.0.1:{port}/{db}"
    land_day_files = cfg.ingest.landing_dir / "claims" / DAY.isoformat()
    land_day_files.mkdir(parents=True)
    (land_day_files / "claims.csv").write_text("claim_id\n1\n")

    # The profile's postgres output on another database: refused, nothing ingested.
    profiles = _profile_elsewhere(tmp_path, "elsewhere")
    text = config.read_text().replace(f'profiles_dir = "{REPO / "pipeline"}"',
                                      f'profiles_dir = "{profiles}"')
    config.write_text(text)
    code, out, err = cli(config, "once")
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("monitor: config error: warehouse.url: "), err
    assert f"postgres://127.0.0.1:{port}/elsewhere" in lines[-1], lines[-1]
    assert f"postgres://127.0.0.1:{port}/{db}" in lines[-1], lines[-1]
    assert "SUCCESS" not in out
    assert rows(pg_database, "select count(*) from information_schema.schemata "
                "where schema_name = 'raw'") == [(0,)]
    # Named in [dbt] target, the same output: the key named is dbt.target.
    config.write_text(text.replace("[dbt]\n", '[dbt]\ntarget = "postgres"\n', 1))
    with pytest.raises(WarehouseMismatch, match=r"^dbt\.target: .*/elsewhere, not postgres://"):
        DbtProject(load_config(config)).check_target()

    # The DuckDB output named on a PostgreSQL warehouse: its file path is not set here.
    config.write_text(text.replace(f'profiles_dir = "{profiles}"',
                                   f'profiles_dir = "{REPO / "pipeline"}"')
                      .replace("[dbt]\n", '[dbt]\ntarget = "dev"\n', 1))
    code, _, err = cli(config, "once")
    assert code == 2, err
    assert "config error: dbt.target: output 'dev' of dbt profile 'benefits_pipeline' " \
           "does not render" in err, err


def test_once_and_release_yield_to_a_running_cycle(pg_database: str, tmp_path: Path) -> None:
    config = pg_cycle_config(tmp_path, pg_database)
    cfg = load_config(config)
    with cycle_lock(cfg):
        code, _, err = cli(config, "once")
        assert code == 4, err
        assert err.strip().splitlines()[-1].startswith("monitor: another cycle is running on "
                                                       "postgresql+psycopg2://"), err
        code, _, err = cli(config, "release", "00000001-claims", "--reason", "vendor ok")
        assert code == 1 and "another cycle is running" in err, err


def test_state_url_password_comes_from_the_named_variable(
    pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_database(pg_server) as url, fresh_database(pg_server) as st_url:
        config = pg_cycle_config(tmp_path, url, state=st_url)
        text = config.read_text()
        config.write_text(text.replace(f'url = "{st_url}"',
                                       f'url = "{st_url}"\npassword_env = "DQM_STATE_PW"', 1))
        with pytest.raises(ConfigError, match=r"state.password_env: \$DQM_STATE_PW is not set"):
            state_url(load_config(config))
        monkeypatch.setenv("DQM_STATE_PW", "s3cr/t@x")
        got = sa.make_url(state_url(load_config(config)))
        assert got.password == "s3cr/t@x" and got.database == sa.make_url(st_url).database
        st = state.open_state(state_url(load_config(config)))  # the test server trusts us
        try:
            tables = set(sa.inspect(st).get_table_names())
            assert {"runs", "metric_points", "alert_outbox"} <= tables
        finally:
            st.dispose()
        leaked = text.replace(f'url = "{st_url}"',
                              f'url = "{st_url.replace("monitor@", "monitor:pw@")}"', 1)
        config.write_text(leaked)
        with pytest.raises(ConfigError, match=r"^state\.url: holds a password"):
            load_config(config)


class PgWorkspace(Workspace):
    """test_daemon's workspace with the warehouse and the state store on PostgreSQL."""

    state_url: str = ""

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        assert not args
        engine = sa.create_engine(self.state_url, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                return [dict(r) for r in conn.execute(sa.text(sql)).mappings()]
        except sa.exc.ProgrammingError:  # table not created yet
            return []
        finally:
            engine.dispose()


@pytest.mark.slow
def test_daemon_on_postgres_runs_a_cycle_and_keeps_its_jobs(
    pg_server: PgServer, tmp_path: Path
) -> None:
    feeds = tmp_path / "feeds"
    generate(feeds, DAY, 1, 300, seed=5)
    with fresh_database(pg_server) as url, fresh_database(pg_server) as st_url:
        root = tmp_path / "ws"
        root.mkdir()
        config = pg_cycle_config(root, url, state=st_url)
        ws = PgWorkspace(root, free_port(), config)
        ws.state_url = st_url
        ws.configure(**{"http.port": str(ws.port), "scheduler.cycle_cron": NEVER})
        land_day(feeds, ws.landing, DAY)
        with daemon(ws, run_now=True, tag="first") as d:
            d.wait_ready()
            wait_for(lambda: [r for r in ws.runs() if r["status"] != "running"], 400,
                     "the --run-now cycle", every=0.5)
            assert d.metric("dqm_runs_total", status="success") == 1
            status = ws.status()
            assert status["next_run"] is not None and not status["paused"], status
            assert d.stop(signal.SIGTERM)[0] == 0
        (run,) = ws.runs()
        assert run["status"] == "success" and run["trigger"] == "run-now", run
        jobs = ws.query("select id, next_run_time from scheduler_jobs order by id")
        assert [j["id"] for j in jobs] == ["feed_freshness", "pipeline_cycle"], jobs
        # A restart keeps the stored jobs, and the cycle's next run time (the freshness
        # job's moves on every 15 minutes).
        with daemon(ws, run_now=False, tag="again") as d:
            d.wait_ready()
            again = ws.query("select id, next_run_time from scheduler_jobs order by id")
            assert [j["id"] for j in again] == [j["id"] for j in jobs]
            assert again[1] == jobs[1], (again, jobs)
            assert d.stop(signal.SIGTERM)[0] == 0
        code, out, _ = cli(config, "status", "--json")
        report = json.loads(out)
        assert code == 0 and report["runs"][0]["run_id"] == run["run_id"]
        assert report["held_batches"] == []  # read from the server, not a missing file
        assert rows(url, "select count(*) from main.fct_claims")[0][0] > 0
