"""Stored metric points (``metric_points``): saving them, reading a series back, and
scoring each new point against its own history."""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import sqlalchemy as sa

from monitor.core.columns import TOUCHED_SUFFIX
from monitor.core.sections import DriftConfig
from monitor.observe.drift import DriftResult, HistoryPoint, score
from monitor.observe.profile import MetricPoint
from monitor.store.state import metric_points

PER_ROW = "per_row:"  # a run's growth of a sum per row it added (:func:`_per_row_points`)
_NO_HISTORY = DriftResult(None, None, None, 0, False, "no history")
_NO_CHANGE = DriftResult(None, None, None, 0, False, "no change")


def save_points(state_engine: sa.Engine, points: Iterable[MetricPoint]) -> int:
    """Append points to ``metric_points``; returns the number written."""
    rows = [
        {
            "run_id": p.run_id,
            "model": p.model,
            "layer": p.layer,
            "metric": p.metric,
            "value": p.value,
            "observed_at": _utc_naive(p.observed_at),
            "z": p.z,
            "anomalous": p.anomalous,
        }
        for p in points
    ]
    if rows:
        with state_engine.begin() as conn:
            conn.execute(metric_points.insert(), rows)
    return len(rows)


def load_history(
    state_engine: sa.Engine,
    model: str,
    metric: str,
    before: datetime | None = None,
    limit: int | None = None,
) -> list[HistoryPoint]:
    """Stored points of one series strictly before ``before``, oldest first.

    One point per ``observed_at`` (the latest written wins, so a re-run of the same
    logical day replaces the earlier one); ``limit`` keeps the most recent points.
    ``at`` comes back as an aware UTC datetime.
    """
    mp = metric_points
    latest = sa.select(sa.func.max(mp.c.id)).where(mp.c.model == model, mp.c.metric == metric)
    if before is not None:
        latest = latest.where(mp.c.observed_at < _utc_naive(before))
    latest = latest.group_by(mp.c.observed_at)
    query = (
        sa.select(mp.c.observed_at, mp.c.value, mp.c.anomalous)
        .where(mp.c.id.in_(latest))
        .order_by(mp.c.observed_at.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    with state_engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        HistoryPoint(at=r.observed_at.replace(tzinfo=UTC), value=r.value, anomalous=r.anomalous)
        for r in reversed(rows)
    ]


def score_points(
    state_engine: sa.Engine, points: Sequence[MetricPoint], cfg: DriftConfig,
    rows_added: Mapping[str, float] | None = None,
) -> list[tuple[MetricPoint, DriftResult]]:
    """Score each point against its stored history; returns points with z/anomalous set.

    Metrics not matching ``cfg.metrics`` get reason ``not scored``. Metrics in
    ``cfg.delta_metrics`` are scored as the change since the previous stored point
    (a cumulative count drifts upward forever; its daily growth does not).
    Save the returned points with :func:`save_points` so their flags feed back.
    ``rows_added``: per model, the rows the run added: the derived ``per_row:`` means
    are floored at their sampling noise while their baseline is short.
    """
    out: list[tuple[MetricPoint, DriftResult]] = []
    added: dict[tuple[str, str], float] = {}  # this run's growth of each cumulative metric
    for p in points:
        if not any(fnmatch.fnmatchcase(p.metric, pat) for pat in cfg.metrics):
            out.append((p, DriftResult(None, None, None, 0, False, "not scored")))
            continue
        # Twice the window: flagged and month-end points are left out of baselines.
        history = load_history(
            state_engine, p.model, p.metric, before=p.observed_at, limit=cfg.window * 2 + 1,
        )  # fmt: skip
        current: HistoryPoint | None = HistoryPoint(_utc(p.observed_at), p.value)
        # A mean-like metric has no weekday pattern to learn: rescaling only adds noise.
        level, scfg = None, replace(cfg, seasonal=False) if cfg.is_stable(p.metric) else cfg
        if current is not None and (cfg.is_delta(p.metric) or p.metric.startswith(PER_ROW)):
            # N days of a cumulative metric are N - 1 changes: the same days of history
            # make a change series as ready as a level series.
            scfg = replace(scfg, min_history=max(0, cfg.min_history - 1))
        if current is not None and cfg.is_delta(p.metric):
            level = history[-1].value if history else None
            history, current = _as_deltas(history, current)
            history = _changes(history)
            if current is not None:
                added[(p.model, p.metric)] = current.value
        if current is not None and level is not None and current.value == 0 and any(
                h.value for h in history):
            res = _NO_CHANGE  # nothing delivered or merged: freshness and the gate own that
        else:
            noise = cfg.sampling_noise_ratio((rows_added or {}).get(p.model, 0.0))
            res = (score(history, current, scfg, level, cfg.floor_ratio(p.metric), noise)
                   if current is not None else _NO_HISTORY)
        out.append((replace(p, z=res.z, anomalous=res.anomalous), res))
    derived = _per_row_points(points, added)
    rows = {model: n for (model, metric), n in added.items() if metric == "row_count"}
    return out + (score_points(state_engine, derived, cfg, rows) if derived else [])


def _per_row_points(points: Sequence[MetricPoint], added: dict[tuple[str, str], float]
                    ) -> list[MetricPoint]:
    """``per_row:<column>``: what a run added to a sum per row it added. Duplicated
    payments inflate a mart's sum without adding orders; the sum's growth alone moves
    no more than a busy day, the sum per added row moves far less."""
    out = []
    for p in points:
        if not p.metric.startswith("sum:") or p.metric.endswith(TOUCHED_SUFFIX):
            continue
        rows = added.get((p.model, "row_count"))
        total = added.get((p.model, p.metric))
        if rows and rows > 0 and total is not None:
            out.append(replace(p, metric=PER_ROW + p.metric[4:], value=total / rows,
                               z=None, anomalous=False))
    return out


def _changes(deltas: list[HistoryPoint]) -> list[HistoryPoint]:
    """The days something changed: a day without a delivery (an unchanged file
    re-delivered, a cycle with nothing new) is not a growth of 0 to learn from. A series
    that never changed keeps its zeros, so its first change is scored."""
    changed = [h for h in deltas if h.value != 0]
    return changed or deltas


def _as_deltas(
    history: Sequence[HistoryPoint], current: HistoryPoint
) -> tuple[list[HistoryPoint], HistoryPoint | None]:
    """Turn a level series into a change series; a delta inherits its later point's flag."""
    if not history:
        return [], None
    deltas = [
        HistoryPoint(b.at, b.value - a.value, b.anomalous) for a, b in itertools.pairwise(history)
    ]
    return deltas, HistoryPoint(current.at, current.value - history[-1].value)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _utc_naive(at: datetime) -> datetime:
    return _utc(at).replace(tzinfo=None)
