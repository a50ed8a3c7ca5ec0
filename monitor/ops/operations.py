"""Operator actions (release, reject) and the status report; each action is recorded."""

from __future__ import annotations

import contextlib
from typing import Any

import sqlalchemy as sa

from monitor.alerting.incidents import open_alerts
from monitor.core.config import Config, state_url
from monitor.daemon.jobstore import next_scheduled_run
from monitor.store import batches, state
from monitor.store.events import record_event
from monitor.warehouse.connection import backend_for, warehouse
from monitor.warehouse.lock import cycle_lock


def decide_batch(cfg: Config, batch_id: str, decision: str, reason: str, actor: str) -> str:
    """Release (publish) or reject a held batch; returns a one-line confirmation.

    Under the cycle lock (:class:`Busy` while a cycle runs): a batch published in the
    middle of a build would reach some models and not others, and its publish_seq
    would race the gate's."""
    if not reason.strip():
        raise ValueError("--reason must say why")
    schema = cfg.ingest.schema
    with cycle_lock(cfg), warehouse(cfg.warehouse) as wh, wh.begin() as conn:
        batch = batches.get_batch(conn, schema, batch_id)
        if batch.status != batches.HELD:
            raise batches.BatchError(f"batch {batch_id} is {batch.status}, not held")
        if decision == "release":
            seq = batches.publish(conn, schema, batch_id, actor, reason)
            message = f"released {batch_id} (publish_seq {seq}); the next cycle merges it"
        else:
            batches.reject(conn, schema, batch_id, actor, reason)
            message = f"rejected {batch_id}; its rows stay in raw and are never merged"
    st = state.open_state(state_url(cfg))
    try:
        record_event(st, decision, batch_id, actor, reason)
    finally:
        st.dispose()
    return message


def status_report(cfg: Config) -> dict[str, Any]:
    """What an operator asks first: last runs, paused, held batches, alerts, next run.

    While a cycle holds the DuckDB file (another process) or the server cannot be
    reached, held batches cannot be read: ``held_batches`` is then left out and
    ``held_batches_unavailable`` says why.
    """

    st = state.open_state(state_url(cfg))
    try:
        with st.connect() as conn:
            r = state.runs
            last = conn.execute(sa.select(r).order_by(r.c.started_at.desc()).limit(10)).mappings()
            runs = [dict(row) for row in last]
            ev = state.events
            recent = conn.execute(sa.select(ev).order_by(ev.c.id.desc()).limit(10)).mappings()
            events = [dict(row) for row in recent]
        paused_row = state.paused(st)
        alerts = open_alerts(st)
        next_run = next_scheduled_run(st)
    finally:
        st.dispose()
    report: dict[str, Any] = {
        "paused": paused_row,
        "runs": runs,
        "held_batches": [],
        "events": events,
        "open_alerts": alerts,
        "next_run": next_run,
    }
    if cfg.ingest.enabled and backend_for(cfg.warehouse).created(cfg.warehouse):
        try:
            with (
                warehouse(cfg.warehouse) as wh,
                wh.connect() as conn,
                contextlib.suppress(sa.exc.DBAPIError),  # raised inside: nothing ingested yet
            ):
                report["held_batches"] = [
                    b.__dict__ for b in batches.list_batches(conn, cfg.ingest.schema, "held")
                ]
        except sa.exc.DBAPIError as exc:  # the file is locked by a running cycle
            del report["held_batches"]
            report["held_batches_unavailable"] = f"warehouse busy or unreachable: {exc.orig}"
    return report


def resume(cfg: Config, reason: str, actor: str) -> str:
    """Lift the circuit breaker on an operator's word."""
    if not reason.strip():
        raise ValueError("--reason must say why")
    st = state.open_state(state_url(cfg))
    try:
        current = state.paused(st)
        if current is None:
            raise ValueError("the pipeline is not paused")
        with st.begin() as conn:
            conn.execute(state.pause.delete())
        record_event(st, "resume", str(current.get("run_id") or "-"), actor, reason)
    finally:
        st.dispose()
    return f"resumed (was paused since {current['since']}: {current['reason']})"
