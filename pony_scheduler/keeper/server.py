"""The keeper's loop: one thread, one epoll.

Each pass waits for the socket, the runs' output pipes, their cgroup.events (EPOLLPRI),
the signal wake-up pipe and the journal's sync helper, or for the nearest timer (a
timeout, a SIGKILL after the grace, a drain's end, a journal retry, the idle exit).
SIGCHLD arrives through the wake-up pipe (signal.set_wakeup_fd): every exited child is
reaped with wait4(2), which also gives the main process's resource use.  The keeper is
a child subreaper, so it reaps the orphans of its runs too.

At the end of a pass its messages are sent and its journal lines written with one
write; the sync helper makes them durable in batches (group commit, commit.py) and says
when.  Outcomes go to the scheduler at once.

Lifetime: the keeper runs while it holds runs, has outcomes not yet durable in the
journal, or has a connection; when none of these is true for `idle_exit` seconds (the
scheduler was kill -9'd and its runs have ended, say) it exits.  After `exit` it leaves
as soon as no run is held and its outcomes are durable.  SIGTERM/SIGINT = drain now
(stop every run, record them as stopped) and exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from typing import Any

from pony_scheduler.keeper import conns
from pony_scheduler.keeper.commit import COMPACT_BYTES, JOURNAL_RETRY_S, Journal
from pony_scheduler.keeper.containment import Cgroups
from pony_scheduler.keeper.dbtag import DatabaseTag
from pony_scheduler.keeper.procs import Tracker
from pony_scheduler.keeper.protocol import (
    LOG_FILE,
    LeaseTerms,
    Outcome,
    iso_utc,
)
from pony_scheduler.keeper.renewal import Renewals
from pony_scheduler.keeper.runbook import RunBook
from pony_scheduler.keeper.runs import Run

STRAY_CHECK_S = 1.0


class Keeper(RunBook):
    def __init__(
        self,
        home: str,
        home_fd: int,
        keeper_id: str,
        cg: Cgroups,
        journal: Journal,
        listener: socket.socket,
        wakeup: int,
        idle_exit: float,
        pending: list[Outcome],
        log: logging.Logger,
        log_to_file: bool,
        dbtag: DatabaseTag,
    ) -> None:
        self.home = home
        self.dbtag = dbtag  # which database its runs and outcomes belong to (dbtag.py)
        self.home_fd = home_fd
        self.keeper_id = keeper_id
        self.cg = cg
        self.journal = journal
        self.listener = listener
        self.wakeup = wakeup
        self.idle_exit = idle_exit
        self.log = log
        self.log_to_file = log_to_file
        self.started_at = iso_utc(time.time())
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.umask = os.umask(0o027)
        os.umask(self.umask)
        self.epoll = select.epoll()
        self.handlers: dict[int, Any] = {}
        self.runs: dict[int, Run] = {}
        self.by_pid: dict[int, Run] = {}
        self.unacked: dict[str, Outcome] = {o.id: o for o in pending}
        self.unacked_runs = {o.run_id for o in pending}
        self.tracker = Tracker(keeper_id)
        self.renewals = Renewals(self)  # leases, while no scheduler is connected
        self.conns: dict[int, conns.Conn] = {}
        self.scheduler: conns.Conn | None = None
        # Schedulers whose first keeper this is, oldest first (insertion-ordered set).
        self.sole_keeper_of: dict[str, None] = {}
        self.seq = 0
        self.draining = False
        self.drain_at: float | None = None
        self.drain_by = ""
        self.drain_conn: conns.Conn | None = None  # the scheduler that asked for the drain
        self.exit_requested = False
        # A newer scheduler wants the home: exit once no run is held (conns._retire).
        self.retiring = False
        self.stop_now = False
        # Idle from the start: a keeper no scheduler ever reaches (the start that made it
        # failed) must time out too, and epoll_wait needs that deadline from its first call.
        self.idle_since: float | None = time.monotonic()
        self.stray_check_at = 0.0
        self.to_remove: list[Any] = []  # boxes of ended runs: removed after the pass's sends
        self.epoll.register(listener.fileno(), select.EPOLLIN)
        self.handlers[listener.fileno()] = "listen"
        self.epoll.register(wakeup, select.EPOLLIN)
        self.handlers[wakeup] = "wakeup"
        self.journal_error = ""
        self.journal_fd = journal.fileno()  # the sync helper's answers
        if self.journal_fd is not None:
            self.epoll.register(self.journal_fd, select.EPOLLIN)
            self.handlers[self.journal_fd] = "journal"

    # ------------------------------------------------------------------ fds
    # ------------------------------------------------------------------ the loop
    def serve(self) -> None:
        while True:
            timeout = self._next_timeout()
            try:
                events = self.epoll.poll(timeout)
            except InterruptedError:
                # SIGSTOP then SIGCONT ends epoll_wait with EINTR (signal(7)): read what
                # came meanwhile before the timers judge anyone silent.
                events = self.epoll.poll(0)
            self.tracker.invalidate()
            for fd, mask in events:
                try:
                    self._dispatch(fd, mask)
                except Exception:  # a bug in one run's handling must not end them all
                    self.log.exception("Handling fd %d failed", fd)
            self._timers(time.monotonic())
            self._end_of_pass()
            if self._should_exit():
                return

    def _dispatch(self, fd: int, mask: int) -> None:
        handler = self.handlers.get(fd)
        if handler is None:
            return
        if handler == "listen":
            conn = conns.accept(self, self.listener)
            if conn is not None:
                self.conns[conn.fileno()] = conn
                self.handlers[conn.fileno()] = conn
                self.epoll.register(conn.fileno(), select.EPOLLIN)
        elif handler == "wakeup":
            self._signals()
        elif handler == "journal":
            self.journal.answers()
            self._journal_news()
        elif isinstance(handler, conns.Conn):
            if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                conns.receive(self, handler)
        elif handler[0] == "pipe":
            handler[1].read_output()
        elif handler[0] == "renewer":
            handler[1].readable()
        elif handler[0] == "watch":
            run = handler[1]
            with contextlib.suppress(OSError):
                os.pread(fd, 4096, 0)  # reading re-arms the notification
            run.check_empty()

    def _signals(self) -> None:
        """Signals that came (their numbers, in the wake-up pipe); nothing when none did."""
        try:
            data = os.read(self.wakeup, 4096)
        except BlockingIOError:
            return
        signums = set(data)
        if signal.SIGHUP in signums and self.log_to_file:
            reopen_log(self.home_fd, self.log)
        if signums & {signal.SIGTERM, signal.SIGINT}:
            self.log.info("Signal received: stopping every run and exiting")
            self.exit_requested = True
            self.drain(0.0, "a signal to the keeper")
        self.reap()

    def _journal_news(self) -> None:
        """After a flush or the sync helper's answer: log what changed."""
        if self.journal.helper_lost:
            self.journal.helper_lost = False
            if self.journal_fd is not None:
                self.forget_fd(self.journal_fd)  # closed with the helper
                self.journal_fd = None
            self.log.warning("The journal's sync helper is gone; the loop syncs by itself")
        error = self.journal.error
        if error and error != self.journal_error:
            self.log.error(
                "Cannot write keeper.journal (%s): %d outcome(s) kept in memory, "
                "retrying every %gs",
                error,
                len(self.journal.waiting),
                JOURNAL_RETRY_S,
            )
        elif self.journal_error and not error:
            self.log.info("keeper.journal written again; no outcome was lost")
        self.journal_error = error

    def reap_at_eof(self) -> None:
        """A run's pipe reached EOF: its main has exited (or is about to).  Reap now, then
        take what reaping it brought into the wake-up pipe: the SIGCHLD is delivered when
        the wait4 that finds the zombie returns, and left there it cost a loop pass of
        its own (an epoll_wait, a read, a wait4 and the pass's bookkeeping) for most
        runs.  Any other signal in the pipe is handled as in that pass."""
        self.reap()
        self._signals()

    def reap(self) -> None:
        """Reap every exited child: main processes end their run's first phase, the rest
        are orphans of runs that the subreaper inherited."""
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            run = self.by_pid.pop(pid, None)
            if run is not None:
                run.main_exited(status, rusage)
            else:
                self.renewals.reaped(pid)

    def _timers(self, now: float) -> None:
        if self.drain_at is not None and now >= self.drain_at:
            self.drain_at = None
            for run in list(self.runs.values()):
                run.stop("stopped", f"stopped by {self.drain_by}", by=self.drain_by)
        for run in list(self.runs.values()):
            try:
                run.tick(now)
            except Exception:
                self.log.exception("Run %d: timer handling failed", run.run_id)
        self.renewals.tick(now)
        if not self.runs and now >= self.stray_check_at and self.cg.mode == "pgroup":
            self.stray_check_at = now + STRAY_CHECK_S
            self._kill_strays()

    def _next_timeout(self) -> float:
        times = [t for run in self.runs.values() if (t := run.next_wake()) is not None]
        journal = self.journal
        for t in (self.drain_at, journal.retry_at, journal.sync_at, self.renewals.next_wake()):
            if t is not None:
                times.append(t)
        if self.to_remove:
            times.append(time.monotonic() + 0.5)  # an rmdir that failed is tried again
        if self.idle_since is not None:
            times.append(self.idle_since + self.idle_exit)
        if not times:
            return -1
        return max(0.0, min(times) - time.monotonic())

    def _end_of_pass(self) -> None:
        for conn in list(self.conns.values()):
            if conn.wbuf and not conn.flush():
                if len(conn.wbuf) > conns.MAX_BUFFER:
                    self.log.warning(
                        "Dropping connection of PID %d: it does not read", conn.peer_pid
                    )
                    self.close_conn(conn)
                    continue
                if not conn.writing:
                    conn.writing = True
                    self.epoll.modify(conn.fileno(), select.EPOLLIN | select.EPOLLOUT)
            elif conn.closing:
                self.close_conn(conn)
            elif conn.writing:
                conn.writing = False
                self.epoll.modify(conn.fileno(), select.EPOLLIN)
        self.journal.flush(time.monotonic())
        self._journal_news()
        if self.to_remove:  # after the sends: the scheduler need not wait for rmdir(2)
            self.to_remove = [box for box in self.to_remove if not box.remove()]
        if self.journal.size > COMPACT_BYTES:
            self.journal.compact(list(self.unacked.values()))

    def _should_exit(self) -> bool:
        durable = not self.journal.waiting
        if (self.exit_requested or self.retiring) and not self.runs and durable:
            return True
        busy = self.runs or not durable or self.conns or self.renewals.busy()
        if busy:
            self.idle_since = None
            return False
        now = time.monotonic()
        if self.idle_since is None:
            self.idle_since = now
        return now - self.idle_since >= self.idle_exit

    # ------------------------------------------------------------------ requests
    def take_scheduler(self, conn: conns.Conn, lease: LeaseTerms | None) -> None:
        old = self.scheduler
        if old is not None and old is not conn:
            old.send(
                {
                    "type": "superseded",
                    "message": f"another scheduler connected (PID {conn.peer_pid})",
                }
            )
            old.closing = True
        self.scheduler = conn
        self.renewals.scheduler_came(lease)
        self.log.info(
            "Scheduler connected (PID %d%s)",
            conn.peer_pid,
            f", id {conn.scheduler_id}" if conn.scheduler_id else "",
        )

    def close_conn(self, conn: conns.Conn) -> None:
        self.forget_fd(conn.fileno())
        self.conns.pop(conn.fileno(), None)
        if self.scheduler is conn:
            self.scheduler = None
            self.log.info(
                "Scheduler disconnected (PID %d); %d run(s) go on", conn.peer_pid, len(self.runs)
            )
            self.renewals.scheduler_left(time.monotonic())
        conns.close_quietly(conn)

    def _kill_strays(self) -> None:
        strays = self.tracker.strays()
        if strays:
            from pony_scheduler.keeper.procs import signal_procs

            self.log.warning(
                "Killing %d process(es) left behind by ended runs: %s",
                len(strays),
                ", ".join(str(p.pid) for p in strays),
            )
            signal_procs(strays, signal.SIGKILL)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.flush()
            self.close_conn(conn)
        self.epoll.close()


def open_log(home_fd: int) -> int:
    """keeper.log, appended to, never through a symlink; raises OSError."""
    return os.open(
        LOG_FILE,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o640,
        dir_fd=home_fd,
    )


def reopen_log(home_fd: int, log: logging.Logger) -> None:
    """SIGHUP: keeper.log again (logrotate renamed it), onto fds 1 and 2 as well."""
    try:
        fd = open_log(home_fd)
    except OSError as exc:
        log.error("Cannot reopen keeper.log: %s", exc.strerror)
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    log.info("Reopened log file")
