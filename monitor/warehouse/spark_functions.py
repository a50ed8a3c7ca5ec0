"""Suite SQL in Spark SQL: the suite functions (``engine.SUITE_FUNCTIONS``) and the one
construct of the suites Spark's parser lacks (``similar to``).

The Spark backend's ``suite_function`` and ``suite_sql`` delegate here, so the Spark
renderings sit in the warehouse layer whichever module holds the backend. Each function
gives, for the same text, the value DuckDB's does (``tests/test_validate_spark.py``
compares them input by input). Spark 4 runs with ANSI mode on, where ``cast`` and
``to_date`` raise on bad input: only the ``try_`` forms are used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from monitor.warehouse.engine import plain_null_spelling

# DuckDB's four date formats ('%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y') and two
# timestamp formats: each shape is matched first (DuckDB's %Y reads 1 to 4 digits, a space
# any run of whitespace), normalized (year padded to 4 digits, whitespace one space), and
# Spark's parser then checks the calendar. (shape, normalized SQL of {v}, Spark format)
_LEAD_YEAR = "lpad({v}, length({v}) + 4 - length(regexp_extract({v}, '^[0-9]+', 0)), '0')"
_TAIL_YEAR = ("concat(regexp_extract({v}, '^(.*[-/])', 1), "
              "lpad(regexp_extract({v}, '[0-9]+$', 0), 4, '0'))")
_DATE_FORMATS = (
    ("^[0-9]{{1,4}}-[0-9]{{1,2}}-[0-9]{{1,2}}$", _LEAD_YEAR, "yyyy-M-d"),
    ("^[0-9]{{1,2}}/[0-9]{{1,2}}/[0-9]{{1,4}}$", _TAIL_YEAR, "M/d/yyyy"),
    ("^[0-9]{{8}}$", "{v}", "yyyyMMdd"),
    ("^[0-9]{{1,2}}-[A-Za-z]{{3}}-[0-9]{{1,4}}$", _TAIL_YEAR, "d-MMM-yyyy"),
)
_CLOCK = "[0-9]{{1,2}}:[0-9]{{1,2}}:[0-9]{{1,2}}"
_SPACED = _LEAD_YEAR.replace("{v}", "regexp_replace({v}, '\\\\s+', ' ')")
_TIMESTAMP_FORMATS = (
    ("^[0-9]{{1,4}}-[0-9]{{1,2}}-[0-9]{{1,2}}\\\\s+" + _CLOCK + "$", _SPACED, "yyyy-M-d H:m:s"),
    ("^[0-9]{{1,4}}-[0-9]{{1,2}}-[0-9]{{1,2}}T" + _CLOCK + "Z$", _LEAD_YEAR,
     "yyyy-M-d\\'T\\'H:m:s\\'Z\\'"),
)
_DIGITS = "[0-9]+(_[0-9]+)*"  # DuckDB reads single underscores between digits
_NUMBER = f"^[+-]?({_DIGITS}([.]({_DIGITS})?)?|[.]{_DIGITS})([eE][+-]?{_DIGITS})?$"
_INF = "^[+-]?(inf|infinity)$"  # DuckDB's spellings, any case; Spark reads no "-nan"


def _parsed(col: str, formats: Sequence[tuple[str, str, str]]) -> str:
    value = f"trim({col})"
    whens = " ".join(f"when {value} rlike '{shape.format(v=value)}' then try_to_timestamp("
                     f"{norm.format(v=value)}, '{fmt}')" for shape, norm, fmt in formats)
    return f"(case {whens} end)"


def _try_double(col: str) -> str:
    value = f"trim({col})"
    return (f"(case when {value} rlike '{_NUMBER}' then try_cast(replace({value}, '_', '') "
            f"as double) when lower({value}) rlike '{_INF}' then try_cast({value} as double) "
            f"when lower({value}) rlike '^[+-]?nan$' then cast('NaN' as double) end)")


_FUNCTIONS: dict[str, Callable[..., str]] = {
    "try_date": lambda col: f"cast({_parsed(col, _DATE_FORMATS)} as date)",
    "try_timestamp": lambda col: _parsed(col, _TIMESTAMP_FORMATS),
    "try_double": _try_double,
    "key_hash": lambda col: f"xxhash64(cast({col} as string))",
    # xxhash64 skips NULLs: each value's isnull() keeps (NULL, 'x') apart from ('x', NULL)
    "row_hash": lambda *cols: (f"xxhash64({', '.join(cols)}, "
                               f"{', '.join(f'isnull({c})' for c in cols)})"),
    "null_spelling": plain_null_spelling,
}


def spark_suite_function(name: str, args: Sequence[str]) -> str:
    """``{{name(args)}}`` in Spark SQL (``Backend.suite_function``; args are checked
    column references)."""
    return _FUNCTIONS[name](*args)


# `x similar to 'pattern'` (SQL's regular expressions, the whole string must match).
_SIMILAR = re.compile(r"\bsimilar\s+to\s+'((?:[^']|'')*)'", re.IGNORECASE)


def similar_to_regex(pattern: str) -> str:
    """A SQL ``similar to`` pattern as a Java regular expression matching the whole
    string: ``%`` and ``_`` are wildcards, ``.`` is literal; brackets, ``|``, ``*``,
    ``+``, ``?``, ``{m,n}`` and groups mean what they mean in a regular expression."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
            out.append(ch)
        elif ch == "[":
            in_class = True
            out.append(ch)
        elif ch == "%":
            out.append("(?s:.*)")
        elif ch == "_":
            out.append("(?s:.)")
        elif ch in ".^$":
            out.append("\\" + ch)
        else:
            out.append(ch)
        i += 1
    return f"^(?:{''.join(out)})$"


def spark_suite_sql(sql: str) -> str:
    """Suite SQL as Spark's parser reads it: ``similar to '<p>'`` becomes ``rlike`` of
    the same whole-string pattern (backslashes doubled for Spark's string literal). Java's
    ``$`` also matches before a final line break; such values fail the suites' other
    checks (trimmed) and none were seen."""

    def to_rlike(m: re.Match[str]) -> str:
        regex = similar_to_regex(m.group(1).replace("''", "'"))
        return "rlike '" + regex.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return _SIMILAR.sub(to_rlike, sql)
