"""The gateway's bearer token, kept in HOME/gateway.token (0600).

Made on the gateway's first start; later starts reuse it, so scripts and the debug server
can read it at any time.  Whoever can read the file may change jobs: it is the same trust
boundary as the home directory itself (0700).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

from pony_scheduler.errors import PonyError

log = logging.getLogger("pony_scheduler.gateway")

TOKEN_FILE = "gateway.token"


def token_path(home: Path) -> Path:
    return home / TOKEN_FILE


def read_token(home: Path) -> str | None:
    """The token, or None when the gateway has not made one yet (or it is unreadable)."""
    try:
        token = token_path(home).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def ensure_token(home: Path) -> str:
    """Return the token, creating it (0600, atomically) when there is none."""
    path = token_path(home)
    token = read_token(home)
    if token is not None:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            # Anyone else who could read it could run jobs as us: tighten, and say so.
            os.chmod(path, 0o600)
            log.warning("%s was mode %04o; changed it to 0600", path, mode)
        return token
    if path.exists() and not path.is_file():
        raise PonyError(f"{path} exists but is not a file; remove it so that a token can be "
                        "created")
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    try:
        # O_EXCL + 0600 from the first byte: the token is never readable by anyone else.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise PonyError(f"cannot create the token file {path}: {exc.strerror}") from None
    log.info("Created the API token in %s", path)
    return token
