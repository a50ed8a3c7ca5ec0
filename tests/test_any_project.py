"""`monitor once` on a team's own dbt project: one seed, one staging model, one
incremental fact, ingest switched off. Nothing in monitor/ names these models."""

from __future__ import annotations

import re
from datetime import date, timedelta
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
    # A second cycle is incremental, still clean, and the layer profile saw the models.
    assert main(["--config", str(cfg), "once"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"(?m)^stg\s+stg_orders\s+3\s*$", out), out
    assert re.search(r"(?m)^fct\s+fct_orders\s+3\s*$", out), out


# -- a jaffle_shop-like project: seeds, stg_* views, marts named `orders`, `customers` --

JAFFLE: dict[str, str] = {
    "dbt_project.yml": (
        "name: jaffle\nversion: '1.0'\nprofile: jaffle\nseed-paths: ['seeds']\n"
        "model-paths: ['models']\nmodels:\n  jaffle:\n    +materialized: table\n"
        "    staging:\n      +materialized: view\n"
    ),
    "models/staging/stg_customers.sql": (
        "select id as customer_id, first_name from {{ ref('raw_customers') }}\n"
    ),
    "models/staging/stg_orders.sql": (
        "select id as order_id, user_id as customer_id, order_date, status "
        "from {{ ref('raw_orders') }}\n"
    ),
    "models/staging/stg_payments.sql": (
        "select id as payment_id, order_id, payment_method, amount / 100.0 as amount "
        "from {{ ref('raw_payments') }}\n"
    ),
    # As in jaffle_shop: the marts sit at the top of models/, named without a prefix.
    "models/orders.sql": (
        "select o.order_id, o.customer_id, o.order_date, o.status, "
        "coalesce(sum(p.amount), 0) as amount\n"
        "from {{ ref('stg_orders') }} o left join {{ ref('stg_payments') }} p "
        "using (order_id)\ngroup by all\n"
    ),
    "models/customers.sql": (
        "select c.customer_id, c.first_name, count(distinct o.order_id) as number_of_orders, "
        "coalesce(sum(p.amount), 0) as customer_lifetime_value\n"
        "from {{ ref('stg_customers') }} c left join {{ ref('stg_orders') }} o "
        "using (customer_id)\nleft join {{ ref('stg_payments') }} p using (order_id)\n"
        "group by all\n"
    ),
    "models/schema.yml": (
        "version: 2\nmodels:\n"
        "  - name: orders\n    columns:\n      - name: order_id\n"
        "        data_tests: [unique, not_null]\n"
        "  - name: customers\n    columns:\n      - name: customer_id\n"
        "        data_tests: [unique, not_null]\n"
    ),
}
ENV_PROFILE = (
    "jaffle:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
    "      path: \"{{ env_var('MONITOR_WAREHOUSE_PATH') }}\"\n      threads: 1\n"
)
ORDERS_PER_DAY, CUSTOMERS = 10, 20


def _jaffle(root: Path, profile: str = ENV_PROFILE) -> Path:
    proj = root / "jaffle"
    for rel, text in {**JAFFLE, "profiles.yml": profile}.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    _seed_day(proj, 1)
    return proj


def _seed_day(proj: Path, day: int, duplicated_share: float = 0.0) -> None:
    """The seeds as of ``day``: ORDERS_PER_DAY new orders a day, one payment each; a
    ``duplicated_share`` of all orders gets its payment a second time (new payment id)."""
    seeds = proj / "seeds"
    seeds.mkdir(exist_ok=True)
    (seeds / "raw_customers.csv").write_text(
        "id,first_name\n" + "".join(f"{c},name{c}\n" for c in range(1, CUSTOMERS + 1)))
    n = ORDERS_PER_DAY * day
    (seeds / "raw_orders.csv").write_text("id,user_id,order_date,status\n" + "".join(
        f"{o},{o % CUSTOMERS + 1},2026-01-{(o - 1) // ORDERS_PER_DAY + 1:02d},completed\n"
        for o in range(1, n + 1)))
    payments = [(o, o, 1000 + (o * 37) % 200) for o in range(1, n + 1)]
    step = round(1 / duplicated_share) if duplicated_share else 0
    payments += [(10_000 + o, o, a) for o, _, a in payments if step and o % step == 0]
    (seeds / "raw_payments.csv").write_text("id,order_id,payment_method,amount\n" + "".join(
        f"{i},{o},credit_card,{a}\n" for i, o, a in payments))


def _jaffle_config(tmp: Path, proj: Path, extra: str = "") -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(
        f'[warehouse]\npath = "{tmp / "data" / "jaffle.duckdb"}"\n'
        f'[state]\nurl = "sqlite:///{tmp / "data" / "state.db"}"\n'
        f'[dbt]\nproject_dir = "{proj}"\nprofiles_dir = "{proj}"\n'
        f'target_path = "{tmp / "target"}"\nlog_path = "{tmp / "logs"}"\n'
        "[ingest]\nenabled = false\n[validation]\nenabled = false\n"
        f'[evidence]\ndir = "{tmp / "evidence"}"\nsnapshots_dir = "{tmp / "snaps"}"\n'
        "[drift]\nseasonal = false\nmin_history = 4\n" + extra
    )
    return cfg


def _tables(path: Path) -> list[str]:
    if not path.exists():
        return []
    con = duckdb.connect(str(path), read_only=True)
    try:
        return sorted(r[0] for r in con.execute(
            "select table_name from information_schema.tables").fetchall())
    finally:
        con.close()


def test_unchanged_profile_pointing_elsewhere_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "jaffle_shop.duckdb"  # the profile's own path, not the monitor's
    proj = _jaffle(tmp_path, ENV_PROFILE.replace(
        "{{ env_var('MONITOR_WAREHOUSE_PATH') }}", str(elsewhere)))
    cfg = _jaffle_config(tmp_path, proj)
    assert main(["--config", str(cfg), "once"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config error" in err[0], err
    assert str(elsewhere) in err[0] and str(tmp_path / "data" / "jaffle.duckdb") in err[0]
    assert "SUCCESS" not in capsys.readouterr().out
    assert not elsewhere.exists()  # refused before dbt wrote anything
    assert _tables(tmp_path / "data" / "jaffle.duckdb") == []
    # Refused at start: not even the state store was created.
    assert not (tmp_path / "data").exists()
    # A relative path in the profile is dbt's working directory: resolved the same way.
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path / "data")
    (proj / "profiles.yml").write_text(ENV_PROFILE.replace(
        "{{ env_var('MONITOR_WAREHOUSE_PATH') }}", "jaffle.duckdb"))
    assert main(["--config", str(cfg), "once"]) == 0
    assert {"customers", "orders", "stg_payments"} <= set(_tables(tmp_path / "data" /
                                                                  "jaffle.duckdb"))


def test_unknown_aggregate_model_is_a_one_line_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proj = _jaffle(tmp_path)
    cfg = _jaffle_config(tmp_path, proj, '[profile]\naggregates = [{model = "fct_orders", '
                                         'column = "amount"}]\n')
    expected = [f"monitor: config error: profile.aggregates[0].model: unknown model "
                f"'fct_orders' (not in the dbt project {proj})"]
    for command in ("once", "run"):  # refused at start: nothing ingested, nothing built
        assert main(["--config", str(cfg), command]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == expected, (command, err)
        assert _tables(tmp_path / "data" / "jaffle.duckdb") == []


def test_duplicated_payments_drift_on_the_orders_sum_and_triage_names_orders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.core.config import load_config
    from monitor.core.manifest import load_manifest
    from monitor.cycle.run import run_cycle
    from monitor.triage.analyse import analyse

    proj = _jaffle(tmp_path)
    cfg = load_config(_jaffle_config(tmp_path, proj))
    start = date(2026, 1, 5)
    clean = 6
    for day in range(1, clean + 1):
        _seed_day(proj, day)
        res = run_cycle(cfg, as_of=start + timedelta(days=day - 1))
        assert res.status == "success", res.reason
    layers = {n.name: n.layer for n in load_manifest(cfg.dbt.target_path).nodes.values()}
    assert layers == {"raw_customers": "raw", "raw_orders": "raw", "raw_payments": "raw",
                      "stg_customers": "stg", "stg_orders": "stg", "stg_payments": "stg",
                      "orders": "fct", "customers": "fct"}
    # Day 7: a fifth of all orders get their payment twice; no mart gains a row.
    _seed_day(proj, clean + 1, duplicated_share=0.2)
    res = run_cycle(cfg, as_of=start + timedelta(days=clean))
    assert res.observation is not None
    points = {(p.model, p.metric): (p, r) for p, r in res.observation.drift}
    point, drift = points[("orders", "sum:amount")]
    assert points[("orders", "row_count")][0].value == ORDERS_PER_DAY * (clean + 1)
    assert point.layer == "fct" and point.value == pytest.approx(
        sum(1000 + (o * 37) % 200 for o in range(1, 71)) / 100
        + sum(1000 + (o * 37) % 200 for o in range(5, 71, 5)) / 100)
    assert drift.anomalous and drift.z is not None and drift.z >= cfg.drift.threshold
    # Triage: the mart that sums the grown payments into as many orders.
    doc = analyse(cfg, res.run_id)
    ep = doc.expansion_point
    assert (ep.model, ep.input, ep.key, ep.inflated, ep.source) == (
        "orders", "stg_payments", "order_id", "sum:amount", "raw_payments"), ep
    assert "stg_payments rows grew +24 (baseline +10)" in ep.reason
    assert ep.duplicated_keys == 14 and ep.offending_keys[0].input_rows == 2
    assert main(["--config", str(cfg.source), "triage", "--run", res.run_id]) == 0
    capsys.readouterr()
    # Missing evidence (manifest, query profile) is reported, not a crash.
    (cfg.dbt.target_path / "manifest.json").unlink()
    bare = analyse(cfg, res.run_id)
    assert any("no dbt manifest" in n for n in bare.notes), bare.notes
    assert bare.expansion_point.model is None
