"""Last-known-good snapshots of the facts, rollback, and the run after a rollback.

Two clean days keep a snapshot each; day 3 delivers claim amounts in cents (a logic
regression the contract lets through), so the facts are corrupted and the run is
triaged instead of snapshotted. The operator retracts the bad batch, rolls the facts
back to day 2 and day 4 runs normally: the facts' watermark went back, so day 3's other
batches are re-merged, and the result equals a full refresh of the same raw data.

Then the FULL/DELTA chains: a week of clean days (claims updated, employees changing
department, which restates their claims) keeps a FULL snapshot and DELTAs of the day's
changes; a rollback to each kept run rebuilds exactly the tables that run left; a
--full-refresh, a deleted base and every `full_snapshot_every`-th snapshot are FULL;
pruning keeps what a kept snapshot builds on; a table changed behind the monitor's back
makes the rollback refuse rather than restore something else.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from dqm_demo.demo import days, land_day
from dqm_demo.generate import Injection, generate
from monitor.cli import main
from monitor.core.config import Config, load_config, state_url
from monitor.core.manifest import load_manifest
from monitor.cycle.result import CycleResult
from monitor.cycle.run import run_cycle
from monitor.recovery.rollback import rollback
from monitor.recovery.snapshots import (
    DELTA,
    FULL,
    SnapshotError,
    SnapshotInfo,
    built_tables,
    keep_snapshot,
    list_snapshots,
)
from monitor.store import state
from monitor.triage.isolation import isolated_refresh
from monitor.warehouse.duckdb_snapshots import snapshot_path
from monitor.warehouse.lock import cycle_lock

from .conftest import write_config

pytestmark = pytest.mark.slow

START = date(2026, 3, 2)  # a Monday
FACTS = ("fct_claims", "fct_employees", "fct_plans")
# incremental tables the facts are enriched from: rolled back with them
VERSIONS = {"int_companies__versions", "int_employees__versions", "int_plans__versions"}
# tables rebuilt whole by every run (dbt_project.yml), so copied whole into each snapshot
LOOKUPS = {"int_employees__claim_attributes", "int_plans__claim_attributes"}


@dataclass
class History:
    cfg: Config
    feeds: Path
    runs: list[CycleResult]
    refs: Path  # refs/<run_id>.duckdb: the built tables as each run left them


def _tables(cfg: Config) -> list[tuple[str, str, str]]:
    return built_tables(load_manifest(cfg.dbt.target_path))


def _save_reference(cfg: Config, refs: Path, run_id: str) -> None:
    """A plain copy of every built table, to compare a rollback with."""
    refs.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(refs / f"{run_id}.duckdb"))
    try:
        con.execute(f"attach '{cfg.warehouse.path}' as wh (read_only)")
        for schema, ident, _ in _tables(cfg):
            con.execute(f"create schema if not exists {schema}")
            con.execute(f"create table {schema}.{ident} as from wh.{schema}.{ident}")
    finally:
        con.close()


def _differences(cfg: Config, refs: Path, run_id: str) -> dict[str, tuple[int, int, int]]:
    """Per table that differs from the run's reference: (live rows, rows only live,
    rows only in the reference), comparing whole rows (EXCEPT ALL both ways)."""
    out = {}
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        con.execute(f"attach '{refs / f'{run_id}.duckdb'}' as ref (read_only)")
        for schema, ident, model in _tables(cfg):
            live, ref = f"{schema}.{ident}", f"ref.{schema}.{ident}"
            counts = (_fact_rows(con, live),
                      _fact_rows(con, f"(from {live} except all from {ref})"),
                      _fact_rows(con, f"(from {ref} except all from {live})"))
            if counts[1] or counts[2]:
                out[model] = counts
    finally:
        con.close()
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    root = tmp_path_factory.mktemp("snapshots")
    cfg = load_config(write_config(root, seasonal="false", min_history="2", keep_snapshots="2"))
    feeds = root / "feeds"
    bad_day = days(START, 4)[2]
    generate(feeds, START, 4, 300, seed=5, inject=[Injection("logic_regression", bad_day)])
    runs, refs = [], root / "refs"
    for day in days(START, 3):
        land_day(feeds, cfg.ingest.landing_dir, day)
        runs.append(run_cycle(cfg, trigger="test", as_of=day))
        _save_reference(cfg, refs, runs[-1].run_id)
    return History(cfg, feeds, runs, refs)


def _state(cfg: Config) -> sa.Engine:
    return state.open_state(state_url(cfg))


def test_snapshot_after_clean_runs_only(history: History) -> None:
    cfg, (r1, r2, r3) = history.cfg, history.runs[:3]
    assert [r.status for r in (r1, r2)] == ["success", "success"]
    kept = {s.run_id: s for s in list_snapshots(cfg)}
    assert r1.run_id in kept and r2.run_id in kept
    assert r3.run_id not in kept  # the corrupted run is triaged, not kept
    # day 1 is the chain's FULL base; day 2 holds the day's changes on top of it
    assert (kept[r1.run_id].kind, kept[r2.run_id].kind) == (FULL, DELTA)
    assert kept[r2.run_id].parent == r1.run_id
    assert (cfg.evidence.dir / r3.run_id / "report.json").exists()
    snap = kept[r2.run_id]
    models = [t.model for t in snap.tables]  # lineage order: versions, lookups, then facts
    assert [m for m in models if m.startswith("fct_")] == sorted(FACTS, key=FACTS.index)
    assert {m for m in models if not m.startswith("fct_")} == VERSIONS | LOOKUPS
    # The cost is measured and recorded: a fraction of the warehouse file.
    assert 0 < snap.bytes < snap.warehouse_bytes and snap.seconds > 0
    st = _state(cfg)
    try:
        with st.connect() as conn:
            summary: dict[str, Any] = conn.execute(sa.select(state.runs.c.summary).where(
                state.runs.c.run_id == r2.run_id)).scalar_one()
            fct_rows: float = conn.execute(sa.text(
                "select value from metric_points where run_id = :r and model = 'fct_claims' "
                "and metric = 'row_count'"), {"r": r2.run_id}).scalar_one()
    finally:
        st.dispose()
    assert summary["snapshot"]["bytes"] == snap.bytes
    assert {t.model: t.rows for t in snap.tables}["fct_claims"] == int(fct_rows)


def _fact_rows(con: duckdb.DuckDBPyConnection, rel: str) -> int:
    row = con.execute(f"select count(*) from {rel}").fetchone()
    assert row is not None
    return int(row[0])


@dataclass
class AfterRollback:
    """On-call's recovery from day 3, as the report told it, and day 4 after it."""

    bad: list[str]  # the batches the report says to reject
    codes: list[int]  # exit codes of reject, rollback, resume
    differences: dict[str, tuple[int, int, int]]  # tables vs day 2's, right after it
    kinds: list[str]  # the events recorded, oldest first
    day4: CycleResult


