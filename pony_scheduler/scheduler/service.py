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
    if type(theirs) is not int or theirs == PROTOCOL:
        return  # none, or no number we can judge by: the keeper's own answer decides
    raise PonyError(
        f"the run keeper (PID {facts.get('pid')}) holding the scheduler's runs is "
        f"pony-scheduler {facts.get('version')}, protocol {theirs}; this pony-scheduler "
        f"{__version__} speaks protocol {PROTOCOL} and could not adopt them, so the running "
        "scheduler was left alone: 'pb scheduler stop' (it drains its runs), then "
        "'pb scheduler start'"
    )


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

    return {"dbPath": safe_url(settings.db), "socketPath": str(settings.socket)}


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
