"""Runs whose scheduler died elsewhere are found when their lease expires."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from pony_scheduler.scheduler import recovery
from pony_scheduler.store import Store
from pony_scheduler.store.common import utcnow
from pony_scheduler.store.tables import runs


def test_expired_lease_is_lost_and_retried(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'pony.db'}")
    store.add_job("j", {"command": ["true"], "shell": False, "schedule_kind": "manual",
                        "schedule_expr": "", "schedule_tz": "UTC", "schedule_anchor": "",
                        "timeout_s": None, "retries": 1, "retry_delay_s": 1.0,
                        "overlap": "skip", "catch_up": "once", "cwd": None, "env": {},
                        "enabled": True, "next_due_at": None})
    run_id = store.request_run("j")
    # another host's scheduler claimed it, then vanished without a trace
    store.claim("other-host-scheduler", "elsewhere", utcnow(), 1, 60)
    assert store.get_run(run_id)["state"] == "running"  # type: ignore[index]
    me = store.register_scheduler()
    assert recovery.abandoned(store, me, utcnow()) == []  # the lease still runs
    with store.engine.begin() as connection:
        connection.execute(update(runs).values(lease_until=utcnow() - timedelta(seconds=1)))
    handled = recovery.abandoned(store, me, utcnow())
    assert [(run["id"], str(state)) for run, state in handled] == [(run_id, "lost")]
    lost = store.get_run(run_id)
    assert lost is not None and lost["reason"] == "lost: its scheduler stopped renewing the lease"
    store.close()
