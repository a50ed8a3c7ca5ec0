"""Ingest landed CSV files into raw tables, exactly once, losing nothing.

Each file is one batch, known by its checksum in the ledger; every data line lands in
``<schema>.<feed>`` or in the quarantine with a reason. A file, its rows and its ledger
rows commit in one transaction, so a crash leaves all of it or none.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import hashlib
import io
import itertools
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import AUDIT_COLUMNS
from monitor.core.config import FeedConfig, IngestConfig
from monitor.store.batches import ledger_tables
from monitor.store.state import utcnow
from monitor.warehouse.connection import is_duckdb

log = logging.getLogger(__name__)

_SNIFF_BYTES = 65536
_GENERIC_CHUNK = 5000
_MAX_SPAN = 100  # physical lines one quoted record may span in the row-by-row loader
_GZIP_MAGIC = b"\x1f\x8b"


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


class BadFile(Exception):
    """The whole file is unreadable as this feed (binary, wrong delimiter, columns)."""


class StillWriting(Exception):
    """The file changed while it was read: a delivery in progress, retried next cycle."""




def feed_table(md: sa.MetaData, schema: str, feed: str, spec: FeedConfig) -> sa.Table:
    cols: list[sa.Column[Any]] = [sa.Column(c, sa.String) for c in spec.columns]
    batch, source_file, line_number, ingested_at = AUDIT_COLUMNS
    cols += [
        sa.Column(batch, sa.String, nullable=False),
        sa.Column(source_file, sa.String, nullable=False),
        sa.Column(line_number, sa.BigInteger),
        sa.Column(ingested_at, sa.DateTime, nullable=False),
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
    """Load every new file under the landing folder; return what happened to each.

    A problem with one file (any parse or read error) never stops the cycle: the file
    ends loaded, quarantined or skipped with a reason, and the next file is ingested."""
    store = RawStore(engine, cfg)
    store.create()
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
            skipped.append(Skipped(entry, _stray_reason(entry)))
    for feed, spec in cfg.feeds.items():
        for path, reason in _landed(root, root / feed, spec.pattern):
            if reason:
                skipped.append(Skipped(path, reason, feed))
            else:
                yield feed, spec, path


def _stray_reason(entry: Path) -> str:
    if entry.is_symlink():
        return "symlink at the top of the landing zone: not followed"
    if entry.is_dir():
        return "unknown feed folder (not in [ingest.feeds])"
    return "file outside any feed folder"


def _landed(root: Path, folder: Path, pattern: str) -> Iterator[tuple[Path, str]]:
    """Files under a feed folder, each with "" (ingest it) or why it is left alone.

    Symlinked folders are not walked (no loops, no escape); a symlinked file is followed
    only if it resolves to a regular file inside the landing zone."""
    if not folder.is_dir() or folder.is_symlink():
        return
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            if d.startswith(".") or (here / d).is_symlink():
                dirnames.remove(d)
                if not d.startswith("."):
                    found.append((here / d, "symlinked folder: not followed"))
        found += [(here / name, _file_reason(root, here / name, pattern)) for name in filenames]
    yield from sorted(found)


def _file_reason(root: Path, path: Path, pattern: str) -> str:
    """Why a file in a feed folder is not ingested, or "" to ingest it."""
    name = path.name
    if name.startswith("."):
        return "hidden file (an upload in progress?)"
    if not (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name, pattern + ".gz")):
        return f"name does not match the feed's pattern {pattern!r}"
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root.resolve()):
            return "symlink leads outside the landing zone: refused"
        if not target.is_file():
            return "symlink to a missing or non-regular file"
    elif not path.is_file():
        return "not a regular file"
    return ""


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


Loader = Callable[[sa.Connection, str], tuple[int, int, int]]


def _ingest_file(
    store: RawStore, feed: str, spec: FeedConfig, path: Path, seen: os.stat_result
) -> FileOutcome:
    """One file in one transaction: DuckDB's reader, else row by row, else quarantined.

    A reader that fails on this file's bytes rolls its transaction back and the next one
    tries; only when all fail is the file kept whole in quarantine with the error."""
    digest = checksum(path)
    now = utcnow()
    errors: list[str] = []
    for name, loader in _loaders(store, feed, spec, path, now):
        try:
            with store.engine.begin() as conn:
                outcome = _commit_batch(conn, store, feed, path, seen, digest, now, loader,
                                        "; ".join(errors))
            return _committed(path, outcome)
        except (BadFile, StillWriting):
            raise
        except Exception as exc:  # any reader error: try the next reader
            msg = " ".join(str(exc).split())[:300]
            log.warning("ingest %s: %s reader failed: %s", path, name, msg)
            errors.append(f"{name} reader failed: {msg}")
    with store.engine.begin() as conn:  # no reader could: keep the file whole, say why
        outcome = _commit_batch(conn, store, feed, path, seen, digest, now,
                                _refuse("; ".join(errors)), "")
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
    def load(conn: sa.Connection, batch_id: str) -> tuple[int, int, int]:
        raise BadFile(reason)
    return load


def _loaders(
    store: RawStore, feed: str, spec: FeedConfig, path: Path, now: datetime
) -> list[tuple[str, Loader]]:
    """Readers to try in order: DuckDB's fast one, then Python's row by row."""
    out: list[tuple[str, Loader]] = []
    if is_duckdb(store.engine):
        out.append(("DuckDB", lambda c, b: _load_duckdb(c, store, feed, spec, path, b, now)))
    out.append(("row-by-row", lambda c, b: _load_generic(
        c, store, feed, spec, path, read_header(path, spec), b, now)))
    return out


def _commit_batch(
    conn: sa.Connection, store: RawStore, feed: str, path: Path, seen: os.stat_result,
    digest: str, now: datetime, loader: Loader, fallback: str,
) -> FileOutcome:
    """Load (or quarantine) one file and write its ledger rows, in ``conn``'s transaction."""
    size, mtime = seen.st_size, seen.st_mtime_ns
    b = store.batches
    dup = conn.execute(sa.select(b.c.batch_id).where(b.c.checksum == digest)).scalar()
    if dup is not None:
        _record_delivery(conn, store, path, size, mtime, digest, dup, "duplicate", now)
        log.info("ingest %s: same content as batch %s, skipped", path, dup)
        return FileOutcome(feed, path, "duplicate", dup, reason=f"same content as {dup}")
    seq = (conn.execute(sa.select(sa.func.max(b.c.load_seq))).scalar() or 0) + 1
    batch_id = batch_id_for(feed, seq)
    try:
        loaded, quarantined, read = loader(conn, batch_id)
        outcome = FileOutcome(feed, path, "loaded", batch_id, read, loaded, quarantined,
                              fallback)
        status = "pending"
    except BadFile as exc:
        reason = "; ".join(x for x in (fallback, str(exc)) if x)
        read = _quarantine_whole(conn, store, feed, path, batch_id, reason)
        outcome = FileOutcome(feed, path, "quarantined", batch_id, read, 0, read, reason)
        status = "quarantined"
        log.warning("ingest %s: whole file quarantined: %s", path, reason)
    _check_settled(path, seen)
    conn.execute(
        b.insert().values(
            batch_id=batch_id, feed=feed, source_file=str(path), checksum=digest,
            size_bytes=size, load_seq=seq, status=status, rows_read=outcome.rows_read,
            rows_loaded=outcome.rows_loaded, rows_quarantined=outcome.rows_quarantined,
            reason=outcome.reason or None, ingested_at=now,
        )
    )
    _record_delivery(conn, store, path, size, mtime, digest, batch_id, outcome.outcome, now)
    return outcome


