"""Finding a run's processes without cgroups (the `pgroup` containment).

The keeper is a child subreaper (prctl(2) PR_SET_CHILD_SUBREAPER): a process of a run
whose parent exits is re-parented to the keeper, not to init, so every process any run
started stays below the keeper in the process tree - a `setsid` double fork included.
Walking that tree (/proc/PID/task/TID/children, proc(5)) therefore finds every process
of every run, cheaply: only our processes are read, never the whole /proc.

Which run a process belongs to: the run whose main process it descends from while that
process lives; once re-parented to the keeper, the run whose session or process group
it is in (each run is its own session, sid = pgid = the main's PID) or whose
PONYBUNNY_RUN_ID and PONYBUNNY_KEEPER_ID it carries in its environment (read only for
processes of our uid) - and its own descendants with it.  A process that left the
session, the group and the environment and whose ancestors are gone cannot be told
apart when several runs run at once; when only one run is held it is that run's
(nothing else lives below the keeper but its own sync helper).
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks since boot: with the PID, the identity of the process
    zombie: bool


def read_stat(pid: int) -> Proc | None:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 4096).decode(errors="replace")
        finally:
            os.close(fd)
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return Proc(
        pid,
        int(fields[1]),
        int(fields[2]),
        int(fields[3]),
        int(fields[19]),
        fields[0] in ("Z", "X"),
    )


def children(pid: int) -> list[int]:
    """Direct children of every thread of `pid` (CONFIG_PROC_CHILDREN)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        data = b""
        try:  # a seq_file: a page per read
            while chunk := os.read(fd, 1 << 16):
                data += chunk
        except OSError:
            pass
        finally:
            os.close(fd)
        found.extend(int(p) for p in data.split())
    return found


def children_supported() -> bool:
    me = os.getpid()
    return os.path.exists(f"/proc/{me}/task/{me}/children")


def descendants(root: int) -> list[Proc]:
    """Every live process below `root` (not `root` itself; zombies left out)."""
    found: dict[int, Proc] = {}
    todo = children(root)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        proc = read_stat(pid)
        if proc is None or proc.zombie:
            continue
        found[pid] = proc
        todo.extend(children(pid))
    return list(found.values())


def environ_marks(pid: int, uid: int) -> dict[bytes, bytes]:
    """PONYBUNNY_* variables in the environment of `pid` when it runs as `uid`."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != uid:
            return {}
        with open(f"/proc/{pid}/environ", "rb") as handle:
            data = handle.read()
    except OSError:
        return {}
    marks = {}
    for item in data.split(b"\0"):
        if item.startswith(b"PONYBUNNY_"):
            key, _, value = item.partition(b"=")
            marks[key] = value
    return marks


def owner(proc: Proc, sessions: dict[int, int], keeper_id: str, uid: int) -> int | None:
    """The run a process re-parented to the keeper belongs to: by its session, its
    process group, or the PONYBUNNY_RUN_ID/PONYBUNNY_KEEPER_ID in its environment (read
    only for processes of `uid`); None when none tells."""
    run = sessions.get(proc.sid, sessions.get(proc.pgid))
    if run is not None:
        return run
    marks = environ_marks(proc.pid, uid)
    if marks.get(b"PONYBUNNY_KEEPER_ID") == keeper_id.encode():
        return _run_mark(marks)
    return None


def signal_procs(procs: list[Proc], signum: int) -> int:
    """Signal each process through a pidfd after checking that the PID still names the
    process we found (same start time): a PID reused meanwhile is never hit."""
    sent = 0
    for proc in procs:
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:
            continue
        try:
            now = read_stat(proc.pid)
            if now is not None and now.start == proc.start:
                signal.pidfd_send_signal(fd, signum)
                sent += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return sent


def scan_marked(keeper_id: str, uid: int) -> list[tuple[Proc, int | None]]:
    """Processes of `uid` anywhere whose environment carries PONYBUNNY_KEEPER_ID =
    keeper_id, each with its PONYBUNNY_RUN_ID (None if unreadable): what a dead keeper's
    runs left behind.  Reads all of /proc: use once."""
    marker = keeper_id.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        marks = environ_marks(int(entry), uid)
        if marks.get(b"PONYBUNNY_KEEPER_ID") == marker:
            proc = read_stat(int(entry))
            if proc is not None and not proc.zombie:
                found.append((proc, _run_mark(marks)))
    return found


def _run_mark(marks: dict[bytes, bytes]) -> int | None:
    value = marks.get(b"PONYBUNNY_RUN_ID", b"")
    return int(value) if value.isdigit() else None


class PgroupBox:
    """One run without cgroups: its session/process group and marked environment, found
    by walking the keeper's subtree (procs.py).  Limits are refused before this exists."""

    kind = "pgroup"

    def __init__(self, tracker: Tracker, run_id: int) -> None:
        self.tracker = tracker
        self.run_id = run_id

    def members(self) -> list[Proc]:
        return self.tracker.members(self.run_id)

    def count(self) -> int:
        return len(self.members())

    def signal(self, signum: int, main_pid: int | None) -> None:
        rest = self.members()
        if main_pid is not None:  # unreaped, so its group id is still this run's
            with contextlib.suppress(OSError):
                os.killpg(main_pid, signum)
            rest = [p for p in rest if p.pgid != main_pid]
        signal_procs(rest, signum)


