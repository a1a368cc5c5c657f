"""The scheduler's two clock concerns: the database's time, and steps of the wall clock.

Leases and due times follow the database's clock, so that schedulers on hosts whose
clocks differ never disagree about them: a scheduler measures the offset between the
database's clock and its own at each heartbeat (store/clock.py) and adds it to its own.
A step of the wall clock (settimeofday, a VM resumed with a stale clock) is noticed by
comparing it with the monotonic clock, which only counts elapsed time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pony_scheduler.durations import format_duration
from pony_scheduler.scheduler import host
from pony_scheduler.store.common import utcnow

if TYPE_CHECKING:
    from pony_scheduler.lifecycle.runtime import ServiceRuntime
    from pony_scheduler.store import Store

log = logging.getLogger("pony_scheduler.scheduler")

CLOCK_STEP = 1.0  # seconds the wall clock may move apart from the monotonic clock
# How far this host's clock may be from the database's before the log says so.
CLOCK_WARN = timedelta(seconds=host.CLOCK_WARN_S)
CLOCK_WARN_CHANGE = timedelta(seconds=1)
CLOCK_PUBLISH = 0.5  # seconds the offset must move before scheduler.json is rewritten


@dataclass(frozen=True, slots=True)
class Step:
    """The wall clock moved by `by` relative to elapsed time, seen at `at` (UTC)."""

    by: timedelta
    at: datetime


def step_while_stopped(last_heartbeat: datetime | None, now: datetime) -> Step | None:
    """A step back of the clock that no scheduler saw (it came while none ran): the
    latest heartbeat an earlier scheduler wrote (`last_heartbeat`, database time) lies
    more than CLOCK_STEP ahead of `now`.  The Step is by `now - last_heartbeat`, the
    downtime counted as none (it cannot be told); interval jobs then move back as for a
    step seen live, instead of waiting out the difference (README, "Clock steps").  A
    step forward meanwhile looks like downtime: its occurrences are missed (catch-up).
    None when there is nothing to correct."""
    if last_heartbeat is None or (last_heartbeat - now).total_seconds() <= CLOCK_STEP:
        return None
    return Step(now - last_heartbeat, now)


class ClockWatch:
    """Notices steps of the wall clock by comparing it with the monotonic clock."""

    def __init__(self) -> None:
        self.offset: float | None = None  # wall - monotonic, seconds

    def step(self, mono: float, now: datetime) -> Step | None:
        """The step since the last call, if the clocks moved apart by over CLOCK_STEP."""
        offset = now.timestamp() - mono
        previous, self.offset = self.offset, offset
        if previous is None or abs(offset - previous) <= CLOCK_STEP:
            return None
        return Step(timedelta(seconds=offset - previous), now)


class DatabaseClock:
    """The database's time as this host can tell it, and the steps that matter to it."""

    def __init__(self, store: Store, runtime: ServiceRuntime) -> None:
        self.store = store
        self.runtime = runtime
        self.offset = timedelta(0)  # the database's clock minus this host's
        self.published: float | None = None  # in scheduler.json, for `status`
        self.watch = ClockWatch()

    def now(self) -> datetime:
        """The database's time, as far as this host can tell (UTC)."""
        return utcnow() + self.offset

    def measure(self) -> None:
        """Measure the offset again (a query on PostgreSQL); warn when it is large or
        moved.  Raises what the database raises (DBAPIError)."""
        offset = timedelta(seconds=self.store.clock_offset())
        moved = abs(offset - self.offset) > CLOCK_WARN_CHANGE
        if moved and abs(offset) <= CLOCK_WARN:
            log.info("This host's clock agrees with the database's again")
        elif moved or (self.offset == timedelta(0) and abs(offset) > CLOCK_WARN):
            ahead = "ahead of" if offset < timedelta(0) else "behind"
            log.warning(
                "This host's clock is %s %s the database's; leases and due times "
                "follow the database's clock (check the host's time sync)",
                format_duration(abs(offset.total_seconds())),
                ahead,
            )
        self.offset = offset
        self._publish()

    def _publish(self) -> None:
        """Put the offset in scheduler.json, which `pb scheduler status` reads (it must
        not touch the database); only when it moved, and only for PostgreSQL (SQLite has
        no clock of its own)."""
        seconds = round(self.offset.total_seconds(), 1)
        if not self.store.has_clock or (
            self.published is not None and abs(seconds - self.published) < CLOCK_PUBLISH
        ):
            return
        self.published = seconds
        self.runtime.update_metadata(clockOffsetS=seconds)

    def stepped(self, mono: float, host_now: datetime) -> Step | None:
        """A step of the database's time as this host sees it since the last call, if
        over CLOCK_STEP: the host's step plus how far the offset moved with it (a step
        of only this host's clock is made good by the offset, and only logged)."""
        step = self.watch.step(mono, host_now)
        if step is None:
            return None
        before = self.offset
        self.measure()  # did the database's clock step too, or only ours?
        moved = step.by + (self.offset - before)
        if abs(moved.total_seconds()) > CLOCK_STEP:
            return replace(step, by=moved)
        log.warning(
            "This host's clock was stepped by %s; the database's clock, which "
            "decides, did not move",
            format_duration(step.by.total_seconds()),
        )
        return None