@pytest.fixture(scope="module")
def after_rollback(history: History) -> AfterRollback:
    """Reject day 3's claims, roll back to day 2, resume, run day 4: a module fixture,
    so every test that needs this state gets it whatever order the tests run in."""
    cfg, r2, r3 = history.cfg, history.runs[1], history.runs[2]
    report = json.loads((cfg.evidence.dir / r3.run_id / "report.json").read_text())
    bad = [c.split()[c.split().index("reject") + 1] for c in report["commands"]["reject"]]
    conf = ["--config", str(cfg.source)]
    codes = [main([*conf, "reject", b, "--retract", "--reason", "amounts in cents"])
             for b in bad]
    codes.append(main([*conf, "rollback", "--to", r2.run_id, "--reason", "cents in claims"]))
    differences = _differences(cfg, history.refs, r2.run_id)
    st = _state(cfg)
    try:
        with st.connect() as conn:
            ev = state.events
            kinds = [r[0] for r in conn.execute(sa.select(ev.c.kind).order_by(ev.c.id)).all()]
    finally:
        st.dispose()
    # The bad day tripped the circuit breaker (the cycle pauses on a critical run): the
    # operator lifts it once the facts are restored.
    codes.append(main([*conf, "resume", "--reason", "rolled back day 3"]))
    land_day(history.feeds, cfg.ingest.landing_dir, days(START, 4)[3])
    day4 = run_cycle(cfg, trigger="test", as_of=days(START, 4)[3])
    return AfterRollback(bad, codes, differences, kinds, day4)


