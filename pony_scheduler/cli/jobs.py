"""`pb job …` and `pb runs …`: define jobs and read their history."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from pony_scheduler.cli.options import settings_from
from pony_scheduler.errors import PonyError
from pony_scheduler.jobs import CATCH_UP, MAX_QUEUED, OVERLAP, RETRIES, TASKS_MAX, JobOptions
from pony_scheduler.runstate import RunState

if TYPE_CHECKING:
    from pony_scheduler.store import Store

STATES = tuple(state.value for state in RunState)


def open_store(ctx: click.Context) -> Store:
    """The database named by the settings; SQLAlchemy is imported only here."""
    from pony_scheduler.lifecycle.daemonize import ensure_home
    from pony_scheduler.store import Store

    settings = settings_from(ctx, db=ctx.meta.get("db"))
    ensure_home(settings.home)
    return Store.open(settings.db)


def _remember_db(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta["db"] = value


def add_db_option(group: click.Group) -> None:
    """Every job/runs command can reach a database other than the configured one."""
    for command in group.commands.values():
        command.params.append(click.Option(
            ["--db"], metavar="PATH|URL", expose_value=False, callback=_remember_db,
            help="Database to use (default: PONYBUNNY_DB, config.toml, or HOME/pony.db)."))


def now_utc() -> datetime:
    from pony_scheduler.store.common import utcnow

    return utcnow()


def local(iso: str | None) -> str:
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _range(bounds: tuple[int, int]) -> str:
    """A documented range as pb-job(1) writes it: "0 to 10,000"."""
    return f"{bounds[0]:,} to {bounds[1]:,}"


def job_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `add` and `edit` share."""
    decorators = [
        click.option("--cron", metavar="EXPR", help="Cron expression (5 fields or @daily…)."),
        click.option("--tz", metavar="ZONE", help="IANA time zone for --cron/--at "
                     "(default: the machine's)."),
        click.option("--every", metavar="DURATION", help="Fixed interval, e.g. 90s, 5m, 1h."),
        click.option("--at", "at", metavar="TIME", help="Once, e.g. '2026-12-01 09:00', "
                     "09:00 or +10m."),
        click.option("--manual", is_flag=True, default=None, help="No schedule: runs only "
                     "with 'pb job run'."),
        click.option("--timeout", metavar="DURATION", help="Kill the run after this long."),
        click.option("--retries", type=int, metavar="N", help="Attempts after a failure "
                     f"({_range(RETRIES)}; default 0)."),
        click.option("--retry-delay", metavar="DURATION", help="First retry delay "
                     "(doubles each attempt, with jitter)."),
        click.option("--overlap", type=click.Choice(OVERLAP), help="When the previous run "
                     "still runs: skip (default), queue or allow."),
        click.option("--catch-up", type=click.Choice(CATCH_UP), help="Runs missed while "
                     "down: skip, once (default) or all."),
        click.option("--cwd", metavar="DIR", help="Working directory of the command."),
        click.option("--env", multiple=True, metavar="NAME=VALUE", help="Environment "
                     "variable for the command (repeatable)."),
        click.option("--env-file", metavar="PATH", help="NAME=VALUE lines read at each "
                     "run's start, never stored (systemd's EnvironmentFile= format)."),
        click.option("--secret", multiple=True, metavar="NAME", help="Show the value of "
                     "--env NAME as (secret) in show, JSON and the API (repeatable)."),
        click.option("--leftovers", type=click.Choice(("kill", "keep")), help="Processes "
                     "a run leaves when its main process exits: kill (default) or keep."),
        click.option("--memory-max", metavar="SIZE|none", help="Memory limit of a run's "
                     "processes, e.g. 512M, 2G (where the memory controller exists)."),
        click.option("--cpu-max", metavar="CPUS|none", help="CPU limit, e.g. 0.5 or 50% "
                     "(of one CPU), 2 (where the cpu controller exists)."),
        click.option("--tasks-max", type=int, metavar="N", help="Most processes and threads "
                     f"a run may have, {_range(TASKS_MAX)} (where the pids controller "
                     "exists)."),
        click.option("--jitter", metavar="DURATION|none", help="Move every run of a cron or "
                     "interval job by a stable offset within this window (spreads herds)."),
        click.option("--shell", is_flag=True, default=None, help="COMMAND is one shell "
                     "string, run with /bin/sh -c."),
        click.option("--umask", metavar="OCTAL", help="File mode mask of the command "
                     "(default 022, as cron and systemd)."),
        click.option("--start-deadline", metavar="DURATION|none", help="A run that cannot "
                     "start this long after its due time expires (default: the schedule's "
                     "period, at most 1h)."),
        click.option("--max-queued", type=int, metavar="N", help="With --overlap queue: "
                     f"runs that may wait behind the running one, {_range(MAX_QUEUED)} "
                     "(default 10)."),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _options(kwargs: dict[str, Any]) -> JobOptions:
    return JobOptions(cron=kwargs["cron"], tz=kwargs["tz"], every=kwargs["every"],
                      at=kwargs["at"], manual=bool(kwargs["manual"]),
                      timeout=kwargs["timeout"], retries=kwargs["retries"],
                      retry_delay=kwargs["retry_delay"], overlap=kwargs["overlap"],
                      catch_up=kwargs["catch_up"], cwd=kwargs["cwd"], env=list(kwargs["env"]),
                      shell=kwargs["shell"], command=list(kwargs["command"]),
                      umask=kwargs["umask"], start_deadline=kwargs["start_deadline"],
                      max_queued=kwargs["max_queued"], env_file=kwargs["env_file"],
                      secret=list(kwargs["secret"]), leftovers=kwargs["leftovers"],
                      memory_max=kwargs["memory_max"], cpu_max=kwargs["cpu_max"],
                      tasks_max=kwargs["tasks_max"], jitter=kwargs["jitter"])


@click.group(name="job")
def job_group() -> None:
    """Define, change and trigger jobs (the running scheduler sees changes within a second)."""


@job_group.command(name="add")
@click.argument("name")
@job_options
@click.pass_context
def job_add(ctx: click.Context, name: str, **kwargs: Any) -> None:
    """Add job NAME running COMMAND (after --) on a schedule."""
    from pony_scheduler.jobs import new_job

    values = new_job(name, _options(kwargs), now_utc(), warn=_warn)
    open_store(ctx).add_job(name, values)
    click.echo(f"✓ Job {name} added; next run: {_next_run(values, enabled=True)}")


@job_group.command(name="edit")
@click.argument("name")
@job_options
@click.pass_context
def job_edit(ctx: click.Context, name: str, **kwargs: Any) -> None:
    """Change options, schedule or command of job NAME (only what is given)."""
    from pony_scheduler.jobs import changed_job, check_changes
    from pony_scheduler.store.jobs import UnknownJob

    options = _options(kwargs)
    check_changes(options)  # bad input changes nothing, not even the database file
    store = open_store(ctx)
    row = store.job_row(name)
    if row is None:
        raise UnknownJob(name)
    values = changed_job(options, now_utc(), row, warn=_warn)
    store.update_job(name, values)
    rescheduled = "next_due_at" in values
    click.echo(f"✓ Job {name} changed"
               + (f"; next run: {_next_run(values, row['enabled'])}" if rescheduled else ""))


def _warn(message: str) -> None:
    click.echo(f"⚠ {message}", err=True)


def _next_run(values: dict[str, Any], enabled: bool) -> str:
    """The next run of a job just written with `values`, as `pb job list` shows it."""
    if not enabled:
        return "- (paused)"
    return _when({"next_run_at": _iso(values["next_due_at"]),
                  "schedule_kind": values["schedule_kind"], "schedule_tz": values["schedule_tz"]})


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
@click.option("-n", "--limit", type=click.IntRange(1, 1_000_000), default=PAGE,
              show_default=True, help="Jobs per page, by name.")
@click.option("--after", metavar="NAME", help="The page after the job NAME (the last of "
              "the page before).")
@click.option("--all", "everything", is_flag=True, help="Every job, streamed (memory stays "
              "flat).")
@click.pass_context
def job_list(ctx: click.Context, as_json: bool, limit: int, after: str | None,
             everything: bool) -> None:
    """Jobs by name: schedule, next run (in the job's zone), last result, enabled."""
    store = open_store(ctx)
    found = store.iter_jobs(after, None if everything else limit)
    if as_json:
        _stream_json(_job_json(job) for job in found)
        return
    shown = 0
    for page in _pages(found, PAGE):
        if shown == 0 and not page:
            break
        rows = [("NAME", "SCHEDULE", "NEXT RUN", "LAST RESULT", "ENABLED")]
        rows += [(j["name"], j["schedule"], _when(raw), j["last_state"] or "-", _enabled(j))
                 for j, raw in ((_job_json(raw), raw) for raw in page)]
        _table(rows if shown == 0 else rows[1:])
        shown += len(page)
        last = page[-1]["name"] if page else after
    if shown == 0:
        click.echo("No more jobs" if after else
                   "No jobs yet; add one with 'pb job add NAME --every 1h -- COMMAND'")
        return
    if not everything and shown == limit:
        total = store.count_jobs()
        click.echo(f"Showing {shown:,} of {total:,} jobs; next page: pb job list --after "
                   f"{last}  (--all for every one)", err=True)


def _pages(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    page: list[dict[str, Any]] = []
    for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
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


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths,
                                                                          strict=True)).rstrip())


