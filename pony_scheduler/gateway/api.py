"""The gateway's HTTP API.

Every answer to an HTTP request is JSON, errors included (`{"error": "...", "status": N}`):
a middleware turns every exception into one, so a malformed request never shows a traceback
or takes the server down.  (Bytes that do not parse as HTTP at all never reach the app:
aiohttp answers those with its own plain-text 400 and closes the connection.)

Every request is authenticated, reads included (gateway/auth.py): the admin token, the
read-only token, or our own uid on the Unix socket; changes need the admin scope.
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
from typing import Any

from aiohttp import web

from pony_scheduler import __version__
from pony_scheduler.config import Settings
from pony_scheduler.errors import PonyError
from pony_scheduler.events import timestamp
from pony_scheduler.gateway.auth import (
    ACTOR,
    SAFE_METHODS,
    Handler,
    forbidden,
    host_allowed,
    identify,
    peer_credentials,
    security_headers,
    unauthorized,
)
from pony_scheduler.gateway.data import RUN_STATES, Data, NotFound, Unavailable
from pony_scheduler.gateway.hub import EventHub
from pony_scheduler.gateway.refusals import RefusalLog, shown_path
from pony_scheduler.gateway.token import TokenKeeper
from pony_scheduler.joblimits import ascii_whole
from pony_scheduler.runstate import RUN_ID_MAX

log = logging.getLogger("pony_scheduler.gateway")

KEEPALIVE = 15.0  # seconds between SSE comments, so dead connections are noticed
RECHECK = 1.0  # seconds between checks that an event stream's credential is still valid
FLUSH_EVERY = 5.0  # seconds between summaries of rate-limited refusal lines
MAX_LIMIT = 1000
MAX_JOBS = 1_000_000  # a page of jobs, as `pb job list -n`


@dataclass
class Gateway:
    settings: Settings
    hub: EventHub
    data: Data
    tokens: TokenKeeper
    addresses: list[str]
    check_host: bool  # listening on loopback only: refuse Host names that only rebind to it
    api_socket: str | None = None
    started: float = field(default_factory=time.time)
    refusals: RefusalLog = field(default_factory=lambda: RefusalLog(log))


GATEWAY = web.AppKey("gateway", Gateway)


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": message, "status": status}, status=status, headers=headers or None
    )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error(
            405,
            f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
            Allow=allowed,
        )
    except web.HTTPNotFound as exc:
        return error(404, str(exc.text) if _custom(exc) else f"no such endpoint: {request.path}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, str(exc.text) if _custom(exc) else str(exc.reason).lower())
    except NotFound as exc:
        return error(404, str(exc))
    except Unavailable as exc:
        return error(503, str(exc))
    except PonyError as exc:
        return error(409, str(exc))
    except (ConnectionError, asyncio.CancelledError):
        raise  # the client went away: nothing to answer
    except Exception:
        log.exception("Error handling %s %s", request.method, request.path)
        return error(500, "internal error; the gateway log has the details")


def _custom(exc: web.HTTPException) -> bool:
    """Did our code give this exception a message (not aiohttp's "404: Not Found")?"""
    return bool(exc.text) and not str(exc.text).startswith(f"{exc.status}:")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    on_tcp = peer_credentials(request.transport) is None
    if (
        gateway.check_host
        and on_tcp
        and not host_allowed(request.host or "", settings.allowed_hosts)
    ):
        return forbidden(
            "the gateway answers only to loopback names (localhost, "
            "127.0.0.1, [::1]) and allowed_hosts, not "
            f"{request.host!r}"
        )
    actor = identify(request, gateway.tokens, settings.anonymous_read)
    if actor is None:
        gateway.refusals.refused(
            time.monotonic(),
            request.remote,
            "Refused %s %s from %s: missing or wrong token",
            request.method,
            shown_path(request.path),
            request.remote or "the Unix socket",
        )
        # Where the token is, and so the home's path, is not for whoever asks.
        return unauthorized(
            request,
            "missing or wrong token: send 'Authorization: Bearer "
            "<token>' with the admin or the read-only token (their owner "
            "prints them with 'pb gateway token [--read-only]')",
        )
    if request.method not in SAFE_METHODS and not actor.may_change:
        gateway.refusals.refused(
            time.monotonic(),
            request.remote,
            "Refused %s %s from %s: the read-only token may not change anything",
            request.method,
            shown_path(request.path),
            actor.describe(),
        )
        return forbidden(
            "this token may only read; changes need the admin token",
            **{"WWW-Authenticate": 'Bearer realm="pony-scheduler", error="insufficient_scope"'},
        )
    request[ACTOR] = actor
    return await handler(request)


# -- reading ---------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    _only(request, ())
    gateway = request.app[GATEWAY]
    return web.json_response(
        {
            "status": "ok",
            "service": "gateway",
            "version": __version__,
            "pid": os.getpid(),
            "uptimeSeconds": round(time.time() - gateway.started, 3),
        }
    )


async def status(request: web.Request) -> web.Response:
    from pony_scheduler.lifecycle.services import summaries

    _only(request, ())
    gateway = request.app[GATEWAY]
    loop = asyncio.get_running_loop()
    services = await loop.run_in_executor(None, summaries, gateway.settings)
    return web.json_response(
        {
            "gateway": {
                "pid": os.getpid(),
                "version": __version__,
                "addresses": gateway.addresses,
                "socket": str(gateway.settings.socket),
                "uptimeSeconds": round(time.time() - gateway.started, 3),
                "apiSocket": gateway.api_socket,
                "subscribers": gateway.hub.subscriber_count,
                "anonymousRead": gateway.settings.anonymous_read,
            },
            "scheduler": gateway.hub.scheduler_status(),
            "services": services,
        }
    )


def _only(request: web.Request, allowed: tuple[str, ...]) -> None:
    """HTTPBadRequest for a query parameter not in `allowed`, or one given twice: which of
    `?state=failed&state=succeeded` counts is a guess that a proxy or a filter in front
    may make differently (HTTP parameter pollution), so neither is taken."""
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise web.HTTPBadRequest(
            text=f"unknown query parameter {unknown[0]!r} (known: {', '.join(allowed) or 'none'})"
        )
    if len(request.query) != len(set(request.query)):
        twice = sorted(k for k in set(request.query) if len(request.query.getall(k)) > 1)
        raise web.HTTPBadRequest(text=f"query parameter {twice[0]!r} given more than once")


def _whole(raw: str, what: str, low: int, high: int) -> int:
    """`raw` as a whole number from `low` to `high` (joblimits.ascii_whole: ASCII digits
    only); HTTPBadRequest otherwise."""
    number = ascii_whole(raw)
    if number is None or not low <= number <= high:
        raise web.HTTPBadRequest(
            text=f"{what} must be a whole number from {low} to {high}, not {raw!r}"
        )
    return number


async def list_jobs(request: web.Request) -> web.StreamResponse:
    """Jobs by name; with `limit`, a page of them and `next_after` (the `after` of the
    next page, null on the last), as `pb job list` pages; without, every job, streamed."""
    _only(request, ("limit", "after"))
    raw = request.query.get("limit")
    limit = None if raw is None else _whole(raw, "limit", 1, MAX_JOBS)
    after = request.query.get("after")
    if limit is None:
        return await _every_job(request, after)
    jobs = await request.app[GATEWAY].data.jobs(after, limit + 1)
    more = len(jobs) > limit
    page = jobs[:limit]
    return web.json_response(
        {"jobs": page, "next_after": page[-1]["name"] if more and page else None}
    )


STREAM_PAGE = 500  # jobs read and sent at a time when every job is asked for


async def _every_job(request: web.Request, after: str | None) -> web.StreamResponse:
    """{"jobs": [...]} written page by page, each page its own short read: memory stays
    flat however many jobs there are (review finding: 100,000 jobs took the gateway to
    684 MiB).  The first page is read before the status line, so that a database that
    does not answer is still a 503; a later failure ends the body short (invalid JSON)."""
    data = request.app[GATEWAY].data
    page = await data.jobs(after, STREAM_PAGE)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    await response.write(b'{"jobs": [')
    separator = b""
    while page:
        await response.write(separator + ", ".join(json.dumps(j) for j in page).encode())
        separator = b", "
        if len(page) < STREAM_PAGE:
            break
        page = await data.jobs(page[-1]["name"], STREAM_PAGE)
    await response.write(b"]}")
    await response.write_eof()
    return response


async def show_job(request: web.Request) -> web.Response:
    _only(request, ())
    return web.json_response(await request.app[GATEWAY].data.job(request.match_info["name"]))


async def list_runs(request: web.Request) -> web.Response:
    _only(request, ("job", "limit", "state"))
    limit = _whole(request.query.get("limit", "50"), "limit", 1, MAX_LIMIT)
    state = request.query.get("state") or None
    if state is not None and state not in RUN_STATES:
        raise web.HTTPBadRequest(text=f"unknown state {state!r} (known: {', '.join(RUN_STATES)})")
    job = request.query.get("job") or None
    data = request.app[GATEWAY].data
    if job is not None:
        await data.job(job)  # 404 for a job that does not exist, as `pb runs JOB` says
    return web.json_response({"runs": await data.runs(job, limit, state)})


def _run_id(request: web.Request) -> int:
    return _whole(request.match_info["id"], "a run id", 1, RUN_ID_MAX)


async def show_run(request: web.Request) -> web.Response:
    _only(request, ())
    return web.json_response(await request.app[GATEWAY].data.run(_run_id(request)))


# -- changing --------------------------------------------------------------------------------
async def _no_body(request: web.Request) -> None:
    """These actions take no parameters: no query, and an empty body or an empty JSON
    object; anything else is refused, so that nobody believes a parameter did something."""
    _only(request, ())
    body = await request.read()
    if not body.strip():
        return
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json parses
        raise web.HTTPBadRequest(text="the request body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise web.HTTPBadRequest(text="the request body must be a JSON object")
    if parsed:
        raise web.HTTPBadRequest(
            text=f"unknown field {sorted(parsed)[0]!r}: this action takes no parameters"
        )


async def run_job(request: web.Request) -> web.Response:
    await _no_body(request)
    name, actor = request.match_info["name"], request[ACTOR]
    run_id = await request.app[GATEWAY].data.request_run(name, actor)
    log.info("Run %d of job %s requested by %s", run_id, name, actor.describe())
    return web.json_response({"run_id": run_id, "job": name, "state": "queued"}, status=202)


def _set_enabled(enabled: bool) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        await _no_body(request)
        name, actor = request.match_info["name"], request[ACTOR]
        job = await request.app[GATEWAY].data.set_enabled(name, enabled, actor)
        log.info("Job %s %s by %s", name, "resumed" if enabled else "paused", actor.describe())
        return web.json_response(job)

    return handler


async def openapi(request: web.Request) -> web.Response:
    from pony_scheduler.gateway.openapi import SPEC

    _only(request, ())
    return web.json_response(SPEC)


# -- live events -----------------------------------------------------------------------------
def sse_frame(event: dict[str, Any], with_id: bool = True) -> bytes:
    lines = [f"id: {event['id']}"] if with_id and "id" in event else []
    lines.append("data: " + json.dumps(event, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every event as a default `message` whose data is the JSON event;
    `Last-Event-ID` (sent by EventSource on reconnection) replays what was missed.  The
    stream ends once the caller's credential is no longer valid (a rotated token), checked
    with each event and every RECHECK seconds."""
    _only(request, ())  # where to resume is the Last-Event-ID header
    gateway = request.app[GATEWAY]
    actor = request[ACTOR]
    subscriber = gateway.hub.subscribe(request.headers.get("Last-Event-ID"))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await response.prepare(request)
        hello = {
            "type": "gateway.hello",
            "timestamp": timestamp(),
            "source": "gateway",
            "data": {"instance": gateway.hub.instance, "scheduler": gateway.hub.scheduler_status()},
        }
        await response.write(b"retry: 2000\n\n" + sse_frame(hello, with_id=False))
        quiet_since = time.monotonic()
        while True:
            try:
                event = await subscriber.next(RECHECK)
            except EOFError:
                break
            if identify(request, gateway.tokens, gateway.settings.anonymous_read) != actor:
                log.info(
                    "Ended the event stream of %s: its credential is no longer valid",
                    actor.describe(),
                )
                break
            if event is not None:
                await response.write(sse_frame(event))
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE:
                await response.write(b": keepalive\n\n")
                quiet_since = time.monotonic()
    except ConnectionError:
        pass  # the client went away
    finally:
        gateway.hub.unsubscribe(subscriber)
    return response


async def _flush_refusals(app: web.Application) -> None:
    """Write the summaries of rate-limited refusals when their minute is over."""
    from pony_scheduler.gateway.hosting import PROTOCOL_ERRORS

    refusals = app[GATEWAY].refusals
    while True:
        await asyncio.sleep(FLUSH_EVERY)
        refusals.flush(time.monotonic())
        PROTOCOL_ERRORS.flush(time.monotonic())


def build_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[json_errors, authenticate], client_max_size=64 * 1024)
    app[GATEWAY] = gateway

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        security_headers(response)

    app.on_response_prepare.append(headers)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/jobs", list_jobs)
    app.router.add_get("/api/jobs/{name}", show_job)
    app.router.add_post("/api/jobs/{name}/run", run_job)
    app.router.add_post("/api/jobs/{name}/pause", _set_enabled(False))
    app.router.add_post("/api/jobs/{name}/resume", _set_enabled(True))
    app.router.add_get("/api/runs", list_runs)
    app.router.add_get("/api/runs/{id}", show_run)
    app.router.add_get("/api/events", events)

    async def on_shutdown(app: web.Application) -> None:
        app[GATEWAY].hub.close()  # ends the SSE streams, so shutdown need not wait for them

    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(_flusher)
    return app


async def _flusher(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(_flush_refusals(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
