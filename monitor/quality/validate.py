"""Great Expectations suites run as SQL in the warehouse: contracts, grain and behaviour.

Suites are stock GX 1.x suite JSON files (``expectations/*.json``); their binding to the
warehouse lives in the suite's ``meta.monitor``:

- ``{"kind": "contract", "feed": "claims"}``: runs on one batch's rows,
  ``select * from <raw_schema>.<feed> where _batch_id = '<id>'``;
- ``{"kind": "grain" | "behaviour", "model": "fct_claims", "scope": "touched" | "table",
  "key": ["claim_id"]}``: runs on a built model. ``touched`` takes only rows whose key is
  among the keys of rows with any of ``seq_columns`` (default ``["_publish_seq"]``) above the
  previous high-watermark (optional ``touched_from``: the relation carrying them, default the
  model itself). Without a high-watermark the whole table is used.
- optional ``"dialect": "duckdb"``: the suite's SQL is written for that warehouse only.
- optional ``"one_to_one"`` (model suites): the Validator appends an
  UnexpectedRowsExpectation that returns keys repeated in the model, input keys missing from
  it (or model keys missing from the input), and enrichment keys duplicated in the latest
  enrichment snapshot, each with its count (see :func:`one_to_one_query`).

On DuckDB, a suite whose rows are costly to read again (a view, or the touched filter,
a semi-join) first copies them once, with only the columns its checks read, into a scratch
in-memory database; every check then reads the copy. The copy is kept for the next suite
on the same rows when it holds the columns that suite reads (``checks.model_checks`` runs
a model's suites one after another; one copy at a time). Batches that are a plain filter on
a table (contracts) are read in place, where DuckDB's compressed storage is fastest.

Placeholders in suite SQL: ``{batch}`` is GX's own. GX's ``$PARAMETER`` replaces a whole
kwarg value only, so the rest is a string template filled here, with validated values only:
``{{raw_schema}}``, ``{{model_schema}}`` (identifiers), and for contracts ``{{feed}}``
(identifier), ``{{batch_id}}`` (``[A-Za-z0-9_.-]``), ``{{delivery_date}}`` (the batch's
delivery day, ``YYYY-MM-DD``), ``{{batch_rows}}`` (the batch's row
count) and ``{{sample_modulus}}`` (1 up to 400k rows, else rows // 200k: a check joining a
large batch with history may take the keys that hash to 0 modulo it, ~200k rows; a literal,
because DuckDB pushes a constant into the scan but not an expression computed in the
query), for model suites ``{{model}}`` and
``{{hwm}}`` (an integer; -1 without a high-watermark). Literal braces are doubled for GX
(a regex ``{2}`` is written ``{{2}}``), which is why placeholder names must start with a letter.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import great_expectations as gx
import sqlalchemy as sa
from great_expectations.core import ExpectationSuite
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations.expectation import Expectation
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
from sqlalchemy.schema import DropTable

from monitor.quality.gx_duckdb import (
    add_warehouse_datasource,
    attach_scratch,
    detach_scratch,
    dispose_datasource,
    keeps_one_connection,
    kept_connection,
)
from monitor.store.state import utcnow
from monitor.store.state import validation_results as state_validation_results

log = logging.getLogger(__name__)

KINDS = ("contract", "grain", "behaviour")
SCOPES = ("touched", "table")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BATCH_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
CONTRACT_PLACEHOLDERS = frozenset({"raw_schema", "model_schema", "feed", "batch_id",
                                   "batch_rows", "sample_modulus", "delivery_date"})
SAMPLE_ROWS = 200_000  # {{sample_modulus}}: about this many rows of a large batch
MODEL_PLACEHOLDERS = frozenset({"raw_schema", "model_schema", "model", "hwm"})
UNEXPECTED_ROWS = "unexpected_rows_expectation"
ONE_TO_ONE_CHECK = "one_to_one"
BATCH_KEY, BATCH_SEQ = "_batch_id", "_publish_seq"  # contracts.md: one seq per batch

# Declared with the other state tables so opening the state store never imports GX.
validation_results = state_validation_results


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
    seq_column: str = "_publish_seq"  # in the input and the enrichment relation


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
    seq_columns: tuple[str, ...] = ("_publish_seq",)
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
        return (self.touched_from in (None, self.model) and self.seq_columns == (BATCH_SEQ,)
                and BATCH_KEY in self.key)


@dataclass(frozen=True)
class ExpectationResult:
    """One expectation's outcome.

    ``observed_value``: GX's observed value (the unexpected row count for SQL expectations,
    the unexpected percent for column-map ones). ``unexpected_values``: at most ``sample``
    items (rows as dicts for SQL expectations). ``check``: the expectation's ``meta.check``.
    ``error``: the exception GX caught, if any (the expectation then counts as failed).
    """

    expectation_type: str
    column: str | None
    kwargs_json: str
    success: bool
    observed_value: Any
    unexpected_count: int | None
    unexpected_values: list[Any]
    check: str = ""
    error: str | None = None


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    kind: str
    target: str
    batch_id: str | None
    success: bool
    results: list[ExpectationResult]

    @property
    def failed(self) -> list[ExpectationResult]:
        return [r for r in self.results if not r.success]

    def describe(self, limit: int = 3) -> str:
        """One line for logs and hold reasons: which checks failed, with samples."""
        where = f"{self.target} batch {self.batch_id}" if self.batch_id else self.target
        if self.success:
            return f"{self.suite} passed on {where}"
        parts = []
        for r in self.failed[:limit]:
            said = r.observed_value.get("reason") if isinstance(r.observed_value, dict) else None
            what = r.error or said or (
                f"{r.unexpected_count} unexpected" if r.unexpected_count is not None
                else f"observed {r.observed_value!r}"
            )
            sample = f" e.g. {json.dumps(r.unexpected_values[:2], default=str)}" if (
                r.unexpected_values and not r.error) else ""
            parts.append(f"{r.check or r.expectation_type}: {what}{sample}")
        more = f" (+{len(self.failed) - limit} more)" if len(self.failed) > limit else ""
        return (f"{self.suite} failed {len(self.failed)}/{len(self.results)} on {where}: "
                + "; ".join(parts) + more)


@dataclass(frozen=True)
class FailedExpectation:
    """A failed expectation as recorded in the state store."""

    suite: str
    kind: str
    target: str
    batch_id: str | None
    expectation: str
    check: str | None
    column: str | None
    observed_value: Any
    unexpected_count: int | None
    unexpected_values: list[Any] | None
    error: str | None


# --------------------------------------------------------------------------- loading


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
            _to_expectation(e)
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
        seq_columns=_keys(path, mon.get("seq_columns", ["_publish_seq"]),
                          "meta.monitor.seq_columns") or ("_publish_seq",),
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
        seq_column=_opt_ident(path, spec, "seq_column", where) or "_publish_seq",
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


def _fill(value: Any, values: Mapping[str, str]) -> Any:
    """Replace ``{{name}}`` placeholders in every string of a kwargs tree."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    return value


