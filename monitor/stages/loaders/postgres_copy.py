"""The PostgreSQL loader: records parsed in Python by the row-by-row rules (so a row is
quarantined for the same reason either way), the good ones streamed to
``COPY ... FROM STDIN`` a chunk at a time, so memory stays bounded by the chunk, never
the file.

Values load as text with the audit columns; an empty field loads as NULL, as DuckDB's
reader loads it. PostgreSQL text cannot hold a NUL character: such a record is
quarantined here with that reason instead of failing the whole COPY.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import AUDIT_COLUMNS
from monitor.stages.landing import read_header
from monitor.stages.loaders.base import INSERT_CHUNK, Delivery, LoadCounts
from monitor.stages.loaders.records import plain, records
from monitor.warehouse.connection import backend_of
from monitor.warehouse.postgres import copy_csv

COPY_ROWS = 20000  # rows per COPY statement
COPY_BYTES = 8 << 20  # or fewer, when the rows are wide
NUL_REASON = "NUL character: PostgreSQL text cannot hold it"


def load(conn: sa.Connection, d: Delivery, batch_id: str) -> LoadCounts:
    """Good records by COPY in chunks, bad ones to the quarantine with their reason."""
    header = read_header(d.path, d.spec)
    quote = conn.dialect.identifier_preparer.quote
    target = f"{quote(d.store.cfg.schema)}.{quote(d.feed)}"
    columns = [quote(c) for c in [*header, *AUDIT_COLUMNS]]
    force_null = f"force_null ({', '.join(quote(c) for c in header)})"
    storable = backend_of(conn).storable_text
    source, now = str(d.path), d.ingested_at.isoformat(sep=" ")
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    # A comma-separated line without quotes is already a CSV record COPY reads as the
    # reader split it (an empty field is NULL either way): it goes as it is, only the
    # audit fields appended, quoted once here.
    as_is = d.spec.delimiter == ","
    batch_source, ingested = _csv_record(batch_id, source), _csv_record(now)
    bad: list[dict[str, Any]] = []
    loaded = quarantined = in_buf = 0

    def flush_rows() -> None:
        nonlocal in_buf
        if in_buf:
            buf.seek(0)
            copy_csv(conn, target, columns, buf, force_null)
            buf.seek(0)
            buf.truncate()
            in_buf = 0

    def flush_bad() -> None:
        if bad:
            conn.execute(d.store.quarantine.insert(), bad)
            bad.clear()

    for line_no, reason, values, raw in records(d.path, d.spec.delimiter, len(header)):
        if not reason and "\x00" in raw:  # in a field: a delimiter or quote is not NUL
            reason = NUL_REASON
        if reason:
            bad.append(dict(batch_id=batch_id, feed=d.feed, source_file=source,
                            line_number=line_no, reason=reason,
                            raw_line=storable(raw)))
            quarantined += 1
            if len(bad) >= INSERT_CHUNK:
                flush_bad()
            continue
        if as_is and plain(raw):
            buf.write(f"{raw},{batch_source},{line_no},{ingested}\n")
        else:
            writer.writerow([*values, batch_id, source, line_no, now])
        loaded += 1
        in_buf += 1
        if in_buf >= COPY_ROWS or buf.tell() >= COPY_BYTES:
            flush_rows()
    flush_rows()
    flush_bad()
    return LoadCounts(loaded, quarantined, loaded + quarantined)


def _csv_record(*values: str) -> str:
    """``values`` as one line of quoted CSV fields, without the line break."""
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="").writerow(values)
    return out.getvalue()
