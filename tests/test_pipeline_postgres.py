"""The whole cycle on PostgreSQL 15, through ``monitor once`` and the operator commands
(issue 19): a real server (tests/pg_server.py), real dbt (the profile's ``postgres``
output, picked because it is on ``[warehouse] url``), the state store on PostgreSQL too.

Generated days (dqm_demo.generate) are landed one at a time:

1. day 1: a clean cycle;
2. day 1's claims landed again under another name: a recorded no-op;
3. day 2 with a plans file of binary garbage: quarantined whole, counts adding up,
   exit 3, the circuit breaker paused; ``monitor resume`` lifts it;
4. day 3: clean;
5. day 4 with a null storm in claims: held by its contract (exit 3), listed by
   ``monitor status``, ``monitor reject`` retires it, the facts unchanged;
6. the same storm re-sent (other bytes): held, ``monitor release`` publishes it and the
   next cycle merges its claims exactly once, and its post-build checks take them as
   touched (the storm's claims without an employee fail ``employee_exists``: exit 1);
7. drift is scored on the facts' points; then the incremental facts equal a
   ``monitor once --full-refresh`` rebuild row for row.

And ``kill -9`` of a ``monitor once`` process inside fct_claims' merge transaction: the
merge leaves nothing, and the restarted cycle gives the facts of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dqm_demo.demo import land_day
from dqm_demo.generate import Injection, generate
from monitor.core.config import load_config, state_url
from monitor.core.manifest import load_manifest
from monitor.observe.profile import measure
from monitor.store import state
from monitor.warehouse.connection import warehouse

from .conftest import REPO, fresh_database
from .pg_cycle import (
    FACTS,
    check_released_merge,
    cli,
    fact_rows,
    pg_cycle_config,
    rows,
    scalar,
)
from .pg_server import PgServer, unavailable

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

try:
    import psycopg2  # noqa: F401  # the `postgres` extra
except ImportError:
    unavailable("psycopg2 missing: pip install -e '.[postgres]' (scripts/setup does)")

START = date(2026, 3, 2)  # a Monday
DAY2, DAY3, DAY4 = (START + timedelta(days=n) for n in (1, 2, 3))
CLAIMS = 300


@dataclass
class Story:
    """What the cycles of the module fixture did, for the tests to check."""

    config: Path
    url: str
    state: str
    feeds: Path
    codes: dict[str, int] = field(default_factory=dict)
    err: dict[str, str] = field(default_factory=dict)
    out: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    batches: dict[str, str] = field(default_factory=dict)

    def run(self, step: str, *args: str) -> int:
        code, out, err = cli(self.config, *args)
        self.codes[step], self.out[step], self.err[step] = code, out, err
        return code

    def resume_if_paused(self, step: str) -> None:
        code, out, _ = cli(self.config, "status", "--json")
        assert code == 0
        if json.loads(out)["paused"]:
            assert self.run(step, "resume", "--reason", f"test: {step}") == 0, self.err[step]


def _digest(url: str) -> tuple[Any, ...]:
    return tuple(scalar(url, f"select count(*) || ':' || coalesce(md5(string_agg(t::text, '|' "
                              f"order by t::text)), '') from main.{fact} t") for fact in FACTS)


def _held(story: Story, step: str) -> list[dict[str, Any]]:
    code, out, err = cli(story.config, "status", "--json")
    assert code == 0, err
    report = json.loads(out)
    story.status[step] = report
    return list(report.get("held_batches", []))


@pytest.fixture(scope="module")
def story(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    tmp = tmp_path_factory.mktemp("pg_e2e")
    with fresh_database(pg_server) as url, fresh_database(pg_server) as st_url:
        s = Story(pg_cycle_config(tmp, url, state=st_url), url, st_url, tmp / "feeds")
        generate(s.feeds, START, 4, CLAIMS, seed=11,
                 inject=[Injection("broken_file", DAY2), Injection("null_storm", DAY4)])
        landing = load_config(s.config).ingest.landing_dir
        t0 = time.monotonic()

        land_day(s.feeds, landing, START)
        s.run("day1", "once")

        # 2. The same bytes under another name: a recorded no-op.
        src = next((s.feeds / "claims" / START.isoformat()).glob("*.csv"))
        again = landing / "claims" / "resent" / f"again_{src.name}"
        again.parent.mkdir(parents=True)
        shutil.copy(src, again)
        s.facts["before_resend"] = _digest(url)
        s.run("resend", "once")
        s.facts["after_resend"] = _digest(url)

        # 3. A plans file of garbage: quarantined whole; the breaker pauses.
        land_day(s.feeds, landing, DAY2)
        s.run("day2", "once")
        s.status["day2"] = json.loads(cli(s.config, "status", "--json")[1])
        s.run("resume2", "resume", "--reason", "test: the vendor re-sends the plans")

        land_day(s.feeds, landing, DAY3)
        s.run("day3", "once")

        # 5. A null storm: held; rejected.
        land_day(s.feeds, landing, DAY4)
        s.facts["before_storm"] = _digest(url)
        s.run("day4", "once")
        held = _held(s, "day4")
        s.batches["rejected"] = held[0]["batch_id"] if len(held) == 1 else repr(held)
        s.run("reject", "reject", s.batches["rejected"], "--reason", "test: bad delivery")
        s.facts["after_reject"] = _digest(url)
        s.resume_if_paused("resume4")

        # 6. The storm re-sent with other bytes: held, released, merged by the next cycle.
        storm = next((s.feeds / "claims" / DAY4.isoformat()).glob("*.csv"))
        resent = landing / "claims" / DAY4.isoformat() / "claims_resent.csv"
        resent.write_text("".join(storm.read_text().splitlines(keepends=True)[:-1]))
        s.run("resent", "once")
        held = _held(s, "resent")
        s.batches["released"] = held[0]["batch_id"] if len(held) == 1 else repr(held)
        s.run("release", "release", s.batches["released"], "--reason", "test: vendor confirmed")
        s.resume_if_paused("resume5")
        s.run("merge", "once")
        s.facts["after_merge"] = _digest(url)
        s.batches["merge_run"] = scalar(st_url, "select run_id from runs "
                                        "order by started_at desc limit 1")
        s.resume_if_paused("resume6")  # the merge's failed check tripped the breaker
        print(f"PostgreSQL story: {time.monotonic() - t0:.0f}s of cycles; exit codes {s.codes}")
        yield s


def test_every_cycle_exits_as_its_day_asks(story: Story) -> None:
    want = {"day1": 0, "resend": 0, "day2": 3, "resume2": 0, "day3": 0, "day4": 3,
            "reject": 0, "resent": 3, "release": 0, "merge": 1}
    got = {k: v for k, v in story.codes.items() if k in want}
    assert got == want, {k: story.err[k][-600:] for k in want if got.get(k) != want[k]}
    assert "SUCCESS" in story.out["day1"] and "day: 2026-03-02" in story.out["day1"]


def test_exactly_once_ingest_and_a_resend_is_a_noop(story: Story) -> None:
    assert story.facts["before_resend"] == story.facts["after_resend"]
    assert "0 loaded, 1 duplicate" in story.out["resend"], story.out["resend"]
    # One ledger row per distinct file; the re-sent one never got one.
    files = rows(story.url, "select source_file, checksum from raw.ingest_batches")
    assert len({c for _, c in files}) == len(files)
    assert not [f for f, _ in files if "again_" in f]
    raw, ledger = rows(story.url, "select (select count(*) from raw.claims), "
                       "(select sum(rows_loaded) from raw.ingest_batches where feed = 'claims')")[0]
    assert raw == ledger > 0


def test_a_broken_file_is_quarantined_and_the_counts_add_up(story: Story) -> None:
    assert "quarantined whole" in story.err["day2"], story.err["day2"][-800:]
    assert story.status["day2"]["paused"], "the quarantined file trips the breaker"
    ((batch, status, read, loaded, quarantined),) = rows(
        story.url, "select batch_id, status, rows_read, rows_loaded, rows_quarantined "
        "from raw.ingest_batches where feed = 'plans' and source_file like :day",
        day=f"%{DAY2.isoformat()}%")
    assert status == "quarantined" and loaded == 0 and read == quarantined > 0
    kept = scalar(story.url, "select count(*) from raw.ingest_quarantine where batch_id = :b",
                  b=batch)
    assert kept >= 1
    bad = rows(story.url, "select batch_id from raw.ingest_batches "
               "where rows_read <> rows_loaded + rows_quarantined")
    assert bad == []
    events = rows(story.state, "select kind from events order by id")
    assert ("resume",) in events


def test_held_batch_rejected_leaves_the_facts_alone(story: Story) -> None:
    rejected = story.batches["rejected"]
    assert rejected.endswith("-claims"), story.status["day4"]
    claims = list(FACTS).index("fct_claims")
    assert story.facts["before_storm"][claims] == story.facts["after_reject"][claims]
    status, by, why = rows(story.url, "select status, decided_by, decision_reason from "
                           "raw.ingest_batches where batch_id = :b", b=rejected)[0]
    assert (status, why) == ("rejected", "test: bad delivery") and by
    assert scalar(story.url, "select count(*) from main.fct_claims where _batch_id = :b",
                  b=rejected) == 0
    checks = rows(story.state, "select check_name from validation_results "
                  "where batch_id = :b and not success", b=rejected)
    assert ("not_null_employee_id",) in checks, checks
    assert "rejected" in story.out["reject"]


def test_held_batch_released_is_merged_exactly_once(story: Story) -> None:
    released = story.batches["released"]
    assert released.endswith("-claims") and released != story.batches["rejected"]
    assert "released" in story.out["release"]
    for fact, key in FACTS.items():
        n, keys = rows(story.url, f"select count(*), count(distinct {key}) from main.{fact}")[0]
        assert n == keys > 0, fact
    check_released_merge(story.url, story.state, released, story.batches["merge_run"])


def test_runs_and_drift_are_recorded_in_the_postgres_state_store(story: Story) -> None:
    cfg = load_config(story.config)
    assert state_url(cfg) == story.state
    st = state.open_state(state_url(cfg))
    try:
        with st.connect() as conn:
            runs = conn.execute(sa.select(state.runs.c.status).order_by(
                state.runs.c.started_at)).scalars().all()
            points = conn.execute(
                sa.select(state.metric_points.c.run_id, state.metric_points.c.z)
                .where(state.metric_points.c.model == "fct_claims",
                       state.metric_points.c.metric == "row_count")
                .order_by(state.metric_points.c.id)).all()
    finally:
        st.dispose()
    # The last cycle merged the released storm and its checks failed on its rows.
    assert runs == ["success", "success", "held", "success", "held", "held", "failed"], runs
    assert len(points) == len(runs)
    # The first point has no history; later ones are scored against the points of
    # earlier days (the same rules as on DuckDB: monitor.observe.drift).
    assert points[0].z is None and [p for p in points if p.z is not None], points


def test_the_profile_on_postgres_carries_counts_that_a_full_count_confirms(
    story: Story,
) -> None:
    """Each cycle counted the batch-keyed views on its new batches and carried the totals
    (monitor.observe.carry); counting every relation in full now gives the same values,
    the median through percentile_cont included."""
    cfg = load_config(story.config)
    project = load_manifest(cfg.dbt.target_path)
    with warehouse(cfg.warehouse) as wh:
        full = measure(wh, project, cfg.profile)
    last_run = rows(story.state, "select run_id from runs order by started_at desc limit 1")[0][0]
    stored = rows(story.state, "select model, metric, value from metric_points "
                  "where run_id = :r", r=last_run)
    carried = {m for (m,) in rows(story.state, "select model from profile_carries")}
    assert {"stg_benefits__claims", "int_claims__enriched"} <= carried, carried
    checked = 0
    for model in carried | set(FACTS):
        want = {p.metric: p.value for p in full if p.model == model}
        got = {metric: value for m, metric, value in stored
               if m == model and metric in want}
        assert want.get("row_count", 0) > 0 and got == pytest.approx(want), model
        checked += 1
    assert checked >= 5
    # The day's median of the claims a gate published (percentile_cont on PostgreSQL).
    medians = rows(story.state, "select count(*) from metric_points where model = "
                   "'fct_claims' and metric = 'median:amount:touched' and value > 0")
    assert medians[0][0] >= 3, medians


def test_incremental_facts_equal_a_full_refresh(story: Story) -> None:
    """Last in the module: it rebuilds the facts."""
    url = story.url
    with sa.create_engine(url, poolclass=sa.NullPool).begin() as conn:
        conn.execute(sa.text("create schema incremental"))
        for fact in FACTS:
            conn.execute(sa.text(f"create table incremental.{fact} as table main.{fact}"))
    code, _, err = cli(story.config, "once", "--full-refresh")
    # The rebuild checks every row: the null-storm claims released on purpose above fail
    # the behaviour suite's employee_exists (and nothing else); the build itself passed.
    last = err.strip().splitlines()[-2 if code else -1] if err.strip() else ""
    assert code == 0 or (code == 1 and "behaviour_fct_claims failed 1/" in last
                         and "employee_exists" in last), err[-2000:]
    for fact in FACTS:
        n = scalar(url, f"select count(*) from main.{fact}")
        assert n > 0 and n == scalar(url, f"select count(*) from incremental.{fact}"), fact
        for a, b in ((f"main.{fact}", f"incremental.{fact}"),
                     (f"incremental.{fact}", f"main.{fact}")):
            diff = scalar(url, f"select count(*) from (table {a} except all table {b}) d")
            assert diff == 0, f"{fact}: {diff} rows of {a} not in {b}"


# -- kill -9 inside the fct_claims merge ------------------------------------------------

CRASH_CLAIMS = 20_000  # a merge of some 100 ms: long enough to stop the process inside it


def _merge_backend(url: str) -> dict[str, Any] | None:
    """dbt's session writing fct_claims, if any: its state and statement."""
    dbname = sa.make_url(url).database
    found = rows(url, "select pid, state, query from pg_stat_activity where datname = :d "
                 "and pid <> pg_backend_pid() and query ilike '%main%fct_claims%' "
                 "and xact_start is not null", d=dbname)
    for pid, st, query in found:
        if "insert into" in query.lower() or "delete from" in query.lower():
            return {"pid": pid, "state": st, "query": query}
    return None


