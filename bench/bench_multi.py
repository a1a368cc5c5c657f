"""Several schedulers sharing one PostgreSQL database: throughput and duplicates.

Method: for k = 1, 2, 3, a fresh database (CREATE, then DROP) and k schedulers in separate
homes with the same --db (default 4 workers each).  One manual job with --overlap allow;
N runs are inserted queued, all due 2.5 s ahead (every scheduler has seen the change by
then).  The job is `sh -c 'echo $PONYBUNNY_RUN_ID >> MARKERS'`, as cheap as `true` but
leaving a trace of every execution.  Reported: runs/s (N / (last finished_at - due)) and
duplicates, counted two ways: run rows per (job, occurrence, attempt) beyond one, and run
ids that appear more than once in the marker file (a run executed twice).  Lost runs
(never executed) are counted from the markers too.  Baselines: for k = 1 a bare pool of 4
threads spawning the same command; for k = 2, 3 the single scheduler's rate (scaling).
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from common import (
    BenchResult,
    Daemon,
    job_values,
    new_home,
    open_store,
    pg_available,
    pg_database,
    queue_runs,
    run_counts,
    run_times,
    start_all,
    utcnow,
    wait_finished,
)


def bare_pool_rate(count: int, threads: int, markers: Path) -> float:
    def one(i: int) -> None:
        subprocess.run(["sh", "-c", f"echo {i} >> {markers}"], check=False)

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - began)


def duplicate_rows(store: object) -> int:
    from sqlalchemy import func, select

    from pony_scheduler.store.tables import runs

    query = (select(func.count()).select_from(
        select(runs.c.job_id).group_by(runs.c.job_id, runs.c.occurrence, runs.c.attempt)
        .having(func.count() > 1).subquery()))
    with store.engine.connect() as connection:  # type: ignore[attr-defined]
        return int(connection.execute(query).scalar() or 0)


def share(count: int, schedulers: int) -> dict[str, Any]:
    homes = [new_home(f"pg{schedulers}-{i}") for i in range(schedulers)]
    markers = homes[0] / "markers.txt"
    with pg_database(f"k{schedulers}") as url:
        daemons = [Daemon(home, db=url) for home in homes]
        try:
            # The first one alone: it creates the schema, so that these figures do not
            # depend on concurrent migrations (which failed before 0b42bc7; see
            # docs/BENCHMARKS.md, finding 5).
            daemons[0].start()
            start_all(daemons[1:])
            store = open_store(url)
            try:
                job_id = store.add_job("m", job_values(
                    "m", [f'echo "$PONYBUNNY_RUN_ID" >> {markers}'], manual=True,
                    overlap="allow", shell=True))
                due = utcnow() + timedelta(seconds=2.5)
                queue_runs(store, job_id, count, due)
                counts, stalled = wait_finished(store, count, timeout=max(180, count / 5))
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
        "states": counts,
        "stalled": stalled,
        "dup_rows": dup_rows,
        "dup_exec": sum(c - 1 for c in seen.values() if c > 1),
        "lost": count - len(seen),
        "per_scheduler": sorted(per_scheduler.values(), reverse=True),
    }


def run(quick: bool) -> BenchResult:
    result = BenchResult("multi_pg")
    why = pg_available()
    if why:
        result.skipped = why
        return result
    count = 2000 if quick else 10_000
    result.details["runs_per_measurement"] = count
    scratch = new_home("pg-bare")
    bare = bare_pool_rate(min(count, 1000), 4, scratch / "markers.txt")
    single = None
    for k in (1, 2, 3):
        label = f"{k} scheduler{'s' if k > 1 else ''}"
        try:
            info = share(count, k)
        except Exception as exc:  # keep the phases that worked
            result.add(f"{label}: runs/s ({count:,} runs)", None, "runs/s",
                       note=f"failed: {exc}"[:200])
            continue
        result.details[f"schedulers_{k}"] = info
        baseline, name = (bare, "bare pool of 4 threads") if k == 1 else (
            single, "1 scheduler on PostgreSQL")
        note = f"split {info['per_scheduler']}"
        if info["stalled"]:
            note = f"STALLED {info['states']}; " + note
        result.add(f"{label}: runs/s ({count:,} runs)", info["rate"], "runs/s",
                   baseline=baseline, baseline_name=name, note=note)
        if k == 1:
            single = info["rate"]
        bad = info["dup_rows"] + info["dup_exec"]
        result.add(f"{label}: duplicates / lost", bad, "runs",
                   goal="0 duplicates, 0 lost", met=bad == 0 and info["lost"] == 0,
                   note=f"dup rows {info['dup_rows']}, executed twice {info['dup_exec']}, "
                        f"lost {info['lost']}")
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
