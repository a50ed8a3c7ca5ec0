"""Apache Spark over Spark Connect: ``[warehouse] url = "sc://host:port"``.

The monitor holds no JVM: its SQL goes through SQLAlchemy to ``spark_dialect`` and the
DB-API module ``spark_dbapi`` over the process's Spark Connect session. What differs
from the other engines, by design:

- no transactions (``transactional = False``): each statement takes effect as it runs,
  and a rollback undoes nothing. Parquet tables have no UPDATE or DELETE either, so the
  state store cannot live here (``[state] url`` on ``sc://`` is a config error).
- no advisory lock: the cycle lock lives where the state store lives, because two
  monitors that share one state store are the ones that must not run a cycle at the
  same time: a PostgreSQL state store takes a session advisory lock there (spans hosts,
  dies with the process); a SQLite or DuckDB state file takes a flock beside that file
  (one host, as the file). Monitors with different state stores on one Spark warehouse
  are not kept apart: give each its own ``[ingest] schema``.
- table and schema names are letters, digits and ``_`` only (Spark's Hive catalog keeps
  them lower-case); column names may hold anything (backtick-quoted).
- the raw schema without a transaction (``create_raw_tables``): the feed tables and the
  quarantine are partitioned by their batch id, so a batch is written (and written
  again, by a retry) as one ``INSERT OVERWRITE`` of its partition, and a partition no
  ledger row names is an orphan, dropped at the next ingest. The ledger is append-only:
  ``ingest_batches`` is a view of the newest row per batch in ``ingest_batch_log``, and
  a decision (publish, hold, reject) appends the batch's row with the new values.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import registry

from monitor.core.config import IDENTIFIER, Config, WarehouseConfig, state_url
from monitor.warehouse import spark_dbapi
from monitor.warehouse.engine import Backend, Relation, Scratch, Unsupported, connected
from monitor.warehouse.locks import advisory_lock, file_lock_at
from monitor.warehouse.snapshot_store import SnapshotStore
from monitor.warehouse.spark_dialect import SparkDialect, describe_columns, spark_literal
from monitor.warehouse.spark_functions import spark_suite_function, spark_suite_sql
from monitor.warehouse.spark_session import connect_url
from monitor.warehouse.spark_snapshots import SparkSnapshots, table_bytes

registry.register("spark", "monitor.warehouse.spark_dialect", "SparkDialect")

#: The append-only log behind the ``ingest_batches`` view, and its order column.
LEDGER_LOG = "ingest_batch_log"
LOG_SEQ = "log_seq"

_HOST_PORT = re.compile(r"sc://(?P<host>[^:/;]+|\[[^\]]+\])(?::(?P<port>\d+))?")
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
DEFAULT_PORT = 15002


def endpoint(url: str) -> tuple[str, int]:
    """(host, port) of an ``sc://`` URL (loopback names as one host)."""
    match = _HOST_PORT.match(url.strip())
    if not match:
        raise ValueError(f"not a Spark Connect URL: {url!r}")
    host = match["host"].lower()
    return ("127.0.0.1" if host in _LOOPBACK else host), int(match["port"] or DEFAULT_PORT)


def _where(url: str) -> str:
    host, port = endpoint(url)
    return f"sc://{host}:{port}"


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _table(schema: str, name: str) -> str:
    """``schema.name`` quoted, once both are names Spark's catalog can hold (letters,
    digits, ``_``): a name from a manifest or a config never reaches SQL unchecked."""
    for part in (schema, name):
        if not IDENTIFIER.fullmatch(part):
            raise ValueError(f"not a Spark table or schema name: {part!r}")
    return f"{_quote(schema)}.{_quote(name)}"


def _interrupt_until(session: Any, tag: str, timeout_s: float, done: threading.Event) -> None:
    """After ``timeout_s``, interrupt the tagged operations every second until the query
    returns: one interrupt sent before a loaded server has registered the operation
    would cancel nothing, and the query would run to its end."""
    if done.wait(timeout_s):
        return
    while not done.is_set():
        session.interruptTag(tag)
        done.wait(1.0)


