"""Every bad input gets one clear line on stderr, a non-zero exit and no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Pb, pb_read_only, read_only_available, wait_dead, wait_for


def one_line_error(result_err: str) -> str:
    lines = [line for line in result_err.splitlines() if line.strip()]
    assert len(lines) >= 1
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--timeout", "0"], "not a positive number"),
        (["--timeout", "-3"], "not a positive number"),
        (["--timeout", "soon"], "not a positive number"),
        (["--timeout", "inf"], "not a positive number"),
        (["--bogus"], "No such option '--bogus'"),
        (["--db", "bogus://x"], "unknown database driver"),
        # make_url's ValueError (a port that is no number), the password masked
        (["--db", "postgresql+psycopg://u:s3cret@[::1"], "'postgresql+psycopg://u:***@[::1' is"),
        (["--db", "postgresql+psycopg://u@127.0.0.1:abc/x"], "is neither a path nor an SQLAlchemy"),
        (["--db", "postgresql+pg8000://u@127.0.0.1/x"], "its driver pg8000 is not installed"),
        (["--db", "postgresql://u:p@ss@h:x/db"], "'postgresql://u:***@h:x/db' is neither"),
        (["--db", "sqlite://"], "--db names an in-memory SQLite database"),
        (["--db", "sqlite:///:memory:"], "--db names an in-memory SQLite database"),
        (["--db", "/nonexistent/dir/pony.db"], "does not exist"),
        (["--socket", "/tmp/" + "s" * 120], "longer than the 107"),
        (["--socket", "/nonexistent/dir/g.sock"], "does not exist"),
    ],
)
def test_bad_start_flags(pb: Pb, home: Path, args: list[str], expected: str) -> None:
    result = pb("scheduler", "start", *args)
    assert result.code != 0
    assert expected in result.err
    assert result.out == ""
    assert not (home / "scheduler.pid").exists()


@pytest.mark.parametrize("db", ["sqlite:///no/such/dir/x.db", "/no/such/dir/x.db"])
def test_a_database_in_a_missing_directory_is_one_line(pb: Pb, db: str) -> None:
    """For every command, not only a daemon's start (review finding: a traceback)."""
    for args in (("job", "list"), ("job", "add", "m", "--manual", "--", "true"), ("runs",)):
        result = pb(*args, "--db", db) if args[0] != "job" else pb(*args[:2], "--db", db, *args[2:])
        assert result.code == 2 and result.err.count("\n") == 1, result.all
        assert "does not exist; create it or choose another path" in result.err


def test_unknown_flag_is_one_line(pb: Pb) -> None:
    result = pb("scheduler", "stop", "--nope")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "--nope" in result.err


def test_unreachable_database(pb: Pb, home: Path) -> None:
    result = pb(
        "scheduler",
        "start",
        "--db",
        "postgresql+psycopg://postgres@127.0.0.1:1/test",
        "--timeout",
        "20",
    )
    assert result.code == 1
    first = one_line_error(result.err)
    assert first.startswith("✗ Scheduler failed to start: cannot use database")
    assert "127.0.0.1:1" in first and "check --db" in first
    assert "Last lines of" in result.err
    assert result.err.count("cannot use database") == 1, result.err  # not again in the tail
    again = pb("scheduler", "start", "--db", "postgresql+psycopg://postgres@127.0.0.1:2/t%09x")
    assert again.code == 1 and "127.0.0.1:2/" in again.err
    assert "127.0.0.1:1/" not in again.err, again.err  # this start's lines only
    assert again.err.count("cannot use database") == 1, again.err  # \t escaped in the log
    assert not (home / "scheduler.pid").exists()
    assert pb("scheduler", "status").code == 3
    # The run keeper that start began beside the daemon is reached by no scheduler: it
    # exits after its idle time (5 s), as one whose scheduler left does (review finding).
    assert wait_for(lambda: not (home / "keeper.pid").exists(), 60)


def test_missing_parent_home(pb: Pb, tmp_path: Path) -> None:
    result = pb("scheduler", "start", env={"PONYBUNNY_HOME": str(tmp_path / "no" / "home")})
    assert result.code == 1
    assert "parent directory does not exist" in one_line_error(result.err)


