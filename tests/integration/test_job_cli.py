"""`pb job` / `pb runs` without a daemon: definitions, listings and bad input."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import Pb


def test_add_list_show_edit_pause_resume_remove(pb: Pb, tmp_path: Path) -> None:
    add = pb(
        "job",
        "add",
        "backup",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Berlin",
        "--timeout",
        "1h",
        "--retries",
        "2",
        "--retry-delay",
        "30s",
        "--overlap",
        "queue",
        "--catch-up",
        "all",
        "--cwd",
        str(tmp_path),
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--",
        "/usr/bin/env",
        "-i",
    )
    assert add.code == 0, add.all
    assert "✓ Job backup added; next run:" in add.out
    listing = pb("job", "list")
    assert "backup" in listing.out and "cron '0 3 * * *' (Europe/Berlin)" in listing.out
    data = json.loads(pb("job", "list", "--json").out)[0]
    assert data["command"] == ["/usr/bin/env", "-i"] and data["env"] == {"A": "1", "B": "x=y"}
    assert data["timeout_s"] == 3600 and data["retries"] == 2 and data["overlap"] == "queue"
    assert data["catch_up"] == "all" and data["cwd"] == str(tmp_path) and data["enabled"]
    assert data["next_run_at"].endswith(("01:00:00+00:00", "02:00:00+00:00"))
    shown = pb("job", "show", "backup")
    assert "Schedule:       cron '0 3 * * *' (Europe/Berlin)" in shown.out
    assert pb("job", "edit", "backup", "--every", "5m").code == 0
    assert json.loads(pb("job", "show", "backup", "--json").out)["schedule"] == "every 5m"
    assert pb("job", "pause", "backup").code == 0
    paused = json.loads(pb("job", "show", "backup", "--json").out)
    assert paused["enabled"] is False and paused["next_run_at"] is None
    assert "paused" in pb("job", "list").out
    assert pb("job", "resume", "backup").code == 0
    assert json.loads(pb("job", "show", "backup", "--json").out)["next_run_at"]
    run = pb("job", "run", "backup")
    assert run.code == 0 and "queued" in run.out
    assert json.loads(pb("runs", "backup", "--json").out)[0]["state"] == "queued"
    assert pb("job", "remove", "backup").code == 0
    assert pb("job", "list").out.startswith("No jobs yet")


def test_shell_and_one_shot(pb: Pb) -> None:
    assert pb("job", "add", "s", "--at", "+1h", "--shell", "--", "echo a | tr a b").code == 0
    job = json.loads(pb("job", "show", "s", "--json").out)
    assert job["shell"] and job["command"] == ["echo a | tr a b"]
    assert job["schedule"].startswith("at ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["x", "--cron", "61 * * * *", "--", "true"], "minute field"),
        (["x", "--cron", "* * * *", "--", "true"], "cron"),
        (["x", "--cron", "0 3 * * *", "--tz", "Mars/Base", "--", "true"], "unknown time zone"),
        (["x", "--every", "soon", "--", "true"], "interval"),
        (["x", "--every", "0s", "--", "true"], "interval"),
        (["x", "--at", "yesterday-ish", "--", "true"], "invalid time"),
        (["x", "--at", "2001-01-01 00:00", "--", "true"], "past"),
        (["x", "--every", "1h"], "missing command"),
        (["x", "--", "true"], "missing schedule"),
        (["x", "--every", "1h", "--cron", "@daily", "--", "true"], "choose one schedule"),
        (["bad name!", "--every", "1h", "--", "true"], "job name"),
        (["x", "--every", "1h", "--cwd", "/no/such/dir", "--", "true"], "no such directory"),
        (["x", "--every", "1h", "--cwd", "/etc/passwd", "--", "true"], "is not a directory"),
        (["x", "--every", "1h", "--env", "NOEQUALS", "--", "true"], "NAME=VALUE"),
        (["x", "--every", "1h", "--timeout", "forever", "--", "true"], "--timeout"),
        (["x", "--every", "1h", "--overlap", "maybe", "--", "true"], "maybe"),
        (["x", "--every", "1h", "--retries", "-1", "--", "true"], "--retries"),
    ],
)
def test_bad_job_input(pb: Pb, args: list[str], message: str) -> None:
    result = pb("job", "add", *args)
    assert result.code != 0
    assert result.err.count("\n") == 1, result.err  # one line
    assert message.lower() in result.err.lower(), result.err
    assert pb("job", "list").out.startswith("No jobs yet")


def test_duplicates_and_unknowns(pb: Pb) -> None:
    assert pb("job", "add", "one", "--manual", "--", "true").code == 0
    again = pb("job", "add", "one", "--manual", "--", "true")
    assert again.code == 1 and "already exists" in again.err
    for args in (
        ["job", "show", "nope"],
        ["job", "remove", "nope"],
        ["job", "run", "nope"],
        ["job", "pause", "nope"],
        ["job", "resume", "nope"],
        ["job", "edit", "nope", "--every", "1h"],
        ["runs", "nope"],
    ):
        result = pb(*args)
        assert result.code == 1 and "no job named 'nope'" in result.err, (args, result.all)
    for args in (["runs", "show", "999"], ["runs", "output", "999"]):
        result = pb(*args)
        assert result.code == 1 and "no run with id 999" in result.err
    bad_id = pb("runs", "show", "abc")
    assert bad_id.code == 2 and bad_id.err.count("\n") == 1


def test_db_option_reaches_another_database(pb: Pb, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    # A named database that does not exist is a typo for any command but add (review
    # finding: `pb job list --db typo.db` made an empty database and said "No jobs yet").
    for args in (("job", "list"), ("runs",), ("job", "show", "x"), ("audit",)):
        typo = pb(*args, "--db", str(other))
        assert typo.code == 2 and typo.err.count("\n") == 1, typo.all
        assert f"no database at {other} (set by --db)" in typo.err, typo.all
        assert not other.exists()
    elsewhere = pb("job", "list", env={"PONYBUNNY_DB": str(other)})
    assert "(set by PONYBUNNY_DB)" in elsewhere.err and not other.exists()
    assert pb("job", "add", "elsewhere", "--manual", "--db", str(other), "--", "true").code == 0
    assert "elsewhere" in pb("job", "list", "--db", str(other)).out
    assert "elsewhere" not in pb("job", "list").out
    assert pb("runs", "--db", str(other)).out.strip() == "No runs yet"


def test_a_missing_database_is_refused_before_the_home_exists(pb: Pb, tmp_path: Path) -> None:
    """The home not made yet was a way round the refusal above: the home was made, then
    the mistyped file in it (review finding)."""
    fresh = tmp_path / "fresh"
    typo, elsewhere = fresh / "typo.db", tmp_path / "gone" / "typo.db"
    for db in (typo, elsewhere):
        for args, env in (
            (("job", "list", "--db", str(db)), {}),
            (("job", "show", "nosuch", "--db", str(db)), {}),
            (("runs",), {"PONYBUNNY_DB": str(db)}),
        ):
            result = pb(*args, env={"PONYBUNNY_HOME": str(fresh), **env})
            assert result.code == 2 and result.err.count("\n") == 1, (args, result.all)
            assert f"no database at {db} (set by " in result.err, (args, result.all)
            assert not db.exists() and not fresh.exists(), (args, result.all)
    # pb job add still makes it, and the home with it.
    made = pb(
        "job",
        "add",
        "j",
        "--manual",
        "--db",
        str(typo),
        "--",
        "true",
        env={"PONYBUNNY_HOME": str(fresh)},
    )
    assert made.code == 0 and typo.exists(), made.all


def test_show_gives_the_limits_and_leftovers_policy(pb: Pb) -> None:
    """What --leftovers and the limits were set to, without --json (review finding)."""
    pb("job", "add", "plain", "--manual", "--leftovers", "keep", "--", "true", check=True)
    limits = ("--memory-max", "50M", "--cpu-max", "50%", "--tasks-max", "10")
    pb("job", "add", "held", "--manual", *limits, "--", "true", check=True)
    plain = pb("job", "show", "plain", check=True).out
    assert "Leftovers:      keep\n" in plain and "Limits:         none\n" in plain
    held = pb("job", "show", "held", check=True).out
    assert "Leftovers:      kill\n" in held
    assert "Limits:         memory 50 MiB, CPUs 0.5, tasks 10\n" in held
    # Kept processes leave the run's groups and its limits (review finding): the pair is
    # refused, whichever way it would come about.
    for args in (
        ("add", "both", "--manual", "--leftovers", "keep", "--tasks-max", "5", "--", "true"),
        ("edit", "held", "--leftovers", "keep"),
        ("edit", "plain", "--memory-max", "1G"),
    ):
        refused = pb("job", *args)
        assert refused.code == 2 and refused.err.count("\n") == 1, refused.all
        assert "--leftovers keep cannot go with --" in refused.err, refused.all
    assert "Leftovers:      kill\n" in pb("job", "show", "held").out
    assert "Limits:         none\n" in pb("job", "show", "plain").out
    # A job stored with the pair before it was refused: warned of, and still editable.
    with sqlite3.connect(pb.home / "pony.db") as connection:
        connection.execute("UPDATE jobs SET leftovers = 'keep' WHERE name = 'held'")
    legacy = pb("job", "show", "held", check=True)
    assert "⚠ --leftovers keep cannot go with --memory-max" in legacy.err, legacy.all
    assert "run unlimited; 'pb job edit held --leftovers kill'" in legacy.err
    pb("job", "edit", "held", "--timeout", "1m", check=True)
    pb(
        "job",
        "edit",
        "held",
        "--leftovers",
        "keep",
        "--memory-max",
        "none",
        "--cpu-max",
        "none",
        "--tasks-max",
        "none",
        check=True,
    )
    # The largest was "memory 1.07374e+09 MiB" (review finding).
    pb("job", "add", "big", "--manual", "--memory-max", "1P", "--", "true", check=True)
    assert "Limits:         memory 1 PiB\n" in pb("job", "show", "big").out


def test_edit_can_take_back_a_timeout_the_environment_and_the_directory(
    pb: Pb, tmp_path: Path
) -> None:
    """Every option set once can be set back to its default (review finding: a timeout,
    --env and --cwd could not, and --cwd '' stored the shell's current directory)."""
    options = ("--manual", "--timeout", "2s", "--env", "A=1", "--cwd", str(tmp_path))
    pb("job", "add", "to", *options, "--", "true", check=True)
    pb("job", "edit", "to", "--timeout", "none", "--env", "", "--cwd", "none", check=True)
    shown = json.loads(pb("job", "show", "to", "--json").out)
    assert (shown["timeout_s"], shown["env"], shown["cwd"]) == (None, {}, None), shown
    for args in (("job", "edit", "to", "--cwd", ""), ("job", "add", "c", "--cwd", "", "--manual")):
        refused = pb(*args, "--", "true") if args[1] == "add" else pb(*args)
        assert refused.code == 2 and "--cwd '' names no directory" in refused.err, refused.all


@pytest.mark.parametrize(
    "args, words",
    [
        (("add", "y1", "--every", "5m", "/bin/true"), "put the command after --"),
        (("add", "y3", "--every", "5m", "echo", "hi", "--", "foo"), "'echo hi' comes before --"),
        (("add", "y2", "--every", "5m", "/bin/echo", "-n", "hi"), "if it is the command's own"),
        (("edit", "ok", "echo"), "put the command after --: pb job edit NAME"),
    ],
)
def test_the_command_is_what_follows_the_dashes(pb: Pb, args: tuple[str, ...], words: str) -> None:
    """click took words before -- into the command and dropped a later -- (review
    finding: `echo hi -- foo` was stored as `echo hi foo`)."""
    pb("job", "add", "ok", "--every", "5m", "--", "echo", "a", "--", "b", check=True)
    result = pb("job", *args)
    assert result.code == 2 and result.err.count("\n") == 1 and words in result.err, result.all
    assert [job["name"] for job in json.loads(pb("job", "list", "--json").out)] == ["ok"]
    assert json.loads(pb("job", "show", "ok", "--json").out)["command"] == ["echo", "a", "--", "b"]


def test_edit_can_take_back_every_limit(pb: Pb) -> None:
    """--tasks-max none, as --memory-max none and --cpu-max none (review finding: a tasks
    limit could only go with the job)."""
    limits = ("--memory-max", "50M", "--cpu-max", "50%", "--tasks-max", "10")
    pb("job", "add", "lim", "--manual", *limits, "--", "true", check=True)
    none = ("--memory-max", "none", "--cpu-max", "none", "--tasks-max", "none")
    pb("job", "edit", "lim", *none, check=True)
    assert "Limits:         none\n" in pb("job", "show", "lim", check=True).out
    refused = pb("job", "edit", "lim", "--tasks-max", "0")
    assert refused.code == 2 and "--tasks-max must be from 1 to 4,194,304" in refused.err


def test_a_slow_reader_of_the_whole_list_does_not_lock_the_database(pb: Pb, home: Path) -> None:
    """`pb job list --all | less`: the listing streamed from one transaction, a BEGIN
    IMMEDIATE holding SQLite's write lock (and the scheduler) for as long as its reader
    took (review finding); now each page of jobs is its own short read.  While it is
    blocked on a full pipe, jobs can be added, and no page loses or repeats a job."""
    import select
    import subprocess
    import sys

    from pony_scheduler.store import Store
    from tests.integration.test_store import job_values

    store = Store.open(f"sqlite:///{home / 'pony.db'}")
    for i in range(3000):  # far more than a pipe holds
        store.add_job(f"listed-{i:05d}", job_values())
    store.close()
    reader = subprocess.Popen(
        [sys.executable, "-m", "pony_scheduler", "job", "list", "--all"],
        env=pb.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert reader.stdout is not None
        assert select.select([reader.stdout], [], [], 120)[0]  # its transaction is open
        added = pb("job", "add", "meanwhile", "--manual", "--", "true")
        assert added.code == 0, added.all
    finally:
        out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and out.count(b"listed-") == 3000


def test_job_show_cannot_be_forged_by_a_multi_line_command_or_value(pb: Pb) -> None:
    """A newline in a command or an --env value printed a line of its own, which could pass
    for a field (review: `Enabled: no` above the real `Enabled: yes`).  Next lines of a
    value are indented under it; --raw prints them as they are."""
    forged = "true\nEnabled:        no"
    pb(
        "job",
        "add",
        "x",
        "--manual",
        "--shell",
        "--env",
        f"A=a\n{'Error:':<15} x",
        "--",
        forged,
        check=True,
    )
    lines = pb("job", "show", "x", check=True).out.splitlines()
    labels = [line.split(":")[0] for line in lines if line and not line.startswith(" ")]
    assert labels.count("Enabled") == 1 and labels.count("Error") == 1, lines
    assert "Command:        true" in lines and " " * 16 + "Enabled:        no" in lines
    assert "Enabled:        no" in pb("job", "show", "x", "--raw", check=True).out.splitlines()
    # an --env value's newline is shown as \n: folded, it looked like another variable
    pb(
        "job",
        "add",
        "y",
        "--manual",
        "--env",
        "A=1",
        "--env",
        "B=2\nLD_PRELOAD=/x",
        "--",
        "true",
        check=True,
    )
    shown = pb("job", "show", "y", check=True).out
    assert "Environment:    A=1 B=2\\nLD_PRELOAD=/x\n" in shown, shown


def test_show_writes_no_undecodable_byte_of_a_command(pb: Pb) -> None:
    """An argument with a byte that is not UTF-8 was written back as that byte by `pb job
    show`: 0x9b is CSI to a terminal in 8-bit mode, so `\\x9b2J` cleared the screen
    (review finding).  It is shown as \\x9b (--raw writes the byte)."""
    argument = os.fsdecode(b"A\x9b2JB")
    pb("job", "add", "c", "--manual", "--", "/bin/echo", argument, check=True)
    shown = pb("job", "show", "c", check=True)
    assert "Command:        /bin/echo A\\x9b2JB\n" in shown.out, shown.all
    assert "\udc9b" not in shown.out
