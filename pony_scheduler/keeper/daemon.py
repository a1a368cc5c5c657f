"""Becoming the keeper: `python -m pony_scheduler.keeper --home HOME [--ready-fd N]`.

The client starts this in a new session with no inherited fd but the write end of a
readiness pipe; it forks once more at once (so it is no session leader and can never
get a controlling terminal; the client reaps the intermediate process) and, once
serving, writes `READY <pid>` to the pipe - or `RUNNING <pid>` when another keeper
holds the home, or `FAILED <reason>`.  `--foreground` skips the fork and logs to stderr
(for a service manager, and tests).

The lock is keeper.pid itself (flock(2), held for the keeper's life, the PID alone on
one line).  A dead keeper's lock is free, so a stale keeper.pid - its PID dead or
reused - is simply taken over; what that keeper's runs left behind is killed (they
cannot be recorded any more: a run without its keeper is lost).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from pony_scheduler import __version__
from pony_scheduler.keeper import cgroups, keptfile, procs, spawner
from pony_scheduler.keeper.commit import Journal, SyncHelper
from pony_scheduler.keeper.containment import KEPT_GROUP, Cgroups, ContainmentError, home_group_name
from pony_scheduler.keeper.dbtag import DatabaseTag
from pony_scheduler.keeper.journal import JournalFile, lock_pid_file
from pony_scheduler.keeper.protocol import META_FILE, PID_FILE, PROTOCOL, SOCKET_FILE
from pony_scheduler.keeper.server import Keeper, open_log
from pony_scheduler.lifecycle.pidfile import boot_id, proc_start_time, read_meta, write_meta
from pony_scheduler.waiting import pause

# The same lines as the other daemons' logs (lifecycle/runtime.py LOG_FORMAT).
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s"
CONTAINMENT_VAR = "PONYBUNNY_CONTAINMENT"
DEFAULT_IDLE_EXIT_S = 5.0
log = logging.getLogger("pony_scheduler.keeper")


class Announcer:
    """The write end of the readiness pipe: one line, then closed (silent without one)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __call__(self, line: str) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def _setup_logging(foreground: bool, home_fd: int) -> None:
    if not foreground:
        fd = open_log(home_fd)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans of runs come to us, not to init."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:
        log.warning(
            "Cannot become a child subreaper (errno %d): orphaned processes of runs "
            "go to init and are found only through their group or environment",
            ctypes.get_errno(),
        )


def _cleanup_stale(
    home: Path, home_fd: int, cg: Cgroups, old_meta: dict[str, object] | None
) -> None:
    """Kill what the runs of a keeper that died left: their outcomes are lost anyway, and
    a run the scheduler repeats must not run beside its former self.  Leftovers kept by
    policy (`--leftovers keep`, keptfile.py) are spared."""
    elsewhere = cg.other_parents()
    for path in cg.stale_groups(elsewhere):
        count = cg.kill_stale(path)
        deadline = time.monotonic() + 5
        while not cgroups.remove_group(path) and time.monotonic() < deadline:
            pause(0.02)
        log.warning(
            "Killed %d process(es) of %s, left by a keeper that died", count, os.path.basename(path)
        )
    for parent in elsewhere:  # kept leftovers (`--leftovers keep`) keep theirs alive
        if cgroups.remove_group(parent):
            log.info("Removed %s, where an earlier keeper of this home put its runs", parent)
    old_id = (old_meta or {}).get("keeperId")
    if isinstance(old_id, str) and old_id:
        marked = procs.scan_marked(old_id, os.getuid())
        sids, runs = keptfile.load(home_fd, {p.sid for p, _ in marked}, {r for _, r in marked if r})
        group = f"/{home_group_name(str(home))}/{KEPT_GROUP}"
        # A process marked with a run that was not kept is not spared for its session
        # id alone: that number may be a kept session's, reused (review finding).
        spared = [
            p
            for p, r in marked
            if r in runs or (r is None and p.sid in sids) or _in_group(p.pid, group)
        ]
        found = [p for p, _ in marked if p not in spared]
        if spared:
            log.info(
                "Left running %d kept leftover process(es) of runs of keeper %s: %s",
                len(spared),
                old_id,
                ", ".join(str(p.pid) for p in spared),
            )
        if found:
            log.warning(
                "Killing %d process(es) of runs of keeper %s, which died: %s",
                len(found),
                old_id,
                ", ".join(str(p.pid) for p in found),
            )
            procs.signal_procs(found, signal.SIGKILL)


def _in_group(pid: int, suffix: str) -> bool:
    """Whether process `pid` is in a cgroup whose path ends with `suffix` (any hierarchy,
    /proc/PID/cgroup)."""
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            return any(line.rstrip("\n").endswith(suffix) for line in handle)
    except OSError:
        return False


def _listen(home_fd: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SOCKET_FILE, dir_fd=home_fd)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # 0600 from birth: no window in which others could connect
    try:
        sock.bind(SOCKET_FILE)  # relative to the cwd, the home: no sun_path length limit
    finally:
        os.umask(old)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _signals() -> int:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for signum in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)  # the wake-up pipe carries the number
    for signum in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)
    return read_end


