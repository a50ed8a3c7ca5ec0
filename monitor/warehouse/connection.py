"""Connections to the warehouse, opened per step and always closed, through the
backend of the configured engine (``monitor.warehouse.engine``).

A DuckDB file admits one writer process and, within a process, one configuration per
file: so the daemon never holds the warehouse between steps, and every engine it opens
uses the same settings (the ones dbt's profile reads from the environment).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from monitor.core.config import WarehouseConfig
from monitor.warehouse.duckdb import DuckDBBackend, GenericBackend, duckdb_settings
from monitor.warehouse.engine import Backend
from monitor.warehouse.postgres import PostgresBackend
from monitor.warehouse.spark import SparkBackend

__all__ = ["apply_dbt_environment", "backend_for", "backend_for_dbt", "backend_of",
           "backend_of_url", "create_engine", "dbt_environment", "duckdb_settings",
           "is_duckdb", "quote_ident", "warehouse"]

_BACKENDS: dict[str, Backend] = {b.dialect: b for b in (DuckDBBackend(), PostgresBackend(),
                                                         SparkBackend())}
_SCHEMES: dict[str, Backend] = {s: b for b in _BACKENDS.values() for s in b.url_schemes}
_GENERIC = GenericBackend()


def _by_url(url: str) -> Backend:
    scheme = url.partition("://")[0].lower()
    if scheme in _SCHEMES:
        return _SCHEMES[scheme]
    return _BACKENDS.get(sa.make_url(url).get_backend_name(), _GENERIC)


def backend_for(cfg: WarehouseConfig) -> Backend:
    """The backend of the configured warehouse: ``path`` alone is DuckDB."""
    if not cfg.url:
        return _BACKENDS["duckdb"]
    return _by_url(cfg.url)


def backend_of(engine: sa.Engine | sa.Connection) -> Backend:
    """The backend of an open engine or connection (by its dialect)."""
    return _BACKENDS.get(engine.dialect.name, _GENERIC)


def backend_for_dbt(adapter_type: str) -> Backend:
    """The backend whose engine a dbt adapter ``type`` writes to (generic if unknown)."""
    for backend in _BACKENDS.values():
        if backend.dbt_type == adapter_type:
            return backend
    return _GENERIC

def backend_of_url(url: str) -> Backend:
    """The backend of a SQLAlchemy URL (by its dialect) or of an ``sc://`` URL."""
    return _by_url(url)


def dbt_environment(cfg: WarehouseConfig) -> dict[str, str]:
    """Environment for dbt's profile, so dbt reaches the warehouse we observe."""
    return backend_for(cfg).dbt_environment(cfg)


def apply_dbt_environment(cfg: WarehouseConfig) -> None:
    os.environ.update(dbt_environment(cfg))
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def create_engine(cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
    """An engine on the warehouse; DuckDB files get the shared settings."""
    return backend_for(cfg).create_engine(cfg, read_only=read_only)


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
