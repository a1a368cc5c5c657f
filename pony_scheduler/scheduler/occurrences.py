"""Occurrences into runs: which of a job's due occurrences become runs.  Pure.

  plan()                    which due occurrences become runs, which are recorded as
                            skipped and which are only counted (catch-up; systemd's
                            Persistent=, anacron)
  default_start_deadline()  the start deadline a schedule implies

`now` is passed in; nothing here reads a clock or a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pony_scheduler.scheduler.runs import MIN_DEADLINE, CatchUp, Overlap, Policy

if TYPE_CHECKING:
    from pony_scheduler.scheduler.schedule import Schedule

# The schedule maths (croniter, ~18 ms to import) is imported by the functions that use it.

RUN_CAP = 1000  # catch-up "all" runs at most this many missed occurrences per outage
RECORD_CAP = 1000  # missed occurrences recorded one by one; older ones only counted
DEFAULT_DEADLINE_CAP = 3600.0  # seconds: the longest default start deadline


def default_start_deadline(schedule: Schedule, now: datetime) -> float:
    """The start deadline of a job that gives none, in seconds.

    A run that cannot start before its job's next occurrence is due only competes with
    that one, so the default is the gap between the next two occurrences (an interval
    job's interval, a minutely cron job's minute), at least MIN_DEADLINE and at most
    DEFAULT_DEADLINE_CAP; jobs without a repeating schedule (--at, --manual) get the cap.
    """
    from pony_scheduler.scheduler.schedule import next_after

    first = next_after(schedule, now)
    second = next_after(schedule, first) if first is not None else None
    if first is None or second is None:
        return DEFAULT_DEADLINE_CAP
    gap = (second - first).total_seconds()
    return min(DEFAULT_DEADLINE_CAP, max(MIN_DEADLINE, gap))


# ---------------------------------------------------------------- occurrences into runs


@dataclass(frozen=True, slots=True)
class Missed:
    """Missed occurrences only counted, not recorded one by one (beyond RECORD_CAP)."""

    count: int
    first: datetime
    last: datetime


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with a job's due occurrences; all lists ascending, UTC."""

    to_run: tuple[datetime, ...] = ()
    catch_up: tuple[datetime, ...] = ()  # the members of to_run that were missed
    skipped: tuple[datetime, ...] = ()  # missed, and the catch-up policy said no
    refused: tuple[datetime, ...] = ()  # would run, but the --max-queued backlog is full
    uncounted: Missed | None = None  # missed beyond RECORD_CAP: counted only
    next_due: datetime | None = None

    @property
    def batch(self) -> bool:
        """Several runs from one decision: they run one after another."""
        return len(self.to_run) > 1

    @property
    def missed(self) -> int:
        return len(self.skipped) + (self.uncounted.count if self.uncounted else 0)


def plan(
    schedule: Schedule, policy: Policy, next_due: datetime, now: datetime, queued: int = 0
) -> Plan:
    """What becomes of a job's occurrences from `next_due` (due, not yet a run) to `now`.

    The latest due occurrence is on time if no more than the start deadline has passed
    since it; every other due occurrence was missed (no scheduler ran, or it fell
    behind).  The catch-up policy decides what happens to missed ones: skip records them
    all as skipped; once runs the most recent if none is on time (anacron, systemd
    Persistent=); all runs every one of them (the latest RUN_CAP) one after another.
    Missed occurrences not run are recorded as skipped, the latest RECORD_CAP of them;
    older ones are counted in `uncounted`, so none vanish.  `queued` is how many runs of
    the job wait already: with overlap "queue" at --max-queued, new runs are skipped.
    """
    from pony_scheduler.scheduler.schedule import count_between, due_between, next_after

    limit = RUN_CAP + RECORD_CAP
    listed = due_between(schedule, next_due, now, limit=limit)
    uncounted = None
    if len(listed) == limit and (beyond := count_between(schedule, next_due, now) - limit):
        # Only the latest `limit` were listed: next_due and the `beyond - 1` after it
        # are counted, never walked one by one again.
        uncounted = Missed(beyond + 1, next_due, _before(listed[0], schedule, next_due))
        due = listed
    else:
        due = [next_due, *listed]
    deadline = policy.start_deadline_s
    on_time = due[-1:] if deadline is None or (now - due[-1]).total_seconds() <= deadline else []
    late = due[: len(due) - len(on_time)]
    if policy.catch_up is CatchUp.ALL:
        run_late, skipped = late[-RUN_CAP:], late[:-RUN_CAP]
    elif policy.catch_up is CatchUp.ONCE and not on_time:
        run_late, skipped = late[-1:], late[:-1]
    else:
        run_late, skipped = [], late
    to_run, refused = run_late + on_time, []
    if to_run and policy.overlap is Overlap.QUEUE and queued >= policy.max_queued:
        to_run, run_late, refused = [], [], to_run
    if len(skipped) > RECORD_CAP:
        extra, skipped = skipped[:-RECORD_CAP], skipped[-RECORD_CAP:]
        uncounted = _merge(uncounted, Missed(len(extra), extra[0], extra[-1]))
    return Plan(
        tuple(to_run),
        tuple(run_late),
        tuple(skipped),
        tuple(refused),
        uncounted,
        next_after(schedule, max(now, due[-1])),
    )


def _before(moment: datetime, schedule: Schedule, floor: datetime) -> datetime:
    """The latest occurrence after `floor` and before `moment`, else `floor`."""
    from pony_scheduler.scheduler.schedule import due_between

    found = due_between(schedule, floor, moment - timedelta(microseconds=1), limit=1)
    return found[-1] if found else floor


def _merge(a: Missed | None, b: Missed) -> Missed:
    if a is None:
        return b
    return Missed(a.count + b.count, min(a.first, b.first), max(a.last, b.last))
