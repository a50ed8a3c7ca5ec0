"""Z-score drift detection for metric series (pure functions, no I/O).

A point is scored against earlier comparable points (not flagged, outside the month-end
regime, the ``window`` most recent), optionally rescaled to its weekday; the spread is
floored and ``|z|`` capped at :data:`Z_CAP`, so a flat history still reads well.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
from scipy.stats import median_abs_deviation

from monitor.core.seasonal import rescaled
from monitor.core.sections import DriftConfig

__all__ = [
    "Z_CAP", "DriftResult", "HistoryPoint", "is_month_end",
    "score", "score_series",
]

# |z| past this says nothing more than "far outside": a flat history must not print 1e11.
Z_CAP = 100.0


@dataclass(frozen=True)
class HistoryPoint:
    """One observation of a metric; ``anomalous`` marks points kept out of baselines."""

    at: datetime
    value: float
    anomalous: bool = False


@dataclass(frozen=True)
class DriftResult:
    """Outcome of scoring one point.

    ``reason``: ``ok``, ``threshold``, ``hard limit``, ``insufficient history``,
    ``no history`` or ``non-finite value``. ``severity``: ``ok``, ``warning``,
    ``critical`` (only when ``anomalous``). ``expected``: the value the baseline allows
    for this point (the month-end uplift included); ``relative_change``: (value −
    expected) / |expected|, or / the level for a change series whose expected change is 0.
    """

    z: float | None
    baseline: float | None
    spread: float | None
    n: int
    anomalous: bool
    reason: str
    severity: str = "ok"
    expected: float | None = None
    relative_change: float | None = None


def is_month_end(at: datetime, days: int) -> bool:
    """True if ``at`` falls in the last ``days`` days of its month."""
    if days <= 0:
        return False
    last = calendar.monthrange(at.year, at.month)[1]
    return at.day > last - days


def score(
    history: Sequence[HistoryPoint], current: HistoryPoint, cfg: DriftConfig,
    level: float | None = None, floor_ratio: float | None = None,
    noise_ratio: float = 0.0,
) -> DriftResult:
    """Score ``current`` against a baseline trained on ``history`` (see module doc).

    ``level``: for a change series (daily growth), the size of what changes; it floors
    the spread, so the first growth of a table that never grew gets a finite z.
    ``noise_ratio``: the point's own sampling noise as a share of its value (a mean over
    few rows); it floors the spread while the baseline has fewer than
    ``spread_min_points`` points.
    """
    if not math.isfinite(current.value):
        return DriftResult(None, None, None, 0, False, "non-finite value")
    train = _training_values(history, current, cfg)
    n = len(train)
    if n == 0:
        return DriftResult(None, None, None, 0, False, "no history")
    if n < cfg.spread_min_points:
        floor_ratio = max(cfg.min_spread_ratio if floor_ratio is None else floor_ratio,
                          noise_ratio)
    baseline, spread = _baseline(train, cfg, level, floor_ratio)
    expected = _expected(current, baseline, cfg)
    z = max(-Z_CAP, min(Z_CAP, _z(current, baseline, spread, cfg)))
    rel = _relative(current.value, expected, level)
    if n < cfg.min_history:
        return DriftResult(z, baseline, spread, n, False, "insufficient history",
                           expected=expected, relative_change=rel)
    if abs(z) >= cfg.hard_limit:
        return DriftResult(z, baseline, spread, n, True, "hard limit", "critical", expected, rel)
    if abs(z) >= cfg.threshold:
        return DriftResult(z, baseline, spread, n, True, "threshold", "warning", expected, rel)
    return DriftResult(z, baseline, spread, n, False, "ok", expected=expected,
                       relative_change=rel)


def score_series(points: Sequence[HistoryPoint], cfg: DriftConfig) -> list[DriftResult]:
    """Score every point of a series in time order, each against the points before it.

    Each point's own result decides whether later baselines use it (input
    ``anomalous`` flags are ignored), so an incident never inflates what follows.
    Results are returned in the order of ``points``.
    """
    order = sorted(range(len(points)), key=lambda i: points[i].at)
    seen: list[HistoryPoint] = []
    results: dict[int, DriftResult] = {}
    for i in order:
        res = score(seen, points[i], cfg)
        results[i] = res
        seen.append(replace(points[i], anomalous=res.anomalous))
    return [results[i] for i in range(len(points))]


def _comparable(p: HistoryPoint, current: HistoryPoint, cfg: DriftConfig) -> bool:
    if p.at >= current.at or p.anomalous or not math.isfinite(p.value):
        return False
    return not is_month_end(p.at, cfg.month_end_days)


def _training_values(
    history: Sequence[HistoryPoint], current: HistoryPoint, cfg: DriftConfig
) -> list[float]:
    pts = [p for p in history if _comparable(p, current, cfg)]
    pts.sort(key=lambda p: p.at, reverse=True)
    pts = pts[: cfg.window]
    if not cfg.seasonal:
        return [p.value for p in pts]
    return rescaled([(p.at.date(), p.value) for p in pts], current.at.weekday())


def _baseline(values: Sequence[float], cfg: DriftConfig, level: float | None = None,
              floor_ratio: float | None = None) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    if cfg.robust:
        center = float(np.median(arr))
        spread = float(median_abs_deviation(arr, scale="normal"))
    else:
        center = float(arr.mean())
        spread = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    ratio = cfg.min_spread_ratio if floor_ratio is None else floor_ratio
    floor = max(ratio * abs(center), cfg.min_spread_abs,
                cfg.min_level_ratio * abs(level or 0.0))
    return center, max(spread, floor)


def _expected(current: HistoryPoint, baseline: float, cfg: DriftConfig) -> float:
    """The value the baseline allows: on a month-end day, up to the uplift above it."""
    if is_month_end(current.at, cfg.month_end_days) and current.value > baseline:
        return min(current.value, baseline + cfg.month_end_uplift * abs(baseline))
    return baseline


def _relative(value: float, expected: float, level: float | None) -> float | None:
    if expected != 0:
        return (value - expected) / abs(expected)
    if level:
        return value / abs(level)
    return None


def _z(current: HistoryPoint, baseline: float, spread: float, cfg: DriftConfig) -> float:
    value = current.value
    if is_month_end(current.at, cfg.month_end_days):
        upper = baseline + cfg.month_end_uplift * abs(baseline)
        if value > upper:
            return (value - upper) / spread
        if value >= baseline:
            return 0.0
    return (value - baseline) / spread
