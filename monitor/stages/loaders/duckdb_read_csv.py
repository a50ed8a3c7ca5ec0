"""The DuckDB loader: DuckDB's parallel CSV reader, with the rejects kept, in one
insert into the feed table, each row with its physical line.

The only place ingest speaks DuckDB's SQL; what it cannot read the row-by-row loader
reads next.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

from monitor.core.columns import AUDIT_COLUMNS, BATCH_COLUMN
from monitor.core.config import FeedConfig
from monitor.stages.landing import count_lines, is_gzip, raw_lines, read_header
from monitor.stages.loaders.base import INSERT_CHUNK, Delivery, LoadCounts


def load(conn: sa.Connection, d: Delivery, batch_id: str) -> LoadCounts:
    """DuckDB fast path: its parallel CSV reader, with rejects kept, in the warehouse.

    The reader's rows go straight into the feed table: no temp stage table, so the
    day's rows are written once rather than staged (in memory, spilling past DuckDB's
    memory_limit) and copied. They are committed on their own, before the rest of the
    batch (the caller's connection commits as it goes). Each is then numbered by its
    place in the file (line = ordinal + 1, the header being line 1; ``_number_rows``).
    Where a record was rejected or spans lines, the rows after it are renumbered by one
    UPDATE of this file's rows. Counts are in records; a quoted record may span lines."""
    store, feed, spec, path, now = d.store, d.feed, d.spec, d.path, d.ingested_at
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in _file_columns(path, spec)) + "}"
    target = f'"{store.cfg.schema}"."{feed}"'
    for t in _STAGE_TABLES:
        conn.exec_driver_sql(f"drop table if exists {t}")
    # Column names are validated identifiers (config); the path and delimiter are bound.
    # The path is escaped for DuckDB's glob matching ([, *, ? are legal in file names).
    cols = ", ".join(_quoted(spec.columns))
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Lines are counted beside DuckDB's reader, which releases the GIL while it runs.
        lines = pool.submit(count_lines, path)
        inserted = conn.execute(
            sa.text(
                f"insert into {target} ({cols}, {', '.join(AUDIT_COLUMNS)}) "
                f"select {cols}, :batch_id, :file, null, :now "
                f"from read_csv(:path, header=true, columns={columns}, delim=:delim, "
                "quote='\"', escape='\"', strict_mode=true, auto_detect=false, "
                "null_padding=false, ignore_errors=true, store_rejects=true, "
                f"compression='{'gzip' if is_gzip(path) else 'none'}', "
                "rejects_table='_ingest_rejects', rejects_scan='_ingest_rejects_scan')"
            ),
            {"path": _glob_escape(str(path)), "delim": spec.delimiter, "batch_id": batch_id,
             "file": str(path), "now": now},
        )
    loaded = int(inserted.rowcount)
    # The rows' own commit: DuckDB wrote them straight into the file as row groups, and
    # numbering them in the same transaction would have the commit log every row to the
    # WAL again (README, "Where a 20M day goes"). Until the batch's ledger row commits
    # they belong to no ledger batch: invisible, deleted by ingest if this load fails,
    # and swept by the next ingest if the process dies first (DuckDBBackend).
    conn.commit()
    _number_rows(conn, target, batch_id, str(path), loaded)
    # A rejected record's line (DuckDB's count: records, not lines), byte offset and text.
    rejects = conn.exec_driver_sql(
        "select line, min(line_byte_position) as pos, "
        "string_agg(error_type || ': ' || error_message, '; ') as reason, "
        "any_value(csv_line) as csv_line from _ingest_rejects group by line order by line"
    ).all()
    line_of: dict[int, int] = {int(r[0]): int(r[0]) for r in rejects}
    data_lines = lines.result() - 1
    if data_lines == loaded + len(rejects):
        steps = _single_line_steps([int(r[0]) for r in rejects])
    else:  # some record spans lines: map each loaded record to its first line
        steps, line_of = _spanning_line_steps(
            path, {int(r[1]): int(r[0]) for r in rejects}, loaded)
    _renumber(conn, target, batch_id, str(path), steps)
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
    return LoadCounts(loaded, len(rejects), loaded + len(rejects))


_STAGE_TABLES = ("_ingest_rejects", "_ingest_rejects_scan", "_ingest_line_steps")

# This file's rows in the feed table (binds :batch_id and :file)
_FILE_ROWS = f"{BATCH_COLUMN} = :batch_id and _source_file = :file"


