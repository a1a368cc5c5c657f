"""Who asked for a change: the record the audit trail keeps.

The gateway knows its caller by the credential it showed: the admin or read-only token,
or, on its Unix socket, the peer's uid (SO_PEERCRED); the dashboard forwards its user's
actions with the scope of their session; the CLI is the invoking user.  Store functions
take an `Actor` and keep `describe()` or the fields; nothing here imports a web or
database library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

Via = Literal["cli", "api", "dashboard"]
Scope = Literal["admin", "read"]
# How the caller proved who it is: the admin or read token, the peer's uid on the
# gateway's Unix socket, a dashboard session, the anonymous-read opt-in, or being the
# local process (the CLI).
Credential = Literal["token", "peer", "session", "anonymous", "local"]
# How a dashboard session was opened: a one-time login link, or a pasted gateway token.
SessionOrigin = Literal["link", "token"]
SESSION_ORIGINS: tuple[SessionOrigin, ...] = ("link", "token")


@dataclass(frozen=True)
class Actor:
    """One caller.  `uid`/`user` are known for the CLI and Unix-socket peers (None over
    TCP: a token says what may be done, not who holds it); `address` is the TCP peer.
    For a dashboard session, `uid`/`user` are the dashboard's own (whoever holds the
    session is not known by uid) and `session` says how it was opened, when known."""

    via: Via
    scope: Scope
    credential: Credential
    uid: int | None = None
    user: str | None = None
    address: str | None = None
    session: SessionOrigin | None = None

    @property
    def may_change(self) -> bool:
        """Changes (run, pause, resume, add...) need the admin scope."""
        return self.scope == "admin"

    def describe(self) -> str:
        """One line for logs and the audit trail, e.g. `api (admin token) from
        127.0.0.1` or `dashboard (session, admin) as alice (uid 1000)`.  Contains no
        control characters (addresses and user names come from the system)."""
        opened = {"link": " from a login link", "token": " from a pasted token", None: ""}[
            self.session
        ]
        how = {
            "token": f"{self.scope} token",
            "peer": "Unix socket peer",
            "session": f"session{opened}, {self.scope}",
            "anonymous": "anonymous read",
            "local": "local",
        }[self.credential]
        text = f"{self.via} ({how})"
        if self.user is not None or self.uid is not None:
            text += f" as {self.user or '?'} (uid {self.uid})"
        if self.address:
            text += f" from {self.address}"
        return text


def user_name(uid: int) -> str | None:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def cli_actor() -> Actor:
    """The user running `pb` (the CLI talks to the database directly)."""
    uid = os.geteuid()
    return Actor(via="cli", scope="admin", credential="local", uid=uid, user=user_name(uid))


def peer_actor(
    uid: int, via: Via = "api", scope: Scope = "admin", session: SessionOrigin | None = None
) -> Actor:
    """A caller on the gateway's Unix socket, known by its uid (SO_PEERCRED); for the
    dashboard (`via`), the session it acts for: its scope and how it was opened."""
    return Actor(
        via=via,
        scope=scope,
        credential="peer" if via == "api" else "session",
        uid=uid,
        user=user_name(uid),
        session=session if via == "dashboard" else None,
    )


def audit_scope(actor: Actor) -> str:
    """The audit trail's `scope` column (at most 16 characters): the scope and how the
    caller proved it, e.g. "admin token", "read peer", "admin link" (a dashboard session
    opened by a login link), "admin session" (a dashboard session, origin unknown)."""
    return f"{actor.scope} {actor.session or actor.credential}"
