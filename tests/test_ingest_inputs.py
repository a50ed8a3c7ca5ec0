"""Bad input never crashes a cycle: each malformed input class ends loaded, quarantined
or skipped with a specific reason, on a real DuckDB warehouse, and the counts add up."""

from __future__ import annotations

import csv
import gzip
import io
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.core.config import Config, load_config
from monitor.stages.ingest import FileOutcome, IngestReport, ingest
from monitor.stages.loaders.records import _parse_line, plain
from monitor.warehouse.connection import warehouse

HEADER = "company_ein,company_name,domain,industry,headcount,revenue,updated_at"


def row(i: int, name: str | None = None) -> str:
    return f"12-{i:07d},{name or f'Acme {i}'},acme.com,Tech,10,100,2026-01-01"


def csv_bytes(rows: list[str], eol: str = "\n") -> bytes:
    return eol.join([HEADER, *rows, ""]).encode()


def land(cfg: Config, name: str, data: bytes, sub: str = "companies/2026-01-02") -> Path:
    path = cfg.ingest.landing_dir / sub / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def cfg(config_file: Path) -> Config:
    return load_config(config_file)


@pytest.fixture
def wh(cfg: Config) -> Iterator[sa.Engine]:
    with warehouse(cfg.warehouse) as engine:
        yield engine


def one(report: IngestReport, name: str) -> FileOutcome:
    (f,) = [f for f in report.files if f.path.name == name]
    return f


def ledger(wh: sa.Engine, feed: str = "companies") -> dict[str, tuple[str, int, int, int, str]]:
    """Per file: status, read, loaded, quarantined, reason; checks the invariant and that
    the rows and quarantine lines stored are the ones counted."""
    with wh.connect() as c:
        rows = c.exec_driver_sql(
            "select b.source_file, b.status, b.rows_read, b.rows_loaded, b.rows_quarantined, "
            "coalesce(b.reason, ''), "
            f"(select count(*) from raw.{feed} r where r._batch_id = b.batch_id), "
            "(select count(*) from raw.ingest_quarantine q where q.batch_id = b.batch_id) "
            "from raw.ingest_batches b"
        ).all()
    out = {}
    for src, status, read, loaded, quar, reason, stored, kept in rows:
        assert read == loaded + quar, src
        assert (stored, kept) == (loaded, quar), src
        out[Path(src).name] = (status, read, loaded, quar, reason)
    return out


def lines(wh: sa.Engine) -> list[tuple[int, str]]:
    with wh.connect() as c:
        got = c.exec_driver_sql(
            "select _line_number, company_ein from raw.companies order by _line_number"
        ).all()
    return [(int(n), str(e)) for n, e in got]


def quarantine(wh: sa.Engine) -> list[tuple[int, str]]:
    with wh.connect() as c:
        got = c.exec_driver_sql(
            "select line_number, reason from raw.ingest_quarantine order by line_number"
        ).all()
    return [(int(n), str(r)) for n, r in got]


def test_mixed_line_endings_fall_back_and_the_next_file_loads(cfg: Config,
                                                             wh: sa.Engine) -> None:
    """The user's file: LF rows, then CRLF rows appended by another tool."""
    mixed = ("\n".join([HEADER, row(1), row(2), row(3)]) + "\n"
             + "\r\n".join([row(4), row(5), row(6)]) + "\r\n").encode()
    land(cfg, "a_companies.csv", mixed)
    land(cfg, "b_companies.csv", csv_bytes([row(7), row(8)]))
    report = ingest(wh, cfg.ingest)
    a, b = one(report, "a_companies.csv"), one(report, "b_companies.csv")
    assert (a.outcome, a.rows_read, a.rows_loaded, a.rows_quarantined) == ("loaded", 6, 6, 0)
    assert "DuckDB reader failed" in a.reason and "invalid state" in a.reason
    assert (b.outcome, b.rows_loaded) == ("loaded", 2)
    assert ledger(wh)["a_companies.csv"][:4] == ("pending", 6, 6, 0)
    assert lines(wh) == [(2, "12-0000001"), (2, "12-0000007"), (3, "12-0000002"),
                         (3, "12-0000008"), (4, "12-0000003"), (5, "12-0000004"),
                         (6, "12-0000005"), (7, "12-0000006")]


