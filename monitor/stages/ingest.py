"""Ingest landed CSV files into raw tables, exactly once, losing nothing.

Each file is one batch, known by its checksum in the ledger; every data line lands in
``<schema>.<feed>`` or in the quarantine with a reason. A file's ledger rows commit in
one transaction with its rows, or after them: until the ledger row commits, no reader
sees a row of the batch (staging reads ledger batches only), so a crash leaves all of
it or, visibly, none. This module is the engine-neutral flow; reading a file is the
loaders' job (``monitor.stages.loaders``).

The DuckDB loader commits the file's rows before the rest of the batch (its module says
why). A load that fails after that deletes them before the next file takes the load
sequence (``_discard``); a process that dies first leaves rows of a batch id above the
ledger's newest, which the next ingest drops (``Backend.drop_orphan_batches``).

Where the warehouse has no transactions (Spark, ``Backend.transactional``) the writes
go in this order: the batch's rows and quarantine, then its ledger row (the commit
point), then the file's delivery row. A crash before the ledger row leaves rows of a
batch id no ledger row names: invisible (staging reads ledger batches only), dropped
at the next ingest (``Backend.drop_orphan_batches``) and replaced by the retry, which
takes the same load sequence. A crash after the ledger row leaves the file without its
delivery row: the next cycle finds its checksum in its own batch (same path, no
delivery recorded) and records the delivery, not a duplicate of itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from monitor.core.config import FeedConfig, IngestConfig
from monitor.stages.landing import (
    BadFile,
    StillWriting,
    check_settled,
    checksum,
    landed,
    physical_lines,
    stray_reason,
)
from monitor.stages.loaders import duckdb_read_csv, postgres_copy, row_by_row, spark_csv
from monitor.stages.loaders.base import INSERT_CHUNK, Delivery, LoadCounts, Loader, RawStore
from monitor.store.batches import QUARANTINED
from monitor.store.state import utcnow
from monitor.warehouse.connection import backend_of

log = logging.getLogger(__name__)


@dataclass
class FileOutcome:
    """What happened to one landed file."""

    feed: str
    path: Path
    outcome: str  # loaded | duplicate | quarantined
    batch_id: str | None = None
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    reason: str = ""


@dataclass
class Skipped:
    """A landed path not ingested this cycle, and why (not in the ledger)."""

    path: Path
    reason: str
    feed: str | None = None


@dataclass
class IngestReport:
    files: list[FileOutcome] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for f in self.files if f.outcome == outcome)

    @property
    def rows_loaded(self) -> int:
        return sum(f.rows_loaded for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)


def ingest(engine: sa.Engine, cfg: IngestConfig) -> IngestReport:
    """Load every new file under the landing folder; return what happened to each.

    A problem with one file (any parse or read error) never stops the cycle: the file
    ends loaded, quarantined or skipped with a reason, and the next file is ingested."""
    store = RawStore(engine, cfg)
    store.create()
    with engine.begin() as conn:
        orphans = backend_of(conn).drop_orphan_batches(conn, store.batched, store.batches)
    if orphans:
        log.warning("ingest: dropped rows of batches without a ledger row (an ingest that "
                    "died before its commit): %s", ", ".join(orphans))
    report = IngestReport()
    known = _known_files(store)
    for feed, spec, path in _discover(cfg, report.skipped):
        try:
            stat = path.stat()
            if (str(path), stat.st_size, stat.st_mtime_ns) in known:
                continue  # seen before, unchanged: not even re-hashed
            report.files.append(_ingest_file(store, feed, spec, path, stat))
        except StillWriting as exc:
            log.info("ingest %s: %s", path, exc)
            report.skipped.append(Skipped(path, str(exc), feed))
        except Exception as exc:  # one file must not stop the cycle
            log.exception("ingest %s: failed, left for the next cycle", path)
            report.skipped.append(Skipped(path, f"ingest failed: {exc}", feed))
    for s in report.skipped:
        log.warning("ingest: %s not ingested: %s", s.path, s.reason)
    return report


def _discover(cfg: IngestConfig, skipped: list[Skipped]) -> Iterator[tuple[str, FeedConfig, Path]]:
    """The feeds' landed files in order; stray paths are reported in ``skipped``."""
    root = cfg.landing_dir
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.name not in cfg.feeds or not entry.is_dir() or entry.is_symlink():
            skipped.append(Skipped(entry, stray_reason(entry)))
    for feed, spec in cfg.feeds.items():
        for path, reason in landed(root, root / feed, spec.pattern):
            if reason:
                skipped.append(Skipped(path, reason, feed))
            else:
                yield feed, spec, path


