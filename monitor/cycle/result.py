"""The result of one cycle, and the exit codes of `monitor once`."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.observe.run import RunObservation
from monitor.stages.build import DbtResult
from monitor.stages.ingest import IngestReport
from monitor.stages.volume import DayVerdict

# Exit codes of `monitor once`.
EXIT_OK, EXIT_FAILED, EXIT_ATTENTION, EXIT_BUSY = 0, 1, 3, 4


@dataclass
class CycleResult:
    run_id: str
    status: str = "running"  # success | failed | held | interrupted
    reason: str = ""
    started: float = field(default_factory=time.monotonic)
    duration_s: float = 0.0
    ingest: IngestReport = field(default_factory=IngestReport)
    published: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    dbt: DbtResult | None = None
    layer_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    validation_failures: dict[str, int] = field(default_factory=dict)
    evidence_dir: Path | None = None
    observation: RunObservation | None = None
    paused: bool = False  # the breaker was already tripped: this run built nothing
    # holds of runs killed after their gate, before they were recorded (by run id)
    interrupted_holds: dict[str, list[str]] = field(default_factory=dict)
    breaker: str = ""  # why this run tripped the circuit breaker ("" = it did not)
    # The touched rows' watermark this cycle checks above (monitor.store.watermark), and
    # the publish_seq its build merges through (recorded as the next one on success).
    hwm_before: int = 0
    merged_through: int = 0
    phase: str = ""
    mark: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    failed_checks: list[str] = field(default_factory=list)
    volume: list[DayVerdict] = field(default_factory=list)  # the gate's feed-day verdicts
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status == "failed":
            return EXIT_FAILED
        if self.status == "held":
            return EXIT_ATTENTION
        return EXIT_OK


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)
