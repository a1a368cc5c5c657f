"""Entry points the lifecycle calls for the gateway (imported only where needed).

Nothing here runs before daemonizing except `preflight` (input checks, no sockets, no
threads): the token, the sockets and the event loop are all made inside the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pony_scheduler.config import Settings, validate_socket_path
from pony_scheduler.gateway.hosting import (
    bind_tcp,
    bind_unix,
    http_address,
    is_loopback,
    quiet_protocol_errors,
    remove_unix,
    serve,
)
from pony_scheduler.gateway.token import ensure_token, token_path
from pony_scheduler.lifecycle.runtime import ServiceRuntime

log = logging.getLogger("pony_scheduler.gateway")


def preflight(settings: Settings) -> None:
    from pony_scheduler.store.engine import parse_url

    parse_url(settings.db)  # a malformed --db is a usage error now, not a 503 later
    validate_socket_path(settings.socket)


def describe(settings: Settings) -> dict[str, Any]:
    from pony_scheduler.store.engine import safe_url

    return {"address": http_address(settings.gateway_host, settings.gateway_port),
            "socketPath": str(settings.socket), "dbPath": safe_url(settings.db),
            "tokenPath": str(token_path(settings.home))}


def run(runtime: ServiceRuntime) -> None:
    settings = runtime.settings
    token = ensure_token(settings.home)
    listeners = bind_tcp(settings.gateway_host, settings.gateway_port)
    try:
        ipc_socket, inode = bind_unix(settings.socket)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    try:
        _serve(runtime, token, listeners, ipc_socket)
    finally:
        remove_unix(settings.socket, inode)
        for sock in [*listeners, ipc_socket]:
            sock.close()


def _serve(runtime: ServiceRuntime, token: str, listeners: list[Any], ipc_socket: Any) -> None:
    from aiohttp import web

    from pony_scheduler.gateway.api import Gateway, build_app
    from pony_scheduler.gateway.data import Data
    from pony_scheduler.gateway.hub import MAX_LINE, EventHub

    settings = runtime.settings
    addresses = [http_address(*sock.getsockname()[:2]) for sock in listeners]
    open_to_network = not all(is_loopback(sock) for sock in listeners)
    if open_to_network:
        log.warning("Listening on a non-loopback address: every request needs the token")
    quiet_protocol_errors()
    hub, data = EventHub(), Data(settings.db)

    async def setup() -> Any:
        gateway = Gateway(settings=settings, hub=hub, data=data, token=token,
                          addresses=addresses, token_for_reads=open_to_network)
        # The access log only with --debug: dashboards poll, and the log is for admins.
        options: dict[str, Any] = {} if settings.debug else {"access_log": None}
        runner = web.AppRunner(build_app(gateway), shutdown_timeout=5.0, **options)
        await runner.setup()
        for sock in listeners:
            await web.SockSite(runner, sock).start()
        ipc = await asyncio.start_unix_server(hub.handle_connection, sock=ipc_socket,
                                              limit=MAX_LINE)
        log.info("Gateway listening on %s; scheduler events on %s", ", ".join(addresses),
                 settings.socket)

        async def cleanup() -> None:
            ipc.close()
            hub.close()
            await runner.cleanup()
            with contextlib.suppress(Exception):
                await ipc.wait_closed()
            await asyncio.get_running_loop().run_in_executor(None, data.close)

        return cleanup

    serve(runtime, setup, name="gateway")