def test_rollback_restores_facts_and_next_run_proceeds(
    history: History, after_rollback: AfterRollback, tmp_path: Path
) -> None:
    cfg, (_, r2, r3) = history.cfg, history.runs[:3]
    report = json.loads((cfg.evidence.dir / r3.run_id / "report.json").read_text())
    assert report["root_cause"] == "logic_regression"
    assert any(f"rollback --to {r2.run_id}" in c for c in report["commands"]["rollback"])
    bad = after_rollback.bad
    assert len(bad) == 1 and bad[0].endswith("-claims")
    assert after_rollback.codes == [0, 0, 0]
    # The tables equal what day 2 left, row for row (rebuilt from day 1's FULL + day 2's
    # DELTA), though the corrupted day 3 ran since.
    assert after_rollback.differences == {}
    assert after_rollback.kinds[-2:] == ["reject", "rollback"]
    # The next day runs normally and merges everything published since the snapshot.
    r4 = after_rollback.day4
    assert r4.status == "success", r4.reason
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        for fact in FACTS:
            assert _fact_rows(con, f"main.{fact}") > 0
        assert _fact_rows(con, f"main.fct_claims where _batch_id = '{bad[0]}'") == 0
        # staging claims is a table: the build's post-hook deleted the retracted batch
        assert _fact_rows(con, f"main.stg_benefits__claims where _batch_id = '{bad[0]}'") == 0
        assert _fact_rows(con, "main.fct_claims where amount >= 100000") == 0
        seq = con.execute("select max(publish_seq) from raw.ingest_batches where feed = "
                          "'employees'").fetchone()
        assert seq is not None
        # the day's employees snapshot was merged (its unchanged rows keep their first
        # publication, so look at the last delivery)
        assert _fact_rows(
            con, f"main.int_employees__versions where _last_delivered_seq = {seq[0]}") > 0
    finally:
        con.close()
    facts = [n for n in load_manifest(cfg.dbt.target_path).lineage() if n.is_incremental]
    iso = isolated_refresh(cfg, tmp_path / "iso", facts)
    assert iso.ran and [d.verdict for d in iso.diffs] == ["equal"] * len(facts), iso.diffs


def test_after_a_rollback_the_re_merged_rows_are_checked_again(
    history: History, after_rollback: AfterRollback
) -> None:
    """Day 3 was built and checked; the rollback to day 2 takes its rows out of the
    tables, and day 4's build merges day 3's other batches again: the touched-rows
    watermark went back to what day 2's build merged, so day 4 checks them too (before,
    day 4 checked only above the ledger's maximum at its gate: day 3's last batch)."""
    cfg, r4 = history.cfg, after_rollback.day4
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        seqs = {str(day): int(seq) for day, seq in con.execute(
            "select regexp_extract(source_file, '\\d{4}-\\d{2}-\\d{2}'), max(publish_seq) "
            "from raw.ingest_batches where publish_seq is not null group by 1").fetchall()}
    finally:
        con.close()
    d2, d3, d4 = (seqs[d.isoformat()] for d in days(START, 4)[1:])
    assert r4.hwm_before == d2 < d3  # day 2's build merged through d2; day 3's through d3
    assert r4.extra["watermark"] == {"touched_after": d2, "merged_through": d4}
    # what day 4's checks took as touched: the reconcile check records its watermark
    st = _state(cfg)
    try:
        with st.connect() as conn:
            vr = state.validation_results.c
            kwargs = conn.execute(sa.select(vr.kwargs_json).where(
                vr.run_id == r4.run_id, vr.suite.like("reconcile_%"))).scalars().all()
    finally:
        st.dispose()
    assert kwargs and {json.loads(k)["hwm"] for k in kwargs} == {d2}, kwargs


def test_keep_snapshots_prunes_what_no_kept_snapshot_needs(
    history: History, after_rollback: AfterRollback
) -> None:
    cfg = history.cfg
    r1, r2 = (r.run_id for r in history.runs[:2])
    before = [s.run_id for s in list_snapshots(cfg) if s.run_id != "manual-check"]
    # day 4 (after the rollback to day 2) built on day 2, which builds on day 1
    assert before == [after_rollback.day4.run_id, r2, r1]
    info = keep_snapshot(cfg, "manual-check")  # nothing built since day 4
    assert info is not None and info.rows > 0
    assert (info.kind, info.parent) == (DELTA, before[0])
    assert info.stored_rows < info.rows // 4
    after = [s.run_id for s in list_snapshots(cfg)]
    assert after == ["manual-check", *before]  # keep_snapshots = 2, and their chain


