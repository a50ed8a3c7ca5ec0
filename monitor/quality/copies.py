"""Which rows and columns a suite reads, for the Validator's one copy of them.

Rows costly to read again (a view, or the touched keys' semi join; on PostgreSQL also
a plain filter on a table, which each check would otherwise scan whole) are copied once,
with only the columns the checks read, and every check reads the copy.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import sqlalchemy as sa

from monitor.quality.queries import relation
from monitor.quality.suites import UNEXPECTED_ROWS

# Stands for GX's {batch} while a suite query is parsed for the columns it reads.
_BATCH_NAME = "monitor_gx_batch"
# Expectations on the table's shape read every column (they compare the column list).
_SHAPE_TYPES = ("table_column", "column_to_exist")
_COLUMN_KWARGS = ("column", "column_A", "column_B")


@dataclass(frozen=True)
class Scope:
    """Where a suite's rows come from, so the Validator can decide to copy them once.

    ``select(source)``: the rows in scope with every column, read from ``relation`` (source
    None) or from ``source``, a copy of it. ``semi_join``: the scope filter joins (the
    touched keys), so every check would repeat it. ``copy_columns``: when ``relation`` is
    a view, copy it first with these columns too (the scope filter reads them), so the view
    is evaluated once instead of once per side of the filter. ``split``: the same rows as
    (a plain filter of ``relation``, the rest found by the semi join), so that a stored
    table can be read in place and only the rest copied.
    """

    relation: sa.TableClause
    select: Callable[[sa.TableClause | None], sa.Select[Any]]
    semi_join: bool = False
    copy_columns: tuple[str, ...] = ()
    filtered: bool = False  # the rows are some of the relation's (a batch, touched rows)
    split: Callable[[sa.Connection], tuple[sa.Select[Any], sa.Select[Any]]] | None = None


def with_columns(q: sa.Select[Any], columns: Sequence[str]) -> sa.Select[Any]:
    """``columns`` of ``q``'s rows (named, as CREATE TABLE AS needs)."""
    named: list[Any] = [sa.column(c) for c in columns]
    return sa.select(*named).select_from(q.subquery("b"))


def columns_of(conn: sa.Connection, rel: sa.TableClause) -> list[str]:
    result = conn.execute(sa.select(sa.text("*")).select_from(rel).limit(0))
    return list(result.keys())


def is_view(conn: sa.Connection, rel: sa.TableClause) -> bool:
    t = relation("tables", "information_schema", "table_schema", "table_name", "table_type")
    q = sa.select(t.c.table_type).where(t.c.table_schema == rel.schema, t.c.table_name == rel.name)
    return str(conn.execute(q).scalar() or "").upper() == "VIEW"


def settle(conn: sa.Connection) -> None:
    """End whatever transaction GX left open (maybe aborted by a failed check): the copies
    are committed, so nothing of ours is lost, and DuckDB writes one database at a time."""
    if conn.in_transaction():
        conn.rollback()


def needed_columns(specs: Iterable[Mapping[str, Any]],
                   available: Sequence[str]) -> list[str] | None:
    """The columns of ``available`` the expectations read, in table order; None for all.

    Over-approximates: any name a check mentions is kept, and anything that could read a
    column not named (a shape check, a row condition, ``*``, a natural join, a whole-row
    reference) keeps every column. A copy of fewer columns is what makes a view cheap.
    """
    needed: set[str] = set()
    for spec in specs:
        names = (_query_columns(spec.get("kwargs", {}).get("unexpected_rows_query"))
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


def _query_columns(query: Any) -> set[str] | None:
    """Every name a suite query could use as a column, parsed by DuckDB (an in-memory
    instance: only its parser is used, whatever the warehouse); None if unknown, e.g.
    SQL DuckDB does not parse."""
    if not isinstance(query, str):
        return None
    try:
        text = query.format(batch=_BATCH_NAME)  # GX's own substitution (un-doubles braces)
    except (KeyError, IndexError, ValueError):
        return None  # GX reports the query itself
    names = _parsed_columns(text)
    return None if names is None else set(names)


@functools.lru_cache(maxsize=512)
def _parsed_columns(text: str) -> frozenset[str] | None:
    """The column names of one query's text: parsed once per process, not once per
    suite run (a daemon sees the same suites every cycle)."""
    try:
        with duckdb.connect() as con:
            row = con.execute("select cast(json_serialize_sql(?) as varchar)", [text]).fetchone()
        tree = json.loads(str(row[0] if row else ""))
    except (duckdb.Error, json.JSONDecodeError):
        return None
    if not isinstance(tree, dict) or tree.get("error"):
        return None
    names = _tree_columns(tree)
    return None if names is None else frozenset(names)


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
