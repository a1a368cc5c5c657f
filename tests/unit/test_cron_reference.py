"""The cron matcher against a straightforward reading of crontab(5), minute by minute.

The reference below shares no code with pony_scheduler: it parses the five fields by hand
(lists, ranges, steps, names, 7 = Sunday, L, #n, ?), applies cronie's day rule (both day
fields restricted: either matches; a field beginning with '*' counts as unrestricted,
and then both must match), and walks every UTC minute of a window, mapping it to the
zone's wall clock and applying the documented daylight-saving rules (pb-job(1)):

* wall times skipped by a forward jump run once, at the first instant after the gap;
* a repeated wall time runs once, at its first pass, unless the job runs every hour.

The instants it finds must be exactly those of schedule.next_after iterated over the
window, and of schedule.due_between.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pony_scheduler.errors import ConfigError
from pony_scheduler.scheduler.schedule import cron_schedule, due_between, next_after

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# name, lowest, highest, names (index + offset = value)
FIELDS = [("minute", 0, 59, [], 0), ("hour", 0, 23, [], 0), ("dom", 1, 31, [], 0),
          ("month", 1, 12, MONTHS, 1), ("dow", 0, 7, DAYS, 0)]  # fmt: skip
ZONES = [
    "UTC",
    "Asia/Tokyo",  # no daylight saving
    "Asia/Kolkata",  # +05:30, none
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # moves its clocks by 30 minutes
    "Pacific/Chatham",  # +12:45 / +13:45
    "Antarctica/Troll",  # moves its clocks by 2 hours
    "America/Sao_Paulo",  # daylight saving until 2019, transitions at midnight
    "Europe/Dublin",  # "negative" daylight saving in the tz database
]
MINUTE = timedelta(minutes=1)


# ---------------------------------------------------------------- the reference


class Reference:
    """One cron expression, read as crontab(5) says."""

    def __init__(self, expr: str) -> None:
        texts = expr.split()
        self.sets = [self._field(text, *spec) for text, spec in zip(texts, FIELDS, strict=True)]
        self.last_day = texts[2].upper() == "L"
        self.nth: tuple[int, int] | None = None
        if "#" in texts[4]:
            day, _, nth = texts[4].partition("#")
            self.nth = (self._number(day, DAYS, 0) % 7, int(nth))
        # cronie: DOM_STAR / DOW_STAR come from the field's first character.
        self.both = texts[2][0] in "*?" or texts[4][0] in "*?"
        self.hourly = len(self.sets[1]) == 24

    @staticmethod
    def _number(text: str, names: list[str], base: int) -> int:
        return int(text) if text.isdigit() else names.index(text.lower()) + base

    def _field(self, text: str, name: str, low: int, high: int, names: list[str],
               base: int) -> set[int]:  # fmt: skip
        if text.upper() == "L" or "#" in text:
            return set()  # handled apart
        values: set[int] = set()
        for item in text.split(","):
            body, slash, step_text = item.partition("/")
            step = int(step_text) if slash else 1
            if body in ("*", "?"):
                first, last = low, high
            elif "-" in body:
                a, b = body.split("-")
                first, last = self._number(a, names, base), self._number(b, names, base)
            else:  # "N/S" means N-highest/S (croniter; Vixie cron rejects it)
                first = self._number(body, names, base)
                last = high if slash else first
            values.update(range(first, last + 1, step))
        return {7 % 7 if name == "dow" and v == 7 else v for v in values}

    def matches(self, wall: datetime) -> bool:
        minutes, hours, days, months, weekdays = self.sets
        if wall.minute not in minutes or wall.hour not in hours or wall.month not in months:
            return False
        if self.last_day:
            dom = wall.day == calendar.monthrange(wall.year, wall.month)[1]
        else:
            dom = wall.day in days
        weekday = (wall.weekday() + 1) % 7  # Sunday = 0
        if self.nth:
            dow = weekday == self.nth[0] and (wall.day - 1) // 7 + 1 == self.nth[1]
        else:
            dow = weekday in weekdays
        return (dom and dow) if self.both else (dom or dow)

    def instants(self, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
        """Every UTC minute in (start, end] at which the job runs."""
        moment = start.replace(second=0, microsecond=0) + MINUTE
        previous = (moment - MINUTE).astimezone(tz).replace(tzinfo=None)
        found = []
        while moment <= end:
            local = moment.astimezone(tz)
            wall = local.replace(tzinfo=None)
            skipped = previous + MINUTE
            runs = False
            while skipped < wall:  # the clocks jumped forward over these wall times
                runs = runs or self.matches(skipped)
                skipped += MINUTE
            if self.matches(wall) and (local.fold == 0 or self.hourly):
                runs = True
            if runs:
                found.append(moment)
            previous = wall
            moment += MINUTE
        return found


# ---------------------------------------------------------------- expressions


def field(name: str, low: int, high: int, names: list[str], base: int) -> st.SearchStrategy[str]:
    top = 7 if name == "dow" else high

    def value(draw_value: int) -> str:
        if names and draw_value - base < len(names) and draw_value % 3 == 0:
            text = names[draw_value - base]
            return text.upper() if draw_value % 2 else text
        return str(draw_value)

    number = st.integers(low, top)
    step = st.integers(1, high - low + 1)
    single = number.map(value)
    ranges = st.tuples(number, number).map(sorted).map(lambda ab: f"{value(ab[0])}-{value(ab[1])}")
    item = st.one_of(
        st.just("*"),
        step.map(lambda s: f"*/{s}"),
        single,
        ranges,
        st.tuples(ranges, step).map(lambda rs: f"{rs[0]}/{rs[1]}"),
        st.tuples(number, step).map(lambda ns: f"{ns[0]}/{ns[1]}"),
    )
    listed = st.lists(item, min_size=1, max_size=3).map(",".join)
    if name == "dom":
        return st.one_of(listed, st.just("*"), st.just("?"), st.just("L"))
    if name == "dow":
        nth = st.tuples(st.integers(0, 7), st.integers(1, 5)).map(lambda dn: f"{dn[0]}#{dn[1]}")
        return st.one_of(listed, st.just("*"), st.just("?"), nth)
    if name == "month":
        return st.one_of(st.just("*"), st.just("*"), listed)
    if name == "hour":
        return st.one_of(st.just("*"), listed)
    return listed


EXPRESSIONS = st.tuples(*(field(*spec) for spec in FIELDS)).map(" ".join)


@cache
def transitions(tz_name: str, year: int) -> list[datetime]:
    """Instants (to the hour) of the zone's offset changes in `year`."""
    tz, found = ZoneInfo(tz_name), []
    moment = datetime(year, 1, 1, tzinfo=UTC)
    while moment.year == year:
        if (
            moment.astimezone(tz).utcoffset()
            != (moment + timedelta(hours=1)).astimezone(tz).utcoffset()
        ):
            found.append(moment + timedelta(hours=1))
        moment += timedelta(hours=1)
    return found