def test_rollback_refuses_bad_requests(history: History) -> None:
    cfg = history.cfg
    with pytest.raises(SnapshotError, match="no snapshot"):
        rollback(cfg, "20200101T000000Z-dead", "why", "tester")
    with pytest.raises(SnapshotError, match="not a run id"):
        rollback(cfg, "../../etc/passwd", "why", "tester")
    target = list_snapshots(cfg)[0].run_id
    with pytest.raises(SnapshotError, match="reason"):
        rollback(cfg, target, "  ", "tester")
    with cycle_lock(cfg), pytest.raises(SnapshotError, match="another cycle"):
        rollback(cfg, target, "during a cycle", "tester")


# -- FULL and DELTA chains ------------------------------------------------------------

CHAIN_DAYS = 7


@dataclass
class Chains:
    cfg: Config
    feeds: Path
    refs: Path
    runs: list[CycleResult]
    snaps: dict[str, SnapshotInfo]  # by run id, as each run kept it
    # per delta snapshot, its fct_claims rows published before the delta's watermark
    restated: dict[str, int]


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> Chains:
    """Six clean days, the sixth a --full-refresh; a FULL snapshot every 4th."""
    root = tmp_path_factory.mktemp("chains")
    cfg = load_config(write_config(root, seasonal="false", min_history="30",
                                   keep_snapshots="3", full_snapshot_every="4"))
    feeds, refs = root / "feeds", root / "refs"
    generate(feeds, START, CHAIN_DAYS, 400, seed=11)
    runs, snaps = [], {}
    for i, day in enumerate(days(START, CHAIN_DAYS - 1)):
        land_day(feeds, cfg.ingest.landing_dir, day)
        if i in (2, 3):  # an employee, then a plan, of day 1's claims changes
            _restate(feeds, cfg.ingest.landing_dir, day, "employees" if i == 2 else "plans")
        run = run_cycle(cfg, trigger="test", as_of=day, full_refresh=(i == 5))
        assert run.status == "success", (day, run.reason)
        _save_reference(cfg, refs, run.run_id)
        runs.append(run)
        snaps[run.run_id] = next(s for s in list_snapshots(cfg) if s.run_id == run.run_id)
    restated = {s.run_id: _restated_rows(cfg, s) for s in snaps.values() if s.kind == DELTA}
    return Chains(cfg, feeds, refs, runs, snaps, restated)


def _restated_rows(cfg: Config, snap: SnapshotInfo) -> int:
    con = duckdb.connect(str(snapshot_path(cfg, snap.run_id)), read_only=True)
    try:
        since = next(t.since for t in snap.tables if t.model == "fct_claims")
        return _fact_rows(con, f"main.fct_claims where _publish_seq <= {since}")
    finally:
        con.close()


def _restate(feeds: Path, landing: Path, day: date, feed: str) -> None:
    """Change the employee (or plan) of one of day 1's claims in the landed file of
    ``day``, in an attribute the claim carries (employer EIN, carrier): the fact restates
    that record's claims, rows published days ago."""
    with next((feeds / "claims" / START.isoformat()).glob("*.csv")).open() as fh:
        claim = next(csv.DictReader(fh))
    key = "employee_id" if feed == "employees" else "plan_id"
    path = next((landing / feed / day.isoformat()).glob("*.csv"))
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = list(reader.fieldnames or []), list(reader)
    row = next(r for r in rows if r[key] == claim[key])
    if feed == "employees":  # another employer (a claim carries its claimant's EIN)
        eins = {r["company_ein"] for r in rows if r["company_ein"][:1].isdigit()}
        row["company_ein"] = sorted(eins - {row["company_ein"]})[0]
    else:  # another carrier of the same plan type
        carriers = {r["carrier"] for r in rows if r["plan_type"] == row["plan_type"]}
        row["carrier"] = sorted(carriers - {row["carrier"]})[0]
    row["updated_at"] = f"{day.isoformat()}T12:00:00Z"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_deltas_hold_the_days_changes(chains: Chains) -> None:
    snaps = [chains.snaps[r.run_id] for r in chains.runs]
    # FULL base, 3 deltas, FULL (every 4th), FULL (--full-refresh)
    assert [s.kind for s in snaps] == [FULL, DELTA, DELTA, DELTA, FULL, FULL]
    assert [s.parent for s in snaps[1:4]] == [r.run_id for r in chains.runs[:3]]
    assert [s.depth for s in snaps] == [0, 1, 2, 3, 0, 0]
    assert "no earlier snapshot" in snaps[0].why_full
    assert "full_snapshot_every" in snaps[4].why_full
    assert snaps[5].why_full == "full refresh"
    for s in snaps:
        claims = next(t for t in s.tables if t.model == "fct_claims")
        if s.kind == FULL:
            assert claims.stored == claims.rows and claims.mode == FULL
            continue
        # the day's claims, their updates and the restated claims, not the whole fact
        assert claims.mode == DELTA and 0 < claims.stored_rows < claims.rows // 2, claims
        assert claims.since is not None and claims.key == ("claim_id",)
    # restated claims are in the deltas of days 3 and 4: claims published on day 1
    # whose claimant (day 3) or plan (day 4) changed
    assert [chains.restated[s.run_id] > 0 for s in snaps[2:4]] == [True, True]
    print("\nsnapshot cost (run, kind, stored/live rows, bytes, seconds):")
    for s in snaps:
        print(f"  {s.run_id} {s.kind:5} {s.stored_rows:6}/{s.rows:6} {s.bytes:8} "
              f"{s.seconds:.3f}")


