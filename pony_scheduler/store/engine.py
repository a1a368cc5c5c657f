"""Engines for SQLite (the embedded default) and PostgreSQL, tuned for a daemon.

Whoever can write the jobs table runs commands as the scheduler's user, so the database
is part of the trust boundary (README, SECURITY): an SQLite file and its directory must
pass the same StrictModes check as the home (files.check_database_file), the file is
created 0600 by us before SQLite sees it, and SQLite opens it with `nofollow`; a
PostgreSQL server that let us in without a password gets a warning in the log.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from pony_scheduler.errors import ConfigError

log = logging.getLogger("pony_scheduler.store")

SQLITE_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL ends a session left idle inside a transaction this long, releasing its row
# locks: a host frozen mid-transaction (SIGSTOP, a suspended VM) must not block the
# others, which would otherwise wait on those rows for as long as it stays frozen.  Our
# transactions never wait on anything but the database itself.
PG_IDLE_IN_TRANSACTION_MS = 10_000
# sqlite3_errcode() primary codes that mean the file is damaged or not a database.
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26


PG_EXTRA = "pip install 'pony-scheduler[postgresql]'"  # installs psycopg (setup.cfg)


def missing_driver(url: URL, driver: str, psycopg_installed: bool) -> str:
    """Why `url` cannot be used when its driver module `driver` cannot be imported, and
    what helps: the postgresql+psycopg:// URL only when psycopg is there to serve it (it
    was suggested to users who lacked psycopg too, and needed the same install), else
    the extra that installs it (review finding)."""
    where = f"--db {safe_url(url)}: its driver {driver} is not installed"
    if url.get_backend_name() != "postgresql":
        return f"{where}, and only SQLite and PostgreSQL are supported"
    if url.get_driver_name() == "psycopg":
        return f"{where}; {PG_EXTRA} installs it"
    if psycopg_installed:
        return f"{where}; use postgresql+psycopg://… (psycopg is installed), or install {driver}"
    return f"{where}; {PG_EXTRA} installs psycopg, then use postgresql+psycopg://…"


def _psycopg_works() -> bool:
    """Whether psycopg imports (installed, and its libpq found): only then does a
    postgresql+psycopg:// URL help."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


def parse_url(value: str) -> URL:
    """Validate a `--db` URL without connecting (safe before forking)."""
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number, "[::1"
        raise ConfigError(
            f"--db {safe_url(value)!r} is neither a path nor an SQLAlchemy URL such as "
            "postgresql+psycopg://user@host:5432/dbname"
        ) from None
    try:
        dialect = url.get_dialect()
        if url.get_backend_name() != "sqlite":  # sqlite3 is Python's own
            dialect.import_dbapi()  # the driver, imported by create_engine otherwise
    except NoSuchModuleError:
        raise ConfigError(
            f"--db {safe_url(url)}: unknown database driver {url.drivername!r}; "
            "use sqlite:///PATH or postgresql+psycopg://…"
        ) from None
    except ImportError as exc:
        driver = exc.name or url.get_driver_name()
        raise ConfigError(missing_driver(url, driver, _psycopg_works())) from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"--db {safe_url(url)}: only SQLite and PostgreSQL are supported")
    if url.get_backend_name() == "sqlite" and (url.database or ":memory:") == ":memory:":
        raise ConfigError(
            "--db names an in-memory SQLite database, which keeps nothing once the command "
            "ends; give a file: a path, or sqlite:////PATH/pony.db"
        )
    return url


def check_database(value: str) -> URL:
    """Before forking a daemon: the `--db` URL is valid and an SQLite file, its directory
    and the path to them pass the StrictModes check (files.check_database_file; nothing
    is created).  Raises ConfigError, files.UnsafePath."""
    url = parse_url(value)
    path = _sqlite_file(url)
    if path is not None:
        from pony_scheduler.files import check_database_file

        try:
            check_database_file(path)
        except FileNotFoundError:
            raise ConfigError(_no_directory(path)) from None
    return url


def _no_directory(path: str) -> str:
    return (
        f"database {path}: directory {os.path.dirname(path)} does not exist; create it or "
        "choose another path"
    )


