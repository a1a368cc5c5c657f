"""files.py: the StrictModes check of a home, and creating files without following links."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pony_scheduler.files import (
    PRIVATE_MODE,
    SHARED_MODE,
    UnsafePath,
    check_directory_chain,
    check_file,
    check_home,
    create_file,
    make_home,
    open_beneath,
    read_private,
    write_atomic,
)

NOBODY = 65534  # a uid that is not ours (chown needs root)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0)  # the widest: modes must still come out exactly as asked
    try:
        yield
    finally:
        os.umask(old)


def refusal(home: Path) -> str:
    with pytest.raises(UnsafePath) as caught:
        check_home(home)
    return str(caught.value)


def test_a_fresh_or_missing_home_passes(home: Path, tmp_path: Path) -> None:
    check_home(home)
    check_home(tmp_path / "not-yet")  # /tmp above it is sticky: fine, as for OpenSSH
    (home / "scheduler.log").write_text("")
    (home / "scheduler.log").chmod(0o640)
    (home / "runs").mkdir(mode=0o700)
    check_home(home)


def test_modes_of_the_home(home: Path) -> None:
    home.chmod(0o777)
    assert refusal(home) == (f"{home} is writable by others (mode 0777); run 'chmod 700 {home}'")
    home.chmod(0o720)
    assert "writable by others (mode 0720)" in refusal(home)
    # A shared sticky directory (/tmp itself as the home) is never to be chmod'ed: the fix
    # is a directory of one's own in it (review finding: "run 'chmod 700 /tmp'").
    home.chmod(0o1777)
    assert refusal(home) == (
        f"{home} is writable by others (mode 1777); it is a shared directory (sticky, as "
        f"/tmp is) and must stay so: use one of your own in it instead (mkdir -m 700 "
        f"{home}/pony)"
    )
    home.chmod(0o755)  # readable by others is the owner's choice
    check_home(home)


def test_files_in_the_home(home: Path) -> None:
    log = home / "gateway.log"
    log.write_text("")
    log.chmod(0o666)
    assert refusal(home) == (f"{log} is writable by others (mode 0666); run 'chmod go-w {log}'")
    log.chmod(0o640)
    token = home / "gateway.token"
    token.write_text("x")
    token.chmod(0o640)
    assert refusal(home) == (
        f"{token} is accessible to others (mode 0640); run 'chmod 600 {token}'"
    )
    token.chmod(0o600)
    (home / "pony.db").write_text("")
    (home / "pony.db").chmod(0o644)  # as older versions made it: unreadable in a 0700 home
    check_home(home)
    home.chmod(0o755)  # but others may enter this one
    assert "pony.db is accessible to others (mode 0644); run 'chmod 600" in refusal(home)


@pytest.mark.parametrize(
    "name",
    [
        "scheduler.log",
        "pony.db",
        "gateway.token",
        "runs",
        "config.toml",
        "debug.pid",
        "gateway.sock",
        "keeper.pid",
        "keeper.json",
        "keeper.sock",
        "keeper.journal",
        "keeper.log",
        ".keeper.start.lock",
    ],
)
def test_links_at_our_names_are_refused(home: Path, tmp_path: Path, name: str) -> None:
    (home / name).symlink_to(tmp_path)
    message = refusal(home)
    assert message.startswith(f"{home / name} is a symbolic link")
    assert f"rm {home / name}" in message


def test_links_elsewhere_in_the_home_are_left_alone(home: Path, tmp_path: Path) -> None:
    (home / "notes").symlink_to(tmp_path)  # not ours: never opened by us
    check_home(home)


def test_wrong_kinds(home: Path) -> None:
    (home / "scheduler.pid").mkdir()
    assert refusal(home) == (
        f"{home}/scheduler.pid is a directory, not a file; remove it (rmdir {home}/scheduler.pid)"
    )
    (home / "scheduler.pid").rmdir()
    (home / "runs").write_text("")
    assert refusal(home) == f"{home}/runs is a file, not a directory; remove it (rm {home}/runs)"
    (home / "runs").unlink()
    os.mkfifo(home / "gateway.log")
    assert refusal(home) == (
        f"{home}/gateway.log is a FIFO (named pipe), not a file; remove it (rm {home}/gateway.log)"
    )


def test_each_job_directory_in_runs_is_checked(home: Path, tmp_path: Path) -> None:
    runs = home / "runs"
    runs.mkdir(mode=0o700)
    job = runs / "job"
    job.mkdir(mode=0o700)
    (job / "1.log").write_text("")  # output files are checked when opened, not here
    (job / "1.log").chmod(0o666)
    check_home(home)
    job.chmod(0o777)  # chmod: the umask would hide it
    assert refusal(home) == f"{job} is writable by others (mode 0777); run 'chmod go-w {job}'"
    job.chmod(0o700)
    (runs / "linked").symlink_to(tmp_path, target_is_directory=True)
    assert refusal(home).startswith(f"{runs}/linked is a symbolic link")
    (runs / "linked").unlink()
    (runs / "results.csv").write_text("")  # a job wrote it: no output goes through it
    check_home(home)
    if os.geteuid() == 0:
        os.chown(job, NOBODY, NOBODY)
        assert refusal(home).startswith(f"{job} belongs to nobody, not to root")


def test_a_link_of_another_user_at_any_name_is_refused(home: Path, tmp_path: Path) -> None:
    need_root()
    (home / "notes").symlink_to(tmp_path)
    os.lchown(home / "notes", NOBODY, NOBODY)
    assert refusal(home) == (
        f"{home}/notes is a symbolic link that belongs to nobody, not to root; "
        f"remove it (rm {home}/notes)"
    )


def test_owners(home: Path, tmp_path: Path) -> None:
    need_root()
    other = home / "config.toml"
    other.write_text("")
    os.chown(other, NOBODY, NOBODY)
    assert "config.toml belongs to" in refusal(home)
    other.unlink()
    os.chown(home, NOBODY, NOBODY)
    message = refusal(home)
    # Not "chown -R": that would adopt what was planted in it.
    assert message.startswith(f"{home} belongs to nobody, not to root, so it is not ours")
    assert "chown" not in message and f"mv {home} {home}.untrusted" in message
    os.chown(home, 0, 0)
    # A directory above the home that another user owns could swap the home.
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, NOBODY, NOBODY)
    with pytest.raises(
        UnsafePath,
        match=f"^{parent} belongs to nobody, who could replace "
        "what is below it; keep the home .PONYBUNNY_HOME. in a directory "
        "owned by root$",
    ):
        check_home(parent / "home")


def test_directories_above(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePath, match="without the sticky bit"):
        check_home(shared / "home")
    shared.chmod(0o1777)  # like /tmp
    check_home(shared / "home")
    check_directory_chain(shared)


def test_check_file(tmp_path: Path) -> None:
    config = tmp_path / "pony.toml"
    config.write_text("")
    config.chmod(0o644)
    check_file(config)
    config.chmod(0o664)
    with pytest.raises(UnsafePath, match="writable by others"):
        check_file(config)
    with pytest.raises(FileNotFoundError):
        check_file(tmp_path / "missing.toml")


# -- creating -------------------------------------------------------------------------------------
@pytest.mark.usefixtures("umask")
def test_create_file_gives_exact_modes(home: Path) -> None:
    for name, mode in (("a.log", SHARED_MODE), ("db", PRIVATE_MODE)):
        os.close(create_file(home, name, mode))
        assert stat.S_IMODE((home / name).stat().st_mode) == mode
    os.close(create_file(home, "runs/job/1.log", SHARED_MODE, make_dirs=True))
    assert stat.S_IMODE((home / "runs").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "runs/job").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "runs/job/1.log").stat().st_mode) == SHARED_MODE


def test_create_file_is_exclusive(home: Path) -> None:
    os.close(create_file(home, "once", SHARED_MODE))
    with pytest.raises(FileExistsError):
        create_file(home, "once", SHARED_MODE)


@pytest.mark.parametrize("relative", ["runs/job/1.log", "runs/job/2.log", "runs/x/1.log"])
def test_no_link_is_followed_in_any_component(home: Path, tmp_path: Path, relative: str) -> None:
    """A planted link as the file, as the job's directory, or as runs/ itself: refused,
    and the file it points to is left as it was."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "precious"
    victim.write_text("precious\n")
    (home / "runs").mkdir()
    if relative == "runs/job/1.log":
        (home / "runs/job").mkdir()
        (home / "runs/job/1.log").symlink_to(victim)
    elif relative == "runs/job/2.log":
        (home / "runs/job").symlink_to(outside)
        relative = "runs/job/precious"
    else:
        (home / "runs").rmdir()
        (home / "runs").symlink_to(outside)
        relative = "runs/precious"
    for options in ({}, {"append": True}, {"make_dirs": True}):
        with pytest.raises(UnsafePath, match="symbolic link"):
            create_file(home, relative, SHARED_MODE, **options)  # type: ignore[arg-type]
    with pytest.raises(UnsafePath):
        open_beneath(home, relative, os.O_RDONLY)
    assert victim.read_text() == "precious\n"


