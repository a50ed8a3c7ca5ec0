"""The Spark loader: Spark's CSV parser on the cluster, each record with its physical
first line, written as the batch's partitions, so a retry replaces what a failed
attempt left (Spark has no transaction to roll back).

The cluster reads the file at the path the monitor sees (``file:`` + the absolute
path: the landing zone must be mounted at the same path on the monitor's host and the
cluster's). The monitor itself reads only the header (``landing.read_header``, as every
loader does) and, in ingest, the bytes it hashes. On the cluster:

1. ``spark.read.text``: one row per physical line (LF, CRLF or a lone CR ends one, as
   ``landing.raw_lines`` splits; a ``.gz`` file is gunzipped by Hadoop's codec),
   numbered 1.. in file order: within a split of the file (``_metadata.file_block_start``)
   by ``row_number()`` over ``monotonically_increasing_id()``, plus the lines of the
   splits before it (a small aggregate per split), so no step sorts the whole file on
   one partition.
2. Records: a line starts one unless the quote characters before it are odd (RFC 4180:
   a quoted field holds line breaks; the rule ``duckdb_read_csv`` and ``records`` cut
   by); the lines of a record are joined with LF (grouped by record: distributed).
3. ``from_csv`` in PERMISSIVE mode with the corrupt-record column, every column a
   string in the header's order; an empty field, quoted or not, loads as NULL (as
   DuckDB's reader loads it).

A record is quarantined, with the first reason that applies: bytes that are not UTF-8
(``INVALID ENCODING``; the raw line keeps U+FFFD where the bad bytes were, where the
Python loaders show ``\\xNN``); longer than DuckDB's ``max_line_size`` (``LINE SIZE OVER
MAXIMUM``); a blank line or a wrong number of fields (``MISSING COLUMNS`` / ``TOO MANY
COLUMNS``, worded as the row-by-row rules word them); a quote left open to the end of
the file, or a quote inside an unquoted field or after a closing one (``malformed
CSV``: Spark's parser would read those leniently, DuckDB's strict mode and Python's
strict reader do not); any other record Spark's parser puts in the corrupt-record
column. Where the Python loaders differ from this: an open quote that closes into no
good record costs the row-by-row loader only its first line, here (as in DuckDB's
reader) the whole record to the closing quote or the end of the file; a NUL character
past the header check's first 64 KiB loads (Spark's strings hold it).

Any error of the reader (a ``.gz`` cut short past the header, a gzip file whose name
does not end in ``.gz``, a ``:`` in the file's name, which Hadoop's ``Path`` cannot
hold) fails this loader: ingest then clears the batch's partitions
(``Backend.clear_batch``) and the row-by-row loader reads the file, writing through the
same partitions, or the file is quarantined whole.
"""

from __future__ import annotations

import re
import uuid
import warnings
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import AUDIT_COLUMNS, BATCH_COLUMN
from monitor.stages.landing import is_gzip, read_header
from monitor.stages.loaders.base import Delivery, LoadCounts
from monitor.warehouse.spark import session_of
from monitor.warehouse.spark_dialect import spark_literal

#: DuckDB's ``max_line_size`` default: a longer record is quarantined on both engines.
MAX_RECORD_BYTES = 2_097_152
_CORRUPT = "_dqm_corrupt_record"
ENCODING_REASON = "INVALID ENCODING: not UTF-8 (latin-1?)"
OPEN_QUOTE_REASON = "malformed CSV: unterminated quote (a quoted field runs to the end of the file)"
STRAY_QUOTE_REASON = ("malformed CSV: a quote inside an unquoted field or text after a "
                      "closing quote")
SPARK_REASON = "malformed CSV: Spark's CSV parser rejected the record"