def _merge_issued(log: Path, offset: int) -> bool:
    """dbt logged fct_claims' merge statement (issued, maybe not done), no COMMIT yet."""
    if not log.exists():
        return False
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    start = text.find("START sql incremental model main.fct_claims")
    if start < 0:
        return False
    tail = text[start:]
    return "delete from" in tail.lower() and "fct_claims: COMMIT" not in tail


def _stop_inside_merge(proc: subprocess.Popen[bytes], url: str) -> dict[str, Any]:
    """SIGSTOP the cycle once the server holds fct_claims' merge statement.

    dbt logs a statement before it sends it, so a stop right after the log line can
    land before the send: the session then shows its previous statement. Let the
    process run a moment and stop it again until the merge is on the server.
    """
    deadline = time.monotonic() + 120
    while True:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.05)  # a statement sent just before the stop shows up
        while (merge := _merge_backend(url)) is not None and merge["state"] == "active":
            assert time.monotonic() < deadline, f"the merge never finished: {merge}"
            time.sleep(0.05)
        if merge is not None:
            return merge
        assert time.monotonic() < deadline, "no open merge transaction"
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)


def test_kill_9_inside_the_merge_then_a_restart_gives_exact_facts(
    pg_server: PgServer, tmp_path: Path
) -> None:
    feeds = tmp_path / "feeds"
    generate(feeds, START, 2, CRASH_CLAIMS, seed=33)
    with fresh_database(pg_server) as ref_url, fresh_database(pg_server) as url:
        # The reference: both days without interruption.
        ref = pg_cycle_config(tmp_path / "ref", ref_url)
        for day in (START, DAY2):
            land_day(feeds, load_config(ref).ingest.landing_dir, day)
            code, _, err = cli(ref, "once")
            assert code == 0, err[-2000:]

        config = pg_cycle_config(tmp_path / "crash", url)
        cfg = load_config(config)
        land_day(feeds, cfg.ingest.landing_dir, START)
        assert cli(config, "once")[0] == 0
        land_day(feeds, cfg.ingest.landing_dir, DAY2)
        pre = fact_rows(url, "fct_claims")
        log = cfg.dbt.log_path / "dbt.log"
        offset = log.stat().st_size
        env = {**os.environ, "PYTHONPATH": str(REPO), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        with (tmp_path / "once.err").open("wb") as errf:
            proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "--config",
                                     str(config), "once"], stdout=subprocess.DEVNULL,
                                    stderr=errf, env=env)
        try:
            deadline = time.monotonic() + 600
            while not _merge_issued(log, offset):
                assert proc.poll() is None, (tmp_path / "once.err").read_text()[-3000:]
                assert time.monotonic() < deadline, "the merge never started"
                time.sleep(0.005)
            # Stopped, the process cannot send COMMIT: the server finishes the statement
            # and waits, the transaction open. Then the kill.
            merge = _stop_inside_merge(proc, url)
            inside = merge["state"] == "idle in transaction"
            assert inside, merge
            assert fact_rows(url, "fct_claims") == pre  # others never see it uncommitted
        finally:
            proc.kill()
            proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while _merge_backend(url) is not None:  # the server rolls the session back
            assert time.monotonic() < deadline, "the killed session stayed"
            time.sleep(0.1)
        assert fact_rows(url, "fct_claims") == pre, "the killed merge left rows behind"
        killed = rows(state_url(cfg), "select status, phase from runs order by started_at")[-1]
        assert killed == ("running", "build"), killed

        code, _, err = cli(config, "once")  # the restart: not Busy, the lock died too
        assert code == 0, err[-2000:]
        runs = rows(state_url(cfg), "select status from runs order by started_at")
        assert [r[0] for r in runs] == ["success", "interrupted", "success"], runs
        for fact, key in FACTS.items():
            n, keys = rows(url, f"select count(*), count(distinct {key}) from main.{fact}")[0]
            assert n == keys > 0, fact
            assert fact_rows(url, fact) == fact_rows(ref_url, fact), fact
        assert scalar(url, "select count(*) from main.fct_claims") > CRASH_CLAIMS
