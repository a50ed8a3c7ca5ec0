"""`target` for sqlfluff's jinja templater (pipeline/.sqlfluff: library_path).

dbt's `target` is undefined under sqlfluff; the models read `target.type` in their
config to pick Spark-only settings (partition_by, the staging strategy). The lint
checks the DuckDB SQL, so the target is DuckDB's, as the `adapter` shim's.
"""

from __future__ import annotations

type = "duckdb"  # dbt's name
name = "dev"
