"""Step 5, classification: the failure classes the evidence supports, most specific
first; the first is the root cause.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core import seasonal
from monitor.core.config import WarehouseConfig
from monitor.stages.volume import CHECK_DROP, CHECK_RESEND, CHECK_SURGE
from monitor.stages.volume_check import SUITE_PREFIX as VOLUME_SUITE_PREFIX
from monitor.store import state
from monitor.triage.batches import feed_relation
from monitor.triage.context import UNDETERMINED, Context, jsonable
from monitor.triage.expansion import source_ancestors
from monitor.triage.findings import (
    BatchFinding,
    ColumnShift,
    ExpansionPoint,
    Finding,
    Isolation,
    LayerCount,
)
from monitor.warehouse.connection import backend_for

SURGE_RATIO = 2.0  # rows added by a feed vs the baseline's → surge
# A model failing on its input's layout, in any engine's words; each backend adds its
# own (``Backend.schema_errors``: DuckDB's binder and conversion errors, PostgreSQL's).
_SCHEMA_ERRORS = r"column .* (not found|does not exist)"


def classify(
    ctx: Context, counts: Sequence[LayerCount], batches: Sequence[BatchFinding],
    shifts: Sequence[ColumnShift], expansion: ExpansionPoint, isolation: Isolation,
) -> list[Finding]:
    """Every class the evidence supports, most specific first (the first is the cause).

    1. schema_drift: a file quarantined whole, a model failing on a missing/retyped
       column, a contract failing on the column set, or a column that turns NULL in a
       model while its raw values are present (no longer parses).
    2. duplicate_batch: a batch ≥90% made of rows an earlier batch of the feed already
       had, where the feed's previous batch was <50% repeats.
    3. key_explosion: an expansion point with a join key and input (one that did not
       multiply rows yet ranks after 6).
    4. incremental_predicate: the incremental table differs from its full refresh
       (missed keys, stale versions, duplicate keys).
    5. null_storm: a column's null share among the new rows rose by ≥0.2 (and ≥2×).
    6. logic_regression: a numeric column's mean among the new rows moved ≥5×, a
       behaviour suite failed, or an aggregate drifted while row counts did not.
    7. volume_surge: a feed added ≥2× the rows its history expects for that weekday
       (seasonal expectation of its daily growth; the last good run while history is
       short), and its drift z is past the threshold or unscored.

    The gate's own feed-day verdicts come right after schema_drift: a day held for its
    volume is a ``volume_surge`` or a ``partial_delivery`` against the same seasonal
    expectation, a same-cycle repeat a ``duplicate_batch``.

    Without any of these, the run's failed expectations decide (by expectation type,
    then check name), e.g. a held batch whose rows never reached a model.
    """
    # A join that did multiply rows outranks everything after it; a latent one (a key
    # that became non-unique but multiplied nothing yet) ranks after the data findings.
    exploded = _key_explosion(expansion)
    grew = exploded if expansion.grew else None
    latent = None if expansion.grew else exploded
    checks = (
        _schema_drift(ctx, batches, shifts),
        *_gate_volume(ctx),
        _duplicate_batch(batches),
        grew,
        _incremental(isolation),
        _null_storm(shifts),
        _logic_regression(ctx, shifts),
        latent,
        _volume_surge(ctx, counts),
    )
    found = [f for f in checks if f is not None]
    return found or _from_validation(ctx)


# Failed expectation → class, when the data itself showed nothing (e.g. a held batch
# whose rows never reached a model). Expectation types first, then check-name words.
_EXPECTATION_CLASSES = {
    "expect_table_columns_to_match_set": "schema_drift",
    "expect_table_columns_to_match_ordered_list": "schema_drift",
    "expect_column_to_exist": "schema_drift",
    "expect_column_values_to_be_of_type": "schema_drift",
    "expect_column_values_to_be_in_type_list": "schema_drift",
    "expect_column_values_to_not_be_null": "null_storm",
    "expect_table_row_count_to_be_between": "volume_surge",
    "expect_column_values_to_be_unique": "key_explosion",
    "expect_compound_columns_to_be_unique": "key_explosion",
    "expect_column_proportion_of_unique_values_to_be_between": "key_explosion",
}


_CHECK_WORDS = (("plausible", "logic_regression"),
                ("numeric", "schema_drift"), ("parse", "schema_drift"), ("type", "schema_drift"),
                ("null", "null_storm"), ("row_count", "volume_surge"),
                ("unique", "key_explosion"), ("one_", "key_explosion"))


def _from_validation(ctx: Context) -> list[Finding]:
    out: dict[str, Finding] = {}
    for v in validation_failures(ctx):
        name = str(v.get("check_name") or "").lower()
        cls = "logic_regression" if v.get("kind") == "behaviour" else (
            _EXPECTATION_CLASSES.get(str(v["expectation"]))
            or next((c for w, c in _CHECK_WORDS if w in name), None))
        if cls is None:
            continue
        line = (f"{v['suite']}: {v.get('check_name') or v['expectation']} failed on "
                f"{v['target']}" + (f" batch {v['batch_id']}" if v.get("batch_id") else ""))
        out.setdefault(cls, Finding(cls, f"validation: {line}")).evidence.append(line)
    return list(out.values())


def _schema_drift(ctx: Context, batches: Sequence[BatchFinding], shifts: Sequence[ColumnShift]
                  ) -> Finding | None:
    ev = [f"{b.batch_id} ({b.feed}, {Path(b.source_file).name}) quarantined whole: {b.reason}"
          for b in batches if b.status == "quarantined"]
    ev += [f"model {m['model']} failed: {m['message'][:300]}" for m in _failed_models(ctx)
           if is_schema_error(ctx.cfg.warehouse, m["message"] or "")]
    ev += [f"{v['suite']}: {v['expectation']} failed on {v['target']}"
           for v in validation_failures(ctx)
           if v["expectation"] in ("expect_table_columns_to_match_set",
                                   "expect_table_columns_to_match_ordered_list",
                                   "expect_column_to_exist", "expect_column_values_to_be_of_type")]
    for s in shifts:
        if s.kind == "nulls" and _raw_column_present(ctx, s, shifts):
            ev.append(f"{s.relation}.{s.column} NULL in {s.now:.0%} of new rows (was "
                      f"{s.before:.0%}) while the raw values are present: they no longer parse")
    if not ev:
        return None
    return Finding("schema_drift", "input no longer matches the schema the pipeline expects: "
                   + ev[0], ev)


def is_schema_error(warehouse: WarehouseConfig, message: str) -> bool:
    """Whether a failed model's ``message`` from the warehouse's engine says a column of
    its input is missing or no longer has its type."""
    engine = backend_for(warehouse).schema_errors
    pattern = f"{_SCHEMA_ERRORS}|{engine}" if engine else _SCHEMA_ERRORS
    return re.search(pattern, message, re.I) is not None


def _raw_column_present(ctx: Context, s: ColumnShift, shifts: Sequence[ColumnShift]) -> bool:
    node = ctx.node(s.relation)
    if node is None or node.resource_type == "source":
        return False
    raws = source_ancestors(ctx, node, s.column)
    upstream_nulls = {(x.relation, x.column) for x in shifts if x.kind == "nulls"}
    return bool(raws) and all((r.name, s.column) not in upstream_nulls for r in raws)


def _duplicate_batch(batches: Sequence[BatchFinding]) -> Finding | None:
    dup = [b for b in batches if b.resend]
    if not dup:
        return None
    ev = [f"{b.batch_id} ({Path(b.source_file).name}, {b.rows} rows): {b.repeat_share:.0%} of "
          f"its rows repeat batch {b.repeats} (the feed's previous batch: "
          f"{b.repeat_share_before:.0%})" for b in dup]
    return Finding("duplicate_batch", f"a re-delivered batch: {ev[0]}", ev)


def _key_explosion(ep: ExpansionPoint) -> Finding | None:
    if not ep.model or not (ep.grew or (ep.key and ep.input)):
        return None
    what = ("multiplies rows" if ep.grew else
            f"sums more input rows into as many rows ({ep.inflated})" if ep.inflated else
            "joins a now non-unique key")
    ev = [f"{ep.model} {what}: {ep.reason}"]
    if not ep.key:
        return Finding("key_explosion", f"{ep.model} {what} (input {ep.input}; no join key "
                       "of its parents explains it)", ev)
    top = ", ".join(f"{k.key} ({k.input_rows} input rows)" for k in ep.offending_keys[:3])
    ev.append(f"join key {ep.input}.{ep.key} = {ep.model}.{ep.model_key}; top keys: {top}")
    if ep.source:
        ev.append(f"the duplicated keys come from {ep.source} batch(es) {', '.join(ep.batches)}")
    return Finding("key_explosion", f"{ep.model} {what} on {ep.key} from {ep.input}", ev)


def _incremental(iso: Isolation) -> Finding | None:
    bad = [d for d in iso.diffs if d.verdict in ("incremental filter", "unique key")]
    if not bad:
        return None
    ev = [f"{d.model}: {d.explanation} (production {d.prod_rows} rows, full refresh "
          f"{d.refresh_rows})" for d in bad]
    return Finding("incremental_predicate",
                   f"{bad[0].model}: the {bad[0].verdict} is at fault", ev)


def _null_storm(shifts: Sequence[ColumnShift]) -> Finding | None:
    nulls = [s for s in shifts if s.kind == "nulls"]
    if not nulls:
        return None
    ev = [f"{s.relation}.{s.column}: NULL in {s.now:.0%} of {s.rows_now} new rows (last good "
          f"run: {s.before:.0%} of {s.rows_before})" for s in nulls]
    return Finding("null_storm", ev[0], ev)


def _logic_regression(ctx: Context, shifts: Sequence[ColumnShift]) -> Finding | None:
    ev = [f"{s.relation}.{s.column}: mean {s.before:,.2f} → {s.now:,.2f} among new rows "
          f"({s.now / s.before:.1f}×)" for s in shifts if s.kind == "scale"]
    ev += [f"behaviour check {v['suite']}: {v['expectation']} failed on {v['target']}"
           for v in validation_failures(ctx) if v["kind"] == "behaviour"]
    volume = {m for (m, metric), p in ctx.pts(ctx.run).items()
              if metric in ("row_count", "distinct_keys") and p.anomalous}
    ev += [f"{m}.{metric} drifted (z={p.z:+.1f}) while its row count did not"
           for (m, metric), p in ctx.pts(ctx.run).items()
           if ":" in metric and not metric.startswith("null_rate:") and p.anomalous
           and p.z is not None and m not in volume]
    if not ev:
        return None
    return Finding("logic_regression", "values changed meaning with normal volume: " + ev[0], ev)


_GATE_CLASSES = {CHECK_SURGE: "volume_surge", CHECK_DROP: "partial_delivery",
                 CHECK_RESEND: "duplicate_batch"}


def _gate_volume(ctx: Context) -> list[Finding]:
    """The gate's feed-day verdicts of this run (suites ``volume_<feed>``): holds, and
    warnings (a day inside the band but far from its expectation, merged)."""
    out: dict[str, Finding] = {}
    for v in validation_failures(ctx) + _volume_warnings(ctx):
        cls = _GATE_CLASSES.get(str(v.get("check_name") or ""))
        if cls is None:
            continue
        obs = v.get("observed_value")
        if isinstance(obs, dict) and obs.get("resend_of"):
            line = (f"batch {v['batch_id']} repeats batch {obs['resend_of']} in the same "
                    "cycle: held by the gate")
        elif isinstance(obs, dict) and obs.get("reason"):
            fate = "held by the gate" if obs.get("status") == "hold" else "a warning, merged"
            rel = feed_relation(ctx, str(obs.get("feed") or ""))
            where = f"{rel.name}: " if rel is not None else ""
            line = f"{where}{obs['reason']}: batch {v['batch_id']} {fate}"
        else:
            line = f"{v['suite']}: {v.get('check_name')} failed on batch {v['batch_id']}"
        out.setdefault(cls, Finding(cls, line)).evidence.append(line)
    return list(out.values())


def _volume_surge(ctx: Context, counts: Sequence[LayerCount]) -> Finding | None:
    ev = []
    threshold = ctx.cfg.drift.threshold
    for lc in counts:
        if lc.layer != "raw" or not lc.added:
            continue
        p = ctx.pts(ctx.run).get((lc.model, "row_count"))
        z = p.z if p is not None else None
        expected, basis = _expected_growth(ctx, lc.model, p.observed_at if p else None)
        if expected is None and lc.added_before and lc.added_before > 0:
            expected, basis = float(lc.added_before), "last good run"
        if not expected or expected <= 0:
            continue
        ratio = lc.added / expected
        if ratio >= SURGE_RATIO and (z is None or abs(z) >= threshold):
            ztext = f", z={z:+.1f}" if z is not None else ""
            ev.append(f"{lc.model} added {lc.added:,} rows (expected {expected:,.0f}, "
                      f"{basis}; {ratio:.1f}×{ztext}); " + _surge_fate(ctx, lc.model))
    if not ev:
        return None
    return Finding("volume_surge", ev[0], ev)


def _expected_growth(ctx: Context, model: str, at: datetime | None
                     ) -> tuple[float | None, str]:
    """The seasonal expectation of a relation's daily growth before ``at`` (days with
    growth, not flagged), or None with fewer than a week of them."""
    if at is None:
        return None, ""
    hist = [(d, v, a) for d, v, a in ctx.history(model, "row_count", at) if d < at]
    growth = [(b[0].date(), b[1] - a[1]) for a, b in itertools.pairwise(hist)
              if not b[2] and b[1] - a[1] > 0]
    if len(growth) < 7:
        return None, ""
    exp = seasonal.expect(growth, at.date())
    return (exp.value, f"{exp.basis}, {exp.n} days") if exp else (None, "")


def _surge_fate(ctx: Context, source: str) -> str:
    node = ctx.node(source)
    mine = [b for b in ctx.batches_of(ctx.run) if node is not None and b.feed == node.identifier]
    held = [b.batch_id for b in mine if b.status == "held"]
    if held:
        return f"held by the contract gate ({', '.join(held)}): nothing reached the facts"
    return "published; no model grew out of proportion to it"


def undetermined_finding(ctx: Context) -> Finding:
    why = ctx.run.reason or "no evidence of a known failure class"
    return Finding(UNDETERMINED, f"no class fits the evidence ({why})", [why])


def _failed_models(ctx: Context) -> list[dict[str, Any]]:
    rm = state.run_models
    with ctx.st.connect() as conn:
        rows = conn.execute(sa.select(rm.c.model, rm.c.status, rm.c.message).where(
            rm.c.run_id == ctx.run.run_id,
            rm.c.status.in_(("error", "fail", "runtime error")))).mappings().all()
    return [dict(r) for r in rows]


def validation_failures(ctx: Context) -> list[dict[str, Any]]:
    """Failed expectations of the run (state table ``validation_results``), if any."""
    names = ("suite", "kind", "target", "batch_id", "expectation", "check_name", "column",
             "success", "observed_value", "unexpected_count", "unexpected_values")
    vr = sa.table("validation_results", sa.column("run_id"), *(sa.column(n) for n in names))
    q = sa.select(*(vr.c[n] for n in names)).where(vr.c.run_id == ctx.run.run_id,
                                                   vr.c.success.is_(False))
    try:
        with ctx.st.connect() as conn:
            rows = conn.execute(q).mappings().all()
    except sa.exc.DBAPIError:
        return []  # validation never ran here
    return [{k: _decode(v) for k, v in r.items()} for r in rows]


def _volume_warnings(ctx: Context) -> list[dict[str, Any]]:
    """Passed feed-day checks of the run whose verdict was a warning."""
    names = ("suite", "batch_id", "check_name", "observed_value")
    vr = sa.table("validation_results", sa.column("run_id"), sa.column("success"),
                  *(sa.column(n) for n in names))
    q = sa.select(*(vr.c[n] for n in names)).where(
        vr.c.run_id == ctx.run.run_id, vr.c.success.is_(True),
        vr.c.suite.like(f"{VOLUME_SUITE_PREFIX}%"))
    try:
        with ctx.st.connect() as conn:
            rows = [{k: _decode(v) for k, v in r.items()} for r in conn.execute(q).mappings()]
    except sa.exc.DBAPIError:
        return []
    return [r for r in rows if isinstance(r["observed_value"], dict)
            and r["observed_value"].get("status") == "warning"]


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return jsonable(value)
