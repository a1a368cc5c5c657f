"""Dispatch latency: from an occurrence's due time to the start of the job's process.

Method: J jobs `--every 1s` (default 4 workers), their grids offset by 1/J s from each
other so that no two are due at the same instant (a burst would measure queueing, which
the throughput benchmark covers).  Each job runs `bash -c 'echo $EPOCHREALTIME'`: bash
prints the wall-clock time at which it runs its first command, which lands in the run's
output tail in the database.  Latency = that time - runs.occurrence.  It includes the
scheduler's wake-up, its database work (plan, materialize, claim), the thread and the
fork/exec, and bash's own start-up (~1 ms), which the baseline measures alone: Python
spawning the same command and comparing with the time just before Popen(), half before
and half after the scheduler's window.  The spread of p50 and p99: min-max over 5
consecutive parts of the window (by due time).

Also reported: the claim lag (runs.started_at, which the scheduler stamps when it claims,
minus the occurrence), to show where the time goes.
"""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta

from common import (
    BenchResult,
    Daemon,
    bulk_jobs,
    job_values,
    new_home,
    open_store,
    percentile,
    run_times,
    running,
    spread_flag,
    sqlite_url,
    utcnow,
)

PROBE = ["bash", "-c", "echo $EPOCHREALTIME"]
SLICES = 5
GOAL_P99 = 20.0


def bare_latencies(count: int) -> list[float]:
    """ms from just before Popen() to bash's own clock reading."""
    out = []
    for _ in range(count):
        before = time.time()
        proc = subprocess.run(
            PROBE,
            capture_output=True,
            text=True,
            check=False,
            env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        )
        out.append((float(proc.stdout.strip()) - before) * 1000)
        time.sleep(0.005)
    return out


def scheduler_latencies(
    jobs: int, seconds: float
) -> tuple[list[tuple[float, float]], list[float], dict]:
    """(occurrence, latency ms) of every usable run, the claim lags (ms), and details."""
    home = new_home("dispatch")
    daemon = Daemon(home)
    with running(daemon):
        store = open_store(sqlite_url(home))
        try:
            base = utcnow() + timedelta(seconds=1)
            rows = [
                {
                    "name": f"d{i:03d}",
                    **job_values(
                        f"d{i:03d}",
                        PROBE,
                        every="1s",
                        env=["LC_ALL=C"],
                        anchor=base + timedelta(seconds=i / jobs),
                    ),
                }
                for i in range(jobs)
            ]
            bulk_jobs(store, rows)
            # The first occurrences are anchor + 1 s: at least 2 s away, so the daemon has
            # seen the new jobs (it looks once a second) before any is due.
            time.sleep(seconds + 2.5)
            with store.engine.begin() as connection:  # stop scheduling, let the last finish
                from sqlalchemy import update

                from pony_scheduler.store.tables import jobs as jobs_table

                connection.execute(update(jobs_table).values(enabled=False))
            time.sleep(1.0)
            runs = run_times(store)
        finally:
            store.close()
    latencies, claims, bad = [], [], 0
    for run in runs:
        if run["trigger"] != "schedule" or run["state"] != "succeeded":
            bad += run["state"] not in ("queued", "running")
            continue
        try:
            started = float((run["output_tail"] or "").strip())
        except ValueError:
            bad += 1
            continue
        occurrence = run["occurrence"].timestamp()
        latencies.append((occurrence, (started - occurrence) * 1000))
        claims.append((run["started_at"].timestamp() - occurrence) * 1000)
    states: dict[str, int] = {}
    for run in runs:
        states[run["state"]] = states.get(run["state"], 0) + 1
    return latencies, claims, {"states": states, "unusable": bad}


def run(quick: bool) -> BenchResult:
    result = BenchResult("dispatch")
    jobs, seconds = (20, 10) if quick else (20, 55)
    bare = bare_latencies(50 if quick else 150)
    timed, claims, info = scheduler_latencies(jobs, seconds)
    bare += bare_latencies(50 if quick else 150)  # before and after: drift shows in both
    timed.sort()
    lat = [latency for _, latency in timed]
    # The run in SLICES consecutive parts by due time, for the spread of each percentile.
    size = max(1, len(lat) // SLICES)
    parts = [lat[i : i + size] for i in range(0, size * SLICES, size) if lat[i : i + size]]
    result.details.update(
        info,
        jobs=jobs,
        seconds=seconds,
        runs=len(lat),
        latencies_ms=[(round(o, 3), round(v, 3)) for o, v in timed],
        bare_ms=bare,
    )
    if not lat:
        result.add("latency p50", None, "ms", note=f"no usable runs: {info}")
        return result
    n = f"n={len(lat)}"
    for label, pct in (("p50", 50), ("p99", 99)):
        value, base = percentile(lat, pct), percentile(bare, pct)
        check = (lambda v: v < GOAL_P99) if pct == 99 else None
        row = result.add(
            f"due -> process start {label}",
            value,
            "ms",
            baseline=base,
            baseline_name=f"bare Popen->start {label}",
            goal=f"< {GOAL_P99:g} ms" if check else "",
            check=check,
            on_value=True,
            note=f"{n}; [min-max] of {len(parts)} parts in time",
        )
        row.lo, row.hi = (
            min(percentile(p, pct) for p in parts),
            max(percentile(p, pct) for p in parts),
        )
        row.flag = spread_flag(row.lo, row.hi, check)
    result.add(
        "due -> process start max",
        max(lat),
        "ms",
        baseline=max(bare),
        baseline_name="bare Popen->start max",
        note=n,
    )
    result.add(
        "due -> claim p50 (runs.started_at)",
        percentile(claims, 50),
        "ms",
        note="the scheduler's own stamp, before the fork",
    )
    result.add("due -> claim p99 (runs.started_at)", percentile(claims, 99), "ms")
    expected = jobs * seconds
    if len(lat) < expected * 0.9:
        result.rows[0].note += f"; only {len(lat)} of ~{expected} expected runs"
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
