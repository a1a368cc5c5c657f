"""A job's times as admins read them, and previews of its next runs.  No click here.

A cron or `--at` job's times are shown in the job's own zone with the zone's
abbreviation ("2026-12-01 03:00 CET"), which also tells the two passes of a repeated
hour apart; an interval or manual job has no zone, so its times are shown in the zone of
the machine showing them (as `date` would).  JSON gives ISO 8601 with the offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from pony_scheduler.errors import ConfigError
from pony_scheduler.scheduler import cron
from pony_scheduler.scheduler.schedule import Schedule, upcoming
from pony_scheduler.scheduler.timeparse import local_text, zone

ZONED = ("cron", "at")
PREVIEW_DEFAULT, PREVIEW_MAX = 5, 1000


@dataclass(frozen=True)
class Preview:
    """One coming run: `at` (UTC), the same instant in the shown zone, and what daylight
    saving did to it (cron.Occurrence.dst, "" if nothing; `note` says it in words)."""

    at: datetime
    local: datetime
    dst: str = ""
    note: str = ""


def shown_zone(kind: str, tz: str | None) -> tzinfo | None:
    """The zone a job's times are shown in: its own for cron and `--at` jobs, else None
    (the machine's).  A damaged stored zone falls back to the machine's."""
    if kind not in ZONED or not tz:
        return None
    try:
        return zone(tz)
    except (ValueError, OSError, LookupError):
        return None


def next_run_local(job: Mapping[str, Any]) -> datetime | None:
    """The job view's `next_run_at` (ISO UTC) in the job's shown zone, or None."""
    text = job.get("next_run_at")
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return moment.astimezone(shown_zone(str(job.get("schedule_kind")), job.get("schedule_tz")))


def text(moment: datetime | None) -> str:
    """ "2026-12-01 03:00 CET" for an aware local time (see timeparse.local_text); "-"."""
    return local_text(moment, moment.tzinfo) if moment is not None else "-"


def preview(schedule: Schedule, now: datetime, count: int) -> list[Preview]:
    """The first `count` runs after `now`: schedule.upcoming, the daemon's own iteration."""
    if not 1 <= count <= PREVIEW_MAX:
        raise ConfigError(f"the number of runs must be from 1 to {PREVIEW_MAX}, not {count}")
    tz = shown_zone(schedule.kind, schedule.tz)
    return [
        Preview(o.at, o.at.astimezone(tz), o.dst, cron.dst_note(o, schedule.tz) if o.dst else "")
        for o in upcoming(schedule, now, count)
    ]


def preview_json(rows: list[Preview]) -> list[dict[str, str | None]]:
    """Rows as `pb job next --json` prints them."""
    return [
        {
            "utc": row.at.isoformat(),
            "local": row.local.isoformat(),
            "abbr": row.local.tzname(),
            "dst": row.dst or None,
            "note": row.note or None,
        }
        for row in rows
    ]
