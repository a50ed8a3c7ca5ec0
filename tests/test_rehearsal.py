"""A two-week incident rehearsal (bench/rehearse.py, small volume): every gate-detected
incident is caught and held out of the facts, and no clean day (weekend dip included) pages,
on DuckDB, on PostgreSQL and on Apache Spark (the same body; the warehouse on a fresh test
database, or on the worker's Spark Connect server, dbt target ``spark``).

Drift and the gate's feed-day volume need 14 days of history to flag and hold, so the
scenarios here are the ones the contract gate and the ingest catch; the 60-day run in
bench/rehearse.py covers issue 16's fault set after 14 clean days.
"""

from __future__ import annotations

import itertools
import statistics
from datetime import date, timedelta
from pathlib import Path

import pytest

from bench import elementary, jaffle
from bench.rehearse import (
    CATALOGUE,
    DEFAULT_START,
    HISTORY,
    ISSUE16,
    PREDICATE_MODEL,
    PREDICATE_NEW,
    PREDICATE_OLD,
    TWO_WEEKS,
    TWO_WEEKS_DAYS,
    TWO_WEEKS_START,
    DayLog,
    Outcome,
    Rehearsal,
    Scenario,
    _Clock,
    _record_series,
    predicate_project,
    rehearse,
    render,
    schedule,
    unplaced,
)
from dqm_demo.generate import INJECTION_KINDS
from monitor.core.config import load_config
from tests.conftest import REPO, write_config
from tests.pg_cycle import drop_spark_databases, pg_cycle_config


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres),
                                    pytest.param("spark", marks=pytest.mark.spark)])
