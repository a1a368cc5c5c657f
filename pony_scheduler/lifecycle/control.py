"""start / stop for any service (status is lifecycle/status.py).  Knows nothing about
click: it returns results and reports progress through a `say` callback."""

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from pony_scheduler.config import Settings
from pony_scheduler.errors import (
    EXIT_FAILURE,
    EXIT_START_TIMEOUT,
    EXIT_UNKNOWN,
    PonyError,
)
from pony_scheduler.lifecycle import pidfile
from pony_scheduler.lifecycle.pidfile import PidInfo, PidState
from pony_scheduler.lifecycle.spec import ServiceSpec
from pony_scheduler.lifecycle.status import user_name
from pony_scheduler.waiting import pause

Say = Callable[[str], None]


class AlreadyRunning(PonyError):
    def __init__(self, spec: ServiceSpec, info: PidInfo) -> None:
        self.info = info
        super().__init__(f"{spec.title} is already running", EXIT_FAILURE)


class StartFailed(PonyError):
    def __init__(self, message: str, log_tail: list[str], exit_code: int = EXIT_FAILURE):
        self.log_tail = log_tail
        super().__init__(message, exit_code)


class StartResult(NamedTuple):  # not a dataclass: see lifecycle/spec.py
    pid: int
    meta: dict[str, Any]
    notes: list[str]


# ---------------------------------------------------------------------------- start
def _take_start_lock(spec: ServiceSpec, settings: Settings, timeout: float) -> int:
    """Serialise check-break-acquire between concurrent starts (the pid file alone can't:
    two starts that both find a stale file could each break the other's fresh lock)."""
    from pony_scheduler.files import PRIVATE_MODE, create_file

    fd = create_file(
        settings.home, spec.start_lock_path(settings.home).name, PRIVATE_MODE, exclusive=False
    )
    if _flock_within(fd, fcntl.LOCK_EX, timeout) is None:
        os.close(fd)
        raise PonyError(
            f"another start of the {spec.title.lower()} held "
            f"{spec.start_lock_path(settings.home)} for {timeout:g}s; try again",
            EXIT_START_TIMEOUT,
        )
    return fd


def _flock_within(fd: int, operation: int, timeout: float) -> bool | None:
    """flock(2) `operation` (LOCK_EX, LOCK_SH) on `fd`, tried until `timeout` seconds
    have passed: True when taken after waiting for another holder, False when taken at
    once, None when another still held it at the end."""
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return waited
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return None
            waited = True
            pause(0.02)


def _clear_the_way(
    spec: ServiceSpec, settings: Settings, *, force: bool, timeout: float, say: Say
) -> list[str]:
    """Under the start lock: refuse if running, stop it with --force, break stale locks."""
    info = pidfile.inspect(spec, settings.home)
    if info.state is PidState.RUNNING:
        if not force:
            raise AlreadyRunning(spec, info)
        spec.check_handover(settings)  # refused now, while the old one still runs
        terminate(spec, settings, info, timeout=timeout, say=say)
        info = pidfile.inspect(spec, settings.home)
    if info.state in (PidState.STALE, PidState.STARTING):
        # STARTING cannot be true while we hold the start lock: that empty file is debris.
        pidfile.remove_files(spec, settings.home)
        return [
            f"Removed stale pid file {spec.pid_path(settings.home)}: "
            f"{info.reason or 'the pid file is empty'}"
        ]
    return []


