"""Turning due jobs into runs (the loop's side of occurrences.plan).

Jobs are read in batches and materialized in one transaction per batch, so that a
top-of-the-minute herd of thousands of jobs costs a handful of transactions and the loop
dispatches between batches.  A job whose schedule or definition this daemon cannot
evaluate (a zone its tz database lacks, a cron expression its croniter refuses, a
damaged row) is set aside: logged once, shown by `pb job list`, never fatal.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

from pony_scheduler.durations import format_duration
from pony_scheduler.errors import ConfigError
from pony_scheduler.scheduler import occurrences, runs
from pony_scheduler.store import Store
from pony_scheduler.store.jobs import DueJob, Materialize

if TYPE_CHECKING:
    from pony_scheduler.scheduler.clock import Step
    from pony_scheduler.scheduler.schedule import Schedule

log = logging.getLogger("pony_scheduler.scheduler")

# Due jobs materialized per transaction: small enough that the first runs of a herd start
# within milliseconds (the loop dispatches between batches), large enough to be cheap.
BATCH = 100
# What evaluating a stored schedule can raise when this daemon cannot read it.
UNREADABLE = (ConfigError, ValueError, LookupError, TypeError, OverflowError)


def _span(plan: occurrences.Plan) -> tuple[datetime, datetime]:
    """The first and last of a plan's missed occurrences that are not run (recorded as
    skipped or only counted): the ones `plan.missed` counts.  Raises ValueError when
    there are none."""
    moments = list(plan.skipped)
    if plan.uncounted is not None:
        moments += [plan.uncounted.first, plan.uncounted.last]
    return min(moments), max(moments)


# Jobs that share a schedule share its checking and, at one instant, its plan: both are
# pure, and at the top of the minute thousands of jobs ask the same question.
@lru_cache(maxsize=4096)
def _schedule(kind: str, expr: str, tz: str, anchor: str, offset: float) -> Schedule:
    from pony_scheduler.scheduler.schedule import from_dict

    return from_dict({"kind": kind, "expr": expr, "tz": tz, "anchor": anchor, "offset": offset})


_plan = lru_cache(maxsize=64)(occurrences.plan)  # entries of earlier instants are dead weight


class Planner:
    def __init__(self, store: Store, started_at: datetime) -> None:
        self.store = store
        self.started_at = started_at
        self.last_step: Step | None = None

    @staticmethod
    def warm_up(now: datetime) -> None:
        """Load the schedule code (croniter, dateutil, the zone database) and run it once,
        off the path of the first due occurrence: loaded there, it delayed the first run
        of a top-of-the-minute herd by tens of milliseconds (bench/bench_herd.py).  The
        loop calls it once, after it reports ready, so a start does not wait for it."""
        from pony_scheduler.scheduler.schedule import cron_schedule, jitter_offset, next_after

        next_after(cron_schedule("* * * * *", "UTC"), now)
        jitter_offset("warm-up", 60.0)

    def clock_stepped(self, step: Step, now: datetime) -> None:
        """Interval jobs follow elapsed time: their grid moves with the clock, so a step
        back does not stall them and a step forward does not fire a burst.  Cron and --at
        jobs follow the wall clock: an occurrence stepped over is missed (catch-up
        policy), and one stepped back over is not run twice (next_due_at only advances)."""
        direction = "forward" if step.by > timedelta(0) else "back"
        moved = self.store.shift_interval_jobs(step.by)
        log.warning(
            "The wall clock was stepped %s by %s; %d interval job(s) follow elapsed "
            "time, cron and --at jobs follow the clock",
            direction,
            format_duration(abs(step.by.total_seconds())),
            moved,
        )
        self.last_step = step

    def plan_due_jobs(self, now: datetime) -> bool:
        """Materialize the due occurrences of up to one batch of due jobs; whether any
        run was queued."""
        items = []
        for job in self.store.due_jobs(now, limit=BATCH):
            item = self.evaluate(job, now)
            if item is not None:
                items.append(item)
        if not items:
            return False
        self.store.materialize(items, now)
        return any(item.plan.to_run for item in items)

    def evaluate(self, job: DueJob, now: datetime) -> Materialize | None:
        """What occurrences.plan makes of a due job's occurrences; None, with the job set aside,
        when this daemon cannot evaluate its schedule or policy."""
        from pony_scheduler.scheduler.schedule import jitter_offset

        try:
            schedule = _schedule(
                job.kind, job.expr, job.tz, job.anchor, jitter_offset(job.name, job.jitter_s)
            )
            policy = runs.policy_from(
                job.retries,
                job.retry_delay_s,
                job.overlap,
                job.catch_up,
                job.start_deadline_s,
                job.max_queued,
            )
            queued = self.store.queued_count(job.id) if policy.overlap is runs.Overlap.QUEUE else 0
            plan = _plan(schedule, policy, job.next_due_at, now, queued)
        except UNREADABLE as exc:
            reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            log.error(
                "Job %s set aside: this scheduler cannot evaluate it (%s); other jobs "
                "go on, 'pb job edit %s' makes it run again",
                job.name,
                reason,
                job.name,
            )
            self.store.set_aside(job.id, reason)
            return None
        missed_reason = self.missed_reason(plan, now)
        if plan.missed:
            first, last = _span(plan)
            log.warning(
                "Job %s: %d occurrence(s) from %s to %s %s",
                job.name,
                plan.missed,
                first.isoformat(timespec="seconds"),
                last.isoformat(timespec="seconds"),
                missed_reason,
            )
        if plan.catch_up:
            log.info(
                "Job %s: %d missed occurrence(s) from %s to %s run now (catch-up)",
                job.name,
                len(plan.catch_up),
                min(plan.catch_up).isoformat(timespec="seconds"),
                max(plan.catch_up).isoformat(timespec="seconds"),
            )
        refused = f"skipped: {policy.max_queued} runs already queued (--max-queued)"
        if plan.refused:
            log.warning("Job %s: %s", job.name, refused)
        return Materialize(job.id, job.next_due_at, plan, missed_reason, refused)

    def missed_reason(self, plan: occurrences.Plan, now: datetime) -> str:
        """Why occurrences were missed, as far as this scheduler can tell."""
        moments = list(plan.skipped) + list(plan.catch_up)
        if plan.uncounted is not None:
            moments.append(plan.uncounted.last)
        if not moments:
            return "missed"
        latest = max(moments)
        step = self.last_step
        if step is not None and step.by > timedelta(0) and step.at - step.by <= latest:
            return (
                f"missed: the clock was stepped forward by "
                f"{format_duration(step.by.total_seconds())}"
            )
        if latest < self.started_at:
            return "missed: no scheduler was running at its time"
        behind = format_duration((now - min(moments)).total_seconds())
        return (
            f"missed: the scheduler was up to {behind} behind "
            "(busy, paused, frozen or without its database)"
        )
