"""`pb scheduler start|stop|status` with real daemon processes in a temporary home."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Pb, alive, wait_dead, wait_for


def started(pb: Pb, *args: str) -> int:
    result = pb("scheduler", "start", *args)
    assert result.code == 0, result.all
    assert "✓ Scheduler started" in result.out
    return pb.pid()


def test_round_trip(pb: Pb, home: Path) -> None:
    result = pb("scheduler", "start")
    assert result.code == 0, result.all
    pid = pb.pid()
    for label in ("PID:", "Database:", "Socket:", "Log file:"):
        assert label in result.out
    assert f"PID:       {pid}" in result.out
    assert (home / "scheduler.pid").read_text() == f"{pid}\n"  # the PID alone, as tools expect
    meta = json.loads((home / "scheduler.json").read_text())
    assert meta["pid"] == pid and meta["mode"] == "background"
    assert meta["dbPath"] == f"sqlite:///{home}/pony.db"
    assert meta["socketPath"] == str(home / "gateway.sock")
    for key in ("startedAt", "version", "procStartTime", "bootId", "hostname"):
        assert key in meta
    assert oct(home.stat().st_mode & 0o777) == "0o700"

    status = pb("scheduler", "status")
    assert status.code == 0
    for label in (
        "Status:    ✓ Running",
        f"PID:       {pid}",
        "Mode:      background",
        "Database:",
        "Socket:",
        "Started:",
        "Uptime:",
        "Log file:",
    ):
        assert label in status.out
    as_json = json.loads(pb("scheduler", "status", "--json").out)
    assert as_json["status"] == "running" and as_json["pid"] == pid

    stop = pb("scheduler", "stop")
    assert stop.code == 0
    assert f"Stopping Scheduler (PID {pid})..." in stop.out and "✓ Scheduler stopped" in stop.out
    assert stop.err == ""  # its keeper left with it: no warning of one that stays
    assert not alive(pid)
    assert not (home / "scheduler.pid").exists() and not (home / "scheduler.json").exists()
    assert pb("scheduler", "status").code == 3
    assert pb("scheduler", "stop").out.strip() == "Scheduler is not running"

    log = (home / "scheduler.log").read_text()
    for step in (
        "Scheduler ready",
        "Shutdown requested",
        "Closing database connections",
        "Scheduler stopped (exit status 0)",
    ):
        assert step in log


def test_python_m_and_version(pb: Pb) -> None:
    result = pb("--version")
    assert result.code == 0 and "pony-scheduler" in result.out


def test_double_start(pb: Pb) -> None:
    pid = started(pb)
    again = pb("scheduler", "start")
    assert again.code == 1
    assert "⚠ Scheduler is already running" in again.err
    assert str(pid) in again.err and "Started:" in again.err
    assert pb.pid() == pid


def test_twenty_concurrent_starts_leave_one_daemon(pb: Pb, home: Path) -> None:
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: pb("scheduler", "start"), range(20)))
    codes = sorted(r.code for r in results)
    assert codes == [0] + [1] * 19, [r.all for r in results]
    for result in results:
        if result.code:
            assert "already running" in result.err, result.all
    pid = pb.pid()
    daemons = [p for p in _pony_processes() if _home_of(p) == str(home)]
    assert daemons == [pid]


def test_a_stop_during_a_start_waits_for_it(pb: Pb, home: Path) -> None:
    """A stop while a start is under way (it holds the start lock, no pid file yet) said
    "not running", and the daemon came up after it (review finding).  It now waits for
    the start (and then stops what it brought up), and says so if it outlasts
    --timeout."""
    import fcntl

    home.mkdir(mode=0o700, exist_ok=True)
    lock = home / ".scheduler.start.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a start in progress, as long as the test likes
        held = pb("scheduler", "stop", "--timeout", "1")
        assert held.code == 1 and held.err.count("\n") == 1, held.all
        assert "a start of the scheduler is still in progress after 1s" in held.err
    finally:
        os.close(fd)
    assert not (home / "scheduler.pid").exists()
    free = pb("scheduler", "stop")  # no start under way: not running, as before
    assert free.code == 0 and "not running" in free.out + free.err, free.all


def _pony_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                # The scheduler's run keeper (and its sync helper) is another program.
                if b"pony_scheduler" in cmdline and b"pony_scheduler.keeper" not in cmdline:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _home_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")  # daemons run in their home
    except OSError:
        return None


def test_kill_9_then_start(pb: Pb, home: Path) -> None:
    old = started(pb)
    os.kill(old, signal.SIGKILL)
    assert wait_dead(old, 5)
    status = pb("scheduler", "status")
    assert status.code == 1 and "stale" in status.out and f"PID {old} is not running" in status.out
    result = pb("scheduler", "start")
    assert result.code == 0, result.all
    assert "stale pid file" in result.err
    new = pb.pid()
    assert new != old and alive(new)
    assert "Removed stale pid file" in (home / "scheduler.log").read_text()


@pytest.fixture
def bystander() -> object:
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def test_pid_file_of_unrelated_live_process(
    pb: Pb, home: Path, bystander: subprocess.Popen
) -> None:
    (home / "scheduler.pid").write_text(f"{bystander.pid}\n")
    status = pb("scheduler", "status")
    assert status.code == 1 and "stale" in status.out and "another program" in status.out
    stop = pb("scheduler", "stop")
    assert stop.code == 0 and "not running" in stop.out
    assert bystander.poll() is None  # never signalled
    started(pb)
    assert bystander.poll() is None
    pb("scheduler", "stop", check=True)
    assert bystander.poll() is None


def test_pid_file_of_another_users_process(pb: Pb, home: Path) -> None:
    proc = subprocess.Popen(["sleep", "120"], user="nobody")
    try:
        (home / "scheduler.pid").write_text(f"{proc.pid}\n")
        status = pb("scheduler", "status")
        assert status.code == 1 and "another program" in status.out
        assert pb("scheduler", "stop").code == 0
        started(pb)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("content", ["garbage\n", "", "-5\n", "12 34\n"])
def test_garbage_or_empty_pid_file(pb: Pb, home: Path, content: str) -> None:
    (home / "scheduler.pid").write_text(content)
    status = pb("scheduler", "status")
    assert status.code == 1 and "stale" in status.out
    result = pb("scheduler", "start")
    assert result.code == 0, result.all
    assert "Removed stale pid file" in result.err


def test_start_force(pb: Pb) -> None:
    quiet = pb("scheduler", "start", "--force", "--quiet")
    assert quiet.code == 0 and quiet.out == "" and quiet.err == ""
    first = pb.pid()
    again = pb("scheduler", "start", "--force", "--quiet")
    assert again.code == 0 and again.out == "" and again.err == ""
    second = pb.pid()
    assert second != first and not alive(first) and alive(second)
    os.kill(second, signal.SIGKILL)
    assert wait_dead(second, 5)
    third = pb("scheduler", "start", "--force", "--quiet")  # over a stale pid file
    assert third.code == 0 and third.out == "", third.all
    assert alive(pb.pid())


def test_sigterm_and_sigint_shut_down_in_order(pb: Pb, home: Path) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        pid = started(pb)
        os.kill(pid, signum)
        assert wait_dead(pid, 10)
        assert not (home / "scheduler.pid").exists()
        assert not (home / "scheduler.json").exists()
    log = (home / "scheduler.log").read_text()
    assert log.count("Scheduler stopped (exit status 0)") == 2


def test_sighup_reopens_log(pb: Pb, home: Path) -> None:
    pid = started(pb, "--debug")
    log = home / "scheduler.log"
    rotated = home / "scheduler.log.1"
    log.rename(rotated)
    os.kill(pid, signal.SIGHUP)
    assert wait_for(lambda: log.exists() and "Reopened log file" in log.read_text(), 5)
    size = rotated.stat().st_size
    pb("scheduler", "stop", check=True)
    assert "Scheduler stopped" in log.read_text()
    assert rotated.stat().st_size == size  # nothing more went to the renamed file
    assert pb("scheduler", "status").code == 3


def test_a_stop_waits_for_the_running_schedulers_grace(pb: Pb, home: Path) -> None:
    """`start --shutdown-grace 70` then `stop`: the stop's default wait came from its own
    settings (grace 30 + 15 s) and gave up while the scheduler drained (review
    finding).  The running scheduler's grace is in scheduler.json, and the wait follows
    it (the drain itself is not waited for here: the wait is read off the metadata)."""
    from pony_scheduler.config import load_settings
    from pony_scheduler.keeper.protocol import KILL_GRACE_S
    from pony_scheduler.lifecycle.services import stop_timeout
    from pony_scheduler.lifecycle.spec import SCHEDULER

    pb("scheduler", "start", "--shutdown-grace", "70", check=True)
    try:
        meta = json.loads((home / "scheduler.json").read_text())
        assert meta["shutdownGrace"] == 70
        settings = load_settings(home=home)  # this command's own: the default grace, 30
        assert settings.shutdown_grace == 30
        assert stop_timeout(SCHEDULER, settings) == 70 + 3 * KILL_GRACE_S
    finally:
        pb("scheduler", "stop", check=True)
    assert stop_timeout(SCHEDULER, settings) == 30 + 3 * KILL_GRACE_S  # none runs


def test_stop_timeout_then_force(pb: Pb, home: Path) -> None:
    pid = started(pb)
    os.kill(pid, signal.SIGSTOP)  # a daemon that does not react to SIGTERM
    try:
        result = pb("scheduler", "stop", "--timeout", "0.5")
        assert result.code == 1
        assert "still running" in result.err and "--force" in result.err
        forced = pb("scheduler", "stop", "--force")
        assert forced.code == 0 and "killed" in forced.out
        assert wait_dead(pid, 5)
        assert not (home / "scheduler.pid").exists()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_start_not_ready_within_timeout(pb: Pb, home: Path) -> None:
    db = home / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")  # the daemon cannot read the schema until we let go
    try:
        result = pb("scheduler", "start", "--db", str(db), "--timeout", "1")
        assert result.code == 75, result.all
        assert "did not become ready within 1s" in result.err
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert wait_for(lambda: pb("scheduler", "status").code == 0, 15)


def test_foreground_with_systemd_notify(pb: Pb, home: Path, tmp_path: Path) -> None:
    import socket

    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(15)
    proc = pb.popen(
        "scheduler", "start", "--foreground", env={"NOTIFY_SOCKET": address}, stderr=subprocess.PIPE
    )
    try:
        assert b"READY=1" in listener.recv(4096)
        assert pb.pid() == proc.pid
        meta = json.loads((home / "scheduler.json").read_text())
        assert meta["mode"] == "foreground"
        assert "Mode:      foreground" in pb("scheduler", "status").out
        assert pb("scheduler", "start").code == 1
        proc.send_signal(signal.SIGTERM)
        assert b"STOPPING=1" in listener.recv(4096)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert "Scheduler ready" in err and "Scheduler stopped" in err
        assert not (home / "scheduler.pid").exists()
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.postgres
def test_round_trip_on_postgresql(pb: Pb, home: Path, pg_url: str) -> None:
    result = pb("scheduler", "start", "--db", pg_url)
    assert result.code == 0, result.all
    assert "postgresql+psycopg://postgres@127.0.0.1:5432/pony_test_" in result.out
    assert "Database:  postgresql" in pb("scheduler", "status").out
    import psycopg

    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT pid FROM schedulers WHERE stopped_at IS NULL").fetchone()
    assert row == (pb.pid(),)
    pb("scheduler", "stop", check=True)
    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        assert conn.execute(
            "SELECT count(*) FROM schedulers WHERE stopped_at IS NULL"
        ).fetchone() == (0,)


def test_a_restart_that_could_not_adopt_the_runs_leaves_the_scheduler_running(
    pb: Pb, home: Path
) -> None:
    """An upgrade across keeper protocols: restart and start --force refuse before they
    stop anything (review finding: the old scheduler was stopped first, and the home then
    had none until the keeper's runs ended).  keeper.json says what an older keeper
    would: its protocol."""
    pb("scheduler", "start", check=True)
    pid = pb.pid()
    meta_path = home / "keeper.json"
    assert wait_for(meta_path.exists, 30)
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "protocol": 0, "version": "0.0.1"}))
    try:
        for args in (("restart",), ("start", "--force")):
            refused = pb("scheduler", *args)
            assert refused.code == 1 and refused.err.count("\n") == 1, refused.all
            assert "pony-scheduler 0.0.1, protocol 0" in refused.err
            assert "the running scheduler was left alone" in refused.err
            assert pb.pid() == pid and alive(pid)
    finally:
        meta_path.write_text(json.dumps(meta))
    restarted = pb("scheduler", "restart")
    assert restarted.code == 0, restarted.all
    assert pb.pid() != pid


def test_a_scheduler_without_a_keeper_is_not_replaced(pb: Pb, home: Path) -> None:
    """A running scheduler whose home has no live keeper holds its runs itself (a release
    from before the keeper: review finding, its running run was killed by the restart and
    never recorded): restart and start --force refuse and leave it running.  No
    keeper.json stands for that release here."""
    pb("scheduler", "start", check=True)
    pid = pb.pid()
    meta_path = home / "keeper.json"
    assert wait_for(meta_path.exists, 30)
    saved = meta_path.read_bytes()
    meta_path.unlink()
    try:
        for args in (("restart",), ("start", "--force")):
            refused = pb("scheduler", *args)
            assert refused.code == 1 and refused.err.count("\n") == 1, refused.all
            assert "the running scheduler has no run keeper" in refused.err
            assert pb.pid() == pid and alive(pid)
    finally:
        meta_path.write_bytes(saved)
    assert pb("scheduler", "restart").code == 0
    assert pb.pid() != pid


def test_a_restart_onto_another_database_is_refused(pb: Pb, home: Path) -> None:
    """The replacement would find none of the handed-over runs running in its database and
    stop them as fenced (review: they were killed and stayed `running` in their own)."""
    pb("scheduler", "start", check=True)
    pid = pb.pid()
    for args in (
        ("restart", "--db", str(home / "other.db")),
        ("start", "--force", "--db", str(home / "other.db")),
    ):
        refused = pb("scheduler", *args)
        assert refused.code == 1 and refused.err.count("\n") == 1, refused.all
        assert f"the running scheduler uses database sqlite:///{home}/pony.db" in refused.err
        assert pb.pid() == pid and alive(pid)
    assert not (home / "other.db").exists()
    assert pb("scheduler", "restart").code == 0 and pb.pid() != pid
