"""Which occurrences of a job become runs now: pure, with `now` passed in.

Normally exactly one occurrence is due and it runs.  When several are due at once, the
scheduler was down (or the machine asleep): all but the most recent were missed, and so
was the most recent if it is more than MISFIRE_GRACE late.  The job's catch-up policy
decides what happens to missed ones:
  skip  record them all as skipped, run none;
  once  run the most recent one, record the rest as skipped (anacron, systemd Persistent=);
  all   run every one of them (up to CATCH_UP_CAP, the rest skipped).
Occurrences within the grace are simply on time and run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pony_scheduler.scheduler.schedule import Schedule, due_between, next_after

MISFIRE_GRACE = timedelta(seconds=60)
CATCH_UP_CAP = 1000


@dataclass(frozen=True)
class Plan:
    to_run: list[datetime] = field(default_factory=list)
    skipped: list[datetime] = field(default_factory=list)
    next_due: datetime | None = None


def plan(schedule: Schedule, policy: str, next_due: datetime, now: datetime) -> Plan:
    """What to do with a job whose next occurrence `next_due` is at or before `now`."""
    due = [next_due, *due_between(schedule, next_due, now, limit=CATCH_UP_CAP + 1)]
    on_time = due[-1:] if now - due[-1] <= MISFIRE_GRACE else []
    late = due[: len(due) - len(on_time)]
    run_late, skipped = _catch_up(late, policy, has_on_time=bool(on_time))
    return Plan(to_run=run_late + on_time, skipped=skipped,
                next_due=next_after(schedule, max(now, due[-1])))


def _catch_up(late: list[datetime], policy: str,
              has_on_time: bool) -> tuple[list[datetime], list[datetime]]:
    if not late:
        return [], []
    if policy == "all":
        return late[-CATCH_UP_CAP:], late[:-CATCH_UP_CAP]
    if policy == "once" and not has_on_time:
        return late[-1:], late[:-1]
    return [], late  # "skip", or "once" with an on-time run that covers it
