"""Tests for the synthetic feed generator (dqm_demo.generate), on small volumes."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from dqm_demo import generate as gen
from dqm_demo.generate import COLUMNS, INJECTION_KINDS, Injection, generate, parse_injection

REPO = Path(__file__).resolve().parent.parent
SEED = 7
CPD = 300
# Mon 2026-03-09 .. Wed 2026-03-11; injections land on the middle day.
BASE_START = date(2026, 3, 9)
BASE_DAYS = 3
HIT = date(2026, 3, 10)
NULLS = {"", "null", "n/a", "none"}
PINNED_HASH = 1802239392262024484  # duckdb 2.0.1
DATE_FORMATS = {
    "iso": (re.compile(r"^\d{4}-\d{2}-\d{2}$"), "%Y-%m-%d"),
    "us": (re.compile(r"^\d{2}/\d{2}/\d{4}$"), "%m/%d/%Y"),
    "compact": (re.compile(r"^\d{8}$"), "%Y%m%d"),
    "mon": (re.compile(r"^\d{2}-[A-Z][a-z]{2}-\d{4}$"), "%d-%b-%Y"),
}


# --- helpers -------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.csv"))}


def feed_file(root: Path, feed: str, day: date) -> Path:
    return root / feed / day.isoformat() / f"{feed}_{day.isoformat()}.csv"


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def is_null(value: str) -> bool:
    return value.strip().lower() in NULLS


def parse_date(value: str) -> date:
    for pattern, fmt in DATE_FORMATS.values():
        if pattern.match(value):
            return datetime.strptime(value, fmt).date()
    raise AssertionError(f"unparseable date {value!r}")


def parse_ts(value: str) -> datetime:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            pass
    raise AssertionError(f"unparseable timestamp {value!r}")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def day_of_claim(claim_id: str) -> date:
    return datetime.strptime(claim_id[1:9], "%Y%m%d").date()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("baseline")
    generate(out, BASE_START, BASE_DAYS, CPD, seed=SEED)
    return out


@pytest.fixture(scope="module")
def fortnight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mon 2026-03-16 .. Tue 2026-03-31: weekdays, weekends and a month end."""
    out = tmp_path_factory.mktemp("fortnight")
    generate(out, date(2026, 3, 16), 16, 1000, seed=SEED)
    return out


# --- layout and headers --------------------------------------------------------------------


def contract_columns() -> dict[str, list[str]]:
    """The column lists of the landing-zone table in docs/contracts.md."""
    text = (REPO / "docs" / "contracts.md").read_text()
    found = {}
    for feed in COLUMNS:
        match = re.search(rf"^\| {feed} \| ([^|]+) \|", text, flags=re.M)
        assert match, feed
        found[feed] = [c.strip() for c in match.group(1).split(",")]
    return found


def test_layout_and_exact_headers(baseline: Path) -> None:
    expected = contract_columns()
    assert {f: list(c) for f, c in COLUMNS.items()} == expected
    files = tree(baseline)
    assert len(files) == BASE_DAYS * 4
    for n in range(BASE_DAYS):
        day = BASE_START + timedelta(days=n)
        for feed, cols in expected.items():
            path = feed_file(baseline, feed, day)
            assert header(path) == cols
            assert path.read_bytes().startswith((",".join(cols) + "\n").encode())


def test_returns_written_paths(tmp_path: Path) -> None:
    written = generate(tmp_path, HIT, 1, 50, seed=1)
    assert [p.parent.parent.name for p in written] == ["employees", "plans", "claims", "companies"]
    # Nothing else is left behind (files are written under a temporary name, then renamed).
    assert sorted(written) == sorted(p for p in tmp_path.rglob("*") if p.is_file())


# --- determinism ---------------------------------------------------------------------------


def test_days_one_at_a_time_equal_together(tmp_path: Path) -> None:
    inject = [
        Injection("null_storm", date(2026, 3, 3)),
        Injection("duplicate_batch", date(2026, 3, 4)),
    ]
    together = tmp_path / "together"
    generate(together, date(2026, 3, 1), 4, CPD, seed=SEED, inject=inject)
    single = tmp_path / "single"
    for n in range(4):
        generate(single, date(2026, 3, 1) + timedelta(days=n), 1, CPD, seed=SEED, inject=inject)
    assert tree(together) == tree(single)
    assert len(tree(together)) == 17  # 4 days x 4 feeds + one resend


