"""PostgreSQL: a server warehouse reached through psycopg2.

The password is never in the config file: libpq finds it (``PGPASSWORD``, ``.pgpass``)
or ``[warehouse] password_env`` names the variable holding it. The cycle lock is a
session advisory lock, so it holds across hosts and dies with the holder's connection.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Any

import sqlalchemy as sa

from monitor.core.config import Config, WarehouseConfig
from monitor.warehouse.engine import Backend, Busy
from monitor.warehouse.postgres_snapshots import PostgresSnapshots
from monitor.warehouse.snapshot_store import SnapshotStore

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


class PostgresBackend(Backend):
    dialect = "postgresql"
    bulk_loader = "postgres_copy"
    dbt_type = "postgres"

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
        env = {"MONITOR_PG_HOST": url.host or "localhost", "MONITOR_PG_PORT": str(url.port or 5432),
               "MONITOR_PG_USER": url.username or os.environ.get("PGUSER", ""),
               "MONITOR_PG_DBNAME": url.database or ""}
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

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        """A schema per snapshot and a catalog, in the warehouse database itself."""
        return PostgresSnapshots(lambda: self.create_engine(cfg.warehouse),
                                 sa.make_url(cfg.warehouse.url).database or "")

    def storable_text(self, text: str) -> str:
        """PostgreSQL text cannot hold NUL: shown as the four characters ``\\x00``."""
        return text.replace("\x00", "\\x00")

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        cols = ", ".join(f"{self.quote_ident(conn, k)}::text" for k in keys)
        # mod(), not %: the predicate may reach psycopg2 unbound, where % is a parameter.
        return f"mod(hashtextextended(concat_ws('|', {cols}), 0), {int(modulus)}) = 0"


@contextmanager
def _advisory_lock(backend: Backend, cfg: Config) -> Iterator[None]:
    """pg_try_advisory_lock on a connection kept open for the cycle: never waits."""
    key = lock_key(cfg)
    engine = backend.create_engine(cfg.warehouse)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            got = conn.execute(sa.text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            if not got:
                raise Busy(f"another cycle is running on {engine.url.render_as_string()}")
            try:
                yield
            finally:
                conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": key})
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
