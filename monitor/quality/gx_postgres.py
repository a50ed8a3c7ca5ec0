"""GX's PostgreSQL datasource with an execution engine that runs each unexpected-rows
query once (:class:`monitor.quality.gx_duckdb.RowsOnceExecutionEngine`).

Stock GX runs an ``unexpected_rows_expectation`` query twice, for its first rows and
for ``count(*)`` of it; on PostgreSQL a suite's checks are mostly such queries, so that
doubled the suites' time. Everything else is GX's stock PostgreSQL datasource and the
stock SQLAlchemy engine (pooled connections, one per metric query).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any, Literal

from great_expectations.datasource.fluent.postgres_datasource import PostgresDatasource
from great_expectations.execution_engine import SqlAlchemyExecutionEngine

from monitor.quality.gx_duckdb import RowsOnceExecutionEngine


class PostgresExecutionEngine(RowsOnceExecutionEngine):
    """The stock SQLAlchemy engine; its unexpected-rows metrics run their query once."""


class MonitorPostgresDatasource(PostgresDatasource):
    """GX's ``postgres`` datasource on :class:`PostgresExecutionEngine`."""

    # GX registers the literal as the type name: `context.data_sources.add_monitor_postgres`.
    type: Literal["monitor_postgres"] = "monitor_postgres"  # type: ignore[assignment]

    @property
    def execution_engine_type(self) -> builtins.type[SqlAlchemyExecutionEngine]:
        return PostgresExecutionEngine


def add_postgres(context: Any, name: str, url: str,
                 engine_kwargs: Mapping[str, Any] | None = None) -> MonitorPostgresDatasource:
    """Add :class:`MonitorPostgresDatasource` on ``url`` to a GX context."""
    ds: MonitorPostgresDatasource = context.data_sources.add_monitor_postgres(
        name=name, connection_string=url, kwargs=dict(engine_kwargs or {}))
    return ds
