"""Slack (incoming webhook): one message per incident's transition."""

from monitor.alerting.sinks.slack.sink import SlackSink

__all__ = ["SlackSink"]