class SparkBackend(Backend):
    dialect = "spark"
    url_schemes = ("sc",)
    dbt_type = "spark"
    transactional = False
    bulk_loader = "spark_csv"  # monitor.stages.loaders.spark_csv: Spark's CSV parser
    #: GX's Spark datasource on the same session (``monitor.quality.gx_spark``).
    gx_datasource = "spark"
    schema_errors = (r"UNRESOLVED_COLUMN|CAST_INVALID_INPUT|DATATYPE_MISMATCH|"
                     r"cannot be cast|cannot resolve")

    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        """``spark://host:port`` over the process's session. ``read_only`` is not
        enforced: Spark has no read-only session (the read-only steps only read)."""
        host, port = endpoint(cfg.url)
        url, password_env = cfg.url, cfg.password_env
        return sa.create_engine(f"spark://{host}:{port}", poolclass=sa.NullPool,
                                creator=lambda: spark_dbapi.connect(url, password_env))

    def cycle_lock(self, cfg: Config) -> AbstractContextManager[None]:
        return _state_lock(cfg)

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        """``SPARK_REMOTE`` for dbt-spark's ``session`` method (pyspark's builder reads
        it), with the token from ``password_env`` when one is named."""
        return {"SPARK_REMOTE": connect_url(cfg.url, cfg.password_env)}

    def dbt_location(self, output: Mapping[str, Any]) -> str:
        method = str(output.get("method") or "")
        if method == "session":
            remote = _remote_of(output)
            return _where(remote) if remote else "the SPARK_REMOTE the monitor sets"
        return f"spark {method or '?'} {output.get('host') or '?'}:{output.get('port') or '?'}"

    def dbt_mismatch(self, cfg: WarehouseConfig, output: Mapping[str, Any]) -> str | None:
        """dbt-spark's ``session`` method on the same endpoint: the output's
        ``server_side_parameters`` ``spark.remote`` if set, else the SPARK_REMOTE the
        monitor sets. Thrift/http/odbc outputs reach another server process, which the
        monitor cannot tell apart from another cluster: refused."""
        mine = _where(cfg.url)
        if output.get("type") != self.dbt_type:
            return f"a {output.get('type') or 'dbt'} warehouse, not {mine}"
        if output.get("method") != "session":
            return (f"{self.dbt_location(output)} (method {output.get('method')!r}; the "
                    f"monitor needs method 'session' over Spark Connect), not {mine}")
        remote = _remote_of(output)
        if remote and endpoint(remote) != endpoint(cfg.url):
            return f"{_where(remote)}, not {mine}"
        return None

    def median(self, dialect: sa.Dialect, col: sa.ColumnElement[Any]
               ) -> sa.ColumnElement[Any] | None:
        """Spark's exact ``median`` (percentile 0.5, interpolated as percentile_cont)."""
        return sa.func.median(col)

    def suite_function(self, name: str, args: Sequence[str]) -> str:
        """``monitor.warehouse.spark_functions``: DuckDB's value for every input of the
        tests' lists (the earlier renderings here differed on ``99999-01-01``, ``-nan``)."""
        return spark_suite_function(name, args)

    def suite_sql(self, sql: str) -> str:
        """``similar to`` as ``rlike`` (Spark's parser has none)."""
        return spark_suite_sql(sql)

    def sql_dialect(self) -> sa.Dialect:
        """The rows GX reads as a DataFrame are compiled for Spark SQL."""
        return SparkDialect()

    def gx_connection(self, cfg: WarehouseConfig) -> tuple[str, dict[str, Any]]:
        """The ``sc://`` URL; the token's variable, for ``monitor.quality.gx_spark``."""
        return cfg.url, {"password_env": cfg.password_env}

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        cols = ", ".join(f"cast({self.quote_ident(conn, k)} as string)" for k in keys)
        return f"pmod(xxhash64(concat_ws('|', {cols})), {int(modulus)}) = 0"

    def try_cast_double(self, conn: sa.Connection, column: str) -> str | None:
        return self.suite_function("try_double", [column])

    def storable_text(self, text: str) -> str:
        """Lone surrogates (undecodable bytes read as text) cannot travel over gRPC's
        UTF-8: shown as ``\\udcxx``."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text

    def relation_columns(self, conn: sa.Connection, relations: Sequence[Relation]
                         ) -> dict[Relation, dict[str, str]]:
        """Spark's own type names (``BIGINT``, ``DECIMAL(10,2)``, ``STRING``)."""
        insp = sa.inspect(conn)
        out: dict[Relation, dict[str, str]] = {}
        for schema, table in relations:
            if insp.has_table(table, schema=schema):
                out[(schema, table)] = {n: t.upper()
                                        for n, t in describe_columns(conn, schema, table)}
        return out

    def has_relation(self, conn: sa.Connection, relation: Relation) -> bool:
        """``SHOW TABLES`` of the database (Spark's catalog has no
        ``information_schema``; views are listed too)."""
        return bool(sa.inspect(conn).has_table(relation[1], schema=relation[0]))

    def view_definitions(self, conn: sa.Connection, relations: Sequence[Relation]
                         ) -> dict[Relation, str]:
        """``View Text`` of ``DESCRIBE TABLE EXTENDED``, for those of ``relations`` that
        ``SHOW VIEWS`` lists (one listing per database)."""
        insp = sa.inspect(conn)
        views = {schema: {v.lower() for v in insp.get_view_names(schema)}
                 for schema in {s for s, _ in relations}}
        out: dict[Relation, str] = {}
        for schema, name in relations:
            if name.lower() not in views[schema]:
                continue
            rows = conn.exec_driver_sql(f"DESCRIBE TABLE EXTENDED {_table(schema, name)}")
            out[(schema, name)] = next(
                (str(value) for key, value, *_ in rows if key == "View Text"), "")
        return out

    def relation_bytes(self, engine: sa.Engine, relations: Sequence[Relation]
                       ) -> dict[Relation, int]:
        """The ``Statistics`` of ``DESCRIBE TABLE EXTENDED`` (written by ANALYZE TABLE,
        :meth:`refresh_statistics`); a relation without them (a view, never analyzed)
        is left out."""
        out: dict[Relation, int] = {}
        with engine.connect() as conn:
            insp = sa.inspect(conn)
            for schema, table in relations:
                if not insp.has_table(table, schema=schema):
                    continue
                rows = conn.exec_driver_sql(f"DESCRIBE TABLE EXTENDED {_table(schema, table)}")
                for name, value, *_ in rows:
                    found = re.match(r"(\d+) bytes", str(value or "")) if name == "Statistics" \
                        else None
                    if found and int(found[1]) > 0:
                        out[(schema, table)] = int(found[1])
        return out

    def refresh_statistics(self, engine: sa.Engine, tables: Sequence[tuple[str, str]]) -> None:
        """``ANALYZE TABLE ... COMPUTE STATISTICS``: sizes and row counts the optimizer
        (broadcast joins) and :meth:`relation_bytes` read."""
        with engine.connect() as conn:
            insp = sa.inspect(conn)
            for schema, name in tables:
                target = _table(schema, name)
                if name in insp.get_view_names(schema):  # the ledger's view: its log
                    target = _table(schema, LEDGER_LOG)
                conn.exec_driver_sql(f"ANALYZE TABLE {target} COMPUTE STATISTICS")

    def query_plan(self, conn: sa.Connection, sql: str, out: Path, timeout_s: float
                   ) -> dict[str, Any]:
        """``EXPLAIN FORMATTED`` and ``EXPLAIN COST`` to ``out``, then the SELECT run once
        to its end into Spark's ``noop`` sink (``spark_dbapi.run_discarding``), under a
        job tag that a timer interrupts after ``timeout_s``. Spark Connect reports no
        per-operator times: ``seconds`` and ``rows`` of the operators are None,
        ``total_seconds`` is the measured run."""
        body = sql.strip().rstrip(";")
        formatted = "\n".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN FORMATTED {body}"))
        cost = "\n".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN COST {body}"))
        out.write_text(f"-- EXPLAIN FORMATTED\n{formatted}\n\n-- EXPLAIN COST\n{cost}\n",
                       encoding="utf-8")
        raw = _dbapi_of(conn)
        session = raw.session
        tag = f"dqm-plan-{uuid.uuid4().hex[:12]}"
        done = threading.Event()
        interrupter = threading.Thread(target=_interrupt_until, daemon=True,
                                       args=(session, tag, timeout_s, done))
        session.addTag(tag)
        started = time.monotonic()
        interrupter.start()
        try:
            spark_dbapi.run_discarding(raw, body)
        except spark_dbapi.Error as exc:  # as SQLAlchemy raises it from exec_driver_sql
            raise sa.exc.DBAPIError.instance(body, None, exc, spark_dbapi.Error) from exc
        finally:
            done.set()
            interrupter.join()
            session.removeTag(tag)
        return summarize_formatted(formatted, time.monotonic() - started)

    # --- the raw schema without transactions ------------------------------------------

    def create_raw_tables(self, conn: sa.Connection, md: sa.MetaData, ledger: sa.Table,
                          batched: Mapping[str, str]) -> None:
        """Tables partitioned by batch (``batched``), the ledger's log and its view; the
        schema is listed once (``checkfirst`` would list it twice per table)."""
        schema = str(ledger.schema)
        rows = conn.exec_driver_sql(f"SHOW TABLES IN {_quote(schema)}").mappings().all()
        present = {str(r["tableName"]).lower() for r in rows if not r.get("isTemporary")}
        log = ledger_log(ledger)
        for table in [*md.sorted_tables, log]:
            if table is ledger or table.name.lower() in present:
                continue
            if table.name in batched:
                table.dialect_options["spark"]["partition_by"] = [batched[table.name]]
            table.create(conn, checkfirst=False)
        if ledger.name.lower() in present:
            return
        cols = ", ".join(_quote(c.name) for c in ledger.columns)
        conn.exec_driver_sql(
            f"CREATE VIEW IF NOT EXISTS {_table(schema, ledger.name)} AS "
            f"SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY batch_id "
            f"ORDER BY {LOG_SEQ} DESC) AS _newest FROM {_table(schema, log.name)}) "
            "WHERE _newest = 1")

    def record_batch(self, conn: sa.Connection, ledger: sa.Table,
                     values: Mapping[str, Any]) -> None:
        """The batch's first row in the log."""
        log = ledger_log(ledger)
        cols = [sa.literal(values.get(c.name), c.type).label(c.name) for c in ledger.columns]
        conn.execute(log.insert().from_select(
            [*(c.name for c in ledger.columns), LOG_SEQ],
            sa.select(*cols, _next_seq(log).label(LOG_SEQ)).select_from(log)))

    def decide_batch(self, conn: sa.Connection, ledger: sa.Table, batch_id: str,
                     values: Mapping[str, Any]) -> None:
        """Appends the batch's newest row with ``values`` changed: the view shows it."""
        log = ledger_log(ledger)
        newest = sa.select(_next_seq(log).label(LOG_SEQ)).subquery()
        cols = [sa.literal(values[c.name], c.type).label(c.name) if c.name in values
                else ledger.c[c.name] for c in ledger.columns]
        conn.execute(log.insert().from_select(
            [*(c.name for c in ledger.columns), LOG_SEQ],
            sa.select(*cols, newest.c[LOG_SEQ]).select_from(ledger.join(newest, sa.true()))
            .where(ledger.c.batch_id == batch_id)))

    def clear_batch(self, conn: sa.Connection, tables: Sequence[tuple[sa.Table, str]],
                    batch_id: str) -> None:
        """Drops the batch's partitions (a failed attempt may have written some)."""
        for table, column in tables:
            _drop_partition(conn, table, column, batch_id)

    def drop_orphan_batches(self, conn: sa.Connection, tables: Sequence[tuple[sa.Table, str]],
                            ledger: sa.Table) -> list[str]:
        """Partitions of batch ids without a ledger row: a load that died before its
        ledger row wrote them (never visible: staging reads ledger batches only)."""
        log = ledger_log(ledger)
        known = {str(r[0]) for r in conn.execute(sa.select(log.c.batch_id).distinct())}
        dropped: set[str] = set()
        for table, column in tables:
            for batch_id in set(_partitions(conn, table, column)) - known:
                _drop_partition(conn, table, column, batch_id)
                dropped.add(batch_id)
        return sorted(dropped)

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        """Copies in a snapshot database per run, documents in ``[evidence]
        snapshots_dir`` (``monitor.warehouse.spark_snapshots``)."""
        return SparkSnapshots(cfg.evidence.snapshots_dir,
                              lambda: self.create_engine(cfg.warehouse))

    # --- triage: the isolated rebuild builds into a scratch database -------------------

    def isolation_footprint(self, cfg: WarehouseConfig, relations: Sequence[Relation]
                            ) -> tuple[int, str]:
        """Nothing is copied: the rebuild writes the tables again, as large as
        production's (their files, listed by ``ANALYZE ... NOSCAN``; views hold none)."""
        engine = self.create_engine(cfg)
        try:
            with engine.connect() as conn:
                insp = sa.inspect(conn)
                tables = [(s, t) for s, t in relations
                          if insp.has_table(t, schema=s) and t not in insp.get_view_names(s)]
                total = sum(table_bytes(conn, s, t) for s, t in tables)
        finally:
            engine.dispose()
        return total, "the production size of the tables to rebuild"

    def open_scratch(self, cfg: WarehouseConfig, folder: Path, name: str) -> Scratch:
        """Database ``name`` in production's catalog, empty (a leftover of a killed triage
        of the same run is dropped first); dbt builds into it through a generated target
        whose ``schema`` is ``name``, and its sources still read production's databases."""
        with connected(lambda: self.create_engine(cfg)) as conn:
            rel = _quote(_checked(name))
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {rel} CASCADE")
            conn.exec_driver_sql(f"CREATE DATABASE {rel}")
        return Scratch(warehouse=cfg, name=name, kind="scratch database",
                       location=f"database {name} on {_where(cfg.url)}",
                       dbt_target={"schema": name})

    def drop_scratch(self, cfg: WarehouseConfig, scratch: Scratch,
                     schemas: Sequence[str] = ()) -> None:
        """DROP DATABASE ... CASCADE of the scratch database and of the custom schemas dbt
        derived from it (``<scratch>_<custom>``); any other name is refused."""
        with connected(lambda: self.create_engine(cfg)) as conn:
            for schema in scratch.droppable(schemas):
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {_quote(_checked(schema))} CASCADE")

    def comparison(self, cfg: WarehouseConfig, scratch: Scratch, *, read_only: bool = False
                   ) -> AbstractContextManager[sa.Connection]:
        """Production and the scratch database are in one catalog: one connection sees
        both (Spark has no read-only session; the comparison only reads)."""
        return connected(lambda: self.create_engine(cfg))

    def scratch_output(self, name: str, copy: str) -> dict[str, Any]:
        return {"schema": _checked(name)}

    def isolation_commands(self, cfg: WarehouseConfig, name: str, copy: str, dbt: str,
                           state: str) -> list[str]:
        """SPARK_REMOTE for dbt-spark's session method and pyspark (the token, if any,
        by reference to the variable ``password_env`` names: never its value), a
        pyspark one-liner that drops the scratch database, and dbt through the generated
        profile, deferring to production's manifest for what is not rebuilt."""
        remote = _where(cfg.url)
        if cfg.password_env:
            remote = f'"{remote}/;token=${{{cfg.password_env}}}"'
        drop = shlex.quote(
            "from pyspark.sql import SparkSession; SparkSession.builder.getOrCreate()"
            f".sql('DROP DATABASE IF EXISTS {_checked(name)} CASCADE')")
        return [f"export SPARK_REMOTE={remote}",
                f"python3 -c {drop}",
                f"{dbt} --defer --favor-state --state {state}",
                f"python3 -c {drop}  # when done"]


