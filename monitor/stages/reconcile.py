"""Every key a cycle published reaches the incremental models built from it.

A filter on a business date passes every schema test and silently drops late rows, so
each key a model's parent holds above the cycle's watermark must be in the model with at
least its newest publish sequence (models and parents come from the manifest).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import SEQ_COLUMN
from monitor.core.manifest import ModelInfo, Project
from monitor.quality.queries import key_range
from monitor.quality.results import ExpectationResult, SuiteResult
from monitor.warehouse.connection import backend_of

log = logging.getLogger(__name__)

CHECK = "published_keys_reached"
SUITE_PREFIX = "reconcile_"
SAMPLE = 5


@dataclass(frozen=True)
class Pair:
    """An incremental model, its one-column grain, and the parent it takes keys from."""

    model: ModelInfo
    key: str
    parent: ModelInfo


def pairs(project: Project, columns: dict[str, set[str]]) -> list[Pair]:
    """The incremental models this check applies to (``columns``: real columns by
    unique_id; a relation missing from it is not built)."""
    out = []
    for m in project.models.values():
        if not m.is_incremental or len(m.grain) != 1:
            continue
        key = m.grain[0]
        if not {key, SEQ_COLUMN} <= columns.get(m.unique_id, set()):
            continue
        parents = [project.node(p) for p in m.parents]
        found = [p for p in parents if {key, SEQ_COLUMN} <= columns.get(p.unique_id, set())]
        if len(found) == 1:
            out.append(Pair(m, key, found[0]))
    return out


def relation_columns(conn: sa.Connection, nodes: Sequence[ModelInfo]) -> dict[str, set[str]]:
    """Real columns of each relation (``Backend.relation_columns``: one catalog query
    where the engine has ``information_schema``, ``DESCRIBE`` on Spark)."""
    rels = [(n.schema, n.identifier) for n in nodes if n.is_relation]
    found = backend_of(conn).relation_columns(conn, rels)
    return {n.unique_id: set(found[(n.schema, n.identifier)]) for n in nodes
            if n.is_relation and (n.schema, n.identifier) in found}


def check_pair(conn: sa.Connection, pair: Pair, hwm: int) -> SuiteResult:
    """Keys published above ``hwm`` that the model lacks or holds at an older batch.

    One query counts them (the parent, often a view, is read once where the engine
    materializes a CTE named twice: DuckDB, PostgreSQL); only when some are
    missed does a second one fetch a sample. The model's rows of the published keys are
    looked up by key where the engine does that faster (``Backend.key_lookup``): a join
    would read the whole model, all history, every cycle."""
    key = pair.key
    parent, model = (
        sa.table(n.identifier, sa.column(key), sa.column(SEQ_COLUMN), schema=n.schema)
        for n in (pair.parent, pair.model)
    )
    published = (
        sa.select(parent.c[key].label("k"), sa.func.max(parent.c[SEQ_COLUMN]).label("seq"))
        .where(parent.c[SEQ_COLUMN] > hwm)
        .group_by(parent.c[key])
        .cte("published")
    )
    stored = sa.select(model.c[key].label("k"), model.c[SEQ_COLUMN].label("seq"))
    lookup = backend_of(conn).key_lookup(conn, (pair.model.schema, pair.model.identifier),
                                         key, sa.select(published.c.k))
    if lookup is None:
        # A published key reached the model only if the model's row of it is at a
        # newer batch than hwm, so within the range of the model's keys above hwm: the
        # count reads those rows of the model only (queries.key_range), not its history.
        # A key outside it is missed either way; the sample below shows its stored row.
        reached = key_range(conn, model, key, [SEQ_COLUMN], hwm)(model.c[key])
    else:
        stored = stored.where(lookup(model.c[key]))
        reached = sa.true()
    # published holds one row per key: its keys are counted there, not by a DISTINCT
    # over the join (a hash table of every key again: 7.4 -> 5.8 s at 20M keys on
    # DuckDB, which reads the CTE once for both, as PostgreSQL does).
    keys = sa.type_coerce(
        sa.select(sa.func.count(published.c.k)).correlate(None).scalar_subquery(), sa.Integer)
    joined, missing, _ = _against(published, stored.where(reached))
    total, missed = conn.execute(
        sa.select(keys, sa.func.count(sa.case((missing, 1)))).select_from(joined)).one()
    sample: list[dict[str, Any]] = []
    if missed:
        joined, missing, m = _against(published, stored)
        sample = [dict(r) for r in conn.execute(
            sa.select(published.c.k.label("key"), published.c.seq.label("published_seq"),
                      m.c.seq.label("model_seq"))
            .select_from(joined).where(missing).order_by(published.c.k).limit(SAMPLE)
        ).mappings()]
        log.warning("%s: %d of %d keys published this cycle did not reach it at their newest "
                    "batch (from %s), e.g. %s", pair.model.name, missed, total,
                    pair.parent.name, sample[0])
    ok = not missed
    res = ExpectationResult(
        expectation_type="expect_published_keys_to_reach_model", column=pair.key,
        kwargs_json=f'{{"parent": "{pair.parent.name}", "hwm": {int(hwm)}}}', success=ok,
        observed_value={"published_keys": int(total), "missed": int(missed),
                        "parent": pair.parent.name},
        unexpected_count=int(missed), unexpected_values=sample, check=CHECK,
    )
    return SuiteResult(f"{SUITE_PREFIX}{pair.model.name}", "behaviour", pair.model.name, None,
                       ok, [res])


def _against(published: sa.CTE, stored: sa.Select[Any]
             ) -> tuple[sa.Join, sa.ColumnElement[bool], sa.Subquery]:
    """The published keys outer-joined to the model's rows ``stored``; whether a key
    missed the model (absent, or at an older batch); the model's side."""
    m = stored.subquery("m")
    return (published.outerjoin(m, m.c.k == published.c.k),
            sa.or_(m.c.k.is_(None), m.c.seq < published.c.seq), m)


def check(engine: sa.Engine, project: Project, hwm: int) -> list[SuiteResult]:
    """One result per incremental model the check applies to."""
    with engine.connect() as conn:
        cols = relation_columns(conn, list(project.nodes.values()))
        return [check_pair(conn, p, hwm) for p in pairs(project, cols)]
