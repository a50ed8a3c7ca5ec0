"""Ingest on PostgreSQL (issue 19): the DuckDB ingest cases run against a real server
(tests/pg_server.py), through the COPY loader, each test in a database of its own.

Same contract as on DuckDB: exactly once by checksum, every record loaded or kept in
quarantine with a reason (rows_read = rows_loaded + rows_quarantined, and the tables
hold what the ledger counts), each row with the physical line its record starts on.
"""

from __future__ import annotations

import csv
import gzip
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.core.config import Config, ConfigError, load_config
from monitor.stages import ingest as ingest_module
from monitor.stages.ingest import FileOutcome, IngestReport, ingest
from monitor.stages.loaders import postgres_copy
from monitor.warehouse.connection import backend_for, warehouse
from monitor.warehouse.lock import Busy, cycle_lock

from . import test_ingest_fuzz as fuzz
from .conftest import pg_config
from .test_ingest_inputs import ledger, lines, quarantine

pytestmark = pytest.mark.postgres

HEADER = "company_ein,company_name,domain,industry,headcount,revenue,updated_at"
CLAIMS_HEADER = (
    "claim_id,plan_id,employee_id,service_date,received_date,amount,status,"
    "diagnosis_code,is_in_network,notes,updated_at"
)


def row(i: int, name: str | None = None) -> str:
    return f"12-{i:07d},{name or f'Acme {i}'},acme.com,Tech,10,100,2026-01-01"


def claim(i: int) -> str:
    return f"C{i},P1,E1,2026-01-01,2026-01-02,10.00,paid,A00,Y,auth: A1,2026-01-02 10:00:00"


def csv_bytes(rows: list[str], eol: str = "\n", header: str = HEADER) -> bytes:
    return eol.join([header, *rows, ""]).encode()


def land(cfg: Config, name: str, data: bytes, sub: str = "companies/2026-01-02") -> Path:
    path = cfg.ingest.landing_dir / sub / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def cfg(tmp_path: Path, pg_database: str) -> Config:
    return load_config(pg_config(tmp_path, pg_database))


@pytest.fixture
def wh(cfg: Config) -> Iterator[sa.Engine]:
    with warehouse(cfg.warehouse) as engine:
        assert engine.dialect.name == "postgresql"
        yield engine


def one(report: IngestReport, name: str) -> FileOutcome:
    (f,) = [f for f in report.files if f.path.name == name]
    return f


def test_exactly_once_even_renamed(cfg: Config, wh: sa.Engine) -> None:
    data = csv_bytes([claim(i) for i in range(5)], header=CLAIMS_HEADER)
    land(cfg, "claims_a.csv", data, "claims/2026-01-02")
    first = ingest(wh, cfg.ingest)
    assert [(f.outcome, f.rows_loaded, f.reason) for f in first.files] == [("loaded", 5, "")]
    land(cfg, "claims_a_resent.csv", data, "claims/2026-01-02")
    second = ingest(wh, cfg.ingest)
    assert [f.outcome for f in second.files] == ["duplicate"]
    assert second.files[0].batch_id == first.files[0].batch_id == "00000001-claims"
    assert ingest(wh, cfg.ingest).files == []  # nothing new: not even a ledger row
    assert ledger(wh, "claims") == {"claims_a.csv": ("pending", 5, 5, 0, "")}
    with wh.connect() as c:
        outcomes = c.exec_driver_sql(
            "select outcome, count(*) from raw.ingest_files group by 1 order by 1").all()
        assert outcomes == [("duplicate", 1), ("loaded", 1)]
        got = c.exec_driver_sql(
            "select claim_id, amount, notes, _batch_id, _source_file, _line_number, "
            "_ingested_at from raw.claims order by _line_number").all()
        ingested_at = c.exec_driver_sql("select ingested_at from raw.ingest_batches").scalar()
    assert [tuple(r[:6]) for r in got] == [
        (f"C{i}", "10.00", "auth: A1", "00000001-claims",
         str(cfg.ingest.landing_dir / "claims/2026-01-02/claims_a.csv"), i + 2)
        for i in range(5)]
    assert {r[6] for r in got} == {ingested_at}  # the batch's time, to the microsecond


