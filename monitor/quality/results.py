"""What a suite run found (:class:`SuiteResult`), and its record in the state store.

Needs no GX: the gate's volume and reconciliation checks report in the same shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from monitor.store.state import utcnow, validation_results


@dataclass(frozen=True)
class ExpectationResult:
    """One expectation's outcome.

    ``observed_value``: GX's observed value (the unexpected row count for SQL expectations,
    the unexpected percent for column-map ones). ``unexpected_values``: at most ``sample``
    items (rows as dicts for SQL expectations). ``check``: the expectation's ``meta.check``.
    ``error``: the exception GX caught, if any (the expectation then counts as failed).
    """

    expectation_type: str
    column: str | None
    kwargs_json: str
    success: bool
    observed_value: Any
    unexpected_count: int | None
    unexpected_values: list[Any]
    check: str = ""
    error: str | None = None


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    kind: str
    target: str
    batch_id: str | None
    success: bool
    results: list[ExpectationResult]

    @property
    def failed(self) -> list[ExpectationResult]:
        return [r for r in self.results if not r.success]

    def describe(self, limit: int = 3) -> str:
        """One line for logs and hold reasons: which checks failed, with samples."""
        where = f"{self.target} batch {self.batch_id}" if self.batch_id else self.target
        if self.success:
            return f"{self.suite} passed on {where}"
        parts = []
        for r in self.failed[:limit]:
            said = r.observed_value.get("reason") if isinstance(r.observed_value, dict) else None
            what = r.error or said or (
                f"{r.unexpected_count} unexpected" if r.unexpected_count is not None
                else f"observed {r.observed_value!r}"
            )
            sample = f" e.g. {json.dumps(r.unexpected_values[:2], default=str)}" if (
                r.unexpected_values and not r.error) else ""
            parts.append(f"{r.check or r.expectation_type}: {what}{sample}")
        more = f" (+{len(self.failed) - limit} more)" if len(self.failed) > limit else ""
        return (f"{self.suite} failed {len(self.failed)}/{len(self.results)} on {where}: "
                + "; ".join(parts) + more)


@dataclass(frozen=True)
class FailedExpectation:
    """A failed expectation as recorded in the state store."""

    suite: str
    kind: str
    target: str
    batch_id: str | None
    expectation: str
    check: str | None
    column: str | None
    observed_value: Any
    unexpected_count: int | None
    unexpected_values: list[Any] | None
    error: str | None


def record_results(state_engine: sa.Engine, run_id: str, results: Sequence[SuiteResult]) -> int:
    """Store every expectation result of ``results`` under ``run_id``; return rows written."""
    now = utcnow()
    rows = [
        dict(run_id=run_id, suite=s.suite, kind=s.kind, target=s.target, batch_id=s.batch_id,
             expectation=r.expectation_type, check_name=r.check or None, column=r.column,
             success=r.success, observed_value=r.observed_value,
             unexpected_count=r.unexpected_count, unexpected_values=r.unexpected_values,
             kwargs_json=r.kwargs_json, error=r.error, created_at=now)
        for s in results for r in s.results
    ]
    if rows:
        with state_engine.begin() as conn:
            conn.execute(validation_results.insert(), rows)
    return len(rows)


def failed_summary(state_engine: sa.Engine, run_id: str) -> list[FailedExpectation]:
    """The failed expectations recorded for ``run_id``, in recording order."""
    t = validation_results
    q = (sa.select(t.c.suite, t.c.kind, t.c.target, t.c.batch_id, t.c.expectation,
                   t.c.check_name.label("check"), t.c.column, t.c.observed_value,
                   t.c.unexpected_count, t.c.unexpected_values, t.c.error)
         .where(t.c.run_id == run_id, t.c.success.is_(False)).order_by(t.c.id))
    with state_engine.connect() as conn:
        return [FailedExpectation(**row) for row in conn.execute(q).mappings().all()]


def failures_by_suite(results: Iterable[SuiteResult]) -> dict[str, int]:
    """Failed expectations per suite (0 for suites that passed), for the metrics gauge."""
    out: dict[str, int] = {}
    for s in results:
        out[s.suite] = out.get(s.suite, 0) + len(s.failed)
    return out
