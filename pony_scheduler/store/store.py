"""The narrow interface every other module uses to reach the database.

One short transaction per call (`engine.begin()`): nothing holds a session or a
connection across iterations of the work loop.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import Connection, Engine, update
from sqlalchemy.exc import DBAPIError, OperationalError

from pony_scheduler import __version__
from pony_scheduler.errors import PonyError
from pony_scheduler.lifecycle.pidfile import boot_id, proc_start_time
from pony_scheduler.scheduler.host import machine_id, pid_namespace
from pony_scheduler.store import migrate
from pony_scheduler.store.audit import AuditQueries
from pony_scheduler.store.common import first_line, read_changes, utcnow
from pony_scheduler.store.engine import (
    FileWatch,
    is_corrupt,
    make_engine,
    parse_url,
    safe_url,
    trust_warning,
)
from pony_scheduler.store.history import HistoryQueries
from pony_scheduler.store.jobs import JobQueries
from pony_scheduler.store.ownership import OwnershipQueries
from pony_scheduler.store.tables import schedulers

log = logging.getLogger(__name__)


def _refuse_read_only(connection: Connection, url: str) -> None:
    """PostgreSQL that takes connections but no writes (a hot standby, or
    default_transaction_read_only): a scheduler cannot run on it - its first write
    failed with the driver's traceback (review finding).  Raises PonyError."""
    if connection.dialect.name != "postgresql":
        return  # an SQLite file we may not write is refused by check_database
    if connection.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
        raise PonyError(
            f"database {safe_url(url)} is read-only (transaction_read_only is on: a hot "
            "standby, or default_transaction_read_only); point --db at the primary"
        )


def _unusable(url: str, exc: Exception) -> PonyError:
    """The one line for a database that cannot be used (corrupt, or not answering)."""
    if is_corrupt(exc):
        return PonyError(
            f"database {safe_url(url)} is corrupt ({first_line(exc)}); "
            "restore it from a backup, or move it aside to start afresh"
        )
    if parse_url(url).get_backend_name() == "sqlite":
        # No server to blame: a full filesystem is the common cause of "disk I/O error"
        # (SQLite cannot grow its -shm file, even to read; review finding).
        return PonyError(
            f"cannot use database {safe_url(url)}: {first_line(exc)}; check that its "
            "filesystem has free space (df) and that its files are yours and writable"
        )
    return PonyError(
        f"cannot use database {safe_url(url)}: {first_line(exc)}; check "
        "--db and that the database server is running"
    )


class Store(JobQueries, OwnershipQueries, HistoryQueries, AuditQueries):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.scheduler_id: str | None = None
        # Where this process may delete a removed job's output files (files.output_dir of
        # its home and this database): set by the CLI and the scheduler; None: nowhere.
        self.output_dir: str | None = None
        self._watch: FileWatch | None = None

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True, create: bool = False) -> Store:
        """Create the engine, check the connection and bring the schema up to date.

        Without `upgrade` (the CLI, the gateway) a schema that is not current is an error:
        only the scheduler migrates, at its start, so that two versions never fight over
        it (a newer `pb` ran the migration under an older running scheduler, which then
        waited on its lock and missed runs: review finding).  With `create` (the CLI) a
        database without the schema gets it: `pb job add` before the first start.
        """
        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                if upgrade:  # the scheduler writes at once (register_scheduler)
                    _refuse_read_only(connection, url)
            if not upgrade:
                if create and migrate.current_revision(engine) is None:
                    migrate.upgrade(engine)  # a new database: nothing to migrate
                _check_current(engine, url)
            else:
                before, after = migrate.upgrade(engine)
                if before != after:
                    log.info("Database schema upgraded from %s to %s", before or "empty", after)
                warning = trust_warning(engine)  # the scheduler, at start
                if warning:
                    log.warning("%s", warning)
        except (OperationalError, DBAPIError) as exc:
            engine.dispose()
            raise _unusable(url, exc) from None
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @staticmethod
    def probe(url: str) -> None:
        """Connect once and let go, nothing written: raises PonyError (the line open()
        would give) when the database does not answer, takes no writes, or holds a schema
        newer than this code (a newer package migrated it: review finding, the restart
        stopped the running scheduler and then failed on it).  Asked before a running
        scheduler is replaced (scheduler/service.check_handover)."""
        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                _refuse_read_only(connection, url)
            migrate.check_known(migrate.current_revision(engine))
        except (OperationalError, DBAPIError) as exc:
            raise _unusable(url, exc) from None
        finally:
            engine.dispose()

    def check_file(self) -> None:
        """SQLite: report a file damaged or replaced under us (engine.FileWatch)."""
        if self._watch is None:
            self._watch = FileWatch(self.engine)
        self._watch.check()

    def close(self) -> None:
        """Close every pooled connection (then the file watch: see FileWatch)."""
        self.engine.dispose()
        if self._watch is not None:
            self._watch.close()

    # -- scheduler processes -------------------------------------------------------------
    def register_scheduler(self, home: str | None = None) -> str:
        """Record this process as a running scheduler of `home`; returns its new id.
        Its times are the database's (store/clock.py), as every host judges them."""
        now = self.db_now()
        self.scheduler_id = str(uuid.uuid4())
        with self.engine.begin() as connection:
            connection.execute(
                schedulers.insert().values(
                    id=self.scheduler_id,
                    hostname=socket.gethostname(),
                    machine_id=machine_id(),
                    pid=os.getpid(),
                    proc_start=proc_start_time(os.getpid()),
                    boot_id=boot_id(),
                    pid_ns=pid_namespace(),
                    version=__version__,
                    started_at=now,
                    heartbeat_at=now,
                    home=home,
                )
            )
        return self.scheduler_id

    def changes(self) -> int:
        """The job change counter that `pb job …` bumps (one tiny query)."""
        return read_changes(self.engine)

    def mark_scheduler_gone(self, scheduler_id: str) -> None:
        """Record another scheduler, verifiably dead, as stopped."""
        with self.engine.begin() as connection:
            connection.execute(
                update(schedulers)
                .where(schedulers.c.id == scheduler_id)
                .values(stopped_at=utcnow())
            )

    def heartbeat(self, clock_offset: float | None = None) -> None:
        """Tell other schedulers and `pb` that this one is alive (and how far this host's
        clock is from the database's, in seconds)."""
        with self.engine.begin() as connection:
            connection.execute(
                update(schedulers)
                .where(schedulers.c.id == self.scheduler_id)
                .values(
                    heartbeat_at=utcnow() + timedelta(seconds=clock_offset or 0.0),
                    clock_offset_s=clock_offset,
                )
            )

    def mark_stopped(self) -> None:
        """Record this scheduler's orderly stop."""
        with self.engine.begin() as connection:
            connection.execute(
                update(schedulers)
                .where(schedulers.c.id == self.scheduler_id)
                .values(stopped_at=utcnow())
            )


def _check_current(engine: Engine, url: str) -> None:
    current, head = migrate.current_revision(engine), migrate.HEAD
    migrate.check_known(current)
    if current is None:
        raise PonyError(
            f"database {safe_url(url)} has no pony-scheduler schema yet; start "
            "the scheduler once ('pb scheduler start') to create it"
        )
    if current != head:
        raise PonyError(
            f"database {safe_url(url)} is at schema {current}, this pb expects "
            f"{head}; restart the scheduler with this version to migrate it"
        )
