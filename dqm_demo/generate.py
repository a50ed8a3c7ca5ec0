"""Synthetic landing-zone feeds (employees, plans, claims, companies) with incident injection.

Everything is computed inside DuckDB from ``hash(seed, a, b, salt)`` pseudo-random numbers,
so each value is a pure function of (seed, claims_per_day, entity, day): a day's files do
not depend on which other days are generated with it, and a claim received on day D can be
re-derived on a later day to emit an update with the same identity. Rows come out of
``COPY (SELECT ... FROM range(n))`` with insertion order preserved, never a Python row loop.

Layout and dirt follow docs/contracts.md. Employees and plans are full daily snapshots,
claims a daily delta (plus ~1% updates of claims received 1-10 days earlier), companies the
enrichment file (same bytes every day). Days must lie on or after :data:`MIN_DAY`: the hire
history starts in 2015 and claims only reference employees hired at least 61 days before
the service date, so the plan had started by then.

Injections (``KIND[@YYYY-MM-DD]``; a day without one is byte-identical to a clean run):

- ``volume_surge``: 3x that day's claims (new, distinct claim ids).
- ``dup_enrichment_key``: the companies file repeats one EIN with a second, different company.
- ``duplicate_batch``: the previous day's claims are delivered again that day as
  ``claims/<day>/claims_<prev>_resend.csv`` (same rows, reversed order, other checksum).
- ``late_updates``: updates (~5% of volume) to claims received 20-40 days earlier.
- ``schema_drift``: claims column ``amount`` renamed ``claim_amount``;
  ``dropped_column``: ``diagnosis_code`` missing; ``retyped_column``: amount as ``USD 12.50``.
- ``null_storm``: ~60% of that day's claims have an empty ``employee_id``.
- ``logic_regression``: amounts in cents (x100, no decimals).
- ``broken_file``: that day's plans file is binary garbage with no header.
- ``feed_stops``: no claims file from that day on.

Issue 16's independent fault set (measured by bench/rehearse.py):

- ``surge_in_band``: 2.9x that day's new claims (inside a 3x row-count band).
- ``weekend_surge``: 1.5x that day's new claims (the rehearsal puts it on a Saturday).
- ``partial_day``: the claims file cut to its first 40% of rows (a partial upload).
- ``future_dates``: ~30% of the claims file's rows with a service_date 365 days later.
- ``same_cycle_resend``: the day's claims also landed as ``claims_<day>_retry.csv`` in
  the same folder (same rows, reversed order, other checksum), so one cycle sees both.
- ``benign_duplicates``: ~5% more exact duplicate rows in the claims file (staging drops
  them; not an incident).
- ``corrections``: an extra ``claims_<day>_supplement.csv`` with later versions (status,
  lower amount, that day's updated_at) of ~claims_per_day/6 claims received 1-5 days
  earlier (500 at 3,000/day; not an incident).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TextIO

import duckdb

FEEDS = ("employees", "plans", "claims", "companies")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


COLUMNS: dict[str, tuple[str, ...]] = {
    "employees": _words(
        "employee_id first_name last_name email company_name company_ein hire_date "
        "termination_date is_active notes updated_at"
    ),
    "plans": _words(
        "plan_id employee_id plan_name plan_type carrier start_date end_date monthly_premium "
        "is_cobra updated_at"
    ),
    "claims": _words(
        "claim_id plan_id employee_id service_date received_date amount status diagnosis_code "
        "is_in_network notes updated_at"
    ),
    "companies": _words("company_ein company_name domain industry headcount revenue updated_at"),
}

INJECTION_KINDS = (
    "volume_surge",
    "dup_enrichment_key",
    "duplicate_batch",
    "late_updates",
    "schema_drift",
    "null_storm",
    "logic_regression",
    "broken_file",
    "feed_stops",
    "dropped_column",
    "retyped_column",
    "surge_in_band",
    "weekend_surge",
    "partial_day",
    "future_dates",
    "same_cycle_resend",
    "benign_duplicates",
    "corrections",
)
SURGE_FACTORS = {"volume_surge": 3.0, "surge_in_band": 2.9, "weekend_surge": 1.5}
PARTIAL_SHARE = 0.4  # partial_day keeps this share of the claims file's rows
FUTURE_SHARE = 0.3  # future_dates moves this share of rows a year ahead
BENIGN_DUP_SHARE = 0.05  # benign_duplicates repeats this share of rows
CORRECTIONS_PER_CLAIMS = 1 / 6  # corrections file rows per claims_per_day

MIN_DAY = date(2016, 1, 1)
MAX_DAY = date(2099, 12, 31)

_EPOCH = date(1970, 1, 1)
_HIRE_BASE_EARLY = (date(2015, 1, 1) - _EPOCH).days
_HIRE_SPAN_EARLY = (date(2025, 1, 1) - date(2015, 1, 1)).days  # 2015..2024
_HIRE_BASE_LATE = (date(2025, 1, 1) - _EPOCH).days
_HIRE_SPAN_LATE = (date(2028, 1, 1) - date(2025, 1, 1)).days  # 2025..2027
_INT64 = 2**63

# Salts separate the pseudo-random streams. Only append: reordering changes every output.
_SALT_NAMES = _words(
    "co_prefix co_einfmt co_domfmt co_industry co_head co_rev co_revnull co_upd co_updfmt "
    "co_suffix co_dup dupk dupk_ind dupk_head co_w1 co_w2 co_digits "
    "e_company e_first e_last e_emailfmt e_einmiss e_einfmt e_einnull e_datefmt e_tsfmt "
    "e_email_chg e_email_day e_dept_chg e_dept_day e_term e_term_day e_termnull e_actsp "
    "e_dept0 e_dept1 e_level e_loc e_locname e_updsec e_dup "
    "p_count p_start p_endnull p_end p_type p_carrier p_tier p_base p_r1 p_r2 p_cobra "
    "p_cobrasp p_datefmt p_endnullsp p_tsfmt p_updsec p_dup "
    "c_volume c_lag c_late c_idx1 c_idx2 c_sd c_emp c_k c_a1 c_a2 c_adj1 c_adj2 c_status "
    "c_ustat1 c_ustat2 c_dxnull c_dxnullsp c_dx c_net c_netsp c_notenull c_notenullsp "
    "c_auth c_visit c_sdfmt c_rdfmt c_tsfmt c_sec c_usec1 c_usec2 c_nullstorm c_dup "
    "c_future c_benign c_corlag c_coridx c_corstat c_coradj c_corsec"
)
_SALTS = {name: 7001 + n for n, name in enumerate(_SALT_NAMES)}

_FIRST = _words(
    "James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa "
    "Anthony Betty Mark Sandra Donald Ashley Steven Emily Paul Donna Andrew Michelle Joshua "
    "Carol Kenneth Amanda"
)
_LAST = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson "
    "White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott "
    "Torres Nguyen Hill Flores"
)
# Both lists have 30 words and no word of _CO_W1 is a prefix of another, so company names
# and lower(w1 || w2) domains are unique (see the co_w2 macro).
_CO_W1 = _words(
    "Acme Blue Cedar Delta Evergreen Falcon Granite Harbor Iron Juniper Keystone Lumen "
    "Maple Northwind Orion Pioneer Quartz Redwood Summit Titan Unity Vertex Willow Xenon "
    "Yellowstone Zenith Atlas Beacon Cobalt Dune"
)
_CO_W2 = _words(
    "Ridge Labs Systems Works Health Logistics Foods Capital Energy Media Partners Dynamics "
    "Analytics Retail Motors Bio Networks Foundry Studios Supply Pharma Robotics Freight "
    "Brands Textiles Mining Software Hotels Farms Insurance"
)
_CO_SUFFIX = (" Inc", " LLC", " Corp", ", Inc.", " Group", " Co.")
_INDUSTRIES = _words(
    "Technology Healthcare Manufacturing Retail Finance Logistics Energy Media Hospitality "
    "Agriculture Education Construction"
)
_DEPTS = _words("Sales Engineering Finance HR Operations Marketing Support Legal")
_LOCATIONS = _words("NYC Austin Remote Chicago Denver Seattle")
_CARRIERS = {
    "medical": ("Aetna", "Cigna", "UnitedHealthcare", "Blue Cross Blue Shield", "Kaiser"),
    "dental": ("Delta Dental", "MetLife", "Guardian"),
    "vision": ("VSP", "EyeMed", "Davis Vision"),
}
_TIERS = {
    "medical": ("PPO Gold", "PPO Silver", "HMO Bronze", "HDHP"),
    "dental": ("Basic", "Plus"),
    "vision": ("Standard", "Premium"),
}
_DIAGNOSES = _words(
    "J06.9 M54.5 I10 E11.9 Z00.00 K21.9 F41.1 J45.909 R51 N39.0 M25.561 E78.5 H52.4 K02.9 "
    "Z01.00 S93.401A"
)
_VISITS = _words("outpatient inpatient office telehealth emergency pharmacy")
_STATUS_NEW = _words("received received received pending in_review")
_STATUS_UPDATE = _words("approved paid denied adjusted")
_TRUE = _words("Y y true TRUE True 1 yes Yes YES")
_FALSE = _words("N n false FALSE False 0 no No NO")
_NULLS = _words("NULL N/A none None null n/a NONE")

_KINDS_HINT = "expected one of " + ", ".join(INJECTION_KINDS)
_INJECTION_RE = re.compile(r"^(?P<kind>[^@]+)(?:@(?P<day>.*))?$")


@dataclass(frozen=True)
class Injection:
    """An incident to rehearse on one day (``day=None``: the last generated day)."""

    kind: str
    day: date | None = None

    def __post_init__(self) -> None:
        if self.kind not in INJECTION_KINDS:
            raise ValueError(f"unknown injection kind {self.kind!r}; {_KINDS_HINT}")


def parse_injection(text: str) -> Injection:
    """Parse ``KIND[@YYYY-MM-DD]`` (e.g. ``null_storm@2026-03-05``) into an :class:`Injection`."""
    match = _INJECTION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"bad injection {text!r}: expected KIND[@YYYY-MM-DD]")
    kind, raw_day = match["kind"].strip(), match["day"]
    if kind not in INJECTION_KINDS:
        raise ValueError(f"bad injection {text!r}: unknown kind {kind!r}; {_KINDS_HINT}")
    if raw_day is None:
        return Injection(kind)
    message = f"bad injection {text!r}: date must be a valid YYYY-MM-DD, got {raw_day!r}"
    # fromisoformat alone would also accept 20260305 and week dates.
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw_day):
        raise ValueError(message)
    try:
        day = date.fromisoformat(raw_day)
    except ValueError:
        raise ValueError(message) from None
    return Injection(kind, day)


@dataclass(frozen=True)
class _Universe:
    """Sizes of the synthetic world; a pure function of (seed, claims_per_day)."""

    seed: int
    claims_per_day: int
    companies: int
    employees: int
    early: int  # employees hired 2015..2024 (ids 0..early-1); the rest 2025..2027
    id_width: int
    claim_width: int

    @classmethod
    def build(cls, seed: int, claims_per_day: int) -> _Universe:
        employees = max(200, claims_per_day // 10)
        return cls(
            seed=seed,
            claims_per_day=claims_per_day,
            companies=max(20, claims_per_day // 20_000),
            employees=employees,
            early=round(employees * 0.9),
            id_width=max(8, len(str(employees))),
            # Surge days hold 3x the busiest day; the width must not depend on injections.
            claim_width=max(9, len(str(claims_per_day * 5))),
        )


def _sql_list(values: Sequence[str]) -> str:
    """A DuckDB list literal of strings (values are module constants, quotes escaped anyway)."""
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _day_number(day: date) -> int:
    return (day - _EPOCH).days


def _macros(uni: _Universe) -> list[str]:
    """SQL macros shared by all feeds: the universe as pure functions of ids and days."""
    s = _SALTS
    n1, n2 = len(_CO_W1), len(_CO_W2)
    e0, e1 = uni.early, uni.employees - uni.early
    w = uni.id_width
    return [
        "CREATE MACRO dt(d) AS (DATE '1970-01-01' + (d)::INTEGER)",
        # DuckDB combines multi-argument hashes by XOR-ing in the last one, so streams that
        # differ only in salt would be correlated; hashing again mixes them. The 53 high bits
        # make an exactly representable double in [0, 1).
        f"CREATE MACRO u(a, b, s) AS ((hash(hash({uni.seed}::BIGINT, (a)::BIGINT, (b)::BIGINT, "
        "(s)::BIGINT)) >> 11)::DOUBLE / 9007199254740992.0)",
        "CREATE MACRO ri(a, b, s, n) AS floor(u(a, b, s) * (n))::BIGINT",
        "CREATE MACRO pick(lst, a, b, s) AS lst[1 + ri(a, b, s, len(lst))]",
        "CREATE MACRO fmt_date(d, f) AS CASE f WHEN 0 THEN strftime(d, '%Y-%m-%d') "
        "WHEN 1 THEN strftime(d, '%m/%d/%Y') WHEN 2 THEN strftime(d, '%Y%m%d') "
        "ELSE strftime(d, '%d-%b-%Y') END",
        "CREATE MACRO date_fmt(x) AS CASE WHEN x < 0.55 THEN 0 WHEN x < 0.7 THEN 1 "
        "WHEN x < 0.85 THEN 2 ELSE 3 END",
        "CREATE MACRO fmt_ts(d, secs, iso) AS CASE WHEN iso "
        "THEN strftime(dt(d)::TIMESTAMP + to_seconds(secs), '%Y-%m-%dT%H:%M:%SZ') "
        "ELSE strftime(dt(d)::TIMESTAMP + to_seconds(secs), '%Y-%m-%d %H:%M:%S') END",
        f"CREATE MACRO fmt_bool(b, x) AS CASE "
        f"WHEN b THEN {_sql_list(_TRUE)}[1 + floor(x * {len(_TRUE)})::BIGINT] "
        f"ELSE {_sql_list(_FALSE)}[1 + floor(x * {len(_FALSE)})::BIGINT] END",
        # NULL is written as an empty field; the other spellings are literal text.
        f"CREATE MACRO null_sp(x) AS CASE WHEN x < 0.4 THEN NULL "
        f"ELSE {_sql_list(_NULLS)}[1 + floor((x - 0.4) / 0.6 * {len(_NULLS)})::BIGINT] END",
        # Companies: unique names/domains from two word lists, unique EINs (bijective digits).
        f"CREATE MACRO co_w1(j) AS {_sql_list(_CO_W1)}"
        f"[1 + ((j) + ri(0, -1, {s['co_w1']}, {n1})) % {n1}]",
        # (j % n1, (j // n1 + 7 * j) % n2) is a bijection on 0..n1*n2-1 that mixes both words.
        f"CREATE MACRO co_w2(j) AS {_sql_list(_CO_W2)}"
        f"[1 + ((j) // {n1} + 7 * (j) + ri(0, -1, {s['co_w2']}, {n2})) % {n2}]",
        f"CREATE MACRO co_num(j) AS CASE WHEN (j) < {n1 * n2} THEN '' "
        f"ELSE ((j) // {n1 * n2} + 1)::VARCHAR END",
        "CREATE MACRO co_name(j) AS co_w1(j) || ' ' || co_w2(j) "
        "|| CASE WHEN co_num(j) = '' THEN '' ELSE ' ' || co_num(j) END "
        f"|| pick({_sql_list(_CO_SUFFIX)}, j, -1, {s['co_suffix']})",
        "CREATE MACRO co_domain(j) AS lower(co_w1(j) || co_w2(j) || co_num(j)) || '.com'",
        "CREATE MACRO co_domain_mixed(j) AS co_w1(j) || co_w2(j) || co_num(j) || '.COM'",
        f"CREATE MACRO co_ein(j, f) AS (10 + ri(j, -1, {s['co_prefix']}, 90))::VARCHAR "
        "|| CASE f WHEN 0 THEN '-' WHEN 1 THEN '' ELSE ' ' END "
        f"|| lpad((((j) * 2718281 + ri(0, -1, {s['co_digits']}, 10000000)) % 10000000)::VARCHAR, "
        "7, '0')",
        f"CREATE MACRO co_ein_fmt(j) AS CASE WHEN u(j, -1, {s['co_einfmt']}) < 0.7 THEN 0 "
        f"WHEN u(j, -1, {s['co_einfmt']}) < 0.85 THEN 1 ELSE 2 END",
        # Employees: ids are assigned in hire order, so "hired on or before d" is a prefix.
        f"CREATE MACRO hire_day(i) AS CASE WHEN (i) < {e0} "
        f"THEN {_HIRE_BASE_EARLY} + ((i) * {_HIRE_SPAN_EARLY}) // {e0} "
        f"ELSE {_HIRE_BASE_LATE} + (((i) - {e0}) * {_HIRE_SPAN_LATE}) // {max(e1, 1)} END",
        f"CREATE MACRO n_hired(d) AS CASE WHEN (d) < {_HIRE_BASE_EARLY} THEN 0 "
        f"WHEN (d) < {_HIRE_BASE_LATE} THEN least({e0}, "
        f"(((d) - {_HIRE_BASE_EARLY} + 1) * {e0} + {_HIRE_SPAN_EARLY - 1}) // {_HIRE_SPAN_EARLY}) "
        f"ELSE {e0} + least({e1}, (((d) - {_HIRE_BASE_LATE} + 1) * {e1} + {_HIRE_SPAN_LATE - 1}) "
        f"// {_HIRE_SPAN_LATE}) END",
        f"CREATE MACRO emp_id(i) AS 'E' || lpad((i)::VARCHAR, {w}, '0')",
        # Skewed: a few large employers, many small ones.
        f"CREATE MACRO company_of(i) AS "
        f"floor({uni.companies} * pow(u(i, 0, {s['e_company']}), 1.6))::BIGINT",
        # Plans: 1-2 per employee; plan 1 is medical and open-ended, plan 2 may end.
        f"CREATE MACRO n_plans(i) AS CASE WHEN u(i, 0, {s['p_count']}) < 0.5 THEN 2 ELSE 1 END",
        f"CREATE MACRO plan_start(i, k) AS hire_day(i) + CASE WHEN k = 1 "
        f"THEN ri(i, 1, {s['p_start']}, 31) ELSE ri(i, 2, {s['p_start']}, 61) END",
        f"CREATE MACRO plan_end(i, k) AS CASE "
        f"WHEN k = 1 OR u(i, k, {s['p_endnull']}) < 0.5 THEN NULL "
        f"ELSE plan_start(i, k) + 365 + ri(i, k, {s['p_end']}, 1096) END",
        f"CREATE MACRO plan_id(i, k) AS 'P' || lpad((i)::VARCHAR, {w}, '0') || '-' || (k)::VARCHAR",
        f"CREATE MACRO plan_type(i, k) AS CASE WHEN k = 1 THEN 'medical' "
        f"WHEN u(i, k, {s['p_type']}) < 0.6 THEN 'dental' ELSE 'vision' END",
        # Claims: weekday/weekend and month-end seasonality with +-3% noise.
        f"CREATE MACRO n_claims(d) AS greatest(1, round({uni.claims_per_day} "
        "* CASE WHEN dayofweek(dt(d)) IN (0, 6) THEN 0.4 ELSE 1.0 END "
        "* CASE WHEN day(dt(d)) > day(last_day(dt(d))) - 3 THEN 1.3 ELSE 1.0 END "
        f"* (0.97 + 0.06 * u(d, 0, {s['c_volume']}))))::BIGINT",
    ]


def _dup(key_a: str, key_b: str, salt: str) -> str:
    """Unnest expression repeating ~0.5% of rows (exact duplicates, adjacent)."""
    return f"unnest(CASE WHEN u({key_a}, {key_b}, {_SALTS[salt]}) < 0.005 THEN [0, 1] ELSE [0] END)"


def _companies_sql(uni: _Universe, dup_key_day: int | None) -> str:
    """The enrichment file; with ``dup_key_day`` one EIN also maps to a second company."""
    s = _SALTS
    base = f"""
        SELECT j, 0 AS extra, rep,
            co_ein(j, co_ein_fmt(j)) AS company_ein,
            co_name(j) AS company_name,
            CASE ri(j, -1, {s["co_domfmt"]}, 4)
                WHEN 0 THEN co_domain(j)
                WHEN 1 THEN replace(co_domain_mixed(j), '.COM', '.com')
                WHEN 2 THEN 'www.' || co_domain(j)
                ELSE 'https://www.' || co_domain(j) || '/' END AS domain,
            pick({_sql_list(_INDUSTRIES)}, j, -1, {s["co_industry"]}) AS industry,
            headcount::VARCHAR AS headcount,
            CASE WHEN u(j, -1, {s["co_revnull"]}) < 0.05 THEN null_sp(u(j, -2, {s["co_revnull"]}))
                ELSE (headcount * (80000 + ri(j, -1, {s["co_rev"]}, 320000)))::VARCHAR
                END AS revenue,
            fmt_ts({_day_number(date(2024, 1, 1))} + ri(j, -1, {s["co_upd"]}, 366),
                   ri(j, -2, {s["co_upd"]}, 86400), u(j, -1, {s["co_updfmt"]}) < 0.5) AS updated_at
        FROM (
            SELECT j, {_dup("j", "-1", "co_dup")} AS rep,
                floor(exp(ln(50) + u(j, -1, {s["co_head"]}) * (ln(50000) - ln(50))))::BIGINT
                    AS headcount
            FROM range({uni.companies}) t(j)
        )"""
    if dup_key_day is None:
        body = base
    else:
        d = dup_key_day
        body = f"""{base}
        UNION ALL
        SELECT j, 1 AS extra, 0 AS rep,
            co_ein(j, co_ein_fmt(j)) AS company_ein,
            co_w1(j + 11) || ' Holdings LLC' AS company_name,
            lower(co_w1(j + 11)) || 'holdings.com' AS domain,
            pick({_sql_list(_INDUSTRIES)}, j, {d}, {s["dupk_ind"]}) AS industry,
            (50 + ri(j, {d}, {s["dupk_head"]}, 5000))::VARCHAR AS headcount,
            NULL AS revenue,
            fmt_ts({d}, ri(j, {d}, {s["co_upd"]}, 86400), false) AS updated_at
        FROM (SELECT ri(-1, {d}, {s["dupk"]}, {uni.companies}) AS j)"""
    cols = ", ".join(COLUMNS["companies"])
    return f"SELECT {cols} FROM ({body}) ORDER BY j, extra, rep"


def _employees_sql(uni: _Universe, day: int) -> str:
    """Full snapshot of employees hired on or before ``day``, values as of ``day``."""
    s = _SALTS
    cols = ", ".join(COLUMNS["employees"])
    return f"""
    SELECT {cols} FROM (
        SELECT *, {_dup("i", str(day), "e_dup")} AS rep FROM (
        SELECT i,
            emp_id(i) AS employee_id,
            first AS first_name,
            last AS last_name,
            CASE ri(i, 0, {s["e_emailfmt"]}, 5)
                WHEN 0 THEN lower(local) || '@' || co_domain(c)
                WHEN 1 THEN local || '@' || co_domain_mixed(c)
                WHEN 2 THEN '  ' || lower(local) || '@' || co_domain(c) || ' '
                WHEN 3 THEN '  ' || local || '@' || co_domain_mixed(c) || ' '
                ELSE upper(local || '@' || co_domain(c)) END AS email,
            co_name(c) AS company_name,
            CASE WHEN u(i, 0, {s["e_einmiss"]}) < 0.06 THEN null_sp(u(i, 0, {s["e_einnull"]}))
                ELSE co_ein(c, ri(i, 0, {s["e_einfmt"]}, 3)) END AS company_ein,
            fmt_date(dt(hd), df) AS hire_date,
            CASE WHEN terminated THEN fmt_date(dt(td), df)
                ELSE null_sp(u(i, 0, {s["e_termnull"]})) END AS termination_date,
            fmt_bool(NOT terminated, u(i, 0, {s["e_actsp"]})) AS is_active,
            'dept: ' || CASE WHEN dept_changed THEN dept1 ELSE dept0 END
                || '; level: L' || (level + dept_changed::INTEGER)::VARCHAR
                || CASE WHEN u(i, 0, {s["e_loc"]}) < 0.3
                    THEN '; location: ' || pick({_sql_list(_LOCATIONS)}, i, 0, {s["e_locname"]})
                    ELSE '' END AS notes,
            fmt_ts(upd, ri(i, upd, {s["e_updsec"]}, 86400), u(i, 0, {s["e_tsfmt"]}) < 0.5)
                AS updated_at
        FROM (
            SELECT *,
                CASE WHEN email_changed
                    THEN substr(first, 1, 1) || '.' || last || i::VARCHAR
                    ELSE first || '.' || last || i::VARCHAR END AS local,
                greatest(hd, CASE WHEN email_changed THEN ed END,
                         CASE WHEN dept_changed THEN dd END,
                         CASE WHEN terminated THEN td END) AS upd
            FROM (
                SELECT *,
                    coalesce(ed <= {day}, false) AS email_changed,
                    coalesce(dd <= {day}, false) AS dept_changed,
                    coalesce(td <= {day}, false) AS terminated
                FROM (
                    SELECT i, hd,
                        company_of(i) AS c,
                        pick({_sql_list(_FIRST)}, i, 0, {s["e_first"]}) AS first,
                        pick({_sql_list(_LAST)}, i, 0, {s["e_last"]}) AS last,
                        date_fmt(u(i, 0, {s["e_datefmt"]})) AS df,
                        CASE WHEN u(i, 0, {s["e_email_chg"]}) < 0.15
                            THEN hd + 200 + ri(i, 0, {s["e_email_day"]}, 2000) END AS ed,
                        CASE WHEN u(i, 0, {s["e_dept_chg"]}) < 0.3
                            THEN hd + 100 + ri(i, 0, {s["e_dept_day"]}, 1500) END AS dd,
                        CASE WHEN u(i, 0, {s["e_term"]}) < 0.1
                            THEN hd + 90 + ri(i, 0, {s["e_term_day"]}, 2500) END AS td,
                        pick({_sql_list(_DEPTS)}, i, 0, {s["e_dept0"]}) AS dept0,
                        pick({_sql_list(_DEPTS)}, i, 1, {s["e_dept1"]}) AS dept1,
                        1 + ri(i, 0, {s["e_level"]}, 5) AS level
                    FROM (SELECT i, hire_day(i) AS hd FROM range(n_hired({day})) t(i))
                )
            )
        )))"""


def _plans_sql(uni: _Universe, day: int) -> str:
    """Full snapshot of the plans of employees hired on or before ``day``."""
    s = _SALTS
    cols = ", ".join(COLUMNS["plans"])
    carrier = " ".join(
        f"WHEN '{t}' THEN pick({_sql_list(c)}, i, k, {s['p_carrier']})"
        for t, c in _CARRIERS.items()
    )
    tier = " ".join(
        f"WHEN '{t}' THEN pick({_sql_list(v)}, i, k, {s['p_tier']})" for t, v in _TIERS.items()
    )
    return f"""
    SELECT {cols} FROM (
        SELECT *, {_dup("i * 2 + k", str(day), "p_dup")} AS rep FROM (
        SELECT i, k,
            plan_id(i, k) AS plan_id,
            emp_id(i) AS employee_id,
            carrier || ' ' || tier AS plan_name,
            ptype AS plan_type,
            carrier,
            fmt_date(dt(ps), df) AS start_date,
            CASE WHEN pe IS NULL THEN null_sp(u(i, k, {s["p_endnullsp"]}))
                ELSE fmt_date(dt(pe), df) END AS end_date,
            round(base * pow(1.07, coalesce(r1 <= {day}, false)::INTEGER
                             + coalesce(r2 <= {day}, false)::INTEGER), 2)::DECIMAL(18, 2)::VARCHAR
                AS monthly_premium,
            fmt_bool(u(i, k, {s["p_cobra"]}) < 0.03, u(i, k, {s["p_cobrasp"]})) AS is_cobra,
            fmt_ts(upd, ri(i * 2 + k, upd, {s["p_updsec"]}, 86400), u(i, k, {s["p_tsfmt"]}) < 0.5)
                AS updated_at
        FROM (
            SELECT *,
                CASE ptype {carrier} END AS carrier,
                CASE ptype {tier} END AS tier,
                CASE ptype WHEN 'medical' THEN 250 + 650 * u(i, k, {s["p_base"]})
                    WHEN 'dental' THEN 15 + 45 * u(i, k, {s["p_base"]})
                    ELSE 5 + 15 * u(i, k, {s["p_base"]}) END AS base,
                greatest(hd, CASE WHEN r1 <= {day} THEN r1 END, CASE WHEN r2 <= {day} THEN r2 END)
                    AS upd
            FROM (
                SELECT *,
                    -- Premium renewals on plan anniversaries, only while the plan runs.
                    CASE WHEN u(i, k, {s["p_r1"]}) < 0.6 AND (pe IS NULL OR ps + 365 < pe)
                        THEN ps + 365 END AS r1,
                    CASE WHEN u(i, k, {s["p_r2"]}) < 0.35 AND (pe IS NULL OR ps + 730 < pe)
                        THEN ps + 730 END AS r2
                FROM (
                    SELECT i, k, hire_day(i) AS hd, plan_type(i, k) AS ptype,
                        plan_start(i, k) AS ps, plan_end(i, k) AS pe,
                        date_fmt(u(i, k, {s["p_datefmt"]})) AS df
                    FROM (
                        SELECT i, unnest(CASE WHEN n_plans(i) = 2 THEN [1, 2] ELSE [1] END) AS k
                        FROM range(n_hired({day})) t(i)
                    )
                )
            )
        )))"""


@dataclass(frozen=True)
class _ClaimsShape:
    """Claim-content injections of one day."""

    surge: float = 1.0  # factor on the day's new claims
    late_updates: bool = False
    null_storm: bool = False
    cents: bool = False
    rename_amount: bool = False
    drop_diagnosis: bool = False
    amount_as_text: bool = False
    future_dates: bool = False
    benign_duplicates: bool = False

    @classmethod
    def of(cls, kinds: set[str]) -> _ClaimsShape:
        return cls(
            surge=max((SURGE_FACTORS[k] for k in kinds if k in SURGE_FACTORS), default=1.0),
            late_updates="late_updates" in kinds,
            null_storm="null_storm" in kinds,
            cents="logic_regression" in kinds,
            rename_amount="schema_drift" in kinds,
            drop_diagnosis="dropped_column" in kinds,
            amount_as_text="retyped_column" in kinds,
            future_dates="future_dates" in kinds,
            benign_duplicates="benign_duplicates" in kinds,
        )


@dataclass(frozen=True)
class _Mix:
    """Rows of a claims file by kind: new claims, updates (1-10 days), late updates
    (20-40 days), corrections (1-5 days; the supplement file only)."""

    new: int = 0
    updates: int = 0
    late: int = 0
    corrections: int = 0

    @classmethod
    def daily(cls, base_count: int, shape: _ClaimsShape) -> _Mix:
        """The day's claims file: its new claims (times a surge) and ~1% updates."""
        return cls(
            new=round(base_count * shape.surge),
            updates=round(base_count * 0.01),
            late=round(base_count * 0.05) if shape.late_updates else 0,
        )

    @property
    def total(self) -> int:
        return self.new + self.updates + self.late + self.corrections


