"""Pure schedule maths: cron, zones, daylight saving, intervals, one-shots, catch-up.

`now` is always passed in; nothing here reads the clock or touches a database.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pony_scheduler.durations import format_duration, parse_duration
from pony_scheduler.errors import EXIT_USAGE, ConfigError
from pony_scheduler.scheduler.schedule import (
    Schedule,
    at_schedule,
    backoff_delay,
    check_zone,
    cron_schedule,
    describe,
    due_between,
    every_schedule,
    from_dict,
    manual_schedule,
    next_after,
    validate_job_name,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
# 2026 transitions: Berlin 29 Mar 02:00->03:00 and 25 Oct 03:00->02:00;
# New York 8 Mar 02:00->03:00 and 1 Nov 02:00->01:00.
DST_DAYS = {
    ("Europe/Berlin", "spring"): (2026, 3, 29),
    ("Europe/Berlin", "autumn"): (2026, 10, 25),
    ("America/New_York", "spring"): (2026, 3, 8),
    ("America/New_York", "autumn"): (2026, 11, 1),
}


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def day_bounds(tz: str, season: str) -> tuple[datetime, datetime]:
    """Local midnight to local midnight of the transition day, as aware datetimes."""
    start = datetime(*DST_DAYS[(tz, season)], tzinfo=ZoneInfo(tz))
    return start, start + timedelta(days=1)  # wall-clock arithmetic: next local midnight


def shown(instants: list[datetime], tz: str) -> list[str]:
    """Local wall time with its offset, e.g. '02:30+0200', to read DST results."""
    return [i.astimezone(ZoneInfo(tz)).strftime("%H:%M%z") for i in instants]


def chain(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Occurrences in (start, end] found by repeated next_after."""
    found: list[datetime] = []
    moment = next_after(schedule, start)
    while moment is not None and moment <= end:
        found.append(moment)
        moment = next_after(schedule, moment)
    return found


def message(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.exit_code == EXIT_USAGE
    text = str(info.value)
    assert len(text.splitlines()) == 1 and "\n" not in text, text
    return text


# ---------------------------------------------------------------- cron


def test_cron_next_is_strictly_after() -> None:
    every5 = cron_schedule("*/5 * * * *", "UTC")
    assert next_after(every5, utc(2026, 1, 1, 10, 2)) == utc(2026, 1, 1, 10, 5)
    assert next_after(every5, utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 10, 10)
    almost = utc(2026, 1, 1, 10, 4, 59).replace(microsecond=999999)
    assert next_after(every5, almost) == utc(2026, 1, 1, 10, 5)
    result = next_after(every5, datetime(2026, 1, 1, 11, 2, tzinfo=BERLIN))
    assert result == utc(2026, 1, 1, 10, 5) and result.tzinfo is UTC


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("@hourly", utc(2026, 1, 1, 10, 30), utc(2026, 1, 1, 11)),
        ("@daily", utc(2026, 1, 1, 10), utc(2026, 1, 2)),
        ("@midnight", utc(2026, 1, 1, 10), utc(2026, 1, 2)),
        ("@weekly", utc(2026, 1, 1), utc(2026, 1, 4)),  # Sunday
        ("@monthly", utc(2026, 1, 15), utc(2026, 2, 1)),
        ("@yearly", utc(2026, 1, 15), utc(2027, 1, 1)),
        ("@annually", utc(2026, 1, 15), utc(2027, 1, 1)),
        ("@DAILY", utc(2026, 1, 1, 10), utc(2026, 1, 2)),
        ("0 9 * JAN,FEB MON-FRI", utc(2026, 1, 2, 10), utc(2026, 1, 5, 9)),
        ("0 9 * * 7", utc(2026, 1, 1), utc(2026, 1, 4, 9)),  # 7 is Sunday too
        ("0 0 13 * 5", utc(2026, 2, 1), utc(2026, 2, 6)),  # day-of-month OR day-of-week
        ("0 0 29 2 *", utc(2026, 1, 1), utc(2028, 2, 29)),
        ("30 4 1-10/3 * *", utc(2026, 1, 2), utc(2026, 1, 4, 4, 30)),
    ],
)
def test_cron_fields_and_macros(expr: str, after: datetime, expected: datetime) -> None:
    assert next_after(cron_schedule(expr, "UTC"), after) == expected


