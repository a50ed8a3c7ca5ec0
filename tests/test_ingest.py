"""Ingest: exactly-once by checksum, quarantine with reasons, counts that add up."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from monitor.config import load_config
from monitor.ingest import ingest
from monitor.warehouse import warehouse

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
