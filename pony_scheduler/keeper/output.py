"""A run's output file: exactly the bytes the job wrote, created at the first byte.

Many scheduled jobs print nothing, and creating a file costs more than starting `true`,
so a quiet run leaves no file.  It is made by the project's one helper for files,
files.create_file: relative to the home with O_NOFOLLOW on every component (a symlink
anywhere below the home is refused, never followed), with O_CREAT|O_EXCL and exactly
mode 0640 (files.SHARED_MODE); missing directories are made the same way, exactly 0700
(files.DIR_MODE).  Output beyond OUTPUT_CAP is counted but not stored, and a line saying so ends the
file.  When the file cannot be made or written (a full disk, a read-only file system, a
directory we may not write), the job goes on: its pipe keeps being drained, its tail
kept, and the reason becomes the outcome's output_note ("output incomplete: …").

A file also stops growing before its filesystem is full (keep_free): the database
(HOME/pony.db by default) and the keeper's journal share that filesystem, and a job that
took its last bytes stopped all scheduling until someone freed space (review finding).
"""

from __future__ import annotations

import contextlib
import os
import stat

from pony_scheduler.files import SHARED_MODE, UnsafePath, create_file, open_beneath
from pony_scheduler.keeper.protocol import OUTPUT_CAP, TAIL_BYTES

TRUNCATED = b"\n[output truncated: more than 10 MiB]\n"
STOPPED = b"\n[output stopped: its filesystem is close to the space kept free]\n"

# The free space an output file leaves on its filesystem: journald's SystemKeepFree= is
# the model (15% of the size, capped at 4 GiB).  Ours is for the database and the keeper's
# journal, not for other logs, so 5% and at most 1 GiB (a 100 GB disk keeps 1 GiB, which
# no database of runs fills within days) - but at least 8 MiB: SQLite's WAL grows by every
# page a transaction writes until its automatic checkpoint at 1000 pages (about 4 MiB; a
# recorded run added some 75 KiB to a young WAL here), and the database file then takes
# those pages, so 5% of a small filesystem is not enough (a 3 MiB home with 5% kept
# recorded two more runs, then "database or disk is full" again).  Never more than half
# the filesystem, so that a tiny one still stores some output (there the database fills
# it anyway, output or not).
KEEP_FREE_SHARE = 0.05  # of the filesystem's size (statvfs f_blocks * f_frsize)
KEEP_FREE_MIN = 8 << 20  # bytes
KEEP_FREE_MAX = 1 << 30  # bytes
# statvfs(2) is read at the file's creation and then after every CHECK_EVERY bytes; near
# the reserve sooner (Output._measure), so that a few runs writing at once cannot go far
# past it between two readings.
CHECK_EVERY = 1 << 20  # bytes
MIN_STEP = 4096  # bytes: less room than this (one page) counts as none


