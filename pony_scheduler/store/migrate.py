"""Bring a database's schema to the version this code expects (Alembic).

A database made by an older pony-scheduler is upgraded; one made by a newer version (a
revision we do not know) is refused rather than half-understood.  Alembic itself is
imported only when there is something to upgrade: checking the version is one query,
which keeps `pb job …` quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from pony_scheduler.errors import PonyError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# The revisions in migrations/versions, oldest first (a test keeps this in step with Alembic).
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009")
HEAD = REVISIONS[-1]


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision, None for a database without our schema."""
    with engine.connect() as connection:
        return _revision_in(connection)


def check_known(revision: str | None) -> None:
    """PonyError for a revision newer than this code (unknown to it)."""
    if revision is not None and revision not in REVISIONS:
        raise PonyError(
            f"the database schema is at revision {revision}, newer than this pony-scheduler "
            f"understands (up to {HEAD}); upgrade pony-scheduler or use another --db"
        )


# Any constant will do: it names "pony-scheduler migrates" among advisory locks.
PG_MIGRATION_LOCK = 0x706F6E79


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Upgrade to head; return (before, after).

    Schedulers started together on an empty database must not both run the migrations:
    the version is read again inside the migrating transaction, which holds an advisory
    lock on PostgreSQL and SQLite's write lock (BEGIN IMMEDIATE) there.
    """
    before = current_revision(engine)
    check_known(before)
    if before == HEAD:
        return before, HEAD
    from alembic import command

    config = _config()
    with engine.connect() as connection:
        # SQLite: a batch ALTER rebuilds a table (copy, DROP, rename); with foreign keys
        # on, dropping `jobs` would delete every run (ON DELETE CASCADE).  The pragma is
        # a no-op inside a transaction, so it is set on the driver's connection before
        # the migrating one begins, and set back on after it for the pool.
        sqlite = connection.dialect.name == "sqlite"
        raw = connection.connection.driver_connection if sqlite else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK}
                    )
                before = _revision_in(connection)
                check_known(before)
                if before != HEAD:
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")
    return before, HEAD


def _revision_in(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
