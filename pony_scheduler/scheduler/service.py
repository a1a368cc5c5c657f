"""Entry points the lifecycle calls for the scheduler (imported only where needed)."""

from __future__ import annotations

import logging
from typing import Any

from pony_scheduler.config import Settings, validate_socket_path
from pony_scheduler.lifecycle.runtime import ServiceRuntime

log = logging.getLogger("pony_scheduler.scheduler")


def preflight(settings: Settings) -> None:
    """Checks that need no database connection, made before forking."""
    from pony_scheduler.store.engine import check_database

    check_database(settings.db)  # its path, StrictModes: one line now, not a failed start
    validate_socket_path(settings.socket)


def check_handover(settings: Settings) -> None:
    """Before a running scheduler is replaced (restart, start --force): it hands its runs
    to the home's run keeper, and this scheduler can adopt them only if it speaks that
    keeper's protocol (keeper/protocol.py).  When it does not (an upgrade across
    protocols), refuse now, while the running scheduler still schedules, rather than
    stop it and then fail to start.  A running scheduler with no live keeper holds its
    runs itself (a release from before the keeper) or has just lost its keeper: nothing
    can be handed over, so that is refused too.  Raises PonyError."""
    from pony_scheduler import __version__
    from pony_scheduler.errors import PonyError
    from pony_scheduler.keeper.protocol import META_FILE, PROTOCOL
    from pony_scheduler.lifecycle.pidfile import live_meta

    facts = live_meta(settings.home / META_FILE)
    if facts is None:
        raise PonyError(
            "the running scheduler has no run keeper (it predates the keeper, or its "
            "keeper has just died), so its runs could not be handed over and it was left "
            "alone: let its runs end ('pb runs'), then 'pb scheduler stop' and "
            "'pb scheduler start' (a stop interrupts runs still running after the "
            "shutdown grace); or try again in a few seconds"
        )
    theirs = facts.get("protocol")
    if type(theirs) is int and theirs != PROTOCOL:
        raise PonyError(
            f"the run keeper (PID {facts.get('pid')}) holding the scheduler's runs is "
            f"pony-scheduler {facts.get('version')}, protocol {theirs}; this pony-scheduler "
            f"{__version__} speaks protocol {PROTOCOL} and could not adopt them, so the "
            "running scheduler was left alone: 'pb scheduler stop' (it drains its runs), "
            "then 'pb scheduler start'"
        )
    # (No protocol number, or none we can judge by: the keeper's own answer decides.)
    _refuse_another_database(settings)
    # A replacement opens the database before it is ready; the running scheduler rides
    # out an outage (runs go on, recorded when it is back), a replacement cannot start
    # in one (review: a restart in an outage left no scheduler at all).
    why = _database_refusal(settings.db)
    if why and "newer than this pony-scheduler" in why:  # no outage: nothing comes back
        raise PonyError(f"{why}; the running scheduler was left alone")
    if why:
        raise PonyError(
            f"{why}; the running scheduler was left alone (it goes on and records its "
            "runs when the database is back): restart it then"
        )


def _refuse_another_database(settings: Settings) -> None:
    """The runs handed over belong to the running scheduler's database: a replacement on
    another one finds none of them running there and stops them as fenced (review: a
    restart with another --db, or without the --db the running one was given, killed
    them, and they stayed `running` in their own database).  Raises PonyError."""
    from pony_scheduler.errors import PonyError
    from pony_scheduler.lifecycle.pidfile import live_meta
    from pony_scheduler.lifecycle.spec import SCHEDULER
    from pony_scheduler.store.engine import safe_url

    running = (live_meta(SCHEDULER.meta_path(settings.home)) or {}).get("dbPath")
    ours = safe_url(settings.db)
    if isinstance(running, str) and running != ours:
        raise PonyError(
            f"the running scheduler uses database {running}, this one would use {ours}, "
            "and the runs it hands over belong to the first, so it was left alone: "
            "restart with that --db, or 'pb scheduler stop' (it drains its runs), then "
            "start on the other"
        )


def _database_refusal(url: str) -> str:
    """'' when the database at `url` answers a connection, else the line why not.  Asked
    from a forked child that exits at once: no engine is ever made in the process that
    forks the daemon (DESIGN.md, process model).  At most PostgreSQL's connect timeout
    (store/engine.py: 5 s)."""
    import os

    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        why = "the database could not be checked"
        try:
            os.close(read_fd)
            from pony_scheduler.errors import PonyError
            from pony_scheduler.store.store import Store

            Store.probe(url)
            why = ""
        except PonyError as exc:
            why = str(exc)
        except BaseException as exc:  # the child must exit here, whatever happened
            why = f"the database could not be checked ({type(exc).__name__}: {exc})"
        finally:
            os.write(write_fd, why.encode("utf-8", "replace")[:4000])
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as answer:
        why = answer.read().decode("utf-8", "replace")
    os.waitpid(child, 0)
    return why


def start_keeper(settings: Settings) -> None:
    """Start the home's run keeper unless one runs, from `pb scheduler start`'s own
    process while the daemon it forked starts up: the keeper's ~100 ms interpreter start
    overlaps the daemon's instead of following it.  The daemon, reaching the keeper,
    waits for this start (the start lock) and finds it ready; a keeper that cannot
    start fails the daemon's own attempt, which says why.  Raises what starting does."""
    import os
    import time

    from pony_scheduler.keeper.starting import start_keeper as start

    old = os.umask(0o027)  # the daemon's (lifecycle/daemonize.py), which the keeper inherits
    try:
        start(settings.home.absolute(), settings.containment, None, time.monotonic() + 10)
    finally:
        os.umask(old)


def describe(settings: Settings) -> dict[str, Any]:
    from pony_scheduler.store.engine import safe_url

    return {
        "dbPath": safe_url(settings.db),
        "socketPath": str(settings.socket),
        "containmentAsked": settings.containment,  # for status: config.containment_kept
        "shutdownGrace": settings.shutdown_grace,  # what a stop waits: services.stop_timeout
    }


def run(runtime: ServiceRuntime) -> None:
    from pony_scheduler.events import EventClient
    from pony_scheduler.scheduler.loop import WorkLoop
    from pony_scheduler.store import Store

    log.info("Opening database %s", describe(runtime.settings)["dbPath"])
    store = Store.open(runtime.settings.db)
    events = EventClient(runtime.settings.socket)
    try:
        events.start()
        WorkLoop(store, runtime, events).run()
    finally:
        events.close()
        log.info("Closing database connections")
        store.close()
