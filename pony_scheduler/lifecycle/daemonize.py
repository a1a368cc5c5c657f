"""Becoming a daemon, and telling the `pb` that started us whether we made it.

`DaemonContext.open()` exits the original process with status 0 before the pid file is
even locked, so on its own the caller can never learn that a start failed.  `pb` therefore
forks once and keeps the read end of a pipe; the child enters the DaemonContext with the
write end preserved and, once the service is really serving, writes `READY <pid>` (or
`FAILED <reason>`, or `RUNNING <pid>` when it lost the race for the pid file).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pony_scheduler import __version__
from pony_scheduler.config import Settings
from pony_scheduler.errors import PonyError
from pony_scheduler.lifecycle import pidfile
from pony_scheduler.lifecycle.runtime import ServiceRuntime, open_log, setup_logging
from pony_scheduler.lifecycle.spec import ServiceSpec

log = logging.getLogger("pony_scheduler")


def describe_error(exc: BaseException) -> str:
    """One line for users; the full traceback goes to the log."""
    if isinstance(exc, PonyError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Announcer:
    """The write end of the readiness pipe; silent once closed or when there is none."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __call__(self, line: str) -> None:
        if self.fd is None:
            return
        # OSError: `pb` gave up waiting; the log still says everything.
        with contextlib.suppress(OSError):
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
        if not line.startswith("NOTE "):
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def metadata(spec: ServiceSpec, settings: Settings, mode: str) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "service": spec.name,
        "pid": pid,
        "startedAt": int(time.time() * 1000),
        "mode": mode,
        "version": __version__,
        "home": str(settings.home),
        "logPath": str(spec.log_path(settings.home)) if mode == "background" else None,
        **spec.extra_metadata(settings),
        **pidfile.identity(pid),
    }


def serve(
    spec: ServiceSpec,
    settings: Settings,
    runtime: ServiceRuntime,
    lock_fd: int,
    mode: str,
    notes: list[str],
) -> None:
    """Common to both modes, once the pid file is ours: metadata, unlock, run."""
    for note in notes:
        log.warning("%s", note)
    log.info(
        "Starting %s %s (PID %d, %s, home %s)",
        spec.title,
        __version__,
        os.getpid(),
        mode,
        settings.home,
    )
    pidfile.write_meta(spec.meta_path(settings.home), metadata(spec, settings, mode))
    # From here other `pb` commands can recognise us, so concurrent starts may proceed.
    fcntl.flock(lock_fd, fcntl.LOCK_UN)
    os.close(lock_fd)
    runtime.install_wakeup()
    runtime.stop_on_corrupt_database = spec.stops_on_corrupt_database
    from pony_scheduler.lifecycle import runtime as runtime_module

    runtime_module.CURRENT = runtime
    spec.run(runtime)


def _finish(
    spec: ServiceSpec, settings: Settings, runtime: ServiceRuntime, exc: BaseException | None
) -> int:
    if exc is not None:
        reason = describe_error(exc)
        if not runtime.is_ready:
            runtime.fail(reason)
        if isinstance(exc, PonyError):
            log.error("%s", reason)
        else:
            log.error("%s failed: %s", spec.title, reason, exc_info=exc)
    with contextlib.suppress(FileNotFoundError):
        spec.meta_path(settings.home).unlink()
    status = 1 if exc is not None or runtime.failure is not None else 0
    log.info("%s stopped (exit status %d)", spec.title, status)
    return status


def _pid_file_failed(path: Path, error: Exception) -> PonyError:
    """lockfile's LockFailed ("failed to create PATH") drops why (its OSError is the
    context: ENOSPC on a full disk, EROFS, EACCES) and leaves the file it created empty
    when the write failed (review finding: status then said "stale pid file").  Under
    the start lock an empty pid file is this start's own: removed."""
    why = error.__context__
    reason = why.strerror if isinstance(why, OSError) and why.strerror else str(error)
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()
    return PonyError(f"cannot write the pid file {path}: {reason}")


