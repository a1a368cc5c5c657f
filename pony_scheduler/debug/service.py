"""Entry points the lifecycle calls for the debug dashboard (imported only where needed)."""

from __future__ import annotations

import logging
from typing import Any

from pony_scheduler.config import Settings, check_listen_host, where_set
from pony_scheduler.errors import ConfigError, PonyError
from pony_scheduler.gateway.hosting import (
    bind_tcp,
    http_address,
    is_loopback,
    quiet_protocol_errors,
    serve,
)
from pony_scheduler.lifecycle.runtime import ServiceRuntime

log = logging.getLogger("pony_scheduler.debug")

# Its session credential is a bearer token: over plain HTTP on a network it could be
# read on the way.  Beyond loopback, TLS goes in front (pb-debug(1)).
_NOT_LOOPBACK = (
    "{option}: the debug dashboard listens on loopback addresses only (127.0.0.1, ::1, "
    "localhost), not {host!r}; reach it from elsewhere through an SSH tunnel or a TLS "
    "reverse proxy (see pb-debug(1), SECURITY)"
)


def preflight(settings: Settings) -> None:
    """Before forking: the host to listen on resolves, to loopback addresses only (one
    line, exit 2, not a failed start with its log's tail: review finding).  Raises
    ConfigError."""
    import ipaddress

    addresses = check_listen_host(settings, "debug_host")
    # A scoped IPv6 address ('fe80::1%eth0') is not loopback: ::1 has no scope.
    if not all(ipaddress.ip_address(a.partition("%")[0]).is_loopback for a in addresses):
        option = where_set(settings, "debug_host")
        raise ConfigError(_NOT_LOOPBACK.format(option=option, host=settings.debug_host))


def check_handover(settings: Settings) -> None:
    """restart / start --force: refused while the running one still serves when the
    replacement could not listen (config.check_port_for_replacement)."""
    from pony_scheduler.config import check_port_for_replacement
    from pony_scheduler.lifecycle.pidfile import live_meta
    from pony_scheduler.lifecycle.spec import DEBUG

    held = (live_meta(DEBUG.meta_path(settings.home)) or {}).get("address")
    check_port_for_replacement(settings, "debug_host", "debug_port", held)


def describe(settings: Settings) -> dict[str, Any]:
    return {"address": http_address(settings.debug_host, settings.debug_port)}


def run(runtime: ServiceRuntime) -> None:
    settings = runtime.settings
    listeners = bind_tcp(settings.debug_host, settings.debug_port)
    try:
        if not all(is_loopback(sock) for sock in listeners):
            # Its session credential is a bearer token: over plain HTTP on a network it
            # could be read on the way.  Beyond loopback, TLS goes in front (pb-debug(1)).
            # preflight said so before the fork; this is for a name that resolved to
            # loopback then and to something else now.
            option = where_set(settings, "debug_host")
            raise PonyError(_NOT_LOOPBACK.format(option=option, host=settings.debug_host))
        _serve(runtime, listeners)
    finally:
        for sock in listeners:
            sock.close()


def _serve(runtime: ServiceRuntime, listeners: list[Any]) -> None:
    from aiohttp import web

    from pony_scheduler.debug.app import build_app

    settings = runtime.settings
    quiet_protocol_errors()

    async def setup() -> Any:
        options: dict[str, Any] = {} if settings.debug else {"access_log": None}
        runner = web.AppRunner(build_app(settings), shutdown_timeout=5.0, **options)
        await runner.setup()
        for sock in listeners:
            await web.SockSite(runner, sock).start()
        log.info(
            "Debug dashboard on %s",
            ", ".join(http_address(*sock.getsockname()[:2]) for sock in listeners),
        )
        return runner.cleanup

    serve(runtime, setup, name="debug")