def _checked(name: str) -> str:
    """A database name Spark's catalog can hold, before it reaches SQL text."""
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a Spark database name: {name!r}")
    return name


def _remote_of(output: Mapping[str, Any]) -> str:
    params = output.get("server_side_parameters") or {}
    return str(params.get("spark.remote") or "") if isinstance(params, Mapping) else ""


def ledger_log(ledger: sa.Table) -> sa.Table:
    """The append-only log behind the ledger view: its columns and :data:`LOG_SEQ`."""
    return sa.Table(LEDGER_LOG, sa.MetaData(),
                    *(sa.Column(c.name, c.type, nullable=c.nullable) for c in ledger.columns),
                    sa.Column(LOG_SEQ, sa.BigInteger, nullable=False), schema=ledger.schema)


def _next_seq(log: sa.Table) -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.func.max(log.c[LOG_SEQ]), 0) + 1


def _drop_partition(conn: sa.Connection, table: sa.Table, column: str, value: str) -> None:
    name = _table(str(table.schema), table.name)
    conn.exec_driver_sql(f"ALTER TABLE {name} DROP IF EXISTS PARTITION "
                         f"({_quote(column)} = {spark_literal(value)})")


def _partitions(conn: sa.Connection, table: sa.Table, column: str) -> list[str]:
    """Values of ``column`` a partitioned table has partitions for (``SHOW PARTITIONS``
    rows read ``column=value``, the value escaped as in the partition's path)."""
    rows = conn.exec_driver_sql(f"SHOW PARTITIONS {_table(str(table.schema), table.name)}")
    out = []
    for (spec,) in rows:
        key, _, value = str(spec).partition("=")
        if key == column:
            out.append(urllib.parse.unquote(value))
    return out


