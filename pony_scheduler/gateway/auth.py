"""Who may ask the gateway what: every request is authenticated, reads included.

A caller is one of (pony_scheduler.actor.Actor):

* a process of our own user (or root) on the gateway's Unix socket `gateway.api.sock`
  (0600), known by its peer credentials (SO_PEERCRED, unix(7)): admin, no token needed.
  The dashboard talks to the gateway this way and says so (`X-Pony-Via: dashboard`,
  `X-Pony-Scope: read|admin` for the scope of its user's session, `X-Pony-Session:
  link|token` for how that session was opened, for the audit trail), which is believed
  only from such a peer, and only to lower the scope;
* a holder of the admin token or of the read-only token
  (`Authorization: Bearer TOKEN`, RFC 6750 §2.1; never in the URL, §5.3);
* anyone, for reads, when the owner opted in with `anonymous_read = true`.

Everything else gets 401 (`WWW-Authenticate: Bearer`, RFC 6750 §3); a change asked with
the read-only token gets 403 (`insufficient_scope`).  On loopback the Host header must
name a loopback address or one of `allowed_hosts` (a web page cannot reach the gateway
through DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from aiohttp import web

from pony_scheduler.actor import SESSION_ORIGINS, Actor, Scope, Via, peer_actor
from pony_scheduler.gateway.token import TokenKeeper, bearer

log = logging.getLogger("pony_scheduler.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
ACTOR = web.RequestKey("actor", Actor)
VIA_HEADER, SCOPE_HEADER, SESSION_HEADER = "X-Pony-Via", "X-Pony-Scope", "X-Pony-Session"
LOOPBACK_NAMES = ("localhost",)


def peer_credentials(transport: object) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix socket, None for TCP."""
    get = getattr(transport, "get_extra_info", None)
    sock = get("socket") if get is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    size = struct.calcsize("3i")
    pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    return pid, uid, gid


def trusted_uid(uid: int) -> bool:
    """Our own user, or root (who can read our token anyway)."""
    return uid in (os.geteuid(), 0)


def host_name(header: str) -> str:
    """The name part of a Host header ("localhost:80" -> "localhost", "[::1]:80" ->
    "[::1]"), lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, allowed: tuple[str, ...] = ()) -> bool:
    """Does a Host header name this machine's loopback, or one of `allowed`
    (the `allowed_hosts` setting: a reverse proxy's name)?"""
    name = host_name(header)
    if name in LOOPBACK_NAMES or name in allowed:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def identify(request: web.Request, tokens: TokenKeeper, anonymous_read: bool) -> Actor | None:
    """The caller of `request`, or None when it proved nothing."""
    peer = peer_credentials(request.transport)
    if peer is not None and trusted_uid(peer[1]):
        via: Via = "dashboard" if request.headers.get(VIA_HEADER) == "dashboard" else "api"
        scope: Scope = "read" if request.headers.get(SCOPE_HEADER) == "read" else "admin"
        opened = request.headers.get(SESSION_HEADER)
        session = next((origin for origin in SESSION_ORIGINS if origin == opened), None)
        return peer_actor(peer[1], via=via, scope=scope, session=session)
    offered = bearer(request.headers.get("Authorization", ""))
    address = request.remote or None
    if offered is not None:
        found = tokens.current().scope_of(offered)
        if found is not None:
            return Actor(via="api", scope=found, credential="token", address=address)
        return None
    if anonymous_read and request.method in SAFE_METHODS:
        return Actor(via="api", scope="read", credential="anonymous", address=address)
    return None


def unauthorized(request: web.Request, message: str) -> web.Response:
    offered = bearer(request.headers.get("Authorization", "")) is not None
    challenge = 'Bearer realm="pony-scheduler"' + (', error="invalid_token"' if offered else "")
    return web.json_response(
        {"error": message, "status": 401}, status=401, headers={"WWW-Authenticate": challenge}
    )


def forbidden(message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message, "status": 403}, status=403, headers=headers or None)


def security_headers(response: web.StreamResponse) -> None:
    """Headers for every answer of the gateway and the dashboard: never framed
    (clickjacking), never sniffed, never cached, no Referer to elsewhere."""
    headers = response.headers
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    )
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cache-Control", "no-store")
