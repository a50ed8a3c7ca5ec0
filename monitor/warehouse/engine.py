"""The warehouse interface: what the rest of the monitor may ask of an engine.

Each engine (``duckdb``, ``postgres``, ``generic`` for any other SQLAlchemy URL) is one
module implementing :class:`Backend`; callers ask the backend instead of checking which
engine they are on, so the next engine adds a module, not branches elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.config import Config, WarehouseConfig
from monitor.warehouse.snapshot_store import SnapshotStore

#: Functions suite SQL may call as ``{{name(arg, ...)}}`` (docs/contracts.md, Expectation
#: suites), by name and number of arguments, each a column (``col`` or ``alias.col``).
#: Every backend renders each one to an expression of its engine with the same result.
# name -> number of arguments (None: one or more)
SUITE_FUNCTIONS: Mapping[str, int | None] = {
    "try_date": 1,       # text in one of the four date formats -> date, else NULL
    "try_timestamp": 1,  # 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DDTHH:MM:SSZ' -> timestamp, else NULL
    "try_double": 1,     # text as DuckDB's try_cast(x as double) reads it, else NULL
    "key_hash": 1,       # an integer hash of a key (the same value on both sides of a join)
    "row_hash": None,    # an integer hash of a row's values, NULL told apart from any value
    "null_spelling": 1,  # true for NULL and '', 'null', 'n/a', 'none' (any case, trimmed)
}


def plain_null_spelling(col: str) -> str:
    """``{{null_spelling(col)}}`` as plain SQL, the same on every engine whose trim
    removes spaces only (PostgreSQL, Spark); DuckDB adds a fast path in front of it."""
    return f"({col} is null or lower(trim({col})) in ('', 'null', 'n/a', 'none'))"


class Busy(RuntimeError):
    """Another cycle holds the warehouse lock."""


class Unsupported(RuntimeError):
    """The engine cannot do this (the message says what to do instead)."""


#: (schema, identifier) of a relation, as the dbt manifest names it.
Relation = tuple[str, str]
#: A filter on a key column: its value is among a set of keys (:meth:`Backend.key_lookup`).
KeyLookup = Callable[[sa.ColumnElement[Any]], sa.ColumnElement[bool]]


@dataclass(frozen=True)
class Scratch:
    """Where triage's isolated rebuild writes, production only read.

    ``warehouse`` reaches the rebuilt relations (DuckDB: the copy of the file; PostgreSQL:
    the same database). ``dbt_target`` is what a generated dbt target changes in
    production's rendered target (PostgreSQL: ``{"schema": <scratch schema>}``); empty when
    the scratch warehouse's :meth:`Backend.dbt_environment` already points dbt there.
    ``production`` is the catalog a :meth:`Backend.comparison` connection names
    production's relations by ("": the connection's own catalog, beside the scratch ones).
    """

    warehouse: WarehouseConfig
    name: str  # the copy's path, or the scratch schema
    kind: str  # for the report: "copy", "scratch schema"
    location: str  # for the report: where the rebuild wrote
    dbt_target: Mapping[str, Any] = field(default_factory=dict)
    production: str = ""
    copy_bytes: int = 0

    def droppable(self, schemas: Sequence[str]) -> list[str]:
        """The scratch place and ``schemas``, refused unless each is the scratch place or a
        custom schema dbt derived from it (``<scratch>_<custom>``)."""
        names = [self.name, *(s for s in schemas if s != self.name)]
        bad = [s for s in names if s != self.name and not s.startswith(self.name + "_")]
        if bad:
            raise ValueError(f"refusing to drop schemas outside the {self.kind}: {bad}")
        return names


@contextmanager
def connected(engine: Callable[[], sa.Engine]) -> Iterator[sa.Connection]:
    """A connection of a fresh ``engine()``, disposed of afterwards (the stores and the
    triage steps open one for a step, never a pool that outlives it)."""
    eng = engine()
    try:
        with eng.connect() as conn:
            yield conn
    finally:
        eng.dispose()


class Backend(ABC):
    """One warehouse engine: connecting, quoting, locking, its bulk loader and where it
    keeps snapshots."""

    #: SQLAlchemy dialect name this backend serves.
    dialect = ""
    #: URL schemes of ``[warehouse] url`` that name this engine besides ``dialect``
    #: (Spark's ``sc://``, the Spark Connect client's own URL).
    url_schemes: tuple[str, ...] = ()
    #: Whether a rollback undoes the writes of a transaction. False on Spark (no
    #: transactions: each statement takes effect as it runs), so a step that relies on
    #: rolling back a partial write must check this and not run there.
    transactional = True
    #: The fast loader ingest tries first (a module of ``monitor.stages.loaders``), or
    #: "" when only the engine-neutral row-by-row loader applies.
    bulk_loader = ""
    #: The dbt adapter ``type`` of a profile output that writes into this engine ("":
    #: no adapter is known, so a build's target cannot be compared before it runs).
    dbt_type = ""

    #: The Great Expectations datasource the validator adds: GX's stock ``sql`` or
    #: ``postgres``, the ``duckdb`` one of ``monitor.quality.gx_duckdb`` (keeps one
    #: connection), or GX's ``spark`` one on the monitor's Spark Connect session
    #: (``monitor.quality.gx_spark``: rows as a cached DataFrame; needs
    #: :meth:`sql_dialect`).
    gx_datasource = "sql"
    #: Whether the validator copies rows costly to read again (a view, a semi-join scope)
    #: once into a scratch place every GX connection sees (``monitor.quality.copies``):
    #: DuckDB's database attached to GX's one connection, else :meth:`open_batch_scratch`.
    batch_copies = False
    #: A regular expression of the engine's error messages that say a model's input
    #: lost a column or no longer has its type (triage's ``schema_drift``); the
    #: engine-neutral "column ... not found / does not exist" is matched besides.
    schema_errors = ""
    #: Whether the rows a plain filter picks from a table (a contract's batch, a model's
    #: rows above the watermark) are copied too: PostgreSQL would scan the whole table
    #: (all history) again for each check; DuckDB reads a filtered table in place.
    copy_filtered_tables = False

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

    def median(self, dialect: sa.Dialect, col: sa.ColumnElement[Any]
               ) -> sa.ColumnElement[Any] | None:
        """The median of ``col`` as an aggregate; None where the engine has none."""
        return None

    def gx_connection(self, cfg: WarehouseConfig) -> tuple[str, dict[str, Any]]:
        """The URL and ``create_engine`` keyword arguments GX's datasource opens the
        warehouse with (the URL without a password: it goes in ``connect_args``)."""
        return cfg.sqlalchemy_url, {}

    @abstractmethod
    def suite_function(self, name: str, args: Sequence[str]) -> str:
        """The SQL of ``{{name(args)}}`` in a suite query (:data:`SUITE_FUNCTIONS`);
        ``args`` are checked column references. Braces in it are literal (the validator
        doubles them for GX)."""

    def suite_functions(self, engine: sa.Engine) -> Callable[[str, Sequence[str]], str]:
        """The renderer of suite functions for a validation on ``engine``: where the
        engine's SQL names a value once per mention, a backend may prepare stored
        functions there first and render calls to them; else :meth:`suite_function`."""
        return self.suite_function

    def suite_sql(self, sql: str) -> str:
        """A suite's filled-in SQL as the engine's parser reads it (a construct it lacks
        rewritten, e.g. ``similar to`` on Spark); unchanged where it reads the suites'
        SQL as written."""
        return sql

    def sql_dialect(self) -> sa.Dialect | None:
        """The SQLAlchemy dialect the validator compiles a suite's rows (and the
        one-to-one check) for where GX opens no SQL engine of its own (Spark: GX reads a
        DataFrame of those rows); None: the dialect of GX's engine."""
        return None

    def open_batch_scratch(self, conn: sa.Connection) -> str:
        """Make a new place for the validator's batch copies that every connection of
        the warehouse sees, on ``conn`` (the caller commits, and holds ``conn`` open
        until :meth:`drop_batch_scratch`, so an engine can mark the place as in use for
        as long as the process lives and sweep places a killed process left); its name,
        the schema of the copies. Where the engine has none, ``batch_copies`` is False."""
        raise Unsupported(f"no batch copies on {self.dialect or 'this engine'}")

    def copy_batch(self, conn: sa.Connection, rows: sa.Select[Any], table: sa.Table) -> None:
        """Create ``table`` (in the batch scratch) holding ``rows`` (named columns), ready
        to be read by many checks; the caller commits."""
        conn.execute(rows.into(table.name, schema=table.schema))

    def drop_batch_scratch(self, conn: sa.Connection, name: str) -> None:
        """Drop a place :meth:`open_batch_scratch` made, with its copies."""
        raise Unsupported(f"no batch copies on {self.dialect or 'this engine'}")

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        """A predicate keeping rows whose key hashes to 0 modulo ``modulus``; "1 = 1"
        where the engine has no cheap hash (every row is then read)."""
        return "1 = 1"

    def key_lookup(self, conn: sa.Connection, table: Relation, column: str,
                   keys: sa.Select[Any]) -> KeyLookup | None:
        """How to pick the rows of ``table`` whose key ``column`` is among ``keys``'s rows
        (a select of one column) by looking each key up, where the engine does that
        faster than the semi join the caller writes otherwise; None: the semi join.
        Engines that scan whole tables cheaply (DuckDB, Spark) take the semi join."""
        return None

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

    # --- the raw schema and the batch ledger (monitor.stages.ingest, monitor.store.batches)

    def create_raw_tables(self, conn: sa.Connection, md: sa.MetaData, ledger: sa.Table,
                          batched: Mapping[str, str]) -> None:
        """Create the raw schema's tables of ``md`` that are missing. ``ledger`` is the
        batch ledger (``ingest_batches``); ``batched`` maps each table holding a batch's
        rows (the feeds, the quarantine) to its batch-id column. Here: plain tables, as
        a transaction undoes a failed load."""
        md.create_all(conn)

    def record_batch(self, conn: sa.Connection, ledger: sa.Table,
                     values: Mapping[str, Any]) -> None:
        """Add a new batch's row to the ledger (the commit point of its ingest)."""
        conn.execute(ledger.insert().values(**values))

    def decide_batch(self, conn: sa.Connection, ledger: sa.Table, batch_id: str,
                     values: Mapping[str, Any]) -> None:
        """Set a batch's decision columns (status, decided_*, publish_seq): the one
        change a ledger row takes after its ingest."""
        conn.execute(ledger.update().where(ledger.c.batch_id == batch_id).values(**values))

    def clear_batch(self, conn: sa.Connection, tables: Sequence[tuple[sa.Table, str]],
                    batch_id: str) -> None:
        """Remove rows an earlier, failed attempt at ``batch_id`` left in ``tables``
        ((table, batch-id column)) before a loader writes it again; nothing here: a
        failed attempt's transaction was rolled back."""
        return None

    def drop_orphan_batches(self, conn: sa.Connection, tables: Sequence[tuple[sa.Table, str]],
                            ledger: sa.Table) -> list[str]:
        """Remove the rows of batches the ledger does not hold (a load that died before
        its ledger row) from ``tables``; the ids removed. Nothing here: a transaction
        that died left none."""
        return []

    @staticmethod
    def quote_ident(conn: sa.Engine | sa.Connection, name: str) -> str:
        return conn.dialect.identifier_preparer.quote(name)

    def relation_columns(self, conn: sa.Connection, relations: Sequence[Relation]
                         ) -> dict[Relation, dict[str, str]]:
        """Real columns (name → upper-case type) of those ``relations`` that exist."""
        insp = sa.inspect(conn)
        out: dict[Relation, dict[str, str]] = {}
        for schema, table in relations:
            if insp.has_table(table, schema=schema):
                out[(schema, table)] = {str(c["name"]): str(c["type"]).upper()
                                        for c in insp.get_columns(table, schema=schema)}
        return out

    def has_relation(self, conn: sa.Connection, relation: Relation) -> bool:
        """Whether a table or view ``relation`` exists: one ``information_schema`` query
        (the inspector would ask twice, for tables and for views)."""
        it = sa.table("tables", sa.column("table_schema"), sa.column("table_name"),
                      schema="information_schema")
        found = conn.execute(
            sa.select(sa.func.count()).select_from(it)
            .where(it.c.table_schema == relation[0], it.c.table_name == relation[1])
        ).scalar()
        return bool(found)

    def view_definitions(self, conn: sa.Connection, relations: Sequence[Relation]
                         ) -> dict[Relation, str]:
        """The stored definition of each of ``relations`` that is a view (a change to
        it voids counts carried over it): one ``information_schema.views`` query."""
        iv = sa.table("views", sa.column("table_schema"), sa.column("table_name"),
                      sa.column("view_definition"), schema="information_schema")
        rows = conn.execute(sa.select(iv.c.table_schema, iv.c.table_name, iv.c.view_definition))
        wanted = set(relations)
        return {rel: str(r[2]) for r in rows if (rel := (str(r[0]), str(r[1]))) in wanted}

    def relation_bytes(self, engine: sa.Engine, relations: Sequence[Relation]
                       ) -> dict[Relation, int]:
        """Bytes each relation stores, where the engine tells cheaply (a cost input: the
        row width); {} where it does not (no connection opened), and ``[cost]
        avg_row_bytes`` applies."""
        return {}

    def try_cast_double(self, conn: sa.Connection, column: str) -> str | None:
        """SQL turning text column ``column`` into a double, NULL where it is not a number
        (never an error); None where the engine has no such expression."""
        return None

    # --- triage: the isolated full refresh ---------------------------------------------

    def isolation_footprint(self, cfg: WarehouseConfig, relations: Sequence[Relation]
                            ) -> tuple[int, str]:
        """Bytes an isolated rebuild of ``relations`` copies or rewrites, and what they
        are (checked against ``[evidence] isolation_max_bytes``)."""
        raise Unsupported(f"isolated rebuild is not supported on {self.dialect or 'this engine'}")

    def open_scratch(self, cfg: WarehouseConfig, folder: Path, name: str) -> Scratch:
        """A fresh scratch place for the rebuild (a leftover of the same ``name`` is
        removed); ``folder`` is the run's isolation folder, for engines that need files."""
        raise Unsupported(f"isolated rebuild is not supported on {self.dialect or 'this engine'}")

    def drop_scratch(self, cfg: WarehouseConfig, scratch: Scratch,
                     schemas: Sequence[str] = ()) -> None:
        """Remove the scratch place; ``schemas``: further schemas dbt created for it."""
        raise Unsupported(f"isolated rebuild is not supported on {self.dialect or 'this engine'}")

    def comparison(self, cfg: WarehouseConfig, scratch: Scratch, *, read_only: bool = False
                   ) -> AbstractContextManager[sa.Connection]:
        """A connection seeing the rebuilt relations and production (under
        ``scratch.production``); production is only read."""
        raise Unsupported(f"isolated rebuild is not supported on {self.dialect or 'this engine'}")

    def scratch_output(self, name: str, copy: str) -> dict[str, Any]:
        """What changes in production's dbt output so that a build writes into the
        scratch place (``name``: a schema; ``copy``: a path for a file): the reproduce
        commands build through a generated profile made of it, never through the user's
        own (which may not read where to write from the environment)."""
        raise Unsupported(f"isolated rebuild is not supported on {self.dialect or 'this engine'}")

    def isolation_commands(self, cfg: WarehouseConfig, name: str, copy: str, dbt: str,
                           state: str) -> list[str]:
        """Shell commands that rebuild by hand what the isolated rebuild did: make the
        scratch place (``name``: a schema; ``copy``: a path for a file), run ``dbt`` (a
        ``dbt build ... --full-refresh`` command line through the :meth:`scratch_output`
        profile) there, with production's dbt target folder ``state`` for deferral where
        the scratch starts empty, and clean up; no secret in them."""
        raise Unsupported(f"isolated rebuild is not supported on {self.dialect or 'this engine'}")

    def fingerprint(self, cfg: WarehouseConfig, relations: Sequence[Relation]) -> str:
        """A checksum of production that any write to ``relations`` changes ("" when it
        would cost too much to compute)."""
        return ""

    # --- triage: the query plan --------------------------------------------------------

    def query_plan(self, conn: sa.Connection, sql: str, out: Path, timeout_s: float
                   ) -> dict[str, Any]:
        """Run ``sql`` (a SELECT) once with the engine's profiler, write the executed plan
        to ``out`` and return its summary: ``engine``, ``total_seconds``, ``slowest``,
        ``scans``, ``joins`` (see ``docs/contracts.md``). Nothing is written to the
        warehouse; the query is cut off after ``timeout_s``."""
        raise Unsupported(f"query plans are not collected on {self.dialect or 'this engine'}")