def _check_settled(path: Path, seen: os.stat_result) -> None:
    """Second look at the file, before commit: if it grew or was touched since the first,
    a writer is still at it; loading now would keep half a file. Roll back, retry later."""
    now = path.stat()
    if (now.st_size, now.st_mtime_ns) != (seen.st_size, seen.st_mtime_ns):
        raise StillWriting(
            f"still being written (size {seen.st_size} -> {now.st_size} bytes while read): "
            "skipped this cycle"
        )


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


def _open_bytes(path: Path) -> io.BufferedIOBase:
    """The file's bytes, gunzipped when it is gzip (``.csv.gz`` deliveries load too)."""
    fh = path.open("rb")
    if fh.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def read_header(path: Path, spec: FeedConfig) -> list[str]:
    """Check the file is text with the feed's header; raise BadFile saying why not.

    Only the header line must be UTF-8: a bad byte further down costs its row (it is
    quarantined by the loader), not the whole delivery."""
    try:
        with _open_bytes(path) as fh:
            head = fh.read(_SNIFF_BYTES)
    except (OSError, EOFError) as exc:
        raise BadFile(f"unreadable compressed file: {exc}") from exc
    if not head.strip():
        raise BadFile("empty file" if not head else "no header: blank file")
    if b"\x00" in head:
        raise BadFile("binary content (NUL bytes): not a CSV file")
    first_line = _split_lines(head)[0]
    try:
        first = first_line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadFile(f"header line is not UTF-8 text (byte {exc.start})") from exc
    header = next(csv.reader([first], delimiter=spec.delimiter), [])
    header = [h.strip() for h in header]
    if len(header) <= 1 < len(spec.columns):
        raise BadFile(
            f"header has 1 field with delimiter {spec.delimiter!r}: wrong delimiter or not a CSV"
        )
    if len(set(header)) != len(header):
        dups = sorted({h for h in header if header.count(h) > 1})
        raise BadFile(f"duplicate column names in header: {', '.join(dups)}")
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
    return header


