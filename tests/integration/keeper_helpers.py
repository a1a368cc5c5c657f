"""Shared by the keeper's integration tests: real keepers in temporary homes, waiting for
outcomes, finding a run's processes, and cleaning up by verified PID."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pony_scheduler.keeper import cgroups
from pony_scheduler.keeper.client import KeeperClient, KeeperGone
from pony_scheduler.keeper.containment import home_group_name
from pony_scheduler.keeper.protocol import Event, Launch, Outcome, Started
from pony_scheduler.lifecycle.pidfile import proc_start_time
from tests.conftest import wait_for

# auto: cgroup2 as root here; cgroup1: forced, where v1 hierarchies are mounted (this
# machine is a hybrid); pgroup: the fallback, forced.
CONTAINMENTS = ("auto", "cgroup1", "pgroup")
ENV = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
DEADLINE = 60.0  # generous: a loaded 2-core machine


def keeper_pid(home: Path) -> int | None:
    """The PID in keeper.pid if it is still the keeper that wrote keeper.json (start time
    checked: never signal a reused PID)."""
    try:
        pid = int((home / "keeper.pid").read_text().strip())
        meta = json.loads((home / "keeper.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("pid") != pid or proc_start_time(pid) != meta.get("procStartTime"):
        return None
    return pid


def kill_keeper(home: Path) -> None:
    pid = keeper_pid(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: proc_start_time(pid) is None, 10)


def marked(keeper_id: str, run_id: int | None = None) -> list[int]:
    """Live processes whose environment names this keeper (and run)."""
    want = {f"PONYBUNNY_KEEPER_ID={keeper_id}".encode()}
    if run_id is not None:
        want.add(f"PONYBUNNY_RUN_ID={run_id}".encode())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = set(handle.read().split(b"\0"))
        except OSError:
            continue
        if want <= environ and proc_start_time(int(entry)) is not None:
            found.append(int(entry))
    return found


def kill_marked(keeper_id: str) -> None:
    """Test cleanup: whatever a failed test left of a keeper's runs."""
    for pid in marked(keeper_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Session:
    """A scheduler-role client with the events it has seen."""

    def __init__(
        self,
        home: Path,
        containment: str = "auto",
        idle_exit_s: float = 2.0,
        scheduler_id: str = "test-scheduler",
        start: bool = True,
    ) -> None:
        self.home = home
        self.client = KeeperClient.connect(
            home, scheduler_id, containment=containment, idle_exit_s=idle_exit_s, start=start
        )
        self.events: list[Event] = list(self.client.welcome.outcomes)
        self.next_id = 1

    @property
    def keeper_id(self) -> str:
        return self.client.welcome.keeper_id

    def output(self, run_id: int, job: str = "job") -> str:
        return str(self.home / "runs" / job / f"{run_id}.log")

    def launch(self, *argv: str, run_id: int | None = None, **kwargs: object) -> int:
        if run_id is None:
            run_id, self.next_id = self.next_id, self.next_id + 1
        env = {**ENV, **kwargs.pop("env", {})}  # type: ignore[dict-item]
        self.client.launch(
            Launch(
                run_id, tuple(argv), self.output(run_id), env=env, token=f"token-{run_id}", **kwargs
            )
        )  # type: ignore[arg-type]
        return run_id

    def pump(self, timeout: float = 0.5) -> None:
        with contextlib.suppress(KeeperGone):
            select.select([self.client], [], [], timeout)
            self.events += self.client.read_events()

    def outcome(self, run_id: int, timeout: float = DEADLINE) -> Outcome:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if isinstance(event, Outcome) and event.run_id == run_id:
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no outcome for run {run_id} within {timeout}s: {self.events}"
                )
            self.pump()

    def started(self, run_id: int, timeout: float = DEADLINE) -> Started:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if isinstance(event, Started) and event.run_id == run_id:
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} not started within {timeout}s")
            self.pump()

    def wait_output(self, run_id: int, text: bytes, timeout: float = DEADLINE) -> None:
        path = Path(self.output(run_id))
        assert wait_for(lambda: path.exists() and text in path.read_bytes(), timeout), (
            f"{path}: {path.read_bytes() if path.exists() else 'missing'}"
        )

    def close(self) -> None:
        self.client.close()


def remove_home_groups(home: Path) -> None:
    """The per-home cgroups a killed keeper left (a clean exit removes them itself):
    kill what lives in them, then remove them."""
    name = home_group_name(str(home))
    for hierarchy in cgroups.discover():
        parent = os.path.join(hierarchy.own, name)
        if not os.path.isdir(parent):
            continue
        for entry in os.scandir(parent):
            if entry.is_dir(follow_symlinks=False):
                cgroups.kill_listed(entry.path, signal.SIGKILL)
        wait_for(lambda p=parent: cgroups.remove_group(p), 10)  # type: ignore[misc]


@pytest.fixture(name="sessions")
def sessions_fixture(home: Path) -> Iterator[list[Session]]:
    """Sessions a test opens; at the end their keepers are released, and killed (by
    verified PID) with whatever their runs left, if still there."""
    sessions: list[Session] = []
    yield sessions
    ids = {s.keeper_id for s in sessions}
    for session in sessions:
        with contextlib.suppress(Exception):
            session.client.release_exit(2)
        session.close()
    kill_keeper(home)
    for keeper_id in ids:
        kill_marked(keeper_id)
    remove_home_groups(home)
