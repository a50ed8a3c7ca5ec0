"""Runs dbt in-process through its Python API and reads what it did from run_results."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.config import Config
from monitor.warehouse import apply_dbt_environment

log = logging.getLogger(__name__)


class DbtError(RuntimeError):
    """dbt could not run at all (bad project, bad profile), as opposed to a failing model."""


@dataclass(frozen=True)
class NodeResult:
    """One node of run_results.json."""

    unique_id: str
    name: str
    resource_type: str
    status: str
    duration_s: float
    rows_affected: int | None
    message: str
    failures: int | None


@dataclass
class DbtResult:
    command: str
    success: bool
    nodes: list[NodeResult] = field(default_factory=list)
    error: str = ""
    elapsed_s: float = 0.0

    @property
    def models(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.resource_type in ("model", "seed", "snapshot")]

    @property
    def failed(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.status in ("error", "fail", "runtime error")]


class DbtProject:
    """The configured dbt project: any project, with its own profile."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.target_path = cfg.dbt.target_path

    def _args(self, command: str, extra: list[str]) -> list[str]:
        d = self.cfg.dbt
        args = [
            command,
            "--project-dir", str(d.project_dir),
            "--profiles-dir", str(d.profiles_dir),
            "--target-path", str(d.target_path),
            "--log-path", str(d.log_path),
        ]
        if d.profile:
            args += ["--profile", d.profile]
        if d.target:
            args += ["--target", d.target]
        if command in ("build", "run", "test", "seed"):
            args += ["--threads", str(d.threads)]
        return args + extra

    def invoke(
        self, command: str, *, select: str = "", full_refresh: bool = False,
        vars: dict[str, Any] | None = None, extra: list[str] | None = None,
    ) -> DbtResult:
        """Run ``dbt <command>`` in this process; parse run_results when there are any."""
        from dbt.cli.main import dbtRunner  # slow import: only when dbt is needed

        apply_dbt_environment(self.cfg.warehouse)
        os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
        args: list[str] = []
        merged_vars = {**self.cfg.dbt.vars, **(vars or {})}
        if merged_vars:
            args += ["--vars", json.dumps(merged_vars)]
        sel = select or self.cfg.dbt.select
        if sel and command in ("build", "run", "test", "seed", "compile", "ls"):
            args += ["--select", sel]
        if full_refresh:
            args.append("--full-refresh")
        args += extra or []
        run_results = self.target_path / "run_results.json"
        if run_results.exists():
            run_results.unlink()  # never report a previous invocation's results
        full = self._args(command, args)
        log.debug("dbt %s", " ".join(full))
        try:
            res = dbtRunner().invoke([*full, "--quiet", "--no-use-colors"])
        finally:
            release_duckdb()
        result = DbtResult(command, bool(res.success))
        if res.exception is not None:
            result.error = f"{type(res.exception).__name__}: {res.exception}"
        if run_results.exists():
            result.nodes, result.elapsed_s = parse_run_results(run_results)
        elif not res.success and not result.error:
            result.error = "dbt failed before running any node (see the dbt log)"
        if not res.success and not result.nodes and command != "parse":
            raise DbtError(result.error or f"dbt {command} failed")
        return result

    def manifest_path(self) -> Path:
        return self.target_path / "manifest.json"


def release_duckdb() -> None:
    """Close the DuckDB database dbt-duckdb caches for the process.

    dbt-duckdb keeps its environment (and the open database file) in a class attribute
    between invocations; the daemon must not hold the warehouse between steps, and our
    own connections cannot open the file while dbt's differently-configured one lives.
    """
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # another adapter: nothing cached this way
        return
    with DuckDBConnectionManager._LOCK:
        env = DuckDBConnectionManager._ENV
        if env is not None:
            try:
                env.close()
            finally:
                DuckDBConnectionManager._ENV = None


def parse_run_results(path: Path) -> tuple[list[NodeResult], float]:
    data = json.loads(path.read_text(encoding="utf-8"))
    nodes = []
    for r in data.get("results", []):
        uid = r["unique_id"]
        resp = r.get("adapter_response") or {}
        rows = resp.get("rows_affected")
        nodes.append(
            NodeResult(
                unique_id=uid,
                name=".".join(uid.split(".")[2:]) or uid,
                resource_type=uid.split(".")[0],
                status=str(r.get("status")),
                duration_s=float(r.get("execution_time") or 0.0),
                rows_affected=int(rows) if isinstance(rows, int) and rows >= 0 else None,
                message=str(r.get("message") or ""),
                failures=r.get("failures"),
            )
        )
    return nodes, float(data.get("elapsed_time") or 0.0)
