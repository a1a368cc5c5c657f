"""The options `pb job add` and `pb job edit` share, and the JobOptions they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from pony_scheduler.cli import Command
from pony_scheduler.joblimits import MAX_QUEUED, RETRIES, TASKS_MAX, ascii_whole
from pony_scheduler.jobs import CATCH_UP, OVERLAP, JobOptions


class WholeNumber(click.ParamType):
    """A whole number written in ASCII digits, optionally signed: not "1_0", " 5" or
    other digits, which int() would accept (the range is checked by joblimits)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value)
        number = ascii_whole(text[1:] if text[:1] in "+-" else text)
        if number is None:
            self.fail(f"{text!r} is not a whole number", param, ctx)
        return -number if text[:1] == "-" else number


WHOLE = WholeNumber()


def _usage(ctx: click.Context) -> str:
    return f"{ctx.command_path} NAME [options] -- COMMAND [ARG ...]"


class CommandAfterDashes(Command):
    """`pb job add` and `edit`: COMMAND is what follows `--`, and only that.  click
    would take any word that is no option as part of it and drop a later `--`
    (`pb job add x --every 5m echo hi -- foo` stored `echo hi foo`), and would say
    only "No such option '-n'" for `... /bin/echo -n hi`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["after_dashes"] = args[args.index("--") + 1 :] if "--" in args else None
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            if "--" in args:
                raise
            raise click.NoSuchOption(
                exc.option_name,
                f"No such option {exc.option_name!r}; if it is the command's own, put the "
                f"command after --: {_usage(ctx)}",
                ctx=ctx,
            ) from None


def check_command_after_dashes(ctx: click.Context, command: tuple[str, ...]) -> None:
    """UsageError unless `command` (as parsed) is exactly what followed `--`."""
    after = ctx.meta.get("after_dashes")
    if command and after is None:
        raise click.UsageError(f"put the command after --: {_usage(ctx)}")
    if command and tuple(after or ()) != command:
        stray = command[: len(command) - len(after or ())]
        raise click.UsageError(
            f"{' '.join(stray)!r} comes before -- and is no option: everything after -- is "
            f"the command, options go before it ({_usage(ctx)})"
        )


def _range(bounds: tuple[int, int]) -> str:
    """A documented range as pb-job(1) writes it: "0 to 10,000"."""
    return f"{bounds[0]:,} to {bounds[1]:,}"


def job_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `add` and `edit` share."""
    decorators = [
        click.option("--cron", metavar="EXPR", help="Cron expression (5 fields or @daily…)."),
        click.option(
            "--tz",
            metavar="ZONE",
            help="IANA time zone for --cron/--at (default: add, the machine's; edit, the job's).",
        ),
        click.option("--every", metavar="DURATION", help="Fixed interval, e.g. 90s, 5m, 1h."),
        click.option(
            "--at", "at", metavar="TIME", help="Once, e.g. '2026-12-01 09:00', 09:00 or +10m."
        ),
        click.option(
            "--manual", is_flag=True, default=None, help="No schedule: runs only with 'pb job run'."
        ),
        click.option("--timeout", metavar="DURATION|none", help="Kill the run after this long."),
        click.option(
            "--retries",
            type=WHOLE,
            metavar="N",
            help=f"Attempts after a failure ({_range(RETRIES)}; default 0).",
        ),
        click.option(
            "--retry-delay",
            metavar="DURATION",
            help="First retry delay (doubles each attempt, with jitter).",
        ),
        click.option(
            "--overlap",
            type=click.Choice(OVERLAP),
            help="When the previous run still runs: skip (default), queue or allow.",
        ),
        click.option(
            "--catch-up",
            type=click.Choice(CATCH_UP),
            help="Runs missed while down: skip, once (default) or all.",
        ),
        click.option(
            "--cwd", metavar="DIR|none", help="Working directory of the command (none: the home)."
        ),
        click.option(
            "--env",
            multiple=True,
            metavar="NAME=VALUE",
            help="Environment variable for the command (repeatable; '' for none).",
        ),
        click.option(
            "--env-file",
            metavar="PATH",
            help="NAME=VALUE lines read at each "
            "run's start, never stored (systemd's EnvironmentFile= format).",
        ),
        click.option(
            "--secret",
            multiple=True,
            metavar="NAME",
            help="Show the value of --env NAME as (secret) in show, JSON and the API (repeatable).",
        ),
        click.option(
            "--leftovers",
            type=click.Choice(("kill", "keep")),
            help="Processes a run leaves when its main process exits: kill (default) or keep.",
        ),
        click.option(
            "--memory-max",
            metavar="SIZE|none",
            help="Memory limit of a run's "
            "processes, e.g. 512M, 2G (where the memory controller exists).",
        ),
        click.option(
            "--cpu-max",
            metavar="CPUS|none",
            help="CPU limit, e.g. 0.5 or 50% (of one CPU), 2 (where the cpu controller exists).",
        ),
        click.option(
            "--tasks-max",
            metavar="N|none",
            help="Most processes and threads "
            f"a run may have, {_range(TASKS_MAX)} (where the pids controller "
            "exists).",
        ),
        click.option(
            "--jitter",
            metavar="DURATION|none",
            help="Move every run of a cron or "
            "interval job by a stable offset within this window (spreads herds).",
        ),
        click.option(
            "--shell",
            is_flag=True,
            default=None,
            help="COMMAND is one shell string, run with /bin/sh -c.",
        ),
        click.option(
            "--umask",
            metavar="OCTAL",
            help="File mode mask of the command (default 022, as cron and systemd).",
        ),
        click.option(
            "--start-deadline",
            metavar="DURATION|none",
            help="A run that cannot "
            "start this long after its due time expires (default: the schedule's "
            "period, at most 1h).",
        ),
        click.option(
            "--max-queued",
            type=WHOLE,
            metavar="N",
            help="With --overlap queue: "
            f"runs that may wait behind the running one, {_range(MAX_QUEUED)} "
            "(default 10).",
        ),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def options_of(kwargs: dict[str, Any]) -> JobOptions:
    return JobOptions(
        cron=kwargs["cron"],
        tz=kwargs["tz"],
        every=kwargs["every"],
        at=kwargs["at"],
        manual=bool(kwargs["manual"]),
        timeout=kwargs["timeout"],
        retries=kwargs["retries"],
        retry_delay=kwargs["retry_delay"],
        overlap=kwargs["overlap"],
        catch_up=kwargs["catch_up"],
        cwd=kwargs["cwd"],
        env=list(kwargs["env"]),
        shell=kwargs["shell"],
        command=list(kwargs["command"]),
        umask=kwargs["umask"],
        start_deadline=kwargs["start_deadline"],
        max_queued=kwargs["max_queued"],
        env_file=kwargs["env_file"],
        secret=list(kwargs["secret"]),
        leftovers=kwargs["leftovers"],
        memory_max=kwargs["memory_max"],
        cpu_max=kwargs["cpu_max"],
        tasks_max=kwargs["tasks_max"],
        jitter=kwargs["jitter"],
    )
