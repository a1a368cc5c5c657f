"""How the dashboard reaches the gateway: only a gateway verified as ours ever gets a request.

Any local user can listen on a TCP port that nothing listens on; a dashboard that sent its
token to "the configured address" while the gateway was down would hand it to them, and
show their answers as real data.  So, every time:

1. `gateway.pid` must name a running process that is verifiably ours (pidfile.inspect:
   /proc start time and boot id match `gateway.json`) and runs as our user; otherwise the
   gateway is down, and the dashboard says so and shows no data.
2. When `gateway.json` names the gateway's Unix socket (`gateway.api.sock`, 0600), the
   request goes there, without any token: the gateway knows us by our peer credentials,
   and we check its own (SO_PEERCRED) on connecting, before a byte is sent: same uid,
   same PID as the pid file.
3. Only when it has no Unix socket (a home path too long for one) does the request go
   over TCP, to the address `gateway.json` names, with the admin token, and only once
   /proc shows that the verified gateway PID itself holds a listening socket on that
   address and port (debug/listeners.py): `gateway.json` is written before the gateway
   listens and read after it may have stopped, and in between the port is anyone's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from pony_scheduler.debug.listeners import held_address
from pony_scheduler.gateway.auth import peer_credentials
from pony_scheduler.gateway.hosting import http_address
from pony_scheduler.gateway.token import read_token
from pony_scheduler.lifecycle import pidfile
from pony_scheduler.lifecycle.spec import GATEWAY

UNIX_BASE = "http://localhost"  # the Host sent over the Unix socket (not checked there)


class GatewayDown(Exception):
    """No verified gateway to talk to; str() says why and what to do."""


@dataclass(frozen=True)
class Endpoint:
    pid: int
    base: str  # what URLs start with
    unix: str | None  # the Unix socket, when there is one
    token: str | None  # sent over TCP only

    @property
    def shown(self) -> str:
        return self.unix or self.base


def locate(home: Path) -> Endpoint:
    """The verified gateway of `home`; GatewayDown when there is none."""
    try:
        info = pidfile.inspect(GATEWAY, home)
    except (OSError, ValueError) as exc:
        raise GatewayDown(f"cannot check the gateway's pid file ({exc})") from None
    if info.state is not pidfile.PidState.RUNNING or info.pid is None:
        raise GatewayDown("the gateway is not running; start it with 'pb gateway start'")
    if info.owner_uid != os.geteuid():
        raise GatewayDown(
            f"the gateway (PID {info.pid}) runs as another user; this "
            "dashboard talks only to its own user's gateway"
        )
    meta = info.meta or {}
    unix = meta.get("apiSocket")
    if isinstance(unix, str) and unix:
        return Endpoint(pid=info.pid, base=UNIX_BASE, unix=unix, token=None)
    address = meta.get("address")
    if not isinstance(address, str) or not address.startswith("http://"):
        raise GatewayDown("the gateway's metadata names no address yet; try again")
    base = verified_base(info.pid, address)
    try:
        token = read_token(home)
    except Exception as exc:  # UnsafePath, PonyError: never send a token we doubt
        raise GatewayDown(f"the token file is not usable: {exc}") from None
    return Endpoint(pid=info.pid, base=base, unix=None, token=token)


def verified_base(pid: int, address: str) -> str:
    """`address` as an IP literal on which the gateway `pid` itself listens right now;
    GatewayDown when it listens on none of the addresses the name resolves to."""
    try:
        held = held_address(pid, address)
    except (ValueError, OSError) as exc:
        raise GatewayDown(f"the gateway's address {address!r} is not usable ({exc})") from None
    if held is not None:
        return http_address(*held)
    raise GatewayDown(
        f"the gateway (PID {pid}) does not listen on {address}, which another program may "
        "hold; the token is not sent there. Restart it: 'pb gateway restart'"
    )


class ImpostorError(aiohttp.ClientConnectionError):
    """The process on the socket is not the gateway we verified."""


class PeerCheckingConnector(aiohttp.UnixConnector):
    """A Unix socket connector that checks, on every new connection and before a byte is
    sent, that the peer (SO_PEERCRED) runs as our uid and is the gateway's PID."""

    def __init__(self, path: str) -> None:
        super().__init__(path=path)
        self.expected_pid: int | None = None

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        proto = await super()._create_connection(*args, **kwargs)
        peer = peer_credentials(proto.transport)
        problem = None
        if peer is None:
            problem = f"cannot check who answers on {self.path}"
        elif peer[1] != os.geteuid() or peer[0] != self.expected_pid:
            problem = (
                f"{self.path} is answered by PID {peer[0]} (uid {peer[1]}), not by the "
                f"gateway (PID {self.expected_pid}); stop that process"
            )
        if problem is not None:
            if proto.transport is not None:
                proto.transport.close()
            raise ImpostorError(problem)
        return proto


class Clients:
    """One aiohttp session per Unix socket path (and one for TCP), made on first use."""

    def __init__(self) -> None:
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}

    def session(self, endpoint: Endpoint) -> aiohttp.ClientSession:
        key = endpoint.unix
        session = self._sessions.get(key)
        if session is None or session.closed:
            connector = PeerCheckingConnector(key) if key is not None else aiohttp.TCPConnector()
            session = self._sessions[key] = aiohttp.ClientSession(connector=connector)
        if isinstance(session.connector, PeerCheckingConnector):
            session.connector.expected_pid = endpoint.pid  # the gateway verified just now
        return session

    def headers(self, endpoint: Endpoint, scope: str, how: str) -> dict[str, str]:
        """Over the socket: who we act for, a session of `scope` opened by `how` ("link",
        "token"; the gateway believes this only from its own uid, and records it in the
        audit trail); over TCP: the token."""
        if endpoint.unix is not None:
            return {"X-Pony-Via": "dashboard", "X-Pony-Scope": scope, "X-Pony-Session": how}
        return {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            await session.close()
        self._sessions.clear()
