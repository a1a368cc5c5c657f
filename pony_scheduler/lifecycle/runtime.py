"""What a running service sees: its settings, stop/reload flags, a wake-up pipe, readiness.

Signal handlers only set flags.  The kernel-level wake-up fd (signal.set_wakeup_fd) makes
the work loop's select() return as soon as a signal arrives, so the loop can sleep for
as long as it likes without polling and still react at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pony_scheduler.config import Settings

log = logging.getLogger("pony_scheduler")

PIDFILE_CHECK_INTERVAL = 5.0  # seconds between checks that our pid file is still ours
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s"


class ServiceRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        title: str,
        log_path: Path | None,
        announce: Callable[[str], None],
        pid_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.title = title
        self.log_path = log_path  # None in the foreground: logs go to the terminal
        self.pid_path = pid_path
        self._watchdog: float | bool | None = False  # False: not read yet
        self.next_pid_check = 0.0
        self._announce = announce  # readiness channel: the start pipe or nothing
        self.stop_requests = 0  # 1 = orderly shutdown, 2+ = stop now
        # SIGUSR2: stop and leave running work to the next process of this service (the
        # scheduler's runs keep running under the run keeper); a later SIGTERM overrides.
        self.handing_over = False
        self.reopen_requested = False
        self.is_ready = False
        self.stop_on_corrupt_database = False  # set for the scheduler (ServiceSpec)
        self.failure: str | None = None  # why it stops on its own (exit status 1)
        # Made by install_wakeup(), after daemonizing: DaemonContext closes every other fd.
        self._wake_r = self._wake_w = -1

    # -- signal handlers: flags only --------------------------------------------------
    def on_stop_signal(self, signum: int, frame: object) -> None:
        self.stop_requests += 1
        self.handing_over = False

    def on_handover_signal(self, signum: int, frame: object) -> None:
        if not self.stop_requests:
            self.stop_requests = 1
            self.handing_over = True

    def on_hup_signal(self, signum: int, frame: object) -> None:
        self.reopen_requested = True

    def request_stop(self) -> None:
        """An orderly stop asked from inside (another thread: e.g. the database found
        corrupt), as if SIGTERM had arrived: set the flag and wake the loop."""
        if not self.stop_requests:
            self.stop_requests = 1
        if self._wake_w >= 0:
            self.wake()

    def signal_map(self) -> dict[int, object]:
        # None = ignore: SIGTSTP/SIGTTIN/SIGTTOU as python-daemon does by default.
        return {
            signal.SIGTERM: self.on_stop_signal,
            signal.SIGINT: self.on_stop_signal,
            signal.SIGHUP: self.on_hup_signal,
            signal.SIGUSR2: self.on_handover_signal,
            signal.SIGTSTP: None,
            signal.SIGTTIN: None,
            signal.SIGTTOU: None,
        }

    def install_wakeup(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    @property
    def stopping(self) -> bool:
        return self.stop_requests > 0

    @property
    def stop_now(self) -> bool:
        return self.stop_requests > 1

    # -- waiting ------------------------------------------------------------------------
    def wake(self) -> None:
        """Wake the loop from another thread (a finished job, a new event)."""
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._wake_w, b"w")

    def sleep(self, seconds: float, also: int | None = None) -> None:
        """Sleep until `seconds` pass, a signal arrives, wake() is called or the file
        descriptor `also` (the run keeper's connection) becomes readable."""
        if self.stop_requests and seconds > 0:
            seconds = 0
        seconds = min(seconds, max(0.0, self.next_pid_check - time.monotonic()))
        watched = [self._wake_r] if also is None else [self._wake_r, also]
        ready, _, _ = select.select(watched, [], [], max(seconds, 0))
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        self.handle_reopen()
        self.check_pidfile()

    def check_pidfile(self) -> None:
        """Stop in order when our pid file vanished or names another process: the home
        was removed, or someone broke the lock by hand.  Running on, unmanaged and
        invisible to `pb`, would be worse."""
        now = time.monotonic()
        if self.pid_path is None or now < self.next_pid_check or not self.is_ready:
            return
        self.next_pid_check = now + PIDFILE_CHECK_INTERVAL
        try:
            owner = self.pid_path.read_text().strip()
        except OSError:
            owner = ""
        if owner != str(os.getpid()) and not self.stop_requests:
            log.error(
                "Pid file %s was removed or now names %r, not us; shutting down",
                self.pid_path,
                owner or "nobody",
            )
            self.stop_requests = 1

    def update_metadata(self, **fields: Any) -> None:
        """Add or change facts in this service's metadata file (scheduler.json beside
        scheduler.pid), rewritten atomically, so that `pb … status` shows them without
        asking the daemon or the database.  A file that cannot be written is logged."""
        if self.pid_path is None:
            return
        from pony_scheduler.files import UnsafePath
        from pony_scheduler.lifecycle import pidfile

        path = self.pid_path.with_suffix(".json")
        meta = pidfile.read_meta(path)
        if meta is None or meta.get("pid") != os.getpid():
            return  # not ours (any more): the pid file check stops us soon
        try:
            pidfile.write_meta(path, {**meta, **fields})
        except (OSError, UnsafePath) as exc:
            log.warning("Could not update %s: %s", path, exc)

    # -- readiness ------------------------------------------------------------------------
    def ready(self) -> None:
        self.is_ready = True
        self._announce(f"READY {os.getpid()}")
        sd_notify("READY=1", f"STATUS={self.title} running", f"MAINPID={os.getpid()}")
        log.info("%s ready (PID %d)", self.title, os.getpid())

    def fail(self, reason: str) -> None:
        """Tell the waiting `pb` that start-up failed (the log has the details)."""
        self._announce(f"FAILED {reason}")

    def stopping_notice(self) -> None:
        sd_notify("STOPPING=1")

    def watchdog(self) -> None:
        sd_notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings, None when systemd asked for none.  The loop
        asks every iteration; the environment does not change under us."""
        if self._watchdog is False:
            self._watchdog = self._read_watchdog()
        return self._watchdog

    @staticmethod
    def _read_watchdog() -> float | None:
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or not usec.isdigit():
            return None
        watched = os.environ.get("WATCHDOG_PID")
        if watched and watched != str(os.getpid()):
            return None  # the watchdog is meant for another process
        return int(usec) / 2e6  # systemd suggests pinging at half the interval

    # -- logs ---------------------------------------------------------------------------
    def handle_reopen(self) -> None:
        if not self.reopen_requested:
            return
        self.reopen_requested = False
        if self.log_path is None:
            return
        from pony_scheduler.errors import PonyError

        try:
            reopen_log(self.log_path)
        except (OSError, PonyError) as exc:  # e.g. a link planted where the log was
            log.error("Could not reopen %s (%s); still writing to the old file", self.log_path, exc)
            return
        log.info("Reopened log file %s (SIGHUP)", self.log_path)


def open_log(path: Path) -> int:
    """A daemon's log file opened for appending (created 0640): never through a symbolic
    link, and refused unless it is ours and not writable by others (files.create_file)."""
    from pony_scheduler.files import SHARED_MODE, create_file

    return create_file(path.parent, path.name, SHARED_MODE, append=True)


def reopen_log(path: Path) -> None:
    """Point fds 1 and 2 at a fresh open of `path` (after logrotate renamed the old one)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fd = open_log(path)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


class EscapingFormatter(logging.Formatter):
    """Every record is one line: job names, commands, request paths and Host headers are
    chosen by others, and a raw newline in one would forge a log line, an escape sequence
    would reach the terminal of whoever reads the log (textsafe.for_log).  Tracebacks
    keep their line breaks; control characters in them are made visible."""

    def format(self, record: logging.LogRecord) -> str:
        from pony_scheduler.textsafe import for_log

        saved = record.msg, record.args
        record.msg, record.args = for_log(record.getMessage()), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved

    def formatException(self, ei: Any) -> str:
        from pony_scheduler.textsafe import for_terminal

        return for_terminal(super().formatException(ei))


def setup_logging(level: str) -> None:
    """Log to stderr: the log file in the background, the terminal in the foreground."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every migration context at INFO; only --debug wants that.
    logging.getLogger("alembic").setLevel(level if level == "DEBUG" else "WARNING")
    logging.Formatter.converter = time.localtime


def sd_notify(*lines: str) -> None:
    """Tell systemd about our state when it asked (Type=notify sets NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        log.warning("Could not notify systemd at %s: %s", address, exc)


# The runtime of this daemon process, for code far from it (the database engine) that
# must ask for an orderly stop; None in the CLI.
CURRENT: ServiceRuntime | None = None


def database_corrupt(message: str) -> None:
    """Log a corrupt database loudly; a daemon that needs it (the scheduler) stops in
    order, as on SIGTERM.  In the CLI (no runtime) the caller shows the error."""
    if CURRENT is None:
        return
    log.critical("%s", message)
    if CURRENT.stop_on_corrupt_database:
        log.critical("Stopping: the scheduler cannot work on a corrupt database")
        CURRENT.failure = message
        CURRENT.request_stop()