def _to_expectation(spec: Mapping[str, Any]) -> Expectation:
    config = ExpectationConfiguration(
        type=spec["type"], kwargs=dict(spec.get("kwargs", {})), meta=dict(spec.get("meta") or {}),
        description=spec.get("description"),
    )
    expectation = config.to_domain_obj()
    # Stock UnexpectedRowsExpectation raises on SQL errors; record them as failures instead.
    expectation.catch_exceptions = True
    return expectation


# --------------------------------------------------------------------------- queries


def _relation(name: str, schema: str | None, *cols: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(c) for c in dict.fromkeys(cols)), schema=schema)


def contract_batch_query(raw_schema: str, feed: str, batch_id: str, dialect: sa.Dialect) -> str:
    """``select * from <raw_schema>.<feed> where _batch_id = '<batch_id>'`` for ``dialect``."""
    return _compile(contract_batch_select(raw_schema, feed, batch_id), dialect)


def contract_batch_select(raw_schema: str, feed: str, batch_id: str) -> sa.Select[Any]:
    """The rows of one batch of ``feed`` (every column)."""
    t = _relation(feed, raw_schema, "_batch_id")
    return sa.select(sa.text("*")).select_from(t).where(t.c._batch_id == batch_id)


def model_batch_query(suite: SuiteFile, schema: str, hwm: int | None, dialect: sa.Dialect) -> str:
    """Rows of the suite's model in scope: all, or those whose key was touched after ``hwm``.

    Touched: the key is among the keys of rows (of ``touched_from``, default the model) with
    any of ``seq_columns`` above ``hwm``; every row of such a key is taken, so a duplicate
    next to an untouched old row is still seen. When the key pins the batch
    (:attr:`SuiteFile.touched_by_row`) those are just the rows above ``hwm``.
    """
    return _compile(model_batch_select(suite, schema, hwm), dialect)


