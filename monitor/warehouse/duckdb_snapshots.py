"""Snapshots of a DuckDB file warehouse: one DuckDB file per snapshot,
``<snapshots_dir>/<run_id>.duckdb``, its metadata document the sidecar
``<run_id>.json`` beside it, and ``HEAD`` in the same folder.

A snapshot is copied into a hidden ``.<run_id>.duckdb.partial`` file from an in-memory
DuckDB that attaches the warehouse read-only, renamed into place whole, and its sidecar
written last (atomically, through a ``.partial`` file too). A restore attaches the
chain's files to a warehouse connection and rebuilds the tables in one transaction.
ATTACH and DDL take no bind parameters, hence the quoting and the identifier checks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.config import Config
from monitor.warehouse.snapshot_files import HEAD, FolderDocuments, write_atomically
from monitor.warehouse.snapshot_store import (
    RUN_ID,
    SnapshotRestorer,
    SnapshotWriter,
    TableStats,
    above,
    check_names,
    check_run_id,
    quote,
    sequence_sums,
    table_stats,
)

__all__ = ["DuckDBSnapshots", "head_path", "snapshot_path"]

log = logging.getLogger(__name__)

_SNAP_DB, _WH_DB = "lkg_snapshot", "lkg_warehouse"  # catalog aliases while attached
_INT_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT",
                        "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"})


def snapshot_path(cfg: Config, run_id: str) -> Path:
    """The file of ``run_id``'s snapshot (the run id is validated: it names a file)."""
    return cfg.evidence.snapshots_dir / f"{check_run_id(run_id)}.duckdb"


def head_path(cfg: Config) -> Path:
    return cfg.evidence.snapshots_dir / HEAD


def path_literal(path: Path) -> str:
    """A path as a SQL string literal (ATTACH and PRAGMA take no bind parameters)."""
    return "'" + str(path).replace("'", "''") + "'"


