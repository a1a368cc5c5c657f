"""Who can change a path, and reaching a file only through parts nobody else can change.

A check of a path is worth nothing if the path can be redirected between the check and
the use: another user who owns a symbolic link on the way (`/tmp/x-cfglink`, a
`PONYBUNNY_HOME` that is their link to our home) flips it from our file to theirs while
we run, and some attempts read theirs.  So, as the kernel's `fs.protected_symlinks`
(proc_sys_fs(5)) and OpenSSH's StrictModes (`safe_path()` in misc.c) reason:

* every directory on the way, from `/` down, belongs to root or to us and is not group-
  or world-writable unless it has the sticky bit (`/tmp`), so nobody else can rename or
  replace what is in it;
* every symbolic link on the way belongs to root or to us (in a sticky directory only its
  owner may replace it), and is followed by us, component by component;
* each component is opened relative to the descriptor of the directory just checked,
  with O_NOFOLLOW, and the check is made with fstat() on what was opened, never on a
  path that is then opened again.

`locate()` does the walk and returns the checked directory's descriptor with the last
name in it and the path without links (`real`): a path every part of which is root's or
ours, so a program that can only take a name (SQLite) is given that one.

A refusal is an `UnsafePath` (one line: the path, what is wrong, the command that fixes
it).  Linux only (O_PATH); standard library only: `pb scheduler status` and the run
keeper import this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import deque

from pony_scheduler.errors import EXIT_FAILURE, PonyError

MAX_LINKS = 40  # symbolic links followed in one path, as the kernel's ELOOP limit
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(PonyError):
    """A path another user could have planted or could change; the message names the
    path and the fix."""

    exit_code = EXIT_FAILURE

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.path = str(path)
        super().__init__(f"{path} {problem}; {fix}")


def user_name(uid: int) -> str:
    """The login name of `uid`, or "uid N" when it has none."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def trusted_owners() -> str:
    """Who may own what we use, for messages: "root", or "alice or root"."""
    return "root" if os.geteuid() == 0 else f"{user_name(os.geteuid())} or root"


