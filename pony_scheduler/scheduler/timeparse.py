"""Turning user text into times and back: zones, `--at` times, cron fields, display.

Pure functions: nothing here reads the clock; `now` is always passed in.  Every user
error is a ConfigError whose message is one line (input is quoted with control
characters escaped, so a stray newline cannot break the CLI's one-line contract).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pony_scheduler.durations import parse_duration, quote
from pony_scheduler.errors import ConfigError

_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", re.ASCII)


# ---------------------------------------------------------------- zones


@lru_cache(maxsize=512)
def zone(tz: str) -> ZoneInfo:
    """The ZoneInfo for a name already accepted by check_zone."""
    return ZoneInfo(tz)


# Files in the zoneinfo directory that are not zones: "localtime" follows /etc/localtime
# (so a job would silently change zone with the machine), "posixrules" is zic's template.
_NOT_ZONES = frozenset({"localtime", "posixrules"})
ZONE_HINT = "use an IANA name such as Europe/Berlin or UTC"


def check_zone(tz: str) -> str:
    """Return `tz` if it names a zone of the tz database, else a ConfigError (one line).

    The message says what is wrong: an empty name, spaces around it, or a name the tz
    database (zoneinfo: TZPATH, then the tzdata package) does not have.
    """
    if not tz.strip():
        raise ConfigError(f"the time zone is empty; {ZONE_HINT}")
    if tz.strip() != tz:
        raise ConfigError(f"time zone {quote(tz)} has spaces around it; write {quote(tz.strip())}")
    try:
        if tz in _NOT_ZONES:
            raise ValueError(tz)
        zone(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError/OSError: paths such as "../x" or a directory such as "Europe".
        raise ConfigError(f"unknown time zone {quote(tz)}; {ZONE_HINT}") from None
    return tz


def local_text(moment: datetime, tz: tzinfo | None = None) -> str:
    """`moment` as an admin reads it: "2026-12-01 03:00 CET" ("…:30" if it has seconds).

    `tz` None means the machine's zone (libc's, as `date` shows it).  The abbreviation
    tells the two passes of a repeated hour apart (CEST, then CET); where it cannot (the
    same abbreviation on both sides, or none) the UTC offset is added: "01:30 MSK +04:00".
    """
    local = moment.astimezone(tz)
    text = local.strftime("%Y-%m-%d %H:%M" + (":%S" if local.second else ""))
    abbr = local.tzname()
    other = local.replace(fold=1 - local.fold)
    if abbr and (other.utcoffset() == local.utcoffset() or other.tzname() != abbr):
        return f"{text} {abbr}"
    offset = local.isoformat()[-6:]  # "+04:00"
    return f"{text} {abbr} {offset}" if abbr else f"{text} {offset}"


def as_utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime; naive datetimes are a programming error."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: pass a timezone-aware datetime")
    return moment.astimezone(UTC)


# ---------------------------------------------------------------- wall clock -> instants


def wall_to_instants(wall: datetime, tz: ZoneInfo, both_folds: bool = False) -> list[datetime]:
    """The UTC instants at which naive local time `wall` happens, ascending.

    Normal time: one instant.  A time skipped by a forward jump (spring gap) maps to
    the first instant after the gap, i.e. the transition itself (02:30 -> 03:00).
    A repeated time (autumn fold) maps to its first occurrence, or to both when
    `both_folds` (used for jobs that follow elapsed time, see schedule.py).
    """
    first = wall.replace(tzinfo=tz, fold=0)
    second = wall.replace(tzinfo=tz, fold=1)
    early, late = first.utcoffset(), second.utcoffset()
    assert early is not None and late is not None
    if early == late:
        return [first.astimezone(UTC)]
    if early < late:  # PEP 495: in a gap fold=0 uses the (smaller) offset from before
        return [_transition(wall - late, wall - early, tz, early)]
    if both_folds:
        return [first.astimezone(UTC), second.astimezone(UTC)]
    return [first.astimezone(UTC)]


def _transition(lo: datetime, hi: datetime, tz: ZoneInfo, before: timedelta) -> datetime:
    """First whole second in (lo, hi] whose offset differs from `before` (bisection).

    zoneinfo does not expose transition times, and gaps are rare, so ~12 steps is fine.
    """
    low, high = int(lo.replace(tzinfo=UTC).timestamp()), int(hi.replace(tzinfo=UTC).timestamp())
    while high - low > 1:
        mid = (low + high) // 2
        if _at(mid).astimezone(tz).utcoffset() == before:
            low = mid
        else:
            high = mid
    return _at(high)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _at(seconds: int) -> datetime:
    """The UTC instant `seconds` after the epoch, by arithmetic: fromtimestamp() goes
    through gmtime(), which counts leap seconds under a TZ=right/... zone."""
    return _EPOCH + timedelta(seconds=seconds)


def offset_swing(moment: datetime, tz: ZoneInfo) -> timedelta:
    """How far local clocks go back around `moment` (a day either side), else zero.

    Iterating wall-clock times must start this much earlier/later so that a
    repeated hour is not missed.
    """
    day = timedelta(days=1)
    try:
        before = (moment - day).astimezone(tz).utcoffset()
        after = (moment + day).astimezone(tz).utcoffset()
    except OverflowError:
        return timedelta(0)
    assert before is not None and after is not None
    return max(timedelta(0), before - after)


# ---------------------------------------------------------------- --at times


def parse_at(when: str, tz: str, now: datetime) -> datetime:
    """The UTC instant meant by `--at WHEN`, which must be after `now`."""
    now = as_utc(now)
    text = when.strip()
    local = zone(check_zone(tz))
    if text.startswith("+"):
        moment = now + timedelta(seconds=parse_duration(text[1:], "relative time"))
    elif match := _TIME_OF_DAY.fullmatch(text):
        moment = _next_time_of_day(match, local, now, when)
    else:
        moment = _absolute(text, local, when)
    moment = moment.replace(microsecond=0)
    if moment <= now:
        shown = moment.astimezone(local).strftime("%Y-%m-%d %H:%M:%S")
        raise ConfigError(f"time {quote(when)} ({shown} {tz}) is in the past; give a future time")
    return moment


def at_note(when: str, tz: str, moment: datetime) -> str | None:
    """What daylight saving time did to a local `--at WHEN` (its instant: `moment`, from
    parse_at): a wall time the clocks skipped (moved to the end of the gap) or one they
    repeat (the first is meant); None for an exact time, "+10m" or a time with an offset."""
    text = when.strip()
    if text.startswith("+"):
        return None
    local = zone(tz)
    if match := _TIME_OF_DAY.fullmatch(text):
        hour, minute, second = (int(g or 0) for g in match.groups())
        shown = moment.astimezone(local).replace(tzinfo=None)
        wall = shown.replace(hour=hour, minute=minute, second=second)
    else:
        try:
            wall = datetime.fromisoformat(text)
        except ValueError:
            return None
        if wall.tzinfo is not None:
            return None
    wall = wall.replace(microsecond=0)
    if moment.astimezone(local).replace(tzinfo=None) != wall:
        return (
            f"{wall:%Y-%m-%d %H:%M:%S} does not exist in {tz} (the clocks skip it for "
            f"daylight saving time): the run is at {local_text(moment, local)}"
        )
    if len(wall_to_instants(wall, local, both_folds=True)) == 2:
        return (
            f"{wall:%Y-%m-%d %H:%M:%S} happens twice in {tz} (the clocks go back): the "
            f"run is at the first, {local_text(moment, local)}"
        )
    return None


def _next_time_of_day(match: re.Match[str], local: ZoneInfo, now: datetime, when: str) -> datetime:
    hour, minute, second = (int(g or 0) for g in match.groups())
    if hour > 23 or minute > 59 or second > 59:
        raise ConfigError(f"invalid time {quote(when)}: use HH:MM or HH:MM:SS, 00:00 to 23:59")
    today = now.astimezone(local).replace(tzinfo=None)
    for days in (0, 1, 2):  # 2: today's and tomorrow's could both be eaten by a gap
        wall = (today + timedelta(days=days)).replace(hour=hour, minute=minute, second=second)
        moment = wall_to_instants(wall.replace(microsecond=0), local)[0]
        if moment > now:
            return moment
    raise AssertionError("unreachable: a later day always has this time")


def _absolute(text: str, local: ZoneInfo, when: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
        return wall_to_instants(parsed, local)[0]
    except (ValueError, OverflowError):
        raise ConfigError(
            f"invalid time {quote(when)}: use '2026-12-01 09:00', '2026-12-01T09:00:00+01:00', "
            "'09:00' (next such local time) or '+10m'"
        ) from None


# ---------------------------------------------------------------- cron fields

CRON_FIELDS = "minute hour day-of-month month day-of-week"
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NONE: tuple[str, ...] = ()
_FIELD_SPECS = (  # name, lowest, highest, names (their index + offset is the value)
    ("minute", 0, 59, _NONE, 0),
    ("hour", 0, 23, _NONE, 0),
    ("day-of-month", 1, 31, _NONE, 0),
    ("month", 1, 12, MONTHS, 1),
    ("day-of-week", 0, 7, DAYS, 0),
)


def cron_fields(text: str) -> list[str]:
    """The five fields of a cron expression or macro, checked field by field."""
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ConfigError(
                f"unknown cron macro {quote(text)}; use @yearly, @annually, @monthly, "
                "@weekly, @daily, @midnight or @hourly"
            )
        return MACROS[text.lower()].split()
    fields = text.split()
    if len(fields) in (6, 7):
        raise ConfigError(
            f"invalid cron expression {quote(text)}: {len(fields)} fields given, but seconds "
            f"and years are not supported; use 5 fields ({CRON_FIELDS})"
        )
    if len(fields) != 5:
        raise ConfigError(
            f"invalid cron expression {quote(text)}: expected 5 fields ({CRON_FIELDS}) "
            f"or a macro such as @daily, got {len(fields)}"
        )
    check_cron_fields(text, fields)
    return fields


def check_cron_fields(expr: str, fields: list[str]) -> None:
    """Check five cron fields so that errors name the field; croniter checks the rest."""
    for field, (name, low, high, names, base) in zip(fields, _FIELD_SPECS, strict=True):
        problem = _field_problem(field, name, low, high, names, base)
        if problem:
            where = f"{name} field {quote(field)}"
            if not problem.startswith(" "):
                where += ": "
            raise ConfigError(f"invalid cron expression {quote(expr)}: {where}{problem}")


def _field_problem(
    field: str, name: str, low: int, high: int, names: tuple[str, ...], base: int
) -> str:
    """What is wrong with one field ("" if nothing), phrased to follow "<name> field"."""
    for item in field.split(","):
        body, slash, step = item.partition("/")
        if slash and not (step.isascii() and step.isdigit() and 0 < int(step) <= high - low + 1):
            return f"step {quote(step)} must be a whole number from 1 to {high - low + 1}"
        if body == "*" or (body == "?" and name.startswith("day")):
            continue
        if body.upper() == "L" and name == "day-of-month" and not slash:
            continue  # croniter extension: last day of the month
        if name == "day-of-week" and "#" in body and not slash:
            body, _, nth = body.partition("#")
            if nth not in ("1", "2", "3", "4", "5"):
                return f"{quote(item)}: the number after '#' must be 1-5"
        numbers = []
        for part in body.split("-", 1):
            value = _value(part, low, high, names, base)
            if isinstance(value, str):
                return value if part == field else f"{quote(part)}{value}"
            numbers.append(value)
        if len(numbers) == 2 and numbers[0] > numbers[1]:
            return f"range {quote(body)} runs backwards; write it low-high"
    return ""


def _value(part: str, low: int, high: int, names: tuple[str, ...], base: int) -> int | str:
    """The number in one field part, or the text of what is wrong with it."""
    if part.isascii() and part.isdigit():
        value = int(part)
        return value if low <= value <= high else f" is out of range {low}-{high}"
    if part.lower() in names:
        return names.index(part.lower()) + base
    kinds = "a number" + (" or a name such as " + names[0].upper() if names else "")
    return f" is not {kinds}"
