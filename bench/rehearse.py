"""A multi-week incident rehearsal: one cycle per generated day, one incident per scenario.

    .venv/bin/python bench/rehearse.py [--days 60] [--history 14] [--claims-per-day N]
                                       [--only NAME,...] [--out DIR]
                                       [--engine postgres [--pg-url URL]]
                                       [--engine spark [--spark-url sc://host:port]]
    .venv/bin/python bench/rehearse.py --two-weeks --claims-per-day 300 --engine spark

Each day is generated on its own (only that day's injection), landed, and run through
``run_cycle(cfg, as_of=day)`` in a fresh workspace. After each cycle the rehearsal plays
the daemon (the freshness job at the end of the logical day, the circuit breaker) and the
on-call operator (reject held batches, retract + roll back a merged bad batch, resume).
The first ``--history`` days are clean; :func:`schedule` then places each scenario of
:data:`CATALOGUE` on its own weekday (a Saturday for the weekend surge), off month ends,
with a clean day between incidents, as far as ``--days`` allows.

It prints one row per scenario, side by side with an Elementary-default volume detector
(bench/elementary.py) run on the same daily series (rows each raw feed took in, each
fact's row growth), and the number of pages (critical alerts enqueued) on clean days,
which must be 0.

``--engine postgres`` runs it with the warehouse on PostgreSQL: a fresh database on the
``--pg-url`` server (its user creates it; dropped afterwards), else on a throwaway
PostgreSQL 15 server started as the tests start theirs (``postgres_database`` of
bench/cycle.py). ``--engine spark`` runs it on Apache Spark over Spark Connect (dbt
target ``spark``): on the ``--spark-url`` server, else on a throwaway ``local[2]``
Connect server (``spark_endpoint`` of bench/cycle.py). The state store stays a SQLite
file in the workspace.

``--two-weeks`` runs the two-week rehearsal of tests/test_rehearsal.py (13 days from
:data:`TWO_WEEKS_START`, the scenarios of :data:`TWO_WEEKS`): the gate- and
ingest-detected incidents, which need no drift history.
"""

from __future__ import annotations

import argparse
import contextlib
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

from bench import elementary  # noqa: E402
from bench.cycle import postgres_database, spark_endpoint  # noqa: E402
from dqm_demo.demo import land_day, workspace  # noqa: E402
from dqm_demo.generate import Injection, generate  # noqa: E402
from monitor.alerting.freshness import check_freshness  # noqa: E402
from monitor.alerting.outbox import pages_since  # noqa: E402
from monitor.core.config import Config, load_config, state_url  # noqa: E402
from monitor.core.manifest import load_manifest  # noqa: E402
from monitor.cycle.result import CycleResult  # noqa: E402
from monitor.cycle.run import run_cycle  # noqa: E402
from monitor.ops import operations  # noqa: E402
from monitor.recovery import retract, rollback, snapshots  # noqa: E402
from monitor.store import batches, state  # noqa: E402
from monitor.store.batches import ledger_tables  # noqa: E402
from monitor.store.state import alert_outbox  # noqa: E402
from monitor.warehouse.connection import warehouse  # noqa: E402

ACTOR = "rehearsal"
DELIVERY = dtime(6, 0)  # files land at 06:00 of their logical day
SEVERITY_RANK = {"critical": 3, "warning": 2, "info": 1}
HANDLED = "handled"  # expected outcome of a scenario the pipeline absorbs (no incident)
HISTORY = 14  # clean days before the first scenario: detection is required from then on
WEEKDAYS = (0, 1, 2, 3, 4)
SATURDAY = (5,)

# The root-cause classes issue 16's faults are expected to get, one constant each: the
# detection is being built alongside, and a rename there is one edit here.
VOLUME_SURGE = "volume_surge"
PARTIAL_DELIVERY = "partial_delivery"
IMPLAUSIBLE_DATES = "logic_regression"
DUPLICATE_BATCH = "duplicate_batch"
INCREMENTAL_PREDICATE = "incremental_predicate"

