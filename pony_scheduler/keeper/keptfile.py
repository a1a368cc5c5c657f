"""keeper.kept: the sessions of runs whose leftovers were kept (`--leftovers keep`).

A keeper that starts after one that died kills what the dead one's runs left behind
(keeper/daemon.py), found by the keeper id in their environment.  Leftovers a run was
told to keep carry that id too, and must live on (docs/KEEPER.md): their run's session
id is written here, one decimal per line, and the run's id as `r<ID>` (the
PONYBUNNY_RUN_ID in their environment, which finds a leftover that made a session of
its own, even one made after the run ended), when they are kept.  The next keeper
spares every process of those sessions and runs (and, with cgroups, every process in
the home's `kept` group).  Lines with no process left are dropped when a keeper
starts.  (Keepers before the `r<ID>` lines skip them: they read only decimals.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

KEPT_FILE = "keeper.kept"
FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def add(home_fd: int, sids: Iterable[int], run_ids: Iterable[int] = ()) -> None:
    """Record sessions `sids` and runs `run_ids` as kept (0600, never through a
    symbolic link).  OSError (a full disk) is the caller's to log: the leftovers then
    die with a dead keeper."""
    lines = [f"{sid}\n" for sid in sorted(sids)] + [f"r{run}\n" for run in sorted(run_ids)]
    fd = os.open(KEPT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | FLAGS, 0o600, dir_fd=home_fd)
    try:
        os.write(fd, "".join(lines).encode())
    finally:
        os.close(fd)


def forget(home_fd: int, sid: int) -> None:
    """Drop session `sid` (its PID was handed out again, so none of its processes is
    left), keeping the other lines; OSError."""
    entries = _entries(home_fd)
    if entries is not None:
        _rewrite(home_fd, entries[0] - {sid}, entries[1])


def load(home_fd: int, live_sids: set[int], live_runs: set[int]) -> tuple[set[int], set[int]]:
    """(sessions, run ids) kept that still have a process (`live_sids`, `live_runs`);
    rewrites the file with only those (removes it when none are left)."""
    entries = _entries(home_fd)
    if entries is None:
        return set(), set()
    sids, runs = entries[0] & live_sids, entries[1] & live_runs
    _rewrite(home_fd, sids, runs)
    return sids, runs


def _entries(home_fd: int) -> tuple[set[int], set[int]] | None:
    """(sessions, run ids) of the whole file, however long it grew (review finding:
    reading only its first MiB, a rewrite dropped the entries after it), or None when
    there is none."""
    try:
        fd = os.open(KEPT_FILE, os.O_RDONLY | FLAGS, dir_fd=home_fd)
    except FileNotFoundError:
        return None
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    words = b"".join(chunks).decode("ascii", "replace").split()
    sids = {int(word) for word in words if word.isdigit()}
    return sids, {int(w[1:]) for w in words if w[:1] == "r" and w[1:].isdigit()}


def _rewrite(home_fd: int, sids: set[int], runs: set[int]) -> None:
    """Replace the file with these entries at once (a temporary file renamed over it: a
    keeper killed meanwhile leaves the old list or the new, never none, review
    finding), or remove it when there are none."""
    if not sids and not runs:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(KEPT_FILE, dir_fd=home_fd)
        return
    lines = [f"{sid}\n" for sid in sorted(sids)] + [f"r{run}\n" for run in sorted(runs)]
    tmp = f".{KEPT_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=home_fd)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | FLAGS, 0o600, dir_fd=home_fd)
    try:
        os.write(fd, "".join(lines).encode())
    finally:
        os.close(fd)
    os.replace(tmp, KEPT_FILE, src_dir_fd=home_fd, dst_dir_fd=home_fd)
