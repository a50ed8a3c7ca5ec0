"""Last-known-good copies of the built tables (FULL, or a DELTA on a parent snapshot):
taking, listing and pruning them, and HEAD, the bookkeeping a DELTA builds on.

The engine-neutral half: which tables, FULL or DELTA, retention, the metadata document
(a "sidecar") and HEAD's content. Where and how the copies are kept is the warehouse
engine's ``SnapshotStore`` (``Backend.snapshot_store``: a DuckDB file per snapshot, or
a schema per snapshot on PostgreSQL). The copies hold only the built tables, not the
warehouse (raw holds every delivered version). The DELTA's exactness and the rollback's
checks: docs/contracts.md (Last-known-good snapshots). Restoring one is
``monitor.recovery.rollback``, which reads the documents and HEAD through this module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import READ_WATERMARKS, SEQ_COLUMN, SEQ_COLUMNS
from monitor.core.config import Config
from monitor.core.manifest import ModelInfo, Project, load_manifest, lookback_batches
from monitor.store import state
from monitor.warehouse.connection import backend_for
from monitor.warehouse.snapshot_store import (
    IDENT,
    RUN_ID,
    SnapshotError,
    SnapshotStore,
    SnapshotWriter,
    check_run_id,
)

__all__ = [
    "DELTA",
    "FULL",
    "RUN_ID",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotTable",
    "built_tables",
    "chain",
    "keep_snapshot",
    "list_snapshots",
    "load_info",
    "note_build",
    "snapshot_store",
    "snapshots_where",
    "write_head",
]

log = logging.getLogger(__name__)

_TABLE_MATERIALIZATIONS = frozenset({"table", "incremental", "snapshot"})
FULL, DELTA = "full", "delta"
_MAX_CHAIN = 10_000  # a guard against a sidecar loop, far above any full_snapshot_every


@dataclass(frozen=True)
class SnapshotTable:
    schema: str
    identifier: str
    model: str
    rows: int  # rows of the live table when the snapshot was taken
    watermark: int | None = None  # max(_publish_seq) when the table has it
    mode: str = FULL  # FULL: the whole table is copied; DELTA: rows above `since`
    stored: int | None = None  # rows copied (None in sidecars older than deltas)
    since: int | None = None  # DELTA: the copy holds the rows whose greatest seq > since
    key: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # "name TYPE", in table order (the engine's types)
    seq_max: dict[str, int | None] = field(default_factory=dict)
    seq_sum: dict[str, int | None] = field(default_factory=dict)

    @property
    def stored_rows(self) -> int:
        return self.rows if self.stored is None else self.stored

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SnapshotTable:
        doc = dict(doc)
        for name in ("key", "columns"):
            doc[name] = tuple(doc.get(name) or ())
        return cls(**doc)


@dataclass
class SnapshotInfo:
    """One kept snapshot: its metadata document (the sidecar)."""

    run_id: str
    path: str  # where the copy is: the DuckDB file, or the PostgreSQL schema
    created_at: str
    tables: list[SnapshotTable] = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0
    warehouse_bytes: int = 0
    kind: str = FULL  # FULL, or DELTA on top of `parent`
    parent: str | None = None
    depth: int = 0  # DELTA snapshots since the chain's FULL base (0 for the base)
    why_full: str = ""  # why a FULL snapshot was taken rather than a DELTA

    @property
    def rows(self) -> int:
        """Rows of the tables when the snapshot was taken."""
        return sum(t.rows for t in self.tables)

    @property
    def stored_rows(self) -> int:
        """Rows in the copy (fewer than :attr:`rows` for a DELTA)."""
        return sum(t.stored_rows for t in self.tables)

    def table(self, schema: str, identifier: str) -> SnapshotTable | None:
        return next((t for t in self.tables
                     if (t.schema, t.identifier) == (schema, identifier)), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SnapshotInfo:
        tables = [SnapshotTable.from_json(t) for t in doc.get("tables", [])]
        kind = str(doc.get("kind", FULL))
        if kind not in (FULL, DELTA):
            raise ValueError(f"unknown snapshot kind {kind!r}")
        parent = doc.get("parent")
        return cls(
            run_id=str(doc["run_id"]), path=str(doc["path"]), created_at=str(doc["created_at"]),
            tables=tables, seconds=float(doc.get("seconds", 0.0)), bytes=int(doc.get("bytes", 0)),
            warehouse_bytes=int(doc.get("warehouse_bytes", 0)), kind=kind,
            parent=str(parent) if parent is not None else None, depth=int(doc.get("depth", 0)),
            why_full=str(doc.get("why_full", "")),
        )


def snapshot_store(cfg: Config) -> SnapshotStore | None:
    """The warehouse engine's snapshot store; None where the engine keeps none."""
    return backend_for(cfg.warehouse).snapshot_store(cfg)


