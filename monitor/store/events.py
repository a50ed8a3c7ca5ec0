"""The audit trail and the circuit breaker's state, in the state store."""

from __future__ import annotations

import sqlalchemy as sa

from monitor.store import state


def record_event(st: sa.Engine, kind: str, subject: str, actor: str, reason: str) -> None:
    with st.begin() as conn:
        conn.execute(
            state.events.insert().values(
                at=state.utcnow(), kind=kind, subject=subject, actor=actor, reason=reason
            )
        )


def pause(st: sa.Engine, reason: str, run_id: str | None) -> bool:
    """Trip the circuit breaker; True when it was not tripped already."""
    with st.begin() as conn:
        if conn.execute(sa.select(state.pause.c.id)).first():
            return False
        conn.execute(
            state.pause.insert().values(id=1, since=state.utcnow(), reason=reason, run_id=run_id)
        )
    record_event(st, "pause", run_id or "-", "monitor", reason)
    return True
