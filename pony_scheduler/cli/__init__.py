"""`pb`: the command line.  Click only: parse, call the core, format the answer."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pony_scheduler import __version__
from pony_scheduler.cli.config_cmd import config_group
from pony_scheduler.cli.jobs import audit_command, job_group, runs_group
from pony_scheduler.cli.service import service_group
from pony_scheduler.cli.service_all import service_all
from pony_scheduler.errors import EXIT_USAGE, PonyError
from pony_scheduler.lifecycle.spec import DEBUG, GATEWAY, SCHEDULER
from pony_scheduler.textsafe import for_log


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="pb",
                      message="%(prog)s (pony-scheduler) %(version)s")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file (default: $PONYBUNNY_HOME/config.toml).")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """pony-scheduler: run jobs on schedules, as a proper Unix daemon.

    The home directory is $PONYBUNNY_HOME (default ~/.ponybunny).
    """
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file


cli.add_command(service_group(SCHEDULER))
cli.add_command(service_group(GATEWAY))
cli.add_command(service_group(DEBUG))
cli.add_command(service_all)
cli.add_command(job_group)
cli.add_command(runs_group)
cli.add_command(config_group)
cli.add_command(audit_command)


def main(argv: list[str] | None = None, prog_name: str = "pb") -> None:
    """Run `pb`; every failure is one line on stderr and an exit code, no traceback."""
    try:
        code = cli.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else prog_name
        click.echo(f"{where}: {exc.format_message().rstrip('.')}; see '{where} --help'", err=True)
        code = EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except click.Abort:
        code = 130
    except PonyError as exc:
        # Messages may quote job names, paths and URLs that others chose: one line, no
        # control character reaches the terminal.
        click.echo(f"Error: {for_log(str(exc))}", err=True)
        code = exc.exit_code
    except BrokenPipeError:
        code = 141
    except Exception as exc:
        # A database that refuses (read-only, locked, gone) is one line too, never a
        # traceback; anything else is a bug and shows as one.
        if not type(exc).__module__.startswith("sqlalchemy"):
            raise
        from pony_scheduler.store.common import first_line

        click.echo(f"Error: database error: {for_log(first_line(exc))}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
