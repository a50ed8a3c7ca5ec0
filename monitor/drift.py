"""Z-score drift detection for metric series (pure functions, no I/O).

A point is compared with a baseline trained on earlier comparable points: strictly
before it, not flagged anomalous themselves (an incident never raises later baselines),
outside the month-end regime when one is configured, the ``window`` most recent.

With ``seasonal`` the weekly pattern is learned from those same points (see
:mod:`monitor.seasonal`): each point is rescaled to the tested day's weekday, so two
weeks of history already give a baseline for a Saturday, where comparing only with
earlier Saturdays needed ``min_history`` weeks.

Scores stay bounded and readable: the spread is floored at a share of the baseline (and,
for a change series, of the level it changes), ``|z|`` is capped at :data:`Z_CAP`, and
every result carries the expected value and the relative change beside z.
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

from monitor.seasonal import rescaled

__all__ = [
    "TOUCHED_SUFFIX", "Z_CAP", "DriftConfig", "DriftResult", "HistoryPoint", "is_month_end",
    "score", "score_series",
]

# |z| past this says nothing more than "far outside": a flat history must not print 1e11.
Z_CAP = 100.0

# Ends the name of an aggregate over the rows one cycle published (profile.AggregateSpec).
TOUCHED_SUFFIX = ":touched"


@dataclass(frozen=True)
class DriftConfig:
    """Drift scoring settings (TOML section ``[drift]``).

    Keys:
        window: max number of comparable prior points in the baseline (28).
        min_history: fewer comparable points → z reported, never flagged (14).
        seasonal: rescale the baseline to the tested weekday, with the weekly pattern
            learned from the baseline's own points (True).
        robust: median/MAD instead of mean/std (True).
        threshold: |z| at or above this → anomalous, severity ``warning`` (3.0).
        hard_limit: |z| at or above this → severity ``critical`` (6.0).
        seasonal_fallback: kept for old config files; the learned weekly pattern made
            it moot (every weekday is comparable once rescaled).
        min_spread_ratio: spread floor as a fraction of |baseline| (0.1): day-to-day
            business volumes move by more than their own short history shows.
        min_stable_spread_ratio: the floor for ``stable_metrics`` (0.02): a sum per added
            row or a median moves far less from day to day than a volume does, so a 20%
            inflation of a mart's sum per row is drift where a 20% busier day is not.
        stable_metrics: globs of metrics with that lower floor.
        per_row_cv: the spread of a column's values relative to their mean, assumed for
            a ``per_row:`` mean over the rows one run added while its baseline is too
            short to show its own spread (1.0): the spread is then floored at the mean's
            sampling noise, ``per_row_cv / sqrt(rows added)`` of the baseline; 300
            added rows move a mean by ~6% by chance, 20M rows by ~0.02%.
        spread_min_points: baselines with fewer points than this do not trust their own
            robust spread alone: the sampling-noise floor above applies (5).
        min_level_ratio: for a change series, spread floor as a fraction of the level it
            changes (0.001): a table that never grew does not make +1 row infinite.
        min_spread_abs: absolute spread floor, for baselines at 0 (1e-9).
        month_end_days: last N days of a month form a separate regime; 0 = off (0).
        month_end_uplift: allowed relative rise on month-end days (0.0).
        metrics: fnmatch patterns of metric names to score (all).
        delta_metrics: globs of cumulative metrics scored as change since the previous
            point rather than as levels (``row_count``, ``distinct_keys``).
    """

    window: int = 28
    min_history: int = 14
    seasonal: bool = True
    robust: bool = True
    threshold: float = 3.0
    hard_limit: float = 6.0
    seasonal_fallback: bool = False
    min_spread_ratio: float = 0.1
    min_stable_spread_ratio: float = 0.02
    stable_metrics: tuple[str, ...] = ("per_row:*", "median:*", "mean:*", "avg:*")
    per_row_cv: float = 1.0
    spread_min_points: int = 5
    min_level_ratio: float = 0.001
    min_spread_abs: float = 1e-9
    month_end_days: int = 0
    month_end_uplift: float = 0.0
    metrics: tuple[str, ...] = ("*",)
    # Sums over a growing table grow with it: their daily increment is what drifts.
    delta_metrics: tuple[str, ...] = ("row_count", "distinct_keys", "sum:*")

    def __post_init__(self) -> None:
        # A TOML loader hands arrays over as lists; keep the dataclass hashable.
        for name in ("metrics", "delta_metrics", "stable_metrics"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.window < 1 or self.min_history < 0:
            raise ValueError("drift window must be >= 1 and min_history >= 0")
        if not 0 < self.threshold <= self.hard_limit:
            raise ValueError("drift needs 0 < threshold <= hard_limit")
        if self.per_row_cv < 0 or self.spread_min_points < 0:
            raise ValueError("drift per_row_cv and spread_min_points must be >= 0")
        if not 0 <= self.month_end_days <= 28 or self.month_end_uplift < 0:
            raise ValueError("month_end_days must be 0..28 and month_end_uplift >= 0")

    def is_stable(self, metric: str) -> bool:
        """A mean-like metric (a median, a sum per row): no weekly volume pattern, a
        lower spread floor."""
        return any(fnmatch.fnmatchcase(metric, pat) for pat in self.stable_metrics)

    def floor_ratio(self, metric: str) -> float:
        """The spread floor, as a share of the baseline, for this metric."""
        return self.min_stable_spread_ratio if self.is_stable(metric) else self.min_spread_ratio

    def sampling_noise_ratio(self, rows: float) -> float:
        """A mean over ``rows`` rows moves by chance by this share of itself."""
        return self.per_row_cv / math.sqrt(rows) if rows > 0 else 0.0

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
