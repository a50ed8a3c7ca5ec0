"""The state store on another SQLAlchemy backend than SQLite: ``[state] url`` is "any
SQLAlchemy URL" (README, Configuration).

Here it is a DuckDB file through duckdb-engine, a different file from the warehouse,
named by a relative URL (resolved against the config folder, as a SQLite one is). Two
real cycles write to it: a clean day, then a day with a claims file quarantined whole,
which trips the circuit breaker, opens an alert (delivered through the outbox to the
log sink) and writes an incident report. ``monitor status --json`` and ``monitor
resume`` read and write it, and every table is read back, through SQLAlchemy and with
DuckDB itself.

Limit (README): a DuckDB file is opened by one process at a time, so this store suits
``monitor once`` from cron or one process; beside a running daemon, ``monitor status``
or ``resume`` from another process cannot open it.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from dqm_demo.demo import days, land_day
from dqm_demo.generate import generate
from monitor.cli import main
from monitor.core.config import load_config, state_url
from monitor.cycle.run import run_cycle
from monitor.store import state
from monitor.store.state import alert_outbox, alerts_open, metric_points

from .conftest import write_config

pytestmark = pytest.mark.slow

START = date(2026, 3, 2)  # a Monday


def _land_renamed_column(feeds: Path, landing: Path, day: date) -> Path:
    """A second claims file of ``day`` whose header renames a column: quarantined whole."""
    src = feeds / "claims" / day.isoformat() / f"claims_{day.isoformat()}.csv"
    header, rest = src.read_text().split("\n", 1)
    dst = landing / "claims" / day.isoformat() / f"claims_{day.isoformat()}_v2.csv"
    dst.write_text(header.replace("amount", "amount_usd") + "\n" + rest)
    return dst


def test_a_cycle_on_a_duckdb_state_store(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, url='"duckdb:///data/state.duckdb"')
    cfg = load_config(path)
    store = tmp_path / "data" / "state.duckdb"
    assert cfg.state.url == "duckdb:///data/state.duckdb"
    assert state_url(cfg) == f"duckdb:///{store}"  # the config folder, not the cwd
    assert store != cfg.warehouse.path
    feeds = tmp_path / "feeds"
    generate(feeds, START, 2, 300, seed=3)
    day1, day2 = days(START, 2)

    land_day(feeds, cfg.ingest.landing_dir, day1)
    r1 = run_cycle(cfg, trigger="test", as_of=day1)
    assert (r1.status, r1.breaker) == ("success", ""), r1.reason
    land_day(feeds, cfg.ingest.landing_dir, day2)
    bad = _land_renamed_column(feeds, cfg.ingest.landing_dir, day2)
    r2 = run_cycle(cfg, trigger="test", as_of=day2)
    assert r2.status == "held", r2.reason
    assert r2.breaker == f"file(s) quarantined whole: {bad.name}"
    assert (cfg.evidence.dir / r2.run_id / "report.json").exists()  # triage read the store
    assert store.exists() and not (tmp_path / "data" / "state.db").exists()

    # The CLI reads it back...
    conf = ["--config", str(path)]
    capsys.readouterr()
    assert main([*conf, "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["status"]) for r in status["runs"]] == [
        (r2.run_id, "held"), (r1.run_id, "success")]
    # (day 2's companies file repeats day 1's bytes: a duplicate)
    assert status["runs"][0]["summary"]["files"] == {"loaded": 3, "duplicate": 1,
                                                     "quarantined": 1}
    assert (status["paused"]["reason"], status["paused"]["run_id"]) == (r2.breaker, r2.run_id)
    assert [a["dedup_key"] for a in status["open_alerts"]] == [
        "validation_failed:contract_claims"]
    assert [(e["kind"], e["subject"]) for e in status["events"]] == [("pause", r2.run_id)]
    assert status["next_run"] is None  # no daemon has scheduled a cycle here
    # ...and writes to it.
    assert main([*conf, "resume", "--reason", "vendor re-sends the file"]) == 0

    st = state.open_state(state_url(cfg))
    try:
        assert st.dialect.name == "duckdb"
        with st.connect() as conn:
            runs = conn.execute(sa.select(state.runs.c.run_id, state.runs.c.status)
                                .order_by(state.runs.c.started_at)).all()
            events = conn.execute(sa.select(state.events.c.id, state.events.c.kind,
                                            state.events.c.reason)
                                  .order_by(state.events.c.id)).all()
            outbox = conn.execute(sa.select(
                alert_outbox.c.dedup_key, alert_outbox.c.sink, alert_outbox.c.event,
                alert_outbox.c.status, alert_outbox.c.attempts)).all()
            opened = conn.execute(sa.select(alerts_open.c.dedup_key, alerts_open.c.run_id)).all()
            # auto-numbered ids (a sequence on DuckDB): unique, from 1
            results = {rid: conn.execute(
                sa.select(sa.func.count(), sa.func.count(sa.distinct(
                    state.validation_results.c.id)), sa.func.min(state.validation_results.c.id))
                .where(state.validation_results.c.run_id == rid)).one() for rid, _ in runs}
            points = conn.execute(
                sa.select(metric_points.c.value).where(
                    metric_points.c.run_id == r2.run_id, metric_points.c.model == "fct_claims",
                    metric_points.c.metric == "row_count")).scalar_one()
            point_ids = conn.execute(sa.select(sa.func.count(), sa.func.count(
                sa.distinct(metric_points.c.id)), sa.func.min(metric_points.c.id))).one()
    finally:
        st.dispose()
    assert [tuple(r) for r in runs] == [(r1.run_id, "success"), (r2.run_id, "held")]
    assert [(i, k) for i, k, _ in events] == [(1, "pause"), (2, "resume")]
    assert events[1][2] == "vendor re-sends the file"
    assert [tuple(r) for r in outbox] == [
        ("validation_failed:contract_claims", "log", "firing", "sent", 1)]
    assert [tuple(r) for r in opened] == [("validation_failed:contract_claims", r2.run_id)]
    n1, n2 = results[r1.run_id], results[r2.run_id]
    assert n1[0] > 0 and n1[0] == n1[1] and n1[2] == 1
    assert n2[0] > 0 and n2[0] == n2[1] and n2[2] == n1[0] + 1
    assert point_ids[0] == point_ids[1] > 0 and point_ids[2] == 1
    with duckdb.connect(str(cfg.warehouse.path), read_only=True) as wh:
        claims = wh.execute("select count(*) from main.fct_claims").fetchone()
    assert claims is not None and points == claims[0] > 0  # day 2 was built and recorded
    # The file is a plain DuckDB database: DuckDB itself reads the same rows.
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("select run_id, status from runs order by started_at").fetchall() == [
            (r1.run_id, "success"), (r2.run_id, "held")]
        assert con.execute("select count(*) from pause").fetchone() == (0,)