# Job commands and outputs are chosen by whoever defines the job: on a terminal their
# control characters are shown (textsafe.for_terminal), not obeyed, unless --raw.
RAW = click.option("--raw", is_flag=True, help="Print control characters as they are "
                   "(default: made visible, like cat -v).")


def _shown(text: str, raw: bool) -> str:
    from pony_scheduler.textsafe import for_terminal

    return text if raw else for_terminal(text)


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
    for label, value in (("Name", name), ("Command", command), ("Schedule", data["schedule"]),
                         ("Enabled", _enabled(data)),
                         ("Error", data.get("error") or "-"),
                         ("Next run", _when(job)),
                         ("Last result", _last_result(data)),
                         ("Timeout", _seconds(data["timeout_s"])),
                         ("Retries", f"{data['retries']} (delay {data['retry_delay_s']:g}s)"),
                         ("Overlap", f"{data['overlap']} (at most {data['max_queued']} "
                          "queued)" if data["overlap"] == "queue" else data["overlap"]),
                         ("Catch-up", data["catch_up"]),
                         ("Start deadline", _deadline(data)), ("Jitter", _jitter(name, data)),
                         ("Umask", data["umask"]),
                         ("Directory", data["cwd"] or "(the scheduler's home)"),
                         ("Environment", " ".join(f"{k}={v}" for k, v in data["env"].items())
                          or "-"),
                         ("Env file", data.get("env_file") or "-")):
        click.echo(_shown(f"{label + ':':<15} {value}", raw))


