"""PagerDuty deduplicates on the body's ``dedup_key`` (the alert's stable key, or its
incident's): a re-sent trigger joins the open incident, a re-sent resolve is ignored."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.alerting.sinks.base import idempotency_header, is_url, post_json

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


@dataclass(frozen=True)
class PagerDutySink:
    """PagerDuty Events API v2: trigger / resolve with ``dedup_key``."""

    name: str
    routing_key: str = field(repr=False)
    url: str = PAGERDUTY_URL
    timeout_s: float = 10.0
    source: str = ""

    def payload(self, note: Mapping[str, Any]) -> dict[str, Any]:
        """The Events v2 body for ``note``."""
        key = note["dedup_key"]
        if len(key) > 255:  # PagerDuty's limit; a hash keeps it stable
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        if note["status"] == "resolved":
            return {"routing_key": self.routing_key, "event_action": "resolve", "dedup_key": key}
        labels = note["labels"]
        body: dict[str, Any] = {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": key,
            "payload": {
                "summary": note["summary"][:1024],
                "source": self.source or socket.gethostname(),
                "severity": note["severity"],
                "timestamp": note["starts_at"],
                "component": labels.get("model")
                or labels.get("feed")
                or labels.get("suite")
                or "pipeline",
                "group": labels.get("layer", "pipeline"),
                "class": note["kind"],
                "custom_details": {
                    "description": note["description"],
                    "labels": labels,
                    "evidence": note["evidence"],
                    "run_id": note["run_id"],
                    "rule": note["rule"],
                },
            },
        }
        if note.get("related"):  # the incident's other alerts (models, evidence)
            body["payload"]["custom_details"]["related"] = note["related"]
        if is_url(note["evidence"]):
            body["links"] = [{"href": note["evidence"], "text": "Evidence"}]
        return body

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Post to PagerDuty (which deduplicates on the body's ``dedup_key``)."""
        post_json(self.url, self.payload(note), self.timeout_s,
                  idempotency_header(idempotency_key))
