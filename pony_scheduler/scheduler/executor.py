"""Runs job commands: one thread per running job, each child in its own session.

The child gets its own process group so that a timeout or a shutdown can stop
everything it started (shell pipelines, grandchildren) with one killpg().
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pony_scheduler.lifecycle.pidfile import proc_start_time
from pony_scheduler.runstate import RunState

log = logging.getLogger("pony_scheduler.executor")

OUTPUT_CAP = 10 * 1024 * 1024  # bytes of output kept in a run's file
TAIL_BYTES = 4096  # the end of the output, kept in the database
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL to a job's process group

# Outcome: (state, exit_code, reason, tail)
Finish = Callable[[dict[str, Any], RunState, int | None, str | None, str], None]


class Output:
    """A run's output file, created at its first byte: a run that prints nothing leaves
    no file.  Creating a file can cost more than starting `true` (0.7-0.9 ms of CPU in
    this machine's /tmp; docs/BENCHMARKS.md, finding 2), and many scheduled jobs are
    quiet."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        if self.file is None:
            try:
                self.file = open(self.path, "wb")  # noqa: SIM115 (closed by close())
            except FileNotFoundError:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self.file = open(self.path, "wb")  # noqa: SIM115
        self.file.write(data)
        self.file.flush()  # `pb runs output -f` follows the file

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class Executor:
    """A fixed pool of worker threads fed by a queue; `active` counts the runs handed
    over and not yet finished, `pending` holds those no worker has taken yet.  A finished
    run is recorded (on_finished), then its slot is freed, then the loop is woken
    (on_idle): the wake-up always finds the slot it was woken for, and the next claim never
    sees the finished run as still running."""

    def __init__(self, home: Path, workers: int, on_started: Callable[[dict[str, Any]], None],
                 on_finished: Finish, on_idle: Callable[[], None]) -> None:
        self.output_dir = home / "runs"
        self.workers = workers
        self.on_started = on_started
        self.on_finished = on_finished
        self.on_idle = on_idle
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  # pending has a run, or closing
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
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
            return self.pending[0]["handed_at"] if self.pending else None

    def launch(self, run: dict[str, Any]) -> None:
        with self.lock:
            self.active += 1
            run["handed_at"] = time.monotonic()
            self.pending.append(run)
            self.ready.notify()
            grow = len(self.threads) < min(self.active, self.workers)
        if grow:  # threads are made on demand, after daemonizing, never more than workers
            thread = threading.Thread(target=self._worker, daemon=True,
                                      name=f"worker-{len(self.threads) + 1}")
            self.threads.append(thread)
            thread.start()

    def take_back(self, handed_before: float | None = None) -> list[dict[str, Any]]:
        """Remove runs that no worker has started, handed over before `handed_before`
        (all of them when None); the caller gives them back to the queue."""
        with self.lock:
            back = [run for run in self.pending
                    if handed_before is None or run["handed_at"] < handed_before]
            for run in back:
                self.pending.remove(run)
            self.active -= len(back)
        return back

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

    def _next(self) -> dict[str, Any] | None:
        with self.lock:
            while not self.pending and not self.closing:
                self.ready.wait()
            return self.pending.popleft() if self.pending else None

    def _worker(self) -> None:
        while (run := self._next()) is not None:
            try:
                self._execute(run)
            except Exception as exc:  # a bug here must not kill the daemon silently
                log.exception("Run %s: executor failed", run["id"])
                if not run.get("done"):
                    self._done(run, RunState.FAILED, None, f"executor error: {exc}", "")

    def _done(self, run: dict[str, Any], state: RunState, code: int | None,
              reason: str | None, tail: str) -> None:
        run["done"] = True
        try:
            self.on_finished(run, state, code, reason, tail)
        finally:
            with self.lock:
                self.active -= 1
                self.last_finish = time.monotonic()
            self.on_idle()

    def _execute(self, run: dict[str, Any]) -> None:
        path = os.path.join(self.output_dir, run["name"], f"{run['id']}.log")
        run["output_path"] = path
        out = Output(path)
        with contextlib.closing(out):
            try:
                proc = subprocess.Popen(
                    run["argv"], cwd=run.get("cwd") or None, env=run["environ"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True)
            except OSError as exc:
                out.write(f"cannot start {run['argv'][0]!r}: {exc.strerror}\n".encode())
                out.close()
                self._done(run, RunState.FAILED, None, f"cannot start command: {exc.strerror}",
                           "")
                return
            run["pid"], run["pid_start"] = proc.pid, proc_start_time(proc.pid)
            self.on_started(run)
            state, reason, tail = self._supervise(proc, out, run.get("timeout_s"))
        code = proc.wait()
        if state is RunState.SUCCEEDED and code != 0:
            state = RunState.FAILED
            reason = (f"killed by signal {-code}" if code < 0 else f"exit status {code}")
        self._done(run, state, code, reason, tail)

    def _supervise(self, proc: subprocess.Popen[bytes], out: Output,
                   timeout: float | None) -> tuple[RunState, str | None, str]:
        """Copy output (capped) until the child closes it, times out or is interrupted."""
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout if timeout else None
        tail: collections.deque[bytes] = collections.deque()
        tail_size = written = 0
        state, reason = RunState.SUCCEEDED, None
        fd = proc.stdout.fileno()
        while True:
            if self.interrupt.is_set():
                state, reason = RunState.INTERRUPTED, "interrupted by scheduler shutdown"
                break
            if deadline is not None and time.monotonic() >= deadline:
                state, reason = RunState.TIMED_OUT, f"timed out after {timeout:g}s"
                break
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            if written < OUTPUT_CAP:
                out.write(chunk[: OUTPUT_CAP - written])
                written += len(chunk)
                if written >= OUTPUT_CAP:
                    out.write(b"\n[output truncated: more than 10 MiB]\n")
            tail.append(chunk)
            tail_size += len(chunk)
            while tail_size - len(tail[0]) >= TAIL_BYTES:
                tail_size -= len(tail.popleft())
        if state is RunState.SUCCEEDED:  # output closed; the process may still run
            state, reason = self._await_exit(proc, deadline, timeout)
        if state is not RunState.SUCCEEDED:
            stop_group(proc)
        proc.stdout.close()
        return state, reason, b"".join(tail)[-TAIL_BYTES:].decode(errors="replace")


    def _await_exit(self, proc: subprocess.Popen[bytes], deadline: float | None,
                    timeout: float | None) -> tuple[RunState, str | None]:
        if proc.poll() is not None:
            return RunState.SUCCEEDED, None
        # A pidfd becomes readable when the child exits: Popen.wait(timeout) would poll
        # with growing sleeps, adding up to milliseconds to every short run.
        with exit_watch(proc.pid) as fd:
            return self._exit_or_limit(proc, fd, deadline, timeout)

    def _exit_or_limit(self, proc: subprocess.Popen[bytes], fd: int | None,
                       deadline: float | None, timeout: float | None,
                       ) -> tuple[RunState, str | None]:
        while True:
            if fd is not None:
                select.select([fd], [], [], 0.2)
                exited = proc.poll() is not None
            else:
                exited = _exited(proc, 0.2)
            if exited:
                return RunState.SUCCEEDED, None
            if self.interrupt.is_set():
                return RunState.INTERRUPTED, "interrupted by scheduler shutdown"
            if deadline is not None and time.monotonic() >= deadline:
                return RunState.TIMED_OUT, f"timed out after {timeout:g}s"


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
