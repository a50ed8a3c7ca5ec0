"""Step 1, counts per layer: rows, keys and rows per input row of every relation against
the last good run, along the lineage; flags the relations that grow out of proportion.
"""

from __future__ import annotations

from monitor.core.manifest import ModelInfo
from monitor.triage.context import GROWTH_RATIO, Context, as_int
from monitor.triage.findings import LayerCount


def layer_counts(ctx: Context) -> list[LayerCount]:
    """Rows, keys and rows-per-input-row of every observed relation, lineage order."""
    if ctx.project is None:
        return []
    run, base = ctx.run, ctx.baseline
    prev_run, prev_base = ctx.before(run), ctx.before(base)
    out = []
    for node in ctx.project.lineage():
        rows = ctx.value(run, node.name, "row_count")
        if rows is None:
            continue
        lc = LayerCount(model=node.name, layer=node.layer, rows=int(rows),
                        rows_before=as_int(ctx.value(base, node.name, "row_count")))
        lc.added = _diff(rows, ctx.value(prev_run, node.name, "row_count"))
        lc.added_before = _diff(ctx.value(base, node.name, "row_count"),
                                ctx.value(prev_base, node.name, "row_count"))
        lc.distinct_keys = as_int(ctx.value(run, node.name, "distinct_keys"))
        lc.duplicate_keys = as_int(ctx.value(run, node.name, "duplicate_keys"))
        lc.duplicate_keys_before = as_int(ctx.value(base, node.name, "duplicate_keys"))
        source = _row_source(ctx, node)
        if source is not None:
            lc.input = source.name
            lc.out_per_in = _ratio(rows, ctx.value(run, source.name, "row_count"))
            lc.out_per_in_before = _ratio(ctx.value(base, node.name, "row_count"),
                                          ctx.value(base, source.name, "row_count"))
        lc.flagged = _growth(lc, ctx.value(run, source.name, "row_count") if source else None)
        out.append(lc)
    return out


def _growth(lc: LayerCount, input_rows: float | None) -> str:
    """Why ``lc`` grows out of proportion to its input ("" if it does not)."""
    if lc.input is None:
        return ""  # a source: nothing upstream to be out of proportion with
    dup, dup_before = lc.duplicate_keys, lc.duplicate_keys_before
    if dup is not None and dup > (dup_before or 0):
        return f"duplicate grain keys {dup_before or 0} → {dup}"
    now, before = lc.out_per_in, lc.out_per_in_before
    if now is None or not before or input_rows is None:
        return ""
    extra = (now - before) * input_rows
    if now / before >= GROWTH_RATIO and extra >= 10:
        return (f"rows per {lc.input} row {before:.3f} → {now:.3f} "
                f"(≈{extra:,.0f} rows more than its input explains)")
    return ""


def _row_source(ctx: Context, node: ModelInfo) -> ModelInfo | None:
    """The parent the model's rows flow from: it carries the model's grain columns
    (the largest such parent, else the largest parent)."""
    if ctx.project is None or not node.parents:
        return None
    parents = [p for p in ctx.project.parents(node.unique_id)
               if ctx.value(ctx.run, p.name, "row_count") is not None]
    if not parents:
        return None
    grain = set(node.grain)
    carrying = [p for p in parents if grain and grain <= set(ctx.columns.get(p.unique_id, {}))]

    def size(p: ModelInfo) -> float:
        return ctx.value(ctx.run, p.name, "row_count") or 0.0

    return max(carrying or parents, key=size)


def _diff(a: float | None, b: float | None) -> int | None:
    return int(a - b) if a is not None and b is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
