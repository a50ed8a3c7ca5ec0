"""The rehearsal on a second, foreign dbt project: a jaffle_shop-like shop.

    .venv/bin/python bench/jaffle.py [--days 16] [--orders-per-day 200] [--out DIR]

Nothing of the benefits pipeline is used: the script writes a small dbt project
(customers, orders, payments; staging views, two fact tables), runs the monitor on it
with ingest and the contract gate off, and plays the loader itself: each day's new rows
are inserted into ``raw.*`` directly, as an EL tool would. On the injection day (the
first weekday after ``HISTORY`` days) 20% of that day's payments are loaded twice
(exact duplicate rows, a processor's retry): every order with a duplicated payment, and
its customer's lifetime value, is inflated while every schema test passes (like the
original jaffle_shop minus its ``unique`` test on ``stg_payments.payment_id``, which
would fail the build and name the cause without the monitor).

It prints what the monitor saw that day (status, alerts, root cause) next to the
Elementary-default baseline (bench/elementary.py) on the same daily series.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")

from bench import elementary  # noqa: E402
from bench.rehearse import (  # noqa: E402
    DEFAULT_START,
    HISTORY,
    _fired_since,
    _max_outbox_id,
    _root_cause,
    fact_health,
)
from monitor.core.config import Config, load_config, state_url  # noqa: E402
from monitor.cycle.run import run_cycle  # noqa: E402
from monitor.store import state  # noqa: E402

DUP_SHARE = 0.2  # share of the injection day's payments loaded twice
METHODS = ("credit_card", "coupon", "bank_transfer", "gift_card")
STATUSES = ("placed", "shipped", "completed", "return_pending", "returned")

_MODELS = {
    "models/staging/stg_customers.sql":
        "select id as customer_id, first_name, last_name from {{ source('shop', 'customers') }}\n",
    "models/staging/stg_orders.sql":
        "select id as order_id, user_id as customer_id, order_date, status\n"
        "from {{ source('shop', 'orders') }}\n",
    "models/staging/stg_payments.sql":
        "select id as payment_id, order_id, payment_method, amount / 100 as amount\n"
        "from {{ source('shop', 'payments') }}\n",
    "models/marts/fct_orders.sql": """{{ config(materialized='table') }}
with payments as (
    select order_id,
{%- for m in ['credit_card', 'coupon', 'bank_transfer', 'gift_card'] %}
        sum(case when payment_method = '{{ m }}' then amount else 0 end) as {{ m }}_amount,
{%- endfor %}
        sum(amount) as amount
    from {{ ref('stg_payments') }}
    group by order_id
)
select o.order_id, o.customer_id, o.order_date, o.status,
{%- for m in ['credit_card', 'coupon', 'bank_transfer', 'gift_card'] %}
    coalesce(p.{{ m }}_amount, 0) as {{ m }}_amount,
{%- endfor %}
    coalesce(p.amount, 0) as amount
from {{ ref('stg_orders') }} o
left join payments p using (order_id)
""",
    "models/marts/fct_customers.sql": """{{ config(materialized='table') }}
with orders as (
    select customer_id, min(order_date) as first_order, max(order_date) as most_recent_order,
        count(*) as number_of_orders, sum(amount) as customer_lifetime_value
    from {{ ref('fct_orders') }}
    group by customer_id
)
select c.customer_id, c.first_name, c.last_name, o.first_order, o.most_recent_order,
    coalesce(o.number_of_orders, 0) as number_of_orders,
    coalesce(o.customer_lifetime_value, 0) as customer_lifetime_value
from {{ ref('stg_customers') }} c
left join orders o using (customer_id)
""",
    "models/sources.yml": """version: 2
sources:
  - name: shop
    schema: raw
    tables:
      - name: customers
      - name: orders
      - name: payments
""",
    "models/marts/_marts.yml": """version: 2
models:
  - name: fct_orders
    config: {meta: {layer: fct}}
    columns:
      - name: order_id
        data_tests: [unique, not_null]
  - name: fct_customers
    config: {meta: {layer: fct}}
    columns:
      - name: customer_id
        data_tests: [unique, not_null]
