"""reconcile.py on real dbt: an incremental model whose filter is a business date drops
late rows, and the check names them; the publish-sequence filter reaches every key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from monitor.core.manifest import load_manifest
from monitor.stages import reconcile

pytestmark = pytest.mark.slow

SEQ_FILTER = "where _publish_seq > (select coalesce(max(_publish_seq), 0) from {{ this }})"
DATE_FILTER = "where ordered_on > (select max(ordered_on) from {{ this }})"


def _project(root: Path, incremental_filter: str) -> Path:
    proj = root / "shop"
    (proj / "models").mkdir(parents=True)
    (proj / "dbt_project.yml").write_text(
        "name: shop\nversion: '1.0'\nprofile: shop\nmodel-paths: ['models']\n")
    (proj / "profiles.yml").write_text(
        "shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: \"{root / 'wh.duckdb'}\"\n      threads: 1\n")
    (proj / "models" / "sources.yml").write_text(
        "version: 2\nsources:\n  - name: raw\n    schema: raw\n    tables: [{name: orders}]\n")
    (proj / "models" / "stg_orders.sql").write_text(
        "select order_id, ordered_on, amount, _publish_seq from {{ source('raw', 'orders') }}\n")
    (proj / "models" / "fct_orders.sql").write_text(
        "{{ config(materialized='incremental', unique_key='order_id') }}\n"
        "select * from {{ ref('stg_orders') }}\n"
        "{% if is_incremental() %}" + incremental_filter + "{% endif %}\n")
    return proj


def _deliver(root: Path, rows: list[tuple[int, str, float, int]]) -> None:
    con = duckdb.connect(str(root / "wh.duckdb"))
    try:
        con.execute("create schema if not exists raw")
        con.execute("create table if not exists raw.orders (order_id int, ordered_on date, "
                    "amount double, _publish_seq bigint)")
        con.executemany("insert into raw.orders values (?, ?, ?, ?)", rows)
    finally:
        con.close()


def _build(proj: Path) -> None:
    """dbt in its own process: in-process dbt-duckdb keeps the file open with its own
    settings, and a second configuration on the same file is refused."""
    dbt = Path(sys.executable).parent / "dbt"
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    res = subprocess.run([str(dbt), "build", "--project-dir", str(proj), "--profiles-dir",
                          str(proj), "--target-path", str(proj / "target"), "--quiet"],
                         env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("incremental_filter", "missed"), [(SEQ_FILTER, []),
                                                           (DATE_FILTER, [3])])
def test_keys_published_this_cycle_reach_the_incremental_model(
    tmp_path: Path, incremental_filter: str, missed: list[int]
) -> None:
    proj = _project(tmp_path, incremental_filter)
    _deliver(tmp_path, [(1, "2026-03-01", 10.0, 1), (2, "2026-03-02", 20.0, 1)])
    _build(proj)
    # The next batch: a new order and one that arrives late, with an earlier date.
    _deliver(tmp_path, [(4, "2026-03-03", 40.0, 2), (3, "2026-02-27", 30.0, 2)])
    _build(proj)
    project = load_manifest(proj / "target")
    engine = sa.create_engine(f"duckdb:///{tmp_path / 'wh.duckdb'}")
    try:
        (result,) = reconcile.check(engine, project, hwm=1)
    finally:
        engine.dispose()
    assert result.suite == "reconcile_fct_orders" and result.kind == "behaviour"
    (r,) = result.results
    assert r.check == reconcile.CHECK
    assert [row["key"] for row in r.unexpected_values] == missed
    assert r.observed_value == {"published_keys": 2, "missed": len(missed),
                                "parent": "stg_orders"}
    assert result.success is (not missed)
