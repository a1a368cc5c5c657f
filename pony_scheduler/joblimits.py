"""Job option values that set numbers and limits: ranges, sizes, CPUs, the umask.

Pure parsing, shared by the CLI and the gateway; every error is one ConfigError line that
names the flag and what to give instead.
"""

from __future__ import annotations

import re

from pony_scheduler.errors import ConfigError

# Ranges of the integer options, the same on SQLite and PostgreSQL (pb-job(1)).
RETRIES = (0, 10_000)
MAX_QUEUED = (1, 10_000)
TASKS_MAX = (1, 4_194_304)  # the kernel's pid_max limit
MEMORY_MAX = (1 << 20, 1 << 50)  # bytes: 1 MiB to 1 PiB
CPU_MAX = (0.01, 1024.0)  # CPUs
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE | re.ASCII)
# float() would also take "1_000", "1e3", "inf" or other scripts' digits (review finding).
_CPUS = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)(%?)$", re.ASCII)


def ascii_whole(text: str) -> int | None:
    """`text` as a whole number if it is written in ASCII digits alone, else None: int()
    would also take "1_0", " 5", "²" or "٣" (or raise on some of them)."""
    return int(text) if text.isascii() and text.isdigit() else None


def in_range(value: int, bounds: tuple[int, int], flag: str) -> int:
    """`value` if within `bounds` (inclusive); ConfigError naming `flag` if not."""
    low, high = bounds
    if not low <= value <= high:
        raise ConfigError(f"{flag} must be from {low} to {high:,}, not {value}")
    return value


def parse_size(text: str, flag: str) -> int | None:
    """Bytes from 512M, 2G, 1.5G or a plain number (suffixes are powers of 1024, as
    systemd's MemoryMax=); "none" for no limit.  ConfigError outside 1 MiB to 1 PiB."""
    if text.strip().lower() == "none":
        return None
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"{flag} {text!r} is not a size such as 512M or 2G (or none)")
    number = float(match.group(1)) * 1024 ** "_KMGTP".index(match.group(2).upper() or "_")
    low, high = MEMORY_MAX
    if not low <= number <= high:
        raise ConfigError(f"{flag} {text!r} is out of range: give 1M to 1P")
    return int(number)


def parse_tasks(text: str) -> int | None:
    """Most processes and threads of a run (the pids controller's pids.max); "none" for
    no limit.  ConfigError unless ASCII digits within TASKS_MAX."""
    value = text.strip()
    if value.lower() == "none":
        return None
    number = ascii_whole(value)
    if number is None:
        raise ConfigError(f"--tasks-max {text!r} is not a whole number (or none)")
    return in_range(number, TASKS_MAX, "--tasks-max")


def parse_cpus(text: str) -> float | None:
    """CPUs from 0.5, 2 or 50% (of one CPU, as systemd's CPUQuota=); "none" for no limit."""
    value = text.strip().lower()
    if value == "none":
        return None
    match = _CPUS.match(value)
    cpus = float("nan") if match is None else float(match[1]) / (100 if match[2] else 1)
    low, high = CPU_MAX
    if not low <= cpus <= high:  # also false for NaN
        raise ConfigError(
            f"--cpu-max {text!r} is not a number of CPUs from {low:g} to "
            f"{high:g} or a percentage of one CPU such as 50% (or none)"
        )
    return cpus


def format_size(size: int) -> str:
    """Bytes exactly, in the largest binary unit that divides them: "512 MiB", "1536 MiB",
    "1 PiB", "123456789 bytes" (parse_size reads each back to the same number; a rounded
    "1.5 GiB" would not be the limit in force: review finding)."""
    for power, name in ((5, "PiB"), (4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if size % 1024**power == 0:
            return f"{size // 1024**power} {name}"
    return f"{size} bytes"


def parse_umask(text: str) -> int:
    """An octal umask such as 022 or 0027 (umask(2)); ConfigError outside 000-777."""
    digits = text.strip()
    if (
        not digits
        or len(digits) > 4
        or any(c not in "01234567" for c in digits)
        or (len(digits) == 4 and digits[0] != "0")
    ):
        raise ConfigError(f"--umask {text!r} is not an octal mask from 000 to 777, e.g. 022 or 027")
    return int(digits, 8)