def _split_lines(data: bytes) -> list[bytes]:
    """Lines of ``data`` ending in LF, CRLF or a lone CR (the terminators removed)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def _load_duckdb(
    conn: sa.Connection, store: RawStore, feed: str, spec: FeedConfig, path: Path,
    batch_id: str, now: datetime,
) -> tuple[int, int, int]:
    """DuckDB fast path: its parallel CSV reader, with rejects kept, in the warehouse.

    Returns (loaded, quarantined, read) in records; a quoted record may span lines."""
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in _file_columns(path, spec)) + "}"
    schema = store.cfg.schema
    for t in _STAGE_TABLES:
        conn.exec_driver_sql(f"drop table if exists {t}")
    # Column names are validated identifiers (config); the path and delimiter are bound.
    # The path is escaped for DuckDB's glob matching ([, *, ? are legal in file names).
    conn.execute(
        sa.text(
            "create temp table _ingest_stage as select *, row_number() over () as _ord "
            f"from read_csv(:path, header=true, columns={columns}, delim=:delim, "
            "quote='\"', escape='\"', strict_mode=true, auto_detect=false, "
            "null_padding=false, ignore_errors=true, store_rejects=true, "
            f"compression='{'gzip' if _is_gzip(path) else 'none'}', "
            "rejects_table='_ingest_rejects', rejects_scan='_ingest_rejects_scan')"
        ),
        {"path": _glob_escape(str(path)), "delim": spec.delimiter},
    )
    # A rejected record's line (DuckDB's count: records, not lines), byte offset and text.
    rejects = conn.exec_driver_sql(
        "select line, min(line_byte_position) as pos, "
        "string_agg(error_type || ': ' || error_message, '; ') as reason, "
        "any_value(csv_line) as csv_line from _ingest_rejects group by line order by line"
    ).all()
    line_of: dict[int, int] = {int(r[0]): int(r[0]) for r in rejects}
    loaded = int(conn.exec_driver_sql("select count(*) from _ingest_stage").scalar() or 0)
    data_lines = _count_lines(path) - 1
    if data_lines == loaded + len(rejects):
        line_expr, join = _single_line_numbers(conn, bool(rejects))
    else:  # some record spans lines: map each loaded record to its first line
        line_expr, join, line_of = _spanning_line_numbers(
            conn, path, {int(r[1]): int(r[0]) for r in rejects}, loaded)
    cols = ", ".join(f'"{c}"' for c in spec.columns)
    conn.execute(
        sa.text(
            f'insert into "{schema}"."{feed}" ({cols}, {", ".join(AUDIT_COLUMNS)}) '
            f"select {', '.join(f's.{c}' for c in _quoted(spec.columns))}, "
            f":batch_id, :file, {line_expr}, :now from _ingest_stage s{join}"
        ),
        {"batch_id": batch_id, "file": str(path), "now": now},
    )
    for line, _, reason, raw_line in rejects:
        conn.execute(
            store.quarantine.insert().values(
                batch_id=batch_id, feed=feed, source_file=str(path),
                line_number=line_of[int(str(line))], reason=str(reason),
                raw_line=str(raw_line or ""),
            )
        )
    for t in _STAGE_TABLES:
        conn.exec_driver_sql(f"drop table if exists {t}")
    return loaded, len(rejects), loaded + len(rejects)


_STAGE_TABLES = ("_ingest_stage", "_ingest_rejects", "_ingest_rejects_scan",
                 "_ingest_reject_lines", "_ingest_record_lines")


def _glob_escape(path: str) -> str:
    """DuckDB reads a path as a glob; bracket the special characters to match literally."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in path)


def _single_line_numbers(conn: sa.Connection, rejects: bool) -> tuple[str, str]:
    """Every record is one line: a row's line is its ordinal + header + rejects before it."""
    if not rejects:
        return "s._ord + 1", ""
    conn.exec_driver_sql(
        "create temp table _ingest_reject_lines as select line::bigint as line, "
        "row_number() over (order by line) as n from _ingest_rejects group by line"
    )
    join = (
        " asof left join (select line - n - 1 as before, n from _ingest_reject_lines) r "
        "on s._ord > r.before"
    )
    return "s._ord + 1 + coalesce(r.n, 0)", join


