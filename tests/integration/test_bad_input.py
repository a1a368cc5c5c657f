"""Every bad input gets one clear line on stderr, a non-zero exit and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Pb


def one_line_error(result_err: str) -> str:
    lines = [line for line in result_err.splitlines() if line.strip()]
    assert len(lines) >= 1
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--timeout", "0"], "not a positive number"),
    (["--timeout", "-3"], "not a positive number"),
    (["--timeout", "soon"], "not a positive number"),
    (["--timeout", "inf"], "not a positive number"),
    (["--bogus"], "No such option '--bogus'"),
    (["--db", "bogus://x"], "unknown database driver"),
    (["--db", "/nonexistent/dir/pony.db"], "does not exist"),
    (["--socket", "/tmp/" + "s" * 120], "longer than the 107"),
    (["--socket", "/nonexistent/dir/g.sock"], "does not exist"),
])
def test_bad_start_flags(pb: Pb, home: Path, args: list[str], expected: str) -> None:
    result = pb("scheduler", "start", *args)
    assert result.code != 0
    assert expected in result.err
    assert result.out == ""
    assert not (home / "scheduler.pid").exists()


def test_unknown_flag_is_one_line(pb: Pb) -> None:
    result = pb("scheduler", "stop", "--nope")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "--nope" in result.err


def test_unreachable_database(pb: Pb, home: Path) -> None:
    result = pb("scheduler", "start", "--db",
                "postgresql+psycopg://postgres@127.0.0.1:1/test", "--timeout", "20")
    assert result.code == 1
    first = one_line_error(result.err)
    assert first.startswith("✗ Scheduler failed to start: cannot use database")
    assert "127.0.0.1:1" in first and "check --db" in first
    assert "Last lines of" in result.err
    assert not (home / "scheduler.pid").exists()
    assert pb("scheduler", "status").code == 3


def test_missing_parent_home(pb: Pb, tmp_path: Path) -> None:
    result = pb("scheduler", "start", env={"PONYBUNNY_HOME": str(tmp_path / "no" / "home")})
    assert result.code == 1
    assert "parent directory does not exist" in one_line_error(result.err)


def test_home_is_a_file(pb: Pb, tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    result = pb("scheduler", "start", env={"PONYBUNNY_HOME": str(file)})
    assert result.code == 1 and "not a directory" in result.err


def test_unwritable_home(pb: Pb) -> None:
    # /proc/self is not writable, even for root.
    result = pb("scheduler", "start", env={"PONYBUNNY_HOME": "/proc/1/pony"})
    assert result.code == 1 and "cannot create home" in result.err


def test_unwritable_existing_home(pb: Pb) -> None:
    result = pb("scheduler", "start", env={"PONYBUNNY_HOME": "/proc/1"})
    assert result.code == 1 and "not writable" in result.err


@pytest.mark.parametrize("args, expected", [
    (["--retries", "9223372036854775808"], "--retries must be from 0 to 10,000"),
    (["--retries", "2147483648"], "--retries must be from 0 to 10,000"),
    (["--retries", "-1"], "--retries must be from 0 to 10,000"),
    (["--max-queued", "0"], "--max-queued must be from 1 to 10,000"),
    (["--umask", "1000"], "not an octal mask from 000 to 777"),
    (["--umask", "08"], "not an octal mask from 000 to 777"),
    (["--umask", ""], "not an octal mask from 000 to 777"),
    (["--start-deadline", "soon"], "invalid --start-deadline 'soon'"),
    (["--start-deadline", "0"], "--start-deadline must be greater than zero"),
])
def test_bad_job_numbers_change_nothing(pb: Pb, args: list[str], expected: str) -> None:
    """Every integer option has a range, the same on SQLite and PostgreSQL."""
    result = pb("job", "add", "x", "--every", "1h", *args, "--", "true")
    assert result.code != 0 and result.err.count("\n") == 1, result.all
    assert expected in result.err
    assert pb("job", "list").out.startswith("No jobs yet")
    pb("job", "add", "y", "--every", "1h", "--", "true", check=True)
    edit = pb("job", "edit", "y", *args)
    assert edit.code != 0 and expected in edit.err
