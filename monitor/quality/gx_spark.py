"""Great Expectations on Spark over Spark Connect: GX's stock Spark datasource on the
monitor's session (``monitor.warehouse.spark_session``), a suite's rows as a DataFrame.

What it takes in GX 1.24 (found on a real Connect server, tests/test_validate_spark.py):

- The datasource's session is the monitor's: set on the datasource before GX builds its
  execution engine, so GX never calls ``getOrCreate`` (which would pick whichever
  session is the process's default, or try to start a local JVM).
- GX's Spark metrics call ``pyspark.sql.functions`` (``F.lit``, ``F.col``), which reach
  Spark Connect only when pyspark knows the process is a Connect client
  (``SPARK_CONNECT_MODE_ENABLED``); else every column-map and row-count metric fails
  with "SparkContext._active_spark_context is not None". The monitor holds no JVM, so
  the variable is set for the process here.
- ``unexpected_rows_expectation`` on Spark registers the batch as the temp view
  ``tmp_view`` and runs the suite query with ``{batch}`` replaced by it (stock GX).
- Rows are read once per suite: the batch DataFrame is cached before GX's first
  metric and unpersisted when the suite ends (GX's own ``persist`` is off: it never
  unpersists).
- Each unexpected-rows query runs once: stock GX runs it twice on Spark (its first rows,
  then its ``count()``), and on Spark every statement costs planning and a job whatever
  its rows. The datasource type ``monitor_spark`` (:class:`MonitorSparkDatasource`) is
  GX's Spark datasource with :class:`RowsOnceSparkExecutionEngine`, whose two metrics
  share one statement: the first rows cross-joined with the count.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from great_expectations.constants import MAX_RESULT_RECORDS
from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.datasource.fluent.spark_datasource import SparkDatasource
from great_expectations.execution_engine import SparkDFExecutionEngine
from great_expectations.expectations.metrics.query_metric_provider import QueryMetricProvider

from monitor.quality.rows_once import (
    ROW_COUNT,
    RowsAndCount,
    RowsOnceEngine,
    ordered_at_top,
    register,
    split_count,
)
from monitor.warehouse.spark_session import spark_session

if TYPE_CHECKING:
    from pyspark.sql.connect.dataframe import DataFrame
    from pyspark.sql.connect.session import SparkSession

__all__ = ["MonitorSparkDatasource", "RowsOnceSparkExecutionEngine", "add_spark",
           "connect_functions", "count_rows", "dataframe_batch", "is_spark", "session_of"]

#: The environment variable that routes ``pyspark.sql.functions`` to Spark Connect.
CONNECT_MODE = "SPARK_CONNECT_MODE_ENABLED"


def connect_functions() -> None:
    """Route ``pyspark.sql.functions`` (GX's metrics use them) to Spark Connect."""
    os.environ.setdefault(CONNECT_MODE, "1")


def add_spark(context: Any, name: str, url: str,
              options: Mapping[str, Any] | None = None) -> SparkDatasource:
    """GX's Spark datasource on the monitor's session of ``url`` (``options``:
    ``password_env``, the variable holding the Connect token, as
    ``Backend.gx_connection`` gives it)."""
    session = spark_session(url, str((options or {}).get("password_env") or ""))
    return add_spark_session(context, name, session)


def add_spark_session(context: Any, name: str, session: SparkSession) -> SparkDatasource:
    """GX's Spark datasource on ``session`` (no session of GX's own)."""
    connect_functions()
    ds: SparkDatasource = context.data_sources.add_monitor_spark(name=name, persist=False)
    # GX builds its execution engine with this session when one is set (its private
    # attribute: GX 1.24 has no public way to hand it a session, and its getOrCreate
    # would pick the process's default session, or start a JVM).
    ds._spark = session  # type: ignore[assignment]  # GX declares the classic session type
    return ds


def is_spark(ds: Any) -> bool:
    """True for a datasource :func:`add_spark` made."""
    return isinstance(ds, SparkDatasource)


def session_of(ds: SparkDatasource) -> SparkSession:
    session: SparkSession | None = ds._spark  # type: ignore[assignment]  # a Connect one
    if session is None:
        raise RuntimeError(f"datasource {ds.name!r} has no Spark session")
    return session


def count_rows(ds: SparkDatasource, select_count_sql: str) -> int:
    """The one value of a ``select count(*) ...`` query."""
    row = session_of(ds).sql(select_count_sql).first()
    return int(row[0] or 0) if row is not None else 0


@contextmanager
def dataframe_batch(ds: SparkDatasource, name: str, rows: str | DataFrame) -> Iterator[Any]:
    """A GX batch of ``rows`` (Spark SQL, or a DataFrame) for one suite: cached, so each
    check reads the cache rather than the table; the asset and the cache are dropped
    when the block ends."""
    df = session_of(ds).sql(rows) if isinstance(rows, str) else rows
    df = df.cache()
    asset = ds.add_dataframe_asset(name=name)
    try:
        batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": df})
        yield batch
    finally:
        ds.delete_asset(name)
        df.unpersist()


# ----------------------------------------------------------------- unexpected rows, once

class RowsOnceSparkExecutionEngine(RowsOnceEngine, SparkDFExecutionEngine):
    """GX's Spark engine whose unexpected-rows metrics share one statement."""


class MonitorSparkDatasource(SparkDatasource):
    """GX's Spark datasource on :class:`RowsOnceSparkExecutionEngine`
    (``context.data_sources.add_monitor_spark``)."""

    type: Literal["monitor_spark"] = "monitor_spark"  # type: ignore[assignment]

    @property
    def execution_engine_type(self) -> builtins.type[SparkDFExecutionEngine]:
        # builtins.type: inside this class body `type` is the pydantic field above
        return RowsOnceSparkExecutionEngine


def _run_once(cls: type[QueryMetricProvider], engine: RowsOnceSparkExecutionEngine,
              metric_domain_kwargs: dict, metric_value_kwargs: dict) -> RowsAndCount | None:
    """One statement: the first rows cross-joined with the count (no rows: count 0).
    The batch is the temp view ``tmp_view``, as stock GX names it."""
    query = cls._get_query_from_metric_value_kwargs(metric_value_kwargs)
    if ordered_at_top(query):  # a join need not keep the order
        return None
    df, _, _ = engine.get_compute_domain(metric_domain_kwargs,
                                         domain_type=MetricDomainTypes.TABLE)
    df.createOrReplaceTempView("tmp_view")
    sql = cls._format_query(query, batch="tmp_view")
    once = (f"SELECT monitor_first.*, monitor_count.{ROW_COUNT} "
            f"FROM (SELECT * FROM ({sql}) LIMIT {MAX_RESULT_RECORDS}) AS monitor_first "
            f"CROSS JOIN (SELECT count(*) AS {ROW_COUNT} FROM ({sql})) AS monitor_count")
    return split_count([r.asDict() for r in engine.spark.sql(once).collect()])


register(RowsOnceSparkExecutionEngine, _run_once, "_spark")
