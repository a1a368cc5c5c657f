"""Engines for SQLite (the embedded default) and PostgreSQL, tuned for a daemon."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from pony_scheduler.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 10_000


def parse_url(value: str) -> URL:
    """Validate a `--db` URL without connecting (safe before forking)."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigError(f"--db {value!r} is neither a path nor an SQLAlchemy URL such as "
                          "postgresql+psycopg://user@host/dbname") from None
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"--db {safe_url(url)}: unknown database driver {url.drivername!r}; "
                          "use sqlite:///PATH or postgresql+psycopg://…") from None
    except ImportError as exc:
        raise ConfigError(f"--db {safe_url(url)}: the driver is not installed ({exc.name}); "
                          "pip install 'pony-scheduler[postgresql]'") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"--db {safe_url(url)}: only SQLite and PostgreSQL are supported")
    return url


def safe_url(url: URL | str) -> str:
    """The URL as users may see it in logs and status: without the password."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return str(url)
    return parsed.render_as_string(hide_password=True)


def make_engine(value: str) -> Engine:
    url = parse_url(value)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args: dict[str, Any] = {"connect_timeout": 5}
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                         connect_args=connect_args)


def _sqlite_engine(url: URL) -> Engine:
    # Autocommit at the driver level; SQLAlchemy issues BEGIN itself so that we can make
    # it BEGIN IMMEDIATE: writers then queue on the busy timeout instead of failing with
    # "database is locked" when a read transaction tries to upgrade.
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                              "check_same_thread": False,
                                              "isolation_level": None})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        _wal(cursor)
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _wal(cursor: Any) -> None:
    """Switch a database to WAL (it stays so).  On a new database that another connection
    is creating, the switch fails at once with "database is locked", without waiting on
    the busy timeout: try again for as long as that timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
