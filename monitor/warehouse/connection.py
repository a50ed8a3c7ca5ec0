"""Connections to the warehouse, opened per step and always closed.

A DuckDB file admits one writer process and, within a process, one configuration per
file: so the daemon never holds the warehouse between steps, and every engine it opens
uses the same settings (the ones dbt's profile reads from the environment).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from monitor.core.config import WarehouseConfig

_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


def duckdb_settings(cfg: WarehouseConfig) -> dict[str, str | int]:
    """Settings applied to every DuckDB connection (ours and dbt's)."""
    if not _MEMORY.match(cfg.memory_limit):
        raise ValueError(f"warehouse.memory_limit: not a size like '3GB': {cfg.memory_limit!r}")
    return {"memory_limit": cfg.memory_limit, "threads": cfg.threads}


def dbt_environment(cfg: WarehouseConfig) -> dict[str, str]:
    """Environment for dbt's profile, so dbt opens the file exactly as we do."""
    env = {"MONITOR_WAREHOUSE_PATH": str(cfg.path)}
    if cfg.is_duckdb:
        env["MONITOR_DUCKDB_MEMORY_LIMIT"] = cfg.memory_limit
        env["MONITOR_DUCKDB_THREADS"] = str(cfg.threads)
    return env


def apply_dbt_environment(cfg: WarehouseConfig) -> None:
    os.environ.update(dbt_environment(cfg))
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def create_engine(cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
    """An engine on the warehouse; DuckDB files get the shared settings."""
    if cfg.is_duckdb and not cfg.url:
        cfg.path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | int | bool] = dict(duckdb_settings(cfg))
        if read_only:
            config["access_mode"] = "READ_ONLY"
        # NullPool: nothing stays open once the step's connection is closed.
        return sa.create_engine(
            cfg.sqlalchemy_url, connect_args={"config": config}, poolclass=sa.NullPool
        )
    return sa.create_engine(cfg.sqlalchemy_url, poolclass=sa.NullPool)


@contextmanager
def warehouse(cfg: WarehouseConfig, *, read_only: bool = False) -> Iterator[sa.Engine]:
    """An engine for one step, disposed on exit so the file is released."""
    engine = create_engine(cfg, read_only=read_only)
    try:
        yield engine
    finally:
        engine.dispose()


def is_duckdb(engine: sa.Engine | sa.Connection) -> bool:
    return engine.dialect.name == "duckdb"


def quote_ident(engine: sa.Engine | sa.Connection, name: str) -> str:
    return engine.dialect.identifier_preparer.quote(name)
