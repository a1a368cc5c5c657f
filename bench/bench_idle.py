"""Idle cost: CPU and RSS of a scheduler with 0, 10,000 and 100,000 jobs defined.

Method: three homes; jobs are inserted through the store's tables before the daemon starts
(half `--cron '0 0 1 1 *'` in UTC, half `--every 30d`: none is due during the window).
The three schedulers and the baseline (a Python process that imports nothing and sleeps)
are measured side by side over the same window, after a settling pause, so that the
machine's noise hits them alike: CPU = utime+stime from /proc/PID/stat (every thread)
over the window, RSS = VmRSS from /proc/PID/status at the end of the window.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from common import (
    PY,
    BenchResult,
    Daemon,
    clone_jobs,
    context_switches,
    cpu_seconds,
    job_values,
    new_home,
    open_store,
    rss_mb,
    sqlite_url,
    utcnow,
)

SIZES = (0, 10_000, 100_000)
SETTLE = 3.0
SLICES = 6


def fill(home: Path, count: int) -> float:
    """Insert `count` far-future jobs; return how long it took."""
    began = time.perf_counter()
    store = open_store(sqlite_url(home))
    try:
        if count:
            now = utcnow()
            store.add_job(
                "cron-000000", job_values("cron-000000", ["true"], cron="0 0 1 1 *", anchor=now)
            )
            store.add_job(
                "every-000000", job_values("every-000000", ["true"], every="30d", anchor=now)
            )
    finally:
        store.close()
    if count:
        clone_jobs(home, "cron-000000", count // 2 - 1, "cron")
        clone_jobs(home, "every-000000", count - count // 2 - 1, "every")
    return time.perf_counter() - began


def run(quick: bool) -> BenchResult:
    result = BenchResult("idle")
    window = 10.0 if quick else 60.0
    daemons: dict[int, Daemon] = {}
    sleeper = None
    try:
        for size in SIZES:
            home = new_home(f"idle{size}")
            result.details[f"fill_{size}_s"] = fill(home, size)
            daemon = Daemon(home)
            result.details[f"start_{size}_s"] = daemon.start()
            daemons[size] = daemon
        sleeper = subprocess.Popen(
            [PY, "-c", "import time; time.sleep(86400)"], stdin=subprocess.DEVNULL
        )
        time.sleep(SETTLE)
        pids: dict[int | str, int] = {
            size: d.pid for size, d in daemons.items() if d.pid is not None
        }
        pids["baseline"] = sleeper.pid
        before = {k: cpu_seconds(pid) for k, pid in pids.items()}
        switches = {k: context_switches(pid) for k, pid in pids.items()}
        # The window in SLICES parts, to show the spread (one 10 ms tick is 0.1% of 10 s).
        slices: dict[int | str, list[float]] = {k: [] for k in pids}
        mark = dict(before)
        for _ in range(SLICES):
            time.sleep(window / SLICES)
            for k, pid in pids.items():
                now = cpu_seconds(pid)
                slices[k].append((now - mark[k]) / (window / SLICES) * 100)
                mark[k] = now
        used = {k: cpu_seconds(pid) - before[k] for k, pid in pids.items()}
        wakeups = {k: (context_switches(pid) - switches[k]) / window for k, pid in pids.items()}
        rss = {k: rss_mb(pid) for k, pid in pids.items()}
    finally:
        for daemon in daemons.values():
            daemon.cleanup()
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
    result.details["window_s"] = window
    base_cpu = used["baseline"] / window * 100
    for size in SIZES:
        pct = used[size] / window * 100
        goal_cpu, met_cpu = ("< 0.5% of a core", pct < 0.5) if size else ("", None)
        row = result.add(
            f"CPU, {size:,} jobs ({window:g} s window)",
            pct,
            "% core",
            baseline=base_cpu,
            baseline_name="sleeping python",
            goal=goal_cpu,
            met=met_cpu,
            note=f"{used[size]:.2f} CPU s; [min-max] over {SLICES} slices",
        )
        row.lo, row.hi = min(slices[size]), max(slices[size])
    for size in SIZES:
        goal_rss, met_rss = ("< 80 MB", rss[size] < 80) if size == SIZES[-1] else ("", None)
        result.add(
            f"RSS, {size:,} jobs",
            rss[size],
            "MiB",
            baseline=rss["baseline"],
            baseline_name="sleeping python",
            goal=goal_rss,
            met=met_rss,
        )
    result.add(
        f"wake-ups, {SIZES[-1]:,} jobs",
        wakeups[SIZES[-1]],
        "/s",
        baseline=wakeups["baseline"],
        baseline_name="sleeping python",
        note="context switches of all threads",
    )
    result.details["wakeups_per_s"] = wakeups
    result.details["start_with_100k_s"] = result.details.get(f"start_{SIZES[-1]}_s")
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
