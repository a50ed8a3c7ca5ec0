"""Every key a cycle published reaches the incremental models built from it.

A filter on a business date passes every schema test and silently drops late rows, so
each key a model's parent holds above the cycle's watermark must be in the model with at
least its newest publish sequence (models and parents come from the manifest).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from monitor.core.columns import SEQ_COLUMN
from monitor.core.manifest import ModelInfo, Project
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


def _rel(conn: sa.Connection, n: ModelInfo) -> str:
    q = conn.dialect.identifier_preparer.quote
    return f"{q(n.schema)}.{q(n.identifier)}"


def check_pair(conn: sa.Connection, pair: Pair, hwm: int) -> SuiteResult:
    """Keys published above ``hwm`` that the model lacks or holds at an older batch."""
    q = conn.dialect.identifier_preparer.quote
    key, seq = q(pair.key), q(SEQ_COLUMN)
    sql = (
        f"with published as (select {key} as k, max({seq}) as seq from "
        f"{_rel(conn, pair.parent)} where {seq} > :hwm group by {key}) "
        f"select p.k as key, p.seq as published_seq, m.{seq} as model_seq from published p "
        f"left join {_rel(conn, pair.model)} m on m.{key} = p.k "
        f"where m.{key} is null or m.{seq} < p.seq order by p.k"
    )
    rows = conn.execute(sa.text(sql), {"hwm": hwm}).mappings().all()
    total = conn.execute(sa.text(
        f"select count(distinct {key}) from {_rel(conn, pair.parent)} where {seq} > :hwm"
    ), {"hwm": hwm}).scalar() or 0
    missing = [dict(r) for r in rows]
    ok = not missing
    if not ok:
        log.warning("%s: %d of %d keys published this cycle did not reach it at their newest "
                    "batch (from %s), e.g. %s", pair.model.name, len(missing), total,
                    pair.parent.name, missing[0])
    res = ExpectationResult(
        expectation_type="expect_published_keys_to_reach_model", column=pair.key,
        kwargs_json=f'{{"parent": "{pair.parent.name}", "hwm": {int(hwm)}}}', success=ok,
        observed_value={"published_keys": int(total), "missed": len(missing),
                        "parent": pair.parent.name},
        unexpected_count=len(missing), unexpected_values=missing[:SAMPLE], check=CHECK,
    )
    return SuiteResult(f"{SUITE_PREFIX}{pair.model.name}", "behaviour", pair.model.name, None,
                       ok, [res])


def check(engine: sa.Engine, project: Project, hwm: int) -> list[SuiteResult]:
    """One result per incremental model the check applies to."""
    with engine.connect() as conn:
        cols = relation_columns(conn, list(project.nodes.values()))
        return [check_pair(conn, p, hwm) for p in pairs(project, cols)]
