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
