"""PostgreSQL: a server warehouse reached through psycopg2.

The password is never in the config file: libpq finds it (``PGPASSWORD``, ``.pgpass``)
or ``[warehouse] password_env`` names the variable holding it. The cycle lock is a
session advisory lock, so it holds across hosts and dies with the holder's connection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from monitor.core.config import Config, WarehouseConfig
from monitor.warehouse import postgres_functions
from monitor.warehouse.engine import Backend, KeyLookup, Relation, Scratch, plain_null_spelling
from monitor.warehouse.locks import advisory_lock
from monitor.warehouse.postgres_snapshots import PostgresSnapshots
from monitor.warehouse.snapshot_store import SnapshotStore

log = logging.getLogger(__name__)
_SCRATCH_SCHEMA = re.compile(r"^monitor_gx_scratch_[0-9a-f]{12}$")
#: Key lookups (``Backend.key_lookup``) beat a semi join from about this many stored rows
#: per key looked up (README, "Figures behind the code's design notes").
LOOKUP_ROWS_PER_KEY = 8
LOOKUP_MAX_KEYS = 10_000_000  # an array of them stays far below PostgreSQL's 1 GB per value
DRIVERS = ("psycopg2",)  # what the loader's COPY speaks (dbt-postgres uses it too)


def url_of(cfg: WarehouseConfig) -> sa.URL:
    """The configured URL with the password from ``password_env`` when one is named."""
    url = sa.make_url(cfg.url)
    if cfg.password_env:
        password = os.environ.get(cfg.password_env)
        if password is None:
            raise RuntimeError(f"warehouse.password_env: ${cfg.password_env} is not set")
        url = url.set(password=password)
    return url


def lock_key(cfg: Config) -> int:
    """A signed 64-bit advisory-lock key per raw schema: two monitors on one database
    with different schemas do not block each other."""
    digest = hashlib.sha256(f"dq-monitor cycle:{cfg.ingest.schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _where(host: str, port: int, dbname: str) -> str:
    return f"postgres://{host}:{port}/{dbname}"


def _same_host(a: str, b: str) -> bool:
    """Host names as libpq reads them; the loopback names are one host."""
    a, b = a.strip().lower(), b.strip().lower()
    return a == b or (a in _LOOPBACK and b in _LOOPBACK)

# -- suite functions (engine.SUITE_FUNCTIONS): DuckDB's try_strptime and try_cast return
# NULL where PostgreSQL's to_date and cast raise, so each input's shape is matched by a
# pattern and its fields checked before anything is cast (as the dbt project's
# postgres__parse_date). A CASE is used for the order: PostgreSQL does not promise one
# for the operands of AND.

_MONTHS = "'janfebmaraprmayjunjulaugsepoctnovdec'"
_DIGITS = "[0-9]+(_[0-9]+)*"  # DuckDB reads single underscores between digits
_NUMBER = f"^[+-]?({_DIGITS}([.]({_DIGITS})?)?|[.]{_DIGITS})([eE][+-]?{_DIGITS})?$"


def _make_date(year: str, month: str, day: str) -> str:
    """The date of the digit strings ``year``, ``month``, ``day`` (SQL), NULL when they
    name no calendar date; year 0 is 1 BC, as DuckDB reads it."""
    y, m, d = (f"cast({x} as integer)" for x in (year, month, day))
    first = f"make_date(case when {y} = 0 then -1 else {y} end, {m}, 1)"
    return (f"case when {m} between 1 and 12 and {d} between 1 and 31 then case when "
            f"extract(month from {first} + ({d} - 1)) = {m} then {first} + ({d} - 1) end end")


def _let(value: str, body: Callable[[str], str], name: str) -> str:
    """``body`` of ``value``, with ``value`` computed once: a scalar sub-select over a
    one-row sub-select that ``offset 0`` keeps from being pulled up. Inline, PostgreSQL
    copies an expression into every place that names it: ``try_timestamp`` ran its
    regexp_replace ~15 times a value (100k values: 10.7 s inline, 2.8 s so, under load).
    Only there: a sub-select costs more than a cheap expression, and a suite query naming
    a derived column several times evaluates each copy (``try_date`` so was 2.5x slower
    in the claims contract's plausibility check)."""
    alias = f"monitor_{name}"
    return f"(select {body(f'{alias}.{name}')} from (select {value} as {name} offset 0) {alias})"


def _try_date(col: str) -> str:
    """DuckDB's ``try_strptime(trim(col), ['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y'])``
    as a date: 1-2 digit months and days, 1-4 digit years, month names in any case."""
    v = f"trim({col})"
    part = lambda sep, i: f"split_part({v}, '{sep}', {i})"  # noqa: E731
    month_name = (f"cast((strpos({_MONTHS}, lower({part('-', 2)})) + 2) / 3 as text)")
    return (
        f"case when {v} ~ '^[0-9]{{1,4}}-[0-9]{{1,2}}-[0-9]{{1,2}}$' "
        f"then {_make_date(part('-', 1), part('-', 2), part('-', 3))} "
        f"when {v} ~ '^[0-9]{{1,2}}/[0-9]{{1,2}}/[0-9]{{1,4}}$' "
        f"then {_make_date(part('/', 3), part('/', 1), part('/', 2))} "
        f"when {v} ~ '^[0-9]{{8}}$' "
        f"then {_make_date(f'substr({v}, 1, 4)', f'substr({v}, 5, 2)', f'substr({v}, 7, 2)')} "
        f"when {v} ~* '^[0-9]{{1,2}}-(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)-"
        f"[0-9]{{1,4}}$' then {_make_date(part('-', 3), month_name, part('-', 1))} end"
    )


def _try_timestamp(col: str) -> str:
    """DuckDB's ``try_strptime(trim(col), ['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%SZ'])``."""
    v = f"trim({col})"
    # a space in DuckDB's format matches any run of whitespace
    spaced = f"regexp_replace(rtrim(translate({v}, 'T', ' '), 'Z'), '[[:space:]]+', ' ')"
    clock = "[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}"
    return (
        f"case when {v} ~ '^[0-9]{{1,4}}-[0-9]{{1,2}}-[0-9]{{1,2}}"
        f"([[:space:]]+{clock}|T{clock}Z)$' "
        f"then {_let(spaced, _timestamp_of, 'spaced')} end"
    )


def _timestamp_of(spaced: str) -> str:
    """The timestamp of ``spaced``: 'Y-M-D H:M:S' (digits; fields checked here)."""
    day = f"split_part({spaced}, ' ', 1)"
    time = f"split_part({spaced}, ' ', 2)"
    h, mi, sec = (f"cast(split_part({time}, ':', {i}) as integer)" for i in (1, 2, 3))
    date = _make_date(f"split_part({day}, '-', 1)", f"split_part({day}, '-', 2)",
                      f"split_part({day}, '-', 3)")
    return (f"case when {h} < 24 and {mi} < 60 and {sec} < 60 "
            f"then {date} + make_interval(hours => {h}, mins => {mi}, secs => {sec}) end")


def _try_double(col: str) -> str:
    """DuckDB's ``try_cast(col as double)``: surrounding spaces, underscores between
    digits, inf/infinity/nan in any case; out of range is +-infinity or 0, not an error."""
    v = f"trim({col})"
    plain = f"replace({v}, '_', '')"
    exponent = f"coalesce(ltrim(substring({plain} from '[eE][+-]?([0-9]+)$'), '0'), '')"
    mantissa = f"cast(regexp_replace({plain}, '[eE].*$', '') as numeric)"
    n = f"cast({plain} as numeric)"
    return (
        f"case when {v} ~* '^[+-]?nan$' then cast('NaN' as double precision) "
        f"when {v} ~* '^[+-]?inf(inity)?$' then cast({v} as double precision) "
        f"when {v} ~ '{_NUMBER}' then case "
        # numeric reads exponents below 1000; a longer one is out of double's range
        f"when length({exponent}) > 3 then case when {mantissa} = 0 then 0 "
        f"when {plain} ~ '[eE]-' then 0 "
        f"else sign({mantissa}) * cast('Infinity' as double precision) end "
        f"when abs({n}) > 1.7976931348623157e308 "
        f"then sign({n}) * cast('Infinity' as double precision) "
        f"when abs({n}) < 1e-320 then 0 "
        f"else cast({n} as double precision) end end"
    )


_FUNCTIONS: dict[str, Callable[..., str]] = {
    "try_date": _try_date,
    "try_timestamp": _try_timestamp,
    "try_double": _try_double,
    "key_hash": lambda col: f"hashtextextended(cast({col} as text), 0)",
    # a row's text form quotes an empty string and leaves NULL empty
    "row_hash": lambda *cols: f"hashtextextended(cast(row({', '.join(cols)}) as text), 0)",
    "null_spelling": plain_null_spelling,
}


class PostgresBackend(Backend):
    dialect = "postgresql"
    bulk_loader = "postgres_copy"
    dbt_type = "postgres"

    gx_datasource = "postgres"
    # 'invalid input syntax for type numeric: "abc"' (a retyped column cast); a column
    # that became text where a number was read: 'operator does not exist: text > integer',
    # 'function round(text, integer) does not exist', 'cannot cast type date to integer'
    schema_errors = (r"invalid input syntax for type|operator does not exist|"
                     r"function .* does not exist|cannot cast type")
    batch_copies = True
    copy_filtered_tables = True

    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        """read_only: every transaction of the engine is READ ONLY, as DuckDB's mode."""
        connect_args: dict[str, Any] = {"application_name": "dq-monitor"}
        if read_only:
            connect_args["options"] = "-c default_transaction_read_only=on"
        return sa.create_engine(url_of(cfg), connect_args=connect_args, poolclass=sa.NullPool)

    def cycle_lock(self, cfg: Config) -> AbstractContextManager[None]:
        return _advisory_lock(self, cfg)

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        """The ``postgres`` target's MONITOR_PG_* from the URL; the password (when
        ``password_env`` names one) as PGPASSWORD, which that target and libpq read."""
        url = url_of(cfg)
        env = _profile_env(url)
        if url.password is not None:
            env["PGPASSWORD"] = str(url.password)
        return env

    def dbt_location(self, output: Mapping[str, Any]) -> str:
        return _where(str(output.get("host") or "localhost"), int(output.get("port") or 5432),
                      str(output.get("dbname") or output.get("database") or ""))

    def dbt_mismatch(self, cfg: WarehouseConfig, output: Mapping[str, Any]) -> str | None:
        """The output must be dbt-postgres on the URL's host, port and database (its
        user and schema may differ: the monitor reads the schemas from the manifest)."""
        url = sa.make_url(cfg.url)
        mine = _where(url.host or "localhost", url.port or 5432, url.database or "")
        if output.get("type") != self.dbt_type:
            return f"a {output.get('type') or 'dbt'} warehouse, not {mine}"
        theirs = self.dbt_location(output)
        host = str(output.get("host") or "localhost")
        same = (_same_host(host, url.host or "localhost")
                and int(output.get("port") or 5432) == (url.port or 5432)
                and str(output.get("dbname") or output.get("database") or "") == url.database)
        return None if same else f"{theirs}, not {mine}"

    def median(self, dialect: sa.Dialect, col: sa.ColumnElement[Any]
               ) -> sa.ColumnElement[Any] | None:
        return sa.func.percentile_cont(0.5).within_group(col)

    def refresh_statistics(self, engine: sa.Engine, tables: Sequence[tuple[str, str]]) -> None:
        """``analyze`` each table: autovacuum would only a minute or so later, and the
        build joins the raw rows to the ledger the gate has just changed; planned on no
        or stale statistics (every batch still pending) that join ran as nested loops
        over the raw rows."""
        with engine.begin() as conn:
            for schema, name in tables:
                conn.execute(sa.text(f"analyze {self.quote_ident(conn, schema)}."
                                     f"{self.quote_ident(conn, name)}"))

    def key_lookup(self, conn: sa.Connection, table: Relation, column: str,
                   keys: sa.Select[Any]) -> KeyLookup | None:
        """``key = any(array(<keys>))`` when an index of ``table`` starts with ``column``
        (without one, each row would be compared with the whole array: None) and the
        planner expects at most one key per
        :data:`LOOKUP_ROWS_PER_KEY` rows of ``table``: one b-tree probe per key
        (lookup_indexes.sql), so the read follows the day's keys, where a semi join is
        a hash join over a scan of the whole table, all history. Below that ratio the
        semi join is faster (README, "Figures behind the code's design notes"). One
        array value holds at most 1 GB, hence :data:`LOOKUP_MAX_KEYS`."""
        name = f"{self.quote_ident(conn, table[0])}.{self.quote_ident(conn, table[1])}"
        stored = conn.execute(sa.text("select reltuples from pg_class where oid = "
                                      "to_regclass(:name)"), {"name": name}).scalar()
        if stored is None or stored <= 0:  # no such table (a view), or never analyzed
            return None
        indexed = conn.execute(sa.text(
            "select exists (select 1 from pg_index i join pg_attribute a on "
            "a.attrelid = i.indrelid and a.attnum = i.indkey[0] "
            "where i.indrelid = to_regclass(:name) and a.attname = :column)"),
            {"name": name, "column": column}).scalar()
        if not indexed:
            return None
        sql = str(keys.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        found = conn.execute(sa.text(f"explain (format json) {sql}")).scalar()
        plan: Any = json.loads(found) if isinstance(found, str) else found
        expected = float(plan[0]["Plan"]["Plan Rows"])
        if expected > LOOKUP_MAX_KEYS or expected * LOOKUP_ROWS_PER_KEY > float(stored):
            return None
        array = sa.func.array(keys.scalar_subquery())
        return lambda column: column == sa.any_(array)

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        """A schema per snapshot and a catalog, in the warehouse database itself."""
        return PostgresSnapshots(lambda: self.create_engine(cfg.warehouse),
                                 sa.make_url(cfg.warehouse.url).database or "")

    def gx_connection(self, cfg: WarehouseConfig) -> tuple[str, dict[str, Any]]:
        """For GX's stock PostgreSQL datasource; the password (``password_env``) goes in
        ``connect_args``, not in the URL GX keeps in its config."""
        connect_args: dict[str, Any] = {"application_name": "dq-monitor gx"}
        password = url_of(cfg).password
        if password is not None and sa.make_url(cfg.url).password is None:
            connect_args["password"] = str(password)
        return cfg.url, {"connect_args": connect_args}

    def suite_function(self, name: str, args: Sequence[str]) -> str:
        render: Callable[..., str] = _FUNCTIONS[name]
        return render(*args)

    def suite_functions(self, engine: sa.Engine) -> Callable[[str, Sequence[str]], str]:
        """``try_date`` and ``try_timestamp`` as calls of the stored functions
        (monitor.warehouse.postgres_functions), made in ``engine``'s database first;
        the inline SQL where they cannot be made."""
        if not postgres_functions.prepare(engine):
            return self.suite_function

        def render(name: str, args: Sequence[str]) -> str:
            stored = postgres_functions.NAMES.get(name)
            return f"{stored}({args[0]})" if stored else self.suite_function(name, args)
        return render

    def open_batch_scratch(self, conn: sa.Connection) -> str:
        """A new schema ``monitor_gx_scratch_<12 hex>`` (GX's pooled connections see
        committed tables in it; TEMP tables would be private to one connection).

        ``conn`` is held for the validation: a session-level advisory lock on the
        schema's name marks it in use until ``conn`` closes, however the process ends.
        Schemas left by a killed process (no lock holder) are dropped here first."""
        sweep_batch_scratch(conn)
        name = f"monitor_gx_scratch_{uuid.uuid4().hex[:12]}"
        # locked before the schema is committed: no sweeper can see it unlocked
        conn.execute(sa.text("select pg_advisory_lock(hashtextextended(:n, 0))"), {"n": name})
        conn.exec_driver_sql(f"create schema {name}")
        return name

    def copy_batch(self, conn: sa.Connection, rows: sa.Select[Any], table: sa.Table) -> None:
        """An UNLOGGED table (no WAL: a copy for one validation), analyzed so that the
        checks' joins and aggregates are planned on its real size."""
        sql = str(rows.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        name = f"{self.quote_ident(conn, str(table.schema))}.{self.quote_ident(conn, table.name)}"
        conn.exec_driver_sql(f"create unlogged table {name} as {sql}")
        conn.exec_driver_sql(f"analyze {name}")

    def drop_batch_scratch(self, conn: sa.Connection, name: str) -> None:
        if not _SCRATCH_SCHEMA.match(name):
            raise ValueError(f"not a batch scratch schema: {name!r}")
        conn.exec_driver_sql(f"drop schema if exists {name} cascade")
        conn.execute(sa.text("select pg_advisory_unlock(hashtextextended(:n, 0))"), {"n": name})

    def create_raw_tables(self, conn: sa.Connection, md: sa.MetaData, ledger: sa.Table,
                          batched: Mapping[str, str]) -> None:
        """Plain tables, as on DuckDB, each table of batch rows with a b-tree on its
        batch-id column: a batch-scoped read (the gate's suites and volume checks,
        staging's published rows, a retry's clear) then finds its batch's rows without
        reading every earlier day, as DuckDB's zone maps skip other batches' row groups.
        An existing table gets its index the first time (built once)."""
        md.create_all(conn)
        q = conn.dialect.identifier_preparer.quote
        for table in md.sorted_tables:
            column = batched.get(table.name)
            if column is not None:
                index = _index_name(f"{table.name}__{column.strip('_')}_idx")
                conn.exec_driver_sql(
                    f"create index if not exists {q(index)} on "
                    f"{q(str(table.schema))}.{q(table.name)} ({q(column)})")

    def storable_text(self, text: str) -> str:
        """PostgreSQL text cannot hold NUL: shown as the four characters ``\\x00``."""
        return text.replace("\x00", "\\x00")

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        cols = ", ".join(f"{self.quote_ident(conn, k)}::text" for k in keys)
        # mod(), not %: the predicate may reach psycopg2 unbound, where % is a parameter.
        return f"mod(hashtextextended(concat_ws('|', {cols}), 0), {int(modulus)}) = 0"

    def relation_bytes(self, engine: sa.Engine, relations: Sequence[Relation]
                       ) -> dict[Relation, int]:
        """``pg_table_size`` (heap and TOAST, no indexes) of the tables; views store none."""
        with engine.connect() as conn:
            sizes = _relation_sizes(conn, relations, "pg_table_size")
        return {r: n for r, n in sizes.items() if n > 0}

    def try_cast_double(self, conn: sa.Connection, column: str) -> str | None:
        """The suite function ``try_double``: what DuckDB's try_cast reads, never an error."""
        return self.suite_function("try_double", [column])

    # --- triage: the isolated rebuild builds into a scratch schema ---------------------

    def isolation_footprint(self, cfg: WarehouseConfig, relations: Sequence[Relation]
                            ) -> tuple[int, str]:
        """Nothing is copied: the rebuild writes the relations again, as large as
        production's (tables, indexes, TOAST)."""
        with _engine(self, cfg) as engine, engine.connect() as conn:
            return sum(_relation_sizes(conn, relations).values()), (
                "the production size of the relations to rebuild")

    def open_scratch(self, cfg: WarehouseConfig, folder: Path, name: str) -> Scratch:
        """Schema ``name`` in the warehouse database, empty (a leftover of a killed triage
        of the same run is dropped first); dbt builds into it through a generated target
        whose ``schema`` is ``name``, and its sources still read production's schemas."""
        with _engine(self, cfg) as engine, engine.begin() as conn:
            q = self.quote_ident(conn, name)
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {q} CASCADE")
            conn.exec_driver_sql(f"CREATE SCHEMA {q}")
            db = conn.exec_driver_sql("select current_database()").scalar()
            where = f"schema {name} of database {db}"
        return Scratch(warehouse=cfg, name=name, kind="scratch schema", location=where,
                       dbt_target={"schema": name})

    def drop_scratch(self, cfg: WarehouseConfig, scratch: Scratch,
                     schemas: Sequence[str] = ()) -> None:
        """DROP SCHEMA ... CASCADE of the scratch schema and of the custom schemas dbt
        derived from it (``<scratch>_<custom>``); any other name is refused."""
        names = scratch.droppable(schemas)
        with _engine(self, cfg) as engine, engine.begin() as conn:
            for schema in names:
                q = self.quote_ident(conn, schema)
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {q} CASCADE")

    def comparison(self, cfg: WarehouseConfig, scratch: Scratch, *, read_only: bool = False
                   ) -> AbstractContextManager[sa.Connection]:
        """Production and the scratch schema are in one database: a read-only
        connection sees both."""
        return _read_only_connection(self, cfg)

    def scratch_output(self, name: str, copy: str) -> dict[str, Any]:
        return {"schema": name}

    def isolation_commands(self, cfg: WarehouseConfig, name: str, copy: str, dbt: str,
                           state: str) -> list[str]:
        """dbt through the generated profile (its schema the scratch schema); what is
        not rebuilt is read from production through dbt's deferral to its manifest.
        psql's password from PGPASSWORD or ~/.pgpass, as for the monitor."""
        url = sa.make_url(cfg.url).set(drivername="postgresql", password=None)
        psql = f"psql {shlex.quote(url.render_as_string(hide_password=False))}"
        drop = shlex.quote(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        return [f"{psql} -c {drop}",
                f"{dbt} --defer --favor-state --state {state}",
                f"{psql} -c {drop}  # when done"]

    def fingerprint(self, cfg: WarehouseConfig, relations: Sequence[Relation],
                    limit: int = 1 << 30) -> str:
        """Per relation its oid and file node (a swap or rewrite changes them), rows
        and newest row version ``xmin`` (an insert or update raises it, a delete lowers
        the rows): one scan of each; "" above ``limit`` bytes in all."""
        h = hashlib.sha256()
        with _engine(self, cfg) as engine, engine.connect() as conn:
            sizes = _relation_sizes(conn, relations)
            if not sizes or sum(sizes.values()) > limit:
                return ""
            for schema, table in sorted(sizes):
                rel = f"{self.quote_ident(conn, schema)}.{self.quote_ident(conn, table)}"
                row = conn.exec_driver_sql(
                    f"select '{rel}'::regclass::oid, pg_relation_filenode('{rel}'::regclass), "
                    f"count(*), coalesce(max(xmin::text::bigint), 0) from {rel}").one()
                h.update(repr((schema, table, *row)).encode())
        return h.hexdigest()

    # --- triage: the query plan --------------------------------------------------------

    def query_plan(self, conn: sa.Connection, sql: str, out: Path, timeout_s: float
                   ) -> dict[str, Any]:
        """``EXPLAIN (ANALYZE, BUFFERS, VERBOSE, FORMAT JSON)`` of the SELECT (VERBOSE:
        scans name their schema) in a read-only transaction that is rolled back, under a
        ``statement_timeout``."""
        conn.rollback()  # SET TRANSACTION must open the transaction
        try:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            ms = max(int(timeout_s * 1000), 1)
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
            block = int(conn.exec_driver_sql("select current_setting('block_size')").scalar()
                        or 8192)
            doc = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, VERBOSE, FORMAT JSON) "
                                       + sql.strip().rstrip(";")).scalar()
        finally:
            conn.rollback()
        plan = json.loads(doc) if isinstance(doc, str) else doc
        out.write_text(json.dumps(plan, indent=2), encoding="utf-8")
        return summarize_explain(plan, block)


def sweep_batch_scratch(conn: sa.Connection) -> list[str]:
    """Drop the batch scratch schemas no live session holds (their process was killed
    mid-validation); the names dropped. Each is dropped under its own lock, so a live
    validation's schema is never touched."""
    names: list[str] = list(conn.execute(sa.text(
        "select nspname from pg_namespace where nspname like 'monitor\\_gx\\_scratch\\_%'"
        " order by nspname")).scalars())
    dropped = []
    for name in names:
        if not _SCRATCH_SCHEMA.match(name):
            continue
        free: bool = conn.execute(sa.text("select pg_try_advisory_lock(hashtextextended(:n, 0))"),
                            {"n": name}).scalar_one()
        if not free:
            continue
        conn.exec_driver_sql(f"drop schema if exists {name} cascade")
        conn.execute(sa.text("select pg_advisory_unlock(hashtextextended(:n, 0))"), {"n": name})
        dropped.append(name)
    if dropped:
        log.warning("dropped %d batch scratch schema(s) a killed validation left: %s",
                    len(dropped), ", ".join(dropped))
    return dropped


def _profile_env(url: sa.URL) -> dict[str, str]:
    """The ``postgres`` target's MONITOR_PG_* of a URL (no password)."""
    return {"MONITOR_PG_HOST": url.host or "localhost", "MONITOR_PG_PORT": str(url.port or 5432),
            "MONITOR_PG_USER": url.username or os.environ.get("PGUSER", ""),
            "MONITOR_PG_DBNAME": url.database or ""}


@contextmanager
def _advisory_lock(backend: Backend, cfg: Config) -> Iterator[None]:
    """pg_try_advisory_lock on a connection kept open for the cycle: never waits."""
    engine = backend.create_engine(cfg.warehouse)
    try:
        with advisory_lock(engine, lock_key(cfg),
                           f"another cycle is running on {engine.url.render_as_string()}"):
            yield
    finally:
        engine.dispose()


def copy_csv(conn: sa.Connection, table: str, columns: Sequence[str], data: IO[str],
             options: str = "") -> None:
    """``COPY table (columns) FROM STDIN (FORMAT csv[, options])`` in ``conn``'s
    transaction. ``table``, ``columns`` and ``options`` come quoted by the caller;
    psycopg2 reads ``data`` in 64 KiB pieces."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    extra = f", {options}" if options else ""
    cur = raw.cursor()
    try:
        cur.copy_expert(
            f"copy {table} ({', '.join(columns)}) from stdin with (format csv{extra})", data,
            1 << 16,
        )
    finally:
        cur.close()


# digits and exponent bounded: at most ~1e129, inside a double's range
@contextmanager
def _engine(backend: Backend, cfg: WarehouseConfig) -> Iterator[sa.Engine]:
    engine = backend.create_engine(cfg)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _read_only_connection(backend: Backend, cfg: WarehouseConfig) -> Iterator[sa.Connection]:
    engine = backend.create_engine(cfg, read_only=True)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _relation_sizes(conn: sa.Connection, relations: Sequence[Relation],
                    size: str = "pg_total_relation_size") -> dict[Relation, int]:
    """``size`` (pg_total_relation_size: with indexes; pg_table_size) of those
    ``relations`` that exist (views: 0)."""
    assert size in ("pg_total_relation_size", "pg_table_size")
    out: dict[Relation, int] = {}
    for schema, table in relations:
        found = conn.execute(sa.text(
            f"select {size}(c.oid) from pg_class c join pg_namespace n "
            "on n.oid = c.relnamespace where n.nspname = :s and c.relname = :t"),
            {"s": schema, "t": table}).scalar()
        if found is not None:
            out[(schema, table)] = int(found)
    return out


_JOINS = ("Hash Join", "Merge Join", "Nested Loop")


def summarize_explain(doc: Any, block_size: int = 8192) -> dict[str, Any]:
    """Slowest nodes (own time: the node's less its children's), scans (rows read:
    returned plus removed by a filter; pages from BUFFERS) and join fan-out of
    PostgreSQL's ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)``; times and rows are per
    loop there, so they are multiplied by the loops."""
    top: Mapping[str, Any] = doc[0] if isinstance(doc, list) else doc
    ops: list[dict[str, Any]] = []

    def total(node: Mapping[str, Any], key: str) -> float:
        return float(node.get(key) or 0) * float(node.get("Actual Loops") or 1)

    def walk(node: Mapping[str, Any]) -> None:
        kids = node.get("Plans") or []
        own_ms = total(node, "Actual Total Time") - sum(total(k, "Actual Total Time")
                                                       for k in kids)
        rows = int(total(node, "Actual Rows"))
        table = (f"{node['Schema']}.{node['Relation Name']}" if node.get("Schema")
                 else node.get("Relation Name"))
        join = None
        if node.get("Node Type") in _JOINS:
            join = (node.get("Hash Cond") or node.get("Merge Cond") or node.get("Join Filter")
                    or f"{node.get('Join Type', '')} join (condition in the inner scan)".strip())
        pages = (int(node.get("Shared Hit Blocks") or 0) + int(node.get("Shared Read Blocks") or 0)
                 if table else None)
        ops.append({
            "operator": str(node.get("Node Type")),
            "seconds": round(max(own_ms, 0.0) / 1000.0, 6),
            "rows": rows,
            "rows_in": max((int(total(k, "Actual Rows")) for k in kids), default=0),
            "table": table, "join": join,
            "rows_scanned": (rows + int(total(node, "Rows Removed by Filter"))) if table else None,
            "row_groups": None,
            "pages": pages,
        })
        for k in kids:
            walk(k)

    walk(top["Plan"])
    scans = [o for o in ops if o["table"]]
    joins = [dict(o, fan_out=round(o["rows"] / o["rows_in"], 2) if o["rows_in"] else None)
             for o in ops if o["join"]]
    return {
        "engine": "PostgreSQL",
        "total_seconds": round(float(top.get("Execution Time") or 0.0) / 1000.0, 6),
        "planning_seconds": round(float(top.get("Planning Time") or 0.0) / 1000.0, 6),
        "rows_scanned": sum(int(o["rows_scanned"] or 0) for o in scans),
        "bytes_scanned": sum(int(o["pages"] or 0) for o in scans) * block_size,
        "slowest": sorted(ops, key=lambda o: o["seconds"], reverse=True)[:8],
        "scans": sorted(scans, key=lambda o: int(o["rows_scanned"] or 0), reverse=True)[:8],
        "joins": sorted(joins, key=lambda o: o["fan_out"] or 0, reverse=True)[:8],
    }


def _index_name(name: str) -> str:
    """``name`` within PostgreSQL's 63 characters: a longer one is cut and ends in a hash
    of the whole, so two long names never cut to the same index (which ``create index
    if not exists`` would then skip)."""
    if len(name) <= 63:
        return name
    return f"{name[:54]}_{hashlib.md5(name.encode()).hexdigest()[:8]}"
