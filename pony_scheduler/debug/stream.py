"""The dashboard's live event feed: the gateway's event stream, relayed to the page.

The relay survives the gateway: when it is down or restarts, the page's stream stays
open, says so (`gateway.unreachable`), and resumes from the last event id it relayed.
It does not survive its session: logout, a rotated gateway token or idleness end it
within RECHECK seconds (a stream opened with a credential must not outlive it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from pony_scheduler.debug.app import DASHBOARD, SESSION, Dashboard, reason_of
from pony_scheduler.debug.sessions import Session
from pony_scheduler.debug.upstream import Endpoint, GatewayDown, ImpostorError, locate
from pony_scheduler.gateway.token import bearer

log = logging.getLogger("pony_scheduler.debug")

RETRY_MAX = 8.0  # seconds between attempts to reach a gateway that is down
RECHECK = 1.0  # seconds between checks that an event stream's session is still valid


class BrowserGone(Exception):
    pass


def frame(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _send(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except (ConnectionError, RuntimeError) as exc:
        raise BrowserGone from exc


async def events(request: web.Request) -> web.StreamResponse:
    """The gateway's event stream, relayed; when the gateway is down or restarts, this
    stream stays open, says so, and resumes from the last event id it relayed.  It ends
    when its session does (logout, a rotated token, idle), checked every RECHECK s."""
    dashboard = request.app[DASHBOARD]
    session = request[SESSION]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    stream = _Stream(session)
    watcher = asyncio.get_running_loop().create_task(
        _watch(dashboard, bearer(request.headers.get("Authorization", "")) or "", stream)
    )
    last_id = request.headers.get("Last-Event-ID")
    delay = 1.0
    try:
        with contextlib.suppress(BrowserGone):
            await _send(response, b"retry: 2000\n\n")
            while not dashboard.closing.is_set() and not stream.ended.is_set():
                where = "the gateway"
                try:
                    endpoint = locate(dashboard.settings.home)
                    where = endpoint.shown
                    last_id = await _relay(dashboard, response, endpoint, stream, last_id)
                    reason = "the gateway closed the stream"
                    delay = 1.0
                except (aiohttp.ClientError, TimeoutError, ValueError, GatewayDown) as exc:
                    reason = (
                        str(exc) if isinstance(exc, GatewayDown | ImpostorError) else reason_of(exc)
                    )
                if dashboard.closing.is_set() or stream.ended.is_set():
                    break
                await _send(
                    response,
                    frame(
                        {
                            "type": "gateway.unreachable",
                            "source": "debug",
                            "data": {"address": where, "error": reason, "retryInSeconds": delay},
                        }
                    ),
                )
                await _pause(dashboard, stream, delay)
                delay = min(delay * 2, RETRY_MAX)
    finally:
        watcher.cancel()
    return response


@dataclass
class _Stream:
    """One relayed event stream: its session, whether that ended, the relay in progress."""

    session: Session
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    upstream: aiohttp.ClientResponse | None = None


async def _watch(dashboard: Dashboard, credential: str, stream: _Stream) -> None:
    """End `stream` once its session is no longer valid: closing the relay in progress
    wakes its read at once."""
    while True:
        await asyncio.sleep(RECHECK)
        dashboard.check_rotation()
        if dashboard.sessions.peek(credential, time.time()) is not stream.session:
            log.info("Ended a dashboard event stream: its session ended")
            stream.ended.set()
            if stream.upstream is not None:
                stream.upstream.close()
            return


async def _pause(dashboard: Dashboard, stream: _Stream, delay: float) -> None:
    """Wait `delay` seconds, or less if the dashboard stops or the stream's session ends."""
    waits = [
        asyncio.ensure_future(dashboard.closing.wait()),
        asyncio.ensure_future(stream.ended.wait()),
    ]
    try:
        await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _relay(
    dashboard: Dashboard,
    response: web.StreamResponse,
    endpoint: Endpoint,
    stream: _Stream,
    last_id: str | None,
) -> str | None:
    headers = dashboard.clients.headers(endpoint, stream.session.scope, stream.session.how)
    if last_id:
        headers["Last-Event-ID"] = last_id
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=45)
    session = dashboard.clients.session(endpoint)
    async with session.get(
        endpoint.base + "/api/events", headers=headers, timeout=timeout
    ) as upstream:
        if upstream.status != 200:
            raise ValueError(f"HTTP {upstream.status} from the gateway")
        dashboard.upstreams.add(upstream)
        stream.upstream = upstream
        try:
            if stream.ended.is_set():
                return last_id
            await _send(
                response,
                frame(
                    {
                        "type": "gateway.connected",
                        "source": "debug",
                        "data": {"address": endpoint.shown},
                    }
                ),
            )
            async for line in upstream.content:
                if stream.ended.is_set():
                    break
                if line.startswith(b"id: "):
                    last_id = line[4:].decode(errors="replace").strip()
                if not line.startswith(b"retry:"):
                    await _send(response, line)
        finally:
            stream.upstream = None
            dashboard.upstreams.discard(upstream)
    return last_id
