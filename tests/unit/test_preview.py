"""Previews and times as admins read them: upcoming runs with their daylight-saving marks,
a schedule moved to another zone, and times shown with their zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pony_scheduler.errors import ConfigError
from pony_scheduler.jobtimes import next_run_local, preview, preview_json, shown_zone, text
from pony_scheduler.scheduler.cron import dst_note
from pony_scheduler.scheduler.schedule import (
    Schedule,
    at_schedule,
    cron_schedule,
    every_schedule,
    manual_schedule,
    next_after,
    upcoming,
    with_zone,
)
from pony_scheduler.scheduler.timeparse import local_text


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def marked(expr: str, tz: str, after: datetime, count: int) -> list[tuple[str, str, str]]:
    """(local time with abbreviation, mark, note) of the next `count` runs."""
    schedule = cron_schedule(expr, tz)
    runs = upcoming(schedule, after, count)
    assert [o.at for o in runs][:1] == [next_after(schedule, after)]  # the same iteration
    return [(local_text(o.at, ZoneInfo(tz))[11:], o.dst, dst_note(o, tz)) for o in runs]


# ---------------------------------------------------------------- daylight-saving marks

BERLIN_SPRING = utc(2026, 3, 28, 23)  # 00:00 CET on the day clocks jump 02:00 -> 03:00
BERLIN_AUTUMN = utc(2026, 10, 24, 22)  # 00:00 CEST on the day clocks go 03:00 -> 02:00


def test_a_time_in_the_gap_is_moved() -> None:
    assert marked("30 2 * * *", "Europe/Berlin", BERLIN_SPRING, 2) == [
        ("03:00 CEST", "moved",
         "02:30 does not exist that day (clocks go forward); runs at 03:00, the end of the gap"),
        ("02:30 CEST", "", ""),
    ]  # fmt: skip


def test_a_jittered_time_in_the_gap_says_both_moves() -> None:
    """The gap moves the schedule's own time (to 03:00); the jitter comes after it (review
    finding: the note called the jittered time "the end of the gap")."""
    from pony_scheduler.scheduler.schedule import with_offset

    schedule = with_offset(cron_schedule("30 2 * * *", "Europe/Berlin"), 3 * 3600 + 120)
    (first, _) = upcoming(schedule, BERLIN_SPRING, 2)
    assert dst_note(first, "Europe/Berlin") == (
        "02:30 does not exist that day (clocks go forward); runs at 03:00, the end of the "
        "gap; its jitter moves the run to 06:02"
    )


def test_times_in_the_gap_are_merged() -> None:
    assert marked("*/30 2 * * *", "Europe/Berlin", BERLIN_SPRING, 1) == [
        ("03:00 CEST", "merged",
         "02:00 and 02:30 do not exist that day (clocks go forward); they run once at 03:00, "
         "the end of the gap"),
    ]  # fmt: skip
    assert marked("0 2,3 * * *", "Europe/Berlin", BERLIN_SPRING, 2) == [
        ("03:00 CEST", "merged",
         "02:00 does not exist that day (clocks go forward); runs once with 03:00"),
        ("02:00 CEST", "", ""),
    ]  # fmt: skip


def test_a_repeated_time_runs_once_unless_hourly() -> None:
    assert marked("30 2 * * *", "Europe/Berlin", BERLIN_AUTUMN, 2) == [
        ("02:30 CEST", "merged",
         "02:30 happens twice that day (clocks go back); runs once, at the first"),
        ("02:30 CET", "", ""),
    ]  # fmt: skip
    hourly = "02:00 happens twice that day (clocks go back); an hourly job runs in both"
    assert marked("0 * * * *", "Europe/Berlin", BERLIN_AUTUMN + timedelta(minutes=59), 4) == [
        ("01:00 CEST", "", ""),
        ("02:00 CEST", "repeated", hourly),
        ("02:00 CET", "repeated", hourly),
        ("03:00 CET", "", ""),
    ]


def test_lord_howe_moves_its_clocks_by_half_an_hour() -> None:
    # 5 Apr 2026 02:00 -> 01:30 (+11 -> +1030); 4 Oct 2026 02:00 -> 02:30.
    autumn = marked("*/20 1 * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 13), 6)
    assert [(time, mark) for time, mark, _ in autumn] == [
        ("01:00 +11", ""), ("01:20 +11", ""), ("01:40 +11", "merged"),
        ("01:00 +1030", ""), ("01:20 +1030", ""), ("01:40 +1030", ""),
    ]  # fmt: skip
    spring = marked("15 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 3, 13), 1)
    assert spring[0][:2] == ("02:30 +11", "moved")


# ---------------------------------------------------------------- every kind


def test_upcoming_for_every_kind() -> None:
    now = utc(2026, 6, 1, 8)
    grid = every_schedule("90m", utc(2026, 6, 1, 7, 59))
    assert [o.at for o in upcoming(grid, now, 3)] == [
        utc(2026, 6, 1, 9, 29), utc(2026, 6, 1, 10, 59), utc(2026, 6, 1, 12, 29)
    ]  # fmt: skip
    once = at_schedule("2026-12-01 09:00", "Europe/Berlin", now)
    assert [o.at for o in upcoming(once, now, 5)] == [utc(2026, 12, 1, 8)]
    assert upcoming(once, utc(2026, 12, 1, 8), 5) == []
    assert upcoming(manual_schedule(), now, 5) == []


def test_preview_rows_and_json() -> None:
    rows = preview(cron_schedule("30 2 * * *", "Europe/Berlin"), BERLIN_SPRING, 1)
    assert preview_json(rows) == [
        {"utc": "2026-03-29T01:00:00+00:00", "local": "2026-03-29T03:00:00+02:00",
         "abbr": "CEST", "dst": "moved",
         "note": "02:30 does not exist that day (clocks go forward); runs at 03:00, "
                 "the end of the gap"},
    ]  # fmt: skip
    assert text(rows[0].local) == "2026-03-29 03:00 CEST"
    assert text(rows[0].at) == "2026-03-29 01:00 UTC"
    for count in (0, 1001, -1):
        with pytest.raises(ConfigError, match="from 1 to 1000"):
            preview(manual_schedule(), BERLIN_SPRING, count)


# ---------------------------------------------------------------- another zone


def test_with_zone_keeps_the_cron_fields() -> None:
    moved = with_zone(cron_schedule("0 9 * * 1-5", "Europe/Berlin"), "Asia/Tokyo", NOW)
    assert moved == Schedule("cron", "0 9 * * 1-5", "Asia/Tokyo")


NOW = utc(2026, 6, 1, 8)


def test_with_zone_keeps_the_wall_clock_time_of_a_one_shot() -> None:
    once = at_schedule("2026-12-01 09:00", "Europe/Berlin", NOW)
    moved = with_zone(once, "America/New_York", NOW)
    assert moved == Schedule("at", "2026-12-01T14:00:00+00:00", "America/New_York")
    soon = at_schedule("+2h", "UTC", NOW)  # 10:00 UTC
    assert with_zone(soon, "America/New_York", NOW).expr == "2026-06-01T14:00:00+00:00"
    with pytest.raises(ConfigError, match=r"2026-06-01 10:00:00 in Asia/Tokyo .* is in the past"):
        with_zone(soon, "Asia/Tokyo", NOW)  # 10:00 in Tokyo was 01:00 UTC


def test_with_zone_refuses_what_has_no_zone_and_unknown_zones() -> None:
    with pytest.raises(ConfigError, match="not to every 1h"):
        with_zone(every_schedule("1h", NOW), "UTC", NOW)
    with pytest.raises(ConfigError, match="not to manual"):
        with_zone(manual_schedule(), "UTC", NOW)
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Base'"):
        with_zone(cron_schedule("@daily", "UTC"), "Mars/Base", NOW)


# ---------------------------------------------------------------- times shown with a zone


@pytest.mark.parametrize(
    ("moment", "tz", "shown"),
    [
        (utc(2026, 12, 1, 2), "Europe/Berlin", "2026-12-01 03:00 CET"),
        (utc(2026, 10, 25, 0, 30), "Europe/Berlin", "2026-10-25 02:30 CEST"),  # first pass
        (utc(2026, 10, 25, 1, 30), "Europe/Berlin", "2026-10-25 02:30 CET"),  # second pass
        (utc(2026, 12, 1, 2) + timedelta(seconds=5), "UTC", "2026-12-01 02:00:05 UTC"),
        (utc(2026, 12, 1, 2), "Asia/Dubai", "2026-12-01 06:00 +04"),  # numeric abbreviation
        # Moscow went back an hour in 2014 and called both sides MSK: the offset decides.
        (utc(2014, 10, 25, 21, 30), "Europe/Moscow", "2014-10-26 01:30 MSK +04:00"),
        (utc(2014, 10, 25, 22, 30), "Europe/Moscow", "2014-10-26 01:30 MSK +03:00"),
    ],
)
def test_local_text(moment: datetime, tz: str, shown: str) -> None:
    assert local_text(moment, ZoneInfo(tz)) == shown


def test_next_run_local_uses_the_jobs_zone() -> None:
    cron_job = {"next_run_at": "2026-12-01T02:00:00+00:00", "schedule_kind": "cron",
                "schedule_tz": "Europe/Berlin"}  # fmt: skip
    local = next_run_local(cron_job)
    assert local is not None and local.isoformat() == "2026-12-01T03:00:00+01:00"
    assert text(local) == "2026-12-01 03:00 CET"
    assert next_run_local({**cron_job, "next_run_at": None}) is None
    every_job = {**cron_job, "schedule_kind": "every", "schedule_tz": "UTC"}
    shown = next_run_local(every_job)  # the machine's zone, as `date` shows it
    assert shown == datetime(2026, 12, 1, 2, tzinfo=UTC).astimezone()
    assert shown_zone("cron", "Mars/Base") is None  # damaged: the machine's zone
    assert shown_zone("at", "Asia/Tokyo") == ZoneInfo("Asia/Tokyo")


@pytest.mark.parametrize(
    "when, said",
    [
        ("2027-03-28 02:30", "2027-03-28 02:30:00 does not exist in Europe/Berlin"),
        ("2027-10-31 02:30", "2027-10-31 02:30:00 happens twice in Europe/Berlin"),
        ("2027-06-01 09:00", None),
        ("2027-03-28T02:30:00+01:00", None),  # an offset says which instant
        ("+10m", None),
    ],
)
def test_an_at_time_daylight_saving_moved_or_doubled_is_named(when: str, said: str | None) -> None:
    from pony_scheduler.scheduler.timeparse import at_note, parse_at

    now = datetime(2026, 12, 1, tzinfo=UTC)
    note = at_note(when, "Europe/Berlin", parse_at(when, "Europe/Berlin", now))
    if said is None:
        assert note is None
    else:
        assert note is not None and said in note


def test_a_preview_stops_at_the_last_year_a_date_can_hold() -> None:
    """`pb job next -n 100` of `--every 36500d` ended in OverflowError's traceback (review
    finding): the list stops before year 10000, shorter than asked."""
    from pony_scheduler.scheduler import schedule

    start = datetime(2026, 12, 1, tzinfo=UTC)
    century = schedule.every_schedule("36500d", start)
    found = schedule.upcoming(century, start, 100)
    assert len(found) == 79 and found[-1].at.year == 9921
    jittered = schedule.with_offset(schedule.every_schedule("5200w", start), 5000 * 7 * 86400.0)
    assert 0 < len(schedule.upcoming(jittered, start, 1000)) < 1000
    yearly = schedule.cron_schedule("0 0 1 1 *", "UTC")
    assert [o.at.year for o in schedule.upcoming(yearly, datetime(9995, 6, 1, tzinfo=UTC), 9)] == [
        9996,
        9997,
        9998,
        9999,
    ]
