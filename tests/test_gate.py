"""Write-audit-publish through real cycles: contract breaks are held (or quarantined)
and the facts do not change; release merges a held batch exactly once; reject retires it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from dqm_demo.demo import land_day
from dqm_demo.generate import Injection, generate
from monitor.core.config import Config, load_config, state_url
from monitor.cycle import run as cycle_run
from monitor.cycle.run import run_cycle
from monitor.ops.operations import decide_batch, resume
from monitor.stages.build import DbtProject, DbtResult
from monitor.store import batches, state
from monitor.warehouse.connection import warehouse

from .conftest import write_config

pytestmark = pytest.mark.slow
START = date(2026, 3, 2)
DAY3 = START + timedelta(days=2)
CLAIMS = 300


def _facts(cfg: Config) -> tuple[object, ...]:
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        return tuple(
            con.execute(f"select count(*), md5(string_agg(t::varchar, '' order by t::varchar)) "
                        f"from main.{t} t").fetchone()
            for t in ("fct_claims", "fct_plans", "fct_employees")
        )
    finally:
        con.close()


def _status(cfg: Config, batch_id: str) -> str:
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        return batches.get_batch(conn, cfg.ingest.schema, batch_id).status


def _claims_file(root: Path, kind: str | None) -> Path:
    out = root / f"gen_{kind or 'clean'}"
    inject = [Injection(kind, DAY3)] if kind else []
    generate(out, DAY3, 1, CLAIMS, seed=4, inject=inject)
    return next((out / "claims" / DAY3.isoformat()).glob("claims_*.csv"))


def _five_fold(root: Path) -> Path:
    """A day with 5x the usual claims (five days' distinct claims in one file)."""
    out = root / "gen_5x"
    generate(out, DAY3, 5, CLAIMS, seed=4)
    files = sorted((out / "claims").rglob("claims_*.csv"))
    lines = files[0].read_text().splitlines(keepends=True)
    for f in files[1:]:
        lines += f.read_text().splitlines(keepends=True)[1:]
    target = root / "claims_5x.csv"
    target.write_text("".join(lines))
    return target


@pytest.fixture(scope="module")
def _built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clean days through real cycles, built once per module (never changed)."""
    tmp = tmp_path_factory.mktemp("gate")
    cfg = load_config(write_config(tmp))
    feeds = tmp / "feeds"
    generate(feeds, START, 2, CLAIMS, seed=4)
    for day in (START, START + timedelta(days=1)):
        land_day(feeds, cfg.ingest.landing_dir, day)
        assert run_cycle(cfg, trigger="test", as_of=day).status == "success"
    return tmp


@pytest.fixture
def base(_built: Path, tmp_path: Path) -> tuple[Config, Path]:
    """A private copy of the built base: each test starts from the same state, in any
    order (data paths in the config are relative to its folder)."""
    root = tmp_path / "gate"
    shutil.copytree(_built, root, ignore=shutil.ignore_patterns("*.lock"))
    return load_config(root / "config.toml"), root


def _failed_checks(cfg: Config, run_id: str, batch_id: str) -> list[str]:
    """The failed checks the run recorded for the batch (a list: repeats show)."""
    vr = state.validation_results.c
    st = state.open_state(state_url(cfg))
    try:
        with st.connect() as conn:
            rows = conn.execute(
                sa.select(vr.check_name)
                .where(vr.run_id == run_id, vr.batch_id == batch_id, vr.success.is_(False))
                .order_by(vr.check_name))
            return [r.check_name for r in rows]
    finally:
        st.dispose()


def _deliver(cfg: Config, src: Path, name: str) -> None:
    dst = cfg.ingest.landing_dir / "claims" / DAY3.isoformat() / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        ("dropped_column", "quarantined", "file_readable"),
        ("schema_drift", "quarantined", "file_readable"),
        ("retyped_column", "held", "amount_numeric"),
        ("null_storm", "held", "not_null_employee_id"),
        # The feed-day volume check: five times the day, held on two days of history
        # (the cold-start band).
        ("five_fold", "held", "day_volume_surge"),
    ],
)
def test_contract_break_is_gated_and_facts_unchanged(
    base: tuple[Config, Path], kind: str, status: str, check: str
) -> None:
    cfg, tmp = base
    before = _facts(cfg)
    src = _five_fold(tmp) if kind == "five_fold" else _claims_file(tmp, kind)
    _deliver(cfg, src, f"claims_{kind}.csv")
    result = run_cycle(cfg, trigger="test", as_of=DAY3)
    assert result.status == "held", result.reason
    (f,) = [f for f in result.ingest.files if f.path.name == f"claims_{kind}.csv"]
    assert f.batch_id is not None and _status(cfg, f.batch_id) == status
    failed = _failed_checks(cfg, result.run_id, f.batch_id)
    assert check in failed, failed  # the reason this case is about, recorded for its batch
    feed_suites = ("contract_claims", "volume_claims")  # the file contract and the feed-day
    assert sum(result.validation_failures.get(s, 0) for s in feed_suites) == len(failed) >= 1
    assert _facts(cfg) == before
    if status == "quarantined":
        assert failed == ["file_readable"]
        assert f.outcome == "quarantined" and f.reason, f
    if status == "held":
        with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
            reason = batches.get_batch(conn, cfg.ingest.schema, f.batch_id).decision_reason
        assert reason and check in reason, reason
        # Reject retires it; the rows stay in raw and it can no longer be released.
        decide_batch(cfg, f.batch_id, "reject", "test: bad delivery", "tester")
        assert _status(cfg, f.batch_id) == "rejected"
        with pytest.raises(ValueError, match="not held"):
            decide_batch(cfg, f.batch_id, "release", "too late", "tester")


def test_release_merges_a_held_batch_exactly_once(base: tuple[Config, Path]) -> None:
    cfg, tmp = base
    src = _claims_file(tmp, "null_storm")
    # Other bytes than the null_storm case above (a repeat would be a ledger no-op).
    lines = src.read_text().splitlines(keepends=True)
    src = tmp / "claims_to_release.csv"
    src.write_text("".join(lines[:-1]))
    _deliver(cfg, src, "claims_to_release.csv")
    result = run_cycle(cfg, trigger="test", as_of=DAY3)
    (f,) = [f for f in result.ingest.files if f.path.name == "claims_to_release.csv"]
    assert f.batch_id is not None and _status(cfg, f.batch_id) == "held"
    before = _facts(cfg)
    message = decide_batch(cfg, f.batch_id, "release", "vendor confirmed", "tester")
    assert "released" in message and _status(cfg, f.batch_id) == "published"
    assert _facts(cfg) == before  # release publishes; the next cycle merges
    resume(cfg, "test: the held batch was released", "tester")  # the hold tripped the breaker
    for _ in range(2):
        run_cycle(cfg, trigger="test", as_of=DAY3)
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        merged, distinct = con.execute(
            "select count(*), count(distinct claim_id) from main.fct_claims "
            "where _batch_id = ?", [f.batch_id]).fetchone() or (0, 0)
        raw_keys = con.execute(
            "select count(distinct claim_id) from raw.claims where _batch_id = ?",
            [f.batch_id]).fetchone()
        dupes = con.execute(
            "select count(*) - count(distinct claim_id) from main.fct_claims").fetchone()
    finally:
        con.close()
    assert merged == distinct and raw_keys is not None and merged == raw_keys[0] > 0
    assert dupes == (0,)


# -- the touched-rows watermark: what the last successful build merged -------------------

def _check(cfg: Config, run_id: str, suite: str, check: str) -> tuple[bool, int | None]:
    """(success, unexpected_count) of one check the run recorded."""
    vr = state.validation_results.c
    st = state.open_state(state_url(cfg))
    try:
        with st.connect() as conn:
            row = conn.execute(
                sa.select(vr.success, vr.unexpected_count)
                .where(vr.run_id == run_id, vr.suite == suite, vr.check_name == check)
            ).one()
            return bool(row.success), row.unexpected_count
    finally:
        st.dispose()


def _claims_without_employee(cfg: Config) -> dict[str, int]:
    """fct_claims rows whose employee is not in fct_employees, by batch: what the
    behaviour suite's employee_exists check finds on them."""
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        return {str(b): int(n) for b, n in con.execute(
            "select c._batch_id, count(*) from main.fct_claims c left join main.fct_employees e"
            " on e.employee_id = c.employee_id where e.employee_id is null group by 1"
        ).fetchall()}
    finally:
        con.close()


def _hold_a_storm(cfg: Config, tmp: Path) -> str:
    """A null-storm claims file through a cycle: held; returns its batch id."""
    src = _claims_file(tmp, "null_storm")
    lines = src.read_text().splitlines(keepends=True)
    held = tmp / "claims_storm.csv"
    held.write_text("".join(lines[:-2]))  # bytes of its own
    _deliver(cfg, held, "claims_storm.csv")
    result = run_cycle(cfg, trigger="test", as_of=DAY3)
    (f,) = [f for f in result.ingest.files if f.path.name == "claims_storm.csv"]
    assert f.batch_id is not None and _status(cfg, f.batch_id) == "held", result.reason
    return f.batch_id


@pytest.mark.parametrize("new_files", [False, True], ids=["nothing_new", "with_a_delivery"])
def test_the_cycle_after_a_release_checks_the_released_rows(
    base: tuple[Config, Path], new_files: bool
) -> None:
    """A release publishes a held batch between cycles; its publish_seq is then below the
    next gate's ledger maximum, yet that cycle's build merges it: the post-build checks
    must take it as touched (the watermark is what the last build merged)."""
    cfg, tmp = base
    batch = _hold_a_storm(cfg, tmp)
    decide_batch(cfg, batch, "release", "vendor confirmed", "tester")
    resume(cfg, "test: released", "tester")
    if new_files:  # an employees delivery of its own, published by the next gate
        out = tmp / "gen_more"
        generate(out, DAY3, 1, CLAIMS, seed=9)
        src = next((out / "employees" / DAY3.isoformat()).glob("employees_*.csv"))
        dst = cfg.ingest.landing_dir / "employees" / DAY3.isoformat() / "employees_more.csv"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    result = run_cycle(cfg, trigger="test", as_of=DAY3)
    assert result.dbt is not None and result.dbt.success, result.reason
    assert result.published == ([b.batch_id for b in result.ingest.files] if new_files else [])
    missing = _claims_without_employee(cfg)
    assert set(missing) == {batch} and missing[batch] > 0, missing  # merged, and only these
    assert _check(cfg, result.run_id, "behaviour_fct_claims", "employee_exists") == (
        False, missing[batch])
    assert result.status == "failed" and "employee_exists" in result.reason
    # Checked once: the cycle after that starts above what this build merged.
    resume(cfg, "test: seen", "tester")
    again = run_cycle(cfg, trigger="test", as_of=DAY3)
    assert _check(cfg, again.run_id, "behaviour_fct_claims", "employee_exists") == (True, 0)


def _fail_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """dbt merges the facts, then reports a failure (a test on a model downstream)."""
    real = DbtProject.invoke

    def invoke(self: DbtProject, *args: object, **kwargs: object) -> DbtResult:
        got = real(self, *args, **kwargs)  # type: ignore[arg-type]
        return dataclasses.replace(got, success=False, error="test: a late test failed")

    monkeypatch.setattr(DbtProject, "invoke", invoke)


def _crash_in_the_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build merged; the process dies before the post-build checks are recorded."""
    def model_checks(*_args: object) -> None:
        raise RuntimeError("test: killed after the build")

    monkeypatch.setattr(cycle_run.checks, "model_checks", model_checks)


@pytest.mark.parametrize("break_it", [_fail_the_build, _crash_in_the_checks],
                         ids=["failed_build", "crash_after_the_build"])
def test_rows_a_build_merged_unchecked_are_checked_by_the_next_cycle(
    base: tuple[Config, Path], monkeypatch: pytest.MonkeyPatch,
    break_it: Callable[[pytest.MonkeyPatch], None],
) -> None:
    """The watermark advances only once the build succeeded and its rows were checked:
    after a failed build, or a crash between the build and the checks, the next cycle
    (which merges nothing new) checks what that build merged."""
    cfg, tmp = base
    batch = _hold_a_storm(cfg, tmp)
    decide_batch(cfg, batch, "release", "vendor confirmed", "tester")
    resume(cfg, "test: released", "tester")
    break_it(monkeypatch)
    try:
        broken = run_cycle(cfg, trigger="test", as_of=DAY3)
        assert broken.status == "failed", broken.reason
    except RuntimeError as exc:
        assert "killed after the build" in str(exc)
    monkeypatch.undo()
    missing = _claims_without_employee(cfg)
    assert set(missing) == {batch} and missing[batch] > 0, missing  # merged, unchecked
    with contextlib.suppress(ValueError):  # the failed run tripped the breaker
        resume(cfg, "test: the build is fixed", "tester")
    result = run_cycle(cfg, trigger="test", as_of=DAY3)
    assert result.dbt is not None and result.dbt.success, result.reason
    assert _check(cfg, result.run_id, "behaviour_fct_claims", "employee_exists") == (
        False, missing[batch])
