"""The code stays ruff- and mypy-clean, the dbt SQL sqlfluff-clean, and the package's
layers import only downward (the project's style and architecture promises)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_clean() -> None:
    res = _run(str(BIN / "ruff"), "check", "monitor", "dqm_demo", "tests", "bench", "deploy")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_clean() -> None:
    res = _run(str(BIN / "mypy"), "monitor", "dqm_demo")
    assert res.returncode == 0, res.stdout + res.stderr


def test_sqlfluff_clean() -> None:
    """pipeline/.sqlfluff: the jinja templater, so no profile or warehouse is needed."""
    res = _run(str(BIN / "sqlfluff"), "lint", "pipeline", "--disable-progress-bar")
    assert res.returncode == 0, res.stdout + res.stderr


def test_layers_import_only_downward() -> None:
    """pyproject.toml's import-linter contracts: the layer order of docs/contracts.md,
    and no runtime module importing the demo."""
    res = _run(str(BIN / "lint-imports"), "--no-cache")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 kept, 0 broken" in res.stdout


def _function_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    top |= {id(n) for n in tree.body if isinstance(n, ast.If) for n in n.body}
    return [f"{path.relative_to(REPO)}:{n.lineno}" for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and id(n) not in top
            and (n.module or "").split(".")[0] in ("monitor", "dqm_demo")]


def test_no_function_level_import_dodges_a_cycle() -> None:
    """Only the CLI imports lazily (it keeps `monitor --help` fast); anywhere else a
    function-level import of the package would hide a cycle the layers contract forbids."""
    found = [hit for path in sorted((REPO / "monitor").rglob("*.py"))
             if path.name != "cli.py" for hit in _function_level_imports(path)]
    assert found == []
    assert _function_level_imports(REPO / "monitor" / "cli.py")  # the check sees them
