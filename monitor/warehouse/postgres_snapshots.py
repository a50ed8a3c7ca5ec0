"""Snapshots of a PostgreSQL warehouse, kept in the warehouse itself.

- One schema per snapshot, ``dqm_snapshot_<run_id>`` (a quoted identifier: the run id
  keeps its case, ``-`` and ``.``), holding a plain copy of each table as
  ``"<schema>.<identifier>"``, e.g. ``"dqm_snapshot_20260302T060000Z-1a2b"."main.fct_claims"``.
  Logged tables: an unlogged one would be emptied by a server crash. Autovacuum is off
  on them: a copy never changes.
- The catalog, schema ``dqm_snapshots``: ``snapshots`` (run id, its schema, the
  metadata document as JSON text) and ``head`` (one row, HEAD's document).

A snapshot is written in one REPEATABLE READ transaction: the schema, every copy and
its catalog row, committed together, so a snapshot killed mid-copy leaves nothing (the
server rolls the transaction back) and every table is copied as of one moment. A
restore is one transaction too (PostgreSQL's DDL is transactional): each live table is
truncated and refilled from the copy, so views on it, its grants and indexes stay; a
table whose columns changed since the snapshot is dropped and created from the copy,
which PostgreSQL refuses while a view depends on it (the restore then changes nothing).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import sqlalchemy as sa

from monitor.warehouse.engine import connected
from monitor.warehouse.snapshot_store import (
    RUN_ID,
    SnapshotError,
    SnapshotRestorer,
    SnapshotStore,
    SnapshotWriter,
    TableStats,
    above,
    check_names,
    check_run_id,
    quote,
    sequence_sums,
    table_stats,
)

__all__ = ["CATALOG", "PREFIX", "PostgresSnapshots"]

log = logging.getLogger(__name__)

CATALOG = "dqm_snapshots"  # the catalog's schema
PREFIX = "dqm_snapshot_"  # + run id: one schema per snapshot
_MAX_NAME = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names
_INT_TYPES = frozenset({"smallint", "integer", "bigint"})
_LIKE = PREFIX.replace("_", r"\_") + "%"
# A copy is written once and read only by a restore: autovacuum would otherwise vacuum
# and analyze each new copy (it counts the inserted rows), a whole-table pass that
# competed with the next cycle for the CPU. Anti-wraparound vacuums still run.
_NO_AUTOVACUUM = "with (autovacuum_enabled = false, toast.autovacuum_enabled = false)"


def snapshot_schema(run_id: str) -> str:
    name = PREFIX + check_run_id(run_id)
    if len(name.encode()) > _MAX_NAME:
        raise SnapshotError(f"run id {run_id!r} is too long for a PostgreSQL schema name "
                            f"({name!r} is over {_MAX_NAME} bytes)")
    return name


def copy_name(schema: str, ident: str) -> str:
    """The copy's table name in a snapshot schema: ``<schema>.<identifier>``."""
    check_names(schema, ident)
    name = f"{schema}.{ident}"
    if len(name.encode()) > _MAX_NAME:
        raise SnapshotError(f"{name}: too long to name its copy (over {_MAX_NAME} bytes)")
    return name


def _columns(conn: sa.Connection, schema: str, table: str) -> dict[str, str]:
    rows = conn.execute(sa.text(
        "select column_name, data_type from information_schema.columns "
        "where table_schema = :s and table_name = :t order by ordinal_position"),
        {"s": schema, "t": table}).all()
    return {str(r[0]): str(r[1]) for r in rows}


def _has_catalog(conn: sa.Connection) -> bool:
    return conn.execute(sa.text("select to_regclass(:t) is not null"),
                        {"t": f"{CATALOG}.snapshots"}).scalar_one() is True


def _ensure_catalog(conn: sa.Connection) -> None:
    conn.exec_driver_sql(f"create schema if not exists {CATALOG}")
    conn.exec_driver_sql(
        f"create table if not exists {CATALOG}.snapshots (run_id text primary key, "
        "schema_name text not null unique, created_at text not null, doc text not null)")
    conn.exec_driver_sql(
        f"create table if not exists {CATALOG}.head (id smallint primary key "
        "check (id = 1), doc text not null)")


