"""Last-known-good snapshots on Spark (issue 20, item 5): the store itself.

A real Spark Connect server (tests/spark_server.py). A fact table partitioned by date,
as the dbt project writes its facts on Spark, is snapshotted FULL, changed, snapshotted
as a DELTA, changed again (a new partition, a changed row); then:

- the restore of the chain makes the live table hold exactly the rows of the DELTA's
  run, every partition included (one that appeared later is gone);
- a restore whose integrity check fails (raised inside the restore, as
  ``monitor.recovery.rollback`` raises) changes no live row: the restored rows are
  built in a work database and written over the live table only at the end;
- a snapshot left without its document (a killed one) is not listed and is dropped by
  ``clear_leftovers``; ``drop`` removes a copy and its document.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.core.config import WarehouseConfig
from monitor.warehouse.connection import backend_for
from monitor.warehouse.snapshot_store import SnapshotError, SnapshotStore
from monitor.warehouse.spark_session import stop_sessions
from monitor.warehouse.spark_snapshots import WORK, SparkSnapshots, database_of, run_of

from .spark_server import SparkServer

pytestmark = pytest.mark.spark

SCHEMA, TABLE = "dqm_lkg_test", "fct_claims"
FULL_RUN, DELTA_RUN = "20260302T060000Z-1a2b", "20260303T060000Z-3c4d"


@pytest.mark.parametrize("run_id", [FULL_RUN, "a_b.c-D", "x__y", "run-1.2", "Z"])
def test_a_run_id_names_one_database_and_back(run_id: str) -> None:
    name = database_of(run_id)
    assert name.startswith("dqm_snapshot_") and name == name.lower()
    assert run_of(name) == run_id


def test_other_databases_are_not_snapshots() -> None:
    assert [run_of(n) for n in ("main", "dqm_snapshot_a_", "dqm_snapshot_a_9", WORK)] == [
        None, None, None, None]
    with pytest.raises(SnapshotError):
        database_of("bad/run")


@pytest.fixture(scope="module")
def engine(spark_server: SparkServer) -> Iterator[sa.Engine]:
    wh = WarehouseConfig(url=spark_server.url)
    eng = backend_for(wh).create_engine(wh)
    with eng.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE DATABASE {SCHEMA}")
        conn.exec_driver_sql(
            f"CREATE TABLE {SCHEMA}.{TABLE} (claim_id STRING, amount INT, _publish_seq BIGINT, "
            "service_date DATE) USING parquet PARTITIONED BY (service_date)")
    yield eng
    with eng.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {SCHEMA} CASCADE")
        for run_id in (FULL_RUN, DELTA_RUN, "20260304T060000Z-dead"):
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database_of(run_id)} CASCADE")
    eng.dispose()
    stop_sessions()


def _insert(engine: sa.Engine, rows: list[tuple[str, int, int, str]]) -> None:
    values = ", ".join(f"('{c}', {a}, {s}, date'{d}')" for c, a, s, d in rows)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"INSERT INTO {SCHEMA}.{TABLE} VALUES {values}")


def _rows(engine: sa.Engine) -> set[tuple[str, int, int, str]]:
    with engine.connect() as conn:
        got = conn.exec_driver_sql(
            f"SELECT claim_id, amount, _publish_seq, cast(service_date AS STRING) "
            f"FROM {SCHEMA}.{TABLE}").all()
    return {(str(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in got}


def _overwrite(engine: sa.Engine, rows: list[tuple[str, int, int, str]]) -> None:
    """The live table made to hold ``rows`` (every partition replaced)."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SET spark.sql.sources.partitionOverwriteMode=STATIC")
        values = ", ".join(f"('{c}', {a}, {s}, date'{d}')" for c, a, s, d in rows)
        conn.exec_driver_sql(f"INSERT OVERWRITE TABLE {SCHEMA}.{TABLE} VALUES {values}")


