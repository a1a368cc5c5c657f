"""Soak and fault injection (`pytest -m soak`): kill -9 cycles, cron storms, outages.

Every test ends by accounting for every occurrence: one terminal record per attempt,
none stuck in `running`, none executed twice, none vanished.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pb, alive, wait_dead, wait_for

pytestmark = pytest.mark.soak

TERMINAL = {"succeeded", "failed", "timed_out", "interrupted", "lost", "skipped"}


def all_runs(pb: Pb) -> list[dict[str, Any]]:
    result = pb("runs", "--json", "-n", "100000")
    assert result.code == 0, result.all
    return json.loads(result.out)  # type: ignore[no-any-return]


def account(pb: Pb, markers: Path, interval: float | None) -> dict[str, int]:
    """Check the bookkeeping after a clean stop; return the counts for the report."""
    items = all_runs(pb)
    assert not [r for r in items if r["state"] == "running"], "a run was left running"
    by_occurrence: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in items:
        by_occurrence[(run["job"], run["occurrence"])].append(run)
    for attempts in by_occurrence.values():
        numbers = sorted(r["attempt"] for r in attempts)
        assert numbers == list(range(1, len(numbers) + 1)), attempts  # one record per attempt
        ordered = sorted(attempts, key=lambda r: r["attempt"])
        # only the newest attempt may still wait (a resume queued by the last shutdown)
        assert all(r["state"] in TERMINAL for r in ordered[:-1]), attempts
    executed = markers.read_text().split() if markers.exists() else []
    duplicates = len(executed) - len(set(executed))
    assert duplicates == 0, "a run executed twice"
    assert set(executed) <= {str(r["id"]) for r in items}
    vanished = 0
    if interval:
        grid = sorted(datetime.fromisoformat(o) for (_, o) in by_occurrence)
        expected = round((grid[-1] - grid[0]).total_seconds() / interval) + 1
        vanished = expected - len(grid)
        assert vanished == 0, "an occurrence vanished"
    return {"runs": len(items), "occurrences": len(by_occurrence), "duplicates": duplicates,
            "vanished": vanished, "lost": sum(r["state"] == "lost" for r in items)}


def test_fifty_kill_9_cycles(pb: Pb, tmp_path: Path) -> None:
    markers = tmp_path / "executed"
    pb.env["PONYBUNNY_SHUTDOWN_GRACE"] = "2"
    pb("scheduler", "start", check=True)
    pb("job", "add", "tick", "--every", "1s", "--retries", "1", "--retry-delay", "0.2s",
       "--shell", "--", f"echo $PONYBUNNY_RUN_ID >> {markers}; sleep 0.3", check=True)
    rng = random.Random(7)
    for _ in range(50):
        time.sleep(rng.uniform(0.2, 1.5))
        pid = pb.pid()
        os.kill(pid, signal.SIGKILL)
        assert wait_dead(pid, 10)
        started = pb("scheduler", "start")
        assert started.code == 0, started.all
    time.sleep(2)
    pb("scheduler", "stop", check=True)
    counts = account(pb, markers, interval=1.0)
    assert counts["occurrences"] >= 40
    print(f"\nSOAK kill-9: cycles=50 {counts}")


def _job_processes(home: Path) -> list[int]:
    """Processes whose environment says they are jobs of this home's scheduler."""
    found = []
    needle = f"PONYBUNNY_HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ and any(e.startswith(b"PONYBUNNY_RUN_ID=") for e in environ):
            found.append(int(entry.name))
    return found


