"""pathtrust.py: a path is used only when nobody but root and us can change any part of
it, and what is checked is what is then used.  (The attacks themselves, as another user
flipping a link while root runs `pb`, are in tests/integration/test_security.py.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pony_scheduler.files import check_database_file, check_directory_chain, check_file
from pony_scheduler.pathtrust import UnsafePath, locate, read_checked

NOBODY = 65534  # a uid that is not ours (lchown needs root)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("changing an owner needs root")


def foreign_link(link: Path, target: Path) -> None:
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)


def test_our_links_are_followed_to_the_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "pony.toml").write_text("workers = 2\n")
    (tmp_path / "dirlink").symlink_to(real)
    (real / "filelink").symlink_to("pony.toml")  # relative, as ln -s makes them
    for path in (
        tmp_path / "dirlink/pony.toml",
        tmp_path / "dirlink/filelink",
        real / "../dirlink/./pony.toml",
    ):
        assert read_checked(path, "the configuration file", limit=100) == b"workers = 2\n"
        found = locate(path, "the configuration file")
        try:
            assert found.real == str(real / "pony.toml")
        finally:
            found.close()


def test_another_users_link_is_refused_wherever_it_is(tmp_path: Path) -> None:
    need_root()
    real = tmp_path / "real"
    real.mkdir()
    (real / "pony.toml").write_text("")
    foreign_link(tmp_path / "theirs", real)
    foreign_link(real / "their.toml", real / "pony.toml")
    for path, link in (
        (tmp_path / "theirs/pony.toml", tmp_path / "theirs"),
        (real / "their.toml", real / "their.toml"),
    ):
        with pytest.raises(UnsafePath) as caught:
            read_checked(path, "the configuration file", limit=100)
        assert str(caught.value) == (
            f"{link} is a symbolic link owned by nobody, who can point it elsewhere at any "
            f"moment; name the real path instead, not another user's link (or remove it: "
            f"rm {link})"
        )
    # Even when it points at our own file, and only for checks: check_file, the
    # database, the directory of a socket.
    with pytest.raises(UnsafePath, match="symbolic link owned by nobody"):
        check_file(tmp_path / "theirs/pony.toml")
    with pytest.raises(UnsafePath, match="symbolic link owned by nobody"):
        check_database_file(tmp_path / "theirs/pony.db")
    with pytest.raises(UnsafePath, match="symbolic link owned by nobody"):
        check_directory_chain(tmp_path / "theirs")


def test_directories_on_the_way_name_what_they_hold(tmp_path: Path) -> None:
    need_root()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "pony.toml").write_text("")
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(UnsafePath) as caught:
        read_checked(theirs / "pony.toml", "the configuration file", limit=100)
    assert str(caught.value) == (
        f"{theirs} belongs to nobody, who could replace what is "
        "below it; keep the configuration file in a directory "
        "owned by root"
    )
    # Reached through a link of ours, the directory the link leads to is checked too.
    (tmp_path / "ours").symlink_to(theirs)
    with pytest.raises(UnsafePath, match=f"^{theirs} belongs to nobody"):
        read_checked(tmp_path / "ours/pony.toml", "the configuration file", limit=100)


def test_what_is_read_is_what_was_checked(tmp_path: Path) -> None:
    """The checks are made on the descriptor: a FIFO is refused without waiting for a
    writer, a directory is said to be one, a file that is not ours is refused."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePath, match="is not a regular file"):
        read_checked(fifo, "the --env-file", limit=100)
    with pytest.raises(IsADirectoryError):
        read_checked(tmp_path, "the --env-file", limit=100)
    with pytest.raises(FileNotFoundError):
        read_checked(tmp_path / "missing/x", "the --env-file", limit=100)
    writable = tmp_path / "env"
    writable.write_text("A=1\n")
    writable.chmod(0o666)
    with pytest.raises(UnsafePath, match=r"writable by others \(mode 0666\)"):
        read_checked(writable, "the --env-file", limit=100)
    writable.chmod(0o600)
    assert read_checked(writable, "the --env-file", limit=2) == b"A=1"  # limit + 1 bytes


def test_the_database_is_given_to_sqlite_by_its_real_path(tmp_path: Path) -> None:
    real = tmp_path / "data"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    assert check_database_file(tmp_path / "link/pony.db", create=True) == str(real / "pony.db")
    assert stat.S_IMODE((real / "pony.db").stat().st_mode) == 0o600
    with pytest.raises(FileNotFoundError):
        check_database_file(tmp_path / "missing/pony.db", create=True)


def test_too_many_links(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(UnsafePath, match="too many symbolic links"):
        read_checked(tmp_path / "a", "the configuration file", limit=100)
