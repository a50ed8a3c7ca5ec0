"""Ingest: exactly-once by checksum, quarantine with reasons, counts that add up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.core.config import load_config
from monitor.stages import ingest as ingest_module
from monitor.stages.ingest import ingest
from monitor.stages.landing import StillWriting
from monitor.warehouse.connection import warehouse

REPO = Path(__file__).resolve().parents[1]

CLAIMS_HEADER = (
    "claim_id,plan_id,employee_id,service_date,received_date,amount,status,"
    "diagnosis_code,is_in_network,notes,updated_at"
)


def _claim(i: int, amount: str = "10.00") -> str:
    return f"C{i},P1,E1,2026-01-01,2026-01-02,{amount},paid,A00,Y,auth: A1,2026-01-02 10:00:00"


def _land(cfg_landing: Path, name: str, lines: list[str], feed: str = "claims") -> Path:
    d = cfg_landing / feed / "2026-01-02"
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as c:
        return {
            "raw": c.exec_driver_sql("select count(*) from raw.claims").scalar() or 0,
            "quarantine": c.exec_driver_sql("select count(*) from raw.ingest_quarantine").scalar()
            or 0,
            "batches": c.exec_driver_sql("select count(*) from raw.ingest_batches").scalar() or 0,
        }


def test_exactly_once_even_renamed(config_file: Path) -> None:
    cfg = load_config(config_file)
    lines = [CLAIMS_HEADER] + [_claim(i) for i in range(5)]
    _land(cfg.ingest.landing_dir, "claims_a.csv", lines)
    with warehouse(cfg.warehouse) as wh:
        first = ingest(wh, cfg.ingest)
        assert [f.outcome for f in first.files] == ["loaded"]
        assert first.files[0].rows_loaded == 5
        # Same bytes under a new name: a recorded no-op.
        _land(cfg.ingest.landing_dir, "claims_a_resent.csv", lines)
        second = ingest(wh, cfg.ingest)
        assert [f.outcome for f in second.files] == ["duplicate"]
        assert second.files[0].batch_id == first.files[0].batch_id
        # Nothing new: nothing happens, not even a ledger row.
        assert ingest(wh, cfg.ingest).files == []
        assert _counts(wh) == {"raw": 5, "quarantine": 0, "batches": 1}
        with wh.connect() as c:
            outcomes = c.exec_driver_sql(
                "select outcome, count(*) from raw.ingest_files group by 1 order by 1"
            ).all()
            assert outcomes == [("duplicate", 1), ("loaded", 1)]
            audit = c.exec_driver_sql(
                "select min(_line_number), max(_line_number), count(distinct _batch_id), "
                "bool_and(_source_file like '%claims_a.csv'), bool_and(_ingested_at is not null) "
                "from raw.claims"
            ).one()
            assert tuple(audit) == (2, 6, 1, True, True)


def test_malformed_rows_quarantined_with_line_and_reason(config_file: Path) -> None:
    cfg = load_config(config_file)
    lines = [
        CLAIMS_HEADER,
        _claim(1),
        "C2,P1,E1,2026-01-01",  # missing columns
        _claim(3),
        _claim(4) + ",extra",  # too many columns
        _claim(5),
    ]
    _land(cfg.ingest.landing_dir, "claims.csv", lines)
    with warehouse(cfg.warehouse) as wh:
        report = ingest(wh, cfg.ingest)
        (f,) = report.files
        assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined) == ("loaded", 5, 3, 2)
        with wh.connect() as c:
            q = c.exec_driver_sql(
                "select line_number, reason from raw.ingest_quarantine order by line_number"
            ).all()
            assert [r[0] for r in q] == [3, 5]
            assert "MISSING COLUMNS" in q[0][1] and "TOO MANY COLUMNS" in q[1][1]
            # Loaded rows keep their physical line numbers despite the gaps.
            got = c.exec_driver_sql(
                "select claim_id, _line_number from raw.claims order by _line_number"
            ).all()
            assert got == [("C1", 2), ("C3", 4), ("C5", 6)]
            b = c.exec_driver_sql(
                "select rows_read, rows_loaded, rows_quarantined, status from raw.ingest_batches"
            ).one()
            assert tuple(b) == (5, 3, 2, "pending")


def test_broken_files_quarantined_whole_and_others_proceed(config_file: Path) -> None:
    cfg = load_config(config_file)
    landing = cfg.ingest.landing_dir
    _land(landing, "claims.csv", [CLAIMS_HEADER, _claim(1), _claim(2)])
    binary = landing / "plans" / "2026-01-02" / "plans.csv"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"\x00\x01PK\x03\x04garbage\nmore\x00garbage\n")
    _land(landing, "employees.csv", ["employee_id;first_name", "E1;Ann", "E2;Bo"], "employees")
    renamed = CLAIMS_HEADER.replace(",amount,", ",claim_amount,")
    _land(landing, "claims_renamed.csv", [renamed, _claim(3)])
    with warehouse(cfg.warehouse) as wh:
        report = ingest(wh, cfg.ingest)
        by_name = {f.path.name: f for f in report.files}
        assert by_name["claims.csv"].outcome == "loaded"
        assert by_name["plans.csv"].outcome == "quarantined"
        assert "binary" in by_name["plans.csv"].reason
        assert by_name["employees.csv"].outcome == "quarantined"
        assert "wrong delimiter" in by_name["employees.csv"].reason
        assert by_name["claims_renamed.csv"].outcome == "quarantined"
        assert "missing columns: amount" in by_name["claims_renamed.csv"].reason
        assert "unexpected columns: claim_amount" in by_name["claims_renamed.csv"].reason
        for f in report.files:
            assert f.rows_read == f.rows_loaded + f.rows_quarantined
        with wh.connect() as c:
            per_batch = c.exec_driver_sql(
                "select b.batch_id, b.rows_quarantined, count(q.batch_id) "
                "from raw.ingest_batches b left join raw.ingest_quarantine q using (batch_id) "
                "group by all order by 1"
            ).all()
            for _, recorded, stored in per_batch:
                assert recorded == stored
            statuses = dict(
                c.exec_driver_sql("select source_file, status from raw.ingest_batches").all()
            )
            assert sorted(statuses.values()) == ["pending", "quarantined", "quarantined",
                                                 "quarantined"]


COMPANIES_HEADER = "company_ein,company_name,domain,industry,headcount,revenue,updated_at"


def _feed_contract(config_file: Path, base: str, **keys: str) -> Path:
    """``base`` (the written config) with ``key = value`` lines added to
    ``[ingest.feeds.companies]``."""
    anchor = 'key = ["company_ein"]\n'
    assert base.count(anchor) == 1, "config.toml's companies feed changed"
    config_file.write_text(base.replace(
        anchor, anchor + "".join(f"{k} = {v}\n" for k, v in keys.items())))
    return config_file


def test_feed_pattern_and_delimiter(config_file: Path) -> None:
    """``[ingest.feeds.<feed>] pattern`` and ``delimiter``: a ';' file whose name matches
    loads with exact rows (a ',' inside a field is data), through DuckDB's reader and
    through the row-by-row reader alike; a matching ',' file is quarantined as the wrong
    delimiter; a name outside the pattern is skipped with the README's reason, kept out
    of the ledger, and loads once the pattern admits it."""
    base = config_file.read_text()
    cfg = load_config(_feed_contract(config_file, base, pattern='"companies_*.csv"',
                                     delimiter='";"'))
    assert (cfg.ingest.feeds["companies"].pattern,
            cfg.ingest.feeds["companies"].delimiter) == ("companies_*.csv", ";")
    header = COMPANIES_HEADER.replace(",", ";")
    rows = ["12-0000001;Acme, Inc.;acme.com;Tech;10;100;2026-01-01",
            "12-0000002;Bolt;bolt.io;Retail;20;200;2026-01-01",
            "12-0000003;Cog & Co;cog.net;Manufacturing;30;300;2026-01-01"]
    landing = cfg.ingest.landing_dir
    _land(landing, "companies_1.csv", [header, *rows], feed="companies")
    # LF rows then CRLF rows: DuckDB's reader fails, Python's reads it with the ';'
    mixed = landing / "companies" / "2026-01-02" / "companies_2.csv"
    mixed.write_bytes(("\n".join([header, "12-0000004;Dent;dent.com;Tech;40;400;2026-01-01"])
                       + "\n" + "12-0000005;Echo;echo.com;Tech;50;500;2026-01-01\r\n"
                       ).encode())
    _land(landing, "companies_3.csv", [COMPANIES_HEADER, "12-0000006,Fig,fig.com,Tech,6,60,"
                                       "2026-01-01"], feed="companies")
    _land(landing, "vendor_dump.csv", [header, "12-0000009;Nope;no.com;Tech;9;90;2026-01-01"],
          feed="companies")
    with warehouse(cfg.warehouse) as wh:
        report = ingest(wh, cfg.ingest)
        got = {f.path.name: (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined)
               for f in report.files}
        assert got == {"companies_1.csv": ("loaded", 3, 3, 0),
                       "companies_2.csv": ("loaded", 2, 2, 0),
                       # kept whole: its 2 lines are in the quarantine
                       "companies_3.csv": ("quarantined", 2, 0, 2)}
        (mixed_outcome,) = [f for f in report.files if f.path.name == "companies_2.csv"]
        assert mixed_outcome.reason.startswith("DuckDB reader failed")
        (comma,) = [f for f in report.files if f.path.name == "companies_3.csv"]
        assert comma.reason == ("header has 1 field with delimiter ';': wrong delimiter or "
                                "not a CSV")
        assert [(s.path.name, s.reason, s.feed) for s in report.skipped] == [
            ("vendor_dump.csv", "name does not match the feed's pattern 'companies_*.csv'",
             "companies")]
        with wh.connect() as c:
            stored = c.exec_driver_sql(
                "select company_ein, company_name, revenue, _line_number from raw.companies "
                "order by company_ein").all()
            ledger = c.exec_driver_sql(
                "select source_file from raw.ingest_files order by source_file").all()
        assert [tuple(r) for r in stored] == [
            ("12-0000001", "Acme, Inc.", "100", 2), ("12-0000002", "Bolt", "200", 3),
            ("12-0000003", "Cog & Co", "300", 4), ("12-0000004", "Dent", "400", 2),
            ("12-0000005", "Echo", "500", 3)]
        assert sorted(Path(r[0]).name for r in ledger) == [
            "companies_1.csv", "companies_2.csv", "companies_3.csv"]
    # The skipped file was never recorded: a pattern that admits it loads it.
    cfg = load_config(_feed_contract(config_file, base, pattern='"*_dump.csv"',
                                     delimiter='";"'))
    with warehouse(cfg.warehouse) as wh:
        report = ingest(wh, cfg.ingest)
    assert [(f.path.name, f.outcome, f.rows_loaded) for f in report.files] == [
        ("vendor_dump.csv", "loaded", 1)]


def test_line_numbers_of_a_file_read_in_parallel(config_file: Path) -> None:
    """A file several of DuckDB's CSV buffers long (32 MB each) is read by both threads;
    every loaded row still carries its physical line, past rejects and a quoted record
    that spans two lines, because the rows are numbered by their stored order after the
    insert. Each claim's id is its line number, so one query checks all of them."""
    cfg = load_config(config_file)
    n = 900_000
    pad = "x" * 40
    bad = {n // 3, 2 * n // 3 + 1}  # rejects in the second and third buffers
    lines = [CLAIMS_HEADER]
    for line in range(2, n + 2):
        if line in bad:
            lines.append(f"C{line},P1,E1,2026-01-01")  # missing columns
        elif line == n // 2:  # a note with a line break: one record, two lines
            lines.append(f'C{line},P1,E1,2026-01-01,2026-01-02,1.00,paid,A00,Y,"{pad}\n'
                         f'{pad}",2026-01-02 10:00:00')
        elif line == n // 2 + 1:
            continue  # the spanning record's second line
        else:
            lines.append(f"C{line},P1,E1,2026-01-01,2026-01-02,1.00,paid,A00,Y,{pad},"
                         "2026-01-02 10:00:00")
    path = _land(cfg.ingest.landing_dir, "claims_big.csv", lines)
    assert path.stat().st_size > 2 * 32_000_000
    with warehouse(cfg.warehouse) as wh:
        (f,) = ingest(wh, cfg.ingest).files
        assert (f.outcome, f.rows_loaded, f.rows_quarantined) == ("loaded", n - 3, 2)
        with wh.connect() as c:
            wrong = c.exec_driver_sql(
                "select count(*), count(*) filter (where _line_number "
                "<> cast(substr(claim_id, 2) as bigint)) from raw.claims").one()
            quarantined = c.exec_driver_sql(
                "select line_number from raw.ingest_quarantine order by 1").scalars().all()
    assert tuple(wrong) == (n - 3, 0)
    assert quarantined == sorted(bad)


def test_rows_ranked_by_rowid_when_rowids_have_a_gap(tmp_path: Path) -> None:
    """Should one file's rowids not be consecutive, the rows are still numbered by their
    stored order (a window over rowid), not by rowid less the first one."""
    from monitor.stages.loaders.duckdb_read_csv import _number_rows

    engine = sa.create_engine(f"duckdb:///{tmp_path / 'w.duckdb'}")
    with engine.begin() as c:
        c.exec_driver_sql("create table t (v varchar, _batch_id varchar, "
                          "_source_file varchar, _line_number bigint)")
        c.exec_driver_sql("insert into t select 'v' || i, 'b', 'f', null "
                          "from range(5) r(i)")
        c.exec_driver_sql("insert into t values ('other', 'b2', 'f', 9)")
        c.exec_driver_sql("delete from t where v = 'v2'")
        c.exec_driver_sql("insert into t values ('v5', 'b', 'f', null)")  # after the gap
        _number_rows(c, "t", "b", "f", 5)
        got = c.exec_driver_sql("select v, _line_number from t order by rowid").all()
    engine.dispose()
    assert [tuple(r) for r in got] == [("v0", 2), ("v1", 3), ("v3", 4), ("v4", 5),
                                       ("other", 9), ("v5", 6)]


def _rows_by_batch(engine: sa.Engine) -> list[tuple[str, str, int]]:
    """(batch id, file name, rows) of raw.claims, and the ledger's batch ids."""
    with engine.connect() as c:
        return [(str(b), Path(str(f)).name, int(n)) for b, f, n in c.exec_driver_sql(
            "select _batch_id, _source_file, count(*) from raw.claims group by all "
            "order by all").all()]


def _ledger(engine: sa.Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as c:
        return [(str(b), Path(str(f)).name, int(n)) for b, f, n in c.exec_driver_sql(
            "select batch_id, source_file, rows_loaded from raw.ingest_batches "
            "order by load_seq").all()]


def test_a_load_that_fails_after_its_rows_commit_leaves_none(
        config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DuckDB loader commits a file's rows before its ledger row. A file that fails
    after that (here: still being written when the load ends) has its rows deleted
    before the next file takes the same load sequence, so that batch holds only its
    own file's rows; the failed file loads once on the next ingest."""
    cfg = load_config(config_file)
    landing = cfg.ingest.landing_dir
    _land(landing, "a.csv", [CLAIMS_HEADER] + [_claim(i) for i in range(3)])
    _land(landing, "b.csv", [CLAIMS_HEADER] + [_claim(i) for i in range(10, 15)])
    settled = ingest_module.check_settled

    def a_still_writing(path: Path, seen: os.stat_result) -> None:
        if path.name == "a.csv":
            raise StillWriting("still being written (test)")
        settled(path, seen)

    monkeypatch.setattr(ingest_module, "check_settled", a_still_writing)
    with warehouse(cfg.warehouse) as wh:
        report = ingest(wh, cfg.ingest)
        assert [(f.path.name, f.outcome, f.batch_id) for f in report.files] == [
            ("b.csv", "loaded", "00000001-claims")]
        assert [(s.path.name, s.reason) for s in report.skipped] == [
            ("a.csv", "still being written (test)")]
        assert _rows_by_batch(wh) == [("00000001-claims", "b.csv", 5)]
        monkeypatch.undo()
        (again,) = ingest(wh, cfg.ingest).files
        assert (again.path.name, again.batch_id, again.rows_loaded) == (
            "a.csv", "00000002-claims", 3)
        assert _rows_by_batch(wh) == [("00000001-claims", "b.csv", 5),
                                      ("00000002-claims", "a.csv", 3)]
        assert _ledger(wh) == [("00000001-claims", "b.csv", 5),
                               ("00000002-claims", "a.csv", 3)]


_KILLED_BEFORE_THE_LEDGER_ROW = """
import os, sys
from pathlib import Path
from monitor.core.config import load_config
from monitor.stages.ingest import ingest
from monitor.warehouse.connection import warehouse
from monitor.warehouse.duckdb import DuckDBBackend

DuckDBBackend.record_batch = lambda *a, **k: os._exit(9)  # dies like kill -9 here
cfg = load_config(Path(sys.argv[1]))
with warehouse(cfg.warehouse) as wh:
    ingest(wh, cfg.ingest)
"""


def test_a_load_killed_between_its_commits_is_swept_and_loaded_once(
        config_file: Path) -> None:
    """A process that dies after the loader's commit and before the ledger row's leaves
    rows of a batch id no ledger row names. The next ingest drops them before loading
    anything (with the file gone too), and the file delivered again loads once."""
    cfg = load_config(config_file)
    landing = cfg.ingest.landing_dir
    with warehouse(cfg.warehouse) as wh:
        _land(landing, "first.csv", [CLAIMS_HEADER, _claim(1)])
        assert [f.batch_id for f in ingest(wh, cfg.ingest).files] == ["00000001-claims"]
    path = _land(landing, "killed.csv", [CLAIMS_HEADER] + [_claim(i) for i in range(2, 6)])
    child = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_THE_LEDGER_ROW,
                            str(config_file)], cwd=REPO, capture_output=True, text=True,
                           timeout=120, check=False)
    assert child.returncode == 9, child.stderr
    with warehouse(cfg.warehouse) as wh:
        assert _rows_by_batch(wh) == [("00000001-claims", "first.csv", 1),
                                      ("00000002-claims", "killed.csv", 4)]
        assert _ledger(wh) == [("00000001-claims", "first.csv", 1)]
        parked = path.rename(path.with_name("killed.parked"))  # not delivered again
        assert ingest(wh, cfg.ingest).files == []
        assert _rows_by_batch(wh) == [("00000001-claims", "first.csv", 1)]
        parked.rename(path)  # delivered again: the same load sequence, its rows once
        (again,) = ingest(wh, cfg.ingest).files
        assert (again.outcome, again.batch_id, again.rows_loaded) == (
            "loaded", "00000002-claims", 4)
        assert _rows_by_batch(wh) == [("00000001-claims", "first.csv", 1),
                                      ("00000002-claims", "killed.csv", 4)]
        assert _ledger(wh) == _rows_by_batch(wh)