def safe_url(url: URL | str) -> str:
    """The URL as users may see it in logs and status: without the password."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):  # unparsable: mask what looks like user:password@
        return _USER_PASSWORD.sub(r"\1***@", str(url))
    return parsed.render_as_string(hide_password=True)


# Up to the last @ before the host: a password may hold an unescaped @ itself.
_USER_PASSWORD = re.compile(r"(://[^:/@]*:)[^/?#]*@")


def make_engine(value: str) -> Engine:
    """An engine for `value` (an SQLAlchemy URL).  Raises ConfigError for a bad URL and
    files.UnsafePath for an SQLite file or directory that fails the StrictModes check."""
    url = parse_url(value)
    if url.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url)
    else:
        connect_args: dict[str, Any] = {"connect_timeout": 5}
        engine = create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=connect_args
        )
        event.listen(engine, "connect", _pg_session)
    event.listen(engine, "handle_error", _on_error)
    global _named
    _named = _shown(url)  # a daemon has one database: name it where no engine is at hand
    return engine


def _pg_session(dbapi_connection: Any, _record: Any) -> None:
    """Settings of every PostgreSQL session we open (SET, not a startup `options`
    parameter, which connection poolers such as PgBouncer refuse)."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET idle_in_transaction_session_timeout = {PG_IDLE_IN_TRANSACTION_MS}")
    finally:
        dbapi_connection.autocommit = autocommit


def is_corrupt(exc: BaseException) -> bool:
    """Does this (DBAPI or SQLAlchemy) error say the SQLite file is damaged?"""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


_reported_corruption = False
_named = "the database"


def _on_error(context: Any) -> None:
    """SQLAlchemy's error hook: see report_corruption."""
    if is_corrupt(context.original_exception):
        where = _shown(context.engine.url) if context.engine is not None else None
        report_corruption(where, str(context.original_exception))


def report_corruption(where: str | None, why: str) -> None:
    """A corrupt database is logged loudly, once, and a daemon that cannot work without
    it (the scheduler) is asked to stop in order (lifecycle.runtime.database_corrupt);
    the CLI shows the error itself.  `where` None: the database of the last engine made
    (driver-level paths such as store.prepared hold no engine)."""
    global _reported_corruption
    if _reported_corruption:
        return
    _reported_corruption = True
    where = _named if where is None else where
    from pony_scheduler.lifecycle import runtime

    runtime.database_corrupt(
        f"database {where} is corrupt ({why}); restore it from a "
        "backup, or move it aside to start afresh"
    )


SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite file


