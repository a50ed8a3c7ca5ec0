"""DuckDB, the default engine: one file, one writer process, a file lock beside it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.config import Config, WarehouseConfig
from monitor.warehouse.duckdb_snapshots import DuckDBSnapshots, path_literal
from monitor.warehouse.engine import Backend, Relation, Scratch, Unsupported
from monitor.warehouse.locks import file_lock_at
from monitor.warehouse.snapshot_store import SnapshotStore

_DATES = "['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y']"
_TIMESTAMPS = "['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%SZ']"
# A value whose first and last characters are printable ASCII other than a space: trim
# leaves it as it is (DuckDB's trim removes space separators only), so it skips the copy.
_PLAIN_ENDS = "{0} >= '!' and {0} < chr(127) and {0}[-1] between '!' and '~'"
_TRIMMED = "(case when " + _PLAIN_ENDS + " then {0} else trim({0}) end)"
# Suite functions (engine.SUITE_FUNCTIONS) in DuckDB SQL: the expressions the suites
# were written with before PostgreSQL, so DuckDB's plans do not change.
_FUNCTIONS = {
    "try_date": "cast(try_strptime(trim({0}), " + _DATES + ") as date)",
    # The one format the value's end allows first, then the whole list: the first
    # format cannot parse a value ending in Z, so the result is the list's, value for
    # value, without a failed parse of every ISO value; and trim only where an end may
    # be a space (README, "Where a 20M day goes").
    "try_timestamp": ("coalesce(case when ends_with({t}, 'Z')"
                      " then try_strptime({t}, '%Y-%m-%dT%H:%M:%SZ')"
                      " else try_strptime({t}, '%Y-%m-%d %H:%M:%S') end,"
                      " try_strptime({t}, " + _TIMESTAMPS + "))").replace("{t}", _TRIMMED),
    "try_double": "try_cast({0} as double)",
    "key_hash": "hash({0})",
    "row_hash": "hash({0})",  # hash() takes any number of values
    # A value longer than four characters that starts and ends with printable ASCII
    # other than a space is no null spelling: trim would leave it as it is and lower()
    # never shortens it. Such values skip lower(trim()), a new string each (README,
    # "Where a 20M day goes"); the rest get it. The same test as the dbt project's
    # clean_null.
    "null_spelling": ("({0} is null or not (length({0}) > 4 and " + _PLAIN_ENDS + ")"
                      " and lower(trim({0})) in ('', 'null', 'n/a', 'none'))"),
}

_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


def duckdb_settings(cfg: WarehouseConfig) -> dict[str, str | int]:
    """Settings applied to every DuckDB connection (ours and dbt's)."""
    if not _MEMORY.match(cfg.memory_limit):
        raise ValueError(f"warehouse.memory_limit: not a size like '3GB': {cfg.memory_limit!r}")
    return {"memory_limit": cfg.memory_limit, "threads": cfg.threads}


@contextmanager
def file_lock(cfg: Config) -> Iterator[None]:
    """flock on ``<warehouse path>.lock``: released by the kernel if the process dies."""
    with file_lock_at(Path(str(cfg.warehouse.path) + ".lock"),
                      f"another cycle is running on {cfg.warehouse.path}"):
        yield


# Dialects whose percentile_cont is an ordered-set aggregate (not only a window function).
_PERCENTILE_CONT_DIALECTS = frozenset({"postgresql", "redshift", "snowflake", "oracle"})


def dbt_path(output: Mapping[str, Any]) -> str:
    """The database file of a rendered dbt-duckdb output, absolute (dbt opens a relative
    path from its working directory); ``:memory:``, URLs and MotherDuck as given."""
    path = str(output.get("path") or ":memory:")
    if not path.startswith(":") and "://" not in path and not path.startswith("md:"):
        path = os.path.realpath(os.path.expanduser(path))
    return path


class DuckDBBackend(Backend):
    dialect = "duckdb"
    bulk_loader = "duckdb_read_csv"
    dbt_type = "duckdb"

    gx_datasource = "duckdb"
    batch_copies = True
    # Binder Error: Referenced column "x" not found; Conversion Error: Could not convert
    schema_errors = r"binder error|referenced column|conversion error|could not convert"

    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        """The file gets the shared settings; an explicit duckdb URL is used as given."""
        if cfg.url:
            return sa.create_engine(cfg.url, poolclass=sa.NullPool)
        cfg.path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | int | bool] = dict(duckdb_settings(cfg))
        if read_only:
            config["access_mode"] = "READ_ONLY"
        return sa.create_engine(
            cfg.sqlalchemy_url, connect_args={"config": config}, poolclass=sa.NullPool
        )

    def cycle_lock(self, cfg: Config) -> AbstractContextManager[None]:
        return file_lock(cfg)

    def clear_batch(self, conn: sa.Connection, tables: Sequence[tuple[sa.Table, str]],
                    batch_id: str) -> None:
        """Deletes the batch's rows: the DuckDB loader commits them before the ledger
        row, so a failed attempt may have left some (monitor.stages.loaders)."""
        for table, column in tables:
            conn.execute(sa.delete(table).where(table.c[column] == batch_id))

    def drop_orphan_batches(self, conn: sa.Connection, tables: Sequence[tuple[sa.Table, str]],
                            ledger: sa.Table) -> list[str]:
        """Rows of a load whose process died between the rows' commit and the ledger
        row's: their batch id sorts above the ledger's newest (ids start with the load
        sequence, and the next load takes the next one), so only the rows above it are
        read, and DuckDB's min/max per row group skips the rest. Never visible: staging
        reads ledger batches only."""
        newest = conn.execute(sa.select(sa.func.max(ledger.c.batch_id))).scalar() or ""
        dropped: set[str] = set()
        for table, column in tables:
            above = table.c[column] > sa.literal(newest)
            found = {str(r[0]) for r in conn.execute(
                sa.select(table.c[column]).where(above).distinct())}
            if found:  # the delete only where this table holds some
                conn.execute(sa.delete(table).where(above))
            dropped |= found
        return sorted(dropped)

    def created(self, cfg: WarehouseConfig) -> bool:
        return cfg.path.exists()

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        """The file and the shared settings, so dbt opens the file exactly as we do."""
        return {"MONITOR_WAREHOUSE_PATH": str(cfg.path),
                "MONITOR_DUCKDB_MEMORY_LIMIT": cfg.memory_limit,
                "MONITOR_DUCKDB_THREADS": str(cfg.threads)}

    def dbt_location(self, output: Mapping[str, Any]) -> str:
        return dbt_path(output)

    def dbt_mismatch(self, cfg: WarehouseConfig, output: Mapping[str, Any]) -> str | None:
        """The output must be dbt-duckdb on the monitor's own file."""
        mine = os.path.realpath(cfg.path)
        if output.get("type") != self.dbt_type:
            return f"a {output.get('type') or 'dbt'} warehouse, not the DuckDB file {mine}"
        theirs = dbt_path(output)
        return None if theirs == mine else f"{theirs}, not {mine}"

    def release_dbt(self) -> None:
        """dbt-duckdb keeps its environment (and the open database file) in a class
        attribute between invocations; our own connections cannot open the file while
        dbt's differently-configured one lives."""
        try:
            from dbt.adapters.duckdb.connections import DuckDBConnectionManager
        except ImportError:  # dbt-duckdb not installed: nothing cached this way
            return
        with DuckDBConnectionManager._LOCK:
            env = DuckDBConnectionManager._ENV
            if env is not None:
                try:
                    env.close()
                finally:
                    DuckDBConnectionManager._ENV = None

    def median(self, dialect: sa.Dialect, col: sa.ColumnElement[Any]
               ) -> sa.ColumnElement[Any] | None:
        return sa.func.median(col)

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        """A DuckDB file per snapshot in ``[evidence] snapshots_dir``: only for the file
        at ``path`` (an explicit duckdb URL may be ``:memory:`` or another process's)."""
        if cfg.warehouse.url:
            return None
        return DuckDBSnapshots(cfg, duckdb_settings(cfg.warehouse),
                               lambda: self.create_engine(cfg.warehouse))

    def gx_connection(self, cfg: WarehouseConfig) -> tuple[str, dict[str, Any]]:
        """The shared settings (one configuration per file in a process)."""
        return cfg.sqlalchemy_url, {"connect_args": {"config": duckdb_settings(cfg)}}

    def suite_function(self, name: str, args: Sequence[str]) -> str:
        return _FUNCTIONS[name].format(", ".join(args))

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        return f"hash({', '.join(self.quote_ident(conn, k) for k in keys)}) % {modulus} = 0"

    def relation_columns(self, conn: sa.Connection, relations: Sequence[Relation]
                         ) -> dict[Relation, dict[str, str]]:
        """One information_schema query for all of them (the inspector asks per table)."""
        ic = sa.table("columns", sa.column("table_catalog"), sa.column("table_schema"),
                      sa.column("table_name"), sa.column("column_name"),
                      sa.column("data_type"), sa.column("ordinal_position"),
                      schema="information_schema")
        rows = conn.execute(
            sa.select(ic.c.table_schema, ic.c.table_name, ic.c.column_name, ic.c.data_type)
            .where(ic.c.table_catalog == sa.func.current_database())
            .order_by(ic.c.table_schema, ic.c.table_name, ic.c.ordinal_position)
        ).all()
        found: dict[Relation, dict[str, str]] = {}
        for schema, table, col, typ in rows:
            found.setdefault((str(schema), str(table)), {})[str(col)] = str(typ).upper()
        return {r: found[r] for r in relations if r in found}

    def try_cast_double(self, conn: sa.Connection, column: str) -> str | None:
        return self.suite_function("try_double", [column])

    # --- triage: the isolated rebuild runs on a copy of the file -----------------------

    def isolation_footprint(self, cfg: WarehouseConfig, relations: Sequence[Relation]
                            ) -> tuple[int, str]:
        """The whole file is copied."""
        _file_only(cfg)
        return (cfg.path.stat().st_size if cfg.path.exists() else 0), "warehouse file"

    def open_scratch(self, cfg: WarehouseConfig, folder: Path, name: str) -> Scratch:
        """A copy of the file in ``folder`` under the same file name (compiled SQL names
        the catalog after it); production is attached read-only for the diff."""
        _file_only(cfg)
        copy = folder / cfg.path.name
        size = copy_file(cfg.path, copy)
        return Scratch(warehouse=dataclasses.replace(cfg, path=copy, url=""), name=str(copy),
                       kind="copy", location=str(copy), production=PRODUCTION_CATALOG,
                       copy_bytes=size)

    def drop_scratch(self, cfg: WarehouseConfig, scratch: Scratch,
                     schemas: Sequence[str] = ()) -> None:
        copy = Path(scratch.name)
        if copy.resolve() == cfg.path.resolve():  # never production
            raise ValueError(f"refusing to delete the warehouse file {cfg.path}")
        for path in (copy, copy.with_name(copy.name + ".wal")):
            path.unlink(missing_ok=True)

    def comparison(self, cfg: WarehouseConfig, scratch: Scratch, *, read_only: bool = False
                   ) -> AbstractContextManager[sa.Connection]:
        return _attached(self, cfg, scratch, read_only)

    def scratch_output(self, name: str, copy: str) -> dict[str, Any]:
        return {"path": f"{copy}.duckdb"}

    def isolation_commands(self, cfg: WarehouseConfig, name: str, copy: str, dbt: str,
                           state: str) -> list[str]:
        """Copy the file, build in the copy (the generated profile's path)."""
        _file_only(cfg)
        target = shlex.quote(f"{copy}.duckdb")
        return [f"cp {shlex.quote(str(cfg.path))} {target}",
                dbt,
                f"rm {target}  # when done"]

    def fingerprint(self, cfg: WarehouseConfig, relations: Sequence[Relation]) -> str:
        """sha256 of the file (any write changes it)."""
        return file_checksum(cfg.path) if not cfg.url else ""

    def query_plan(self, conn: sa.Connection, sql: str, out: Path, timeout_s: float
                   ) -> dict[str, Any]:
        """DuckDB's ``enable_profiling`` pragma (JSON): the SELECT runs once, counted."""
        raw = conn.connection.dbapi_connection
        interrupt = raw.interrupt  # type: ignore[union-attr]
        timer = threading.Timer(timeout_s, interrupt)
        conn.exec_driver_sql("PRAGMA enable_profiling = 'json'")
        conn.exec_driver_sql(f"PRAGMA profiling_output = {path_literal(out)}")
        timer.start()
        try:
            conn.exec_driver_sql(f"SELECT count(*) FROM ({sql.strip().rstrip(';')}) AS q").all()
        finally:
            timer.cancel()
            conn.exec_driver_sql("PRAGMA disable_profiling")
        if not out.is_file():  # DuckDB wrote no plan (e.g. the query was cut short)
            raise Unsupported(f"DuckDB wrote no query plan ({out.name})")
        return summarize_query_plan(json.loads(out.read_text(encoding="utf-8")))


