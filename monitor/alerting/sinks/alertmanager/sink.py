"""Alertmanager resolves an alert by itself at its ``endsAt``, so a still-firing alert
is re-sent (``refresh``) before then; a re-send carries the same label set (with
``dedup_key``) and updates the alert Alertmanager holds, without a second notification."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from monitor.alerting.sinks.base import bearer, idempotency_header, is_url, post_json
from monitor.alerting.utc import aware, iso


@dataclass(frozen=True)
class AlertmanagerSink:
    """``POST {url}/api/v2/alerts``: labels alertname/severity/dedup_key + alert labels."""

    name: str
    url: str
    timeout_s: float = 10.0
    firing_ttl_s: float = 7 * 86400.0
    token: str = field(default="", repr=False)

    def payload(self, note: Mapping[str, Any], now: datetime) -> list[dict[str, Any]]:
        """The API v2 body for ``note``."""
        labels = {k: str(v) for k, v in note["labels"].items()}
        labels.update(
            alertname=note["rule"], severity=note["severity"], dedup_key=note["dedup_key"]
        )
        annotations = {"summary": note["summary"], "description": note["description"]}
        if note["evidence"]:
            annotations["evidence"] = note["evidence"]
        if note["status"] == "resolved":
            ends = note["ends_at"]
        else:
            ends = iso(aware(now) + timedelta(seconds=self.firing_ttl_s))
        alert: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": note["starts_at"],
            "endsAt": ends,
        }
        if is_url(note["evidence"]):
            alert["generatorURL"] = note["evidence"]
        return [alert]

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Post to Alertmanager."""
        post_json(
            self.url.rstrip("/") + "/api/v2/alerts",
            self.payload(note, now),
            self.timeout_s,
            {**bearer(self.token), **idempotency_header(idempotency_key)},
        )
