"""The debug dashboard's HTTP side: the page, the login, its own health and service list,
and a relay to the gateway (its live events: debug/stream.py).

The dashboard never lends its power to a caller: every /api request but the login needs
a session (debug/sessions.py), got with a one-time link (debug/logins.py) or a gateway
token pasted into the page, and actions need a session of the admin scope.  It reaches
only a gateway verified as ours (debug/upstream.py).  Against other web pages: it listens
on loopback only (service.py), answers only to loopback names and `allowed_hosts` (DNS
rebinding), refuses requests whose Origin is another site, holds its credential where no
other origin can read or send it (not a cookie), and forbids framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web

from pony_scheduler import __version__
from pony_scheduler.actor import Scope
from pony_scheduler.config import Settings
from pony_scheduler.debug.sessions import Session, Sessions
from pony_scheduler.debug.upstream import Clients, GatewayDown, ImpostorError, locate
from pony_scheduler.gateway.api import error, json_errors
from pony_scheduler.gateway.auth import Handler, host_allowed, security_headers
from pony_scheduler.gateway.refusals import RefusalLog, shown_path
from pony_scheduler.gateway.token import TokenKeeper, bearer

log = logging.getLogger("pony_scheduler.debug")

STATIC = Path(__file__).with_name("static")
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=3)
FLUSH_EVERY = 5.0  # seconds between summaries of rate-limited refusal lines
PUBLIC = ("/", "/api/login")  # and /static/: what needs no session
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)


@dataclass
class Dashboard:
    settings: Settings
    clients: Clients = field(default_factory=Clients)
    sessions: Sessions = field(default_factory=Sessions)
    tokens: TokenKeeper | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # Open relays of the gateway's stream: closing the session alone does not wake a
    # read in progress, closing these does, so shutdown need not wait for a timeout.
    upstreams: set[aiohttp.ClientResponse] = field(default_factory=set)
    started: float = field(default_factory=time.time)
    refusals: RefusalLog = field(default_factory=lambda: RefusalLog(log))

    def keeper(self) -> TokenKeeper:
        if self.tokens is None:
            self.tokens = TokenKeeper(self.settings.home)
        return self.tokens

    def check_rotation(self) -> None:
        """A rotated gateway token ends every session (`pb gateway token --rotate`)."""
        keeper = self.keeper()
        keeper.current()
        if self.sessions.token_generation != keeper.generation:
            if self.sessions.token_generation is not None:
                ended = self.sessions.end_all()
                if ended:
                    log.warning("A gateway token changed: ended %d dashboard session(s)", ended)
            self.sessions.token_generation = keeper.generation


DASHBOARD = web.AppKey("dashboard", Dashboard)
SESSION = web.RequestKey("session", Session)


def _same_origin(request: web.Request) -> bool:
    """No Origin (not a browser's cross-site request), or the one we are served from."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[": not a site we are served from, nor a crash
        return False
    return netloc.lower() == (request.host or "").lower()


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    dashboard = request.app[DASHBOARD]
    if not host_allowed(request.host or "", dashboard.settings.allowed_hosts):
        return error(
            403,
            "this dashboard answers only to loopback names (localhost, "
            f"127.0.0.1, [::1]) and allowed_hosts, not {request.host!r}",
        )
    if request.method not in ("GET", "HEAD") and not _same_origin(request):
        dashboard.refusals.refused(
            time.monotonic(),
            request.remote,
            "Refused %s %s from %s: Origin %s is another site",
            request.method,
            shown_path(request.path),
            request.remote,
            shown_path(request.headers.get("Origin", "")),
        )
        return error(403, "requests from other sites are refused")
    if request.path in PUBLIC or request.path.startswith("/static/"):
        return await handler(request)
    dashboard.check_rotation()
    credential = bearer(request.headers.get("Authorization", ""))
    session = dashboard.sessions.get(credential, time.time()) if credential else None
    if session is None:
        return error(
            401,
            "log in first: open the link 'pb debug url' prints, or paste a gateway token",
            **{"WWW-Authenticate": 'Bearer realm="dashboard"'},
        )
    request[SESSION] = session
    return await handler(request)


# -- the page, the login and our own answers --------------------------------------------------
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC / "index.html",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY},
    )


async def login(request: web.Request) -> web.Response:
    """`{"code": CODE}` (a one-time link) or `{"token": TOKEN}` (the admin or read-only
    gateway token) -> `{"session": S, "scope": "admin"|"read"}`."""
    from pony_scheduler.debug.logins import redeem

    dashboard = request.app[DASHBOARD]
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send the login as application/json")
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise web.HTTPBadRequest(text="the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the request body must be a JSON object")
    dashboard.check_rotation()
    now = time.time()
    code, token = body.get("code"), body.get("token")
    loop = asyncio.get_running_loop()
    scope: Scope
    if isinstance(code, str) and await loop.run_in_executor(
        None, redeem, dashboard.settings.home, code, now
    ):
        scope, how = "admin", "link"
    elif (
        isinstance(token, str)
        and (found := dashboard.keeper().current().scope_of(token.strip())) is not None
    ):
        scope, how = found, "token"
    else:
        dashboard.refusals.refused(
            time.monotonic(),
            request.remote,
            "Refused a dashboard login from %s: unknown, used or expired link, or wrong token",
            request.remote,
        )
        return error(
            401,
            "that login link is unknown, used or expired (links work once, "
            "for 10 minutes: 'pb debug url' prints a new one), or the token is "
            "wrong",
        )
    credential = dashboard.sessions.new(scope, how, now)
    log.info("Dashboard login (%s, %s scope) from %s", how, scope, request.remote)
    return web.json_response({"session": credential, "scope": scope})


