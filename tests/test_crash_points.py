"""kill -9 at the contract gate, while a snapshot is written and in the middle of a
rollback, for real: ``monitor run`` / ``monitor rollback`` subprocesses against a real
DuckDB warehouse, a real SQLite state store and real dbt builds.

The gate audits every ``pending`` batch (contract suites, feed-day volume) and then
publishes or holds all of them in one warehouse transaction. Killed anywhere in it, a
restart ends with each batch published or held exactly once (publish sequence numbers
without gaps or repeats, none left ``pending``) and the facts of an uninterrupted run.

A last-known-good snapshot is copied into a hidden ``.partial`` file and renamed into
place whole, sidecar last: a cycle killed while copying leaves no listed snapshot, the
next one removes the leftover (with a log line) and keeps a valid FULL snapshot that a
rollback restores exactly. A rollback rebuilds the tables in one warehouse transaction:
killed before its commit it changes nothing (no event, the ledger untouched), and run
again it restores the target run's tables row for row.

Each kill point is found as the gate's are: by polling what the process visibly does
(its run's phase, a log line, a file it writes) every 5 ms, then ``kill -9``; after the
kill the test checks that it landed where it was aimed.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dqm_demo.demo import land_day
from dqm_demo.generate import Injection, generate
from monitor.cycle.run import run_cycle
from monitor.recovery.snapshots import DELTA, FULL, list_snapshots

from .test_daemon import (
    DAY1,
    DAY2,
    MONITOR,
    NEVER,
    Daemon,
    Workspace,
    _copy_workspace,
    _env,
    assert_same_facts,
    daemon,
    wait_for,
)
from .test_snapshots import _differences, _save_reference

pytestmark = pytest.mark.slow

DAY3, DAY4 = DAY1 + timedelta(days=2), DAY1 + timedelta(days=3)
CLAIMS = 2_000  # claims a day: the snapshot copy and the restore last a few 100 ms
LEAN = {"scheduler.cycle_cron": NEVER, "scheduler.freshness_cron": NEVER,
        "profile.layers": '["fct"]', "profile.include_sources": "false"}


def ledger(path: Path) -> list[tuple[Any, ...]]:
    """The batch ledger without what differs between workspaces (paths, times)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [tuple(r) for r in con.execute(
            "select batch_id, feed, regexp_replace(source_file, '^.*/', ''), status, "
            "publish_seq, rows_loaded, decided_by, decision_reason "
            "from raw.ingest_batches order by load_seq").fetchall()]
    finally:
        con.close()


def day2_statuses(path: Path) -> dict[str, str]:
    return {str(b): str(s) for b, _f, name, s, *_ in ledger(path) if DAY2.isoformat() in name}


def running_phase(ws: Workspace) -> str | None:
    rows = ws.query("select phase from runs where status = 'running'")
    return str(rows[-1]["phase"]) if rows else None


