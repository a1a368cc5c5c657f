"""Shared by the benchmarks: result rows with their spread, temporary homes, daemons
cleaned up by PID, /proc readings, and fast data set-up.

Everything here runs inside the plain (non-editable) install that bench/run.py makes:
sys.executable is that venv's interpreter and PB its `pb` console script, so every
figure is taken on what users install, and every baseline on the same interpreter.
Nothing here asserts a timing: each figure becomes a row beside a baseline measured in the
same run, and the reader judges.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
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

PY = sys.executable
PB = str(Path(PY).parent / "pb")  # the console script users run, beside the interpreter
HERE = Path(__file__).resolve().parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A spread (max / min over trials) beyond this is flagged: too wide to conclude from.
WIDE = 1.5

KEEP_HOMES = False  # --keep: leave the temporary homes for inspection


# ------------------------------------------------------------------------------ results
@dataclass
class Row:
    bench: str
    metric: str
    value: float | None  # the median over trials
    unit: str
    lo: float | None = None  # min and max of the value over trials
    hi: float | None = None
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None  # the median of the per-trial ratios value / baseline
    ratio_lo: float | None = None
    ratio_hi: float | None = None
    goal: str = ""
    met: bool | None = None  # None: no goal, or not measurable
    flag: str = ""  # "WIDE": the spread is too wide to conclude from (see spread_flag)
    note: str = ""
    trials: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def spread_flag(
    lo: float | None, hi: float | None, check: Callable[[float], bool] | None = None
) -> str:
    """WIDE when the trials straddle the goal (some meet it, some do not) or spread by
    more than WIDE times; '' otherwise.  The benchmark refuses nothing: it says so."""
    if lo is None or hi is None:
        return ""
    if check is not None and check(lo) != check(hi):
        return "WIDE"
    if lo > 0 and hi / lo > WIDE:
        return "WIDE"
    return ""


@dataclass
class BenchResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    skipped: str = ""  # why the benchmark did not run
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at its start and end
    busy: float = 0.0  # the machine's CPU busy fraction while it ran (everyone's work)
    details: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        metric: str,
        values: float | Sequence[float] | None,
        unit: str,
        *,
        baseline: float | Sequence[float] | None = None,
        baseline_name: str = "",
        ratios: Sequence[float] | None = None,
        goal: str = "",
        check: Callable[[float], bool] | None = None,
        on_value: bool = False,
        met: bool | None = None,
        note: str = "",
    ) -> Row:
        """One row.  `values` (and `baseline`) are one figure or one per trial; the
        ratios are per trial (value_i / baseline_i) unless given.  `check` is the goal as
        a test of the ratio, or of the value when there is no ratio or `on_value`."""
        vals = _floats(values)
        bases = _floats(baseline)
        value = median(vals) if vals else None
        base = median(bases) if bases else None
        if ratios is None and vals and bases:
            ratios = (
                [v / b for v, b in zip(vals, bases, strict=True) if b]
                if len(vals) == len(bases)
                else [value / base]
                if base
                else []
            )
        ratio_list = list(ratios or [])
        ratio = median(ratio_list) if ratio_list else None
        row = Row(
            self.name,
            metric,
            value,
            unit,
            lo=min(vals) if len(vals) > 1 else None,
            hi=max(vals) if len(vals) > 1 else None,
            baseline=base,
            baseline_name=baseline_name,
            ratio=ratio,
            ratio_lo=min(ratio_list) if len(ratio_list) > 1 else None,
            ratio_hi=max(ratio_list) if len(ratio_list) > 1 else None,
            goal=goal,
            note=note,
            trials=max(len(vals), len(ratio_list), 1),
        )
        by_ratio = ratio is not None and not on_value
        judged = ratio if by_ratio else value
        lo, hi = (row.ratio_lo, row.ratio_hi) if by_ratio else (row.lo, row.hi)
        if check is not None and judged is not None:
            row.met = check(judged)
            row.flag = spread_flag(lo, hi, check)
        else:
            row.met = met
            row.flag = spread_flag(lo, hi)
        self.rows.append(row)
        return row


def _floats(values: float | Sequence[float] | None) -> list[float]:
    if values is None:
        return []
    if isinstance(values, int | float):
        return [float(values)]
    return [float(v) for v in values if v is not None]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 1,000 values is the 990th)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def shuffled(items: Sequence[Any], seed: int) -> list[Any]:
    """The items in an order of their own for each round (interleaving: drift and
    neighbours hit every command alike, not always the one that runs first)."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


# ------------------------------------------------------------------------------ machine
def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def busy_since(before: tuple[int, int]) -> float:
    """The machine's CPU busy fraction since `before` (cpu_jiffies())."""
    busy, total = cpu_jiffies()
    return (busy - before[0]) / max(1, total - before[1])


