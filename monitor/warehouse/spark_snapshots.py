"""Snapshots of a Spark warehouse: table copies in a snapshot database per run, their
metadata documents and HEAD as JSON files in ``[evidence] snapshots_dir``.

- A run's copies live in database ``dqm_snapshot_<run>``, where ``<run>`` spells the run
  id in the letters, digits and ``_`` Spark's catalog takes (:func:`database_of`, one to
  one: ``_`` is ``__``, ``-`` is ``_0``, ``.`` is ``_1`` and a capital letter ``_`` and
  the letter), each table as parquet ``<schema>__<identifier>``.
- Spark has no transactions, so what the other stores get from one is built from order:
  a snapshot's document is written only after every copy finished (a database without
  one is a leftover, dropped under the next cycle's lock), and a restore first builds
  each table's restored rows in the work database ``dqm_restore`` (the chain applied,
  then counted and summed there: the integrity checks refuse before any live table
  changed), and only when every table passed are the live tables overwritten from
  them with ``INSERT OVERWRITE`` (static partition overwrite: every partition of the
  table is replaced). A crash during that last step leaves some tables restored and
  some not; running the same rollback again finishes it (the copies do not change).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.warehouse.engine import connected
from monitor.warehouse.snapshot_files import FolderDocuments
from monitor.warehouse.snapshot_store import (
    SnapshotError,
    SnapshotRestorer,
    SnapshotWriter,
    TableStats,
    above,
    check_names,
    check_run_id,
    sequence_sums,
    table_stats,
)
from monitor.warehouse.spark_dialect import describe_columns

__all__ = ["PREFIX", "WORK", "SparkSnapshots", "database_of", "run_of", "table_bytes"]

log = logging.getLogger(__name__)

PREFIX = "dqm_snapshot_"
WORK = "dqm_restore"  # restored rows are built here before the live tables change
_INT_TYPES = frozenset({"TINYINT", "SMALLINT", "INT", "INTEGER", "BIGINT"})
_NAME = re.compile(r"[a-z0-9_]+")


def q(name: str) -> str:
    """A Spark identifier in backticks."""
    return "`" + name.replace("`", "``") + "`"


_ESCAPES = {"_": "__", "-": "_0", ".": "_1"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}


def database_of(run_id: str) -> str:
    """The snapshot database of ``run_id`` (see the module docstring)."""
    return PREFIX + "".join(_ESCAPES.get(ch, "_" + ch.lower() if ch.isupper() else ch)
                            for ch in check_run_id(run_id))


def run_of(database: str) -> str | None:
    """The run id :func:`database_of` made ``database`` from, None for another name."""
    text = database[len(PREFIX):]
    if not database.startswith(PREFIX) or not _NAME.fullmatch(text):
        return None
    out, escaped = [], False
    for ch in text:
        if escaped:
            out.append(_UNESCAPES.get(ch) or (ch.upper() if ch.isalpha() else "\0"))
            escaped = False
        elif ch == "_":
            escaped = True
        else:
            out.append(ch)
    run_id = "".join(out)
    if escaped or "\0" in out:
        return None
    try:
        return run_id if database_of(run_id) == database else None
    except SnapshotError:
        return None


def copy_table(schema: str, ident: str) -> str:
    check_names(schema, ident)
    return f"{schema.lower()}__{ident.lower()}"


def _rel(schema: str, table: str) -> str:
    return f"{q(schema)}.{q(table)}"


def _columns(conn: sa.Connection, schema: str, table: str) -> dict[str, str]:
    if not sa.inspect(conn).has_table(table, schema=schema):
        return {}
    return {n: t.upper() for n, t in describe_columns(conn, schema, table)}


def _databases(conn: sa.Connection) -> list[str]:
    return [str(r[0]) for r in conn.exec_driver_sql(f"SHOW DATABASES LIKE '{PREFIX}*'")]


def table_bytes(conn: sa.Connection, schema: str, table: str) -> int:
    """The table's size on storage (``ANALYZE ... NOSCAN`` lists its files only)."""
    conn.exec_driver_sql(f"ANALYZE TABLE {_rel(schema, table)} COMPUTE STATISTICS NOSCAN")
    for name, value, *_ in conn.exec_driver_sql(f"DESCRIBE TABLE EXTENDED {_rel(schema, table)}"):
        found = re.match(r"(\d+) bytes", str(value or "")) if name == "Statistics" else None
        if found:
            return int(found[1])
    return 0


