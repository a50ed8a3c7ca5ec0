"""volume.py and seasonal.py: feed-day volume judged against a seasonal expectation."""

from __future__ import annotations

import math
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from monitor.core import seasonal
from monitor.core.config import Config, load_config, state_url
from monitor.core.sections import VolumeBands
from monitor.stages.checks import GateOutcome, gate
from monitor.stages.ingest import ingest
from monitor.stages.volume import (
    CHECK_DROP,
    CHECK_RESEND,
    CHECK_SURGE,
    DayVerdict,
    delivery_day,
    judge,
)
from monitor.store import state
from monitor.warehouse.connection import warehouse

MONDAY = date(2026, 3, 2)


def history(days: int, *, weekend: float = 0.4, noise: float = 0.03, seed: int = 1
            ) -> dict[date, int]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(days):
        d = MONDAY + timedelta(days=i)
        level = 3000 * (weekend if d.weekday() >= 5 else 1.0)
        out[d] = round(level * (1 + rng.uniform(-noise, noise)))
    return out


def test_delivery_day_from_the_path_else_the_default() -> None:
    feed = Path("/land/claims")
    default = date(2030, 1, 1)
    assert delivery_day("/land/claims/2026-03-05/claims_2026-03-04.csv", feed, default) == \
        date(2026, 3, 5)  # the folder's date: the day it was delivered
    assert delivery_day("/land/claims/x/claims_20260304.csv", feed, default) == date(2026, 3, 4)
    assert delivery_day("/land/claims/batch-7/claims.csv", feed, default) == default
    assert delivery_day("/land/claims/2026-13-45/c.csv", feed, default) == default  # no date
    assert delivery_day("/land/claims/2026-03-05/c.csv", feed, None) == date(2026, 3, 5)


def test_weekday_weekend_ratio_is_learned_from_two_weeks() -> None:
    h = history(14)
    points = sorted((d, float(v)) for d, v in h.items())
    saturday = MONDAY + timedelta(days=19)
    exp = seasonal.expect(points, saturday)
    assert exp is not None and exp.basis == "weekday/weekend ratio" and exp.n == 14
    assert exp.value == pytest.approx(1200, rel=0.05)
    monday = seasonal.expect(points, MONDAY + timedelta(days=14))
    assert monday is not None and monday.value == pytest.approx(3000, rel=0.05)
    # Three weeks: each weekday has its own factor.
    three = sorted((d, float(v)) for d, v in history(21).items())
    assert seasonal.basis(three, saturday) == "same weekday"
    # Zeros: no multiplicative pattern; all days count alike.
    assert seasonal.basis([(MONDAY, 0.0), (MONDAY + timedelta(days=1), 5.0)], saturday) == \
        "all days"


@pytest.mark.parametrize(("day_index", "factor", "status", "check"), [
    (21, 2.94, "hold", CHECK_SURGE),   # the seed's surge, inside the old 3x per-file band
    (21, 0.4, "hold", CHECK_DROP),     # a partial upload
    (26, 1.5, "warning", CHECK_SURGE), # a Saturday at 1.5x its own expectation
    (26, 2.2, "hold", CHECK_SURGE),    # a Saturday at a weekday's volume
    (21, 1.05, "ok", "day_volume"),
    (26, 1.0, "ok", "day_volume"),     # a plain Saturday is no drop
])
def test_a_day_is_judged_against_its_seasonal_expectation(
    day_index: int, factor: float, status: str, check: str
) -> None:
    h = history(day_index)
    day = MONDAY + timedelta(days=day_index)
    base = 3000 * (0.4 if day.weekday() >= 5 else 1.0)
    v = judge("claims", day, round(base * factor), h, VolumeBands())
    assert (v.status, v.check) == (status, check), v.reason
    assert v.expected == pytest.approx(base, rel=0.05)
    assert v.ratio == pytest.approx(factor, rel=0.05)
    assert v.history_days == day_index
    doc = v.to_json()
    assert doc["relative_change"] == pytest.approx(factor - 1, abs=0.06)


