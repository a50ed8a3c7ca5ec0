"""Config sections: one frozen dataclass per TOML section, validated on load."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from monitor.core.columns import TOUCHED_SUFFIX

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")


RULE_KINDS: tuple[str, ...] = ("runtime", "cost", "drift", "validation", "freshness", "run_failed")


SINK_KINDS: tuple[str, ...] = ("alertmanager", "pagerduty", "slack", "webhook", "log")


_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # fullmatch: "$" accepts a final "\n"


_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_name(what: str, value: str) -> None:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r}: use 1-100 of letters, digits, '_', '.', '-'")


def _check_env_name(what: str, value: str) -> None:
    if value and not _ENV_RE.fullmatch(value):
        raise ValueError(f"{what} must name an environment variable, got {value!r}")


@dataclass(frozen=True)
class AlertRule:
    """One ``[[alerting.rules]]`` entry.

    Keys: ``name``; ``kind`` (runtime | cost | drift | validation | freshness |
    run_failed); ``severity`` (critical | warning | info); ``threshold`` (runtime:
    seconds, cost: currency units, drift: |z| (unset = the detector's anomalous flag),
    validation: failures tolerated (default 0), freshness: hours; fires when exceeded,
    drift when reached); ``selector`` (glob on model for runtime/cost, metric for drift,
    suite for validation, feed for freshness, run status for run_failed (default
    ``failed``)); ``scope`` (runtime/cost: ``model`` or ``run``); ``layer`` (runtime/cost
    and drift: glob on the model's layer, from dbt metadata, so marts of any naming
    match ``fct``); ``model`` (drift: glob on model); ``exclude`` (drift: metric
    globs left out, e.g. ``["runtime_seconds", "cost"]`` so a noisy runtime never pages).
    """

    name: str = ""
    kind: str = "run_failed"
    severity: str = "warning"
    threshold: float | None = None
    selector: str | None = None
    scope: str = "model"
    layer: str = "*"
    model: str = "*"
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        _check_name("rule name", self.name)
        if self.kind not in RULE_KINDS:
            raise ValueError(f"rule {self.name}: kind {self.kind!r} not in {RULE_KINDS}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"rule {self.name}: severity {self.severity!r} not in {SEVERITIES}")
        if self.scope not in ("model", "run"):
            raise ValueError(f"rule {self.name}: scope must be 'model' or 'run'")
        if self.kind in ("runtime", "cost", "freshness") and self.threshold is None:
            raise ValueError(f"rule {self.name}: kind {self.kind} needs a threshold")
        if self.threshold is not None and (math.isnan(self.threshold) or self.threshold < 0):
            raise ValueError(f"rule {self.name}: threshold must be a number >= 0")

    @property
    def pattern(self) -> str:
        """The effective selector glob."""
        if self.selector is not None:
            return self.selector
        return "failed" if self.kind == "run_failed" else "*"


@dataclass(frozen=True)
class SinkConfig:
    """One ``[[alerting.sinks]]`` entry.

    Keys: ``name``; ``kind`` (alertmanager | pagerduty | slack | webhook | log);
    ``severities`` (the severities routed to it; default all); ``url`` (alertmanager
    base URL, webhook URL, PagerDuty events URL override); ``url_env`` (env var holding
    the URL instead: required for slack, whose webhook URL is a secret);
    ``routing_key_env`` (pagerduty: env var holding the routing key, required);
    ``token_env`` (alertmanager/webhook: env var holding a bearer token, optional);
    ``timeout_s``; ``firing_ttl_s`` (alertmanager: ``endsAt`` of a firing alert is send
    time + this; refreshed every half of it while firing); ``source`` (pagerduty
    ``payload.source``; default the host name).
    """

    name: str = "log"
    kind: str = "log"
    severities: tuple[str, ...] = SEVERITIES
    url: str = ""
    url_env: str = ""
    routing_key_env: str = ""
    token_env: str = ""
    timeout_s: float = 10.0
    firing_ttl_s: float = 7 * 86400.0
    source: str = ""

    def __post_init__(self) -> None:
        _check_name("sink name", self.name)
        object.__setattr__(self, "severities", tuple(self.severities))
        if self.kind not in SINK_KINDS:
            raise ValueError(f"sink {self.name}: kind {self.kind!r} not in {SINK_KINDS}")
        bad = set(self.severities) - set(SEVERITIES)
        if bad:
            raise ValueError(f"sink {self.name}: unknown severities {sorted(bad)}")
        for key in ("url_env", "routing_key_env", "token_env"):
            _check_env_name(f"sink {self.name}: {key}", getattr(self, key))
        if self.timeout_s <= 0 or self.firing_ttl_s <= 0:
            raise ValueError(f"sink {self.name}: timeout_s and firing_ttl_s must be > 0")
        self._check_kind_keys()

    def _check_kind_keys(self) -> None:
        if self.kind == "slack" and (self.url or not self.url_env):
            raise ValueError(f"sink {self.name}: a Slack webhook URL is a secret; set url_env")
        if self.kind == "pagerduty" and not self.routing_key_env:
            raise ValueError(f"sink {self.name}: pagerduty needs routing_key_env")
        if self.kind in ("alertmanager", "webhook") and not (self.url or self.url_env):
            raise ValueError(f"sink {self.name}: {self.kind} needs url or url_env")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"sink {self.name}: url must be http(s)")


@dataclass(frozen=True)
class AlertingConfig:
    """The ``[alerting]`` section.

    Keys: ``rules`` (list of :class:`AlertRule`), ``sinks`` (list of
    :class:`SinkConfig`; routing = each sink's ``severities``), ``backoff_base_s``,
    ``backoff_max_s`` (retry delay = min(base * 2**(attempts-1), max)),
    ``max_attempts`` (then the outbox row is ``dead``).
    """

    rules: tuple[AlertRule, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0
    max_attempts: int = 10

    def __post_init__(self) -> None:
        # Accept lists of mappings too, so any TOML loader can hand sections over.
        rules = tuple(r if isinstance(r, AlertRule) else AlertRule(**r) for r in self.rules)
        sinks = tuple(s if isinstance(s, SinkConfig) else SinkConfig(**s) for s in self.sinks)
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "sinks", sinks)
        for what, names in (("rule", [r.name for r in rules]), ("sink", [s.name for s in sinks])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} names: {dupes}")
        if self.backoff_base_s <= 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_max_s")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")

    def backoff(self, attempts: int) -> timedelta:
        """Delay before the next try after ``attempts`` failed tries."""
        exp = min(max(attempts - 1, 0), 60)  # cap the exponent: 2**60 s is already "max"
        return timedelta(seconds=min(self.backoff_base_s * 2**exp, self.backoff_max_s))


@dataclass(frozen=True)
class CostConfig:
    """Cost settings (TOML section ``[cost]``).

    Keys:
        currency: label for the dqm_*_cost gauges ("USD").
        compute_per_hour: price per warehouse-hour, or per core-hour if ``cores`` (4.0).
        per_tb_scanned: price per TB read (5.0).
        cores: cores billed; None = price is per warehouse (None).
        avg_row_bytes: assumed row width when only rows are known (200).
        bytes_per_tb: bytes in one billed TB (10**12).
    """

    currency: str = "USD"
    compute_per_hour: float = 4.0
    per_tb_scanned: float = 5.0
    cores: int | None = None
    avg_row_bytes: int = 200
    bytes_per_tb: int = 10**12

    def __post_init__(self) -> None:
        if self.compute_per_hour < 0 or self.per_tb_scanned < 0:
            raise ValueError("cost rates must be >= 0")
        if self.cores is not None and self.cores < 1:
            raise ValueError("cores must be >= 1 or unset")
        if self.avg_row_bytes < 0 or self.bytes_per_tb <= 0:
            raise ValueError("avg_row_bytes must be >= 0 and bytes_per_tb > 0")


@dataclass(frozen=True)
class DriftConfig:
    """Drift scoring settings (TOML section ``[drift]``).

    Keys:
        window: max number of comparable prior points in the baseline (28).
        min_history: fewer comparable points → z reported, never flagged (14).
        seasonal: rescale the baseline to the tested weekday, with the weekly pattern
            learned from the baseline's own points (True).
        robust: median/MAD instead of mean/std (True).
        threshold: |z| at or above this → anomalous, severity ``warning`` (3.0).
        hard_limit: |z| at or above this → severity ``critical`` (6.0).
        seasonal_fallback: kept for old config files; the learned weekly pattern made
            it moot (every weekday is comparable once rescaled).
        min_spread_ratio: spread floor as a fraction of |baseline| (0.1): day-to-day
            business volumes move by more than their own short history shows.
        min_stable_spread_ratio: the floor for ``stable_metrics`` (0.02): a sum per added
            row or a median moves far less from day to day than a volume does, so a 20%
            inflation of a mart's sum per row is drift where a 20% busier day is not.
        stable_metrics: globs of metrics with that lower floor.
        per_row_cv: the spread of a column's values relative to their mean, assumed for
            a ``per_row:`` mean over the rows one run added while its baseline is too
            short to show its own spread (1.0): the spread is then floored at the mean's
            sampling noise, ``per_row_cv / sqrt(rows added)`` of the baseline; 300
            added rows move a mean by ~6% by chance, 20M rows by ~0.02%.
        spread_min_points: baselines with fewer points than this do not trust their own
            robust spread alone: the sampling-noise floor above applies (5).
        min_level_ratio: for a change series, spread floor as a fraction of the level it
            changes (0.001): a table that never grew does not make +1 row infinite.
        min_spread_abs: absolute spread floor, for baselines at 0 (1e-9).
        month_end_days: last N days of a month form a separate regime; 0 = off (0).
        month_end_uplift: allowed relative rise on month-end days (0.0).
        metrics: fnmatch patterns of metric names to score (all).
        delta_metrics: globs of cumulative metrics scored as change since the previous
            point rather than as levels (``row_count``, ``distinct_keys``).
    """

    window: int = 28
    min_history: int = 14
    seasonal: bool = True
    robust: bool = True
    threshold: float = 3.0
    hard_limit: float = 6.0
    seasonal_fallback: bool = False
    min_spread_ratio: float = 0.1
    min_stable_spread_ratio: float = 0.02
    stable_metrics: tuple[str, ...] = ("per_row:*", "median:*", "mean:*", "avg:*")
    per_row_cv: float = 1.0
    spread_min_points: int = 5
    min_level_ratio: float = 0.001
    min_spread_abs: float = 1e-9
    month_end_days: int = 0
    month_end_uplift: float = 0.0
    metrics: tuple[str, ...] = ("*",)
    # Sums over a growing table grow with it: their daily increment is what drifts.
    delta_metrics: tuple[str, ...] = ("row_count", "distinct_keys", "sum:*")

    def __post_init__(self) -> None:
        # A TOML loader hands arrays over as lists; keep the dataclass hashable.
        for name in ("metrics", "delta_metrics", "stable_metrics"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.window < 1 or self.min_history < 0:
            raise ValueError("drift window must be >= 1 and min_history >= 0")
        if not 0 < self.threshold <= self.hard_limit:
            raise ValueError("drift needs 0 < threshold <= hard_limit")
        if self.per_row_cv < 0 or self.spread_min_points < 0:
            raise ValueError("drift per_row_cv and spread_min_points must be >= 0")
        if not 0 <= self.month_end_days <= 28 or self.month_end_uplift < 0:
            raise ValueError("month_end_days must be 0..28 and month_end_uplift >= 0")

    def is_stable(self, metric: str) -> bool:
        """A mean-like metric (a median, a sum per row): no weekly volume pattern, a
        lower spread floor."""
        return any(fnmatch.fnmatchcase(metric, pat) for pat in self.stable_metrics)

    def floor_ratio(self, metric: str) -> float:
        """The spread floor, as a share of the baseline, for this metric."""
        return self.min_stable_spread_ratio if self.is_stable(metric) else self.min_spread_ratio

    def sampling_noise_ratio(self, rows: float) -> float:
        """A mean over ``rows`` rows moves by chance by this share of itself."""
        return self.per_row_cv / math.sqrt(rows) if rows > 0 else 0.0

    def is_delta(self, metric: str) -> bool:
        """Scored as the change since the previous point: a cumulative metric. A
        ``:touched`` aggregate reads only the cycle's rows, so it is already per run."""
        return not metric.endswith(TOUCHED_SUFFIX) and any(
            fnmatch.fnmatchcase(metric, pat) for pat in self.delta_metrics)


AGG_FUNCS = frozenset({"sum", "avg", "min", "max", "median"})


AGG_SCOPES = ("table", "touched")


@dataclass(frozen=True)
class AggregateSpec:
    """Aggregates of one column of one model.

    ``scope``: ``table`` aggregates every row (metric ``<func>:<column>``); ``touched``
    only the rows the cycle published, those whose ``_publish_seq`` is above the
    watermark the cycle started from, as the touched suites read them (metric
    ``<func>:<column>:touched``). A median, avg, min or max of a whole incremental
    table is a scan and a sort of all of its history every cycle (a DuckDB median holds
    every value in memory, and runs out of it on a large fact), and one bad day barely
    moves it; over the day's rows it costs what the day costs and moves with the day.
    """

    model: str
    column: str
    funcs: tuple[str, ...] = ("sum",)
    scope: str = "table"

    def __post_init__(self) -> None:
        object.__setattr__(self, "funcs", tuple(dict.fromkeys(self.funcs)))
        bad = [f for f in self.funcs if f not in AGG_FUNCS]
        if bad or not self.funcs:
            raise ValueError(f"aggregate funcs must be among {sorted(AGG_FUNCS)}: {bad}")
        if not self.model or not self.column:
            raise ValueError("aggregate needs a model and a column")
        if self.scope not in AGG_SCOPES:
            raise ValueError(f"aggregate scope must be one of {list(AGG_SCOPES)}: "
                             f"{self.scope!r}")

    @property
    def metrics(self) -> list[tuple[str, str]]:
        """(metric name, func) of each aggregate."""
        suffix = TOUCHED_SUFFIX if self.scope == "touched" else ""
        return [(f"{f}:{self.column}{suffix}", f) for f in self.funcs]

    @classmethod
    def parse(cls, raw: AggregateSpec | Mapping[str, Any]) -> AggregateSpec:
        """Accept a spec or a TOML table ``{model, column, funcs, scope}``."""
        if isinstance(raw, AggregateSpec):
            return raw
        funcs = raw.get("funcs", ("sum",))
        funcs = (funcs,) if isinstance(funcs, str) else tuple(funcs)
        return cls(model=str(raw["model"]), column=str(raw["column"]), funcs=funcs,
                   scope=str(raw.get("scope", "table")))


@dataclass(frozen=True)
class ProfileConfig:
    """Layer profile settings (TOML section ``[profile]``).

    Keys:
        aggregates: list of ``{model, column, funcs, scope}`` tables; funcs among sum,
            avg, min, max, median (default ``["sum"]``); scope ``table`` (default) or
            ``touched`` (the rows the cycle published; :class:`AggregateSpec`). Lists
            are accepted and normalized.
        layers: only profile these layers (empty = all).
        exclude: node names not to profile.
        include_sources: profile dbt sources too (True).
        full_count_every: count an incremental table's distinct keys in full every
            this many counts (7); in between only the keys merged since the last count
            are checked (:mod:`monitor.observe.carry`). 1 counts in full every time.
        views: profile models materialized as views too (True). A view has no rows
            of its own: counting it re-runs everything it reads. A view keyed by batch
            is counted on the new batches only, with carried totals
            (:mod:`monitor.observe.carry`), so its cost follows the day's volume; any
            other view is re-run over all history every cycle. False profiles only the
            tables (sources, incremental models, facts); the post-build suites still
            check the views' grain on the rows each cycle touched, but triage then
            cannot say in which view rows multiplied.
    """

    aggregates: tuple[AggregateSpec, ...] = ()
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_sources: bool = True
    views: bool = True
    full_count_every: int = 7
    default_sums: int = 4

    def __post_init__(self) -> None:
        if self.default_sums < 0:
            raise ValueError("default_sums must be >= 0 (0: no default aggregates)")
        if self.full_count_every < 1:
            raise ValueError("full_count_every must be >= 1 (1: count every table in full)")
        specs = tuple(AggregateSpec.parse(a) for a in self.aggregates)
        object.__setattr__(self, "aggregates", specs)
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "exclude", tuple(self.exclude))


@dataclass(frozen=True)
class VolumeBands:
    """How one feed's day volume is judged (``[volume]``, ``[volume.feeds.<feed>]``).

    Keys:
        enabled: judge this feed's day volume (True).
        surge_ratio / drop_ratio: a day at or beyond these multiples of its expectation
            is held once ``hold_after_days`` of history exist (2.0 / 0.5).
        cold_surge_ratio / cold_drop_ratio: held from the first comparable day of history
            (3.0 / 0.2): a new feed's five-fold day does not wait two weeks.
        hold_after_days: days of history before a breach holds and pages (14).
        warn_after_days: fewer days of history: not judged at all (5).
        warn_z: robust z of the day's log-ratio that warns inside the band (3.0).
        min_relative_spread: floor of that spread, as a relative change (0.1).
        window_days: days of history the expectation is learned from (56).
        supplement_max_ratio: a batch below this share of the expected day may be a
            supplement (0.5) ...
        supplement_known_keys: ... when at least this share of its keys are known (0.8).
        resend_share: a batch sharing this share of its rows with another batch of the
            same cycle is a resend (0.5).
        history_batches: published batches searched for known keys (14).
    """

    enabled: bool = True
    surge_ratio: float = 2.0
    drop_ratio: float = 0.5
    cold_surge_ratio: float = 3.0
    cold_drop_ratio: float = 0.2
    hold_after_days: int = 14
    warn_after_days: int = 5
    warn_z: float = 3.0
    min_relative_spread: float = 0.1
    window_days: int = 56
    supplement_max_ratio: float = 0.5
    supplement_known_keys: float = 0.8
    resend_share: float = 0.5
    history_batches: int = 14

    def __post_init__(self) -> None:
        if not 0 < self.drop_ratio < 1 < self.surge_ratio:
            raise ValueError("volume needs 0 < drop_ratio < 1 < surge_ratio")
        if not 0 < self.cold_drop_ratio < 1 < self.cold_surge_ratio:
            raise ValueError("volume needs 0 < cold_drop_ratio < 1 < cold_surge_ratio")
        if not 0 <= self.warn_after_days <= self.hold_after_days:
            raise ValueError("volume needs 0 <= warn_after_days <= hold_after_days")
        if self.warn_z <= 0 or self.min_relative_spread <= 0 or self.window_days < 1:
            raise ValueError("volume needs warn_z > 0, min_relative_spread > 0, window_days >= 1")
        for name in ("supplement_max_ratio", "supplement_known_keys", "resend_share"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"volume {name} must be in (0, 1]")


@dataclass(frozen=True)
class VolumeConfig(VolumeBands):
    """``[volume]``: the defaults; ``[volume.feeds.<feed>]`` replaces them for one feed
    (keys left out there take the built-in defaults)."""

    feeds: dict[str, VolumeBands] = field(default_factory=dict)

    def bands(self, feed: str) -> VolumeBands:
        return self.feeds.get(feed, self)