def _known_files(store: RawStore) -> set[tuple[str, int, int]]:
    f = store.files
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(f.c.source_file, f.c.size_bytes, f.c.mtime_ns)).all()
    return {(r[0], r[1], r[2]) for r in rows}


def _ingest_file(
    store: RawStore, feed: str, spec: FeedConfig, path: Path, seen: os.stat_result
) -> FileOutcome:
    """One file in one transaction: the engine's fast reader, else row by row, else
    quarantined.

    A reader that fails on this file's bytes rolls its transaction back and the next one
    tries; only when all fail is the file kept whole in quarantine with the error."""
    digest = checksum(path)
    delivery = Delivery(store, feed, spec, path, utcnow())
    errors: list[str] = []
    for name, loader in _loaders(store.engine):
        try:
            with store.engine.connect() as conn:  # commits as it goes: a loader may commit
                outcome = _commit_batch(conn, delivery, seen, digest, loader, "; ".join(errors))
                conn.commit()
            return _committed(path, outcome)
        except (BadFile, StillWriting):
            raise
        except Exception as exc:  # any reader error: try the next reader
            msg = " ".join(str(exc).split())[:300]
            log.warning("ingest %s: %s reader failed: %s", path, name, msg)
            errors.append(f"{name} reader failed: {msg}")
    with store.engine.connect() as conn:  # no reader could: keep the file whole, say why
        outcome = _commit_batch(conn, delivery, seen, digest, _refuse("; ".join(errors)), "")
        conn.commit()
    return _committed(path, outcome)


def _committed(path: Path, outcome: FileOutcome) -> FileOutcome:
    """Logged once the file's transaction committed: a line a crash test (and an
    operator reading the log) can take as "this file is in"."""
    if outcome.outcome != "duplicate":
        log.info("ingest %s -> %s: read=%d loaded=%d quarantined=%d", path, outcome.batch_id,
                 outcome.rows_read, outcome.rows_loaded, outcome.rows_quarantined)
    return outcome


def _refuse(reason: str) -> Loader:
    """A loader that quarantines the whole file with ``reason``."""
    def load(conn: sa.Connection, d: Delivery, batch_id: str) -> LoadCounts:
        raise BadFile(reason)
    return load


# The engines' fast loaders, by the name their warehouse backend gives (bulk_loader).
_BULK: dict[str, tuple[str, Loader]] = {
    "duckdb_read_csv": ("DuckDB", duckdb_read_csv.load),
    "postgres_copy": ("PostgreSQL COPY", postgres_copy.load),
    "spark_csv": ("Spark CSV", spark_csv.load),
}


def _loaders(engine: sa.Engine) -> list[tuple[str, Loader]]:
    """Readers to try in order: the engine's fast one, then Python's row by row."""
    bulk = backend_of(engine).bulk_loader
    return [*([_BULK[bulk]] if bulk else []), ("row-by-row", row_by_row.load)]


def _commit_batch(
    conn: sa.Connection, d: Delivery, seen: os.stat_result, digest: str, loader: Loader,
    fallback: str,
) -> FileOutcome:
    """Load (or quarantine) one file and write its ledger rows, in ``conn``'s transaction."""
    store, feed, path, now = d.store, d.feed, d.path, d.ingested_at
    size, mtime = seen.st_size, seen.st_mtime_ns
    b = store.batches
    backend = backend_of(conn)
    dup = conn.execute(sa.select(b).where(b.c.checksum == digest)).mappings().first()
    if dup is not None:
        if dup["source_file"] == str(path) and not _delivered(conn, store, dup["batch_id"]):
            return _recover_delivery(conn, d, seen, digest, dup)
        _record_delivery(conn, store, path, size, mtime, digest, dup["batch_id"], "duplicate",
                         now)
        log.info("ingest %s: same content as batch %s, skipped", path, dup["batch_id"])
        return FileOutcome(feed, path, "duplicate", dup["batch_id"],
                           reason=f"same content as {dup['batch_id']}")
    seq = (conn.execute(sa.select(sa.func.max(b.c.load_seq))).scalar() or 0) + 1
    batch_id = batch_id_for(feed, seq)
    tables = store.batched_for(feed)
    if fallback:  # a reader before this one failed: without a transaction, it may have written
        backend.clear_batch(conn, tables, batch_id)
    try:
        try:
            loaded, quarantined, read = loader(conn, d, batch_id)
            outcome = FileOutcome(feed, path, "loaded", batch_id, read, loaded, quarantined,
                                  fallback)
            status = "pending"
        except BadFile as exc:
            reason = "; ".join(x for x in (fallback, str(exc)) if x)
            backend.clear_batch(conn, tables, batch_id)
            read = _quarantine_whole(conn, d, batch_id, reason)
            outcome = FileOutcome(feed, path, "quarantined", batch_id, read, 0, read, reason)
            status = "quarantined"
            log.warning("ingest %s: whole file quarantined: %s", path, reason)
        check_settled(path, seen)
        backend.record_batch(conn, b, dict(
            batch_id=batch_id, feed=feed, source_file=str(path), checksum=digest,
            size_bytes=size, load_seq=seq, status=status, rows_read=outcome.rows_read,
            rows_loaded=outcome.rows_loaded, rows_quarantined=outcome.rows_quarantined,
            reason=outcome.reason or None, ingested_at=now,
        ))
        _record_delivery(conn, store, path, size, mtime, digest, batch_id, outcome.outcome, now)
    except Exception:
        if backend.transactional:  # as if nothing was written, rows a loader committed too
            _discard(conn, tables, batch_id)
        raise
    return outcome


