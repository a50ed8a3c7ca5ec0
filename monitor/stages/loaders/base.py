"""What ingest hands a loader and what it hands back, the same for every engine.

A loader writes one file's records into its feed table and the quarantine, in the
caller's transaction (the DuckDB loader commits the records first, under a batch id no
ledger row names yet); ingest keeps the ledger, the commit and the order loaders are
tried in, so a new engine only adds a loader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa

from monitor.core.columns import AUDIT_COLUMNS, BATCH_COLUMN
from monitor.core.config import FeedConfig, IngestConfig
from monitor.store.batches import ledger_tables
from monitor.warehouse.connection import backend_of

INSERT_CHUNK = 5000  # rows per executemany


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

    @property
    def batched(self) -> list[tuple[sa.Table, str]]:
        """The tables a batch's rows go to, each with its batch-id column: a retry or a
        fallback replaces what an earlier attempt at the batch left there."""
        return [*((t, BATCH_COLUMN) for t in self.feeds.values()), (self.quarantine, "batch_id")]

    def batched_for(self, feed: str) -> list[tuple[sa.Table, str]]:
        """The tables one batch of ``feed`` writes: its feed table and the quarantine."""
        return [(self.feeds[feed], BATCH_COLUMN), (self.quarantine, "batch_id")]

    def create(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.schema.CreateSchema(self.cfg.schema, if_not_exists=True))
            backend_of(conn).create_raw_tables(
                conn, self.md, self.batches, {t.name: c for t, c in self.batched})


@dataclass(frozen=True)
class Delivery:
    """One landed file of a feed, as a loader sees it: the tables its rows go to and the
    ``_ingested_at`` they carry."""

    store: RawStore
    feed: str
    spec: FeedConfig
    path: Path
    ingested_at: datetime


class LoadCounts(NamedTuple):
    """A file's data records: in the feed table, in the quarantine, and read (the sum)."""

    loaded: int
    quarantined: int
    read: int


# Loads a delivery under a batch id in the connection's transaction. BadFile (from
# monitor.stages.landing) has the file quarantined whole; any other error rolls back,
# deletes what the attempt committed, and lets the next loader try.
Loader = Callable[[sa.Connection, Delivery, str], LoadCounts]
