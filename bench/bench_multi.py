"""Several schedulers sharing one PostgreSQL database: scale-out, duplicates, lost runs.

Method: for k = 1, 2, 3, a fresh database (CREATE, then DROP) and k schedulers in separate
homes with the same --db, 4 workers each.  One manual job with --overlap allow; N runs
are inserted queued, all due 2.5 s ahead (every scheduler has seen the change by then).
Rate = N / (last finished_at - due).  Two workloads:

- slot-bound: `echo $PONYBUNNY_RUN_ID >> MARKERS; sleep 0.2`.  Each run holds a worker
  slot for 0.2 s while using almost no CPU, so k schedulers have 4k slots: what bounds
  this is the slots, and scale-out should be near k (goal: 3 schedulers >= 2.7x one).
- CPU-bound: `echo $PONYBUNNY_RUN_ID >> MARKERS` alone, as cheap as `true`.  On a 2-core
  machine the CPUs are the limit: the note gives the CPU one run costs (schedulers, the
  job process, PostgreSQL: utime+stime over the burst / runs), the ceiling that puts on
  the rate (cores / CPU per run), and the machine's busy and iowait fractions
  (/proc/stat, everyone's work).

Every execution leaves its run id in the marker file.  Duplicates are counted two ways:
run rows per (job, occurrence, attempt) beyond one, and run ids that appear more than once
in the markers (a run executed twice); lost = queued runs whose id never appears.
Baselines: for k = 1 a bare pool of 4 threads running the same command (bench/bare.py),
for k = 2, 3 the single scheduler's rate in the same trial (scaling).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import timedelta
from typing import Any

from common import (
    BenchResult,
    Daemon,
    bare,
    busy_since,
    children_cpu_seconds,
    cpu_jiffies,
    cpu_seconds,
    iowait_jiffies,
    job_values,
    new_home,
    open_store,
    pg_available,
    pg_database,
    postgres_cpu_seconds,
    queue_runs,
    run_counts,
    run_times,
    start_all,
    utcnow,
    wait_finished,
)

WORKERS = 4
GOAL_SLOTS = 2.7  # 3 schedulers >= 2.7x one, when slots are the limit


def duplicate_rows(store: Any) -> int:
    from sqlalchemy import func, select

    from pony_scheduler.store.tables import runs

    query = select(func.count()).select_from(
        select(runs.c.job_id)
        .group_by(runs.c.job_id, runs.c.occurrence, runs.c.attempt)
        .having(func.count() > 1)
        .subquery()
    )
    with store.engine.connect() as connection:
        return int(connection.execute(query).scalar() or 0)


def cpu_snapshot(daemons: list[Daemon]) -> dict[str, Any]:
    pids = [d.pid for d in daemons if d.pid is not None]
    return {
        "jiffies": cpu_jiffies(),
        "iowait": iowait_jiffies(),
        "t": time.monotonic(),
        "schedulers": sum(cpu_seconds(p) for p in pids),
        "jobs": sum(children_cpu_seconds(p) for p in pids),
        "postgres": postgres_cpu_seconds(),
    }


def cpu_used(daemons: list[Daemon], before: dict[str, Any]) -> dict[str, float]:
    """CPU seconds since `before` of the schedulers, their job processes and PostgreSQL,
    the seconds elapsed, and the machine's busy and iowait fractions."""
    after = cpu_snapshot(daemons)
    total = max(1, after["jiffies"][1] - before["jiffies"][1])
    return {
        "elapsed": after["t"] - before["t"],
        "schedulers": after["schedulers"] - before["schedulers"],
        "jobs": after["jobs"] - before["jobs"],
        "postgres": after["postgres"] - before["postgres"],
        "busy": busy_since(before["jiffies"]),
        "iowait": (after["iowait"] - before["iowait"]) / total,
    }


def share(count: int, schedulers: int, sleep: float) -> dict[str, Any]:
    homes = [new_home(f"pg{schedulers}-{i}") for i in range(schedulers)]
    markers = homes[0] / "markers.txt"
    command = f'echo "$PONYBUNNY_RUN_ID" >> {markers}' + (f"; sleep {sleep:g}" if sleep else "")
    with pg_database(f"k{schedulers}") as url:
        daemons = [Daemon(home, db=url, workers=WORKERS) for home in homes]
        try:
            # The first one alone creates the schema, so that these figures do not depend
            # on concurrent migrations (tests/integration cover those).
            daemons[0].start()
            start_all(daemons[1:])
            store = open_store(url)
            try:
                job_id = store.add_job(
                    "m", job_values("m", [command], manual=True, overlap="allow", shell=True)
                )
                due = utcnow() + timedelta(seconds=2.5)
                queue_runs(store, job_id, count, due)
                time.sleep(max(0.0, (due - utcnow()).total_seconds()))
                # Where the CPU went from the due time on: what bounds the rate.
                before = cpu_snapshot(daemons)
                counts, stalled = wait_finished(store, count, timeout=max(180, count / 2))
                cpu = cpu_used(daemons, before)
                rows = run_times(store)
                dup_rows = duplicate_rows(store)
                counts = run_counts(store)
            finally:
                store.close()
        finally:
            for daemon in daemons:
                daemon.cleanup()
    seen = Counter(line.strip() for line in markers.read_text().splitlines() if line.strip())
    finished = [r["finished_at"] for r in rows if r["finished_at"] is not None]
    elapsed = (max(finished) - due).total_seconds() if finished else float("nan")
    per_scheduler = Counter(r["claimed_by"] for r in rows if r["claimed_by"])
    return {
        "rate": len(finished) / elapsed if finished else 0.0,
        "elapsed_s": elapsed,
        "busy": cpu["busy"],
        "cpu": cpu,
        "states": counts,
        "stalled": stalled,
        "dup_rows": dup_rows,
        "dup_exec": sum(c - 1 for c in seen.values() if c > 1),
        "lost": count - len(seen),
        "per_scheduler": sorted(per_scheduler.values(), reverse=True),
    }


