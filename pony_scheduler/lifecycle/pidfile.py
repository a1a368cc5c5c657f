"""Reading pid files and deciding whether the process they name is really ours.

The pid file holds the PID alone (written by lockfile's PIDLockFile) so that `kill $(cat …)`,
systemd's PIDFile= and logrotate can use it.  What identifies the process beyond its PID
lives beside it in NAME.json: the kernel's start time of the process and the boot id, which
together survive PID reuse after a crash or a reboot.
"""

import contextlib
import json
import os
import time
from enum import Enum
from typing import Any, NamedTuple

from pony_scheduler.lifecycle.spec import ServiceSpec


class PidState(Enum):
    ABSENT = "absent"  # no pid file
    RUNNING = "running"  # a live process that is verifiably ours
    STARTING = "starting"  # empty pid file while a start holds the start lock
    STALE = "stale"  # pid file left behind: dead, foreign, garbage


class PidInfo(NamedTuple):  # not a dataclass: see lifecycle/spec.py
    state: PidState
    pid: int | None = None
    meta: dict[str, Any] | None = None
    reason: str = ""  # why a pid file is stale, in words for users
    owner_uid: int | None = None  # uid of a running daemon (ours may run as another user)
    start_time: int | None = None  # /proc start time of a running daemon, as verified


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def proc_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:  # os.open/os.read: the executor calls this for every job run it starts
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096).decode(errors="replace")
        finally:
            os.close(fd)
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has finished; it only waits to be reaped
        return None
    return int(fields[19])


def proc_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def identity(pid: int) -> dict[str, Any]:
    """The facts written to the metadata file that let a later command recognise us."""
    import socket  # here: `pb scheduler status` reads these facts and need not import it

    return {
        "procStartTime": proc_start_time(pid),
        "bootId": boot_id(),
        "hostname": socket.gethostname(),
        "uid": os.getuid(),
    }


# Paths are str or Path: `pb NAME status` passes str, as it does without pathlib
# (config.Settings says why); files are read with open(), which takes either.
def read_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        with open(path) as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def live_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metadata file `path` (NAME.json, keeper.json) if the process it describes
    lives: its "pid" on this boot ("bootId") with the same /proc start time
    ("procStartTime"), the checks a pid file gets; None otherwise."""
    meta = read_meta(path)
    if meta is None or not isinstance(meta.get("pid"), int):
        return None
    pid = meta["pid"]
    same = meta.get("bootId") == boot_id() and proc_start_time(pid) == meta.get("procStartTime")
    return meta if same else None


def write_meta(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file (and never through a link)."""
    from pony_scheduler.files import SHARED_MODE, write_atomic

    directory, name = os.path.split(os.fspath(path))
    write_atomic(directory or ".", name, (json.dumps(data, indent=2) + "\n").encode(), SHARED_MODE)


def _looks_like_pb(pid: int) -> bool:
    """Fallback when no metadata describes `pid`: is its command line one of ours?"""
    argv = proc_cmdline(pid)
    return any("pony_scheduler" in part or os.path.basename(part) == "pb" for part in argv[:3])


def is_ours(pid: int, meta: dict[str, Any] | None) -> bool:
    start = proc_start_time(pid)
    if start is None:
        return False
    if meta and meta.get("pid") == pid:
        return bool(meta.get("procStartTime") == start and meta.get("bootId") == boot_id())
    # Metadata missing or about another PID: a daemon between locking the pid file and
    # writing its metadata, or metadata someone deleted.  Only the command line is left.
    return _looks_like_pb(pid)


def start_lock_held(spec: ServiceSpec, home: str | os.PathLike[str]) -> bool:
    import fcntl

    try:
        fd = os.open(spec.start_lock_path(os.fspath(home)), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def inspect(spec: ServiceSpec, home: str | os.PathLike[str]) -> PidInfo:
    """Classify the pid file of `spec`; never signals anything."""
    home = os.fspath(home)
    pid_path = spec.pid_path(home)
    try:
        with open(pid_path, errors="replace") as handle:
            text = handle.read()
    except FileNotFoundError:
        return PidInfo(PidState.ABSENT)
    except PermissionError as exc:
        raise PermissionError(f"cannot read {pid_path}: {exc.strerror}") from None
    except IsADirectoryError:
        from pony_scheduler.files import UnsafePath

        raise UnsafePath(
            pid_path, "is a directory, not a file", f"remove it (rmdir {pid_path})"
        ) from None
    meta = read_meta(spec.meta_path(home))
    if not text.strip():
        if start_lock_held(spec, home):
            return PidInfo(PidState.STARTING)
        return PidInfo(PidState.STALE, reason="the pid file is empty")
    try:
        pid = int(text.strip())
        if pid <= 0:
            raise ValueError
    except ValueError:
        shown = text.strip()[:40]
        return PidInfo(PidState.STALE, reason=f"the pid file holds garbage ({shown!r})")
    if proc_start_time(pid) is None:
        return PidInfo(PidState.STALE, pid=pid, meta=meta, reason=f"PID {pid} is not running")
    if not is_ours(pid, meta):
        return PidInfo(
            PidState.STALE,
            pid=pid,
            meta=meta,
            reason=f"PID {pid} belongs to another program (PID reused)",
        )
    return PidInfo(
        PidState.RUNNING,
        pid=pid,
        meta=meta if meta and meta.get("pid") == pid else None,
        owner_uid=proc_uid(pid),
        start_time=proc_start_time(pid),
    )


def remove_files(spec: ServiceSpec, home: str | os.PathLike[str]) -> None:
    """Remove the pid file and metadata of a daemon that is gone."""
    home = os.fspath(home)
    for path in (spec.meta_path(home), spec.pid_path(home)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def still_ours(pid: int, start_time: int | None) -> bool:
    """Is `pid` still the very process we verified earlier (not dead, not reused)?"""
    return start_time is not None and proc_start_time(pid) == start_time


def wait_gone(pid: int, start_time: int | None, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the process to be gone; False if it is not."""
    from pony_scheduler.waiting import pause  # here: `status` never waits

    deadline = time.monotonic() + timeout
    while still_ours(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        pause(0.02)
    return True