def _spanning_line_numbers(
    conn: sa.Connection, path: Path, rejected: dict[int, int], loaded: int
) -> tuple[str, str, dict[int, int]]:
    """Physical first lines of the records when quoted fields hold line breaks.

    ``rejected`` maps each reject's byte offset to DuckDB's line for it, which counts
    records, not lines. Records are cut where the count of quote characters is even
    (RFC 4180); those not rejected are the loaded ones, in order. Returns the line
    expression, its join, and DuckDB's reject lines mapped to physical lines. If the cut
    disagrees with DuckDB's, the row-by-row reader takes over rather than store wrong
    line numbers."""
    # Kept only where a row's offset (line - ordinal) changes: one row per multi-line
    # record or reject, not per loaded row, so a huge file with one such record is cheap.
    steps: list[dict[str, int]] = []
    reject_lines: dict[int, int] = {}
    ordinal = 0
    for line, pos in _record_starts(path):
        if pos in rejected:
            reject_lines[rejected[pos]] = line
            continue
        ordinal += 1
        if not steps or line - ordinal != steps[-1]["d"]:
            steps.append({"o": ordinal, "d": line - ordinal})
    if ordinal != loaded or len(reject_lines) != len(rejected):
        raise RuntimeError(
            f"line numbers of multi-line records unclear ({ordinal} record starts vs "
            f"{loaded} loaded, {len(reject_lines)} of {len(rejected)} rejects placed)")
    conn.exec_driver_sql("create temp table _ingest_record_lines (ord bigint, delta bigint)")
    for k in range(0, len(steps), _GENERIC_CHUNK):
        conn.execute(sa.text("insert into _ingest_record_lines values (:o, :d)"),
                     steps[k:k + _GENERIC_CHUNK])
    return ("s._ord + r.delta", " asof left join _ingest_record_lines r on s._ord >= r.ord",
            reject_lines)


def _record_starts(path: Path) -> Iterator[tuple[int, int]]:
    """(1-based line, DuckDB's ``line_byte_position`` for it) where each data record
    starts; a record ends at an even count of quote characters. DuckDB puts that
    position 2 bytes past the start of the previous line's terminator (offset + 1 after
    LF, the offset after CRLF); should that change, the caller's cross-check fails and
    the row-by-row reader is used instead."""
    open_quotes = False
    prev_end = 0
    for n, (offset, line) in enumerate(_raw_lines(path), start=1):
        if n > 1 and not open_quotes:
            yield n, prev_end + 2
        if line.count(b'"') % 2:
            open_quotes = not open_quotes
        prev_end = offset + len(line)


def _quoted(cols: Iterable[str]) -> list[str]:
    return [f'"{c}"' for c in cols]


def _file_columns(path: Path, spec: FeedConfig) -> list[str]:
    """Columns in the file's order (read_header has checked they are the feed's)."""
    return read_header(path, spec)


