"""Entry points the lifecycle calls for the gateway (imported only where needed).

Nothing here runs before daemonizing except `preflight` (input checks, no sockets, no
threads): the token, the sockets and the event loop are all made inside the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from pony_scheduler.config import (
    MAX_SOCKET_PATH,
    Settings,
    check_listen_host,
    validate_socket_path,
)
from pony_scheduler.gateway.hosting import (
    bind_tcp,
    bind_unix,
    http_address,
    is_loopback,
    quiet_protocol_errors,
    remove_unix,
    serve,
)
from pony_scheduler.gateway.token import FILES, ensure_tokens, read_token, token_path
from pony_scheduler.lifecycle.runtime import ServiceRuntime

log = logging.getLogger("pony_scheduler.gateway")

API_SOCKET = "gateway.api.sock"


def api_socket_path(settings: Settings) -> Path | None:
    """HOME/gateway.api.sock, where the dashboard and local tools reach the API with their
    peer credentials; None when the home's path is too long for a Unix socket (sun_path):
    then only TCP is left, with the token."""
    path = settings.home / API_SOCKET
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def preflight(settings: Settings) -> None:
    from pony_scheduler.files import check_directory_chain
    from pony_scheduler.store.engine import check_database

    check_database(settings.db)  # a malformed or unsafe --db: one line now, not a 503 later
    check_listen_host(settings, "gateway_host")
    validate_socket_path(settings.socket)
    # A socket elsewhere than the home (--socket): nobody else may replace it.
    check_directory_chain(settings.socket.parent, "the socket (--socket)")
    for kind in FILES:  # a bad token file is refused before forking
        read_token(settings.home, kind)


def check_handover(settings: Settings) -> None:
    """restart / start --force: refused while the running one still serves when the
    replacement could not listen (config.check_port_for_replacement)."""
    from pony_scheduler.config import check_port_for_replacement
    from pony_scheduler.lifecycle.pidfile import live_meta
    from pony_scheduler.lifecycle.spec import GATEWAY

    held = (live_meta(GATEWAY.meta_path(settings.home)) or {}).get("address")
    check_port_for_replacement(settings, "gateway_host", "gateway_port", held)


def describe(settings: Settings) -> dict[str, Any]:
    from pony_scheduler.store.engine import safe_url

    api = api_socket_path(settings)
    # No "address" yet: it is published once the TCP listener is bound (publish_address).
    # Until then another user could bind the port, and the dashboard, which trusts
    # gateway.json, would send it the token.
    return {
        "socketPath": str(settings.socket),
        "dbPath": safe_url(settings.db),
        "apiSocket": str(api) if api else None,
        "tokenPath": str(token_path(settings.home)),
        "readTokenPath": str(token_path(settings.home, "read")),
    }


def run(runtime: ServiceRuntime) -> None:
    settings = runtime.settings
    ensure_tokens(settings.home)
    listeners = bind_tcp(settings.gateway_host, settings.gateway_port)
    bound: list[tuple[Path, int]] = []
    try:
        ipc_socket, inode = bind_unix(settings.socket)
        bound.append((settings.socket, inode))
        api_path = api_socket_path(settings)
        api_socket = None
        if api_path is None:
            log.warning(
                "The home's path is too long for %s: the API is reachable over TCP only", API_SOCKET
            )
        else:
            api_socket, api_inode = bind_unix(api_path)
            bound.append((api_path, api_inode))
        _serve(runtime, listeners, ipc_socket, api_socket)
    finally:
        withdraw_address(runtime)  # before the port is free for anyone to bind
        for path, inode in bound:
            remove_unix(path, inode)
        for sock in listeners:
            sock.close()


def publish_address(runtime: ServiceRuntime) -> None:
    """Name the TCP address in gateway.json: only now that we listen on it."""
    settings = runtime.settings
    runtime.update_metadata(address=http_address(settings.gateway_host, settings.gateway_port))


def withdraw_address(runtime: ServiceRuntime) -> None:
    """Stop naming the TCP address, before the listener closes: a port nobody holds may
    be bound by anyone, and must not be where the dashboard sends the token."""
    runtime.update_metadata(address=None)


def _serve(runtime: ServiceRuntime, listeners: list[Any], ipc_socket: Any, api_socket: Any) -> None:
    from aiohttp import web

    from pony_scheduler.gateway.api import Gateway, build_app
    from pony_scheduler.gateway.data import Data
    from pony_scheduler.gateway.hub import MAX_LINE, EventHub
    from pony_scheduler.gateway.token import TokenKeeper

    settings = runtime.settings
    addresses = [http_address(*sock.getsockname()[:2]) for sock in listeners]
    loopback_only = all(is_loopback(sock) for sock in listeners)
    if not loopback_only:
        log.warning(
            "Listening on a non-loopback address: the token travels in clear text "
            "unless a TLS proxy is in front (see pb-gateway(1), SECURITY)"
        )
    if settings.anonymous_read:
        log.warning(
            "anonymous_read is on: anyone who can reach the gateway may read jobs, "
            "runs and their output without a token"
        )
    quiet_protocol_errors()
    hub, data = EventHub(), Data(settings.db, settings.home)
    api_path = api_socket.getsockname() if api_socket is not None else None

    async def setup() -> Any:
        # Before readiness, so that the warning is in the log when `start` returns.
        await asyncio.get_running_loop().run_in_executor(None, data.check_trust)
        gateway = Gateway(
            settings=settings,
            hub=hub,
            data=data,
            tokens=TokenKeeper(settings.home),
            addresses=addresses,
            check_host=loopback_only,
            api_socket=api_path,
        )
        # The access log only with --debug: dashboards poll, and the log is for admins.
        options: dict[str, Any] = {} if settings.debug else {"access_log": None}
        runner = web.AppRunner(build_app(gateway), shutdown_timeout=5.0, **options)
        await runner.setup()
        for sock in [*listeners, *([api_socket] if api_socket is not None else [])]:
            await web.SockSite(runner, sock).start()
        ipc = await asyncio.start_unix_server(
            hub.handle_connection, sock=ipc_socket, limit=MAX_LINE
        )
        log.info(
            "Gateway listening on %s%s; scheduler events on %s",
            ", ".join(addresses),
            f" and {api_path}" if api_path else "",
            settings.socket,
        )
        publish_address(runtime)

        async def cleanup() -> None:
            withdraw_address(runtime)  # runner.cleanup() closes the listeners
            ipc.close()
            hub.close()
            await runner.cleanup()
            with contextlib.suppress(Exception):
                await ipc.wait_closed()
            await asyncio.get_running_loop().run_in_executor(None, data.close)

        return cleanup

    serve(runtime, setup, name="gateway")
