"""Simulated hosts on one machine, for the tests of several hosts on PostgreSQL.

A scheduler knows its host by machine-id(5) and the kernel's boot id, never by its
hostname (scheduler/host.py).  Each simulated host runs every `pb` command in a mount
and UTS namespace of its own (`unshare --mount --uts`, as root) where a file of its own is
bind-mounted over /etc/machine-id and over /proc/sys/kernel/random/boot_id and the
hostname is its name: the daemons it starts (scheduler, run keeper) and their jobs keep
that identity.  Processes and files are shared with the test, so signals, pid files and a
shared ledger file work as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pony_scheduler.lifecycle.pidfile import proc_start_time
from tests.conftest import Pb, Result, wait_for

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
# $1 machine id file, $2 boot id file, $3 hostname, $4 a cgroup's cgroup.procs to join
# first (or ""), $5 and $6 a directory of its own to mount over a path every host names
# alike (or ""); the rest is the command.
ENTER = (
    'm=$1 b=$2 h=$3 g=$4 d=$5 s=$6; shift 6; { [ -z "$g" ] || echo $$ > "$g"; } && '
    'mount --bind "$m" /etc/machine-id && '
    'mount --bind "$b" /proc/sys/kernel/random/boot_id && '
    '{ [ -z "$d" ] || mount --bind "$d" "$s"; } && hostname "$h" && exec "$@"'
)


def need_namespaces() -> None:
    """Skip (locally) or fail (CI runs as root) where hosts cannot be simulated."""
    why = None
    if os.geteuid() != 0:
        why = "simulated hosts need root (unshare --mount --uts, bind mounts)"
    elif not shutil.which("unshare"):
        why = "simulated hosts need unshare(1) (util-linux)"
    elif not Path("/etc/machine-id").is_file():
        why = "simulated hosts need an /etc/machine-id to mount over"
    elif (
        subprocess.run(
            ["unshare", "--mount", "--uts", "true"], capture_output=True, timeout=30
        ).returncode
        != 0
    ):
        why = "unshare --mount --uts is not permitted here (no CAP_SYS_ADMIN?)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


class HostPb(Pb):
    """`pb` as run on the simulated host `name` (its own home, machine id and boot id);
    `faketime` (e.g. "+65s") runs it, and what it starts, under libfaketime.  A clone
    (a VM cloned with its disk) gets `machine_id` and `home_at`: the path its home is
    mounted at, the same on every clone (the test reads it at `home`)."""

    def __init__(
        self,
        home: Path,
        name: str,
        *,
        faketime: str | None = None,
        cgroup: Freezer | None = None,
        machine_id: str | None = None,
        home_at: Path | None = None,
    ) -> None:
        super().__init__(home)
        self.name = name
        self.cgroup = cgroup  # every process this host starts lives in it
        self.home_at = home_at
        if home_at is not None:
            self.env["PONYBUNNY_HOME"] = str(home_at)
        ids = home.parent / f".{name}-ids"
        ids.mkdir(mode=0o700, exist_ok=True)
        self.machine_id = machine_id or uuid.uuid4().hex
        self.boot_id = str(uuid.uuid4())
        self.machine_file = ids / "machine-id"
        self.boot_file = ids / "boot_id"
        self.machine_file.write_text(self.machine_id + "\n")
        self.boot_file.write_text(self.boot_id + "\n")
        if faketime is not None:
            if not FAKETIME.exists():
                pytest.skip("libfaketime is not installed")
            # Only the wall clock: the daemons wait on the monotonic clock.
            self.env.update(
                LD_PRELOAD=str(FAKETIME),
                FAKETIME=faketime,
                FAKETIME_DONT_FAKE_MONOTONIC="1",
                FAKETIME_NO_CACHE="1",
            )

    def argv(self, *args: str) -> list[str]:
        return [
            "unshare",
            "--mount",
            "--uts",
            "--",
            "sh",
            "-c",
            ENTER,
            "host",
            str(self.machine_file),
            str(self.boot_file),
            self.name,
            str(self.cgroup.procs) if self.cgroup else "",
            str(self.home) if self.home_at else "",
            str(self.home_at or ""),
            sys.executable,
            "-m",
            "pony_scheduler",
            *args,
        ]

    def __call__(
        self,
        *args: str,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> Result:
        proc = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
        self.remember()
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"[{self.name}] pb {' '.join(args)} exited {proc.returncode}:\n{result.all}"
            )
        assert "Traceback" not in result.all, result.all
        return result


class Freezer:
    """A cgroup whose processes (a simulated host's daemons and jobs) can be frozen whole
    and thawed: cgroup v2's cgroup.freeze, else the v1 freezer controller.  Made below
    the test's own group (as root); processes started in it stay in it or below."""

    def __init__(self, name: str) -> None:
        from pony_scheduler.keeper import cgroups

        self.path: Path | None = None
        self.version = 0
        found = [h for h in cgroups.discover() if h.version == 2 or "freezer" in h.controllers]
        for hierarchy in sorted(found, key=lambda h: -h.version):  # v2 first
            path = Path(hierarchy.own) / name
            control = "cgroup.freeze" if hierarchy.version == 2 else "freezer.state"
            try:
                path.mkdir()
            except OSError:
                continue
            if (path / control).exists():
                self.path, self.version = path, hierarchy.version
                break
            path.rmdir()
        if self.path is None:
            why = "no cgroup freezer (v2 cgroup.freeze or v1 freezer) can be made here"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)

    @property
    def procs(self) -> Path:
        assert self.path is not None
        return self.path / "cgroup.procs"

    def frozen(self) -> bool:
        assert self.path is not None
        if self.version == 2:
            return "frozen 1" in (self.path / "cgroup.events").read_text()
        return (self.path / "freezer.state").read_text().strip() == "FROZEN"

    def freeze(self) -> None:
        """Freeze every process in the group; returns once the kernel says it is done."""
        assert self.path is not None
        if self.version == 2:
            (self.path / "cgroup.freeze").write_text("1")
        else:
            (self.path / "freezer.state").write_text("FROZEN")
        assert wait_for(self.frozen, 60), "the cgroup did not freeze"

    def thaw(self) -> None:
        assert self.path is not None
        if self.version == 2:
            (self.path / "cgroup.freeze").write_text("0")
        else:
            (self.path / "freezer.state").write_text("THAWED")

    def remove(self) -> None:
        """Thaw, then remove the group and the empty groups below it (what the run
        keeper left, if it was killed); a group that still has processes stays."""
        if self.path is None or not self.path.exists():
            return
        self.thaw()
        for below in sorted(self.path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if below.is_dir():
                with contextlib.suppress(OSError):
                    below.rmdir()
        wait_for(lambda: not self._try_rmdir(), 10)

    def _try_rmdir(self) -> bool:
        """True while the group still exists."""
        assert self.path is not None
        with contextlib.suppress(OSError):
            self.path.rmdir()
        return self.path.exists()


def verified_pid(home: Path, name: str) -> int:
    """The PID of daemon `name` (scheduler, keeper) of `home`, checked against the
    /proc start time its metadata file recorded: never signal a reused PID."""
    pid = int((home / f"{name}.pid").read_text().strip())
    meta = json.loads((home / f"{name}.json").read_text())
    assert meta.get("pid") == pid and proc_start_time(pid) == meta.get("procStartTime"), (
        f"{name} PID {pid} of {home} is not the process its metadata describes"
    )
    return pid


def runs_of(pb: Pb) -> list[dict[str, Any]]:
    result = pb("runs", "--json", "-n", "100")
    assert result.code == 0, result.all
    return sorted(json.loads(result.out), key=lambda r: r["id"])


def wait_runs(pb: Pb, predicate: Any, timeout: float = 90) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal found
        found = runs_of(pb)
        return bool(predicate(found))

    assert wait_for(check, timeout, interval=0.3), found
    return found


def two_homes(
    pb: Pb, tmp_path: Path, pg_url: str, *, other_host: bool = False, lease: str = "10"
) -> Pb:
    """A second home on the same database: on this host, or on a simulated other one
    (a host never stops processes of a run it rescues from another host)."""
    home = tmp_path / "second"
    home.mkdir(mode=0o700)
    second = HostPb(home, "second") if other_host else Pb(home)
    for runner in (pb, second):
        runner.env.update(PONYBUNNY_DB=pg_url, PONYBUNNY_LEASE=lease)
    return second


def text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
