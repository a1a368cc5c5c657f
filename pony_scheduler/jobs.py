"""Job definitions as users give them, validated and turned into store values.

No click here: the CLI and the gateway hand in plain values.  The schedule maths (and
croniter) is imported inside the functions that need it, so that commands such as
`pb scheduler status`, which only import the option names from here, stay quick.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pony_scheduler.errors import ConfigError
from pony_scheduler.joblimits import (
    MAX_QUEUED,
    RETRIES,
    in_range,
    parse_cpus,
    parse_size,
    parse_tasks,
    parse_umask,
)
from pony_scheduler.scheduler.environment import RESERVED_ENV
from pony_scheduler.textsafe import undecodable_shown

if TYPE_CHECKING:
    from pony_scheduler.actor import Actor
    from pony_scheduler.scheduler.schedule import Schedule
    from pony_scheduler.store import Store

OVERLAP = ("skip", "queue", "allow")
CATCH_UP = ("skip", "once", "all")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LEFTOVERS = ("kill", "keep")
UMASK_DEFAULT = 0o022  # what cron and systemd give their jobs


@dataclass
class JobOptions:
    """What `pb job add/edit` received; None means "not given"."""

    cron: str | None = None
    tz: str | None = None
    every: str | None = None
    at: str | None = None
    manual: bool = False
    timeout: str | None = None
    retries: int | None = None
    retry_delay: str | None = None
    overlap: str | None = None
    catch_up: str | None = None
    cwd: str | None = None
    env: list[str] = field(default_factory=list)
    shell: bool | None = None
    command: list[str] = field(default_factory=list)
    umask: str | None = None
    start_deadline: str | None = None
    max_queued: int | None = None
    env_file: str | None = None
    secret: list[str] = field(default_factory=list)
    leftovers: str | None = None
    memory_max: str | None = None
    cpu_max: str | None = None
    tasks_max: str | None = None
    jitter: str | None = None


def _ignore(message: str) -> None:
    del message


def local_zone(now: datetime, warn: Callable[[str], None] = _ignore) -> str:
    """The machine's zone, for a cron or --at job given no --tz (see localzone.py).

    `warn` gets the one line saying the zone could not be told (UTC is used then); an
    unusable TZ (a POSIX rule such as JST-9) is a ConfigError.
    """
    from pony_scheduler.localzone import machine_zone

    found = machine_zone(now)
    if found.warning:
        warn(found.warning)
    return found.name


def build_schedule(
    opts: JobOptions,
    now: datetime,
    current: Schedule | None = None,
    warn: Callable[[str], None] = _ignore,
) -> Schedule | None:
    """The schedule the options give, or None if they give none.

    `current` is the job's schedule for `pb job edit`, which changes only what is given:
    --tz alone moves a cron or --at schedule to that zone (sched.with_zone), --cron or
    --at alone keep the job's zone.  A job that gets its first zone takes the machine's.
    """
    from pony_scheduler.scheduler import schedule as sched

    chosen = [
        name
        for name, value in (
            ("--cron", opts.cron),
            ("--every", opts.every),
            ("--at", opts.at),
            ("--manual", opts.manual or None),
        )
        if value is not None
    ]
    if len(chosen) > 1:
        raise ConfigError(f"choose one schedule, not {' and '.join(chosen)}")
    if opts.tz is not None:
        sched.check_zone(opts.tz)
    if opts.tz is not None and opts.cron is None and opts.at is None:
        if current is None or opts.every is not None or opts.manual:
            raise ConfigError("--tz applies to --cron and --at only")
        if current.kind not in ("cron", "at"):
            raise ConfigError(
                f"--tz applies to cron and --at jobs, and this job's schedule is "
                f"'{sched.describe(current)}' (give --cron or --at with --tz to "
                "change it)"
            )
        return sched.with_zone(current, opts.tz, now)
    if opts.cron is not None or opts.at is not None:
        if opts.tz is not None:
            tz = opts.tz
        elif current is not None and current.kind in ("cron", "at"):
            tz = current.tz
        else:
            tz = local_zone(now, warn)
        if opts.cron is not None:
            return sched.cron_schedule(opts.cron, tz)
        from pony_scheduler.scheduler.timeparse import at_note

        at = sched.at_schedule(str(opts.at), tz, now)
        note = at_note(str(opts.at), tz, datetime.fromisoformat(at.expr))
        if note:
            warn(note)
        return at
    if opts.every is not None:
        return sched.every_schedule(opts.every, now)
    return sched.manual_schedule() if opts.manual else None


def schedule_values(schedule: Schedule, now: datetime) -> dict[str, Any]:
    """Store values for a schedule.  DEFAULT_DEADLINE is applied by the store only to jobs
    whose start deadline was not given (start_deadline_auto)."""
    from pony_scheduler.scheduler import schedule as sched
    from pony_scheduler.scheduler.occurrences import default_start_deadline
    from pony_scheduler.store.jobs import DEFAULT_DEADLINE

    return {
        "schedule_kind": schedule.kind,
        "schedule_expr": schedule.expr,
        "schedule_tz": schedule.tz,
        "schedule_anchor": schedule.anchor,
        "next_due_at": sched.next_after(schedule, now),
        DEFAULT_DEADLINE: default_start_deadline(schedule, now),
    }


def stored_schedule(row: dict[str, Any]) -> Schedule:
    """A job row's schedule, with its --jitter offset; ConfigError if it is damaged."""
    from pony_scheduler.scheduler import schedule as sched

    return sched.from_dict(
        {
            "kind": row["schedule_kind"],
            "expr": row["schedule_expr"],
            "tz": row["schedule_tz"],
            "anchor": row["schedule_anchor"],
            "offset": sched.jitter_offset(row["name"], row.get("jitter_s")),
        }
    )


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.match(name):
            raise ConfigError(f"--env {pair!r} is not NAME=VALUE (NAME: letters, digits, _)")
        if name.startswith(RESERVED_ENV):
            # The scheduler sets these for each run (environment.run_identity), over
            # anything given: say so now rather than drop the value silently.
            raise ConfigError(
                f"--env {name}: {RESERVED_ENV}* variables are set by the scheduler for "
                "each run; choose another name"
            )
        if "\0" in value:
            raise ConfigError(f"--env {name}: the value holds a NUL byte, which no environment can")
        env[name] = value
    return env