def _seconds(value: float | None) -> str:
    from pony_scheduler.durations import format_duration

    return format_duration(value) if value else "none"


def _jitter(name: str, data: dict[str, Any]) -> str:
    from pony_scheduler.durations import format_duration
    from pony_scheduler.scheduler.schedule import jitter_offset

    window = data.get("jitter_s")
    if not window:
        return "none"
    return (f"{format_duration(window)} (this job's runs: "
            f"+{format_duration(jitter_offset(name, window))})")


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
@click.option("-n", "--count", default="5", callback=_count, metavar="N", show_default=True,
              help="How many runs to show, 1 to 1000.")
@click.option("--cron", metavar="EXPR", help="Preview this cron expression instead of a "
              "job's schedule.")
@click.option("--tz", metavar="ZONE", help="The zone of --cron (default: the machine's).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.pass_context
def job_next(ctx: click.Context, name: str | None, count: int, cron: str | None,
             tz: str | None, as_json: bool) -> None:
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
    enabled = True
    if cron is not None:
        schedule = build_schedule(JobOptions(cron=cron, tz=tz), now_utc(), warn=_warn)
    else:
        row = open_store(ctx).job_row(str(name))
        if row is None:
            raise UnknownJob(str(name))
        schedule, enabled = stored_schedule(row), bool(row["enabled"])
    assert schedule is not None
    rows = preview(schedule, now_utc(), count)
    title = f"{name}: {describe(schedule)}" if name else describe(schedule)
    if as_json:
        click.echo(json.dumps({"job": name, "schedule": describe(schedule),
                               "kind": schedule.kind, "jitter_offset_s": schedule.offset,
                               "tz": schedule.tz if schedule.kind in ZONED else None,
                               "enabled": enabled, "runs": preview_json(rows)}, indent=2))
        return
    if schedule.kind == "manual":
        click.echo(f"{title}: no schedule; it runs only with 'pb job run {name}'")
        return
    if not rows:
        click.echo(f"{title}: no further runs (that time has passed)")
        return
    click.echo(title + ("" if enabled else f" (paused: these runs follow 'pb job resume {name}')"))
    if schedule.offset:
        click.echo(f"(each run moved by +{format_duration(schedule.offset)}: its share of "
                   "--jitter)")
    table = [("LOCAL", "UTC", "DAYLIGHT SAVING" if any(row.dst for row in rows) else "")]
    table += [(text(row.local), text(row.at), f"{row.dst}: {row.note}" if row.dst else "")
              for row in rows]
    _table(table)


@job_group.command(name="remove")
@click.argument("name")
@click.pass_context
def job_remove(ctx: click.Context, name: str) -> None:
    """Remove job NAME and its history."""
    open_store(ctx).remove_job(name)
    click.echo(f"✓ Job {name} removed")


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

    resume_job(open_store(ctx), name, now_utc())
    click.echo(f"✓ Job {name} resumed")


@job_group.command(name="run")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait for the run (and its retries) to end; exit "
              "with its exit status (128+N for signal N).")
