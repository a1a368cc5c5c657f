"""The environment a job runs with: defined, never the daemon's own.

The daemon's environment may hold secrets (PONYBUNNY_DB with a password, a service
manager's variables); jobs get a documented base instead, as cron gives its jobs (crontab(5):
HOME, LOGNAME, SHELL, PATH) and systemd its services (systemd.exec(5), "Environment
variables in spawned processes"), then the job's --env-file, then its --env, then the
run's own PONYBUNNY_* variables, which nothing overrides.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping
from datetime import datetime

from pony_scheduler.errors import PonyError

RESERVED_ENV = "PONYBUNNY_"  # each run's own variables (run_variables)

# systemd's default PATH for services (systemd.exec(5)).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Passed through from the daemon when set: how to print and which zone, never secrets.
PASSED = re.compile(r"^(LANG|LANGUAGE|LC_[A-Z]+|TZ)$")
ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
MAX_ENV_FILE = 1 << 20  # bytes: an environment file is small


class EnvFileError(PonyError):
    """An --env-file that cannot be used: the run does not start, with this reason."""


def base_environment(daemon_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """HOME, LOGNAME, USER and SHELL of the user the scheduler runs as, PATH, and the
    daemon's locale and TZ variables."""
    daemon_env = os.environ if daemon_env is None else daemon_env
    try:
        user = pwd.getpwuid(os.geteuid())
        name, home = user.pw_name, user.pw_dir
    except KeyError:  # a uid without a passwd entry (containers)
        name, home = str(os.geteuid()), "/"
    base = {"HOME": home, "LOGNAME": name, "USER": name, "SHELL": "/bin/sh", "PATH": DEFAULT_PATH}
    base.update({key: value for key, value in daemon_env.items() if PASSED.match(key)})
    return base


def run_variables(
    job: str, run_id: int, attempt: int, occurrence: datetime, scheduler_id: str
) -> dict[str, str]:
    """What tells a run who it is; PONYBUNNY_OCCURRENCE (the scheduled instant, ISO 8601
    UTC) and PONYBUNNY_ATTEMPT let a job that must not run twice be idempotent."""
    from pony_scheduler.scheduler.recovery import SCHEDULER_VAR

    return {
        "PONYBUNNY_JOB": job,
        "PONYBUNNY_RUN_ID": str(run_id),
        "PONYBUNNY_ATTEMPT": str(attempt),
        "PONYBUNNY_OCCURRENCE": occurrence.isoformat().replace("+00:00", "Z"),
        SCHEDULER_VAR: scheduler_id,
    }


def read_env_file(path: str) -> dict[str, str]:
    """NAME=VALUE lines of `path`, as systemd's EnvironmentFile= reads them (systemd.exec(5)):
    blank lines and lines starting with # or ; are ignored, a value may be quoted with '
    or ".  The file must be a regular file of ours or root's, not writable by group or
    others, reached through directories and links of ours or root's only, and it is
    checked on the descriptor it is read from (pathtrust: another user's link or
    directory on the way could swap the file between a check and the read).
    Raises EnvFileError."""
    from pony_scheduler.pathtrust import UnsafePath, read_checked

    try:
        data = read_checked(path, "the --env-file", limit=MAX_ENV_FILE)
    except UnsafePath as exc:
        raise EnvFileError(f"--env-file {exc}") from None
    except IsADirectoryError:
        raise EnvFileError(f"--env-file {path} is a directory; name a file") from None
    except OSError as exc:
        raise EnvFileError(f"cannot read --env-file {path}: {exc.strerror}") from None
    if len(data) > MAX_ENV_FILE:
        raise EnvFileError(f"--env-file {path} is larger than 1 MiB")
    return parse_env_file(data, path)


def parse_env_file(data: bytes, path: str) -> dict[str, str]:
    """The variables in an environment file's bytes; EnvFileError names the bad line."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise EnvFileError(f"--env-file {path} is not UTF-8 text") from None
    found = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        match = ENV_LINE.match(line)
        if match is None or "\0" in line:
            raise EnvFileError(
                f"--env-file {path} line {number}: not NAME=VALUE (NAME: letters, digits, _)"
            )
        name, value = match.groups()
        if name.startswith(RESERVED_ENV):
            # As for --env (jobs.parse_env): run_variables would override it silently, and
            # a job reading PONYBUNNY_RUN_ID must be able to trust it.
            raise EnvFileError(
                f"--env-file {path} line {number}: {RESERVED_ENV}* variables are set by the "
                f"scheduler for each run ({name}); choose another name"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[name] = value
    return found


def redact(
    env: Mapping[str, str],
    secret: frozenset[str] | set[str] | list[str],
) -> dict[str, str]:
    """`env` with the values of secret names replaced, for show, the API and exports."""
    return {key: "(secret)" if key in secret else value for key, value in env.items()}
