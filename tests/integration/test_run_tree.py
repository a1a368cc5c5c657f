"""A run is its whole process tree, against the real daemon (`pb`), in both containments:
the default (a cgroup v2 per run as root here) and the process-group fallback
(PONYBUNNY_CONTAINMENT=pgroup set for the scheduler, which starts the run keeper).

A run's processes are found the way an admin would: by PONYBUNNY_RUN_ID and the run
keeper's PONYBUNNY_KEEPER_ID in /proc/*/environ (keeper_helpers.marked).  The keeper
records an outcome only once nothing of the run is left, so "no process remains" is
checked the moment the run is recorded, not after a wait.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pony_scheduler.keeper import cgroups
from pony_scheduler.lifecycle.pidfile import proc_start_time
from tests.conftest import Pb, Result, alive, wait_for
from tests.integration.keeper_helpers import kill_marked, marked

CONTAINMENTS = ("auto", "pgroup")
ALLOC = "import sys; b = bytearray({size} * 2**20); b[::4096] = b'x' * len(b[::4096])"


@dataclass
class Daemon:
    """A running scheduler and the run keeper it started."""

    pb: Pb
    containment: str  # in force: cgroup2, cgroup1 or pgroup
    keeper_id: str

    def add(self, name: str, *args: str) -> None:
        self.pb("job", "add", name, "--manual", *args, check=True)

    def run(self, name: str, timeout: float = 120) -> tuple[Result, dict[str, Any]]:
        """`pb job run NAME --wait`: its result, and the run as recorded."""
        result = self.pb("job", "run", name, "--wait", timeout=timeout)
        found = re.search(r"Run (\d+) of job", result.err)
        assert found, result.all
        return result, self.show(int(found.group(1)))

    def show(self, run_id: int) -> dict[str, Any]:
        shown = self.pb("runs", "show", str(run_id), "--json")
        assert shown.code == 0, shown.all
        return json.loads(shown.out)  # type: ignore[no-any-return]

    def queue(self, name: str) -> int:
        queued = self.pb("job", "run", name, check=True)
        return int(re.search(r"Run (\d+)", queued.out).group(1))  # type: ignore[union-attr]

    def left(self, run_id: int) -> list[int]:
        """Live processes of run `run_id`."""
        return marked(self.keeper_id, run_id)


def start(pb: Pb, containment: str, wrap: list[str] | None = None, setup: str = "") -> Daemon:
    if containment != "auto":
        pb.env["PONYBUNNY_CONTAINMENT"] = containment
    if wrap:
        command = f'{setup} exec "$0" -m pony_scheduler scheduler start'
        proc = subprocess.run(
            [*wrap, "sh", "-c", command, sys.executable],
            env=pb.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        pb.remember()
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        pb("scheduler", "start", check=True)
    meta = json.loads((pb.home / "keeper.json").read_text())
    if containment == "pgroup":
        assert meta["containment"] == "pgroup"
    elif os.geteuid() == 0:
        assert meta["containment"] in ("cgroup2", "cgroup1"), meta
    return Daemon(pb, meta["containment"], meta["keeperId"])


@pytest.fixture(params=CONTAINMENTS)
def daemon(request: pytest.FixtureRequest, pb: Pb) -> Any:
    started = start(pb, request.param)
    yield started
    kill_marked(started.keeper_id)  # what a failed test left (cleanup also stops the keeper)


def test_status_shows_the_keeper_and_its_containment(daemon: Daemon) -> None:
    status = daemon.pb("scheduler", "status")
    assert status.code == 0, status.all
    keeper_pid = daemon.pb.keeper_pid()
    assert f"PID {keeper_pid}, containment {daemon.containment}" in status.out
    facts = json.loads(daemon.pb("scheduler", "status", "--json").out)["keeper"]
    assert facts["pid"] == keeper_pid and facts["containment"] == daemon.containment
    # and why, when it is less than cgroup2 (review: only the keeper's own log said)
    why = {"cgroup2": None, "pgroup": "pgroup asked for"}.get(daemon.containment)
    if daemon.containment in ("cgroup2", "pgroup"):
        assert facts["containmentWhy"] == why
    if why:
        assert f"containment {daemon.containment} ({why})" in status.out
        log = (daemon.pb.home / "scheduler.log").read_text()
        assert f"containment: {daemon.containment} ({why})" in log


def test_a_background_child_does_not_keep_the_run(daemon: Daemon, tmp_path: Path) -> None:
    """The helper is killed and counted, the run is recorded at once (not after the
    helper's 300 s), the next run is not skipped as overlapping, and a stop and start
    run nothing again."""
    book = tmp_path / "ran"
    daemon.add("bg", "--shell", "--", f"echo x >> {book}; sleep 300 & echo helper; exit 0")
    daemon.add("probe", "--", "true")
    result, run = daemon.run("bg", timeout=120)  # far less than the helper's 300 s
    assert result.code == 0, result.all
    assert run["state"] == "succeeded", run
    assert run["reason"] == "left 1 process behind, killed"
    assert run["output_tail"] == "helper\n" and run["containment"] == daemon.containment
    assert daemon.left(run["id"]) == []
    result, again = daemon.run("bg")
    assert (result.code, again["state"]) == (0, "succeeded"), again
    assert daemon.left(again["id"]) == []
    daemon.pb("scheduler", "stop", check=True)
    assert wait_for(lambda: daemon.pb.keeper_pid() is None, 30)
    restarted = start(daemon.pb, "pgroup" if daemon.containment == "pgroup" else "auto")
    # A run queued after the start is recorded only after the start's take-over.
    assert restarted.run("probe")[1]["state"] == "succeeded"
    assert book.read_text() == "x\nx\n"
    items = json.loads(daemon.pb("runs", "bg", "--json").out)
    assert sorted(r["state"] for r in items) == ["succeeded", "succeeded"]


def test_a_setsid_double_fork_under_a_timeout_leaves_nothing(daemon: Daemon) -> None:
    daemon.add(
        "escape",
        "--timeout",
        "2s",
        "--shell",
        "--",
        "setsid sh -c 'sleep 300 & echo $!'; sleep 300",
    )
    result, run = daemon.run("escape")
    assert run["state"] == "timed_out" and run["reason"] == "timed out after 2s", run
    escapee = int(run["output_tail"].split()[0])
    assert escapee not in daemon.left(run["id"])
    assert daemon.left(run["id"]) == []
    assert result.code != 0


@pytest.mark.timeout(600)
def test_a_thousand_children_left_behind_are_killed(daemon: Daemon) -> None:
    daemon.add(
        "herd",
        "--shell",
        "--",
        "i=0; while [ $i -lt 1000 ]; do sleep 300 & i=$((i+1)); done; echo forked",
    )
    result, run = daemon.run("herd", timeout=540)
    assert (result.code, run["state"]) == (0, "succeeded"), run
    assert run["reason"] == "left 1000 processes behind, killed"
    assert daemon.left(run["id"]) == []


def test_leftovers_keep_lets_them_live_and_says_so(daemon: Daemon) -> None:
    """Both kinds of leftover live on: one in the run's session, one that made its own."""
    daemon.add(
        "daemonize",
        "--leftovers",
        "keep",
        "--shell",
        "--",
        "sleep 300 >/dev/null 2>&1 & echo $!; setsid sleep 301 >/dev/null 2>&1 & echo $!",
    )
    result, run = daemon.run("daemonize")
    kept = sorted(int(pid) for pid in run["output_tail"].split())
    try:
        assert (result.code, run["state"]) == (0, "succeeded"), run
        assert run["reason"] == "left 2 processes behind, left running (--leftovers keep)"
        # (a kept sleep may still be in its exec, when its environ reads empty)
        assert wait_for(lambda: sorted(daemon.left(run["id"])) == kept, 30)
        # The keeper dies: the next one kills what its runs left, but not what was kept.
        keeper = json.loads((daemon.pb.home / "keeper.json").read_text())
        assert alive(keeper["pid"]) and proc_start_time(keeper["pid"]) == keeper["procStartTime"]
        os.kill(keeper["pid"], signal.SIGKILL)
        daemon.add("after", "--", "true")
        assert daemon.run("after")[1]["state"] == "succeeded"
        log = (daemon.pb.home / "keeper.log").read_text()
        assert (
            f"Left running 2 kept leftover process(es) of runs of keeper {daemon.keeper_id}" in log
        )
        assert all(alive(pid) for pid in kept)
    finally:
        for pid in set(kept) & set(daemon.left(run["id"])):  # verified ours: the run's marks
            os.kill(pid, signal.SIGKILL)


def test_kept_leftovers_go_on_writing_after_their_run(daemon: Daemon, tmp_path: Path) -> None:
    """A kept leftover that writes once its run is recorded is not killed by SIGPIPE (the
    keeper used to close the pipe with the run): what it writes goes on into the run's
    output file (review finding)."""
    go, wrote = tmp_path / "go", tmp_path / "wrote"
    daemon.add(
        "late",
        "--leftovers",
        "keep",
        "--shell",
        "--",
        f"(while [ ! -e {go} ]; do sleep 0.1; done; echo late; echo still > {wrote}; "
        "sleep 300) & echo started",
    )
    result, run = daemon.run("late")
    try:
        assert (result.code, run["state"]) == (0, "succeeded"), run
        assert run["reason"].endswith("behind, left running (--leftovers keep)"), run
        go.touch()
        assert wait_for(lambda: wrote.exists() and wrote.read_text() == "still\n", 30)
        assert daemon.left(run["id"]), "the kept leftover died when it wrote"
        output = lambda: daemon.pb("runs", "output", str(run["id"])).out  # noqa: E731
        assert wait_for(lambda: output() == "started\nlate\n", 30), output()
    finally:
        for pid in daemon.left(run["id"]):  # verified ours: the run's marks
            os.kill(pid, signal.SIGKILL)


def test_kept_leftovers_output_is_capped_and_says_so(daemon: Daemon, tmp_path: Path) -> None:
    """What kept leftovers write after their run stops at the output file's 10 MiB cap
    with the truncation line, as a run's own output does (review finding: cut silently),
    and they still live on."""
    wrote = tmp_path / "wrote"
    daemon.add(
        "flood",
        "--leftovers",
        "keep",
        "--shell",
        "--",
        f"(sleep 1; head -c 11000000 /dev/zero; echo done > {wrote}; sleep 300) & exit 0",
    )
    _, run = daemon.run("flood")
    try:
        assert wait_for(wrote.exists, 60), "the kept leftover died when it wrote"
        path = daemon.pb.home / "runs" / "flood" / f"{run['id']}.log"
        marker = b"\n[output truncated: more than 10 MiB]\n"
        assert wait_for(lambda: path.read_bytes().endswith(marker), 30)
        assert path.stat().st_size == 10 * 2**20 + len(marker)
    finally:
        for pid in daemon.left(run["id"]):  # verified ours: the run's marks
            os.kill(pid, signal.SIGKILL)


def test_runs_kill_stops_the_whole_tree_and_records_who(daemon: Daemon) -> None:
    pb = daemon.pb
    daemon.add("victim", "--shell", "--", "sleep 300 & echo up; wait")
    for signame, number in (("TERM", 15), ("KILL", 9)):
        run_id = daemon.queue("victim")
        assert wait_for(lambda rid=run_id: len(daemon.left(rid)) >= 2, 60)  # sh and sleep
        args = ("--signal", f"sig{signame.lower()}") if signame != "TERM" else ()
        killed = pb("runs", "kill", str(run_id), *args)
        assert killed.code == 0, killed.all
        assert killed.out.startswith(f"✓ Sent {signame} to run {run_id} "), killed.all
        assert wait_for(lambda rid=run_id: daemon.show(rid)["state"] != "running", 60)
        run = daemon.show(run_id)
        assert run["state"] == "failed", run
        assert run["reason"].startswith("killed by pb runs kill by "), run
        assert "(uid 0)" in run["reason"] or os.geteuid() != 0
        assert (run["exit_code"], run["signal"]) == (128 + number, number), run
        assert daemon.left(run_id) == []
        assert pb("audit", "victim", "--json").out.count(f"run {run_id} {signame}") == 1
    unknown = pb("runs", "kill", str(run_id), "--signal", "NOPE")
    assert unknown.code == 2 and len(unknown.err.strip().splitlines()) == 1, unknown.all
    assert "NOPE" in unknown.err
    done = pb("runs", "kill", str(run_id))
    assert done.code == 1, done.all
    assert len(done.err.strip().splitlines()) == 1, done.all
    assert f"run {run_id} is not running (failed)" in done.err


def test_resource_use_and_a_memory_limit(daemon: Daemon) -> None:
    python = sys.executable
    daemon.add(
        "busy",
        "--",
        python,
        "-c",
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass",
    )
    _, busy = daemon.run("busy")
    assert (busy["state"], busy["containment"]) == ("succeeded", daemon.containment), busy
    assert busy["cpu_s"] is not None and busy["cpu_s"] >= 0.2, busy
    daemon.add("alloc", "--memory-max", "512M", "--", python, "-c", ALLOC.format(size=50))
    daemon.add("hog", "--memory-max", "64M", "--", python, "-c", ALLOC.format(size=200))
    _, alloc = daemon.run("alloc")
    _, hog = daemon.run("hog")
    if daemon.containment == "pgroup":
        for run in (alloc, hog):
            assert run["state"] == "failed" and run["peak_memory"] is None, run
            assert run["reason"].startswith(
                "cannot start: memory_max needs the memory controller"
            ), run
            assert "pgroup containment" in run["reason"]
        return
    assert alloc["state"] == "succeeded", alloc
    assert alloc["peak_memory"] is not None and alloc["peak_memory"] >= 50 * 2**20, alloc
    assert (hog["state"], hog["signal"], hog["exit_code"]) == ("failed", 9, 137), hog
    assert hog["reason"] == "killed by signal SIGKILL: out of memory (memory_max)", hog
    assert daemon.left(hog["id"]) == []


FORKER = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    int made = 0;
    for (int i = 0; i < 50; i++) {
        pid_t pid = fork();
        if (pid == 0) { sleep(20); _exit(0); }
        if (pid > 0) made++;
    }
    printf("forked %d\n", made);
    return 0;
}
"""


def test_tasks_max_holds_from_the_first_instruction(daemon: Daemon, tmp_path: Path) -> None:
    """A job that forks at once under --tasks-max 5 forked 27 or 50 children in 2 of 5
    runs: pids.max was written after the spawn (review finding).  It is written before,
    and the process joins its v1 groups itself before its exec."""
    if daemon.containment == "pgroup":
        pytest.skip("limits need cgroups (the pgroup case is test_resource_use_...)")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler: the race needs a program that forks in microseconds")
    source = tmp_path / "forker.c"
    source.write_text(FORKER)
    program = tmp_path / "forker"
    # Static: no dynamic loading between the exec and the first fork (as in the finding).
    built = subprocess.run([compiler, "-O2", "-static", "-o", str(program), str(source)])
    if built.returncode != 0:
        subprocess.run([compiler, "-O2", "-o", str(program), str(source)], check=True)
    daemon.add("forker", "--tasks-max", "5", "--", str(program))
    for _ in range(5):
        _, run = daemon.run("forker")
        assert run["state"] == "succeeded", run
        output = daemon.pb("runs", "output", str(run["id"])).out
        made = int(re.search(r"forked (\d+)", output).group(1))  # type: ignore[union-attr]
        assert 0 < made <= 4, (made, run)  # the main process and at most 4 children
        assert f"left {made} process" in run["reason"], run
        assert daemon.left(run["id"]) == []


def test_an_exec_beyond_its_memory_limit_says_so(daemon: Daemon) -> None:
    """1.5 MB of arguments under --memory-max 1M: the exec fails in the run's group with
    E2BIG, reported as "Argument list too long" alone (review finding)."""
    if daemon.containment == "pgroup":
        pytest.skip("limits need cgroups")
    daemon.add("bigarg", "--memory-max", "1M", "--", "/bin/echo", *["x" * 100_000] * 15)
    _, run = daemon.run("bigarg")
    assert run["state"] == "failed", run
    assert (
        "memory_max may be too small to start it" in run["reason"]
        or "out of memory (memory_max)" in run["reason"]
    ), run


def _need_cgroup1() -> None:
    from pony_scheduler.keeper import cgroups

    if os.geteuid() != 0 or not any(h.version == 1 for h in cgroups.discover()):
        pytest.skip("no cgroup v1 hierarchy to force")


def test_cgroup1_cpu_time_counts_a_double_forked_process(pb: Pb) -> None:
    """cgroup1 containment recorded 4 ms for a run whose orphaned grandchild spun for
    0.3 s (rusage counts only what the main waited for), though cpuacct was mounted
    (review finding)."""
    _need_cgroup1()
    daemon = start(pb, "cgroup1")
    try:
        spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
        daemon.add("df", "--shell", "--", f"sh -c '({sys.executable} -c \"{spin}\") &'; sleep 3")
        _, run = daemon.run("df")
        assert (run["state"], run["containment"]) == ("succeeded", "cgroup1"), run
        assert run["cpu_s"] is not None and run["cpu_s"] >= 0.2, run
    finally:
        kill_marked(daemon.keeper_id)


def test_a_changed_containment_waits_for_the_next_keeper_and_says_so(pb: Pb) -> None:
    """A restart with another containment setting hands the runs to the keeper that
    holds them, which keeps its own: status showed it without a word on the setting
    (review finding)."""
    _need_cgroup1()
    daemon = start(pb, "cgroup1")
    try:
        daemon.add("long", "--", "sleep", "120")
        run_id = daemon.queue("long")
        assert wait_for(lambda: daemon.show(run_id)["state"] == "running", 60)
        pb.env["PONYBUNNY_CONTAINMENT"] = "pgroup"
        pb("scheduler", "restart", check=True)
        kept = "pgroup asked for; the running keeper keeps cgroup1 until it exits"
        status = pb("scheduler", "status").out
        assert f"containment cgroup1 ({kept}" in status, status
        keeper = json.loads(pb("scheduler", "status", "--json").out)["keeper"]
        assert keeper["containmentKept"].startswith(kept), keeper
        assert kept in (pb.home / "scheduler.log").read_text()
        assert daemon.show(run_id)["state"] == "running"
        # Back to auto, which here would be cgroup2: still not what is in force.
        del pb.env["PONYBUNNY_CONTAINMENT"]
        pb("scheduler", "restart", check=True)
        status = pb("scheduler", "status").out
        assert "containment cgroup1 (auto asked for; the running keeper keeps cgroup1" in status
        pb("runs", "kill", str(run_id), check=True)
    finally:
        kill_marked(daemon.keeper_id)


def test_a_full_disk_for_the_output(pb: Pb, home: Path) -> None:
    """HOME/runs is a 64 KiB tmpfs, in a mount namespace of the scheduler's own (so the
    keeper it starts writes there): the job's real result is recorded, with the reason its
    output is short, and its processes (a background child too) are gone."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private tmpfs")
    (home / "runs").mkdir(mode=0o750)
    wrap = ["unshare", "--mount", "--propagation", "private"]
    for containment in CONTAINMENTS:
        setup = f"mount -t tmpfs -o size=64k,mode=0750 tmpfs {home}/runs &&"
        daemon = start(pb, containment, wrap=wrap, setup=setup)
        try:
            daemon.add(
                f"fill-{containment}",
                "--shell",
                "--",
                "sleep 300 & head -c 1000000 /dev/zero | tr '\\0' x; echo; exit 3",
            )
            result, run = daemon.run(f"fill-{containment}")
            assert (result.code, run["state"], run["exit_code"]) == (3, "failed", 3), run
            assert run["reason"] == (
                "exit status 3; left 1 process behind, killed; output "
                "incomplete: the filesystem is nearly full (kept 32 KiB free)"
            ), run
            assert daemon.left(run["id"]) == []
        finally:
            kill_marked(daemon.keeper_id)
        pb("scheduler", "stop", check=True)
        assert wait_for(lambda: pb.keeper_pid() is None, 30)
        pb.env.pop("PONYBUNNY_CONTAINMENT", None)


