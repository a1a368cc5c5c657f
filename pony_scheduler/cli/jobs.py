"""`pb job …`: define, change, preview and trigger jobs."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Generator, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from pony_scheduler.cli import Group
from pony_scheduler.jobs import JobOptions, check_kept_limits

if TYPE_CHECKING:
    from pony_scheduler.store import Store

from pony_scheduler.cli.common import (
    RAW,
    add_db_option,
    get_run,
    local,
    now_utc,
    one_line,
    open_store,
    pb_again,
    shown,
    table,
)
from pony_scheduler.cli.jobopts import (
    CommandAfterDashes,
    check_command_after_dashes,
    job_options,
    options_of,
)
from pony_scheduler.cli.output import output_path_of, print_output
from pony_scheduler.errors import PonyError


@click.group(cls=Group, name="job")
def job_group() -> None:
    """Define, change and trigger jobs (the running scheduler sees changes within a second)."""


@job_group.command(name="add", cls=CommandAfterDashes)
@click.argument("name")
@job_options
@click.pass_context
def job_add(ctx: click.Context, name: str, **kwargs: Any) -> None:
    """Add job NAME running COMMAND (after --) on a schedule."""
    from pony_scheduler.jobs import new_job

    check_command_after_dashes(ctx, kwargs["command"])
    options = options_of(kwargs)
    values = new_job(name, options, now_utc(), warn=_warn)  # bad input changes nothing
    store = open_store(ctx, create=True)
    if store.has_clock:  # due times by the database's clock, as the schedulers judge
        values = new_job(name, options, store.db_now(), warn=_silent)
    store.add_job(name, values)
    click.echo(f"✓ Job {name} added; next run: {_next_run(values, enabled=True)}")


@job_group.command(name="edit", cls=CommandAfterDashes)
@click.argument("name")
@job_options
@click.pass_context
def job_edit(ctx: click.Context, name: str, **kwargs: Any) -> None:
    """Change options, schedule or command of job NAME (only what is given)."""
    from pony_scheduler.jobs import changed_job, check_changes
    from pony_scheduler.store.jobs import UnknownJob

    check_command_after_dashes(ctx, kwargs["command"])
    options = options_of(kwargs)
    check_changes(options)  # bad input changes nothing, not even the database file
    store = open_store(ctx)
    row = store.job_row(name)
    if row is None:
        raise UnknownJob(name)
    values = changed_job(options, store.db_now(), row, warn=_warn)
    store.update_job(name, values)
    rescheduled = "next_due_at" in values
    click.echo(
        f"✓ Job {name} changed"
        + (f"; next run: {_next_run(values, row['enabled'])}" if rescheduled else "")
    )


def _warn(message: str) -> None:
    click.echo(f"⚠ {message}", err=True)


def _silent(message: str) -> None:
    """The warnings of a second pass over options already checked (and warned about)."""


def _next_run(values: dict[str, Any], enabled: bool) -> str:
    """The next run of a job just written with `values`, as `pb job list` shows it."""
    if not enabled:
        return "- (paused)"
    return _when(
        {
            "next_run_at": _iso(values["next_due_at"]),
            "schedule_kind": values["schedule_kind"],
            "schedule_tz": values["schedule_tz"],
        }
    )


def _when(job: dict[str, Any]) -> str:
    """A job's next run in its own zone (cron, --at) or the machine's, with the zone."""
    from pony_scheduler.jobtimes import next_run_local, text

    return text(next_run_local(job))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _job_json(job: dict[str, Any]) -> dict[str, Any]:
    from pony_scheduler.jobs import job_json

    return job_json(job)


PAGE = 100  # jobs `pb job list` shows unless told otherwise


@job_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=PAGE,
    show_default=True,
    help="Jobs per page, by name.",
)
@click.option(
    "--after", metavar="NAME", help="The page after the job NAME (the last of the page before)."
)
@click.option("--all", "everything", is_flag=True, help="Every job, streamed (memory stays flat).")
@click.pass_context
def job_list(
    ctx: click.Context, as_json: bool, limit: int, after: str | None, everything: bool
) -> None:
    """Jobs by name: schedule, next run (in the job's zone), last result, enabled."""
    from click.core import ParameterSource

    from pony_scheduler.errors import ConfigError

    if everything and ctx.get_parameter_source("limit") is ParameterSource.COMMANDLINE:
        # -n was ignored without a word (review finding)
        raise ConfigError("--all prints every job and -n a page of them: give one or the other")
    store = open_store(ctx)
    # One job more than the page is read: it says whether a next page exists, so a
    # count of jobs that fills the page exactly does not point to an empty one.
    page_size = None if everything else limit
    found = _Page(store.iter_jobs(after, None if page_size is None else page_size + 1), page_size)
    if as_json:
        _stream_json(_job_json(job) for job in found)
        _next_page_hint(ctx, store, found, as_json)
        return
    shown, set_aside = 0, []
    for page in _pages(iter(found), PAGE):
        rows = [("NAME", "SCHEDULE", "NEXT RUN", "LAST RESULT", "ENABLED")]
        rows += [
            (j["name"], j["schedule"], _when(raw), j["last_state"] or "-", _enabled(j))
            for j, raw in ((_job_json(raw), raw) for raw in page)
        ]
        table(rows if shown == 0 else rows[1:])
        set_aside += [(raw["name"], raw["error"]) for raw in page if raw.get("error")]
        shown += len(page)
    for name, why in set_aside[:SET_ASIDE_SHOWN]:  # why, under the table (the table is narrow)
        edit = pb_again(ctx, f"pb job edit {name}")
        click.echo(f"⚠ {name} is set aside: {why}; '{edit}' brings it back", err=True)
    if shown == 0:
        click.echo(
            "No more jobs"
            if after
            else "No jobs yet; add one with "
            f"'{pb_again(ctx, 'pb job add NAME --every 1h -- COMMAND')}'"
        )
        return
    _next_page_hint(ctx, store, found, as_json)


class _Page:
    """The first `limit` of `items` (None: all), once; afterwards `more` says whether
    another followed and `last` names the last one given."""

    def __init__(self, items: Generator[dict[str, Any], None, None], limit: int | None) -> None:
        self.items = items
        self.limit = limit
        self.more = False
        self.last = ""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for count, item in enumerate(self.items):
            if count == self.limit:
                self.more = True
                self.items.close()  # ends its read, before the count reads again
                return
            self.last = item["name"]
            yield item


def _next_page_hint(ctx: click.Context, store: Any, page: _Page, as_json: bool) -> None:
    """On stderr, so that the table or the JSON on stdout stays whole; the command given
    keeps the page size, --json and --db asked for."""
    if page.more:
        size = "" if page.limit == PAGE else f" -n {page.limit}"
        command = pb_again(
            ctx, f"pb job list{size}{' --json' if as_json else ''} --after {shlex.quote(page.last)}"
        )
        click.echo(
            f"Showing {page.limit or 0:,} of {store.count_jobs():,} jobs; next page: {command}"
            "  (--all for every one)",
            err=True,
        )


SET_ASIDE_SHOWN = 20  # reasons listed under a page; `pb job show NAME` has each


def _pages(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """`items` in lists of `size`, the last one shorter; never an empty list (a count of
    jobs that is a multiple of `size` ends with a full page)."""
    page: list[dict[str, Any]] = []
    for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _stream_json(items: Iterator[dict[str, Any]]) -> None:
    """A JSON array written element by element (the same text json.dumps(indent=2) makes)."""
    first = True
    for item in items:
        text = json.dumps(item, indent=2).replace("\n", "\n  ")
        click.echo(("[\n  " if first else ",\n  ") + text, nl=False)
        first = False
    click.echo("[]" if first else "\n]")


def _enabled(job: dict[str, Any]) -> str:
    if job.get("error"):
        return "error (set aside)"
    return "yes" if job["enabled"] else "paused"


def _deadline(data: dict[str, Any]) -> str:
    from pony_scheduler.durations import format_duration

    seconds = data.get("start_deadline_s")
    shown = "none" if seconds is None else format_duration(seconds)
    return f"{shown} (default)" if data.get("start_deadline_default") else shown


@job_group.command(name="show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@RAW
@click.pass_context
def job_show(ctx: click.Context, name: str, as_json: bool, raw: bool) -> None:
    """Everything about job NAME."""
    from pony_scheduler.store.jobs import UnknownJob

    job = open_store(ctx).get_job(name)
    if job is None:
        raise UnknownJob(name)
    data = _job_json(job)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    command = data["command"][0] if data["shell"] else " ".join(data["command"])
    for label, value in (
        ("Name", name),
        ("Command", command),
        ("Schedule", data["schedule"]),
        ("Enabled", _enabled(data)),
        ("Error", data.get("error") or "-"),
        ("Next run", _when(job)),
        ("Last result", _last_result(data)),
        ("Timeout", _seconds(data["timeout_s"])),
        ("Retries", f"{data['retries']} (delay {data['retry_delay_s']:g}s)"),
        (
            "Overlap",
            f"{data['overlap']} (at most {data['max_queued']} queued)"
            if data["overlap"] == "queue"
            else data["overlap"],
        ),
        ("Catch-up", data["catch_up"]),
        ("Start deadline", _deadline(data)),
        ("Jitter", _jitter(name, data)),
        ("Leftovers", data["leftovers"]),
        ("Limits", _limits(data)),
        ("Umask", data["umask"]),
        ("Directory", data["cwd"] or "(the scheduler's home)"),
        ("Environment", " ".join(f"{k}={one_line(str(v))}" for k, v in data["env"].items()) or "-"),
        ("Env file", data.get("env_file") or "-"),
    ):
        if not raw:  # a multi-line value's next lines are indented (as RFC 5322 folds a
            # header), so that a command or an --env value cannot forge a field's line
            value = str(value).replace("\n", "\n" + " " * 16)
        click.echo(shown(f"{label + ':':<15} {value}", raw))
    try:
        check_kept_limits(data)
    except PonyError as exc:  # stored before the pair was refused (review finding)
        click.echo(
            f"⚠ {exc}: its kept processes run unlimited; "
            f"'{pb_again(ctx, f'pb job edit {name} --leftovers kill')}' keeps the limits",
            err=True,
        )


def _seconds(value: float | None) -> str:
    from pony_scheduler.durations import format_duration

    return format_duration(value) if value else "none"


def _limits(data: dict[str, Any]) -> str:
    """--memory-max, --cpu-max and --tasks-max as given back: "memory 512 MiB, CPUs 0.5"."""
    from pony_scheduler.joblimits import format_size

    memory, cpus, tasks = data.get("memory_max"), data.get("cpu_max"), data.get("tasks_max")
    parts = [
        f"memory {format_size(memory)}" if memory else "",
        f"CPUs {cpus:g}" if cpus else "",
        f"tasks {tasks}" if tasks else "",
    ]
    return ", ".join(part for part in parts if part) or "none"


def _jitter(name: str, data: dict[str, Any]) -> str:
    from pony_scheduler.durations import format_duration
    from pony_scheduler.scheduler.schedule import jitter_offset

    window = data.get("jitter_s")
    if not window:
        return "none"
    return (
        f"{format_duration(window)} (this job's runs: "
        f"+{format_duration(jitter_offset(name, window))})"
    )


def _last_result(data: dict[str, Any]) -> str:
    if not data.get("last_state"):
        return "-"
    text = f"{data['last_state']} (run {data['last_run_id']}, {local(data['last_run_at'])}"
    if data.get("last_duration_s") is not None:
        text += f", {data['last_duration_s']:.2f}s"
    text += ")"
    if data.get("last_success_at") and data["last_state"] != "succeeded":
        text += f"; last success {local(data['last_success_at'])}"
    return text


def _count(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from pony_scheduler.jobtimes import PREVIEW_MAX

    text = value.strip()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= PREVIEW_MAX):
        raise click.BadParameter(f"{value!r} is not a whole number from 1 to {PREVIEW_MAX}")
    return int(text)


@job_group.command(name="next")
@click.argument("name", required=False)
@click.option(
    "-n",
    "--count",
    default="5",
    callback=_count,
    metavar="N",
    show_default=True,
    help="How many runs to show, 1 to 1000.",
)
@click.option(
    "--cron", metavar="EXPR", help="Preview this cron expression instead of a job's schedule."
)
@click.option("--tz", metavar="ZONE", help="The zone of --cron (default: the machine's).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.pass_context
def job_next(
    ctx: click.Context,
    name: str | None,
    count: int,
    cron: str | None,
    tz: str | None,
    as_json: bool,
) -> None:
    """The next runs of job NAME (or of --cron EXPR) in its zone and in UTC."""
    from pony_scheduler.durations import format_duration
    from pony_scheduler.errors import ConfigError
    from pony_scheduler.jobs import build_schedule, stored_schedule
    from pony_scheduler.jobtimes import ZONED, preview, preview_json, text
    from pony_scheduler.scheduler.schedule import describe
    from pony_scheduler.store.jobs import UnknownJob

    if (name is None) == (cron is None):
        raise ConfigError("give a job NAME, or --cron EXPR to try an expression (not both)")
    if tz is not None and cron is None:
        raise ConfigError("--tz goes with --cron; a job's runs are shown in its own zone")
    enabled, now = True, now_utc()  # an expression alone: by this host's clock
    if cron is not None:
        schedule = build_schedule(JobOptions(cron=cron, tz=tz), now, warn=_warn)
    else:
        store = open_store(ctx)
        row = store.job_row(str(name))
        if row is None:
            raise UnknownJob(str(name))
        schedule, enabled, now = stored_schedule(row), bool(row["enabled"]), store.db_now()
    assert schedule is not None
    rows = preview(schedule, now, count)
    title = f"{name}: {describe(schedule)}" if name else describe(schedule)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "job": name,
                    "schedule": describe(schedule),
                    "kind": schedule.kind,
                    "jitter_offset_s": schedule.offset,
                    "tz": schedule.tz if schedule.kind in ZONED else None,
                    "enabled": enabled,
                    "runs": preview_json(rows),
                },
                indent=2,
            )
        )
        return
    if schedule.kind == "manual":
        click.echo(
            f"{title}: no schedule; it runs only with '{pb_again(ctx, f'pb job run {name}')}'"
        )
        return
    if not rows:
        click.echo(f"{title}: no further runs (that time has passed)")
        return
    resume = pb_again(ctx, f"pb job resume {name}")
    click.echo(title + ("" if enabled else f" (paused: these runs follow '{resume}')"))
    if schedule.offset:
        click.echo(
            f"(each run moved by +{format_duration(schedule.offset)}: its share of --jitter)"
        )
    listed = [("LOCAL", "UTC", "DAYLIGHT SAVING" if any(row.dst for row in rows) else "")]
    listed += [
        (text(row.local), text(row.at), f"{row.dst}: {row.note}" if row.dst else "") for row in rows
    ]
    table(listed)


@job_group.command(name="remove")
@click.argument("name")
@click.pass_context
def job_remove(ctx: click.Context, name: str) -> None:
    """Remove job NAME and its history."""
    from pony_scheduler.cli.options import settings_from
    from pony_scheduler.files import output_dir

    store = open_store(ctx)
    settings = settings_from(ctx, db=ctx.meta.get("db"))
    store.output_dir = output_dir(settings.home_dir, settings.db)  # where it may delete
    removal = store.remove_job(name)
    click.echo(f"✓ Job {name} removed")
    if removal.left:
        from pony_scheduler.store.jobs import left_line
        from pony_scheduler.textsafe import for_log  # paths: no control character shown

        for left in removal.left:
            click.echo(f"⚠ {for_log(left_line(left))}", err=True)
    for run_id in removal.running:
        click.echo(
            f"⚠ Run {run_id} of {name} is still running: it goes on to its end, then its "
            f"record and output are deleted with the job's; "
            f"'{pb_again(ctx, f'pb runs kill {run_id}')}' stops it",
            err=True,
        )


@job_group.command(name="pause")
@click.argument("name")
@click.pass_context
def job_pause(ctx: click.Context, name: str) -> None:
    """Stop scheduling job NAME (runs already started go on)."""
    open_store(ctx).set_enabled(name, False)
    click.echo(f"✓ Job {name} paused")


@job_group.command(name="resume")
@click.argument("name")
@click.pass_context
def job_resume(ctx: click.Context, name: str) -> None:
    """Schedule job NAME again, from now on (occurrences while paused are not run)."""
    from pony_scheduler.jobs import resume_job

    store = open_store(ctx)
    resume_job(store, name, store.db_now())
    click.echo(f"✓ Job {name} resumed")


@job_group.command(name="run")
@click.argument("name")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the run (and its retries) to end; exit "
    "with its exit status (128+N for signal N).",
)
@click.option(
    "-f",
    "--follow",
    "follow_",
    is_flag=True,
    help="With --wait: print the run's output as it comes.",
)
@click.pass_context
def job_run(ctx: click.Context, name: str, wait: bool, follow_: bool) -> None:
    """Queue a run of job NAME now."""
    if follow_ and not wait:
        raise click.UsageError("--follow needs --wait")
    store = open_store(ctx)
    run_id = store.request_run(name)
    alive = _scheduler_alive(store)
    if not alive:
        _warn(
            f"no scheduler of this database has sent a heartbeat in the last {QUIET_TEXT}: "
            f"the run waits until one runs ('{pb_again(ctx, 'pb scheduler start')}')"
        )
    if not wait:
        click.echo(f"✓ Run {run_id} of job {name} queued")
        return
    click.echo(f"Run {run_id} of job {name} queued; waiting for it to end", err=True)
    ctx.exit(_wait_for(ctx, run_id, follow_, warned=not alive))


