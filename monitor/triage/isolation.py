"""Step 4, full refresh vs incremental: the incremental models rebuilt with
``--full-refresh`` in a scratch place (production is only read) and diffed against
production by unique key, to clear or convict the incremental logic.

The warehouse backend owns what differs per engine (``Backend.open_scratch`` and the
methods beside it): on DuckDB the scratch is a copy of the file, on PostgreSQL a schema
``dqm_triage_<run>`` that a generated dbt target builds into, its unselected parents
read from production (``dbt --defer --favor-state``). The flow and the diff SQL here are
the same for both.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml  # type: ignore[import-untyped]

from monitor.core.config import Config, ConfigError
from monitor.core.manifest import ModelInfo, Project, load_manifest
from monitor.stages.build import DbtError, DbtProject, parse_run_results
from monitor.store import state
from monitor.triage.context import Context, jsonable
from monitor.triage.findings import ExpansionPoint, Isolation, ModelDiff
from monitor.warehouse.connection import apply_dbt_environment, backend_for
from monitor.warehouse.engine import Relation, Scratch, Unsupported

log = logging.getLogger(__name__)


def isolation_models(ctx: Context, expansion: ExpansionPoint) -> list[ModelInfo]:
    """Incremental models to rebuild: downstream of a multiplying model, else all."""
    if ctx.project is None:
        return []
    start = ctx.node(expansion.model) if expansion.model and expansion.grew else None
    return rebuild_selection(ctx.project, _built_models(ctx), start)


MAX_REBUILT = 8  # bounds the rebuild's cost, with [evidence] isolation_max_bytes


def rebuild_selection(project: Project, built: set[str], start: ModelInfo | None
                      ) -> list[ModelInfo]:
    """The incremental models built in the run (by name), those at and below ``start``
    when it is given (else all), in lineage order. Past ``MAX_REBUILT`` the models
    nearest the outputs are kept, the facts a report is about, and ``start`` itself: a
    model left out is read as production holds it (the rebuild defers to it), so a
    left-out staging table still feeds the rebuilt facts, where a left-out fact would
    have no diff at all."""
    incr = [n for n in project.lineage() if n.is_incremental and n.name in built]
    if start is not None:
        below = _downstream(project, start.unique_id) | {start.unique_id}
        incr = [n for n in incr if n.unique_id in below] or incr
    if len(incr) <= MAX_REBUILT:
        return incr
    first = incr[:1] if start is not None and incr[0].unique_id == start.unique_id else []
    return first + incr[len(incr) - (MAX_REBUILT - len(first)):]


def _downstream(project: Project, uid: str) -> set[str]:
    out: set[str] = set()
    todo = [uid]
    while todo:
        for kid in project.children(todo.pop()):
            if kid.unique_id not in out:
                out.add(kid.unique_id)
                todo.append(kid.unique_id)
    return out


def _built_models(ctx: Context) -> set[str]:
    rm = state.run_models
    with ctx.st.connect() as conn:
        rows = conn.execute(sa.select(rm.c.model).where(
            rm.c.run_id == ctx.run.run_id, rm.c.status == "success")).all()
    return {str(r[0]) for r in rows}


def failed_tests(ctx: Context) -> list[str]:
    """The unique ids of the data tests that failed, errored or warned in the run."""
    rm = state.run_models
    with ctx.st.connect() as conn:
        rows = conn.execute(sa.select(rm.c.unique_id).where(
            rm.c.run_id == ctx.run.run_id, rm.c.resource_type == "test",
            rm.c.status.in_(("fail", "error", "warn")))).all()
    return sorted({str(r[0]) for r in rows if r[0]})


def isolated_refresh(cfg: Config, folder: Path, models: Sequence[ModelInfo], name: str = "",
                     *, samples: dict[str, Any] | None = None, keep: bool = False,
                     tests: Sequence[str] = ()) -> Isolation:
    """``dbt build --full-refresh`` the models in a scratch place (named after ``name``,
    the run) and diff each against production; ``samples`` receives rows of a few
    differing keys. The scratch place is removed afterwards unless ``keep``.

    Of the data tests only ``tests`` (unique ids: the ones that failed in production)
    run, on the rebuilt models: whether the full refresh fails them too is the
    evidence; the diff answers the rest. Every test of the models would double the
    rebuild on an engine that pays per statement (Spark; README, "The rehearsal on
    Spark")."""
    iso = Isolation(models=[m.name for m in models])
    if not models:
        iso.reason = "no incremental model was built in this run"
        return iso
    backend = backend_for(cfg.warehouse)
    relations = [(m.schema, m.identifier) for m in models]
    try:
        size, what = backend.isolation_footprint(cfg.warehouse, relations)
    except Unsupported as exc:
        iso.reason = str(exc)
        return iso
    if size > cfg.evidence.isolation_max_bytes:
        iso.reason = (f"{what} is {size} bytes, over evidence.isolation_max_bytes: "
                      "run the reproduce commands by hand")
        return iso
    project = _project(cfg)
    scratch_name = scratch_schema(name or folder.parent.name)
    taken = {n.schema.lower() for n in project.nodes.values()} if project else set()
    if scratch_name in taken | {cfg.ingest.schema.lower()}:
        iso.reason = f"scratch schema {scratch_name} is a production schema: not rebuilding"
        return iso
    started = time.perf_counter()
    iso.prod_checksum_before = backend.fingerprint(cfg.warehouse, relations)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    scratch = backend.open_scratch(cfg.warehouse, folder, scratch_name)
    iso.scratch, iso.warehouse_copy, iso.copy_bytes = (
        scratch.kind, scratch.location, scratch.copy_bytes)
    created: list[str] = []
    try:
        broken = _rebuild(cfg, folder, scratch, models, project, iso, tests)
        if broken is None:
            return iso
        fresh = _fresh_relations(folder / "dbt-target", models)
        created = sorted({schema for schema, _ in fresh.values()})
        with backend.comparison(cfg.warehouse, scratch) as conn:
            iso.diffs = [_diff_model(conn, m, scratch, fresh[m.name]) for m in models
                         if m.name in fresh and m.name not in broken]
            if samples is not None:
                try:
                    _sample_diffs(conn, models, scratch, fresh, iso.diffs, samples)
                except sa.exc.DBAPIError as exc:
                    log.warning("diff samples failed: %s", exc.orig)
        iso.ran = True
        iso.seconds = time.perf_counter() - started
        iso.prod_checksum_after = backend.fingerprint(cfg.warehouse, relations)
        missing = [m.name for m in models if m.name in broken or m.name not in fresh]
        if missing:
            iso.reason = f"full refresh failed for {', '.join(missing)}"
    finally:
        if not keep:
            backend.drop_scratch(cfg.warehouse, scratch, created)
    return iso


def _rebuild(cfg: Config, folder: Path, scratch: Scratch, models: Sequence[ModelInfo],
             project: Project | None, iso: Isolation, tests: Sequence[str] = ()
             ) -> list[str] | None:
    """The full refresh in the scratch place: the models that failed (None, and the
    reason in ``iso``, when dbt could not run); failed tests go into ``iso``."""
    select = list(models)
    extra: list[str] = []
    if scratch.dbt_target and project is not None:
        # An empty scratch schema: what the models read and is not rebuilt comes from
        # production (its manifest is the deferral state), but a view between two
        # rebuilt models is rebuilt too, so the rebuilt models read each other.
        select = with_paths_between(project, models)
        state_dir = folder / "production-state"
        state_dir.mkdir()
        shutil.copyfile(cfg.dbt.target_path / "manifest.json", state_dir / "manifest.json")
        extra = ["--defer", "--favor-state", "--state", str(state_dir)]
    names = [m.name for m in select] + _tests_on(project, tests, {m.unique_id for m in select})
    # no test runs unless named: none by selecting its model (unit tests included)
    extra += ["--indirect-selection", "empty"]
    cfg_copy, secrets = _scratch_config(cfg, folder, scratch)
    os.environ.update(secrets)
    try:
        res = DbtProject(cfg_copy).invoke(
            "build", select=" ".join(names), full_refresh=True, extra=extra)
    except (DbtError, ConfigError) as exc:  # ConfigError: dbt's profile ignores the copy
        iso.reason = f"dbt could not rebuild in the {scratch.kind}: {exc}"
        return None
    finally:
        for key in secrets:
            os.environ.pop(key, None)
        apply_dbt_environment(cfg.warehouse)
    iso.failed_tests = [n.name for n in res.failed if n.resource_type == "test"]
    return [n.name for n in res.failed if n.resource_type != "test"]


def _tests_on(project: Project | None, tests: Sequence[str], models: set[str]) -> list[str]:
    """The names of those of ``tests`` (unique ids) that test one of ``models``."""
    if project is None:
        return []
    return sorted(t.name for uid in tests if (t := project.tests.get(uid)) is not None
                  and t.node in models)


def _project(cfg: Config) -> Project | None:
    try:
        return load_manifest(cfg.dbt.target_path, cfg.layers)
    except (OSError, ValueError):
        return None


def scratch_schema(run_id: str) -> str:
    """``dqm_triage_<run>``: lower case, letters, digits and ``_``, at most 63 bytes."""
    return ("dqm_triage_" + re.sub(r"[^a-z0-9_]", "_", run_id.lower()))[:63]


_SECRET = re.compile(r"pass|secret|token|private_key", re.IGNORECASE)


def _scratch_config(cfg: Config, folder: Path, scratch: Scratch
                    ) -> tuple[Config, dict[str, str]]:
    """The config dbt runs with: its target and logs in ``folder``, and where the
    scratch is a place production's target does not reach, a generated profile
    (:func:`write_scratch_profile`)."""
    dbt = dataclasses.replace(cfg.dbt, target_path=folder / "dbt-target",
                              log_path=folder / "dbt-logs")
    secrets: dict[str, str] = {}
    if scratch.dbt_target:
        profiles = folder / "profiles"
        profile, secrets = write_scratch_profile(cfg, profiles, scratch.dbt_target)
        dbt = dataclasses.replace(dbt, profiles_dir=profiles, profile=profile,
                                  target=SCRATCH_TARGET)
    return dataclasses.replace(cfg, warehouse=scratch.warehouse, dbt=dbt), secrets


def write_scratch_profile(cfg: Config, profiles: Path, changes: Mapping[str, Any]
                          ) -> tuple[str, dict[str, str]]:
    """A ``profiles.yml`` in ``profiles`` whose one output, ``SCRATCH_TARGET``, is the
    production target as a build renders it, changed by ``changes`` (where the scratch
    is): a rebuild through it cannot reach production whatever the user's profile reads
    from the environment. Secrets are never written: each non-empty one becomes an
    ``env_var()`` of a DQM_TRIAGE_DBT_* variable. The profile's name and those
    variables with their values (to set for the run only)."""
    apply_dbt_environment(cfg.warehouse)  # production's target as a build renders it
    target = DbtProject(cfg).dbt_target()
    output: dict[str, Any] = dict(target.data)
    secrets: dict[str, str] = {}
    for key, value in list(output.items()):
        if isinstance(value, str) and value and _SECRET.search(key):
            var = f"DQM_TRIAGE_DBT_{re.sub(r'[^A-Z0-9]', '_', key.upper())}"
            secrets[var] = value
            output[key] = "{{ env_var('" + var + "') }}"
    output.update(changes)
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "profiles.yml").write_text(yaml.safe_dump(
        {target.profile: {"target": SCRATCH_TARGET,
                          "outputs": {SCRATCH_TARGET: output}}}), encoding="utf-8")
    return target.profile, secrets