def test_deterministic_across_processes(tmp_path: Path) -> None:
    here = tmp_path / "here"
    generate(here, HIT, 2, CPD, seed=SEED, inject=[Injection("late_updates", HIT)])
    there = tmp_path / "there"
    code = (
        "import sys; from datetime import date; from pathlib import Path;"
        "from dqm_demo.generate import generate, Injection;"
        f"generate(Path(sys.argv[1]), date(2026, 3, 10), 2, {CPD}, seed={SEED},"
        " inject=[Injection('late_updates', date(2026, 3, 10))])"
    )
    subprocess.run([sys.executable, "-c", code, str(there)], check=True, cwd=REPO)
    mine = {k: hashlib.sha256(v).hexdigest() for k, v in tree(here).items()}
    theirs = {k: hashlib.sha256(v).hexdigest() for k, v in tree(there).items()}
    assert mine == theirs and len(mine) == 8


def test_duckdb_hash_is_stable() -> None:
    """The generator relies on hash() being the same in every process (and version)."""
    query = "SELECT hash(hash(7::BIGINT, 20522::BIGINT, 12::BIGINT, 7001::BIGINT))"
    row = duckdb.connect().execute(query).fetchone()
    assert row is not None
    code = f"import duckdb; print(duckdb.connect().execute({query!r}).fetchone()[0])"
    other = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert int(other.stdout) == row[0]
    # Pinned: a DuckDB upgrade that changes hash() changes every generated byte.
    assert row[0] == PINNED_HASH, f"DuckDB hash() changed: {row[0]}"


def test_seed_changes_output(tmp_path: Path) -> None:
    generate(tmp_path / "a", HIT, 1, CPD, seed=1)
    generate(tmp_path / "b", HIT, 1, CPD, seed=2)
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)


def test_salted_streams_are_independent() -> None:
    """Streams differing only by salt must not be correlated (multi-arg hash XORs)."""
    con = duckdb.connect()
    for macro in gen._macros(gen._Universe.build(SEED, CPD)):
        con.execute(macro)
    row = con.execute(
        "SELECT corr(u(5, i, 1), u(5, i, 2)), corr(u(5, i, 1), u(5, i + 1, 1)), "
        "avg(u(5, i, 1)), min(u(5, i, 1)), max(u(5, i, 1)) FROM range(50000) t(i)"
    ).fetchone()
    assert row is not None
    assert abs(row[0]) < 0.03 and abs(row[1]) < 0.03
    assert 0.49 < row[2] < 0.51 and row[3] >= 0 and row[4] < 1


# --- volumes -------------------------------------------------------------------------------


def test_seasonality_weekend_and_month_end(fortnight: Path) -> None:
    counts = {}
    for n in range(16):
        day = date(2026, 3, 16) + timedelta(days=n)
        ids = {r["claim_id"] for r in rows(feed_file(fortnight, "claims", day))}
        counts[day] = sum(1 for c in ids if day_of_claim(c) == day)
    month_end = [d for d in counts if d.day >= 29]
    weekend = [d for d in counts if d.weekday() >= 5 and d not in month_end]
    midweek = [d for d in counts if d.weekday() < 5 and d not in month_end]
    avg = {
        k: sum(counts[d] for d in v) / len(v)
        for k, v in {"weekend": weekend, "midweek": midweek}.items()
    }
    assert 950 <= avg["midweek"] <= 1050
    assert max(counts[d] for d in weekend) < min(counts[d] for d in midweek)
    assert 0.35 < avg["weekend"] / avg["midweek"] < 0.45
    # Mon 30 and Tue 31 are month-end weekdays: ~1.3x.
    for d in (date(2026, 3, 30), date(2026, 3, 31)):
        assert counts[d] > max(counts[x] for x in midweek)
        assert 1.2 < counts[d] / avg["midweek"] < 1.4


# --- referential integrity and snapshots ---------------------------------------------------