# The business-date watermark the incremental_predicate scenario deploys for one day, in
# a copy of the project: late and updated claims (received before the fact's newest
# received_date) are dropped instead of merged.
PREDICATE_MODEL = "models/marts/fct_claims.sql"
PREDICATE_OLD = "    where _publish_seq > {{ watermark }}\n"
PREDICATE_NEW = "    where received_date > (select max(received_date) from {{ this }})\n"


@dataclass(frozen=True)
class Scenario:
    """One incident: injection ``kind`` on day index ``offset``, carried by ``feed``.

    ``offset`` -1 (the catalogue) means :func:`schedule` places it on one of
    ``weekdays``, at ``min_day`` or later.
    """

    name: str
    kind: str
    offset: int
    feed: str
    expect: str  # triage class expected, or HANDLED
    corrupts: bool = True  # merging its batch would make the facts wrong
    held: bool = False  # expected held at the gate, before any merge
    note: str = ""  # what else the table should say (e.g. a warning is acceptable)
    weekdays: tuple[int, ...] = WEEKDAYS
    min_day: int = 0
    patch: bool = False  # deploys the business-date incremental filter for that day


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

# Issue 16's independent fault set first (its detection is what is being measured),
# then the earlier scenarios; drift-only ones once drift has 7 same-weekday points.
ISSUE16: tuple[Scenario, ...] = (
    Scenario("surge_in_band", "surge_in_band", -1, "claims", VOLUME_SURGE, held=True),
    Scenario("weekend_surge", "weekend_surge", -1, "claims", VOLUME_SURGE, corrupts=False,
             note="a warning is acceptable", weekdays=SATURDAY),
    Scenario("partial_day", "partial_day", -1, "claims", PARTIAL_DELIVERY, held=True),
    Scenario("future_dates", "future_dates", -1, "claims", IMPLAUSIBLE_DATES, held=True),
    Scenario("same_cycle_resend", "same_cycle_resend", -1, "claims", DUPLICATE_BATCH,
             corrupts=False, held=True),
    Scenario("benign_duplicates", "benign_duplicates", -1, "claims", HANDLED, corrupts=False),
    Scenario("corrections", "corrections", -1, "claims", HANDLED, corrupts=False),
    Scenario("incremental_predicate", "late_updates", -1, "claims", INCREMENTAL_PREDICATE,
             corrupts=False, patch=True),
)
# The two-week rehearsal (tests/test_rehearsal.py and ``--two-weeks``): incidents the
# contract gate and the ingest catch without drift history, one clean day between them and
# the weekend of 10-11 January clean.
TWO_WEEKS_START = date(2026, 1, 5)  # a Monday
TWO_WEEKS_DAYS = 13
TWO_WEEKS: tuple[Scenario, ...] = (
    Scenario("broken_file", "broken_file", 2, "plans", "schema_drift"),
    Scenario("schema_drift", "schema_drift", 4, "claims", "schema_drift"),
    Scenario("null_storm", "null_storm", 7, "claims", "null_storm"),
    Scenario("dup_enrichment_key", "dup_enrichment_key", 9, "companies", "key_explosion"),
    Scenario("duplicate_batch", "duplicate_batch", 11, "claims", "duplicate_batch",
             corrupts=False),
    Scenario("logic_regression", "logic_regression", 12, "claims", "logic_regression"),
)
CATALOGUE: tuple[Scenario, ...] = ISSUE16 + tuple(
    replace(s, offset=-1, min_day=49 if s.offset >= 49 else 0) for s in SCENARIOS_60)


def _month_end(day: date) -> bool:
    """The generator's (and drift's) month-end regime: the last 3 days of a month."""
    return (day + timedelta(days=3)).month != day.month


