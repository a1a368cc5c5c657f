"""Shared fixtures: a temporary PONYBUNNY_HOME, a way to run `pb`, and cleanup by PID."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pony_scheduler.lifecycle.pidfile import proc_start_time

# In CI the property tests replay the same examples every run: a new failing example
# found there would be a real bug, but it should be found locally, not make CI flaky.
if os.environ.get("CI"):
    from hypothesis import settings as hypothesis_settings

    hypothesis_settings.register_profile("ci", derandomize=True, database=None)
    hypothesis_settings.load_profile("ci")

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVICES = ("scheduler", "gateway", "debug")
# Every process with a pid file in the home: the services and the run keeper.
DAEMONS = (*SERVICES, "keeper")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def all(self) -> str:
        return self.out + self.err


class Pb:
    """Runs `python -m pony_scheduler` against one temporary home."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PONYBUNNY_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        self.env["PONYBUNNY_HOME"] = str(home)
        self.pids: set[int] = set()

    def __call__(
        self,
        *args: str,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "pony_scheduler", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
        self.remember()
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"pb {' '.join(args)} exited {proc.returncode}:\n{result.all}")
        assert "Traceback" not in result.all, result.all
        return result

    def popen(
        self, *args: str, env: dict[str, str] | None = None, **kwargs: object
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pony_scheduler", *args],
            text=True,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            **kwargs,
        )  # type: ignore[call-overload]
        self.pids.add(proc.pid)
        return proc  # type: ignore[no-any-return]

    def remember(self) -> None:
        """Note every daemon PID seen so that teardown can kill what a test left."""
        for name in DAEMONS:
            with contextlib.suppress(OSError, ValueError):
                self.pids.add(int((self.home / f"{name}.pid").read_text().strip()))

    def pid(self, service: str = "scheduler") -> int:
        pid = int((self.home / f"{service}.pid").read_text().strip())
        self.pids.add(pid)
        return pid

    def cleanup(self) -> None:
        self.remember()
        keeper = self.keeper_pid()
        for pid in self.pids - {keeper}:
            if _is_ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if keeper is not None and _is_ours(keeper):
            # SIGTERM: the keeper stops every run's whole tree, then exits; SIGKILL would
            # leave the runs' processes behind.
            with contextlib.suppress(ProcessLookupError):
                os.kill(keeper, signal.SIGTERM)
            if not wait_dead(keeper, 20):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(keeper, signal.SIGKILL)
        for pid in self.pids:
            wait_dead(pid, 5)

    def keeper_pid(self) -> int | None:
        try:
            return int((self.home / "keeper.pid").read_text().strip())
        except (OSError, ValueError):
            return None


def _is_ours(pid: int) -> bool:
    """Only kill processes this test run started: python running pony_scheduler."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"pony_scheduler" in cmdline


def alive(pid: int) -> bool:
    """Running and not a zombie (the product's own /proc reading)."""
    return proc_start_time(pid) is not None


def wait_dead(pid: int, timeout: float) -> bool:
    return wait_for(lambda: not alive(pid), timeout)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def pb(home: Path) -> Iterator[Pb]:
    runner = Pb(home)
    try:
        yield runner
    finally:
        runner.cleanup()


def _pg_available() -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI")
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    import psycopg

    name = f"pony_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- a second, unprivileged user, and read-only homes (tests/integration/test_security.py) --
OTHER_USER = "pony-attacker"


def _root_only(why: str) -> None:
    """Skip on a workstation; CI runs as root, where this is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI runs the tests as root)")
    pytest.skip(why)


@dataclass(frozen=True)
class OtherUser:
    """Another local account: what the security tests attack as.  Runs programs with its
    uid and gid only (no supplementary groups), a minimal environment, cwd /."""

    name: str
    uid: int
    gid: int
    python: str  # an interpreter this user may run (the standard library is enough)

    def run(
        self, argv: list[str], *, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8", **(env or {})},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def python_code(
        self, code: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run([self.python, "-c", code, *args], timeout=timeout)

    def popen(self, code: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.python, "-u", "-c", code, *args],
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _usable_python(uid: int, gid: int) -> str | None:
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if not candidate:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [candidate, "-c", "import http.client, socket"],
                user=uid,
                group=gid,
                extra_groups=[],
                cwd="/",
                capture_output=True,
                timeout=30,
            )
            if result.returncode == 0:
                return candidate
    return None


@pytest.fixture(scope="session")
def other_user() -> OtherUser:
    """The unprivileged account `pony-attacker`, created (useradd) when missing."""
    if os.geteuid() != 0:
        _root_only("the tests as another user need root (to create and become that user)")
    try:
        entry = pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                OTHER_USER,
            ],
            check=False,  # 9: made meanwhile by another test process (pytest-xdist)
            capture_output=True,
            timeout=60,
        )
        entry = pwd.getpwnam(OTHER_USER)
    python = _usable_python(entry.pw_uid, entry.pw_gid)
    if python is None:
        _root_only(f"no Python interpreter that {OTHER_USER} may run")
    assert python is not None
    return OtherUser(OTHER_USER, entry.pw_uid, entry.pw_gid, python)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that every user may enter (0755, ours): homes there are
    reachable by the other user, as a home under /home/alice is by her neighbours."""
    path = Path(tempfile.mkdtemp(prefix="pony-sec-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_only_available() -> None:
    """Skip (fail in CI) unless we can make a private mount namespace (root, unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        _root_only("a read-only home needs root and unshare(1)")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        _root_only(f"unshare --mount does not work here: {probe.stderr.decode().strip()}")


def pb_read_only(pb: Pb, *args: str, timeout: float = 60) -> Result:
    """`pb ARGS` with the home mounted read-only (a bind mount in a private mount
    namespace: root ignores file modes, not a read-only mount)."""
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            script,
            "sh",
            str(pb.home),
            sys.executable,
            "-m",
            "pony_scheduler",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=pb.env,
        stdin=subprocess.DEVNULL,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in result.all, result.all
    return result
