"""Ingest on Spark (issue 20 item 2) against a real Spark Connect server, through the
``spark_csv`` loader: the same landing folder ingested by DuckDB and by Spark ends the
same (per file: outcome, counts, loaded values with their physical lines, quarantined
lines), exactly once by checksum, and a crash between the writes (Spark has no
transaction) leaves no double rows after the next ingest.

Each test ingests into a schema of its own on one server for the module.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dqm_demo.demo import land_day
from dqm_demo.generate import generate
from monitor.core.config import Config, load_config
from monitor.stages import ingest as ingest_module
from monitor.stages.ingest import IngestReport, ingest
from monitor.store import batches
from monitor.warehouse.connection import backend_for, warehouse
from monitor.warehouse.spark import SparkBackend
from monitor.warehouse.spark_session import spark_session, stop_sessions

from .conftest import write_config
from .spark_server import SparkServer

pytestmark = [pytest.mark.spark, pytest.mark.slow]

HEADER = "company_ein,company_name,domain,industry,headcount,revenue,updated_at"
DAY = date(2026, 3, 2)


def row(i: int, name: str | None = None) -> str:
    return f"12-{i:07d},{name or f'Acme {i}'},acme.com,Tech,10,100,2026-01-01"


def csv_bytes(rows: list[str], eol: str = "\n", header: str = HEADER) -> bytes:
    return eol.join([header, *rows, ""]).encode()


def land(landing: Path, name: str, data: bytes, sub: str = "companies/2026-03-02") -> Path:
    path = landing / sub / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def spark_cfg(tmp: Path, url: str, landing: Path) -> Config:
    schema = f"ing_{uuid.uuid4().hex[:10]}"
    tmp.mkdir(parents=True, exist_ok=True)
    return load_config(write_config(tmp, path=f'"data/w.duckdb"\nurl = "{url}"',
                                    landing_dir=f'"{landing}"', schema=f'"{schema}"'))


@pytest.fixture(scope="module")
def spark_url(spark_server: SparkServer) -> Iterator[str]:
    yield spark_server.url
    stop_sessions()


@pytest.fixture
def cfg(tmp_path: Path, spark_url: str) -> Iterator[Config]:
    config = spark_cfg(tmp_path / "spark", spark_url, tmp_path / "landing")
    with warehouse(config.warehouse) as engine:
        assert isinstance(backend_for(config.warehouse), SparkBackend)
        yield config
        with engine.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {config.ingest.schema} CASCADE")


def by_file(report: IngestReport) -> dict[str, tuple[str, int, int, int]]:
    return {f.path.name: (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined)
            for f in report.files}


def stored(engine: sa.Engine, cfg: Config) -> dict[str, Any]:
    """Per file: the loaded rows (all columns but the batch's time) in line order, the
    quarantined lines, and the ledger's counts, checked against what the tables hold."""
    schema = cfg.ingest.schema
    out: dict[str, Any] = {}
    with engine.connect() as c:
        for feed, spec in cfg.ingest.feeds.items():
            cols = ", ".join(f'"{x}"' if engine.dialect.name == "duckdb" else f"`{x}`"
                             for x in spec.columns)
            for r in c.exec_driver_sql(
                    f"SELECT _source_file, _line_number, {cols} FROM {schema}.{feed} "
                    "ORDER BY _source_file, _line_number"):
                out.setdefault(Path(r[0]).name, {"rows": [], "bad": []})["rows"].append(
                    tuple(r[1:]))
        for src, line in c.exec_driver_sql(
                f"SELECT source_file, line_number FROM {schema}.ingest_quarantine "
                "ORDER BY source_file, line_number"):
            out.setdefault(Path(str(src)).name, {"rows": [], "bad": []})["bad"].append(line)
        for r in c.exec_driver_sql(
                f"SELECT source_file, rows_read, rows_loaded, rows_quarantined "
                f"FROM {schema}.ingest_batches"):
            src, read, loaded, kept = str(r[0]), int(r[1]), int(r[2]), int(r[3])
            got = out.setdefault(Path(src).name, {"rows": [], "bad": []})
            assert read == loaded + kept, src
            assert (len(got["rows"]), len(got["bad"])) == (loaded, kept), src
    return out


def malformed(landing: Path) -> None:
    """The bad inputs of test_ingest_inputs / test_ingest_postgres, in few files (each
    file costs a few Spark jobs): the bad records of DuckDB's fast path in one."""
    land(landing, "rows.csv", csv_bytes(
        [row(1), "12-0000002,a,b", row(3) + ",extra", '"q"z,a,b,c,d,e,f',
         '12-0000004,"",acme.com,,10,,2026-01-01',
         '12-0000005,"Acme\nTwo",acme.com,Tech,10,100,2026-01-01',
         '12-0000006,"A\n""B""\nC",acme.com,Tech,10,100,2026-01-01', "x,y", row(7),
         row(8, "x" * 3_000_000), row(9)])
         + row(10, "Caf\xe9").encode("latin-1") + b"\n"
         + (row(11) + "\n" + '12-0000012,"Acme 12,acme.com,Tech,10,100,2026-01-01\n'
            + row(13) + "\n").encode())
    land(landing, "blank.csv", csv_bytes([row(21), "", row(22), "", row(23)]) + b"\n")
    land(landing, "cr_bom.csv", b"\xef\xbb\xbf" + csv_bytes([row(24), row(25)], eol="\r"))
    land(landing, "mixed.csv", ("\n".join([HEADER, row(26), row(27)]) + "\n"
                                + "\r\n".join([row(28), row(29)]) + "\r\n").encode())
    land(landing, "empty.csv", b"")
    land(landing, "header.csv", csv_bytes([]))
    land(landing, "binary.csv", b"\x01\x02PK\x03\x04garbage\nmore\x00garbage\n")
    land(landing, "drift.csv", csv_bytes([row(30)], header=HEADER.replace("revenue", "rev")))
    packed = gzip.compress(csv_bytes([row(i) for i in range(100, 300)]))
    land(landing, "a.csv.gz", packed)
    land(landing, "b.csv.gz", packed[: len(packed) // 2])
    land(landing, "gzip_named_csv.csv", gzip.compress(csv_bytes([row(31), row(32)])))
    big = [row(i) for i in range(1000, 2300)]  # past the header check's 64 KiB
    land(landing, "bytes.csv", csv_bytes(big) + row(2300, "a\x00b").encode() + b"\n"
         + (row(2301) + "\n").encode())


def test_spark_ingest_ends_as_duckdb_ingest(tmp_path: Path, spark_url: str) -> None:
    """Demo feeds and every malformed input: per file the same outcome and counts, the
    same loaded values on the same physical lines, the same quarantined lines."""
    landing = tmp_path / "landing"
    gen = tmp_path / "gen"
    generate(gen, DAY, 1, 300, seed=7)
    land_day(gen, landing, DAY)
    malformed(landing)
    (tmp_path / "duck").mkdir()
    duck_cfg = load_config(write_config(tmp_path / "duck", landing_dir=f'"{landing}"'))
    with warehouse(duck_cfg.warehouse) as duck:
        duck_report = ingest(duck, duck_cfg.ingest)
        duck_stored = stored(duck, duck_cfg)
    cfg = spark_cfg(tmp_path / "spark", spark_url, landing)
    with warehouse(cfg.warehouse) as engine:
        try:
            report = ingest(engine, cfg.ingest)
            spark_stored = stored(engine, cfg)
            assert ingest(engine, cfg.ingest).files == []  # all seen: nothing read again
        finally:
            with engine.connect() as c:
                c.exec_driver_sql(f"DROP DATABASE IF EXISTS {cfg.ingest.schema} CASCADE")
    assert len(report.files) == 4 + 12
    assert by_file(report) == by_file(duck_report)
    assert {s.path.name for s in report.skipped} == {s.path.name for s in duck_report.skipped}
    assert spark_stored.keys() == duck_stored.keys()
    for name in duck_stored:
        assert spark_stored[name] == duck_stored[name], name
    reasons = {f.path.name: f.reason for f in report.files}
    assert reasons["gzip_named_csv.csv"].startswith("Spark CSV reader failed: gzip")
    assert reasons["binary.csv"] == "binary content (NUL bytes): not a CSV file"
    assert [r for r in reasons.values() if r.startswith("Spark CSV reader failed")] == [
        reasons["gzip_named_csv.csv"]]


class Crash(BaseException):
    """The process dying between two writes (no ``except Exception`` catches it)."""


def _crash(*args: object, **kwargs: object) -> None:
    raise Crash


def _in_batch(engine: sa.Engine, cfg: Config, batch_id: str) -> tuple[int, int]:
    """Rows of ``batch_id`` in the feed table and in the quarantine (ledger or not)."""
    s = cfg.ingest.schema
    with engine.connect() as c:
        got = c.execute(sa.text(
            f"SELECT (SELECT count(*) FROM {s}.companies WHERE _batch_id = :b), "
            f"(SELECT count(*) FROM {s}.ingest_quarantine WHERE batch_id = :b)"),
            {"b": batch_id}).one()
    return int(got[0]), int(got[1])


def _deliveries(engine: sa.Engine, cfg: Config) -> list[tuple[str, str, str]]:
    with engine.connect() as c:
        rows = c.exec_driver_sql(f"SELECT source_file, batch_id, outcome FROM "
                                 f"{cfg.ingest.schema}.ingest_files").all()
    return sorted((Path(r[0]).name, str(r[1]), str(r[2])) for r in rows)


def test_exactly_once_and_no_double_rows_after_a_crash(
        cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    landing = cfg.ingest.landing_dir
    with warehouse(cfg.warehouse) as engine:
        data = csv_bytes([row(1), row(2), "bad,row"])
        land(landing, "a.csv", data)
        assert by_file(ingest(engine, cfg.ingest)) == {"a.csv": ("loaded", 3, 2, 1)}
        land(landing, "a_resent.csv", data)
        (dup,) = ingest(engine, cfg.ingest).files
        assert (dup.outcome, dup.batch_id) == ("duplicate", "00000001-companies")

        # Crash after the batch's partitions, before its ledger row: an orphan.
        b = land(landing, "b.csv", csv_bytes([row(3), row(4), "x,y"]))
        monkeypatch.setattr(SparkBackend, "record_batch", _crash)
        with pytest.raises(Crash):
            ingest(engine, cfg.ingest)
        monkeypatch.undo()
        assert _in_batch(engine, cfg, "00000002-companies") == (2, 1)
        assert [x.batch_id for x in batches.list_batches(
            engine.connect(), cfg.ingest.schema)] == ["00000001-companies"]
        parked = b.rename(landing / "b.csv.parked")  # not redelivered: the orphan goes
        report = ingest(engine, cfg.ingest)
        assert report.files == [] and _in_batch(engine, cfg, "00000002-companies") == (0, 0)
        parked.rename(b)  # redelivered: the same load sequence, rows once
        (again,) = ingest(engine, cfg.ingest).files
        assert (again.outcome, again.batch_id, again.rows_read, again.rows_loaded,
                again.rows_quarantined) == ("loaded", "00000002-companies", 3, 2, 1)
        assert _in_batch(engine, cfg, "00000002-companies") == (2, 1)

        # Crash after the ledger row, before the delivery row: the next cycle records
        # the delivery of its own batch, not a duplicate of itself.
        land(landing, "c.csv", csv_bytes([row(5)]))
        monkeypatch.setattr(ingest_module, "_record_delivery", _crash)
        with pytest.raises(Crash):
            ingest(engine, cfg.ingest)
        monkeypatch.undo()
        (recovered,) = ingest(engine, cfg.ingest).files
        assert (recovered.outcome, recovered.batch_id, recovered.rows_loaded) == (
            "loaded", "00000003-companies", 1)
        assert _deliveries(engine, cfg) == [
            ("a.csv", "00000001-companies", "loaded"),
            ("a_resent.csv", "00000001-companies", "duplicate"),
            ("b.csv", "00000002-companies", "loaded"),
            ("c.csv", "00000003-companies", "loaded")]
        got = stored(engine, cfg)  # ledger counts = stored rows, per file
        assert {n: ([r[0] for r in v["rows"]], v["bad"]) for n, v in got.items()} == {
            "a.csv": ([2, 3], [4]), "b.csv": ([2, 3], [4]), "c.csv": ([2], [])}


def test_decisions_append_to_the_log_and_show_in_the_view(cfg: Config) -> None:
    for i in (1, 2, 3):
        land(cfg.ingest.landing_dir, f"{i}.csv", csv_bytes([row(i)]))
    schema = cfg.ingest.schema
    with warehouse(cfg.warehouse) as engine:
        assert len(ingest(engine, cfg.ingest).files) == 3
        with engine.connect() as conn:
            assert batches.publish(conn, schema, "00000001-companies", "op", "fine") == 1
            batches.hold(conn, schema, "00000002-companies", "contract failed")
            assert batches.held_since(conn, schema, datetime(2000, 1, 1)) == [
                "00000002-companies"]
            batches.reject(conn, schema, "00000002-companies", "op", "bad data")
            batches.publish(conn, schema, "00000003-companies", "op", "fine too")
            with pytest.raises(batches.BatchError, match="is rejected"):
                batches.publish(conn, schema, "00000002-companies", "op", "again")
            got = {b.batch_id: (b.status, b.publish_seq, b.decision_reason, b.rows_loaded)
                   for b in batches.list_batches(conn, schema)}
            log_rows = conn.exec_driver_sql(
                f"SELECT count(*) FROM {schema}.ingest_batch_log").scalar()
            assert batches.max_publish_seq(conn, schema) == 2
        # The cycle analyzes the ledger after the gate: on Spark that is the view's log.
        SparkBackend().refresh_statistics(engine, [(schema, "companies"),
                                                   (schema, "ingest_batches")])
    assert got == {"00000001-companies": ("published", 1, "fine", 1),
                   "00000002-companies": ("rejected", None, "bad data", 1),
                   "00000003-companies": ("published", 2, "fine too", 1)}
    assert log_rows == 3 + 4  # one row per ingest, one per decision: nothing updated


def test_line_numbers_across_many_splits_of_a_file(cfg: Config) -> None:
    """Splits of 1 KiB: every split numbers its lines in parallel, and quoted records
    run across split starts (one spans 50 lines); the lines are still the physical ones."""
    rows: list[str] = []
    expected: list[tuple[int, str]] = []
    bad: list[int] = []
    line = 2
    for i in range(1, 301):
        if i == 150:
            long_name = "\n".join(f"part {k}" for k in range(50))
            rows.append(f'12-{i:07d},"{long_name}",acme.com,Tech,10,100,2026-01-01')
            expected.append((line, f"12-{i:07d}"))
            line += 50
        elif i % 37 == 0:
            rows.append(f'12-{i:07d},"Multi\nline\nname",acme.com,Tech,10,100,2026-01-01')
            expected.append((line, f"12-{i:07d}"))
            line += 3
        elif i % 101 == 0:
            rows.append("broken,row")
            bad.append(line)
            line += 1
        else:
            rows.append(row(i))
            expected.append((line, f"12-{i:07d}"))
            line += 1
    path = land(cfg.ingest.landing_dir, "splits.csv", csv_bytes(rows))
    session = spark_session(cfg.warehouse.url)
    session.conf.set("spark.sql.files.maxPartitionBytes", "1024")
    try:
        blocks = (session.read.text(f"file://{path}")
                  .select("_metadata.file_block_start").distinct().count())
        with warehouse(cfg.warehouse) as engine:
            (f,) = ingest(engine, cfg.ingest).files
            with engine.connect() as c:
                got = c.exec_driver_sql(
                    f"SELECT _line_number, company_ein FROM {cfg.ingest.schema}.companies "
                    "ORDER BY _line_number").all()
                kept = [int(r[0]) for r in c.exec_driver_sql(
                    f"SELECT line_number FROM {cfg.ingest.schema}.ingest_quarantine "
                    "ORDER BY line_number")]
                name = c.exec_driver_sql(
                    f"SELECT company_name FROM {cfg.ingest.schema}.companies "
                    "WHERE company_ein = '12-0000150'").scalar()
    finally:
        session.conf.unset("spark.sql.files.maxPartitionBytes")
    assert blocks > 10
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined, f.reason) == (
        "loaded", 300, 298, 2, "")
    assert [(int(r[0]), str(r[1])) for r in got] == expected
    assert kept == bad
    assert name == long_name
