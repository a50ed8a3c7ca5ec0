"""Step 4, full refresh vs incremental: the incremental models rebuilt with
``--full-refresh`` on a copy of the warehouse file (production is only read) and diffed
against production by unique key, to clear or convict the incremental logic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from monitor.core.config import Config, ConfigError
from monitor.core.manifest import ModelInfo, Project
from monitor.recovery.files import copy_file
from monitor.stages.build import DbtError, DbtProject
from monitor.store import state
from monitor.triage.context import Context, jsonable, sql_string
from monitor.triage.findings import ExpansionPoint, Isolation, ModelDiff
from monitor.warehouse.connection import apply_dbt_environment, warehouse

log = logging.getLogger(__name__)


_PROD = "triage_prod"  # catalog alias of production, attached read-only to the copy


def isolation_models(ctx: Context, expansion: ExpansionPoint) -> list[ModelInfo]:
    """Incremental models to rebuild: downstream of a multiplying model, else all."""
    if ctx.project is None:
        return []
    built = _built_models(ctx)
    incr = [n for n in ctx.project.lineage() if n.is_incremental and n.name in built]
    start = ctx.node(expansion.model) if expansion.model and expansion.grew else None
    if start is not None:
        below = _downstream(ctx.project, start.unique_id) | {start.unique_id}
        incr = [n for n in incr if n.unique_id in below] or incr
    return incr[:8]  # bounds the rebuild; the facts and the tables they read fit


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


def isolated_refresh(cfg: Config, folder: Path, models: Sequence[ModelInfo]) -> Isolation:
    """Copy the warehouse file into ``folder``, ``dbt build --full-refresh`` the models
    there and diff each against production (attached read-only). DuckDB files only."""
    iso = Isolation(models=[m.name for m in models])
    if not models:
        iso.reason = "no incremental model was built in this run"
        return iso
    if cfg.warehouse.url or not cfg.warehouse.is_duckdb:
        iso.reason = "isolated rebuild needs a DuckDB file warehouse (copy it by hand)"
        return iso
    prod = cfg.warehouse.path
    size = prod.stat().st_size if prod.exists() else 0
    if size > cfg.evidence.isolation_max_bytes:
        iso.reason = (f"warehouse file is {size} bytes, over evidence.isolation_max_bytes: "
                      "run the reproduce commands by hand")
        return iso
    started = time.perf_counter()
    iso.prod_checksum_before = file_checksum(prod)
    if folder.exists():
        shutil.rmtree(folder)
    copy = folder / prod.name  # same file name: compiled SQL names the catalog after it
    iso.copy_bytes = copy_file(prod, copy)
    iso.warehouse_copy = str(copy)
    cfg_copy = dataclasses.replace(
        cfg,
        warehouse=dataclasses.replace(cfg.warehouse, path=copy, url=""),
        dbt=dataclasses.replace(cfg.dbt, target_path=folder / "dbt-target",
                                log_path=folder / "dbt-logs"),
    )
    try:
        res = DbtProject(cfg_copy).invoke(
            "build", select=" ".join(m.name for m in models), full_refresh=True)
    except (DbtError, ConfigError) as exc:  # ConfigError: dbt's profile ignores the copy
        iso.reason = f"dbt could not rebuild on the copy: {exc}"
        return iso
    finally:
        apply_dbt_environment(cfg.warehouse)
    iso.failed_tests = [n.name for n in res.failed if n.resource_type == "test"]
    broken = [n.name for n in res.failed if n.resource_type != "test"]
    with warehouse(cfg_copy.warehouse) as wh, wh.connect() as conn:
        _attach_prod(conn, prod)
        try:
            iso.diffs = [_diff_model(conn, m) for m in models if m.name not in broken]
        finally:
            _detach_prod(conn)
    iso.ran = True
    iso.seconds = time.perf_counter() - started
    iso.prod_checksum_after = file_checksum(prod)
    if broken:
        iso.reason = f"full refresh failed for {', '.join(broken)}"
    return iso


def isolate(ctx: Context, models: Sequence[ModelInfo]) -> Isolation:
    """The isolated full refresh of ``models`` in the run's evidence folder, with sample
    rows of the differing keys; the copy is deleted afterwards."""
    folder = ctx.evidence_dir / "isolation"
    try:
        iso = isolated_refresh(ctx.cfg, folder, models)
    except (OSError, sa.exc.DBAPIError) as exc:
        log.warning("isolated full refresh failed: %s", exc)
        return Isolation(models=[m.name for m in models], reason=f"failed: {exc}")
    if iso.ran:
        _diff_samples(ctx, iso, folder)
        # The copy is as large as the warehouse; the diff and samples are what we keep.
        shutil.rmtree(folder, ignore_errors=True)
        iso.reason = iso.reason or "copy deleted after the diff"
    return iso


def file_checksum(path: Path, limit: int = 1 << 30) -> str:
    """sha256 of a file (empty for files over ``limit`` bytes: too slow to hash here)."""
    if not path.exists() or path.stat().st_size > limit:
        return ""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unique_key(m: ModelInfo, cols: Sequence[str]) -> list[str]:
    return [k for k in m.grain if k in cols] if m.grain else []


def _diff_model(conn: sa.Connection, m: ModelInfo) -> ModelDiff:
    """Production against the refreshed copy, by unique key (DuckDB SQL)."""
    fresh = f"{_q(m.schema)}.{_q(m.identifier)}"
    prod = f"{_PROD}.{fresh}"
    prod_cols = _cols_of(conn, _PROD, m)
    cols = [c for c in _cols_of(conn, None, m) if c in prod_cols]
    key = _unique_key(m, cols)
    d = ModelDiff(model=m.name, key=key)
    if not key:
        d.verdict, d.explanation = "no key", "the model has no grain/unique key to diff on"
        return d
    k = ", ".join(_q(c) for c in key)
    sel = ", ".join(_q(c) for c in cols)

    def one(sql: str) -> int:
        return int(conn.exec_driver_sql(sql).scalar() or 0)

    d.prod_rows = one(f"SELECT count(*) FROM {prod}")
    d.refresh_rows = one(f"SELECT count(*) FROM {fresh}")
    d.prod_duplicate_keys = d.prod_rows - one(
        f"SELECT count(*) FROM (SELECT DISTINCT {k} FROM {prod})")
    d.refresh_duplicate_keys = d.refresh_rows - one(
        f"SELECT count(*) FROM (SELECT DISTINCT {k} FROM {fresh})")
    d.only_in_prod = one(
        f"SELECT count(*) FROM (SELECT {k} FROM {prod} EXCEPT SELECT {k} FROM {fresh})")
    d.only_in_refresh = one(
        f"SELECT count(*) FROM (SELECT {k} FROM {fresh} EXCEPT SELECT {k} FROM {prod})")
    d.changed = one(
        f"SELECT count(*) FROM (SELECT DISTINCT {k} FROM (SELECT {sel} FROM {prod} EXCEPT "
        f"SELECT {sel} FROM {fresh}) WHERE ({k}) IN (SELECT ({k}) FROM {fresh}))")
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


def _cols_of(conn: sa.Connection, catalog: str | None, m: ModelInfo) -> list[str]:
    cat = f"'{catalog}'" if catalog else "current_database()"
    rows = conn.exec_driver_sql(
        "SELECT column_name FROM information_schema.columns WHERE table_catalog = "
        f"{cat} AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        (m.schema, m.identifier)).all()
    return [str(r[0]) for r in rows]


def _diff_samples(ctx: Context, iso: Isolation, folder: Path) -> None:
    """Rows of a few differing keys from both sides (the copy is still there)."""
    interesting = [d for d in iso.diffs if d.verdict not in ("equal", "no key")]
    if not interesting or ctx.project is None:
        return
    with warehouse(dataclasses.replace(ctx.cfg.warehouse, path=folder / ctx.cfg.warehouse.path.name,
                                       url=""), read_only=True) as wh, wh.connect() as conn:
        _attach_prod(conn, ctx.cfg.warehouse.path)
        try:
            _sample_diffs(conn, ctx, interesting)
        except sa.exc.DBAPIError as exc:
            log.warning("diff samples failed: %s", exc.orig)
        finally:
            _detach_prod(conn)


def _sample_diffs(conn: sa.Connection, ctx: Context, interesting: Sequence[ModelDiff]) -> None:
    for d in interesting:
        m = ctx.node(d.model)
        if m is None:
            continue
        fresh = f"{_q(m.schema)}.{_q(m.identifier)}"
        k = ", ".join(_q(c) for c in d.key)
        keys = (f"SELECT {k} FROM (SELECT * FROM {_PROD}.{fresh} EXCEPT SELECT * FROM {fresh}) "
                f"UNION SELECT {k} FROM (SELECT {k} FROM {fresh} EXCEPT "
                f"SELECT {k} FROM {_PROD}.{fresh}) LIMIT 5")
        for side, rel in (("production", f"{_PROD}.{fresh}"), ("full refresh", fresh)):
            res = conn.exec_driver_sql(
                f"SELECT * FROM {rel} WHERE ({k}) IN ({keys}) ORDER BY {k} LIMIT 20")
            names = list(res.keys())
            ctx.samples[f"{d.model} ({side}) at differing keys"] = [
                {n: jsonable(v) for n, v in zip(names, r, strict=True)} for r in res.all()]


def _attach_prod(conn: sa.Connection, prod: Path) -> None:
    conn.exec_driver_sql(f"ATTACH {sql_string(prod)} AS {_PROD} (READ_ONLY)")
    conn.commit()  # an ATTACH rolled back with a failed query would vanish


def _detach_prod(conn: sa.Connection) -> None:
    conn.rollback()
    conn.exec_driver_sql(f"DETACH {_PROD}")
    conn.commit()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
