"""keeper.journal: the append-only record of outcomes not yet acknowledged.

One JSON object per line: `{"v":1,"type":"outcome","outcome":{...}}` when a run ends and
`{"v":1,"type":"ack","ids":[...]}` when a scheduler has recorded outcomes.  An outcome is
pending until a later ack names its id.  This module is the file: its format, reading it
(also for a scheduler that finds no keeper: read_journal, mark_recorded) and the
synchronous operations; commit.py is how the running keeper writes it (group commit).

Reading skips a torn last line (a crash in the middle of a write) and lines it cannot
understand; the keeper cuts a torn line off before appending, and rewrites the file
without acknowledged outcomes when it starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pony_scheduler.keeper.protocol import (
    JOURNAL_FILE,
    PID_FILE,
    Outcome,
    ProtocolError,
)
from pony_scheduler.keeper.wire import (
    encode,
    outcome_from_json,
    outcome_to_json,
)

JOURNAL_VERSION = 1
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class KeeperRunning(Exception):
    """A keeper holds this home's journal: ask it (KeeperClient), not the file."""


@dataclass
class Recovered:
    outcomes: list[Outcome] = field(default_factory=list)  # pending, in journal order
    good_size: int = 0  # bytes up to the end of the last complete line
    torn: bool = False  # the file ended in the middle of a line
    bad_lines: int = 0  # complete lines that could not be read
    acked: int = 0  # outcomes already acknowledged (compaction would drop them)


def outcome_line(outcome: Outcome, message: bytes | None = None) -> bytes:
    """The journal line of `outcome`; `message`, its protocol line (wire.encode of
    outcome_to_json) when the caller has it, is reused rather than encoded again."""
    if message is None:
        message = encode(outcome_to_json(outcome))
    return b'{"v":%d,"type":"outcome","outcome":%s}\n' % (JOURNAL_VERSION, message[:-1])


def ack_line(ids: Iterable[str]) -> bytes:
    return _line({"v": JOURNAL_VERSION, "type": "ack", "ids": list(ids)})


def _line(record: dict[str, object]) -> bytes:
    return encode(record)


def parse(data: bytes) -> Recovered:
    """Pending outcomes in `data` (a journal's bytes); pure."""
    result = Recovered()
    end = data.rfind(b"\n") + 1
    result.good_size = end
    result.torn = end < len(data)
    pending: dict[str, Outcome] = {}
    for raw in data[:end].splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            kind = record["type"]
            if kind == "outcome":
                outcome = outcome_from_json({**record["outcome"], "type": "outcome"})
                pending.setdefault(outcome.id, outcome)  # a line written twice after a retry
            elif kind == "ack":
                for outcome_id in record["ids"]:
                    if pending.pop(str(outcome_id), None) is not None:
                        result.acked += 1
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except (ValueError, KeyError, TypeError, ProtocolError):
            result.bad_lines += 1
    result.outcomes = list(pending.values())
    return result


class JournalFile:
    """The file itself, with synchronous operations; used by one thread at a time."""

    def __init__(self, home_fd: int) -> None:
        self.home_fd = home_fd
        self.fd = os.open(JOURNAL_FILE, OPEN_FLAGS, 0o600, dir_fd=home_fd)
        self.size = os.fstat(self.fd).st_size

    def recover(self) -> Recovered:
        """Read the file, cut a torn last line, and rewrite it compactly when it holds
        acknowledged outcomes or bad lines."""
        with open(
            os.open(JOURNAL_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.home_fd),
            "rb",
        ) as handle:
            found = parse(handle.read())
        if found.torn:
            os.ftruncate(self.fd, found.good_size)
            self.size = found.good_size
        if not found.outcomes:
            self.truncate()
        elif found.acked or found.bad_lines:
            self.rewrite(found.outcomes)
        return found

    def append(self, data: bytes) -> None:
        """One write, not synced; on any error the file is cut back to where it was (no
        torn line stays behind) and OSError raised."""
        try:
            if os.write(self.fd, data) != len(data):
                raise OSError(28, os.strerror(28))  # a short write to a file: the disk is full
        except OSError:
            self.cut(self.size)
            raise
        self.size += len(data)

    def cut(self, size: int) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, size)
        self.size = min(self.size, size)

    def truncate(self) -> None:
        """Everything is acknowledged: the file starts over (no sync: a truncation lost
        in a crash brings the old lines back with their acks)."""
        if self.size:
            os.ftruncate(self.fd, 0)
            self.size = 0

    def rewrite(self, pending: list[Outcome]) -> None:
        """Replace the file by one holding only `pending`, atomically; OSError."""
        tmp = f".{JOURNAL_FILE}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self.home_fd)
        fd = os.open(tmp, OPEN_FLAGS | os.O_EXCL, 0o600, dir_fd=self.home_fd)
        try:
            data = b"".join(outcome_line(o) for o in pending)
            if os.write(fd, data) != len(data):
                raise OSError(28, os.strerror(28))
            os.fsync(fd)
            os.rename(tmp, JOURNAL_FILE, src_dir_fd=self.home_fd, dst_dir_fd=self.home_fd)
            os.fsync(self.home_fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.home_fd)
            raise
        os.close(self.fd)
        self.fd, self.size = fd, len(data)

    def close(self) -> None:
        os.close(self.fd)


# ------------------------------------------------------------- for a scheduler without keeper
def lock_pid_file(home_fd: int) -> int | None:
    """keeper.pid, flock'ed: the fd, or None when a live keeper holds it.  The lock is
    checked to be on the file the name still points to (a keeper that is exiting
    unlinks it)."""
    while True:
        fd = os.open(
            PID_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=home_fd
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = (
                os.stat(PID_FILE, dir_fd=home_fd, follow_symlinks=False).st_ino
                == os.fstat(fd).st_ino
            )
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def read_journal(home: Path) -> list[Outcome]:
    """Outcomes in HOME/keeper.journal not yet acknowledged, oldest first ([] without a
    journal).  Meant for a scheduler that finds no keeper running: a keeper that is
    running gives its outcomes in the welcome instead (and may hold some in memory that
    a full disk kept out of the file).  A torn last line is ignored.  Raises OSError
    when the file cannot be read."""
    try:
        fd = os.open(home / JOURNAL_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    with open(fd, "rb") as handle:
        return parse(handle.read()).outcomes


def mark_recorded(home: Path, ids: Iterable[str]) -> None:
    """Acknowledge outcomes read with read_journal() once they are recorded: they will
    not be given out again.  Holds the keeper's lock (keeper.pid) meanwhile, so no keeper
    starts while the file changes.  Raises KeeperRunning when a keeper holds the home
    (acknowledge through it), OSError when the file cannot be written."""
    done = set(ids)
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        lock_fd = lock_pid_file(home_fd)
        if lock_fd is None:
            raise KeeperRunning(f"a keeper runs in {home}; acknowledge through it")
        try:
            if not os.path.exists(home / JOURNAL_FILE):
                return
            file = JournalFile(home_fd)
            try:
                left = [o for o in file.recover().outcomes if o.id not in done]
                if left:
                    file.rewrite(left)
                else:
                    file.truncate()
            finally:
                file.close()
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
    finally:
        os.close(home_fd)