def load(conn: sa.Connection, d: Delivery, batch_id: str) -> LoadCounts:
    """Parse on the cluster, write the batch's feed and quarantine partitions, and count
    what they hold."""
    header = read_header(d.path, d.spec)
    if is_gzip(d.path) != d.path.name.endswith(".gz"):
        raise RuntimeError("gzip by its bytes but not by its name (or the reverse): "
                           "Spark picks the codec by the name")
    spark = session_of(conn)
    view = f"_dqm_ingest_{uuid.uuid4().hex[:12]}"
    with warnings.catch_warnings():  # the only unpartitioned windows: one row per split
        warnings.filterwarnings("ignore", message=".*No Partition Defined for Window")
        lines = _lines(spark, d).persist()
        parsed = None
        try:
            parsed = _parsed(_numbered(lines), d, header).persist()
            parsed.createOrReplaceTempView(view)
            _write(spark, d, batch_id, view)
        finally:
            spark.catalog.dropTempView(view)
            if parsed is not None:
                parsed.unpersist()
            lines.unpersist()
    return _stored(conn, d, batch_id)


def _lines(spark: Any, d: Delivery) -> Any:
    """The file's physical lines with their split, an id in the split's order and
    whether they hold an odd number of quote characters."""
    from pyspark.sql.connect import functions as F  # the `spark` extra

    odd = (F.length("value") - F.length(F.replace(F.col("value"), F.lit('"'), F.lit("")))) % 2
    return spark.read.text(_uri(d.path)).select(
        F.col("value"), F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_id"), odd.alias("_odd"))


def _numbered(lines: Any) -> Any:
    """Each line's number (``_line``) and the first line of its record (``_record``),
    computed per split of the file (``_block``, in parallel) from a prefix over the
    splits: the lines and the quote characters before each, and the last record start
    before it (a quoted record may run across a split's start). ``lines`` is cached:
    ``monotonically_increasing_id`` must give the same ids to all three reads."""
    from pyspark.sql.connect import functions as F  # the `spark` extra
    from pyspark.sql.connect.window import Window

    before = Window.orderBy("_block").rowsBetween(Window.unboundedPreceding, -1)
    blocks = (lines.groupBy("_block")
              .agg(F.count(F.lit(1)).alias("_n"), F.sum("_odd").alias("_q"))
              .select("_block", F.coalesce(F.sum("_n").over(before), F.lit(0)).alias("_n0"),
                      F.coalesce(F.sum("_q").over(before), F.lit(0)).alias("_q0")))
    inside = Window.partitionBy("_block").orderBy("_id")
    upto = inside.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    lines = (lines.join(F.broadcast(blocks), "_block")
             .withColumn("_line", F.col("_n0") + F.row_number().over(inside))
             .withColumn("_open", (F.col("_q0") + F.sum("_odd").over(upto) - F.col("_odd")) % 2))
    lines = lines.withColumn(
        "_start", F.when((F.col("_open") == 0) | (F.col("_line") == 1), F.col("_line")))
    lines = lines.withColumn("_record", F.max("_start").over(upto))
    carried = (lines.groupBy("_block").agg(F.max("_start").alias("_last"))
               .select("_block", F.max("_last").over(before).alias("_carried")))
    return (lines.join(F.broadcast(carried), "_block")
            .withColumn("_record", F.coalesce(F.col("_record"), F.col("_carried"))))


def _parsed(lines: Any, d: Delivery, header: list[str]) -> Any:
    """Per record: its first line, its text, its fields and why it is no good (NULL if
    it is)."""
    from pyspark.sql.connect import functions as F  # the `spark` extra

    records = (lines.groupBy("_record")
               .agg(F.array_sort(F.collect_list(F.struct("_line", "value"))).alias("_parts"),
                    F.sum("_odd").alias("_quotes"))
               .where(F.col("_record") > 1)
               .select(F.col("_record").alias("_line"),
                       F.concat_ws("\n", F.col("_parts.value")).alias("_text"),
                       (F.col("_quotes") % 2).alias("_unclosed")))
    schema = ", ".join(f"{_ident(c)} STRING" for c in [*header, _CORRUPT])
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT,
               "sep": d.spec.delimiter, "quote": '"', "escape": '"', "nullValue": ""}
    parsed = records.withColumn("_fields", F.from_csv(F.col("_text"), schema, options))
    return parsed.withColumn("_reason", _reason(F, d.spec.delimiter, len(header)))