async def logout(request: web.Request) -> web.Response:
    credential = bearer(request.headers.get("Authorization", ""))
    if credential:
        request.app[DASHBOARD].sessions.end(credential)
    return web.json_response({"loggedOut": True})


async def whoami(request: web.Request) -> web.Response:
    session = request[SESSION]
    return web.json_response({"scope": session.scope, "how": session.how})


async def health(request: web.Request) -> web.Response:
    dashboard = request.app[DASHBOARD]
    try:
        gateway: str | None = locate(dashboard.settings.home).shown
    except GatewayDown:
        gateway = None
    return web.json_response(
        {
            "status": "ok",
            "service": "debug",
            "version": __version__,
            "pid": os.getpid(),
            "uptimeSeconds": round(time.time() - dashboard.started, 3),
            "gateway": gateway,
        }
    )


async def services(request: web.Request) -> web.Response:
    """From the pid files themselves, so the list is right even when the gateway is down."""
    from pony_scheduler.lifecycle.services import summaries

    settings = request.app[DASHBOARD].settings
    loop = asyncio.get_running_loop()
    return web.json_response({"services": await loop.run_in_executor(None, summaries, settings)})


# -- the relay ----------------------------------------------------------------------------------
def _down(exc: Exception) -> web.Response:
    return web.json_response({"error": str(exc), "status": 503, "gatewayDown": True}, status=503)


async def forward(request: web.Request, path: str) -> web.Response:
    dashboard = request.app[DASHBOARD]
    try:
        endpoint = locate(dashboard.settings.home)
        session = dashboard.clients.session(endpoint)
        headers = dashboard.clients.headers(endpoint, request[SESSION].scope, request[SESSION].how)
        async with session.request(
            request.method,
            endpoint.base + path,
            params=request.query,
            headers=headers,
            timeout=UPSTREAM_TIMEOUT,
        ) as upstream:
            body = await upstream.read()
            kind = upstream.headers.get("Content-Type", "application/json")
            return web.Response(body=body, status=upstream.status, headers={"Content-Type": kind})
    except (GatewayDown, ImpostorError) as exc:
        return _down(exc)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _down(
            GatewayDown(
                f"the gateway is not reachable ({reason_of(exc)}); start it with 'pb gateway start'"
            )
        )


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        return os.strerror(exc.os_error.errno).lower()
    return str(exc) or type(exc).__name__


async def gateway_get(request: web.Request) -> web.Response:
    return await forward(request, quote(request.path, safe="/"))


async def gateway_action(request: web.Request) -> web.Response:
    name, action = request.match_info["name"], request.match_info["action"]
    if action not in ("run", "pause", "resume"):
        raise web.HTTPNotFound(text=f"unknown action {action!r} (run, pause, resume)")
    if request[SESSION].scope != "admin":
        return error(
            403,
            "this session may only read: log in with the admin token or a "
            "login link to change jobs",
        )
    return await forward(request, f"/api/jobs/{quote(name, safe='')}/{action}")


async def _flush_refusals(app: web.Application) -> AsyncIterator[None]:
    """Summaries of rate-limited refusal lines, written when their minute is over."""
    refusals = app[DASHBOARD].refusals

    async def flush() -> None:
        from pony_scheduler.gateway.hosting import PROTOCOL_ERRORS

        while True:
            await asyncio.sleep(FLUSH_EVERY)
            refusals.flush(time.monotonic())
            PROTOCOL_ERRORS.flush(time.monotonic())

    task = asyncio.get_running_loop().create_task(flush())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build_app(settings: Settings) -> web.Application:
    from pony_scheduler.debug.stream import events  # it builds on this module

    app = web.Application(middlewares=[json_errors, guard], client_max_size=64 * 1024)
    dashboard = app[DASHBOARD] = Dashboard(settings)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/session", whoami)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/services", services)
    for path in ("/api/status", "/api/jobs", "/api/runs", "/api/runs/{id}"):
        app.router.add_get(path, gateway_get)
    app.router.add_post("/api/jobs/{name}/{action}", gateway_action)
    app.router.add_get("/api/events", events)

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        security_headers(response)

    async def on_shutdown(app: web.Application) -> None:
        dashboard.closing.set()
        for upstream in list(dashboard.upstreams):
            upstream.close()
        await dashboard.clients.close()  # ends the relays that wait on the gateway

    app.on_response_prepare.append(headers)
    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(_flush_refusals)
    return app
