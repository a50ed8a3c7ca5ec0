"""UTC times for alerting: aware to compare, naive to store (SQLite keeps no zone, so
every row holds UTC), ISO with ``Z`` in the payloads."""

from __future__ import annotations

from datetime import UTC, datetime


def aware(ts: datetime | float) -> datetime:
    """``ts`` (Unix seconds, or a datetime; naive = UTC) as an aware UTC datetime."""
    if isinstance(ts, int | float):
        return datetime.fromtimestamp(ts, UTC)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def naive(ts: datetime) -> datetime:
    """Naive UTC, for storage."""
    return aware(ts).replace(tzinfo=None)


def iso(ts: datetime) -> str:
    """``2026-03-02T12:00:00Z``."""
    return aware(ts).isoformat().replace("+00:00", "Z")
