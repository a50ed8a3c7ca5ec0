"""A multi-week incident rehearsal: one cycle per generated day, one incident per scenario.

    .venv/bin/python bench/rehearse.py [--days 60] [--claims-per-day N] [--out DIR]

Each day is generated on its own (only that day's injection), landed, and run through
``run_cycle(cfg, as_of=day)`` in a fresh workspace. After each cycle the rehearsal plays
the daemon (the freshness job at the end of the logical day, the circuit breaker) and the
on-call operator (reject held batches, retract + roll back a merged bad batch, resume).
It prints one row per scenario and the number of pages (critical alerts enqueued) on
clean days, which must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")

from monitor import alerting, batches, operations, snapshots, state  # noqa: E402
from monitor.config import Config, load_config, state_url  # noqa: E402
from monitor.cycle import CycleResult, critical_reason, run_cycle  # noqa: E402
from monitor.demo import land_day, workspace  # noqa: E402
from monitor.generate import Injection, generate  # noqa: E402
from monitor.ingest import ledger_tables  # noqa: E402
from monitor.manifest import load_manifest  # noqa: E402
from monitor.warehouse import warehouse  # noqa: E402

ACTOR = "rehearsal"
DELIVERY = dtime(6, 0)  # files land at 06:00 of their logical day
SEVERITY_RANK = {"critical": 3, "warning": 2, "info": 1}
HANDLED = "handled"  # expected outcome of a scenario the pipeline absorbs (no incident)


@dataclass(frozen=True)
class Scenario:
    """One incident: injection ``kind`` on day index ``offset``, carried by ``feed``."""

    name: str
    kind: str
    offset: int
    feed: str
    expect: str  # triage class expected, or HANDLED
    corrupts: bool = True  # merging its batch would make the facts wrong


# Gate/contract-detected incidents early; drift-only ones once drift has 7 same-weekday
# points (day index >= 49 with seasonal drift), off the month-end regime of the default start.
SCENARIOS_60: tuple[Scenario, ...] = (
    Scenario("broken_file", "broken_file", 10, "plans", "schema_drift"),
    Scenario("schema_drift", "schema_drift", 14, "claims", "schema_drift"),
    Scenario("null_storm", "null_storm", 18, "claims", "null_storm"),
    Scenario("duplicate_batch", "duplicate_batch", 22, "claims", "duplicate_batch",
             corrupts=False),
    Scenario("dup_enrichment_key", "dup_enrichment_key", 26, "companies", "key_explosion"),
    Scenario("late_updates", "late_updates", 30, "claims", HANDLED, corrupts=False),
    Scenario("feed_stops", "feed_stops", 34, "claims", "freshness", corrupts=False),
    Scenario("logic_regression", "logic_regression", 50, "claims", "logic_regression"),
    Scenario("volume_surge", "volume_surge", 57, "claims", "volume_surge"),
)
DEFAULT_START = date(2026, 1, 5)  # a Monday; index 50 = Tue Feb 24, 57 = Tue Mar 3


@dataclass
class Outcome:
    scenario: Scenario
    day: date
    detected: bool = False
    detected_day: date | None = None
    status: str = ""
    severity: str = "-"
    alerts: list[str] = field(default_factory=list)
    root_cause: str = "-"
    clean: bool = False
    clean_why: str = ""
    actions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Detected (or, for a handled scenario, absorbed without an incident) and clean."""
        if self.scenario.expect == HANDLED:
            return not self.detected and self.clean
        return self.detected and self.clean


@dataclass
class DayLog:
    day: date
    scenario: str
    status: str
    seconds: float
    pages: int
    alerts: list[str]
    note: str = ""


@dataclass
class Rehearsal:
    outcomes: list[Outcome]
    days: list[DayLog]

    @property
    def clean_days(self) -> list[DayLog]:
        return [d for d in self.days if not d.scenario]

    @property
    def clean_day_pages(self) -> int:
        return sum(d.pages for d in self.clean_days)

    @property
    def failures(self) -> list[str]:
        out = [f"{o.scenario.name}: detected={o.detected} clean={o.clean} ({o.clean_why})"
               for o in self.outcomes if not o.ok]
        out += [f"page on clean day {d.day}{f' ({d.note})' if d.note else ''}: "
                f"{', '.join(a for a in d.alerts if a.startswith('critical'))}"
                for d in self.clean_days if d.pages]
        return out


# -- state store and warehouse reads ----------------------------------------------------


