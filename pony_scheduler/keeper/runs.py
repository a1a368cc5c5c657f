"""One run inside the keeper: spawning it, following it, ending it.

A run ends when its main process exits.  What it left behind is then counted and, with
leftovers "kill" (systemd's KillMode=control-group), sent SIGTERM and, after
KILL_GRACE_S, SIGKILL; the outcome is emitted only once nothing of the run is left, so no
process of a run outlives its outcome.  With "keep" the leftovers are counted and left
alone; their stdout/stderr pipe, which they may still write, goes to a drain process
(LATE_DRAIN) rather than being closed, so that a later write never kills them (SIGPIPE).
A timeout, a kill request or a drain stops the whole tree the same way, at once.

Spawning (spawner.py: clone3 into the run's cgroup, or posix_spawn(3); no Python in the
child either way): a new session, stdin /dev/null, stdout and stderr one pipe, the
signals the keeper ignores reset to their defaults; the job's umask and working
directory are set around the call (the keeper is single-threaded, so this is safe).
The program is looked up in the job's PATH, not the keeper's, as execvp(3) would.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from typing import TYPE_CHECKING

from pony_scheduler.keeper import spawner
from pony_scheduler.keeper.containment import CgroupBox
from pony_scheduler.keeper.execpath import NotStarted, exec_status, resolve, shown
from pony_scheduler.keeper.output import Output
from pony_scheduler.keeper.procs import PgroupBox, read_stat
from pony_scheduler.keeper.protocol import (
    KILL_GRACE_S,
    STARTED_DELAY_S,
    Held,
    Launch,
    Outcome,
    Started,
    iso_utc,
    signal_name,
)

if TYPE_CHECKING:
    from resource import struct_rusage

    from pony_scheduler.keeper.runbook import RunBook

FINAL_WAIT_S = 10.0  # after SIGKILL: how long to wait for the tree to vanish before giving up
POLL_FIRST_S = 0.01  # polling for an empty run where no cgroup.events can tell (pgroup, v1)
POLL_MAX_S = 0.25


# Output of kept leftovers after their run's end, from the pipe (stdin) into the file
# (stdout) while it is below $1 blocks of 512 bytes (OUTPUT_CAP, or less near the space kept
# free: Output.late_sink; a soft RLIMIT_FSIZE, with SIGXFSZ ignored, makes the write past
# it fail), then the truncation line ($2) and the
# rest discarded; it ends when the last writer closes the pipe.  cat, not head -c: head's
# stdio would hold lines back.
LATE_DRAIN = (
    'ulimit -S -f "$1"; cat || { ulimit -S -f unlimited; printf %s "$2"; }; exec cat >/dev/null'
)


class Run:
    """A run the keeper holds, from its spawn to its outcome."""

    def __init__(
        self, keeper: RunBook, launch: Launch, box: CgroupBox | PgroupBox, output: Output
    ) -> None:
        self.keeper = keeper
        self.launch = launch
        self.run_id = launch.run_id
        self.box = box
        self.out = output
        self.pid = 0
        self.pid_start: int | None = None
        self.started_at = ""
        self.started_mono = 0.0  # time.monotonic() at the spawn: the duration's start
        self.pipe = -1
        self.watch = -1  # cgroup.events, while waiting for the run's group to empty
        self.deadline: float | None = None  # the timeout
        self.stopping: str | None = None  # timed_out, killed, stopped
        self.stop_detail = ""
        self.stop_by = ""  # who asked (a kill request, a drain), for the outcome
        self.kill_at: float | None = None  # SIGKILL to what is left
        self.give_up_at: float | None = None
        self.poll_at: float | None = None
        self.poll_every = POLL_FIRST_S
        self.status: int | None = None  # wait status of the main process, once reaped
        self.rusage: struct_rusage | None = None
        self.finished_at = ""
        self.duration_s: float | None = None  # spawn to reap, on the monotonic clock
        self.leftovers = 0
        self.kept = False
        self.done = False
        self.announce_at: float | None = None  # when to send `started` (STARTED_DELAY_S)

    # ------------------------------------------------------------------ start
    def spawn(self, home_fd: int, devnull: int) -> None:
        """Start the main process; raises NotStarted with the reason."""
        launch = self.launch
        env = dict(launch.env)
        env["PONYBUNNY_RUN_ID"] = str(self.run_id)
        env["PONYBUNNY_KEEPER_ID"] = self.keeper.keeper_id
        program = resolve(launch.argv[0], env.get("PATH"))
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read_end, False)
        # The keeper's own umask (027) stays put; a job that wants another (the default
        # is 022) costs two umask(2) calls around its spawn.
        own_umask = self.keeper.umask
        if launch.umask != own_umask:
            os.umask(launch.umask)
        try:
            if launch.cwd:
                try:
                    os.chdir(launch.cwd)
                except OSError as exc:
                    raise NotStarted(
                        f"cannot start: working directory {shown(launch.cwd)}: {exc.strerror}"
                    ) from None
            limits_first = bool(launch.limits) and spawner.limits_first(self.box)
            if limits_first:
                assert isinstance(self.box, CgroupBox)
                try:
                    self.box.apply_limits()
                except OSError as exc:
                    raise NotStarted(
                        f"cannot start: cannot apply its limits: {exc.strerror}"
                    ) from None
            try:
                self.pid = spawner.start(program, launch.argv, env, devnull, write_end, self.box)
            except spawner.PlacementError as exc:
                raise NotStarted(f"cannot start: cannot enter its cgroup: {exc}") from None
            except OSError as exc:
                # An exec that runs out of its memory_max fails with E2BIG (copying its
                # arguments) or ENOMEM, which alone point away from the limit.
                hint = (
                    " (its memory_max may be too small to start it)"
                    if launch.memory_max is not None and exc.errno in (errno.E2BIG, errno.ENOMEM)
                    else ""
                )
                raise NotStarted(
                    f"cannot start {shown(launch.argv[0])}: {exc.strerror}{hint}",
                    exec_status(exc.errno),
                ) from None
        except NotStarted:
            os.close(read_end)
            raise
        finally:
            if launch.umask != own_umask:
                os.umask(own_umask)
            if launch.cwd:
                os.fchdir(home_fd)
            os.close(write_end)
        now = time.time()
        self.pipe = read_end
        self.started_at = iso_utc(now)
        mono = time.monotonic()
        self.started_mono = mono
        self.announce_at = mono + STARTED_DELAY_S
        if launch.timeout_s is not None:
            self.deadline = mono + launch.timeout_s
        if isinstance(self.box, CgroupBox) and launch.limits and not limits_first:
            # Moved into its groups by the keeper: written now that the keeper is out.
            try:
                self.box.apply_limits()
            except OSError as exc:
                self.stop(
                    "killed", f"killed: cannot apply its limits: {exc.strerror}", signal.SIGKILL
                )

    def learn_start(self) -> int | None:
        """The main's /proc start time, read when first needed (announcing the run,
        listing it): right after the spawn the read would wait for the exec to finish
        (140 µs on this machine), and a run that ends at once never needs it."""
        if self.pid_start is None and self.pid:
            proc = read_stat(self.pid)
            self.pid_start = proc.start if proc else None
        return self.pid_start

    def started_message(self) -> Started:
        return Started(
            self.run_id,
            self.launch.token,
            self.pid,
            self.learn_start(),
            self.started_at,
            self.launch.output_path,
            self.box.kind,
        )

    def held(self) -> Held:
        return Held(
            self.run_id,
            self.launch.token,
            self.pid,
            self.learn_start(),
            self.started_at,
            self.launch.output_path,
            self.box.kind,
            self.stopping,
        )

    # ------------------------------------------------------------------ output
    def read_output(self) -> None:
        """Take what the pipe holds (a bounded amount per call); closes it at EOF."""
        for _ in range(8):
            try:
                data = os.read(self.pipe, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.keeper.forget_fd(self.pipe)
                os.close(self.pipe)
                self.pipe = -1
                if self.status is None:
                    # The usual end: the main exited, which closed the pipe a moment
                    # before it became a zombie.  Reaping now, not in the pass its
                    # SIGCHLD wakes, sends the outcome one pass sooner.
                    self.keeper.reap_at_eof()
                return
            self.out.write(data)

    def drain_output(self) -> None:
        """At the end: what is still in the pipe, then close it whoever still holds it -
        or, while kept leftovers may still write to it, hand it to a drain process."""
        while self.pipe >= 0:
            try:
                data = os.read(self.pipe, 65536)
            except BlockingIOError:
                if self.kept:
                    self._hand_over_output()
                    return
                data = b""
            except OSError:
                data = b""
            if not data:
                self.keeper.forget_fd(self.pipe)
                os.close(self.pipe)
                self.pipe = -1
            else:
                self.out.write(data)

    def _hand_over_output(self) -> None:
        """Kept leftovers hold the pipe: `sh -c LATE_DRAIN` (no Python) takes it and appends
        what they write to the output file up to OUTPUT_CAP, discarding the rest, until
        the last of them closes it; it outlives the keeper if need be.  Not a stray: it
        is excluded from the fallback's sweep until reaped."""
        pipe, self.pipe = self.pipe, -1
        self.keeper.forget_fd(pipe)
        fd, limit, line = self.out.late_sink()
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.set_blocking(pipe, True)  # the drain reads it as a plain pipe
            pid = os.posix_spawn(
                "/bin/sh",
                ["sh", "-c", LATE_DRAIN, "sh", str(limit // 512), line.decode()],
                {"PATH": os.defpath, "LC_ALL": "C"},
                setsid=True,
                setsigdef=[sig for sig in spawner.IGNORED if sig != signal.SIGXFSZ],
                setsigmask=(),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, pipe, 0),
                    (os.POSIX_SPAWN_DUP2, fd if fd >= 0 else null, 1),
                    (os.POSIX_SPAWN_DUP2, null, 2),
                ],
            )
            self.keeper.tracker.exclude.add(pid)
        except OSError as exc:
            self.keeper.log.warning(
                "Run %d: cannot keep draining the output of its kept leftovers (%s); "
                "their next write to it fails",
                self.run_id,
                exc.strerror,
            )
        finally:
            os.close(null)
            os.close(pipe)

    # ------------------------------------------------------------------ stopping
    def stop(self, ending: str, detail: str, signum: int = signal.SIGTERM, by: str = "") -> None:
        """Stop the whole tree: `signum` now, SIGKILL after KILL_GRACE_S.  The first cause
        decides the ending; a later one may only hasten the SIGKILL."""
        if self.stopping is None and self.status is None:
            self.stopping, self.stop_detail, self.stop_by = ending, detail, by
        main = self.pid if self.status is None else None
        self.box.signal(signum, main)
        now = time.monotonic()
        if signum == signal.SIGKILL:
            self.kill_at = None
            self.give_up_at = self.give_up_at or now + FINAL_WAIT_S
        elif self.kill_at is None and self.give_up_at is None:
            self.kill_at = now + KILL_GRACE_S
        if self.status is not None:
            self._poll_soon()

    def main_exited(self, status: int, rusage: struct_rusage) -> None:
        """The main process was reaped: count what it left, then finish or clean up."""
        self.status = status
        self.rusage = rusage
        self.finished_at = iso_utc(time.time())
        # Both ends seen here, on a clock no step moves: the wall-clock stamps above may
        # be hours apart from the truth after a step (the scheduler checks them by it).
        self.duration_s = round(time.monotonic() - self.started_mono, 3)
        self.deadline = None
        self.keeper.tracker.mains.pop(self.pid, None)
        self.keeper.tracker.invalidate()
        left = self.box.count()
        if self.stopping is None:
            self.leftovers = left
            if left and self.launch.leftovers == "keep":
                self.kept = True
                self.finish()
                return
            if left:
                self.box.signal(signal.SIGTERM, None)
                self.kill_at = time.monotonic() + KILL_GRACE_S
        if left == 0:
            self.finish()
        else:
            self._watch_empty()

    def _watch_empty(self) -> None:
        path = self.box.watch_path() if isinstance(self.box, CgroupBox) else None
        if path and self.watch < 0:
            with contextlib.suppress(OSError):
                self.watch = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self.keeper.watch_fd(self.watch, self)
        self._poll_soon()

    def _poll_soon(self) -> None:
        self.poll_every = POLL_FIRST_S
        self.poll_at = time.monotonic() + self.poll_every

    def check_empty(self) -> None:
        """Called on cgroup.events changes and poll ticks once the main is gone."""
        if self.status is None or self.done:
            return
        if self.box.count() == 0:
            self.finish()
        elif self.give_up_at is not None:
            # SIGKILL was sent: again, for what was forked while the last one went out
            # (cgroup.kill needs no second round; a process list does).
            self.box.signal(signal.SIGKILL, None)

    def tick(self, now: float) -> None:
        """Timers: the timeout, the SIGKILL, giving up, polling for emptiness."""
        if self.done:
            return
        if self.announce_at is not None and now >= self.announce_at:
            self.announce_at = None
            if self.status is None:
                self.keeper.announce(self.started_message())
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            self.stop("timed_out", f"timed out after {self.launch.timeout_s:g}s")
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self.box.signal(signal.SIGKILL, self.pid if self.status is None else None)
            self.give_up_at = now + FINAL_WAIT_S
            if self.status is not None:
                self._poll_soon()
        if self.poll_at is not None and now >= self.poll_at:
            self.poll_every = min(self.poll_every * 2, POLL_MAX_S)
            self.poll_at = now + self.poll_every
            self.check_empty()
        if (
            not self.done
            and self.status is not None
            and self.give_up_at is not None
            and now >= self.give_up_at
        ):
            left = self.box.count()
            self.keeper.log.warning(
                "Run %d: %d process(es) still there %gs after SIGKILL "
                "(uninterruptible?); recording its outcome anyway",
                self.run_id,
                left,
                FINAL_WAIT_S,
            )
            self.finish()

    def next_wake(self) -> float | None:
        times = [
            t
            for t in (self.announce_at, self.deadline, self.kill_at, self.give_up_at, self.poll_at)
            if t is not None
        ]
        return min(times) if times else None

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.announce_at = None
        self.drain_output()
        if self.watch >= 0:
            self.keeper.forget_fd(self.watch)
            os.close(self.watch)
            self.watch = -1
        note = self.out.close()
        peak = cpu = None
        oom = False
        if isinstance(self.box, CgroupBox):
            peak, cpu, oom = self.box.stats()
        ru = self.rusage
        if ru is not None and cpu is None:
            cpu = round(ru.ru_utime + ru.ru_stime, 6)
        # No ru_maxrss fallback for memory: after vfork+exec it holds the keeper's own
        # high-water mark (exec records the old mm's), so it says nothing about the job.
        self.keeper.run_finished(self, self._outcome(note, peak, cpu, oom))

    def _outcome(self, note: str, peak: int | None, cpu: float | None, oom: bool) -> Outcome:
        status = self.status
        code = os.waitstatus_to_exitcode(status) if status is not None else None
        exit_code = code if code is not None and code >= 0 else None
        signum = -code if code is not None and code < 0 else None
        if self.stopping:
            ending, detail = self.stopping, self.stop_detail
        elif signum is not None:
            ending = "killed"
            detail = f"killed by signal {signum} ({signal_name(signum)})"
            if oom:
                detail += ": out of memory (memory_max)"
        else:
            ending, detail = "exited", f"exit status {exit_code}"
        launch = self.launch
        return Outcome(
            id=self.keeper.next_outcome_id(),
            run_id=self.run_id,
            token=launch.token,
            ending=ending,
            exit_code=exit_code,
            signal=signum,
            started_at=self.started_at,
            finished_at=self.finished_at or iso_utc(time.time()),
            duration_s=self.duration_s,
            detail=detail,
            output_path=launch.output_path,
            output_bytes=self.out.stored,
            output_note=note,
            tail=self.out.tail_bytes(),
            leftovers=self.leftovers,
            leftovers_kept=self.kept,
            peak_memory_bytes=peak,
            cpu_seconds=cpu,
            containment=self.box.kind,
            pid=self.pid,
            pid_start=self.pid_start,
            by=self.stop_by,
        )
