"""start / stop / status / logs, built once and parameterised by service."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import click

from pony_scheduler.cli import Command, Group, write_stdout
from pony_scheduler.cli.options import POSITIVE_SECONDS, settings_from
from pony_scheduler.config import MAX_WORKERS, Settings, containment_kept
from pony_scheduler.durations import format_duration
from pony_scheduler.errors import EXIT_OK, EXIT_UNKNOWN
from pony_scheduler.lifecycle import status as service_status
from pony_scheduler.lifecycle.spec import ServiceSpec
from pony_scheduler.lifecycle.status import Status

if TYPE_CHECKING:  # start and stop import control.py when they run; status never does
    from pony_scheduler.lifecycle.control import AlreadyRunning, StartFailed, StartResult

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# Start options that only some services have; they become Settings overrides.
_PORT = click.IntRange(1, 65535)


class _Host(click.ParamType):
    name = "HOST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not str(value).strip():
            self.fail("an address or host name is needed (e.g. 127.0.0.1)", param, ctx)
        return str(value).strip()


EXTRA_START_OPTIONS: dict[str, list[Decorator]] = {
    "scheduler": [
        click.option(
            "--db",
            metavar="PATH|URL",
            help="SQLite path or SQLAlchemy URL (postgresql+psycopg://…).",
        ),
        click.option("--socket", metavar="PATH", help="Gateway socket the scheduler reports to."),
        click.option(
            "--workers",
            type=click.IntRange(1, MAX_WORKERS),
            metavar="N",
            help=f"Jobs run at the same time at most, 1-{MAX_WORKERS} [default: 4].",
        ),
        click.option(
            "--shutdown-grace",
            metavar="DURATION",
            help="How long running jobs get to finish on shutdown (30, 30s, 2m) [default: 30s].",
        ),
    ],
    "gateway": [
        click.option(
            "--host",
            "gateway_host",
            type=_Host(),
            help="HTTP address to listen on [default: 127.0.0.1].",
        ),
        click.option(
            "--port", "gateway_port", type=_PORT, metavar="PORT", help="HTTP port [default: 18789]."
        ),
        click.option("--db", help="The scheduler's database (path or SQLAlchemy URL)."),
        click.option("--socket", help="Unix socket for the scheduler's events."),
    ],
    "debug": [
        click.option(
            "--host",
            "debug_host",
            type=_Host(),
            help="HTTP address to listen on [default: 127.0.0.1].",
        ),
        click.option(
            "--port", "debug_port", type=_PORT, metavar="PORT", help="HTTP port [default: 18790]."
        ),
    ],
}


def _label(label: str) -> str:
    return f"  {label + ':':<10} "


def _when(meta: dict[str, Any] | None) -> str:
    started = (meta or {}).get("startedAt")
    if not isinstance(started, int | float):
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started / 1000))


def _details(spec: ServiceSpec, meta: dict[str, Any] | None) -> list[str]:
    meta = meta or {}
    lines = []
    for label, key in spec.details:
        if meta.get(key) is not None:
            lines.append(_label(label) + str(meta[key]))
    return lines


def service_group(spec: ServiceSpec) -> click.Group:
    """`pb NAME`: start, restart, stop, status, logs and the service's extras, each built
    when it is resolved (`pb scheduler status` builds none of the others' options)."""
    builders: dict[str, Callable[[], click.Command]] = {
        "start": lambda: _start_command(spec),
        "restart": lambda: _restart_command(spec),
        "stop": lambda: _stop_command(spec),
        "status": lambda: _status_command(spec),
        "logs": lambda: _logs_command(spec),
        **{name: partial(_extra_command, name) for name in EXTRA_COMMANDS.get(spec.name, ())},
    }
    return Group(
        name=spec.name, help=f"Control the {spec.title.lower()} daemon.", builders=builders
    )


# The commands that only some services have (cli/access.py builds them).
EXTRA_COMMANDS = {"gateway": ("token",), "debug": ("url",)}


def _extra_command(name: str) -> click.Command:
    from pony_scheduler.cli.access import EXTRA_BUILT

    return EXTRA_BUILT[name]


def _start_command(spec: ServiceSpec) -> click.Command:
    @click.command(
        cls=Command, name="start", help=f"Start the {spec.title.lower()} (in the background)."
    )
    @click.option("--foreground", is_flag=True, help="Do not detach; log to stderr.")
    @click.option("--force", is_flag=True, help="Replace a running instance (as restart).")
    @click.option("--debug", is_flag=True, help="Debug-level logging.")
    @click.option(
        "--timeout",
        type=POSITIVE_SECONDS,
        default=30.0,
        show_default=True,
        help="Seconds to wait for readiness (and for --force to stop the old one).",
    )
    @click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
    @click.pass_context
    def start(
        ctx: click.Context,
        foreground: bool,
        force: bool,
        debug: bool,
        timeout: float,
        quiet: bool,
        **extra: Any,
    ) -> None:
        from pony_scheduler.lifecycle import control
        from pony_scheduler.lifecycle.control import AlreadyRunning, StartFailed

        settings = settings_from(ctx, log_level="DEBUG" if debug else None, **extra)
        say = (lambda _: None) if quiet else (lambda line: click.echo(line, err=True))
        if foreground:
            ctx.exit(
                control.start_foreground(spec, settings, force=force, timeout=timeout, say=say)
            )
        try:
            result = control.start(spec, settings, timeout=timeout, force=force, say=say)
        except AlreadyRunning as exc:
            _print_already_running(spec, exc)
            ctx.exit(exc.exit_code)
        except StartFailed as exc:
            _print_failure(spec, settings, exc)
            ctx.exit(exc.exit_code)
        if not quiet:
            _print_started(spec, settings, result)

    for option in EXTRA_START_OPTIONS.get(spec.name, []):
        option(start)  # click.option() on a Command adds the parameter in place
    return start


def _restart_command(spec: ServiceSpec) -> click.Command:
    what = (
        "hands its running runs over to the new one: they keep running"
        if spec.name == "scheduler"
        else "stops"
    )

    @click.command(
        cls=Command,
        name="restart",
        help=f"Replace the {spec.title.lower()} with a new "
        f"process (the old one {what}); start it if it is not running.",
    )
    @click.option("--debug", is_flag=True, help="Debug-level logging.")
    @click.option(
        "--timeout",
        type=POSITIVE_SECONDS,
        default=30.0,
        show_default=True,
        help="Seconds to wait for the old one to go and the new one to be ready.",
    )
    @click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
    @click.pass_context
    def restart(ctx: click.Context, debug: bool, timeout: float, quiet: bool, **extra: Any) -> None:
        from pony_scheduler.lifecycle import control
        from pony_scheduler.lifecycle.control import StartFailed

        settings = settings_from(ctx, log_level="DEBUG" if debug else None, **extra)
        say = (lambda _: None) if quiet else (lambda line: click.echo(line, err=True))
        try:
            result = control.start(spec, settings, timeout=timeout, force=True, say=say)
        except StartFailed as exc:
            _print_failure(spec, settings, exc)
            ctx.exit(exc.exit_code)
        if not quiet:
            _print_started(spec, settings, result)

    for option in EXTRA_START_OPTIONS.get(spec.name, []):
        option(restart)
    return restart


def _print_started(spec: ServiceSpec, settings: Settings, result: StartResult) -> None:
    for note in result.notes:
        click.echo(f"⚠ {note}", err=True)
    click.echo(f"✓ {spec.title} started")
    click.echo(_label("PID") + str(result.pid))
    for line in _details(spec, result.meta):
        click.echo(line)
    click.echo(_label("Log file") + str(spec.log_path(settings.home)))
    if spec.name == "debug":  # the dashboard's own login: a one-time link (pb-debug(1))
        from pony_scheduler.cli.access import dashboard_address, new_login_url

        address = (result.meta or {}).get("address") or dashboard_address(settings)[0]
        click.echo(_label("Login") + new_login_url(settings, str(address)))
        click.echo("  (the link works once, for 10 minutes; 'pb debug url' prints another)")


def _print_already_running(spec: ServiceSpec, exc: AlreadyRunning) -> None:
    click.echo(f"⚠ {spec.title} is already running", err=True)
    click.echo(_label("PID") + str(exc.info.pid), err=True)
    click.echo(_label("Started") + _when(exc.info.meta), err=True)


def _print_failure(spec: ServiceSpec, settings: Settings, exc: StartFailed) -> None:
    click.echo(f"✗ {exc}", err=True)
    if exc.log_tail:
        click.echo(f"  Last lines of {spec.log_path(settings.home)}:", err=True)
        for line in exc.log_tail:
            click.echo(f"    {line}", err=True)


def _stop_command(spec: ServiceSpec) -> click.Command:
    @click.command(cls=Command, name="stop", help=f"Stop the {spec.title.lower()}.")
    @click.option("--force", is_flag=True, help="SIGKILL at once and clean up its files.")
    @click.option(
        "--timeout",
        type=POSITIVE_SECONDS,
        help="Seconds to wait for the process to exit [default: the shutdown grace + 15].",
    )
    @click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
    @click.pass_context
    def stop(ctx: click.Context, force: bool, timeout: float | None, quiet: bool) -> None:
        from pony_scheduler.lifecycle import control

        settings = settings_from(ctx, outputs=False)
        if timeout is None:
            from pony_scheduler.lifecycle.services import stop_timeout

            timeout = stop_timeout(spec, settings)
        say = (lambda _: None) if quiet else (lambda line: click.echo(line))
        result = control.stop(spec, settings, timeout=timeout, force=force, say=say)
        if spec.name == "scheduler" and result.was_running and not force:
            _warn_of_a_lingering_keeper(spec, settings)
        if quiet:
            return
        if result.was_running:
            click.echo(f"✓ {spec.title} {'killed' if force else 'stopped'}")
        else:
            extra = f" ({result.note})" if result.note else ""
            click.echo(f"{spec.title} is not running{extra}")

    return stop


def _status_command(spec: ServiceSpec) -> click.Command:
    @click.command(
        cls=Command, name="status", help=f"Is the {spec.title.lower()} running? (LSB exit codes)"
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
    @click.pass_context
    def status(ctx: click.Context, as_json: bool) -> None:
        settings = status_settings(ctx)
        report = service_status.status(spec, settings)
        if as_json:
            click.echo(json.dumps(status_json(report, settings), indent=2))
        else:
            _print_status(report, settings)
        ctx.exit(report.exit_code)

    return status


def status_settings(ctx: click.Context) -> Settings:
    """Settings for a status command: a home that fails the StrictModes check is
    "unknown" to LSB (exit 4), not "dead with a pid file" (1)."""
    from pony_scheduler.files import UnsafePath

    try:
        return settings_from(ctx, outputs=False)
    except UnsafePath as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(EXIT_UNKNOWN)
        raise  # not reached: ctx.exit raises


STATE_WORDS = {
    "running": "✓ Running",
    "starting": "… Starting",
    "stale": "✗ Not running (stale pid file)",
    "stopped": "✗ Not running",
    "unknown": "? Unknown",
}


def _warn_of_a_lingering_keeper(spec: ServiceSpec, settings: Settings) -> None:
    """After a stop (a drain), the keeper leaves with the scheduler unless the scheduler
    could not record every outcome (the database was down): then it stays to keep them
    and renew their runs' leases, and the admin is told so here, not only in the log
    (review finding: "✓ Scheduler stopped" alone).  On stderr, even with --quiet."""
    from pony_scheduler.lifecycle.pidfile import wait_gone

    keeper = keeper_facts(settings)
    if keeper is None or wait_gone(keeper["pid"], keeper.get("procStartTime"), 3.0):
        return
    click.echo(
        f"⚠ The run keeper (PID {keeper['pid']}) stays: the scheduler could not record "
        f"every outcome (see {spec.log_path(settings.home)}); it keeps them and their runs "
        "show running until 'pb scheduler start' records them",
        err=True,
    )


def keeper_facts(settings: Settings) -> dict[str, Any] | None:
    """The run keeper of the home, from its keeper.json, if its process is alive and the
    one the file describes (the same checks as for a pid file): pid, containment, ..."""
    from pony_scheduler.lifecycle.pidfile import live_meta

    return live_meta(os.path.join(settings.home_dir, "keeper.json"))


def status_json(report: Status, settings: Settings) -> dict[str, Any]:
    meta = report.meta or {}
    uptime = report.uptime()
    keeper = keeper_facts(settings) if report.spec.name == "scheduler" else None
    # The one shape of a service's status: `pb NAME status --json` prints it, and
    # `pb service status --json` lists it for each service.
    return {
        "service": report.spec.name,
        "title": report.spec.title,
        "status": report.state,
        "exitCode": report.exit_code,
        "pid": report.pid,
        "mode": meta.get("mode"),
        "startedAt": meta.get("startedAt"),
        "uptimeSeconds": round(uptime, 3) if uptime is not None else None,
        "logFile": report.spec.log_path(settings.home_dir),
        "pidFile": report.spec.pid_path(settings.home_dir),
        "reason": report.reason or None,
        "address": meta.get("address"),
        "metadata": report.meta,
        **(
            {"clockOffsetSeconds": meta.get("clockOffsetS")}
            if report.spec.name == "scheduler"
            else {}
        ),
        **(
            {
                "keeper": {
                    "pid": keeper["pid"],
                    "containment": keeper.get("containment"),
                    "containmentWhy": keeper.get("containmentWhy") or None,
                    "containmentKept": _kept(report, keeper) or None,
                    "version": keeper.get("version"),
                }
                if keeper
                else None
            }
            if report.spec.name == "scheduler"
            else {}
        ),
    }


def _kept(report: Status, keeper: dict[str, Any]) -> str:
    """Why the keeper's containment is not the one the running scheduler asked for."""
    return containment_kept((report.meta or {}).get("containmentAsked"), keeper)


def _print_status(report: Status, settings: Settings) -> None:
    # One write: click.echo flushes each line, and status is run in loops and monitors.
    click.echo("\n".join(status_lines(report, settings)))


def status_lines(report: Status, settings: Settings) -> list[str]:
    """The text of `pb NAME status`, line by line."""
    spec = report.spec
    lines = [f"{spec.title} Status", _label("Status") + STATE_WORDS[report.state]]
    if report.reason:
        lines.append(_label("Reason") + report.reason)
    if report.state == "running":
        meta = report.meta or {}
        lines.append(_label("PID") + str(report.pid))
        lines.append(_label("Mode") + str(meta.get("mode", "unknown")))
        lines.extend(_details(spec, meta))
        lines.append(_label("Started") + _when(meta))
        clock = clock_line(meta)
        if clock:
            lines.append(_label("Clock") + clock)
    if spec.name == "scheduler":
        keeper = keeper_facts(settings)
        lines.append(
            _label("Keeper")
            + (
                f"PID {keeper['pid']}, containment {keeper.get('containment')}"
                + (f" ({keeper['containmentWhy']})" if keeper.get("containmentWhy") else "")
                + (f" ({kept})" if (kept := _kept(report, keeper)) else "")
                if keeper
                else "not running (the scheduler starts it)"
            )
        )
        uptime = report.uptime()
        lines.append(
            _label("Uptime") + (format_duration(int(uptime)) if uptime is not None else "unknown")
        )
    lines.append(_label("Log file") + spec.log_path(settings.home_dir))
    return lines


def clock_line(meta: dict[str, Any]) -> str | None:
    """How far this host's clock is from the database's, as the scheduler last measured
    it (clockOffsetS in scheduler.json: the database's minus ours); None for SQLite."""
    offset = meta.get("clockOffsetS")
    if not isinstance(offset, int | float) or isinstance(offset, bool):
        return None
    # Imported only here: SQLite homes have no offset, and status need not load host.py.
    from pony_scheduler.scheduler.host import CLOCK_WARN_S

    if abs(offset) <= CLOCK_WARN_S:
        return f"in step with the database's (within {CLOCK_WARN_S:g}s)"
    side = "ahead of" if offset < 0 else "behind"
    return (
        f"{format_duration(round(abs(offset)))} {side} the database's: leases and due "
        "times follow the database's clock; check this host's time sync"
    )


def _logs_command(spec: ServiceSpec) -> click.Command:
    @click.command(cls=Command, name="logs", help=f"Show the {spec.title.lower()}'s log.")
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
    def logs(ctx: click.Context, lines: int, follow_: bool, raw: bool) -> None:
        path = spec.log_path(settings_from(ctx, outputs=False).home)
        if not path.exists():
            click.echo(f"No {spec.title.lower()} log yet ({path} does not exist)", err=True)
            if not follow_:
                ctx.exit(EXIT_OK)
        from pony_scheduler.lifecycle.logs import follow, tail_lines
        from pony_scheduler.textsafe import for_terminal

        shown = (lambda text: text) if raw else for_terminal
        for line in tail_lines(path, lines):
            click.echo(shown(line))
        if follow_:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one stops following
                follow(path, lambda text: _write_out(shown(text)))

    return logs


MAX_LINES = 1_000_000
LINES = click.option(
    "-n",
    "--lines",
    type=click.IntRange(0, MAX_LINES),
    default=50,
    show_default=True,
    help=f"How many of the last lines to show (0-{MAX_LINES}).",
)
# Logs hold what jobs and requests chose (job names, paths): on a terminal their control
# characters are shown, not obeyed (textsafe.for_terminal), unless --raw.
RAW = click.option(
    "--raw",
    is_flag=True,
    help="Print control characters as they are (default: made visible, like cat -v).",
)


def _write_out(text: str) -> None:
    write_stdout(text)
