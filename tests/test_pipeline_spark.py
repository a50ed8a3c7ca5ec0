"""Whole monitor cycles on Apache Spark over Spark Connect (issue 20), through
``monitor once`` and the operator commands: a real Connect server (tests/spark_server.py),
real dbt (the profile's ``spark`` output, picked because it is on ``[warehouse] url``),
the state store a SQLite file (the state store cannot live on Spark).

Tiny generated days (dqm_demo.generate), landed one at a time:

1. day 1: a clean cycle (its facts kept as the last-known-good state);
2. day 2 with a null storm in claims: held by its contract (exit 3), listed by
   ``monitor status``, ``monitor reject`` retires it, the claims fact unchanged (no
   incident report here: the rehearsal on Spark, tests/test_rehearsal.py, triages
   each incident class);
3. day 3, landed with the storm re-sent (other bytes): day 3's files are merged, the
   re-sent storm held (exit 3); ``monitor release`` publishes it and the next cycle
   merges its claims exactly once and checks them as touched rows (the storm's claims
   without an employee fail ``employee_exists``: exit 1). Each cycle's profile is
   measured on Spark and drift-scored after the first;
4. the incremental facts equal a ``dbt run --full-refresh`` rebuild row for row;
5. ``monitor rollback --to <day 1's run>`` restores day 1's facts exactly (the snapshot
   databases of monitor.warehouse.spark_snapshots).

The same helpers as the PostgreSQL story (tests/pg_cycle.py) read the warehouse.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from dqm_demo.demo import land_day
from dqm_demo.generate import Injection, generate
from monitor.core.config import load_config, state_url
from monitor.stages.build import DbtProject
from monitor.warehouse.connection import apply_dbt_environment
from monitor.warehouse.spark_session import stop_sessions

from .pg_cycle import (
    FACTS,
    check_released_merge,
    cli,
    drop_spark_databases,
    engine_of,
    fact_rows,
    pg_cycle_config,
    rows,
    scalar,
)
from .spark_server import SparkServer

pytestmark = [pytest.mark.spark, pytest.mark.slow]

START = date(2026, 3, 2)  # a Monday
DAY2, DAY3 = (START + timedelta(days=n) for n in (1, 2))
CLAIMS = 60  # a handful per feed: Spark's cost here is per statement, not per row


@dataclass
class Story:
    """What the cycles of the module fixture did, for the tests to check."""

    config: Path
    url: str
    state: str
    codes: dict[str, int] = field(default_factory=dict)
    err: dict[str, str] = field(default_factory=dict)
    out: dict[str, str] = field(default_factory=dict)
    facts: dict[str, dict[str, Counter[tuple[Any, ...]]]] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    batches: dict[str, str] = field(default_factory=dict)
    refreshed: bool = False

    def run(self, step: str, *args: str) -> int:
        code, out, err = cli(self.config, *args)
        self.codes[step], self.out[step], self.err[step] = code, out, err
        return code

    def keep_facts(self, step: str) -> None:
        self.facts[step] = {fact: fact_rows(self.url, fact) for fact in FACTS}

    def last_run(self, step: str) -> None:
        self.runs[step] = str(scalar(self.state, "select run_id from runs "
                                     "order by started_at desc limit 1"))

    def resume_if_paused(self, step: str) -> None:
        code, out, _ = cli(self.config, "status", "--json")
        assert code == 0
        if json.loads(out)["paused"]:
            assert self.run(step, "resume", "--reason", f"test: {step}") == 0, self.err[step]


@pytest.fixture(scope="module")
def story(spark_server: SparkServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Story]:
    tmp = tmp_path_factory.mktemp("spark_e2e")
    url = spark_server.url
    drop_spark_databases(url)
    config = pg_cycle_config(tmp, url)
    # No incident report here: the rehearsal on Spark (tests/test_rehearsal.py) triages
    # each incident class, this null storm among them; three reports would add minutes.
    config.write_text(config.read_text().replace("[evidence]\n",
                                                 "[evidence]\nauto_triage = false\n", 1))
    cfg = load_config(config)
    assert not cfg.evidence.auto_triage
    s = Story(config, url, state_url(cfg))
    feeds = tmp / "feeds"
    generate(feeds, START, 3, CLAIMS, seed=11, inject=[Injection("null_storm", DAY2)])
    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONITOR_SPARK_THREADS", "2")  # local[2]: independent models overlap
        mp.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        try:
            land_day(feeds, cfg.ingest.landing_dir, START)
            s.run("day1", "once")
            s.last_run("day1")
            s.keep_facts("day1")

            # 2. A null storm: held by the claims contract, then rejected.
            land_day(feeds, cfg.ingest.landing_dir, DAY2)
            s.run("day2", "once")
            s.last_run("day2")
            code, out, err = cli(config, "status", "--json")
            assert code == 0, err
            s.status["day2"] = json.loads(out)
            held = list(s.status["day2"].get("held_batches", []))
            s.batches["rejected"] = held[0]["batch_id"] if len(held) == 1 else repr(held)
            s.run("reject", "reject", s.batches["rejected"], "--reason", "test: bad delivery")
            s.keep_facts("after_reject")
            s.resume_if_paused("resume2")

            # 3. Day 3, and the storm re-sent: held, released, merged by the next cycle.
            land_day(feeds, cfg.ingest.landing_dir, DAY3)
            storm = next((feeds / "claims" / DAY2.isoformat()).glob("*.csv"))
            resent = cfg.ingest.landing_dir / "claims" / DAY2.isoformat() / "claims_resent.csv"
            resent.write_text("".join(storm.read_text().splitlines(keepends=True)[:-1]))
            s.run("day3", "once")
            code, out, err = cli(config, "status", "--json")
            assert code == 0, err
            held = list(json.loads(out).get("held_batches", []))
            s.batches["released"] = held[0]["batch_id"] if len(held) == 1 else repr(held)
            s.run("release", "release", s.batches["released"], "--reason",
                  "test: vendor confirmed")
            s.resume_if_paused("resume3")
            s.run("merge", "once")
            s.last_run("merge")
            s.keep_facts("day3")
            s.resume_if_paused("resume4")  # the merge's failed check tripped the breaker

            # 4. The facts kept aside, then rebuilt from the raw tables by dbt.
            with engine_of(url).connect() as conn:
                conn.exec_driver_sql("CREATE DATABASE incremental")
                for fact in FACTS:
                    conn.exec_driver_sql(f"CREATE TABLE incremental.{fact} USING parquet "
                                         f"AS SELECT * FROM main.{fact}")
            apply_dbt_environment(cfg.warehouse)
            result = DbtProject(cfg).invoke("run", full_refresh=True)
            s.refreshed = result.success
            s.keep_facts("full_refresh")

            # 5. Back to day 1's facts.
            s.run("rollback", "rollback", "--to", s.runs["day1"], "--reason",
                  "test: back to day 1")
            s.keep_facts("rollback")
            print(f"Spark story: {time.monotonic() - t0:.0f}s; exit codes {s.codes}")
            yield s
        finally:
            stop_sessions()


def test_every_cycle_exits_as_its_day_asks(story: Story) -> None:
    want = {"day1": 0, "day2": 3, "reject": 0, "day3": 3, "release": 0, "merge": 1,
            "rollback": 0}
    got = {k: v for k, v in story.codes.items() if k in want}
    assert got == want, {k: story.err[k][-1500:] for k in want if got.get(k) != want[k]}
    assert "SUCCESS" in story.out["day1"] and "day: 2026-03-02" in story.out["day1"]
    runs = [r for (r,) in rows(story.state, "select status from runs order by started_at")]
    assert runs == ["success", "held", "held", "failed"], runs


def test_layers_hold_each_key_once_and_raw_adds_up(story: Story) -> None:
    day1, day3 = story.facts["day1"], story.facts["day3"]
    for fact in FACTS:
        assert 0 < sum(day1[fact].values()) <= sum(day3[fact].values()), fact
    # Claims: the two clean days' claims and the released storm, each key once.
    raw = dict(rows(story.url, "select feed, count(*) from raw.ingest_batches "
                    "where status = 'published' group by feed"))
    assert (raw["claims"], raw["employees"], raw["plans"]) == (3, 3, 3), raw
    loaded = scalar(story.url, "select sum(rows_loaded) from raw.ingest_batches "
                    "where feed = 'claims'")
    assert scalar(story.url, "select count(*) from raw.claims") == loaded > 0
    ((n, keys, stored),) = rows(story.url, "select count(*), count(distinct claim_id), "
                                "count(distinct _batch_id) from incremental.fct_claims")
    assert n == keys == sum(day3["fct_claims"].values()) and stored == 3


def test_held_batch_rejected_leaves_the_claims_alone(story: Story) -> None:
    rejected = story.batches["rejected"]
    assert rejected.endswith("-claims"), story.status["day2"]
    assert story.facts["after_reject"]["fct_claims"] == story.facts["day1"]["fct_claims"]
    status, by, why = rows(story.url, "select status, decided_by, decision_reason from "
                           "raw.ingest_batches where batch_id = :b", b=rejected)[0]
    assert (status, why) == ("rejected", "test: bad delivery") and by
    checks = rows(story.state, "select check_name from validation_results "
                  "where batch_id = :b and not success", b=rejected)
    assert ("not_null_employee_id",) in checks, checks
    assert "rejected" in story.out["reject"]


def test_held_batch_released_is_merged_exactly_once(story: Story) -> None:
    released = story.batches["released"]
    assert released.endswith("-claims") and released != story.batches["rejected"]
    assert "released" in story.out["release"]
    # The facts as the merge left them (kept in `incremental` before the rollback).
    check_released_merge(story.url, story.state, released, story.runs["merge"], "incremental")


def test_every_cycle_profiles_spark_and_drift_scores_the_later_points(story: Story) -> None:
    """The profile measured on Spark lands in the state store once per cycle; the first
    point has no history, later ones are z-scored against the earlier days."""
    points = rows(story.state, "select z from metric_points where model = 'fct_claims' "
                  "and metric = 'row_count' order by id")
    assert len(points) == 4, points
    assert points[0][0] is None and any(z is not None for (z,) in points[1:]), points


def test_incremental_facts_equal_a_full_refresh(story: Story) -> None:
    assert story.refreshed
    for fact in FACTS:
        assert story.facts["full_refresh"][fact] == story.facts["day3"][fact], fact
        n = scalar(story.url, f"select count(*) from incremental.{fact}")
        assert n == sum(story.facts["day3"][fact].values()) > 0, fact


def test_rollback_restores_day_one_exactly(story: Story) -> None:
    assert story.facts["rollback"] == story.facts["day1"]
    assert story.facts["rollback"] != story.facts["day3"]
    kinds = [k for (k,) in rows(story.state, "select kind from events order by id")]
    assert kinds.count("reject") == 1 and kinds[-1] == "rollback", kinds