def test_appending_checks_the_existing_file(home: Path) -> None:
    log = home / "x.log"
    log.write_text("old\n")
    log.chmod(0o666)
    with pytest.raises(UnsafePath, match="writable by others"):
        create_file(home, "x.log", SHARED_MODE, append=True)
    log.chmod(0o640)
    os.link(log, home / "other-name")
    with pytest.raises(UnsafePath, match="2 hard links"):
        create_file(home, "x.log", SHARED_MODE, append=True)
    (home / "other-name").unlink()
    fd = create_file(home, "x.log", SHARED_MODE, append=True)
    os.write(fd, b"new\n")
    os.close(fd)
    assert log.read_text() == "old\nnew\n"


def test_paths_must_stay_below(home: Path) -> None:
    for relative in ("/etc/passwd", "../x", "runs/../../x", ""):
        with pytest.raises(ValueError):
            open_beneath(home, relative, os.O_RDONLY)


@pytest.mark.usefixtures("umask")
def test_write_atomic_replaces_a_link_and_never_writes_through_it(
    home: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "precious"
    victim.write_text("precious\n")
    (home / "scheduler.json").symlink_to(victim)
    write_atomic(home, "scheduler.json", b"{}\n", SHARED_MODE)
    assert victim.read_text() == "precious\n"
    assert not (home / "scheduler.json").is_symlink()
    assert (home / "scheduler.json").read_bytes() == b"{}\n"
    assert stat.S_IMODE((home / "scheduler.json").stat().st_mode) == SHARED_MODE
    assert sorted(p.name for p in home.iterdir()) == ["scheduler.json"]  # no temporary left


def test_read_private(home: Path, tmp_path: Path) -> None:
    token = home / "gateway.token"
    token.write_text("secret\n")
    token.chmod(0o644)
    with pytest.raises(UnsafePath, match="chmod 600"):
        read_private(home, "gateway.token")
    token.chmod(0o600)
    assert read_private(home, "gateway.token") == b"secret\n"
    token.unlink()
    token.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="symbolic link"):
        read_private(home, "gateway.token")


