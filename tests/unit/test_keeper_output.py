"""A run's output file: created at the first byte, below the home only, never through a
symlink, capped, and a failure to write it noted rather than fatal."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pony_scheduler.keeper import output
from pony_scheduler.keeper.output import TRUNCATED, Output, relative_parts


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def home_fd(home: Path) -> Iterator[int]:
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def make(home: Path, home_fd: int, rel: str = "runs/job/1.log") -> Output:
    path = f"{home}/{rel}"
    parts = relative_parts(str(home), path)
    assert parts is not None
    return Output(home_fd, path, parts)


def test_paths_must_be_files_below_the_home() -> None:
    assert relative_parts("/h", "/h/runs/j/1.log") == ["runs", "j", "1.log"]
    assert relative_parts("/h/", "/h/x") == ["x"]
    for bad in (
        "/h",
        "/h/",
        "/other/x",
        "/h/../etc/passwd",
        "/h/runs//1.log",
        "/h/./x",
        "/hx/y",
        "h/x",
    ):
        assert relative_parts("/h", bad) is None, bad


def test_created_at_the_first_byte(home: Path, home_fd: int) -> None:
    out = make(home, home_fd)
    assert not (home / "runs").exists()
    out.write(b"one")
    out.write(b"\x00two")
    assert out.close() == ""
    path = home / "runs/job/1.log"
    assert path.read_bytes() == b"one\x00two" == out.tail_bytes()
    assert out.stored == out.total == 7
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # files.SHARED_MODE, exactly
    assert stat.S_IMODE((home / "runs").stat().st_mode) == 0o700  # files.DIR_MODE, exactly


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_quiet_runs_leave_no_file(home: Path, home_fd: int) -> None:
    out = make(home, home_fd)
    assert out.close() == ""
    assert not (home / "runs").exists()


def test_never_through_a_symlink(home: Path, home_fd: int, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / "runs").symlink_to(elsewhere)
    out = make(home, home_fd)
    out.write(b"secret")
    assert out.close() == (
        f"output incomplete: cannot create {home}/runs/job/1.log: a symbolic link is on "
        "the way, and pony-scheduler follows none"
    )
    assert list(elsewhere.iterdir()) == []
    assert out.tail_bytes() == b"secret"  # the tail is kept all the same


def test_a_file_where_the_job_directory_goes_is_named_as_such(home: Path, home_fd: int) -> None:
    """Not called a symbolic link (review finding): the reason says what is there."""
    (home / "runs").mkdir()
    (home / "runs" / "job").write_text("a job wrote this")
    out = make(home, home_fd)
    out.write(b"data")
    assert out.close() == (
        f"output incomplete: cannot create {home}/runs/job/1.log: job is not a directory"
    )


def test_output_is_capped(home: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "OUTPUT_CAP", 10)
    out = make(home, home_fd)
    for chunk in (b"0123456", b"789abc", b"def"):
        out.write(chunk)
    assert out.close() == "output truncated: 16 bytes written, the first 10 kept"
    assert (home / "runs/job/1.log").read_bytes() == b"0123456789" + TRUNCATED
    assert out.tail_bytes() == b"0123456789abcdef" and out.stored == 10


def test_exactly_at_the_cap_then_more(
    home: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "OUTPUT_CAP", 4)
    out = make(home, home_fd)
    out.write(b"abcd")
    out.write(b"e")
    out.write(b"f")
    out.close()
    assert (home / "runs/job/1.log").read_bytes() == b"abcd" + TRUNCATED


def test_tail_is_the_last_4_kib(home: Path, home_fd: int) -> None:
    out = make(home, home_fd)
    data = bytes(range(256)) * 100
    for i in range(0, len(data), 1000):
        out.write(data[i : i + 1000])
    out.close()
    assert out.tail_bytes() == data[-4096:]


def test_the_cli_tells_a_file_never_created_from_one_removed(home: Path, home_fd: int) -> None:
    """`pb runs show` / `pb runs output` read the keeper's note from the run's reason:
    a file the keeper could not create was never there, not removed (review finding)."""
    from pony_scheduler.cli.output import missing_file

    (home / "runs").mkdir()
    (home / "runs/job").symlink_to(home)
    out = make(home, home_fd)
    out.write(b"printed")
    note = out.close()
    assert missing_file({"reason": f"exit status 5; {note}"}) == "never created"
    assert missing_file({"reason": "exit status 5"}) == "removed"
    assert missing_file({"reason": None}) == "removed"


def test_a_file_left_at_the_runs_path_is_moved_aside_not_written_through(
    home: Path, home_fd: int
) -> None:
    """Another database used in the same home left runs/job/1.log (review finding: the
    new run 1 could not make its file, and its output showed the old one's bytes)."""
    (home / "runs/job").mkdir(parents=True)
    (home / "runs/job/1.log").write_bytes(b"OLD\n")
    out = make(home, home_fd)
    out.write(b"NEW\n")
    assert out.close() == ""
    assert (home / "runs/job/1.log").read_bytes() == b"NEW\n"
    assert (home / "runs/job/1.log.stale").read_bytes() == b"OLD\n"


def test_a_file_at_the_runs_path_is_its_own_only_once_it_started_and_if_it_printed() -> None:
    """The rule `pb runs output` and the API share (files.output_file_may_be_the_runs)."""
    from pony_scheduler.files import output_file_may_be_the_runs as may_be

    assert not may_be("queued", None)
    assert may_be("running", None) and may_be("running", "")
    assert may_be("succeeded", "x") and may_be("failed", b"x")
    assert not may_be("succeeded", "") and not may_be("skipped", None)


def test_the_space_kept_free() -> None:
    """5% of the filesystem, at least 8 MiB (the database's WAL up to its checkpoint), at
    most 1 GiB, never more than half the filesystem."""
    assert output.keep_free(3_000_000) == 1_500_000  # the reviewer's 3 MB tmpfs: half
    assert output.keep_free(64 << 20) == 8 << 20
    assert output.keep_free(10 * 10**9) == 500_000_000
    assert output.keep_free(100 * 10**9) == 1 << 30
    assert output.shown_size(1 << 30) == "1 GiB"
    assert output.shown_size(800) == "800 bytes"


class FakeDisk:
    """fstatvfs(2) of a filesystem of `size` bytes in 4 KiB blocks, of which the run's
    file (the Output's `stored`) and `other` bytes are used."""

    def __init__(self, size: int, other: int) -> None:
        self.size, self.other, self.out, self.calls = size, other, None, 0

    def __call__(self, fd: int) -> os.statvfs_result:
        self.calls += 1
        assert self.out is not None
        free = (self.size - self.other - self.out.stored) // 4096
        blocks = self.size // 4096
        return os.statvfs_result((4096, 4096, blocks, free, free, 0, 0, 0, 0, 255))


def fake_disk(monkeypatch: pytest.MonkeyPatch, out: Output, size: int, other: int = 0) -> FakeDisk:
    disk = FakeDisk(size, other)
    disk.out = out  # type: ignore[assignment]
    monkeypatch.setattr(output.os, "fstatvfs", disk)
    return disk


def test_output_stops_short_of_the_space_kept_free(
    home: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 40 MB filesystem, 25 MB used by others: the file stops at most a page above the
    reserve, never in it, however the job writes; the job's bytes are still counted and
    its tail kept; statvfs is read a few times, not once per write."""
    out = make(home, home_fd)
    disk = fake_disk(monkeypatch, out, 40_000_000, other=25_000_000)
    for _ in range(600):
        out.write(b"x" * 65536)
    out.write(b"the end\n")
    keep = output.keep_free(disk.size // 4096 * 4096)
    left = disk.size - disk.other - out.stored
    assert keep <= left < keep + 2 * output.MIN_STEP
    assert out.close() == "output incomplete: the filesystem is nearly full (kept 8 MiB free)"
    assert (home / "runs/job/1.log").stat().st_size == out.stored
    assert out.total == 600 * 65536 + 8 and out.tail_bytes().endswith(b"the end\n")
    assert disk.calls < 40, disk.calls


def test_room_is_read_once_per_mib_on_a_roomy_disk(
    home: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = make(home, home_fd)
    disk = fake_disk(monkeypatch, out, 100 * 10**9)
    for _ in range(64):
        out.write(b"y" * 65536)  # 4 MiB
    assert out.close() == ""
    assert out.stored == 4 << 20
    assert disk.calls == 4  # at the creation, then after each of the first 3 MiB


def test_a_filesystem_already_past_the_reserve(
    home: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is made (empty) and closed at once; the job's output is still counted
    and its tail kept; nothing is left for output written after the run's end."""
    out = make(home, home_fd)
    fake_disk(monkeypatch, out, 40_000_000, other=32_000_000)
    out.write(b"hello\n")
    assert (out.stored, out.total, out.tail_bytes()) == (0, 6, b"hello\n")
    assert out.late_sink() == (-1, 0, b"")
    assert out.close().startswith("output incomplete: the filesystem is nearly full")


def test_late_output_is_limited_near_the_reserve(
    home: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept leftovers' output goes on in a drain process that reads no statvfs: it may
    take half the room above the reserve, and its last line says why it stopped."""
    out = make(home, home_fd)
    disk = fake_disk(monkeypatch, out, 40_000_000, other=20_000_000)
    out.write(b"z" * 1000)
    fd, limit, line = out.late_sink()
    assert fd >= 0 and line == output.STOPPED
    free = (disk.size - disk.other - out.stored) // 4096 * 4096
    room = free - output.keep_free(disk.size // 4096 * 4096)
    assert limit == out.stored + room // 2
    roomy = make(home, home_fd, "runs/job/2.log")
    fake_disk(monkeypatch, roomy, 100 * 10**9)
    roomy.write(b"z")
    assert roomy.late_sink()[1:] == (output.OUTPUT_CAP, TRUNCATED)
    assert out.close() == roomy.close() == ""


def test_a_filesystem_without_sizes_is_not_limited(
    home: Path, home_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """f_blocks 0 (some FUSE and network filesystems say nothing): write as before."""
    out = make(home, home_fd)
    zero = os.statvfs_result((4096, 4096, 0, 0, 0, 0, 0, 0, 0, 255))
    monkeypatch.setattr(output.os, "fstatvfs", lambda fd: zero)
    out.write(b"q" * (3 << 20))
    assert out.close() == "" and out.stored == 3 << 20
