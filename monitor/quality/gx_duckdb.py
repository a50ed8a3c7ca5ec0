"""A DuckDB datasource for Great Expectations 1.x that returns results.

Stock GX fetches a metric's rows after handing its connection back to the pool, whose
rollback drops DuckDB's pending result: every metric came back empty (GX issues #10738,
#11579). The ``duckdb`` datasource registered here keeps one connection per engine.
Its execution engine is a :class:`RowsOnceExecutionEngine`, which runs each
unexpected-rows query once instead of GX's twice (PostgreSQL's datasource, in
``monitor.quality.gx_postgres``, uses it too).
"""

from __future__ import annotations

import builtins
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import sqlalchemy as sa
from great_expectations.constants import MAX_RESULT_RECORDS
from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.datasource.fluent.sql_datasource import SQLDatasource
from great_expectations.execution_engine import SqlAlchemyExecutionEngine
from great_expectations.expectations.metrics.query_metric_provider import QueryMetricProvider

from monitor.quality.rows_once import (
    ROW_COUNT,
    RowsAndCount,
    RowsOnceEngine,
    ordered_at_top,
    register,
    split_count,
)

logger = logging.getLogger(__name__)

SCRATCH_NAME = re.compile(r"^monitor_gx_scratch_[0-9a-f]{12}$")


class RowsOnceExecutionEngine(RowsOnceEngine, SqlAlchemyExecutionEngine):
    """SqlAlchemyExecutionEngine whose unexpected-rows metrics run their query once
    (monitor.quality.rows_once; registered for this engine and its subclasses)."""


def _run_once(cls: type[QueryMetricProvider], engine: RowsOnceExecutionEngine,
              metric_domain_kwargs: dict, metric_value_kwargs: dict) -> RowsAndCount | None:
    """The query materialized once as a CTE (``AS MATERIALIZED``: DuckDB's and
    PostgreSQL's syntax), read for its first rows and its count."""
    batch, _, _ = engine.get_compute_domain(metric_domain_kwargs,
                                            domain_type=MetricDomainTypes.TABLE)
    query = cls._get_query_from_metric_value_kwargs(metric_value_kwargs)
    sql = cls._get_substituted_batch_subquery_from_query_and_batch_selectable(
        query=query, batch_selectable=batch, execution_engine=engine)
    if ordered_at_top(sql):  # a materialized CTE is read back in no particular order
        return None
    once = (f"WITH unexpected AS MATERIALIZED ({sql}) SELECT *, "
            f"(SELECT count(*) FROM unexpected) AS {ROW_COUNT} "
            f"FROM unexpected LIMIT {MAX_RESULT_RECORDS}")
    return split_count([r._asdict() for r in engine.execute_query(sa.text(once)).fetchall()])


register(RowsOnceExecutionEngine, _run_once, "_sqlalchemy")


class DuckDBExecutionEngine(RowsOnceExecutionEngine):
    """SqlAlchemyExecutionEngine that keeps ONE connection open until :meth:`close`."""

    @contextmanager
    def get_connection(self) -> Iterator[sa.Connection]:
        # Never hand the connection back to the pool mid-cycle: the pool's reset (rollback)
        # would discard the result GX has not fetched yet.
        if self._connection is None or self._connection.closed:
            self._connection = self.engine.connect()
        yield self._connection

    def execute_query(
        self, query: sa.Selectable | sa.TextClause
    ) -> sa.CursorResult[Any]:
        """Run ``query`` on the kept connection; after a failure, roll back.

        DuckDB aborts the transaction on a failed statement and refuses every later one
        until a rollback. GX only recovers from SQLAlchemy's PendingRollbackError, so one
        broken check would otherwise fail every check after it on this connection.
        """
        try:
            result: sa.CursorResult[Any] = super().execute_query(query)
        except sa.exc.DBAPIError:
            with self.get_connection() as conn:
                if conn.in_transaction():
                    conn.rollback()
            raise
        return result

    def close(self) -> None:
        """Close the kept connection and dispose the engine's pool. Idempotent."""
        conn, self._connection = self._connection, None
        if conn is not None and not conn.closed:
            try:
                conn.close()
            except Exception:  # a closed DuckDB handle must not stop the dispose below
                logger.debug("closing the kept DuckDB connection failed", exc_info=True)
        engine = getattr(self, "engine", None)
        if isinstance(engine, sa.Engine):
            engine.dispose()


