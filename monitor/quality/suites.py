"""Suite files: GX 1.x suite JSON bound to a feed or a model by ``meta.monitor``.

Loading checks a suite as GX will run it and names the file on any error; the binding
and the ``{{placeholders}}`` a suite may use are in docs/contracts.md (Expectation suites).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from great_expectations.core import ExpectationSuite
from great_expectations.expectations.expectation import Expectation
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

from monitor.core.columns import BATCH_COLUMN, SEQ_COLUMN
from monitor.warehouse.engine import SUITE_FUNCTIONS

KINDS = ("contract", "grain", "behaviour")
SCOPES = ("touched", "table")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BATCH_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
# {{name(arg, ...)}}: a function the warehouse backend renders for its engine
FUNCTION = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\(([^{}()]*)\)\}\}")
COLUMN_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
# What any template starts with: a placeholder or function name after "{{" (a regex
# quantifier doubled for GX, "{{2}}", starts with a digit).
TEMPLATE_START = re.compile(r"\{\{[A-Za-z_]")
CONTRACT_PLACEHOLDERS = frozenset({"raw_schema", "model_schema", "feed", "batch_id",
                                   "batch_rows", "sample_modulus", "delivery_date"})
MODEL_PLACEHOLDERS = frozenset({"raw_schema", "model_schema", "model", "hwm"})
UNEXPECTED_ROWS = "unexpected_rows_expectation"


class SuiteError(ValueError):
    """A suite file that GX cannot load or whose ``meta.monitor`` is wrong (names the file)."""


@dataclass(frozen=True)
class Enrichment:
    """The enrichment side of a one-to-one check: ``key`` must be unique in ``relation``."""

    relation: str
    key: str
    model_column: str
    distinct: tuple[str, ...] = ()


@dataclass(frozen=True)
class OneToOne:
    """``model`` has exactly one row per distinct ``key`` of ``input``."""

    model: str
    input: str
    key: tuple[str, ...]
    enrichment: Enrichment | None = None
    seq_column: str = SEQ_COLUMN  # in the input and the enrichment relation


@dataclass(frozen=True)
class SuiteFile:
    """A loaded suite file: its GX expectations (as JSON) and its warehouse binding."""

    path: Path
    name: str
    kind: str
    feed: str | None
    model: str | None
    scope: str | None
    key: tuple[str, ...]
    expectations: tuple[dict[str, Any], ...] = field(repr=False)
    touched_from: str | None = None
    seq_columns: tuple[str, ...] = (SEQ_COLUMN,)
    dialect: str | None = None
    one_to_one: OneToOne | None = None

    @property
    def target(self) -> str:
        """The feed (contract) or model (grain, behaviour) the suite checks."""
        return self.feed or self.model or ""

    @property
    def placeholders(self) -> set[str]:
        """The ``{{names}}`` the expectations' kwargs use."""
        return {name for e in self.expectations for text in _strings(e.get("kwargs", {}))
                for name in PLACEHOLDER.findall(text)}

    @property
    def touched_by_row(self) -> bool:
        """The touched rows are exactly the rows above the watermark: the key includes
        ``_batch_id``, so all rows of a key share one batch and its ``_publish_seq``.
        A plain filter then reaches a view's raw scan, where the semi join on touched
        keys would evaluate the view over all history."""
        return (self.touched_from in (None, self.model) and self.seq_columns == (SEQ_COLUMN,)
                and BATCH_COLUMN in self.key)


def load_suites(suites_dir: Path) -> list[SuiteFile]:
    """Load and check every ``*.json`` suite in ``suites_dir`` (sorted by file name)."""
    folder = Path(suites_dir)
    if not folder.is_dir():
        raise SuiteError(f"suites folder not found: {folder}")
    suites = [load_suite(p) for p in sorted(folder.glob("*.json"))]
    seen: dict[str, Path] = {}
    for s in suites:
        if s.name in seen:
            raise SuiteError(f"{s.path}: suite name {s.name!r} already used by {seen[s.name]}")
        seen[s.name] = s.path
    return suites


