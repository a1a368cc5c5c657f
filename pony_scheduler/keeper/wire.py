"""The keeper's wire format in JSON: one object per line (see protocol.py for the rules),
the records of protocol.py to and from it.  Decoders check every field's type and raise
ProtocolError; they ignore fields they do not know (a newer peer within the version)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from pony_scheduler.keeper.protocol import (
    ENDINGS,
    Event,
    Held,
    Launch,
    Outcome,
    ProtocolError,
    Refused,
    Started,
    Superseded,
)

# One encoder for every message: json.dumps with separators builds a new JSONEncoder
# per call, which was a tenth of encoding an outcome.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def encode(message: Mapping[str, Any]) -> bytes:
    """One protocol line: compact JSON (ASCII: non-ASCII text as \\u escapes), newline."""
    return _encode(message).encode() + b"\n"


def decode(line: bytes | bytearray) -> dict[str, Any]:
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
        "start_by": launch.start_by,
        **({"account_memory": True} if launch.account_memory else {}),  # older keepers: no key
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
            start_by=m.get("start_by"),
            account_memory=m.get("account_memory", False),
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
        "by": o.by,
        "duration_s": o.duration_s,
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
        # Absent from an older keeper's message or journal line: None, and the scheduler
        # then goes by the wall-clock times alone.
        duration = m.get("duration_s")
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
            by=_str(m.get("by", "")),
            duration_s=None if duration is None else _seconds(duration),
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
            return Refused(
                _int(m["run_id"]),
                _str(m.get("token", "")),
                _str(m["reason"]),
                m.get("requeue") is True,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad refused: {exc}") from None
    if kind == "superseded":
        return Superseded(str(m.get("message", "another scheduler connected")))
    return None


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected a whole number, got {value!r}")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)


def _seconds(value: object) -> float:
    """A duration: a finite number of seconds, not negative."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value < float("inf")
    ):
        raise ValueError(f"expected seconds, got {value!r}")
    return float(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value
