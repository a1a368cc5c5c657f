"""The keeper's protocol: its typed records and rules, shared by keeper and client (their
JSON is in wire.py).

Framing: one JSON object per line (UTF-8, `\\n`-terminated, at most MAX_LINE bytes), each
with a `type`.  Strings that are not valid UTF-8 on the Unix side (argv, environment,
paths) travel as Python's surrogateescape strings (os.fsdecode), which JSON carries as
`\\udcXX` escapes; output bytes (an outcome's tail) travel as base64.

Versioning: the client opens with `hello {protocol}`; a keeper that speaks another
version answers `unsupported {protocol, message}` and closes, and the client raises
ProtocolMismatch naming both versions.  A new field may be added within a version
(decoders ignore unknown fields); renaming or removing one needs a new PROTOCOL.
"""

from __future__ import annotations

import signal as _signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

PROTOCOL = 1
MAX_LINE = 8 * 1024 * 1024  # bytes in one message: a launch with a very large environment

OUTPUT_CAP = 10 * 1024 * 1024  # bytes of a run's output kept in its file
TAIL_BYTES = 4096  # the end of the output carried in the outcome
KILL_GRACE_S = 5.0  # seconds between SIGTERM and SIGKILL to a run's processes
STARTED_DELAY_S = 0.05  # a run that lives this long is announced with a `started`

ENDINGS = ("exited", "not_started", "timed_out", "killed", "stopped")
CONTAINMENTS = ("cgroup2", "cgroup1", "pgroup")
LEFTOVERS = ("kill", "keep")

# Files in the home.
PID_FILE = "keeper.pid"
META_FILE = "keeper.json"
SOCKET_FILE = "keeper.sock"
JOURNAL_FILE = "keeper.journal"
LOG_FILE = "keeper.log"
START_LOCK = ".keeper.start.lock"

RUN_ID_VAR = "PONYBUNNY_RUN_ID"  # in every run's environment: which run it belongs to
KEEPER_ID_VAR = "PONYBUNNY_KEEPER_ID"  # ... and which keeper started it (unique per keeper)


_second: list[tuple[int, str]] = [(-1, "")]  # the last second formatted, and its text