# The chain's story goes on in stages, each a module fixture on the one before: a test
# asks for the stage it checks and gets the state that stage left, in any test order.


@dataclass
class EachRollback:
    kept: set[str]  # the snapshots before any rollback
    outcomes: list[tuple[str, str, dict[str, tuple[int, int, int]]]]  # run, message, diffs


@pytest.fixture(scope="module")
def each_rollback(chains: Chains) -> EachRollback:
    """A rollback to every kept run, newest first: each starts from tables another run
    left."""
    cfg, runs = chains.cfg, chains.runs
    kept = {s.run_id for s in list_snapshots(cfg)}
    outcomes = []
    for run in [runs[3], runs[1], runs[5], runs[0], runs[2], runs[4]]:
        message = rollback(cfg, run.run_id, "chain test", "tester")
        outcomes.append((run.run_id, message, _differences(cfg, chains.refs, run.run_id)))
    return EachRollback(kept, outcomes)


def test_rollback_to_each_run_rebuilds_its_tables(
    chains: Chains, each_rollback: EachRollback
) -> None:
    assert each_rollback.kept == {r.run_id for r in chains.runs}  # the newest 3 need all
    assert len(each_rollback.outcomes) == 6
    for run_id, message, diffs in each_rollback.outcomes:
        assert diffs == {}, (run_id, message)
        if chains.snaps[run_id].kind == DELTA:
            assert f"+ {chains.snaps[run_id].depth} delta(s)" in message


@dataclass
class Day7:
    run: CycleResult
    snap: SnapshotInfo
    kept: list[str]  # snapshots after day 7 was kept
    diffs: dict[str, tuple[int, int, int]]  # vs day 7, after going elsewhere and back


@pytest.fixture(scope="module")
def day7(chains: Chains, each_rollback: EachRollback) -> Day7:
    """Back to day 3, then day 7 re-merges the batches of days 4-6 on its tables."""
    cfg, runs = chains.cfg, chains.runs
    rollback(cfg, runs[2].run_id, "back to day 3", "tester")
    day = days(START, CHAIN_DAYS)[-1]
    land_day(chains.feeds, cfg.ingest.landing_dir, day)
    r7 = run_cycle(cfg, trigger="test", as_of=day)
    assert r7.status == "success", r7.reason
    _save_reference(cfg, chains.refs, r7.run_id)
    snap = next(s for s in list_snapshots(cfg) if s.run_id == r7.run_id)
    kept = [s.run_id for s in list_snapshots(cfg)]
    rollback(cfg, runs[4].run_id, "elsewhere first", "tester")
    rollback(cfg, r7.run_id, "and back", "tester")
    return Day7(r7, snap, kept, _differences(cfg, chains.refs, r7.run_id))


