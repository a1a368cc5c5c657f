"""pb against APScheduler 3, with matched durability and against its in-memory store.

Method: N runs of `true` with 4 workers each side.  pb: as bench_throughput.py (N queued
runs of a manual `--overlap allow` job, due at T0; rate = N / (last finished_at - T0)).
APScheduler 3 (`apscheduler>=3.10,<4`, pip-installed into bench/.deps/aps and put on
PYTHONPATH for its process only, on the bench venv's interpreter and SQLAlchemy): a
BackgroundScheduler with a ThreadPoolExecutor(4) starts paused, N `date` jobs due now
calling subprocess.run(['true']) are added, and it is timed from resume() to the N-th
EVENT_JOB_EXECUTED.  Its stores:

- "SQLite, WAL + synchronous=NORMAL": SQLAlchemyJobStore on a file, its engine set to
  what pb's engine sets on every connection (pony_scheduler/store/engine.py: PRAGMA
  journal_mode=WAL, synchronous=NORMAL, busy_timeout=10000).  Matched durability: with WAL
  and NORMAL neither side fsyncs a commit (a power cut may lose the last transactions,
  a crash of the process does not).  This is the comparison the goal is about.
- "MemoryJobStore": nothing written at all; an upper bound for APScheduler.

SQLAlchemyJobStore's defaults (rollback journal, synchronous=FULL: an fsync per commit,
which once made pb look 17x faster) are not compared.  Each trial runs the three in turn
(order rotated); the ratio of a trial is pb's rate over APScheduler's in that trial.
The comparison favours APScheduler: it keeps no record per run, captures no output and
holds no lease.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench_throughput import scheduler_rate
from common import PY, BenchResult, clean_env, new_home

HERE = Path(__file__).resolve().parent
APS_DIR = HERE / ".deps" / "aps"
APS_REQUIREMENT = "apscheduler>=3.10,<4"
GOAL = 1.5  # issue 15: >= 1.5x APScheduler with matched durability
WORKERS = 4

APS_SCRIPT = r"""
import json, subprocess, sys, threading, time
from datetime import datetime, timezone
from sqlalchemy import create_engine, event
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_ERROR

count, workers, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if store == "memory":
    jobstore = MemoryJobStore()
else:
    engine = create_engine(store)
    @event.listens_for(engine, "connect")
    def pragmas(dbapi_connection, record):  # what pony_scheduler/store/engine.py sets
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
    jobstore = SQLAlchemyJobStore(engine=engine)
done = threading.Event()
finished = []
def listener(event):
    finished.append(time.time())
    if len(finished) >= count:
        done.set()
sched = BackgroundScheduler(jobstores={"default": jobstore},
                            executors={"default": ThreadPoolExecutor(workers)},
                            job_defaults={"misfire_grace_time": None, "coalesce": False})
sched.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
sched.start(paused=True)
now = datetime.now(timezone.utc)
for i in range(count):
    sched.add_job(subprocess.run, "date", run_date=now, args=[["true"]], id=f"j{i}")
if store != "memory":
    with engine.connect() as c:
        mode = c.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = c.exec_driver_sql("PRAGMA synchronous").scalar()
else:
    mode = sync = None
t0 = time.time()
sched.resume()
ok = done.wait(600)
elapsed = max(finished) - t0 if finished else None
sched.shutdown(wait=True)
print(json.dumps({"ok": ok, "finished": len(finished), "elapsed": elapsed,
                  "journal_mode": mode, "synchronous": sync}))
"""


def aps_env() -> dict[str, str]:
    return clean_env(PYTHONPATH=str(APS_DIR))


def aps_available(log: list[str]) -> str:
    """'' when APScheduler 3 imports from bench/.deps/aps (installing it there if needed)."""
    probe = [
        PY,
        "-c",
        "import apscheduler, sys; sys.exit(0 if apscheduler.__version__ < '4' else 1)",
    ]
    if subprocess.run(probe, env=aps_env(), capture_output=True, check=False).returncode == 0:
        return ""
    proc = subprocess.run(
        [
            PY,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(APS_DIR),
            "--no-deps",
            APS_REQUIREMENT,
            "tzlocal",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        return (
            "APScheduler could not be installed: "
            + (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        )
    if subprocess.run(probe, env=aps_env(), capture_output=True, check=False).returncode != 0:
        return "APScheduler installed but cannot be imported"
    log.append(f"installed {APS_REQUIREMENT} into {APS_DIR}")
    return ""


def aps_rate(count: int, store: str) -> tuple[float, dict[str, Any]]:
    """APScheduler's runs/s; `store` is "memory" or "sqlite"."""
    url = "memory" if store == "memory" else f"sqlite:///{new_home('aps') / 'aps.db'}"
    proc = subprocess.run(
        [PY, "-c", APS_SCRIPT, str(count), str(WORKERS), url],
        env=aps_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"APScheduler run failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["ok"]:
        raise RuntimeError(f"APScheduler finished only {out['finished']} of {count}")
    return count / out["elapsed"], out


def run(quick: bool) -> BenchResult:
    result = BenchResult("apscheduler")
    count = 500 if quick else 1000  # bursts of a fraction of a second: not fewer
    trials = 2 if quick else 3
    log: list[str] = []
    why = aps_available(log)
    result.details["log"] = log
    if why:
        result.skipped = why
        return result
    rates: dict[str, list[float]] = {"pb": [], "sqlite": [], "memory": []}
    for number in range(trials):
        order = ["pb", "sqlite", "memory"]
        order = order[number % 3 :] + order[: number % 3]
        for who in order:
            if who == "pb":
                rate, detail = scheduler_rate(count, WORKERS)
                if detail["stalled"]:
                    raise RuntimeError(f"pb stalled: {detail}")
            else:
                rate, detail = aps_rate(count, who)
            rates[who].append(rate)
            result.details.setdefault(who, []).append(detail)
    pb = rates["pb"]
    result.add("pb, 4 workers", pb, "runs/s", note=f"{count} runs of `true` per trial")
    result.add(
        "pb vs APScheduler 3, SQLite WAL + synchronous=NORMAL",
        pb,
        "runs/s",
        baseline=rates["sqlite"],
        baseline_name="APScheduler, SQLAlchemyJobStore",
        goal=f">= {GOAL}x",
        check=lambda r: r >= GOAL,
        note="matched durability: the PRAGMAs pb sets (store/engine.py)",
    )
    result.add(
        "pb vs APScheduler 3, MemoryJobStore",
        pb,
        "runs/s",
        baseline=rates["memory"],
        baseline_name="APScheduler, MemoryJobStore",
        note="APScheduler writes nothing at all",
    )
    return result


if __name__ == "__main__":
    import common

    common.run_alone(run)
