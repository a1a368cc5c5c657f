"""Costs that must not grow with the database: the same command on a small and a big one.

Homes: SMALL holds 100 jobs and 10,000 runs, BIG 100,000 jobs and 1,000,000 runs (90%
succeeded, 10% failed, one a minute per job going back from now), EMPTY nothing.  Each
job is a copy of one added through the store as `pb job add NAME --every 30d` does (none
is due while we measure), with a last result on its row as a settled run leaves it; the
copies and the runs are written with INSERT … SELECT straight into the schema the current
code created (a million rows take seconds; bench/common.py clone_jobs, clone_runs).

Measured, in interleaved trials (small then big, or the other way round, by trial):
- `pb job list` (what it prints by default): BIG / SMALL;
- `pb job list --all --json` (every job, streamed): its wall time and peak RSS (wait4's
  ru_maxrss), BIG / SMALL;
- `pb runs --state succeeded -n 20`: 1,000,000 runs / 10,000 runs;
- start-to-ready of `pb scheduler start` (and stop): BIG / EMPTY.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from common import (
    PB,
    BenchResult,
    Daemon,
    clean_env,
    clone_jobs,
    clone_runs,
    job_values,
    median,
    new_home,
    open_store,
    run_timed,
    sqlite_time,
    sqlite_url,
    utcnow,
)

FLAT = 1.2  # "stays flat": within 1.2x of the small case (the rule for start)


def fill(home: Path, jobs: int, runs: int) -> float:
    """`jobs` jobs and `runs` runs in `home`'s database; seconds it took."""
    began = time.perf_counter()
    now = utcnow()
    store = open_store(sqlite_url(home))
    try:
        store.add_job("scale-000000", job_values("scale-000000", ["true"], every="30d", anchor=now))
    finally:
        store.close()
    if jobs > 1:
        last = sqlite_time(now - timedelta(minutes=1))
        first, _ = clone_jobs(
            home,
            "scale-000000",
            jobs - 1,
            "scale",
            last_state="succeeded",
            last_run_id=runs or None,
            last_finished_at=last,
            last_duration_s=0.01,
            last_success_at=last,
        )
        first -= 1  # the template is a job too
    else:
        first = 1
    if runs:
        clone_runs(home, runs, first, jobs, now - timedelta(minutes=1))
    return time.perf_counter() - began


def run(quick: bool) -> BenchResult:
    result = BenchResult("scale")
    trials = 3 if quick else 5
    big_jobs, big_runs = 100_000, 1_000_000
    small, big, empty = new_home("small"), new_home("big"), new_home("empty")
    result.details["fill_small_s"] = fill(small, 100, 10_000)
    result.details["fill_big_s"] = fill(big, big_jobs, big_runs)
    open_store(sqlite_url(empty)).close()  # the schema, no rows
    env = {home: clean_env(home) for home in (small, big, empty)}
    commands = {
        "job list": [PB, "job", "list"],
        "job list --all --json": [PB, "job", "list", "--all", "--json"],
        "runs --state succeeded -n 20": [PB, "runs", "--state", "succeeded", "-n", "20"],
    }
    for home in (small, big):  # warm the page cache, check that they work
        if run_timed(commands["runs --state succeeded -n 20"], env[home]).code != 0:
            raise RuntimeError(f"pb runs failed in {home}")
    wall: dict[tuple[str, Path], list[float]] = {}
    cpu: dict[tuple[str, Path], list[float]] = {}
    rss: dict[Path, list[float]] = {small: [], big: []}
    starts: dict[Path, list[float]] = {empty: [], big: []}
    stops: dict[Path, list[float]] = {empty: [], big: []}
    for trial in range(trials):
        order = (small, big) if trial % 2 == 0 else (big, small)
        for name, argv in commands.items():
            for home in order:
                timed = run_timed(argv, env[home])
                if timed.code != 0:
                    raise RuntimeError(f"{' '.join(argv)} failed in {home}")
                wall.setdefault((name, home), []).append(timed.wall * 1000)
                cpu.setdefault((name, home), []).append(timed.cpu * 1000)
                if name == "job list --all --json":
                    rss[home].append(timed.maxrss_mb)
        for home in (empty, big) if trial % 2 == 0 else (big, empty):
            daemon = Daemon(home)
            try:
                starts[home].append(daemon.start() * 1000)
                stops[home].append(daemon.stop() * 1000)
            finally:
                daemon.cleanup()
    result.details.update(
        trials=trials,
        wall_ms={f"{n} {h.name}": v for (n, h), v in wall.items()},
        rss_mb={h.name: v for h, v in rss.items()},
        starts_ms={h.name: v for h, v in starts.items()},
        stops_ms={h.name: v for h, v in stops.items()},
    )
    flat = f"<= {FLAT}x (flat)"

    def cpu_note(name: str) -> str:
        ratios = [b / s for b, s in zip(cpu[(name, big)], cpu[(name, small)], strict=True)]
        return (
            f"CPU {median(cpu[(name, big)]):.0f} ms = {median(ratios):.2f}x "
            f"[{min(ratios):.2f}-{max(ratios):.2f}]"
        )

    result.add(
        "pb job list, 100,000 jobs",
        wall[("job list", big)],
        "ms",
        baseline=wall[("job list", small)],
        baseline_name="100 jobs",
        goal=flat,
        check=lambda r: r <= FLAT,
        note="what `pb job list` prints by default; " + cpu_note("job list"),
    )
    result.add(
        "pb job list --all --json, 100,000 jobs",
        wall[("job list --all --json", big)],
        "ms",
        baseline=wall[("job list --all --json", small)],
        baseline_name="100 jobs",
        note="every job, streamed; " + cpu_note("job list --all --json"),
    )
    result.add(
        "peak RSS of pb job list --all --json, 100,000 jobs",
        rss[big],
        "MiB",
        baseline=rss[small],
        baseline_name="100 jobs",
        note="wait4 ru_maxrss",
    )
    name = "runs --state succeeded -n 20"
    result.add(
        f"pb {name}, 1,000,000 runs",
        wall[(name, big)],
        "ms",
        baseline=wall[(name, small)],
        baseline_name="10,000 runs",
        goal=flat,
        check=lambda r: r <= FLAT,
        note="index on runs(state, id); " + cpu_note(name),
    )
    result.add(
        "start-to-ready, 100,000 jobs + 1,000,000 runs",
        starts[big],
        "ms",
        baseline=starts[empty],
        baseline_name="empty database",
        goal=f"<= {FLAT}x empty",
        check=lambda r: r <= FLAT,
        note=f"stop: {median(stops[big]):.0f} ms vs {median(stops[empty]):.0f} ms empty",
    )
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
