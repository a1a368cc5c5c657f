"""The home and the files in it: strict modes before use, and one way to create files.

Whoever can change a file the scheduler reads (its database, its configuration) or
redirect a file it writes (a symbolic link planted as its log) can make it run commands,
or overwrite files, as its user, often root.  So, as OpenSSH's StrictModes does for
~/.ssh (sshd_config(5); `safe_path()` in OpenSSH's misc.c):

* `check_home(home)`: the home and every file we use in it belong to the invoking user
  (or root) and are not group- or world-writable; private files (tokens, sockets) are
  not accessible to others at all, nor is the database when others may enter the home;
  the directories above the home belong to
  root or the user and, when group- or world-writable, have the sticky bit (a home under
  /tmp works); none of our files is a symbolic link.  A few stat calls: cheap enough for
  every command.
* `check_file(path)`: the same ownership rule for a file named on the command line
  (a configuration file, a job file) and the directories above it.
* `open_beneath(root, relative, ...)` / `create_file(...)`: open or create a file below a
  directory without following a symbolic link in any component: each component is
  opened relative to its parent's descriptor with O_NOFOLLOW (openat(2)), new files are
  made with O_EXCL (or appended to after checking who owns them) and get exactly the
  mode asked for, whatever the umask.
* `write_atomic(directory, name, data, mode)`: a whole new file or none (a temporary
  file made with O_EXCL, renamed over the old one).

One set of modes for everything: the home and directories in it 0700, private files
(database, tokens, sockets, login codes, start locks) 0600, logs, run outputs, pid and
metadata files 0640.

A refusal is an `UnsafePath` whose message is one line: the path, what is wrong and the
command that fixes it.  No heavy imports here: `pb scheduler status` runs this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath

from pony_scheduler.errors import EXIT_FAILURE, PonyError

HOME_MODE = 0o700
DIR_MODE = 0o700  # directories below the home: runs/, runs/JOB/, debug.logins/
PRIVATE_MODE = 0o600  # database, tokens, sockets, login codes, start locks
SHARED_MODE = 0o640  # logs, run outputs, pid files, metadata

_SERVICES = ("scheduler", "gateway", "debug")
# Names we use in the home: name -> (kind, privacy).  kind: file | socket | dir.
# privacy: "shared" (others may read), "private" (never accessible to others: tokens,
# sockets, login codes), "data" (the database: not readable by others when others may
# enter its directory; a pony.db an older version made 0644 in a 0700 home is not exposed).
KNOWN: dict[str, tuple[str, str]] = {
    **{f"{s}.{ext}": ("file", "shared") for s in _SERVICES for ext in ("pid", "json", "log")},
    **{f".{s}.start.lock": ("file", "private") for s in _SERVICES},
    "config.toml": ("file", "shared"),
    "gateway.token": ("file", "private"),
    "gateway.read-token": ("file", "private"),
    **{f"pony.db{suffix}": ("file", "data") for suffix in ("", "-wal", "-shm", "-journal")},
    "gateway.sock": ("socket", "private"),
    "gateway.api.sock": ("socket", "private"),
    "runs": ("dir", "shared"),
    "debug.logins": ("dir", "private"),
}


def _others_may_enter(mode: int) -> bool:
    """May users other than the owner reach the files of a directory of this mode?"""
    return bool(mode & 0o011)
_KIND_OK = {"file": stat.S_ISREG, "socket": stat.S_ISSOCK, "dir": stat.S_ISDIR}


class UnsafePath(PonyError):
    """A path another user could have planted or could change; the message names the
    path and the fix."""

    exit_code = EXIT_FAILURE

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.path = str(path)
        super().__init__(f"{path} {problem}; {fix}")


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _me() -> str:
    return "root" if os.geteuid() == 0 else f"{_user(os.geteuid())} or root"


def _trusted_owner(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


# -- checks --------------------------------------------------------------------------------
def check_directory_chain(directory: str | os.PathLike[str]) -> None:
    """Every directory from / down to `directory` (its real path) belongs to root or us and
    is not group- or world-writable unless it has the sticky bit (like /tmp).

    Raises UnsafePath.  Missing components are skipped: they are created by us later.
    """
    parts = PurePosixPath(os.path.realpath(directory)).parts
    for depth in range(1, len(parts) + 1):
        current = PurePosixPath(*parts[:depth])
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise UnsafePath(current, f"cannot be examined ({exc.strerror})",
                             "check its permissions") from None
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafePath(current, "is not a directory", "choose another path")
        if not _trusted_owner(info.st_uid):
            raise UnsafePath(current, f"belongs to {_user(info.st_uid)}, who could replace "
                             "what is below it", "keep the home in a directory owned by "
                             f"root or {_user(os.geteuid())} (PONYBUNNY_HOME)")
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise UnsafePath(current, f"is writable by others (mode "
                             f"{stat.S_IMODE(info.st_mode):04o}) without the sticky bit",
                             f"run 'chmod go-w {current}'")


def _check_owner_and_mode(path: str | os.PathLike[str], info: os.stat_result, *,
                          private: bool) -> None:
    if not _trusted_owner(info.st_uid):
        fix = (f"remove it (rm -r {path}) or, if it is yours, 'chown {_user(os.geteuid())} "
               f"{path}'")
        raise UnsafePath(path, f"belongs to {_user(info.st_uid)}, not to {_me()}", fix)
    mode = stat.S_IMODE(info.st_mode)
    if private and mode & 0o077:
        target = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        raise UnsafePath(path, f"is accessible to others (mode {mode:04o})",
                         f"run 'chmod {target:o} {path}'")
    if mode & 0o022:
        raise UnsafePath(path, f"is writable by others (mode {mode:04o})",
                         f"run 'chmod go-w {path}'")


def check_home(home: str | os.PathLike[str]) -> None:
    """The StrictModes check of a home (see the module docstring); raises UnsafePath.

    A home that does not exist yet is fine when the directories that will hold it are.
    PermissionError (PonyError, exit 4) when the home cannot be read at all.
    """
    real = os.path.realpath(home)
    try:
        info = os.lstat(real)
    except FileNotFoundError:
        check_directory_chain(os.path.dirname(real))
        return
    check_directory_chain(os.path.dirname(real))
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(home, "is not a directory", "set PONYBUNNY_HOME to a directory")
    if not _trusted_owner(info.st_uid):
        raise UnsafePath(home, f"belongs to {_user(info.st_uid)}, not to "
                         f"{_user(os.geteuid())}", "use a home of your own "
                         f"(PONYBUNNY_HOME) or 'chown -R {_user(os.geteuid())} {home}'")
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise UnsafePath(home, f"is writable by others (mode "
                         f"{stat.S_IMODE(info.st_mode):04o})", f"run 'chmod 700 {home}'")
    try:
        entries = list(os.scandir(real))
    except PermissionError:
        raise PonyError(f"cannot read home {home}: permission denied; run this as its owner",
                        4) from None
    open_home = _others_may_enter(info.st_mode)
    for entry in entries:
        _check_entry(Path(home) / entry.name, entry, open_home)


def _check_entry(path: Path, entry: os.DirEntry[str], open_home: bool) -> None:
    known = KNOWN.get(entry.name)
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return  # removed meanwhile (a temporary file)
    if stat.S_ISLNK(info.st_mode):
        if known is None:
            return  # not ours: never opened by us, so never followed
        raise UnsafePath(path, "is a symbolic link, and pony-scheduler follows none in its "
                         "home", f"replace it with the real {known[0]} (rm {path})")
    if known is not None:
        kind, privacy = known
        if not _KIND_OK[kind](info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a " + kind
            remove = "rmdir" if stat.S_ISDIR(info.st_mode) else "rm"
            raise UnsafePath(path, f"is {what}, not a {kind}", f"remove it ({remove} {path})")
        private = privacy == "private" or (privacy == "data" and open_home)
        _check_owner_and_mode(path, info, private=private)
    else:
        _check_owner_and_mode(path, info, private=False)


def check_file(path: str | os.PathLike[str], *, private: bool = False) -> None:
    """A file named on the command line (configuration, job or environment file): it and
    the directories above it follow the home's ownership rule.  Raises UnsafePath;
    FileNotFoundError when it does not exist."""
    real = os.path.realpath(path)
    check_directory_chain(os.path.dirname(real))
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(path, "is not a regular file", "name a file")
    _check_owner_and_mode(path, info, private=private)


def check_database_file(path: str | os.PathLike[str]) -> None:
    """An SQLite database (`--db PATH`, the home's pony.db too): the directories up to it
    as for the home, the directory itself not writable by others (SQLite makes its -wal,
    -shm and journal files there), and the database and those files ours, not writable
    by others, not readable by others either when others may enter the directory, and no
    symbolic links.  Raises UnsafePath."""
    directory = os.path.dirname(os.path.abspath(path))
    check_directory_chain(directory)
    real_dir = os.path.realpath(directory)
    info = os.lstat(real_dir)
    if info.st_mode & 0o022:
        raise UnsafePath(directory, f"holds the database and is writable by others (mode "
                         f"{stat.S_IMODE(info.st_mode):04o})", f"run 'chmod go-w {directory}' "
                         "or keep the database elsewhere")
    exposed = _others_may_enter(info.st_mode)
    name = os.path.basename(path)
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = os.path.join(directory, name + suffix)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            raise UnsafePath(candidate, "is a symbolic link", "point --db at the real file")
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(candidate, "is not a regular file", "point --db at a file")
        _check_owner_and_mode(candidate, info, private=exposed)


# -- opening and creating ------------------------------------------------------------------
Root = str | os.PathLike[str] | int


def _parts(relative: str | os.PathLike[str]) -> tuple[str, ...]:
    pure = PurePosixPath(relative)
    if pure.is_absolute() or not pure.parts or ".." in pure.parts:
        raise ValueError(f"not a relative path below a directory: {relative!s}")
    return pure.parts


def _refuse_link(root: Root, relative: str | os.PathLike[str], exc: OSError) -> UnsafePath:
    shown = relative if isinstance(root, int) else os.path.join(root, relative)
    what = "not a directory" if exc.errno == errno.ENOTDIR else "a symbolic link"
    return UnsafePath(shown, "is reached through a symbolic link (or a component of it is "
                      f"{what}), and pony-scheduler follows none",
                      "remove the link and let pony-scheduler make the file")


def open_beneath(root: Root, relative: str | os.PathLike[str], flags: int,
                 mode: int = SHARED_MODE, *, make_dirs: bool = False,
                 dir_mode: int = DIR_MODE) -> int:
    """Open `relative` below the directory `root` (a path or a directory fd), following
    no symbolic link in any component, and return the new fd (the caller closes it).

    `flags` are os.open flags; O_NOFOLLOW and O_CLOEXEC are added.  With `make_dirs`,
    missing directories on the way are created with `dir_mode` (exactly).  `root`
    itself is opened as given: checking it is check_home's job.  Raises UnsafePath when
    a component is a symbolic link, ValueError for an absolute path or one with "..",
    OSError for everything else (FileNotFoundError, FileExistsError with O_EXCL...).
    """
    parts = _parts(relative)
    owned = not isinstance(root, int)  # an fd we opened, so close
    dir_fd = root if isinstance(root, int) else os.open(
        root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = _open_dir(dir_fd, part, root, relative, make_dirs, dir_mode)
            if owned:
                os.close(dir_fd)
            dir_fd, owned = next_fd, True
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                           dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST
                                            and _is_link(parts[-1], dir_fd)):
                raise _refuse_link(root, relative, exc) from None
            raise
    finally:
        if owned:
            os.close(dir_fd)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _open_dir(dir_fd: int, part: str, root: Root, relative: str | os.PathLike[str],
              make_dirs: bool, dir_mode: int) -> int:
    """One directory component, never through a link; made (exactly `dir_mode`) when
    missing and `make_dirs`."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    created = False
    for attempt in (1, 2):
        try:
            fd = os.open(part, flags, dir_fd=dir_fd)
            break
        except FileNotFoundError:
            if not make_dirs or attempt == 2:
                raise
            with contextlib.suppress(FileExistsError):  # made meanwhile: opened next
                os.mkdir(part, dir_mode, dir_fd=dir_fd)
                created = True
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refuse_link(root, relative, exc) from None
            raise
    if created:
        os.fchmod(fd, dir_mode)  # exactly, whatever the umask
    return fd


def verify_fd(fd: int, shown: str | os.PathLike[str], *, private: bool = False) -> None:
    """An opened file is a regular file, ours (or root's), not writable by others (not
    accessible to them when `private`), and has no other hard link.  Raises UnsafePath."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(shown, "is not a regular file", f"remove it (rm -r {shown})")
    _check_owner_and_mode(shown, info, private=private)
    if info.st_nlink > 1:
        raise UnsafePath(shown, f"has {info.st_nlink} hard links; another name could "
                         "change it", f"replace it with a copy (cp {shown} x && mv x {shown})")


def create_file(root: Root, relative: str | os.PathLike[str], mode: int, *,
                exclusive: bool = True, append: bool = False, make_dirs: bool = False,
                dir_mode: int = DIR_MODE) -> int:
    """Create the file `root/relative` for writing and return its fd (caller closes).

    `mode` is one of PRIVATE_MODE / SHARED_MODE and is what the file gets, whatever the
    umask.  `exclusive` (the default): it must not exist (O_EXCL), so nothing planted
    there beforehand is ever written through.  `append=True` (logs): open an existing
    file for appending, or create it; an existing one must pass `verify_fd`.  With
    `make_dirs`, missing directories on the way are created with `dir_mode`.

    The run-output files of the executor: `create_file(home, f"runs/{job}/{run_id}.log",
    SHARED_MODE, make_dirs=True)`.

    Raises FileExistsError (exclusive, the file exists), UnsafePath (a symbolic link on
    the way, or an existing file that fails `verify_fd`), other OSError.
    """
    flags = os.O_WRONLY | os.O_CREAT
    if append:
        flags |= os.O_APPEND
        exclusive = False
    if exclusive:
        flags |= os.O_EXCL
    fd = open_beneath(root, relative, flags, mode, make_dirs=make_dirs, dir_mode=dir_mode)
    try:
        if exclusive:
            os.fchmod(fd, mode)
        else:
            shown = relative if isinstance(root, int) else os.path.join(root, relative)
            verify_fd(fd, shown, private=not mode & 0o077)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic(directory: str | os.PathLike[str], name: str, data: bytes,
                 mode: int) -> None:
    """Replace `directory/name` with a file holding `data` (mode exactly `mode`): written
    to a new temporary file (O_EXCL, no link followed) and renamed over the old one, so a
    reader sees the old file or the new one, never half of one.  A symbolic link at `name`
    is replaced, not followed.  Raises OSError / UnsafePath."""
    if "/" in name:
        raise ValueError(f"a file name, not a path: {name!r}")
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = create_file(dir_fd, tmp, mode)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def read_private(directory: str | os.PathLike[str], name: str, *,
                 limit: int = 4096) -> bytes:
    """The content of a private file (a token) in `directory`, opened without following a
    link and refused (UnsafePath) unless ours and mode 0600 or stricter.
    FileNotFoundError when there is none."""
    fd = open_beneath(directory, name, os.O_RDONLY)
    try:
        verify_fd(fd, os.path.join(directory, name), private=True)
        return os.read(fd, limit)
    finally:
        os.close(fd)


def make_home(home: str | os.PathLike[str]) -> bool:
    """Create the home (exactly HOME_MODE) after checking the directories above it;
    True when we created it.  Raises UnsafePath, OSError."""
    check_directory_chain(os.path.dirname(os.path.realpath(home)))
    try:
        os.mkdir(home, HOME_MODE)
    except FileExistsError:
        return False
    os.chmod(home, HOME_MODE)  # exactly, whatever the umask
    return True
