"""Fuzz: generated CSVs with random corruptions never make ingest() raise, and every
file ends in the ledger with counts that add up (fixed seed, about 30 s at most)."""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from monitor.core.config import load_config
from monitor.stages.ingest import ingest
from monitor.warehouse.connection import warehouse

HEADER = "company_ein,company_name,domain,industry,headcount,revenue,updated_at"
SEED = 17
FILES_PER_ROUND = 12
MAX_ROUNDS = 8
BUDGET_S = 20.0
NAMES = ["f", "a b", "ü", "q's", "[x]", '"d"']


def _row(rng: random.Random, i: int) -> str:
    name = rng.choice(["Acme {i}", "Café Ünïon {i}", '"Quoted, Inc {i}"', '"Two\nLines {i}"',
                       '"Say ""hi"" {i}"', "", "N/A"]).format(i=i)
    return f"12-{i:07d},{name},acme.com,Tech,{rng.randint(1, 999)},100,2026-01-01"


def _insert(rng: random.Random, data: bytes, piece: bytes) -> bytes:
    at = rng.randint(0, len(data))
    return data[:at] + piece + data[at:]


CORRUPTIONS: list[Callable[[random.Random, bytes], bytes]] = [
    lambda r, d: _insert(r, d, b'"'),
    lambda r, d: _insert(r, d, r.choice([b"\r", b"\r\n", b"\n", b"\n\n"])),
    lambda r, d: d.replace(b"\n", b"\r\n", r.randint(1, 5)),
    lambda r, d: d.replace(b"\n", b"\r"),
    lambda r, d: _insert(r, d, bytes([r.randint(0x80, 0xFF)])),
    lambda r, d: _insert(r, d, b"\x00"),
    lambda r, d: d[: r.randint(0, len(d))],
    lambda r, d: d.replace(b"domain", b"company_name", 1),
    lambda r, d: _insert(r, d, b","),
    lambda r, d: d.replace(b",", b";", r.randint(1, 20)),
    lambda r, d: b"\xef\xbb\xbf" + d,
    lambda r, d: _insert(r, d, b"x" * r.choice([1000, 100_000, 2_500_000])),
    lambda r, d: _insert(r, d, "企業 ü \u2028 \ufffd".encode()),
    lambda r, d: b"",
]


def _file(rng: random.Random, n: int) -> tuple[str, bytes]:
    rows = [_row(rng, n * 100 + i) for i in range(rng.randint(0, 30))]
    data = "\n".join([HEADER, *rows, ""]).encode()
    for fix in rng.sample(CORRUPTIONS, rng.randint(0, 3)):
        data = fix(rng, data)
    name = f"{rng.choice(NAMES)}_{n:03d}.csv"
    if rng.random() < 0.1:
        packed = gzip.compress(data)
        data = packed if rng.random() < 0.7 else packed[: rng.randint(0, len(packed))]
        name += ".gz"
    return name, data


def _check_ledger(wh: sa.Engine, landed: list[Path]) -> None:
    with wh.connect() as c:
        outcomes = dict(c.exec_driver_sql(
            "select source_file, outcome from raw.ingest_files").all())
        batches = c.exec_driver_sql(
            "select batch_id, rows_read, rows_loaded, rows_quarantined, "
            "(select count(*) from raw.companies r where r._batch_id = b.batch_id), "
            "(select count(*) from raw.ingest_quarantine q where q.batch_id = b.batch_id) "
            "from raw.ingest_batches b").all()
    for path in landed:
        assert outcomes.get(str(path)) in {"loaded", "quarantined", "duplicate"}, path
    for batch_id, read, loaded, quarantined, stored, kept in batches:
        assert read == loaded + quarantined, batch_id
        assert (stored, kept) == (loaded, quarantined), batch_id


def test_fuzzed_files_never_raise_and_the_ledger_adds_up(tmp_path: Path,
                                                         config_file: Path) -> None:
    cfg = load_config(config_file)
    rng = random.Random(SEED)
    day = cfg.ingest.landing_dir / "companies" / "2026-01-02"
    day.mkdir(parents=True)
    landed: list[Path] = []
    started = time.monotonic()
    rounds = 0
    with warehouse(cfg.warehouse) as wh:
        while rounds < MAX_ROUNDS and time.monotonic() - started < BUDGET_S:
            for _ in range(FILES_PER_ROUND):
                name, data = _file(rng, len(landed))
                landed.append(day / name)
                landed[-1].write_bytes(data)
            report = ingest(wh, cfg.ingest)  # must not raise
            assert report.skipped == []
            assert len(report.files) == FILES_PER_ROUND
            _check_ledger(wh, landed)
            rounds += 1
    assert rounds >= 2
