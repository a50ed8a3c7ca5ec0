"""Rollback: rebuild the built tables from a kept snapshot's chain (its FULL base,
then each DELTA) in one warehouse transaction, checked against the target's sidecar
before it commits, so a rollback restores exactly or changes nothing.

It reads snapshots only through ``monitor.recovery.snapshots`` (sidecars, chain,
HEAD); the checks are in docs/contracts.md (Last-known-good snapshots).
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from monitor.core.config import Config, state_url
from monitor.recovery.files import IDENT, path_literal, quote_ident
from monitor.recovery.snapshots import (
    FULL,
    SnapshotError,
    SnapshotInfo,
    SnapshotTable,
    chain,
    head_path,
    list_snapshots,
    load_info,
    snapshot_path,
    write_head,
)
from monitor.store import state
from monitor.store.events import record_event
from monitor.warehouse.connection import warehouse
from monitor.warehouse.lock import Busy, cycle_lock

__all__ = ["rollback"]

log = logging.getLogger(__name__)

_SNAP_DB = "lkg_snapshot"  # catalog alias prefix of the chain's files while attached


def rollback(cfg: Config, to_run: str, reason: str, actor: str) -> str:
    """Restore the fact tables from the snapshot of ``to_run``; returns a summary line."""
    if not reason.strip():
        raise SnapshotError("--reason must say why")
    path = snapshot_path(cfg, to_run)
    info = load_info(cfg, to_run)
    if not path.exists() or info is None:
        kept = ", ".join(i.run_id for i in list_snapshots(cfg)) or "none"
        raise SnapshotError(f"no snapshot of run {to_run} (kept: {kept})")
    links = chain(cfg, info)

    try:
        with cycle_lock(cfg):
            started = time.perf_counter()
            # Until HEAD names the target, the next snapshot must not be a delta on the
            # state before the rollback: forget it first (a failed restore changes
            # nothing, and the next snapshot is then FULL).
            head_path(cfg.evidence).unlink(missing_ok=True)
            restored = _restore(cfg, links)
            write_head(cfg.evidence, to_run, [])  # the tables now equal this snapshot
            seconds = time.perf_counter() - started
    except Busy as exc:
        raise SnapshotError(f"{exc}; try again when it has finished") from exc
    st = state.open_state(state_url(cfg))
    try:
        record_event(st, "rollback", to_run, actor, reason)
    finally:
        st.dispose()
    marks = [t.watermark for t in info.tables if t.watermark is not None]
    mark = f"; facts' high-watermark back to publish_seq {max(marks)}" if marks else ""
    how = (f" (FULL snapshot of {links[0].run_id} + {len(links) - 1} delta(s))"
           if len(links) > 1 else "")
    return (
        f"rolled back {len(restored)} fact table(s) to run {to_run}{how} "
        f"({', '.join(f'{m}: {n} rows' for m, n in restored)}) in {seconds:.2f} s{mark}. "
        "The next cycle re-merges batches published after the snapshot; "
        "retract a bad one first with `monitor reject BATCH --retract --reason ...`."
    )


def _restore(cfg: Config, links: list[SnapshotInfo]) -> list[tuple[str, int]]:
    """Rebuild each table of ``links[-1]`` from its chain, all in one transaction."""
    target = links[-1]
    aliases = [f"{_SNAP_DB}_{i}" for i in range(len(links))]
    restored = []
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        if wh.dialect.name != "duckdb":
            raise SnapshotError("rollback from a snapshot file needs the DuckDB warehouse")
        attached: list[str] = []
        try:
            for alias, link in zip(aliases, links, strict=True):
                conn.exec_driver_sql(f"ATTACH {path_literal(link.path)} AS {alias} (READ_ONLY)")
                attached.append(alias)
            conn.commit()  # ATTACH autobegan a transaction; the restore gets its own
            with conn.begin():
                for t in target.tables:
                    _restore_one(conn, t, links, aliases)
                    restored.append((t.model, t.rows))
                    # Still inside the transaction: a crash before its commit leaves
                    # every table as it was and the rollback can simply be run again
                    # (tests/test_crash_points.py kills at this line).
                    log.info("rollback to %s: %s rebuilt, %d rows (not committed yet)",
                             target.run_id, t.model, t.rows)
        finally:
            conn.rollback()
            for alias in attached:
                conn.exec_driver_sql(f"DETACH {alias}")
            conn.commit()
    return restored


def _restore_one(
    conn: sa.Connection, t: SnapshotTable, links: list[SnapshotInfo], aliases: list[str]
) -> None:
    if not (IDENT.match(t.schema) and IDENT.match(t.identifier)):
        raise SnapshotError(f"snapshot names an unsafe table {t.identifier!r}")
    # the newest link holding the whole table, then every delta after it
    steps: list[tuple[str, SnapshotTable]] = []
    for alias, link in zip(reversed(aliases), reversed(links), strict=True):
        held = link.table(t.schema, t.identifier)
        if held is None:
            raise SnapshotError(
                f"{t.model}: the snapshot of {link.run_id} in the chain does not hold it")
        steps.append((alias, held))
        if held.mode == FULL:
            break
    else:
        raise SnapshotError(f"{t.model}: no FULL copy in the chain of {links[-1].run_id}")
    steps.reverse()
    # the same name in every catalog
    dst = rel = f"{quote_ident(t.schema)}.{quote_ident(t.identifier)}"
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(t.schema)}")
    base_alias, _ = steps[0]
    conn.exec_driver_sql(f"CREATE OR REPLACE TABLE {dst} AS SELECT * FROM {base_alias}.{rel}")
    for alias, held in steps[1:]:
        if not held.key or not all(IDENT.match(k) for k in held.key):
            raise SnapshotError(f"{t.model}: a delta without a usable unique key")
        src = f"{alias}.{rel}"
        match = " AND ".join(f"{dst}.{quote_ident(k)} = delta_rows.{quote_ident(k)}"
                             for k in held.key)
        keys = ", ".join(quote_ident(k) for k in held.key)
        conn.exec_driver_sql(
            f"DELETE FROM {dst} USING (SELECT DISTINCT {keys} FROM {src}) AS delta_rows "
            f"WHERE {match}")
        conn.exec_driver_sql(f"INSERT INTO {dst} BY NAME SELECT * FROM {src}")
    rows = int(conn.exec_driver_sql(f"SELECT count(*) FROM {dst}").scalar() or 0)
    if rows != t.rows:
        raise SnapshotError(f"{t.model}: restored {rows} rows, snapshot has {t.rows}; "
                            "nothing was rolled back")
    if t.seq_sum:
        seqs = list(t.seq_sum)
        sums = conn.exec_driver_sql(
            f"SELECT {', '.join(f'sum({quote_ident(c)})' for c in seqs)} FROM {dst}").one()
        got = {c: int(str(v)) if v is not None else None
               for c, v in zip(seqs, sums, strict=True)}
        if got != t.seq_sum:
            raise SnapshotError(
                f"{t.model}: restored sequence sums {got} differ from the snapshot's "
                f"{t.seq_sum} (changed outside the monitor?); nothing was rolled back")

