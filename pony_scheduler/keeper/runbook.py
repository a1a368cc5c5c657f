"""What the keeper does with runs and outcomes, apart from its loop (server.py): starting
a run, refusing one, announcing it, recording its outcome (pending until acknowledged,
queued for the journal, sent to the scheduler at once), draining, reporting status."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pony_scheduler import __version__
from pony_scheduler.keeper import keptfile
from pony_scheduler.keeper.containment import Cgroups
from pony_scheduler.keeper.execpath import NotStarted
from pony_scheduler.keeper.output import Output, relative_parts
from pony_scheduler.keeper.procs import PgroupBox, Tracker
from pony_scheduler.keeper.protocol import PROTOCOL, Launch, Outcome, Started, iso_utc
from pony_scheduler.keeper.runs import Run
from pony_scheduler.keeper.wire import encode, outcome_to_json, started_to_json

if TYPE_CHECKING:
    from pony_scheduler.keeper.commit import Journal
    from pony_scheduler.keeper.conns import Conn


class RunBook:
    """Mixed into Keeper, whose __init__ sets these."""

    home: str
    home_fd: int
    keeper_id: str
    cg: Cgroups
    journal: Journal
    log: logging.Logger
    started_at: str
    devnull: int
    umask: int  # the keeper's own, restored after a job's spawn
    epoll: select.epoll
    handlers: dict[int, Any]
    runs: dict[int, Run]
    by_pid: dict[int, Run]
    unacked: dict[str, Outcome]
    unacked_runs: set[int]
    tracker: Tracker
    conns: dict[int, Conn]
    scheduler: Conn | None
    seq: int
    draining: bool
    drain_at: float | None
    drain_by: str
    drain_conn: Conn | None
    exit_requested: bool
    to_remove: list[Any]
    # Keeper.reap_at_eof (server.py): wait4 every exited child, and take their SIGCHLD
    reap_at_eof: Callable[[], None]

    def watch_fd(self, fd: int, run: Run) -> None:
        self.epoll.register(fd, select.EPOLLPRI)
        self.handlers[fd] = ("watch", run)

    def forget_fd(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)

    def live_runs(self) -> list[Run]:
        return [run for run in self.runs.values() if not run.done]

    def launch(self, launch: Launch, conn: Conn) -> None:
        reason, requeue = "", False
        if self.draining and not self.exit_requested and conn is not self.drain_conn:
            self._drain_over()
        if launch.run_id in self.runs:
            reason = f"run {launch.run_id} is already held by this keeper"
        elif launch.run_id in self.unacked_runs:
            reason = f"run {launch.run_id} has an outcome not yet acknowledged"
        elif self.draining or self.exit_requested:
            reason, requeue = "the keeper is draining its runs and takes no new ones", True
        elif launch.start_by is not None and time.monotonic() > launch.start_by:
            requeue = True
            reason = (
                "it came too late: its lease may have run out meanwhile (was this "
                "host frozen?), and another host may run it"
            )
        parts = relative_parts(self.home, launch.output_path)
        if not reason and parts is None:
            reason = f"output path {launch.output_path!r} is not a file below {self.home}"
        if reason:
            conn.send(
                {
                    "type": "refused",
                    "run_id": launch.run_id,
                    "token": launch.token,
                    "reason": reason,
                    "requeue": requeue,
                }
            )
            return
        assert parts is not None
        try:
            self._start(launch, parts)
        except NotStarted as exc:
            self._not_started(launch, str(exc), exc.exit_code)

    def _start(self, launch: Launch, parts: list[str]) -> None:
        why = self.cg.unenforceable(launch)
        if why:
            raise NotStarted(f"cannot start: {why}")
        box: Any
        if self.cg.mode == "pgroup":
            box = PgroupBox(self.tracker, launch.run_id)
        else:
            box = self.cg.box(launch.run_id, launch)
            try:
                box.create()
            except OSError as exc:
                raise NotStarted(
                    f"cannot start: cannot create its cgroup {exc.filename}: {exc.strerror}"
                ) from None
        output = Output(self.home_fd, launch.output_path, parts)
        output.set_aside_stale()
        run = Run(self, launch, box, output)
        try:
            run.spawn(self.home_fd, self.devnull)
        except NotStarted:
            if not isinstance(box, PgroupBox):
                box.remove()
            raise
        self.runs[run.run_id] = run
        self.by_pid[run.pid] = run
        if isinstance(box, PgroupBox):
            self.tracker.mains[run.pid] = run.run_id
            self.tracker.sessions[run.pid] = run.run_id
            if run.pid in self.tracker.kept:
                self._session_reused(run.pid)
        self.epoll.register(run.pipe, select.EPOLLIN)
        self.handlers[run.pipe] = ("pipe", run)

    def announce(self, started: Started) -> None:
        if self.scheduler is not None:
            self.scheduler.send(started_to_json(started))

    def _not_started(self, launch: Launch, detail: str, exit_code: int | None) -> None:
        now = iso_utc(time.time())
        self.emit(
            Outcome(
                id=self.next_outcome_id(),
                run_id=launch.run_id,
                token=launch.token,
                ending="not_started",
                exit_code=exit_code,  # a shell's 127 / 126 for an exec that failed
                signal=None,
                started_at=None,
                finished_at=now,
                detail=detail,
                output_path=launch.output_path,
                output_bytes=0,
                output_note="",
                tail=b"",
                leftovers=0,
                leftovers_kept=False,
                peak_memory_bytes=None,
                cpu_seconds=None,
                containment=self.cg.mode,
            )
        )

    def next_outcome_id(self) -> str:
        self.seq += 1
        return f"{self.keeper_id}-{self.seq}"

    def run_finished(self, run: Run, outcome: Outcome) -> None:
        kept = self._kept_sessions(run) if run.kept else set()
        self.runs.pop(run.run_id, None)
        self.tracker.sessions.pop(run.pid, None)
        if run.kept:
            self._record_kept(run, kept)
        if run.kept and isinstance(run.box, PgroupBox):
            self.tracker.kept |= kept
            self.tracker.kept_runs.add(run.run_id)
        if not isinstance(run.box, PgroupBox):
            if run.kept:
                run.box.release()
            if run.box.final is None:  # not removed already when found empty
                self.to_remove.append(run.box)
        self.emit(outcome)

    @staticmethod
    def _kept_sessions(run: Run) -> set[int]:
        """The sessions of a run's kept leftovers: its own (its main's PID) and, without
        cgroups, each one a leftover made with setsid(2) by then, found while the run is
        still held (with cgroups they all sit in the home's `kept` group instead; one
        that calls setsid(2) later is found by its run's marker, Tracker._is_kept)."""
        sessions = {run.pid}
        if isinstance(run.box, PgroupBox):
            sessions.update(proc.sid for proc in run.box.members())
        return sessions

    def _session_reused(self, sid: int) -> None:
        """A new run's main got the PID of a kept session: Linux hands out no PID still
        in use as a session or group id (credentials(7)), so that session has no process
        left; forgetting it keeps the new run's leftovers from passing for kept ones
        (review finding: they outlived their run's record and a stop)."""
        self.tracker.kept.discard(sid)
        try:
            keptfile.forget(self.home_fd, sid)
        except OSError as exc:
            self.log.warning("Cannot rewrite keeper.kept (%s)", exc.strerror)

    def _record_kept(self, run: Run, sessions: set[int]) -> None:
        """So that a keeper after us, should we die, spares them (keptfile.py)."""
        try:
            keptfile.add(self.home_fd, sessions, [run.run_id])
        except OSError as exc:
            self.log.warning(
                "Run %d: cannot record its kept leftovers in keeper.kept (%s): a keeper "
                "started after this one dies would stop them",
                run.run_id,
                exc.strerror,
            )

    def emit(self, outcome: Outcome) -> None:
        """Pending until acknowledged; queued for the journal; sent now."""
        self.unacked[outcome.id] = outcome
        self.unacked_runs.add(outcome.run_id)
        message = encode(outcome_to_json(outcome))  # once, for the socket and the journal
        self.journal.add(outcome, message)
        if self.scheduler is not None:
            self.scheduler.wbuf += message

    def ack(self, ids: list[str]) -> None:
        known = [i for i in ids if i in self.unacked]
        for outcome_id in known:
            self.unacked_runs.discard(self.unacked.pop(outcome_id).run_id)
        if known:
            self.journal.ack(known, len(self.unacked))

    def drain(self, grace: float, by: str, conn: Conn | None = None) -> None:
        """Stop every run after `grace` seconds and take no new one (`pb scheduler stop`;
        `conn`: the scheduler that asked, None for a signal to the keeper)."""
        self.draining = True
        self.drain_by = by
        self.drain_conn = conn
        at = time.monotonic() + grace
        if self.drain_at is None or at < self.drain_at:
            self.drain_at = at
        self.log.info("Draining %d run(s): %gs grace, then they are stopped", len(self.runs), grace)

    def _drain_over(self) -> None:
        """Another scheduler launches after a drain that did not end in the keeper's exit
        (the draining scheduler could not record every outcome, so the keeper stayed to
        keep them): once the drained runs are gone, the drain is over and runs are taken
        again (review finding: the next scheduler's every launch was refused)."""
        if self.runs:
            return  # still stopping what the drain holds: refused until they are gone
        self.draining, self.drain_at, self.drain_conn = False, None, None
        self.log.info("The drain is over: a new scheduler launches runs again")

    def status_json(self) -> dict[str, Any]:
        return {
            "type": "status",
            "pid": os.getpid(),
            "version": __version__,
            "protocol": PROTOCOL,
            "keeper_id": self.keeper_id,
            "started_at": self.started_at,
            "home": self.home,
            "containment": self.cg.mode,
            "containment_note": "; ".join(self.cg.notes),
            "controllers": list(self.cg.controllers()),
            "runs": len(self.runs),
            "unacked": len(self.unacked),
            "unjournaled": len(self.journal.waiting),
            "journal_bytes": self.journal.size,
            "journal_error": self.journal.error,
            "draining": self.draining,
            # A launch from a new scheduler ends a drain that no exit followed (_drain_over);
            # a keeper without this field cannot, and is asked to exit instead (executor).
            "drain_ends": True,
            "exiting": self.exit_requested,
            "clients": len(self.conns),
        }
