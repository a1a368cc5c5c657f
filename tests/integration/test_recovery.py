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
    return {"command": ["true"], "shell": False, "schedule_kind": "manual",
            "schedule_expr": "", "schedule_tz": "UTC", "schedule_anchor": "",
            "timeout_s": None, "retries": retries, "retry_delay_s": 1.0, "overlap": "skip",
            "catch_up": "once", "cwd": None, "env": {}, "enabled": True, "next_due_at": None}


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
    orphan = subprocess.Popen(["sh", "-c", "sleep 60 & exec sleep 60"], start_new_session=True,
                              env={**env, recovery.SCHEDULER_VAR: dead})
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True,
                                env={**env, recovery.SCHEDULER_VAR: "someone-else"})
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
