"""Pure schedule maths: when a job is due.  No I/O, no database, no clock reads.

Every function takes the current time as an argument (an aware datetime) and returns
aware UTC datetimes, so the daemon, the CLI and the tests agree on the answer.

Kinds: ``cron`` (five fields or a macro, in an IANA zone), ``every`` (a fixed interval
counted from an anchor, the job's creation time, so restarts never shift the grid;
occurrences are anchor + k*interval for k >= 1), ``at`` (one instant) and ``manual``.

Daylight saving (cron only).  Cron fields are matched against *local wall-clock time*,
then each matching wall time is mapped to real instants:

* A wall time that does not exist (skipped by a forward jump, e.g. 02:30 on the spring
  day in Europe/Berlin) runs once, at the first valid instant after the gap (03:00
  local, the transition itself).  Several skipped times collapse to that one run, and a
  job also due at 03:00 runs once there, never twice.
* A wall time that happens twice (the repeated autumn hour) runs once, at its first
  occurrence -- unless the job runs every hour (its hour field is ``*`` or covers all
  24 hours, e.g. ``0 * * * *`` or ``*/15 * * * *``).  Such jobs follow elapsed time and
  fire in both passes of the repeated hour, because those are distinct real hours;
  this is what Vixie cron/cronie do for "wildcard" jobs.  So on the Berlin fall-back
  day ``30 2 * * *`` runs once (02:30 CEST) while ``0 * * * *`` runs at 02:00 CEST and
  again at 02:00 CET.

croniter alone gets this wrong (it runs ``30 2 * * *`` twice on the fall-back day), so
croniter only iterates naive wall-clock times and zoneinfo maps them to instants; cron.py
does that, and also holds the crontab(5) rule for the two day fields.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import islice, pairwise, takewhile
from typing import Any

from pony_scheduler.durations import format_duration, parse_duration, quote
from pony_scheduler.errors import ConfigError
from pony_scheduler.scheduler import cron
from pony_scheduler.scheduler.cron import Occurrence
from pony_scheduler.scheduler.timeparse import (
    as_utc,
    check_zone,
    local_text,
    parse_at,
    wall_to_instants,
    zone,
)

__all__ = [
    "KINDS",
    "Occurrence",
    "Schedule",
    "at_schedule",
    "backoff_delay",
    "check_jitter",
    "check_zone",
    "count_between",
    "cron_schedule",
    "describe",
    "due_between",
    "every_schedule",
    "from_dict",
    "jitter_offset",
    "manual_schedule",
    "next_after",
    "upcoming",
    "validate_job_name",
    "with_offset",
    "with_zone",
]

KINDS = ("cron", "every", "at", "manual")
MIN_INTERVAL = 1.0  # seconds; a shorter `every` would be a busy loop spawning processes
_JOB_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class Schedule:
    kind: str  # "cron" | "every" | "at" | "manual"
    expr: str  # cron text, interval seconds ("90"), ISO UTC instant, or "" for manual
    tz: str  # IANA zone for cron (and for showing/parsing `at`)
    anchor: str = ""  # every: ISO UTC instant the interval counts from
    # Seconds every occurrence of a cron or interval schedule is moved by: the job's
    # stable share of its --jitter window (jitter_offset), 0 without one.
    offset: float = 0.0


# ---------------------------------------------------------------- constructors


def cron_schedule(expr: str, tz: str) -> Schedule:
    """A validated cron schedule; errors name the field that is wrong (cron.parse)."""
    check_zone(tz)
    return Schedule("cron", cron.parse(expr), tz)


def every_schedule(duration: str, anchor: datetime) -> Schedule:
    """Every `duration`, on the grid anchor + k*interval (k >= 1)."""
    seconds = parse_duration(duration, "interval")
    if seconds < MIN_INTERVAL:
        raise ConfigError(f"interval {quote(duration)} is too short; the minimum is 1s")
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return Schedule("every", text, "UTC", as_utc(anchor).isoformat())


def at_schedule(when: str, tz: str, now: datetime) -> Schedule:
    """Once, at `when` (absolute, next HH:MM in `tz`, or +duration); must be after `now`."""
    return Schedule("at", parse_at(when, tz, now).isoformat(), tz)


def manual_schedule() -> Schedule:
    return Schedule("manual", "", "UTC")


def with_zone(schedule: Schedule, tz: str, now: datetime) -> Schedule:
    """`schedule` moved to zone `tz`, everything else kept.

    cron: the same fields, now matched against `tz`'s wall clock.  at: the same
    wall-clock time (what `describe` shows: "at 2026-12-01 09:00 Europe/Berlin" becomes
    09:00 in `tz`), which must still lie after `now`.  Other kinds have no zone: a
    ConfigError.
    """
    check_zone(tz)
    if schedule.kind == "cron":
        return cron_schedule(schedule.expr, tz)  # checked again: it may come from a damaged row
    if schedule.kind != "at":
        raise ConfigError(
            f"a time zone applies to cron and one-shot schedules, not to {describe(schedule)}"
        )
    wall = _instant(schedule.expr).astimezone(zone(schedule.tz)).replace(tzinfo=None)
    moment = wall_to_instants(wall, zone(tz))[0]
    if moment <= as_utc(now):
        raise ConfigError(
            f"{wall:%Y-%m-%d %H:%M:%S} in {tz} ({local_text(moment)}) is in the "
            "past; give a future time"
        )
    return Schedule("at", moment.isoformat(), tz)


# ---------------------------------------------------------------- when is it due


def jitter_offset(name: str, jitter_s: float | None) -> float:
    """A job's stable offset within its --jitter window, in seconds: the same for the job
    on every host and every start, different between jobs (Jenkins' H, systemd's
    RandomizedOffsetSec=): a hash of its name, whole milliseconds below `jitter_s`."""
    if not jitter_s:
        return 0.0
    import hashlib

    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return digest % max(1, int(jitter_s * 1000)) / 1000


JITTER_SAMPLE = 64  # cron occurrences after now whose shortest gap bounds --jitter


def check_jitter(schedule: Schedule, jitter_s: float | None, now: datetime) -> None:
    """ConfigError unless a --jitter window of `jitter_s` seconds (None or 0: none) suits
    `schedule`.  Only cron and interval schedules move, and by at most their period (an
    interval's length; for cron, the shortest gap among its next JITTER_SAMPLE
    occurrences after `now`): an offset beyond one period spreads runs no further and
    only delays the first one.  Jenkins' H keeps its hash inside its field's range for
    the same reason.  Cron gaps are taken in UTC: the period its fields give, the same
    whatever the date, not a day daylight saving made shorter."""
    if not jitter_s:
        return
    if schedule.kind not in ("cron", "every"):
        raise ConfigError(
            f"--jitter moves only --cron and --every schedules, not {describe(schedule)}; "
            "give --jitter none with it"
        )
    if schedule.kind == "every":
        period = _grid(schedule)[1].total_seconds()
    else:
        fields = Schedule("cron", schedule.expr, "UTC")
        times = [o.at for o in upcoming(fields, now, JITTER_SAMPLE + 1)]
        gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
        if not gaps:
            return  # fewer than two occurrences ahead: nothing to spread
        period = min(gaps)
    if jitter_s > period:
        raise ConfigError(
            f"--jitter {format_duration(jitter_s)} is longer than the job's period "
            f"({format_duration(period)}): a wider window spreads its runs no further and "
            f"only delays them; use at most {format_duration(period)}"
        )


def with_offset(schedule: Schedule, offset: float) -> Schedule:
    """`schedule` moved by `offset` seconds; only cron and interval schedules move."""
    moved = offset if schedule.kind in ("cron", "every") else 0.0
    return Schedule(schedule.kind, schedule.expr, schedule.tz, schedule.anchor, moved)


def _shift(schedule: Schedule) -> timedelta:
    return timedelta(seconds=schedule.offset)


def next_after(schedule: Schedule, after: datetime) -> datetime | None:
    """The first due instant strictly after `after` (UTC), or None if there is none."""
    shift = _shift(schedule)
    found = _next_after(schedule, as_utc(after) - shift)
    return found + shift if found is not None else None


def _next_after(schedule: Schedule, after: datetime) -> datetime | None:
    if schedule.kind == "every":
        anchor, step = _grid(schedule)
        k = max(1, (after - anchor) // step + 1)
        return anchor + k * step
    if schedule.kind == "at":
        moment = _instant(schedule.expr)
        return moment if moment > after else None
    if schedule.kind == "cron":
        return next((o.at for o in cron.ascending(schedule.expr, schedule.tz, after)), None)
    return None


def upcoming(schedule: Schedule, after: datetime, count: int) -> list[Occurrence]:
    """The first `count` occurrences strictly after `after`, ascending, for previews.

    The same iteration next_after uses, so a preview cannot disagree with the daemon;
    cron occurrences say how daylight saving moved or merged them (cron.Occurrence).
    Occurrences after the last instant a datetime holds (9999-12-31) are left out: the
    list is then shorter than `count` (`--every 36500d`, `pb job next -n 100`).
    """
    return list(islice(_representable(_upcoming(schedule, as_utc(after))), max(0, count)))


def _representable(found: Iterator[Occurrence]) -> Iterator[Occurrence]:
    """`found` up to the first occurrence past year 9999, where datetime raises
    OverflowError ("date value out of range") or ValueError ("year 10000 is out of
    range"); any other error goes on."""
    try:
        yield from found
    except OverflowError:
        return
    except ValueError as exc:
        if "out of range" not in str(exc):
            raise


def _upcoming(schedule: Schedule, after: datetime) -> Iterator[Occurrence]:
    if schedule.offset:
        shift = _shift(schedule)
        for o in _upcoming(with_offset(schedule, 0.0), after - shift):
            yield replace(o, at=o.at + shift, jitter_s=shift.total_seconds())
        return
    if schedule.kind == "cron":
        yield from cron.ascending(schedule.expr, schedule.tz, after)
        return
    first = next_after(schedule, after)
    if first is None:
        return
    yield Occurrence(first)
    if schedule.kind == "every":
        step = _grid(schedule)[1]
        for k in itertools.count(1):
            yield Occurrence(first + k * step)


def due_between(
    schedule: Schedule, start: datetime, end: datetime, limit: int = 1000
) -> list[datetime]:
    """Occurrences in (start, end], ascending; only the most recent `limit` if more."""
    start, end = as_utc(start), as_utc(end)
    if end <= start or limit <= 0:
        return []
    if schedule.offset:
        shift = _shift(schedule)
        base = due_between(with_offset(schedule, 0.0), start - shift, end - shift, limit)
        return [moment + shift for moment in base]
    if schedule.kind == "every":
        anchor, step = _grid(schedule)
        last = (end - anchor) // step
        first = max(1, (start - anchor) // step + 1, last - limit + 1)
        return [anchor + k * step for k in range(first, last + 1)]
    if schedule.kind == "at":
        moment = _instant(schedule.expr)
        return [moment] if start < moment <= end else []
    if schedule.kind == "cron":
        # Walk backwards from `end` so a long outage costs `limit` steps, not millions.
        newest = cron.descending(schedule.expr, schedule.tz, end)
        recent = takewhile(lambda moment: moment > start, newest)
        return list(islice(recent, limit))[::-1]
    return []


def count_between(schedule: Schedule, start: datetime, end: datetime) -> int:
    """How many occurrences fall in (start, end]: arithmetic for intervals, a walk for
    cron (about 10 us per occurrence; a minutely job down for a year costs ~5 s, once)."""
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        return 0
    if schedule.offset:
        shift = _shift(schedule)
        return count_between(with_offset(schedule, 0.0), start - shift, end - shift)
    if schedule.kind == "every":
        anchor, step = _grid(schedule)
        return max(0, (end - anchor) // step) - max(0, (start - anchor) // step)
    if schedule.kind == "cron":
        found = cron.ascending(schedule.expr, schedule.tz, start)
        return sum(1 for _ in takewhile(lambda o: o.at <= end, found))
    return len(due_between(schedule, start, end))


# ---------------------------------------------------------------- text and storage


def describe(schedule: Schedule) -> str:
    """Short human text: "cron '*/5 * * * *' (Europe/Berlin)", "every 5m", "manual"."""
    if schedule.kind == "cron":
        return f"cron '{schedule.expr}' ({schedule.tz})"
    if schedule.kind == "every":
        return f"every {format_duration(float(schedule.expr))}"
    if schedule.kind == "at":
        local = _instant(schedule.expr).astimezone(zone(schedule.tz))
        shown = local.strftime("%Y-%m-%d %H:%M" + (":%S" if local.second else ""))
        return f"at {shown} {schedule.tz}"
    return "manual"


def from_dict(data: Mapping[str, Any]) -> Schedule:
    """A Schedule from stored data, re-validated (ConfigError if it is damaged)."""
    values = {key: data.get(key) for key in ("kind", "expr", "tz", "anchor")}
    offset = data.get("offset") or 0.0
    if not all(isinstance(v, str) for v in values.values() if v is not None):
        raise ConfigError(f"stored schedule {quote(repr(dict(data)))} has non-text fields")
    schedule = Schedule(
        kind=values["kind"] or "",
        expr=values["expr"] or "",
        tz=values["tz"] or "UTC",
        anchor=values["anchor"] or "",
    )
    _revalidate(schedule)
    return with_offset(schedule, float(offset))


def _revalidate(schedule: Schedule) -> None:
    if schedule.kind == "cron":
        cron_schedule(schedule.expr, schedule.tz)
    elif schedule.kind == "every":
        _grid(schedule)
    elif schedule.kind == "at":
        _instant(schedule.expr)
        check_zone(schedule.tz)
    elif schedule.kind != "manual":
        raise ConfigError(f"unknown schedule kind {quote(schedule.kind)}; expected one of {KINDS}")


def _instant(text: str) -> datetime:
    try:
        return as_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        raise ConfigError(f"stored instant {quote(text)} is not an ISO-8601 time") from None


def _grid(schedule: Schedule) -> tuple[datetime, timedelta]:
    """(anchor, interval) of an `every` schedule."""
    try:
        seconds = float(schedule.expr)
    except ValueError:
        seconds = math.nan
    if not MIN_INTERVAL <= seconds <= 1e10:  # also false for NaN
        raise ConfigError(f"stored interval {quote(schedule.expr)} is not a valid interval")
    return _instant(schedule.anchor), timedelta(milliseconds=round(seconds * 1000))


# ---------------------------------------------------------------- retries and names


def backoff_delay(
    attempt: int, base: float, cap: float = 3600, jitter: float = 0.1, rand: float = 0.5
) -> float:
    """Seconds before retry `attempt` (1 = first retry): base*2**(attempt-1), +/- jitter.

    `rand` is the caller's random.random(), keeping this pure; the result never exceeds
    `cap`.  Jitter spreads retries of jobs that failed together.
    """
    exponent = min(max(attempt, 1) - 1, 60)  # 2**60 * base is past any cap anyway
    delay = min(cap, max(0.0, base) * 2.0**exponent)
    spread = 1 + max(0.0, jitter) * (2 * min(max(rand, 0.0), 1.0) - 1)
    return max(0.0, min(cap, delay * spread))


def validate_job_name(name: str) -> str:
    """Return `name` if it is 1-64 of [A-Za-z0-9._-] starting with a letter or digit."""
    if not 1 <= len(name) <= 64 or not set(name) <= _JOB_NAME_CHARS or not name[0].isalnum():
        raise ConfigError(
            f"invalid job name {quote(name)}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
