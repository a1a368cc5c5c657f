"""The run keeper with real processes in temporary homes: outcomes, output, process
trees, timeouts, kills - under both containments this machine offers (cgroups as root,
and the process-group fallback)."""

from __future__ import annotations

import os
import select
import signal
import stat
from pathlib import Path

import pytest

from pony_scheduler.keeper import cgroups
from pony_scheduler.keeper.client import KeeperClient, KeeperGone
from pony_scheduler.keeper.containment import home_group_name
from pony_scheduler.keeper.protocol import Launch, Outcome, Refused, Superseded, signal_number
from tests.conftest import wait_for
from tests.integration.keeper_helpers import (
    CONTAINMENTS,
    Session,
    marked,
    sessions_fixture,  # noqa: F401 (the `sessions` fixture)
)

pytestmark = pytest.mark.usefixtures("sessions")


@pytest.fixture(params=CONTAINMENTS)
def keeper(request: pytest.FixtureRequest, home: Path, sessions: list[Session]) -> Session:
    if request.param == "cgroup1" and (
        os.geteuid() != 0 or not any(h.version == 1 for h in cgroups.discover())
    ):
        pytest.skip("no cgroup v1 hierarchy to force")
    session = Session(home, containment=request.param)
    sessions.append(session)
    if request.param == "auto" and os.geteuid() == 0:
        assert session.client.welcome.containment in ("cgroup2", "cgroup1")
    return session


def test_exit_status_and_output(keeper: Session) -> None:
    ok = keeper.launch("true")
    three = keeper.launch("sh", "-c", "echo out; echo err >&2; exit 3")
    done = keeper.outcome(ok)
    assert (done.ending, done.exit_code, done.signal, done.detail) == (
        "exited",
        0,
        None,
        "exit status 0",
    )
    assert done.output_bytes == 0 and not Path(done.output_path).exists()  # quiet: no file
    assert done.token == f"token-{ok}" and done.pid and done.started_at and done.finished_at
    failed = keeper.outcome(three)
    assert (failed.ending, failed.exit_code, failed.detail) == ("exited", 3, "exit status 3")
    path = Path(failed.output_path)
    assert path.read_bytes() == b"out\nerr\n" == failed.tail
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert failed.containment == keeper.client.welcome.containment
    assert failed.cpu_seconds is not None and failed.cpu_seconds >= 0
    # Measured on the monotonic clock from the spawn to the reaping: never negative.
    assert failed.duration_s is not None and 0 <= failed.duration_s < 60


def test_killed_by_a_signal(keeper: Session) -> None:
    run = keeper.launch("sh", "-c", "kill -9 $$")
    done = keeper.outcome(run)
    assert (done.ending, done.exit_code, done.signal) == ("killed", None, 9)
    assert done.detail == "killed by signal 9 (SIGKILL)" and done.by == ""


def test_not_startable(keeper: Session) -> None:
    missing = keeper.launch("no-such-command-anywhere")
    bad_cwd = keeper.launch("true", cwd="/no/such/directory")
    done = keeper.outcome(missing)
    assert (done.ending, done.started_at, done.pid) == ("not_started", None, None)
    assert done.detail == "cannot start 'no-such-command-anywhere': No such file or directory"
    done = keeper.outcome(bad_cwd)
    assert done.ending == "not_started"
    assert "working directory '/no/such/directory': No such file or directory" in done.detail


def test_output_is_the_exact_bytes(keeper: Session) -> None:
    data = b"a\x00b\xff\xfe\xc3(\n\x1b[31mred\r\n" + bytes(range(256))
    run = keeper.launch("printf", "".join(f"\\{b:03o}" for b in data))
    done = keeper.outcome(run)
    assert done.exit_code == 0
    assert Path(done.output_path).read_bytes() == data
    assert done.tail == data and done.output_bytes == len(data) and done.output_note == ""