def iowait_jiffies() -> int:
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[5])


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime: CPU of the children `pid` has waited for (its job processes)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def postgres_cpu_seconds() -> float:
    """utime + stime of every process named postgres (the server and its backends, all
    databases: other work on the machine counts too).  Read from /proc only."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] != "postgres":
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


# ------------------------------------------------------------------------------ processes
def clean_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The caller's environment without anything that would steer pb elsewhere.

    PYTHONDONTWRITEBYTECODE goes too: an installed package has its .pyc files (pip wrote
    them), and a sandbox's setting must not make the measured processes differ from a
    user's.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PONYBUNNY_", "NOTIFY_SOCKET", "WATCHDOG_", "PB_BENCH"))
        and k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONPATH")
    }
    env["LC_ALL"] = "C"
    if home is not None:
        env["PONYBUNNY_HOME"] = str(home)
    env.update(extra)
    return env


def proc_cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running and not a zombie (the product's own /proc reading)."""
    from pony_scheduler.lifecycle.pidfile import proc_start_time

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


@dataclass(frozen=True)
class Timed:
    wall: float  # seconds
    cpu: float  # user + system seconds of the process (and of children it waited for)
    maxrss_mb: float  # its peak resident set size, MiB
    code: int


def run_timed(argv: Sequence[str], env: dict[str, str], timeout: float = 300) -> Timed:
    """Wall time, CPU time and peak RSS of one command, output discarded."""
    with open(os.devnull, "wb") as null:
        began = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=null, stderr=null
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
    if wall > timeout:
        raise RuntimeError(f"{' '.join(argv)} took {wall:.0f} s")
    return Timed(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode)


