"""Retract a batch: reject it even once published, so staging stops reading it.

Its own module because it touches the batch ledger, not the snapshots; it raises
:class:`SnapshotError` like the rollback it usually precedes, so the CLI reports both
the same way.
"""

from __future__ import annotations

from monitor.core.config import Config, state_url
from monitor.recovery.snapshots import SnapshotError
from monitor.store import batches, state
from monitor.store.events import record_event
from monitor.warehouse.connection import warehouse

__all__ = ["retract_batch"]


def retract_batch(cfg: Config, batch_id: str, reason: str, actor: str) -> str:
    """Reject a batch even if published (staging stops reading it); records the event."""
    if not reason.strip():
        raise SnapshotError("--reason must say why")
    with warehouse(cfg.warehouse) as wh, wh.begin() as conn:
        try:
            before = batches.get_batch(conn, cfg.ingest.schema, batch_id).status
            batches.reject(conn, cfg.ingest.schema, batch_id, actor, reason, retract=True)
        except batches.BatchError as exc:
            raise SnapshotError(str(exc)) from exc
    st = state.open_state(state_url(cfg))
    try:
        record_event(st, "reject", batch_id, actor, f"retract: {reason}")
    finally:
        st.dispose()
    if before == batches.PUBLISHED:
        return (f"retracted {batch_id} (was published): staging drops it (tables at the next "
                "build); the facts still hold its rows until `monitor rollback --to RUN` or "
                "`monitor once --full-refresh`")
    return f"rejected {batch_id} (was {before}); its rows stay in raw and are never merged"