def schedule(n_days: int, start: date = DEFAULT_START, history: int = HISTORY,
             catalogue: Sequence[Scenario] = CATALOGUE, gap: int = 2) -> list[Scenario]:
    """Place each scenario, in catalogue order, on the first free day that suits it.

    A day suits when it is at or after ``history`` and the scenario's ``min_day``, is one
    of its weekdays, is not a month end, and lies ``gap`` days or more from every placed
    incident. Scenarios that do not fit in ``n_days`` are left out (see :func:`unplaced`).
    """
    taken: list[int] = []
    out: list[Scenario] = []
    for sc in catalogue:
        for i in range(max(history, sc.min_day), n_days):
            day = start + timedelta(days=i)
            if (day.weekday() in sc.weekdays and not _month_end(day)
                    and all(abs(i - j) >= gap for j in taken)):
                taken.append(i)
                out.append(replace(sc, offset=i))
                break
    return sorted(out, key=lambda s: s.offset)


def unplaced(placed: Sequence[Scenario], catalogue: Sequence[Scenario] = CATALOGUE) -> list[str]:
    """Names of catalogue scenarios the schedule had no day for."""
    names = {s.name for s in placed}
    return [s.name for s in catalogue if s.name not in names]


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
    held: bool = False  # a batch of its feed that day was held at the gate
    pages: int = 0
    clean: bool = False
    clean_why: str = ""
    actions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Detected (or, for a handled scenario, absorbed without an incident) and clean.
        A model change (``patch``) has no bad batch to hold: what its day's build merged
        is wrong until on-call rolls back, so detection on its day is the bar."""
        if self.scenario.expect == HANDLED:
            return not self.detected and self.clean
        if self.scenario.patch:
            return self.detected and self.detected_day == self.day
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
    reason: str = ""


@dataclass
class Rehearsal:
    outcomes: list[Outcome]
    days: list[DayLog]
    series: dict[str, list[float]] = field(default_factory=dict)  # per day, for baselines
    unplaced: list[str] = field(default_factory=list)

    def elementary_flags(self) -> dict[int, list[elementary.Score]]:
        """Day index -> what the Elementary-default detector flags on that day."""
        return elementary.flagged_days(self.series)

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
        return int(conn.execute(sa.select(sa.func.max(alert_outbox.c.id))).scalar() or 0)


def _fired_since(st: sa.Engine, after: int) -> list[tuple[str, str]]:
    """(severity, dedup_key) of 'firing' notifications enqueued after outbox id ``after``."""
    t = alert_outbox.c
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


def day_series(cfg: Config, day: date, facts: dict[str, tuple[int, int]]) -> dict[str, float]:
    """The day's points of the series a stock volume monitor would watch: rows each raw
    feed took in from files of that logical day (held batches too: they are in raw), and
    each fact's row-count growth since the previous day."""
    b = ledger_tables(sa.MetaData(), cfg.ingest.schema)[0]
    rows = {f"raw.{feed}": 0.0 for feed in cfg.ingest.feeds}
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        for r in conn.execute(sa.select(b.c.feed, b.c.source_file, b.c.rows_loaded)):
            if _logical_day(str(r.source_file)) == day and f"raw.{r.feed}" in rows:
                rows[f"raw.{r.feed}"] += float(r.rows_loaded)
    return rows | {f"{m}.growth": float(n) for m, (n, _) in facts.items()}


def _growth(points: dict[str, float], previous: dict[str, float]) -> dict[str, float]:
    """Fact counts in ``points`` turned into growth since ``previous`` counts."""
    return {k: v - previous.get(k, 0.0) if k.endswith(".growth") else v
            for k, v in points.items()}