def _claims_sql(uni: _Universe, day: int, mix: _Mix, shape: _ClaimsShape, reverse: bool) -> str:
    """Claims received on ``day`` plus updates of earlier claims (1-10 days, or 20-40 if late,
    or 1-5 for corrections).

    A claim's identity and original values depend only on (received day, index), so an
    update re-derives them and changes only status, amount and updated_at.
    """
    s = _SALTS
    nb, nu, nl = mix.new, mix.updates, mix.late
    amount = "round(amt * 100)::BIGINT::VARCHAR" if shape.cents else "amt::DECIMAL(18, 2)::VARCHAR"
    if shape.amount_as_text:
        amount = f"'USD ' || {amount}"
    employee = "emp_id(e)"
    service = "sd"
    if shape.future_dates:  # only the written value moves: every other column is unchanged
        future = f"u({day}, pos, {s['c_future']}) < {FUTURE_SHARE}"
        service = f"sd + CASE WHEN {future} THEN 365 ELSE 0 END"
    if shape.null_storm:
        employee = f"CASE WHEN u({day}, pos, {s['c_nullstorm']}) < 0.6 THEN NULL ELSE emp_id(e) END"
    select = [
        (
            "claim_id",
            f"'C' || strftime(dt(od), '%Y%m%d') || lpad(idx::VARCHAR, {uni.claim_width}, '0')",
        ),
        ("plan_id", "plan_id(e, k)"),
        ("employee_id", employee),
        ("service_date", f"fmt_date(dt({service}), date_fmt(u(od, idx, {s['c_sdfmt']})))"),
        ("received_date", f"fmt_date(dt(od), date_fmt(u(od, idx, {s['c_rdfmt']})))"),
        ("claim_amount" if shape.rename_amount else "amount", amount),
        ("status", "status"),
        (
            "diagnosis_code",
            f"CASE WHEN u(od, idx, {s['c_dxnull']}) < 0.04 "
            f"THEN null_sp(u(od, idx, {s['c_dxnullsp']})) "
            f"ELSE pick({_sql_list(_DIAGNOSES)}, od, idx, {s['c_dx']}) END",
        ),
        ("is_in_network", f"fmt_bool(u(od, idx, {s['c_net']}) < 0.85, u(od, idx, {s['c_netsp']}))"),
        (
            "notes",
            f"CASE WHEN u(od, idx, {s['c_notenull']}) < 0.1 "
            f"THEN null_sp(u(od, idx, {s['c_notenullsp']})) "
            f"ELSE 'auth: A' || lpad(ri(od, idx, {s['c_auth']}, 100000)::VARCHAR, 5, '0') "
            "|| '; visit: ' "
            f"|| pick({_sql_list(_VISITS)}, od, idx, {s['c_visit']}) END",
        ),
        ("updated_at", f"fmt_ts({day}, secs, u(od, idx, {s['c_tsfmt']}) < 0.5)"),
    ]
    if shape.drop_diagnosis:
        select = [(name, expr) for name, expr in select if name != "diagnosis_code"]
    projection = ",\n            ".join(f"{expr} AS {name}" for name, expr in select)
    order = " ORDER BY pos DESC, rep" if reverse else ""
    dup = _dup(str(day), "pos", "c_dup")
    if shape.benign_duplicates:
        dup = (f"unnest(CASE WHEN u({day}, pos, {s['c_dup']}) < 0.005 OR u({day}, pos, "
               f"{s['c_benign']}) < {BENIGN_DUP_SHARE} THEN [0, 1] ELSE [0] END)")
    return f"""
    SELECT {projection}
    FROM (
        SELECT *, {dup} AS rep FROM (
        SELECT *,
            CASE kind WHEN 0 THEN ri(od, idx, {s["c_sec"]}, 86400)
                WHEN 1 THEN ri({day}, slot, {s["c_usec1"]}, 86400)
                WHEN 2 THEN ri({day}, slot, {s["c_usec2"]}, 86400)
                ELSE ri({day}, slot, {s["c_corsec"]}, 86400) END AS secs,
            CASE kind WHEN 0 THEN pick({_sql_list(_STATUS_NEW)}, od, idx, {s["c_status"]})
                WHEN 1 THEN pick({_sql_list(_STATUS_UPDATE)}, {day}, slot, {s["c_ustat1"]})
                WHEN 2 THEN pick({_sql_list(_STATUS_UPDATE)}, {day}, slot, {s["c_ustat2"]})
                ELSE pick({_sql_list(_STATUS_UPDATE)}, {day}, slot, {s["c_corstat"]}) END
                AS status,
            -- Updates lower the amount by 5-50%; originals are >= 5.00 so it always changes.
            CASE kind WHEN 0 THEN amt0
                WHEN 1 THEN round(amt0 * (0.5 + 0.45 * u({day}, slot, {s["c_adj1"]})), 2)
                WHEN 2 THEN round(amt0 * (0.5 + 0.45 * u({day}, slot, {s["c_adj2"]})), 2)
                ELSE round(amt0 * (0.5 + 0.45 * u({day}, slot, {s["c_coradj"]})), 2) END AS amt
        FROM (
            SELECT *,
                CASE WHEN n_plans(e) = 2 AND u(od, idx, {s["c_k"]}) < 0.35
                    AND coalesce(plan_end(e, 2) >= sd, true) THEN 2 ELSE 1 END AS k,
                round(least(250000.0, greatest(5.0, exp(4.6 + 1.1
                    * sqrt(-2 * ln(1 - u(od, idx, {s["c_a1"]})))
                    * cos(2 * pi() * u(od, idx, {s["c_a2"]}))))), 2) AS amt0
            FROM (
                -- Only employees hired >= 61 days before service: their plans started before it.
                SELECT *, ri(od, idx, {s["c_emp"]}, n_hired(sd - 61)) AS e
                FROM (
                    SELECT *, od - floor(pow(u(od, idx, {s["c_sd"]}), 2) * 31)::BIGINT AS sd
                    FROM (
                        SELECT pos, kind, slot, od,
                            CASE kind WHEN 0 THEN slot
                                WHEN 1 THEN ri({day}, slot, {s["c_idx1"]}, n_claims(od))
                                WHEN 2 THEN ri({day}, slot, {s["c_idx2"]}, n_claims(od))
                                ELSE ri({day}, slot, {s["c_coridx"]}, n_claims(od)) END AS idx
                        FROM (
                            SELECT pos, kind, slot,
                                CASE kind WHEN 0 THEN {day}
                                    WHEN 1 THEN {day} - 1 - ri({day}, slot, {s["c_lag"]}, 10)
                                    WHEN 2 THEN {day} - 20 - ri({day}, slot, {s["c_late"]}, 21)
                                    ELSE {day} - 1 - ri({day}, slot, {s["c_corlag"]}, 5) END AS od
                            FROM (
                                SELECT pos, kind,
                                    pos - CASE kind WHEN 0 THEN 0 WHEN 1 THEN {nb}
                                        WHEN 2 THEN {nb + nu} ELSE {nb + nu + nl} END AS slot
                                FROM (
                                    SELECT pos, CASE WHEN pos < {nb} THEN 0
                                        WHEN pos < {nb + nu} THEN 1
                                        WHEN pos < {nb + nu + nl} THEN 2 ELSE 3 END AS kind
                                    FROM range({mix.total}) t(pos)
                                )
                            )
                        )
                    )
                )
            )
        ))){order}"""


