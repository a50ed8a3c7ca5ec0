"""What the triage finds: one dataclass per step's result, and ``Triage``, the report
they make up (``Triage.to_doc`` is what the renderers and ``report.json`` read).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from monitor.triage.context import json_default


@dataclass
class LayerCount:
    """One relation's counts in this run and the last good one."""

    model: str
    layer: str
    rows: int | None
    rows_before: int | None
    added: int | None = None  # rows this run added (vs the run before it)
    added_before: int | None = None  # rows the baseline added
    distinct_keys: int | None = None
    duplicate_keys: int | None = None
    duplicate_keys_before: int | None = None
    input: str | None = None  # the parent the rows flow from
    out_per_in: float | None = None
    out_per_in_before: float | None = None
    flagged: str = ""  # why this relation grows out of proportion ("" = it does not)


@dataclass
class OffendingKey:
    key: str
    model_rows: int  # rows of the model with this key (excess over one per grain key)
    input_rows: int  # rows of the input with this key
    per: str | None = None  # the unique_per value (e.g. the batch) it repeats in


@dataclass
class ExpansionPoint:
    model: str | None = None
    layer: str | None = None
    key: str | None = None  # the input's join column
    model_key: str | None = None
    input: str | None = None
    grew: bool = False  # the model's output did multiply (False: a latent duplicate key)
    reason: str = "no model grows out of proportion to its inputs"
    rows: int | None = None
    rows_before: int | None = None
    out_per_in: float | None = None
    out_per_in_before: float | None = None
    duplicated_keys: int = 0
    offending_keys: list[OffendingKey] = field(default_factory=list)
    source: str | None = None  # the raw source behind the input
    batches: list[str] = field(default_factory=list)
    inflated: str | None = None  # the sum metric that grew while the rows did not


@dataclass
class BatchFinding:
    batch_id: str
    feed: str
    source_file: str
    status: str
    rows: int
    reason: str | None = None
    repeats: str | None = None  # the earlier batch it repeats
    repeat_share: float | None = None
    repeat_share_before: float | None = None
    resend: bool = False  # repeats an earlier batch though the feed's batches did not


@dataclass
class ColumnShift:
    relation: str
    layer: str
    column: str
    kind: str  # nulls | scale
    now: float
    before: float
    rows_now: int
    rows_before: int


@dataclass
class ModelDiff:
    """A model's production table against its full refresh on an isolated copy."""

    model: str
    key: list[str]
    prod_rows: int = 0
    refresh_rows: int = 0
    prod_duplicate_keys: int = 0
    refresh_duplicate_keys: int = 0
    only_in_prod: int = 0
    only_in_refresh: int = 0
    changed: int = 0
    verdict: str = "equal"  # equal | incremental filter | unique key | retained keys
    explanation: str = ""


@dataclass
class Isolation:
    ran: bool = False
    reason: str = ""
    scratch: str = ""  # what the rebuild wrote into: "copy" (DuckDB), "scratch schema"
    warehouse_copy: str = ""  # where: the copy's path, or the schema and database
    copy_bytes: int = 0
    seconds: float = 0.0
    models: list[str] = field(default_factory=list)
    failed_tests: list[str] = field(default_factory=list)
    prod_checksum_before: str = ""
    prod_checksum_after: str = ""
    diffs: list[ModelDiff] = field(default_factory=list)


@dataclass
class Finding:
    cls: str
    summary: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class Triage:
    run: dict[str, Any]
    baseline_run_id: str | None
    root_cause: str
    summary: str
    evidence: list[str]
    findings: list[Finding]
    expansion_point: ExpansionPoint
    counts: list[LayerCount]
    batches: list[BatchFinding]
    columns: list[ColumnShift]
    isolation: Isolation
    longest_models: list[dict[str, Any]]
    query_plan: dict[str, Any]
    validation_failures: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    plots: list[dict[str, Any]]
    commands: dict[str, list[str]]
    notes: list[str]
    samples: dict[str, list[dict[str, Any]]]
    generated_at: str
    evidence_dir: str

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    def to_doc(self) -> dict[str, Any]:
        """The report as JSON-safe data (``run_id`` and ``root_cause`` first)."""
        doc: dict[str, Any] = {"run_id": self.run_id, "root_cause": self.root_cause}
        doc.update(json.loads(json.dumps(asdict(self), default=json_default)))
        return doc
