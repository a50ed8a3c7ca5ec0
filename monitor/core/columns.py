"""Column and metric names the pipeline and the monitor share (docs/contracts.md)."""

from __future__ import annotations

#: Every raw and staged row: the batch (one landed file) it came from.
BATCH_COLUMN = "_batch_id"

#: Every published row: its batch's publish sequence, the watermark of the facts.
SEQ_COLUMN = "_publish_seq"

#: A fact row: the newest publish sequence among its batch and its enrichment.
ENRICHED_SEQ_COLUMN = "_enriched_publish_seq"

#: A version row (``int_*__versions``): the publish sequence of its latest delivery.
DELIVERED_SEQ_COLUMN = "_last_delivered_seq"

#: Publish-sequence columns an incremental run raises on every row it writes.
SEQ_COLUMNS = (SEQ_COLUMN, ENRICHED_SEQ_COLUMN, DELIVERED_SEQ_COLUMN)

#: The column an incremental model's watermark reads, first present wins
#: (pipeline/macros/incremental/publish_watermark.sql and distinct_versions.sql).
READ_WATERMARKS = (DELIVERED_SEQ_COLUMN, SEQ_COLUMN)

#: What ingest adds to every raw row after the feed's own columns.
AUDIT_COLUMNS = (BATCH_COLUMN, "_source_file", "_line_number", "_ingested_at")

#: Ends the name of an aggregate over the rows one cycle published (AggregateSpec).
TOUCHED_SUFFIX = ":touched"