def _reason(F: Any, delimiter: str, width: int) -> Any:
    """Why a record is quarantined (NULL: it loads), the first that applies."""
    text = F.col("_text")
    unquoted = F.regexp_replace(text, '"(?:[^"]|"")*+"', "")
    fields = (F.length(unquoted) - F.length(F.replace(unquoted, F.lit(delimiter), F.lit("")))
              + 1)
    one = f'(?:"(?:[^"]|"")*+"|[^"{re.escape(delimiter)}]*+)'
    strict = f"^{one}(?:{re.escape(delimiter)}{one})*+$"
    return (F.when(~F.expr("is_valid_utf8(_text)"), F.lit(ENCODING_REASON))
            .when(F.octet_length(text) > MAX_RECORD_BYTES,
                  F.concat(F.lit("LINE SIZE OVER MAXIMUM: record of "),
                           F.octet_length(text).cast("string"),
                           F.lit(f" bytes, over {MAX_RECORD_BYTES}")))
            .when(text == "", F.lit(f"MISSING COLUMNS: expected {width} fields, found 0"))
            .when(F.col("_unclosed") == 1, F.lit(OPEN_QUOTE_REASON))
            .when(~text.rlike(strict), F.lit(STRAY_QUOTE_REASON))
            .when(fields < width, F.concat(F.lit(f"MISSING COLUMNS: expected {width} fields, "
                                                 "found "), fields.cast("string")))
            .when(fields > width, F.concat(F.lit(f"TOO MANY COLUMNS: expected {width} "
                                                 "fields, found "), fields.cast("string")))
            .when(F.col(f"_fields.{_CORRUPT}").isNotNull(), F.lit(SPARK_REASON)))


def _write(spark: Any, d: Delivery, batch_id: str, view: str) -> None:
    """The batch's rows and quarantine, each one ``INSERT OVERWRITE`` of its partition
    (the batch id is ``<seq>-<feed>``: digits and a checked name)."""
    schema, feed = d.store.cfg.schema, d.feed
    _, source_col, line_col, at_col = AUDIT_COLUMNS
    cols = ", ".join(_ident(c) for c in [*d.spec.columns, source_col, line_col, at_col])
    values = ", ".join(f"_fields.{_ident(c)}" for c in d.spec.columns)
    args = {"source": str(d.path), "now": d.ingested_at, "feed": feed}
    spark.sql(
        f"INSERT OVERWRITE TABLE {_ident(schema)}.{_ident(feed)} "
        f"PARTITION ({_ident(BATCH_COLUMN)} = {spark_literal(batch_id)}) ({cols}) "
        f"SELECT {values}, :source, CAST(_line AS BIGINT), :now FROM {view} "
        "WHERE _reason IS NULL", args=args).collect()
    q = d.store.quarantine
    spark.sql(
        f"INSERT OVERWRITE TABLE {_ident(schema)}.{_ident(q.name)} "
        f"PARTITION (batch_id = {spark_literal(batch_id)}) "
        "(feed, source_file, line_number, reason, raw_line) "
        f"SELECT :feed, :source, CAST(_line AS BIGINT), _reason, make_valid_utf8(_text) "
        f"FROM {view} WHERE _reason IS NOT NULL", args=args).collect()


def _stored(conn: sa.Connection, d: Delivery, batch_id: str) -> LoadCounts:
    """What the batch's partitions hold: the counts the ledger records."""
    table, q = d.store.feeds[d.feed], d.store.quarantine
    loaded = (sa.select(sa.func.count()).select_from(table)
              .where(table.c[BATCH_COLUMN] == batch_id).scalar_subquery())
    kept = (sa.select(sa.func.count()).select_from(q)
            .where(q.c.batch_id == batch_id).scalar_subquery())
    n_loaded, n_kept = (int(n or 0) for n in conn.execute(sa.select(loaded, kept)).one())
    return LoadCounts(n_loaded, n_kept, n_loaded + n_kept)


def _uri(path: Any) -> str:
    """The path as Hadoop reads it: ``file:`` + the absolute path, its glob characters
    escaped (Spark reads a path as a glob)."""
    text = str(path.absolute())
    return "file://" + re.sub(r"([\\*?\[\]{}])", r"\\\1", text)


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
