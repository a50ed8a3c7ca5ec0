"""A sink that cannot fail, so a deployment without any receiver still sees its alerts
(a re-send after a crash is logged twice)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Kept from before the split into subpackages: log filters and tests match on it.
LOGGER = "monitor.alerts"


@dataclass(frozen=True)
class LogSink:
    """Writes notifications to the ``monitor.alerts`` logger; never fails."""

    name: str
    timeout_s: float = 1.0

    def send(self, note: Mapping[str, Any], now: datetime, idempotency_key: str = "") -> None:
        """Log the notification."""
        levels = {"critical": logging.ERROR, "warning": logging.WARNING}
        level = (
            logging.INFO
            if note["status"] == "resolved"
            else levels.get(note["severity"], logging.INFO)
        )
        grouped = ""
        if note.get("role") == "member":  # its incident's lead pages; this one informs
            level = min(level, logging.WARNING)
            grouped = f" incident={note['incident']}"
        elif note.get("related"):
            grouped = f" incident={note['incident']} related={len(note['related'])}"
        logging.getLogger(LOGGER).log(
            level,
            "[%s:%s] %s (%s) evidence=%s%s",
            note["status"].upper(),
            note["severity"],
            note["summary"],
            note["dedup_key"],
            note["evidence"] or "-",
            grouped,
        )
