"""keeper.kept: the sessions of runs whose leftovers were kept (`--leftovers keep`).

A keeper that starts after one that died kills what the dead one's runs left behind
(keeper/daemon.py), found by the keeper id in their environment.  Leftovers a run was
told to keep carry that id too, and must live on (docs/KEEPER.md): their run's session
id is written here, one decimal per line, when they are kept, and the next keeper
spares every process of those sessions (and, with cgroups, every process in the home's
`kept` group, where a leftover that made a session of its own still is).  Lines for
sessions with no process left are dropped when a keeper starts.
"""

from __future__ import annotations

import contextlib
import os

KEPT_FILE = "keeper.kept"
FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def add(home_fd: int, sid: int) -> None:
    """Record session `sid` as kept (0600, never through a symbolic link).  OSError
    (a full disk) is the caller's to log: the leftovers then die with a dead keeper."""
    fd = os.open(KEPT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | FLAGS, 0o600, dir_fd=home_fd)
    try:
        os.write(fd, f"{sid}\n".encode())
    finally:
        os.close(fd)


def load(home_fd: int, live_sids: set[int]) -> set[int]:
    """The kept sessions that still have a process (`live_sids`); rewrites the file
    with only those (removes it when none are left)."""
    try:
        fd = os.open(KEPT_FILE, os.O_RDONLY | FLAGS, dir_fd=home_fd)
    except FileNotFoundError:
        return set()
    try:
        text = os.read(fd, 1 << 20).decode("ascii", "replace")
    finally:
        os.close(fd)
    kept = {int(word) for word in text.split() if word.isdigit()} & live_sids
    with contextlib.suppress(FileNotFoundError):
        os.unlink(KEPT_FILE, dir_fd=home_fd)
    for sid in sorted(kept):
        add(home_fd, sid)
    return kept
