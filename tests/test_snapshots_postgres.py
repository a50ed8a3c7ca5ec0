"""Last-known-good snapshots, rollback and retract on PostgreSQL (issue 19, item 1).

A real server (tests/pg_server.py), one database for the module. The three generated
days of tests/test_dbt_postgres.py (claims updated across days, a held claims batch on
day 2, a plan's and an employee's restatement on day 3) are streamed into the raw
tables as ingest writes them; after each day ``dbt build --target postgres`` runs and
the monitor keeps a snapshot (``monitor.recovery.snapshots.keep_snapshot``, as the
cycle does after a clean run): a FULL one, then DELTAs, each a schema
``dqm_snapshot_<run>`` listed in the catalog ``dqm_snapshots.snapshots``. Every built
table is also copied by the test into ``ref_<n>`` (the state each run left), and the
checks compare whole rows, EXCEPT ALL both ways:

- a rollback to each run restores exactly its tables (FULL base + deltas, one
  transaction), and the next build after a rollback re-merges what came after it;
- a table changed behind the monitor's back (a deleted row, a lowered sequence number)
  makes the rollback refuse, and the refusal changes nothing;
- a snapshot or a rollback killed with SIGKILL mid-way leaves nothing half-done;
- pruning keeps ``keep_snapshots`` and the chains they need, dropping the others'
  schemas and catalog rows;
- ``monitor reject BATCH --retract`` then ``monitor rollback`` and a build remove
  exactly that batch's rows: the facts equal a ``--full-refresh`` without it;
- a table whose columns changed since the snapshot is replaced by the copy's, unless a
  view depends on it (then PostgreSQL refuses and nothing is restored); a chain whose
  base schema was dropped by hand refuses; a copy no catalog row names is dropped by
  the next snapshot.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from monitor.cli import main
from monitor.core.config import Config, load_config, state_url
from monitor.core.manifest import load_manifest
from monitor.recovery.rollback import rollback
from monitor.recovery.snapshots import (
    DELTA,
    FULL,
    SnapshotError,
    SnapshotInfo,
    built_tables,
    keep_snapshot,
    list_snapshots,
    note_build,
    snapshot_store,
)
from monitor.stages.loaders.base import RawStore
from monitor.store import state
from monitor.warehouse.connection import backend_for
from monitor.warehouse.postgres_snapshots import CATALOG, PREFIX

from .conftest import REPO, write_config
from .pg_server import PgServer
from .test_dbt_postgres import Batch, copy_into_postgres, days_of_batches

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PROJECT = REPO / "pipeline"
FACTS = ("fct_claims", "fct_employees", "fct_plans")
VERSIONS = {"int_companies__versions", "int_employees__versions", "int_plans__versions"}
RUNS = ("20260302T060000Z-0001", "20260303T060000Z-0002", "20260304T060000Z-0003")


@dataclass
class Warehouse:
    cfg: Config
    server: PgServer
    dbname: str
    engine: sa.Engine
    batches: list[list[Batch]]
    snaps: dict[str, SnapshotInfo] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # run id -> schema of its copy
    seconds: dict[str, float] = field(default_factory=dict)

    def dbt(self, step: str, *args: str) -> None:
        """``dbt <args> --target postgres`` in process, on the monitor's manifest path."""
        from dbt.cli.main import dbtRunner

        started = time.perf_counter()
        res = dbtRunner().invoke([
            *args, "--target", "postgres", "--project-dir", str(PROJECT),
            "--profiles-dir", str(PROJECT), "--target-path", str(self.cfg.dbt.target_path),
            "--log-path", str(self.cfg.dbt.log_path), "--quiet",
            "--vars", json.dumps({"lookback_batches": 0}),
        ])
        self.seconds[step] = time.perf_counter() - started
        assert res.success, f"dbt {step}: {res.exception}"

    def tables(self) -> list[tuple[str, str, str]]:
        return built_tables(load_manifest(self.cfg.dbt.target_path))

    def save_reference(self, name: str) -> None:
        """A plain copy of every built table in schema ``ref_<name>``."""
        schema = f"ref_{name.replace('-', '_').lower()}"
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"drop schema if exists {schema} cascade"))
            conn.execute(sa.text(f"create schema {schema}"))
            for sch, ident, _ in self.tables():
                conn.execute(sa.text(
                    f"create table {schema}.{ident} as select * from {sch}.{ident}"))
        self.refs[name] = schema

    def differences(self, name: str) -> dict[str, tuple[int, int, int]]:
        """Per built table differing from reference ``name``: (live rows, rows only live,
        rows only in the reference), whole rows, EXCEPT ALL both ways."""
        ref, out = self.refs[name], {}
        with self.engine.connect() as conn:
            for sch, ident, model in self.tables():
                live = f"{sch}.{ident}"
                counts = tuple(conn.execute(sa.text(sql)).scalar_one() for sql in (
                    f"select count(*) from {live}",
                    f"select count(*) from (select * from {live} except all "
                    f"select * from {ref}.{ident}) d",
                    f"select count(*) from (select * from {ref}.{ident} except all "
                    f"select * from {live}) d"))
                if counts[1] or counts[2]:
                    out[model] = (int(counts[0]), int(counts[1]), int(counts[2]))
        return out

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def snapshot_schemas(self) -> set[str]:
        with self.engine.connect() as conn:
            return {str(n) for n in conn.execute(sa.text(
                "select nspname from pg_namespace where nspname like :p"),
                {"p": PREFIX.replace("_", r"\_") + "%"}).scalars()}

    def catalog(self) -> set[str]:
        with self.engine.connect() as conn:
            return {str(r) for r in conn.execute(sa.text(
                f"select run_id from {CATALOG}.snapshots")).scalars()}

    def wait_for_killed_sessions(self) -> None:
        """Until the server has ended the sessions of a killed process (its advisory
        lock and its transaction go with them)."""
        for _ in range(200):
            if not self.scalar("select count(*) from pg_stat_activity where datname = "
                               "current_database() and application_name = 'dq-monitor'"):
                return
            time.sleep(0.05)
        raise AssertionError("the killed process's sessions are still open")

    def run_day(self, n: int, run_id: str) -> SnapshotInfo | None:
        """Day ``n``'s batches in, a build, a snapshot: a clean cycle's warehouse steps."""
        copy_into_postgres(self.server.dsn(self.dbname), self.cfg.ingest.schema,
                           self.batches[n])
        note_build(self.cfg, run_id)
        self.dbt(f"day{n + 1}", "build")
        info = keep_snapshot(self.cfg, run_id)
        if info is not None:
            self.snaps[run_id] = info
        self.save_reference(run_id)
        return info


