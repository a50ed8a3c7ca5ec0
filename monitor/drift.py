"""Z-score drift detection for metric series (pure functions, no I/O).

A point is compared with a baseline trained on earlier *comparable* points:

* only points strictly before the point under test (so it is never in its own baseline);
* points already flagged anomalous are dropped *before* the window is taken, so an
  incident day neither raises the baseline nor shortens the window of later days;
* with ``seasonal`` only points on the same weekday (weekly seasonality of daily
  metrics; ``at`` should be the logical day of the data, in UTC);
* with ``month_end_days > 0`` the last N days of each month are their own regime: they
  are left out of every baseline, and a month-end point is tested against the regular
  baseline with an allowed rise of ``month_end_uplift`` × |baseline| (deviation is
  measured from the nearest edge of ``[baseline, baseline·(1+uplift)]``); drops are not
  tolerated;
* then the ``window`` most recent remaining points.

Seasonal fallback (choice): if fewer than ``min_history`` same-weekday points exist the
result is ``insufficient history`` (not flagged) unless ``seasonal_fallback`` is set, in
which case all weekdays are used until enough same-weekday points exist. Off by default
because mixing weekdays makes a normal weekend dip look like an incident.

Spread: robust mode uses the median and ``median_abs_deviation(scale='normal')``,
otherwise mean and sample standard deviation (ddof=1). The spread is floored at
``max(min_spread_ratio·|baseline|, min_spread_abs)`` so a perfectly flat series still
yields a finite z (identical value → 0, a 3× jump → large).
"""

from __future__ import annotations

import calendar
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
from scipy.stats import median_abs_deviation

__all__ = [
    "TOUCHED_SUFFIX", "DriftConfig", "DriftResult", "HistoryPoint", "is_month_end", "score",
    "score_series",
]

# Ends the name of an aggregate over the rows one cycle published (profile.AggregateSpec).
TOUCHED_SUFFIX = ":touched"


@dataclass(frozen=True)
class DriftConfig:
    """Drift scoring settings (TOML section ``[drift]``).

    Keys:
        window: max number of comparable prior points in the baseline (14).
        min_history: fewer comparable points → z reported, never flagged (7).
        seasonal: compare only with the same weekday (True).
        robust: median/MAD instead of mean/std (True).
        threshold: |z| at or above this → anomalous, severity ``warning`` (3.0).
        hard_limit: |z| at or above this → severity ``critical`` (6.0).
        seasonal_fallback: use all weekdays while same-weekday history is short (False).
        min_spread_ratio: spread floor as a fraction of |baseline| (0.05).
        min_spread_abs: absolute spread floor, for baselines at 0 (1e-9).
        month_end_days: last N days of a month form a separate regime; 0 = off (0).
        month_end_uplift: allowed relative rise on month-end days (0.0).
        metrics: fnmatch patterns of metric names to score (all).
        delta_metrics: globs of cumulative metrics scored as change since the previous
            point rather than as levels (``row_count``, ``distinct_keys``).
    """

    window: int = 14
    min_history: int = 7
    seasonal: bool = True
    robust: bool = True
    threshold: float = 3.0
    hard_limit: float = 6.0
    seasonal_fallback: bool = False
    min_spread_ratio: float = 0.05
    min_spread_abs: float = 1e-9
    month_end_days: int = 0
    month_end_uplift: float = 0.0
    metrics: tuple[str, ...] = ("*",)
    # Sums over a growing table grow with it: their daily increment is what drifts.
    delta_metrics: tuple[str, ...] = ("row_count", "distinct_keys", "sum:*")

    def __post_init__(self) -> None:
        # A TOML loader hands arrays over as lists; keep the dataclass hashable.
        for name in ("metrics", "delta_metrics"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.window < 1 or self.min_history < 0:
            raise ValueError("drift window must be >= 1 and min_history >= 0")
        if not 0 < self.threshold <= self.hard_limit:
            raise ValueError("drift needs 0 < threshold <= hard_limit")
        if not 0 <= self.month_end_days <= 28 or self.month_end_uplift < 0:
            raise ValueError("month_end_days must be 0..28 and month_end_uplift >= 0")

    def is_delta(self, metric: str) -> bool:
        """Scored as the change since the previous point: a cumulative metric. A
        ``:touched`` aggregate reads only the cycle's rows, so it is already per run."""
        return not metric.endswith(TOUCHED_SUFFIX) and any(
            fnmatch.fnmatchcase(metric, pat) for pat in self.delta_metrics)


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
    ``critical`` (only when ``anomalous``).
    """

    z: float | None
    baseline: float | None
    spread: float | None
    n: int
    anomalous: bool
    reason: str
    severity: str = "ok"


def is_month_end(at: datetime, days: int) -> bool:
    """True if ``at`` falls in the last ``days`` days of its month."""
    if days <= 0:
        return False
    last = calendar.monthrange(at.year, at.month)[1]
    return at.day > last - days


def score(history: Sequence[HistoryPoint], current: HistoryPoint, cfg: DriftConfig) -> DriftResult:
    """Score ``current`` against a baseline trained on ``history`` (see module doc)."""
    if not math.isfinite(current.value):
        return DriftResult(None, None, None, 0, False, "non-finite value")
    train = _training_values(history, current, cfg)
    n = len(train)
    if n == 0:
        return DriftResult(None, None, None, 0, False, "no history")
    baseline, spread = _baseline(train, cfg)
    z = _z(current, baseline, spread, cfg)
    if n < cfg.min_history:
        return DriftResult(z, baseline, spread, n, False, "insufficient history")
    if abs(z) >= cfg.hard_limit:
        return DriftResult(z, baseline, spread, n, True, "hard limit", "critical")
    if abs(z) >= cfg.threshold:
        return DriftResult(z, baseline, spread, n, True, "threshold", "warning")
    return DriftResult(z, baseline, spread, n, False, "ok")


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


def _comparable(p: HistoryPoint, current: HistoryPoint, cfg: DriftConfig, seasonal: bool) -> bool:
    if p.at >= current.at or p.anomalous or not math.isfinite(p.value):
        return False
    if is_month_end(p.at, cfg.month_end_days):
        return False
    return not seasonal or p.at.weekday() == current.at.weekday()


def _training_values(
    history: Sequence[HistoryPoint], current: HistoryPoint, cfg: DriftConfig
) -> list[float]:
    def pick(seasonal: bool) -> list[float]:
        pts = [p for p in history if _comparable(p, current, cfg, seasonal)]
        pts.sort(key=lambda p: p.at, reverse=True)
        return [p.value for p in pts[: cfg.window]]

    train = pick(cfg.seasonal)
    if cfg.seasonal and cfg.seasonal_fallback and len(train) < cfg.min_history:
        train = pick(False)
    return train


def _baseline(values: Sequence[float], cfg: DriftConfig) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    if cfg.robust:
        center = float(np.median(arr))
        spread = float(median_abs_deviation(arr, scale="normal"))
    else:
        center = float(arr.mean())
        spread = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    floor = max(cfg.min_spread_ratio * abs(center), cfg.min_spread_abs)
    return center, max(spread, floor)


def _z(current: HistoryPoint, baseline: float, spread: float, cfg: DriftConfig) -> float:
    value = current.value
    if is_month_end(current.at, cfg.month_end_days):
        upper = baseline + cfg.month_end_uplift * abs(baseline)
        if value > upper:
            return (value - upper) / spread
        if value >= baseline:
            return 0.0
    return (value - baseline) / spread
