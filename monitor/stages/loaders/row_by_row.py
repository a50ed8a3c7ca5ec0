"""The row-by-row loader: Python's csv reader and batched Core inserts, for any
SQLAlchemy warehouse and as the fallback of a faster loader.

Slow but forgiving: any line ending reads, and a bad byte or a broken record costs only
its own row.
"""

from __future__ import annotations

import sqlalchemy as sa

from monitor.core.columns import AUDIT_COLUMNS
from monitor.stages.landing import read_header
from monitor.stages.loaders.base import INSERT_CHUNK, Delivery, LoadCounts
from monitor.stages.loaders.records import records


def load(conn: sa.Connection, d: Delivery, batch_id: str) -> LoadCounts:
    """Python's csv reader line by line in the file's header order; a record that is no
    good goes to the quarantine with its reason, the others in chunks to the feed table."""
    header = read_header(d.path, d.spec)
    store, feed, path, now = d.store, d.feed, d.path, d.ingested_at
    table = store.feeds[feed]
    loaded = quarantined = 0
    rows: list[dict[str, object]] = []
    for line_no, reason, values, raw in records(path, d.spec.delimiter, len(header)):
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
        if len(rows) >= INSERT_CHUNK:
            conn.execute(table.insert(), rows)
            loaded += len(rows)
            rows = []
    if rows:
        conn.execute(table.insert(), rows)
        loaded += len(rows)
    return LoadCounts(loaded, quarantined, loaded + quarantined)
