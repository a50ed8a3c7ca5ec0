"""The code stays ruff- and mypy-clean, the dbt SQL sqlfluff-clean, and the package's
layers import only downward (the project's style and architecture promises)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from . import lint_jobs

REPO = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    res = lint_jobs.result("test_ruff_clean")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_clean() -> None:
    """mypy on monitor and dqm_demo, its incremental cache outside the clone
    (tests/lint_jobs.py), started when the session collected this test."""
    res = lint_jobs.result("test_mypy_clean")
    assert res.returncode == 0, res.stdout + res.stderr


def test_sqlfluff_clean() -> None:
    """pipeline/.sqlfluff: the jinja templater, so no profile or warehouse is needed."""
    res = lint_jobs.result("test_sqlfluff_clean")
    assert res.returncode == 0, res.stdout + res.stderr


def test_layers_import_only_downward() -> None:
    """pyproject.toml's import-linter contracts: the layer order of docs/contracts.md,
    and no runtime module importing the demo."""
    res = lint_jobs.result("test_layers_import_only_downward")
    assert res.returncode == 0, res.stdout + res.stderr
    assert " 0 broken" in res.stdout
    kept = re.search(r"^Contracts: (\d+) kept", res.stdout, re.MULTILINE)
    assert kept and int(kept.group(1)) >= 3, res.stdout


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