def _wait_for(ctx: click.Context, run_id: int, follow_: bool, warned: bool = False) -> int:
    """Wait until run `run_id`, and any retry of it, is over; its exit status as a shell
    gives it (128+N for signal N), or 1 when it has none (skipped, expired, lost)."""
    store = open_store(ctx)
    watch = _SchedulerWatch(store, silent=warned)
    while True:
        path = output_path_of(ctx, run_id, follow_) if follow_ else None
        if path is not None:
            try:
                print_output(ctx, run_id, path, True, raw=False)
            except PonyError as exc:  # its output cannot be shown: still wait for its end
                from pony_scheduler.textsafe import for_log

                click.echo(f"⚠ {for_log(str(exc))}; waiting for the run's end", err=True)
        run = get_run(ctx, run_id)
        while run["state"] in ("queued", "running"):
            time.sleep(0.2)
            run = get_run(ctx, run_id)
            watch.look()
        after = store.next_attempt_of(run_id)
        if after is None:
            break
        click.echo(
            f"Run {run_id} {run['state']} ({run['reason']}); attempt "
            f"{run['attempt'] + 1} is run {after}",
            err=True,
        )
        run_id = after
    click.echo(
        f"Run {run_id} {run['state']}" + (f" ({run['reason']})" if run["reason"] else ""), err=True
    )
    return int(run["exit_code"]) if run["exit_code"] is not None else 1