def cpu_note(cpu: dict[str, float], runs: int, slots: int, sleep: float) -> str:
    """Where the CPU went, and the two ceilings: the cores over the CPU a run costs, and
    the worker slots over the time a run holds one."""
    cores = os.cpu_count() or 1
    per_run = (cpu["schedulers"] + cpu["jobs"] + cpu["postgres"]) / runs
    ceiling = f"CPU ceiling {cores / per_run:,.0f} runs/s" if per_run else "no CPU used"
    if sleep:
        ceiling += f", slot ceiling {slots / sleep:,.0f} runs/s"
    return (
        f"CPU per run {per_run * 1000:.2f} ms (schedulers "
        f"{cpu['schedulers'] * 1000 / runs:.2f}, jobs {cpu['jobs'] * 1000 / runs:.2f}, "
        f"postgres {cpu['postgres'] * 1000 / runs:.2f}) -> {ceiling}; machine busy "
        f"{cpu['busy']:.0%}, iowait {cpu['iowait']:.0%}"
    )


def workload(
    result: BenchResult, label: str, count: int, sleep: float, trials: int, goal: float | None
) -> None:
    markers = new_home("pg-bare") / "markers.txt"
    command = ["sh", "-c", f"echo x >> {markers}" + (f"; sleep {sleep:g}" if sleep else "")]
    infos: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 3: []}
    bares: list[float] = []
    for _ in range(trials):
        bares.append(bare("rate", min(count, 1000), WORKERS, command)["rate"])
        for k in (1, 2, 3):
            infos[k].append(share(count, k, sleep))
    result.details[label] = {str(k): v for k, v in infos.items()}
    single = [i["rate"] for i in infos[1]]
    for k in (1, 2, 3):
        name = f"{label}: {k} scheduler{'s' if k > 1 else ''}"
        rates = [i["rate"] for i in infos[k]]
        note = f"split {infos[k][-1]['per_scheduler']}; " + cpu_note(
            infos[k][-1]["cpu"], count, k * WORKERS, sleep
        )
        if any(i["stalled"] for i in infos[k]):
            note = f"STALLED {[i['states'] for i in infos[k]]}; " + note
        if k == 1:
            result.add(
                f"{name}: runs/s",
                rates,
                "runs/s",
                baseline=bares,
                baseline_name=f"bare pool of {WORKERS} threads",
                note=note,
            )
        else:
            check = (lambda r: r >= goal) if goal and k == 3 else None
            result.add(
                f"{name}: runs/s",
                rates,
                "runs/s",
                baseline=single,
                baseline_name="1 scheduler, same trial",
                goal=f">= {goal}x one" if check else "",
                check=check,
                note=note,
            )
        bad = sum(i["dup_rows"] + i["dup_exec"] for i in infos[k])
        lost = sum(i["lost"] for i in infos[k])
        result.add(
            f"{name}: duplicates / lost",
            bad + lost,
            "runs",
            goal="0 duplicates, 0 lost",
            met=bad == 0 and lost == 0,
            note=f"{count:,} runs x {trials}: dup rows "
            f"{sum(i['dup_rows'] for i in infos[k])}, executed twice "
            f"{sum(i['dup_exec'] for i in infos[k])}, lost {lost}",
        )


def run(quick: bool) -> BenchResult:
    result = BenchResult("multi_pg")
    why = pg_available()
    if why:
        result.skipped = why
        return result
    trials = 1 if quick else 2
    slots = 4 * WORKERS * 3 * (5 if quick else 10)  # whole waves for k = 1, 2, 3
    workload(result, "sleep 0.2 (slot-bound)", slots, 0.2, trials, GOAL_SLOTS)
    workload(result, "true (CPU-bound)", 1000 if quick else 5000, 0.0, trials, None)
    result.details["runs"] = {"slot_bound": slots}
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
