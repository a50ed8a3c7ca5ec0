"""Last-known-good copies of the built tables (FULL, or a DELTA on a parent snapshot):
taking, listing and pruning them, and HEAD, the bookkeeping a DELTA builds on.

A small file per snapshot, not a copy of the warehouse: the facts are a fraction of it
(raw holds every delivered version). Files, the DELTA's exactness and the rollback's
checks: docs/contracts.md (Last-known-good snapshots). Restoring one is
``monitor.recovery.rollback``, which reads the sidecars and HEAD through this module.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import READ_WATERMARKS, SEQ_COLUMN, SEQ_COLUMNS
from monitor.core.config import Config, EvidenceConfig
from monitor.core.manifest import ModelInfo, Project, load_manifest, lookback_batches
from monitor.recovery.files import IDENT, path_literal, quote_ident, scratch
from monitor.store import state

__all__ = [
    "DELTA",
    "FULL",
    "HEAD",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotTable",
    "built_tables",
    "chain",
    "head_path",
    "keep_snapshot",
    "list_snapshots",
    "load_info",
    "note_build",
    "snapshot_path",
    "write_head",
]

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TABLE_MATERIALIZATIONS = frozenset({"table", "incremental", "snapshot"})
_SNAP_DB, _WH_DB = "lkg_snapshot", "lkg_warehouse"  # catalog aliases while attached
_INT_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT",
                        "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"})
FULL, DELTA = "full", "delta"
HEAD = "HEAD"  # <snapshots_dir>/HEAD: the snapshot the live tables equal, builds since
_MAX_CHAIN = 10_000  # a guard against a sidecar loop, far above any full_snapshot_every


class SnapshotError(RuntimeError):
    """A snapshot cannot be taken or restored (the message says why)."""


@dataclass(frozen=True)
class SnapshotTable:
    schema: str
    identifier: str
    model: str
    rows: int  # rows of the live table when the snapshot was taken
    watermark: int | None = None  # max(_publish_seq) when the table has it
    mode: str = FULL  # FULL: the whole table is in the file; DELTA: rows above `since`
    stored: int | None = None  # rows in the file (None in sidecars older than deltas)
    since: int | None = None  # DELTA: the file holds the rows whose greatest seq > since
    key: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # "name TYPE", in table order
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
    """One kept snapshot: the sidecar JSON next to the ``.duckdb`` file."""

    run_id: str
    path: Path
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
        """Rows in the snapshot file (fewer than :attr:`rows` for a DELTA)."""
        return sum(t.stored_rows for t in self.tables)

    def table(self, schema: str, identifier: str) -> SnapshotTable | None:
        return next((t for t in self.tables
                     if (t.schema, t.identifier) == (schema, identifier)), None)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["path"] = str(self.path)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SnapshotInfo:
        tables = [SnapshotTable.from_json(t) for t in doc.get("tables", [])]
        kind = str(doc.get("kind", FULL))
        if kind not in (FULL, DELTA):
            raise ValueError(f"unknown snapshot kind {kind!r}")
        parent = doc.get("parent")
        return cls(
            run_id=str(doc["run_id"]), path=Path(doc["path"]), created_at=str(doc["created_at"]),
            tables=tables, seconds=float(doc.get("seconds", 0.0)), bytes=int(doc.get("bytes", 0)),
            warehouse_bytes=int(doc.get("warehouse_bytes", 0)), kind=kind,
            parent=str(parent) if parent is not None else None, depth=int(doc.get("depth", 0)),
            why_full=str(doc.get("why_full", "")),
        )


def snapshot_path(cfg: Config, run_id: str) -> Path:
    """Where the snapshot of ``run_id`` lives (the run id is validated: it names a file)."""
    if not RUN_ID.match(run_id):
        raise SnapshotError(f"not a run id: {run_id!r}")
    return cfg.evidence.snapshots_dir / f"{run_id}.duckdb"


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
    """Kept snapshots, newest first (by creation time)."""
    return [i for i in _sidecars(cfg.evidence) if i.path.exists()]


def _sidecars(evidence: EvidenceConfig) -> list[SnapshotInfo]:
    """Every readable sidecar, newest first, whether or not its file is still there."""
    folder = evidence.snapshots_dir
    if not folder.is_dir():
        return []
    found = []
    for side in folder.glob("*.json"):
        try:
            info = SnapshotInfo.from_json(json.loads(side.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("unreadable snapshot sidecar %s: skipped", side)
            continue
        info.path = side.with_suffix(".duckdb")  # the folder may have moved since
        found.append(info)
    return sorted(found, key=lambda i: i.created_at, reverse=True)


def load_info(cfg: Config, run_id: str) -> SnapshotInfo | None:
    """The sidecar of ``run_id`` (None if there is none or it is unreadable)."""
    path = snapshot_path(cfg, run_id)
    try:
        info = SnapshotInfo.from_json(
            json.loads(path.with_suffix(".json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    info.path = path
    return info


def chain(cfg: Config, info: SnapshotInfo) -> list[SnapshotInfo]:
    """The snapshots a restore of ``info`` reads: its FULL base first, ``info`` last.

    Raises :class:`SnapshotError` naming the first one that is missing.
    """
    out = [info]
    seen = {info.run_id}
    while out[-1].kind == DELTA:
        child = out[-1]
        parent = load_info(cfg, child.parent) if child.parent else None
        if parent is None or not parent.path.exists():
            raise SnapshotError(
                f"snapshot of run {info.run_id} needs the snapshot of run {child.parent} "
                f"(the parent of {child.run_id}), which is missing")
        if parent.run_id in seen or len(out) > _MAX_CHAIN:
            raise SnapshotError(f"snapshot of run {info.run_id}: its parents form a loop")
        seen.add(parent.run_id)
        out.append(parent)
    if not info.path.exists():
        raise SnapshotError(f"snapshot file of run {info.run_id} is missing")
    return out[::-1]


# -- HEAD: which snapshot the live tables equal, and the builds since ----------------

def _enabled(cfg: Config) -> bool:
    return (cfg.warehouse.is_duckdb and not cfg.warehouse.url
            and cfg.evidence.keep_snapshots > 0)


def head_path(evidence: EvidenceConfig) -> Path:
    """HEAD's file; a rollback removes it before restoring (the next snapshot is then FULL)."""
    return evidence.snapshots_dir / HEAD


