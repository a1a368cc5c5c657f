"""`logs -n N` and `logs -f`: the last lines of a log, and following it like `tail -F`
(across logrotate's rename-and-create and across truncation)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pony_scheduler.waiting import pause


def tail_lines(path: Path, count: int, since: int = 0) -> list[str]:
    """The last `count` lines of `path` (reads backwards; logs can be large), of those
    written past byte offset `since` (a start's own lines: log_size() before it)."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            position = handle.tell()
            if position < since:
                since = 0  # truncated or rotated meanwhile: all of it is new
            data = b""
            while position > since and data.count(b"\n") <= count:
                step = min(65536, position - since)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
    except (FileNotFoundError, IsADirectoryError):
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:]


def log_size(path: Path) -> int:
    """Bytes in the log `path` now (0 when there is none): where a start's lines begin."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def follow(
    path: Path,
    write: Callable[[str], None],
    *,
    start_at_end: bool = True,
    interval: float = 0.2,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Write what is appended to `path` until `should_stop()` (or KeyboardInterrupt)."""
    handle = None
    inode = None
    try:
        while not should_stop():
            if handle is None:
                handle, inode = _open(path, seek_end=start_at_end)
                start_at_end = False  # a file that appears later is read from its start
            if handle is not None:
                _drain(handle, write)
                handle, inode = _check_rotation(path, handle, inode, write)
            pause(interval)
    finally:
        if handle is not None:
            handle.close()


def _open(path: Path, *, seek_end: bool) -> tuple[BinaryIO | None, int | None]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - kept open across iterations
    except FileNotFoundError:
        return None, None
    if seek_end:
        handle.seek(0, os.SEEK_END)
    return handle, os.fstat(handle.fileno()).st_ino


def _drain(handle: BinaryIO, write: Callable[[str], None]) -> None:
    data = handle.read()
    if data:
        write(data.decode(errors="replace"))


def _check_rotation(
    path: Path, handle: BinaryIO, inode: int | None, write: Callable[[str], None]
) -> tuple[BinaryIO | None, int | None]:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return handle, inode  # rotated away, the new file not made yet: keep the old one
    if current.st_ino != inode:
        _drain(handle, write)  # whatever was written to the old file before the switch
        handle.close()
        return _open(path, seek_end=False)
    if current.st_size < handle.tell():
        handle.seek(0)  # truncated (copytruncate)
    return handle, inode
