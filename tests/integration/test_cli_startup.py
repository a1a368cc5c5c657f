"""`pb` imports only what the command that runs needs (issue 15: start-up stays light).

No timing here (bench/bench_cli.py measures it): these tests look at which modules a real
`pb` process imported, compared with `python -c 'import click'` in the same interpreter.
Both run without site (`python -S`, pony_scheduler and click found through PYTHONPATH):
an editable install's finder, which site runs at start-up, imports pathlib (and with it
urllib.parse and ipaddress), which would hide those imports of pb's.  They also check
that the lazy top-level groups look exactly like eager ones.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import pony_scheduler
from pony_scheduler.cli import LAZY, Command, Group, LazyGroup, _columns, cli
from tests.conftest import Pb

# Run a command as `pb` does and print the modules it imported, whatever its exit code
# (json is imported after they are listed: --version and --help must not need it).
PROBE = """
import sys
try:
    if sys.argv[1:] != ["--click-only"]:
        from pony_scheduler.cli import main
        main(sys.argv[1:])
    else:
        import click
except SystemExit:
    pass
finally:
    sys.stdout.flush()
    modules = sorted(sys.modules)
    import json
    sys.stderr.write("\\nMODULES " + json.dumps(modules) + "\\n")
"""
# Where `python -S` finds pony_scheduler and click (site would have added them).
PYTHONPATH = os.pathsep.join(
    str(Path(module.__path__[0]).parent) for module in (pony_scheduler, click)
)

# Heavy modules that must stay off the paths that do not need them.
HEAVY = {
    "logging",
    "tomllib",
    "socket",
    "ipaddress",
    "sqlalchemy",
    "alembic",
    "croniter",
    "daemon",
    "lockfile",
    "asyncio",
    "aiohttp",
    "psycopg",
    "zoneinfo",
    "sqlite3",
    "uuid",
    "inspect",
    "urllib",
    "urllib.parse",
    # ~16M instructions with urllib.parse and ipaddress, a tenth of `import click`: the
    # paths these commands use are str (config.Settings).
    "pathlib",
}


def imported(home: Path, *args: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONYBUNNY_")}
    env["PONYBUNNY_HOME"] = str(home)
    env["PYTHONPATH"] = PYTHONPATH
    proc = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    line = proc.stderr.rsplit("MODULES ", 1)[1]
    return set(json.loads(line))


def run_pb(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m pony_scheduler ARGS` in `home`, with no other PONYBUNNY_ setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONYBUNNY_")}
    return subprocess.run(
        [sys.executable, "-m", "pony_scheduler", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**env, "PONYBUNNY_HOME": str(home)},
    )


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What `import click` (and the interpreter's own start-up) imports."""
    return imported(tmp_path_factory.mktemp("floor"), "--click-only")


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["-h"]])
def test_version_and_help_import_no_command_group(
    tmp_path: Path, floor: set[str], args: list[str]
) -> None:
    extra = imported(tmp_path, *args) - floor
    ours = {m for m in extra if m.startswith("pony_scheduler")}
    assert ours == {"pony_scheduler", "pony_scheduler.cli", "pony_scheduler.errors"}
    assert not extra & HEAVY, sorted(extra & HEAVY)
    assert "dataclasses" not in extra and "json" not in extra
    if args == ["--version"]:
        # gettext's first call imports locale; pb's own --version and --help options do
        # not call it (help's headings do)
        assert "locale" not in extra
    # click's HelpFormatter imports shutil (with zlib, bz2, lzma) for the terminal's
    # width; pb's context asks os (cli/__init__.py, _Context)
    assert "shutil" not in extra