def test_kill_9_at_the_gate_publishes_or_holds_each_batch_once(tmp_path: Path) -> None:
    # Day 2's claims file has a null storm: its contract holds it; the other feeds publish.
    feeds = tmp_path / "feeds"
    generate(feeds, DAY1, 2, 300, seed=21, inject=[Injection("null_storm", DAY2)])
    lean = {"scheduler.cycle_cron": NEVER, "scheduler.freshness_cron": NEVER,
            "validation.enabled": "true",
            "profile.layers": '["fct"]', "profile.include_sources": "false"}
    base = Workspace.create(tmp_path / "base", **lean)
    land_day(feeds, base.landing, DAY1)
    assert run_cycle(base.cfg, trigger="test").status == "success"

    # The reference: day 2 gated and built without interruption.
    ref = _copy_workspace(base, tmp_path / "ref")
    land_day(feeds, ref.landing, DAY2)
    assert run_cycle(ref.cfg, trigger="test").status == "held"
    want = day2_statuses(ref.warehouse)
    assert sorted(want.values()) == ["held", "published", "published"], want
    held = [b for b, s in want.items() if s == "held"]
    assert held and held[0].endswith("-claims")

    ws = _copy_workspace(base, tmp_path / "crash")
    land_day(feeds, ws.landing, DAY2)
    outcomes: list[tuple[str, dict[str, str]]] = []

    def crash(tag: str, trigger: Callable[[Daemon], str | None]) -> str:
        with daemon(ws, run_now=True, tag=tag) as d:
            why = wait_for(lambda: trigger(d), 300, f"kill point {tag}", every=0.005)
            d.kill9()
        outcomes.append((tag, day2_statuses(ws.warehouse)))
        return why

    # 1. In the gate, while the contracts run: nothing decided, every batch pending.
    crash("gate", lambda _d: "gate" if running_phase(ws) == "gate" else None)
    statuses = outcomes[-1][1]
    assert sorted(statuses) == sorted(want) and set(statuses.values()) == {"pending"}, statuses

    # 2. At the hold: its line is logged inside the publish/hold transaction, before the
    # COMMIT. Killed there or just after: all of the decisions or none of them.
    crash("hold", lambda d: "held" if f"batch {held[0]} held:" in d.log() else None)
    statuses = outcomes[-1][1]
    assert statuses == {b: "pending" for b in want} or statuses == want, statuses

    # 3. After the gate's commit, at the start of the build: decided once, as the
    # uninterrupted run decided, and nothing re-gated by the next start.
    crash("build", lambda _d: "build" if running_phase(ws) == "build" else None)
    assert outcomes[-1][1] == want, outcomes[-1]

    # Restart: the recovering cycle builds what was published; no batch stays pending.
    with daemon(ws, run_now=True, tag="final") as d:
        d.wait_ready()
        wait_for(lambda: len(ws.runs()) == 5 and ws.runs()[-1]["status"] != "running",
                 400, "the recovering cycle", every=0.5)
        assert d.stop()[0] == 0
    for tag, got in outcomes:
        print(f"kill at {tag}: day-2 batches {got}")
    statuses_by_run = [r["status"] for r in ws.runs()]
    assert statuses_by_run[:4] == ["success", "interrupted", "interrupted", "interrupted"]
    assert statuses_by_run[4] in ("success", "held"), ws.runs()[-1]
    # The hold committed by a run killed before it was recorded still trips the breaker
    # (and so pages, DqmPaused), at the end of the recovering cycle as the uninterrupted
    # run did at the end of its own.
    assert [r["reason"] for r in ref.query("select reason from pause")] == [
        f"batch(es) held by contract: {held[0]}"]
    paused = ws.query("select reason, run_id from pause")
    assert len(paused) == 1 and paused[0]["run_id"] == ws.runs()[4]["run_id"], paused
    assert paused[0]["reason"].startswith("batch(es) held by contract in interrupted run(s): ")
    assert paused[0]["reason"].endswith(f" held {held[0]}"), paused
    # The ledger equals the uninterrupted run's: same status, publish sequence and
    # decision for every batch (a batch published twice would have taken a second seq).
    assert ledger(ws.warehouse) == ledger(ref.warehouse)
    seqs = [r[4] for r in ledger(ws.warehouse) if r[4] is not None]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    counts = assert_same_facts(ws.warehouse, ref.warehouse)
    assert counts["fct_claims"] > 0


def snapshot_files(ws: Workspace) -> set[str]:
    folder = ws.cfg.evidence.snapshots_dir
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def head(ws: Workspace) -> dict[str, Any] | None:
    path = ws.cfg.evidence.snapshots_dir / "HEAD"
    return dict(json.loads(path.read_text())) if path.exists() else None


def events(ws: Workspace) -> list[tuple[Any, ...]]:
    return [(e["kind"], e["subject"], e["reason"])
            for e in ws.query("select * from events order by id")]


