"""What the PostgreSQL (and Spark) cycle tests share: a config on a test database, the
CLI in-process with its output captured, and reading the warehouse.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.cli import main
from monitor.core.config import WarehouseConfig
from monitor.warehouse.connection import backend_of_url

from .conftest import write_config

FACTS = {"fct_employees": "employee_id", "fct_plans": "plan_id", "fct_claims": "claim_id"}
#: The Spark databases a cycle writes (the snapshot databases are named by run id).
SPARK_DATABASES = ("main", "raw", "incremental")


def pg_cycle_config(tmp: Path, url: str, state: str | None = None, extra: str = "") -> Path:
    """The repo's config (its suites included) on the database ``url``, the state store
    on ``state`` when given, else a SQLite file. No ``[dbt] target``: the profile's
    ``postgres`` output is picked because it is the one on the monitor's warehouse."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_config(tmp, path=f'"data/warehouse.duckdb"\nurl = "{url}"')
    text = path.read_text()
    if state is not None:
        text = text.replace('url = "sqlite:///data/state.db"', f'url = "{state}"', 1)
    path.write_text(text + "\n" + extra)
    return path


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    """``monitor --config CONFIG ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(config), *args])
    return code, out.getvalue(), err.getvalue()


def engine_of(url: str) -> sa.Engine:
    """A NullPool engine of a SQLAlchemy URL, or of a Spark Connect ``sc://`` URL through
    the backend that owns its scheme."""
    backend = backend_of_url(url)
    if url.partition("://")[0].lower() in backend.url_schemes:
        return backend.create_engine(WarehouseConfig(url=url))
    return sa.create_engine(url, poolclass=sa.NullPool)


def rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = engine_of(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params).all()]
    finally:
        engine.dispose()


def scalar(url: str, sql: str, **params: Any) -> Any:
    return rows(url, sql, **params)[0][0]


def fact_rows(url: str, fact: str) -> Counter[tuple[Any, ...]]:
    """A fact's rows (a multiset) without what differs between two warehouses loaded
    from different landing folders at different times: the load time and the folder
    of the source file."""
    engine = engine_of(url)
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.text(f"select * from main.{fact}"))
            names = list(result.keys())
            out: Counter[tuple[Any, ...]] = Counter()
            for r in result:
                row = dict(zip(names, r, strict=True))
                row.pop("_ingested_at", None)
                if "_source_file" in row:
                    row["_source_file"] = Path(str(row["_source_file"])).name
                out[tuple(sorted(row.items()))] += 1
            return out
    finally:
        engine.dispose()


def check_released_merge(url: str, state: str, released: str, merge_run: str,
                         schema: str = "main") -> None:
    """A released claims batch was merged exactly once (one row per key it delivered, in
    ``schema``'s facts as the merge left them), and the cycle that merged it checked its
    rows: released after the gate that held it, its publish_seq was below the ledger's
    maximum when that cycle started, yet above what the last build merged (the
    touched-rows watermark). Its claims without an employee failed ``employee_exists``."""
    merged, distinct = rows(url, f"select count(*), count(distinct claim_id) from "
                            f"{schema}.fct_claims where _batch_id = :b", b=released)[0]
    raw_keys = scalar(url, "select count(distinct claim_id) from raw.claims "
                      "where _batch_id = :b", b=released)
    assert merged == distinct == raw_keys > 0
    kinds = [k for (k,) in rows(state, "select kind from events order by id")]
    assert kinds.count("reject") == 1 and kinds.count("release") == 1, kinds
    orphans = dict(rows(url, f"select c._batch_id, count(*) from {schema}.fct_claims c "
                        f"left join {schema}.fct_employees e on e.employee_id = c.employee_id "
                        "where e.employee_id is null group by 1"))
    assert set(orphans) == {released} and orphans[released] > 0, orphans
    flagged = rows(state, "select success, unexpected_count from validation_results "
                   "where run_id = :r and suite = 'behaviour_fct_claims' "
                   "and check_name = 'employee_exists'", r=merge_run)
    assert flagged == [(False, orphans[released])], flagged


def drop_spark_databases(url: str) -> None:
    """What an earlier module or run on this Spark server left in the databases a cycle
    writes (:data:`SPARK_DATABASES`; snapshot databases are never reused)."""
    engine = engine_of(url)
    try:
        with engine.connect() as conn:
            for name in SPARK_DATABASES:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} CASCADE")
    finally:
        engine.dispose()