def test_short_history_warns_and_no_history_is_not_judged() -> None:
    day = MONDAY + timedelta(days=7)
    v = judge("claims", day, 9000, history(7), VolumeBands())
    assert v.status == "warning" and "14 days of history needed to hold" in v.reason
    v = judge("claims", MONDAY + timedelta(days=3), 6000, history(3), VolumeBands())
    assert v.status == "unjudged" and v.expected == pytest.approx(3000, rel=0.05)
    # Far outside the cold-start band, a day is held on any comparable history.
    v = judge("claims", MONDAY + timedelta(days=2), 15000, history(2), VolumeBands())
    assert v.status == "hold" and v.check == CHECK_SURGE and "short history" in v.reason
    v = judge("claims", MONDAY + timedelta(days=2), 450, history(2), VolumeBands())
    assert v.status == "hold" and v.check == CHECK_DROP
    # The cold-start band's edges: 0.2x and 3x hold, just inside them does not.
    def at(rows: int) -> DayVerdict:
        return judge("claims", MONDAY + timedelta(days=2), rows, history(2), VolumeBands())

    expected = at(3000).expected
    assert expected is not None
    rows = {0.2: math.floor(expected * 0.2), 0.22: round(expected * 0.22),
            2.9: round(expected * 2.9), 3.0: math.ceil(expected * 3)}
    edges = {r: at(n) for r, n in rows.items()}
    assert {r: v.status for r, v in edges.items()} == {
        0.2: "hold", 0.22: "unjudged", 2.9: "unjudged", 3.0: "hold"}, {
        r: v.reason for r, v in edges.items()}
    # Weekdays only so far: a first Saturday is not compared with weekdays.
    v = judge("claims", MONDAY + timedelta(days=5), 1200, history(5), VolumeBands())
    assert v.status == "unjudged" and "weekday/weekend" in v.reason


def test_bands_are_configurable_and_checked() -> None:
    h = history(21)
    day = MONDAY + timedelta(days=21)
    loose = VolumeBands(surge_ratio=3.5)
    assert judge("claims", day, 3000 * 3, h, loose).status == "warning"
    assert judge("claims", day, 3000 * 3, h, VolumeBands()).status == "hold"
    with pytest.raises(ValueError, match="drop_ratio"):
        VolumeBands(drop_ratio=1.2)
    with pytest.raises(ValueError, match="warn_after_days"):
        VolumeBands(warn_after_days=20)


def test_month_end_rise_is_allowed_up_to_the_uplift() -> None:
    start = date(2026, 3, 2)
    h = {start + timedelta(days=i): 3000 for i in range(24)}
    month_end = date(2026, 3, 30)
    assert judge("claims", month_end, 4200, h, VolumeBands(), 3, 0.5).status == "ok"
    assert judge("claims", month_end, 4200, h, VolumeBands()).status == "warning"
    assert judge("claims", month_end, 9000, h, VolumeBands(), 3, 0.5).status == "hold"


# ------------------------------------------------------------------ the gate, on DuckDB

REPO = Path(__file__).resolve().parent.parent
HEADER = "claim_id,amount,updated_at\n"


def _day_rows(day: date, n: int, offset: int = 0) -> list[str]:
    return [f"C{day:%Y%m%d}-{i:05d},{(i * 37) % 500 + 10}.50,{day} 08:00:00"
            for i in range(offset, offset + n)]


def _volume(day: date) -> int:
    return 120 if day.weekday() >= 5 else 300


def _write(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(r + "\n" for r in rows))


def _config(root: Path) -> Config:
    toml = root / "config.toml"
    toml.write_text(
        f'[warehouse]\npath = "{root / "wh.duckdb"}"\n'
        f'[state]\nurl = "sqlite:///{root / "state.db"}"\n'
        f'[dbt]\nproject_dir = "{REPO / "pipeline"}"\nprofiles_dir = "{REPO / "pipeline"}"\n'
        f'[ingest]\nlanding_dir = "{root / "landing"}"\n'
        '[ingest.feeds.claims]\ncolumns = ["claim_id", "amount", "updated_at"]\n'
        'key = ["claim_id"]\n[validation]\nenabled = false\n'
    )
    return load_config(toml)


def _cycle(cfg: Config, day: date) -> GateOutcome:
    st = state.open_state(state_url(cfg))
    try:
        with warehouse(cfg.warehouse) as wh:
            report = ingest(wh, cfg.ingest)
            return gate(cfg, wh, report, st, day)
    finally:
        st.dispose()


START = date(2026, 3, 2)  # Monday; 15 days of history end on Monday 03-16


@pytest.fixture(scope="module")
def history_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("volume")
    cfg = _config(root)
    for i in range(15):
        d = START + timedelta(days=i)
        _write(cfg.ingest.landing_dir / "claims" / d.isoformat() / "claims.csv",
               _day_rows(d, _volume(d)))
        assert _cycle(cfg, d).published  # every clean day is published
    return root


