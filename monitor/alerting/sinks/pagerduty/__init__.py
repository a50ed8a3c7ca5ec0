"""PagerDuty (Events API v2): one page per incident."""

from monitor.alerting.sinks.pagerduty.sink import PAGERDUTY_URL, PagerDutySink

__all__ = ["PAGERDUTY_URL", "PagerDutySink"]
