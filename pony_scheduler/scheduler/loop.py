"""The scheduler's work loop.

It sleeps until the next due time, a wake-up (a finished job, a signal) or the next
once-a-second look at the change counter that `pb job …` bumps; it never scans the jobs
table in a tight loop.  Every database call is its own short transaction.  Decisions are
the run policy's (runs.py): the loop gathers facts, asks, and hands the answers to the
store.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError

from pony_scheduler.durations import format_duration
from pony_scheduler.errors import PonyError
from pony_scheduler.files import output_dir
from pony_scheduler.keeper.client import KeeperError
from pony_scheduler.keeper.protocol import KILL_GRACE_S, LeaseTerms
from pony_scheduler.lifecycle.runtime import ServiceRuntime
from pony_scheduler.runstate import RunState
from pony_scheduler.scheduler import environment, host, planning, recovery, runs, takeover
from pony_scheduler.scheduler.clock import DatabaseClock, step_while_stopped
from pony_scheduler.scheduler.executor import Executor, Launch
from pony_scheduler.scheduler.runs import Capacity, Claimed, Ending, Outcome, Run, Started
from pony_scheduler.store import Store
from pony_scheduler.store.common import first_line, utcnow
from pony_scheduler.store.engine import SQLITE_BUSY_TIMEOUT_MS
from pony_scheduler.store.jobs import left_line
from pony_scheduler.store.runs import ClaimRequest, Finished
from pony_scheduler.store.transitions import Claimant

log = logging.getLogger("pony_scheduler.scheduler")

CHANGE_POLL = 1.0  # seconds between looks at the change counter
# Upkeep's slice of an unfinished `pb job remove` (seconds, then the batch in hand ends).
PURGE_BUDGET_S = 0.2
# A stop tries this long to record what is left before leaving it to the run keeper.
BOOKS_BUDGET_S = 10.0
KEEP_UP_PAUSE_S = 30.0  # a drain's pause after a failed write (WorkLoop._keep_up)
# A started run's pid waits this long for the next transaction (a finish, a claim) to
# carry it, rather than costing a write of its own; a restart needs the pid only to stop
# an orphan, so a short delay trades a small window for half the writes per run.
PID_RECORD_DELAY = 0.05
# Claiming ahead: while due runs queue up and runs keep finishing (one did within
# AHEAD_WINDOW), one run is claimed beyond the idle workers, so that a worker that frees
# up starts it at once instead of waiting for the loop's next transaction.  A run claimed
# ahead that no worker took within AHEAD_WAIT (the runs before it turned out long) goes
# back to the queue, as does any at shutdown: it shows as running only while about to run.
AHEAD = 1
AHEAD_WINDOW = 0.1
AHEAD_WAIT = 0.5
# A claim judges every due run of its window (expiry, skip) at least this often; between
# such scans it stops once it has claimed its limit (store/runs.py: ClaimRequest.scan).
EXPIRY_SCAN_S = CHANGE_POLL


class Events(Protocol):
    def emit(self, type: str, data: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class InFlight:
    run: Run
    epoch: int  # the fencing token it was claimed under
    claimed_at: datetime


class WorkLoop:
    def __init__(self, store: Store, runtime: ServiceRuntime, events: Events) -> None:
        self.store = store
        self.runtime = runtime
        self.events = events
        self.me = Claimant("", socket.gethostname(), host.host_id())
        settings = runtime.settings
        # Where runs write, and where a removal may delete: one place for both.
        self.output_dir = store.output_dir = output_dir(settings.home_dir, settings.db)
        self.account_memory = settings.memory_accounting == "always"
        self.clock = DatabaseClock(store, runtime)
        self.executor = Executor(
            settings.home,
            settings.workers,
            self._started,
            self._finished,
            self._kick,
            skew=lambda: self.clock.offset,
            containment=settings.containment,
            lease=LeaseTerms(settings.db, settings.lease),
        )
        self.scheduler_id = ""
        self.started_at = utcnow()
        self.changes = -1
        # Jobs get a defined environment, never the daemon's (it may hold PONYBUNNY_DB's
        # password, or NOTIFY_SOCKET: a job that answered it would speak for us).
        self.base_env = environment.base_environment()
        self.planner = planning.Planner(store, self.started_at)
        self.replan = True  # jobs changed: turn due occurrences into runs, recompute
        self.kicked = True  # runs changed (finished, queued): claim what is due
        self.next_job_due: datetime | None = None
        self.next_run_due: datetime | None = None
        # Queued runs due later (retries waiting out their delay) appear only through a
        # change, a retry or a rescue: look them up again only then, not after every claim.
        self.upcoming_dirty = True
        self.upcoming: datetime | None = None
        self.next_heartbeat = self.next_poll = self.next_watchdog = 0.0
        self.keep_up_after = 0.0  # monotonic: a drain's next write after a failed one
        self.lease = settings.lease  # seconds a claimed run stays ours without renewal
        # Renewed twelve times per lease (every 5 s for the default minute).
        self.heartbeat_interval = self.lease / 12
        # What the executor reports waits here until the loop records it, in one
        # transaction per iteration; it stays in `unrecorded` while the database refuses.
        self.journal: queue.SimpleQueue[Started | Outcome] = queue.SimpleQueue()
        self.started: list[Started] = []
        self.finished: list[Finished] = []
        self.in_flight: dict[int, InFlight] = {}
        self.announced: set[int] = set()  # runs whose run.started event was sent
        # When the pids of launched runs must be written by; None: none expected.
        self.pids_due: float | None = None
        self.backlog = False  # the last claim left due runs behind
        self.filled_at: datetime | None = None  # a claim last filled every free worker
        self.next_scan = 0.0  # monotonic: when a claim next judges its whole window
        self.unreleased: list[int] = []  # taken back from the executor, not yet requeued
        # Since when (monotonic) the database answers; the current outage (monotonic
        # start, reason) or None.
        self.connected_since = time.monotonic()
        self.outage: tuple[float, str] | None = None
        self.fenced: set[int] = set()  # runs found no longer ours, already being stopped

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        self.scheduler_id = self.store.register_scheduler(str(self.runtime.settings.home))
        self.me = replace(self.me, scheduler=self.scheduler_id)
        self.clock.measure()
        # A live scheduler shifts interval jobs itself when the clock steps (iteration);
        # one that steps back while none runs is found here.  (Another scheduler that
        # steps in the few seconds before its next heartbeat could be counted twice.)
        step = step_while_stopped(self.store.latest_heartbeat(self.scheduler_id), self.now())
        if step is not None:
            self.planner.clock_stepped(step, self.now())
            self.store.forget_future_times(self.scheduler_id, self.now())
        for warning in recovery.identity_warnings(
            self.store, self.scheduler_id, self.now() - timedelta(seconds=self.lease)
        ):
            log.warning("%s", warning)
        try:
            takeover.take_over(self, self.executor.connect(self.scheduler_id))
        except KeeperError as exc:
            raise PonyError(f"cannot use the run keeper: {exc}") from None
        self.maintain(self.now())
        self.runtime.ready()
        self.planner.warm_up(self.now())
        backoff = 0.0
        while not self.runtime.stopping:
            try:
                self.iteration()
                if self.outage is not None:
                    self.database_back()
                backoff = 0.0
                pause = self.seconds_to_sleep()
            except DBAPIError as exc:
                # Locked, read-only, restarting: running jobs go on (their results are
                # written once it is back); we try again with a growing pause, at most
                # a quarter lease: others wait a lease for us to renew once it is back.
                backoff = min(max(backoff * 2, 0.5), 30.0, self.lease / 4)
                self.database_out(first_line(exc))
                self.kicked, pause = True, backoff
            except KeeperError as exc:
                takeover.keeper_lost(self, exc)
                pause = 0.0
            self.runtime.sleep(pause, self.executor.fileno())
        self.shutdown()

    def database_out(self, reason: str) -> None:
        """One warning per fault (a new reason is a new fault), not one per retry."""
        if self.outage is None:
            self.outage = (time.monotonic(), reason)
            log.warning("Database unavailable (%s); running jobs go on, retrying", reason)
        elif self.outage[1] != reason:
            self.outage = (self.outage[0], reason)
            log.warning("Database still unavailable (%s); retrying", reason)

    def database_back(self) -> None:
        assert self.outage is not None
        log.info(
            "Database available again after %s",
            format_duration(time.monotonic() - self.outage[0]),
        )
        self.outage, self.connected_since = None, time.monotonic()

    def may_judge_leases(self, mono: float) -> bool:
        """Whether expired leases may be declared lost yet: only after a whole lease of
        reaching the database (since this scheduler started, or since the database came
        back).  Every lease expires during an outage longer than a lease, and the
        schedulers and keepers that hold them need that long to renew them; without
        this, the first host back would declare the others' live runs lost.  A run whose
        scheduler is found dead here is settled at once all the same."""
        return self.outage is None and mono - self.connected_since >= self.lease

    def now(self) -> datetime:
        """The database's time, as far as this host can tell (UTC)."""
        return self.clock.now()

    def iteration(self) -> None:
        self.executor.poll()
        mono, host_now = time.monotonic(), utcnow()
        step = self.clock.stepped(mono, host_now)
        if step is not None:
            self.planner.clock_stepped(step, host_now + self.clock.offset)
            self.replan = self.kicked = self.upcoming_dirty = True
        now = host_now + self.clock.offset
        if mono >= self.next_heartbeat:
            self.next_heartbeat = mono + self.heartbeat_interval
            self.maintain(now)
        if mono >= self.next_poll:
            self.next_poll = mono + CHANGE_POLL
            changes = self.store.changes()
            if changes != self.changes:
                self.replan = self.kicked = self.upcoming_dirty = True
            self.changes = changes
        job_due = self.next_job_due is not None and now >= self.next_job_due
        if self.replan or job_due:
            self.replan, self.kicked = False, True
            if self.planner.plan_due_jobs(now):
                self.upcoming_dirty = True
            self.next_job_due = self.store.next_job_due()
        if self.kicked or (self.next_run_due is not None and now >= self.next_run_due):
            self.kicked = False
            self.next_run_due = self.dispatch(self.now())
        elif self.record_due(mono):
            self.record_results()
        self.release_waiting(mono)
        self.ping_watchdog(mono)

    def seconds_to_sleep(self) -> float:
        if self.kicked or self.replan:
            return 0.0
        mono, now = time.monotonic(), self.now()
        deadlines = [self.next_heartbeat, self.next_poll]
        if self.pids_due is not None:
            deadlines.append(self.pids_due)
        oldest = self.executor.oldest_pending()
        if oldest is not None:
            deadlines.append(oldest + AHEAD_WAIT)
        if self.runtime.watchdog_interval() is not None:
            deadlines.append(self.next_watchdog)
        for due in (self.next_job_due, self.next_run_due):
            if due is not None:
                deadlines.append(mono + (due - now).total_seconds())
        return max(0.0, min(deadlines) - mono)

    # -- runs into processes --------------------------------------------------------------
    def dispatch(self, now: datetime) -> datetime | None:
        """Claim and start what is due; return when to look at the queue again."""
        free = self.executor.free_slots()
        mono = time.monotonic()  # before the claim: how old its lease is when launched
        turning_over = mono - self.executor.last_finish < AHEAD_WINDOW
        limit = self.executor.free_slots(AHEAD if self.backlog and turning_over else 0)
        capacity = Capacity(
            self.started_at, self.executor.workers, saturated=free == 0, filled_at=self.filled_at
        )

        def admit(run: Run, job: runs.JobNow) -> runs.Admission:
            return runs.admit(run, job, capacity, now)

        # Even with no worker free, due runs past their start deadline expire, at the
        # latest by the next scan.
        scan = mono >= self.next_scan
        if scan:
            self.next_scan = mono + EXPIRY_SCAN_S
        claimed, waiting = self.record_results(
            ClaimRequest(now, limit, self.lease, admit, scan=scan)
        )
        self.backlog = waiting and limit > 0
        if waiting and free > 0 and len(claimed) >= free:
            self.filled_at = now  # every free worker got a run, and more were due
        for item in claimed:
            self.launch(item, now, mono)
        if claimed and self.pids_due is None:
            self.pids_due = time.monotonic() + PID_RECORD_DELAY
        waiting = waiting or free == 0
        upcoming = self.upcoming_runs(now)
        if waiting:
            # Due runs wait for a worker, the overlap policy or another scheduler.  A
            # finished run kicks us; looking again within a second covers the rest
            # without spinning.
            soon = now + timedelta(seconds=CHANGE_POLL)
            return min(upcoming, soon) if upcoming else soon
        return upcoming

    def upcoming_runs(self, now: datetime) -> datetime | None:
        if self.upcoming is not None and self.upcoming <= now:
            self.upcoming_dirty = True  # that one is due now; is there another after it?
        if self.upcoming_dirty:
            self.upcoming_dirty = False
            self.upcoming = self.store.next_run_due(after=now)
        return self.upcoming

    def launch(self, item: Claimed, now: datetime, claimed: float) -> None:
        run = item.run
        self.in_flight[run.id] = InFlight(run, item.epoch, now)
        try:
            from_file = environment.read_env_file(item.env_file) if item.env_file else {}
        except environment.EnvFileError as exc:
            self._not_started(run.id, str(exc))
            return
        argv = ("/bin/sh", "-c", item.command[0]) if item.shell else item.command
        environ = {
            **self.base_env,
            **item.env,
            **from_file,
            **environment.run_variables(
                run.job, run.id, run.attempt, run.occurrence, self.scheduler_id
            ),
        }
        log.debug("Run %d: starting job %s (attempt %d)", run.id, run.job, run.attempt)
        try:
            launch = Launch(
                run.id,
                argv,
                f"{self.output_dir}/{run.job}/{run.id}.log",
                environ,
                token=str(item.epoch),
                cwd=item.cwd,
                umask=item.umask,
                timeout_s=item.timeout_s,
                leftovers=item.leftovers,
                memory_max=item.memory_max,
                cpu_max=item.cpu_max,
                tasks_max=item.tasks_max,
                start_by=claimed + self.lease / 3,
                account_memory=self.account_memory,
            )
        except ValueError as exc:  # a stored job no run can start from (an older pb took
            # an empty program): that run fails with the reason; the scheduler goes on.
            self._not_started(
                run.id, f"cannot be started: {exc}; fix it with pb job edit {run.job}"
            )
            return
        self.executor.launch(launch, claimed)

    def _not_started(self, run_id: int, detail: str) -> None:
        """The claimed run `run_id` fails before any process: recorded with `detail`."""
        self.journal.put(Outcome(run_id, Ending.NOT_STARTED, self.now(), detail=detail))

    # -- executor callbacks (on this thread, from executor.poll) -------------------------
    def _started(self, started: Started) -> None:
        self.journal.put(started)
        # The pid is written soon (a restart needs it to stop an orphan), with the next
        # transaction; wake the loop only if it expects no pid and so has no deadline.
        if self.pids_due is None:
            self.runtime.wake()

    def _finished(self, outcome: Outcome) -> None:
        self.journal.put(outcome)

    def _kick(self) -> None:
        """A worker is free (executor thread): claim on the next iteration."""
        self.kicked = True
        self.runtime.wake()

    # -- results into the database ------------------------------------------------------------
    def record_due(self, mono: float) -> bool:
        """Whether reports are waiting that should not wait for the next claim."""
        if self.drain_journal() and self.pids_due is None:
            self.pids_due = mono + PID_RECORD_DELAY
        if self.finished:
            return True
        return self.pids_due is not None and mono >= self.pids_due

    def drain_journal(self) -> bool:
        """Take the executor's reports, settling each finished run; whether a pid came."""
        pids = False
        while not self.journal.empty():
            item = self.journal.get()
            if isinstance(item, Started):
                pids = True
                self.started.append(item)
                flight = self.in_flight.get(item.run_id)
                if flight is not None:
                    self.announce(item.run_id, flight.run.job, item.pid)
            elif (finished := self.settle(item)) is not None:
                self.finished.append(finished)
        return pids

    def announce(self, run_id: int, job: str, pid: int | None) -> None:
        """The run.started event, once per run: the keeper reports a start only for runs
        that last a moment, and a short run's outcome is its first news."""
        if run_id not in self.announced:
            self.announced.add(run_id)
            self.events.emit("run.started", {"run_id": run_id, "job": job, "pid": pid})

    def settle(self, outcome: Outcome) -> Finished | None:
        flight = self.in_flight.pop(outcome.run_id, None) or takeover.flight_of(self, outcome)
        if flight is None:
            return None
        run, now = flight.run, self.now()
        if outcome.ending is not Ending.NOT_STARTED:
            self.announce(run.id, run.job, outcome.pid)
        self.announced.discard(run.id)
        settlement = runs.settle(run, outcome, now, random.random(), flight.claimed_at)
        duration = settlement.duration_s(flight.claimed_at) or 0.0
        # Successes at debug level: `pb runs` keeps every run, and a line per success
        # cost a tenth of the daemon's time per run in the throughput benchmark.
        log.log(
            logging.DEBUG if settlement.state is RunState.SUCCEEDED else logging.INFO,
            "Run %d: job %s %s%s",
            run.id,
            run.job,
            settlement.state,
            f" ({settlement.reason})" if settlement.reason else "",
        )
        if settlement.next_attempt is not None and settlement.state is not RunState.INTERRUPTED:
            log.info(
                "Run %d: retry %d of %d at %s",
                run.id,
                run.attempt,
                run.policy.retries,
                settlement.next_attempt.due_at.isoformat(timespec="seconds"),
            )
        kind = "run.finished" if settlement.state is RunState.SUCCEEDED else "run.failed"
        self.events.emit(
            kind,
            {
                "run_id": run.id,
                "job": run.job,
                "state": str(settlement.state),
                "exit_code": settlement.exit_code,
                "duration_s": round(duration, 3),
            },
        )
        return Finished(run, flight.epoch, settlement, outcome, flight.claimed_at)

    def record_results(self, claim: ClaimRequest | None = None) -> tuple[list[Claimed], bool]:
        """Write what the executor reported and, given a request, claim due runs: one
        transaction.  Reports stay queued here while the database refuses them."""
        # Cleared before draining: a pid reported after the drain finds None and wakes
        # us (see _started), so it never waits without a deadline.
        self.pids_due = None
        self.drain_journal()
        if not self.started and not self.finished and claim is None:
            return [], False
        ours, claimed, waiting = self.store.record_and_claim(
            self.me, self.started, self.finished, claim
        )
        # Recorded (or refused and logged): the keeper may forget these outcomes.
        self.executor.ack(item.outcome.receipt or "" for item in self.finished if item.outcome)
        self.started, self.finished = [], []
        if any(item.settlement.next_attempt for item in ours):
            self.upcoming_dirty = self.kicked = True
        return claimed, waiting

    # -- upkeep -------------------------------------------------------------------------
    def maintain(self, now: datetime) -> None:
        """Heartbeat, lease renewal, rescue of runs whose scheduler died, removals."""
        self.clock.measure()
        self.store.check_file()
        self.store.heartbeat(self.clock.offset.total_seconds())
        held = self.store.renew_leases(self.scheduler_id, now, self.lease)
        self.executor.renewed()
        self.fence(held)
        home, judge = str(self.runtime.settings.home), self.may_judge_leases(time.monotonic())
        if recovery.abandoned(self.store, self.scheduler_id, home, now, judge):
            self.upcoming_dirty = self.kicked = True
        if self.store.removals_pending():
            for left in self.store.purge_removed(budget_s=PURGE_BUDGET_S).left:
                log.warning("Of a removed job: %s", left_line(left))
        self.events.emit(
            "heartbeat",
            {
                "pid": os.getpid(),
                "scheduler_id": self.scheduler_id,
                "running": self.executor.busy(),
            },
        )

    def fence(self, held: dict[int, int]) -> None:
        """Stop at once the runs this scheduler no longer owns: it was paused past its
        lease (SIGSTOP, a frozen VM) and another scheduler took them over or declared them
        lost.  Their outcome will be refused and logged; it must not run beside a retry."""
        self.fenced &= self.in_flight.keys()
        for run_id, flight in list(self.in_flight.items()):
            if held.get(run_id) != flight.epoch and run_id not in self.fenced:
                self.fenced.add(run_id)  # stopped once, logged once; its outcome follows
                log.error(
                    "Run %d (job %s) is no longer ours (epoch %d): its lease was taken "
                    "over while this scheduler was paused or cut off from the database; "
                    "stopping its processes",
                    run_id,
                    flight.run.job,
                    flight.epoch,
                )
                self.executor.kill(
                    run_id,
                    "the scheduler: its lease was taken over by another scheduler "
                    "while this one was paused or cut off from the database",
                )

    def ping_watchdog(self, mono: float) -> None:
        interval = self.runtime.watchdog_interval()
        if interval is not None and mono >= self.next_watchdog:
            self.runtime.watchdog()
            self.next_watchdog = mono + interval

    def release_waiting(self, mono: float) -> None:
        """Runs claimed ahead that waited AHEAD_WAIT for a worker go back to the queue."""
        self.unreleased += self.executor.take_back(handed_before=mono - AHEAD_WAIT)
        if self.unreleased:
            self.store.release_runs(
                [(run_id, self.in_flight[run_id].epoch) for run_id in self.unreleased]
            )
            log.debug("Released runs %s, claimed ahead and not started", self.unreleased)
            for run_id in self.unreleased:
                self.in_flight.pop(run_id, None)
            self.unreleased = []
            self.kicked = self.upcoming_dirty = True

    def shutdown(self) -> None:
        noticed = time.monotonic()
        log.info("Shutdown requested: no new work will be started")
        self.runtime.stopping_notice()
        self.unreleased += self.executor.take_back()
        if self.runtime.handing_over:
            takeover.hand_over(self)
            return
        busy = self.executor.busy()
        if busy:
            log.info(
                "Waiting up to %gs for %d running job(s) (a second signal stops them now)",
                self.runtime.settings.shutdown_grace,
                busy,
            )
        left = self.executor.drain(
            self.runtime.settings.shutdown_grace, lambda: self.runtime.stop_now, self._keep_up
        )
        if left:
            log.warning("Interrupted %d running job(s); they run again after the next start", left)
        if self.close_books(self.books_deadline(noticed)):
            self.executor.release_keeper()
        else:
            self.executor.hand_over()

    def books_deadline(self, noticed: float) -> float:
        """When a stop gives up recording (time.monotonic() seconds): BOOKS_BUDGET_S after
        the drain, and early enough that the stop ends within what `pb scheduler stop`
        and the systemd unit wait (the grace plus three kill graces from the signal,
        lifecycle/services.stop_timeout) even if one more attempt waits the whole SQLite
        busy timeout.  What is not recorded by then stays with the run keeper, durable,
        until the next start records it: a database locked or down makes the stop give
        up, not overrun (it waited ~3 minutes on a locked SQLite file)."""
        now = time.monotonic()
        stop_by = noticed + self.runtime.settings.shutdown_grace + 3 * KILL_GRACE_S
        return min(now + BOOKS_BUDGET_S, stop_by - SQLITE_BUSY_TIMEOUT_MS / 1000 - 2)

    def close_books(self, deadline: float | None = None) -> bool:
        """Record what is left, requeue runs claimed and not started, record the stop;
        no new attempt after `deadline` (time.monotonic() seconds).  Returns whether every
        outcome was recorded."""
        try:
            recovery.retrying(self.record_results, deadline=deadline)
            recovery.retrying(lambda: self.release_waiting(time.monotonic()), deadline=deadline)
            recovery.retrying(self.store.mark_stopped, attempts=3, deadline=deadline)
        except DBAPIError as exc:
            unrecorded = [item.run.id for item in self.finished]
            log.error(
                "Could not record the results of runs %s or the stop: %s; the run "
                "keeper keeps their outcomes, and renews their leases, until the next "
                "start records them: start this scheduler again once the database is "
                "back (until then those runs show running and hold their jobs)",
                unrecorded + self.unreleased,
                first_line(exc),
            )
            return not unrecorded and self.journal.empty()
        return True

    def _keep_up(self) -> None:
        """While draining: record results as they come, keep our leases alive.  After a
        failed write, none for KEEP_UP_PAUSE_S: on a locked SQLite file each waits out the
        busy timeout, and one per pass held a stop past its wait (review finding); the
        keeper renews the leases of a silent scheduler, and close_books tries again."""
        mono = time.monotonic()
        if mono < self.keep_up_after:
            return
        try:
            self.record_results()
            if mono >= self.next_heartbeat:
                self.next_heartbeat = mono + self.heartbeat_interval
                self.store.renew_leases(self.scheduler_id, self.now(), self.lease)
                # told, as in maintain(): else the keeper takes a draining scheduler for a
                # hung one after a third of a lease, and says so in its log
                self.executor.renewed()
        except DBAPIError:
            self.keep_up_after = time.monotonic() + KEEP_UP_PAUSE_S
