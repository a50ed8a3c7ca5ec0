"""Triage's isolated rebuild on Spark (issue 20, item 5): the scratch database.

A real Spark Connect server (tests/spark_server.py). The backend makes an empty scratch
database (a leftover of the same name is dropped first), a comparison connection sees
it beside production, only it and the databases dbt derives from it can be dropped, and
the printed reproduce commands carry no token yet work as printed: run in a shell, the
drop command removes the scratch database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.core.config import WarehouseConfig
from monitor.warehouse.spark import SparkBackend
from monitor.warehouse.spark_session import stop_sessions

from .spark_server import SparkServer

pytestmark = pytest.mark.spark

PROD, SCRATCH = "dqm_triage_prod", "dqm_triage_r1"


def _databases(conn: sa.Connection) -> set[str]:
    return {str(r[0]) for r in conn.exec_driver_sql("SHOW DATABASES LIKE 'dqm_triage_*'")}


def test_scratch_database_lifecycle_and_commands(spark_server: SparkServer, tmp_path: Path
                                                 ) -> None:
    wh = WarehouseConfig(url=spark_server.url)
    backend = SparkBackend()
    engine = backend.create_engine(wh)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {PROD}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {PROD}.fct")
            conn.exec_driver_sql(f"CREATE TABLE {PROD}.fct USING parquet AS "
                                 "SELECT id FROM range(5)")
            conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {SCRATCH}")  # a leftover
            conn.exec_driver_sql(f"CREATE TABLE {SCRATCH}.stale USING parquet AS SELECT 1 AS x")

        scratch = backend.open_scratch(wh, tmp_path, SCRATCH)
        assert scratch.kind == "scratch database" and scratch.dbt_target == {"schema": SCRATCH}
        assert backend.scratch_output(SCRATCH, "") == {"schema": SCRATCH}
        with backend.comparison(wh, scratch, read_only=True) as conn:
            assert not sa.inspect(conn).get_table_names(SCRATCH)  # the leftover is gone
            conn.exec_driver_sql(f"CREATE TABLE {SCRATCH}.fct USING parquet AS "
                                 f"SELECT id FROM {PROD}.fct WHERE id < 3")
            diff = conn.exec_driver_sql(f"SELECT count(*) FROM (SELECT id FROM {PROD}.fct "
                                        f"EXCEPT ALL SELECT id FROM {SCRATCH}.fct)").scalar()
            assert diff == 2
        assert backend.isolation_footprint(wh, [(PROD, "fct")])[0] > 0

        with pytest.raises(ValueError, match="outside the scratch database"):
            backend.drop_scratch(wh, scratch, [PROD])
        with pytest.raises(ValueError, match="not a Spark database name"):
            backend.open_scratch(wh, tmp_path, "bad-name; drop")

        os.environ["DQM_TEST_SPARK_TOKEN"] = "s3cret-token"
        try:
            with_token = backend.isolation_commands(
                WarehouseConfig(url=wh.url, password_env="DQM_TEST_SPARK_TOKEN"), SCRATCH, "",
                "dbt build", "target")
        finally:
            del os.environ["DQM_TEST_SPARK_TOKEN"]
        assert "s3cret" not in "\n".join(with_token)
        assert "${DQM_TEST_SPARK_TOKEN}" in with_token[0]

        commands = backend.isolation_commands(wh, SCRATCH, "", "dbt build", "target")
        assert commands[0].startswith("export SPARK_REMOTE=sc://127.0.0.1:")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        env.pop("SPARK_REMOTE", None)
        subprocess.run(["bash", "-ec", "\n".join([commands[0], commands[1]])], env=env,
                       check=True, timeout=300, capture_output=True)
        with engine.connect() as conn:
            assert SCRATCH not in _databases(conn)
            assert PROD in _databases(conn)

        backend.open_scratch(wh, tmp_path, SCRATCH)
        backend.drop_scratch(wh, scratch, [f"{SCRATCH}_staging"])
        with engine.connect() as conn:
            assert SCRATCH not in _databases(conn)
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {PROD} CASCADE")
    finally:
        engine.dispose()
        stop_sessions()
