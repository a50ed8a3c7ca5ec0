"""Weekly seasonality learned from a short history (pure functions, no I/O).

A weekday gets its own factor once it has :data:`MIN_SAME_WEEKDAY` points; before that
the weekday/weekend ratio of the days seen stands in, so two weeks already give a
baseline. Factors are multiplicative: a series with zeros or negatives is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
from scipy.stats import median_abs_deviation

__all__ = ["MIN_SAME_WEEKDAY", "Expected", "basis", "expect", "rescaled", "weekday_factors"]

MIN_SAME_WEEKDAY = 3  # points of one weekday before it gets its own factor
MIN_CLASS = 1  # points of weekdays (or weekend days) before their ratio is learned

Point = tuple[date, float]


def _weekend(weekday: int) -> bool:
    return weekday >= 5


def weekday_factors(points: Sequence[Point]) -> dict[int, float]:
    """Each weekday's level relative to the median of all points (1.0: no pattern known)."""
    values = [v for _, v in points]
    if len(values) < 2 or min(values) <= 0:
        return dict.fromkeys(range(7), 1.0)
    overall = float(np.median(values))
    by_day: dict[int, list[float]] = {}
    by_class: dict[bool, list[float]] = {}
    for d, v in points:
        by_day.setdefault(d.weekday(), []).append(v)
        by_class.setdefault(_weekend(d.weekday()), []).append(v)
    out = {}
    for w in range(7):
        same = by_day.get(w, [])
        cls = by_class.get(_weekend(w), [])
        if len(same) >= MIN_SAME_WEEKDAY:
            out[w] = float(np.median(same)) / overall
        elif len(cls) >= MIN_CLASS:
            out[w] = float(np.median(cls)) / overall
        else:
            out[w] = 1.0
    return out


def basis(points: Sequence[Point], day: date) -> str:
    """How the expectation for ``day`` was seasonally adjusted, for reports."""
    if len(points) < 2 or min(v for _, v in points) <= 0:
        return "all days"
    same = sum(1 for d, _ in points if d.weekday() == day.weekday())
    if same >= MIN_SAME_WEEKDAY:
        return "same weekday"
    cls = sum(1 for d, _ in points if _weekend(d.weekday()) == _weekend(day.weekday()))
    return "weekday/weekend ratio" if cls >= MIN_CLASS else "all days"


def rescaled(points: Sequence[Point], weekday: int) -> list[float]:
    """Every point as it would read on ``weekday``."""
    f = weekday_factors(points)
    return [v * f[weekday] / f[d.weekday()] for d, v in points]


@dataclass(frozen=True)
class Expected:
    """What a day should read: ``value``, from ``n`` points; ``log_spread`` is the robust
    spread of ln(actual / expected) over those points (0 for a flat history)."""

    value: float
    n: int
    log_spread: float
    basis: str


def expect(points: Sequence[Point], day: date) -> Expected | None:
    """The seasonal expectation of ``day`` from earlier points (median of the rescaled
    points), or None without any."""
    if not points:
        return None
    adj = rescaled(points, day.weekday())
    value = float(np.median(adj))
    spread = 0.0
    if len(adj) > 1 and min(adj) > 0:
        spread = float(median_abs_deviation(np.log(adj), scale="normal"))
    return Expected(value, len(adj), spread if math.isfinite(spread) else 0.0,
                    basis(points, day))
