"""Step 2, the expansion point: the model where rows multiply (or sums inflate, or a
declared join's key stopped being unique), the join key and the input behind it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import BATCH_COLUMN
from monitor.core.manifest import ModelInfo
from monitor.triage.context import (
    GROWTH_RATIO,
    SAMPLE_ROWS,
    Context,
    Join,
    RunRow,
    as_int,
    data_columns,
    fetch_rows,
    table_of,
)
from monitor.triage.findings import ExpansionPoint, LayerCount, OffendingKey

TOP_KEYS = 10


def find_expansion_point(conn: sa.Connection, ctx: Context, counts: Sequence[LayerCount]
                         ) -> ExpansionPoint:
    """The first model that multiplies rows; else one that sums more input rows into
    as many output rows; else a declared join whose key repeats.

    Multiplying: in lineage order, the first model whose duplicate grain keys rose or
    whose rows per input row rose ≥ ``GROWTH_RATIO``× (step 1 flags it). Its join key
    and the input carrying the duplicated keys come from the model's ``meta.joins`` or
    from the columns it shares with its other parents, checked against the data.
    Summing: a model whose rows grew as in the baseline run while a ``sum:`` metric and
    a parent's rows outgrew their baseline growth (duplicated payments inflating
    ``orders.amount``); the model whose grain that parent carries wins. Latent: a
    declared join whose input now repeats a key inside one delivery (``unique_per``),
    even when the model's own lookup dedupes (no growth yet, but which row wins is
    arbitrary).
    """
    for lc in counts:
        node = ctx.node(lc.model)
        if lc.flagged and node is not None:
            return _explain_growth(conn, ctx, node, lc)
    return _sum_inflation(conn, ctx, counts) or _latent_join(conn, ctx) or ExpansionPoint()


def _growths(ctx: Context, model: str, metric: str) -> tuple[float | None, float | None]:
    """How much ``metric`` grew in this run and in the baseline (vs the run before each)."""
    def grew(run: RunRow | None) -> float | None:
        now, prev = ctx.value(run, model, metric), ctx.value(ctx.before(run), model, metric)
        return now - prev if now is not None and prev is not None else None

    return grew(ctx.run), grew(ctx.baseline)


def _outgrew(now: float | None, before: float | None) -> bool:
    """Grew ≥ GROWTH_RATIO times the baseline's growth (from no growth: grew at all)."""
    if now is None or before is None or now <= 0:
        return False
    return now >= GROWTH_RATIO * before if before > 0 else now >= 1


def _sum_inflation(conn: sa.Connection, ctx: Context, counts: Sequence[LayerCount]
                   ) -> ExpansionPoint | None:
    """A model whose rows grew as before while a sum outgrew, below an input whose rows
    outgrew: the extra input rows were summed into existing rows (duplicated payments
    inflating ``orders.amount``). Among several, the one whose grain the input carries
    (it aggregates that input onto its own rows), then the first in lineage."""
    found: list[tuple[int, int, ModelInfo, ModelInfo, str]] = []
    for i, lc in enumerate(counts):
        node = ctx.node(lc.model)
        if node is None or not node.parents or _outgrew(*_growths(ctx, lc.model, "row_count")):
            continue
        metric = _inflated_sum(ctx, lc.model)
        parent = _grown_parent(ctx, node) if metric else None
        if metric and parent is not None:
            carried = bool(node.grain) and set(node.grain) <= set(
                ctx.columns.get(parent.unique_id, {}))
            found.append((0 if carried else 1, i, node, parent, metric))
    if not found:
        return None
    _, _, node, parent, metric = min(found, key=lambda f: (f[0], f[1]))
    return _inflation_point(conn, ctx, node, parent, metric)


def _inflated_sum(ctx: Context, model: str) -> str | None:
    """The whole-table sum of ``model`` that outgrew its baseline growth most."""
    best: tuple[float, str] | None = None
    for m, metric in ctx.pts(ctx.run):
        if m != model or not metric.startswith("sum:") or metric.count(":") != 1:
            continue
        now, before = _growths(ctx, model, metric)
        if _outgrew(now, before) and now is not None:
            ratio = now / before if before and before > 0 else math.inf
            best = max(best or (ratio, metric), (ratio, metric))
    return best[1] if best else None