def test_an_escapee_that_clears_its_environment_beside_another_run(
    daemon: Daemon, tmp_path: Path
) -> None:
    """The fallback's gap inside the keeper's subtree (README, "How a job runs"): a
    process that leaves its run's session and clears its environment, and whose parent
    has exited, cannot be told apart while another run is held.  Its run is recorded
    without it, and it is taken for a leftover of the next run that is alone in the
    keeper (or killed as a stray once no run is held).  A cgroup keeps it in its run."""
    pid_file, release = tmp_path / "escapee", tmp_path / "release"
    daemon.add("hold", "--shell", "--", f"until [ -e {release} ]; do sleep 0.1; done")
    daemon.add(
        "escape",
        "--shell",
        "--",
        f"(setsid env -i sleep 300 & echo $! > {pid_file}); p=$(cat {pid_file}); "
        # wait until it runs `sleep` with the empty environment `env -i` gave it
        'until [ "$(cat /proc/$p/comm 2>/dev/null)" = sleep ]; do sleep 0.05; done',
    )
    hold = daemon.queue("hold")
    assert wait_for(lambda: daemon.left(hold), 60)
    _, run = daemon.run("escape")
    escapee = int(pid_file.read_text())
    cmdline = Path(f"/proc/{escapee}/cmdline")

    def escapee_alive() -> bool:
        try:
            return cmdline.read_bytes() == b"sleep\x00300\x00" and os.getsid(escapee) == escapee
        except OSError:
            return False

    assert run["state"] == "succeeded", run
    if daemon.containment == "pgroup":
        assert run["reason"] is None, run  # not seen: not counted, not killed
        assert escapee_alive()
    else:
        assert run["reason"] == "left 1 process behind, killed"
        assert not escapee_alive()
    release.touch()
    assert wait_for(lambda: daemon.show(hold)["state"] != "running", 60)
    held = daemon.show(hold)
    assert held["state"] == "succeeded", held
    if daemon.containment == "pgroup":  # taken for the lone run's own
        assert held["reason"] == "left 1 process behind, killed", held
    else:
        assert held["reason"] is None, held
    assert not escapee_alive()