def model_batch_select(suite: SuiteFile, schema: str, hwm: int | None,
                       source: sa.TableClause | None = None) -> sa.Select[Any]:
    """:func:`model_batch_query` as a select (every column).

    ``source``: read the model's rows from this copy of the model instead (holding at
    least the key and seq columns); the copy then also serves as the ``touched_from``
    relation, so it may only stand in for a model that is its own.
    """
    assert suite.model is not None
    if source is not None and suite.touched_from not in (None, suite.model):
        raise ValueError(f"{suite.name}: a copy of {suite.model} cannot stand in for "
                         f"{suite.touched_from}")

    def rel(name: str, *cols: str) -> sa.TableClause:
        if source is None:
            return _relation(name, schema, *cols)
        return _relation(source.name, source.schema, *cols)

    model = rel(suite.model, *dict.fromkeys((*suite.key, *suite.seq_columns))).alias("m")
    q = sa.select(sa.text("*")).select_from(model)
    if suite.scope == "touched" and hwm is not None and suite.touched_by_row:
        q = q.where(model.c[BATCH_SEQ] > hwm)
    elif suite.scope == "touched" and hwm is not None:
        src = rel(suite.touched_from or suite.model, *suite.key, *suite.seq_columns).alias("t")
        newer = sa.or_(*(src.c[c] > hwm for c in suite.seq_columns))
        q = q.where(sa.exists().where(*(src.c[k] == model.c[k] for k in suite.key), newer))
    return q


# Stands for GX's {batch} while SQLAlchemy builds the query (a table name it can alias).
_BATCH_SENTINEL = "monitor_gx_batch_placeholder"


def one_to_one_query(spec: OneToOne, schema: str, hwm: int | None, dialect: sa.Dialect) -> str:
    """UnexpectedRows SQL for a one-to-one enrichment; ``{batch}`` is the model rows in scope.

    Rows: (problem, key_value, enrichment_key_value, row_count, affected_rows), one per key
    repeated in the model, per input key missing from the model (input rows above ``hwm``
    only, when given), per model key missing from the input, and per enrichment key with
    more than one distinct row in the latest enrichment snapshot (its highest
    ``seq_column``), naming the key and how many model rows carry it.
    """
    keys = spec.key
    parts: list[sa.Select[Any]] = []

    b1 = _relation(_BATCH_SENTINEL, None, *keys).alias("b1")
    parts.append(
        sa.select(*_o2o_row("key repeated in model", _key_text(b1, keys), None,
                            sa.func.count(), None))
        .where(*(b1.c[k].is_not(None) for k in keys))
        .group_by(*(b1.c[k] for k in keys))
        .having(sa.func.count() > 1)
    )

    inp = _relation(spec.input, schema, *keys, spec.seq_column).alias("i")
    model = _relation(spec.model, schema, *keys).alias("m")
    missing = (
        sa.select(*_o2o_row("input key missing from model", _key_text(inp, keys), None, 1, None))
        .select_from(inp.outerjoin(model, sa.and_(*(model.c[k] == inp.c[k] for k in keys))))
        .where(model.c[keys[0]].is_(None), *(inp.c[k].is_not(None) for k in keys))
        .distinct()
    )
    if hwm is not None:
        missing = missing.where(inp.c[spec.seq_column] > hwm)
    parts.append(missing)

    b2 = _relation(_BATCH_SENTINEL, None, *keys).alias("b2")
    inp2 = _relation(spec.input, schema, *keys).alias("i2")
    parts.append(
        sa.select(*_o2o_row("model key missing from input", _key_text(b2, keys), None, 1, None))
        .select_from(b2.outerjoin(inp2, sa.and_(*(inp2.c[k] == b2.c[k] for k in keys))))
        .where(inp2.c[keys[0]].is_(None))
        .distinct()
    )
    if spec.enrichment is not None:
        parts.append(_enrichment_dups(spec, schema))
    sql = _compile(sa.union_all(*parts), dialect)
    # Every FROM of the batch holds a JOIN, so GX leaves the aliasing to us: "{batch} AS b1".
    return sql.replace(_BATCH_SENTINEL, "{batch}")


def _o2o_row(problem: str, key: Any, ekey: Any, n: Any, affected: Any) -> list[Any]:
    text = sa.String()
    return [
        sa.literal(problem, text).label("problem"),
        sa.cast(key, text).label("key_value"),
        sa.cast(ekey, text).label("enrichment_key_value"),
        sa.cast(n, sa.BigInteger).label("row_count"),
        sa.cast(affected, sa.BigInteger).label("affected_rows"),
    ]


def _key_text(rel: sa.FromClause, keys: Sequence[str]) -> Any:
    """The key as text, composite keys joined with ':'."""
    out: Any = sa.cast(rel.c[keys[0]], sa.String())
    for k in keys[1:]:
        out = out.concat(":").concat(sa.cast(rel.c[k], sa.String()))
    return out