def test_malformed_rows_quarantined_with_line_and_reason(cfg: Config, wh: sa.Engine) -> None:
    rows = [claim(1), "C2,P1,E1,2026-01-01", claim(3), claim(4) + ",extra", claim(5)]
    land(cfg, "claims.csv", csv_bytes(rows, header=CLAIMS_HEADER), "claims/2026-01-02")
    (f,) = ingest(wh, cfg.ingest).files
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined) == ("loaded", 5, 3, 2)
    assert quarantine(wh) == [
        (3, "MISSING COLUMNS: expected 11 fields, found 4"),
        (5, "TOO MANY COLUMNS: expected 11 fields, found 12"),
    ]
    with wh.connect() as c:
        got = c.exec_driver_sql(
            "select claim_id, _line_number from raw.claims order by _line_number").all()
        raw_line = c.exec_driver_sql(
            "select raw_line from raw.ingest_quarantine where line_number = 3").scalar()
    assert got == [("C1", 2), ("C3", 4), ("C5", 6)]
    assert raw_line == "C2,P1,E1,2026-01-01"
    assert ledger(wh, "claims")["claims.csv"] == ("pending", 5, 3, 2, "")


def test_broken_files_quarantined_whole_and_others_proceed(cfg: Config, wh: sa.Engine) -> None:
    land(cfg, "claims.csv", csv_bytes([claim(1), claim(2)], header=CLAIMS_HEADER),
         "claims/2026-01-02")
    land(cfg, "plans.csv", b"\x01\x02PK\x03\x04garbage\nmore\x00garbage\n", "plans/2026-01-02")
    land(cfg, "employees.csv", b"employee_id;first_name\nE1;Ann\nE2;Bo\n", "employees/d")
    renamed = CLAIMS_HEADER.replace(",amount,", ",claim_amount,")
    land(cfg, "claims_renamed.csv", csv_bytes([claim(3)], header=renamed), "claims/2026-01-02")
    by_name = {f.path.name: f for f in ingest(wh, cfg.ingest).files}
    assert {n: (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined)
            for n, f in by_name.items()} == {
        "claims.csv": ("loaded", 2, 2, 0),
        "plans.csv": ("quarantined", 2, 0, 2),
        "employees.csv": ("quarantined", 3, 0, 3),
        "claims_renamed.csv": ("quarantined", 2, 0, 2),
    }
    assert by_name["plans.csv"].reason == "binary content (NUL bytes): not a CSV file"
    assert "wrong delimiter" in by_name["employees.csv"].reason
    assert by_name["claims_renamed.csv"].reason == (
        "schema drift: missing columns: amount; unexpected columns: claim_amount")
    with wh.connect() as c:
        per_batch = c.exec_driver_sql(
            "select b.status, b.rows_quarantined, count(q.batch_id) from raw.ingest_batches b "
            "left join raw.ingest_quarantine q using (batch_id) "
            "group by b.batch_id, b.status, b.rows_quarantined order by b.batch_id").all()
        kept = c.execute(sa.text(
            "select raw_line from raw.ingest_quarantine q join raw.ingest_batches b "
            "using (batch_id) where b.source_file = :f order by line_number"
        ), {"f": str(by_name["plans.csv"].path)}).scalars().all()
    assert sorted(tuple(r) for r in per_batch) == [
        ("pending", 0, 0), ("quarantined", 2, 2), ("quarantined", 2, 2), ("quarantined", 3, 3)]
    # The NUL byte is kept visible, not lost and not a failed insert.
    assert kept == ["\x01\x02PK\x03\x04garbage", "more\\x00garbage"]


