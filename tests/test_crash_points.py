"""kill -9 at the contract gate, for real: a ``monitor run`` subprocess against a real
DuckDB warehouse, a real SQLite state store and real dbt builds.

The gate audits every ``pending`` batch (contract suites, feed-day volume) and then
publishes or holds all of them in one warehouse transaction. Killed anywhere in it, a
restart ends with each batch published or held exactly once (publish sequence numbers
without gaps or repeats, none left ``pending``) and the facts of an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from monitor.cycle import run_cycle
from monitor.demo import land_day
from monitor.generate import Injection, generate

from .test_daemon import (
    DAY1,
    DAY2,
    NEVER,
    Daemon,
    Workspace,
    _copy_workspace,
    assert_same_facts,
    daemon,
    wait_for,
)

pytestmark = pytest.mark.slow


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
    # The ledger equals the uninterrupted run's: same status, publish sequence and
    # decision for every batch (a batch published twice would have taken a second seq).
    assert ledger(ws.warehouse) == ledger(ref.warehouse)
    seqs = [r[4] for r in ledger(ws.warehouse) if r[4] is not None]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    counts = assert_same_facts(ws.warehouse, ref.warehouse)
    assert counts["fct_claims"] > 0