def bare(
    mode: str, count: int, threads: int, command: Sequence[str], timeout: float = 900
) -> dict[str, Any]:
    """A bare spawner (bench/bare.py) on this same interpreter, in a fresh process."""
    proc = subprocess.run(
        [PY, str(HERE / "bare.py"), mode, str(count), str(threads), "--", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=clean_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bare.py failed: {proc.stderr[-1000:]}")
    return json.loads(proc.stdout)


# ------------------------------------------------------------------------------ homes
_HOMES: list[Path] = []


def new_home(tag: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"pb-bench-{tag}-"))
    os.chmod(home, 0o700)
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


# ------------------------------------------------------------------------------ daemons
_LIVE: set[Daemon] = set()


class Daemon:
    """One scheduler in one home, started with `pb scheduler start` and always cleaned up
    by the PID it wrote."""

    def __init__(
        self,
        home: Path,
        *,
        db: str | None = None,
        workers: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.home = home
        self.db = db
        self.workers = workers
        self.extra = list(extra)
        self.env = clean_env(home)
        self.pid: int | None = None

    def pb(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PB, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start_argv(self) -> list[str]:
        argv = [PB, "scheduler", "start", "--quiet", "--timeout", "120"]
        if self.db:
            argv += ["--db", self.db]
        if self.workers:
            argv += ["--workers", str(self.workers)]
        return argv + self.extra

    def start(self) -> float:
        """Start; return the wall time of `pb scheduler start` (it returns once READY)."""
        _LIVE.add(self)
        began = time.perf_counter()
        proc = subprocess.run(
            self.start_argv(),
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        elapsed = time.perf_counter() - began
        self.pid = self.read_pid()
        if proc.returncode != 0 or self.pid is None:
            raise RuntimeError(
                f"pb scheduler start failed ({proc.returncode}) in {self.home}: "
                f"{proc.stdout}{proc.stderr}{self.log_tail()}"
            )
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
            cmdline = proc_cmdline(pid)
            if alive(pid) and ("pony_scheduler" in cmdline or PB in cmdline):
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


def job_values(
    name: str,
    command: list[str],
    *,
    every: str | None = None,
    cron: str | None = None,
    manual: bool = False,
    anchor: datetime | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Store values for one job, built by the same code `pb job add` uses."""
    from pony_scheduler.jobs import JobOptions, new_job

    opts = JobOptions(
        every=every,
        cron=cron,
        tz="UTC" if cron else None,
        manual=manual,
        command=command,
        **options,
    )
    return new_job(name, opts, anchor or utcnow())


def bulk_jobs(store: Any, rows: list[dict[str, Any]]) -> None:
    """A few jobs (dicts of store values with a "name"), each added as `pb job add` does."""
    for row in rows:
        values = dict(row)
        store.add_job(values.pop("name"), values)


def queue_runs(store: Any, job_id: int, count: int, due: datetime) -> None:
    """`count` queued manual runs of one job, all due at `due`, in one transaction."""
    from pony_scheduler.store.common import bump_changes
    from pony_scheduler.store.tables import runs

    now = utcnow()
    rows = [
        dict(
            job_id=job_id,
            occurrence=due + timedelta(microseconds=i),
            attempt=1,
            trigger="manual",
            state="queued",
            due_at=due,
            created_at=now,
        )
        for i in range(count)
    ]
    with store.engine.begin() as connection:
        connection.execute(runs.insert(), rows)
        bump_changes(connection)


# SQLite keeps SQLAlchemy's DateTime as text in this format (UTC, no offset).
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def sqlite_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(SQLITE_TIME)


@contextlib.contextmanager
def raw_sqlite(home: Path) -> Iterator[sqlite3.Connection]:
    """The home's SQLite database, for bulk set-up only (no daemon may run on it)."""
    connection = sqlite3.connect(home / "pony.db", isolation_level=None, timeout=30)
    try:
        connection.execute("PRAGMA synchronous=OFF")
        yield connection
    finally:
        connection.close()


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]


def clone_jobs(
    home: Path, template: str, count: int, prefix: str, **override: Any
) -> tuple[int, int]:
    """`count` copies of job `template` (added through the store before), named
    PREFIX-000001…, in one statement; (first id, last id).  Columns given in `override`
    take that value in every copy (those the schema lacks are left out).  Copying whatever
    the current schema holds keeps this working as columns come and go."""
    with raw_sqlite(home) as connection:
        present = _columns(connection, "jobs")
        override = {k: v for k, v in override.items() if k in present}
        cols = [c for c in present if c not in ("id", "name", *override)]
        names = ", ".join(f'"{c}"' for c in (*cols, *override))
        values = ", ".join([*(f'"{c}"' for c in cols), *(f":{c}" for c in override)])
        connection.execute("BEGIN")
        before = connection.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]
        connection.execute(
            f"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :count) "
            f"INSERT INTO jobs (name, {names}) SELECT printf('%s-%06d', :prefix, n), {values} "
            f"FROM s, (SELECT * FROM jobs WHERE name = :template)",
            {"count": count, "prefix": prefix, "template": template, **override},
        )
        after = connection.execute("SELECT MAX(id) FROM jobs").fetchone()[0]
        connection.execute("UPDATE counters SET value = value + 1 WHERE key = 'job_changes'")
        connection.execute("COMMIT")
    return before + 1, after


def clone_runs(
    home: Path, count: int, first_job: int, jobs: int, newest: datetime, failed_every: int = 10
) -> None:
    """`count` settled runs spread over jobs first_job … first_job+jobs-1, one a minute
    per job going back from `newest`; every `failed_every`-th failed, the rest succeeded.
    One INSERT … SELECT in one transaction: a million rows take seconds."""
    base = int(newest.timestamp())
    with raw_sqlite(home) as connection:
        cols = set(_columns(connection, "runs"))
        # n = 0 is the oldest, so that ids grow with time as they do in real life.
        stamp = (
            "strftime('%Y-%m-%d %H:%M:%S', :base - ((:count - 1 - n) / :jobs) * 60, "
            "'unixepoch') || '.000000'"
        )
        given = {
            "job_id": ":first + n % :jobs",
            "occurrence": stamp,
            "attempt": "1",
            "trigger": "'schedule'",
            "state": "CASE WHEN n % :failed = 0 THEN 'failed' ELSE 'succeeded' END",
            "due_at": stamp,
            "started_at": stamp,
            "finished_at": stamp,
            "created_at": stamp,
            "exit_code": "CASE WHEN n % :failed = 0 THEN 1 ELSE 0 END",
            "hostname": "'bench'",
            "reason": "NULL",
        }
        given = {k: v for k, v in given.items() if k in cols}
        connection.execute("BEGIN")
        connection.execute(
            f"WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s "
            f"WHERE n + 1 < :count) INSERT INTO runs ({', '.join(given)}) "
            f"SELECT {', '.join(given.values())} FROM s",
            {
                "count": count,
                "first": first_job,
                "jobs": jobs,
                "base": base,
                "failed": failed_every,
            },
        )
        connection.execute("COMMIT")
        # No ANALYZE: a database the daemon grew has no sqlite_stat1 either (and with it,
        # SQLite 3.40 plans the recovery query as a scan of every job).


def run_counts(store: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from pony_scheduler.store.tables import runs

    with store.engine.connect() as connection:
        return dict(
            connection.execute(select(runs.c.state, func.count()).group_by(runs.c.state)).all()
        )


def wait_finished(
    store: Any, total: int, timeout: float, poll: float = 0.25, stall: float = 10.0
) -> tuple[dict[str, int], bool]:
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
        rows = connection.execute(
            select(
                runs.c.id,
                runs.c.job_id,
                runs.c.occurrence,
                runs.c.attempt,
                runs.c.state,
                runs.c.trigger,
                runs.c.due_at,
                runs.c.started_at,
                runs.c.finished_at,
                runs.c.claimed_by,
                runs.c.output_tail,
            )
        ).all()
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
    """Run one benchmark module by itself (inside the bench venv):
    python bench/bench_NAME.py [--quick]; better: python bench/run.py --only NAME."""
    try:
        for row in run("--quick" in sys.argv).rows:
            print(row)
    finally:
        cleanup_all()
        remove_homes()
