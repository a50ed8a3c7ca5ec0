"""The touched-rows watermark: the publish_seq the last successful build merged through.

The post-build checks on touched rows (model suites with ``scope = "touched"``, the
reconcile check, dbt's data tests through ``monitor_touched_after``, the profile's
``scope = "touched"`` aggregates) read the rows published above it. It is not the
ledger's maximum when the cycle starts: a batch published between two builds (``monitor
release``; a gate whose build was paused, stopped, failed or killed) sits below that
maximum yet is merged by the next build, so it must still count as touched.

Kept in the state store (``state.build_watermarks``). It advances only when a build
succeeded and its checks and measurements ran (``advance``, the last step of the
cycle), so a failed build or a crash in between leaves it where it was and the next
cycle checks those rows again; a rollback moves it back to what its target's build had
merged (``move_back``, before the restore: lower is always safe).
"""

from __future__ import annotations

import sqlalchemy as sa

from monitor.store import state

BUILD, ROLLBACK = "build", "rollback"


def current(st: sa.Engine) -> int | None:
    """The watermark now, or None before any build recorded one."""
    t = state.build_watermarks
    with st.connect() as conn:
        seq = conn.execute(sa.select(t.c.publish_seq).order_by(t.c.id.desc()).limit(1)).scalar()
    return None if seq is None else int(seq)


def touched_after(st: sa.Engine, ledger_before: int) -> int:
    """Where this cycle's touched rows start: the stored watermark, never above the
    ledger's maximum before the gate (``ledger_before``: a warehouse rebuilt from
    scratch under an old state store restarts its sequence), which is also the
    watermark of a state store that has none yet."""
    seq = current(st)
    return ledger_before if seq is None else min(seq, ledger_before)


def merged_by(st: sa.Engine, run_id: str) -> int | None:
    """What the build of ``run_id`` merged through, if it recorded it."""
    t = state.build_watermarks
    with st.connect() as conn:
        seq = conn.execute(sa.select(t.c.publish_seq).where(
            t.c.run_id == run_id, t.c.kind == BUILD).order_by(t.c.id.desc()).limit(1)).scalar()
    return None if seq is None else int(seq)


def advance(st: sa.Engine, run_id: str, merged_through: int) -> None:
    """A build merged every batch published up to ``merged_through`` and its rows were
    checked: the next cycle's touched rows start above it."""
    _record(st, run_id, merged_through, BUILD)


def move_back(st: sa.Engine, run_id: str, merged_through: int) -> int:
    """A rollback to ``run_id``, whose build had merged through ``merged_through``: the
    rows re-merged after it are checked again. Never raises the watermark; returns it."""
    now = current(st)
    seq = merged_through if now is None else min(now, merged_through)
    _record(st, run_id, seq, ROLLBACK)
    return seq


def _record(st: sa.Engine, run_id: str, seq: int, kind: str) -> None:
    with st.begin() as conn:
        conn.execute(state.build_watermarks.insert().values(
            run_id=run_id, publish_seq=int(seq), kind=kind, recorded_at=state.utcnow()))
