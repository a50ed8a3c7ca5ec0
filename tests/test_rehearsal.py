"""A two-week incident rehearsal (bench/rehearse.py, small volume): every gate-detected
incident is caught and held out of the facts, and no clean day (weekend dip included) pages.

Drift stays seasonal with its default history (it would need ~7 weeks to score a weekday),
so the scenarios here are the ones the contract gate and the ingest catch; the 60-day run
in bench/rehearse.py covers the drift-only ones.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from bench.rehearse import Scenario, rehearse, render
from monitor.config import load_config
from tests.conftest import write_config

START = date(2026, 1, 5)  # Monday: the run covers the weekend of 10-11 January
SCENARIOS = (
    Scenario("broken_file", "broken_file", 2, "plans", "schema_drift"),
    Scenario("schema_drift", "schema_drift", 4, "claims", "schema_drift"),
    Scenario("null_storm", "null_storm", 7, "claims", "null_storm"),
    Scenario("dup_enrichment_key", "dup_enrichment_key", 9, "companies", "key_explosion"),
    Scenario("duplicate_batch", "duplicate_batch", 11, "claims", "duplicate_batch",
             corrupts=False),
    Scenario("logic_regression", "logic_regression", 12, "claims", "logic_regression"),
)


@pytest.mark.slow
def test_rehearsal_catches_every_incident_without_a_page_on_clean_days(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path))
    r = rehearse(cfg, tmp_path / "rehearsal", n_days=13, claims_per_day=300,
                 scenarios=SCENARIOS, start=START, echo=lambda _: None)
    print(render(r))
    assert [o.scenario.name for o in r.outcomes] == [s.name for s in SCENARIOS]
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
