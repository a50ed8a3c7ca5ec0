"""Incident triage end to end: every root-cause class injected, and the report names it.

Three clean days (Mon-Wed, 300 claims/day) run once in a base workspace; each scenario
copies it, lands a fourth day carrying one injection and runs the cycle, which writes
the incident report itself for a failed or anomalous run (else the test asks for it).
Drift is non-seasonal with ``min_history = 2`` so three days are history enough.

Two scenarios deploy a changed copy of the dbt project on day 4 (the repo's project is
never touched):

* ``late_updates`` → ``incremental_predicate``. With the pipeline's publish-seq
  high-watermark late updates are merged correctly (tests/test_pipeline_e2e.py proves
  it), so this class needs a broken predicate. The copy's ``fct_claims`` honours a
  dbt var ``incremental_filter``; the config sets it to ``business_date``, which
  filters on ``received_date > max(received_date)`` of the fact, the classic
  business-date watermark. Day 4's late updates (claims received 20-40 days earlier)
  and the ordinary updates of the last days are dropped by it; the full-refresh diff
  shows the missed keys and stale versions.
* ``fanout_lookup`` → ``key_explosion`` where rows really multiply. The copy's
  ``int_employees__enriched`` joins every version of a company instead of the latest
  one, and there is no contract gate (validation off), so the day-4 companies delivery
  (one EIN twice) doubles every employee row: the expansion point is found by counts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from dqm_demo.demo import days, land_day
from dqm_demo.generate import Injection, generate
from monitor.cli import main
from monitor.core.config import Config, load_config, state_url
from monitor.core.manifest import ModelInfo, Project, load_manifest
from monitor.export.prometheus import Metrics
from monitor.store import state
from monitor.store.state import alerts_open
from monitor.triage.analyse import write_report
from monitor.triage.isolation import (
    MAX_REBUILT,
    isolated_refresh,
    rebuild_selection,
    scratch_schema,
)

from .conftest import REPO, write_config
from .pg_cycle import cli, scalar
from .pg_server import PG_BIN, PgServer

pytestmark = pytest.mark.slow

START = date(2026, 3, 2)  # a Monday
DAY4 = START + timedelta(days=3)
CLAIMS, SEED = 300, 11
DRIFT = {"seasonal": "false", "min_history": "2"}


@dataclass
class Case:
    cfg: Config
    run_id: str
    status: str  # of the day-4 run: success | failed | held
    doc: dict[str, Any]
    auto: bool  # the cycle wrote the report by itself
    gauges: str  # the day's /metrics text, as the daemon would export it
    engine: str = "duckdb"


def both(*names: str) -> list[Any]:
    """The ``case`` params of scenarios ``names`` on DuckDB and on PostgreSQL."""
    return [p for n in names for p in (
        pytest.param((n, "duckdb"), id=n),
        pytest.param((n, "postgres"), id=f"{n}-postgres", marks=pytest.mark.postgres))]


# The day's median claim amount (the default's touched scope) of 300 claims moves ~10%
# by chance, and with three days of history (min_history = 2) that alone can flag it and
# outrank a latent key explosion. These tests inject one fault each, so they profile the
# whole fact's median, which chance does not move; the rehearsal tests the default.
WHOLE_FACT_MEDIAN = {
    'funcs = ["median"], scope = "touched" }': 'funcs = ["median"] }',
}


def _config(root: Path, extra: str = "", edit: dict[str, str] | None = None,
            url: str = "", **kw: str) -> Config:
    """The test config in ``root``; on the PostgreSQL database ``url`` when given."""
    if url:
        kw = {"path": f'"data/warehouse.duckdb"\nurl = "{url}"', **kw}
    path = write_config(root, extra, **{**DRIFT, **kw})
    text = path.read_text()
    for old, new in {**WHOLE_FACT_MEDIAN, **(edit or {})}.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    return load_config(path)


@contextmanager
def _exported(metrics: Metrics) -> Iterator[None]:
    """``monitor once`` exporting its gauges to ``metrics`` as the daemon's cycles do (the
    CLI's own cycle has no registry to export to)."""
    import monitor.cycle.run as run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run, "run_cycle", functools.partial(run.run_cycle, metrics=metrics))
        yield


