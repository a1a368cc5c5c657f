"""Reaching the keeper of a home, and starting one: the plumbing under KeeperClient.

Starting: the client makes a pipe and runs `python -m pony_scheduler.keeper --home HOME
--ready-fd N` in a new session with no other inherited fd (close_fds), stdout and stderr
on keeper.log, the service manager's variables (NOTIFY_SOCKET, ...) removed; the process
forks once more and the keeper answers READY, RUNNING or FAILED on the pipe (daemon.py).
Starts are serialized by HOME/.keeper.start.lock (flock), and the keeper itself holds
keeper.pid locked, so concurrent starts leave exactly one keeper.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from pony_scheduler.keeper.protocol import LOG_FILE, SOCKET_FILE, START_LOCK
from pony_scheduler.waiting import pause, wait_child

_SERVICE_VARS = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


class StartFailed(Exception):
    """The keeper reported it could not start (or went without a word); str(): why."""


class StartBusy(Exception):
    """Another process kept the start lock until the deadline."""


def dial(home: Path) -> socket.socket:
    """Connect to HOME/keeper.sock.  A path too long for sun_path (108 bytes) is reached
    through /proc/self/fd/N/ (N: the home, opened), or - where /proc/self belongs to
    root, in a process that changed its uid - through a symlink in a private temporary
    directory."""
    path = str(home / SOCKET_FILE)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if len(os.fsencode(path)) < 100:
            sock.connect(path)
        else:
            connect_long(sock, home)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def connect_long(sock: socket.socket, home: Path) -> None:
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{SOCKET_FILE}")
        return
    except PermissionError:
        pass
    finally:
        os.close(fd)
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="pb-")
    try:
        os.symlink(home / SOCKET_FILE, f"{scratch}/s")
        sock.connect(f"{scratch}/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def start_keeper(
    home: Path, containment: str | None, idle_exit_s: float | None, deadline: float
) -> None:
    """Start a keeper unless one is (being) started; returns once it is ready or another
    keeper holds the home.  Raises KeeperStartError with the keeper's reason."""
    lock = os.open(home / START_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StartBusy(
                        f"another process keeps starting the keeper of {home}"
                    ) from None
                pause(0.01)
        with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
            dial(home).close()
            return  # someone else started it while we waited for the lock
        answer = spawn(home, containment, idle_exit_s, deadline)
        if answer.startswith("FAILED"):
            # Its own reason says it all; its log's lines repeat it (review: the reason
            # four times over, in one line with the log's newlines escaped).
            why = answer[7:].strip()
            raise StartFailed(
                f"the keeper failed to start: {why}"
                if why
                else "the keeper failed to start" + log_tail(home)
            )
        if answer.startswith("RUNNING"):
            pause(0.02)  # a keeper that is exiting still holds the lock: try again
        elif not answer.startswith("READY"):
            raise StartFailed("the keeper exited without saying why" + log_tail(home))
    finally:
        os.close(lock)


def spawn(home: Path, containment: str | None, idle_exit_s: float | None, deadline: float) -> str:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    argv = [
        sys.executable,
        "-m",
        "pony_scheduler.keeper",
        "--home",
        str(home),
        "--ready-fd",
        str(write_end),
    ]
    if containment:
        argv += ["--containment", containment]
    if idle_exit_s is not None:
        argv += ["--idle-exit", str(idle_exit_s)]
    env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARS}
    log_fd = os.open(
        home / LOG_FILE,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o640,
    )
    try:
        proc = subprocess.Popen(
            argv,
            pass_fds=(write_end,),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            cwd=home,
            env=env,
        )
    finally:
        os.close(write_end)
        os.close(log_fd)
    try:
        # The intermediate exits at once (it only forks the keeper).
        if wait_child(proc.pid, max(0.1, deadline - time.monotonic())) is None:
            return "FAILED not ready in time"
        proc.returncode = 0  # reaped here: Popen must not wait for it again
        answer = b""
        while not answer.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
                return "FAILED not ready in time"
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            answer += chunk
        return answer.decode(errors="replace").strip()
    finally:
        os.close(read_end)


def log_tail(home: Path, lines: int = 5) -> str:
    try:
        text = (home / LOG_FILE).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return ("\n" + "\n".join(text[-lines:])) if text else ""
