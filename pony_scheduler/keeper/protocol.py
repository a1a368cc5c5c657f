"""The keeper's wire format: typed records and their JSON, shared by keeper and client.

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

import base64
import json
import signal as _signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    `tasks_max` processes and threads; None = no limit.  A launch asking for a limit the
    keeper cannot enforce here is not started (its outcome says why).  `token` is opaque
    to the keeper and echoed in every message about the run.  Raises ValueError."""

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
        if self.cpu_max is not None and not _positive(self.cpu_max):
            raise ValueError(
                f"cpu_max must be a positive number of CPUs or None, not {self.cpu_max!r}"
            )

    @property
    def limits(self) -> dict[str, int | float]:
        """The limits asked for, by name (empty when none)."""
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

    ending: exited (the main process exited by itself: exit_code, or `signal` when a signal
    killed it, e.g. a crash or an OOM kill), not_started, timed_out, killed (a `kill`
    request), stopped (a drain).  exit_code 0-255 when the main process exited, else
    None; signal: the number that killed it, else None.  Times are UTC ISO 8601
    (started_at None when not started).  output_bytes: bytes stored in the file (at
    most OUTPUT_CAP; 0 and no note: the run printed nothing and has no file);
    output_note: why the file is incomplete, else "".  tail: the last TAIL_BYTES the
    job wrote.  leftovers: processes still there when the main process exited;
    leftovers_kept: they were left running (policy keep).  peak_memory_bytes: the peak
    of the run's memory cgroup (v2 memory.peak, v1 memory.max_usage_in_bytes) when it
    had one, else None.  cpu_seconds: the run's cgroup CPU time (v2 cpu.stat, v1
    cpuacct.usage) when it had one, else that of the main process and the children it
    waited for (getrusage(2)).  None when unknown."""

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
    pid_start: int | None = None


@dataclass(frozen=True)
class Refused:
    """A launch the keeper would not take (the run id is held, the keeper is draining, the
    output path is outside its home); nothing was started."""

    run_id: int
    token: str
    reason: str


@dataclass(frozen=True)
class Superseded:
    """Another scheduler connected: events now go to it, and this connection is closed."""

    message: str


@dataclass(frozen=True)
class Welcome:
    protocol: int
    version: str
    keeper_id: str
    pid: int
    containment: str
    runs: tuple[Held, ...]
    outcomes: tuple[Outcome, ...]


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
    clients: int


Event = Started | Outcome | Refused | Superseded


# ----------------------------------------------------------------------------- encoding
def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a JSON object with a 'type'")
    return message


def launch_to_json(launch: Launch) -> dict[str, Any]:
    return {
        "type": "launch",
        "run_id": launch.run_id,
        "token": launch.token,
        "argv": list(launch.argv),
        "env": dict(launch.env),
        "cwd": launch.cwd,
        "umask": launch.umask,
        "timeout_s": launch.timeout_s,
        "output_path": launch.output_path,
        "leftovers": launch.leftovers,
        "memory_max": launch.memory_max,
        "cpu_max": launch.cpu_max,
        "tasks_max": launch.tasks_max,
    }


def launch_from_json(m: Mapping[str, Any]) -> Launch:
    try:
        env = m.get("env") or {}
        if not isinstance(env, dict) or not isinstance(m.get("argv"), list):
            raise ValueError("argv must be a list and env an object")
        return Launch(
            run_id=m["run_id"],
            argv=tuple(m["argv"]),
            output_path=m["output_path"],
            env=env,
            token=m.get("token", ""),
            cwd=m.get("cwd"),
            umask=m.get("umask", 0o027),
            timeout_s=m.get("timeout_s"),
            leftovers=m.get("leftovers", "kill"),
            memory_max=m.get("memory_max"),
            cpu_max=m.get("cpu_max"),
            tasks_max=m.get("tasks_max"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad launch: {exc}") from None


def started_to_json(s: Started) -> dict[str, Any]:
    return {
        "type": "started",
        "run_id": s.run_id,
        "token": s.token,
        "pid": s.pid,
        "pid_start": s.pid_start,
        "started_at": s.started_at,
        "output_path": s.output_path,
        "containment": s.containment,
    }


def held_to_json(h: Held) -> dict[str, Any]:
    return {
        "run_id": h.run_id,
        "token": h.token,
        "pid": h.pid,
        "pid_start": h.pid_start,
        "started_at": h.started_at,
        "output_path": h.output_path,
        "containment": h.containment,
        "stopping": h.stopping,
    }


def outcome_to_json(o: Outcome) -> dict[str, Any]:
    return {
        "type": "outcome",
        "id": o.id,
        "run_id": o.run_id,
        "token": o.token,
        "ending": o.ending,
        "exit_code": o.exit_code,
        "signal": o.signal,
        "started_at": o.started_at,
        "finished_at": o.finished_at,
        "detail": o.detail,
        "output_path": o.output_path,
        "output_bytes": o.output_bytes,
        "output_note": o.output_note,
        "tail": base64.b64encode(o.tail).decode(),
        "leftovers": o.leftovers,
        "leftovers_kept": o.leftovers_kept,
        "peak_memory_bytes": o.peak_memory_bytes,
        "cpu_seconds": o.cpu_seconds,
        "containment": o.containment,
        "pid": o.pid,
        "pid_start": o.pid_start,
    }


def started_from_json(m: Mapping[str, Any]) -> Started:
    try:
        return Started(
            run_id=_int(m["run_id"]),
            token=_str(m["token"]),
            pid=_int(m["pid"]),
            pid_start=_opt_int(m.get("pid_start")),
            started_at=_str(m["started_at"]),
            output_path=_str(m["output_path"]),
            containment=_str(m["containment"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad started: {exc}") from None


def held_from_json(m: Mapping[str, Any]) -> Held:
    try:
        stopping = m.get("stopping")
        return Held(
            run_id=_int(m["run_id"]),
            token=_str(m["token"]),
            pid=_int(m["pid"]),
            pid_start=_opt_int(m.get("pid_start")),
            started_at=_str(m["started_at"]),
            output_path=_str(m["output_path"]),
            containment=_str(m["containment"]),
            stopping=None if stopping is None else _str(stopping),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad held run: {exc}") from None


def outcome_from_json(m: Mapping[str, Any]) -> Outcome:
    try:
        ending = _str(m["ending"])
        if ending not in ENDINGS:
            raise ValueError(f"unknown ending {ending!r}")
        cpu = m.get("cpu_seconds")
        return Outcome(
            id=_str(m["id"]),
            run_id=_int(m["run_id"]),
            token=_str(m["token"]),
            ending=ending,
            exit_code=_opt_int(m.get("exit_code")),
            signal=_opt_int(m.get("signal")),
            started_at=None if m.get("started_at") is None else _str(m["started_at"]),
            finished_at=_str(m["finished_at"]),
            detail=_str(m["detail"]),
            output_path=_str(m["output_path"]),
            output_bytes=_int(m["output_bytes"]),
            output_note=_str(m.get("output_note", "")),
            tail=base64.b64decode(_str(m.get("tail", "")), validate=True),
            leftovers=_int(m.get("leftovers", 0)),
            leftovers_kept=bool(m.get("leftovers_kept", False)),
            peak_memory_bytes=_opt_int(m.get("peak_memory_bytes")),
            cpu_seconds=None if cpu is None else float(cpu),
            containment=_str(m["containment"]),
            pid=_opt_int(m.get("pid")),
            pid_start=_opt_int(m.get("pid_start")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad outcome: {exc}") from None


def event_from_json(m: Mapping[str, Any]) -> Event | None:
    """The event a keeper message carries, or None when it is not an event."""
    kind = m.get("type")
    if kind == "started":
        return started_from_json(m)
    if kind == "outcome":
        return outcome_from_json(m)
    if kind == "refused":
        try:
            return Refused(_int(m["run_id"]), _str(m.get("token", "")), _str(m["reason"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad refused: {exc}") from None
    if kind == "superseded":
        return Superseded(str(m.get("message", "another scheduler connected")))
    return None


# ----------------------------------------------------------------------------- checks
def _check_run_id(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"run_id must be a positive whole number, not {value!r}")


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf")
    )


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected a whole number, got {value!r}")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value