def session_of(conn: sa.Connection) -> Any:
    """The Spark Connect session under a connection of a Spark engine (the loader
    writes through DataFrames on it)."""
    return _dbapi_of(conn).session


def _dbapi_of(conn: sa.Connection) -> spark_dbapi.Connection:
    raw = conn.connection.dbapi_connection
    if not isinstance(raw, spark_dbapi.Connection):
        raise Unsupported("not a Spark Connect connection")
    return raw


_NODE = re.compile(r"^\((\d+)\) (.+)$")


def summarize_formatted(plan: str, seconds: float) -> dict[str, Any]:
    """Operators, scans (``Scan parquet spark_catalog.db.table``) and joins (their keys)
    of an ``EXPLAIN FORMATTED`` text."""
    ops: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in plan.splitlines():
        node = _NODE.match(line.strip())
        if node:
            name = node[2].strip()
            scan = re.match(r"Scan \w+ (?:spark_catalog\.)?(\S+)", name)
            current = {"operator": name.split(" ")[0] if not scan else "Scan",
                       "seconds": None, "rows": None, "rows_in": None,
                       "table": scan[1] if scan else None, "join": None,
                       "rows_scanned": None, "row_groups": None, "pages": None}
            ops.append(current)
        elif current is not None and "Join" in current["operator"] and ":" in line:
            key, _, value = line.partition(":")
            if key.strip().startswith(("Left keys", "Right keys", "Join condition")):
                current["join"] = " ".join(filter(None, [current["join"],
                                                         f"{key.strip()}: {value.strip()}"]))
    joins = [dict(o, join=o["join"] or o["operator"], fan_out=None)
             for o in ops if "Join" in o["operator"]]
    return {"engine": "Spark", "total_seconds": round(seconds, 6), "rows_scanned": None,
            "slowest": ops[:8], "scans": [o for o in ops if o["table"]][:8],
            "joins": joins[:8]}


def _lock_name(cfg: Config) -> str:
    key = f"dq-monitor cycle:{_where(cfg.warehouse.url)}:{cfg.ingest.schema}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@contextmanager
def _state_lock(cfg: Config) -> Iterator[None]:
    """The cycle lock in the state store's place (see the module docstring)."""
    url = sa.make_url(state_url(cfg))
    where = _where(cfg.warehouse.url)
    if url.get_backend_name() == "postgresql":
        key = int.from_bytes(bytes.fromhex(_lock_name(cfg))[:8], "big", signed=True)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            with advisory_lock(engine, key, f"another cycle is running on {where}"):
                yield
        finally:
            engine.dispose()
        return
    database = url.database or ""
    if database and database != ":memory:":
        path = Path(database).with_name(f"{Path(database).name}.spark-{_lock_name(cfg)}.lock")
    else:
        path = Path(tempfile.gettempdir()) / f"dq-monitor-spark-{_lock_name(cfg)}.lock"
    with file_lock_at(path, f"another cycle is running on {where} (lock {path})"):
        yield