""",
}


def write_project(root: Path) -> Path:
    """The shop's dbt project under ``root`` (profile on the monitor's DuckDB file)."""
    proj = root / "jaffle"
    for rel, text in _MODELS.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text, encoding="utf-8")
    (proj / "dbt_project.yml").write_text(
        "name: jaffle\nversion: '1.0'\nprofile: jaffle\nmodel-paths: ['models']\n"
        "models:\n  jaffle:\n    staging: {+materialized: view}\n", encoding="utf-8")
    (proj / "profiles.yml").write_text(
        "jaffle:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        "      path: \"{{ env_var('MONITOR_WAREHOUSE_PATH') }}\"\n      threads: 1\n",
        encoding="utf-8")
    return proj


def write_config(root: Path, project: Path) -> Config:
    """The repo's config.toml moved under ``root``, on the shop: ingest and gate off, the
    order amounts profiled instead of the claims'."""
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    edits = {
        'project_dir = "pipeline"': f'project_dir = "{project}"',
        'profiles_dir = "pipeline"': f'profiles_dir = "{project}"',
        "vars = { lookback_batches = 0 }": "vars = {}",
        "[ingest]\nenabled = true": "[ingest]\nenabled = false",
        "[validation]\nenabled = true": "[validation]\nenabled = false",
        'path = "data/warehouse.duckdb"': f'path = "{root / "warehouse.duckdb"}"',
        'url = "sqlite:///data/state.db"': f'url = "sqlite:///{root / "state.db"}"',
        'target_path = "data/dbt-target"': f'target_path = "{root / "dbt-target"}"',
        'log_path = "data/dbt-logs"': f'log_path = "{root / "dbt-logs"}"',
        'dir = "data/evidence"': f'dir = "{root / "evidence"}"',
        'snapshots_dir = "data/snapshots"': f'snapshots_dir = "{root / "snapshots"}"',
    }
    for old, new in edits.items():
        if old not in text:
            raise RuntimeError(f"config.toml changed: {old!r} not found")
        text = text.replace(old, new, 1)
    feeds = text.index("[ingest.feeds.")  # the benefits feeds: none here
    text = text[:feeds] + text[text.index("[validation]"):]
    start = text.index("aggregates = [")
    end = text.index("]\n", text.index("monthly_premium", start)) + 2
    text = (text[:start] + 'aggregates = [\n  { model = "fct_orders", column = "amount", '
            'funcs = ["sum"] },\n  { model = "fct_customers", column = '
            '"customer_lifetime_value", funcs = ["sum"] },\n]\n' + text[end:])
    path = root / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@dataclass(frozen=True)
class ShopDay:
    """One day of the shop's new rows (ids continue from the previous days)."""

    customers: list[tuple[int, str, str]]
    orders: list[tuple[int, int, date, str]]
    payments: list[tuple[int, int, str, int]]


def shop_day(seed: int, index: int, day: date, orders_per_day: int,
             dup_share: float = 0.0) -> ShopDay:
    """Day ``index``'s rows: a pure function of (seed, index, day, volume, injection)."""
    rng = random.Random(f"{seed}:{index}")
    per_day = orders_per_day * (0.6 if day.weekday() >= 5 else 1.0)
    n_orders = max(1, round(per_day * rng.uniform(0.95, 1.05)))
    n_customers = max(1, orders_per_day // 3)  # the same every day: ids stay contiguous
    first = 1 + index * n_customers
    customers = [(first + k, f"F{first + k}", f"L{first + k}") for k in range(n_customers)]
    known = first + n_customers - 1
    orders: list[tuple[int, int, date, str]] = []
    payments: list[tuple[int, int, str, int]] = []
    for k in range(n_orders):
        oid = index * 10 * orders_per_day + k + 1
        orders.append((oid, rng.randint(1, known), day, rng.choice(STATUSES)))
        for _ in range(rng.choice((1, 1, 1, 2))):
            pid = oid * 3 + len([p for p in payments if p[1] == oid])
            payments.append((pid, oid, rng.choice(METHODS), rng.randint(100, 3000)))
    if dup_share:
        payments += rng.sample(payments, round(len(payments) * dup_share))
    return ShopDay(customers, orders, payments)


def load(cfg: Config, rows: ShopDay) -> None:
    """The loader: append the day's rows to ``raw.*`` with a ``_loaded_day``."""
    con = duckdb.connect(str(cfg.warehouse.path))
    try:
        con.execute("CREATE SCHEMA IF NOT EXISTS raw")
        con.execute("CREATE TABLE IF NOT EXISTS raw.customers "
                    "(id INTEGER, first_name VARCHAR, last_name VARCHAR)")
        con.execute("CREATE TABLE IF NOT EXISTS raw.orders "
                    "(id INTEGER, user_id INTEGER, order_date DATE, status VARCHAR)")
        con.execute("CREATE TABLE IF NOT EXISTS raw.payments "
                    "(id INTEGER, order_id INTEGER, payment_method VARCHAR, amount INTEGER)")
        con.executemany("INSERT INTO raw.customers VALUES (?, ?, ?)", rows.customers)
        con.executemany("INSERT INTO raw.orders VALUES (?, ?, ?, ?)", rows.orders)
        con.executemany("INSERT INTO raw.payments VALUES (?, ?, ?, ?)", rows.payments)
    finally:
        con.close()


def inflation(cfg: Config) -> tuple[float, float]:
    """(sum of fct_orders.amount, the same over distinct payments): equal when clean."""
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        row = con.execute(
            "SELECT (SELECT sum(amount) FROM main.fct_orders), "
            "(SELECT sum(amount) / 100 FROM (SELECT DISTINCT * FROM raw.payments))").fetchone()
    finally:
        con.close()
    assert row is not None
    return float(row[0] or 0), float(row[1] or 0)


@dataclass
class JaffleRun:
    inject_index: int
    days: list[tuple[date, str, list[str], str]] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)
    inflated: tuple[float, float] = (0.0, 0.0)