def test_claims_reference_existing_employee_and_plan(fortnight: Path) -> None:
    checked = 0
    for n in range(0, 16, 3):
        day = date(2026, 3, 16) + timedelta(days=n)
        employees = {r["employee_id"]: r for r in rows(feed_file(fortnight, "employees", day))}
        plans = {r["plan_id"]: r for r in rows(feed_file(fortnight, "plans", day))}
        for claim in rows(feed_file(fortnight, "claims", day)):
            emp = employees[claim["employee_id"]]
            plan = plans[claim["plan_id"]]
            assert plan["employee_id"] == claim["employee_id"]
            service = parse_date(claim["service_date"])
            received = parse_date(claim["received_date"])
            assert 0 <= (received - service).days <= 30
            assert received <= day and parse_ts(claim["updated_at"]).date() == day
            assert parse_date(emp["hire_date"]) <= parse_date(plan["start_date"]) < service
            assert is_null(plan["end_date"]) or parse_date(plan["end_date"]) >= service
            assert re.fullmatch(r"\d+\.\d{2}", claim["amount"]) and float(claim["amount"]) > 0
            checked += 1
    assert checked > 3000


def test_claim_ids_unique_per_day_except_exact_duplicates(fortnight: Path) -> None:
    day = date(2026, 3, 31)
    text = feed_file(fortnight, "claims", day).read_text().splitlines()[1:]
    by_id: dict[str, set[str]] = {}
    for line in text:
        by_id.setdefault(line.split(",")[0], set()).add(line)
    assert all(len(v) == 1 for v in by_id.values())  # repeats are exact duplicates
    assert len(text) > len(by_id)  # and there are some


def test_updates_carry_original_identity(fortnight: Path) -> None:
    originals: dict[str, dict[str, str]] = {}
    for n in range(16):
        day = date(2026, 3, 16) + timedelta(days=n)
        for r in rows(feed_file(fortnight, "claims", day)):
            if day_of_claim(r["claim_id"]) == day:
                originals[r["claim_id"]] = r
    matched = 0
    for n in range(10, 16):
        day = date(2026, 3, 16) + timedelta(days=n)
        for upd in rows(feed_file(fortnight, "claims", day)):
            received = day_of_claim(upd["claim_id"])
            if received == day:
                continue
            assert 1 <= (day - received).days <= 10
            orig = originals[upd["claim_id"]]
            for col in (
                "plan_id",
                "employee_id",
                "service_date",
                "received_date",
                "diagnosis_code",
                "is_in_network",
                "notes",
            ):
                assert upd[col] == orig[col], col
            assert upd["status"] != orig["status"]
            assert 0 < float(upd["amount"]) < float(orig["amount"])
            assert parse_ts(upd["updated_at"]) > parse_ts(orig["updated_at"])
            matched += 1
    assert matched >= 30  # ~1% of ~1000 a day over 6 days


def test_snapshots_grow_and_changes_bump_updated_at(tmp_path: Path) -> None:
    early, late = date(2025, 6, 1), date(2027, 6, 1)
    generate(tmp_path, early, 1, 2000, seed=SEED)
    generate(tmp_path, late, 1, 2000, seed=SEED)
    emp_a = {r["employee_id"]: r for r in rows(feed_file(tmp_path, "employees", early))}
    emp_b = {r["employee_id"]: r for r in rows(feed_file(tmp_path, "employees", late))}
    assert set(emp_a) < set(emp_b)  # new hires keep appearing
    changed = 0
    for eid, a in emp_a.items():
        b = emp_b[eid]
        assert parse_date(a["hire_date"]) <= early and parse_ts(a["updated_at"]).date() <= early
        assert a["hire_date"] == b["hire_date"]
        terminated = not is_null(b["termination_date"])
        assert (b["is_active"].lower() in {"n", "false", "0", "no"}) == terminated
        if a != b:
            changed += 1
            assert parse_ts(b["updated_at"]) > parse_ts(a["updated_at"])
        else:
            assert a["updated_at"] == b["updated_at"]
    assert changed > 10
    plans_a = {r["plan_id"]: r for r in rows(feed_file(tmp_path, "plans", early))}
    plans_b = {r["plan_id"]: r for r in rows(feed_file(tmp_path, "plans", late))}
    premium_changes = 0
    for pid, a in plans_a.items():
        b = plans_b[pid]
        assert a["start_date"] == b["start_date"]
        start = parse_date(a["start_date"])
        assert start >= parse_date(emp_a[a["employee_id"]]["hire_date"])
        assert is_null(a["end_date"]) or parse_date(a["end_date"]) > start
        if a["monthly_premium"] != b["monthly_premium"]:
            premium_changes += 1
            assert parse_ts(b["updated_at"]) > parse_ts(a["updated_at"])
    assert premium_changes > 10
    per_employee = Counter(r["employee_id"] for r in plans_b.values())
    assert set(per_employee.values()) == {1, 2}


