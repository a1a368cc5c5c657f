"""`pb`: the command line.  Click only: parse, call the core, format the answer.

Start-up is what users feel most (`pb scheduler status` in a prompt, in monitoring, in a
loop), so `pb` imports only the command group that runs: the top-level groups are listed
in LAZY with their one-line help and imported on first use.  `pb --help` and
`pb --version` import none of them.  Keep module-level imports here to click and the
standard library.
"""

import io
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from pony_scheduler import __version__
from pony_scheduler.errors import EXIT_USAGE, PonyError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem


# click writes the text of its --help and --version options (and click.Path's metavar)
# through gettext, whose first call imports `locale` (about 2 ms, a tenth of what `pb
# scheduler status` may add to `import click`) although pb is not translated.  Every pb
# command and group is one of these two classes, whose help option has its text as is
# (and whose help is as wide as the terminal without shutil, _Context).
HELP_HELP = "Show this message and exit."


def _show_help(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


def _columns() -> int:
    """shutil.get_terminal_size().columns without shutil, which click's HelpFormatter
    imports for it (with zlib, bz2 and lzma: about 7 million instructions, 4% of `import
    click`, on `pb --help` and on every usage error)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Context(click.Context):
    def make_formatter(self) -> click.HelpFormatter:
        width = self.terminal_width
        if width is None and click.formatting.FORCED_WIDTH is None:
            # What HelpFormatter makes of shutil's answer.
            width = max(min(_columns(), self.max_content_width or 80) - 2, 50)
        return self.formatter_class(width=width, max_width=self.max_content_width)


class _PlainHelp:
    _plain_help: click.Option | None = None
    context_class: type[click.Context] = _Context  # help's width without shutil

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        """As click.Command.get_help_option (built once, eager, not exposed), without
        gettext."""
        assert isinstance(self, click.Command)
        names = self.get_help_option_names(ctx)
        if not names or not self.add_help_option:
            return None
        if self._plain_help is None:
            self._plain_help = click.Option(
                names,
                is_flag=True,
                expose_value=False,
                is_eager=True,
                help=HELP_HELP,
                callback=_show_help,
            )
        return self._plain_help


class Command(_PlainHelp, click.Command):
    """A pb command (see _PlainHelp)."""


class Group(_PlainHelp, click.Group):
    """A pb group: its subcommands are Commands, its subgroups Groups.  `builders` (name
    -> function returning the command) are built when resolved, so that running one
    command does not build its siblings' options."""

    command_class = Command
    group_class = type  # click: "the same class as this group"

    def __init__(
        self,
        *args: Any,
        builders: Mapping[str, Callable[[], click.Command]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.builders = dict(builders or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.builders})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.builders:
            self.add_command(self.builders[cmd_name](), cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            # click suggests from the commands built so far; suggest from every name.
            raise click.exceptions.NoSuchCommand(
                exc.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None


class LazyCommand(NamedTuple):  # not a dataclass: `pb --version` need not import dataclasses
    """A top-level command known by its help text until it is needed."""

    help: str  # the command's own help text (tests/unit/test_cli_lazy.py keeps them equal)
    load: Callable[[], click.Command]


def _service(name: str) -> Callable[[], click.Command]:
    def load() -> click.Command:
        from pony_scheduler.cli.service import service_group
        from pony_scheduler.lifecycle.spec import SERVICES

        return service_group(SERVICES[name])

    return load


def _config() -> click.Command:
    from pony_scheduler.cli.config_cmd import config_group

    return config_group


def _job() -> click.Command:
    from pony_scheduler.cli.jobs import job_group

    return job_group


def _runs() -> click.Command:
    from pony_scheduler.cli.runs import runs_group

    return runs_group


def _audit() -> click.Command:
    from pony_scheduler.cli.runs import audit_command

    return audit_command


def _service_all() -> click.Command:
    from pony_scheduler.cli.service_all import service_all

    return service_all


LAZY: dict[str, LazyCommand] = {
    "scheduler": LazyCommand("Control the scheduler daemon.", _service("scheduler")),
    "gateway": LazyCommand("Control the gateway daemon.", _service("gateway")),
    "debug": LazyCommand("Control the debug server daemon.", _service("debug")),
    "service": LazyCommand(
        "All services at once: gateway, scheduler, debug server (NAME: all by default).",
        _service_all,
    ),
    "job": LazyCommand(
        "Define, change and trigger jobs (the running scheduler sees changes within a second).",
        _job,
    ),
    "runs": LazyCommand(
        "Run history: `pb runs [JOB]`, `pb runs show ID`, `pb runs output ID`.", _runs
    ),
    "config": LazyCommand(
        "Inspect the configuration (defaults < config.toml < environment < flags).", _config
    ),
    "audit": LazyCommand(
        "Who changed or triggered jobs (of JOB), when, and how (CLI or API).", _audit
    ),
}


class _StdoutClosed(Exception):
    """A BrokenPipeError on its way to main(): click turns one into exit status 1, and pb
    documents 141 (pb(1), EXIT STATUS), what a shell gives a command killed by SIGPIPE."""


class _StdoutFailed(Exception):
    """Another error writing the standard output (a full disk, a quota, a file size
    limit, an I/O error) on its way to main(): click re-raises it, which was a traceback;
    it is one line on stderr, exit 1."""


# What a write to a file, a device or a disk answers when the output cannot be written
# (EPIPE, a reader gone, is _StdoutClosed).
_OUTPUT_ERRNOS = frozenset(("ENOSPC", "EDQUOT", "EFBIG", "EIO"))


def _stdout_failed(exc: OSError) -> bool:
    """Whether `exc` is a write to the standard output that failed, not a full disk or an
    I/O error met elsewhere (a file in the home, say), which stays the bug it is.  The
    frame it was raised in tells: a write fails in C, so the innermost Python frame is
    the one that called it - click.echo or write_stdout, with the stream as a local."""
    import errno

    if errno.errorcode.get(exc.errno or 0) not in _OUTPUT_ERRNOS or exc.filename is not None:
        return False
    trace = exc.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    try:
        stdout = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a file (click's CliRunner)
        return False
    for value in trace.tb_frame.f_locals.values() if trace is not None else ():
        if isinstance(value, io.IOBase):
            try:
                if value.fileno() == stdout:
                    return True
            except (ValueError, OSError):  # closed, or not a file
                continue
    return False


def write_stdout(data: str | bytes) -> None:
    """`data` on the standard output now, bytes as they are (what click.echo is for text
    lines): a failure is told apart by the stream in this frame (_stdout_failed).
    Written with os.write until all of it is out: a buffered write that the file system
    cut short (a full disk, RLIMIT_FSIZE) returned the short count and dropped the rest
    without an error, so `pb runs output > file` ended 0 with a truncated file (review
    finding); the next os.write raises ENOSPC / EFBIG instead."""
    stream = sys.stdout.buffer  # the stream _stdout_failed finds in this frame
    sys.stdout.flush()  # what click.echo left buffered goes first
    if isinstance(data, str):
        data = data.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict")
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):  # not a file (a test's capture)
        stream.write(data)
        stream.flush()
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _output_error(exc: OSError) -> Exception | None:
    """What an OSError from running a command becomes on its way to main(); None: itself."""
    if isinstance(exc, BrokenPipeError):
        return _StdoutClosed()
    if _stdout_failed(exc):
        return _StdoutFailed(exc.strerror or str(exc))
    return None


class LazyGroup(Group):
    """A click.Group whose LAZY commands are imported when they are resolved.

    Everything that walks the tree (completion, the man page tests) goes through
    list_commands() and get_command(), which import on demand; only the command listing of
    `pb --help` is written from the table, so that help imports nothing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, builders={n: c.load for n, c in LAZY.items()}, **kwargs)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:  # --version and --help write while the arguments are parsed
            return super().make_context(*args, **kwargs)
        except OSError as exc:
            if (failure := _output_error(exc)) is None:
                raise
            raise failure from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if (failure := _output_error(exc)) is None:
                raise
            raise failure from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # As click.Group.format_commands, with stand-ins for the commands not imported yet.
        listed: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or click.Command(name, help=LAZY[name].help)
            if not command.hidden:
                listed.append((name, command))
        if not listed:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in listed)
        with formatter.section("Commands"):
            formatter.write_dl(
                [(name, command.get_short_help_str(limit)) for name, command in listed]
            )


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # click.version_option without gettext (see _PlainHelp) and without importlib.metadata.
    if value and not ctx.resilient_parsing:
        click.echo(f"pb (pony-scheduler) {__version__}", color=ctx.color)
        ctx.exit()


class ConfigFile(click.ParamType):
    """click.Path(dir_okay=False) without gettext: a path that is not a directory (whether
    it exists and is safe to read is load_settings' to say)."""

    name = "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if os.path.isdir(value):
            self.fail(f"File {str(value)!r} is a directory.", param, ctx)
        return str(value)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list["CompletionItem"]:
        # As click.Path: the shell completes file names.
        from click.shell_completion import CompletionItem

        return [CompletionItem(incomplete, type="file")]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    "-V",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@click.option(
    "--config",
    "config_file",
    type=ConfigFile(),
    help="Configuration file (default: $PONYBUNNY_HOME/config.toml).",
)
@click.pass_context
def cli(ctx: click.Context, config_file: str | None) -> None:
    """pony-scheduler: run jobs on schedules, as a proper Unix daemon.

    The home directory is $PONYBUNNY_HOME (default ~/.ponybunny).
    """
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file  # str: load_settings needs no pathlib (config.py)


def _quiet_stdout() -> None:
    """What is still buffered for the standard output must not fail again at exit
    ("Exception ignored"): it goes to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


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
        from pony_scheduler.textsafe import for_log

        # Messages may quote job names, paths and URLs that others chose: one line, no
        # control character reaches the terminal.
        click.echo(f"Error: {for_log(str(exc))}", err=True)
        code = exc.exit_code
    except (_StdoutClosed, BrokenPipeError):
        _quiet_stdout()
        code = 141
    except _StdoutFailed as exc:
        _quiet_stdout()
        click.echo(f"Error: cannot write the output: {exc}", err=True)
        code = 1
    except UnicodeEncodeError as exc:
        # Bytes that are not UTF-8 in an argument (Python holds them as surrogates):
        # names and paths are stored and shown as text.  Each input that can be
        # checked early is; this is the one line for any other (review finding).
        if exc.reason != "surrogates not allowed" or not isinstance(exc.object, str):
            raise
        from pony_scheduler.textsafe import for_log, undecodable_shown

        text = undecodable_shown(exc.object)
        click.echo(
            f"Error: '{for_log(text)}' is not UTF-8, and pony-scheduler keeps names and "
            "paths as UTF-8 text: use a name or path that is",
            err=True,
        )
        code = EXIT_USAGE
    except Exception as exc:
        # A database that refuses (read-only, locked, gone) is one line too, never a
        # traceback; anything else is a bug and shows as one.
        if not type(exc).__module__.startswith("sqlalchemy"):
            raise
        from pony_scheduler.store.common import first_line
        from pony_scheduler.textsafe import for_log

        click.echo(f"Error: database error: {for_log(first_line(exc))}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