def serve(
    home: Path, announce: Announcer, foreground: bool, containment: str, idle_exit: float
) -> int:
    os.umask(0o027)
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    os.fchdir(home_fd)
    _setup_logging(foreground, home_fd)
    lock_fd = lock_pid_file(home_fd)
    if lock_fd is None:
        with contextlib.suppress(OSError):
            announce(f"RUNNING {(home / PID_FILE).read_text().strip()}")
        return 0
    old_meta = read_meta(home / META_FILE)
    old_pid = (home / PID_FILE).read_text().strip()
    if old_pid:
        log.warning(
            "Replacing a stale keeper.pid (PID %s: %s)",
            old_pid,
            "not running"
            if not old_pid.isdigit() or proc_start_time(int(old_pid)) is None
            else "another program now",
        )
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    keeper_id = os.urandom(8).hex()  # in every run's environment: whose run it is
    cg = Cgroups(str(home), containment)
    spawner.probe(cg)
    meta: dict[str, object] = {
        "pid": os.getpid(),
        "procStartTime": proc_start_time(os.getpid()),
        "bootId": boot_id(),
        "uid": os.getuid(),
        "keeperId": keeper_id,
        "version": __version__,
        "protocol": PROTOCOL,
        "containment": cg.mode,
        "containmentAsked": containment,  # the setting it started with (status)
        "containmentWhy": cg.why(),
        "startedAt": int(time.time() * 1000),
        "home": str(home),
    }
    write_meta(home / META_FILE, meta)
    _subreaper()
    _cleanup_stale(home, home_fd, cg, old_meta)
    journal_file = JournalFile(home_fd)
    found = journal_file.recover()
    if found.torn or found.bad_lines:
        log.warning(
            "keeper.journal: %s%d unreadable line(s) skipped",
            "a torn last line cut; " if found.torn else "",
            found.bad_lines,
        )
    try:
        helper: SyncHelper | None = SyncHelper(home_fd)  # forked now: no thread exists yet
    except OSError as exc:
        log.warning("No journal sync helper (%s): the loop syncs by itself", exc.strerror)
        helper = None
    journal = Journal(journal_file, helper)
    # The outcomes a dead keeper left belong to its scheduler's database (dbtag.py).
    tag = DatabaseTag(home / META_FILE, meta, old_meta if found.outcomes else None)
    listener = _listen(home_fd)
    keeper = Keeper(
        str(home),
        home_fd,
        keeper_id,
        cg,
        journal,
        listener,
        _signals(),
        idle_exit,
        found.outcomes,
        log,
        not foreground,
        tag,
    )
    if helper is not None:
        keeper.tracker.exclude.add(helper.pid)
    log.info(
        "Keeper %s ready (pony-scheduler %s, protocol %d): containment %s%s%s%s, "
        "%d outcome(s) pending from the journal",
        keeper_id,
        __version__,
        PROTOCOL,
        cg.mode,
        # In cgroup2 too: a v1 hierarchy it could not use is a controller runs lack.
        f" ({'; '.join(cg.notes)})" if cg.notes else "",
        f", placement {spawner.placement()}" if cg.mode == "cgroup2" else "",
        f", controllers {' '.join(cg.controllers())}" if cg.controllers() else "",
        len(found.outcomes),
    )
    announce(f"READY {os.getpid()}")
    try:
        keeper.serve()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(SOCKET_FILE, dir_fd=home_fd)
        listener.close()
        journal.close(all_acked=not keeper.unacked)
        for box in keeper.to_remove:
            box.remove()
        for path in filter(None, [cg.v2_parent, *(g.parent for g in cg.v1.values())]):
            with contextlib.suppress(OSError):  # with `kept` if empty; never kills anything
                cgroups.remove_group(path)
        with contextlib.suppress(OSError):
            os.unlink(META_FILE, dir_fd=home_fd)
        with contextlib.suppress(OSError):
            os.unlink(PID_FILE, dir_fd=home_fd)
        log.info("Keeper stopped")
        keeper.close()  # last: a client that sees the connection end finds the files gone
        os.close(lock_fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pony_scheduler.keeper",
        description="The run keeper of one pony-scheduler home.",
    )
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--foreground", action="store_true")
    parser.add_argument(
        "--containment",
        choices=("auto", "cgroup2", "cgroup1", "pgroup"),
        default=os.environ.get(CONTAINMENT_VAR) or "auto",
    )
    parser.add_argument("--idle-exit", type=float, default=DEFAULT_IDLE_EXIT_S)
    args = parser.parse_args(argv)
    home = args.home.absolute()
    announce = Announcer(args.ready_fd)
    if not args.foreground and os.fork():
        os._exit(0)  # the intermediate: the client reaps it; the keeper is its child
    try:
        return serve(home, announce, args.foreground, args.containment, args.idle_exit)
    except (ContainmentError, OSError) as exc:
        reason = (
            str(exc)
            if isinstance(exc, ContainmentError)
            else f"{exc.filename or home}: {exc.strerror}"
        )
        log.error("Keeper failed to start: %s", reason)
        announce(f"FAILED {reason}")
        return 1
    except BaseException as exc:
        log.exception("Keeper failed")
        announce(f"FAILED {type(exc).__name__}: {exc}")
        raise
