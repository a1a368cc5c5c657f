"""The narrow interface every other module uses to reach the database.

One short transaction per call (`engine.begin()`): nothing holds a session or a
connection across iterations of the work loop.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine, update
from sqlalchemy.exc import DBAPIError, OperationalError

from pony_scheduler import __version__
from pony_scheduler.errors import PonyError
from pony_scheduler.store import migrate
from pony_scheduler.store.engine import make_engine, safe_url
from pony_scheduler.store.tables import schedulers

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.scheduler_id: str | None = None

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Store:
        """Create the engine, check the connection and bring the schema up to date."""
        engine = make_engine(url)
        try:
            with engine.connect():
                pass
            if upgrade:
                before, after = migrate.upgrade(engine)
                if before != after:
                    log.info("Database schema upgraded from %s to %s", before or "empty", after)
        except (OperationalError, DBAPIError) as exc:
            engine.dispose()
            raise PonyError(f"cannot use database {safe_url(url)}: {_first_line(exc)}; check "
                            "--db and that the database server is running") from None
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- scheduler processes -------------------------------------------------------------
    def register_scheduler(self) -> str:
        now = utcnow()
        self.scheduler_id = str(uuid.uuid4())
        with self.engine.begin() as connection:
            connection.execute(schedulers.insert().values(
                id=self.scheduler_id, hostname=socket.gethostname(), pid=os.getpid(),
                version=__version__, started_at=now, heartbeat_at=now))
        return self.scheduler_id

    def heartbeat(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(schedulers).where(schedulers.c.id == self.scheduler_id)
                               .values(heartbeat_at=utcnow()))

    def mark_stopped(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(schedulers).where(schedulers.c.id == self.scheduler_id)
                               .values(stopped_at=utcnow()))


def _first_line(exc: DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