def test_cron_keeps_expression_and_zone() -> None:
    schedule = cron_schedule("  */5  *\t* * * ", "Europe/Berlin")
    assert schedule == Schedule("cron", "*/5 * * * *", "Europe/Berlin")
    assert describe(schedule) == "cron '*/5 * * * *' (Europe/Berlin)"
    assert cron_schedule("@Daily", "UTC").expr == "@daily"


def test_cron_runs_in_its_zone() -> None:
    nine = cron_schedule("0 9 * * *", "Europe/Berlin")
    assert next_after(nine, utc(2026, 1, 10)) == utc(2026, 1, 10, 8)  # CET, +01:00
    assert next_after(nine, utc(2026, 7, 10)) == utc(2026, 7, 10, 7)  # CEST, +02:00
    assert next_after(cron_schedule("0 9 * * *", "America/New_York"), utc(2026, 1, 10)) == utc(
        2026, 1, 10, 14
    )


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("61 * * * *", "minute field '61' is out of range 0-59"),
        ("* 24 * * *", "hour field '24' is out of range 0-23"),
        ("* * 0 * *", "day-of-month field '0' is out of range 1-31"),
        ("* * 32 * *", "day-of-month field '32' is out of range 1-31"),
        ("* * * 13 *", "month field '13' is out of range 1-12"),
        ("* * * * 8", "day-of-week field '8' is out of range 0-7"),
        ("1,61 * * * *", "minute field '1,61': '61' is out of range 0-59"),
        ("*/0 * * * *", "minute field '*/0': step '0' must be a whole number from 1 to 60"),
        ("*/61 * * * *", "step '61' must be a whole number from 1 to 60"),
        ("* * * * 1-5#2", "not cron syntax croniter understands"),
        ("5-1 * * * *", "minute field '5-1': range '5-1' runs backwards"),
        ("a * * * *", "minute field 'a' is not a number"),
        ("* * * * FUNDAY", "day-of-week field 'FUNDAY' is not a number or a name such as SUN"),
        ("* * * BRUMAIRE *", "month field 'BRUMAIRE' is not a number or a name such as JAN"),
        ("1,,2 * * * *", "minute field '1,,2'"),
        ("* * * *", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("* * * * * *", "6 fields given, but seconds and years are not supported"),
        ("0 * * * * * 2026", "7 fields given"),
        ("0 0 30 2 *", "never matches a real date"),
        ("0 0 31 4,6 *", "never matches a real date"),
        ("* * * * 1#9", "the number after '#' must be 1-5"),
    ],
)
def test_cron_errors_name_the_field(expr: str, expected: str) -> None:
    text = message(lambda: cron_schedule(expr, "UTC"))
    assert text.startswith(f"invalid cron expression '{expr}': ")
    assert expected in text


def test_cron_exact_messages() -> None:
    assert message(lambda: cron_schedule("61 * * * *", "UTC")) == (
        "invalid cron expression '61 * * * *': minute field '61' is out of range 0-59"
    )
    assert message(lambda: cron_schedule("@reboot", "UTC")) == (
        "unknown cron macro '@reboot'; use @yearly, @annually, @monthly, @weekly, @daily, "
        "@midnight or @hourly"
    )
    assert "unknown time zone 'Mars/Base'" in message(
        lambda: cron_schedule("* * * * *", "Mars/Base")
    )


# ---------------------------------------------------------------- daylight saving


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
def test_spring_gap_runs_once_at_the_next_valid_instant(tz: str) -> None:
    start, end = day_bounds(tz, "spring")
    daily = cron_schedule("30 2 * * *", tz)  # 02:30 does not exist that day
    assert shown(due_between(daily, start, end), tz) == [
        "03:00+0200" if tz == "Europe/Berlin" else "03:00-0400"
    ]
    # A job due at both the skipped hour and the next one still runs once at 03:00.
    assert len(due_between(cron_schedule("0 2,3 * * *", tz), start, end)) == 1
    # The days around it are untouched.
    assert shown(due_between(daily, end, end + timedelta(days=1)), tz)[0][:5] == "02:30"


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
def test_repeated_hour_runs_once_for_a_daily_job(tz: str) -> None:
    start, end = day_bounds(tz, "autumn")
    hour = 2 if tz == "Europe/Berlin" else 1  # the wall hour that happens twice
    daily = cron_schedule(f"30 {hour} * * *", tz)
    first_pass = "02:30+0200" if tz == "Europe/Berlin" else "01:30-0400"
    assert shown(due_between(daily, start, end), tz) == [first_pass]
    assert shown(chain(daily, start, end), tz) == [first_pass]


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
def test_hourly_jobs_follow_real_time(tz: str) -> None:
    spring, autumn = day_bounds(tz, "spring"), day_bounds(tz, "autumn")
    hourly = cron_schedule("0 * * * *", tz)
    assert len(due_between(hourly, *spring)) == 23  # the day has 23 real hours
    assert len(due_between(hourly, *autumn)) == 25  # ... and 25
    runs = due_between(hourly, *autumn)
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(runs))
    repeated = "02:00" if tz == "Europe/Berlin" else "01:00"
    assert [s for s in shown(runs, tz) if s.startswith(repeated)] == (
        ["02:00+0200", "02:00+0100"] if tz == "Europe/Berlin" else ["01:00-0400", "01:00-0500"]
    )