def test_a_run_after_a_rollback_builds_a_delta_on_its_target(
    chains: Chains, day7: Day7
) -> None:
    runs = chains.runs
    assert (day7.snap.kind, day7.snap.parent, day7.snap.depth) == (DELTA, runs[2].run_id, 3)
    # the newest three (days 7, 6, 5) and day 7's chain are kept; day 4 is pruned
    assert day7.kept == [
        r.run_id for r in (day7.run, runs[5], runs[4], runs[2], runs[1], runs[0])]
    assert day7.diffs == {}


@dataclass
class Pruned:
    info: SnapshotInfo | None
    left: list[str]
    day5_files: tuple[bool, bool]  # day 5's snapshot and its manifest still exist


@pytest.fixture(scope="module")
def pruned(chains: Chains, day7: Day7) -> Pruned:
    """A manual snapshot with nothing built since day 7 (3 deltas deep)."""
    cfg, day5 = chains.cfg, chains.runs[4].run_id
    info = keep_snapshot(cfg, "manual-a")
    left = [s.run_id for s in list_snapshots(cfg)]
    path = snapshot_path(cfg, day5)
    return Pruned(info, left, (path.exists(), path.with_suffix(".json").exists()))


def test_pruning_keeps_chains_a_kept_snapshot_needs(
    chains: Chains, day7: Day7, pruned: Pruned
) -> None:
    runs, info = chains.runs, pruned.info
    assert info is not None and info.kind == FULL and "full_snapshot_every" in info.why_full
    # newest 3: manual-a, day 7, day 6; day 7 builds on day 3 -> day 2 -> day 1.
    # Day 5 (FULL, older than the newest three) is needed by none: pruned.
    assert pruned.left == ["manual-a", day7.run.run_id, runs[5].run_id, runs[2].run_id,
                           runs[1].run_id, runs[0].run_id]
    assert pruned.day5_files == (False, False)


@dataclass
class MissingBase:
    manual_b: SnapshotInfo | None
    errors: list[str]  # the two refused rollbacks
    diffs: dict[str, tuple[int, int, int]]  # vs day 7, after the refusals
    manual_c: SnapshotInfo | None


def _refusal(cfg: Config, run_id: str) -> str:
    with pytest.raises(SnapshotError) as err:
        rollback(cfg, run_id, "the base is gone", "tester")
    return str(err.value)


@pytest.fixture(scope="module")
def missing_base(chains: Chains, day7: Day7, pruned: Pruned) -> MissingBase:
    """Day 1's snapshot (the base of days 2, 3 and 7) and manual-a (the base of
    manual-b) deleted by hand."""
    cfg, runs = chains.cfg, chains.runs
    manual_b = keep_snapshot(cfg, "manual-b")
    snapshot_path(cfg, runs[0].run_id).unlink()
    snapshot_path(cfg, "manual-a").unlink()
    errors = [_refusal(cfg, day7.run.run_id), _refusal(cfg, "manual-b")]
    diffs = _differences(cfg, chains.refs, day7.run.run_id)
    return MissingBase(manual_b, errors, diffs, keep_snapshot(cfg, "manual-c"))


def test_a_missing_base_fails_the_rollback_and_the_next_snapshot_is_full(
    chains: Chains, missing_base: MissingBase
) -> None:
    m = missing_base
    assert m.manual_b is not None and (m.manual_b.kind, m.manual_b.parent) == (DELTA, "manual-a")
    assert f"needs the snapshot of run {chains.runs[0].run_id}" in m.errors[0]
    assert "needs the snapshot of run manual-a" in m.errors[1]
    assert m.diffs == {}  # nothing restored
    # manual-b (the tables' state) cannot be a base: the next snapshot is FULL
    assert m.manual_c is not None and m.manual_c.kind == FULL and "missing" in m.manual_c.why_full


@dataclass
class ChangedBehind:
    manual_d: SnapshotInfo | None
    restored: dict[str, tuple[int, int, int]]  # vs day 7, after rolling back to manual-c
    error: str  # the refused rollback to manual-d
    after: dict[str, tuple[int, int, int]]  # vs day 7, after the refusal


