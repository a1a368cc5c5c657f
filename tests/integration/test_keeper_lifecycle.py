"""The keeper's life: started on demand (once, however many ask), runs that outlive the
scheduler, outcomes that outlive the keeper, stale files, full disks, another user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from pony_scheduler.keeper import client as client_module
from pony_scheduler.keeper.client import KeeperClient, ProtocolMismatch, ensure_keeper
from pony_scheduler.keeper.journal import KeeperRunning, mark_recorded, read_journal
from pony_scheduler.keeper.protocol import Outcome
from pony_scheduler.lifecycle.pidfile import proc_start_time
from tests.conftest import wait_for
from tests.integration.keeper_helpers import (
    Session,
    keeper_pid,
    kill_keeper,
    kill_marked,
    marked,
    remove_home_groups,
    sessions_fixture,  # noqa: F401 (the `sessions` fixture)
)

ROOT = Path(__file__).resolve().parents[2]
TEST_USER = "pony-keeper-test"


def keepers_of(home: Path) -> list[int]:
    """Keeper processes for `home`, by their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"pony_scheduler.keeper" in argv and str(home).encode() in argv:
                found.append(int(entry))
    alive = [pid for pid in found if proc_start_time(pid) is not None]
    # The keeper's journal sync helper is its forked child, with the same command line.
    return [
        pid
        for pid in alive
        if os.stat(f"/proc/{pid}").st_ino
        and int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) not in alive
    ]


def test_concurrent_starts_leave_one_keeper(home: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from pony_scheduler.keeper.client import "
        "ensure_keeper; c = ensure_keeper(Path(sys.argv[1]), idle_exit_s=1); "
        "print(c.welcome.pid)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(8)
    ]
    try:
        pids = {int(p.communicate(timeout=120)[0].strip()) for p in procs}
        assert len(pids) == 1
        assert keepers_of(home) == list(pids)
    finally:
        kill_keeper(home)
        remove_home_groups(home)


def test_stale_pid_file_is_replaced_and_its_pid_left_alone(
    home: Path, sessions: list[Session]
) -> None:
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        (home / "keeper.pid").write_text(f"{bystander.pid}\n")
        (home / "keeper.json").write_text(json.dumps({"pid": bystander.pid, "keeperId": "x"}))
        session = Session(home)
        sessions.append(session)
        assert session.client.welcome.pid != bystander.pid
        assert bystander.poll() is None
        assert (
            f"Replacing a stale keeper.pid (PID {bystander.pid}: another program now)"
            in (home / "keeper.log").read_text()
        )
    finally:
        bystander.kill()
        bystander.wait()