def _max_outbox_id(st: sa.Engine) -> int:
    with st.connect() as conn:
        return int(conn.execute(sa.select(sa.func.max(alerting.alert_outbox.c.id))).scalar() or 0)


def _fired_since(st: sa.Engine, after: int) -> list[tuple[str, str]]:
    """(severity, dedup_key) of 'firing' notifications enqueued after outbox id ``after``."""
    t = alerting.alert_outbox.c
    with st.connect() as conn:
        rows = conn.execute(
            sa.select(t.severity, t.dedup_key).where(t.id > after, t.event == "firing")
            .order_by(t.id)
        ).all()
    return sorted({(str(r[0]), str(r[1])) for r in rows})


def _ledger(cfg: Config) -> list[dict[str, object]]:
    b = ledger_tables(sa.MetaData(), cfg.ingest.schema)[0]
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        rows = conn.execute(sa.select(b.c.batch_id, b.c.feed, b.c.source_file, b.c.status))
        return [dict(r) for r in rows.mappings()]


def _deliveries(cfg: Config) -> list[dict[str, object]]:
    """Every delivered file with its feed, repeats of earlier bytes included."""
    b, f, _ = ledger_tables(sa.MetaData(), cfg.ingest.schema)
    q = sa.select(b.c.feed, f.c.source_file).join_from(f, b, f.c.batch_id == b.c.batch_id)
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def _logical_day(source_file: str) -> date | None:
    """The landing folder of a file is its logical day (``<feed>/<YYYY-MM-DD>/<file>``)."""
    try:
        return date.fromisoformat(Path(source_file).parent.name)
    except ValueError:
        return None


def _bad_batches(cfg: Config, sc: Scenario, day: date) -> list[dict[str, object]]:
    return [r for r in _ledger(cfg)
            if r["feed"] == sc.feed and _logical_day(str(r["source_file"])) == day]


def fact_health(cfg: Config) -> dict[str, tuple[int, int]]:
    """Per fact model: (rows, distinct unique keys); plus ``fct_claims.amount`` sum x100."""
    project = load_manifest(cfg.dbt.target_path)
    out: dict[str, tuple[int, int]] = {}
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        for m in project.models.values():
            if m.layer != "fct" or not m.grain or not m.is_relation:
                continue
            rel = sa.table(m.identifier, *(sa.column(c) for c in m.grain), schema=m.schema)
            key = sa.tuple_(*(rel.c[c] for c in m.grain)) if len(m.grain) > 1 else rel.c[m.grain[0]]
            row = conn.execute(sa.select(sa.func.count(), sa.func.count(key.distinct()))
                               .select_from(rel)).one()
            out[m.name] = (int(row[0]), int(row[1]))
    return out


def _dup_facts(health: dict[str, tuple[int, int]]) -> list[str]:
    return [f"{m} {rows - keys} duplicate keys" for m, (rows, keys) in health.items()
            if rows != keys]


def _root_cause(result: CycleResult) -> str:
    doc = (result.evidence_dir or Path("/nonexistent")) / "report.json"
    if not doc.exists():
        return "-"
    return str(json.loads(doc.read_text(encoding="utf-8")).get("root_cause") or "-")


# -- the daemon's and the operator's parts -----------------------------------------------


def freshness_check(cfg: Config, st: sa.Engine, day: date) -> list[str]:
    """The freshness job at the end of ``day``, on the rehearsal's logical clock (each
    delivery at 06:00 of its landing day). Returns the alerts it fired."""
    last: dict[str, datetime | float | None] = {f: None for f in cfg.ingest.feeds}
    for r in _deliveries(cfg):
        d = _logical_day(str(r["source_file"]))
        feed = str(r["feed"])
        if d is None or feed not in last:
            continue
        at = datetime.combine(d, DELIVERY, tzinfo=UTC)
        prev = last[feed]
        if not isinstance(prev, datetime) or at > prev:
            last[feed] = at
    now = datetime.combine(day + timedelta(days=1), dtime(0, 0), tzinfo=UTC)
    obs = alerting.Observations(run_id=f"freshness-{day}", run_status="",
                                feed_last_batch=last, now=now)
    rules = [r for r in cfg.alerting.rules if r.kind == "freshness"]
    rec = alerting.reconcile(
        st, alerting.evaluate(rules, obs), now, sinks=cfg.alerting.sinks,
        skip_rules=frozenset(r.name for r in cfg.alerting.rules if r.kind != "freshness"),
    )
    return list(rec.fired)