def test_timeout_kills_the_whole_tree(keeper: Session) -> None:
    run = keeper.launch("sh", "-c", "sleep 300 & sleep 300 & echo up; wait", timeout_s=1)
    keeper.wait_output(run, b"up")
    assert len(marked(keeper.keeper_id, run)) == 3
    done = keeper.outcome(run)
    assert (done.ending, done.detail) == ("timed_out", "timed out after 1s")
    assert done.signal == signal.SIGTERM
    assert marked(keeper.keeper_id, run) == []


def test_setsid_double_fork_under_a_timeout(keeper: Session) -> None:
    """The escapee leaves the session and its parent: still the run's, still killed."""
    run = keeper.launch("sh", "-c", "setsid sh -c 'sleep 300 & echo $! ' ; sleep 300", timeout_s=2)
    keeper.wait_output(run, b"\n")
    escapee = int(Path(keeper.output(run)).read_text().split()[0])
    assert os.getsid(escapee) != os.getsid(keeper.client.welcome.pid)
    done = keeper.outcome(run)
    assert done.ending == "timed_out"
    assert marked(keeper.keeper_id, run) == []


def test_kill_stops_the_tree_and_says_who(keeper: Session) -> None:
    run = keeper.launch("sh", "-c", "sleep 300 & echo up; wait")
    keeper.wait_output(run, b"up")
    assert keeper.client.is_held(run) is not None
    assert keeper.client.kill(run, "TERM", "pb runs kill by uid 0 (root)")
    done = keeper.outcome(run)
    assert (done.ending, done.detail) == ("killed", "killed by pb runs kill by uid 0 (root)")
    assert done.by == "pb runs kill by uid 0 (root)"
    assert done.signal == signal.SIGTERM
    assert marked(keeper.keeper_id, run) == []
    assert keeper.client.is_held(run) is None
    assert not keeper.client.kill(run, "KILL", "nobody")  # no longer held


def test_background_child_does_not_keep_the_run_open(keeper: Session) -> None:
    """A helper left running with stdout held: the run ends with its main process."""
    run = keeper.launch("sh", "-c", "sleep 300 & echo helper; exit 0")
    done = keeper.outcome(run)
    assert (done.ending, done.exit_code, done.leftovers, done.leftovers_kept) == (
        "exited",
        0,
        1,
        False,
    )
    assert done.tail == b"helper\n"
    assert marked(keeper.keeper_id, run) == []


SUB_GROUP_ESCAPE = """
G=$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)
mkdir "$CG$G/sub" || exit 9
sh -c 'echo $$ > "$1/cgroup.procs"; exec sleep 300' sh "$CG$G/sub" </dev/null >/dev/null 2>&1 &
while [ -z "$(cat "$CG$G/sub/cgroup.procs")" ]; do sleep 0.01; done
echo moved
"""


def test_a_sub_group_of_its_own_does_not_hide_a_leftover(keeper: Session) -> None:
    """A job may make sub-groups of its cgroup (it owns the files) and move a process
    there: still the run's, counted as left behind and killed with it."""
    if keeper.client.welcome.containment != "cgroup2":
        pytest.skip("cgroup2 containment only")
    unified = next(h.mount_point for h in cgroups.discover() if h.version == 2)
    run = keeper.launch("sh", "-c", SUB_GROUP_ESCAPE, env={"CG": unified})
    done = keeper.outcome(run)
    assert (done.ending, done.exit_code, done.tail) == ("exited", 0, b"moved\n"), done.detail
    assert done.leftovers == 1 and not done.leftovers_kept
    assert marked(keeper.keeper_id, run) == []


def test_leftovers_kept_live_on(keeper: Session) -> None:
    run = keeper.launch("sh", "-c", "sleep 300 & echo $!", leftovers="keep")
    done = keeper.outcome(run)
    assert (done.ending, done.exit_code, done.leftovers, done.leftovers_kept) == (
        "exited",
        0,
        1,
        True,
    )
    kept = int(done.tail.split()[0])
    try:
        # (wait: the kept process may still be in the middle of its exec of sleep, when
        # /proc/PID/environ reads empty)
        assert wait_for(lambda: marked(keeper.keeper_id, run) == [kept], 30)
    finally:
        os.kill(kept, signal.SIGKILL)  # ours: the pid came from the run's own output


