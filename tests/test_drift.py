"""drift.py: seasonal robust z-scores on synthetic daily series."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from monitor.core.sections import DriftConfig
from monitor.observe.drift import DriftResult, HistoryPoint, is_month_end, score, score_series

START = datetime(2026, 1, 5)  # a Monday


def daily(
    weeks: int, *, weekend: float = 0.4, month_end: float = 1.0, noise: float = 0.03, seed: int = 7
) -> list[HistoryPoint]:
    """Daily volumes ~1000 with weekends at ``weekend``× and month-end days at ``month_end``×."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(weeks * 7):
        at = START + timedelta(days=i)
        value = 1000.0 * (weekend if at.weekday() >= 5 else 1.0) * (1 + rng.normal(0, noise))
        if is_month_end(at, 3):
            value *= month_end
        out.append(HistoryPoint(at, round(value)))
    return out


def flagged(points: list[HistoryPoint], results: list[DriftResult]) -> list[datetime]:
    return [p.at for p, r in zip(points, results, strict=True) if r.anomalous]


def test_three_x_volume_day_is_flagged() -> None:
    pts = daily(10)
    i = 60  # a weekday well after warm-up
    assert pts[i].at.weekday() < 5 and not is_month_end(pts[i].at, 3)
    pts[i] = HistoryPoint(pts[i].at, pts[i].value * 3)
    res = score_series(pts, DriftConfig())
    assert flagged(pts, res) == [pts[i].at]
    assert res[i].severity == "critical" and res[i].reason == "hard limit"
    z = res[i].z
    assert z is not None and z > 6 and res[i].n == 28
    assert res[i].expected == res[i].baseline
    assert res[i].relative_change == pytest.approx(2, abs=0.2)


def test_weekend_dip_not_flagged_with_seasonal_baseline() -> None:
    pts = daily(10)
    res = score_series(pts, DriftConfig())
    weekends = [r for p, r in zip(pts, res, strict=True) if p.at.weekday() >= 5]
    assert any(r.n >= 14 for r in weekends)  # weekends really were scored with full history
    assert flagged(pts, res) == []
    # Without seasonality the same weekends look like incidents.
    mixed = score_series(pts, DriftConfig(seasonal=False))
    assert sum(1 for p in flagged(pts, mixed) if p.weekday() >= 5) >= 10


def test_two_weeks_of_history_score_every_weekday() -> None:
    """The weekday/weekend ratio is learned from the 14 days there are: a Monday surge
    and a Saturday surge are flagged, a plain Saturday is not."""
    pts = daily(3)
    history = pts[:14]
    monday, saturday = pts[14], pts[19]
    assert (monday.at.weekday(), saturday.at.weekday()) == (0, 5)
    surge = score(history, HistoryPoint(monday.at, monday.value * 2.94), DriftConfig())
    assert (surge.n, surge.anomalous, surge.severity) == (14, True, "critical")
    weekend = score(history, HistoryPoint(saturday.at, saturday.value * 1.5), DriftConfig())
    assert weekend.anomalous and weekend.expected == pytest.approx(400, rel=0.1)
    assert not score(history, saturday, DriftConfig()).anomalous
    # Comparing Saturdays with the week as a whole would flag every plain weekend.
    assert score(history, saturday, DriftConfig(seasonal=False)).anomalous


def test_month_end_rise_needs_month_end_option() -> None:
    pts = daily(16, month_end=1.3)  # 16 weeks: Jan 5 .. Apr 26, three month ends
    month_end = [i for i, p in enumerate(pts) if is_month_end(p.at, 3)]
    # Plain seasonal baseline: robust spread does not absorb a 1.3x rise.
    plain = score_series(pts, DriftConfig())
    assert any(plain[i].anomalous for i in month_end)
    cfg = DriftConfig(month_end_days=3, month_end_uplift=0.5)
    res = score_series(pts, cfg)
    scored = [i for i in month_end if res[i].n >= cfg.min_history]
    assert len(scored) >= 3  # month ends with >= 7 same-weekday points of history
    assert flagged(pts, res) == []
    # The allowance is bounded and one-sided: 3x or a drop on month-end still flags.
    last = month_end[-1]
    history = pts[:last]
    up = score(history, HistoryPoint(pts[last].at, pts[last].value * 3), cfg)
    down = score(history, HistoryPoint(pts[last].at, pts[last].value / 1.3 * 0.5), cfg)
    assert up.anomalous and down.anomalous and down.z is not None and down.z < 0
    # Month-end points stay out of regular baselines (checked across all weekdays).
    flat = DriftConfig(seasonal=False, month_end_days=3, month_end_uplift=0.5,
                       min_spread_ratio=0.01)  # a floor low enough to see the baseline
    regular = [p for p in pts[: last + 1] if not is_month_end(p.at, 3)]
    after = score(pts[: last + 1], pts[last + 1], flat)
    assert after == score(regular, pts[last + 1], flat)
    assert after != score(pts[: last + 1], pts[last + 1],
                          DriftConfig(seasonal=False, min_spread_ratio=0.01))


