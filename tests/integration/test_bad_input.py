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