def test_thirty_concurrent_force_starts(pb: Pb, home: Path, tmp_path: Path) -> None:
    markers = tmp_path / "executed"
    pb.env["PONYBUNNY_SHUTDOWN_GRACE"] = "1"
    pb("scheduler", "start", check=True)
    pb("job", "add", "work", "--every", "1s", "--overlap", "allow", "--shell", "--",
       f"echo $PONYBUNNY_RUN_ID >> {markers}; sleep 2", check=True)
    assert wait_for(lambda: markers.exists(), 10)
    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda _: pb("scheduler", "start", "--force", "--quiet",
                                             timeout=120), range(30)))
    for result in results:
        assert result.code in (0, 1), result.all
        assert result.code == 0 or "already running" in result.err, result.all
    daemons = [p for p in pb.pids if alive(p) and p == pb.pid()]
    assert len(daemons) == 1
    assert pb("scheduler", "status").code == 0
    time.sleep(2)
    pb("scheduler", "stop", check=True)
    assert wait_for(lambda: not _job_processes(home), 10), "orphaned job processes"
    counts = account(pb, markers, interval=1.0)
    print(f"\nSOAK force-starts: starts=30 {counts}")


def test_database_locked_longer_than_the_busy_timeout(pb: Pb, home: Path, tmp_path: Path) -> None:
    markers = tmp_path / "executed"
    pb("scheduler", "start", check=True)
    pb("job", "add", "tick", "--every", "1s", "--shell", "--",
       f"echo $PONYBUNNY_RUN_ID >> {markers}", check=True)
    assert wait_for(lambda: markers.exists(), 10)
    holder = sqlite3.connect(home / "pony.db", isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    time.sleep(12)  # SQLite's busy timeout (10 s) runs out: the daemon sees the errors
    holder.execute("ROLLBACK")
    holder.close()
    before = len(markers.read_text().split())
    assert wait_for(lambda: len(markers.read_text().split()) >= before + 3, 20)
    assert pb("scheduler", "status").code == 0
    pb("scheduler", "stop", check=True)
    log = (home / "scheduler.log").read_text()
    assert "database is locked" in log and ("Database unavailable" in log
                                            or "Database write failed" in log)
    counts = account(pb, markers, interval=1.0)
    print(f"\nSOAK db-locked: {counts}")


def test_home_removed_under_the_daemon(pb: Pb, tmp_path: Path, pg_url: str) -> None:
    import shutil

    pb.env["PONYBUNNY_DB"] = pg_url
    pb("scheduler", "start", check=True)
    pid = pb.pid()
    shutil.rmtree(pb.home)
    # it notices that its pid file is gone and stops in order rather than run unmanaged
    assert wait_dead(pid, 30)
    pb.home.mkdir()
    result = pb("runs", "--json")
    assert result.code == 0 and not [r for r in json.loads(result.out)
                                     if r["state"] == "running"]
    import psycopg

    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT count(*) FROM schedulers WHERE stopped_at IS NULL").fetchone()
    assert row == (0,)


def test_database_read_only_for_ten_seconds(pb: Pb, tmp_path: Path, pg_url: str) -> None:
    import psycopg

    markers = tmp_path / "executed"
    name = pg_url.rsplit("/", 1)[1]
    admin = "postgresql://postgres@127.0.0.1:5432/test"

    def read_only(on: bool) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            setting = "SET default_transaction_read_only = on" if on else "RESET ALL"
            conn.execute(f'ALTER DATABASE "{name}" {setting}')
            # sessions keep the setting they started with: make them reconnect
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s", (name,))

    pb.env["PONYBUNNY_DB"] = pg_url
    pb("scheduler", "start", check=True)
    pb("job", "add", "tick", "--every", "1s", "--shell", "--",
       f"echo $PONYBUNNY_RUN_ID >> {markers}", check=True)
    assert wait_for(lambda: markers.exists(), 10)
    read_only(True)
    time.sleep(10)
    read_only(False)
    before = len(markers.read_text().split())
    assert wait_for(lambda: len(markers.read_text().split()) >= before + 3, 30)
    assert pb("scheduler", "status").code == 0
    pb("scheduler", "stop", check=True)
    log = (pb.home / "scheduler.log").read_text()
    assert "read-only transaction" in log
    counts = account(pb, markers, interval=1.0)
    print(f"\nSOAK db-read-only: {counts}")
