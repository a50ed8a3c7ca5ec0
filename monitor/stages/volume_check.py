"""The gate's volume step: measure pending batches in the warehouse, judge each feed-day
(:mod:`monitor.volume`), keep the measures in the state store as the next days' history.

Data access lives here; the rules live in :mod:`monitor.volume`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core import seasonal
from monitor.core.sections import VolumeBands, VolumeConfig
from monitor.quality.results import ExpectationResult, SuiteResult
from monitor.stages.volume import CHECK_OK, CHECK_RESEND, DayVerdict, delivery_day, judge
from monitor.store import state
from monitor.store.batches import PUBLISHED, Batch, list_batches
from monitor.warehouse.connection import backend_of

log = logging.getLogger(__name__)

SUITE_PREFIX = "volume_"
SAMPLE_ROWS = 200_000  # batches above twice this are measured on a key-hash sample


# ------------------------------------------------------------------------- measuring


@dataclass
class Measure:
    """One pending batch as the day volume sees it."""

    batch: Batch
    day: date
    rows: int  # distinct rows (estimated on a key-hash sample for a large batch)
    kind: str = "main"  # main | supplement | resend
    resend_of: str | None = None
    known_keys: float | None = None


def _q(conn: sa.Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _sample(conn: sa.Connection, keys: Sequence[str], rows: int) -> str:
    """A predicate keeping the rows whose key hashes to 0 modulo ~rows/200k (where the
    warehouse backend has a cheap hash; all rows elsewhere). Rows with equal keys stay
    together, so duplicate shares hold."""
    modulus = rows // SAMPLE_ROWS if rows > 2 * SAMPLE_ROWS else 1
    if modulus <= 1 or not keys:
        return "1 = 1"
    return backend_of(conn).key_hash_sample(conn, keys, modulus)


def _rel(conn: sa.Connection, schema: str, feed: str) -> str:
    return f"{_q(conn, schema)}.{_q(conn, feed)}"


def _distinct_rows(conn: sa.Connection, schema: str, feed: str, cols: Sequence[str],
                   keys: Sequence[str], batch: Batch) -> int:
    cols_sql = ", ".join(_q(conn, c) for c in cols)
    pred = _sample(conn, keys, batch.rows_loaded)
    row = conn.execute(sa.text(
        f"select count(*) as n, (select count(*) from {_rel(conn, schema, feed)} "
        f"where _batch_id = :b and {pred}) as raw from (select distinct {cols_sql} from "
        f"{_rel(conn, schema, feed)} where _batch_id = :b and {pred}) d"
    ), {"b": batch.batch_id}).one()
    if not row.raw:
        return 0
    return round(batch.rows_loaded * row.n / row.raw)


def _shared_share(conn: sa.Connection, schema: str, feed: str, cols: Sequence[str],
                  keys: Sequence[str], batch: Batch, other: Batch) -> float:
    """Share of ``batch``'s distinct rows that ``other`` has too."""
    cols_sql = ", ".join(_q(conn, c) for c in cols)
    pred = _sample(conn, keys, max(batch.rows_loaded, other.rows_loaded))
    rel = _rel(conn, schema, feed)
    row = conn.execute(sa.text(
        f"select (select count(*) from (select {cols_sql} from {rel} where _batch_id = :b "
        f"and {pred} intersect select {cols_sql} from {rel} where _batch_id = :o and {pred}) i)"
        f" as shared, (select count(*) from (select distinct {cols_sql} from {rel} "
        f"where _batch_id = :b and {pred}) d) as n"
    ), {"b": batch.batch_id, "o": other.batch_id}).one()
    return row.shared / row.n if row.n else 0.0


def _known_keys(conn: sa.Connection, schema: str, feed: str, keys: Sequence[str],
                batch: Batch, history: Sequence[str]) -> float:
    """Share of the batch's distinct keys found in the given published batches."""
    if not keys or not history:
        return 0.0
    rel = _rel(conn, schema, feed)
    keys_sql = ", ".join(_q(conn, k) for k in keys)
    ids = ", ".join(f":h{i}" for i in range(len(history)))
    row = conn.execute(sa.text(
        f"select (select count(*) from (select {keys_sql} from {rel} where _batch_id = :b "
        f"intersect select {keys_sql} from {rel} where _batch_id in ({ids})) i) as known, "
        f"(select count(*) from (select distinct {keys_sql} from {rel} where _batch_id = :b) d)"
        " as n"
    ), {"b": batch.batch_id, **{f"h{i}": h for i, h in enumerate(history)}}).one()
    return row.known / row.n if row.n else 0.0


