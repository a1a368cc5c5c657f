"""`pb runs …` and `pb audit`: the run history, one run's output, killing a run, the audit
trail."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

from pony_scheduler.cli import Command, Group, write_stdout
from pony_scheduler.cli.common import (
    RAW,
    STATES,
    add_db_option,
    get_run,
    local,
    open_store,
    remember_db,
    shown,
    table,
)
from pony_scheduler.cli.options import settings_from
from pony_scheduler.cli.output import missing_file, output_path_of, print_output
from pony_scheduler.errors import PonyError
from pony_scheduler.runstate import RUN_ID_MAX

if TYPE_CHECKING:
    from pony_scheduler.store import Store


class RunsGroup(Group):
    """`pb runs [JOB]` lists; `pb runs show|output ID` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


# `pb runs show` labels that are not the key capitalized (units go with the values).
LABELS = {"duration_s": "Duration", "cpu_s": "CPU time"}
RUN_ID = click.IntRange(1, RUN_ID_MAX)


@click.group(name="runs", cls=RunsGroup)
def runs_group() -> None:
    """Run history: `pb runs [JOB]`, `pb runs show ID`, `pb runs output ID`."""


@runs_group.command(name="list")
@click.argument("job", required=False)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=20,
    show_default=True,
    help="How many runs, newest first.",
)
@click.option("--state", type=click.Choice(STATES), help="Only runs in this state.")
@click.option(
    "--missed",
    is_flag=True,
    help="The missed occurrences counted beyond those "
    "listed one by one as skipped runs (one summary per outage).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def runs_list(
    ctx: click.Context, job: str | None, limit: int, state: str | None, missed: bool, as_json: bool
) -> None:
    """Recent runs, of every job or of JOB."""
    from pony_scheduler.store.jobs import UnknownJob

    if missed and state is not None:  # it was ignored (review finding)
        raise click.UsageError("--missed lists occurrences, which have no state: drop --state")

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
        click.echo(f"No {state} runs" if state else "No runs yet")
        return
    rows = [("ID", "JOB", "STATE", "STARTED", "DURATION", "EXIT", "TRIGGER")]
    rows += [
        (
            str(r["id"]),
            r["job"],
            r["state"],
            local(r["started_at"]),
            f"{r['duration_s']:.2f}s" if r["duration_s"] is not None else "-",
            _exit(r),
            r["trigger"],
        )
        for r in runs
    ]
    table(rows)
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
    rows += [
        (
            g["job"],
            f"{g['count']:,}",
            local(g["first_occurrence"]),
            local(g["last_occurrence"]),
            g["reason"],
        )
        for g in gaps
    ]
    table(rows)


def _exit(run: dict[str, Any]) -> str:
    from pony_scheduler.scheduler.runs import describe_exit

    return describe_exit(run["exit_code"], run.get("signal"))


def _missed_footer(store: Store, job: str | None) -> None:
    """Missed occurrences counted beyond those listed one by one (none vanish)."""
    for gap in store.missed_summaries(job, limit=5):
        click.echo(
            f"Missed, not listed one by one: {gap['count']:,} occurrence(s) of job "
            f"{gap['job']} from {local(gap['first_occurrence'])} to "
            f"{local(gap['last_occurrence'])} ({gap['reason']})"
        )


@runs_group.command(name="show")
@click.argument("run_id", type=RUN_ID)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@RAW
@click.pass_context
def runs_show(ctx: click.Context, run_id: int, as_json: bool, raw: bool) -> None:
    """Metadata and output of run RUN_ID."""
    from pony_scheduler.durations import format_duration

    run = get_run(ctx, run_id, exact_tail=raw and not as_json)
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    for key in (
        "id",
        "job",
        "state",
        "trigger",
        "attempt",
        "occurrence",
        "started_at",
        "finished_at",
        "duration_s",
        "exit_code",
        "reason",
        "pid",
        "hostname",
        "containment",
        "peak_memory",
        "cpu_s",
        "output_path",
    ):
        value = run.get(key)
        if key == "peak_memory" and value is not None:
            value = f"{value / 1048576:.1f} MiB"
        if key in ("cpu_s", "duration_s") and value is not None:
            value = format_duration(value)
        if key in ("occurrence", "started_at", "finished_at"):
            value = local(value)
        if key == "exit_code":
            value = _exit(run)
        if key == "output_path" and value and not os.path.exists(value):
            # Created at the first byte of output (see pb-job(1)).
            value = f"{value} ({missing_file(run)})" if run.get("output_tail") else "- (no output)"
        click.echo(
            shown(
                f"{LABELS.get(key, key.replace('_', ' ').capitalize()) + ':':<13} "
                f"{'-' if value is None else value}",
                raw,
            )
        )
    click.echo("Output (end):")
    tail = run.get("output_tail")
    if isinstance(tail, bytes) and tail:  # --raw: the bytes as the job wrote them
        write_stdout(tail)  # exactly: no newline added
    else:
        click.echo(shown(tail or "(none)", raw))


