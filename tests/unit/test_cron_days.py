"""Cron fields as crontab(5) and cronie define them: the day-of-month/day-of-week rule,
names, 7 = Sunday, ranges, steps and the extensions pb accepts (L, #n, ?, N/S)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pony_scheduler.errors import ConfigError
from pony_scheduler.scheduler.schedule import cron_schedule, due_between, next_after, upcoming


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def days(expr: str, after: datetime, count: int, tz: str = "UTC") -> list[str]:
    """The next `count` run days as 'Wed 2026-12-09'; checks due_between agrees."""
    schedule = cron_schedule(expr, tz)
    runs = [o.at for o in upcoming(schedule, after, count)]
    assert due_between(schedule, after, runs[-1], limit=10_000) == runs
    return [run.strftime("%a %Y-%m-%d") for run in runs]


NOV_30 = utc(2026, 11, 30)  # a Monday


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # The case: '*/2' begins with '*', so both fields must match.
        ("0 0 */2 * 3", ["Wed 2026-12-09", "Wed 2026-12-23", "Wed 2027-01-13"]),
        ("0 0 * * 3", ["Wed 2026-12-02", "Wed 2026-12-09", "Wed 2026-12-16"]),
        ("0 0 ? * 3", ["Wed 2026-12-02", "Wed 2026-12-09", "Wed 2026-12-16"]),  # ? is *
        ("0 0 1 * */2", ["Tue 2026-12-01", "Thu 2027-04-01", "Sat 2027-05-01"]),  # AND
        ("0 0 1 * *,3", ["Tue 2026-12-01", "Fri 2027-01-01", "Mon 2027-02-01"]),  # '*,3': AND
        # Both restricted: either matches.
        ("0 0 13 * 5", ["Fri 2026-12-04", "Fri 2026-12-11", "Sun 2026-12-13"]),
        ("0 0 1-31 * 3", ["Tue 2026-12-01", "Wed 2026-12-02", "Thu 2026-12-03"]),
        ("0 0 1 * 0-7", ["Tue 2026-12-01", "Wed 2026-12-02", "Thu 2026-12-03"]),
        ("0 0 1,15 * mon", ["Tue 2026-12-01", "Mon 2026-12-07", "Mon 2026-12-14"]),
        ("0 0 31 * 4", ["Thu 2026-12-03", "Thu 2026-12-10", "Thu 2026-12-17"]),
        ("0 0 L * 0", ["Sun 2026-12-06", "Sun 2026-12-13", "Sun 2026-12-20"]),
        ("0 0 1 * 5#2", ["Tue 2026-12-01", "Fri 2026-12-11", "Fri 2027-01-01"]),
        # Sunday is 0 and 7, names and ranges of names, case-insensitively.
        ("0 0 * * 7", ["Sun 2026-12-06", "Sun 2026-12-13", "Sun 2026-12-20"]),
        ("0 0 * * sat,SUN", ["Sat 2026-12-05", "Sun 2026-12-06", "Sat 2026-12-12"]),
        ("0 0 * * 5-7", ["Fri 2026-12-04", "Sat 2026-12-05", "Sun 2026-12-06"]),
        ("0 0 * * 1/1", ["Tue 2026-12-01", "Wed 2026-12-02", "Thu 2026-12-03"]),
        ("0 0 1 jan,jul *", ["Fri 2027-01-01", "Thu 2027-07-01", "Sat 2028-01-01"]),
        ("0 0 L feb *", ["Sun 2027-02-28", "Tue 2028-02-29", "Wed 2029-02-28"]),
        ("0 0 * * fri#1", ["Fri 2026-12-04", "Fri 2027-01-01", "Fri 2027-02-05"]),
        ("0 0 29 2 *", ["Tue 2028-02-29", "Sun 2032-02-29", "Fri 2036-02-29"]),
        ("0 0 30 2 1", ["Mon 2027-02-01", "Mon 2027-02-08", "Mon 2027-02-15"]),  # OR: Mondays
        ("@weekly", ["Sun 2026-12-06", "Sun 2026-12-13", "Sun 2026-12-20"]),
        ("@monthly", ["Tue 2026-12-01", "Fri 2027-01-01", "Mon 2027-02-01"]),
    ],
)
def test_day_fields(expr: str, expected: list[str]) -> None:
    assert days(expr, NOV_30, len(expected)) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("7 5-5 * * *", ["05:07"]),  # croniter alone reads 5-5 as *
        ("* 5-5/2 * * *", ["05:00", "05:01"]),
        ("50/5 * * * *", ["00:50", "00:55", "01:50"]),  # N/S: N to the end, every S
        ("10-20/10,55 0 * * *", ["00:10", "00:20", "00:55"]),
    ],
)
def test_ranges_and_steps(expr: str, expected: list[str]) -> None:
    runs = upcoming(cron_schedule(expr, "UTC"), NOV_30 - timedelta(seconds=1), len(expected))
    assert [o.at.strftime("%H:%M") for o in runs] == expected


def test_the_day_rule_follows_the_zone() -> None:
    """Days are those of the job's wall clock, not of UTC."""
    job = cron_schedule("30 0 */2 * 3", "Asia/Tokyo")  # 00:30 JST is 15:30 UTC the day before
    assert next_after(job, NOV_30) == utc(2026, 12, 8, 15, 30)  # Wed 9 Dec in Tokyo


def test_expressions_that_never_match_are_refused() -> None:
    for expr in ("0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2,4 *"):
        with pytest.raises(ConfigError, match="never matches a real date"):
            cron_schedule(expr, "UTC")


@pytest.mark.parametrize(
    ("hours", "every_hour"),
    [("*", True), ("*/1", True), ("0-23", True), ("1-23,0", True), ("3,*", True),
     ("*,*/1", True), ("1-23", False), ("*/2", False), ("2", False)],
)  # fmt: skip
def test_which_jobs_run_every_hour(hours: str, every_hour: bool) -> None:
    """Jobs that run every hour run in both passes of a repeated hour (see schedule.py)."""
    autumn = (utc(2026, 10, 24, 22), utc(2026, 10, 25, 22))  # the Berlin fall-back day
    runs = due_between(cron_schedule(f"0 {hours} * * *", "Europe/Berlin"), *autumn)
    second_pass = utc(2026, 10, 25, 1)  # 02:00 CET, after 02:00 CEST
    assert utc(2026, 10, 25, 0) in runs  # 02:00 CEST: every one of them runs at 02:00
    assert (second_pass in runs) is every_hour