def stale_claims(cfg: Config) -> int:
    """Claims whose latest published version (staging) is missing from fct_claims or newer
    than the one it holds: what a dropping incremental filter leaves behind."""
    project = load_manifest(cfg.dbt.target_path)
    stg, fct = project.by_name("stg_benefits__claims"), project.by_name("fct_claims")
    s_rel, f_rel = (sa.table(m.identifier, sa.column("claim_id"), sa.column("updated_at"),
                             schema=m.schema) for m in (stg, fct))
    latest = (sa.select(s_rel.c.claim_id, sa.func.max(s_rel.c.updated_at).label("u"))
              .group_by(s_rel.c.claim_id).subquery("s"))
    q = (sa.select(sa.func.count())
         .select_from(latest.outerjoin(f_rel, f_rel.c.claim_id == latest.c.claim_id))
         .where(sa.or_(f_rel.c.claim_id.is_(None), f_rel.c.updated_at < latest.c.u)))
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        return int(conn.execute(q).scalar() or 0)


def _dup_facts(health: dict[str, tuple[int, int]]) -> list[str]:
    return [f"{m} {rows - keys} duplicate keys" for m, (rows, keys) in health.items()
            if rows != keys]


def _root_cause(result: CycleResult) -> str:
    doc = (result.evidence_dir or Path("/nonexistent")) / "report.json"
    if not doc.exists():
        return "-"
    return str(json.loads(doc.read_text(encoding="utf-8")).get("root_cause") or "-")


# -- the daemon's and the operator's parts -----------------------------------------------


def freshness_check(cfg: Config, day: date) -> list[str]:
    """The daemon's freshness job at the end of ``day``, on the rehearsal's logical
    clock (each delivery at 06:00 of its landing day). Returns the alerts it fired."""
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
    return check_freshness(cfg, None, now=now, last=last)


