"""Raw date and timestamp values of every shape, for the tests that check one engine's
parsing against DuckDB's ``try_strptime`` over the list of formats, and null spellings
for the tests of the null-cleaning fast path."""

from __future__ import annotations

import random


def edge_values() -> list[str]:
    """Dates and timestamps in every shape, valid and not (month 13, 30 February, day 0,
    29 February of a leap and a common year, 1-4 digit years, month names in any case),
    null spellings, and values of no shape."""
    values = {"", " ", "NULL", "n/a", "None", " 2026-01-05 ", "abc", "2026/01/05", "20260230"}
    for y in ("1", "0042", "2024", "2026", "9999", "10000"):
        for m in ("0", "1", "02", "12", "13"):
            for d in ("0", "1", "28", "29", "30", "31", "32"):
                values |= {f"{y}-{m}-{d}", f"{m}/{d}/{y}", f"{d}-Feb-{y}", f"{d}-dEc-{y}",
                           f"{d}-foo-{y}"}
                if len(y) == 4 and len(m) == 2 and len(d) == 2:
                    values.add(f"{y}{m}{d}")
                for t in ("00:00:00", "23:59:59", "24:00:00", "12:60:00", "1:2:3"):
                    values |= {f"{y}-{m}-{d} {t}", f"{y}-{m}-{d}T{t}Z", f"{y}-{m}-{d}T{t}"}
    return sorted(values)


def null_spelling_values(n: int) -> list[str]:
    """Null spellings padded with every kind of space, and random strings of letters,
    punctuation, spaces (ASCII, no-break, ideographic, tab) and accented letters."""
    rng = random.Random(22)
    pads = ["", " ", "  ", "\t", "\u00a0", "\u3000", "\u2009", "\n"]
    spellings = ["", "null", "NULL", "Null", "n/a", "N/A", "none", "NONE", "nulls", "nonE", "na"]
    values = [p + s + q for s in spellings for p in pads for q in pads]
    chars = "nulaoe/NULAOE xyz!~\u00a0\u3000\t\u00e9\u0301K\u212a"
    values += ["".join(rng.choice(chars) for _ in range(rng.randint(0, 9))) for _ in range(n)]
    return values

