"""Control groups for runs: finding the hierarchies, and one group per run.

Discovery reads /proc/self/mountinfo (proc(5)) and /proc/self/cgroup (cgroups(7)), never
fixed paths: a cgroup2 mount gives the unified hierarchy, `cgroup` mounts give v1
hierarchies named by their controllers in the super options ("rw,memory",
"rw,cpu,cpuacct").  A hierarchy is usable when the keeper's own group in it is reachable
through the mount (its path lies under the mount's root).

Layout: runs live under a per-home parent `pony-<hash of the home>` made inside the
keeper's own group of each hierarchy (on this machine: /sys/fs/cgroup/unified/pony-…,
/sys/fs/cgroup/memory/<our group>/pony-…), one leaf `run-<id>` per run, removed after its
outcome: never reused, since a job may change its own group (cgroup.freeze, sub-groups).
In cgroup v2 the parent holds no process, so controllers can be enabled in its
subtree_control (the no-internal-processes rule, cgroup-v2.rst §2-4-3); the keeper never
writes the subtree_control of a group it did not make.

Placement is race-free (spawner.py): the job's process is created in its cgroup2 group
by clone3(CLONE_INTO_CGROUP) where the C part is built, else the single-threaded keeper
writes itself into the run's groups (cgroup.procs), spawns the job with posix_spawn
(which inherits them), and writes itself back; either way the job's first instruction
already runs inside its groups.  Where the keeper does not enter them (clone3), the
limits are written before the spawn; where it does, right after it, once the keeper is
out again (a memory.max or pids.max written before would apply to the keeper itself
while inside).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from dataclasses import dataclass

V1_WANTED = ("memory", "pids", "cpu", "cpuacct", "freezer")
V2_WANTED = ("memory", "pids", "cpu")
TRACKERS_V1 = ("pids", "freezer", "cpuacct", "memory", "cpu")  # v1 groups that count processes


@dataclass(frozen=True)
class Mount:
    mount_point: str
    root: str  # the directory of the hierarchy mounted there ("/" or a subtree)
    fstype: str
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class Hierarchy:
    """One hierarchy and where the keeper's group is in the filesystem."""

    version: int  # 1 or 2
    controllers: tuple[str, ...]  # v1: from the mount options; v2: from cgroup.controllers
    mount_point: str
    own: str  # the keeper's own group, as a filesystem path


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo (proc(5))."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """cgroup and cgroup2 mounts of a /proc/PID/mountinfo text; pure."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            Mount(_unescape(fields[4]), _unescape(fields[3]), tail[0], tuple(tail[2].split(",")))
        )
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup -> {"": v2 path, "memory": path, "cpu,cpuacct": path, ...}; pure."""
    groups = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            groups[parts[1]] = parts[2]
    return groups


def _fs_path(mount: Mount, group: str) -> str | None:
    """The directory of `group` under `mount`, or None when the mount does not show it."""
    root = mount.root.rstrip("/")
    if group != root and not group.startswith(root + "/"):
        return None
    rest = group[len(root) :].lstrip("/")
    return os.path.join(mount.mount_point, rest) if rest else mount.mount_point


def find_hierarchies(mountinfo: str, proc_cgroup: str) -> list[Hierarchy]:
    """The usable hierarchies for the process these two texts describe (pure but for
    nothing: v2 controllers are filled in by the caller, which can read files)."""
    groups = parse_proc_cgroup(proc_cgroup)
    found: list[Hierarchy] = []
    seen_v1: set[str] = set()
    for mount in parse_mountinfo(mountinfo):
        if mount.fstype == "cgroup2":
            if "" in groups and not any(h.version == 2 for h in found):
                path = _fs_path(mount, groups[""])
                if path is not None:
                    found.append(Hierarchy(2, (), mount.mount_point, path))
            continue
        controllers = tuple(o for o in mount.super_options if o in V1_WANTED)
        if not controllers or controllers[0] in seen_v1:
            continue
        key = next((k for k in groups if k and set(k.split(",")) >= set(controllers)), None)
        if key is None:
            continue
        path = _fs_path(mount, groups[key])
        if path is not None:
            seen_v1.update(controllers)
            found.append(Hierarchy(1, controllers, mount.mount_point, path))
    return found


def discover() -> list[Hierarchy]:
    """The hierarchies of this process, v2 controllers read from cgroup.controllers."""
    try:
        with open("/proc/self/mountinfo") as f1, open("/proc/self/cgroup") as f2:
            found = find_hierarchies(f1.read(), f2.read())
    except OSError:
        return []
    result = []
    for h in found:
        if h.version == 2:
            text = read_text(os.path.join(h.own, "cgroup.controllers")) or ""
            h = Hierarchy(2, tuple(text.split()), h.mount_point, h.own)
        result.append(h)
    return result


def read_text(path: str) -> str | None:
    """The whole file, or None.  cgroup files are seq_files that give at most a page per
    read(2): a cgroup.procs of 1,000 processes takes two."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def read_small(path: str) -> bytes | None:
    """A cgroup file far shorter than a page (cgroup.events, cpu.stat), in one read(2):
    read_text's second read, only to see the end, was a syscall per file per run.
    None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def usage_seconds(cpu_stat: bytes) -> float | None:
    """CPU seconds from a v2 cpu.stat's `usage_usec` line (its first), or None."""
    for line in cpu_stat.split(b"\n"):
        if line.startswith(b"usage_usec "):
            value = line[11:].strip()
            return int(value) / 1e6 if value.isdigit() else None
    return None


def write_text(path: str, text: str) -> None:
    """Write a cgroup file in one write(2); raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_pids(group: str) -> list[int]:
    text = read_text(os.path.join(group, "cgroup.procs"))
    return [int(p) for p in text.split()] if text else []


def tree_pids(group: str) -> list[int]:
    """The processes of `group` and of every group below it: a job owns its group's
    files, so it may make sub-groups and move processes into them (cgroups(7)); they
    are still the run's."""
    pids = read_pids(group)
    with contextlib.suppress(OSError):
        for entry in os.scandir(group):
            if entry.is_dir(follow_symlinks=False):
                pids += tree_pids(entry.path)
    return pids


def populated(group: str) -> bool | None:
    """cgroup v2's cgroup.events `populated` (this group or any below it has a process);
    None where there is no such file (v1)."""
    data = read_small(group + "/cgroup.events")
    if data is None:
        return None
    return b"populated 0" not in data


def kill_listed(group: str, signum: int) -> int:
    """Send `signum` to every process in `group` and the groups below it, each through a
    pidfd taken while it was listed there: a PID that ended and was reused between the
    listing and the signal is never hit (the second listing proves the pidfd is the
    process we saw in the group).  Returns how many were signalled."""
    fds = {}
    for pid in tree_pids(group):
        with contextlib.suppress(OSError):
            fds[pid] = os.pidfd_open(pid)
    try:
        members = set(tree_pids(group))
        sent = 0
        for pid, fd in fds.items():
            if pid in members:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signum)
                    sent += 1
        return sent
    finally:
        for fd in fds.values():
            os.close(fd)


def remove_group(path: str) -> bool:
    """rmdir a group, its sub-groups first if it has any; False when something still
    lives in it.  Never kills anything."""
    try:
        os.rmdir(path)  # a run's leaf: one call
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                remove_group(entry.path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


def parse_cpu_max(cpus: float, period_us: int = 100_000) -> tuple[int, int]:
    """CPUs -> (quota µs, period µs) as cpu.max and cfs_quota_us take them (at least
    1000 µs: the kernel's minimum quota)."""
    return max(1000, round(cpus * period_us)), period_us