@click.option("-f", "--follow", "follow_", is_flag=True, help="With --wait: print the run's "
              "output as it comes.")
@click.pass_context
def job_run(ctx: click.Context, name: str, wait: bool, follow_: bool) -> None:
    """Queue a run of job NAME now."""
    if follow_ and not wait:
        raise click.UsageError("--follow needs --wait")
    run_id = open_store(ctx).request_run(name)
    if not wait:
        click.echo(f"✓ Run {run_id} of job {name} queued")
        return
    click.echo(f"Run {run_id} of job {name} queued; waiting for it to end", err=True)
    ctx.exit(_wait_for(ctx, run_id, follow_))


def _wait_for(ctx: click.Context, run_id: int, follow_: bool) -> int:
    """Wait until run `run_id`, and any retry of it, is over; its exit status as a shell
    gives it (128+N for signal N), or 1 when it has none (skipped, expired, lost)."""
    store = open_store(ctx)
    while True:
        path = _output_path(ctx, run_id, follow_) if follow_ else None
        if path is not None:
            _print_output(ctx, run_id, path, True, raw=False)
        run = _get_run(ctx, run_id)
        while run["state"] in ("queued", "running"):
            time.sleep(0.2)
            run = _get_run(ctx, run_id)
        after = store.next_attempt_of(run_id)
        if after is None:
            break
        click.echo(f"Run {run_id} {run['state']} ({run['reason']}); attempt "
                   f"{run['attempt'] + 1} is run {after}", err=True)
        run_id = after
    click.echo(f"Run {run_id} {run['state']}" + (f" ({run['reason']})" if run["reason"] else ""),
               err=True)
    return int(run["exit_code"]) if run["exit_code"] is not None else 1


