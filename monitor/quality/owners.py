"""One owner per property: which check computes a property that a dbt data test and a
monitor suite both check, so a cycle computes it once (README, "One owner per property").

A property is the uniqueness of a model's columns, one column's not-NULL, or one
column's relationship to another model's, read from the manifest's generic tests
(``unique``, ``not_null``, ``unique_combination_of_columns``, ``relationships``) and from
the model suites' expectations. Where both check it:

- the model feeds other nodes: dbt's test owns it, because its failure stops them
  inside the build (dbt skips a failed test's children). The suite's expectation is
  left out when the test reads every row the suite would (no ``where``, or the monitor's
  touched-rows ``where`` on a suite whose touched keys are exactly the rows above the
  watermark) and fails the build (severity ``error``);
- the model is a leaf: the suite owns it when it reads every row the test would (its
  touched keys include every row above the watermark, and every other row of those
  keys), and the cycle's build leaves the test out. ``dbt build`` run by hand still
  runs every test. A relationship is only ever the suite's (its check also fails on a
  NULL, which dbt's does not).

Anything else (another ``where``, a ``warn`` test the suite would not cover) keeps both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.core.columns import SEQ_COLUMN
from monitor.core.manifest import DataTest, Project
from monitor.quality.results import SuiteResult
from monitor.quality.suites import UNEXPECTED_ROWS, SuiteFile

UNIQUE, NOT_NULL, RELATIONSHIP = "unique", "not_null", "relationship"
#: The check name of a grain suite's uniqueness of its key (an unexpected-rows query).
KEY_UNIQUE_CHECK = "key_unique"
#: The monitor's touched-rows ``where`` (pipeline/dbt_project.yml): rows whose column
#: is above the watermark the cycle sets (DBT_MONITOR_TOUCHED_AFTER).
_TOUCHED_WHERE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*>\s*__monitor_touched_after__\s*")
_TEST_KINDS = {"unique": UNIQUE, "unique_combination_of_columns": UNIQUE, "not_null": NOT_NULL,
               "relationships": RELATIONSHIP}


@dataclass(frozen=True)
class Property:
    """``kind`` of ``columns`` on the model named ``model``."""

    model: str
    kind: str
    columns: frozenset[str]
    to: tuple[str, str] | None = None  # a relationship's parent model and column


@dataclass(frozen=True)
class Owners:
    """What the cycle leaves out, each property computed by its owner only."""

    #: dbt tests the cycle's build leaves out (a suite owns them), by name
    excluded: tuple[str, ...] = ()
    #: per suite, the checks left out (dbt's test owns them): check -> dbt test name
    by_dbt: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def assign(project: Project | None, suites: Sequence[SuiteFile]) -> Owners:
    """The owner of each property that a data test of ``project`` and one of the model
    ``suites`` both check (module docstring)."""
    if project is None:
        return Owners()
    by_model = {m.name: m for m in project.models.values() if m.resource_type == "model"}
    tested = _test_properties(project)
    excluded: list[str] = []
    by_dbt: dict[str, dict[str, str]] = {}
    for suite in suites:
        node = by_model.get(suite.model or "")
        if suite.kind == "contract" or node is None:
            continue
        feeds_others = bool(project.children(node.unique_id))
        for check, prop in suite_properties(suite):
            for test in tested.get(prop, []):
                if not feeds_others and not test.stores_failures and _suite_reads_all_of(
                        suite, test, prop.kind):
                    excluded.append(test.name)
                elif (prop.kind != RELATIONSHIP and test.severity == "error"
                      and _test_reads_all_of(test, suite, prop.kind)):
                    by_dbt.setdefault(suite.name, {})[check] = test.name
    return Owners(tuple(dict.fromkeys(excluded)), by_dbt)


def suite_properties(suite: SuiteFile) -> list[tuple[str, Property]]:
    """(check, property) of each expectation of ``suite`` that checks one: not-NULL of a
    column (all rows), uniqueness of columns, a grain suite's ``key_unique``, and a
    relationship its ``meta.relationship`` declares (``{column, to, field}``: the check
    fails on every row whose column has no match in ``to.field``, NULL included)."""
    out: list[tuple[str, Property]] = []
    model = suite.model or ""
    for i, e in enumerate(suite.expectations):
        kwargs: Mapping[str, Any] = e.get("kwargs", {})
        meta: Mapping[str, Any] = e.get("meta") or {}
        check = str(meta.get("check") or f"{e.get('type')}#{i}")
        if kwargs.get("row_condition") or kwargs.get("mostly", 1) != 1:
            continue
        rel = meta.get("relationship")
        if isinstance(rel, Mapping) and all(isinstance(rel.get(k), str)
                                            for k in ("column", "to", "field")):
            out.append((check, Property(model, RELATIONSHIP, frozenset([rel["column"]]),
                                        (rel["to"], rel["field"]))))
            continue
        kind, cols = _expectation_property(suite, str(e.get("type")), check, kwargs)
        if kind:
            out.append((check, Property(model, kind, frozenset(cols))))
    return out


def _expectation_property(suite: SuiteFile, kind: str, check: str,
                          kwargs: Mapping[str, Any]) -> tuple[str, Sequence[str]]:
    column = kwargs.get("column")
    if kind == "expect_column_values_to_not_be_null" and isinstance(column, str):
        return NOT_NULL, [column]
    if kind == "expect_column_values_to_be_unique" and isinstance(column, str):
        return UNIQUE, [column]
    if kind == "expect_compound_columns_to_be_unique":
        return UNIQUE, [str(c) for c in kwargs.get("column_list") or []]
    if kind == UNEXPECTED_ROWS and check == KEY_UNIQUE_CHECK and suite.kind == "grain":
        return UNIQUE, suite.key
    return "", ()


def _test_properties(project: Project) -> dict[Property, list[DataTest]]:
    out: dict[Property, list[DataTest]] = {}
    for test in project.tests.values():
        kind = _TEST_KINDS.get(test.kind)
        node = project.models.get(test.node)
        if kind is None or node is None or not test.columns:
            continue
        if kind in (NOT_NULL, RELATIONSHIP) and len(test.columns) != 1:
            continue  # of an expression: not one column's
        if kind == RELATIONSHIP and test.to is None:
            continue  # to a source, or written in a way not read here
        to = test.to if kind == RELATIONSHIP else None
        out.setdefault(Property(node.name, kind, frozenset(test.columns), to), []).append(test)
    return out


def _touched_column(test: DataTest) -> str | None:
    """The column of the monitor's touched-rows ``where``, if that is the test's."""
    m = _TOUCHED_WHERE.fullmatch(test.where or "")
    return m.group(1) if m else None


def _by_key(suite: SuiteFile) -> bool:
    """The suite reads the rows of its touched keys (a semi join or a key lookup): a row
    whose key is NULL matches no key, so it never reads one."""
    return suite.scope == "touched" and not suite.touched_by_row


def _suite_reads_all_of(suite: SuiteFile, test: DataTest, kind: str) -> bool:
    """Every row the test reads that can break the property is among the suite's rows
    (a uniqueness test ignores NULLs, as the suites' key checks do)."""
    if suite.scope != "touched":
        return True  # the whole table
    if kind == NOT_NULL and _by_key(suite):
        return False
    column = _touched_column(test)
    return (column is not None and column in suite.seq_columns
            and suite.touched_from in (None, suite.model))


def _test_reads_all_of(test: DataTest, suite: SuiteFile, kind: str) -> bool:
    """Every row the suite reads that can break the property is among the test's rows."""
    if test.where is None:
        return True
    if kind == NOT_NULL and _by_key(suite):
        return _touched_column(test) is not None  # the suite reads no NULL key at all
    return (suite.scope == "touched" and suite.touched_by_row
            and _touched_column(test) == SEQ_COLUMN)


@dataclass(frozen=True)
class VerifiedKeys:
    """A model's key found unique on every row of the keys touched above ``after`` (None:
    every key) by the cycle's grain check of it, whoever owned that check."""

    key: tuple[str, ...]
    seq_columns: tuple[str, ...]
    after: int | None

    def covers(self, key: Sequence[str], seq_columns: Sequence[str], after: int) -> bool:
        """Every key touched above ``after`` on ``seq_columns`` is among these."""
        return (set(key) == set(self.key) and set(seq_columns) <= set(self.seq_columns)
                and (self.after is None or self.after <= after))


def verified_keys(suites: Sequence[SuiteFile], results: Sequence[SuiteResult], hwm: int | None,
                  skip: Mapping[str, Mapping[str, str]]) -> dict[str, VerifiedKeys]:
    """Per model, the key its grain suite (``key_unique``, or the dbt test that owned it)
    found unique among the keys touched above ``hwm`` in this cycle: the profile's
    duplicate count reads this instead of counting again."""
    passed = {(r.suite, e.check) for r in results for e in r.results if e.success}
    out: dict[str, VerifiedKeys] = {}
    for s in suites:
        if s.kind != "grain" or s.model is None or s.touched_from not in (None, s.model):
            continue
        if (s.name, KEY_UNIQUE_CHECK) in passed or KEY_UNIQUE_CHECK in skip.get(s.name, {}):
            after = None if s.scope != "touched" else hwm
            out[s.model] = VerifiedKeys(s.key, s.seq_columns, after)
    return out