def load_suite(path: Path) -> SuiteFile:
    """Load one suite file; raise :class:`SuiteError` naming the file and the problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuiteError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite file holds one JSON object")
    expectations = data.get("expectations")
    if not isinstance(expectations, list) or not all(isinstance(e, dict) for e in expectations):
        raise SuiteError(f"{path}: 'expectations' must be a list of objects")
    for i, e in enumerate(expectations):
        try:
            to_expectation(e)
        except Exception as exc:
            raise SuiteError(f"{path}: expectation #{i} ({e.get('type')!r}) is not valid "
                             f"for GX: {exc}") from exc
    try:
        suite = ExpectationSuite(**data)
    except Exception as exc:
        raise SuiteError(f"{path}: GX cannot load the suite: {exc}") from exc
    if len(suite.expectations) != len(expectations):  # GX logs and drops bad ones
        raise SuiteError(f"{path}: GX loaded {len(suite.expectations)} of "
                         f"{len(expectations)} expectations")
    return _bind(path, suite.name, data.get("meta"), tuple(copy.deepcopy(expectations)))


def _bind(path: Path, name: str, meta: Any, expectations: tuple[dict[str, Any], ...]) -> SuiteFile:
    mon = meta.get("monitor") if isinstance(meta, dict) else None
    if not isinstance(mon, dict):
        raise SuiteError(f"{path}: meta.monitor is missing (it binds the suite to a feed or model)")
    kind = mon.get("kind")
    if kind not in KINDS:
        raise SuiteError(f"{path}: meta.monitor.kind must be one of {KINDS}, got {kind!r}")
    dialect = _opt_ident(path, mon, "dialect")
    if kind == "contract":
        feed = _ident(path, mon, "feed")
        _check_placeholders(path, expectations, CONTRACT_PLACEHOLDERS)
        return SuiteFile(path, name, kind, feed, None, None, (), expectations, dialect=dialect)
    model = _ident(path, mon, "model")
    scope = mon.get("scope", "table")
    if scope not in SCOPES:
        raise SuiteError(f"{path}: meta.monitor.scope must be one of {SCOPES}, got {scope!r}")
    key = _keys(path, mon.get("key", []))
    if scope == "touched" and not key:
        raise SuiteError(f"{path}: meta.monitor.key is required when scope is 'touched'")
    _check_placeholders(path, expectations, MODEL_PLACEHOLDERS)
    return SuiteFile(
        path, name, kind, None, model, scope, key, expectations,
        touched_from=_opt_ident(path, mon, "touched_from"),
        seq_columns=_keys(path, mon.get("seq_columns", [SEQ_COLUMN]),
                          "meta.monitor.seq_columns") or (SEQ_COLUMN,),
        dialect=dialect,
        one_to_one=_one_to_one(path, mon.get("one_to_one")),
    )


def _one_to_one(path: Path, spec: Any) -> OneToOne | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise SuiteError(f"{path}: meta.monitor.one_to_one must be an object")
    where = "meta.monitor.one_to_one"
    enrichment = None
    e = spec.get("enrichment")
    if e is not None:
        if not isinstance(e, dict):
            raise SuiteError(f"{path}: {where}.enrichment must be an object")
        ekey = _ident(path, e, "key", f"{where}.enrichment")
        enrichment = Enrichment(
            relation=_ident(path, e, "relation", f"{where}.enrichment"),
            key=ekey,
            model_column=_opt_ident(path, e, "model_column", f"{where}.enrichment") or ekey,
            distinct=_keys(path, e.get("distinct", []), f"{where}.enrichment.distinct"),
        )
    key = _keys(path, spec.get("key"), f"{where}.key")
    if not key:
        raise SuiteError(f"{path}: {where}.key must name at least one column")
    return OneToOne(
        model=_ident(path, spec, "model", where),
        input=_ident(path, spec, "input", where),
        key=key,
        enrichment=enrichment,
        seq_column=_opt_ident(path, spec, "seq_column", where) or SEQ_COLUMN,
    )


def _ident(path: Path, obj: Mapping[str, Any], key: str, where: str = "meta.monitor") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not IDENTIFIER.match(value):
        raise SuiteError(f"{path}: {where}.{key} must be an identifier, got {value!r}")
    return value


def _opt_ident(
    path: Path, obj: Mapping[str, Any], key: str, where: str = "meta.monitor"
) -> str | None:
    return None if obj.get(key) is None else _ident(path, obj, key, where)


def _keys(path: Path, value: Any, where: str = "meta.monitor.key") -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(k, str) and IDENTIFIER.match(k)
                                              for k in items):
        raise SuiteError(f"{path}: {where} must be an identifier or a list of them, got {value!r}")
    return tuple(items)


def _check_placeholders(path: Path, expectations: Iterable[dict[str, Any]],
                        allowed: frozenset[str]) -> None:
    for i, e in enumerate(expectations):
        for text in _strings(e.get("kwargs", {})):
            for m in FUNCTION.finditer(text):
                try:
                    function_args(m.group(1), m.group(2))
                except ValueError as exc:
                    raise SuiteError(f"{path}: expectation #{i}: {exc}") from exc
            rest = PLACEHOLDER.sub("", FUNCTION.sub("", text))
            bad = TEMPLATE_START.search(rest)
            if bad:
                raise SuiteError(
                    f"{path}: expectation #{i}: not a placeholder or function call: "
                    f"{rest[bad.start():bad.start() + 40]!r} (docs/contracts.md)")
            unknown = sorted(set(PLACEHOLDER.findall(text)) - allowed)
            if unknown:
                raise SuiteError(
                    f"{path}: expectation #{i} uses unknown placeholder {{{{{unknown[0]}}}}} "
                    f"(allowed here: {', '.join(sorted(allowed))})"
                )


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def function_args(name: str, args: str) -> list[str]:
    """The checked arguments of ``{{name(args)}}``: a known function (the warehouse's
    ``SUITE_FUNCTIONS``), its number of arguments, each a column (``col``, ``alias.col``)."""
    if name not in SUITE_FUNCTIONS:
        raise ValueError(f"unknown function {{{{{name}(...)}}}} (known: "
                         f"{', '.join(sorted(SUITE_FUNCTIONS))})")
    parts = [a.strip() for a in args.split(",")] if args.strip() else []
    want = SUITE_FUNCTIONS[name]
    if (len(parts) != want) if want is not None else not parts:
        raise ValueError(f"{{{{{name}(...)}}}} takes {want or 'one or more'} argument(s), "
                         f"got {len(parts)}")
    for a in parts:
        if not COLUMN_REF.match(a):
            raise ValueError(f"{{{{{name}(...)}}}}: argument {a!r} is not a column "
                             f"(name or alias.name)")
    return parts


#: Renders a suite function for the warehouse: (name, checked args) -> SQL.
Renderer = Callable[[str, Sequence[str]], str]


def fill_placeholders(value: Any, values: Mapping[str, str],
                      functions: Renderer | None = None) -> Any:
    """Replace ``{{name(args)}}`` functions (rendered by ``functions``, literal braces in
    the result doubled for GX) and ``{{name}}`` placeholders in every string of a kwargs
    tree."""
    if isinstance(value, str):
        if functions is not None:
            value = FUNCTION.sub(lambda m: _for_gx(
                functions(m.group(1), function_args(m.group(1), m.group(2)))), value)
        elif FUNCTION.search(value):
            raise ValueError("suite SQL calls a function but no warehouse renders it")
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
    if isinstance(value, dict):
        return {k: fill_placeholders(v, values, functions) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(v, values, functions) for v in value]
    return value


def _for_gx(sql: str) -> str:
    """``sql`` with its braces doubled: GX formats the query (``{batch}``)."""
    return sql.replace("{", "{{").replace("}", "}}")


def to_expectation(spec: Mapping[str, Any]) -> Expectation:
    config = ExpectationConfiguration(
        type=spec["type"], kwargs=dict(spec.get("kwargs", {})), meta=dict(spec.get("meta") or {}),
        description=spec.get("description"),
    )
    expectation = config.to_domain_obj()
    # Stock UnexpectedRowsExpectation raises on SQL errors; record them as failures instead.
    expectation.catch_exceptions = True
    return expectation