def _read_head(evidence: EvidenceConfig) -> dict[str, Any]:
    try:
        doc = json.loads(head_path(evidence).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"run_id": None, "builds": []}
    except (OSError, ValueError):
        log.warning("unreadable %s: the next snapshot is FULL", head_path(evidence))
        return {"run_id": None, "builds": [], "unreadable": True}
    if not isinstance(doc, dict) or not isinstance(doc.get("builds", []), list):
        return {"run_id": None, "builds": [], "unreadable": True}
    return doc


def write_head(evidence: EvidenceConfig, run_id: str | None, builds: list[dict[str, Any]]
               ) -> None:
    """Name the snapshot the live tables equal and the builds since, atomically: a
    snapshot and a rollback both end by writing it."""
    path = head_path(evidence)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps({"run_id": run_id, "builds": builds}, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def note_build(cfg: Config, run_id: str, full_refresh: bool = False) -> None:
    """Record that ``run_id`` is about to build the tables (the cycle calls this before
    dbt runs), so the next snapshot knows what changed since the last one."""
    if not _enabled(cfg):
        return
    head = _read_head(cfg.evidence)
    builds = [*head.get("builds", []), {"run_id": run_id, "full_refresh": full_refresh}]
    try:
        write_head(cfg.evidence, head.get("run_id"), builds)
    except OSError as exc:
        log.warning("cannot record the build in %s (%s): the next snapshot is FULL",
                    head_path(cfg.evidence), exc)
        try:
            head_path(cfg.evidence).unlink(missing_ok=True)
        except OSError:
            log.error("cannot remove %s either: delete it before the next snapshot",
                      head_path(cfg.evidence))


def _delta_parent(cfg: Config, run_id: str) -> tuple[SnapshotInfo | None, str]:
    """The snapshot a DELTA of ``run_id`` can build on, or None and why not."""
    every = cfg.evidence.full_snapshot_every
    if every <= 1:
        return None, "full_snapshot_every = 1"
    head = _read_head(cfg.evidence)
    base = head.get("run_id")
    if head.get("unreadable"):
        return None, f"{HEAD} unreadable"
    if not base:
        return None, "no earlier snapshot to build on"
    for b in head.get("builds", []):
        if not isinstance(b, dict) or b.get("run_id") != run_id:
            return None, f"another build since the snapshot of {base}: {b}"
        if b.get("full_refresh"):
            return None, "full refresh"
    if base == run_id:
        return None, "a snapshot of this run already exists"
    parent = load_info(cfg, str(base))
    if parent is None or not parent.path.exists():
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

    The warehouse must be closed (the cycle calls this between steps, under its lock).
    With ``st`` the cost is also merged into the run's summary in the state store.
    """
    if not cfg.warehouse.is_duckdb or cfg.warehouse.url:
        log.info("snapshots skipped: only a DuckDB file warehouse can be copied this way")
        return None
    if cfg.evidence.keep_snapshots <= 0:
        return None
    project = project or load_manifest(cfg.dbt.target_path)
    nodes = _built_nodes(project)
    if not nodes or not cfg.warehouse.path.exists():
        return None
    _clear_leftovers(cfg)
    parent, why_full = _delta_parent(cfg, run_id)
    info = _copy_tables(cfg, run_id, nodes, parent, why_full)
    write_head(cfg.evidence, run_id, [])
    _prune(cfg.evidence)
    log.info(
        "%s snapshot of run %s%s: %d table(s), %d of %d rows stored, %d bytes in %.2f s "
        "(warehouse file %d bytes)%s",
        info.kind.upper(), run_id, f" on {info.parent}" if info.parent else "",
        len(info.tables), info.stored_rows, info.rows, info.bytes, info.seconds,
        info.warehouse_bytes, f"; full because: {info.why_full}" if info.why_full else "",
    )
    if st is not None:
        _note_in_summary(st, run_id, {"snapshot": {
            "path": str(info.path), "kind": info.kind, "parent": info.parent,
            "rows": info.rows, "stored_rows": info.stored_rows, "bytes": info.bytes,
            "seconds": round(info.seconds, 3), "warehouse_bytes": info.warehouse_bytes,
        }})
    return info


def _clear_leftovers(cfg: Config) -> None:
    """Remove what a snapshot that did not finish left behind (``kill -9`` or a power
    cut mid-copy): its ``.<run>.duckdb.partial`` file and WAL, a ``.partial`` sidecar or
    HEAD, or a ``<run>.duckdb`` already moved into place whose sidecar was never written.

    No sidecar names any of them, so no listing or rollback ever read them; without this
    they would only take disk space forever (the next snapshot has another run id). Each
    removal is logged. The cycle calls this under its lock: no snapshot is being written.
    """
    folder = cfg.evidence.snapshots_dir
    if not folder.is_dir():
        return
    leftovers = [p for p in folder.iterdir()
                 if p.name.startswith(".") and ".partial" in p.name and p.is_file()]
    for db in folder.glob("*.duckdb"):
        if RUN_ID.match(db.stem) and not db.with_suffix(".json").exists():
            leftovers += [db, db.with_name(db.name + ".wal")]
    for path in sorted(leftovers):
        if path.is_file():
            path.unlink(missing_ok=True)
            log.warning("removed %s: left by a snapshot that did not finish "
                        "(its process ended mid-copy); not a kept snapshot", path)


def _copy_tables(
    cfg: Config, run_id: str, nodes: list[ModelInfo], parent: SnapshotInfo | None,
    why_full: str,
) -> SnapshotInfo:
    target = snapshot_path(cfg, run_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    lookback = lookback_batches(cfg)
    started = time.perf_counter()
    kept: list[SnapshotTable] = []
    with scratch(cfg) as conn:
        conn.exec_driver_sql(f"ATTACH {path_literal(cfg.warehouse.path)} AS {_WH_DB} (READ_ONLY)")
        conn.exec_driver_sql(f"ATTACH {path_literal(partial)} AS {_SNAP_DB}")
        try:
            for node in nodes:
                before = parent.table(node.schema, node.identifier) if parent else None
                kept.append(_copy_one(conn, node, before, lookback))
            conn.commit()
        finally:
            conn.rollback()  # a no-op after the commit; ends a failed copy's transaction
            conn.exec_driver_sql(f"DETACH {_SNAP_DB}")
            conn.exec_driver_sql(f"DETACH {_WH_DB}")
            conn.commit()
    partial.replace(target)  # a snapshot appears whole or not at all
    delta = parent is not None and any(t.mode == DELTA for t in kept)
    if parent is not None and not delta:
        why_full = "no table could be copied as a delta"
    info = SnapshotInfo(
        run_id=run_id, path=target, created_at=datetime.now(UTC).isoformat(), tables=kept,
        seconds=time.perf_counter() - started, bytes=target.stat().st_size,
        warehouse_bytes=cfg.warehouse.path.stat().st_size,
        kind=DELTA if delta else FULL, parent=parent.run_id if delta and parent else None,
        depth=parent.depth + 1 if delta and parent else 0, why_full="" if delta else why_full,
    )
    side = target.with_suffix(".json")
    tmp = side.with_name(f".{side.name}.partial")
    tmp.write_text(json.dumps(info.to_json(), indent=2), encoding="utf-8")
    os.replace(tmp, side)
    return info


def _copy_one(
    conn: sa.Connection, node: ModelInfo, before: SnapshotTable | None, lookback: int
) -> SnapshotTable:
    schema, ident = node.schema, node.identifier
    src = f"{_WH_DB}.{quote_ident(schema)}.{quote_ident(ident)}"
    dst = f"{_SNAP_DB}.{quote_ident(schema)}.{quote_ident(ident)}"
    types = _column_types(conn, schema, ident)
    columns = tuple(f"{name} {tp}" for name, tp in types.items())
    seqs = [c for c in SEQ_COLUMNS if types.get(c, "").upper() in _INT_TYPES]
    stats = _stats(conn, src, seqs)
    key = tuple(node.grain)
    mode, since = FULL, None
    if (before is not None and before.mode in (FULL, DELTA) and node.is_incremental and seqs
            and not stats["unsequenced"]
            and key and set(key) <= set(types) and all(IDENT.match(k) for k in key)
            and before.key == key and before.columns == columns
            and set(before.seq_max) == set(seqs)):
        mode = DELTA
        mark = before.seq_max.get(_read_watermark(seqs))
        since = (mark if mark is not None else 0) - lookback
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {_SNAP_DB}.{quote_ident(schema)}")
    where = ""
    if mode == DELTA:  # greatest(...) > since, in a form DuckDB pushes into the scan
        where = " WHERE " + " OR ".join(f"{quote_ident(c)} > {int(since or 0)}" for c in seqs)
    conn.exec_driver_sql(f"CREATE OR REPLACE TABLE {dst} AS SELECT * FROM {src}{where}")
    stored = int(conn.exec_driver_sql(f"SELECT count(*) FROM {dst}").scalar() or 0)
    return SnapshotTable(
        schema, ident, node.name, stats["rows"], stats["max"].get(SEQ_COLUMN),
        mode=mode, stored=stored, since=since, key=key, columns=columns,
        seq_max=stats["max"], seq_sum=stats["sum"],
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


def _column_types(conn: sa.Connection, schema: str, ident: str) -> dict[str, str]:
    """``{column: type}`` of a warehouse table, in table order."""
    rows = conn.exec_driver_sql(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = ? "
        "AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        (_WH_DB, schema, ident),
    ).all()
    return {str(r[0]): str(r[1]) for r in rows}


def _stats(conn: sa.Connection, rel: str, seqs: list[str]) -> dict[str, Any]:
    """Row count, rows without any sequence (a table with such rows is copied whole),
    and the max and sum of each sequence column: one scan of narrow columns. The sums
    let a rollback check that it rebuilt exactly this state."""
    unsequenced = " AND ".join(f"{quote_ident(c)} IS NULL" for c in seqs) or "false"
    parts = ["count(*)", f"count(*) FILTER (WHERE {unsequenced})"]
    for c in seqs:
        parts += [f"max({quote_ident(c)})", f"sum({quote_ident(c)})"]
    row = conn.exec_driver_sql(f"SELECT {', '.join(parts)} FROM {rel}").one()
    out: dict[str, Any] = {"rows": int(row[0] or 0), "unsequenced": int(row[1] or 0),
                           "max": {}, "sum": {}}
    for i, c in enumerate(seqs):
        mx, sm = row[2 + 2 * i], row[3 + 2 * i]
        out["max"][c] = int(mx) if mx is not None else None
        out["sum"][c] = int(sm) if sm is not None else None
    return out


def _prune(evidence: EvidenceConfig) -> None:
    """Keep the newest ``keep_snapshots`` and every snapshot they are built on."""
    every = _sidecars(evidence)
    by_id = {i.run_id: i for i in every}
    kept = [i for i in every if i.path.exists()][:evidence.keep_snapshots]
    head = _read_head(evidence).get("run_id")
    if head in by_id:
        kept.append(by_id[head])  # the state the next snapshot builds on
    needed: set[str] = set()
    for info in kept:
        cur: SnapshotInfo | None = info
        while cur is not None and cur.run_id not in needed:
            needed.add(cur.run_id)
            cur = by_id.get(cur.parent) if cur.kind == DELTA and cur.parent else None
    for old in every:
        if old.run_id in needed:
            continue
        old.path.unlink(missing_ok=True)
        old.path.with_suffix(".json").unlink(missing_ok=True)
        log.info("snapshot of run %s pruned (keep_snapshots=%d)", old.run_id,
                 evidence.keep_snapshots)


def _note_in_summary(st: sa.Engine, run_id: str, extra: dict[str, Any]) -> None:
    """Merge ``extra`` into the run's JSON summary."""
    runs = state.runs
    with st.begin() as conn:
        current = conn.execute(sa.select(runs.c.summary).where(runs.c.run_id == run_id)).scalar()
        merged = {**(current or {}), **extra}
        conn.execute(runs.update().where(runs.c.run_id == run_id).values(summary=merged))
