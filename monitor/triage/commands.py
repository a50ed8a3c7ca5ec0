"""Step 7, commands: what on-call runs next, per root cause (reproduce, fix, release,
reject or retract, roll back, resume), with this run's ids filled in.
"""

from __future__ import annotations

import json
import logging
import shlex

from monitor.core.manifest import ModelInfo
from monitor.recovery.snapshots import list_snapshots
from monitor.store import state
from monitor.triage.context import UNDETERMINED, Context
from monitor.triage.findings import Triage
from monitor.triage.isolation import (
    SCRATCH_TARGET,
    scratch_schema,
    with_paths_between,
    write_scratch_profile,
)
from monitor.warehouse.connection import backend_for
from monitor.warehouse.engine import Unsupported

log = logging.getLogger(__name__)


def _culprit_batches(ctx: Context, t: Triage) -> list[str]:
    """Published batches the root cause points at (candidates for a retraction)."""
    root = t.root_cause
    ids: list[str] = []
    if root == "duplicate_batch":
        ids = [b.batch_id for b in t.batches if b.resend]
    elif root == "key_explosion":
        ids = list(t.expansion_point.batches)
    elif root in ("null_storm", "logic_regression"):
        kind = "nulls" if root == "null_storm" else "scale"
        feeds = {ctx.node(s.relation).identifier for s in t.columns  # type: ignore[union-attr]
                 if s.kind == kind and ctx.node(s.relation) is not None
                 and ctx.node(s.relation).resource_type == "source"}  # type: ignore[union-attr]
        ids = [b.batch_id for b in t.batches if b.feed in feeds and b.status != "quarantined"]
    elif root == "volume_surge":
        surging = {f.split(" ", 1)[0] for f in t.evidence}
        feeds = {n.identifier for n in (ctx.node(s) for s in surging) if n is not None}
        ids = [b.batch_id for b in t.batches if b.feed in feeds and b.status != "quarantined"]
    return ids


_FIX = {
    "volume_surge": [
        "Confirm the volume with the feed owner. If it is real, size the warehouse "
        "([warehouse] memory_limit/threads) and keep the partition-pruned merges; if not, "
        "retract the batch(es) below.",
    ],
    "partial_delivery": [
        "Ask the feed owner whether the day's file was cut short. If more of the day is "
        "coming, reject the held batch and let the full delivery land; if the day really "
        "was quiet, release it.",
    ],
    "key_explosion": [
        "Make the join input one row per key before the join (dedupe the lookup to its latest "
        "version per key) and ask the sender to fix the file; add a contract expectation that "
        "the key is unique per delivery.",
    ],
    "duplicate_batch": [
        "Retract the re-delivered batch; the facts' pre-merge dedupe keeps one row per key "
        "(see the full-refresh diff), aggregates over staging/intermediate double-count.",
    ],
    "incremental_predicate": [
        "Restore the high-watermark filter on the publish sequence (not business dates) and "
        "the unique_key, then rebuild the facts with `monitor once --full-refresh` (or roll "
        "back and let the next cycle re-merge).",
    ],
    "schema_drift": [
        "Agree the layout with the sender and re-deliver, or change the feed contract "
        "([ingest.feeds.<feed>].columns) and staging together; the file stays in "
        "raw.ingest_quarantine until then.",
    ],
    "null_storm": [
        "Ask the sender for a corrected file; retract the batch meanwhile and add a not-null "
        "expectation to the feed contract so the gate holds such batches.",
    ],
    "logic_regression": [
        "Compare the sample rows with the last good run: fix the unit/transformation at its "
        "origin, retract the batch and roll the facts back to the last good snapshot.",
    ],
    UNDETERMINED: ["Read the evidence below (failed models, alerts) and the dbt log."],
}


