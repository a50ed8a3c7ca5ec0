"""Which GX datasource a warehouse gets: DuckDB's (``monitor.quality.gx_duckdb``), the
PostgreSQL one that runs each unexpected-rows query once (``monitor.quality.gx_postgres``),
GX's Spark one on the monitor's Spark Connect session (``monitor.quality.gx_spark``) or
GX's generic SQL one, as the backend says (``Backend.gx_datasource``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from great_expectations.datasource.fluent.spark_datasource import SparkDatasource
from great_expectations.datasource.fluent.sql_datasource import SQLDatasource

# Importing gx_postgres registers its datasource type, and gx_duckdb's (it imports it).
from monitor.quality.gx_postgres import add_postgres
from monitor.quality.gx_spark import add_spark


def add_warehouse_datasource(
    context: Any,
    name: str,
    url: str,
    engine_kwargs: Mapping[str, Any] | None = None,
    *,
    kind: str = "sql",
) -> SQLDatasource | SparkDatasource:
    """Add a datasource on ``url`` to a GX context: ``kind`` is ``duckdb`` (the one
    ``monitor.quality.gx_duckdb`` registers), ``postgres`` (GX's, with the engine of
    ``monitor.quality.gx_postgres``), ``spark`` (GX's, on the monitor's Spark Connect
    session of ``url``; ``engine_kwargs``: ``password_env``) or GX's generic ``sql``, as
    the warehouse backend says (``Backend.gx_datasource``)."""
    kwargs = dict(engine_kwargs or {})
    if kind == "duckdb":
        ds: SQLDatasource = context.data_sources.add_duckdb(
            name=name, connection_string=url, kwargs=kwargs
        )
    elif kind == "postgres":
        ds = add_postgres(context, name, url, kwargs)
    elif kind == "spark":
        return add_spark(context, name, url, kwargs)
    elif kind == "sql":
        ds = context.data_sources.add_sql(name=name, connection_string=url, kwargs=kwargs)
    else:
        raise ValueError(f"unknown GX datasource kind {kind!r} (duckdb, postgres, spark, sql)")
    return ds
