"""Alert rules, open-alert tracking and a durable outbox that delivers to sinks.

Flow per cycle (the daemon wires it)::

    alerts = evaluate(cfg.rules, obs)                      # pure
    reconcile(engine, alerts, obs.now, sinks=cfg.sinks,    # one transaction: open/close
              skip_rules=skipped_rules(cfg.rules, obs),    # alerts, enqueue notifications
              evidence=obs.evidence_path)
    deliver(engine, build_sinks(cfg.sinks), now, config=cfg)  # send due outbox rows

Guarantees: a notification is enqueued exactly once per transition of an alert
(new -> ``firing``, gone -> ``resolved``) in the same transaction that records the
transition. Delivery is at-least-once: a row is claimed with a lease before sending and
marked ``sent`` after a 2xx, and sent rows are never sent again. The rare duplicate (a
crash between the sink's 2xx and the commit, after which the row's lease runs out and the
next pass sends it again) carries the same keys as the first send, so receivers can drop
it. Per sink, a re-send after such a crash:

- PagerDuty: the same ``dedup_key`` (the alert's stable key, or its incident's): a
  trigger joins the open incident, a resolve of a resolved incident is ignored;
- Alertmanager: the same label set (which includes ``dedup_key``) updates the alert it
  already holds; no second notification;
- webhook: the same ``Idempotency-Key`` header (:func:`outbox_key`, one per outbox row,
  the same on every attempt); the receiver drops a key it has seen;
- Slack: the header is sent too, but Slack's incoming webhooks do not deduplicate: the
  message shows twice;
- log: logged twice.

Every HTTP sink gets the ``Idempotency-Key`` header.
Alertmanager alone gets a periodic ``refresh`` of still-firing alerts, because it
auto-resolves an alert at its ``endsAt``; refreshes never go to other sinks.

One incident, one page: one bad delivery often trips several critical rules at once (a
contract failure, a failed run, hard drift on each fact). New critical alerts are grouped
into an *incident* (label ``incident`` = the dedup key of the alert that opened it, so it
is stable across cycles): the paging sinks (PagerDuty, Slack, webhook) get one
notification for it, listing the related alerts, and one ``resolved`` when its last alert
clears. Every alert is still recorded in ``alerts_open`` and sent on its own to the log
and to Alertmanager (which groups by ``incident``, see ``alerts/alertmanager.yml``). A new
critical alert while an incident of its scope (a run's alerts; feed-age alerts) is open
joins that incident, as Alertmanager's ``group_by`` does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.client import HTTPException
from typing import Any, Protocol

import sqlalchemy as sa

from monitor import __version__
from monitor.core.sections import AlertingConfig, AlertRule, SinkConfig
from monitor.store.state import alert_outbox, alerts_open

log = logging.getLogger(__name__)

# Sinks where each notification reaches a person: one per incident. The log and
# Alertmanager (which groups by the ``incident`` label itself) get every alert.
PAGING_KINDS = frozenset({"pagerduty", "slack", "webhook"})
# Which alert of a new incident leads it: the earliest step of a cycle is the likeliest
# cause (a contract or suite failure explains the failed run and the drift after it).
_LEAD_ORDER = ("validation", "run_failed", "drift", "freshness", "runtime", "cost")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
_CLAIM_MARGIN_S = 60.0  # lease = sink timeout + margin; an abandoned claim retries after it

# -- state tables -------------------------------------------------------------------



# -- configuration ------------------------------------------------------------------












# -- observations and alerts --------------------------------------------------------


class ModelLike(Protocol):
    """A model's last build (``monitor.metrics.ModelObservation`` fits)."""

    @property
    def model(self) -> str: ...
    @property
    def layer(self) -> str: ...
    @property
    def duration_s(self) -> float | None: ...
    @property
    def cost(self) -> float | None: ...


