"""Last-known-good copies of the built tables, and rollback to them.

After a clean run the models materialized as tables (the facts, and the incremental
``int_*__versions`` tables the facts are enriched from: a rollback must take both back
to the same batch) are copied into ``<snapshots_dir>/<run_id>.duckdb`` with a JSON
sidecar saying what is inside, what it cost (seconds, bytes) and how big the whole
warehouse was. Only the newest ``keep_snapshots`` are kept.

Why a small file per snapshot rather than a copy of the warehouse: the facts are a
fraction of the warehouse (raw holds every delivered version), and ``ATTACH`` +
``CREATE TABLE AS`` copies them consistently while the warehouse is closed between
cycle steps. DuckDB only: other warehouses have their own time travel (a run there
logs that snapshots are skipped).

``rollback`` puts the facts back in one transaction and records an event. The facts'
publish-seq high-watermark goes back with them, so the next cycle re-merges every batch
published after the snapshot; retract a bad published batch first
(``monitor reject BATCH --retract``) or it is merged again.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor import batches, state
from monitor.config import Config, state_url
from monitor.manifest import Project, load_manifest
from monitor.operations import record_event
from monitor.warehouse import duckdb_settings, warehouse

__all__ = [
    "SnapshotError",
    "SnapshotInfo",
    "built_tables",
    "keep_snapshot",
    "list_snapshots",
    "retract_batch",
    "rollback",
    "snapshot_path",
]

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_TABLE_MATERIALIZATIONS = frozenset({"table", "incremental", "snapshot"})
_SNAP_DB, _WH_DB = "lkg_snapshot", "lkg_warehouse"  # catalog aliases while attached
WATERMARK_COLUMN = "_publish_seq"  # contracts.md: facts carry the publish sequence


class SnapshotError(RuntimeError):
    """A snapshot cannot be taken or restored (the message says why)."""


@dataclass(frozen=True)
class SnapshotTable:
    schema: str
    identifier: str
    model: str
    rows: int
    watermark: int | None = None  # max(_publish_seq) when the table has it


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

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["path"] = str(self.path)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SnapshotInfo:
        tables = [SnapshotTable(**t) for t in doc.get("tables", [])]
        return cls(
            run_id=str(doc["run_id"]), path=Path(doc["path"]), created_at=str(doc["created_at"]),
            tables=tables, seconds=float(doc.get("seconds", 0.0)), bytes=int(doc.get("bytes", 0)),
            warehouse_bytes=int(doc.get("warehouse_bytes", 0)),
        )


def snapshot_path(cfg: Config, run_id: str) -> Path:
    """Where the snapshot of ``run_id`` lives (the run id is validated: it names a file)."""
    if not RUN_ID.match(run_id):
        raise SnapshotError(f"not a run id: {run_id!r}")
    return cfg.evidence.snapshots_dir / f"{run_id}.duckdb"


def built_tables(project: Project) -> list[tuple[str, str, str]]:
    """``(schema, identifier, model)`` of every model stored as a table (facts and the
    incremental tables they read), in lineage order. Views need no copy."""
    out = []
    for node in project.lineage():
        if node.resource_type == "model" and node.materialization in _TABLE_MATERIALIZATIONS:
            for part in (node.schema, node.identifier):
                if not IDENT.match(part):
                    raise SnapshotError(f"table {node.name}: unsafe identifier {part!r}")
            out.append((node.schema, node.identifier, node.name))
    return out


def list_snapshots(cfg: Config) -> list[SnapshotInfo]:
    """Kept snapshots, newest first (by creation time)."""
    folder = cfg.evidence.snapshots_dir
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
        if info.path.exists():
            found.append(info)
    return sorted(found, key=lambda i: i.created_at, reverse=True)


def keep_snapshot(
    cfg: Config, run_id: str, project: Project | None = None, st: sa.Engine | None = None
) -> SnapshotInfo | None:
    """Copy the built tables after a clean run; prune old snapshots. None if skipped.

    The warehouse must be closed (the cycle calls this between steps, under its lock).
    With ``st`` the cost is also merged into the run's summary in the state store.
    """
    if not cfg.warehouse.is_duckdb or cfg.warehouse.url:
        log.info("snapshots skipped: only a DuckDB file warehouse can be copied this way")
        return None
    if cfg.evidence.keep_snapshots <= 0:
        return None
    project = project or load_manifest(cfg.dbt.target_path)
    tables = built_tables(project)
    if not tables or not cfg.warehouse.path.exists():
        return None
    info = _copy_tables(cfg, run_id, tables)
    _prune(cfg)
    log.info(
        "snapshot of run %s: %d table(s), %d rows, %d bytes in %.2f s (warehouse file %d bytes)",
        run_id, len(info.tables), info.rows, info.bytes, info.seconds, info.warehouse_bytes,
    )
    if st is not None:
        _note_in_summary(st, run_id, {"snapshot": {
            "path": str(info.path), "rows": info.rows, "bytes": info.bytes,
            "seconds": round(info.seconds, 3), "warehouse_bytes": info.warehouse_bytes,
        }})
    return info


def _copy_tables(cfg: Config, run_id: str, tables: list[tuple[str, str, str]]) -> SnapshotInfo:
    target = snapshot_path(cfg, run_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    kept: list[SnapshotTable] = []
    with _scratch(cfg) as conn:
        conn.exec_driver_sql(f"ATTACH {_lit(cfg.warehouse.path)} AS {_WH_DB} (READ_ONLY)")
        conn.exec_driver_sql(f"ATTACH {_lit(partial)} AS {_SNAP_DB}")
        try:
            for schema, ident, model in tables:
                kept.append(_copy_one(conn, schema, ident, model))
            conn.commit()
        finally:
            conn.rollback()  # a no-op after the commit; ends a failed copy's transaction
            conn.exec_driver_sql(f"DETACH {_SNAP_DB}")
            conn.exec_driver_sql(f"DETACH {_WH_DB}")
            conn.commit()
    partial.replace(target)  # a snapshot appears whole or not at all
    info = SnapshotInfo(
        run_id=run_id, path=target, created_at=datetime.now(UTC).isoformat(), tables=kept,
        seconds=time.perf_counter() - started, bytes=target.stat().st_size,
        warehouse_bytes=cfg.warehouse.path.stat().st_size,
    )
    target.with_suffix(".json").write_text(json.dumps(info.to_json(), indent=2), encoding="utf-8")
    return info


def _copy_one(conn: sa.Connection, schema: str, ident: str, model: str) -> SnapshotTable:
    src = f"{_WH_DB}.{_q(schema)}.{_q(ident)}"
    dst = f"{_SNAP_DB}.{_q(schema)}.{_q(ident)}"
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {_SNAP_DB}.{_q(schema)}")
    conn.exec_driver_sql(f"CREATE OR REPLACE TABLE {dst} AS SELECT * FROM {src}")
    rows = int(conn.exec_driver_sql(f"SELECT count(*) FROM {dst}").scalar() or 0)
    return SnapshotTable(schema, ident, model, rows, _watermark(conn, dst, schema, ident))


def _watermark(conn: sa.Connection, rel: str, schema: str, ident: str) -> int | None:
    catalog = rel.split(".", 1)[0]
    has = conn.exec_driver_sql(
        "SELECT count(*) FROM information_schema.columns WHERE table_catalog = ? "
        "AND table_schema = ? AND table_name = ? AND column_name = ?",
        (catalog, schema, ident, WATERMARK_COLUMN),
    ).scalar()
    if not has:
        return None
    value = conn.exec_driver_sql(f"SELECT max({_q(WATERMARK_COLUMN)}) FROM {rel}").scalar()
    return int(value) if value is not None else None


def _prune(cfg: Config) -> None:
    for old in list_snapshots(cfg)[cfg.evidence.keep_snapshots:]:
        old.path.unlink(missing_ok=True)
        old.path.with_suffix(".json").unlink(missing_ok=True)
        log.info("snapshot of run %s pruned (keep_snapshots=%d)", old.run_id,
                 cfg.evidence.keep_snapshots)


def rollback(cfg: Config, to_run: str, reason: str, actor: str) -> str:
    """Restore the fact tables from the snapshot of ``to_run``; returns a summary line."""
    if not reason.strip():
        raise SnapshotError("--reason must say why")
    path = snapshot_path(cfg, to_run)
    side = path.with_suffix(".json")
    if not path.exists() or not side.exists():
        kept = ", ".join(i.run_id for i in list_snapshots(cfg)) or "none"
        raise SnapshotError(f"no snapshot of run {to_run} (kept: {kept})")
    info = SnapshotInfo.from_json(json.loads(side.read_text(encoding="utf-8")))
    from monitor.cycle import Busy, cycle_lock  # the cycle imports this module's callers

    try:
        with cycle_lock(cfg):
            started = time.perf_counter()
            restored = _restore(cfg, path, info)
            seconds = time.perf_counter() - started
    except Busy as exc:
        raise SnapshotError(f"{exc}; try again when it has finished") from exc
    st = state.open_state(state_url(cfg))
    try:
        record_event(st, "rollback", to_run, actor, reason)
    finally:
        st.dispose()
    marks = [t.watermark for t in info.tables if t.watermark is not None]
    mark = f"; facts' high-watermark back to publish_seq {max(marks)}" if marks else ""
    return (
        f"rolled back {len(restored)} fact table(s) to run {to_run} "
        f"({', '.join(f'{m}: {n} rows' for m, n in restored)}) in {seconds:.2f} s{mark}. "
        "The next cycle re-merges batches published after the snapshot; "
        "retract a bad one first with `monitor reject BATCH --retract --reason ...`."
    )


def _restore(cfg: Config, path: Path, info: SnapshotInfo) -> list[tuple[str, int]]:
    """Replace each fact with its snapshot copy, all in one transaction."""
    restored = []
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        if wh.dialect.name != "duckdb":
            raise SnapshotError("rollback from a snapshot file needs the DuckDB warehouse")
        conn.exec_driver_sql(f"ATTACH {_lit(path)} AS {_SNAP_DB} (READ_ONLY)")
        conn.commit()  # ATTACH autobegan a transaction; the restore gets its own
        try:
            with conn.begin():
                for t in info.tables:
                    if not (IDENT.match(t.schema) and IDENT.match(t.identifier)):
                        raise SnapshotError(f"snapshot names an unsafe table {t.identifier!r}")
                    dst = f"{_q(t.schema)}.{_q(t.identifier)}"
                    src = f"{_SNAP_DB}.{_q(t.schema)}.{_q(t.identifier)}"
                    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {_q(t.schema)}")
                    conn.exec_driver_sql(f"CREATE OR REPLACE TABLE {dst} AS SELECT * FROM {src}")
                    rows = int(conn.exec_driver_sql(f"SELECT count(*) FROM {dst}").scalar() or 0)
                    if rows != t.rows:
                        raise SnapshotError(
                            f"{t.model}: restored {rows} rows, snapshot has {t.rows}")
                    restored.append((t.model, rows))
        finally:
            conn.exec_driver_sql(f"DETACH {_SNAP_DB}")
            conn.commit()
    return restored


def retract_batch(cfg: Config, batch_id: str, reason: str, actor: str) -> str:
    """Reject a batch even if published (staging stops reading it); records the event."""
    if not reason.strip():
        raise SnapshotError("--reason must say why")
    with warehouse(cfg.warehouse) as wh, wh.begin() as conn:
        try:
            before = batches.get_batch(conn, cfg.ingest.schema, batch_id).status
            batches.reject(conn, cfg.ingest.schema, batch_id, actor, reason, retract=True)
        except batches.BatchError as exc:
            raise SnapshotError(str(exc)) from exc
    st = state.open_state(state_url(cfg))
    try:
        record_event(st, "reject", batch_id, actor, f"retract: {reason}")
    finally:
        st.dispose()
    if before == batches.PUBLISHED:
        return (f"retracted {batch_id} (was published): staging no longer reads it; the facts "
                "still hold its rows until `monitor rollback --to RUN` or `monitor once "
                "--full-refresh`")
    return f"rejected {batch_id} (was {before}); its rows stay in raw and are never merged"


def _note_in_summary(st: sa.Engine, run_id: str, extra: dict[str, Any]) -> None:
    """Merge ``extra`` into the run's JSON summary."""
    runs = state.runs
    with st.begin() as conn:
        current = conn.execute(sa.select(runs.c.summary).where(runs.c.run_id == run_id)).scalar()
        merged = {**(current or {}), **extra}
        conn.execute(runs.update().where(runs.c.run_id == run_id).values(summary=merged))


@contextmanager
def _scratch(cfg: Config) -> Iterator[sa.Connection]:
    """An in-memory DuckDB with the warehouse's settings, to attach files to."""
    engine = sa.create_engine(
        "duckdb:///:memory:", connect_args={"config": dict(duckdb_settings(cfg.warehouse))},
        poolclass=sa.NullPool,
    )
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(path: Path) -> str:
    """A path as a SQL string literal (ATTACH takes no bind parameters)."""
    return "'" + str(path).replace("'", "''") + "'"


def copy_file(src: Path, dst: Path) -> int:
    """Copy a DuckDB file (and its WAL, if any); returns the bytes copied."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    total = dst.stat().st_size
    wal = src.with_name(src.name + ".wal")
    if wal.exists():
        shutil.copyfile(wal, dst.with_name(dst.name + ".wal"))
        total += wal.stat().st_size
    return total