def test_half_hourly_across_both_berlin_transitions() -> None:
    job = cron_schedule("*/30 * * * *", "Europe/Berlin")
    spring = due_between(job, utc(2026, 3, 29, 0), utc(2026, 3, 29, 1, 30))  # 01:00-02:30 CET
    assert shown(spring, "Europe/Berlin") == ["01:30+0100", "03:00+0200", "03:30+0200"]
    autumn = due_between(job, utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 2, 45))
    assert shown(autumn, "Europe/Berlin") == [
        "02:00+0200", "02:30+0200", "02:00+0100", "02:30+0100", "03:00+0100", "03:30+0100",
    ]  # fmt: skip


def test_next_after_from_inside_the_repeated_hour() -> None:
    hourly = cron_schedule("0 * * * *", "Europe/Berlin")
    daily = cron_schedule("30 2 * * *", "Europe/Berlin")
    first_pass = datetime(2026, 10, 25, 2, 15, tzinfo=BERLIN, fold=0)  # 00:15 UTC
    second_pass = datetime(2026, 10, 25, 2, 15, tzinfo=BERLIN, fold=1)  # 01:15 UTC
    assert next_after(hourly, first_pass) == utc(2026, 10, 25, 1)  # 02:00 CET
    assert next_after(hourly, second_pass) == utc(2026, 10, 25, 2)  # 03:00 CET
    assert next_after(daily, first_pass) == utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert next_after(daily, second_pass) == utc(2026, 10, 26, 1, 30)  # not 02:30 CET
    ny = cron_schedule("30 1 * * *", "America/New_York")
    assert next_after(ny, datetime(2026, 11, 1, 1, 45, tzinfo=NEW_YORK)) == utc(2026, 11, 2, 6, 30)


@pytest.mark.parametrize("key", sorted(DST_DAYS))
@pytest.mark.parametrize(
    "expr", ["30 2 * * *", "30 1 * * *", "0 * * * *", "*/20 * * * *", "0 1-3 * * *", "59 * * * *"]
)
def test_next_after_and_due_between_agree(key: tuple[str, str], expr: str) -> None:
    start, end = day_bounds(*key)
    schedule = cron_schedule(expr, key[0])
    found = due_between(schedule, start - timedelta(hours=2), end)
    assert found == chain(schedule, start - timedelta(hours=2), end)
    assert found == sorted(set(found))


# ---------------------------------------------------------------- intervals


def test_every_is_anchored_so_restarts_do_not_shift_it() -> None:
    anchor = utc(2026, 1, 1, 10, 0, 7)
    job = every_schedule("5m", anchor)
    assert job == Schedule("every", "300", "UTC", "2026-01-01T10:00:07+00:00")
    assert next_after(job, anchor) == utc(2026, 1, 1, 10, 5, 7)
    assert next_after(job, utc(2026, 1, 1, 9)) == utc(2026, 1, 1, 10, 5, 7)  # before anchor
    assert next_after(job, utc(2026, 1, 1, 10, 12)) == utc(2026, 1, 1, 10, 15, 7)
    assert next_after(job, utc(2026, 1, 1, 10, 15, 7)) == utc(2026, 1, 1, 10, 20, 7)
    assert next_after(job, utc(2027, 6, 1, 0, 0, 1)) == utc(2027, 6, 1, 0, 0, 7)
    assert describe(job) == "every 5m"


