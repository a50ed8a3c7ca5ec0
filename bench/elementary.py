"""A baseline to compare the monitor with: Elementary's ``volume_anomalies`` defaults.

Not product code: the rehearsal runs it on the same daily series it reads from the
warehouse, so its table can say what a stock setup would have caught. The defaults
mimicked are Elementary's documented ones: daily buckets, a 14-day training period,
``anomaly_sensitivity`` 3 (|z| of mean/standard deviation), no seasonality (every
weekday in one baseline), both directions. A point is scored against the points
before it (the training set never contains the tested point; older Elementary
versions included it, which only damps z), and only once the training set is full.
A constant training set (stddev 0) scores 0, as Elementary does.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TRAINING_DAYS = 14
SENSITIVITY = 3.0


@dataclass(frozen=True)
class Score:
    """One point of one series: its z-score (None while the training set is short)."""

    series: str
    index: int
    value: float
    z: float | None

    @property
    def anomalous(self) -> bool:
        return self.z is not None and abs(self.z) >= SENSITIVITY


def zscore(history: Sequence[float], value: float, training: int = TRAINING_DAYS) -> float | None:
    """z of ``value`` against the last ``training`` points of ``history`` (None if fewer)."""
    window = list(history)[-training:]
    if len(window) < training:
        return None
    sd = statistics.stdev(window)  # sample stddev, like the warehouses' stddev()
    if sd == 0:
        return 0.0
    return (value - statistics.fmean(window)) / sd


def score_series(name: str, values: Sequence[float], training: int = TRAINING_DAYS) -> list[Score]:
    """Every point of one daily series scored against the points before it."""
    return [Score(name, i, v, zscore(values[:i], v, training)) for i, v in enumerate(values)]


def flagged_days(series: Mapping[str, Sequence[float]],
                 training: int = TRAINING_DAYS) -> dict[int, list[Score]]:
    """Day index -> the anomalous scores of that day, over all series (same length each)."""
    out: dict[int, list[Score]] = {}
    for name, values in series.items():
        for s in score_series(name, values, training):
            if s.anomalous:
                out.setdefault(s.index, []).append(s)
    return out
