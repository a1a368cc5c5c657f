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
"""

from __future__ import annotations

import contextlib
import os
import stat

from pony_scheduler.files import SHARED_MODE, UnsafePath, create_file, open_beneath
from pony_scheduler.keeper.protocol import OUTPUT_CAP, TAIL_BYTES

TRUNCATED = b"\n[output truncated: more than 10 MiB]\n"


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

    __slots__ = ("capped", "fd", "home_fd", "note", "parts", "path", "stored", "tail", "total")

    def __init__(self, home_fd: int, path: str, parts: list[str]) -> None:
        self.home_fd = home_fd
        self.path = path
        self.parts = parts
        self.fd = -1
        self.stored = 0  # bytes in the file
        self.total = 0  # bytes the job wrote
        self.note = ""  # why the file is incomplete
        self.capped = False  # the truncation line is written
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
                n = os.write(self.fd, chunk)
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

    def late_sink(self) -> int:
        """The file's fd for output written after the run's end (leftovers kept), or -1
        when nothing more is stored (the file failed, is full, or cannot be made)."""
        if self.note or self.capped or self.stored >= OUTPUT_CAP:
            return -1
        if self.fd < 0:
            try:
                self.fd = self._create()
            except (OSError, UnsafePath):
                return -1
        return self.fd

    def tail_bytes(self) -> bytes:
        return bytes(self.tail[-TAIL_BYTES:])