def test_every_accepts_durations_and_rejects_tiny_ones() -> None:
    anchor = utc(2026, 1, 1)
    assert every_schedule("90", anchor).expr == "90"
    assert every_schedule("1h30m", anchor).expr == "5400"
    assert every_schedule("1.5s", anchor).expr == "1.5"
    assert describe(every_schedule("90s", anchor)) == "every 1m 30s"
    assert "too short; the minimum is 1s" in message(lambda: every_schedule("500ms", anchor))
    assert "invalid interval 'often'" in message(lambda: every_schedule("often", anchor))


def test_every_due_between_keeps_the_most_recent() -> None:
    job = every_schedule("1h", utc(2026, 1, 1))
    assert due_between(job, utc(2026, 1, 1, 1), utc(2026, 1, 1, 4)) == [
        utc(2026, 1, 1, 2), utc(2026, 1, 1, 3), utc(2026, 1, 1, 4)
    ]  # fmt: skip
    recent = due_between(job, utc(2025, 1, 1), utc(2026, 2, 1), limit=3)
    assert recent == [utc(2026, 1, 31, 22), utc(2026, 1, 31, 23), utc(2026, 2, 1)]
    assert due_between(job, utc(2026, 1, 2), utc(2026, 1, 1)) == []


def test_cron_due_between_limit_is_cheap_and_keeps_the_most_recent() -> None:
    minutely = cron_schedule("* * * * *", "Europe/Berlin")
    found = due_between(minutely, utc(2016, 1, 1), utc(2026, 1, 1), limit=5)  # 5M matches
    assert found == [utc(2025, 12, 31, 23, 56) + timedelta(minutes=i) for i in range(5)]


# ---------------------------------------------------------------- one-shot and manual

NOW = datetime(2026, 6, 1, 10, 0, 0, 123456, tzinfo=BERLIN)  # 08:00 UTC


@pytest.mark.parametrize(
    ("when", "tz", "expected"),
    [
        ("2026-12-01 09:00", "UTC", utc(2026, 12, 1, 9)),
        ("2026-12-01T09:00:00", "Europe/Berlin", utc(2026, 12, 1, 8)),
        ("2026-12-01T09:00:00+05:00", "Europe/Berlin", utc(2026, 12, 1, 4)),
        ("2026-12-01T09:00:00Z", "America/New_York", utc(2026, 12, 1, 9)),
        ("09:00", "Europe/Berlin", utc(2026, 6, 2, 7)),  # already past today: tomorrow
        ("11:00", "Europe/Berlin", utc(2026, 6, 1, 9)),
        ("10:00", "Europe/Berlin", utc(2026, 6, 2, 8)),  # "now" is not after now
        ("10:00:30", "Europe/Berlin", utc(2026, 6, 1, 8, 0, 30)),
        ("+10m", "UTC", utc(2026, 6, 1, 8, 10)),
        ("+2h", "Europe/Berlin", utc(2026, 6, 1, 10)),
        ("+1h30m", "UTC", utc(2026, 6, 1, 9, 30)),
    ],
)
def test_at_times(when: str, tz: str, expected: datetime) -> None:
    job = at_schedule(when, tz, NOW)
    assert job == Schedule("at", expected.isoformat(), tz)
    assert next_after(job, NOW) == expected
    assert next_after(job, expected) is None


def test_at_time_of_day_in_a_gap_and_describe() -> None:
    evening = datetime(2026, 3, 28, 22, 0, tzinfo=BERLIN)
    job = at_schedule("02:30", "Europe/Berlin", evening)
    assert next_after(job, evening) == datetime(2026, 3, 29, 3, tzinfo=BERLIN)  # 01:00 UTC
    assert describe(at_schedule("2026-12-01 09:00", "UTC", NOW)) == "at 2026-12-01 09:00 UTC"
    assert describe(at_schedule("2026-12-01 09:00:30", "Europe/Berlin", NOW)) == (
        "at 2026-12-01 09:00:30 Europe/Berlin"
    )


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("2026-05-01 09:00", "is in the past; give a future time"),
        ("2026-06-01T08:00:00+00:00", "is in the past"),
        ("25:00", "invalid time '25:00': use HH:MM"),
        ("tomorrow", "invalid time 'tomorrow': use '2026-12-01 09:00'"),
        ("+0s", "relative time must be greater than zero"),
        ("+soon", "invalid relative time 'soon'"),
    ],
)
def test_at_errors(when: str, expected: str) -> None:
    assert expected in message(lambda: at_schedule(when, "Europe/Berlin", NOW))


