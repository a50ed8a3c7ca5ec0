"""The pipeline end to end on a real DuckDB file with real dbt runs.

One generated week is landed day by day, a cycle per day; then the facts are compared
with a --full-refresh build of the same raw data on a copy of the warehouse.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from dqm_demo.demo import days, land_day, workspace
from dqm_demo.generate import generate
from monitor.core.config import Config, load_config, state_url
from monitor.core.manifest import load_manifest
from monitor.cycle.run import run_cycle
from monitor.observe.profile import measure
from monitor.stages.build import DbtProject
from monitor.store import state
from monitor.store.state import metric_points, profile_carries
from monitor.warehouse.connection import warehouse

from .conftest import write_config

START = date(2026, 3, 2)  # a Monday
N_DAYS = 4
FACTS = {"fct_employees": "employee_id", "fct_plans": "plan_id", "fct_claims": "claim_id"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path, list[str]]:
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = load_config(write_config(tmp))
    feeds = tmp / "feeds"
    generate(feeds, START, N_DAYS, 300, seed=11)
    statuses = []
    for day in days(START, N_DAYS):
        land_day(feeds, cfg.ingest.landing_dir, day)
        result = run_cycle(cfg, trigger="test")
        assert result.dbt is not None and result.dbt.success, result.reason
        statuses.append(result.status)
    return cfg, feeds, statuses


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_daily_cycles_are_clean(built: tuple[Config, Path, list[str]]) -> None:
    _, _, statuses = built
    assert statuses == ["success"] * N_DAYS


def test_grain_one_row_per_key_despite_duplicates(built: tuple[Config, Path, list[str]]) -> None:
    cfg, _, _ = built
    wh = cfg.warehouse.path
    # The raw feed does carry duplicates and updates...
    raw_dupes = _rows(wh, "select count(*) - count(distinct claim_id) from raw.claims")[0][0]
    assert isinstance(raw_dupes, int) and raw_dupes > 0
    # ...and every fact still has exactly one row per key.
    for fact, key in FACTS.items():
        n, distinct = _rows(wh, f"select count(*), count(distinct {key}) from main.{fact}")[0]
        assert n == distinct and isinstance(n, int) and n > 0, fact


def test_late_update_is_merged_not_duplicated(built: tuple[Config, Path, list[str]]) -> None:
    cfg, _, _ = built
    wh = cfg.warehouse.path
    updated = _rows(
        wh,
        "select claim_id, count(distinct updated_at) from raw.claims "
        "group by 1 having count(distinct updated_at) > 1",
    )
    assert updated, "the generator should deliver later updates to earlier claims"
    # The fact keeps the latest version: the one delivered in the latest batch.
    stale = _rows(
        wh,
        "with latest as (select claim_id, max(_batch_id) as batch from raw.claims group by 1) "
        "select count(*) from main.fct_claims f join latest l using (claim_id) "
        "where f._batch_id <> l.batch",
    )[0][0]
    assert stale == 0


def test_incremental_equals_full_refresh(
    built: tuple[Config, Path, list[str]], tmp_path: Path
) -> None:
    cfg, _, _ = built
    fresh = workspace(cfg, tmp_path / "fresh")
    fresh.warehouse.path.parent.mkdir(parents=True)
    shutil.copy(cfg.warehouse.path, fresh.warehouse.path)
    result = DbtProject(fresh).invoke("build", full_refresh=True)
    assert result.success, result.failed
    con = duckdb.connect(str(fresh.warehouse.path))
    try:
        con.execute(f"attach '{cfg.warehouse.path}' as inc (read_only)")
        for fact in FACTS:
            n = con.execute(f"select count(*) from main.{fact}").fetchone()
            assert n is not None and n[0] > 0
            pairs = ((f"main.{fact}", f"inc.main.{fact}"), (f"inc.main.{fact}", f"main.{fact}"))
            for a, b in pairs:
                q = f"select count(*) from (from {a} except all from {b})"
                diff = con.execute(q).fetchone()
                assert diff == (0,), f"{fact}: {a} has rows {b} lacks"
    finally:
        con.close()


def test_carried_view_counts_equal_a_full_count(built: tuple[Config, Path, list[str]]) -> None:
    """Each cycle counted the batch-keyed views on its new batches only; the totals it
    carried forward equal counting the whole views now."""
    cfg, _, _ = built
    st = state.open_state(state_url(cfg))
    try:
        with st.connect() as conn:
            carried = {r.model: r for r in conn.execute(sa.select(profile_carries)).all()}
            last_run = conn.execute(
                sa.select(metric_points.c.run_id).order_by(metric_points.c.id.desc()).limit(1)
            ).scalar_one()
            stored = conn.execute(
                sa.select(metric_points.c.model, metric_points.c.metric, metric_points.c.value)
                .where(metric_points.c.run_id == last_run)
            ).all()
    finally:
        st.dispose()
    views = {"int_claims__enriched", "int_employees__enriched"}
    # incremental staging, keyed by batch: carried the same way
    tables = {"stg_benefits__claims", "stg_benefits__employees", "stg_benefits__plans"}
    assert {*views, *tables} <= set(carried)
    published = _rows(cfg.warehouse.path, "select max(publish_seq) from raw.ingest_batches "
                      "where status = 'published'")[0][0]
    # every table holds its feeds' batches, so each relation counts up to the ledger's top
    assert {carried[r].watermark for r in {*views, *tables}} == {published}
    views |= tables
    project = load_manifest(cfg.dbt.target_path)
    with warehouse(cfg.warehouse) as wh:  # no carry: every view counted in full
        full = measure(wh, project, cfg.profile)
    for view in views:
        want = {p.metric: p.value for p in full if p.model == view}
        got = {metric: value for model, metric, value in stored
               if model == view and metric not in ("runtime_seconds", "cost")}
        assert want["row_count"] > 0 and got == pytest.approx(want), view


def test_replay_is_a_noop(built: tuple[Config, Path, list[str]], tmp_path: Path) -> None:
    cfg, feeds, _ = built
    before = _rows(cfg.warehouse.path, "select md5(string_agg(c::varchar, '' order by claim_id)) "
                   "from main.fct_claims c")
    # The same day's files delivered again, under other names, and a cycle run twice.
    last = days(START, N_DAYS)[-1]
    for f in (feeds / "claims" / last.isoformat()).iterdir():
        resent = cfg.ingest.landing_dir / "claims" / "resent" / f"again_{f.name}"
        resent.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, resent)
    for _ in range(2):
        result = run_cycle(cfg, trigger="test")
        assert result.status == "success", result.reason
        assert result.ingest.count("loaded") == 0
    after = _rows(cfg.warehouse.path, "select md5(string_agg(c::varchar, '' order by claim_id)) "
                  "from main.fct_claims c")
    assert before == after


def test_each_grain_property_is_computed_once_per_cycle(
        built: tuple[Config, Path, list[str]]) -> None:
    """From the second cycle (the first has no manifest before its build), a fact's key
    uniqueness is the grain suite's alone (dbt's test left out of the build); its
    not-NULL is dbt's alone (the suite's check left out); the profile read the suite's
    verdict instead of counting duplicates, and its distinct keys still equal a count of
    the table."""
    cfg, _, _ = built
    st = state.open_state(state_url(cfg))
    try:
        with st.connect() as conn:
            run_ids = list(conn.execute(sa.select(state.runs.c.run_id)
                                        .order_by(state.runs.c.started_at)).scalars())
            tests = {run: {uid.split(".")[2] for uid in conn.execute(
                sa.select(state.run_models.c.unique_id).where(
                    state.run_models.c.run_id == run,
                    state.run_models.c.resource_type == "test")).scalars()}
                for run in run_ids}
            checks = {run: {(r.suite, r.check_name) for r in conn.execute(
                sa.select(state.validation_results).where(
                    state.validation_results.c.run_id == run))} for run in run_ids}
            last = conn.execute(sa.select(metric_points.c.model, metric_points.c.value).where(
                metric_points.c.run_id == run_ids[-1],
                metric_points.c.metric == "distinct_keys")).all()
    finally:
        st.dispose()
    assert len(run_ids) >= N_DAYS  # the fixture's days, then the other tests' runs
    first, *later = run_ids[:N_DAYS]
    assert {"unique_fct_claims_claim_id", "not_null_fct_claims_claim_id"} <= tests[first]
    for run in run_ids[:N_DAYS]:  # decided after the build, from its own manifest
        assert ("grain_fct_claims", "key_not_null_claim_id") not in checks[run]
    for run in later:
        assert "unique_fct_claims_claim_id" not in tests[run]
        # behaviour_fct_claims' plan_exists declares the relationship: the suite's
        assert "relationships_fct_claims_plan_id__plan_id__ref_fct_plans_" not in tests[run]
        assert ("behaviour_fct_claims", "plan_exists") in checks[run]
        assert "not_null_fct_claims_claim_id" in tests[run]
        assert "not_null_fct_claims_claim_sk" in tests[run]  # not the grain: still dbt's
        assert "unique_fct_claims_claim_sk" not in tests[run]  # an md5 of the grain
        assert ("grain_fct_claims", "key_unique") in checks[run]
        assert ("grain_fct_claims", "key_not_null_claim_id") not in checks[run]
        # the view's rows above the watermark: dbt's unique test (it stops the facts)
        view_unique = "unique_combination_of_columns_int_claims__enriched__batch_id___line_number"
        assert view_unique in tests[run]
        assert ("grain_int_claims__enriched", "key_unique") not in checks[run]
        assert ("grain_int_claims__enriched", "key_not_null__batch_id") in checks[run]
    distinct = dict(last)
    for fact, key in FACTS.items():
        want = _rows(cfg.warehouse.path, f"select count(distinct {key}) from main.{fact}")[0][0]
        assert distinct[fact] == want > 0, fact