def trip_breaker(st: sa.Engine, result: CycleResult) -> str | None:
    """What the daemon does after a cycle (scheduler._trip_breaker)."""
    reason = critical_reason(result)
    if reason is not None:
        operations.pause(st, reason, result.run_id)
    return reason


def operate(cfg: Config, st: sa.Engine, sc: Scenario | None, day: date,
            result: CycleResult) -> list[str]:
    """On call: reject held batches, retract + roll back a merged bad batch, resume."""
    actions: list[str] = []
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        held = batches.list_batches(conn, cfg.ingest.schema, batches.HELD)
    for b in held:
        operations.decide_batch(cfg, b.batch_id, "reject", f"rehearsal {day}: bad delivery",
                                ACTOR)
        actions.append(f"reject {b.batch_id}")
    if sc is not None and sc.corrupts:
        merged = [r for r in _bad_batches(cfg, sc, day) if r["status"] == batches.PUBLISHED]
        for r in merged:
            snapshots.retract_batch(cfg, str(r["batch_id"]), f"rehearsal {day}: {sc.name}", ACTOR)
            actions.append(f"retract {r['batch_id']}")
        kept = snapshots.list_snapshots(cfg)
        if merged and kept:
            snapshots.rollback(cfg, kept[0].run_id, f"rehearsal {day}: {sc.name}", ACTOR)
            actions.append(f"rollback to {kept[0].run_id}")
    if state.paused(st) is not None:
        operations.resume(cfg, f"rehearsal {day}: handled", ACTOR)
        actions.append("resume")
    return actions


# -- one day, one scenario ----------------------------------------------------------------


def judge(cfg: Config, sc: Scenario, day: date, result: CycleResult,
          fired: list[tuple[str, str]], fresh: list[str]) -> Outcome:
    """Was the incident detected in this day's run, and did the facts stay clean?"""
    o = Outcome(sc, day, status=result.status, root_cause=_root_cause(result))
    o.alerts = [k for _, k in fired]
    if sc.kind == "feed_stops":
        o.detected = any(k.endswith(f":{sc.feed}") for k in fresh)
        o.severity = _severity(cfg, fresh) if o.detected else "-"
        o.root_cause = "freshness" if o.detected else o.root_cause
    else:
        data_alerts = [(s, k) for s, k in fired if "runtime_seconds" not in k
                       and ":cost" not in k and not k.startswith("feed_stale")]
        o.detected = result.status in ("held", "failed") or bool(data_alerts)
        o.severity = max((s for s, _ in data_alerts), key=lambda s: SEVERITY_RANK.get(s, 0),
                         default="-")
    o.detected_day = day if o.detected else None
    health = fact_health(cfg)
    why = _dup_facts(health)
    if sc.corrupts:
        merged = [str(r["batch_id"]) for r in _bad_batches(cfg, sc, day)
                  if r["status"] == batches.PUBLISHED]
        why += [f"bad batch {b} merged" for b in merged]
    o.clean = not why
    o.clean_why = "; ".join(why) or _clean_text(sc)
    return o


def _severity(cfg: Config, keys: Sequence[str]) -> str:
    sev = {r.name: r.severity for r in cfg.alerting.rules}
    return max((sev.get(k.split(":")[0], "-") for k in keys), key=lambda s: SEVERITY_RANK.get(s, 0))


def _clean_text(sc: Scenario) -> str:
    if sc.corrupts:
        return "no duplicate fact keys; bad batch not merged"
    return "no duplicate fact keys"


