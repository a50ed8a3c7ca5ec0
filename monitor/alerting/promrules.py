"""Prometheus alerting rules generated from the config's ``[alerting]`` rules.

A threshold written both in ``config.toml`` and in ``alerts/rules/dqm.rules.yml`` drifts
apart, so the rule file is an output (``monitor rules --out alerts/rules/dqm.rules.yml``).
Each Prometheus alert takes its threshold and selectors from the one config rule of its
kind (and scope, or severity for drift). Alerts on the daemon's own health, and the two
amounts the shipped config leaves to Prometheus (a cycle's runtime, a model's cost),
keep the fixed values below until a config rule of their kind exists.
Alert names, labels and annotations are fixed: promtool tests and the runbook use them.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass

from monitor.core.config import Config, ConfigError
from monitor.core.sections import AlertRule

RUNBOOK = "alerts/RUNBOOK.md"
# Used only while the config has no rule of this kind and scope.
DEFAULT_RUN_RUNTIME_S = 3600.0
DEFAULT_MODEL_COST = 5.0
# Not about the data: no config rule corresponds to these.
PIPELINE_STALE_S = 93600  # one missed daily cycle plus 2 h slack

HEADER = """\
# Prometheus alerting rules for the data-quality monitor (dqm).
#
# GENERATED from the [alerting] rules of {source} by
#   {command}
# Do not edit: change the rule in the config and regenerate. tests/test_promrules.py
# fails when this file differs from what config.toml generates, and the expectations in
# alerts/tests/dqm.rules.test.yml pin the thresholds: update them and run
# `promtool test rules alerts/tests/dqm.rules.test.yml`.
#
# Metric names and labels are fixed by docs/contracts.md ("Prometheus metrics").
# Every alert carries a `severity` label (`warning` goes to chat, `critical` pages;
# see alerts/alertmanager.yml) and `summary`, `description` and `runbook_url`
# annotations. runbook_url values are repository-relative links to a section of
# alerts/RUNBOOK.md (the anchor is the lower-cased alert name); prefix them with your
# repository's browse URL if your chat client needs absolute links.
"""


@dataclass(frozen=True)
class PromRule:
    """One Prometheus alerting rule; ``comment`` is written above it."""

    alert: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str = ""
    comment: str = ""


def prometheus_rules(cfg: Config) -> list[tuple[str, list[PromRule]]]:
    """The rule groups, in file order. Raises :class:`ConfigError` when two config rules
    map onto one Prometheus alert."""
    rules = cfg.alerting.rules
    quality = [*_drift(cfg), *_validation(rules), _batches_held()]
    groups = [
        ("dqm.runtime", [*_model_amount(rules, "runtime"), _run_runtime(rules)]),
        ("dqm.cost", [*_model_amount(rules, "cost"), *_run_cost(rules)]),
        ("dqm.quality", quality),
        ("dqm.freshness", [_pipeline_stale(), *_feed_late(rules), _paused()]),
        ("dqm.daemon", [*_daemon_health(), *_run_failed(rules)]),
    ]
    return [(name, group) for name, group in groups if group]


def render(cfg: Config, out: str | None = None) -> str:
    """The rule file for ``cfg``; ``out`` is the ``--out`` path named in its header."""
    command = "monitor rules" + (f" --out {out}" if out else "")
    source = cfg.source.name if cfg.source else "the default config"
    lines = HEADER.format(source=source, command=command).splitlines()
    lines.append("groups:")
    for g, (name, group) in enumerate(prometheus_rules(cfg)):
        if g:
            lines.append("")
        lines += [f"  - name: {name}", "    rules:"]
        for i, rule in enumerate(group):
            if i:
                lines.append("")
            lines += _rule_lines(rule)
    return "\n".join(lines) + "\n"


# -- alerts taking their threshold from a config rule -------------------------------


def _the_rule(rules: Iterable[AlertRule], alert: str, **match: str) -> AlertRule | None:
    found = [r for r in rules if all(getattr(r, k) == v for k, v in match.items())]
    if len(found) > 1:
        names = ", ".join(r.name for r in found)
        raise ConfigError(
            f"alerting.rules: {names} all map onto Prometheus alert {alert}; "
            "`monitor rules` supports one rule per alert"
        )
    return found[0] if found else None


def _model_amount(rules: Iterable[AlertRule], kind: str) -> list[PromRule]:
    """DqmModelSlow / DqmModelCostHigh: a model's runtime or cost above the threshold."""
    alert = "DqmModelSlow" if kind == "runtime" else "DqmModelCostHigh"
    rule = _the_rule(rules, alert, kind=kind, scope="model")
    if kind == "runtime":
        if rule is None:
            return []
        thr = float(rule.threshold or 0.0)
        metric, text = "dqm_model_duration_seconds", _duration(thr)
        comment = (
            "dqm_model_duration_seconds is the duration of the model's last run, so the "
            "alert stays active until a later run is faster."
        )
        summary = "dqm model {{ $labels.model }} ran slowly."
        value = "took {{ $value | humanizeDuration }}"
    else:
        thr = float(rule.threshold or 0.0) if rule else DEFAULT_MODEL_COST
        metric, text = "dqm_model_cost", _num(thr)
        comment = (
            "Cost is in the daemon's [cost] currency; set it from your warehouse bill "
            "divided by the runs per period."
        )
        summary = "dqm model {{ $labels.model }} is expensive."
        value = 'cost {{ $value | printf "%.2f" }}'
    sel = _matchers(model=rule.pattern, layer=rule.layer) if rule else ""
    return [PromRule(
        alert=alert,
        expr=f"{metric}{sel} > {_num(thr)}",
        for_="1m",
        severity=rule.severity if rule else "warning",
        summary=summary,
        description="Model {{ $labels.model }} (layer {{ $labels.layer }}) "
        f"{value} in its last run (threshold {text}).",
        comment=f"{comment} {_source(rule, kind, 'model')}",
    )]


