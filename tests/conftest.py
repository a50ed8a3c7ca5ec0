"""Shared fixtures: a config pointing at the repo's dbt project and a scratch data dir."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


# The modules that take minutes (their module fixtures run dbt cycles on one engine or
# another, a daemon or the rehearsal), longest first, started first: scripts/test gives
# pytest-xdist whole modules (``--dist loadscope``), and this order keeps one worker from
# being left with a long one at the end while the other idles. Each worker starts its
# own Spark Connect server when its first Spark module needs one.
LONG_MODULES = ("test_rehearsal.py", "test_pipeline_spark.py", "test_triage.py",
                "test_daemon.py", "test_dbt_spark.py", "test_ingest_spark.py",
                "test_triage_postgres.py", "test_pipeline_postgres.py", "test_snapshots.py",
                "test_validate.py", "test_snapshots_spark.py", "test_validate_spark.py",
                "test_pipeline_e2e.py", "test_cli_postgres.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long modules first, each keeping its own order (see LONG_MODULES)."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable


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
