"""DuckDB, the default engine: one file, one writer process, a file lock beside it."""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

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


class DuckDBBackend(Backend):
    dialect = "duckdb"
    bulk_loader = "duckdb_read_csv"

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

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        """The file and the shared settings, so dbt opens the file exactly as we do."""
        return {"MONITOR_WAREHOUSE_PATH": str(cfg.path),
                "MONITOR_DUCKDB_MEMORY_LIMIT": cfg.memory_limit,
                "MONITOR_DUCKDB_THREADS": str(cfg.threads)}

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
    """Any other SQLAlchemy URL (SQLite in tests): row by row, the file lock, no hash."""

    dialect = ""
    bulk_loader = ""

    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        return sa.create_engine(cfg.sqlalchemy_url, poolclass=sa.NullPool)

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        return "1 = 1"

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        return None

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        return {"MONITOR_WAREHOUSE_PATH": str(cfg.path)}
