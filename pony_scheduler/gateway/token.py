"""The gateway's two bearer tokens, kept in the home (0600):

* `gateway.token`, the admin token: reads and changes (run, pause, resume);
* `gateway.read-token`, the read-only token: reads only (for monitoring run as another
  user, which must never hold the power to run jobs).

Each is 32 random bytes from `secrets` (256 bits, URL-safe base64), written with O_EXCL and
mode 0600 (files.write_atomic).  A token file that is a symbolic link, not ours, or
readable by others is refused with one line saying how to fix it, never used and never
"repaired" quietly: someone else may have planted it.  Changing a file (`pb gateway
token --rotate`) is noticed by the running gateway at the next request, which then
refuses the old token (`TokenKeeper`), and by the dashboard, which ends its sessions.

Nothing here imports aiohttp: `pb gateway token` uses it.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pony_scheduler.errors import PonyError
from pony_scheduler.files import PRIVATE_MODE, read_private, write_atomic

log = logging.getLogger("pony_scheduler.gateway")

Kind = Literal["admin", "read"]
FILES: dict[Kind, str] = {"admin": "gateway.token", "read": "gateway.read-token"}
TOKEN_FILE = FILES["admin"]
# What secrets.token_urlsafe(32) makes; a file holding anything else was not made by us.
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43,128}$")


def token_path(home: Path, kind: Kind = "admin") -> Path:
    return home / FILES[kind]


def read_token(home: Path, kind: Kind = "admin") -> str | None:
    """The token, or None when there is none yet.  Raises UnsafePath for a file that is a
    link, not ours or readable by others, PonyError for one that does not hold a token."""
    path = token_path(home, kind)
    try:
        raw = read_private(home, path.name)
    except FileNotFoundError:
        return None
    text = raw.decode("ascii", errors="replace").strip()
    if not TOKEN_SHAPE.match(text):
        raise PonyError(
            f"{path} does not hold a token; remove it (rm {path}) and run 'pb "
            "gateway token --rotate' to make a new one"
        )
    return text


def new_token(home: Path, kind: Kind = "admin") -> str:
    """Make a new token and replace the file with it (atomically, 0600)."""
    token = secrets.token_urlsafe(32)
    path = token_path(home, kind)
    try:
        write_atomic(home, path.name, (token + "\n").encode("ascii"), PRIVATE_MODE)
    except OSError as exc:
        raise PonyError(f"cannot write the token file {path}: {exc.strerror}") from None
    return token


def ensure_tokens(home: Path) -> dict[Kind, str]:
    """Both tokens, each made when missing; UnsafePath/PonyError for a bad file."""
    tokens: dict[Kind, str] = {}
    for kind in FILES:
        token = read_token(home, kind)
        if token is None:
            token = new_token(home, kind)
            log.info("Created the %s token in %s", kind, token_path(home, kind))
        tokens[kind] = token
    return tokens


def matches(offered: str, token: str | None) -> bool:
    """Constant-time comparison (hmac.compare_digest), False when there is no token.
    Tokens are ASCII: anything else offered (raw header bytes, a lone surrogate in JSON)
    is simply wrong, not an encoding error."""
    if token is None or not offered.isascii():
        return False
    return hmac.compare_digest(offered.encode("ascii"), token.encode("ascii"))


def bearer(header: str) -> str | None:
    """The credentials of an `Authorization: Bearer X` header (RFC 6750 §2.1), or None."""
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None


def _identity(path: Path) -> tuple[int, ...] | None:
    """What changes when the file is replaced, written, chmod-ed or chown-ed."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (
        info.st_ino,
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_size,
        info.st_mode,
        info.st_uid,
    )


@dataclass
class Tokens:
    admin: str | None
    read: str | None

    def scope_of(self, offered: str) -> Kind | None:
        """ "admin", "read" or None (neither matches).  Both are compared, always."""
        is_admin, is_read = matches(offered, self.admin), matches(offered, self.read)
        return "admin" if is_admin else "read" if is_read else None


class TokenKeeper:
    """The current tokens, re-read when a token file changes (a stat per call; rotation
    takes effect at the next request).  A file that turns bad is logged once and its
    token refused: fail closed."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._seen: tuple[tuple[int, ...] | None, ...] | None = None
        self._tokens = Tokens(None, None)
        # Bumped when a token that was there changes or goes (a rotation; not its first
        # creation): the dashboard then ends its sessions.
        self.generation = 0

    def current(self) -> Tokens:
        seen = tuple(_identity(token_path(self.home, kind)) for kind in FILES)
        if seen != self._seen:
            self._seen = seen
            old, new = self._tokens, Tokens(self._load("admin"), self._load("read"))
            if any(
                before is not None and before != after
                for before, after in ((old.admin, new.admin), (old.read, new.read))
            ):
                self.generation += 1
            self._tokens = new
        return self._tokens

    def _load(self, kind: Kind) -> str | None:
        try:
            return read_token(self.home, kind)
        except (PonyError, OSError) as exc:
            log.error("Refusing the %s token: %s", kind, exc)
            return None
