"""What the job, runs and audit commands share: the store, options, tables, text."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from pony_scheduler.cli.options import settings_from
from pony_scheduler.errors import ConfigError, PonyError
from pony_scheduler.runstate import RunState

if TYPE_CHECKING:
    from pony_scheduler.config import Settings
    from pony_scheduler.store import Store


STATES = tuple(state.value for state in RunState)


def open_store(ctx: click.Context, *, create: bool = False) -> Store:
    """The database named by the settings, opened once per command (`--wait` asks it
    every 0.2 s); SQLAlchemy is imported only here.  An SQLite file named by --db,
    PONYBUNNY_DB or config.toml that does not exist is created only when `create` (pb
    job add): for any other command it is a typo, refused (ConfigError) rather than
    answered from a new empty database (review finding).  The home's own default
    database is created by any command, as a fresh home has none yet."""
    from pony_scheduler.lifecycle.daemonize import ensure_home
    from pony_scheduler.store import Store

    cached = ctx.meta.get("pony_scheduler.store")  # ctx.meta is shared by the whole tree
    if cached is not None:
        return cached
    settings = settings_from(ctx, db=ctx.meta.get("db"))
    if not create and settings.sources.get("db", "default") != "default":
        _refuse_a_missing_database(settings)
    ensure_home(settings.home)
    store = Store.open(settings.db, upgrade=False, create=True)  # the scheduler migrates
    ctx.meta["pony_scheduler.store"] = store
    ctx.call_on_close(store.close)
    return store


def _refuse_a_missing_database(settings: Settings) -> None:
    import os

    from pony_scheduler.config import where_set
    from pony_scheduler.files import check_database_file
    from pony_scheduler.store.engine import sqlite_file

    path = sqlite_file(settings.db)
    if path is None:
        return
    where = where_set(settings, "db")
    try:
        real = check_database_file(path)  # its path's own checks first (links, modes)
    except FileNotFoundError:
        # Its directory is missing, so the file is too: refused here, before open_store
        # makes the home.  Left to Store.open, a mistyped --db in a home not made yet
        # was created with the home and answered "No jobs yet" (review finding).
        raise ConfigError(
            f"no database at {path} (set by {where}): directory {os.path.dirname(path)} "
            "does not exist; create it or choose another path"
        ) from None
    if not os.path.lexists(real):
        raise ConfigError(
            f"no database at {path} (set by {where}); check the name, or create it with pb job add"
        )


def remember_db(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta["db"] = value


def pb_again(ctx: click.Context, command: str) -> str:
    """`command` (a `pb ...` line this command suggests next) with the --db it was given,
    so that the line, run as printed, reads the same database: without it, a next page
    of another database's jobs said "No more jobs" (review finding).  A URL holding a
    password is not printed (terminals, logs and screenshots keep it): the line says
    to add the same --db instead.  PONYBUNNY_DB and config.toml need nothing: the
    suggested command inherits them."""
    import shlex
    from urllib.parse import parse_qs, urlsplit

    db = ctx.meta.get("db")
    if db is None:
        return command
    try:  # user:password@, or ?password= / ?sslpassword= (libpq takes them there too)
        parts = urlsplit(db)
        in_query = any("pass" in key.lower() for key in parse_qs(parts.query))
        secret = "://" in db and (parts.password is not None or in_query)
    except ValueError:  # a port that is not a number: not a URL to print either
        secret = True
    if secret:
        return f"{command} (with the same --db)"
    options, dashes, job_command = command.partition(" -- ")  # --db goes before a `--`
    return f"{options} --db {shlex.quote(db)}{dashes}{job_command}"


def add_db_option(group: click.Group) -> None:
    """Every job/runs command can reach a database other than the configured one."""
    for command in group.commands.values():
        command.params.append(
            click.Option(
                ["--db"],
                metavar="PATH|URL",
                expose_value=False,
                callback=remember_db,
                help="Database to use (default: PONYBUNNY_DB, config.toml, or HOME/pony.db).",
            )
        )


def now_utc() -> datetime:
    from pony_scheduler.store.common import utcnow

    return utcnow()


def local(iso: str | None) -> str:
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def table(rows: Sequence[Sequence[str]]) -> None:
    """Print `rows` (the first the header) as aligned columns, one line per row: a line
    break or tab in a cell is shown as \\n, \\r, \\t, so that a command or a detail
    cannot print a row of its own (review: a newline in a command forged a `pb audit`
    row).  Other control characters are the caller's (shown())."""
    rows = [[one_line(str(cell)) for cell in row] for row in rows]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


_BREAKS = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def one_line(cell: str) -> str:
    """`cell` with its line breaks and tabs as \\n, \\r, \\t (a value that must not
    make a line of its own: a table cell, an environment value in `pb job show`)."""
    return cell.translate(_BREAKS)


RAW = click.option(
    "--raw",
    is_flag=True,
    help="Print control characters as they are (default on a terminal: made visible, "
    "like cat -v; to a pipe or file the bytes are always exact).",
)


def shown(text: str, raw: bool) -> str:
    """`text` as given (`raw`), or with control characters made visible and the bytes
    that were not UTF-8 (a command's argument, say) as \\xNN: written back as bytes,
    a lone 0x9b is CSI to a terminal in 8-bit mode (review finding)."""
    from pony_scheduler.textsafe import for_terminal, undecodable_shown

    return text if raw else for_terminal(undecodable_shown(text))


def get_run(ctx: click.Context, run_id: int, exact_tail: bool = False) -> dict[str, Any]:
    """Run `run_id` as the store's get_run gives it; PonyError when there is none."""
    run = open_store(ctx).get_run(run_id, exact_tail)
    if run is None:
        raise PonyError(f"no run with id {run_id}; see '{pb_again(ctx, 'pb runs')}'")
    return run