SCRATCH_TARGET = "dqm_triage"  # the generated dbt target of an isolated rebuild


def with_paths_between(project: Project, models: Sequence[ModelInfo]) -> list[ModelInfo]:
    """``models`` and every model on a path from one of them to another (lineage order)."""
    uids = {m.unique_id for m in models}
    below: set[str] = set()
    for uid in uids:
        below |= _downstream(project, uid)
    above: set[str] = set()
    for uid in uids:
        above |= {n.unique_id for n in project.ancestors(uid)}
    keep = uids | (below & above)
    return [n for n in project.lineage() if n.unique_id in keep and n.resource_type == "model"]


def _fresh_relations(target_path: Path, models: Sequence[ModelInfo]) -> dict[str, Relation]:
    """Where the rebuild wrote each model that it built: (schema, identifier) from the
    isolated run's manifest and run results."""
    try:
        project = load_manifest(target_path)
        results, _ = parse_run_results(target_path / "run_results.json")
    except (OSError, ValueError):
        return {}
    ok = {r.unique_id for r in results if r.status == "success"}
    out = {}
    for m in models:
        node = project.models.get(m.unique_id)
        if node is not None and m.unique_id in ok:
            out[m.name] = (node.schema, node.identifier)
    return out


def isolate(ctx: Context, models: Sequence[ModelInfo]) -> Isolation:
    """The isolated full refresh of ``models`` in the run's evidence folder, with sample
    rows of the differing keys; the scratch place is removed afterwards."""
    folder = ctx.evidence_dir / "isolation"
    try:
        iso = isolated_refresh(ctx.cfg, folder, models, ctx.run.run_id, samples=ctx.samples,
                               tests=failed_tests(ctx))
    except (OSError, sa.exc.DBAPIError, Unsupported) as exc:
        log.warning("isolated full refresh failed: %s", exc)
        return Isolation(models=[m.name for m in models], reason=f"failed: {exc}")
    finally:
        # dbt's target and logs are evidence of the rebuild only while it runs
        shutil.rmtree(folder, ignore_errors=True)
    if iso.ran:
        iso.reason = iso.reason or f"{iso.scratch} deleted after the diff"
    return iso


