"""The top-of-the-minute herd: N jobs at `* * * * *`, 4 workers, against a bare pool.

Method: a home holds N copies of one job added as `pb job add NAME --cron '* * * * *'
--tz UTC -- true` does, all due at the same minute M, which is at least 15 s away.  The
daemon (4 workers) is started; while it waits for M a bare pool (bench/bare.py: 4 threads,
subprocess.run(['true']) N times, the same interpreter) runs, and again once all N runs
of M have finished.  When each job process started is the kernel's own record
(runs.pid_start, the /proc start time the scheduler keeps to recognise its children: 10 ms
clock ticks since boot, put on the wall clock with /proc/uptime); the scheduler's stamp
(runs.started_at, taken as it claims a run) is in the note, and is used only when no pid
was kept.  Against the bare pool's time.time() just before each spawn:

- all started: the last job process's start - M, against the pool's last spawn - first;
- first start: the first job process's start - M (how soon after the minute anything
  runs);
- all finished: the last finished_at - M, against the bare pool's elapsed time.

A trial takes a minute (M is a wall-clock minute), so sizes alternate minute by minute:
1,000, 5,000, 1,000, 5,000 (one of each with --quick).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from common import (
    CLK_TCK,
    BenchResult,
    Daemon,
    bare,
    clone_jobs,
    job_values,
    new_home,
    open_store,
    raw_sqlite,
    sqlite_time,
    sqlite_url,
    utcnow,
    wait_finished,
)

SIZES = (1_000, 5_000)
WORKERS = 4
LEAD = 15.0  # seconds between the set-up and the minute, at least
GOAL_ALL = 1.2  # all N started within 1.2x the bare pool
GOAL_FIRST_MS = 50.0  # first start within 50 ms of the minute


def next_minute(after: datetime) -> datetime:
    return (after + timedelta(minutes=1)).replace(second=0, microsecond=0)


def prepare(home: Path, count: int) -> None:
    store = open_store(sqlite_url(home))
    try:
        store.add_job("herd-000000", job_values("herd-000000", ["true"], cron="* * * * *"))
    finally:
        store.close()
    clone_jobs(home, "herd-000000", count - 1, "herd")


def aim(home: Path, minute: datetime) -> None:
    """Every job of `home` next due at `minute` (the daemon is not running)."""
    with raw_sqlite(home) as connection:
        connection.execute("UPDATE jobs SET next_due_at = ?", (sqlite_time(minute),))


def herd(home: Path, count: int, trial: int) -> dict[str, Any]:
    """One trial: wait for a minute M, let the daemon start its N runs, measure."""
    minute = next_minute(utcnow() + timedelta(seconds=LEAD))
    aim(home, minute)
    daemon = Daemon(home, workers=WORKERS)
    try:
        daemon.start()
        before = bare("stamps", count, WORKERS, ["true"])
        wait = (minute - utcnow()).total_seconds()
        if wait < 1.0:
            raise RuntimeError(f"set-up took too long: {wait:.1f} s left before the minute")
        time.sleep(wait)
        store = open_store(sqlite_url(home))
        try:
            counts, stalled = wait_finished(
                store, count * (trial + 1), timeout=max(120, count / 10)
            )
            from sqlalchemy import select

            from pony_scheduler.store.tables import runs

            with store.engine.connect() as connection:
                rows = connection.execute(
                    select(runs.c.started_at, runs.c.finished_at, runs.c.pid_start).where(
                        runs.c.occurrence == minute
                    )
                ).all()
        finally:
            store.close()
        daemon.stop()
    finally:
        daemon.cleanup()
    after = bare("stamps", count, WORKERS, ["true"])
    started = sorted((r.started_at - minute).total_seconds() for r in rows if r.started_at)
    finished = [(r.finished_at - minute).total_seconds() for r in rows if r.finished_at]
    if len(started) < count:
        raise RuntimeError(
            f"only {len(started)} of {count} runs started at {minute} "
            f"(states {counts}, stalled {stalled})"
        )
    pools = [before, after]
    # The kernel's own start times of the job processes (10 ms clock ticks), as a check on
    # the scheduler's stamps: boot time on the wall clock is now - /proc/uptime.
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    spawned = sorted(boot + r.pid_start / CLK_TCK - minute.timestamp() for r in rows if r.pid_start)
    return {
        "process_first_start_s": spawned[0] if spawned else None,
        "process_all_started_s": spawned[-1] if spawned else None,
        "stamp_first_start_s": started[0],
        "stamp_all_started_s": started[-1],
        "minute": minute.isoformat(),
        "all_finished_s": max(finished),
        "bare_all_started_s": sum(max(p["stamps"]) - min(p["stamps"]) for p in pools) / 2,
        "bare_elapsed_s": sum(p["elapsed_s"] for p in pools) / 2,
        "bare_runs": [(max(p["stamps"]) - min(p["stamps"]), p["elapsed_s"]) for p in pools],
        "states": counts,
    }


def _started(trial: dict[str, Any], which: str) -> float:
    """When the first or last job process started, after M (s): the kernel's start time
    (runs.pid_start), or the scheduler's stamp (runs.started_at) when no pid was kept."""
    kernel = trial[f"process_{which}_s"]
    return kernel if kernel is not None else trial[f"stamp_{which}_s"]


def _stamps(done: list[dict[str, Any]], which: str, scale: float, unit: str) -> str:
    return ", ".join(
        f"{t[f'stamp_{which}_s'] * scale:.{0 if unit == 'ms' else 2}f} {unit}" for t in done
    )


def run(quick: bool) -> BenchResult:
    result = BenchResult("herd")
    rounds = 1 if quick else 2
    homes = {}
    for size in SIZES:
        homes[size] = new_home(f"herd{size}")
        prepare(homes[size], size)
    trials: dict[int, list[dict[str, Any]]] = {size: [] for size in SIZES}
    for number in range(rounds):
        for size in SIZES:
            trials[size].append(herd(homes[size], size, number))
    result.details["trials"] = {str(k): v for k, v in trials.items()}
    for size in SIZES:
        done = trials[size]
        result.add(
            f"{size:,} jobs: all started after the minute",
            [_started(t, "all_started") for t in done],
            "s",
            baseline=[t["bare_all_started_s"] for t in done],
            baseline_name=f"bare pool of {WORKERS} threads, {size:,} spawns",
            goal=f"<= {GOAL_ALL}x bare",
            check=lambda r: r <= GOAL_ALL,
            note="the last job process's start - M (kernel, 10 ms ticks) vs the "
            "pool's last spawn - first; runs.started_at: " + _stamps(done, "all_started", 1, "s"),
        )
        result.add(
            f"{size:,} jobs: first start after the minute",
            [_started(t, "first_start") * 1000 for t in done],
            "ms",
            goal=f"< {GOAL_FIRST_MS:g} ms",
            check=lambda v: v < GOAL_FIRST_MS,
            note="the first job process's start - M (kernel, 10 ms ticks); "
            "runs.started_at: " + _stamps(done, "first_start", 1000, "ms"),
        )
        result.add(
            f"{size:,} jobs: all finished after the minute",
            [t["all_finished_s"] for t in done],
            "s",
            baseline=[t["bare_elapsed_s"] for t in done],
            baseline_name="bare pool's elapsed time",
        )
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