def _run_runtime(rules: Iterable[AlertRule]) -> PromRule:
    rule = _the_rule(rules, "DqmRunSlow", kind="runtime", scope="run")
    thr = float(rule.threshold or 0.0) if rule else DEFAULT_RUN_RUNTIME_S
    return PromRule(
        alert="DqmRunSlow",
        expr=f"dqm_run_duration_seconds > {_num(thr)}",
        for_="1m",
        severity=rule.severity if rule else "warning",
        summary="dqm pipeline cycle ran slowly.",
        description="The last dqm cycle took {{ $value | humanizeDuration }} "
        f"(threshold {_duration(thr)}).",
        comment="Whole cycle (ingest, dbt build, validation); keep it well below the "
        f"schedule interval so cycles never overlap. {_source(rule, 'runtime', 'run')}",
    )


def _run_cost(rules: Iterable[AlertRule]) -> list[PromRule]:
    rule = _the_rule(rules, "DqmRunCostHigh", kind="cost", scope="run")
    if rule is None:
        return []
    thr = float(rule.threshold or 0.0)
    return [PromRule(
        alert="DqmRunCostHigh",
        expr=f"dqm_run_cost > {_num(thr)}",
        for_="1m",
        severity=rule.severity,
        summary="dqm pipeline cycle is expensive.",
        description='The last dqm cycle cost {{ $value | printf "%.2f" }} '
        f"(threshold {_num(thr)}).",
        comment=f"A whole cycle's cost. {_source(rule, 'cost', 'run')}",
    )]


def _drift(cfg: Config) -> list[PromRule]:
    """DqmDriftWarning and DqmDriftCritical: two bands of |z| that do not overlap, so
    exactly one drift alert is active per model and metric."""
    rules = cfg.alerting.rules
    warn = _the_rule(rules, "DqmDriftWarning", kind="drift", severity="warning")
    crit = _the_rule(rules, "DqmDriftCritical", kind="drift", severity="critical")

    def z(rule: AlertRule) -> float:  # no threshold: the detector's flag, [drift] threshold
        return cfg.drift.threshold if rule.threshold is None else rule.threshold

    def series(rule: AlertRule) -> str:
        sel = _matchers(model=rule.model, layer=rule.layer, metric=rule.pattern)
        if rule.exclude:
            regex = "|".join(_glob_regex(g) for g in rule.exclude)
            sel = (sel[:-1] + ", " if sel else "{") + f"metric!~{json.dumps(regex)}}}"
        return "dqm_drift_zscore" + sel

    def fires(rule: AlertRule) -> str:
        s = series(rule)
        return f"{s} and abs({s}) >= {_num(z(rule))}"

    out = []
    history = "{{ $value | printf \"%.1f\" }} standard deviations from its history"
    if warn:
        upper = f" unless ({fires(crit)})" if crit else ""
        out.append(PromRule(
            alert="DqmDriftWarning",
            expr=f"{fires(warn)}{upper}",
            severity="warning",
            summary="dqm drift on {{ $labels.model }} {{ $labels.metric }}.",
            description="Metric {{ $labels.metric }} of model {{ $labels.model }} is "
            f"{history} (warning at {_num(z(warn))}).",
            comment="A z-score is how many standard deviations a model metric (row count, "
            "null rate, ...) moved from its history; |z| >= 3 happens by chance about 3 "
            "times in 1000 runs. It leaves out every series DqmDriftCritical fires on, so "
            "one drift alert at most is active per series. The bare series before `and` "
            "keeps the signed z for the description. "
            + _source(warn, "drift", "warning")
            + (" It has no threshold: [drift] threshold." if warn.threshold is None else ""),
        ))
    if crit:
        out.append(PromRule(
            alert="DqmDriftCritical",
            expr=fires(crit),
            severity="critical",
            summary="dqm severe drift on {{ $labels.model }} {{ $labels.metric }}.",
            description="Metric {{ $labels.metric }} of model {{ $labels.model }} is "
            f"{history} (critical at {_num(z(crit))}).",
            comment="A |z| this large is practically never chance: a broken feed or a "
            f"changed transformation. {_source(crit, 'drift', 'critical')}",
        ))
    return out