def _parse(text: str, what: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        log.warning("unreadable %s in %s.snapshots: skipped", what, CATALOG)
        return None
    return doc


def _rows_above(src: str, seqs: Sequence[str], since: int) -> str:
    """The rows of ``src`` with any of ``seqs`` above ``since`` (``above``), one branch
    per column, each row in the first branch it meets: each branch a range on one
    indexed column (lookup_indexes.sql), where the OR of them scans the whole table."""
    if len(seqs) < 2:
        return f"select * from {src} where {above(seqs, since)}"
    n = int(since)
    branches = []
    for i, c in enumerate(seqs):
        earlier = "".join(f" and ({quote(p)} <= {n} or {quote(p)} is null)" for p in seqs[:i])
        branches.append(f"select * from {src} where {quote(c)} > {n}{earlier}")
    return " union all ".join(branches)


class PostgresSnapshots(SnapshotStore):
    def __init__(self, engine: Callable[[], sa.Engine], database: str) -> None:
        self._engine = engine
        self.where = f"schema {CATALOG} of database {database}"

    def _connect(self) -> AbstractContextManager[sa.Connection]:
        return connected(self._engine)

    def location(self, run_id: str) -> str:
        return snapshot_schema(run_id)

    # -- documents ----------------------------------------------------------------

    def documents(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            if not _has_catalog(conn):
                return []
            rows = conn.execute(sa.text(
                f"select run_id, schema_name, doc from {CATALOG}.snapshots")).all()
        found = []
        for run_id, schema, text in rows:
            doc = _parse(str(text), f"document of run {run_id}")
            if doc is not None:
                found.append({**doc, "path": schema})
        return found

    def document(self, run_id: str) -> dict[str, Any] | None:
        schema = snapshot_schema(run_id)
        with self._connect() as conn:
            if not _has_catalog(conn):
                return None
            text = conn.execute(sa.text(f"select doc from {CATALOG}.snapshots "
                                        "where run_id = :r"), {"r": run_id}).scalar()
        doc = _parse(text, f"document of run {run_id}") if text is not None else None
        return {**doc, "path": schema} if doc is not None else None

    def copies(self) -> set[str]:
        with self._connect() as conn:
            names: list[str] = list(conn.execute(sa.text(
                "select nspname from pg_namespace where nspname like :p"), {"p": _LIKE}
            ).scalars())
        return {str(n)[len(PREFIX):] for n in names}

    def drop(self, run_id: str) -> None:
        schema = snapshot_schema(run_id)
        with self._connect() as conn, conn.begin():
            conn.exec_driver_sql(f"drop schema if exists {quote(schema)} cascade")
            if _has_catalog(conn):
                conn.execute(sa.text(f"delete from {CATALOG}.snapshots where run_id = :r"),
                             {"r": run_id})

    def clear_leftovers(self) -> list[str]:
        """Snapshot schemas (``dqm_snapshot_`` and a run id) no catalog row names (a
        snapshot's own transaction never leaves one: only a catalog row deleted by hand
        does)."""
        removed = []
        with self._connect() as conn, conn.begin():
            named: set[str] = set()
            if _has_catalog(conn):
                named = set(conn.execute(sa.text(
                    f"select schema_name from {CATALOG}.snapshots")).scalars().all())
            names: list[str] = list(conn.execute(sa.text(
                "select nspname from pg_namespace where nspname like :p"), {"p": _LIKE}
            ).scalars())
            for name in names:
                if name not in named and RUN_ID.match(name[len(PREFIX):]):
                    conn.exec_driver_sql(f"drop schema {quote(str(name))} cascade")
                    removed.append(f"schema {name}")
        return removed

    # -- HEAD -----------------------------------------------------------------------

    def read_head(self) -> dict[str, Any] | None:
        with self._connect() as conn:
            if not _has_catalog(conn):
                return None
            text = conn.execute(sa.text(f"select doc from {CATALOG}.head where id = 1")
                                ).scalar()
        if text is None:
            return None
        doc = json.loads(text)  # ValueError: unreadable
        if not isinstance(doc, dict):
            raise ValueError("HEAD is not a JSON object")
        return doc

    def write_head(self, doc: dict[str, Any]) -> None:
        with self._connect() as conn, conn.begin():
            _ensure_catalog(conn)
            conn.execute(sa.text(
                f"insert into {CATALOG}.head (id, doc) values (1, :d) "
                "on conflict (id) do update set doc = excluded.doc"),
                {"d": json.dumps(doc)})

    def forget_head(self) -> None:
        with self._connect() as conn, conn.begin():
            if _has_catalog(conn):
                conn.exec_driver_sql(f"delete from {CATALOG}.head")

    # -- copying and restoring --------------------------------------------------------

    @contextmanager
    def writer(self, run_id: str) -> Iterator[SnapshotWriter]:
        schema = snapshot_schema(run_id)
        with self._connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            trans = conn.begin()
            try:
                _ensure_catalog(conn)
                # an earlier snapshot of the same run goes only if this one commits
                conn.exec_driver_sql(f"drop schema if exists {quote(schema)} cascade")
                conn.execute(sa.text(f"delete from {CATALOG}.snapshots where run_id = :r"),
                             {"r": run_id})
                conn.exec_driver_sql(f"create schema {quote(schema)}")
                yield _Writer(conn, trans, run_id, schema)
            finally:
                if trans.is_active:
                    trans.rollback()  # not finished: nothing of it stays

    def restorer(self, run_ids: Sequence[str]) -> AbstractContextManager[SnapshotRestorer]:
        return self._restore(list(run_ids))

    @contextmanager
    def _restore(self, run_ids: list[str]) -> Iterator[SnapshotRestorer]:
        schemas = {run_id: snapshot_schema(run_id) for run_id in run_ids}
        with self._connect() as conn, conn.begin():
            # waiting for a reader's lock on a table is fine; forever is not
            conn.exec_driver_sql("set local lock_timeout = '120s'")
            yield _Restorer(conn, schemas)


class _Writer(SnapshotWriter):
    def __init__(self, conn: sa.Connection, trans: sa.Transaction, run_id: str,
                 schema: str) -> None:
        self.conn, self.trans, self.run_id, self.schema = conn, trans, run_id, schema

    def columns(self, schema: str, ident: str) -> dict[str, str]:
        return _columns(self.conn, schema, ident)

    def is_integer(self, type_name: str) -> bool:
        return type_name.lower() in _INT_TYPES

    def stats(self, schema: str, ident: str, seqs: Sequence[str]) -> TableStats:
        check_names(schema, ident)
        return table_stats(self.conn, f"{quote(schema)}.{quote(ident)}", seqs)

    def copy(self, schema: str, ident: str, delta: tuple[Sequence[str], int] | None) -> int:
        dst = f"{quote(self.schema)}.{quote(copy_name(schema, ident))}"
        src = f"{quote(schema)}.{quote(ident)}"
        rows = _rows_above(src, *delta) if delta else f"select * from {src}"
        res = self.conn.exec_driver_sql(f"create table {dst} {_NO_AUTOVACUUM} as {rows}")
        if res.rowcount is not None and res.rowcount >= 0:
            return int(res.rowcount)
        return int(self.conn.exec_driver_sql(f"select count(*) from {dst}").scalar() or 0)

    def finish(self, document: Callable[[int, int], dict[str, Any]]) -> dict[str, Any]:
        conn = self.conn
        sizes = conn.execute(sa.text(
            "select coalesce(sum(pg_total_relation_size(c.oid)) filter "
            "(where n.nspname = :s), 0), coalesce(sum(pg_total_relation_size(c.oid)), 0) "
            "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname like :p and c.relkind in ('r', 'm')"),
            {"s": self.schema, "p": _LIKE}).one()
        database: int = conn.execute(sa.text("select pg_database_size(current_database())")
                                     ).scalar_one()
        # the warehouse's size without its snapshots (the ones kept and this one)
        doc = document(int(sizes[0]), max(int(database) - int(sizes[1]), 0))
        doc = {**doc, "path": self.schema}
        conn.execute(sa.text(
            f"insert into {CATALOG}.snapshots (run_id, schema_name, created_at, doc) "
            "values (:r, :s, :c, :d)"),
            {"r": self.run_id, "s": self.schema, "c": str(doc.get("created_at", "")),
             "d": json.dumps(doc)})
        self.trans.commit()  # the copies and their catalog row, together
        return doc


class _Restorer(SnapshotRestorer):
    def __init__(self, conn: sa.Connection, schemas: dict[str, str]) -> None:
        self.conn, self.schemas = conn, schemas

    def _copy(self, schema: str, ident: str, run_id: str) -> tuple[str, dict[str, str]]:
        name = copy_name(schema, ident)
        cols = _columns(self.conn, self.schemas[run_id], name)
        if not cols:
            raise SnapshotError(f"{schema}.{ident}: schema {self.schemas[run_id]} holds no "
                                "copy of it")
        return f"{quote(self.schemas[run_id])}.{quote(name)}", cols

    def replace(self, schema: str, ident: str, run_id: str) -> None:
        src, cols = self._copy(schema, ident, run_id)
        live = _columns(self.conn, schema, ident)
        dst = f"{quote(schema)}.{quote(ident)}"
        if live == cols:
            names = ", ".join(quote(c) for c in cols)
            self.conn.exec_driver_sql(f"truncate table {dst}")
            self.conn.exec_driver_sql(f"insert into {dst} ({names}) select {names} from {src}")
            return
        if live:  # another shape: the copy's table replaces it
            self.conn.exec_driver_sql(f"drop table {dst}")
        self.conn.exec_driver_sql(f"create schema if not exists {quote(schema)}")
        self.conn.exec_driver_sql(f"create table {dst} as select * from {src}")

    def apply_delta(self, schema: str, ident: str, run_id: str, key: Sequence[str]) -> None:
        check_names(*key)
        src, cols = self._copy(schema, ident, run_id)
        dst = f"{quote(schema)}.{quote(ident)}"
        match = " and ".join(f"live.{quote(k)} = delta_rows.{quote(k)}" for k in key)
        keys = ", ".join(quote(k) for k in key)
        self.conn.exec_driver_sql(
            f"delete from {dst} as live using (select distinct {keys} from {src}) "
            f"as delta_rows where {match}")
        names = ", ".join(quote(c) for c in cols)
        self.conn.exec_driver_sql(f"insert into {dst} ({names}) select {names} from {src}")

    def count(self, schema: str, ident: str) -> int:
        check_names(schema, ident)
        return int(self.conn.exec_driver_sql(
            f"select count(*) from {quote(schema)}.{quote(ident)}").scalar() or 0)

    def sums(self, schema: str, ident: str, seqs: Sequence[str]) -> dict[str, int | None]:
        check_names(schema, ident)
        return sequence_sums(self.conn, f"{quote(schema)}.{quote(ident)}", seqs)
