"""Runs dbt in-process through its Python API and reads what it did from run_results.

Any dbt project may be configured: its profile's target must be the monitor's warehouse,
the built relations must exist there, and ``[profile] aggregates`` must name its models.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml  # type: ignore[import-untyped]

from monitor.core.config import Config, ConfigError
from monitor.core.manifest import load_manifest
from monitor.warehouse.connection import (
    apply_dbt_environment,
    backend_for,
    backend_for_dbt,
    warehouse,
)

log = logging.getLogger(__name__)

# The touched-rows watermark of a cycle's build, read by the data tests when they run
# (pipeline/macros/get_where_subquery.sql).
TOUCHED_AFTER_ENV = "DBT_MONITOR_TOUCHED_AFTER"


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
    location: str  # where it writes, in words (DuckDB: the absolute file)
    mismatch: str | None = None  # why it is not the monitor's warehouse (None: it is)
    #: the rendered target (secrets included: never written to a file or a log)
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def describe(self) -> str:
        return f"{self.location} (dbt profile {self.profile!r}, target {self.target!r})"


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
        self._target: DbtTarget | None = None  # resolved by check_target

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
        target = d.target or (self._target.target if self._target is not None else "")
        if target:
            args += ["--target", target]
        if command in ("build", "run", "test", "seed"):
            args += ["--threads", str(d.threads)]
        return args + extra

    def invoke(
        self, command: str, *, select: str = "", full_refresh: bool = False,
        vars: dict[str, Any] | None = None, extra: list[str] | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> DbtResult:
        """Run ``dbt <command>`` in this process; parse run_results when there are any.
        ``env``: variables set (None: removed) for this invocation only."""
        from dbt.cli.main import dbtRunner  # slow import: only when dbt is needed

        apply_dbt_environment(self.cfg.warehouse)
        os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
        writes = command in ("build", "run", "seed", "snapshot")
        # Every command runs on the target a build would write to (parse and test too).
        target = self.check_target()
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
        saved = {k: os.environ.get(k) for k in env or {}}
        _set_environment(env or {})
        try:
            res = dbtRunner().invoke([*full, "--quiet", "--no-use-colors"])
        finally:
            _set_environment(saved)
            release_dbt(self.cfg)
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
        """The output a build writes to (:meth:`check_target`'s choice), rendered with
        dbt's own renderer (env vars, vars); where the profile cannot be checked here,
        ``[dbt] target`` or the default as dbt renders it (dbt's error if it cannot)."""
        target = self.check_target()
        if target is not None:
            return target
        name, raw = self._profile()
        return self._render(name, raw, self.cfg.dbt.target or None)

    def _profile(self) -> tuple[str, dict[str, Any]]:
        from dbt.config.profile import read_profile
        from dbt.config.renderer import ProfileRenderer
        from dbt_common.context import set_invocation_context

        d = self.cfg.dbt
        set_invocation_context(dict(os.environ))  # env_var() in profiles.yml reads it
        renderer = ProfileRenderer(dict(d.vars))
        name = d.profile or str(renderer.render_value(_project_profile(d.project_dir)))
        raw = read_profile(str(d.profiles_dir))
        if name not in raw:
            raise ConfigError(f"dbt.profile: no profile {name!r} in {d.profiles_dir}/profiles.yml")
        return name, raw[name]

    def _render(self, name: str, raw: dict[str, Any], target: str | None) -> DbtTarget:
        from dbt.config.profile import Profile
        from dbt.config.renderer import ProfileRenderer

        renderer = ProfileRenderer(dict(self.cfg.dbt.vars))
        chosen, data = Profile.render_profile(raw, name, target, renderer)
        kind = str(data.get("type") or "")
        return DbtTarget(name, str(chosen), kind, backend_for_dbt(kind).dbt_location(data),
                         backend_for(self.cfg.warehouse).dbt_mismatch(self.cfg.warehouse, data),
                         dict(data))

    def check_target(self) -> DbtTarget | None:
        """The profile output dbt will write to; refused unless it is the monitor's
        warehouse (``Backend.dbt_mismatch``: the DuckDB file; PostgreSQL's host, port and
        database).

        ``[dbt] target`` names it; else the profile's default, and when that one writes
        elsewhere, the profile's only output that writes into the monitor's warehouse
        (so a project with a ``dev`` DuckDB target and a ``postgres`` one needs no
        ``[dbt] target`` on either engine). None when the profile cannot be rendered
        here (the build will say why); an engine that cannot compare (a generic URL) is
        checked after the build, by the relations it finds."""
        try:
            name, raw = self._profile()
        except ConfigError:
            raise
        except Exception as exc:  # dbt's own profile errors: the build reports them
            log.warning("could not render the dbt profile to check its warehouse: %s", exc)
            return None
        wanted = self.cfg.dbt.target or None
        try:
            target = self._render(name, raw, wanted)
        except Exception as exc:  # dbt's renderer: dbt itself would fail the same way
            if wanted:
                raise ConfigError(f"dbt.target: output {wanted!r} of dbt profile {name!r} "
                                  f"does not render: {_one_line(exc)}") from None
            target, failed = None, exc
        if target is not None and target.mismatch is None:
            self._target = target
            return target
        nearest = target
        if not wanted:
            found, same_engine = self._other_outputs(name, raw,
                                                     skip=target.target if target else "")
            if len(found) == 1:
                log.info("dbt target %r chosen: the profile's output on the monitor's "
                         "warehouse (the default %r is not)", found[0].target,
                         target.target if target else raw.get("target", "default"))
                self._target = found[0]
                return found[0]
            if len(same_engine) == 1 and (target is None or not self._same_engine(target)):
                nearest = same_engine[0]  # the output meant for this engine, elsewhere
        if nearest is None:
            raise ConfigError(f"dbt.target: the default output of dbt profile {name!r} does "
                              f"not render ({_one_line(failed)}) and no other output is on "
                              "the monitor's warehouse; set [dbt] target")
        raise WarehouseMismatch(self._mismatch_message(nearest))

    def _same_engine(self, target: DbtTarget) -> bool:
        return backend_for_dbt(target.type) is backend_for(self.cfg.warehouse)

    def _other_outputs(self, name: str, raw: dict[str, Any], skip: str
                       ) -> tuple[list[DbtTarget], list[DbtTarget]]:
        """The profile's outputs (other than ``skip``) that write into the monitor's
        warehouse, and those of its engine that write elsewhere; outputs that do not
        render here (an unset env var) are neither."""
        outputs = raw.get("outputs")
        found, elsewhere = [], []
        for output in outputs if isinstance(outputs, dict) else {}:
            if output == skip:
                continue
            try:
                candidate = self._render(name, raw, str(output))
            except Exception:  # e.g. the DuckDB output's MONITOR_WAREHOUSE_PATH, unset
                continue
            if candidate.mismatch is None:
                found.append(candidate)
            elif self._same_engine(candidate):
                elsewhere.append(candidate)
        return found, elsewhere

    def _mismatch_message(self, target: DbtTarget) -> str:
        wh = self.cfg.warehouse
        if not wh.url:
            mine = os.path.realpath(wh.path)
            if not self._same_engine(target):
                return (f"warehouse.path: dbt would build into {target.describe()}, but the "
                        f"monitor observes the DuckDB file {mine}; set [warehouse] url to "
                        "that warehouse, or [dbt] target to an output on the file")
            return (f"warehouse.path: dbt would build into {target.describe()}, but the "
                    f"monitor observes {mine}; set [warehouse] path = \"{target.location}\" "
                    "or make the profile's path \"{{ env_var('MONITOR_WAREHOUSE_PATH') }}\"")
        key = "dbt.target" if self.cfg.dbt.target else "warehouse.url"
        return (f"{key}: dbt would build into {target.describe()}: {target.mismatch}; set "
                "[dbt] target to the profile's output on the monitor's warehouse (for "
                "PostgreSQL, pipeline/profiles.yml's `postgres` output reads the MONITOR_PG_* "
                "variables the monitor sets from [warehouse] url)")

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

    def check_config(self) -> None:
        """At start, before anything is ingested or built: the profile's target is the
        monitor's warehouse, and ``[profile] aggregates`` name models of the project."""
        apply_dbt_environment(self.cfg.warehouse)
        self.check_target()
        self.check_aggregates(parse=True)

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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
    """The relations among ``relations`` that the monitor's warehouse holds (through the
    dialect's reflection: Spark's catalog has no ``information_schema``)."""
    found: list[tuple[str, str]] = []
    schemas = sorted({s for s, _ in relations}, key=str.lower)
    with warehouse(cfg.warehouse) as wh, wh.connect() as conn:
        insp = sa.inspect(conn)
        for schema in schemas:
            try:
                names = {n.lower() for n in [*insp.get_table_names(schema=schema),
                                             *insp.get_view_names(schema=schema)]}
            except sa.exc.DBAPIError:  # no such schema (Spark raises, others list none)
                conn.rollback()
                continue
            found += [(s, t) for s, t in relations if s == schema and t.lower() in names]
    return found


def release_dbt(cfg: Config) -> None:
    """Close what dbt's adapter keeps open for the process (``Backend.release_dbt``)."""
    backend_for(cfg.warehouse).release_dbt()


def release_duckdb() -> None:
    """Close the DuckDB database dbt-duckdb caches for the process (tests that run dbt
    on a DuckDB file themselves)."""
    backend_for_dbt("duckdb").release_dbt()


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


def _set_environment(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
