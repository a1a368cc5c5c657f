"""Shared by the benchmarks: temporary homes, daemons cleaned up by PID, /proc readings,
fast inserts through the Store's tables, and the result rows the table is printed from.

Nothing here asserts a timing: every figure becomes a row with a baseline measured in the
same run, and the reader judges.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pony_scheduler.lifecycle.pidfile import proc_start_time

PY = sys.executable
PB_MODULE = [PY, "-m", "pony_scheduler"]  # daemons started this way carry the name in cmdline
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

KEEP_HOMES = False  # --keep: leave the temporary homes for inspection


# ------------------------------------------------------------------------------ results
@dataclass
class Row:
    bench: str
    metric: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None  # value / baseline
    goal: str = ""
    met: bool | None = None  # None: no goal, or not measurable
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    skipped: str = ""  # why the benchmark did not run
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: str, value: float | None, unit: str, *, baseline: float | None = None,
            baseline_name: str = "", goal: str = "", met: bool | None = None,
            note: str = "") -> Row:
        ratio = (value / baseline if value is not None and baseline not in (None, 0)
                 else None)
        row = Row(self.name, metric, value, unit, baseline, baseline_name, ratio, goal, met,
                  note)
        self.rows.append(row)
        return row


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 1,000 values is the 990th)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------ processes
_PYCACHE: list[Path] = []


def pycache_dir() -> Path:
    """One bytecode cache for every process of this run (see clean_env)."""
    if not _PYCACHE:
        _PYCACHE.append(new_home("pycache"))
    return _PYCACHE[0]


def clean_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The caller's environment without anything that would steer pb elsewhere.

    Bytecode: a sandbox may set PYTHONDONTWRITEBYTECODE, and then every module edited since
    its last .pyc is compiled again by every `pb` process, which no installed package does.
    Measure as installed: .pyc files go to a cache of this run (PYTHONPYCACHEPREFIX), away
    from the work tree, and warm-up runs fill it.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PONYBUNNY_", "NOTIFY_SOCKET", "WATCHDOG_"))
           and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache_dir())
    env["LC_ALL"] = "C"
    if home is not None:
        env["PONYBUNNY_HOME"] = str(home)
    env.update(extra)
    return env


def proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running and not a zombie (the product's own /proc reading)."""
    return proc_start_time(pid) is not None


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """VmRSS from /proc/PID/status, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread: how often it woke up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


def run_timed(argv: list[str], env: dict[str, str], timeout: float = 60) -> tuple[float, int]:
    """Wall time of one command, output discarded."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=timeout, check=False)
    return time.perf_counter() - start, proc.returncode


# ------------------------------------------------------------------------------ homes
_HOMES: list[Path] = []


def new_home(tag: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"pb-bench-{tag}-"))
    _HOMES.append(home)
    return home


def remove_homes() -> None:
    if KEEP_HOMES:
        for home in _HOMES:
            print(f"kept {home}", file=sys.stderr)
        return
    for home in _HOMES:
        shutil.rmtree(home, ignore_errors=True)
    _HOMES.clear()
    _PYCACHE.clear()


# ------------------------------------------------------------------------------ daemons
_LIVE: set[Daemon] = set()


