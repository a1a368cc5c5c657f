"""The machine's time zone as a tz database name, found the way `date` finds it.

glibc (and so `date`) takes TZ when it is set, else /etc/localtime; pb does the same and
stores the zone's *name*, because a cron job needs the zone's rules for every future
year and `pb job list` needs a name to show:

* ``TZ=Japan``, ``TZ=:Asia/Tokyo`` (a leading ':' is ignored): that name, if the tz
  database has it.  ``TZ=`` (set, empty) is UTC, as for glibc; ``TZ=:`` alone is as if
  TZ were unset.
* ``TZ=/usr/share/zoneinfo/Asia/Tokyo``, or any path to a zone file: the name under the
  zoneinfo directory, or else the zone whose file has the same content.
* ``TZ=JST-9``, ``EST5EDT`` and other POSIX rule strings: the name if the tz database has
  one by that spelling (``EST5EDT`` is a zone there), else refused (ConfigError): a rule
  string names no zone, and guessing one (Asia/Tokyo? Asia/Seoul?) would be wrong.
* no TZ: tzlocal names the configured zone (the /etc/localtime symlink, /etc/timezone,
  /etc/sysconfig/clock ... across distributions).  That name is used only if it agrees
  with /etc/localtime's content, which is what `date` actually reads; a stale
  /etc/timezone loses.  When /etc/localtime is a plain copy of a zone file, the zone
  with the same content is used.  When nothing can be told (no /etc/localtime, or a
  file that matches no zone), the result is UTC *with a warning* for the caller to print.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from pony_scheduler.durations import quote
from pony_scheduler.errors import ConfigError
from pony_scheduler.scheduler.timeparse import check_zone

LOCALTIME = Path("/etc/localtime")
# std offset [dst [offset] [,rule]] (POSIX.1 8.3), e.g. JST-9, EST5EDT, <+0330>-3:30.
_POSIX_RULE = re.compile(r"(?:[A-Za-z]{3,}|<[+-]?\w+>)[+-]?\d{1,2}(?::\d\d){0,2}.*", re.ASCII)
_ADVICE = "give --tz ZONE (an IANA name such as Europe/Berlin), or set TZ to one"


@dataclass(frozen=True)
class MachineZone:
    """name: a zone zoneinfo can load.  warning: set (one line) when the zone could not
    be told and `name` is UTC for want of anything better."""

    name: str
    warning: str = ""


def machine_zone(
    now: datetime, environ: Mapping[str, str] | None = None, localtime: Path = LOCALTIME
) -> MachineZone:
    """The zone a job added now without --tz runs in; ConfigError for an unusable TZ.

    `now` (aware) bounds the comparison of a copied zone file with the tz database.
    """
    tz = (os.environ if environ is None else environ).get("TZ")
    if tz == "":
        return MachineZone("UTC")
    if tz is not None and tz != ":":
        return _from_tz(tz, now)
    return _from_system(localtime, now)


def _from_tz(value: str, now: datetime) -> MachineZone:
    text = value.removeprefix(":")
    if not text.startswith("/"):
        try:
            return MachineZone(check_zone(text))
        except ConfigError:
            if _POSIX_RULE.fullmatch(text):
                raise ConfigError(
                    f"TZ={quote(value)} is a POSIX time zone rule, not a zone name; pb needs "
                    f"the tz database's rules to run jobs in the right hour: {_ADVICE}"
                ) from None
            raise ConfigError(
                f"TZ={quote(value)} is not a zone of the tz database; {_ADVICE}"
            ) from None
    path = Path(text)
    try:
        data = _zone_file(path)
    except OSError as exc:
        raise ConfigError(
            f"TZ={quote(value)} names a file that cannot be read ({exc.strerror}); {_ADVICE}"
        ) from None
    name = _name_from_path(path, data, now) or _match(data)
    if name is None:
        raise ConfigError(f"TZ={quote(value)} is not a zone file of the tz database; {_ADVICE}")
    return MachineZone(name)


MAX_ZONE_FILE = 1 << 20  # bytes: tz database files are a few KiB


def _zone_file(path: Path) -> bytes:
    """A zone file's bytes: a regular file, read without blocking and at most
    MAX_ZONE_FILE bytes (TZ may name /dev/zero or a FIFO).  OSError otherwise."""
    import errno
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = os.read(fd, MAX_ZONE_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_ZONE_FILE:
        raise OSError(errno.EFBIG, "too large for a zone file")
    return data


def _from_system(localtime: Path, now: datetime) -> MachineZone:
    try:
        data = _zone_file(localtime)
    except OSError as exc:
        why = "does not exist" if isinstance(exc, FileNotFoundError) else exc.strerror
        return _unknown(f"TZ is not set and {localtime} {why}")
    name = _configured_name()
    if name is not None and _same_zone(name, data, now):
        return MachineZone(name)
    name = _match(data)
    if name is None:
        return _unknown(f"TZ is not set and {localtime} matches no zone of the tz database")
    return MachineZone(name)


def _unknown(why: str) -> MachineZone:
    return MachineZone("UTC", f"cannot tell this machine's time zone ({why}); using UTC: {_ADVICE}")


def _configured_name() -> str | None:
    """tzlocal's reading of the system configuration, or None (also when it conflicts).

    tzlocal caches its answer for the process; pb asks once per command.
    """
    import tzlocal

    logging.getLogger("tzlocal").addHandler(logging.NullHandler())  # no stray lines
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            name = tzlocal.get_localzone_name()
        return check_zone(name) if name else None
    except (ConfigError, zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _name_from_path(path: Path, data: bytes, now: datetime) -> str | None:
    """The zone a zone file's path names (/usr/share/zoneinfo/Asia/Tokyo, also a copy
    such as /opt/zones/Asia/Tokyo), checked against its content; or None."""
    for candidate in (path, path.resolve()):
        parts = candidate.parts[1:]
        for start in reversed(range(len(parts))):  # the shortest name: not posix/Asia/Tokyo
            try:
                name = check_zone("/".join(parts[start:]))
            except ConfigError:
                continue
            if _same_zone(name, data, now):
                return name
    return None


def _match(data: bytes) -> str | None:
    """The tz database zone whose file is exactly `data`, or None.

    Only byte-for-byte: many zones share today's rules (Europe/Berlin, Europe/Paris ...
    since 1980), so a file that matches none exactly could be any of them.
    """
    same = [name for name in _zones() if _zone_bytes(name) == data]
    return min(same, key=_preference) if same else None


@cache
def _zones() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


def _zone_bytes(name: str) -> bytes | None:
    for root in zoneinfo.TZPATH:
        try:
            return (Path(root) / name).read_bytes()
        except OSError:
            continue
    return None


def _same_zone(name: str, data: bytes, now: datetime) -> bool:
    if _zone_bytes(name) == data:
        return True
    try:
        return _behaves_alike(zoneinfo.ZoneInfo(name), ZoneInfo.from_file(io.BytesIO(data)), now)
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        return False


def _behaves_alike(a: ZoneInfo, b: ZoneInfo, now: datetime) -> bool:
    """Same offset and abbreviation every hour from a year before `now` to two after.

    Accepts a name for a copy of another build or release of that zone (zic -b slim, an
    older tzdata), which differs in bytes only.
    """
    coarse = [now + timedelta(days=days) for days in range(-365, 731, 30)]
    if any(_reading(a, moment) != _reading(b, moment) for moment in coarse):
        return False
    start = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = (start + timedelta(hours=h) for h in range(-365 * 24, 730 * 24))
    return all(_reading(a, moment) == _reading(b, moment) for moment in hours)


def _reading(tz: ZoneInfo, moment: datetime) -> tuple[timedelta | None, str | None]:
    local = moment.astimezone(tz)
    return local.utcoffset(), local.tzname()


def _preference(name: str) -> tuple[bool, bool, str]:
    """Of zones with the same rules, a real file over a link (Asia/Tokyo, not Japan), and
    an Area/Location name over an old-style one."""
    linked = any((Path(root) / name).is_symlink() for root in zoneinfo.TZPATH)
    return linked, "/" not in name, name