def _discard(conn: sa.Connection, tables: list[tuple[sa.Table, str]], batch_id: str) -> None:
    """Roll the attempt back and delete the rows its loader committed before the ledger
    row (the DuckDB loader does), so the batch id the next file takes holds none."""
    conn.rollback()
    backend_of(conn).clear_batch(conn, tables, batch_id)
    conn.commit()


def _delivered(conn: sa.Connection, store: RawStore, batch_id: str) -> bool:
    """Whether the delivery that made ``batch_id`` is recorded (its ingest_files row)."""
    f = store.files
    q = (sa.select(sa.func.count()).select_from(f)
         .where(f.c.batch_id == batch_id, f.c.outcome != "duplicate"))
    return bool(conn.execute(q).scalar())


def _recover_delivery(conn: sa.Connection, d: Delivery, seen: os.stat_result, digest: str,
                      batch: sa.RowMapping) -> FileOutcome:
    """The file whose batch is in the ledger but whose delivery row is not (an ingest
    without a transaction that died between the two): record that delivery now, with
    the outcome and counts the ledger holds, instead of calling the file a duplicate of
    its own batch."""
    outcome = "quarantined" if batch["status"] == QUARANTINED else "loaded"
    _record_delivery(conn, d.store, d.path, seen.st_size, seen.st_mtime_ns, digest,
                     batch["batch_id"], outcome, d.ingested_at)
    log.warning("ingest %s: batch %s was committed without its delivery row; recorded now",
                d.path, batch["batch_id"])
    return FileOutcome(d.feed, d.path, outcome, batch["batch_id"], batch["rows_read"],
                       batch["rows_loaded"], batch["rows_quarantined"], batch["reason"] or "")


def batch_id_for(feed: str, load_seq: int) -> str:
    """``<load_seq:08d>-<feed>``: the load sequence comes first because DuckDB keeps only
    the first 8 bytes of a string's min/max per row group. With ids that differ there, a
    filter or join on a few batches (a contract, staging's published-batch join) skips
    the row groups of older batches; with a shared ``claims-0`` prefix every such query
    read the ``_batch_id`` column of the whole raw table (24/24 row groups at 31 days)."""
    return f"{load_seq:08d}-{feed}"


def _record_delivery(
    conn: sa.Connection, store: RawStore, path: Path, size: int, mtime: int,
    digest: str, batch_id: str, outcome: str, now: datetime,
) -> None:
    conn.execute(
        store.files.insert().values(
            source_file=str(path), size_bytes=size, mtime_ns=mtime, checksum=digest,
            batch_id=batch_id, outcome=outcome, seen_at=now,
        )
    )


def _quarantine_whole(conn: sa.Connection, d: Delivery, batch_id: str, reason: str) -> int:
    """Keep every line of an unreadable file in quarantine; return how many.

    A gzip stream that breaks off keeps the lines before the break, and one more row
    saying where it broke, so nothing is silently dropped."""
    n = 0
    chunk: list[dict[str, object]] = []
    storable = backend_of(conn).storable_text

    def add(line_no: int, why: str, raw: bytes) -> None:
        chunk.append(dict(batch_id=batch_id, feed=d.feed, source_file=str(d.path),
                          line_number=line_no, reason=why,
                          raw_line=storable(raw.decode("utf-8", "backslashreplace"))))
        if len(chunk) >= INSERT_CHUNK:
            conn.execute(d.store.quarantine.insert(), chunk)
            chunk.clear()

    try:
        for n, raw in enumerate(physical_lines(d.path), start=1):
            add(n, reason, raw)
    except (OSError, EOFError) as exc:
        n += 1
        add(n, f"{reason}; unreadable from here: {exc}", b"")
    if chunk:
        conn.execute(d.store.quarantine.insert(), chunk)
    return n