@runs_group.command(name="output")
@click.argument("run_id", type=RUN_ID)
@click.option(
    "-f", "--follow", "follow_", is_flag=True, help="Keep printing while the run is running."
)
@RAW
@click.pass_context
def runs_output(ctx: click.Context, run_id: int, follow_: bool, raw: bool) -> None:
    """The whole output of run RUN_ID."""
    path = output_path_of(ctx, run_id, follow_)
    if path is None:
        raise PonyError(f"run {run_id} has no output ({get_run(ctx, run_id)['state']})")
    print_output(ctx, run_id, path, follow_, raw)


@runs_group.command(name="kill")
@click.argument("run_id", type=RUN_ID)
@click.option(
    "--signal",
    "signame",
    default="TERM",
    show_default=True,
    metavar="SIG",
    help="The signal for the run's whole process tree (SIGKILL follows after the "
    "kill grace if it is not SIGKILL).",
)
@click.pass_context
def runs_kill(ctx: click.Context, run_id: int, signame: str) -> None:
    """Stop run RUN_ID's whole process tree; it is recorded as killed, and by whom."""
    from pony_scheduler.actor import cli_actor
    from pony_scheduler.keeper.client import KeeperClient, KeeperError
    from pony_scheduler.keeper.protocol import signal_name, signal_number

    try:
        # One spelling in the message and the audit, whichever was given (review
        # finding: "STOP" was echoed as STOP, "SIGHUP" as SIGHUP).
        shown = signal_name(signal_number(signame)).removeprefix("SIG")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--signal") from None
    run = get_run(ctx, run_id)
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
            raise PonyError(
                f"run {run_id} is not held by the run keeper of {settings.home} "
                f"(it runs on {run['hostname'] or 'another host'}); run "
                "'pb runs kill' there"
            )
        if not keeper.kill(run_id, signame, by=f"pb runs kill by {actor.describe()}"):
            # It ended between the question and the kill (review finding: "✓ Sent"
            # was printed and audited all the same).
            raise PonyError(f"run {run_id} is not running (it has just ended)")
    finally:
        if keeper is not None:
            keeper.close()
    open_store(ctx).record_audit(actor, "kill", run["job"], f"run {run_id} {shown}")
    click.echo(f"✓ Sent {shown} to run {run_id} (job {run['job']}) and its whole process tree")


@click.command(cls=Command, name="audit")
@click.argument("job", required=False)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=20,
    show_default=True,
    help="How many entries, newest first.",
)
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
    rows += [
        (local(e["at"]), *_audit_who(e), e["action"], e["job"] or "-", e["detail"] or "")
        for e in entries
    ]
    table([[shown(str(cell), raw=False) for cell in row] for row in rows])


_OPENED = {"link": "login link", "token": "pasted token", "session": "opened how: unknown"}


def _audit_who(entry: dict[str, Any]) -> tuple[str, str]:
    """WHO and VIA of an audit entry.  A dashboard action is a session's, not its
    process's user: `dashboard session (admin, login link)`, served as root (0)."""
    user = f"{entry['user'] or '?'} ({entry['uid']})" if entry["uid"] is not None else "-"
    if entry["via"] != "dashboard":
        return user, f"{entry['via']} ({entry['scope']})"
    scope, _, how = str(entry["scope"] or "").partition(" ")
    return (f"dashboard session ({scope}, {_OPENED.get(how, how)})", f"dashboard running as {user}")


add_db_option(runs_group)
audit_command.params.append(
    click.Option(
        ["--db"],
        metavar="PATH|URL",
        expose_value=False,
        callback=remember_db,
        help="Database to use (default: PONYBUNNY_DB, config.toml, or HOME/pony.db).",
    )
)
