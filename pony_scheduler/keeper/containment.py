"""What holds a run's processes together: a cgroup (v2, else v1) or, failing both, its
process group under the subreaper keeper (procs.py: PgroupBox, the same interface).

Choosing (`PONYBUNNY_CONTAINMENT`, or the keeper's --containment): `auto` takes cgroup2
when the keeper can make and enter a group in the unified hierarchy, else cgroup1 when it
can in a v1 hierarchy that counts processes (pids, freezer, cpuacct, memory, cpu), else
pgroup.  `cgroup2`, `cgroup1`, `pgroup` insist: the keeper refuses to start when the one
named is not possible, with the reason.

Limits come from the v2 controllers enabled for runs, else from the v1 controllers
mounted (this lets a hybrid machine limit memory through v1 while cgroup2 contains);
v1 groups are made for a run only when it asks for a limit they carry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from dataclasses import dataclass

from pony_scheduler.keeper import cgroups
from pony_scheduler.keeper.cgroups import Hierarchy, read_text, write_text
from pony_scheduler.keeper.protocol import Launch
from pony_scheduler.scheduler.host import host_id

LIMIT_CONTROLLER = {"memory_max": "memory", "tasks_max": "pids", "cpu_max": "cpu"}
KEPT_GROUP = "kept"  # where leftovers of runs with leftovers "keep" go on living


class ContainmentError(Exception):
    """The containment asked for cannot be had here; the message says why."""


@dataclass
class V1Group:
    hierarchy: Hierarchy
    parent: str  # HIERARCHY/<own>/pony-<home>
    own_fd: int  # the keeper's own cgroup.procs, kept open to move back cheaply


def home_group_name(home: str) -> str:
    """The cgroup of a home's runs, `pony-<hash>`: named by the home's real path and the
    host (machine id, boot, pid namespace: scheduler/host.py), so that a clone or a
    container with the same home path on a shared cgroup tree never takes another's
    runs for those of a keeper of its own that died.  A cgroup does not outlive a boot."""
    key = f"{host_id()}:{os.path.realpath(home)}"
    return "pony-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _probe(parent: str) -> str:
    """Make the parent, then a group in it, enter and leave it: '' or why not."""
    own_procs = os.path.join(os.path.dirname(parent), "cgroup.procs")
    probe = os.path.join(parent, f"probe-{os.getpid()}")
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(parent, 0o755)
        with contextlib.suppress(FileExistsError):
            os.mkdir(probe, 0o755)
        try:
            write_text(os.path.join(probe, "cgroup.procs"), "0")
        finally:
            write_text(own_procs, "0")
            os.rmdir(probe)
    except OSError as exc:
        return f"{exc.filename or parent}: {exc.strerror}"
    return ""


class Cgroups:
    """The keeper's view of the hierarchies, made once at start."""

    def __init__(self, home: str, want: str) -> None:
        self.name = home_group_name(home)
        self.mode = "pgroup"
        self.notes: list[str] = []
        self.v2_parent: str | None = None
        self.v2_mount: str | None = None
        self.v2_own_fd = -1
        self.v2_controllers: set[str] = set()
        self.v1: dict[str, V1Group] = {}  # controller -> its hierarchy's group
        self.tracker: V1Group | None = None
        if want == "pgroup":
            self.notes.append("pgroup asked for")
            return
        found = cgroups.discover()
        if want in ("auto", "cgroup2"):
            self._setup_v2([h for h in found if h.version == 2])
        self._setup_v1([h for h in found if h.version == 1])
        if self.v2_parent is not None:
            self.mode = "cgroup2"
        elif want in ("auto", "cgroup1") and self.tracker is not None:
            self.mode = "cgroup1"
        if want in ("cgroup2", "cgroup1") and self.mode != want:
            relevant = [note for note in self.notes if _about(note) == want]
            raise ContainmentError(
                f"containment {want} is not possible here: "
                + ("; ".join(relevant) or f"no {want} hierarchy")
            )

    def _setup_v2(self, found: list[Hierarchy]) -> None:
        if not found:
            self.notes.append("no cgroup2 mount")
            return
        own = found[0].own
        parent = os.path.join(own, self.name)
        why = _probe(parent)
        if why:
            self.notes.append(f"cgroup2: {why}")
            return
        self.v2_parent = parent
        self.v2_mount = found[0].mount_point
        self.v2_own_fd = os.open(os.path.join(own, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        available = (read_text(os.path.join(parent, "cgroup.controllers")) or "").split()
        for name in cgroups.V2_WANTED:
            if name in available:
                with contextlib.suppress(OSError):
                    write_text(os.path.join(parent, "cgroup.subtree_control"), f"+{name}")
        enabled = (read_text(os.path.join(parent, "cgroup.subtree_control")) or "").split()
        self.v2_controllers = set(enabled) & set(cgroups.V2_WANTED)

    def _setup_v1(self, found: list[Hierarchy]) -> None:
        for h in found:
            parent = os.path.join(h.own, self.name)
            why = _probe(parent)
            if why:
                self.notes.append(f"cgroup v1 {','.join(h.controllers)}: {why}")
                continue
            group = V1Group(
                h, parent, os.open(os.path.join(h.own, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
            )
            for controller in h.controllers:
                self.v1.setdefault(controller, group)
        for name in cgroups.TRACKERS_V1:
            if name in self.v1:
                self.tracker = self.v1[name]
                break

    def why(self) -> str:
        """Why the containment in force is not cgroup2, for status and the log ('' in
        cgroup2): the cgroup2 note, then for pgroup the first v1 one and how many more
        (the keeper's log has each)."""
        if self.mode == "cgroup2":
            return ""
        v2 = [note for note in self.notes if _about(note) != "cgroup1"]
        v1 = [note for note in self.notes if _about(note) == "cgroup1"]
        shown = v2 + (v1[:1] if self.mode == "pgroup" else [])
        more = len(v1) - 1 if self.mode == "pgroup" and len(v1) > 1 else 0
        rest = f" (and {more} more v1 hierarchies: see keeper.log)" if more else ""
        return "; ".join(shown) + rest

    def controllers(self) -> tuple[str, ...]:
        """Per-run controllers in force, e.g. ("memory:v1", "pids:v1", "cpu:v1")."""
        shown = []
        for name in ("memory", "pids", "cpu"):
            if name in self.v2_controllers:
                shown.append(f"{name}:v2")
            elif name in self.v1:
                shown.append(f"{name}:v1")
        return tuple(shown)

    def unenforceable(self, launch: Launch) -> str:
        """Why a limit of `launch` cannot be enforced here, or ''."""
        for limit in launch.limits:
            controller = LIMIT_CONTROLLER[limit]
            if self.mode == "pgroup" or (
                controller not in self.v2_controllers and controller not in self.v1
            ):
                return (
                    f"{limit} needs the {controller} controller (cgroup v2 or v1), which "
                    f"this keeper cannot use ({self.mode} containment)"
                )
        return ""

    def box(self, run_id: int, launch: Launch, name: str = "") -> CgroupBox:
        """The groups of run `run_id` (named run-ID, or `name`: spawner.probe's)."""
        groups: dict[str, V1Group] = {}
        for limit in launch.limits:
            controller = LIMIT_CONTROLLER[limit]
            if controller not in self.v2_controllers:
                groups[controller] = self.v1[controller]
        if launch.account_memory and "memory" not in self.v2_controllers and "memory" in self.v1:
            groups.setdefault("memory", self.v1["memory"])  # its peak, without a limit
        if self.mode == "cgroup1" and self.tracker is not None:
            groups.setdefault(self.tracker.hierarchy.controllers[0], self.tracker)
            # CPU time of every process of the run, not only the main's and the children
            # it waited for (rusage): an orphan's is in cpuacct.usage (review finding).
            if "cpuacct" in self.v1:
                groups.setdefault("cpuacct", self.v1["cpuacct"])
        return CgroupBox(self, name or f"run-{run_id}", launch, groups)

    def stale_groups(self, elsewhere: list[str]) -> list[str]:
        """Run groups an earlier keeper of this home left (it died with runs held), under
        this keeper's parents and under `elsewhere` (other_parents)."""
        parents = [self.v2_parent] if self.v2_parent else []
        parents += sorted({g.parent for g in self.v1.values()})
        parents += elsewhere
        found = []
        for parent in parents:
            with contextlib.suppress(OSError):
                found += [
                    e.path
                    for e in os.scandir(parent)
                    if e.is_dir(follow_symlinks=False) and e.name.startswith("run-")
                ]
        return found

    def other_parents(self) -> list[str]:
        """Groups named for this home (home_group_name) elsewhere in the hierarchies this
        keeper uses: where an earlier keeper made its runs' groups when it was started from
        another cgroup (a login session, then the systemd unit: review finding, a run's
        process that had cleared its environment outlived its `lost` record there).  Only
        groups this user made count (the owner of a cgroup directory is its creator; an
        unprivileged user can put only their own processes in a group anyway).  Walked
        once at start: a few hundred directories on a systemd host."""
        ours = {g.parent for g in self.v1.values()}
        roots = {g.hierarchy.mount_point for g in self.v1.values()}
        if self.v2_parent is not None and self.v2_mount is not None:
            ours.add(self.v2_parent)
            roots.add(self.v2_mount)
        found: list[str] = []
        for root in sorted(roots):
            found += _named_groups(root, self.name, ours)
        return found

    def kill_stale(self, path: str) -> int:
        """SIGKILL what lives in a stale group; returns how many processes were there."""
        count = len(cgroups.tree_pids(path))
        if os.path.exists(os.path.join(path, "cgroup.kill")):
            with contextlib.suppress(OSError):
                write_text(os.path.join(path, "cgroup.kill"), "1")
        else:
            cgroups.kill_listed(path, signal.SIGKILL)
        return count


class CgroupBox:
    """One run's groups: the v2 leaf (cgroup2 mode) plus the v1 groups it needs."""

    def __init__(self, cg: Cgroups, name: str, launch: Launch, v1: dict[str, V1Group]) -> None:
        self.cg = cg
        self.kind = cg.mode
        self.launch = launch
        self.v2 = (
            os.path.join(cg.v2_parent, name) if cg.mode == "cgroup2" and cg.v2_parent else None
        )
        unique = {id(g): g for g in v1.values()}
        self.v1 = {
            g.hierarchy.mount_point: (g, os.path.join(g.parent, name)) for g in unique.values()
        }
        tracker = cg.tracker if cg.mode == "cgroup1" else None
        self.track = self.v2 or (os.path.join(tracker.parent, name) if tracker else "")
        self.entered: list[int] = []  # own-procs fds to write ourselves back to
        # Set when count() found the run's one group empty by removing it: its stats,
        # read just before (the files go with the group).
        self.final: tuple[int | None, float | None, bool] | None = None

    def paths(self) -> list[str]:
        return ([self.v2] if self.v2 else []) + [path for _, path in self.v1.values()]

    def create(self) -> None:
        """mkdir the groups (a stale one of the same name is emptied first); OSError."""
        for path in self.paths():
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                self.cg.kill_stale(path)
                cgroups.remove_group(path)
                os.mkdir(path, 0o755)

    def enter(self, v2: bool = True) -> None:
        """Move the keeper into the run's groups (the spawn inherits them); v2=False:
        only its v1 groups (the v2 one is entered by clone3: spawner.py)."""
        if self.v2 and v2:
            write_text(os.path.join(self.v2, "cgroup.procs"), "0")
            self.entered.append(self.cg.v2_own_fd)
        for group, path in self.v1.values():
            write_text(os.path.join(path, "cgroup.procs"), "0")
            self.entered.append(group.own_fd)

    def leave(self) -> None:
        while self.entered:
            os.write(self.entered.pop(), b"0")

    def apply_limits(self) -> None:
        """Write the launch's limits: before the spawn where the keeper does not enter
        the run's groups, after it where it does (spawner.limits_first); OSError."""
        launch = self.launch
        v2 = self.cg.v2_controllers if self.v2 else set()
        if launch.memory_max is not None:
            if "memory" in v2:
                write_text(f"{self.v2}/memory.max", str(launch.memory_max))
            else:
                write_text(f"{self._v1('memory')}/memory.limit_in_bytes", str(launch.memory_max))
        if launch.tasks_max is not None:
            where = self.v2 if "pids" in v2 else self._v1("pids")
            write_text(f"{where}/pids.max", str(launch.tasks_max))
        if launch.cpu_max is not None:
            quota, period = cgroups.parse_cpu_max(launch.cpu_max)
            if "cpu" in v2:
                write_text(f"{self.v2}/cpu.max", f"{quota} {period}")
            else:
                path = self._v1("cpu")
                write_text(f"{path}/cpu.cfs_period_us", str(period))
                write_text(f"{path}/cpu.cfs_quota_us", str(quota))

    def _v1(self, controller: str) -> str:
        for group, path in self.v1.values():
            if controller in group.hierarchy.controllers:
                return path
        raise OSError(2, f"no v1 {controller} group", controller)

    def count(self) -> int:
        """Processes of the run, in its group and any sub-group it made.  A run with a
        v2 group alone is asked by removing it (_remove_if_empty); otherwise, in cgroup
        v2, one read of cgroup.events answers the usual case (nothing left)."""
        if not self.track:
            return 0
        if self.v2 and not self.v1:
            if self.final is not None or self._remove_if_empty():
                return 0
        elif self.v2 and cgroups.populated(self.v2) is False:
            return 0
        return len(cgroups.tree_pids(self.track))

    def _remove_if_empty(self) -> bool:
        """rmdir(2) refuses (EBUSY) a group that holds a process or a sub-group, so one
        call both asks whether the run has ended and removes its group - rather than
        opening, reading and closing cgroup.events, then removing it after the outcome
        (that open was the costlier half of the two).  Its stats are read first."""
        stats = self._read_stats()
        try:
            os.rmdir(self.v2 or "")
        except FileNotFoundError:
            pass
        except OSError:
            return False
        self.final = stats
        return True

    def watch_path(self) -> str | None:
        """cgroup.events, pollable for 'populated 0' (EPOLLPRI), in cgroup2 mode."""
        return f"{self.v2}/cgroup.events" if self.v2 else None

    def signal(self, signum: int, main_pid: int | None) -> None:
        """Signal every process of the run; SIGKILL through cgroup.kill when there is one."""
        if not self.track:
            return
        if signum == signal.SIGKILL and self.v2 and os.path.exists(f"{self.v2}/cgroup.kill"):
            with contextlib.suppress(OSError):
                write_text(f"{self.v2}/cgroup.kill", "1")
                return
        if main_pid is not None:  # our unreaped child: its PID cannot have been reused
            with contextlib.suppress(OSError):
                os.kill(main_pid, signum)
        cgroups.kill_listed(self.track, signum)

    def stats(self) -> tuple[int | None, float | None, bool]:
        """(peak memory bytes, CPU seconds, OOM-killed) as the groups know them."""
        return self.final if self.final is not None else self._read_stats()

    def _read_stats(self) -> tuple[int | None, float | None, bool]:
        peak = cpu = None
        oom = False
        if self.v2:
            cpu = cgroups.usage_seconds(cgroups.read_small(f"{self.v2}/cpu.stat") or b"")
            if "memory" in self.cg.v2_controllers:
                text = read_text(f"{self.v2}/memory.peak")
                peak = int(text) if text and text.strip().isdigit() else None
                oom = _counter(read_text(f"{self.v2}/memory.events"), "oom_kill") > 0
        for group, path in self.v1.values():
            controllers = group.hierarchy.controllers
            if "memory" in controllers and peak is None:
                text = read_text(f"{path}/memory.max_usage_in_bytes")
                peak = int(text) if text and text.strip().isdigit() else None
                oom = _counter(read_text(f"{path}/memory.oom_control"), "oom_kill") > 0
            if "cpuacct" in controllers and cpu is None:
                text = read_text(f"{path}/cpuacct.usage")
                cpu = int(text) / 1e9 if text and text.strip().isdigit() else None
        return peak, cpu, oom

    def remove(self) -> bool:
        """Remove the run's groups; False when something still lives in one."""
        if self.final is not None:
            return True  # count() removed its one group
        done = True
        for path in self.paths():
            done = cgroups.remove_group(path) and done
        return done

    def release(self) -> None:
        """Leftovers kept (policy keep): move them to pony-<home>/kept in each hierarchy,
        which the keeper never kills or limits, so that the run's groups can go."""
        for path in self.paths():
            kept = os.path.join(os.path.dirname(path), KEPT_GROUP)
            with contextlib.suppress(FileExistsError, OSError):
                os.mkdir(kept, 0o755)
            for _ in range(10):  # a process forking meanwhile leaves a child behind
                pids = cgroups.tree_pids(path)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        write_text(os.path.join(kept, "cgroup.procs"), str(pid))


def _named_groups(root: str, name: str, skip: set[str]) -> list[str]:
    """Directories called `name` below `root`, owned by this user, not in `skip`; their
    subtrees are not searched (a home's groups hold only its runs)."""
    found, pending, uid = [], [root], os.geteuid()
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False) or entry.path in skip:
                    continue
                if entry.name != name:
                    pending.append(entry.path)
                elif entry.stat(follow_symlinks=False).st_uid == uid:
                    found.append(entry.path)
    return sorted(found)


def _about(note: str) -> str:
    """Which containment a note of Cgroups.notes is about: cgroup2, cgroup1 or ''."""
    if note.startswith(("cgroup2", "no cgroup2")):
        return "cgroup2"
    return "cgroup1" if note.startswith("cgroup v1") else ""


def _counter(text: str | None, key: str) -> int:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0