@pytest.fixture(scope="module")
def wh(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    import psycopg2

    tmp = tmp_path_factory.mktemp("snapshots_pg")
    dbname = f"s_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_server.dsn("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"create database {dbname}")
    url = f"postgresql+psycopg2://{pg_server.user}@{pg_server.host}:{pg_server.port}/{dbname}"
    cfg = load_config(write_config(tmp, path=f'"data/warehouse.duckdb"\nurl = "{url}"',
                                   keep_snapshots="3", full_snapshot_every="4",
                                   target='"postgres"'))
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    RawStore(engine, cfg.ingest).create()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in backend_for(cfg.warehouse).dbt_environment(cfg.warehouse).items():
                mp.setenv(name, value)
            mp.setenv("MONITOR_PG_SCHEMA", "main")
            mp.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
            mp.delenv("PGPASSWORD", raising=False)
            w = Warehouse(cfg, pg_server, dbname, engine, days_of_batches(tmp, cfg.ingest))
            for n, run_id in enumerate(RUNS):
                w.run_day(n, run_id)
            yield w
    finally:
        engine.dispose()
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {dbname} with (force)")
        admin.close()


def test_each_clean_run_keeps_a_snapshot_schema_full_then_deltas(wh: Warehouse) -> None:
    print("dbt seconds:", {k: round(v, 1) for k, v in wh.seconds.items()})
    r1, r2, r3 = RUNS
    kept = list_snapshots(wh.cfg)
    assert [s.run_id for s in kept] == [r3, r2, r1]
    assert [(s.kind, s.parent, s.depth) for s in kept] == [
        (DELTA, r2, 2), (DELTA, r1, 1), (FULL, None, 0)]
    assert "no earlier snapshot" in kept[2].why_full
    assert wh.snapshot_schemas() == {PREFIX + r for r in RUNS}
    assert wh.catalog() == set(RUNS)
    for snap in kept:
        assert snap.path == PREFIX + snap.run_id
        models = [t.model for t in snap.tables]  # lineage order
        assert {m for m in models if not m.startswith("fct_")} == VERSIONS
        assert sorted(m for m in models if m.startswith("fct_")) == sorted(FACTS)
        claims = next(t for t in snap.tables if t.model == "fct_claims")
        assert claims.rows == wh.scalar(f"select count(*) from {wh.refs[snap.run_id]}.fct_claims")
        assert claims.key == ("claim_id",) and set(claims.seq_sum) >= {"_publish_seq"}
        # every table is a table of the snapshot's schema, named <schema>.<identifier>
        for t in snap.tables:
            stored = wh.scalar(f'select count(*) from "{snap.path}"."{t.schema}.{t.identifier}"')
            assert stored == t.stored_rows, (snap.run_id, t.model)
        assert 0 < snap.bytes < snap.warehouse_bytes and snap.seconds > 0
    # the deltas hold the day's changes, not the whole facts
    for snap in kept[:2]:
        claims = next(t for t in snap.tables if t.model == "fct_claims")
        assert claims.mode == DELTA and 0 < claims.stored_rows < claims.rows, claims
        assert claims.since is not None
    # HEAD, in the catalog, names the newest snapshot: the next one can be a delta on it
    store = snapshot_store(wh.cfg)
    assert store is not None and store.read_head() == {"run_id": r3, "builds": []}