def predicate_project(root: Path, source: Path) -> Path:
    """A copy of the dbt project whose fct_claims filters on a business date."""
    dest = root / "project-business-date"
    if not dest.exists():
        shutil.copytree(source, dest,
                        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
        model = dest / PREDICATE_MODEL
        text = model.read_text(encoding="utf-8")
        if PREDICATE_OLD not in text:
            raise RuntimeError(f"{PREDICATE_MODEL} changed: the predicate patch no longer applies")
        model.write_text(text.replace(PREDICATE_OLD, PREDICATE_NEW, 1), encoding="utf-8")
    return dest


def repair_predicate(cfg: Config, result: CycleResult, day: date) -> list[str]:
    """On call, after the business-date filter ran: roll the facts back to the snapshot
    before it (the restored watermark re-merges that day with the right filter)."""
    before = [s for s in snapshots.list_snapshots(cfg) if s.run_id != result.run_id]
    if not before:
        return []
    rollback.rollback(cfg, before[0].run_id, f"rehearsal {day}: incremental filter", ACTOR)
    return [f"rollback to {before[0].run_id}"]


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
    if sc is not None and sc.patch:  # the filter is reverted by the next day's deploy
        actions += repair_predicate(cfg, result, day)
    if sc is not None and sc.corrupts:
        merged = [r for r in _bad_batches(cfg, sc, day) if r["status"] == batches.PUBLISHED]
        for r in merged:
            retract.retract_batch(cfg, str(r["batch_id"]), f"rehearsal {day}: {sc.name}", ACTOR)
            actions.append(f"retract {r['batch_id']}")
        kept = snapshots.list_snapshots(cfg)
        if merged and kept:
            rollback.rollback(cfg, kept[0].run_id, f"rehearsal {day}: {sc.name}", ACTOR)
            actions.append(f"rollback to {kept[0].run_id}")
    if state.paused(st) is not None:
        operations.resume(cfg, f"rehearsal {day}: handled", ACTOR)
        actions.append("resume")
    return actions


# -- one day, one scenario ----------------------------------------------------------------


def judge(cfg: Config, sc: Scenario, day: date, result: CycleResult,
          fired: list[tuple[str, str]], paged: list[tuple[str, str]], fresh: list[str]
          ) -> Outcome:
    """Was the incident detected in this day's run, and did the facts stay clean?"""
    o = Outcome(sc, day, status=result.status, root_cause=_root_cause(result))
    o.alerts = [k for _, k in fired]
    o.pages = len(paged)
    o.held = any(r["status"] == batches.HELD for r in _bad_batches(cfg, sc, day))
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
    if sc.patch:
        stale = stale_claims(cfg)
        why += [f"{stale} claims stale or missing in fct_claims until on-call's rollback "
                "(the next day re-merges them)"] if stale else []
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


@dataclass
class _Clock:
    """What the loop carries from one day to the next."""

    project: Path
    counts: dict[str, float] = field(default_factory=dict)  # fact rows after the last day
    last_actions: list[str] = field(default_factory=list)


def rehearse(
    cfg: Config, out: Path, *, n_days: int, claims_per_day: int,
    scenarios: Sequence[Scenario] | None = None, start: date = DEFAULT_START, seed: int = 7,
    history: int = HISTORY, echo: Callable[[str], None] = print,
) -> Rehearsal:
    """Run the rehearsal in a fresh workspace under ``out`` (``cfg`` is moved there).

    The warehouse is a DuckDB file there, or, when ``cfg`` has a ``[warehouse] url``,
    that database, which must be empty (``--engine postgres`` and the PostgreSQL test
    give it a fresh one).

    ``scenarios`` None: :func:`schedule` places :data:`CATALOGUE` in ``n_days``.
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = workspace(cfg, out / "ws", url=cfg.warehouse.url)
    r = Rehearsal([], [])
    if scenarios is None:
        scenarios = schedule(n_days, start, history)
        r.unplaced = unplaced(scenarios)
    by_offset = {s.offset: s for s in scenarios if s.offset < n_days}
    clock = _Clock(cfg.dbt.project_dir)
    for i in range(n_days):
        day = start + timedelta(days=i)
        sc = by_offset.get(i)
        inject = [Injection(sc.kind, day)] if sc else []
        generate(out / "feeds", day, 1, claims_per_day, seed=seed, inject=inject, progress=False)
        land_day(out / "feeds", cfg.ingest.landing_dir, day)
        entry = _run_day(cfg, out, sc, day, clock, r)
        r.days.append(entry)
        echo(f"{day} {day:%a} {entry.scenario or '-':<21} {entry.status:<8} "
             f"{entry.seconds:6.1f} s  pages={entry.pages}  "
             f"alerts={', '.join(entry.alerts) or '-'}"
             + (f"  reason={entry.reason[:120]}" if entry.reason else ""))
    return r


def _run_day(cfg: Config, out: Path, sc: Scenario | None, day: date, clock: _Clock,
             r: Rehearsal) -> DayLog:
    """One cycle, the daemon's and on-call's parts, and the day's series points."""
    project = cfg.dbt.project_dir
    if sc is not None and sc.patch:
        project = predicate_project(out, project)
    if project != clock.project:  # dbt's partial parse must not outlive a project change
        (cfg.dbt.target_path / "partial_parse.msgpack").unlink(missing_ok=True)
        clock.project = project
    day_cfg = replace(cfg, dbt=replace(cfg.dbt, project_dir=project))
    st = state.open_state(state_url(cfg))
    try:
        before = _max_outbox_id(st)
        t0 = time.perf_counter()
        result = run_cycle(day_cfg, trigger="rehearsal", as_of=day)
        seconds = time.perf_counter() - t0
        fresh = freshness_check(cfg, day)
        fired = _fired_since(st, before)
        paged = pages_since(st, before)  # run_cycle trips the breaker itself
        if sc is not None:
            r.outcomes.append(judge(cfg, sc, day, result, fired, paged, fresh))
        _record_series(r, day_series(cfg, day, fact_health(cfg)), clock)
        actions = operate(cfg, st, sc, day, result)
        if sc is not None:
            r.outcomes[-1].actions = actions
    finally:
        st.dispose()
    if actions:
        clock.counts = {f"{m}.growth": float(n) for m, (n, _) in fact_health(cfg).items()}
    pages = len(paged)  # one incident, one page: its members page nobody
    entry = DayLog(day, sc.name if sc else "", result.status, seconds, pages,
                   [f"{s}:{k}" for s, k in fired], reason=result.reason or "")
    if any(a.startswith("rollback") for a in clock.last_actions):
        entry.note = "day after an operator rollback"
    clock.last_actions = actions
    return entry


def _record_series(r: Rehearsal, points: dict[str, float], clock: _Clock) -> None:
    """Append the day's points (fact counts as growth since the previous day)."""
    counts = {k: v for k, v in points.items() if k.endswith(".growth")}
    for name, value in _growth(points, clock.counts).items():
        r.series.setdefault(name, [0.0] * len(r.days)).append(value)
    clock.counts = counts


def render(r: Rehearsal) -> str:
    """The scenario table (the monitor and the Elementary baseline side by side) and the
    clean-day figures."""
    flags = r.elementary_flags()
    index = {d.day: i for i, d in enumerate(r.days)}
    head = (f"{'scenario':<21} {'day':<10} {'expected':<24} {'detected':<9} {'held':<5} "
            f"{'severity':<9} {'root cause':<21} {'pages':<5} {'facts clean':<11} "
            f"{'elementary':<26} note")
    lines = [head, "-" * len(head)]
    for o in r.outcomes:
        lines.append(_row(o, flags.get(index.get(o.day, -1), [])))
    lines += ["", *_summary(r, flags, index)]
    return "\n".join(lines)


def _row(o: Outcome, flagged: Sequence[elementary.Score]) -> str:
    """One scenario's line."""
    sc = o.scenario
    handled = sc.expect == HANDLED
    det = "yes" if o.detected else ("no (ok)" if handled else "NO")
    held = ("yes" if o.held else "no") + ("" if o.held or not sc.held else "!")
    expect = sc.expect + (" (held)" if sc.held else "")
    top = max(flagged, key=lambda s: abs(s.z or 0.0), default=None)
    elem = "no" if top is None else f"yes {top.series} z={top.z:+.1f}"
    if handled and top is not None:
        elem = "FALSE " + elem
    notes = [o.clean_why] + ([sc.note] if sc.note else [])
    if not handled and o.root_cause != sc.expect:
        notes.append(f"expected {sc.expect}")
    return (f"{sc.name:<21} {o.day.isoformat():<10} {expect:<24} {det:<9} {held:<5} "
            f"{o.severity:<9} {o.root_cause:<21} {o.pages:<5} {'yes' if o.clean else 'NO':<11} "
            f"{elem[:26]:<26} {'; '.join(notes)}")


def _summary(r: Rehearsal, flags: dict[int, list[elementary.Score]],
             index: dict[date, int]) -> list[str]:
    """Clean-day pages and flags, detections and the history each detector needed."""
    clean = r.clean_days
    warn = sum(1 for d in clean if d.alerts)
    clean_flags = [(d.day, s) for d in clean for s in flags.get(index[d.day], [])]
    flagged_days = sum(1 for d in clean if flags.get(index[d.day]))
    incidents = [o for o in r.outcomes if o.scenario.expect != HANDLED]
    mon_first = min((index[o.day] for o in incidents if o.detected), default=None)
    el_first = min((index[o.day] for o in incidents if flags.get(index[o.day])), default=None)
    secs = sorted(d.seconds for d in r.days)
    lines = [
        f"clean days: {len(clean)}; pages (critical alerts enqueued) on clean days: "
        f"{r.clean_day_pages}; clean days with any alert: {warn}"
        + (f" ({_by_rule(clean)})" if warn else ""),
        f"incidents detected on their day: monitor {sum(o.detected for o in incidents)}"
        f"/{len(incidents)}, held at the gate {sum(o.held for o in incidents if o.scenario.held)}"
        f"/{sum(1 for o in incidents if o.scenario.held)} expected held; elementary "
        f"{sum(1 for o in incidents if flags.get(index[o.day]))}/{len(incidents)}",
        f"elementary (daily volume z-score, {elementary.TRAINING_DAYS} previous days, |z| >= "
        f"{elementary.SENSITIVITY:g}, no seasonality) false flags: {flagged_days} of "
        f"{len(clean)} clean days ({_by_series(clean_flags)}); scores from day index "
        f"{elementary.TRAINING_DAYS}",
        f"days of history before the first detection: monitor {_first(mon_first)}, "
        f"elementary {_first(el_first)}",
    ]
    if r.unplaced:
        lines.append(f"not scheduled (no free day in this run): {', '.join(r.unplaced)}")
    if secs:
        lines.append(
            f"cycle wall time: mean {sum(secs) / len(secs):.1f} s, median "
            f"{secs[len(secs) // 2]:.1f} s, max {secs[-1]:.1f} s, total {sum(secs) / 60:.1f} min")
    return lines


def _first(index: int | None) -> str:
    return "-" if index is None else str(index)


def _by_series(scores: Sequence[tuple[date, elementary.Score]]) -> str:
    """Flags on clean days: series, day and z."""
    return ", ".join(f"{s.series} {d:%m-%d} z={s.z:+.1f}" for d, s in scores) or "none"


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
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--history", type=int, default=HISTORY,
                    help="clean days before the first scenario")
    ap.add_argument("--claims-per-day", type=int, default=500)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "rehearse")
    ap.add_argument("--start", type=date.fromisoformat, default=DEFAULT_START)
    ap.add_argument("--only", default="", help="comma-separated scenario names to schedule")
    ap.add_argument("--hard-drift-model", default="",
                    help="try a model glob on the paging drift rule (e.g. 'fct_*')")
    ap.add_argument("--two-weeks", action="store_true",
                    help=f"the tests' two-week rehearsal: {TWO_WEEKS_DAYS} days from "
                         f"{TWO_WEEKS_START}, its scenarios (overrides --days/--start/--only)")
    ap.add_argument("--engine", choices=("duckdb", "postgres", "spark"), default="duckdb")
    ap.add_argument("--pg-url", default=None,
                    help="postgresql+psycopg2://user@host:port/db of a server whose user may "
                         "create a database (default: start a throwaway server)")
    ap.add_argument("--spark-url", default=None,
                    help="sc://host:port of a Spark Connect server of its own (default: "
                         "start a throwaway local[2] server)")
    args = ap.parse_args(argv)
    cfg = load_config(REPO / "config.toml")
    if args.hard_drift_model:
        cfg = with_hard_drift_model(cfg, args.hard_drift_model)
    scenarios = None
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in CATALOGUE}
        if unknown:
            ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        catalogue = [s for s in CATALOGUE if s.name in wanted]
        scenarios = schedule(args.days, args.start, args.history, catalogue)
    if args.two_weeks:
        scenarios, args.days, args.start = list(TWO_WEEKS), TWO_WEEKS_DAYS, TWO_WEEKS_START
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.engine == "postgres":  # a fresh database, as bench/cycle.py makes one
            url = stack.enter_context(postgres_database(args.pg_url))
            cfg = replace(cfg, warehouse=replace(cfg.warehouse, url=url))
            print(f"PostgreSQL: {sa.make_url(url).render_as_string()}")
        elif args.engine == "spark":
            url = stack.enter_context(spark_endpoint(args.spark_url))
            cfg = replace(cfg, warehouse=replace(cfg.warehouse, url=url),
                          dbt=replace(cfg.dbt, target="spark"))
            print(f"Spark Connect: {url}")
        r = rehearse(cfg, args.out, n_days=args.days, claims_per_day=args.claims_per_day,
                     scenarios=scenarios, start=args.start, history=args.history)
    print()
    print(render(r))
    print(f"rehearsal wall time {(time.perf_counter() - t0) / 60:.1f} min")
    for f in r.failures:
        print(f"FAIL {f}")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
