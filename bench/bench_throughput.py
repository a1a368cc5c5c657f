"""Throughput of a trivial job (`true`) with 1, 2 and 4 workers, against bare spawn loops.

Method: a manual job `true` with --overlap allow; N runs are inserted queued in one
transaction through the store's tables, all due at T0 (2 s ahead, so that the daemon has
seen the change and sleeps until T0).  Elapsed = the last run's finished_at - T0: it
includes every database write the scheduler makes for each run.  Baseline: bench/bare.py
on the same interpreter, subprocess.run(['true']) in a loop (1) or a pool of N threads,
measured just before and just after the scheduler's burst (their mean is the trial's
baseline).  Three trials per worker count (two with --quick): median ratio and min-max.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from common import (
    BenchResult,
    Daemon,
    bare,
    cpu_seconds,
    job_values,
    median,
    new_home,
    open_store,
    queue_runs,
    run_times,
    running,
    sqlite_url,
    utcnow,
    wait_finished,
)

GOAL = 0.75  # >= 0.75x the bare spawn loop (issue 11; an earlier goal was 0.5x)


def scheduler_rate(count: int, workers: int) -> tuple[float, dict[str, Any]]:
    """Runs per second of `count` queued `true` runs in a fresh home with `workers`."""
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
    detail = {
        "succeeded": counts.get("succeeded", 0),
        "finished": len(finished),
        "queued_left": counts.get("queued", 0),
        "stalled": stalled,
        "first_claim_s": (min(started) - due).total_seconds(),
        "elapsed_s": elapsed,
        "daemon_cpu_ms_per_run": cpu_used * 1000 / len(finished),
    }
    # When it stalled, the rate is that of the runs it did before it stopped taking work.
    return len(finished) / elapsed, detail


def trial(count: int, workers: int) -> dict[str, Any]:
    """One scheduler burst between two baseline measurements."""
    bare_count = max(count, 500)  # the bare loops are cheap: more spawns, less noise
    before = bare("rate", bare_count, workers, ["true"])
    rate, detail = scheduler_rate(count, workers)
    after = bare("rate", bare_count, workers, ["true"])
    baseline = (before["rate"] + after["rate"]) / 2
    return {
        **detail,
        "rate": rate,
        "baseline": baseline,
        "ratio": rate / baseline,
        "bare_before": before["rate"],
        "bare_after": after["rate"],
        "bare_cpu_ms_per_run": (before["cpu_ms_per_run"] + after["cpu_ms_per_run"]) / 2,
    }


def run(quick: bool) -> BenchResult:
    result = BenchResult("throughput")
    count = 300 if quick else 500
    trials = 2 if quick else 3
    result.details.update(runs_per_measurement=count, trials=trials)
    for workers in (1, 2, 4):
        done = [trial(count, workers) for _ in range(trials)]
        result.details[f"workers_{workers}"] = done
        name = "bare loop" if workers == 1 else f"bare pool of {workers} threads"
        stalled = [t for t in done if t["stalled"]]
        note = f"{sum(t['succeeded'] for t in done)}/{count * trials} succeeded"
        if stalled:
            note = (
                f"STALLED in {len(stalled)} of {trials}: {stalled[0]['finished']}/{count} "
                f"finished, {stalled[0]['queued_left']} left queued"
            )
        result.add(
            f"runs/s, {workers} worker{'s' if workers > 1 else ''}",
            [t["rate"] for t in done],
            "runs/s",
            baseline=[t["baseline"] for t in done],
            baseline_name=name,
            goal=f">= {GOAL}x bare",
            check=lambda r: r >= GOAL,
            note=note,
        )
        if stalled:
            result.rows[-1].met = False
        if workers == 4:
            result.add(
                "scheduler CPU per run, 4 workers",
                [t["daemon_cpu_ms_per_run"] for t in done],
                "ms",
                baseline=[t["bare_cpu_ms_per_run"] for t in done],
                baseline_name="bare spawner's CPU per run",
                note="utime+stime of the daemon / runs",
            )
    result.details["median_rate_4"] = median([t["rate"] for t in done])
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