def test_a_keeper_started_from_another_cgroup_kills_what_a_dead_one_left(
    pb: Pb, tmp_path: Path
) -> None:
    """A keeper makes its runs' groups below its own cgroup.  Started from a login
    session's group and, after a crash, from the systemd unit's, the new keeper looked
    only below its own: a run's process that had cleared its environment outlived the
    run's `lost` record, and the dead keeper's groups stayed (review finding).  It now
    finds the home's groups wherever an earlier keeper made them."""
    from pony_scheduler.keeper import cgroups

    unified = [h for h in cgroups.discover() if h.version == 2]
    if os.geteuid() != 0 or not unified:
        pytest.skip("needs cgroup2 containment (root here)")
    session = Path(unified[0].own) / f"pony-test-session-{os.getpid()}"
    session.mkdir()
    pid_file = tmp_path / "escapee"
    escapee = 0

    def escapee_alive() -> bool:
        try:
            cmdline = Path(f"/proc/{escapee}/cmdline").read_bytes()
            return cmdline == b"sleep\x00300\x00" and os.getsid(escapee) == escapee
        except OSError:
            return False

    try:
        daemon = start(pb, "auto", wrap=["env"], setup=f"echo $$ > {session}/cgroup.procs;")
        assert daemon.containment == "cgroup2"
        daemon.add(
            "escape",
            "--shell",
            "--",
            f"(setsid env -i sleep 300 & echo $! > {pid_file}); sleep 301",
        )
        run_id = daemon.queue("escape")
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 60)
        escapee = int(pid_file.read_text())
        assert wait_for(escapee_alive, 30)  # running `sleep` with the empty environment
        keeper = json.loads((pb.home / "keeper.json").read_text())
        scheduler = pb.pid()
        assert proc_start_time(keeper["pid"]) == keeper["procStartTime"]
        for pid in (scheduler, keeper["pid"]):  # verified ours: pid file, keeper.json
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not alive(scheduler) and not alive(keeper["pid"]), 30)
        pb("scheduler", "start", check=True)  # from this test's own cgroup
        assert wait_for(lambda: not escapee_alive(), 60)
        assert wait_for(lambda: daemon.show(run_id)["state"] == "lost", 60)
        assert [p.name for p in session.iterdir() if p.is_dir()] == []  # its groups removed
    finally:
        if escapee_alive():
            os.kill(escapee, signal.SIGKILL)
        cgroups.remove_group(str(session))


def test_memory_accounting_always_records_every_runs_peak(pb: Pb) -> None:
    """memory_accounting = always: a run without --memory-max gets a memory group too
    (here a v1 one: this machine's cgroup2 has no memory controller), so its peak memory
    is recorded (issue 12 asks for it wherever the controllers exist; review finding:
    `-` for every run without a limit).  With the default (auto), such a run shows none
    where the group would be a v1 one."""
    if os.geteuid() != 0 or not any("memory" in h.controllers for h in cgroups.discover()):
        pytest.skip("needs root and a memory controller")
    pb.env["PONYBUNNY_MEMORY_ACCOUNTING"] = "always"
    daemon = start(pb, "auto")
    try:
        daemon.add("alloc", "--", sys.executable, "-c", ALLOC.format(size=50))
        _, run = daemon.run("alloc")
        assert run["state"] == "succeeded", run
        assert run["peak_memory"] is not None and run["peak_memory"] >= 50 * 2**20, run
        shown = pb("config", "show").out
        assert "memory_accounting" in shown and "always" in shown, shown
    finally:
        kill_marked(daemon.keeper_id)
