"""Bring a database's schema to the version this code expects (Alembic).

A database made by an older pony-scheduler is upgraded; one made by a newer version (a
revision we do not know) is refused rather than half-understood.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from pony_scheduler.errors import PonyError

MIGRATIONS = Path(__file__).with_name("migrations")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Upgrade to head; return (before, after)."""
    config = _config()
    script = ScriptDirectory.from_config(config)
    before = current_revision(engine)
    known = {rev.revision for rev in script.walk_revisions()}
    if before is not None and before not in known:
        raise PonyError(
            f"the database schema is at revision {before}, newer than this pony-scheduler "
            f"understands (up to {script.get_current_head()}); upgrade pony-scheduler or use "
            "another --db")
    head = script.get_current_head()
    assert head is not None
    if before != head:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    return before, head
