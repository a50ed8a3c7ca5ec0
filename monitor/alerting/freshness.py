"""Between cycles: feed-age rules, and delivery of what the outbox still holds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

import sqlalchemy as sa

from monitor.alerting import outbox
from monitor.alerting.incidents import reconcile
from monitor.alerting.rules import Observations, evaluate, skipped_rules
from monitor.alerting.sinks.registry import build_sinks
from monitor.core.config import Config, state_url
from monitor.core.sections import AlertingConfig
from monitor.export.gauges import refresh_state_gauges
from monitor.export.prometheus import Metrics
from monitor.observe.feeds import feed_state
from monitor.store import state

log = logging.getLogger(__name__)


def deliver_outbox(alerting: AlertingConfig, st: sa.Engine, metrics: Metrics | None,
                   now: datetime | None = None) -> None:
    """Send the due outbox rows to the configured sinks; count each sent notification."""
    sinks = build_sinks(alerting.sinks)
    for d in outbox.deliver(st, sinks, now or datetime.now(UTC), config=alerting):
        if d.status == "sent" and metrics is not None and d.event != "refresh":
            metrics.alert_sent(d.sink, d.severity)


def check_freshness(
    cfg: Config, metrics: Metrics | None, now: datetime | None = None,
    last: Mapping[str, datetime | float | None] | None = None,
) -> list[str]:
    """The freshness job: feed-age rules only, between cycles; also retries the outbox.

    ``now`` and ``last`` (each feed's newest delivery) default to the clock and the
    batch ledger; a rehearsal on a logical calendar passes its own. Returns the alerts
    fired.
    """

    if last is None:
        last = feed_state(cfg)[0]
    st = state.open_state(state_url(cfg))
    try:
        now = now or datetime.now(UTC)
        observations = Observations(
            run_id="freshness", run_status="", feed_last_batch=last, now=now
        )
        rules = [r for r in cfg.alerting.rules if r.kind == "freshness"]
        rec = reconcile(
            st, evaluate(rules, observations), now, sinks=cfg.alerting.sinks,
            skip_rules=skipped_rules(cfg.alerting.rules, observations)
            | frozenset(r.name for r in cfg.alerting.rules if r.kind != "freshness"),
        )
        if rec.fired:
            log.warning("freshness: %s", ", ".join(rec.fired))
        deliver_outbox(cfg.alerting, st, metrics, now)
        if metrics is not None:
            refresh_state_gauges(cfg, metrics)
        return list(rec.fired)
    finally:
        st.dispose()
