"""What a cycle observed, and the alerts its rules raise from it: pure, no I/O, so the
rules can be tested and rehearsed without a state store."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from monitor.alerting.utc import aware
from monitor.core.sections import AlertRule
from monitor.observe.run import ModelObservation

# -- observations and alerts --------------------------------------------------------


class DriftLike(Protocol):
    """A drift verdict: z-score of a model metric and the detector's verdict."""

    @property
    def model(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def z(self) -> float | None: ...
    @property
    def anomalous(self) -> bool: ...


@dataclass(frozen=True)
class DriftSignal:
    """Concrete :class:`DriftLike`: one metric's drift as the rules see it (from the
    scorer's ``monitor.observe.drift.DriftResult``, or the gate's feed-day volume)."""

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
    models: Sequence[ModelObservation] | None = None
    drift: Sequence[DriftLike] | None = None
    validation: Mapping[str, int] | None = None
    feed_last_batch: Mapping[str, datetime | float | None] | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    evidence_path: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", aware(self.now))


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
            age_h = (obs.now - aware(ts)).total_seconds() / 3600
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