@pytest.mark.usefixtures("umask")
def test_make_home(tmp_path: Path) -> None:
    home = tmp_path / "new"
    assert make_home(home) is True
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert make_home(home) is False


def test_a_pid_file_that_cannot_be_written_says_why_and_is_not_left_empty(
    tmp_path: Path,
) -> None:
    """lockfile raises LockFailed("failed to create PATH") from the OSError of its write
    (a full disk) and leaves the file empty; the start said only "LockFailed" and status
    then reported a stale pid file (review finding)."""
    import errno

    from lockfile import LockFailed

    from pony_scheduler.lifecycle.daemonize import _pid_file_failed

    path = tmp_path / "scheduler.pid"
    path.touch()
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise LockFailed(f"failed to create {path}")  # noqa: B904 (as lockfile does)
    except LockFailed as error:
        failed = _pid_file_failed(path, error)
    assert str(failed) == f"cannot write the pid file {path}: No space left on device"
    assert not path.exists()
    path.write_text("123\n")  # not empty: another's, left alone
    assert "failed to create" in str(_pid_file_failed(path, LockFailed("failed to create x")))
    assert path.read_text() == "123\n"


def test_job_directories_of_another_database_are_checked_too(home: Path, tmp_path: Path) -> None:
    """runs/.db-KEY/ holds the job directories of a database other than pony.db: a link
    or an unsafe directory there is refused as it is one level up (review finding: `pb
    job remove` deleted files through a link planted there)."""
    other = home / "runs" / ".db-0123456789abcdef"
    other.mkdir(parents=True, mode=0o700)
    (home / "runs").chmod(0o700)
    (other / "job").mkdir(mode=0o700)
    (other / "notes.txt").write_text("")  # a file a job wrote: left alone
    check_home(home)
    (other / "linked").symlink_to(tmp_path, target_is_directory=True)
    assert refusal(home).startswith(f"{other}/linked is a symbolic link")
    (other / "linked").unlink()
    (other / "job").chmod(0o777)
    assert refusal(home) == (
        f"{other}/job is writable by others (mode 0777); run 'chmod go-w {other}/job'"
    )


