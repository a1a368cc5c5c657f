"""Throughput of a trivial job (`true`) with 1, 2 and 4 workers, against bare spawn loops.

Method: a manual job `true` with --overlap allow; N runs are inserted queued in one
transaction through the store's tables, all due at T0 (2 s ahead, so that the daemon has
seen the change and sleeps until T0).  Elapsed = the last run's finished_at - T0: it
includes every database write the scheduler makes for each run.  Baselines, measured
between the scheduler runs: subprocess.run(['true']) in a loop, and the same in a pool of
N threads.  Three such trials per worker count (one with --quick); the one with the
median ratio is reported, all ratios in its note.  Optionally APScheduler 3
(SQLAlchemyJobStore on SQLite, ThreadPoolExecutor of 4) running the same command,
installed into bench/.deps only for this benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from common import (
    PY,
    BenchResult,
    Daemon,
    cpu_seconds,
    job_values,
    new_home,
    open_store,
    queue_runs,
    run_times,
    running,
    sqlite_url,
    utcnow,
    wait_finished,
)

HERE = Path(__file__).resolve().parent
DEPS = HERE / ".deps"
APS_REQUIREMENT = "apscheduler>=3.10,<4"
TRIALS = 3  # scheduler bursts per worker count (the median is reported)


def bare_rate(count: int, threads: int) -> tuple[float, float]:
    """(runs per second, CPU ms of this process per run) of subprocess.run(['true'])
    with `threads` threads."""
    def one(_: int) -> None:
        subprocess.run(["true"], check=False)

    cpu = time.process_time()
    began = time.perf_counter()
    if threads == 1:
        for i in range(count):
            one(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(count)))
    elapsed = time.perf_counter() - began
    return count / elapsed, (time.process_time() - cpu) * 1000 / count


def scheduler_rate(count: int, workers: int) -> tuple[float | None, dict[str, float]]:
    home = new_home(f"tput{workers}")
    daemon = Daemon(home, workers=workers)
    with running(daemon):
        store = open_store(sqlite_url(home))
        try:
            job_id = store.add_job("t", job_values("t", ["true"], manual=True, overlap="allow"))
            due = utcnow() + timedelta(seconds=2)
            queue_runs(store, job_id, count, due)
            assert daemon.pid is not None
            cpu_before = cpu_seconds(daemon.pid)
            counts, stalled = wait_finished(store, count, timeout=max(120, count / 5))
            cpu_used = cpu_seconds(daemon.pid) - cpu_before
            rows = run_times(store)
        finally:
            store.close()
    finished = [r["finished_at"] for r in rows if r["finished_at"] is not None]
    started = [r["started_at"] for r in rows if r["started_at"] is not None]
    if not finished:
        raise RuntimeError(f"no run finished: {counts}")
    elapsed = (max(finished) - due).total_seconds()
    detail = {"succeeded": counts.get("succeeded", 0), "finished": len(finished),
              "queued_left": counts.get("queued", 0), "stalled": stalled,
              "first_claim_s": (min(started) - due).total_seconds(), "elapsed_s": elapsed,
              "daemon_cpu_ms_per_run": cpu_used * 1000 / len(finished)}
    # When it stalled, the rate is that of the runs it did before it stopped taking work.
    return len(finished) / elapsed, detail


# ------------------------------------------------------------------------------ APScheduler
APS_SCRIPT = r"""
import json, subprocess, sys, threading, time
from datetime import datetime, timezone
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_ERROR

count, workers, url = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
done = threading.Event()
finished = []
def listener(event):
    finished.append(time.time())
    if len(finished) >= count:
        done.set()
sched = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=url)},
                            executors={"default": ThreadPoolExecutor(workers)},
                            job_defaults={"misfire_grace_time": None, "coalesce": False})
sched.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
sched.start(paused=True)
now = datetime.now(timezone.utc)
for i in range(count):
    sched.add_job("subprocess:run", "date", run_date=now, args=[["true"]], id=f"j{i}")