def _grown_parent(ctx: Context, node: ModelInfo) -> ModelInfo | None:
    """The parent whose rows outgrew their baseline growth by the most extra rows."""
    grown = []
    for p in ctx.project.parents(node.unique_id) if ctx.project else []:
        now, before = _growths(ctx, p.name, "row_count")
        if _outgrew(now, before) and now is not None:
            grown.append((now - max(before or 0.0, 0.0), p.unique_id, p))
    return max(grown, key=lambda g: (g[0], g[1]))[2] if grown else None


def _inflation_point(conn: sa.Connection, ctx: Context, node: ModelInfo, parent: ModelInfo,
                     metric: str) -> ExpansionPoint:
    rows_now, rows_base = _growths(ctx, node.name, "row_count")
    in_now, in_base = _growths(ctx, parent.name, "row_count")
    sum_now, sum_base = _growths(ctx, node.name, metric)
    ep = ExpansionPoint(
        model=node.name, layer=node.layer, input=parent.name, grew=False, inflated=metric,
        rows=as_int(ctx.value(ctx.run, node.name, "row_count")),
        rows_before=as_int(ctx.value(ctx.baseline, node.name, "row_count")),
        reason=(f"{parent.name} rows grew {_signed(in_now)} (baseline {_signed(in_base)}) "
                f"while {node.name} rows grew {_signed(rows_now)} (baseline "
                f"{_signed(rows_base)}) and its {metric} grew {_signed(sum_now)} (baseline "
                f"{_signed(sum_base)}): the extra input rows were summed into existing rows"),
    )
    ep.source = _grown_raw(ctx, parent)
    key = next((g for g in node.grain if g in ctx.columns.get(parent.unique_id, {})
                and g in ctx.columns.get(node.unique_id, {})), None)
    if key is not None:
        ep.key = ep.model_key = key
        ep.offending_keys, ep.duplicated_keys = _repeated_input_keys(conn, parent, key)
        counts = _key_counts(conn, node, key, [k.key for k in ep.offending_keys])
        for k in ep.offending_keys:
            k.model_rows = counts.get(k.key, 0)
    return ep


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+,.6g}"


def _grown_raw(ctx: Context, node: ModelInfo) -> str | None:
    """The raw relation (source or seed) upstream of ``node`` whose rows outgrew."""
    if ctx.project is None:
        return None
    for n in [*ctx.project.ancestors(node.unique_id), node]:
        if n.layer == "raw" and _outgrew(*_growths(ctx, n.name, "row_count")):
            return n.name
    return None


def _repeated_input_keys(conn: sa.Connection, node: ModelInfo, key: str
                         ) -> tuple[list[OffendingKey], int]:
    """Values of ``key`` with more than one row in ``node``, most rows first."""
    t = table_of(node, [key])
    per = (sa.select(t.c[key].label("k"), sa.func.count().label("n"))
           .where(t.c[key].is_not(None)).group_by(t.c[key])
           .having(sa.func.count() > 1).subquery("per"))
    total = _count(conn, sa.select(sa.func.count()).select_from(per))
    top = conn.execute(sa.select(per).order_by(per.c.n.desc(), per.c.k).limit(TOP_KEYS)).all()
    return [OffendingKey(key=_key_text(r[0]), model_rows=0, input_rows=int(r[1]))
            for r in top], total


def _candidates(ctx: Context, node: ModelInfo, source: ModelInfo | None) -> list[Join]:
    """Declared joins first, then columns shared with parents other than the row source."""
    declared = list(ctx.joins.get(node.name, []))
    mine = ctx.columns.get(node.unique_id, {})
    inferred = []
    for parent in ctx.project.parents(node.unique_id) if ctx.project else []:
        if source is not None and parent.unique_id == source.unique_id:
            continue
        theirs = ctx.columns.get(parent.unique_id, {})
        for col in data_columns(mine):
            if col in theirs and col not in node.grain:
                inferred.append(Join(parent.name, col, col))
    seen = {(j.input, j.key, j.model_key) for j in declared}
    return declared + [j for j in inferred if (j.input, j.key, j.model_key) not in seen]