# --- dirt ----------------------------------------------------------------------------------


def test_dirt_present(baseline: Path) -> None:
    days = [BASE_START + timedelta(days=n) for n in range(BASE_DAYS)]
    emps = [r for d in days for r in rows(feed_file(baseline, "employees", d))]
    plans = [r for d in days for r in rows(feed_file(baseline, "plans", d))]
    claims = [r for d in days for r in rows(feed_file(baseline, "claims", d))]
    companies = rows(feed_file(baseline, "companies", days[0]))

    eins = {e["company_ein"] for e in emps} | {c["company_ein"] for c in companies}
    assert any(re.fullmatch(r"\d{2}-\d{7}", e) for e in eins)
    assert any(re.fullmatch(r"\d{9}", e) for e in eins)
    assert any(re.fullmatch(r"\d{2} \d{7}", e) for e in eins)
    assert any(is_null(e["company_ein"]) for e in emps)

    nulls = {v for r in emps + plans + claims for v in r.values() if is_null(v)}
    assert {v.lower() for v in nulls} >= NULLS

    dates = [r[c] for r in emps for c in ("hire_date",)] + [
        r[c] for r in claims for c in ("service_date", "received_date")
    ]
    for name, (pattern, _) in DATE_FORMATS.items():
        assert any(pattern.match(v) for v in dates), name
    stamps = [r["updated_at"] for r in emps + claims]
    assert any("T" in s and s.endswith("Z") for s in stamps)
    assert any(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", s) for s in stamps)

    bools = {r["is_active"] for r in emps} | {r["is_in_network"] for r in claims}
    for pair in ({"y", "n"}, {"true", "false"}, {"1", "0"}, {"yes", "no"}):
        assert pair <= {b.lower() for b in bools}
    assert len({b for b in bools if b.lower() in {"true", "yes"}}) >= 3  # case varies

    emails = [e["email"] for e in emps]
    assert any(e != e.strip() for e in emails)
    assert any(e != e.lower() and e != e.upper() for e in emails)
    assert all(re.fullmatch(r"dept: \w+; level: L\d(; location: \w+)?", e["notes"]) for e in emps)
    assert any(re.fullmatch(r"auth: A\d{5}; visit: \w+", c["notes"]) for c in claims)

    domains = [c["domain"] for c in companies]
    assert any(re.fullmatch(r"[A-Z]\w*\.com", d) for d in domains)
    assert any(d.startswith("www.") for d in domains)
    assert any(d.startswith("https://www.") and d.endswith("/") for d in domains)

    for feed in ("employees", "plans", "claims"):
        total = repeated = 0
        for d in days:  # within each file: snapshots repeat rows across days by design
            lines = feed_file(baseline, feed, d).read_text().splitlines()[1:]
            total, repeated = total + len(lines), repeated + len(lines) - len(set(lines))
        assert 0 < repeated / total < 0.02, feed


def test_missing_ein_inferable_from_company_name_and_domain(baseline: Path) -> None:
    companies = rows(feed_file(baseline, "companies", HIT))
    by_name = {c["company_name"]: c for c in companies}
    bare = {
        re.sub(r"^(https://)?(www\.)?", "", c["domain"]).rstrip("/").lower(): c for c in companies
    }
    digits = {re.sub(r"\D", "", c["company_ein"]) for c in companies}
    for e in rows(feed_file(baseline, "employees", HIT)):
        company = by_name[e["company_name"]]
        assert bare[e["email"].strip().split("@")[1].lower()] is company
        if not is_null(e["company_ein"]):
            assert re.sub(r"\D", "", e["company_ein"]) == re.sub(r"\D", "", company["company_ein"])
            assert re.sub(r"\D", "", e["company_ein"]) in digits


def test_companies_identical_every_day(baseline: Path) -> None:
    shas = {
        sha(feed_file(baseline, "companies", BASE_START + timedelta(days=n)))
        for n in range(BASE_DAYS)
    }
    assert len(shas) == 1


def test_company_keys_unique_at_scale() -> None:
    """1,000 companies (20M claims a day): EINs, names and domains stay unique."""
    uni = gen._Universe.build(SEED, 20_000_000)
    con = duckdb.connect()
    for macro in gen._macros(uni):
        con.execute(macro)
    sql = gen._companies_sql(uni, None)
    row = con.execute(
        f"SELECT count(DISTINCT company_ein), count(DISTINCT regexp_replace(company_ein, '\\D', "
        f"'', 'g')), count(DISTINCT company_name), count(DISTINCT lower(domain)) "
        f"FROM (SELECT DISTINCT * FROM ({sql}))"
    ).fetchone()
    assert row == (1000, 1000, 1000, 1000)


# --- injections ----------------------------------------------------------------------------


def inject(tmp_path: Path, kind: str) -> Path:
    out = tmp_path / kind
    generate(out, BASE_START, BASE_DAYS, CPD, seed=SEED, inject=[Injection(kind, HIT)])
    return out


def assert_other_days_identical(base: Path, hit: Path, skip: set[str]) -> None:
    a, b = tree(base), tree(hit)
    for key in a.keys() | b.keys():
        if key in skip:
            continue
        assert a.get(key) == b.get(key), key


def hit_key(feed: str) -> str:
    return f"{feed}/{HIT.isoformat()}/{feed}_{HIT.isoformat()}.csv"


def claims_pair(baseline: Path, out: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    return rows(feed_file(baseline, "claims", HIT)), rows(feed_file(out, "claims", HIT))


def test_every_kind_is_covered() -> None:
    assert set(INJECTION_KINDS) == set(CHECKS)


def check_volume_surge(baseline: Path, out: Path) -> None:
    before, after = claims_pair(baseline, out)
    new_b = {r["claim_id"] for r in before if day_of_claim(r["claim_id"]) == HIT}
    new_a = {r["claim_id"] for r in after if day_of_claim(r["claim_id"]) == HIT}
    assert len(new_a) == 3 * len(new_b) and new_b < new_a


def check_dup_enrichment_key(baseline: Path, out: Path) -> None:
    before = rows(feed_file(baseline, "companies", HIT))
    after = rows(feed_file(out, "companies", HIT))
    assert len(after) == len(before) + 1
    names: dict[str, set[str]] = {}
    for c in after:
        names.setdefault(c["company_ein"], set()).add(c["company_name"])
    multi = [e for e, n in names.items() if len(n) > 1]
    assert len(multi) == 1 and len(names[multi[0]]) == 2
    assert all(b in after for b in before)


def check_duplicate_batch(baseline: Path, out: Path) -> None:
    prev = HIT - timedelta(days=1)
    resend = out / "claims" / HIT.isoformat() / f"claims_{prev.isoformat()}_resend.csv"
    original = feed_file(out, "claims", prev)
    assert sha(resend) != sha(original)
    assert header(resend) == header(original)
    a = sorted(resend.read_text().splitlines()[1:])
    b = sorted(original.read_text().splitlines()[1:])
    assert a == b and len(a) > 100
    assert (
        feed_file(out, "claims", HIT).read_bytes()
        == feed_file(baseline, "claims", HIT).read_bytes()
    )


def check_late_updates(baseline: Path, out: Path) -> None:
    before, after = claims_pair(baseline, out)
    assert after[: len(before)] == before
    late = after[len(before) :]
    assert round(0.05 * CPD) - 2 <= len(late) <= round(0.05 * CPD) + 3  # plus exact duplicates
    lags = {(HIT - day_of_claim(r["claim_id"])).days for r in late}
    assert min(lags) >= 20 and max(lags) <= 40
    # The originals are re-derivable: generate those days alone and find the same claims.
    sample = late[:3]
    scratch = out.parent / "late_originals"
    for upd in sample:
        received = day_of_claim(upd["claim_id"])
        generate(scratch, received, 1, CPD, seed=SEED)
        found = [
            r
            for r in rows(feed_file(scratch, "claims", received))
            if r["claim_id"] == upd["claim_id"]
        ]
        assert found and found[0]["service_date"] == upd["service_date"]
        assert found[0]["plan_id"] == upd["plan_id"] and found[0]["status"] != upd["status"]


def check_schema_drift(baseline: Path, out: Path) -> None:
    before, after = claims_pair(baseline, out)
    cols = header(feed_file(out, "claims", HIT))
    assert cols == [("claim_amount" if c == "amount" else c) for c in COLUMNS["claims"]]
    assert [r["claim_amount"] for r in after] == [r["amount"] for r in before]


def check_dropped_column(baseline: Path, out: Path) -> None:
    before, after = claims_pair(baseline, out)
    assert header(feed_file(out, "claims", HIT)) == [
        c for c in COLUMNS["claims"] if c != "diagnosis_code"
    ]
    assert after == [{k: v for k, v in r.items() if k != "diagnosis_code"} for r in before]


def check_retyped_column(baseline: Path, out: Path) -> None:
    before, after = claims_pair(baseline, out)
    assert [r["amount"] for r in after] == ["USD " + r["amount"] for r in before]


def check_null_storm(baseline: Path, out: Path) -> None:
    before, after = claims_pair(baseline, out)
    empty = sum(1 for r in after if r["employee_id"] == "")
    assert 0.5 < empty / len(after) < 0.7
    assert not any(r["employee_id"] == "" for r in before)
    strip = [{k: v for k, v in r.items() if k != "employee_id"} for r in after]
    assert strip == [{k: v for k, v in r.items() if k != "employee_id"} for r in before]


def check_logic_regression(baseline: Path, out: Path) -> None:
    before, after = claims_pair(baseline, out)
    assert [int(r["amount"]) for r in after] == [round(float(r["amount"]) * 100) for r in before]


def check_broken_file(baseline: Path, out: Path) -> None:
    data = feed_file(out, "plans", HIT).read_bytes()
    assert len(data) > 1000
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    first = data.split(b"\n")[0].decode("latin-1")
    assert "plan_id,employee_id" not in first
    with pytest.raises(duckdb.Error):
        duckdb.connect().execute(
            f"SELECT * FROM read_csv('{feed_file(out, 'plans', HIT)}', header=true)"
        ).fetchall()


def check_feed_stops(baseline: Path, out: Path) -> None:
    assert not feed_file(out, "claims", HIT).exists()
    assert not feed_file(out, "claims", HIT + timedelta(days=1)).exists()
    prev = HIT - timedelta(days=1)
    assert (
        feed_file(out, "claims", prev).read_bytes()
        == feed_file(baseline, "claims", prev).read_bytes()
    )
    for feed in ("employees", "plans", "companies"):
        for n in range(BASE_DAYS):
            day = BASE_START + timedelta(days=n)
            assert (
                feed_file(out, feed, day).read_bytes()
                == feed_file(baseline, feed, day).read_bytes()
            )


def new_claim_ids(claims: list[dict[str, str]]) -> set[str]:
    return {r["claim_id"] for r in claims if day_of_claim(r["claim_id"]) == HIT}


def check_surge(factor: float) -> Callable[[Path, Path], None]:
    def check(baseline: Path, out: Path) -> None:
        before, after = claims_pair(baseline, out)
        new_b, new_a = new_claim_ids(before), new_claim_ids(after)
        assert len(new_a) == round(factor * len(new_b)) and new_b < new_a
        # The updates of earlier claims are the same ones.
        old_b = [r for r in before if day_of_claim(r["claim_id"]) < HIT]
        assert [r for r in after if day_of_claim(r["claim_id"]) < HIT] == old_b

    return check


def check_partial_day(baseline: Path, out: Path) -> None:
    before, after = claims_pair(baseline, out)
    assert after == before[: round(gen.PARTIAL_SHARE * len(before))]
    assert 0.39 < len(after) / len(before) < 0.41


def check_future_dates(baseline: Path, out: Path) -> None:
    before, after = claims_pair(baseline, out)
    assert len(after) == len(before)
    moved = 0
    for b, a in zip(before, after, strict=True):
        assert {k: v for k, v in a.items() if k != "service_date"} == {
            k: v for k, v in b.items() if k != "service_date"
        }
        shift = (parse_date(a["service_date"]) - parse_date(b["service_date"])).days
        assert shift in (0, 365)
        moved += shift == 365
        if shift:  # a year after it was received: implausible
            assert parse_date(a["service_date"]) > parse_date(a["received_date"]) + timedelta(300)
    assert 0.22 < moved / len(after) < 0.38


def check_same_cycle_resend(baseline: Path, out: Path) -> None:
    retry = out / "claims" / HIT.isoformat() / f"claims_{HIT.isoformat()}_retry.csv"
    main = feed_file(out, "claims", HIT)
    assert main.read_bytes() == feed_file(baseline, "claims", HIT).read_bytes()
    assert sha(retry) != sha(main) and header(retry) == header(main)
    lines = retry.read_text().splitlines()[1:]
    assert sorted(lines) == sorted(main.read_text().splitlines()[1:]) and len(lines) > 250
    assert lines != main.read_text().splitlines()[1:]  # another order


def check_benign_duplicates(baseline: Path, out: Path) -> None:
    before = feed_file(baseline, "claims", HIT).read_text().splitlines()
    after = feed_file(out, "claims", HIT).read_text().splitlines()
    assert set(after) == set(before) and after[0] == before[0]
    extra = Counter(after) - Counter(before)
    assert 0.03 < sum(extra.values()) / len(before) < 0.08
    # Order kept: dropping the extra copies gives the clean file back.
    seen: Counter[str] = Counter()
    kept = []
    for line in after:
        seen[line] += 1
        if seen[line] <= Counter(before)[line]:
            kept.append(line)
    assert kept == before


def check_corrections(baseline: Path, out: Path) -> None:
    main = feed_file(out, "claims", HIT)
    assert main.read_bytes() == feed_file(baseline, "claims", HIT).read_bytes()
    supplement = out / "claims" / HIT.isoformat() / f"claims_{HIT.isoformat()}_supplement.csv"
    assert header(supplement) == list(COLUMNS["claims"])
    fixes = rows(supplement)
    assert len({r["claim_id"] for r in fixes}) >= round(CPD / 6) - 2
    assert round(CPD / 6) <= len(fixes) <= round(CPD / 6) + 3  # plus exact duplicates
    assert {(HIT - day_of_claim(r["claim_id"])).days for r in fixes} <= {1, 2, 3, 4, 5}
    assert {r["status"] for r in fixes} <= set(gen._STATUS_UPDATE)
    # Later versions of claims that exist: re-derive three originals.
    scratch = out.parent / "correction_originals"
    for fix in fixes[:3]:
        received = day_of_claim(fix["claim_id"])
        generate(scratch, received, 1, CPD, seed=SEED)
        found = [r for r in rows(feed_file(scratch, "claims", received))
                 if r["claim_id"] == fix["claim_id"]]
        assert found and found[0]["service_date"] == fix["service_date"]
        assert float(fix["amount"]) < float(found[0]["amount"])
        assert parse_ts(fix["updated_at"]) > parse_ts(found[0]["updated_at"])


CHECKS = {
    "surge_in_band": check_surge(2.9),
    "weekend_surge": check_surge(1.5),
    "partial_day": check_partial_day,
    "future_dates": check_future_dates,
    "same_cycle_resend": check_same_cycle_resend,
    "benign_duplicates": check_benign_duplicates,
    "corrections": check_corrections,
    "volume_surge": check_volume_surge,
    "dup_enrichment_key": check_dup_enrichment_key,
    "duplicate_batch": check_duplicate_batch,
    "late_updates": check_late_updates,
    "schema_drift": check_schema_drift,
    "dropped_column": check_dropped_column,
    "retyped_column": check_retyped_column,
    "null_storm": check_null_storm,
    "logic_regression": check_logic_regression,
    "broken_file": check_broken_file,
    "feed_stops": check_feed_stops,
}
TOUCHES = {  # which files of the injected run may differ from the baseline
    "dup_enrichment_key": {hit_key("companies")},
    "duplicate_batch": {f"claims/{HIT.isoformat()}/claims_2026-03-09_resend.csv"},
    "broken_file": {hit_key("plans")},
    "feed_stops": {hit_key("claims"), "claims/2026-03-11/claims_2026-03-11.csv"},
    "same_cycle_resend": {f"claims/{HIT.isoformat()}/claims_{HIT.isoformat()}_retry.csv"},
    "corrections": {f"claims/{HIT.isoformat()}/claims_{HIT.isoformat()}_supplement.csv"},
}


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_injection(kind: str, baseline: Path, tmp_path: Path) -> None:
    out = inject(tmp_path, kind)
    assert_other_days_identical(baseline, out, TOUCHES.get(kind, {hit_key("claims")}))
    assert tree(out) != tree(baseline)
    CHECKS[kind](baseline, out)


def test_injection_without_day_hits_last_day(baseline: Path, tmp_path: Path) -> None:
    generate(
        tmp_path, BASE_START, BASE_DAYS, CPD, seed=SEED, inject=[Injection("logic_regression")]
    )
    last = BASE_START + timedelta(days=BASE_DAYS - 1)
    key = f"claims/{last.isoformat()}/claims_{last.isoformat()}.csv"
    assert_other_days_identical(baseline, tmp_path, {key})
    assert all(re.fullmatch(r"\d+", r["amount"]) for r in rows(feed_file(tmp_path, "claims", last)))


def test_injections_combine_on_one_day(baseline: Path, tmp_path: Path) -> None:
    both = [Injection("schema_drift", HIT), Injection("retyped_column", HIT)]
    generate(tmp_path, BASE_START, BASE_DAYS, CPD, seed=SEED, inject=both)
    before, after = claims_pair(baseline, tmp_path)
    assert [r["claim_amount"] for r in after] == ["USD " + r["amount"] for r in before]


# --- parsing, validation, progress ---------------------------------------------------------


def test_parse_injection() -> None:
    assert parse_injection("null_storm") == Injection("null_storm", None)
    assert parse_injection(" feed_stops@2026-03-05 ") == Injection("feed_stops", date(2026, 3, 5))
    for kind in INJECTION_KINDS:
        assert parse_injection(f"{kind}@2026-01-02").kind == kind
    with pytest.raises(ValueError, match=r"unknown kind 'nope'.*volume_surge"):
        parse_injection("nope@2026-03-05")
    for bad in ("null_storm@2026-02-30", "null_storm@20260305", "null_storm@", "null_storm@x"):
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            parse_injection(bad)
    with pytest.raises(ValueError, match="KIND"):
        parse_injection("@2026-03-05")
    with pytest.raises(ValueError, match="unknown injection kind"):
        Injection("nope")


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="days"):
        generate(tmp_path, HIT, 0, CPD)
    with pytest.raises(ValueError, match="claims_per_day"):
        generate(tmp_path, HIT, 1, 0)
    with pytest.raises(ValueError, match="within"):
        generate(tmp_path, date(2015, 6, 1), 1, CPD)
    assert not list(tmp_path.iterdir())


def test_progress_only_when_asked_or_tty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate(tmp_path / "a", HIT, 2, 20, progress=None)  # stderr is captured: not a tty
    generate(tmp_path / "b", HIT, 2, 20, progress=False)
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == ""
    generate(tmp_path / "c", HIT, 2, 20, progress=True)
    shown = capsys.readouterr()
    assert shown.out == ""
    assert "8/8" in shown.err and "2026-03-11 companies" in shown.err and "\r[" in shown.err
    assert io.StringIO(shown.err).read().endswith("\n")
