"""A SQLAlchemy 2 dialect for Spark SQL over ``monitor.warehouse.spark_dbapi``.

After PyHive's ``hive`` dialect and databricks-sqlalchemy (neither installable here:
PyHive speaks Thrift, databricks-sqlalchemy a Databricks endpoint): backtick quoting,
Spark's DDL type names, ``CREATE TABLE ... USING parquet``, reflection through
``SHOW``/``DESCRIBE``, no constraints, sequences or RETURNING. Only this dialect knows
Spark's SQL; the monitor reaches it through ``monitor.warehouse.spark``.

Spark string literals read backslash escapes and join adjacent literals (``'it''s'`` is
``its``), so literals are rendered with backslash escapes, never doubled quotes.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import default, reflection
from sqlalchemy.sql import compiler, ddl

from monitor.warehouse import spark_dbapi

__all__ = ["SparkDialect", "describe_columns", "spark_literal", "spark_type"]

# Spark's ANSI reserved words (docs: sql-ref-ansi-compliance, "SQL Keywords") and the
# words its parser treats specially in a column list.
_WORDS = """
all alter and any array as at authorization between both by case cast check collate column
constraint create cross cube current current_date current_time current_timestamp
current_user default delete describe distinct drop else end escape except exists external
false fetch filter for foreign from full function global grant group grouping having in
inner insert intersect interval into is join lateral leading left like local minus natural
none not null of on only or order out outer overlaps partition position primary range
references revoke right rollback rollup row rows select session_user set some start table
tablesample then time to trailing true union unique unknown update user using values when
where window with date timestamp
"""
RESERVED = set(_WORDS.split())
SCHEMA_NOT_FOUND = "[SCHEMA_NOT_FOUND]"  # Spark's error class: no such database

_TYPES: dict[str, type[sqltypes.TypeEngine[Any]]] = {
    "string": sqltypes.String, "varchar": sqltypes.String, "char": sqltypes.String,
    "tinyint": sqltypes.SmallInteger, "smallint": sqltypes.SmallInteger,
    "int": sqltypes.Integer, "integer": sqltypes.Integer, "bigint": sqltypes.BigInteger,
    "float": sqltypes.Float, "double": sqltypes.Double, "boolean": sqltypes.Boolean,
    "date": sqltypes.Date, "timestamp": sqltypes.DateTime, "timestamp_ntz": sqltypes.DateTime,
    "binary": sqltypes.LargeBinary,
}


def spark_literal(value: str) -> str:
    """A Spark SQL string literal of ``value`` (backslash escapes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def spark_type(name: str) -> sqltypes.TypeEngine[Any]:
    """The SQLAlchemy type of a Spark type name (``decimal(10,2)``, ``string``)."""
    name = name.strip().lower()
    dec = re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", name)
    if dec:
        return sqltypes.Numeric(int(dec[1]), int(dec[2]))
    base = re.split(r"[(<]", name, maxsplit=1)[0]
    return _TYPES.get(base, sqltypes.NullType)()


class SparkIdentifierPreparer(compiler.IdentifierPreparer):
    reserved_words = RESERVED

    def __init__(self, dialect: sa.Dialect) -> None:
        super().__init__(dialect, initial_quote="`", escape_quote="`")


class SparkTypeCompiler(compiler.GenericTypeCompiler):
    """Spark's DDL type names: every string type is STRING (VARCHAR(n) would truncate
    nothing and refuse longer values), floats are DOUBLE."""

    def visit_string(self, type_: Any, **kw: Any) -> str:
        return "STRING"

    visit_VARCHAR = visit_CHAR = visit_NVARCHAR = visit_NCHAR = visit_TEXT = visit_string
    visit_CLOB = visit_unicode = visit_unicode_text = visit_text = visit_string
    visit_uuid = visit_UUID = visit_JSON = visit_enum = visit_string

    def visit_integer(self, type_: Any, **kw: Any) -> str:
        return "INT"

    visit_INTEGER = visit_INT = visit_integer

    def visit_big_integer(self, type_: Any, **kw: Any) -> str:
        return "BIGINT"

    visit_BIGINT = visit_big_integer

    def visit_small_integer(self, type_: Any, **kw: Any) -> str:
        return "SMALLINT"

    visit_SMALLINT = visit_small_integer

    def visit_float(self, type_: Any, **kw: Any) -> str:
        return "DOUBLE"

    visit_FLOAT = visit_REAL = visit_DOUBLE = visit_double = visit_float
    visit_DOUBLE_PRECISION = visit_float

    def visit_numeric(self, type_: Any, **kw: Any) -> str:
        if type_.precision is None:
            return "DECIMAL(38, 18)"  # Spark's bare DECIMAL is (10, 0): it would round
        return f"DECIMAL({type_.precision}, {type_.scale or 0})"

    visit_NUMERIC = visit_DECIMAL = visit_numeric

    def visit_boolean(self, type_: Any, **kw: Any) -> str:
        return "BOOLEAN"

    visit_BOOLEAN = visit_boolean

    def visit_date(self, type_: Any, **kw: Any) -> str:
        return "DATE"

    visit_DATE = visit_date

    def visit_datetime(self, type_: Any, **kw: Any) -> str:
        return "TIMESTAMP"

    visit_DATETIME = visit_TIMESTAMP = visit_datetime

    def visit_time(self, type_: Any, **kw: Any) -> str:
        return "STRING"  # Spark 4.0 has no TIME type

    visit_TIME = visit_time

    def visit_large_binary(self, type_: Any, **kw: Any) -> str:
        return "BINARY"

    visit_BLOB = visit_BINARY = visit_VARBINARY = visit_LargeBinary = visit_large_binary


class _Underscore(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "_"


class SparkCompiler(compiler.SQLCompiler):
    @classmethod
    def _init_bind_translate(cls) -> None:
        """Bind names of any column name: Spark's ``:name`` marker takes letters, digits
        and ``_`` only, so every other character becomes ``_`` (SQLAlchemy keeps the
        escaped names apart)."""
        cls._bind_translate_re = re.compile(r"[^A-Za-z0-9_]")
        cls._bind_translate_chars = _Underscore()

    def render_literal_value(self, value: Any, type_: sqltypes.TypeEngine[Any]) -> str:
        if isinstance(value, str):
            return spark_literal(value)
        return super().render_literal_value(value, type_)

    def limit_clause(self, select: Any, **kw: Any) -> str:
        """LIMIT/OFFSET as literal integers (a parameter marker is not a LIMIT there)."""
        text = ""
        if select._limit_clause is not None:
            text += "\n LIMIT " + self.process(select._limit_clause, literal_binds=True, **kw)
        if select._offset_clause is not None:
            text += "\n OFFSET " + self.process(select._offset_clause, literal_binds=True, **kw)
        return text

    def for_update_clause(self, select: Any, **kw: Any) -> str:
        return ""  # no row locks in Spark


class SparkDDLCompiler(compiler.DDLCompiler):
    def visit_create_schema(self, create: ddl.CreateSchema, **kw: Any) -> str:
        exists = "IF NOT EXISTS " if create.if_not_exists else ""
        return f"CREATE DATABASE {exists}{self.preparer.format_schema(create.element)}"

    def visit_drop_schema(self, drop: ddl.DropSchema, **kw: Any) -> str:
        exists = "IF EXISTS " if drop.if_exists else ""
        cascade = " CASCADE" if drop.cascade else ""
        return f"DROP DATABASE {exists}{self.preparer.format_schema(drop.element)}{cascade}"

    def create_table_constraints(self, table: Any, _include_foreign_key_constraints: Any = None,
                                 **kw: Any) -> str:
        return ""  # parquet tables enforce no key, unique or foreign-key constraint

    def get_column_specification(self, column: sa.Column[Any], **kw: Any) -> str:
        typ = self.dialect.type_compiler_instance.process(column.type, type_expression=column)
        spec = f"{self.preparer.format_column(column)} {typ}"
        default = self.get_column_default_string(column)
        if default is not None:
            spec += f" DEFAULT {default}"
        if not column.nullable:
            spec += " NOT NULL"
        return spec

    def post_create_table(self, table: sa.Table) -> str:
        """``USING parquet`` (``spark_using``), ``PARTITIONED BY`` the columns of
        ``spark_partition_by``."""
        opts = table.dialect_options["spark"]
        text = f"\nUSING {opts['using'] or 'parquet'}"
        if opts["partition_by"]:
            cols = ", ".join(self.preparer.quote(c) for c in opts["partition_by"])
            text += f"\nPARTITIONED BY ({cols})"
        return text

    def visit_create_index(self, create: Any, include_schema: Any = False,
                           include_table_schema: Any = True, **kw: Any) -> str:
        raise sa.exc.CompileError("Spark has no indexes: leave Index() out of Spark tables")


class SparkDialect(default.DefaultDialect):
    """``spark://host:port`` (``sc://host:port`` is the session's URL)."""

    name = "spark"
    driver = "connect"
    supports_statement_cache = True
    default_paramstyle = "named"
    preparer = SparkIdentifierPreparer  # type: ignore[assignment]
    statement_compiler = SparkCompiler
    ddl_compiler = SparkDDLCompiler
    type_compiler_cls = SparkTypeCompiler
    supports_native_boolean = True
    supports_native_decimal = True
    supports_sequences = False
    sequences_optional = False
    supports_alter = False
    supports_comments = False
    supports_default_values = False
    supports_default_metavalue = False
    supports_empty_insert = False
    supports_multivalues_insert = True
    use_insertmanyvalues = True
    use_insertmanyvalues_wo_returning = True  # one INSERT (one Spark job) per page of rows
    insertmanyvalues_page_size = 1000
    insert_returning = update_returning = delete_returning = False
    postfetch_lastrowid = False
    implicit_returning = False
    requires_name_normalize = False
    max_identifier_length = 255
    #: ``Table(..., spark_using="parquet", spark_partition_by=["col"])``
    construct_arguments = [(sa.Table, {"using": None,  # type: ignore[misc]  # noqa: RUF012
                                       "partition_by": None})]

    @classmethod
    def import_dbapi(cls) -> Any:
        return spark_dbapi

    def create_connect_args(self, url: sa.URL) -> tuple[list[Any], dict[str, Any]]:
        host = url.host or "127.0.0.1"
        return [f"sc://{host}:{url.port or 15002}"], {}

    # -- no transactions, no isolation levels --------------------------------------------

    def get_isolation_level(self, dbapi_connection: Any) -> Any:
        return "AUTOCOMMIT"

    def get_isolation_level_values(self, dbapi_connection: Any) -> list[Any]:
        return ["AUTOCOMMIT"]

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        return None

    def _get_default_schema_name(self, connection: sa.Connection) -> str:
        return str(connection.exec_driver_sql("SELECT current_database()").scalar())

    def do_ping(self, dbapi_connection: Any) -> bool:
        dbapi_connection.cursor().execute("SELECT 1")
        return True

    # -- reflection ----------------------------------------------------------------------

    def _schema(self, connection: sa.Connection, schema: str | None) -> str:
        return schema or self.default_schema_name or "default"

    def _names(self, connection: sa.Connection, what: str, schema: str) -> list[str]:
        """``SHOW TABLES``/``SHOW VIEWS`` of ``schema``; none where it does not exist.
        One statement: asking ``SHOW DATABASES`` first cost a second one per lookup, and
        on Spark each statement costs planning whatever its rows (no transaction to spoil:
        the failed one leaves the connection as it was)."""
        sql = f"SHOW {what} IN {self.identifier_preparer.quote_identifier(schema)}"
        try:
            rows = connection.exec_driver_sql(sql).mappings().all()
        except sa.exc.ProgrammingError as exc:
            if SCHEMA_NOT_FOUND in str(exc.orig):
                return []
            raise
        return [str(r.get("tableName", r.get("viewName"))) for r in rows
                if not r.get("isTemporary")]

    @reflection.cache
    def get_schema_names(self, connection: sa.Connection, **kw: Any) -> list[str]:
        return [str(r[0]) for r in connection.exec_driver_sql("SHOW DATABASES")]

    def has_schema(self, connection: sa.Connection, schema_name: str, **kw: Any) -> bool:
        return schema_name.lower() in {s.lower() for s in self.get_schema_names(connection)}

    @reflection.cache
    def get_table_names(self, connection: sa.Connection, schema: str | None = None,
                        **kw: Any) -> list[str]:
        name = self._schema(connection, schema)
        views = set(self._names(connection, "VIEWS", name))
        return [t for t in self._names(connection, "TABLES", name) if t not in views]

    @reflection.cache
    def get_view_names(self, connection: sa.Connection, schema: str | None = None,
                       **kw: Any) -> list[str]:
        return self._names(connection, "VIEWS", self._schema(connection, schema))

    def has_table(self, connection: sa.Connection, table_name: str, schema: str | None = None,
                  **kw: Any) -> bool:
        """A table or a view (Spark's catalog keeps names lower-case)."""
        names = self._names(connection, "TABLES", self._schema(connection, schema))
        return table_name.lower() in {n.lower() for n in names}

    def get_columns(self, connection: sa.Connection, table_name: str,
                    schema: str | None = None, **kw: Any) -> list[Any]:
        schema = self._schema(connection, schema)
        if not self.has_table(connection, table_name, schema):
            raise sa.exc.NoSuchTableError(f"{schema}.{table_name}")
        return [{"name": name, "type": spark_type(typ), "nullable": True, "default": None}
                for name, typ in describe_columns(connection, schema, table_name)]

    def get_pk_constraint(self, connection: sa.Connection, table_name: str,
                          schema: str | None = None, **kw: Any) -> Any:
        return {"constrained_columns": [], "name": None}

    def get_foreign_keys(self, connection: sa.Connection, table_name: str,
                         schema: str | None = None, **kw: Any) -> list[Any]:
        return []

    def get_indexes(self, connection: sa.Connection, table_name: str,
                    schema: str | None = None, **kw: Any) -> list[Any]:
        return []

    def get_unique_constraints(self, connection: sa.Connection, table_name: str,
                               schema: str | None = None, **kw: Any) -> list[Any]:
        return []

    def get_check_constraints(self, connection: sa.Connection, table_name: str,
                              schema: str | None = None, **kw: Any) -> list[Any]:
        return []


def describe_columns(connection: sa.Connection, schema: str, table: str
                     ) -> list[tuple[str, str]]:
    """(name, Spark type name) of a table's columns from ``DESCRIBE TABLE``, partition
    columns included once (DESCRIBE lists them again after a ``#`` header)."""
    q = connection.dialect.identifier_preparer.quote_identifier
    out: list[tuple[str, str]] = []
    for name, typ, *_ in connection.exec_driver_sql(f"DESCRIBE TABLE {q(schema)}.{q(table)}"):
        if not name or str(name).startswith("#"):
            break
        out.append((str(name), str(typ)))
    return out