class FileWatch:
    """Notices an SQLite file damaged or replaced under a running daemon.

    Connections read through their page cache and WAL index, so a file overwritten under
    a daemon can go unnoticed for as long as nothing new is read.  The file is opened once
    and never closed while the engine lives: closing any descriptor of a file drops every
    POSIX lock this process holds on it (fcntl(2)), SQLite's included, and another process
    would then take itself for the last connection and delete the write-ahead log under
    us (sqlite.org/howtocorrupt.html, 2.2).  Only pread() and stat() after that."""

    def __init__(self, engine: Engine) -> None:
        url = engine.url
        self.path: str | None = None
        self.fd: int | None = None
        self.shown = _shown(url)  # as the engine's error hook names it
        if url.get_backend_name() == "sqlite" and url.database:
            self.path = self.shown.removeprefix("sqlite:///")

    def check(self) -> None:
        """Report (report_corruption) a file whose header is no longer an SQLite
        database's, or a path that now names another file."""
        if self.path is None:
            return
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            head = os.pread(self.fd, len(SQLITE_MAGIC), 0)
            replaced = os.stat(self.path).st_ino != os.fstat(self.fd).st_ino
        except OSError as exc:
            report_corruption(self.shown, f"cannot read it: {exc.strerror}")
            return
        if head and head != SQLITE_MAGIC:
            report_corruption(self.shown, "its header is not an SQLite database's any more")
        elif replaced:
            report_corruption(self.shown, "the file was replaced under the running scheduler")

    def close(self) -> None:
        """After the engine's connections are closed (see the class): never before."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _shown(url: URL) -> str:
    """The URL as the user gave it: without the password, and an SQLite `file:` URI
    (which _sqlite_engine makes of a path) back as the path."""
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database.startswith("file:"):
        from urllib.parse import unquote

        return f"sqlite:///{unquote(database[5:])}"
    return safe_url(url)


def sqlite_file(value: str) -> str | None:
    """The absolute path of the file an SQLite database setting names (a path or an
    sqlite:/// URL); None for another database.  Raises ConfigError as parse_url does."""
    return _sqlite_file(parse_url(value))


def _sqlite_file(url: URL) -> str | None:
    """The file of an SQLite URL; None for another database (a PostgreSQL database's
    name is not a path) or one that is not a plain file."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def _prepare_sqlite_file(path: str) -> tuple[str, bool]:
    """Check the file and the path to it (StrictModes, through descriptors), create the
    file 0600 when there is none (SQLite would make it 0644), and return its real path
    (no symbolic link in it, every part root's or ours: what SQLite, which takes only a
    name, is given) and whether it can only be read (a read-only home: read-only
    commands still work)."""
    from pony_scheduler.files import check_database_file

    try:
        real = check_database_file(path, create=True)
    except FileNotFoundError:
        raise ConfigError(_no_directory(path)) from None
    except PermissionError as exc:  # a directory on the way we may not enter or read
        raise ConfigError(
            f"cannot use database {path}: {exc.strerror} ({exc.filename}); "
            "check its directory's permissions or keep the database elsewhere"
        ) from None
    directory = os.path.dirname(real)
    return real, not os.access(directory, os.W_OK) or (
        os.path.exists(real) and not os.access(real, os.W_OK)
    )


def _sqlite_engine(url: URL) -> Engine:
    path = _sqlite_file(url)
    read_only = False
    if path is not None:
        path, read_only = _prepare_sqlite_file(path)
        # SQLite's own `nofollow` (3.31+): the database itself is never a symbolic link.
        query = {**url.query, "uri": "true", "nofollow": "1"}
        if read_only:
            query["mode"] = "ro"
        url = url.set(database=f"file:{quote(path, safe='/')}", query=query)
    # Autocommit at the driver level; SQLAlchemy issues BEGIN itself so that we can make
    # it BEGIN IMMEDIATE: writers then queue on the busy timeout instead of failing with
    # "database is locked" when a read transaction tries to upgrade.
    engine = create_engine(
        url,
        connect_args={
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            "check_same_thread": False,
            "isolation_level": None,
        },
    )
    if read_only:
        _immutable_fallback(engine, url)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if not read_only:
            _wal(cursor)
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _immutable_fallback(engine: Engine, url: URL) -> None:
    """A WAL database on a read-only file system opens only while its -shm file exists
    (a daemon has it open elsewhere); otherwise SQLite can read it only as `immutable`,
    which ignores what no checkpoint has copied into the file yet (sqlite.org/wal.html,
    "Read-Only Databases")."""
    immutable = url.update_query_dict({"immutable": "1"})

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        connection = dialect.loaded_dbapi.connect(*cargs, **cparams)
        try:  # SQLite opens the file at the first statement, not at connect()
            connection.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            return connection
        except sqlite3.OperationalError:
            connection.close()
        fallback_args, fallback_params = dialect.create_connect_args(immutable)
        return dialect.loaded_dbapi.connect(*fallback_args, **{**cparams, **fallback_params})


def trust_warning(engine: Engine) -> str | None:
    """For PostgreSQL: a warning when the server let us in without a password (trust,
    or ident/peer over TCP): any local user who can reach it may then be able to connect
    as this role and change jobs.  None when a password was used, or for SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as connection:
        raw: Any = connection.connection.dbapi_connection
        used = getattr(getattr(raw, "pgconn", None), "used_password", True)
    if used:
        return None
    url = engine.url
    return (
        f"PostgreSQL at {url.host or 'the local socket'} let role {url.username!r} in "
        "without a password: whoever can connect as that role can change jobs and run "
        "commands as this user; require scram-sha-256 for it in pg_hba.conf and give "
        "it a password (see pb-gateway(1), SECURITY)"
    )


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
