"""Ingest landed CSV files into raw tables, exactly once, losing nothing.

Each file is one batch. A ledger keyed by the content checksum makes delivery
idempotent (the same bytes under another name are a recorded no-op). Every data line
ends up either in ``<schema>.<feed>`` or in ``<schema>.ingest_quarantine`` with a
reason, and per batch ``rows_read = rows_loaded + rows_quarantined`` is recorded.
A file, its rows, its quarantine lines and its ledger rows commit in one transaction,
so a crash leaves either all of it or none.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.config import FeedConfig, IngestConfig
from monitor.state import utcnow
from monitor.warehouse import is_duckdb

log = logging.getLogger(__name__)

AUDIT_COLUMNS = ("_batch_id", "_source_file", "_line_number", "_ingested_at")
_SNIFF_BYTES = 65536
_GENERIC_CHUNK = 5000


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
class IngestReport:
    files: list[FileOutcome] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for f in self.files if f.outcome == outcome)

    @property
    def rows_loaded(self) -> int:
        return sum(f.rows_loaded for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)


class BadFile(Exception):
    """The whole file is unreadable as this feed (binary, wrong delimiter, columns)."""


def ledger_tables(md: sa.MetaData, schema: str) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The batch ledger, the delivery log and the quarantine, in the raw schema."""
    batches = sa.Table(
        "ingest_batches",
        md,
        sa.Column("batch_id", sa.String, primary_key=True),
        sa.Column("feed", sa.String, nullable=False),
        sa.Column("source_file", sa.String, nullable=False),
        sa.Column("checksum", sa.String, nullable=False, unique=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("load_seq", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("publish_seq", sa.BigInteger),
        sa.Column("rows_read", sa.BigInteger, nullable=False),
        sa.Column("rows_loaded", sa.BigInteger, nullable=False),
        sa.Column("rows_quarantined", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String),
        sa.Column("ingested_at", sa.DateTime, nullable=False),
        sa.Column("decided_at", sa.DateTime),
        sa.Column("decided_by", sa.String),
        sa.Column("decision_reason", sa.String),
        schema=schema,
    )
    files = sa.Table(
        "ingest_files",
        md,
        sa.Column("source_file", sa.String, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("checksum", sa.String, nullable=False),
        sa.Column("batch_id", sa.String, nullable=False),
        sa.Column("outcome", sa.String, nullable=False),
        sa.Column("seen_at", sa.DateTime, nullable=False),
        schema=schema,
    )
    quarantine = sa.Table(
        "ingest_quarantine",
        md,
        sa.Column("batch_id", sa.String, nullable=False),
        sa.Column("feed", sa.String, nullable=False),
        sa.Column("source_file", sa.String, nullable=False),
        sa.Column("line_number", sa.BigInteger),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("raw_line", sa.String),
        schema=schema,
    )
    return batches, files, quarantine


def feed_table(md: sa.MetaData, schema: str, feed: str, spec: FeedConfig) -> sa.Table:
    cols: list[sa.Column[Any]] = [sa.Column(c, sa.String) for c in spec.columns]
    cols += [
        sa.Column("_batch_id", sa.String, nullable=False),
        sa.Column("_source_file", sa.String, nullable=False),
        sa.Column("_line_number", sa.BigInteger),
        sa.Column("_ingested_at", sa.DateTime, nullable=False),
    ]
    return sa.Table(feed, md, *cols, schema=schema)


class RawStore:
    """The raw schema's tables on one warehouse engine."""

    def __init__(self, engine: sa.Engine, cfg: IngestConfig) -> None:
        self.engine = engine
        self.cfg = cfg
        self.md = sa.MetaData()
        self.batches, self.files, self.quarantine = ledger_tables(self.md, cfg.schema)
        self.feeds = {f: feed_table(self.md, cfg.schema, f, s) for f, s in cfg.feeds.items()}

    def create(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.schema.CreateSchema(self.cfg.schema, if_not_exists=True))
            self.md.create_all(conn)


def ingest(engine: sa.Engine, cfg: IngestConfig) -> IngestReport:
    """Load every new file under the landing folder; return what happened to each."""
    store = RawStore(engine, cfg)
    store.create()
    report = IngestReport()
    known = _known_files(store)
    for feed, spec in cfg.feeds.items():
        for path in _landed(cfg.landing_dir / feed, spec.pattern):
            stat = path.stat()
            if (str(path), stat.st_size, stat.st_mtime_ns) in known:
                continue  # seen before, unchanged: not even re-hashed
            report.files.append(_ingest_file(store, feed, spec, path))
    return report


def _landed(folder: Path, pattern: str) -> Iterator[Path]:
    if folder.is_dir():
        yield from sorted(p for p in folder.rglob(pattern) if p.is_file())


def _known_files(store: RawStore) -> set[tuple[str, int, int]]:
    f = store.files
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(f.c.source_file, f.c.size_bytes, f.c.mtime_ns)).all()
    return {(r[0], r[1], r[2]) for r in rows}


def checksum(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ingest_file(store: RawStore, feed: str, spec: FeedConfig, path: Path) -> FileOutcome:
    stat = path.stat()
    size, mtime = stat.st_size, stat.st_mtime_ns
    digest = checksum(path)
    now = utcnow()
    b = store.batches
    with store.engine.begin() as conn:
        dup = conn.execute(sa.select(b.c.batch_id).where(b.c.checksum == digest)).scalar()
        if dup is not None:
            _record_delivery(conn, store, path, size, mtime, digest, dup, "duplicate", now)
            log.info("ingest %s: same content as batch %s, skipped", path, dup)
            return FileOutcome(feed, path, "duplicate", dup, reason=f"same content as {dup}")
        seq = (conn.execute(sa.select(sa.func.max(b.c.load_seq))).scalar() or 0) + 1
        batch_id = batch_id_for(feed, seq)
        try:
            header = read_header(path, spec)
            if is_duckdb(conn):
                loaded, quarantined, read = _load_duckdb(
                    conn, store, feed, spec, path, batch_id, now
                )
            else:
                loaded, quarantined, read = _load_generic(
                    conn, store, feed, spec, path, header, batch_id, now
                )
            outcome = FileOutcome(feed, path, "loaded", batch_id, read, loaded, quarantined)
            status, reason = "pending", ""
            if read != loaded + quarantined:
                # Quoted fields spanning lines: counts are in records, not lines.
                reason = f"{read} lines held {loaded + quarantined} records"
        except BadFile as exc:
            read = _quarantine_whole(conn, store, feed, path, batch_id, str(exc))
            outcome = FileOutcome(feed, path, "quarantined", batch_id, read, 0, read, str(exc))
            status, reason = "quarantined", str(exc)
            log.warning("ingest %s: whole file quarantined: %s", path, exc)
        conn.execute(
            b.insert().values(
                batch_id=batch_id,
                feed=feed,
                source_file=str(path),
                checksum=digest,
                size_bytes=size,
                load_seq=seq,
                status=status,
                rows_read=outcome.rows_read,
                rows_loaded=outcome.rows_loaded,
                rows_quarantined=outcome.rows_quarantined,
                reason=reason or None,
                ingested_at=now,
            )
        )
        _record_delivery(conn, store, path, size, mtime, digest, batch_id, outcome.outcome, now)
    log.info(
        "ingest %s -> %s: read=%d loaded=%d quarantined=%d",
        path, batch_id, outcome.rows_read, outcome.rows_loaded, outcome.rows_quarantined,
    )
    return outcome


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


def read_header(path: Path, spec: FeedConfig) -> list[str]:
    """Check the file is text with the feed's header; raise BadFile saying why not."""
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if not head.strip():
        raise BadFile("empty file")
    if b"\x00" in head:
        raise BadFile("binary content (NUL bytes): not a CSV file")
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if len(head) == _SNIFF_BYTES and exc.start >= _SNIFF_BYTES - 4:
            text = head[: exc.start].decode("utf-8-sig")  # a character cut at the boundary
        else:
            raise BadFile(f"not UTF-8 text (byte {exc.start} of the header block)") from exc
    first = text.splitlines()[0] if text.splitlines() else ""
    header = next(csv.reader([first], delimiter=spec.delimiter), [])
    header = [h.strip() for h in header]
    if len(header) <= 1 < len(spec.columns):
        raise BadFile(
            f"header has 1 field with delimiter {spec.delimiter!r}: wrong delimiter or not a CSV"
        )
    missing = [c for c in spec.columns if c not in header]
    unexpected = [c for c in header if c not in spec.columns]
    if unexpected or missing:
        # Schema drift. Loading the known columns would silently drop the rest; the
        # file is kept whole in quarantine until the contract is changed or it is fixed.
        parts = []
        if missing:
            parts.append(f"missing columns: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected columns: {', '.join(unexpected)}")
        raise BadFile("schema drift: " + "; ".join(parts))
    if len(set(header)) != len(header):
        raise BadFile("duplicate column names in header")
    return header


def _load_duckdb(
    conn: sa.Connection, store: RawStore, feed: str, spec: FeedConfig, path: Path,
    batch_id: str, now: datetime,
) -> tuple[int, int, int]:
    """DuckDB fast path: its parallel CSV reader, with rejects kept, in the warehouse."""
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in _file_columns(path, spec)) + "}"
    schema = store.cfg.schema
    conn.exec_driver_sql("drop table if exists _ingest_stage")
    conn.exec_driver_sql("drop table if exists _ingest_rejects")
    conn.exec_driver_sql("drop table if exists _ingest_rejects_scan")
    # Column names are validated identifiers (config); the path and delimiter are bound.
    conn.execute(
        sa.text(
            "create temp table _ingest_stage as select *, row_number() over () as _ord "
            f"from read_csv(:path, header=true, columns={columns}, delim=:delim, "
            "quote='\"', escape='\"', strict_mode=true, auto_detect=false, "
            "null_padding=false, ignore_errors=true, store_rejects=true, "
            "rejects_table='_ingest_rejects', rejects_scan='_ingest_rejects_scan')"
        ),
        {"path": str(path), "delim": spec.delimiter},
    )
    # A rejected record's line and text, and how many physical lines it spans.
    rejects = conn.exec_driver_sql(
        "select line, string_agg(error_type || ': ' || error_message, '; ') as reason, "
        "any_value(csv_line) as csv_line from _ingest_rejects group by line order by line"
    ).all()
    read = _count_lines(path) - 1
    cols = ", ".join(f'"{c}"' for c in spec.columns)
    # Physical line of a loaded row: its ordinal + header + rejected lines before it.
    line_expr = "s._ord + 1"
    join = ""
    if rejects:
        conn.exec_driver_sql(
            "create temp table _ingest_reject_lines as select line::bigint as line, "
            "row_number() over (order by line) as n from _ingest_rejects group by line"
        )
        line_expr = "s._ord + 1 + coalesce(r.n, 0)"
        join = (
            " asof left join (select line - n - 1 as before, n from _ingest_reject_lines) r "
            "on s._ord > r.before"
        )
    conn.execute(
        sa.text(
            f'insert into "{schema}"."{feed}" ({cols}, _batch_id, _source_file, _line_number, '
            f"_ingested_at) select {', '.join(f's.{c}' for c in _quoted(spec.columns))}, "
            f":batch_id, :file, {line_expr}, :now from _ingest_stage s{join}"
        ),
        {"batch_id": batch_id, "file": str(path), "now": now},
    )
    loaded = conn.exec_driver_sql("select count(*) from _ingest_stage").scalar() or 0
    quarantined_lines = 0
    for line, reason, raw_line in rejects:
        text = str(raw_line or "")
        span = max(1, text.rstrip("\n").count("\n") + 1)
        quarantined_lines += span
        conn.execute(
            store.quarantine.insert().values(
                batch_id=batch_id, feed=feed, source_file=str(path), line_number=int(str(line)),
                reason=str(reason), raw_line=text,
            )
        )
    for t in ("_ingest_stage", "_ingest_rejects", "_ingest_rejects_scan", "_ingest_reject_lines"):
        conn.exec_driver_sql(f"drop table if exists {t}")
    return int(loaded), quarantined_lines, read


def _quoted(cols: Iterable[str]) -> list[str]:
    return [f'"{c}"' for c in cols]


def _file_columns(path: Path, spec: FeedConfig) -> list[str]:
    """Columns in the file's order (read_header has checked they are the feed's)."""
    return read_header(path, spec)


def _count_lines(path: Path) -> int:
    """Physical lines in the file (a last line without newline counts)."""
    n = 0
    last = b"\n"
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (0 if last == b"\n" else 1)


def _load_generic(
    conn: sa.Connection, store: RawStore, feed: str, spec: FeedConfig, path: Path,
    header: list[str], batch_id: str, now: datetime,
) -> tuple[int, int, int]:
    """Any SQLAlchemy warehouse: Python's csv reader and batched Core inserts."""
    table = store.feeds[feed]
    loaded = quarantined = read = 0
    rows: list[dict[str, object]] = []
    with path.open("r", encoding="utf-8-sig", errors="strict", newline="") as fh:
        lines = iter(fh.readline, "")
        next(lines)  # header, checked already
        line_no = 1
        for raw_line in lines:
            line_no += 1
            read += 1
            reason, values = _parse_line(raw_line, spec.delimiter, len(header))
            if reason:
                conn.execute(
                    store.quarantine.insert().values(
                        batch_id=batch_id, feed=feed, source_file=str(path),
                        line_number=line_no, reason=reason, raw_line=raw_line.rstrip("\r\n"),
                    )
                )
                quarantined += 1
                continue
            row: dict[str, object] = dict(zip(header, values, strict=True))
            row.update(_batch_id=batch_id, _source_file=str(path), _line_number=line_no,
                       _ingested_at=now)
            rows.append(row)
            if len(rows) >= _GENERIC_CHUNK:
                conn.execute(table.insert(), rows)
                loaded += len(rows)
                rows = []
    if rows:
        conn.execute(table.insert(), rows)
        loaded += len(rows)
    return loaded, quarantined, read


def _parse_line(line: str, delimiter: str, width: int) -> tuple[str, list[str]]:
    try:
        fields = next(csv.reader(io.StringIO(line), delimiter=delimiter, strict=True), [])
    except csv.Error as exc:
        return f"malformed CSV: {exc}", []
    if len(fields) != width:
        kind = "MISSING COLUMNS" if len(fields) < width else "TOO MANY COLUMNS"
        return f"{kind}: expected {width} fields, found {len(fields)}", []
    return "", fields


def _quarantine_whole(
    conn: sa.Connection, store: RawStore, feed: str, path: Path, batch_id: str, reason: str
) -> int:
    """Keep every line of an unreadable file in quarantine; return how many."""
    n = 0
    chunk: list[dict[str, object]] = []
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            chunk.append(
                dict(batch_id=batch_id, feed=feed, source_file=str(path), line_number=n,
                     reason=reason, raw_line=raw.decode("utf-8", "backslashreplace").rstrip("\r\n"))
            )
            if len(chunk) >= _GENERIC_CHUNK:
                conn.execute(store.quarantine.insert(), chunk)
                chunk = []
    if chunk:
        conn.execute(store.quarantine.insert(), chunk)
    return n