def test_gzip_loads_and_a_truncated_gzip_is_quarantined(cfg: Config, wh: sa.Engine) -> None:
    packed = gzip.compress(csv_bytes([row(i) for i in range(1, 201)]))
    land(cfg, "a.csv.gz", packed)
    land(cfg, "b.csv.gz", packed[: len(packed) // 2])
    report = ingest(wh, cfg.ingest)
    a, b = one(report, "a.csv.gz"), one(report, "b.csv.gz")
    assert (a.outcome, a.rows_read, a.rows_loaded, a.reason) == ("loaded", 200, 200, "")
    assert lines(wh) == [(i + 1, f"12-{i:07d}") for i in range(1, 201)]
    assert b.outcome == "quarantined" and b.rows_read == b.rows_quarantined >= 1
    # Cut inside the header's first 64 KiB: the header check refuses the file.
    assert b.reason.startswith("unreadable compressed file: Compressed file ended")
    assert ledger(wh)["b.csv.gz"][0] == "quarantined"


@pytest.mark.parametrize("eol", ["\r\n", "\r", "mixed"])
def test_crlf_cr_and_mixed_line_endings(cfg: Config, wh: sa.Engine, eol: str) -> None:
    """DuckDB's reader needs one line ending per file; COPY's loader splits like
    landing.raw_lines, so every ending loads straight away."""
    if eol == "mixed":
        data = ("\n".join([HEADER, row(1), row(2)]) + "\n" + "\r\n".join([row(3), row(4)])
                + "\r\n").encode()
    else:
        data = csv_bytes([row(1), row(2), row(3), row(4)], eol=eol)
    land(cfg, "e.csv", data)
    f = one(ingest(wh, cfg.ingest), "e.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined, f.reason) == (
        "loaded", 4, 4, 0, "")
    assert lines(wh) == [(2, "12-0000001"), (3, "12-0000002"), (4, "12-0000003"),
                         (5, "12-0000004")]
    with wh.connect() as c:  # no terminator left in the last column
        assert c.exec_driver_sql("select distinct updated_at from raw.companies").all() == [
            ("2026-01-01",)]


def test_quoted_multiline_records_keep_their_physical_start_lines(cfg: Config,
                                                                  wh: sa.Engine) -> None:
    two_lines = '12-0000002,"Acme\nTwo",acme.com,Tech,10,100,2026-01-01'
    three_lines = '12-0000003,"A\n""B""\nC",acme.com,Tech,10,100,2026-01-01'
    dot_line = '12-0000005,"x\n\\.\ny",acme.com,Tech,10,100,2026-01-01'  # COPY's end marker
    land(cfg, "nl.csv", csv_bytes([row(1), two_lines, three_lines, row(4), "x,y", dot_line,
                                   row(6)]))
    f = one(ingest(wh, cfg.ingest), "nl.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined, f.reason) == (
        "loaded", 7, 6, 1, "")
    # header = 1; records start at 2, 3 (2 lines), 5 (3 lines), 8; the bad line is 9.
    assert lines(wh) == [(2, "12-0000001"), (3, "12-0000002"), (5, "12-0000003"),
                         (8, "12-0000004"), (10, "12-0000005"), (13, "12-0000006")]
    assert quarantine(wh) == [(9, "MISSING COLUMNS: expected 7 fields, found 2")]
    with wh.connect() as c:
        names = c.exec_driver_sql(
            "select company_name from raw.companies order by _line_number").scalars().all()
    assert names[1:5] == ["Acme\nTwo", 'A\n"B"\nC', "Acme 4", "x\n\\.\ny"]


def test_many_rows_in_several_copy_chunks_keep_exact_lines(
    cfg: Config, wh: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small chunks: rows cross COPY statements and quarantine flushes in between."""
    monkeypatch.setattr(postgres_copy, "COPY_ROWS", 250)
    rows, expected, bad, line = [], [], [], 2
    for i in range(1, 3001):
        if i % 500 == 0:
            rows.append(f'12-{i:07d},"Multi\nline\nname",acme.com,Tech,10,100,2026-01-01')
            expected.append((line, f"12-{i:07d}"))
            line += 3
        elif i % 777 == 0:
            rows.append("broken,row")
            bad.append(line)
            line += 1
        else:
            rows.append(row(i))
            expected.append((line, f"12-{i:07d}"))
            line += 1
    land(cfg, "many.csv", csv_bytes(rows))
    f = one(ingest(wh, cfg.ingest), "many.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined, f.reason) == (
        "loaded", 3000, 2997, 3, "")
    assert lines(wh) == expected
    assert [n for n, _ in quarantine(wh)] == bad
    assert ledger(wh)["many.csv"][:4] == ("pending", 3000, 2997, 3)


def test_bad_bytes_and_nul_cost_only_their_row(cfg: Config, wh: sa.Engine) -> None:
    """A NUL past the header check's first 64 KiB: PostgreSQL text cannot hold it, so
    its row is quarantined (the NUL shown as \\x00) instead of failing the COPY."""
    first = [row(i) for i in range(1, 1301)]  # ~67 KiB
    data = csv_bytes(first) + row(1301, "Caf\xe9").encode("latin-1") + b"\n" \
        + row(1302, "a\x00b").encode() + b"\n" + (row(1303) + "\n").encode()
    land(cfg, "bytes.csv", data)
    f = one(ingest(wh, cfg.ingest), "bytes.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined, f.reason) == (
        "loaded", 1303, 1301, 2, "")
    assert lines(wh)[-2:] == [(1301, "12-0001300"), (1304, "12-0001303")]
    with wh.connect() as c:
        got = c.exec_driver_sql(
            "select line_number, reason, raw_line from raw.ingest_quarantine "
            "order by line_number").all()
    (l1, r1, _), (l2, r2, raw2) = got
    assert (l1, l2) == (1302, 1303)
    assert r1.startswith("INVALID ENCODING") and r2 == postgres_copy.NUL_REASON
    assert raw2 == row(1302, "a\\x00b")


def test_empty_fields_load_as_null_and_header_order_is_the_files(cfg: Config,
                                                                 wh: sa.Engine) -> None:
    header = "updated_at,company_name,company_ein,domain,industry,headcount,revenue"
    land(cfg, "o.csv", f'{header}\n2026-01-01,"",12-1,,Tech,10,100\n'.encode())
    assert one(ingest(wh, cfg.ingest), "o.csv").rows_loaded == 1
    with wh.connect() as c:
        got = c.exec_driver_sql(
            "select company_ein, company_name, domain, updated_at from raw.companies").one()
    assert tuple(got) == ("12-1", None, None, "2026-01-01")


def test_plain_and_quoted_lines_load_the_values_csv_reads(cfg: Config, wh: sa.Engine) -> None:
    """A line without quotes goes to COPY as it was landed, a quoted one re-written: both
    load the fields Python's csv reader gives (backslashes, ``\\N`` and ``\\.`` are plain
    text, an empty field is NULL), and the audit columns hold the file's odd path."""
    rows_ = [r"12-1,back\slash,\N,\.,  padded ,,2026-01-01",
             '12-2,"quoted, with comma",a.com,"say ""hi""",10,,2026-01-01',
             "12-3,plain,b.com,Tech,10,100,2026-01-01"]
    path = land(cfg, 'odd, "name".csv', csv_bytes(rows_))
    assert one(ingest(wh, cfg.ingest), path.name).rows_loaded == 3
    with wh.connect() as c:
        got = c.exec_driver_sql(
            "select company_ein, company_name, domain, industry, headcount, revenue, "
            "updated_at, _source_file, _line_number from raw.companies "
            "order by _line_number").all()
    want = [[v or None for v in fields] for fields in csv.reader(rows_)]
    assert [list(g[:7]) for g in got] == want
    assert {g[7] for g in got} == {str(path)}
    assert [g[8] for g in got] == [2, 3, 4]


def test_batch_tables_are_indexed_by_batch(cfg: Config, wh: sa.Engine) -> None:
    """Each table of batch rows has a b-tree on its batch-id column, so a batch's read
    does not scan every earlier day (the ledger tables need none of their own)."""
    land(cfg, "i.csv", csv_bytes([row(1)]))
    assert one(ingest(wh, cfg.ingest), "i.csv").rows_loaded == 1
    ingest(wh, cfg.ingest)  # a second create finds the indexes there
    with wh.connect() as c:
        got = c.exec_driver_sql(
            "select tablename, indexdef from pg_indexes where schemaname = 'raw' "
            "and indexname like '%%batch_id_idx' order by tablename").all()
    feeds = sorted([*cfg.ingest.feeds, "ingest_quarantine"])
    assert [t for t, _ in got] == feeds
    assert all("USING btree" in d and ("(_batch_id)" in d or "(batch_id)" in d)
               for _, d in got), got


def test_a_failing_copy_falls_back_to_row_by_row(
    cfg: Config, wh: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("COPY refused")

    monkeypatch.setattr(postgres_copy, "copy_csv", broken)
    land(cfg, "f.csv", csv_bytes([row(1), "x,y", row(3)]))
    f = one(ingest(wh, cfg.ingest), "f.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined) == ("loaded", 3, 2, 1)
    assert f.reason == "PostgreSQL COPY reader failed: COPY refused"
    assert lines(wh) == [(2, "12-0000001"), (4, "12-0000003")]
    assert quarantine(wh) == [(3, "MISSING COLUMNS: expected 7 fields, found 2")]


def test_loader_order_on_postgres(wh: sa.Engine) -> None:
    assert [n for n, _ in ingest_module._loaders(wh)] == ["PostgreSQL COPY", "row-by-row"]


def test_cycle_lock_is_an_advisory_lock(cfg: Config, wh: sa.Engine, tmp_path: Path) -> None:
    with cycle_lock(cfg):
        with pytest.raises(Busy, match="another cycle"), cycle_lock(cfg):
            pass
        assert not Path(str(cfg.warehouse.path) + ".lock").exists()  # no file lock
        with wh.connect() as c:
            held = c.exec_driver_sql(
                "select count(*) from pg_locks where locktype = 'advisory'").scalar()
        assert held == 1
    with cycle_lock(cfg):  # released: free again
        pass


def test_password_from_the_named_variable_never_from_the_file(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_password = pg_database.replace("://monitor@", "://monitor:secret@")
    with pytest.raises(ConfigError, match="holds a password"):
        load_config(pg_config(tmp_path, with_password))
    with pytest.raises(ConfigError, match="driver"):
        load_config(pg_config(tmp_path, pg_database.replace("+psycopg2", "+pg8000")))
    cfg = load_config(pg_config(tmp_path, pg_database, '\npassword_env = "DQM_TEST_PG_PASSWORD"'))
    monkeypatch.setenv("DQM_TEST_PG_PASSWORD", "s3cret")
    engine = backend_for(cfg.warehouse).create_engine(cfg.warehouse)
    assert engine.url.password == "s3cret"  # the trusting test server ignores it
    with engine.connect() as c:
        assert c.exec_driver_sql("select 1").scalar() == 1
    engine.dispose()
    monkeypatch.delenv("DQM_TEST_PG_PASSWORD")
    with pytest.raises(RuntimeError, match="DQM_TEST_PG_PASSWORD is not set"):
        backend_for(cfg.warehouse).create_engine(cfg.warehouse)


def test_volume_sampling_hash_runs_on_postgres(cfg: Config, wh: sa.Engine) -> None:
    """The backend's key-hash predicate (volume_check's sample): about 1/modulus of the
    keys, and a key is in or out whole."""
    land(cfg, "s.csv", csv_bytes([row(i % 1000) for i in range(2000)]))
    assert one(ingest(wh, cfg.ingest), "s.csv").rows_loaded == 2000
    with wh.connect() as c:
        pred = backend_for(cfg.warehouse).key_hash_sample(c, ["company_ein"], 4)
        rows, keys = c.exec_driver_sql(
            f"select count(*), count(distinct company_ein) from raw.companies where {pred}"
        ).one()
    assert rows == 2 * keys and 150 < keys < 350


def test_fuzzed_files_load_by_copy_and_the_ledger_adds_up(cfg: Config, wh: sa.Engine) -> None:
    """test_ingest_fuzz's corrupted files on PostgreSQL: ingest never raises, the ledger
    adds up, and COPY's loader reads every file itself (NUL bytes, stray quotes and bad
    bytes included), without falling back to row by row."""
    rng = random.Random(fuzz.SEED)
    day = cfg.ingest.landing_dir / "companies" / "2026-01-02"
    day.mkdir(parents=True)
    landed: list[Path] = []
    for _ in range(3):
        for _ in range(fuzz.FILES_PER_ROUND):
            name, data = fuzz._file(rng, len(landed))
            landed.append(day / name)
            landed[-1].write_bytes(data)
        report = ingest(wh, cfg.ingest)
        assert report.skipped == []
        assert len(report.files) == fuzz.FILES_PER_ROUND
        assert [f.reason for f in report.files if "reader failed" in f.reason] == []
        fuzz._check_ledger(wh, landed)


def test_a_read_only_engine_cannot_write(cfg: Config, wh: sa.Engine) -> None:
    """``warehouse(read_only=True)`` on PostgreSQL: READ ONLY transactions, as DuckDB's
    access mode."""
    land(cfg, "r.csv", csv_bytes([row(1)]))
    ingest(wh, cfg.ingest)
    with warehouse(cfg.warehouse, read_only=True) as ro, ro.connect() as c:
        assert c.exec_driver_sql("select count(*) from raw.companies").scalar() == 1
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            c.exec_driver_sql("delete from raw.companies")