def _is_none(text: str) -> bool:
    return text.strip().lower() == "none"


def _cwd(text: str) -> str | None:
    """--cwd: an existing directory, made absolute; "none" for the default (the
    scheduler's home).  ConfigError for an empty or missing one."""
    if _is_none(text):
        return None
    if not text.strip():
        raise ConfigError("--cwd '' names no directory; give one, or none for the scheduler's home")
    cwd = Path(text).expanduser().absolute()
    if not cwd.is_dir():
        why = "is not a directory" if cwd.exists() else "no such directory"
        raise ConfigError(f"--cwd {undecodable_shown(text)}: {why}; give a directory")
    return _utf8_path("--cwd", str(cwd))


def _utf8_path(option: str, path: str) -> str:
    """`path` when it is UTF-8 (the database stores text); else ConfigError.  Such a path
    is refused rather than stored some other way (review finding: a traceback)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"{option} {undecodable_shown(path)}: the path is not UTF-8, which the database "
            "stores; rename it, or give a link to it whose path is"
        ) from None
    return path


def _choice(value: str | None, allowed: tuple[str, ...], flag: str) -> str | None:
    if value is not None and value not in allowed:
        raise ConfigError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def option_values(opts: JobOptions) -> dict[str, Any]:
    """Store values for every option given (besides the schedule and the command)."""
    from pony_scheduler.durations import parse_duration, parse_window

    values: dict[str, Any] = {}
    if opts.timeout is not None:
        values["timeout_s"] = (
            None if _is_none(opts.timeout) else parse_duration(opts.timeout, "--timeout")
        )
    if opts.retries is not None:
        values["retries"] = in_range(opts.retries, RETRIES, "--retries")
    if opts.max_queued is not None:
        values["max_queued"] = in_range(opts.max_queued, MAX_QUEUED, "--max-queued")
    if opts.umask is not None:
        values["umask"] = parse_umask(opts.umask)
    if opts.start_deadline is not None:
        values["start_deadline_auto"] = False
        values["start_deadline_s"] = (
            None
            if opts.start_deadline.strip().lower() == "none"
            else parse_duration(opts.start_deadline, "--start-deadline")
        )
    if opts.retry_delay is not None:
        values["retry_delay_s"] = parse_duration(opts.retry_delay, "--retry-delay")
    if _choice(opts.overlap, OVERLAP, "--overlap"):
        values["overlap"] = opts.overlap
    if _choice(opts.catch_up, CATCH_UP, "--catch-up"):
        values["catch_up"] = opts.catch_up
    if opts.cwd is not None:
        values["cwd"] = _cwd(opts.cwd)
    if opts.env:
        # An empty --env '' stands for no variables (as systemd's empty assignment
        # resets a list): `pb job edit NAME --env ''` clears them.
        values["env"] = parse_env([pair for pair in opts.env if pair != ""])
    if opts.env_file is not None:
        values["env_file"] = check_env_file(opts.env_file)
    if _choice(opts.leftovers, LEFTOVERS, "--leftovers"):
        values["leftovers"] = opts.leftovers
    if opts.memory_max is not None:
        values["memory_max"] = parse_size(opts.memory_max, "--memory-max")
    if opts.cpu_max is not None:
        values["cpu_max"] = parse_cpus(opts.cpu_max)
    if opts.jitter is not None:
        values["jitter_s"] = parse_window(opts.jitter, "--jitter")
    if opts.tasks_max is not None:
        values["tasks_max"] = parse_tasks(opts.tasks_max)
    if opts.secret:
        bad = [name for name in opts.secret if not ENV_NAME.match(name)]
        if bad:
            raise ConfigError(f"--secret {bad[0]!r} is not a variable name (letters, digits, _)")
        values["secret_env"] = sorted(set(opts.secret))
    return values


LIMIT_FLAGS = (
    ("memory_max", "--memory-max"),
    ("cpu_max", "--cpu-max"),
    ("tasks_max", "--tasks-max"),
)


def check_secrets(secret: list[str], env: dict[str, str]) -> None:
    """Every --secret names a variable of the job's --env, as the job has it after the add
    or edit (names are case-sensitive, as in the environment): a name that matches none
    would leave the value it was meant to hide in clear.  Raises ConfigError."""
    for name in secret:
        if name in env:
            continue
        alike = [key for key in env if key.lower() == name.lower()]
        hint = (
            f"did you mean {alike[0]}? names are case-sensitive"
            if alike
            else f"its --env variables: {', '.join(sorted(env)) or 'none'}"
        )
        raise ConfigError(
            f"--secret {name} names no --env variable of the job ({hint}); "
            "give --env NAME=VALUE with it"
        )


def _stored_env(row: dict[str, Any] | None) -> dict[str, str]:
    import json

    try:
        env = json.loads((row or {}).get("env") or "{}")
    except ValueError:
        return {}
    return env if isinstance(env, dict) else {}


def check_env_file(path: str) -> str | None:
    """The absolute path of an --env-file that can be read now ('' removes it); values are
    read at each run's start, never stored."""
    from pony_scheduler.scheduler.environment import EnvFileError, read_env_file

    if path == "":
        return None
    absolute = _utf8_path("--env-file", str(Path(path).expanduser().absolute()))
    try:
        read_env_file(absolute)
    except EnvFileError as exc:
        raise ConfigError(str(exc)) from None
    return absolute