def _explain_growth(conn: sa.Connection, ctx: Context, node: ModelInfo, lc: LayerCount
                    ) -> ExpansionPoint:
    ep = ExpansionPoint(model=node.name, layer=node.layer, grew=True, reason=lc.flagged,
                        rows=lc.rows, rows_before=lc.rows_before, out_per_in=lc.out_per_in,
                        out_per_in_before=lc.out_per_in_before, input=lc.input)
    source = ctx.node(lc.input) if lc.input else None
    mine = ctx.columns.get(node.unique_id, {})
    grain = [g for g in node.grain if g in mine]
    if not grain or len(grain) != len(node.grain):
        ep.reason += "; no usable grain to find the multiplied keys"
        return ep
    best: tuple[int, int, Join, list[OffendingKey], int] | None = None
    for join in _candidates(ctx, node, source):
        parent = ctx.node(join.input)
        if parent is None or join.model_key not in mine or join.key not in ctx.columns.get(
                parent.unique_id, {}):
            continue
        keys, total = _multiplied_keys(conn, node, join.model_key, grain)
        if not keys:
            continue
        counts = _key_counts(conn, parent, join.key, [k.key for k in keys])
        for k in keys:
            k.input_rows = counts.get(k.key, 0)
        explained = sum(k.model_rows for k in keys if k.input_rows > 1)
        weight = sum(k.input_rows for k in keys)
        if explained and (best is None or (explained, weight) > (best[0], best[1])):
            best = (explained, weight, join, keys, total)
    if best is None:
        ep.reason += "; no join key of its parents explains the extra rows"
        return ep
    _, _, join, keys, total = best
    ep.key, ep.model_key, ep.input = join.key, join.model_key, join.input
    ep.offending_keys, ep.duplicated_keys = keys, total
    ep.source, ep.batches = _raw_source(ctx, join.input, join.key)
    _sample_keys(conn, ctx, node, join, [k.key for k in keys[:3]])
    return ep


def _multiplied_keys(conn: sa.Connection, node: ModelInfo, key: str, grain: Sequence[str]
                     ) -> tuple[list[OffendingKey], int]:
    """Values of ``key`` whose rows repeat a grain key of ``node``, most excess first."""
    t = table_of(node, [key, *grain])
    per_grain = (
        sa.select(t.c[key].label("k"), *(t.c[g] for g in grain), sa.func.count().label("n"))
        .group_by(t.c[key], *(t.c[g] for g in grain))
        .having(sa.func.count() > 1)
        .subquery("dups")
    )
    excess = sa.func.sum(per_grain.c.n - 1).label("excess")
    by_key = sa.select(per_grain.c.k, excess).group_by(per_grain.c.k).subquery("by_key")
    total = _count(conn, sa.select(sa.func.count()).select_from(by_key))
    top = conn.execute(sa.select(by_key).order_by(by_key.c.excess.desc()).limit(TOP_KEYS)).all()
    keys = [OffendingKey(key=_key_text(r[0]), model_rows=int(r[1] or 0), input_rows=0)
            for r in top]
    return keys, total


def _key_counts(conn: sa.Connection, node: ModelInfo, key: str, values: Sequence[str]
                ) -> dict[str, int]:
    t = table_of(node, [key])
    col = sa.cast(t.c[key], sa.String)
    rows = conn.execute(sa.select(col, sa.func.count()).where(col.in_(list(values)))
                        .group_by(col)).all()
    return {_key_text(k): int(n) for k, n in rows}


def _count(conn: sa.Connection, query: sa.Select[Any]) -> int:
    value: Any = conn.execute(query).scalar()
    return int(value or 0)