def test_runs_outlive_a_killed_scheduler_and_are_recorded_once(
    home: Path, sessions: list[Session]
) -> None:
    """kill -9 of the scheduler: its runs go on, a new scheduler gets each outcome, and
    after its ack nobody gets them again."""
    script = textwrap.dedent("""
        import os, sys, time
        from pathlib import Path
        from pony_scheduler.keeper.client import KeeperClient
        from pony_scheduler.keeper.protocol import Launch
        home = Path(sys.argv[1])
        c = KeeperClient.connect(home, "first", idle_exit_s=2)
        for n in (1, 2, 3):
            c.launch(Launch(n, ("sh", "-c", "sleep 1; echo done $PONYBUNNY_RUN_ID"),
                            f"{home}/runs/j/{n}.log", env={"PATH": os.environ["PATH"]}))
        print("launched", flush=True)
        time.sleep(300)
    """)
    first = subprocess.Popen(
        [sys.executable, "-c", script, str(home)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline() == "launched\n"
        control = ensure_keeper(home)
        assert wait_for(lambda: control.status().runs == 3, 30)
    finally:
        first.kill()
        first.wait()
    assert wait_for(lambda: control.status().runs == 0 and control.status().unacked == 3, 60)
    control.close()
    second = Session(home, scheduler_id="second")
    sessions.append(second)
    got = second.client.welcome.outcomes
    assert sorted(o.run_id for o in got) == [1, 2, 3]
    assert all(o.ending == "exited" and o.tail == f"done {o.run_id}\n".encode() for o in got)
    second.client.ack(o.id for o in got)
    second.close()
    third = Session(home, scheduler_id="third")
    sessions.append(third)
    assert third.client.welcome.outcomes == ()
    assert third.client.status().unacked == 0


def test_outcomes_outlive_the_keeper(home: Path) -> None:
    """No scheduler, runs over, all journaled: the keeper exits; read_journal has them."""
    session = Session(home, idle_exit_s=0.5)
    try:
        ids = [session.launch("sh", "-c", f"exit {n}") for n in (0, 1)]
        outcomes = [session.outcome(i) for i in ids]
        session.close()
        assert wait_for(lambda: not (home / "keeper.pid").exists(), 60)
        assert wait_for(lambda: keepers_of(home) == [], 30)  # the process ends just after
        found = read_journal(home)
        assert [(o.run_id, o.exit_code) for o in found] == [(ids[0], 0), (ids[1], 1)]
        assert found == outcomes
        mark_recorded(home, [found[0].id])
        assert [o.run_id for o in read_journal(home)] == [ids[1]]
        again = Session(home)  # a keeper gives what is pending in its welcome
        try:
            assert [o.run_id for o in again.client.welcome.outcomes] == [ids[1]]
            with pytest.raises(KeeperRunning):
                mark_recorded(home, [found[1].id])
        finally:
            again.client.release_exit(10)
            again.close()
        # The keeper answers its release before its process ends and lets go of its lock:
        # marking before that raises KeeperRunning (failed so once under load).
        assert wait_for(lambda: keepers_of(home) == [], 30)
        mark_recorded(home, [found[1].id])
        assert read_journal(home) == []
    finally:
        kill_keeper(home)
        remove_home_groups(home)


def test_kill_9_of_the_keeper(home: Path, sessions: list[Session]) -> None:
    """What was synced survives; a held run is orphaned and lost - and the next keeper
    stops it, so that its repetition never runs beside it."""
    session = Session(home)
    sessions.append(session)
    quick = session.launch("sh", "-c", "exit 6")
    done = session.outcome(quick)
    assert wait_for(lambda: session.client.status().unjournaled == 0, 30)
    slow = session.launch("sh", "-c", "sleep 300 & exec sleep 300")
    session.started(slow)
    old_keeper = session.keeper_id
    assert len(marked(old_keeper, slow)) == 2
    kill_keeper(home)
    try:
        assert read_journal(home) == [done]
        assert len(marked(old_keeper, slow)) == 2  # orphaned: nobody can record them now
        again = Session(home)
        sessions.append(again)
        assert [o.id for o in again.client.welcome.outcomes] == [done.id]
        assert wait_for(lambda: marked(old_keeper, slow) == [], 30)
        assert (
            "which died" in (home / "keeper.log").read_text()
            or "left by a keeper that died" in (home / "keeper.log").read_text()
        )
    finally:
        kill_marked(old_keeper)


def test_torn_journal_line_is_cut(home: Path, sessions: list[Session]) -> None:
    session = Session(home, idle_exit_s=0.5)
    done = session.outcome(session.launch("true"))
    session.close()
    assert wait_for(lambda: not (home / "keeper.pid").exists(), 60)
    good = (home / "keeper.journal").read_bytes()
    (home / "keeper.journal").write_bytes(good + b'{"v":1,"type":"outcome","outc')
    assert read_journal(home) == [done]
    again = Session(home)
    sessions.append(again)
    assert again.client.welcome.outcomes == (done,)
    assert (home / "keeper.journal").read_bytes() == good
    assert "a torn last line cut" in (home / "keeper.log").read_text()


def test_protocol_mismatch_is_refused_clearly(
    home: Path, sessions: list[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions.append(Session(home))
    monkeypatch.setattr(client_module, "PROTOCOL", 99)
    with pytest.raises(ProtocolMismatch, match="speaks protocol 1, not 99"):
        KeeperClient.connect(home, "newer")


def test_a_newer_scheduler_makes_the_keeper_retire_once_its_runs_end(
    home: Path, tmp_path: Path, sessions: list[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade to a scheduler that speaks a newer protocol: it is refused clearly,
    and the old keeper, told so, exits once its run has ended, although it would
    otherwise wait an hour; the next keeper has the run's outcome from the journal."""
    release = tmp_path / "release"
    old = Session(home, idle_exit_s=3600)
    sessions.append(old)
    run_id = old.launch("sh", "-c", f"while [ ! -e {release} ]; do sleep 0.1; done")
    assert wait_for(lambda: (old.pump(0.1), old.client.held())[1], 30)
    keeper = int((home / "keeper.pid").read_text())
    old.client.close()  # the old scheduler handed over and left
    monkeypatch.setattr(client_module, "PROTOCOL", 99)
    with pytest.raises(ProtocolMismatch, match=r"it exits once its 1 run\(s\) have ended"):
        KeeperClient.connect(home, "newer")
    monkeypatch.undo()
    assert (
        "wants this home: this keeper exits once its 1 run(s) have ended"
        in (home / "keeper.log").read_text()
    )
    release.touch()
    assert wait_for(lambda: proc_start_time(keeper) is None, 60)
    again = Session(home)
    sessions.append(again)
    assert [o.run_id for o in again.client.welcome.outcomes] == [run_id]


def test_only_the_keepers_uid_may_talk(sessions: list[Session]) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to connect as another user")
    home = Path(tempfile.mkdtemp(prefix="pony-uid-"))  # every user may reach the socket
    home.chmod(0o755)
    session = Session(home)
    sessions.append(session)
    (home / "keeper.sock").chmod(0o666)  # only the peer check is left to refuse
    code = textwrap.dedent("""
        import socket, sys
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        try:
            s.sendall(b'{"type":"hello","protocol":1,"role":"control"}\\n')
            print("answered" if s.recv(100) else "closed")
        except OSError:
            print("closed")
    """)
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            code,
            str(home / "keeper.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    if "Permission denied" in result.stderr and "python" in result.stderr:
        pytest.skip("this interpreter is not readable by uid 65534")
    assert result.stdout.strip() == "closed", result.stderr
    assert "Refused a connection" in (home / "keeper.log").read_text()
    assert session.client.status().clients == 1
    session.client.release_exit(10)
    shutil.rmtree(home, ignore_errors=True)


def test_sigterm_stops_runs_and_journals_them(home: Path) -> None:
    session = Session(home)
    try:
        run = session.launch("sh", "-c", "sleep 300 & wait")
        session.started(run)
        pid = keeper_pid(home)
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        done = session.outcome(run)
        assert (done.ending, done.detail) == ("stopped", "stopped by a signal to the keeper")
        assert wait_for(lambda: proc_start_time(pid) is None, 60)
        assert read_journal(home) == [done]
        assert marked(session.keeper_id) == []
    finally:
        kill_keeper(home)
        kill_marked(session.keeper_id)
        remove_home_groups(home)


def test_sighup_reopens_the_log(home: Path, sessions: list[Session]) -> None:
    sessions.append(Session(home))
    (home / "keeper.log").rename(home / "keeper.log.1")
    pid = keeper_pid(home)
    assert pid is not None
    os.kill(pid, signal.SIGHUP)
    assert wait_for(
        lambda: (
            (home / "keeper.log").exists()
            and "Reopened log file" in (home / "keeper.log").read_text()
        ),
        30,
    )


# ---------------------------------------------------------------- elsewhere: namespaces, users
def scenario(
    name: str, home: Path, *, wrap: list[str], env: dict[str, str] | None = None, setup: str = ""
) -> dict[str, object]:
    """Run keeper_scenario NAME in a shell `setup` and a `wrap` (unshare, setpriv)."""
    command = f'{setup} exec "$0" -m tests.integration.keeper_scenario {name} {home}'
    result = subprocess.run(
        [*wrap, "sh", "-c", command, sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def need_unshare() -> list[str]:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private tmpfs")
    return ["unshare", "--mount", "--propagation", "private"]


def test_full_disk_and_read_only_output(home: Path) -> None:
    """A 64 KiB file system for the output, nearly filled: the job goes on, its real exit status is
    recorded, the note says why the file is short; a read-only directory likewise."""
    (home / "runs").mkdir()
    (home / "ro").mkdir()
    setup = (
        f"mount -t tmpfs -o size=64k tmpfs {home}/runs && mount --bind {home}/ro "
        f"{home}/ro && mount -o remount,bind,ro {home}/ro &&"
    )
    try:
        seen = scenario("full_runs", home, wrap=need_unshare(), setup=setup)
    finally:
        kill_keeper(home)
        remove_home_groups(home)
    full, ro = seen["full"], seen["ro"]
    assert isinstance(full, dict) and isinstance(ro, dict)
    assert (full["ending"], full["exit_code"]) == ("exited", 7)
    # It stops short of the space kept free (half of so small a filesystem: keep_free).
    assert full["note"] == "output incomplete: the filesystem is nearly full (kept 32 KiB free)"
    assert full["output_bytes"] == seen["stored"] and 0 < full["output_bytes"] <= 32768
    assert full["tail_bytes"] == 4096
    assert (ro["ending"], ro["exit_code"]) == ("exited", 0)
    assert (
        ro["note"] == f"output incomplete: cannot create {home}/ro/j/2.log: Read-only file system"
    )


def test_full_disk_keeps_the_outcome_in_memory_until_the_journal_takes_it(home: Path) -> None:
    setup = f"mount -t tmpfs -o size=512k tmpfs {home} &&"
    try:
        seen = scenario("full_journal", home, wrap=need_unshare(), setup=setup)
    finally:
        kill_keeper(home)
        remove_home_groups(home)
    outcome, stuck = seen["outcome"], seen["stuck"]
    assert isinstance(outcome, dict) and isinstance(stuck, dict)
    assert (outcome["ending"], outcome["exit_code"]) == ("exited", 5)
    assert stuck == {"unjournaled": 1, "error": "No space left on device"}
    assert seen["after"] == 0
    assert seen["journal"] == [1]
    assert "Cannot write keeper.journal (No space left on device)" in str(seen["log"])
    assert "no outcome was lost" in str(seen["log"])


def test_as_an_unprivileged_user() -> None:
    """No cgroup rights: the keeper says so and contains runs by process group and
    environment; escapees are still found and killed; an output directory the user may
    not write is noted."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create and become the test user")
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
            timeout=60,
        )
    user = pwd.getpwnam(TEST_USER)
    probe = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # An interpreter the user may run, which may also start itself (the keeper): this
    # venv's may sit below /root.
    check = (
        "import subprocess, sys; import pony_scheduler.keeper.client; "
        "subprocess.run([sys.executable, '-c', 'pass'], check=True)"
    )
    for python in (sys.executable, shutil.which("python3", path="/usr/bin:/bin") or ""):
        if (
            python
            and subprocess.run(
                [*probe, python, "-c", check], capture_output=True, cwd=ROOT, env=env, timeout=60
            ).returncode
            == 0
        ):
            break
    else:
        pytest.skip(f"no Python interpreter that {TEST_USER} may run")
    top = Path(tempfile.mkdtemp(prefix="pony-user-"))  # pytest's own tmp is root's alone
    top.chmod(0o755)
    home = top / "userhome"
    home.mkdir(mode=0o700)
    os.chown(home, user.pw_uid, user.pw_gid)
    command = [*probe, python, "-m", "tests.integration.keeper_scenario", "unprivileged", str(home)]
    try:
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env
        )
    finally:
        kill_keeper(home)
    shutil.rmtree(top, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["uid"] == user.pw_uid
    assert seen["containment"] == "pgroup" and "Permission denied" in seen["note"]
    outcomes = seen["outcomes"]
    assert (outcomes["1"]["ending"], outcomes["1"]["exit_code"], outcomes["1"]["leftovers"]) == (
        "exited",
        0,
        1,
    )
    assert outcomes["2"]["ending"] == "timed_out"
    assert (outcomes["3"]["exit_code"], outcomes["3"]["note"]) == (
        3,
        f"output incomplete: cannot create {home}/locked/j/3.log: Permission denied",
    )
    assert outcomes["4"]["ending"] == "not_started"
    assert "memory_max needs the memory controller" in outcomes["4"]["detail"]
    assert seen["left"] == []
    assert all(o["containment"] == "pgroup" for o in outcomes.values())


def test_outcome_fields_survive_the_journal(home: Path) -> None:
    """Everything an Outcome says comes back identical from the file."""
    session = Session(home, idle_exit_s=0.5)
    try:
        run = session.launch("sh", "-c", "printf 'a\\000\\377'; sleep 300 & exit 2")
        done = session.outcome(run)
        session.close()
        assert wait_for(lambda: not (home / "keeper.pid").exists(), 60)
        assert read_journal(home) == [done]
        assert isinstance(done, Outcome) and done.tail == b"a\x00\xff" and done.leftovers == 1
    finally:
        kill_keeper(home)
        remove_home_groups(home)


def test_a_keeper_left_draining_takes_runs_again_or_retires(
    home: Path, sessions: list[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that could not record its outcomes leaves the keeper draining (it keeps
    them).  The next scheduler's launch ends the drain; a keeper from before that (whose
    status has no drain_ends) would refuse every launch for good, so the scheduler asks
    it to exit, and the next keeper has its outcome (review finding: an upgrade's)."""
    from dataclasses import replace

    from pony_scheduler.scheduler.executor import Executor

    old = Session(home, idle_exit_s=3600)
    sessions.append(old)
    run_id = old.launch("sleep", "300")
    old.started(run_id)
    old.client.drain(0, by="test")
    assert old.outcome(run_id).ending == "stopped"
    old.client.close()  # no exit: its outcome could not be recorded
    keeper = int((home / "keeper.pid").read_text())

    def executor() -> Executor:
        noop = lambda *_: None  # noqa: E731
        return Executor(home, 1, noop, noop, noop, lambda: timedelta(0))

    # This version's keeper: the launch is taken, the drain is over.
    now = executor()
    now.connect("next")
    assert not now.keeper_retiring
    new = Session.__new__(Session)
    new.home, new.client, new.events, new.next_id = home, now.keeper(), [], 100
    assert new.outcome(new.launch("true")).ending == "exited"
    assert "The drain is over" in (home / "keeper.log").read_text()
    # Left draining again, and seen as a keeper from before drain_ends: asked to exit.
    now.keeper().drain(0, by="test")
    now.keeper().close()
    real_status = KeeperClient.status
    monkeypatch.setattr(
        KeeperClient, "status", lambda self: replace(real_status(self), drain_ends=False)
    )
    later = executor()
    later.connect("later")
    assert later.keeper_retiring
    assert wait_for(lambda: proc_start_time(keeper) is None, 60)
    monkeypatch.undo()
    again = Session(home)
    sessions.append(again)
    assert run_id in {o.run_id for o in again.client.welcome.outcomes}


def test_a_kept_session_number_reused_by_a_later_run_is_not_kept(home: Path) -> None:
    """pgroup containment: a session kept with `--leftovers keep` ends; a later run's
    main gets the same PID (steered in a PID namespace with ns_last_pid).  Its leftovers
    are counted and killed as any run's, and after a keeper crash the next keeper kills
    that run's processes (review finding: both times they were spared as kept)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a PID namespace")
    wrap = ["unshare", "--pid", "--fork", "--mount-proc"]
    seen = scenario("reused_kept_session", home, wrap=wrap, env={"PONYBUNNY_CONTAINMENT": "pgroup"})
    assert seen["containment"] == "pgroup", seen
    first, later, kept_left, later_left = seen["tries"][-1]  # type: ignore[index]
    assert first == later, seen  # the PID came back: the case under test
    assert (kept_left, later_left) == (1, 1), seen
    assert seen["left"] == [], seen
    first, later, _, _ = seen["crash_tries"][-1]  # type: ignore[index]
    assert first == later, seen
    assert seen["left_after_crash"] == [], seen  # the keeper after a crash killed them