def daemon_child(
    spec: ServiceSpec, settings: Settings, write_fd: int, lock_fd: int, notes: list[str]
) -> None:
    """Runs in the process `pb` forked; never returns."""
    import daemon
    import daemon.pidfile
    from lockfile import AlreadyLocked, LockFailed, LockTimeout

    announce = Announcer(write_fd)
    runtime = ServiceRuntime(
        settings,
        title=spec.title,
        log_path=spec.log_path(settings.home),
        announce=announce,
        pid_path=spec.pid_path(settings.home),
    )
    status = 1
    try:
        # A plain file, not a logging handler: DaemonContext dup2()s it onto fds 1 and 2.
        log_file = os.fdopen(open_log(spec.log_path(settings.home)), "a", buffering=1)
        context = daemon.DaemonContext(
            detach_process=True,
            files_preserve=[write_fd, lock_fd],
            umask=0o027,
            working_directory=str(settings.home),
            pidfile=daemon.pidfile.TimeoutPIDLockFile(str(spec.pid_path(settings.home)), 0),
            stdout=log_file,
            stderr=log_file,
            signal_map=runtime.signal_map(),
        )
        try:
            context.open()
        except (AlreadyLocked, LockTimeout):
            info = pidfile.inspect(spec, settings.home)
            announce(f"RUNNING {info.pid or ''}")
            os._exit(1)
        except LockFailed as error:
            raise _pid_file_failed(spec.pid_path(settings.home), error) from None
        setup_logging(settings.log_level)
        exc: BaseException | None = None
        try:
            serve(spec, settings, runtime, lock_fd, "background", notes)
        except BaseException as error:
            exc = error
        status = _finish(spec, settings, runtime, exc)
        with contextlib.suppress(Exception):
            context.close()  # releases (removes) the pid file
    except BaseException as error:
        announce(f"FAILED {describe_error(error)}")
    finally:
        os._exit(status)


def run_foreground(spec: ServiceSpec, settings: Settings, lock_fd: int, notes: list[str]) -> int:
    """`start --foreground`: same pid file, signals and shutdown, no detaching."""
    import daemon.pidfile
    from lockfile import AlreadyLocked

    runtime = ServiceRuntime(
        settings,
        title=spec.title,
        log_path=None,
        announce=lambda _: None,
        pid_path=spec.pid_path(settings.home),
    )
    lock = daemon.pidfile.TimeoutPIDLockFile(str(spec.pid_path(settings.home)), 0)
    # The same umask as the background daemon, before the pid file is made, so that it
    # gets the same mode (0640).
    os.umask(0o027)
    try:
        lock.acquire()
    except AlreadyLocked:
        raise PonyError(f"{spec.title} is already running") from None
    handlers: dict[int, Callable[..., Any]] = {
        signal.SIGTERM: runtime.on_stop_signal,
        signal.SIGINT: runtime.on_stop_signal,
        signal.SIGHUP: runtime.on_hup_signal,
    }
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    # The same working directory as the background daemon, so that relative paths of jobs
    # do not depend on how it was started.
    os.chdir(settings.home)
    setup_logging(settings.log_level)
    exc: BaseException | None = None
    try:
        serve(spec, settings, runtime, lock_fd, "foreground", notes)
    except BaseException as error:
        exc = error
    status = _finish(spec, settings, runtime, exc)
    with contextlib.suppress(Exception):
        lock.release()
    return status


def ensure_home(home: Path) -> None:
    """Create the home (0700) or explain in one line why it cannot be used: it, the files in
    it and the directories above it must pass the StrictModes check (files.check_home).
    A home that exists need not be writable: read-only commands work on a read-only home."""
    from pony_scheduler.files import check_home, make_home

    try:
        make_home(home)
    except FileNotFoundError:
        raise PonyError(
            f"cannot create home {home}: its parent directory does not exist; "
            "create it or set PONYBUNNY_HOME"
        ) from None
    except NotADirectoryError:
        raise PonyError(
            f"cannot create home {home}: a component of its path is not a "
            "directory; set PONYBUNNY_HOME to a directory"
        ) from None
    except OSError as exc:
        raise PonyError(
            f"cannot create home {home}: {exc.strerror}; set PONYBUNNY_HOME to a writable directory"
        ) from None
    if not home.is_dir():
        raise PonyError(
            f"home {home} exists but is not a directory; set PONYBUNNY_HOME to a directory"
        )
    check_home(home)


def require_writable_home(home: Path) -> None:
    """What starting a daemon needs beyond ensure_home: a home it can write to."""
    ensure_home(home)
    if not os.access(home, os.W_OK):
        reason = "read-only file system" if _read_only_fs(home) else "permission denied"
        raise PonyError(
            f"home {home} is not writable: {reason}; fix its permissions or set PONYBUNNY_HOME"
        )


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