def _store(cfg: Config) -> SnapshotStore:
    store = snapshot_store(cfg)
    if store is None:
        raise SnapshotError("this warehouse keeps no snapshots (a DuckDB file at "
                            "[warehouse] path or a PostgreSQL url does)")
    return store


def snapshots_where(cfg: Config) -> str:
    """Where the snapshots are kept, for messages."""
    store = snapshot_store(cfg)
    return store.where if store is not None else "no store: this warehouse keeps no snapshots"


def built_tables(project: Project) -> list[tuple[str, str, str]]:
    """``(schema, identifier, model)`` of every model stored as a table (facts and the
    incremental tables they read), in lineage order. Views need no copy, and neither do
    staging tables: they hold every published batch, which a rollback does not change
    (the facts it takes back re-merge from them)."""
    return [(n.schema, n.identifier, n.name) for n in _built_nodes(project)]


def _built_nodes(project: Project) -> list[ModelInfo]:
    out = []
    for node in project.lineage():
        if (node.resource_type == "model" and node.materialization in _TABLE_MATERIALIZATIONS
                and node.layer != "stg"):
            for part in (node.schema, node.identifier):
                if not IDENT.match(part):
                    raise SnapshotError(f"table {node.name}: unsafe identifier {part!r}")
            out.append(node)
    return out


def list_snapshots(cfg: Config) -> list[SnapshotInfo]:
    """Kept snapshots, newest first (by creation time); none where the engine keeps none."""
    store = snapshot_store(cfg)
    if store is None:
        return []
    copies = store.copies()
    return [i for i in _documents(store) if i.run_id in copies]


def _documents(store: SnapshotStore) -> list[SnapshotInfo]:
    """Every readable document, newest first, whether or not its copy is still there."""
    found = []
    for doc in store.documents():
        try:
            found.append(SnapshotInfo.from_json(doc))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable snapshot document %s: skipped", doc.get("path"))
    return sorted(found, key=lambda i: i.created_at, reverse=True)


def load_info(cfg: Config, run_id: str) -> SnapshotInfo | None:
    """The document of ``run_id`` (None if there is none or it is unreadable)."""
    doc = _store(cfg).document(check_run_id(run_id))
    if doc is None:
        return None
    try:
        return SnapshotInfo.from_json(doc)
    except (ValueError, KeyError, TypeError):
        return None


def chain(cfg: Config, info: SnapshotInfo) -> list[SnapshotInfo]:
    """The snapshots a restore of ``info`` reads: its FULL base first, ``info`` last.

    Raises :class:`SnapshotError` naming the first one that is missing.
    """
    copies = _store(cfg).copies()
    out = [info]
    seen = {info.run_id}
    while out[-1].kind == DELTA:
        child = out[-1]
        parent = load_info(cfg, child.parent) if child.parent else None
        if parent is None or parent.run_id not in copies:
            raise SnapshotError(
                f"snapshot of run {info.run_id} needs the snapshot of run {child.parent} "
                f"(the parent of {child.run_id}), which is missing")
        if parent.run_id in seen or len(out) > _MAX_CHAIN:
            raise SnapshotError(f"snapshot of run {info.run_id}: its parents form a loop")
        seen.add(parent.run_id)
        out.append(parent)
    if info.run_id not in copies:
        raise SnapshotError(f"the copy of run {info.run_id}'s snapshot ({info.path}) is missing")
    return out[::-1]


# -- HEAD: which snapshot the live tables equal, and the builds since ----------------

def _enabled(cfg: Config) -> SnapshotStore | None:
    if cfg.evidence.keep_snapshots <= 0:
        return None
    return snapshot_store(cfg)


def _read_head(store: SnapshotStore) -> dict[str, Any]:
    try:
        doc = store.read_head()
    except (OSError, ValueError, sa.exc.SQLAlchemyError) as exc:
        log.warning("unreadable HEAD in %s (%s): the next snapshot is FULL", store.where, exc)
        return {"run_id": None, "builds": [], "unreadable": True}
    if doc is None:
        return {"run_id": None, "builds": []}
    if not isinstance(doc.get("builds", []), list):
        return {"run_id": None, "builds": [], "unreadable": True}
    return doc


