"""The state store: run history, results, metric points and the alert outbox.

Every table the monitor keeps is declared here, on :data:`metadata`; ``open_state``
creates whatever is missing. Any SQLAlchemy URL works; the default is a SQLite file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

metadata = sa.MetaData()


def utcnow() -> datetime:
    """Now as naive UTC: how every stored timestamp is kept (SQLite has no time zones)."""
    return datetime.now(UTC).replace(tzinfo=None)


def serial_id(table: str) -> sa.Column[int]:
    """An auto-numbered integer primary key ``id`` on any backend: SQLite numbers it as
    its rowid, PostgreSQL and DuckDB (which has no SERIAL type) from a sequence."""
    return sa.Column("id", sa.Integer, sa.Sequence(f"{table}_id_seq"), primary_key=True,
                     autoincrement=True)


def open_state(url: str) -> sa.Engine:
    """Open (and create if needed) the state store at ``url``."""
    engine = sa.create_engine(url, future=True)
    if engine.dialect.name in ("sqlite", "duckdb"):  # a file: its folder must exist
        db = engine.url.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    if engine.dialect.name == "sqlite":
        # The daemon and CLI commands (status, release, resume) share the file.
        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

    metadata.create_all(engine)
    return engine


runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("ended_at", sa.DateTime),
    sa.Column("status", sa.String(16), nullable=False),  # running|success|failed|held|interrupted
    sa.Column("phase", sa.String(16)),  # ingest|gate|build|validate|observe|done
    sa.Column("reason", sa.Text),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("full_refresh", sa.Boolean, nullable=False, default=False),
    sa.Column("summary", sa.JSON),
)

run_models = sa.Table(
    "run_models",
    metadata,
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("unique_id", sa.String(512), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("layer", sa.String(16)),
    sa.Column("resource_type", sa.String(32), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("rows_affected", sa.BigInteger),
    sa.Column("message", sa.Text),
)

events = sa.Table(
    "events",
    metadata,
    serial_id("events"),
    sa.Column("at", sa.DateTime, nullable=False, quote=True),  # AT is reserved in DuckDB
    sa.Column("kind", sa.String(32), nullable=False),  # release|reject|resume|pause|rollback
    sa.Column("subject", sa.String(256)),
    sa.Column("actor", sa.String(128)),
    sa.Column("reason", sa.Text),
)

# The circuit breaker: one row while the pipeline is paused.
pause = sa.Table(
    "pause",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
    sa.Column("since", sa.DateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64)),
)


def paused(engine: sa.Engine) -> dict[str, object] | None:
    """The pause row as a dict, or None when the pipeline runs normally."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(pause).where(pause.c.id == 1)).mappings().first()
    return dict(row) if row else None


def last_success(engine: sa.Engine) -> datetime | None:
    """When the newest successful run ended (naive UTC), or None."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.max(runs.c.ended_at)).where(runs.c.status == "success")
        ).scalar()


# What the gate measured of each batch it judged (monitor.volume): the history of
# feed-day volumes, in the batch's delivery day and counting exact duplicates once.
batch_volumes = sa.Table(
    "batch_volumes",
    metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("feed", sa.String(128), nullable=False, index=True),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # main | supplement | resend
    sa.Column("recorded_at", sa.DateTime, nullable=False),
)


# One row per expectation result of a run (written by monitor.quality.results).
validation_results = sa.Table(
    "validation_results",
    metadata,
    serial_id("validation_results"),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("suite", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("batch_id", sa.String(128)),
    sa.Column("expectation", sa.String(200), nullable=False),
    sa.Column("check_name", sa.String(200)),
    sa.Column("column", sa.String(200)),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("observed_value", sa.JSON),
    sa.Column("unexpected_count", sa.BigInteger),
    sa.Column("unexpected_values", sa.JSON),
    sa.Column("kwargs_json", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
)


alerts_open = sa.Table(
    "alerts_open",
    metadata,
    sa.Column("dedup_key", sa.String(512), primary_key=True),
    sa.Column("rule", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),  # JSON; frozen at first firing
    sa.Column("evidence", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(200), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),  # naive UTC
    sa.Column("last_seen_at", sa.DateTime, nullable=False),
)


alert_outbox = sa.Table(
    "alert_outbox",
    metadata,
    serial_id("alert_outbox"),
    sa.Column("dedup_key", sa.String(512), nullable=False),
    sa.Column("sink", sa.String(100), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),  # firing | resolved | refresh
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON notification, sink-neutral
    sa.Column("status", sa.String(16), nullable=False),  # pending | sent | dead
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.DateTime, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("sent_at", sa.DateTime, nullable=True),
    sa.Index("ix_alert_outbox_status_id", "status", "id"),
    sa.Index("ix_alert_outbox_key_sink", "dedup_key", "sink"),
)


metric_points = sa.Table(
    "metric_points",
    metadata,
    serial_id("metric_points"),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("layer", sa.String(32), nullable=False),
    sa.Column("metric", sa.String(255), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("observed_at", sa.DateTime, nullable=False),  # naive UTC
    sa.Column("z", sa.Float, nullable=True),
    sa.Column("anomalous", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_metric_points_series", "model", "metric", "observed_at"),
)


# Counts carried from one measurement to the next (monitor.observe.carry).
profile_carries = sa.Table(
    "profile_carries",
    metadata,
    sa.Column("model", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),  # the view definitions
    sa.Column("watermark", sa.BigInteger, nullable=False),  # counted up to this publish_seq
    sa.Column("published", sa.String(64), nullable=False),  # the batches up to watermark
    sa.Column("raw", sa.JSON, nullable=False),  # additive raw counts and sums
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)


# The touched-rows watermark (monitor.store.watermark): one row per move, the newest
# (highest id) is current. A successful build records the publish_seq it merged through
# (kind "build"); a rollback moves it back to what its target run's build merged
# (kind "rollback").
build_watermarks = sa.Table(
    "build_watermarks",
    metadata,
    serial_id("build_watermarks"),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("publish_seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # build | rollback
    sa.Column("recorded_at", sa.DateTime, nullable=False),
)