def _garbage(seed: int, day: int) -> bytes:
    """Deterministic unreadable bytes: invalid UTF-8, NULs, no header, ';' junk."""
    stream = b"".join(hashlib.sha256(f"{seed}:{day}:{k}".encode()).digest() for k in range(128))
    return b"\xff\xfe\x00\x00PK\x03\x04\xc3\x28;plan;\x00\x9f" + stream + b"\x00;;\xfa\r\n"


class _Progress:
    """A one-line progress bar on stderr (only used when stderr is a terminal)."""

    def __init__(self, total: int, enabled: bool, stream: TextIO) -> None:
        self.total, self.done, self.enabled, self.stream = max(total, 1), 0, enabled, stream

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // self.total
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label:<32}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _resolve(inject: Sequence[Injection], last: date) -> dict[date, set[str]]:
    """Injections by day (``None`` -> ``last``)."""
    by_day: dict[date, set[str]] = {}
    for inj in inject:
        if inj.kind not in INJECTION_KINDS:
            raise ValueError(f"unknown injection kind {inj.kind!r}")
        by_day.setdefault(inj.day or last, set()).add(inj.kind)
    return by_day


def _partial(path: Path) -> Path:
    """Where a file is written before it appears (a watcher must never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.partial")


def _copy(con: duckdb.DuckDBPyConnection, sql: str, path: Path) -> Path:
    tmp = _partial(path)
    target = str(tmp).replace("'", "''")
    con.execute(f"COPY ({sql}) TO '{target}' (FORMAT csv, HEADER, DELIMITER ',')")
    tmp.replace(path)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    tmp = _partial(path)
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _validate(start: date, days: int, claims_per_day: int, seed: int) -> None:
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if claims_per_day < 1:
        raise ValueError(f"claims_per_day must be >= 1, got {claims_per_day}")
    if not -_INT64 <= seed < _INT64:
        raise ValueError("seed must fit in a signed 64-bit integer")
    if start < MIN_DAY or start + timedelta(days=days - 1) > MAX_DAY:
        raise ValueError(f"generated days must lie within {MIN_DAY}..{MAX_DAY}")


def generate(
    out: Path,
    start: date,
    days: int,
    claims_per_day: int,
    seed: int = 0,
    inject: Sequence[Injection] = (),
    progress: bool | None = None,
) -> list[Path]:
    """Write ``days`` days of landing files under ``out`` and return the paths written.

    Each day's bytes depend only on (seed, day, claims_per_day) and the injections given
    for that day (plus ``feed_stops`` on an earlier day, and the previous day's claim
    injections for a ``duplicate_batch`` resend).
    """
    _validate(start, days, claims_per_day, seed)
    out = Path(out)
    uni = _Universe.build(seed, claims_per_day)
    all_days = [start + timedelta(days=n) for n in range(days)]
    by_day = _resolve(inject, all_days[-1])
    stops = [d for d, kinds in by_day.items() if "feed_stops" in kinds]
    stop_day = min(stops) if stops else None
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(len(all_days) * len(FEEDS), show, sys.stderr)

    written: list[Path] = []
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET preserve_insertion_order = true")
        for macro in _macros(uni):
            con.execute(macro)
        for day in all_days:
            written += _generate_day(con, uni, out, day, by_day, stop_day, bar)
    finally:
        con.close()
    return written


def _generate_day(
    con: duckdb.DuckDBPyConnection,
    uni: _Universe,
    out: Path,
    day: date,
    by_day: dict[date, set[str]],
    stop_day: date | None,
    bar: _Progress,
) -> list[Path]:
    """Write one day's files (in feed order: employees, plans, claims, companies)."""
    kinds = by_day.get(day, set())
    num = _day_number(day)
    iso = day.isoformat()
    written: list[Path] = []

    def target(feed: str, name: str | None = None) -> Path:
        return out / feed / iso / (name or f"{feed}_{iso}.csv")

    written.append(_copy(con, _employees_sql(uni, num), target("employees")))
    bar.step(f"{iso} employees")

    plans = target("plans")
    if "broken_file" in kinds:
        written.append(_write_bytes(plans, _garbage(uni.seed, num)))
    else:
        written.append(_copy(con, _plans_sql(uni, num), plans))
    bar.step(f"{iso} plans")

    if stop_day is None or day < stop_day:
        written += _claims_files(con, uni, day, by_day, target)
    bar.step(f"{iso} claims")

    dup_key_day = num if "dup_enrichment_key" in kinds else None
    written.append(_copy(con, _companies_sql(uni, dup_key_day), target("companies")))
    bar.step(f"{iso} companies")
    return written