def _count_lines(path: Path) -> int:
    """Physical lines in the file, ended by LF, CRLF or a lone CR (a last line without
    terminator counts), so CR-only and mixed files count like their LF twins."""
    n = 0
    last = b"\n"
    with _open_bytes(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            n += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            if last == b"\r" and chunk[:1] == b"\n":
                n -= 1  # a CRLF cut between two chunks
            last = chunk[-1:]
    return n + (0 if last in (b"\n", b"\r") else 1)


def _physical_lines(path: Path) -> Iterator[bytes]:
    """The file's lines as bytes, split at LF, CRLF or a lone CR, terminators removed."""
    return (line for _, line in _raw_lines(path))


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line without its terminator) for each line of the file."""
    offset, rest = 0, b""
    with _open_bytes(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            data = rest + chunk
            end = len(data) - 1 if data.endswith(b"\r") else len(data)  # CR, LF next?
            pos = 0
            for m in _LINE_BREAK.finditer(data, 0, end):
                yield offset + pos, data[pos:m.start()]
                pos = m.end()
            offset += pos
            rest = data[pos:]
    if rest:
        yield offset, rest[:-1] if rest.endswith(b"\r") else rest


def _load_generic(
    conn: sa.Connection, store: RawStore, feed: str, spec: FeedConfig, path: Path,
    header: list[str], batch_id: str, now: datetime,
) -> tuple[int, int, int]:
    """Any SQLAlchemy warehouse, and DuckDB's fallback: Python's csv reader line by line
    (any line ending, bad bytes cost only their row) and batched Core inserts."""
    table = store.feeds[feed]
    loaded = quarantined = 0
    rows: list[dict[str, object]] = []
    for line_no, reason, values, raw in _records(path, spec.delimiter, len(header)):
        if reason:
            conn.execute(
                store.quarantine.insert().values(
                    batch_id=batch_id, feed=feed, source_file=str(path),
                    line_number=line_no, reason=reason, raw_line=raw,
                )
            )
            quarantined += 1
            continue
        row: dict[str, object] = dict(zip(header, values, strict=True))
        row.update(zip(AUDIT_COLUMNS, (batch_id, str(path), line_no, now), strict=True))
        rows.append(row)
        if len(rows) >= _GENERIC_CHUNK:
            conn.execute(table.insert(), rows)
            loaded += len(rows)
            rows = []
    if rows:
        conn.execute(table.insert(), rows)
        loaded += len(rows)
    return loaded, quarantined, loaded + quarantined


Record = tuple[int, str, list[str], str]  # first line, reason ("" if good), fields, text


def _records(path: Path, delimiter: str, width: int) -> Iterator[Record]:
    """Data records with their first line. An open quote joins the next lines (up to
    ``_MAX_SPAN``); if the joined text is no good record, only its first line is bad and
    the lines after it are read again one by one."""
    source = itertools.islice(enumerate(_physical_lines(path), start=1), 1, None)
    pending: deque[tuple[int, bytes]] = deque()

    def next_line() -> tuple[int, bytes] | None:
        return pending.popleft() if pending else next(source, None)

    while (item := next_line()) is not None:
        no, raw = item
        text, bad = _decode(raw)
        if bad:
            yield no, bad, [], text
            continue
        if text.count('"') % 2:
            record, taken = _join_open_quote(no, text, next_line, delimiter, width)
            if record is not None:
                yield record
                continue
            pending.extendleft(reversed(taken))
        reason, values = _parse_line(text, delimiter, width)
        yield no, reason, values, text


def _join_open_quote(
    no: int, text: str, next_line: Callable[[], tuple[int, bytes] | None], delimiter: str,
    width: int,
) -> tuple[Record | None, list[tuple[int, bytes]]]:
    """Join following lines to close an open quote: the record (or None) and the lines
    taken, to be read again when no good record came of them."""
    taken: list[tuple[int, bytes]] = []
    parts = [text]
    while len(taken) < _MAX_SPAN and (nxt := next_line()) is not None:
        taken.append(nxt)
        part, bad = _decode(nxt[1])
        if bad:
            break
        parts.append(part)
        if part.count('"') % 2:
            whole = "\n".join(parts)
            reason, values = _parse_line(whole, delimiter, width)
            return ((no, "", values, whole) if not reason else None), ([] if not reason
                                                                        else taken)
    return None, taken


def _decode(raw: bytes) -> tuple[str, str]:
    """A line as text, and why not if it is not UTF-8 (the text then shows the bytes)."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", "backslashreplace")
        return text, f"INVALID ENCODING: not UTF-8 at byte {exc.start} (latin-1?)"


def _parse_line(line: str, delimiter: str, width: int) -> tuple[str, list[str]]:
    try:
        fields = next(csv.reader(io.StringIO(line, newline=""), delimiter=delimiter,
                                 strict=True), [])
    except csv.Error as exc:
        return f"malformed CSV: {exc}", []
    if len(fields) != width:
        kind = "MISSING COLUMNS" if len(fields) < width else "TOO MANY COLUMNS"
        return f"{kind}: expected {width} fields, found {len(fields)}", []
    return "", fields


def _quarantine_whole(
    conn: sa.Connection, store: RawStore, feed: str, path: Path, batch_id: str, reason: str
) -> int:
    """Keep every line of an unreadable file in quarantine; return how many.

    A gzip stream that breaks off keeps the lines before the break, and one more row
    saying where it broke, so nothing is silently dropped."""
    n = 0
    chunk: list[dict[str, object]] = []

    def add(line_no: int, why: str, raw: bytes) -> None:
        chunk.append(dict(batch_id=batch_id, feed=feed, source_file=str(path),
                          line_number=line_no, reason=why,
                          raw_line=raw.decode("utf-8", "backslashreplace")))
        if len(chunk) >= _GENERIC_CHUNK:
            conn.execute(store.quarantine.insert(), chunk)
            chunk.clear()

    try:
        for n, raw in enumerate(_physical_lines(path), start=1):
            add(n, reason, raw)
    except (OSError, EOFError) as exc:
        n += 1
        add(n, f"{reason}; unreadable from here: {exc}", b"")
    if chunk:
        conn.execute(store.quarantine.insert(), chunk)
    return n
