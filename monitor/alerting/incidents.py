"""Open alerts, their transitions, and incidents. :func:`reconcile` opens and closes
alerts and queues their notifications in one transaction: exactly one per transition
(new -> ``firing``, gone -> ``resolved``). One bad delivery trips several critical rules
at once, so they form one incident: the paging sinks (:data:`PAGING_KINDS`) get one page
listing the related alerts, and one ``resolved`` when its last alert clears."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from monitor.alerting.outbox import enqueue, last_queued
from monitor.alerting.rules import Alert, Observations, evaluate, skipped_rules
from monitor.alerting.utc import aware, iso, naive
from monitor.core.sections import AlertingConfig, SinkConfig
from monitor.store.state import alerts_open

# Sinks where each notification reaches a person: one per incident. The log and
# Alertmanager (which groups by the ``incident`` label itself) get every alert.
PAGING_KINDS = frozenset({"pagerduty", "slack", "webhook"})
# Which alert of a new incident leads it: the earliest step of a cycle is the likeliest
# cause (a contract or suite failure explains the failed run and the drift after it).
_LEAD_ORDER = ("validation", "run_failed", "drift", "freshness", "runtime", "cost")


@dataclass(frozen=True)
class ReconcileResult:
    """Dedup keys per transition, and the number of outbox rows enqueued."""

    fired: tuple[str, ...]
    still_firing: tuple[str, ...]
    resolved: tuple[str, ...]
    enqueued: int
    paged: tuple[str, ...] = ()  # incidents opened (paged) by this reconcile


# -- notifications ------------------------------------------------------------------


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
        "starts_at": iso(row["started_at"]),
        "ends_at": iso(ends_at) if ends_at else None,
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


def _needs_refresh(conn: sa.Connection, key: str, sink: SinkConfig, now: datetime) -> bool:
    """Alertmanager only: re-send a firing alert before its endsAt lapses."""
    last = last_queued(conn, key, sink.name, ("firing", "refresh"))
    return last is None or (now - last).total_seconds() >= sink.firing_ttl_s / 2


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


# -- reconcile ----------------------------------------------------------------------


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
    now = aware(now)
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
                enqueue(conn, body, sink.name, "firing", now)
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
                enqueue(conn, _notification(row, "firing", None), sink.name, "refresh", now)
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
                enqueue(conn, note, sink.name, "resolved", now)
                enqueued += 1
            elif last:
                enqueue(conn, _incident_resolved(note), sink.name, "resolved", now)
                enqueued += 1
    return resolved, enqueued


def _incident_resolved(note: dict[str, Any]) -> dict[str, Any]:
    """The ``resolved`` a paging sink gets for the incident (under the page's key)."""
    if note["dedup_key"] == note["incident"]:
        return note
    summary = f"incident {note['incident']} cleared (last: {note['summary']})"
    return {**note, "dedup_key": note["incident"], "summary": summary}


# -- the alerts_open table ----------------------------------------------------------


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
        "started_at": naive(now),
        "last_seen_at": naive(now),
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
        "last_seen_at": naive(now),
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
