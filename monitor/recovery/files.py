"""DuckDB files as recovery handles them: copied whole, attached to a scratch
connection, named in SQL text (ATTACH and DDL take no bind parameters, hence the
quoting and the identifier check)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from monitor.core.config import Config
from monitor.warehouse.connection import duckdb_settings

__all__ = ["IDENT", "copy_file", "path_literal", "quote_ident", "scratch"]

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")  # a name safe to put in SQL text


@contextmanager
def scratch(cfg: Config) -> Iterator[sa.Connection]:
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


def quote_ident(name: str) -> str:
    """A schema, table or column name quoted for SQL text."""
    return '"' + name.replace('"', '""') + '"'


def path_literal(path: Path) -> str:
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
