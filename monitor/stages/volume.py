"""Feed-day volume against a seasonal expectation, judged before anything is published.

The day (a feed's batches of one delivery day, exact duplicate rows once) is compared
with the feed's own history for that weekday; surges, partial days, supplements and
resends are told apart (the rules: README; the verdicts: docs/contracts.md).
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from monitor.core import seasonal
from monitor.core.sections import VolumeBands

# Check names; triage maps them to a root cause (volume_surge, partial_delivery,
# duplicate_batch).
CHECK_SURGE, CHECK_DROP, CHECK_RESEND = "day_volume_surge", "day_volume_partial", "resend_in_cycle"
CHECK_OK = "day_volume"
_DATE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")


# ------------------------------------------------------------------------ delivery day


@typing.overload
def delivery_day(source_file: str, feed_dir: Path, default: date) -> date: ...
@typing.overload
def delivery_day(source_file: str, feed_dir: Path, default: None) -> date | None: ...
def delivery_day(source_file: str, feed_dir: Path, default: date | None) -> date | None:
    """The first valid date in the file's path below its feed folder, else ``default``."""
    path = Path(source_file)
    try:
        parts = path.relative_to(feed_dir).parts
    except ValueError:
        parts = path.parts[-2:]
    for part in parts:
        for m in _DATE.finditer(part):
            try:
                return date(int(m[1]), int(m[2]), int(m[3]))
            except ValueError:
                continue
    return default


# ------------------------------------------------------------------------- judging


@dataclass
class DayVerdict:
    """The volume of one feed-day, judged."""

    feed: str
    day: date
    rows: int
    expected: float | None
    history_days: int
    basis: str
    status: str  # ok | warning | hold | unjudged
    reason: str
    z: float | None = None
    batches: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.rows / self.expected if self.expected else None

    @property
    def check(self) -> str:
        r = self.ratio
        if self.status in ("hold", "warning") and r is not None:
            return CHECK_SURGE if r > 1 else CHECK_DROP
        return CHECK_OK

    def to_json(self) -> dict[str, Any]:
        return {"feed": self.feed, "day": self.day.isoformat(), "rows": self.rows,
                "expected": None if self.expected is None else round(self.expected, 1),
                "ratio": None if self.ratio is None else round(self.ratio, 3),
                "relative_change": None if self.ratio is None else round(self.ratio - 1, 3),
                "z": None if self.z is None else round(self.z, 2),
                "history_days": self.history_days, "basis": self.basis,
                "status": self.status, "reason": self.reason}


def judge(feed: str, day: date, rows: int, history: dict[date, int], bands: VolumeBands,
          month_end_days: int = 0, month_end_uplift: float = 0.0) -> DayVerdict:
    """Judge one feed-day's ``rows`` against the days before it."""
    lo = day - timedelta(days=bands.window_days)
    points = sorted((d, float(v)) for d, v in history.items() if lo <= d < day and v > 0)
    n = len(points)
    exp = seasonal.expect(points, day)
    same_class = any((d.weekday() >= 5) == (day.weekday() >= 5) for d, _ in points)
    if exp is None or not same_class or exp.value <= 0:
        why = "no history" if exp is None else "no earlier day of this kind (weekday/weekend)"
        return DayVerdict(feed, day, rows, exp.value if exp else None, n,
                          exp.basis if exp else "-", "unjudged", why)
    expected = exp.value
    if _month_end(day, month_end_days) and rows > expected:
        expected = min(rows, expected * (1 + month_end_uplift))
    ratio = rows / expected
    spread = max(exp.log_spread, math.log1p(bands.min_relative_spread))
    z = max(-100.0, min(100.0, math.log(ratio) / spread if ratio > 0 else -math.inf))
    text = (f"{feed} on {day}: {rows:,} rows vs {expected:,.0f} expected ({ratio:.2f}x; "
            f"{exp.basis}, {n} days of history)")

    def verdict(status: str, why: str = "") -> DayVerdict:
        return DayVerdict(feed, day, rows, expected, n, exp.basis, status,
                          f"{text}; {why}" if why else text, z)

    if n >= bands.hold_after_days and _outside(ratio, bands.drop_ratio, bands.surge_ratio):
        return verdict("hold", f"band {bands.drop_ratio:g}x-{bands.surge_ratio:g}x")
    cold = (min(bands.cold_drop_ratio, bands.drop_ratio),
            max(bands.cold_surge_ratio, bands.surge_ratio))  # never inside the normal band
    if _outside(ratio, *cold):
        return verdict("hold", f"outside {cold[0]:g}x-{cold[1]:g}x even on a short history")
    if n < bands.warn_after_days:
        return verdict("unjudged", f"{n} day(s) of history, {bands.warn_after_days} needed")
    if _outside(ratio, bands.drop_ratio, bands.surge_ratio):
        return verdict("warning", f"outside the band, {bands.hold_after_days} days of "
                                  "history needed to hold")
    if abs(z) >= bands.warn_z:
        return verdict("warning", f"z={z:+.1f}")
    return verdict("ok")


def _outside(ratio: float, low: float, high: float) -> bool:
    return ratio >= high or ratio <= low


def _month_end(day: date, days: int) -> bool:
    if days <= 0:
        return False
    nxt = day + timedelta(days=days)
    return nxt.month != day.month