def incident_commands(ctx: Context, t: Triage, suspect: ModelInfo | None
                      ) -> dict[str, list[str]]:
    """Commands by purpose (reproduce, fix, release, reject, rollback, resume)."""
    cfg, rid = ctx.cfg, ctx.run.run_id
    mon = "monitor" + (f" --config {shlex.quote(str(cfg.source))}" if cfg.source else "")
    why = shlex.quote(f"incident {rid}: {t.root_cause}")
    cmds: dict[str, list[str]] = {
        "reproduce": [f"{mon} triage --run {rid} --format html", f"{mon} status"],
        "fix": list(_FIX.get(t.root_cause, [])),
        "release": [], "reject": [], "rollback": [], "resume": [],
    }
    models = t.isolation.models or ([suspect.name] if suspect else [])
    if models:
        cmds["reproduce"] += _rebuild_commands(ctx, models)
    if t.root_cause == "incremental_predicate":
        cmds["fix"].append(f"{mon} once --full-refresh")
    held = [b.batch_id for b in t.batches if b.status == "held"]
    cmds["release"] = [f"{mon} release {b} --reason {shlex.quote('checked: data is right')}"
                       for b in held]
    cmds["reject"] = [f"{mon} reject {b} --reason {why}" for b in held]
    cmds["reject"] += [f"{mon} reject {b} --retract --reason {why}"
                       for b in _culprit_batches(ctx, t) if b not in held]
    snap = _restore_point(ctx)
    if snap:
        cmds["rollback"] = [f"{mon} rollback --to {snap} --reason {why}", f"{mon} once"]
    if _paused(ctx) or ctx.run.status in ("failed", "held"):
        # The daemon pauses downstream work on such runs (scheduler.pause_on_critical).
        cmds["resume"] = [f"{mon} status",
                          f"{mon} resume --reason {shlex.quote('fixed: ' + t.root_cause)}"]
    return cmds


def _rebuild_commands(ctx: Context, models: list[str]) -> list[str]:
    """The isolated full refresh by hand: dbt through a profile generated into the
    evidence folder whose one output writes into the scratch place (production's
    target as a build renders it, changed by the backend), so a pasted command never
    rebuilds production, whatever the user's own profile reads from the environment."""
    cfg, rid = ctx.cfg, ctx.run.run_id
    backend = backend_for(cfg.warehouse)
    name, copy = scratch_schema(rid), f"/tmp/triage-{rid}"
    try:
        profile, secrets = write_scratch_profile(
            cfg, ctx.evidence_dir / "reproduce", backend.scratch_output(name, copy))
    except Unsupported:  # no isolated rebuild here: the report's note says so
        return []
    except Exception as exc:  # dbt's profile errors: the rest of the report stands
        log.warning("no reproduce profile: %s", exc)
        return []
    d = cfg.dbt
    dbt = ["DBT_SEND_ANONYMOUS_USAGE_STATS=false", "dbt", "build",
           "--project-dir", shlex.quote(str(d.project_dir)),
           "--profiles-dir", shlex.quote(str(ctx.evidence_dir / "reproduce")),
           "--profile", shlex.quote(profile), "--target", SCRATCH_TARGET,
           *(["--vars", shlex.quote(json.dumps(d.vars, sort_keys=True))] if d.vars else []),
           "--target-path", f"/tmp/triage-{rid}-target",
           "--select", *_selected(ctx, models), "--full-refresh"]
    # the profile names its secrets' variables; never the values
    needed = [f': "${{{var}:?set {var} to the {var.removeprefix("DQM_TRIAGE_DBT_").lower()}'
              f' of production\'s dbt output}}"' for var in sorted(secrets)]
    return needed + backend.isolation_commands(cfg.warehouse, name, copy, " ".join(dbt),
                                                shlex.quote(str(d.target_path)))


def _selected(ctx: Context, names: list[str]) -> list[str]:
    """The models the isolated rebuild selected: ``names`` and the models on the paths
    between them (else an unselected view between two of them would be deferred to
    production and the rebuilt model read production's copy of its parent)."""
    nodes = [n for n in (ctx.node(m) for m in names) if n is not None]
    if ctx.project is None or len(nodes) != len(names):
        return names
    return [n.name for n in with_paths_between(ctx.project, nodes)]


def _restore_point(ctx: Context) -> str | None:
    """The newest kept snapshot of a run before this one (the last known good facts)."""
    started = {r.run_id: r.started_at for r in ctx.runs}
    for snap in list_snapshots(ctx.cfg):
        at = started.get(snap.run_id)
        if at is not None and at < ctx.run.started_at:
            return snap.run_id
    return None


def _paused(ctx: Context) -> bool:
    return state.paused(ctx.st) is not None
