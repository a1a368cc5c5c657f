"""Runs whose scheduler died elsewhere are found when their lease expires."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from pony_scheduler.scheduler import recovery
from pony_scheduler.scheduler.host import host_id
from pony_scheduler.store import Store
from pony_scheduler.store.common import utcnow
from pony_scheduler.store.tables import runs
from pony_scheduler.store.transitions import Claimant
from tests.conftest import wait_for
from tests.integration.test_store import request


def job_values(retries: int = 1) -> dict[str, Any]:
    return {
        "command": ["true"],
        "shell": False,
        "schedule_kind": "manual",
        "schedule_expr": "",
        "schedule_tz": "UTC",
        "schedule_anchor": "",
        "timeout_s": None,
        "retries": retries,
        "retry_delay_s": 1.0,
        "overlap": "skip",
        "catch_up": "once",
        "cwd": None,
        "env": {},
        "enabled": True,
        "next_due_at": None,
    }


def test_expired_lease_is_lost_and_retried(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'pony.db'}")
    store.add_job("j", job_values())
    run_id = store.request_run("j")
    # another host's scheduler claimed it, then vanished without a trace
    store.claim(Claimant("other-host-scheduler", "elsewhere", "other:boot"), request(1))
    assert store.get_run(run_id)["state"] == "running"  # type: ignore[index]
    me = store.register_scheduler()
    assert recovery.abandoned(store, me, "/home", utcnow()) == 0  # the lease still runs
    with store.engine.begin() as connection:
        connection.execute(update(runs).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert recovery.abandoned(store, me, "/home", utcnow()) == 1
    lost = store.get_run(run_id)
    assert lost is not None and lost["state"] == "lost"
    assert lost["reason"] == "lost: its scheduler stopped renewing the lease"
    retry = [r for r in store.list_runs() if r["attempt"] == 2]
    assert len(retry) == 1 and retry[0]["trigger"] == "retry"
    # The job's last result carries the duration `pb runs` shows (review finding: none).
    shown = next(r for r in store.list_runs() if r["id"] == run_id)
    job = store.get_job("j")
    assert job is not None and job["last_state"] == "lost", job
    assert shown["duration_s"] is not None and job["last_duration_s"] is not None, job
    assert abs(job["last_duration_s"] - shown["duration_s"]) < 0.002, (job, shown)
    store.close()


def test_a_run_lost_after_the_clock_stepped_back_ends_no_earlier_than_it_started(
    tmp_path: Path,
) -> None:
    """Declared lost with `now` two hours before its claim (the clock stepped back): it
    was recorded with a negative duration (review finding).  Its end is its start."""
    store = Store.open(f"sqlite:///{tmp_path / 'pony.db'}")
    store.add_job("j", job_values())
    run_id = store.request_run("j")
    store.claim(Claimant("other-host-scheduler", "elsewhere", "other:boot"), request(1))
    started = store.get_run(run_id)["started_at"]  # type: ignore[index]
    with store.engine.begin() as connection:
        connection.execute(update(runs).values(lease_until=utcnow() - timedelta(hours=3)))
    me = store.register_scheduler()
    assert recovery.abandoned(store, me, "/home", utcnow() - timedelta(hours=2)) == 1
    lost = store.get_run(run_id)
    assert lost is not None and lost["state"] == "lost"
    assert (lost["started_at"], lost["finished_at"]) == (started, started)
    assert lost["duration_s"] == 0
    store.close()


def test_orphan_without_a_recorded_pid_is_found_by_its_environment(tmp_path: Path) -> None:
    """A scheduler killed between a job's start and the write of its pid: the restarted
    scheduler finds the job's processes by PONYBUNNY_RUN_ID and PONYBUNNY_SCHEDULER_ID and
    stops their group; a process of another scheduler with the same run id is left alone."""
    store = Store.open(f"sqlite:///{tmp_path / 'pony.db'}")
    store.add_job("j", job_values(retries=0))
    run_id = store.request_run("j")
    dead = "dead-scheduler-id"
    store.claim(Claimant(dead, socket.gethostname(), host_id()), request(1))
    with store.engine.begin() as connection:
        connection.execute(update(runs).values(lease_until=utcnow() - timedelta(seconds=1)))
    env = {**os.environ, "PONYBUNNY_RUN_ID": str(run_id)}
    orphan = subprocess.Popen(
        ["sh", "-c", "sleep 60 & exec sleep 60"],
        start_new_session=True,
        env={**env, recovery.SCHEDULER_VAR: dead},
    )
    stranger = subprocess.Popen(
        ["sleep", "60"], start_new_session=True, env={**env, recovery.SCHEDULER_VAR: "someone-else"}
    )
    try:
        assert wait_for(lambda: len(recovery.run_processes(run_id, dead)) == 2, 5)
        me = store.register_scheduler()
        assert recovery.abandoned(store, me, "/home", utcnow()) == 1
        assert store.get_run(run_id)["state"] == "lost"  # type: ignore[index]
        assert orphan.wait(5) == -signal.SIGKILL
        assert wait_for(lambda: not recovery.run_processes(run_id, dead), 5)  # the group too
        assert stranger.poll() is None
    finally:
        for proc in (orphan, stranger):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        store.close()


def dead_scheduler(store: Store, scheduler_id: str, home: str) -> None:
    """A row for a scheduler of `home` on this host whose process is gone."""
    from pony_scheduler.lifecycle.pidfile import boot_id
    from pony_scheduler.scheduler.host import machine_id
    from pony_scheduler.store.tables import schedulers

    gone = subprocess.Popen(["true"])
    gone.wait()
    now = utcnow()
    with store.engine.begin() as connection:
        connection.execute(
            schedulers.insert().values(
                id=scheduler_id,
                hostname=socket.gethostname(),
                machine_id=machine_id(),
                pid=gone.pid,
                proc_start=1,
                boot_id=boot_id(),
                version="0",
                started_at=now,
                heartbeat_at=now,
                home=home,
            )
        )


def test_a_run_claimed_and_never_handed_to_the_keeper_is_queued_again(tmp_path: Path) -> None:
    """Its scheduler was killed between the claim and the launch: when this keeper was
    its only one and neither holds the run nor has its outcome, the run never started;
    it goes back to the queue, unlike a run of a scheduler that used another keeper."""
    store = Store.open(f"sqlite:///{tmp_path / 'pony.db'}")
    store.add_job("j", {**job_values(retries=0), "overlap": "allow"})
    home = str(tmp_path / "home")
    ids = {name: store.request_run("j") for name in ("unsent", "held", "elsewhere")}
    for name in ids:
        dead_scheduler(store, f"dead-{name}", home)
        store.claim(Claimant(f"dead-{name}", socket.gethostname(), host_id()), request(1))
    me = store.register_scheduler(home)
    sole = ["dead-unsent", "dead-held", "someone-alive"]
    back = recovery.never_started(store, me, home, sole, {ids["held"]}, utcnow())
    assert back == [ids["unsent"]]
    states = {name: store.get_run(run_id)["state"] for name, run_id in ids.items()}  # type: ignore[index]
    assert states == {"unsent": "queued", "held": "running", "elsewhere": "running"}
    assert (
        recovery.never_started(store, me, "/another/home", ["dead-elsewhere"], set(), utcnow())
        == []
    )  # another home's keeper may hold it
    assert recovery.abandoned(store, me, home, utcnow()) == 2  # the others: really lost
    assert store.get_run(ids["elsewhere"])["reason"] == "lost: its scheduler died"  # type: ignore[index]
    store.close()