def write_head(store: SnapshotStore, run_id: str | None, builds: list[dict[str, Any]]
               ) -> None:
    """Name the snapshot the live tables equal and the builds since, atomically: a
    snapshot and a rollback both end by writing it."""
    store.write_head({"run_id": run_id, "builds": builds})


def note_build(cfg: Config, run_id: str, full_refresh: bool = False) -> None:
    """Record that ``run_id`` is about to build the tables (the cycle calls this before
    dbt runs), so the next snapshot knows what changed since the last one."""
    store = _enabled(cfg)
    if store is None:
        return
    head = _read_head(store)
    builds = [*head.get("builds", []), {"run_id": run_id, "full_refresh": full_refresh}]
    try:
        write_head(store, head.get("run_id"), builds)
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        log.warning("cannot record the build in HEAD (%s, %s): the next snapshot is FULL",
                    store.where, exc)
        try:
            store.forget_head()
        except (OSError, sa.exc.SQLAlchemyError):
            log.error("cannot remove HEAD in %s either: delete it before the next snapshot",
                      store.where)


def _delta_parent(cfg: Config, store: SnapshotStore, run_id: str
                  ) -> tuple[SnapshotInfo | None, str]:
    """The snapshot a DELTA of ``run_id`` can build on, or None and why not."""
    every = cfg.evidence.full_snapshot_every
    if every <= 1:
        return None, "full_snapshot_every = 1"
    head = _read_head(store)
    base = head.get("run_id")
    if head.get("unreadable"):
        return None, "HEAD unreadable"
    if not base:
        return None, "no earlier snapshot to build on"
    for b in head.get("builds", []):
        if not isinstance(b, dict) or b.get("run_id") != run_id:
            return None, f"another build since the snapshot of {base}: {b}"
        if b.get("full_refresh"):
            return None, "full refresh"
    if base == run_id:
        return None, "a snapshot of this run already exists"
    parent = load_info(cfg, str(base)) if RUN_ID.match(str(base)) else None
    if parent is None or parent.run_id not in store.copies():
        return None, f"the snapshot of {base} is gone"
    try:
        depth = len(chain(cfg, parent))
    except SnapshotError as exc:
        return None, str(exc)
    if depth >= every:
        return None, f"every {every}th snapshot is FULL (full_snapshot_every)"
    return parent, ""


# -- taking a snapshot ---------------------------------------------------------------

def keep_snapshot(
    cfg: Config, run_id: str, project: Project | None = None, st: sa.Engine | None = None
) -> SnapshotInfo | None:
    """Save the built tables after a clean run (a DELTA of the changes since the last
    snapshot when that is exact, else FULL); prune old snapshots. None if skipped.

    The cycle calls this between steps, under its lock (on DuckDB the warehouse file
    must be closed). With ``st`` the cost is also merged into the run's summary in the
    state store.
    """
    if cfg.evidence.keep_snapshots <= 0:
        return None
    store = snapshot_store(cfg)
    if store is None:
        log.info("snapshots skipped: this warehouse keeps none (a DuckDB file at "
                 "[warehouse] path or a PostgreSQL url does)")
        return None
    check_run_id(run_id)
    project = project or load_manifest(cfg.dbt.target_path)
    nodes = _built_nodes(project)
    if not nodes or not store.ready():
        return None
    for what in store.clear_leftovers():
        log.warning("removed %s: left by a snapshot that did not finish "
                    "(its process ended mid-copy); not a kept snapshot", what)
    parent, why_full = _delta_parent(cfg, store, run_id)
    info = _copy_tables(cfg, store, run_id, nodes, parent, why_full)
    write_head(store, run_id, [])
    _prune(cfg, store)
    log.info(
        "%s snapshot of run %s%s: %d table(s), %d of %d rows stored, %d bytes in %.2f s "
        "(warehouse %d bytes)%s",
        info.kind.upper(), run_id, f" on {info.parent}" if info.parent else "",
        len(info.tables), info.stored_rows, info.rows, info.bytes, info.seconds,
        info.warehouse_bytes, f"; full because: {info.why_full}" if info.why_full else "",
    )
    if st is not None:
        _note_in_summary(st, run_id, {"snapshot": {
            "path": info.path, "kind": info.kind, "parent": info.parent,
            "rows": info.rows, "stored_rows": info.stored_rows, "bytes": info.bytes,
            "seconds": round(info.seconds, 3), "warehouse_bytes": info.warehouse_bytes,
        }})
    return info