@pytest.mark.parametrize("columns", [None, "0", "30", "120", "wide"])
def test_help_is_as_wide_as_shutil_says(
    monkeypatch: pytest.MonkeyPatch, columns: str | None
) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert _columns() == shutil.get_terminal_size().columns


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_scheduler_status_imports_only_the_lifecycle(
    pb: Pb, home: Path, floor: set[str], running: bool
) -> None:
    if running:  # what monitors ask: the running daemon's metadata and keeper are read
        pb("scheduler", "start", check=True)
    extra = imported(home, "scheduler", "status") - floor
    if running:
        assert pb("scheduler", "status").code == 0
        pb("scheduler", "stop", check=True)
    assert not extra & HEAVY, sorted(extra & HEAVY)
    ours = {m for m in extra if m.startswith("pony_scheduler")}
    assert "pony_scheduler.cli.service" in ours  # the command really ran
    assert "locale" not in extra  # no gettext (cli/__init__.py, _PlainHelp)
    # Its records are NamedTuples: building dataclasses costs ~0.3-1 ms each at import.
    assert "dataclasses" not in extra
    for unneeded in (
        "pony_scheduler.cli.jobs",
        "pony_scheduler.cli.runs",
        "pony_scheduler.cli.output",
        "pony_scheduler.cli.config_cmd",
        "pony_scheduler.cli.service_all",
        "pony_scheduler.store",
        "pony_scheduler.lifecycle.daemonize",
        "pony_scheduler.scheduler",
        # the other commands of the group are built only when they run
        "pony_scheduler.cli.access",
        "pony_scheduler.lifecycle.logs",
        "pony_scheduler.textsafe",
        "pony_scheduler.lifecycle.control",  # start and stop's
    ):
        assert unneeded not in ours


def test_a_config_file_is_still_read(tmp_path: Path, floor: set[str]) -> None:
    """tomllib is imported when there is a file to parse (and then it is parsed)."""
    (tmp_path / "config.toml").write_text("workers = 0\n")
    proc = run_pb(tmp_path, "scheduler", "status")
    assert proc.returncode == 2
    assert "workers must be a number of workers from 1 to 1024" in proc.stderr


def test_lazy_help_texts_are_the_commands_own() -> None:
    fresh = LazyGroup(commands=[])
    ctx = click.Context(fresh, info_name="pb")
    for name, entry in LAZY.items():
        command = fresh.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.help == entry.help, name


def test_help_lists_every_group_as_eager_loading_would(tmp_path: Path) -> None:
    runner = CliRunner()
    lazy = runner.invoke(cli, ["--help"], prog_name="pb", env={"PONYBUNNY_HOME": str(tmp_path)})
    ctx = click.Context(cli, info_name="pb")
    eager = click.Group(
        name="pb",
        commands={n: cli.get_command(ctx, n) for n in LAZY},
        help=cli.help,
        params=cli.params,
        context_settings=cli.context_settings,
    )
    loaded = runner.invoke(eager, ["--help"], prog_name="pb")
    assert lazy.exit_code == 0 and loaded.exit_code == 0
    # The command listing (the part the lazy group writes itself) is the same; the option
    # lines above it depend on which click objects earlier tests in this process built.
    assert lazy.output.split("Commands:")[1] == loaded.output.split("Commands:")[1]
    for name in LAZY:
        assert f"\n  {name} " in lazy.output


def test_an_unknown_command_is_one_line(tmp_path: Path) -> None:
    proc = run_pb(tmp_path, "schedular", "status")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "No such command 'schedular'" in proc.stderr


def test_every_command_has_the_plain_help_option(tmp_path: Path) -> None:
    """Every command and group in the tree is pb's Command or Group, whose --help needs no
    gettext (cli/__init__.py), and every group lists what it resolves."""
    ctx = click.Context(cli, info_name="pb")

    def walk(command: click.Command, path: str) -> int:
        assert isinstance(command, Command | Group), path
        option = command.get_help_option(ctx)
        assert option is not None and option.help == "Show this message and exit.", path
        if not isinstance(command, click.Group):
            return 1
        names = command.list_commands(ctx)
        assert names, path
        return 1 + sum(walk(command.get_command(ctx, n), f"{path} {n}") for n in names)

    assert walk(cli, "pb") > 40


