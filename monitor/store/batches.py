"""Batch lifecycle in the warehouse ledger: pending → published | held → released | rejected.

Staging models read only ``published`` batches, ordered by ``publish_seq``: the facts'
high-watermark. A batch gets its publish_seq when it is published, so a held batch
released days later still sorts after everything already merged and is picked up.
(What the post-build checks take as touched is another watermark: what the last build
merged, ``monitor.store.watermark``; a release sits below the ledger's maximum by the
time the next cycle starts.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from monitor.store.state import utcnow
from monitor.warehouse.connection import backend_of

PENDING, PUBLISHED, HELD, REJECTED, QUARANTINED = (
    "pending", "published", "held", "rejected", "quarantined",
)


class BatchError(ValueError):
    """An operator asked for a transition the batch cannot make."""


@dataclass(frozen=True)
class Batch:
    batch_id: str
    feed: str
    source_file: str
    status: str
    rows_read: int
    rows_loaded: int
    rows_quarantined: int
    publish_seq: int | None
    reason: str | None
    ingested_at: datetime
    decision_reason: str | None = None


def _table(schema: str) -> sa.Table:
    return ledger_tables(sa.MetaData(), schema)[0]


def list_batches(
    conn: sa.Connection, schema: str, status: str | None = None, feed: str | None = None
) -> list[Batch]:
    t = _table(schema)
    q = sa.select(
        t.c.batch_id, t.c.feed, t.c.source_file, t.c.status, t.c.rows_read, t.c.rows_loaded,
        t.c.rows_quarantined, t.c.publish_seq, t.c.reason, t.c.ingested_at,
        t.c.decision_reason,
    ).order_by(t.c.load_seq)
    if status:
        q = q.where(t.c.status == status)
    if feed:
        q = q.where(t.c.feed == feed)
    return [Batch(**row) for row in conn.execute(q).mappings().all()]


def held_since(conn: sa.Connection, schema: str, since: datetime) -> list[str]:
    """Ids of the batches still held that the contract gate held at or after ``since``."""
    t = _table(schema)
    q = (sa.select(t.c.batch_id)
         .where(t.c.status == HELD, t.c.decided_by == "contract", t.c.decided_at >= since)
         .order_by(t.c.load_seq))
    return [str(r[0]) for r in conn.execute(q).all()]


def get_batch(conn: sa.Connection, schema: str, batch_id: str) -> Batch:
    found = [b for b in list_batches(conn, schema) if b.batch_id == batch_id]
    if not found:
        raise BatchError(f"no batch {batch_id!r}")
    return found[0]


def max_publish_seq(conn: sa.Connection, schema: str) -> int:
    t = _table(schema)
    return int(conn.execute(sa.select(sa.func.max(t.c.publish_seq))).scalar() or 0)


def publish(conn: sa.Connection, schema: str, batch_id: str, by: str, reason: str) -> int:
    """Publish a pending or held batch; return its publish_seq."""
    batch = get_batch(conn, schema, batch_id)
    if batch.status not in (PENDING, HELD):
        raise BatchError(f"batch {batch_id} is {batch.status}; only pending or held can publish")
    seq = max_publish_seq(conn, schema) + 1
    _decide(conn, schema, batch_id, PUBLISHED, by, reason, publish_seq=seq)
    return seq


def hold(conn: sa.Connection, schema: str, batch_id: str, reason: str) -> None:
    batch = get_batch(conn, schema, batch_id)
    if batch.status != PENDING:
        raise BatchError(f"batch {batch_id} is {batch.status}; only pending can be held")
    _decide(conn, schema, batch_id, HELD, "contract", reason)


def reject(
    conn: sa.Connection, schema: str, batch_id: str, by: str, reason: str,
    *, retract: bool = False,
) -> None:
    """Retire a held (or pending) batch. ``retract`` also takes back a published one:
    staging views stop seeing it at once, staging tables at the next build (a post-hook
    deletes its rows), and the facts lose it with a rollback or a
    ``--full-refresh``."""
    batch = get_batch(conn, schema, batch_id)
    allowed = (HELD, PENDING, PUBLISHED) if retract else (HELD, PENDING)
    if batch.status not in allowed:
        raise BatchError(f"batch {batch_id} is {batch.status}; cannot be rejected")
    _decide(conn, schema, batch_id, REJECTED, by, reason)


def _decide(
    conn: sa.Connection, schema: str, batch_id: str, status: str, by: str, reason: str,
    publish_seq: int | None = None,
) -> None:
    t = _table(schema)
    values: dict[str, object] = dict(
        status=status, decided_at=utcnow(), decided_by=by, decision_reason=reason
    )
    if publish_seq is not None:
        values["publish_seq"] = publish_seq
    backend_of(conn).decide_batch(conn, t, batch_id, values)


def ledger_tables(md: sa.MetaData, schema: str) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The batch ledger, the delivery log and the quarantine, in the raw schema."""
    batches = sa.Table(
        "ingest_batches",
        md,
        sa.Column("batch_id", sa.String, primary_key=True),
        sa.Column("feed", sa.String, nullable=False),
        sa.Column("source_file", sa.String, nullable=False),
        sa.Column("checksum", sa.String, nullable=False, unique=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("load_seq", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("publish_seq", sa.BigInteger),
        sa.Column("rows_read", sa.BigInteger, nullable=False),
        sa.Column("rows_loaded", sa.BigInteger, nullable=False),
        sa.Column("rows_quarantined", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String),
        sa.Column("ingested_at", sa.DateTime, nullable=False),
        sa.Column("decided_at", sa.DateTime),
        sa.Column("decided_by", sa.String),
        sa.Column("decision_reason", sa.String),
        schema=schema,
    )
    files = sa.Table(
        "ingest_files",
        md,
        sa.Column("source_file", sa.String, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("checksum", sa.String, nullable=False),
        sa.Column("batch_id", sa.String, nullable=False),
        sa.Column("outcome", sa.String, nullable=False),
        sa.Column("seen_at", sa.DateTime, nullable=False),
        schema=schema,
    )
    quarantine = sa.Table(
        "ingest_quarantine",
        md,
        sa.Column("batch_id", sa.String, nullable=False),
        sa.Column("feed", sa.String, nullable=False),
        sa.Column("source_file", sa.String, nullable=False),
        sa.Column("line_number", sa.BigInteger),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("raw_line", sa.String),
        schema=schema,
    )
    return batches, files, quarantine
