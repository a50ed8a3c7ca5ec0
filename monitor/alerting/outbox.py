"""The durable outbox in the state store, so no notification is lost to a restart or a
sink outage. A row is enqueued in the transaction that records its alert's transition;
delivery is at-least-once: a row is claimed with a lease, sent, then marked ``sent``.
A crash between a sink's 2xx and that mark re-sends the row after its lease under the
same :func:`outbox_key`, so the receiver can drop it (see each sink for how)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from monitor.alerting.sinks.base import DeliveryError, Sink
from monitor.alerting.utc import aware, naive
from monitor.core.sections import AlertingConfig
from monitor.store.state import alert_outbox

log = logging.getLogger(__name__)

_CLAIM_MARGIN_S = 60.0  # lease = sink timeout + margin; an abandoned claim retries after it

# -- enqueue (inside reconcile's transaction) ------------------------------------------


def enqueue(
    conn: sa.Connection, note: dict[str, Any], sink: str, event: str, now: datetime
) -> None:
    """Queue ``note`` for ``sink``, due at once."""
    conn.execute(
        alert_outbox.insert().values(
            dedup_key=note["dedup_key"],
            sink=sink,
            event=event,
            severity=note["severity"],
            payload=json.dumps(note, sort_keys=True),
            status="pending",
            attempts=0,
            next_attempt_at=naive(now),
            last_error=None,
            created_at=naive(now),
            sent_at=None,
        )
    )


def last_queued(
    conn: sa.Connection, dedup_key: str, sink: str, events: Iterable[str]
) -> datetime | None:
    """When a row of one of ``events`` was last queued for the alert and sink (UTC)."""
    last = conn.execute(
        sa.select(sa.func.max(alert_outbox.c.created_at)).where(
            alert_outbox.c.dedup_key == dedup_key,
            alert_outbox.c.sink == sink,
            alert_outbox.c.event.in_(tuple(events)),
        )
    ).scalar()
    return None if last is None else aware(last)


# -- delivery -----------------------------------------------------------------------


def outbox_key(row: Mapping[str, Any]) -> str:
    """The idempotency key of one outbox row: the same on every attempt to send it, and
    different for every other row (another event, sink or transition of the alert)."""
    created = aware(row["created_at"]).isoformat()
    ident = f"{row['id']}|{row['dedup_key']}|{row['sink']}|{row['event']}|{created}"
    return "dqm-" + hashlib.sha256(ident.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Delivery:
    """The outcome of one outbox row in a :func:`deliver` pass."""

    id: int
    dedup_key: str
    sink: str
    event: str
    severity: str
    status: str  # sent | pending (will retry) | dead
    error: str | None = None


def deliver(
    engine: sa.Engine,
    sinks: Mapping[str, Sink],
    now: datetime,
    *,
    config: AlertingConfig | None = None,
    limit: int = 500,
) -> list[Delivery]:
    """Send due pending outbox rows, oldest first; return what happened to each tried.

    Per (dedup_key, sink) rows go strictly in order (a ``resolved`` never overtakes
    its ``firing``). After a failure, the sink's other rows wait for the next pass.
    Rows for a sink no longer configured are marked ``dead``.
    """
    cfg = config or AlertingConfig()
    now = aware(now)
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.select(alert_outbox)
                .where(alert_outbox.c.status == "pending")
                .order_by(alert_outbox.c.id)
                .limit(limit)
            )
            .mappings()
            .all()
        )
    blocked: set[tuple[str, str]] = set()
    down: set[str] = set()
    out: list[Delivery] = []
    for row in rows:
        lane = (row["dedup_key"], row["sink"])
        if lane in blocked or row["sink"] in down or aware(row["next_attempt_at"]) > now:
            blocked.add(lane)
            continue
        result = _deliver_one(engine, dict(row), sinks.get(row["sink"]), now, cfg)
        if result is None:  # another process claimed it
            blocked.add(lane)
            continue
        out.append(result)
        if result.status != "sent":
            blocked.add(lane)
            down.add(row["sink"])
    return out


def _deliver_one(
    engine: sa.Engine, row: Mapping[str, Any], sink: Sink | None, now: datetime, cfg: AlertingConfig
) -> Delivery | None:
    def result(status: str, error: str | None = None) -> Delivery:
        return Delivery(
            row["id"], row["dedup_key"], row["sink"], row["event"], row["severity"], status, error
        )

    if sink is None:
        _finish(engine, row["id"], status="dead", last_error="sink not configured")
        return result("dead", "sink not configured")
    if not _claim(engine, row, now + timedelta(seconds=sink.timeout_s + _CLAIM_MARGIN_S)):
        return None
    try:
        sink.send(json.loads(row["payload"]), now, idempotency_key=outbox_key(row))
    except Exception as exc:  # any sink failure (even a bug) means "retry later"
        if not isinstance(exc, DeliveryError):
            log.exception("sink %s failed on outbox row %s", row["sink"], row["id"])
        error = str(exc)[:500]
        attempts = row["attempts"] + 1
        status = "dead" if attempts >= cfg.max_attempts else "pending"
        _finish(
            engine,
            row["id"],
            status=status,
            attempts=attempts,
            last_error=error,
            next_attempt_at=naive(now + cfg.backoff(attempts)),
        )
        log.warning(
            "alert %s to %s failed (attempt %d, %s): %s",
            row["dedup_key"],
            row["sink"],
            attempts,
            status,
            error,
        )
        return result(status, error)
    _finish(
        engine,
        row["id"],
        status="sent",
        attempts=row["attempts"] + 1,
        sent_at=naive(now),
        last_error=None,
    )
    return result("sent")


def _claim(engine: sa.Engine, row: Mapping[str, Any], lease_until: datetime) -> bool:
    """Take the row by pushing its next_attempt_at out; only one claimant succeeds."""
    t = alert_outbox.c
    with engine.begin() as conn:
        res = conn.execute(
            alert_outbox.update()
            .where(
                t.id == row["id"],
                t.status == "pending",
                t.next_attempt_at == row["next_attempt_at"],
                t.attempts == row["attempts"],
            )
            .values(next_attempt_at=naive(lease_until))
        )
        return res.rowcount == 1


def _finish(engine: sa.Engine, row_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(alert_outbox.update().where(alert_outbox.c.id == row_id).values(**values))


# -- reading and pruning ------------------------------------------------------------


def outbox_counts(engine: sa.Engine) -> dict[str, int]:
    """Outbox rows per status (pending / sent / dead)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(alert_outbox.c.status, sa.func.count()).group_by(alert_outbox.c.status)
        ).all()
    return {str(r[0]): int(r[1]) for r in rows}


def pages_since(engine: sa.Engine, after_id: int = 0) -> list[tuple[str, str]]:
    """(severity, dedup key) of the critical ``firing`` notifications queued after
    outbox id ``after_id`` that page someone: an incident's lead, never its members."""
    t = alert_outbox.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.severity, t.dedup_key, t.payload).where(
                t.id > after_id, t.event == "firing", t.severity == "critical"
            )
        ).all()
    return sorted(
        {(str(r[0]), str(r[1])) for r in rows if json.loads(r[2]).get("role") != "member"}
    )


def purge_outbox(engine: sa.Engine, before: datetime) -> int:
    """Delete sent and dead rows created before ``before``; return how many."""
    with engine.begin() as conn:
        res = conn.execute(
            alert_outbox.delete().where(
                alert_outbox.c.status.in_(("sent", "dead")),
                alert_outbox.c.created_at < naive(before),
            )
        )
        return int(res.rowcount)