def _copy_tables(
    cfg: Config, store: SnapshotStore, run_id: str, nodes: list[ModelInfo],
    parent: SnapshotInfo | None, why_full: str,
) -> SnapshotInfo:
    lookback = lookback_batches(cfg)
    started = time.perf_counter()
    kept: list[SnapshotTable] = []
    created_at = datetime.now(UTC).isoformat()

    def document(size: int, warehouse_size: int) -> dict[str, Any]:
        delta = parent is not None and any(t.mode == DELTA for t in kept)
        why = why_full
        if parent is not None and not delta:
            why = "no table could be copied as a delta"
        return SnapshotInfo(
            run_id=run_id, path=store.location(run_id), created_at=created_at, tables=kept,
            seconds=time.perf_counter() - started, bytes=size,
            warehouse_bytes=warehouse_size, kind=DELTA if delta else FULL,
            parent=parent.run_id if delta and parent else None,
            depth=parent.depth + 1 if delta and parent else 0, why_full="" if delta else why,
        ).to_json()

    with store.writer(run_id) as writer:
        for node in nodes:
            before = parent.table(node.schema, node.identifier) if parent else None
            kept.append(_copy_one(writer, node, before, lookback))
        doc = writer.finish(document)
    return SnapshotInfo.from_json(doc)


def _copy_one(
    writer: SnapshotWriter, node: ModelInfo, before: SnapshotTable | None, lookback: int
) -> SnapshotTable:
    schema, ident = node.schema, node.identifier
    types = writer.columns(schema, ident)
    if not types:
        raise SnapshotError(f"table {schema}.{ident} ({node.name}) is not in the warehouse")
    columns = tuple(f"{name} {tp}" for name, tp in types.items())
    seqs = [c for c in SEQ_COLUMNS if writer.is_integer(types.get(c, ""))]
    stats = writer.stats(schema, ident, seqs)
    key = tuple(node.grain)
    mode, since = FULL, None
    if (before is not None and before.mode in (FULL, DELTA) and node.is_incremental and seqs
            and not stats.unsequenced
            and key and set(key) <= set(types) and all(IDENT.match(k) for k in key)
            and before.key == key and before.columns == columns
            and set(before.seq_max) == set(seqs)):
        mode = DELTA
        mark = before.seq_max.get(_read_watermark(seqs))
        since = (mark if mark is not None else 0) - lookback
    stored = writer.copy(schema, ident, (seqs, int(since or 0)) if mode == DELTA else None)
    return SnapshotTable(
        schema, ident, node.name, stats.rows, stats.max.get(SEQ_COLUMN),
        mode=mode, stored=stored, since=since, key=key, columns=columns,
        seq_max=stats.max, seq_sum=stats.sum,
    )


def _read_watermark(seqs: list[str]) -> str:
    """The column an incremental run's ``publish_watermark()`` reads in a table with
    these sequence columns: ``_last_delivered_seq`` (the versions tables), else
    ``_publish_seq`` (the facts). Every row the run writes has a sequence column above
    that column's maximum before the run, less the lookback."""
    for c in READ_WATERMARKS:
        if c in seqs:
            return c
    return seqs[0]


def _prune(cfg: Config, store: SnapshotStore) -> None:
    """Keep the newest ``keep_snapshots`` and every snapshot they are built on."""
    every = _documents(store)
    copies = store.copies()
    by_id = {i.run_id: i for i in every}
    kept = [i for i in every if i.run_id in copies][:cfg.evidence.keep_snapshots]
    head = _read_head(store).get("run_id")
    if head in by_id:
        kept.append(by_id[head])  # the state the next snapshot builds on
    needed: set[str] = set()
    for info in kept:
        cur: SnapshotInfo | None = info
        while cur is not None and cur.run_id not in needed:
            needed.add(cur.run_id)
            cur = by_id.get(cur.parent) if cur.kind == DELTA and cur.parent else None
    for old in every:
        if old.run_id in needed or not RUN_ID.match(old.run_id):
            continue
        store.drop(old.run_id)
        log.info("snapshot of run %s pruned (keep_snapshots=%d)", old.run_id,
                 cfg.evidence.keep_snapshots)


def _note_in_summary(st: sa.Engine, run_id: str, extra: dict[str, Any]) -> None:
    """Merge ``extra`` into the run's JSON summary."""
    runs = state.runs
    with st.begin() as conn:
        current = conn.execute(sa.select(runs.c.summary).where(runs.c.run_id == run_id)).scalar()
        merged = {**(current or {}), **extra}
        conn.execute(runs.update().where(runs.c.run_id == run_id).values(summary=merged))
