"""The SQL of a suite's rows: one batch of a feed, a model's touched rows, and the
one-to-one check's unexpected rows (compiled for the warehouse's dialect)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from monitor.core.columns import BATCH_COLUMN, SEQ_COLUMN
from monitor.quality.suites import OneToOne, SuiteFile
from monitor.warehouse.engine import KeyLookup


def relation(name: str, schema: str | None, *cols: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(c) for c in dict.fromkeys(cols)), schema=schema)


def contract_batch_query(raw_schema: str, feed: str, batch_id: str, dialect: sa.Dialect) -> str:
    """``select * from <raw_schema>.<feed> where _batch_id = '<batch_id>'`` for ``dialect``."""
    return compile_sql(contract_batch_select(raw_schema, feed, batch_id), dialect)


def contract_batch_select(raw_schema: str, feed: str, batch_id: str) -> sa.Select[Any]:
    """The rows of one batch of ``feed`` (every column)."""
    t = relation(feed, raw_schema, BATCH_COLUMN)
    return sa.select(sa.text("*")).select_from(t).where(t.c[BATCH_COLUMN] == batch_id)


def model_batch_query(suite: SuiteFile, schema: str, hwm: int | None, dialect: sa.Dialect) -> str:
    """Rows of the suite's model in scope: all, or those whose key was touched after ``hwm``.

    Touched: the key is among the keys of rows (of ``touched_from``, default the model) with
    any of ``seq_columns`` above ``hwm``; every row of such a key is taken, so a duplicate
    next to an untouched old row is still seen. When the key pins the batch
    (:attr:`SuiteFile.touched_by_row`) those are just the rows above ``hwm``.
    """
    return compile_sql(model_batch_select(suite, schema, hwm), dialect)


def model_batch_select(suite: SuiteFile, schema: str, hwm: int | None,
                       source: sa.TableClause | None = None,
                       lookup: KeyLookup | None = None,
                       key_unique: bool = False) -> sa.Select[Any]:
    """:func:`model_batch_query` as a select (every column).

    ``source``: read the model's rows from this copy of the model instead (holding at
    least the key and seq columns); the copy then also serves as the ``touched_from``
    relation, so it may only stand in for a model that is its own. ``lookup``: the
    engine's key lookup of :func:`touched_keys` (``Backend.key_lookup``), in place of
    the semi join, for a model that is its own ``touched_from``, read in place.
    ``key_unique``: this cycle found the key unique on every row of the touched keys
    (the model's grain check, ``monitor.quality.owners.VerifiedKeys``), so the semi
    join can add no row: the touched rows with a key are the same rows, by a plain
    filter (:func:`touched_split`'s first part).
    """
    assert suite.model is not None
    if source is not None and suite.touched_from not in (None, suite.model):
        raise ValueError(f"{suite.name}: a copy of {suite.model} cannot stand in for "
                         f"{suite.touched_from}")
    by_key = suite.scope == "touched" and hwm is not None and not suite.touched_by_row
    if by_key and key_unique:
        assert hwm is not None
        if source is not None or lookup is not None or suite.touched_from not in (
                None, suite.model):
            raise ValueError(f"{suite.name}: a unique key's touched rows are read from "
                             "the model itself")
        return _touched_rows(
            suite, relation(suite.model, schema, *suite.key, *suite.seq_columns).alias("m"), hwm)

    def rel(name: str, *cols: str) -> sa.TableClause:
        if source is None:
            return relation(name, schema, *cols)
        return relation(source.name, source.schema, *cols)

    model = rel(suite.model, *dict.fromkeys((*suite.key, *suite.seq_columns))).alias("m")
    q = sa.select(sa.text("*")).select_from(model)
    if suite.scope == "touched" and hwm is not None and suite.touched_by_row:
        q = q.where(model.c[SEQ_COLUMN] > hwm)
    elif suite.scope == "touched" and hwm is not None and lookup is not None:
        if source is not None or suite.touched_from not in (None, suite.model) or \
                len(suite.key) != 1:
            raise ValueError(f"{suite.name}: a key lookup reads one key of the model itself")
        q = q.where(lookup(model.c[suite.key[0]]))
    elif suite.scope == "touched" and hwm is not None:
        src = rel(suite.touched_from or suite.model, *suite.key, *suite.seq_columns).alias("t")
        q = q.where(_key_touched(suite, model, src, hwm))
    return q


def _touched(t: sa.FromClause, seqs: Sequence[str], hwm: int) -> sa.ColumnElement[bool]:
    """``t``'s row has any of ``seqs`` above ``hwm``."""
    return sa.or_(*(t.c[c] > hwm for c in seqs))


def _touched_rows(suite: SuiteFile, model: sa.FromClause, hwm: int) -> sa.Select[Any]:
    """``model``'s touched rows that have a key (every column): the rows of the semi
    join's scope that it finds in themselves (a NULL key matches no key)."""
    return sa.select(sa.text("*")).select_from(model).where(
        _touched(model, suite.seq_columns, hwm), *(model.c[k].is_not(None) for k in suite.key))


def _key_touched(suite: SuiteFile, model: sa.FromClause, src: sa.FromClause, hwm: int
                 ) -> sa.Exists:
    """``model``'s row shares its key with a touched row of ``src`` (the semi join)."""
    return sa.exists().where(*(src.c[k] == model.c[k] for k in suite.key),
                             _touched(src, suite.seq_columns, hwm))


def touched_split(suite: SuiteFile, schema: str, hwm: int, conn: sa.Connection
                  ) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """The rows of :func:`model_batch_select`'s semi-join scope (a model that is its own
    ``touched_from``) in two disjoint parts, every column: the touched rows themselves
    (their key not NULL, as the semi join's equality wants), a plain filter that a
    stored table serves in place; and the model's other rows of those keys, found by the
    semi join. The second part is empty while the key is unique, so a copy of it costs
    the join only, where a copy of the whole scope also writes every touched row. With
    one key column, the join reads only the model's rows within the touched keys'
    range (:func:`key_range`, read through ``conn``)."""
    assert suite.model is not None
    if suite.touched_from not in (None, suite.model):
        raise ValueError(f"{suite.name}: the touched rows split reads the model's own keys")
    table = relation(suite.model, schema, *suite.key, *suite.seq_columns)
    model, src = table.alias("m"), table.alias("t")
    touched = _touched(model, suite.seq_columns, hwm)
    own = _touched_rows(suite, model, hwm)
    rest = sa.select(sa.text("*")).select_from(model).where(
        sa.not_(sa.func.coalesce(touched, sa.false())), _key_touched(suite, model, src, hwm))
    if len(suite.key) == 1:
        rest = rest.where(key_range(conn, table, suite.key[0], suite.seq_columns, hwm)(
            model.c[suite.key[0]]))
    return own, rest


def key_range(conn: sa.Connection, table: sa.FromClause, key: str, seqs: Sequence[str],
              hwm: int) -> KeyLookup:
    """A predicate on a ``key`` column: between the lowest and the highest ``key`` of
    ``table``'s rows with any of ``seqs`` above ``hwm`` (false when there are none).

    Written beside a semi join or an outer join on those keys, it changes no result,
    but as literals it lets an engine that keeps min/max statistics per row group
    (DuckDB, parquet) skip the stored rows outside the range: where keys grow with time
    (a claim id starts with its date), the read follows the days the touched keys come
    from, not the whole history (README, "Where a 20M day goes")."""
    lo, hi = conn.execute(sa.select(sa.func.min(table.c[key]), sa.func.max(table.c[key]))
                          .where(_touched(table, seqs, hwm))).one()
    if lo is None:
        return lambda column: sa.false()
    return lambda column: column.between(sa.literal(lo), sa.literal(hi))


def touched_keys(table: sa.TableClause, key: str, seqs: Sequence[str], after: int
                 ) -> sa.Select[Any]:
    """The ``key`` of ``table``'s rows with any of ``seqs`` above ``after``: one branch
    per column (each a range on that column alone, which an index on it serves; an OR of
    them is one scan of the table), each row in the first branch it meets."""
    branches = []
    for i, seq in enumerate(seqs):
        earlier = [sa.or_(table.c[c] <= after, table.c[c].is_(None)) for c in seqs[:i]]
        branches.append(sa.select(table.c[key]).where(table.c[seq] > after, *earlier))
    found = sa.union_all(*branches).subquery("touched_keys")
    return sa.select(found.c[key])


# Stands for GX's {batch} while SQLAlchemy builds the query (a table name it can alias).
_BATCH_SENTINEL = "monitor_gx_batch_placeholder"


def one_to_one_query(spec: OneToOne, schema: str, hwm: int | None, dialect: sa.Dialect) -> str:
    """UnexpectedRows SQL for a one-to-one enrichment; ``{batch}`` is the model rows in scope.

    Rows: (problem, key_value, enrichment_key_value, row_count, affected_rows), one per key
    repeated in the model, per input key missing from the model (input rows above ``hwm``
    only, when given), per model key missing from the input, and per enrichment key with
    more than one distinct row in the latest enrichment delivery (its highest
    ``seq_column``), naming the key and how many model rows carry it.
    """
    keys = spec.key
    parts: list[sa.Select[Any]] = []

    b1 = relation(_BATCH_SENTINEL, None, *keys).alias("b1")
    parts.append(
        sa.select(*_o2o_row("key repeated in model", _key_text(b1, keys), None,
                            sa.func.count(), None))
        .where(*(b1.c[k].is_not(None) for k in keys))
        .group_by(*(b1.c[k] for k in keys))
        .having(sa.func.count() > 1)
    )

    inp = relation(spec.input, schema, *keys, spec.seq_column).alias("i")
    model = relation(spec.model, schema, *keys).alias("m")
    missing = (
        sa.select(*_o2o_row("input key missing from model", _key_text(inp, keys), None, 1, None))
        .select_from(inp.outerjoin(model, sa.and_(*(model.c[k] == inp.c[k] for k in keys))))
        .where(model.c[keys[0]].is_(None), *(inp.c[k].is_not(None) for k in keys))
        .distinct()
    )
    if hwm is not None:
        missing = missing.where(inp.c[spec.seq_column] > hwm)
    parts.append(missing)

    b2 = relation(_BATCH_SENTINEL, None, *keys).alias("b2")
    inp2 = relation(spec.input, schema, *keys).alias("i2")
    parts.append(
        sa.select(*_o2o_row("model key missing from input", _key_text(b2, keys), None, 1, None))
        .select_from(b2.outerjoin(inp2, sa.and_(*(inp2.c[k] == b2.c[k] for k in keys))))
        .where(inp2.c[keys[0]].is_(None))
        .distinct()
    )
    if spec.enrichment is not None:
        parts.append(_enrichment_dups(spec, schema))
    sql = compile_sql(sa.union_all(*parts), dialect)
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
    top = relation(e.relation, schema, seq).alias("e_top")
    latest = sa.select(sa.func.max(top.c[seq])).scalar_subquery()
    rel = relation(e.relation, schema, e.key, seq, *e.distinct).alias("e")
    newest = (sa.select(rel.c[e.key], *(rel.c[c] for c in e.distinct))
              .where(rel.c[seq] == latest, rel.c[e.key].is_not(None))
              .distinct().subquery("newest"))
    dups = (sa.select(newest.c[e.key].label("ekey"), sa.func.count().label("n"))
            .group_by(newest.c[e.key]).having(sa.func.count() > 1).subquery("dups"))
    model = relation(spec.model, schema, e.model_column).alias("me")
    affected = (sa.select(sa.func.count()).select_from(model)
                .where(model.c[e.model_column] == dups.c.ekey).scalar_subquery())
    return sa.select(*_o2o_row(f"enrichment key duplicated in {e.relation}", None, dups.c.ekey,
                               dups.c.n, affected))


def compile_sql(q: sa.ClauseElement, dialect: sa.Dialect) -> str:
    sql = str(q.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    return " ".join(sql.split())