def iso_utc(t: float) -> str:
    """UTC ISO 8601 with milliseconds, as every time in the protocol: 2024-05-01T12:00:00.123Z.
    The keeper stamps two times per run, most within the same second as the last one:
    that second's text is kept (strftime and gmtime cost more than the rest of this)."""
    whole = int(t // 1)
    last, text = _second[0]
    if whole != last:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    return f"{text}.{int(t * 1000) % 1000:03d}Z"


class ProtocolError(ValueError):
    """A message that does not follow this protocol."""


def signal_number(name: str | int) -> int:
    """'TERM', 'SIGTERM', 'sigterm' or 15 -> 15; ValueError for anything else."""
    if isinstance(name, int) and not isinstance(name, bool):
        valid = {s.value for s in _signal.Signals}
        if name in valid:
            return name
        raise ValueError(f"unknown signal number {name}")
    text = str(name).strip().upper()
    if text.isdigit():
        return signal_number(int(text))
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(_signal.Signals[text])
    except KeyError:
        raise ValueError(f"unknown signal {name!r} (use a name such as TERM or KILL)") from None


def signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Launch:
    """Start one run.  `env` is the whole environment of the job (the keeper adds
    PONYBUNNY_RUN_ID and PONYBUNNY_KEEPER_ID); `output_path` is absolute and inside the
    keeper's home (HOME/runs/JOB/RUN_ID.log), created at the first byte; `cwd` None means
    the home; `timeout_s` None means none; `leftovers` says what happens to processes the
    main process leaves behind when it exits ("kill": SIGTERM, then SIGKILL after
    KILL_GRACE_S; "keep": they live on, counted).  Limits: `memory_max` bytes,
    `cpu_max` in CPUs (0.5 = half of one CPU, systemd's CPUQuota=50%; 2 = two CPUs),
    `tasks_max` processes and threads; None = no limit.  `account_memory`: a memory
    group for its peak memory even where that is a v1 group of its own (the setting
    memory_accounting = always).  A launch asking for a limit the
    keeper cannot enforce here is not started (its outcome says why).  `token` is opaque
    to the keeper and echoed in every message about the run.  `start_by`: the host's
    time.monotonic() (CLOCK_MONOTONIC, shared by every process of one boot) after which
    the keeper refuses to start it: its claim's lease may have run out meanwhile (this
    host was frozen with the launch in the keeper's socket), and another host may run
    it.  Raises ValueError."""

    run_id: int
    argv: tuple[str, ...]
    output_path: str
    env: Mapping[str, str] = field(default_factory=dict)
    token: str = ""
    cwd: str | None = None
    umask: int = 0o027
    timeout_s: float | None = None
    leftovers: str = "kill"
    memory_max: int | None = None
    cpu_max: float | None = None
    tasks_max: int | None = None
    start_by: float | None = None
    account_memory: bool = False  # a memory group even where it costs one more (v1)

    def __post_init__(self) -> None:
        _check_run_id(self.run_id)
        if (
            not isinstance(self.argv, tuple)
            or not self.argv
            or not all(isinstance(a, str) and "\0" not in a for a in self.argv)
        ):
            raise ValueError("argv must be a non-empty tuple of strings without NUL")
        if not self.argv[0]:
            raise ValueError("argv[0] must not be empty")
        if not isinstance(self.output_path, str) or not self.output_path.startswith("/"):
            raise ValueError(f"output_path must be an absolute path, not {self.output_path!r}")
        for key, value in self.env.items():
            if (
                not isinstance(key, str)
                or not isinstance(value, str)
                or not key
                or "=" in key
                or "\0" in key
                or "\0" in value
            ):
                raise ValueError(f"bad environment entry {key!r}")
        if not isinstance(self.token, str):
            raise ValueError("token must be a string")
        if self.cwd is not None and (
            not isinstance(self.cwd, str) or not self.cwd or "\0" in self.cwd
        ):
            raise ValueError(f"cwd must be a path or None, not {self.cwd!r}")
        if not isinstance(self.umask, int) or not 0 <= self.umask <= 0o777:
            raise ValueError(f"umask must be 0-0o777, not {self.umask!r}")
        if self.timeout_s is not None and not _positive(self.timeout_s):
            raise ValueError(f"timeout_s must be positive or None, not {self.timeout_s!r}")
        if self.leftovers not in LEFTOVERS:
            raise ValueError(f"leftovers must be 'kill' or 'keep', not {self.leftovers!r}")
        for name in ("memory_max", "tasks_max"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value <= 0
            ):
                raise ValueError(f"{name} must be a positive whole number or None")
        if not isinstance(self.account_memory, bool):
            raise ValueError(f"account_memory must be true or false, not {self.account_memory!r}")
        if self.start_by is not None and not _positive(self.start_by):
            raise ValueError(f"start_by must be a monotonic time, not {self.start_by!r}")
        if self.cpu_max is not None and not _positive(self.cpu_max):
            raise ValueError(
                f"cpu_max must be a positive number of CPUs or None, not {self.cpu_max!r}"
            )

    @property
    def limits(self) -> dict[str, int | float]:
        """The limits asked for, by name (empty when none)."""
        if self.memory_max is None and self.cpu_max is None and self.tasks_max is None:
            return {}  # most runs: asked three times a run
        asked = {
            "memory_max": self.memory_max,
            "cpu_max": self.cpu_max,
            "tasks_max": self.tasks_max,
        }
        return {name: value for name, value in asked.items() if value is not None}


@dataclass(frozen=True)
class Started:
    """A run's main process exists.  `pid_start` is its start time in clock ticks since
    boot (/proc/PID/stat field 22), which tells it from a later process with its PID;
    `started_at` is UTC ISO 8601 with milliseconds.  Sent once the run has lived
    STARTED_DELAY_S: a run that ends sooner has only its Outcome (which carries the pid
    and the start time too), so a trivial job costs one message, not two."""

    run_id: int
    token: str
    pid: int
    pid_start: int | None
    started_at: str
    output_path: str
    containment: str


@dataclass(frozen=True)
class Held:
    """A run the keeper holds (its processes run or are being stopped).  `stopping` is
    the ending being applied (timed_out, killed, stopped) or None."""

    run_id: int
    token: str
    pid: int
    pid_start: int | None
    started_at: str
    output_path: str
    containment: str
    stopping: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How a run ended; durable in the journal until acknowledged by its `id`.

    ending: exited (the main process exited by itself: exit_code), not_started,
    timed_out, killed (a kill request - `by` says whose - or a signal nobody here asked
    for: a crash, an OOM kill; `signal` has the number), stopped (a drain; `by`).
    exit_code 0-255 when the main process exited, else None; signal: the number that
    killed it, else None.  The first cause decides: a run being stopped for its timeout
    stays timed_out whatever its main process then does.  Times are UTC ISO 8601
    (started_at None when not started; finished_at: when the main process exited), read
    from the wall clock, which a step may move between the two; duration_s: seconds from
    the spawn to the reaping of the main process on the monotonic clock, which no step
    moves (None when not started, and from a keeper or journal line older than the field).
    output_bytes: bytes stored in the file (at most OUTPUT_CAP; 0 and no note: the run
    printed nothing and has no file); output_note: why the file is incomplete, else "".
    tail: the last TAIL_BYTES the job wrote.  leftovers: processes still there when the
    main process exited; leftovers_kept: they were left running (policy keep).
    peak_memory_bytes: the peak of the run's memory cgroup (v2 memory.peak, v1
    memory.max_usage_in_bytes) when it had one, else None.  cpu_seconds: the run's cgroup
    CPU time (v2 cpu.stat, v1 cpuacct.usage) when it had one, else that of the main
    process and the children it waited for (getrusage(2))."""

    id: str
    run_id: int
    token: str
    ending: str
    exit_code: int | None
    signal: int | None
    started_at: str | None
    finished_at: str
    detail: str
    output_path: str
    output_bytes: int
    output_note: str
    tail: bytes
    leftovers: int
    leftovers_kept: bool
    peak_memory_bytes: int | None
    cpu_seconds: float | None
    containment: str
    pid: int | None = None  # the main process (None when not started)
    pid_start: int | None = None  # its /proc start time, if read while it ran
    by: str = ""  # who asked, when a kill request or a drain ended the run
    duration_s: float | None = None  # monotonic, spawn to reap (added within PROTOCOL 1)


@dataclass(frozen=True)
class Refused:
    """A launch the keeper would not take (the run id is held, the keeper is draining, the
    output path is outside its home); nothing was started."""

    run_id: int
    token: str
    reason: str
    # The scheduler may give it back to the queue (it came too late, the keeper is
    # draining): nothing about the run itself is wrong, so no attempt is spent on it.
    requeue: bool = False


@dataclass(frozen=True)
class Superseded:
    """Another scheduler connected: events now go to it, and this connection is closed."""

    message: str


@dataclass(frozen=True)
class LeaseTerms:
    """What the keeper needs to keep its runs' leases alive while no scheduler is
    connected (a scheduler's `hello` carries them): `db`, the database URL (it may hold a
    password: it travels only over keeper.sock, stays in the keeper's memory and reaches
    the renewer in its environment), and `lease_s`, the lease in seconds.  Raises
    ValueError."""

    db: str
    lease_s: float

    def __post_init__(self) -> None:
        if not isinstance(self.db, str) or not self.db or "\0" in self.db:
            raise ValueError("db must be a database URL")
        if not _positive(self.lease_s) or self.lease_s > 86400:
            raise ValueError(f"lease_s must be positive seconds, not {self.lease_s!r}")


@dataclass(frozen=True)
class Welcome:
    protocol: int
    version: str
    keeper_id: str
    pid: int
    containment: str
    runs: tuple[Held, ...]
    outcomes: tuple[Outcome, ...]
    # Schedulers (ids) whose first keeper this is (scheduler role only): every run such a
    # scheduler handed over came here, so a run it claimed that this keeper neither holds
    # nor has an outcome for never started.
    sole_keeper_of: tuple[str, ...] = ()
    # The keeper renews its runs' leases while no scheduler is connected (it got the
    # terms in this hello); False from a keeper too old to do so.
    renews: bool = False
    # It takes `renewed` and renews for a connected scheduler that falls silent; a
    # keeper too old to (False) would close the connection on that message.
    stands_in: bool = False


@dataclass(frozen=True)
class KeeperStatus:
    """What `status` reports.  controllers: per-run resource controllers in force, e.g.
    ("memory:v1", "pids:v1", "cpu:v1") or ("memory:v2", ...); journal_error: the last
    journal write error while outcomes wait in memory, else ""."""

    pid: int
    version: str
    protocol: int
    keeper_id: str
    started_at: str
    home: str
    containment: str
    containment_note: str
    controllers: tuple[str, ...]
    runs: int
    unacked: int
    unjournaled: int
    journal_bytes: int
    journal_error: str
    draining: bool
    exiting: bool
    drain_ends: bool  # whether a new scheduler's launch ends a drain (False: older keeper)
    clients: int


Event = Started | Outcome | Refused | Superseded


# ----------------------------------------------------------------------------- checks
def _check_run_id(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"run_id must be a positive whole number, not {value!r}")


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf")
    )