# A scheduler sends a heartbeat every twelfth of its lease (at most an hour), and records
# its stop: five minutes of silence from every scheduler not stopped means none runs.  Its
# lease is not in the database, so the longest lease sets the window: half of this
# command's own lease warned of a live scheduler whose lease was longer (review finding).
QUIET = timedelta(minutes=5)
QUIET_TEXT = f"{QUIET.seconds // 60} minutes"  # as the warnings say it


def _scheduler_alive(store: Store) -> bool:
    """Whether a scheduler of the database runs: not recorded as stopped, and a heartbeat
    within QUIET (database time)."""
    return store.any_scheduler_since(store.db_now() - QUIET)


class _SchedulerWatch:
    """While `--wait` waits: says once on stderr when no scheduler of the database is
    alive (stopped, or silent for QUIET: hung, or unable to write to the database), and
    again when one is back; `silent`: it was said already.  The wait used to say nothing
    for as long as that lasted (review finding)."""

    LOOK_EVERY_S = 5.0

    def __init__(self, store: Store, silent: bool = False) -> None:
        self.store = store
        self.next_look = time.monotonic() + self.LOOK_EVERY_S
        self.silent = silent

    def look(self) -> None:
        if time.monotonic() < self.next_look:
            return
        self.next_look = time.monotonic() + self.LOOK_EVERY_S
        alive = _scheduler_alive(self.store)
        if not alive and not self.silent:
            _warn(
                "no scheduler of this database is running (stopped, or no heartbeat in "
                f"the last {QUIET_TEXT}: hung, or unable to write to the database; 'pb "
                "scheduler status' and its log say which); still waiting"
            )
        elif alive and self.silent:
            click.echo("A scheduler is running again; still waiting", err=True)
        self.silent = not alive


add_db_option(job_group)
