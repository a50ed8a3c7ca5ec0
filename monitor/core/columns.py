"""Column and metric names the pipeline and the monitor share (docs/contracts.md)."""

from __future__ import annotations

# Ends the name of an aggregate over the rows one cycle published (profile.AggregateSpec).
TOUCHED_SUFFIX = ":touched"


WATERMARK_COLUMN = "_publish_seq"  # contracts.md: facts carry the publish sequence


#: Publish-sequence columns an incremental run raises on every row it writes.
SEQ_COLUMNS = ("_publish_seq", "_enriched_publish_seq", "_last_delivered_seq")


#: The column an incremental model's watermark reads, first present wins
#: (pipeline/macros/incremental/publish_watermark.sql and distinct_versions.sql).
READ_WATERMARKS = ("_last_delivered_seq", "_publish_seq")


AUDIT_COLUMNS = ("_batch_id", "_source_file", "_line_number", "_ingested_at")


BATCH_COLUMN, SEQ_COLUMN = "_batch_id", "_publish_seq"  # docs/contracts.md
