"""Where an engine keeps last-known-good copies of the built tables: the interface
``monitor.recovery`` takes, lists, prunes and restores snapshots through.

``monitor.recovery.snapshots`` and ``.rollback`` hold the engine-neutral logic: which
tables, FULL or DELTA, retention, the integrity checks, the metadata document and every
message. A :class:`SnapshotStore` (one per engine, from ``Backend.snapshot_store``)
holds the copying and the storage: a DuckDB file per snapshot with a JSON sidecar
(``duckdb_snapshots``), or a schema per snapshot and a catalog table on PostgreSQL
(``postgres_snapshots``). docs/contracts.md (Last-known-good snapshots) says what each
keeps where.

Each snapshot is described by a metadata document (a JSON object, written by recovery)
that the store keeps beside the copy and writes last, so a snapshot that did not finish
is never listed. Names reach SQL text only through :func:`quote` after :data:`IDENT`
or :data:`RUN_ID` accepted them.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

__all__ = ["IDENT", "RUN_ID", "SnapshotError", "SnapshotRestorer", "SnapshotStore",
           "SnapshotWriter", "TableStats", "quote"]

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")  # a name safe to put in SQL text
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # names a file or a schema


class SnapshotError(RuntimeError):
    """A snapshot cannot be taken or restored (the message says why)."""


def quote(name: str) -> str:
    """A schema, table or column name quoted for SQL text (DuckDB and PostgreSQL alike)."""
    return '"' + name.replace('"', '""') + '"'


def check_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise SnapshotError(f"not a run id: {run_id!r}")
    return run_id


def check_names(*names: str) -> None:
    for name in names:
        if not IDENT.match(name):
            raise SnapshotError(f"unsafe identifier {name!r}")


@dataclass(frozen=True)
class TableStats:
    """One scan of a live table's narrow columns: what a snapshot records of it."""

    rows: int
    unsequenced: int  # rows where every sequence column is NULL
    max: dict[str, int | None] = field(default_factory=dict)
    sum: dict[str, int | None] = field(default_factory=dict)


def table_stats(conn: sa.Connection, rel: str, seqs: Sequence[str],
                q: Callable[[str], str] = quote) -> TableStats:
    """Row count, rows without any sequence, the max and sum of each sequence column of
    the relation ``rel`` (SQL text, quoted by the caller): standard SQL, one scan.
    ``q`` quotes a column name (Spark: backticks)."""
    unsequenced = " AND ".join(f"{q(c)} IS NULL" for c in seqs) or "false"
    parts = ["count(*)", f"count(*) FILTER (WHERE {unsequenced})"]
    for c in seqs:
        parts += [f"max({q(c)})", f"sum({q(c)})"]
    row = conn.exec_driver_sql(f"SELECT {', '.join(parts)} FROM {rel}").one()
    mx: dict[str, int | None] = {}
    sm: dict[str, int | None] = {}
    for i, c in enumerate(seqs):
        hi, total = row[2 + 2 * i], row[3 + 2 * i]
        mx[c] = int(hi) if hi is not None else None
        sm[c] = int(str(total)) if total is not None else None  # PostgreSQL: numeric
    return TableStats(int(row[0] or 0), int(row[1] or 0), mx, sm)


def sequence_sums(conn: sa.Connection, rel: str, seqs: Sequence[str],
                  q: Callable[[str], str] = quote) -> dict[str, int | None]:
    """``{column: sum}`` of the relation ``rel``: what a rollback compares."""
    if not seqs:
        return {}
    row = conn.exec_driver_sql(
        f"SELECT {', '.join(f'sum({q(c)})' for c in seqs)} FROM {rel}").one()
    return {c: int(str(v)) if v is not None else None for c, v in zip(seqs, row, strict=True)}


def above(seqs: Sequence[str], since: int, q: Callable[[str], str] = quote) -> str:
    """``greatest(seqs) > since`` written as an OR of comparisons, a form every engine
    pushes into the scan (``greatest`` skips NULLs on DuckDB and PostgreSQL alike)."""
    return " OR ".join(f"{q(c)} > {int(since)}" for c in seqs)