@dataclass
class Rollbacks:
    outcomes: list[tuple[str, str, dict[str, tuple[int, int, int]]]]


@pytest.fixture(scope="module")
def rollbacks(wh: Warehouse) -> Rollbacks:
    """A rollback to each run, from tables another run left, then back to day 3."""
    outcomes = []
    for run_id in (RUNS[1], RUNS[0], RUNS[2], RUNS[1], RUNS[2]):
        message = rollback(wh.cfg, run_id, "pg test", "tester")
        outcomes.append((run_id, message, wh.differences(run_id)))
    return Rollbacks(outcomes)


def test_rollback_restores_exactly_each_runs_tables(wh: Warehouse, rollbacks: Rollbacks
                                                    ) -> None:
    r1, r2, r3 = RUNS
    assert wh.differences(r3) == {}  # back where day 3 left it
    assert wh.differences(r1), "day 1's tables should differ from day 3's"
    for run_id, message, diffs in rollbacks.outcomes:
        assert diffs == {}, (run_id, message, diffs)
        depth = RUNS.index(run_id)
        assert message.startswith(f"rolled back 6 fact table(s) to run {run_id}"), message
        if depth:
            assert f"(FULL snapshot of {r1} + {depth} delta(s))" in message, message
    # the events are recorded in the state store
    st = state.open_state(state_url(wh.cfg))
    try:
        with st.connect() as conn:
            kinds = conn.execute(sa.text("select kind, subject from events order by id")).all()
    finally:
        st.dispose()
    assert [tuple(k) for k in kinds][-5:] == [("rollback", r) for r in (r2, r1, r3, r2, r3)]


@dataclass
class Rerun:
    diffs: dict[str, tuple[int, int, int]]
    snap: SnapshotInfo | None


@pytest.fixture(scope="module")
def rerun(wh: Warehouse, rollbacks: Rollbacks) -> Rerun:
    """Back to day 1, then a build re-merges days 2 and 3 (nothing new delivered): the
    tables equal what day 3 left, and the snapshot after it is a delta on day 1's."""
    rollback(wh.cfg, RUNS[0], "before day 2", "tester")
    run_id = "20260305T060000Z-0004"
    note_build(wh.cfg, run_id)
    wh.dbt("rerun", "build")
    diffs = wh.differences(RUNS[2])
    snap = keep_snapshot(wh.cfg, run_id)
    if snap is not None:
        wh.snaps[run_id] = snap
    wh.save_reference(run_id)
    return Rerun(diffs, snap)