def start(
    spec: ServiceSpec,
    settings: Settings,
    *,
    timeout: float,
    force: bool = False,
    say: Say = lambda _: None,
) -> StartResult:
    """Start `spec` in the background and return once it is ready."""
    # Imported here, not at the top: it pulls in logging, which status and stop need not pay.
    from pony_scheduler.lifecycle.daemonize import daemon_child, require_writable_home

    require_writable_home(settings.home)
    if not force:  # fast path, no lock: the common "already running" answer
        info = pidfile.inspect(spec, settings.home)
        if info.state is PidState.RUNNING:
            raise AlreadyRunning(spec, info)
    spec.run_preflight(settings)  # bad input refused before the home is touched
    # From here a stop sees a start in progress and waits for it (_wait_for_a_start).
    lock_fd = _take_start_lock(spec, settings, timeout)
    try:
        notes = _clear_the_way(spec, settings, force=force, timeout=timeout, say=say)
        from pony_scheduler.lifecycle.logs import log_size

        log_start = log_size(spec.log_path(settings.home))  # this start's lines follow
        read_fd, write_fd = os.pipe()
        # Objects shared with the daemon after fork stay out of the collector's way, so
        # that `pb` exiting does not copy every shared page (as the gc docs advise).
        import gc  # here, as select and signal: `status` needs none of them

        gc.freeze()
        child = os.fork()
        if child == 0:
            os.close(read_fd)
            daemon_child(spec, settings, write_fd, lock_fd, notes)
        os.close(write_fd)
        try:
            # The spec's work beside the daemon's start-up (the scheduler's: starting its
            # run keeper, on the other core); what fails here the daemon meets and says.
            with contextlib.suppress(Exception):
                spec.run_beside(settings)
            verdict, detail = _await_ready(read_fd, child, timeout)
        finally:
            os.close(read_fd)
    finally:
        os.close(lock_fd)
    return _start_outcome(spec, settings, verdict, detail, timeout, notes, log_start)