def command_values(opts: JobOptions, required: bool) -> dict[str, Any]:
    if not opts.command:
        if required:
            raise ConfigError(
                "missing command: put it after --, e.g. "
                "pb job add backup --cron '0 3 * * *' -- /usr/local/bin/backup"
            )
        return {} if opts.shell is None else {"shell": opts.shell}
    shell = bool(opts.shell)
    if shell and len(opts.command) != 1:
        raise ConfigError(
            "--shell takes the command as one string: pb job add NAME --shell ... -- 'cmd | other'"
        )
    if any("\0" in arg for arg in opts.command):
        raise ConfigError("the command holds a NUL byte, which no program can be given")
    if not opts.command[0].strip():
        raise ConfigError(
            "the shell command is empty: put the command after --, e.g. --shell -- 'cmd | other'"
            if shell
            else "the command's program is empty: put a program after --, e.g. -- /usr/bin/true"
        )
    return {"command": list(opts.command), "shell": shell}


def new_job(
    name: str, opts: JobOptions, now: datetime, warn: Callable[[str], None] = _ignore
) -> dict[str, Any]:
    from pony_scheduler.scheduler import schedule as sched

    sched.validate_job_name(name)
    schedule = build_schedule(opts, now, warn=warn)
    if schedule is None:
        raise ConfigError("missing schedule: give --cron, --every, --at or --manual")
    defaults: dict[str, Any] = {
        "timeout_s": None,
        "retries": 0,
        "retry_delay_s": 10.0,
        "overlap": "skip",
        "catch_up": "once",
        "cwd": None,
        "env": {},
        "enabled": True,
        "umask": UMASK_DEFAULT,
        "max_queued": 10,
    }
    options = option_values(opts)
    check_secrets(opts.secret, options.get("env") or {})
    sched.check_jitter(schedule, options.get("jitter_s"), now)
    check_kept_limits(options)
    schedule = sched.with_offset(schedule, sched.jitter_offset(name, options.get("jitter_s")))
    return {
        **defaults,
        **options,
        **command_values(opts, required=True),
        **schedule_values(schedule, now),
    }