t0 = time.time()
sched.resume()
ok = done.wait(600)
elapsed = max(finished) - t0 if finished else None
sched.shutdown(wait=True)
print(json.dumps({"ok": ok, "finished": len(finished), "elapsed": elapsed}))
"""


def aps_available(log: list[str]) -> str:
    """'' when APScheduler can be imported from bench/.deps (installing it there if needed)."""
    env = {**os.environ, "PYTHONPATH": str(DEPS)}
    probe = [PY, "-c",
             "import apscheduler, sys; sys.exit(0 if apscheduler.__version__ < '4' else 1)"]
    if subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 0:
        return ""
    proc = subprocess.run([PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--target", str(DEPS), "--no-deps", APS_REQUIREMENT, "tzlocal"],
                          capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode != 0:
        return "APScheduler could not be installed: " + (proc.stderr.strip().splitlines()
                                                         or ["pip failed"])[-1]
    if subprocess.run(probe, env=env, capture_output=True, check=False).returncode != 0:
        return "APScheduler installed but cannot be imported"
    log.append(f"installed {APS_REQUIREMENT} into {DEPS}")
    return ""


def aps_rate(count: int, workers: int) -> tuple[float, dict[str, float]]:
    home = new_home("aps")
    url = f"sqlite:///{home / 'aps.db'}"
    env = {**os.environ, "PYTHONPATH": str(DEPS)}
    proc = subprocess.run([PY, "-c", APS_SCRIPT, str(count), str(workers), url], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"APScheduler run failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        raise RuntimeError(f"APScheduler finished only {result['finished']} of {count}")
    return count / result["elapsed"], {"elapsed_s": result["elapsed"]}


def trial(count: int, workers: int) -> dict[str, Any]:
    """One scheduler burst between two baseline measurements (before and after: drift
    shows in the details)."""
    bare_count = max(count, 500)  # the bare loops are cheap: more spawns, less noise
    bare, bare_cpu = bare_rate(bare_count, workers)
    rate, detail = scheduler_rate(count, workers)
    bare_after, bare_cpu_after = bare_rate(bare_count, workers)
    baseline = (bare + bare_after) / 2
    return {**detail, "rate": rate, "baseline": baseline, "ratio": rate / baseline,
            "bare_before": bare, "bare_after": bare_after,
            "bare_cpu_ms_per_run": (bare_cpu + bare_cpu_after) / 2}


def run(quick: bool) -> BenchResult:
    result = BenchResult("throughput")
    count = 200 if quick else 500
    trials = 1 if quick else TRIALS
    result.details["runs_per_measurement"] = count
    result.details["trials"] = trials
    cpu_rows = []
    for workers in (1, 2, 4):
        # Each burst lasts a fraction of a second, and this machine's neighbours come and
        # go: the trial with the median ratio is reported, and every ratio is in the note.
        done = sorted((trial(count, workers) for _ in range(trials)),
                      key=lambda t: t["ratio"])
        detail = done[len(done) // 2]
        result.details[f"workers_{workers}"] = done
        cpu_rows.append((workers, detail["daemon_cpu_ms_per_run"],
                         detail["bare_cpu_ms_per_run"]))
        name = "bare loop" if workers == 1 else f"bare pool of {workers} threads"
        rate: float | None = detail["rate"]
        stalled = [t for t in done if t["stalled"]]
        note = f"{detail['succeeded']}/{count} succeeded"
        if trials > 1:
            note += "; ratios " + ", ".join(f"{t['ratio']:.2f}" for t in done)
        if stalled:
            note = (f"STALLED in {len(stalled)} of {trials}: {stalled[0]['finished']}/{count} "
                    f"finished, {stalled[0]['queued_left']} left queued for 5 s with a free "
                    "worker")
            if detail["finished"] < 50:
                rate = None  # a rate over a handful of runs says nothing
        result.add(f"runs/s, {workers} worker{'s' if workers > 1 else ''}", rate, "runs/s",
                   baseline=detail["baseline"], baseline_name=name, goal=">= 0.5x bare",
                   met=detail["ratio"] >= 0.5 and not stalled, note=note)
    for workers, ours_cpu, bare_cpu in cpu_rows[-1:]:
        result.add(f"scheduler CPU per run, {workers} workers", ours_cpu, "ms",
                   baseline=bare_cpu, baseline_name="bare spawner's CPU per run",
                   note="utime+stime of the daemon / runs")
    log: list[str] = []
    why = aps_available(log)
    result.details["apscheduler_log"] = log
    if why:
        result.add("APScheduler 3 (SQLAlchemyJobStore), 4 workers", None, "runs/s",
                   note=f"skipped: {why}")
        return result
    try:
        aps, detail = aps_rate(count, 4)
    except Exception as exc:  # report, don't fail the suite
        result.add("APScheduler 3 (SQLAlchemyJobStore), 4 workers", None, "runs/s",
                   note=f"failed: {exc}")
        return result
    ours = next((r.value for r in result.rows if r.metric == "runs/s, 4 workers"), 0.0) or 0.0
    result.details["apscheduler"] = detail
    result.add("pb (4 workers) vs APScheduler 3 (4 threads)", ours, "runs/s", baseline=aps,
               baseline_name="APScheduler 3, SQLAlchemyJobStore", goal="faster (> 1x)",
               met=ours > aps)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    for row in run("--quick" in sys.argv).rows:
        print(row)
