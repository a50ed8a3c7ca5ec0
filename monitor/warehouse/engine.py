"""The warehouse interface: what the rest of the monitor may ask of an engine.

Each engine (``duckdb``, ``postgres``, ``generic`` for any other SQLAlchemy URL) is one
module implementing :class:`Backend`; callers ask the backend instead of checking which
engine they are on, so the next engine adds a module, not branches elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from monitor.core.config import Config, WarehouseConfig
from monitor.warehouse.snapshot_store import SnapshotStore

#: Functions suite SQL may call as ``{{name(arg, ...)}}`` (docs/contracts.md, Expectation
#: suites), by name and number of arguments, each a column (``col`` or ``alias.col``).
#: Every backend renders each one to an expression of its engine with the same result.
SUITE_FUNCTIONS: Mapping[str, int] = {
    "try_date": 1,       # text in one of the four date formats -> date, else NULL
    "try_timestamp": 1,  # 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DDTHH:MM:SSZ' -> timestamp, else NULL
    "try_double": 1,     # text as DuckDB's try_cast(x as double) reads it, else NULL
    "key_hash": 1,       # an integer hash of a key (the same value on both sides of a join)
}


class Busy(RuntimeError):
    """Another cycle holds the warehouse lock."""


class Backend(ABC):
    """One warehouse engine: connecting, quoting, locking, its bulk loader and where it
    keeps snapshots."""

    #: SQLAlchemy dialect name this backend serves.
    dialect = ""
    #: The fast loader ingest tries first (a module of ``monitor.stages.loaders``), or
    #: "" when only the engine-neutral row-by-row loader applies.
    bulk_loader = ""
    #: The Great Expectations datasource the validator adds: GX's stock ``sql`` or
    #: ``postgres``, or the ``duckdb`` one of ``monitor.quality.gx_duckdb`` (keeps one
    #: connection).
    gx_datasource = "sql"
    #: Whether the validator copies rows costly to read again (a view, a semi-join scope)
    #: once into a scratch database attached to GX's one connection (``monitor.quality.copies``).
    batch_copies = False

    @abstractmethod
    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        """An engine for one step (NullPool: nothing stays open after it)."""

    @abstractmethod
    def cycle_lock(self, cfg: Config) -> AbstractContextManager[None]:
        """Held for a cycle; raises :class:`Busy` when another process holds it."""

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        """Environment variables dbt's profile reads, so dbt reaches the warehouse the
        monitor observes (``pipeline/profiles.yml`` shows the names)."""
        return {}

    def gx_connection(self, cfg: WarehouseConfig) -> tuple[str, dict[str, Any]]:
        """The URL and ``create_engine`` keyword arguments GX's datasource opens the
        warehouse with (the URL without a password: it goes in ``connect_args``)."""
        return cfg.sqlalchemy_url, {}

    @abstractmethod
    def suite_function(self, name: str, args: Sequence[str]) -> str:
        """The SQL of ``{{name(args)}}`` in a suite query (:data:`SUITE_FUNCTIONS`);
        ``args`` are checked column references. Braces in it are literal (the validator
        doubles them for GX)."""

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        """A predicate keeping rows whose key hashes to 0 modulo ``modulus``; "1 = 1"
        where the engine has no cheap hash (every row is then read)."""
        return "1 = 1"

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        """Where this engine keeps last-known-good snapshots of the built tables
        (``monitor.warehouse.snapshot_store``), or None where it keeps none."""
        return None

    def storable_text(self, text: str) -> str:
        """``text`` as a text column can keep it (a quarantined line must not fail its
        insert); unchanged where the engine stores any string."""
        return text

    @staticmethod
    def quote_ident(conn: sa.Engine | sa.Connection, name: str) -> str:
        return conn.dialect.identifier_preparer.quote(name)
