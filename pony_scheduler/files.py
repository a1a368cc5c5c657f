"""The home and the files in it: strict modes before use, and one way to create files.

Whoever can change a file the scheduler reads (its database, its configuration) or
redirect a file it writes (a symbolic link planted as its log) can make it run commands,
or overwrite files, as its user, often root.  So, as OpenSSH's StrictModes does for
~/.ssh (sshd_config(5); `safe_path()` in OpenSSH's misc.c):

* the path to the home, to a configuration, environment or database file: every
  directory on the way is root's or the user's and not writable by others unless
  sticky (a home under /tmp works), every symbolic link on the way is root's or the
  user's, and each check is made on the descriptor then used (pony_scheduler/pathtrust.py);
* `check_home(home)`: the home, every file we use in it and each job's directory in
  runs/ belong to the invoking user (or root) and are not group- or world-writable (a
  symbolic link of another user's at any name is refused too); private files (tokens, sockets, the
  keeper's journal) are not accessible to others at all, nor is the database when others
  may enter the home; none of our files is a symbolic link.  A few stat calls: cheap
  enough for every command.
* `check_database_file(path)`: the same for an SQLite file and its directory.
* `open_beneath(root, relative, ...)` / `create_file(...)`: open or create a file below a
  directory without following a symbolic link in any component: each component is
  opened relative to its parent's descriptor with O_NOFOLLOW (openat(2)), new files are
  made with O_EXCL (or appended to after checking who owns them) and get exactly the
  mode asked for, whatever the umask.  The run keeper makes run outputs with it too.
* `write_atomic(directory, name, data, mode)`: a whole new file or none (a temporary
  file made with O_EXCL, renamed over the old one).

One set of modes for everything: the home and the directories in it (runs/, runs/JOB/,
debug.logins/) 0700; private files (database, tokens, sockets, login codes, start locks,
the keeper's journal) 0600; logs, run outputs, pid and metadata files 0640.

A refusal is an `UnsafePath` whose message is one line: the path, what is wrong and the
command that fixes it.  No heavy imports here: `pb scheduler status` and the run keeper
run this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from pony_scheduler.errors import PonyError
from pony_scheduler.pathtrust import (
    Root,
    UnsafePath,
    check_owner_and_mode,
    locate,
    open_beneath,
    open_checked,
    trusted_owner,
    trusted_owners,
    user_name,
    writable_fix,
)

# Defined in pathtrust (walking paths, opening below a directory); imported from here.
__all__ = ["UnsafePath", "open_beneath"]

HOME_MODE = 0o700
DIR_MODE = 0o700  # directories below the home: runs/, runs/JOB/, debug.logins/
PRIVATE_MODE = 0o600  # database, tokens, sockets, login codes, start locks, the journal
SHARED_MODE = 0o640  # logs, run outputs, pid files, metadata
HOME_WHAT = "the home (PONYBUNNY_HOME)"

_SERVICES = ("scheduler", "gateway", "debug")
# Names we use in the home: name -> (kind, privacy).  kind: file | socket | dir.
# privacy: "shared" (others may read), "private" (never accessible to others: tokens,
# sockets, login codes), "data" (the database: not readable by others when others may
# enter its directory; a pony.db an older version made 0644 in a 0700 home is not exposed).
KNOWN: dict[str, tuple[str, str]] = {
    **{f"{s}.{ext}": ("file", "shared") for s in _SERVICES for ext in ("pid", "json", "log")},
    **{f".{s}.start.lock": ("file", "private") for s in (*_SERVICES, "keeper")},
    "config.toml": ("file", "shared"),
    "gateway.token": ("file", "private"),
    "gateway.read-token": ("file", "private"),
    **{f"pony.db{suffix}": ("file", "data") for suffix in ("", "-wal", "-shm", "-journal")},
    "gateway.sock": ("socket", "private"),
    "gateway.api.sock": ("socket", "private"),
    "runs": ("dir", "shared"),
    "debug.logins": ("dir", "private"),
    # The run keeper's (pony_scheduler/keeper/protocol.py): its journal holds outcomes
    # and environments' secrets may reach its log; the socket is its own uid's only.
    **{f"keeper.{ext}": ("file", "shared") for ext in ("pid", "json", "log")},
    "keeper.journal": ("file", "private"),
    "keeper.kept": ("file", "private"),  # which leftovers a later keeper must spare
    "keeper.sock": ("socket", "private"),
}


def _others_may_enter(mode: int) -> bool:
    """May users other than the owner reach the files of a directory of this mode?"""
    return bool(mode & 0o011)


_KIND_OK = {"file": stat.S_ISREG, "socket": stat.S_ISSOCK, "dir": stat.S_ISDIR}
_KIND_NAMES = {"file": "a file", "socket": "a socket", "dir": "a directory"}


def _kind_of(mode: int) -> str:
    """What a file of this mode is, for messages ("a FIFO (named pipe)")."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a file"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "a device"