def trusted_owner(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def writable_fix(path: str | os.PathLike[str], mode: int, fix: str) -> str:
    """What to do about `path` being writable by others: `fix` (a chmod), unless it is a
    shared sticky directory such as /tmp, which must stay as it is for everyone else."""
    if stat.S_ISDIR(mode) and mode & stat.S_ISVTX:
        return (
            "it is a shared directory (sticky, as /tmp is) and must stay so: use one of "
            f"your own in it instead (mkdir -m 700 {os.path.join(path, 'pony')})"
        )
    return fix


def check_owner_and_mode(
    path: str | os.PathLike[str], info: os.stat_result, *, private: bool
) -> None:
    """A file (or directory) we use: ours or root's, not writable by others, and not
    accessible to them at all when `private`.  Raises UnsafePath."""
    if not trusted_owner(info.st_uid):
        fix = (
            f"remove it (rm -r {path}) or, if it is yours, 'chown {user_name(os.geteuid())} {path}'"
        )
        raise UnsafePath(
            path, f"belongs to {user_name(info.st_uid)}, not to {trusted_owners()}", fix
        )
    mode = stat.S_IMODE(info.st_mode)
    if private and mode & 0o077:
        target = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        raise UnsafePath(
            path, f"is accessible to others (mode {mode:04o})", f"run 'chmod {target:o} {path}'"
        )
    if mode & 0o022:
        raise UnsafePath(
            path,
            f"is writable by others (mode {mode:04o})",
            writable_fix(path, info.st_mode, f"run 'chmod go-w {path}'"),
        )


def check_directory(path: str, info: os.stat_result, what: str) -> None:
    """A directory on the way to `what` ("the home", "the configuration file"...): root's
    or ours, and not writable by others unless sticky.  Raises UnsafePath."""
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(path, "is not a directory", "choose another path")
    if not trusted_owner(info.st_uid):
        raise UnsafePath(
            path,
            f"belongs to {user_name(info.st_uid)}, who could replace what is below it",
            f"keep {what} in a directory owned by {trusted_owners()}",
        )
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise UnsafePath(
            path,
            f"is writable by others (mode {stat.S_IMODE(info.st_mode):04o}) without the sticky bit",
            f"run 'chmod go-w {path}'",
        )


class Found:
    """Where a walk ended: `dir_fd` (O_PATH, ours to close) is the checked directory that
    holds `name`; `real` is the whole path without any symbolic link."""

    __slots__ = ("dir_fd", "name", "real")

    def __init__(self, dir_fd: int, name: str, real: str) -> None:
        self.dir_fd, self.name, self.real = dir_fd, name, real

    def close(self) -> None:
        os.close(self.dir_fd)


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def _open_checked_dir(name: str, dir_fd: int | None, real: str, what: str) -> int:
    """Open the directory `name` (relative to `dir_fd`), never through a link, and check
    what was opened.  FileNotFoundError when it is missing."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except NotADirectoryError:  # became a link or a file since we looked
        raise UnsafePath(
            real,
            "changed while it was being checked, or is not a directory",
            "check who else can write to it",
        ) from None
    try:
        check_directory(real, os.fstat(fd), what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _split(path: str) -> deque[str]:
    return deque(part for part in path.split("/") if part not in ("", "."))


def _check_link(dir_fd: int, name: str, real: str) -> str:
    """The target of the symbolic link `name`, if root or we own it.  (In a directory
    checked as above nobody else can replace a link of ours between lstat and readlink.)"""
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not trusted_owner(info.st_uid):
        raise UnsafePath(
            real,
            f"is a symbolic link owned by {user_name(info.st_uid)}, who "
            "can point it elsewhere at any moment",
            f"name the real path instead, not another user's link (or remove it: rm {real})",
        )
    return os.readlink(name, dir_fd=dir_fd)


def locate(path: str | os.PathLike[str], what: str, *, follow_last: bool = True) -> Found:
    """Walk `path` (relative paths from the current directory) from `/` as the module
    docstring says, following only links of root's or ours (the last component's too
    when `follow_last`), and return the checked directory holding the last component.
    The last component itself is neither opened nor checked: the caller opens it
    relative to `Found.dir_fd` with O_NOFOLLOW and checks what it opened.

    `what` names the thing for messages ("the configuration file").  Raises UnsafePath,
    FileNotFoundError (a directory on the way is missing), OSError.
    """
    return _walk(os.fspath(path), what, follow_last)


def _walk(text: str, what: str, follow_last: bool) -> Found:
    parts = _split(text if text.startswith("/") else _join(os.getcwd(), text))
    fd, real, links = _open_checked_dir("/", None, "/", what), "/", 0
    try:
        while True:
            name = parts.popleft() if parts else "."
            if name == "..":
                parent = "/".join(real.split("/")[:-1]) or "/"
                new = _open_checked_dir("..", fd, parent, what)
                os.close(fd)
                fd, real = new, parent
                continue
            if parts or follow_last:
                try:
                    is_link = stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
                except FileNotFoundError:
                    if parts:
                        raise
                    is_link = False  # the last component: the caller decides
                if is_link:
                    links += 1
                    if links > MAX_LINKS:
                        raise UnsafePath(text, "has too many symbolic links", "give the real path")
                    target = _check_link(fd, name, _join(real, name))
                    parts.extendleft(reversed(_split(target)))
                    if target.startswith("/"):
                        new = _open_checked_dir("/", None, "/", what)
                        os.close(fd)
                        fd, real = new, "/"
                    continue
            if not parts:
                return Found(fd, name, real if name == "." else _join(real, name))
            new = _open_checked_dir(name, fd, _join(real, name), what)
            os.close(fd)
            fd, real = new, _join(real, name)
    except PermissionError as exc:  # a directory on the way we may not search
        os.close(fd)
        raise UnsafePath(
            real,
            f"cannot be searched ({exc.strerror})",
            f"check its permissions, or keep {what} elsewhere",
        ) from None
    except BaseException:
        os.close(fd)
        raise


def open_checked(
    path: str | os.PathLike[str], what: str, flags: int, check: str = "file", private: bool = False
) -> tuple[int, str]:
    """Open `path` (after `locate`) with `flags` | O_NOFOLLOW and check the opened object
    with fstat: `check` "file" (a regular file, ours or root's, not writable by others,
    not accessible to them when `private`) or "dir" (a directory as on the way).
    Returns (fd, real path); the caller closes the fd.

    Raises UnsafePath, FileNotFoundError, IsADirectoryError (a directory where a file was
    asked for), OSError."""
    found = locate(path, what)
    try:
        name = found.name
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=found.dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link appeared since the walk
                raise UnsafePath(
                    found.real,
                    "changed into a symbolic link while it was being checked",
                    "check who else can write to it",
                ) from None
            raise
        try:
            info = os.fstat(fd)
            if check == "dir":
                check_directory(found.real, info, what)
            elif stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", found.real)
            elif not stat.S_ISREG(info.st_mode):
                raise UnsafePath(os.fspath(path), "is not a regular file", "name a file")
            else:
                check_owner_and_mode(os.fspath(path), info, private=private)
        except BaseException:
            os.close(fd)
            raise
        return fd, found.real
    finally:
        found.close()


def read_checked(
    path: str | os.PathLike[str], what: str, *, limit: int, private: bool = False
) -> bytes:
    """The bytes (at most `limit` + 1, so that the caller can tell a file too large) of a
    file named by the user (a configuration or environment file), read from the checked
    descriptor.  O_NONBLOCK: a FIFO planted there is refused, not waited on.  Raises
    as open_checked."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
    fd, _ = open_checked(path, what, flags, private=private)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit + 1)


