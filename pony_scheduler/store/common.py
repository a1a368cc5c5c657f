"""Small helpers shared by the store's query modules."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, select, update

from pony_scheduler.store.tables import counters

CHANGES = "job_changes"


def utcnow() -> datetime:
    """This host's time, aware UTC (the loop adds the database clock's offset)."""
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset, or None."""
    return value.astimezone(UTC).isoformat() if value is not None else None


def insert_ignore(connection: Connection | Engine, table: Table) -> Insert:
    """INSERT … ON CONFLICT DO NOTHING: the unique key, not a race, decides who wins.

    The dialect module is imported here, not at the top: importing the PostgreSQL dialect
    pulls in asyncio and every driver shim, which SQLite users would pay on every command.
    """
    module = importlib.import_module(f"sqlalchemy.dialects.{connection.dialect.name}")
    return module.insert(table).on_conflict_do_nothing()


def bump_changes(connection: Connection) -> None:
    """Tell running schedulers that jobs changed (they poll this one row)."""
    result = connection.execute(
        update(counters).where(counters.c.key == CHANGES).values(value=counters.c.value + 1)
    )
    if result.rowcount == 0:
        connection.execute(insert_ignore(connection, counters).values(key=CHANGES, value=1))


CHANGES_QUERY = select(counters.c.value).where(counters.c.key == CHANGES)


def read_changes(engine: Engine) -> int:
    """The job change counter (0 before any change)."""
    with engine.connect() as connection:
        value = connection.execute(CHANGES_QUERY).scalar()
    return int(value or 0)


def first_line(exc: Exception) -> str:
    """The driver's own message, first line only: what users need to read."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def row_dict(row: Any) -> dict[str, Any]:
    """A result row as a plain dict, by column name."""
    return dict(row._mapping)


def loads(text: str | None, default: Any) -> Any:
    """Stored JSON, or `default` when it is empty or damaged."""
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default
