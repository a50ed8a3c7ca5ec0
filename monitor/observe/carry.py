"""Counts carried from one measurement to the next, so a view or an incremental table
is not counted over all its history every cycle.

Only while the carried totals are provably still the relation's (view definitions,
published batches and tables unchanged since); every ``full_count_every``-th count of
an incremental table's keys is full (README, "Profile and drift").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import BATCH_COLUMN, ENRICHED_SEQ_COLUMN, SEQ_COLUMN
from monitor.core.manifest import ModelInfo, Project
from monitor.core.sections import AggregateSpec
from monitor.observe.counts import profile_query, raw_counts, to_float
from monitor.quality.owners import VerifiedKeys
from monitor.quality.queries import touched_keys
from monitor.store.state import events, profile_carries, runs, utcnow
from monitor.warehouse.connection import backend_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Carry:
    """Where carried view counts live (the state store), and the warehouse's batch
    ledger (``ingest.ledger_tables``), whose publish sequence says which batches are new."""

    state: sa.Engine
    ledger: sa.Table
    published: str = "published"  # the ledger status of a batch staging reads
    # Incremental tables: the sequence columns a run raises on every row it writes, the
    # one its watermark reads (first present wins), and how far below it a run re-reads.
    seq_columns: tuple[str, ...] = (SEQ_COLUMN, ENRICHED_SEQ_COLUMN)
    watermark_columns: tuple[str, ...] = (SEQ_COLUMN,)
    lookback: int = 0
    #: per model, the keys the cycle's grain check found unique (``quality.owners``):
    #: the touched-key duplicate count reads it instead of counting again
    verified: Mapping[str, VerifiedKeys] = field(default_factory=dict)


def carriable(
    node: ModelInfo, columns: Mapping[str, bool], specs: Sequence[AggregateSpec]
) -> bool:
    """A view or incremental table keyed by batch, carrying the publish seq, with only
    additive aggregates."""
    return (
        node.resource_type == "model"
        and (node.materialization == "view" or node.is_incremental)
        and BATCH_COLUMN in node.grain
        and SEQ_COLUMN in columns
        and all(f == "sum" for spec in specs for f in spec.funcs)
    )


def carried_raw(
    conn: sa.Connection,
    node: ModelInfo,
    columns: Mapping[str, bool],
    specs: Sequence[AggregateSpec],
    ledger: Ledger,
    run_id: str,
) -> dict[str, Any]:
    """The relation's raw counts: carried totals plus the new batches, else a full count.

    Rows of different batches never share a key, so counts, distinct keys, non-null
    counts and sums add up. The totals hold while the view definitions (this view's and
    every upstream view's), the batches published up to the carried watermark (a
    retraction changes them) and the tables under it (no rebuild, no rollback since) are
    unchanged."""
    state = ledger.carry.state
    mark = ledger.bound(node)
    fingerprint = ledger.fingerprint(node)
    prev = ledger.carried.get(node.name)
    raw: dict[str, Any] | None = None
    if (
        prev is not None
        and prev.fingerprint == fingerprint
        and prev.watermark <= mark
        and prev.published == ledger.signature(prev.watermark)
        and ledger.rebuilt_since(prev.updated_at) is None
    ):
        new = raw_counts(conn, node, columns, specs, window=(prev.watermark, mark))
        if set(new) == set(prev.raw):  # the same metrics (config unchanged)
            raw = {k: _add(prev.raw[k], new[k]) for k in new}
    if raw is None:
        log.info("%s %s counted in full (no valid carried totals)", node.materialization,
                 node.name)
        raw = raw_counts(conn, node, columns, specs)
    _store_carry(state, node.name, fingerprint, mark, ledger.signature(mark), raw, run_id)
    return raw


def _store_carry(
    state: sa.Engine, model: str, fingerprint: str, mark: int, published: str,
    raw: Mapping[str, Any], run_id: str,
) -> None:
    doc = {k: to_float(v) if v is not None else None for k, v in raw.items()}
    row = {
        "model": model, "fingerprint": fingerprint, "watermark": mark,
        "published": published, "raw": doc, "run_id": run_id, "updated_at": utcnow(),
    }
    with state.begin() as st:
        st.execute(profile_carries.delete().where(profile_carries.c.model == model))
        st.execute(profile_carries.insert(), [row])


def keys_carriable(node: ModelInfo, columns: Mapping[str, bool], carry: Carry) -> bool:
    """An incremental model with a grain whose rows carry a sequence column."""
    return (
        node.resource_type == "model"
        and node.is_incremental
        and bool(node.grain)
        and any(c in columns for c in carry.seq_columns)
    )


_MARK, _SINCE_FULL = "_mark", "_counts_since_full"  # bookkeeping in a table's carry


def keyed_raw(
    conn: sa.Connection,
    node: ModelInfo,
    columns: Mapping[str, bool],
    specs: Sequence[AggregateSpec],
    ledger: Ledger,
    run_id: str,
    full_count_every: int,
) -> dict[str, Any]:
    """An incremental table's raw counts; its distinct keys from the touched keys when
    the last count proves the rest unchanged, else counted in full.

    A run rewrites only the keys it merges, and every row it writes has a sequence
    column above the table's watermark at the last count, less the lookback (the
    contract the touched-key suites and DELTA snapshots rest on). If the last count
    found no duplicate key, the duplicates now are those among the touched keys."""
    carry = ledger.carry
    seqs = [c for c in carry.seq_columns if c in columns]
    mark_col = next((c for c in carry.watermark_columns if c in columns), seqs[0])
    tbl, plan = profile_query(node, columns, specs, conn, distinct=False,
                              also=[mark_col])
    if not plan.keys:
        return raw_counts(conn, node, columns, specs)
    plan.add(_MARK, sa.func.max(tbl.c[mark_col]))
    row = conn.execute(sa.select(*plan.exprs).select_from(tbl)).one()
    raw: dict[str, Any] = dict(zip(plan.names, row, strict=True))
    mark = int(raw.pop(_MARK) or 0)
    rows = int(raw["row_count"])
    fingerprint = f"keys:{','.join(plan.keys)};seqs:{','.join(seqs)}"
    prev = ledger.carried.get(node.name)
    since_full = 0
    reason = _why_full(ledger, prev, fingerprint, raw, full_count_every)
    no_null_keys = all(int(raw[f"nonnull:{k}"]) == rows for k in node.grain)
    if reason is None and prev is not None and no_null_keys:
        since_full = int(prev.raw[_SINCE_FULL]) + 1
        since = prev.watermark - carry.lookback
        checked = carry.verified.get(node.name)
        if checked is not None and checked.covers(plan.keys, seqs, since):
            log.debug("duplicate keys of %s: none, as its grain check found", node.name)
            dups = 0
        else:
            dups = _touched_duplicates(conn, node, plan.keys, seqs, since)
        raw["distinct_keys"] = rows - dups
    else:
        log.info("keys of %s counted in full (%s)", node.name, reason or "NULL keys")
        raw["distinct_keys"] = _distinct_keys(conn, node, plan.keys)
    _store_carry(carry.state, node.name, fingerprint, mark, "", {**raw, _SINCE_FULL: since_full},
                 run_id)
    return raw


def _why_full(
    ledger: Ledger, prev: sa.Row[Any] | None, fingerprint: str, raw: Mapping[str, Any],
    full_count_every: int,
) -> str | None:
    """Why the table's keys must be counted in full now, or None if the carry holds."""
    if prev is None or prev.fingerprint != fingerprint:
        return "no count of these keys yet"
    carried = {k for k in prev.raw if k != _SINCE_FULL}
    if carried != {*raw, "distinct_keys"} or _SINCE_FULL not in prev.raw:
        return "metrics changed"
    if prev.raw["row_count"] != prev.raw["distinct_keys"]:
        return "the last count found duplicate keys"
    if int(prev.raw[_SINCE_FULL]) + 1 >= full_count_every:
        return f"every {full_count_every}th count is full"
    return ledger.rebuilt_since(prev.updated_at)


