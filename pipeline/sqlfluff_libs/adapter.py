"""`adapter` for sqlfluff's jinja templater (pipeline/.sqlfluff: library_path).

sqlfluff renders the models without dbt, so dbt's `adapter` is undefined there. The
engine-specific macros are called through `adapter.dispatch(name, namespace)`; under
sqlfluff (dialect duckdb) that resolves to the `duckdb__<name>` macro, so the lint
checks the SQL that runs on DuckDB, as before the PostgreSQL implementations existed.
"""

from __future__ import annotations

from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context


@pass_context
def dispatch(context: Context, macro_name: str, macro_namespace: str | None = None) -> Any:
    for name in (f"duckdb__{macro_name}", f"default__{macro_name}"):
        macro = context.get(name)
        if macro is not None:
            return macro
    raise KeyError(f"sqlfluff adapter shim: no duckdb__{macro_name} or default__{macro_name}")


def type() -> str:  # noqa: A001 - dbt's name
    return "duckdb"