def test_kill_9_while_a_snapshot_is_written_keeps_no_half_snapshot(tmp_path: Path) -> None:
    feeds = tmp_path / "feeds"
    generate(feeds, DAY1, 4, CLAIMS, seed=21)
    base = Workspace.create(tmp_path / "base", **LEAN)
    land_day(feeds, base.landing, DAY1)
    r1 = run_cycle(base.cfg, trigger="test")
    assert r1.status == "success"
    assert [s.run_id for s in list_snapshots(base.cfg)] == [r1.run_id]

    # The reference: days 2 and 3 without interruption.
    ref = _copy_workspace(base, tmp_path / "ref")
    for day in (DAY2, DAY3):
        land_day(feeds, ref.landing, day)
        assert run_cycle(ref.cfg, trigger="test").status == "success"

    ws = _copy_workspace(base, tmp_path / "crash")
    land_day(feeds, ws.landing, DAY2)
    folder = ws.cfg.evidence.snapshots_dir

    def copying(_d: Daemon) -> str | None:
        """The snapshot's hidden ``.partial`` file: ATTACHed, being written."""
        return next((p.name for p in folder.glob(".*.duckdb.partial")), None)

    with daemon(ws, run_now=True, tag="snapshot") as d:
        partial = wait_for(lambda: copying(d), 300, "the snapshot copy", every=0.005)
        d.kill9()
    # Landed while copying: the run was recorded (a snapshot follows a recorded clean
    # run), its copy is still the hidden partial file, nothing was renamed into place.
    (killed,) = [r for r in ws.runs() if r["run_id"] != r1.run_id]
    r2 = killed["run_id"]
    assert (killed["status"], killed["phase"]) == ("success", "done"), killed
    assert partial == f".{r2}.duckdb.partial"
    files = snapshot_files(ws)
    print(f"kill while copying the snapshot of {r2}: snapshots folder {sorted(files)}")
    leftovers = files - {"HEAD", f"{r1.run_id}.duckdb", f"{r1.run_id}.json"}
    assert leftovers in ({partial}, {partial, f"{partial}.wal"}), files
    # No half-written snapshot is listed; HEAD still names day 1's, plus day 2's build.
    assert [s.run_id for s in list_snapshots(ws.cfg)] == [r1.run_id]
    assert head(ws) == {"run_id": r1.run_id,
                        "builds": [{"run_id": r2, "full_refresh": False}]}

    # Restart with day 3: the cycle succeeds, removes the leftover and keeps a snapshot.
    land_day(feeds, ws.landing, DAY3)
    with daemon(ws, run_now=True, tag="final") as d:
        d.wait_ready()
        taken = wait_for(
            lambda: re.search(r"(FULL|DELTA) snapshot of run ([^\s:]+)|evidence step failed",
                              d.log()), 400, "the next snapshot", every=0.5)
        assert d.stop()[0] == 0
        log = d.log()
    r3 = ws.runs()[-1]["run_id"]
    assert [r["status"] for r in ws.runs()] == ["success"] * 3, ws.runs()
    assert taken.group(0) == f"FULL snapshot of run {r3}", log[-3000:]
    removed = re.findall(r"removed \S+/([^/\s]+): left by a snapshot that did not finish", log)
    assert sorted(removed) == sorted(leftovers), log[-3000:]
    assert snapshot_files(ws) == {"HEAD", f"{r1.run_id}.duckdb", f"{r1.run_id}.json",
                                  f"{r3}.duckdb", f"{r3}.json"}
    kept = list_snapshots(ws.cfg)
    assert [s.run_id for s in kept] == [r3, r1.run_id]
    # FULL: the killed run's build is a change the lost snapshot did not record.
    assert (kept[0].kind, kept[0].parent) == (FULL, None)
    assert kept[0].why_full == (f"another build since the snapshot of {r1.run_id}: "
                                f"{{'run_id': '{r2}', 'full_refresh': False}}")
    assert head(ws) == {"run_id": r3, "builds": []}
    # The facts and the batch ledger equal the uninterrupted run's.
    counts = assert_same_facts(ws.warehouse, ref.warehouse)
    assert counts["fct_claims"] > CLAIMS, counts
    assert ledger(ws.warehouse) == ledger(ref.warehouse)

    # The new snapshot is valid: after day 4 changed the tables, a rollback to it
    # restores every table day 3's run left, row for row.
    refs = tmp_path / "refs"
    _save_reference(ws.cfg, refs, r3)
    land_day(feeds, ws.landing, DAY4)
    once = ws.cli("once", timeout=400)
    assert once.returncode == 0, once.stderr[-3000:]
    assert "fct_claims" in _differences(ws.cfg, refs, r3)
    res = ws.cli("rollback", "--to", r3, "--reason", "crash test: back to day 3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith(f"rolled back 8 fact table(s) to run {r3} ("), res.stdout
    assert _differences(ws.cfg, refs, r3) == {}
    assert events(ws)[-1] == ("rollback", r3, "crash test: back to day 3")


def test_kill_9_mid_rollback_commits_nothing_and_the_rollback_redone_restores(
    tmp_path: Path,
) -> None:
    feeds = tmp_path / "feeds"
    generate(feeds, DAY1, 3, CLAIMS, seed=22)
    ws = Workspace.create(tmp_path / "ws", **LEAN)
    refs = tmp_path / "refs"  # refs/<run>.duckdb: every built table as the run left it
    runs = []
    for day in (DAY1, DAY2, DAY3):
        land_day(feeds, ws.landing, day)
        result = run_cycle(ws.cfg, trigger="test")
        assert result.status == "success", result.reason
        _save_reference(ws.cfg, refs, result.run_id)
        runs.append(result.run_id)
    r1, r2, r3 = runs
    kinds = {s.run_id: (s.kind, s.parent) for s in list_snapshots(ws.cfg)}
    assert kinds == {r1: (FULL, None), r2: (DELTA, r1), r3: (DELTA, r2)}
    # The target, day 2, is rebuilt from day 1's FULL + day 2's DELTA; day 3 changed it.
    changed = _differences(ws.cfg, refs, r2)
    assert "fct_claims" in changed
    # Kill once a table day 3 changed is rebuilt (a table day 3 left alone, such as the
    # companies' versions, would look the same committed or not), with tables to go.
    order = [t.model for t in next(s for s in list_snapshots(ws.cfg) if s.run_id == r2).tables]
    aim = next(m for m in order if m in changed)
    assert order.index(aim) < len(order) - 1, (order, changed)
    before = (ledger(ws.warehouse), ws.runs(), events(ws))
    reason = "crash test: back to day 2"

    err, out = ws.root / "rollback-killed.err", ws.root / "rollback-killed.out"
    with err.open("wb") as e, out.open("wb") as o:
        proc = subprocess.Popen(
            [str(MONITOR), "--config", str(ws.config), "rollback", "--to", r2,
             "--reason", reason], stdout=o, stderr=e, env=_env())
    rebuilt = re.compile(rf"rollback to {r2}: (\S+) rebuilt, \d+ rows \(not committed yet\)")

    def restoring() -> str | None:
        """The aimed table's line, logged inside the restore transaction."""
        if aim in rebuilt.findall(err.read_text(errors="replace")):
            return aim
        assert proc.poll() is None, f"rollback exited {proc.returncode}: {err.read_text()}"
        return None

    try:
        table = wait_for(restoring, 120, f"{aim} restored", every=0.005)
        proc.kill()
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    lines = rebuilt.findall(err.read_text(errors="replace"))
    print(f"kill mid-rollback: after {table}; tables logged rebuilt: {lines}")
    # Landed mid-restore: killed (no summary printed), some but not all tables rebuilt.
    assert rc == -signal.SIGKILL and out.read_text() == "", (rc, out.read_text())
    assert lines[:order.index(aim) + 1] == order[:order.index(aim) + 1], lines
    assert len(lines) < len(order), lines
    # Nothing was committed: every table is as day 3 left it, no rollback event, the
    # ledger and runs untouched. HEAD was forgotten first (the next snapshot is FULL).
    assert _differences(ws.cfg, refs, r3) == {}
    assert (ledger(ws.warehouse), ws.runs(), events(ws)) == before
    assert head(ws) is None

    # Run the rollback again: it restores the target run's tables row for row.
    res = ws.cli("rollback", "--to", r2, "--reason", reason)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith(
        f"rolled back 8 fact table(s) to run {r2} (FULL snapshot of {r1} + 1 delta(s))"
    ), res.stdout
    assert _differences(ws.cfg, refs, r2) == {}
    assert ledger(ws.warehouse) == before[0] and ws.runs() == before[1]
    assert events(ws) == [*before[2], ("rollback", r2, reason)]
    assert head(ws) == {"run_id": r2, "builds": []}

    # The next cycle re-merges day 3's batches onto day 2's tables: what day 3 left,
    # and its snapshot is a DELTA on the rollback's target.
    after = run_cycle(ws.cfg, trigger="test")
    assert after.status == "success", after.reason
    assert _differences(ws.cfg, refs, r3) == {}
    newest = list_snapshots(ws.cfg)[0]
    assert (newest.run_id, newest.kind, newest.parent) == (after.run_id, DELTA, r2)
    assert ledger(ws.warehouse) == before[0]