def _claims_files(
    con: duckdb.DuckDBPyConnection,
    uni: _Universe,
    day: date,
    by_day: dict[date, set[str]],
    target: Callable[[str, str | None], Path],
) -> list[Path]:
    """The day's claims file, plus the extra files its injections deliver with it."""
    kinds = by_day.get(day, set())
    num, iso = _day_number(day), day.isoformat()
    shape = _ClaimsShape.of(kinds)
    sql = _claims_sql(uni, num, _Mix.daily(_claims_count(con, num), shape), shape, reverse=False)
    if "partial_day" in kinds:
        sql = _head(con, sql, PARTIAL_SHARE)
    written = [_copy(con, sql, target("claims", None))]
    if "same_cycle_resend" in kinds:  # the upload job ran twice: same rows, other bytes
        again = _claims_sql(uni, num, _Mix.daily(_claims_count(con, num), shape), shape,
                            reverse=True)
        written.append(_copy(con, again, target("claims", f"claims_{iso}_retry.csv")))
    if "corrections" in kinds:
        mix = _Mix(corrections=max(1, round(uni.claims_per_day * CORRECTIONS_PER_CLAIMS)))
        fixes = _claims_sql(uni, num, mix, _ClaimsShape(), reverse=False)
        written.append(_copy(con, fixes, target("claims", f"claims_{iso}_supplement.csv")))
    if "duplicate_batch" in kinds:
        prev = day - timedelta(days=1)
        prev_num = _day_number(prev)
        prev_shape = _ClaimsShape.of(by_day.get(prev, set()))
        mix = _Mix.daily(_claims_count(con, prev_num), prev_shape)
        sql = _claims_sql(uni, prev_num, mix, prev_shape, reverse=True)
        written.append(_copy(con, sql, target("claims", f"claims_{prev.isoformat()}_resend.csv")))
    return written


def _head(con: duckdb.DuckDBPyConnection, sql: str, share: float) -> str:
    """``sql`` limited to its first ``share`` of rows (insertion order is preserved)."""
    row = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()
    assert row is not None
    return f"SELECT * FROM ({sql}) LIMIT {round(int(row[0]) * share)}"


def _claims_count(con: duckdb.DuckDBPyConnection, day: int) -> int:
    row = con.execute(f"SELECT n_claims({int(day)})").fetchone()
    assert row is not None
    return int(row[0])