def test_a_directory_as_config_file_is_one_line(tmp_path: Path) -> None:
    proc = run_pb(tmp_path, "--config", str(tmp_path), "scheduler", "status")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert f"Invalid value for '--config': File '{tmp_path}' is a directory" in proc.stderr


def test_a_typo_in_a_lazy_group_gets_suggestions(tmp_path: Path) -> None:
    """Commands built on demand are still offered for a mistyped name."""
    proc = run_pb(tmp_path, "scheduler", "stauts")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "No such command 'stauts'" in proc.stderr and "'status'" in proc.stderr
    proc = run_pb(tmp_path, "gateway", "tokn")
    assert proc.returncode == 2 and "Did you mean 'token'?" in proc.stderr


def test_the_config_option_completes_file_names(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONYBUNNY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pony_scheduler"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={
            **env,
            "PONYBUNNY_HOME": str(tmp_path),
            "_PB_COMPLETE": "bash_complete",
            "COMP_WORDS": "pb --config /tmp/x",
            "COMP_CWORD": "2",
        },
    )
    assert proc.stdout.strip() == "file,/tmp/x"


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["job", "list", "--json"]])
def test_stdout_closed_early_exits_141_quietly(argv: list[str], pb: Pb) -> None:
    """`pb ... | head -1`: click exits 1 on EPIPE; pb(1) documents 141 (what a shell
    gives a command killed by SIGPIPE), with nothing on stderr (review finding).  The
    pipe's reading end is closed before pb starts, so the first write fails."""
    pb("job", "add", "one", "--every", "1h", "--", "true", check=True)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = _pb_writing_to(write_end, argv, pb)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def _pb_writing_to(stdout: Any, argv: list[str], pb: Pb) -> subprocess.CompletedProcess[str]:
    """`pb ARGV` with its standard output on `stdout` (a file or descriptor)."""
    return subprocess.run(
        [sys.executable, "-m", "pony_scheduler", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=pb.env,
        timeout=60,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["job", "list", "--all", "--json"],
        ["job", "show", "one"],
        ["runs"],
        ["runs", "show", "1"],
        ["scheduler", "status"],
        ["config", "show"],
    ],
)
def test_stdout_that_cannot_be_written_is_one_line(argv: list[str], pb: Pb) -> None:
    """`pb ... > /dev/full` (a full disk): the write error was a traceback of 33 lines
    (click re-raises an OSError other than EPIPE); now one line, exit 1, and no second
    error when the interpreter flushes at exit (review finding)."""
    pb("job", "add", "one", "--manual", "--", "printf", "some output", check=True)
    pb("job", "run", "one", check=True)  # queued: `pb runs show 1` has a run to show
    with open("/dev/full", "w") as full:
        done = _pb_writing_to(full, argv, pb)
    assert (done.returncode, done.stderr) == (
        1,
        "Error: cannot write the output: No space left on device\n",
    ), done.stderr


def test_output_cut_short_by_the_file_system_is_an_error(pb: Pb, tmp_path: Path) -> None:
    """`pb runs output 1 > file` on a file system with room for part of it ended 0 with a
    truncated file: a buffered write cut short returned the short count and dropped the
    rest (review finding).  Now the rest's write fails: one line, exit 1.  The file
    size limit (RLIMIT_FSIZE) stands in for a nearly full disk: it cuts a write the same
    way (EFBIG, SIGXFSZ ignored)."""
    import resource

    pb("scheduler", "start", check=True)
    try:
        pb("job", "add", "big", "--manual", "--", "head", "-c", "20000", "/dev/zero", check=True)
        assert pb("job", "run", "big", "--wait").code == 0

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

        with open(tmp_path / "out", "wb") as out:
            done = subprocess.run(
                [sys.executable, "-m", "pony_scheduler", "runs", "output", "1", "--raw"],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                env=pb.env,
                timeout=60,
                preexec_fn=limit,
            )
        assert (done.returncode, done.stderr) == (
            1,
            "Error: cannot write the output: File too large\n",
        ), done.stderr
    finally:
        pb("scheduler", "stop")
