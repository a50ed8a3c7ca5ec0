"""DuckDB, the default engine: one file, one writer process, a file lock beside it."""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.config import Config, WarehouseConfig
from monitor.warehouse.duckdb_snapshots import DuckDBSnapshots
from monitor.warehouse.engine import Backend, Busy
from monitor.warehouse.snapshot_store import SnapshotStore

_DATES = "['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y']"
_TIMESTAMPS = "['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%SZ']"
# Suite functions (engine.SUITE_FUNCTIONS) in DuckDB SQL: the expressions the suites
# were written with before PostgreSQL, so DuckDB's plans do not change.
_FUNCTIONS = {
    "try_date": "cast(try_strptime(trim({0}), " + _DATES + ") as date)",
    "try_timestamp": "try_strptime(trim({0}), " + _TIMESTAMPS + ")",
    "try_double": "try_cast({0} as double)",
    "key_hash": "hash({0})",
}

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
    gx_datasource = "duckdb"
    batch_copies = True

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

    def gx_connection(self, cfg: WarehouseConfig) -> tuple[str, dict[str, Any]]:
        """The shared settings (one configuration per file in a process)."""
        return cfg.sqlalchemy_url, {"connect_args": {"config": duckdb_settings(cfg)}}

    def suite_function(self, name: str, args: Sequence[str]) -> str:
        return _FUNCTIONS[name].format(*args)

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        return f"hash({', '.join(self.quote_ident(conn, k) for k in keys)}) % {modulus} = 0"


class GenericBackend(DuckDBBackend):
    """Any other SQLAlchemy URL (SQLite in tests): row by row, the file lock, no hash."""

    dialect = ""
    bulk_loader = ""
    gx_datasource = "sql"
    batch_copies = False

    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        return sa.create_engine(cfg.sqlalchemy_url, poolclass=sa.NullPool)

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        return "1 = 1"

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        return None

    def gx_connection(self, cfg: WarehouseConfig) -> tuple[str, dict[str, Any]]:
        return cfg.sqlalchemy_url, {}

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        return {"MONITOR_WAREHOUSE_PATH": str(cfg.path)}
