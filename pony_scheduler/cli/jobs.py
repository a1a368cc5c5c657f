"""`pb job …` and `pb runs …`: define jobs and read their history."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from pony_scheduler.cli.options import settings_from
from pony_scheduler.errors import PonyError
from pony_scheduler.jobs import CATCH_UP, OVERLAP, JobOptions
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
        click.option("--retries", type=int, metavar="N", help="Attempts after a failure."),
        click.option("--retry-delay", metavar="DURATION", help="First retry delay "
                     "(doubles each attempt, with jitter)."),
        click.option("--overlap", type=click.Choice(OVERLAP), help="When the previous run "
                     "still runs: skip (default), queue or allow."),
        click.option("--catch-up", type=click.Choice(CATCH_UP), help="Runs missed while "
                     "down: skip, once (default) or all."),
        click.option("--cwd", metavar="DIR", help="Working directory of the command."),
        click.option("--env", multiple=True, metavar="NAME=VALUE", help="Environment "
                     "variable for the command (repeatable)."),
        click.option("--shell", is_flag=True, default=None, help="COMMAND is one shell "
                     "string, run with /bin/sh -c."),
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
                      shell=kwargs["shell"], command=list(kwargs["command"]))


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

    values = new_job(name, _options(kwargs), now_utc())
    open_store(ctx).add_job(name, values)
    click.echo(f"✓ Job {name} added; next run: {local(_iso(values['next_due_at']))}")


@job_group.command(name="edit")
@click.argument("name")
@job_options
@click.pass_context
def job_edit(ctx: click.Context, name: str, **kwargs: Any) -> None:
    """Change options, schedule or command of job NAME."""
    from pony_scheduler.jobs import changed_job

    values = changed_job(_options(kwargs), now_utc())
    open_store(ctx).update_job(name, values)
    click.echo(f"✓ Job {name} changed")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _job_json(job: dict[str, Any]) -> dict[str, Any]:
    from pony_scheduler.jobs import job_json

    return job_json(job)


@job_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def job_list(ctx: click.Context, as_json: bool) -> None:
    """All jobs: schedule, next run (local time), last result, enabled."""
    jobs = [_job_json(job) for job in open_store(ctx).list_jobs()]
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    if not jobs:
        click.echo("No jobs yet; add one with 'pb job add NAME --every 1h -- COMMAND'")
        return
    rows = [("NAME", "SCHEDULE", "NEXT RUN", "LAST RESULT", "ENABLED")]
    rows += [(j["name"], j["schedule"], local(j["next_run_at"]), j["last_state"] or "-",
              "yes" if j["enabled"] else "paused") for j in jobs]
    _table(rows)


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
                         ("Enabled", "yes" if data["enabled"] else "paused"),
                         ("Next run", local(data["next_run_at"])),
                         ("Last result", data["last_state"] or "-"),
                         ("Timeout", data["timeout_s"] or "none"),
                         ("Retries", f"{data['retries']} (delay {data['retry_delay_s']:g}s)"),
                         ("Overlap", data["overlap"]), ("Catch-up", data["catch_up"]),
                         ("Directory", data["cwd"] or "(the scheduler's home)"),
                         ("Environment", " ".join(f"{k}={v}" for k, v in data["env"].items())
                          or "-")):
        click.echo(_shown(f"{label + ':':<13} {value}", raw))


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
@click.pass_context
def job_run(ctx: click.Context, name: str) -> None:
    """Queue a run of job NAME now."""
    run_id = open_store(ctx).request_run(name)
    click.echo(f"✓ Run {run_id} of job {name} queued")


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
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def runs_list(ctx: click.Context, job: str | None, limit: int, state: str | None,
              as_json: bool) -> None:
    """Recent runs, of every job or of JOB."""
    from pony_scheduler.store.jobs import UnknownJob

    store = open_store(ctx)
    if job is not None and store.job_row(job) is None:
        raise UnknownJob(job)
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
              "-" if r["exit_code"] is None else str(r["exit_code"]), r["trigger"])
             for r in runs]
    _table(rows)


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
                "output_path"):
        value = run.get(key)
        if key in ("occurrence", "started_at", "finished_at"):
            value = local(value)
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
    run = _get_run(ctx, run_id)
    path = run.get("output_path")
    if not path:
        # A running run's output path is written within moments of its start.
        if not follow_ or run["state"] not in ("queued", "running"):
            raise PonyError(f"run {run_id} has no output ({run['state']})")
        while not path:
            time.sleep(0.2)
            run = _get_run(ctx, run_id)
            path = run.get("output_path")
    _print_output(ctx, run_id, path, follow_, raw)


def _write(data: bytes, raw: bool) -> None:
    """--raw: the bytes as the job wrote them; else text with control characters shown."""
    if raw:
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(_shown(data.decode(errors="replace"), raw))
    sys.stdout.flush()


def _print_output(ctx: click.Context, run_id: int, path: str, follow_: bool,
                  raw: bool) -> None:
    handle = _open_output(ctx, run_id, path, follow_)
    if handle is None:
        return
    with handle:
        while True:
            data = handle.read()
            if data:
                _write(data, raw)
            if not follow_ or _get_run(ctx, run_id)["state"] not in ("queued", "running"):
                rest = handle.read()
                if rest:
                    _write(rest, raw)
                return
            time.sleep(0.2)


def _open_output(ctx: click.Context, run_id: int, path: str,
                 follow_: bool) -> BinaryIO | None:
    """The run's output file once it exists; None for a run that printed nothing.

    The file is created at the run's first byte of output: it may not exist yet.
    """
    while True:
        try:
            return open(path, "rb")  # the caller closes it
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
