"""Which integration serves each ``[[alerting.sinks]]`` kind, with its secrets read from
the environment when the sinks are built (never stored in the config or the outbox)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from monitor.alerting.sinks.alertmanager import AlertmanagerSink
from monitor.alerting.sinks.base import Sink, is_url
from monitor.alerting.sinks.log import LogSink
from monitor.alerting.sinks.pagerduty import PAGERDUTY_URL, PagerDutySink
from monitor.alerting.sinks.slack import SlackSink
from monitor.alerting.sinks.webhook import WebhookSink
from monitor.core.sections import SinkConfig


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
    if cfg.url_env and not is_url(url):
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
