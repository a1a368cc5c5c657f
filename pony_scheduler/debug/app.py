"""The debug dashboard's HTTP side: the page, its own health and service list, and a
proxy to the gateway that adds the gateway's token, so the browser never holds it.

Because this server acts with the token, it guards against being driven by other web
pages: it listens on loopback only (see service.py), answers only requests whose Host is a
loopback name or address (DNS rebinding), and performs actions only for requests carrying
the `X-Pony-Dashboard` header, which a cross-site page cannot send without a CORS
preflight that this server never grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from pony_scheduler import __version__
from pony_scheduler.config import Settings
from pony_scheduler.gateway.api import Handler, error, json_errors
from pony_scheduler.gateway.hosting import http_address, loopback_host
from pony_scheduler.gateway.token import read_token
from pony_scheduler.lifecycle import pidfile
from pony_scheduler.lifecycle.spec import GATEWAY

log = logging.getLogger("pony_scheduler.debug")

STATIC = Path(__file__).with_name("static")
ACTION_HEADER = "X-Pony-Dashboard"
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=3)
RETRY_MAX = 8.0  # seconds between attempts to reach a gateway that is down


@dataclass
class Dashboard:
    settings: Settings
    session: aiohttp.ClientSession | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # Open relays of the gateway's stream: closing the session alone does not wake a
    # read in progress, closing these does, so shutdown need not wait for a timeout.
    upstreams: set[aiohttp.ClientResponse] = field(default_factory=set)
    started: float = field(default_factory=time.time)

    def gateway_address(self) -> str:
        """Where the gateway really listens (its metadata), else where it would."""
        meta = pidfile.read_meta(GATEWAY.meta_path(self.settings.home)) or {}
        address = meta.get("address")
        if isinstance(address, str) and address.startswith("http"):
            return address
        return http_address(self.settings.gateway_host, self.settings.gateway_port)

    def headers(self) -> dict[str, str]:
        token = read_token(self.settings.home)  # read each time: it may appear later
        return {"Authorization": f"Bearer {token}"} if token else {}


DASHBOARD = web.AppKey("dashboard", Dashboard)


class BrowserGone(Exception):
    pass


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not loopback_host(request.host or ""):
        return error(403, "this dashboard answers only to loopback names (localhost, "
                          f"127.0.0.1, [::1]), not {request.host!r}")
    if request.method not in ("GET", "HEAD") and request.headers.get(ACTION_HEADER) != "1":
        return error(403, f"actions need the {ACTION_HEADER} header (sent by the dashboard)")
    return await handler(request)


# -- the page and our own answers -------------------------------------------------------------
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    dashboard = request.app[DASHBOARD]
    return web.json_response({"status": "ok", "service": "debug", "version": __version__,
                              "pid": os.getpid(),
                              "uptimeSeconds": round(time.time() - dashboard.started, 3),
                              "gateway": dashboard.gateway_address()})


async def services(request: web.Request) -> web.Response:
    """From the pid files themselves, so the list is right even when the gateway is down."""
    from pony_scheduler.lifecycle.services import summaries

    settings = request.app[DASHBOARD].settings
    loop = asyncio.get_running_loop()
    return web.json_response({"services": await loop.run_in_executor(None, summaries,
                                                                     settings)})


# -- the proxy ----------------------------------------------------------------------------------
async def forward(request: web.Request, path: str) -> web.Response:
    dashboard = request.app[DASHBOARD]
    assert dashboard.session is not None
    base = dashboard.gateway_address()
    try:
        async with dashboard.session.request(
                request.method, base + path, params=request.query, headers=dashboard.headers(),
                timeout=UPSTREAM_TIMEOUT) as upstream:
            body = await upstream.read()
            kind = upstream.headers.get("Content-Type", "application/json")
            return web.Response(body=body, status=upstream.status,
                                headers={"Content-Type": kind})
    except (aiohttp.ClientError, TimeoutError) as exc:
        return error(502, f"the gateway at {base} is not reachable ({_reason(exc)}); "
                          "start it with 'pb gateway start'")


def _reason(exc: BaseException) -> str:
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
    return await forward(request, f"/api/jobs/{quote(name, safe='')}/{action}")


# -- live events -----------------------------------------------------------------------------
def frame(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _send(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except (ConnectionError, RuntimeError) as exc:
        raise BrowserGone from exc


async def events(request: web.Request) -> web.StreamResponse:
    """The gateway's event stream, relayed; when the gateway is down or restarts, this
    stream stays open, says so, and resumes from the last event id it relayed."""
    dashboard = request.app[DASHBOARD]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    last_id = request.headers.get("Last-Event-ID")
    delay = 1.0
    with contextlib.suppress(BrowserGone):
        await _send(response, b"retry: 2000\n\n")
        while not dashboard.closing.is_set():
            base = dashboard.gateway_address()
            try:
                last_id = await _relay(dashboard, response, base, last_id)
                reason = "the gateway closed the stream"
                delay = 1.0
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                reason = _reason(exc)
            if dashboard.closing.is_set():
                break
            await _send(response, frame({"type": "gateway.unreachable", "source": "debug",
                                         "data": {"address": base, "error": reason,
                                                  "retryInSeconds": delay}}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dashboard.closing.wait(), delay)
            delay = min(delay * 2, RETRY_MAX)
    return response


async def _relay(dashboard: Dashboard, response: web.StreamResponse, base: str,
                 last_id: str | None) -> str | None:
    assert dashboard.session is not None
    headers = dashboard.headers()
    if last_id:
        headers["Last-Event-ID"] = last_id
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=45)
    async with dashboard.session.get(base + "/api/events", headers=headers,
                                     timeout=timeout) as upstream:
        if upstream.status != 200:
            raise ValueError(f"HTTP {upstream.status} from the gateway")
        dashboard.upstreams.add(upstream)
        try:
            await _send(response, frame({"type": "gateway.connected", "source": "debug",
                                         "data": {"address": base}}))
            async for line in upstream.content:
                if line.startswith(b"id: "):
                    last_id = line[4:].decode(errors="replace").strip()
                if not line.startswith(b"retry:"):
                    await _send(response, line)
        finally:
            dashboard.upstreams.discard(upstream)
    return last_id


def build_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[json_errors, guard], client_max_size=64 * 1024)
    dashboard = app[DASHBOARD] = Dashboard(settings)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/services", services)
    for path in ("/api/status", "/api/jobs", "/api/runs", "/api/runs/{id}"):
        app.router.add_get(path, gateway_get)
    app.router.add_post("/api/jobs/{name}/{action}", gateway_action)
    app.router.add_get("/api/events", events)

    async def on_startup(app: web.Application) -> None:
        dashboard.session = aiohttp.ClientSession()

    async def on_shutdown(app: web.Application) -> None:
        dashboard.closing.set()
        for upstream in list(dashboard.upstreams):
            upstream.close()
        if dashboard.session is not None:
            await dashboard.session.close()  # ends the relays that wait on the gateway

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