def _glob_escape(path: str) -> str:
    """DuckDB reads a path as a glob; bracket the special characters to match literally."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in path)


def _single_line_steps(reject_lines: list[int]) -> list[tuple[int, int]]:
    """Every record is one line: from the row after the k-th reject on (ordinal above
    its line - k - 1), a row's line is its ordinal + 1 (the header) + k. As (first
    ordinal, line - ordinal) pairs, ascending."""
    return [(line - k, 1 + k) for k, line in enumerate(sorted(reject_lines), start=1)]


def _spanning_line_steps(
    path: Path, rejected: dict[int, int], loaded: int
) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """Physical first lines of the records when quoted fields hold line breaks.

    ``rejected`` maps each reject's byte offset to DuckDB's line for it, which counts
    records, not lines. Records are cut where the count of quote characters is even
    (RFC 4180); those not rejected are the loaded ones, in order. Returns the (first
    ordinal, line - ordinal) pairs where that difference changes, and DuckDB's reject
    lines mapped to physical lines. If the cut disagrees with DuckDB's, the row-by-row
    reader takes over rather than store wrong line numbers."""
    # Kept only where a row's offset (line - ordinal) changes: one pair per multi-line
    # record or reject, not per loaded row, so a huge file with one such record is cheap.
    steps: list[tuple[int, int]] = []
    reject_lines: dict[int, int] = {}
    ordinal = 0
    for line, pos in _record_starts(path):
        if pos in rejected:
            reject_lines[rejected[pos]] = line
            continue
        ordinal += 1
        if not steps or line - ordinal != steps[-1][1]:
            steps.append((ordinal, line - ordinal))
    if ordinal != loaded or len(reject_lines) != len(rejected):
        raise RuntimeError(
            f"line numbers of multi-line records unclear ({ordinal} record starts vs "
            f"{loaded} loaded, {len(reject_lines)} of {len(rejected)} rejects placed)")
    return steps, reject_lines


def _number_rows(conn: sa.Connection, target: str, batch_id: str, source_file: str,
                 loaded: int) -> None:
    """Set this file's rows' ``_line_number`` to ordinal + 1, the ordinal being the
    row's place in the file.

    The insert kept the file's order (DuckDB preserves insertion order for a select
    from one table function), so a row's ordinal is its rank by ``rowid``. Numbering in
    the insert (``row_number() over ()``) would hold the parallel CSV reader to one
    thread (README, "Where a 20M day goes"); this UPDATE runs after it. The rowids of
    one insert are consecutive, so the rank is ``rowid`` less the first one; should they
    not be, a window over ``rowid`` ranks them."""
    params = {"batch_id": batch_id, "file": source_file}
    first, last, n = (int(v or 0) for v in conn.execute(
        sa.text(f"select min(rowid), max(rowid), count(*) from {target} where {_FILE_ROWS}"),
        params).one())
    if n != loaded:
        raise RuntimeError(f"{n} rows of this file stored, {loaded} inserted")
    if not n:
        return
    if last - first + 1 == n:
        conn.execute(sa.text(f"update {target} set _line_number = rowid - :first + 2 "
                             f"where {_FILE_ROWS}"), {**params, "first": first})
        return
    conn.execute(sa.text(
        f"update {target} as t set _line_number = o.ordinal + 1 from ("
        f"select rowid as row_id, row_number() over (order by rowid) as ordinal "
        f"from {target} where {_FILE_ROWS}) as o where t.rowid = o.row_id"), params)


def _renumber(conn: sa.Connection, target: str, batch_id: str, source_file: str,
              steps: list[tuple[int, int]]) -> None:
    """Give this file's rows their physical lines: rows were stored at ordinal + 1, and
    from each step's first ordinal up to the next step's, the line is ordinal + its
    difference. Ranges where the difference is 1 are already right."""
    ranges = [
        {"lo": first, "hi": steps[k + 1][0] if k + 1 < len(steps) else None, "delta": delta}
        for k, (first, delta) in enumerate(steps) if delta != 1
    ]
    if not ranges:
        return
    conn.exec_driver_sql(
        "create temp table _ingest_line_steps (lo bigint, hi bigint, delta bigint)")
    for k in range(0, len(ranges), INSERT_CHUNK):
        conn.execute(sa.text("insert into _ingest_line_steps values (:lo, :hi, :delta)"),
                     ranges[k:k + INSERT_CHUNK])
    conn.execute(
        sa.text(
            f"update {target} as t set _line_number = t._line_number - 1 + s.delta "
            "from _ingest_line_steps as s "
            f"where {_FILE_ROWS} "
            "and t._line_number - 1 >= s.lo and (s.hi is null or t._line_number - 1 < s.hi)"
        ),
        {"batch_id": batch_id, "file": source_file},
    )


def _record_starts(path: Path) -> Iterator[tuple[int, int]]:
    """(1-based line, DuckDB's ``line_byte_position`` for it) where each data record
    starts; a record ends at an even count of quote characters. DuckDB puts that
    position 2 bytes past the start of the previous line's terminator (offset + 1 after
    LF, the offset after CRLF); should that change, the caller's cross-check fails and
    the row-by-row reader is used instead."""
    open_quotes = False
    prev_end = 0
    for n, (offset, line) in enumerate(raw_lines(path), start=1):
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