def _key_text(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _latent_join(conn: sa.Connection, ctx: Context) -> ExpansionPoint | None:
    """A declared join whose input now repeats a key within one delivery."""
    if ctx.project is None:
        return None
    new_ids, base_ids = ctx.new_ids(ctx.run), ctx.new_ids(ctx.baseline)
    for node in ctx.project.lineage():
        for join in ctx.joins.get(node.name, []):
            parent = ctx.node(join.input)
            if parent is None:
                continue
            for rel in [parent, *source_ancestors(ctx, parent, join.key)]:
                keys, total = _repeated_keys(conn, ctx, rel, join, new_ids)
                if not keys:
                    continue
                _, before = _repeated_keys(conn, ctx, rel, join, base_ids)
                if before:
                    continue  # repeated in the baseline too: how this input always looks
                return _latent_point(conn, ctx, node, join, rel, keys, total)
    return None


def _latent_point(conn: sa.Connection, ctx: Context, node: ModelInfo, join: Join, rel: ModelInfo,
                  keys: list[OffendingKey], total: int) -> ExpansionPoint:
    mine = ctx.columns.get(node.unique_id, {})
    if join.model_key in mine:
        counts = _key_counts(conn, node, join.model_key, [k.key for k in keys])
        for k in keys:
            k.model_rows = counts.get(k.key, 0)
    where = f" (in {rel.name}, held back from {join.input})" if rel.name != join.input else ""
    ep = ExpansionPoint(
        model=node.name, layer=node.layer, key=join.key, model_key=join.model_key,
        input=join.input, grew=False, duplicated_keys=total, offending_keys=keys,
        reason=(f"{join.input} repeats {total} {join.key} value(s) within one "
                f"{join.unique_per or 'relation'}{where}; {node.name} joins it on "
                f"{join.model_key}: a one-to-many join (its output did not multiply: which "
                "duplicate wins is arbitrary)"),
        rows=as_int(ctx.value(ctx.run, node.name, "row_count")),
        rows_before=as_int(ctx.value(ctx.baseline, node.name, "row_count")),
    )
    ep.source, ep.batches = _raw_source(ctx, join.input, join.key)
    _sample_keys(conn, ctx, node, dataclasses.replace(join, input=rel.name),
                 [k.key for k in keys[:3]])
    return ep


def _repeated_keys(conn: sa.Connection, ctx: Context, rel: ModelInfo, join: Join,
                   batch_ids: Sequence[str]) -> tuple[list[OffendingKey], int]:
    """Key values repeated within one ``unique_per`` value among the given batches."""
    cols = ctx.columns.get(rel.unique_id, {})
    if join.key not in cols or BATCH_COLUMN not in cols or not batch_ids:
        return [], 0
    per = join.unique_per if join.unique_per in cols else None
    t = table_of(rel, [join.key, BATCH_COLUMN, *([per] if per else [])])
    group = [t.c[join.key], *([t.c[per]] if per else [])]
    dups = (
        sa.select(*group, sa.func.count().label("n"))
        .where(t.c[BATCH_COLUMN].in_(list(batch_ids)), t.c[join.key].is_not(None))
        .group_by(*group).having(sa.func.count() > 1).subquery("dups")
    )
    total = _count(conn, sa.select(sa.func.count()).select_from(dups))
    top = conn.execute(sa.select(dups).order_by(dups.c.n.desc()).limit(TOP_KEYS)).all()
    keys = [OffendingKey(key=_key_text(r[0]), model_rows=0, input_rows=int(r[-1]),
                         per=_key_text(r[1]) if per else None) for r in top]
    return keys, total


def source_ancestors(ctx: Context, node: ModelInfo, column: str) -> list[ModelInfo]:
    """Raw sources upstream of ``node`` that have ``column`` and batch ids (held rows
    never reach staging, but they are in raw)."""
    if ctx.project is None:
        return []
    return [
        p for p in ctx.project.ancestors(node.unique_id)
        if p.resource_type == "source"
        and column in (cols := ctx.columns.get(p.unique_id, {})) and BATCH_COLUMN in cols
    ]


def _raw_source(ctx: Context, input_name: str, key: str) -> tuple[str | None, list[str]]:
    """The raw source behind an input and the batches this run brought into it."""
    node = ctx.node(input_name)
    if node is None:
        return None, []
    sources = [node] if node.resource_type == "source" else source_ancestors(ctx, node, key)
    if not sources:
        return None, []
    src = sources[0]
    feed_batches = [b.batch_id for b in ctx.batches_of(ctx.run)
                    if b.feed == src.identifier and b.status != "quarantined"]
    return src.name, feed_batches


def _sample_keys(conn: sa.Connection, ctx: Context, node: ModelInfo, join: Join,
                 keys: Sequence[str]) -> None:
    """Rows of the input and of the model around the offending keys."""
    parent = ctx.node(join.input)
    for rel, col in ((parent, join.key), (node, join.model_key)):
        if rel is None or col not in ctx.columns.get(rel.unique_id, {}) or not keys:
            continue
        t = table_of(rel, ctx.columns[rel.unique_id])
        q = (sa.select(t).where(sa.cast(t.c[col], sa.String).in_(list(keys)))
             .order_by(t.c[col]).limit(SAMPLE_ROWS * 2))
        ctx.samples[f"{rel.name} where {col} in offending keys"] = fetch_rows(conn, q)
