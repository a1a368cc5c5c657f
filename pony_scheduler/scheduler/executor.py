"""Runs job commands: a pool of worker threads, each child in its own session.

The child gets its own process group so that a timeout or a shutdown can stop
everything it started (shell pipelines, grandchildren) with one killpg().  The executor
decides no state: it reports that a run started (Started) and how it ended (Outcome); the
loop asks the run policy (runs.settle) what that makes of the run.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from pony_scheduler import files
from pony_scheduler.lifecycle.pidfile import proc_start_time
from pony_scheduler.scheduler.runs import Ending, Outcome, Started
from pony_scheduler.store.common import utcnow

log = logging.getLogger("pony_scheduler.executor")

OUTPUT_CAP = 10 * 1024 * 1024  # bytes of output kept in a run's file
TAIL_BYTES = 4096  # the end of the output, kept in the database
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL to a run's processes


@dataclass(frozen=True, slots=True)
class Launch:
    """What starting one run needs: the command resolved, its whole environment."""

    run_id: int
    job: str
    argv: tuple[str, ...]
    environ: Mapping[str, str]
    cwd: str | None
    umask: int
    timeout_s: float | None
    output_path: str


class Output:
    """A run's output file, created at its first byte: a run that prints nothing leaves
    no file.  Creating a file can cost more than starting `true` (0.7-0.9 ms of CPU in
    this machine's /tmp; docs/BENCHMARKS.md, finding 2), and many scheduled jobs are
    quiet."""

    def __init__(self, home: str, path: str) -> None:
        self.home = home
        self.path = path
        self.file: BinaryIO | None = None
        self.written = 0  # bytes the job wrote, kept or not
        self.note: str | None = None  # why the file does not hold everything kept

    def write(self, data: bytes) -> None:
        """Keep `data` up to OUTPUT_CAP bytes in all, then a note that the rest was cut."""
        kept = max(0, OUTPUT_CAP - self.written)
        self.written += len(data)
        if kept:
            self._write(data[:kept])
            if len(data) > kept:
                self._write(b"\n[output truncated: more than 10 MiB]\n")

    def _write(self, data: bytes) -> None:
        """Write through to the file; a file that cannot be made or written (a full disk,
        a planted symlink) ends the copy with a note, never the run: its pipe is still
        drained, so the job goes on."""
        if self.note is not None:
            return
        try:
            if self.file is None:
                # Never through a symlink, never over a file that is there already.
                fd = files.create_file(self.home, os.path.relpath(self.path, self.home),
                                       files.SHARED_MODE, make_dirs=True)
                self.file = os.fdopen(fd, "wb")
            self.file.write(data)
            self.file.flush()  # `pb runs output -f` follows the file
        except (OSError, files.UnsafePath) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.note = f"output incomplete: {reason}"

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError as exc:  # the last flush hit a full disk
                self.note = self.note or f"output incomplete: {exc.strerror}"
            self.file = None


class Executor:
    """A fixed pool of worker threads fed by a queue; `active` counts the runs handed
    over and not yet finished, `pending` holds those no worker has taken yet.  A finished
    run is reported (on_outcome), then its slot is freed, then the loop is woken
    (on_idle): the wake-up always finds the slot it was woken for, and the next claim never
    sees the finished run as still running."""

    def __init__(self, home: str, workers: int, on_started: Callable[[Started], None],
                 on_outcome: Callable[[Outcome], None], on_idle: Callable[[], None],
                 now: Callable[[], datetime] = utcnow) -> None:
        self.home = home  # output files are made beneath it, never through a symlink
        self.workers = workers
        self.now = now  # the clock outcomes are stamped with (the database's)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # running, by run id
        self.kills: dict[int, str] = {}  # run id -> why it was killed on request
        self.on_started = on_started
        self.on_outcome = on_outcome
        self.on_idle = on_idle
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  # pending has a run, or closing
        self.pending: collections.deque[tuple[Launch, float]] = collections.deque()
        self.closing = False
        self.threads: list[threading.Thread] = []
        self.active = 0
        self.last_finish = 0.0  # time.monotonic() of the latest finished run
        self.interrupt = threading.Event()  # set: stop every job now (shutdown)

    def free_slots(self, ahead: int = 0) -> int:
        """How many more runs to hand over: one per idle worker, plus `ahead` waiting."""
        with self.lock:
            return max(0, self.workers + ahead - self.active)

    def busy(self) -> int:
        with self.lock:
            return self.active

    def oldest_pending(self) -> float | None:
        """When the run waiting longest for a worker was handed over (monotonic)."""
        with self.lock:
            return self.pending[0][1] if self.pending else None

    def launch(self, launch: Launch) -> None:
        with self.lock:
            self.active += 1
            self.pending.append((launch, time.monotonic()))
            self.ready.notify()
            grow = len(self.threads) < min(self.active, self.workers)
        if grow:  # threads are made on demand, after daemonizing, never more than workers
            thread = threading.Thread(target=self._worker, daemon=True,
                                      name=f"worker-{len(self.threads) + 1}")
            self.threads.append(thread)
            thread.start()

    def kill(self, run_id: int, why: str) -> None:
        """Stop run `run_id`'s process group now; its outcome is `killed`, with `why`."""
        with self.lock:
            proc = self.procs.get(run_id)
            if proc is None:
                return
            self.kills[run_id] = why
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def take_back(self, handed_before: float | None = None) -> list[int]:
        """Remove runs that no worker has started, handed over before `handed_before`
        (all of them when None); returns their ids for the caller to requeue."""
        with self.lock:
            back = [item for item in self.pending
                    if handed_before is None or item[1] < handed_before]
            for item in back:
                self.pending.remove(item)
            self.active -= len(back)
        return [launch.run_id for launch, _ in back]

    def drain(self, grace: float, stop_now: Callable[[], bool],
              keep_alive: Callable[[], None]) -> int:
        """Wait up to `grace` for running jobs, then interrupt the rest; returns how many.
        Runs not started yet must have been taken back first."""
        deadline = time.monotonic() + grace
        while self.busy() and time.monotonic() < deadline and not stop_now():
            keep_alive()  # leases must not expire while we wait
            time.sleep(0.05)
        left = self.busy()
        self.interrupt.set()
        deadline = time.monotonic() + KILL_GRACE + 5
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self.lock:
            self.closing = True
            self.ready.notify_all()
        for thread in self.threads:
            thread.join(1)
        return left

    def _next(self) -> Launch | None:
        with self.lock:
            while not self.pending and not self.closing:
                self.ready.wait()
            return self.pending.popleft()[0] if self.pending else None

    def _worker(self) -> None:
        while (launch := self._next()) is not None:
            try:
                outcome = self._execute(launch)
            except Exception as exc:  # a bug here must not kill the daemon silently
                log.exception("Run %s: executor failed", launch.run_id)
                outcome = Outcome(launch.run_id, Ending.NOT_STARTED, self.now(),
                                  detail=f"executor error: {exc}")
            self._done(outcome)

    def _done(self, outcome: Outcome) -> None:
        try:
            self.on_outcome(outcome)
        finally:
            with self.lock:
                self.active -= 1
                self.last_finish = time.monotonic()
            self.on_idle()

    def _execute(self, launch: Launch) -> Outcome:
        out = Output(self.home, launch.output_path)
        with contextlib.closing(out):
            try:
                proc = subprocess.Popen(
                    launch.argv, cwd=launch.cwd or None, env=dict(launch.environ),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, umask=launch.umask)
            except OSError as exc:
                out.write(f"cannot start {launch.argv[0]!r}: {exc.strerror}\n".encode())
                out.close()
                return Outcome(launch.run_id, Ending.NOT_STARTED, self.now(),
                               detail=f"cannot start command: {exc.strerror}",
                               output_path=launch.output_path)
            pid, pid_start = proc.pid, proc_start_time(proc.pid)
            with self.lock:
                self.procs[launch.run_id] = proc
            self.on_started(Started(launch.run_id, pid, pid_start, launch.output_path))
            try:
                ending, detail, tail = self._supervise(proc, out, launch.timeout_s)
            finally:
                with self.lock:
                    self.procs.pop(launch.run_id, None)
                    killed = self.kills.pop(launch.run_id, None)
        code = proc.wait()
        if killed is not None:
            ending, detail = Ending.KILLED, killed
        return Outcome(launch.run_id, ending, self.now(),
                       exit_code=code if code >= 0 else None,
                       signal=-code if code < 0 else None, detail=detail, pid=pid,
                       pid_start=pid_start, output_path=launch.output_path,
                       output_bytes=out.written, output_note=out.note, tail=tail)

    def _supervise(self, proc: subprocess.Popen[bytes], out: Output,
                   timeout: float | None) -> tuple[Ending, str | None, bytes]:
        """Copy output (capped) until the child closes it, times out or is interrupted."""
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout if timeout else None
        tail: collections.deque[bytes] = collections.deque()
        tail_size = 0
        ending, detail = Ending.EXITED, None
        fd = proc.stdout.fileno()
        while True:
            if self.interrupt.is_set():
                ending, detail = Ending.STOPPED, "interrupted by scheduler shutdown"
                break
            if deadline is not None and time.monotonic() >= deadline:
                ending, detail = Ending.TIMED_OUT, f"timed out after {timeout:g}s"
                break
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out.write(chunk)
            tail.append(chunk)
            tail_size += len(chunk)
            while tail_size - len(tail[0]) >= TAIL_BYTES:
                tail_size -= len(tail.popleft())
        if ending is Ending.EXITED:  # output closed; the process may still run
            ending, detail = self._await_exit(proc, deadline, timeout)
        if ending is not Ending.EXITED:
            stop_group(proc)
        proc.stdout.close()
        return ending, detail, b"".join(tail)[-TAIL_BYTES:]

    def _await_exit(self, proc: subprocess.Popen[bytes], deadline: float | None,
                    timeout: float | None) -> tuple[Ending, str | None]:
        if proc.poll() is not None:
            return Ending.EXITED, None
        # A pidfd becomes readable when the child exits: Popen.wait(timeout) would poll
        # with growing sleeps, adding up to milliseconds to every short run.
        with exit_watch(proc.pid) as fd:
            return self._exit_or_limit(proc, fd, deadline, timeout)

    def _exit_or_limit(self, proc: subprocess.Popen[bytes], fd: int | None,
                       deadline: float | None, timeout: float | None,
                       ) -> tuple[Ending, str | None]:
        while True:
            if fd is not None:
                select.select([fd], [], [], 0.2)
                exited = proc.poll() is not None
            else:
                exited = _exited(proc, 0.2)
            if exited:
                return Ending.EXITED, None
            if self.interrupt.is_set():
                return Ending.STOPPED, "interrupted by scheduler shutdown"
            if deadline is not None and time.monotonic() >= deadline:
                return Ending.TIMED_OUT, f"timed out after {timeout:g}s"


@contextlib.contextmanager
def exit_watch(pid: int) -> Iterator[int | None]:
    """A pidfd for `pid`, or None where the kernel has none (before Linux 5.3)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the job's process group, SIGKILL it after a grace period."""
    for signum, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            # The leader is gone; make sure nothing it started lingers in the group.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        return
