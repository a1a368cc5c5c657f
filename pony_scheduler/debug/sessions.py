"""The dashboard's login sessions.

A session is a random bearer credential (32 bytes from `secrets`) that the page keeps in
`sessionStorage` and sends in an `Authorization` header: storage scoped to the page's
origin (scheme, host and port), unlike a cookie, which browsers send to every port of
127.0.0.1, so a local user's server on another port would receive it.  Other web pages
can neither read it nor make the browser send it, so there is nothing for a cross-site
request to ride on.

Sessions live in the dashboard's memory only, as SHA-256 digests: they end when the
dashboard stops, when the user logs out, after IDLE seconds unused, and all at once when
a gateway token is rotated.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from pony_scheduler.actor import Scope

IDLE = 12 * 3600.0  # seconds a session lives without being used


@dataclass
class Session:
    scope: Scope
    how: str  # "link" (a one-time login link) or "token" (a pasted token)
    last_used: float


def _digest(credential: str) -> str:
    return hashlib.sha256(credential.encode("utf-8", errors="replace")).hexdigest()


class Sessions:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self.token_generation: int | None = None  # of the gateway tokens seen last

    def new(self, scope: Scope, how: str, now: float) -> str:
        """A new session's credential (shown to the browser once)."""
        credential = secrets.token_urlsafe(32)
        self._sessions[_digest(credential)] = Session(scope, how, now)
        return credential

    def get(self, credential: str, now: float) -> Session | None:
        """The live session of `credential`, its idle clock reset; None otherwise.
        (A dictionary lookup of a digest: no timing difference to measure.)"""
        key = _digest(credential)
        session = self._sessions.get(key)
        if session is None:
            return None
        if now - session.last_used > IDLE:
            del self._sessions[key]
            return None
        session.last_used = now
        return session

    def peek(self, credential: str, now: float) -> Session | None:
        """The live session of `credential`, its idle clock left as it is (an open event
        stream is checked with this: it does not keep a session alive by itself)."""
        session = self._sessions.get(_digest(credential))
        if session is None or now - session.last_used > IDLE:
            return None
        return session

    def end(self, credential: str) -> None:
        self._sessions.pop(_digest(credential), None)

    def end_all(self) -> int:
        count = len(self._sessions)
        self._sessions.clear()
        return count

    def __len__(self) -> int:
        return len(self._sessions)
