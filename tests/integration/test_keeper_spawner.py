"""Placing a run's process in its cgroup: clone3 straight into the group (the C part),
and the fallback that moves the spawner in and out around posix_spawn.  Both must put
the job in its group from its first instruction, in a new session, with its pipe."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pony_scheduler.keeper import spawner
from pony_scheduler.keeper.containment import CgroupBox, Cgroups
from pony_scheduler.keeper.protocol import Launch

SCRIPT = "cat /proc/self/cgroup; ps -o sid= -p $$; echo pid=$$; grep SigIgn /proc/self/status"


@pytest.fixture
def groups(tmp_path: Path) -> Iterator[Cgroups]:
    if os.geteuid() != 0:
        pytest.skip("cgroups need root here")
    cg = Cgroups(str(tmp_path), "auto")
    if cg.mode != "cgroup2":
        pytest.skip(f"containment here is {cg.mode}")
    yield cg
    assert cg.v2_parent is not None
    os.rmdir(cg.v2_parent)


def run_in(box: CgroupBox) -> str:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = spawner.start(
            "/bin/sh", ("sh", "-c", SCRIPT), {"PATH": "/usr/bin:/bin"}, devnull, write_end, box
        )
    finally:
        os.close(write_end)
        os.close(devnull)
    out = b""
    while chunk := os.read(read_end, 4096):
        out += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return out.decode()


@pytest.mark.parametrize("placement", ["clone3", "move"])
def test_the_job_starts_in_its_group_and_session(
    groups: Cgroups, placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if placement == "move":
        monkeypatch.setattr(spawner, "_native", None)
    elif spawner.placement() != "clone3":
        pytest.skip("the C part is not built here")
    box = groups.box(7, Launch(7, ("sh",), "/x", env={}))
    box.create()
    try:
        out = run_in(box)
    finally:
        box.remove()
    lines = out.splitlines()
    assert f"0::/{groups.name}/run-7" in lines  # cgroup2's line: its own group
    pid = next(int(line[4:]) for line in lines if line.startswith("pid="))
    assert str(pid) in [line.strip() for line in lines]  # its own session (sid = pid)
    ignored = int(next(line for line in lines if line.startswith("SigIgn")).split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))  # the keeper's SIG_IGN is not inherited
    own = Path("/proc/self/cgroup").read_text()  # and the spawner is back where it was
    assert f"/{groups.name}/" not in own


def test_an_exec_failure_is_the_programs(groups: Cgroups) -> None:
    box = groups.box(8, Launch(8, ("sh",), "/x", env={}))
    box.create()
    try:
        with pytest.raises(OSError) as failed:
            spawner.start("/nonexistent/prog", ("prog",), {}, 0, 1, box)
        assert failed.value.errno == 2 and not isinstance(failed.value, spawner.PlacementError)
    finally:
        box.remove()


class Refusing:
    """A C part whose clone3 is refused with `errno` (a seccomp filter, an old kernel)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def spawn(self, *args: object) -> int:
        raise OSError(self.code, os.strerror(self.code))


def test_a_refused_clone3_falls_back_to_moving_for_good(
    groups: Cgroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spawner, "_native", Refusing(errno.EPERM))
    box = groups.box(9, Launch(9, ("sh",), "/x", env={}))
    box.create()
    try:
        assert f"0::/{groups.name}/run-9" in run_in(box).splitlines()
    finally:
        box.remove()
    assert spawner.placement() == "move"


def test_no_process_now_is_not_blamed_on_the_group(
    groups: Cgroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spawner, "_native", Refusing(errno.EAGAIN))
    box = groups.box(10, Launch(10, ("sh",), "/x", env={}))
    box.create()
    try:
        with pytest.raises(OSError) as failed:
            run_in(box)
        assert failed.value.errno == errno.EAGAIN
        assert not isinstance(failed.value, spawner.PlacementError)
    finally:
        box.remove()
    assert spawner.placement() == "clone3"


def test_a_refused_clone3_is_found_at_the_keepers_start(
    groups: Cgroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found at a run's start, after its limits were written (limits_first), the fallback
    moved the keeper into groups already limited: a --memory-max 1M run OOM-killed the
    keeper (review finding).  probe() finds it before any run; a run that meets it anyway
    is not started."""
    monkeypatch.setattr(spawner, "_native", Refusing(errno.ENOSYS))
    limited = Launch(11, ("sh",), "/x", env={}, tasks_max=5)
    box = groups.box(11, limited)
    box.create()
    try:
        assert spawner.limits_first(box)
        with pytest.raises(spawner.PlacementError, match="clone3 was refused"):
            run_in(box)
    finally:
        box.remove()
    assert spawner.placement() == "move" and not spawner.limits_first(box)
    monkeypatch.setattr(spawner, "_native", Refusing(errno.ENOSYS))
    spawner.probe(groups)
    assert spawner.placement() == "move"
    assert not os.path.exists(os.path.join(groups.v2_parent or "", "probe"))


def test_the_probe_keeps_a_working_clone3(groups: Cgroups) -> None:
    if spawner.placement() != "clone3":
        pytest.skip("the C part is not built here")
    spawner.probe(groups)
    assert spawner.placement() == "clone3"
    assert not os.path.exists(os.path.join(groups.v2_parent or "", "probe"))