def test_the_build_after_a_rollback_re_merges_and_builds_a_delta(rerun: Rerun) -> None:
    assert rerun.diffs == {}
    assert rerun.snap is not None
    assert (rerun.snap.kind, rerun.snap.parent, rerun.snap.depth) == (DELTA, RUNS[0], 1)


@dataclass
class Pruned:
    kept: list[str]
    schemas: set[str]
    catalog: set[str]


@pytest.fixture(scope="module")
def pruned(wh: Warehouse, rerun: Rerun) -> Pruned:
    """Two more snapshots with nothing built: keep 3 newest + what they build on."""
    for run_id in ("manual-a", "manual-b"):
        info = keep_snapshot(wh.cfg, run_id)
        assert info is not None
        wh.snaps[run_id] = info
        wh.save_reference(run_id)
    return Pruned([s.run_id for s in list_snapshots(wh.cfg)], wh.snapshot_schemas(),
                  wh.catalog())


def test_pruning_keeps_n_and_their_chains_and_drops_the_rest(wh: Warehouse, pruned: Pruned
                                                              ) -> None:
    r1, r2, r3 = RUNS
    r4 = "20260305T060000Z-0004"
    # manual-b -> manual-a -> r4 -> r1 (depth 3: full_snapshot_every = 4 makes the next
    # FULL); the newest 3 are manual-b, manual-a, r4, and they need r1. r2 and r3 go.
    assert [(wh.snaps[r].kind, wh.snaps[r].parent) for r in ("manual-a", "manual-b")] == [
        (DELTA, r4), (DELTA, "manual-a")]
    assert pruned.kept == ["manual-b", "manual-a", r4, r1]
    assert pruned.schemas == {PREFIX + r for r in pruned.kept}
    assert pruned.catalog == set(pruned.kept)
    assert r2 not in pruned.catalog and r3 not in pruned.catalog


@dataclass
class Retracted:
    batch: Batch
    codes: list[int]
    outputs: list[str]
    staged: tuple[int, int]  # the batch's rows in staging before, after the build
    staged_total: tuple[int, int]
    facts_of_batch: int
    vs_full_refresh: dict[str, tuple[int, int, int]]


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def retracted(wh: Warehouse, pruned: Pruned) -> Retracted:
    """On-call's recovery through the CLI: day 3's claims batch retracted, the facts
    rolled back to day 1 (before it), then a build; then a --full-refresh of the same
    raw data to compare with."""
    batch = next(b for b in wh.batches[2] if b.feed == "claims")
    conf = ("--config", str(wh.cfg.source))
    staged_sql = "select count(*) from main.stg_benefits__claims where _batch_id = :b"
    before = int(wh.scalar(staged_sql, b=batch.batch_id))
    total_before = int(wh.scalar("select count(*) from main.stg_benefits__claims"))
    results = [_cli(*conf, "reject", batch.batch_id, "--retract", "--reason", "bad day"),
               _cli(*conf, "rollback", "--to", RUNS[0], "--reason", "before day 3")]
    note_build(wh.cfg, "20260306T060000Z-0005")
    wh.dbt("after-retract", "build")
    after = int(wh.scalar(staged_sql, b=batch.batch_id))
    total_after = int(wh.scalar("select count(*) from main.stg_benefits__claims"))
    facts_of_batch = int(wh.scalar("select count(*) from main.fct_claims where _batch_id = :b",
                                   b=batch.batch_id))
    wh.save_reference("after-retract")
    note_build(wh.cfg, "20260306T070000Z-0006", full_refresh=True)
    wh.dbt("full-refresh", "build", "--full-refresh")
    return Retracted(batch, [c for c, _ in results], [o for _, o in results],
                     (before, after), (total_before, total_after), facts_of_batch,
                     wh.differences("after-retract"))