class Tracker:
    """Finds the processes of pgroup runs below the keeper (procs.py).  A run's members
    are computed at most once per loop pass; only the keeper's direct children, the
    run's own subtree and orphans are read, never other runs' subtrees."""

    def __init__(self, keeper_id: str) -> None:
        self.keeper_id = keeper_id
        self.uid = os.getuid()
        self.mains: dict[int, int] = {}  # unreaped main PID -> run id
        self.sessions: dict[int, int] = {}  # session id of each held run -> run id
        self.exclude: set[int] = set()  # the keeper's own helpers
        self.kept: set[int] = set()  # sessions of runs whose leftovers were kept
        self.kept_runs: set[int] = set()  # and those runs, by their environment marker
        self._cache: dict[int, list[Proc]] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    def members(self, run_id: int) -> list[Proc]:
        cached = self._cache.get(run_id)
        if cached is not None:
            return cached
        sole = next(iter(self.sessions.values())) if len(self.sessions) == 1 else None
        found: list[Proc] = []
        for pid in children(os.getpid()):
            if pid in self.exclude:
                continue
            if pid in self.mains:  # a live main: its subtree is its run's
                if self.mains[pid] == run_id:
                    found += descendants(pid)
                continue
            proc = read_stat(pid)
            if proc is None or proc.zombie or self._in_kept_session(proc):
                continue
            found_run = owner(proc, self.sessions, self.keeper_id, self.uid)
            if (found_run if found_run is not None else sole) == run_id:
                found.append(proc)
                found += descendants(pid)
        self._cache[run_id] = found
        return found

    def strays(self) -> list[Proc]:
        """Processes below the keeper that belong to no held run (asked only when none
        is held, so they are what ended runs left behind)."""
        found = []
        for pid in children(os.getpid()):
            if pid in self.exclude or pid in self.mains:
                continue
            proc = read_stat(pid)
            if proc is not None and not proc.zombie and not self._is_kept(proc):
                found.append(proc)
                found += descendants(pid)
        return found

    def _in_kept_session(self, proc: Proc) -> bool:
        """In a kept run's session or group, and not marked as another run's: a session
        id comes back once its PID is reused (review finding: a later run's leftovers
        in a session numbered as a kept one's were spared)."""
        if proc.sid not in self.kept and proc.pgid not in self.kept:
            return False
        run = _run_mark(environ_marks(proc.pid, self.uid))
        return run is None or run in self.kept_runs

    def _is_kept(self, proc: Proc) -> bool:
        """A leftover a run was told to keep: by its session or group, or - when it made
        a session of its own, perhaps after its run ended - by its run's marker."""
        if self._in_kept_session(proc):
            return True
        if not self.kept_runs:
            return False
        return owner(proc, {}, self.keeper_id, self.uid) in self.kept_runs
