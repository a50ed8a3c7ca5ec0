"""Runs dbt in-process through its Python API and reads what it did from run_results.

Any dbt project may be configured: its profile's target must be the monitor's warehouse,
the built relations must exist there, and ``[profile] aggregates`` must name its models.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml  # type: ignore[import-untyped]

from monitor.core.config import Config, ConfigError
from monitor.core.manifest import load_manifest
from monitor.warehouse.connection import apply_dbt_environment, warehouse

log = logging.getLogger(__name__)


class DbtError(RuntimeError):
    """dbt could not run at all (bad project, bad profile), as opposed to a failing model."""


class WarehouseMismatch(ConfigError):
    """dbt's profile targets another warehouse than the monitor observes."""


@dataclass(frozen=True)
class DbtTarget:
    """The output of dbt's profile a build writes to, as dbt renders it."""

    profile: str
    target: str
    type: str
    path: str | None  # DuckDB: the database file (absolute), else None
    #: the rendered target (secrets included: never written to a file or a log)
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def describe(self) -> str:
        where = self.path if self.path is not None else f"a {self.type} warehouse"
        return f"{where} (dbt profile {self.profile!r}, target {self.target!r})"


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
        writes = command in ("build", "run", "seed", "snapshot")
        target = self.check_target() if writes else None
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
        if writes and result.success:
            self._verify_build(result, target)
        if command == "build":
            self.check_aggregates()
        return result

    def dbt_target(self) -> DbtTarget:
        """Render the project's profile with dbt's own renderer (env vars, vars, target)."""
        from dbt.config.profile import Profile, read_profile
        from dbt.config.renderer import ProfileRenderer
        from dbt_common.context import set_invocation_context

        d = self.cfg.dbt
        set_invocation_context(dict(os.environ))  # env_var() in profiles.yml reads it
        renderer = ProfileRenderer(dict(d.vars))
        name = d.profile or str(renderer.render_value(_project_profile(d.project_dir)))
        raw = read_profile(str(d.profiles_dir))
        if name not in raw:
            raise ConfigError(f"dbt.profile: no profile {name!r} in {d.profiles_dir}/profiles.yml")
        target, data = Profile.render_profile(raw[name], name, d.target or None, renderer)
        kind = str(data.get("type") or "")
        path = None
        if kind == "duckdb":
            path = str(data.get("path") or ":memory:")
            if not path.startswith(":") and "://" not in path and not path.startswith("md:"):
                path = os.path.realpath(os.path.expanduser(path))  # dbt opens it from cwd
        return DbtTarget(name, str(target), kind, path, dict(data))

    def check_target(self) -> DbtTarget | None:
        """Refuse a build whose dbt target is not the monitor's DuckDB file.

        None when the profile cannot be rendered here (the build will say why) or the
        monitor uses a URL (compared after the build, by the relations it finds)."""
        wh = self.cfg.warehouse
        try:
            target = self.dbt_target()
        except ConfigError:
            raise
        except Exception as exc:  # dbt's own profile errors: the build reports them
            log.warning("could not render the dbt profile to check its warehouse: %s", exc)
            return None
        if wh.url:
            return target
        mine = os.path.realpath(wh.path)
        if target.path != mine:
            raise WarehouseMismatch(
                f"warehouse.path: dbt would build into {target.describe()}, but the monitor "
                f"observes {mine}; set [warehouse] path = \"{target.path or '...'}\" or make "
                "the profile's path \"{{ env_var('MONITOR_WAREHOUSE_PATH') }}\""
            )
        return target

    def _verify_build(self, result: DbtResult, target: DbtTarget | None) -> None:
        """Fail the result when no relation dbt built is in the monitor's warehouse."""
        built = _built_relations(self.target_path, result)
        if not built:
            return
        present = _existing(self.cfg, built)
        if present:
            return
        where = self.cfg.warehouse.url or str(self.cfg.warehouse.path)
        elsewhere = f" dbt built into {target.describe()}." if target is not None else ""
        result.success = False
        result.error = (f"none of the {len(built)} relation(s) dbt built is in the monitor's "
                        f"warehouse {where} (e.g. {'.'.join(built[0])}).{elsewhere}")

    def check_aggregates(self, parse: bool = False) -> None:
        """``[profile] aggregates`` must name models of the project (one-line error).

        ``parse``: with no manifest yet, ``dbt parse`` writes one first, so that a start
        refuses a wrong name before anything is ingested or built.
        """

        specs = self.cfg.profile.aggregates
        if specs and parse and not self.manifest_path().is_file():
            self.invoke("parse")
        if not specs or not self.manifest_path().is_file():
            return
        project = load_manifest(self.target_path)
        for i, spec in enumerate(specs):
            try:
                project.by_name(spec.model)
            except KeyError:
                raise ConfigError(
                    f"profile.aggregates[{i}].model: unknown model {spec.model!r} "
                    f"(not in the dbt project {self.cfg.dbt.project_dir})") from None

    def manifest_path(self) -> Path:
        return self.target_path / "manifest.json"


def _project_profile(project_dir: Path) -> str:
    """The ``profile:`` of dbt_project.yml (unrendered)."""
    data = yaml.safe_load((project_dir / "dbt_project.yml").read_text(encoding="utf-8"))
    name = data.get("profile") if isinstance(data, dict) else None
    if not name:
        raise ConfigError(f"dbt.profile: {project_dir}/dbt_project.yml names no profile")
    return str(name)


def _built_relations(target_path: Path, result: DbtResult) -> list[tuple[str, str]]:
    """(schema, identifier) of the tables and views this result built, from the manifest."""

    try:
        project = load_manifest(target_path)
    except (OSError, ValueError):
        return []
    done = {n.unique_id for n in result.models if n.status == "success"}
    return [(m.schema, m.identifier) for uid, m in project.models.items()
            if uid in done and m.is_relation]


def _existing(cfg: Config, relations: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The relations among ``relations`` that the monitor's warehouse holds."""
    wanted = {(s.lower(), t.lower()) for s, t in relations}
    tables = sa.table("tables", sa.column("table_schema"), sa.column("table_name"),
                      schema="information_schema")
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        rows = conn.execute(sa.select(tables.c.table_schema, tables.c.table_name)).all()
    return [(str(s), str(t)) for s, t in rows if (str(s).lower(), str(t).lower()) in wanted]


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
