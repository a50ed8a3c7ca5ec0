"""What the PostgreSQL cycle tests share: a config on a test database, the suites that
run there, the CLI in-process with its output captured, and reading the warehouse.

Until the GX suites run on PostgreSQL (issue 19, the gate's part), a suite marked
``"dialect": "duckdb"`` cannot run there: :func:`pg_suites` copies the repo's suites
that can (none marked, or marked ``postgresql``) and adds one engine-neutral contract
of the test's own (``contract_claims_nulls``: a claims batch with empty ``employee_id``
is held), so that the gate holds, releases and rejects on PostgreSQL whatever the repo's
suites are.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitor.cli import main

from .conftest import REPO, write_config

FACTS = {"fct_employees": "employee_id", "fct_plans": "plan_id", "fct_claims": "claim_id"}

NULLS_CONTRACT = {
    "name": "contract_claims_nulls",
    "meta": {"monitor": {"kind": "contract", "feed": "claims"}},
    "notes": "tests/pg_cycle.py: an engine-neutral contract that a null storm breaks",
    "expectations": [{
        "type": "expect_column_values_to_not_be_null",
        "kwargs": {"column": "employee_id", "mostly": 0.95},
        "meta": {"check": "not_null_employee_id"},
    }],
}


def pg_suites(folder: Path) -> Path:
    """The repo's suites that run on PostgreSQL, plus :data:`NULLS_CONTRACT`."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((REPO / "expectations").glob("*.json")):
        meta = json.loads(path.read_text()).get("meta", {}).get("monitor", {})
        if meta.get("dialect") in (None, "postgresql"):
            shutil.copy(path, folder / path.name)
    (folder / "contract_claims_nulls.json").write_text(json.dumps(NULLS_CONTRACT, indent=1))
    return folder


def pg_cycle_config(tmp: Path, url: str, state: str | None = None, extra: str = "") -> Path:
    """The repo's config on the database ``url`` (state on ``state`` when given, else a
    SQLite file), with :func:`pg_suites`. No ``[dbt] target``: the profile's ``postgres``
    output is picked because it is the one on the monitor's warehouse."""
    path = write_config(tmp, path=f'"data/warehouse.duckdb"\nurl = "{url}"',
                        suites_dir=f'"{pg_suites(tmp / "suites")}"')
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


def rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
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
    engine = sa.create_engine(url, poolclass=sa.NullPool)
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
