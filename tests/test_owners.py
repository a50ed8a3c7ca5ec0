"""One owner per property (monitor.quality.owners): which of a dbt test and a monitor
suite computes a property both check, from a manifest document and suite files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitor.core.manifest import column_names, parse_manifest
from monitor.quality import owners
from monitor.quality.results import ExpectationResult, SuiteResult
from monitor.quality.suites import SuiteFile

TOUCHED = "_publish_seq > __monitor_touched_after__"


def _model(name: str, deps: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"unique_id": f"model.p.{name}", "name": name, "resource_type": "model",
            "schema": "main", "config": {"materialized": "view"},
            "depends_on": {"nodes": [f"model.p.{d}" for d in deps]}}


def _test(name: str, model: str, kind: str, column: str, where: str | None = TOUCHED,
          **config: Any) -> dict[str, Any]:
    return {"unique_id": f"test.p.{name}", "name": name, "resource_type": "test",
            "attached_node": f"model.p.{model}", "column_name": column,
            "test_metadata": {"name": kind, "kwargs": {"column_name": column}},
            "config": {"where": where, "severity": "ERROR", **config},
            "depends_on": {"nodes": [f"model.p.{model}"]}}


def _suite(name: str, model: str, key: tuple[str, ...], seqs: tuple[str, ...],
           expectations: list[dict[str, Any]], scope: str = "touched") -> SuiteFile:
    return SuiteFile(Path(f"{name}.json"), name, "grain", None, model, scope, key,
                     tuple(expectations), seq_columns=seqs)


def _not_null(column: str) -> dict[str, Any]:
    return {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": column},
            "meta": {"check": f"key_not_null_{column}"}}


UNIQUE_ROWS = {"type": "unexpected_rows_expectation",
               "kwargs": {"unexpected_rows_query": "select 1 from {batch} where false"},
               "meta": {"check": "key_unique"}}


def _project(*tests: dict[str, Any]) -> Any:
    nodes = {n["unique_id"]: n for n in (
        _model("int_view"), _model("int_wide"), _model("fct", ("int_view", "int_wide")),
        *tests)}
    return parse_manifest({"metadata": {"project_name": "p"}, "nodes": nodes})


FACT_SUITE = _suite("grain_fct", "fct", ("id",), ("_publish_seq", "_enriched_publish_seq"),
                    [_not_null("id"), UNIQUE_ROWS])
# keyed by batch, touched by its own rows: exactly the rows above the watermark
VIEW_SUITE = _suite("grain_int_view", "int_view", ("_batch_id", "_line_number"),
                    ("_publish_seq",), [_not_null("_batch_id"), UNIQUE_ROWS])
# touched also through its lookups: more rows than the test's
WIDE_SUITE = _suite("grain_int_wide", "int_wide", ("_batch_id", "_line_number"),
                    ("_publish_seq", "_enriched_publish_seq"), [UNIQUE_ROWS])


def test_a_leafs_suite_owns_uniqueness_and_dbt_owns_not_null_of_its_key() -> None:
    project = _project(_test("unique_fct_id", "fct", "unique", "id"),
                       _test("not_null_fct_id", "fct", "not_null", "id"),
                       _test("unique_fct_sk", "fct", "unique", "sk"))
    got = owners.assign(project, [FACT_SUITE])
    # the suite reads every row of each touched key, the test only the rows above it
    assert got.excluded == ("unique_fct_id",)
    # the suite's semi join on the key never reads a NULL key: the test's check counts
    assert got.by_dbt == {"grain_fct": {"key_not_null_id": "not_null_fct_id"}}


def test_a_model_with_children_keeps_its_test_which_owns_what_it_covers() -> None:
    concat = "_batch_id || ':' || _line_number"
    project = _project(_test("unique_view_rows", "int_view", "unique", concat),
                       _test("unique_wide_rows", "int_wide", "unique", concat))
    got = owners.assign(project, [VIEW_SUITE, WIDE_SUITE])
    assert got.excluded == ()  # their failure stops fct inside the build
    assert got.by_dbt == {"grain_int_view": {"key_unique": "unique_view_rows"}}
    # int_wide: the suite also reads rows touched through lookups; both keep checking


@pytest.mark.parametrize("config", [
    {"where": "status = 'open'"},  # another filter: no one knows which rows it reads
    {"severity": "warn"},  # its failure would not stop the build
])
def test_a_test_that_does_not_cover_the_suite_does_not_own_it(config: dict[str, Any]) -> None:
    project = _project(_test("unique_view_rows", "int_view", "unique",
                             "_batch_id || ':' || _line_number", **config))
    assert owners.assign(project, [VIEW_SUITE]) == owners.Owners()


def test_a_test_storing_its_failures_is_never_left_out() -> None:
    project = _project(_test("unique_fct_id", "fct", "unique", "id", store_failures=True))
    assert owners.assign(project, [FACT_SUITE]).excluded == ()


def test_an_unfiltered_test_owns_a_checked_property_of_a_model_with_children() -> None:
    project = _project(_test("unique_wide_rows", "int_wide", "unique",
                             "_batch_id || ':' || _line_number", where=None))
    assert owners.assign(project, [WIDE_SUITE]).by_dbt == {
        "grain_int_wide": {"key_unique": "unique_wide_rows"}}


def _relationship(name: str, severity: str = "warn") -> dict[str, Any]:
    t = _test(name, "fct", "relationships", "plan_id", severity=severity)
    t["test_metadata"]["kwargs"].update(to="ref('plans')", field="plan_id")
    return t


PLAN_EXISTS = {"type": "unexpected_rows_expectation",
               "kwargs": {"unexpected_rows_query": "select 1 from {batch} where false"},
               "meta": {"check": "plan_exists", "relationship": {
                   "column": "plan_id", "to": "plans", "field": "plan_id"}}}


def test_a_leafs_declared_relationship_is_the_suites() -> None:
    behaviour = _suite("behaviour_fct", "fct", ("id",), ("_publish_seq",), [PLAN_EXISTS])
    other = _relationship("relationships_fct_plan_id_other")
    other["test_metadata"]["kwargs"]["to"] = "ref('other')"
    project = _project(_relationship("relationships_fct_plan_id"), other)
    got = owners.assign(project, [behaviour])
    assert got.excluded == ("relationships_fct_plan_id",)  # not the one to another model
    assert got.by_dbt == {}


def test_a_relationship_is_never_dbts() -> None:
    """On a model with children the test stays, and so does the suite's check, which
    also fails on a NULL."""
    behaviour = _suite("behaviour_view", "int_view", ("_batch_id", "_line_number"),
                       ("_publish_seq",), [PLAN_EXISTS])
    t = _relationship("relationships_view_plan_id", severity="error")
    t["attached_node"] = "model.p.int_view"
    assert owners.assign(_project(t), [behaviour]) == owners.Owners()


def test_no_manifest_owns_nothing() -> None:
    assert owners.assign(None, [FACT_SUITE]) == owners.Owners()


@pytest.mark.parametrize(("expression", "names"), [
    ("claim_id", ("claim_id",)),
    ("_batch_id || ':' || _line_number", ("_batch_id", "_line_number")),
    ('"Order Id"', ("Order Id",)),
    ("lower(email)", ()),
    ("a + b", ()),
])
def test_column_names_of_a_test_argument(expression: str, names: tuple[str, ...]) -> None:
    assert column_names(expression) == names


def _result(suite: str, check: str, ok: bool) -> SuiteResult:
    e = ExpectationResult("unexpected_rows_expectation", None, "{}", ok, 0, 0, [], check)
    return SuiteResult(suite, "grain", "fct", None, ok, [e])


def test_verified_keys_come_from_the_owner_of_the_key_check() -> None:
    seqs = ("_publish_seq", "_enriched_publish_seq")
    found = owners.verified_keys([FACT_SUITE], [_result("grain_fct", "key_unique", True)],
                                 40, {})
    assert found == {"fct": owners.VerifiedKeys(("id",), seqs, 40)}
    assert found["fct"].covers(["id"], seqs, 40)
    assert found["fct"].covers(["id"], ["_publish_seq"], 45)  # fewer keys: inside
    assert not found["fct"].covers(["id"], seqs, 39)  # keys below what was checked
    assert not found["fct"].covers(["other"], seqs, 40)
    assert owners.verified_keys(
        [FACT_SUITE], [_result("grain_fct", "key_unique", False)], 40, {}) == {}
    # owned by a dbt test that passed in the build: verified all the same
    assert owners.verified_keys([VIEW_SUITE], [], None, {
        "grain_int_view": {"key_unique": "unique_view_rows"}}) == {
        "int_view": owners.VerifiedKeys(("_batch_id", "_line_number"), ("_publish_seq",), None)}
