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
    #: The dbt adapter ``type`` of a profile output that writes into this engine ("":
    #: no adapter is known, so a build's target cannot be compared before it runs).
    dbt_type = ""

    @abstractmethod
    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        """An engine for one step (NullPool: nothing stays open after it)."""

    @abstractmethod
    def cycle_lock(self, cfg: Config) -> AbstractContextManager[None]:
        """Held for a cycle; raises :class:`Busy` when another process holds it."""

    def created(self, cfg: WarehouseConfig) -> bool:
        """Whether the warehouse exists yet, so a read-only command (status) does not
        create it by opening it; a server always does (reaching it may still fail)."""
        return True

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        """Environment variables dbt's profile reads, so dbt reaches the warehouse the
        monitor observes (``pipeline/profiles.yml`` shows the names)."""
        return {}

    def dbt_location(self, output: Mapping[str, Any]) -> str:
        """Where a rendered dbt profile output of :attr:`dbt_type` writes, in words."""
        return f"a {output.get('type') or 'dbt'} warehouse"

    def dbt_mismatch(self, cfg: WarehouseConfig, output: Mapping[str, Any]) -> str | None:
        """Why the rendered dbt profile ``output`` does not write into the warehouse
        ``cfg`` names, or None when it does (or when the engine cannot tell: the relations
        dbt built are looked for afterwards)."""
        return None

    def release_dbt(self) -> None:
        """Close what dbt's adapter keeps open in this process between invocations (the
        daemon must not hold the warehouse between steps); nothing by default."""
        return None

    def relation_columns(self, conn: sa.Connection, schema: str, name: str
                         ) -> dict[str, bool] | None:
        """The relation's columns (name → numeric?) in their order; None if it does not
        exist."""
        insp = sa.inspect(conn)
        if not insp.has_table(name, schema=schema):
            return None
        return {str(c["name"]): isinstance(c["type"], (sa.Integer, sa.Numeric))
                for c in insp.get_columns(name, schema=schema)}

    def median(self, dialect: sa.Dialect, col: sa.ColumnElement[Any]
               ) -> sa.ColumnElement[Any] | None:
        """The median of ``col`` as an aggregate; None where the engine has none."""
        return None

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        """A predicate keeping rows whose key hashes to 0 modulo ``modulus``; "1 = 1"
        where the engine has no cheap hash (every row is then read)."""
        return "1 = 1"

    def refresh_statistics(self, engine: sa.Engine, tables: Sequence[tuple[str, str]]) -> None:
        """Bring the planner's statistics of ``tables`` ((schema, name), written by this
        cycle) up to date before the build reads them; nothing where the engine keeps
        them as it writes."""
        return None

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
