"""CLI latency: wall time of `pb` commands a user types, against bare interpreter start.

Method: the `pb` console script on PATH (what users run), output discarded, each command
run N times interleaved with the others (so that drift hits all alike), median reported;
the baseline is `python3 -c pass` measured in the same rounds.  `pb scheduler status`
runs against a live daemon; `pb job list` reads a database holding 1,000 jobs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common import (
    PY,
    BenchResult,
    Daemon,
    bulk_jobs,
    clean_env,
    job_values,
    median,
    new_home,
    open_store,
    run_timed,
    running,
    sqlite_url,
    utcnow,
)


def run(quick: bool) -> BenchResult:
    result = BenchResult("cli")
    rounds = 7 if quick else 21
    # The console script beside this interpreter (not a pyenv/asdf shim in front of it).
    beside = Path(PY).parent / "pb"
    pb = str(beside) if beside.exists() else shutil.which("pb")
    if pb is None:
        result.skipped = "`pb` is not on PATH (pip install -e .)"
        return result
    home = new_home("cli")
    store = open_store(sqlite_url(home))
    try:
        now = utcnow()
        template = job_values("x", ["true"], every="1h", anchor=now)
        bulk_jobs(store, [{**template, "name": f"job-{i:04d}"} for i in range(1000)])
    finally:
        store.close()
    env = clean_env(home)
    commands = {
        "python3 -c pass": [PY, "-c", "pass"],
        "pb --version": [pb, "--version"],
        "pb scheduler status": [pb, "scheduler", "status"],
        "pb job list (1,000 jobs)": [pb, "job", "list"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with running(Daemon(home)):
        for argv in commands.values():  # warm the page and bytecode caches
            run_timed(argv, env)
        for _ in range(rounds):
            for name, argv in commands.items():
                elapsed, code = run_timed(argv, env)
                if code != 0:
                    raise RuntimeError(f"{name} exited {code}")
                times[name].append(elapsed * 1000)
    base = median(times["python3 -c pass"])
    result.details["samples_ms"] = times
    result.details["pb"] = pb
    result.add("python3 -c pass", base, "ms", note=f"median of {rounds}")
    for name in list(commands)[1:]:
        value = median(times[name])
        goal, met = ("<= 3x bare", value <= 3 * base) if "status" in name else ("", None)
        result.add(name, value, "ms", baseline=base, baseline_name="python3 -c pass",
                   goal=goal, met=met, note=f"median of {rounds}")
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