def test_cr_only_line_endings(cfg: Config, wh: sa.Engine) -> None:
    land(cfg, "cr.csv", csv_bytes([row(1), row(2), row(3)], eol="\r"))
    f = one(ingest(wh, cfg.ingest), "cr.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined) == ("loaded", 3, 3, 0)
    assert ledger(wh)["cr.csv"] == ("pending", 3, 3, 0, "")
    assert [n for n, _ in lines(wh)] == [2, 3, 4]


def test_broken_quote_quarantines_its_record_with_the_reason(cfg: Config,
                                                             wh: sa.Engine) -> None:
    broken = '12-0000002,"Acme 2,acme.com,Tech,10,100,2026-01-01'
    land(cfg, "q.csv", csv_bytes([row(1), broken, row(3)]))
    f = one(ingest(wh, cfg.ingest), "q.csv")
    # The open quote runs to the end of the file: one record, kept whole in quarantine.
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined) == ("loaded", 2, 1, 1)
    assert lines(wh) == [(2, "12-0000001")]
    ((line, reason),) = quarantine(wh)
    assert line == 3 and "unterminated quote" in reason
    assert ledger(wh)["q.csv"][:4] == ("pending", 2, 1, 1)


def test_embedded_newlines_keep_the_physical_line_of_each_record(cfg: Config,
                                                                 wh: sa.Engine) -> None:
    two_lines = '12-0000002,"Acme\nTwo",acme.com,Tech,10,100,2026-01-01'
    three_lines = '12-0000003,"A\n""B""\nC",acme.com,Tech,10,100,2026-01-01'
    land(cfg, "nl.csv", csv_bytes([row(1), two_lines, three_lines, row(4), "x,y"]))
    f = one(ingest(wh, cfg.ingest), "nl.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined) == ("loaded", 5, 4, 1)
    # header = 1; records start at 2, 3 (2 lines), 5 (3 lines), 8; the bad line is 9.
    assert lines(wh) == [(2, "12-0000001"), (3, "12-0000002"), (5, "12-0000003"),
                         (8, "12-0000004")]
    assert quarantine(wh)[0][0] == 9 and "MISSING COLUMNS" in quarantine(wh)[0][1]
    with wh.connect() as c:
        name = c.exec_driver_sql(
            "select company_name from raw.companies where _line_number = 5").scalar()
    assert name == 'A\n"B"\nC'


def test_rejects_first_last_and_side_by_side_keep_every_line(cfg: Config,
                                                             wh: sa.Engine) -> None:
    # The fast reader numbers rows by their place in the file, then renumbers the rows
    # after each reject: a reject on the first data line, two next to each other (an
    # empty range between them), and one on the last line. Two files in one ingest:
    # the renumbering touches only its own file's rows.
    bad = "x,y"
    first = [bad, row(1), row(2), bad, bad, row(3), bad, bad, bad, row(4), bad]
    land(cfg, "a.csv", csv_bytes(first))
    land(cfg, "b.csv", csv_bytes([row(5), bad, row(6)]))
    report = ingest(wh, cfg.ingest)
    a, b = one(report, "a.csv"), one(report, "b.csv")
    assert (a.rows_read, a.rows_loaded, a.rows_quarantined, a.reason) == (11, 4, 7, "")
    assert (b.rows_read, b.rows_loaded, b.rows_quarantined, b.reason) == (3, 2, 1, "")
    with wh.connect() as c:
        got = c.exec_driver_sql(
            "select _source_file, _line_number, company_ein from raw.companies "
            "order by _source_file, _line_number").all()
        kept = c.exec_driver_sql(
            "select source_file, line_number from raw.ingest_quarantine "
            "order by source_file, line_number").all()
    assert [(Path(f).name, n, e) for f, n, e in got] == [
        ("a.csv", 3, "12-0000001"), ("a.csv", 4, "12-0000002"), ("a.csv", 7, "12-0000003"),
        ("a.csv", 11, "12-0000004"), ("b.csv", 2, "12-0000005"), ("b.csv", 4, "12-0000006")]
    assert [(Path(f).name, n) for f, n in kept] == [
        ("a.csv", 2), ("a.csv", 5), ("a.csv", 6), ("a.csv", 8), ("a.csv", 9), ("a.csv", 10),
        ("a.csv", 12), ("b.csv", 3)]


def test_zero_byte_and_header_only_files(cfg: Config, wh: sa.Engine) -> None:
    land(cfg, "empty.csv", b"")
    land(cfg, "header.csv", csv_bytes([]))
    land(cfg, "blank.csv", b"\r\n  \n")
    report = ingest(wh, cfg.ingest)
    assert one(report, "blank.csv").reason == "no header: blank file"
    assert (one(report, "empty.csv").outcome, one(report, "empty.csv").reason) == (
        "quarantined", "empty file")
    assert one(report, "header.csv").outcome == "loaded"
    got = ledger(wh)
    assert got["empty.csv"] == ("quarantined", 0, 0, 0, "empty file")
    assert got["header.csv"] == ("pending", 0, 0, 0, "")
    assert got["blank.csv"] == ("quarantined", 2, 0, 2, "no header: blank file")


def test_utf8_bom_is_not_part_of_the_first_column(cfg: Config, wh: sa.Engine) -> None:
    land(cfg, "bom.csv", b"\xef\xbb\xbf" + csv_bytes([row(1), row(2)]))
    f = one(ingest(wh, cfg.ingest), "bom.csv")
    assert (f.outcome, f.rows_loaded) == ("loaded", 2)
    assert lines(wh) == [(2, "12-0000001"), (3, "12-0000002")]
    assert ledger(wh)["bom.csv"] == ("pending", 2, 2, 0, "")


def test_latin1_bytes_cost_only_their_row(cfg: Config, wh: sa.Engine) -> None:
    data = csv_bytes([row(1), row(3)]).replace(
        b"\n12-0000003", "\n".join(["", row(2, "Caf\xe9"), ""]).encode("latin-1")[:-1]
        + b"\n12-0000003")
    land(cfg, "latin1.csv", data)
    f = one(ingest(wh, cfg.ingest), "latin1.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined) == ("loaded", 3, 2, 1)
    assert lines(wh) == [(2, "12-0000001"), (4, "12-0000003")]
    ((line, reason),) = quarantine(wh)
    assert line == 3 and reason.startswith("INVALID ENCODING")


def test_latin1_header_quarantines_the_file(cfg: Config, wh: sa.Engine) -> None:
    land(cfg, "h.csv", ("company_ein,company_name\xe9\n" + row(1) + "\n").encode("latin-1"))
    f = one(ingest(wh, cfg.ingest), "h.csv")
    assert (f.outcome, f.rows_read, f.rows_quarantined) == ("quarantined", 2, 2)
    assert f.reason == "header line is not UTF-8 text (byte 24)"


def test_ten_megabyte_field_is_quarantined_and_the_rest_loads(cfg: Config,
                                                              wh: sa.Engine) -> None:
    land(cfg, "big.csv", csv_bytes([row(1), row(2, "x" * 10_000_000), row(3)]))
    f = one(ingest(wh, cfg.ingest), "big.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined) == ("loaded", 3, 2, 1)
    assert lines(wh) == [(2, "12-0000001"), (4, "12-0000003")]
    ((line, reason),) = quarantine(wh)
    assert line == 3 and "LINE SIZE OVER MAXIMUM" in reason


def test_duplicate_header_names_quarantine_the_file(cfg: Config, wh: sa.Engine) -> None:
    land(cfg, "dup.csv", (HEADER + ",domain\n" + row(1) + ",x\n").encode())
    f = one(ingest(wh, cfg.ingest), "dup.csv")
    assert (f.outcome, f.rows_read, f.rows_quarantined) == ("quarantined", 2, 2)
    assert f.reason == "duplicate column names in header: domain"
    assert ledger(wh)["dup.csv"][0] == "quarantined"


def test_gzip_loads_and_a_truncated_gzip_is_quarantined(cfg: Config, wh: sa.Engine) -> None:
    packed = gzip.compress(csv_bytes([row(i) for i in range(1, 201)]))
    land(cfg, "a.csv.gz", packed)
    land(cfg, "b.csv.gz", packed[: len(packed) // 2])
    report = ingest(wh, cfg.ingest)
    a, b = one(report, "a.csv.gz"), one(report, "b.csv.gz")
    assert (a.outcome, a.rows_read, a.rows_loaded, a.reason) == ("loaded", 200, 200, "")
    assert [n for n, _ in lines(wh)] == list(range(2, 202))
    assert b.outcome == "quarantined" and b.rows_read == b.rows_quarantined >= 1
    assert "unreadable from here" in quarantine(wh)[-1][1] or "compressed" in b.reason
    assert ledger(wh)["b.csv.gz"][0] == "quarantined"


def test_a_file_still_being_written_waits_for_the_next_cycle(cfg: Config,
                                                             wh: sa.Engine) -> None:
    path = land(cfg, "growing.csv", csv_bytes([row(i) for i in range(1, 20001)]))
    done = threading.Event()

    def writer() -> None:  # another tool still appending rows while the cycle reads
        i = 20001
        with path.open("a") as fh:
            while not done.is_set():
                fh.write(row(i) + "\n")
                fh.flush()
                i += 1
                time.sleep(0.0005)

    t = threading.Thread(target=writer)
    t.start()
    try:
        first = ingest(wh, cfg.ingest)
    finally:
        done.set()
        t.join()
    assert first.files == []
    ((skipped,),) = [[s for s in first.skipped if s.path == path]]
    assert skipped.reason.startswith("still being written")
    assert ledger(wh) == {} and lines(wh) == []
    expected = len(path.read_bytes().splitlines()) - 1
    second = ingest(wh, cfg.ingest)
    f = one(second, "growing.csv")
    assert (f.outcome, f.rows_loaded) == ("loaded", expected)
    assert ledger(wh)["growing.csv"] == ("pending", expected, expected, 0, "")


def test_symlinks_followed_inside_the_landing_zone_only(cfg: Config, wh: sa.Engine,
                                                        tmp_path: Path) -> None:
    inside = land(cfg, "real.csv", csv_bytes([row(1)]), sub=".staging")
    outside = tmp_path / "secret.csv"
    outside.write_bytes(csv_bytes([row(99)]))
    feed_day = cfg.ingest.landing_dir / "companies" / "2026-01-02"
    feed_day.mkdir(parents=True)
    (feed_day / "in.csv").symlink_to(inside)
    (feed_day / "out.csv").symlink_to(outside)
    (feed_day / "dir").symlink_to(tmp_path, target_is_directory=True)
    report = ingest(wh, cfg.ingest)
    assert [(f.path.name, f.outcome) for f in report.files] == [("in.csv", "loaded")]
    reasons = {s.path.name: s.reason for s in report.skipped}
    assert reasons == {"out.csv": "symlink leads outside the landing zone: refused",
                       "dir": "symlinked folder: not followed"}
    assert lines(wh) == [(2, "12-0000001")]


def test_files_directly_under_the_feed_folder_load(cfg: Config, wh: sa.Engine) -> None:
    land(cfg, "flat.csv", csv_bytes([row(1)]), sub="companies")
    f = one(ingest(wh, cfg.ingest), "flat.csv")
    assert (f.outcome, f.rows_loaded) == ("loaded", 1)
    assert ledger(wh)["flat.csv"] == ("pending", 1, 1, 0, "")


def test_stray_paths_are_reported_not_loaded(cfg: Config, wh: sa.Engine) -> None:
    land(cfg, "x.csv", csv_bytes([row(1)]), sub="vendors/2026-01-02")
    land(cfg, "loose.csv", csv_bytes([row(2)]), sub=".")
    land(cfg, ".part.csv", csv_bytes([row(3)]))
    land(cfg, "readme.txt", b"not data")
    land(cfg, "y.csv", csv_bytes([row(4)]), sub="companies/.tmp")
    land(cfg, "good.csv", csv_bytes([row(5)]))
    report = ingest(wh, cfg.ingest)
    assert [(f.path.name, f.outcome) for f in report.files] == [("good.csv", "loaded")]
    reasons = {s.path.name: s.reason for s in report.skipped}
    assert reasons == {
        "vendors": "unknown feed folder (not in [ingest.feeds])",
        "loose.csv": "file outside any feed folder",
        ".part.csv": "hidden file (an upload in progress?)",
        "readme.txt": "name does not match the feed's pattern '*.csv'",
    }
    assert list(ledger(wh)) == ["good.csv"]
    assert lines(wh) == [(2, "12-0000005")]


@pytest.mark.parametrize("name", ["acme co.csv", "ünïcødé_企業.csv", "o'brien \"q\".csv",
                                  "glob [1] *?.csv"])
def test_odd_characters_in_names(cfg: Config, wh: sa.Engine, name: str) -> None:
    path = land(cfg, name, csv_bytes([row(1), row(2)]))
    f = one(ingest(wh, cfg.ingest), name)
    assert (f.outcome, f.rows_loaded, f.reason) == ("loaded", 2, "")
    with wh.connect() as c:
        got = c.exec_driver_sql("select distinct _source_file from raw.companies").all()
    assert got == [(str(path),)]
    assert ingest(wh, cfg.ingest).files == []  # recognised as seen on the next cycle
    assert os.path.exists(path)


def test_row_by_row_fallback_isolates_a_broken_quote(cfg: Config, wh: sa.Engine) -> None:
    """Mixed line endings send the file to the row-by-row reader; there an open quote that
    closes into no good record costs only its own line, and the lines after it load."""
    lf = [HEADER, row(1), '12-0000002,"Acme 2,acme.com,Tech,10,100,2026-01-01',
          '12-0000003,"A', 'B",acme.com,Tech,10,100,2026-01-01']
    crlf = [row(4, "Caf\xe9"), row(5)]
    data = ("\n".join(lf) + "\n").encode() + ("\r\n".join(crlf) + "\r\n").encode("latin-1")
    land(cfg, "mixed.csv", data)
    f = one(ingest(wh, cfg.ingest), "mixed.csv")
    assert f.reason.startswith("DuckDB reader failed")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined) == ("loaded", 5, 3, 2)
    assert lines(wh) == [(2, "12-0000001"), (4, "12-0000003"), (7, "12-0000005")]
    (l3, r3), (l6, r6) = quarantine(wh)
    assert (l3, l6) == (3, 6)
    assert r3.startswith("malformed CSV") and r6.startswith("INVALID ENCODING")
    with wh.connect() as c:
        name = c.exec_driver_sql(
            "select company_name from raw.companies where _line_number = 4").scalar()
    assert name == "A\nB"
    assert ledger(wh)["mixed.csv"][:4] == ("pending", 5, 3, 2)


def test_many_rows_with_scattered_multiline_records_keep_exact_lines(cfg: Config,
                                                                     wh: sa.Engine) -> None:
    rows, expected, line = [], [], 2
    for i in range(1, 3001):
        if i % 500 == 0:
            rows.append(f'12-{i:07d},"Multi\nline\nname",acme.com,Tech,10,100,2026-01-01')
            expected.append((line, f"12-{i:07d}"))
            line += 3
        elif i == 1234:
            rows.append("broken,row")
            line += 1
        else:
            rows.append(row(i))
            expected.append((line, f"12-{i:07d}"))
            line += 1
    land(cfg, "many.csv", csv_bytes(rows))
    f = one(ingest(wh, cfg.ingest), "many.csv")
    assert (f.outcome, f.rows_read, f.rows_loaded, f.rows_quarantined, f.reason) == (
        "loaded", 3000, 2999, 1, "")
    assert sorted(lines(wh)) == expected
    assert quarantine(wh)[0][0] == 2 + 1233 + 2 * 2  # two 3-line records before it


def test_the_plain_line_split_gives_the_fields_csvs_reader_gives() -> None:
    """The Python loaders split a line without quotes with str.split (records.plain):
    on random lines of delimiters, quotes, spaces, NUL, CR, LF and other characters, for
    each delimiter and width, the same fields or the same reason as csv's strict reader."""
    def by_csv(line: str, delimiter: str, width: int) -> tuple[str, list[str]]:
        try:
            fields = next(csv.reader(io.StringIO(line, newline=""), delimiter=delimiter,
                                     strict=True), [])
        except csv.Error as exc:
            return f"malformed CSV: {exc}", []
        if len(fields) != width:
            kind = "MISSING COLUMNS" if len(fields) < width else "TOO MANY COLUMNS"
            return f"{kind}: expected {width} fields, found {len(fields)}", []
        return "", fields

    rng = random.Random(20261206)
    alphabet = list('ab ,;|\t"\x00\r\n\\é\'1')
    plain_seen = 0
    for _ in range(20_000):
        delimiter = rng.choice([",", ";", "|", "\t", " "])
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        plain_seen += plain(line)
        for width in (1, 2, 3):
            assert _parse_line(line, delimiter, width) == by_csv(line, delimiter, width), (
                line, delimiter, width)
    assert plain_seen > 1000  # the split path was taken, not only csv's reader
