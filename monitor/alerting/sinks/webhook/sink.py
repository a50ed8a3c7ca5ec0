"""The receiver gets the outbox's notification as is (plus ``version``) and drops a
re-send by its ``Idempotency-Key`` header, the same on every attempt of one row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.alerting.sinks.base import bearer, idempotency_header, post_json


@dataclass(frozen=True)
class WebhookSink:
    """Generic JSON webhook: the notification itself, plus ``version``."""

    name: str
    url: str = field(repr=False)
    timeout_s: float = 10.0
    token: str = field(default="", repr=False)

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Post the notification; ``Idempotency-Key`` lets the receiver drop a re-send."""
        post_json(self.url, {"version": 1, **note}, self.timeout_s,
                  {**bearer(self.token), **idempotency_header(idempotency_key)})
