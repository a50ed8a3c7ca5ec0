"""The code stays ruff- and mypy-clean, the dbt SQL sqlfluff-clean (the project's style
promise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_clean() -> None:
    res = _run(str(BIN / "ruff"), "check", "monitor", "tests", "bench", "deploy")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_clean() -> None:
    res = _run(str(BIN / "mypy"), "monitor")
    assert res.returncode == 0, res.stdout + res.stderr


def test_sqlfluff_clean() -> None:
    """pipeline/.sqlfluff: the jinja templater, so no profile or warehouse is needed."""
    res = _run(str(BIN / "sqlfluff"), "lint", "pipeline", "--disable-progress-bar")
    assert res.returncode == 0, res.stdout + res.stderr