def keep_free(size: int) -> int:
    """Bytes to leave free on a filesystem of `size` bytes: KEEP_FREE_SHARE of it, at
    least KEEP_FREE_MIN and at most KEEP_FREE_MAX, never more than half of it."""
    return min(max(int(size * KEEP_FREE_SHARE), KEEP_FREE_MIN), KEEP_FREE_MAX, size // 2)


def shown_size(size: int) -> str:
    """Bytes as a person reads them: '150 KiB', '1 GiB', '800 bytes' (rounded down)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def relative_parts(home: str, path: str) -> list[str] | None:
    """Components of `path` below `home`, or None when it is not a file under the home
    (relative, '..', '.', empty components, or the home itself)."""
    prefix = home.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    parts = path[len(prefix) :].split("/")
    if not parts or any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def open_below(home_fd: int, parts: list[str]) -> int:
    """Create the file parts[-1] in the directories parts[:-1] below home_fd, never
    through a symlink (files.create_file); returns the fd; raises OSError, UnsafePath."""
    return create_file(home_fd, "/".join(parts), SHARED_MODE, make_dirs=True)


class Output:
    """Where one run's bytes go: the file (at the first byte), the tail, the counts."""

    __slots__ = (
        "budget",
        "capped",
        "fd",
        "home_fd",
        "note",
        "parts",
        "path",
        "stored",
        "tail",
        "total",
    )

    def __init__(self, home_fd: int, path: str, parts: list[str]) -> None:
        self.home_fd = home_fd
        self.path = path
        self.parts = parts
        self.fd = -1
        self.stored = 0  # bytes in the file
        self.total = 0  # bytes the job wrote
        self.note = ""  # why the file is incomplete
        self.capped = False  # the truncation line is written
        self.budget = 0  # bytes the file may hold before statvfs is read again
        self.tail = bytearray()

    def write(self, data: bytes) -> None:
        self.total += len(data)
        self.tail += data
        if len(self.tail) > 2 * TAIL_BYTES:
            del self.tail[:-TAIL_BYTES]
        if self.note:
            return  # failed before: the job goes on, its bytes are no longer stored
        room = OUTPUT_CAP - self.stored
        if room <= 0:
            self._truncated()
            return
        if self.fd < 0:
            try:
                self.fd = self._create()
            except OSError as exc:
                self.note = f"output incomplete: cannot create {self.path}: {exc.strerror}"
                return
            except UnsafePath:  # a link planted below the home: never followed
                self.note = (
                    f"output incomplete: cannot create {self.path}: a symbolic "
                    "link is on the way, and pony-scheduler follows none"
                )
                return
        chunk = data[:room]
        try:
            while chunk:
                if self.stored >= self.budget and not self._measure():
                    return
                n = os.write(self.fd, chunk[: self.budget - self.stored])
                self.stored += n
                chunk = chunk[n:]
        except OSError as exc:
            self.note = f"output incomplete: {exc.strerror}"
            return
        if len(data) > room:
            self._truncated()

    def set_aside_stale(self) -> None:
        """At launch, before the run's process exists: a file already at the run's path
        is not this run's - run ids are never reused within a database, and a run's file
        is made once, by its keeper - but one left by another database used in the same
        home (recreated, or switched with --db).  It is renamed NAME.stale, so that from
        the run's start on, whatever is at its path is its own (review: a running or
        quiet run showed the old file as its output).  Only a regular file: anything else
        there was planted, and the first byte's create refuses it with a note.  Costs one
        lstat when there is none (the usual case); the rename goes through no symbolic
        link."""
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                return  # not an old run's file but something planted: the create says
        except OSError:
            return  # none (the usual case), or unreachable: the first byte's create says
        with contextlib.suppress(OSError, UnsafePath):
            directory = "/".join(self.parts[:-1])
            dir_fd = open_beneath(self.home_fd, directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                name = self.parts[-1]
                os.rename(name, f"{name}.stale", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            finally:
                os.close(dir_fd)

    def _create(self) -> int:
        """The run's file, made at its first byte (set_aside_stale cleared the way)."""
        try:
            return open_below(self.home_fd, self.parts)
        except FileExistsError:  # made between the launch and the first byte: not ours
            self.set_aside_stale()
            return open_below(self.home_fd, self.parts)

    def _measure(self, step: int = CHECK_EVERY) -> bool:
        """Read the free space of the file's filesystem (fstatvfs(2), f_bavail: what this
        user may use) and set the budget: the next reading after `step` bytes, or
        after half the room left above the reserve (keep_free) when that is less, so
        that readings come closer together near it.  With less room than MIN_STEP the
        file is closed as incomplete and False returned."""
        try:
            st = os.fstatvfs(self.fd)
        except OSError:
            st = None  # cannot tell: a write error, if any, will say why
        if st is None or st.f_blocks == 0:  # f_blocks 0: a filesystem that gives no sizes
            self.budget = OUTPUT_CAP
            return True
        keep = keep_free(st.f_blocks * st.f_frsize)
        room = st.f_bavail * st.f_frsize - keep
        if room < MIN_STEP:
            self.note = (
                f"output incomplete: the filesystem is nearly full (kept {shown_size(keep)} free)"
            )
            os.close(self.fd)  # nothing more goes into it, leftovers' output included
            self.fd = -1
            return False
        self.budget = self.stored + min(step, room // 2)
        return True

    def _truncated(self) -> None:
        if not self.capped:
            self.capped = True
            with contextlib.suppress(OSError):
                os.write(self.fd, TRUNCATED)

    def close(self) -> str:
        """Close the file; returns the note for the outcome."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.note and self.total > self.stored:
            return f"output truncated: {self.total} bytes written, the first {self.stored} kept"
        return self.note

    def late_sink(self) -> tuple[int, int, bytes]:
        """For output written after the run's end (leftovers kept): the file's fd, the
        size it may grow to (bytes) and the line that ends it there - OUTPUT_CAP and
        TRUNCATED, or less and STOPPED when half the room above the reserve (keep_free,
        read now) is less, as no later reading is made.  The fd is -1 when nothing more
        is stored (the file failed, is full, or cannot be made)."""
        if self.note or self.capped or self.stored >= OUTPUT_CAP:
            return -1, 0, b""
        if self.fd < 0:
            try:
                self.fd = self._create()
            except (OSError, UnsafePath):
                return -1, 0, b""
        if not self._measure(OUTPUT_CAP):
            return -1, 0, b""
        if self.budget >= OUTPUT_CAP:
            return self.fd, OUTPUT_CAP, TRUNCATED
        return self.fd, self.budget, STOPPED

    def tail_bytes(self) -> bytes:
        return bytes(self.tail[-TAIL_BYTES:])