# ------------------------------------------------------------------------- history

volumes = state.batch_volumes


def recorded(st: sa.Engine, batch_ids: Sequence[str]) -> dict[str, tuple[date, int, str]]:
    """(day, rows, kind) of batches the gate measured before."""
    if not batch_ids:
        return {}
    out: dict[str, tuple[date, int, str]] = {}
    with st.connect() as conn:
        for i in range(0, len(batch_ids), 500):
            chunk = list(batch_ids[i:i + 500])
            q = sa.select(volumes.c.batch_id, volumes.c.day, volumes.c.rows, volumes.c.kind
                          ).where(volumes.c.batch_id.in_(chunk))
            out.update({r.batch_id: (r.day, r.rows, r.kind) for r in conn.execute(q)})
    return out


def record(st: sa.Engine, measures: Sequence[Measure]) -> None:
    """Keep what the gate measured: the next days' history."""
    if not measures:
        return
    now = state.utcnow()
    with st.begin() as conn:
        conn.execute(volumes.delete().where(
            volumes.c.batch_id.in_([m.batch.batch_id for m in measures])))
        conn.execute(volumes.insert(), [
            {"batch_id": m.batch.batch_id, "feed": m.batch.feed, "day": m.day, "rows": m.rows,
             "kind": m.kind, "recorded_at": now} for m in measures])


def day_totals(published: Sequence[Batch], known: dict[str, tuple[date, int, str]],
               feed_dir: Path) -> dict[date, int]:
    """Rows per delivery day of a feed's published batches; supplements and resends do
    not count. Batches from before the gate measured them count as loaded, on the date
    in their path (else the day they were ingested)."""
    out: dict[date, int] = {}
    for b in published:
        if b.batch_id in known:
            day, rows, kind = known[b.batch_id]
            if kind != "main":
                continue
        else:
            day = delivery_day(b.source_file, feed_dir, b.ingested_at.date())
            rows = b.rows_loaded
        out[day] = out.get(day, 0) + rows
    return out


# ------------------------------------------------------------------------- results


def _expectation(check: str, success: bool, observed: dict[str, Any]) -> ExpectationResult:
    return ExpectationResult(
        expectation_type="expect_feed_day_volume", column=None, kwargs_json="{}",
        success=success, observed_value=observed, unexpected_count=None,
        unexpected_values=[], check=check,
    )


def suite_result(m: Measure, verdict: DayVerdict | None) -> SuiteResult:
    """The volume verdict of one batch, recorded with the contracts' results."""
    suite = f"{SUITE_PREFIX}{m.batch.feed}"
    if m.kind == "resend":
        r = _expectation(CHECK_RESEND, False, {
            "resend_of": m.resend_of, "rows": m.rows,
            "reason": f"repeats batch {m.resend_of} of the same cycle"})
        return SuiteResult(suite, "contract", m.batch.feed, m.batch.batch_id, False, [r])
    if m.kind == "supplement" or verdict is None:
        r = _expectation(CHECK_OK, True,
                         {"kind": m.kind, "rows": m.rows, "known_keys": m.known_keys})
        return SuiteResult(suite, "contract", m.batch.feed, m.batch.batch_id, True, [r])
    ok = verdict.status != "hold"
    r = _expectation(verdict.check, ok, verdict.to_json())
    return SuiteResult(suite, "contract", m.batch.feed, m.batch.batch_id, ok, [r])


# ------------------------------------------------------------------------- the gate's step


@dataclass
class VolumeOutcome:
    """Per pending batch its volume result; per judged feed-day its verdict."""

    results: dict[str, SuiteResult] = field(default_factory=dict)
    days: list[DayVerdict] = field(default_factory=list)
    measures: list[Measure] = field(default_factory=list)


@dataclass(frozen=True)
class FeedSpec:
    """What the volume step needs of a feed's file contract."""

    columns: tuple[str, ...]
    key: tuple[str, ...]
    folder: Path


