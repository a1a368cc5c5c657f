"""Starting a run's main process, inside its cgroup from its first instruction.

Where the C part is built and the kernel has clone3 with CLONE_INTO_CGROUP (Linux 5.7),
a cgroup2 run's process is created directly in its group (_spawn.c), and writes itself
into its cgroup v1 groups (a v1 memory or pids group on a hybrid machine, every group in
cgroup1 mode) before its exec: the keeper never moves, so the run's limits are written
before the spawn and hold from the job's first instruction (limits_first).  Otherwise
the keeper writes itself into the run's groups, calls posix_spawn(3) (vfork+exec in
glibc: no Python in the child), and writes itself back - race-free too, since the keeper
is single-threaded, but each move waits for an RCU grace period (about 7 ms on an idle
host; cgroup-v2.rst, "favordynmods"), and the limits can only be written after the spawn
(before, they would hold the keeper itself while inside): a job that forks in its first
microseconds can exceed --tasks-max there (README, "How a job runs").

Either way the child starts in a new session, with stdin from /dev/null, stdout and
stderr on the run's pipe, an empty signal mask, and the signals the keeper ignores or
catches at their defaults; its umask and working directory are the caller's.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import sys
from types import ModuleType

from pony_scheduler.keeper.containment import CgroupBox, Cgroups
from pony_scheduler.keeper.procs import PgroupBox
from pony_scheduler.keeper.protocol import Launch

IGNORED = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
_IGNORED_NUMBERS = tuple(int(sig) for sig in IGNORED)  # as the C part takes them
# clone3's answers about the run's group (the old path would meet them too) and about
# making any process now; any other (ENOSYS, EINVAL, E2BIG, or EPERM from a seccomp
# filter that predates clone3, as older container runtimes install) means clone3 cannot
# be used here: fall back to moving, for good.
_GROUP = (errno.EBUSY, errno.EOPNOTSUPP, errno.EACCES, errno.ENOENT, errno.ENODEV)
_RESOURCES = (errno.EAGAIN, errno.ENOMEM)
# os.fsencode's encoding, for argv and the environment
_FS = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("pony_scheduler.keeper._spawn")
    except ImportError:  # not built (no compiler, not Linux): posix_spawn and moves
        return None


_native = _load()


class PlacementError(Exception):
    """The run's process cannot be put in its cgroup; str(): the reason (strerror)."""


def placement() -> str:
    """How cgroup2 runs are placed: "clone3" or "move" (for status and the log)."""
    return "clone3" if _native is not None else "move"


def probe(cg: Cgroups) -> None:
    """At the keeper's start: whether clone3 starts a process here, by starting `true`
    once as a run is started (_into_group), in a group of its own; if it cannot (a
    seccomp filter, as container runtimes and systemd's RestrictNamespaces= install, or
    a kernel before 5.7), runs are placed by moving from the first one on, and their
    limits follow the spawn (limits_first): found at a run's start, after its limits
    were written, the keeper would have entered groups already limited."""
    program = next((p for p in ("/bin/true", "/usr/bin/true") if os.path.exists(p)), None)
    if _native is None or cg.mode == "pgroup" or program is None:
        return
    # Not run-N: a dead keeper's run groups are judged after this (daemon._cleanup_stale).
    box = cg.box(1, Launch(1, ("true",), os.devnull, env={}), name="probe")
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        box.create()
        pid = _into_group(program, ("true",), {}, devnull, devnull, box)
        if pid is not None:
            os.waitpid(pid, 0)
    except (OSError, PlacementError):
        pass  # the group's or the machine's answer, not clone3's: it stays in use
    finally:
        os.close(devnull)
        box.remove()


def limits_first(box: CgroupBox | PgroupBox) -> bool:
    """Whether a run in `box` is spawned without the keeper entering its groups, so that
    its limits can be written before the spawn (CgroupBox.apply_limits)."""
    return isinstance(box, CgroupBox) and _native is not None


def start(
    program: str,
    argv: tuple[str, ...],
    env: dict[str, str],
    stdin: int,
    out: int,
    box: CgroupBox | PgroupBox,
) -> int:
    """Start `program` for a run held in `box`; returns its pid.  Raises PlacementError,
    or OSError when the program cannot be executed (ENOENT, EACCES, ENOEXEC, ...)."""
    if isinstance(box, CgroupBox) and _native is not None:
        pid = _into_group(program, argv, env, stdin, out, box)
        if pid is not None:
            return pid
        if box.launch.limits:
            # Its limits are in force already (limits_first): entering its groups now would
            # put the keeper under them (review finding: OOM-killed).  probe() at start
            # makes this all but impossible; the next run is placed by moving.
            raise PlacementError("clone3 was refused at this run's start; start it again")
    if not isinstance(box, CgroupBox):
        return _posix_spawn(program, argv, env, stdin, out)
    try:
        box.enter()
    except OSError as exc:
        raise PlacementError(exc.strerror or str(exc)) from None
    try:
        return _posix_spawn(program, argv, env, stdin, out)
    finally:
        box.leave()


def _posix_spawn(program: str, argv: tuple[str, ...], env: dict[str, str], i: int, o: int) -> int:
    return os.posix_spawn(
        program,
        argv,
        env,
        setsid=True,
        setsigdef=IGNORED,
        setsigmask=(),
        file_actions=[
            (os.POSIX_SPAWN_DUP2, i, 0),
            (os.POSIX_SPAWN_DUP2, o, 1),
            (os.POSIX_SPAWN_DUP2, o, 2),
        ],
    )


def _into_group(
    program: str,
    argv: tuple[str, ...],
    env: dict[str, str],
    stdin: int,
    out: int,
    box: CgroupBox,
) -> int | None:
    """clone3 into the box's v2 group, the child joining its v1 groups itself; None when
    this kernel cannot, after which every run is placed by moving."""
    global _native
    assert _native is not None
    group, joins = -1, []  # the v2 group (O_PATH), the v1 groups' cgroup.procs
    try:
        if box.v2:
            group = os.open(box.v2, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for _, path in box.v1.values():
            joins.append(os.open(f"{path}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
    except OSError as exc:
        _close(group, *joins)
        raise PlacementError(exc.strerror or str(exc)) from None
    try:
        return int(
            _native.spawn(
                program.encode(_FS, _FS_ERRORS),  # as os.fsencode, without 8 calls a run
                [arg.encode(_FS, _FS_ERRORS) for arg in argv],
                [f"{key}={value}".encode(_FS, _FS_ERRORS) for key, value in env.items()],
                group,
                stdin,
                out,
                _IGNORED_NUMBERS,
                tuple(joins),
            )
        )
    except OSError as exc:
        if exc.filename == "cgroup.procs":  # a v1 group refused the child
            raise PlacementError(exc.strerror or str(exc)) from None
        if exc.filename is not None or exc.errno in _RESOURCES:
            raise  # the exec failed, or no process can be made: not the placement's fault
        if exc.errno in _GROUP:
            raise PlacementError(exc.strerror or str(exc)) from None
        _native = None  # clone3 itself is refused here
        logging.getLogger("pony_scheduler.keeper").warning(
            "clone3 into a cgroup is not possible here (%s): runs are placed by moving "
            "the keeper into their group from now on",
            exc.strerror,
        )
        return None
    finally:
        _close(group, *joins)


def _close(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)
