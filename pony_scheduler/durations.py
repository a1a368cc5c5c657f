"""Durations as users write and read them: "90s", "1h30m", "500ms".

Deliberately light (it imports only `re`, and compiles nothing at import): `pb scheduler
status` formats its uptime with format_duration, and that command must not pay for
zoneinfo or croniter.
"""

from __future__ import annotations

import functools
import re

from pony_scheduler.errors import ConfigError

MAX_DURATION = 100 * 366 * 86400.0  # far beyond any sane interval; keeps timedelta in range
DURATION_FORMS = "a number of seconds or forms like 90s, 5m, 1h30m, 2d, 1.5h, 500ms"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"


@functools.cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(a bare number, one number-and-unit part); compiled on first use, not at import
    (`pb scheduler status` only formats)."""
    return (
        re.compile(rf"\s*{_NUMBER}\s*", re.ASCII),
        re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d|w)", re.ASCII | re.IGNORECASE),
    )


def quote(text: str, limit: int = 80) -> str:
    """'text' for an error message: control characters escaped, long input shortened."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(shown) > limit:
        shown = shown[: limit - 3] + "..."
    return f"'{shown}'"


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in `text`: "90", "90s", "5m", "1h30m", "1h 30m", "2d", "1.5h", "500ms".

    Raises ConfigError (one line, naming `what`) for anything else, for zero and for more
    than 100 years.
    """
    seconds = _duration_seconds(text)
    if seconds is None:
        raise ConfigError(f"invalid {what} {quote(text)}: use {DURATION_FORMS}")
    if seconds <= 0:
        raise ConfigError(f"{what} must be greater than zero, got {quote(text)}")
    if seconds > MAX_DURATION:
        raise ConfigError(f"{what} {quote(text)} is too long; the maximum is 100 years")
    return seconds


def parse_window(text: str, what: str) -> float | None:
    """A window such as --jitter: parse_duration's seconds, or None for "none" or a zero
    duration ("0", "0s": off, as systemd's RandomizedOffsetSec=0).  Raises ConfigError as
    parse_duration does for anything else, and for a window under 1 ms or with a fraction
    of a millisecond (it is shown, and a job's offset in it drawn, in whole ms)."""
    if text.strip().lower() == "none" or _duration_seconds(text) == 0:
        return None
    seconds = parse_duration(text, what)
    if seconds < 0.001:  # shown in milliseconds: 0.4ms would read "0s" (review finding)
        raise ConfigError(f"{what} {quote(text)} is under 1ms; give 1ms or more, or 0 for none")
    millis = seconds * 1000
    if abs(millis - round(millis)) > 1e-6:  # shown, and offsets drawn, in whole ms
        raise ConfigError(
            f"{what} {quote(text)} has a fraction of a millisecond; give whole milliseconds "
            f"(such as {max(1, round(millis))}ms)"
        )
    return seconds


def _duration_seconds(text: str) -> float | None:
    bare, part = _patterns()
    if bare.fullmatch(text):
        return float(text)
    total, pos = 0.0, 0
    for match in part.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2).lower()]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        return None
    return total


def format_duration(seconds: float) -> str:
    """Short human form that parse_duration reads back: 5400 -> "1h 30m", 90 -> "1m 30s".

    Milliseconds appear only when `seconds` has a fraction (0.5 -> "500ms"); pass whole
    seconds (an uptime) to get whole seconds.  Negative input gets a leading "-".
    """
    millis = round(abs(seconds) * 1000)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis or not parts:
        parts.append(f"{millis}ms" if millis else "0s")
    return ("-" if seconds < 0 else "") + " ".join(parts)