@pytest.fixture
def ws(history_root: Path, tmp_path: Path) -> Config:
    """A private copy of the 15-day history: each test lands its own day."""
    root = tmp_path / "ws"
    shutil.copytree(history_root, root)
    return _config(root)


def _land(cfg: Config, day: date, name: str, rows: list[str]) -> None:
    _write(cfg.ingest.landing_dir / "claims" / day.isoformat() / name, rows)


def _checks(out: GateOutcome) -> dict[str, tuple[bool, str]]:
    return {r.batch_id or "": (r.success, r.results[0].check) for r in out.results
            if r.suite == "volume_claims"}


TUESDAY, SATURDAY = START + timedelta(days=15), START + timedelta(days=19)


def test_gate_holds_a_surge_inside_the_old_band(ws: Config) -> None:
    _land(ws, TUESDAY, "claims.csv", _day_rows(TUESDAY, round(300 * 2.94)))
    out = _cycle(ws, TUESDAY)
    assert out.published == [] and len(out.held) == 1
    assert _checks(out) == {out.held[0]: (False, CHECK_SURGE)}
    (v,) = out.days
    assert (v.status, v.rows, v.history_days) == ("hold", 882, 15)
    assert v.ratio == pytest.approx(2.94, rel=0.01)


def test_gate_holds_a_partial_day(ws: Config) -> None:
    _land(ws, TUESDAY, "claims.csv", _day_rows(TUESDAY, 120))
    out = _cycle(ws, TUESDAY)
    assert len(out.held) == 1 and _checks(out)[out.held[0]] == (False, CHECK_DROP)


def test_exact_duplicate_rows_count_once(ws: Config) -> None:
    rows = _day_rows(TUESDAY, 300)
    _land(ws, TUESDAY, "claims.csv", rows + rows[:15] + rows[:15])  # 10% exact repeats
    out = _cycle(ws, TUESDAY)
    assert out.held == [] and out.days[0].rows == 300 and out.days[0].status == "ok"


def test_a_supplement_of_known_keys_passes_on_its_own_merit(ws: Config) -> None:
    _land(ws, TUESDAY, "claims.csv", _day_rows(TUESDAY, 300))
    monday = START + timedelta(days=14)
    corrections = [r.replace("08:00:00", "18:00:00") for r in _day_rows(monday, 40)]
    _land(ws, TUESDAY, "claims_corrections.csv", corrections)
    out = _cycle(ws, TUESDAY)
    assert out.held == [] and len(out.published) == 2
    (v,) = out.days
    assert v.rows == 300 and v.status == "ok"  # the supplement is not the day's volume
    st = state.open_state(state_url(ws))
    with st.connect() as conn:
        kinds = sorted(r.kind for r in conn.execute(sa.select(state.batch_volumes.c.kind).where(
            state.batch_volumes.c.day == TUESDAY)))
    st.dispose()
    assert kinds == ["main", "supplement"]


def test_the_same_day_twice_in_one_cycle_is_a_resend(ws: Config) -> None:
    rows = _day_rows(TUESDAY, 300)
    _land(ws, TUESDAY, "claims.csv", rows)
    _land(ws, TUESDAY, "claims_again.csv", list(reversed(rows)))
    out = _cycle(ws, TUESDAY)
    assert len(out.published) == 1 and len(out.held) == 1
    assert _checks(out)[out.held[0]] == (False, CHECK_RESEND)
    assert out.days[0].rows == 300 and out.days[0].status == "ok"


def test_a_weekend_surge_warns_and_a_plain_weekend_passes(ws: Config) -> None:
    for d in (TUESDAY + timedelta(days=i) for i in range(4)):  # Tue..Fri, clean
        _land(ws, d, "claims.csv", _day_rows(d, _volume(d)))
        assert _cycle(ws, d).held == []
    _land(ws, SATURDAY, "claims.csv", _day_rows(SATURDAY, 180))  # 1.5x a Saturday
    out = _cycle(ws, SATURDAY)
    assert out.held == [] and out.days[0].status == "warning"
    assert out.days[0].expected == pytest.approx(120, rel=0.05)


def test_one_weekend_day_of_history_already_sets_the_weekend_level() -> None:
    """The first Sunday, with one Saturday behind it, is expected at a weekend's volume."""
    sunday = MONDAY + timedelta(days=6)
    v = judge("claims", sunday, 1200, history(6), VolumeBands())
    assert v.status == "ok" and v.expected == pytest.approx(1200, rel=0.05), v.reason
