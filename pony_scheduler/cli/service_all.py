"""`pb service start|stop|restart|status|logs [all|gateway|scheduler|debug]`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pony_scheduler.cli import Group
from pony_scheduler.cli.options import POSITIVE_SECONDS, settings_from
from pony_scheduler.cli.service import LINES, RAW, service_group, status_json, status_settings
from pony_scheduler.durations import format_duration
from pony_scheduler.lifecycle import services
from pony_scheduler.lifecycle.services import ALL, NAMES, Outcome
from pony_scheduler.lifecycle.spec import SERVICES
from pony_scheduler.lifecycle.status import Status
from pony_scheduler.textsafe import for_terminal

_NAME = click.argument("name", type=click.Choice(NAMES), default=ALL, required=False)
_START_TIMEOUT = click.option(
    "--timeout",
    type=POSITIVE_SECONDS,
    default=30.0,
    show_default=True,
    help="Seconds to wait for each service.",
)
# Without --timeout each service waits as `pb NAME stop` does (the scheduler: its shutdown
# grace plus 15 s, so that running jobs can finish).
_STOP_TIMEOUT = click.option(
    "--timeout",
    type=POSITIVE_SECONDS,
    help="Seconds to wait for each service [default: as pb NAME stop].",
)


@click.group(cls=Group, name="service")
def service_all() -> None:
    """All services at once: gateway, scheduler, debug server (NAME: all by default)."""


def _printer(home: Path, quiet: bool = False) -> services.Report:
    def report(outcome: Outcome) -> None:
        title, pid = outcome.spec.title, outcome.pid
        address = (outcome.meta or {}).get("address")
        where = ", ".join(str(part) for part in (f"PID {pid}" if pid else None, address) if part)
        if outcome.result == "started" and not quiet:
            click.echo(f"✓ {title} started ({where})")
        elif outcome.result == "running" and not quiet:
            click.echo(f"✓ {title} already running ({where})")
        elif outcome.result == "stopped":
            click.echo(f"✓ {title} stopped ({where})")
        elif outcome.result == "not-running":
            extra = f" ({outcome.message})" if outcome.message else ""
            click.echo(f"  {title} is not running{extra}")
        elif outcome.result == "skipped":
            click.echo(f"- {title} {outcome.message}", err=True)
        elif outcome.result == "failed":
            click.echo(f"✗ {outcome.message}", err=True)
            if outcome.log_tail:
                path = outcome.spec.log_path(home)
                click.echo(f"  Last lines of {path}:", err=True)
                for line in outcome.log_tail:
                    click.echo(f"    {line}", err=True)

    return report


@service_all.command(name="start")
@_NAME
@_START_TIMEOUT
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@click.pass_context
def start(ctx: click.Context, name: str, timeout: float, quiet: bool) -> None:
    """Start NAME; `all` starts gateway, scheduler, debug server in this order.

    Each is waited for until ready; one already running counts as started.
    """
    settings = settings_from(ctx)
    outcomes = services.start(
        services.select(name), settings, timeout=timeout, report=_printer(settings.home, quiet)
    )
    ctx.exit(services.exit_code(outcomes))


@service_all.command(name="stop")
@_NAME
@_STOP_TIMEOUT
@click.option("--force", is_flag=True, help="SIGKILL at once and clean up their files.")
@click.pass_context
def stop(ctx: click.Context, name: str, timeout: float | None, force: bool) -> None:
    """Stop NAME; `all` stops them in reverse order."""
    settings = settings_from(ctx, outputs=False)
    outcomes = services.stop(
        services.select(name),
        settings,
        timeout=timeout,
        force=force,
        report=_printer(settings.home),
    )
    ctx.exit(services.exit_code(outcomes))


@service_all.command(name="restart")
@_NAME
@_STOP_TIMEOUT
@click.option("--quiet", "-q", is_flag=True, help="Print only failures.")
@click.pass_context
def restart(ctx: click.Context, name: str, timeout: float | None, quiet: bool) -> None:
    """Stop NAME (in reverse order), then start it again (in order)."""
    settings = settings_from(ctx)
    report = _printer(settings.home, quiet)

    def quietly(outcome: Outcome) -> None:
        if not quiet or not outcome.ok:
            report(outcome)

    outcomes = services.restart(services.select(name), settings, timeout=timeout, report=quietly)
    ctx.exit(services.exit_code(outcomes))


def _status_line(report: Status) -> str:
    title = report.spec.title
    if report.state != "running":
        words = control_state_words(report)
        return f"✗ {title}: {words}"
    meta = report.meta or {}
    uptime = report.uptime()
    parts = [f"PID {report.pid}"]
    if uptime is not None:
        parts.append(f"uptime {format_duration(int(uptime))}")
    if meta.get("address"):
        parts.append(str(meta["address"]))
    return f"✓ {title}: Running ({', '.join(parts)})"


def control_state_words(report: Status) -> str:
    if report.state == "starting":
        return "Starting"
    if report.state == "stale":
        return f"Not running (stale pid file: {report.reason})"
    if report.state == "unknown":
        return f"Unknown ({report.reason})"
    return "Not running"


@service_all.command(name="status")
@_NAME
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.pass_context
def status(ctx: click.Context, name: str, as_json: bool) -> None:
    """One line per service; exit 0 when all named services run, 3 otherwise."""
    settings = status_settings(ctx)
    reports = services.statuses(services.select(name), settings)
    code = services.status_exit_code(reports)
    if as_json:
        entries = [status_json(r, settings) for r in reports]
        click.echo(json.dumps({"services": entries, "allRunning": code == 0}, indent=2))
    else:
        for report in reports:
            click.echo(_status_line(report))
    ctx.exit(code)


@service_all.command(name="logs")
@click.argument("name", type=click.Choice(NAMES))
@LINES
@click.option(
    "-f",
    "--follow",
    "follow_",
    is_flag=True,
    help="Keep printing new lines (across log rotation) until Ctrl-C.",
)
@RAW
@click.pass_context
def logs(ctx: click.Context, name: str, lines: int, follow_: bool, raw: bool) -> None:
    """Show NAME's log, as `pb NAME logs` does; `all` shows each one's last lines."""
    if name != ALL:
        # The very command `pb NAME logs` runs, so both always behave the same.
        command = service_group(SERVICES[name]).get_command(ctx, "logs")
        assert command is not None
        ctx.invoke(command, lines=lines, follow_=follow_, raw=raw)
        return
    if follow_:
        raise click.UsageError("follow one service at a time: pb service logs NAME -f")
    from pony_scheduler.lifecycle.logs import tail_lines

    home = settings_from(ctx, outputs=False).home
    for index, spec in enumerate(SERVICES.values()):
        path = spec.log_path(home)
        click.echo(("\n" if index else "") + f"==> {path} <==")
        if not path.exists():
            click.echo(f"(no {spec.title.lower()} log yet)")
        for line in tail_lines(path, lines):
            click.echo(line if raw else for_terminal(line))
