"""DuckDB, the default engine: one file, one writer process, a file lock beside it."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.config import Config, WarehouseConfig
from monitor.warehouse.duckdb_snapshots import DuckDBSnapshots
from monitor.warehouse.engine import Backend, Busy
from monitor.warehouse.snapshot_store import SnapshotStore

_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


def duckdb_settings(cfg: WarehouseConfig) -> dict[str, str | int]:
    """Settings applied to every DuckDB connection (ours and dbt's)."""
    if not _MEMORY.match(cfg.memory_limit):
        raise ValueError(f"warehouse.memory_limit: not a size like '3GB': {cfg.memory_limit!r}")
    return {"memory_limit": cfg.memory_limit, "threads": cfg.threads}


@contextmanager
def file_lock(cfg: Config) -> Iterator[None]:
    """flock on ``<warehouse path>.lock``: released by the kernel if the process dies."""
    lock_path = Path(str(cfg.warehouse.path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Busy(f"another cycle is running on {cfg.warehouse.path}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# Dialects whose percentile_cont is an ordered-set aggregate (not only a window function).
_PERCENTILE_CONT_DIALECTS = frozenset({"postgresql", "redshift", "snowflake", "oracle"})
_NUMERIC_PREFIXES = (
    "TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC",
)  # fmt: skip


def dbt_path(output: Mapping[str, Any]) -> str:
    """The database file of a rendered dbt-duckdb output, absolute (dbt opens a relative
    path from its working directory); ``:memory:``, URLs and MotherDuck as given."""
    path = str(output.get("path") or ":memory:")
    if not path.startswith(":") and "://" not in path and not path.startswith("md:"):
        path = os.path.realpath(os.path.expanduser(path))
    return path


class DuckDBBackend(Backend):
    dialect = "duckdb"
    bulk_loader = "duckdb_read_csv"
    dbt_type = "duckdb"

    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        """The file gets the shared settings; an explicit duckdb URL is used as given."""
        if cfg.url:
            return sa.create_engine(cfg.url, poolclass=sa.NullPool)
        cfg.path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | int | bool] = dict(duckdb_settings(cfg))
        if read_only:
            config["access_mode"] = "READ_ONLY"
        return sa.create_engine(
            cfg.sqlalchemy_url, connect_args={"config": config}, poolclass=sa.NullPool
        )

    def cycle_lock(self, cfg: Config) -> AbstractContextManager[None]:
        return file_lock(cfg)

    def created(self, cfg: WarehouseConfig) -> bool:
        return cfg.path.exists()

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        """The file and the shared settings, so dbt opens the file exactly as we do."""
        return {"MONITOR_WAREHOUSE_PATH": str(cfg.path),
                "MONITOR_DUCKDB_MEMORY_LIMIT": cfg.memory_limit,
                "MONITOR_DUCKDB_THREADS": str(cfg.threads)}

    def dbt_location(self, output: Mapping[str, Any]) -> str:
        return dbt_path(output)

    def dbt_mismatch(self, cfg: WarehouseConfig, output: Mapping[str, Any]) -> str | None:
        """The output must be dbt-duckdb on the monitor's own file."""
        mine = os.path.realpath(cfg.path)
        if output.get("type") != self.dbt_type:
            return f"a {output.get('type') or 'dbt'} warehouse, not the DuckDB file {mine}"
        theirs = dbt_path(output)
        return None if theirs == mine else f"{theirs}, not {mine}"

    def release_dbt(self) -> None:
        """dbt-duckdb keeps its environment (and the open database file) in a class
        attribute between invocations; our own connections cannot open the file while
        dbt's differently-configured one lives."""
        try:
            from dbt.adapters.duckdb.connections import DuckDBConnectionManager
        except ImportError:  # dbt-duckdb not installed: nothing cached this way
            return
        with DuckDBConnectionManager._LOCK:
            env = DuckDBConnectionManager._ENV
            if env is not None:
                try:
                    env.close()
                finally:
                    DuckDBConnectionManager._ENV = None

    def relation_columns(self, conn: sa.Connection, schema: str, name: str
                         ) -> dict[str, bool] | None:
        """From information_schema: duckdb-engine's reflection queries
        pg_catalog.pg_collation, which DuckDB lacks (fails with SQLAlchemy >= 2.0.45)."""
        ic = sa.table(
            "columns",
            *(sa.column(c) for c in ("table_catalog", "table_schema", "table_name")),
            *(sa.column(c) for c in ("column_name", "data_type", "ordinal_position")),
            schema="information_schema",
        )
        rows = conn.execute(
            sa.select(ic.c.column_name, ic.c.data_type)
            .where(ic.c.table_schema == schema, ic.c.table_name == name)
            .where(ic.c.table_catalog == sa.func.current_database())
            .order_by(ic.c.ordinal_position)
        ).all()
        return {str(r[0]): str(r[1]).upper().startswith(_NUMERIC_PREFIXES) for r in rows} or None

    def median(self, dialect: sa.Dialect, col: sa.ColumnElement[Any]
               ) -> sa.ColumnElement[Any] | None:
        return sa.func.median(col)

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        """A DuckDB file per snapshot in ``[evidence] snapshots_dir``: only for the file
        at ``path`` (an explicit duckdb URL may be ``:memory:`` or another process's)."""
        if cfg.warehouse.url:
            return None
        return DuckDBSnapshots(cfg, duckdb_settings(cfg.warehouse),
                               lambda: self.create_engine(cfg.warehouse))

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        return f"hash({', '.join(self.quote_ident(conn, k) for k in keys)}) % {modulus} = 0"


class GenericBackend(DuckDBBackend):
    """Any other SQLAlchemy URL (SQLite in tests): row by row, the file lock, no hash,
    SQLAlchemy's reflection; dbt's target is not compared before a build."""

    dialect = ""
    bulk_loader = ""
    dbt_type = ""

    def dbt_location(self, output: Mapping[str, Any]) -> str:
        return Backend.dbt_location(self, output)

    def dbt_mismatch(self, cfg: WarehouseConfig, output: Mapping[str, Any]) -> str | None:
        return None

    def relation_columns(self, conn: sa.Connection, schema: str, name: str
                         ) -> dict[str, bool] | None:
        return Backend.relation_columns(self, conn, schema, name)

    def median(self, dialect: sa.Dialect, col: sa.ColumnElement[Any]
               ) -> sa.ColumnElement[Any] | None:
        if dialect.name in _PERCENTILE_CONT_DIALECTS:
            return sa.func.percentile_cont(0.5).within_group(col)
        return None

    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        return sa.create_engine(cfg.sqlalchemy_url, poolclass=sa.NullPool)

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        return "1 = 1"

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        return None

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        return {"MONITOR_WAREHOUSE_PATH": str(cfg.path)}
