"""Slack's incoming webhooks do not deduplicate: a re-send after a crash shows the
message twice (the ``Idempotency-Key`` header still goes, for a relay's sake)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.alerting.sinks.base import idempotency_header, post_json


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class SlackSink:
    """Slack incoming webhook: one ``text`` message per transition."""

    name: str
    url: str = field(repr=False)
    timeout_s: float = 10.0

    def payload(self, note: Mapping[str, Any]) -> dict[str, Any]:
        """The webhook body for ``note``."""
        if note["status"] == "resolved":
            head = f":white_check_mark: [RESOLVED] {note['summary']}"
        else:
            icon = {"critical": ":red_circle:", "warning": ":warning:"}.get(
                note["severity"], ":information_source:"
            )
            head = f"{icon} [FIRING:{note['severity']}] {note['summary']}"
        lines = [head, note["description"]]
        if note["evidence"]:
            lines.append(f"Evidence: {note['evidence']}")
        return {"text": "\n".join(_escape(x) for x in lines)}

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Post to Slack (which does not deduplicate: the header is for a relay's sake)."""
        post_json(self.url, self.payload(note), self.timeout_s,
                  idempotency_header(idempotency_key))