def _unique_key(m: ModelInfo, cols: Sequence[str]) -> list[str]:
    return [k for k in m.grain if k in cols] if m.grain else []


def _rel(conn: sa.Connection, scratch: Scratch, relation: Relation, production: bool) -> str:
    _q = _quoter(conn)
    name = f"{_q(relation[0])}.{_q(relation[1])}"
    return f"{scratch.production}.{name}" if production and scratch.production else name


def _diff_model(conn: sa.Connection, m: ModelInfo, scratch: Scratch, fresh_at: Relation
                ) -> ModelDiff:
    """Production against the rebuilt relation, by unique key (SQL both engines run:
    derived tables aliased, keys matched by EXISTS)."""
    _q = _quoter(conn)
    prod = _rel(conn, scratch, (m.schema, m.identifier), True)
    fresh = _rel(conn, scratch, fresh_at, False)
    prod_cols = _cols_of(conn, prod)
    cols = [c for c in _cols_of(conn, fresh) if c in prod_cols]
    key = _unique_key(m, cols)
    d = ModelDiff(model=m.name, key=key)
    if not key:
        d.verdict, d.explanation = "no key", "the model has no grain/unique key to diff on"
        return d
    k = ", ".join(_q(c) for c in key)
    sel = ", ".join(_q(c) for c in cols)
    same_key = " AND ".join(f"f.{_q(c)} = d.{_q(c)}" for c in key)

    def one(sql: str) -> int:
        return int(conn.exec_driver_sql(sql).scalar() or 0)

    d.prod_rows = one(f"SELECT count(*) FROM {prod}")
    d.refresh_rows = one(f"SELECT count(*) FROM {fresh}")
    d.prod_duplicate_keys = d.prod_rows - one(
        f"SELECT count(*) FROM (SELECT DISTINCT {k} FROM {prod}) AS d")
    d.refresh_duplicate_keys = d.refresh_rows - one(
        f"SELECT count(*) FROM (SELECT DISTINCT {k} FROM {fresh}) AS d")
    d.only_in_prod = one(
        f"SELECT count(*) FROM (SELECT {k} FROM {prod} EXCEPT SELECT {k} FROM {fresh}) AS d")
    d.only_in_refresh = one(
        f"SELECT count(*) FROM (SELECT {k} FROM {fresh} EXCEPT SELECT {k} FROM {prod}) AS d")
    d.changed = one(
        f"SELECT count(*) FROM (SELECT DISTINCT {', '.join(f'd.{_q(c)}' for c in key)} "
        f"FROM (SELECT {sel} FROM {prod} EXCEPT SELECT {sel} FROM {fresh}) AS d "
        f"WHERE EXISTS (SELECT 1 FROM {fresh} AS f WHERE {same_key})) AS x")
    d.verdict, d.explanation = _verdict(d)
    return d