def _enrichment_dups(spec: OneToOne, schema: str) -> sa.Select[Any]:
    e = spec.enrichment
    assert e is not None
    seq = spec.seq_column
    top = _relation(e.relation, schema, seq).alias("e_top")
    latest = sa.select(sa.func.max(top.c[seq])).scalar_subquery()
    rel = _relation(e.relation, schema, e.key, seq, *e.distinct).alias("e")
    snapshot = (sa.select(rel.c[e.key], *(rel.c[c] for c in e.distinct))
                .where(rel.c[seq] == latest, rel.c[e.key].is_not(None))
                .distinct().subquery("snapshot"))
    dups = (sa.select(snapshot.c[e.key].label("ekey"), sa.func.count().label("n"))
            .group_by(snapshot.c[e.key]).having(sa.func.count() > 1).subquery("dups"))
    model = _relation(spec.model, schema, e.model_column).alias("me")
    affected = (sa.select(sa.func.count()).select_from(model)
                .where(model.c[e.model_column] == dups.c.ekey).scalar_subquery())
    return sa.select(*_o2o_row(f"enrichment key duplicated in {e.relation}", None, dups.c.ekey,
                               dups.c.n, affected))


def _compile(q: sa.ClauseElement, dialect: sa.Dialect) -> str:
    sql = str(q.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    return " ".join(sql.split())


# --------------------------------------------------------------------------- batch copies

# Stands for GX's {batch} while a suite query is parsed for the columns it reads.
_BATCH_NAME = "monitor_gx_batch"
# Expectations on the table's shape read every column (they compare the column list).
_SHAPE_TYPES = ("table_column", "column_to_exist")
_COLUMN_KWARGS = ("column", "column_A", "column_B")


@dataclass(frozen=True)
class _Scope:
    """Where a suite's rows come from, so the Validator can decide to copy them once.

    ``select(source)``: the rows in scope with every column, read from ``relation`` (source
    None) or from ``source``, a copy of it. ``semi_join``: the scope filter joins (the
    touched keys), so every check would repeat it. ``copy_columns``: when ``relation`` is
    a view, copy it first with these columns too (the scope filter reads them), so the view
    is evaluated once instead of once per side of the filter.
    """

    relation: sa.TableClause
    select: Callable[[sa.TableClause | None], sa.Select[Any]]
    semi_join: bool = False
    copy_columns: tuple[str, ...] = ()


def _project(q: sa.Select[Any], columns: Sequence[str]) -> sa.Select[Any]:
    """``columns`` of ``q``'s rows (named, as CREATE TABLE AS needs)."""
    named: list[Any] = [sa.column(c) for c in columns]
    return sa.select(*named).select_from(q.subquery("b"))


def _columns_of(conn: sa.Connection, rel: sa.TableClause) -> list[str]:
    result = conn.execute(sa.select(sa.text("*")).select_from(rel).limit(0))
    return list(result.keys())


def _is_view(conn: sa.Connection, rel: sa.TableClause) -> bool:
    t = _relation("tables", "information_schema", "table_schema", "table_name", "table_type")
    q = sa.select(t.c.table_type).where(t.c.table_schema == rel.schema, t.c.table_name == rel.name)
    return str(conn.execute(q).scalar() or "").upper() == "VIEW"


def _settle(conn: sa.Connection) -> None:
    """End whatever transaction GX left open (maybe aborted by a failed check): the copies
    are committed, so nothing of ours is lost, and DuckDB writes one database at a time."""
    if conn.in_transaction():
        conn.rollback()


def _needed_columns(conn: sa.Connection, specs: Iterable[Mapping[str, Any]],
                    available: Sequence[str]) -> list[str] | None:
    """The columns of ``available`` the expectations read, in table order; None for all.

    Over-approximates: any name a check mentions is kept, and anything that could read a
    column not named (a shape check, a row condition, ``*``, a natural join, a whole-row
    reference) keeps every column. A copy of fewer columns is what makes a view cheap.
    """
    needed: set[str] = set()
    for spec in specs:
        names = (_query_columns(conn, spec.get("kwargs", {}).get("unexpected_rows_query"))
                 if spec["type"] == UNEXPECTED_ROWS else _spec_columns(spec))
        if names is None:
            return None
        needed |= {n.lower() for n in names}
    keep = [c for c in available if c.lower() in needed]
    return keep or list(available[:1])  # a table needs a column; row counts read none


def _spec_columns(spec: Mapping[str, Any]) -> set[str] | None:
    kwargs = spec.get("kwargs", {})
    if kwargs.get("row_condition") or any(t in spec["type"] for t in _SHAPE_TYPES):
        return None
    names: list[Any] = [kwargs[k] for k in _COLUMN_KWARGS if k in kwargs]
    if "column_list" in kwargs:
        names += kwargs["column_list"] if isinstance(kwargs["column_list"], list) else [None]
    if not all(isinstance(n, str) for n in names):  # e.g. a $PARAMETER: unknown until GX runs
        return None
    if names:
        return set(names)
    return set() if spec["type"].startswith("expect_table_row_count") else None


def _query_columns(conn: sa.Connection, query: Any) -> set[str] | None:
    """Every name a suite query could use as a column, parsed by DuckDB; None if unknown."""
    if not isinstance(query, str):
        return None
    try:
        text = query.format(batch=_BATCH_NAME)  # GX's own substitution (un-doubles braces)
    except (KeyError, IndexError, ValueError):
        return None  # GX reports the query itself
    try:
        parsed = sa.cast(sa.func.json_serialize_sql(text), sa.String())  # JSON as text
        tree = json.loads(str(conn.execute(sa.select(parsed)).scalar()))
    except (sa.exc.DBAPIError, json.JSONDecodeError):
        return None
    if not isinstance(tree, dict) or tree.get("error"):
        return None
    return _tree_columns(tree)


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    if isinstance(tree, dict):
        yield tree
        for v in tree.values():
            yield from _nodes(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _nodes(v)


def _tree_columns(tree: Any) -> set[str] | None:
    columns: set[str] = set()
    single: set[str] = set()
    relations: set[str] = set()
    for node in _nodes(tree):
        if node.get("class") == "STAR" or node.get("ref_type") == "NATURAL":
            return None
        if node.get("class") == "COLUMN_REF":
            parts = [str(p).lower() for p in node.get("column_names", [])]
            columns.update(parts)
            if len(parts) == 1:
                single.update(parts)
        elif "class" not in node and node.get("type") in ("BASE_TABLE", "SUBQUERY",
                                                          "TABLE_FUNCTION"):
            relations.update(str(node.get(k) or "").lower() for k in ("alias", "table_name"))
        columns.update(str(c).lower() for c in node.get("using_columns") or [])
    if single & (relations - {""}):  # `select b from {batch} b`: the whole row as a struct
        return None
    return columns


# --------------------------------------------------------------------------- running


class Validator:
    """One ephemeral GX context and one warehouse datasource for a validation step.

    Use as a context manager: on exit the datasource's engines are disposed and the kept
    DuckDB connection closed, so another configuration (dbt) can open the file.
    ``engine_kwargs`` go to ``sqlalchemy.create_engine`` (e.g. ``connect_args`` with the
    DuckDB settings every other connection uses).
    """

    def __init__(
        self,
        warehouse_url: str,
        sample: int = 5,
        *,
        raw_schema: str = "raw",
        model_schema: str = "main",
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        for what, value in (("raw_schema", raw_schema), ("model_schema", model_schema)):
            if not IDENTIFIER.match(value):
                raise ValueError(f"{what}: not a valid identifier: {value!r}")
        if sample < 0:
            raise ValueError(f"sample must be >= 0, got {sample}")
        self.url = warehouse_url
        self.sample = sample
        self.raw_schema = raw_schema
        self.model_schema = model_schema
        self.engine_kwargs = dict(engine_kwargs or {})
        self.dialect_name = sa.make_url(warehouse_url).get_backend_name()
        self._context: Any = None
        self._datasource: Any = None
        self._scratch: str | None = None  # DuckDB: the attached database holding batch copies
        self._copies = True  # False once a scratch database could not be attached
        self._assets = 0
        # The last copy, kept for the next suite on the same rows: (rows' SQL, columns, copy)
        self._kept: tuple[str, frozenset[str], sa.Table] | None = None

    def __enter__(self) -> Validator:
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        self._context = gx.get_context(mode="ephemeral", project_config=config)
        self._datasource = add_warehouse_datasource(
            self._context, "warehouse", self.url, self.engine_kwargs
        )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release every warehouse connection GX opened. Idempotent."""
        if self._kept is not None and self._datasource is not None:
            self._drop(self._kept[2])
        self._kept = None
        ds, self._datasource, self._context = self._datasource, None, None
        scratch, self._scratch = self._scratch, None
        if ds is None:
            return
        try:
            if scratch is not None:
                detach_scratch(ds, scratch)
        except sa.exc.DBAPIError:  # it goes with the DuckDB instance at the latest
            log.warning("could not detach %s", scratch, exc_info=True)
        finally:
            dispose_datasource(ds)

    def run_contract(self, suite: SuiteFile, batch_id: str, feed: str,
                     delivered: date | None = None) -> SuiteResult:
        """Validate the rows of one batch of ``feed`` against a contract suite.
        ``delivered``: the batch's delivery day (``{{delivery_date}}``; default today)."""
        if suite.kind != "contract":
            raise ValueError(f"{suite.name} is a {suite.kind} suite, not a contract")
        if feed != suite.feed:
            raise ValueError(f"{suite.name} is the contract of {suite.feed!r}, not {feed!r}")
        if not BATCH_ID.match(batch_id):
            raise ValueError(f"not a valid batch id: {batch_id!r}")
        values = {"raw_schema": self.raw_schema, "model_schema": self.model_schema,
                  "feed": feed, "batch_id": batch_id,
                  "delivery_date": (delivered or datetime.now(UTC).date()).isoformat()}
        rows = contract_batch_select(self.raw_schema, feed, batch_id)
        if suite.placeholders & {"batch_rows", "sample_modulus"}:
            n = self._count(rows)
            values["batch_rows"] = str(n)
            values["sample_modulus"] = str(max(1, n // SAMPLE_ROWS))
        scope = _Scope(_relation(feed, self.raw_schema), lambda _source: rows)
        return self._run(suite, scope, values, batch_id, [])

    def run_model_suite(self, suite: SuiteFile, hwm: int | None) -> SuiteResult:
        """Validate a built model (touched rows after ``hwm``, or the whole table)."""
        if suite.kind == "contract":
            raise ValueError(f"{suite.name} is a contract suite; use run_contract")
        if hwm is not None and (isinstance(hwm, bool) or not isinstance(hwm, int)):
            raise ValueError(f"hwm must be an integer or None, got {hwm!r}")
        assert suite.model is not None
        values = {"raw_schema": self.raw_schema, "model_schema": self.model_schema,
                  "model": suite.model, "hwm": str(-1 if hwm is None else hwm)}
        model = suite.model
        # A view read on both sides of the touched filter is copied once first.
        semi_join = suite.scope == "touched" and hwm is not None and not suite.touched_by_row
        own_scope = semi_join and suite.touched_from in (None, model)
        scope = _Scope(
            _relation(model, self.model_schema),
            lambda source: model_batch_select(suite, self.model_schema, hwm, source),
            semi_join=semi_join,
            copy_columns=(*suite.key, *suite.seq_columns) if own_scope else (),
        )
        extra = []
        if suite.one_to_one is not None:
            scoped = hwm if suite.scope == "touched" else None
            sql = one_to_one_query(suite.one_to_one, self.model_schema, scoped, self._dialect())
            extra.append({
                "type": UNEXPECTED_ROWS, "kwargs": {"unexpected_rows_query": sql},
                "meta": {"check": ONE_TO_ONE_CHECK},
                "description": f"{suite.one_to_one.model} is one-to-one with "
                               f"{suite.one_to_one.input} on {suite.one_to_one.key}",
            })
        return self._run(suite, scope, values, None, extra)

    # -- internals

    def _dialect(self) -> sa.Dialect:
        if self._datasource is None:
            raise RuntimeError("Validator is not open: use it as a context manager")
        dialect: sa.Dialect = self._datasource.get_engine().dialect
        return dialect

    def _run(self, suite: SuiteFile, scope: _Scope, values: Mapping[str, str],
             batch_id: str | None, extra: Sequence[dict[str, Any]]) -> SuiteResult:
        if suite.dialect and suite.dialect != self.dialect_name:
            raise ValueError(f"{suite.path}: suite SQL is for {suite.dialect}, "
                             f"the warehouse is {self.dialect_name}")
        specs = [_with_index({**e, "kwargs": _fill(e.get("kwargs", {}), values)}, i)
                 for i, e in enumerate(suite.expectations)]
        specs += [_with_index(e, len(specs) + j) for j, e in enumerate(extra)]
        self._assets += 1
        name = f"{suite.name}-{self._assets}"
        started = time.perf_counter()
        copy = self._materialize(scope, specs) if self._copies_batches() else None
        rows = scope.select(None) if copy is None else sa.select(sa.text("*")).select_from(copy)
        asset = self._datasource.add_query_asset(name=name, query=_compile(rows, self._dialect()))
        try:
            batch = asset.add_batch_definition_whole_table("all").get_batch()
            by_index = self._validate(batch, suite.name, specs)
        finally:
            self._datasource.delete_asset(name)
        results = [by_index[i] for i in range(len(specs))]
        result = SuiteResult(suite.name, suite.kind, suite.target, batch_id,
                             all(r.success for r in results), results)
        log.debug("%s in %.2f s", result.describe(), time.perf_counter() - started)
        return result

    def _count(self, rows: sa.Select[Any]) -> int:
        """The number of ``rows`` (a literal for suite SQL that must plan with it: DuckDB
        prunes and pushes filters on constants, not on a scalar subquery)."""
        query = sa.select(sa.func.count()).select_from(rows.subquery())
        if not keeps_one_connection(self._datasource):
            with self._datasource.get_engine().connect() as conn:
                return int(conn.execute(query).scalar() or 0)
        with kept_connection(self._datasource) as conn:
            _settle(conn)
            n = conn.execute(query).scalar()
            conn.rollback()
        return int(n or 0)

    def _copies_batches(self) -> bool:
        """DuckDB only: a copy needs a scratch database every GX connection sees."""
        return (self._copies and self.dialect_name == "duckdb"
                and keeps_one_connection(self._datasource))

    def _materialize(self, scope: _Scope, specs: Sequence[Mapping[str, Any]]
                     ) -> sa.Table | None:
        """Copy the rows in scope, with the columns the checks read, into the scratch database.

        Only when reading them again is costly: a view (evaluated by every read) or a
        semi-join scope filter. Then every expectation (and GX's count next to each row
        query) scans the copy. A plain filter on a table is read in place: the stored
        table is compressed, and DuckDB evaluates string functions once per dictionary
        entry there, which a copy in memory would lose. None: read the rows in place (also
        when the copy fails; GX then reports the error per expectation).
        """
        with kept_connection(self._datasource) as conn:
            _settle(conn)
            try:
                view = _is_view(conn, scope.relation)
            except sa.exc.DBAPIError:  # e.g. no information_schema: read in place
                conn.rollback()
                return None
        if not (view or scope.semi_join) or not self._attach():
            return None
        assert self._scratch is not None
        rows_sql = _compile(scope.select(None), self._dialect())
        table = sa.Table(f"batch_{self._assets}", sa.MetaData(), schema=self._scratch)
        source = sa.Table(f"{table.name}_source", sa.MetaData(), schema=self._scratch)
        with kept_connection(self._datasource) as conn:
            _settle(conn)
            try:
                available = _columns_of(conn, scope.relation)
                keep = _needed_columns(conn, specs, available) or available
                if self._kept is not None:
                    kept_sql, kept_columns, kept_table = self._kept
                    if kept_sql == rows_sql and set(keep) <= kept_columns:
                        # The same rows (another suite on the same model and scope): the
                        # copy is reused, and the semi join and view are not run again.
                        return kept_table
                    conn.execute(DropTable(kept_table, if_exists=True))  # one copy at a time
                    conn.commit()
                    self._kept = None
                copied = None
                if scope.copy_columns and view:
                    also = {c.lower() for c in scope.copy_columns}
                    wide = [c for c in available if c in keep or c.lower() in also]
                    everything = sa.select(sa.text("*")).select_from(scope.relation)
                    conn.execute(_project(everything, wide)
                                 .into(source.name, schema=self._scratch))
                    copied = source
                conn.execute(_project(scope.select(copied), keep)
                             .into(table.name, schema=self._scratch))
                conn.execute(DropTable(source, if_exists=True))
                conn.commit()
            except sa.exc.DBAPIError as exc:
                conn.rollback()
                log.warning("could not copy the rows of %s; validating them in place: %s",
                            scope.relation, exc)
                return None
        self._kept = (rows_sql, frozenset(keep), table)
        return table

    def _attach(self) -> bool:
        """The scratch database, attached on first use; False if it cannot be."""
        if self._scratch is None and self._copies:
            try:
                self._scratch = attach_scratch(self._datasource)
            except sa.exc.DBAPIError as exc:  # e.g. a read-only instance
                log.warning("no scratch database, validating batches in place: %s", exc)
                self._copies = False
        return self._scratch is not None

    def _drop(self, table: sa.Table) -> None:
        with kept_connection(self._datasource) as conn:
            _settle(conn)
            try:
                conn.execute(DropTable(table, if_exists=True))
                conn.commit()
            except sa.exc.DBAPIError:  # the results stand; the copy dies with the connection
                conn.rollback()
                log.warning("could not drop %s", table, exc_info=True)

    def _validate(self, batch: Any, suite_name: str,
                  specs: list[dict[str, Any]]) -> dict[int, ExpectationResult]:
        """Run the suite in GX validations: the SQL expectations with their rows
        (COMPLETE: capped at GX's 200 rows), the rest in SUMMARY without sample values,
        then only the failed ones again with ``sample`` values. A sample query of a
        clean column scans the whole batch to find nothing (``LIMIT 5`` is never
        reached), so asking for samples only where there are some saves a scan per
        expectation on a clean batch; a null storm never pulls a column into Python."""
        rows = [s for s in specs if s["type"] == UNEXPECTED_ROWS]
        other = [s for s in specs if s["type"] != UNEXPECTED_ROWS]
        out = self._validate_group(batch, suite_name, specs, rows, {"result_format": "COMPLETE"})
        counted = self._validate_group(batch, suite_name, specs, other,
                                       {"result_format": "SUMMARY", "partial_unexpected_count": 0})
        out.update(counted)
        again = [specs[i] for i, r in counted.items() if not r.success and r.unexpected_count]
        if again and self.sample:
            out.update(self._validate_group(
                batch, suite_name, specs, again,
                {"result_format": "SUMMARY", "partial_unexpected_count": self.sample}))
        missing = [i for i in range(len(specs)) if i not in out]
        if missing:
            raise RuntimeError(f"{suite_name}: GX returned no result for expectations {missing}")
        return out

    def _validate_group(self, batch: Any, suite_name: str, specs: list[dict[str, Any]],
                        group: list[dict[str, Any]], result_format: dict[str, Any]
                        ) -> dict[int, ExpectationResult]:
        """Results of one GX validation of ``group``, by expectation index."""
        if not group:
            return {}
        gx_suite = ExpectationSuite(name=suite_name,
                                    expectations=[_to_expectation(s) for s in group])
        validation = batch.validate(gx_suite, result_format=result_format)
        out = {}
        for r in validation.results:
            idx = int(r.expectation_config.meta["_monitor_index"])
            out[idx] = self._result(r, specs[idx])
        return out

    def _result(self, r: Any, spec: Mapping[str, Any]) -> ExpectationResult:
        kwargs = dict(spec.get("kwargs", {}))
        res: dict[str, Any] = dict(r.result or {})
        error = _error_message(r.exception_info)
        if spec["type"] == UNEXPECTED_ROWS:
            observed = res.get("observed_value")
            count = observed if isinstance(observed, int) else None
            values = (res.get("details") or {}).get("unexpected_rows") or []
        else:
            observed = res.get("observed_value", res.get("unexpected_percent"))
            count = res.get("unexpected_count")
            values = res.get("partial_unexpected_list") or []
        column = kwargs.get("column") or (
            ",".join(str(kwargs[c]) for c in ("column_A", "column_B") if c in kwargs) or None)
        return ExpectationResult(
            expectation_type=spec["type"],
            column=column,
            kwargs_json=json.dumps(kwargs, sort_keys=True, default=str),
            success=bool(r.success) and error is None,
            observed_value=_jsonable(observed),
            unexpected_count=count,
            unexpected_values=_jsonable(list(values)[: self.sample]),
            check=str((spec.get("meta") or {}).get("check") or ""),
            error=error,
        )


def _with_index(spec: Mapping[str, Any], index: int) -> dict[str, Any]:
    out = dict(spec)
    out["meta"] = {**(spec.get("meta") or {}), "_monitor_index": index}
    return out


def _error_message(info: Any) -> str | None:
    """The exception message(s) GX attached to a result, whatever nesting it used."""
    if not isinstance(info, dict) or not info:
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    messages = [str(v.get("exception_message")) for v in info.values()
                if isinstance(v, dict) and v.get("raised_exception")]
    return "; ".join(dict.fromkeys(messages)) or None


def _jsonable(value: Any) -> Any:
    """Plain JSON types (dates, decimals and tuples from the warehouse become str/list)."""
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- state


def record_results(state_engine: sa.Engine, run_id: str, results: Sequence[SuiteResult]) -> int:
    """Store every expectation result of ``results`` under ``run_id``; return rows written."""
    now = utcnow()
    rows = [
        dict(run_id=run_id, suite=s.suite, kind=s.kind, target=s.target, batch_id=s.batch_id,
             expectation=r.expectation_type, check_name=r.check or None, column=r.column,
             success=r.success, observed_value=r.observed_value,
             unexpected_count=r.unexpected_count, unexpected_values=r.unexpected_values,
             kwargs_json=r.kwargs_json, error=r.error, created_at=now)
        for s in results for r in s.results
    ]
    if rows:
        with state_engine.begin() as conn:
            conn.execute(validation_results.insert(), rows)
    return len(rows)


def failed_summary(state_engine: sa.Engine, run_id: str) -> list[FailedExpectation]:
    """The failed expectations recorded for ``run_id``, in recording order."""
    t = validation_results
    q = (sa.select(t.c.suite, t.c.kind, t.c.target, t.c.batch_id, t.c.expectation,
                   t.c.check_name.label("check"), t.c.column, t.c.observed_value,
                   t.c.unexpected_count, t.c.unexpected_values, t.c.error)
         .where(t.c.run_id == run_id, t.c.success.is_(False)).order_by(t.c.id))
    with state_engine.connect() as conn:
        return [FailedExpectation(**row) for row in conn.execute(q).mappings().all()]


def failures_by_suite(results: Iterable[SuiteResult]) -> dict[str, int]:
    """Failed expectations per suite (0 for suites that passed), for the metrics gauge."""
    out: dict[str, int] = {}
    for s in results:
        out[s.suite] = out.get(s.suite, 0) + len(s.failed)
    return out