def check_kept_limits(job: dict[str, Any]) -> None:
    """ConfigError for `--leftovers keep` with a limit: the processes kept outlive their
    run in the home's `kept` group, beyond the run's limits (a fork bomb kept would be
    unlimited: review finding), so the pair would promise what cannot hold."""
    limited = [flag for key, flag in LIMIT_FLAGS if job.get(key) is not None]
    if job.get("leftovers") == "keep" and limited:
        raise ConfigError(
            f"--leftovers keep cannot go with {' and '.join(limited)}: kept processes "
            "outlive their run and its limits; drop one or the other"
        )


def check_changes(opts: JobOptions) -> None:
    """What `pb job edit` can check before it opens the database (ConfigError)."""
    from pony_scheduler.scheduler import schedule as sched

    option_values(opts)
    command_values(opts, required=False)
    if opts.tz is not None:
        sched.check_zone(opts.tz)


def changed_job(
    opts: JobOptions,
    now: datetime,
    row: dict[str, Any] | None = None,
    warn: Callable[[str], None] = _ignore,
) -> dict[str, Any]:
    """Store values for `pb job edit`: only what `opts` give; `row` is the job's row."""
    from pony_scheduler.scheduler import schedule as sched

    values = {**option_values(opts), **command_values(opts, required=False)}
    if "env" in values or row is not None:
        check_secrets(opts.secret, values["env"] if "env" in values else _stored_env(row))
    current = None
    if row is not None:
        try:
            current = stored_schedule(row)
        except ConfigError:
            if row["schedule_kind"] == "cron":  # e.g. a zone this host's tz database lacks:
                current = sched.Schedule("cron", row["schedule_expr"], row["schedule_tz"])
            elif opts.tz is not None and opts.cron is None and opts.at is None:
                raise ConfigError(
                    "the job's stored schedule is damaged; give a whole new "
                    "one (--cron, --every, --at or --manual)"
                ) from None
    schedule = build_schedule(opts, now, current, warn)
    if schedule is None and ("jitter_s" in values or (row or {}).get("error")):
        # The same schedule, moved by its new jitter offset, or scheduled again: a job the
        # daemon set aside has no next run until an edit makes it evaluable.
        schedule = current
    if schedule is not None:
        jitter = values["jitter_s"] if "jitter_s" in values else (row or {}).get("jitter_s")
        offset = sched.jitter_offset(str((row or {}).get("name", "")), jitter)
        try:
            values.update(schedule_values(sched.with_offset(schedule, offset), now))
        except (ValueError, LookupError, OverflowError) as exc:  # a damaged stored one
            raise ConfigError(
                f"job {(row or {}).get('name')} would still be broken: its "
                f"schedule cannot be evaluated ({exc}); give a new one"
            ) from None
        sched.check_jitter(schedule, jitter, now)
        # The stored schedule, restated or not: its next run stays in its slot (review
        # finding: `--cron '* * * * *' --jitter 59s` re-ran the slot that had just run).
        if (
            current is not None
            and row is not None
            and not row.get("error")
            and sched.with_offset(schedule, 0.0) == sched.with_offset(current, 0.0)
        ):
            slot = _next_slot(row, current)
            if slot is not None:
                values["next_due_at"] = slot + timedelta(seconds=offset)
    if not values:
        raise ConfigError("nothing to change: give at least one option, or a command after --")
    if row is not None:
        check_evaluable({**row, **values})
        if {"leftovers", *(key for key, _ in LIMIT_FLAGS)} & values.keys():
            # Only an edit that makes the pair: a job stored with it before it was
            # refused can still be edited otherwise (pb job show warns of it).
            check_kept_limits({**row, **values})
    return values


