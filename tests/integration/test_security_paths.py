"""Paths another local user (`pony-attacker`) can redirect: symbolic links of theirs on the
way to root's configuration file, home, database or --env-file (flipped while root runs
`pb`), directories of theirs holding root's files, and links planted where run output
is read.  Each test asserts that every attempt is refused in one line naming the path,
and that nothing ran (README, SECURITY; pony_scheduler/pathtrust.py).

The flipping attacker runs all the time the attempts run; what is asserted holds
whichever way the link points at each moment, so nothing here depends on timing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OtherUser, Pb, wait_for
from tests.integration.gateway_helpers import queued_run_id, use_free_ports
from tests.integration.test_security import marker_job, no_runs, one_line

# The other user points LINK at each TARGET in turn, atomically (symlink + rename), until
# killed; prints "flipping" once it has made the link.
FLIP = r"""
import os, sys
link, targets = sys.argv[1], sys.argv[2:]
tmp = link + ".tmp"
first = True
while True:
    for target in targets:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(target, tmp)
        os.rename(tmp, link)
        if first:
            print("flipping", flush=True)
            first = False
"""

ATTEMPTS = 12


@pytest.fixture
def victim(shared_dir: Path) -> Iterator[Pb]:
    """Root's scheduler home in a directory other users can enter, and a `pb` for it."""
    home = shared_dir / "victim"
    home.mkdir(mode=0o700)
    runner = Pb(home)
    try:
        yield runner
    finally:
        runner.cleanup()


@pytest.fixture
def sticky(shared_dir: Path) -> Path:
    """A directory like /tmp: everyone may create files in it, only owners remove them."""
    path = shared_dir / "tmp"
    path.mkdir()
    path.chmod(0o1777)
    return path


@pytest.fixture
def flipper(other_user: OtherUser) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()  # our child, by its PID
        proc.communicate(timeout=30)


def flip(user: OtherUser, started: list[subprocess.Popen[str]], link: Path, *targets: Path) -> None:
    proc = user.popen(FLIP, str(link), *map(str, targets))
    started.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "flipping", proc.stderr and proc.stderr.read()


def attackers_home(victim: Pb, other_user: OtherUser, shared_dir: Path, outside: Path) -> Path:
    """A home of the other user's, whose database holds a job that would leave `outside`
    behind (made by root here for want of pb as that user, then given to them)."""
    theirs = shared_dir / "theirs"
    maker = Pb(theirs)
    try:
        assert maker("job", "add", "evil", "--every", "1s", "--", "touch", str(outside)).code == 0
    finally:
        maker.cleanup()
    subprocess.run(["chown", "-R", f"{other_user.uid}:{other_user.gid}", str(theirs)], check=True)
    return theirs


def refused_through(result_err: str, link: Path) -> bool:
    line = one_line(result_err)
    return f"{link} is a symbolic link owned by pony-attacker, who can point it elsewhere" in line


def test_a_config_file_reached_through_their_link(
    victim: Pb,
    other_user: OtherUser,
    shared_dir: Path,
    sticky: Path,
    flipper: list[subprocess.Popen[str]],
) -> None:
    """`pb --config /tmp/x-cfglink scheduler start` while the other user flips the link
    between root's good.toml and their evil.toml (`db =` their database)."""
    outside = shared_dir / "ran"
    theirs = attackers_home(victim, other_user, shared_dir, outside)
    good = shared_dir / "good.toml"
    good.write_text(f'db = "{victim.home / "pony.db"}"\n')
    evil = sticky / "evil.toml"
    evil.write_text(f'db = "{theirs / "pony.db"}"\n')
    os.chown(evil, other_user.uid, other_user.gid)
    link = sticky / "x-cfglink"
    # Even pointing steadily at root's own file, their link is refused: they could turn it.
    link.symlink_to(good)
    os.lchown(link, other_user.uid, other_user.gid)
    for args in (("scheduler", "start"), ("job", "list"), ("config", "show")):
        result = victim("--config", str(link), *args)
        assert result.code != 0 and refused_through(result.err, link), result.all
    link.unlink()
    flip(other_user, flipper, link, good, evil)
    for attempt in range(ATTEMPTS):
        args = ("scheduler", "start") if attempt % 2 else ("job", "list")
        result = victim("--config", str(link), *args)
        assert result.code != 0 and refused_through(result.err, link), result.all
    assert not (victim.home / "scheduler.pid").exists() and not outside.exists()
    # Root's own link to the same file is fine.
    mine = shared_dir / "mine.toml"
    mine.symlink_to(good)
    assert victim("--config", str(mine), "config", "show").code == 0


def test_a_home_reached_through_their_link(
    victim: Pb,
    other_user: OtherUser,
    shared_dir: Path,
    sticky: Path,
    flipper: list[subprocess.Popen[str]],
) -> None:
    """PONYBUNNY_HOME=/tmp/link, their link to root's home, flipped to theirs: refused
    every time, for reading commands and for starting the scheduler."""
    outside = shared_dir / "ran"
    theirs = attackers_home(victim, other_user, shared_dir, outside)
    marker_job(victim, shared_dir / "mine-ran")
    link = sticky / "home-link"
    flip(other_user, flipper, link, victim.home, theirs)
    env = {"PONYBUNNY_HOME": str(link)}
    for attempt in range(ATTEMPTS):
        args = ("scheduler", "start") if attempt % 3 == 0 else ("job", "list")
        result = victim(*args, env=env)
        assert result.code != 0 and refused_through(result.err, link), result.all
        assert "evil" not in result.out
    assert not (victim.home / "scheduler.pid").exists() and not outside.exists()
    assert no_runs(victim)


