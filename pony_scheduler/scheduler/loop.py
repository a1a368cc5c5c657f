"""The scheduler's work loop.

It sleeps until the next due time, a wake-up (a finished job, a signal) or the next
once-a-second look at the change counter that `pb job …` bumps; it never scans the jobs
table in a tight loop.  Every database call is its own short transaction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import socket
import time
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError

from pony_scheduler.lifecycle.runtime import ServiceRuntime
from pony_scheduler.runstate import RETRYABLE, RunState
from pony_scheduler.scheduler import recovery
from pony_scheduler.scheduler.executor import Executor
from pony_scheduler.scheduler.planner import plan
from pony_scheduler.scheduler.schedule import backoff_delay, from_dict
from pony_scheduler.store import Store
from pony_scheduler.store.common import first_line, utcnow

log = logging.getLogger("pony_scheduler.scheduler")

HEARTBEAT_INTERVAL = 5.0  # seconds between heartbeats and lease renewals
LEASE = 60.0  # seconds a claimed run stays ours without a heartbeat
CHANGE_POLL = 1.0  # seconds between looks at the change counter
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
SERVICE_MANAGER_VARS = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                  "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"})


class Events(Protocol):
    def emit(self, type: str, data: dict[str, Any]) -> None: ...


class WorkLoop:
    def __init__(self, store: Store, runtime: ServiceRuntime, events: Events) -> None:
        self.store = store
        self.runtime = runtime
        self.events = events
        self.hostname = socket.gethostname()
        settings = runtime.settings
        self.executor = Executor(settings.home, settings.workers, self._started, self._finished,
                                 self._kick)
        self.scheduler_id = ""
        self.changes = -1
        # systemd's variables describe the scheduler, not its jobs: a job that answered
        # NOTIFY_SOCKET would speak for us.
        self.base_env = {k: v for k, v in os.environ.items() if k not in SERVICE_MANAGER_VARS}
        self.replan = True  # jobs changed: turn due occurrences into runs, recompute
        self.kicked = True  # runs changed (finished, queued): claim what is due
        self.next_job_due: datetime | None = None
        self.next_run_due: datetime | None = None
        # Queued runs due later (retries waiting out their delay) appear only through a
        # change, a retry or a rescue: look them up again only then, not after every claim.
        self.upcoming_dirty = True
        self.upcoming: datetime | None = None
        self.next_heartbeat = self.next_poll = self.next_watchdog = 0.0
        # What workers report (started, finished) waits here until the loop records it in
        # one transaction per iteration; it stays here while the database is unavailable.
        self.journal: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self.unrecorded: list[tuple[str, dict[str, Any]]] = []
        # When the pids of launched runs must be written by; None: none expected.
        self.pids_due: float | None = None
        self.backlog = False  # the last claim left due runs behind
        self.unreleased: list[int] = []  # taken back from the executor, not yet requeued

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        self.scheduler_id = self.store.register_scheduler()
        self.maintain(utcnow())
        self.runtime.ready()
        backoff = 0.0
        while not self.runtime.stopping:
            try:
                self.iteration()
                backoff = 0.0
                pause = self.seconds_to_sleep()
            except DBAPIError as exc:
                # Locked, read-only, restarting: running jobs go on (their results are
                # written with retries); we try again with a growing pause.
                backoff = min(max(backoff * 2, 0.5), 30.0)
                log.warning("Database unavailable (%s); retrying in %.1fs", first_line(exc),
                            backoff)
                self.kicked, pause = True, backoff
            self.runtime.sleep(pause)
        self.shutdown()

    def iteration(self) -> None:
        mono, now = time.monotonic(), utcnow()
        if mono >= self.next_heartbeat:
            self.next_heartbeat = mono + HEARTBEAT_INTERVAL
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
            self.plan_due_jobs(now)
            self.next_job_due = self.store.next_job_due()
        if self.kicked or (self.next_run_due is not None and now >= self.next_run_due):
            self.kicked = False
            self.next_run_due = self.dispatch(utcnow())
        elif self.record_due(mono):
            self.record_results()
        self.release_waiting(mono)
        self.ping_watchdog(mono)

    def seconds_to_sleep(self) -> float:
        if self.kicked or self.replan:
            return 0.0
        mono, now = time.monotonic(), utcnow()
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

    # -- schedules into runs, runs into processes ---------------------------------------------
    def plan_due_jobs(self, now: datetime) -> None:
        for job in self.store.due_jobs(now):
            schedule = from_dict({"kind": job["schedule_kind"], "expr": job["schedule_expr"],
                                  "tz": job["schedule_tz"], "anchor": job["schedule_anchor"]})
            result = plan(schedule, job["catch_up"], job["next_due_at"], now)
            if result.skipped:
                log.warning("Job %s: %d occurrence(s) missed recorded as skipped",
                            job["name"], len(result.skipped))
            self.store.materialize(job["id"], job["next_due_at"], result.to_run,
                                   result.skipped, result.next_due)

    def dispatch(self, now: datetime) -> datetime | None:
        """Claim and start what is due; return when to look at the queue again."""
        free = self.executor.free_slots()
        turning_over = time.monotonic() - self.executor.last_finish < AHEAD_WINDOW
        limit = self.executor.free_slots(AHEAD if self.backlog and turning_over else 0)
        claimed, waiting = self.record_results((now, limit, LEASE) if limit else None)
        self.backlog = waiting and limit > 0
        for run in claimed:
            self.executor.launch(self._prepare(run))
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

    def _prepare(self, run: dict[str, Any]) -> dict[str, Any]:
        command = json.loads(run["command"])
        run["argv"] = ["/bin/sh", "-c", command[0]] if run["shell"] else command
        run["environ"] = {**self.base_env, **json.loads(run["env"] or "{}"),
                          "PONYBUNNY_JOB": run["name"], "PONYBUNNY_RUN_ID": str(run["id"]),
                          recovery.SCHEDULER_VAR: self.scheduler_id}
        run["claimed_at"] = utcnow()
        log.debug("Run %d: starting job %s (attempt %d)", run["id"], run["name"],
                  run["attempt"])
        return run

    # -- executor callbacks (executor threads) -------------------------------------------
    def _started(self, run: dict[str, Any]) -> None:
        self.journal.put(("started", {"run": run, "pid": run["pid"],
                                      "pid_start": run["pid_start"],
                                      "output_path": run["output_path"]}))
        # The pid is written soon (a restart needs it to stop an orphan), with the next
        # transaction; wake the loop only if it expects no pid and so has no deadline.
        if self.pids_due is None:
            self.runtime.wake()
        self.events.emit("run.started", {"run_id": run["id"], "job": run["name"],
                                         "attempt": run["attempt"], "pid": run["pid"]})

    def _finished(self, run: dict[str, Any], state: RunState, code: int | None,
                  reason: str | None, tail: str) -> None:
        now = utcnow()
        self.journal.put(("finished", {"run": run, "state": state, "exit_code": code,
                                       "reason": reason, "tail": tail, "finished_at": now,
                                       "next_attempt": self.next_attempt(run, state, now)}))
        duration = (now - run["claimed_at"]).total_seconds()
        # Successes at debug level: `pb runs` keeps every run, and a line per success
        # cost a tenth of the daemon's time per run in the throughput benchmark.
        log.log(logging.DEBUG if state is RunState.SUCCEEDED else logging.INFO,
                "Run %d: job %s %s%s", run["id"], run["name"], state,
                f" ({reason})" if reason else "")
        kind = "run.finished" if state is RunState.SUCCEEDED else "run.failed"
        self.events.emit(kind, {"run_id": run["id"], "job": run["name"], "state": str(state),
                                "exit_code": code, "duration_s": round(duration, 3)})

    def _kick(self) -> None:
        """A worker is free (executor thread): claim on the next iteration."""
        self.kicked = True
        self.runtime.wake()

    @staticmethod
    def next_attempt(run: dict[str, Any], state: RunState,
                     now: datetime) -> tuple[datetime, str] | None:
        """What a result calls for: a resume after a shutdown, a retry after a failure."""
        if state is RunState.INTERRUPTED:
            return now, "resume"
        if state in RETRYABLE and run["attempt"] <= run["retries"]:
            delay = backoff_delay(run["attempt"], run["retry_delay_s"], rand=random.random())
            log.info("Run %d: retry %d of %d in %.1fs", run["id"], run["attempt"],
                     run["retries"], delay)
            return now + timedelta(seconds=delay), "retry"
        return None

    def record_due(self, mono: float) -> bool:
        """Whether reports are waiting that should not wait for the next claim."""
        if self.drain_journal() and self.pids_due is None:
            self.pids_due = mono + PID_RECORD_DELAY
        if any(kind == "finished" for kind, _ in self.unrecorded):
            return True
        return self.pids_due is not None and mono >= self.pids_due

    def drain_journal(self) -> bool:
        """Move reports from the journal to `unrecorded`; whether a pid came in."""
        pids = False
        while not self.journal.empty():
            item = self.journal.get()
            pids = pids or item[0] == "started"
            self.unrecorded.append(item)
        return pids

    def record_results(self, claim: tuple[datetime, int, float] | None = None,
                       ) -> tuple[list[dict[str, Any]], bool]:
        """Write what workers reported and, given (now, limit, lease), claim due runs: one
        transaction.  Reports stay in `unrecorded` while the database refuses them."""
        # Cleared before draining: a pid reported after the drain finds None and wakes
        # us (see _started), so it never waits without a deadline.
        self.pids_due = None
        self.drain_journal()
        if not self.unrecorded and claim is None:
            return [], False
        started = [item for kind, item in self.unrecorded if kind == "started"]
        finished = [item for kind, item in self.unrecorded if kind == "finished"]
        ours, claimed, waiting = self.store.record_and_claim(
            self.scheduler_id, self.hostname, started, finished, claim)
        self.unrecorded.clear()
        if any(item["next_attempt"] for item in ours):
            self.upcoming_dirty = self.kicked = True
        return claimed, waiting

    # -- upkeep -------------------------------------------------------------------------
    def maintain(self, now: datetime) -> None:
        """Heartbeat, lease renewal, and rescue of runs whose scheduler died."""
        self.store.heartbeat()
        self.store.renew_leases(self.scheduler_id, now, LEASE)
        for run, state in recovery.abandoned(self.store, self.scheduler_id, now):
            attempt = self.next_attempt(run, state, now)
            if attempt is not None:
                self.store.queue_attempt(run, *attempt)
                self.upcoming_dirty = self.kicked = True
        self.events.emit("heartbeat", {"pid": os.getpid(), "scheduler_id": self.scheduler_id,
                                       "running": self.executor.busy()})

    def ping_watchdog(self, mono: float) -> None:
        interval = self.runtime.watchdog_interval()
        if interval is not None and mono >= self.next_watchdog:
            self.runtime.watchdog()
            self.next_watchdog = mono + interval

    def release_waiting(self, mono: float) -> None:
        """Runs claimed ahead that waited AHEAD_WAIT for a worker go back to the queue."""
        stale = self.executor.take_back(handed_before=mono - AHEAD_WAIT)
        self.unreleased += [run["id"] for run in stale]
        if self.unreleased:
            self.store.release_runs(self.scheduler_id, self.unreleased)
            log.debug("Released runs %s, claimed ahead and not started", self.unreleased)
            self.unreleased = []
            self.kicked = self.upcoming_dirty = True

    def shutdown(self) -> None:
        log.info("Shutdown requested: no new work will be started")
        self.runtime.stopping_notice()
        self.unreleased += [run["id"] for run in self.executor.take_back()]
        busy = self.executor.busy()
        if busy:
            log.info("Waiting up to %gs for %d running job(s) (a second signal stops them "
                     "now)", self.runtime.settings.shutdown_grace, busy)
        left = self.executor.drain(self.runtime.settings.shutdown_grace,
                                   lambda: self.runtime.stop_now, self._keep_up)
        if left:
            log.warning("Interrupted %d running job(s); they run again after the next start",
                        left)
        try:
            recovery.retrying(self.record_results)
            recovery.retrying(lambda: self.release_waiting(time.monotonic()))
            recovery.retrying(self.store.mark_stopped, attempts=3)
        except DBAPIError as exc:
            lost = [item["run"]["id"] for _, item in self.unrecorded] + self.unreleased
            log.error("Could not record the results of runs %s or the stop: %s; those runs "
                      "will be found lost when their lease expires", lost, first_line(exc))

    def _keep_up(self) -> None:
        """While draining: record results as they come, keep our leases alive."""
        with contextlib.suppress(DBAPIError):  # the next call tries again
            self.record_results()
        mono = time.monotonic()
        if mono >= self.next_heartbeat:
            self.next_heartbeat = mono + HEARTBEAT_INTERVAL
            with contextlib.suppress(DBAPIError):
                self.store.renew_leases(self.scheduler_id, utcnow(), LEASE)