def _next_slot(row: dict[str, Any], current: Schedule) -> datetime | None:
    """The slot of a job's next run, without its jitter offset: a new --jitter moves that
    run within its own slot, so that no slot runs twice or not at all (review finding:
    `--jitter 59s` given at 06:26:03, after the 06:26 run, ran 06:26 again at 06:26:46;
    removing a jitter before its shifted time skipped the slot).  None without one."""
    from pony_scheduler.scheduler.schedule import as_utc

    due = row.get("next_due_at")
    if not isinstance(due, datetime) or current.kind not in ("cron", "every"):
        return None
    return as_utc(due) - timedelta(seconds=current.offset)


def check_evaluable(row: dict[str, Any]) -> None:
    """ConfigError, saying what to fix, if the daemon could not evaluate a job stored as
    `row` (its schedule, its policy, its command and environment): an edit must not make
    a broken job look healthy, nor leave one broken."""
    import json as _json

    from pony_scheduler.scheduler.runs import policy_from

    name = row.get("name")
    try:
        if row.get("schedule_kind") is not None and "next_due_at" not in row:
            stored_schedule(row)
        policy_from(
            row["retries"],
            row["retry_delay_s"],
            row["overlap"],
            row["catch_up"],
            row.get("start_deadline_s"),
            row["max_queued"],
        )
        for key in ("command", "env"):
            value = row.get(key)
            if isinstance(value, str):
                _json.loads(value)
    except (ConfigError, ValueError, TypeError, LookupError, OverflowError) as exc:
        raise ConfigError(
            f"job {name} would still be broken: {exc}; give a new value for "
            "what is damaged (see 'pb job show')"
        ) from None


def job_json(job: dict[str, Any], *, with_env: bool = True) -> dict[str, Any]:
    """A job as `pb job list --json` and the gateway's /api/jobs show it.

    The environment is left out where it would leave the host (it may hold secrets).
    """
    from pony_scheduler.jobtimes import next_run_local
    from pony_scheduler.scheduler import schedule as sched

    try:  # as stored, not checked again: croniter's parse would cost most of a listing
        schedule = sched.describe(
            sched.Schedule(
                str(job.get("schedule_kind")),
                str(job.get("schedule_expr") or ""),
                str(job.get("schedule_tz") or "UTC"),
                str(job.get("schedule_anchor") or ""),
            )
        )
    except (ConfigError, ValueError, LookupError, OSError, ArithmeticError):
        schedule = f"{job.get('schedule_kind')} (damaged)"
    keys = (
        "name",
        "command",
        "shell",
        "schedule_kind",
        "schedule_expr",
        "next_run_at",
        "enabled",
        "last_state",
        "last_run_at",
        "timeout_s",
        "retries",
        "retry_delay_s",
        "overlap",
        "catch_up",
        "cwd",
        "start_deadline_s",
        "max_queued",
        "error",
        "last_run_id",
        "last_duration_s",
        "last_success_at",
        "leftovers",
        "memory_max",
        "cpu_max",
        "tasks_max",
        "jitter_s",
    )
    view = {key: job.get(key) for key in keys}
    view["schedule"] = schedule
    view["tz"] = job.get("schedule_tz")
    view["umask"] = f"{job.get('umask', UMASK_DEFAULT):03o}"
    view["start_deadline_default"] = bool(job.get("start_deadline_auto", True))
    local = next_run_local(job)
    view["next_run_local"] = local.isoformat() if local else None
    if with_env:
        from pony_scheduler.scheduler.environment import redact

        view["env"] = redact(job.get("env") or {}, job.get("secret_env") or [])
        view["env_file"] = job.get("env_file")
        view["secret_env"] = job.get("secret_env") or []
    return view


def resume_job(store: Store, name: str, now: datetime, actor: Actor | None = None) -> None:
    """Schedule a paused job again from `now` on; occurrences while paused are not run.
    `actor` is who asked (the audit trail)."""
    from pony_scheduler.scheduler import schedule as sched
    from pony_scheduler.store.jobs import UnknownJob

    row = store.job_row(name)
    if row is None:
        raise UnknownJob(name)
    if not row["enabled"]:
        store.drop_paused(name, now)
    store.set_enabled(name, True, sched.next_after(stored_schedule(row), now), actor)