# -- checks --------------------------------------------------------------------------------
def check_directory_chain(directory: str | os.PathLike[str], what: str = HOME_WHAT) -> None:
    """Every directory from / down to `directory`, and every symbolic link on the way, as
    pathtrust.locate checks them (root's or ours; directories not writable by others
    unless sticky).  `what` is what the directory holds, for messages.

    Raises UnsafePath.  Missing components are skipped: they are created by us later.
    """
    try:
        fd, _ = open_checked(directory, what, os.O_PATH | os.O_DIRECTORY, check="dir")
    except FileNotFoundError:
        return
    os.close(fd)


def check_home(home: str | os.PathLike[str], *, outputs: bool = True) -> None:
    """The StrictModes check of a home (see the module docstring); raises UnsafePath.
    `outputs` False leaves out the job directories below runs/: commands that only
    manage the daemons (stop, status, logs) use no output, and a stray entry there must
    not keep an admin from stopping the scheduler (review finding).

    A home that does not exist yet is fine when the directories that will hold it are.
    PermissionError (PonyError, exit 4) when the home cannot be read at all.  The home
    and its entries are checked through descriptors (pathtrust.locate), and every
    component of its path is root's or ours: nobody else can redirect it afterwards.
    """
    try:
        found = locate(home, HOME_WHAT)
    except FileNotFoundError:
        return  # a directory above is missing: reported by whoever makes the home
    try:
        try:
            home_fd = os.open(
                found.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=found.dir_fd
            )
        except FileNotFoundError:
            return
    finally:
        found.close()
    try:
        _check_home_itself(home, os.fstat(home_fd))
        info = os.fstat(home_fd)
        try:
            read_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=home_fd)
        except PermissionError:
            raise PonyError(
                f"cannot read home {home}: permission denied; run this as its owner", 4
            ) from None
    finally:
        os.close(home_fd)
    try:
        open_home = _others_may_enter(info.st_mode)
        for entry in list(os.scandir(read_fd)):
            _check_entry(os.path.join(home, entry.name), entry, open_home)
        if outputs:
            _check_runs(os.path.join(home, "runs"), read_fd)
    finally:
        os.close(read_fd)


def _check_runs(runs: str, home_fd: int) -> None:
    """Each directory directly below runs/ (one per job) is ours, not writable by others,
    and no entry there is a symbolic link: one planted while the home was open would
    otherwise receive, or redirect, the outputs written into it (or have `pb job remove`
    delete files where it points).  Other files are left alone.  Not the output files themselves
    (there may be 100,000): those are opened without following links and checked on use
    (open_run_output, create_file)."""
    try:
        fd = os.open(
            "runs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=home_fd
        )
    except (FileNotFoundError, NotADirectoryError):
        return  # none yet (a link or a file there was refused above)
    try:
        _check_job_dirs(runs, fd)
    finally:
        os.close(fd)


