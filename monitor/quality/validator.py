"""The Validator: runs suites in the warehouse through one ephemeral GX context.

Contract suites read one batch of a feed, model suites a built model (its touched rows
or the whole table). Placeholders are filled here, with validated values only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime
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
from sqlalchemy.schema import DropTable

from monitor.quality.copies import (
    Scope,
    columns_of,
    is_view,
    needed_columns,
    settle,
    with_columns,
)
from monitor.quality.datasource import add_warehouse_datasource
from monitor.quality.gx_duckdb import (
    attach_scratch,
    detach_scratch,
    dispose_datasource,
    keeps_one_connection,
    kept_connection,
)
from monitor.quality.gx_spark import count_rows, dataframe_batch, is_spark
from monitor.quality.queries import (
    compile_sql,
    contract_batch_select,
    model_batch_select,
    one_to_one_query,
    relation,
    touched_keys,
    touched_split,
)
from monitor.quality.results import ExpectationResult, SuiteResult
from monitor.quality.suites import (
    BATCH_ID,
    IDENTIFIER,
    UNEXPECTED_ROWS,
    SuiteFile,
    fill_placeholders,
    to_expectation,
)
from monitor.warehouse.connection import backend_of_url
from monitor.warehouse.engine import Backend, KeyLookup

log = logging.getLogger(__name__)

SAMPLE_ROWS = 200_000  # {{sample_modulus}}: about this many rows of a large batch
ONE_TO_ONE_CHECK = "one_to_one"


class Validator:
    """One ephemeral GX context and one warehouse datasource for a validation step.

    Use as a context manager: on exit the datasource's engines are disposed and the kept
    DuckDB connection closed, so another configuration (dbt) can open the file.
    ``engine_kwargs`` go to ``sqlalchemy.create_engine`` (e.g. ``connect_args`` with the
    DuckDB settings every other connection uses; ``Backend.gx_connection`` gives both).
    ``backend``: the warehouse backend (default: the one of the URL's dialect); it
    names the GX datasource, whether rows are copied once, and renders suite functions.
    """

    def __init__(
        self,
        warehouse_url: str,
        sample: int = 5,
        *,
        raw_schema: str = "raw",
        model_schema: str = "main",
        engine_kwargs: Mapping[str, Any] | None = None,
        backend: Backend | None = None,
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
        self.backend = backend or backend_of_url(warehouse_url)
        self._context: Any = None
        self._datasource: Any = None
        # Where batch copies go (DuckDB: an attached database; else a schema)
        self._scratch: str | None = None
        self._holder: sa.Connection | None = None  # the connection that holds the place
        self._copies = True  # False once no scratch place could be made
        self._assets = 0
        self._render: Callable[[str, Sequence[str]], str] = self.backend.suite_function
        # The last copy, kept for the next suite on the same rows: (rows' SQL, columns,
        # copy, the rows as read: the copy, or the table's rows in place plus the copy)
        self._kept: tuple[str, frozenset[str], sa.Table, sa.FromClause] | None = None

    def __enter__(self) -> Validator:
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        self._context = gx.get_context(mode="ephemeral", project_config=config)
        self._datasource = add_warehouse_datasource(
            self._context, "warehouse", self.url, self.engine_kwargs,
            kind=self.backend.gx_datasource,
        )
        self._render = (self.backend.suite_function if is_spark(self._datasource)
                        else self.backend.suite_functions(self._datasource.get_engine()))
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
        holder, self._holder = self._holder, None
        if ds is None:
            return
        try:
            if scratch is not None and keeps_one_connection(ds):
                detach_scratch(ds, scratch)
            elif scratch is not None and holder is not None:
                self.backend.drop_batch_scratch(holder, scratch)
                holder.commit()
        except sa.exc.DBAPIError:  # DuckDB: it goes with the instance at the latest
            log.warning("could not drop %s", scratch, exc_info=True)
        finally:
            if holder is not None:
                holder.close()
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
        scope = Scope(relation(feed, self.raw_schema), lambda _source: rows, filtered=True)
        return self._run(suite, scope, values, batch_id, [])

    def run_model_suite(self, suite: SuiteFile, hwm: int | None,
                        skip: Mapping[str, str] | None = None,
                        key_unique: bool = False) -> SuiteResult:
        """Validate a built model (touched rows after ``hwm``, or the whole table).
        ``skip``: checks left out, each owned by the dbt test named (it passed in the
        build: ``monitor.quality.owners``); a suite left with none reads nothing.
        ``key_unique``: this cycle's grain check found the suite's key unique on every
        row of the keys touched after ``hwm`` (``owners.VerifiedKeys.covers``): the
        touched rows are then read by a plain filter, without the semi join on their
        keys, which could add no row (``queries.model_batch_select``)."""
        if suite.kind == "contract":
            raise ValueError(f"{suite.name} is a contract suite; use run_contract")
        if hwm is not None and (isinstance(hwm, bool) or not isinstance(hwm, int)):
            raise ValueError(f"hwm must be an integer or None, got {hwm!r}")
        if skip:
            for check, test in sorted(skip.items()):
                log.info("%s.%s: owned by dbt test %s of this build", suite.name, check, test)
            suite = replace(suite, expectations=tuple(
                e for e in suite.expectations if (e.get("meta") or {}).get("check") not in skip))
            if not suite.expectations and suite.one_to_one is None:
                return SuiteResult(suite.name, suite.kind, suite.target, None, True, [])
        assert suite.model is not None
        values = {"raw_schema": self.raw_schema, "model_schema": self.model_schema,
                  "model": suite.model, "hwm": str(-1 if hwm is None else hwm)}
        model = suite.model
        # A view read on both sides of the touched filter is copied once first.
        by_key = suite.scope == "touched" and hwm is not None and not suite.touched_by_row
        key_unique = key_unique and by_key and suite.touched_from in (None, model)
        semi_join = by_key and not key_unique
        own_scope = semi_join and suite.touched_from in (None, model)
        lookup = self._key_lookup(suite, hwm) if own_scope and len(suite.key) == 1 else None
        scope = Scope(
            relation(model, self.model_schema),
            lambda source: model_batch_select(suite, self.model_schema, hwm, source,
                                              lookup if source is None else None, key_unique),
            semi_join=semi_join,
            copy_columns=(*suite.key, *suite.seq_columns) if own_scope else (),
            filtered=suite.scope == "touched" and hwm is not None,
            split=(lambda conn: touched_split(suite, self.model_schema, hwm, conn))
            if own_scope and lookup is None and hwm is not None else None,
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

    def _key_lookup(self, suite: SuiteFile, hwm: int | None) -> KeyLookup | None:
        """The engine's lookup of the touched keys (``Backend.key_lookup``), else None."""
        assert suite.model is not None and hwm is not None
        if is_spark(self._datasource):
            return None
        t = relation(suite.model, self.model_schema, *suite.key, *suite.seq_columns)
        keys = touched_keys(t, suite.key[0], suite.seq_columns, hwm)
        with self._connection() as conn:
            try:
                return self.backend.key_lookup(conn, (self.model_schema, suite.model),
                                               suite.key[0], keys)
            except sa.exc.DBAPIError as exc:  # e.g. no such relation: the semi join says so
                conn.rollback()
                log.debug("no key lookup for %s: %s", suite.model, exc)
                return None

    def _dialect(self) -> sa.Dialect:
        if self._datasource is None:
            raise RuntimeError("Validator is not open: use it as a context manager")
        own = self.backend.sql_dialect()
        if own is not None:
            return own
        if is_spark(self._datasource):
            raise RuntimeError(f"{type(self.backend).__name__} names no SQL dialect for "
                               "the rows GX reads on Spark (Backend.sql_dialect)")
        dialect: sa.Dialect = self._datasource.get_engine().dialect
        return dialect

    def _run(self, suite: SuiteFile, scope: Scope, values: Mapping[str, str],
             batch_id: str | None, extra: Sequence[dict[str, Any]]) -> SuiteResult:
        if suite.dialect and suite.dialect != self.dialect_name:
            raise ValueError(f"{suite.path}: suite SQL is for {suite.dialect}, "
                             f"the warehouse is {self.dialect_name}")
        render = self._render
        specs = [_with_index({**e, "kwargs": self._engine_sql(
                     fill_placeholders(e.get("kwargs", {}), values, render))}, i)
                 for i, e in enumerate(suite.expectations)]
        specs += [_with_index(e, len(specs) + j) for j, e in enumerate(extra)]
        self._assets += 1
        name = f"{suite.name}-{self._assets}"
        started = time.perf_counter()
        if is_spark(self._datasource):  # rows as a DataFrame, cached for the suite
            rows_sql = compile_sql(scope.select(None), self._dialect())
            with dataframe_batch(self._datasource, name, rows_sql) as batch:
                by_index = self._validate(batch, suite.name, specs)
            return self._result_of(suite, batch_id, specs, by_index, started)
        copy = self._materialize(scope, specs) if self._copies_batches() else None
        rows = scope.select(None) if copy is None else sa.select(sa.text("*")).select_from(copy)
        query = compile_sql(rows, self._dialect())
        asset = self._datasource.add_query_asset(name=name, query=query)
        try:
            batch = asset.add_batch_definition_whole_table("all").get_batch()
            by_index = self._validate(batch, suite.name, specs)
        finally:
            self._datasource.delete_asset(name)
        return self._result_of(suite, batch_id, specs, by_index, started)

    def _engine_sql(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` with its suite query as the engine reads it (``Backend.suite_sql``)."""
        query = kwargs.get("unexpected_rows_query")
        if isinstance(query, str):
            return {**kwargs, "unexpected_rows_query": self.backend.suite_sql(query)}
        return kwargs

    def _result_of(self, suite: SuiteFile, batch_id: str | None,
                   specs: Sequence[Mapping[str, Any]], by_index: Mapping[int, ExpectationResult],
                   started: float) -> SuiteResult:
        results = [by_index[i] for i in range(len(specs))]
        result = SuiteResult(suite.name, suite.kind, suite.target, batch_id,
                             all(r.success for r in results), results)
        log.debug("%s in %.2f s", result.describe(), time.perf_counter() - started)
        return result

    def _count(self, rows: sa.Select[Any]) -> int:
        """The number of ``rows`` (a literal for suite SQL that must plan with it: DuckDB
        prunes and pushes filters on constants, not on a scalar subquery)."""
        query = sa.select(sa.func.count()).select_from(rows.subquery())
        if is_spark(self._datasource):
            return count_rows(self._datasource, compile_sql(query, self._dialect()))
        if not keeps_one_connection(self._datasource):
            with self._datasource.get_engine().connect() as conn:
                return int(conn.execute(query).scalar() or 0)
        with kept_connection(self._datasource) as conn:
            settle(conn)
            n = conn.execute(query).scalar()
            conn.rollback()
        return int(n or 0)

    def _copies_batches(self) -> bool:
        """Where the backend copies batches (DuckDB, PostgreSQL)."""
        return self._copies and self.backend.batch_copies

    @contextmanager
    def _connection(self) -> Iterator[sa.Connection]:
        """A connection for the copies: GX's one connection where it keeps one (settled),
        else one of its engine's. The caller commits what must stay."""
        if keeps_one_connection(self._datasource):
            with kept_connection(self._datasource) as conn:
                settle(conn)
                yield conn
        else:
            with self._datasource.get_engine().connect() as conn:
                yield conn

    def _materialize(self, scope: Scope, specs: Sequence[Mapping[str, Any]]
                     ) -> sa.FromClause | None:
        """Copy the rows in scope, with the columns the checks read, into the scratch
        database; return what the checks read.

        Only when reading them again is costly: a view (evaluated by every read) or a
        semi-join scope filter. Then every expectation scans the copy. A plain filter on a
        table is read in place on DuckDB: the stored table is compressed, and DuckDB
        evaluates string functions once per dictionary entry there, which a copy in
        memory would lose; on PostgreSQL each check would scan the whole table for it, so
        it is copied (``Backend.copy_filtered_tables``). So on DuckDB a semi-join scope
        of a table (``Scope.split``) copies only the rows the join adds to the touched
        rows, and the checks read the touched rows in place plus that copy. None: read
        the rows in place (also when the copy fails; GX then reports the error per
        expectation).
        """
        with self._connection() as conn:
            try:
                view = is_view(conn, scope.relation)
            except sa.exc.DBAPIError:  # e.g. no information_schema: read in place
                conn.rollback()
                return None
        filtered = scope.filtered and self.backend.copy_filtered_tables
        if not (view or scope.semi_join or filtered) or not self._attach():
            return None
        assert self._scratch is not None
        rows_sql = compile_sql(scope.select(None), self._dialect())
        table = sa.Table(f"batch_{self._assets}", sa.MetaData(), schema=self._scratch)
        source = sa.Table(f"{table.name}_source", sa.MetaData(), schema=self._scratch)
        with self._connection() as conn:
            try:
                available = columns_of(conn, scope.relation)
                keep = needed_columns(specs, available) or available
                if self._kept is not None:
                    kept_sql, kept_columns, kept_table, kept_rows = self._kept
                    if kept_sql == rows_sql and set(keep) <= kept_columns:
                        # The same rows (another suite on the same model and scope): the
                        # copy is reused, and the semi join and view are not run again.
                        return kept_rows
                    conn.execute(DropTable(kept_table, if_exists=True))  # one copy at a time
                    conn.commit()
                    self._kept = None
                rows: sa.FromClause = table
                if scope.split is not None and not view and not filtered:
                    in_place, rest = scope.split(conn)
                    self.backend.copy_batch(conn, with_columns(rest, keep), table)
                    named: list[Any] = [sa.column(c) for c in keep]
                    rows = sa.union_all(with_columns(in_place, keep),
                                        sa.select(*named).select_from(table)).subquery("s")
                else:
                    copied = None
                    if scope.copy_columns and view:
                        also = {c.lower() for c in scope.copy_columns}
                        wide = [c for c in available if c in keep or c.lower() in also]
                        everything = sa.select(sa.text("*")).select_from(scope.relation)
                        self.backend.copy_batch(conn, with_columns(everything, wide), source)
                        copied = source
                    self.backend.copy_batch(conn, with_columns(scope.select(copied), keep),
                                            table)
                    conn.execute(DropTable(source, if_exists=True))
                conn.commit()
            except sa.exc.DBAPIError as exc:
                conn.rollback()
                log.warning("could not copy the rows of %s; validating them in place: %s",
                            scope.relation, exc)
                return None
        self._kept = (rows_sql, frozenset(keep), table, rows)
        return rows

    def _attach(self) -> bool:
        """The scratch place, made on first use; False if it cannot be."""
        if self._scratch is None and self._copies:
            try:
                if keeps_one_connection(self._datasource):
                    self._scratch = attach_scratch(self._datasource)
                else:
                    # held until close(): it marks the place as in use (see
                    # Backend.open_batch_scratch), so a later run can sweep it if killed
                    holder = self._datasource.get_engine().connect()
                    try:
                        name = self.backend.open_batch_scratch(holder)
                        holder.commit()
                    except BaseException:
                        holder.close()
                        raise
                    self._scratch, self._holder = name, holder
            except sa.exc.DBAPIError as exc:  # e.g. a read-only instance, no CREATE right
                log.warning("no scratch place, validating batches in place: %s", exc)
                self._copies = False
        return self._scratch is not None

    def _drop(self, table: sa.Table) -> None:
        with self._connection() as conn:
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
                                    expectations=[to_expectation(s) for s in group])
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