class DuckDBSnapshots(FolderDocuments):
    def __init__(self, cfg: Config, settings: dict[str, str | int],
                 engine: Callable[[], sa.Engine]) -> None:
        self.cfg = cfg
        self.folder = cfg.evidence.snapshots_dir
        self.where = str(self.folder)
        self._settings = settings
        self._engine = engine  # the warehouse, read-write

    def location(self, run_id: str) -> str:
        return str(snapshot_path(self.cfg, run_id))

    def ready(self) -> bool:
        return self.cfg.warehouse.path.exists()

    # -- documents: FolderDocuments (the sidecars and HEAD) ---------------------------

    def copies(self) -> set[str]:
        if not self.folder.is_dir():
            return set()
        return {p.stem for p in self.folder.glob("*.duckdb") if RUN_ID.match(p.stem)}

    def drop(self, run_id: str) -> None:
        path = snapshot_path(self.cfg, run_id)
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".wal").unlink(missing_ok=True)
        self.drop_document(run_id)

    def clear_leftovers(self) -> list[str]:
        """A killed snapshot's ``.<run>.duckdb.partial`` file and WAL, a ``.partial``
        sidecar or HEAD, or a ``<run>.duckdb`` moved into place whose sidecar was never
        written."""
        if not self.folder.is_dir():
            return []
        leftovers = self.partial_files()
        for db in self.folder.glob("*.duckdb"):
            if RUN_ID.match(db.stem) and not db.with_suffix(".json").exists():
                leftovers += [db, db.with_name(db.name + ".wal")]
        removed = []
        for path in sorted(leftovers):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(str(path))
        return removed

    # -- copying and restoring --------------------------------------------------------

    @contextmanager
    def _scratch(self) -> Iterator[sa.Connection]:
        """An in-memory DuckDB with the warehouse's settings, to attach files to."""
        engine = sa.create_engine("duckdb:///:memory:",
                                  connect_args={"config": dict(self._settings)},
                                  poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()

    @contextmanager
    def writer(self, run_id: str) -> Iterator[SnapshotWriter]:
        target = snapshot_path(self.cfg, run_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)
        with self._scratch() as conn:
            conn.exec_driver_sql(
                f"ATTACH {path_literal(self.cfg.warehouse.path)} AS {_WH_DB} (READ_ONLY)")
            conn.exec_driver_sql(f"ATTACH {path_literal(partial)} AS {_SNAP_DB}")
            writer = _Writer(conn, self.cfg, target, partial)
            try:
                yield writer
            finally:
                if writer.attached:
                    conn.rollback()  # ends a failed copy's transaction
                    conn.exec_driver_sql(f"DETACH {_SNAP_DB}")
                    conn.exec_driver_sql(f"DETACH {_WH_DB}")
                    conn.commit()

    def restorer(self, run_ids: Sequence[str]) -> AbstractContextManager[SnapshotRestorer]:
        return self._restore(list(run_ids))

    @contextmanager
    def _restore(self, run_ids: list[str]) -> Iterator[SnapshotRestorer]:
        aliases = {run_id: f"{_SNAP_DB}_{i}" for i, run_id in enumerate(run_ids)}
        engine = self._engine()
        try:
            with engine.connect() as conn:
                attached: list[str] = []
                try:
                    for run_id, alias in aliases.items():
                        conn.exec_driver_sql(
                            f"ATTACH {path_literal(snapshot_path(self.cfg, run_id))} "
                            f"AS {alias} (READ_ONLY)")
                        attached.append(alias)
                    conn.commit()  # ATTACH autobegan a transaction; the restore gets its own
                    with conn.begin():
                        yield _Restorer(conn, aliases)
                finally:
                    conn.rollback()
                    for alias in attached:
                        conn.exec_driver_sql(f"DETACH {alias}")
                    conn.commit()
        finally:
            engine.dispose()


class _Writer(SnapshotWriter):
    def __init__(self, conn: sa.Connection, cfg: Config, target: Path, partial: Path) -> None:
        self.conn, self.cfg, self.target, self.partial = conn, cfg, target, partial
        self.attached = True

    def columns(self, schema: str, ident: str) -> dict[str, str]:
        rows = self.conn.exec_driver_sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = ? AND table_schema = ? AND table_name = ? "
            "ORDER BY ordinal_position", (_WH_DB, schema, ident)).all()
        return {str(r[0]): str(r[1]) for r in rows}

    def is_integer(self, type_name: str) -> bool:
        return type_name.upper() in _INT_TYPES

    def stats(self, schema: str, ident: str, seqs: Sequence[str]) -> TableStats:
        check_names(schema, ident)
        return table_stats(self.conn, f"{_WH_DB}.{quote(schema)}.{quote(ident)}", seqs)

    def copy(self, schema: str, ident: str, delta: tuple[Sequence[str], int] | None) -> int:
        check_names(schema, ident)
        src = f"{_WH_DB}.{quote(schema)}.{quote(ident)}"
        dst = f"{_SNAP_DB}.{quote(schema)}.{quote(ident)}"
        self.conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {_SNAP_DB}.{quote(schema)}")
        where = f" WHERE {above(*delta)}" if delta else ""
        self.conn.exec_driver_sql(f"CREATE OR REPLACE TABLE {dst} AS SELECT * FROM {src}{where}")
        return int(self.conn.exec_driver_sql(f"SELECT count(*) FROM {dst}").scalar() or 0)

    def finish(self, document: Callable[[int, int], dict[str, Any]]) -> dict[str, Any]:
        conn = self.conn
        conn.commit()
        conn.exec_driver_sql(f"DETACH {_SNAP_DB}")
        conn.exec_driver_sql(f"DETACH {_WH_DB}")
        conn.commit()
        self.attached = False
        self.partial.replace(self.target)  # a snapshot file appears whole or not at all
        doc = document(self.target.stat().st_size, self.cfg.warehouse.path.stat().st_size)
        doc = {**doc, "path": str(self.target)}
        write_atomically(self.target.with_suffix(".json"), json.dumps(doc, indent=2))
        return doc


class _Restorer(SnapshotRestorer):
    def __init__(self, conn: sa.Connection, aliases: dict[str, str]) -> None:
        self.conn, self.aliases = conn, aliases

    def _rel(self, schema: str, ident: str, run_id: str | None = None) -> str:
        check_names(schema, ident)
        rel = f"{quote(schema)}.{quote(ident)}"  # the same name in every catalog
        return f"{self.aliases[run_id]}.{rel}" if run_id is not None else rel

    def replace(self, schema: str, ident: str, run_id: str) -> None:
        self.conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        self.conn.exec_driver_sql(f"CREATE OR REPLACE TABLE {self._rel(schema, ident)} AS "
                                  f"SELECT * FROM {self._rel(schema, ident, run_id)}")

    def apply_delta(self, schema: str, ident: str, run_id: str, key: Sequence[str]) -> None:
        check_names(*key)
        dst, src = self._rel(schema, ident), self._rel(schema, ident, run_id)
        match = " AND ".join(f"{dst}.{quote(k)} = delta_rows.{quote(k)}" for k in key)
        keys = ", ".join(quote(k) for k in key)
        self.conn.exec_driver_sql(
            f"DELETE FROM {dst} USING (SELECT DISTINCT {keys} FROM {src}) AS delta_rows "
            f"WHERE {match}")
        self.conn.exec_driver_sql(f"INSERT INTO {dst} BY NAME SELECT * FROM {src}")

    def count(self, schema: str, ident: str) -> int:
        return int(self.conn.exec_driver_sql(
            f"SELECT count(*) FROM {self._rel(schema, ident)}").scalar() or 0)

    def sums(self, schema: str, ident: str, seqs: Sequence[str]) -> dict[str, int | None]:
        return sequence_sums(self.conn, self._rel(schema, ident), seqs)

