"""A DB-API 2.0 module over a Spark Connect session, so SQLAlchemy (and through it the
whole monitor) issues Spark SQL without a JVM in this process.

``cursor.execute(sql, params)`` runs ``session.sql(sql, args=params)``: Spark binds the
named ``:param`` markers itself, so values never become SQL text. Spark has no
transactions: ``commit`` and ``rollback`` do nothing, every statement takes effect when
it runs, and a caller must not rely on a rollback undoing a write
(``Backend.transactional`` is False on Spark). ``rowcount`` is the number of rows a
query returned; for other statements Spark does not report it (-1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from monitor.warehouse.spark_session import spark_session

if TYPE_CHECKING:
    from pyspark.sql.connect.session import SparkSession

__all__ = ["Connection", "Cursor", "DatabaseError", "Error", "IntegrityError",
           "InterfaceError", "InternalError", "NotSupportedError", "OperationalError",
           "ProgrammingError", "Warning", "apilevel", "connect", "paramstyle", "run_discarding",
           "threadsafety"]

apilevel = "2.0"
threadsafety = 1  # connections share the process's session; cursors are not shared
paramstyle = "named"


class Warning(Exception):  # the DB-API's name
    """DB-API warning."""


class Error(Exception):
    """Base of the DB-API errors (SQLAlchemy wraps exactly these)."""


class InterfaceError(Error):
    """Misuse of this module (a closed cursor)."""


class DatabaseError(Error):
    """An error the Spark server reported."""


class DataError(DatabaseError):
    """A value Spark could not process (a cast, an overflow)."""


class OperationalError(DatabaseError):
    """The server could not be reached or the query was interrupted."""


class IntegrityError(DatabaseError):
    """Not raised by Spark (no constraints are enforced); here for the DB-API."""


class InternalError(DatabaseError):
    """An internal server error."""


class ProgrammingError(DatabaseError):
    """Bad SQL: a parse or analysis error (unknown table or column)."""


class NotSupportedError(DatabaseError):
    """What Spark cannot do (an UPDATE on a parquet table)."""


def _wrap(exc: Exception) -> Error:
    """The DB-API error of a pyspark exception, by its class name (pyspark's error
    classes differ between the classic and the Connect client)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = str(exc)
    if names & {"ParseException", "AnalysisException"}:
        if "UNSUPPORTED" in text or "NOT_SUPPORTED" in text:
            return NotSupportedError(text)
        return ProgrammingError(text)
    if names & {"ArithmeticException", "NumberFormatException", "DateTimeException",
                "SparkNumberFormatException", "SparkArithmeticException"}:
        return DataError(text)
    if "UNSUPPORTED" in text:
        return NotSupportedError(text)
    return OperationalError(text)


class Cursor:
    """Runs one statement at a time; rows are fetched whole (``collect``)."""

    arraysize = 1000

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.description: list[tuple[Any, ...]] | None = None
        self.rowcount = -1
        self._rows: list[tuple[Any, ...]] = []
        self._pos = 0
        self._closed = False

    def execute(self, operation: str, parameters: Mapping[str, Any] | None = None) -> Cursor:
        if self._closed or self.connection.closed:
            raise InterfaceError("cursor or connection is closed")
        session = self.connection.session
        args = dict(parameters) if parameters else None
        try:
            df = session.sql(operation, args=args) if args else session.sql(operation)
            fields = df.schema.fields
            rows = [tuple(r) for r in df.collect()] if fields else []
        except Error:
            raise
        except Exception as exc:  # pyspark raises its own hierarchy; DB-API wants ours
            raise _wrap(exc) from exc
        self.description = ([(f.name, f.dataType.simpleString(), None, None, None, None,
                              f.nullable) for f in fields] if fields else None)
        self._rows, self._pos = rows, 0
        self.rowcount = len(rows) if fields else -1
        return self

    def executemany(self, operation: str, seq_of_parameters: Sequence[Mapping[str, Any]]
                    ) -> Cursor:
        """One statement per parameter set (SQLAlchemy batches INSERTs into one
        multi-row VALUES before they get here: ``use_insertmanyvalues``)."""
        for params in seq_of_parameters:
            self.execute(operation, params)
        self.rowcount = -1
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        n = self.arraysize if size is None else size
        rows = self._rows[self._pos:self._pos + n]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows = self._rows[self._pos:]
        self._pos = len(self._rows)
        return rows

    def close(self) -> None:
        self._closed = True
        self._rows = []

    def setinputsizes(self, sizes: Any) -> None:
        return None

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        return None


class Connection:
    """A handle on the process's Spark Connect session for ``url``. Closing it does not
    stop the session (``spark_session.stop_sessions`` does, at exit)."""

    def __init__(self, session: SparkSession) -> None:
        self.session = session
        self.closed = False

    def cursor(self) -> Cursor:
        if self.closed:
            raise InterfaceError("connection is closed")
        return Cursor(self)

    def commit(self) -> None:
        """Nothing: Spark has no transactions (each statement took effect as it ran)."""
        return None

    def rollback(self) -> None:
        """Nothing: Spark has no transactions, so nothing can be undone."""
        return None

    def close(self) -> None:
        self.closed = True


def run_discarding(connection: Connection, operation: str) -> None:
    """Run the query ``operation`` to its end and drop its rows (Spark's ``noop`` sink):
    every column is computed, unlike ``SELECT count(*)`` over it, whose unused
    aggregates the optimizer prunes, and nothing comes back to this process."""
    if connection.closed:
        raise InterfaceError("connection is closed")
    try:
        connection.session.sql(operation).write.format("noop").mode("overwrite").save()
    except Exception as exc:  # pyspark raises its own hierarchy; DB-API wants ours
        raise _wrap(exc) from exc


def connect(url: str, password_env: str = "") -> Connection:
    """A connection on the Spark Connect endpoint ``url`` (``sc://host:port``); the
    token, if any, from the environment variable ``password_env`` names."""
    try:
        return Connection(spark_session(url, password_env))
    except ValueError as exc:  # SparkUrlError: a bad url or an unset token variable
        raise InterfaceError(str(exc)) from exc
    except Exception as exc:
        raise OperationalError(f"cannot open a Spark Connect session on {url}: {exc}") from exc
