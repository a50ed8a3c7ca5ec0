"""The layer profile (measure, carry, history) on a real DuckDB file with known duplicates
and nulls."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.core.manifest import ModelInfo, Project
from monitor.core.sections import AggregateSpec, DriftConfig, ProfileConfig
from monitor.observe.carry import Carry
from monitor.observe.drift import DriftResult
from monitor.observe.history import load_history, save_points, score_points
from monitor.observe.profile import MetricPoint, check_config, default_sum_columns, measure
from monitor.store.batches import ledger_tables
from monitor.store.state import events, metadata, metric_points, profile_carries, runs

SETUP = [
    "create schema raw",
    # order_id 1 twice, NULL twice -> 4 distinct combos (NULL counts as one).
    'create table raw.orders (order_id integer, "Amount" decimal(10,2), status varchar)',
    """insert into raw.orders values (1, 10, 'a'), (1, 10, 'a'), (2, 5.5, 'b'),
       (null, null, 'c'), (null, 2, 'c'), (3, 4, 'd')""",
    # Composite grain (a, b): (1,'x') twice, one NULL in b.
    "create table main.fct_pairs (a integer, b varchar, qty integer)",
    "insert into main.fct_pairs values (1, 'x', 1), (1, 'y', 2), (1, 'x', 3), (2, null, 4)",
    "create view main.stg_orders as select * from raw.orders where order_id is not null",
    "create table main.fct_empty (id integer, qty double)",
    "create table main.victim (x integer)",
]


def _node(name: str, schema: str, layer: str, grain: tuple[str, ...] = (), **kw: str) -> ModelInfo:
    rtype = kw.pop("resource_type", "model")
    return ModelInfo(
        unique_id=f"{rtype}.t.{name}",
        name=kw.pop("display", name),
        resource_type=rtype,
        database="wh",
        schema=schema,
        identifier=name,
        layer=layer,
        grain=grain,
        materialization=kw.pop("materialization", "table"),
    )


def _project() -> Project:
    src = _node(
        "orders", "raw", "raw", ("order_id",), resource_type="source", display="shop.orders"
    )
    nodes = [
        _node("stg_orders", "main", "stg", ("ORDER_ID",), materialization="view"),
        _node("fct_pairs", "main", "fct", ("a", "b")),
        _node("fct_empty", "main", "fct", ("id",)),
        _node("fct_missing", "main", "fct", ("id",)),  # relation never built
        _node("fct_badgrain", "main", "fct", ("nope",)),
    ]
    # fct_badgrain points at an existing relation whose grain column does not exist.
    nodes[-1] = ModelInfo(**{**nodes[-1].__dict__, "identifier": "fct_pairs"})
    return Project(name="t", models={n.unique_id: n for n in nodes}, sources={src.unique_id: src})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"duckdb:///{tmp_path / 'wh.duckdb'}")
    with eng.begin() as conn:
        for stmt in SETUP:
            conn.exec_driver_sql(stmt)
    yield eng
    eng.dispose()


@pytest.fixture
def state(tmp_path: Path) -> sa.Engine:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    metadata.create_all(eng, tables=[metric_points])
    return eng


AT = datetime(2026, 3, 4, tzinfo=UTC)
CFG = ProfileConfig(
    aggregates=(
        {
            "model": "shop.orders",
            "column": "amount",
            "funcs": ["sum", "median", "avg", "min", "max"],
        },
        {"model": "fct_pairs", "column": "qty", "funcs": ["sum", "max"]},
        {"model": "fct_empty", "column": "qty", "funcs": ["sum", "median"]},
        {"model": "shop.orders", "column": "status", "funcs": ["sum"]},  # not numeric
        {"model": "victim", "column": "x", "funcs": ["sum"]},  # not in manifest
        {"model": "fct_pairs", "column": "qty) from main.victim; drop table main.victim; --"},
    )  # type: ignore[arg-type]  # a TOML loader passes tables; they are normalized
)


def _by(points: list[MetricPoint]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for p in points:
        out.setdefault(p.model, {})[p.metric] = p.value
    return out


def test_measure_exact_values(engine: sa.Engine) -> None:
    points = measure(engine, _project(), CFG, run_id="r1", observed_at=AT)
    got = _by(points)
    assert got["shop.orders"] == {
        "row_count": 6.0,
        "distinct_keys": 4.0,
        "duplicate_keys": 2.0,
        "null_rate:order_id": 2 / 6,
        "sum:amount": 31.5,
        "median:amount": 5.5,
        "avg:amount": 6.3,
        "min:amount": 2.0,
        "max:amount": 10.0,
    }
    # Case-insensitive grain match on a view.
    assert got["stg_orders"] == {
        "row_count": 4.0,
        "distinct_keys": 3.0,
        "duplicate_keys": 1.0,
        "null_rate:ORDER_ID": 0.0,
    }
    assert got["fct_pairs"] == {
        "row_count": 4.0,
        "distinct_keys": 3.0,
        "duplicate_keys": 1.0,
        "null_rate:a": 0.0,
        "null_rate:b": 0.25,
        "sum:qty": 10.0,
        "max:qty": 4.0,
    }
    # Empty relation: sum of nothing is 0, median has no value and is skipped.
    assert got["fct_empty"] == {
        "row_count": 0.0,
        "distinct_keys": 0.0,
        "duplicate_keys": 0.0,
        "null_rate:id": 0.0,
        "sum:qty": 0.0,
    }
    assert got["fct_badgrain"] == {"row_count": 4.0}  # grain column unknown: volume only
    assert "fct_missing" not in got
    assert {(p.run_id, p.observed_at) for p in points} == {("r1", AT)}
    assert {p.model: p.layer for p in points}["shop.orders"] == "raw"
    with engine.connect() as conn:  # the injected "column" never reached SQL
        assert conn.exec_driver_sql("select count(*) from main.victim").scalar() == 0


def test_selection_filters(engine: sa.Engine) -> None:
    cfg = ProfileConfig(layers=("fct", "raw"), exclude=("fct_pairs",), include_sources=False)
    got = _by(measure(engine, _project(), cfg, observed_at=AT))
    assert set(got) == {"fct_empty", "fct_badgrain"}


def test_views_can_be_left_out(engine: sa.Engine) -> None:
    """Counting a view re-runs it over all history each cycle: views=false skips them."""
    got = _by(measure(engine, _project(), ProfileConfig(views=False), observed_at=AT))
    assert "stg_orders" not in got
    assert {"shop.orders", "fct_pairs", "fct_empty", "fct_badgrain"} <= set(got)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="funcs"):
        AggregateSpec("m", "c", ("stddev",))
    with pytest.raises(ValueError, match="victim"):
        check_config(_project(), CFG)
    check_config(_project(), ProfileConfig(aggregates=(AggregateSpec("fct_pairs", "qty"),)))


def _pt(day: int, value: float, metric: str = "row_count", run: str = "r") -> MetricPoint:
    return MetricPoint(run, "fct_pairs", "fct", metric, value, AT + timedelta(days=day))


def test_history_roundtrip(state: sa.Engine) -> None:
    save_points(state, [_pt(0, 10), _pt(1, 20), _pt(2, 30), _pt(3, 40)])
    save_points(state, [_pt(1, 25, run="rerun"), _pt(1, 1, metric="other")])
    hist = load_history(state, "fct_pairs", "row_count", before=AT + timedelta(days=3))
    assert [(h.at, h.value) for h in hist] == [
        (AT, 10.0),
        (AT + timedelta(days=1), 25.0),  # the re-run of day 1 replaced the first write
        (AT + timedelta(days=2), 30.0),
    ]
    last2 = load_history(state, "fct_pairs", "row_count", limit=2)
    assert [h.value for h in last2] == [30.0, 40.0]


def test_score_points_uses_deltas_and_feeds_back(state: sa.Engine) -> None:
    cfg = DriftConfig(seasonal=False, min_history=5, metrics=("row_count", "null_rate:*"))
    # A table growing by ~100 rows a day; null rate flat at 0.1.
    growth = [100, 104, 97, 101, 99, 103, 98, 100]
    level = 1000.0
    for day, g in enumerate(growth):
        level += g
        save_points(state, [_pt(day, level), _pt(day, 0.1, metric="null_rate:a")])
    spike = _pt(len(growth), level + 300)  # 3x the usual growth
    normal = _pt(len(growth), 0.1, metric="null_rate:a")
    other = _pt(len(growth), 7.0, metric="sum:qty")
    (p1, r1), (p2, r2), (p3, r3) = score_points(state, [spike, normal, other], cfg)
    assert r1.anomalous and r1.baseline == 100.0 and r1.n == 7  # 8 levels -> 7 deltas
    assert p1.anomalous and p1.z == r1.z and p1.value == level + 300  # level kept
    assert (r2.anomalous, r2.z) == (False, 0.0)
    assert r3.reason == "not scored" and p3.z is None
    save_points(state, [p1, p2])
    # Next day grows by 100 from the spike level: the flagged spike stays out of the
    # baseline, so the delta series does not learn 300 as normal.
    ((_, nxt),) = score_points(state, [_pt(len(growth) + 1, level + 400)], cfg)
    assert (nxt.anomalous, nxt.baseline, nxt.n) == (False, 100.0, 7)
    # A series with no stored history cannot be scored.
    ((_, first),) = score_points(state, [MetricPoint("r", "new", "fct", "row_count", 5, AT)], cfg)
    assert first.reason == "no history" and first.z is None


def test_a_sum_inflated_without_row_growth_drifts_per_added_row(state: sa.Engine) -> None:
    """Duplicated payments: orders grow as usual, their sum grows 20% more. The sum's
    growth stays within a busy day; the sum per added row is an anomaly (and it pages on
    a mart), while a busier day with the usual amount per row is not."""
    cfg = DriftConfig(seasonal=False, min_history=5)
    rows, total = 1000.0, 100_000.0
    for day in range(10):
        g = 100 + (day % 3) * 8  # busier and quieter days
        rows, total = rows + g, total + g * 100.0 * (1 + 0.005 * (day % 2))
        save_points(state, [_pt(day, rows), _pt(day, total, metric="sum:amount")])
        save_points(state, [p for p, _ in score_points(
            state, [_pt(day, rows), _pt(day, total, metric="sum:amount")], cfg)
            if p.metric.startswith("per_row:")])
    inflated = score_points(state, [_pt(10, rows + 104), _pt(10, total + 104 * 120.0,
                                                              metric="sum:amount")], cfg)
    by_metric = {p.metric: r for p, r in inflated}
    assert not by_metric["sum:amount"].anomalous  # +20% growth: a busy day's worth
    per_row = by_metric["per_row:amount"]
    assert per_row.anomalous and per_row.severity == "critical"
    assert per_row.relative_change == pytest.approx(0.2, abs=0.01)
    busy = score_points(state, [_pt(10, rows + 125), _pt(10, total + 125 * 100.0,
                                                          metric="sum:amount")], cfg)
    assert not {p.metric: r for p, r in busy}["per_row:amount"].anomalous


def test_a_mean_over_few_rows_is_not_drift_on_a_short_baseline(state: sa.Engine) -> None:
    """With one earlier day, a 300-row day's amount per row 12% above it is chance (a
    mean of 300 values moves ~6%), so it is not flagged; 12x is. Once the baseline has
    points enough to show its own spread, that spread rules again."""
    cfg = DriftConfig(seasonal=False, min_history=2)
    rows, total = 300.0, 300 * 160.0
    save_points(state, [_pt(0, rows), _pt(0, total, metric="sum:amount")])
    day1 = [_pt(1, rows * 2), _pt(1, total * 2, metric="sum:amount")]
    save_points(state, [p for p, _ in score_points(state, day1, cfg)])
    save_points(state, day1)

    def per_row(amount: float) -> DriftResult:
        day2 = [_pt(2, rows * 3), _pt(2, total * 2 + 300 * amount, metric="sum:amount")]
        return {p.metric: r for p, r in score_points(state, day2, cfg)}["per_row:amount"]

    noise = per_row(160.0 * 1.12)
    assert noise.n == 1 and not noise.anomalous
    assert noise.spread == pytest.approx(160.0 / 300**0.5, rel=1e-6)  # cv 1 / sqrt(rows)
    cents = per_row(160.0 * 12)
    assert cents.anomalous and cents.severity == "critical"
    # A 20M-row day's mean hardly moves by chance: the metric's own 2% floor rules, as
    # it does here without the sampling floor, and 12% is drift.
    assert DriftConfig().sampling_noise_ratio(20e6) < 0.001
    tight = DriftConfig(seasonal=False, min_history=2, spread_min_points=1)
    assert {p.metric: r for p, r in score_points(state, [
        _pt(2, rows * 3), _pt(2, total * 2 + 300 * 160.0 * 1.12, metric="sum:amount")],
        tight)}["per_row:amount"].anomalous


# --- views counted batch by batch, with carried totals --------------------------------

BATCH_VIEW = (
    "create or replace view main.stg_claims as select c.* from raw.claims as c "
    "join raw.ingest_batches as b on c._batch_id = b.batch_id where b.status = 'published'"
)
CLAIMS_VIEW = _node(
    "stg_claims", "main", "stg", ("_batch_id", "_line_number"), materialization="view"
)
CLAIMS_PROJECT = Project(name="t", models={CLAIMS_VIEW.unique_id: CLAIMS_VIEW}, sources={})


@pytest.fixture
def carry(tmp_path: Path, engine: sa.Engine, state: sa.Engine) -> Carry:
    ledger = ledger_tables(sa.MetaData(), "raw")[0]
    ledger.create(engine)
    metadata.create_all(state, tables=[profile_carries, runs, events])
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "create table raw.claims (claim_id integer, amount double, _batch_id varchar, "
            "_line_number integer, _publish_seq bigint)"
        )
        conn.exec_driver_sql(BATCH_VIEW)
    return Carry(state, ledger)


def _deliver(engine: sa.Engine, batch: str, seq: int, rows: list[tuple[int, float | None]],
             feed: str = "claims") -> None:
    """One published batch: its ledger row and (of claims) its raw rows."""
    with engine.begin() as conn:
        conn.execute(
            ledger_tables(sa.MetaData(), "raw")[0].insert(),
            [
                {
                    "batch_id": batch,
                    "feed": feed,
                    "source_file": f"{batch}.csv",
                    "checksum": batch,
                    "size_bytes": 1,
                    "load_seq": seq,
                    "status": "published",
                    "publish_seq": seq,
                    "rows_read": len(rows),
                    "rows_loaded": len(rows),
                    "rows_quarantined": 0,
                    "ingested_at": datetime(2026, 3, 1),
                }
            ],
        )
        for line, (claim, amount) in enumerate(rows if feed == "claims" else [], start=1):
            conn.exec_driver_sql(
                "insert into raw.claims values (?, ?, ?, ?, ?)", (claim, amount, batch, line, seq)
            )


def _claims(
    engine: sa.Engine, carry: Carry | None, funcs: tuple[str, ...] = ("sum",)
) -> dict[str, float]:
    cfg = ProfileConfig(aggregates=(AggregateSpec("stg_claims", "amount", funcs),))
    return _by(measure(engine, CLAIMS_PROJECT, cfg, observed_at=AT, carry=carry))["stg_claims"]


def _tamper(carry: Carry, rows: float) -> None:
    """Make the carried row count wrong, so a test can tell carried from recounted."""
    with carry.state.begin() as conn:
        raw = conn.execute(sa.select(profile_carries.c.raw)).scalar_one()
        conn.execute(profile_carries.update().values(raw={**raw, "row_count": rows}))


def test_batch_keyed_view_adds_new_batches_to_carried_totals(
    engine: sa.Engine, carry: Carry
) -> None:
    _deliver(engine, "b1", 1, [(1, 10.0), (2, None), (2, 5.0)])
    assert _claims(engine, carry)["row_count"] == 3.0  # first count: in full
    _deliver(engine, "b2", 2, [(3, 1.5), (4, 2.5)])
    carried = _claims(engine, carry)
    assert carried == _claims(engine, None)  # carried + new batch == a full count
    assert carried["row_count"] == 5.0 and carried["distinct_keys"] == 5.0
    assert carried["sum:amount"] == 19.0 and carried["null_rate:_batch_id"] == 0.0
    # The totals really are carried: a wrong carried count shows through...
    _tamper(carry, 1000.0)
    _deliver(engine, "b3", 3, [(5, 1.0)])
    assert _claims(engine, carry)["row_count"] == 1001.0
    # ...until a batch at or below the watermark is retracted: then it is recounted.
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "update raw.ingest_batches set status = 'rejected' where batch_id = 'b1'"
        )
    assert _claims(engine, carry) == _claims(engine, None)
    assert _claims(engine, carry)["row_count"] == 3.0


def test_changed_view_or_non_additive_aggregate_is_counted_in_full(
    engine: sa.Engine, carry: Carry
) -> None:
    _deliver(engine, "b1", 1, [(1, 10.0), (2, 4.0)])
    _claims(engine, carry)
    _tamper(carry, 1000.0)
    with engine.begin() as conn:  # a new definition: the carried totals are void
        conn.exec_driver_sql(BATCH_VIEW + " and c.amount > 5")
    assert _claims(engine, carry)["row_count"] == 1.0
    _tamper(carry, 1000.0)
    # A median of the whole view cannot be added up from batches: always a full count.
    assert _claims(engine, carry, ("sum", "median"))["row_count"] == 1.0
    # A --full-refresh may have rebuilt the tables under the view: counted in full.
    _claims(engine, carry)
    _tamper(carry, 1000.0)
    with carry.state.begin() as conn:
        conn.execute(runs.insert().values(
            run_id="r-refresh", started_at=datetime.now(UTC).replace(tzinfo=None),
            status="success", trigger="once", full_refresh=True))
    assert _claims(engine, carry)["row_count"] == 1.0


STG_TABLE = ModelInfo(
    unique_id="model.t.stg_claims_t", name="stg_claims_t", resource_type="model",
    database="wh", schema="main", identifier="stg_claims_t", layer="stg",
    grain=("_batch_id", "_line_number"), materialization="incremental", is_incremental=True,
)
INT_VIEW = ModelInfo(
    unique_id="model.t.int_claims_v", name="int_claims_v", resource_type="model",
    database="wh", schema="main", identifier="int_claims_v", layer="int",
    grain=("_batch_id", "_line_number"), materialization="view",
    parents=(STG_TABLE.unique_id,),
)
TABLE_PROJECT = Project(name="t", models={n.unique_id: n for n in (STG_TABLE, INT_VIEW)},
                        sources={})


def test_batch_keyed_table_and_views_on_it_count_what_the_table_holds(
    engine: sa.Engine, carry: Carry
) -> None:
    """A failed build leaves a staging table behind the ledger: its batches must be
    counted when a later build writes them, in the table and in the views over it."""
    with engine.begin() as conn:
        conn.exec_driver_sql("create table main.stg_claims_t as from main.stg_claims limit 0")
        conn.exec_driver_sql("create view main.int_claims_v as from main.stg_claims_t")

    def build() -> None:  # what the incremental staging model does: append new batches
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "insert into main.stg_claims_t from main.stg_claims where _publish_seq > "
                "(select coalesce(max(_publish_seq), 0) from main.stg_claims_t)")

    def count(carry_: Carry | None) -> dict[str, dict[str, float]]:
        return _by(measure(engine, TABLE_PROJECT, ProfileConfig(), observed_at=AT,
                            carry=carry_))

    _deliver(engine, "b1", 1, [(1, 10.0), (2, 4.0)])
    build()
    assert count(carry)["stg_claims_t"]["row_count"] == 2.0
    _deliver(engine, "b2", 2, [(3, 1.0)])  # published, but the build fails: not in the table
    assert count(carry)["int_claims_v"]["row_count"] == 2.0
    build()
    carried = count(carry)
    assert carried == count(None)
    assert carried["stg_claims_t"]["row_count"] == carried["int_claims_v"]["row_count"] == 3.0
    with carry.state.connect() as conn:
        marks = dict(conn.execute(
            sa.select(profile_carries.c.model, profile_carries.c.watermark)).all())
    assert marks == {"stg_claims_t": 2, "int_claims_v": 2}


RAW_CLAIMS = ModelInfo(
    unique_id="source.t.raw.claims", name="claims", resource_type="source", database="wh",
    schema="raw", identifier="claims", layer="raw",
)
FED_TABLE = replace(STG_TABLE, parents=(RAW_CLAIMS.unique_id,))
FED_PROJECT = Project(name="t", models={n.unique_id: n for n in (FED_TABLE, INT_VIEW)},
                      sources={RAW_CLAIMS.unique_id: RAW_CLAIMS})


def test_a_table_lags_only_behind_its_own_feeds(engine: sa.Engine, carry: Carry) -> None:
    """A batch of another feed is no batch the table lacks: the table and the views on it
    count up to the ledger's newest batch; a batch of the table's own raw table that no
    build has written stops them just below it."""
    with engine.begin() as conn:
        conn.exec_driver_sql("create table main.stg_claims_t as from main.stg_claims limit 0")
        conn.exec_driver_sql("create view main.int_claims_v as from main.stg_claims_t")

    def build() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "insert into main.stg_claims_t from main.stg_claims where _publish_seq > "
                "(select coalesce(max(_publish_seq), 0) from main.stg_claims_t)")

    def marks() -> dict[str, int]:
        measure(engine, FED_PROJECT, ProfileConfig(), observed_at=AT, carry=carry)
        with carry.state.connect() as conn:
            return dict(conn.execute(
                sa.select(profile_carries.c.model, profile_carries.c.watermark)).all())

    _deliver(engine, "b1", 1, [(1, 10.0), (2, 4.0)])
    build()
    _deliver(engine, "p2", 2, [], feed="plans")
    assert marks() == {"stg_claims_t": 2, "int_claims_v": 2}
    _deliver(engine, "b3", 3, [(3, 1.0)])  # the table's own feed, not built yet
    _deliver(engine, "p4", 4, [], feed="plans")
    assert marks() == {"stg_claims_t": 2, "int_claims_v": 2}
    build()
    assert marks() == {"stg_claims_t": 4, "int_claims_v": 4}
    got = _by(measure(engine, FED_PROJECT, ProfileConfig(), observed_at=AT, carry=carry))
    assert got["int_claims_v"] == _by(measure(engine, FED_PROJECT, ProfileConfig(),
                                               observed_at=AT))["int_claims_v"]
    assert got["stg_claims_t"]["row_count"] == 3.0


FACT = ModelInfo(
    unique_id="model.t.fct_c", name="fct_c", resource_type="model", database="wh",
    schema="main", identifier="fct_c", layer="fct", grain=("claim_id",),
    materialization="incremental", is_incremental=True,
)
FACT_PROJECT = Project(name="t", models={FACT.unique_id: FACT}, sources={})


@pytest.fixture
def fact(engine: sa.Engine, state: sa.Engine) -> Carry:
    metadata.create_all(state, tables=[profile_carries, runs, events])
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "create table main.fct_c (claim_id varchar, amount double, _publish_seq bigint, "
            "_enriched_publish_seq bigint)"
        )
    return Carry(state, ledger_tables(sa.MetaData(), "raw")[0])


def _merge(engine: sa.Engine, seq: int, keys: list[str], *, delete: bool = True) -> None:
    """What an incremental run does: replace the rows of the incoming keys."""
    with engine.begin() as conn:
        for k in keys:
            if delete:
                conn.exec_driver_sql("delete from main.fct_c where claim_id = ?", (k,))
            conn.exec_driver_sql("insert into main.fct_c values (?, 1.0, ?, ?)", (k, seq, seq))


def _fact(engine: sa.Engine, carry: Carry | None, every: int = 7) -> dict[str, float]:
    cfg = ProfileConfig(full_count_every=every)
    return _by(measure(engine, FACT_PROJECT, cfg, observed_at=AT, carry=carry))["fct_c"]


def test_incremental_table_keys_are_checked_on_touched_keys(
    engine: sa.Engine, fact: Carry
) -> None:
    _merge(engine, 1, ["k1", "k2", "k3"])
    assert _fact(engine, fact)["distinct_keys"] == 3.0  # first count: in full
    _merge(engine, 2, ["k2", "k4"])
    carried = _fact(engine, fact)
    assert carried == _fact(engine, None)
    assert (carried["row_count"], carried["distinct_keys"], carried["duplicate_keys"]) == (
        4.0, 4.0, 0.0)
    # A merge that forgets to delete duplicates a touched key: seen on the touched keys.
    _merge(engine, 3, ["k4"], delete=False)
    dup = _fact(engine, fact)
    assert dup == _fact(engine, None) and dup["duplicate_keys"] == 1.0
    # The last count found a duplicate: the next one is full, and stays exact.
    with engine.begin() as conn:
        conn.exec_driver_sql("delete from main.fct_c where claim_id = 'k4' and _publish_seq = 2")
    assert _fact(engine, fact)["duplicate_keys"] == 0.0


def test_rows_written_below_the_watermark_wait_for_a_full_count(
    engine: sa.Engine, fact: Carry, state: sa.Engine
) -> None:
    _merge(engine, 1, ["k1", "k2"])
    _fact(engine, fact, every=3)  # count 1: full
    # An old version of an untouched key re-inserted below the watermark: the touched
    # keys cannot see it (this is what the periodic full count is for).
    _merge(engine, 1, ["k1"], delete=False)
    _merge(engine, 2, ["k3"])
    assert _fact(engine, fact, every=3)["duplicate_keys"] == 0.0  # count 2: touched keys
    _merge(engine, 3, ["k4"])
    assert _fact(engine, fact, every=3)["duplicate_keys"] == 0.0  # count 3: touched keys
    assert _fact(engine, fact, every=3)["duplicate_keys"] == 1.0  # count 4: full
    # A --full-refresh run since the last count also makes the next one full.
    with engine.begin() as conn:
        conn.exec_driver_sql("delete from main.fct_c where claim_id = 'k1' and _publish_seq = 1")
    assert _fact(engine, fact, every=3)["duplicate_keys"] == 0.0  # full (last found one)
    _merge(engine, 1, ["k2"], delete=False)
    assert _fact(engine, fact, every=3)["duplicate_keys"] == 0.0  # touched keys only
    with state.begin() as conn:
        conn.execute(runs.insert().values(
            run_id="r-refresh", started_at=datetime.now(UTC).replace(tzinfo=None),
            status="success", trigger="once", full_refresh=True))
    assert _fact(engine, fact, every=3)["duplicate_keys"] == 1.0


def test_touched_aggregates_read_only_the_rows_the_cycle_published(
    engine: sa.Engine, fact: Carry
) -> None:
    cfg = ProfileConfig(aggregates=(
        AggregateSpec("fct_c", "amount", ("sum",)),
        AggregateSpec("fct_c", "amount", ("median", "max", "sum"), scope="touched"),
    ))

    def profile(after: int | None) -> dict[str, float]:
        return _by(measure(engine, FACT_PROJECT, cfg, observed_at=AT, carry=fact,
                            touched_after=after))["fct_c"]

    with engine.begin() as conn:
        conn.exec_driver_sql("insert into main.fct_c values ('k1', 100, 1, 1), ('k2', 300, 1, 1), "
                             "('k3', 2, 2, 2), ('k4', 4, 2, 2), ('k5', 9, 2, 2)")
    got = profile(1)
    assert got["sum:amount"] == 415.0  # table scope: every row
    assert (got["median:amount:touched"], got["max:amount:touched"],
            got["sum:amount:touched"]) == (4.0, 9.0, 15.0)  # rows above seq 1 only
    assert got["row_count"] == 5.0 and got["distinct_keys"] == 5.0
    # Nothing published: no median (skipped), a sum of nothing is 0.
    nothing = profile(2)
    assert "median:amount:touched" not in nothing and nothing["sum:amount:touched"] == 0.0
    # No watermark (a --full-refresh run): the touched aggregates are left out.
    assert not any(m.endswith(":touched") for m in profile(None))
    with pytest.raises(ValueError, match="scope"):
        AggregateSpec("fct_c", "amount", ("median",), scope="today")
    parsed = ProfileConfig(aggregates=(
        {"model": "fct_c", "column": "amount", "funcs": "median", "scope": "touched"},
    )).aggregates[0]  # type: ignore[arg-type]  # as TOML gives it
    assert (parsed.scope, parsed.metrics) == ("touched", [("median:amount:touched", "median")])


def test_marts_get_default_sums_only_when_no_aggregate_is_configured(engine: sa.Engine) -> None:
    """A project the monitor was just pointed at: each mart's measures are summed, so an
    inflated aggregate without new rows still moves a metric."""
    got = _by(measure(engine, _project(), ProfileConfig(), observed_at=AT))
    assert got["fct_pairs"]["sum:qty"] == 10.0 and got["fct_empty"]["sum:qty"] == 0.0
    assert not any(m.startswith("sum:") for m in got["stg_orders"])  # marts only
    assert "sum:qty" not in _by(measure(engine, _project(), ProfileConfig(default_sums=0),
                                         observed_at=AT))["fct_pairs"]
    configured = ProfileConfig(aggregates=(AggregateSpec("fct_empty", "qty", ("max",)),))
    assert "sum:qty" not in _by(measure(engine, _project(), configured,
                                         observed_at=AT))["fct_pairs"]


def test_default_sum_columns_prefer_measures_and_skip_keys() -> None:
    cols = {"order_id": True, "customer_id": True, "_publish_seq": True, "status": False,
            "credit_card_amount": True, "qty": True, "amount": True, "id": True,
            "coupon_amount": True, "order_key": True}
    assert default_sum_columns(cols, ("order_id",), 3) == [
        "amount", "credit_card_amount", "coupon_amount"]
    assert default_sum_columns(cols, (), 10) == [
        "amount", "credit_card_amount", "coupon_amount", "qty"]
    assert default_sum_columns(cols, (), 0) == []