@pytest.mark.parametrize(
    ("var", "command"),
    [("PONYBUNNY_HOME", ("scheduler", "status")), ("PONYBUNNY_DB", ("job", "list"))],
)
def test_a_tilde_of_no_user_is_one_line(
    pb: Pb, tmp_path: Path, var: str, command: tuple[str, ...]
) -> None:
    """'~nosuchuser/x' was a traceback (pathlib's RuntimeError), then briefly a directory
    named '~nosuchuser' under the working directory: refused, nothing made."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pony_scheduler", *command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**pb.env, var: "~pony-no-such-user/x"},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "no user named 'pony-no-such-user'" in one_line_error(result.stderr)
    assert list(cwd.iterdir()) == []


def test_home_is_a_file(pb: Pb, tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    result = pb("scheduler", "start", env={"PONYBUNNY_HOME": str(file)})
    assert result.code == 1 and "not a directory" in result.err


def test_unwritable_home(pb: Pb) -> None:
    # /proc/self is not writable, even for root.
    result = pb("scheduler", "start", env={"PONYBUNNY_HOME": "/proc/1/pony"})
    assert result.code == 1 and "cannot create home" in result.err


def test_unwritable_existing_home(pb: Pb, home: Path) -> None:
    read_only_available()
    result = pb_read_only(pb, "scheduler", "start")
    assert result.code == 1
    assert one_line_error(result.err) == (
        f"Error: home {home} is not writable: read-only "
        "file system; fix its permissions or set "
        "PONYBUNNY_HOME"
    )


def test_a_read_only_home_still_serves_read_only_commands(pb: Pb, home: Path) -> None:
    """A home on a read-only mount (root ignores file modes, not that): what only reads
    works, with the daemon running elsewhere or not; what writes says why in one line."""
    read_only_available()
    assert pb("scheduler", "start").code == 0
    assert pb("job", "add", "a", "--manual", "--", "echo", "out").code == 0
    assert pb("job", "run", "a").code == 0
    assert wait_for(lambda: '"succeeded"' in pb("runs", "--json").out, 30)
    for running in (True, False):
        if not running:
            assert pb("scheduler", "stop").code == 0
        for args, expected in (
            (("scheduler", "status"), "Running" if running else "Not running"),
            (("job", "list"), "a "),
            (("job", "show", "a"), "echo out"),
            (("runs",), "succeeded"),
            (("runs", "output", "1"), "out"),
            (("config", "show"), "workers"),
            (("scheduler", "logs", "-n", "1"), "Scheduler"),
        ):
            result = pb_read_only(pb, *args)
            assert result.code == (0 if running or args[1:] != ("status",) else 3), (
                args,
                result.all,
            )
            assert expected in result.out, (args, result.all)
        for args, words in (
            (
                ("job", "add", "b", "--manual", "--", "true"),
                "Error: database error: attempt to write a readonly database",
            ),
            (("debug", "url"), "the dashboard is not running"),
            (("scheduler", "start"), "read-only file system"),
        ):
            result = pb_read_only(pb, *args)
            assert result.code != 0 and words in one_line_error(result.err), (args, result.all)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("workers = 100000000000\n", "workers must be a number of workers from 1 to 1024"),
        (
            "workers = true\n",
            "workers must be a number of workers (a whole number from 1 to 1024), not true",
        ),
        ("workers = 2.5\n", "not 2.5"),
        ("gateway_port = true\n", "gateway_port must be a TCP port"),
        ("shutdown_grace = 1e9\n", "at most 86400 seconds"),
        ("shutdown_grace = false\n", "shutdown_grace must be a positive number"),
        ('allowed_hosts = ["*"]\n', "'*' is not a host name"),
        ('anonymous_read = "maybe"\n', "anonymous_read must be true or false"),
        ('debug_host = "a\\u001bb"\n', "must not contain control characters"),
        # Numbers are TOML numbers in the file (the environment has only strings).
        (
            'workers = "4"\n',
            "config.toml:1: workers = '4' is a string, and workers is a number; "
            "write it without quotes (workers = 4)",
        ),
        ('gateway_port = "28918"\n', "gateway_port = '28918' is a string"),
        ('lease = "30"\n', "lease = '30' is a string"),
        ("lease = 0\n", "lease must be from 10 seconds to 1 hour, not 0"),
        ("lease = nan\n", "lease must be from 10 seconds to 1 hour, not nan"),
        ("lease = true\n", "lease must be a positive number of seconds or a duration"),
        ('lease = "\u0666\u0660"\n', "lease must be a positive number of seconds"),
    ],
)
def test_settings_out_of_range(pb: Pb, home: Path, text: str, expected: str) -> None:
    (home / "config.toml").write_text(text)
    for args in (("config", "show"), ("scheduler", "start"), ("service", "start")):
        result = pb(*args)
        assert result.code == 2, (args, result.all)
        assert expected in one_line_error(result.err) and result.err.count("\n") == 1
    assert not (home / "scheduler.pid").exists()


def test_numbers_from_the_environment_are_strings_and_fine(pb: Pb, home: Path) -> None:
    (home / "config.toml").write_text('shutdown_grace = "2m"\n')  # a duration, not a number
    shown = pb("config", "show", env={"PONYBUNNY_WORKERS": "4", "PONYBUNNY_LEASE": "30"})
    assert shown.code == 0, shown.all


@pytest.mark.parametrize(
    "args, expected",
    [
        (["scheduler", "start", "--timeout", "1e300"], "more than 86400 seconds"),
        (["scheduler", "stop", "--timeout", "1e300"], "more than 86400 seconds"),
        (["scheduler", "start", "--workers", "100000000000"], "1<=x<=1024"),
        (["scheduler", "logs", "-n", "100000000000000000000"], "0<=x<=1000000"),
        (["service", "start", "--timeout", "86401"], "more than 86400 seconds"),
    ],
)
def test_service_numbers_out_of_range(pb: Pb, home: Path, args: list[str], expected: str) -> None:
    result = pb(*args)
    assert result.code == 2 and expected in result.err, result.all
    assert result.err.count("\n") == 1
    assert not (home / "scheduler.pid").exists()


def test_environment_out_of_range(pb: Pb, home: Path) -> None:
    result = pb("scheduler", "start", env={"PONYBUNNY_WORKERS": "100000000000"})
    assert result.code == 2 and "PONYBUNNY_WORKERS must be a number of workers" in result.err


def test_config_that_is_not_utf8(pb: Pb, home: Path) -> None:
    config = home / "config.toml"
    config.write_bytes(b"workers = 4\n# caf\xe9\n")
    for args in (("config", "show"), ("scheduler", "start"), ("scheduler", "status")):
        result = pb(*args)
        assert result.code == 2
        assert one_line_error(result.err) == (
            f"Error: {config}: not UTF-8 text (byte 0xe9 at offset 17); save it as UTF-8"
        )


def test_pid_file_that_is_a_directory(pb: Pb, home: Path) -> None:
    (home / "scheduler.pid").mkdir()
    result = pb("scheduler", "start")
    assert result.code == 1
    assert one_line_error(result.err) == (
        f"Error: {home}/scheduler.pid is a directory, not a file; remove it (rmdir "
        f"{home}/scheduler.pid)"
    )
    status = pb("scheduler", "status")
    assert status.code == 4 and "rmdir" in status.err
    assert pb("scheduler", "stop").code == 1


def test_a_corrupt_database(pb: Pb, home: Path) -> None:
    """At start: one line and exit 1.  Under a running scheduler: logged loudly, and the
    scheduler stops in order (exit status 1); the CLI says so in one line."""
    db = home / "pony.db"
    db.touch(mode=0o600)
    db.write_bytes(b"this is not an SQLite database, not at all" * 200)
    result = pb("scheduler", "start")
    assert result.code == 1
    assert one_line_error(result.err).startswith(
        f"✗ Scheduler failed to start: database sqlite:///{db} is corrupt (file is not a "
        "database); restore it from a backup"
    )
    db.unlink()
    assert pb("scheduler", "start").code == 0
    pid = pb.pid()
    assert pb("job", "add", "a", "--every", "1h", "--", "true").code == 0
    for name in ("pony.db", "pony.db-wal"):
        with contextlib.suppress(FileNotFoundError), open(home / name, "r+b") as handle:
            handle.write(b"garbage!" * 4096)  # garbage over the file and its log
    assert wait_dead(pid, 30)
    log = (home / "scheduler.log").read_text()
    assert f"CRITICAL pony_scheduler[{pid}]: database sqlite:///{db} is corrupt" in log
    assert "Scheduler stopped (exit status 1)" in log
    result = pb("job", "list")
    assert result.code == 1 and one_line_error(result.err).startswith(
        f"Error: database sqlite:///{db} is corrupt"
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--retries", "9223372036854775808"], "--retries must be from 0 to 10,000"),
        (["--retries", "2147483648"], "--retries must be from 0 to 10,000"),
        (["--retries", "-1"], "--retries must be from 0 to 10,000"),
        (["--max-queued", "0"], "--max-queued must be from 1 to 10,000"),
        (["--tasks-max", "1_0"], "'1_0' is not a whole number"),  # int() would take them
        (["--cpu-max", "1_000"], "'1_000' is not a number of CPUs"),  # float() would too
        (["--cpu-max", "1e2"], "'1e2' is not a number of CPUs"),
        (["--memory-max", "\u0663G"], "is not a size such as 512M"),
        (["--retries", " 5"], "' 5' is not a whole number"),
        (["--max-queued", "\u0663"], "is not a whole number"),
        (["--umask", "1000"], "not an octal mask from 000 to 777"),
        (["--umask", "08"], "not an octal mask from 000 to 777"),
        (["--umask", ""], "not an octal mask from 000 to 777"),
        (["--start-deadline", "soon"], "invalid --start-deadline 'soon'"),
        (["--start-deadline", "0"], "--start-deadline must be greater than zero"),
        (
            ["--env", "PONYBUNNY_OCCURRENCE=fake"],
            "--env PONYBUNNY_OCCURRENCE: PONYBUNNY_* variables are set by the scheduler",
        ),
    ],
)
def test_bad_job_numbers_change_nothing(pb: Pb, args: list[str], expected: str) -> None:
    """Every integer option has a range, the same on SQLite and PostgreSQL."""
    result = pb("job", "add", "x", "--every", "1h", *args, "--", "true")
    assert result.code != 0 and result.err.count("\n") == 1, result.all
    assert expected in result.err
    assert pb("job", "list").out.startswith("No jobs yet")
    pb("job", "add", "y", "--every", "1h", "--", "true", check=True)
    edit = pb("job", "edit", "y", *args)
    assert edit.code != 0 and expected in edit.err


def test_a_database_overwritten_under_a_quiet_scheduler_stops_it(pb: Pb, home: Path) -> None:
    """Nothing asks the database anything new (no change, no due job): the scheduler still
    notices, at its next heartbeat, a file that no longer is an SQLite database."""
    assert pb("job", "add", "later", "--every", "1h", "--", "true").code == 0
    assert pb("scheduler", "start").code == 0
    pid = pb.pid()
    for name in ("pony.db", "pony.db-wal"):
        if (home / name).exists():
            with open(home / name, "r+b") as handle:
                handle.write(os.urandom(65536))
    assert wait_dead(pid, 60)
    log = (home / "scheduler.log").read_text()
    db = home / "pony.db"
    assert f"CRITICAL pony_scheduler[{pid}]: database sqlite:///{db} is corrupt" in log
    assert "Scheduler stopped (exit status 1)" in log


def test_job_help_shows_the_ranges_of_integer_options(pb: Pb) -> None:
    """The same ranges as pb-job(1) and the checks (pony_scheduler/jobs.py)."""
    shown = " ".join(pb("job", "add", "--help", check=True).out.split())
    for option, words in (
        ("--retries", "0 to 10,000"),
        ("--max-queued", "1 to 10,000"),
        ("--tasks-max", "1 to 4,194,304"),
    ):
        assert words in shown.split(f"{option} N", 1)[1][:120], (option, shown)


@pytest.mark.parametrize(
    "args",
    [
        ("runs", "kill", "99999999999999999999999"),
        ("runs", "show", "9223372036854775808"),
        ("runs", "output", "0"),
        ("runs", "-n", "99999999999999999999"),
    ],
)
def test_numbers_beyond_any_run_are_refused_not_overflowed(pb: Pb, args: tuple[str, ...]) -> None:
    """A run id or count past 64 bits is refused by the parser, not by the driver's
    OverflowError (review finding: a traceback)."""
    pb("job", "add", "a", "--manual", "--", "true", check=True)
    result = pb(*args)
    assert result.code == 2 and result.err.count("\n") == 1, result.all
    assert "is not in the range" in result.err and "Traceback" not in result.all


@pytest.mark.parametrize("command", [[""], ["  "]])
def test_an_empty_program_is_refused(pb: Pb, command: list[str]) -> None:
    """`-- ''` was stored, and its first run stopped the scheduler at every start
    (review finding): add and edit refuse it with one line and change nothing."""
    added = pb("job", "add", "e", "--manual", "--", *command)
    assert added.code == 2 and added.err.count("\n") == 1, added.all
    assert "the command's program is empty" in added.err
    pb("job", "add", "ok", "--manual", "--", "true", check=True)
    edited = pb("job", "edit", "ok", "--", *command)
    assert edited.code == 2 and "the command's program is empty" in edited.err, edited.all
    assert json.loads(pb("job", "show", "ok", "--json").out)["command"] == ["true"]


@pytest.mark.parametrize("command", ["", " \t "])
def test_an_empty_shell_command_is_refused(pb: Pb, command: str) -> None:
    """`--shell -- ''` was stored (review finding), though a missing command is exit 2."""
    added = pb("job", "add", "e", "--manual", "--shell", "--", command)
    assert added.code == 2 and added.err.count("\n") == 1, added.all
    assert "the shell command is empty" in added.err
    assert pb("job", "show", "e").code != 0
    pb("job", "add", "ok", "--manual", "--shell", "--", "true", check=True)
    edited = pb("job", "edit", "ok", "--shell", "--", command)
    assert edited.code == 2 and "the shell command is empty" in edited.err, edited.all
    assert json.loads(pb("job", "show", "ok", "--json").out)["command"] == ["true"]


def test_a_stored_job_no_run_can_start_from_fails_its_run_not_the_scheduler(
    pb: Pb, home: Path
) -> None:
    """A job an older pb stored with an empty program: its run fails with the reason,
    and the scheduler goes on running other jobs."""
    from sqlalchemy import text

    from pony_scheduler.store import Store

    pb("job", "add", "bad", "--manual", "--", "true", check=True)
    pb("job", "add", "good", "--manual", "--", "true", check=True)
    store = Store.open(f"sqlite:///{home / 'pony.db'}", upgrade=False)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE jobs SET command = '[\"\"]' WHERE name = 'bad'"))
    store.close()
    pb("scheduler", "start", check=True)
    failed = pb("job", "run", "bad", "--wait", timeout=120)
    assert failed.code != 0 and "cannot be started" in failed.all, failed.all
    assert pb("job", "run", "good", "--wait", timeout=120).code == 0
    assert pb("scheduler", "status").code == 0


def test_paths_that_are_not_utf8_are_refused_in_one_line(pb: Pb, tmp_path: Path) -> None:
    """--cwd / --env-file naming a directory whose name is not UTF-8 ended in a traceback
    from the database driver (review finding); argv and --env values keep such bytes."""
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/d\xff"))
    odd.mkdir()
    (odd / "e.env").write_text("A=1\n")
    (odd / "e.env").chmod(0o600)
    pb("job", "add", "ok", "--manual", "--", "true", check=True)
    for args in (
        ("job", "add", "c", "--manual", "--cwd", str(odd), "--", "true"),
        ("job", "add", "e", "--manual", "--env-file", str(odd / "e.env"), "--", "true"),
        ("job", "edit", "ok", "--cwd", str(odd)),
    ):
        result = pb(*args)
        assert result.code == 2 and result.err.count("\n") == 1, result.all
        assert "the path is not UTF-8" in result.err and "\\xff" in result.err
    assert json.loads(pb("job", "show", "ok", "--json").out)["cwd"] is None
    assert pb("job", "show", "c").code != 0


@pytest.mark.parametrize("service", ["gateway", "debug"])
@pytest.mark.parametrize("host", ["256.1.1.1", "not a host", "bad.invalid", "192.0.2.1"])
def test_a_host_that_does_not_resolve_is_refused_before_anything_starts(
    pb: Pb, home: Path, service: str, host: str
) -> None:
    """It failed in the daemon (exit 1, a dozen lines with the log's tail) after the
    gateway had made its token files (review finding)."""
    before = sorted(p.name for p in home.iterdir()) if home.exists() else []
    result = pb(service, "start", "--host", host)
    assert result.code == 2 and result.err.count("\n") == 1, result.all
    assert f"--host {host!r}: not an address or a name this host resolves" in result.err or (
        f"--host {host!r}: no address of this host" in result.err  # TEST-NET-1, RFC 5737
    )
    assert (sorted(p.name for p in home.iterdir()) if home.exists() else []) == before
    assert pb(service, "status").code == 3


def test_names_and_settings_that_are_not_utf8_are_one_line(pb: Pb, tmp_path: Path) -> None:
    """A job name argument, the home or --db with bytes that are not UTF-8 ended in the
    driver's traceback, or in a message about control characters (review findings)."""
    name = os.fsdecode(b"n\xff")
    for args in (("runs", name), ("job", "show", name), ("job", "remove", name), ("audit", name)):
        result = pb(*args)
        assert result.code == 2 and result.err.count("\n") == 1, result.all
        assert "'n\\xff' is not UTF-8" in result.err, result.all
    odd = os.fsdecode(bytes(tmp_path) + b"/x\xff")
    result = pb("runs", "--db", f"{odd}.db")
    assert result.code == 2 and "--db '" in result.err and "\\xff.db' is not UTF-8" in result.err
    for args in (("runs",), ("scheduler", "start")):
        result = pb(*args, env={"PONYBUNNY_HOME": odd})
        assert result.code == 2 and result.err.count("\n") == 1, result.all
        assert "the home (PONYBUNNY_HOME)" in result.err
    assert [p.name for p in tmp_path.iterdir()] == ["home"]  # no odd home was made
