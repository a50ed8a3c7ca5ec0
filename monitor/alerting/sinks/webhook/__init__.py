"""Generic JSON webhook: the sink-neutral notification itself."""

from monitor.alerting.sinks.webhook.sink import WebhookSink

__all__ = ["WebhookSink"]