def _verdict(d: ModelDiff) -> tuple[str, str]:
    if d.prod_duplicate_keys > d.refresh_duplicate_keys:
        return "unique key", (
            f"production holds {d.prod_duplicate_keys} duplicate {'/'.join(d.key)} rows a full "
            "refresh does not: the merge's unique_key does not match the grain")
    if d.only_in_refresh or d.changed:
        return "incremental filter", (
            f"the incremental run missed {d.only_in_refresh} key(s) and kept {d.changed} "
            "stale version(s) that a full refresh picks up: the is_incremental() filter "
            "(watermark/lookback) drops source rows")
    if d.only_in_prod:
        return "retained keys", (
            f"production keeps {d.only_in_prod} key(s) the source no longer has (retracted "
            "or deleted rows): merges never delete; roll back or --full-refresh")
    return "equal", "incremental result equals a full refresh: the merge logic is not at fault"


def _cols_of(conn: sa.Connection, rel: str) -> list[str]:
    """Column names of the relation ``rel`` (quoted SQL text) in table order: the keys
    of an empty result, as every engine answers (Spark's catalog has no
    ``information_schema``)."""
    names = conn.exec_driver_sql(f"SELECT * FROM {rel} LIMIT 0").keys()
    return [str(k) for k in names]


def _sample_diffs(conn: sa.Connection, models: Sequence[ModelInfo], scratch: Scratch,
                  fresh_at: dict[str, Relation], diffs: Sequence[ModelDiff],
                  samples: dict[str, Any]) -> None:
    """Rows of a few differing keys from both sides (the scratch is still there)."""
    by_name = {m.name: m for m in models}
    _q = _quoter(conn)
    for d in diffs:
        m = by_name.get(d.model)
        if d.verdict in ("equal", "no key") or m is None or d.model not in fresh_at:
            continue
        prod = _rel(conn, scratch, (m.schema, m.identifier), True)
        fresh = _rel(conn, scratch, fresh_at[d.model], False)
        prod_cols = _cols_of(conn, prod)
        sel = ", ".join(_q(c) for c in _cols_of(conn, fresh) if c in prod_cols)
        k = ", ".join(_q(c) for c in d.key)
        same_key = " AND ".join(f"r.{_q(c)} = x.{_q(c)}" for c in d.key)
        keys = (f"SELECT {k} FROM (SELECT {sel} FROM {prod} EXCEPT SELECT {sel} FROM {fresh}) "
                f"AS a UNION SELECT {k} FROM (SELECT {k} FROM {fresh} EXCEPT "
                f"SELECT {k} FROM {prod}) AS b")
        for side, rel in (("production", prod), ("full refresh", fresh)):
            res = conn.exec_driver_sql(
                f"WITH x AS (SELECT * FROM ({keys}) AS u ORDER BY {k} LIMIT 5) "
                f"SELECT r.* FROM {rel} AS r WHERE EXISTS (SELECT 1 FROM x WHERE {same_key}) "
                f"ORDER BY {', '.join(f'r.{_q(c)}' for c in d.key)} LIMIT 20")
            names = list(res.keys())
            samples[f"{d.model} ({side}) at differing keys"] = [
                {n: jsonable(v) for n, v in zip(names, r, strict=True)} for r in res.all()]


def _quoter(conn: sa.Connection) -> Callable[[str], str]:
    """The engine's quoting of a name (``"x"``; backticks on Spark), always quoted."""
    return conn.dialect.identifier_preparer.quote_identifier