def test_a_thousand_children(keeper: Session) -> None:
    run = keeper.launch(
        "sh", "-c", "i=0; while [ $i -lt 1000 ]; do sleep 300 & i=$((i+1)); done; echo forked"
    )
    done = keeper.outcome(run, timeout=180)
    assert (done.ending, done.exit_code, done.leftovers) == ("exited", 0, 1000)
    assert marked(keeper.keeper_id, run) == []


def test_duplicate_run_is_refused(keeper: Session) -> None:
    run = keeper.launch("sleep", "300")
    keeper.started(run)
    keeper.launch("true", run_id=run)
    keeper.pump()
    assert wait_for(
        lambda: (
            keeper.pump() or any(isinstance(e, Refused) and e.run_id == run for e in keeper.events)
        ),
        30,
    )
    held = keeper.client.held()
    assert [h.run_id for h in held] == [run] and held[0].token == f"token-{run}"
    assert keeper.client.kill(run, "KILL", "the test")
    assert keeper.outcome(run).ending == "killed"


def test_limits_where_controllers_exist(keeper: Session) -> None:
    """Peak memory of a job that allocates 50 MB, CPU time of a busy loop; a limit that
    cannot be enforced is refused rather than ignored."""
    alloc = keeper.launch(
        "python3",
        "-c",
        "b = bytearray(50 * 2**20); b[::4096] = b'x' * len(b[::4096])",
        memory_max=1 << 30,
    )
    busy = keeper.launch(
        "python3",
        "-c",
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass",
    )
    status = keeper.client.status()
    done = keeper.outcome(alloc)
    if "memory" not in " ".join(status.controllers):
        assert done.ending == "not_started" and "memory_max needs the memory" in done.detail
    else:
        assert done.exit_code == 0, done.detail
        assert done.peak_memory_bytes is not None and done.peak_memory_bytes >= 50 * 2**20
    done = keeper.outcome(busy)
    assert done.exit_code == 0 and done.cpu_seconds is not None and done.cpu_seconds > 0.1


def test_cpu_time_is_each_runs_own(keeper: Session) -> None:
    """A busy run, then quiet ones one after another: each quiet run is charged its own
    CPU time, not what earlier runs used."""
    busy = keeper.outcome(
        keeper.launch(
            "python3",
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass",
        )
    )
    assert busy.cpu_seconds is not None and busy.cpu_seconds > 0.25
    for _ in range(5):
        quiet = keeper.outcome(keeper.launch("true"))
        assert quiet.exit_code == 0 and quiet.cpu_seconds is not None
        assert quiet.cpu_seconds < 0.2, quiet


def test_memory_limit_kills_with_a_reason(keeper: Session) -> None:
    if not any(c.startswith("memory") for c in keeper.client.status().controllers):
        pytest.skip(f"no memory controller for runs ({keeper.client.welcome.containment})")
    run = keeper.launch(
        "python3",
        "-c",
        "b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096])",
        memory_max=64 * 2**20,
    )
    done = keeper.outcome(run)
    assert (done.ending, done.signal) == ("killed", 9)
    assert done.detail == "killed by signal 9 (SIGKILL): out of memory (memory_max)"


def test_status_and_held(keeper: Session, home: Path) -> None:
    status = keeper.client.status()
    assert status.pid == keeper.client.welcome.pid and status.home == str(home)
    assert status.containment == keeper.client.welcome.containment
    assert (status.runs, status.draining, status.exiting) == (0, False, False)
    assert stat.S_IMODE((home / "keeper.sock").stat().st_mode) == 0o600
    assert (home / "keeper.pid").read_text() == f"{status.pid}\n"