class DriftLike(Protocol):
    """A drift result: z-score of a model metric and the detector's verdict."""

    @property
    def model(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def z(self) -> float | None: ...
    @property
    def anomalous(self) -> bool: ...


@dataclass(frozen=True)
class ModelRun:
    """Concrete :class:`ModelLike`."""

    model: str
    layer: str
    duration_s: float | None = None
    cost: float | None = None


@dataclass(frozen=True)
class DriftResult:
    """Concrete :class:`DriftLike`."""

    model: str
    metric: str
    z: float | None
    anomalous: bool = False
    layer: str = ""
    expected: float | None = None
    relative_change: float | None = None


@dataclass(frozen=True)
class Observations:
    """What the daemon saw in a cycle. ``None`` = not observed (rules relying on it
    keep their open alerts untouched instead of resolving them).

    ``validation`` maps suite -> failed expectations; ``feed_last_batch`` maps feed ->
    newest batch time (aware datetime or Unix seconds; ``None`` = never received).
    """

    run_id: str
    run_status: str
    run_duration_s: float | None = None
    run_cost: float | None = None
    models: Sequence[ModelLike] | None = None
    drift: Sequence[DriftLike] | None = None
    validation: Mapping[str, int] | None = None
    feed_last_batch: Mapping[str, datetime | float | None] | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    evidence_path: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", _aware(self.now))


@dataclass(frozen=True)
class Alert:
    """A condition that currently holds. ``dedup_key`` is stable across runs."""

    dedup_key: str
    rule: str
    kind: str
    severity: str
    summary: str
    description: str
    labels: Mapping[str, str]
    evidence: str = ""
    run_id: str = ""
    status: str = "firing"


# -- evaluation ---------------------------------------------------------------------


def _glob(value: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern)


def _alert(
    rule: AlertRule,
    obs: Observations,
    key: str,
    summary: str,
    detail: str,
    labels: Mapping[str, str],
) -> Alert:
    return Alert(
        dedup_key=f"{rule.name}:{key}",
        rule=rule.name,
        kind=rule.kind,
        severity=rule.severity,
        summary=summary,
        description=f"{detail} (rule {rule.name}, run {obs.run_id}).",
        labels={"kind": rule.kind, **labels},
        evidence=obs.evidence_path,
        run_id=obs.run_id,
    )


def _eval_amount(rule: AlertRule, obs: Observations) -> list[Alert]:
    """runtime / cost: a model's or the run's value above the threshold."""
    thr = float(rule.threshold or 0.0)
    noun, unit = ("took", " s") if rule.kind == "runtime" else ("cost", "")
    if rule.scope == "run":
        value = obs.run_duration_s if rule.kind == "runtime" else obs.run_cost
        if value is None or not value > thr:
            return []
        text = f"Run {noun} {value:.4g}{unit} (threshold {thr:g}{unit})"
        return [_alert(rule, obs, "run", text, text, {})]
    out = []
    for m in obs.models or ():
        value = m.duration_s if rule.kind == "runtime" else m.cost
        if value is None or not _glob(m.model, rule.pattern) or not _glob(m.layer, rule.layer):
            continue
        if value > thr:
            text = f"{m.model} {noun} {value:.4g}{unit} (threshold {thr:g}{unit})"
            detail = f"Model {m.model} (layer {m.layer}) {noun} {value:.4g}{unit}"
            out.append(
                _alert(rule, obs, m.model, text, detail, {"model": m.model, "layer": m.layer})
            )
    return out


def _eval_drift(rule: AlertRule, obs: Observations) -> list[Alert]:
    out = []
    for d in obs.drift or ():
        if not (_glob(d.model, rule.model) and _glob(d.metric, rule.pattern)
                and _glob(getattr(d, "layer", "") or "", rule.layer)):
            continue
        if any(_glob(d.metric, pat) for pat in rule.exclude):
            continue
        z = d.z
        known = z is not None and not math.isnan(z)
        if rule.threshold is None:
            firing = bool(d.anomalous)
        else:
            firing = known and abs(float(z or 0.0)) >= rule.threshold
        if not firing:
            continue
        z_text = f"z={z:+.2f}" if known else "z=n/a"
        text = f"{d.model}.{d.metric} drifted ({z_text}{_expected_text(d)})"
        limit = "anomalous" if rule.threshold is None else f"|z| >= {rule.threshold:g}"
        out.append(
            _alert(
                rule,
                obs,
                f"{d.model}:{d.metric}",
                text,
                f"{text}; fires when {limit}",
                {"model": d.model, "metric": d.metric},
            )
        )
    return out


def _expected_text(d: DriftLike) -> str:
    """", expected 2,982, +196%": what the baseline allowed, beside z."""
    expected = getattr(d, "expected", None)
    rel = getattr(d, "relative_change", None)
    parts = [] if expected is None else [f"expected {expected:,.4g}"]
    if rel is not None:
        parts.append(f"{rel:+.0%}")
    return "".join(f", {p}" for p in parts)


def _eval_validation(rule: AlertRule, obs: Observations) -> list[Alert]:
    thr = rule.threshold or 0.0
    out = []
    for suite, failed in (obs.validation or {}).items():
        if _glob(suite, rule.pattern) and failed > thr:
            text = f"{failed} failed expectation(s) in suite {suite}"
            out.append(_alert(rule, obs, suite, text, text, {"suite": suite}))
    return out


def _eval_freshness(rule: AlertRule, obs: Observations) -> list[Alert]:
    hours = float(rule.threshold or 0.0)
    out = []
    for feed, ts in (obs.feed_last_batch or {}).items():
        if not _glob(feed, rule.pattern):
            continue
        if ts is None:
            text = f"No batch ever received for feed {feed}"
        else:
            age_h = (obs.now - _aware(ts)).total_seconds() / 3600
            if age_h <= hours:
                continue
            text = f"No new batch for feed {feed} in {age_h:.1f} h (threshold {hours:g} h)"
        out.append(_alert(rule, obs, feed, text, text, {"feed": feed}))
    return out


def _eval_run_failed(rule: AlertRule, obs: Observations) -> list[Alert]:
    if not _glob(obs.run_status, rule.pattern):
        return []
    text = f"Run {obs.run_id} ended {obs.run_status}"
    return [_alert(rule, obs, "run", text, text, {"status": obs.run_status})]


_EVALUATORS = {
    "runtime": _eval_amount,
    "cost": _eval_amount,
    "drift": _eval_drift,
    "validation": _eval_validation,
    "freshness": _eval_freshness,
    "run_failed": _eval_run_failed,
}


def evaluate(rules: Iterable[AlertRule], obs: Observations) -> list[Alert]:
    """The alerts that hold for ``obs``, in rule order, one per dedup key."""
    seen: dict[str, Alert] = {}
    for rule in rules:
        for alert in _EVALUATORS[rule.kind](rule, obs):
            seen.setdefault(alert.dedup_key, alert)
    return list(seen.values())


def skipped_rules(rules: Iterable[AlertRule], obs: Observations) -> frozenset[str]:
    """Names of rules whose input was not observed this cycle (keep their alerts)."""
    out = set()
    for r in rules:
        if r.kind in ("runtime", "cost"):
            if r.scope == "run":
                missing = (obs.run_duration_s if r.kind == "runtime" else obs.run_cost) is None
            else:
                missing = obs.models is None
        elif r.kind == "run_failed":
            # An interrupted cycle says nothing about whether the pipeline still fails.
            missing = obs.run_status == "interrupted"
        else:
            attr = {"drift": "drift", "validation": "validation", "freshness": "feed_last_batch"}
            missing = getattr(obs, attr[r.kind]) is None
        if missing:
            out.add(r.name)
    return frozenset(out)


# -- reconcile ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileResult:
    """Dedup keys per transition, and the number of outbox rows enqueued."""

    fired: tuple[str, ...]
    still_firing: tuple[str, ...]
    resolved: tuple[str, ...]
    enqueued: int
    paged: tuple[str, ...] = ()  # incidents opened (paged) by this reconcile


def _aware(ts: datetime | float) -> datetime:
    if isinstance(ts, int | float):
        return datetime.fromtimestamp(ts, UTC)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _db(ts: datetime) -> datetime:
    """Naive UTC for storage: SQLite keeps no zone, so every row uses UTC."""
    return _aware(ts).replace(tzinfo=None)


def _iso(ts: datetime) -> str:
    return _aware(ts).isoformat().replace("+00:00", "Z")


def _routed(sinks: Iterable[SinkConfig], severity: str) -> list[SinkConfig]:
    return [s for s in sinks if severity in s.severities]


def _notification(
    row: Mapping[str, Any],
    status: str,
    ends_at: datetime | None,
    related: Sequence[Mapping[str, Any]] = (),
    role: str = "",
) -> dict[str, Any]:
    """The sink-neutral payload stored in the outbox. ``role``: ``lead`` (the incident's
    page; ``related`` lists its other alerts), ``member`` (grouped under another alert's
    page) or empty (not grouped)."""
    labels = json.loads(row["labels"])
    return {
        "dedup_key": row["dedup_key"],
        "rule": row["rule"],
        "kind": row["kind"],
        "status": status,
        "severity": row["severity"],
        "summary": row["summary"],
        "description": row["description"],
        "labels": labels,
        "evidence": row["evidence"],
        "run_id": row["run_id"],
        "starts_at": _iso(row["started_at"]),
        "ends_at": _iso(ends_at) if ends_at else None,
        "incident": labels.get("incident", ""),
        "role": role,
        "related": [_related(r) for r in related],
    }


def _related(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a page says about each other alert of its incident."""
    labels = json.loads(row["labels"])
    return {
        "dedup_key": row["dedup_key"],
        "rule": row["rule"],
        "kind": row["kind"],
        "summary": row["summary"],
        "model": labels.get("model", ""),
        "evidence": row["evidence"],
    }


def _page(note: dict[str, Any]) -> dict[str, Any]:
    """The incident's page: its lead's notification, naming the related alerts."""
    related = note["related"]
    if not related:
        return note
    lines = [f"- {r['rule']}: {r['summary']}" for r in related]
    return {
        **note,
        "summary": f"{note['summary']} (+{len(related)} related)",
        "description": "\n".join(
            [note["description"], f"Related alerts in incident {note['incident']}:", *lines]
        ),
    }


def _enqueue(
    conn: sa.Connection, note: dict[str, Any], sink: str, event: str, now: datetime
) -> None:
    conn.execute(
        alert_outbox.insert().values(
            dedup_key=note["dedup_key"],
            sink=sink,
            event=event,
            severity=note["severity"],
            payload=json.dumps(note, sort_keys=True),
            status="pending",
            attempts=0,
            next_attempt_at=_db(now),
            last_error=None,
            created_at=_db(now),
            sent_at=None,
        )
    )


def _needs_refresh(conn: sa.Connection, key: str, sink: SinkConfig, now: datetime) -> bool:
    """Alertmanager only: re-send a firing alert before its endsAt lapses."""
    last = conn.execute(
        sa.select(sa.func.max(alert_outbox.c.created_at)).where(
            alert_outbox.c.dedup_key == key,
            alert_outbox.c.sink == sink.name,
            alert_outbox.c.event.in_(("firing", "refresh")),
        )
    ).scalar()
    return last is None or (now - _aware(last)).total_seconds() >= sink.firing_ttl_s / 2


# -- incidents ----------------------------------------------------------------------


def incident_scope(kind: str) -> str:
    """Alerts of one scope share an open incident: a run's alerts come from one
    delivery and build; feed-age alerts from the upstream not sending."""
    return "freshness" if kind == "freshness" else "run"


def _incident_of(row: Mapping[str, Any]) -> str:
    """The incident an open alert belongs to ("" = not grouped: below critical, or
    opened before incidents existed)."""
    return str(json.loads(row["labels"]).get("incident", ""))


def _open_incidents(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Scope -> the incident its staying alerts belong to (the oldest, if several)."""
    out: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: (r["started_at"], r["dedup_key"])):
        incident = _incident_of(row)
        if incident:
            out.setdefault(incident_scope(row["kind"]), incident)
    return out


def group_incidents(
    new: Sequence[Alert], open_incidents: Mapping[str, str]
) -> tuple[list[Alert], dict[str, list[str]]]:
    """Label each new critical alert with its incident.

    Returns the alerts (in their order, critical ones labelled) and, per incident opened
    here, its lead's dedup key -> the dedup keys of the other new alerts in it. A new
    alert joins an open incident of its scope; otherwise the first by ``_LEAD_ORDER``
    opens one.
    """
    incidents = dict(open_incidents)
    leads: dict[str, list[str]] = {}
    incident_of: dict[str, str] = {}
    rank = {kind: i for i, kind in enumerate(_LEAD_ORDER)}
    critical = [a for a in new if a.severity == "critical"]
    for a in sorted(critical, key=lambda a: rank.get(a.kind, len(rank))):
        scope = incident_scope(a.kind)
        incident = incidents.setdefault(scope, a.dedup_key)
        if incident == a.dedup_key and incident not in open_incidents.values():
            leads[incident] = []
        elif incident in leads:
            leads[incident].append(a.dedup_key)
        incident_of[a.dedup_key] = incident
    labelled = [
        replace(a, labels={**a.labels, "incident": incident_of[a.dedup_key]})
        if a.dedup_key in incident_of
        else a
        for a in new
    ]
    return labelled, leads


def _pages_here(sink: SinkConfig, note: Mapping[str, Any], lead: bool) -> bool:
    """Whether ``note`` goes to ``sink``: a paging sink gets only the incident's page."""
    return lead or not note["incident"] or sink.kind not in PAGING_KINDS


def reconcile(
    engine: sa.Engine,
    alerts: Iterable[Alert],
    now: datetime,
    *,
    sinks: Sequence[SinkConfig] = (),
    skip_rules: Iterable[str] = (),
    evidence: str = "",
) -> ReconcileResult:
    """Compare ``alerts`` with the open alerts and enqueue the transitions.

    New -> ``firing`` to every sink routed for its severity, except that a paging sink
    gets one notification per incident (see the module doc); still firing -> nothing
    (Alertmanager: a ``refresh`` every ``firing_ttl_s / 2``); gone -> ``resolved`` and
    closed, except alerts of rules in ``skip_rules`` (not observed this cycle); a paging
    sink gets the incident's ``resolved`` when its last alert closes.
    """
    now = _aware(now)
    current: dict[str, Alert] = {}
    for a in alerts:
        current.setdefault(a.dedup_key, a)
    skip = set(skip_rules)
    with engine.begin() as conn:
        open_rows = {
            r["dedup_key"]: dict(r) for r in conn.execute(sa.select(alerts_open)).mappings()
        }
        stays = {k for k, r in open_rows.items() if k in current or r["rule"] in skip}
        staying = [open_rows[k] for k in stays]
        new, leads = group_incidents(
            [a for k, a in current.items() if k not in open_rows], _open_incidents(staying)
        )
        fired, enqueued = _fire(conn, new, leads, sinks, now)
        still, refreshed = _keep_firing(conn, current, open_rows, sinks, now)
        closing = [r for k, r in open_rows.items() if k not in stays]
        remaining = {_incident_of(r) for r in staying} | {
            str(a.labels.get("incident", "")) for a in new
        }
        resolved, n_resolved = _resolve(conn, closing, remaining, sinks, now, evidence)
    return ReconcileResult(
        tuple(fired), tuple(still), tuple(resolved), enqueued + refreshed + n_resolved,
        tuple(leads),
    )


def _fire(
    conn: sa.Connection,
    new: Sequence[Alert],
    leads: Mapping[str, Sequence[str]],
    sinks: Sequence[SinkConfig],
    now: datetime,
) -> tuple[list[str], int]:
    """Open the new alerts; queue each one's ``firing`` (a lead's names its related)."""
    rows = {a.dedup_key: _open_alert(conn, a, now) for a in new}
    enqueued = 0
    for key, row in rows.items():
        lead = key in leads
        role = "lead" if lead else ("member" if _incident_of(row) else "")
        related = [rows[k] for k in leads.get(key, ())]
        note = _notification(row, "firing", None, related, role)
        for sink in _routed(sinks, row["severity"]):
            if _pages_here(sink, note, lead):
                body = _page(note) if sink.kind in PAGING_KINDS else note
                _enqueue(conn, body, sink.name, "firing", now)
                enqueued += 1
    return list(rows), enqueued


def _keep_firing(
    conn: sa.Connection,
    current: Mapping[str, Alert],
    open_rows: Mapping[str, dict[str, Any]],
    sinks: Sequence[SinkConfig],
    now: datetime,
) -> tuple[list[str], int]:
    """Touch alerts still firing; refresh them in Alertmanager before ``endsAt``."""
    still, enqueued = [], 0
    for key, alert in current.items():
        if key not in open_rows:
            continue
        row = _touch_alert(conn, open_rows[key], alert, now)
        still.append(key)
        for sink in _routed(sinks, row["severity"]):
            if sink.kind == "alertmanager" and _needs_refresh(conn, key, sink, now):
                _enqueue(conn, _notification(row, "firing", None), sink.name, "refresh", now)
                enqueued += 1
    return still, enqueued


def _resolve(
    conn: sa.Connection,
    closing: Sequence[dict[str, Any]],
    remaining: set[str],
    sinks: Sequence[SinkConfig],
    now: datetime,
    evidence: str,
) -> tuple[list[str], int]:
    """Close cleared alerts; a paging sink hears once, when the incident is empty."""
    resolved, enqueued, done = [], 0, set(remaining)
    # An incident's own alert first: the paging sinks' resolve then carries its text.
    for row in sorted(closing, key=lambda r: r["dedup_key"] != _incident_of(r)):
        if evidence:
            row["evidence"] = evidence
        conn.execute(alerts_open.delete().where(alerts_open.c.dedup_key == row["dedup_key"]))
        resolved.append(row["dedup_key"])
        note = _notification(row, "resolved", now)
        incident = note["incident"]
        last = bool(incident) and incident not in done
        done.add(incident)
        for sink in _routed(sinks, row["severity"]):
            if _pages_here(sink, note, False):
                _enqueue(conn, note, sink.name, "resolved", now)
                enqueued += 1
            elif last:
                _enqueue(conn, _incident_resolved(note), sink.name, "resolved", now)
                enqueued += 1
    return resolved, enqueued


def _incident_resolved(note: dict[str, Any]) -> dict[str, Any]:
    """The ``resolved`` a paging sink gets for the incident (under the page's key)."""
    if note["dedup_key"] == note["incident"]:
        return note
    summary = f"incident {note['incident']} cleared (last: {note['summary']})"
    return {**note, "dedup_key": note["incident"], "summary": summary}


def _open_alert(conn: sa.Connection, alert: Alert, now: datetime) -> dict[str, Any]:
    row = {
        "dedup_key": alert.dedup_key,
        "rule": alert.rule,
        "kind": alert.kind,
        "severity": alert.severity,
        "summary": alert.summary,
        "description": alert.description,
        "labels": json.dumps(dict(alert.labels)),
        "evidence": alert.evidence,
        "run_id": alert.run_id,
        "started_at": _db(now),
        "last_seen_at": _db(now),
    }
    conn.execute(alerts_open.insert().values(**row))
    return row


def _touch_alert(
    conn: sa.Connection, row: dict[str, Any], alert: Alert, now: datetime
) -> dict[str, Any]:
    # Text and evidence follow the latest run; labels and severity stay as first sent
    # so the sinks (Alertmanager matches on labels) see one alert.
    changes = {
        "summary": alert.summary,
        "description": alert.description,
        "evidence": alert.evidence,
        "run_id": alert.run_id,
        "last_seen_at": _db(now),
    }
    conn.execute(
        alerts_open.update().where(alerts_open.c.dedup_key == row["dedup_key"]).values(**changes)
    )
    return {**row, **changes}


def open_alerts(engine: sa.Engine) -> list[dict[str, Any]]:
    """The open alerts (for ``monitor status``), oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(alerts_open).order_by(alerts_open.c.started_at, alerts_open.c.dedup_key)
        )
        return [{**r, "labels": json.loads(r["labels"])} for r in rows.mappings()]


# -- sinks --------------------------------------------------------------------------


class DeliveryError(Exception):
    """A sink did not accept a notification (retried with backoff)."""


class Sink(Protocol):
    """Sends one notification; raises :class:`DeliveryError` unless accepted."""

    @property
    def name(self) -> str: ...
    @property
    def timeout_s(self) -> float: ...

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None: ...


def outbox_key(row: Mapping[str, Any]) -> str:
    """The idempotency key of one outbox row: the same on every attempt to send it, and
    different for every other row (another event, sink or transition of the alert)."""
    created = _aware(row["created_at"]).isoformat()
    ident = f"{row['id']}|{row['dedup_key']}|{row['sink']}|{row['event']}|{created}"
    return "dqm-" + hashlib.sha256(ident.encode()).hexdigest()[:32]


def _idem(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a GET and report success.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_json(
    url: str, body: Any, timeout_s: float, headers: Mapping[str, str] | None = None
) -> int:
    """POST ``body`` as JSON; return the 2xx status or raise :class:`DeliveryError`.

    Errors never include the URL or headers (they may carry secrets).
    """
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"dqm-monitor/{__version__}",
            **(headers or {}),
        },
    )
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            resp.read(65536)
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        raise DeliveryError(f"HTTP {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise DeliveryError(f"unreachable: {exc.reason}") from None
    except (OSError, HTTPException) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}")
    return status


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


@dataclass(frozen=True)
class AlertmanagerSink:
    """``POST {url}/api/v2/alerts``: labels alertname/severity/dedup_key + alert labels."""

    name: str
    url: str
    timeout_s: float = 10.0
    firing_ttl_s: float = 7 * 86400.0
    token: str = field(default="", repr=False)

    def payload(self, note: Mapping[str, Any], now: datetime) -> list[dict[str, Any]]:
        """The API v2 body for ``note``."""
        labels = {k: str(v) for k, v in note["labels"].items()}
        labels.update(
            alertname=note["rule"], severity=note["severity"], dedup_key=note["dedup_key"]
        )
        annotations = {"summary": note["summary"], "description": note["description"]}
        if note["evidence"]:
            annotations["evidence"] = note["evidence"]
        if note["status"] == "resolved":
            ends = note["ends_at"]
        else:
            ends = _iso(_aware(now) + timedelta(seconds=self.firing_ttl_s))
        alert: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": note["starts_at"],
            "endsAt": ends,
        }
        if _is_url(note["evidence"]):
            alert["generatorURL"] = note["evidence"]
        return [alert]

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Post to Alertmanager."""
        post_json(
            self.url.rstrip("/") + "/api/v2/alerts",
            self.payload(note, now),
            self.timeout_s,
            {**_auth(self.token), **_idem(idempotency_key)},
        )


@dataclass(frozen=True)
class PagerDutySink:
    """PagerDuty Events API v2: trigger / resolve with ``dedup_key``."""

    name: str
    routing_key: str = field(repr=False)
    url: str = PAGERDUTY_URL
    timeout_s: float = 10.0
    source: str = ""

    def payload(self, note: Mapping[str, Any]) -> dict[str, Any]:
        """The Events v2 body for ``note``."""
        key = note["dedup_key"]
        if len(key) > 255:  # PagerDuty's limit; a hash keeps it stable
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        if note["status"] == "resolved":
            return {"routing_key": self.routing_key, "event_action": "resolve", "dedup_key": key}
        labels = note["labels"]
        body: dict[str, Any] = {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": key,
            "payload": {
                "summary": note["summary"][:1024],
                "source": self.source or socket.gethostname(),
                "severity": note["severity"],
                "timestamp": note["starts_at"],
                "component": labels.get("model")
                or labels.get("feed")
                or labels.get("suite")
                or "pipeline",
                "group": labels.get("layer", "pipeline"),
                "class": note["kind"],
                "custom_details": {
                    "description": note["description"],
                    "labels": labels,
                    "evidence": note["evidence"],
                    "run_id": note["run_id"],
                    "rule": note["rule"],
                },
            },
        }
        if note.get("related"):  # the incident's other alerts (models, evidence)
            body["payload"]["custom_details"]["related"] = note["related"]
        if _is_url(note["evidence"]):
            body["links"] = [{"href": note["evidence"], "text": "Evidence"}]
        return body

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Post to PagerDuty (which deduplicates on the body's ``dedup_key``)."""
        post_json(self.url, self.payload(note), self.timeout_s, _idem(idempotency_key))


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class SlackSink:
    """Slack incoming webhook: one ``text`` message per transition."""

    name: str
    url: str = field(repr=False)
    timeout_s: float = 10.0

    def payload(self, note: Mapping[str, Any]) -> dict[str, Any]:
        """The webhook body for ``note``."""
        if note["status"] == "resolved":
            head = f":white_check_mark: [RESOLVED] {note['summary']}"
        else:
            icon = {"critical": ":red_circle:", "warning": ":warning:"}.get(
                note["severity"], ":information_source:"
            )
            head = f"{icon} [FIRING:{note['severity']}] {note['summary']}"
        lines = [head, note["description"]]
        if note["evidence"]:
            lines.append(f"Evidence: {note['evidence']}")
        return {"text": "\n".join(_slack_escape(x) for x in lines)}

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Post to Slack (which does not deduplicate: the header is for a relay's sake)."""
        post_json(self.url, self.payload(note), self.timeout_s, _idem(idempotency_key))


@dataclass(frozen=True)
class WebhookSink:
    """Generic JSON webhook: the notification itself, plus ``version``."""

    name: str
    url: str = field(repr=False)
    timeout_s: float = 10.0
    token: str = field(default="", repr=False)

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Post the notification; ``Idempotency-Key`` lets the receiver drop a re-send."""
        post_json(self.url, {"version": 1, **note}, self.timeout_s,
                  {**_auth(self.token), **_idem(idempotency_key)})


@dataclass(frozen=True)
class LogSink:
    """Writes notifications to the ``monitor.alerts`` logger; never fails."""

    name: str
    timeout_s: float = 1.0

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Log the notification."""
        levels = {"critical": logging.ERROR, "warning": logging.WARNING}
        level = (
            logging.INFO
            if note["status"] == "resolved"
            else levels.get(note["severity"], logging.INFO)
        )
        grouped = ""
        if note.get("role") == "member":  # its incident's lead pages; this one informs
            level = min(level, logging.WARNING)
            grouped = f" incident={note['incident']}"
        elif note.get("related"):
            grouped = f" incident={note['incident']} related={len(note['related'])}"
        logging.getLogger("monitor.alerts").log(
            level,
            "[%s:%s] %s (%s) evidence=%s%s",
            note["status"].upper(),
            note["severity"],
            note["summary"],
            note["dedup_key"],
            note["evidence"] or "-",
            grouped,
        )


def _env(environ: Mapping[str, str], sink: str, var: str) -> str:
    if not var:
        return ""
    value = environ.get(var, "")
    if not value:
        raise ValueError(f"sink {sink}: environment variable {var} is not set")
    return value


def build_sink(cfg: SinkConfig, environ: Mapping[str, str] | None = None) -> Sink:
    """The sink for ``cfg``, with secrets from the environment."""
    env = os.environ if environ is None else environ
    url = _env(env, cfg.name, cfg.url_env) or cfg.url
    if cfg.url_env and not _is_url(url):
        raise ValueError(f"sink {cfg.name}: {cfg.url_env} does not hold an http(s) URL")
    token = _env(env, cfg.name, cfg.token_env)
    if cfg.kind == "alertmanager":
        return AlertmanagerSink(cfg.name, url, cfg.timeout_s, cfg.firing_ttl_s, token)
    if cfg.kind == "pagerduty":
        key = _env(env, cfg.name, cfg.routing_key_env)
        return PagerDutySink(cfg.name, key, url or PAGERDUTY_URL, cfg.timeout_s, cfg.source)
    if cfg.kind == "slack":
        return SlackSink(cfg.name, url, cfg.timeout_s)
    if cfg.kind == "webhook":
        return WebhookSink(cfg.name, url, cfg.timeout_s, token)
    return LogSink(cfg.name)


def build_sinks(
    configs: Iterable[SinkConfig], environ: Mapping[str, str] | None = None
) -> dict[str, Sink]:
    """Sinks by name; raises ``ValueError`` naming any missing environment variable."""
    return {c.name: build_sink(c, environ) for c in configs}


# -- delivery -----------------------------------------------------------------------


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
    now = _aware(now)
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
        if lane in blocked or row["sink"] in down or _aware(row["next_attempt_at"]) > now:
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
            next_attempt_at=_db(now + cfg.backoff(attempts)),
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
        sent_at=_db(now),
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
            .values(next_attempt_at=_db(lease_until))
        )
        return res.rowcount == 1


def _finish(engine: sa.Engine, row_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(alert_outbox.update().where(alert_outbox.c.id == row_id).values(**values))


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
                alert_outbox.c.status.in_(("sent", "dead")), alert_outbox.c.created_at < _db(before)
            )
        )
        return int(res.rowcount)


def evaluate_and_reconcile(
    engine: sa.Engine, config: AlertingConfig, obs: Observations
) -> ReconcileResult:
    """:func:`evaluate` then :func:`reconcile` with the config's rules and routing."""
    return reconcile(
        engine,
        evaluate(config.rules, obs),
        obs.now,
        sinks=config.sinks,
        skip_rules=skipped_rules(config.rules, obs),
        evidence=obs.evidence_path,
    )