def _await_ready(read_fd: int, child: int, timeout: float) -> tuple[str, str]:
    import select  # signal and select are imported where used: `status` needs neither

    deadline = time.monotonic() + timeout
    buffer = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "TIMEOUT", ""
            readable, _, _ = select.select([read_fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(read_fd, 4096)
            if not chunk:
                return "EOF", ""
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                verdict, _, detail = line.decode(errors="replace").partition(" ")
                if verdict in ("READY", "FAILED", "RUNNING"):
                    return verdict, detail
    finally:
        _reap(child)


def _reap(child: int) -> None:
    # The intermediate child exits right after DaemonContext's first fork.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            return
        pause(0.01)


def _start_outcome(
    spec: ServiceSpec,
    settings: Settings,
    verdict: str,
    detail: str,
    timeout: float,
    notes: list[str],
    log_start: int = 0,
) -> StartResult:
    """What a start came to; raises StartFailed with the log's lines of this start
    (from byte `log_start`) for context, AlreadyRunning."""
    from pony_scheduler.lifecycle.logs import tail_lines  # only here: status needs none
    from pony_scheduler.textsafe import for_log

    log_path = spec.log_path(settings.home)
    if verdict == "READY":
        pid = int(detail)
        meta = pidfile.read_meta(spec.meta_path(settings.home)) or {"pid": pid}
        return StartResult(pid=pid, meta=meta, notes=notes)
    if verdict == "RUNNING":
        raise AlreadyRunning(spec, pidfile.inspect(spec, settings.home))
    if verdict == "TIMEOUT":
        raise StartFailed(
            f"{spec.title} did not become ready within {timeout:g}s; it may still be "
            f"starting: check 'pb {spec.name} status' and 'pb {spec.name} logs'",
            tail_lines(log_path, 10, log_start),
            EXIT_START_TIMEOUT,
        )
    reason = detail or "the daemon exited during start-up"
    # The log's lines for context, less those that repeat the reason said above (review:
    # the reason twice, the keeper's four times).
    said = (detail, for_log(detail)) if detail else ()  # the log escapes what it writes
    context = [
        line
        for line in tail_lines(log_path, 10, log_start)
        if not any(text in line for text in said)
    ]
    raise StartFailed(f"{spec.title} failed to start: {reason}", context)


def start_foreground(
    spec: ServiceSpec, settings: Settings, *, force: bool, timeout: float, say: Say = lambda _: None
) -> int:
    from pony_scheduler.lifecycle.daemonize import require_writable_home, run_foreground

    require_writable_home(settings.home)
    spec.run_preflight(settings)  # bad input refused before the home is touched
    # From here a stop sees a start in progress and waits for it (_wait_for_a_start).
    lock_fd = _take_start_lock(spec, settings, timeout)
    try:
        notes = _clear_the_way(spec, settings, force=force, timeout=timeout, say=say)
    except BaseException:
        os.close(lock_fd)
        raise
    return run_foreground(spec, settings, lock_fd, notes)  # closes lock_fd once locked


# ---------------------------------------------------------------------------- stop
def _signal(spec: ServiceSpec, info: PidInfo, signum: int) -> None:
    """Send `signum` to a process that inspect() verified is ours."""
    assert info.pid is not None and info.state is PidState.RUNNING
    try:
        os.kill(info.pid, signum)
    except ProcessLookupError:
        pass  # it just exited
    except PermissionError:
        owner = user_name(info.owner_uid)
        raise PonyError(
            f"{spec.title} (PID {info.pid}) runs as {owner}; you may not signal "
            f"it: run this command as {owner} or root",
            EXIT_UNKNOWN,
        ) from None


def terminate(
    spec: ServiceSpec, settings: Settings, info: PidInfo, *, timeout: float, say: Say
) -> None:
    """What `start --force` and `restart` do to a running daemon: SIGUSR2 (hand over: the
    scheduler leaves its running runs to the run keeper and the next scheduler), wait,
    then SIGKILL (the runs survive that too)."""
    import signal

    assert info.pid is not None
    start_time = info.start_time  # the process inspect() verified, not a later reading
    say(f"Replacing {spec.title} (PID {info.pid})...")
    _signal(spec, info, signal.SIGUSR2)
    if not pidfile.wait_gone(info.pid, start_time, timeout):
        say(f"{spec.title} (PID {info.pid}) did not hand over within {timeout:g}s; sending SIGKILL")
        _signal(spec, info, signal.SIGKILL)
        pidfile.wait_gone(info.pid, start_time, 10)
    pidfile.remove_files(spec, settings.home)


class StopResult(NamedTuple):
    was_running: bool
    pid: int | None = None
    note: str = ""


def stop(
    spec: ServiceSpec, settings: Settings, *, timeout: float, force: bool, say: Say
) -> StopResult:
    import signal

    info = pidfile.inspect(spec, settings.home)
    if info.state is PidState.ABSENT and _wait_for_a_start(spec, settings, timeout):
        info = pidfile.inspect(spec, settings.home)  # what that start left
    if info.state is PidState.STARTING:
        info = _wait_started(spec, settings, timeout)
    if info.state is PidState.ABSENT:
        return StopResult(False)
    if info.state is PidState.STALE:
        note = _clean_stale(spec, settings, info)
        return StopResult(False, info.pid, note)
    assert info.pid is not None
    start_time = info.start_time  # the process inspect() verified, not a later reading
    if force:
        say(f"Killing {spec.title} (PID {info.pid})...")
        _signal(spec, info, signal.SIGKILL)
        pidfile.wait_gone(info.pid, start_time, timeout)
        pidfile.remove_files(spec, settings.home)
        return StopResult(True, info.pid)
    say(f"Stopping {spec.title} (PID {info.pid})...")
    _signal(spec, info, signal.SIGTERM)
    if not pidfile.wait_gone(info.pid, start_time, timeout):
        raise PonyError(
            f"{spec.title} (PID {info.pid}) is still running after {timeout:g}s; "
            f"wait longer (--timeout) or use 'pb {spec.name} stop --force'"
        )
    return StopResult(True, info.pid)


def _wait_for_a_start(spec: ServiceSpec, settings: Settings, timeout: float) -> bool:
    """A stop that finds no pid file while a start holds the start lock (it has not taken
    the pid file yet): wait up to `timeout` for that start to take it or fail, as
    pg_ctl's stop finds a starting server (review finding: the stop said "not running"
    and the daemon came up after it).  Returns whether a start was in progress; raises
    PonyError when it still is at the deadline."""
    try:
        fd = os.open(
            spec.start_lock_path(settings.home), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
    except OSError:
        return False  # no start ever ran here, or not ours to read: nothing to wait for
    try:
        waited = _flock_within(fd, fcntl.LOCK_SH, timeout)  # released at close
    finally:
        os.close(fd)
    if waited is None:
        raise PonyError(
            f"a start of the {spec.title.lower()} is still in progress after {timeout:g}s; "
            "wait longer (--timeout) or stop it once it has started"
        )
    return waited


def _wait_started(spec: ServiceSpec, settings: Settings, timeout: float) -> PidInfo:
    deadline = time.monotonic() + timeout
    info = pidfile.inspect(spec, settings.home)
    while info.state is PidState.STARTING and time.monotonic() < deadline:
        pause(0.05)
        info = pidfile.inspect(spec, settings.home)
    return info


def _clean_stale(spec: ServiceSpec, settings: Settings, info: PidInfo) -> str:
    """Remove a stale pid file unless a start is busy with it right now."""
    if pidfile.start_lock_held(spec, settings.home):
        return ""
    pidfile.remove_files(spec, settings.home)
    return f"removed stale pid file ({info.reason})"
