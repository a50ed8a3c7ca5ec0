"""What every triage step shares: the run under analysis and its history (``Context``),
the failure classes, and small helpers for warehouse queries and JSON-safe values.

The bottom layer of ``monitor.triage``: it imports none of the step modules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.core.config import Config
from monitor.core.manifest import ModelInfo, Project
from monitor.store import state
from monitor.store.state import metric_points

CLASSES = (
    "volume_surge", "partial_delivery", "key_explosion", "duplicate_batch",
    "incremental_predicate", "schema_drift", "null_storm", "logic_regression",
)  # fmt: skip
UNDETERMINED = "undetermined"
PERF_METRICS = frozenset({"runtime_seconds", "cost"})
GROWTH_RATIO = 1.5  # rows per input row grew by this factor → expansion
SAMPLE_ROWS = 10
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT",
            "USMALLINT", "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC")
_TEXT = ("VARCHAR", "TEXT", "STRING", "CHAR", "NVARCHAR")


class TriageError(RuntimeError):
    """The triage cannot be done (no such run, a cycle holds the warehouse, ...)."""


@dataclass(frozen=True)
class RunRow:
    run_id: str
    status: str
    reason: str | None
    started_at: datetime
    ended_at: datetime | None
    phase: str | None
    trigger: str
    full_refresh: bool
    summary: dict[str, Any]


@dataclass(frozen=True)
class Join:
    """A declared (``meta.joins``) or inferred join of a model to one of its parents."""

    input: str
    key: str
    model_key: str
    unique_per: str | None = None
    declared: bool = False


@dataclass(frozen=True)
class LedgerRow:
    batch_id: str
    feed: str
    source_file: str
    status: str
    load_seq: int
    publish_seq: int | None
    rows_read: int
    rows_loaded: int
    reason: str | None
    ingested_at: datetime
    decided_at: datetime | None
    decision_reason: str | None


@dataclass
class Context:
    """Everything the steps share: config, runs, points, lineage, ledger, columns."""

    cfg: Config
    st: sa.Engine
    run: RunRow
    runs: list[RunRow]  # every run up to and including ``run``, oldest first
    baseline: RunRow | None
    project: Project | None
    joins: dict[str, list[Join]]
    manifest: dict[str, Any]
    points: dict[str, dict[tuple[str, str], Any]]
    with_points: set[str]
    ledger: list[LedgerRow]
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # uid -> col -> type
    notes: list[str] = field(default_factory=list)
    samples: dict[str, Any] = field(default_factory=dict)

    @property
    def evidence_dir(self) -> Path:
        return self.cfg.evidence.dir / self.run.run_id

    def before(self, run: RunRow | None) -> RunRow | None:
        """The latest run observed (with metric points) before ``run``."""
        if run is None:
            return None
        earlier = [r for r in self.runs if r.started_at < run.started_at]
        for r in reversed(earlier):
            if r.run_id in self.with_points:
                return r
        return None

    def pts(self, run: RunRow | None) -> dict[tuple[str, str], Any]:
        return self.points.get(run.run_id, {}) if run is not None else {}

    def value(self, run: RunRow | None, model: str, metric: str) -> float | None:
        p = self.pts(run).get((model, metric))
        return float(p.value) if p is not None else None

    def history(self, model: str, metric: str, until: datetime
                ) -> list[tuple[datetime, float, bool]]:
        """The metric's last 60 observations up to ``until`` (value, anomalous), oldest
        first; one per observation time (the latest point recorded for it)."""
        mp = metric_points
        latest = (sa.select(sa.func.max(mp.c.id)).where(
            mp.c.model == model, mp.c.metric == metric, mp.c.observed_at <= until)
            .group_by(mp.c.observed_at))
        with self.st.connect() as conn:
            rows = conn.execute(sa.select(mp.c.observed_at, mp.c.value, mp.c.anomalous)
                                .where(mp.c.id.in_(latest)).order_by(mp.c.observed_at.desc())
                                .limit(60)).all()
        return [(r[0], float(r[1]), bool(r[2])) for r in reversed(rows)]

    def batches_of(self, run: RunRow | None) -> list[LedgerRow]:
        """Batches a run brought: loaded in it, or published since the run before it."""
        if run is None:
            return []
        earlier = [r for r in self.runs if r.started_at < run.started_at]
        lo = (earlier[-1].ended_at or earlier[-1].started_at) if earlier else None
        hi = run.ended_at or state.utcnow()
        out = []
        for b in self.ledger:
            published = b.decided_at if b.status == "published" else None
            if _within(b.ingested_at, lo, hi) or (published and _within(published, lo, hi)):
                out.append(b)
        return out

    def new_ids(self, run: RunRow | None) -> list[str]:
        return [b.batch_id for b in self.batches_of(run) if b.status != "quarantined"]

    def node(self, name: str) -> ModelInfo | None:
        if self.project is None:
            return None
        try:
            return self.project.by_name(name)
        except KeyError:
            return None


def _within(at: datetime, lo: datetime | None, hi: datetime) -> bool:
    return (lo is None or at > lo) and at <= hi


def table_of(node: ModelInfo, cols: Iterable[str]) -> sa.TableClause:
    return sa.table(node.identifier, *(sa.column(c) for c in dict.fromkeys(cols)),
                    schema=node.schema)


def is_numeric(typ: str) -> bool:
    return typ.startswith(_NUMERIC)


def is_text(typ: str) -> bool:
    return typ.startswith(_TEXT)


def data_columns(cols: Mapping[str, str]) -> list[str]:
    """Columns that carry data (audit columns start with ``_``)."""
    return [c for c in cols if not c.startswith("_")]


def fetch_rows(conn: sa.Connection, query: sa.Select[Any]) -> list[dict[str, Any]]:
    return [{k: jsonable(v) for k, v in r.items()} for r in conn.execute(query).mappings()]


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def as_int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]