def rehearse(
    cfg: Config, out: Path, *, n_days: int, claims_per_day: int,
    scenarios: Sequence[Scenario] = SCENARIOS_60, start: date = DEFAULT_START, seed: int = 7,
    echo: Callable[[str], None] = print,
) -> Rehearsal:
    """Run the rehearsal in a fresh workspace under ``out`` (``cfg`` is moved there)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = workspace(cfg, out / "ws")
    feeds = out / "feeds"
    by_offset = {s.offset: s for s in scenarios if s.offset < n_days}
    outcomes: list[Outcome] = []
    log: list[DayLog] = []
    last_actions: list[str] = []
    for i in range(n_days):
        day = start + timedelta(days=i)
        sc = by_offset.get(i)
        inject = [Injection(sc.kind, day)] if sc else []
        generate(feeds, day, 1, claims_per_day, seed=seed, inject=inject, progress=False)
        land_day(feeds, cfg.ingest.landing_dir, day)
        st = state.open_state(state_url(cfg))
        try:
            before = _max_outbox_id(st) if i else 0
            t0 = time.perf_counter()
            result = run_cycle(cfg, trigger="rehearsal", as_of=day)
            seconds = time.perf_counter() - t0
            fresh = freshness_check(cfg, st, day)
            fired = _fired_since(st, before)
            trip_breaker(st, result)
            if sc is not None:
                outcomes.append(judge(cfg, sc, day, result, fired, fresh))
            actions = operate(cfg, st, sc, day, result)
            if sc is not None:
                outcomes[-1].actions = actions
        finally:
            st.dispose()
        pages = sum(1 for s, _ in fired if s == "critical")
        entry = DayLog(day, sc.name if sc else "", result.status, seconds, pages,
                       [f"{s}:{k}" for s, k in fired])
        if log and any(a.startswith("rollback") for a in last_actions):
            entry.note = "day after an operator rollback"
        last_actions = actions
        log.append(entry)
        echo(f"{day} {day:%a} {entry.scenario or '-':<20} {result.status:<8} "
             f"{seconds:6.1f} s  pages={pages}  alerts={', '.join(entry.alerts) or '-'}"
             + (f"  reason={result.reason[:120]}" if result.reason else ""))
    return Rehearsal(outcomes, log)


def render(r: Rehearsal) -> str:
    head = (f"{'scenario':<19} {'day':<10} {'detected':<9} {'run(day)':<10} {'severity':<9} "
            f"{'root cause':<18} {'facts clean':<11} note")
    lines = [head, "-" * len(head)]
    for o in r.outcomes:
        det = "yes" if o.detected else ("no (ok)" if o.scenario.expect == HANDLED else "NO")
        lines.append(
            f"{o.scenario.name:<19} {o.day.isoformat():<10} {det:<9} "
            f"{o.detected_day.isoformat() if o.detected_day else '-':<10} {o.severity:<9} "
            f"{o.root_cause:<18} {'yes' if o.clean else 'NO':<11} {o.clean_why}"
            + (f"; expected {o.scenario.expect}" if o.root_cause != o.scenario.expect
               and o.scenario.expect != HANDLED else "")
        )
    secs = sorted(d.seconds for d in r.days)
    clean = r.clean_days
    warn = sum(1 for d in clean if d.alerts)
    lines += [
        "",
        f"clean days: {len(clean)}; pages (critical alerts enqueued) on clean days: "
        f"{r.clean_day_pages}; clean days with any alert: {warn}"
        + (f" ({_by_rule(clean)})" if warn else ""),
        f"cycle wall time: mean {sum(secs) / len(secs):.1f} s, median "
        f"{secs[len(secs) // 2]:.1f} s, max {secs[-1]:.1f} s, total {sum(secs) / 60:.1f} min",
    ]
    return "\n".join(lines)


def _by_rule(days: Sequence[DayLog]) -> str:
    """Alerts fired on these days, counted per severity and rule."""
    counts: dict[str, int] = {}
    for d in days:
        for a in d.alerts:
            severity, rule = a.split(":")[:2]
            counts[f"{severity} {rule}"] = counts.get(f"{severity} {rule}", 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


def with_hard_drift_model(cfg: Config, glob: str) -> Config:
    """``cfg`` with every critical drift rule limited to models matching ``glob``."""
    rules = tuple(
        replace(r, model=glob) if r.kind == "drift" and r.severity == "critical" else r
        for r in cfg.alerting.rules
    )
    return replace(cfg, alerting=replace(cfg.alerting, rules=rules))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--claims-per-day", type=int, default=500)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "rehearse")
    ap.add_argument("--start", type=date.fromisoformat, default=DEFAULT_START)
    ap.add_argument("--hard-drift-model", default="",
                    help="try a model glob on the paging drift rule (e.g. 'fct_*')")
    args = ap.parse_args(argv)
    cfg = load_config(REPO / "config.toml")
    if args.hard_drift_model:
        cfg = with_hard_drift_model(cfg, args.hard_drift_model)
    t0 = time.perf_counter()
    r = rehearse(cfg, args.out, n_days=args.days, claims_per_day=args.claims_per_day,
                 start=args.start)
    print()
    print(render(r))
    print(f"rehearsal wall time {(time.perf_counter() - t0) / 60:.1f} min")
    for f in r.failures:
        print(f"FAIL {f}")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
