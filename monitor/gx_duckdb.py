"""A DuckDB datasource for Great Expectations 1.x that returns results.

Stock GX runs each metric query in ``with engine.connect() as conn: result = conn.execute(q)``
and fetches *after* the block. Returning the connection to the pool issues a rollback, and on
DuckDB (one pending result per connection) that drops the unfetched result, so every metric
comes back empty (GX issues #10738, #11579). GX already keeps one connection for dialects
whose temp tables die with the connection (sqlite, mssql, ...); :class:`DuckDBExecutionEngine`
does the same for DuckDB, and closes that connection on :meth:`~DuckDBExecutionEngine.close`.

Importing this module registers ``type: "duckdb"``, so ``context.data_sources.add_duckdb(...)``
exists. :func:`add_warehouse_datasource` picks it for DuckDB URLs and the stock ``sql``
datasource for any other URL; :func:`dispose_datasource` releases every connection either
holds (a DuckDB file admits one configuration per process, so dbt cannot open it before).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import sqlalchemy as sa
from great_expectations.datasource.fluent.sql_datasource import SQLDatasource
from great_expectations.execution_engine import SqlAlchemyExecutionEngine

logger = logging.getLogger(__name__)


def is_duckdb_url(url: str) -> bool:
    """True for ``duckdb:///...`` URLs (the duckdb-engine dialect)."""
    return sa.make_url(url).get_backend_name() == "duckdb"


class DuckDBExecutionEngine(SqlAlchemyExecutionEngine):
    """SqlAlchemyExecutionEngine that keeps ONE connection open until :meth:`close`."""

    @contextmanager
    def get_connection(self) -> Iterator[sa.Connection]:
        # Never hand the connection back to the pool mid-cycle: the pool's reset (rollback)
        # would discard the result GX has not fetched yet.
        if self._connection is None or self._connection.closed:
            self._connection = self.engine.connect()
        yield self._connection

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


def add_warehouse_datasource(
    context: Any,
    name: str,
    url: str,
    engine_kwargs: Mapping[str, Any] | None = None,
) -> SQLDatasource:
    """Add a datasource on ``url`` to a GX context: ``duckdb`` for DuckDB, stock ``sql`` else."""
    kwargs = dict(engine_kwargs or {})
    if is_duckdb_url(url):
        ds: SQLDatasource = context.data_sources.add_duckdb(
            name=name, connection_string=url, kwargs=kwargs
        )
    else:
        ds = context.data_sources.add_sql(name=name, connection_string=url, kwargs=kwargs)
    return ds


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