def rehearse_jaffle(out: Path, *, n_days: int, orders_per_day: int, seed: int = 7,
                    start: date = DEFAULT_START, history: int = HISTORY,
                    echo: Callable[[str], None] = print) -> JaffleRun:
    """Run ``n_days`` cycles on the shop; duplicated payments on the first weekday after
    ``history`` days."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = write_config(out, write_project(out))
    inject = next(i for i in range(history, history + 7)
                  if (start + timedelta(days=i)).weekday() < 5)
    run = JaffleRun(inject)
    counts: dict[str, float] = {}
    for i in range(n_days):
        day = start + timedelta(days=i)
        rows = shop_day(seed, i, day, orders_per_day, DUP_SHARE if i == inject else 0.0)
        load(cfg, rows)
        st = state.open_state(state_url(cfg))
        try:
            before = _max_outbox_id(st)
            t0 = time.perf_counter()
            result = run_cycle(cfg, trigger="rehearsal", as_of=day)
            seconds = time.perf_counter() - t0
            fired = [f"{s}:{k}" for s, k in _fired_since(st, before)]
        finally:
            st.dispose()
        now = {f"{m}.growth": float(n) for m, (n, _) in fact_health(cfg).items()}
        points = {"raw.customers": float(len(rows.customers)),
                  "raw.orders": float(len(rows.orders)),
                  "raw.payments": float(len(rows.payments))}
        points |= {k: v - counts.get(k, 0.0) for k, v in now.items()}
        counts = now
        for k, v in points.items():
            run.series.setdefault(k, [0.0] * i).append(v)
        run.days.append((day, result.status, fired, _root_cause(result)))
        if i == inject:
            run.inflated = inflation(cfg)
        echo(f"{day} {day:%a} {'duplicated payments' if i == inject else '-':<20} "
             f"{result.status:<8} {seconds:5.1f} s alerts={', '.join(fired) or '-'}")
    return run


def render(run: JaffleRun) -> str:
    """What each detector made of the injection day, and their flags on clean days."""
    flags = elementary.flagged_days(run.series)
    day, status, fired, cause = run.days[run.inject_index]
    data = [a for a in fired if "runtime_seconds" not in a and ":cost" not in a]
    detected = status in ("held", "failed") or bool(data)
    top = max(flags.get(run.inject_index, []), key=lambda s: abs(s.z or 0.0), default=None)
    clean = [i for i in range(len(run.days)) if i != run.inject_index]
    prod, truth = run.inflated
    return "\n".join([
        f"jaffle_shop-like project, 20% duplicated payments on {day} (day index "
        f"{run.inject_index}):",
        f"  monitor:    detected {'yes' if detected else 'NO'} (status {status}, root cause "
        f"{cause}, alerts {', '.join(fired) or '-'})",
        f"  elementary: detected {'no' if top is None else 'yes'}"
        + ("" if top is None else f" ({top.series} z={top.z:+.1f})"),
        f"  fct_orders.amount {prod:,.2f} vs {truth:,.2f} over distinct payments "
        f"({(prod / truth - 1) if truth else 0:+.1%})",
        f"  clean days: {len(clean)}; monitor pages on clean days: "
        f"{sum(1 for i in clean for a in run.days[i][2] if a.startswith('critical'))}; "
        f"elementary flags on clean days: {sum(1 for i in clean if flags.get(i))}",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--days", type=int, default=HISTORY + 2)
    ap.add_argument("--history", type=int, default=HISTORY)
    ap.add_argument("--orders-per-day", type=int, default=200)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "jaffle")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    run = rehearse_jaffle(args.out, n_days=args.days, orders_per_day=args.orders_per_day,
                          history=args.history)
    print()
    print(render(run))
    print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