def test_a_database_reached_through_their_directory_link(
    victim: Pb,
    other_user: OtherUser,
    shared_dir: Path,
    sticky: Path,
    flipper: list[subprocess.Popen[str]],
) -> None:
    outside = shared_dir / "ran"
    theirs = attackers_home(victim, other_user, shared_dir, outside)
    link = sticky / "dblink"
    flip(other_user, flipper, link, victim.home, theirs)
    db = str(link / "pony.db")
    for attempt in range(ATTEMPTS):
        args = ("scheduler", "start") if attempt % 3 == 0 else ("job", "list")
        result = victim(*args, "--db", db)
        assert result.code != 0 and refused_through(result.err, link), result.all
    assert not (victim.home / "scheduler.pid").exists() and not outside.exists()


def test_an_env_file_in_their_directory(
    victim: Pb, other_user: OtherUser, shared_dir: Path, sticky: Path
) -> None:
    """Root's --env-file in a directory the other user owns: they could replace it with
    their own variables (LD_PRELOAD, PATH), so it is refused when the job is added and
    when a run starts."""
    use_free_ports(victim)
    theirs = sticky / "their-dir"
    theirs.mkdir()
    env_file = theirs / "job.env"
    env_file.write_text("GREETING=hello\n")
    env_file.chmod(0o600)
    os.chown(theirs, other_user.uid, other_user.gid)
    result = victim("job", "add", "j", "--manual", "--env-file", str(env_file), "--", "env")
    assert result.code != 0
    assert one_line(result.err) == (
        f"Error: --env-file {theirs} belongs to pony-attacker, who could replace what is "
        f"below it; keep the --env-file in a directory owned by root"
    )
    # Added while the directory was root's; theirs by the time the run starts.
    os.chown(theirs, 0, 0)
    assert victim("job", "add", "j", "--manual", "--env-file", str(env_file), "--", "env").code == 0
    os.chown(theirs, other_user.uid, other_user.gid)
    assert victim("scheduler", "start").code == 0
    run_id = queued_run_id(victim("job", "run", "j").out)

    def ended() -> dict[str, object] | None:
        run = json.loads(victim("runs", "show", str(run_id), "--json").out)
        return run if run["state"] not in ("queued", "running") else None

    assert wait_for(ended, 60)
    run = ended()
    assert run is not None and run["state"] == "failed", run
    assert f"{theirs} belongs to pony-attacker" in str(run["reason"]), run


def test_run_output_is_read_only_below_the_runs_directory(
    victim: Pb, other_user: OtherUser, shared_dir: Path
) -> None:
    """A link planted as runs/JOB/ID.log (`ln -s /etc/shadow`), or an output path that
    leads elsewhere: `pb runs output` (and -f) prints nothing of the file."""
    use_free_ports(victim)
    secret = shared_dir / "shadow"
    secret.write_text("root:SECRET-HASH\n")
    secret.chmod(0o600)
    assert victim("scheduler", "start").code == 0
    assert victim("job", "add", "talk", "--manual", "--", "echo", "hello").code == 0
    first = queued_run_id(victim("job", "run", "talk", "--wait").err)
    assert victim("runs", "output", str(first)).out == "hello\n"
    log = victim.home / "runs" / "talk" / f"{first}.log"
    log.unlink()
    log.symlink_to(secret)
    os.lchown(log, other_user.uid, other_user.gid)
    for extra in ((), ("-f",), ("--raw",)):
        result = victim("runs", "output", str(first), *extra)
        assert result.code != 0 and "SECRET" not in result.all, result.all
        assert f"{log} is reached through a symbolic link" in one_line(result.err)
    # The runs directory itself a link: the same.
    log.unlink()
    runs = victim.home / "runs"
    runs.rename(victim.home / "runs.old")
    (shared_dir / "talk").mkdir()
    (shared_dir / "talk" / f"{first}.log").symlink_to(secret)
    runs.symlink_to(shared_dir)
    result = victim("runs", "output", str(first))
    assert result.code != 0 and "SECRET" not in result.all, result.all
    runs.unlink()
    (victim.home / "runs.old").rename(runs)
    # A path in the database that is not below HOME/runs.
    assert victim("scheduler", "stop").code == 0
    with sqlite3.connect(victim.home / "pony.db") as connection:
        connection.execute("UPDATE runs SET output_path = ? WHERE id = ?", (str(secret), first))
    connection.close()
    result = victim("runs", "output", str(first))
    assert result.code != 0 and "SECRET" not in result.all
    assert f"{secret} is not a file below {victim.home / 'runs'}" in one_line(result.err)
    assert no_runs(victim) is False  # the runs are still there, untouched