def _touched_duplicates(
    conn: sa.Connection, node: ModelInfo, keys: Sequence[str], seqs: Sequence[str], since: int
) -> int:
    """Rows beyond the first of each key among the keys of rows with a sequence column
    above ``since``: one semi join, or where the engine has one a lookup of those keys
    (``Backend.key_lookup``), so its cost follows the day's keys."""
    t = sa.table(node.identifier, *(sa.column(c) for c in {*keys, *seqs}), schema=node.schema)
    touched = t.alias("touched")
    rows = t.alias("k")
    lookup = None
    if len(keys) == 1:
        lookup = backend_of(conn).key_lookup(conn, (node.schema, node.identifier), keys[0],
                                             touched_keys(t, keys[0], seqs, since))
    among = lookup(rows.c[keys[0]]) if lookup is not None else (
        sa.exists()
        .where(*(touched.c[k] == rows.c[k] for k in keys))
        .where(sa.or_(*(touched.c[c] > since for c in seqs)))
    )
    per_key = (
        sa.select(sa.func.count().label("n"))
        .select_from(rows)
        .where(among)
        .group_by(*(rows.c[k] for k in keys))
        .subquery("per_key")
    )
    found = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(per_key.c.n - 1), 0))).scalar()
    return int(found or 0)


def _distinct_keys(conn: sa.Connection, node: ModelInfo, keys: Sequence[str]) -> int:
    """Distinct key combinations of the whole table (a NULL counts as one value)."""
    t = sa.table(node.identifier, *(sa.column(c) for c in keys), schema=node.schema)
    combos = sa.select(*(t.c[k] for k in keys)).distinct().subquery("g")
    return int(conn.execute(sa.select(sa.func.count()).select_from(combos)).scalar() or 0)


