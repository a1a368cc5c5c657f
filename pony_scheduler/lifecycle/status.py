"""status for any service: read-only, and kept apart from start and stop (control.py) so
that `pb NAME status`, run in prompts, loops and monitors, imports only what it needs."""

import os
import time
from typing import Any, NamedTuple

from pony_scheduler.config import Settings
from pony_scheduler.errors import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK, EXIT_UNKNOWN
from pony_scheduler.lifecycle import pidfile
from pony_scheduler.lifecycle.pidfile import PidState
from pony_scheduler.lifecycle.spec import ServiceSpec


class Status(NamedTuple):
    spec: ServiceSpec
    state: str  # running | starting | stale | stopped | unknown
    exit_code: int
    pid: int | None = None
    meta: dict[str, Any] | None = None
    reason: str = ""

    def uptime(self, now: float | None = None) -> float | None:
        if not self.meta or not isinstance(self.meta.get("startedAt"), int | float):
            return None
        return max(0.0, (now or time.time()) - self.meta["startedAt"] / 1000)


def status(spec: ServiceSpec, settings: Settings) -> Status:
    """Whether `spec`'s daemon of this home runs, from its pid file and the process it
    names, with the LSB init-script status code (0 running, 1 dead with a pid file,
    3 not running, 4 unknown).  Raises nothing for an unreadable pid file: unknown."""
    try:
        info = pidfile.inspect(spec, settings.home_dir)
    except PermissionError as exc:
        return Status(spec, "unknown", EXIT_UNKNOWN, reason=str(exc))
    if info.state is PidState.RUNNING:
        if info.owner_uid not in (None, os.getuid()) and os.getuid() != 0:
            reason = f"runs as {user_name(info.owner_uid)}"
            return Status(spec, "running", EXIT_OK, info.pid, info.meta, reason)
        return Status(spec, "running", EXIT_OK, info.pid, info.meta)
    if info.state is PidState.STARTING:
        return Status(spec, "starting", EXIT_NOT_RUNNING)
    if info.state is PidState.STALE:
        return Status(spec, "stale", EXIT_FAILURE, info.pid, None, info.reason)
    return Status(spec, "stopped", EXIT_NOT_RUNNING)


def user_name(uid: int | None) -> str:
    """The name of user `uid` for a message ("another user" when unknown)."""
    if uid is None:
        return "another user"
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