class SnapshotWriter(ABC):
    """One snapshot being written: nothing of it is listed until :meth:`finish`."""

    @abstractmethod
    def columns(self, schema: str, ident: str) -> dict[str, str]:
        """``{column: type}`` of a live table, in table order (empty if it is missing)."""

    @abstractmethod
    def is_integer(self, type_name: str) -> bool:
        """Whether a type :meth:`columns` returned is an integer type (a sequence column
        is used only then)."""

    @abstractmethod
    def stats(self, schema: str, ident: str, seqs: Sequence[str]) -> TableStats:
        """:class:`TableStats` of a live table."""

    @abstractmethod
    def copy(self, schema: str, ident: str, delta: tuple[Sequence[str], int] | None) -> int:
        """Copy the live table whole, or with ``delta = (seqs, since)`` only its rows
        whose greatest sequence column is above ``since``; returns the rows copied."""

    @abstractmethod
    def finish(self, document: Callable[[int, int], dict[str, Any]]) -> dict[str, Any]:
        """Make the copies durable, then store the metadata document
        ``document(bytes of the copy, bytes of the warehouse)`` last; returns it."""


class SnapshotRestorer(ABC):
    """One restore, one warehouse transaction: committed when the ``with`` block ends
    without an exception, rolled back otherwise (nothing restored)."""

    @abstractmethod
    def replace(self, schema: str, ident: str, run_id: str) -> None:
        """Make the live table hold exactly the rows of ``run_id``'s copy of it."""

    @abstractmethod
    def apply_delta(self, schema: str, ident: str, run_id: str, key: Sequence[str]) -> None:
        """Delete the live rows whose ``key`` is in ``run_id``'s (delta) copy, then
        insert that copy's rows."""

    @abstractmethod
    def count(self, schema: str, ident: str) -> int:
        """Rows of the live table, as restored so far in this transaction."""

    @abstractmethod
    def sums(self, schema: str, ident: str, seqs: Sequence[str]) -> dict[str, int | None]:
        """Sums of the live table's sequence columns, as restored so far."""


class SnapshotStore(ABC):
    """The snapshots of one warehouse: their copies, their metadata documents, and HEAD
    (the snapshot the live tables equal and the builds since, a small JSON document)."""

    #: Where the snapshots are, for messages ("data/snapshots", "schema dqm_snapshots").
    where: str = ""

    @abstractmethod
    def location(self, run_id: str) -> str:
        """Where ``run_id``'s copy is (a file, a schema); raises :class:`SnapshotError`
        for a name the store cannot use."""

    def ready(self) -> bool:
        """Whether there is a warehouse to copy from (a DuckDB file not yet created)."""
        return True

    @abstractmethod
    def documents(self) -> list[dict[str, Any]]:
        """Every readable metadata document, whether or not its copy is still there
        (``path`` set to :meth:`location`); unreadable ones are skipped with a warning."""

    @abstractmethod
    def document(self, run_id: str) -> dict[str, Any] | None:
        """``run_id``'s metadata document, None if there is none or it is unreadable."""

    @abstractmethod
    def copies(self) -> set[str]:
        """Run ids whose copy exists (a copy without a document is never listed)."""

    @abstractmethod
    def drop(self, run_id: str) -> None:
        """Remove ``run_id``'s copy and document (pruning)."""

    @abstractmethod
    def clear_leftovers(self) -> list[str]:
        """Remove what a snapshot that did not finish left (copies no document names);
        returns what was removed, each logged. Called under the cycle lock."""

    @abstractmethod
    def read_head(self) -> dict[str, Any] | None:
        """HEAD's document, None if there is none; ValueError if unreadable."""

    @abstractmethod
    def write_head(self, doc: dict[str, Any]) -> None:
        """Replace HEAD atomically."""

    @abstractmethod
    def forget_head(self) -> None:
        """Remove HEAD (the next snapshot is then FULL)."""

    @abstractmethod
    def writer(self, run_id: str) -> AbstractContextManager[SnapshotWriter]:
        """A snapshot of ``run_id`` being written (replacing one of the same run, if
        any); left without :meth:`SnapshotWriter.finish`, it is never listed."""

    @abstractmethod
    def restorer(self, run_ids: Sequence[str]) -> AbstractContextManager[SnapshotRestorer]:
        """A restore transaction reading the copies of ``run_ids``."""