def _add(total: Any, new: Any) -> Any:
    """Carried total + the new batches' value (a sum of no rows is NULL, i.e. nothing)."""
    if total is None:
        return new
    return total if new is None else float(total) + float(new)


@dataclass
class Ledger:
    """What one measurement reads of the batch ledger, the stored view definitions and the
    state store (carried totals, the last rebuild): read once and shared by every carried
    relation (the cycle lock keeps them still while :func:`measure` runs)."""

    conn: sa.Connection
    carry: Carry
    project: Project
    _signatures: dict[int, str] = field(default_factory=dict)
    _table_bounds: dict[str, int] = field(default_factory=dict)

    @cached_property
    def present(self) -> bool:
        """Whether the warehouse has the ledger (a project without our ingest has not)."""
        t = self.carry.ledger
        return backend_of(self.conn).has_relation(self.conn, (str(t.schema), t.name))

    @cached_property
    def mark(self) -> int:
        """The highest publish_seq of a published batch (0 when none is)."""
        t = self.carry.ledger
        value = self.conn.execute(
            sa.select(sa.func.max(t.c.publish_seq)).where(t.c.status == self.carry.published)
        ).scalar()
        return int(value or 0)

    def signature(self, upto: int) -> str:
        """Which batches are published up to ``upto``: their count and the sum of their
        seqs. A retraction (or a new warehouse) changes it, so totals carried over them
        are void."""
        if upto not in self._signatures:
            t = self.carry.ledger
            n, total = self.conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(t.c.publish_seq), 0))
                .where(t.c.status == self.carry.published, t.c.publish_seq <= upto)
            ).one()
            self._signatures[upto] = f"{n}:{total}"
        return self._signatures[upto]

    def bound(self, node: ModelInfo) -> int:
        """The publish_seq up to which the relation shows every published batch. A view
        shows each batch as soon as it is published, unless it reads a table keyed by
        batch: a table holds the batches its builds wrote, and a failed build leaves it
        behind the ledger. Totals must stop where the relation stops, or the batches it
        shows later would never be counted."""
        tables = [
            n for n in [*self.project.ancestors(node.unique_id), node]
            if n.resource_type == "model" and n.is_incremental and BATCH_COLUMN in n.grain
        ]
        marks = [self._table_bound(t) for t in tables]
        if node.materialization == "view":
            marks.append(self.mark)
        return min(marks)

    def _table_bound(self, table: ModelInfo) -> int:
        """Where a table keyed by batch stops showing the ledger. A build takes every
        batch above the table's highest publish_seq, so it holds all of its feeds'
        published batches up to that one; it shows the ledger on up to just below the
        first published batch of its feeds it lacks. A table fed by several feeds (the
        ledger's feed is the raw table's name) lags only when one of them delivered
        since its build, not whenever any feed did. Its highest publish_seq when its
        feeds are not known (raw tables outside the ledger's schema)."""
        if table.unique_id not in self._table_bounds:
            self._table_bounds[table.unique_id] = self._lacked_below(table)
        return self._table_bounds[table.unique_id]

    def _lacked_below(self, table: ModelInfo) -> int:
        t = sa.table(table.identifier, sa.column(SEQ_COLUMN), schema=table.schema)
        highest = int(self.conn.execute(sa.select(sa.func.max(t.c[SEQ_COLUMN]))).scalar() or 0)
        ledger = self.carry.ledger
        feeds = {
            n.identifier for n in self.project.ancestors(table.unique_id)
            if n.resource_type == "source" and n.schema == ledger.schema
            and n.identifier != ledger.name
        }
        if not feeds:
            return highest
        lacked = self.conn.execute(
            sa.select(sa.func.min(ledger.c.publish_seq)).where(
                ledger.c.status == self.carry.published, ledger.c.feed.in_(sorted(feeds)),
                ledger.c.publish_seq > highest,
            )
        ).scalar()
        return self.mark if lacked is None else max(highest, int(lacked) - 1)

    @cached_property
    def carried(self) -> dict[str, sa.Row[Any]]:
        """Every carried total in the state store, read once per measurement."""
        with self.carry.state.connect() as st:
            return {r.model: r for r in st.execute(sa.select(profile_carries)).all()}

    @cached_property
    def _last_rebuilds(self) -> tuple[datetime | None, datetime | None]:
        """When the last ``--full-refresh`` run started and the last rollback happened."""
        with self.carry.state.connect() as st:
            refresh = st.execute(
                sa.select(sa.func.max(runs.c.started_at)).where(runs.c.full_refresh.is_(True))
            ).scalar()
            rollback = st.execute(
                sa.select(sa.func.max(events.c.at)).where(events.c.kind == "rollback")
            ).scalar()
        return refresh, rollback

    def rebuilt_since(self, at: datetime) -> str | None:
        """Why the built tables may have been rebuilt since ``at`` (a ``--full-refresh``
        run or a rollback), or None: totals carried from before then are void."""
        refresh, rollback = self._last_rebuilds
        if refresh is not None and refresh >= at:
            return "a --full-refresh run since the last count"
        if rollback is not None and rollback >= at:
            return "a rollback since the last count"
        return None

    @cached_property
    def definitions(self) -> dict[tuple[str, str], str]:
        """``(schema, view) -> definition`` of every view model, as the warehouse stores it."""
        views = [(n.schema, n.identifier) for n in self.project.models.values()
                 if n.resource_type == "model" and n.materialization == "view"]
        return backend_of(self.conn).view_definitions(self.conn, views)

    def fingerprint(self, node: ModelInfo) -> str:
        """A hash of the definitions of the view and every upstream view."""
        views = [
            n
            for n in [*self.project.ancestors(node.unique_id), node]
            if n.resource_type == "model" and n.materialization == "view"
        ]
        digest = hashlib.sha256()
        for v in views:
            text = self.definitions.get((v.schema, v.identifier))
            digest.update(f"{v.schema}.{v.identifier}\0{text}\0".encode())
        return digest.hexdigest()