def test_retract_then_rollback_removes_exactly_the_batchs_rows(retracted: Retracted,
                                                                wh: Warehouse) -> None:
    r = retracted
    assert r.codes == [0, 0], r.outputs
    assert r.outputs[0].startswith(f"retracted {r.batch.batch_id} (was published)"), r.outputs
    assert r.outputs[1].startswith(f"rolled back 6 fact table(s) to run {RUNS[0]}"), r.outputs
    assert wh.scalar(f"select status from {wh.cfg.ingest.schema}.ingest_batches "
                     "where batch_id = :b", b=r.batch.batch_id) == "rejected"
    # staging lost exactly the batch's rows, and the facts hold none of them
    assert r.staged[0] > 0 and r.staged[1] == 0, r.staged
    assert r.staged_total[1] == r.staged_total[0] - r.staged[0], r.staged_total
    assert r.facts_of_batch == 0
    # the incremental facts equal a full refresh of what is still published
    assert r.vs_full_refresh == {}


def test_cli_lists_the_snapshots_kept_in_postgres(
    wh: Warehouse, retracted: Retracted, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(wh.cfg.source), "snapshots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "kind", "on"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [s.run_id, s.kind, s.parent or "-"] for s in list_snapshots(wh.cfg)]
    assert main(["--config", str(wh.cfg.source), "snapshots", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["path"] for d in doc] == [PREFIX + s.run_id for s in list_snapshots(wh.cfg)]


@dataclass
class Refusals:
    count_error: str
    sums_error: str
    diffs_after: list[dict[str, tuple[int, int, int]]]
    edited: str  # claim edited by hand


@pytest.fixture(scope="module")
def refusals(wh: Warehouse, retracted: Retracted) -> Refusals:
    """Hand edits no publish sequence records, each followed by a snapshot (a delta that
    misses the edit): a rollback to it would not rebuild the state it recorded."""
    diffs_after = []
    # 1. a deleted row: the delta records one row fewer than its chain rebuilds
    wh.execute("delete from main.fct_claims where claim_id = "
               "(select min(claim_id) from main.fct_claims)")
    info = keep_snapshot(wh.cfg, "manual-c")
    assert info is not None and info.kind == FULL, info  # a full refresh ran since HEAD
    wh.save_reference("manual-c")
    wh.execute("delete from main.fct_claims where claim_id = "
               "(select min(claim_id) from main.fct_claims)")
    d = keep_snapshot(wh.cfg, "manual-d")
    assert d is not None and (d.kind, d.parent) == (DELTA, "manual-c")
    wh.save_reference("manual-d")
    with pytest.raises(SnapshotError) as refused:
        rollback(wh.cfg, "manual-d", "the delta missed the edit", "tester")
    count_error = str(refused.value)
    diffs_after.append(wh.differences("manual-d"))  # nothing restored

    # 2. a lowered sequence number: the same rows, only the sums differ
    assert rollback(wh.cfg, "manual-c", "before the edits", "tester")
    assert wh.differences("manual-c") == {}
    edited = str(wh.scalar(
        "select claim_id from main.fct_claims where greatest(_publish_seq, "
        "coalesce(_enriched_publish_seq, 0)) < (select max(_publish_seq) from "
        "main.fct_claims) order by claim_id limit 1"))
    wh.execute("update main.fct_claims set _publish_seq = _publish_seq - 1 "
               "where claim_id = :c", c=edited)
    e = keep_snapshot(wh.cfg, "manual-e")
    assert e is not None and (e.kind, e.parent) == (DELTA, "manual-c")
    wh.save_reference("manual-e")
    with pytest.raises(SnapshotError) as refused:
        rollback(wh.cfg, "manual-e", "the delta missed the edit", "tester")
    diffs_after.append(wh.differences("manual-e"))
    return Refusals(count_error, str(refused.value), diffs_after, edited)


def test_a_table_changed_behind_the_monitor_refuses_and_changes_nothing(
    wh: Warehouse, refusals: Refusals
) -> None:
    assert refusals.count_error.startswith("fct_claims: restored "), refusals.count_error
    assert "nothing was rolled back" in refusals.count_error
    assert "differ from the snapshot's" in refusals.sums_error, refusals.sums_error
    assert "(changed outside the monitor?); nothing was rolled back" in refusals.sums_error
    assert refusals.diffs_after == [{}, {}]


def _kill_script(body: str) -> str:
    """A python script that runs ``body`` with ``die()`` = SIGKILL on itself."""
    return (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from monitor.core.config import load_config\n"
        "def die():\n"
        "    sys.stdout.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "cfg = load_config(Path(sys.argv[1]))\n" + body)


def _run_killed(wh: Warehouse, body: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _kill_script(body), str(wh.cfg.source)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    return proc


@dataclass
class Killed:
    snapshot: subprocess.CompletedProcess[str]
    after_snapshot: tuple[list[str], set[str], set[str], dict[str, Any] | None]
    rollback: subprocess.CompletedProcess[str]
    after_rollback: dict[str, tuple[int, int, int]]
    head_after_rollback: dict[str, Any] | None
    redone: str
    redone_diffs: dict[str, tuple[int, int, int]]


@pytest.fixture(scope="module")
def killed(wh: Warehouse, refusals: Refusals) -> Killed:
    """SIGKILL after the third table of a snapshot is copied, and after the third
    table of a rollback is rebuilt (both inside their transaction)."""
    store = snapshot_store(wh.cfg)
    assert store is not None
    rollback(wh.cfg, "manual-c", "a known state", "tester")
    wh.execute("update main.fct_claims set amount = amount + 1 where claim_id = "
               "(select max(claim_id) from main.fct_claims)")  # unlike manual-c's facts
    wh.save_reference("before-kill")
    kept = [s.run_id for s in list_snapshots(wh.cfg)]
    head = store.read_head()
    snap = _run_killed(wh, (
        "from monitor.warehouse import postgres_snapshots as ps\n"
        "from monitor.recovery.snapshots import keep_snapshot\n"
        "copy, n = ps._Writer.copy, []\n"
        "def killing(self, *a):\n"
        "    out = copy(self, *a); n.append(1)\n"
        "    if len(n) == 3: print('copied 3', flush=True); die()\n"
        "    return out\n"
        "ps._Writer.copy = killing\n"
        "keep_snapshot(cfg, 'killed-snapshot')\n"))
    wh.wait_for_killed_sessions()
    after_snapshot = ([s.run_id for s in list_snapshots(wh.cfg)], wh.snapshot_schemas(),
                      wh.catalog(), store.read_head())
    assert kept and head is not None
    kill_rollback = _run_killed(wh, (
        "from monitor.warehouse import postgres_snapshots as ps\n"
        "from monitor.recovery.rollback import rollback\n"
        "count, n = ps._Restorer.count, []\n"
        "def killing(self, *a):\n"
        "    out = count(self, *a); n.append(1)\n"
        "    if len(n) == 3: print('rebuilt 3', flush=True); die()\n"
        "    return out\n"
        "ps._Restorer.count = killing\n"
        "rollback(cfg, 'manual-c', 'killed', 'tester')\n"))
    wh.wait_for_killed_sessions()
    after_rollback = wh.differences("before-kill")
    head_after = store.read_head()
    redone = rollback(wh.cfg, "manual-c", "again", "tester")
    return Killed(snap, after_snapshot, kill_rollback, after_rollback, head_after, redone,
                  wh.differences("manual-c"))


def test_sigkill_mid_snapshot_or_mid_rollback_leaves_nothing_half_done(
    wh: Warehouse, killed: Killed
) -> None:
    k = killed
    assert k.snapshot.returncode == -signal.SIGKILL, k.snapshot.stderr[-2000:]
    assert k.snapshot.stdout.strip() == "copied 3"
    listed, schemas, catalog, head = k.after_snapshot
    # the killed snapshot's transaction died with its connection: no schema, no row
    assert "killed-snapshot" not in listed and PREFIX + "killed-snapshot" not in schemas
    assert "killed-snapshot" not in catalog and schemas == {PREFIX + r for r in listed}
    assert head == {"run_id": "manual-c", "builds": []}
    assert k.rollback.returncode == -signal.SIGKILL, k.rollback.stderr[-2000:]
    assert k.rollback.stdout.strip() == "rebuilt 3"
    assert k.after_rollback == {}  # nothing committed: the tables as before the kill
    assert k.head_after_rollback is None  # HEAD forgotten first: the next one is FULL
    assert k.redone.startswith("rolled back 6 fact table(s) to run manual-c")
    assert k.redone_diffs == {}


@dataclass
class Shapes:
    fct_plans_columns: list[str]  # after a rollback over a column added by hand
    diffs: dict[str, tuple[int, int, int]]
    refused: str  # a versions table with a view on it, its columns changed
    versions_columns: list[str]  # after the refusal: the added column is still there
    missing_base: str  # the chain's base schema dropped by hand
    next_snapshot: SnapshotInfo | None
    listed: list[str]
    schemas: set[str]  # after manual-f


@pytest.fixture(scope="module")
def shapes(wh: Warehouse, killed: Killed) -> Shapes:
    """Tables whose columns changed since the snapshot; then a chain's base dropped."""
    columns = ("select column_name from information_schema.columns where table_schema = "
               "'main' and table_name = :t order by ordinal_position")

    def names(table: str) -> list[str]:
        with wh.engine.connect() as conn:
            return [str(c) for c in conn.execute(sa.text(columns), {"t": table}).scalars()]

    # fct_plans: no view reads it, so the copy's table replaces it
    wh.execute("alter table main.fct_plans add column added_by_hand integer")
    rollback(wh.cfg, "manual-c", "a column added by hand", "tester")
    plans, diffs = names("fct_plans"), wh.differences("manual-c")
    # int_plans__versions: views (int_plans__enriched, ...) read it: PostgreSQL refuses
    # to drop it, and the whole restore is rolled back
    wh.execute("alter table main.int_plans__versions add column added_by_hand integer")
    with pytest.raises(SnapshotError) as refused:
        rollback(wh.cfg, "manual-c", "a column added by hand", "tester")
    versions = names("int_plans__versions")
    wh.execute("alter table main.int_plans__versions drop column added_by_hand")
    # the base of manual-d and manual-e dropped by hand
    wh.execute(f'drop schema "{PREFIX}manual-c" cascade')
    with pytest.raises(SnapshotError) as missing:
        rollback(wh.cfg, "manual-e", "its base is gone", "tester")
    # a copy no catalog row names (the row deleted by hand) is a leftover the next
    # snapshot drops; a schema that only shares the prefix is not the monitor's
    wh.execute(f"delete from {CATALOG}.snapshots where run_id = 'manual-d'")
    wh.execute(f'create schema "{PREFIX}not ours!"')
    nxt = keep_snapshot(wh.cfg, "manual-f")
    return Shapes(plans, diffs, str(refused.value), versions, str(missing.value), nxt,
                  [s.run_id for s in list_snapshots(wh.cfg)], wh.snapshot_schemas())


def test_changed_columns_a_missing_base_and_a_leftover_copy(
    shapes: Shapes,
) -> None:
    s = shapes
    assert "added_by_hand" not in s.fct_plans_columns and s.diffs == {}
    assert s.refused.startswith("the restore failed (cannot drop table "), s.refused
    assert s.refused.endswith("nothing was rolled back"), s.refused
    assert "added_by_hand" in s.versions_columns
    assert "needs the snapshot of run manual-c" in s.missing_base, s.missing_base
    assert s.listed == ["manual-f", "manual-e"]  # manual-c: a document without its copy
    assert s.schemas == {f"{PREFIX}manual-f", f"{PREFIX}manual-e", f"{PREFIX}not ours!"}
    # the refused restore forgot HEAD first: the next snapshot is FULL
    assert s.next_snapshot is not None and s.next_snapshot.kind == FULL
    assert s.next_snapshot.why_full == "no earlier snapshot to build on"