def _validation(rules: Iterable[AlertRule]) -> list[PromRule]:
    rule = _the_rule(rules, "DqmValidationFailures", kind="validation")
    if rule is None:
        return []
    return [PromRule(
        alert="DqmValidationFailures",
        expr=f"dqm_validation_failures{_matchers(suite=rule.pattern)} "
        f"> {_num(rule.threshold or 0.0)}",
        severity=rule.severity,
        summary="dqm validation suite {{ $labels.suite }} failed.",
        description="{{ $value }} expectation(s) of suite {{ $labels.suite }} failed in "
        "the last run.",
        comment="Failed expectations in the last run of a validation suite, beyond those "
        "the rule tolerates; if a suite has known-tolerated failures, fix the expectation "
        f"rather than the rule. {_source(rule, 'validation')}",
    )]


def _feed_late(rules: Iterable[AlertRule]) -> list[PromRule]:
    rule = _the_rule(rules, "DqmFeedLate", kind="freshness")
    if rule is None:
        return []
    seconds = float(rule.threshold or 0.0) * 3600
    return [PromRule(
        alert="DqmFeedLate",
        expr="time() - dqm_feed_last_batch_timestamp_seconds"
        f"{_matchers(feed=rule.pattern)} > {_num(seconds)}",
        severity=rule.severity,
        summary="dqm feed {{ $labels.feed }} is late.",
        description="The last batch of feed {{ $labels.feed }} arrived "
        f"{{{{ $value | humanizeDuration }}}} ago (threshold {_duration(seconds)}).",
        comment=f"No new batch for a feed for too long. {_source(rule, 'freshness')}",
    )]


def _run_failed(rules: Iterable[AlertRule]) -> list[PromRule]:
    rule = _the_rule(rules, "DqmRunFailed", kind="run_failed")
    if rule is None:
        return []
    return [PromRule(
        alert="DqmRunFailed",
        expr=f"increase(dqm_runs_total{_matchers(status=rule.pattern)}[1h]) > 0",
        severity=rule.severity,
        summary="dqm pipeline cycle failed.",
        description='{{ $value | printf "%.0f" }} dqm cycle(s) failed in the last hour.',
        comment="A cycle ended with status failed (not held or interrupted). "
        + _source(rule, "run_failed"),
    )]


# -- alerts with no config counterpart ----------------------------------------------


def _batches_held() -> PromRule:
    return PromRule(
        alert="DqmBatchesHeld",
        expr="dqm_held_batches > 0",
        for_="5m",
        severity="warning",
        summary="dqm has held batches for feed {{ $labels.feed }}.",
        description="{{ $value }} batch(es) of feed {{ $labels.feed }} are held and wait "
        "for release or reject.",
        comment="Batches that broke their contract wait for a human decision "
        "(release/reject). `for` gives a batch being decided right now time to clear "
        "before chat hears of it.",
    )


def _pipeline_stale() -> PromRule:
    return PromRule(
        alert="DqmPipelineStale",
        expr=f"time() - dqm_last_success_timestamp_seconds > {PIPELINE_STALE_S} "
        "and dqm_last_success_timestamp_seconds > 0",
        severity="critical",
        summary="dqm pipeline has not succeeded for too long.",
        description="The last successful dqm cycle was {{ $value | humanizeDuration }} "
        f"ago (threshold {_duration(PIPELINE_STALE_S)}).",
        comment="No successful cycle for 26h: one missed daily cycle plus 2h slack (for an "
        "hourly schedule about 3 intervals would do). `> 0`: a daemon that has never "
        "completed a cycle is not stale (a fresh install or an empty state store); its "
        "failures show through DqmRunFailed instead.",
    )


def _paused() -> PromRule:
    return PromRule(
        alert="DqmPaused",
        expr="dqm_paused == 1",
        for_="1m",
        severity="critical",
        summary="dqm circuit breaker is open; the pipeline is paused.",
        description="dqm on {{ $labels.instance }} is paused and runs no cycle until "
        "resumed.",
        comment="The circuit breaker stops every cycle until someone runs `monitor resume`.",
    )