def test_at_due_between_and_manual() -> None:
    job = at_schedule("2026-12-01 09:00", "UTC", NOW)
    assert due_between(job, utc(2026, 12, 1), utc(2026, 12, 2)) == [utc(2026, 12, 1, 9)]
    assert due_between(job, utc(2026, 12, 1, 9), utc(2026, 12, 2)) == []
    manual = manual_schedule()
    assert manual == Schedule("manual", "", "UTC")
    assert next_after(manual, NOW) is None
    assert due_between(manual, utc(2000, 1, 1), utc(2100, 1, 1)) == []
    assert describe(manual) == "manual"


def test_naive_datetimes_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="naive"):
        next_after(cron_schedule("* * * * *", "UTC"), datetime(2026, 1, 1))


# ---------------------------------------------------------------- durations, zones, names


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1h 30m", 5400), ("2d", 172800),
        ("1.5h", 5400), ("500ms", 0.5), ("1w", 604800), (" 10S ", 10), ("0.25", 0.25),
        ("1m 30s", 90), ("1d 2h 3m 4s 5ms", 93784.005),
    ],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "soon", "5 minutes", "-5", "5x", "m5", "1h-30m", "inf", "1e3"]
)
def test_parse_duration_errors(text: str) -> None:
    assert message(lambda: parse_duration(text, "timeout")).startswith(
        f"invalid timeout '{text}': use a number of seconds or forms like 90s, 5m, 1h30m"
    )


def test_parse_duration_limits() -> None:
    assert message(lambda: parse_duration("0s", "retry delay")) == (
        "retry delay must be greater than zero, got '0s'"
    )
    assert "too long" in message(lambda: parse_duration("999999999d"))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90, "1m 30s"), (5400, "1h 30m"), (0.5, "500ms"), (3600, "1h"), (0, "0s"),
     (93784.005, "1d 2h 3m 4s 5ms"), (59.9999, "1m"), (-90, "-1m 30s"),
     (8130, "2h 15m 30s"), (86400, "1d")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    if seconds > 0:
        assert parse_duration(text) == pytest.approx(round(seconds, 3))


def test_check_zone() -> None:
    assert check_zone("Europe/Berlin") == "Europe/Berlin"
    assert check_zone("UTC") == "UTC"
    assert message(lambda: check_zone("Mars/Base")) == (
        "unknown time zone 'Mars/Base'; use an IANA name such as Europe/Berlin or UTC"
    )


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("", "the time zone is empty; use an IANA name such as Europe/Berlin or UTC"),
        ("   ", "the time zone is empty; use an IANA name such as Europe/Berlin or UTC"),
        (" UTC", "time zone ' UTC' has spaces around it; write 'UTC'"),
        ("Europe/Berlin\n", "time zone 'Europe/Berlin\\n' has spaces around it; write 'Europe/"),
        ("Europe", "unknown time zone 'Europe'; use an IANA name"),
        ("../../etc/passwd", "unknown time zone '../../etc/passwd'; use an IANA name"),
        ("/etc/localtime", "unknown time zone '/etc/localtime'; use an IANA name"),
        ("localtime", "unknown time zone 'localtime'; use an IANA name"),
        ("posixrules", "unknown time zone 'posixrules'; use an IANA name"),
        ("JST-9", "unknown time zone 'JST-9'; use an IANA name"),
    ],
)
def test_unknown_zones(tz: str, expected: str) -> None:
    assert message(lambda: check_zone(tz)).startswith(expected)