@st.composite
def windows(draw: st.DrawFn) -> tuple[str, datetime, datetime]:
    tz_name = draw(st.sampled_from(ZONES))
    year = draw(st.integers(1995, 2060))
    changes = transitions(tz_name, year)
    if changes and draw(st.booleans()):  # around a daylight-saving transition, often
        start = draw(st.sampled_from(changes)) - timedelta(minutes=draw(st.integers(0, 36 * 60)))
    else:
        start = datetime(year, 1, 1, tzinfo=UTC) + timedelta(minutes=draw(st.integers(0, 525000)))
    start += timedelta(seconds=draw(st.integers(0, 59)))
    return tz_name, start, start + timedelta(minutes=draw(st.integers(1, 30 * 60)))


def chain(expr: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    schedule = cron_schedule(expr, tz)
    found: list[datetime] = []
    moment = next_after(schedule, start)
    while moment is not None and moment <= end:
        found.append(moment)
        moment = next_after(schedule, moment)
    return found


# ---------------------------------------------------------------- the property


@settings(max_examples=150, deadline=None)
@given(expr=EXPRESSIONS, window=windows())
def test_next_after_agrees_with_crontab_minute_by_minute(
    expr: str, window: tuple[str, datetime, datetime]
) -> None:
    tz, start, end = window
    expected = Reference(expr).instants(ZoneInfo(tz), start, end)
    try:
        schedule = cron_schedule(expr, tz)
    except ConfigError as exc:  # e.g. '* * */14 * 0#2': the 1st, 15th, 29th never a 2nd Sunday
        assert "it never matches a real date" in str(exc)
        assert expected == []
        return
    assert chain(expr, tz, start, end) == expected
    assert due_between(schedule, start, end, limit=10**6) == expected


# Examples worth keeping whatever hypothesis draws: the case and each DST kind.
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


EXAMPLES = [
    ("0 0 */2 * 3", "UTC", utc(2026, 11, 30), 50 * DAY),  # Wed 9 Dec, Wed 23 Dec, Wed 13 Jan
    ("0 0 1-31 * 3", "UTC", utc(2026, 11, 30), 10 * DAY),  # every day
    ("0 0 1 * 0-7", "UTC", utc(2026, 11, 30), 10 * DAY),  # every day
    ("0 0 1 * *,3", "UTC", utc(2026, 11, 30), 70 * DAY),  # the 1st only
    ("0 0 * * 1/1", "UTC", utc(2026, 11, 28), 3 * DAY),  # Sunday too
    ("* 5-5/2 * * *", "UTC", utc(2026, 11, 28), DAY),  # 05:xx only
    ("*/20 1-3 * * *", "Europe/Berlin", utc(2026, 3, 28, 22), 8 * HOUR),
    ("*/20 1-3 * * *", "Europe/Berlin", utc(2026, 10, 24, 22), 8 * HOUR),
    ("*/15 * * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 13), 4 * HOUR),
    ("45 1,2 * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 13), 4 * HOUR),
    ("10 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 3, 13), 4 * HOUR),
    ("30 1,2 * * *", "Antarctica/Troll", utc(2026, 3, 28, 22), 6 * HOUR),
]


@pytest.mark.parametrize(("expr", "tz", "start", "length"), EXAMPLES)
def test_reference_examples(expr: str, tz: str, start: datetime, length: timedelta) -> None:
    expected = Reference(expr).instants(ZoneInfo(tz), start, start + length)
    assert expected
    assert chain(expr, tz, start, start + length) == expected