def test_rehearsal_catches_every_incident_without_a_page_on_clean_days(
        tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> None:
    if engine == "postgres":  # a fresh database on the session's test server
        cfg = load_config(pg_cycle_config(tmp_path, request.getfixturevalue("pg_database")))
    elif engine == "spark":  # the worker's Connect server; dbt's profile output `spark`
        url = request.getfixturevalue("spark_server").url
        drop_spark_databases(url)
        cfg = load_config(pg_cycle_config(tmp_path, url))
    else:
        cfg = load_config(write_config(tmp_path))
    r = rehearse(cfg, tmp_path / "rehearsal", n_days=TWO_WEEKS_DAYS, claims_per_day=300,
                 scenarios=TWO_WEEKS, start=TWO_WEEKS_START, echo=lambda _: None)
    print(render(r))
    assert [o.scenario.name for o in r.outcomes] == [s.name for s in TWO_WEEKS]
    for o in r.outcomes:
        assert o.detected, f"{o.scenario.name} missed on {o.day}"
        assert o.detected_day == o.day
        assert o.clean, f"{o.scenario.name}: facts not clean: {o.clean_why}"
        # An incident report was written, naming the right root cause.
        assert o.root_cause == o.scenario.expect, (o.scenario.name, o.root_cause)
    weekend = [d for d in r.clean_days if d.day.weekday() >= 5]
    assert len(weekend) == 2
    assert len(r.clean_days) == 7
    assert all(d.status == "success" for d in r.clean_days), [
        (d.day, d.status) for d in r.clean_days]
    assert r.clean_day_pages == 0, [d.alerts for d in r.clean_days if d.pages]
    assert r.failures == []


# --- the schedule, the series and the Elementary baseline (no cycles: fast) -------------


def test_schedule_places_every_scenario_in_60_days_after_the_history() -> None:
    placed = schedule(60)
    assert unplaced(placed) == []
    assert sorted(s.name for s in placed) == sorted(s.name for s in CATALOGUE)
    offsets = [s.offset for s in placed]
    assert min(offsets) >= HISTORY and max(offsets) < 60
    assert all(b - a >= 2 for a, b in itertools.pairwise(offsets))
    for s in placed:
        day = DEFAULT_START + timedelta(days=s.offset)
        assert (day + timedelta(days=3)).month == day.month, f"{s.name} on a month end"
        assert day.weekday() == 5 if s.name == "weekend_surge" else day.weekday() < 5, s.name
        assert s.offset >= s.min_day
    by_name = {s.name: s for s in placed}
    # Issue 16's faults come first, right after the clean history.
    assert max(by_name[s.name].offset for s in ISSUE16) < min(
        s.offset for s in placed if s.name not in {x.name for x in ISSUE16})
    assert by_name["volume_surge"].offset >= 49  # drift-only: 7 same-weekday points


def test_schedule_for_a_short_run_keeps_the_first_scenarios() -> None:
    placed = schedule(20, history=14)
    assert [s.name for s in placed] == ["surge_in_band", "partial_day", "weekend_surge"]
    assert [s.offset for s in placed] == [14, 16, 19]
    assert unplaced(placed)[:2] == ["future_dates", "same_cycle_resend"]
    assert schedule(14, history=14) == []
    # A shorter history: the Saturday surge takes the first Saturday (day 5).
    assert [(s.name, s.offset) for s in schedule(12, history=3)] == [
        ("surge_in_band", 3), ("weekend_surge", 5), ("partial_day", 7), ("future_dates", 9),
        ("same_cycle_resend", 11)]


def test_every_scenario_is_a_generator_injection() -> None:
    assert {s.kind for s in CATALOGUE} <= set(INJECTION_KINDS)
    assert {s.kind for s in ISSUE16} == {
        "surge_in_band", "weekend_surge", "partial_day", "future_dates", "same_cycle_resend",
        "benign_duplicates", "corrections", "late_updates"}  # + the predicate patch


def test_the_predicate_patch_applies_to_the_project(tmp_path: Path) -> None:
    project = predicate_project(tmp_path, REPO / "pipeline")
    text = (project / PREDICATE_MODEL).read_text()
    assert PREDICATE_NEW in text and PREDICATE_OLD not in text
    assert (REPO / "pipeline" / PREDICATE_MODEL).read_text().count(PREDICATE_OLD) == 1


def test_series_points_become_daily_growth() -> None:
    r = Rehearsal([], [])
    clock = _Clock(REPO / "pipeline")
    for n, points in enumerate(({"raw.claims": 300.0, "fct_claims.growth": 290.0},
                                {"raw.claims": 310.0, "fct_claims.growth": 600.0},
                                {"raw.claims": 0.0, "fct_claims.growth": 600.0,
                                 "fct_new.growth": 5.0})):
        _record_series(r, points, clock)
        r.days.append(DayLog(TWO_WEEKS_START + timedelta(days=n), "", "success", 1.0, 0, []))
    assert r.series == {"raw.claims": [300.0, 310.0, 0.0],
                        "fct_claims.growth": [290.0, 310.0, 0.0],
                        "fct_new.growth": [0.0, 0.0, 5.0]}


def test_elementary_baseline_on_synthetic_series() -> None:
    weekday = [1000.0, 1010.0, 990.0, 1005.0, 995.0]
    week = [*weekday, 400.0, 410.0]  # Mon-Fri, then a weekend dip
    series = week * 3  # 21 days
    scores = elementary.score_series("claims", series)
    assert all(s.z is None for s in scores[:14])  # the training set is not full yet
    assert all(s.z is not None for s in scores[14:])
    # No seasonality: the weekend dip sits inside mean +- 3 sd of all weekdays.
    assert not any(s.anomalous for s in scores)
    z = elementary.zscore(series[:14], 400.0)
    assert z is not None and -2.0 < z < -1.0
    # A weekday at 2.94x is flagged, a Saturday at 1.5x and a 40% partial day are not.
    assert (elementary.zscore(series, 2.94 * 1000) or 0) > 3
    assert abs(elementary.zscore(series, 1.5 * 400) or 0) < 3
    assert abs(elementary.zscore(series, 0.4 * 1000) or 0) < 3
    # Even a feed that stops is inside the band the weekend dips widen (z about -2.96) ...
    assert -3 < (elementary.zscore(series, 0.0) or 0) < -2.5
    # ... while on a series without dips it is flagged; a constant series scores 0.
    assert elementary.zscore([7.0] * 14, 8.0) == 0.0
    steady = weekday * 4 + [1000.0]  # 21 days
    flags = elementary.flagged_days({"claims": [*steady, 0.0], "flat": [5.0] * 22})
    assert list(flags) == [21] and [s.series for s in flags[21]] == ["claims"]
    assert flags[21][0].z is not None and flags[21][0].z < -3
    # The z-score is Elementary's: (x - mean) / sample stddev of the 14 previous points.
    window = series[7:21]
    expected = (2000.0 - statistics.fmean(window)) / statistics.stdev(window)
    assert elementary.zscore(series, 2000.0) == pytest.approx(expected)


def test_jaffle_days_are_pure_and_the_injection_duplicates_a_fifth_of_payments() -> None:
    day = date(2026, 1, 7)
    clean = jaffle.shop_day(7, 2, day, 200)
    assert clean == jaffle.shop_day(7, 2, day, 200)
    assert len(set(clean.payments)) == len(clean.payments)
    assert len({p[0] for p in clean.payments}) == len(clean.payments)  # payment ids unique
    hit = jaffle.shop_day(7, 2, day, 200, jaffle.DUP_SHARE)
    assert hit.orders == clean.orders and hit.payments[: len(clean.payments)] == clean.payments
    extra = hit.payments[len(clean.payments):]
    assert len(extra) == round(0.2 * len(clean.payments)) and set(extra) <= set(clean.payments)
    # Orders only reference customers loaded on or before their day.
    known = max(c[0] for c in clean.customers)
    assert all(1 <= o[1] <= known for o in clean.orders)
    assert min(c[0] for c in clean.customers) > max(
        c[0] for c in jaffle.shop_day(7, 1, day - timedelta(days=1), 200).customers)


def test_render_shows_both_detectors_side_by_side() -> None:
    days = [TWO_WEEKS_START + timedelta(days=n) for n in range(17)]
    log = [DayLog(d, "", "success", 2.0, 0, []) for d in days]
    surge = Scenario("surge_in_band", "surge_in_band", 15, "claims", "volume_surge", held=True)
    benign = Scenario("corrections", "corrections", 16, "claims", "handled", corrupts=False)
    log[15] = DayLog(days[15], surge.name, "held", 3.0, 1, ["critical:validation_failed:x"])
    log[16] = DayLog(days[16], benign.name, "success", 2.0, 0, [])
    log[3] = DayLog(days[3], "", "success", 2.0, 0, ["warning:metric_drift:fct_claims"])
    outcomes = [
        Outcome(surge, days[15], detected=True, detected_day=days[15], held=True,
                severity="critical", root_cause="volume_surge", pages=1, clean=True,
                clean_why="bad batch not merged"),
        Outcome(benign, days[16], clean=True, clean_why="no duplicate fact keys"),
    ]
    week = [1000.0, 1010.0, 990.0, 1005.0, 995.0, 400.0, 410.0]
    claims = [*(week * 3)[:15], 2900.0, 9000.0]
    r = Rehearsal(outcomes, log, series={"raw.claims": claims}, unplaced=["volume_surge"])
    text = render(r)
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()}
    assert "volume_surge (held)" in rows["surge_in_band"]
    assert "yes raw.claims z=" in rows["surge_in_band"]
    assert "FALSE yes raw.claims" in rows["corrections"]  # a flag on a benign day
    assert "no (ok)" in rows["corrections"]
    assert "pages (critical alerts enqueued) on clean days: 0" in text
    assert "clean days with any alert: 1 (warning metric_drift x1)" in text
    assert "incidents detected on their day: monitor 1/1" in text and "elementary 1/1" in text
    assert "false flags: 0 of 15 clean days (none)" in text
    assert "days of history before the first detection: monitor 15, elementary 15" in text
    assert "not scheduled (no free day in this run): volume_surge" in text
    assert r.failures == []  # the Elementary baseline never fails the rehearsal
