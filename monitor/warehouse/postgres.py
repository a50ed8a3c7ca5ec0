"""PostgreSQL: a server warehouse reached through psycopg2.

The password is never in the config file: libpq finds it (``PGPASSWORD``, ``.pgpass``)
or ``[warehouse] password_env`` names the variable holding it. The cycle lock is a
session advisory lock, so it holds across hosts and dies with the holder's connection.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
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
    day = f"split_part({spaced}, ' ', 1)"
    time = f"split_part({spaced}, ' ', 2)"
    h, mi, sec = (f"cast(split_part({time}, ':', {i}) as integer)" for i in (1, 2, 3))
    date = _make_date(f"split_part({day}, '-', 1)", f"split_part({day}, '-', 2)",
                      f"split_part({day}, '-', 3)")
    clock = "[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}"
    return (
        f"case when {v} ~ '^[0-9]{{1,4}}-[0-9]{{1,2}}-[0-9]{{1,2}}"
        f"([[:space:]]+{clock}|T{clock}Z)$' "
        f"then case when {h} < 24 and {mi} < 60 and {sec} < 60 "
        f"then {date} + make_interval(hours => {h}, mins => {mi}, secs => {sec}) end end"
    )


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


_FUNCTIONS = {
    "try_date": _try_date,
    "try_timestamp": _try_timestamp,
    "try_double": _try_double,
    "key_hash": lambda col: f"hashtextextended(cast({col} as text), 0)",
}


class PostgresBackend(Backend):
    dialect = "postgresql"
    bulk_loader = "postgres_copy"
    gx_datasource = "postgres"

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
