"""`monitor once` on a team's own dbt project: one seed, one staging model, one
incremental fact, ingest switched off. Nothing in monitor/ names these models."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from monitor.cli import main

pytestmark = pytest.mark.slow


def _project(root: Path) -> Path:
    proj = root / "shop"
    (proj / "seeds").mkdir(parents=True)
    (proj / "models" / "staging").mkdir(parents=True)
    (proj / "models" / "marts").mkdir(parents=True)
    (proj / "dbt_project.yml").write_text(
        "name: shop\nversion: '1.0'\nprofile: shop\nseed-paths: ['seeds']\n"
        "model-paths: ['models']\n"
    )
    (proj / "profiles.yml").write_text(
        "shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        "      path: \"{{ env_var('MONITOR_WAREHOUSE_PATH') }}\"\n"
        "      threads: 1\n"
    )
    (proj / "seeds" / "raw_orders.csv").write_text(
        "order_id,customer,amount,ordered_at\n1,ann,10.5,2026-01-01\n2,bo,3.0,2026-01-02\n"
        "2,bo,3.0,2026-01-02\n3,cy,7.25,2026-01-03\n"
    )
    (proj / "models" / "staging" / "stg_orders.sql").write_text(
        "select distinct order_id, customer, amount, ordered_at::date as ordered_at "
        "from {{ ref('raw_orders') }}\n"
    )
    (proj / "models" / "marts" / "fct_orders.sql").write_text(
        "{{ config(materialized='incremental', unique_key='order_id') }}\n"
        "select * from {{ ref('stg_orders') }}\n"
        "{% if is_incremental() %}where order_id > (select max(order_id) from {{ this }})"
        "{% endif %}\n"
    )
    (proj / "models" / "marts" / "_marts.yml").write_text(
        "version: 2\nmodels:\n  - name: fct_orders\n    config:\n      meta: {layer: fct}\n"
        "    columns:\n      - name: order_id\n        data_tests: [unique, not_null]\n"
    )
    return proj


def test_once_runs_a_foreign_project_without_ingest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proj = _project(tmp_path)
    wh = tmp_path / "data" / "shop.duckdb"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[warehouse]\npath = "{wh}"\n'
        f'[state]\nurl = "sqlite:///{tmp_path / "data" / "state.db"}"\n'
        f'[dbt]\nproject_dir = "{proj}"\nprofiles_dir = "{proj}"\n'
        f'target_path = "{tmp_path / "target"}"\nlog_path = "{tmp_path / "logs"}"\n'
        "[ingest]\nenabled = false\n[validation]\nenabled = false\n"
    )
    assert main(["--config", str(cfg), "once"]) == 0
    out = capsys.readouterr().out
    assert "SUCCESS" in out and "fct_orders" in out
    con = duckdb.connect(str(wh), read_only=True)
    try:
        assert con.execute("select count(*), sum(amount) from fct_orders").fetchone() == (
            3, 20.75,
        )
    finally:
        con.close()
    # A second cycle is incremental, still clean, and the layer snapshot saw the models.
    assert main(["--config", str(cfg), "once"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"(?m)^stg\s+stg_orders\s+3\s*$", out), out
    assert re.search(r"(?m)^fct\s+fct_orders\s+3\s*$", out), out
