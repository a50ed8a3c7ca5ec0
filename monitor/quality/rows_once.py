"""GX's unexpected-rows metrics answered by one run of their query, on any engine.

UnexpectedRowsExpectation needs its query's first rows and its row count, and stock GX
computes them as two metrics, each running the query (SQL: ``fetchmany`` and
``select count(*) from (query)``; Spark: a ``limit().collect()`` and a ``count()``).
:func:`register` installs both metrics for an execution engine whose ``run`` gives
rows and count from one statement: whichever metric GX resolves first runs it, the
other takes the answer. Where ``run`` declines (None: a query ordered at its top, whose
order one combined statement need not keep), GX's own implementation answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from great_expectations.execution_engine import ExecutionEngine
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.query_metric_provider import (
    QueryMetricProvider,
    find_last_top_level_order_by,
)
from great_expectations.expectations.metrics.query_metrics import (
    UnexpectedRowsQueryRowCount,
    UnexpectedRowsQueryTable,
)

__all__ = ["ROW_COUNT", "RowsAndCount", "RowsOnceEngine", "ordered_at_top", "register",
           "split_count"]

#: Names the count beside the rows; a query's own column of that name would be dropped.
ROW_COUNT = "monitor_gx_unexpected_row_count"

RowsAndCount = tuple[list[dict[str, Any]], int]
#: (metric provider class, engine, domain kwargs, value kwargs) -> rows and count, or None
Run = Callable[[type[QueryMetricProvider], Any, dict, dict], "RowsAndCount | None"]


class RowsOnceEngine:
    """Mixin for an execution engine whose unexpected-rows metrics share one run."""

    # (batch id, query) -> (first rows, row count), computed by whichever of the two
    # metrics runs first and taken by the other.
    _query_results: dict[tuple[str, str], RowsAndCount]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._query_results = {}

    def load_batch_data(self, batch_id: str, batch_data: Any) -> None:
        # A new validation: results of an earlier one must not answer it (data may have
        # changed under the same batch id).
        self._query_results.clear()
        super().load_batch_data(batch_id, batch_data)  # type: ignore[misc]  # the engine's


def ordered_at_top(sql: str) -> bool:
    return find_last_top_level_order_by(" ".join(sql.split())) >= 0


def split_count(rows: list[dict[str, Any]]) -> RowsAndCount:
    """Rows carrying :data:`ROW_COUNT` as (rows without it, the count; 0 for no rows)."""
    count = int(rows[0][ROW_COUNT]) if rows else 0
    for r in rows:
        r.pop(ROW_COUNT, None)
    return rows, count


def register(engine_type: type[ExecutionEngine], run: Run, stock: str) -> None:
    """Install both metrics for ``engine_type`` (and its subclasses), answered by
    ``run``; ``stock``: the name of GX's own implementation on that engine kind
    (``_sqlalchemy``, ``_spark``), used where ``run`` declines."""

    def answer(cls: Any, which: int, stock_cls: type, engine: Any,
               domain: dict, values: dict, metrics: dict, runtime: dict) -> Any:
        batch_id = domain.get("batch_id") or engine.batch_manager.active_batch_data_id
        key = (str(batch_id), cls._get_query_from_metric_value_kwargs(values))
        both = engine._query_results.pop(key, None)  # the other metric of the pair ran it
        if both is None:
            both = run(cls, engine, domain, values)
            if both is None:
                return getattr(stock_cls, stock)(
                    cls=stock_cls, execution_engine=engine, metric_domain_kwargs=domain,
                    metric_value_kwargs=values, metrics=metrics,
                    runtime_configuration=runtime)
            engine._query_results[key] = both
        return both[which]

    class Table(QueryMetricProvider):
        metric_name = UnexpectedRowsQueryTable.metric_name
        value_keys = UnexpectedRowsQueryTable.value_keys
        query_param_name: ClassVar[str] = "unexpected_rows_query"

        @metric_value(engine=engine_type)
        def _once(cls, execution_engine: Any, metric_domain_kwargs: dict,
                  metric_value_kwargs: dict, metrics: dict[str, Any],
                  runtime_configuration: dict) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = answer(
                cls, 0, UnexpectedRowsQueryTable, execution_engine, metric_domain_kwargs,
                metric_value_kwargs, metrics, runtime_configuration)
            return rows

    class Count(QueryMetricProvider):
        metric_name = UnexpectedRowsQueryRowCount.metric_name
        value_keys = UnexpectedRowsQueryRowCount.value_keys
        query_param_name: ClassVar[str] = "unexpected_rows_query"

        @metric_value(engine=engine_type)
        def _once(cls, execution_engine: Any, metric_domain_kwargs: dict,
                  metric_value_kwargs: dict, metrics: dict[str, Any],
                  runtime_configuration: dict) -> int:
            count: int = answer(
                cls, 1, UnexpectedRowsQueryRowCount, execution_engine, metric_domain_kwargs,
                metric_value_kwargs, metrics, runtime_configuration)
            return count