@pytest.fixture(scope="module")
def changed_behind(chains: Chains, day7: Day7, missing_base: MissingBase) -> ChangedBehind:
    """The tables equal day 7 (manual-c is a FULL copy of them); a hand edit that no
    publish sequence records, then a snapshot with nothing built since: a delta that
    misses the edit."""
    cfg, ref = chains.cfg, day7.run.run_id
    con = duckdb.connect(str(cfg.warehouse.path))
    try:
        con.execute("delete from main.fct_claims where claim_id in "
                    "(select claim_id from main.fct_claims order by claim_id limit 1)")
    finally:
        con.close()
    info = keep_snapshot(cfg, "manual-d")
    rollback(cfg, "manual-c", "day 7 again", "tester")
    restored = _differences(cfg, chains.refs, ref)
    with pytest.raises(SnapshotError) as err:
        rollback(cfg, "manual-d", "the delta missed the edit", "tester")
    return ChangedBehind(info, restored, str(err.value), _differences(cfg, chains.refs, ref))


def test_a_table_changed_behind_the_monitor_refuses_the_rollback(
    changed_behind: ChangedBehind,
) -> None:
    c = changed_behind
    assert c.manual_d is not None and (c.manual_d.kind, c.manual_d.parent) == (DELTA, "manual-c")
    assert c.restored == {}
    assert re.search(r"fct_claims: restored \d+ rows, snapshot has", c.error), c.error
    assert c.after == {}  # nothing restored


def test_cli_lists_kinds_and_costs(
    chains: Chains, changed_behind: ChangedBehind, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = ["--config", str(chains.cfg.source)]
    kept = list_snapshots(chains.cfg)
    assert main([*conf, "snapshots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "kind", "on"]
    # one line per kept snapshot, newest first: run, kind, the run it builds on
    assert [line.split()[:3] for line in lines[1:]] == [
        [s.run_id, s.kind, s.parent or "-"] for s in kept]
    assert {s.kind for s in kept} == {FULL, DELTA}
    assert main([*conf, "snapshots", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(d["run_id"], d["kind"], d["parent"]) for d in doc] == [
        (s.run_id, s.kind, s.parent) for s in kept]


def test_a_sequence_sum_changed_behind_the_monitor_refuses_the_rollback(
    chains: Chains, changed_behind: ChangedBehind,
) -> None:
    """The other half of the rollback's check: a hand edit that keeps every row count
    (one stored claim's ``_publish_seq`` lowered, so no delta copies it) is caught by the
    sums of the sequence columns alone."""
    cfg = chains.cfg
    base = keep_snapshot(cfg, "manual-e")  # the tables as they are now
    assert base is not None
    _save_reference(cfg, chains.refs, "manual-e")
    con = duckdb.connect(str(cfg.warehouse.path))
    try:
        row = con.execute(
            "select claim_id, _publish_seq from main.fct_claims where greatest(_publish_seq, "
            "coalesce(_enriched_publish_seq, 0)) < (select max(_publish_seq) from "
            "main.fct_claims) order by claim_id limit 1").fetchone()
        assert row is not None
        con.execute("update main.fct_claims set _publish_seq = _publish_seq - 1 "
                    "where claim_id = ?", [row[0]])
    finally:
        con.close()
    info = keep_snapshot(cfg, "manual-f")
    assert info is not None and (info.kind, info.parent) == (DELTA, "manual-e")
    before = {t.model: t for t in base.tables}["fct_claims"]
    after = {t.model: t for t in info.tables}["fct_claims"]
    # the same row count, one less in the sum: only the sums tell the states apart
    assert after.rows == before.rows
    assert after.seq_sum == {**before.seq_sum, "_publish_seq": before.seq_sum["_publish_seq"]
                             - 1}
    # the delta holds no copy of the edited row: restoring it rebuilds manual-e's sums
    snap = duckdb.connect(str(snapshot_path(cfg, "manual-f")), read_only=True)
    try:
        assert _fact_rows(snap, f"main.fct_claims where claim_id = '{row[0]}'") == 0
    finally:
        snap.close()
    assert rollback(cfg, "manual-e", "before the edit", "tester").startswith(
        f"rolled back {len(base.tables)} fact table(s) to run manual-e")
    assert _differences(cfg, chains.refs, "manual-e") == {}
    expected = (f"fct_claims: restored sequence sums {before.seq_sum} differ from the "
                f"snapshot's {after.seq_sum} (changed outside the monitor?); nothing was "
                "rolled back")
    with pytest.raises(SnapshotError) as refused:
        rollback(cfg, "manual-f", "the delta missed the edit", "tester")
    assert str(refused.value) == expected
    assert _differences(cfg, chains.refs, "manual-e") == {}  # nothing restored
