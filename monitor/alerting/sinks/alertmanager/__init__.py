"""Alertmanager (API v2): every alert, grouped there by its ``incident`` label."""

from monitor.alerting.sinks.alertmanager.sink import AlertmanagerSink

__all__ = ["AlertmanagerSink"]
