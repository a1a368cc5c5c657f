"""One-time login links for the dashboard (`pb debug start`, `pb debug url`).

A link is `http://127.0.0.1:18790/#login=CODE`.  CODE is 32 random bytes (`secrets`);
what the home keeps is only its SHA-256, as a file `debug.logins/<sha256 hex>` (0600, in a
0700 directory, made with O_EXCL through files.create_file) holding the time it expires.
Only the home's owner can make one.  The dashboard redeems a code by removing that file:
whoever removes it first wins, so a code works once, and only within LOGIN_TTL seconds.
The code sits in the URL's fragment, which browsers never send to a server nor put in a
Referer; the page removes it from the address bar at once (RFC 6750 §5.3: no bearer
credentials in page URLs).

Light on purpose: the CLI imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from pathlib import Path

from pony_scheduler.files import PRIVATE_MODE, UnsafePath, create_file, open_beneath, verify_fd

LOGIN_DIR = "debug.logins"
LOGIN_TTL = 600.0  # seconds a login link stays valid
CODE_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


def _name(code: str) -> str:
    return hashlib.sha256(code.encode("ascii")).hexdigest()


def new_code(home: Path, now: float | None = None, ttl: float = LOGIN_TTL) -> str:
    """Make a one-time login code valid for `ttl` seconds from `now` (time.time())."""
    now = time.time() if now is None else now
    code = secrets.token_urlsafe(32)
    fd = create_file(home, f"{LOGIN_DIR}/{_name(code)}", PRIVATE_MODE, make_dirs=True)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(f"{now + ttl:.3f}\n")
    return code


def login_url(address: str, code: str) -> str:
    """The link to open: the dashboard's address with the code in the fragment."""
    return f"{address.rstrip('/')}/#login={code}"


def redeem(home: Path, code: str, now: float | None = None) -> bool:
    """Use up `code`: True once for a code made by new_code() and not expired, False for
    anything else (unknown, used, expired, malformed).  Expired codes are removed."""
    now = time.time() if now is None else now
    if not isinstance(code, str) or not CODE_SHAPE.match(code):
        return False
    try:
        dir_fd = open_beneath(home, LOGIN_DIR, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, UnsafePath):
        return False
    try:
        _prune(dir_fd, now)
        name = _name(code)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            verify_fd(fd, f"{home}/{LOGIN_DIR}/{name}", private=True)
            expires = float(os.read(fd, 64).decode("ascii").strip())
        except (UnsafePath, ValueError, UnicodeDecodeError):
            return False
        finally:
            os.close(fd)
        try:
            os.unlink(name, dir_fd=dir_fd)  # one use: the first to remove it wins
        except FileNotFoundError:
            return False
        return now <= expires
    finally:
        os.close(dir_fd)


def _prune(dir_fd: int, now: float) -> None:
    """Remove expired codes (by the file's age: no need to read each one)."""
    for entry in os.scandir(dir_fd):
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_mtime + LOGIN_TTL * 2 < now:
                os.unlink(entry.name, dir_fd=dir_fd)