def _snapshot(store: SnapshotStore, run_id: str, delta: tuple[list[str], int] | None
              ) -> tuple[int, dict[str, object]]:
    with store.writer(run_id) as w:
        assert w.columns(SCHEMA, TABLE) == {"claim_id": "STRING", "amount": "INT",
                                            "_publish_seq": "BIGINT", "service_date": "DATE"}
        assert w.is_integer("BIGINT") and not w.is_integer("STRING")
        stats = w.stats(SCHEMA, TABLE, ["_publish_seq"])
        copied = w.copy(SCHEMA, TABLE, delta)
        doc = w.finish(lambda copy_bytes, live_bytes: {
            "run_id": run_id, "rows": stats.rows, "max": stats.max, "sum": stats.sum,
            "copy_bytes": copy_bytes, "live_bytes": live_bytes})
    return copied, doc


DAY1 = [("C1", 10, 1, "2026-03-01"), ("C2", 20, 1, "2026-03-01"), ("C3", 30, 1, "2026-03-02")]
DAY2 = [("C1", 10, 1, "2026-03-01"), ("C2", 25, 2, "2026-03-02"),  # C2's date moved
        ("C3", 30, 1, "2026-03-02"), ("C4", 40, 2, "2026-03-02")]
DAY3 = [("C1", 11, 3, "2026-03-01"), ("C2", 25, 2, "2026-03-02"), ("C3", 30, 1, "2026-03-02"),
        ("C4", 40, 2, "2026-03-02"), ("C5", 50, 3, "2026-03-03")]


def test_full_then_delta_then_restore_of_the_chain(engine: sa.Engine, tmp_path: Path) -> None:
    store = SparkSnapshots(tmp_path / "snapshots", lambda: engine)
    _insert(engine, DAY1)
    copied, doc = _snapshot(store, FULL_RUN, None)
    assert copied == 3 and doc["rows"] == 3 and doc["path"] == database_of(FULL_RUN)
    assert int(str(doc["copy_bytes"])) > 0 and int(str(doc["live_bytes"])) > 0
    _overwrite(engine, DAY2)
    copied, doc = _snapshot(store, DELTA_RUN, (["_publish_seq"], 1))
    assert copied == 2  # C2 and C4: the rows above publish_seq 1
    assert store.copies() >= {FULL_RUN, DELTA_RUN}
    assert {d["run_id"] for d in store.documents()} == {FULL_RUN, DELTA_RUN}
    assert store.document(DELTA_RUN) == {**doc, "path": database_of(DELTA_RUN)}
    _overwrite(engine, DAY3)
    assert _rows(engine) == set(DAY3)

    # an integrity check failing inside the restore: no live row changes
    with pytest.raises(SnapshotError, match="refused"), \
            store.restorer([FULL_RUN, DELTA_RUN]) as r:
        r.replace(SCHEMA, TABLE, FULL_RUN)
        assert r.count(SCHEMA, TABLE) == 3  # the staged rows, not the live ones
        raise SnapshotError("refused")
    assert _rows(engine) == set(DAY3)

    with store.restorer([FULL_RUN, DELTA_RUN]) as r:
        r.replace(SCHEMA, TABLE, FULL_RUN)
        r.apply_delta(SCHEMA, TABLE, DELTA_RUN, ["claim_id"])
        assert r.count(SCHEMA, TABLE) == 4
        assert r.sums(SCHEMA, TABLE, ["_publish_seq"]) == {"_publish_seq": 6}
        assert _rows(engine) == set(DAY3)  # nothing written before the end
    assert _rows(engine) == set(DAY2)  # C5's partition gone, C2 only on its new date
    with engine.connect() as conn:
        parts = {str(r[0]) for r in conn.exec_driver_sql(f"SHOW PARTITIONS {SCHEMA}.{TABLE}")}
        assert not conn.exec_driver_sql(f"SHOW DATABASES LIKE '{WORK}'").all()
    assert "service_date=2026-03-03" not in parts


def test_a_snapshot_without_its_document_is_a_leftover(engine: sa.Engine, tmp_path: Path
                                                       ) -> None:
    store = SparkSnapshots(tmp_path / "snapshots", lambda: engine)
    dead = "20260304T060000Z-dead"
    with store.writer(dead) as w:
        w.copy(SCHEMA, TABLE, None)  # killed here: finish never ran
    assert dead in store.copies() and store.document(dead) is None
    assert f"database {database_of(dead)}" in store.clear_leftovers()
    assert dead not in store.copies()
    _snapshot(store, dead, None)
    assert dead in store.copies() and store.document(dead) is not None
    store.drop(dead)
    assert dead not in store.copies() and store.document(dead) is None
