"""Finding the program a run starts, as execvp(3) would: in the job's own PATH, not the
keeper's (posix_spawnp(3) would search the keeper's)."""

from __future__ import annotations

import errno
import os
import re
import stat


class NotStarted(Exception):
    """The run could not be started; str() is the outcome's detail, and `exit_code` the
    status a shell gives for a command it cannot execute (bash(1), EXIT STATUS: 127 not
    found, 126 found but not executable), None when the reason is not the program's."""

    def __init__(self, detail: str, exit_code: int | None = None) -> None:
        super().__init__(detail)
        self.exit_code = exit_code


def exec_status(errno_: int | None) -> int:
    """A shell's exit status for an exec that failed with `errno_` (bash(1)): 127 for a
    program that is not there (ENOENT), 126 for any other failure to execute it."""
    return 127 if errno_ == errno.ENOENT else 126


def shown(text: str) -> str:
    """Job-controlled text for logs and details: quoted, control characters escaped, a
    byte that is not UTF-8 as \\xNN (repr alone wrote \\udcNN: review finding)."""
    quoted = repr(text)
    return _SURROGATE.sub(r"\\x\1", quoted) if "\\udc" in quoted else quoted


# repr's escape of a byte that was not UTF-8 (surrogateescape), not after a backslash
_SURROGATE = re.compile(r"(?<!\\)\\udc([89a-f][0-9a-f])")


_path_cache: dict[tuple[str, str], str] = {}


def resolve(argv0: str, env_path: str | None) -> str:
    """The file execvp(3) would run for argv0 with PATH=env_path (os.defpath when unset);
    raises NotStarted.  Hits in absolute directories are cached: a cached program that
    has gone makes the spawn fail with ENOENT, and the run's outcome says so."""
    if "/" in argv0:
        return argv0
    path = env_path if env_path is not None else os.defpath
    key = (path, argv0)
    hit = _path_cache.get(key)
    if hit is not None:
        return hit
    denied = False
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", argv0)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            if directory.startswith("/"):  # relative PATH entries depend on the cwd
                _path_cache[key] = candidate
            return candidate
        denied = True
    reason = "Permission denied" if denied else "No such file or directory"
    raise NotStarted(f"cannot start {shown(argv0)}: {reason}", 126 if denied else 127)
