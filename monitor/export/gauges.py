"""Gauges that reflect stored state (feeds, the paused flag), refreshed between cycles."""

from __future__ import annotations

from datetime import UTC

from monitor.core.config import Config, state_url
from monitor.export.prometheus import Metrics
from monitor.observe.feeds import feed_state
from monitor.store import state


def refresh_state_gauges(cfg: Config, metrics: Metrics) -> None:
    """Gauges that reflect stored state: feeds, paused flag."""

    last, counts = feed_state(cfg)
    for feed, (held, quarantined) in counts.items():
        at = last.get(feed)
        metrics.set_feed(feed, held, quarantined, at.timestamp() if at else None)
    metrics.retain_feeds(counts)
    st = state.open_state(state_url(cfg))
    try:
        metrics.set_paused(state.paused(st) is not None)
        last_ok = state.last_success(st)
        if last_ok is not None:  # a restart must not look like a stale pipeline
            metrics.set_last_success(last_ok.replace(tzinfo=UTC).timestamp())
    finally:
        st.dispose()