class RunsGroup(click.Group):
    """`pb runs [JOB]` lists; `pb runs show|output ID` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group(name="runs", cls=RunsGroup)
def runs_group() -> None:
    """Run history: `pb runs [JOB]`, `pb runs show ID`, `pb runs output ID`."""


@runs_group.command(name="list")
@click.argument("job", required=False)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many runs, newest first.")
@click.option("--state", type=click.Choice(STATES), help="Only runs in this state.")
@click.option("--missed", is_flag=True, help="The missed occurrences counted beyond those "
              "listed one by one as skipped runs (one summary per outage).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def runs_list(ctx: click.Context, job: str | None, limit: int, state: str | None,
              missed: bool, as_json: bool) -> None:
    """Recent runs, of every job or of JOB."""
    from pony_scheduler.store.jobs import UnknownJob

    store = open_store(ctx)
    if job is not None and store.job_row(job) is None:
        raise UnknownJob(job)
    if missed:
        _missed(store, job, limit, as_json)
        return
    runs = store.list_runs(job, limit, state)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    if not runs:
        click.echo("No runs yet")
        return
    rows = [("ID", "JOB", "STATE", "STARTED", "DURATION", "EXIT", "TRIGGER")]
    rows += [(str(r["id"]), r["job"], r["state"], local(r["started_at"]),
              f"{r['duration_s']:.2f}s" if r["duration_s"] is not None else "-",
              _exit(r), r["trigger"]) for r in runs]
    _table(rows)
    if state in (None, "skipped"):
        _missed_footer(store, job)


def _missed(store: Store, job: str | None, limit: int, as_json: bool) -> None:
    gaps = store.missed_summaries(job, limit)
    if as_json:
        click.echo(json.dumps(gaps, indent=2))
        return
    if not gaps:
        click.echo("Nothing missed beyond what the skipped runs list")
        return
    rows = [("JOB", "COUNT", "FROM", "TO", "REASON")]
    rows += [(g["job"], f"{g['count']:,}", local(g["first_occurrence"]),
              local(g["last_occurrence"]), g["reason"]) for g in gaps]
    _table(rows)


def _exit(run: dict[str, Any]) -> str:
    from pony_scheduler.scheduler.runs import describe_exit

    return describe_exit(run["exit_code"], run.get("signal"))


def _missed_footer(store: Store, job: str | None) -> None:
    """Missed occurrences counted beyond those listed one by one (none vanish)."""
    for gap in store.missed_summaries(job, limit=5):
        click.echo(f"Missed, not listed one by one: {gap['count']:,} occurrence(s) of job "
                   f"{gap['job']} from {local(gap['first_occurrence'])} to "
                   f"{local(gap['last_occurrence'])} ({gap['reason']})")


def _get_run(ctx: click.Context, run_id: int) -> dict[str, Any]:
    run = open_store(ctx).get_run(run_id)
    if run is None:
        raise PonyError(f"no run with id {run_id}; see 'pb runs'")
    return run


@runs_group.command(name="show")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@RAW
@click.pass_context
def runs_show(ctx: click.Context, run_id: int, as_json: bool, raw: bool) -> None:
    """Metadata and output of run RUN_ID."""
    run = _get_run(ctx, run_id)
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    for key in ("id", "job", "state", "trigger", "attempt", "occurrence", "started_at",
                "finished_at", "duration_s", "exit_code", "reason", "pid", "hostname",
                "containment", "peak_memory", "cpu_s", "output_path"):
        value = run.get(key)
        if key == "peak_memory" and value is not None:
            value = f"{value / 1048576:.1f} MiB"
        if key == "cpu_s" and value is not None:
            value = f"{value:.3f}s"
        if key in ("occurrence", "started_at", "finished_at"):
            value = local(value)
        if key == "exit_code":
            value = _exit(run)
        if key == "output_path" and value and not os.path.exists(value):
            # Created at the first byte of output (see pb-job(1)).
            value = f"{value} (removed)" if run.get("output_tail") else "- (no output)"
        click.echo(_shown(f"{key.replace('_', ' ').capitalize() + ':':<13} "
                          f"{'-' if value is None else value}", raw))
    click.echo("Output (end):")
    click.echo(_shown(run.get("output_tail") or "(none)", raw))


@runs_group.command(name="output")
@click.argument("run_id", type=int)
@click.option("-f", "--follow", "follow_", is_flag=True,
              help="Keep printing while the run is running.")
@RAW
@click.pass_context
def runs_output(ctx: click.Context, run_id: int, follow_: bool, raw: bool) -> None:
    """The whole output of run RUN_ID."""
    path = _output_path(ctx, run_id, follow_)
    if path is None:
        raise PonyError(f"run {run_id} has no output ({_get_run(ctx, run_id)['state']})")
    _print_output(ctx, run_id, path, follow_, raw)


@runs_group.command(name="kill")
@click.argument("run_id", type=int)
@click.option("--signal", "signame", default="TERM", show_default=True, metavar="SIG",
              help="The signal for the run's whole process tree (SIGKILL follows after the "
                   "kill grace if it is not SIGKILL).")
@click.pass_context
def runs_kill(ctx: click.Context, run_id: int, signame: str) -> None:
    """Stop run RUN_ID's whole process tree; it is recorded as killed, and by whom."""
    from pony_scheduler.actor import cli_actor
    from pony_scheduler.keeper.client import KeeperClient, KeeperError
    from pony_scheduler.keeper.protocol import signal_number

    try:
        signal_number(signame)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--signal") from None
    run = _get_run(ctx, run_id)
    if run["state"] != "running":
        raise PonyError(f"run {run_id} is not running ({run['state']})")
    settings = settings_from(ctx, db=ctx.meta.get("db"))
    actor = cli_actor()
    try:
        keeper = KeeperClient.connect(settings.home, role="control", start=False)
    except KeeperError:
        keeper = None
    try:
        if keeper is None or keeper.is_held(run_id) is None:
            raise PonyError(f"run {run_id} is not held by the run keeper of {settings.home} "
                            f"(it runs on {run['hostname'] or 'another host'}); run "
                            "'pb runs kill' there")
        keeper.kill(run_id, signame, by=f"pb runs kill by {actor.describe()}")
    finally:
        if keeper is not None:
            keeper.close()
    open_store(ctx).record_audit(actor, "kill", run["job"], f"run {run_id} {signame.upper()}")
    click.echo(f"✓ Sent {signame.upper()} to run {run_id} (job {run['job']}) and its whole "
               "process tree")


