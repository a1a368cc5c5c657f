"""Entry points the lifecycle calls for the scheduler (imported only where needed)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pony_scheduler.config import Settings, validate_socket_path
from pony_scheduler.errors import ConfigError
from pony_scheduler.lifecycle.runtime import ServiceRuntime

log = logging.getLogger("pony_scheduler.scheduler")


def preflight(settings: Settings) -> None:
    """Checks that need no database connection, made before forking."""
    from pony_scheduler.store.engine import parse_url

    url = parse_url(settings.db)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        parent = Path(url.database).parent
        if not parent.is_dir():
            raise ConfigError(f"--db {url.database}: directory {parent} does not exist; "
                              "create it or choose another path")
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
