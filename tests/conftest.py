"""Shared fixtures: a config pointing at the repo's dbt project and a scratch data dir."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from . import lint_jobs
from .pg_server import PgServer, start_server
from .spark_server import SparkServer
from .spark_server import start_server as start_spark_server

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def write_config(tmp: Path, extra: str = "", **overrides: str) -> Path:
    """Copy the repo's config.toml into ``tmp`` with data paths under ``tmp/data``.

    ``overrides`` replace whole ``key = value`` lines (``"ingest.enabled": "false"`` style
    keys are not parsed: pass the key name as it appears, e.g. ``enabled="false"``).
    """
    text = (REPO / "config.toml").read_text()
    text = text.replace('"pipeline"', f'"{REPO / "pipeline"}"')
    text = text.replace('"expectations"', f'"{REPO / "expectations"}"')
    for key, value in overrides.items():
        text = re.sub(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text, count=1)
    path = tmp / "config.toml"
    path.write_text(text + "\n" + extra)
    return path


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the lint tools of the collected tests/test_lint.py tests now, in the
    background (tests/lint_jobs.py: mypy's minutes overlap the first modules)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # every worker collects every test: each lint test runs its own, when asked
    lint = Path(lint_jobs.__file__).with_name("test_lint.py")
    lint_jobs.start({item.name for item in session.items if item.path == lint})


# The modules that take minutes (their module fixtures run dbt cycles, a daemon or the
# rehearsal), started first so that under pytest-xdist no worker is left with one of them
# at the end while the other idles.
LONG_MODULES = ("test_rehearsal.py", "test_daemon.py", "test_triage.py",
                "test_triage_postgres.py", "test_pipeline_postgres.py", "test_snapshots.py",
                "test_validate.py", "test_pipeline_e2e.py", "test_cli_postgres.py")


def work_unit(nodeid: str) -> str:
    """The pytest-xdist work unit of a test (see pytest_xdist_make_scheduler): its module,
    or "spark" for every test in a module named *spark*, so that the session starts one
    Spark Connect server (a JVM of ~1 GiB that takes ~30 s to start)."""
    module = nodeid.split("::", 1)[0]
    return "spark" if "spark" in Path(module).name else module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Spark unit and the long modules first (each module keeps its own order), and
    the rule that keeps every Spark test in the Spark unit."""
    def rank(item: pytest.Item) -> int:
        unit = work_unit(item.nodeid)
        if unit == "spark":
            return 0
        name = item.path.name
        return 1 + LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES) + 1

    for item in items:
        spark = item.get_closest_marker("spark") or "spark_server" in getattr(
            item, "fixturenames", ())
        if spark and work_unit(item.nodeid) != "spark":
            raise pytest.UsageError(
                f"{item.nodeid} uses Spark: move it to a module named *spark* (conftest.py)")
    items.sort(key=rank)  # stable


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whole work units per worker (scripts/test runs two), in the collection order above,
    so a module fixture (a multi-day dbt history) is built once. xdist's own
    ``--dist loadgroup`` cannot do it on pytest 9, whose node ids it can no longer
    rename."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the long units first
    return WorkUnitScheduling(config, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    lint_jobs.stop_all()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """``monitor.cli.main`` points the root logger at the sys.stderr of its test (capsys's
    stream, closed afterwards): a record logged by a later test (an import's warning)
    would then be a "Logging error" on that test's stderr. Restore what was there."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL 15 server in a temp dir for the session (tests/pg_server.py): skips
    where it cannot start, fails instead under CI=true."""
    yield from start_server()


@pytest.fixture(scope="session")
def spark_server() -> Iterator[SparkServer]:
    """A Spark Connect server on local[2] in a temp dir for the session
    (tests/spark_server.py): skips where it cannot start, fails instead under CI=true."""
    yield from start_spark_server()


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """A fresh database on the test server for one test (its SQLAlchemy URL), dropped
    afterwards with whatever connections are still open to it."""
    with fresh_database(pg_server) as url:
        yield url


@contextmanager
def fresh_database(pg_server: PgServer) -> Iterator[str]:
    """A new database on the test server (its SQLAlchemy URL) for the block, dropped
    afterwards with whatever connections are still open to it; for module-scoped
    fixtures and tests that need two."""
    import psycopg2  # the `postgres` extra

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_server.dsn("postgres"))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"create database {name}")
        yield (f"postgresql+psycopg2://{pg_server.user}@{pg_server.host}:{pg_server.port}"
               f"/{name}")
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {name} with (force)")
    finally:
        admin.close()


def pg_config(tmp: Path, url: str, extra: str = "") -> Path:
    """The repo's config with ``[warehouse] url`` on a test database (``pg_database``)."""
    return write_config(tmp, path=f'"data/warehouse.duckdb"\nurl = "{url}"{extra}')