class DuckDBDatasource(SQLDatasource):
    """Fluent SQL datasource for DuckDB (duckdb-engine) that uses :class:`DuckDBExecutionEngine`.

    Args:
        name: datasource name.
        connection_string: ``duckdb:///path/to/file.duckdb``.
        kwargs: passed to ``sqlalchemy.create_engine`` (e.g. ``connect_args={"config": {...}}``
            so GX opens the file with the same settings as every other connection).
    """

    # GX registers the literal as the type name and adds `context.data_sources.add_duckdb`.
    type: Literal["duckdb"] = "duckdb"  # type: ignore[assignment]  # narrows SQLDatasource.type

    @property
    def execution_engine_type(self) -> builtins.type[SqlAlchemyExecutionEngine]:
        # builtins.type: inside this class body `type` is the pydantic field above
        return DuckDBExecutionEngine

    def dispose(self) -> None:
        """Release everything this datasource opened (kept connection and both pools)."""
        dispose_datasource(self)


def keeps_one_connection(ds: SQLDatasource) -> bool:
    """True when every GX query of ``ds`` runs on one connection (our DuckDB datasource)."""
    return isinstance(ds, DuckDBDatasource)


@contextmanager
def kept_connection(ds: SQLDatasource) -> Iterator[sa.Connection]:
    """The connection GX runs ``ds``'s metric queries on (opened if needed).

    The caller owns the transaction state: GX rolls back after a failed query, so commit
    what must survive one.
    Raises ``TypeError`` for datasources that do not keep one connection.
    """
    if not keeps_one_connection(ds):
        raise TypeError(f"datasource {ds.name!r} does not keep one connection")
    engine = ds.get_execution_engine()
    assert isinstance(engine, DuckDBExecutionEngine)
    with engine.get_connection() as conn:
        yield conn


def attach_scratch(ds: SQLDatasource) -> str:
    """Attach a new private in-memory database to ``ds``'s DuckDB instance; return its name.

    Its tables are visible to every connection of this process on the warehouse file (not
    to other processes) and take no space in the file. Not ``TEMP`` tables: those are
    private to one connection, and GX reflects a query's columns on a second one. Release it with
    :func:`detach_scratch`: the instance outlives GX's connections while any other engine
    of the process has the file open.
    """
    name = f"monitor_gx_scratch_{uuid.uuid4().hex[:12]}"
    _run_alone(ds, f"ATTACH ':memory:' AS {name}")  # name: generated here
    return name


def detach_scratch(ds: SQLDatasource, name: str) -> None:
    """Detach (and so drop everything in) a database made by :func:`attach_scratch`."""
    if not SCRATCH_NAME.match(name):
        raise ValueError(f"not a scratch database name: {name!r}")
    _run_alone(ds, f"DETACH DATABASE IF EXISTS {name}")


def _run_alone(ds: SQLDatasource, statement: str) -> None:
    """Run one statement in its own transaction on GX's connection; roll back on failure,
    so GX's next query does not meet an aborted transaction."""
    with kept_connection(ds) as conn:
        if conn.in_transaction():  # GX's read transaction, maybe aborted by a failed check
            conn.rollback()
        try:
            conn.exec_driver_sql(statement)
            conn.commit()
        except sa.exc.DBAPIError:
            conn.rollback()
            raise


def dispose_datasource(ds: SQLDatasource) -> None:
    """Close the execution engine (and its kept connection) and the datasource's own engine."""
    # Private attributes: GX creates both lazily and offers no public "dispose" for either.
    exec_engine = getattr(ds, "_execution_engine", None)
    if isinstance(exec_engine, SqlAlchemyExecutionEngine):
        exec_engine.close()
        conn = getattr(exec_engine, "_connection", None)
        if isinstance(conn, sa.Connection) and not conn.closed:  # stock engines keep some too
            conn.close()
        if isinstance(exec_engine.engine, sa.Engine):  # GX may hold a Connection there
            exec_engine.engine.dispose()
    engine = getattr(ds, "_engine", None)
    if isinstance(engine, sa.Engine):
        engine.dispose()