def test_an_output_file_is_removed_never_through_a_link(home: Path, tmp_path: Path) -> None:
    """Only run N's own file, DIRECTORY/JOB/N.log of this home and database, never
    through a link (review findings: a link at runs/.db-KEY/JOB, and paths forged in the
    database, made pb job remove delete files outside the home, another job's, another
    database's; a NUL gave a traceback at every start)."""
    from pony_scheduler.files import unlink_output

    runs = home / "runs"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "1.log").write_text("precious")
    other = runs / ".db-0123456789abcdef"
    other.mkdir(parents=True)
    (other / "a").symlink_to(victim, target_is_directory=True)
    with pytest.raises(UnsafePath, match="is reached through a symbolic link"):
        unlink_output(f"{other}/a/1.log", str(other), 1)
    assert (victim / "1.log").read_text() == "precious"
    (home / "pony.db").write_text("the database")
    (runs / "j2").mkdir()
    for name in ("4.log", "results.csv"):
        (runs / "j2" / name).write_text("keep me")
    for forged, run_id in (
        (f"{tmp_path}/victim/1.log", 1),  # elsewhere
        (f"{runs}/../pony.db", 1),
        (f"{runs}/j1/../../pony.db", 1),
        (f"{runs}/j2/4.log", 5),  # another run's
        (f"{runs}/j2/results.csv", 4),  # not a run's output
        (f"{other}/j2/4.log", 4),  # another database's directory
        (f"{runs}/.db-x/4.log", 4),
        (f"{runs}/j\0/4.log", 4),
    ):
        with pytest.raises(UnsafePath, match="is not run"):
            unlink_output(forged, str(runs), run_id)
    assert (home / "pony.db").read_text() == "the database"
    assert sorted(p.name for p in (runs / "j2").iterdir()) == ["4.log", "results.csv"]
    unlink_output(f"{runs}/j2/4.log", str(runs), 4)
    assert not (runs / "j2" / "4.log").exists()
    unlink_output(f"{runs}/j2/4.log", str(runs), 4)  # gone already: nothing to do
    (runs / "c").write_text("a job wrote this")  # the run's file was never made
    unlink_output(f"{runs}/c/3.log", str(runs), 3)
    (tmp_path / "homelink").symlink_to(home, target_is_directory=True)
    (runs / "j2" / "6.log").write_text("")
    unlink_output(f"{tmp_path}/homelink/runs/j2/6.log", str(runs), 6)  # the same home
    assert not (runs / "j2" / "6.log").exists()