@click.command(name="audit")
@click.argument("job", required=False)
@click.option("-n", "--limit", type=click.IntRange(1, 1_000_000), default=20, show_default=True,
              help="How many entries, newest first.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def audit_command(ctx: click.Context, job: str | None, limit: int, as_json: bool) -> None:
    """Who changed or triggered jobs (of JOB), when, and how (CLI or API)."""
    entries = open_store(ctx).audit_entries(job, limit)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("Nothing recorded yet")
        return
    rows = [("WHEN", "WHO", "VIA", "ACTION", "JOB", "DETAIL")]
    rows += [(local(e["at"]), *_audit_who(e), e["action"], e["job"] or "-", e["detail"] or "")
             for e in entries]
    _table([[_shown(str(cell), raw=False) for cell in row] for row in rows])


# How a dashboard session was opened, from the audit trail's scope ("admin link").
_OPENED = {"link": "login link", "token": "pasted token", "session": "opened how: unknown"}


def _audit_who(entry: dict[str, Any]) -> tuple[str, str]:
    """WHO and VIA of an audit entry.  A dashboard action is a session's, not its
    process's user: `dashboard session (admin, login link)`, served as root (0)."""
    user = f"{entry['user'] or '?'} ({entry['uid']})" if entry["uid"] is not None else "-"
    if entry["via"] != "dashboard":
        return user, f"{entry['via']} ({entry['scope']})"
    scope, _, how = str(entry["scope"] or "").partition(" ")
    return (f"dashboard session ({scope}, {_OPENED.get(how, how)})",
            f"dashboard running as {user}")


def _output_path(ctx: click.Context, run_id: int, follow_: bool) -> str | None:
    """Where run `run_id` writes its output; with `follow_`, waits for a queued or running
    run's path (written within moments of its start).  None if it has none and never will."""
    run = _get_run(ctx, run_id)
    while not run.get("output_path") and follow_ and run["state"] in ("queued", "running"):
        time.sleep(0.2)
        run = _get_run(ctx, run_id)
    return run.get("output_path") or None


def _print_output(ctx: click.Context, run_id: int, path: str, follow_: bool,
                  raw: bool) -> None:
    handle = _open_output(ctx, run_id, path, follow_)
    if handle is None:
        return
    out = OutputWriter(raw or not sys.stdout.isatty())
    with handle:
        while True:
            out.write(handle.read())
            if not follow_ or _get_run(ctx, run_id)["state"] not in ("queued", "running"):
                out.write(handle.read(), final=True)
                return
            time.sleep(0.2)


class OutputWriter:
    """A run's output on our stdout: the exact bytes when they go to a file or a pipe (or
    with --raw); on a terminal, text with control characters and escape sequences made
    visible.  Decoding is incremental, so a character split between two reads while
    following is never broken in two."""

    def __init__(self, exact: bool) -> None:
        import codecs

        self.exact = exact
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes, final: bool = False) -> None:
        if self.exact:
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(_shown(self.decoder.decode(data, final=final), raw=False))
        sys.stdout.flush()


def _open_output(ctx: click.Context, run_id: int, path: str,
                 follow_: bool) -> BinaryIO | None:
    """The run's output file once it exists; None for a run that printed nothing.

    The file is created at the run's first byte of output: it may not exist yet.  Only a
    file below HOME/runs is opened, never through a link (files.open_run_output).
    """
    from pony_scheduler.files import open_run_output

    home = settings_from(ctx, db=ctx.meta.get("db")).home
    while True:
        try:
            return os.fdopen(open_run_output(home, path), "rb")  # the caller closes it
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise PonyError(f"cannot read output of run {run_id} at {path}: "
                            f"{exc.strerror}") from None
        run = _get_run(ctx, run_id)
        if os.path.exists(path):
            continue  # it printed since we looked: the state above may already be final
        if run.get("output_tail"):
            raise PonyError(f"the output file of run {run_id} was removed ({path}); "
                            f"`pb runs show {run_id}` has its end")
        if not follow_ or run["state"] not in ("queued", "running"):
            return None
        time.sleep(0.2)


add_db_option(job_group)
add_db_option(runs_group)
audit_command.params.append(click.Option(
    ["--db"], metavar="PATH|URL", expose_value=False, callback=_remember_db,
    help="Database to use (default: PONYBUNNY_DB, config.toml, or HOME/pony.db)."))