def _daemon_health() -> list[PromRule]:
    return [
        PromRule(
            alert="DqmDaemonDown",
            expr='up{job="dqm"} == 0',
            for_="5m",
            severity="critical",
            summary="dqm daemon is down.",
            description="Prometheus cannot scrape the dqm daemon at {{ $labels.instance }}.",
            comment="The scrape fails: the daemon is down or its HTTP server hangs. 5m rides "
            "out a restart (graceful stop plus start).",
        ),
        PromRule(
            alert="DqmDaemonAbsent",
            expr='absent(up{job="dqm"})',
            for_="10m",
            severity="critical",
            summary="dqm scrape target is missing.",
            description="Prometheus has no target for job dqm; the daemon is not monitored.",
            comment="No dqm target at all: the scrape job was removed or service discovery "
            "lost it.",
        ),
        PromRule(
            alert="DqmSchedulerJobErrors",
            expr="increase(dqm_scheduler_job_errors_total[15m]) > 0",
            severity="warning",
            summary="dqm scheduler job {{ $labels.scheduler_job }} is failing.",
            description="Scheduler job {{ $labels.scheduler_job }} raised "
            '{{ $value | printf "%.0f" }} error(s) in the last 15m.',
            comment="A scheduler job raised. One error in 15m is worth a look; the job's own "
            "retries and the stale alert cover persistence. The exported `job` label (the "
            "scheduler job id) collides with the target label `job`; alerts/prometheus.yml "
            "moves it to `scheduler_job` at scrape time.",
        ),
        PromRule(
            alert="DqmSchedulerMissedRuns",
            expr="increase(dqm_scheduler_missed_runs_total[1h]) > 0",
            severity="warning",
            summary="dqm scheduler missed runs of {{ $labels.scheduler_job }}.",
            description="Scheduler job {{ $labels.scheduler_job }} missed "
            '{{ $value | printf "%.0f" }} run(s) in the last hour.',
            comment="The scheduler skipped a run (misfire grace time exceeded: the host slept "
            "or the previous cycle overran).",
        ),
    ]


# -- text ---------------------------------------------------------------------------


def _source(rule: AlertRule | None, kind: str, qualifier: str = "") -> str:
    """Where the threshold and selectors come from, for the rule's comment."""
    if rule is not None:
        return f"Set by config rule {rule.name}."
    what = f"kind {kind}" + (f", scope {qualifier}" if qualifier else "")
    return (
        f"Threshold: fixed in monitor/alerting/promrules.py; the config has no rule of {what} "
        "(adding one sets it here and makes the daemon alert too)."
    )


def _matchers(**globs: str) -> str:
    """PromQL label matchers for config globs; ``*`` matches anything and is left out."""
    parts = []
    for label, glob in globs.items():
        if glob == "*":
            continue
        if any(c in glob for c in "*?["):
            parts.append(f"{label}=~{json.dumps(_glob_regex(glob))}")
        else:
            parts.append(f"{label}={json.dumps(glob)}")
    return "{" + ", ".join(parts) + "}" if parts else ""


def _glob_regex(glob: str) -> str:
    """An fnmatch glob as an RE2 regex (Prometheus anchors it at both ends)."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        end = glob.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif end > 0:
            body = glob[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _duration(seconds: float) -> str:
    """1800 -> "30m", 93600 -> "26h": the unit the threshold is a whole number of."""
    if float(seconds).is_integer() and seconds:
        s = int(seconds)
        if s % 3600 == 0:
            return f"{s // 3600}h"
        if s % 60 == 0:
            return f"{s // 60}m"
    return f"{_num(seconds)}s"


def _scalar(text: str) -> str:
    """A YAML scalar: plain when that reads back unchanged, else double-quoted."""
    plain = re.fullmatch(r"[A-Za-z_(][^\n]*", text) and ": " not in text
    return text if plain and " #" not in text and text == text.strip() else json.dumps(text)


def _rule_lines(rule: PromRule) -> list[str]:
    lines = [f"      # {c}" for c in textwrap.wrap(rule.comment, 82, break_on_hyphens=False)]
    lines += [f"      - alert: {rule.alert}", f"        expr: {_scalar(rule.expr)}"]
    if rule.for_:
        lines.append(f"        for: {rule.for_}")
    anchor = f"{RUNBOOK}#{rule.alert.lower()}"
    lines += [
        "        labels:",
        f"          severity: {rule.severity}",
        "        annotations:",
        f"          summary: {json.dumps(rule.summary)}",
        f"          description: {json.dumps(rule.description)}",
        f"          runbook_url: {json.dumps(anchor)}",
    ]
    return lines