class SparkSnapshots(FolderDocuments):
    def __init__(self, folder: Path, engine: Callable[[], sa.Engine]) -> None:
        self.folder = folder
        self._engine = engine
        self.where = f"Spark databases {PREFIX}* (documents in {folder})"

    def _connect(self) -> AbstractContextManager[sa.Connection]:
        return connected(self._engine)

    def location(self, run_id: str) -> str:
        return database_of(run_id)

    def copies(self) -> set[str]:
        with self._connect() as conn:
            runs = (run_of(d) for d in _databases(conn))
            return {r for r in runs if r is not None}

    def drop(self, run_id: str) -> None:
        self.drop_document(run_id)  # first: a document never names a missing copy
        with self._connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {q(database_of(run_id))} CASCADE")

    def clear_leftovers(self) -> list[str]:
        """Snapshot databases no document names (a snapshot killed before its document
        was written), the restore work database, and ``.partial`` files."""
        removed = []
        documented = self.documented()
        with self._connect() as conn:
            for name in _databases(conn):
                run_id = run_of(name)
                if run_id is not None and run_id not in documented:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {q(name)} CASCADE")
                    removed.append(f"database {name}")
            work = conn.exec_driver_sql(f"SHOW DATABASES LIKE '{WORK}'").all()
            if work:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {q(WORK)} CASCADE")
                removed.append(f"database {WORK}")
        for path in self.partial_files():
            path.unlink(missing_ok=True)
            removed.append(str(path))
        return removed

    @contextmanager
    def writer(self, run_id: str) -> Iterator[SnapshotWriter]:
        database = database_of(run_id)
        with self._connect() as conn:
            self.drop_document(run_id)  # an earlier snapshot of the run is replaced
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {q(database)} CASCADE")
            conn.exec_driver_sql(f"CREATE DATABASE {q(database)}")
            yield _Writer(self, conn, run_id, database)

    def restorer(self, run_ids: Sequence[str]) -> AbstractContextManager[SnapshotRestorer]:
        return self._restore(list(run_ids))

    @contextmanager
    def _restore(self, run_ids: list[str]) -> Iterator[SnapshotRestorer]:
        databases = {run_id: database_of(run_id) for run_id in run_ids}
        with self._connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {q(WORK)} CASCADE")
            conn.exec_driver_sql(f"CREATE DATABASE {q(WORK)}")
            restorer = _Restorer(conn, databases)
            try:
                yield restorer
                restorer.commit()
            finally:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {q(WORK)} CASCADE")


class _Writer(SnapshotWriter):
    def __init__(self, store: SparkSnapshots, conn: sa.Connection, run_id: str,
                 database: str) -> None:
        self.store, self.conn, self.run_id, self.database = store, conn, run_id, database
        self.copied: list[tuple[str, str]] = []

    def columns(self, schema: str, ident: str) -> dict[str, str]:
        check_names(schema, ident)
        return _columns(self.conn, schema, ident)

    def is_integer(self, type_name: str) -> bool:
        return type_name.upper() in _INT_TYPES

    def stats(self, schema: str, ident: str, seqs: Sequence[str]) -> TableStats:
        check_names(schema, ident)
        return table_stats(self.conn, _rel(schema, ident), seqs, q)

    def copy(self, schema: str, ident: str, delta: tuple[Sequence[str], int] | None) -> int:
        dst = _rel(self.database, copy_table(schema, ident))
        where = f" WHERE {above(*delta, q=q)}" if delta else ""
        self.conn.exec_driver_sql(
            f"CREATE TABLE {dst} USING parquet AS SELECT * FROM {_rel(schema, ident)}{where}")
        self.copied.append((schema, ident))
        return int(self.conn.exec_driver_sql(f"SELECT count(*) FROM {dst}").scalar() or 0)

    def finish(self, document: Callable[[int, int], dict[str, Any]]) -> dict[str, Any]:
        copy_bytes = sum(table_bytes(self.conn, self.database, copy_table(s, i))
                         for s, i in self.copied)
        live_bytes = sum(table_bytes(self.conn, s, i) for s, i in self.copied)
        doc = {**document(copy_bytes, live_bytes), "path": self.database}
        self.store.write_document(self.run_id, doc)  # last: the snapshot now exists
        return doc