def _check_job_dirs(directory: str, fd: int) -> None:
    """The entries of runs/ (or of runs/.db-KEY/, the job directories of a database other
    than the home's pony.db: review finding, a link there was followed by `pb job
    remove`): no symbolic link, every directory ours and not writable by others."""
    for entry in os.scandir(fd):
        path = os.path.join(directory, entry.name)
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            why = "is a symbolic link, and pony-scheduler follows none in its home"
            raise UnsafePath(path, why, f"remove it (rm {path})")
        if not stat.S_ISDIR(info.st_mode):
            # A file a job wrote here (review finding: `echo data > runs/results.csv`
            # stopped every command and any start): no output goes through it, a run
            # of a job of that name gets "not a directory" on its own output.
            continue
        check_owner_and_mode(path, info, private=False)
        if entry.name.startswith(".db-") and directory.endswith("/runs"):
            try:
                inner = os.open(
                    entry.name,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=fd,
                )
            except FileNotFoundError:
                continue
            try:
                _check_job_dirs(path, inner)
            finally:
                os.close(inner)


def _check_home_itself(home: str | os.PathLike[str], info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(home, "is not a directory", "set PONYBUNNY_HOME to a directory")
    if not trusted_owner(info.st_uid):
        # Not "chown -R": that would adopt whatever was planted in it (a pony.db with
        # jobs, a token).
        raise UnsafePath(
            home,
            f"belongs to {user_name(info.st_uid)}, not to "
            f"{trusted_owners()}, so it is not ours and must not be used as "
            f"it is",
            f"use a home of your own (PONYBUNNY_HOME), and move this "
            f"one aside (mv {home} {home}.untrusted) or check every file in it "
            "before taking it over",
        )
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise UnsafePath(
            home,
            f"is writable by others (mode {stat.S_IMODE(info.st_mode):04o})",
            writable_fix(home, info.st_mode, f"run 'chmod 700 {home}'"),
        )


def _check_entry(path: str, entry: os.DirEntry[str], open_home: bool) -> None:
    known = KNOWN.get(entry.name)
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return  # removed meanwhile (a temporary file)
    if stat.S_ISLNK(info.st_mode):
        if known is None:
            # Not a name we use, so never followed; but one another user planted is
            # refused as a file of theirs would be: the home was open to them.
            _check_link_owner(path, info)
            return
        raise UnsafePath(
            path,
            "is a symbolic link, and pony-scheduler follows none in its home",
            f"replace it with the real {known[0]} (rm {path})",
        )
    if known is not None:
        kind, privacy = known
        if not _KIND_OK[kind](info.st_mode):
            remove = "rmdir" if stat.S_ISDIR(info.st_mode) else "rm"
            raise UnsafePath(
                path,
                f"is {_kind_of(info.st_mode)}, not {_KIND_NAMES[kind]}",
                f"remove it ({remove} {path})",
            )
        private = privacy == "private" or (privacy == "data" and open_home)
        check_owner_and_mode(path, info, private=private)
    else:
        check_owner_and_mode(path, info, private=False)


def _check_link_owner(path: str, info: os.stat_result) -> None:
    if not trusted_owner(info.st_uid):
        raise UnsafePath(
            path,
            f"is a symbolic link that belongs to {user_name(info.st_uid)}, not to "
            f"{trusted_owners()}",
            f"remove it (rm {path})",
        )


def check_file(
    path: str | os.PathLike[str], *, private: bool = False, what: str = "the file"
) -> None:
    """A file named on the command line: it and the path to it follow the home's
    ownership rule (pathtrust).  Raises UnsafePath; FileNotFoundError when it does not
    exist.  To read such a file, use pathtrust.read_checked: it checks what it reads."""
    fd, _ = open_checked(path, what, os.O_PATH, private=private)
    os.close(fd)


def check_database_file(path: str | os.PathLike[str], *, create: bool = False) -> str:
    """An SQLite database (`--db PATH`, the home's pony.db too): the path to it as for the
    home (pathtrust.locate), its directory not writable by others (SQLite makes its -wal,
    -shm and journal files there), and the database and those files ours, not writable
    by others, not readable by others either when others may enter the directory, and no
    symbolic links.  With `create`, a missing database is made here, 0600 (SQLite would
    make it 0644), unless the directory cannot be written (a read-only home).

    Returns the database's real path (no symbolic link in it, every part root's or ours)
    for SQLite, which can only be given a name.  Raises UnsafePath, FileNotFoundError
    (its directory is missing)."""
    found = locate(path, "the database", follow_last=False)
    try:
        directory = os.path.dirname(found.real) or "/"
        info = os.fstat(found.dir_fd)
        if info.st_mode & 0o022:
            raise UnsafePath(
                directory,
                f"holds the database and is writable by others "
                f"(mode {stat.S_IMODE(info.st_mode):04o})",
                writable_fix(
                    directory,
                    info.st_mode,
                    f"run 'chmod go-w {directory}' or keep the database elsewhere",
                ),
            )
        if create:
            _create_database(found.dir_fd, found.name)
        exposed = _others_may_enter(info.st_mode)
        for suffix in ("", "-wal", "-shm", "-journal"):
            candidate = os.path.join(directory, found.name + suffix)
            try:
                entry = os.stat(found.name + suffix, dir_fd=found.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(entry.st_mode):
                raise UnsafePath(candidate, "is a symbolic link", "point --db at the real file")
            if not stat.S_ISREG(entry.st_mode):
                raise UnsafePath(candidate, "is not a regular file", "point --db at a file")
            check_owner_and_mode(candidate, entry, private=exposed)
        return found.real
    finally:
        found.close()


def _create_database(dir_fd: int, name: str) -> None:
    try:
        os.close(create_file(dir_fd, name, PRIVATE_MODE))
    except FileExistsError:
        pass  # there already, or made meanwhile by another process: checked next
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise  # a read-only home: read-only commands still work


# -- opening and creating ------------------------------------------------------------------
def below_runs(home: str | os.PathLike[str], path: str | None) -> str | None:
    """`path` relative to HOME/runs if it lies below it (by its text, normalized: no
    file is looked at), else None: an output path of another home, or a forged one."""
    runs = os.path.join(home, "runs")
    normal = os.path.normpath(path) if path else ""
    return normal[len(runs) + 1 :] if normal.startswith(runs + "/") else None


# The start of the note a run gets when its keeper could not create its output file
# (keeper/output.py): whatever is at its path then is not its own.
NEVER_CREATED = "output incomplete: cannot create "


def output_file_may_be_the_runs(state: str, tail: object, reason: object = None) -> bool:
    """Whether a file at a run's output path can be that run's (its state, its tail and
    reason as recorded): not before the run starts - its keeper renames a file another
    database left there to NAME.stale at the launch (keeper/output.py) - not once it has
    ended having printed nothing (its keeper makes the file at the first byte only), and
    not when its keeper could not create it (the old file could not be moved).  `pb runs
    output` and the API show no other (review: a new run showed the old file)."""
    if state == "queued" or NEVER_CREATED in str(reason or ""):
        return False
    return state == "running" or bool(tail)


def open_run_output(home: str | os.PathLike[str], path: str | None) -> int:
    """A run's output file, opened for reading: only a file below HOME/runs (the path
    comes from the database, which must not become a way to read /etc/shadow), reached
    without following a link in any component, runs/ included (open_beneath), and a
    regular file of ours (verify_fd).  The caller closes the fd.

    Raises UnsafePath (elsewhere, a link, not ours), FileNotFoundError (none yet: the file
    is made at the run's first byte of output), OSError."""
    relative = below_runs(home, path)
    if relative is None:
        raise UnsafePath(
            str(path),
            f"is not a file below {os.path.join(home, 'runs')}",
            "pony-scheduler reads run output only there: a run of another home (another "
            "host sharing the database) is read there, and 'pb runs show' has its last "
            "4 KiB; else the database holding this path was changed by someone else",
        )
    fd = open_beneath(home, f"runs/{relative}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        verify_fd(fd, path or "")
    except BaseException:
        os.close(fd)
        raise
    return fd


def output_dir(home: str, db: str) -> str:
    """Where runs' output files go: HOME/runs for the home's own database (HOME/pony.db,
    however spelled), HOME/runs/.db-KEY for any other, KEY a hash of its URL without
    the password (keeper/dbtag.py).  Run ids are a database's own: two databases used in
    one home (a move to PostgreSQL, a second SQLite file) wrote their run 1's output to
    one file, and one showed, and removing a job in one deleted, the other's (review
    finding).  No job is named .db-* (a name starts with a letter or a digit).  Readers
    take each run's path from its row, so runs written before keep theirs."""
    from pony_scheduler.keeper.dbtag import key_of
    from pony_scheduler.store.engine import safe_url, sqlite_file

    runs_dir = os.path.join(home, "runs")
    file = sqlite_file(db)
    if file is not None and os.path.realpath(file) == os.path.realpath(f"{home}/pony.db"):
        return runs_dir
    return os.path.join(runs_dir, f".db-{key_of(safe_url(db))}")


def unlink_output(path: str, directory: str, run_id: int) -> None:
    """Remove run `run_id`'s output file, which must be DIRECTORY/JOB/RUN_ID.log, where
    DIRECTORY is this home's and this database's (output_dir), compared by real path:
    the path comes from the database, which must not become a way to delete any other
    file (review findings: a forged path deleted a file outside the home, another job's
    output, another database's).  Never through a symbolic link: DIRECTORY and JOB are
    opened with O_NOFOLLOW and the file unlinked relative to JOB (review finding: a link
    at runs/.db-KEY/JOB made `pb job remove` delete the files it pointed to).  Nothing to
    do when it, or JOB, is not there (or JOB is a file: its output was never created).
    Raises UnsafePath for a link on the way or a path that is not that file, OSError
    otherwise."""
    job_dir, name = os.path.split(path)
    parent, job = os.path.split(job_dir)
    if (
        "\0" in path  # os calls raise ValueError (review finding: a traceback at every start)
        or name != f"{run_id}.log"
        or not job
        or job.startswith(".")
        or os.path.realpath(parent) != os.path.realpath(directory)
    ):
        raise UnsafePath(path, f"is not run {run_id}'s output file in {directory}", "")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    dir_fd = os.open(os.path.realpath(directory), flags)
    try:
        try:
            job_fd = os.open(job, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            if stat.S_ISLNK(os.lstat(job, dir_fd=dir_fd).st_mode):
                raise UnsafePath(path, "is reached through a symbolic link", "") from None
            return  # a file where the job's directory would be: no output was made
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=job_fd)
        finally:
            os.close(job_fd)
    finally:
        os.close(dir_fd)


def verify_fd(fd: int, shown: str | os.PathLike[str], *, private: bool = False) -> None:
    """An opened file is a regular file, ours (or root's), not writable by others (not
    accessible to them when `private`), and has no other hard link.  Raises UnsafePath."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(shown, "is not a regular file", f"remove it (rm -r {shown})")
    check_owner_and_mode(shown, info, private=private)
    if info.st_nlink > 1:
        raise UnsafePath(
            shown,
            f"has {info.st_nlink} hard links; another name could change it",
            f"replace it with a copy (cp {shown} x && mv x {shown})",
        )


def create_file(
    root: Root,
    relative: str | os.PathLike[str],
    mode: int,
    *,
    exclusive: bool = True,
    append: bool = False,
    make_dirs: bool = False,
    dir_mode: int = DIR_MODE,
) -> int:
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


def write_atomic(directory: str | os.PathLike[str], name: str, data: bytes, mode: int) -> None:
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


def read_private(directory: str | os.PathLike[str], name: str, *, limit: int = 4096) -> bytes:
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
    """Create the home (exactly HOME_MODE) in its checked parent directory (pathtrust);
    True when we created it.  Raises UnsafePath, FileNotFoundError (its parent is
    missing), OSError."""
    found = locate(home, HOME_WHAT)
    try:
        try:
            os.mkdir(found.name, HOME_MODE, dir_fd=found.dir_fd)
        except FileExistsError:
            return False
        fd = os.open(
            found.name,
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=found.dir_fd,
        )
        try:
            os.fchmod(fd, HOME_MODE)  # exactly, whatever the umask
        finally:
            os.close(fd)
        return True
    finally:
        found.close()