# -- opening below a directory ------------------------------------------------------------
Root = str | os.PathLike[str] | int


def _parts(relative: str | os.PathLike[str]) -> tuple[str, ...]:
    # The components as PurePosixPath(relative).parts, without pathlib (config.Settings
    # says why): `pb scheduler status` opens HOME/config.toml through here.
    text = os.fspath(relative)
    parts = tuple(part for part in text.split("/") if part not in ("", "."))
    if text.startswith("/") or not parts or ".." in parts:
        raise ValueError(f"not a relative path below a directory: {relative!s}")
    return parts


def _refuse_link(root: Root, relative: str | os.PathLike[str], exc: OSError) -> UnsafePath:
    shown = relative if isinstance(root, int) else os.path.join(root, relative)
    what = "not a directory" if exc.errno == errno.ENOTDIR else "a symbolic link"
    return UnsafePath(
        shown,
        "is reached through a symbolic link (or a component of it is "
        f"{what}), and pony-scheduler follows none",
        "remove the link and let pony-scheduler make the file",
    )


def open_beneath(
    root: Root,
    relative: str | os.PathLike[str],
    flags: int,
    mode: int = 0o600,
    *,
    make_dirs: bool = False,
    dir_mode: int = 0o700,
) -> int:
    """Open `relative` below the directory `root` (a path or a directory fd), following
    no symbolic link in any component, and return the new fd (the caller closes it).

    `flags` are os.open flags; O_NOFOLLOW and O_CLOEXEC are added; `mode` is for O_CREAT.
    With `make_dirs`, missing directories on the way are created with `dir_mode`
    (exactly).  (files.create_file passes the project's modes; the defaults here are the
    strict ones.)  `root`
    itself is opened as given: checking it is check_home's job.  Raises UnsafePath when
    a component is a symbolic link, ValueError for an absolute path or one with "..",
    OSError for everything else (FileNotFoundError, FileExistsError with O_EXCL...).
    """
    parts = _parts(relative)
    owned = not isinstance(root, int)  # an fd we opened, so close
    dir_fd = (
        root
        if isinstance(root, int)
        else os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    )
    try:
        for part in parts[:-1]:
            next_fd = _open_dir(dir_fd, part, root, relative, make_dirs, dir_mode)
            if owned:
                os.close(dir_fd)
            dir_fd, owned = next_fd, True
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (
                exc.errno == errno.EEXIST and _is_link(parts[-1], dir_fd)
            ):
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


def _open_dir(
    dir_fd: int,
    part: str,
    root: Root,
    relative: str | os.PathLike[str],
    make_dirs: bool,
    dir_mode: int,
) -> int:
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
            # O_DIRECTORY | O_NOFOLLOW says ENOTDIR for a link and a file alike: which
            # one decides the reason (review finding: a file was called a link).
            if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_link(part, dir_fd)):
                raise _refuse_link(root, relative, exc) from None
            if exc.errno == errno.ENOTDIR:
                raise NotADirectoryError(
                    errno.ENOTDIR, f"{part} is not a directory", str(relative)
                ) from None
            raise
    if created:
        os.fchmod(fd, dir_mode)  # exactly, whatever the umask
    return fd