def check(wh: sa.Engine, st: sa.Engine, schema: str, feeds: dict[str, FeedSpec],
          cfg: VolumeConfig, pending: Sequence[Batch], day: date,
          month_end: tuple[int, float] = (0, 0.0)) -> VolumeOutcome:
    """Measure and judge the pending batches of every feed; record the measures."""
    out = VolumeOutcome()
    for feed in sorted({b.feed for b in pending}):
        bands, spec = cfg.bands(feed), feeds.get(feed)
        if not bands.enabled or spec is None:
            continue
        mine = [b for b in pending if b.feed == feed]
        with wh.connect() as conn:
            published = list_batches(conn, schema, status=PUBLISHED, feed=feed)
            measures = [Measure(b, delivery_day(b.source_file, spec.folder, day),
                                _distinct_rows(conn, schema, feed, spec.columns, spec.key, b))
                        for b in mine]
            _mark_resends(conn, schema, feed, spec, bands, measures)
            totals = day_totals(published, recorded(st, [b.batch_id for b in published]),
                                spec.folder)
            for d in sorted({m.day for m in measures}):
                today = [m for m in measures if m.day == d]
                history = {k: v for k, v in totals.items() if k < d}
                _mark_supplements(conn, schema, feed, spec, bands, today, history,
                                  totals.get(d, 0), [b.batch_id for b in published])
                mains = [m for m in today if m.kind == "main"]
                if not mains:
                    continue
                verdict = judge(feed, d, totals.get(d, 0) + sum(m.rows for m in mains),
                                history, bands, *month_end)
                verdict.batches = [m.batch.batch_id for m in mains]
                out.days.append(verdict)
                _log(verdict)
        for m in measures:
            v = next((x for x in out.days if x.feed == feed and x.day == m.day), None)
            out.results[m.batch.batch_id] = suite_result(m, v)
        out.measures += measures
    record(st, out.measures)
    return out


def _mark_resends(conn: sa.Connection, schema: str, feed: str, spec: FeedSpec,
                  bands: VolumeBands, measures: Sequence[Measure]) -> None:
    """A batch made mostly of rows an earlier batch of this cycle has is a resend."""
    for i, m in enumerate(measures):
        for prev in measures[:i]:
            if prev.kind == "resend" or not m.rows:
                continue
            share = _shared_share(conn, schema, feed, spec.columns, spec.key, m.batch,
                                  prev.batch)
            if share >= bands.resend_share:
                m.kind, m.resend_of = "resend", prev.batch.batch_id
                log.warning("batch %s repeats %.0f%% of the rows of %s (same cycle): a resend",
                            m.batch.batch_id, 100 * share, prev.batch.batch_id)
                break


def _mark_supplements(conn: sa.Connection, schema: str, feed: str, spec: FeedSpec,
                      bands: VolumeBands, today: Sequence[Measure], history: dict[date, int],
                      published_rows: int, published_ids: Sequence[str]) -> None:
    """Small batches of known keys on a day that has its main delivery are supplements."""
    lo = today[0].day - timedelta(days=bands.window_days)
    points = sorted((d, float(v)) for d, v in history.items() if d >= lo and v > 0)
    exp = seasonal.expect(points, today[0].day)
    if exp is None or exp.n < bands.warn_after_days or exp.value <= 0:
        return
    small = bands.supplement_max_ratio * exp.value
    mains = [m for m in today if m.kind == "main"]
    if published_rows < small and not any(m.rows >= small for m in mains):
        return  # nothing on this day is a full delivery: a small batch is a partial day
    recent = list(published_ids[-bands.history_batches:])
    for m in mains:
        if m.rows >= small:
            continue
        m.known_keys = _known_keys(conn, schema, feed, spec.key, m.batch, recent)
        if m.known_keys >= bands.supplement_known_keys:
            m.kind = "supplement"
            log.info("batch %s: %d rows, %.0f%% of keys known: a supplement to %s of %s",
                     m.batch.batch_id, m.rows, 100 * m.known_keys, feed, m.day)


def _log(v: DayVerdict) -> None:
    level = {"hold": logging.WARNING, "warning": logging.WARNING}.get(v.status, logging.INFO)
    log.log(level, "volume %s: %s", v.status, v.reason)
