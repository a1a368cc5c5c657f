"""The work loop's hot statements, compiled once and run on the driver's own cursor.

Every job run goes through a handful of statements (claim, started, finish).  On SQLite,
SQLAlchemy's per-call work (cache key, execution context, result wrapping) costs several
times what SQLite itself spends on them, and it was most of the daemon's CPU per run
(docs/BENCHMARKS.md, finding 2).  The statements stay defined in Core, so the dialect still
writes the SQL (placeholders, casts, FOR UPDATE SKIP LOCKED); values go through the
columns' own type processors, so a datetime is stored exactly as the Core path stores it.
They run on a driver connection inside `transaction()`, which also skips SQLAlchemy's
connection and transaction bookkeeping: on SQLite that was as costly as the statements.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Dialect, Engine, Executable
from sqlalchemy.exc import DBAPIError, StatementError

Processor = Callable[[Any], Any]


class Prepared:
    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.sql: str = compiled.string
        self.dialect = dialect
        # qmark dialects (SQLite) take a tuple in this order; others take a mapping.
        self.order: list[str] | None = compiled.positiontup
        self.fixed: dict[str, Any] = {}  # values written into the statement (states, NULL)
        self.binders: dict[str, Processor] = {}
        for bind, name in compiled.bind_names.items():
            if not bind.required:
                self.fixed[name] = bind.value
            binder = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if binder is not None:
                self.binders[name] = binder
        self.columns = list(getattr(statement, "selected_columns", ()))
        self.keys: list[str] = [column.key for column in self.columns]
        self.readers: list[Processor | None] | None = None  # from the first result

    def _readers(self, description: Any) -> list[Processor | None]:
        # Some processors depend on the type the driver reports (PostgreSQL numerics).
        if self.readers is None:
            self.readers = [
                column.type.dialect_impl(self.dialect).result_processor(self.dialect, info[1])
                for column, info in zip(self.columns, description, strict=True)
            ]
        return self.readers

    def params(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters: fixed values merged, type processors applied."""
        merged = {**self.fixed, **values}
        for name, binder in self.binders.items():
            merged[name] = binder(merged[name])
        return merged if self.order is None else tuple([merged[name] for name in self.order])

    def execute(self, connection: Any, values: Mapping[str, Any] | None = None) -> Any:
        """Run once; returns the driver's cursor (rowcount, rows), which the caller closes."""
        # No closure and no context manager here: this runs for every statement of every
        # run, and those were a measurable part of its Python cost.
        cursor = connection.cursor()
        try:
            cursor.execute(self.sql, self.params(values or {}))
        except self.dialect.loaded_dbapi.Error as exc:
            cursor.close()
            raise _translate(self.dialect, self.sql, values, exc) from exc
        except BaseException:
            cursor.close()
            raise
        return cursor

    def execute_many(self, connection: Any, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run once per row of values, in one driver call."""
        batch = [self.params(values) for values in rows]
        self._run(connection, lambda cursor: cursor.executemany(self.sql, batch), None).close()

    def rowcount(self, connection: Any, values: Mapping[str, Any]) -> int:
        """Run once; how many rows it changed."""
        cursor = self.execute(connection, values)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def mappings(
        self, connection: Any, values: Mapping[str, Any] | None = None, *, raw: bool = False
    ) -> list[dict[str, Any]]:
        """Rows as dicts; `raw` leaves values as the driver gave them, for callers that
        look at a few plain columns of many rows and convert() only the rows they keep."""
        found = [dict(zip(self.keys, row, strict=True)) for row in self.tuples(connection, values)]
        return found if raw else [self.convert(row) for row in found]

    def tuples(self, connection: Any, values: Mapping[str, Any] | None = None) -> list[Any]:
        """Rows as the driver gave them (no dict, no conversion), for a caller that looks
        at a plain column of every row and convert()s only the rows it keeps."""
        cursor = self.execute(connection, values)
        try:
            rows = cursor.fetchall()
            self._readers(cursor.description)
        finally:
            cursor.close()
        return list(rows)

    def convert(self, row: dict[str, Any] | Sequence[Any]) -> dict[str, Any]:
        """A raw row's values (a mapping() dict or a tuples() row) through the columns'
        result processors."""
        assert self.readers is not None, "convert() before any result"
        values = row.values() if isinstance(row, dict) else row
        return {
            key: value if reader is None else reader(value)
            for key, value, reader in zip(self.keys, values, self.readers, strict=True)
        }

    def scalars(self, connection: Any, values: Mapping[str, Any] | None = None) -> list[Any]:
        return [next(iter(row.values())) for row in self.mappings(connection, values)]

    def _run(
        self, connection: Any, call: Callable[[Any], Any], values: Mapping[str, Any] | None
    ) -> Any:
        cursor = connection.cursor()
        try:
            with translated(self.dialect, self.sql, values):
                call(cursor)
        except BaseException:
            cursor.close()
            raise
        return cursor


@contextlib.contextmanager
def translated(dialect: Dialect, sql: str, values: Any) -> Iterator[None]:
    """Driver errors as SQLAlchemy's: the loop's handling of a locked, read-only or
    restarting database expects them, as from every other query."""
    error = dialect.loaded_dbapi.Error
    try:
        yield
    except error as exc:
        raise _translate(dialect, sql, values, exc) from exc


def _translate(dialect: Dialect, sql: str, values: Any, exc: Exception) -> StatementError:
    """A driver error as SQLAlchemy's DBAPIError, with corruption reported."""
    from pony_scheduler.store.engine import is_corrupt, report_corruption

    if is_corrupt(exc):  # the engine's error hook does not see this path
        report_corruption(None, str(exc))
    return DBAPIError.instance(sql, values, exc, dialect.loaded_dbapi.Error, dialect=dialect)


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Any]:
    """One write transaction on a pooled driver connection: committed, or rolled back on
    any error, and the connection returned to the pool either way."""
    # raw_connection() raises the driver's own error when the database refuses a new
    # connection (restarting, unreachable): translated, as the loop expects.
    with translated(engine.dialect, "connect", None):
        connection = engine.raw_connection()
    try:
        begin = "BEGIN IMMEDIATE" if engine.dialect.name == "sqlite" else None
        if begin is not None:  # as the engine's own transactions begin (engine.py)
            with translated(engine.dialect, begin, None):
                connection.cursor().execute(begin).close()
        try:
            yield connection
            with translated(engine.dialect, "COMMIT", None):
                connection.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                connection.rollback()
            raise
    finally:
        connection.close()
