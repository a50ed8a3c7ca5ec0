"""The log: every notification, on the ``monitor.alerts`` logger."""

from monitor.alerting.sinks.log.sink import LogSink

__all__ = ["LogSink"]
