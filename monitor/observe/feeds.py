"""Newest delivery, held batches and quarantined rows per feed, from the batch ledger."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from monitor.core.config import Config
from monitor.store import batches
from monitor.store.batches import ledger_tables
from monitor.warehouse.connection import backend_for, warehouse


def feed_state(cfg: Config) -> tuple[dict[str, datetime | None], dict[str, tuple[int, int]]]:
    """Per feed: newest batch time; and (held batches, quarantined rows)."""
    last: dict[str, datetime | None] = {f: None for f in cfg.ingest.feeds}
    counts: dict[str, tuple[int, int]] = {f: (0, 0) for f in cfg.ingest.feeds}
    if not cfg.ingest.enabled or not backend_for(cfg.warehouse).created(cfg.warehouse):
        return last, counts
    b, f, _ = ledger_tables(sa.MetaData(), cfg.ingest.schema)
    q = sa.select(
        b.c.feed,
        sa.func.sum(sa.case((b.c.status == batches.HELD, 1), else_=0)),
        sa.func.sum(b.c.rows_quarantined),
    ).group_by(b.c.feed)
    # A delivery is an arrival even when its bytes repeat an earlier file (a full daily
    # file that did not change): freshness reads the delivery log, not new batches.
    arrivals = (
        sa.select(b.c.feed, sa.func.max(f.c.seen_at))
        .join_from(f, b, f.c.batch_id == b.c.batch_id)
        .group_by(b.c.feed)
    )
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        try:
            rows = conn.execute(q).all()
            seen = {str(r[0]): r[1] for r in conn.execute(arrivals).all()}
        except sa.exc.DBAPIError:
            return last, counts  # nothing ingested yet
    for row in rows:
        feed, held, quarantined = str(row[0]), row[1], row[2]
        if feed in last:
            at = seen.get(feed)
            last[feed] = at.replace(tzinfo=UTC) if at else None
            counts[feed] = (int(held or 0), int(quarantined or 0))
    return last, counts
