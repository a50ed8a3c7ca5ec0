"""The row-by-row loader: Python's csv reader and batched Core inserts, for any
SQLAlchemy warehouse and as the fallback of a faster loader.

Slow but forgiving: any line ending reads, and a bad byte or a broken record costs only
its own row.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlalchemy as sa

from monitor.core.columns import AUDIT_COLUMNS
from monitor.stages.landing import physical_lines, read_header
from monitor.stages.loaders.base import INSERT_CHUNK, Delivery, LoadCounts

_MAX_SPAN = 100  # physical lines one quoted record may span


def load(conn: sa.Connection, d: Delivery, batch_id: str) -> LoadCounts:
    """Python's csv reader line by line in the file's header order; a record that is no
    good goes to the quarantine with its reason, the others in chunks to the feed table."""
    header = read_header(d.path, d.spec)
    store, feed, path, now = d.store, d.feed, d.path, d.ingested_at
    table = store.feeds[feed]
    loaded = quarantined = 0
    rows: list[dict[str, object]] = []
    for line_no, reason, values, raw in _records(path, d.spec.delimiter, len(header)):
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


Record = tuple[int, str, list[str], str]  # first line, reason ("" if good), fields, text


def _records(path: Path, delimiter: str, width: int) -> Iterator[Record]:
    """Data records with their first line. An open quote joins the next lines (up to
    ``_MAX_SPAN``); if the joined text is no good record, only its first line is bad and
    the lines after it are read again one by one."""
    source = itertools.islice(enumerate(physical_lines(path), start=1), 1, None)
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
