"""The cycle's Great Expectations steps: the contract gate and the post-build suites.

Write-audit-publish: a new batch is audited by its feed's contract suites and published
only when they pass; otherwise it is held (its rows stay in raw) until an operator
releases or rejects it. After the build, grain and behaviour suites check the built
models on the keys this run touched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import sqlalchemy as sa

from monitor.core.config import Config, IngestConfig, ValidationConfig
from monitor.core.manifest import Project
from monitor.quality import owners
from monitor.quality.results import ExpectationResult, SuiteResult
from monitor.quality.suites import SuiteFile, load_suites
from monitor.quality.validator import Validator
from monitor.stages import reconcile, volume_check
from monitor.stages.ingest import IngestReport
from monitor.store import batches
from monitor.warehouse.connection import backend_for, warehouse

log = logging.getLogger(__name__)


@dataclass
class GateOutcome:
    published: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    results: list[SuiteResult] = field(default_factory=list)
    # The ledger's greatest publish_seq before this gate decided and after: what the
    # build that follows merges through (no batch is published outside the cycle lock).
    # Where this cycle's touched rows start is not the first: see monitor.store.watermark.
    seq_before: int = 0
    seq_after: int = 0
    days: list[volume_check.DayVerdict] = field(default_factory=list)  # feed-day volumes


def _validator(cfg: Config) -> Validator:
    backend = backend_for(cfg.warehouse)
    url, kwargs = backend.gx_connection(cfg.warehouse)
    return Validator(url, cfg.validation.unexpected_sample, raw_schema=cfg.ingest.schema,
                     engine_kwargs=kwargs, backend=backend)


def suites(validation: ValidationConfig) -> list[SuiteFile]:
    return load_suites(validation.suites_dir) if validation.enabled else []


def gate(cfg: Config, wh: sa.Engine, report: IngestReport, st: sa.Engine | None = None,
         day: date | None = None) -> GateOutcome:
    """Audit every pending batch with its feed's contracts and its feed-day's volume
    (``day``: the cycle's logical day, for files without a date in their path); publish
    or hold each."""
    schema = cfg.ingest.schema
    day = day or datetime.now(UTC).date()
    out = GateOutcome()
    with wh.connect() as conn:
        out.seq_before = batches.max_publish_seq(conn, schema)
        pending = batches.list_batches(conn, schema, status=batches.PENDING)
    folders = {f: cfg.ingest.landing_dir / f for f in cfg.ingest.feeds}
    delivered = {b.batch_id: volume_check.delivery_day(
        b.source_file, folders.get(b.feed, cfg.ingest.landing_dir), day) for b in pending}
    contracts = [s for s in suites(cfg.validation) if s.kind == "contract"]
    verdicts: dict[str, list[SuiteResult]] = {}
    if pending and contracts:
        with _validator(cfg) as v:
            for b in pending:
                verdicts[b.batch_id] = [v.run_contract(s, b.batch_id, b.feed,
                                                       delivered[b.batch_id])
                                        for s in contracts if s.feed == b.feed]
    # A batch its contract holds will not be published: its rows are not the day's volume
    # (a re-sent file is a duplicate batch, not a surge).
    passed = [b for b in pending if all(r.success for r in verdicts.get(b.batch_id, []))]
    if passed and st is not None:
        vol = volume_check.check(wh, st, schema, _volume_specs(cfg.ingest), cfg.volume, passed, day,
                                 (cfg.drift.month_end_days, cfg.drift.month_end_uplift))
        out.days = vol.days
        for batch_id, res in vol.results.items():
            verdicts.setdefault(batch_id, []).append(res)
    with wh.begin() as conn:
        for b in pending:
            results = verdicts.get(b.batch_id, [])
            out.results += results
            failed = [r for r in results if not r.success]
            if failed:
                reason = " | ".join(r.describe() for r in failed)
                batches.hold(conn, schema, b.batch_id, reason[:4000])
                out.held.append(b.batch_id)
                log.warning("batch %s held: %s", b.batch_id, reason)
            else:
                why = "contracts passed" if results else "no contract suite for this feed"
                batches.publish(conn, schema, b.batch_id, "gate", why)
                out.published.append(b.batch_id)
        out.seq_after = batches.max_publish_seq(conn, schema)
    out.results += _unreadable_files(report)
    return out


def _volume_specs(ingest: IngestConfig) -> dict[str, volume_check.FeedSpec]:
    return {f: volume_check.FeedSpec(tuple(s.columns), tuple(s.key), ingest.landing_dir / f)
            for f, s in ingest.feeds.items()}


def _unreadable_files(report: IngestReport) -> list[SuiteResult]:
    """Files quarantined whole break their feed's contract too: record them as such."""
    out = []
    for f in report.files:
        if f.outcome != "quarantined":
            continue
        check = ExpectationResult(
            expectation_type="expect_file_to_match_contract", column=None,
            kwargs_json=json.dumps({"file": str(f.path)}), success=False,
            observed_value=f.reason, unexpected_count=f.rows_quarantined,
            unexpected_values=[], check="file_readable",
        )
        out.append(SuiteResult(f"contract_{f.feed}", "contract", f.feed, f.batch_id, False,
                               [check]))
    return out


def model_checks(cfg: Config, project: Project | None, hwm: int | None,
                 skip: Mapping[str, Mapping[str, str]] | None = None) -> list[SuiteResult]:
    """Grain and behaviour suites on the built models present in the manifest; then
    whether every key the cycle published reached the incremental models built from it
    (``monitor.stages.reconcile``; not on a rebuild, ``hwm`` None). ``skip``: per suite,
    the checks a dbt test of this build owns (``monitor.quality.owners``), left out."""
    out = _suite_checks(cfg, project, hwm, skip or {})
    if project is not None and hwm is not None and cfg.ingest.enabled:
        with warehouse(cfg.warehouse) as wh:
            out += reconcile.check(wh, project, hwm)
    return out


def model_suites(cfg: Config, project: Project | None) -> list[SuiteFile]:
    """The grain and behaviour suites whose model the project has."""
    return _on_project(suites(cfg.validation), project)


def _on_project(loaded: Sequence[SuiteFile], project: Project | None) -> list[SuiteFile]:
    names = {m.name for m in project.models.values()} if project else set()
    return [s for s in loaded if s.kind != "contract" and s.model in names]


def _suite_checks(cfg: Config, project: Project | None, hwm: int | None,
                  skip: Mapping[str, Mapping[str, str]]) -> list[SuiteResult]:
    loaded = suites(cfg.validation)
    todo = _on_project(loaded, project)
    skipped = sorted({s.model or "" for s in loaded if s.kind != "contract"}
                     - {s.model or "" for s in todo})
    if skipped:
        log.info("no such models in the dbt project, suites skipped: %s", ", ".join(skipped))
    if not todo:
        return []
    # Suites on the same model run one after another, so the Validator's copy of the
    # touched rows (kept for the next suite on the same rows) is made once per model.
    # On a table, its grain suites first: a key they find unique on every row of the
    # touched keys spares the model's other suites the semi join on those keys (it can
    # add no row). A view's rows are copied anyway, and the first suite's copy serves
    # the next ones when it holds their columns: the file order, as before.
    tables = {m.name for m in project.models.values() if m.materialization != "view"} \
        if project is not None else set()
    order = sorted(range(len(todo)), key=lambda i: (
        todo[i].model or "", todo[i].model in tables and todo[i].kind != "grain"))
    done: dict[int, SuiteResult] = {}
    verified: dict[str, owners.VerifiedKeys] = {}
    with _validator(cfg) as v:
        for i in order:
            suite = todo[i]
            found = verified.get(suite.model or "") if suite.model in tables else None
            unique = (found is not None and hwm is not None
                      and found.covers(suite.key, suite.seq_columns, hwm))
            done[i] = v.run_model_suite(suite, hwm, skip=skip.get(suite.name, {}),
                                        key_unique=unique)
            verified.update(owners.verified_keys([suite], [done[i]], hwm, skip))
    return [done[i] for i in range(len(todo))]


def failed(results: Sequence[SuiteResult]) -> list[SuiteResult]:
    return [r for r in results if not r.success]