class _Restorer(SnapshotRestorer):
    """Builds each table's restored rows in :data:`WORK`; :meth:`commit` writes them."""

    def __init__(self, conn: sa.Connection, databases: dict[str, str]) -> None:
        self.conn, self.databases = conn, databases
        self.staged: dict[tuple[str, str], str] = {}  # live table -> its rows in WORK
        self._n = 0

    def _copy(self, schema: str, ident: str, run_id: str) -> str:
        database, name = self.databases[run_id], copy_table(schema, ident)
        if not sa.inspect(self.conn).has_table(name, schema=database):
            raise SnapshotError(f"{schema}.{ident}: database {database} holds no copy of it")
        return _rel(database, name)

    def _stage(self, schema: str, ident: str, select: str) -> None:
        self._n += 1
        name = f"{copy_table(schema, ident)}__{self._n}"
        self.conn.exec_driver_sql(f"CREATE TABLE {_rel(WORK, name)} USING parquet AS {select}")
        old = self.staged.get((schema, ident))
        self.staged[(schema, ident)] = name
        if old is not None:
            self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_rel(WORK, old)}")

    def _current(self, schema: str, ident: str) -> str:
        check_names(schema, ident)
        staged = self.staged.get((schema, ident))
        return _rel(WORK, staged) if staged else _rel(schema, ident)

    def replace(self, schema: str, ident: str, run_id: str) -> None:
        self._stage(schema, ident, f"SELECT * FROM {self._copy(schema, ident, run_id)}")

    def apply_delta(self, schema: str, ident: str, run_id: str, key: Sequence[str]) -> None:
        check_names(*key)
        src, base = self._copy(schema, ident, run_id), self._current(schema, ident)
        staged = self.staged.get((schema, ident))
        cols = list(_columns(self.conn, WORK, staged) if staged
                    else _columns(self.conn, schema, ident))
        names = ", ".join(q(c) for c in cols)
        match = " AND ".join(f"kept.{q(k)} = delta_rows.{q(k)}" for k in key)
        keys = ", ".join(q(k) for k in key)
        self._stage(schema, ident,
                    f"SELECT {', '.join(f'kept.{q(c)}' for c in cols)} FROM {base} AS kept "
                    f"LEFT ANTI JOIN (SELECT DISTINCT {keys} FROM {src}) AS delta_rows "
                    f"ON {match} UNION ALL SELECT {names} FROM {src}")

    def count(self, schema: str, ident: str) -> int:
        return int(self.conn.exec_driver_sql(
            f"SELECT count(*) FROM {self._current(schema, ident)}").scalar() or 0)

    def sums(self, schema: str, ident: str, seqs: Sequence[str]) -> dict[str, int | None]:
        return sequence_sums(self.conn, self._current(schema, ident), seqs, q)

    def commit(self) -> None:
        """Overwrite each live table with its restored rows (every partition of it: the
        session's partition overwrite mode is static for these statements)."""
        self.conn.exec_driver_sql("SET spark.sql.sources.partitionOverwriteMode=STATIC")
        for (schema, ident), staged in self.staged.items():
            live = _columns(self.conn, schema, ident)
            rows = _columns(self.conn, WORK, staged)
            if live == rows:
                names = ", ".join(q(c) for c in live)  # the live order: partitions last
                self.conn.exec_driver_sql(f"INSERT OVERWRITE TABLE {_rel(schema, ident)} "
                                          f"SELECT {names} FROM {_rel(WORK, staged)}")
            else:  # another shape (or no table): the copy's table replaces it
                self.conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {q(schema)}")
                self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_rel(schema, ident)}")
                self.conn.exec_driver_sql(f"CREATE TABLE {_rel(schema, ident)} USING parquet "
                                          f"AS SELECT * FROM {_rel(WORK, staged)}")
            log.info("rollback: %s.%s overwritten from %s.%s", schema, ident, WORK, staged)
