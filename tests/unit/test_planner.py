"""The catch-up rules, with `now` passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pony_scheduler.scheduler.planner import plan
from pony_scheduler.scheduler.schedule import cron_schedule, every_schedule

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOURLY = cron_schedule("0 * * * *", "UTC")


def test_on_time_occurrence_runs() -> None:
    result = plan(HOURLY, "once", T0, T0 + timedelta(seconds=0.01))
    assert result.to_run == [T0] and result.skipped == []
    assert result.next_due == T0 + timedelta(hours=1)


def test_down_for_three_hours_once() -> None:
    now = T0 + timedelta(hours=3, minutes=30)
    result = plan(HOURLY, "once", T0, now)
    assert result.to_run == [T0 + timedelta(hours=3)]
    assert result.skipped == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    assert result.next_due == T0 + timedelta(hours=4)


def test_down_for_three_hours_skip_and_all() -> None:
    now = T0 + timedelta(hours=3, minutes=30)
    skip = plan(HOURLY, "skip", T0, now)
    assert skip.to_run == [] and len(skip.skipped) == 4
    everything = plan(HOURLY, "all", T0, now)
    assert everything.to_run == [T0 + timedelta(hours=h) for h in range(4)]
    assert everything.skipped == []


def test_back_just_in_time_once_runs_only_the_latest() -> None:
    now = T0 + timedelta(hours=2, seconds=5)  # the 14:00 one is on time
    result = plan(HOURLY, "once", T0, now)
    assert result.to_run == [T0 + timedelta(hours=2)]
    assert result.skipped == [T0, T0 + timedelta(hours=1)]


def test_interval_after_a_short_outage_does_not_burst() -> None:
    every = every_schedule("1s", T0 - timedelta(seconds=1))
    now = T0 + timedelta(seconds=30.5)
    result = plan(every, "once", T0, now)
    assert result.to_run == [T0 + timedelta(seconds=30)]
    assert len(result.skipped) == 30
    assert result.next_due == T0 + timedelta(seconds=31)