@pytest.mark.parametrize("name", ["backup", "a", "Nightly-report_2.v1", "9lives", "x" * 64])
def test_valid_job_names(name: str) -> None:
    assert validate_job_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-x", ".hidden", "_x", "x" * 65, "a b", "café", "a/b", "a\nb", "a:b"]
)
def test_invalid_job_names(name: str) -> None:
    assert message(lambda: validate_job_name(name)).endswith(
        ": use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )


# ---------------------------------------------------------------- backoff


def test_backoff_delay() -> None:
    assert backoff_delay(1, 10) == 10
    assert backoff_delay(3, 10) == 40
    assert backoff_delay(20, 10) == 3600  # capped
    assert backoff_delay(3, 10, jitter=0.1, rand=0.0) == pytest.approx(36)
    assert backoff_delay(3, 10, jitter=0.1, rand=0.999999) == pytest.approx(44, abs=1e-3)
    assert backoff_delay(20, 10, cap=60, rand=0.999) <= 60
    assert backoff_delay(10_000, 1.5) == 3600  # no float overflow
    assert backoff_delay(0, 10, jitter=0) == 10


# ---------------------------------------------------------------- storage


@pytest.mark.parametrize(
    "schedule",
    [
        cron_schedule("*/5 * * * *", "Europe/Berlin"),
        cron_schedule("@daily", "UTC"),
        every_schedule("90s", utc(2026, 1, 1)),
        at_schedule("2026-12-01 09:00", "Europe/Berlin", NOW),
        manual_schedule(),
    ],
)
def test_storage_round_trip(schedule: Schedule) -> None:
    stored = {
        "kind": schedule.kind,
        "expr": schedule.expr,
        "tz": schedule.tz,
        "anchor": schedule.anchor,
    }  # the job row's schedule_* columns
    assert from_dict(stored) == schedule


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "weekly"},
        {"kind": "cron", "expr": "61 * * * *", "tz": "UTC"},
        {"kind": "every", "expr": "abc", "anchor": "2026-01-01T00:00:00+00:00"},
        {"kind": "every", "expr": "60", "anchor": "yesterday"},
        {"kind": "at", "expr": "2026-12-01T09:00:00+00:00", "tz": "Mars/Base"},
        {"kind": 3},
    ],
)
def test_damaged_storage_is_a_config_error(data: dict[str, object]) -> None:
    message(lambda: from_dict(data))


# ---------------------------------------------------------------- properties

# Lord Howe moves its clocks by 30 minutes: 5 Apr 02:00->01:30, 4 Oct 02:00->02:30.
LORD_HOWE = {
    ("Australia/Lord_Howe", "autumn"): (2026, 4, 5),
    ("Australia/Lord_Howe", "spring"): (2026, 10, 4),
}
CRON_ALPHABET = "0123456789*/,-#?@LW abcdefghijklmnopqrstuvwxyzJANMONSUN\t\n\x00é"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), st.text(alphabet=CRON_ALPHABET, max_size=30)))
def test_cron_garbage_is_accepted_or_a_config_error(text: str) -> None:
    try:
        schedule = cron_schedule(text, "UTC")
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1
    else:
        assert next_after(schedule, utc(2026, 1, 1)) is not None


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=20), st.text(alphabet="0123456789.smhdwMSH -+e", max_size=20)))
def test_duration_garbage_is_accepted_or_a_config_error(text: str) -> None:
    try:
        assert parse_duration(text) > 0
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=30), st.sampled_from(["UTC", "Asia/Tokyo", "Etc/GMT+5"])))
def test_zone_garbage_is_accepted_or_a_config_error(text: str) -> None:
    try:
        assert check_zone(text) == text
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=70))
def test_name_garbage_is_accepted_or_a_config_error(text: str) -> None:
    try:
        assert validate_job_name(text) == text
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1


@settings(max_examples=60, deadline=None)
@given(
    minutes=st.lists(st.integers(0, 59), min_size=1, max_size=3, unique=True),
    hours=st.one_of(
        st.just("*"), st.lists(st.integers(0, 23), min_size=1, max_size=3, unique=True)
    ),
    tz=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
    offset=st.integers(-36 * 60, 36 * 60),
    season=st.sampled_from(["spring", "autumn"]),
)
def test_next_after_is_the_first_occurrence(
    minutes: list[int], hours: str | list[int], tz: str, offset: int, season: str
) -> None:
    """Around real transitions, next_after(t) > t and nothing is due in between."""
    hour_field = hours if isinstance(hours, str) else ",".join(map(str, hours))
    job = cron_schedule(f"{','.join(map(str, minutes))} {hour_field} * * *", tz)
    day = {**DST_DAYS, **LORD_HOWE}[(tz, season)]
    after = datetime(*day, tzinfo=UTC) + timedelta(minutes=offset, seconds=17)
    following = next_after(job, after)
    assert following is not None and following > after
    assert due_between(job, after, following) == [following]