def test_drain_stops_runs_and_release_lets_the_keeper_go(keeper: Session, home: Path) -> None:
    short = keeper.launch("sh", "-c", "sleep 0.2; exit 4")
    long = keeper.launch("sh", "-c", "sleep 300 & wait")
    keeper.started(long)
    keeper.client.drain(1.0, "pb scheduler stop")
    refused = keeper.launch("true")
    assert keeper.outcome(short).exit_code == 4
    done = keeper.outcome(long)
    assert (done.ending, done.detail, done.by) == (
        "stopped",
        "stopped by pb scheduler stop",
        "pb scheduler stop",
    )
    assert any(isinstance(e, Refused) and e.run_id == refused for e in keeper.events)
    keeper.client.ack([e.id for e in keeper.events if isinstance(e, Outcome)])
    assert keeper.client.release_exit(30)
    assert not (home / "keeper.sock").exists() and not (home / "keeper.pid").exists()
    assert (home / "keeper.journal").read_bytes() == b""  # all acknowledged


def test_launch_validation_is_the_clients() -> None:
    with pytest.raises(ValueError, match="leftovers"):
        Launch(1, ("true",), "/x", leftovers="maybe")
    with pytest.raises(ValueError, match="timeout_s"):
        Launch(1, ("true",), "/x", timeout_s=0)
    with pytest.raises(ValueError, match="argv"):
        Launch(1, (), "/x")
    with pytest.raises(ValueError, match="unknown signal"):
        signal_number("NOPE")


def test_a_newer_scheduler_supersedes_the_older(home: Path, sessions: list[Session]) -> None:
    first = Session(home, scheduler_id="old")
    sessions.append(first)
    run = first.launch("sleep", "300")
    first.started(run)
    second = Session(home, scheduler_id="new")
    sessions.append(second)
    assert [h.run_id for h in second.client.welcome.runs] == [run]
    assert wait_for(
        lambda: first.pump() or any(isinstance(e, Superseded) for e in first.events), 30
    )
    with pytest.raises(KeeperGone):
        for _ in range(100):
            first.client.read_events()
            select.select([first.client], [], [], 0.1)
    assert second.client.kill(run, "KILL", "the new scheduler")
    assert second.outcome(run).detail == "killed by the new scheduler"


def test_the_welcome_names_the_schedulers_it_is_the_only_keeper_of(
    home: Path, sessions: list[Session]
) -> None:
    """A scheduler says whether this is the first keeper it uses; a successor is told
    which of its predecessors handed every run they launched to this keeper."""
    first = KeeperClient.connect(home, "first", first_keeper=True, idle_exit_s=5)
    first.close()
    again = KeeperClient.connect(home, "reconnected", first_keeper=False, idle_exit_s=5)
    again.close()
    control = KeeperClient.connect(home, "", role="control")
    assert control.welcome.sole_keeper_of == ()  # for schedulers only
    control.close()
    successor = Session(home, scheduler_id="successor")
    sessions.append(successor)
    assert successor.client.welcome.sole_keeper_of == ("first",)


def test_a_run_group_is_gone_when_its_outcome_comes(keeper: Session) -> None:
    """cgroup2: the run's group is found empty by removing it, before the outcome is
    sent; a run that leaves a sub-group of its own is removed the longer way."""
    if keeper.client.welcome.containment != "cgroup2":
        pytest.skip("cgroup2 containment only")
    unified = next(h for h in cgroups.discover() if h.version == 2)
    parent = os.path.join(unified.own, home_group_name(str(keeper.home)))
    run = keeper.launch("true")
    done = keeper.outcome(run)
    assert (done.ending, done.exit_code) == ("exited", 0) and done.cpu_seconds is not None
    assert not os.path.exists(os.path.join(parent, f"run-{run}"))
    nested = keeper.launch(
        "sh",
        "-c",
        'G=$(awk -F: \'$1=="0"{print $3}\' /proc/self/cgroup); mkdir "$CG$G/sub"',
        env={"CG": unified.mount_point},
    )
    done = keeper.outcome(nested)
    assert (done.ending, done.exit_code, done.leftovers) == ("exited", 0, 0), done.detail
    assert wait_for(lambda: not os.path.exists(os.path.join(parent, f"run-{nested}")), 10)