PRODUCTION_CATALOG = "triage_prod"  # production, attached read-only to the copy


def _file_only(cfg: WarehouseConfig) -> None:
    if cfg.url:
        raise Unsupported("isolated rebuild needs a DuckDB file warehouse (copy it by hand)")


@contextmanager
def _attached(backend: Backend, cfg: WarehouseConfig, scratch: Scratch, read_only: bool
              ) -> Iterator[sa.Connection]:
    engine = backend.create_engine(scratch.warehouse, read_only=read_only)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                f"ATTACH {path_literal(cfg.path)} AS {scratch.production} (READ_ONLY)")
            conn.commit()  # an ATTACH rolled back with a failed query would vanish
            try:
                yield conn
            finally:
                conn.rollback()
                conn.exec_driver_sql(f"DETACH {scratch.production}")
                conn.commit()
    finally:
        engine.dispose()


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


def file_checksum(path: Path, limit: int = 1 << 30) -> str:
    """sha256 of a file (empty for files over ``limit`` bytes: too slow to hash here)."""
    if not path.exists() or path.stat().st_size > limit:
        return ""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def summarize_query_plan(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Slowest operators, table scans (rows, row groups) and join fan-out of a DuckDB
    JSON query plan."""
    ops: list[dict[str, Any]] = []

    def walk(node: Mapping[str, Any]) -> None:
        kids = node.get("children") or []
        info = node.get("extra_info") or {}
        rows_in = max((int(k.get("operator_cardinality", k.get("intermediate_rows", 0)) or 0)
                       for k in kids), default=0)
        rows = int(node.get("operator_cardinality", node.get("intermediate_rows", 0)) or 0)
        ops.append({
            "operator": str(node.get("operator_name") or node.get("name") or node.get("type")),
            "seconds": float(node.get("operator_timing", node.get("timing", 0.0)) or 0.0),
            "rows": rows, "rows_in": rows_in,
            "table": info.get("Table"), "join": info.get("Conditions"),
            "rows_scanned": node.get("operator_rows_scanned", node.get("rows_scanned")),
            "row_groups": (f"{node['row_groups_scanned']}/{node['total_row_groups_to_scan']}"
                           if "row_groups_scanned" in node else None),
        })
        for k in kids:
            walk(k)

    tops = doc.get("children") or doc.get("operator") or []
    for top in tops if isinstance(tops, list) else [tops]:
        walk(top)
    scans = [o for o in ops if o["table"]]
    joins = [dict(o, fan_out=round(o["rows"] / o["rows_in"], 2) if o["rows_in"] else None)
             for o in ops if o["join"]]
    return {
        "engine": "DuckDB",
        "total_seconds": float(doc.get("latency", doc.get("query", {}).get("cpu_time", 0.0))
                               or 0.0),
        "rows_scanned": sum(int(o["rows_scanned"] or 0) for o in scans),
        "slowest": sorted(ops, key=lambda o: o["seconds"], reverse=True)[:8],
        "scans": sorted(scans, key=lambda o: int(o["rows_scanned"] or 0), reverse=True)[:8],
        "joins": sorted(joins, key=lambda o: o["fan_out"] or 0, reverse=True)[:8],
    }


class GenericBackend(DuckDBBackend):
    """Any other SQLAlchemy URL (SQLite in tests): row by row, the file lock, no hash,
    SQLAlchemy's reflection; dbt's target is not compared before a build."""

    dialect = ""
    bulk_loader = ""
    dbt_type = ""

    def dbt_location(self, output: Mapping[str, Any]) -> str:
        return Backend.dbt_location(self, output)

    def dbt_mismatch(self, cfg: WarehouseConfig, output: Mapping[str, Any]) -> str | None:
        return None

    def median(self, dialect: sa.Dialect, col: sa.ColumnElement[Any]
               ) -> sa.ColumnElement[Any] | None:
        if dialect.name in _PERCENTILE_CONT_DIALECTS:
            return sa.func.percentile_cont(0.5).within_group(col)
        return None

    gx_datasource = "sql"
    batch_copies = False

    def create_engine(self, cfg: WarehouseConfig, *, read_only: bool = False) -> sa.Engine:
        return sa.create_engine(cfg.sqlalchemy_url, poolclass=sa.NullPool)

    def key_hash_sample(self, conn: sa.Connection, keys: Sequence[str], modulus: int) -> str:
        return "1 = 1"

    def snapshot_store(self, cfg: Config) -> SnapshotStore | None:
        return None

    # what the base class says for an engine it knows nothing about
    relation_columns = Backend.relation_columns
    try_cast_double = Backend.try_cast_double
    isolation_footprint = Backend.isolation_footprint
    open_scratch = Backend.open_scratch
    drop_scratch = Backend.drop_scratch
    comparison = Backend.comparison
    isolation_commands = Backend.isolation_commands
    scratch_output = Backend.scratch_output
    fingerprint = Backend.fingerprint
    query_plan = Backend.query_plan

    def gx_connection(self, cfg: WarehouseConfig) -> tuple[str, dict[str, Any]]:
        return cfg.sqlalchemy_url, {}

    def dbt_environment(self, cfg: WarehouseConfig) -> dict[str, str]:
        return {"MONITOR_WAREHOUSE_PATH": str(cfg.path)}
