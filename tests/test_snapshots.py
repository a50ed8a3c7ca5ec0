"""Last-known-good snapshots of the facts, rollback, and the run after a rollback.

Two clean days keep a snapshot each; day 3 delivers claim amounts in cents (a logic
regression the contract lets through), so the facts are corrupted and the run is
triaged instead of snapshotted. The operator retracts the bad batch, rolls the facts
back to day 2 and day 4 runs normally: the facts' watermark went back, so day 3's other
batches are re-merged, and the result equals a full refresh of the same raw data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from monitor import state
from monitor.cli import main
from monitor.config import Config, load_config, state_url
from monitor.cycle import CycleResult, cycle_lock, run_cycle
from monitor.demo import days, land_day
from monitor.generate import Injection, generate
from monitor.manifest import load_manifest
from monitor.snapshots import (
    SnapshotError,
    keep_snapshot,
    list_snapshots,
    rollback,
    snapshot_path,
)
from monitor.triage import isolated_refresh

from .conftest import write_config

pytestmark = pytest.mark.slow

START = date(2026, 3, 2)  # a Monday
FACTS = ("fct_claims", "fct_employees", "fct_plans")
# incremental tables the facts are enriched from: rolled back with them
VERSIONS = {"int_companies__versions", "int_employees__versions", "int_plans__versions"}


@dataclass
class History:
    cfg: Config
    feeds: Path
    runs: list[CycleResult]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    root = tmp_path_factory.mktemp("snapshots")
    cfg = load_config(write_config(root, seasonal="false", min_history="2", keep_snapshots="2"))
    feeds = root / "feeds"
    bad_day = days(START, 4)[2]
    generate(feeds, START, 4, 300, seed=5, inject=[Injection("logic_regression", bad_day)])
    runs = []
    for day in days(START, 3):
        land_day(feeds, cfg.ingest.landing_dir, day)
        runs.append(run_cycle(cfg, trigger="test", as_of=day))
    return History(cfg, feeds, runs)


def _state(cfg: Config) -> sa.Engine:
    return state.open_state(state_url(cfg))


def test_snapshot_after_clean_runs_only(history: History) -> None:
    cfg, (r1, r2, r3) = history.cfg, history.runs[:3]
    assert [r.status for r in (r1, r2)] == ["success", "success"]
    kept = {s.run_id: s for s in list_snapshots(cfg)}
    assert r1.run_id in kept and r2.run_id in kept
    assert r3.run_id not in kept  # the corrupted run is triaged, not kept
    assert (cfg.evidence.dir / r3.run_id / "report.json").exists()
    snap = kept[r2.run_id]
    models = [t.model for t in snap.tables]  # lineage order: versions tables, then facts
    assert [m for m in models if m.startswith("fct_")] == sorted(FACTS, key=FACTS.index)
    assert {m for m in models if not m.startswith("fct_")} == VERSIONS
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


def test_rollback_restores_facts_and_next_run_proceeds(history: History, tmp_path: Path) -> None:
    cfg, (_, r2, r3) = history.cfg, history.runs[:3]
    report = json.loads((cfg.evidence.dir / r3.run_id / "report.json").read_text())
    assert report["root_cause"] == "logic_regression"
    assert any(f"rollback --to {r2.run_id}" in c for c in report["commands"]["rollback"])
    bad = [c.split()[c.split().index("reject") + 1] for c in report["commands"]["reject"]]
    assert len(bad) == 1 and bad[0].startswith("claims-")
    conf = ["--config", str(cfg.source)]

    assert main([*conf, "reject", bad[0], "--retract", "--reason", "amounts in cents"]) == 0
    assert main([*conf, "rollback", "--to", r2.run_id, "--reason", "cents in claims"]) == 0

    # The facts equal the snapshot, row for row.
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        con.execute(f"attach '{snapshot_path(cfg, r2.run_id)}' as snap (read_only)")
        for fact in FACTS:
            assert _fact_rows(con, f"main.{fact}") > 0
            for a, b in ((f"main.{fact}", f"snap.main.{fact}"), (f"snap.main.{fact}",
                                                                  f"main.{fact}")):
                assert _fact_rows(con, f"(from {a} except all from {b})") == 0, (fact, a)
    finally:
        con.close()
    st = _state(cfg)
    try:
        with st.connect() as conn:
            ev = state.events
            kinds = [r[0] for r in conn.execute(sa.select(ev.c.kind).order_by(ev.c.id)).all()]
    finally:
        st.dispose()
    assert kinds[-2:] == ["reject", "rollback"]

    # The next day runs normally and merges everything published since the snapshot.
    land_day(history.feeds, cfg.ingest.landing_dir, days(START, 4)[3])
    r4 = run_cycle(cfg, trigger="test", as_of=days(START, 4)[3])
    assert r4.status == "success", r4.reason
    con = duckdb.connect(str(cfg.warehouse.path), read_only=True)
    try:
        assert _fact_rows(con, f"main.fct_claims where _batch_id = '{bad[0]}'") == 0
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


def test_keep_snapshots_prunes_the_oldest(history: History) -> None:
    cfg = history.cfg
    before = [s.run_id for s in list_snapshots(cfg)]
    assert len(before) == 2  # keep_snapshots = 2
    info = keep_snapshot(cfg, "manual-check")
    assert info is not None and info.rows > 0
    after = [s.run_id for s in list_snapshots(cfg)]
    assert after == ["manual-check", before[0]]
    assert not snapshot_path(cfg, before[1]).exists()


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
