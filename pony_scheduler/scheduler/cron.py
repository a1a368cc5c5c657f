"""Cron iteration: the instants a five-field expression names in a zone.  Pure, no clock.

Day fields (crontab(5), as cronie implements it in entry.c and cron.c): when both
day-of-month and day-of-week are restricted, a day matches if *either* does.  A field
that begins with ``*`` counts as unrestricted for this rule (cronie sets DOM_STAR /
DOW_STAR from the field's first character), and then both must match: ``0 0 */2 * 3``
runs on Wednesdays that fall on odd days, while ``0 0 1-31 * 3`` runs every day.
``?`` (a day field's "no specific value", as in Quartz) counts as ``*``.

croniter decides from the *expanded* fields instead (by default ``*/2`` is restricted,
so ``0 0 */2 * 3`` runs on most days), so pb applies the rule itself and croniter only
ever sees one side of it: an AND expression is iterated with ``day_or=False``, an OR
expression as two expressions, one per day field, whose matches are merged.  croniter
iterates naive wall-clock times; zoneinfo maps them to instants
(timeparse.wall_to_instants holds the daylight-saving rules, which schedule.py's
docstring describes).
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterError, croniter

from pony_scheduler.errors import ConfigError
from pony_scheduler.scheduler.timeparse import (
    CRON_FIELDS,
    DAYS,
    MACROS,
    MONTHS,
    cron_fields,
    offset_swing,
    quote,
    wall_to_instants,
    zone,
)

FAILURES = (CroniterError, ValueError, LookupError, TypeError, OverflowError)
MOVED, MERGED, REPEATED = "moved", "merged", "repeated"


@dataclass(frozen=True)
class Occurrence:
    """One due instant and why it falls where it does.

    at: the UTC instant.  walls: the local wall-clock times (naive) the expression matched
    that run at `at` -- several when daylight saving merged them.  dst: "" for an ordinary
    run; MOVED (its wall time did not exist, it runs at the end of the gap); MERGED
    (several wall times run once: times in a gap, or a repeated time run at its first
    pass only); REPEATED (an hourly job's run in one of the two passes of a repeated hour).
    jitter_s: the job's stable offset (--jitter) `at` includes, seconds; 0 for none.
    """

    at: datetime
    walls: tuple[datetime, ...] = ()
    dst: str = ""
    jitter_s: float = 0.0


def parse(text: str) -> str:
    """The normalised expression (single spaces, macros in lower case), or a ConfigError.

    Errors name the field (timeparse.check_cron_fields); an expression that matches no
    real date (``0 0 30 2 *``) is refused too.
    """
    text = " ".join(text.split())
    fields = " ".join(cron_fields(text))
    try:
        templates = [_template(variant) for variant in day_variants(fields)]
    except FAILURES:  # syntax croniter refuses after our field checks
        reason = f"this is not cron syntax croniter understands; see crontab(5) ({CRON_FIELDS})"
        raise ConfigError(f"invalid cron expression {quote(text)}: {reason}") from None
    if not any(_matches_ever(template) for template in templates):
        reason = "it never matches a real date (check the day and month fields)"
        raise ConfigError(f"invalid cron expression {quote(text)}: {reason}")
    return text.lower() if text.startswith("@") else text


def day_variants(fields: str) -> tuple[str, ...]:
    """Expressions whose matches together are those of `fields` under the crontab(5) rule."""
    texts = fields.split()
    minute, hour, dom, month, dow = (_plain(text, index) for index, text in enumerate(texts))
    if texts[2][0] in "*?" or texts[4][0] in "*?":
        return (f"{minute} {hour} {dom} {month} {dow}",)  # both must match: day_or=False
    return (f"{minute} {hour} {dom} {month} *", f"{minute} {hour} * {month} {dow}")


# Per field: the highest value (day-of-week 7 is Sunday, as '*' covers it in cron),
# and the names with the value of the first.
_FIELDS = ((59, (), 0), (23, (), 0), (31, (), 0), (12, MONTHS, 1), (7, DAYS, 0))


def _plain(field: str, index: int) -> str:
    """`field` with its ranges and names written out as numbers, for croniter.

    croniter (7.0) misreads some ranges that crontab(5) allows: one of a single value
    ("1-1" becomes "*"), and "N/S" (an extension: N to the field's end, every S) ends at
    6 on day-of-week, leaving out Sunday as 7.  Lists of numbers it reads right.
    """
    high, names, base = _FIELDS[index]
    items = []
    for item in field.split(","):
        body, slash, step = item.partition("/")
        if body in ("*", "?") or body.upper() == "L" or "#" in body:
            items.append(item)
            continue
        low, dash, top = body.partition("-")
        first = _number(low, names, base)
        last = _number(top, names, base) if dash else high if slash else first
        values = range(first, last + 1, int(step) if slash else 1)
        items.append(",".join(str(value) for value in values))
    return ",".join(items)


def _number(text: str, names: tuple[str, ...], base: int) -> int:
    return int(text) if text.isdigit() else names.index(text.lower()) + base


_EPOCH = datetime(1970, 1, 1)


class _Croniter(croniter):
    """croniter turning timestamps into times by arithmetic.  Its own conversion goes
    through the C library's gmtime(), which counts leap seconds when TZ names a right/
    zone (TZ=right/UTC): croniter then finds the same time again and again, for ever, in
    the CLI and in the daemon.  The times here are naive wall clock; no zone applies."""

    def timestamp_to_datetime(self, timestamp: float, tzinfo: Any = None) -> datetime:
        result = _EPOCH + timedelta(seconds=timestamp)
        if tzinfo:  # not used by this module; kept for croniter's own callers
            result = result.replace(tzinfo=UTC).astimezone(tzinfo)
        return result

    _timestamp_to_datetime = timestamp_to_datetime


@lru_cache(maxsize=4096)
def _template(fields: str) -> croniter:
    """A parsed croniter to copy: parsing costs ~150 us, copying ~20 us.

    Never iterated itself, only copied, so sharing it between threads is safe.
    """
    return _Croniter(fields, datetime(2000, 1, 1), day_or=False)


def _matches_ever(template: croniter) -> bool:
    # Day and month fields repeat with the 28-year calendar cycle, and croniter searches
    # 50 years: a side that finds nothing from 2000 on never matches.
    try:
        copy.copy(template).get_next(datetime)
    except FAILURES:
        return False
    return True


@lru_cache(maxsize=4096)
def _parts(expr: str) -> tuple[croniter, ...]:
    """Templates of the day variants of a valid expression that can match at all."""
    fields = MACROS.get(expr.lower(), expr)
    templates = tuple(_template(variant) for variant in day_variants(fields))
    return tuple(t for t in templates if _matches_ever(t)) or templates[:1]


def hourly(expr: str) -> bool:
    """True if the job runs every hour, so it follows elapsed time across a fold."""
    hours = _parts(expr)[0].expanded[1]
    return "*" in hours or len(set(hours)) == 24  # "*", "0-23", also "*,*/1" or "3,*"


def walls(expr: str, start: datetime, backwards: bool = False) -> Iterator[datetime]:
    """Naive wall-clock times matching `expr`, strictly beyond naive `start`, in order."""
    walkers = [_walk(template, start, backwards) for template in _parts(expr)]
    if len(walkers) == 1:
        yield from walkers[0]
        return
    previous = None
    for wall in heapq.merge(*walkers, reverse=backwards):
        if wall != previous:  # a day that matches both day fields
            previous = wall
            yield wall


def _walk(template: croniter, start: datetime, backwards: bool) -> Iterator[datetime]:
    walker = copy.copy(template)
    walker.set_current(start, force=True)
    step = walker.get_prev if backwards else walker.get_next
    while True:
        try:
            yield step(datetime)
        except FAILURES:  # no further match, or beyond year 9999
            return


def ascending(expr: str, tz_name: str, after: datetime) -> Iterator[Occurrence]:
    """Occurrences strictly after aware `after`, ascending, one per instant.

    Mapping wall times to instants is monotonic per fold, but the second pass of a
    repeated hour comes out after later wall times' first passes, so candidates wait in
    a heap.  A candidate is final once the current wall time maps to a later instant, or
    to the same one from outside a gap: only wall times inside a gap share an instant
    with a later wall time (the end of the gap).
    """
    tz, both = zone(tz_name), hourly(expr)
    start = after.astimezone(tz).replace(tzinfo=None, fold=0) - offset_swing(after, tz)
    pending: list[tuple[datetime, datetime]] = []
    last: datetime | None = None
    for wall in walls(expr, start):
        instants = wall_to_instants(wall, tz, both)
        for moment in instants:
            if moment > after:
                heapq.heappush(pending, (moment, wall))
        first, gapped = instants[0], _local(instants[0], tz) != wall
        while pending and (pending[0][0] < first or (pending[0][0] == first and not gapped)):
            occurrence = _pop_group(pending, tz, both)
            if last is None or occurrence.at > last:
                last = occurrence.at
                yield occurrence
    while pending:
        occurrence = _pop_group(pending, tz, both)
        if last is None or occurrence.at > last:
            last = occurrence.at
            yield occurrence


def descending(expr: str, tz_name: str, end: datetime) -> Iterator[datetime]:
    """Due instants at or before aware `end`, newest first, without duplicates."""
    tz, both = zone(tz_name), hourly(expr)
    local_end = end.astimezone(tz).replace(tzinfo=None, fold=0)
    start = local_end + offset_swing(end, tz) + timedelta(seconds=1)  # get_prev is exclusive
    pending: list[tuple[float, datetime]] = []
    last: datetime | None = None
    for wall in walls(expr, start, backwards=True):
        instants = wall_to_instants(wall, tz, both)
        for moment in instants:
            if moment <= end:
                heapq.heappush(pending, (-moment.timestamp(), moment))
        while pending and pending[0][1] >= instants[-1]:
            moment = heapq.heappop(pending)[1]
            if last is None or moment < last:
                last = moment
                yield moment
    yield from (m for _, m in sorted(pending) if last is None or m < last)


def _local(moment: datetime, tz: ZoneInfo) -> datetime:
    return moment.astimezone(tz).replace(tzinfo=None)


def _pop_group(pending: list[tuple[datetime, datetime]], tz: ZoneInfo, both: bool) -> Occurrence:
    """The earliest pending instant with every wall time that runs at it."""
    moment, wall = heapq.heappop(pending)
    group = [wall]
    while pending and pending[0][0] == moment:
        group.append(heapq.heappop(pending)[1])
    local = _local(moment, tz)
    if any(wall != local for wall in group):
        dst = MERGED if len(group) > 1 else MOVED
    elif _repeated(group[0], tz):
        dst = REPEATED if both else MERGED
    else:
        dst = ""
    return Occurrence(moment, tuple(group), dst)


def _repeated(wall: datetime, tz: ZoneInfo) -> bool:
    """True if naive `wall` happens twice in `tz` (the clocks went back over it)."""
    early = wall.replace(tzinfo=tz, fold=0).utcoffset()
    late = wall.replace(tzinfo=tz, fold=1).utcoffset()
    return early is not None and late is not None and early > late


def dst_note(occurrence: Occurrence, tz_name: str) -> str:
    """One line for an occurrence daylight saving touched ("" otherwise), for previews."""
    if not occurrence.dst:
        return ""
    tz = zone(tz_name)
    # Daylight saving moved the schedule's own time; a --jitter offset comes after it.
    local = _local(occurrence.at - timedelta(seconds=occurrence.jitter_s), tz)
    gap = [wall for wall in occurrence.walls if wall != local]
    if gap:
        at = f"{local:%H:%M}"
        moved = (
            f"; its jitter moves the run to {_local(occurrence.at, tz):%H:%M}"
            if occurrence.jitter_s
            else ""
        )
        together = len(occurrence.walls) > len(gap)  # with the time the gap ends at
        if len(gap) == 1:
            runs = f"runs once with {at}" if together else f"runs at {at}, the end of the gap"
            return f"{_times(gap)} does not exist that day (clocks go forward); {runs}{moved}"
        runs = f"with {at}" if together else f"at {at}, the end of the gap"
        return (
            f"{_times(gap)} do not exist that day (clocks go forward); they run once {runs}{moved}"
        )
    times = _times(occurrence.walls[:1])
    if occurrence.dst == REPEATED:
        return f"{times} happens twice that day (clocks go back); an hourly job runs in both"
    return f"{times} happens twice that day (clocks go back); runs once, at the first"


def _times(walls: tuple[datetime, ...] | list[datetime]) -> str:
    texts = [f"{wall:%H:%M}" for wall in walls]
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]
