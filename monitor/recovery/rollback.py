"""Rollback: rebuild the built tables from a kept snapshot's chain (its FULL base,
then each DELTA) in one warehouse transaction, checked against the target's document
before it commits, so a rollback restores exactly or changes nothing.

It reads snapshots only through ``monitor.recovery.snapshots`` (documents, chain,
HEAD) and restores through the engine's ``SnapshotRestorer``; the checks are in
docs/contracts.md (Last-known-good snapshots).
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from monitor.core.config import Config, state_url
from monitor.recovery.snapshots import (
    FULL,
    SnapshotError,
    SnapshotInfo,
    SnapshotTable,
    chain,
    list_snapshots,
    load_info,
    snapshot_store,
    write_head,
)
from monitor.store import state, watermark
from monitor.store.events import record_event
from monitor.warehouse.lock import Busy, cycle_lock
from monitor.warehouse.snapshot_store import (
    IDENT,
    SnapshotRestorer,
    SnapshotStore,
    check_run_id,
)

__all__ = ["rollback"]

log = logging.getLogger(__name__)


def rollback(cfg: Config, to_run: str, reason: str, actor: str) -> str:
    """Restore the fact tables from the snapshot of ``to_run``; returns a summary line."""
    if not reason.strip():
        raise SnapshotError("--reason must say why")
    check_run_id(to_run)
    store = snapshot_store(cfg)
    if store is None:
        raise SnapshotError("this warehouse keeps no snapshots to roll back to")
    info = load_info(cfg, to_run)
    if info is None or to_run not in store.copies():
        kept = ", ".join(i.run_id for i in list_snapshots(cfg)) or "none"
        raise SnapshotError(f"no snapshot of run {to_run} (kept: {kept})")
    links = chain(cfg, info)

    marks = [t.watermark for t in info.tables if t.watermark is not None]
    st = state.open_state(state_url(cfg))
    try:
        try:
            with cycle_lock(cfg):
                started = time.perf_counter()
                # Until HEAD names the target, the next snapshot must not be a delta on
                # the state before the rollback: forget it first (a failed restore
                # changes nothing, and the next snapshot is then FULL).
                store.forget_head()
                # The rows the next build re-merges are checked again: the touched
                # watermark goes back to what the target's build merged (without its
                # record, the tables' own: never higher). First, as lower is safe: a
                # failed restore then only has the next cycle check more.
                merged = watermark.merged_by(st, to_run)
                touched = watermark.move_back(
                    st, to_run, merged if merged is not None else max(marks, default=0))
                restored = _restore(store, links)
                write_head(store, to_run, [])  # the tables now equal this snapshot
                seconds = time.perf_counter() - started
        except Busy as exc:
            raise SnapshotError(f"{exc}; try again when it has finished") from exc
        record_event(st, "rollback", to_run, actor, reason)
    finally:
        st.dispose()
    mark = f"; facts' high-watermark back to publish_seq {max(marks)}" if marks else ""
    how = (f" (FULL snapshot of {links[0].run_id} + {len(links) - 1} delta(s))"
           if len(links) > 1 else "")
    return (
        f"rolled back {len(restored)} fact table(s) to run {to_run}{how} "
        f"({', '.join(f'{m}: {n} rows' for m, n in restored)}) in {seconds:.2f} s{mark}. "
        "The next cycle re-merges batches published after the snapshot and checks their "
        f"rows again (touched above publish_seq {touched}); "
        "retract a bad one first with `monitor reject BATCH --retract --reason ...`."
    )


def _restore(store: SnapshotStore, links: list[SnapshotInfo]) -> list[tuple[str, int]]:
    """Rebuild each table of ``links[-1]`` from its chain, all in one transaction."""
    target = links[-1]
    restored = []
    try:
        with store.restorer([link.run_id for link in links]) as restorer:
            for t in target.tables:
                _restore_one(restorer, t, links)
                restored.append((t.model, t.rows))
                # Still inside the transaction: a crash before its commit leaves
                # every table as it was and the rollback can simply be run again
                # (tests/test_crash_points.py kills at this line).
                log.info("rollback to %s: %s rebuilt, %d rows (not committed yet)",
                         target.run_id, t.model, t.rows)
    except sa.exc.DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise SnapshotError(f"the restore failed ({first}); nothing was rolled back") from exc
    return restored


def _restore_one(restorer: SnapshotRestorer, t: SnapshotTable, links: list[SnapshotInfo]
                 ) -> None:
    if not (IDENT.match(t.schema) and IDENT.match(t.identifier)):
        raise SnapshotError(f"snapshot names an unsafe table {t.identifier!r}")
    # the newest link holding the whole table, then every delta after it
    steps: list[tuple[str, SnapshotTable]] = []
    for link in reversed(links):
        held = link.table(t.schema, t.identifier)
        if held is None:
            raise SnapshotError(
                f"{t.model}: the snapshot of {link.run_id} in the chain does not hold it")
        steps.append((link.run_id, held))
        if held.mode == FULL:
            break
    else:
        raise SnapshotError(f"{t.model}: no FULL copy in the chain of {links[-1].run_id}")
    steps.reverse()
    base_run, _ = steps[0]
    restorer.replace(t.schema, t.identifier, base_run)
    for run_id, held in steps[1:]:
        if not held.key or not all(IDENT.match(k) for k in held.key):
            raise SnapshotError(f"{t.model}: a delta without a usable unique key")
        restorer.apply_delta(t.schema, t.identifier, run_id, held.key)
    rows = restorer.count(t.schema, t.identifier)
    if rows != t.rows:
        raise SnapshotError(f"{t.model}: restored {rows} rows, snapshot has {t.rows}; "
                            "nothing was rolled back")
    if t.seq_sum:
        got = restorer.sums(t.schema, t.identifier, list(t.seq_sum))
        if got != t.seq_sum:
            raise SnapshotError(
                f"{t.model}: restored sequence sums {got} differ from the snapshot's "
                f"{t.seq_sum} (changed outside the monitor?); nothing was rolled back")
