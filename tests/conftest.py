"""Shared fixtures: a config pointing at the repo's dbt project and a scratch data dir."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .pg_server import PgServer, start_server

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