def _once(cfg: Config, day: date) -> tuple[int, str, str]:
    """``monitor once --as-of DAY``: (exit code, stderr, the gauges' /metrics text)."""
    metrics = Metrics(currency=cfg.cost.currency)
    with _exported(metrics):
        code, _, err = cli(cfg.source, "once", "--as-of", day.isoformat())
    return code, err, metrics.render()[0].decode()


def _clean_days(root: Path, url: str = "") -> None:
    """Three clean days generated, landed and run in the workspace ``root``; the last
    one's gauges kept in ``clean-day.prom``."""
    cfg = _config(root, url=url)
    generate(root / "feeds", START, 3, CLAIMS, seed=SEED)
    for day in days(START, 3):
        land_day(root / "feeds", cfg.ingest.landing_dir, day)
        code, err, gauges = _once(cfg, day)
        assert code == 0, err[-2000:]
    (root / "clean-day.prom").write_text(gauges)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triage-base")
    _clean_days(root)
    return root


@dataclass
class PgBase:
    """The clean days in a PostgreSQL database of the module, cloned per scenario."""

    root: Path
    server: PgServer
    database: str
    clones: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        s = self.server
        return f"postgresql+psycopg2://{s.user}@{s.host}:{s.port}/{name}"

    def _admin(self, sql: str) -> None:
        import psycopg2  # the `postgres` extra

        con = psycopg2.connect(self.server.dsn("postgres"))
        con.autocommit = True
        try:
            with con.cursor() as cur:
                cur.execute(sql)
        finally:
            con.close()

    def clone(self) -> str:
        """A new database copied from the clean days' one (its URL)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.clones.append(name)
        self._admin(f"create database {name} template {self.database}")
        return self.url(name)

    def drop(self) -> None:
        for name in [*self.clones, self.database]:
            self._admin(f"drop database if exists {name} with (force)")


@pytest.fixture(scope="module")
def pg_base(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBase]:
    b = PgBase(tmp_path_factory.mktemp("triage-pg-base"), pg_server,
               f"t_{uuid.uuid4().hex[:12]}")
    b._admin(f"create database {b.database}")
    try:
        _clean_days(b.root, b.url(b.database))
        yield b
    finally:
        b.drop()


@pytest.fixture(scope="module")
def built_cases() -> dict[str, Case]:
    """Day 4 of each scenario, built once per module on its own copy of ``base`` when
    a test first asks for it (cases never change after: any order gives the same)."""
    return {}


# The body of int_employees__enriched's companies_by_ein: the fanout_lookup scenario
# drops the latest-version dedupe around it, so an EIN with two versions joins twice.
COMPANIES_BY_EIN = (
    "    select\n"
    "        company_ein,\n"
    "        domain as company_domain,\n"
    "        industry,\n"
    "        headcount,\n"
    "        revenue,\n"
    "        _publish_seq\n"
    "    from companies\n"
)


def _patched_project(dest: Path, rel: str, old: str, new: str) -> Path:
    shutil.copytree(REPO / "pipeline", dest,
                    ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    path = dest / rel
    text = path.read_text()
    assert old in text, f"{rel} changed: the scenario's patch no longer applies"
    path.write_text(text.replace(old, new, 1))
    return dest


def _run_day4(base: Path, root: Path, kind: str, cfg_kw: dict[str, Any] | None = None,
              url: str = "") -> Case:
    """Day 4 with injection ``kind`` through ``monitor once``, its report through
    ``monitor triage`` (on the database ``url`` when given)."""
    shutil.copytree(base, root)
    cfg = _config(root, url=url, **(cfg_kw or {}))
    if cfg.dbt.project_dir != REPO / "pipeline":
        (cfg.dbt.target_path / "partial_parse.msgpack").unlink(missing_ok=True)
    feeds = root / "feeds4"
    generate(feeds, DAY4, 1, CLAIMS, seed=SEED, inject=[Injection(kind, DAY4)])
    land_day(feeds, cfg.ingest.landing_dir, DAY4)
    code, err, gauges = _once(cfg, DAY4)
    st = state.open_state(state_url(cfg))
    try:
        with st.connect() as conn:
            run_id, status = conn.execute(sa.select(state.runs.c.run_id, state.runs.c.status)
                                          .order_by(state.runs.c.started_at.desc())
                                          .limit(1)).one()
    finally:
        st.dispose()
    assert (code == 0) == (status == "success"), (code, status, err[-2000:])
    auto = (cfg.evidence.dir / run_id / "report.json").exists()
    out = root / "triage.json"
    code, _, err = cli(cfg.source, "triage", "--run", run_id, "--format", "json",
                       "--out", str(out))
    assert code == 0, err[-2000:]
    doc = json.loads(out.read_text())
    return Case(cfg, run_id, status, doc, auto, gauges, "postgres" if url else "duckdb")


def _case(name: str, base: Path, tmp_path_factory: pytest.TempPathFactory,
          built: dict[str, Case], pg: PgBase | None = None) -> Case:
    key = f"{name}-postgres" if pg else name
    if key not in built:
        root = tmp_path_factory.mktemp(key)
        kind: str = name
        kw: dict[str, Any] | None = None
        if name == "late_updates":
            project = _patched_project(
                root.parent / f"{root.name}-project", "models/marts/fct_claims.sql",
                "    where _publish_seq > {{ watermark }}\n",
                "    {% if var('incremental_filter', 'publish_seq') == 'business_date' %}\n"
                "    where received_date > (select max(received_date) from {{ this }})\n"
                "    {% else %}\n"
                "    where _publish_seq > {{ watermark }}\n"
                "    {% endif %}\n",
            )
            kw = {"project_dir": f'"{project}"', "profiles_dir": f'"{project}"',
                  "vars": '{ lookback_batches = 0, incremental_filter = "business_date" }'}
        elif name == "fanout_lookup":
            kind = "dup_enrichment_key"
            project = _patched_project(
                root.parent / f"{root.name}-project",
                "models/intermediate/int_employees__enriched.sql",
                f"    {{% call latest_version_select('company_ein') -%}}\n{COMPANIES_BY_EIN}"
                "    {%- endcall %}\n",
                COMPANIES_BY_EIN,
            )
            kw = {"project_dir": f'"{project}"', "profiles_dir": f'"{project}"',
                  "edit": {"[validation]\nenabled = true": "[validation]\nenabled = false"}}
        shutil.rmtree(root)
        built[key] = _run_day4(pg.root if pg else base, root, kind, kw,
                               pg.clone() if pg else "")
    return built[key]


@pytest.fixture
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         built_cases: dict[str, Case]) -> Case:
    """``(scenario, engine)``, or a scenario name alone on DuckDB. The base of the other
    engine is not built (nor its server started) unless a param asks for it."""
    name, engine = request.param if isinstance(request.param, tuple) else (
        request.param, "duckdb")
    if engine == "postgres":
        pg = request.getfixturevalue("pg_base")
        return _case(name, pg.root, tmp_path_factory, built_cases, pg)
    return _case(name, request.getfixturevalue("base"), tmp_path_factory, built_cases)


def _classified(c: Case, expected: str) -> None:
    doc = c.doc
    assert doc["root_cause"] == expected, (doc["summary"], doc["findings"])
    assert doc["run_id"] == c.run_id
    assert doc["evidence"], "a class without evidence"
    assert set(doc["expansion_point"]) >= {"model", "key", "input"}
    # Every evidence step ran on this engine (a failed one is a note, not an error).
    assert not [n for n in doc["notes"] if n.startswith("could not collect")], doc["notes"]
    assert doc["query_plan"].get("engine") == {"duckdb": "DuckDB", "postgres": "PostgreSQL"}[
        c.engine] or not doc["query_plan"], doc["query_plan"]


@pytest.mark.parametrize("case", both("volume_surge"), indirect=True)
def test_volume_surge(case: Case) -> None:
    _classified(case, "volume_surge")
    assert case.auto
    assert "benefits.claims" in case.doc["summary"]
    # Held by the gate's feed-day volume (3x, the cold-start band): nothing multiplied
    # downstream (a latent one-to-many join may be named, but it did not grow).
    assert case.doc["expansion_point"]["grew"] is False
    assert "held by the gate" in case.doc["summary"]


@pytest.mark.parametrize("case", both("dup_enrichment_key"), indirect=True)
def test_key_explosion_names_model_key_and_input(case: Case) -> None:
    _classified(case, "key_explosion")
    ep = case.doc["expansion_point"]
    assert (ep["model"], ep["key"], ep["input"]) == (
        "int_employees__enriched", "company_ein", "stg_benefits__companies")
    assert ep["grew"] is False  # the contract held the batch; the lookup dedupes anyway
    top = ep["offending_keys"][0]
    assert top["input_rows"] == 2 and top["model_rows"] > 0
    assert ep["source"] == "benefits.companies" and ep["batches"]
    held = [b["batch_id"] for b in case.doc["batches"] if b["status"] == "held"]
    assert held == ep["batches"]
    assert any(f"reject {held[0]}" in c for c in case.doc["commands"]["reject"])


@pytest.mark.parametrize("case", both("fanout_lookup"), indirect=True)
def test_key_explosion_found_where_rows_multiply(case: Case) -> None:
    _classified(case, "key_explosion")
    ep = case.doc["expansion_point"]
    assert (ep["model"], ep["key"], ep["input"]) == (
        "int_employees__enriched", "company_ein", "stg_benefits__companies")
    assert ep["grew"] is True and ep["duplicated_keys"] > 0
    counts = {c["model"]: c for c in case.doc["counts"]}
    flagged = [c["model"] for c in case.doc["counts"] if c["flagged"]]
    assert flagged[0] == "int_employees__enriched"  # the first in lineage order
    emp = counts["int_employees__enriched"]
    assert emp["duplicate_keys"] > 0 and not emp["duplicate_keys_before"]
    # Every offending key has more than one row in the input: two company batches.
    assert all(k["input_rows"] >= 2 and k["model_rows"] > 0 for k in ep["offending_keys"])
    assert case.doc["query_plan"]["model"] == "int_employees__enriched"
    # The expansion point's counts are plotted from their stored history, in the HTML too.
    folder = case.cfg.evidence.dir / case.run_id
    plots = case.doc["plots"]
    assert {(p["model"], p["metric"]) for p in plots} >= {
        ("int_employees__enriched", "row_count")}
    assert all((folder / p["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    html = (folder / "report.html").read_text()
    assert all(f'<img src="{p["file"]}"' in html for p in plots)


@pytest.mark.parametrize("case", both("duplicate_batch"), indirect=True)
def test_duplicate_batch(case: Case) -> None:
    _classified(case, "duplicate_batch")
    resent = [b for b in case.doc["batches"] if b["resend"]]
    assert len(resent) == 1 and resent[0]["source_file"].endswith("_resend.csv")
    assert resent[0]["repeat_share"] == 1.0 and resent[0]["repeats"].endswith("-claims")
    # The facts' pre-merge dedupe held: incremental equals a full refresh.
    assert {d["verdict"] for d in case.doc["isolation"]["diffs"]} == {"equal"}
    # The claims contract's not_a_resend check holds it at the gate: a plain reject.
    assert case.status == "held"
    reject = case.doc["commands"]["reject"]
    assert reject and all(f"reject {resent[0]['batch_id']} " in c for c in reject)


def test_a_bounded_rebuild_keeps_the_facts_and_the_model_that_grew() -> None:
    """Past MAX_REBUILT the isolated rebuild drops the models furthest from the outputs
    (production feeds the rebuild in their place), never a fact, nor the model whose
    rows multiplied."""
    chain = [ModelInfo(unique_id=f"model.p.m{i}", name=f"m{i}", resource_type="model",
                       database=None, schema="main", identifier=f"m{i}",
                       layer="stg" if i < 3 else "fct" if i > 6 else "int",
                       materialization="incremental", is_incremental=True,
                       parents=(f"model.p.m{i - 1}",) if i else ())
             for i in range(MAX_REBUILT + 2)]
    project = Project(name="p", models={m.unique_id: m for m in chain}, sources={})
    names = {m.name for m in chain}

    def chosen(built: set[str], start: ModelInfo | None = None) -> list[str]:
        return [m.name for m in rebuild_selection(project, built, start)]

    last = chain[-1].name
    assert chosen(names) == [m.name for m in chain[2:]]
    assert chosen(names, chain[0]) == ["m0", *(m.name for m in chain[3:])]
    assert chosen(names, chain[5]) == [m.name for m in chain[5:]]
    assert chosen(names - {last}) == [m.name for m in chain[1:-1]]  # built models only


@pytest.mark.parametrize("case", both("late_updates"), indirect=True)
def test_incremental_predicate(case: Case) -> None:
    _classified(case, "incremental_predicate")
    diffs = {d["model"]: d for d in case.doc["isolation"]["diffs"]}
    claims = diffs["fct_claims"]
    assert claims["verdict"] == "incremental filter"
    assert claims["only_in_refresh"] > 0  # the late-arriving claims the filter dropped
    assert claims["changed"] > 0  # updates of recent claims left stale
    assert claims["prod_duplicate_keys"] == 0  # the unique key is not at fault
    assert diffs["fct_plans"]["verdict"] == "equal"
    assert any("at differing keys" in k for k in case.doc["samples"])
    assert any("--full-refresh" in c for c in case.doc["commands"]["fix"])


@pytest.mark.parametrize("case", both("schema_drift"), indirect=True)
def test_schema_drift(case: Case) -> None:
    _classified(case, "schema_drift")
    assert "claim_amount" in case.doc["summary"]
    assert case.status == "held" and case.auto


@pytest.mark.parametrize("case", both("null_storm"), indirect=True)
def test_null_storm(case: Case) -> None:
    _classified(case, "null_storm")
    first = case.doc["columns"][0]
    assert (first["relation"], first["column"], first["kind"]) == (
        "benefits.claims", "employee_id", "nulls")
    assert first["now"] > 0.4 and first["before"] < 0.05


@pytest.mark.parametrize("case", both("logic_regression"), indirect=True)
def test_logic_regression(case: Case) -> None:
    _classified(case, "logic_regression")
    scale = [c for c in case.doc["columns"] if c["kind"] == "scale"]
    assert scale[0]["relation"] == "benefits.claims" and scale[0]["column"] == "amount"
    assert 50 < scale[0]["now"] / scale[0]["before"] < 150  # cents instead of dollars
    assert case.auto  # the sum/median of fct_claims.amount drifted


@pytest.mark.parametrize("case", both("logic_regression"), indirect=True)
def test_report_files_plots_and_alert_link(case: Case) -> None:
    folder = case.cfg.evidence.dir / case.run_id
    md = (folder / "report.md").read_text()
    for heading in ("Timeline", "Counts per layer", "Expansion point", "Full refresh",
                    "Root cause", "Drift plots", "Commands"):
        assert f"## {heading}" in md
    assert "logic_regression" in md and "rollback --to" in md
    # The contract held the batch before anything was built: no metric drifted, so no
    # drift plot (test_key_explosion_found_where_rows_multiply has plots).
    assert case.doc["plots"] == []
    assert "<h2>Root cause</h2>" in (folder / "report.html").read_text()
    for name in ("counts.json", "samples.json", "longest_models.json", "diff.json"):
        assert json.loads((folder / name).read_text())
    assert case.doc["longest_models"][0]["duration_s"] >= case.doc["longest_models"][-1][
        "duration_s"]
    # The alerts of the run point at the folder holding the report.
    st = state.open_state(state_url(case.cfg))
    try:
        with st.connect() as conn:
            rows = conn.execute(sa.select(alerts_open.c.evidence).where(
                alerts_open.c.run_id == case.run_id)).all()
            evidence = [str(r[0]) for r in rows]
    finally:
        st.dispose()
    assert evidence and set(evidence) == {str(folder)}
    # ...and the report lists them (it is written after the alerts fired).
    fired = [a for a in case.doc["alerts"] if a["kind"] == "open"]
    # The contract held the batch (amount_median_plausible): its page. The facts did not
    # grow that day, which is no drift of their own (a day without growth is not scored).
    assert {a["rule"] for a in fired} == {"validation_failed"}
    assert any(i["phase"] == "alert" for i in case.doc["timeline"])
    # The CLI renders the stored analysis in another format.
    out = folder.parent / "cli-report.html"
    argv = ["--config", str(case.cfg.source), "triage", "--run", case.run_id,
            "--format", "html", "--out", str(out)]
    assert main(argv) == 0
    assert "logic_regression" in out.read_text()


def _drift_gauges(text: str) -> dict[tuple[str, str], float]:
    """``dqm_drift_zscore`` by (model, metric) of a /metrics text."""
    return {(x.labels["model"], x.labels["metric"]): x.value
            for f in text_string_to_metric_families(text) if f.name == "dqm_drift_zscore"
            for x in f.samples}


@pytest.mark.parametrize("case", both("fanout_lookup"), indirect=True)
def test_drift_alerts_fire_on_the_bad_day_not_on_clean_days(case: Case) -> None:
    """Drift through the monitor's alert path: scored against the clean days (min_history
    2), the doubled employee rows are a gauge past the threshold, an open alert of the
    run and a notification in the outbox, delivered to the log sink; the clean days'
    points are scored too, and none of them drifted, fired or queued anything.
    Runtime and cost (a shared CI machine's timing, not data) are left out of "clean"."""
    threshold = case.cfg.drift.threshold
    bad = _drift_gauges(case.gauges)
    assert bad[("int_employees__enriched", "row_count")] >= threshold, bad
    clean = _drift_gauges((case.cfg.source.parent / "clean-day.prom").read_text())
    data = {k: z for k, z in clean.items() if k[1] not in ("runtime_seconds", "cost")}
    assert len(data) > 20 and max(abs(z) for z in data.values()) < threshold, data
    key = "metric_drift:int_employees__enriched:row_count"
    st = state.open_state(state_url(case.cfg))
    try:
        with st.connect() as conn:
            opened = conn.execute(sa.select(
                alerts_open.c.dedup_key, alerts_open.c.kind, alerts_open.c.run_id)).all()
            outbox = conn.execute(sa.select(
                state.alert_outbox.c.dedup_key, state.alert_outbox.c.sink,
                state.alert_outbox.c.event, state.alert_outbox.c.status)).all()
            runs = conn.execute(sa.select(state.runs.c.run_id).order_by(
                state.runs.c.started_at)).scalars().all()
            points = conn.execute(sa.select(
                state.metric_points.c.run_id, state.metric_points.c.metric,
                state.metric_points.c.z, state.metric_points.c.anomalous)).all()
    finally:
        st.dispose()
    assert runs[-1] == case.run_id and len(runs) == 4
    drift = {k: r for k, kind, r in opened if kind == "drift"}
    assert drift.get(key) == case.run_id, drift
    assert {r for _, _, r in opened} == {case.run_id}  # nothing open from a clean day
    assert (key, "log", "firing", "sent") in outbox, outbox
    assert {k for k, *_ in outbox} <= {k for k, *_ in opened}  # nothing fired earlier
    assert {e for _, _, e, _ in outbox} == {"firing"}  # nor resolved
    day3 = [p for p in points if p.run_id == runs[2]]
    assert [p for p in day3 if p.z is not None], "the last clean day is scored"
    assert not [p for p in points if p.run_id != case.run_id and p.anomalous
                and p.metric not in ("runtime_seconds", "cost")]


def _table_checksums(path: Path) -> dict[str, str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = con.execute("select table_schema, table_name from information_schema.tables "
                             "where table_type = 'BASE TABLE'").fetchall()
        return {f"{s}.{t}": str(con.execute(
            f'select count(*), md5(coalesce(string_agg(x::varchar, \'|\' order by x::varchar), '
            f'\'\')) from "{s}"."{t}" x').fetchone()) for s, t in tables}
    finally:
        con.close()


@pytest.mark.parametrize("case", ["logic_regression"], indirect=True)
def test_isolated_refresh_leaves_production_untouched(case: Case, tmp_path: Path) -> None:
    prod = case.cfg.warehouse.path
    before = _table_checksums(prod), hashlib.sha256(prod.read_bytes()).hexdigest()
    project = load_manifest(case.cfg.dbt.target_path)
    facts = [n for n in project.lineage() if n.is_incremental]
    # One test named (as if it failed in production), one on a model not rebuilt: only
    # the first runs, and no other test of the rebuilt models (unit tests included).
    fact_ids = {n.unique_id for n in facts}
    named = min((t for t in project.tests.values() if t.node in fact_ids),
                key=lambda t: t.unique_id)
    elsewhere = min((t for t in project.tests.values() if t.node not in fact_ids),
                    key=lambda t: t.unique_id)
    iso = isolated_refresh(case.cfg, tmp_path / "iso", facts, keep=True,
                           tests=[named.unique_id, elsewhere.unique_id])
    ran = json.loads((tmp_path / "iso" / "dbt-target" / "run_results.json").read_text())
    kinds = Counter(r["unique_id"].split(".")[0] for r in ran["results"])
    assert [r["unique_id"] for r in ran["results"] if r["unique_id"].split(".")[0] in (
        "test", "unit_test")] == [named.unique_id], kinds
    assert kinds["model"] == len(facts)
    assert iso.failed_tests == []
    assert iso.ran and {d.model for d in iso.diffs} == {n.name for n in facts}
    assert all(d.verdict == "equal" and d.prod_rows == d.refresh_rows > 0 for d in iso.diffs)
    after = _table_checksums(prod), hashlib.sha256(prod.read_bytes()).hexdigest()
    assert after == before and len(before[0]) > 5
    assert iso.prod_checksum_before == iso.prod_checksum_after == before[1]
    # The rebuild happened in the copy: its facts are fresh tables of the same rows.
    copy = Path(iso.warehouse_copy)
    assert copy.parent == tmp_path / "iso" and copy.exists()


def _triage_with_cap(c: Case, root: Path, cap: int) -> tuple[Config, dict[str, Any]]:
    """The case's workspace copied to ``root`` with ``[evidence] isolation_max_bytes =
    cap``, and its incident report written afresh (the triage runs again)."""
    shutil.copytree(c.cfg.source.parent, root)
    cfg = _config(root, edit={"full_snapshot_every = 7":
                              f"full_snapshot_every = 7\nisolation_max_bytes = {cap}"})
    assert cfg.evidence.isolation_max_bytes == cap
    shutil.rmtree(cfg.evidence.dir / c.run_id)
    doc = json.loads(write_report(cfg, c.run_id, "json", None).read_text())
    return cfg, doc


@pytest.mark.parametrize("case", ["duplicate_batch"], indirect=True)
def test_isolation_max_bytes_caps_the_isolated_rebuild(case: Case, tmp_path: Path) -> None:
    """``[evidence] isolation_max_bytes``: a warehouse file above the cap is not copied and
    the report says why; at the cap the rebuild runs (its copy deleted after the diff)."""
    assert case.doc["isolation"]["ran"] is True  # under the default 20 GiB
    size = case.cfg.warehouse.path.stat().st_size

    cfg, over = _triage_with_cap(case, tmp_path / "over", size - 1)
    assert cfg.warehouse.path.stat().st_size == size  # the triage did not grow the file
    reason = (f"warehouse file is {size} bytes, over evidence.isolation_max_bytes: "
              "run the reproduce commands by hand")
    iso = over["isolation"]
    assert (iso["ran"], iso["reason"]) == (False, reason)
    assert (iso["warehouse_copy"], iso["copy_bytes"], iso["diffs"],
            iso["prod_checksum_before"]) == ("", 0, [], "")
    folder = cfg.evidence.dir / case.run_id
    assert not (folder / "isolation").exists()  # no copy made
    assert list(folder.rglob("*.duckdb")) == []
    assert reason in (folder / "report.md").read_text()  # on-call reads why
    assert over["root_cause"] == "duplicate_batch"  # the rest of the triage stands

    cfg, at = _triage_with_cap(case, tmp_path / "at", size)
    iso = at["isolation"]
    assert (iso["ran"], iso["reason"], iso["copy_bytes"]) == (
        True, "copy deleted after the diff", size)
    assert iso["warehouse_copy"] == str(
        cfg.evidence.dir / case.run_id / "isolation" / cfg.warehouse.path.name)
    assert not Path(iso["warehouse_copy"]).parent.exists()
    assert [d["verdict"] for d in iso["diffs"]] == [
        d["verdict"] for d in case.doc["isolation"]["diffs"]]
    assert {d["verdict"] for d in iso["diffs"]} == {"equal"}
    assert at["root_cause"] == "duplicate_batch"


def test_unknown_run_is_a_triage_error(base: Path) -> None:
    assert main(["--config", str(base / "config.toml"), "triage", "--run", "no-such-run"]) == 1


@pytest.mark.postgres
@pytest.mark.parametrize(
    "case", [pytest.param(("late_updates", "postgres"), id="late_updates-postgres")],
    indirect=True)
def test_reproduce_commands_run_as_printed_on_postgres(case: Case, tmp_path: Path) -> None:
    """No ``[dbt] target`` (the runner picks the profile's ``postgres`` output): the
    commands name it, carry ``[dbt] vars`` and select what the triage rebuilt, and run
    from a shell without the monitor's MONITOR_* variables; the scratch schema's
    fct_claims has the late claims production's filter dropped."""
    assert not case.cfg.dbt.target
    reproduce = [c for c in case.doc["commands"]["reproduce"] if "monitor" not in c.split()[0]]
    assert len(reproduce) == 3, reproduce
    build = reproduce[1]
    assert "--target dqm_triage" in build and "--vars" in build and "incremental_filter" in build
    assert "int_claims__enriched" in build  # between the rebuilt staging and fact
    path = f"{Path(sys.executable).parent}:{PG_BIN}:{os.environ['PATH']}"
    if shutil.which("psql", path=path) is None:
        pytest.skip("no psql")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env["PATH"] = path
    url, schema = case.cfg.warehouse.url, scratch_schema(case.run_id)
    prod = scalar(url, "select count(*) from main.fct_claims")
    try:
        for cmd in reproduce[:2]:
            done = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True,
                                  cwd=tmp_path, timeout=900)
            assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
        rebuilt = scalar(url, f"select count(*) from {schema}.fct_claims")
        claims = {d["model"]: d for d in case.doc["isolation"]["diffs"]}["fct_claims"]
        assert rebuilt == claims["refresh_rows"] > prod == claims["prod_rows"]
    finally:
        subprocess.run(reproduce[2], shell=True, env=env, capture_output=True, timeout=60)
        shutil.rmtree(f"/tmp/triage-{case.run_id}-target", ignore_errors=True)
    assert scalar(url, "select count(*) from main.fct_claims") == prod
    assert scalar(url, "select count(*) from information_schema.schemata "
                  "where schema_name like 'dqm_triage%'") == 0


@pytest.mark.parametrize("case", [pytest.param("late_updates", id="late_updates")],
                         indirect=True)
def test_reproduce_commands_run_as_printed_on_duckdb(case: Case, tmp_path: Path) -> None:
    """The DuckDB commands copy the file and build the copy through the generated
    profile (its path the copy's), from a shell without the monitor's MONITOR_*
    variables: the copy's fct_claims has the late claims, production is unchanged."""
    reproduce = [c for c in case.doc["commands"]["reproduce"] if "monitor" not in c.split()[0]]
    assert len(reproduce) == 3, reproduce
    assert reproduce[0].startswith("cp ") and "--target dqm_triage" in reproduce[1]
    assert "MONITOR_WAREHOUSE_PATH" not in " ".join(reproduce)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    prod_file = case.cfg.warehouse.path
    copy = Path(f"/tmp/triage-{case.run_id}.duckdb")

    def count(path: Path) -> int:
        with duckdb.connect(str(path), read_only=True) as con:
            return int(con.execute("select count(*) from main.fct_claims").fetchone()[0])

    prod = count(prod_file)
    try:
        for cmd in reproduce[:2]:
            done = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True,
                                  cwd=tmp_path, timeout=900)
            assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
        claims = {d["model"]: d for d in case.doc["isolation"]["diffs"]}["fct_claims"]
        assert count(copy) == claims["refresh_rows"] > prod == claims["prod_rows"]
    finally:
        subprocess.run(reproduce[2], shell=True, env=env, capture_output=True, timeout=60)
        shutil.rmtree(f"/tmp/triage-{case.run_id}-target", ignore_errors=True)
    assert not copy.exists()
    assert count(prod_file) == prod