@pytest.mark.parametrize(("seasonal", "step"), [(True, 7), (False, 1)])
def test_incident_does_not_raise_later_baselines(seasonal: bool, step: int) -> None:
    cfg = DriftConfig(seasonal=seasonal, robust=False)  # mean/std: any leak would show
    pts = daily(12, weekend=1.0)
    k = 63
    incident = [*pts[:k], HistoryPoint(pts[k].at, pts[k].value * 3), *pts[k + 1 :]]
    with_inc = score_series(incident, cfg)
    assert with_inc[k].anomalous
    without = score_series([*pts[:k], *pts[k + 1 :]], cfg)
    # The next comparable day (next day, or same weekday next week) and all later days
    # score exactly as if the incident never happened.
    assert [r.z for r in with_inc[k + 1 :]] == [r.z for r in without[k:]]
    nxt = k + step
    assert with_inc[nxt].n == without[nxt - 1].n
    # Had the incident been left in the training set, the next day's z would differ.
    leaked = score(incident[:nxt], incident[nxt], cfg)  # input flags are all False
    assert leaked.baseline != with_inc[nxt].baseline and leaked.z != with_inc[nxt].z


def test_point_under_test_is_not_in_its_own_baseline() -> None:
    hist = [HistoryPoint(START + timedelta(days=i), 100.0 + i % 3) for i in range(20)]
    cur = HistoryPoint(START + timedelta(days=20), 400.0)
    cfg = DriftConfig(seasonal=False)
    alone = score(hist, cur, cfg)
    with_self = score([*hist, cur], cur, cfg)
    assert with_self == alone and alone.n == 20 and alone.anomalous
    # Later points are not training data either.
    future = [HistoryPoint(cur.at + timedelta(days=d), 400.0) for d in (1, 2)]
    assert score([*hist, *future], cur, cfg) == alone


def test_flat_series_zero_spread() -> None:
    hist = [HistoryPoint(START + timedelta(days=i), 100.0) for i in range(21)]
    cfg = DriftConfig(seasonal=False)
    same = score(hist, HistoryPoint(START + timedelta(days=21), 100.0), cfg)
    assert (same.z, same.anomalous, same.spread) == (0.0, False, 10.0)  # 10% floor
    jump = score(hist, HistoryPoint(START + timedelta(days=21), 300.0), cfg)
    assert jump.z == 20.0 and jump.anomalous
    zeros = [HistoryPoint(p.at, 0.0) for p in hist]
    nonzero = score(zeros, HistoryPoint(START + timedelta(days=21), 1.0), cfg)
    assert nonzero.anomalous and nonzero.baseline == 0.0 and nonzero.z == 100.0  # capped
    # A change series is floored by the level it changes: a table of 10k rows that never
    # grew, growing by 5 rows, is no incident; growing by a fifth of itself is, z bounded.
    small = score(zeros, HistoryPoint(START + timedelta(days=21), 5.0), cfg, level=10_000)
    assert small.z == 0.5 and not small.anomalous and small.relative_change == 0.0005
    big = score(zeros, HistoryPoint(START + timedelta(days=21), 2000.0), cfg, level=10_000)
    assert big.z == 100.0 and big.severity == "critical" and big.relative_change == 0.2


def test_insufficient_and_no_history() -> None:
    hist = [HistoryPoint(START + timedelta(days=i), 100.0) for i in range(3)]
    cur = HistoryPoint(START + timedelta(days=3), 1000.0)
    res = score(hist, cur, DriftConfig(seasonal=False))
    assert res.z == 90.0 and not res.anomalous and res.reason == "insufficient history"
    assert score([], cur, DriftConfig()).reason == "no history"
    assert score(hist, HistoryPoint(cur.at, float("nan")), DriftConfig()).z is None


def test_robust_vs_classic_statistics() -> None:
    values = [10.0, 12.0, 11.0, 13.0, 50.0, 12.0, 11.0, 10.0]
    hist = [HistoryPoint(START + timedelta(days=i), v) for i, v in enumerate(values)]
    cur = HistoryPoint(START + timedelta(days=len(values)), 20.0)
    rob = score(hist, cur, DriftConfig(seasonal=False, min_history=3))
    assert rob.baseline == 11.5 and rob.spread == pytest.approx(1.4826, abs=1e-4)
    classic = score(hist, cur, DriftConfig(seasonal=False, robust=False, min_history=3))
    assert classic.baseline == pytest.approx(np.mean(values))
    assert classic.spread == pytest.approx(np.std(values, ddof=1))
    assert rob.anomalous and not classic.anomalous  # one outlier masks drift in classic mode


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        DriftConfig(threshold=7.0, hard_limit=6.0)
    with pytest.raises(ValueError):
        DriftConfig(window=0)
    assert DriftConfig(metrics=["row_count"]).metrics == ("row_count",)  # type: ignore[arg-type]


def test_cumulative_metrics_are_scored_as_deltas_but_touched_aggregates_are_not() -> None:
    cfg = DriftConfig()
    assert cfg.is_delta("row_count") and cfg.is_delta("sum:amount")  # glob "sum:*"
    assert not cfg.is_delta("median:amount")
    # A sum over the rows one cycle published is per run already, not cumulative.
    assert not cfg.is_delta("sum:amount:touched")
    assert not DriftConfig(delta_metrics=()).is_delta("row_count")