class Daemon:
    """One scheduler in one home, always cleaned up by the PID it wrote."""

    def __init__(self, home: Path, *, db: str | None = None, workers: int | None = None,
                 extra: Sequence[str] = ()) -> None:
        self.home = home
        self.db = db
        self.workers = workers
        self.extra = list(extra)
        self.env = clean_env(home)
        self.pid: int | None = None

    def pb(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PB_MODULE, *args], env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start_argv(self) -> list[str]:
        argv = [*PB_MODULE, "scheduler", "start", "--quiet", "--timeout", "60"]
        if self.db:
            argv += ["--db", self.db]
        if self.workers:
            argv += ["--workers", str(self.workers)]
        return argv + self.extra

    def start(self) -> float:
        """Start; return the wall time of `pb scheduler start` (it returns once READY)."""
        _LIVE.add(self)
        began = time.perf_counter()
        proc = subprocess.run(self.start_argv(), env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=90, check=False)
        elapsed = time.perf_counter() - began
        self.pid = self.read_pid()
        if proc.returncode != 0 or self.pid is None:
            raise RuntimeError(f"pb scheduler start failed ({proc.returncode}) in {self.home}: "
                               f"{proc.stdout}{proc.stderr}{self.log_tail()}")
        return elapsed

    def stop(self, timeout: float = 60) -> float:
        began = time.perf_counter()
        proc = self.pb("scheduler", "stop", "--timeout", str(timeout), timeout=timeout + 30)
        elapsed = time.perf_counter() - began
        if proc.returncode != 0:
            raise RuntimeError(f"pb scheduler stop failed: {proc.stdout}{proc.stderr}")
        if self.pid is not None and alive(self.pid):
            raise RuntimeError(f"scheduler {self.pid} still alive after stop")
        self.pid = None
        _LIVE.discard(self)
        return elapsed

    def read_pid(self) -> int | None:
        try:
            return int((self.home / "scheduler.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.home / "scheduler.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cleanup(self) -> None:
        """pb scheduler stop; then SIGKILL, but only a PID that is verifiably ours."""
        pid = self.pid or self.read_pid()
        if pid is not None and alive(pid):
            with contextlib.suppress(Exception):
                self.pb("scheduler", "stop", "--timeout", "15", timeout=45)
            if alive(pid) and "pony_scheduler" in proc_cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pid = None
        _LIVE.discard(self)


def start_all(daemons: Sequence[Daemon]) -> None:
    """Start several daemons at once (separate homes); raise the first failure."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(daemons) or 1) as pool:
        for future in [pool.submit(d.start) for d in daemons]:
            future.result()


def cleanup_all() -> None:
    for daemon in list(_LIVE):
        daemon.cleanup()


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


# ------------------------------------------------------------------------------ database
def sqlite_url(home: Path) -> str:
    return f"sqlite:///{home / 'pony.db'}"


def open_store(url: str) -> Any:
    from pony_scheduler.store import Store

    return Store.open(url)


def utcnow() -> datetime:
    return datetime.now(UTC)


def job_values(name: str, command: list[str], *, every: str | None = None,
               cron: str | None = None, manual: bool = False, anchor: datetime | None = None,
               **options: Any) -> dict[str, Any]:
    """Store values for one job, built by the same code `pb job add` uses."""
    from pony_scheduler.jobs import JobOptions, new_job

    opts = JobOptions(every=every, cron=cron, tz="UTC" if cron else None, manual=manual,
                      command=command, **options)
    return new_job(name, opts, anchor or utcnow())


def encoded(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    out["command"] = json.dumps(out["command"])
    out["env"] = json.dumps(out.get("env") or {})
    return out


def bulk_jobs(store: Any, rows: list[dict[str, Any]], batch: int = 5000) -> None:
    """Insert many jobs (dicts of store values with a "name") in a few transactions
    (SQLAlchemy core executemany), bumping the change counter like `pb job add`."""
    from pony_scheduler.store.common import bump_changes
    from pony_scheduler.store.tables import jobs

    now = utcnow()
    for i in range(0, len(rows), batch):
        chunk = [{**encoded(r), "created_at": now, "updated_at": now}
                 for r in rows[i : i + batch]]
        with store.engine.begin() as connection:
            connection.execute(jobs.insert(), chunk)
            bump_changes(connection)


def queue_runs(store: Any, job_id: int, count: int, due: datetime) -> None:
    """`count` queued manual runs of one job, all due at `due`, in one transaction."""
    from pony_scheduler.store.common import bump_changes
    from pony_scheduler.store.tables import runs

    now = utcnow()
    rows = [dict(job_id=job_id, occurrence=due + timedelta(microseconds=i), attempt=1,
                 trigger="manual", state="queued", due_at=due, created_at=now)
            for i in range(count)]
    with store.engine.begin() as connection:
        connection.execute(runs.insert(), rows)
        bump_changes(connection)


def run_counts(store: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from pony_scheduler.store.tables import runs

    with store.engine.connect() as connection:
        return dict(connection.execute(select(runs.c.state, func.count())
                                       .group_by(runs.c.state)).all())


def wait_finished(store: Any, total: int, timeout: float, poll: float = 0.25,
                  stall: float = 5.0) -> tuple[dict[str, int], bool]:
    """Poll until `total` runs are in a terminal state; (counts, stalled).

    Stalled: no run finished for `stall` seconds while some are still queued (the
    scheduler stopped taking work), or the timeout ran out.
    """
    deadline = time.monotonic() + timeout
    last_done, last_change = -1, time.monotonic()
    while True:
        counts = run_counts(store)
        done = sum(v for k, v in counts.items() if k not in ("queued", "running"))
        if done >= total:
            return counts, False
        now = time.monotonic()
        if done != last_done:
            last_done, last_change = done, now
        if now >= deadline or now - last_change >= stall:
            return counts, True
        time.sleep(poll)


def run_times(store: Any) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from pony_scheduler.store.tables import runs

    with store.engine.connect() as connection:
        rows = connection.execute(select(
            runs.c.id, runs.c.job_id, runs.c.occurrence, runs.c.attempt, runs.c.state,
            runs.c.trigger, runs.c.due_at, runs.c.started_at, runs.c.finished_at,
            runs.c.claimed_by, runs.c.output_tail)).all()
    return [dict(r._mapping) for r in rows]


# ------------------------------------------------------------------------------ PostgreSQL
def pg_available() -> str:
    """'' when usable, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at 127.0.0.1:5432 ({str(exc).strip().splitlines()[0]})"
    return ""


@contextlib.contextmanager
def pg_database(tag: str) -> Iterator[str]:
    import psycopg

    name = f"pb_bench_{tag}_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_alone(run: Callable[[bool], Any]) -> None:
    """Run one benchmark module by itself: python bench/bench_NAME.py [--quick]."""
    try:
        for row in run("--quick" in sys.argv).rows:
            print(row)
    finally:
        cleanup_all()
        remove_homes()
